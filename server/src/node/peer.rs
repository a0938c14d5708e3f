//! The peer API (peer port): Paxos messages, snapshots, and the master's side
//! of forwarded writes, read-index requests, membership changes and
//! mastership handoffs. Every route but the document itself requires the
//! cluster token as a bearer token; clients never need this port, and a
//! NetworkPolicy can close it to everyone but the cluster.
//!
//! Bodies are JSON (see [`super::wire`]). The handlers' annotations generate the peer API's
//! OpenAPI document ([`openapi`], committed as `openapi/phxkv-peer.json`).

use axum::Json;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use std::time::Instant;
use tracing::Instrument;
use utoipa::{Modify, OpenApi};

use crate::api::service::ServiceError;
use crate::auth::gate::TokenCheck;
use crate::paxos::{Command, ConfChange, Envelope};

use super::wire::{
    self, ChangeReply, PeerBody, PeerErrorCode, ProposeReply, ReadIndexReply, Reply, TransferReply,
    TransferRequest,
};
use super::{Misaddressed, Node, Origin};

/// Largest peer request read whole: a batch of messages, as on one line of
/// a stream. Streams and snapshots are read as they come, line by line or
/// piece by piece, and are not bound by it.
const MAX_PEER_BODY: usize = wire::MAX_STREAM_LINE;

/// The router for the peer port.
pub fn router(node: Node) -> axum::Router {
    axum::Router::new()
        .route("/peer/v1/messages", post(messages))
        .route("/peer/v1/stream", post(stream))
        .route("/peer/v1/snapshot", post(snapshot))
        .route("/peer/v1/propose", post(propose))
        .route("/peer/v1/propose_batch", post(propose_batch))
        .route("/peer/v1/read_index", post(read_index))
        .route("/peer/v1/lease", post(lease))
        .route("/peer/v1/change", post(change))
        .route("/peer/v1/transfer", post(transfer))
        .route("/peer/v1/cluster", post(cluster))
        .route("/peer/v1/hello", get(hello))
        .route("/peer/v1/acknowledged/{incarnation}", get(acknowledged))
        .route("/peer/v1/digests", post(digests))
        .layer(DefaultBodyLimit::max(MAX_PEER_BODY))
        .layer(middleware::from_fn_with_state(node.clone(), authenticate))
        .route("/peer/v1/openapi.json", get(openapi_json))
        .method_not_allowed_fallback(|method: axum::http::Method| async move {
            error(
                StatusCode::METHOD_NOT_ALLOWED,
                PeerErrorCode::MethodNotAllowed,
                &format!("this peer route does not take {method}; see /peer/v1/openapi.json"),
            )
        })
        .fallback(|| async {
            error(
                StatusCode::NOT_FOUND,
                PeerErrorCode::NotFound,
                NO_PEER_ROUTE,
            )
        })
        .with_state(node)
}

/// What a request to no peer route hears; a client pointed at the peer
/// port by mistake is told where to go.
pub const NO_PEER_ROUTE: &str = "no such peer route: this is a replica's peer port, for its \
    peers only; clients call its client port (8080 by default)";

fn error(status: StatusCode, code: PeerErrorCode, message: &str) -> Response {
    wire::peer_error(status, code, message)
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
    let addr = crate::auth::gate::client_addr(&req);
    // Guesses count towards the address's failed-attempt limit, shared with
    // the client port (but see `check_peer_token`).
    match node
        .inner
        .gate
        .check_peer_token(addr, given, node.inner.auth.as_bytes())
    {
        TokenCheck::Valid => {}
        TokenCheck::Missing | TokenCheck::Wrong => {
            return error(
                StatusCode::UNAUTHORIZED,
                PeerErrorCode::Unauthorized,
                "the peer API requires the cluster token as a bearer token",
            );
        }
        TokenCheck::Blocked(wait) => {
            let secs = wait.as_secs().max(1);
            let mut resp = error(
                StatusCode::TOO_MANY_REQUESTS,
                PeerErrorCode::TooManyAttempts,
                &format!("too many wrong cluster tokens from this address; retry in {secs} s"),
            );
            resp.headers_mut()
                .insert(axum::http::header::RETRY_AFTER, HeaderValue::from(secs));
            return resp;
        }
    }
    let mine = node.inner.cfg.engine.read_mode.name();
    let theirs = headers
        .get(wire::READ_MODE_HEADER)
        .map_or(Ok("lease"), |v| v.to_str())
        .unwrap_or("?");
    if !matches!(theirs, "lease" | "quorum") {
        return error(
            StatusCode::BAD_REQUEST,
            PeerErrorCode::BadRequest,
            &format!(
                "{} {theirs:?} is not a read mode: lease or quorum",
                wire::READ_MODE_HEADER
            ),
        );
    }
    if theirs != mine {
        let message = format!(
            "this node runs --read-mode {mine} and the sender {theirs}: every replica of a \
             cluster must use the same read mode"
        );
        let sender = sender_url(&headers).unwrap_or("(no peer URL given)");
        tracing::warn!(sender, "{message}");
        return error(
            StatusCode::PRECONDITION_FAILED,
            PeerErrorCode::ReadModeMismatch,
            &message,
        );
    }
    let mut resp = if crate::telemetry::exporting_spans() {
        let span = crate::telemetry::server_span(req.method(), req.uri().path(), req.headers());
        next.run(req).instrument(span).await
    } else {
        next.run(req).await
    };
    // Every answer says which request bodies this node takes.
    resp.headers_mut()
        .insert(wire::ACCEPT_POST, HeaderValue::from_static(wire::JSON));
    resp
}

fn service_error(e: ServiceError) -> Response {
    let (status, code) = match e {
        ServiceError::Unavailable { .. } => {
            (StatusCode::SERVICE_UNAVAILABLE, PeerErrorCode::Unavailable)
        }
        ServiceError::Timeout(_) => (StatusCode::GATEWAY_TIMEOUT, PeerErrorCode::Timeout),
        ServiceError::Invalid(_) => (StatusCode::BAD_REQUEST, PeerErrorCode::BadRequest),
        ServiceError::TooLarge(_) => (StatusCode::PAYLOAD_TOO_LARGE, PeerErrorCode::BadRequest),
        _ => (StatusCode::INTERNAL_SERVER_ERROR, PeerErrorCode::Internal),
    };
    error(status, code, &e.to_string())
}

/// Paxos messages for this node, in order. Delivery is best effort: the
/// engine tolerates loss, duplication and reordering, so a sender drops what
/// it cannot deliver and the protocol retransmits.
#[utoipa::path(
    post,
    path = "/peer/v1/messages",
    tag = "paxos",
    params(("x-phxkv-peer-url" = Option<String>, Header,
        description = "The sender's own peer URL, so a member that does not know it yet can answer."),
        ("phxkv-peer-features" = Option<String>, Header,
        description = "What the sender does beyond the messages every version understands, comma-separated. `forward`: as master it takes `forward` and `read_index_request` messages, so the receiver, as its follower, sends client writes and read-index requests that way instead of `POST /peer/v1/propose_batch` and `POST /peer/v1/read_index`. `anonymous`: it decodes the `anonymous` op, which the receiver proposes only once every member of its configuration said so. `delete_prefix`: the same for the `delete_prefix` op. `lease_owner`: the same for the `grant_owned` lease op. `lease_fence`: the same for the `fence` and `expire_fenced` lease ops. `once`: the same for the `once` op.")),
    request_body(content((Vec<Envelope> = "application/json"))),
    responses(
        (status = 204, description = "Handed to the engine."),
        (status = 409, description = "`wrong_incarnation`: the messages are for another incarnation of this member.", body = wire::PeerError),
    )
)]
async fn messages(
    State(node): State<Node>,
    headers: HeaderMap,
    PeerBody { value: envs, .. }: PeerBody<Vec<Envelope>>,
) -> Response {
    match node.deliver(envs, &Origin::of(&headers)) {
        Ok(()) => StatusCode::NO_CONTENT.into_response(),
        Err(Misaddressed::OtherIncarnation(mine)) => error(
            StatusCode::CONFLICT,
            PeerErrorCode::WrongIncarnation,
            &format!(
                "these messages are for another incarnation of {}; this one is {mine}: a \
                 member whose data directory was lost must be replaced in the membership \
                 (phxkv members replace NAME), and a sender that addressed it by a wrong id \
                 should use {mine}",
                node.name()
            ),
        ),
        Err(Misaddressed::Service(e)) => service_error(e),
    }
}

/// The sender's own peer URL, from its header, if it is one.
fn sender_url(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(wire::PEER_URL_HEADER)
        .and_then(|v| v.to_str().ok())
        .filter(|u| u.starts_with("http://") || u.starts_with("https://"))
}

impl<'a> Origin<'a> {
    /// What the headers of a request with peer messages say of its sender.
    fn of(headers: &'a HeaderMap) -> Origin<'a> {
        Origin {
            url: sender_url(headers),
            features: wire::Features::of(headers.get(wire::FEATURES_HEADER)),
        }
    }
}

/// A long-lived stream of Paxos messages for this node: newline-delimited
/// JSON, each line one batch (a JSON array of envelopes, as
/// `/peer/v1/messages` takes), handed to the engine as soon as it arrives.
/// Each peer keeps one open to each other peer and reopens it when it
/// breaks; the answer comes when the sender ends the stream (204), or early
/// when a line is refused, which ends it.
#[utoipa::path(
    post,
    path = "/peer/v1/stream",
    tag = "paxos",
    params(("x-phxkv-peer-url" = Option<String>, Header,
        description = "The sender's own peer URL, so a member that does not know it yet can answer."),
        ("phxkv-peer-features" = Option<String>, Header,
        description = "As for `POST /peer/v1/messages`.")),
    request_body(content((Vec<Envelope> = "application/x-ndjson")),
        description = "One JSON array of envelopes per line."),
    responses(
        (status = 204, description = "The sender ended the stream; every line was handed to the engine."),
        (status = 400, description = "`bad_request`: a line is not a batch of envelopes.", body = wire::PeerError),
        (status = 409, description = "`wrong_incarnation`: the messages are for another incarnation of this member.", body = wire::PeerError),
        (status = 415, description = "`unsupported_media_type`: not `application/x-ndjson`.", body = wire::PeerError),
    )
)]
async fn stream(State(node): State<Node>, headers: HeaderMap, body: axum::body::Body) -> Response {
    use futures_util::StreamExt;
    let ndjson = headers
        .get(axum::http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| wire::media_type(v) == wire::NDJSON);
    if !ndjson {
        return error(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            PeerErrorCode::UnsupportedMediaType,
            &format!("a message stream is {}", wire::NDJSON),
        );
    }
    let origin = Origin::of(&headers);
    let mut body = body.into_data_stream();
    let mut buf: Vec<u8> = Vec::new();
    let mut lines = 0u64;
    let mut closing = node.closing();
    loop {
        let chunk = tokio::select! {
            chunk = body.next() => chunk,
            // This node is shutting down: end the stream so serving can
            // finish; the sender reconnects when it is back.
            _ = closing.wait_for(|c| *c) => return StatusCode::NO_CONTENT.into_response(),
        };
        let Some(chunk) = chunk else { break };
        let Ok(chunk) = chunk else {
            // The sender went away; it reopens the stream.
            return StatusCode::NO_CONTENT.into_response();
        };
        let scanned = buf.len();
        buf.extend_from_slice(&chunk);
        let mut start = 0;
        let mut from = scanned;
        while let Some(end) = buf[from..]
            .iter()
            .position(|b| *b == b'\n')
            .map(|p| from + p)
        {
            let line = &buf[start..end];
            start = end + 1;
            from = start;
            lines += 1;
            if line.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            let envs: Vec<Envelope> = match serde_json::from_slice(line) {
                Ok(envs) => envs,
                Err(e) => {
                    return error(
                        StatusCode::BAD_REQUEST,
                        PeerErrorCode::BadRequest,
                        &format!("line {lines} of the stream is not a batch of envelopes: {e}"),
                    );
                }
            };
            match node.deliver(envs, &origin) {
                Ok(()) => {}
                Err(Misaddressed::OtherIncarnation(mine)) => {
                    return error(
                        StatusCode::CONFLICT,
                        PeerErrorCode::WrongIncarnation,
                        &format!(
                            "these messages are for another incarnation of {}; this one is {mine}",
                            node.name()
                        ),
                    );
                }
                // Dropped like a lost message (an overloaded or starting
                // engine); the protocol retransmits.
                Err(Misaddressed::Service(_)) => {}
            }
        }
        buf.drain(..start);
        if buf.len() > wire::MAX_STREAM_LINE {
            return error(
                StatusCode::PAYLOAD_TOO_LARGE,
                PeerErrorCode::BadRequest,
                &format!(
                    "a line of the stream is longer than the limit of {} bytes",
                    wire::MAX_STREAM_LINE
                ),
            );
        }
    }
    if !buf.iter().all(u8::is_ascii_whitespace) {
        return error(
            StatusCode::BAD_REQUEST,
            PeerErrorCode::BadRequest,
            "the stream ends inside a line",
        );
    }
    StatusCode::NO_CONTENT.into_response()
}

/// A peer's newest state digests, compared with this node's own (a replica
/// whose state differs from a majority's stops serving reads).
#[utoipa::path(
    post,
    path = "/peer/v1/digests",
    tag = "consistency",
    params(("phxkv-peer-features" = Option<String>, Header,
        description = "As for `POST /peer/v1/messages`. Every member sends its report to every other every 2 s, with or without checkpoints, so members that exchange no Paxos messages (two followers) learn each other's features from it.")),
    request_body = super::digest::DigestReport,
    responses((status = 204, description = "Compared with this node's own.",
        headers(("phxkv-peer-features" = String,
            description = "This node's own features, as it names them in its requests, so that a member that has just started learns them from its first report rather than from this node's next one."))))
)]
async fn digests(
    State(node): State<Node>,
    headers: HeaderMap,
    report: PeerBody<super::digest::DigestReport>,
) -> Response {
    node.receive_digests(
        report.value,
        wire::Features::of(headers.get(wire::FEATURES_HEADER)),
    );
    (
        StatusCode::NO_CONTENT,
        [(wire::FEATURES_HEADER, wire::FEATURES)],
    )
        .into_response()
}

/// Who this node is, for a node deciding how to bootstrap and for a
/// replacement: JSON, like everything a person may want to read.
#[utoipa::path(
    get,
    path = "/peer/v1/hello",
    tag = "membership",
    responses((status = 200, description = "Who this node is and what it holds.", body = crate::cluster::bootstrap::Hello))
)]
async fn hello(State(node): State<Node>) -> Response {
    Json(node.hello()).into_response()
}

/// What this node saw an incarnation acknowledge: the highest ballot it
/// promised and the highest log index it held, from its `promise` and
/// `accepted` messages and the marks in its digest reports. A replica that
/// starts with a data directory asks every other member before its engine
/// handles anything, and refuses to start when its directory holds less
/// than a member saw (an older copy of its volume). Zeros: nothing seen
/// since this node started.
#[utoipa::path(
    get,
    path = "/peer/v1/acknowledged/{incarnation}",
    tag = "consistency",
    params(("incarnation" = String, Path, description = "An incarnation id, 16 hex digits.")),
    responses(
        (status = 200, description = "What this node saw it acknowledge.", body = super::rollback::Mark),
        (status = 400, description = "`bad_request`: not an incarnation id.", body = wire::PeerError),
    )
)]
async fn acknowledged(
    State(node): State<Node>,
    axum::extract::Path(incarnation): axum::extract::Path<String>,
) -> Response {
    match crate::cluster::bootstrap::parse_id(&incarnation) {
        Ok(id) => Json(node.acknowledged(id)).into_response(),
        Err(e) => error(StatusCode::BAD_REQUEST, PeerErrorCode::BadRequest, &e),
    }
}

/// A state machine snapshot for this node to install. The body is a 4-byte
/// big-endian length `n`, `n` bytes of JSON `SnapshotMeta`, then the state
/// machine image (the store in the compact encoding), usually streamed
/// (chunked): it is written to a file as it arrives, checked, and decoded
/// from the file, so it is never held in memory whole. A snapshot whose
/// index this node has already applied is answered at once, unread.
#[utoipa::path(
    post,
    path = "/peer/v1/snapshot",
    tag = "paxos",
    params(("to" = Option<String>, Query,
        description = "The incarnation id (16 hex digits) the snapshot is for.")),
    request_body(content(("application/octet-stream"))),
    responses(
        (status = 204, description = "Installed, or not needed: this node has already applied the snapshot's index (its data is then neither stored nor read)."),
        (status = 400, description = "`bad_snapshot`.", body = wire::PeerError),
        (status = 409, description = "`wrong_incarnation`.", body = wire::PeerError),
        (status = 503, description = "`unavailable`: a snapshot is already being received.", body = wire::PeerError),
    )
)]
async fn snapshot(
    State(node): State<Node>,
    axum::extract::RawQuery(query): axum::extract::RawQuery,
    body: axum::body::Body,
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
            PeerErrorCode::WrongIncarnation,
            &format!("this snapshot is for incarnation {to}, not this node's"),
        );
    }
    // Held until the handler ends, also when the sender goes away midway
    // (the future is dropped then).
    let Some(_receiving) = Receiving::start(&node.inner.receiving_snapshot) else {
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            PeerErrorCode::Unavailable,
            "a snapshot is already being received",
        );
    };
    match receive_snapshot(&node, body).await {
        Ok(()) => StatusCode::NO_CONTENT.into_response(),
        Err(SnapshotError::Bad(e)) => {
            error(StatusCode::BAD_REQUEST, PeerErrorCode::BadSnapshot, &e)
        }
        Err(SnapshotError::Service(e)) => service_error(e),
    }
}

/// The one snapshot being received.
struct Receiving<'a>(&'a std::sync::atomic::AtomicBool);

impl<'a> Receiving<'a> {
    fn start(flag: &'a std::sync::atomic::AtomicBool) -> Option<Receiving<'a>> {
        (!flag.swap(true, std::sync::atomic::Ordering::SeqCst)).then_some(Receiving(flag))
    }
}

impl Drop for Receiving<'_> {
    fn drop(&mut self) {
        self.0.store(false, std::sync::atomic::Ordering::SeqCst);
    }
}

enum SnapshotError {
    Bad(String),
    Service(ServiceError),
}

/// Bytes gathered before each write of a received snapshot to its file.
const SNAPSHOT_WRITE_BYTES: usize = 1 << 20;
/// A snapshot's header (its meta, a configuration) is small.
const MAX_SNAPSHOT_HEADER: usize = 16 << 20;

/// Streams a snapshot body into a file in the snapshot directory, decodes
/// the store from the file (which checks it), and hands both to the engine.
async fn receive_snapshot(node: &Node, body: axum::body::Body) -> Result<(), SnapshotError> {
    use crate::storage::snapshot_file::{self, Reader, Writer};
    use futures_util::StreamExt;

    let internal = |e: String| SnapshotError::Service(ServiceError::Internal(e));
    let bad = |e: String| SnapshotError::Bad(e);
    let mut stream = body.into_data_stream();
    let mut buf = Vec::new();
    let (meta, start) = loop {
        if buf.len() >= 4 {
            let len = u32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize;
            if len > MAX_SNAPSHOT_HEADER {
                return Err(bad("the snapshot's metadata is implausibly large".into()));
            }
            if buf.len() >= 4 + len {
                break wire::decode_snapshot(&buf).map_err(bad)?;
            }
        }
        match stream.next().await {
            Some(Ok(chunk)) => buf.extend_from_slice(&chunk),
            Some(Err(e)) => return Err(bad(format!("the snapshot did not arrive whole: {e}"))),
            None => return Err(bad("the snapshot body ends inside its header".into())),
        }
    };
    // A snapshot no newer than what this node has applied brings nothing:
    // answer before a byte of its data is written or decoded. The master
    // sends one for every catch-up request that asks for an index it has
    // compacted away, and a request sent just before this node installed
    // the same snapshot can arrive after that send ended: decoding it again
    // would hold a second whole store beside the installed one only for the
    // engine to drop it. (The engine checks again on install, so a snapshot
    // that passes here while an install is under way is still dropped.)
    let applied = node.inner.published.borrow().applied;
    if meta.index <= applied {
        tracing::debug!(
            index = meta.index,
            applied,
            "snapshot not needed: already applied"
        );
        return Ok(());
    }
    buf.drain(..start);
    let dir = snapshot_file::dir_of(&node.inner.cfg.data_dir);
    let file_meta = meta.clone();
    let mut writer = blocking(move || Writer::create(&dir, &file_meta))
        .await
        .map_err(internal)?;
    loop {
        let next = if buf.len() < SNAPSHOT_WRITE_BYTES {
            stream.next().await
        } else {
            None
        };
        let end = match next {
            Some(Ok(chunk)) => {
                buf.extend_from_slice(&chunk);
                false
            }
            Some(Err(e)) => return Err(bad(format!("the snapshot did not arrive whole: {e}"))),
            None => buf.len() < SNAPSHOT_WRITE_BYTES,
        };
        if buf.len() >= SNAPSHOT_WRITE_BYTES || end {
            let piece = std::mem::take(&mut buf);
            writer = blocking(move || writer.write(&piece).map(|()| writer))
                .await
                .map_err(internal)?;
        }
        if end {
            break;
        }
    }
    let sealed = blocking(move || writer.seal()).await.map_err(internal)?;
    let path = sealed.path().to_path_buf();
    let store = tokio::task::spawn_blocking(move || {
        let reader = Reader::open(&path).map_err(|e| e.to_string())?;
        crate::kv::Store::restore_from_reader(reader, crate::kv::StoreConfig::default())
            .map_err(|e| e.to_string())
    })
    .await
    .map_err(|e| internal(e.to_string()))?
    .map_err(|e| bad(format!("the snapshot's data is not a store: {e}")))?;
    node.install_snapshot(meta, store, sealed)
        .await
        .map_err(SnapshotError::Service)
}

/// Runs blocking file work off the async threads.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, crate::storage::StorageError> + Send + 'static,
) -> Result<T, String> {
    match tokio::task::spawn_blocking(f).await {
        Ok(r) => r.map_err(|e| e.to_string()),
        Err(e) => Err(e.to_string()),
    }
}

/// A write forwarded to the master, answered once it is applied.
#[utoipa::path(
    post,
    path = "/peer/v1/propose",
    tag = "forwarding",
    request_body(content((Command = "application/json"))),
    responses(
        (status = 200, description = "The outcome, or where the master is.", body = ProposeReply),
        (status = 400, description = "`bad_request`: an op a client could not send either (an empty or reserved key, say).", body = wire::PeerError),
        (status = 413, description = "`bad_request`: a key, value or transaction over this node's limits.", body = wire::PeerError),
    )
)]
async fn propose(State(node): State<Node>, body: PeerBody<Command>) -> Response {
    let deadline = Instant::now() + node.inner.cfg.write_timeout;
    match node.propose_forwarded(body.value, deadline).await {
        Ok(reply) => Reply::<ProposeReply>(reply).into_response(),
        Err(e) => service_error(e),
    }
}

/// Forwarded writes from a follower, in one request: answered together, in
/// order, once every one of them is applied or refused.
#[utoipa::path(
    post,
    path = "/peer/v1/propose_batch",
    tag = "forwarding",
    request_body(content((Vec<Command> = "application/json"))),
    responses((status = 200, description = "One answer per command, in order; a command a client could not send either (an empty key, one over this node's limits) is answered with its error.", body = Vec<wire::Forwarded>))
)]
async fn propose_batch(State(node): State<Node>, body: PeerBody<Vec<Command>>) -> Response {
    let deadline = Instant::now() + node.inner.cfg.write_timeout;
    let answers = node.propose_batch_local(body.value, deadline).await;
    Reply(answers).into_response()
}

/// The master's commit index for a linearizable read at a follower, given
/// only while the master holds its lease. The body is ignored.
#[utoipa::path(
    post,
    path = "/peer/v1/read_index",
    tag = "forwarding",
    responses((status = 200, description = "The index to wait for, or why there is none.", body = ReadIndexReply))
)]
async fn read_index(State(node): State<Node>) -> Response {
    match node.read_index_local().await {
        Ok(reply) => Reply::<ReadIndexReply>(reply).into_response(),
        Err(e) => service_error(e),
    }
}

/// Keep-alives or TTL questions for client leases, asked of the master.
/// Only a master with a valid lease that has applied everything earlier
/// masters chose answers for leases; any other node answers `not_master`
/// (with a hint when it knows the master; a master still catching up names
/// itself). Keep-alives are never logged: they move the master's deadlines.
#[utoipa::path(
    post,
    path = "/peer/v1/lease",
    tag = "forwarding",
    request_body(content((wire::LeaseQuestion = "application/json"))),
    responses((status = 200, description = "One answer per lease, in order, or why this node cannot answer.", body = wire::LeaseReply))
)]
async fn lease(State(node): State<Node>, body: PeerBody<wire::LeaseQuestion>) -> Response {
    match node.lease_local(body.value).await {
        Ok(reply) => Reply::<wire::LeaseReply>(reply).into_response(),
        Err(e) => service_error(e),
    }
}

/// A membership change forwarded to the master.
#[utoipa::path(
    post,
    path = "/peer/v1/change",
    tag = "membership",
    request_body(content((ConfChange = "application/json"))),
    responses((status = 200, description = "Where the change was proposed, or why not.", body = ChangeReply))
)]
async fn change(State(node): State<Node>, body: PeerBody<ConfChange>) -> Response {
    match node.change_local(body.value).await {
        Ok(reply) => Reply::<ChangeReply>(reply).into_response(),
        Err(e) => service_error(e),
    }
}

/// A request to hand mastership to a member, forwarded to the master. The
/// master checks that the target can take over at once, hands over, and
/// answers once it is no longer master (or why it did not hand over).
#[utoipa::path(
    post,
    path = "/peer/v1/transfer",
    tag = "membership",
    request_body(content((TransferRequest = "application/json"))),
    responses((status = 200, description = "Handed over, or why not.", body = TransferReply))
)]
async fn transfer(State(node): State<Node>, body: PeerBody<TransferRequest>) -> Response {
    let within = node.inner.cfg.write_timeout;
    match node.transfer_to(Some(body.value.target), within).await {
        Ok(reply) => Reply::<TransferReply>(reply).into_response(),
        Err(e) => service_error(e),
    }
}

/// This node's view of the cluster: the public `ClusterInfo` document,
/// always JSON. The body is ignored.
#[utoipa::path(
    post,
    path = "/peer/v1/cluster",
    tag = "membership",
    responses((status = 200, description = "This node's view of the cluster.", body = crate::api::service::ClusterInfo))
)]
async fn cluster(State(node): State<Node>) -> Response {
    Json(node.local_cluster()).into_response()
}

/// This document. It needs no token.
#[utoipa::path(
    get,
    path = "/peer/v1/openapi.json",
    tag = "operations",
    security(()),
    responses((status = 200, description = "The peer API's OpenAPI document.", content_type = "application/json"))
)]
async fn openapi_json() -> Json<utoipa::openapi::OpenApi> {
    Json(openapi())
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "phxkv peer API",
        version = "1",
        description = "What phxkv replicas say to each other on the peer port \
(default 8081): Multi-Paxos messages, snapshots, and the master's side of \
forwarded writes, read-index requests and membership changes.\n\n\
Every request carries the cluster token as `Authorization: Bearer <token>`; \
an address that sent 10 wrong tokens within 60 s (to either port) gets 429 \
`too_many_attempts`, whatever it sends, until the time in `Retry-After` has \
passed. Every request also carries the sender's `--read-mode` as `phxkv-read-mode: lease` or `quorum` \
(`lease` when absent); a node refuses a sender in another mode with 412 \
`read_mode_mismatch`. \
With `--tls-cert`, the port speaks TLS only and asks for a client \
certificate signed by the cluster CA: a connection without one fails in the \
handshake, before any route, and a plain-HTTP request gets 400 \
`tls_required` and a closed connection.\n\n\
Bodies are JSON (`application/json`); byte strings (keys, values) are \
standard base64; node ids are unsigned 64-bit integers (incarnation ids, \
shown elsewhere as 16 hex digits) that a reader must keep exact; enum values \
are externally tagged (`{\"accept\": {...}}`, or a bare string for a \
variant without data). Every answer carries `Accept-Post: application/json`, \
the request bodies the node takes.\n\n\
The engine tolerates loss, duplication and reordering of messages: a peer \
may drop what it cannot deliver. The version in the path changes only with \
an incompatible change of these bodies.",
        license(name = "Apache-2.0", identifier = "Apache-2.0"),
    ),
    paths(
        messages,
        stream,
        snapshot,
        propose,
        propose_batch,
        read_index,
        lease,
        change,
        transfer,
        cluster,
        hello,
        acknowledged,
        digests,
        openapi_json,
    ),
    // Schemas reached only through tuples and maps are not collected from the
    // handlers, so they are listed here to keep every `$ref` resolvable.
    components(schemas(
        wire::PeerError,
        wire::PeerErrorCode,
        crate::paxos::InstanceValue,
        crate::paxos::Membership,
        crate::paxos::Member,
        crate::paxos::Role,
        crate::paxos::LogEntry,
    )),
    tags(
        (name = "paxos", description = "The replication protocol."),
        (name = "forwarding", description = "A follower asking the master."),
        (name = "membership", description = "Members, incarnations and bootstrap."),
        (name = "consistency", description = "Replica state checks."),
        (name = "operations", description = "This document."),
    ),
    modifiers(&PeerCommon),
    security(("cluster_token" = [])),
)]
struct PeerDoc;

/// The token scheme, and the error answer every operation may give.
#[derive(Debug)]
struct PeerCommon;

impl Modify for PeerCommon {
    fn modify(&self, doc: &mut utoipa::openapi::OpenApi) {
        crate::api::docs::add_token_and_default_error(
            doc,
            "The cluster token configured on every node.",
            "PeerError",
            "Any other error: `unauthorized` (401), `bad_request` (400), \
             `unsupported_media_type` (415), `unavailable` (503), `timeout` (504), \
             `internal` (500).",
        );
    }
}

/// The OpenAPI 3.1 document of the peer API.
pub fn openapi() -> utoipa::openapi::OpenApi {
    unsigned_formats(PeerDoc::openapi())
}

/// The document with every unsigned integer's format named as such.
///
/// utoipa describes Rust's `u64` as `format: int64` with `minimum: 0`. A
/// peer written from that would keep node ids, which are random and use
/// all 64 bits, in a signed 64-bit integer, and fail on half of them; so
/// this document says `uint64` (and `uint32`), the names the OpenAPI
/// format registry gives them. Tools that do not know a format ignore it.
fn unsigned_formats(doc: utoipa::openapi::OpenApi) -> utoipa::openapi::OpenApi {
    fn walk(v: &mut serde_json::Value) {
        match v {
            serde_json::Value::Object(m) => {
                let integer = match m.get("type") {
                    Some(serde_json::Value::String(t)) => t == "integer",
                    Some(serde_json::Value::Array(ts)) => ts.iter().any(|t| t == "integer"),
                    _ => false,
                };
                let unsigned = m
                    .get("minimum")
                    .and_then(serde_json::Value::as_f64)
                    .is_some_and(|min| min == 0.0);
                if integer
                    && unsigned
                    && let Some(format) = m.get_mut("format")
                {
                    match format.as_str() {
                        Some("int64") => *format = "uint64".into(),
                        Some("int32") => *format = "uint32".into(),
                        _ => {}
                    }
                }
                m.values_mut().for_each(walk);
            }
            serde_json::Value::Array(items) => items.iter_mut().for_each(walk),
            _ => {}
        }
    }
    let Ok(mut value) = serde_json::to_value(&doc) else {
        return doc;
    };
    walk(&mut value);
    serde_json::from_value(value).unwrap_or(doc)
}
