//! The operator's own metrics (reconciles, failures, orchestration steps,
//! leadership) and the small HTTP listener that serves them with the probes.
//!
//! The probes: `/healthz` answers 200 while the process serves HTTP (the
//! liveness probe; a standby must never be restarted for being a standby).
//! `/readyz` answers for the replica's [`Role`]: 200 `leader` once the
//! leader's controller runs; 200 `standby` for a replica waiting for the
//! lease that can read it (so it can take over: a Deployment of a leader and
//! a standby becomes Available, rolls and drains); 503 while starting, while
//! a new leader sets up, and for a standby that cannot read the lease. The
//! body says which, and `phxkv_operator_leader` is 1 on the leader only.

use std::sync::atomic::AtomicI64;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
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
    leader: Gauge<i64, AtomicI64>,
    role: Mutex<Role>,
}

/// What this replica is doing, for `/readyz` and the leader gauge.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum Role {
    /// Not yet campaigning, or stopping.
    #[default]
    Starting,
    /// Waiting for the lease.
    Standby {
        /// Who holds it, as last seen.
        holder: Option<String>,
        /// The last try could read the lease (else this replica could not
        /// take over: not ready).
        lease_readable: bool,
    },
    /// Holds the lease.
    Leading {
        /// The controller runs (else it is still being set up).
        controller_running: bool,
    },
}

impl Role {
    /// Whether `/readyz` answers 200, and what it says.
    pub fn readiness(&self) -> (bool, String) {
        match self {
            Role::Starting => (false, "starting".into()),
            Role::Leading {
                controller_running: true,
            } => (true, "leader".into()),
            Role::Leading {
                controller_running: false,
            } => (false, "leader, starting the controller".into()),
            Role::Standby {
                holder,
                lease_readable,
            } => {
                let held = match holder {
                    Some(h) => format!("the lease is held by {h}"),
                    None => "the lease has no holder".into(),
                };
                if *lease_readable {
                    (true, format!("standby: {held}"))
                } else {
                    (false, format!("standby, cannot read the lease: {held}"))
                }
            }
        }
    }
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
            leader: Gauge::default(),
            role: Mutex::new(Role::Starting),
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
        r.register(
            "leader",
            "1 while this replica holds the leader lease, else 0",
            inner.leader.clone(),
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

    /// Records what this replica does now.
    pub fn set_role(&self, role: Role) {
        self.0
            .leader
            .set(i64::from(matches!(role, Role::Leading { .. })));
        // A poisoned lock only means a panic elsewhere; the value is plain.
        let mut current = self.0.role.lock().unwrap_or_else(|p| p.into_inner());
        *current = role;
    }

    /// What this replica does now.
    pub fn role(&self) -> Role {
        self.0
            .role
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
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
    let (ready, what) = m.role().readiness();
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, what)
}
