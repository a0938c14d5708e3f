//! Every error the public API returns, in one JSON shape.
//!
//! Clients should be able to branch on a stable `code` without parsing prose,
//! and must never see a framework's plain-text error page instead. So every
//! failure, from a refused compare to an unknown route or a body that is too
//! large, is turned into an [`ApiError`] here, and a last-resort middleware
//! rewrites any non-JSON error response that slipped past the handlers.

use axum::Json;
use axum::extract::Request;
use axum::extract::rejection::{BytesRejection, PathRejection};
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::api::service::ServiceError;
use crate::kv::KvError;

/// How much of a stray plain-text error body is kept as the message.
const MAX_STRAY_MESSAGE: usize = 1024;

/// A machine-readable error kind; each has exactly one HTTP status:
/// `invalid_argument` 400, `unauthorized` 401, `permission_denied` 403,
/// `key_not_found`,
/// `member_not_found` and `not_found` 404, `method_not_allowed` 405,
/// `request_timeout` 408, `backup_not_found` 404, `compare_failed`, `conflict`, `member_not_voter`
/// and `member_not_ready` 409, `compacted` 410, `no_archive` 412,
/// `payload_too_large` 413, `too_many_attempts` 429, `internal` 500,
/// `unavailable` 503 (see `Retry-After`), `timeout` 504 (the write may
/// still commit).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// 400: the request is malformed or names an invalid argument.
    InvalidArgument,
    /// 401: missing or wrong bearer token.
    Unauthorized,
    /// 403: the token is valid but its roles do not allow the request.
    PermissionDenied,
    /// 404: the key does not exist.
    KeyNotFound,
    /// 404: no such route.
    NotFound,
    /// 404: no member of the cluster has the name given.
    MemberNotFound,
    /// 404: the archive holds no base snapshot of the name given.
    BackupNotFound,
    /// 404: no such lease: never granted, revoked, or expired.
    LeaseNotFound,
    /// 405: the route exists but not with this method.
    MethodNotAllowed,
    /// 408: the request body did not arrive in time (two minutes); nothing
    /// changed.
    RequestTimeout,
    /// 409: a compare-and-swap condition did not hold; nothing changed.
    CompareFailed,
    /// 409: the membership change conflicts with the current configuration.
    Conflict,
    /// 409: the member is a learner; only a voter can be master.
    MemberNotVoter,
    /// 409: the member cannot take over mastership now: the master has not
    /// heard from it recently, or it is behind; retry once it has caught up.
    MemberNotReady,
    /// 409: a lease with the id asked for exists already.
    LeaseExists,
    /// 409: the lock is held by another lease, and was not released
    /// within the time the request allowed.
    LockHeld,
    /// 409: the lease does not lead the election.
    NotLeader,
    /// 410: the requested revision is no longer in the watch history.
    Compacted,
    /// 412: the node was started without an archive (`--archive-url`).
    NoArchive,
    /// 413: a key, value, transaction or body is over a configured limit.
    PayloadTooLarge,
    /// 422: the `Idempotency-Key` was used, recently, for a different
    /// write; nothing changed.
    IdempotencyKeyReused,
    /// 429: too many failed authentication attempts from this address;
    /// wait `Retry-After` seconds.
    TooManyAttempts,
    /// 500: a bug or an I/O failure on the node.
    Internal,
    /// 503: no master or no quorum right now; retry after `Retry-After` seconds.
    Unavailable,
    /// 503: this replica's state differs from the cluster's; ask another
    /// replica (it will not recover without being replaced).
    ReplicaDiverged,
    /// 504: the write's outcome is unknown; it may still commit.
    Timeout,
    /// 507: the write could take the store's size (keys, values and a
    /// fixed overhead per key) past the
    /// node's quota (`serve --quota-bytes`); nothing changed. Deletes are
    /// still taken.
    QuotaExceeded,
    /// 507: the file system of the data directory of the replica that took
    /// the write has less free than it keeps for its log and its next
    /// snapshot (`serve --disk-reserve-bytes`, plus the store's size);
    /// nothing changed. Deletes are still taken.
    DiskFull,
}

impl ErrorCode {
    /// The HTTP status this code is always sent with.
    pub fn status(self) -> StatusCode {
        match self {
            ErrorCode::InvalidArgument => StatusCode::BAD_REQUEST,
            ErrorCode::Unauthorized => StatusCode::UNAUTHORIZED,
            ErrorCode::PermissionDenied => StatusCode::FORBIDDEN,
            ErrorCode::TooManyAttempts => StatusCode::TOO_MANY_REQUESTS,
            ErrorCode::KeyNotFound
            | ErrorCode::NotFound
            | ErrorCode::MemberNotFound
            | ErrorCode::BackupNotFound
            | ErrorCode::LeaseNotFound => StatusCode::NOT_FOUND,
            ErrorCode::NoArchive => StatusCode::PRECONDITION_FAILED,
            ErrorCode::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            ErrorCode::RequestTimeout => StatusCode::REQUEST_TIMEOUT,
            ErrorCode::CompareFailed
            | ErrorCode::Conflict
            | ErrorCode::MemberNotVoter
            | ErrorCode::MemberNotReady
            | ErrorCode::LeaseExists
            | ErrorCode::LockHeld
            | ErrorCode::NotLeader => StatusCode::CONFLICT,
            ErrorCode::Compacted => StatusCode::GONE,
            ErrorCode::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            ErrorCode::IdempotencyKeyReused => StatusCode::UNPROCESSABLE_ENTITY,
            ErrorCode::Internal => StatusCode::INTERNAL_SERVER_ERROR,
            ErrorCode::Unavailable | ErrorCode::ReplicaDiverged => StatusCode::SERVICE_UNAVAILABLE,
            ErrorCode::Timeout => StatusCode::GATEWAY_TIMEOUT,
            ErrorCode::QuotaExceeded | ErrorCode::DiskFull => StatusCode::INSUFFICIENT_STORAGE,
        }
    }

    /// The code for a status produced outside our handlers; statuses we
    /// have no code for become a generic client or server error.
    fn for_status(status: StatusCode) -> ErrorCode {
        match status {
            StatusCode::UNAUTHORIZED => ErrorCode::Unauthorized,
            StatusCode::FORBIDDEN => ErrorCode::PermissionDenied,
            StatusCode::TOO_MANY_REQUESTS => ErrorCode::TooManyAttempts,
            StatusCode::NOT_FOUND => ErrorCode::NotFound,
            StatusCode::METHOD_NOT_ALLOWED => ErrorCode::MethodNotAllowed,
            StatusCode::REQUEST_TIMEOUT => ErrorCode::RequestTimeout,
            StatusCode::PAYLOAD_TOO_LARGE => ErrorCode::PayloadTooLarge,
            StatusCode::SERVICE_UNAVAILABLE => ErrorCode::Unavailable,
            StatusCode::GATEWAY_TIMEOUT => ErrorCode::Timeout,
            s if s.is_server_error() => ErrorCode::Internal,
            _ => ErrorCode::InvalidArgument,
        }
    }
}

/// The body of every error response.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[schema(example = json!({"error": {"code": "compare_failed",
    "message": "the key's current state does not match the condition",
    "current_version": 3, "current_mod_revision": 17}}))]
pub struct ErrorResponse {
    pub error: ErrorDetail,
}

/// What went wrong.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ErrorDetail {
    pub code: ErrorCode,
    /// A human-readable explanation; not meant to be parsed.
    pub message: String,
    /// With `compare_failed`: the key's version now (`0` when absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub current_version: Option<u64>,
    /// With `compare_failed`: the key's mod revision now (`0` when absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub current_mod_revision: Option<u64>,
}

/// An error on its way to becoming a response.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ApiError {
    detail: ErrorDetail,
    /// Seconds for the `Retry-After` header of `unavailable`.
    retry_after_secs: Option<u64>,
}

impl ApiError {
    /// An error with `code` and a human-readable `message`.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> ApiError {
        ApiError {
            detail: ErrorDetail {
                code,
                message: message.into(),
                current_version: None,
                current_mod_revision: None,
            },
            retry_after_secs: None,
        }
    }

    /// A 400 `invalid_argument`.
    pub fn invalid(message: impl Into<String>) -> ApiError {
        ApiError::new(ErrorCode::InvalidArgument, message)
    }

    /// A 500 `internal`, for states a correct node never reaches.
    pub fn internal(message: impl Into<String>) -> ApiError {
        ApiError::new(ErrorCode::Internal, message)
    }

    /// A 409 `compare_failed` reporting the key's current state.
    pub fn compare_failed(current_version: u64, current_mod_revision: u64) -> ApiError {
        let mut err = ApiError::new(
            ErrorCode::CompareFailed,
            "the key's current state does not match the condition; nothing was changed",
        );
        err.detail.current_version = Some(current_version);
        err.detail.current_mod_revision = Some(current_mod_revision);
        err
    }

    /// The error with a `Retry-After` of `secs`.
    pub fn retry_after(mut self, secs: u64) -> ApiError {
        self.retry_after_secs = Some(secs);
        self
    }

    /// The error's code.
    pub fn code(&self) -> ErrorCode {
        self.detail.code
    }

    /// The error as it appears in a body, for errors sent outside a
    /// response of their own (such as inside an event stream).
    pub fn into_detail(self) -> ErrorDetail {
        self.detail
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.detail.code.status();
        let mut response = (status, Json(ErrorResponse { error: self.detail })).into_response();
        if let Some(secs) = self.retry_after_secs {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        response
    }
}

impl From<crate::auth::Refusal> for ApiError {
    fn from(r: crate::auth::Refusal) -> ApiError {
        use crate::auth::RefusalKind;
        let code = match r.kind {
            RefusalKind::Unauthenticated => ErrorCode::Unauthorized,
            RefusalKind::PermissionDenied => ErrorCode::PermissionDenied,
            RefusalKind::Invalid => ErrorCode::InvalidArgument,
            RefusalKind::NotFound => ErrorCode::NotFound,
            RefusalKind::Conflict => ErrorCode::Conflict,
        };
        ApiError::new(code, r.message)
    }
}

impl From<ServiceError> for ApiError {
    fn from(err: ServiceError) -> ApiError {
        let message = err.to_string();
        match err {
            ServiceError::Invalid(_) => ApiError::invalid(message),
            ServiceError::TooLarge(_) => ApiError::new(ErrorCode::PayloadTooLarge, message),
            ServiceError::QuotaExceeded(_) => ApiError::new(ErrorCode::QuotaExceeded, message),
            ServiceError::DiskFull(_) => ApiError::new(ErrorCode::DiskFull, message),
            ServiceError::Compacted { .. } => ApiError::new(ErrorCode::Compacted, message),
            ServiceError::Unauthorized(_) => ApiError::new(ErrorCode::Unauthorized, message),
            ServiceError::Unavailable {
                retry_after_secs, ..
            } => ApiError {
                retry_after_secs: Some(retry_after_secs),
                ..ApiError::new(ErrorCode::Unavailable, message)
            },
            // A client that retries blindly could apply the write twice, so
            // the message says plainly that it may have happened.
            ServiceError::Timeout(_) => ApiError::new(
                ErrorCode::Timeout,
                format!("{message}; the write may still commit, so read before retrying"),
            ),
            ServiceError::Conflict(_) => ApiError::new(ErrorCode::Conflict, message),
            ServiceError::Diverged(_) => ApiError::new(ErrorCode::ReplicaDiverged, message),
            ServiceError::UnknownMember(_) => ApiError::new(ErrorCode::MemberNotFound, message),
            ServiceError::NotVoter(_) => ApiError::new(ErrorCode::MemberNotVoter, message),
            ServiceError::NotReady(_) => ApiError::new(ErrorCode::MemberNotReady, message),
            ServiceError::HandoffTimeout(_) => ApiError::new(ErrorCode::Timeout, message),
            ServiceError::NoArchive(_) => ApiError::new(ErrorCode::NoArchive, message),
            ServiceError::UnknownBackup(_) => ApiError::new(ErrorCode::BackupNotFound, message),
            ServiceError::Internal(_) => ApiError::internal(message),
        }
    }
}

impl From<KvError> for ApiError {
    fn from(err: KvError) -> ApiError {
        let message = err.to_string();
        match err {
            KvError::KeyTooLarge { .. }
            | KvError::ValueTooLarge { .. }
            | KvError::TooManyTxnOps { .. } => ApiError::new(ErrorCode::PayloadTooLarge, message),
            KvError::EmptyKey
            | KvError::ReservedKey
            | KvError::InvalidLease(_)
            | KvError::DuplicateTxnKey(_)
            | KvError::DeleteLimit { .. } => ApiError::invalid(message),
            KvError::Compacted { .. } => ApiError::new(ErrorCode::Compacted, message),
            KvError::SnapshotDecode(_) | KvError::SnapshotRead(_) => ApiError::internal(message),
        }
    }
}

impl From<BytesRejection> for ApiError {
    fn from(rejection: BytesRejection) -> ApiError {
        let status = rejection.status();
        let code = ErrorCode::for_status(status);
        if status == StatusCode::PAYLOAD_TOO_LARGE {
            return super::body::too_large(None);
        }
        ApiError::new(code, rejection.body_text())
    }
}

impl From<PathRejection> for ApiError {
    fn from(rejection: PathRejection) -> ApiError {
        ApiError::invalid(rejection.body_text())
    }
}

/// Answers requests for routes that do not exist.
pub async fn not_found(method: Method, uri: axum::http::Uri) -> ApiError {
    ApiError::new(
        ErrorCode::NotFound,
        format!("no route for {method} {}", uri.path()),
    )
}

/// Answers unknown routes on the port of `serve --metrics-listen`.
pub async fn not_on_probe_port(method: Method, uri: axum::http::Uri) -> ApiError {
    ApiError::new(
        ErrorCode::NotFound,
        format!(
            "no route for {method} {} on the metrics port, which serves /healthz, /readyz and \
             /metrics only; the API is on the client port",
            uri.path()
        ),
    )
}

/// Answers requests whose route exists but not with their method.
pub async fn method_not_allowed(method: Method, uri: axum::http::Uri) -> ApiError {
    ApiError::new(
        ErrorCode::MethodNotAllowed,
        format!("{method} is not supported on {}", uri.path()),
    )
}

/// Rewrites error responses that are not JSON into our error shape.
///
/// Handlers already return [`ApiError`]; this catches what the framework
/// answers on its own (a rejection we did not map, a body over the limit
/// detected by a layer), so clients can always parse an error body.
pub async fn json_errors_only(request: Request, next: Next) -> Response {
    let response = next.run(request).await;
    let status = response.status();
    let is_json = response
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/json"));
    if !(status.is_client_error() || status.is_server_error()) || is_json {
        return response;
    }
    let (parts, body) = response.into_parts();
    let text = match axum::body::to_bytes(body, MAX_STRAY_MESSAGE).await {
        Ok(bytes) if !bytes.is_empty() => String::from_utf8_lossy(&bytes).into_owned(),
        _ => status
            .canonical_reason()
            .unwrap_or("request failed")
            .to_owned(),
    };
    let mut rewritten = ApiError::new(ErrorCode::for_status(status), text).into_response();
    // Keep headers such as `Allow` or `Retry-After`, but not the old body's.
    for (name, value) in &parts.headers {
        if name != header::CONTENT_TYPE && name != header::CONTENT_LENGTH {
            rewritten.headers_mut().append(name, value.clone());
        }
    }
    rewritten
}
