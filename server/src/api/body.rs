//! Request bodies, read under the router's size limit.
//!
//! Bodies are read through these extractors rather than the framework's own
//! so that every failure (too large, unreadable, not the JSON we expect)
//! becomes our JSON error. JSON bodies are accepted whatever their declared
//! content type, because `curl -d` labels JSON as a form and refusing that
//! would only get in the way.
//!
//! A body has [`BODY_TIMEOUT`] (or the request's [`BodyTimeout`], from
//! `serve --body-timeout`) to arrive in full, so that a client that sends it
//! a byte at a time cannot hold a connection and a request for ever (the
//! connection's request head is bounded in `crate::net`).
//!
//! A request that declares a body over the limit in its `Content-Length` is
//! answered 413 by [`refuse_declared_oversize`] before any of it is read:
//! a client that waits for `100 Continue` (curl does for large uploads) is
//! told at once instead of sending the limit's worth first, and one that
//! declares more than it sends is not left waiting for the body timeout.

use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{FromRequest, Request, State};
use axum::http::header::CONTENT_LENGTH;
use axum::middleware::Next;
use axum::response::{IntoResponse as _, Response};
use serde::de::DeserializeOwned;

use crate::api::error::{ApiError, ErrorCode};

/// The longest a request body may take to arrive, unless the request
/// carries a [`BodyTimeout`]: the largest body a node takes (64 MiB at
/// most, see `--max-value-bytes`) at about half a megabyte a second.
pub const BODY_TIMEOUT: Duration = Duration::from_secs(120);

/// A request extension that sets how long its body may take to arrive
/// (`serve --body-timeout`), in place of [`BODY_TIMEOUT`].
#[derive(Clone, Copy, Debug)]
pub struct BodyTimeout(pub Duration);

/// The answer to a body over the limit, however it was found out.
pub fn too_large() -> ApiError {
    // The framework's own text ("length limit exceeded") names neither the
    // limit nor what sets it.
    ApiError::new(
        ErrorCode::PayloadTooLarge,
        "the request body is larger than this node accepts: one value of at most \
         --max-value-bytes and room for the rest of the request",
    )
}

/// Middleware: 413 for a request whose `Content-Length` is over `limit`
/// bytes, without reading its body. Bodies without a declared length (or
/// with a smaller one) are still held to the limit as they are read.
pub async fn refuse_declared_oversize(
    State(limit): State<usize>,
    req: Request,
    next: Next,
) -> Response {
    let declared = req
        .headers()
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    match declared {
        Some(n) if n > u64::try_from(limit).unwrap_or(u64::MAX) => too_large().into_response(),
        _ => next.run(req).await,
    }
}

/// The raw request body.
#[derive(Debug)]
pub struct RawBody(pub Bytes);

impl<S: Send + Sync> FromRequest<S> for RawBody {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let limit = req
            .extensions()
            .get::<BodyTimeout>()
            .map_or(BODY_TIMEOUT, |t| t.0);
        match tokio::time::timeout(limit, Bytes::from_request(req, state)).await {
            Ok(body) => Ok(RawBody(body?)),
            Err(_) => Err(ApiError::new(
                ErrorCode::RequestTimeout,
                format!(
                    "the request body did not arrive within {} s (serve --body-timeout); \
                     nothing was changed",
                    limit.as_secs_f64()
                ),
            )),
        }
    }
}

/// A request body parsed as JSON into `T`.
#[derive(Debug)]
pub struct JsonBody<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for JsonBody<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let RawBody(bytes) = RawBody::from_request(req, state).await?;
        serde_json::from_slice(&bytes)
            .map(JsonBody)
            .map_err(|e| ApiError::invalid(format!("invalid request body: {e}")))
    }
}
