//! Leases and the lock built on them: `/v1/leases` and `/v1/lock`.
//!
//! A lease is granted with a TTL; keys written with `?lease=` (or in a
//! transaction with `lease`) are deleted, in one revision, when it is
//! revoked or expires. Keep-alives go to the master, which alone decides
//! expiry (see [`crate::kv::lease`] for the guarantee and its argument).
//!
//! The lock is etcd's recipe, run on the server: a caller puts
//! `<name>/<lease, 16 hex digits>` attached to its lease, and holds the lock
//! once no key under `<name>/` has a smaller create revision. Waiters wait
//! for their predecessor's key to go, so a release wakes one waiter, and
//! a holder that dies releases the lock when its lease expires.

use std::time::{Duration, Instant};

use axum::Json;
use axum::Router;
use axum::extract::{Path, State};
use axum::http::Uri;
use axum::routing::{get, post};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::api::body::JsonBody;
use crate::api::encoding::{percent_decode, to_b64};
use crate::api::error::{ApiError, ErrorCode, ErrorResponse};
use crate::api::kv::{IdempotencyKey, unexpected};
use crate::api::query::QueryParams;
use crate::api::service::{Consistency, Service};
use crate::auth::gate::Caller;
use crate::auth::{Need, Refusal, RefusalKind};
use crate::kv::lease::MAX_LEASE_ID;
use crate::kv::{
    Compare, CompareOp, CompareTarget, LeaseOp, Op, OpResult, Txn, TxnOp, TxnResponse,
};
use crate::node::MAX_LEASES_PER_QUESTION;
use crate::node::wire::LeaseAnswer;

/// Leases a listing returns unless `limit` says otherwise, and at most.
const DEFAULT_LEASE_LIST: u64 = 100;
const MAX_LEASE_LIST: u64 = 1000;
/// Keys `GET /v1/leases/{id}?keys=true` names at most.
const MAX_LEASE_KEYS: usize = 1000;
/// How long a lock request waits for the lock unless it says otherwise,
/// and at most.
/// The default stays under the request timeouts of common HTTP clients
/// (often 10 s); a caller that waits longer says so, and keeps its own
/// timeout above it.
const DEFAULT_LOCK_WAIT_MS: u64 = 5_000;
const MAX_LOCK_WAIT_MS: u64 = 600_000;

/// Asks for a lease.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"ttl_secs": 10}))]
pub struct GrantRequest {
    /// Seconds the lease lives without a keep-alive: 2 to 604800 (7 days).
    #[schema(minimum = 2, maximum = 604800)]
    pub ttl_secs: u64,
    /// The lease's id, 1 to 2^53 - 1; chosen at random when absent.
    #[serde(default)]
    #[schema(minimum = 1, maximum = 9007199254740991_f64)]
    pub id: Option<u64>,
}

/// A lease just granted.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[schema(example = json!({"id": 758786123, "ttl_secs": 10, "revision": 12}))]
pub struct GrantResponse {
    pub id: u64,
    pub ttl_secs: u64,
    /// The revision of the grant.
    pub revision: u64,
}

/// A lease revoked.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct RevokeResponse {
    /// The revision at which the lease and its keys were deleted.
    pub revision: u64,
    /// How many keys were deleted with it.
    pub deleted: u64,
}

/// A live lease, as the master counts it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[schema(example = json!({"id": 758786123, "ttl_secs": 10, "remaining_ms": 9980, "granted_revision": 12}))]
pub struct LeaseStatus {
    pub id: u64,
    /// The TTL it was granted with, in seconds.
    pub ttl_secs: u64,
    /// Milliseconds before the master may expire it; right after a
    /// keep-alive, at least the TTL.
    pub remaining_ms: u64,
    /// The revision of its grant.
    pub granted_revision: u64,
    /// With `keys=true`: the keys attached to it (base64), at most 1000.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub keys: Option<Vec<String>>,
}

/// Keep-alives for several leases in one request.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct KeepAliveRequest {
    /// The leases to renew, at most 1000.
    pub ids: Vec<u64>,
}

/// The outcome of a keep-alive for several leases.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct KeepAliveResponse {
    /// The leases renewed.
    pub leases: Vec<LeaseStatus>,
    /// The leases that no longer exist or already expired: their keys are
    /// deleted or about to be.
    pub missing: Vec<u64>,
}

/// One lease in a listing.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct LeaseEntry {
    pub id: u64,
    pub ttl_secs: u64,
    pub granted_revision: u64,
}

/// A page of leases, by id.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct LeaseList {
    pub leases: Vec<LeaseEntry>,
    /// More leases follow; pass the last id as `after`.
    pub more: bool,
}

/// Asks for a lock.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"lease": 758786123, "wait_ms": 1000}))]
pub struct LockRequest {
    /// The lease that holds the lock: the lock is released when it ends.
    pub lease: u64,
    /// How long to wait for the lock, in milliseconds (default 5000, at
    /// most 600000); `0` only tries.
    #[serde(default)]
    #[schema(maximum = 600000)]
    pub wait_ms: Option<u64>,
    /// Stay queued when `wait_ms` ends without the lock (default false:
    /// leave the queue, if this request joined it). A client that waits
    /// longer than one request asks again with this set, keeping its place
    /// in line; when it gives up, it must leave the queue itself
    /// (`DELETE /v1/lock/{name}?lease=`), or it may hold the lock later
    /// without knowing.
    #[serde(default)]
    pub keep_place: bool,
}

/// A lock held.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[schema(example = json!({"key": "am9icy9uaWdodGx5LzAwMDAwMDAwMmQzYTI4NGI=", "key_utf8": "jobs/nightly/000000002d3a284b", "lease": 758786123, "fencing_token": 57}))]
pub struct LockResponse {
    /// The holder's key (base64): it exists exactly while this holder has
    /// the lock.
    pub key: String,
    /// The key as text, when it is UTF-8.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub key_utf8: Option<String>,
    pub lease: u64,
    /// A revision at which this holder held the lock. Every later holder
    /// of the same lock gets a larger one, so a service that remembers
    /// the largest token it has seen can refuse a holder whose lock has
    /// since passed on.
    pub fencing_token: u64,
}

/// A lock released.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct UnlockResponse {
    /// The revision after the release.
    pub revision: u64,
    /// Whether this lease held or waited for the lock.
    pub released: bool,
}

/// The `/v1/leases` and `/v1/lock` routes.
pub(crate) fn routes<S: Service>() -> Router<S> {
    Router::new()
        .route("/v1/leases", get(list_leases::<S>).post(grant::<S>))
        .route("/v1/leases/keepalive", post(keep_alive_many::<S>))
        .route("/v1/leases/keepalive/stream", post(keep_alive_stream::<S>))
        .route(
            "/v1/leases/{id}",
            get(lease_status::<S>).delete(revoke::<S>),
        )
        .route("/v1/leases/{id}/keepalive", post(keep_alive::<S>))
        .route("/v1/lock/", post(lock::<S>).delete(unlock::<S>))
        .route("/v1/lock/{*name}", post(lock::<S>).delete(unlock::<S>))
        .route("/v1/election/", post(campaign::<S>).get(leader::<S>))
        .route(
            "/v1/election/{*name}",
            post(campaign::<S>)
                .get(leader::<S>)
                .put(proclaim::<S>)
                .delete(resign::<S>),
        )
}

fn lease_not_found(id: u64) -> ApiError {
    ApiError::new(
        ErrorCode::LeaseNotFound,
        format!("lease {id} does not exist (never granted, revoked, or expired)"),
    )
}

fn parse_id(text: &str) -> Result<u64, ApiError> {
    text.parse::<u64>()
        .ok()
        .filter(|id| (1..=MAX_LEASE_ID).contains(id))
        .ok_or_else(|| {
            ApiError::invalid(format!(
                "a lease id is a number from 1 to {MAX_LEASE_ID}, got {}",
                crate::text::quoted(text)
            ))
        })
}

fn status_of(answer: LeaseAnswer) -> Result<LeaseStatus, u64> {
    match answer {
        LeaseAnswer::Alive {
            id,
            ttl_secs,
            remaining_ms,
            granted_revision,
        } => Ok(LeaseStatus {
            id,
            ttl_secs,
            remaining_ms,
            granted_revision,
            keys: None,
        }),
        LeaseAnswer::NotFound { id } | LeaseAnswer::Expired { id } => Err(id),
    }
}

/// Lease `id` as the master sees it (renewed first with `renew`), or 404.
async fn one_lease<S: Service>(svc: &S, id: u64, renew: bool) -> Result<LeaseStatus, ApiError> {
    let answer = svc
        .leases(vec![id], renew)
        .await?
        .pop()
        .ok_or_else(|| ApiError::internal("the master answered no lease"))?;
    status_of(answer).map_err(lease_not_found)
}

/// Grants a lease.
///
/// Keys attached to it (`PUT /v1/kv/{key}?lease=`) are deleted, together
/// at one revision, when it is revoked or when the master has had no
/// keep-alive for its TTL. The TTL counts from when the request was sent,
/// and after a change of master it restarts in full, plus the election
/// time: a lease never expires early because the master changed.
///
/// With auth on, a lease granted with an API token is held by that token:
/// only it and admins may renew it, revoke it or attach keys to it, and it
/// is listed to them only (403 `permission_denied` for another token).
#[utoipa::path(
    post,
    path = "/v1/leases",
    tag = "leases",
    params(
        ("Idempotency-Key" = Option<String>, Header, description = "Names this grant for its retries (see `PUT /v1/kv/{key}`)."),
    ),
    request_body = GrantRequest,
    responses(
        (status = 200, description = "Granted.", body = GrantResponse),
        (status = 400, description = "TTL or id out of range, or too many leases (100,000).", body = ErrorResponse),
        (status = 409, description = "A lease with this id exists (`lease_exists`).", body = ErrorResponse),
    )
)]
pub async fn grant<S: Service>(
    State(svc): State<S>,
    caller: Caller,
    IdempotencyKey(idempotency): IdempotencyKey,
    JsonBody(request): JsonBody<GrantRequest>,
) -> Result<Json<GrantResponse>, ApiError> {
    let id = match (request.id, &idempotency) {
        (Some(id), _) => id,
        // A retry must propose the very same grant to be recognised, so
        // the id comes from the Idempotency-Key (the half of the request
        // id that names the key; the other half names the op, the same for
        // every grant of one TTL) rather than at random.
        (None, Some(key)) => {
            let named = Op::Lease(LeaseOp::Grant {
                id: 0,
                ttl_secs: request.ttl_secs,
            });
            crate::kv::dedup::idempotent_id(key, &named).client % MAX_LEASE_ID + 1
        }
        (None, None) => rand::random_range(1..=MAX_LEASE_ID),
    };
    let op = match &caller {
        // A token's lease is for that token (and admins): see
        // `Store::may_hold_lease`.
        Caller::Token { id: token } if svc.lease_owners() => Op::Lease(LeaseOp::GrantOwned {
            id,
            ttl_secs: request.ttl_secs,
            owner: token.clone(),
        }),
        _ => Op::Lease(LeaseOp::Grant {
            id,
            ttl_secs: request.ttl_secs,
        }),
    };
    op.validate(&svc.limits())?;
    let op = caller.authorize_write(&svc, op).await?;
    match svc.write(op, idempotency).await? {
        OpResult::LeaseGranted {
            id,
            ttl_secs,
            revision,
        } => Ok(Json(GrantResponse {
            id,
            ttl_secs,
            revision,
        })),
        OpResult::LeaseIdTaken { id } => Err(ApiError::new(
            ErrorCode::LeaseExists,
            format!("a lease with id {id} exists already; leave the id out to get a fresh one"),
        )),
        other => Err(unexpected(&other)),
    }
}

/// Revokes a lease at once, deleting its keys.
///
/// With auth on, this needs the right to write every key attached, and for
/// a lease granted with a token, to be that token or an admin (403
/// `permission_denied` otherwise).
#[utoipa::path(
    delete,
    path = "/v1/leases/{id}",
    tag = "leases",
    params(("id" = u64, Path, description = "The lease.")),
    responses(
        (status = 200, description = "Revoked; its keys are deleted.", body = RevokeResponse),
        (status = 400, description = "Not a lease id.", body = ErrorResponse),
        (status = 404, description = "No such lease (`lease_not_found`).", body = ErrorResponse),
    )
)]
pub async fn revoke<S: Service>(
    State(svc): State<S>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<RevokeResponse>, ApiError> {
    let id = parse_id(&id)?;
    let op = caller
        .authorize_write(&svc, Op::Lease(LeaseOp::Revoke { id }))
        .await?;
    match svc.write(op, None).await? {
        OpResult::LeaseRevoked {
            revision, deleted, ..
        } => Ok(Json(RevokeResponse { revision, deleted })),
        OpResult::LeaseNotFound { id } => Err(lease_not_found(id)),
        other => Err(unexpected(&other)),
    }
}

/// Renews a lease (a keep-alive).
///
/// Answered by the master, which restarts the lease's TTL; never written
/// to the log, so keep-alives are cheap. Renew well within the TTL (a
/// third of it is a good interval). Since no replica checks a keep-alive
/// where it is applied, the credential is confirmed first by rules that
/// reflect every change chosen so far: a revoked token, or no token once
/// auth was enabled, is a 401 on every replica. With auth on, renewing
/// needs what revoking needs: holding the lease, or being an admin, for a
/// lease granted with a token, and the right to write every key attached
/// to it (403 `permission_denied` otherwise), so a token that may only
/// read cannot keep another client's lock alive.
#[utoipa::path(
    post,
    path = "/v1/leases/{id}/keepalive",
    tag = "leases",
    params(("id" = u64, Path, description = "The lease.")),
    responses(
        (status = 200, description = "Renewed.", body = LeaseStatus),
        (status = 400, description = "Not a lease id.", body = ErrorResponse),
        (status = 404, description = "No such lease, or it already expired (`lease_not_found`).", body = ErrorResponse),
    )
)]
pub async fn keep_alive<S: Service>(
    State(svc): State<S>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<LeaseStatus>, ApiError> {
    let id = parse_id(&id)?;
    caller
        .confirm_renewal(&svc, vec![id], MAX_LEASE_KEYS)
        .await?;
    one_lease(&svc, id, true).await.map(Json)
}

/// Renews several leases in one request.
///
/// One connection can hold many leases this way: send this every third
/// of the shortest TTL with every lease the client holds. Each needs the
/// right to write every key attached to it, as for one lease; a refusal
/// of any refuses the request.
#[utoipa::path(
    post,
    path = "/v1/leases/keepalive",
    tag = "leases",
    request_body = KeepAliveRequest,
    responses(
        (status = 200, description = "The leases renewed, and those that are gone.", body = KeepAliveResponse),
        (status = 400, description = "Malformed body, or more than 1000 ids.", body = ErrorResponse),
    )
)]
pub async fn keep_alive_many<S: Service>(
    State(svc): State<S>,
    caller: Caller,
    JsonBody(request): JsonBody<KeepAliveRequest>,
) -> Result<Json<KeepAliveResponse>, ApiError> {
    renew_many(&svc, &caller, request.ids).await.map(Json)
}

/// Renews `ids` (at most [`MAX_LEASES_PER_QUESTION`]) at the master, once
/// the caller is confirmed: a keep-alive is never written to the log, so
/// no replica checks it where it is applied.
async fn renew_many<S: Service>(
    svc: &S,
    caller: &Caller,
    ids: Vec<u64>,
) -> Result<KeepAliveResponse, ApiError> {
    if ids.len() > MAX_LEASES_PER_QUESTION {
        return Err(ApiError::invalid(format!(
            "at most {MAX_LEASES_PER_QUESTION} leases per keep-alive, got {}",
            ids.len()
        )));
    }
    caller
        .confirm_renewal(svc, ids.clone(), MAX_LEASE_KEYS)
        .await?;
    let mut out = KeepAliveResponse {
        leases: Vec::new(),
        missing: Vec::new(),
    };
    for answer in svc.leases(ids, true).await? {
        match status_of(answer) {
            Ok(status) => out.leases.push(status),
            Err(id) => out.missing.push(id),
        }
    }
    Ok(out)
}

/// The longest line a keep-alive stream takes: 1000 ids of 16 digits and
/// their commas, with room to spare.
const MAX_STREAM_LINE: usize = 64 * 1024;
/// A keep-alive stream with no line for this long is closed (a client
/// renews every third of its shortest TTL, and at least this often).
const STREAM_IDLE: Duration = Duration::from_secs(300);

/// Splits a request body into lines as they arrive, each bounded.
struct LineReader {
    body: axum::body::BodyDataStream,
    buf: Vec<u8>,
    ended: bool,
}

impl LineReader {
    /// The next line that is not blank; `None` once the body has ended.
    async fn next_line(&mut self) -> Result<Option<Vec<u8>>, ApiError> {
        use futures_util::StreamExt as _;
        loop {
            if let Some(pos) = self.buf.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = self.buf.drain(..=pos).collect();
                if line.iter().all(u8::is_ascii_whitespace) {
                    continue;
                }
                return Ok(Some(line));
            }
            if self.ended {
                let rest = std::mem::take(&mut self.buf);
                return Ok((!rest.iter().all(u8::is_ascii_whitespace)).then_some(rest));
            }
            if self.buf.len() > MAX_STREAM_LINE {
                return Err(ApiError::new(
                    ErrorCode::PayloadTooLarge,
                    format!("a keep-alive line is at most {MAX_STREAM_LINE} bytes"),
                ));
            }
            match tokio::time::timeout(STREAM_IDLE, self.body.next()).await {
                Err(_) => {
                    return Err(ApiError::invalid(format!(
                        "no keep-alive for {} s; the stream is closed",
                        STREAM_IDLE.as_secs()
                    )));
                }
                Ok(None) => self.ended = true,
                Ok(Some(Err(e))) => {
                    return Err(ApiError::invalid(format!("reading the stream: {e}")));
                }
                Ok(Some(Ok(chunk))) => self.buf.extend_from_slice(&chunk),
            }
        }
    }
}

/// One line of a keep-alive stream: the ids to renew.
fn stream_request(line: &[u8]) -> Result<Vec<u64>, ApiError> {
    serde_json::from_slice::<KeepAliveRequest>(line)
        .map(|r| r.ids)
        .map_err(|e| {
            ApiError::invalid(format!(
                "each line is a keep-alive request like {{\"ids\": [1, 2]}}: {e}"
            ))
        })
}

/// A value as one NDJSON line.
fn ndjson_line<T: Serialize>(value: &T) -> axum::body::Bytes {
    let mut line = serde_json::to_vec(value).unwrap_or_else(|_| b"{}".to_vec());
    line.push(b'\n');
    line.into()
}

/// Renews leases for as long as the client keeps the request open.
///
/// The request body is a stream of lines, each a keep-alive request
/// (`{"ids": [...]}`, at most 1000 ids, sent every third of the shortest
/// TTL); each is answered by one line of the response, in order: a
/// keep-alive response, or an error object (`{"error": {...}}`). So one
/// connection holds many leases without a request per renewal. Nothing
/// is renewed unless the client sends a line: a paused or dead client's
/// leases expire as they would without the stream.
///
/// The first line is answered before the response starts, so a malformed
/// first line gets a plain 400. After it, a malformed line is answered
/// with an error line and ends the stream; `unavailable` (no master right
/// now) is answered and the stream goes on; a caller no longer let in
/// (its token revoked, or auth enabled and no token) gets an
/// `unauthorized` line and the stream ends. A stream idle for 300 s is
/// closed. `curl -N -T - -H 'content-type: application/x-ndjson'` speaks it.
#[utoipa::path(
    post,
    path = "/v1/leases/keepalive/stream",
    tag = "leases",
    request_body(content = KeepAliveRequest, content_type = "application/x-ndjson",
        description = "One keep-alive request per line, for as long as the leases are needed; \
            a single JSON request is a stream of one line."),
    responses(
        (status = 200, description = "One line per request line: a keep-alive response or an error object.",
            content_type = "application/x-ndjson", body = KeepAliveResponse),
        (status = 400, description = "The first line is malformed or names more than 1000 leases, or the body is empty.", body = ErrorResponse),
        (status = 413, description = "A line over 64 KiB.", body = ErrorResponse),
    )
)]
pub async fn keep_alive_stream<S: Service>(
    State(svc): State<S>,
    caller: Caller,
    body: axum::body::Body,
) -> Result<axum::response::Response, ApiError> {
    let mut reader = LineReader {
        body: body.into_data_stream(),
        buf: Vec::new(),
        ended: false,
    };
    let first = reader
        .next_line()
        .await?
        .ok_or_else(|| ApiError::invalid("the stream ended before its first keep-alive"))?;
    let first = renew_many(&svc, &caller, stream_request(&first)?).await?;
    struct Session<S> {
        svc: S,
        caller: Caller,
        reader: LineReader,
        first: Option<KeepAliveResponse>,
    }
    let session = Session {
        svc,
        caller,
        reader,
        first: Some(first),
    };
    let lines = futures_util::stream::unfold(Some(session), |session| async move {
        let mut session = session?;
        if let Some(first) = session.first.take() {
            return Some((Ok(ndjson_line(&first)), Some(session)));
        }
        let answer = match session.reader.next_line().await {
            Ok(None) => return None,
            Ok(Some(line)) => match stream_request(&line) {
                Ok(ids) => renew_many(&session.svc, &session.caller, ids).await,
                Err(e) => Err(e),
            },
            Err(e) => Err(e),
        };
        match answer {
            Ok(a) => Some((Ok(ndjson_line(&a)), Some(session))),
            Err(e) => {
                // No master for a moment: say so and keep the stream, so
                // the client's next line may get through. Anything else
                // ends it.
                let keep = e.code() == ErrorCode::Unavailable;
                let line = ndjson_line(&ErrorResponse {
                    error: e.into_detail(),
                });
                Some((
                    Ok::<_, std::convert::Infallible>(line),
                    keep.then_some(session),
                ))
            }
        }
    });
    axum::response::Response::builder()
        .header(axum::http::header::CONTENT_TYPE, "application/x-ndjson")
        .body(axum::body::Body::from_stream(lines))
        .map_err(|e| ApiError::internal(format!("building the stream: {e}")))
}

/// A lease's TTL and time left, and with `keys=true` its keys.
///
/// With auth on, a lease granted with a token is shown to that token and
/// admins only (403 `permission_denied` for another token).
#[utoipa::path(
    get,
    path = "/v1/leases/{id}",
    tag = "leases",
    params(
        ("id" = u64, Path, description = "The lease."),
        ("keys" = Option<bool>, Query, description = "Also list the keys attached (at most 1000); needs read access to each."),
    ),
    responses(
        (status = 200, description = "The lease.", body = LeaseStatus),
        (status = 400, description = "Not a lease id, or a bad query parameter.", body = ErrorResponse),
        (status = 404, description = "No such lease (`lease_not_found`).", body = ErrorResponse),
    )
)]
pub async fn lease_status<S: Service>(
    State(svc): State<S>,
    caller: Caller,
    Path(id): Path<String>,
    mut query: QueryParams,
) -> Result<Json<LeaseStatus>, ApiError> {
    let id = parse_id(&id)?;
    let with_keys = match query.bytes("keys").as_deref() {
        None | Some(b"false") => false,
        Some(b"true") | Some(b"") => true,
        Some(other) => {
            return Err(ApiError::invalid(format!(
                "keys must be true or false, got {}",
                crate::text::quoted(&String::from_utf8_lossy(other))
            )));
        }
    };
    query.finish()?;
    check_holder(&svc, &caller, id).await?;
    let mut status = one_lease(&svc, id, false).await?;
    if with_keys {
        let keys = svc
            .read(Consistency::Linearizable, move |store| {
                let keys = store.lease_keys(id, MAX_LEASE_KEYS);
                for key in &keys {
                    caller.check(store, Need::Read(key))?;
                }
                Ok::<_, Refusal>(keys)
            })
            .await??;
        status.keys = Some(keys.iter().map(|k| to_b64(k)).collect());
    }
    Ok(Json(status))
}

/// With auth on, refuses a token other than the holder of `lease` (403),
/// unless it is an admin's: see [`crate::kv::Store::may_hold_lease`].
async fn check_holder<S: Service>(svc: &S, caller: &Caller, lease: u64) -> Result<(), ApiError> {
    let Caller::Token { id } = caller else {
        return Ok(());
    };
    let id = id.clone();
    svc.read(Consistency::Linearizable, move |store| {
        store.may_hold_lease(&id, lease)
    })
    .await??;
    Ok(())
}

/// Lists leases, by id.
///
/// With auth on, a token sees the leases it holds (those it granted) and
/// an admin sees every lease. A lease granted without a holder (by the
/// cluster token, with auth off, or during an upgrade from a version
/// without holders) is guarded by the rights to its keys alone, and while
/// it has none by its id alone, so its id is shown to admins only. Ids
/// drawn by the server are random (53 bits).
#[utoipa::path(
    get,
    path = "/v1/leases",
    tag = "leases",
    params(
        ("limit" = Option<u64>, Query, description = "Most leases to return, 1 to 1000 (default 100).", minimum = 1, maximum = 1000),
        ("after" = Option<u64>, Query, description = "Only leases with a larger id, to continue a listing."),
    ),
    responses(
        (status = 200, description = "One page of leases.", body = LeaseList),
        (status = 400, description = "Bad query parameter.", body = ErrorResponse),
    )
)]
pub async fn list_leases<S: Service>(
    State(svc): State<S>,
    caller: Caller,
    mut query: QueryParams,
) -> Result<Json<LeaseList>, ApiError> {
    let limit = query.page_limit(DEFAULT_LEASE_LIST, MAX_LEASE_LIST)?;
    let after = query.u64("after")?.unwrap_or(0);
    query.finish()?;
    let (leases, more) = svc
        .read(Consistency::Linearizable, move |store| {
            // Every lease for an admin (or anyone with auth off); a
            // token's own otherwise, found among at most MAX_LEASES.
            let holder = match (caller.check(store, Need::Admin), &caller) {
                (Ok(()), _) => None,
                (Err(r), Caller::Token { id }) if r.kind == RefusalKind::PermissionDenied => {
                    Some(id.as_str())
                }
                // Revoked since the request came in, say.
                (Err(refusal), _) => return Err(refusal),
            };
            let mut page: Vec<LeaseEntry> = store
                .leases_from(after.saturating_add(1))
                .filter(|l| holder.is_none_or(|me| store.lease_owner(l.id) == Some(me)))
                .take(limit + 1)
                .map(|l| LeaseEntry {
                    id: l.id,
                    ttl_secs: l.ttl_secs,
                    granted_revision: l.granted,
                })
                .collect();
            let more = page.len() > limit;
            page.truncate(limit);
            Ok::<_, Refusal>((page, more))
        })
        .await??;
    Ok(Json(LeaseList { leases, more }))
}

/// The lock's or election's name from the path after `route`, and the key
/// prefix under it.
fn queue_prefix(uri: &Uri, route: &str) -> Result<Vec<u8>, ApiError> {
    let raw = uri
        .path()
        .strip_prefix(route)
        .ok_or_else(|| ApiError::internal(format!("a route matched a path outside {route}")))?;
    let name = percent_decode(raw)?;
    if name.is_empty() {
        return Err(ApiError::invalid(format!(
            "a name is needed: {route}{{name}}"
        )));
    }
    let mut prefix = name;
    prefix.push(b'/');
    Ok(prefix)
}

fn lock_key(prefix: &[u8], lease: u64) -> Vec<u8> {
    let mut key = prefix.to_vec();
    key.extend_from_slice(format!("{lease:016x}").as_bytes());
    key
}

/// Where a holder stands in a lock's queue.
enum Place {
    /// First: it holds the lock at this revision.
    Holder(u64),
    /// It waits for this key (the one just before it) to go.
    Behind(Vec<u8>),
    /// Its key is gone: its lease ended.
    Gone,
}

/// Acquires a lock, waiting for it.
///
/// The lock is held by `lease`: it is released by `DELETE /v1/lock/{name}`
/// or when the lease ends (revoked, or expired because its holder died).
/// Waiters are served in the order they asked. Asking again with the same
/// lease while holding it answers at once.
#[utoipa::path(
    post,
    path = "/v1/lock/{name}",
    tag = "leases",
    params(("name" = String, Path, description = "The lock's name: the rest of the path, percent-decoded; its holders' keys live under `{name}/`.", example = "jobs/nightly")),
    request_body = LockRequest,
    responses(
        (status = 200, description = "The lock is held.", body = LockResponse),
        (status = 400, description = "No name, bad lease id or wait.", body = ErrorResponse),
        (status = 404, description = "The lease does not exist, or ended while waiting (`lease_not_found`).", body = ErrorResponse),
        (status = 413, description = "The name (with the lease's 16 hex digits) or the value is over the key or value limit.", body = ErrorResponse),
        (status = 409, description = "Another lease held the lock for all of `wait_ms` (`lock_held`); this lease is no longer queued, unless the request said `keep_place` or it was queued before the request.", body = ErrorResponse),
    )
)]
pub async fn lock<S: Service>(
    State(svc): State<S>,
    caller: Caller,
    uri: Uri,
    query: QueryParams,
    JsonBody(request): JsonBody<LockRequest>,
) -> Result<Json<LockResponse>, ApiError> {
    // Everything this route takes is in its body.
    query.finish()?;
    let prefix = queue_prefix(&uri, "/v1/lock/")?;
    let (key, fencing_token) = join_and_wait(
        &svc,
        &caller,
        &prefix,
        request.lease,
        Vec::new(),
        request.wait_ms,
        request.keep_place,
    )
    .await?;
    Ok(Json(LockResponse {
        key: to_b64(&key),
        key_utf8: String::from_utf8(key).ok(),
        lease: request.lease,
        fencing_token,
    }))
}

/// The queue behind a lock and an election (etcd's recipe): joins it under
/// `prefix` with `lease` (the key `<prefix><lease, 16 hex digits>`, holding
/// `value`) and waits up to `wait_ms` to be first. Answers the key and the
/// revision at which it was first; leaves the queue when it gives up,
/// unless `keep_place` (the caller will ask again) or it was already queued
/// when this request came.
async fn join_and_wait<S: Service>(
    svc: &S,
    caller: &Caller,
    prefix: &[u8],
    lease: u64,
    value: Vec<u8>,
    wait_ms: Option<u64>,
    keep_place: bool,
) -> Result<(Vec<u8>, u64), ApiError> {
    crate::kv::lease::check_id(lease).map_err(ApiError::invalid)?;
    let wait_ms = wait_ms.unwrap_or(DEFAULT_LOCK_WAIT_MS);
    if wait_ms > MAX_LOCK_WAIT_MS {
        return Err(ApiError::invalid(format!(
            "wait_ms must be at most {MAX_LOCK_WAIT_MS}, got {wait_ms}"
        )));
    }
    let deadline = Instant::now() + Duration::from_millis(wait_ms);
    let key = lock_key(prefix, lease);
    // Join the queue: create the key with the lease unless it is there.
    let txn = Op::Txn(Txn {
        compare: vec![Compare {
            key: key.clone(),
            op: CompareOp::Equal,
            target: CompareTarget::CreateRevision(0),
        }],
        success: vec![TxnOp::Put {
            key: key.clone(),
            value,
        }],
        failure: vec![TxnOp::Get { key: key.clone() }],
    });
    let op = Op::Leased {
        lease,
        op: Box::new(txn),
    };
    op.validate(&svc.limits())?;
    let op = caller.authorize_write(svc, op).await?;
    let (created, mine) = match svc.write(op, None).await? {
        OpResult::Txn {
            succeeded: true,
            revision,
            ..
        } => (true, revision),
        OpResult::Txn { responses, .. } => match responses.first() {
            Some(TxnResponse::Get { kv: Some(kv) }) => (false, kv.create_revision),
            _ => return Err(lease_not_found(lease)),
        },
        OpResult::LeaseNotFound { id } => return Err(lease_not_found(id)),
        other => return Err(unexpected(&other)),
    };
    let outcome = wait_for_turn(svc, caller, prefix, &key, mine, deadline).await;
    match outcome {
        Ok(Place::Holder(token)) => Ok((key, token)),
        Ok(Place::Gone) => Err(ApiError::new(
            ErrorCode::LeaseNotFound,
            format!("lease {lease} ended while waiting"),
        )),
        Ok(Place::Behind(_)) | Err(_) => {
            // Leave the queue, so that a waiter that gave up never holds the
            // lock later without knowing it; a key that was there before
            // this request is the caller's to release, and so is one the
            // caller asked to keep (it will ask again, or release it).
            let kept = keep_place && outcome.is_ok();
            if created && !kept {
                let op = caller
                    .authorize_write(
                        svc,
                        Op::Delete {
                            key: key.clone(),
                            expect: None,
                        },
                    )
                    .await?;
                svc.write(op, None).await?;
            }
            match outcome {
                Err(e) => Err(e),
                _ => Err(ApiError::new(
                    ErrorCode::LockHeld,
                    format!(
                        "{:?} is held by another lease; not first within {wait_ms} ms{}",
                        String::from_utf8_lossy(&prefix[..prefix.len() - 1]),
                        if keep_place {
                            "; still queued (keep_place)"
                        } else {
                            ""
                        }
                    ),
                )),
            }
        }
    }
}

/// Waits until `key` (created at revision `mine`) is the oldest under
/// `prefix`, or until `deadline`.
async fn wait_for_turn<S: Service>(
    svc: &S,
    caller: &Caller,
    prefix: &[u8],
    key: &[u8],
    mine: u64,
    deadline: Instant,
) -> Result<Place, ApiError> {
    loop {
        let (place, revision) = {
            let (caller, prefix, key) = (caller.clone(), prefix.to_vec(), key.to_vec());
            svc.read(Consistency::Linearizable, move |store| {
                caller.check(store, Need::ReadPrefix(&prefix))?;
                Ok::<_, Refusal>((place_of(store, &prefix, &key, mine), store.revision()))
            })
            .await??
        };
        let Place::Behind(before) = place else {
            return Ok(place);
        };
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Ok(Place::Behind(before));
        }
        // Wait for a change to the key ahead (its deletion, in the end),
        // then look again.
        let mut events = svc.watch(before.clone(), revision + 1)?;
        let woke = tokio::time::timeout(left, async {
            while let Some(event) = events.recv().await {
                match event {
                    Ok(e) if e.kv.key == before => return Ok(()),
                    Ok(_) => {}
                    Err(e) => return Err(ApiError::from(e)),
                }
            }
            Ok(())
        })
        .await;
        if let Ok(Err(e)) = woke {
            return Err(e);
        }
    }
}

/// Where `key` stands among the keys under `prefix`.
fn place_of(store: &crate::kv::Store, prefix: &[u8], key: &[u8], mine: u64) -> Place {
    if store.get(key).is_none_or(|kv| kv.create_revision != mine) {
        return Place::Gone;
    }
    // The key just ahead: the youngest of those older than `key`.
    match store
        .created_under(prefix)
        .filter(|(_, created)| *created < mine)
        .max_by_key(|(_, created)| *created)
    {
        Some((ahead, _)) => Place::Behind(ahead.to_vec()),
        None => Place::Holder(store.revision()),
    }
}

/// The first in the queue under `prefix`: the lock's holder, the leader.
fn first_under(store: &crate::kv::Store, prefix: &[u8]) -> Option<crate::kv::KeyValue> {
    let (first, _) = store
        .created_under(prefix)
        .min_by_key(|(_, created)| *created)?;
    store.get(first)
}

/// Releases a lock held (or waited for) by `lease`.
///
/// With auth on, this needs write on the lock's key, and for a lease
/// granted with a token, to be that token or an admin.
#[utoipa::path(
    delete,
    path = "/v1/lock/{name}",
    tag = "leases",
    params(
        ("name" = String, Path, description = "The lock's name.", example = "jobs/nightly"),
        ("lease" = u64, Query, description = "The lease that holds it."),
    ),
    responses(
        (status = 200, description = "Released (or it was not held by this lease).", body = UnlockResponse),
        (status = 400, description = "No name, or a bad lease id.", body = ErrorResponse),
        (status = 413, description = "The name (with the lease's 16 hex digits) is over the key limit.", body = ErrorResponse),
    )
)]
pub async fn unlock<S: Service>(
    State(svc): State<S>,
    caller: Caller,
    uri: Uri,
    query: QueryParams,
) -> Result<Json<UnlockResponse>, ApiError> {
    leave(&svc, &caller, &queue_prefix(&uri, "/v1/lock/")?, query).await
}

/// Deletes `lease`'s key (from `?lease=`) in the queue under `prefix`.
async fn leave<S: Service>(
    svc: &S,
    caller: &Caller,
    prefix: &[u8],
    mut query: QueryParams,
) -> Result<Json<UnlockResponse>, ApiError> {
    let lease = query
        .u64("lease")?
        .ok_or_else(|| ApiError::invalid("give the lease that holds it: ?lease=ID"))?;
    query.finish()?;
    crate::kv::lease::check_id(lease).map_err(ApiError::invalid)?;
    // The key is a plain key to the state machine; that it is the
    // lease's place in the line is known here only.
    check_holder(svc, caller, lease).await?;
    let op = Op::Delete {
        key: lock_key(prefix, lease),
        expect: None,
    };
    op.validate(&svc.limits())?;
    let op = caller.authorize_write(svc, op).await?;
    match svc.write(op, None).await? {
        OpResult::Delete { revision, deleted } => Ok(Json(UnlockResponse {
            revision,
            released: deleted,
        })),
        other => Err(unexpected(&other)),
    }
}

/// Asks to lead an election, or (as its leader) to change the value.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"lease": 758786123, "value": "10.0.0.7:8080"}))]
pub struct CampaignRequest {
    /// The lease that holds the leadership: it ends with the lease.
    pub lease: u64,
    /// What the leader announces (text); or `value_b64` for bytes.
    #[serde(default)]
    pub value: Option<String>,
    #[serde(default)]
    pub value_b64: Option<String>,
    /// A campaign waits this long to lead, in milliseconds (default 5000,
    /// at most 600000); `0` only tries. Ignored by a proclamation.
    #[serde(default)]
    #[schema(maximum = 600000)]
    pub wait_ms: Option<u64>,
    /// Stay a candidate when `wait_ms` ends without leading (default false:
    /// stop being one, if this request made it one). A client that waits
    /// longer than one request asks again with this set, keeping its place
    /// in line; when it gives up, it must resign
    /// (`DELETE /v1/election/{name}?lease=`), or it may lead later without
    /// knowing. Ignored by a proclamation.
    #[serde(default)]
    pub keep_place: bool,
}

impl CampaignRequest {
    fn value(&self) -> Result<Vec<u8>, ApiError> {
        match (&self.value, &self.value_b64) {
            (Some(_), Some(_)) => Err(ApiError::invalid(
                "give either value or value_b64, not both",
            )),
            (Some(text), None) => Ok(text.clone().into_bytes()),
            (None, Some(b64)) => crate::api::encoding::from_b64("value_b64", b64),
            (None, None) => Ok(Vec::new()),
        }
    }
}

/// An election's leader.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Leader {
    /// The leader's key (base64), and as text when it is UTF-8.
    pub key: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub key_utf8: Option<String>,
    /// What it announces (base64), and as text when it is UTF-8.
    pub value: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub value_utf8: Option<String>,
    /// The lease that holds the leadership.
    pub lease: u64,
    /// The revision at which this leader's term began (its key's creation):
    /// larger for every later term, so it fences like a lock's token.
    pub term_revision: u64,
}

fn leader_of(kv: crate::kv::KeyValue, lease: u64) -> Leader {
    Leader {
        key: to_b64(&kv.key),
        key_utf8: String::from_utf8(kv.key).ok(),
        value: to_b64(&kv.value),
        value_utf8: String::from_utf8(kv.value).ok(),
        lease,
        term_revision: kv.create_revision,
    }
}

/// Campaigns to lead an election, waiting to be elected.
///
/// Candidates are elected in the order they campaigned; the leader leads
/// until it resigns or its lease ends (etcd's `Campaign`).
#[utoipa::path(
    post,
    path = "/v1/election/{name}",
    tag = "leases",
    params(("name" = String, Path, description = "The election's name; candidates' keys live under `{name}/`.", example = "scheduler")),
    request_body = CampaignRequest,
    responses(
        (status = 200, description = "Elected.", body = Leader),
        (status = 400, description = "No name, bad lease id, value or wait.", body = ErrorResponse),
        (status = 404, description = "The lease does not exist, or ended while waiting (`lease_not_found`).", body = ErrorResponse),
        (status = 413, description = "The name (with the lease's 16 hex digits) or the value is over the key or value limit.", body = ErrorResponse),
        (status = 409, description = "Another candidate led for all of `wait_ms` (`lock_held`); this one is no longer a candidate, unless the request said `keep_place` or it was one before the request.", body = ErrorResponse),
    )
)]
pub async fn campaign<S: Service>(
    State(svc): State<S>,
    caller: Caller,
    uri: Uri,
    query: QueryParams,
    JsonBody(request): JsonBody<CampaignRequest>,
) -> Result<Json<Leader>, ApiError> {
    // Everything this route takes is in its body.
    query.finish()?;
    let prefix = queue_prefix(&uri, "/v1/election/")?;
    let value = request.value()?;
    let (key, _) = join_and_wait(
        &svc,
        &caller,
        &prefix,
        request.lease,
        value,
        request.wait_ms,
        request.keep_place,
    )
    .await?;
    let lease = request.lease;
    let kv = svc
        .read(Consistency::Linearizable, move |store| store.get(&key))
        .await?
        .ok_or_else(|| lease_not_found(lease))?;
    Ok(Json(leader_of(kv, lease)))
}

/// The election's leader now (etcd's `Leader`; watch `{name}/` to follow
/// changes).
#[utoipa::path(
    get,
    path = "/v1/election/{name}",
    tag = "leases",
    params(("name" = String, Path, description = "The election's name.", example = "scheduler")),
    responses(
        (status = 200, description = "The leader.", body = Leader),
        (status = 404, description = "No leader (`key_not_found`).", body = ErrorResponse),
    )
)]
pub async fn leader<S: Service>(
    State(svc): State<S>,
    caller: Caller,
    uri: Uri,
    query: QueryParams,
) -> Result<Json<Leader>, ApiError> {
    query.finish()?;
    let prefix = queue_prefix(&uri, "/v1/election/")?;
    let first = svc
        .read(Consistency::Linearizable, move |store| {
            caller.check(store, Need::ReadPrefix(&prefix))?;
            Ok::<_, Refusal>(first_under(store, &prefix).map(|kv| {
                let lease = store.lease_of(&kv.key).unwrap_or(0);
                (kv, lease)
            }))
        })
        .await??;
    let (kv, lease) =
        first.ok_or_else(|| ApiError::new(ErrorCode::KeyNotFound, "the election has no leader"))?;
    Ok(Json(leader_of(kv, lease)))
}

/// Changes the value the leader announces (etcd's `Proclaim`); only the
/// leader may.
#[utoipa::path(
    put,
    path = "/v1/election/{name}",
    tag = "leases",
    params(("name" = String, Path, description = "The election's name.", example = "scheduler")),
    request_body = CampaignRequest,
    responses(
        (status = 200, description = "Announced.", body = Leader),
        (status = 400, description = "No name, bad lease id or value.", body = ErrorResponse),
        (status = 413, description = "The name (with the lease's 16 hex digits) or the value is over the key or value limit.", body = ErrorResponse),
        (status = 409, description = "This lease does not lead the election (`not_leader`); nothing changed.", body = ErrorResponse),
    )
)]
pub async fn proclaim<S: Service>(
    State(svc): State<S>,
    caller: Caller,
    uri: Uri,
    query: QueryParams,
    JsonBody(request): JsonBody<CampaignRequest>,
) -> Result<Json<Leader>, ApiError> {
    // Everything this route takes is in its body.
    query.finish()?;
    let prefix = queue_prefix(&uri, "/v1/election/")?;
    let value = request.value()?;
    let lease = request.lease;
    let key = lock_key(&prefix, lease);
    let not_leader = || {
        ApiError::new(
            ErrorCode::NotLeader,
            format!("lease {lease} does not lead this election"),
        )
    };
    // Leading now: its key is the first. The put below is conditional on
    // the same key (same creation), and no key can get ahead of one that
    // exists, so it still leads when the put applies.
    let term = {
        let (caller, prefix, key) = (caller.clone(), prefix.clone(), key.clone());
        svc.read(Consistency::Linearizable, move |store| {
            caller.check(store, Need::ReadPrefix(&prefix))?;
            Ok::<_, Refusal>(first_under(store, &prefix).filter(|kv| kv.key == key))
        })
        .await??
        .ok_or_else(not_leader)?
        .create_revision
    };
    let op = Op::Leased {
        lease,
        op: Box::new(Op::Txn(Txn {
            compare: vec![Compare {
                key: key.clone(),
                op: CompareOp::Equal,
                target: CompareTarget::CreateRevision(term),
            }],
            success: vec![TxnOp::Put {
                key: key.clone(),
                value: value.clone(),
            }],
            failure: Vec::new(),
        })),
    };
    op.validate(&svc.limits())?;
    let op = caller.authorize_write(&svc, op).await?;
    match svc.write(op, None).await? {
        OpResult::Txn {
            succeeded: true, ..
        } => Ok(Json(leader_of(
            crate::kv::KeyValue {
                key,
                value,
                version: 0,
                create_revision: term,
                mod_revision: 0,
            },
            lease,
        ))),
        OpResult::Txn { .. } | OpResult::LeaseNotFound { .. } => Err(not_leader()),
        other => Err(unexpected(&other)),
    }
}

/// Resigns from an election (or stops campaigning).
///
/// With auth on, this needs what releasing a lock needs.
#[utoipa::path(
    delete,
    path = "/v1/election/{name}",
    tag = "leases",
    params(
        ("name" = String, Path, description = "The election's name.", example = "scheduler"),
        ("lease" = u64, Query, description = "The candidate's lease."),
    ),
    responses(
        (status = 200, description = "Resigned (or it was not a candidate).", body = UnlockResponse),
        (status = 400, description = "No name, or a bad lease id.", body = ErrorResponse),
        (status = 413, description = "The name (with the lease's 16 hex digits) is over the key limit.", body = ErrorResponse),
    )
)]
pub async fn resign<S: Service>(
    State(svc): State<S>,
    caller: Caller,
    uri: Uri,
    query: QueryParams,
) -> Result<Json<UnlockResponse>, ApiError> {
    leave(&svc, &caller, &queue_prefix(&uri, "/v1/election/")?, query).await
}
