//! Cluster status and membership changes: `/v1/cluster`.
//!
//! Reading the cluster's shape is open to every client, but changing it can
//! take the whole cluster down, so membership changes require the cluster
//! token as a bearer token.

use axum::Json;
use axum::Router;
use axum::extract::{FromRequestParts, Path, State};
use axum::http::header;
use axum::http::request::Parts;
use axum::routing::{delete, get, post};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::api::body::JsonBody;
use crate::api::error::{ApiError, ErrorCode, ErrorResponse};
use crate::api::query::QueryParams;
use crate::api::service::{ClusterInfo, MemberChange, ReplaceReport, Service};
use crate::auth::gate::{Caller, TokenCheck, addr_in, too_many_attempts};

/// A new member, joining as a learner.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"name": "node4", "peer_url": "10.0.0.4:2380"}))]
pub struct AddMemberRequest {
    /// A name unique in the cluster.
    pub name: String,
    /// Where the other members reach the new one's peer API.
    pub peer_url: String,
}

/// Proof that the caller may change the cluster: the cluster token as a
/// bearer token, or, with auth on, an API token whose roles grant admin.
#[derive(Debug)]
pub struct ClusterAuth;

impl<S: Service> FromRequestParts<S> for ClusterAuth {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, svc: &S) -> Result<Self, Self::Rejection> {
        match parts.extensions.get::<Caller>() {
            // Auth is on and the gate already told who this is.
            Some(caller @ Caller::Token { .. }) => {
                return caller.require_admin(svc).await.map(|()| ClusterAuth);
            }
            Some(Caller::Admin) => return Ok(ClusterAuth),
            Some(Caller::Anyone) | None => {}
        }
        let expected = svc.cluster_token();
        // An unset token must not let an empty bearer token through.
        if expected.is_empty() {
            return Err(ApiError::new(
                ErrorCode::Unauthorized,
                "admin operations (membership, backups, snapshots, switching auth) are disabled: \
                 this node has no cluster token",
            ));
        }
        let given = parts
            .headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.as_bytes().strip_prefix(b"Bearer "))
            .unwrap_or_default();
        let check = match svc.auth_gate() {
            // Guesses count towards the address's failed-attempt limit.
            Some(gate) => {
                gate.check_cluster_token(addr_in(&parts.extensions), given, expected.as_bytes())
            }
            None => TokenCheck::of(given, expected.as_bytes()),
        };
        match check {
            TokenCheck::Valid => Ok(ClusterAuth),
            TokenCheck::Missing => Err(ApiError::new(
                ErrorCode::Unauthorized,
                "admin operations (membership, backups, snapshots, switching auth) need an \
                 Authorization: Bearer <cluster token> header",
            )),
            TokenCheck::Wrong => Err(ApiError::new(
                ErrorCode::Unauthorized,
                "wrong cluster token",
            )),
            TokenCheck::Blocked(wait) => Err(too_many_attempts(wait)),
        }
    }
}

/// The member named in the path.
#[derive(Debug)]
pub struct MemberName(pub String);

impl<S: Send + Sync> FromRequestParts<S> for MemberName {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let Path(name) = Path::<String>::from_request_parts(parts, state).await?;
        Ok(MemberName(name))
    }
}

/// The `/v1/cluster` routes.
pub(crate) fn routes<S: Service>() -> Router<S> {
    Router::new()
        .route("/v1/cluster", get(cluster::<S>))
        .route("/v1/cluster/members", post(add_member::<S>))
        .route("/v1/cluster/members/{name}", delete(remove_member::<S>))
        .route(
            "/v1/cluster/members/{name}/promote",
            post(promote_member::<S>),
        )
        .route(
            "/v1/cluster/members/{name}/replace",
            post(replace_member::<S>),
        )
        .route(
            "/v1/cluster/members/{name}/transfer",
            post(transfer_master::<S>),
        )
}

/// The cluster as this node sees it.
#[utoipa::path(
    get,
    path = "/v1/cluster",
    tag = "cluster",
    responses((status = 200, description = "Members, master and progress.", body = ClusterInfo))
)]
pub async fn cluster<S: Service>(State(svc): State<S>) -> Result<Json<ClusterInfo>, ApiError> {
    Ok(Json(svc.cluster().await?))
}

/// Adds a member as a learner: it receives the log but does not vote
/// until promoted.
#[utoipa::path(
    post,
    path = "/v1/cluster/members",
    tag = "cluster",
    security(("cluster_token" = [])),
    request_body = AddMemberRequest,
    responses(
        (status = 200, description = "The change is committed.", body = ClusterInfo),
        (status = 400, description = "Malformed body, or a name that is not 1 to 63 letters, digits, `-`, `_` or `.` (`invalid_argument`).", body = ErrorResponse),
        (status = 401, description = "Missing or wrong cluster token.", body = ErrorResponse),
        (status = 409, description = "Conflicts with the current configuration (`conflict`).", body = ErrorResponse),
    )
)]
pub async fn add_member<S: Service>(
    State(svc): State<S>,
    _auth: ClusterAuth,
    JsonBody(body): JsonBody<AddMemberRequest>,
) -> Result<Json<ClusterInfo>, ApiError> {
    // Checked before the new node is asked who it is: no node can run
    // under a name `phxkv serve` refuses.
    crate::cluster::validate_name(&body.name).map_err(ApiError::invalid)?;
    let change = MemberChange::Add {
        name: body.name,
        peer_url: body.peer_url,
    };
    Ok(Json(svc.change_members(change).await?))
}

/// Makes a caught-up learner a voter.
#[utoipa::path(
    post,
    path = "/v1/cluster/members/{name}/promote",
    tag = "cluster",
    security(("cluster_token" = [])),
    params(("name" = String, Path, description = "The member's name.")),
    responses(
        (status = 200, description = "The change is committed.", body = ClusterInfo),
        (status = 401, description = "Missing or wrong cluster token.", body = ErrorResponse),
        (status = 404, description = "No member has this name (`member_not_found`).", body = ErrorResponse),
        (status = 409, description = "Not a learner, or not caught up (`conflict`).", body = ErrorResponse),
    )
)]
pub async fn promote_member<S: Service>(
    State(svc): State<S>,
    _auth: ClusterAuth,
    MemberName(name): MemberName,
) -> Result<Json<ClusterInfo>, ApiError> {
    Ok(Json(
        svc.change_members(MemberChange::Promote { name }).await?,
    ))
}

/// Makes the voter `name` the master (a switchover): the master hands
/// mastership over the way it does before a clean shutdown, without waiting
/// out its lease, and the answer comes once `name` says it is master.
///
/// The master first checks that the target can take over at once: it must
/// be a voter that has answered the master recently and is not far behind
/// (a target that could not would leave the cluster without a master for a
/// lease). Asking for the current master changes nothing and answers 200.
/// Any node takes the request and passes it to the master. Waits up to the
/// write timeout; a 504 then means mastership was handed over and the
/// target has not taken over yet (it may still: `GET /v1/cluster` shows
/// the master).
#[utoipa::path(
    post,
    path = "/v1/cluster/members/{name}/transfer",
    tag = "cluster",
    security(("cluster_token" = [])),
    params(("name" = String, Path, description = "The member to make master.")),
    responses(
        (status = 200, description = "`name` is master; the cluster as it sees it.", body = ClusterInfo),
        (status = 401, description = "Missing or wrong cluster token.", body = ErrorResponse),
        (status = 404, description = "No member has this name (`member_not_found`).", body = ErrorResponse),
        (status = 409, description = "The member is a learner (`member_not_voter`), or has not answered the master recently or is behind (`member_not_ready`; retry once it has caught up).", body = ErrorResponse),
        (status = 503, description = "No master to hand over from, another handoff did not end in time, or this node has not joined its cluster yet (`unavailable`).", body = ErrorResponse),
        (status = 504, description = "Handed over, but `name` was not master by the deadline; it may still take over (`timeout`).", body = ErrorResponse),
    )
)]
pub async fn transfer_master<S: Service>(
    State(svc): State<S>,
    _auth: ClusterAuth,
    MemberName(name): MemberName,
) -> Result<Json<ClusterInfo>, ApiError> {
    Ok(Json(svc.transfer_master(name).await?))
}

/// Removes a member, voter or learner.
#[utoipa::path(
    delete,
    path = "/v1/cluster/members/{name}",
    tag = "cluster",
    security(("cluster_token" = [])),
    params(("name" = String, Path, description = "The member's name.")),
    responses(
        (status = 200, description = "The change is committed.", body = ClusterInfo),
        (status = 401, description = "Missing or wrong cluster token.", body = ErrorResponse),
        (status = 404, description = "No member has this name (`member_not_found`); a retried removal whose first attempt went through gets this.", body = ErrorResponse),
        (status = 409, description = "Removing it would break quorum (`conflict`).", body = ErrorResponse),
    )
)]
pub async fn remove_member<S: Service>(
    State(svc): State<S>,
    _auth: ClusterAuth,
    MemberName(name): MemberName,
) -> Result<Json<ClusterInfo>, ApiError> {
    Ok(Json(
        svc.change_members(MemberChange::Remove { name }).await?,
    ))
}

/// Replaces a member by the incarnation that now runs at its peer URL: the
/// way back for a node whose volume was lost (`/v1/cluster` on it says
/// `awaiting_replacement`).
///
/// Removes the old incarnation, adds the new one as a learner and, once it
/// has caught up, promotes it (waiting up to the write timeout for the
/// catch-up). Safe to call again at any point: it does what is left, and
/// nothing at all for a member whose node still runs the configuration's
/// incarnation. Refused (409) when removing the old incarnation would leave
/// fewer reachable voters than a quorum; 503 when the node cannot be asked
/// which incarnation it runs.
#[utoipa::path(
    post,
    path = "/v1/cluster/members/{name}/replace",
    tag = "cluster",
    security(("cluster_token" = [])),
    params(
        ("name" = String, Path, description = "The member's name."),
        ("peer_url" = Option<String>, Query, description = "Where the new incarnation's peer API listens, if not at the member's peer URL."),
        ("learner" = Option<bool>, Query, description = "Leave the new incarnation a learner instead of promoting it."),
    ),
    responses(
        (status = 200, description = "What was done; `state` says whether to call again.", body = ReplaceReport),
        (status = 400, description = "Bad parameters, or a name that is not 1 to 63 letters, digits, `-`, `_` or `.` (`invalid_argument`).", body = ErrorResponse),
        (status = 401, description = "Missing or wrong cluster token.", body = ErrorResponse),
        (status = 404, description = "No member has that name and no `peer_url` was given to add one (`member_not_found`).", body = ErrorResponse),
        (status = 409, description = "The node belongs elsewhere, or a change would lose quorum (`conflict`).", body = ErrorResponse),
        (status = 503, description = "The node at the peer URL does not answer, or no master (`unavailable`).", body = ErrorResponse),
    )
)]
pub async fn replace_member<S: Service>(
    State(svc): State<S>,
    _auth: ClusterAuth,
    MemberName(name): MemberName,
    mut query: QueryParams,
) -> Result<Json<ReplaceReport>, ApiError> {
    let peer_url = query.text("peer_url")?;
    let learner = match query.text("learner")?.as_deref() {
        None | Some("false") => false,
        Some("true") => true,
        Some(other) => {
            return Err(ApiError::invalid(format!(
                "learner must be true or false, got {}",
                crate::text::quoted(other)
            )));
        }
    };
    query.finish()?;
    crate::cluster::validate_name(&name).map_err(ApiError::invalid)?;
    if let Some(url) = &peer_url
        && !(url.starts_with("http://") || url.starts_with("https://"))
    {
        return Err(ApiError::invalid(format!(
            "peer_url {} must start with http:// or https://",
            crate::text::quoted(url)
        )));
    }
    Ok(Json(svc.replace_member(name, peer_url, learner).await?))
}
