//! Backups against the in-memory API server (`support::FakeApi`) and a
//! fake phxkv on loopback that answers the cluster and backup endpoints:
//! a schedule that fires creates one `PaxosKVBackup` and never a second
//! while one is outstanding; a backup completes or fails once, with its
//! status and event; retention deletes exactly the bases past `keep` and
//! `maxAge`, never the newest; a recovered cluster starts with one
//! bootstrap replica whose first pod alone restores, and the recovery ends
//! once it runs.

mod support;

use std::sync::{Arc, Mutex};

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use axum::routing::{delete, get};
use axum::{Json, Router};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::runtime::controller::Action;
use phxkv_operator::backup;
use phxkv_operator::controller::{self, Context};
use phxkv_operator::crd::{PaxosKV, PaxosKVBackup, PaxosKVSpec};
use phxkv_operator::metrics::OperatorMetrics;
use serde_json::{Value, json};
use support::FakeApi;

const NS: &str = "/api/v1/namespaces/db";
const APPS: &str = "/apis/apps/v1/namespaces/db";
const PKVS: &str = "/apis/phxkv.io/v1alpha1/namespaces/db/paxoskvs";
const BACKUPS: &str = "/apis/phxkv.io/v1alpha1/namespaces/db/paxoskvbackups";
const EVENTS: &str = "/apis/events.k8s.io/v1/namespaces/db/events";

/// What the fake phxkv answers and what it was asked.
#[derive(Default)]
struct Fake {
    /// Whether a replica reports a master.
    master: Mutex<bool>,
    /// The answer to `POST /v1/admin/backups`: status and body.
    backup_answer: Mutex<Option<(u16, Value)>>,
    /// Bases the archive lists.
    bases: Mutex<Vec<Value>>,
    /// Backups asked for, with the authorization presented.
    taken: Mutex<Vec<Option<String>>>,
    /// Bases deleted.
    deleted: Mutex<Vec<String>>,
    /// The archiver's last error, as the master reports it.
    archive_error: Mutex<Option<String>>,
}

fn member(name: &str, master: bool) -> Value {
    let ordinal: u64 = name.trim_start_matches("kv-").parse().unwrap_or(9);
    json!({"name": name, "id": format!("{:016x}", ordinal + 1), "role": "voter",
           "peer_url": format!("http://{name}.kv-peers:8081"), "is_master": master,
           "commit_index": 10, "healthy": true})
}

async fn fake_phxkv(fake: Arc<Fake>) -> String {
    async fn cluster(State(f): State<Arc<Fake>>, Path(pod): Path<String>) -> Json<Value> {
        let master = *f.master.lock().expect("lock");
        let members = if master {
            vec![
                member("kv-0", true),
                member("kv-1", false),
                member("kv-2", false),
            ]
        } else {
            vec![]
        };
        Json(
            json!({"cluster_id": "kv.db", "node": pod, "node_id": "0000000000000001",
                   "node_state": "member", "node_state_reason": null,
                   "master": if master { json!("kv-0") } else { Value::Null },
                   "lease_remaining_ms": 900, "revision": 5, "applied_index": 10,
                   "commit_index": 10, "members": members}),
        )
    }
    async fn take(State(f): State<Arc<Fake>>, headers: HeaderMap) -> (StatusCode, Json<Value>) {
        let auth = headers
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        f.taken.lock().expect("lock").push(auth);
        let (status, body) = f.backup_answer.lock().expect("lock").clone().unwrap_or((
            503,
            json!({"error": {"code": "unavailable", "message": "no master"}}),
        ));
        (
            StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
            Json(body),
        )
    }
    async fn list(State(f): State<Arc<Fake>>) -> Json<Value> {
        let bases = f.bases.lock().expect("lock").clone();
        let archive_error = f.archive_error.lock().expect("lock").clone();
        Json(
            json!({"archive_url": "s3://backups/prod/db/kv", "backups": bases,
                    "archive_error": archive_error,
                    "recoverable": {"first": {"revision": 3, "index": 30, "time": 1_767_225_600},
                                    "last": {"revision": 90, "index": 900, "time": 1_767_312_000}},
                    // A gap: revisions 41 to 59 were in segments lost.
                    "recoverable_ranges": [
                        {"first": {"revision": 3, "index": 30, "time": 1_767_225_600},
                         "last": {"revision": 40, "index": 400, "time": 1_767_260_000}},
                        {"first": {"revision": 60, "index": 600, "time": 1_767_290_000},
                         "last": {"revision": 90, "index": 900, "time": 1_767_312_000}}],
                    "archived_index": 900, "archive_lag": 4}),
        )
    }
    async fn remove(
        State(f): State<Arc<Fake>>,
        Path((_pod, name)): Path<(String, String)>,
    ) -> impl IntoResponse {
        f.deleted.lock().expect("lock").push(name.clone());
        f.bases.lock().expect("lock").retain(|b| b["name"] != name);
        StatusCode::NO_CONTENT
    }
    let app = Router::new()
        .route("/pods/{pod}/v1/cluster", get(cluster))
        .route("/pods/{pod}/v1/admin/backups", get(list).post(take))
        .route("/pods/{pod}/v1/admin/backups/{name}", delete(remove))
        .with_state(fake);
    support::serve(app).await
}

fn context(client: kube::Client, url: String) -> Arc<Context> {
    support::context(client, support::pods_at(url), OperatorMetrics::new())
}

/// A PaxosKV `kv` created at the start of 2026, stored in the fake.
fn paxoskv(api: &FakeApi, spec: Value, status: Value) -> PaxosKV {
    let spec: PaxosKVSpec = serde_json::from_value(spec).expect("spec");
    let mut pkv = PaxosKV::new("kv", spec);
    pkv.metadata.namespace = Some("db".into());
    pkv.metadata.uid = Some("0000-1111".into());
    pkv.metadata.generation = Some(1);
    pkv.metadata.creation_timestamp = Some(Time("2026-01-01T00:00:00Z".parse().expect("time")));
    pkv.status = serde_json::from_value(status).expect("status");
    api.put(
        &format!("{PKVS}/kv"),
        serde_json::to_value(&pkv).expect("pkv"),
    );
    pkv
}

/// The PaxosKV as the fake now holds it (status written by the passes).
fn stored(api: &FakeApi) -> PaxosKV {
    serde_json::from_value(api.get(&format!("{PKVS}/kv")).expect("stored")).expect("a PaxosKV")
}

/// The running cluster's StatefulSet, pods and token.
fn running_cluster(api: &FakeApi) {
    let ours = json!([{"apiVersion": "phxkv.io/v1alpha1", "kind": "PaxosKV", "name": "kv",
                       "uid": "0000-1111", "controller": true, "blockOwnerDeletion": true}]);
    api.put(
        &format!("{APPS}/statefulsets/kv"),
        json!({"apiVersion": "apps/v1", "kind": "StatefulSet",
               "metadata": {"name": "kv", "namespace": "db", "ownerReferences": ours},
               "spec": {"replicas": 3, "selector": {}, "serviceName": "kv-peers", "template": {}},
               "status": {"replicas": 3, "readyReplicas": 3, "updateRevision": "kv-rev1"}}),
    );
    for i in 0..3 {
        api.put(
            &format!("{NS}/pods/kv-{i}"),
            json!({"apiVersion": "v1", "kind": "Pod",
                   "metadata": {"name": format!("kv-{i}"), "namespace": "db",
                                "labels": {"app.kubernetes.io/name": "phxkv",
                                           "app.kubernetes.io/instance": "kv",
                                           "controller-revision-hash": "kv-rev1"}},
                   "status": {"conditions": [{"type": "Ready", "status": "True"}]}}),
        );
    }
    api.put(
        &format!("{NS}/secrets/kv-token"),
        json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "kv-token"},
               "data": {"token": "c2VjcmV0LXRva2VuLTAxMjM0NTY3ODk="}}),
    );
}

fn events(api: &FakeApi) -> Vec<(String, String)> {
    api.log()
        .iter()
        .filter(|s| s.method == "POST" && s.route() == EVENTS)
        .map(|s| {
            (
                s.body["reason"].as_str().unwrap_or_default().to_string(),
                s.body["note"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect()
}

fn condition(pkv: &PaxosKV, type_: &str) -> (String, String, String) {
    pkv.status
        .as_ref()
        .and_then(|s| s.conditions.iter().find(|c| c.type_ == type_))
        .map(|c| (c.status.clone(), c.reason.clone(), c.message.clone()))
        .unwrap_or_default()
}

fn backup_spec() -> Value {
    json!({"replicas": 3, "backup": {"destination": {"url": "s3://backups/prod",
           "credentialsSecret": {"name": "s3"}}, "schedule": "0 * * * *"}})
}

#[tokio::test]
async fn a_due_schedule_creates_one_owned_backup_and_never_a_second_while_it_runs() {
    let api = FakeApi::new();
    let fake = Arc::new(Fake::default());
    *fake.master.lock().expect("lock") = true;
    let ctx = context(api.client("db"), fake_phxkv(fake.clone()).await);
    running_cluster(&api);
    let pkv = paxoskv(&api, backup_spec(), json!({}));

    controller::reconcile(Arc::new(pkv.clone()), ctx.clone())
        .await
        .expect("reconciled");
    let created: Vec<Value> = api
        .log()
        .iter()
        .filter(|s| s.method == "POST" && s.route() == BACKUPS)
        .map(|s| s.body.clone())
        .collect();
    assert_eq!(created.len(), 1, "one backup for the schedule");
    let b = &created[0];
    let name = b["metadata"]["name"].as_str().expect("a name");
    assert!(
        name.starts_with("kv-2") && name.len() == "kv-".len() + 14,
        "kv-<YYYYMMDDHHMMSS>: {name}"
    );
    assert!(name.ends_with("0000"), "on the hour: {name}");
    assert_eq!(b["spec"]["cluster"], "kv");
    assert_eq!(b["metadata"]["ownerReferences"][0]["kind"], "PaxosKV");
    assert_eq!(b["metadata"]["ownerReferences"][0]["controller"], true);
    assert_eq!(b["metadata"]["labels"]["phxkv.io/cluster"], "kv");
    assert_eq!(
        b["metadata"]["labels"]["app.kubernetes.io/managed-by"],
        "phxkv-operator"
    );
    assert!(events(&api).iter().any(|(r, _)| r == "BackupScheduled"));
    let after = stored(&api);
    let status = after
        .status
        .as_ref()
        .and_then(|s| s.backup.clone())
        .expect("status.backup");
    assert_eq!(status.archive_url, "s3://backups/prod/db/kv");
    assert!(status.last_schedule_time.is_some());
    assert_eq!(status.archive_lag, Some(4));
    assert_eq!(
        status.last_recoverable.as_ref().map(|p| p.revision),
        Some(90)
    );
    // The gap shows: the stretches either side of it.
    let ranges: Vec<(u64, u64)> = status
        .recoverable_ranges
        .iter()
        .map(|r| (r.first.revision, r.last.revision))
        .collect();
    assert_eq!(ranges, vec![(3, 40), (60, 90)]);

    // The same fire time again (a pass that lost its status): the backup
    // scheduled for it has not finished, so nothing new is created.
    controller::reconcile(Arc::new(pkv), ctx.clone())
        .await
        .expect("reconciled");
    // And with the status recorded, nothing is due before the next hour.
    let action = controller::reconcile(Arc::new(stored(&api)), ctx)
        .await
        .expect("reconciled");
    let posts = api
        .log()
        .iter()
        .filter(|s| s.method == "POST" && s.route() == BACKUPS)
        .count();
    assert_eq!(posts, 1, "never a second backup while one is outstanding");
    assert!(action != Action::await_change());
    let pods = api.get(&format!("{APPS}/statefulsets/kv")).expect("set");
    let env = &pods["spec"]["template"]["spec"]["containers"][0];
    assert!(
        env["env"]
            .as_array()
            .expect("env")
            .iter()
            .any(|e| e["name"] == "PHXKV_ARCHIVE_URL" && e["value"] == "s3://backups/prod/db/kv"),
        "{env}"
    );
    assert_eq!(env["envFrom"][0]["secretRef"]["name"], "s3");
}

fn one_off(api: &FakeApi, name: &str, cluster: &str) -> PaxosKVBackup {
    api.put(
        &format!("{BACKUPS}/{name}"),
        json!({"apiVersion": "phxkv.io/v1alpha1", "kind": "PaxosKVBackup",
               "metadata": {"name": name, "namespace": "db", "uid": format!("uid-{name}"),
                            "creationTimestamp": "2026-01-01T00:00:00Z"},
               "spec": {"cluster": cluster}}),
    );
    stored_backup(api, name)
}

/// Creates `PaxosKVBackup` `name` of cluster kv, made just now, reconciles
/// it once and checks that it waits as Pending (a wait, not an error
/// retried without a status); its message.
async fn a_new_backup_waits(api: &FakeApi, ctx: &Arc<Context>, name: &str) -> String {
    api.put(
        &format!("{BACKUPS}/{name}"),
        json!({"apiVersion": "phxkv.io/v1alpha1", "kind": "PaxosKVBackup",
               "metadata": {"name": name, "namespace": "db", "uid": format!("uid-{name}"),
                            "creationTimestamp": k8s_openapi::jiff::Timestamp::now().to_string()},
               "spec": {"cluster": "kv"}}),
    );
    let action = backup::reconcile(Arc::new(stored_backup(api, name)), ctx.clone())
        .await
        .expect("a wait is not an error");
    assert_ne!(action, Action::await_change());
    let status = stored_backup(api, name).status.expect("status");
    assert_eq!(
        serde_json::to_value(status.phase).expect("phase"),
        "Pending"
    );
    status.message.unwrap_or_default()
}

fn stored_backup(api: &FakeApi, name: &str) -> PaxosKVBackup {
    serde_json::from_value(api.get(&format!("{BACKUPS}/{name}")).expect("stored"))
        .expect("a PaxosKVBackup")
}

fn running_status() -> Value {
    json!({"master": "kv-0", "members": [
        {"name": "kv-0", "id": "0000000000000001", "role": "voter", "healthy": true}]})
}

/// A running cluster whose master answers a backup with base 12345.
async fn cluster_that_takes_backups() -> (FakeApi, Arc<Fake>, Arc<Context>) {
    let api = FakeApi::new();
    let fake = Arc::new(Fake::default());
    *fake.backup_answer.lock().expect("lock") = Some((
        201,
        json!({"name": "00000000000000012345-1767312000", "revision": 123, "index": 12345,
               "created_at": 1_767_312_000, "bytes": 4096}),
    ));
    let ctx = context(api.client("db"), fake_phxkv(fake.clone()).await);
    running_cluster(&api);
    paxoskv(&api, backup_spec(), running_status());
    (api, fake, ctx)
}

#[tokio::test]
async fn a_backup_completes_once_with_its_result_and_an_event() {
    let (api, fake, ctx) = cluster_that_takes_backups().await;
    let b = one_off(&api, "nightly", "kv");

    let action = backup::reconcile(Arc::new(b), ctx.clone())
        .await
        .expect("reconciled");
    assert_eq!(action, Action::await_change());
    let done = stored_backup(&api, "nightly");
    let status = done.status.expect("status");
    assert_eq!(
        serde_json::to_value(status.phase).expect("phase"),
        "Completed"
    );
    assert_eq!(
        status.backup_name.as_deref(),
        Some("00000000000000012345-1767312000")
    );
    assert_eq!((status.revision, status.index), (Some(123), Some(12345)));
    assert!(status.started_at.is_some() && status.completed_at.is_some());
    assert!(
        status
            .conditions
            .iter()
            .any(|c| c.type_ == "Complete" && c.status == "True")
    );
    let evs = events(&api);
    assert!(
        evs.iter()
            .any(|(r, n)| r == "BackupCompleted" && n.contains("revision 123")),
        "{evs:?}"
    );
    assert_eq!(
        fake.taken.lock().expect("lock").as_slice(),
        [Some("Bearer secret-token-0123456789".to_string())],
        "asked once, with the cluster token"
    );

    // Done is done: another pass asks nothing.
    let again = backup::reconcile(Arc::new(stored_backup(&api, "nightly")), ctx)
        .await
        .expect("reconciled");
    assert_eq!(again, Action::await_change());
    assert_eq!(fake.taken.lock().expect("lock").len(), 1);
}

#[tokio::test]
async fn a_backup_waits_pending_for_a_usable_token_secret_and_says_which() {
    let (api, fake, ctx) = cluster_that_takes_backups().await;
    // A token too short to be the operator's (as if edited by hand).
    api.put(
        &format!("{NS}/secrets/kv-token"),
        json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "kv-token"},
               "data": {"token": "c2hvcnQ="}}),
    );
    let message = a_new_backup_waits(&api, &ctx, "early").await;
    assert!(
        message.contains("Secret kv-token") && message.contains("token"),
        "{message}"
    );
    assert!(fake.taken.lock().expect("lock").is_empty(), "nothing asked");

    // Once the Secret is right, the backup runs.
    running_cluster(&api);
    backup::reconcile(Arc::new(stored_backup(&api, "early")), ctx.clone())
        .await
        .expect("reconciled");
    let status = stored_backup(&api, "early").status.expect("status");
    assert_eq!(
        serde_json::to_value(status.phase).expect("phase"),
        "Completed"
    );

    // One that has waited past the limit fails, saying for what.
    api.put(
        &format!("{NS}/secrets/kv-token"),
        json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "kv-token"},
               "data": {}}),
    );
    let late = one_off(&api, "late", "kv");
    backup::reconcile(Arc::new(late), ctx)
        .await
        .expect("reconciled");
    let status = stored_backup(&api, "late").status.expect("status");
    assert_eq!(serde_json::to_value(status.phase).expect("phase"), "Failed");
    let message = status.message.unwrap_or_default();
    assert!(
        message.starts_with("gave up after") && message.contains("Secret kv-token"),
        "{message}"
    );
}

#[tokio::test]
async fn a_backup_the_server_refuses_fails_once_with_the_reason_and_a_warning() {
    let api = FakeApi::new();
    let fake = Arc::new(Fake::default());
    *fake.backup_answer.lock().expect("lock") = Some((
        412,
        json!({"code": "no_archive", "message": "this node has no archive configured"}),
    ));
    let ctx = context(api.client("db"), fake_phxkv(fake.clone()).await);
    running_cluster(&api);
    paxoskv(&api, backup_spec(), running_status());
    let b = one_off(&api, "refused", "kv");
    backup::reconcile(Arc::new(b), ctx.clone())
        .await
        .expect("reconciled");
    let status = stored_backup(&api, "refused").status.expect("status");
    assert_eq!(serde_json::to_value(status.phase).expect("phase"), "Failed");
    let message = status.message.unwrap_or_default();
    assert!(message.contains("no archive configured"), "{message}");
    assert!(
        status
            .conditions
            .iter()
            .any(|c| c.type_ == "Failed" && c.status == "True")
    );
    let evs = events(&api);
    assert!(
        evs.iter()
            .any(|(r, n)| r == "BackupFailed" && n.contains("no archive")),
        "{evs:?}"
    );
    let failed = api
        .log()
        .iter()
        .find(|s| s.method == "POST" && s.route() == EVENTS)
        .map(|s| s.body.clone())
        .expect("an event");
    assert_eq!(failed["type"], "Warning");
    assert_eq!(failed["regarding"]["kind"], "PaxosKVBackup");
    backup::reconcile(Arc::new(stored_backup(&api, "refused")), ctx.clone())
        .await
        .expect("reconciled");
    assert_eq!(fake.taken.lock().expect("lock").len(), 1, "never re-run");

    // Asked for as spec.backup was added, while the replicas still
    // restart to pick the archive up: it waits, as for a master.
    let message = a_new_backup_waits(&api, &ctx, "early").await;
    assert!(
        message.contains("run with the archive") && message.contains("no archive configured"),
        "{message}"
    );
    assert!(
        !events(&api).iter().any(|(_, n)| n.contains("early")),
        "no failure event while it waits"
    );

    // A backup of a cluster that has no archive fails without asking.
    paxoskv(&api, json!({"replicas": 3}), running_status());
    let b = one_off(&api, "nowhere", "kv");
    backup::reconcile(Arc::new(b), ctx.clone())
        .await
        .expect("reconciled");
    let status = stored_backup(&api, "nowhere").status.expect("status");
    assert_eq!(serde_json::to_value(status.phase).expect("phase"), "Failed");
    assert!(
        status.message.unwrap_or_default().contains("spec.backup"),
        "says what to set"
    );
    // A busy cluster (503) is tried again, not failed.
    paxoskv(&api, backup_spec(), running_status());
    *fake.backup_answer.lock().expect("lock") = None;
    let b = one_off(&api, "busy", "kv");
    let action = backup::reconcile(Arc::new(b), ctx)
        .await
        .expect("reconciled");
    assert_ne!(action, Action::await_change());
    let status = stored_backup(&api, "busy").status.expect("status");
    assert_eq!(
        serde_json::to_value(status.phase).expect("phase"),
        "Running"
    );
    assert_eq!(status.attempts, 1);
}

/// A finished `PaxosKVBackup` of cluster kv, `days_ago` old; `scheduled`
/// ones carry the schedule's label and owner.
fn record(
    api: &FakeApi,
    name: &str,
    scheduled: bool,
    phase: &str,
    base: Option<&str>,
    days_ago: i64,
) {
    let done = k8s_openapi::jiff::Timestamp::now().as_second() - days_ago * 86_400;
    let done = k8s_openapi::jiff::Timestamp::from_second(done)
        .expect("a time")
        .to_string();
    let mut metadata = json!({"name": name, "namespace": "db", "uid": format!("uid-{name}")});
    if scheduled {
        metadata["labels"] = json!({"phxkv.io/cluster": "kv"});
        metadata["ownerReferences"] = json!([{"apiVersion": "phxkv.io/v1alpha1",
            "kind": "PaxosKV", "name": "kv", "uid": "0000-1111", "controller": true}]);
    }
    api.put(
        &format!("{BACKUPS}/{name}"),
        json!({"apiVersion": "phxkv.io/v1alpha1", "kind": "PaxosKVBackup",
               "metadata": metadata, "spec": {"cluster": "kv"},
               "status": {"phase": phase, "backupName": base, "completedAt": done}}),
    );
}

fn base(name: &str, days_ago: i64) -> Value {
    let now = k8s_openapi::jiff::Timestamp::now().as_second();
    json!({"name": name, "revision": 100 - days_ago, "index": 1000 - days_ago,
           "created_at": now - days_ago * 86_400, "bytes": 10})
}

#[tokio::test]
async fn retention_deletes_the_bases_past_keep_and_max_age_but_never_the_newest() {
    let api = FakeApi::new();
    let fake = Arc::new(Fake::default());
    *fake.master.lock().expect("lock") = true;
    *fake.bases.lock().expect("lock") = vec![
        base("b40", 40),
        base("b20", 20),
        base("b9", 9),
        base("b5", 5),
        base("b2", 2),
        base("b1", 1),
    ];
    let ctx = context(api.client("db"), fake_phxkv(fake.clone()).await);
    running_cluster(&api);
    paxoskv(
        &api,
        json!({"replicas": 3, "backup": {"destination": {"url": "s3://backups/prod"},
               "retention": {"keep": 4, "maxAge": "15d"}}}),
        json!({}),
    );
    // The records: scheduled ones of the bases retention deletes and
    // keeps, one a person made, and five older scheduled failures.
    record(&api, "kv-sched-b40", true, "Completed", Some("b40"), 40);
    record(&api, "kv-sched-b9", true, "Completed", Some("b9"), 9);
    record(&api, "by-hand-b20", false, "Completed", Some("b20"), 20);
    for n in 1..=5 {
        record(
            &api,
            &format!("kv-failed-{n}"),
            true,
            "Failed",
            None,
            40 + n,
        );
    }
    controller::reconcile(Arc::new(stored(&api)), ctx.clone())
        .await
        .expect("reconciled");
    assert_eq!(
        fake.deleted.lock().expect("lock").as_slice(),
        ["b40", "b20"],
        "past the 4 newest: b9 is kept (9 days < 15), b40 and b20 go"
    );
    let left = |name: &str| api.get(&format!("{BACKUPS}/{name}")).is_some();
    assert!(
        !left("kv-sched-b40"),
        "the schedule's record of a deleted base goes"
    );
    assert!(left("kv-sched-b9"), "a kept base keeps its record");
    assert!(left("by-hand-b20"), "what a person created stays theirs");
    assert!(
        left("kv-failed-1") && left("kv-failed-2") && left("kv-failed-3"),
        "the three newest failures stay"
    );
    assert!(
        !left("kv-failed-4") && !left("kv-failed-5"),
        "older failures go"
    );
    let evs = events(&api);
    assert!(
        evs.iter()
            .any(|(r, n)| r == "BackupsPruned" && n.contains("b40, b20")),
        "{evs:?}"
    );
    let (status, reason, message) = condition(&stored(&api), "BackupHealthy");
    assert_eq!((status.as_str(), reason.as_str()), ("True", "Archiving"));
    assert!(message.contains("4 entries behind"), "{message}");

    // Continuous archiving failing shows at once, not when a scheduled
    // backup fails.
    *fake.archive_error.lock().expect("lock") =
        Some("PUT wal/000000000901: AccessDenied: access denied".into());
    controller::reconcile(Arc::new(stored(&api)), ctx.clone())
        .await
        .expect("reconciled");
    let (status, reason, message) = condition(&stored(&api), "BackupHealthy");
    assert_eq!(
        (status.as_str(), reason.as_str()),
        ("False", "ArchivingFailed")
    );
    assert!(message.contains("AccessDenied"), "{message}");
    assert!(
        events(&api)
            .iter()
            .any(|(r, n)| r == "BackupUnhealthy" && n.contains("AccessDenied")),
        "{:?}",
        events(&api)
    );
    *fake.archive_error.lock().expect("lock") = None;

    // Tighter: keep 1 and a day; the newest stays even when it is old.
    *fake.bases.lock().expect("lock") = vec![base("old", 30), base("older", 60)];
    fake.deleted.lock().expect("lock").clear();
    paxoskv(
        &api,
        json!({"replicas": 3, "backup": {"destination": {"url": "s3://backups/prod"},
               "retention": {"keep": 1, "maxAge": "1d"}}}),
        json!({}),
    );
    controller::reconcile(Arc::new(stored(&api)), ctx)
        .await
        .expect("reconciled");
    assert_eq!(fake.deleted.lock().expect("lock").as_slice(), ["older"]);
}

#[tokio::test]
async fn a_recovered_cluster_starts_with_its_first_pod_restoring_alone() {
    let api = FakeApi::new();
    let fake = Arc::new(Fake::default());
    let ctx = context(api.client("db"), fake_phxkv(fake.clone()).await);
    let pkv = paxoskv(
        &api,
        json!({"replicas": 3, "bootstrap": {"recovery": {
            "source": {"url": "s3://backups/prod/db/old", "credentialsSecret": {"name": "s3"},
                       "endpointURL": "http://minio:9000"},
            "targetRevision": 40}}}),
        json!({}),
    );
    controller::reconcile(Arc::new(pkv), ctx.clone())
        .await
        .expect("reconciled");

    let cm = api
        .get(&format!("{NS}/configmaps/kv-bootstrap"))
        .expect("the bootstrap ConfigMap");
    assert_eq!(
        cm["data"]["replicas"], "1",
        "the first pod bootstraps alone"
    );
    assert_eq!(cm["data"]["restoreMember"], "kv-0");
    assert_eq!(cm["data"]["recoverySource"], "s3://backups/prod/db/old");
    assert_eq!(cm["data"]["recoveryTarget"], "revision 40");
    let set = api.get(&format!("{APPS}/statefulsets/kv")).expect("set");
    assert_eq!(set["spec"]["replicas"], 1, "the others come as a scale-up");
    let init = &set["spec"]["template"]["spec"]["initContainers"][0];
    let args: Vec<&str> = init["args"]
        .as_array()
        .expect("args")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert_eq!(
        args,
        [
            "backup",
            "restore",
            "--from-archive",
            "s3://backups/prod/db/old",
            "--target-revision",
            "40",
            "--data-dir",
            "/var/lib/phxkv/data",
            "--name",
            "$(PHXKV_ID)",
            "--cluster-id",
            "kv.db",
            "--initial-members",
            "$(PHXKV_ID)=https://$(PHXKV_ID).kv-peers.db:8081",
            "--if-empty",
            "--only-member=$(PHXKV_RESTORE_MEMBER)",
        ]
    );
    let env = init["env"].as_array().expect("env");
    let restore_member = env
        .iter()
        .find(|e| e["name"] == "PHXKV_RESTORE_MEMBER")
        .expect("the restoring member's variable");
    assert_eq!(
        restore_member["valueFrom"]["configMapKeyRef"],
        json!({"name": "kv-bootstrap", "key": "restoreMember", "optional": true})
    );
    assert!(
        env.iter()
            .any(|e| e["name"] == "AWS_ENDPOINT_URL" && e["value"] == "http://minio:9000")
    );
    assert_eq!(init["envFrom"][0]["secretRef"]["name"], "s3");
    assert_eq!(
        init["volumeMounts"][0]["mountPath"], "/var/lib/phxkv",
        "restores onto the data volume"
    );
    assert!(events(&api).iter().any(|(r, _)| r == "Recovering"));
    let (status, reason, message) = condition(&stored(&api), "Recovered");
    assert_eq!((status.as_str(), reason.as_str()), ("False", "Restoring"));
    assert!(message.contains("s3://backups/prod/db/old") && message.contains("revision 40"));

    // A restore that fails says why, in the condition and a Warning, and
    // does not look like one in progress.
    api.put(
        &format!("{NS}/pods/kv-0"),
        json!({"apiVersion": "v1", "kind": "Pod",
               "metadata": {"name": "kv-0", "namespace": "db",
                            "labels": {"app.kubernetes.io/name": "phxkv",
                                       "app.kubernetes.io/instance": "kv"}},
               "status": {"initContainerStatuses": [{
                   "name": "restore", "image": "phxkv", "imageID": "", "ready": false,
                   "restartCount": 2, "state": {"waiting": {"reason": "CrashLoopBackOff"}},
                   "lastState": {"terminated": {"exitCode": 4,
                       "message": "error: s3://backups/prod/db/old: AccessDenied: access denied"}}}]}}),
    );
    controller::reconcile(Arc::new(stored(&api)), ctx.clone())
        .await
        .expect("reconciled");
    let (status, reason, message) = condition(&stored(&api), "Recovered");
    assert_eq!(
        (status.as_str(), reason.as_str()),
        ("False", "RestoreFailed")
    );
    assert!(
        message.contains("AccessDenied") && message.contains("delete and create"),
        "{message}"
    );
    let warned = |api: &FakeApi| {
        events(api)
            .iter()
            .filter(|(r, n)| r == "RestoreFailed" && n.contains("AccessDenied"))
            .count()
    };
    assert_eq!(warned(&api), 1);
    controller::reconcile(Arc::new(stored(&api)), ctx.clone())
        .await
        .expect("reconciled");
    assert_eq!(
        warned(&api),
        1,
        "one Warning for one failure, not one per pass"
    );

    // The restored pod runs with a master: no pod restores from now on.
    running_cluster(&api);
    *fake.master.lock().expect("lock") = true;
    controller::reconcile(Arc::new(stored(&api)), ctx)
        .await
        .expect("reconciled");
    let cm = api
        .get(&format!("{NS}/configmaps/kv-bootstrap"))
        .expect("cm");
    assert_eq!(cm["data"]["restoreMember"], "");
    assert_eq!(cm["data"]["replicas"], "1", "later pods still join");
    assert!(events(&api).iter().any(|(r, _)| r == "Recovered"));
    let after = stored(&api);
    let (status, reason, _) = condition(&after, "Recovered");
    assert_eq!(
        (status.as_str(), reason.as_str()),
        ("True", "RestoredFromArchive")
    );
    let recovery = after
        .status
        .and_then(|s| s.recovery)
        .expect("status.recovery");
    assert_eq!(recovery.source, "s3://backups/prod/db/old");
    assert_eq!(recovery.target, "revision 40");
}
