//! HTTP: the public v1 API on the client port, and the peer API.
//!
//! [`public_router`] assembles the client-facing routes; [`openapi`]
//! describes them. Handlers are generic over [`service::Service`] so that
//! the same code serves a real node and the in-memory fake in the tests.

pub mod admin;
pub mod auth;
pub mod body;
pub mod cluster;
pub mod docs;
pub mod encoding;
pub mod error;
pub mod health;
pub mod kv;
pub mod lease;
pub mod origin;
pub mod query;
pub mod service;
pub mod txn;
pub mod ui;
pub mod watch;

#[cfg(test)]
mod tests;

use axum::Router;
use axum::extract::DefaultBodyLimit;

pub use docs::openapi;

use crate::kv::Limits;
use service::Service;

/// Room for everything in a body besides one maximal value: the key, JSON
/// syntax and the other operations of a transaction.
const BODY_SLACK: usize = 64 * 1024;

/// The largest request body accepted, derived from the value limit.
///
/// Transaction bodies carry values as base64, a third larger than the raw
/// bytes, so the limit leaves room for one maximal value in that form. A
/// transaction whose values add up to more is refused as a whole with 413.
pub fn body_limit(limits: &Limits) -> usize {
    let value = limits.max_value_bytes;
    value
        .saturating_add(value / 3 + 4)
        .saturating_add(BODY_SLACK)
}

/// Only the probes and `/metrics`, open to all, for `serve
/// --metrics-listen`: what the kubelet and a scraper need from a replica
/// whose client port asks for client certificates. Anything else is a
/// JSON 404 that says where the API is.
pub fn probe_router<S: Service>(svc: S) -> Router {
    Router::new()
        .merge(health::routes())
        .method_not_allowed_fallback(error::method_not_allowed)
        .fallback(error::not_on_probe_port)
        .layer(axum::middleware::from_fn(error::json_errors_only))
        .with_state(svc)
}

/// The public API: `/v1/kv`, `/v1/txn`, `/v1/watch`, `/v1/cluster`, the
/// probes, `/metrics`, `/openapi.json`, `/docs` and the `/ui` console,
/// served from `svc`.
///
/// Every error, including unknown routes, wrong methods and bodies over
/// [`body_limit`], is answered with the JSON body of [`error::ErrorResponse`].
pub fn public_router<S: Service>(svc: S) -> Router {
    let limit = body_limit(&svc.limits());
    Router::new()
        .merge(kv::routes())
        .merge(txn::routes())
        .merge(lease::routes())
        .merge(watch::routes())
        .merge(cluster::routes())
        .merge(admin::routes())
        .merge(auth::routes())
        .merge(health::routes())
        .merge(docs::routes())
        .merge(ui::routes())
        // Only applies to routes added above, so it must come after them.
        .method_not_allowed_fallback(error::method_not_allowed)
        .fallback(error::not_found)
        .layer(DefaultBodyLimit::max(limit))
        // Inside authentication, so a caller without credentials hears 401
        // whatever it declares.
        .layer(axum::middleware::from_fn_with_state(
            limit,
            body::refuse_declared_oversize,
        ))
        .layer(axum::middleware::from_fn_with_state(
            svc.clone(),
            crate::auth::gate::authenticate::<S>,
        ))
        .layer(axum::middleware::from_fn(
            origin::refuse_cross_origin_writes,
        ))
        .layer(axum::middleware::from_fn(error::json_errors_only))
        .with_state(svc)
}
