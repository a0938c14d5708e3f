//! The operator's table of API access (`phxkv_operator::access`) against
//! what its code actually asks of the API server: every path that talks to
//! Kubernetes runs against a fake API server, each request is turned into
//! the RBAC permission it needs, and the set of them must equal the table.
//! A call the table lacks fails this test, and so does a rule that no code
//! uses; `e2e/chart/check.sh` then holds the chart's RBAC to the table.

mod support;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::Path;
use axum::routing::get;
use axum::{Json, Router};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use kube::CustomResourceExt;
use phxkv_operator::access::{self, Permission, Settings};
use phxkv_operator::backup;
use phxkv_operator::controller;
use phxkv_operator::crd::{PaxosKV, PaxosKVBackup, PaxosKVSpec};
use phxkv_operator::install;
use phxkv_operator::leader::{Elector, LeaseConfig, Stop};
use phxkv_operator::metrics::OperatorMetrics;
use phxkv_operator::run::{self, Leading};
use serde_json::{Value, json};
use support::{FakeApi, Seen, until};

const NS: &str = "/api/v1/namespaces/db";
const APPS: &str = "/apis/apps/v1/namespaces/db";
const PKVS: &str = "/apis/phxkv.io/v1alpha1/namespaces/db/paxoskvs";
const CRD: &str = "/apis/apiextensions.k8s.io/v1/customresourcedefinitions/paxoskvs.phxkv.io";
const BACKUP_CRD: &str =
    "/apis/apiextensions.k8s.io/v1/customresourcedefinitions/paxoskvbackups.phxkv.io";
const BACKUPS: &str = "/apis/phxkv.io/v1alpha1/namespaces/db/paxoskvbackups";
const CERTS: &str = "/apis/cert-manager.io/v1/namespaces/db/certificates";

fn member(name: &str, master: bool) -> Value {
    let ordinal: u64 = name
        .rsplit('-')
        .next()
        .and_then(|o| o.parse().ok())
        .unwrap_or(9);
    let (cluster, _) = name.rsplit_once('-').unwrap_or((name, ""));
    json!({"name": name, "id": format!("{:016x}", ordinal + 1), "role": "voter",
           "peer_url": format!("http://{name}.{cluster}-peers:8081"), "is_master": master,
           "commit_index": 10, "healthy": true})
}

/// A phxkv cluster of three voters named after the pod asked (`up-1` is a
/// pod of `up`), master `<cluster>-0`; in the cluster `heal`, `heal-2` is
/// unhealthy.
async fn fake_phxkv() -> String {
    async fn cluster(Path(pod): Path<String>) -> Json<Value> {
        let (name, _) = pod.rsplit_once('-').unwrap_or((pod.as_str(), ""));
        let mut members = vec![
            member(&format!("{name}-0"), true),
            member(&format!("{name}-1"), false),
            member(&format!("{name}-2"), false),
        ];
        if name == "heal" {
            members[2]["healthy"] = json!(false);
        }
        Json(
            json!({"cluster_id": format!("{name}.db"), "node": pod, "node_id": "0000000000000001",
            "node_state": "member", "node_state_reason": null, "master": format!("{name}-0"),
            "lease_remaining_ms": 900, "revision": 5, "applied_index": 10, "commit_index": 10,
            "members": members}),
        )
    }
    let app = Router::new().route("/pods/{pod}/v1/cluster", get(cluster));
    support::serve(app).await
}

fn paxoskv(name: &str, spec: Value) -> PaxosKV {
    let spec: PaxosKVSpec = serde_json::from_value(spec).expect("spec");
    let mut pkv = PaxosKV::new(name, spec);
    pkv.metadata.namespace = Some("db".into());
    pkv.metadata.uid = Some(format!("uid-{name}"));
    pkv.metadata.generation = Some(1);
    pkv
}

fn pod(name: &str) -> Value {
    let (cluster, _) = name.rsplit_once('-').unwrap_or((name, ""));
    json!({"apiVersion": "v1", "kind": "Pod",
           "metadata": {"name": name, "namespace": "db",
                        "labels": {"app.kubernetes.io/name": "phxkv", "app.kubernetes.io/instance": cluster,
                                   "controller-revision-hash": format!("{cluster}-rev1")}},
           "status": {"conditions": [{"type": "Ready", "status": "True"}]}})
}

/// A StatefulSet of `name` owned by the PaxosKV of that name.
fn owned_set(name: &str, update_revision: &str) -> Value {
    json!({"apiVersion": "apps/v1", "kind": "StatefulSet",
           "metadata": {"name": name, "namespace": "db", "ownerReferences": [
               {"apiVersion": "phxkv.io/v1alpha1", "kind": "PaxosKV", "name": name,
                "uid": format!("uid-{name}"), "controller": true, "blockOwnerDeletion": true}]},
           "spec": {"replicas": 3, "selector": {}, "serviceName": format!("{name}-peers"), "template": {}},
           "status": {"replicas": 3, "readyReplicas": 3, "currentRevision": format!("{name}-rev1"),
                      "updateRevision": update_revision}})
}

/// The permission each request needed: its own, and `create` too for an
/// apply that created its object.
fn needed(log: &[Seen]) -> Vec<Permission> {
    let mut out = vec![];
    for s in log {
        let Some(p) = access::permission_for(&s.method, &s.path) else {
            continue;
        };
        if s.created {
            out.push(p.with_verb("create"));
        }
        out.push(p);
    }
    out
}

#[tokio::test]
async fn the_access_table_lists_exactly_the_calls_the_operator_makes() {
    let api = FakeApi::new();
    let client = api.client("ops");
    let url = fake_phxkv().await;
    let ctx = support::context(
        client.clone(),
        support::pods_at(url),
        OperatorMetrics::new(),
    );

    // A new cluster: its objects, token, bootstrap record, status, events;
    // its backup schedule is due, so a PaxosKVBackup is created.
    let mut kv = paxoskv(
        "kv",
        json!({"replicas": 3, "backup": {"destination": {"url": "s3://backups/prod"},
               "schedule": "0 * * * *"}}),
    );
    kv.metadata.creation_timestamp = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
        "2026-01-01T00:00:00Z".parse().expect("a time"),
    ));
    api.put(
        &format!("{PKVS}/kv"),
        serde_json::to_value(&kv).expect("pkv"),
    );
    // More failed scheduled backups than are kept: the oldest is deleted.
    for n in 1..=backup::FAILED_SCHEDULED_KEPT + 1 {
        api.put(
            &format!("{BACKUPS}/kv-failed-{n}"),
            json!({"apiVersion": "phxkv.io/v1alpha1", "kind": "PaxosKVBackup",
                   "metadata": {"name": format!("kv-failed-{n}"), "namespace": "db",
                                "labels": {"phxkv.io/cluster": "kv"},
                                "ownerReferences": [{"apiVersion": "phxkv.io/v1alpha1",
                                    "kind": "PaxosKV", "name": "kv", "uid": "uid-kv",
                                    "controller": true}]},
                   "spec": {"cluster": "kv"},
                   "status": {"phase": "Failed",
                              "completedAt": format!("2026-01-0{n}T00:00:00Z")}}),
        );
    }
    controller::reconcile(Arc::new(kv), ctx.clone())
        .await
        .expect("reconciled a new cluster");
    assert!(
        api.get(&format!("{BACKUPS}/kv-failed-1")).is_none(),
        "the oldest failed scheduled backup was deleted"
    );

    assert!(
        api.log()
            .iter()
            .any(|s| s.method == "POST" && s.route() == BACKUPS),
        "the schedule created a backup"
    );

    // A backup of a cluster without a master yet: it waits (its status).
    api.put(
        &format!("{BACKUPS}/kv-once"),
        json!({"apiVersion": "phxkv.io/v1alpha1", "kind": "PaxosKVBackup",
               "metadata": {"name": "kv-once", "namespace": "db", "uid": "uid-kv-once",
                            "creationTimestamp": "2026-01-01T00:00:00Z"},
               "spec": {"cluster": "kv"}}),
    );
    let once: PaxosKVBackup =
        serde_json::from_value(api.get(&format!("{BACKUPS}/kv-once")).expect("put"))
            .expect("a backup");
    let _ = backup::reconcile(Arc::new(once), ctx.clone()).await;

    // An invalid spec twice: the second event is a repeat (a patch).
    let odd = paxoskv("odd", json!({"replicas": 4}));
    api.put(
        &format!("{PKVS}/odd"),
        serde_json::to_value(&odd).expect("pkv"),
    );
    for _ in 0..2 {
        controller::reconcile(Arc::new(odd.clone()), ctx.clone())
            .await
            .expect("reported");
    }

    // A cluster whose NetworkPolicy was turned off: the operator's goes.
    let open = paxoskv(
        "open",
        json!({"replicas": 3, "networkPolicy": {"enabled": false}}),
    );
    api.put(
        &format!("{PKVS}/open"),
        serde_json::to_value(&open).expect("pkv"),
    );
    let policy = "/apis/networking.k8s.io/v1/namespaces/db/networkpolicies/open";
    api.put(
        policy,
        json!({"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
               "metadata": {"name": "open", "namespace": "db", "ownerReferences": [
                   {"apiVersion": "phxkv.io/v1alpha1", "kind": "PaxosKV", "name": "open",
                    "uid": "uid-open", "controller": true}]},
               "spec": {"podSelector": {}}}),
    );
    let _ = controller::reconcile(Arc::new(open), ctx.clone()).await;
    assert!(
        api.log()
            .iter()
            .any(|s| s.method == "DELETE" && s.path.starts_with(policy)),
        "the NetworkPolicy of a cluster that turned it off was not deleted"
    );

    // A CA with less than a year left: the operator replaces its Secret
    // (a PUT, as read, so an `update`).
    let aged = paxoskv("aged", json!({"replicas": 3}));
    api.put(
        &format!("{PKVS}/aged"),
        serde_json::to_value(&aged).expect("pkv"),
    );
    let old = phxkv::tls::issue::new_ca("phxkv CA aged.db", Duration::from_secs(300 * 86_400))
        .expect("CA");
    api.put(
        &format!("{NS}/secrets/aged-ca"),
        json!({"apiVersion": "v1", "kind": "Secret",
               "metadata": {"name": "aged-ca", "namespace": "db", "resourceVersion": "7",
                            "ownerReferences": [
                   {"apiVersion": "phxkv.io/v1alpha1", "kind": "PaxosKV", "name": "aged",
                    "uid": "uid-aged", "controller": true}]},
               "data": {"ca.crt": B64.encode(&old.cert_pem), "ca.key": B64.encode(&old.key_pem)}}),
    );
    let _ = controller::reconcile(Arc::new(aged), ctx.clone()).await;
    assert!(
        api.log()
            .iter()
            .any(|s| s.method == "PUT" && s.route() == format!("{NS}/secrets/aged-ca")),
        "the ageing CA was rotated"
    );

    // Certificates from cert-manager: the Certificate is applied.
    let cm = paxoskv(
        "cm",
        json!({"replicas": 3, "tls": {"issuerRef": {"name": "corp", "kind": "ClusterIssuer"}}}),
    );
    api.put(
        &format!("{PKVS}/cm"),
        serde_json::to_value(&cm).expect("pkv"),
    );
    let _ = controller::reconcile(Arc::new(cm), ctx.clone()).await;
    assert!(
        api.get(&format!("{CERTS}/cm-tls")).is_some(),
        "the Certificate was applied"
    );
    // issuerRef removed: cert-manager's Certificate goes, the operator
    // issues into the Secret cert-manager wrote.
    let back = paxoskv("back", json!({"replicas": 3}));
    api.put(
        &format!("{PKVS}/back"),
        serde_json::to_value(&back).expect("pkv"),
    );
    api.put(
        &format!("{CERTS}/back-tls"),
        json!({"apiVersion": "cert-manager.io/v1", "kind": "Certificate",
               "metadata": {"name": "back-tls", "namespace": "db"}, "spec": {}}),
    );
    api.put(
        &format!("{NS}/secrets/back-tls"),
        json!({"apiVersion": "v1", "kind": "Secret",
               "metadata": {"name": "back-tls", "namespace": "db",
                            "annotations": {"cert-manager.io/certificate-name": "back-tls"}},
               "data": {}}),
    );
    let _ = controller::reconcile(Arc::new(back), ctx.clone()).await;
    assert!(
        api.get(&format!("{CERTS}/back-tls")).is_none(),
        "cert-manager's Certificate was deleted"
    );

    // A cluster whose pods run an older template: one pod is replaced.
    let up = paxoskv("up", json!({"replicas": 3}));
    api.put(
        &format!("{PKVS}/up"),
        serde_json::to_value(&up).expect("pkv"),
    );
    api.put(
        &format!("{APPS}/statefulsets/up"),
        owned_set("up", "up-rev2"),
    );
    for i in 0..3 {
        api.put(&format!("{NS}/pods/up-{i}"), pod(&format!("up-{i}")));
    }
    let _ = controller::reconcile(Arc::new(up), ctx.clone()).await;
    assert!(
        api.log().iter().any(|s| s.method == "DELETE"),
        "the upgrade scenario replaced a pod: {:?}",
        api.log()
            .iter()
            .map(|s| (&s.method, &s.path))
            .collect::<Vec<_>>()
    );

    // Self-healing: a member failing for long is recreated (its claim and
    // pod deleted).
    let mut heal = paxoskv("heal", json!({"replicas": 3}));
    heal.status = Some(
        serde_json::from_value(json!({"members": [
            {"name": "heal-2", "id": "0000000000000003", "role": "voter", "healthy": false,
             "failingSince": "2026-01-01T00:00:00Z"}]}))
        .expect("status"),
    );
    api.put(
        &format!("{PKVS}/heal"),
        serde_json::to_value(&heal).expect("pkv"),
    );
    api.put(
        &format!("{APPS}/statefulsets/heal"),
        owned_set("heal", "heal-rev1"),
    );
    for i in 0..3 {
        api.put(&format!("{NS}/pods/heal-{i}"), pod(&format!("heal-{i}")));
    }
    api.put(
        &format!("{NS}/persistentvolumeclaims/data-heal-2"),
        json!({"apiVersion": "v1", "kind": "PersistentVolumeClaim",
               "metadata": {"name": "data-heal-2", "namespace": "db"}}),
    );
    let _ = controller::reconcile(Arc::new(heal), ctx.clone()).await;
    assert!(
        api.log()
            .iter()
            .any(|s| s.method == "DELETE"
                && s.route().ends_with("/persistentvolumeclaims/data-heal-2")),
        "the self-healing scenario recreated a member"
    );

    // Leader election: create, renew, release.
    let config =
        LeaseConfig::new("phxkv-operator", "ops", "op-a", Duration::from_secs(15)).expect("config");
    let mut elector = Elector::new(client.clone(), config);
    elector.try_acquire_or_renew().await.expect("created");
    elector.try_acquire_or_renew().await.expect("renewed");
    elector.release().await.expect("released");

    // The leader's start: the CRD, the check, the controller's watches.
    api.put(CRD, serde_json::to_value(PaxosKV::crd()).expect("crd"));
    api.put(
        BACKUP_CRD,
        serde_json::to_value(PaxosKVBackup::crd()).expect("crd"),
    );
    let (raise, stop) = Stop::new();
    let leading = Leading {
        ctx: ctx.clone(),
        namespace: None,
        manage_crd: true,
    };
    let task = tokio::spawn(run::lead(leading, stop));
    assert!(
        until(Duration::from_secs(10), || {
            api.log()
                .iter()
                .filter(|s| s.path.contains("watch=true"))
                .count()
                >= 5
        })
        .await,
        "the controllers watch"
    );
    let _ = raise.send(true);
    let _ = tokio::time::timeout(Duration::from_secs(10), task).await;

    let settings = Settings {
        lease_name: "phxkv-operator".into(),
        manage_crd: true,
    };
    let table: BTreeSet<Permission> = access::permissions(&settings).into_iter().collect();
    let mut used = BTreeSet::new();
    for p in needed(&api.log()) {
        assert!(
            access::grants(&settings, &p),
            "the operator needs {p:?}, which operator/src/access.rs does not list"
        );
        // A rule for any name covers the named objects.
        let any = Permission {
            name: String::new(),
            ..p.clone()
        };
        used.insert(if table.contains(&any) { any } else { p });
    }
    let unused: Vec<&Permission> = table.difference(&used).collect();
    assert!(
        unused.is_empty(),
        "operator/src/access.rs lists access no code used: {unused:?}"
    );
    assert_eq!(install::CRD_NAME, PaxosKV::crd_name());
    assert_eq!(install::BACKUP_CRD_NAME, PaxosKVBackup::crd_name());
}
