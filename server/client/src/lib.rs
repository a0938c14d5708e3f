//! A typed Rust client for phxkv's HTTP/JSON API, the one the `phxkv`
//! command line uses.
//!
//! The types mirror the schemas of the API's OpenAPI document
//! (`openapi/phxkv.json`); a test reads the document and fails when a
//! field this crate needs is renamed or removed there.
//!
//! What it does for you:
//! - **Failover**: a request goes to the endpoint that answered last, and
//!   to the next one when that is unreachable or answers 503.
//! - **Retries**: when every endpoint answered 503 (no master elected,
//!   usually for the second or two of an election) the round is retried
//!   with backoff for [`Config::retry_for`].
//! - **Idempotent writes**: every attempt of one write carries the same
//!   `Idempotency-Key`, so a write that reached a node before its
//!   connection broke is not applied twice by the next attempt.
//! - **Watches as streams** ([`Client::watch`]) that resume on another
//!   endpoint from the revision after the last event seen.
//! - **Leases kept alive in the background** ([`Client::keep_alive`]),
//!   **locks** ([`Client::lock`]) and **elections** ([`Client::campaign`]).
//!
//! ```no_run
//! # async fn demo() -> Result<(), phxkv_client::Error> {
//! use phxkv_client::{Client, Config, PutOptions, WatchOptions};
//!
//! let client = Client::new(Config::new(["http://10.0.0.1:8080", "http://10.0.0.2:8080"]))?;
//! let lease = client.grant(10, None).await?;
//! let keeper = client.keep_alive(&[(lease.id, lease.ttl_secs)]); // renews until dropped
//! client
//!     .put(
//!         b"services/api/pod-7",
//!         b"10.0.0.7:8080".to_vec(),
//!         PutOptions { lease: Some(lease.id), ..Default::default() },
//!     )
//!     .await?;
//! let lock = client.lock(b"nightly", lease.id, None).await?;
//! println!("fencing token {}", lock.fencing_token);
//! let mut watch = client
//!     .watch(WatchOptions { prefix: b"services/".to_vec(), ..Default::default() })
//!     .await?;
//! let event = watch.next().await?; // or watch.into_stream()
//! println!("{:?} at revision {}", event.kind, event.revision);
//! drop(keeper);
//! # Ok(()) }
//! ```

mod error;
mod kv;
mod lease;
mod lock;
mod watch;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use reqwest::{RequestBuilder, Response, StatusCode, Url};

pub use error::{ApiError, Error, describe, one_line};
pub use kv::{
    Deleted, DeletedPrefix, Kv, ListPage, PutOptions, Read, Written, key_path, path_segment,
    query_value,
};
pub use lease::{Granted, KeepAlive, KeepAliveAnswer, LeaseEntry, LeaseList, LeaseStatus, Revoked};
pub use lock::{Leader, Locked, Observe, Released, path_name};
pub use reqwest;
pub use watch::{Watch, WatchEvent, WatchKind, WatchOptions};

/// Where the cluster is and how to talk to it.
#[derive(Clone)]
pub struct Config {
    endpoints: Vec<String>,
    timeout: Duration,
    retry_for: Duration,
    lock_poll: Duration,
    token: Option<String>,
    ca_pem: Option<Vec<u8>>,
    identity_pem: Option<Vec<u8>>,
}

// By hand, so that debugging output never shows the token.
impl std::fmt::Debug for Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Config")
            .field("endpoints", &self.endpoints)
            .field("timeout", &self.timeout)
            .field("retry_for", &self.retry_for)
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .finish_non_exhaustive()
    }
}

impl Config {
    /// The client URLs of the cluster's nodes (`http://host:port`; a bare
    /// `host:port` means plain HTTP). Defaults: a 10 s timeout per
    /// request and endpoint, 5 s of retries while no master is elected.
    pub fn new<I, S>(endpoints: I) -> Config
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        Config {
            endpoints: endpoints.into_iter().map(Into::into).collect(),
            timeout: Duration::from_secs(10),
            retry_for: Duration::from_secs(5),
            lock_poll: lock::DEFAULT_POLL,
            token: None,
            ca_pem: None,
            identity_pem: None,
        }
    }

    /// How long one endpoint may take to connect and answer.
    pub fn timeout(mut self, timeout: Duration) -> Config {
        self.timeout = timeout;
        self
    }

    /// How long to keep retrying while every endpoint answers 503 (zero:
    /// one round only).
    pub fn retry_for(mut self, retry_for: Duration) -> Config {
        self.retry_for = retry_for;
        self
    }

    /// How long one lock or campaign request waits on the server before
    /// the client asks again (default 30 s; at least 1 s). Lower it behind
    /// a proxy that closes idle requests sooner. A waiter keeps its place
    /// in line across requests.
    pub fn lock_poll(mut self, poll: Duration) -> Config {
        self.lock_poll = poll.max(Duration::from_secs(1));
        self
    }

    /// The bearer token to send: an API token, or the cluster token.
    pub fn token(mut self, token: Option<String>) -> Config {
        self.token = token;
        self
    }

    /// The CA certificate(s) (PEM) to trust for `https://` endpoints
    /// instead of the system's.
    pub fn ca_pem(mut self, pem: Vec<u8>) -> Config {
        self.ca_pem = Some(pem);
        self
    }

    /// A client certificate and its private key (PEM, one after the other)
    /// for clusters that require one.
    pub fn identity_pem(mut self, pem: Vec<u8>) -> Config {
        self.identity_pem = Some(pem);
        self
    }
}

/// A connection to a cluster through any of its endpoints. Cheap to
/// clone: clones share the connection pool.
pub struct Client {
    http: reqwest::Client,
    endpoints: Vec<String>,
    timeout: Duration,
    retry_for: Duration,
    lock_poll: Duration,
    token: Option<String>,
    /// The endpoint that answered last. Later requests start there, so a
    /// dead first endpoint costs one failed connect rather than one per
    /// request.
    preferred: AtomicUsize,
}

// By hand: an atomic is not `Clone`. A clone starts at the endpoint that
// answered last.
impl Clone for Client {
    fn clone(&self) -> Client {
        Client {
            http: self.http.clone(),
            endpoints: self.endpoints.clone(),
            timeout: self.timeout,
            retry_for: self.retry_for,
            lock_poll: self.lock_poll,
            token: self.token.clone(),
            preferred: AtomicUsize::new(self.preferred.load(Ordering::Relaxed)),
        }
    }
}

// By hand, so that debugging output never shows the token.
impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("endpoints", &self.endpoints)
            .field("timeout", &self.timeout)
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .finish_non_exhaustive()
    }
}

/// The first pause between two rounds of retries; it doubles up to
/// [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(1);

impl Client {
    pub fn new(config: Config) -> Result<Client, Error> {
        let mut endpoints = Vec::new();
        for raw in &config.endpoints {
            let raw = raw.trim();
            if raw.is_empty() {
                continue;
            }
            let with_scheme = if raw.contains("://") {
                raw.to_string()
            } else {
                format!("http://{raw}")
            };
            let url = Url::parse(&with_scheme).map_err(|e| {
                Error::Config(format!(
                    "--endpoints: {raw:?} is not a URL like http://127.0.0.1:8080 ({e})"
                ))
            })?;
            if !matches!(url.scheme(), "http" | "https") {
                return Err(Error::Config(format!(
                    "--endpoints: {raw:?}: only http and https URLs are supported"
                )));
            }
            // Paths are appended to the endpoint, so one that already names
            // an API path would send every request somewhere else (a `put`
            // to `http://h:8080/v1/kv` writes the key `v1/kv/KEY`). A path
            // of a proxy in front of the cluster (`https://gw/phxkv`) is
            // kept.
            if url.query().is_some() || url.fragment().is_some() || names_api_path(&url) {
                return Err(Error::Config(format!(
                    "--endpoints: {raw:?}: give each node's address only, like \
                     http://127.0.0.1:8080, without an API path or query"
                )));
            }
            endpoints.push(with_scheme.trim_end_matches('/').to_string());
        }
        if endpoints.is_empty() {
            return Err(Error::Config("--endpoints: no endpoint given".into()));
        }
        // No overall request timeout on the client itself: a watch stream
        // lasts as long as the caller wants. Ordinary requests set one each.
        let mut builder = reqwest::Client::builder().connect_timeout(config.timeout);
        if let Some(pem) = &config.ca_pem {
            let certs = reqwest::Certificate::from_pem_bundle(pem)
                .ok()
                .filter(|c| !c.is_empty())
                .ok_or_else(|| Error::Config("--cacert: holds no PEM certificate".into()))?;
            builder = builder.tls_certs_only(certs);
        }
        if let Some(pem) = &config.identity_pem {
            let identity = reqwest::Identity::from_pem(pem).map_err(|e| {
                Error::Config(format!(
                    "--cert with --key: not a PEM certificate and key ({})",
                    describe(&e, config.timeout)
                ))
            })?;
            builder = builder.identity(identity);
        }
        let http = builder.build().map_err(|e| {
            let why = describe(&e, config.timeout);
            Error::Config(match &config.identity_pem {
                // The certificate and key parsed, so rustls refused the pair.
                Some(_) => format!("--cert with --key: {why}"),
                None => format!("cannot set up HTTP: {why}"),
            })
        })?;
        Ok(Client {
            http,
            endpoints,
            timeout: config.timeout,
            retry_for: config.retry_for,
            lock_poll: config.lock_poll,
            token: config.token,
            preferred: AtomicUsize::new(0),
        })
    }

    /// The endpoints, normalised (scheme added, trailing `/` removed).
    pub fn endpoints(&self) -> &[String] {
        &self.endpoints
    }

    /// The per-request timeout.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// Sends a request built by `build` (given the HTTP client and an
    /// endpoint's base URL), failing over and retrying as the crate's
    /// documentation says. Any answer other than 503, error or not, is
    /// returned. For reads and other requests that are safe to repeat.
    pub async fn send<F>(&self, build: F) -> Result<Response, Error>
    where
        F: Fn(&reqwest::Client, &str) -> RequestBuilder,
    {
        self.send_inner(build, Some(self.timeout)).await
    }

    /// Like [`Client::send`], for a write: every attempt carries one
    /// `Idempotency-Key`, so a write that reached a node before the
    /// connection failed is not applied a second time by the next attempt.
    ///
    /// A 504 (the outcome is unknown: the master failed or was cut off
    /// while the write was in flight) is sent again under the same key,
    /// with backoff, until an answer other than 504 comes or
    /// [`Config::timeout`] has passed since the first attempt (the last
    /// attempt then runs its own course). The key makes that safe: a node
    /// that finds the write applied answers its first outcome, and a copy
    /// chosen twice is applied once.
    pub async fn send_write<F>(&self, build: F) -> Result<Response, Error>
    where
        F: Fn(&reqwest::Client, &str) -> RequestBuilder,
    {
        let key = idempotency_key();
        let started = Instant::now();
        let mut backoff = FIRST_BACKOFF;
        loop {
            let resp = self
                .send(|h, base| build(h, base).header("idempotency-key", key.as_str()))
                .await?;
            if resp.status() != StatusCode::GATEWAY_TIMEOUT
                || started.elapsed() + backoff >= self.timeout
            {
                return Ok(resp);
            }
            tracing::debug!(
                ?backoff,
                "a write's outcome is unknown (504); sending it again under its idempotency key"
            );
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
    }

    /// Like [`Client::send`] but without a deadline for the whole answer,
    /// for streams and long waits; connecting is still bounded.
    pub async fn send_streaming<F>(&self, build: F) -> Result<Response, Error>
    where
        F: Fn(&reqwest::Client, &str) -> RequestBuilder,
    {
        self.send_inner(build, None).await
    }

    async fn send_inner<F>(&self, build: F, timeout: Option<Duration>) -> Result<Response, Error>
    where
        F: Fn(&reqwest::Client, &str) -> RequestBuilder,
    {
        let started = Instant::now();
        let mut backoff = FIRST_BACKOFF;
        loop {
            let round = match self.round(&build, timeout).await {
                Ok(resp) => return Ok(resp),
                Err(round) => round,
            };
            // Only a cluster that answers, but without a master, is worth
            // waiting for: unreachable endpoints fail at once, so that a
            // wrong address is reported now.
            if round.answered_503() == 0 || started.elapsed() + backoff > self.retry_for {
                return Err(Error::Unavailable(round.describe()));
            }
            tracing::debug!(?backoff, "no endpoint has a master; retrying");
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
    }

    /// One try of every endpoint, from the preferred one on.
    async fn round<F>(&self, build: &F, timeout: Option<Duration>) -> Result<Response, Round>
    where
        F: Fn(&reqwest::Client, &str) -> RequestBuilder,
    {
        let n = self.endpoints.len();
        let start = self.preferred.load(Ordering::Relaxed) % n;
        let mut failed = Round::default();
        for i in 0..n {
            let idx = (start + i) % n;
            let base = &self.endpoints[idx];
            let mut req = build(&self.http, base);
            if let Some(t) = timeout {
                req = req.timeout(t);
            }
            if let Some(token) = &self.token {
                req = req.bearer_auth(token);
            }
            match req.send().await {
                Ok(resp) if resp.status() == StatusCode::SERVICE_UNAVAILABLE => {
                    let failure = ApiError::read(resp).await;
                    failed.failures.push((base.clone(), Ok(failure.message)));
                }
                Ok(resp) => {
                    self.preferred.store(idx, Ordering::Relaxed);
                    return Ok(resp);
                }
                Err(e) => failed
                    .failures
                    .push((base.clone(), Err(describe(&e, self.timeout)))),
            }
        }
        Err(failed)
    }
}

/// The first segments of the API's own paths (`/v1/kv/...`).
const API_ROOTS: [&str; 9] = [
    "kv", "txn", "watch", "cluster", "leases", "lock", "election", "auth", "admin",
];

/// Whether an endpoint's path ends in `v1`, or in `v1` and one of the
/// API's routes after it: what a request path appended to it would double.
fn names_api_path(url: &Url) -> bool {
    let segments: Vec<&str> = url
        .path_segments()
        .map(|s| s.filter(|s| !s.is_empty()).collect())
        .unwrap_or_default();
    segments.iter().enumerate().any(|(i, s)| {
        *s == "v1"
            && segments
                .get(i + 1)
                .is_none_or(|next| API_ROOTS.contains(next))
    })
}

/// A round of tries in which no endpoint gave an answer to return.
#[derive(Default)]
struct Round {
    /// Each endpoint with why it failed: the reason the 503 it answered
    /// gave (`Ok`), or why it was not reached (`Err`).
    failures: Vec<(String, Result<String, String>)>,
}

impl Round {
    /// How many endpoints answered 503.
    fn answered_503(&self) -> usize {
        self.failures.iter().filter(|(_, r)| r.is_ok()).count()
    }

    /// What went wrong, in one line. When every endpoint answered 503,
    /// that is said, with each reason given once: the cluster was reached
    /// and said why it cannot serve.
    fn describe(&self) -> String {
        if self.answered_503() == self.failures.len() {
            let mut reasons: Vec<&str> = Vec::new();
            for (_, reason) in &self.failures {
                if let Ok(reason) = reason
                    && !reasons.contains(&reason.as_str())
                {
                    reasons.push(reason);
                }
            }
            return format!("every endpoint answered 503: {}", reasons.join("; "));
        }
        let each: Vec<String> = self
            .failures
            .iter()
            .map(|(base, reason)| match reason {
                Ok(reason) => format!("{base}: unavailable: {reason}"),
                Err(reason) => format!("{base}: {reason}"),
            })
            .collect();
        format!("no endpoint answered ({})", each.join("; "))
    }
}

/// Passes a successful response through; turns any other into its error.
pub async fn check(resp: Response) -> Result<Response, Error> {
    if resp.status().is_success() {
        Ok(resp)
    } else {
        Err(Error::Api(ApiError::read(resp).await))
    }
}

/// Reads a successful response's JSON body.
pub async fn json<T: serde::de::DeserializeOwned>(resp: Response) -> Result<T, Error> {
    let resp = check(resp).await?;
    let body = resp
        .bytes()
        .await
        .map_err(|e| Error::Decode(describe(&e, Duration::ZERO)))?;
    serde_json::from_slice(&body).map_err(|e| Error::Decode(e.to_string()))
}

/// A fresh random key for one write and its retries.
pub fn idempotency_key() -> String {
    use rand::TryRngCore;
    let mut bytes = [0u8; 16];
    // Without OS randomness, a key from the clock and the process still
    // differs from every other write's.
    if rand::rngs::OsRng.try_fill_bytes(&mut bytes).is_err() {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        bytes.copy_from_slice(&(now ^ u128::from(std::process::id())).to_le_bytes());
    }
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_are_normalised_and_validated() {
        let c = Client::new(Config::new(["127.0.0.1:1", " http://h:2/ ", ""])).expect("valid");
        assert_eq!(c.endpoints(), ["http://127.0.0.1:1", "http://h:2"]);
        assert!(Client::new(Config::new(["ftp://h"])).is_err());
        for api_path in [
            "http://h:1/v1/kv",
            "h:1/v1",
            "http://h:1/v1/",
            "https://gw/phxkv/v1/txn",
            "http://h:1/?x=1",
            "http://h:1/#v",
        ] {
            let e = Client::new(Config::new([api_path])).expect_err(api_path);
            assert!(e.to_string().contains("address only"), "{api_path}: {e}");
        }
        // A proxy's own prefix, even one with a `v1` in it, is kept.
        let proxied = Client::new(Config::new(["https://gw/phxkv/", "https://gw/v1/kv-proxy"]))
            .expect("a proxy's path");
        assert_eq!(
            proxied.endpoints(),
            ["https://gw/phxkv", "https://gw/v1/kv-proxy"]
        );
        assert!(Client::new(Config::new([""])).is_err());
    }

    #[test]
    fn a_round_says_whether_the_cluster_answered() {
        let answered = |base: &str| (base.to_owned(), Ok("cannot ask n4".to_owned()));
        let all_503 = Round {
            failures: vec![answered("http://a"), answered("http://b")],
        };
        assert_eq!(
            all_503.describe(),
            "every endpoint answered 503: cannot ask n4"
        );
        let reasons = |rs: &[&str]| Round {
            failures: rs
                .iter()
                .enumerate()
                .map(|(i, r)| (format!("http://{i}"), Ok((*r).to_owned())))
                .collect(),
        };
        assert_eq!(
            reasons(&["no master", "shutting down", "no master"]).describe(),
            "every endpoint answered 503: no master; shutting down"
        );
        let mixed = Round {
            failures: vec![
                answered("http://a"),
                ("http://b".to_owned(), Err("connection refused".to_owned())),
            ],
        };
        assert_eq!(
            mixed.describe(),
            "no endpoint answered (http://a: unavailable: cannot ask n4; \
             http://b: connection refused)"
        );
    }

    #[test]
    fn idempotency_keys_differ() {
        assert_ne!(idempotency_key(), idempotency_key());
        assert_eq!(idempotency_key().len(), 32);
    }
}
