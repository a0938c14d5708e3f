//! Observability of a node: logs, distributed traces and metrics.
//!
//! A replicated store is hard to debug from one node's point of view, so the
//! three signals are wired the same way everywhere:
//! - [`init`] installs logging and, when a collector is configured, span
//!   export over OTLP;
//! - [`inject_context`], [`extract_context`] and [`server_span`] carry a trace
//!   across the HTTP hops between nodes (a follower forwarding a write to the
//!   master shows up as one trace);
//! - [`Metrics`] holds the Prometheus series the node and HTTP layer update.

pub mod metrics;
pub mod propagation;
pub mod replica;
pub mod subscriber;

pub use metrics::{Metrics, OPENMETRICS_CONTENT_TYPE, metrics_handler, track_requests};
pub use propagation::{extract_context, inject_context, server_span, trace_requests};
pub use replica::{in_replica_span, replica_span};
pub use subscriber::{
    LogFormat, OTLP_ENDPOINT_VAR, TelemetryError, TelemetryGuard, init, init_dev,
};

use std::sync::atomic::{AtomicBool, Ordering};

/// Set by [`init`] when spans are exported.
static EXPORTING_SPANS: AtomicBool = AtomicBool::new(false);

/// Whether request spans go anywhere: only when [`init`] installed an OTLP
/// exporter. Without one a request span would only decorate log lines, and
/// creating it (formatting its fields for the log layer, reading trace
/// headers) cost about as much CPU as the rest of a small request's HTTP
/// handling, so the request middlewares skip it.
pub fn exporting_spans() -> bool {
    EXPORTING_SPANS.load(Ordering::Relaxed)
}

fn set_exporting_spans(on: bool) {
    EXPORTING_SPANS.store(on, Ordering::Relaxed);
}

/// Route label for requests no route matched, so that probes of random paths
/// cannot create unbounded span names or metric label values.
const UNMATCHED_ROUTE: &str = "unmatched";
