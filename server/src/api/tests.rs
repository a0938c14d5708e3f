//! The public API driven end to end over an in-memory fake node.
//!
//! The fake applies writes straight to a [`Store`], which is enough to check
//! everything the HTTP layer owns: routing, encodings, status codes, error
//! bodies and the OpenAPI document.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::http::{HeaderMap, Method, Request, StatusCode, header};
use futures_util::StreamExt;
use serde_json::{Value, json};
use tokio::sync::{broadcast, mpsc};
use tower::ServiceExt;

use crate::api::public_router;
use crate::api::service::{
    ClusterInfo, Consistency, Health, MemberChange, MemberInfo, MemberRole, NodeStatus,
    ReplaceReport, ReplaceState, Service, ServiceError,
};
use crate::kv::{Event, KvError, Limits, Op, OpResult, Store, StoreConfig};
use crate::paxos::types::RequestId;

const TOKEN: &str = "secret";

/// A node without consensus: writes apply at once, in call order.
#[derive(Clone)]
struct Fake {
    inner: Arc<FakeInner>,
}

struct FakeInner {
    store: Mutex<Store>,
    next_seq: AtomicU64,
    applied: broadcast::Sender<Event>,
    ready: AtomicBool,
    /// Whether every member decodes prefix deletes.
    prefix_deletes: AtomicBool,
    lease_owners: AtomicBool,
    limits: Limits,
    gate: Option<crate::auth::gate::Gate>,
    /// Whether auth is on (`serve --auth`), given a gate: a node has a gate
    /// with auth off too.
    auth_on: bool,
    /// The master's lease timers, on the fake's own clock: one mastership
    /// for the fake's whole life.
    timers: Mutex<crate::kv::LeaseTimers>,
    epoch: std::time::Instant,
}

impl Fake {
    fn new() -> Fake {
        Fake::with_config(StoreConfig::default())
    }

    fn with_config(config: StoreConfig) -> Fake {
        Fake {
            inner: Arc::new(FakeInner {
                store: Mutex::new(Store::with_config(config)),
                next_seq: AtomicU64::new(1),
                applied: broadcast::channel(1024).0,
                ready: AtomicBool::new(true),
                prefix_deletes: AtomicBool::new(true),
                lease_owners: AtomicBool::new(true),
                limits: Limits {
                    max_key_bytes: 16,
                    max_value_bytes: 64,
                    max_txn_ops: 8,
                },
                gate: None,
                auth_on: false,
                timers: Mutex::new(crate::kv::LeaseTimers::new(Duration::ZERO, 0)),
                epoch: std::time::Instant::now(),
            }),
        }
    }

    /// A fake with auth on (`serve --auth`).
    fn with_auth() -> Fake {
        let mut fake = Fake::with_gate();
        Arc::get_mut(&mut fake.inner).expect("fresh").auth_on = true;
        fake
    }

    /// A fake with auth off, as a node runs it: with the failed-attempt
    /// limiter, for the cluster token.
    fn with_gate() -> Fake {
        Fake::gated(false)
    }

    /// A fake with auth on whose client certificates name API tokens
    /// (`--client-cert-identity`).
    fn with_cert_identity() -> Fake {
        let mut fake = Fake::gated(true);
        Arc::get_mut(&mut fake.inner).expect("fresh").auth_on = true;
        fake
    }

    fn gated(cert_identity: bool) -> Fake {
        let mut fake = Fake::new();
        let metrics = crate::telemetry::metrics::Metrics::new();
        Arc::get_mut(&mut fake.inner).expect("fresh").gate =
            Some(crate::auth::gate::Gate::new(metrics, cert_identity));
        fake
    }

    fn store(&self) -> std::sync::MutexGuard<'_, Store> {
        self.inner.store.lock().expect("store lock")
    }

    fn router(&self) -> Router {
        public_router(self.clone())
    }
}

fn service_err(err: KvError) -> ServiceError {
    match err {
        KvError::Compacted { requested, oldest } => ServiceError::Compacted { requested, oldest },
        other => ServiceError::Internal(other.to_string()),
    }
}

impl Service for Fake {
    async fn leases(
        &self,
        ids: Vec<u64>,
        renew: bool,
    ) -> Result<Vec<crate::node::wire::LeaseAnswer>, ServiceError> {
        use crate::node::wire::LeaseAnswer;
        let store = self.store();
        let mut timers = self.inner.timers.lock().expect("timers lock");
        let now = self.inner.epoch.elapsed();
        // A single-replica fake: its own mastership, with no fence needed.
        let ballot = crate::paxos::Ballot { round: 1, node: 1 };
        let _ = timers.gate(now, ballot, &store, false);
        Ok(ids
            .into_iter()
            .map(|id| {
                let Some(info) = store.lease(id) else {
                    return LeaseAnswer::NotFound { id };
                };
                if renew && timers.renew(id, now).is_err() {
                    return LeaseAnswer::Expired { id };
                }
                let left = timers.remaining(id, now).unwrap_or_default();
                LeaseAnswer::Alive {
                    id,
                    ttl_secs: info.ttl_secs,
                    remaining_ms: left.as_millis() as u64,
                    granted_revision: info.granted,
                }
            })
            .collect())
    }

    async fn write(
        &self,
        op: Op,
        idempotency_key: Option<String>,
    ) -> Result<OpResult, ServiceError> {
        let id = match &idempotency_key {
            Some(key) => crate::kv::dedup::idempotent_id(key, &op),
            None => RequestId {
                client: 1,
                seq: self.inner.next_seq.fetch_add(1, Ordering::Relaxed),
            },
        };
        let mut store = self.store();
        let before = store.revision();
        let result = store.apply(id, &op);
        let events = store
            .events_since(before + 1, b"", 0)
            .map_err(service_err)?;
        for event in events {
            // No receivers is fine: nobody is watching.
            let _ = self.inner.applied.send(event);
        }
        Ok(result)
    }

    async fn backup(&self) -> Result<crate::api::service::BackupStream, ServiceError> {
        let store = self.store();
        let (tx, pieces) = mpsc::channel(2);
        // A test store is small: one piece.
        let _ = tx.try_send(Ok(Some(store.encode_snapshot())));
        let _ = tx.try_send(Ok(None));
        Ok(crate::api::service::BackupStream {
            cluster_id: "test".into(),
            index: store.applied_index(),
            revision: store.revision(),
            pieces,
        })
    }

    async fn read<R, F>(&self, _consistency: Consistency, f: F) -> Result<R, ServiceError>
    where
        R: Send + 'static,
        F: FnOnce(&Store) -> R + Send + 'static,
    {
        Ok(f(&self.store()))
    }

    fn watch(
        &self,
        prefix: Vec<u8>,
        start_revision: u64,
    ) -> Result<mpsc::Receiver<Result<Event, ServiceError>>, ServiceError> {
        let (tx, rx) = mpsc::channel(1024);
        let store = self.store();
        // Subscribing under the store lock leaves no gap between the replay
        // and the live events.
        let mut live = self.inner.applied.subscribe();
        let replay = store.events_since(start_revision, &prefix, 0);
        match replay {
            Err(err) => {
                // Delivered as the first item, as a node replaying
                // asynchronously would; the handler must still answer 410.
                let _ = tx.try_send(Err(service_err(err)));
                return Ok(rx);
            }
            Ok(events) => {
                for event in events {
                    let _ = tx.try_send(Ok(event));
                }
            }
        }
        tokio::spawn(async move {
            while let Ok(event) = live.recv().await {
                if event.revision < start_revision
                    || !crate::auth::watch_delivers(&event.kv.key, &prefix)
                {
                    continue;
                }
                if tx.send(Ok(event)).await.is_err() {
                    break;
                }
            }
        });
        Ok(rx)
    }

    async fn cluster(&self) -> Result<ClusterInfo, ServiceError> {
        Ok(ClusterInfo {
            cluster_id: "c1".into(),
            node: "n1".into(),
            node_id: "00000000000000a1".into(),
            node_state: NodeStatus::Member,
            node_state_reason: None,
            divergence: None,
            master: Some("n1".into()),
            lease_remaining_ms: Some(900),
            read_mode: crate::paxos::ReadMode::Lease,
            revision: self.store().revision(),
            applied_index: 0,
            commit_index: 0,
            members: vec![MemberInfo {
                name: "n1".into(),
                id: "00000000000000a1".into(),
                role: MemberRole::Voter,
                peer_url: "127.0.0.1:2380".into(),
                is_master: true,
                commit_index: Some(0),
                healthy: true,
                peer_features: None,
            }],
        })
    }

    async fn change_members(&self, _change: MemberChange) -> Result<ClusterInfo, ServiceError> {
        self.cluster().await
    }

    async fn replace_member(
        &self,
        name: String,
        _peer_url: Option<String>,
        _learner: bool,
    ) -> Result<ReplaceReport, ServiceError> {
        Ok(ReplaceReport {
            member: name,
            removed: None,
            incarnation: "00000000000000a1".into(),
            state: ReplaceState::Done,
            message: "nothing to replace".into(),
        })
    }

    async fn transfer_master(&self, name: String) -> Result<ClusterInfo, ServiceError> {
        match name.as_str() {
            "n1" => self.cluster().await,
            "learner" => Err(ServiceError::NotVoter(format!("{name} is a learner"))),
            "lagging" => Err(ServiceError::NotReady(format!("{name} is behind"))),
            "slow" => Err(ServiceError::HandoffTimeout(format!(
                "{name} was not master in time"
            ))),
            _ => Err(ServiceError::UnknownMember(format!(
                "no member is named {name:?}"
            ))),
        }
    }

    fn health(&self) -> Health {
        if self.inner.ready.load(Ordering::Relaxed) {
            Health {
                ready: true,
                reason: None,
            }
        } else {
            Health {
                ready: false,
                reason: Some("no master elected".into()),
            }
        }
    }

    fn limits(&self) -> Limits {
        self.inner.limits
    }

    fn cluster_token(&self) -> String {
        TOKEN.into()
    }

    fn auth_gate(&self) -> Option<crate::auth::gate::Gate> {
        self.inner.gate.clone()
    }

    fn auth_required(&self) -> bool {
        self.inner.auth_on
    }

    fn anonymous_ops(&self) -> bool {
        true
    }

    fn prefix_deletes(&self) -> bool {
        self.inner.prefix_deletes.load(Ordering::Relaxed)
    }

    fn lease_owners(&self) -> bool {
        self.inner.lease_owners.load(Ordering::Relaxed)
    }

    fn metrics_text(&self) -> String {
        "# EOF\n".into()
    }
}

/// A response, read to the end.
struct Reply {
    status: StatusCode,
    headers: HeaderMap,
    body: Bytes,
}

impl Reply {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "{} is not JSON ({e}): {:?}",
                self.status,
                String::from_utf8_lossy(&self.body)
            )
        })
    }

    fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_else(|| panic!("no header {name}"))
    }

    /// Checks the common error shape and returns the error object.
    fn error(&self, status: StatusCode, code: &str) -> Value {
        assert_eq!(self.status, status, "body: {:?}", self.body);
        assert_eq!(self.header("content-type"), "application/json");
        let body = self.json();
        assert_eq!(body["error"]["code"], code, "body: {body}");
        assert!(body["error"]["message"].is_string());
        body["error"].clone()
    }
}

async fn send(router: &Router, request: Request<Body>) -> Reply {
    let response = router
        .clone()
        .oneshot(request)
        .await
        .expect("routers are infallible");
    let status = response.status();
    let headers = response.headers().clone();
    let body = axum::body::to_bytes(response.into_body(), usize::MAX)
        .await
        .expect("body reads");
    Reply {
        status,
        headers,
        body,
    }
}

async fn call(router: &Router, method: Method, uri: &str, body: impl Into<Body>) -> Reply {
    let request = Request::builder()
        .method(method)
        .uri(uri)
        .body(body.into())
        .expect("valid request");
    send(router, request).await
}

async fn call_with_token(router: &Router, method: Method, uri: &str, token: &str) -> Reply {
    let request = Request::builder()
        .method(method)
        .uri(uri)
        .header(header::AUTHORIZATION, format!("Bearer {token}"))
        .body(Body::from(r#"{"name":"n2","peer_url":"127.0.0.1:2381"}"#))
        .expect("valid request");
    send(router, request).await
}

async fn txn(router: &Router, body: Value) -> Reply {
    call(router, Method::POST, "/v1/txn", body.to_string()).await
}

async fn put_with_key(router: &Router, uri: &str, key: &str, value: &str) -> Reply {
    let request = Request::builder()
        .method(Method::PUT)
        .uri(uri)
        .header("idempotency-key", key)
        .body(Body::from(value.to_string()))
        .expect("valid request");
    send(router, request).await
}

#[tokio::test]
async fn a_web_page_on_another_site_cannot_write_through_a_browser() {
    let router = Fake::new().router();
    let body = json!({"success": [{"put": {"key": "Y3NyZg==", "value": "eA=="}}]}).to_string();
    let from = |origin: Option<&str>| {
        let mut r = Request::builder()
            .method(Method::POST)
            .uri("/v1/txn")
            .header("host", "127.0.0.1:8080")
            .header("content-type", "text/plain");
        if let Some(o) = origin {
            r = r.header("origin", o);
        }
        r.body(Body::from(body.clone())).expect("valid request")
    };
    send(&router, from(Some("http://evil.example")))
        .await
        .error(StatusCode::FORBIDDEN, "permission_denied");
    let missing = call(&router, Method::GET, "/v1/kv/csrf", Body::empty()).await;
    assert_eq!(missing.status, StatusCode::NOT_FOUND);
    // The node's own pages, and clients that are not browsers, write.
    for origin in [Some("http://127.0.0.1:8080"), None] {
        let ok = send(&router, from(origin)).await;
        assert_eq!(ok.status, StatusCode::OK, "{origin:?}");
    }
}

#[tokio::test]
async fn a_page_that_rebinds_its_name_to_a_node_without_auth_can_neither_read_nor_write() {
    let router = Fake::new().router();
    assert_eq!(
        call(&router, Method::PUT, "/v1/kv/k", "v").await.status,
        StatusCode::OK
    );
    // A page from evil.example whose name now points at this node: to the
    // browser it is same-origin.
    let from = |host: &str, method: Method, token: Option<&str>| {
        let mut r = Request::builder()
            .method(method)
            .uri("/v1/kv/k")
            .header("host", host)
            .header("origin", format!("http://{host}"))
            .header("sec-fetch-site", "same-origin");
        if let Some(t) = token {
            r = r.header(header::AUTHORIZATION, format!("Bearer {t}"));
        }
        r.body(Body::from("evil")).expect("valid request")
    };
    for method in [Method::GET, Method::PUT] {
        let refused = send(&router, from("evil.example:8080", method.clone(), None)).await;
        let error = refused.error(StatusCode::FORBIDDEN, "permission_denied");
        assert!(
            error["message"]
                .as_str()
                .is_some_and(|m| m.contains("evil.example:8080") && m.contains("--auth")),
            "{error}"
        );
        // The node's own pages, by address or a local name, and the
        // cluster token (which such a page cannot have) pass.
        for host in ["127.0.0.1:8080", "localhost:8080"] {
            let ok = send(&router, from(host, method.clone(), None)).await;
            assert_eq!(ok.status, StatusCode::OK, "{method} {host}");
        }
        let admin = send(&router, from("kv.example.com", method.clone(), Some(TOKEN))).await;
        assert_eq!(
            admin.status,
            StatusCode::OK,
            "{method} with the cluster token"
        );
    }
    // Its pages and probes are still served by any name.
    let page = Request::builder()
        .uri("/healthz")
        .header("host", "evil.example")
        .header("sec-fetch-site", "none")
        .body(Body::empty())
        .expect("valid request");
    assert_eq!(send(&router, page).await.status, StatusCode::OK);
}

#[tokio::test]
async fn a_retried_write_with_an_idempotency_key_is_applied_once() {
    let router = Fake::new().router();
    let first = put_with_key(&router, "/v1/kv/k", "op-1", "v").await;
    assert_eq!(first.json(), json!({"revision": 1, "version": 1}));
    // The retry (after a 504, say) gets the first outcome; nothing changes.
    let retry = put_with_key(&router, "/v1/kv/k", "op-1", "v").await;
    assert_eq!(retry.json(), json!({"revision": 1, "version": 1}));
    let get = call(&router, Method::GET, "/v1/kv/k", Body::empty()).await;
    assert_eq!(get.header("x-phxkv-version"), "1");
    // The same key for another write is a mistake, refused.
    put_with_key(&router, "/v1/kv/k", "op-1", "other")
        .await
        .error(StatusCode::UNPROCESSABLE_ENTITY, "idempotency_key_reused");
    // Without a key, every request is its own write.
    call(&router, Method::PUT, "/v1/kv/k", "v").await;
    let get = call(&router, Method::GET, "/v1/kv/k", Body::empty()).await;
    assert_eq!(get.header("x-phxkv-version"), "2");
    // Bad keys are refused before anything happens.
    for bad in ["", &"x".repeat(129), "has space"] {
        put_with_key(&router, "/v1/kv/k", bad, "v")
            .await
            .error(StatusCode::BAD_REQUEST, "invalid_argument");
    }
}

#[tokio::test]
async fn put_get_delete_roundtrip_with_a_binary_key() {
    let router = Fake::new().router();
    let value: &[u8] = b"\x00bin\xff";
    let put = call(&router, Method::PUT, "/v1/kv/a%00%FF/b", value).await;
    assert_eq!(put.status, StatusCode::OK);
    assert_eq!(put.json(), json!({"revision": 1, "version": 1}));
    let put = call(&router, Method::PUT, "/v1/kv/a%00%FF/b", value).await;
    assert_eq!(put.json(), json!({"revision": 2, "version": 2}));

    let got = call(&router, Method::GET, "/v1/kv/a%00%FF/b", Body::empty()).await;
    assert_eq!(got.status, StatusCode::OK);
    assert_eq!(got.body.as_ref(), value);
    assert_eq!(got.header("content-type"), "application/octet-stream");
    assert_eq!(got.header("x-phxkv-version"), "2");
    assert_eq!(got.header("x-phxkv-create-revision"), "1");
    assert_eq!(got.header("x-phxkv-mod-revision"), "2");
    assert_eq!(got.header("x-phxkv-revision"), "2");

    let local = "/v1/kv/a%00%FF/b?consistency=local&min_revision=2";
    assert_eq!(
        call(&router, Method::GET, local, Body::empty())
            .await
            .status,
        StatusCode::OK
    );

    let listed = call(&router, Method::GET, "/v1/kv", Body::empty()).await;
    let kv = &listed.json()["kvs"][0];
    assert_eq!(kv["key"], "YQD/L2I=");
    assert!(
        kv.get("key_utf8").is_none(),
        "binary keys have no utf8 copy"
    );
    assert_eq!(kv["value"], "AGJpbv8=");

    let deleted = call(&router, Method::DELETE, "/v1/kv/a%00%FF/b", Body::empty()).await;
    assert_eq!(deleted.json(), json!({"revision": 3, "deleted": true}));
    let again = call(&router, Method::DELETE, "/v1/kv/a%00%FF/b", Body::empty()).await;
    assert_eq!(again.json(), json!({"revision": 3, "deleted": false}));
}

#[tokio::test]
async fn compare_and_swap_succeeds_or_reports_the_current_state() {
    let router = Fake::new().router();
    let create = call(&router, Method::PUT, "/v1/kv/k?if_version=0", "v1").await;
    assert_eq!(create.json(), json!({"revision": 1, "version": 1}));

    let again = call(&router, Method::PUT, "/v1/kv/k?if_version=0", "v2").await;
    let err = again.error(StatusCode::CONFLICT, "compare_failed");
    assert_eq!(err["current_version"], 1);
    assert_eq!(err["current_mod_revision"], 1);

    let swap = call(&router, Method::PUT, "/v1/kv/k?if_mod_revision=1", "v2").await;
    assert_eq!(swap.json(), json!({"revision": 2, "version": 2}));

    let stale = call(
        &router,
        Method::DELETE,
        "/v1/kv/k?if_version=1",
        Body::empty(),
    )
    .await;
    let err = stale.error(StatusCode::CONFLICT, "compare_failed");
    assert_eq!(err["current_version"], 2);
    let ok = call(
        &router,
        Method::DELETE,
        "/v1/kv/k?if_version=2",
        Body::empty(),
    )
    .await;
    assert_eq!(ok.json()["deleted"], true);

    let both = "/v1/kv/k?if_version=1&if_mod_revision=1";
    call(&router, Method::PUT, both, "x")
        .await
        .error(StatusCode::BAD_REQUEST, "invalid_argument");
    call(&router, Method::PUT, "/v1/kv/k?if_verison=1", "x")
        .await
        .error(StatusCode::BAD_REQUEST, "invalid_argument");
}

#[tokio::test]
async fn missing_key_and_bad_reads_are_json_errors() {
    let router = Fake::new().router();
    call(&router, Method::GET, "/v1/kv/nope", Body::empty())
        .await
        .error(StatusCode::NOT_FOUND, "key_not_found");
    call(
        &router,
        Method::GET,
        "/v1/kv/k?consistency=eventual",
        Body::empty(),
    )
    .await
    .error(StatusCode::BAD_REQUEST, "invalid_argument");
    call(&router, Method::PUT, "/v1/kv/", "v")
        .await
        .error(StatusCode::BAD_REQUEST, "invalid_argument");
    // A % that starts no escape is refused, not stored literally.
    for (method, uri) in [
        (Method::PUT, "/v1/kv/a%zz"),
        (Method::GET, "/v1/kv?prefix=a%zz"),
        (Method::DELETE, "/v1/kv/a%"),
    ] {
        let err = call(&router, method, uri, "v")
            .await
            .error(StatusCode::BAD_REQUEST, "invalid_argument");
        assert!(
            err["message"].as_str().is_some_and(|m| m.contains("%25")),
            "{err}"
        );
    }
    call(&router, Method::GET, "/v1/kv/a%zz", Body::empty())
        .await
        .error(StatusCode::BAD_REQUEST, "invalid_argument");
}

#[tokio::test]
async fn local_reads_of_a_revision_the_cluster_has_not_reached_are_400() {
    let router = Fake::new().router();
    let put = call(&router, Method::PUT, "/v1/kv/k", "v").await;
    assert_eq!(put.status, StatusCode::OK);
    for uri in [
        "/v1/kv/k?consistency=local&min_revision=99",
        "/v1/kv?consistency=local&min_revision=99",
    ] {
        call(&router, Method::GET, uri, Body::empty())
            .await
            .error(StatusCode::BAD_REQUEST, "invalid_argument");
    }
    for uri in [
        "/v1/kv/k?consistency=local&min_revision=1",
        "/v1/kv?consistency=local&min_revision=1",
    ] {
        let reply = call(&router, Method::GET, uri, Body::empty()).await;
        assert_eq!(reply.status, StatusCode::OK, "{uri}");
    }
}

#[tokio::test]
async fn oversized_keys_values_and_bodies_are_413() {
    let router = Fake::new().router();
    let long_key = format!("/v1/kv/{}", "k".repeat(17));
    call(&router, Method::PUT, &long_key, "v")
        .await
        .error(StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large");
    call(&router, Method::PUT, "/v1/kv/k", vec![b'v'; 65])
        .await
        .error(StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large");
    // Beyond the body limit the body is not even read.
    let err = call(&router, Method::PUT, "/v1/kv/k", vec![b'v'; 200_000])
        .await
        .error(StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large");
    // Found too large as it arrived (no declared length): the limit is
    // named all the same.
    let limit = crate::api::body_limit(&Fake::new().limits());
    let message = err["message"].as_str().unwrap_or_default();
    assert!(message.contains(&format!("({limit} bytes)")), "{message}");
    let too_many: Vec<Value> = (0..9).map(|_| json!({"get": {"key": "k"}})).collect();
    txn(&router, json!({"success": too_many}))
        .await
        .error(StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large");
}

#[tokio::test(start_paused = true)]
async fn a_body_that_stops_arriving_is_408_and_changes_nothing() {
    let router = Fake::new().router();
    // Part of the body, then nothing more, for ever.
    let stalled = futures_util::stream::iter([Ok::<_, std::io::Error>(
        axum::body::Bytes::from_static(b"half a val"),
    )])
    .chain(futures_util::stream::pending());
    let request = Request::builder()
        .method(Method::PUT)
        .uri("/v1/kv/k")
        .header("content-length", "20")
        .body(Body::from_stream(stalled))
        .expect("valid request");
    // Time is paused: it jumps ahead while everything waits.
    let limit = crate::api::body::BODY_TIMEOUT + std::time::Duration::from_secs(60);
    tokio::time::timeout(limit, send(&router, request))
        .await
        .expect("the node gives up on the body")
        .error(StatusCode::REQUEST_TIMEOUT, "request_timeout");
    call(&router, Method::GET, "/v1/kv/k", Body::empty())
        .await
        .error(StatusCode::NOT_FOUND, "key_not_found");
}

/// `PUT /v1/kv/k` declaring a body of `declared` bytes that never comes.
fn put_that_never_arrives(declared: usize) -> Request<Body> {
    let never = futures_util::stream::pending::<Result<Bytes, std::io::Error>>();
    Request::builder()
        .method(Method::PUT)
        .uri("/v1/kv/k")
        .header("content-length", declared.to_string())
        .body(Body::from_stream(never))
        .expect("valid request")
}

#[tokio::test(start_paused = true)]
async fn the_body_timeout_a_request_carries_replaces_the_default() {
    let router = Fake::new()
        .router()
        .layer(axum::Extension(crate::api::body::BodyTimeout(
            Duration::from_secs(5),
        )));
    // Time is paused: it jumps ahead while everything waits, so the 5 s
    // limit answers before this one, and the default (120 s) would not.
    let request = put_that_never_arrives(20);
    let err = tokio::time::timeout(Duration::from_secs(10), send(&router, request))
        .await
        .expect("the node gives up on the body after 5 s")
        .error(StatusCode::REQUEST_TIMEOUT, "request_timeout");
    let message = err["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("within 5 s (serve --body-timeout)"),
        "{message}"
    );
}

#[tokio::test(start_paused = true)]
async fn a_declared_body_over_the_limit_is_413_before_any_of_it_is_read() {
    let router = Fake::new().router();
    let limit = crate::api::body_limit(&Fake::new().limits());
    // Only the declared length can decide.
    let put = put_that_never_arrives;
    // Without the check this would wait out the body timeout and be 408.
    let err = send(&router, put(limit + 1))
        .await
        .error(StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large");
    let message = err["message"].as_str().unwrap_or_default();
    assert!(message.contains(&format!("({limit} bytes)")), "{message}");
    send(&router, put(usize::MAX))
        .await
        .error(StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large");
    // At the limit the body is read (and here never comes).
    send(&router, put(limit))
        .await
        .error(StatusCode::REQUEST_TIMEOUT, "request_timeout");
    call(&router, Method::GET, "/v1/kv/k", Body::empty())
        .await
        .error(StatusCode::NOT_FOUND, "key_not_found");
}

#[tokio::test]
async fn malformed_transactions_are_400_with_a_specific_message() {
    let router = Fake::new().router();
    let cases = [
        (json!("not an object"), "invalid request body"),
        (json!([]), "expected a JSON object"),
        (json!([[], [], []]), "expected a JSON object"),
        (json!({"succes": []}), "unknown field"),
        (
            json!({"compare": [{"key": "k", "target": "version", "value": "x"}]}),
            "compare[0]: field \"value\" does not go with target \"version\"",
        ),
        (
            json!({"compare": [{"key": "k", "target": "mod_revision"}]}),
            "compare[0]: target \"mod_revision\" needs the \"mod_revision\" field",
        ),
        (
            json!({"success": [{"put": {"key": "k", "key_b64": "aw==", "value": "v"}}]}),
            "success[0].put: give either \"key\" or \"key_b64\", not both",
        ),
        (
            json!({"failure": [{"get": {"key_b64": "%%"}}]}),
            "failure[0].get.key_b64 is not valid base64",
        ),
        (
            json!({"success": [{"put": {"key": "k"}}]}),
            "success[0].put: \"value\" or \"value_b64\" is required",
        ),
        (
            json!({"success": [{"put": {"key": "k", "value": "v"}, "get": {"key": "k"}}]}),
            "invalid request body",
        ),
    ];
    for (body, message) in cases {
        let err = txn(&router, body.clone())
            .await
            .error(StatusCode::BAD_REQUEST, "invalid_argument");
        let got = err["message"].as_str().unwrap_or_default();
        assert!(got.contains(message), "{body}: {got}");
    }
    call(&router, Method::POST, "/v1/txn", "{not json")
        .await
        .error(StatusCode::BAD_REQUEST, "invalid_argument");
}

#[tokio::test]
async fn transactions_run_the_branch_their_compares_choose() {
    let router = Fake::new().router();
    let claim = json!({
        "compare": [{"key": "lock", "target": "version", "version": 0}],
        "success": [
            {"put": {"key": "lock", "value": "me"}},
            {"put": {"key_b64": "/w==", "value_b64": "AA=="}},
            {"get": {"key": "lock"}}
        ],
        "failure": [{"get": {"key": "lock"}}, {"delete": {"key": "other"}}]
    });
    let first = txn(&router, claim.clone()).await;
    assert_eq!(first.status, StatusCode::OK);
    let body = first.json();
    assert_eq!(body["succeeded"], true);
    assert_eq!(body["revision"], 1);
    assert_eq!(body["responses"][0], json!({"put": {"revision": 1}}));
    assert_eq!(body["responses"][2]["get"]["kv"]["value_utf8"], "me");

    let second = txn(&router, claim).await.json();
    assert_eq!(second["succeeded"], false);
    assert_eq!(second["responses"][0]["get"]["kv"]["key_utf8"], "lock");
    assert_eq!(
        second["responses"][1],
        json!({"delete": {"deleted": false}})
    );

    let by_value = json!({
        "compare": [{"key": "lock", "target": "value", "op": "not_equal", "value": "me"}],
        "failure": [{"get": {"key": "missing"}}]
    });
    let third = txn(&router, by_value).await.json();
    assert_eq!(third["succeeded"], false);
    assert_eq!(third["responses"][0], json!({"get": {"kv": null}}));
}

#[tokio::test]
async fn listings_filter_by_prefix_and_continue_after_a_key() {
    let router = Fake::new().router();
    for key in ["a/1", "a/2", "a/3", "b/1"] {
        call(&router, Method::PUT, &format!("/v1/kv/{key}"), key).await;
    }
    let first = call(
        &router,
        Method::GET,
        "/v1/kv?prefix=a%2F&limit=2",
        Body::empty(),
    )
    .await;
    let body = first.json();
    assert_eq!(body["revision"], 4);
    assert_eq!(body["more"], true);
    let keys: Vec<&str> = body["kvs"]
        .as_array()
        .map(|kvs| {
            kvs.iter()
                .filter_map(|kv| kv["key_utf8"].as_str())
                .collect()
        })
        .unwrap_or_default();
    assert_eq!(keys, ["a/1", "a/2"]);
    assert_eq!(body["next_after"], "YS8y");

    let rest = call(
        &router,
        Method::GET,
        "/v1/kv?prefix=a/&after=a/2",
        Body::empty(),
    )
    .await;
    let body = rest.json();
    assert_eq!(body["more"], false);
    assert!(body.get("next_after").is_none());
    assert_eq!(body["kvs"][0]["key_utf8"], "a/3");
    assert_eq!(body["kvs"][0]["version"], 1);
    assert_eq!(body["kvs"].as_array().map(Vec::len), Some(1));

    for bad in ["limit=0", "limit=1001", "limit=x", "bogus=1"] {
        call(
            &router,
            Method::GET,
            &format!("/v1/kv?{bad}"),
            Body::empty(),
        )
        .await
        .error(StatusCode::BAD_REQUEST, "invalid_argument");
    }
}

#[tokio::test]
async fn unknown_routes_and_wrong_methods_are_json_errors() {
    let router = Fake::new().router();
    call(&router, Method::GET, "/v2/nothing", Body::empty())
        .await
        .error(StatusCode::NOT_FOUND, "not_found");
    let wrong = call(&router, Method::POST, "/v1/kv/k", "v").await;
    wrong.error(StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed");
    assert!(wrong.header("allow").contains("PUT"));
    call(&router, Method::PATCH, "/v1/txn", Body::empty())
        .await
        .error(StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed");
}

#[tokio::test]
async fn membership_changes_need_the_cluster_token() {
    let router = Fake::new().router();
    let add = "/v1/cluster/members";
    call(
        &router,
        Method::POST,
        add,
        r#"{"name":"n2","peer_url":"x"}"#,
    )
    .await
    .error(StatusCode::UNAUTHORIZED, "unauthorized");
    call_with_token(&router, Method::POST, add, "wrong")
        .await
        .error(StatusCode::UNAUTHORIZED, "unauthorized");
    let ok = call_with_token(&router, Method::POST, add, TOKEN).await;
    assert_eq!(ok.status, StatusCode::OK);
    assert_eq!(ok.json()["cluster_id"], "c1");

    let promote = "/v1/cluster/members/n2/promote";
    call_with_token(&router, Method::POST, promote, "secreT")
        .await
        .error(StatusCode::UNAUTHORIZED, "unauthorized");
    let ok = call_with_token(&router, Method::POST, promote, TOKEN).await;
    assert_eq!(ok.status, StatusCode::OK);
    let ok = call_with_token(&router, Method::DELETE, "/v1/cluster/members/n2", TOKEN).await;
    assert_eq!(ok.status, StatusCode::OK);

    let info = call(&router, Method::GET, "/v1/cluster", Body::empty()).await;
    assert_eq!(info.json()["members"][0]["role"], "voter");

    // The refusal names what the token is for, whichever admin route it is.
    let e = call(&router, Method::GET, "/v1/admin/backups", Body::empty())
        .await
        .error(StatusCode::UNAUTHORIZED, "unauthorized");
    let message = e["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("backups") && message.contains("Bearer <cluster token>"),
        "{message}"
    );
}

#[tokio::test]
async fn a_member_name_no_node_could_run_under_is_refused_before_any_call() {
    let router = Fake::new().router();
    let with_body = |uri: &str, body: String| {
        Request::builder()
            .method(Method::POST)
            .uri(uri)
            .header(header::AUTHORIZATION, format!("Bearer {TOKEN}"))
            .body(Body::from(body))
            .expect("valid request")
    };
    let add = |name: &str| {
        with_body(
            "/v1/cluster/members",
            json!({"name": name, "peer_url": "http://127.0.0.1:2381"}).to_string(),
        )
    };
    let e = send(&router, add("bad name"))
        .await
        .error(StatusCode::BAD_REQUEST, "invalid_argument");
    assert_eq!(
        e["message"],
        "node name \"bad name\" must be 1-63 characters of letters, digits, '-', '_' or '.'"
    );
    let e = send(&router, add(&"n".repeat(5000)))
        .await
        .error(StatusCode::BAD_REQUEST, "invalid_argument");
    assert!(e["message"].as_str().is_some_and(|m| m.len() < 300), "{e}");
    send(&router, add(""))
        .await
        .error(StatusCode::BAD_REQUEST, "invalid_argument");
    let replace = with_body(
        "/v1/cluster/members/bad%20name/replace?peer_url=http://127.0.0.1:2381",
        String::new(),
    );
    send(&router, replace)
        .await
        .error(StatusCode::BAD_REQUEST, "invalid_argument");
    // A name a node can run under goes through.
    let ok = send(&router, add("node-4.b_2")).await;
    assert_eq!(ok.status, StatusCode::OK);
}

#[tokio::test]
async fn a_mastership_transfer_needs_the_token_and_names_each_refusal() {
    let router = Fake::new().router();
    let path = |name: &str| format!("/v1/cluster/members/{name}/transfer");
    call(&router, Method::POST, &path("n1"), Body::empty())
        .await
        .error(StatusCode::UNAUTHORIZED, "unauthorized");
    call_with_token(&router, Method::POST, &path("n1"), "wrong")
        .await
        .error(StatusCode::UNAUTHORIZED, "unauthorized");
    let ok = call_with_token(&router, Method::POST, &path("n1"), TOKEN).await;
    assert_eq!(ok.status, StatusCode::OK);
    assert_eq!(ok.json()["master"], "n1");
    call_with_token(&router, Method::POST, &path("nobody"), TOKEN)
        .await
        .error(StatusCode::NOT_FOUND, "member_not_found");
    call_with_token(&router, Method::POST, &path("learner"), TOKEN)
        .await
        .error(StatusCode::CONFLICT, "member_not_voter");
    call_with_token(&router, Method::POST, &path("lagging"), TOKEN)
        .await
        .error(StatusCode::CONFLICT, "member_not_ready");
    let slow = call_with_token(&router, Method::POST, &path("slow"), TOKEN)
        .await
        .error(StatusCode::GATEWAY_TIMEOUT, "timeout");
    assert!(
        !slow["message"]
            .as_str()
            .unwrap_or_default()
            .contains("write"),
        "a handoff is not a write: {slow}"
    );
    call_with_token(&router, Method::GET, &path("n1"), TOKEN)
        .await
        .error(StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed");
}

/// Reads the SSE stream until `count` events have arrived.
async fn sse_events(router: &Router, uri: &str, count: usize) -> Vec<String> {
    let request = Request::builder()
        .uri(uri)
        .body(Body::empty())
        .expect("valid request");
    let response = router.clone().oneshot(request).await.expect("infallible");
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(
        response
            .headers()
            .get(header::CONTENT_TYPE)
            .map(|v| v.as_bytes()),
        Some(&b"text/event-stream"[..])
    );
    let mut body = response.into_body().into_data_stream();
    let mut text = String::new();
    while text.matches("\n\n").count() < count {
        let chunk = tokio::time::timeout(Duration::from_secs(5), body.next())
            .await
            .expect("an event within the deadline")
            .expect("stream open")
            .expect("chunk reads");
        text.push_str(&String::from_utf8_lossy(&chunk));
    }
    text.split("\n\n")
        .filter(|e| !e.trim().is_empty())
        .map(str::to_owned)
        .collect()
}

fn event_data(event: &str) -> Value {
    let data = event
        .lines()
        .find_map(|l| l.strip_prefix("data: "))
        .unwrap_or_else(|| panic!("no data in {event:?}"));
    serde_json::from_str(data).expect("data is JSON")
}

#[tokio::test]
async fn watch_replays_history_then_streams_new_changes() {
    let fake = Fake::new();
    let router = fake.router();
    call(&router, Method::PUT, "/v1/kv/w/a", "1").await;
    call(&router, Method::PUT, "/v1/kv/other", "x").await;
    call(&router, Method::DELETE, "/v1/kv/w/a", Body::empty()).await;

    let replayed = sse_events(&router, "/v1/watch?prefix=w/&start_revision=1", 2).await;
    assert!(replayed[0].contains("event: put"), "{}", replayed[0]);
    assert!(replayed[0].contains("id: 1"));
    let put = event_data(&replayed[0]);
    assert_eq!(put["type"], "put");
    assert_eq!(put["key_utf8"], "w/a");
    assert_eq!(put["value"], "MQ==");
    assert_eq!(put["version"], 1);
    assert!(replayed[1].contains("event: delete"));
    assert_eq!(event_data(&replayed[1])["revision"], 3);

    // By default only changes after the current revision are sent.
    let watcher = {
        let router = router.clone();
        tokio::spawn(async move { sse_events(&router, "/v1/watch?prefix=w/", 1).await })
    };
    // Keep writing until the watcher (subscribed at some point) sees one.
    let mut seen = None;
    for _ in 0..100 {
        call(&router, Method::PUT, "/v1/kv/w/b", "new").await;
        tokio::time::sleep(Duration::from_millis(10)).await;
        if watcher.is_finished() {
            seen = Some(watcher.await.expect("watcher ran"));
            break;
        }
    }
    let live = seen.expect("the watcher saw a new change");
    let data = event_data(&live[0]);
    assert_eq!(data["key_utf8"], "w/b");
    assert!(data["revision"].as_u64() > Some(3));
}

#[tokio::test]
async fn watch_from_a_compacted_revision_is_410() {
    let fake = Fake::with_config(StoreConfig {
        history_max_events: 2,
        ..StoreConfig::default()
    });
    let router = fake.router();
    for i in 0..5 {
        call(&router, Method::PUT, "/v1/kv/k", i.to_string()).await;
    }
    let err = call(
        &router,
        Method::GET,
        "/v1/watch?start_revision=1",
        Body::empty(),
    )
    .await
    .error(StatusCode::GONE, "compacted");
    assert!(
        err["message"]
            .as_str()
            .is_some_and(|m| m.contains("compacted"))
    );
    call(
        &router,
        Method::GET,
        "/v1/watch?start_revision=-1",
        Body::empty(),
    )
    .await
    .error(StatusCode::BAD_REQUEST, "invalid_argument");
}

#[tokio::test]
async fn probes_and_metrics() {
    let fake = Fake::new();
    let router = fake.router();
    let live = call(&router, Method::GET, "/healthz", Body::empty()).await;
    assert_eq!(live.json(), json!({"status": "ok"}));
    let ready = call(&router, Method::GET, "/readyz", Body::empty()).await;
    assert_eq!(
        (ready.status, ready.json()),
        (StatusCode::OK, json!({"status": "ready"}))
    );

    fake.inner.ready.store(false, Ordering::Relaxed);
    let not_ready = call(&router, Method::GET, "/readyz", Body::empty()).await;
    assert_eq!(not_ready.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(not_ready.json()["reason"], "no master elected");

    let metrics = call(&router, Method::GET, "/metrics", Body::empty()).await;
    assert_eq!(
        metrics.header("content-type"),
        "application/openmetrics-text; version=1.0.0; charset=utf-8"
    );
    assert_eq!(metrics.body.as_ref(), b"# EOF\n");
}

#[tokio::test]
async fn the_metrics_port_serves_probes_and_metrics_only_and_without_credentials() {
    let fake = Fake::with_auth();
    let router = crate::api::probe_router(fake.clone());
    let live = call(&router, Method::GET, "/healthz", Body::empty()).await;
    assert_eq!(
        (live.status, live.json()),
        (StatusCode::OK, json!({"status": "ok"}))
    );
    let ready = call(&router, Method::GET, "/readyz", Body::empty()).await;
    assert_eq!(ready.json(), json!({"status": "ready"}));
    let metrics = call(&router, Method::GET, "/metrics", Body::empty()).await;
    assert_eq!(metrics.status, StatusCode::OK);
    assert_eq!(metrics.body.as_ref(), b"# EOF\n");

    // The API is not there, with or without a token: a clear 404, not a
    // way around the client port's certificates.
    for (method, uri) in [
        (Method::GET, "/v1/kv/app/x"),
        (Method::PUT, "/v1/kv/app/x"),
        (Method::GET, "/v1/cluster"),
        (Method::GET, "/openapi.json"),
    ] {
        let reply = call(&router, method, uri, Body::from("x")).await;
        let error = reply.error(StatusCode::NOT_FOUND, "not_found");
        let message = error["message"].as_str().unwrap_or_default();
        assert!(message.contains("metrics port"), "{message}");
    }
    let post = call(&router, Method::POST, "/healthz", Body::empty()).await;
    post.error(StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed");
    // The client port still asks for credentials on the same node.
    let kv = call(&fake.router(), Method::GET, "/v1/kv/app/x", Body::empty()).await;
    kv.error(StatusCode::UNAUTHORIZED, "unauthorized");
}

#[tokio::test]
async fn backups_in_an_archive_need_the_token_and_an_archive() {
    let router = Fake::new().router();
    for (method, uri) in [
        (Method::POST, "/v1/admin/backups"),
        (Method::GET, "/v1/admin/backups"),
        (Method::DELETE, "/v1/admin/backups/b1"),
    ] {
        let refused = call_with_token(&router, method.clone(), uri, "wrong").await;
        assert_eq!(refused.status, StatusCode::UNAUTHORIZED, "{method} {uri}");
        let reply = call_with_token(&router, method.clone(), uri, TOKEN).await;
        assert_eq!(
            reply.status,
            StatusCode::PRECONDITION_FAILED,
            "{method} {uri}"
        );
        let body = reply.json();
        assert_eq!(body["error"]["code"], "no_archive", "{method} {uri}");
        assert!(
            body["error"]["message"]
                .as_str()
                .is_some_and(|m| m.contains("--archive-url")),
            "{body}"
        );
    }
}

#[tokio::test]
async fn openapi_json_describes_every_route() {
    let router = Fake::new().router();
    let reply = call(&router, Method::GET, "/openapi.json", Body::empty()).await;
    assert_eq!(reply.status, StatusCode::OK);
    let doc = reply.json();
    assert_eq!(doc["openapi"], "3.1.0");
    assert_eq!(doc["info"]["title"], "phxkv");
    assert_eq!(doc["info"]["version"], env!("CARGO_PKG_VERSION"));
    let routes = [
        ("/v1/kv/{key}", "put"),
        ("/v1/kv/{key}", "get"),
        ("/v1/kv/{key}", "delete"),
        ("/v1/kv", "get"),
        ("/v1/kv", "delete"),
        ("/v1/txn", "post"),
        ("/v1/leases", "get"),
        ("/v1/leases", "post"),
        ("/v1/leases/{id}", "get"),
        ("/v1/leases/{id}", "delete"),
        ("/v1/leases/{id}/keepalive", "post"),
        ("/v1/leases/keepalive", "post"),
        ("/v1/leases/keepalive/stream", "post"),
        ("/v1/lock/{name}", "post"),
        ("/v1/lock/{name}", "delete"),
        ("/v1/election/{name}", "post"),
        ("/v1/election/{name}", "get"),
        ("/v1/election/{name}", "put"),
        ("/v1/election/{name}", "delete"),
        ("/v1/watch", "get"),
        ("/v1/cluster", "get"),
        ("/v1/cluster/members", "post"),
        ("/v1/cluster/members/{name}/promote", "post"),
        ("/v1/cluster/members/{name}", "delete"),
        ("/v1/cluster/members/{name}/replace", "post"),
        ("/v1/cluster/members/{name}/transfer", "post"),
        ("/v1/admin/snapshot", "get"),
        ("/v1/admin/backups", "get"),
        ("/v1/admin/backups", "post"),
        ("/v1/admin/backups/{name}", "delete"),
        ("/v1/auth/whoami", "get"),
        ("/v1/auth/roles", "get"),
        ("/v1/auth/roles/{name}", "put"),
        ("/v1/auth/roles/{name}", "delete"),
        ("/v1/auth/tokens", "get"),
        ("/v1/auth/tokens", "post"),
        ("/v1/auth/tokens/{id}", "delete"),
        ("/v1/auth/tokens/{id}/roles", "put"),
        ("/v1/auth/enable", "post"),
        ("/v1/auth/disable", "post"),
        ("/healthz", "get"),
        ("/readyz", "get"),
        ("/metrics", "get"),
        ("/openapi.json", "get"),
        ("/docs", "get"),
        ("/ui", "get"),
    ];
    for (path, method) in routes {
        let op = &doc["paths"][path][method];
        assert!(op.is_object(), "{method} {path} is not documented");
        assert!(op["responses"]["default"].is_object(), "{method} {path}");
    }
    let operations: usize = doc["paths"]
        .as_object()
        .map(|paths| {
            paths
                .values()
                .filter_map(Value::as_object)
                .map(|item| item.len())
                .sum()
        })
        .unwrap_or_default();
    assert_eq!(
        operations,
        routes.len(),
        "an operation is documented but not listed here"
    );
    for schema in [
        "ErrorResponse",
        "KvJson",
        "TxnRequest",
        "TxnResult",
        "WatchEvent",
    ] {
        assert!(doc["components"]["schemas"][schema].is_object(), "{schema}");
    }
}

/// Every `$ref` in `value`, in document order.
fn refs(value: &Value, found: &mut Vec<String>) {
    match value {
        Value::Object(map) => {
            if let Some(Value::String(target)) = map.get("$ref") {
                found.push(target.clone());
            }
            map.values().for_each(|v| refs(v, found));
        }
        Value::Array(items) => items.iter().for_each(|v| refs(v, found)),
        _ => {}
    }
}

// A dangling reference makes generated clients and schema-based fuzzers skip
// whatever it describes, silently.
#[test]
fn every_schema_reference_resolves() {
    let doc = serde_json::to_value(crate::api::openapi()).expect("the document serializes");
    let mut found = Vec::new();
    refs(&doc, &mut found);
    assert!(!found.is_empty());
    for target in found {
        let pointer = target
            .strip_prefix('#')
            .unwrap_or_else(|| panic!("{target} is not a local reference"));
        assert!(doc.pointer(pointer).is_some(), "{target} does not resolve");
    }
}

#[tokio::test]
async fn docs_page_is_self_contained() {
    let router = Fake::new().router();
    let reply = call(&router, Method::GET, "/docs", Body::empty()).await;
    assert_eq!(reply.status, StatusCode::OK);
    assert!(reply.header("content-type").starts_with("text/html"));
    let html = String::from_utf8_lossy(&reply.body);
    assert!(html.contains("fetch(\"openapi.json\")"));
    // The icon is inline; the SVG namespace in it is a name, not a fetch.
    assert!(html.contains("<link rel=\"icon\" href=\"data:image/svg+xml,"));
    let html = html.replace("xmlns='http://www.w3.org/2000/svg'", "");
    assert!(!html.contains("http://") && !html.contains("https://"));
    // With a slash, the page's relative links would resolve under /docs/.
    let slash = call(&router, Method::GET, "/docs/", Body::empty()).await;
    assert_eq!(slash.status, StatusCode::PERMANENT_REDIRECT);
    assert_eq!(slash.header("location"), "/docs");
}

#[tokio::test]
async fn docs_page_has_a_policy_and_revalidates() {
    let router = Fake::new().router();
    let reply = call(&router, Method::GET, "/docs", Body::empty()).await;
    assert!(
        reply
            .header("content-security-policy")
            .contains("connect-src 'self'")
    );
    assert_eq!(reply.header("cache-control"), "no-cache");
    let etag = reply.header("etag").to_owned();
    let again = Request::get("/docs")
        .header(header::IF_NONE_MATCH, &etag)
        .body(Body::empty())
        .expect("request");
    let reply = send(&router, again).await;
    assert_eq!(reply.status, StatusCode::NOT_MODIFIED);
    assert!(reply.body.is_empty());
}

#[tokio::test]
async fn console_is_served_with_a_strict_policy() {
    let router = Fake::new().router();
    let page = call(&router, Method::GET, "/ui", Body::empty()).await;
    assert_eq!(page.status, StatusCode::OK);
    assert_eq!(page.header("content-type"), "text/html; charset=utf-8");
    let csp = page.header("content-security-policy");
    assert!(csp.contains("script-src 'self';") && csp.contains("default-src 'none'"));
    assert!(!csp.contains("unsafe-inline"));
    assert_eq!(page.header("cache-control"), "no-cache");
    assert_eq!(page.header("x-content-type-options"), "nosniff");
    for (path, content_type) in [
        ("/ui/app.js", "text/javascript; charset=utf-8"),
        ("/ui/app.css", "text/css; charset=utf-8"),
    ] {
        let asset = call(&router, Method::GET, path, Body::empty()).await;
        assert_eq!(asset.status, StatusCode::OK, "{path}");
        assert_eq!(asset.header("content-type"), content_type, "{path}");
        assert!(!asset.body.is_empty(), "{path}");
    }
    let slash = call(&router, Method::GET, "/ui/", Body::empty()).await;
    assert_eq!(slash.status, StatusCode::PERMANENT_REDIRECT);
    assert_eq!(slash.header("location"), "/ui");
    // Unknown files under /ui are ordinary JSON 404s.
    call(&router, Method::GET, "/ui/missing.js", Body::empty())
        .await
        .error(StatusCode::NOT_FOUND, "not_found");
}

#[tokio::test]
async fn stray_plain_text_errors_are_rewritten_as_json() {
    use axum::routing::get;
    let router = Router::new()
        .route(
            "/plain",
            get(|| async { (StatusCode::UNPROCESSABLE_ENTITY, "framework says no") }),
        )
        .route("/fine", get(|| async { "plain success stays" }))
        .layer(axum::middleware::from_fn(
            crate::api::error::json_errors_only,
        ));
    let err = call(&router, Method::GET, "/plain", Body::empty())
        .await
        .error(StatusCode::BAD_REQUEST, "invalid_argument");
    assert_eq!(err["message"], "framework says no");
    let ok = call(&router, Method::GET, "/fine", Body::empty()).await;
    assert_eq!(ok.body.as_ref(), b"plain success stays");
}

/// A request with an optional bearer token and a body, from `addr`.
async fn as_caller(
    router: &Router,
    method: Method,
    uri: &str,
    token: Option<&str>,
    body: impl Into<Body>,
) -> Reply {
    let mut request = Request::builder().method(method).uri(uri);
    if let Some(token) = token {
        request = request.header(header::AUTHORIZATION, format!("Bearer {token}"));
    }
    send(router, request.body(body.into()).expect("valid request")).await
}

/// With auth on: a role `role` with `permissions`, and a token named `name`
/// holding it. Returns the token.
async fn token_with_role(router: &Router, role: &str, permissions: Value, name: &str) -> String {
    let admin = Some(TOKEN);
    let path = format!("/v1/auth/roles/{role}");
    let body = json!({ "permissions": permissions }).to_string();
    let r = as_caller(router, Method::PUT, &path, admin, body).await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    let req = json!({"name": name, "roles": [role]}).to_string();
    let r = as_caller(router, Method::POST, "/v1/auth/tokens", admin, req).await;
    assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.body);
    r.json()["token"].as_str().expect("a token").to_owned()
}

/// With auth on: a role reading `app/`, a token with it, and a key in
/// `app/` and one in `other/`. Returns the token.
async fn reader_of_app(router: &Router) -> String {
    let read_app = json!([{"prefix": "app/", "read": true}]);
    let token = token_with_role(router, "app-reader", read_app, "ci").await;
    for key in ["app/x", "other/x"] {
        let r = as_caller(
            router,
            Method::PUT,
            &format!("/v1/kv/{key}"),
            Some(TOKEN),
            "v",
        )
        .await;
        assert_eq!(r.status, StatusCode::OK);
    }
    token
}

/// A token named `name` whose one role may read and write `prefix`.
async fn writer_of(router: &Router, prefix: &str, name: &str) -> String {
    let write = json!([{"prefix": prefix, "read": true, "write": true}]);
    token_with_role(router, &format!("{name}-writer"), write, name).await
}

/// A lease of 30 s granted with `token`; returns its id.
async fn lease_for(router: &Router, token: &str) -> u64 {
    let body = r#"{"ttl_secs": 30}"#;
    let r = as_caller(router, Method::POST, "/v1/leases", Some(token), body).await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    r.json()["id"].as_u64().expect("an id")
}

/// A token may attach a key to a lease only if it may write every key
/// already attached to it, as renewing the lease needs: otherwise a token
/// that may write only `evil/` could attach `evil/x` to another client's
/// lease, whose keep-alives would then be refused until it ended.
#[tokio::test]
async fn a_token_cannot_attach_a_key_to_a_lease_whose_keys_it_may_not_write() {
    let router = Fake::with_auth().router();
    let owner = writer_of(&router, "app/", "owner").await;
    let other = writer_of(&router, "evil/", "other").await;
    let lease = lease_for(&router, &owner).await;
    let attach = |key: &str, token: &str, lease: u64| {
        let (router, uri, token) = (
            router.clone(),
            format!("/v1/kv/{key}?lease={lease}"),
            token.to_owned(),
        );
        async move { as_caller(&router, Method::PUT, &uri, Some(&token), "v").await }
    };
    assert_eq!(
        attach("app/lock", &owner, lease).await.status,
        StatusCode::OK
    );
    attach("evil/x", &other, lease)
        .await
        .error(StatusCode::FORBIDDEN, "permission_denied");
    let keep_alive = format!("/v1/leases/{lease}/keepalive");
    let r = as_caller(
        &router,
        Method::POST,
        &keep_alive,
        Some(&owner),
        Body::empty(),
    )
    .await;
    assert_eq!(
        r.status,
        StatusCode::OK,
        "the owner still renews: {:?}",
        r.body
    );
    // Its own lease takes its keys; another token's takes none, even
    // before it has any.
    let own = lease_for(&router, &other).await;
    assert_eq!(attach("evil/x", &other, own).await.status, StatusCode::OK);
    let fresh = lease_for(&router, &owner).await;
    attach("evil/y", &other, fresh)
        .await
        .error(StatusCode::FORBIDDEN, "permission_denied");
    // The cluster token is the admin, and attaches anywhere.
    assert_eq!(attach("evil/z", TOKEN, lease).await.status, StatusCode::OK);
}

/// With auth on, a token's lease is held by that token: another token
/// (that is not an admin's) can neither list, renew, revoke nor attach
/// keys to it, even while it has no keys.
#[tokio::test]
async fn a_tokens_lease_is_its_own_and_its_admins() {
    let mut fake = Fake::with_auth();
    // Room for a lock's key: its name and the lease's 16 hex digits.
    Arc::get_mut(&mut fake.inner).expect("fresh").limits = Limits::default();
    let router = fake.router();
    let app = writer_of(&router, "app/", "app").await;
    let other = writer_of(&router, "app/", "other").await;
    let mine = lease_for(&router, &app).await;
    let theirs = lease_for(&router, &other).await;
    let admins = lease_for(&router, TOKEN).await;
    let listed = |token: String| {
        let router = router.clone();
        async move {
            let r = as_caller(
                &router,
                Method::GET,
                "/v1/leases",
                Some(&token),
                Body::empty(),
            )
            .await;
            assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
            let mut ids: Vec<u64> = r.json()["leases"]
                .as_array()
                .expect("a list")
                .iter()
                .filter_map(|l| l["id"].as_u64())
                .collect();
            ids.sort_unstable();
            ids
        }
    };
    assert_eq!(listed(app.clone()).await, vec![mine]);
    assert_eq!(listed(other.clone()).await, vec![theirs]);
    let mut all = vec![mine, theirs, admins];
    all.sort_unstable();
    assert_eq!(listed(TOKEN.to_owned()).await, all);
    // The other token, which may write app/ too, cannot use `mine`.
    let keep_alive = format!("/v1/leases/{mine}/keepalive");
    let attach = format!("/v1/kv/app/x?lease={mine}");
    let revoke = format!("/v1/leases/{mine}");
    for (method, path, body) in [
        (Method::POST, &keep_alive, ""),
        (Method::PUT, &attach, "v"),
        (Method::DELETE, &revoke, ""),
        (Method::GET, &revoke, ""),
    ] {
        as_caller(&router, method, path, Some(&other), body)
            .await
            .error(StatusCode::FORBIDDEN, "permission_denied");
    }
    let r = as_caller(&router, Method::GET, &revoke, Some(&app), Body::empty()).await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    // Nor release a lock held with it, though it may write the lock's key.
    let body = json!({"lease": mine, "wait_ms": 0}).to_string();
    let r = as_caller(&router, Method::POST, "/v1/lock/app/job", Some(&app), body).await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    let unlock = format!("/v1/lock/app/job?lease={mine}");
    as_caller(
        &router,
        Method::DELETE,
        &unlock,
        Some(&other),
        Body::empty(),
    )
    .await
    .error(StatusCode::FORBIDDEN, "permission_denied");
    // Its holder and the admin can.
    let r = as_caller(
        &router,
        Method::POST,
        &keep_alive,
        Some(&app),
        Body::empty(),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    let r = as_caller(&router, Method::PUT, &attach, Some(&app), "v").await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    let r = as_caller(
        &router,
        Method::POST,
        &keep_alive,
        Some(TOKEN),
        Body::empty(),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    let r = as_caller(&router, Method::DELETE, &revoke, Some(TOKEN), Body::empty()).await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    // The admin's own lease, granted without a holder, is open to a token
    // that may write its keys, as in etcd, but not listed to it.
    let admins_attach = format!("/v1/kv/app/y?lease={admins}");
    let r = as_caller(&router, Method::PUT, &admins_attach, Some(&other), "v").await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
}

/// Until every member knows lease holders (a rolling upgrade), a token's
/// lease is granted without one, as by an earlier version.
#[tokio::test]
async fn a_tokens_lease_has_no_holder_until_every_member_knows_them() {
    let fake = Fake::with_auth();
    fake.inner.lease_owners.store(false, Ordering::Relaxed);
    let router = fake.router();
    let app = writer_of(&router, "app/", "app").await;
    let other = writer_of(&router, "app/", "other").await;
    let lease = lease_for(&router, &app).await;
    let attach = format!("/v1/kv/app/x?lease={lease}");
    let r = as_caller(&router, Method::PUT, &attach, Some(&other), "v").await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
}

#[tokio::test]
async fn with_auth_on_everything_but_probes_metrics_and_docs_needs_a_token() {
    let router = Fake::with_auth().router();
    for path in [
        "/v1/kv/a",
        "/v1/kv",
        "/v1/cluster",
        "/v1/watch",
        "/v1/auth/whoami",
    ] {
        as_caller(&router, Method::GET, path, None, Body::empty())
            .await
            .error(StatusCode::UNAUTHORIZED, "unauthorized");
    }
    as_caller(&router, Method::PUT, "/v1/kv/a", Some("wrong"), "v")
        .await
        .error(StatusCode::UNAUTHORIZED, "unauthorized");
    for path in ["/healthz", "/readyz", "/metrics", "/openapi.json", "/docs"] {
        let r = as_caller(&router, Method::GET, path, None, Body::empty()).await;
        assert_eq!(r.status, StatusCode::OK, "{path}");
    }
    let who = as_caller(
        &router,
        Method::GET,
        "/v1/auth/whoami",
        Some(TOKEN),
        Body::empty(),
    )
    .await;
    assert_eq!(who.json()["kind"], "admin");
}

/// Applies an `auth enable` as if it had been chosen, without the HTTP
/// side hearing of it (its `auth_required` stays false), as on a replica
/// that applies the enable while a request is already past the gate.
fn enable_behind_the_http_side(fake: &Fake) {
    let enabled = fake.store().apply(
        RequestId {
            client: 1 << 40,
            seq: 1,
        },
        &Op::Auth(crate::auth::AuthChange::Enable),
    );
    assert!(
        matches!(enabled, OpResult::AuthChanged { .. }),
        "{enabled:?}"
    );
}

/// A replica that has not applied `auth enable` yet still takes requests
/// without a credential: a write is proposed as an anonymous op and refused
/// where it is applied, after the enable, and a linearizable read is
/// refused by the state it reads. The cluster token is the admin on either
/// side of the enable.
#[tokio::test]
async fn a_write_without_a_credential_is_refused_where_it_is_applied_after_auth_enable() {
    let fake = Fake::new();
    let router = fake.router();
    let r = as_caller(&router, Method::PUT, "/v1/kv/app/x", None, "1").await;
    assert_eq!(r.status, StatusCode::OK, "auth is off");
    enable_behind_the_http_side(&fake);
    let revision = fake.store().revision();
    as_caller(&router, Method::PUT, "/v1/kv/app/x", None, "2")
        .await
        .error(StatusCode::UNAUTHORIZED, "unauthorized");
    as_caller(&router, Method::DELETE, "/v1/kv/app/x", None, Body::empty())
        .await
        .error(StatusCode::UNAUTHORIZED, "unauthorized");
    as_caller(&router, Method::GET, "/v1/kv/app/x", None, Body::empty())
        .await
        .error(StatusCode::UNAUTHORIZED, "unauthorized");
    assert_eq!(fake.store().revision(), revision, "nothing was written");
    let r = as_caller(
        &router,
        Method::GET,
        "/v1/kv/app/x",
        Some(TOKEN),
        Body::empty(),
    )
    .await;
    assert_eq!((r.status, &r.body[..]), (StatusCode::OK, &b"1"[..]));
    let r = as_caller(&router, Method::PUT, "/v1/kv/app/x", Some(TOKEN), "3").await;
    assert_eq!(r.status, StatusCode::OK, "the cluster token writes");
}

/// A watch is a read: one without a credential that starts after an `auth
/// enable` is chosen is refused, on a replica that has not applied it yet
/// too (its rules are read linearizably), even when it asks to start
/// after the enable's revision.
#[tokio::test]
async fn a_watch_without_a_credential_is_refused_once_auth_enable_is_applied() {
    let fake = Fake::new();
    let router = fake.router();
    enable_behind_the_http_side(&fake);
    let next = fake.store().revision() + 1;
    for uri in [
        "/v1/watch?prefix=app/".to_string(),
        format!("/v1/watch?prefix=app/&start_revision={next}"),
    ] {
        // Not `as_caller`: a watch let in would be a stream without end.
        let request = Request::builder()
            .uri(&uri)
            .body(Body::empty())
            .expect("valid request");
        let response = router.clone().oneshot(request).await.expect("infallible");
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED, "{uri}");
    }
    let request = Request::builder()
        .uri("/v1/watch?prefix=app/")
        .header(header::AUTHORIZATION, format!("Bearer {TOKEN}"))
        .body(Body::empty())
        .expect("valid request");
    let admin = router.clone().oneshot(request).await.expect("infallible");
    assert_eq!(
        admin.status(),
        StatusCode::OK,
        "the cluster token is the admin"
    );
}

/// A watch without a credential, let in while auth was off, that asked to
/// start past the revision at which auth is then enabled never sees the
/// enable's own event: it ends at the first event it would send after
/// the replica applied the enable, and that event is not sent.
#[tokio::test]
async fn a_watch_without_a_credential_ends_at_auth_enable_even_if_it_starts_after_it() {
    let fake = Fake::new();
    let router = fake.router();
    // The enable will be the next revision and the put the one after.
    let start = fake.store().revision() + 2;
    let request = Request::builder()
        .uri(format!("/v1/watch?prefix=app/&start_revision={start}"))
        .body(Body::empty())
        .expect("valid request");
    let response = router.clone().oneshot(request).await.expect("infallible");
    assert_eq!(response.status(), StatusCode::OK, "auth is off");
    let mut body = response.into_body().into_data_stream();
    enable_behind_the_http_side(&fake);
    assert_eq!(fake.store().revision() + 1, start);
    let put = as_caller(&router, Method::PUT, "/v1/kv/app/secret", Some(TOKEN), "s").await;
    assert_eq!(put.status, StatusCode::OK);
    let mut text = String::new();
    while let Ok(Some(Ok(chunk))) = tokio::time::timeout(Duration::from_secs(5), body.next()).await
    {
        text.push_str(&String::from_utf8_lossy(&chunk));
    }
    assert!(
        text.contains("event: error") && text.contains("unauthorized"),
        "{text}"
    );
    assert!(!text.contains("app/secret"), "{text}");
}

#[tokio::test]
async fn a_keep_alive_without_a_credential_is_refused_once_auth_enable_is_applied() {
    let fake = Fake::new();
    let router = fake.router();
    let id = grant(&router, json!({"ttl_secs": 10})).await.json()["id"]
        .as_u64()
        .expect("an id");
    let one = format!("/v1/leases/{id}/keepalive");
    let many = json!({ "ids": [id] }).to_string();
    let r = as_caller(&router, Method::POST, &one, None, Body::empty()).await;
    assert_eq!(r.status, StatusCode::OK, "auth is off");
    // A keep-alive is never applied through the log, so only the
    // handler's own check can refuse it.
    enable_behind_the_http_side(&fake);
    as_caller(&router, Method::POST, &one, None, Body::empty())
        .await
        .error(StatusCode::UNAUTHORIZED, "unauthorized");
    as_caller(
        &router,
        Method::POST,
        "/v1/leases/keepalive",
        None,
        many.clone(),
    )
    .await
    .error(StatusCode::UNAUTHORIZED, "unauthorized");
    as_caller(
        &router,
        Method::POST,
        "/v1/leases/keepalive/stream",
        None,
        format!("{many}\n"),
    )
    .await
    .error(StatusCode::UNAUTHORIZED, "unauthorized");
    let r = as_caller(&router, Method::POST, &one, Some(TOKEN), Body::empty()).await;
    assert_eq!(r.status, StatusCode::OK, "the cluster token renews");
}

#[tokio::test]
async fn a_token_with_read_on_app_reads_app_and_nothing_else() {
    let router = Fake::with_auth().router();
    let ci = reader_of_app(&router).await;
    let me = Some(ci.as_str());
    let r = as_caller(&router, Method::GET, "/v1/kv/app/x", me, Body::empty()).await;
    assert_eq!((r.status, &r.body[..]), (StatusCode::OK, &b"v"[..]));
    as_caller(&router, Method::PUT, "/v1/kv/app/x", me, "w")
        .await
        .error(StatusCode::FORBIDDEN, "permission_denied");
    as_caller(&router, Method::DELETE, "/v1/kv/app/x", me, Body::empty())
        .await
        .error(StatusCode::FORBIDDEN, "permission_denied");
    as_caller(&router, Method::GET, "/v1/kv/other/x", me, Body::empty())
        .await
        .error(StatusCode::FORBIDDEN, "permission_denied");
    let listed = as_caller(
        &router,
        Method::GET,
        "/v1/kv?prefix=app/",
        me,
        Body::empty(),
    )
    .await;
    assert_eq!(listed.json()["kvs"].as_array().map(Vec::len), Some(1));
    as_caller(&router, Method::GET, "/v1/kv", me, Body::empty())
        .await
        .error(StatusCode::FORBIDDEN, "permission_denied");
    // A transaction is checked key by key: reading app/ is fine, writing
    // it or reading other/ is not.
    let get = |key: &str| json!({"get": {"key": key}});
    let body = json!({"compare": [], "success": [get("app/x")], "failure": []});
    let r = as_caller(&router, Method::POST, "/v1/txn", me, body.to_string()).await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    let body = json!({"compare": [], "success": [get("app/x")], "failure": [get("other/x")]});
    as_caller(&router, Method::POST, "/v1/txn", me, body.to_string())
        .await
        .error(StatusCode::FORBIDDEN, "permission_denied");
    as_caller(
        &router,
        Method::GET,
        "/v1/watch?prefix=other/",
        me,
        Body::empty(),
    )
    .await
    .error(StatusCode::FORBIDDEN, "permission_denied");
    for (method, path) in [
        (Method::GET, "/v1/auth/tokens"),
        (Method::GET, "/v1/auth/roles"),
        (Method::DELETE, "/v1/auth/roles/app-reader"),
        (Method::POST, "/v1/cluster/members"),
    ] {
        as_caller(
            &router,
            method,
            path,
            me,
            r#"{"name":"x","peer_url":"http://a:1"}"#,
        )
        .await
        .error(StatusCode::FORBIDDEN, "permission_denied");
    }
    let who = as_caller(&router, Method::GET, "/v1/auth/whoami", me, Body::empty()).await;
    assert_eq!(who.json()["kind"], "token");
    assert_eq!(who.json()["roles"], json!(["app-reader"]));
}

/// A request over a connection whose client certificate names `cert` (as
/// `crate::net::serve` marks it), with a bearer `token` if given.
async fn with_cert(
    router: &Router,
    method: Method,
    uri: &str,
    cert: &str,
    token: Option<&str>,
) -> Reply {
    let mut request = Request::builder().method(method).uri(uri);
    if let Some(token) = token {
        request = request.header(header::AUTHORIZATION, format!("Bearer {token}"));
    }
    let mut request = request.body(Body::from("v")).expect("valid request");
    request
        .extensions_mut()
        .insert(crate::auth::gate::ClientCert(Arc::from(cert)));
    send(router, request).await
}

#[tokio::test]
async fn with_cert_identity_a_client_certificate_acts_as_the_token_it_names() {
    let router = Fake::with_cert_identity().router();
    // A token named "ci" that may read app/; certificates name it by id.
    let reader = reader_of_app(&router).await;
    let id = reader.split('_').nth(1).expect("an id").to_owned();

    let r = with_cert(&router, Method::GET, "/v1/kv/app/x", &id, None).await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    with_cert(&router, Method::PUT, "/v1/kv/app/x", &id, None)
        .await
        .error(StatusCode::FORBIDDEN, "permission_denied");
    with_cert(&router, Method::GET, "/v1/kv/other/x", &id, None)
        .await
        .error(StatusCode::FORBIDDEN, "permission_denied");
    let who = with_cert(&router, Method::GET, "/v1/auth/whoami", &id, None).await;
    assert_eq!(who.json()["kind"], "token", "{:?}", who.body);
    assert_eq!(who.json()["id"], id.as_str());

    // A bearer token, when sent, is who the caller is.
    let r = with_cert(&router, Method::GET, "/v1/kv/other/x", &id, Some(TOKEN)).await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    with_cert(
        &router,
        Method::GET,
        "/v1/kv/app/x",
        &id,
        Some("phxkv_0_wrong"),
    )
    .await
    .error(StatusCode::UNAUTHORIZED, "unauthorized");

    // The token's name is not its id, nor is anything but 16 hex digits.
    for name in ["ci", "phxkv node"] {
        let refused = with_cert(&router, Method::GET, "/v1/kv/app/x", name, None)
            .await
            .error(StatusCode::UNAUTHORIZED, "unauthorized");
        let says = refused["message"].as_str().expect("a message");
        assert!(says.contains("is not an API token id"), "{says}");
    }
    with_cert(
        &router,
        Method::GET,
        "/v1/kv/app/x",
        "0123456789abcdef",
        None,
    )
    .await
    .error(StatusCode::UNAUTHORIZED, "unauthorized");

    // Revoking the token shuts its certificate out, and a new token of the
    // same name has another id.
    let path = format!("/v1/auth/tokens/{id}");
    let r = as_caller(&router, Method::DELETE, &path, Some(TOKEN), Body::empty()).await;
    assert!(r.status.is_success(), "{:?}", r.body);
    let again = json!({"name": "ci", "roles": ["app-reader"]}).to_string();
    let r = as_caller(&router, Method::POST, "/v1/auth/tokens", Some(TOKEN), again).await;
    assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.body);
    assert_ne!(r.json()["id"], id.as_str());
    let gone = with_cert(&router, Method::GET, "/v1/kv/app/x", &id, None)
        .await
        .error(StatusCode::UNAUTHORIZED, "unauthorized");
    let says = gone["message"].as_str().expect("a message");
    assert!(says.contains("does not hold"), "{says}");
}

#[tokio::test]
async fn without_cert_identity_a_client_certificate_names_nobody() {
    let router = Fake::with_auth().router();
    let reader = reader_of_app(&router).await;
    let id = reader.split('_').nth(1).expect("an id").to_owned();
    with_cert(&router, Method::GET, "/v1/kv/app/x", &id, None)
        .await
        .error(StatusCode::UNAUTHORIZED, "unauthorized");
}

#[tokio::test]
async fn auth_records_are_out_of_reach_of_the_kv_api() {
    let router = Fake::with_auth().router();
    reader_of_app(&router).await;
    let admin = Some(TOKEN);
    let all = as_caller(&router, Method::GET, "/v1/kv", admin, Body::empty()).await;
    let keys: Vec<&str> = all.json()["kvs"]
        .as_array()
        .expect("kvs")
        .iter()
        .filter_map(|kv| kv["key_utf8"].as_str())
        .map(|k| if k == "app/x" { "app/x" } else { "other" })
        .collect();
    assert_eq!(keys, ["app/x", "other"]);
    for (method, path) in [
        (Method::GET, "/v1/kv/%00phxkv/auth/role/app-reader"),
        (Method::PUT, "/v1/kv/%00phxkv/auth/role/app-reader"),
        (Method::DELETE, "/v1/kv/%00phxkv/auth/role/app-reader"),
    ] {
        as_caller(&router, method, path, admin, "{}")
            .await
            .error(StatusCode::BAD_REQUEST, "invalid_argument");
    }
    let body = json!({"compare": [], "success": [{"delete": {"key_b64": "AHBoeGt2L2F1dGgvcm9sZS9hcHAtcmVhZGVy"}}], "failure": []});
    as_caller(&router, Method::POST, "/v1/txn", admin, body.to_string())
        .await
        .error(StatusCode::BAD_REQUEST, "invalid_argument");
}

#[tokio::test]
async fn revoking_a_token_or_its_grant_takes_effect_at_once() {
    let router = Fake::with_auth().router();
    let ci = reader_of_app(&router).await;
    let id = ci.split('_').nth(1).expect("an id").to_owned();
    let me = Some(ci.as_str());
    let admin = Some(TOKEN);
    let roles = format!("/v1/auth/tokens/{id}/roles");
    let r = as_caller(&router, Method::PUT, &roles, admin, r#"{"roles":[]}"#).await;
    assert_eq!(r.status, StatusCode::OK);
    as_caller(&router, Method::GET, "/v1/kv/app/x", me, Body::empty())
        .await
        .error(StatusCode::FORBIDDEN, "permission_denied");
    let r = as_caller(
        &router,
        Method::DELETE,
        &format!("/v1/auth/tokens/{id}"),
        admin,
        Body::empty(),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK);
    as_caller(&router, Method::GET, "/v1/kv/app/x", me, Body::empty())
        .await
        .error(StatusCode::UNAUTHORIZED, "unauthorized");
    as_caller(
        &router,
        Method::DELETE,
        &format!("/v1/auth/tokens/{id}"),
        admin,
        Body::empty(),
    )
    .await
    .error(StatusCode::NOT_FOUND, "not_found");
}

#[tokio::test]
async fn a_watch_ends_at_the_change_that_takes_its_read_away() {
    let fake = Fake::with_auth();
    let router = fake.router();
    let ci = reader_of_app(&router).await;
    let id = ci.split('_').nth(1).expect("an id").to_owned();
    let request = Request::builder()
        .uri("/v1/watch?prefix=app/")
        .header(header::AUTHORIZATION, format!("Bearer {ci}"))
        .body(Body::empty())
        .expect("valid request");
    let response = router.clone().oneshot(request).await.expect("infallible");
    assert_eq!(response.status(), StatusCode::OK);
    let mut body = response.into_body().into_data_stream();
    let admin = Some(TOKEN);
    as_caller(&router, Method::PUT, "/v1/kv/app/seen", admin, "1").await;
    let mut text = String::new();
    while !text.contains("app/seen") {
        let chunk = tokio::time::timeout(Duration::from_secs(5), body.next())
            .await
            .expect("the first event")
            .expect("stream open")
            .expect("chunk");
        text.push_str(&String::from_utf8_lossy(&chunk));
    }
    let roles = format!("/v1/auth/tokens/{id}/roles");
    as_caller(&router, Method::PUT, &roles, admin, r#"{"roles":[]}"#).await;
    as_caller(&router, Method::PUT, "/v1/kv/app/unseen", admin, "2").await;
    while let Ok(Some(Ok(chunk))) = tokio::time::timeout(Duration::from_secs(5), body.next()).await
    {
        text.push_str(&String::from_utf8_lossy(&chunk));
    }
    assert!(text.contains("app/seen"), "{text}");
    assert!(
        text.contains("event: error") && text.contains("permission_denied"),
        "{text}"
    );
    assert!(!text.contains("app/unseen"), "{text}");
    assert!(
        !text.contains("phxkv/auth"),
        "auth markers are never sent: {text}"
    );
}

#[tokio::test]
async fn wrong_tokens_from_one_address_are_limited_after_the_documented_count() {
    use crate::auth::gate::{ClientAddr, MAX_FAILURES};
    let router = Fake::with_auth().router();
    let ci = reader_of_app(&router).await;
    let from = |ip: [u8; 4], token: &str| {
        let mut request = Request::builder()
            .uri("/v1/kv/a")
            .header(header::AUTHORIZATION, format!("Bearer {token}"))
            .body(Body::empty())
            .expect("valid request");
        let addr = ClientAddr(std::net::SocketAddr::from((ip, 1234)));
        request
            .extensions_mut()
            .insert(axum::extract::ConnectInfo(addr));
        request
    };
    for _ in 0..MAX_FAILURES {
        send(&router, from([10, 0, 0, 1], "guess"))
            .await
            .error(StatusCode::UNAUTHORIZED, "unauthorized");
    }
    let limited = send(&router, from([10, 0, 0, 1], TOKEN)).await;
    limited.error(StatusCode::TOO_MANY_REQUESTS, "too_many_attempts");
    assert!(
        limited
            .header("retry-after")
            .parse::<u64>()
            .is_ok_and(|s| s >= 1)
    );
    // Another address is not affected.
    let other = send(&router, from([10, 0, 0, 2], TOKEN)).await;
    assert_eq!(other.status, StatusCode::NOT_FOUND);
    // A valid API token cannot have been guessed: it passes even from the
    // blocked address (clients behind one proxy share it).
    let mut valid = from([10, 0, 0, 1], &ci);
    *valid.uri_mut() = "/v1/kv/app/x".parse().expect("uri");
    let valid = send(&router, valid).await;
    assert_eq!(valid.status, StatusCode::OK);
}

/// A request from `ip` with `token` as its bearer token.
fn from_address(method: Method, uri: &str, ip: [u8; 4], token: &str) -> Request<Body> {
    let body = if uri.starts_with("/v1/kv/") {
        "v"
    } else {
        r#"{"name":"n2","peer_url":"x"}"#
    };
    let mut request = Request::builder()
        .method(method)
        .uri(uri)
        .header(header::AUTHORIZATION, format!("Bearer {token}"))
        .body(Body::from(body))
        .expect("valid request");
    let addr = crate::auth::gate::ClientAddr(std::net::SocketAddr::from((ip, 1234)));
    request
        .extensions_mut()
        .insert(axum::extract::ConnectInfo(addr));
    request
}

/// With auth off the cluster token still guards the admin routes, and
/// guessing it is limited as with auth on.
#[tokio::test]
async fn cluster_token_guesses_are_limited_with_auth_off_too() {
    use crate::auth::gate::MAX_FAILURES;
    let router = Fake::with_gate().router();
    let add = "/v1/cluster/members";
    for _ in 0..MAX_FAILURES {
        send(
            &router,
            from_address(Method::POST, add, [10, 0, 0, 1], "guess-guess-guess"),
        )
        .await
        .error(StatusCode::UNAUTHORIZED, "unauthorized");
    }
    // Now the right token is refused from that address too, so the answers
    // say nothing about the guesses until the window ends.
    let limited = send(
        &router,
        from_address(Method::POST, add, [10, 0, 0, 1], TOKEN),
    )
    .await;
    limited.error(StatusCode::TOO_MANY_REQUESTS, "too_many_attempts");
    assert!(
        limited
            .header("retry-after")
            .parse::<u64>()
            .is_ok_and(|s| s >= 1)
    );
    // Keys need no credential with auth off: the address may still use them.
    let put = send(
        &router,
        from_address(Method::PUT, "/v1/kv/a", [10, 0, 0, 1], TOKEN),
    )
    .await;
    assert_eq!(put.status, StatusCode::OK, "{:?}", put.body);
    // Another address is not affected.
    let other = send(
        &router,
        from_address(Method::POST, add, [10, 0, 0, 2], TOKEN),
    )
    .await;
    assert_eq!(other.status, StatusCode::OK);
}

async fn grant(router: &Router, body: Value) -> Reply {
    call(router, Method::POST, "/v1/leases", body.to_string()).await
}

#[tokio::test]
async fn a_revoked_lease_takes_its_keys_with_it_at_one_revision() {
    let router = Fake::new().router();
    let granted = grant(&router, json!({"ttl_secs": 30, "id": 42})).await;
    assert_eq!(
        granted.json(),
        json!({"id": 42, "ttl_secs": 30, "revision": 1})
    );
    grant(&router, json!({"ttl_secs": 30, "id": 42}))
        .await
        .error(StatusCode::CONFLICT, "lease_exists");
    call(&router, Method::PUT, "/v1/kv/a?lease=42", "1").await;
    let body = json!({"success": [{"put": {"key": "b", "value": "2"}}], "lease": 42});
    assert_eq!(txn(&router, body).await.status, StatusCode::OK);
    call(&router, Method::PUT, "/v1/kv/c", "3").await;
    let status = call(
        &router,
        Method::GET,
        "/v1/leases/42?keys=true",
        Body::empty(),
    )
    .await;
    let status = status.json();
    assert_eq!(status["ttl_secs"], 30);
    assert!(
        status["remaining_ms"]
            .as_u64()
            .is_some_and(|ms| ms > 29_000)
    );
    assert_eq!(status["keys"], json!(["YQ==", "Yg=="]));
    let list = call(&router, Method::GET, "/v1/leases", Body::empty()).await;
    assert_eq!(
        list.json(),
        json!({"leases": [{"id": 42, "ttl_secs": 30, "granted_revision": 1}], "more": false})
    );
    let revoked = call(&router, Method::DELETE, "/v1/leases/42", Body::empty()).await;
    assert_eq!(revoked.json(), json!({"revision": 5, "deleted": 2}));
    for key in ["a", "b"] {
        call(
            &router,
            Method::GET,
            &format!("/v1/kv/{key}"),
            Body::empty(),
        )
        .await
        .error(StatusCode::NOT_FOUND, "key_not_found");
    }
    assert_eq!(
        call(&router, Method::GET, "/v1/kv/c", Body::empty())
            .await
            .status,
        StatusCode::OK
    );
    // A gone lease is a 404 everywhere, and a put to it changes nothing.
    call(&router, Method::PUT, "/v1/kv/a?lease=42", "1")
        .await
        .error(StatusCode::NOT_FOUND, "lease_not_found");
    call(
        &router,
        Method::POST,
        "/v1/leases/42/keepalive",
        Body::empty(),
    )
    .await
    .error(StatusCode::NOT_FOUND, "lease_not_found");
    call(&router, Method::DELETE, "/v1/leases/42", Body::empty())
        .await
        .error(StatusCode::NOT_FOUND, "lease_not_found");
}

#[tokio::test]
async fn keep_alives_renew_one_lease_or_many_and_name_the_missing() {
    let router = Fake::new().router();
    let id = grant(&router, json!({"ttl_secs": 10})).await.json()["id"]
        .as_u64()
        .expect("a random id");
    assert!((1..=crate::kv::lease::MAX_LEASE_ID).contains(&id));
    let one = call(
        &router,
        Method::POST,
        &format!("/v1/leases/{id}/keepalive"),
        Body::empty(),
    )
    .await;
    assert_eq!(one.json()["ttl_secs"], 10);
    let many = call(
        &router,
        Method::POST,
        "/v1/leases/keepalive",
        json!({"ids": [id, 7]}).to_string(),
    )
    .await
    .json();
    assert_eq!(many["leases"][0]["id"], id);
    assert_eq!(many["missing"], json!([7]));
}

/// The JSON lines of an NDJSON reply.
fn ndjson_lines(reply: &Reply) -> Vec<Value> {
    reply
        .body
        .split(|b| *b == b'\n')
        .filter(|l| !l.is_empty())
        .map(|l| serde_json::from_slice(l).expect("a JSON line"))
        .collect()
}

#[tokio::test]
async fn a_keep_alive_stream_answers_each_line_in_order_and_ends_on_a_bad_one() {
    let router = Fake::new().router();
    let id = grant(&router, json!({"ttl_secs": 10})).await.json()["id"]
        .as_u64()
        .expect("an id");
    let uri = "/v1/leases/keepalive/stream";
    // Blank lines are skipped; a last line without a newline still counts.
    let body = format!("{{\"ids\": [{id}]}}\n\n{{\"ids\": [{id}, 7]}}\r\n{{\"ids\": []}}");
    let reply = call(&router, Method::POST, uri, body).await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.header("content-type"), "application/x-ndjson");
    let lines = ndjson_lines(&reply);
    assert_eq!(lines.len(), 3, "{lines:?}");
    assert_eq!(lines[0]["leases"][0]["id"], id);
    assert_eq!(lines[0]["missing"], json!([]));
    assert_eq!(lines[1]["missing"], json!([7]));
    assert_eq!(lines[2], json!({"leases": [], "missing": []}));
    // A bad line after the first is answered with an error line, and
    // nothing after it is read.
    let body = format!("{{\"ids\": [{id}]}}\nnot json\n{{\"ids\": [{id}]}}\n");
    let reply = call(&router, Method::POST, uri, body).await;
    let lines = ndjson_lines(&reply);
    assert_eq!(lines.len(), 2, "{lines:?}");
    assert_eq!(lines[1]["error"]["code"], "invalid_argument");
    // A bad or missing first line is a plain 400; a line too long a 413.
    for body in ["nope\n".to_string(), String::new(), "\n\n".to_string()] {
        call(&router, Method::POST, uri, body)
            .await
            .error(StatusCode::BAD_REQUEST, "invalid_argument");
    }
    let ids: Vec<u64> = (1..=1001).collect();
    call(
        &router,
        Method::POST,
        uri,
        json!({ "ids": ids }).to_string(),
    )
    .await
    .error(StatusCode::BAD_REQUEST, "invalid_argument");
    call(&router, Method::POST, uri, " ".repeat(70_000))
        .await
        .error(StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large");
}

#[tokio::test]
async fn bad_lease_requests_are_400_with_the_bound() {
    let router = Fake::new().router();
    for (body, needle) in [
        (json!({"ttl_secs": 1}), "between 2 and 604800"),
        (json!({"ttl_secs": 700000}), "between 2 and 604800"),
        (json!({"ttl_secs": 10, "id": 0}), "between 1 and"),
        (
            json!({"ttl_secs": 10, "id": 9007199254740992u64}),
            "between 1 and",
        ),
        (json!({"ttl": 10}), "ttl"),
    ] {
        let reply = grant(&router, body.clone()).await;
        reply.error(StatusCode::BAD_REQUEST, "invalid_argument");
        let message = reply.json()["error"]["message"].to_string();
        assert!(message.contains(needle), "{body}: {message}");
    }
    for uri in ["/v1/leases/x/keepalive", "/v1/leases/0", "/v1/leases/-1"] {
        call(&router, Method::POST, uri, Body::empty()).await;
        call(
            &router,
            Method::GET,
            uri.trim_end_matches("/keepalive"),
            Body::empty(),
        )
        .await
        .error(StatusCode::BAD_REQUEST, "invalid_argument");
    }
    call(&router, Method::PUT, "/v1/kv/a?lease=0", "1")
        .await
        .error(StatusCode::BAD_REQUEST, "invalid_argument");
    let ids: Vec<u64> = (1..=1001).collect();
    call(
        &router,
        Method::POST,
        "/v1/leases/keepalive",
        json!({"ids": ids}).to_string(),
    )
    .await
    .error(StatusCode::BAD_REQUEST, "invalid_argument");
    call(&router, Method::GET, "/v1/leases?limit=0", Body::empty())
        .await
        .error(StatusCode::BAD_REQUEST, "invalid_argument");
}

async fn lock(router: &Router, name: &str, lease: u64, wait_ms: u64) -> Reply {
    call(
        router,
        Method::POST,
        &format!("/v1/lock/{name}"),
        json!({"lease": lease, "wait_ms": wait_ms}).to_string(),
    )
    .await
}

/// A fake with the default key limits (lock keys are the name and 16 hex
/// digits: longer than the fake's keys) and leases 1, 2 and 3.
async fn with_three_leases() -> Router {
    let mut fake = Fake::new();
    Arc::get_mut(&mut fake.inner).expect("fresh").limits = Limits::default();
    let router = fake.router();
    for id in [1, 2, 3] {
        grant(&router, json!({"ttl_secs": 30, "id": id})).await;
    }
    router
}

/// A waiter that asks again keeps its place in line with `keep_place`;
/// without it, each ask rejoins at the back.
#[tokio::test]
async fn a_waiter_that_keeps_its_place_is_served_before_later_ones() {
    let router = with_three_leases().await;
    let ask = |lease: u64, keep_place: bool| {
        let router = router.clone();
        async move {
            call(
                &router,
                Method::POST,
                "/v1/lock/jobs",
                json!({"lease": lease, "wait_ms": 20, "keep_place": keep_place}).to_string(),
            )
            .await
        }
    };
    let queued = || {
        let router = router.clone();
        async move {
            let kvs = call(&router, Method::GET, "/v1/kv?prefix=jobs/", Body::empty())
                .await
                .json();
            kvs["kvs"]
                .as_array()
                .map(|kvs| {
                    kvs.iter()
                        .map(|kv| kv["key_utf8"].as_str().unwrap_or("").to_owned())
                        .collect::<Vec<_>>()
                })
                .unwrap_or_default()
        }
    };
    assert_eq!(ask(1, false).await.status, StatusCode::OK);
    // Lease 2 keeps its place; lease 3 does not, and is gone from the line.
    let e = ask(2, true).await.error(StatusCode::CONFLICT, "lock_held");
    assert!(
        e["message"]
            .as_str()
            .is_some_and(|m| m.contains("still queued")),
        "{e}"
    );
    ask(3, false).await.error(StatusCode::CONFLICT, "lock_held");
    assert_eq!(
        queued().await,
        ["jobs/0000000000000001", "jobs/0000000000000002"]
    );
    // Lease 3 joins for good behind 2, and 2 asks again.
    ask(3, true).await.error(StatusCode::CONFLICT, "lock_held");
    ask(2, true).await.error(StatusCode::CONFLICT, "lock_held");
    // The lock passes to 2, which came first, not to 3.
    let released = call(
        &router,
        Method::DELETE,
        "/v1/lock/jobs?lease=1",
        Body::empty(),
    )
    .await;
    assert_eq!(released.json()["released"], true);
    ask(3, true).await.error(StatusCode::CONFLICT, "lock_held");
    let held = ask(2, true).await;
    assert_eq!(held.status, StatusCode::OK);
    assert_eq!(held.json()["lease"], 2);
    // A request without `keep_place` never removes a place it did not make.
    ask(3, false).await.error(StatusCode::CONFLICT, "lock_held");
    assert_eq!(
        queued().await,
        ["jobs/0000000000000002", "jobs/0000000000000003"]
    );
}

#[tokio::test]
async fn a_lock_passes_to_the_next_waiter_in_order_with_a_larger_fencing_token() {
    let router = with_three_leases().await;
    let first = lock(&router, "jobs/nightly", 1, 0).await.json();
    assert_eq!(first["key_utf8"], "jobs/nightly/0000000000000001");
    let token = first["fencing_token"].as_u64().expect("token");
    // Asking again while holding it answers at once, with the lock.
    assert_eq!(
        lock(&router, "jobs/nightly", 1, 0).await.status,
        StatusCode::OK
    );
    // Another lease that only tries is refused, and leaves no key behind.
    lock(&router, "jobs/nightly", 2, 0)
        .await
        .error(StatusCode::CONFLICT, "lock_held");
    let keys = call(
        &router,
        Method::GET,
        "/v1/kv?prefix=jobs/nightly/",
        Body::empty(),
    )
    .await;
    assert_eq!(keys.json()["kvs"].as_array().map(Vec::len), Some(1));
    // Two waiters queue; a release wakes the first, a revoke the second.
    let second = tokio::spawn({
        let router = router.clone();
        async move { lock(&router, "jobs/nightly", 2, 10_000).await }
    });
    tokio::time::sleep(Duration::from_millis(50)).await;
    let third = tokio::spawn({
        let router = router.clone();
        async move { lock(&router, "jobs/nightly", 3, 10_000).await }
    });
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(!second.is_finished() && !third.is_finished());
    let released = call(
        &router,
        Method::DELETE,
        "/v1/lock/jobs/nightly?lease=1",
        Body::empty(),
    )
    .await;
    assert_eq!(released.json()["released"], true);
    let second = second.await.expect("joins").json();
    assert_eq!(second["lease"], 2);
    let second_token = second["fencing_token"].as_u64().expect("token");
    assert!(second_token > token);
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(!third.is_finished(), "the third waits for the second");
    call(&router, Method::DELETE, "/v1/leases/2", Body::empty()).await;
    let third = third.await.expect("joins").json();
    assert!(third["fencing_token"].as_u64().expect("token") > second_token);
    // Bad requests.
    lock(&router, "jobs/nightly", 99, 0)
        .await
        .error(StatusCode::NOT_FOUND, "lease_not_found");
    call(
        &router,
        Method::POST,
        "/v1/lock/",
        json!({"lease": 3}).to_string(),
    )
    .await
    .error(StatusCode::BAD_REQUEST, "invalid_argument");
    call(
        &router,
        Method::DELETE,
        "/v1/lock/jobs/nightly",
        Body::empty(),
    )
    .await
    .error(StatusCode::BAD_REQUEST, "invalid_argument");
    lock(&router, "jobs/nightly", 3, 700_000)
        .await
        .error(StatusCode::BAD_REQUEST, "invalid_argument");
    // A query parameter these routes do not take (the release's `lease`,
    // say) is refused, not dropped.
    call(
        &router,
        Method::POST,
        "/v1/lock/jobs/nightly?lease=3",
        json!({"lease": 3, "wait_ms": 0}).to_string(),
    )
    .await
    .error(StatusCode::BAD_REQUEST, "invalid_argument");
    for (method, body) in [
        (Method::POST, json!({"lease": 3, "value": "v"}).to_string()),
        (Method::PUT, json!({"lease": 3, "value": "v"}).to_string()),
        (Method::GET, String::new()),
    ] {
        call(
            &router,
            method,
            "/v1/election/sched?consistency=local",
            body,
        )
        .await
        .error(StatusCode::BAD_REQUEST, "invalid_argument");
    }
}

#[tokio::test]
async fn an_election_has_one_leader_who_proclaims_and_passes_it_on_by_resigning() {
    let mut fake = Fake::new();
    Arc::get_mut(&mut fake.inner).expect("fresh").limits = Limits::default();
    let router = fake.router();
    for id in [1, 2] {
        grant(&router, json!({"ttl_secs": 30, "id": id})).await;
    }
    call(&router, Method::GET, "/v1/election/sched", Body::empty())
        .await
        .error(StatusCode::NOT_FOUND, "key_not_found");
    let campaign = |lease: u64, value: &str, wait_ms: u64| {
        let router = router.clone();
        let body = json!({"lease": lease, "value": value, "wait_ms": wait_ms}).to_string();
        async move { call(&router, Method::POST, "/v1/election/sched", body).await }
    };
    let first = campaign(1, "a:1", 0).await.json();
    assert_eq!(
        (first["value_utf8"].clone(), first["lease"].clone()),
        (json!("a:1"), json!(1))
    );
    let second = tokio::spawn(campaign(2, "b:1", 10_000));
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(!second.is_finished(), "one leader at a time");
    // Only the leader proclaims.
    let proclaim = |lease: u64, value: &str| {
        let router = router.clone();
        let body = json!({"lease": lease, "value": value}).to_string();
        async move { call(&router, Method::PUT, "/v1/election/sched", body).await }
    };
    proclaim(2, "b:2")
        .await
        .error(StatusCode::CONFLICT, "not_leader");
    assert_eq!(proclaim(1, "a:2").await.status, StatusCode::OK);
    let leader = call(&router, Method::GET, "/v1/election/sched", Body::empty())
        .await
        .json();
    assert_eq!(
        (leader["value_utf8"].clone(), leader["lease"].clone()),
        (json!("a:2"), json!(1))
    );
    assert_eq!(leader["term_revision"], first["term_revision"]);
    // Resigning passes it on, to a later term.
    let resigned = call(
        &router,
        Method::DELETE,
        "/v1/election/sched?lease=1",
        Body::empty(),
    )
    .await;
    assert_eq!(resigned.json()["released"], true);
    let second = second.await.expect("joins").json();
    assert_eq!(second["value_utf8"], "b:1");
    assert!(second["term_revision"].as_u64() > first["term_revision"].as_u64());
    call(
        &router,
        Method::POST,
        "/v1/election/sched",
        json!({"lease": 2, "value": "x", "value_b64": "eA=="}).to_string(),
    )
    .await
    .error(StatusCode::BAD_REQUEST, "invalid_argument");
}

#[tokio::test]
async fn a_retried_grant_with_an_idempotency_key_gets_the_same_lease() {
    let router = Fake::new().router();
    let request = || {
        Request::builder()
            .method(Method::POST)
            .uri("/v1/leases")
            .header("idempotency-key", "grant-1")
            .body(Body::from(json!({"ttl_secs": 10}).to_string()))
            .expect("valid request")
    };
    let first = send(&router, request()).await.json();
    let retry = send(&router, request()).await.json();
    assert_eq!(first, retry);
    let list = call(&router, Method::GET, "/v1/leases", Body::empty())
        .await
        .json();
    assert_eq!(list["leases"].as_array().map(Vec::len), Some(1));
    // Another key is another lease, even with the same TTL.
    let other = Request::builder()
        .method(Method::POST)
        .uri("/v1/leases")
        .header("idempotency-key", "grant-2")
        .body(Body::from(json!({"ttl_secs": 10}).to_string()))
        .expect("valid request");
    let other = send(&router, other).await.json();
    assert_ne!(other["id"], first["id"], "{other}");
}

#[tokio::test]
async fn a_prefix_delete_removes_the_keys_under_it_in_rounds_of_limit() {
    let fake = Fake::new();
    let router = fake.router();
    for key in ["app/a", "app/b", "app/c", "apple"] {
        assert_eq!(
            call(&router, Method::PUT, &format!("/v1/kv/{key}"), "v")
                .await
                .status,
            StatusCode::OK
        );
    }
    let first = call(
        &router,
        Method::DELETE,
        "/v1/kv?prefix=app/&limit=2",
        Body::empty(),
    )
    .await;
    assert_eq!(first.status, StatusCode::OK, "{:?}", first.body);
    assert_eq!(
        first.json(),
        json!({"revision": 5, "deleted": 2, "more": true})
    );
    let rest = call(
        &router,
        Method::DELETE,
        "/v1/kv?prefix=app%2F",
        Body::empty(),
    )
    .await;
    assert_eq!(
        rest.json(),
        json!({"revision": 6, "deleted": 1, "more": false})
    );
    let listed = call(&router, Method::GET, "/v1/kv", Body::empty()).await;
    assert_eq!(listed.json()["kvs"][0]["key_utf8"], "apple");
    assert_eq!(listed.json()["kvs"].as_array().map(Vec::len), Some(1));
    // prefix= is every key; no prefix at all is a mistake, not "all".
    call(&router, Method::DELETE, "/v1/kv", Body::empty())
        .await
        .error(StatusCode::BAD_REQUEST, "invalid_argument");
    let all = call(&router, Method::DELETE, "/v1/kv?prefix=", Body::empty()).await;
    assert_eq!(all.json()["deleted"], 1);
    for bad in [
        "/v1/kv?prefix=a&limit=0",
        "/v1/kv?prefix=a&limit=1001",
        "/v1/kv?prefix=a&after=b",
        "/v1/kv?prefix=%00phxkv/auth/",
    ] {
        call(&router, Method::DELETE, bad, Body::empty())
            .await
            .error(StatusCode::BAD_REQUEST, "invalid_argument");
    }
    let long = format!("/v1/kv?prefix={}", "k".repeat(17));
    call(&router, Method::DELETE, &long, Body::empty())
        .await
        .error(StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large");
    // A member that cannot apply it: refused before anything is proposed.
    fake.inner.prefix_deletes.store(false, Ordering::Relaxed);
    let r = call(&router, Method::DELETE, "/v1/kv?prefix=a", Body::empty()).await;
    let e = r.error(StatusCode::SERVICE_UNAVAILABLE, "unavailable");
    assert!(
        e["message"]
            .as_str()
            .is_some_and(|m| m.contains("earlier version")),
        "{e}"
    );
    // Learnt a moment later (a replica that has just started hearing from
    // its peers): the request waits for it rather than answering 503.
    let later = fake.clone();
    tokio::spawn(async move {
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        later.inner.prefix_deletes.store(true, Ordering::Relaxed);
    });
    let r = call(&router, Method::DELETE, "/v1/kv?prefix=a", Body::empty()).await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
}

#[tokio::test]
async fn a_prefix_delete_needs_write_on_the_whole_prefix() {
    let router = Fake::with_auth().router();
    let admin = Some(TOKEN);
    let role = json!({"permissions": [{"prefix": "app/", "read": true, "write": true}]});
    let r = as_caller(
        &router,
        Method::PUT,
        "/v1/auth/roles/app",
        admin,
        role.to_string(),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    let req = json!({"name": "ci", "roles": ["app"]});
    let r = as_caller(
        &router,
        Method::POST,
        "/v1/auth/tokens",
        admin,
        req.to_string(),
    )
    .await;
    let token = r.json()["token"].as_str().expect("a token").to_owned();
    let me = Some(token.as_str());
    for key in ["app/x", "apple"] {
        as_caller(&router, Method::PUT, &format!("/v1/kv/{key}"), admin, "v").await;
    }
    for wider in ["/v1/kv?prefix=ap", "/v1/kv?prefix="] {
        as_caller(&router, Method::DELETE, wider, me, Body::empty())
            .await
            .error(StatusCode::FORBIDDEN, "permission_denied");
    }
    let r = as_caller(
        &router,
        Method::DELETE,
        "/v1/kv?prefix=app/",
        me,
        Body::empty(),
    )
    .await;
    assert_eq!(r.json()["deleted"], 1, "{:?}", r.body);
    let r = as_caller(&router, Method::GET, "/v1/kv/apple", admin, Body::empty()).await;
    assert_eq!(r.status, StatusCode::OK, "apple is not under app/");
}
