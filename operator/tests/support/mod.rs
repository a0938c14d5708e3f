//! A small in-memory Kubernetes API server for tests that do not script
//! each request: objects are kept by path, every write gets a new
//! `resourceVersion`, updates carrying a stale one get 409 Conflict,
//! creates of an existing name 409 AlreadyExists, server-side applies
//! create or merge, watches stay open without events. Every request is
//! logged, with whether an apply created its object (RBAC then checks
//! `create` as well as `patch`).

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use http::{Request, Response};
use kube::client::Body;
use serde_json::{Value, json};
use tower_test::mock::{self, SendResponse};

/// One request as the fake saw it.
#[derive(Clone, Debug)]
pub struct Seen {
    pub method: String,
    /// Path and query.
    pub path: String,
    pub body: Value,
    /// A server-side apply that created its object.
    pub created: bool,
}

impl Seen {
    /// The path without the query.
    pub fn route(&self) -> &str {
        self.path.split('?').next().unwrap_or("")
    }
}

#[derive(Default)]
pub struct State {
    pub objects: BTreeMap<String, Value>,
    pub version: u64,
    pub log: Vec<Seen>,
    /// Paths (prefixes) that answer 500 while listed.
    pub failing: Vec<String>,
    /// Watches held open (their responses are never sent).
    held: Vec<SendResponse<Response<Body>>>,
}

/// The fake API server; cheap to clone.
#[derive(Clone, Default)]
pub struct FakeApi(Arc<Mutex<State>>);

fn status(code: u16, reason: &str, message: &str) -> Value {
    json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
           "message": message, "reason": reason, "code": code})
}

/// Merges `patch` into `base` (JSON merge patch rules, null deletes).
fn merge(base: &mut Value, patch: &Value) {
    match (base, patch) {
        (Value::Object(b), Value::Object(p)) => {
            for (k, v) in p {
                if v.is_null() {
                    b.remove(k);
                } else {
                    merge(b.entry(k.clone()).or_insert(Value::Null), v);
                }
            }
        }
        (b, p) => *b = p.clone(),
    }
}

impl FakeApi {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn state(&self) -> MutexGuard<'_, State> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A client whose requests this fake answers, with `ns` as default
    /// namespace.
    pub fn client(&self, ns: &str) -> kube::Client {
        let (service, mut handle) = mock::pair::<Request<Body>, Response<Body>>();
        let fake = self.clone();
        tokio::spawn(async move {
            while let Some((request, send)) = handle.next_request().await {
                let method = request.method().to_string();
                let path = request
                    .uri()
                    .path_and_query()
                    .map(|p| p.to_string())
                    .unwrap_or_default();
                let apply = request
                    .headers()
                    .get("content-type")
                    .and_then(|v| v.to_str().ok())
                    .is_some_and(|v| v.starts_with("application/apply-patch"));
                let bytes = request
                    .into_body()
                    .collect_bytes()
                    .await
                    .unwrap_or_default();
                let body: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
                fake.answer(method, path, body, apply, send);
            }
        });
        kube::Client::new(service, ns)
    }

    /// Puts an object at `path` (the path of a GET of it).
    pub fn put(&self, path: &str, mut object: Value) {
        let mut s = self.state();
        s.version += 1;
        object["metadata"]["resourceVersion"] = json!(s.version.to_string());
        s.objects.insert(path.to_string(), object);
    }

    pub fn get(&self, path: &str) -> Option<Value> {
        self.state().objects.get(path).cloned()
    }

    pub fn log(&self) -> Vec<Seen> {
        self.state().log.clone()
    }

    /// Makes requests under `prefix` answer 500 (or stops it).
    pub fn fail(&self, prefix: &str, failing: bool) {
        let mut s = self.state();
        s.failing.retain(|p| p != prefix);
        if failing {
            s.failing.push(prefix.to_string());
        }
    }

    fn answer(
        &self,
        method: String,
        path: String,
        body: Value,
        apply: bool,
        send: SendResponse<Response<Body>>,
    ) {
        let mut s = self.state();
        let route = path.split('?').next().unwrap_or("").to_string();
        let query = path.split_once('?').map(|(_, q)| q).unwrap_or("");
        let mut created = false;
        let failing = s.failing.iter().any(|p| route.starts_with(p.as_str()));
        let watch = method == "GET" && query.split('&').any(|kv| kv == "watch=true");
        let (code, reply) = if failing {
            (
                500,
                status(500, "InternalError", "the fake is failing on purpose"),
            )
        } else if watch {
            s.log.push(Seen {
                method,
                path,
                body,
                created,
            });
            s.held.push(send);
            return;
        } else {
            match method.as_str() {
                "GET" => match s.objects.get(&route) {
                    Some(o) => (200, o.clone()),
                    None if is_collection(&route) => {
                        let prefix = format!("{route}/");
                        let items: Vec<Value> = s
                            .objects
                            .iter()
                            .filter(|(k, _)| {
                                k.starts_with(&prefix) && !k[prefix.len()..].contains('/')
                            })
                            .map(|(_, v)| v.clone())
                            .collect();
                        let rv = s.version.to_string();
                        (
                            200,
                            json!({"apiVersion": "v1", "kind": "List",
                                   "metadata": {"resourceVersion": rv}, "items": items}),
                        )
                    }
                    None => (404, status(404, "NotFound", &format!("{route} not found"))),
                },
                "POST" => {
                    let name = body["metadata"]["name"].as_str().unwrap_or("").to_string();
                    let at = format!("{route}/{name}");
                    if s.objects.contains_key(&at) {
                        (
                            409,
                            status(409, "AlreadyExists", &format!("{at} already exists")),
                        )
                    } else {
                        s.version += 1;
                        let mut o = body.clone();
                        o["metadata"]["resourceVersion"] = json!(s.version.to_string());
                        s.objects.insert(at, o.clone());
                        (201, o)
                    }
                }
                "PUT" => {
                    let stored = s.objects.get(&route).cloned();
                    let sent_rv = body["metadata"]["resourceVersion"].clone();
                    match stored {
                        None => (404, status(404, "NotFound", &format!("{route} not found"))),
                        Some(o)
                            if !sent_rv.is_null()
                                && o["metadata"]["resourceVersion"] != sent_rv =>
                        {
                            (
                                409,
                                status(
                                    409,
                                    "Conflict",
                                    "the object has been modified; please apply your changes to the latest version and try again",
                                ),
                            )
                        }
                        Some(_) => {
                            s.version += 1;
                            let mut o = body.clone();
                            o["metadata"]["resourceVersion"] = json!(s.version.to_string());
                            s.objects.insert(route.clone(), o.clone());
                            (200, o)
                        }
                    }
                }
                "PATCH" => {
                    // A status subresource patches its parent.
                    let (target, sub) = match route.strip_suffix("/status") {
                        Some(parent) => (parent.to_string(), true),
                        None => (route.clone(), false),
                    };
                    let existing = s.objects.get(&target).cloned();
                    if existing.is_none() && (sub || !apply) {
                        (404, status(404, "NotFound", &format!("{target} not found")))
                    } else {
                        created = existing.is_none();
                        let mut o = existing.unwrap_or_else(|| json!({}));
                        let patch = if sub {
                            json!({"status": body["status"].clone()})
                        } else {
                            body.clone()
                        };
                        merge(&mut o, &patch);
                        s.version += 1;
                        o["metadata"]["resourceVersion"] = json!(s.version.to_string());
                        s.objects.insert(target, o.clone());
                        (200, o)
                    }
                }
                "DELETE" => match s.objects.remove(&route) {
                    Some(o) => (200, o),
                    None => (404, status(404, "NotFound", &format!("{route} not found"))),
                },
                _ => (
                    405,
                    status(405, "MethodNotAllowed", "not supported by the fake"),
                ),
            }
        };
        s.log.push(Seen {
            method,
            path,
            body,
            created,
        });
        drop(s);
        let response = Response::builder()
            .status(code)
            .header("content-type", "application/json")
            .body(Body::from(serde_json::to_vec(&reply).unwrap_or_default()))
            .expect("a response");
        send.send_response(response);
    }
}

/// Whether `route` names a collection (`.../<resource>`) rather than an
/// object: the segment count of an object path is even after the group
/// and version prefix.
fn is_collection(route: &str) -> bool {
    let parts: Vec<&str> = route.trim_matches('/').split('/').collect();
    let rest = match parts.as_slice() {
        ["api", _, rest @ ..] => rest,
        ["apis", _, _, rest @ ..] => rest,
        _ => return false,
    };
    rest.len() % 2 == 1
}

/// Waits (in test time) until `done` holds, up to `limit`.
pub async fn until(limit: Duration, mut done: impl FnMut() -> bool) -> bool {
    let deadline = tokio::time::Instant::now() + limit;
    while tokio::time::Instant::now() < deadline {
        if done() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    done()
}

pub const LEASES: &str = "/apis/coordination.k8s.io/v1/namespaces/ops/leases";
pub const LEASE: &str = "/apis/coordination.k8s.io/v1/namespaces/ops/leases/phxkv-operator";

/// A Lease held by `holder`.
pub fn lease(holder: Option<&str>, duration: i32, transitions: i32) -> Value {
    json!({"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
           "metadata": {"name": "phxkv-operator", "namespace": "ops"},
           "spec": {"holderIdentity": holder, "leaseDurationSeconds": duration,
                    "acquireTime": "2026-01-01T00:00:00.000000Z",
                    "renewTime": "2026-01-01T00:00:00.000000Z",
                    "leaseTransitions": transitions}})
}

/// A controller context as the operator builds one, with `resolver` for
/// replicas' client URLs.
pub fn context(
    client: kube::Client,
    resolver: phxkv_operator::controller::Resolver,
    metrics: phxkv_operator::metrics::OperatorMetrics,
) -> Arc<phxkv_operator::controller::Context> {
    Arc::new(phxkv_operator::controller::Context {
        client: client.clone(),
        defaults: phxkv_operator::render::Defaults {
            image: "ghcr.io/phxkv/phxkv:0.1.0".into(),
            operator_pods: Default::default(),
        },
        recorder: kube::runtime::events::Recorder::new(
            client,
            kube::runtime::events::Reporter::from("phxkv-operator"),
        ),
        http: reqwest::Client::new(),
        resolver,
        metrics,
        busy_requeue: Duration::from_secs(3),
        idle_requeue: Duration::from_secs(30),
    })
}

/// Replicas served by one fake server at `{url}/pods/{pod}`.
pub fn pods_at(url: String) -> phxkv_operator::controller::Resolver {
    Arc::new(move |_, _, pod| format!("{url}/pods/{pod}"))
}

/// Serves `app` on a free loopback port; its base URL.
pub async fn serve(app: axum::Router) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    format!("http://{addr}")
}
