//! The web console: `GET /ui` on every replica.
//!
//! Operators reach a replica from a laptop, often through a port-forward and
//! without internet access, so the console is three static files compiled
//! into the binary (no build step, no CDN): `ui/index.html`, `ui/app.css`
//! and `ui/app.js`. The page talks to the same public API as any client
//! (`/v1/...`, `/metrics`, `/readyz`), so it can do nothing a client
//! cannot, and every rule of the API (errors, auth, limits) applies to it.
//!
//! The files are served with a strict Content-Security-Policy (scripts,
//! styles and requests only from this origin; nothing inline), and with an
//! `ETag` so a browser revalidates them instead of fetching them again.
//! The same helper serves `/docs`, whose single page inlines its script.

use std::sync::LazyLock;

use axum::Router;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;

use crate::api::service::Service;

/// The console's page.
const INDEX_HTML: &str = include_str!("ui/index.html");
/// The console's styles.
const APP_CSS: &str = include_str!("ui/app.css");
/// The console's script.
const APP_JS: &str = include_str!("ui/app.js");

/// What the console's page may load: its own script and styles, requests to
/// this origin only, and no framing by other sites.
pub(crate) const STRICT_CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
     connect-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'none'; \
     frame-ancestors 'none'";

/// A file compiled into the binary, with its validator.
pub(crate) struct Asset {
    body: &'static str,
    content_type: &'static str,
    etag: String,
}

impl Asset {
    /// `body` served as `content_type`; the ETag is a hash of the bytes, so
    /// it changes exactly when a new binary changes the file.
    pub(crate) fn new(body: &'static str, content_type: &'static str) -> Asset {
        let hash = xxhash_rust::xxh3::xxh3_64(body.as_bytes());
        Asset {
            body,
            content_type,
            etag: format!("\"{hash:016x}\""),
        }
    }

    /// The file, or `304 Not Modified` when the request's `If-None-Match`
    /// names the current version. Browsers must revalidate every time
    /// (`no-cache`), so a node upgrade never leaves a stale page behind.
    pub(crate) fn serve(&self, request: &HeaderMap, csp: Option<&'static str>) -> Response {
        let mut headers = HeaderMap::new();
        if let Ok(etag) = HeaderValue::from_str(&self.etag) {
            headers.insert(header::ETAG, etag);
        }
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
        headers.insert(
            header::X_CONTENT_TYPE_OPTIONS,
            HeaderValue::from_static("nosniff"),
        );
        headers.insert(
            header::REFERRER_POLICY,
            HeaderValue::from_static("no-referrer"),
        );
        if let Some(csp) = csp {
            headers.insert(
                header::CONTENT_SECURITY_POLICY,
                HeaderValue::from_static(csp),
            );
        }
        if matches_etag(request, &self.etag) {
            return (StatusCode::NOT_MODIFIED, headers).into_response();
        }
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static(self.content_type),
        );
        (headers, self.body).into_response()
    }
}

/// Whether `If-None-Match` lists `etag` (or is `*`).
fn matches_etag(request: &HeaderMap, etag: &str) -> bool {
    request
        .get_all(header::IF_NONE_MATCH)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|tag| tag.trim().trim_start_matches("W/"))
        .any(|tag| tag == etag || tag == "*")
}

static INDEX: LazyLock<Asset> =
    LazyLock::new(|| Asset::new(INDEX_HTML, "text/html; charset=utf-8"));
static CSS: LazyLock<Asset> = LazyLock::new(|| Asset::new(APP_CSS, "text/css; charset=utf-8"));
static JS: LazyLock<Asset> = LazyLock::new(|| Asset::new(APP_JS, "text/javascript; charset=utf-8"));

/// The console's routes. The page refers to its files relative to `/ui`,
/// so `/ui/` is redirected rather than served: relative references would
/// otherwise resolve under `/ui/ui/`.
pub(crate) fn routes<S: Service>() -> Router<S> {
    Router::new()
        .route("/ui", get(ui_page))
        .route("/ui/", get(|| async { Redirect::permanent("/ui") }))
        .route(
            "/ui/app.css",
            get(|h: HeaderMap| async move { CSS.serve(&h, None) }),
        )
        .route(
            "/ui/app.js",
            get(|h: HeaderMap| async move { JS.serve(&h, None) }),
        )
}

/// The web console.
///
/// Cluster overview, live charts from `/metrics`, a key browser with
/// watches, and membership changes, in one page that loads nothing from
/// outside this node.
#[utoipa::path(
    get,
    path = "/ui",
    tag = "operations",
    responses((status = 200, description = "An HTML page.", content_type = "text/html"))
)]
pub async fn ui_page(headers: HeaderMap) -> Response {
    INDEX.serve(&headers, Some(STRICT_CSP))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn etag_matches_exact_weak_listed_and_wildcard_validators() {
        let asset = Asset::new("body", "text/plain");
        let with = |v: &str| {
            let mut h = HeaderMap::new();
            h.insert(
                header::IF_NONE_MATCH,
                HeaderValue::from_str(v).expect("a valid header value"),
            );
            h
        };
        assert!(matches_etag(&with(&asset.etag), &asset.etag));
        assert!(matches_etag(
            &with(&format!("W/{}", asset.etag)),
            &asset.etag
        ));
        assert!(matches_etag(
            &with(&format!("\"x\", {}", asset.etag)),
            &asset.etag
        ));
        assert!(matches_etag(&with("*"), &asset.etag));
        assert!(!matches_etag(&with("\"other\""), &asset.etag));
        assert!(!matches_etag(&HeaderMap::new(), &asset.etag));
    }

    #[test]
    fn etag_changes_with_the_content() {
        assert_ne!(
            Asset::new("a", "text/plain").etag,
            Asset::new("b", "text/plain").etag
        );
    }

    #[test]
    fn console_files_load_nothing_from_elsewhere() {
        // Every reference in the page stays on this node.
        for attr in ["src=\"", "href=\""] {
            for part in INDEX_HTML.split(attr).skip(1) {
                let target = part.split('"').next().unwrap_or_default();
                // An inline image (the icon) is part of the page.
                if target.starts_with("data:image/") {
                    continue;
                }
                assert!(
                    !target.contains(':') && !target.starts_with("//"),
                    "{attr}{target}\" leaves this node"
                );
            }
        }
        assert!(INDEX_HTML.contains("src=\"ui/app.js\""));
        assert!(INDEX_HTML.contains("href=\"ui/app.css\""));
        assert!(!APP_CSS.contains("url(") && !APP_CSS.contains("@import"));
        assert!(!APP_JS.contains("http://") && !APP_JS.contains("https://"));
        // Inline handlers and styles would be refused by the policy.
        for file in [INDEX_HTML, APP_JS] {
            assert!(!file.contains(" onclick=") && !file.contains(" style=\""));
            assert!(!file.contains("<script>") && !file.contains("<style>"));
        }
    }
}
