//! Clients that read, write, compare-and-swap and delete a few keys on
//! random nodes, recording every operation with when it was invoked and
//! when (and how) it completed, for the linearizability checker.
//!
//! How an answer becomes history, following the API's promises:
//! - 2xx, 404 (a read of a missing key) and 409 (a failed compare) are
//!   outcomes;
//! - 503 means nothing was done (no master, or not proposed), so the
//!   operation is left out;
//! - 504, a timeout or a broken connection leave a write's outcome unknown
//!   (it may still commit): it stays open in the history. A read without an
//!   answer had no effect and is left out.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use phxkv::sim::lincheck::{KvCall, KvReturn, Operation};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use serde_json::Value;

/// The shared history and clock of one run.
pub struct History {
    start: Instant,
    ops: Mutex<Vec<Operation>>,
    pub unknown: std::sync::atomic::AtomicUsize,
}

impl History {
    pub fn new() -> Arc<History> {
        Arc::new(History {
            start: Instant::now(),
            ops: Mutex::new(Vec::new()),
            unknown: std::sync::atomic::AtomicUsize::new(0),
        })
    }

    pub fn now(&self) -> u64 {
        self.start.elapsed().as_micros() as u64
    }

    fn push(&self, op: Operation) {
        if let Ok(mut ops) = self.ops.lock() {
            ops.push(op);
        }
    }

    pub fn take(&self) -> Vec<Operation> {
        self.ops.lock().map(|o| o.clone()).unwrap_or_default()
    }
}

/// What one request came to.
enum Answer {
    Done(KvReturn),
    NoEffect,
    Unknown,
}

/// Runs one call against `base` and records it; false when it did not
/// complete (the client backs off then, as a real one would, which also
/// keeps the number of writes of unknown outcome, the checker's hard part,
/// in bounds).
pub async fn call(
    http: &reqwest::Client,
    history: &History,
    client: u64,
    base: &str,
    call: KvCall,
) -> bool {
    let invoked = history.now();
    let answer = send(http, base, &call).await;
    let completed = match answer {
        Answer::Done(ret) => Some((history.now(), ret)),
        Answer::NoEffect => return false,
        Answer::Unknown => {
            if matches!(call, KvCall::Get { .. }) {
                return false;
            }
            history
                .unknown
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            None
        }
    };
    let done = completed.is_some();
    history.push(Operation {
        client,
        call,
        invoked,
        completed,
    });
    done
}

async fn send(http: &reqwest::Client, base: &str, call: &KvCall) -> Answer {
    let key = String::from_utf8_lossy(call.key()).into_owned();
    let url = format!("{base}/v1/kv/{key}");
    let request = match call {
        // The keys are few, far below one request's limit: one request
        // deletes every key under the prefix, as the checker assumes.
        KvCall::DeletePrefix { .. } => http.delete(format!("{base}/v1/kv?prefix={key}")),
        KvCall::Get { .. } => http.get(&url),
        KvCall::Put { value, .. } => http.put(&url).body(value.clone()),
        KvCall::Delete { .. } => http.delete(&url),
        KvCall::Cas {
            expected_version,
            value,
            ..
        } => http
            .put(format!("{url}?if_version={expected_version}"))
            .body(value.clone()),
    };
    // Longer than the server's own write timeout, so a slow write gets the
    // server's 504 rather than ours.
    let resp = match request.timeout(Duration::from_secs(8)).send().await {
        Ok(r) => r,
        Err(_) => return Answer::Unknown,
    };
    let status = resp.status().as_u16();
    match (call, status) {
        (_, 503) => Answer::NoEffect,
        (KvCall::Get { .. }, 200) => match resp.bytes().await {
            Ok(b) => Answer::Done(KvReturn::Get(Some(b.to_vec()))),
            Err(_) => Answer::Unknown,
        },
        (KvCall::Get { .. }, 404) => Answer::Done(KvReturn::Get(None)),
        (KvCall::Put { .. }, 200) => Answer::Done(KvReturn::Put),
        (KvCall::Delete { .. }, 200) => match resp.json::<Value>().await {
            Ok(v) => Answer::Done(KvReturn::Delete {
                deleted: v["deleted"].as_bool().unwrap_or(false),
            }),
            Err(_) => Answer::Unknown,
        },
        (KvCall::Cas { .. }, 200) => Answer::Done(KvReturn::Cas { ok: true }),
        (KvCall::Cas { .. }, 409) => Answer::Done(KvReturn::Cas { ok: false }),
        (KvCall::DeletePrefix { .. }, 200) => match resp.json::<Value>().await {
            Ok(v) if v["more"] == false => Answer::Done(KvReturn::DeletePrefix),
            _ => Answer::Unknown,
        },
        _ => Answer::Unknown,
    }
}

/// A random operation on one of `keys` keys; values are unique per run.
pub fn random_call(rng: &mut SmallRng, keys: usize, seq: u64) -> KvCall {
    let key = format!("k{}", rng.random_range(0..keys)).into_bytes();
    let value = format!("v{seq}").into_bytes();
    match rng.random_range(0..10) {
        0..=3 => KvCall::Get { key },
        4..=6 => KvCall::Put { key, value },
        // Now and then every key under a prefix: "k" is all of them, "k1"
        // k1 (and k10 to k19 when there are that many).
        7 if rng.random_bool(0.2) => KvCall::DeletePrefix {
            prefix: key[..rng.random_range(1..=key.len())].to_vec(),
        },
        7 => KvCall::Delete { key },
        _ => KvCall::Cas {
            key,
            expected_version: rng.random_range(0..4),
            value,
        },
    }
}

/// Where a client sends its calls: the nodes' client URLs, and the HTTP
/// client to call them with (its own connections; the run's CA with TLS).
pub struct Nodes {
    pub http: reqwest::Client,
    pub urls: Vec<String>,
}

/// One client: operations back to back on random nodes until `until`.
pub async fn client(
    id: u64,
    seed: u64,
    Nodes { http, urls }: Nodes,
    keys: usize,
    history: Arc<History>,
    until: Instant,
    seq: Arc<std::sync::atomic::AtomicU64>,
) {
    let mut rng = SmallRng::seed_from_u64(seed ^ id);
    while Instant::now() < until {
        let n = seq.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let c = random_call(&mut rng, keys, n);
        let base = &urls[rng.random_range(0..urls.len())];
        let pause = if call(&http, &history, id, base, c).await {
            rng.random_range(0..20)
        } else {
            rng.random_range(300..1000)
        };
        tokio::time::sleep(Duration::from_millis(pause)).await;
    }
}
