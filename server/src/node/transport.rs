//! Outgoing peer traffic: one queue and one sender task per peer.
//!
//! The driver thread drops messages into a peer's queue without waiting; the
//! peer's task takes everything queued and writes it as one line of
//! newline-delimited JSON to a long-lived stream (one HTTP request whose body
//! never ends while there is traffic), so a busy master sends one line per
//! peer per turn however many instances it has in flight, without a request
//! and an answer for each. A stream that breaks or stalls is reopened with
//! backoff; a peer without the stream endpoint gets one POST per batch
//! instead (the form a person can also `curl`). Queues are bounded: when a peer is down or
//! slow the oldest messages are dropped, which Paxos tolerates (everything
//! is retransmitted or re-requested).

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{Notify, watch};
use tracing::Instrument as _;

use crate::paxos::{Envelope, Membership, NodeId};
use crate::telemetry::Metrics;

use super::peer_client::PeerClient;
use super::wire;

/// Messages queued for one peer beyond which the oldest are dropped.
const MAX_QUEUED: usize = 8192;
/// Messages sent in one request at most.
const MAX_BATCH: usize = 1024;

/// A peer's base URL and a request URL parsed from it.
type ParsedEndpoint = (String, reqwest::Url);

/// A stream's lines not yet taken by the connection.
/// Weak, so that it never keeps a stream open.
type StreamLines = tokio::sync::mpsc::WeakSender<Result<axum::body::Bytes, std::io::Error>>;

#[derive(Debug, Default)]
struct PeerQueue {
    queue: Mutex<VecDeque<Envelope>>,
    notify: Notify,
    /// The open stream's line channel, to tell whether it has drained.
    stream: Mutex<Option<StreamLines>>,
    /// A stream is being ended ([`close`]): its channel is closed, but
    /// lines may still wait in it for the connection.
    closing: std::sync::atomic::AtomicBool,
}

impl PeerQueue {
    /// Nothing waits to be sent: the queue is empty and the stream's
    /// connection took every line (it is in the socket, which the kernel
    /// delivers even if this process exits).
    fn drained(&self) -> bool {
        let queued = self.queue.lock().map_or(0, |q| q.len());
        let streaming = self
            .stream
            .lock()
            .ok()
            .and_then(|s| s.as_ref().and_then(|weak| weak.upgrade()))
            .is_some_and(|tx| tx.capacity() < tx.max_capacity());
        let closing = self.closing.load(std::sync::atomic::Ordering::Acquire);
        queued == 0 && !streaming && !closing
    }
}

/// The sending half of the peer transport. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Outbox {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    self_id: NodeId,
    peers: Mutex<HashMap<NodeId, Arc<PeerQueue>>>,
    /// Addresses of senders that are not in this node's configuration yet
    /// (a joining learner hears from the master before it knows the
    /// configuration that names it).
    learned: Mutex<HashMap<NodeId, String>>,
    /// Parsed request URLs by peer and path, with the base URL they were
    /// made from: parsing a URL cost more than the rest of building a
    /// request, and peers rarely move.
    endpoints: Mutex<HashMap<(NodeId, &'static str), ParsedEndpoint>>,
    membership: watch::Receiver<Membership>,
    client: Arc<PeerClient>,
    /// `Bearer <cluster token>`.
    auth: reqwest::header::HeaderValue,
    runtime: tokio::runtime::Handle,
    metrics: Metrics,
    /// Peers a snapshot is on its way to: one at a time each, however often
    /// the engine asks (it asks again on every catch-up request, and a
    /// large snapshot takes longer than their interval).
    snapshots_in_flight: Arc<Mutex<HashSet<NodeId>>>,
}

impl Outbox {
    pub fn new(
        self_id: NodeId,
        client: Arc<PeerClient>,
        token: String,
        membership: watch::Receiver<Membership>,
        runtime: tokio::runtime::Handle,
        metrics: Metrics,
    ) -> Outbox {
        let mut auth = reqwest::header::HeaderValue::from_str(&format!("Bearer {token}"))
            .unwrap_or_else(|_| reqwest::header::HeaderValue::from_static("Bearer -"));
        auth.set_sensitive(true);
        Outbox {
            inner: Arc::new(Inner {
                self_id,
                peers: Mutex::new(HashMap::new()),
                learned: Mutex::new(HashMap::new()),
                endpoints: Mutex::new(HashMap::new()),
                membership,
                client,
                auth,
                runtime,
                metrics,
                snapshots_in_flight: Arc::new(Mutex::new(HashSet::new())),
            }),
        }
    }

    /// Queues a message for its peer; never blocks.
    pub fn send(&self, env: Envelope) {
        let Some(q) = self.queue(env.to) else {
            return;
        };
        if let Ok(mut queue) = q.queue.lock() {
            if queue.len() >= MAX_QUEUED {
                queue.pop_front();
            }
            queue.push_back(env);
        }
        q.notify.notify_one();
    }

    fn queue(&self, peer: NodeId) -> Option<Arc<PeerQueue>> {
        let mut peers = self.inner.peers.lock().ok()?;
        if let Some(q) = peers.get(&peer) {
            return Some(q.clone());
        }
        let q = Arc::new(PeerQueue::default());
        peers.insert(peer, q.clone());
        let inner = self.inner.clone();
        let task_q = q.clone();
        self.inner
            .runtime
            .spawn(async move { sender(inner, peer, task_q).await }.in_current_span());
        Some(q)
    }

    /// True once every message queued so far has left for its peer (see
    /// [`PeerQueue::drained`]); a node shutting down waits for this so that
    /// its last messages (the hand-over of mastership) are not lost.
    pub fn drained(&self) -> bool {
        self.inner
            .peers
            .lock()
            .map(|peers| peers.values().all(|q| q.drained()))
            .unwrap_or(true)
    }

    /// Remembers where `id` can be reached, from a header it sent.
    pub fn learn_address(&self, id: NodeId, url: &str) {
        if let Ok(mut l) = self.inner.learned.lock()
            && l.get(&id).map(String::as_str) != Some(url)
        {
            l.insert(id, url.trim_end_matches('/').to_string());
        }
    }

    /// The peer URL of `id`: from the configuration, or as it told us.
    pub fn url_of(&self, id: NodeId) -> Option<String> {
        self.inner.url_of(id)
    }

    /// `path` on peer `id`'s peer API, parsed once per address.
    pub fn endpoint(&self, id: NodeId, path: &'static str) -> Option<reqwest::Url> {
        self.inner.endpoint(id, path)
    }

    /// Sends the snapshot in the file at `path` in the background, read
    /// and sent a piece at a time (one at a time per call site is enough:
    /// the engine asks again if it does not arrive). False when a snapshot
    /// is still on its way to `peer`: nothing new is sent then.
    pub fn send_snapshot(&self, peer: NodeId, path: &std::path::Path) -> bool {
        let Some(flight) = InFlight::start(&self.inner.snapshots_in_flight, peer) else {
            return false;
        };
        let path = path.to_path_buf();
        let inner = self.inner.clone();
        self.inner.runtime.spawn(
            async move {
                let _flight = flight;
                let Some(url) = inner.url_of(peer) else {
                    return;
                };
                let body = match snapshot_body(path).await {
                    Ok(body) => body,
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot read the snapshot to send");
                        return;
                    }
                };
                let to = crate::cluster::bootstrap::format_id(peer);
                let res = inner
                    .client
                    .get()
                    .post(format!("{url}/peer/v1/snapshot?to={to}"))
                    .header(reqwest::header::AUTHORIZATION, inner.auth.clone())
                    .header("content-type", "application/octet-stream")
                    .timeout(Duration::from_secs(600))
                    .body(body)
                    .send()
                    .await;
                match res {
                    Ok(r) if r.status().is_success() => {}
                    Ok(r) => tracing::warn!(peer = %url, status = %r.status(), "snapshot refused"),
                    Err(e) => tracing::warn!(peer = %url, error = %e, "snapshot not delivered"),
                }
            }
            .in_current_span(),
        );
        true
    }
}

/// A snapshot send to one peer; the peer is free for the next when it ends.
struct InFlight {
    set: Arc<Mutex<HashSet<NodeId>>>,
    peer: NodeId,
}

impl InFlight {
    fn start(set: &Arc<Mutex<HashSet<NodeId>>>, peer: NodeId) -> Option<InFlight> {
        let mut peers = set.lock().ok()?;
        peers.insert(peer).then(|| InFlight {
            set: set.clone(),
            peer,
        })
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        if let Ok(mut peers) = self.set.lock() {
            peers.remove(&self.peer);
        }
    }
}

/// Pieces of a snapshot body read ahead of the connection; a slow peer
/// stops the reading instead of letting it pile up in memory.
const SNAPSHOT_PIECES_AHEAD: usize = 4;
const SNAPSHOT_PIECE: usize = 256 << 10;

/// A streaming peer body for the snapshot file at `path`: the header
/// ([`wire::snapshot_header`]), then the data as it is read. A file that
/// fails its checksum ends the stream with an error, so the peer never
/// installs it.
async fn snapshot_body(path: std::path::PathBuf) -> Result<reqwest::Body, String> {
    use crate::storage::snapshot_file::Reader;
    let reader = tokio::task::spawn_blocking(move || Reader::open(&path))
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| e.to_string())?;
    let header = super::wire::snapshot_header(reader.meta());
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<axum::body::Bytes, std::io::Error>>(
        SNAPSHOT_PIECES_AHEAD,
    );
    tokio::task::spawn_blocking(move || {
        let mut reader = reader;
        // Ends the body with an error unless the last piece was read: a
        // body that just stopped would look whole to the peer, and one cut
        // right after the request table decodes as a snapshot without its
        // request marks (see `crate::kv::dedup::DedupMarks`).
        let mut unfinished = Unfinished(Some(tx.clone()));
        if tx.blocking_send(Ok(header.into())).is_err() {
            return;
        }
        loop {
            let piece = match reader.next_chunk(SNAPSHOT_PIECE) {
                Ok(Some(p)) => Ok(p.into()),
                Ok(None) => {
                    unfinished.0 = None;
                    return;
                }
                Err(e) => Err(std::io::Error::other(e.to_string())),
            };
            let failed = piece.is_err();
            if tx.blocking_send(piece).is_err() || failed {
                return;
            }
        }
    });
    Ok(reqwest::Body::wrap_stream(
        tokio_stream::wrappers::ReceiverStream::new(rx),
    ))
}

/// The sending end of a snapshot body that has not reached its last piece;
/// dropped so (an error, a panic), it ends the body with an error.
struct Unfinished(Option<tokio::sync::mpsc::Sender<Result<axum::body::Bytes, std::io::Error>>>);

impl Drop for Unfinished {
    fn drop(&mut self) {
        if let Some(tx) = self.0.take() {
            let _ = tx.blocking_send(Err(std::io::Error::other(
                "the snapshot file was not read to its end",
            )));
        }
    }
}

/// The peer URL of `id` in the current configuration.
fn peer_url(membership: &watch::Receiver<Membership>, id: NodeId) -> Option<String> {
    membership
        .borrow()
        .members
        .get(&id)
        .map(|m| m.addr.trim_end_matches('/').to_string())
}

impl Inner {
    fn url_of(&self, id: NodeId) -> Option<String> {
        peer_url(&self.membership, id)
            .or_else(|| self.learned.lock().ok().and_then(|l| l.get(&id).cloned()))
    }

    fn endpoint(&self, id: NodeId, path: &'static str) -> Option<reqwest::Url> {
        let base = self.url_of(id)?;
        let mut cache = self.endpoints.lock().ok()?;
        if let Some((b, url)) = cache.get(&(id, path))
            && *b == base
        {
            return Some(url.clone());
        }
        let url = reqwest::Url::parse(&format!("{base}{path}")).ok()?;
        cache.insert((id, path), (base, url.clone()));
        Some(url)
    }
}

/// How long a stream may refuse the next line before it is abandoned and
/// reopened: the peer is paused, or the path to it holds traffic.
const STREAM_STALL: Duration = Duration::from_secs(2);
/// Lines handed to a stream ahead of the connection (back-pressure: beyond
/// this the sender waits, and new messages wait in the bounded queue).
const STREAM_AHEAD: usize = 16;
/// A stream with nothing to send for this long is ended.
const STREAM_IDLE: Duration = Duration::from_secs(30);
/// How long a stream that is ended on purpose waits for the peer's answer.
const STREAM_CLOSE: Duration = Duration::from_secs(5);
/// A stream that lived this long counts as a success for the backoff.
const STREAM_HEALTHY: Duration = Duration::from_secs(5);

/// What a peer's sender task remembers between requests.
#[derive(Debug, Default)]
struct Link {
    /// Consecutive failures, for the backoff and to keep logs short.
    failures: u32,
    /// Our own address, as a header value, rebuilt only when it changes.
    own_url: Option<reqwest::header::HeaderValue>,
    own_url_text: String,
    /// The peer has no stream endpoint (an older version): POST batches.
    no_stream: bool,
}

impl Link {
    fn refresh_own_url(&mut self, inner: &Inner) {
        if let Some(own) = peer_url(&inner.membership, inner.self_id)
            && own != self.own_url_text
        {
            self.own_url = reqwest::header::HeaderValue::from_str(&own).ok();
            self.own_url_text = own;
        }
    }

    async fn backoff(&self) {
        // A dead peer costs little CPU.
        tokio::time::sleep(Duration::from_millis(20 * u64::from(self.failures.min(10)))).await;
    }
}

/// The task that sends one peer its messages: over a long-lived stream
/// (newline-delimited JSON on one HTTP request per connection, reopened with
/// backoff when it breaks), or as one POST per batch when the peer has no
/// stream endpoint.
async fn sender(inner: Arc<Inner>, peer: NodeId, q: Arc<PeerQueue>) {
    let mut link = Link::default();
    loop {
        q.notify.notified().await;
        link.refresh_own_url(&inner);
        if link.no_stream {
            post_queued(&inner, peer, &q, &mut link).await;
        } else {
            stream_queued(&inner, peer, &q, &mut link).await;
        }
    }
}

/// Up to [`MAX_BATCH`] queued messages; `None` if the queue is unusable.
fn take_batch(q: &PeerQueue) -> Option<Vec<Envelope>> {
    let mut queue = q.queue.lock().ok()?;
    let n = queue.len().min(MAX_BATCH);
    Some(queue.drain(..n).collect())
}

/// Opens a stream to `peer` and feeds it the queue until it breaks, stalls
/// or idles.
async fn stream_queued(inner: &Arc<Inner>, peer: NodeId, q: &PeerQueue, link: &mut Link) {
    let Some(url) = inner.endpoint(peer, "/peer/v1/stream") else {
        // Not (or no longer) a member: nowhere to send.
        return;
    };
    let (tx, rx) =
        tokio::sync::mpsc::channel::<Result<axum::body::Bytes, std::io::Error>>(STREAM_AHEAD);
    if let Ok(mut s) = q.stream.lock() {
        *s = Some(tx.downgrade());
    }
    let _forget = ForgetStream(q);
    // Seen before the client is taken: a renewal from here on ends this
    // stream, so it never outlives the client it was opened with by more
    // than a line.
    let mut renewals = inner.client.renewals();
    renewals.borrow_and_update();
    let mut req = inner
        .client
        .get()
        .post(url.clone())
        .header(reqwest::header::AUTHORIZATION, inner.auth.clone())
        .header(reqwest::header::CONTENT_TYPE, wire::NDJSON)
        .header(wire::FEATURES_HEADER, wire::FEATURES);
    if let Some(own) = link.own_url.as_ref() {
        req = req.header(wire::PEER_URL_HEADER, own.clone());
    }
    let req = req.body(reqwest::Body::wrap_stream(
        tokio_stream::wrappers::ReceiverStream::new(rx),
    ));
    let mut answer =
        tokio::spawn(async move { req.send().await.map(|r| r.status()).map_err(call_error) });
    let opened = std::time::Instant::now();
    let ended = |answer: Result<Result<reqwest::StatusCode, String>, tokio::task::JoinError>| {
        answer.unwrap_or_else(|e| Err(e.to_string()))
    };
    loop {
        if renewals.has_changed().unwrap_or(false) {
            // The TLS files were reloaded: end the stream cleanly (what it
            // was handed is still sent) and let the sender reopen it at
            // once, through the renewed client and a new handshake.
            let a = close(q, tx, answer).await;
            q.notify.notify_one();
            return outcome(inner, peer, &url, a, true, link).await;
        }
        let Some(batch) = take_batch(q) else { return };
        if batch.is_empty() {
            tokio::select! {
                () = q.notify.notified() => continue,
                Ok(()) = renewals.changed() => {
                    renewals.mark_changed();
                    continue;
                }
                a = &mut answer => {
                    let healthy = opened.elapsed() >= STREAM_HEALTHY;
                    return outcome(inner, peer, &url, ended(a), healthy, link).await;
                }
                () = tokio::time::sleep(STREAM_IDLE) => {
                    let a = close(q, tx, answer).await;
                    return outcome(inner, peer, &url, a, true, link).await;
                }
            }
        }
        let line = match wire::stream_line(&batch) {
            Ok(line) => line,
            Err(e) => {
                tracing::error!(error = %e, "dropping peer messages");
                continue;
            }
        };
        inner.metrics.inc_peer_bytes_sent("json", line.len() as u64);
        inner.metrics.inc_peer_messages("sent", batch.len() as u64);
        match tokio::time::timeout(STREAM_STALL, tx.send(Ok(line.into()))).await {
            Ok(Ok(())) => {}
            Ok(Err(_)) => {
                // The request ended: refused, or the connection broke.
                let healthy = opened.elapsed() >= STREAM_HEALTHY;
                return outcome(inner, peer, &url, ended(answer.await), healthy, link).await;
            }
            Err(_) => {
                answer.abort();
                link.failures += 1;
                if link.failures == 1 || link.failures.is_multiple_of(100) {
                    tracing::debug!(peer = %url, "peer stream stalled; reopening it");
                }
                return link.backoff().await;
            }
        }
    }
}

/// Ends a stream cleanly: no more lines, then the peer's answer, once it
/// has read what it was sent. Waited for at most [`STREAM_CLOSE`]: a
/// paused or vanished peer would otherwise hold its sender (and every
/// message queued behind it) until the connection times out.
async fn close(
    q: &PeerQueue,
    tx: tokio::sync::mpsc::Sender<Result<axum::body::Bytes, std::io::Error>>,
    mut answer: tokio::task::JoinHandle<Result<reqwest::StatusCode, String>>,
) -> Result<reqwest::StatusCode, String> {
    use std::sync::atomic::Ordering;
    // Until the answer, lines may still wait in the closed channel: the
    // queue is not drained (see [`PeerQueue::drained`]).
    q.closing.store(true, Ordering::Release);
    drop(tx);
    let a = match tokio::time::timeout(STREAM_CLOSE, &mut answer).await {
        Ok(a) => a.unwrap_or_else(|e| Err(e.to_string())),
        Err(_) => {
            answer.abort();
            Err("the peer did not answer the end of its stream".into())
        }
    };
    q.closing.store(false, Ordering::Release);
    a
}

/// Clears a peer's stream channel when its stream ends.
struct ForgetStream<'a>(&'a PeerQueue);

impl Drop for ForgetStream<'_> {
    fn drop(&mut self) {
        if let Ok(mut s) = self.0.stream.lock() {
            *s = None;
        }
    }
}

/// Sends the queue as one POST per batch, until it is empty.
async fn post_queued(inner: &Arc<Inner>, peer: NodeId, q: &PeerQueue, link: &mut Link) {
    loop {
        let Some(batch) = take_batch(q) else { return };
        if batch.is_empty() {
            return;
        }
        let Some(url) = inner.endpoint(peer, "/peer/v1/messages") else {
            return;
        };
        let mut req = inner
            .client
            .get()
            .post(url.clone())
            .header(reqwest::header::AUTHORIZATION, inner.auth.clone())
            .header(wire::FEATURES_HEADER, wire::FEATURES);
        if let Some(own) = link.own_url.as_ref() {
            req = req.header(wire::PEER_URL_HEADER, own.clone());
        }
        let body = match wire::encode(&batch) {
            Ok(b) => b,
            Err(e) => {
                tracing::error!(error = %e, "dropping peer messages");
                continue;
            }
        };
        inner.metrics.inc_peer_bytes_sent("json", body.len() as u64);
        let res = req
            .timeout(Duration::from_secs(2))
            .header(reqwest::header::CONTENT_TYPE, wire::JSON)
            .body(body)
            .send()
            .await;
        inner.metrics.inc_peer_messages("sent", batch.len() as u64);
        let status = res.map(|r| r.status()).map_err(call_error);
        outcome(inner, peer, &url, status, false, link).await;
    }
}

/// How a failed call's reason starts when TLS is why it failed.
pub(super) const TLS_FAILURE: &str = "TLS: ";

/// A failed call's reason, with the TLS error named when there is one
/// (reqwest's own text only says the request could not be sent).
fn call_error(e: reqwest::Error) -> String {
    match crate::tls::failure_reason(&e) {
        Some(reason) => format!("{TLS_FAILURE}{reason}"),
        None => e.to_string(),
    }
}

/// Reacts to how a request to `peer` ended: resets or counts failures, says
/// what an operator must know, and backs off after a failure. `healthy`
/// marks a stream that worked for a while before it ended.
async fn outcome(
    inner: &Inner,
    peer: NodeId,
    url: &reqwest::Url,
    status: Result<reqwest::StatusCode, String>,
    healthy: bool,
    link: &mut Link,
) {
    let quiet = |failures: u32| !(failures == 1 || failures.is_multiple_of(100));
    match status {
        Ok(s) if s.is_success() => link.failures = 0,
        Ok(s)
            if s == reqwest::StatusCode::NOT_FOUND
                || s == reqwest::StatusCode::METHOD_NOT_ALLOWED
                || s == reqwest::StatusCode::UNSUPPORTED_MEDIA_TYPE =>
        {
            tracing::info!(peer = %url, status = %s, "peer takes no message stream; sending batches");
            link.no_stream = true;
        }
        Ok(s) if s == reqwest::StatusCode::PRECONDITION_FAILED => {
            link.failures += 1;
            if !quiet(link.failures) {
                tracing::error!(
                    peer = %url,
                    "the peer runs another --read-mode and refuses this node; every \
                     replica of a cluster must use the same"
                );
            }
            link.backoff().await;
        }
        Ok(s) if s == reqwest::StatusCode::CONFLICT => {
            // The node at that address runs another incarnation: its
            // volume was lost. It will never answer for this one.
            link.failures += 1;
            if !quiet(link.failures) {
                let name = inner
                    .membership
                    .borrow()
                    .members
                    .get(&peer)
                    .map(|m| m.name.clone())
                    .unwrap_or_default();
                tracing::warn!(
                    peer = %url,
                    member = %name,
                    incarnation = %crate::cluster::bootstrap::format_id(peer),
                    "{name} lost its data directory: the node at its address runs a new \
                     incarnation; replace the member (phxkv members replace {name})"
                );
            }
            link.backoff().await;
        }
        Ok(s) => {
            link.failures = if healthy { 1 } else { link.failures + 1 };
            if !quiet(link.failures) {
                tracing::warn!(peer = %url, status = %s, "peer refused messages");
            }
            link.backoff().await;
        }
        Err(e) => {
            link.failures = if healthy { 1 } else { link.failures + 1 };
            if !quiet(link.failures) {
                if e.starts_with(TLS_FAILURE) {
                    // Not a peer that is down: a certificate or CA problem
                    // that lasts until someone fixes it.
                    tracing::warn!(peer = %url, error = %e, "peer refused or failed TLS");
                } else {
                    tracing::debug!(peer = %url, error = %e, "peer unreachable");
                }
            }
            link.backoff().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use tempfile::TempDir;

    use super::*;
    use crate::paxos::SnapshotMeta;
    use crate::storage::snapshot_file;

    #[test]
    fn a_snapshot_body_that_stops_early_ends_with_an_error() {
        let (tx, mut rx) = tokio::sync::mpsc::channel(4);
        let unfinished = Unfinished(Some(tx.clone()));
        tx.blocking_send(Ok(axum::body::Bytes::from_static(b"head")))
            .expect("sent");
        drop(unfinished);
        drop(tx);
        assert!(matches!(rx.blocking_recv(), Some(Ok(_))));
        assert!(
            matches!(rx.blocking_recv(), Some(Err(_))),
            "an error, not an end"
        );
        assert!(rx.blocking_recv().is_none());
        // One whose last piece was read just ends.
        let (tx, mut rx) =
            tokio::sync::mpsc::channel::<Result<axum::body::Bytes, std::io::Error>>(4);
        let mut finished = Unfinished(Some(tx));
        finished.0 = None;
        drop(finished);
        assert!(rx.blocking_recv().is_none());
    }

    fn plain_client() -> Arc<PeerClient> {
        PeerClient::new(&super::super::peer_client::Settings {
            read_mode: "lease",
            proxy: None,
            tls: None,
        })
        .expect("client")
    }

    fn heartbeat(commit: u64) -> Envelope {
        Envelope {
            from: 1,
            to: 2,
            msg: crate::paxos::Message::Heartbeat {
                ballot: crate::paxos::Ballot { round: 1, node: 1 },
                commit,
            },
        }
    }

    /// A renewed client (the TLS files were reloaded) ends the open stream
    /// cleanly and opens the next one through the new client: every message
    /// arrives, in order, over two streams.
    #[tokio::test]
    async fn a_renewed_client_reopens_the_peer_stream_and_loses_nothing() {
        use futures_util::StreamExt as _;
        #[derive(Default)]
        struct Seen {
            streams: usize,
            /// Whether each stream came from the renewed client.
            renewed: Vec<bool>,
            commits: Vec<u64>,
        }
        let seen = Arc::new(Mutex::new(Seen::default()));
        let recorder = seen.clone();
        let app = axum::Router::new().route(
            "/peer/v1/stream",
            axum::routing::post(
                move |headers: axum::http::HeaderMap, body: axum::body::Body| {
                    let seen = recorder.clone();
                    async move {
                        if let Ok(mut s) = seen.lock() {
                            s.streams += 1;
                            s.renewed.push(headers.contains_key("x-renewed"));
                        }
                        let mut chunks = body.into_data_stream();
                        let mut pending = Vec::new();
                        while let Some(Ok(chunk)) = chunks.next().await {
                            pending.extend_from_slice(&chunk);
                            while let Some(end) = pending.iter().position(|b| *b == b'\n') {
                                let line: Vec<u8> = pending.drain(..=end).collect();
                                let batch: Vec<Envelope> =
                                    serde_json::from_slice(&line).expect("a batch");
                                for env in batch {
                                    if let crate::paxos::Message::Heartbeat { commit, .. } = env.msg
                                    {
                                        seen.lock().expect("seen").commits.push(commit);
                                    }
                                }
                            }
                        }
                        "done"
                    }
                },
            ),
        );
        let tcp = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = tcp.local_addr().expect("address");
        tokio::spawn(async move { axum::serve(tcp, app).await });
        let client = plain_client();
        let (_, membership) = watch::channel(Membership::default());
        let outbox = Outbox::new(
            1,
            client.clone(),
            "token".into(),
            membership,
            tokio::runtime::Handle::current(),
            Metrics::new(),
        );
        outbox.learn_address(2, &format!("http://{addr}"));
        let arrived = |n: usize| {
            let seen = seen.clone();
            async move {
                let deadline = Instant::now() + Duration::from_secs(10);
                loop {
                    let (streams, count) = {
                        let s = seen.lock().expect("seen");
                        (s.streams, s.commits.len())
                    };
                    if count >= n {
                        return streams;
                    }
                    assert!(Instant::now() < deadline, "{count} of {n} messages arrived");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            }
        };
        for commit in 0..50 {
            outbox.send(heartbeat(commit));
        }
        assert_eq!(arrived(50).await, 1, "one stream so far");

        // The renewed client marks its calls, so the handler can tell
        // which client opened each stream.
        let mut marked = reqwest::header::HeaderMap::new();
        marked.insert(
            "x-renewed",
            reqwest::header::HeaderValue::from_static("yes"),
        );
        client.renew(
            reqwest::Client::builder()
                .no_proxy()
                .default_headers(marked)
                .build()
                .expect("client"),
        );
        for commit in 50..100 {
            outbox.send(heartbeat(commit));
        }
        assert_eq!(arrived(100).await, 2, "the renewal opened a second stream");
        let s = seen.lock().expect("seen");
        assert_eq!(
            s.renewed,
            [false, true],
            "the second stream came from the renewed client"
        );
        assert_eq!(s.commits, (0..100).collect::<Vec<_>>(), "all, in order");
    }

    #[tokio::test]
    async fn a_snapshot_goes_to_a_peer_once_until_the_send_in_flight_ends() {
        let tmp = TempDir::new().expect("tempdir");
        let meta = SnapshotMeta {
            index: 7,
            membership: Membership::default(),
        };
        let path = snapshot_file::write(tmp.path(), &meta, &[1; 4096]).expect("snapshot");
        // A peer that takes the connection into its backlog and never
        // answers: the first send stays in flight.
        let silent = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let (_, membership) = watch::channel(Membership::default());
        let outbox = Outbox::new(
            1,
            plain_client(),
            "token".into(),
            membership,
            tokio::runtime::Handle::current(),
            Metrics::new(),
        );
        let addr = silent.local_addr().expect("address");
        outbox.learn_address(2, &format!("http://{addr}"));

        assert!(outbox.send_snapshot(2, &path), "the first ask sends");
        for _ in 0..5 {
            tokio::time::sleep(Duration::from_millis(20)).await;
            assert!(
                !outbox.send_snapshot(2, &path),
                "an ask while a send is on its way began another"
            );
        }

        // The peer goes away: the send fails, and the next ask sends again.
        drop(silent);
        let deadline = Instant::now() + Duration::from_secs(10);
        while !outbox.send_snapshot(2, &path) {
            assert!(
                Instant::now() < deadline,
                "the peer never became free for the next snapshot"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}
