//! Leases: grant, keep alive (once, or in the background), revoke,
//! inspect.

use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::kv::decode_b64;
use crate::{ApiError, Client, Error, describe, json};

/// A lease just granted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Granted {
    pub id: u64,
    pub ttl_secs: u64,
    /// The revision of the grant.
    pub revision: u64,
}

/// A live lease, as the master counts it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseStatus {
    pub id: u64,
    pub ttl_secs: u64,
    /// Milliseconds before the master may expire it.
    pub remaining_ms: u64,
    pub granted_revision: u64,
    /// With `keys`: the keys attached (base64), at most 1000.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keys: Option<Vec<String>>,
}

impl LeaseStatus {
    /// The attached keys, decoded (empty unless asked for).
    pub fn key_bytes(&self) -> Result<Vec<Vec<u8>>, Error> {
        self.keys
            .iter()
            .flatten()
            .map(|k| decode_b64("key", k))
            .collect()
    }
}

/// A lease revoked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Revoked {
    /// The revision at which the lease and its keys were deleted.
    pub revision: u64,
    /// How many keys were deleted with it.
    pub deleted: u64,
}

/// The outcome of one keep-alive for several leases.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeepAliveAnswer {
    pub leases: Vec<LeaseStatus>,
    /// Leases that no longer exist or already expired.
    pub missing: Vec<u64>,
}

/// One lease in a listing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseEntry {
    pub id: u64,
    pub ttl_secs: u64,
    pub granted_revision: u64,
}

/// A page of leases, by id.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseList {
    pub leases: Vec<LeaseEntry>,
    /// More follow: ask again with `after` = the last id.
    pub more: bool,
}

/// At most this many leases per keep-alive request (the API's bound).
pub const MAX_KEEPALIVE_IDS: usize = 1000;

impl Client {
    /// Grants a lease of `ttl_secs` (2 to 604800), with id `id` or a
    /// random one. Retried safely: a retry gets the same lease.
    pub async fn grant(&self, ttl_secs: u64, id: Option<u64>) -> Result<Granted, Error> {
        let body = serde_json::json!({ "ttl_secs": ttl_secs, "id": id });
        let resp = self
            .send_write(|h, base| h.post(format!("{base}/v1/leases")).json(&body))
            .await?;
        json(resp).await
    }

    /// Renews lease `id` once; `lease_not_found` when it is gone.
    pub async fn keep_alive_once(&self, id: u64) -> Result<LeaseStatus, Error> {
        let resp = self
            .send(|h, base| h.post(format!("{base}/v1/leases/{id}/keepalive")))
            .await?;
        json(resp).await
    }

    /// Renews up to 1000 leases in one request.
    pub async fn keep_alive_many(&self, ids: &[u64]) -> Result<KeepAliveAnswer, Error> {
        if ids.len() > MAX_KEEPALIVE_IDS {
            return Err(Error::Config(format!(
                "at most {MAX_KEEPALIVE_IDS} leases per keep-alive, not {}",
                ids.len()
            )));
        }
        let body = serde_json::json!({ "ids": ids });
        let resp = self
            .send(|h, base| h.post(format!("{base}/v1/leases/keepalive")).json(&body))
            .await?;
        json(resp).await
    }

    /// Revokes lease `id` now; its keys are deleted with it.
    pub async fn revoke(&self, id: u64) -> Result<Revoked, Error> {
        let resp = self
            .send(|h, base| h.delete(format!("{base}/v1/leases/{id}")))
            .await?;
        json(resp).await
    }

    /// A lease's TTL and time left, with its keys when `keys`.
    pub async fn lease(&self, id: u64, keys: bool) -> Result<LeaseStatus, Error> {
        let query = if keys { "?keys=true" } else { "" };
        let resp = self
            .send(|h, base| h.get(format!("{base}/v1/leases/{id}{query}")))
            .await?;
        json(resp).await
    }

    /// One page of up to `limit` leases with ids above `after`.
    pub async fn leases(&self, after: u64, limit: u64) -> Result<LeaseList, Error> {
        let resp = self
            .send(|h, base| h.get(format!("{base}/v1/leases?limit={limit}&after={after}")))
            .await?;
        json(resp).await
    }

    /// Keeps `leases` (id and TTL each, at most 1000) alive in the
    /// background until the returned handle is dropped: all in one line
    /// of a streaming keep-alive (one connection) every third of the
    /// shortest TTL.
    ///
    /// When one is gone, or could not be renewed for two thirds of its TTL
    /// (so it may expire in the third left), [`KeepAlive::lost`] says so
    /// and the others stop being renewed too: the caller decides what
    /// next. Until the first renewal succeeds, the time is counted from
    /// this call, so call it right after the grant.
    pub fn keep_alive(&self, leases: &[(u64, u64)]) -> KeepAlive {
        let (tx, rx) = watch::channel(None);
        let streaming = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let task = tokio::spawn(renew_until_lost(
            self.clone(),
            leases.to_vec(),
            tx,
            streaming.clone(),
        ));
        KeepAlive {
            lost: rx,
            task,
            streaming,
        }
    }
}

/// Leases kept alive in the background; dropping it stops the renewals
/// (the leases then expire after their TTL unless revoked).
#[derive(Debug)]
pub struct KeepAlive {
    lost: watch::Receiver<Option<String>>,
    task: tokio::task::JoinHandle<()>,
    streaming: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl KeepAlive {
    /// Waits until a lease is lost, and says why. Never returns while all
    /// live.
    pub async fn lost(&mut self) -> String {
        match self.lost.wait_for(Option::is_some).await {
            Ok(why) => why.clone().unwrap_or_default(),
            Err(_) => std::future::pending().await,
        }
    }

    /// Whether the last renewal went over a keep-alive stream (rather
    /// than a request of its own, for servers without the stream).
    pub fn streaming(&self) -> bool {
        self.streaming.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Why a lease was lost, if one was.
    pub fn lost_now(&self) -> Option<String> {
        self.lost.borrow().clone()
    }
}

impl Drop for KeepAlive {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The pause after a failed renewal before the next try.
const RETRY: Duration = Duration::from_millis(500);

/// What one renewal of all the leases came to.
enum Renewal {
    Renewed,
    /// These leases no longer exist.
    Gone(Vec<u64>),
    /// No answer this time (the reason); the leases may still live.
    Failed(String),
}

impl Renewal {
    fn of(answer: KeepAliveAnswer) -> Renewal {
        if answer.missing.is_empty() {
            Renewal::Renewed
        } else {
            Renewal::Gone(answer.missing)
        }
    }
}

async fn renew_until_lost(
    client: Client,
    leases: Vec<(u64, u64)>,
    lost: watch::Sender<Option<String>>,
    streaming: std::sync::Arc<std::sync::atomic::AtomicBool>,
) {
    let Some(shortest) = leases.iter().map(|(_, ttl)| *ttl).min() else {
        return;
    };
    if leases.len() > MAX_KEEPALIVE_IDS {
        let _ = lost.send(Some(format!(
            "at most {MAX_KEEPALIVE_IDS} leases per keep-alive, not {}",
            leases.len()
        )));
        return;
    }
    let ids: Vec<u64> = leases.iter().map(|(id, _)| *id).collect();
    let interval = Duration::from_millis(shortest.saturating_mul(1000) / 3);
    // The master counts a lease's TTL from when it got the keep-alive,
    // which is after it was sent. So a lease renewed by a request sent at
    // `t` lives at least until `t + TTL`, and calling it lost at
    // `t + 2/3 TTL` leaves the holder a third of the TTL to stop before
    // anyone else can take what the lease holds.
    let give_up = Duration::from_millis(shortest.saturating_mul(2000) / 3);
    let mut line = serde_json::json!({ "ids": ids }).to_string().into_bytes();
    line.push(b'\n');
    let mut stream: Option<KeepAliveStream> = None;
    // Servers without the stream get one request per renewal.
    let mut batch_only = false;
    let mut last_ok = Instant::now();
    loop {
        let sent = Instant::now();
        let renewal = if batch_only {
            match client.keep_alive_many(&ids).await {
                Ok(answer) => Renewal::of(answer),
                Err(e) => Renewal::Failed(e.to_string()),
            }
        } else {
            match stream.as_mut() {
                Some(s) => s.renew(&line, client.timeout).await,
                None => match KeepAliveStream::open(&client, &line).await {
                    Opened::Stream(s, renewal) => {
                        stream = Some(s);
                        renewal
                    }
                    Opened::Unsupported => {
                        batch_only = true;
                        continue;
                    }
                    Opened::Failed(why) => Renewal::Failed(why),
                },
            }
        };
        streaming.store(
            stream.as_ref().is_some_and(|s| !s.broken),
            std::sync::atomic::Ordering::Relaxed,
        );
        match renewal {
            Renewal::Gone(missing) => {
                let gone: Vec<String> = missing.iter().map(u64::to_string).collect();
                let _ = lost.send(Some(format!(
                    "lease {} is gone (expired or revoked)",
                    gone.join(", ")
                )));
                return;
            }
            Renewal::Renewed => {
                last_ok = sent;
                tokio::time::sleep(interval).await;
            }
            Renewal::Failed(why) => {
                if stream.as_ref().is_some_and(|s| s.broken) {
                    stream = None;
                }
                if last_ok.elapsed() >= give_up {
                    let _ = lost.send(Some(format!(
                        "lease {} could not be renewed for two thirds of its TTL ({why}); it may expire",
                        ids.first().copied().unwrap_or(0)
                    )));
                    return;
                }
                tracing::debug!(%why, "keep-alive failed; retrying");
                tokio::time::sleep(RETRY.min(interval)).await;
            }
        }
    }
}

/// A streaming keep-alive (`POST /v1/leases/keepalive/stream`) to one
/// endpoint: a line sent per renewal, a line answered.
struct KeepAliveStream {
    lines: tokio::sync::mpsc::Sender<Result<Vec<u8>, std::io::Error>>,
    resp: reqwest::Response,
    buf: Vec<u8>,
    /// The stream cannot be used again; the next renewal opens another.
    broken: bool,
}

enum Opened {
    Stream(KeepAliveStream, Renewal),
    /// The server has no streaming keep-alive.
    Unsupported,
    Failed(String),
}

/// The longest answer line read (1000 leases' status, with room).
const MAX_ANSWER_LINE: usize = 1 << 20;

impl KeepAliveStream {
    /// Opens a stream at the preferred endpoint with the first `line`;
    /// on failure, the next endpoint becomes the preferred one.
    async fn open(client: &Client, line: &[u8]) -> Opened {
        let n = client.endpoints.len();
        let idx = client.preferred.load(std::sync::atomic::Ordering::Relaxed) % n;
        let fail = |why: String| {
            client
                .preferred
                .store((idx + 1) % n, std::sync::atomic::Ordering::Relaxed);
            Opened::Failed(why)
        };
        let base = &client.endpoints[idx];
        let (tx, rx) = tokio::sync::mpsc::channel(2);
        if tx.send(Ok(line.to_vec())).await.is_err() {
            return Opened::Failed("the stream closed".into());
        }
        let body = futures_util::stream::unfold(rx, |mut rx| async move {
            rx.recv().await.map(|item| (item, rx))
        });
        let mut req = client
            .http
            .post(format!("{base}/v1/leases/keepalive/stream"))
            .header(reqwest::header::CONTENT_TYPE, "application/x-ndjson")
            .body(reqwest::Body::wrap_stream(body));
        if let Some(token) = &client.token {
            req = req.bearer_auth(token);
        }
        let resp = match tokio::time::timeout(client.timeout, req.send()).await {
            Err(_) => return fail(format!("{base}: timed out after {:?}", client.timeout)),
            Ok(Err(e)) => return fail(format!("{base}: {}", describe(&e, client.timeout))),
            Ok(Ok(resp)) => resp,
        };
        match resp.status().as_u16() {
            200 => {}
            404 | 405 => return Opened::Unsupported,
            _ => {
                let failure = ApiError::read(resp).await;
                return fail(format!("{base}: {}", failure.message));
            }
        }
        let mut stream = KeepAliveStream {
            lines: tx,
            resp,
            buf: Vec::new(),
            broken: false,
        };
        let renewal = stream.answer(client.timeout).await;
        Opened::Stream(stream, renewal)
    }

    /// Sends `line` and reads its answer.
    async fn renew(&mut self, line: &[u8], timeout: Duration) -> Renewal {
        if self.lines.send(Ok(line.to_vec())).await.is_err() {
            self.broken = true;
            return Renewal::Failed("the keep-alive stream closed".into());
        }
        self.answer(timeout).await
    }

    /// Reads the answer to the line just sent.
    async fn answer(&mut self, timeout: Duration) -> Renewal {
        let line = match self.read_line(timeout).await {
            Ok(line) => line,
            Err(why) => {
                self.broken = true;
                return Renewal::Failed(why);
            }
        };
        if let Ok(answer) = serde_json::from_slice::<KeepAliveAnswer>(&line) {
            return Renewal::of(answer);
        }
        let failure = ApiError::from_body(reqwest::StatusCode::OK, &line);
        // No master for a moment: the stream stays, the next line may get
        // through. Anything else ends it.
        if failure.code != "unavailable" {
            self.broken = true;
        }
        Renewal::Failed(failure.message)
    }

    async fn read_line(&mut self, timeout: Duration) -> Result<Vec<u8>, String> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if let Some(pos) = self.buf.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = self.buf.drain(..=pos).collect();
                return Ok(line);
            }
            if self.buf.len() > MAX_ANSWER_LINE {
                return Err("an answer line over 1 MiB".into());
            }
            match tokio::time::timeout_at(deadline, self.resp.chunk()).await {
                Err(_) => return Err(format!("no answer within {timeout:?}")),
                Ok(Err(e)) => return Err(describe(&e, timeout)),
                Ok(Ok(None)) => return Err("the keep-alive stream ended".into()),
                Ok(Ok(Some(chunk))) => self.buf.extend_from_slice(&chunk),
            }
        }
    }
}
