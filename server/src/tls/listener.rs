//! A TLS listener for `axum::serve`.
//!
//! axum asks its listener for one connection at a time, so handshakes are
//! not done in `accept`: a task accepts TCP connections and runs each
//! handshake in a task of its own, and finished connections wait in a
//! bounded queue for axum to take them. A slow or hostile client therefore
//! delays nobody else, and nothing grows without bound: at most
//! [`MAX_HANDSHAKES`] handshakes run at once (a connection beyond that is
//! closed at once rather than queued, so the accept loop never stalls), a
//! client has [`FIRST_BYTE_TIMEOUT`] to start its handshake and
//! [`HANDSHAKE_TIMEOUT`] to finish it, and a slot is given back as soon as
//! the handshake ends. Idle connections opened to fill the slots are
//! dropped within seconds; limiting connections per source address is left
//! to the network (the NetworkPolicy closes the peer port to all but the
//! cluster's pods).
//!
//! A client that speaks plain HTTP to a TLS port (`http://` instead of
//! `https://`) would otherwise see its request swallowed by a handshake
//! that never completes. The first byte of every TLS connection is 0x16
//! (a handshake record); anything else gets a plain-HTTP 400 whose JSON
//! body says to use https, and the connection is closed.
//!
//! Connections close with a lingering close (see [`crate::net`]).
//!
//! rustls takes at most 4 KiB from its transport per read, so a peer
//! message of tens of kilobytes (an accept carrying a full batch) would
//! cost a system call per 4 KiB. The peer port therefore reads its sockets
//! through a buffer of [`PEER_READ_BUFFER`] bytes that rustls' reads are
//! served from: one `recvfrom` takes whatever has arrived, up to that size.
//! The client port reads its sockets directly: its requests are small, and
//! it may hold many connections, each of which would keep the buffer.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use rustls::ServerConfig;
use tokio::io::{AsyncWriteExt as _, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, mpsc};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;

use crate::net::{Lingering, Socket};

/// Handshakes in progress at once, per listener.
pub const MAX_HANDSHAKES: usize = 1024;
/// How long a new connection may stay silent before its first byte.
pub const FIRST_BYTE_TIMEOUT: Duration = Duration::from_secs(3);
/// How long a client has to finish its handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Connections handshaken and waiting for the server to take them.
const READY_QUEUE: usize = 64;

/// What one read of a peer connection's socket takes at most: two full
/// TLS records, so a peer message of up to that size is one system call.
pub const PEER_READ_BUFFER: usize = 32 * 1024;

/// A TLS connection as accepted.
pub type Accepted = TlsStream<Socket>;

/// The first byte of a TLS record carrying a handshake message.
const TLS_HANDSHAKE_RECORD: u8 = 0x16;

/// Accepts TLS connections on a bound TCP listener.
#[derive(Debug)]
pub struct TlsListener {
    ready: mpsc::Receiver<(Accepted, SocketAddr)>,
    local: SocketAddr,
    accepting: tokio::task::JoinHandle<()>,
}

impl TlsListener {
    /// Starts accepting on `tcp` with `config`; `port` names the listener
    /// in the log ("client" or "peer"). With `read_buffer`, each
    /// connection's socket is read through a buffer of that many bytes.
    pub fn new(
        tcp: TcpListener,
        config: Arc<ServerConfig>,
        port: &'static str,
        read_buffer: Option<usize>,
    ) -> std::io::Result<Self> {
        let local = tcp.local_addr()?;
        let (tx, ready) = mpsc::channel(READY_QUEUE);
        let accepting = tokio::spawn(accept_loop(
            tcp,
            TlsAcceptor::from(config),
            tx,
            port,
            read_buffer,
        ));
        Ok(TlsListener {
            ready,
            local,
            accepting,
        })
    }
}

impl Drop for TlsListener {
    fn drop(&mut self) {
        self.accepting.abort();
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = Lingering<Accepted>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.ready.recv().await {
            Some((tls, addr)) => (Lingering::new(tls), addr),
            // The accepting task ended (it only does when dropped): no more
            // connections will come.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        Ok(self.local)
    }
}

async fn accept_loop(
    tcp: TcpListener,
    acceptor: TlsAcceptor,
    ready: mpsc::Sender<(Accepted, SocketAddr)>,
    port: &'static str,
    read_buffer: Option<usize>,
) {
    let slots = Arc::new(Semaphore::new(MAX_HANDSHAKES));
    loop {
        let (stream, addr) = match tcp.accept().await {
            Ok(conn) => conn,
            Err(e) => {
                // Out of file descriptors and the like: wait rather than spin.
                tracing::warn!(port, error = %e, "cannot accept a connection");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            // Every slot is taken: closing this one keeps the loop free to
            // accept the next, which may be a peer.
            tracing::debug!(port, %addr, "too many TLS handshakes in progress; connection closed");
            continue;
        };
        let (acceptor, ready) = (acceptor.clone(), ready.clone());
        tokio::spawn(async move {
            let _ = stream.set_nodelay(true);
            let done =
                tokio::time::timeout(HANDSHAKE_TIMEOUT, handshake(stream, &acceptor, read_buffer))
                    .await;
            drop(slot);
            match done {
                Ok(Ok(tls)) => {
                    let _ = ready.send((tls, addr)).await;
                }
                Ok(Err(e)) => tracing::debug!(port, %addr, error = %e, "TLS connection refused"),
                Err(_) => tracing::debug!(port, %addr, "TLS handshake timed out"),
            }
        });
    }
}

/// Why a connection did not become a TLS session.
#[derive(Debug, thiserror::Error)]
enum Refused {
    #[error("spoke plain HTTP to a TLS port")]
    PlainHttp,
    #[error("not a TLS client")]
    NotTls,
    #[error("sent nothing")]
    Silent,
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

async fn handshake(
    mut stream: TcpStream,
    acceptor: &TlsAcceptor,
    read_buffer: Option<usize>,
) -> Result<Accepted, Refused> {
    let mut first = [0u8; 1];
    let peeked = tokio::time::timeout(FIRST_BYTE_TIMEOUT, stream.peek(&mut first))
        .await
        .map_err(|_| Refused::Silent)??;
    if peeked == 0 {
        return Err(Refused::NotTls);
    }
    if first[0] != TLS_HANDSHAKE_RECORD {
        if first[0].is_ascii_uppercase() {
            // An HTTP method: answer in HTTP so curl and browsers show why.
            // Closed with a lingering close, so that a request body still
            // on its way does not reset the connection before the client
            // has read the answer.
            let _ = stream.write_all(plain_http_refusal().as_bytes()).await;
            tokio::spawn(crate::net::linger(stream));
            return Err(Refused::PlainHttp);
        }
        return Err(Refused::NotTls);
    }
    let socket = match read_buffer {
        Some(size) => Socket::Right(BufReader::with_capacity(size.max(1), stream)),
        None => Socket::Left(stream),
    };
    Ok(acceptor.accept(socket).await?)
}

const REFUSAL_BODY: &str = r#"{"error":{"code":"tls_required","message":"this port speaks TLS: call it with https://, not http://"}}"#;

fn plain_http_refusal() -> String {
    format!(
        "HTTP/1.1 400 Bad Request\r\nContent-Type: application/json\r\n\
         Connection: close\r\nContent-Length: {}\r\n\r\n{REFUSAL_BODY}",
        REFUSAL_BODY.len()
    )
}

#[cfg(test)]
mod tests {
    use super::plain_http_refusal;

    #[test]
    fn the_plain_http_refusal_is_a_complete_json_error_response() {
        let text = plain_http_refusal();
        let (head, body) = text.split_once("\r\n\r\n").expect("a head and a body");
        assert!(head.starts_with("HTTP/1.1 400 "));
        let declared: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("Content-Length: "))
            .and_then(|n| n.parse().ok())
            .expect("a Content-Length");
        assert_eq!(declared, body.len());
        let json: serde_json::Value = serde_json::from_str(body).expect("JSON");
        assert_eq!(json["error"]["code"], "tls_required");
    }
}
