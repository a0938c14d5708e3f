//! Client authentication and per-prefix authorization over real processes:
//! a three-node cluster started with `--auth`, roles and tokens made through
//! the API (and the `phxkv auth` commands), and each rule checked on every
//! replica, including right after a revocation returns, and the
//! failed-attempt limiter.

mod common;

use std::time::Duration;

use common::{Cluster, TOKEN};
use serde_json::{Value, json};

/// A request to node `i` with `token` (none: no Authorization header).
async fn call(
    c: &Cluster,
    i: usize,
    method: reqwest::Method,
    path: &str,
    token: Option<&str>,
    body: Option<String>,
) -> (u16, Value, reqwest::header::HeaderMap) {
    let mut req = c.http.request(method, format!("{}{path}", c.url(i)));
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    if let Some(b) = body {
        req = req.body(b);
    }
    let r = req.send().await.expect("request");
    let status = r.status().as_u16();
    let headers = r.headers().clone();
    let bytes = r.bytes().await.expect("body");
    let json = serde_json::from_slice(&bytes)
        .unwrap_or(Value::String(String::from_utf8_lossy(&bytes).into_owned()));
    (status, json, headers)
}

fn code(v: &Value) -> &str {
    v["error"]["code"].as_str().unwrap_or("")
}

/// Creates the role `name` with `permissions` and a token holding it;
/// returns the token.
async fn token_with(c: &Cluster, name: &str, permissions: Value) -> String {
    let role = json!({ "permissions": permissions }).to_string();
    let path = format!("/v1/auth/roles/{name}");
    let (status, body, _) = call(c, 0, reqwest::Method::PUT, &path, Some(TOKEN), Some(role)).await;
    assert_eq!(status, 200, "{body}");
    let req = json!({"name": name, "roles": [name]}).to_string();
    let (status, body, _) = call(
        c,
        0,
        reqwest::Method::POST,
        "/v1/auth/tokens",
        Some(TOKEN),
        Some(req),
    )
    .await;
    assert_eq!(status, 201, "{body}");
    body["token"].as_str().expect("a token").to_owned()
}

#[tokio::test(flavor = "multi_thread")]
async fn tokens_and_roles_are_enforced_alike_on_every_replica() {
    use reqwest::Method;
    let c = Cluster::start(3, &["--auth"]).await;
    c.wait_for_master(Duration::from_secs(15)).await;
    for key in ["app/x", "other/x"] {
        assert_eq!(c.put(0, key, "v").await.status(), 200);
    }

    // No token, a wrong one: 401 everywhere but the probes.
    let (status, body, _) = call(&c, 1, Method::GET, "/v1/kv/app/x", None, None).await;
    assert_eq!((status, code(&body)), (401, "unauthorized"), "{body}");
    let (status, _, _) = call(&c, 1, Method::GET, "/readyz", None, None).await;
    assert_eq!(status, 200);

    let reader = token_with(&c, "app-reader", json!([{"prefix": "app/", "read": true}])).await;
    let writer = token_with(&c, "app-writer", json!([{"prefix": "app/", "write": true}])).await;
    // Made at node 0 a moment ago, good at every replica at once.
    for i in 0..3 {
        let r = Some(reader.as_str());
        let (status, body, _) = call(&c, i, Method::GET, "/v1/kv/app/x", r, None).await;
        assert_eq!(status, 200, "node {i}: {body}");
        let (status, body, _) = call(&c, i, Method::PUT, "/v1/kv/app/x", r, Some("w".into())).await;
        assert_eq!(
            (status, code(&body)),
            (403, "permission_denied"),
            "node {i}"
        );
        let (status, body, _) = call(&c, i, Method::GET, "/v1/kv/other/x", r, None).await;
        assert_eq!(
            (status, code(&body)),
            (403, "permission_denied"),
            "node {i}"
        );
        // A write by a token with the right, through any replica (followers
        // forward it to the master, where it is checked again).
        let w = Some(writer.as_str());
        let (status, body, _) =
            call(&c, i, Method::PUT, "/v1/kv/app/y", w, Some(format!("{i}"))).await;
        assert_eq!(status, 200, "node {i}: {body}");
    }

    // Revoked at node 0: refused by every replica right after it returns.
    let id = reader.split('_').nth(1).expect("an id").to_owned();
    let (status, body, _) = call(
        &c,
        0,
        Method::DELETE,
        &format!("/v1/auth/tokens/{id}"),
        Some(TOKEN),
        None,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    for i in 0..3 {
        let (status, body, _) = call(&c, i, Method::GET, "/v1/kv/app/x", Some(&reader), None).await;
        assert_eq!(
            (status, code(&body)),
            (401, "unauthorized"),
            "node {i}: {body}"
        );
    }
    // So is a role taken away from a token.
    let wid = writer.split('_').nth(1).expect("an id").to_owned();
    let path = format!("/v1/auth/tokens/{wid}/roles");
    let (status, _, _) = call(
        &c,
        2,
        Method::PUT,
        &path,
        Some(TOKEN),
        Some(r#"{"roles":[]}"#.into()),
    )
    .await;
    assert_eq!(status, 200);
    for i in 0..3 {
        let (status, body, _) = call(
            &c,
            i,
            Method::PUT,
            "/v1/kv/app/y",
            Some(&writer),
            Some("z".into()),
        )
        .await;
        assert_eq!(
            (status, code(&body)),
            (403, "permission_denied"),
            "node {i}: {body}"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn renewing_a_lease_needs_the_right_to_write_its_keys() {
    use reqwest::Method;
    let c = Cluster::start(3, &["--auth"]).await;
    c.wait_for_master(Duration::from_secs(15)).await;
    let reader = token_with(&c, "reader", json!([{"prefix": "app/", "read": true}])).await;
    let writer = token_with(&c, "writer", json!([{"prefix": "app/", "write": true}])).await;
    let (w, r) = (Some(writer.as_str()), Some(reader.as_str()));
    let cluster = &c;
    let grant = |token| async move {
        let (status, body, _) = call(
            cluster,
            1,
            Method::POST,
            "/v1/leases",
            token,
            Some(r#"{"ttl_secs": 30}"#.into()),
        )
        .await;
        assert_eq!(status, 200, "{body}");
        body["id"].as_u64().expect("an id")
    };
    // The writer's lease holds its key (as a lock's does).
    let held = grant(w).await;
    let path = format!("/v1/kv/app/lock?lease={held}");
    let (status, body, _) = call(&c, 1, Method::PUT, &path, w, Some("me".into())).await;
    assert_eq!(status, 200, "{body}");
    let one = format!("/v1/leases/{held}/keepalive");
    let many = Some(json!({ "ids": [held] }).to_string());
    for i in 0..3 {
        let (status, body, _) = call(&c, i, Method::POST, &one, r, None).await;
        assert_eq!(
            (status, code(&body)),
            (403, "permission_denied"),
            "node {i}: {body}"
        );
        let (status, body, _) =
            call(&c, i, Method::POST, "/v1/leases/keepalive", r, many.clone()).await;
        assert_eq!(
            (status, code(&body)),
            (403, "permission_denied"),
            "node {i}: {body}"
        );
        let (status, body, _) = call(&c, i, Method::POST, &one, w, None).await;
        assert_eq!(status, 200, "node {i}: {body}");
    }
    // A lease of the reader's own, with no keys, it renews.
    let own = grant(r).await;
    let (status, body, _) = call(
        &c,
        2,
        Method::POST,
        &format!("/v1/leases/{own}/keepalive"),
        r,
        None,
    )
    .await;
    assert_eq!(status, 200, "{body}");
}

/// Once every member knows lease holders (they say so in the first
/// seconds, in their peer requests), a token's lease is its own on every
/// replica: another token that may write the same keys can neither renew,
/// revoke, attach to nor list it.
#[tokio::test(flavor = "multi_thread")]
async fn a_tokens_lease_is_held_by_it_on_every_replica() {
    use reqwest::Method;
    let c = Cluster::start(3, &["--auth"]).await;
    c.wait_for_master(Duration::from_secs(15)).await;
    let app = json!([{ "prefix": "app/", "read": true, "write": true }]);
    let mine = token_with(&c, "mine", app.clone()).await;
    let other = token_with(&c, "other", app).await;
    let (m, o) = (Some(mine.as_str()), Some(other.as_str()));
    // Grants made before node 1 heard every member's features have no
    // holder; they are left to expire.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    let lease = loop {
        let ttl = Some(r#"{"ttl_secs": 30}"#.to_string());
        let (status, body, _) = call(&c, 1, Method::POST, "/v1/leases", m, ttl).await;
        assert_eq!(status, 200, "{body}");
        let lease = body["id"].as_u64().expect("an id");
        let path = format!("/v1/leases/{lease}/keepalive");
        if call(&c, 1, Method::POST, &path, o, None).await.0 == 403 {
            break lease;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no grant recorded its holder within 15 s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let keep_alive = format!("/v1/leases/{lease}/keepalive");
    let revoke = format!("/v1/leases/{lease}");
    let attach = format!("/v1/kv/app/x?lease={lease}");
    let cluster = &c;
    let ids = |token| async move {
        let (status, body, _) = call(cluster, 2, Method::GET, "/v1/leases", token, None).await;
        assert_eq!(status, 200, "{body}");
        let leases = body["leases"].as_array().cloned().unwrap_or_default();
        leases
            .iter()
            .filter_map(|l| l["id"].as_u64())
            .collect::<Vec<_>>()
    };
    for i in 0..3 {
        for (method, path, body) in [
            (Method::POST, &keep_alive, None),
            (Method::DELETE, &revoke, None),
            (Method::PUT, &attach, Some("v".to_string())),
        ] {
            let (status, answer, _) = call(&c, i, method.clone(), path, o, body).await;
            assert_eq!(
                (status, code(&answer)),
                (403, "permission_denied"),
                "node {i}: {method} {path}: {answer}"
            );
        }
        let (status, body, _) = call(&c, i, Method::POST, &keep_alive, m, None).await;
        assert_eq!(status, 200, "node {i}: {body}");
    }
    assert!(ids(m).await.contains(&lease));
    assert!(!ids(o).await.contains(&lease));
    // The command line says what to do instead.
    let other_file = c.dir.path().join("other.token");
    std::fs::write(&other_file, &other).expect("token file");
    let (code, _, err) = cli(&c, &other_file, &["lease", "revoke", &lease.to_string()]);
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("use the token that granted the lease"),
        "{err}"
    );
    let (status, body, _) = call(&c, 0, Method::PUT, &attach, m, Some("v".into())).await;
    assert_eq!(status, 200, "{body}");
    let (status, body, _) = call(&c, 2, Method::DELETE, &revoke, m, None).await;
    assert_eq!((status, body["deleted"].as_u64()), (200, Some(1)), "{body}");
}

#[tokio::test(flavor = "multi_thread")]
async fn an_address_that_keeps_guessing_gets_429_after_ten_failures() {
    use reqwest::Method;
    let c = Cluster::start(1, &["--auth"]).await;
    c.wait_for_master(Duration::from_secs(15)).await;
    let guess =
        "phxkv_0123456789abcdef_0000000000000000000000000000000000000000000000000000000000000000";
    for n in 0..10 {
        let (status, body, _) = call(&c, 0, Method::GET, "/v1/kv/a", Some(guess), None).await;
        assert_eq!((status, code(&body)), (401, "unauthorized"), "attempt {n}");
    }
    // Now even the right token is refused from this address.
    let (status, body, headers) = call(&c, 0, Method::GET, "/v1/kv/a", Some(TOKEN), None).await;
    assert_eq!((status, code(&body)), (429, "too_many_attempts"), "{body}");
    let retry: u64 = headers
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .expect("a Retry-After");
    assert!((1..=60).contains(&retry), "{retry}");
    let metrics = c.metrics_text(0).await;
    assert!(
        metrics.contains(r#"phxkv_auth_failures_total{reason="invalid"} 10"#),
        "{metrics}"
    );
    assert!(metrics.contains(r#"phxkv_auth_failures_total{reason="rate_limited"} 1"#));
}

/// The peer port takes only the cluster token: guessing it there is
/// limited per address like any other credential, but not from an address
/// that has shown it holds the token, so the replicas' traffic goes on.
#[tokio::test(flavor = "multi_thread")]
async fn cluster_token_guesses_on_the_peer_port_are_limited() {
    let c = Cluster::start(3, &[]).await;
    c.wait_for_master(Duration::from_secs(15)).await;
    // The replicas talk from 127.0.0.1; the guesser from another loopback
    // address.
    let guesser = reqwest::Client::builder()
        .local_address(std::net::IpAddr::from([127, 0, 0, 2]))
        .build()
        .expect("client");
    let peer = c.peer_url(0);
    let send = |token: &'static str| {
        guesser
            .post(format!("{peer}/peer/v1/messages"))
            .bearer_auth(token)
            .json(&json!([]))
            .send()
    };
    for n in 0..10 {
        let r = send("not-the-cluster-token").await.expect("peer");
        assert_eq!(r.status(), 401, "attempt {n}");
    }
    let r = send(TOKEN).await.expect("peer");
    assert_eq!(r.status(), 429);
    let retry: u64 = r
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .expect("a Retry-After");
    assert!((1..=60).contains(&retry), "{retry}");
    let body: Value = r.json().await.expect("a JSON error");
    assert_eq!(code(&body), "too_many_attempts", "{body}");
    // The client port shares the count: the cluster token is refused there
    // too from that address.
    let r = guesser
        .post(format!("{}/v1/cluster/members", c.url(0)))
        .bearer_auth(TOKEN)
        .json(&json!({"name": "n9", "peer_url": "http://127.0.0.1:1"}))
        .send()
        .await
        .expect("client port");
    assert_eq!(r.status(), 429);
    // Ten mistakes from the replicas' own address (an operator's `curl`
    // beside them) do not cut them off: that address has shown it holds
    // the token.
    let peer1 = c.peer_url(1);
    for n in 0..10 {
        let r = c
            .http
            .post(format!("{peer1}/peer/v1/messages"))
            .bearer_auth("a-mistyped-cluster-token")
            .json(&json!([]))
            .send()
            .await
            .expect("peer");
        assert_eq!(r.status(), 401, "attempt {n}");
    }
    let r = c
        .http
        .post(format!("{peer1}/peer/v1/messages"))
        .bearer_auth(TOKEN)
        .json(&json!([]))
        .send()
        .await
        .expect("peer");
    assert!(r.status().is_success(), "{}", r.status());
    // Writes through every replica still commit.
    for i in 0..3 {
        let r = c.put(i, &format!("k{i}"), "v").await;
        assert!(r.status().is_success(), "{:?}", r.text().await);
    }
    for i in [0, 1] {
        let metrics = c.metrics_text(i).await;
        assert!(
            metrics.contains(r#"phxkv_auth_failures_total{reason="invalid"} 10"#),
            "{metrics}"
        );
    }
}

/// Polls `f` every 100 ms until it holds, for at most `within`.
async fn eventually<F, Fut>(within: Duration, mut f: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let end = tokio::time::Instant::now() + within;
    loop {
        if f().await {
            return true;
        }
        if tokio::time::Instant::now() >= end {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits until every replica knows that every other decodes anonymous ops
/// (from the digest reports members send each other every 2 s), as its
/// metrics say; the master's cluster view lists each member's features.
async fn every_member_decodes_anonymous_ops(c: &Cluster) {
    for i in 0..3 {
        let on = eventually(Duration::from_secs(10), || async {
            c.metrics_text(i)
                .await
                .lines()
                .any(|l| l == "phxkv_anonymous_ops 1")
        })
        .await;
        assert!(on, "node {i}: {}", c.metrics_text(i).await);
    }
    let info = c.cluster_info(0).await.expect("the cluster view");
    let members = info["members"].as_array().expect("members");
    assert_eq!(members.len(), 3, "{info}");
    for m in members {
        assert_eq!(
            m["peer_features"],
            json!([
                "forward",
                "anonymous",
                "delete_prefix",
                "lease_owner",
                "lease_fence",
                "once",
                "timeline"
            ]),
            "{info}"
        );
    }
}

/// A replica that was stopped while auth was switched on takes a write
/// without a credential as it wakes, before it has applied the enable:
/// the write is refused where it is applied, after the enable.
#[tokio::test(flavor = "multi_thread")]
async fn a_write_through_a_replica_behind_the_enable_is_refused() {
    use reqwest::Method;
    let c = Cluster::start(3, &[]).await;
    let master = c.wait_for_master(Duration::from_secs(15)).await;
    every_member_decodes_anonymous_ops(&c).await;
    assert_eq!(c.put(master, "app/x", "v").await.status(), 200);
    let lease = c
        .http
        .post(format!("{}/v1/leases", c.url(master)))
        .body(r#"{"ttl_secs": 60}"#)
        .send()
        .await
        .expect("grant");
    assert_eq!(lease.status(), 200);
    let lease: Value = lease.json().await.expect("a lease");
    let lease = lease["id"].as_u64().expect("an id");
    let behind = (master + 1) % 3;
    c.pause(behind);
    let (status, body, _) = call(
        &c,
        master,
        Method::POST,
        "/v1/auth/enable",
        Some(TOKEN),
        None,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    // The write waits in the stopped replica's socket, and is read when it
    // wakes, beside the messages that carry the enable.
    let url = c.url(behind);
    let write = answer_later(c.http.put(format!("{url}/v1/kv/app/x")).body("w"));
    // So does a keep-alive, which no replica checks where it is applied
    // (it is not written to the log): the handler confirms the caller.
    let renew = answer_later(c.http.post(format!("{url}/v1/leases/{lease}/keepalive")));
    tokio::time::sleep(Duration::from_millis(300)).await;
    c.resume(behind);
    let (status, wbody) = write.await.expect("the write's task");
    assert_eq!(status, 401, "enable: {body}; write: {wbody}");
    let (status, rbody) = renew.await.expect("the keep-alive's task");
    assert_eq!(status, 401, "enable: {body}; keep-alive: {rbody}");
    for i in 0..3 {
        let (status, body, _) = call(&c, i, Method::GET, "/v1/kv/app/x", Some(TOKEN), None).await;
        assert_eq!((status, body), (200, json!("v")), "node {i}");
    }
}

/// Sends `request` in a task of its own (its replica may be stopped) and
/// gives its status and body when it is answered.
fn answer_later(request: reqwest::RequestBuilder) -> tokio::task::JoinHandle<(u16, String)> {
    tokio::spawn(async move {
        let r = request.send().await.expect("request");
        let status = r.status().as_u16();
        (status, r.text().await.unwrap_or_default())
    })
}

#[tokio::test(flavor = "multi_thread")]
async fn auth_enabled_for_the_cluster_binds_replicas_started_without_auth() {
    use reqwest::Method;
    let mut c = Cluster::start(3, &[]).await;
    c.wait_for_master(Duration::from_secs(15)).await;
    every_member_decodes_anonymous_ops(&c).await;
    assert_eq!(c.put(0, "app/x", "v").await.status(), 200);
    for i in 0..3 {
        let (status, body, _) = call(&c, i, Method::GET, "/v1/kv/app/x", None, None).await;
        assert_eq!(status, 200, "auth is off: node {i}: {body}");
    }

    // So does managing roles and tokens: made while auth is off, they are
    // in force once it is on, and anyone could otherwise make himself an
    // admin of the cluster to come.
    let admin_role = json!({"admin": true}).to_string();
    let new_token = json!({"name": "t", "roles": ["boss"]}).to_string();
    for (method, path, body) in [
        (Method::PUT, "/v1/auth/roles/boss", Some(admin_role.clone())),
        (Method::POST, "/v1/auth/tokens", Some(new_token.clone())),
        (Method::GET, "/v1/auth/roles", None),
        (Method::GET, "/v1/auth/tokens", None),
        (Method::DELETE, "/v1/auth/roles/boss", None),
    ] {
        for token in [None, Some("wrong")] {
            let (status, answer, _) = call(&c, 1, method.clone(), path, token, body.clone()).await;
            assert_eq!(
                (status, code(&answer)),
                (401, "unauthorized"),
                "{method} {path} with {token:?}: {answer}"
            );
        }
    }
    let (status, body, _) = call(
        &c,
        1,
        Method::PUT,
        "/v1/auth/roles/boss",
        Some(TOKEN),
        Some(admin_role),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let (status, body, _) = call(&c, 1, Method::GET, "/v1/auth/roles", Some(TOKEN), None).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["roles"][0]["name"], "boss", "{body}");

    // Switching it on takes the cluster token, even while auth is off.
    let (status, body, _) = call(&c, 1, Method::POST, "/v1/auth/enable", None, None).await;
    assert_eq!((status, code(&body)), (401, "unauthorized"), "{body}");
    let (status, body, _) = call(&c, 1, Method::POST, "/v1/auth/enable", Some("wrong"), None).await;
    assert_eq!(status, 401, "{body}");
    let (status, body, _) = call(&c, 1, Method::POST, "/v1/auth/enable", Some(TOKEN), None).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["enabled"], true);

    // Right after it returns, a write without a credential is refused by
    // every replica (none was started with --auth), whether or not it has
    // applied the enable yet: it is checked where it is applied. So is a
    // linearizable read, and one with the cluster token is served.
    for i in 0..3 {
        let (status, body, _) =
            call(&c, i, Method::PUT, "/v1/kv/app/x", None, Some("w".into())).await;
        assert_eq!(
            (status, code(&body)),
            (401, "unauthorized"),
            "node {i}: {body}"
        );
        let (status, body, _) = call(&c, i, Method::GET, "/v1/kv/app/x", None, None).await;
        assert_eq!(
            (status, code(&body)),
            (401, "unauthorized"),
            "node {i}: {body}"
        );
        let (status, body, _) = call(&c, i, Method::GET, "/v1/kv/app/x", Some(TOKEN), None).await;
        assert_eq!(status, 200, "node {i}: {body}");
        assert_eq!(body, json!("v"), "the value is unchanged");
        let (status, body, _) =
            call(&c, i, Method::GET, "/v1/auth/whoami", Some(TOKEN), None).await;
        assert_eq!(body["auth_enabled"], true, "node {i}: {status} {body}");
    }
    // Enabling again changes nothing and answers alike.
    let (status, body, _) = call(&c, 2, Method::POST, "/v1/auth/enable", Some(TOKEN), None).await;
    assert_eq!((status, &body["enabled"]), (200, &json!(true)), "{body}");

    // Off again: every replica serves anyone once it has applied that.
    let (status, body, _) = call(&c, 0, Method::POST, "/v1/auth/disable", Some(TOKEN), None).await;
    assert_eq!((status, &body["enabled"]), (200, &json!(false)), "{body}");
    for i in 0..3 {
        let served = eventually(Duration::from_secs(5), || async {
            call(&c, i, Method::GET, "/v1/kv/app/x", None, None).await.0 == 200
        })
        .await;
        assert!(served, "node {i} still refuses anonymous reads");
    }

    // A replica restarted with --auth switches it on for the whole cluster,
    // so the two without the flag refuse anonymous requests too.
    c.terminate(0);
    c.extra_args.push("--auth".into());
    c.spawn(0);
    for i in [1, 2] {
        let refused = eventually(Duration::from_secs(20), || async {
            call(&c, i, Method::GET, "/v1/kv/app/x", None, None).await.0 == 401
        })
        .await;
        assert!(
            refused,
            "node {i} still serves anonymous reads: {}",
            c.log_of(0)
        );
    }
    assert!(c.log_of(0).contains("auth enabled for the whole cluster"));
}

/// `phxkv ARGS` against nodes 0 and 1 with `token_file`; exit code, stdout
/// and stderr.
fn cli(c: &Cluster, token_file: &std::path::Path, args: &[&str]) -> (i32, String, String) {
    let endpoints = format!("{},{}", c.url(0), c.url(1));
    let token = token_file.display().to_string();
    common::run_phxkv(
        args,
        &[("PHXKV_ENDPOINTS", endpoints), ("PHXKV_TOKEN_FILE", token)],
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn the_auth_commands_manage_roles_and_tokens_from_the_command_line() {
    let c = Cluster::start(3, &["--auth"]).await;
    c.wait_for_master(Duration::from_secs(15)).await;
    let admin = c.dir.path().join("token");
    let ok = |(code, out, err): (i32, String, String)| {
        assert_eq!(code, 0, "stdout: {out}\nstderr: {err}");
        (out, err)
    };

    ok(cli(
        &c,
        &admin,
        &["auth", "role", "put", "app-reader", "--read", "app/"],
    ));
    ok(cli(&c, &admin, &["put", "app/x", "v"]));
    ok(cli(&c, &admin, &["put", "other/x", "v"]));
    // `create`, as for tokens, is `put` too.
    ok(cli(
        &c,
        &admin,
        &["auth", "role", "create", "app-writer", "--write", "app/"],
    ));

    // The token alone on stdout, so `> file` keeps it; no warning for a
    // role that exists.
    let (out, err) = ok(cli(
        &c,
        &admin,
        &["auth", "token", "create", "ci", "--role", "app-reader"],
    ));
    let token = out.trim().to_owned();
    assert!(
        token.starts_with("phxkv_") && !token.contains('\n'),
        "{out}"
    );
    assert!(
        err.contains("shown only now") && !err.contains("warning"),
        "{err}"
    );
    let reader = c.dir.path().join("reader.token");
    std::fs::write(&reader, &token).expect("token file");

    let (out, _) = ok(cli(&c, &reader, &["get", "app/x"]));
    assert_eq!(out, "v");

    // The command line beats the environment: a --token-file given there
    // is what is sent, though PHXKV_TOKEN holds another token (which,
    // sent, would have been refused). Between the two variables, the token
    // itself comes first.
    let endpoints = format!("{},{}", c.url(0), c.url(1));
    let reader_path = reader.display().to_string();
    let (code, out, err) = common::run_phxkv(
        &["get", "app/x", "--token-file", &reader_path],
        &[
            ("PHXKV_ENDPOINTS", endpoints.clone()),
            ("PHXKV_TOKEN", "phxkv_0000_not-a-token".to_owned()),
        ],
    );
    assert_eq!((code, out.as_str()), (0, "v"), "{err}");
    let admin_token = std::fs::read_to_string(&admin).expect("cluster token");
    let (code, _, err) = common::run_phxkv(
        &["put", "other/y", "v"],
        &[
            ("PHXKV_ENDPOINTS", endpoints),
            ("PHXKV_TOKEN_FILE", reader_path),
            ("PHXKV_TOKEN", admin_token.trim().to_owned()),
        ],
    );
    assert_eq!(code, 0, "{err}");
    for args in [&["put", "app/x", "w"][..], &["get", "other/x"][..]] {
        let (code, _, err) = cli(&c, &reader, args);
        assert_eq!(code, 2, "{args:?}: {err}");
        assert!(
            err.contains("permission denied") && err.contains("phxkv auth role put"),
            "{args:?}: {err}"
        );
        assert_eq!(err.trim().lines().count(), 1, "{err}");
    }

    // A mistyped role, or none at all, is taken but said.
    let (_, err) = ok(cli(
        &c,
        &admin,
        &["auth", "token", "create", "typo", "--role", "app-raeder"],
    ));
    assert!(
        err.contains("warning: no role is named \"app-raeder\""),
        "{err}"
    );
    let (bare, err) = ok(cli(&c, &admin, &["auth", "token", "create", "bare"]));
    assert!(err.contains("warning: the token holds no role"), "{err}");
    let bare_file = c.dir.path().join("bare.token");
    std::fs::write(&bare_file, bare.trim()).expect("token file");

    let (out, _) = ok(cli(&c, &admin, &["auth", "token", "list", "-o", "json"]));
    let list: Value = serde_json::from_str(&out).expect("JSON");
    let names: Vec<&str> = list["tokens"]
        .as_array()
        .expect("tokens")
        .iter()
        .filter_map(|t| t["name"].as_str())
        .collect();
    for name in ["ci", "typo", "bare"] {
        assert!(names.contains(&name), "{out}");
    }
    assert!(!out.contains(&token), "a listing shows no secret: {out}");

    // Revoked: the next call is refused, with what to do about it.
    let id = token.split('_').nth(1).expect("an id");
    ok(cli(&c, &admin, &["auth", "token", "revoke", id]));
    let (code, _, err) = cli(&c, &reader, &["get", "app/x"]);
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("not authenticated") && err.contains("--token-file"),
        "{err}"
    );
    // Auth management needs an admin; a token file that is not there is
    // named in the error.
    let (code, _, err) = cli(&c, &bare_file, &["auth", "token", "list"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("permission denied"), "{err}");
    let missing = c.dir.path().join("missing.token");
    let (code, _, err) = cli(&c, &missing, &["auth", "token", "list"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("missing.token"), "{err}");
    // A role name that cannot be one is refused for what it is, not as a
    // route the endpoint lacks.
    for args in [
        &["auth", "role", "put", "", "--read", "app/"][..],
        &["auth", "role", "delete", "a b"][..],
    ] {
        let (code, _, err) = cli(&c, &admin, args);
        assert_eq!(code, 2, "{err}");
        assert!(err.contains("role") && err.contains("1 to 64"), "{err}");
    }
}
