//! Managing roles and API tokens: `/v1/auth`.
//!
//! Everything here but `whoami` needs the admin permission (the cluster
//! token, or a token with an admin role), and the cluster token while auth
//! is off: roles and tokens made then are in force the moment auth is
//! enabled, so a caller without a credential must not be able to make
//! itself an admin of the cluster to come. Changes go through the log like
//! any write (see [`crate::auth`]), so they take effect on every replica
//! once the call returns; listings are linearizable reads.

use axum::Json;
use axum::Router;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::{get, post, put};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::api::body::JsonBody;
use crate::api::cluster::ClusterAuth;
use crate::api::error::{ApiError, ErrorResponse};
use crate::api::kv::unexpected;
use crate::api::service::{Consistency, Service};
use crate::auth::gate::Caller;
use crate::auth::{AuthChange, Need, Permission, Refusal, Role, TokenRecord, check_name, token};
use crate::kv::{Op, OpResult, Store};

/// The `/v1/auth` routes.
pub(crate) fn routes<S: Service>() -> Router<S> {
    Router::new()
        .route("/v1/auth/whoami", get(whoami::<S>))
        .route("/v1/auth/roles", get(list_roles::<S>))
        .route(
            "/v1/auth/roles/{name}",
            put(put_role::<S>).delete(delete_role::<S>),
        )
        .route(
            "/v1/auth/tokens",
            get(list_tokens::<S>).post(create_token::<S>),
        )
        .route(
            "/v1/auth/tokens/{id}",
            axum::routing::delete(revoke_token::<S>),
        )
        .route("/v1/auth/tokens/{id}/roles", put(set_token_roles::<S>))
        .route("/v1/auth/enable", post(enable::<S>))
        .route("/v1/auth/disable", post(disable::<S>))
}

/// A role and its name.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[schema(example = json!({"name": "app-reader", "permissions": [{"prefix": "app/", "read": true, "write": false}], "admin": false}))]
pub struct NamedRole {
    pub name: String,
    pub permissions: Vec<Permission>,
    pub admin: bool,
}

/// Every role.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct RoleList {
    pub roles: Vec<NamedRole>,
}

/// A token as listings show it: never its secret.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[schema(example = json!({"id": "3f9a0c4e12b7d5a8", "name": "ci", "roles": ["app-reader"]}))]
pub struct TokenInfo {
    /// The token's public id: the 16 hex digits after `phxkv_`.
    pub id: String,
    pub name: String,
    pub roles: Vec<String>,
}

/// Every token.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct TokenList {
    pub tokens: Vec<TokenInfo>,
}

/// A token to create.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"name": "ci", "roles": ["app-reader"]}))]
pub struct CreateTokenRequest {
    /// Who or what the token is for: 1 to 64 letters, digits, `.`, `_`,
    /// `-`, `@` or `:`.
    pub name: String,
    /// Roles to give it (at most 16); a role may be created later.
    #[serde(default)]
    pub roles: Vec<String>,
}

/// A new token. `token` is shown only here: keep it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct CreatedToken {
    pub id: String,
    pub name: String,
    pub roles: Vec<String>,
    /// The bearer token: `phxkv_<id>_<secret>`. Not stored, not shown again.
    pub token: String,
    /// The revision of the change.
    pub revision: u64,
}

/// A token's new roles.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TokenRoles {
    pub roles: Vec<String>,
}

/// An auth change that was applied.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct AuthChanged {
    /// The revision of the change; it is in force on every replica.
    pub revision: u64,
}

/// Auth for the whole cluster, switched.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[schema(example = json!({"enabled": true, "revision": 42}))]
pub struct AuthSwitched {
    /// Whether every replica now requires a credential.
    pub enabled: bool,
    /// The revision of the change; it is in force on every replica.
    pub revision: u64,
}

/// Who the caller is, as this node sees it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[schema(example = json!({"auth_enabled": true, "kind": "token", "id": "3f9a0c4e12b7d5a8", "name": "ci", "roles": ["app-reader"], "admin": false}))]
pub struct WhoAmI {
    /// Whether this node requires a credential: it runs with `--auth`, or
    /// auth is enabled for the cluster (`POST /v1/auth/enable`).
    pub auth_enabled: bool,
    /// `anyone` (auth off), `admin` (the cluster token) or `token`.
    pub kind: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub roles: Option<Vec<String>>,
    /// Whether the caller has the admin permission.
    pub admin: bool,
}

/// Runs `f` on a linearizable read once the caller is known to be an admin
/// by the same state.
async fn admin_read<S, R, F>(svc: &S, caller: Caller, f: F) -> Result<R, ApiError>
where
    S: Service,
    R: Send + 'static,
    F: FnOnce(&Store) -> R + Send + 'static,
{
    Ok(svc
        .read(Consistency::Linearizable, move |store| {
            caller.check(store, Need::Admin)?;
            Ok::<_, Refusal>(f(store))
        })
        .await??)
}

/// Applies `change` on behalf of `caller`, who must be an admin (checked
/// here and again where the change is chosen).
async fn change<S: Service>(svc: &S, caller: &Caller, change: AuthChange) -> Result<u64, ApiError> {
    caller.require_admin(svc).await?;
    match svc.write(caller.guard(svc, Op::Auth(change)), None).await? {
        OpResult::AuthChanged { revision } => Ok(revision),
        other => Err(unexpected(&other)),
    }
}

/// Who the caller is and what it may do; needs only a valid credential.
#[utoipa::path(
    get,
    path = "/v1/auth/whoami",
    tag = "auth",
    security(("bearer_token" = [])),
    responses((status = 200, description = "The caller.", body = WhoAmI))
)]
pub async fn whoami<S: Service>(
    State(svc): State<S>,
    caller: Caller,
) -> Result<Json<WhoAmI>, ApiError> {
    let enabled = svc.auth_required();
    let answer = match caller {
        Caller::Anyone => WhoAmI {
            auth_enabled: enabled,
            kind: "anyone".into(),
            id: None,
            name: None,
            roles: None,
            admin: true,
        },
        Caller::Admin => WhoAmI {
            auth_enabled: enabled,
            kind: "admin".into(),
            id: None,
            name: Some("cluster token".into()),
            roles: None,
            admin: true,
        },
        Caller::Token { id } => {
            let local = Consistency::Local { min_revision: None };
            svc.read(local, move |store| {
                let token = store.auth().token(&id).cloned();
                let admin = store.auth().authorize(&id, Need::Admin).is_ok();
                WhoAmI {
                    auth_enabled: enabled,
                    kind: "token".into(),
                    name: token.as_ref().map(|t| t.name.clone()),
                    roles: token.map(|t| t.roles),
                    id: Some(id),
                    admin,
                }
            })
            .await?
        }
    };
    Ok(Json(answer))
}

/// Every role.
#[utoipa::path(
    get,
    path = "/v1/auth/roles",
    tag = "auth",
    security(("bearer_token" = [])),
    responses(
        (status = 200, description = "The roles, by name.", body = RoleList),
        (status = 401, description = "No cluster token or admin token (`unauthorized`); needed while auth is off too.", body = ErrorResponse),
        (status = 403, description = "The caller is not an admin (`permission_denied`).", body = ErrorResponse),
    )
)]
pub async fn list_roles<S: Service>(
    State(svc): State<S>,
    _admin: ClusterAuth,
    caller: Caller,
) -> Result<Json<RoleList>, ApiError> {
    let roles = admin_read(&svc, caller, |store| {
        store
            .auth()
            .roles()
            .iter()
            .map(|(name, role)| NamedRole {
                name: name.clone(),
                permissions: role.permissions.clone(),
                admin: role.admin,
            })
            .collect()
    })
    .await?;
    Ok(Json(RoleList { roles }))
}

/// Creates a role or replaces its permissions. A permission covers every
/// key starting with its prefix (`""`: all keys); a listing or watch needs
/// read on a prefix that covers the whole prefix asked for.
#[utoipa::path(
    put,
    path = "/v1/auth/roles/{name}",
    tag = "auth",
    security(("bearer_token" = [])),
    params(("name" = String, Path, description = "1 to 64 letters, digits, `.`, `_`, `-`, `@` or `:`.")),
    request_body = Role,
    responses(
        (status = 200, description = "In force on every replica.", body = AuthChanged),
        (status = 401, description = "No cluster token or admin token (`unauthorized`); needed while auth is off too.", body = ErrorResponse),
        (status = 400, description = "A bad name, or a permission with neither read nor write, or over a bound (`invalid_argument`).", body = ErrorResponse),
        (status = 403, description = "The caller is not an admin (`permission_denied`).", body = ErrorResponse),
    )
)]
pub async fn put_role<S: Service>(
    State(svc): State<S>,
    _admin: ClusterAuth,
    caller: Caller,
    Path(name): Path<String>,
    JsonBody(role): JsonBody<Role>,
) -> Result<Json<AuthChanged>, ApiError> {
    check_name("role", &name)?;
    let revision = change(&svc, &caller, AuthChange::PutRole { name, role }).await?;
    Ok(Json(AuthChanged { revision }))
}

/// Deletes a role; tokens that had it lose what it granted.
#[utoipa::path(
    delete,
    path = "/v1/auth/roles/{name}",
    tag = "auth",
    security(("bearer_token" = [])),
    params(("name" = String, Path, description = "The role.")),
    responses(
        (status = 200, description = "In force on every replica.", body = AuthChanged),
        (status = 401, description = "No cluster token or admin token (`unauthorized`); needed while auth is off too.", body = ErrorResponse),
        (status = 403, description = "The caller is not an admin (`permission_denied`).", body = ErrorResponse),
        (status = 404, description = "No such role (`not_found`).", body = ErrorResponse),
    )
)]
pub async fn delete_role<S: Service>(
    State(svc): State<S>,
    _admin: ClusterAuth,
    caller: Caller,
    Path(name): Path<String>,
) -> Result<Json<AuthChanged>, ApiError> {
    let revision = change(&svc, &caller, AuthChange::DeleteRole { name }).await?;
    Ok(Json(AuthChanged { revision }))
}

/// Every token (ids, names and roles; never secrets).
#[utoipa::path(
    get,
    path = "/v1/auth/tokens",
    tag = "auth",
    security(("bearer_token" = [])),
    responses(
        (status = 200, description = "The tokens, by id.", body = TokenList),
        (status = 401, description = "No cluster token or admin token (`unauthorized`); needed while auth is off too.", body = ErrorResponse),
        (status = 403, description = "The caller is not an admin (`permission_denied`).", body = ErrorResponse),
    )
)]
pub async fn list_tokens<S: Service>(
    State(svc): State<S>,
    _admin: ClusterAuth,
    caller: Caller,
) -> Result<Json<TokenList>, ApiError> {
    let tokens = admin_read(&svc, caller, |store| {
        store
            .auth()
            .tokens()
            .iter()
            .map(|(id, t)| TokenInfo {
                id: id.clone(),
                name: t.name.clone(),
                roles: t.roles.clone(),
            })
            .collect()
    })
    .await?;
    Ok(Json(TokenList { tokens }))
}

/// Creates an API token. The answer holds the token itself, once: the
/// store keeps only a hash of its secret.
#[utoipa::path(
    post,
    path = "/v1/auth/tokens",
    tag = "auth",
    security(("bearer_token" = [])),
    request_body = CreateTokenRequest,
    responses(
        (status = 201, description = "Created; usable on every replica.", body = CreatedToken),
        (status = 401, description = "No cluster token or admin token (`unauthorized`); needed while auth is off too.", body = ErrorResponse),
        (status = 400, description = "A bad name or role name, or too many roles (`invalid_argument`).", body = ErrorResponse),
        (status = 403, description = "The caller is not an admin (`permission_denied`).", body = ErrorResponse),
    )
)]
pub async fn create_token<S: Service>(
    State(svc): State<S>,
    _admin: ClusterAuth,
    caller: Caller,
    JsonBody(request): JsonBody<CreateTokenRequest>,
) -> Result<(StatusCode, Json<CreatedToken>), ApiError> {
    check_name("token name", &request.name)?;
    let minted = token::mint().map_err(ApiError::internal)?;
    let record = TokenRecord {
        name: request.name.clone(),
        roles: request.roles.clone(),
        secret_sha256: minted.secret_sha256,
    };
    let id = minted.id.clone();
    let revision = change(&svc, &caller, AuthChange::CreateToken { id, token: record }).await?;
    Ok((
        StatusCode::CREATED,
        Json(CreatedToken {
            id: minted.id,
            name: request.name,
            roles: request.roles,
            token: minted.text,
            revision,
        }),
    ))
}

/// Revokes a token: once this returns, no replica accepts it, and no write
/// it made is applied after this point of the log.
#[utoipa::path(
    delete,
    path = "/v1/auth/tokens/{id}",
    tag = "auth",
    security(("bearer_token" = [])),
    params(("id" = String, Path, description = "The token's id (16 hex digits).")),
    responses(
        (status = 200, description = "Revoked on every replica.", body = AuthChanged),
        (status = 401, description = "No cluster token or admin token (`unauthorized`); needed while auth is off too.", body = ErrorResponse),
        (status = 403, description = "The caller is not an admin (`permission_denied`).", body = ErrorResponse),
        (status = 404, description = "No such token (`not_found`).", body = ErrorResponse),
    )
)]
pub async fn revoke_token<S: Service>(
    State(svc): State<S>,
    _admin: ClusterAuth,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<AuthChanged>, ApiError> {
    token::check_id(&id)?;
    let revision = change(&svc, &caller, AuthChange::DeleteToken { id }).await?;
    Ok(Json(AuthChanged { revision }))
}

/// Replaces a token's roles (grants and revokes them).
#[utoipa::path(
    put,
    path = "/v1/auth/tokens/{id}/roles",
    tag = "auth",
    security(("bearer_token" = [])),
    params(("id" = String, Path, description = "The token's id (16 hex digits).")),
    request_body = TokenRoles,
    responses(
        (status = 200, description = "In force on every replica.", body = AuthChanged),
        (status = 401, description = "No cluster token or admin token (`unauthorized`); needed while auth is off too.", body = ErrorResponse),
        (status = 400, description = "A bad role name, or too many roles (`invalid_argument`).", body = ErrorResponse),
        (status = 403, description = "The caller is not an admin (`permission_denied`).", body = ErrorResponse),
        (status = 404, description = "No such token (`not_found`).", body = ErrorResponse),
    )
)]
pub async fn set_token_roles<S: Service>(
    State(svc): State<S>,
    _admin: ClusterAuth,
    caller: Caller,
    Path(id): Path<String>,
    JsonBody(body): JsonBody<TokenRoles>,
) -> Result<Json<AuthChanged>, ApiError> {
    token::check_id(&id)?;
    let revision = change(
        &svc,
        &caller,
        AuthChange::SetTokenRoles {
            id,
            roles: body.roles,
        },
    )
    .await?;
    Ok(Json(AuthChanged { revision }))
}

/// Switches auth for the whole cluster and answers once it is applied here.
async fn switch<S: Service>(svc: &S, caller: &Caller, on: bool) -> Result<AuthSwitched, ApiError> {
    let change = if on {
        AuthChange::Enable
    } else {
        AuthChange::Disable
    };
    match svc.write(caller.guard(svc, Op::Auth(change)), None).await? {
        OpResult::AuthChanged { revision } => Ok(AuthSwitched {
            enabled: on,
            revision,
        }),
        other => Err(unexpected(&other)),
    }
}

/// Requires a credential on every replica, including those started
/// without `--auth`: anonymous requests get 401 on each replica once it has
/// applied the change (linearizable reads and watches that began before
/// are refused from then on too). Needs the cluster token (while auth is
/// off on this replica, nothing else is checked), or, while it is on, a
/// token with an admin role. Nodes started with `--auth` do this
/// themselves when they start.
#[utoipa::path(
    post,
    path = "/v1/auth/enable",
    tag = "auth",
    security(("bearer_token" = [])),
    responses(
        (status = 200, description = "In force on every replica.", body = AuthSwitched),
        (status = 401, description = "No cluster token or admin token (`unauthorized`).", body = ErrorResponse),
        (status = 403, description = "The token is not an admin's (`permission_denied`).", body = ErrorResponse),
    )
)]
pub async fn enable<S: Service>(
    State(svc): State<S>,
    _admin: ClusterAuth,
    caller: Caller,
) -> Result<Json<AuthSwitched>, ApiError> {
    Ok(Json(switch(&svc, &caller, true).await?))
}

/// Stops requiring a credential on replicas started without `--auth`
/// (those with it keep requiring one). Needs the cluster token, or, while
/// auth is on on this replica, a token with an admin role.
#[utoipa::path(
    post,
    path = "/v1/auth/disable",
    tag = "auth",
    security(("bearer_token" = [])),
    responses(
        (status = 200, description = "In force on every replica.", body = AuthSwitched),
        (status = 401, description = "No cluster token or admin token (`unauthorized`).", body = ErrorResponse),
        (status = 403, description = "The token is not an admin's (`permission_denied`).", body = ErrorResponse),
    )
)]
pub async fn disable<S: Service>(
    State(svc): State<S>,
    _admin: ClusterAuth,
    caller: Caller,
) -> Result<Json<AuthSwitched>, ApiError> {
    Ok(Json(switch(&svc, &caller, false).await?))
}
