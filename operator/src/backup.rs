//! Backups: the `PaxosKVBackup` controller (one base backup, taken once),
//! and, for each `PaxosKV` with `spec.backup`, the schedule that creates
//! them, the retention that prunes the archive, and the backup part of its
//! status.
//!
//! The replicas do the archiving themselves: with `PHXKV_ARCHIVE_URL` the
//! master ships its log and periodic base snapshots to
//! `<destination>/<namespace>/<name>`. The operator only asks for a base
//! (`POST /v1/admin/backups`), lists the archive (`GET`) and deletes bases
//! past the retention (`DELETE .../<name>`), through any replica with the
//! cluster token.
//!
//! The schedule and the retention are pure functions ([`due_fire_time`],
//! [`to_prune`]) so they are tested without a clock or a server.

use std::sync::Arc;
use std::time::Duration;

use croner::Cron;
use croner::parser::{CronParser, Seconds};
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, ObjectMeta, Time};
use k8s_openapi::jiff::tz::TimeZone;
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::controller::Action;
use kube::runtime::events::EventType;
use kube::{Resource, ResourceExt};

use crate::controller::{Context, Error, cond, publish_to, stamp};
use crate::crd::{
    BackupPhase, BackupRef, BackupStatus, PaxosKV, PaxosKVBackup, PaxosKVBackupSpec,
    PaxosKVBackupStatus, RecoverablePoint, RecoverableRange, RetentionSpec,
};
use crate::members::{ArchiveListing, ArchivedBase, ClusterView, MembersClient, MembersError};
use crate::render::{self, MANAGER, Names, TOKEN_KEY, Transport};

/// Label on the backups the schedule creates: the cluster's name.
pub const CLUSTER_LABEL: &str = "phxkv.io/cluster";
/// Tries of a backup whose replica does not answer or has no master,
/// before it fails.
pub const MAX_ATTEMPTS: u32 = 5;
/// How long a backup may wait for its cluster to have a master before it
/// fails.
pub const PENDING_LIMIT: Duration = Duration::from_secs(3600);
/// Failed scheduled backups kept as a record; older ones are deleted, so
/// that a schedule failing every day does not pile up objects.
pub const FAILED_SCHEDULED_KEPT: usize = 3;
/// Most occurrences of a schedule looked at in one computation.
const SCHEDULE_SEARCH: usize = 100_000;

/// Parses a five-field cron schedule (minute hour day-of-month month
/// day-of-week; `@daily` and the like too).
pub fn parse_schedule(schedule: &str) -> Result<Cron, String> {
    CronParser::builder()
        .seconds(Seconds::Disallowed)
        .build()
        .parse(schedule)
        .map_err(|e| {
            format!("{schedule:?} is not a cron schedule of five fields such as \"0 3 * * *\": {e}")
        })
}

/// Parses a retention age: a number of minutes (`m`), hours (`h`) or days
/// (`d`).
pub fn parse_age(age: &str) -> Result<Duration, String> {
    let bad = || format!("{age:?} is not an age such as 30d, 12h or 90m");
    let unit = age.chars().last().ok_or_else(bad)?;
    let n: u64 = age[..age.len() - unit.len_utf8()]
        .parse()
        .map_err(|_| bad())?;
    let secs = match unit {
        'm' => 60,
        'h' => 3600,
        'd' => 86_400,
        _ => return Err(bad()),
    };
    if n == 0 {
        return Err(format!(
            "{age:?} would delete every base but the newest, leaving no recovery window; \
             give an age such as 30d, 12h or 90m"
        ));
    }
    Ok(Duration::from_secs(n.saturating_mul(secs)))
}

/// The fire time a backup is due for: the latest occurrence of `cron`
/// after `since` (the last scheduled fire time, or the cluster's creation)
/// and at or before `now`. Several missed occurrences (the operator was
/// down) give one backup, for the latest.
pub fn due_fire_time(cron: &Cron, since: Timestamp, now: Timestamp) -> Option<Timestamp> {
    let next = next_fire_time(cron, since)?;
    if next > now {
        return None;
    }
    let now_utc = now.to_zoned(TimeZone::UTC);
    let latest = cron
        .find_previous_occurrence(&now_utc, true)
        .ok()
        .map(|z| z.timestamp())
        .unwrap_or(next);
    Some(latest.max(next))
}

/// The first occurrence of `cron` strictly after `after`.
pub fn next_fire_time(cron: &Cron, after: Timestamp) -> Option<Timestamp> {
    let after_utc = after.to_zoned(TimeZone::UTC);
    cron.iter_after(after_utc)
        .take(SCHEDULE_SEARCH)
        .next()
        .map(|z| z.timestamp())
}

/// The name of the backup scheduled at `fire`: `<cluster>-<YYYYMMDDHHMMSS>`
/// (UTC).
pub fn scheduled_name(cluster: &str, fire: Timestamp) -> String {
    format!("{cluster}-{}", fire.strftime("%Y%m%d%H%M%S"))
}

/// The bases retention deletes: past the `keep` newest, or older than
/// `maxAge` at `now` (Unix seconds) but for the newest of those: a
/// recovery to a point just inside `maxAge` starts from the base before
/// it, so deleting that one would make the window shorter than promised.
/// The newest base is never deleted, whatever its age. `bases` may come in
/// any order; the answer is oldest first.
pub fn to_prune(bases: &[ArchivedBase], retention: &RetentionSpec, now: i64) -> Vec<String> {
    let max_age = retention
        .max_age
        .as_deref()
        .and_then(|a| parse_age(a).ok())
        .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX));
    let mut newest_first: Vec<&ArchivedBase> = bases.iter().collect();
    newest_first
        .sort_by(|a, b| (b.created_at, b.index, &b.name).cmp(&(a.created_at, a.index, &a.name)));
    let keep = retention.keep.map(|k| k.max(1) as usize);
    let too_old =
        |base: &ArchivedBase| max_age.is_some_and(|age| now.saturating_sub(base.created_at) > age);
    // The base a recovery to the window's oldest point starts from.
    let window_base = newest_first.iter().position(|b| too_old(b));
    let mut out: Vec<&ArchivedBase> = newest_first
        .iter()
        .enumerate()
        .skip(1)
        .filter(|(i, base)| {
            keep.is_some_and(|k| *i >= k) || (too_old(base) && Some(*i) != window_base)
        })
        .map(|(_, base)| *base)
        .collect();
    out.reverse();
    out.into_iter().map(|b| b.name.clone()).collect()
}

fn unix(t: i64) -> Time {
    Time(Timestamp::from_second(t).unwrap_or(Timestamp::UNIX_EPOCH))
}

/// Which base backup the schedule makes at `fire`, owned by `pkv` (so it
/// goes with the cluster, and its changes wake the cluster's reconcile).
pub fn scheduled_backup(pkv: &PaxosKV, fire: Timestamp) -> PaxosKVBackup {
    let name = pkv.name_any();
    let mut labels = render::selector_labels(&name);
    labels.insert("app.kubernetes.io/managed-by".into(), MANAGER.into());
    labels.insert(CLUSTER_LABEL.into(), name.clone());
    PaxosKVBackup {
        metadata: ObjectMeta {
            name: Some(scheduled_name(&name, fire)),
            namespace: pkv.namespace(),
            labels: Some(labels),
            owner_references: pkv.controller_owner_ref(&()).map(|o| vec![o]),
            ..ObjectMeta::default()
        },
        spec: PaxosKVBackupSpec { cluster: name },
        status: None,
    }
}

/// The `PaxosKVBackup`s of `pkv` that its schedule created (labelled and
/// owned by it) and that are no longer worth keeping: those Completed
/// whose base retention deleted (`pruned`: bases deleted by this pass, so
/// one completed since the archive was listed is never taken for pruned),
/// and Failed ones past the [`FAILED_SCHEDULED_KEPT`] newest. Backups a
/// person created are theirs to delete.
pub fn to_forget(pkv: &PaxosKV, backups: &[PaxosKVBackup], pruned: &[String]) -> Vec<String> {
    let name = pkv.name_any();
    let uid = pkv.uid();
    let scheduled = |b: &&PaxosKVBackup| {
        b.labels().get(CLUSTER_LABEL) == Some(&name)
            && b.owner_references()
                .iter()
                .any(|o| o.controller == Some(true) && Some(&o.uid) == uid.as_ref())
    };
    let phase = |b: &PaxosKVBackup| b.status.as_ref().and_then(|s| s.phase);
    let mut out: Vec<String> = backups
        .iter()
        .filter(scheduled)
        .filter(|b| phase(b) == Some(BackupPhase::Completed))
        .filter(|b| {
            b.status
                .as_ref()
                .and_then(|s| s.backup_name.as_ref())
                .is_some_and(|base| pruned.contains(base))
        })
        .map(ResourceExt::name_any)
        .collect();
    let mut failed: Vec<&PaxosKVBackup> = backups
        .iter()
        .filter(scheduled)
        .filter(|b| phase(b) == Some(BackupPhase::Failed))
        .collect();
    // Newest first; the name (the fire time) breaks ties.
    failed.sort_by_key(|b| {
        std::cmp::Reverse((
            b.status
                .as_ref()
                .and_then(|s| s.completed_at.as_ref())
                .map(|t| t.0),
            b.name_any(),
        ))
    });
    out.extend(
        failed
            .iter()
            .skip(FAILED_SCHEDULED_KEPT)
            .map(|b| b.name_any()),
    );
    out
}

// --- one PaxosKVBackup ------------------------------------------------------

/// Retries a failed backup reconcile after a pause.
pub fn error_policy(backup: Arc<PaxosKVBackup>, error: &Error, ctx: Arc<Context>) -> Action {
    tracing::warn!(paxoskvbackup = %backup.name_any(), error = %error, "backup reconcile failed");
    ctx.metrics.failure(error.kind());
    Action::requeue(Duration::from_secs(30))
}

/// Reconciles one `PaxosKVBackup`: asks a replica of its cluster for a
/// base backup and records the outcome. A Completed or Failed backup is
/// left alone.
///
/// The future is boxed here, so that this crate compiles it once: returned
/// unboxed, every crate that polls it (the binary, each test) compiled the
/// whole call tree again, about two and a half minutes of CPU each.
pub fn reconcile(
    backup: Arc<PaxosKVBackup>,
    ctx: Arc<Context>,
) -> futures_util::future::BoxFuture<'static, Result<Action, Error>> {
    Box::pin(reconcile_unboxed(backup, ctx))
}

/// [`reconcile`], unboxed.
#[tracing::instrument(skip_all, fields(paxoskvbackup = %backup.name_any(), namespace = backup.namespace().unwrap_or_default()))]
async fn reconcile_unboxed(backup: Arc<PaxosKVBackup>, ctx: Arc<Context>) -> Result<Action, Error> {
    let mut status = backup.status.clone().unwrap_or_default();
    if status.phase.is_some_and(BackupPhase::is_done) {
        return Ok(Action::await_change());
    }
    let ns = backup.namespace().ok_or(Error::NoNamespace)?;
    let cluster = backup.spec.cluster.clone();
    let now = Timestamp::now();
    let pkvs: Api<PaxosKV> = Api::namespaced(ctx.client.clone(), &ns);
    let Some(pkv) = pkvs.get_opt(&cluster).await? else {
        return fail(
            &ctx,
            &backup,
            status,
            now,
            &format!("there is no PaxosKV named {cluster} in namespace {ns}"),
        )
        .await;
    };
    let refusal = if pkv.spec.backup.is_none() {
        Some(format!(
            "PaxosKV {cluster} has no spec.backup: set spec.backup.destination so its replicas \
             have an archive"
        ))
    } else if pkv.spec.hibernation {
        Some(format!("PaxosKV {cluster} is hibernated: no replica runs"))
    } else {
        None
    };
    if let Some(message) = refusal {
        return fail(&ctx, &backup, status, now, &message).await;
    }
    let Some(pod) = replica_to_ask(&pkv) else {
        let why = format!("waiting for PaxosKV {cluster} to have a master");
        return wait_or_fail(&ctx, &backup, status, now, why).await;
    };
    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), &ns);
    let (names, http, token) = match access(&ctx, &secrets, &cluster, &ns).await? {
        Ok(access) => access,
        Err(why) => return wait_or_fail(&ctx, &backup, status, now, why).await,
    };

    // Running is written before the long call: a restarted operator sees
    // the attempt, and `kubectl get pkvb` shows it.
    status.phase = Some(BackupPhase::Running);
    status.started_at = status.started_at.or(Some(Time(now)));
    status.attempts += 1;
    status.message = Some(format!("{pod} is taking a base backup"));
    write_status(&ctx, &backup, &status).await?;

    let members = MembersClient::new(http, token);
    let url = (ctx.resolver)(&ns, &names, &pod);
    match members.take_backup(&url).await {
        Ok(base) => {
            let done = Timestamp::now();
            let message = format!(
                "base {} at revision {} (index {}, {} bytes) is in the archive",
                base.name, base.revision, base.index, base.bytes
            );
            status.phase = Some(BackupPhase::Completed);
            status.backup_name = Some(base.name.clone());
            status.revision = Some(base.revision);
            status.index = Some(base.index);
            status.bytes = Some(base.bytes);
            status.completed_at = Some(Time(done));
            status.message = Some(message.clone());
            status.conditions = vec![
                stamp(
                    &status.conditions,
                    backup.meta().generation,
                    cond("Complete", true, "Uploaded", &message),
                ),
                stamp(
                    &status.conditions,
                    backup.meta().generation,
                    cond("Failed", false, "Uploaded", &message),
                ),
            ];
            write_status(&ctx, &backup, &status).await?;
            ctx.metrics.step("backup");
            publish_to(
                &ctx,
                &backup.object_ref(&()),
                EventType::Normal,
                "BackupCompleted",
                "Backup",
                &format!("PaxosKV {cluster}: {message}"),
            )
            .await;
            Ok(Action::await_change())
        }
        Err(MembersError::Refused { code, message, .. }) if code == "no_archive" => {
            // spec.backup is set (checked above), so the replicas are
            // still restarting, one at a time, to pick the archive up: a
            // backup asked for as it was added waits for them, as for a
            // master, instead of failing for a day's schedule.
            let why = format!(
                "waiting for the replicas of PaxosKV {cluster} to run with the archive \
                 ({pod} said: {message})"
            );
            wait_or_fail(&ctx, &backup, status, now, why).await
        }
        Err(e) if is_final(&e) || status.attempts >= MAX_ATTEMPTS => {
            fail(&ctx, &backup, status, now, &e.to_string()).await
        }
        Err(e) => {
            status.message = Some(format!(
                "attempt {} of {MAX_ATTEMPTS}: {e}; trying again",
                status.attempts
            ));
            write_status(&ctx, &backup, &status).await?;
            Ok(Action::requeue(Duration::from_secs(30)))
        }
    }
}

/// How to reach the replicas of `cluster`: their names for this
/// transport, an HTTP client trusting their CA (with TLS) and the cluster
/// token; or what is missing, as a sentence (the operator writes the
/// Secrets as it reconciles the cluster, so a backup asked for at once
/// may come before them).
async fn access(
    ctx: &Context,
    secrets: &Api<Secret>,
    cluster: &str,
    ns: &str,
) -> Result<Result<(Names, reqwest::Client, String), String>, Error> {
    let names = Names::of(cluster);
    let token = secrets
        .get_opt(&names.token)
        .await?
        .and_then(|s| s.data)
        .and_then(|d| d.get(TOKEN_KEY).cloned())
        .and_then(|b| String::from_utf8(b.0).ok())
        .map(|t| t.trim().to_string())
        .filter(|t| t.len() >= 16);
    let Some(token) = token else {
        return Ok(Err(format!(
            "waiting for Secret {} to hold the cluster token (key {TOKEN_KEY}, at least 16 \
             characters)",
            names.token
        )));
    };
    // A TLS cluster has its certificate Secret, with the CA to trust; a
    // plain one (or one whose certificate cert-manager has yet to write,
    // and whose replicas cannot run yet either) has none.
    let tls = secrets
        .get_opt(&names.tls)
        .await?
        .and_then(|s| crate::certs::ClusterTls::from_secret(&s));
    Ok(match &tls {
        Some(tls) => match tls.http_client() {
            Ok(http) => Ok((
                Names::with_transport(cluster, ns, Transport::Tls),
                http,
                token,
            )),
            Err(e) => Err(format!("waiting for a usable Secret {}: {e}", names.tls)),
        },
        None => Ok((names, ctx.http.clone(), token)),
    })
}

/// Leaves `backup` Pending with `why`, to look again in a while; fails it
/// once it has waited [`PENDING_LIMIT`].
async fn wait_or_fail(
    ctx: &Context,
    backup: &PaxosKVBackup,
    mut status: PaxosKVBackupStatus,
    now: Timestamp,
    why: String,
) -> Result<Action, Error> {
    let waited = waited(backup, now);
    if waited.unsigned_abs() > PENDING_LIMIT {
        let message = format!("gave up after {}s: {why}", waited.as_secs());
        return fail(ctx, backup, status, now, &message).await;
    }
    status.phase = Some(BackupPhase::Pending);
    status.message = Some(why);
    write_status(ctx, backup, &status).await?;
    Ok(Action::requeue(Duration::from_secs(15)))
}

/// A replica of `pkv` to ask: its master, else a healthy member, as its
/// status last reported them.
fn replica_to_ask(pkv: &PaxosKV) -> Option<String> {
    let status = pkv.status.as_ref()?;
    status.master.clone().or_else(|| {
        status
            .members
            .iter()
            .find(|m| m.healthy && m.role == "voter")
            .map(|m| m.name.clone())
    })
}

/// How long `backup` has existed at `now`.
fn waited(backup: &PaxosKVBackup, now: Timestamp) -> SignedDuration {
    backup
        .meta()
        .creation_timestamp
        .as_ref()
        .map(|t| now.duration_since(t.0))
        .unwrap_or(SignedDuration::ZERO)
}

/// An answer that trying again does not change: the request was refused
/// (no archive, not authorized, bad request), as opposed to a replica that
/// did not answer, had no master (503) or timed out.
fn is_final(e: &MembersError) -> bool {
    matches!(e, MembersError::Refused { status, .. }
        if (400..500).contains(status) && *status != 408 && *status != 429)
}

async fn fail(
    ctx: &Context,
    backup: &PaxosKVBackup,
    mut status: PaxosKVBackupStatus,
    now: Timestamp,
    message: &str,
) -> Result<Action, Error> {
    status.phase = Some(BackupPhase::Failed);
    status.completed_at = Some(Time(now));
    status.message = Some(message.to_string());
    status.conditions = vec![
        stamp(
            &status.conditions,
            backup.meta().generation,
            cond("Complete", false, "BackupFailed", message),
        ),
        stamp(
            &status.conditions,
            backup.meta().generation,
            cond("Failed", true, "BackupFailed", message),
        ),
    ];
    write_status(ctx, backup, &status).await?;
    ctx.metrics.failure("backup");
    publish_to(
        ctx,
        &backup.object_ref(&()),
        EventType::Warning,
        "BackupFailed",
        "Backup",
        &format!("PaxosKV {}: {message}", backup.spec.cluster),
    )
    .await;
    Ok(Action::await_change())
}

async fn write_status(
    ctx: &Context,
    backup: &PaxosKVBackup,
    status: &PaxosKVBackupStatus,
) -> Result<(), Error> {
    let ns = backup.namespace().ok_or(Error::NoNamespace)?;
    let api: Api<PaxosKVBackup> = Api::namespaced(ctx.client.clone(), &ns);
    let patch = serde_json::json!({
        "apiVersion": PaxosKVBackup::api_version(&()),
        "kind": PaxosKVBackup::kind(&()),
        "status": status,
    });
    api.patch_status(
        &backup.name_any(),
        &PatchParams::apply(MANAGER).force(),
        &Patch::Apply(&patch),
    )
    .await?;
    Ok(())
}

// --- a cluster's backups ----------------------------------------------------

/// What one pass did about a cluster's backups.
#[derive(Clone, Debug)]
pub struct ClusterBackups {
    /// `status.backup`.
    pub status: BackupStatus,
    /// `BackupHealthy`.
    pub condition: Condition,
    /// When to look again for the next fire time.
    pub next: Option<Duration>,
}

/// The schedule, the retention and the status of `pkv`'s backups (which
/// has `spec.backup`). Failures do not fail the pass: they make
/// `BackupHealthy` False, with a Warning event when it becomes so.
pub async fn cluster_pass(
    ctx: &Context,
    pkv: &PaxosKV,
    ns: &str,
    members: &MembersClient,
    view: &ClusterView,
) -> Option<ClusterBackups> {
    let spec = pkv.spec.backup.as_ref()?;
    let name = pkv.name_any();
    let now = Timestamp::now();
    let old_status = pkv.status.as_ref();
    let old = old_status
        .and_then(|s| s.backup.clone())
        .unwrap_or_default();
    let mut status = BackupStatus {
        archive_url: spec.archive_url(ns, &name),
        ..old.clone()
    };
    let mut problems: Vec<(&str, String)> = Vec::new();
    let mut next = None;

    let api: Api<PaxosKVBackup> = Api::namespaced(ctx.client.clone(), ns);
    let mut listed = None;
    match api.list(&ListParams::default()).await {
        Ok(list) => {
            let ours: Vec<&PaxosKVBackup> = list
                .items
                .iter()
                .filter(|b| b.spec.cluster == name)
                .collect();
            let phase = |b: &PaxosKVBackup| b.status.as_ref().and_then(|s| s.phase);
            let finished = |b: &PaxosKVBackup| {
                b.status
                    .as_ref()
                    .and_then(|s| s.completed_at.as_ref())
                    .map(|t| t.0)
            };
            let completed = ours
                .iter()
                .filter(|b| phase(b) == Some(BackupPhase::Completed))
                .max_by_key(|b| finished(b));
            if let Some(b) = completed
                && let Some(s) = &b.status
            {
                status.last_successful_backup = Some(BackupRef {
                    name: s.backup_name.clone().unwrap_or_else(|| b.name_any()),
                    revision: s.revision.unwrap_or_default(),
                    time: s.completed_at.clone().unwrap_or(Time(now)),
                });
            }
            let newest_done = ours
                .iter()
                .filter(|b| phase(b).is_some_and(BackupPhase::is_done))
                .max_by_key(|b| finished(b));
            if let Some(b) = newest_done
                && phase(b) == Some(BackupPhase::Failed)
            {
                let why = b
                    .status
                    .as_ref()
                    .and_then(|s| s.message.clone())
                    .unwrap_or_default();
                problems.push((
                    "BackupFailed",
                    format!("the last backup, {}, failed: {why}", b.name_any()),
                ));
            }
            let outstanding = ours
                .iter()
                .find(|b| !phase(b).is_some_and(BackupPhase::is_done))
                .map(|b| b.name_any());
            if let Some(schedule) = &spec.schedule {
                match parse_schedule(schedule) {
                    Ok(cron) => {
                        let since = old
                            .last_schedule_time
                            .as_ref()
                            .map(|t| t.0)
                            .or_else(|| pkv.meta().creation_timestamp.as_ref().map(|t| t.0))
                            .unwrap_or(now);
                        let mut after = since;
                        if let Some(fire) = due_fire_time(&cron, since, now) {
                            if let Some(other) = &outstanding {
                                tracing::info!(
                                    backup = %other,
                                    "a scheduled backup is due but another has not finished"
                                );
                            } else {
                                match create_scheduled(ctx, pkv, ns, fire).await {
                                    Ok(created) => {
                                        status.last_schedule_time = Some(Time(fire));
                                        after = fire;
                                        if created {
                                            publish_to(
                                                ctx,
                                                &pkv.object_ref(&()),
                                                EventType::Normal,
                                                "BackupScheduled",
                                                "Backup",
                                                &format!(
                                                    "created PaxosKVBackup {} for the schedule {schedule}",
                                                    scheduled_name(&name, fire)
                                                ),
                                            )
                                            .await;
                                        }
                                    }
                                    Err(e) => problems.push((
                                        "ScheduleFailed",
                                        format!("creating the scheduled backup: {e}"),
                                    )),
                                }
                            }
                        }
                        next = next_fire_time(&cron, after.max(now))
                            .map(|t| t.duration_since(now).unsigned_abs());
                    }
                    Err(e) => problems.push(("InvalidSchedule", e)),
                }
            }
            listed = Some(list.items);
        }
        Err(e) => problems.push(("ScheduleFailed", format!("listing PaxosKVBackups: {e}"))),
    }

    // The archive, through a replica, once there is a master to ask.
    let mut pruned = Vec::new();
    if let (Some(_), Some(via)) = (&view.master, view.via()) {
        match members.list_backups(via).await {
            Ok(listing) => {
                record_listing(&mut status, &listing);
                if let Some(e) = &listing.archive_error {
                    // Continuous archiving stopped: no scheduled backup
                    // may fail for a day to show it.
                    problems.push(("ArchivingFailed", format!("archiving failed: {e}")));
                }
                let prune = to_prune(&listing.backups, &spec.retention, now.as_second());
                for base in &prune {
                    match members.delete_backup(via, base).await {
                        Ok(()) => pruned.push(base.clone()),
                        Err(e) => {
                            problems.push(("RetentionFailed", format!("deleting base {base}: {e}")))
                        }
                    }
                }
                if !pruned.is_empty() {
                    ctx.metrics.step("prune_backups");
                    publish_to(
                        ctx,
                        &pkv.object_ref(&()),
                        EventType::Normal,
                        "BackupsPruned",
                        "Retention",
                        &format!(
                            "deleted {} base backup(s) past the retention: {}",
                            pruned.len(),
                            pruned.join(", ")
                        ),
                    )
                    .await;
                }
            }
            Err(MembersError::Refused { code, .. }) if code == "no_archive" => problems.push((
                "NoArchive",
                "the replicas have no archive yet: they start archiving once each runs the \
                 template with PHXKV_ARCHIVE_URL"
                    .into(),
            )),
            Err(e) => problems.push(("ArchiveUnavailable", format!("listing the archive: {e}"))),
        }
    }

    // The schedule's own records of what no longer exists, and of old
    // failures: without this they would grow by one a fire time, forever.
    if let Some(backups) = &listed {
        for gone in to_forget(pkv, backups, &pruned) {
            match api.delete(&gone, &Default::default()).await {
                Ok(_) => {
                    tracing::info!(paxoskvbackup = %gone, "deleted a scheduled backup's record")
                }
                Err(kube::Error::Api(e)) if e.code == 404 => {}
                Err(e) => tracing::warn!(
                    paxoskvbackup = %gone,
                    error = %e,
                    "could not delete a scheduled backup's record"
                ),
            }
        }
    }

    let condition = match problems.first() {
        None => cond(
            "BackupHealthy",
            true,
            "Archiving",
            &format!(
                "archiving to {}; {}; last backup: {}",
                status.archive_url,
                status
                    .archive_lag
                    .map(|l| format!("{l} entries behind"))
                    .unwrap_or_else(|| "lag not known yet".into()),
                status
                    .last_successful_backup
                    .as_ref()
                    .map(|b| format!("{} at revision {}", b.name, b.revision))
                    .unwrap_or_else(|| "none yet".into())
            ),
        ),
        Some((reason, _)) => cond(
            "BackupHealthy",
            false,
            reason,
            &problems
                .iter()
                .map(|(_, m)| m.as_str())
                .collect::<Vec<_>>()
                .join("; "),
        ),
    };
    let was_false = old_status
        .and_then(|s| s.conditions.iter().find(|c| c.type_ == "BackupHealthy"))
        .is_some_and(|c| c.status == "False" && c.reason == condition.reason);
    if condition.status == "False" && !was_false {
        publish_to(
            ctx,
            &pkv.object_ref(&()),
            EventType::Warning,
            "BackupUnhealthy",
            "Backup",
            &condition.message,
        )
        .await;
    }
    Some(ClusterBackups {
        status,
        condition,
        next,
    })
}

/// The archive's range and lag into the status.
fn record_listing(status: &mut BackupStatus, listing: &ArchiveListing) {
    status.archive_lag = listing.archive_lag;
    status.first_recoverable = listing.recoverable.as_ref().map(|r| RecoverablePoint {
        revision: r.first.revision,
        time: unix(r.first.time),
    });
    status.last_recoverable = listing.recoverable.as_ref().map(|r| RecoverablePoint {
        revision: r.last.revision,
        time: unix(r.last.time),
    });
    let point = |p: &crate::members::ArchivePoint| RecoverablePoint {
        revision: p.revision,
        time: unix(p.time),
    };
    // Only gaps are news: one stretch is what first and last say.
    status.recoverable_ranges = if listing.recoverable_ranges.len() > 1 {
        listing
            .recoverable_ranges
            .iter()
            .map(|r| RecoverableRange {
                first: point(&r.first),
                last: point(&r.last),
            })
            .collect()
    } else {
        Vec::new()
    };
}

/// Creates the backup scheduled at `fire`; true when created, false when
/// it already existed (a pass that created it and failed before writing
/// the status).
async fn create_scheduled(
    ctx: &Context,
    pkv: &PaxosKV,
    ns: &str,
    fire: Timestamp,
) -> Result<bool, kube::Error> {
    let api: Api<PaxosKVBackup> = Api::namespaced(ctx.client.clone(), ns);
    match api
        .create(&PostParams::default(), &scheduled_backup(pkv, fire))
        .await
    {
        Ok(_) => Ok(true),
        Err(kube::Error::Api(e)) if e.code == 409 => Ok(false),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> Timestamp {
        s.parse().expect("a timestamp")
    }

    fn base(name: &str, created_at: i64) -> ArchivedBase {
        ArchivedBase {
            name: name.into(),
            revision: created_at as u64,
            index: created_at as u64,
            created_at,
            bytes: 1,
        }
    }

    #[test]
    fn a_schedule_fires_once_its_next_time_after_the_last_has_passed() {
        let daily = parse_schedule("0 3 * * *").expect("parses");
        let last = t("2026-01-10T03:00:00Z");
        assert_eq!(due_fire_time(&daily, last, t("2026-01-11T02:59:59Z")), None);
        assert_eq!(
            due_fire_time(&daily, last, t("2026-01-11T03:00:00Z")),
            Some(t("2026-01-11T03:00:00Z"))
        );
        assert_eq!(
            due_fire_time(&daily, last, t("2026-01-11T09:30:00Z")),
            Some(t("2026-01-11T03:00:00Z"))
        );
        assert_eq!(
            next_fire_time(&daily, t("2026-01-11T03:00:00Z")),
            Some(t("2026-01-12T03:00:00Z"))
        );
    }

    #[test]
    fn missed_fire_times_give_one_backup_for_the_latest() {
        let hourly = parse_schedule("0 * * * *").expect("parses");
        let last = t("2026-01-10T03:00:00Z");
        assert_eq!(
            due_fire_time(&hourly, last, t("2026-01-10T07:15:00Z")),
            Some(t("2026-01-10T07:00:00Z"))
        );
        // Once recorded, nothing is due until the next hour.
        let recorded = t("2026-01-10T07:00:00Z");
        assert_eq!(
            due_fire_time(&hourly, recorded, t("2026-01-10T07:59:00Z")),
            None
        );
    }

    #[test]
    fn schedules_are_five_fields_and_aliases_and_bad_ones_are_named() {
        assert!(parse_schedule("*/15 * * * *").is_ok());
        assert!(parse_schedule("@daily").is_ok());
        for bad in ["0 0 3 * * *", "every day", "61 * * * *", ""] {
            let e = parse_schedule(bad).expect_err(bad);
            assert!(e.contains("cron schedule"), "{e}");
        }
    }

    #[test]
    fn scheduled_backups_are_named_after_their_fire_time() {
        assert_eq!(
            scheduled_name("kv", t("2026-01-11T03:04:05Z")),
            "kv-20260111030405"
        );
    }

    #[test]
    fn ages_are_minutes_hours_or_days() {
        assert_eq!(parse_age("30d"), Ok(Duration::from_secs(30 * 86_400)));
        assert_eq!(parse_age("12h"), Ok(Duration::from_secs(12 * 3600)));
        assert_eq!(parse_age("90m"), Ok(Duration::from_secs(90 * 60)));
        for bad in ["", "d", "3w", "-1d", "1.5h", "0m", "00d"] {
            assert!(parse_age(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn retention_keeps_the_newest_n_and_drops_the_old_but_never_the_newest() {
        let day = 86_400;
        let now = 100 * day;
        let bases = vec![
            base("a", now - 40 * day),
            base("b", now - 20 * day),
            base("c", now - 10 * day),
            base("d", now - day),
        ];
        let keep = |keep, age: Option<&str>| RetentionSpec {
            keep,
            max_age: age.map(str::to_string),
        };
        assert_eq!(
            to_prune(&bases, &keep(None, None), now),
            Vec::<String>::new()
        );
        assert_eq!(to_prune(&bases, &keep(Some(2), None), now), ["a", "b"]);
        // b (20 days old) is where a recovery to 15 days ago starts: kept.
        assert_eq!(to_prune(&bases, &keep(None, Some("15d")), now), ["a"]);
        assert_eq!(
            to_prune(&bases, &keep(None, Some("50d")), now),
            Vec::<String>::new()
        );
        assert_eq!(to_prune(&bases, &keep(Some(3), Some("30d")), now), ["a"]);
        assert_eq!(
            to_prune(&bases, &keep(Some(2), Some("15d")), now),
            ["a", "b"]
        );
        // Everything is older than a day: only the newest stays.
        assert_eq!(
            to_prune(&bases, &keep(None, Some("1h")), now),
            ["a", "b", "c"]
        );
        // A single old base is the newest: kept.
        assert!(to_prune(&bases[..1], &keep(Some(1), Some("1m")), now).is_empty());
        // Order of the listing does not matter.
        let mut shuffled = bases.clone();
        shuffled.reverse();
        assert_eq!(to_prune(&shuffled, &keep(Some(2), None), now), ["a", "b"]);
    }
}
