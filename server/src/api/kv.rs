//! Single-key reads and writes, and prefix listings: `/v1/kv`.
//!
//! The key is everything after `/v1/kv/`, percent-decoded to bytes, so any
//! byte string is addressable; values travel as raw bodies so that storing
//! a file needs no encoding at all. Listings are JSON, with base64 keys.

use axum::Json;
use axum::Router;
use axum::extract::State;
use axum::http::{HeaderName, HeaderValue, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::api::body::RawBody;
use crate::api::encoding::{KvJson, percent_decode, to_b64};
use crate::api::error::{ApiError, ErrorCode, ErrorResponse};
use crate::api::query::{QueryParams, ReadConsistency};
use crate::api::service::{Consistency, Service, ServiceError};
use crate::auth::gate::Caller;
use crate::auth::{Need, Refusal};
use crate::kv::dedup::MAX_IDEMPOTENCY_KEY;
use crate::kv::{Expect, MAX_DELETE_PREFIX, Op, OpResult, RangeRequest};

/// Where keys start in the path.
const KEY_PREFIX: &str = "/v1/kv/";
/// Keys a listing returns unless `limit` says otherwise.
pub const DEFAULT_LIST_LIMIT: u64 = 100;
/// The most keys one listing may ask for.
pub const MAX_LIST_LIMIT: u64 = 1000;

/// The key's version.
pub const VERSION_HEADER: &str = "x-phxkv-version";
/// The revision that created the key.
pub const CREATE_REVISION_HEADER: &str = "x-phxkv-create-revision";
/// The revision of the key's last write.
pub const MOD_REVISION_HEADER: &str = "x-phxkv-mod-revision";
/// The store revision the read reflects.
pub const REVISION_HEADER: &str = "x-phxkv-revision";

/// A value as raw bytes: any content, sent and answered as
/// `application/octet-stream`.
#[derive(Debug, ToSchema)]
#[schema(value_type = String, format = Binary)]
pub struct RawValue(pub Vec<u8>);

/// The result of a put.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[schema(example = json!({"revision": 42, "version": 3}))]
pub struct PutResponse {
    /// The store revision of this write.
    pub revision: u64,
    /// The key's version after the write; `1` when it was just created.
    pub version: u64,
}

/// The result of a delete.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[schema(example = json!({"revision": 43, "deleted": true}))]
pub struct DeleteResponse {
    /// The revision of the deletion, or the unchanged current revision when
    /// the key did not exist.
    pub revision: u64,
    /// Whether the key existed.
    pub deleted: bool,
}

/// The result of a prefix delete.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[schema(example = json!({"revision": 44, "deleted": 120, "more": false}))]
pub struct DeletePrefixResponse {
    /// The revision of the deletion (every key deleted shares it), or the
    /// unchanged current revision when no key matched.
    pub revision: u64,
    /// How many keys were deleted.
    pub deleted: u64,
    /// Whether keys under the prefix are left because `limit` was reached:
    /// send the same request again to delete the next ones.
    pub more: bool,
}

/// One page of keys sharing a prefix.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ListResponse {
    /// The store revision the whole page reflects.
    pub revision: u64,
    /// Matching keys in byte order.
    pub kvs: Vec<KvJson>,
    /// More keys match beyond this page.
    pub more: bool,
    /// With `more`: the last key of this page, base64. Pass it (decoded and
    /// percent-encoded) as `after` to fetch the next page.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false, content_encoding = "base64")]
    pub next_after: Option<String>,
}

/// The `/v1/kv` routes.
pub(crate) fn routes<S: Service>() -> Router<S> {
    let key_routes = || get(get_key::<S>).put(put_key::<S>).delete(delete_key::<S>);
    Router::new()
        .route("/v1/kv", get(list::<S>).delete(delete_prefix::<S>))
        // An empty key gets a clear 400 from validation instead of a 404.
        .route("/v1/kv/", key_routes())
        .route("/v1/kv/{*key}", key_routes())
}

/// The key named by the request path.
fn path_key(uri: &Uri) -> Result<Vec<u8>, ApiError> {
    let raw = uri
        .path()
        .strip_prefix(KEY_PREFIX)
        .ok_or_else(|| ApiError::internal("key route matched a path outside /v1/kv/"))?;
    percent_decode(raw)
}

/// The compare-and-swap condition in `if_version` / `if_mod_revision`.
fn expect_from(query: &mut QueryParams) -> Result<Option<Expect>, ApiError> {
    match (query.u64("if_version")?, query.u64("if_mod_revision")?) {
        (Some(_), Some(_)) => Err(ApiError::invalid(
            "give at most one of if_version and if_mod_revision",
        )),
        (Some(v), None) => Ok(Some(Expect::Version(v))),
        (None, Some(r)) => Ok(Some(Expect::ModRevision(r))),
        (None, None) => Ok(None),
    }
}

/// Refuses a local read that waits for a revision the cluster has not
/// reached, instead of letting it wait out the read timeout and answer 503.
///
/// Waiting is right when this replica lags behind a revision the client saw
/// elsewhere, so the cluster's revision is only asked for (a linearizable
/// read through the master) when this replica is behind `min_revision`.
/// Nobody can have seen a revision beyond the cluster's, so such a request
/// is a client error, and no amount of retrying would make it succeed soon.
async fn check_min_revision<S: Service>(svc: &S, consistency: Consistency) -> Result<(), ApiError> {
    let Consistency::Local {
        min_revision: Some(min),
    } = consistency
    else {
        return Ok(());
    };
    let here = Consistency::Local { min_revision: None };
    if svc.read(here, |store| store.revision()).await? >= min {
        return Ok(());
    }
    let current = svc
        .read(Consistency::Linearizable, |store| store.revision())
        .await?;
    if min > current {
        return Err(ApiError::invalid(format!(
            "min_revision {min} is ahead of the cluster's current revision {current}"
        )));
    }
    Ok(())
}

/// For results a correct node never returns for the op it was given.
pub(crate) fn unexpected(result: &OpResult) -> ApiError {
    if let OpResult::Refused(refusal) = result {
        return ApiError::from(refusal.clone());
    }
    if let OpResult::LeaseNotFound { id } = result {
        return ApiError::new(
            ErrorCode::LeaseNotFound,
            format!(
                "lease {id} does not exist (never granted, revoked, or expired); nothing changed"
            ),
        );
    }
    if *result == OpResult::IdempotencyKeyReused {
        return ApiError::new(
            ErrorCode::IdempotencyKeyReused,
            "this Idempotency-Key was used recently for a different write; nothing changed \
             (use a new key for each write, the same key only for its retries)",
        );
    }
    ApiError::internal(format!("unexpected result from the node: {result:?}"))
}

/// The `Idempotency-Key` header, if the request has one: a retry of a write
/// with the same key, at any node, returns the first attempt's outcome
/// instead of applying the write again.
#[derive(Debug)]
pub struct IdempotencyKey(pub Option<String>);

impl<S: Send + Sync> axum::extract::FromRequestParts<S> for IdempotencyKey {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        _state: &S,
    ) -> Result<Self, Self::Rejection> {
        let Some(v) = parts.headers.get("idempotency-key") else {
            return Ok(IdempotencyKey(None));
        };
        let bytes = v.as_bytes();
        if bytes.is_empty()
            || bytes.len() > MAX_IDEMPOTENCY_KEY
            || !bytes.iter().all(|b| (0x21..=0x7e).contains(b))
        {
            return Err(ApiError::invalid(format!(
                "the Idempotency-Key header must be 1 to {MAX_IDEMPOTENCY_KEY} visible ASCII \
                 characters (a UUID is a good choice)"
            )));
        }
        Ok(IdempotencyKey(Some(
            String::from_utf8_lossy(bytes).into_owned(),
        )))
    }
}

/// Stores a value.
///
/// The body is the value, stored byte for byte whatever its content type.
/// With `if_version` or `if_mod_revision` the write only happens when the
/// key is in that state (`0`: the key must not exist).
#[utoipa::path(
    put,
    path = "/v1/kv/{key}",
    tag = "kv",
    params(
        ("key" = String, Path, description = "The key: the rest of the path, percent-decoded to bytes (binary safe, may contain `/`).", example = "config/a", min_length = 1),
        ("if_version" = Option<u64>, Query, description = "Write only if the key's version is this (`0`: only if absent)."),
        ("if_mod_revision" = Option<u64>, Query, description = "Write only if the key's mod revision is this (`0`: only if absent)."),
        ("lease" = Option<u64>, Query, description = "Attach the key to this lease: it is deleted when the lease ends. A put without `lease` detaches the key from any lease."),
        ("Idempotency-Key" = Option<String>, Header, description = "Names this write for its retries: a retry with the same key and the same request, at any replica, returns the first attempt's outcome instead of applying again (after a 504, say). Recognised while the write is among the last 100,000 applied; a key reused for a different write is refused with 422 `idempotency_key_reused`. 1 to 128 visible ASCII characters, e.g. a UUID."),
    ),
    request_body(description = "The value, as raw bytes.", content((RawValue = "application/octet-stream"))),
    responses(
        (status = 200, description = "Written.", body = PutResponse),
        (status = 400, description = "Empty key or bad query parameter.", body = ErrorResponse),
        (status = 404, description = "The `lease` does not exist (`lease_not_found`); nothing changed.", body = ErrorResponse),
        (status = 409, description = "The condition did not hold (`compare_failed`); nothing changed.", body = ErrorResponse),
        (status = 413, description = "Key or value over the limit.", body = ErrorResponse),
        (status = 422, description = "The `Idempotency-Key` was used for a different write (`idempotency_key_reused`); nothing changed.", body = ErrorResponse),
        (status = 507, description = "The write would take the store past its quota (`quota_exceeded`), or the volume of the replica that took it is nearly full (`disk_full`); nothing changed. Deletes are still taken.", body = ErrorResponse),
    )
)]
pub async fn put_key<S: Service>(
    State(svc): State<S>,
    caller: Caller,
    uri: Uri,
    mut query: QueryParams,
    IdempotencyKey(idempotency): IdempotencyKey,
    RawBody(value): RawBody,
) -> Result<Json<PutResponse>, ApiError> {
    let key = path_key(&uri)?;
    let expect = expect_from(&mut query)?;
    let lease = query.u64("lease")?;
    query.finish()?;
    let op = Op::Put {
        key,
        value: value.to_vec(),
        expect,
    };
    let op = match lease {
        Some(lease) => Op::Leased {
            lease,
            op: Box::new(op),
        },
        None => op,
    };
    op.validate(&svc.limits())?;
    let op = caller.authorize_write(&svc, op).await?;
    match svc.write(op, idempotency).await? {
        OpResult::Put { revision, version } => Ok(Json(PutResponse { revision, version })),
        OpResult::CompareFailed {
            current_version,
            current_mod_revision,
        } => Err(ApiError::compare_failed(
            current_version,
            current_mod_revision,
        )),
        other => Err(unexpected(&other)),
    }
}

/// Reads a value.
///
/// The body is the raw value; the key's bookkeeping is in headers.
#[utoipa::path(
    get,
    path = "/v1/kv/{key}",
    tag = "kv",
    params(
        ("key" = String, Path, description = "The key, percent-encoded.", example = "config/a", min_length = 1),
        ("consistency" = Option<ReadConsistency>, Query, description = "`linearizable` (default; confirmed as the cluster's `--read-mode` says: by the master's lease, or by a round trip to a majority in `quorum` mode) or `local` (this replica, possibly stale)."),
        ("min_revision" = Option<u64>, Query, description = "With `consistency=local`: wait until the replica has applied this revision; refused with 400 when the cluster has not reached it."),
    ),
    responses(
        (status = 200, description = "The value.", content((RawValue = "application/octet-stream")),
            headers(
                ("X-Phxkv-Version" = u64, description = "The key's version."),
                ("X-Phxkv-Create-Revision" = u64, description = "The revision that created the key."),
                ("X-Phxkv-Mod-Revision" = u64, description = "The revision of the key's last write."),
                ("X-Phxkv-Revision" = u64, description = "The store revision the read reflects."),
            )),
        (status = 400, description = "Empty key, bad query parameter, or `min_revision` ahead of the cluster's revision.", body = ErrorResponse),
        (status = 404, description = "No such key (`key_not_found`).", body = ErrorResponse),
    )
)]
pub async fn get_key<S: Service>(
    State(svc): State<S>,
    caller: Caller,
    uri: Uri,
    mut query: QueryParams,
) -> Result<Response, ApiError> {
    let key = path_key(&uri)?;
    let consistency = query.consistency()?;
    query.finish()?;
    svc.limits().check_key(&key)?;
    check_min_revision(&svc, consistency).await?;
    // Checked inside the read, on the state it reflects: a linearizable
    // read sees every auth change chosen before it began.
    let (kv, revision) = svc
        .read(consistency, move |store| {
            caller.check(store, Need::Read(&key))?;
            Ok::<_, Refusal>((store.get(&key), store.revision()))
        })
        .await??;
    let kv = kv.ok_or_else(|| ApiError::new(ErrorCode::KeyNotFound, "no such key"))?;
    let header =
        |name: &'static str, value: u64| (HeaderName::from_static(name), HeaderValue::from(value));
    Ok((
        [
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/octet-stream"),
            ),
            header(VERSION_HEADER, kv.version),
            header(CREATE_REVISION_HEADER, kv.create_revision),
            header(MOD_REVISION_HEADER, kv.mod_revision),
            header(REVISION_HEADER, revision),
        ],
        kv.value,
    )
        .into_response())
}

/// Deletes a key.
///
/// Deleting a missing key succeeds with `deleted: false`.
#[utoipa::path(
    delete,
    path = "/v1/kv/{key}",
    tag = "kv",
    params(
        ("key" = String, Path, description = "The key, percent-encoded.", example = "config/a", min_length = 1),
        ("if_version" = Option<u64>, Query, description = "Delete only if the key's version is this."),
        ("if_mod_revision" = Option<u64>, Query, description = "Delete only if the key's mod revision is this."),
        ("Idempotency-Key" = Option<String>, Header, description = "Names this write for its retries: a retry with the same key and the same request, at any replica, returns the first attempt's outcome instead of applying again (after a 504, say). Recognised while the write is among the last 100,000 applied; a key reused for a different write is refused with 422 `idempotency_key_reused`. 1 to 128 visible ASCII characters, e.g. a UUID."),
    ),
    responses(
        (status = 200, description = "Done.", body = DeleteResponse),
        (status = 400, description = "Empty key or bad query parameter.", body = ErrorResponse),
        (status = 409, description = "The condition did not hold (`compare_failed`); nothing changed.", body = ErrorResponse),
        (status = 413, description = "Key over the limit.", body = ErrorResponse),
        (status = 422, description = "The `Idempotency-Key` was used for a different write (`idempotency_key_reused`); nothing changed.", body = ErrorResponse),
    )
)]
pub async fn delete_key<S: Service>(
    State(svc): State<S>,
    caller: Caller,
    uri: Uri,
    mut query: QueryParams,
    IdempotencyKey(idempotency): IdempotencyKey,
) -> Result<Json<DeleteResponse>, ApiError> {
    let key = path_key(&uri)?;
    let expect = expect_from(&mut query)?;
    query.finish()?;
    let op = Op::Delete { key, expect };
    op.validate(&svc.limits())?;
    let op = caller.authorize_write(&svc, op).await?;
    match svc.write(op, idempotency).await? {
        OpResult::Delete { revision, deleted } => Ok(Json(DeleteResponse { revision, deleted })),
        OpResult::CompareFailed {
            current_version,
            current_mod_revision,
        } => Err(ApiError::compare_failed(
            current_version,
            current_mod_revision,
        )),
        other => Err(unexpected(&other)),
    }
}

/// Deletes the keys under a prefix.
///
/// The first `limit` keys starting with `prefix`, in byte order, are
/// deleted at one revision, atomically: a watcher sees them all at that
/// revision. When more are left, `more` is true; send the request again
/// for the next ones (each round is atomic, the whole is not). `prefix` is
/// required; `prefix=` (empty) means every key.
#[utoipa::path(
    delete,
    path = "/v1/kv",
    tag = "kv",
    params(
        ("prefix" = String, Query, description = "Delete keys starting with these bytes (percent-encoded); required, empty for every key."),
        ("limit" = Option<u64>, Query, description = "Most keys to delete in this request, 1 to 1000 (default 1000).", minimum = 1, maximum = 1000),
        ("Idempotency-Key" = Option<String>, Header, description = "Names this write for its retries: a retry with the same key and the same request, at any replica, returns the first attempt's outcome instead of applying again (after a 504, say). Recognised while the write is among the last 100,000 applied; a key reused for a different write is refused with 422 `idempotency_key_reused`. 1 to 128 visible ASCII characters, e.g. a UUID."),
    ),
    responses(
        (status = 200, description = "Done.", body = DeletePrefixResponse),
        (status = 400, description = "No `prefix`, a prefix of the reserved keys, or a bad query parameter.", body = ErrorResponse),
        (status = 413, description = "Prefix longer than the key limit.", body = ErrorResponse),
        (status = 422, description = "The `Idempotency-Key` was used for a different write (`idempotency_key_reused`); nothing changed.", body = ErrorResponse),
        (status = 503, description = "No master yet, or not every member has said it can apply a prefix delete yet: in the round trip after a replica starts, while it hears from its peers, or while one of an earlier version is a member (finish the upgrade).", body = ErrorResponse),
    )
)]
pub async fn delete_prefix<S: Service>(
    State(svc): State<S>,
    caller: Caller,
    mut query: QueryParams,
    IdempotencyKey(idempotency): IdempotencyKey,
) -> Result<Json<DeletePrefixResponse>, ApiError> {
    let prefix = query.bytes("prefix");
    let limit = query.page_limit(u64::from(MAX_DELETE_PREFIX), u64::from(MAX_DELETE_PREFIX))?;
    query.finish()?;
    let Some(prefix) = prefix else {
        return Err(ApiError::invalid(
            "DELETE /v1/kv needs prefix: the keys to delete start with it (prefix= for every key); \
             DELETE /v1/kv/{key} deletes one key",
        ));
    };
    if !features_known(|| svc.prefix_deletes()).await {
        return Err(ServiceError::Unavailable {
            message: "not every member has said it can apply a prefix delete yet: a replica \
                      that has just started hears from its peers within a round trip, and one \
                      of an earlier version never will (finish the upgrade)"
                .into(),
            retry_after_secs: 5,
        }
        .into());
    }
    let op = Op::DeletePrefix {
        prefix,
        // At most MAX_DELETE_PREFIX, checked above.
        limit: u32::try_from(limit).unwrap_or(MAX_DELETE_PREFIX),
    };
    op.validate(&svc.limits())?;
    let op = caller.authorize_write(&svc, op).await?;
    match svc.write(op, idempotency).await? {
        OpResult::PrefixDeleted {
            revision,
            deleted,
            more,
        } => Ok(Json(DeletePrefixResponse {
            revision,
            deleted,
            more,
        })),
        other => Err(unexpected(&other)),
    }
}

/// How long a request that needs every member to have said it decodes an
/// op waits for that to be known: a replica that has just started learns
/// its peers' features within a round trip or two (see
/// `Node::exchange_digests`), and a moment's wait beats a 503.
const FEATURES_WAIT: std::time::Duration = std::time::Duration::from_secs(1);

/// Whether `known()` holds now or within [`FEATURES_WAIT`].
async fn features_known(known: impl Fn() -> bool) -> bool {
    let deadline = tokio::time::Instant::now() + FEATURES_WAIT;
    loop {
        if known() {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

/// Lists keys sharing a prefix.
///
/// Every page is read at one revision. To page through, pass the previous
/// page's `next_after` as `after`; later pages may reflect later revisions.
/// A page ends at `limit` keys, or sooner once its keys and values come to
/// 4 MiB (it always holds at least one key); `more` says whether keys
/// remain.
#[utoipa::path(
    get,
    path = "/v1/kv",
    tag = "kv",
    params(
        ("prefix" = Option<String>, Query, description = "Only keys starting with these bytes (percent-encoded); all keys when absent."),
        ("limit" = Option<u64>, Query, description = "Most keys to return, 1 to 1000 (default 100).", minimum = 1, maximum = 1000),
        ("after" = Option<String>, Query, description = "Only keys strictly after this one (percent-encoded), to continue a listing."),
        ("consistency" = Option<ReadConsistency>, Query, description = "`linearizable` (default; confirmed as the cluster's `--read-mode` says: by the master's lease, or by a round trip to a majority in `quorum` mode) or `local` (this replica, possibly stale)."),
        ("min_revision" = Option<u64>, Query, description = "With `consistency=local`: wait until the replica has applied this revision; refused with 400 when the cluster has not reached it."),
    ),
    responses(
        (status = 200, description = "One page of keys.", body = ListResponse),
        (status = 400, description = "Bad query parameter, or `min_revision` ahead of the cluster's revision.", body = ErrorResponse),
    )
)]
pub async fn list<S: Service>(
    State(svc): State<S>,
    caller: Caller,
    mut query: QueryParams,
) -> Result<Json<ListResponse>, ApiError> {
    let prefix = query.bytes("prefix").unwrap_or_default();
    let after = query.bytes("after");
    let limit = query.page_limit(DEFAULT_LIST_LIMIT, MAX_LIST_LIMIT)?;
    let consistency = query.consistency()?;
    query.finish()?;
    check_min_revision(&svc, consistency).await?;
    let request = RangeRequest {
        prefix,
        after,
        limit,
    };
    let page = svc
        .read(consistency, move |store| {
            caller.check(store, Need::ReadPrefix(&request.prefix))?;
            Ok::<_, Refusal>(store.range(&request))
        })
        .await??;
    let next_after = match (page.more, page.kvs.last()) {
        (true, Some(last)) => Some(to_b64(&last.key)),
        _ => None,
    };
    Ok(Json(ListResponse {
        revision: page.revision,
        kvs: page.kvs.iter().map(KvJson::from).collect(),
        more: page.more,
        next_after,
    }))
}
