//! A forward HTTP proxy per node that its outgoing peer traffic goes through
//! (`phxkv serve --peer-proxy`), so the harness can cut chosen links without
//! root: a request from node `i` to node `j` while the link is cut either
//! fails at once (a refused connection) or hangs until the sender gives up
//! (a black hole), as a real partition does.
//!
//! Links are cut in both directions together: a request and its answer
//! travel on one connection, and the nodes' replies to one another are
//! requests of their own.
//!
//! Peers that speak TLS (`https://` peer URLs) reach one another through
//! `CONNECT` tunnels instead, which carry their encrypted bytes unread; a
//! cut ends a tunnel already open (or, as a black hole, stops it passing
//! anything), and refuses new ones, so that partitions mean the same with
//! TLS as without.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{Method, StatusCode};
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

/// How long a black-holed exchange or tunnel hangs before it is dropped
/// (the senders' own timeouts are shorter).
const BLACK_HOLE: Duration = Duration::from_secs(30);

/// How often an open tunnel checks whether its link was cut.
const TUNNEL_CHECK: Duration = Duration::from_millis(20);

/// Forwards one absolute-form request (`POST http://host:port/path`), or
/// opens a tunnel for `CONNECT host:port`.
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
            tokio::time::sleep(BLACK_HOLE).await;
        }
        return (StatusCode::BAD_GATEWAY, "link cut by the nemesis").into_response();
    }
    if req.method() == Method::CONNECT {
        return tunnel(s, req).await;
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
                    tokio::time::sleep(BLACK_HOLE).await;
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

/// Answers `CONNECT host:port` with a tunnel to it: the client's bytes go
/// to the target and back unread until either end closes, or until the
/// link is cut. Then the tunnel is closed at once, or, when cut links are
/// black holes, kept open passing nothing for [`BLACK_HOLE`].
async fn tunnel(s: ProxyState, req: Request) -> Response {
    let Some(authority) = req.uri().authority().cloned() else {
        return (StatusCode::BAD_REQUEST, "CONNECT needs host:port").into_response();
    };
    let to = authority.port_u16().and_then(|p| s.links.node_of(p));
    let upstream = match tokio::net::TcpStream::connect(authority.as_str()).await {
        Ok(u) => u,
        Err(e) => return (StatusCode::BAD_GATEWAY, e.to_string()).into_response(),
    };
    let _ = upstream.set_nodelay(true);
    let upgrade = hyper::upgrade::on(req);
    let (links, from) = (s.links, s.from);
    tokio::spawn(async move {
        let Ok(upgraded) = upgrade.await else {
            return;
        };
        let mut client = hyper_util::rt::TokioIo::new(upgraded);
        let mut upstream = upstream;
        let cut = async {
            loop {
                tokio::time::sleep(TUNNEL_CHECK).await;
                if let Some(to) = to
                    && links.is_cut(from, to)
                {
                    return links.black_hole();
                }
            }
        };
        tokio::select! {
            _ = tokio::io::copy_bidirectional(&mut client, &mut upstream) => {}
            black_hole = cut => {
                if black_hole {
                    // Both sockets stay open and nothing moves.
                    tokio::time::sleep(BLACK_HOLE).await;
                }
            }
        }
    });
    StatusCode::OK.into_response()
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    use tokio::net::{TcpListener, TcpStream};

    /// An echo server standing in for node 1's peer port.
    async fn echo() -> u16 {
        let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let port = l.local_addr().expect("addr").port();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = l.accept().await {
                tokio::spawn(async move {
                    let (mut r, mut w) = s.split();
                    let _ = tokio::io::copy(&mut r, &mut w).await;
                });
            }
        });
        port
    }

    /// Opens a tunnel to `target` through the proxy on `proxy`; the
    /// status line of the answer, and the stream if it is 200.
    async fn connect(proxy: u16, target: u16) -> (String, TcpStream) {
        let mut s = TcpStream::connect(("127.0.0.1", proxy))
            .await
            .expect("proxy");
        let head =
            format!("CONNECT 127.0.0.1:{target} HTTP/1.1\r\nHost: 127.0.0.1:{target}\r\n\r\n");
        s.write_all(head.as_bytes()).await.expect("write");
        let mut answer = Vec::new();
        let mut byte = [0u8; 1];
        while !answer.ends_with(b"\r\n\r\n") {
            match s.read(&mut byte).await.expect("read") {
                0 => break,
                _ => answer.push(byte[0]),
            }
        }
        let text = String::from_utf8_lossy(&answer);
        (text.lines().next().unwrap_or("").to_string(), s)
    }

    async fn round_trip(s: &mut TcpStream, what: &[u8]) -> std::io::Result<Vec<u8>> {
        s.write_all(what).await?;
        let mut got = vec![0u8; what.len()];
        s.read_exact(&mut got).await?;
        Ok(got)
    }

    /// Node 0's proxy, an echo server as node 1, and a tunnel from the one
    /// to the other that has carried a first message.
    async fn open_tunnel() -> (Arc<Links>, u16, u16, TcpStream) {
        let links = Links::new();
        let target = echo().await;
        let proxy = start(0, links.clone()).await.expect("proxy");
        links.set_peers(&[1, target]);
        let (status, mut s) = connect(proxy, target).await;
        assert!(status.starts_with("HTTP/1.1 200"), "{status}");
        assert_eq!(round_trip(&mut s, b"ping").await.expect("echo"), b"ping");
        (links, proxy, target, s)
    }

    #[tokio::test]
    async fn a_tunnel_carries_bytes_until_its_link_is_cut() {
        let (links, proxy, target, mut s) = open_tunnel().await;

        // A cut closes the open tunnel, and refuses a new one.
        links.cut(&[0], &[1], false);
        let mut rest = Vec::new();
        let closed = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut rest)).await;
        assert!(
            matches!(closed, Ok(Ok(0)) | Ok(Err(_))),
            "the tunnel stayed open: {closed:?}"
        );
        let (status, _) = connect(proxy, target).await;
        assert!(status.starts_with("HTTP/1.1 502"), "{status}");

        // Healed, tunnels open again.
        links.heal();
        let (status, mut s) = connect(proxy, target).await;
        assert!(status.starts_with("HTTP/1.1 200"), "{status}");
        assert_eq!(round_trip(&mut s, b"pong").await.expect("echo"), b"pong");
    }

    #[tokio::test]
    async fn a_black_holed_tunnel_stays_open_and_passes_nothing() {
        let (links, _, _, mut s) = open_tunnel().await;
        links.cut(&[0], &[1], true);
        // Give the tunnel a few checks to see the cut.
        tokio::time::sleep(TUNNEL_CHECK * 5).await;
        let echoed =
            tokio::time::timeout(Duration::from_millis(500), round_trip(&mut s, b"lost")).await;
        assert!(echoed.is_err(), "bytes crossed a black hole: {echoed:?}");
    }
}
