//! The API's description: `GET /openapi.json` and a readable `GET /docs`.
//!
//! The OpenAPI document is generated from the handlers' annotations, so it
//! cannot drift from the code; a committed copy lets reviewers see API
//! changes in diffs. The docs page is our own small renderer of that
//! document, so it works on machines without internet access.

use std::sync::LazyLock;

use axum::Json;
use axum::Router;
use axum::http::HeaderMap;
use axum::response::{Redirect, Response};
use axum::routing::get;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::{ContentBuilder, Ref, ResponseBuilder};
use utoipa::{Modify, OpenApi};

use crate::api::service::Service;
use crate::api::{admin, auth, cluster, health, kv, lease, txn, ui, watch};

/// The HTML of `/docs`.
const DOCS_HTML: &str = include_str!("docs.html");

/// `/docs` keeps its script and styles in the page, so the policy allows
/// inline ones; everything else is as strict as the console's.
const DOCS_CSP: &str = "default-src 'none'; script-src 'unsafe-inline'; \
     style-src 'unsafe-inline'; connect-src 'self'; img-src 'self' data:; base-uri 'none'; \
     form-action 'none'; frame-ancestors 'none'";

static DOCS: LazyLock<ui::Asset> =
    LazyLock::new(|| ui::Asset::new(DOCS_HTML, "text/html; charset=utf-8"));

#[derive(OpenApi)]
#[openapi(
    info(
        title = "phxkv",
        version = env!("CARGO_PKG_VERSION"),
        description = "A strongly consistent key-value store replicated with Multi-Paxos.\n\n\
Keys and values are arbitrary bytes. In paths and query strings they are \
percent-encoded; in JSON they are base64, with a `*_utf8` copy whenever the \
bytes are valid UTF-8. Every write moves the store's single revision counter; \
reads and watches report revisions so clients can order what they see.\n\n\
Every error has the body `{\"error\": {\"code\": ..., \"message\": ...}}`; \
branch on `code`, never on `message`.\n\n\
A cluster started with `--auth` (the default in Kubernetes) needs \
`Authorization: Bearer <token>` on every route but the probes, `/metrics` and \
the documentation: the cluster token (admin), or an API token from \
`POST /v1/auth/tokens` whose roles grant read or write on key prefixes. A \
missing or wrong token is `401 unauthorized`, too few permissions \
`403 permission_denied`, and an address that sent 10 wrong tokens within \
60 s gets `429 too_many_attempts` until the 60 s are over.",
        license(name = "Apache-2.0", identifier = "Apache-2.0"),
    ),
    paths(
        kv::put_key,
        kv::get_key,
        kv::delete_key,
        kv::delete_prefix,
        kv::list,
        txn::txn,
        lease::grant,
        lease::list_leases,
        lease::lease_status,
        lease::revoke,
        lease::keep_alive,
        lease::keep_alive_many,
        lease::keep_alive_stream,
        lease::lock,
        lease::unlock,
        lease::campaign,
        lease::leader,
        lease::proclaim,
        lease::resign,
        watch::watch,
        cluster::cluster,
        cluster::add_member,
        cluster::promote_member,
        cluster::remove_member,
        cluster::replace_member,
        cluster::transfer_master,
        admin::snapshot,
        admin::create_backup,
        admin::list_backups,
        admin::delete_backup,
        auth::whoami,
        auth::list_roles,
        auth::put_role,
        auth::delete_role,
        auth::list_tokens,
        auth::create_token,
        auth::revoke_token,
        auth::set_token_roles,
        auth::enable,
        auth::disable,
        health::healthz,
        health::readyz,
        health::metrics,
        openapi_json,
        docs_page,
        ui::ui_page,
    ),
    // Schemas referenced only from query parameters are not collected from
    // the handlers, so they are listed here to keep every `$ref` resolvable.
    components(schemas(crate::api::error::ErrorCode, crate::api::query::ReadConsistency)),
    tags(
        (name = "kv", description = "Reads, writes, listings and transactions."),
        (name = "leases", description = "Leases with TTLs: keys deleted together when their lease is revoked or expires, and the lock built on them."),
        (name = "watch", description = "Streams of changes."),
        (name = "cluster", description = "Cluster status and membership."),
        (name = "auth", description = "Roles and API tokens, kept in the replicated state so every replica enforces the same rules."),
        (name = "admin", description = "Backups: a consistent snapshot of the store, and base snapshots in the archive."),
        (name = "operations", description = "Probes, metrics, this documentation and the web console."),
    ),
    modifiers(&CommonParts),
)]
struct ApiDoc;

/// Adds what every operation shares, so each handler lists only the
/// responses particular to it. The default response refers to
/// `ErrorResponse`, which the handlers' own error responses already put
/// among the schemas.
#[derive(Debug)]
struct CommonParts;

impl Modify for CommonParts {
    fn modify(&self, doc: &mut utoipa::openapi::OpenApi) {
        add_token_and_default_error(
            doc,
            "The cluster token configured on every node; with auth on, an API token \
             whose roles grant admin works too (403 `permission_denied` for one that \
             does not).",
            "ErrorResponse",
            "Any other error, e.g. `unauthorized` (401) or `permission_denied` (403) \
             with auth on, `request_timeout` (408: the body did not arrive in time), \
             `too_many_attempts` (429, with `Retry-After`), `unavailable` \
             (503, with `Retry-After`), `timeout` (504: the write may still commit), \
             `quota_exceeded` (507: a write past the store quota), `disk_full` (507: the \
             replica's volume is nearly full) or `internal` (500).",
        );
        let components = doc.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer_token",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some(
                        "With auth on (`serve --auth`): an API token \
                         (`phxkv_<id>_<secret>`) or the cluster token. Not needed \
                         with auth off, nor from a client whose certificate names an \
                         API token by its id (`serve --client-cert-identity`).",
                    ))
                    .build(),
            ),
        );
        // Every operation may need the token (auth on) or nothing (auth
        // off); those that name a scheme of their own keep it.
        let either = vec![
            utoipa::openapi::security::SecurityRequirement::new(
                "bearer_token",
                Vec::<String>::new(),
            ),
            utoipa::openapi::security::SecurityRequirement::default(),
        ];
        doc.security = Some(either);
    }
}

/// Adds the `cluster_token` bearer scheme, described as `token`, to `doc`,
/// and to every operation without one a `default` response with the error
/// schema `error_schema`: what the public and the peer documents share.
pub(crate) fn add_token_and_default_error(
    doc: &mut utoipa::openapi::OpenApi,
    token: &str,
    error_schema: &str,
    description: &str,
) {
    let components = doc.components.get_or_insert_with(Default::default);
    components.add_security_scheme(
        "cluster_token",
        SecurityScheme::Http(
            HttpBuilder::new()
                .scheme(HttpAuthScheme::Bearer)
                .description(Some(token))
                .build(),
        ),
    );
    let default_error = ResponseBuilder::new()
        .description(description)
        .content(
            "application/json",
            ContentBuilder::new()
                .schema(Some(Ref::from_schema_name(error_schema)))
                .build(),
        )
        .build();
    for item in doc.paths.paths.values_mut() {
        let operations = [
            &mut item.get,
            &mut item.put,
            &mut item.post,
            &mut item.delete,
        ];
        for op in operations.into_iter().flatten() {
            op.responses
                .responses
                .entry("default".into())
                .or_insert_with(|| default_error.clone().into());
        }
    }
}

/// The OpenAPI 3.1 document of the public API.
pub fn openapi() -> utoipa::openapi::OpenApi {
    ApiDoc::openapi()
}

/// The documentation routes.
pub(crate) fn routes<S: Service>() -> Router<S> {
    Router::new()
        .route("/openapi.json", get(openapi_json))
        .route("/docs", get(docs_page))
        // As `/ui/`: the page's relative links are written for `/docs`.
        .route("/docs/", get(|| async { Redirect::permanent("/docs") }))
}

/// This API's OpenAPI 3.1 document.
#[utoipa::path(
    get,
    path = "/openapi.json",
    tag = "operations",
    responses((status = 200, description = "The OpenAPI document.", content_type = "application/json"))
)]
pub async fn openapi_json() -> Json<utoipa::openapi::OpenApi> {
    Json(openapi())
}

/// Human-readable API documentation, rendered from `/openapi.json`.
#[utoipa::path(
    get,
    path = "/docs",
    tag = "operations",
    responses((status = 200, description = "An HTML page.", content_type = "text/html"))
)]
pub async fn docs_page(headers: HeaderMap) -> Response {
    DOCS.serve(&headers, Some(DOCS_CSP))
}
