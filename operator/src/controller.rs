//! The controller: `reconcile` brings one `PaxosKV` one step closer to its
//! spec and reports what it saw; `error_policy` decides when to try again
//! after a failure. Both are plain async functions over a [`Context`], so
//! tests call them against a mocked API server.
//!
//! One pass: refuse an invalid spec (a condition and an event, nothing
//! touched); apply the owned objects with server-side apply; create the
//! token Secret once; look at the StatefulSet, its pods and what each
//! replica reports; let [`plan`](crate::plan::plan) pick the next step; do
//! it; write the status.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{ConfigMap, PersistentVolumeClaim, Pod, Secret};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::controller::Action;
use kube::runtime::events::{Event, EventType, Recorder};
use kube::{Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::certs::ListCheck;
use crate::crd::{
    MemberStatus, PaxosKV, PaxosKVStatus, Phase, RecoveryPhase, RecoveryStatus,
    RevocationListStatus, SwitchoverPhase, SwitchoverStatus,
};
use crate::members::{ClusterView, MembersClient, MembersError};
use crate::metrics::OperatorMetrics;
use crate::plan::{Observed, PodView, Step, failing_for, plan};
use crate::render::{self, Bootstrap, Defaults, MANAGER, Names, TOKEN_KEY, Transport};

/// How a pod's client API is reached from the operator: by default its
/// stable DNS name through the headless Service.
pub type Resolver = Arc<dyn Fn(&str, &Names, &str) -> String + Send + Sync>;

/// The in-cluster resolver: `http(s)://<pod>.<cluster>-peers.<ns>.svc:8080`.
pub fn cluster_dns() -> Resolver {
    Arc::new(|ns: &str, names: &Names, pod: &str| names.client_url(ns, pod))
}

/// What every reconcile needs.
#[derive(Clone)]
pub struct Context {
    /// The Kubernetes client.
    pub client: kube::Client,
    /// Operator-wide settings.
    pub defaults: Defaults,
    /// Publishes Events.
    pub recorder: Recorder,
    /// HTTP client for the clusters' APIs.
    pub http: reqwest::Client,
    /// Finds a pod's client API.
    pub resolver: Resolver,
    /// The operator's metrics.
    pub metrics: OperatorMetrics,
    /// Re-check interval while something is in progress.
    pub busy_requeue: Duration,
    /// Re-check interval when everything matches the spec.
    pub idle_requeue: Duration,
}

impl std::fmt::Debug for Context {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Context")
            .field("defaults", &self.defaults)
            .finish_non_exhaustive()
    }
}

/// Why a reconcile failed; the controller retries after
/// [`error_policy`]'s delay.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A Kubernetes API call failed.
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    /// A call to the cluster's own API failed.
    #[error("cluster API: {0}")]
    Members(#[from] MembersError),
    /// The resource has no namespace (the CRD is namespaced, so only a
    /// broken client produces this).
    #[error("the PaxosKV has no namespace")]
    NoNamespace,
    /// The token Secret exists but does not hold a usable token.
    #[error(
        "Secret {0} has no usable `token` key; restore it or delete it to have a new one generated"
    )]
    BadToken(String),
    /// The cluster's certificates cannot be made or read.
    #[error("certificates: {0}")]
    Tls(String),
    /// An object the operator would create already exists and belongs to
    /// something else (another PaxosKV whose names overlap, or an object
    /// made by hand). The operator never takes it over.
    #[error(
        "{kind} {name} already exists and is not owned by this PaxosKV ({holder}); rename this \
         PaxosKV, or delete or rename that {kind}"
    )]
    Conflict {
        /// The object's kind.
        kind: String,
        /// Its name.
        name: String,
        /// Who owns it, as far as its metadata says.
        holder: String,
    },
    /// An object could not be turned into JSON (a bug).
    #[error("encoding an object: {0}")]
    Encode(#[from] serde_json::Error),
    /// The planned step failed; the status and a `StepFailed` event already
    /// say so.
    #[error("{step}: {source}")]
    Step {
        /// What was being done.
        step: String,
        /// Why it failed.
        source: Box<Error>,
    },
}

impl Error {
    /// Short label for metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            Error::Kube(_) => "kube",
            Error::Members(_) => "cluster_api",
            Error::NoNamespace => "no_namespace",
            Error::BadToken(_) => "bad_token",
            Error::Tls(_) => "tls",
            Error::Conflict { .. } => "conflict",
            Error::Encode(_) => "encode",
            Error::Step { source, .. } => source.kind(),
        }
    }

    /// The reason shown on the `Ready` and `Reconciled` conditions.
    pub fn reason(&self) -> &'static str {
        match self {
            Error::Conflict { .. } => "NameConflict",
            Error::Tls(_) => "CertificateError",
            Error::Step { source, .. } => source.reason(),
            _ => "ReconcileError",
        }
    }
}

/// Retries a failed reconcile after a pause; failures are logged and
/// counted, never fatal.
pub fn error_policy(pkv: Arc<PaxosKV>, error: &Error, ctx: Arc<Context>) -> Action {
    tracing::warn!(paxoskv = %pkv.name_any(), error = %error, "reconcile failed");
    ctx.metrics.failure(error.kind());
    Action::requeue(Duration::from_secs(10))
}

/// Reconciles one `PaxosKV`.
///
/// The future is boxed here, so that this crate compiles it once: returned
/// unboxed, every crate that polls it (the binary, each test) compiled the
/// whole call tree again, about two and a half minutes of CPU each.
pub fn reconcile(
    pkv: Arc<PaxosKV>,
    ctx: Arc<Context>,
) -> futures_util::future::BoxFuture<'static, Result<Action, Error>> {
    Box::pin(reconcile_unboxed(pkv, ctx))
}

/// [`reconcile`], unboxed.
#[tracing::instrument(skip_all, fields(paxoskv = %pkv.name_any(), namespace = pkv.namespace().unwrap_or_default()))]
async fn reconcile_unboxed(pkv: Arc<PaxosKV>, ctx: Arc<Context>) -> Result<Action, Error> {
    let started = Instant::now();
    let result = reconcile_inner(&pkv, &ctx).await;
    ctx.metrics.reconciled(started.elapsed(), result.is_ok());
    if let Err(error) = &result
        && !matches!(error, Error::Step { .. })
    {
        report_failure(&ctx, &pkv, error).await;
    }
    result
}

/// Makes a failed pass visible where users look: a Warning event and
/// `Ready=False` / `Reconciled=False` with reason `ReconcileError`. The rest
/// of the status (phase, members) stays what was last observed. Best
/// effort: when the API server refuses this too, the failure is logged.
async fn report_failure(ctx: &Context, pkv: &PaxosKV, error: &Error) {
    let message = error.to_string();
    publish(
        ctx,
        pkv,
        EventType::Warning,
        "ReconcileFailed",
        "Reconcile",
        &message,
    )
    .await;
    let mut status = pkv.status.clone().unwrap_or_default();
    status.conditions = with_failure(
        &status.conditions,
        pkv.metadata.generation,
        error.reason(),
        &message,
    );
    if let Err(e) = write_status(ctx, pkv, &status).await {
        tracing::warn!(error = %e, "could not report a failed reconcile in the status");
    }
}

/// `conditions` with `Reconciled` and `Ready` set to False for `message`,
/// the others kept.
fn with_failure(
    conditions_now: &[Condition],
    generation: Option<i64>,
    reason: &str,
    message: &str,
) -> Vec<Condition> {
    let failed = conditions(
        conditions_now,
        generation,
        [
            cond("Reconciled", false, reason, message),
            cond("Ready", false, reason, message),
        ],
    );
    let mut out: Vec<Condition> = conditions_now
        .iter()
        .filter(|c| !failed.iter().any(|f| f.type_ == c.type_))
        .cloned()
        .collect();
    out.extend(failed);
    out
}

/// Reports a spec the operator will not act on: phase Invalid, a warning
/// event once per generation, and nothing changed in the cluster.
async fn report_invalid(ctx: &Context, pkv: &PaxosKV, message: &str) -> Result<Action, Error> {
    let generation = pkv.metadata.generation;
    let message = message.to_string();
    let old = pkv.status.clone().unwrap_or_default();
    let already_reported =
        old.phase == Some(Phase::Invalid) && old.observed_generation == generation;
    if !already_reported {
        publish(
            ctx,
            pkv,
            EventType::Warning,
            "InvalidSpec",
            "Validate",
            &message,
        )
        .await;
    }
    let mut status = old.clone();
    status.phase = Some(Phase::Invalid);
    status.observed_generation = generation;
    status.conditions = conditions(
        &old.conditions,
        generation,
        [
            cond(
                "Progressing",
                false,
                "InvalidSpec",
                "the spec is invalid; nothing was changed",
            ),
            cond("Degraded", true, "InvalidSpec", &message),
            cond("Ready", false, "InvalidSpec", &message),
        ],
    );
    write_status(ctx, pkv, &status).await?;
    Ok(Action::await_change())
}

async fn reconcile_inner(pkv: &PaxosKV, ctx: &Context) -> Result<Action, Error> {
    let ns = pkv.namespace().ok_or(Error::NoNamespace)?;
    let name = pkv.name_any();
    let names = Names::of(&name);
    let client = &ctx.client;

    let problems = pkv.spec.problems(&name);
    if !problems.is_empty() {
        return report_invalid(ctx, pkv, &problems.join("; ")).await;
    }

    // The objects with no state of their own: apply them every time.
    // Each is checked to be ours first: names of two PaxosKVs can overlap
    // (`kv`'s headless Service is `kv-peers`, the client Service of a
    // PaxosKV named `kv-peers`), and an object made by hand is not ours to
    // take over.
    apply_owned(client, pkv, &name, &render::service_account(pkv)).await?;
    apply_owned(client, pkv, &names.peers, &render::peer_service(pkv)).await?;
    apply_owned(client, pkv, &name, &render::client_service(pkv)).await?;
    // Only when asked for: a `<name>-metrics` that exists for another
    // reason must not stop the clusters that do not need one. Turned off,
    // an existing one stays, without endpoints, until the PaxosKV goes.
    if render::wants_metrics_service(pkv) {
        apply_owned(client, pkv, &names.metrics, &render::metrics_service(pkv)).await?;
    }
    apply_owned(client, pkv, &name, &render::disruption_budget(pkv)).await?;
    if pkv.spec.network_policy.enabled {
        apply_owned(
            client,
            pkv,
            &name,
            &render::network_policy(pkv, &ctx.defaults.operator_pods),
        )
        .await?;
    } else {
        delete_owned::<NetworkPolicy>(client, pkv, &name).await?;
    }

    // The token is made once; an existing Secret is never overwritten.
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns);
    let token = match secrets.get_opt(&names.token).await? {
        Some(secret) => secret
            .data
            .as_ref()
            .and_then(|d| d.get(TOKEN_KEY))
            .and_then(|b| String::from_utf8(b.0.clone()).ok())
            .map(|t| t.trim().to_string())
            .filter(|t| t.len() >= 16)
            .ok_or_else(|| Error::BadToken(names.token.clone()))?,
        None => {
            let token = render::generate_token();
            secrets
                .create(&PostParams::default(), &render::token_secret(pkv, &token))
                .await?;
            token
        }
    };

    let configs: Api<ConfigMap> = Api::namespaced(client.clone(), &ns);
    let wanted_mode = pkv.spec.read_mode.unwrap_or_default();
    let wanted_recovery = pkv
        .spec
        .bootstrap
        .as_ref()
        .and_then(|b| b.recovery.as_ref());
    let mut bootstrap = match configs.get_opt(&names.bootstrap).await? {
        Some(cm) => {
            ensure_owned(pkv, &cm, &names.bootstrap)?;
            Bootstrap::from_data(&cm.data.unwrap_or_default(), pkv.spec.replicas)
        }
        None => {
            let bootstrap = Bootstrap::initial(pkv);
            apply(
                client,
                &ns,
                &names.bootstrap,
                &render::bootstrap_config(pkv, &bootstrap),
            )
            .await?;
            if let Some(r) = &bootstrap.recovery {
                publish(
                    ctx,
                    pkv,
                    EventType::Normal,
                    "Recovering",
                    "Recover",
                    &format!(
                        "{} restores from {} to {}; the other replicas join once it runs",
                        r.restore_member, r.source, r.target
                    ),
                )
                .await;
            }
            bootstrap
        }
    };
    let read_mode = bootstrap.read_mode;
    if let Some(tls) = bootstrap.tls
        && tls != pkv.spec.tls.enabled
    {
        let message = format!(
            "spec.tls.enabled is {} but the cluster was created with TLS {}: TLS is fixed at \
             creation (the replicas record each other's peer URLs); set it back, or create a new \
             PaxosKV and move the data with a backup",
            pkv.spec.tls.enabled,
            if tls { "on" } else { "off" }
        );
        return report_invalid(ctx, pkv, &message).await;
    }
    if bootstrap.transport() == Transport::Plain && pkv.spec.tls.client_cert_auth {
        let message = "spec.tls.clientCertAuth needs TLS, and this cluster was created before \
                       TLS existed: it stays on plain HTTP; unset clientCertAuth";
        return report_invalid(ctx, pkv, message).await;
    }
    if bootstrap.transport() == Transport::Plain && pkv.spec.tls.revocation_list.is_some() {
        let message = "spec.tls.revocationList needs TLS, and this cluster was created before \
                       TLS existed: it stays on plain HTTP; unset revocationList";
        return report_invalid(ctx, pkv, message).await;
    }
    if bootstrap.tls.is_none() && pkv.spec.tls.enabled {
        tracing::debug!(
            paxoskv = %name,
            "created before TLS existed: the cluster stays on plain HTTP"
        );
    }
    let names = Names::with_transport(&name, &ns, bootstrap.transport());
    let (http, list_check) = match names.transport {
        Transport::Plain => (ctx.http.clone(), ListCheck::NotAsked),
        Transport::Tls => match crate::certs::ensure(ctx, pkv, &ns, &names).await? {
            (Some(tls), check) => (tls.http_client()?, check),
            // cert-manager has yet to write the Secret: the pods cannot
            // start without it either.
            (None, check) => (ctx.http.clone(), check),
        },
    };
    // The CRD refuses changing spec.bootstrap after creation; this catches
    // a recovery added where the schema was bypassed, which would only put
    // an init container that does nothing into every pod.
    if let Some(r) = wanted_recovery
        && bootstrap
            .recovery
            .as_ref()
            .is_none_or(|rec| rec.source != r.source.url)
    {
        let message = "spec.bootstrap.recovery was set after the cluster was created: a cluster                        is recovered only when it is created; remove it, or create a new PaxosKV                        to recover into";
        return report_invalid(ctx, pkv, message).await;
    }
    if read_mode != wanted_mode {
        let message = format!(
            "spec.readMode is {} but the cluster was created with {}: the read mode is fixed at \
             creation (replicas in different modes refuse each other); set it back, or create a \
             new PaxosKV with the mode you want",
            wanted_mode.name(),
            read_mode.name()
        );
        return report_invalid(ctx, pkv, &message).await;
    }

    let sets: Api<StatefulSet> = Api::namespaced(client.clone(), &ns);
    let existing = sets.get_opt(&name).await?;
    if let Some(set) = &existing {
        ensure_owned(pkv, set, &name)?;
    }
    let (held_back, list_condition) =
        hold_back_revocation_list(ctx, pkv, existing.as_ref(), &list_check).await;
    let pkv = held_back.as_ref().unwrap_or(pkv);
    let created = existing.is_none();
    let set_replicas = existing
        .as_ref()
        .and_then(|s| s.spec.as_ref())
        .and_then(|s| s.replicas)
        .unwrap_or(bootstrap.replicas);
    let hibernated_replicas = existing
        .as_ref()
        .and_then(|s| s.metadata.annotations.as_ref())
        .and_then(|a| a.get(render::HIBERNATED_REPLICAS))
        .and_then(|v| v.parse::<i32>().ok())
        .filter(|n| *n > 0);
    if pkv.spec.hibernation {
        return hibernate(
            ctx,
            pkv,
            &ns,
            existing.as_ref(),
            hibernated_replicas,
            names.transport,
        )
        .await;
    }
    // Waking up: the pods the cluster had come back on their volumes; any
    // change of size made meanwhile is planned from there as usual.
    let waking = set_replicas == 0 && hibernated_replicas.is_some();
    let set_replicas = if waking {
        hibernated_replicas.unwrap_or(set_replicas)
    } else {
        set_replicas
    };
    let set: StatefulSet = apply(
        client,
        &ns,
        &name,
        &render::statefulset(pkv, &ctx.defaults, set_replicas, names.transport),
    )
    .await?;
    if waking {
        publish(
            ctx,
            pkv,
            EventType::Normal,
            "Resumed",
            "Hibernate",
            &format!("hibernation is off: starting {set_replicas} pods on their volumes"),
        )
        .await;
    }
    if created {
        publish(
            ctx,
            pkv,
            EventType::Normal,
            "Created",
            "Create",
            &format!(
                "created StatefulSet {name} with {set_replicas} replicas running {}",
                render::image(pkv, &ctx.defaults)
            ),
        )
        .await;
    }

    let pods_api: Api<Pod> = Api::namespaced(client.clone(), &ns);
    let selector = render::selector_labels(&name)
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",");
    let pod_list = pods_api
        .list(&ListParams::default().labels(&selector))
        .await?;
    let update_revision = set.status.as_ref().and_then(|s| s.update_revision.clone());
    let pods = pod_views(&names, &pod_list.items, update_revision.as_deref());

    let members = MembersClient::new(http, token);
    let urls: Vec<(String, String)> = pods
        .iter()
        .map(|p| (p.name.clone(), (ctx.resolver)(&ns, &names, &p.name)))
        .collect();
    let view = members.observe(&urls).await;

    let mut observed = view.observed(&names, pkv.spec.replicas, set_replicas, pods);
    let now = Timestamp::now();
    let mut since = failing_since(pkv, &view, now);
    if pkv.spec.self_healing.enabled {
        // `problems` checked the duration already.
        let after = phxkv::cli::parse_duration(&pkv.spec.self_healing.replace_after)
            .unwrap_or(Duration::from_secs(600));
        observed.failing = failing_for(&since, now, |t, now| {
            now.duration_since(t).unsigned_abs() >= after
        });
    }
    let step = plan(&observed);
    tracing::debug!(?step, "planned");
    let mut step_error = None;
    if let Err(e) = execute(ctx, pkv, &ns, &names, &members, &view, &step, &bootstrap).await {
        publish(
            ctx,
            pkv,
            EventType::Warning,
            "StepFailed",
            "Reconcile",
            &format!("{}: {e}", describe(&step)),
        )
        .await;
        step_error = Some(Error::Step {
            step: describe(&step),
            source: Box::new(e),
        });
    } else if let Step::Recreate(pod) = &step {
        // The clock starts again: the pod comes back empty and is replaced
        // (a lost volume comes first in the plan) long before it runs out,
        // and it is never recreated again while it starts.
        since.insert(pod.clone(), now);
    }

    let switchover = switchover(ctx, pkv, &members, &view, &step).await;
    let recovery = recovery(
        ctx,
        pkv,
        &ns,
        &names,
        &view,
        &mut bootstrap,
        &pod_list.items,
    )
    .await?;
    let backups = crate::backup::cluster_pass(ctx, pkv, &ns, &members, &view).await;

    let mut status = status_of(pkv, &observed, &view, &step);
    status.switchover = switchover;
    let old_conditions = pkv
        .status
        .as_ref()
        .map(|s| s.conditions.clone())
        .unwrap_or_default();
    if let Some(r) = recovery {
        let done = r.phase == RecoveryPhase::Recovered;
        let message = match &r.failure {
            Some(why) => why.clone(),
            None => format!("from {} to {}", r.source, r.target),
        };
        let reason = match (done, &r.failure) {
            (true, _) => "RestoredFromArchive",
            (false, Some(_)) => "RestoreFailed",
            (false, None) => "Restoring",
        };
        status.conditions.push(stamp(
            &old_conditions,
            pkv.metadata.generation,
            cond("Recovered", done, reason, &message),
        ));
        status.recovery = Some(r);
    }
    if let Some(c) = list_condition {
        status
            .conditions
            .push(stamp(&old_conditions, pkv.metadata.generation, c));
    }
    match &list_check {
        ListCheck::NotAsked => status.revocation_lists.clear(),
        ListCheck::Usable(versions) => status.revocation_lists = given_lists(versions),
        // What was given last stays the mark.
        ListCheck::Unusable(_) | ListCheck::Older(_) | ListCheck::Unchecked => {}
    }
    let mut next_backup = None;
    if let Some(b) = backups {
        status
            .conditions
            .push(stamp(&old_conditions, pkv.metadata.generation, b.condition));
        status.backup = Some(b.status);
        next_backup = b.next;
    }
    for m in &mut status.members {
        m.failing_since = since.get(&m.name).map(|t| Time(*t));
    }
    if let Some(e) = &step_error {
        status.conditions = with_failure(
            &status.conditions,
            pkv.metadata.generation,
            e.reason(),
            &e.to_string(),
        );
    }
    write_status(ctx, pkv, &status).await?;
    if let Some(e) = step_error {
        return Err(e);
    }
    let switching = status
        .switchover
        .as_ref()
        .is_some_and(|s| s.phase == SwitchoverPhase::Pending);
    let every = match step {
        Step::Idle if status.phase == Some(Phase::Running) && !switching => ctx.idle_requeue,
        _ => ctx.busy_requeue,
    };
    // Back in time for the next scheduled backup (a second late, so it is
    // due), unless something else comes sooner.
    Ok(Action::requeue(
        next_backup.map_or(every, |n| every.min(n + Duration::from_secs(1))),
    ))
}

/// A cluster created from an archive: its status, and the end of the
/// recovery once the restored replica runs with a master. Then the
/// bootstrap ConfigMap no longer names a pod to restore, so a pod that
/// later comes back on an empty volume starts empty and is replaced like
/// in any cluster, instead of restoring the archive again.
async fn recovery(
    ctx: &Context,
    pkv: &PaxosKV,
    ns: &str,
    names: &Names,
    view: &ClusterView,
    bootstrap: &mut Bootstrap,
    pods: &[Pod],
) -> Result<Option<RecoveryStatus>, Error> {
    let Some(record) = bootstrap.recovery.clone() else {
        return Ok(None);
    };
    let restoring = !record.restore_member.is_empty();
    let failure = if restoring {
        restore_failure(pods, &record.restore_member)
    } else {
        None
    };
    if let Some(why) = &failure {
        let old = pkv
            .status
            .as_ref()
            .and_then(|s| s.recovery.as_ref())
            .and_then(|r| r.failure.as_deref());
        if old != Some(why.as_str()) {
            publish(
                ctx,
                pkv,
                EventType::Warning,
                "RestoreFailed",
                "Recover",
                why,
            )
            .await;
        }
    }
    if restoring && view.master.is_some() && !view.members.is_empty() {
        let mut done = bootstrap.clone();
        if let Some(r) = done.recovery.as_mut() {
            r.restore_member.clear();
        }
        apply(
            &ctx.client,
            ns,
            &names.bootstrap,
            &render::bootstrap_config(pkv, &done),
        )
        .await?;
        *bootstrap = done;
        ctx.metrics.step("recovered");
        publish(
            ctx,
            pkv,
            EventType::Normal,
            "Recovered",
            "Recover",
            &format!(
                "{} runs, restored from {} to {}; the other replicas join it",
                record.restore_member, record.source, record.target
            ),
        )
        .await;
    }
    let recovered = bootstrap
        .recovery
        .as_ref()
        .is_some_and(|r| r.restore_member.is_empty());
    Ok(Some(RecoveryStatus {
        source: record.source,
        target: record.target,
        phase: if recovered {
            RecoveryPhase::Recovered
        } else {
            RecoveryPhase::Restoring
        },
        failure,
    }))
}

/// Why the restore in pod `member` failed, from its `restore` init
/// container's status: it exited non-zero (now, or before the kubelet
/// started it again). The message is the end of its output, which is
/// where the CLI says what went wrong (a target before the first base, a
/// wrong URL, refused credentials). `None` while it runs or succeeded.
pub fn restore_failure(pods: &[Pod], member: &str) -> Option<String> {
    let pod = pods.iter().find(|p| p.name_any() == member)?;
    let status = pod
        .status
        .as_ref()?
        .init_container_statuses
        .as_ref()?
        .iter()
        .find(|c| c.name == "restore")?;
    let failed = |s: Option<&k8s_openapi::api::core::v1::ContainerState>| {
        s.and_then(|s| s.terminated.as_ref())
            .filter(|t| t.exit_code != 0)
            .cloned()
    };
    let t = failed(status.state.as_ref()).or_else(|| failed(status.last_state.as_ref()))?;
    let said = t
        .message
        .as_deref()
        .map(str::trim)
        .filter(|m| !m.is_empty())
        .and_then(|m| m.lines().last())
        .unwrap_or("no output");
    Some(format!(
        "the restore in {member} failed (exit {}, {} restart(s)): {said}; fix spec.bootstrap.recovery \
         or the archive, then delete and create the PaxosKV again (spec.bootstrap cannot change)",
        t.exit_code, status.restart_count
    ))
}

/// The `phxkv.io/switchover` annotation: moves mastership to the member it
/// names, through the master's hand-off (the target must be a voter the
/// master hears from and caught up; the server checks). Only when the plan
/// has nothing else to do, so it never races a membership change or an
/// upgrade. A request is done once: when it succeeded or failed, the status
/// says so until the annotation changes; without the annotation the status
/// has no switchover.
async fn switchover(
    ctx: &Context,
    pkv: &PaxosKV,
    members: &MembersClient,
    view: &ClusterView,
    step: &Step,
) -> Option<SwitchoverStatus> {
    let target = pkv
        .annotations()
        .get(render::SWITCHOVER)
        .map(|t| t.trim().to_string())
        .filter(|t| !t.is_empty())?;
    let last = pkv.status.as_ref().and_then(|s| s.switchover.clone());
    if let Some(last) = last.filter(|l| l.target == target && l.phase != SwitchoverPhase::Pending) {
        return Some(last);
    }
    let done = |phase, message: String| {
        Some(SwitchoverStatus {
            target: target.clone(),
            phase,
            message,
        })
    };
    if view.master.as_deref() == Some(target.as_str()) {
        return done(SwitchoverPhase::Succeeded, format!("{target} is master"));
    }
    if !matches!(step, Step::Idle) {
        return done(
            SwitchoverPhase::Pending,
            format!("waits for the cluster to settle: {}", describe(step)),
        );
    }
    let Some(via) = view.via() else {
        return done(
            SwitchoverPhase::Pending,
            "no replica answered; retrying".into(),
        );
    };
    let from = view.master.clone().unwrap_or_else(|| "none".into());
    match members.transfer(via, &target).await {
        Ok(info) if info.master.as_deref() == Some(target.as_str()) => {
            ctx.metrics.step("switchover");
            let message = format!("mastership moved from {from} to {target}");
            publish(
                ctx,
                pkv,
                EventType::Normal,
                "SwitchedOver",
                "Switchover",
                &message,
            )
            .await;
            done(SwitchoverPhase::Succeeded, message)
        }
        Ok(info) => done(
            SwitchoverPhase::Pending,
            format!(
                "handed over, but the master is {}; retrying",
                info.master.as_deref().unwrap_or("unknown")
            ),
        ),
        Err(MembersError::Refused { code, message, .. })
            if code == "member_not_found" || code == "member_not_voter" =>
        {
            let message = format!("{target} cannot be master: {message}");
            publish(
                ctx,
                pkv,
                EventType::Warning,
                "SwitchoverFailed",
                "Switchover",
                &message,
            )
            .await;
            done(SwitchoverPhase::Failed, message)
        }
        Err(e) => done(SwitchoverPhase::Pending, format!("{e}; retrying")),
    }
}

/// Since when each member has been failing (unhealthy, or more than
/// `maxLag` entries behind the most advanced replica), carried over from
/// the last status while it is the same incarnation and still failing.
fn failing_since(pkv: &PaxosKV, view: &ClusterView, now: Timestamp) -> BTreeMap<String, Timestamp> {
    let old = pkv
        .status
        .as_ref()
        .map(|s| s.members.as_slice())
        .unwrap_or_default();
    let newest = view.applied.values().copied().max().unwrap_or(0);
    let max_lag = pkv.spec.self_healing.max_lag;
    view.members
        .iter()
        .filter(|m| {
            let lagging = view
                .applied
                .get(&m.name)
                .is_some_and(|a| newest.saturating_sub(*a) > max_lag);
            !m.healthy || lagging
        })
        .map(|m| {
            let since = old
                .iter()
                .find(|o| o.name == m.name && o.id == m.id)
                .and_then(|o| o.failing_since.as_ref())
                .map(|t| t.0)
                .unwrap_or(now);
            (m.name.clone(), since)
        })
        .collect()
}

/// A revocation list that a replica starting with it would stop on
/// ([`ListCheck::Unusable`]), or that cannot be checked yet, is not put
/// into the pods' template: returns the `PaxosKV` to render, with the list
/// its pods mount now (or none), when that is another one. A list the pods
/// mount already stays (taking it out would admit what it revokes);
/// running replicas keep the lists they loaded until a usable one comes.
///
/// Also returns the `RevocationListApplied` condition (none when no list
/// is asked for): True once the pods' template carries the list of the
/// spec, False while it is held back or cannot be used, so that
/// `observedGeneration` reaching the spec's generation does not hide a
/// list that did not go out. A problem is also reported in a Warning
/// event.
async fn hold_back_revocation_list(
    ctx: &Context,
    pkv: &PaxosKV,
    existing: Option<&StatefulSet>,
    check: &ListCheck,
) -> (Option<PaxosKV>, Option<Condition>) {
    const TYPE: &str = "RevocationListApplied";
    let Some(wanted) = &pkv.spec.tls.revocation_list else {
        return (None, None);
    };
    // (the problem, the reason of its event and condition)
    let problem = match check {
        ListCheck::NotAsked | ListCheck::Usable(_) => {
            let message = format!(
                "the pods mount Secret {}, key {}; each replica reloads it when the kubelet \
                 updates the Secret",
                wanted.name, wanted.key
            );
            return (None, Some(cond(TYPE, true, "Mounted", &message)));
        }
        ListCheck::Unusable(problem) => Some((problem, "RevocationListInvalid")),
        ListCheck::Older(problem) => Some((problem, "RevocationListOlder")),
        ListCheck::Unchecked => None,
    };
    let mounted = existing.and_then(render::mounted_revocation_list);
    let held = (mounted.as_ref() != Some(wanted)).then(|| {
        let mut previous = pkv.clone();
        previous.spec.tls.revocation_list = mounted.clone();
        previous
    });
    let kept = match (&held, &mounted, problem) {
        (None, _, None) => "The pods mount it already".to_owned(),
        (None, _, Some((_, "RevocationListOlder"))) => {
            "The pods mount it already: replicas keep the newer lists they loaded, also \
             across restarts, and take no change to their TLS files (renewed certificates \
             included) until the list is at least as new; a replica on a new volume takes \
             this one"
                .to_owned()
        }
        (None, _, Some(_)) => "The pods mount it already: running replicas keep the lists \
                               they loaded, and a replica that starts stops with this error"
            .to_owned(),
        (Some(_), Some(m), _) => format!(
            "It is not given to the pods until it is usable; they keep the lists of Secret \
             {}, key {}",
            m.name, m.key
        ),
        (Some(_), None, _) => "It is not given to the pods until it is usable; they keep no \
                            revocation list"
            .to_owned(),
    };
    let Some(problem) = problem else {
        let message = format!(
            "checked once cert-manager has written the cluster's certificate Secret, whose CA \
             the lists must match. {kept}"
        );
        return (
            held,
            Some(cond(TYPE, false, "WaitingForCertificate", &message)),
        );
    };
    let (problem, reason) = problem;
    let note = format!("{problem}. {kept}");
    publish(ctx, pkv, EventType::Warning, reason, "Certificates", &note).await;
    (held, Some(cond(TYPE, false, reason, &note)))
}

/// The status record of the lists `versions`, given to the replicas now.
fn given_lists(versions: &[phxkv::tls::issue::ListVersion]) -> Vec<RevocationListStatus> {
    versions
        .iter()
        .filter_map(|v| {
            let issued = Timestamp::from_second(v.issued).ok()?;
            Some(RevocationListStatus {
                issuer: v.issuer.clone(),
                number: v.number.clone(),
                issued: Time(issued),
            })
        })
        .collect()
}

/// `spec.hibernation`: stops every pod and keeps everything else. In two
/// passes, so that no volume is ever deleted: first the StatefulSet keeps
/// its volumes when scaled (`whenScaled: Retain`), then, once the API
/// server has that, it scales to zero. The pod count goes into an
/// annotation for the way back. The membership is left as it is: every
/// member comes back on its own volume.
async fn hibernate(
    ctx: &Context,
    pkv: &PaxosKV,
    ns: &str,
    existing: Option<&StatefulSet>,
    hibernated_replicas: Option<i32>,
    transport: Transport,
) -> Result<Action, Error> {
    let name = pkv.name_any();
    let mut pods_left = 0;
    if let Some(set) = existing {
        let spec = set.spec.as_ref();
        let set_replicas = spec.and_then(|s| s.replicas).unwrap_or(0);
        let retained = spec
            .and_then(|s| s.persistent_volume_claim_retention_policy.as_ref())
            .and_then(|p| p.when_scaled.as_deref())
            == Some("Retain");
        let keep = hibernated_replicas.unwrap_or(set_replicas);
        let replicas = if retained { 0 } else { set_replicas };
        let mut rendered = render::statefulset(pkv, &ctx.defaults, replicas, transport);
        if keep > 0 {
            rendered
                .metadata
                .annotations
                .get_or_insert_with(Default::default)
                .insert(render::HIBERNATED_REPLICAS.into(), keep.to_string());
        }
        let _: StatefulSet = apply(&ctx.client, ns, &name, &rendered).await?;
        if retained && set_replicas > 0 {
            ctx.metrics.step("hibernate");
            publish(
                ctx,
                pkv,
                EventType::Normal,
                "Hibernating",
                "Hibernate",
                &format!(
                    "stopping {set_replicas} pods; the volumes, the Secrets and the membership \
                     are kept"
                ),
            )
            .await;
        }
        let selector = render::selector_labels(&name)
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(",");
        let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), ns);
        pods_left = pods
            .list(&ListParams::default().labels(&selector))
            .await?
            .items
            .len();
        if !retained {
            // The scale-down waits for the next pass.
            pods_left = pods_left.max(1);
        }
    }
    let old = pkv.status.clone().unwrap_or_default();
    let generation = pkv.metadata.generation;
    let (phase, message) = if pods_left == 0 {
        (
            Phase::Hibernated,
            "every pod is stopped; the volumes and Secrets are kept".to_string(),
        )
    } else {
        (
            Phase::Hibernating,
            format!("stopping the pods: {pods_left} left"),
        )
    };
    let status = PaxosKVStatus {
        phase: Some(phase),
        replicas: pods_left as i32,
        ready_replicas: 0,
        master: None,
        // The last members seen: they are who comes back.
        members: old.members.clone(),
        switchover: old.switchover.clone(),
        backup: old.backup.clone(),
        recovery: old.recovery.clone(),
        revocation_lists: old.revocation_lists.clone(),
        observed_generation: generation,
        conditions: conditions(
            &old.conditions,
            generation,
            [
                cond("Hibernated", true, &format!("{phase:?}"), &message),
                cond("Available", false, "Hibernated", "hibernation is on"),
                cond(
                    "Progressing",
                    pods_left > 0,
                    &format!("{phase:?}"),
                    &message,
                ),
                cond("Degraded", false, "Hibernated", "hibernation is on"),
                cond("Ready", false, "Hibernated", &message),
                cond(
                    "Reconciled",
                    true,
                    "Succeeded",
                    "the last reconcile went through",
                ),
            ],
        ),
    };
    write_status(ctx, pkv, &status).await?;
    Ok(if pods_left == 0 {
        Action::requeue(ctx.idle_requeue)
    } else {
        Action::requeue(ctx.busy_requeue)
    })
}

/// Does `step`. Membership changes go to the master when it answered (any
/// replica would forward them); pod and StatefulSet changes go to the API
/// server.
#[allow(clippy::too_many_arguments)]
async fn execute(
    ctx: &Context,
    pkv: &PaxosKV,
    ns: &str,
    names: &Names,
    members: &MembersClient,
    view: &ClusterView,
    step: &Step,
    bootstrap: &Bootstrap,
) -> Result<(), Error> {
    match step {
        Step::Idle | Step::Wait(_) => Ok(()),
        Step::SetReplicas(n) => {
            if *n < bootstrap.replicas {
                // Pods past the new size that ever come back must join,
                // not bootstrap a cluster of their own.
                let lowered = Bootstrap {
                    replicas: *n,
                    ..bootstrap.clone()
                };
                apply(
                    &ctx.client,
                    ns,
                    &names.bootstrap,
                    &render::bootstrap_config(pkv, &lowered),
                )
                .await?;
            }
            let _: StatefulSet = apply(
                &ctx.client,
                ns,
                &names.cluster,
                &render::statefulset(pkv, &ctx.defaults, *n, bootstrap.transport()),
            )
            .await?;
            ctx.metrics.step("set_replicas");
            publish(
                ctx,
                pkv,
                EventType::Normal,
                "Scaled",
                "Scale",
                &describe(step),
            )
            .await;
            Ok(())
        }
        Step::AddLearner(pod) | Step::Promote(pod) | Step::Remove(pod) => {
            let via = view.via().ok_or(MembersError::NoReplica)?;
            members.change(via, step, &names.peer_url(pod)).await?;
            let (reason, kind) = match step {
                Step::AddLearner(_) => ("MemberAdded", "add_learner"),
                Step::Promote(_) => ("MemberPromoted", "promote"),
                _ => ("MemberRemoved", "remove"),
            };
            ctx.metrics.step(kind);
            publish(
                ctx,
                pkv,
                EventType::Normal,
                reason,
                "ChangeMembership",
                &describe(step),
            )
            .await;
            Ok(())
        }
        Step::ReplaceMember(pod) => {
            let via = view.via().ok_or(MembersError::NoReplica)?;
            let why = view.lost.get(pod).cloned().unwrap_or_default();
            let report = members.replace(via, pod).await?;
            ctx.metrics.step("replace_member");
            let mut message = format!("{pod} came back with an empty volume");
            if let Some(old) = &report.removed {
                message.push_str(&format!(": removed incarnation {old}"));
            }
            message.push_str(&format!("; {}", report.message));
            if !why.is_empty() {
                tracing::info!(pod = %pod, reason = %why, "replacing a member that lost its volume");
            }
            publish(
                ctx,
                pkv,
                EventType::Warning,
                "MemberReplaced",
                "ReplaceMember",
                &message,
            )
            .await;
            Ok(())
        }
        Step::Recreate(pod) => {
            // The claim first: it stays (protected) until its pod is gone,
            // and the pod the StatefulSet brings back gets a new one.
            let claim = render::claim_name(pod);
            delete_if_present::<PersistentVolumeClaim>(ctx, ns, &claim).await?;
            delete_if_present::<Pod>(ctx, ns, pod).await?;
            ctx.metrics.step("recreate");
            let after = &pkv.spec.self_healing.replace_after;
            publish(
                ctx,
                pkv,
                EventType::Warning,
                "RecreatingMember",
                "SelfHeal",
                &format!(
                    "{pod} has been unhealthy or lagging for more than {after}: deleting its pod \
                     and volume claim {claim}; it comes back empty and is replaced as a new \
                     incarnation"
                ),
            )
            .await;
            Ok(())
        }
        Step::ReplacePod(pod) => {
            let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), ns);
            pods.delete(pod, &DeleteParams::default()).await?;
            ctx.metrics.step("replace_pod");
            publish(
                ctx,
                pkv,
                EventType::Normal,
                "UpgradingPod",
                "Upgrade",
                &format!(
                    "{}, to run {}",
                    describe(step),
                    render::image(pkv, &ctx.defaults)
                ),
            )
            .await;
            Ok(())
        }
    }
}

/// Deletes an object; one already gone is fine.
async fn delete_if_present<K>(ctx: &Context, ns: &str, name: &str) -> Result<(), Error>
where
    K: Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>
        + Clone
        + DeserializeOwned
        + std::fmt::Debug,
{
    let api: Api<K> = Api::namespaced(ctx.client.clone(), ns);
    match api.delete(name, &DeleteParams::default()).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(e)) if e.code == 404 => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// One sentence for events and conditions.
pub fn describe(step: &Step) -> String {
    match step {
        Step::Idle => "the cluster matches its spec".into(),
        Step::Wait(why) => why.clone(),
        Step::SetReplicas(n) => format!("resizing the StatefulSet to {n} pods"),
        Step::AddLearner(p) => format!("adding {p} as a learner"),
        Step::Promote(p) => format!("promoting {p} to voter"),
        Step::Remove(p) => format!("removing member {p}"),
        Step::ReplacePod(p) => format!("replacing pod {p}"),
        Step::ReplaceMember(p) => {
            format!("replacing member {p}, whose pod came back with an empty volume")
        }
        Step::Recreate(p) => format!("recreating {p} on a new volume: it keeps failing"),
    }
}

fn pod_views(names: &Names, pods: &[Pod], update_revision: Option<&str>) -> Vec<PodView> {
    let mut out: Vec<PodView> = pods
        .iter()
        .filter_map(|p| {
            let name = p.name_any();
            let ordinal = names.ordinal(&name)?;
            let ready = p
                .status
                .as_ref()
                .and_then(|s| s.conditions.as_ref())
                .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"));
            let revision = p
                .labels()
                .get("controller-revision-hash")
                .map(String::as_str);
            let current = match (update_revision, revision) {
                (Some(want), Some(have)) => want == have,
                _ => true,
            };
            Some(PodView {
                name,
                ordinal,
                ready,
                current,
                terminating: p.metadata.deletion_timestamp.is_some(),
            })
        })
        .collect();
    out.sort_by_key(|p| p.ordinal);
    out
}

/// The status this pass reports.
pub fn status_of(pkv: &PaxosKV, o: &Observed, view: &ClusterView, step: &Step) -> PaxosKVStatus {
    let old = pkv.status.clone().unwrap_or_default();
    let generation = pkv.metadata.generation;
    let pods = &o.pods;
    let ready = pods.iter().filter(|p| p.ready).count() as i32;
    let voters = o.members.iter().filter(|m| m.voter).count();
    let healthy_voters = o.members.iter().filter(|m| m.voter && m.healthy).count();
    let unhealthy: Vec<&str> = o
        .members
        .iter()
        .filter(|m| !m.healthy)
        .map(|m| m.name.as_str())
        .collect();
    let quorum = o.master.is_some() && healthy_voters > voters / 2;
    let scaling = step.is_scaling()
        || o.set_replicas != o.desired
        || o.members.len() != o.desired as usize
        || matches!(step, Step::Wait(_) if o.members.iter().any(|m| !m.voter));
    let upgrading = matches!(step, Step::ReplacePod(_)) || pods.iter().any(|p| !p.current);
    let ever_ran = !old.members.is_empty();

    let phase = if o.master.is_none() && !ever_ran {
        Phase::Creating
    } else if o.master.is_none() {
        Phase::Degraded
    } else if scaling {
        Phase::Scaling
    } else if upgrading {
        Phase::Upgrading
    } else if !unhealthy.is_empty() || ready < o.desired {
        Phase::Degraded
    } else {
        Phase::Running
    };

    let available = if quorum {
        cond(
            "Available",
            true,
            "QuorumHealthy",
            &format!(
                "master {}; {healthy_voters} of {voters} voters healthy",
                o.master.as_deref().unwrap_or("?")
            ),
        )
    } else if o.master.is_none() {
        cond(
            "Available",
            false,
            "NoMaster",
            "no replica reports a master",
        )
    } else {
        cond(
            "Available",
            false,
            "QuorumLost",
            &format!("only {healthy_voters} of {voters} voters are healthy"),
        )
    };
    let progressing = match phase {
        Phase::Creating => cond("Progressing", true, "Creating", &describe(step)),
        Phase::Scaling => cond("Progressing", true, "Scaling", &describe(step)),
        Phase::Upgrading => cond("Progressing", true, "Upgrading", &describe(step)),
        _ => cond("Progressing", false, "Stable", &describe(step)),
    };
    let degraded = if !unhealthy.is_empty() {
        cond(
            "Degraded",
            true,
            "MembersUnhealthy",
            &format!("unhealthy members: {}", unhealthy.join(", ")),
        )
    } else if o.master.is_none() && ever_ran {
        cond("Degraded", true, "NoMaster", "no replica reports a master")
    } else if ready < o.desired && phase == Phase::Running {
        cond(
            "Degraded",
            true,
            "PodsNotReady",
            &format!("{ready} of {} pods ready", o.desired),
        )
    } else {
        cond("Degraded", false, "Healthy", "every member is healthy")
    };

    let volume_lost = if o.lost.is_empty() {
        cond(
            "VolumeLost",
            false,
            "NoneLost",
            "every pod runs the incarnation its member has",
        )
    } else {
        let detail: Vec<String> = o
            .lost
            .iter()
            .map(|p| match view.lost.get(p) {
                Some(why) if !why.is_empty() => format!("{p}: {why}"),
                _ => p.clone(),
            })
            .collect();
        cond(
            "VolumeLost",
            true,
            if matches!(step, Step::ReplaceMember(_)) {
                "ReplacingMember"
            } else {
                "WaitingToReplace"
            },
            &format!(
                "came back with an empty volume and votes nowhere until replaced: {}",
                detail.join("; ")
            ),
        )
    };
    let self_healing = match step {
        Step::Recreate(_) => cond("SelfHealing", true, "RecreatingMember", &describe(step)),
        _ if !o.failing.is_empty() => cond(
            "SelfHealing",
            true,
            "Waiting",
            &format!(
                "failing past the threshold: {}; {}",
                o.failing.join(", "),
                describe(step)
            ),
        ),
        _ => cond(
            "SelfHealing",
            false,
            "NoneFailing",
            "no member has been failing past the threshold",
        ),
    };
    // `Ready` is what generic tools (kstatus, `helm --wait`) look for.
    let ready_cond = if phase == Phase::Running {
        cond(
            "Ready",
            true,
            "Running",
            "every member is healthy and matches the spec",
        )
    } else {
        cond("Ready", false, &format!("{phase:?}"), &describe(step))
    };
    PaxosKVStatus {
        phase: Some(phase),
        replicas: pods.len() as i32,
        ready_replicas: ready,
        master: o.master.clone(),
        members: view
            .members
            .iter()
            .map(|m| MemberStatus {
                name: m.name.clone(),
                id: m.id.clone(),
                role: if m.voter { "voter" } else { "learner" }.into(),
                applied_index: view.applied.get(&m.name).copied(),
                healthy: m.healthy,
                failing_since: None,
            })
            .collect(),
        switchover: None,
        backup: None,
        recovery: None,
        revocation_lists: old.revocation_lists.clone(),
        observed_generation: generation,
        conditions: conditions(
            &old.conditions,
            generation,
            [
                available,
                progressing,
                degraded,
                volume_lost,
                self_healing,
                cond("Hibernated", false, "Running", "hibernation is off"),
                ready_cond,
                cond(
                    "Reconciled",
                    true,
                    "Succeeded",
                    "the last reconcile went through",
                ),
            ],
        ),
    }
}

/// A condition without a time; [`conditions`] or [`stamp`] fills it in.
pub(crate) fn cond(type_: &str, status: bool, reason: &str, message: &str) -> Condition {
    Condition {
        type_: type_.into(),
        status: if status { "True" } else { "False" }.into(),
        reason: reason.into(),
        message: message.into(),
        observed_generation: None,
        last_transition_time: Time(Timestamp::UNIX_EPOCH),
    }
}

/// Stamps conditions, keeping the transition time of those whose status
/// did not change.
fn conditions<const N: usize>(
    old: &[Condition],
    generation: Option<i64>,
    new: [Condition; N],
) -> Vec<Condition> {
    new.into_iter().map(|c| stamp(old, generation, c)).collect()
}

/// Stamps one condition: the generation, and the transition time it had
/// in `old` when its status did not change (now otherwise).
pub(crate) fn stamp(old: &[Condition], generation: Option<i64>, mut c: Condition) -> Condition {
    c.observed_generation = generation;
    c.last_transition_time = old
        .iter()
        .find(|o| o.type_ == c.type_ && o.status == c.status)
        .map(|o| o.last_transition_time.clone())
        .unwrap_or_else(|| Time(Timestamp::now()));
    c
}

async fn write_status(ctx: &Context, pkv: &PaxosKV, status: &PaxosKVStatus) -> Result<(), Error> {
    let ns = pkv.namespace().ok_or(Error::NoNamespace)?;
    let api: Api<PaxosKV> = Api::namespaced(ctx.client.clone(), &ns);
    let patch = serde_json::json!({
        "apiVersion": PaxosKV::api_version(&()),
        "kind": PaxosKV::kind(&()),
        "status": status,
    });
    api.patch_status(
        &pkv.name_any(),
        &PatchParams::apply(MANAGER).force(),
        &Patch::Apply(&patch),
    )
    .await?;
    Ok(())
}

/// Refuses an object that is not controlled by `pkv` (matched by UID, so
/// a PaxosKV deleted and re-created under the same name does not inherit
/// objects the garbage collector has yet to remove).
pub(crate) fn ensure_owned<K>(pkv: &PaxosKV, obj: &K, name: &str) -> Result<(), Error>
where
    K: Resource<DynamicType = ()>,
{
    ensure_owned_as(pkv, obj.meta(), &K::kind(&()), name)
}

/// [`ensure_owned`] for an object known by its metadata and kind (one of
/// another project's resources, read as a dynamic object).
pub(crate) fn ensure_owned_as(
    pkv: &PaxosKV,
    meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta,
    kind: &str,
    name: &str,
) -> Result<(), Error> {
    let refs = meta.owner_references.as_deref().unwrap_or_default();
    let ours = pkv.metadata.uid.as_deref();
    if refs.iter().any(|r| Some(r.uid.as_str()) == ours) {
        return Ok(());
    }
    let holder = match refs
        .iter()
        .find(|r| r.controller == Some(true))
        .or(refs.first())
    {
        Some(r) => format!("it belongs to {} {}", r.kind, r.name),
        None => "it has no owner: it was made by hand or by another tool".to_string(),
    };
    Err(Error::Conflict {
        kind: kind.to_string(),
        name: name.to_string(),
        holder,
    })
}

/// A namespaced Kubernetes object the operator reads and applies.
trait Namespaced:
    Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>
    + Clone
    + DeserializeOwned
    + Serialize
    + std::fmt::Debug
{
}

impl<K> Namespaced for K where
    K: Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>
        + Clone
        + DeserializeOwned
        + Serialize
        + std::fmt::Debug
{
}

/// [`apply`], after checking that an existing object of that name is ours.
async fn apply_owned<K>(
    client: &kube::Client,
    pkv: &PaxosKV,
    name: &str,
    obj: &K,
) -> Result<K, Error>
where
    K: Namespaced,
{
    let ns = pkv.namespace().ok_or(Error::NoNamespace)?;
    let api: Api<K> = Api::namespaced(client.clone(), &ns);
    if let Some(existing) = api.get_opt(name).await? {
        ensure_owned(pkv, &existing, name)?;
    }
    apply(client, &ns, name, obj).await
}

/// Deletes `name` if it exists and is this cluster's; one made by hand is
/// left alone.
async fn delete_owned<K>(client: &kube::Client, pkv: &PaxosKV, name: &str) -> Result<(), Error>
where
    K: Namespaced,
{
    let ns = pkv.namespace().ok_or(Error::NoNamespace)?;
    let api: Api<K> = Api::namespaced(client.clone(), &ns);
    match api.get_opt(name).await? {
        Some(existing) if ensure_owned(pkv, &existing, name).is_ok() => {
            api.delete(name, &Default::default()).await?;
            Ok(())
        }
        _ => Ok(()),
    }
}

/// Server-side apply of one object the operator owns.
async fn apply<K>(client: &kube::Client, ns: &str, name: &str, obj: &K) -> Result<K, Error>
where
    K: Namespaced,
{
    let api: Api<K> = Api::namespaced(client.clone(), ns);
    Ok(api
        .patch(
            name,
            &PatchParams::apply(MANAGER).force(),
            &Patch::Apply(obj),
        )
        .await?)
}

pub(crate) async fn publish(
    ctx: &Context,
    pkv: &PaxosKV,
    type_: EventType,
    reason: &str,
    action: &str,
    note: &str,
) {
    publish_to(ctx, &pkv.object_ref(&()), type_, reason, action, note).await;
}

/// Publishes an Event about any object; failures are logged.
pub(crate) async fn publish_to(
    ctx: &Context,
    regarding: &k8s_openapi::api::core::v1::ObjectReference,
    type_: EventType,
    reason: &str,
    action: &str,
    note: &str,
) {
    let event = Event {
        type_,
        reason: reason.into(),
        note: Some(note.chars().take(1000).collect()),
        action: action.into(),
        secondary: None,
    };
    if let Err(e) = ctx.recorder.publish(&event, regarding).await {
        tracing::warn!(error = %e, reason, "could not publish an event");
    }
    tracing::info!(reason, note, "event");
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(name: &str, restore: serde_json::Value) -> Pod {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": name},
            "status": {"initContainerStatuses": [restore]},
        }))
        .expect("a pod")
    }

    #[test]
    fn a_failed_restore_is_told_with_the_end_of_its_output() {
        let crashed = pod(
            "kv-0",
            serde_json::json!({
                "name": "restore", "image": "phxkv", "imageID": "", "ready": false,
                "restartCount": 3,
                "state": {"waiting": {"reason": "CrashLoopBackOff"}},
                "lastState": {"terminated": {"exitCode": 2,
                    "message": "restoring from s3://b/p\nerror: --target-time 2020-01-01T00:00:00Z is before the first recoverable point\n"}},
            }),
        );
        let why = restore_failure(std::slice::from_ref(&crashed), "kv-0").expect("failed");
        assert!(
            why.contains("exit 2, 3 restart(s)")
                && why.contains("before the first recoverable point")
                && !why.contains("restoring from"),
            "{why}"
        );
        // Another pod's, a running one and a finished one say nothing.
        assert_eq!(restore_failure(&[crashed], "kv-1"), None);
        let running = pod(
            "kv-0",
            serde_json::json!({"name": "restore", "image": "phxkv", "imageID": "",
                "ready": false, "restartCount": 0, "state": {"running": {}}}),
        );
        assert_eq!(restore_failure(&[running], "kv-0"), None);
        let done = pod(
            "kv-0",
            serde_json::json!({"name": "restore", "image": "phxkv", "imageID": "",
                "ready": false, "restartCount": 0,
                "state": {"terminated": {"exitCode": 0}}}),
        );
        assert_eq!(restore_failure(&[done], "kv-0"), None);
    }
}
