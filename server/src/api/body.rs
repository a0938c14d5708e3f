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
use axum::http::StatusCode;
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

/// The body limit of the router a request came through, in bytes: put
/// on each request by [`refuse_declared_oversize`], so that a body found
/// too large as it is read is refused with the number.
#[derive(Clone, Copy, Debug)]
pub struct BodyLimit(pub usize);

/// The answer to a body over `limit` bytes (when known), however it was
/// found out.
pub fn too_large(limit: Option<usize>) -> ApiError {
    // The framework's own text ("length limit exceeded") names neither the
    // limit nor what sets it.
    let limit = limit.map_or(String::new(), |n| format!(" ({n} bytes)"));
    ApiError::new(
        ErrorCode::PayloadTooLarge,
        format!(
            "the request body is larger than this node accepts{limit}: one value of at \
             most --max-value-bytes (base64 in a transaction) and room for the rest of \
             the request"
        ),
    )
}

/// Middleware: 413 for a request whose `Content-Length` is over `limit`
/// bytes, without reading its body. Bodies without a declared length (or
/// with a smaller one) are still held to the limit as they are read.
pub async fn refuse_declared_oversize(
    State(limit): State<usize>,
    mut req: Request,
    next: Next,
) -> Response {
    let declared = req
        .headers()
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    match declared {
        Some(n) if n > u64::try_from(limit).unwrap_or(u64::MAX) => {
            too_large(Some(limit)).into_response()
        }
        _ => {
            req.extensions_mut().insert(BodyLimit(limit));
            next.run(req).await
        }
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
        let size_limit = req.extensions().get::<BodyLimit>().map(|l| l.0);
        match tokio::time::timeout(limit, Bytes::from_request(req, state)).await {
            Ok(Ok(body)) => Ok(RawBody(body)),
            Ok(Err(rejection)) if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE => {
                Err(too_large(size_limit))
            }
            Ok(Err(rejection)) => Err(rejection.into()),
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

/// A request body parsed as JSON into `T`, which every route that takes
/// one describes as an object.
#[derive(Debug)]
pub struct JsonBody<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for JsonBody<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let RawBody(bytes) = RawBody::from_request(req, state).await?;
        // serde reads a struct from an array of its fields too, so `[]`
        // would pass as an object with every field left out.
        let first = bytes.iter().find(|b| !b.is_ascii_whitespace());
        if first != Some(&b'{') {
            return Err(ApiError::invalid(
                "invalid request body: expected a JSON object, {...}",
            ));
        }
        serde_json::from_slice(&bytes)
            .map(JsonBody)
            .map_err(|e| ApiError::invalid(format!("invalid request body: {e}")))
    }
}
