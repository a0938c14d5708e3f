//! The peer API (peer port): Paxos messages, snapshots, and the master's side
//! of forwarded writes, read-index requests and membership changes. Every
//! route requires the cluster token as a bearer token; clients never need
//! this port, and a NetworkPolicy can close it to everyone but the cluster.

use axum::Json;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{HeaderMap, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use std::time::Instant;
use tracing::Instrument;

use crate::api::cluster::constant_time_eq;
use crate::api::service::ServiceError;
use crate::paxos::{Command, ConfChange, Envelope};

use super::wire::{self, ChangeReply, Postcard, ProposeReply, ReadIndexReply};
use super::{Misaddressed, Node};

/// Largest peer request accepted (a snapshot travels in one request).
const MAX_PEER_BODY: usize = 4 << 30;

/// The router for the peer port.
pub fn router(node: Node) -> axum::Router {
    axum::Router::new()
        .route("/peer/v1/messages", post(messages))
        .route("/peer/v1/snapshot", post(snapshot))
        .route("/peer/v1/propose", post(propose))
        .route("/peer/v1/propose_batch", post(propose_batch))
        .route("/peer/v1/read_index", post(read_index))
        .route("/peer/v1/change", post(change))
        .route("/peer/v1/cluster", post(cluster))
        .route("/peer/v1/hello", get(hello))
        .route("/peer/v1/digests", post(digests))
        .layer(DefaultBodyLimit::max(MAX_PEER_BODY))
        .layer(middleware::from_fn_with_state(node.clone(), authenticate))
        .fallback(|| async { error(StatusCode::NOT_FOUND, "not_found", "no such peer route") })
        .with_state(node)
}

fn error(status: StatusCode, code: &str, message: &str) -> Response {
    (
        status,
        Json(serde_json::json!({"error": {"code": code, "message": message}})),
    )
        .into_response()
}

/// Rejects requests without the cluster token (constant-time comparison).
async fn authenticate(
    State(node): State<Node>,
    headers: HeaderMap,
    req: Request,
    next: Next,
) -> Response {
    let given = headers
        .get(axum::http::header::AUTHORIZATION)
        .map(|v| v.as_bytes())
        .unwrap_or_default();
    if !constant_time_eq(given, node.inner.auth.as_bytes()) {
        return error(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "the peer API requires the cluster token as a bearer token",
        );
    }
    if !crate::telemetry::exporting_spans() {
        return next.run(req).await;
    }
    let span = crate::telemetry::server_span(req.method(), req.uri().path(), req.headers());
    next.run(req).instrument(span).await
}

fn service_error(e: ServiceError) -> Response {
    let status = match e {
        ServiceError::Unavailable { .. } => StatusCode::SERVICE_UNAVAILABLE,
        ServiceError::Timeout(_) => StatusCode::GATEWAY_TIMEOUT,
        ServiceError::Invalid(_) => StatusCode::BAD_REQUEST,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    };
    error(status, "peer_error", &e.to_string())
}

async fn messages(
    State(node): State<Node>,
    headers: HeaderMap,
    Postcard(envs): Postcard<Vec<Envelope>>,
) -> Response {
    let from_url = headers
        .get(wire::PEER_URL_HEADER)
        .and_then(|v| v.to_str().ok())
        .filter(|u| u.starts_with("http://") || u.starts_with("https://"));
    match node.deliver(envs, from_url) {
        Ok(()) => StatusCode::NO_CONTENT.into_response(),
        Err(Misaddressed::OtherIncarnation(mine)) => error(
            StatusCode::CONFLICT,
            "wrong_incarnation",
            &format!(
                "these messages are for another incarnation of {}; this one is {mine} (its data \
                 directory is new) and must be replaced in the membership",
                node.name()
            ),
        ),
        Err(Misaddressed::Service(e)) => service_error(e),
    }
}

/// A peer's newest state digests (JSON).
async fn digests(
    State(node): State<Node>,
    Json(report): Json<super::digest::DigestReport>,
) -> Response {
    node.receive_digests(report);
    StatusCode::NO_CONTENT.into_response()
}

/// Who this node is, for a node deciding how to bootstrap and for a
/// replacement: JSON, like everything a person may want to read.
async fn hello(State(node): State<Node>) -> Response {
    Json(node.hello()).into_response()
}

async fn snapshot(
    State(node): State<Node>,
    axum::extract::RawQuery(query): axum::extract::RawQuery,
    body: Bytes,
) -> Response {
    // A snapshot is for one incarnation: a node back with a new volume
    // must not take one meant for the member it replaced.
    let to = query
        .as_deref()
        .and_then(|q| q.split('&').find_map(|kv| kv.strip_prefix("to=")));
    if let Some(to) = to
        && crate::cluster::bootstrap::parse_id(to).ok() != Some(node.id())
    {
        return error(
            StatusCode::CONFLICT,
            "wrong_incarnation",
            &format!("this snapshot is for incarnation {to}, not this node's"),
        );
    }
    let (meta, start) = match wire::decode_snapshot(&body) {
        Ok(v) => v,
        Err(e) => return error(StatusCode::BAD_REQUEST, "bad_snapshot", &e),
    };
    match node.install_snapshot(meta, body.slice(start..)).await {
        Ok(()) => StatusCode::NO_CONTENT.into_response(),
        Err(e) => service_error(e),
    }
}

async fn propose(State(node): State<Node>, Postcard(cmd): Postcard<Command>) -> Response {
    let deadline = Instant::now() + node.inner.cfg.write_timeout;
    match node.propose_local(cmd, deadline).await {
        Ok(reply) => Postcard::<ProposeReply>(reply).into_response(),
        Err(e) => service_error(e),
    }
}

/// Forwarded writes from a follower, in one request: answered together, in
/// order, once every one of them is applied or refused.
async fn propose_batch(
    State(node): State<Node>,
    Postcard(cmds): Postcard<Vec<Command>>,
) -> Response {
    let deadline = Instant::now() + node.inner.cfg.write_timeout;
    Postcard(node.propose_batch_local(cmds, deadline).await).into_response()
}

async fn read_index(State(node): State<Node>) -> Response {
    match node.read_index_local().await {
        Ok(reply) => Postcard::<ReadIndexReply>(reply).into_response(),
        Err(e) => service_error(e),
    }
}

async fn change(State(node): State<Node>, Postcard(change): Postcard<ConfChange>) -> Response {
    match node.change_local(change).await {
        Ok(reply) => Postcard::<ChangeReply>(reply).into_response(),
        Err(e) => service_error(e),
    }
}

/// JSON, unlike the rest: it is rare, and its answer is the public
/// `ClusterInfo` document.
async fn cluster(State(node): State<Node>) -> Response {
    Json(node.local_cluster()).into_response()
}
