//! Probes and metrics: `/healthz`, `/readyz`, `/metrics`.
//!
//! Liveness and readiness are separate so an orchestrator restarts a node
//! only when the process is stuck, and merely stops routing clients to a
//! node that is alive but cannot serve yet (no master, still catching up).

use axum::Json;
use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::api::service::Service;

/// The content type of the metrics exposition.
pub const OPENMETRICS_CONTENT_TYPE: &str =
    "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// A probe's answer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[schema(example = json!({"status": "not_ready", "reason": "no master elected"}))]
pub struct HealthStatus {
    /// `ok` (alive), `ready`, or `not_ready`.
    pub status: String,
    /// Why the node is not ready.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub reason: Option<String>,
}

/// The probe and metrics routes.
pub(crate) fn routes<S: Service>() -> Router<S> {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz::<S>))
        .route("/metrics", get(metrics::<S>))
}

/// Liveness: the process answers HTTP.
#[utoipa::path(
    get,
    path = "/healthz",
    tag = "operations",
    responses((status = 200, description = "Alive.", body = HealthStatus, example = json!({"status": "ok"})))
)]
pub async fn healthz() -> Json<HealthStatus> {
    Json(HealthStatus {
        status: "ok".into(),
        reason: None,
    })
}

/// Readiness: the node is a member of a cluster with a master it hears from
/// (as master: a majority of the voters it hears from), and has caught up.
#[utoipa::path(
    get,
    path = "/readyz",
    tag = "operations",
    responses(
        (status = 200, description = "Ready to serve.", body = HealthStatus, example = json!({"status": "ready"})),
        (status = 503, description = "Not ready; `reason` says why.", body = HealthStatus),
    )
)]
pub async fn readyz<S: Service>(State(svc): State<S>) -> (StatusCode, Json<HealthStatus>) {
    let health = svc.health();
    if health.ready {
        let status = HealthStatus {
            status: "ready".into(),
            reason: None,
        };
        (StatusCode::OK, Json(status))
    } else {
        let status = HealthStatus {
            status: "not_ready".into(),
            reason: Some(health.reason.unwrap_or_else(|| "not ready".into())),
        };
        (StatusCode::SERVICE_UNAVAILABLE, Json(status))
    }
}

/// The node's metrics in the OpenMetrics text format.
#[utoipa::path(
    get,
    path = "/metrics",
    tag = "operations",
    responses((status = 200, description = "OpenMetrics text exposition.", body = String,
        content_type = "application/openmetrics-text; version=1.0.0; charset=utf-8"))
)]
pub async fn metrics<S: Service>(State(svc): State<S>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, OPENMETRICS_CONTENT_TYPE)],
        svc.metrics_text(),
    )
}
