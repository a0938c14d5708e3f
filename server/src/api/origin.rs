//! Refuses writes that a web page on another site makes through a
//! visitor's browser.
//!
//! Nothing stops a page on any site from sending a POST to
//! `http://127.0.0.1:8080/v1/txn` from the browser of someone who runs
//! `phxkv dev` (a form or `fetch` with a `text/plain` body needs no CORS
//! preflight), and JSON bodies are accepted whatever their declared type
//! so that `curl -d` works. With auth off, such a request would write. The
//! page cannot read the answer, but the write would be done.
//!
//! Browsers say where a request comes from, and other clients (curl, the
//! CLI, libraries) say nothing, so a request that changes something is
//! refused when the browser says it comes from another origin: its
//! `Sec-Fetch-Site` is `cross-site` or `same-site`, or, from browsers too
//! old for that header, its `Origin` names another host than the request's
//! `Host`. Reads pass (the answer is unreadable to the page without CORS,
//! which the API does not grant), and so does everything from the node's
//! own pages (`/ui`, `/docs`), which are same-origin.

use axum::extract::Request;
use axum::http::{HeaderMap, Method, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::api::error::{ApiError, ErrorCode};

/// The middleware: answers 403 `permission_denied` to a cross-origin
/// request that would change something; passes everything else on.
pub async fn refuse_cross_origin_writes(request: Request, next: Next) -> Response {
    let changes = !matches!(
        *request.method(),
        Method::GET | Method::HEAD | Method::OPTIONS
    );
    if changes && let Some(from) = cross_origin(request.headers()) {
        return ApiError::new(
            ErrorCode::PermissionDenied,
            format!(
                "cross-origin request refused: a web page from {from} may not change this \
                 cluster; call the API from a program or from the node's own pages"
            ),
        )
        .into_response();
    }
    next.run(request).await
}

/// Where a cross-origin request comes from, as the browser says; `None`
/// for a same-origin request or one from something other than a browser.
fn cross_origin(headers: &HeaderMap) -> Option<String> {
    let text = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    let origin = text(header::ORIGIN.as_str());
    let named = || origin.unwrap_or("another site").to_string();
    match text("sec-fetch-site") {
        // `none`: the user typed the address or used a bookmark.
        Some("same-origin" | "none") => return None,
        Some(_) => return Some(named()),
        None => {}
    }
    let origin = origin?;
    // "null" (a sandboxed frame, a file) or a host other than ours.
    let host = origin.split_once("://").map(|(_, rest)| rest);
    match (host, text(header::HOST.as_str())) {
        (Some(host), Some(ours)) if host.eq_ignore_ascii_case(ours) => None,
        _ => Some(named()),
    }
}

/// The name a browser's request calls this node by, when that name could
/// be any web site's: a page served from `evil.example` whose DNS name is
/// then pointed at 127.0.0.1 ("DNS rebinding") talks to a local node as
/// its own origin, so [`cross_origin`] passes it, and with auth off it
/// could read and write everything. Such a page can only use a name its
/// owner controls in public DNS, so a browser's request (one that carries
/// `Sec-Fetch-Site` or `Origin`) is let in when its `Host` is an IP
/// address, `localhost` or a name under it, a name of one label (resolved
/// through the local search domains), or a Kubernetes cluster-internal
/// name (`.svc`, `.cluster.local`); other names are returned. Only asked
/// while auth is off: with it on, such a page has no credential to send.
pub fn public_name_from_browser(headers: &HeaderMap) -> Option<String> {
    let from_browser =
        headers.contains_key("sec-fetch-site") || headers.contains_key(header::ORIGIN);
    if !from_browser {
        return None;
    }
    let host = headers.get(header::HOST).and_then(|v| v.to_str().ok())?;
    if let Some(bracketed) = host.strip_prefix('[') {
        // An IPv6 literal, with or without a port.
        let literal = bracketed.split_once(']').map(|(address, _)| address);
        let is_address = literal.is_some_and(|a| a.parse::<std::net::Ipv6Addr>().is_ok());
        return (!is_address).then(|| host.to_string());
    }
    let name = host.rsplit_once(':').map_or(host, |(name, _)| name);
    let name = name.trim_end_matches('.').to_ascii_lowercase();
    let local = name.parse::<std::net::Ipv4Addr>().is_ok()
        || name == "localhost"
        || name.ends_with(".localhost")
        || !name.contains('.')
        || name.ends_with(".svc")
        || name.ends_with(".cluster.local");
    (!local).then(|| host.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (name, value) in pairs {
            h.insert(*name, value.parse().expect("header value"));
        }
        h
    }

    #[test]
    fn what_the_browser_says_decides_and_other_clients_pass() {
        let host = ("host", "127.0.0.1:8080");
        for same in [
            &[host][..],
            &[],
            &[host, ("origin", "http://127.0.0.1:8080")],
            &[host, ("origin", "https://127.0.0.1:8080")],
            &[
                host,
                ("sec-fetch-site", "same-origin"),
                ("origin", "http://127.0.0.1:8080"),
            ],
            &[host, ("sec-fetch-site", "none")],
        ] {
            assert_eq!(cross_origin(&headers(same)), None, "{same:?}");
        }
        for cross in [
            &[host, ("origin", "http://evil.example")][..],
            &[host, ("origin", "null")],
            &[host, ("origin", "http://127.0.0.1:9999")],
            &[
                host,
                ("sec-fetch-site", "cross-site"),
                ("origin", "http://evil.example"),
            ],
            &[host, ("sec-fetch-site", "same-site")],
            &[("origin", "http://127.0.0.1:8080")],
        ] {
            assert!(cross_origin(&headers(cross)).is_some(), "{cross:?}");
        }
    }

    #[test]
    fn a_browser_calling_a_node_by_a_public_name_is_told_apart() {
        for local in [
            "127.0.0.1:8080",
            "127.0.0.1",
            "[::1]:8080",
            "[::1]",
            "localhost:8080",
            "LOCALHOST",
            "app.localhost:3000",
            "phxkv:8080",
            "phxkv.default.svc:8080",
            "phxkv-0.phxkv-peer.prod.svc.cluster.local:8080",
            "10.1.2.3:8080",
        ] {
            let from_browser = headers(&[("host", local), ("sec-fetch-site", "same-origin")]);
            assert_eq!(public_name_from_browser(&from_browser), None, "{local}");
        }
        for public in [
            "evil.example:8080",
            "evil.example",
            "localhost.evil.example",
            "127.0.0.1.nip.io:8080",
            "[not-an-address]:8080",
        ] {
            let from_browser = headers(&[("host", public), ("origin", "http://x")]);
            assert_eq!(
                public_name_from_browser(&from_browser).as_deref(),
                Some(public),
                "{public}"
            );
            // Programs say nothing of where they come from: any name.
            assert_eq!(
                public_name_from_browser(&headers(&[("host", public)])),
                None
            );
        }
    }
}
