//! `phxkv-bench probe`: how long until a write succeeds again. Used to time
//! failover: the caller kills the master, notes the time, and starts the
//! probe against the surviving endpoints; the probe retries a small write,
//! round-robin over them, until one is acknowledged.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::Serialize;

use crate::http::{Conn, Endpoint, Transport};
use crate::target::Requests;

/// The probe's answer.
#[derive(Debug, Serialize)]
pub struct ProbeResult {
    /// From `since` (or the probe's start) to the first acknowledged write.
    pub ms: f64,
    pub attempts: u64,
    /// The endpoint that acknowledged it.
    pub endpoint: String,
}

/// Retries a write until one succeeds or `deadline` passes.
pub async fn run(
    endpoints: Vec<Endpoint>,
    transport: Transport,
    requests: Requests,
    key: &str,
    request_timeout: Duration,
    deadline: Duration,
    since_unix_ns: Option<u128>,
) -> Result<ProbeResult, String> {
    // Wall clock only to line up with the caller's timestamp; elapsed time
    // within the probe comes from the monotonic clock.
    let started = Instant::now();
    let offset = match since_unix_ns {
        Some(ns) => {
            let now = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_err(|e| e.to_string())?
                .as_nanos();
            Duration::from_nanos(now.saturating_sub(ns) as u64)
        }
        None => Duration::ZERO,
    };
    let mut conns: Vec<Conn> = endpoints
        .into_iter()
        .map(|e| Conn::new(e, transport.clone()))
        .collect();
    let mut attempts = 0u64;
    let mut last_error = String::from("no attempt made");
    while started.elapsed() < deadline {
        let n = conns.len();
        let conn = &mut conns[attempts as usize % n];
        attempts += 1;
        let req = requests.put(key);
        let t = Instant::now();
        match conn
            .request(
                req.method,
                &req.path,
                req.content_type,
                req.body,
                request_timeout,
            )
            .await
        {
            Ok((status, _)) if status.is_success() => {
                return Ok(ProbeResult {
                    ms: (offset + started.elapsed()).as_secs_f64() * 1000.0,
                    attempts,
                    endpoint: conn.endpoint().url.clone(),
                });
            }
            Ok((status, body)) => {
                last_error = format!(
                    "{}: HTTP {status}: {}",
                    conn.endpoint().url,
                    String::from_utf8_lossy(&body).trim()
                );
            }
            Err(e) => last_error = format!("{}: {e}", conn.endpoint().url),
        }
        // Answers that come back at once (refused, 503) are retried a little
        // later so the probe does not spin; slow ones are retried at once.
        if t.elapsed() < Duration::from_millis(5) {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    Err(format!(
        "no write succeeded within {deadline:?} ({attempts} attempts); last: {last_error}"
    ))
}
