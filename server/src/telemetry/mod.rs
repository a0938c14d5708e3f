//! Observability of a node: logs, distributed traces and metrics.
//!
//! - [`Metrics`] holds the Prometheus series the node and HTTP layer update.

pub mod metrics;

pub use metrics::{Metrics, OPENMETRICS_CONTENT_TYPE, metrics_handler, track_requests};

/// Route label for requests no route matched, so that probes of random paths
/// cannot create unbounded span names or metric label values.
const UNMATCHED_ROUTE: &str = "unmatched";
