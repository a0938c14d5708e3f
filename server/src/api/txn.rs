//! Multi-key transactions: `POST /v1/txn`.
//!
//! The JSON shapes here are a front for [`Txn`]: keys and values can be
//! written as plain strings or, for binary data, as base64 in the `_b64`
//! twin field. The conversion is strict and names the offending element,
//! because a transaction that is silently read differently than intended
//! can corrupt data in ways a failed request never does.

use axum::Json;
use axum::Router;
use axum::extract::State;
use axum::routing::post;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::api::body::JsonBody;
use crate::api::encoding::{KvJson, from_b64};
use crate::api::error::{ApiError, ErrorResponse};
use crate::api::kv::{IdempotencyKey, unexpected};
use crate::api::service::Service;
use crate::kv::{Compare, CompareOp, CompareTarget, Op, OpResult, Txn, TxnOp, TxnResponse};

/// If every compare holds, run `success`, otherwise `failure`; atomically.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({
    "compare": [{"key": "lock", "target": "version", "version": 0}],
    "success": [{"put": {"key": "lock", "value": "me"}}, {"get": {"key": "config"}}],
    "failure": [{"get": {"key": "lock"}}]
}))]
pub struct TxnRequest {
    /// Conditions, all of which must hold for `success` to run.
    #[serde(default)]
    pub compare: Vec<TxnCompare>,
    /// Operations run, in order, when every compare holds.
    #[serde(default)]
    pub success: Vec<TxnRequestOp>,
    /// Operations run, in order, otherwise.
    #[serde(default)]
    pub failure: Vec<TxnRequestOp>,
    /// Attach every key the branch that runs puts to this lease (one lease
    /// per transaction); the transaction fails with `lease_not_found` if
    /// the lease does not exist.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub lease: Option<u64>,
}

/// What a compare looks at.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum TxnCompareTarget {
    /// The value bytes, given in `value` or `value_b64`; a missing key never
    /// equals any value.
    Value,
    /// The version, given in `version`; `0` for a missing key.
    Version,
    /// The mod revision, given in `mod_revision`; `0` for a missing key.
    ModRevision,
    /// The create revision, given in `create_revision`; `0` for a missing key.
    CreateRevision,
}

/// How the key's current state must relate to the given one.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum TxnCompareOp {
    #[default]
    Equal,
    NotEqual,
    Less,
    Greater,
}

/// One condition: `<target of key> <op> <given field>`.
///
/// Exactly one of `key`/`key_b64`, and exactly the field named by `target`
/// (for `value`: one of `value`/`value_b64`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"key": "config", "target": "mod_revision", "op": "less", "mod_revision": 10}))]
pub struct TxnCompare {
    /// The key as UTF-8 text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub key: Option<String>,
    /// The key as base64, for binary keys.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false, content_encoding = "base64")]
    pub key_b64: Option<String>,
    pub target: TxnCompareTarget,
    /// Defaults to `equal`.
    #[serde(default)]
    pub op: TxnCompareOp,
    /// With target `value`: the value as UTF-8 text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub value: Option<String>,
    /// With target `value`: the value as base64.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false, content_encoding = "base64")]
    pub value_b64: Option<String>,
    /// With target `version`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub version: Option<u64>,
    /// With target `mod_revision`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub mod_revision: Option<u64>,
    /// With target `create_revision`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub create_revision: Option<u64>,
}

/// One operation of a branch: an object with exactly one of `put`,
/// `delete` or `get`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum TxnRequestOp {
    /// Store a value.
    Put(TxnPut),
    /// Delete a key (a missing key is not an error).
    Delete(TxnKey),
    /// Read a key, seeing earlier writes of the same branch.
    Get(TxnKey),
}

/// A put inside a transaction: one of `key`/`key_b64` and one of
/// `value`/`value_b64`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TxnPut {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub key: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false, content_encoding = "base64")]
    pub key_b64: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub value: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false, content_encoding = "base64")]
    pub value_b64: Option<String>,
}

/// A key inside a transaction: one of `key`/`key_b64`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TxnKey {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub key: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false, content_encoding = "base64")]
    pub key_b64: Option<String>,
}

/// What a transaction did.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[schema(example = json!({"succeeded": true, "revision": 12,
    "responses": [{"put": {"revision": 12}}, {"get": {"kv": null}}]}))]
pub struct TxnResult {
    /// Whether every compare held (so `success` ran).
    pub succeeded: bool,
    /// The store revision after the transaction.
    pub revision: u64,
    /// One entry per operation of the branch that ran, in order.
    pub responses: Vec<TxnOpResult>,
}

/// The outcome of one operation: an object with exactly one of `put`,
/// `delete` or `get`, matching the operation.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum TxnOpResult {
    /// The put happened at `revision`.
    Put(TxnPutResult),
    /// Whether the key existed.
    Delete(TxnDeleteResult),
    /// The key, or `null` when it does not exist.
    Get(TxnGetResult),
}

// Each outcome is a named schema, not an inline object: client generators
// name inline objects after their position and then collide.

/// The outcome of a put in a transaction.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct TxnPutResult {
    /// The revision the put happened at.
    pub revision: u64,
}

/// The outcome of a delete in a transaction.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct TxnDeleteResult {
    /// Whether the key existed.
    pub deleted: bool,
}

/// The outcome of a get in a transaction.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct TxnGetResult {
    /// The key, or `null` when it does not exist.
    pub kv: Option<KvJson>,
}

/// Reads a byte field given as text (`name`) or base64 (`name_b64`).
fn either(
    at: &str,
    name: &str,
    text: Option<String>,
    b64: Option<String>,
) -> Result<Option<Vec<u8>>, ApiError> {
    match (text, b64) {
        (Some(_), Some(_)) => Err(ApiError::invalid(format!(
            "{at}: give either \"{name}\" or \"{name}_b64\", not both"
        ))),
        (Some(t), None) => Ok(Some(t.into_bytes())),
        (None, Some(b)) => from_b64(&format!("{at}.{name}_b64"), &b).map(Some),
        (None, None) => Ok(None),
    }
}

/// Like [`either`], for fields that must be given.
fn required(
    at: &str,
    name: &str,
    text: Option<String>,
    b64: Option<String>,
) -> Result<Vec<u8>, ApiError> {
    either(at, name, text, b64)?
        .ok_or_else(|| ApiError::invalid(format!("{at}: \"{name}\" or \"{name}_b64\" is required")))
}

impl TxnCompare {
    fn into_compare(self, at: &str) -> Result<Compare, ApiError> {
        let key = required(at, "key", self.key, self.key_b64)?;
        let value = either(at, "value", self.value, self.value_b64)?;
        let given = [
            (TxnCompareTarget::Value, "value", value.is_some()),
            (TxnCompareTarget::Version, "version", self.version.is_some()),
            (
                TxnCompareTarget::ModRevision,
                "mod_revision",
                self.mod_revision.is_some(),
            ),
            (
                TxnCompareTarget::CreateRevision,
                "create_revision",
                self.create_revision.is_some(),
            ),
        ];
        let wanted = given
            .iter()
            .find(|(t, _, _)| *t == self.target)
            .map_or("value", |(_, name, _)| *name);
        if let Some((_, extra, _)) = given.iter().find(|(t, _, set)| *set && *t != self.target) {
            return Err(ApiError::invalid(format!(
                "{at}: field \"{extra}\" does not go with target \"{wanted}\"; \
                 a compare gives only the field its target names"
            )));
        }
        let target = match self.target {
            TxnCompareTarget::Value => value.map(CompareTarget::Value),
            TxnCompareTarget::Version => self.version.map(CompareTarget::Version),
            TxnCompareTarget::ModRevision => self.mod_revision.map(CompareTarget::ModRevision),
            TxnCompareTarget::CreateRevision => {
                self.create_revision.map(CompareTarget::CreateRevision)
            }
        }
        .ok_or_else(|| {
            ApiError::invalid(format!(
                "{at}: target \"{wanted}\" needs the \"{wanted}\" field"
            ))
        })?;
        let op = match self.op {
            TxnCompareOp::Equal => CompareOp::Equal,
            TxnCompareOp::NotEqual => CompareOp::NotEqual,
            TxnCompareOp::Less => CompareOp::Less,
            TxnCompareOp::Greater => CompareOp::Greater,
        };
        Ok(Compare { key, op, target })
    }
}

impl TxnRequestOp {
    fn into_op(self, at: &str) -> Result<TxnOp, ApiError> {
        Ok(match self {
            TxnRequestOp::Put(p) => {
                let at = format!("{at}.put");
                TxnOp::Put {
                    key: required(&at, "key", p.key, p.key_b64)?,
                    value: required(&at, "value", p.value, p.value_b64)?,
                }
            }
            TxnRequestOp::Delete(k) => TxnOp::Delete {
                key: required(&format!("{at}.delete"), "key", k.key, k.key_b64)?,
            },
            TxnRequestOp::Get(k) => TxnOp::Get {
                key: required(&format!("{at}.get"), "key", k.key, k.key_b64)?,
            },
        })
    }
}

impl TxnRequest {
    /// The transaction this request describes, or a 400 naming the first
    /// malformed element (such as `success[2].put`).
    pub fn into_txn(self) -> Result<Txn, ApiError> {
        let branch = |name: &str, ops: Vec<TxnRequestOp>| {
            ops.into_iter()
                .enumerate()
                .map(|(i, op)| op.into_op(&format!("{name}[{i}]")))
                .collect::<Result<Vec<_>, _>>()
        };
        Ok(Txn {
            compare: self
                .compare
                .into_iter()
                .enumerate()
                .map(|(i, c)| c.into_compare(&format!("compare[{i}]")))
                .collect::<Result<_, _>>()?,
            success: branch("success", self.success)?,
            failure: branch("failure", self.failure)?,
        })
    }
}

impl From<&TxnResponse> for TxnOpResult {
    fn from(r: &TxnResponse) -> TxnOpResult {
        match r {
            TxnResponse::Put { revision } => TxnOpResult::Put(TxnPutResult {
                revision: *revision,
            }),
            TxnResponse::Delete { deleted } => {
                TxnOpResult::Delete(TxnDeleteResult { deleted: *deleted })
            }
            TxnResponse::Get { kv } => TxnOpResult::Get(TxnGetResult {
                kv: kv.as_ref().map(KvJson::from),
            }),
        }
    }
}

/// The `/v1/txn` route.
pub(crate) fn routes<S: Service>() -> Router<S> {
    Router::new().route("/v1/txn", post(txn::<S>))
}

/// Runs a transaction.
///
/// Compares and the chosen branch apply atomically at one revision. A
/// failed compare is not an error: the response says `succeeded: false`
/// and carries the `failure` branch's results.
#[utoipa::path(
    post,
    path = "/v1/txn",
    tag = "kv",
    params(
        ("Idempotency-Key" = Option<String>, Header, description = "Names this write for its retries: a retry with the same key and the same request, at any replica, returns the first attempt's outcome instead of applying again (after a 504, say). Recognised while the write is among the last 100,000 applied; a key reused for a different write is refused with 422 `idempotency_key_reused`. 1 to 128 visible ASCII characters, e.g. a UUID."),
    ),
    request_body = TxnRequest,
    responses(
        (status = 200, description = "The transaction ran; `succeeded` says which branch.", body = TxnResult),
        (status = 400, description = "Malformed JSON, unknown field, a compare whose fields do not match its target, or a key put or deleted twice in one branch.", body = ErrorResponse),
        (status = 404, description = "The `lease` does not exist (`lease_not_found`); nothing changed.", body = ErrorResponse),
        (status = 413, description = "A key or value, or the number of compares and operations, is over the limit.", body = ErrorResponse),
        (status = 422, description = "The `Idempotency-Key` was used for a different write (`idempotency_key_reused`); nothing changed.", body = ErrorResponse),
        (status = 507, description = "The write would take the store past its quota (`quota_exceeded`), or the volume of the replica that took it is nearly full (`disk_full`); nothing changed. Deletes are still taken.", body = ErrorResponse),
    )
)]
pub async fn txn<S: Service>(
    State(svc): State<S>,
    caller: crate::auth::gate::Caller,
    IdempotencyKey(idempotency): IdempotencyKey,
    JsonBody(request): JsonBody<TxnRequest>,
) -> Result<Json<TxnResult>, ApiError> {
    let lease = request.lease;
    let op = Op::Txn(request.into_txn()?);
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
        OpResult::Txn {
            succeeded,
            revision,
            responses,
        } => Ok(Json(TxnResult {
            succeeded,
            revision,
            responses: responses.iter().map(TxnOpResult::from).collect(),
        })),
        other => Err(unexpected(&other)),
    }
}
