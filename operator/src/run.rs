//! What the leader runs: [`lead`] applies the CRD, checks that PaxosKVs
//! can be listed, and runs the controller until told to stop.
//!
//! The controller reconciles a `PaxosKV` when it changes and when one of the
//! objects it owns changes (its scheduled `PaxosKVBackup`s among them). A
//! second controller runs each `PaxosKVBackup` (see [`backup`](crate::backup)),
//! unless that CRD is not installed. Owned objects are watched through a label
//! selector ([`owned_selector`]): without it the watches would list and
//! cache every StatefulSet and Service of the cluster (or namespace), not
//! only the operator's. Every object the operator creates carries the label
//! (see [`render::labels`](crate::render::labels)); a test keeps the two in
//! step.

use std::sync::Arc;

use futures_util::StreamExt;
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::Service;
use kube::api::{Api, ListParams};
use kube::runtime::{Controller, watcher};

use crate::backup;
use crate::controller::{self, Context};
use crate::crd::{PaxosKV, PaxosKVBackup};
use crate::install::{self, CrdOutcome};
use crate::leader::Stop;
use crate::metrics::Role;
use crate::render::MANAGER;

/// The label every object the operator creates carries, with its value.
pub const MANAGED_BY: &str = "app.kubernetes.io/managed-by";

/// The label selector of the owned-object watches.
pub fn owned_selector() -> String {
    format!("{MANAGED_BY}={MANAGER}")
}

/// The controller over `pkvs`, triggered also by changes to the
/// StatefulSets and Services it owns (and only those), and to the backups
/// it scheduled when `backups` is given.
pub fn controller(
    pkvs: Api<PaxosKV>,
    sets: Api<StatefulSet>,
    services: Api<Service>,
    backups: Option<Api<PaxosKVBackup>>,
) -> Controller<PaxosKV> {
    let owned = watcher::Config::default().labels(&owned_selector());
    let controller = Controller::new(pkvs, watcher::Config::default())
        .owns(sets, owned.clone())
        .owns(services, owned.clone());
    match backups {
        Some(backups) => controller.owns(backups, owned),
        None => controller,
    }
}

/// Whether PaxosKVBackups can be listed (the CRD is installed, RBAC lets
/// the operator). Without them the operator runs without backups.
async fn backups_served(backups: &Api<PaxosKVBackup>) -> bool {
    match backups.list(&ListParams::default().limit(1)).await {
        Ok(_) => true,
        Err(e) => {
            tracing::warn!(error = %e, "cannot list PaxosKVBackup resources");
            false
        }
    }
}

/// How the leader runs.
#[derive(Clone, Debug)]
pub struct Leading {
    /// Everything a reconcile needs (its client and metrics are used here too).
    pub ctx: Arc<Context>,
    /// Watch only this namespace (`None`: all).
    pub namespace: Option<String>,
    /// Apply the CRD first (`--manage-crd`).
    pub manage_crd: bool,
}

/// What the leader does: apply the CRD (unless told not to), check that
/// PaxosKVs can be listed, then run the controller until `stop` (letting
/// running reconciles finish). An error here is fatal: the CRD cannot be
/// kept current, or PaxosKVs cannot be listed.
///
/// The future is boxed here, so that this crate compiles it once: returned
/// unboxed, every crate that polls it (the binary, each test) compiled the
/// whole call tree again, about two and a half minutes of CPU each.
pub fn lead(
    how: Leading,
    stop: Stop,
) -> futures_util::future::BoxFuture<'static, Result<(), String>> {
    Box::pin(lead_unboxed(how, stop))
}

/// [`lead`], unboxed.
async fn lead_unboxed(how: Leading, stop: Stop) -> Result<(), String> {
    let client = how.ctx.client.clone();
    if how.manage_crd {
        match install::apply_crd(&client).await {
            Ok(CrdOutcome::Applied { previous }) => tracing::info!(
                crd = install::CRD_NAME,
                version = install::VERSION,
                previous = previous
                    .as_deref()
                    .unwrap_or("<installed without an operator version>"),
                "applied the CRD"
            ),
            Ok(CrdOutcome::LeftNewer { theirs }) => tracing::warn!(
                crd = install::CRD_NAME,
                ours = install::VERSION,
                theirs = %theirs,
                "the CRD was applied by a newer operator; leaving it as it is"
            ),
            Err(e) => return Err(e.to_string()),
        }
        match install::apply_backup_crd(&client).await {
            Ok(CrdOutcome::Applied { .. }) => tracing::info!(
                crd = install::BACKUP_CRD_NAME,
                version = install::VERSION,
                "applied the CRD"
            ),
            Ok(CrdOutcome::LeftNewer { theirs }) => tracing::warn!(
                crd = install::BACKUP_CRD_NAME,
                theirs = %theirs,
                "the CRD was applied by a newer operator; leaving it as it is"
            ),
            // Not fatal: the clusters run on; backups wait for the CRD.
            Err(e) => tracing::warn!(crd = install::BACKUP_CRD_NAME, error = %e, "backups are off"),
        }
    }
    let (pkvs, sets, services, backups) = match &how.namespace {
        Some(ns) => (
            Api::<PaxosKV>::namespaced(client.clone(), ns),
            Api::<StatefulSet>::namespaced(client.clone(), ns),
            Api::<Service>::namespaced(client.clone(), ns),
            Api::<PaxosKVBackup>::namespaced(client.clone(), ns),
        ),
        None => (
            Api::<PaxosKV>::all(client.clone()),
            Api::<StatefulSet>::all(client.clone()),
            Api::<Service>::all(client.clone()),
            Api::<PaxosKVBackup>::all(client.clone()),
        ),
    };
    // Fail early and clearly when the CRD is missing or RBAC forbids listing.
    pkvs.list(&ListParams::default().limit(1))
        .await
        .map_err(|e| format!("cannot list PaxosKV resources (is the CRD installed?): {e}"))?;
    let with_backups = backups_served(&backups).await;
    if !with_backups {
        tracing::warn!(
            crd = install::BACKUP_CRD_NAME,
            "PaxosKVBackups cannot be listed: backups are off until the CRD is installed \
             (kubectl apply --server-side -f charts/phxkv/crds/, or phxkv-operator crd | \
             kubectl apply --server-side -f -) and the operator restarts"
        );
    }
    if stop.is_stopped() {
        return Ok(());
    }
    how.ctx.metrics.set_role(Role::Leading {
        controller_running: true,
    });
    tracing::info!("controller running");
    let clusters = controller(pkvs, sets, services, with_backups.then(|| backups.clone()))
        .graceful_shutdown_on(stop.stopped())
        .run(
            controller::reconcile,
            controller::error_policy,
            how.ctx.clone(),
        )
        .for_each(|result| async move {
            if let Err(e) = result {
                tracing::debug!(error = %e, "reconcile did not complete");
            }
        });
    if with_backups {
        let backups = Controller::new(backups, watcher::Config::default())
            .graceful_shutdown_on(stop.stopped())
            .run(backup::reconcile, backup::error_policy, how.ctx)
            .for_each(|result| async move {
                if let Err(e) = result {
                    tracing::debug!(error = %e, "backup reconcile did not complete");
                }
            });
        futures_util::future::join(clusters, backups).await;
    } else {
        clusters.await;
    }
    tracing::info!("controller stopped");
    Ok(())
}
