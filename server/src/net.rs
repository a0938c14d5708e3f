//! Connections on the client and peer ports: how they are accepted and how
//! they are closed.
//!
//! Accepting: [`PlainListener`] hands axum plain TCP connections with
//! Nagle's algorithm off; `crate::tls::listener::TlsListener` does the same
//! for TLS. Both hand out [`Lingering`] streams.
//!
//! Serving: [`serve`] runs HTTP/1.1 on each connection a listener hands
//! out, and closes a connection that takes longer than [`IDLE_TIMEOUT`] to
//! send a complete request head, counted from when it opened or from the
//! end of its previous exchange. That bounds both the connections a client
//! opens and leaves idle and the ones that send their headers a byte at a
//! time ("slowloris"): without it each would hold a socket and a task for
//! ever. An answer that takes long (a watch, a lock wait) is not cut: the
//! clock only runs while the server waits for a request.
//!
//! A connection whose client presented a certificate is checked again each
//! time the port's TLS files are reloaded (see `crate::tls`): one the new
//! CA no longer admits is closed after its current exchange, or after
//! [`DISTRUSTED_GRACE`] if that exchange is a stream that does not end.
//!
//! Closing: the server sometimes answers before it has read the whole
//! request, above all a body over the size limit (413), which is refused
//! after reading only up to the limit. The HTTP server then closes the
//! connection. If it simply closed the socket while the client was still
//! sending, the kernel would answer the unread bytes with a reset, and a
//! reset makes the client's kernel drop what it had received but not yet
//! read: the 413 is lost and the client sees a broken connection instead
//! ("connection reset", or over TLS "EOF in violation of protocol"). Most
//! clients (Python's http.client, for one) send the whole body before they
//! read anything, so this is the common case, not a corner.
//!
//! So a connection is closed the way web servers have long closed them (a
//! "lingering close"): the write side is shut down first (a TLS close_notify,
//! then a TCP FIN), and what the client still sends is read and thrown away
//! until it closes its side, for at most [`LINGER_TIME`] and never more than
//! [`LINGER_IDLE`] without a byte. A client that closes first (the usual
//! end of a keep-alive connection) costs one read that returns at once.
//! Bytes read while lingering are not decrypted or parsed: they are only
//! taken off the socket.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::extract::ConnectInfo;
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _, BufReader, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tracing::Instrument as _;

use rustls::pki_types::CertificateDer;

use crate::auth::gate::{ClientAddr, ClientCert};
use crate::tls::Material;

/// The longest a connection may wait, open or between two exchanges,
/// before its next request head is complete, unless `serve --idle-timeout`
/// says otherwise. It is longer than the idle timeouts of common HTTP
/// clients' connection pools (Go's 90 s, reqwest's 90 s, curl's 118 s), so
/// that they close an idle connection before the server does and never
/// send a request on one the server is closing.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(120);

/// How long a connection whose certificate is no longer admitted may take
/// to finish the exchange under way before it is cut: enough for a request
/// (a write waiting for its quorum), not for a watch or a peer stream.
pub const DISTRUSTED_GRACE: Duration = Duration::from_secs(5);

/// The longest a closed connection is drained of what the client still sends.
pub const LINGER_TIME: Duration = Duration::from_secs(10);
/// The longest a closing connection waits for the client's next byte.
pub const LINGER_IDLE: Duration = Duration::from_secs(2);

/// A plain-TCP listener whose connections send without delay (answers and
/// peer messages are small writes that someone waits for, which Nagle's
/// algorithm would hold back until the previous one is acknowledged, up to
/// a delayed-ACK timeout) and close with a lingering close.
#[derive(Debug)]
pub struct PlainListener(pub TcpListener);

impl axum::serve::Listener for PlainListener {
    type Io = Lingering<TcpStream>;
    type Addr = std::net::SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        let (tcp, addr) = axum::serve::Listener::accept(&mut self.0).await;
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!(error = %e, "cannot set TCP_NODELAY");
        }
        (Lingering::new(tcp), addr)
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        self.0.local_addr()
    }
}

/// Serves `app` over HTTP/1.1 on every connection `listener` hands out until
/// `shutdown` resolves, then lets the requests in flight finish (each
/// connection closes once its current exchange ends) and returns.
///
/// A connection that has not sent a complete request head within `idle` of
/// opening or of its previous answer is closed (see the module
/// documentation). Handlers find the caller's address as
/// `ConnectInfo<ClientAddr>`, and the name its certificate gives it, if it
/// presented one, as [`ClientCert`]. With `tls`, the material of the port,
/// a connection whose certificate a reload no longer admits is closed.
pub async fn serve<L, S>(
    mut listener: L,
    app: axum::Router,
    idle: Duration,
    tls: Option<Arc<Material>>,
    shutdown: impl std::future::Future<Output = ()>,
) where
    L: axum::serve::Listener<Addr = std::net::SocketAddr, Io = Lingering<S>>,
    S: OverTcp,
{
    // Each connection's task holds a receiver of `stop` (told to finish when
    // the sender goes) and a receiver of `done` (whose sender's `closed`
    // resolves once every task has dropped it).
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(());
    let (done_tx, done_rx) = tokio::sync::watch::channel(());
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let (io, addr) = tokio::select! {
            conn = listener.accept() => conn,
            () = &mut shutdown => break,
        };
        let app = app.clone();
        let cert = io.get_ref().client_name().map(ClientCert);
        let distrusted = distrusted(tls.clone(), io.get_ref().client_chain());
        let service = hyper::service::service_fn(move |mut req: hyper::Request<_>| {
            req.extensions_mut().insert(ConnectInfo(ClientAddr(addr)));
            if let Some(cert) = &cert {
                req.extensions_mut().insert(cert.clone());
            }
            tower::ServiceExt::oneshot(app.clone(), req.map(axum::body::Body::new))
        });
        let (mut stop, done) = (stop_rx.clone(), done_rx.clone());
        tokio::spawn(
            async move {
                let mut http = hyper::server::conn::http1::Builder::new();
                http.timer(hyper_util::rt::TokioTimer::new())
                    .header_read_timeout(idle);
                let conn = http
                    .serve_connection(hyper_util::rt::TokioIo::new(io), service)
                    .with_upgrades();
                let mut conn = std::pin::pin!(conn);
                let ended = tokio::select! {
                    ended = conn.as_mut() => ended,
                    _ = stop.changed() => {
                        conn.as_mut().graceful_shutdown();
                        conn.await
                    }
                    () = distrusted => {
                        tracing::info!(
                            client = %addr,
                            "closing a connection: its client certificate is no longer admitted \
                             by the reloaded CA"
                        );
                        conn.as_mut().graceful_shutdown();
                        // Cut (dropped, with a lingering close) if the
                        // exchange under way does not end in time.
                        tokio::time::timeout(DISTRUSTED_GRACE, conn.as_mut())
                            .await
                            .unwrap_or(Ok(()))
                    }
                };
                if let Err(e) = ended {
                    tracing::debug!(error = %e, client = %addr, "connection ended");
                }
                drop(done);
            }
            .in_current_span(),
        );
    }
    drop(listener);
    drop(stop_tx);
    drop(done_rx);
    done_tx.closed().await;
}

/// Resolves when the certificate `chain` that a connection presented is no
/// longer admitted by `tls`, checked after each reload of its files and
/// once at the start (the files may have been reloaded between the
/// connection's handshake and now). Never resolves for a connection that
/// presented none.
pub(crate) async fn distrusted(
    tls: Option<Arc<Material>>,
    chain: Option<Vec<CertificateDer<'static>>>,
) {
    let (Some(tls), Some(chain)) = (tls, chain) else {
        return std::future::pending().await;
    };
    let mut reloads = tls.reloads();
    reloads.mark_changed();
    // `changed` fails only once the material is dropped, which `tls` here
    // prevents.
    while reloads.changed().await.is_ok() {
        if !tls.admits(&chain) {
            return;
        }
    }
    std::future::pending().await
}

/// A stream over a TCP connection that can give that connection back once
/// it is done with it.
pub trait OverTcp: AsyncRead + AsyncWrite + Unpin + Send + 'static {
    /// The TCP connection underneath.
    fn into_tcp(self) -> TcpStream;

    /// The name the client's certificate gives it, if it presented one
    /// (see [`crate::tls::client_name`]).
    fn client_name(&self) -> Option<Arc<str>> {
        None
    }

    /// The certificate chain the client presented, leaf first, if any.
    fn client_chain(&self) -> Option<Vec<CertificateDer<'static>>> {
        None
    }
}

impl OverTcp for TcpStream {
    fn into_tcp(self) -> TcpStream {
        self
    }
}

impl OverTcp for crate::tls::listener::Accepted {
    /// Anything still in a read buffer is dropped with it: a closing
    /// connection's unread bytes are only ever discarded.
    fn into_tcp(self) -> TcpStream {
        match self.into_inner().0 {
            Socket::Left(tcp) => tcp,
            Socket::Right(buffered) => buffered.into_inner(),
        }
    }

    /// A port asks for client certificates only where it verifies them
    /// against its CA (`--client-cert-auth`, and the peer port), and
    /// sessions are never resumed, so a certificate here was checked
    /// during this connection's own handshake.
    fn client_name(&self) -> Option<Arc<str>> {
        let der = self.get_ref().1.peer_certificates()?.first()?;
        crate::tls::client_name(der).map(Arc::from)
    }

    fn client_chain(&self) -> Option<Vec<CertificateDer<'static>>> {
        self.get_ref()
            .1
            .peer_certificates()
            .map(<[CertificateDer<'static>]>::to_vec)
    }
}

/// A TCP connection read directly (`Left`) or through a buffer (`Right`);
/// see `crate::tls::listener` for which and why.
pub type Socket = tokio_util::either::Either<TcpStream, BufReader<TcpStream>>;

/// A connection that, when dropped, is closed with a lingering close (see
/// the module documentation) in a task of its own.
#[derive(Debug)]
pub struct Lingering<S: OverTcp> {
    /// Always `Some` until dropped.
    stream: Option<S>,
}

impl<S: OverTcp> Lingering<S> {
    pub fn new(stream: S) -> Self {
        Lingering {
            stream: Some(stream),
        }
    }

    /// The stream inside.
    pub fn get_ref(&self) -> &S {
        self.stream
            .as_ref()
            .expect("a Lingering stream is present until dropped")
    }

    fn pinned(&mut self) -> Pin<&mut S> {
        Pin::new(
            self.stream
                .as_mut()
                .expect("a Lingering stream is present until dropped"),
        )
    }
}

impl<S: OverTcp> Drop for Lingering<S> {
    fn drop(&mut self) {
        let Some(stream) = self.stream.take() else {
            return;
        };
        // Outside a runtime (at process exit) the socket just closes.
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(linger(stream));
        }
    }
}

/// Shuts down the write side of `stream`, then reads and discards until the
/// client closes its side, [`LINGER_IDLE`] passes without a byte or
/// [`LINGER_TIME`] in all; then the socket closes.
pub async fn linger<S: OverTcp>(mut stream: S) {
    let deadline = tokio::time::Instant::now() + LINGER_TIME;
    // The HTTP server has usually shut the write side down already; this is
    // for connections it gave up on. Errors only mean it is closed.
    let _ = tokio::time::timeout_at(deadline, stream.shutdown()).await;
    let mut tcp = stream.into_tcp();
    let mut sink = vec![0u8; 16 * 1024];
    loop {
        let wait = deadline.min(tokio::time::Instant::now() + LINGER_IDLE);
        match tokio::time::timeout_at(wait, tcp.read(&mut sink)).await {
            Ok(Ok(n)) if n > 0 => continue,
            // Closed by the client, broken, or out of time.
            _ => return,
        }
    }
}

impl<S: OverTcp> AsyncRead for Lingering<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        self.pinned().poll_read(cx, buf)
    }
}

impl<S: OverTcp> AsyncWrite for Lingering<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.pinned().poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.pinned().poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.get_ref().is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.pinned().poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.pinned().poll_shutdown(cx)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A body this much over the limit cannot fit in the sockets' buffers,
    /// so the client is still sending when the server answers.
    pub(crate) const OVERSIZED: usize = 16 * 1024 * 1024;

    /// A server whose only route takes bodies of at most 1 KiB.
    pub(crate) fn small_body_app() -> axum::Router {
        axum::Router::new()
            .route(
                "/",
                axum::routing::post(
                    |body: axum::body::Bytes| async move { body.len().to_string() },
                ),
            )
            .layer(axum::extract::DefaultBodyLimit::max(1024))
    }

    /// Sends a request whose body is far over the limit the way clients that
    /// read only after sending do, and returns the status line it gets.
    pub(crate) async fn send_oversized<S>(mut conn: S) -> io::Result<String>
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        let head =
            format!("POST / HTTP/1.1\r\nHost: localhost\r\nContent-Length: {OVERSIZED}\r\n\r\n");
        conn.write_all(head.as_bytes()).await?;
        let chunk = vec![b'x'; 64 * 1024];
        for _ in 0..OVERSIZED / chunk.len() {
            conn.write_all(&chunk).await?;
        }
        conn.flush().await?;
        let mut answer = Vec::new();
        tokio::time::timeout(Duration::from_secs(20), conn.read_to_end(&mut answer))
            .await
            .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "no answer"))??;
        let text = String::from_utf8_lossy(&answer);
        Ok(text.lines().next().unwrap_or_default().to_string())
    }

    #[tokio::test]
    async fn plain_connections_send_without_delay() {
        let tcp = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let mut listener = PlainListener(tcp);
        let addr = axum::serve::Listener::local_addr(&listener).expect("address");
        let client = TcpStream::connect(addr).await.expect("connect");
        let (accepted, from) = axum::serve::Listener::accept(&mut listener).await;
        assert_eq!(from, client.local_addr().expect("client address"));
        assert!(
            accepted.get_ref().nodelay().expect("TCP_NODELAY"),
            "Nagle is on"
        );
    }

    #[tokio::test]
    async fn a_client_still_sending_an_oversized_body_reads_the_413() {
        let tcp = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = tcp.local_addr().expect("address");
        tokio::spawn(serve(
            PlainListener(tcp),
            small_body_app(),
            IDLE_TIMEOUT,
            None,
            std::future::pending(),
        ));
        let conn = TcpStream::connect(addr).await.expect("connect");
        let status = send_oversized(conn).await.expect("an answer, not a reset");
        assert!(status.starts_with("HTTP/1.1 413"), "{status}");
    }

    /// A server of `app` with an idle timeout of `idle`, stopped by `stop`.
    async fn serving(
        app: axum::Router,
        idle: Duration,
    ) -> (
        std::net::SocketAddr,
        tokio::sync::oneshot::Sender<()>,
        tokio::task::JoinHandle<()>,
    ) {
        let tcp = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = tcp.local_addr().expect("address");
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(serve(PlainListener(tcp), app, idle, None, async move {
            let _ = stopped.await;
        }));
        (addr, stop, server)
    }

    /// Reads until the server closes the connection, for at most 10 s;
    /// returns what it sent.
    async fn read_until_closed(conn: &mut TcpStream) -> String {
        let mut got = Vec::new();
        tokio::time::timeout(Duration::from_secs(10), conn.read_to_end(&mut got))
            .await
            .expect("the server closes the connection")
            .expect("a clean close");
        String::from_utf8_lossy(&got).into_owned()
    }

    fn slow_app() -> axum::Router {
        axum::Router::new()
            .route(
                "/slow",
                axum::routing::get(|| async {
                    tokio::time::sleep(Duration::from_millis(800)).await;
                    "done"
                }),
            )
            .route(
                "/from",
                axum::routing::get(
                    |ConnectInfo(ClientAddr(from)): ConnectInfo<ClientAddr>| async move {
                        from.to_string()
                    },
                ),
            )
    }

    #[tokio::test]
    async fn a_connection_that_sends_nothing_is_closed_after_the_idle_timeout() {
        let (addr, _stop, _server) = serving(slow_app(), Duration::from_millis(200)).await;
        let mut conn = TcpStream::connect(addr).await.expect("connect");
        assert_eq!(read_until_closed(&mut conn).await, "");
    }

    #[tokio::test]
    async fn a_request_head_sent_too_slowly_is_not_waited_for() {
        let (addr, _stop, _server) = serving(slow_app(), Duration::from_millis(300)).await;
        let mut conn = TcpStream::connect(addr).await.expect("connect");
        // Each byte comes well within the timeout; the head as a whole
        // does not.
        let mut closed = false;
        for b in b"GET /from HTTP/1.1\r\nHost: x\r\nX-Slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaa" {
            if conn.write_all(&[*b]).await.is_err() {
                closed = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        if !closed {
            assert_eq!(
                read_until_closed(&mut conn).await,
                "",
                "no request was served"
            );
        }
    }

    #[tokio::test]
    async fn a_slow_answer_and_a_kept_alive_connection_are_not_cut() {
        let (addr, _stop, _server) = serving(slow_app(), Duration::from_millis(300)).await;
        let mut conn = TcpStream::connect(addr).await.expect("connect");
        // The answer takes longer than the idle timeout: the clock only runs
        // while the server waits for a request.
        conn.write_all(b"GET /slow HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .expect("send");
        let mut buf = vec![0u8; 4096];
        let n = tokio::time::timeout(Duration::from_secs(10), conn.read(&mut buf))
            .await
            .expect("an answer")
            .expect("read");
        let answer = String::from_utf8_lossy(&buf[..n]).into_owned();
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        assert!(answer.ends_with("done"), "{answer}");
        // The same connection serves a second request, and names the
        // caller's address to handlers.
        conn.write_all(b"GET /from HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .expect("send");
        let n = tokio::time::timeout(Duration::from_secs(10), conn.read(&mut buf))
            .await
            .expect("an answer")
            .expect("read");
        let answer = String::from_utf8_lossy(&buf[..n]).into_owned();
        let me = conn.local_addr().expect("address").to_string();
        assert!(answer.ends_with(&me), "{answer} does not end with {me}");
        // Then, idle, it is closed.
        assert_eq!(read_until_closed(&mut conn).await, "");
    }

    #[tokio::test]
    async fn shutting_down_finishes_the_requests_in_flight() {
        let (addr, stop, server) = serving(slow_app(), IDLE_TIMEOUT).await;
        let mut busy = TcpStream::connect(addr).await.expect("connect");
        busy.write_all(b"GET /slow HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .expect("send");
        let mut idle = TcpStream::connect(addr).await.expect("connect");
        tokio::time::sleep(Duration::from_millis(200)).await;
        stop.send(()).expect("the server is running");
        let answer = read_until_closed(&mut busy).await;
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        assert!(answer.ends_with("done"), "{answer}");
        assert_eq!(read_until_closed(&mut idle).await, "");
        tokio::time::timeout(Duration::from_secs(10), server)
            .await
            .expect("serve returns once its connections are closed")
            .expect("serve did not panic");
        assert!(
            TcpStream::connect(addr).await.is_err(),
            "the listener is closed"
        );
    }
}
