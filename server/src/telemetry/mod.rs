//! Observability of a node: logs, distributed traces and metrics.
//!
//! - [`inject_context`], [`extract_context`] and [`server_span`] carry a trace
//!   across the HTTP hops between nodes (a follower forwarding a write to the
//!   master shows up as one trace);
//! - [`Metrics`] holds the Prometheus series the node and HTTP layer update.

pub mod metrics;
pub mod propagation;

pub use metrics::{Metrics, OPENMETRICS_CONTENT_TYPE, metrics_handler, track_requests};
pub use propagation::{extract_context, inject_context, server_span, trace_requests};

/// Route label for requests no route matched, so that probes of random paths
/// cannot create unbounded span names or metric label values.
const UNMATCHED_ROUTE: &str = "unmatched";
