//! A forward HTTP proxy per node that its outgoing peer traffic goes through
//! (`phxkv serve --peer-proxy`), so the harness can cut chosen links without
//! root: a request from node `i` to node `j` while the link is cut either
//! fails at once (a refused connection) or hangs until the sender gives up
//! (a black hole), as a real partition does.
//!
//! Links are cut in both directions together: a request and its answer
//! travel on one connection, and the nodes' replies to one another are
//! requests of their own.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use futures_util::StreamExt;

/// Which links are cut, shared by every node's proxy.
#[derive(Debug, Default)]
pub struct Links {
    cut: Mutex<BTreeSet<(usize, usize)>>,
    /// Peer port -> node index.
    ports: Mutex<BTreeMap<u16, usize>>,
    /// Cut links hang instead of failing fast.
    black_hole: Mutex<bool>,
}

impl Links {
    /// Links that know no node yet: the proxies start first (see
    /// `Cluster::new`), then [`Links::set_peers`] names the nodes.
    pub fn new() -> Arc<Links> {
        Arc::new(Links::default())
    }

    /// Names node `i` by its peer port, `peer_ports[i]`.
    pub fn set_peers(&self, peer_ports: &[u16]) {
        if let Ok(mut p) = self.ports.lock() {
            p.clear();
            for (i, port) in peer_ports.iter().enumerate() {
                p.insert(*port, i);
            }
        }
    }

    /// Cuts the links between every node of `a` and every node of `b`.
    pub fn cut(&self, a: &[usize], b: &[usize], black_hole: bool) {
        if let Ok(mut cut) = self.cut.lock() {
            for x in a {
                for y in b {
                    if x != y {
                        cut.insert((*x, *y));
                        cut.insert((*y, *x));
                    }
                }
            }
        }
        if let Ok(mut bh) = self.black_hole.lock() {
            *bh = black_hole;
        }
    }

    pub fn heal(&self) {
        if let Ok(mut cut) = self.cut.lock() {
            cut.clear();
        }
    }

    fn is_cut(&self, from: usize, to: usize) -> bool {
        self.cut.lock().is_ok_and(|c| c.contains(&(from, to)))
    }

    fn node_of(&self, port: u16) -> Option<usize> {
        self.ports.lock().ok().and_then(|p| p.get(&port).copied())
    }

    fn black_hole(&self) -> bool {
        self.black_hole.lock().is_ok_and(|b| *b)
    }
}

#[derive(Clone)]
struct ProxyState {
    from: usize,
    links: Arc<Links>,
    http: reqwest::Client,
}

/// Starts node `from`'s proxy on a free loopback port and returns the port.
pub async fn start(from: usize, links: Arc<Links>) -> std::io::Result<u16> {
    let http = reqwest::Client::builder()
        .no_proxy()
        .build()
        .map_err(std::io::Error::other)?;
    let state = ProxyState { from, links, http };
    let app = axum::Router::new().fallback(forward).with_state(state);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let port = listener.local_addr()?.port();
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    Ok(port)
}

/// Forwards one absolute-form request (`POST http://host:port/path`).
async fn forward(State(s): State<ProxyState>, req: Request) -> Response {
    let uri = req.uri().clone();
    let Some(port) = uri.port_u16() else {
        return (StatusCode::BAD_REQUEST, "not a proxy request").into_response();
    };
    if let Some(to) = s.links.node_of(port)
        && s.links.is_cut(s.from, to)
    {
        if s.links.black_hole() {
            // Nothing comes back; the sender's own timeout ends it.
            tokio::time::sleep(Duration::from_secs(30)).await;
        }
        return (StatusCode::BAD_GATEWAY, "link cut by the nemesis").into_response();
    }
    let (parts, body) = req.into_parts();
    // A cut also ends exchanges already under way, as it would on a real
    // network: a long-lived message stream is checked with every chunk.
    let links = s.links.clone();
    let (from, to) = (s.from, s.links.node_of(port));
    let body = body.into_data_stream().then(move |chunk| {
        let links = links.clone();
        async move {
            if let Some(to) = to
                && links.is_cut(from, to)
            {
                if links.black_hole() {
                    tokio::time::sleep(Duration::from_secs(30)).await;
                }
                return Err(std::io::Error::other("link cut by the nemesis"));
            }
            chunk.map_err(std::io::Error::other)
        }
    });
    let mut out = s
        .http
        .request(parts.method, uri.to_string())
        .body(reqwest::Body::wrap_stream(body));
    for (name, value) in &parts.headers {
        if name != "host" && name != "proxy-connection" {
            out = out.header(name, value);
        }
    }
    match out.send().await {
        Ok(resp) => {
            let mut builder = Response::builder().status(resp.status());
            for (name, value) in resp.headers() {
                builder = builder.header(name, value);
            }
            builder
                .body(Body::from_stream(resp.bytes_stream()))
                .unwrap_or_else(|_| StatusCode::BAD_GATEWAY.into_response())
        }
        Err(e) => (StatusCode::BAD_GATEWAY, e.to_string()).into_response(),
    }
}
