//! The operator's own metrics (reconciles, failures, orchestration steps)
//! and the small HTTP listener that serves them with the probes.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabel {
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabel {
    kind: &'static str,
}

#[derive(Debug)]
struct Inner {
    registry: Registry,
    reconciles: Family<ResultLabel, Counter>,
    failures: Family<KindLabel, Counter>,
    steps: Family<KindLabel, Counter>,
    duration: Histogram,
    ready: AtomicBool,
}

/// Series the controller updates; cheap to clone.
#[derive(Clone, Debug)]
pub struct OperatorMetrics(Arc<Inner>);

impl Default for OperatorMetrics {
    fn default() -> Self {
        Self::new()
    }
}

impl OperatorMetrics {
    /// Creates every series in a fresh registry.
    pub fn new() -> Self {
        let mut inner = Inner {
            registry: Registry::with_prefix("phxkv_operator"),
            reconciles: Family::default(),
            failures: Family::default(),
            steps: Family::default(),
            duration: Histogram::new([
                0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
            ]),
            ready: AtomicBool::new(false),
        };
        let r = &mut inner.registry;
        r.register(
            "reconciles",
            "Reconcile passes by result",
            inner.reconciles.clone(),
        );
        r.register(
            "failures",
            "Failed reconciles by cause",
            inner.failures.clone(),
        );
        r.register(
            "steps",
            "Orchestration steps taken (scaling, membership, upgrades)",
            inner.steps.clone(),
        );
        r.register(
            "reconcile_duration_seconds",
            "Time one reconcile pass takes",
            inner.duration.clone(),
        );
        OperatorMetrics(Arc::new(inner))
    }

    /// Records a finished reconcile pass.
    pub fn reconciled(&self, took: Duration, ok: bool) {
        let result = if ok { "ok" } else { "error" };
        self.0
            .reconciles
            .get_or_create(&ResultLabel { result })
            .inc();
        self.0.duration.observe(took.as_secs_f64());
    }

    /// Records a failure by cause.
    pub fn failure(&self, kind: &'static str) {
        self.0.failures.get_or_create(&KindLabel { kind }).inc();
    }

    /// Records an orchestration step.
    pub fn step(&self, kind: &'static str) {
        self.0.steps.get_or_create(&KindLabel { kind }).inc();
    }

    /// Marks the operator ready (its watches are running).
    pub fn set_ready(&self) {
        self.0.ready.store(true, Ordering::Relaxed);
    }

    /// The OpenMetrics text of every series.
    pub fn render(&self) -> String {
        let mut out = String::new();
        if let Err(e) = prometheus_client::encoding::text::encode(&mut out, &self.0.registry) {
            tracing::warn!(error = %e, "could not encode metrics");
        }
        out
    }
}

/// `/metrics`, `/healthz` and `/readyz` of the operator.
pub fn router(metrics: OperatorMetrics) -> Router {
    Router::new()
        .route("/metrics", get(render))
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(ready))
        .with_state(metrics)
}

async fn render(State(m): State<OperatorMetrics>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            phxkv::telemetry::OPENMETRICS_CONTENT_TYPE,
        )],
        m.render(),
    )
}

async fn ready(State(m): State<OperatorMetrics>) -> impl IntoResponse {
    if m.0.ready.load(Ordering::Relaxed) {
        (StatusCode::OK, "ready")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "starting")
    }
}
