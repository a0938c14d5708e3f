//! `reconcile` against a mocked Kubernetes API server: every request the
//! controller makes is checked in order (method, path, the body's key
//! fields) and answered like the API server would. The cluster's own API is
//! a small fake phxkv on loopback that reports a configuration and records
//! membership changes.

mod support;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::routing::{get, post};
use axum::{Json, Router};
use http::{Request, Response};
use kube::client::Body;
use phxkv_operator::controller::{Context, reconcile};
use phxkv_operator::crd::{PaxosKV, PaxosKVSpec};
use phxkv_operator::metrics::OperatorMetrics;
use serde_json::{Value, json};
use tower_test::mock::{self, Handle};

type ApiHandle = Handle<Request<Body>, Response<Body>>;

/// A request as the mock API server saw it.
struct Seen {
    method: String,
    path: String,
    body: Value,
}

async fn next(handle: &mut ApiHandle) -> (Seen, tower_test::mock::SendResponse<Response<Body>>) {
    let (request, send) = tokio::time::timeout(Duration::from_secs(10), handle.next_request())
        .await
        .expect("the controller made another request")
        .expect("the client is alive");
    let method = request.method().to_string();
    let path = request
        .uri()
        .path_and_query()
        .map(|p| p.to_string())
        .unwrap_or_default();
    let bytes = request
        .into_body()
        .collect_bytes()
        .await
        .expect("request body");
    let body = if bytes.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&bytes).expect("JSON body")
    };
    (Seen { method, path, body }, send)
}

fn respond(send: tower_test::mock::SendResponse<Response<Body>>, status: u16, body: &Value) {
    let response = Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(Body::from(serde_json::to_vec(body).expect("encode")))
        .expect("response");
    send.send_response(response);
}

fn not_found(kind: &str, name: &str) -> Value {
    json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
           "message": format!("{kind} \"{name}\" not found"), "reason": "NotFound", "code": 404})
}

/// Expects one request; answers with `reply(request body)`.
async fn expect(
    handle: &mut ApiHandle,
    method: &str,
    path: &str,
    reply: impl FnOnce(&Value) -> (u16, Value),
) -> Value {
    let (seen, send) = next(handle).await;
    assert_eq!(
        (
            seen.method.as_str(),
            seen.path.split('?').next().unwrap_or("")
        ),
        (method, path),
        "unexpected request {} {}",
        seen.method,
        seen.path
    );
    if method == "PATCH" {
        assert!(
            seen.path.contains("fieldManager=phxkv-operator") && seen.path.contains("force=true"),
            "server-side apply as phxkv-operator: {}",
            seen.path
        );
    }
    let (status, body) = reply(&seen.body);
    respond(send, status, &body);
    seen.body
}

fn echo(body: &Value) -> (u16, Value) {
    (200, body.clone())
}

/// A Secret's key, decoded.
fn decoded(secret: &Value, key: &str) -> String {
    use base64::Engine as _;
    let b64 = secret["data"][key]
        .as_str()
        .unwrap_or_else(|| panic!("{key} in {secret}"));
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(b64)
        .expect("base64");
    String::from_utf8(bytes).expect("text")
}

/// What the fake phxkv reports and what it was asked to do. Each pod has
/// its own base URL (`/pods/<pod>`), so each can report its own state.
#[derive(Default)]
struct FakeCluster {
    info: Mutex<Value>,
    /// Pods that report they came back with an empty volume.
    lost: Mutex<Vec<String>>,
    changes: Mutex<Vec<(String, Value, Option<String>)>>,
}

fn auth_of(headers: &HeaderMap) -> Option<String> {
    headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
}

async fn fake_phxkv(state: Arc<FakeCluster>) -> String {
    async fn cluster(State(s): State<Arc<FakeCluster>>, Path(pod): Path<String>) -> Json<Value> {
        let mut info = s.info.lock().expect("lock").clone();
        info["node"] = json!(pod);
        if s.lost.lock().expect("lock").contains(&pod) {
            info["node_state"] = json!("awaiting_replacement");
            info["node_state_reason"] = json!("the cluster exists and counts another incarnation");
            info["node_id"] = json!("00000000000000ee");
        }
        Json(info)
    }
    async fn add(
        State(s): State<Arc<FakeCluster>>,
        headers: HeaderMap,
        Json(body): Json<Value>,
    ) -> Json<Value> {
        s.changes
            .lock()
            .expect("lock")
            .push(("add".into(), body, auth_of(&headers)));
        Json(s.info.lock().expect("lock").clone())
    }
    async fn replace(
        State(s): State<Arc<FakeCluster>>,
        Path((_pod, name)): Path<(String, String)>,
        headers: HeaderMap,
    ) -> Json<Value> {
        s.changes
            .lock()
            .expect("lock")
            .push(("replace".into(), json!(name), auth_of(&headers)));
        Json(json!({"member": name, "removed": "0000000000000002",
                    "incarnation": "00000000000000ee", "state": "done",
                    "message": format!("{name} is a voter again, as incarnation 00000000000000ee")}))
    }
    async fn transfer(
        State(s): State<Arc<FakeCluster>>,
        Path((_pod, name)): Path<(String, String)>,
        headers: HeaderMap,
    ) -> (axum::http::StatusCode, Json<Value>) {
        s.changes
            .lock()
            .expect("lock")
            .push(("transfer".into(), json!(name), auth_of(&headers)));
        let mut info = s.info.lock().expect("lock").clone();
        let known = info["members"]
            .as_array()
            .is_some_and(|ms| ms.iter().any(|m| m["name"] == name));
        if !known {
            return (
                axum::http::StatusCode::NOT_FOUND,
                Json(json!({"error": {"code": "member_not_found",
                                      "message": format!("no member is named {name}")}})),
            );
        }
        info["master"] = json!(name);
        *s.info.lock().expect("lock") = info.clone();
        (axum::http::StatusCode::OK, Json(info))
    }
    async fn promote(
        State(s): State<Arc<FakeCluster>>,
        Path((_pod, name)): Path<(String, String)>,
        headers: HeaderMap,
    ) -> Json<Value> {
        s.changes
            .lock()
            .expect("lock")
            .push(("promote".into(), json!(name), auth_of(&headers)));
        Json(s.info.lock().expect("lock").clone())
    }
    async fn remove(
        State(s): State<Arc<FakeCluster>>,
        Path((_pod, name)): Path<(String, String)>,
        headers: HeaderMap,
    ) -> Json<Value> {
        s.changes
            .lock()
            .expect("lock")
            .push(("remove".into(), json!(name), auth_of(&headers)));
        Json(s.info.lock().expect("lock").clone())
    }
    let app = Router::new()
        .route("/pods/{pod}/v1/cluster", get(cluster))
        .route(
            "/pods/{pod}/v1/cluster/members/{name}/promote",
            post(promote),
        )
        .route(
            "/pods/{pod}/v1/cluster/members/{name}",
            axum::routing::delete(remove),
        )
        .route(
            "/pods/{pod}/v1/cluster/members/{name}/transfer",
            post(transfer),
        )
        .route("/pods/{pod}/v1/cluster/members", post(add))
        .route(
            "/pods/{pod}/v1/cluster/members/{name}/replace",
            post(replace),
        )
        .with_state(state);
    support::serve(app).await
}

/// A fake cluster of three healthy voters, master kv-0.
fn three_voters() -> Arc<FakeCluster> {
    let fake = Arc::new(FakeCluster::default());
    *fake.info.lock().expect("lock") = cluster_info(
        "kv-0",
        vec![
            member("kv-0", true, true),
            member("kv-1", true, false),
            member("kv-2", true, false),
        ],
    );
    fake
}

fn member(name: &str, voter: bool, master: bool) -> Value {
    let ordinal: u64 = name.trim_start_matches("kv-").parse().unwrap_or(9);
    json!({"name": name, "id": format!("{:016x}", ordinal + 1),
           "role": if voter {"voter"} else {"learner"}, "peer_url": format!("http://{name}.kv-peers:8081"),
           "is_master": master, "commit_index": 10, "healthy": true})
}

fn cluster_info(node: &str, members: Vec<Value>) -> Value {
    json!({"cluster_id": "kv.db", "node": node, "node_id": "0000000000000001", "node_state": "member",
           "node_state_reason": null, "master": "kv-0", "lease_remaining_ms": 900,
           "revision": 5, "applied_index": 10, "commit_index": 10, "members": members})
}

fn context(client: kube::Client, url: String) -> Arc<Context> {
    support::context(client, support::pods_at(url), OperatorMetrics::new())
}

fn paxoskv(spec: Value) -> PaxosKV {
    let spec: PaxosKVSpec = serde_json::from_value(spec).expect("spec");
    let mut pkv = PaxosKV::new("kv", spec);
    pkv.metadata.namespace = Some("db".into());
    pkv.metadata.uid = Some("0000-1111".into());
    pkv.metadata.generation = Some(2);
    pkv
}

fn pod(i: usize, ready: bool) -> Value {
    json!({"metadata": {"name": format!("kv-{i}"), "namespace": "db",
                        "labels": {"controller-revision-hash": "kv-rev1"}},
           "status": {"conditions": [{"type": "Ready", "status": if ready {"True"} else {"False"}}]}})
}

/// The owner reference the operator puts on every object of `kv`.
fn ours() -> Value {
    json!([{"apiVersion": "phxkv.io/v1alpha1", "kind": "PaxosKV", "name": "kv",
            "uid": "0000-1111", "controller": true, "blockOwnerDeletion": true}])
}

fn statefulset(replicas: i32) -> Value {
    json!({"apiVersion": "apps/v1", "kind": "StatefulSet",
           "metadata": {"name": "kv", "namespace": "db", "ownerReferences": ours()},
           "spec": {"replicas": replicas, "selector": {}, "serviceName": "kv-peers", "template": {}},
           "status": {"replicas": replicas, "updateRevision": "kv-rev1"}})
}

const NS: &str = "/api/v1/namespaces/db";
const APPS: &str = "/apis/apps/v1/namespaces/db";

/// Answers the ownership check before an apply: the object exists and is
/// `kv`'s.
async fn expect_owned(h: &mut ApiHandle, path: &str, api_version: &str, kind: &str) {
    let name = path.rsplit('/').next().unwrap_or_default().to_string();
    expect(h, "GET", path, |_| {
        (
            200,
            json!({"apiVersion": api_version, "kind": kind,
                   "metadata": {"name": name, "namespace": "db", "ownerReferences": ours()}}),
        )
    })
    .await;
}

/// The objects applied on every pass, in order, each after a check that it
/// is ours.
async fn expect_static_objects(h: &mut ApiHandle) {
    let path = format!("{NS}/serviceaccounts/kv");
    expect_owned(h, &path, "v1", "ServiceAccount").await;
    let sa = expect(h, "PATCH", &path, echo).await;
    assert_eq!(sa["automountServiceAccountToken"], json!(false));
    let path = format!("{NS}/services/kv-peers");
    expect_owned(h, &path, "v1", "Service").await;
    let peers = expect(h, "PATCH", &path, echo).await;
    assert_eq!(peers["spec"]["clusterIP"], "None");
    assert_eq!(peers["metadata"]["ownerReferences"][0]["kind"], "PaxosKV");
    let path = format!("{NS}/services/kv");
    expect_owned(h, &path, "v1", "Service").await;
    let client = expect(h, "PATCH", &path, echo).await;
    assert_eq!(client["spec"]["ports"][0]["port"], 8080);
    let path = "/apis/policy/v1/namespaces/db/poddisruptionbudgets/kv";
    expect_owned(h, path, "policy/v1", "PodDisruptionBudget").await;
    let pdb = expect(h, "PATCH", path, echo).await;
    assert!(pdb["spec"]["maxUnavailable"].is_number());
    let path = "/apis/networking.k8s.io/v1/namespaces/db/networkpolicies/kv";
    expect_owned(h, path, "networking.k8s.io/v1", "NetworkPolicy").await;
    let np = expect(h, "PATCH", path, echo).await;
    // The peer port admits the cluster's own pods only.
    assert_eq!(np["spec"]["ingress"][0]["ports"][0]["port"], 8081);
    assert_eq!(
        np["spec"]["ingress"][0]["from"][0]["podSelector"]["matchLabels"],
        np["spec"]["podSelector"]["matchLabels"]
    );
    assert!(np["spec"]["ingress"][1]["from"].is_null());
}

async fn expect_existing_token_and_bootstrap(h: &mut ApiHandle, bootstrap: i32) {
    expect_token_and_bootstrap_record(h, json!({"replicas": bootstrap.to_string()})).await;
}

/// The token Secret, then the bootstrap ConfigMap holding `record`.
async fn expect_token_and_bootstrap_record(h: &mut ApiHandle, record: Value) {
    expect(h, "GET", &format!("{NS}/secrets/kv-token"), |_| {
        (
            200,
            json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "kv-token"},
                     "data": {"token": "c2VjcmV0LXRva2VuLTAxMjM0NTY3ODk="}}),
        )
    })
    .await;
    expect(h, "GET", &format!("{NS}/configmaps/kv-bootstrap"), |_| {
        (
            200,
            json!({"apiVersion": "v1", "kind": "ConfigMap",
                     "metadata": {"name": "kv-bootstrap", "ownerReferences": ours()},
                     "data": record}),
        )
    })
    .await;
}

/// A pass over a cluster of `kv` that exists with `replicas` pods and
/// bootstrapped with 3, up to the pod listing (answered with `pods`): what
/// follows depends on the plan.
async fn expect_settled_pass(h: &mut ApiHandle, replicas: i32, pods: &Value) {
    expect_static_objects(h).await;
    expect_existing_token_and_bootstrap(h, 3).await;
    for method in ["GET", "PATCH"] {
        expect(h, method, &format!("{APPS}/statefulsets/kv"), |_| {
            (200, statefulset(replicas))
        })
        .await;
    }
    let listed = pods.clone();
    expect(h, "GET", &format!("{NS}/pods"), move |_| (200, listed)).await;
}

async fn expect_event(h: &mut ApiHandle, reason: &str) -> Value {
    let event = expect(
        h,
        "POST",
        "/apis/events.k8s.io/v1/namespaces/db/events",
        echo,
    )
    .await;
    assert_eq!(event["reason"], reason, "{event}");
    event
}

async fn expect_status(h: &mut ApiHandle) -> Value {
    let patch = expect(
        h,
        "PATCH",
        "/apis/phxkv.io/v1alpha1/namespaces/db/paxoskvs/kv/status",
        |body| {
            // The API server answers with the whole object.
            (
                200,
                json!({"apiVersion": "phxkv.io/v1alpha1", "kind": "PaxosKV",
                         "metadata": {"name": "kv", "namespace": "db"},
                         "spec": {}, "status": body["status"].clone()}),
            )
        },
    )
    .await;
    patch["status"].clone()
}

fn condition<'a>(status: &'a Value, type_: &str) -> &'a Value {
    status["conditions"]
        .as_array()
        .and_then(|cs| cs.iter().find(|c| c["type"] == type_))
        .unwrap_or(&Value::Null)
}

#[tokio::test]
async fn a_new_paxoskv_gets_its_objects_a_token_and_a_creating_status() {
    let (service, mut h) = mock::pair::<Request<Body>, Response<Body>>();
    let client = kube::Client::new(service, "db");
    let fake = Arc::new(FakeCluster::default());
    let url = fake_phxkv(fake.clone()).await;
    let ctx = context(client, url);
    let pkv = Arc::new(paxoskv(json!({"replicas": 3})));
    let run = tokio::spawn(reconcile(pkv, ctx));

    expect_static_objects(&mut h).await;
    expect(&mut h, "GET", &format!("{NS}/secrets/kv-token"), |_| {
        (404, not_found("secrets", "kv-token"))
    })
    .await;
    let secret = expect(&mut h, "POST", &format!("{NS}/secrets"), echo).await;
    let token = secret["data"]["token"].as_str().expect("token");
    assert!(token.len() >= 64, "a long random token, base64: {token}");
    expect(
        &mut h,
        "GET",
        &format!("{NS}/configmaps/kv-bootstrap"),
        |_| (404, not_found("configmaps", "kv-bootstrap")),
    )
    .await;
    let cm = expect(
        &mut h,
        "PATCH",
        &format!("{NS}/configmaps/kv-bootstrap"),
        echo,
    )
    .await;
    assert_eq!(cm["data"]["replicas"], "3");
    assert_eq!(cm["data"]["readMode"], "lease");
    assert_eq!(
        cm["data"]["tls"], "true",
        "TLS is on by default, and recorded"
    );
    // A CA of its own, then the replicas' certificate signed by it.
    expect(&mut h, "GET", &format!("{NS}/secrets/kv-ca"), |_| {
        (404, not_found("secrets", "kv-ca"))
    })
    .await;
    let ca = expect(&mut h, "POST", &format!("{NS}/secrets"), echo).await;
    assert_eq!(ca["metadata"]["name"], "kv-ca");
    assert_eq!(ca["metadata"]["ownerReferences"][0]["kind"], "PaxosKV");
    let ca_pem = decoded(&ca, "ca.crt");
    assert!(decoded(&ca, "ca.key").contains("PRIVATE KEY"));
    expect(&mut h, "GET", &format!("{NS}/secrets/kv-tls"), |_| {
        (404, not_found("secrets", "kv-tls"))
    })
    .await;
    let tls = expect(&mut h, "PATCH", &format!("{NS}/secrets/kv-tls"), echo).await;
    assert_eq!(tls["type"], "kubernetes.io/tls");
    assert_eq!(decoded(&tls, "ca.crt"), ca_pem);
    let cert = decoded(&tls, "tls.crt");
    for host in [
        "kv-0.kv-peers.db",
        "kv-2.kv-peers.db.svc",
        "kv.db.svc",
        "localhost",
    ] {
        phxkv::tls::issue::verifies_for(&ca_pem, &cert, host).expect(host);
    }
    let days = (phxkv::tls::issue::not_after_of(&cert).expect("expiry")
        - k8s_openapi::jiff::Timestamp::now().as_second())
        / 86_400;
    assert!((89..=90).contains(&days), "valid 90 days: {days}");
    let issued = expect_event(&mut h, "CertificateIssued").await;
    assert!(issued["note"].as_str().unwrap_or("").contains("kv-tls"));
    expect(&mut h, "GET", &format!("{APPS}/statefulsets/kv"), |_| {
        (404, not_found("statefulsets.apps", "kv"))
    })
    .await;
    let sts = expect(&mut h, "PATCH", &format!("{APPS}/statefulsets/kv"), echo).await;
    assert_eq!(sts["spec"]["replicas"], 3);
    assert_eq!(sts["spec"]["podManagementPolicy"], "Parallel");
    let pod = &sts["spec"]["template"]["spec"];
    assert!(
        pod["volumes"]
            .as_array()
            .expect("volumes")
            .iter()
            .any(|v| v["secret"]["secretName"] == "kv-tls"),
        "the replicas mount the certificate"
    );
    assert_eq!(
        pod["containers"][0]["readinessProbe"]["httpGet"]["scheme"],
        "HTTPS"
    );
    // The peer port admits the common name of the certificate just issued
    // (and so refuses client certificates of the same CA, which name their
    // holders).
    let allowed = pod["containers"][0]["env"]
        .as_array()
        .expect("env")
        .iter()
        .find(|e| e["name"] == "PHXKV_PEER_CERT_ALLOWED_CN")
        .and_then(|e| e["value"].as_str())
        .expect("PHXKV_PEER_CERT_ALLOWED_CN");
    use rustls::pki_types::pem::PemObject as _;
    let der = rustls::pki_types::CertificateDer::from_pem_slice(cert.as_bytes()).expect("PEM");
    assert_eq!(phxkv::tls::client_name(&der).as_deref(), Some(allowed));
    assert_eq!(allowed, "kv.db");
    let event = expect_event(&mut h, "Created").await;
    assert_eq!(event["regarding"]["kind"], "PaxosKV");
    expect(&mut h, "GET", &format!("{NS}/pods"), |_| {
        (
            200,
            json!({"apiVersion": "v1", "kind": "PodList", "metadata": {}, "items": []}),
        )
    })
    .await;
    let status = expect_status(&mut h).await;
    assert_eq!(status["phase"], "Creating");
    assert_eq!(status["observedGeneration"], 2);
    assert_eq!(condition(&status, "Available")["status"], "False");
    assert_eq!(condition(&status, "Available")["reason"], "NoMaster");
    assert_eq!(condition(&status, "Progressing")["status"], "True");
    assert!(
        condition(&status, "RevocationListApplied").is_null(),
        "no list asked for, no condition about one"
    );

    run.await.expect("joined").expect("reconciled");
}

/// The token and a bootstrap record of a cluster created with TLS.
async fn expect_token_and_tls_bootstrap(h: &mut ApiHandle) {
    let record = json!({"replicas": "3", "readMode": "lease", "tls": "true"});
    expect_token_and_bootstrap_record(h, record).await;
}

/// The rest of a pass over a cluster with a StatefulSet of 3 and no pods
/// yet, up to its status, answering only what such a pass asks.
async fn expect_rest_of_pass(h: &mut ApiHandle) -> Value {
    loop {
        let (seen, send) = next(h).await;
        let route = seen.path.split('?').next().unwrap_or("").to_string();
        match (seen.method.as_str(), route.as_str()) {
            ("GET" | "PATCH", r) if r == format!("{APPS}/statefulsets/kv") => {
                respond(send, 200, &statefulset(3))
            }
            ("GET", r) if r == format!("{NS}/pods") => respond(
                send,
                200,
                &json!({"apiVersion": "v1", "kind": "PodList", "metadata": {}, "items": []}),
            ),
            ("POST", "/apis/events.k8s.io/v1/namespaces/db/events") => {
                respond(send, 200, &seen.body)
            }
            ("PATCH", "/apis/phxkv.io/v1alpha1/namespaces/db/paxoskvs/kv/status") => {
                let status = seen.body["status"].clone();
                let object = json!({"apiVersion": "phxkv.io/v1alpha1", "kind": "PaxosKV",
                                    "metadata": {"name": "kv", "namespace": "db"},
                                    "spec": {}, "status": status});
                respond(send, 200, &object);
                return status;
            }
            (m, r) => panic!("unexpected request {m} {r}"),
        }
    }
}

fn secret(name: &str, data: Value, annotations: Value) -> Value {
    use base64::Engine as _;
    let encoded: serde_json::Map<String, Value> = data
        .as_object()
        .expect("data")
        .iter()
        .map(|(k, v)| {
            let text = v.as_str().expect("text");
            (
                k.clone(),
                json!(base64::engine::general_purpose::STANDARD.encode(text)),
            )
        })
        .collect();
    json!({"apiVersion": "v1", "kind": "Secret",
           "metadata": {"name": name, "namespace": "db", "ownerReferences": ours(),
                        "annotations": annotations},
           "data": encoded})
}

fn kv_names() -> Vec<String> {
    phxkv_operator::render::Names::with_transport(
        "kv",
        "db",
        phxkv_operator::render::Transport::Tls,
    )
    .certificate_names("db")
}

/// A reconcile running in its own task.
type Reconciling = tokio::task::JoinHandle<
    Result<kube::runtime::controller::Action, phxkv_operator::controller::Error>,
>;

/// Starts a reconcile of `kv` with `spec`, a cluster created with TLS,
/// and answers the pass up to its certificates: the static objects, the
/// token and the bootstrap record.
async fn start_tls_pass(spec: Value) -> (ApiHandle, Reconciling) {
    start_tls_pass_of(paxoskv(spec)).await
}

/// [`start_tls_pass`] of `pkv` as it is (with a status, say).
async fn start_tls_pass_of(pkv: PaxosKV) -> (ApiHandle, Reconciling) {
    let (service, mut h) = mock::pair::<Request<Body>, Response<Body>>();
    let client = kube::Client::new(service, "db");
    let ctx = context(client, "http://127.0.0.1:9".into());
    let run = tokio::spawn(reconcile(Arc::new(pkv), ctx));
    expect_static_objects(&mut h).await;
    expect_token_and_tls_bootstrap(&mut h).await;
    (h, run)
}

/// Answers a pass's reads of `kv-ca` with `ca` and of `kv-tls` with
/// `leaf` (signed by `ca`).
async fn answer_ca_and_certificate(
    h: &mut ApiHandle,
    ca: &phxkv::tls::issue::Issued,
    leaf: &phxkv::tls::issue::Issued,
) {
    let ca_secret = secret(
        "kv-ca",
        json!({"ca.crt": ca.cert_pem, "ca.key": ca.key_pem}),
        json!({}),
    );
    expect(h, "GET", &format!("{NS}/secrets/kv-ca"), move |_| {
        (200, ca_secret)
    })
    .await;
    let current = secret(
        "kv-tls",
        json!({"tls.crt": leaf.cert_pem, "tls.key": leaf.key_pem, "ca.crt": ca.cert_pem}),
        json!({}),
    );
    expect(h, "GET", &format!("{NS}/secrets/kv-tls"), move |_| {
        (200, current)
    })
    .await;
}

#[tokio::test]
async fn an_expiring_certificate_is_issued_again_from_the_same_ca_and_a_fresh_one_is_kept() {
    use phxkv::tls::issue;
    const DAY: Duration = Duration::from_secs(86_400);
    let ca = issue::new_ca("phxkv CA kv.db", 3650 * DAY).expect("ca");
    for (valid_days, renewed) in [(10, true), (80, false)] {
        let (mut h, run) = start_tls_pass(json!({"replicas": 3})).await;
        let old = issue::issue(&ca, "kv.db", &kv_names(), valid_days * DAY).expect("leaf");
        answer_ca_and_certificate(&mut h, &ca, &old).await;
        if renewed {
            let tls = expect(&mut h, "PATCH", &format!("{NS}/secrets/kv-tls"), echo).await;
            let cert = decoded(&tls, "tls.crt");
            assert_ne!(cert, old.cert_pem);
            assert_eq!(decoded(&tls, "ca.crt"), ca.cert_pem, "the same CA");
            issue::verifies_for(&ca.cert_pem, &cert, "kv-1.kv-peers.db").expect("verifies");
            assert!(issue::not_after_of(&cert).expect("expiry") > old.not_after + 60 * 86_400);
            let event = expect_event(&mut h, "CertificateRenewed").await;
            assert!(
                event["note"].as_str().unwrap_or("").contains("expires at"),
                "{event}"
            );
        }
        // A fresh certificate: straight on to the StatefulSet.
        expect_rest_of_pass(&mut h).await;
        run.await.expect("joined").expect("reconciled");
    }
}

/// Whether a rendered StatefulSet gives its pods a revocation list.
fn gives_crl(sts: &Value) -> bool {
    sts["spec"]["template"]["spec"]["containers"][0]["env"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|v| v["name"] == "PHXKV_TLS_CRL")
}

/// The StatefulSet `kv` of 3 whose pods mount `kv-crl`'s `ca.crl`, or
/// nothing.
fn statefulset_mounting(list: bool) -> Value {
    let mut sts = statefulset(3);
    let volumes = if list {
        json!([{"name": "crl", "secret": {"secretName": "kv-crl",
                "items": [{"key": "ca.crl", "path": "ca.crl"}]}}])
    } else {
        json!([])
    };
    sts["spec"]["template"] = json!({"spec": {"containers": [], "volumes": volumes}});
    sts
}

/// Answers a pass's read of the StatefulSet with [`statefulset_mounting`].
async fn answer_statefulset_mounting(h: &mut ApiHandle, list: bool) {
    expect(h, "GET", &format!("{APPS}/statefulsets/kv"), move |_| {
        (200, statefulset_mounting(list))
    })
    .await;
}

/// The rest of a pass after it read the StatefulSet: its apply and what
/// follows, to the end of the reconcile. Returns the applied StatefulSet
/// and the status written.
async fn finish_after_statefulset_read(mut h: ApiHandle, run: Reconciling) -> (Value, Value) {
    let sts = expect(&mut h, "PATCH", &format!("{APPS}/statefulsets/kv"), |_| {
        (200, statefulset(3))
    })
    .await;
    let status = expect_rest_of_pass(&mut h).await;
    run.await.expect("joined").expect("reconciled");
    (sts, status)
}

/// The `RevocationListApplied` condition of `status`: (status, reason).
fn list_condition(status: &Value) -> (String, String) {
    let c = condition(status, "RevocationListApplied");
    (
        c["status"].as_str().unwrap_or_default().to_owned(),
        c["reason"].as_str().unwrap_or_default().to_owned(),
    )
}

/// `spec.tls.revocationList`: after the certificates, the pass reads the
/// list's Secret and checks it as a replica starting with it would. A
/// usable list is given to the pods. One that would stop a replica is
/// reported in a Warning event and, unless the pods mount it already, not
/// given to them: they keep what they mount (here nothing).
#[tokio::test]
async fn a_revocation_list_that_would_stop_a_replica_is_reported_and_held_back() {
    use phxkv::tls::issue;
    const DAY: Duration = Duration::from_secs(86_400);
    let ca = issue::new_ca("phxkv CA kv.db", 3650 * DAY).expect("ca");
    let other = issue::new_ca("corp CA", 3650 * DAY).expect("other");
    let leaf = issue::issue(&ca, "kv.db", &kv_names(), 80 * DAY).expect("leaf");
    let client = issue::issue(&ca, "app", &kv_names(), 80 * DAY).expect("client");
    let usable = issue::revocation_list(&ca, &[&client.cert_pem], 1, 7 * DAY).expect("list");
    let foreign = issue::revocation_list(&other, &[], 1, 7 * DAY).expect("list");
    let own = issue::revocation_list(&ca, &[&leaf.cert_pem], 2, 7 * DAY).expect("list");
    let crl_secret = |key: &str, pem: &str| Some(secret("kv-crl", json!({key: pem}), json!({})));
    let mut der = secret("kv-crl", json!({}), json!({}));
    der["data"] = json!({"ca.crl": "MIIB/w=="});
    // (stored list, words of the warning, whether the pods mount it now)
    let cases = [
        (None, Some("does not exist"), false),
        (
            crl_secret("other.crl", &usable),
            Some("has no key ca.crl"),
            false,
        ),
        (Some(der), Some("is not text"), false),
        (crl_secret("ca.crl", &foreign), Some("corp CA"), false),
        (crl_secret("ca.crl", &own), Some("own certificate"), false),
        (crl_secret("ca.crl", &own), Some("mount it already"), true),
        (crl_secret("ca.crl", &usable), None, false),
    ];
    for (stored, warning, mounted) in cases {
        let (mut h, run) =
            start_tls_pass(json!({"replicas": 3, "tls": {"revocationList": {"name": "kv-crl"}}}))
                .await;
        answer_ca_and_certificate(&mut h, &ca, &leaf).await;
        expect(&mut h, "GET", &format!("{NS}/secrets/kv-crl"), move |_| {
            stored.map_or_else(|| (404, not_found("secrets", "kv-crl")), |s| (200, s))
        })
        .await;
        answer_statefulset_mounting(&mut h, mounted).await;
        if let Some(words) = warning {
            let event = expect_event(&mut h, "RevocationListInvalid").await;
            assert_eq!(event["type"], "Warning");
            let note = event["note"].as_str().unwrap_or_default();
            assert!(note.contains(words) && note.contains("kv-crl"), "{note}");
            if !mounted {
                assert!(note.contains("keep no revocation list"), "{note}");
            }
        }
        let (sts, status) = finish_after_statefulset_read(h, run).await;
        assert_eq!(
            gives_crl(&sts),
            warning.is_none() || mounted,
            "{warning:?}, mounted: {mounted}"
        );
        // The spec's generation is observed either way; the condition says
        // whether its list went out.
        let (state, reason) = list_condition(&status);
        match warning {
            Some(words) => {
                assert_eq!(
                    (state.as_str(), reason.as_str()),
                    ("False", "RevocationListInvalid")
                );
                let message = condition(&status, "RevocationListApplied")["message"]
                    .as_str()
                    .unwrap_or_default();
                assert!(message.contains(words), "{message}");
            }
            None => {
                assert_eq!((state.as_str(), reason.as_str()), ("True", "Mounted"));
                // What was given is recorded, to refuse an older list later.
                assert_eq!(
                    status["revocationLists"],
                    json!([{"issuer": "CN=phxkv CA kv.db", "number": "1",
                            "issued": status["revocationLists"][0]["issued"]}])
                );
                assert!(status["revocationLists"][0]["issued"].is_string());
            }
        }
    }
}

/// A list older than the one last given to the replicas (the PaxosKV's
/// `status.revocationLists`) would be taken by a replica that restarts and
/// admit what was revoked since: it is reported, held back unless the pods
/// mount it already, and the record of what was given stays.
#[tokio::test]
async fn a_revocation_list_older_than_the_one_given_is_reported_and_held_back() {
    use phxkv::tls::issue;
    const DAY: Duration = Duration::from_secs(86_400);
    let ca = issue::new_ca("phxkv CA kv.db", 3650 * DAY).expect("ca");
    let leaf = issue::issue(&ca, "kv.db", &kv_names(), 80 * DAY).expect("leaf");
    let older = issue::revocation_list(&ca, &[], 4, 7 * DAY).expect("list");
    let given = json!([{"issuer": "CN=phxkv CA kv.db", "number": "5",
                        "issued": "2026-01-01T00:00:00Z"}]);
    for mounted in [false, true] {
        let mut pkv =
            paxoskv(json!({"replicas": 3, "tls": {"revocationList": {"name": "kv-crl"}}}));
        pkv.status =
            Some(serde_json::from_value(json!({"revocationLists": given})).expect("status"));
        let (mut h, run) = start_tls_pass_of(pkv).await;
        answer_ca_and_certificate(&mut h, &ca, &leaf).await;
        let stored = secret("kv-crl", json!({"ca.crl": older}), json!({}));
        expect(&mut h, "GET", &format!("{NS}/secrets/kv-crl"), move |_| {
            (200, stored)
        })
        .await;
        answer_statefulset_mounting(&mut h, mounted).await;
        let event = expect_event(&mut h, "RevocationListOlder").await;
        let note = event["note"].as_str().unwrap_or_default().to_owned();
        assert!(
            note.contains("number 4, older than number 5") && note.contains("kv-crl"),
            "{note}"
        );
        let (sts, status) = finish_after_statefulset_read(h, run).await;
        assert_eq!(gives_crl(&sts), mounted, "held back unless mounted already");
        assert_eq!(
            list_condition(&status),
            ("False".into(), "RevocationListOlder".into())
        );
        if mounted {
            assert!(
                note.contains("a replica on a new volume takes this one"),
                "{note}"
            );
        }
        assert_eq!(status["revocationLists"], given, "the mark stays");
    }
}

/// During a CA rotation a list of the previous CA alone still applies, but
/// a replica starting with it after the previous CA is retired would stop:
/// the pass says so, and gives the list to the pods all the same.
#[tokio::test]
async fn during_a_ca_rotation_a_list_of_the_previous_ca_alone_is_reported() {
    use phxkv::tls::issue;
    const DAY: Duration = Duration::from_secs(86_400);
    let old = issue::new_ca("phxkv CA kv.db 2020-01-01T00:00:00Z", 300 * DAY).expect("old");
    let new = issue::new_ca("phxkv CA kv.db 2026-01-01T00:00:00Z", 3650 * DAY).expect("new");
    let leaf = issue::issue(&new, "kv.db", &kv_names(), 80 * DAY).expect("leaf");
    let bundle = format!("{}{}", new.cert_pem, old.cert_pem);
    let rotated_at = k8s_openapi::jiff::Timestamp::from_second(
        k8s_openapi::jiff::Timestamp::now().as_second() - 86_400,
    )
    .expect("a time");
    let ca_secret = secret(
        "kv-ca",
        json!({"ca.crt": new.cert_pem, "ca.key": new.key_pem, "previous-ca.crt": old.cert_pem}),
        json!({"phxkv.io/ca-rotated-at": rotated_at.to_string()}),
    );
    let tls_secret = secret(
        "kv-tls",
        json!({"tls.crt": leaf.cert_pem, "tls.key": leaf.key_pem, "ca.crt": bundle}),
        json!({}),
    );
    let old_list = issue::revocation_list(&old, &[], 1, 7 * DAY).expect("list");
    let new_list = issue::revocation_list(&new, &[], 1, 7 * DAY).expect("list");
    for (lists, reported) in [
        (old_list.clone(), true),
        (format!("{old_list}{new_list}"), false),
    ] {
        let (mut h, run) =
            start_tls_pass(json!({"replicas": 3, "tls": {"revocationList": {"name": "kv-crl"}}}))
                .await;
        let (ca_answer, tls_answer) = (ca_secret.clone(), tls_secret.clone());
        expect(&mut h, "GET", &format!("{NS}/secrets/kv-ca"), move |_| {
            (200, ca_answer)
        })
        .await;
        expect(&mut h, "GET", &format!("{NS}/secrets/kv-tls"), move |_| {
            (200, tls_answer)
        })
        .await;
        let stored = secret("kv-crl", json!({"ca.crl": lists}), json!({}));
        expect(&mut h, "GET", &format!("{NS}/secrets/kv-crl"), move |_| {
            (200, stored)
        })
        .await;
        if reported {
            let event = expect_event(&mut h, "RevocationListOutdated").await;
            let note = event["note"].as_str().unwrap_or_default();
            assert!(
                note.contains("retired at") && note.contains("kv-ca"),
                "{note}"
            );
        }
        expect(&mut h, "GET", &format!("{APPS}/statefulsets/kv"), |_| {
            (200, statefulset(3))
        })
        .await;
        let (sts, status) = finish_after_statefulset_read(h, run).await;
        assert!(gives_crl(&sts), "the list still applies");
        assert_eq!(list_condition(&status), ("True".into(), "Mounted".into()));
    }
}

/// A CA with less than a year left: the pass replaces `kv-ca` (as read, by
/// resource version) with a new CA and keeps the old one's certificate as
/// `previous-ca.crt`, then gives the replicas both CAs to trust while their
/// certificate stays the old CA's; once the trust has spread, the next pass
/// issues the certificate from the new CA.
#[tokio::test]
async fn an_ageing_ca_is_rotated_trust_first_then_the_certificate() {
    use phxkv::tls::issue;
    const DAY: Duration = Duration::from_secs(86_400);
    let old = issue::new_ca("phxkv CA kv.db", 300 * DAY).expect("ca");
    let mut old_secret = secret(
        "kv-ca",
        json!({"ca.crt": old.cert_pem, "ca.key": old.key_pem}),
        json!({}),
    );
    old_secret["metadata"]["resourceVersion"] = json!("41");
    let leaf = issue::issue(&old, "kv.db", &kv_names(), 80 * DAY).expect("leaf");
    let leaf_secret = secret(
        "kv-tls",
        json!({"tls.crt": leaf.cert_pem, "tls.key": leaf.key_pem, "ca.crt": old.cert_pem}),
        json!({}),
    );

    // The rotation.
    let (mut h, run) = start_tls_pass(json!({"replicas": 3})).await;
    let answer = old_secret.clone();
    expect(&mut h, "GET", &format!("{NS}/secrets/kv-ca"), move |_| {
        (200, answer)
    })
    .await;
    let rotated = expect(&mut h, "PUT", &format!("{NS}/secrets/kv-ca"), echo).await;
    assert_eq!(
        rotated["metadata"]["resourceVersion"], "41",
        "replaced as read"
    );
    let new_pem = decoded(&rotated, "ca.crt");
    assert_ne!(new_pem, old.cert_pem, "a new CA");
    assert!(decoded(&rotated, "ca.key").contains("PRIVATE KEY"));
    assert_ne!(decoded(&rotated, "ca.key"), old.key_pem);
    assert_eq!(decoded(&rotated, "previous-ca.crt"), old.cert_pem);
    assert!(
        issue::not_after_of(&new_pem).expect("expiry") > old.not_after + 3000 * 86_400,
        "valid ten years"
    );
    // Named apart from the old CA, so that a revocation list of either
    // can be used while both are trusted.
    let new_ca = issue::Issued {
        cert_pem: new_pem.clone(),
        key_pem: decoded(&rotated, "ca.key"),
        not_after: 0,
    };
    let list = issue::revocation_list(&new_ca, &[], 1, 7 * DAY).expect("list");
    let both = format!("{new_pem}{}", old.cert_pem);
    issue::check_revocation_lists(&both, &list, &leaf.cert_pem)
        .expect("a new CA's list beside the old CA");
    let rotated_at = rotated["metadata"]["annotations"]["phxkv.io/ca-rotated-at"]
        .as_str()
        .expect("time of rotation")
        .to_string();
    let event = expect_event(&mut h, "CARotated").await;
    assert!(
        event["note"].as_str().unwrap_or("").contains("ca.crt"),
        "{event}"
    );
    let current = leaf_secret.clone();
    expect(&mut h, "GET", &format!("{NS}/secrets/kv-tls"), move |_| {
        (200, current)
    })
    .await;
    let tls = expect(&mut h, "PATCH", &format!("{NS}/secrets/kv-tls"), echo).await;
    assert_eq!(
        decoded(&tls, "tls.crt"),
        leaf.cert_pem,
        "the certificate is kept"
    );
    assert_eq!(decoded(&tls, "tls.key"), leaf.key_pem);
    let bundle = decoded(&tls, "ca.crt");
    assert!(
        bundle.starts_with(&new_pem) && bundle.ends_with(&old.cert_pem),
        "{bundle}"
    );
    expect_rest_of_pass(&mut h).await;
    run.await.expect("joined").expect("reconciled");

    assert!(
        rotated_at.parse::<k8s_openapi::jiff::Timestamp>().is_ok(),
        "{rotated_at}"
    );
    let ago = |secs: i64| {
        k8s_openapi::jiff::Timestamp::from_second(
            k8s_openapi::jiff::Timestamp::now().as_second() - secs,
        )
        .expect("time")
        .to_string()
    };

    // Twenty minutes later the trust has spread: the certificate comes from
    // the new CA, and the CA stays as it is.
    let mut stored = rotated.clone();
    stored["metadata"]["annotations"]["phxkv.io/ca-rotated-at"] = json!(ago(20 * 60));
    let (mut h, run) = start_tls_pass(json!({"replicas": 3})).await;
    let answer = stored.clone();
    expect(&mut h, "GET", &format!("{NS}/secrets/kv-ca"), move |_| {
        (200, answer)
    })
    .await;
    let current = tls.clone();
    expect(&mut h, "GET", &format!("{NS}/secrets/kv-tls"), move |_| {
        (200, current)
    })
    .await;
    let renewed = expect(&mut h, "PATCH", &format!("{NS}/secrets/kv-tls"), echo).await;
    let cert = decoded(&renewed, "tls.crt");
    assert_ne!(cert, leaf.cert_pem);
    assert_eq!(
        decoded(&renewed, "ca.crt"),
        bundle,
        "both CAs still trusted"
    );
    issue::verifies_for(&new_pem, &cert, "kv-2.kv-peers.db").expect("from the new CA");
    let event = expect_event(&mut h, "CertificateRenewed").await;
    assert!(
        event["note"]
            .as_str()
            .unwrap_or("")
            .contains("the CA was rotated"),
        "{event}"
    );
    expect_rest_of_pass(&mut h).await;
    run.await.expect("joined").expect("reconciled");

    // Eight days after the rotation the old CA is retired: `kv-ca` loses
    // it, and the certificate (kept) is trusted through the new CA alone.
    stored["metadata"]["annotations"]["phxkv.io/ca-rotated-at"] = json!(ago(8 * 86_400));
    let (mut h, run) = start_tls_pass(json!({"replicas": 3})).await;
    expect(&mut h, "GET", &format!("{NS}/secrets/kv-ca"), move |_| {
        (200, stored)
    })
    .await;
    let retired = expect(&mut h, "PUT", &format!("{NS}/secrets/kv-ca"), echo).await;
    assert!(
        retired["data"].get("previous-ca.crt").is_none(),
        "{retired}"
    );
    assert_eq!(decoded(&retired, "ca.crt"), new_pem);
    expect_event(&mut h, "PreviousCARetired").await;
    let current = renewed.clone();
    expect(&mut h, "GET", &format!("{NS}/secrets/kv-tls"), move |_| {
        (200, current)
    })
    .await;
    let retrusted = expect(&mut h, "PATCH", &format!("{NS}/secrets/kv-tls"), echo).await;
    assert_eq!(
        decoded(&retrusted, "tls.crt"),
        cert,
        "the certificate is kept"
    );
    assert_eq!(decoded(&retrusted, "ca.crt"), new_pem);
    expect_rest_of_pass(&mut h).await;
    run.await.expect("joined").expect("reconciled");
}

/// A TLS pass with `issuerRef` up to the `Certificate` it applies (none
/// existed), which it returns.
async fn start_cert_manager_pass() -> (ApiHandle, Reconciling, Value) {
    let (mut h, run) =
        start_tls_pass(json!({"replicas": 3, "tls": {"issuerRef": {"name": "corp-ca"}}})).await;
    let certs = "/apis/cert-manager.io/v1/namespaces/db/certificates/kv-tls";
    expect(&mut h, "GET", certs, |_| {
        (404, not_found("certificates.cert-manager.io", "kv-tls"))
    })
    .await;
    let cert = expect(&mut h, "PATCH", certs, echo).await;
    (h, run, cert)
}

#[tokio::test]
async fn with_an_issuer_ref_cert_manager_makes_the_certificate_and_no_ca_is_made() {
    let (mut h, run, cert) = start_cert_manager_pass().await;
    assert_eq!(cert["kind"], "Certificate");
    assert_eq!(cert["metadata"]["ownerReferences"][0]["uid"], "0000-1111");
    assert_eq!(cert["spec"]["secretName"], "kv-tls");
    assert_eq!(
        cert["spec"]["issuerRef"],
        json!({"name": "corp-ca", "kind": "Issuer", "group": "cert-manager.io"})
    );
    assert_eq!(cert["spec"]["dnsNames"], json!(kv_names()));
    // The name the replicas' peer ports admit (PHXKV_PEER_CERT_ALLOWED_CN).
    assert_eq!(cert["spec"]["commonName"], "kv.db");
    // cert-manager has not written the Secret yet: the pass goes on (the
    // pods wait for their volume).
    expect(&mut h, "GET", &format!("{NS}/secrets/kv-tls"), |_| {
        (404, not_found("secrets", "kv-tls"))
    })
    .await;
    expect_rest_of_pass(&mut h).await;
    run.await.expect("joined").expect("reconciled");
}

/// An issuer that drops the common name the Certificate asks for: the
/// replicas would refuse to start with it, and the events say why.
#[tokio::test]
async fn a_cert_manager_certificate_without_the_replicas_common_name_is_reported() {
    use phxkv::tls::issue;
    const DAY: Duration = Duration::from_secs(86_400);
    let (mut h, run, _) = start_cert_manager_pass().await;
    let ca = issue::new_ca("corp CA", 3650 * DAY).expect("ca");
    let leaf = issue::issue(&ca, "renamed-by-issuer", &kv_names(), 80 * DAY).expect("leaf");
    let written = secret(
        "kv-tls",
        json!({"tls.crt": leaf.cert_pem, "tls.key": leaf.key_pem, "ca.crt": ca.cert_pem}),
        json!({"cert-manager.io/certificate-name": "kv-tls"}),
    );
    expect(&mut h, "GET", &format!("{NS}/secrets/kv-tls"), move |_| {
        (200, written)
    })
    .await;
    let event = expect_event(&mut h, "CertificateNameMismatch").await;
    assert_eq!(event["type"], "Warning");
    let note = event["note"].as_str().unwrap_or_default();
    assert!(
        note.contains("kv.db") && note.contains("Issuer corp-ca"),
        "{note}"
    );
    expect_rest_of_pass(&mut h).await;
    run.await.expect("joined").expect("reconciled");
}

/// With `issuerRef`, before cert-manager has written the certificate
/// Secret, a revocation list cannot be checked against its CA: it is not
/// given to the pods yet (one they mount already stays), no event is
/// published, and the status says why.
#[tokio::test]
async fn a_revocation_list_is_held_back_until_it_can_be_checked() {
    for mounted in [false, true] {
        let (mut h, run) = start_tls_pass(json!({"replicas": 3, "tls": {
            "issuerRef": {"name": "corp-ca"}, "revocationList": {"name": "kv-crl"}}}))
        .await;
        let certs = "/apis/cert-manager.io/v1/namespaces/db/certificates/kv-tls";
        expect(&mut h, "GET", certs, |_| {
            (404, not_found("certificates.cert-manager.io", "kv-tls"))
        })
        .await;
        expect(&mut h, "PATCH", certs, echo).await;
        expect(&mut h, "GET", &format!("{NS}/secrets/kv-tls"), |_| {
            (404, not_found("secrets", "kv-tls"))
        })
        .await;
        // No read of kv-crl, no event: on to the StatefulSet.
        answer_statefulset_mounting(&mut h, mounted).await;
        let (sts, status) = finish_after_statefulset_read(h, run).await;
        assert_eq!(gives_crl(&sts), mounted, "held back unless mounted already");
        assert_eq!(
            list_condition(&status),
            ("False".into(), "WaitingForCertificate".into())
        );
        let message = condition(&status, "RevocationListApplied")["message"]
            .as_str()
            .unwrap_or_default();
        let kept = if mounted {
            "mount it already"
        } else {
            "keep no revocation list"
        };
        assert!(
            message.contains(kept) && !message.contains("stops"),
            "{message}"
        );
    }
}

#[tokio::test]
async fn without_cert_manager_installed_an_issuer_ref_fails_with_a_reason() {
    let (mut h, run) =
        start_tls_pass(json!({"replicas": 3, "tls": {"issuerRef": {"name": "corp-ca"}}})).await;
    let certs = "/apis/cert-manager.io/v1/namespaces/db/certificates/kv-tls";
    expect(&mut h, "GET", certs, |_| (404, not_found("", ""))).await;
    expect(&mut h, "PATCH", certs, |_| (404, not_found("", ""))).await;
    let event = expect_event(&mut h, "ReconcileFailed").await;
    assert!(
        event["note"]
            .as_str()
            .unwrap_or("")
            .contains("install cert-manager"),
        "{event}"
    );
    let status = expect_status(&mut h).await;
    assert_eq!(condition(&status, "Ready")["reason"], "CertificateError");
    assert!(run.await.expect("joined").is_err());
}

#[tokio::test]
async fn tls_stays_what_the_cluster_was_created_with() {
    let (mut h, run) = start_tls_pass(json!({"replicas": 3, "tls": {"enabled": false}})).await;
    let event = expect_event(&mut h, "InvalidSpec").await;
    assert!(
        event["note"]
            .as_str()
            .unwrap_or("")
            .contains("fixed at creation"),
        "{event}"
    );
    let status = expect_status(&mut h).await;
    assert_eq!(status["phase"], "Invalid");
    run.await.expect("joined").expect("reconciled");
}

/// A cluster created before TLS existed stays plain HTTP, where a
/// revocation list would do nothing: it is refused, not ignored.
#[tokio::test]
async fn a_revocation_list_is_refused_on_a_cluster_that_stays_plain() {
    let (service, mut h) = mock::pair::<Request<Body>, Response<Body>>();
    let client = kube::Client::new(service, "db");
    let ctx = context(client, "http://127.0.0.1:9".into());
    let pkv = paxoskv(json!({"replicas": 3, "tls": {"revocationList": {"name": "kv-crl"}}}));
    let run = tokio::spawn(reconcile(Arc::new(pkv), ctx));
    expect_static_objects(&mut h).await;
    expect_existing_token_and_bootstrap(&mut h, 3).await;
    let event = expect_event(&mut h, "InvalidSpec").await;
    let note = event["note"].as_str().unwrap_or_default();
    assert!(
        note.contains("revocationList needs TLS") && note.contains("plain HTTP"),
        "{note}"
    );
    let status = expect_status(&mut h).await;
    assert_eq!(status["phase"], "Invalid");
    run.await.expect("joined").expect("reconciled");
}

#[tokio::test]
async fn scaling_up_resizes_the_statefulset_then_adds_a_learner_with_the_token() {
    let (service, mut h) = mock::pair::<Request<Body>, Response<Body>>();
    let client = kube::Client::new(service, "db");
    let fake = three_voters();
    let url = fake_phxkv(fake.clone()).await;
    let ctx = context(client, url);
    let pkv = Arc::new(paxoskv(json!({"replicas": 5})));

    // Pass 1: the set has 3 pods; the step is to grow it to 5.
    let run = tokio::spawn(reconcile(pkv.clone(), ctx.clone()));
    expect_static_objects(&mut h).await;
    expect_existing_token_and_bootstrap(&mut h, 3).await;
    expect(&mut h, "GET", &format!("{APPS}/statefulsets/kv"), |_| {
        (200, statefulset(3))
    })
    .await;
    let sts = expect(&mut h, "PATCH", &format!("{APPS}/statefulsets/kv"), |_| {
        (200, statefulset(3))
    })
    .await;
    assert_eq!(
        sts["spec"]["replicas"], 3,
        "the template is applied at the current size"
    );
    expect(&mut h, "GET", &format!("{NS}/pods"), |_| {
        (
            200,
            json!({"apiVersion": "v1", "kind": "PodList", "metadata": {},
                     "items": [pod(0, true), pod(1, true), pod(2, true)]}),
        )
    })
    .await;
    let grown = expect(&mut h, "PATCH", &format!("{APPS}/statefulsets/kv"), |_| {
        (200, statefulset(5))
    })
    .await;
    assert_eq!(grown["spec"]["replicas"], 5);
    expect_event(&mut h, "Scaled").await;
    let status = expect_status(&mut h).await;
    assert_eq!(status["phase"], "Scaling");
    assert_eq!(status["master"], "kv-0");
    assert_eq!(status["members"].as_array().map(Vec::len), Some(3));
    assert_eq!(condition(&status, "Available")["status"], "True");
    run.await.expect("joined").expect("reconciled");
    assert!(fake.changes.lock().expect("lock").is_empty());

    // Pass 2: five pods exist, the new ones not ready; kv-3 is added.
    let run = tokio::spawn(reconcile(pkv, ctx));
    expect_static_objects(&mut h).await;
    expect_existing_token_and_bootstrap(&mut h, 3).await;
    expect(&mut h, "GET", &format!("{APPS}/statefulsets/kv"), |_| {
        (200, statefulset(5))
    })
    .await;
    expect(&mut h, "PATCH", &format!("{APPS}/statefulsets/kv"), |_| {
        (200, statefulset(5))
    })
    .await;
    expect(&mut h, "GET", &format!("{NS}/pods"), |_| {
        (200, json!({"apiVersion": "v1", "kind": "PodList", "metadata": {},
                     "items": [pod(0, true), pod(1, true), pod(2, true), pod(3, false), pod(4, false)]}))
    })
    .await;
    expect_event(&mut h, "MemberAdded").await;
    let status = expect_status(&mut h).await;
    assert_eq!(status["phase"], "Scaling");
    run.await.expect("joined").expect("reconciled");

    let changes = fake.changes.lock().expect("lock");
    assert_eq!(changes.len(), 1);
    let (kind, body, auth) = &changes[0];
    assert_eq!(kind, "add");
    assert_eq!(body["name"], "kv-3");
    assert_eq!(body["peer_url"], "http://kv-3.kv-peers:8081");
    assert_eq!(auth.as_deref(), Some("Bearer secret-token-0123456789"));
}

#[tokio::test]
async fn an_invalid_spec_touches_nothing_and_says_why() {
    let (service, mut h) = mock::pair::<Request<Body>, Response<Body>>();
    let client = kube::Client::new(service, "db");
    let ctx = context(client, "http://127.0.0.1:9".into());
    let pkv = Arc::new(paxoskv(json!({"replicas": 4})));
    let run = tokio::spawn(reconcile(pkv, ctx));

    let event = expect_event(&mut h, "InvalidSpec").await;
    assert_eq!(event["type"], "Warning");
    assert!(
        event["note"].as_str().unwrap_or("").contains("must be odd"),
        "{event}"
    );
    let status = expect_status(&mut h).await;
    assert_eq!(status["phase"], "Invalid");
    assert_eq!(condition(&status, "Degraded")["reason"], "InvalidSpec");
    assert!(
        condition(&status, "Degraded")["message"]
            .as_str()
            .unwrap_or("")
            .contains("spec.replicas is 4")
    );
    run.await.expect("joined").expect("reconciled");
    // Nothing else was asked of the API server.
    let more = tokio::time::timeout(Duration::from_millis(200), h.next_request()).await;
    // (None: the client is gone, so nothing more can come.)
    assert!(matches!(more, Err(_) | Ok(None)), "no further requests");
}

#[tokio::test]
async fn the_read_mode_stays_what_the_cluster_was_created_with() {
    let (service, mut h) = mock::pair::<Request<Body>, Response<Body>>();
    let client = kube::Client::new(service, "db");
    let ctx = context(client, "http://127.0.0.1:9".into());
    // Created before read modes existed (no key: lease); now asks for quorum.
    let pkv = Arc::new(paxoskv(json!({"replicas": 3, "readMode": "quorum"})));
    let run = tokio::spawn(reconcile(pkv, ctx));
    expect_static_objects(&mut h).await;
    expect_existing_token_and_bootstrap(&mut h, 3).await;
    let event = expect_event(&mut h, "InvalidSpec").await;
    assert!(
        event["note"]
            .as_str()
            .unwrap_or("")
            .contains("created with lease"),
        "{event}"
    );
    let status = expect_status(&mut h).await;
    assert_eq!(status["phase"], "Invalid");
    run.await.expect("joined").expect("reconciled");
    // Neither the StatefulSet nor the bootstrap ConfigMap was touched.
    let more = tokio::time::timeout(Duration::from_millis(200), h.next_request()).await;
    assert!(matches!(more, Err(_) | Ok(None)), "no further requests");
}

#[tokio::test]
async fn a_pod_back_with_an_empty_volume_is_replaced_with_an_event_and_a_condition() {
    let (service, mut h) = mock::pair::<Request<Body>, Response<Body>>();
    let client = kube::Client::new(service, "db");
    let fake = Arc::new(FakeCluster::default());
    let mut lost_member = member("kv-1", true, false);
    lost_member["healthy"] = json!(false);
    *fake.info.lock().expect("lock") = cluster_info(
        "kv-0",
        vec![
            member("kv-0", true, true),
            lost_member,
            member("kv-2", true, false),
        ],
    );
    fake.lost.lock().expect("lock").push("kv-1".into());
    let url = fake_phxkv(fake.clone()).await;
    let ctx = context(client, url);
    let pkv = Arc::new(paxoskv(json!({"replicas": 3})));

    let run = tokio::spawn(reconcile(pkv, ctx));
    expect_static_objects(&mut h).await;
    expect_existing_token_and_bootstrap(&mut h, 3).await;
    expect(&mut h, "GET", &format!("{APPS}/statefulsets/kv"), |_| {
        (200, statefulset(3))
    })
    .await;
    expect(&mut h, "PATCH", &format!("{APPS}/statefulsets/kv"), |_| {
        (200, statefulset(3))
    })
    .await;
    expect(&mut h, "GET", &format!("{NS}/pods"), |_| {
        (
            200,
            json!({"apiVersion": "v1", "kind": "PodList", "metadata": {},
                     "items": [pod(0, true), pod(1, false), pod(2, true)]}),
        )
    })
    .await;
    let event = expect_event(&mut h, "MemberReplaced").await;
    assert_eq!(event["type"], "Warning");
    let note = event["note"].as_str().unwrap_or("");
    assert!(
        note.contains("kv-1 came back with an empty volume")
            && note.contains("removed incarnation 0000000000000002"),
        "{note}"
    );
    let status = expect_status(&mut h).await;
    let lost = condition(&status, "VolumeLost");
    assert_eq!(lost["status"], "True", "{status}");
    assert_eq!(lost["reason"], "ReplacingMember");
    assert!(
        lost["message"].as_str().unwrap_or("").contains("kv-1"),
        "{lost}"
    );
    assert_eq!(status["members"][1]["id"], "0000000000000002");
    run.await.expect("joined").expect("reconciled");

    let changes = fake.changes.lock().expect("lock");
    assert_eq!(changes.len(), 1, "one replacement, nothing else");
    let (kind, body, auth) = &changes[0];
    assert_eq!(kind, "replace");
    assert_eq!(body, "kv-1");
    assert_eq!(auth.as_deref(), Some("Bearer secret-token-0123456789"));
}

#[tokio::test]
async fn a_failed_reconcile_shows_in_status_and_a_warning_event() {
    let (service, mut h) = mock::pair::<Request<Body>, Response<Body>>();
    let client = kube::Client::new(service, "db");
    let ctx = context(client, "http://127.0.0.1:9".into());
    // Running, then storage.storageClassName set: the API server refuses
    // the StatefulSet (its volume claim templates are immutable).
    let mut pkv = paxoskv(json!({"replicas": 3, "storage": {"storageClassName": "fast"}}));
    pkv.status = Some(
        serde_json::from_value(
            json!({"phase": "Running", "replicas": 3, "readyReplicas": 3,
            "master": "kv-0", "observedGeneration": 1,
            "conditions": [{"type": "Ready", "status": "True", "reason": "Running",
                            "message": "every member is healthy and matches the spec",
                            "lastTransitionTime": "2026-01-01T00:00:00Z"}]}),
        )
        .expect("status"),
    );
    let run = tokio::spawn(reconcile(Arc::new(pkv), ctx));
    expect_static_objects(&mut h).await;
    expect_existing_token_and_bootstrap(&mut h, 3).await;
    expect(&mut h, "GET", &format!("{APPS}/statefulsets/kv"), |_| {
        (200, statefulset(3))
    })
    .await;
    let refused = "StatefulSet.apps \"kv\" is invalid: spec: Forbidden: updates to statefulset \
                   spec for fields other than 'replicas', 'ordinals', 'template', \
                   'updateStrategy', 'persistentVolumeClaimRetentionPolicy' and \
                   'minReadySeconds' are forbidden";
    expect(&mut h, "PATCH", &format!("{APPS}/statefulsets/kv"), |_| {
        (
            422,
            json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                   "message": refused, "reason": "Invalid", "code": 422}),
        )
    })
    .await;
    let event = expect_event(&mut h, "ReconcileFailed").await;
    assert_eq!(event["type"], "Warning");
    assert!(
        event["note"].as_str().unwrap_or("").contains("Forbidden"),
        "{event}"
    );
    let status = expect_status(&mut h).await;
    let ready = condition(&status, "Ready");
    assert_eq!(ready["status"], "False", "{status}");
    assert_eq!(ready["reason"], "ReconcileError");
    assert!(
        ready["message"]
            .as_str()
            .unwrap_or("")
            .contains("Forbidden"),
        "{ready}"
    );
    let reconciled = condition(&status, "Reconciled");
    assert_eq!(reconciled["status"], "False", "{status}");
    assert_eq!(reconciled["reason"], "ReconcileError");
    // What was last observed of the cluster stays.
    assert_eq!(status["master"], "kv-0");
    let result = run.await.expect("joined");
    assert!(result.is_err(), "the error still goes to the retry policy");
}

#[tokio::test]
async fn an_object_of_another_paxoskv_is_never_taken_over_and_the_conflict_shows() {
    let (service, mut h) = mock::pair::<Request<Body>, Response<Body>>();
    let client = kube::Client::new(service, "db");
    let ctx = context(client, "http://127.0.0.1:9".into());
    // A PaxosKV named `kv-peers`: its client Service would be `kv-peers`,
    // which is already the headless Service of the PaxosKV `kv`.
    let spec: PaxosKVSpec = serde_json::from_value(json!({"replicas": 3})).expect("spec");
    let mut pkv = PaxosKV::new("kv-peers", spec);
    pkv.metadata.namespace = Some("db".into());
    pkv.metadata.uid = Some("2222-3333".into());
    pkv.metadata.generation = Some(1);
    let run = tokio::spawn(reconcile(Arc::new(pkv), ctx));

    let owned_by_kv = |name: &str| {
        json!({"apiVersion": "v1", "kind": "Service",
               "metadata": {"name": name, "namespace": "db", "ownerReferences": ours()}})
    };
    // Its own ServiceAccount does not exist yet: created.
    expect(
        &mut h,
        "GET",
        &format!("{NS}/serviceaccounts/kv-peers"),
        |_| (404, not_found("serviceaccounts", "kv-peers")),
    )
    .await;
    expect(
        &mut h,
        "PATCH",
        &format!("{NS}/serviceaccounts/kv-peers"),
        echo,
    )
    .await;
    expect(
        &mut h,
        "GET",
        &format!("{NS}/services/kv-peers-peers"),
        |_| (404, not_found("services", "kv-peers-peers")),
    )
    .await;
    expect(
        &mut h,
        "PATCH",
        &format!("{NS}/services/kv-peers-peers"),
        echo,
    )
    .await;
    // `kv-peers` is kv's: no PATCH follows, the pass stops here.
    expect(&mut h, "GET", &format!("{NS}/services/kv-peers"), |_| {
        (200, owned_by_kv("kv-peers"))
    })
    .await;
    let event = expect(
        &mut h,
        "POST",
        "/apis/events.k8s.io/v1/namespaces/db/events",
        echo,
    )
    .await;
    assert_eq!(event["reason"], "ReconcileFailed", "{event}");
    assert_eq!(event["type"], "Warning");
    let note = event["note"].as_str().unwrap_or("");
    assert!(
        note.contains("Service kv-peers already exists") && note.contains("PaxosKV kv"),
        "{note}"
    );
    let patch = expect(
        &mut h,
        "PATCH",
        "/apis/phxkv.io/v1alpha1/namespaces/db/paxoskvs/kv-peers/status",
        |body| {
            (
                200,
                json!({"apiVersion": "phxkv.io/v1alpha1", "kind": "PaxosKV",
                       "metadata": {"name": "kv-peers", "namespace": "db"},
                       "spec": {}, "status": body["status"].clone()}),
            )
        },
    )
    .await;
    let status = &patch["status"];
    let ready = condition(status, "Ready");
    assert_eq!(ready["status"], "False", "{status}");
    assert_eq!(ready["reason"], "NameConflict");
    let result = run.await.expect("joined");
    assert!(result.is_err());

    // An object made by hand (no owner) is refused the same way.
    let (service, mut h) = mock::pair::<Request<Body>, Response<Body>>();
    let client = kube::Client::new(service, "db");
    let ctx = context(client, "http://127.0.0.1:9".into());
    let run = tokio::spawn(reconcile(Arc::new(paxoskv(json!({"replicas": 3}))), ctx));
    expect(&mut h, "GET", &format!("{NS}/serviceaccounts/kv"), |_| {
        (
            200,
            json!({"apiVersion": "v1", "kind": "ServiceAccount",
                   "metadata": {"name": "kv", "namespace": "db"}}),
        )
    })
    .await;
    let event = expect_event(&mut h, "ReconcileFailed").await;
    assert!(
        event["note"]
            .as_str()
            .unwrap_or("")
            .contains("has no owner"),
        "{event}"
    );
    let status = expect_status(&mut h).await;
    assert_eq!(condition(&status, "Reconciled")["reason"], "NameConflict");
    assert!(run.await.expect("joined").is_err());
}

/// With `spec.tls.clientCertAuth` the pass applies `<name>-metrics` after
/// the client Service; a `kv-metrics` made by hand stops it with a
/// NameConflict (without the setting it is never looked at: see
/// `expect_static_objects`).
#[tokio::test]
async fn client_cert_auth_applies_the_metrics_service_and_a_foreign_one_conflicts() {
    for foreign in [false, true] {
        let (service, mut h) = mock::pair::<Request<Body>, Response<Body>>();
        let client = kube::Client::new(service, "db");
        let ctx = context(client, "http://127.0.0.1:9".into());
        let spec = json!({"replicas": 3, "tls": {"clientCertAuth": true}});
        let run = tokio::spawn(reconcile(Arc::new(paxoskv(spec)), ctx));
        for (path, kind) in [
            (format!("{NS}/serviceaccounts/kv"), "ServiceAccount"),
            (format!("{NS}/services/kv-peers"), "Service"),
            (format!("{NS}/services/kv"), "Service"),
        ] {
            expect_owned(&mut h, &path, "v1", kind).await;
            expect(&mut h, "PATCH", &path, echo).await;
        }
        let path = format!("{NS}/services/kv-metrics");
        if foreign {
            expect(&mut h, "GET", &path, |_| {
                (
                    200,
                    json!({"apiVersion": "v1", "kind": "Service",
                           "metadata": {"name": "kv-metrics", "namespace": "db"}}),
                )
            })
            .await;
            let event = expect_event(&mut h, "ReconcileFailed").await;
            let note = event["note"].as_str().unwrap_or("");
            assert!(
                note.contains("kv-metrics") && note.contains("has no owner"),
                "{event}"
            );
            let status = expect_status(&mut h).await;
            assert_eq!(condition(&status, "Reconciled")["reason"], "NameConflict");
            assert!(run.await.expect("joined").is_err());
        } else {
            expect(&mut h, "GET", &path, |_| {
                (404, not_found("services", "kv-metrics"))
            })
            .await;
            let metrics = expect(&mut h, "PATCH", &path, echo).await;
            assert_eq!(metrics["spec"]["type"], "ClusterIP");
            assert_eq!(metrics["spec"]["ports"][0]["port"], 8082);
            assert_eq!(metrics["metadata"]["labels"]["phxkv.io/service"], "metrics");
            // Then the budget: the pass goes on.
            let path = "/apis/policy/v1/namespaces/db/poddisruptionbudgets/kv";
            expect_owned(&mut h, path, "policy/v1", "PodDisruptionBudget").await;
            run.abort();
        }
    }
}

fn hibernated_set(replicas: i32, when_scaled: &str, keep: Option<i32>) -> Value {
    let mut set = statefulset(replicas);
    set["spec"]["persistentVolumeClaimRetentionPolicy"] =
        json!({"whenScaled": when_scaled, "whenDeleted": "Retain"});
    if let Some(n) = keep {
        set["metadata"]["annotations"] = json!({"phxkv.io/hibernated-replicas": n.to_string()});
    }
    set
}

#[tokio::test]
async fn hibernation_keeps_the_volumes_then_scales_to_zero_and_wakes_up_as_it_was() {
    let (service, mut h) = mock::pair::<Request<Body>, Response<Body>>();
    let client = kube::Client::new(service, "db");
    let fake = three_voters();
    let url = fake_phxkv(fake.clone()).await;
    let ctx = context(client, url);
    let hibernating = Arc::new(paxoskv(json!({"replicas": 3, "hibernation": true})));
    let pods_json = |items: Vec<Value>| json!({"apiVersion": "v1", "kind": "PodList", "metadata": {}, "items": items});

    // Pass 1: the StatefulSet first learns to keep its volumes when
    // scaled; its size does not change yet.
    let run = tokio::spawn(reconcile(hibernating.clone(), ctx.clone()));
    expect_static_objects(&mut h).await;
    expect_existing_token_and_bootstrap(&mut h, 3).await;
    expect(&mut h, "GET", &format!("{APPS}/statefulsets/kv"), |_| {
        (200, hibernated_set(3, "Delete", None))
    })
    .await;
    let sts = expect(&mut h, "PATCH", &format!("{APPS}/statefulsets/kv"), echo).await;
    assert_eq!(
        sts["spec"]["replicas"], 3,
        "no pod stops before Retain is in place"
    );
    assert_eq!(
        sts["spec"]["persistentVolumeClaimRetentionPolicy"]["whenScaled"],
        "Retain"
    );
    assert_eq!(
        sts["metadata"]["annotations"]["phxkv.io/hibernated-replicas"],
        "3"
    );
    expect(&mut h, "GET", &format!("{NS}/pods"), |_| {
        (
            200,
            pods_json(vec![pod(0, true), pod(1, true), pod(2, true)]),
        )
    })
    .await;
    let status = expect_status(&mut h).await;
    assert_eq!(status["phase"], "Hibernating");
    assert_eq!(condition(&status, "Hibernated")["status"], "True");
    run.await.expect("joined").expect("reconciled");

    // Pass 2: now it scales to zero, the count kept in an annotation.
    let run = tokio::spawn(reconcile(hibernating.clone(), ctx.clone()));
    expect_static_objects(&mut h).await;
    expect_existing_token_and_bootstrap(&mut h, 3).await;
    expect(&mut h, "GET", &format!("{APPS}/statefulsets/kv"), |_| {
        (200, hibernated_set(3, "Retain", Some(3)))
    })
    .await;
    let sts = expect(&mut h, "PATCH", &format!("{APPS}/statefulsets/kv"), echo).await;
    assert_eq!(sts["spec"]["replicas"], 0);
    assert_eq!(
        sts["spec"]["persistentVolumeClaimRetentionPolicy"]["whenScaled"],
        "Retain"
    );
    assert_eq!(
        sts["metadata"]["annotations"]["phxkv.io/hibernated-replicas"],
        "3"
    );
    let event = expect_event(&mut h, "Hibernating").await;
    assert!(event["note"].as_str().unwrap_or("").contains("volumes"));
    expect(&mut h, "GET", &format!("{NS}/pods"), |_| {
        (200, pods_json(vec![]))
    })
    .await;
    let status = expect_status(&mut h).await;
    assert_eq!(status["phase"], "Hibernated");
    assert_eq!(condition(&status, "Ready")["reason"], "Hibernated");
    run.await.expect("joined").expect("reconciled");
    assert!(
        fake.changes.lock().expect("lock").is_empty(),
        "the membership is left alone"
    );

    // Pass 3, hibernation off: the three pods come back (their volumes were
    // kept), and scaling loses its volumes again as usual.
    let awake = Arc::new(paxoskv(json!({"replicas": 3})));
    let run = tokio::spawn(reconcile(awake, ctx));
    expect_static_objects(&mut h).await;
    expect_existing_token_and_bootstrap(&mut h, 3).await;
    expect(&mut h, "GET", &format!("{APPS}/statefulsets/kv"), |_| {
        (200, hibernated_set(0, "Retain", Some(3)))
    })
    .await;
    let sts = expect(&mut h, "PATCH", &format!("{APPS}/statefulsets/kv"), echo).await;
    assert_eq!(sts["spec"]["replicas"], 3);
    assert_eq!(
        sts["spec"]["persistentVolumeClaimRetentionPolicy"]["whenScaled"],
        "Delete"
    );
    assert!(
        sts["metadata"]["annotations"]
            .get("phxkv.io/hibernated-replicas")
            .is_none(),
        "{sts}"
    );
    expect_event(&mut h, "Resumed").await;
    expect(&mut h, "GET", &format!("{NS}/pods"), |_| {
        (
            200,
            pods_json(vec![pod(0, true), pod(1, true), pod(2, true)]),
        )
    })
    .await;
    let status = expect_status(&mut h).await;
    assert_eq!(status["phase"], "Running", "{status}");
    assert_eq!(condition(&status, "Hibernated")["status"], "False");
    run.await.expect("joined").expect("reconciled");
    assert!(fake.changes.lock().expect("lock").is_empty());
}

#[tokio::test]
async fn a_member_failing_past_the_threshold_is_recreated_on_a_new_volume() {
    let (service, mut h) = mock::pair::<Request<Body>, Response<Body>>();
    let client = kube::Client::new(service, "db");
    let fake = Arc::new(FakeCluster::default());
    let mut down = member("kv-2", true, false);
    down["healthy"] = json!(false);
    *fake.info.lock().expect("lock") = cluster_info(
        "kv-0",
        vec![
            member("kv-0", true, true),
            member("kv-1", true, false),
            down,
        ],
    );
    let url = fake_phxkv(fake.clone()).await;
    let ctx = context(client, url);
    let pods_json = json!({"apiVersion": "v1", "kind": "PodList", "metadata": {},
                           "items": [pod(0, true), pod(1, true), pod(2, false)]});

    // First seen failing: only noted, with the time.
    let pkv = Arc::new(paxoskv(json!({"replicas": 3})));
    let run = tokio::spawn(reconcile(pkv, ctx.clone()));
    expect_settled_pass(&mut h, 3, &pods_json).await;
    let status = expect_status(&mut h).await;
    let kv2 = &status["members"][2];
    assert_eq!(kv2["name"], "kv-2");
    let first_seen: k8s_openapi::jiff::Timestamp = kv2["failingSince"]
        .as_str()
        .expect("failingSince")
        .parse()
        .expect("a time");
    let age = k8s_openapi::jiff::Timestamp::now().duration_since(first_seen);
    assert!(age.as_secs() < 60, "noted now: {first_seen}");
    assert!(status["members"][0].get("failingSince").is_none());
    run.await.expect("joined").expect("reconciled");

    // Still failing eleven minutes later (the default threshold is 10m):
    // its claim and pod are deleted, with a Warning event.
    let mut pkv = paxoskv(json!({"replicas": 3}));
    pkv.status = Some(
        serde_json::from_value(json!({"members": [
            {"name": "kv-0", "id": "0000000000000001", "role": "voter", "healthy": true},
            {"name": "kv-1", "id": "0000000000000002", "role": "voter", "healthy": true},
            {"name": "kv-2", "id": "0000000000000003", "role": "voter", "healthy": false,
             "failingSince": "2026-01-01T00:00:00Z"}]}))
        .expect("status"),
    );
    let run = tokio::spawn(reconcile(Arc::new(pkv), ctx.clone()));
    expect_settled_pass(&mut h, 3, &pods_json).await;
    let deleted =
        json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success"});
    let reply = deleted.clone();
    expect(
        &mut h,
        "DELETE",
        &format!("{NS}/persistentvolumeclaims/data-kv-2"),
        move |_| (200, reply),
    )
    .await;
    expect(&mut h, "DELETE", &format!("{NS}/pods/kv-2"), move |_| {
        (200, deleted)
    })
    .await;
    let event = expect_event(&mut h, "RecreatingMember").await;
    assert_eq!(event["type"], "Warning");
    let status = expect_status(&mut h).await;
    assert_eq!(
        condition(&status, "SelfHealing")["reason"],
        "RecreatingMember"
    );
    let restarted: k8s_openapi::jiff::Timestamp = status["members"][2]["failingSince"]
        .as_str()
        .expect("failingSince")
        .parse()
        .expect("a time");
    assert!(
        k8s_openapi::jiff::Timestamp::now()
            .duration_since(restarted)
            .as_secs()
            < 60,
        "the clock starts again, so the pod is not recreated again while it starts"
    );
    run.await.expect("joined").expect("reconciled");

    // Turned off, or another incarnation under the same name: nothing is
    // deleted.
    for (spec, id) in [
        (
            json!({"replicas": 3, "selfHealing": {"enabled": false}}),
            "0000000000000003",
        ),
        (json!({"replicas": 3}), "00000000000000aa"),
    ] {
        let mut pkv = paxoskv(spec);
        pkv.status = Some(
            serde_json::from_value(json!({"members": [
                {"name": "kv-2", "id": id, "role": "voter", "healthy": false,
                 "failingSince": "2026-01-01T00:00:00Z"}]}))
            .expect("status"),
        );
        let run = tokio::spawn(reconcile(Arc::new(pkv), ctx.clone()));
        expect_settled_pass(&mut h, 3, &pods_json).await;
        let status = expect_status(&mut h).await;
        assert_eq!(status["phase"], "Degraded", "{status}");
        run.await.expect("joined").expect("reconciled");
    }
}

#[tokio::test]
async fn a_switchover_moves_mastership_once_and_a_bad_target_fails_with_a_reason() {
    let (service, mut h) = mock::pair::<Request<Body>, Response<Body>>();
    let client = kube::Client::new(service, "db");
    let fake = three_voters();
    let url = fake_phxkv(fake.clone()).await;
    let ctx = context(client, url);
    let pods_json = json!({"apiVersion": "v1", "kind": "PodList", "metadata": {},
                           "items": [pod(0, true), pod(1, true), pod(2, true)]});
    let with_annotation = |target: &str, last: Option<Value>| {
        let mut pkv = paxoskv(json!({"replicas": 3}));
        pkv.metadata.annotations = Some(
            [("phxkv.io/switchover".to_string(), target.to_string())]
                .into_iter()
                .collect(),
        );
        if let Some(last) = last {
            pkv.status = Some(serde_json::from_value(json!({"switchover": last})).expect("status"));
        }
        Arc::new(pkv)
    };
    // Asked for kv-1 while kv-0 is master: handed over, with an event.
    let run = tokio::spawn(reconcile(with_annotation("kv-1", None), ctx.clone()));
    expect_settled_pass(&mut h, 3, &pods_json).await;
    let event = expect_event(&mut h, "SwitchedOver").await;
    assert!(
        event["note"]
            .as_str()
            .unwrap_or("")
            .contains("from kv-0 to kv-1"),
        "{event}"
    );
    let status = expect_status(&mut h).await;
    assert_eq!(status["switchover"]["target"], "kv-1");
    assert_eq!(status["switchover"]["phase"], "Succeeded");
    run.await.expect("joined").expect("reconciled");
    {
        let changes = fake.changes.lock().expect("lock");
        assert_eq!(changes.len(), 1);
        assert_eq!(changes[0].0, "transfer");
        assert_eq!(changes[0].1, "kv-1");
        assert_eq!(
            changes[0].2.as_deref(),
            Some("Bearer secret-token-0123456789")
        );
    }

    // Done once: when mastership later moves elsewhere, the same request
    // is not carried out again.
    fake.info.lock().expect("lock")["master"] = json!("kv-2");
    let last = json!({"target": "kv-1", "phase": "Succeeded", "message": "kv-1 is master"});
    let run = tokio::spawn(reconcile(with_annotation("kv-1", Some(last)), ctx.clone()));
    expect_settled_pass(&mut h, 3, &pods_json).await;
    let status = expect_status(&mut h).await;
    assert_eq!(status["switchover"]["phase"], "Succeeded");
    run.await.expect("joined").expect("reconciled");
    assert_eq!(fake.changes.lock().expect("lock").len(), 1);

    // A member that does not exist: Failed, with the server's reason and a
    // Warning event.
    let run = tokio::spawn(reconcile(with_annotation("kv-7", None), ctx.clone()));
    expect_settled_pass(&mut h, 3, &pods_json).await;
    let event = expect_event(&mut h, "SwitchoverFailed").await;
    assert_eq!(event["type"], "Warning");
    let status = expect_status(&mut h).await;
    assert_eq!(status["switchover"]["phase"], "Failed");
    assert!(
        status["switchover"]["message"]
            .as_str()
            .unwrap_or("")
            .contains("no member is named kv-7"),
        "{status}"
    );
    run.await.expect("joined").expect("reconciled");

    // Not while something else is under way: pending, nothing asked.
    let mut pkv = (*with_annotation("kv-0", None)).clone();
    pkv.spec.replicas = 5;
    let before = fake.changes.lock().expect("lock").len();
    let run = tokio::spawn(reconcile(Arc::new(pkv), ctx));
    expect_static_objects(&mut h).await;
    expect_existing_token_and_bootstrap(&mut h, 3).await;
    expect(&mut h, "GET", &format!("{APPS}/statefulsets/kv"), |_| {
        (200, statefulset(3))
    })
    .await;
    expect(&mut h, "PATCH", &format!("{APPS}/statefulsets/kv"), |_| {
        (200, statefulset(3))
    })
    .await;
    let listed = pods_json.clone();
    expect(&mut h, "GET", &format!("{NS}/pods"), move |_| (200, listed)).await;
    expect(&mut h, "PATCH", &format!("{APPS}/statefulsets/kv"), |_| {
        (200, statefulset(5))
    })
    .await;
    expect_event(&mut h, "Scaled").await;
    let status = expect_status(&mut h).await;
    assert_eq!(status["switchover"]["phase"], "Pending", "{status}");
    run.await.expect("joined").expect("reconciled");
    assert_eq!(fake.changes.lock().expect("lock").len(), before);
}

#[tokio::test]
async fn a_caught_up_learner_is_promoted_and_scaling_down_removes_the_highest_voter() {
    let (service, mut h) = mock::pair::<Request<Body>, Response<Body>>();
    let client = kube::Client::new(service, "db");
    let fake = Arc::new(FakeCluster::default());
    let five = |learner: bool| {
        cluster_info(
            "kv-0",
            vec![
                member("kv-0", true, true),
                member("kv-1", true, false),
                member("kv-2", true, false),
                member("kv-3", !learner, false),
                member("kv-4", true, false),
            ],
        )
    };
    *fake.info.lock().expect("lock") = five(true);
    let url = fake_phxkv(fake.clone()).await;
    let ctx = context(client, url);
    let pods = json!({"apiVersion": "v1", "kind": "PodList", "metadata": {},
                      "items": (0..5).map(|i| pod(i, true)).collect::<Vec<_>>()});
    // kv-3 is a learner whose pod is ready (caught up): promoted.
    let run = tokio::spawn(reconcile(
        Arc::new(paxoskv(json!({"replicas": 5}))),
        ctx.clone(),
    ));
    expect_settled_pass(&mut h, 5, &pods).await;
    expect_event(&mut h, "MemberPromoted").await;
    let status = expect_status(&mut h).await;
    assert_eq!(status["phase"], "Scaling");
    run.await.expect("joined").expect("reconciled");

    // Scaled down to 3: the highest voter is removed first, the pods stay
    // until no member is left past the new size.
    *fake.info.lock().expect("lock") = five(false);
    let run = tokio::spawn(reconcile(
        Arc::new(paxoskv(json!({"replicas": 3}))),
        ctx.clone(),
    ));
    expect_settled_pass(&mut h, 5, &pods).await;
    expect_event(&mut h, "MemberRemoved").await;
    let status = expect_status(&mut h).await;
    assert_eq!(status["phase"], "Scaling");
    run.await.expect("joined").expect("reconciled");

    let changes = fake.changes.lock().expect("lock");
    let done: Vec<(&str, &Value)> = changes.iter().map(|(k, b, _)| (k.as_str(), b)).collect();
    assert_eq!(
        done,
        vec![("promote", &json!("kv-3")), ("remove", &json!("kv-4"))]
    );
}

#[tokio::test]
async fn conflicts_and_forbidden_calls_of_the_api_server_show_in_status() {
    let forbidden = "statefulsets.apps \"kv\" is forbidden: User \
                     \"system:serviceaccount:ops:phxkv-operator\" cannot patch resource \
                     \"statefulsets\" in API group \"apps\" in the namespace \"db\"";
    let conflict = "secrets \"kv-token\" already exists";
    for (code, reason, message) in [
        (403, "Forbidden", forbidden),
        (409, "AlreadyExists", conflict),
    ] {
        let (service, mut h) = mock::pair::<Request<Body>, Response<Body>>();
        let client = kube::Client::new(service, "db");
        let ctx = context(client, "http://127.0.0.1:9".into());
        let run = tokio::spawn(reconcile(Arc::new(paxoskv(json!({"replicas": 3}))), ctx));
        let error = json!({"kind": "Status", "apiVersion": "v1", "metadata": {},
                           "status": "Failure", "message": message, "reason": reason,
                           "code": code});
        expect_static_objects(&mut h).await;
        if code == 409 {
            // Two operators racing to create the token: the create is refused.
            expect(&mut h, "GET", &format!("{NS}/secrets/kv-token"), |_| {
                (404, not_found("secrets", "kv-token"))
            })
            .await;
            expect(&mut h, "POST", &format!("{NS}/secrets"), move |_| {
                (409, error)
            })
            .await;
        } else {
            expect_existing_token_and_bootstrap(&mut h, 3).await;
            expect(&mut h, "GET", &format!("{APPS}/statefulsets/kv"), |_| {
                (200, statefulset(3))
            })
            .await;
            expect(
                &mut h,
                "PATCH",
                &format!("{APPS}/statefulsets/kv"),
                move |_| (403, error),
            )
            .await;
        }
        let event = expect_event(&mut h, "ReconcileFailed").await;
        assert_eq!(event["type"], "Warning");
        let status = expect_status(&mut h).await;
        let ready = condition(&status, "Ready");
        assert_eq!(ready["status"], "False", "{status}");
        assert_eq!(ready["reason"], "ReconcileError");
        assert!(
            ready["message"].as_str().unwrap_or("").contains(message),
            "HTTP {code}: {ready}"
        );
        assert_eq!(condition(&status, "Reconciled")["status"], "False");
        assert!(run.await.expect("joined").is_err());
    }
}
