//! What a replica of the operator does when it starts, against a fake API
//! server: the leader applies its CRD (server-side apply as
//! `phxkv-operator`) before it starts the controller, whose watches of
//! owned objects are label-filtered; a standby touches neither the CRD nor
//! any PaxosKV; `--manage-crd=false` leaves the CRD alone.

mod support;

use std::sync::Arc;
use std::time::Duration;

use kube::CustomResourceExt;
use phxkv_operator::controller::{self, Context};
use phxkv_operator::crd::PaxosKV;
use phxkv_operator::install::{self, CRD_NAME, CrdError, CrdOutcome, VERSION_ANNOTATION};
use phxkv_operator::leader::{self, Elector, LeaseConfig};
use phxkv_operator::metrics::OperatorMetrics;
use phxkv_operator::render::{self, Defaults};
use phxkv_operator::run::{self, Leading};
use serde_json::{Value, json};
use support::{FakeApi, LEASE, Seen, lease, until};

const CRD: &str = "/apis/apiextensions.k8s.io/v1/customresourcedefinitions/paxoskvs.phxkv.io";

fn installed_crd(version: Option<&str>) -> Value {
    let mut crd = serde_json::to_value(PaxosKV::crd()).expect("crd");
    // What Helm installed: an older schema, perhaps.
    crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["description"] = json!("old");
    if let Some(v) = version {
        crd["metadata"]["annotations"] = json!({ VERSION_ANNOTATION: v });
    }
    crd
}

fn context(client: kube::Client, metrics: OperatorMetrics) -> Arc<Context> {
    support::context(client, controller::cluster_dns(), metrics)
}

/// Starts a replica (leader election on) and returns its shutdown switch.
fn start(
    api: &FakeApi,
    identity: &str,
    manage_crd: bool,
) -> (
    tokio::sync::oneshot::Sender<()>,
    tokio::task::JoinHandle<Result<(), String>>,
) {
    let client = api.client("ops");
    let metrics = OperatorMetrics::new();
    let config = LeaseConfig::new("phxkv-operator", "ops", identity, Duration::from_secs(15))
        .expect("config");
    let leading = Leading {
        ctx: context(client.clone(), metrics.clone()),
        namespace: None,
        manage_crd,
    };
    let (stop, shutdown) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        let mut elector = Elector::new(client, config);
        leader::run_elected(
            &mut elector,
            &metrics,
            async {
                let _ = shutdown.await;
            },
            |stop| run::lead(leading.clone(), stop),
        )
        .await
    });
    (stop, task)
}

fn routes(log: &[Seen]) -> Vec<(String, String)> {
    log.iter()
        .map(|s| (s.method.clone(), s.path.clone()))
        .collect()
}

fn position(log: &[Seen], what: impl Fn(&Seen) -> bool) -> Option<usize> {
    log.iter().position(what)
}

#[tokio::test(start_paused = true)]
async fn the_leader_applies_its_crd_before_it_starts_the_controller() {
    let api = FakeApi::new();
    api.put(CRD, installed_crd(None));
    let (stop, task) = start(&api, "op-a", true);
    let watching = |api: &FakeApi| {
        api.log()
            .iter()
            .filter(|s| s.path.contains("watch=true"))
            .count()
            >= 3
    };
    assert!(
        until(Duration::from_secs(10), || watching(&api)).await,
        "{:?}",
        routes(&api.log())
    );
    let log = api.log();

    let took_lease = position(&log, |s| {
        s.method == "POST" && s.route().ends_with("/leases")
    })
    .expect("the lease was created");
    let applied =
        position(&log, |s| s.method == "PATCH" && s.route() == CRD).expect("the CRD was applied");
    let listed = position(&log, |s| {
        s.method == "GET" && s.route() == "/apis/phxkv.io/v1alpha1/paxoskvs"
    })
    .expect("PaxosKVs were listed");
    assert!(
        took_lease < applied && applied < listed,
        "{:?}",
        routes(&log)
    );
    let apply = &log[applied];
    assert!(
        apply.path.contains("fieldManager=phxkv-operator") && apply.path.contains("force=true"),
        "{}",
        apply.path
    );
    let crd = api.get(CRD).expect("crd");
    assert_eq!(
        crd["spec"],
        serde_json::to_value(PaxosKV::crd()).expect("crd")["spec"],
        "the CRD is now this operator's"
    );
    assert_eq!(
        crd["metadata"]["annotations"][VERSION_ANNOTATION],
        install::VERSION
    );

    // The owned objects are watched through the operator's label only.
    let selector = "labelSelector=app.kubernetes.io%2Fmanaged-by%3Dphxkv-operator";
    for resource in ["/apis/apps/v1/statefulsets", "/api/v1/services"] {
        let requests: Vec<&Seen> = log.iter().filter(|s| s.route() == resource).collect();
        assert!(!requests.is_empty(), "{resource} is watched");
        for s in requests {
            assert!(s.path.contains(selector), "unfiltered: {}", s.path);
        }
    }
    let pkv_watch = log
        .iter()
        .find(|s| s.route() == "/apis/phxkv.io/v1alpha1/paxoskvs" && s.path.contains("watch=true"))
        .expect("PaxosKVs are watched");
    assert!(
        !pkv_watch.path.contains("labelSelector"),
        "every PaxosKV counts"
    );

    let _ = stop.send(());
    task.await.expect("joined").expect("clean shutdown");
    let released = api.get(LEASE).expect("lease");
    assert!(released["spec"]["holderIdentity"].is_null(), "{released}");
}

#[tokio::test(start_paused = true)]
async fn a_standby_touches_neither_the_crd_nor_any_paxoskv() {
    let api = FakeApi::new();
    api.put(CRD, installed_crd(None));
    api.put(LEASE, lease(Some("op-b"), 15, 0));
    let (_stop, _task) = start(&api, "op-a", true);
    // Within the lease's duration op-b keeps renewing.
    for _ in 0..4 {
        tokio::time::sleep(Duration::from_secs(5)).await;
        api.put(LEASE, lease(Some("op-b"), 15, 0));
    }
    let log = api.log();
    assert!(!log.is_empty());
    assert!(
        log.iter().all(|s| s.route() == LEASE && s.method == "GET"),
        "only reads of the lease: {:?}",
        routes(&log)
    );
}

#[tokio::test(start_paused = true)]
async fn without_manage_crd_the_leader_leaves_the_crd_alone() {
    let api = FakeApi::new();
    api.put(CRD, installed_crd(None));
    let (stop, task) = start(&api, "op-a", false);
    assert!(
        until(Duration::from_secs(10), || api
            .log()
            .iter()
            .any(|s| s.path.contains("watch=true")))
        .await
    );
    assert!(
        api.log()
            .iter()
            .all(|s| !s.route().contains("customresourcedefinitions")),
        "{:?}",
        routes(&api.log())
    );
    let _ = stop.send(());
    task.await.expect("joined").expect("clean shutdown");
}

#[tokio::test]
async fn a_crd_applied_by_a_newer_operator_is_left_as_it_is() {
    let api = FakeApi::new();
    api.put(CRD, installed_crd(Some("999.0.0")));
    let outcome = install::apply_crd(&api.client("ops"))
        .await
        .expect("no error");
    assert_eq!(
        outcome,
        CrdOutcome::LeftNewer {
            theirs: "999.0.0".into()
        }
    );
    assert!(api.log().iter().all(|s| s.method == "GET"));
}

#[tokio::test]
async fn an_older_operators_crd_is_replaced() {
    let api = FakeApi::new();
    api.put(CRD, installed_crd(Some("0.0.1")));
    let outcome = install::apply_crd(&api.client("ops"))
        .await
        .expect("applied");
    assert_eq!(
        outcome,
        CrdOutcome::Applied {
            previous: Some("0.0.1".into())
        }
    );
    assert_eq!(
        api.get(CRD).expect("crd")["metadata"]["annotations"][VERSION_ANNOTATION],
        install::VERSION
    );
}

#[tokio::test]
async fn a_missing_or_forbidden_crd_is_an_error_that_says_what_to_do() {
    let api = FakeApi::new();
    let err = install::apply_crd(&api.client("ops"))
        .await
        .expect_err("missing");
    assert!(matches!(err, CrdError::Missing(_)), "{err}");
    assert!(err.to_string().contains("phxkv-operator crd"), "{err}");

    let forbidden = json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
        "message": format!("customresourcedefinitions.apiextensions.k8s.io \"{CRD_NAME}\" is forbidden"),
        "reason": "Forbidden", "code": 403});
    let (service, mut handle) = tower_test::mock::pair::<
        http::Request<kube::client::Body>,
        http::Response<kube::client::Body>,
    >();
    tokio::spawn(async move {
        while let Some((_, send)) = handle.next_request().await {
            send.send_response(
                http::Response::builder()
                    .status(403)
                    .body(kube::client::Body::from(
                        serde_json::to_vec(&forbidden).expect("json"),
                    ))
                    .expect("response"),
            );
        }
    });
    let err = install::apply_crd(&kube::Client::new(service, "ops"))
        .await
        .expect_err("forbidden");
    assert!(matches!(err, CrdError::Forbidden { .. }), "{err}");
    assert!(err.to_string().contains("--manage-crd=false"), "{err}");
}

#[test]
fn every_object_the_operator_creates_carries_the_watched_label() {
    let spec = serde_json::from_value(json!({"replicas": 3})).expect("spec");
    let mut pkv = PaxosKV::new("kv", spec);
    pkv.metadata.namespace = Some("db".into());
    pkv.metadata.uid = Some("0000-1111".into());
    let defaults = Defaults {
        image: "ghcr.io/phxkv/phxkv:0.1.0".into(),
        operator_pods: Default::default(),
    };
    let selector = run::owned_selector();
    let (key, value) = selector.split_once('=').expect("key=value");
    let labels = [
        render::statefulset(&pkv, &defaults, 3, render::Transport::Plain)
            .metadata
            .labels,
        render::peer_service(&pkv).metadata.labels,
        render::client_service(&pkv).metadata.labels,
        render::metrics_service(&pkv).metadata.labels,
    ];
    for l in labels {
        let l = l.unwrap_or_default();
        assert_eq!(l.get(key).map(String::as_str), Some(value), "{l:?}");
    }
}
