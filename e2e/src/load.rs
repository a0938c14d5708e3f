//! The load itself: N clients, each on its own keep-alive connection to one
//! endpoint (client `i` uses endpoint `i mod n`, the way a Service spreads
//! connections), issuing reads and writes over a key space.
//!
//! Closed loop: each client sends its next request as soon as the previous
//! one is answered. Open loop: the total rate is split evenly over the
//! clients and each request has a scheduled start; its latency is measured
//! from that scheduled start, so a stalled server is charged for the requests
//! it delayed (no coordinated omission). Latencies go into HDR histograms
//! in microseconds, one per client, merged at the end.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use hdrhistogram::Histogram;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

use crate::http::{Conn, Endpoint, Transport};
use crate::target::{Requests, key_name};

/// What to run.
#[derive(Clone, Debug)]
pub struct Workload {
    pub endpoints: Vec<Endpoint>,
    /// TLS and credentials, shared by every client's connection.
    pub transport: Transport,
    pub clients: usize,
    pub keys: u64,
    pub key_prefix: String,
    pub read_ratio: f64,
    /// Total requests per second (open loop); `None` for closed loop.
    pub rate: Option<f64>,
    pub duration: Duration,
    pub warmup: Duration,
    /// Write every key of the key space once, then stop (bulk load).
    pub fill: bool,
    pub timeout: Duration,
    pub seed: u64,
    pub progress: bool,
    /// Keep every measured request's start and latency ([`Stats::log`]).
    pub latency_log: bool,
    /// Instead of reads and writes: every client takes and releases this
    /// lock in a loop, holding a lease of its own; one acquire-and-release
    /// pair counts as one write.
    pub lock: Option<String>,
}

/// One measured request: when it was due (Unix time, ns), how long it took
/// (µs), and whether it was a read. Open loop: due is its scheduled start.
#[derive(Clone, Copy, Debug)]
pub struct Logged {
    pub due_unix_ns: u64,
    pub latency_us: u64,
    pub read: bool,
}

/// Counts and latencies of one kind of operation (or all of them).
#[derive(Debug)]
pub struct OpStats {
    pub ok: u64,
    pub hist: Histogram<u64>,
}

impl OpStats {
    fn new() -> OpStats {
        OpStats {
            ok: 0,
            // 1 µs to 10 min, 3 significant digits.
            hist: Histogram::new_with_bounds(1, 600_000_000, 3).expect("static bounds are valid"),
        }
    }

    fn record(&mut self, latency: Duration) {
        let us = (latency.as_micros() as u64).clamp(1, 600_000_000);
        let _ = self.hist.record(us);
        self.ok += 1;
    }

    fn merge(&mut self, other: &OpStats) {
        self.ok += other.ok;
        let _ = self.hist.add(&other.hist);
    }
}

/// Everything one client (or, merged, the whole run) observed.
#[derive(Debug)]
pub struct Stats {
    pub reads: OpStats,
    pub writes: OpStats,
    /// Failed requests by kind (`http 503`, `timeout`, ...).
    pub errors: BTreeMap<String, u64>,
    /// Reads of keys that do not exist (successful, but worth knowing).
    pub misses: u64,
    /// Every successful measured request, with `Workload::latency_log`;
    /// so that latencies can be split by what else happened at the time.
    pub log: Vec<Logged>,
}

impl Stats {
    fn new() -> Stats {
        Stats {
            reads: OpStats::new(),
            writes: OpStats::new(),
            errors: BTreeMap::new(),
            misses: 0,
            log: Vec::new(),
        }
    }

    fn merge(&mut self, other: &Stats) {
        self.reads.merge(&other.reads);
        self.writes.merge(&other.writes);
        for (k, v) in &other.errors {
            *self.errors.entry(k.clone()).or_default() += v;
        }
        self.misses += other.misses;
        self.log.extend_from_slice(&other.log);
    }

    pub fn error_count(&self) -> u64 {
        self.errors.values().sum()
    }
}

/// The outcome of a run: merged statistics and the measured time window.
#[derive(Debug)]
pub struct Outcome {
    pub stats: Stats,
    pub elapsed: Duration,
    /// Successful operations including the warm-up (for cost per operation
    /// measured over the whole run).
    pub total_ops: u64,
}

struct Shared {
    workload: Workload,
    requests: Requests,
    /// Measurement starts here (after the warm-up).
    measure_from: Instant,
    /// No request starts after this.
    stop_at: Instant,
    /// Next key to write in fill mode.
    fill_next: AtomicU64,
    done: AtomicBool,
    progress_ops: AtomicU64,
    progress_errors: AtomicU64,
}

/// Runs the workload to the end and returns what it measured.
pub async fn run(workload: Workload, requests: Requests) -> Outcome {
    let start = Instant::now();
    let measure_from = if workload.fill {
        start
    } else {
        start + workload.warmup
    };
    let stop_at = if workload.fill {
        // Fill ends when every key is written; the duration is a safety cap.
        start + workload.duration.max(Duration::from_secs(3600))
    } else {
        measure_from + workload.duration
    };
    let shared = Arc::new(Shared {
        workload: workload.clone(),
        requests,
        measure_from,
        stop_at,
        fill_next: AtomicU64::new(0),
        done: AtomicBool::new(false),
        progress_ops: AtomicU64::new(0),
        progress_errors: AtomicU64::new(0),
    });
    let progress = workload
        .progress
        .then(|| tokio::spawn(progress(shared.clone(), start)));
    let mut tasks = Vec::with_capacity(workload.clients);
    for id in 0..workload.clients {
        let endpoint = workload.endpoints[id % workload.endpoints.len()].clone();
        tasks.push(tokio::spawn(client(shared.clone(), id, endpoint)));
    }
    let mut stats = Stats::new();
    let mut last_end = measure_from;
    for t in tasks {
        if let Ok((s, end)) = t.await {
            stats.merge(&s);
            last_end = last_end.max(end);
        }
    }
    shared.done.store(true, Ordering::Relaxed);
    if let Some(p) = progress {
        let _ = p.await;
    }
    Outcome {
        stats,
        elapsed: last_end.saturating_duration_since(measure_from),
        total_ops: shared.progress_ops.load(Ordering::Relaxed),
    }
}

async fn client(shared: Arc<Shared>, id: usize, endpoint: Endpoint) -> (Stats, Instant) {
    if let Some(name) = shared.workload.lock.clone() {
        return lock_client(shared, endpoint, &name).await;
    }
    let w = &shared.workload;
    let mut conn = Conn::new(endpoint, w.transport.clone());
    let mut stats = Stats::new();
    let mut rng = SmallRng::seed_from_u64(w.seed.wrapping_add(id as u64 * 0x9e37_79b9));
    // Open loop: this client's share of the rate, staggered across clients.
    let interval = w
        .rate
        .map(|r| Duration::from_secs_f64(w.clients as f64 / r));
    let mut next_start = Instant::now()
        + interval
            .map(|i| i.mul_f64(id as f64 / w.clients as f64))
            .unwrap_or_default();
    let mut last_end = Instant::now();
    // Instants have no epoch: one reading of both clocks relates them.
    let (epoch_instant, epoch_unix) = (Instant::now(), SystemTime::now());
    let unix_ns = |at: Instant| {
        let since = epoch_unix.duration_since(UNIX_EPOCH).unwrap_or_default();
        let t = if at >= epoch_instant {
            since + at.duration_since(epoch_instant)
        } else {
            since.saturating_sub(epoch_instant.duration_since(at))
        };
        t.as_nanos() as u64
    };
    loop {
        let scheduled = match interval {
            Some(i) => {
                let at = next_start;
                next_start += i;
                if at > Instant::now() {
                    tokio::time::sleep_until(at.into()).await;
                }
                at
            }
            None => Instant::now(),
        };
        if scheduled >= shared.stop_at {
            break;
        }
        let (is_read, key) = if w.fill {
            let i = shared.fill_next.fetch_add(1, Ordering::Relaxed);
            if i >= w.keys {
                break;
            }
            (false, key_name(&w.key_prefix, i))
        } else {
            let is_read = w.read_ratio > 0.0 && rng.random::<f64>() < w.read_ratio;
            (
                is_read,
                key_name(&w.key_prefix, rng.random_range(0..w.keys)),
            )
        };
        let req = if is_read {
            shared.requests.get(&key)
        } else {
            shared.requests.put(&key)
        };
        let result = conn
            .request(req.method, &req.path, req.content_type, req.body, w.timeout)
            .await;
        let end = Instant::now();
        last_end = end;
        let counted = scheduled >= shared.measure_from;
        match result {
            Ok((status, _)) if shared.requests.ok(is_read, status) => {
                if counted {
                    let latency = end.saturating_duration_since(scheduled);
                    if w.latency_log {
                        stats.log.push(Logged {
                            due_unix_ns: unix_ns(scheduled),
                            latency_us: latency.as_micros() as u64,
                            read: is_read,
                        });
                    }
                    if is_read {
                        stats.reads.record(latency);
                        if status == 404 {
                            stats.misses += 1;
                        }
                    } else {
                        stats.writes.record(latency);
                    }
                }
                shared.progress_ops.fetch_add(1, Ordering::Relaxed);
            }
            Ok((status, _)) => {
                if counted {
                    *stats
                        .errors
                        .entry(format!("http {}", status.as_u16()))
                        .or_default() += 1;
                }
                shared.progress_errors.fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => {
                if counted {
                    *stats.errors.entry(e.kind().to_string()).or_default() += 1;
                }
                shared.progress_errors.fetch_add(1, Ordering::Relaxed);
                // A refused connection fails at once: do not spin on it.
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }
    (stats, last_end)
}

/// How long the lock benchmark's leases live without a keep-alive: longer
/// than any run, so that none expires.
const LOCK_LEASE_TTL: u64 = 600;

/// A lock client: grants its lease, then acquires and releases the lock as
/// fast as it can (closed loop); contention with the other clients is the
/// point.
async fn lock_client(shared: Arc<Shared>, endpoint: Endpoint, name: &str) -> (Stats, Instant) {
    let w = &shared.workload;
    let r = &shared.requests;
    let mut conn = Conn::new(endpoint, w.transport.clone());
    let mut stats = Stats::new();
    let fail = |stats: &mut Stats, what: String, counted: bool| {
        if counted {
            *stats.errors.entry(what).or_default() += 1;
        }
        shared.progress_errors.fetch_add(1, Ordering::Relaxed);
    };
    let grant = r.grant(LOCK_LEASE_TTL);
    let lease = match conn
        .request(
            grant.method,
            &grant.path,
            grant.content_type,
            grant.body,
            w.timeout,
        )
        .await
    {
        Ok((status, body)) if status.is_success() => r.lease_id(&body),
        _ => None,
    };
    let Some(lease) = lease else {
        fail(&mut stats, "lease grant failed".into(), true);
        return (stats, Instant::now());
    };
    let mut last_end = Instant::now();
    loop {
        let start = Instant::now();
        if start >= shared.stop_at {
            break;
        }
        let counted = start >= shared.measure_from;
        let lock = r.lock(name, lease);
        let key = match conn
            .request(
                lock.method,
                &lock.path,
                lock.content_type,
                lock.body,
                w.timeout,
            )
            .await
        {
            Ok((status, body)) if status.is_success() => r.lock_key(&body),
            Ok((status, _)) => {
                fail(
                    &mut stats,
                    format!("lock: http {}", status.as_u16()),
                    counted,
                );
                continue;
            }
            Err(e) => {
                fail(&mut stats, format!("lock: {}", e.kind()), counted);
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        let Some(key) = key else {
            fail(&mut stats, "lock: no key in the answer".into(), counted);
            continue;
        };
        let unlock = r.unlock(name, lease, &key);
        match conn
            .request(
                unlock.method,
                &unlock.path,
                unlock.content_type,
                unlock.body,
                w.timeout,
            )
            .await
        {
            Ok((status, _)) if status.is_success() => {
                let end = Instant::now();
                last_end = end;
                if counted {
                    stats.writes.record(end.saturating_duration_since(start));
                }
                shared.progress_ops.fetch_add(1, Ordering::Relaxed);
            }
            Ok((status, _)) => fail(
                &mut stats,
                format!("unlock: http {}", status.as_u16()),
                counted,
            ),
            Err(e) => fail(&mut stats, format!("unlock: {}", e.kind()), counted),
        }
    }
    (stats, last_end)
}

/// One line per second on stderr: rate over the last second, totals.
async fn progress(shared: Arc<Shared>, start: Instant) {
    let mut last_ops = 0;
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.tick().await;
    while !shared.done.load(Ordering::Relaxed) {
        tick.tick().await;
        if shared.done.load(Ordering::Relaxed) {
            break;
        }
        let ops = shared.progress_ops.load(Ordering::Relaxed);
        let errors = shared.progress_errors.load(Ordering::Relaxed);
        let phase = if Instant::now() < shared.measure_from {
            " (warm-up)"
        } else {
            ""
        };
        eprintln!(
            "[{:>6.1}s] {:>8} ops/s  {:>10} ops  {:>6} errors{phase}",
            start.elapsed().as_secs_f64(),
            ops - last_ops,
            ops,
            errors
        );
        last_ops = ops;
    }
}
