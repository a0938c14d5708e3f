//! A run's result as JSON (for scripts) and as a table (for people).

use std::collections::BTreeMap;

use hdrhistogram::Histogram;
use serde::Serialize;

use crate::load::{OpStats, Outcome};
use crate::target::{Consistency, Target};

/// Latency percentiles in milliseconds.
#[derive(Debug, Serialize, Clone, Copy, PartialEq)]
pub struct Latency {
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub p999: f64,
    pub max: f64,
    pub mean: f64,
}

impl Latency {
    fn of(h: &Histogram<u64>) -> Option<Latency> {
        if h.is_empty() {
            return None;
        }
        let ms = |us: u64| us as f64 / 1000.0;
        Some(Latency {
            p50: ms(h.value_at_quantile(0.50)),
            p90: ms(h.value_at_quantile(0.90)),
            p99: ms(h.value_at_quantile(0.99)),
            p999: ms(h.value_at_quantile(0.999)),
            max: ms(h.max()),
            mean: h.mean() / 1000.0,
        })
    }
}

/// What the run was asked to do.
#[derive(Debug, Serialize, Clone)]
pub struct Settings {
    pub target: Target,
    pub endpoints: Vec<String>,
    pub clients: usize,
    pub mode: &'static str,
    pub rate: Option<f64>,
    pub read_ratio: f64,
    pub consistency: Consistency,
    pub keys: u64,
    pub value_size: usize,
    pub duration_s: f64,
    pub warmup_s: f64,
}

/// The JSON document `phxkv-bench run` prints or writes.
#[derive(Debug, Serialize)]
pub struct Report {
    pub settings: Settings,
    /// The measured window (after warm-up), in seconds.
    pub elapsed_s: f64,
    /// Successful operations in the window.
    pub ops: u64,
    /// Successful operations including the warm-up.
    pub total_ops: u64,
    pub reads: u64,
    pub writes: u64,
    pub errors: u64,
    pub error_kinds: BTreeMap<String, u64>,
    /// Reads of keys that did not exist.
    pub misses: u64,
    /// Successful operations per second.
    pub throughput: f64,
    pub latency_ms: Option<Latency>,
    pub read_latency_ms: Option<Latency>,
    pub write_latency_ms: Option<Latency>,
}

impl Report {
    pub fn new(settings: Settings, outcome: &Outcome) -> Report {
        let s = &outcome.stats;
        let mut all = OpStatsView::new();
        all.add(&s.reads);
        all.add(&s.writes);
        let ops = s.reads.ok + s.writes.ok;
        let secs = outcome.elapsed.as_secs_f64();
        Report {
            settings,
            elapsed_s: secs,
            ops,
            total_ops: outcome.total_ops,
            reads: s.reads.ok,
            writes: s.writes.ok,
            errors: s.error_count(),
            error_kinds: s.errors.clone(),
            misses: s.misses,
            throughput: if secs > 0.0 { ops as f64 / secs } else { 0.0 },
            latency_ms: all.hist.as_ref().and_then(Latency::of),
            read_latency_ms: Latency::of(&s.reads.hist),
            write_latency_ms: Latency::of(&s.writes.hist),
        }
    }

    /// A short human-readable summary.
    pub fn table(&self) -> String {
        let s = &self.settings;
        let mut out = format!(
            "target {:?}, {} clients, {} loop{}, reads {:.0}% ({:?}), {} keys of {} B values, {:.1}s measured\n",
            s.target,
            s.clients,
            s.mode,
            s.rate.map(|r| format!(" at {r:.0}/s")).unwrap_or_default(),
            s.read_ratio * 100.0,
            s.consistency,
            s.keys,
            s.value_size,
            self.elapsed_s
        );
        out.push_str(&format!(
            "{:<8} {:>10} {:>12} {:>9} {:>9} {:>9} {:>9} {:>9}\n",
            "op", "count", "ops/s", "p50 ms", "p90 ms", "p99 ms", "p99.9 ms", "max ms"
        ));
        let rows = [
            ("read", self.reads, self.read_latency_ms),
            ("write", self.writes, self.write_latency_ms),
            ("all", self.ops, self.latency_ms),
        ];
        for (name, count, lat) in rows {
            let Some(l) = lat else { continue };
            let rate = if self.elapsed_s > 0.0 {
                count as f64 / self.elapsed_s
            } else {
                0.0
            };
            out.push_str(&format!(
                "{name:<8} {count:>10} {rate:>12.0} {:>9.3} {:>9.3} {:>9.3} {:>9.3} {:>9.3}\n",
                l.p50, l.p90, l.p99, l.p999, l.max
            ));
        }
        out.push_str(&format!("errors   {:>10}", self.errors));
        for (k, v) in &self.error_kinds {
            out.push_str(&format!("  {k}: {v}"));
        }
        out.push('\n');
        if self.misses > 0 {
            out.push_str(&format!(
                "misses   {:>10} (reads of absent keys)\n",
                self.misses
            ));
        }
        out
    }
}

/// Merges histograms without disturbing the per-kind ones.
struct OpStatsView {
    hist: Option<Histogram<u64>>,
}

impl OpStatsView {
    fn new() -> OpStatsView {
        OpStatsView { hist: None }
    }

    fn add(&mut self, s: &OpStats) {
        match &mut self.hist {
            None => self.hist = Some(s.hist.clone()),
            Some(h) => {
                let _ = h.add(&s.hist);
            }
        }
    }
}
