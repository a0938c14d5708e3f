//! Multi-process tests: three `phxkv serve` processes on loopback, real HTTP
//! between them, real fsync, and real faults (kill -9, SIGSTOP, restarts).

mod common;

use std::time::{Duration, Instant};

use common::{Cluster, TOKEN, free_port};
use serde_json::{Value, json};

async fn json_of(r: reqwest::Response) -> Value {
    r.json().await.expect("JSON body")
}

/// A node that is not the master, to prove forwarding.
async fn follower(c: &Cluster) -> usize {
    let m = c.wait_for_master(Duration::from_secs(20)).await;
    (m + 1) % c.procs.len()
}

#[tokio::test(flavor = "multi_thread")]
async fn every_operation_works_end_to_end_through_a_follower() {
    let c = Cluster::start(3, &[]).await;
    let f = follower(&c).await;
    let other = (f + 1) % 3;

    // put / get / versions
    let r = c.put(f, "greeting", "hello").await;
    assert_eq!(r.status(), 200);
    let put = json_of(r).await;
    assert_eq!(put["version"], 1);
    let (status, body) = c.get(other, "greeting", "").await.expect("get");
    assert_eq!((status, body.as_slice()), (200, b"hello".as_slice()));

    // compare-and-swap: wrong version, then right version
    let r = c
        .http
        .put(format!("{}/v1/kv/greeting?if_version=7", c.url(f)))
        .body("nope")
        .send()
        .await
        .expect("cas");
    assert_eq!(r.status(), 409);
    let r = c
        .http
        .put(format!("{}/v1/kv/greeting?if_version=1", c.url(f)))
        .body("hi")
        .send()
        .await
        .expect("cas");
    assert_eq!(r.status(), 200);

    // binary-safe keys
    let r = c
        .http
        .put(format!("{}/v1/kv/bin%00%FFkey", c.url(f)))
        .body(vec![0u8, 1, 2, 255])
        .send()
        .await
        .expect("binary put");
    assert_eq!(r.status(), 200);
    let (status, body) = c.get(other, "bin%00%FFkey", "").await.expect("get");
    assert_eq!((status, body), (200, vec![0u8, 1, 2, 255]));

    // list with a prefix
    for k in ["users/a", "users/b", "users/c"] {
        assert_eq!(c.put(f, k, "x").await.status(), 200);
    }
    let r = c
        .http
        .get(format!("{}/v1/kv?prefix=users/&limit=2", c.url(other)))
        .send()
        .await
        .expect("list");
    assert_eq!(r.status(), 200);
    let list = json_of(r).await;
    assert_eq!(list["kvs"].as_array().map(Vec::len), Some(2));
    assert_eq!(list["more"], true);

    // transaction
    let txn = json!({
        "compare": [{"key": "users/a", "target": "version", "op": "equal", "version": 1}],
        "success": [{"put": {"key": "users/a", "value": "updated"}}, {"delete": {"key": "users/b"}}],
        "failure": [{"get": {"key": "users/a"}}]
    });
    let r = c
        .http
        .post(format!("{}/v1/txn", c.url(f)))
        .json(&txn)
        .send()
        .await
        .expect("txn");
    assert_eq!(r.status(), 200);
    assert_eq!(json_of(r).await["succeeded"], true);
    let (status, _) = c.get(other, "users/b", "").await.expect("get");
    assert_eq!(status, 404);

    // delete
    let r = c
        .http
        .delete(format!("{}/v1/kv/users/c", c.url(f)))
        .send()
        .await
        .expect("delete");
    assert_eq!(json_of(r).await["deleted"], true);

    // local read with read-your-writes
    let r = c.put(f, "ryw", "v").await;
    let rev = json_of(r).await["revision"].as_u64().expect("revision");
    let (status, body) = c
        .get(
            other,
            "ryw",
            &format!("?consistency=local&min_revision={rev}"),
        )
        .await
        .expect("local get");
    assert_eq!((status, body.as_slice()), (200, b"v".as_slice()));

    // watch: a change made after the watch starts arrives as an event
    let mut watch = c
        .http
        .get(format!("{}/v1/watch?prefix=watched/", c.url(other)))
        .timeout(Duration::from_secs(20))
        .send()
        .await
        .expect("watch");
    assert_eq!(watch.status(), 200);
    assert_eq!(c.put(f, "watched/x", "seen").await.status(), 200);
    let mut seen = String::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !seen.contains("watched/x") && Instant::now() < deadline {
        match tokio::time::timeout(Duration::from_secs(5), watch.chunk()).await {
            Ok(Ok(Some(chunk))) => seen.push_str(&String::from_utf8_lossy(&chunk)),
            _ => break,
        }
    }
    assert!(seen.contains("event: put"), "watch stream: {seen}");
    assert!(seen.contains("watched/x"), "watch stream: {seen}");

    // cluster status
    let info = c.cluster_info(other).await.expect("cluster");
    assert_eq!(info["members"].as_array().map(Vec::len), Some(3));
    assert!(info["master"].is_string());
}

/// A rolling restart: a replica told to stop (SIGTERM) while a watch is
/// open on it ends the watch with an error its client resumes from
/// elsewhere, and exits, instead of waiting on the watcher while the
/// stream stays silent.
/// Readiness follows what a node can serve: a master left without a
/// majority says so (it can neither write nor read), and so does a
/// follower that hears from no master; both are ready again once the
/// others are back.
#[tokio::test(flavor = "multi_thread")]
async fn readiness_ends_when_a_node_loses_the_majority_and_comes_back_with_it() {
    let mut c = Cluster::start(3, &[]).await;
    let m = c.wait_for_master(Duration::from_secs(20)).await;
    let urls: Vec<String> = (0..3).map(|i| format!("{}/readyz", c.url(i))).collect();
    let http = c.http.clone();
    let ready = |i: usize| {
        let url = urls[i].clone();
        let http = http.clone();
        async move {
            // A node restarting does not listen yet: status 0.
            match http.get(url).send().await {
                Ok(r) => {
                    let status = r.status().as_u16();
                    (status, json_of(r).await)
                }
                Err(e) => (0, Value::String(e.to_string())),
            }
        }
    };
    let wait_for = |i: usize, want: u16| {
        let ready = &ready;
        async move {
            let deadline = Instant::now() + Duration::from_secs(20);
            loop {
                let (status, body) = ready(i).await;
                if status == want {
                    return body;
                }
                assert!(
                    Instant::now() < deadline,
                    "node {i} stayed {status}: {body}"
                );
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    };
    for i in 0..3 {
        wait_for(i, 200).await;
    }
    let others: Vec<usize> = (0..3).filter(|i| *i != m).collect();
    for &o in &others {
        c.kill9(o);
    }
    let body = wait_for(m, 503).await;
    assert!(
        body["reason"]
            .as_str()
            .is_some_and(|r| r.contains("not a majority")),
        "{body}"
    );
    // Nor does it name itself master to someone asking who is: the others
    // may have chosen another behind its back.
    let info = json_of(
        c.http
            .get(format!("{}/v1/cluster", c.url(m)))
            .send()
            .await
            .expect("cluster"),
    )
    .await;
    assert!(info["master"].is_null(), "{info}");
    assert!(
        info["members"]
            .as_array()
            .is_some_and(|ms| ms.iter().all(|x| x["is_master"] == false)),
        "{info}"
    );
    for &o in &others {
        c.spawn(o);
    }
    for i in 0..3 {
        wait_for(i, 200).await;
    }

    // One follower paused: the others keep a majority and stay ready.
    let m = c.wait_for_master(Duration::from_secs(20)).await;
    let f = (m + 1) % 3;
    c.pause(f);
    tokio::time::sleep(Duration::from_secs(4)).await;
    let (status, body) = ready(m).await;
    assert_eq!(status, 200, "{body}");
    c.resume(f);
    wait_for(f, 200).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_replica_stopped_with_a_watch_open_ends_the_watch_and_exits() {
    let mut c = Cluster::start(3, &[]).await;
    c.wait_for_master(Duration::from_secs(20)).await;
    let mut watch = c
        .http
        .get(format!("{}/v1/watch?prefix=z/", c.url(0)))
        .timeout(Duration::from_secs(60))
        .send()
        .await
        .expect("watch");
    assert_eq!(watch.status(), 200);
    assert_eq!(c.put(1, "z/1", "before").await.status(), 200);
    let mut seen = String::new();
    while !seen.contains("event: put") {
        match tokio::time::timeout(Duration::from_secs(10), watch.chunk()).await {
            Ok(Ok(Some(chunk))) => seen.push_str(&String::from_utf8_lossy(&chunk)),
            other => panic!("no put event: {other:?} {seen}"),
        }
    }
    let status = tokio::task::spawn_blocking(move || {
        let status = c.terminate(0);
        (c, status)
    });
    // The stream ends with an error event, before the watcher's timeout.
    let mut rest = String::new();
    while let Ok(Ok(Some(chunk))) =
        tokio::time::timeout(Duration::from_secs(30), watch.chunk()).await
    {
        rest.push_str(&String::from_utf8_lossy(&chunk));
    }
    assert!(
        rest.contains("event: error") && rest.contains("shutting down"),
        "{rest}"
    );
    let (c, status) = status.await.expect("join");
    assert!(status.success(), "{status:?}\n{}", c.log_of(0));
}

/// A master that stops without closing its connections (SIGSTOP) never
/// answers the writes followers forwarded to it: a follower sends them to
/// the next master instead, so the client's write succeeds, and exactly
/// once even after the old master comes back.
#[tokio::test(flavor = "multi_thread")]
async fn a_write_forwarded_to_a_paused_master_goes_to_the_next_one() {
    let c = Cluster::start(3, &[]).await;
    let m = c.wait_for_master(Duration::from_secs(20)).await;
    let f = (m + 1) % 3;
    assert_eq!(c.put(f, "before", "1").await.status(), 200);
    c.pause(m);
    // Created only if missing: a second application would be refused.
    let r = c
        .http
        .put(format!("{}/v1/kv/once?if_version=0", c.url(f)))
        .body("1")
        .send()
        .await
        .expect("write");
    let status = r.status();
    let body: Value = r.json().await.unwrap_or(Value::Null);
    c.resume(m);
    assert_eq!(status, 200, "{body}");
    // Whichever copies were chosen, the write was applied once, and the old
    // master, back, agrees.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let r = c
            .http
            .get(format!("{}/v1/kv/once?consistency=local", c.url(m)))
            .send()
            .await
            .expect("get");
        if r.status() == 200 {
            let version = r
                .headers()
                .get("x-phxkv-version")
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned);
            assert_eq!(version.as_deref(), Some("1"), "applied once");
            assert_eq!(r.bytes().await.expect("body").as_ref(), b"1");
            break;
        }
        assert!(Instant::now() < deadline, "the old master never caught up");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn writes_resume_after_the_master_is_killed() {
    let mut c = Cluster::start(3, &[]).await;
    let m = c.wait_for_master(Duration::from_secs(20)).await;
    let survivor = (m + 1) % 3;
    assert_eq!(c.put(survivor, "before", "1").await.status(), 200);
    c.kill9(m);
    let started = Instant::now();
    assert_eq!(c.put(survivor, "after", "2").await.status(), 200);
    eprintln!(
        "write after kill -9 of the master took {:?}",
        started.elapsed()
    );
    for i in 0..3 {
        if i == m {
            continue;
        }
        let (status, body) = c.get(i, "before", "").await.expect("get");
        assert_eq!((status, body.as_slice()), (200, b"1".as_slice()));
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn acknowledged_writes_survive_killing_every_node() {
    let mut c = Cluster::start(3, &[]).await;
    let mut acked = Vec::new();
    for i in 0..60 {
        let key = format!("durable/{i}");
        let r = c.put(i % 3, &key, &format!("v{i}")).await;
        if r.status() == 200 {
            acked.push(i);
        }
    }
    assert_eq!(acked.len(), 60);
    for i in 0..3 {
        c.kill9(i);
    }
    for i in 0..3 {
        c.spawn(i);
    }
    c.wait_for_master(Duration::from_secs(20)).await;
    for i in acked {
        let (status, body) = c
            .get(i % 3, &format!("durable/{i}"), "")
            .await
            .expect("get");
        assert_eq!(status, 200, "durable/{i} lost");
        assert_eq!(body, format!("v{i}").into_bytes());
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_restarted_node_catches_up_by_snapshot_after_compaction() {
    let mut c = Cluster::start(3, &["--snapshot-every", "100"]).await;
    let m = c.wait_for_master(Duration::from_secs(20)).await;
    let lagging = (m + 1) % 3;
    c.kill9(lagging);
    for i in 0..400 {
        assert_eq!(c.put(m, &format!("bulk/{i}"), "x").await.status(), 200);
    }
    c.spawn(lagging);
    // A local read of the last key on the restarted node must appear.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some((200, _)) = c.get(lagging, "bulk/399", "?consistency=local").await {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the restarted node never caught up:\n{}",
            c.log_of(lagging)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let log = c.log_of(lagging);
    assert!(
        log.contains("installed snapshot"),
        "caught up without a snapshot:\n{log}"
    );

    // A snapshot this node has already applied (a catch-up request sent
    // just before its install brings the same one again) is answered
    // without its data being read: this data is not a store, and a node
    // that decoded it would refuse it.
    let snapshot_at = |index| {
        let meta = phxkv::paxos::SnapshotMeta {
            index,
            membership: Default::default(),
        };
        let mut body = phxkv::node::wire::snapshot_header(&meta);
        body.extend_from_slice(b"not a store");
        c.http
            .post(format!("{}/peer/v1/snapshot", c.peer_url(lagging)))
            .bearer_auth(TOKEN)
            .header("content-type", "application/octet-stream")
            .body(body)
            .send()
    };
    let r = snapshot_at(1).await.expect("snapshot request");
    assert_eq!(r.status(), 204, "{}", r.text().await.unwrap_or_default());
    // One ahead of it is read, and this one is refused for its data.
    let r = snapshot_at(1 << 40).await.expect("snapshot request");
    assert_eq!(r.status(), 400);
    let body = json_of(r).await;
    assert_eq!(body["error"]["code"], "bad_snapshot", "{body}");
    // Neither changed what the node serves.
    assert_eq!(
        c.get(lagging, "bulk/399", "?consistency=local").await,
        Some((200, b"x".to_vec()))
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_paused_master_serves_no_stale_read_after_it_resumes() {
    let c = Cluster::start(3, &[]).await;
    let m = c.wait_for_master(Duration::from_secs(20)).await;
    let other = (m + 1) % 3;
    assert_eq!(c.put(m, "k", "old").await.status(), 200);
    c.pause(m);
    // Longer than the lease (1 s): the others elect a new master.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(c.put(other, "k", "new").await.status(), 200);
    c.resume(m);
    // Whatever the old master answers, it must not be the old value.
    for _ in 0..20 {
        if let Some((status, body)) = c.get(m, "k", "").await {
            assert!(
                !(status == 200 && body == b"old"),
                "stale read from the resumed old master"
            );
            if status == 200 {
                assert_eq!(body, b"new");
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_input_gets_clear_json_errors_and_loses_nothing() {
    let c = Cluster::start(3, &["--max-key-bytes", "64", "--max-value-bytes", "1024"]).await;
    assert_eq!(c.put(0, "keep", "me").await.status(), 200);
    let url = c.url(0);
    let checks: Vec<(reqwest::RequestBuilder, u16, &str)> = vec![
        (
            c.http
                .put(format!("{url}/v1/kv/{}", "k".repeat(100)))
                .body("v"),
            413,
            "key",
        ),
        (
            c.http
                .put(format!("{url}/v1/kv/big"))
                .body(vec![b'x'; 4096]),
            413,
            "value",
        ),
        (
            c.http
                .post(format!("{url}/v1/txn"))
                .header("content-type", "application/json")
                .body("{not json"),
            400,
            "malformed txn",
        ),
        (
            c.http.get(format!("{url}/v1/nowhere")),
            404,
            "unknown route",
        ),
        (
            c.http.patch(format!("{url}/v1/kv/keep")),
            405,
            "wrong method",
        ),
        (
            c.http
                .put(format!("{url}/v1/kv/keep?if_version=9"))
                .body("x"),
            409,
            "compare",
        ),
        (
            c.http.get(format!("{url}/v1/kv/missing")),
            404,
            "missing key",
        ),
    ];
    for (req, want, what) in checks {
        let r = req.send().await.expect(what);
        assert_eq!(r.status().as_u16(), want, "{what}");
        let body: Value = r
            .json()
            .await
            .unwrap_or_else(|_| panic!("{what}: JSON error body"));
        assert!(body["error"]["code"].is_string(), "{what}: {body}");
        assert!(body["error"]["message"].is_string(), "{what}: {body}");
    }
    // The peer API refuses callers without the token, or with a wrong one.
    let peer = c.peer_url(0);
    let r = c
        .http
        .post(format!("{peer}/peer/v1/messages"))
        .json(&json!([]))
        .send()
        .await
        .expect("peer");
    assert_eq!(r.status(), 401);
    let r = c
        .http
        .post(format!("{peer}/peer/v1/messages"))
        .bearer_auth("wrong-token-wrong-token")
        .json(&json!([]))
        .send()
        .await
        .expect("peer");
    assert_eq!(r.status(), 401);
    // With the token, an empty batch is taken.
    let r = c
        .http
        .post(format!("{peer}/peer/v1/messages"))
        .bearer_auth(TOKEN)
        .json(&json!([]))
        .send()
        .await
        .expect("peer");
    assert!(r.status().is_success());
    // Nothing was lost along the way.
    let (status, body) = c.get(1, "keep", "").await.expect("get");
    assert_eq!((status, body.as_slice()), (200, b"me".as_slice()));
}

/// Writes forwarded on the peer port are checked as a client's are: the
/// cluster token is not a way around the key and value limits.
#[tokio::test(flavor = "multi_thread")]
async fn a_peer_cannot_propose_what_a_client_could_not_write() {
    let c = Cluster::start(1, &[]).await;
    c.wait_for_master(Duration::from_secs(15)).await;
    let peer = c.peer_url(0);
    use base64::Engine as _;
    let b64 = |b: &[u8]| base64::engine::general_purpose::STANDARD.encode(b);
    let put = |seq: u64, key: &[u8]| json!({"id": {"client": 7, "seq": seq}, "op": {"put": {"key": b64(key), "value": b64(b"x")}}});
    let post = |path: &str, body: Value| {
        c.http
            .post(format!("{peer}/peer/v1/{path}"))
            .bearer_auth(TOKEN)
            .json(&body)
            .send()
    };
    let long = vec![b'a'; 6000];
    for (seq, key, status) in [(1, &b""[..], 400), (2, &long[..], 413)] {
        let r = post("propose", put(seq, key)).await.expect("propose");
        assert_eq!(r.status().as_u16(), status, "key of {} bytes", key.len());
        let body: Value = r.json().await.expect("a JSON error");
        assert_eq!(body["error"]["code"], "bad_request", "{body}");
    }
    let r = post("propose", put(3, b"fine")).await.expect("propose");
    assert_eq!(r.status(), 200);
    // On the message route (and the stream), a bad forwarded write is
    // dropped, and the good ones beside it are taken.
    let info = c.cluster_info(0).await.expect("cluster info");
    let id = u64::from_str_radix(info["node_id"].as_str().expect("node_id"), 16).expect("hex");
    let forward = json!([{"from": 1, "to": id, "msg": {"forward": {"cmds": [put(4, b""), put(5, b"also-fine")]}}}]);
    let r = post("messages", forward).await.expect("messages");
    assert_eq!(r.status(), 204);
    let deadline = Instant::now() + Duration::from_secs(10);
    while c.get(0, "also-fine", "").await.map(|(s, _)| s) != Some(200) {
        assert!(
            Instant::now() < deadline,
            "the good forward was not applied"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let listed: Value = c
        .http
        .get(format!("{}/v1/kv?prefix=", c.url(0)))
        .send()
        .await
        .expect("list")
        .json()
        .await
        .expect("json");
    let keys: Vec<&str> = listed["kvs"]
        .as_array()
        .expect("kvs")
        .iter()
        .filter_map(|kv| kv["key_utf8"].as_str())
        .collect();
    assert_eq!(keys, ["also-fine", "fine"], "{listed}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_node_refuses_a_data_directory_of_another_node() {
    let mut c = Cluster::start(3, &[]).await;
    c.kill9(0);
    // Start n2's identity on n1's directory.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_phxkv"))
        .arg("serve")
        .args(["--id", "n2"])
        .arg("--data-dir")
        .arg(&c.procs[0].data_dir)
        .args(["--listen", "127.0.0.1:0", "--peer-listen", "127.0.0.1:0"])
        .args(["--initial-members", &c.members])
        .arg("--cluster-token-file")
        .arg(c.dir.path().join("token"))
        .output()
        .expect("run");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<&str> = err.lines().filter(|l| l.contains("phxkv:")).collect();
    assert_eq!(lines.len(), 1, "one readable line: {err}");
    assert!(lines[0].contains("belongs to node \"n1\""), "{err}");
}

#[tokio::test(flavor = "multi_thread")]
async fn start_up_rejects_a_bad_flag_with_one_line_naming_it() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_phxkv"))
        .args([
            "serve",
            "--id",
            "a",
            "--initial-members",
            "a=http://127.0.0.1:1",
            "--lease",
            "soon",
        ])
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--lease"), "{err}");
}

#[tokio::test(flavor = "multi_thread")]
async fn idle_connections_are_closed_after_the_idle_timeout_on_both_ports() {
    use tokio::io::AsyncReadExt as _;
    let c = Cluster::start(3, &["--idle-timeout", "1s"]).await;
    c.wait_for_master(Duration::from_secs(20)).await;
    let p = &c.procs[0];
    for port in [p.client_port, p.peer_port] {
        let mut conn = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .expect("connect");
        // The default (2 minutes) would outlast this bound by far.
        let mut byte = [0u8; 1];
        let read = tokio::time::timeout(Duration::from_secs(30), conn.read(&mut byte))
            .await
            .unwrap_or_else(|_| panic!("port {port} kept an idle connection open"));
        assert!(
            matches!(read, Ok(0) | Err(_)),
            "port {port} sent something: {read:?}"
        );
    }
}

/// Starts an empty node `name` that waits to be added (`--join`); returns
/// it with its client and peer ports.
/// A node started by [`spawn_joining`]: stopped when dropped, so a failed
/// assertion leaves no process behind.
struct Joining(std::process::Child);

impl Drop for Joining {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn spawn_joining(c: &Cluster, name: &str) -> (Joining, u16, u16) {
    let dir = c.dir.path().join(name);
    let (client_port, peer_port) = (free_port(), free_port());
    let child = std::process::Command::new(env!("CARGO_BIN_EXE_phxkv"))
        .arg("serve")
        .args(["--id", name, "--join"])
        .arg("--data-dir")
        .arg(&dir)
        .args(["--listen", &format!("127.0.0.1:{client_port}")])
        .args(["--peer-listen", &format!("127.0.0.1:{peer_port}")])
        .arg("--cluster-token-file")
        .arg(c.dir.path().join("token"))
        .args(["--lease", "1s"])
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("spawn a joining node");
    (Joining(child), client_port, peer_port)
}

#[tokio::test(flavor = "multi_thread")]
async fn membership_changes_on_a_live_cluster() {
    let mut c = Cluster::start(3, &[]).await;
    assert_eq!(c.put(0, "before-join", "1").await.status(), 200);
    // A fourth process that starts empty and waits to be added.
    let (n4, client_port, peer_port) = spawn_joining(&c, "n4");
    let url = c.url(1);
    // Without the token: refused.
    let r = c
        .http
        .post(format!("{url}/v1/cluster/members"))
        .json(&json!({"name": "n4", "peer_url": format!("http://127.0.0.1:{peer_port}")}))
        .send()
        .await
        .expect("add");
    assert_eq!(r.status(), 401);
    // The new node must be up to say which incarnation it runs: until it
    // listens, the answer is 503 and the client retries.
    let deadline = Instant::now() + Duration::from_secs(10);
    let r = loop {
        let r = c
            .http
            .post(format!("{url}/v1/cluster/members"))
            .bearer_auth(TOKEN)
            .json(&json!({"name": "n4", "peer_url": format!("http://127.0.0.1:{peer_port}")}))
            .send()
            .await
            .expect("add");
        if r.status() != 503 || Instant::now() >= deadline {
            break r;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(r.status(), 200, "{:?}", r.text().await);
    // The learner catches up: it serves the earlier write locally.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let r = c
            .http
            .get(format!(
                "http://127.0.0.1:{client_port}/v1/kv/before-join?consistency=local"
            ))
            .send()
            .await;
        if matches!(r, Ok(ref r) if r.status() == 200) {
            break;
        }
        assert!(Instant::now() < deadline, "learner never caught up");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let r = c.post_with_token(1, "/v1/cluster/members/n4/promote").await;
    assert_eq!(r.status(), 200);
    let info = json_of(r).await;
    let roles: Vec<(String, String)> = info["members"]
        .as_array()
        .expect("members")
        .iter()
        .map(|m| {
            (
                m["name"].as_str().unwrap_or("").to_string(),
                m["role"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect();
    assert!(roles.contains(&("n4".into(), "voter".into())), "{roles:?}");
    // Remove an original member, through its own endpoint (the change
    // never reaches it, so it must not wait to apply it); writes keep
    // working.
    let remove_n3 = |at: String| {
        c.http
            .delete(format!("{at}/v1/cluster/members/n3"))
            .bearer_auth(TOKEN)
            .send()
    };
    let r = remove_n3(c.url(2)).await.expect("remove");
    assert_eq!(r.status(), 200);
    let names: Vec<String> = json_of(r).await["members"]
        .as_array()
        .expect("members")
        .iter()
        .filter_map(|m| m["name"].as_str().map(str::to_string))
        .collect();
    assert!(!names.contains(&"n3".to_string()), "{names:?}");
    // The removed node hears from no master any more, and says it is not
    // ready instead of taking a load balancer's traffic.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let r = c
            .http
            .get(format!("{}/readyz", c.url(2)))
            .send()
            .await
            .expect("readyz");
        if r.status() == 503 {
            let body = json_of(r).await;
            assert!(
                body["reason"]
                    .as_str()
                    .is_some_and(|w| w.contains("master")),
                "{body}"
            );
            break;
        }
        assert!(Instant::now() < deadline, "the removed node stayed ready");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Its log and its view of the cluster say why.
    let log = c.log_of(2);
    assert!(log.contains("no word from the master"), "{log}");
    let info = c
        .cluster_info(2)
        .await
        .expect("cluster info of the removed node");
    assert!(
        info["node_state_reason"]
            .as_str()
            .is_some_and(|w| w.contains("removed from the cluster")),
        "{info}"
    );
    // Removing it again (a retry whose first answer was lost) and promoting
    // a name no member has are both "no such member".
    let r = remove_n3(url.clone()).await.expect("remove again");
    assert_eq!(r.status(), 404);
    assert_eq!(json_of(r).await["error"]["code"], "member_not_found");
    let r = c.post_with_token(1, "/v1/cluster/members/n9/promote").await;
    assert_eq!(r.status(), 404);
    assert_eq!(json_of(r).await["error"]["code"], "member_not_found");
    c.kill9(2);
    assert_eq!(c.put(1, "after-change", "2").await.status(), 200);
    let info = c.cluster_info(1).await.expect("cluster");
    let names: Vec<&str> = info["members"]
        .as_array()
        .expect("members")
        .iter()
        .filter_map(|m| m["name"].as_str())
        .collect();
    assert_eq!(names.len(), 3, "{names:?}");
    assert!(!names.contains(&"n3"));
    drop(n4);
}

#[tokio::test(flavor = "multi_thread")]
async fn mastership_moves_to_a_named_member_on_request() {
    // A long lease: a switchover that waited it out would be far too slow.
    let c = Cluster::start(3, &["--lease", "5s"]).await;
    let old = c.wait_for_master(Duration::from_secs(20)).await;
    let target = (old + 1) % 3;
    // Asked at the third node, which passes it to the master.
    let via = (old + 2) % 3;
    let name = c.procs[target].name.clone();
    assert_eq!(c.put(via, "before", "1").await.status(), 200);
    let transfer = |to: &str| format!("/v1/cluster/members/{to}/transfer");

    let started = Instant::now();
    let r = c.post_with_token(via, &transfer(&name)).await;
    assert_eq!(r.status(), 200, "{:?}", r.text().await);
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "the switchover waited out a lease: {:?}",
        started.elapsed()
    );
    let info = json_of(r).await;
    assert_eq!(info["master"].as_str(), Some(name.as_str()), "{info}");
    let flagged: Vec<&str> = info["members"]
        .as_array()
        .expect("members")
        .iter()
        .filter(|m| m["is_master"] == true)
        .filter_map(|m| m["name"].as_str())
        .collect();
    assert_eq!(flagged, [name.as_str()], "{info}");
    assert!(c.log_of(old).contains("handing mastership over"));
    // Every node agrees, and writes go on, through the old master too.
    assert_eq!(c.wait_for_master(Duration::from_secs(10)).await, target);
    assert_eq!(c.put(old, "after", "2").await.status(), 200);
    assert_eq!(c.put(target, "after", "3").await.status(), 200);
    let (status, body) = c.get(via, "before", "").await.expect("get");
    assert_eq!((status, body.as_slice()), (200, b"1".as_slice()));

    // Naming the master again changes nothing.
    let r = c.post_with_token(old, &transfer(&name)).await;
    assert_eq!(r.status(), 200, "{:?}", r.text().await);
    assert_eq!(json_of(r).await["master"].as_str(), Some(name.as_str()));

    // Refusals, each with its own code; none moves mastership.
    let error_of = |v: Value| v["error"]["code"].as_str().unwrap_or_default().to_string();
    let r = c.post_with_token(via, &transfer("nobody")).await;
    assert_eq!(r.status(), 404);
    assert_eq!(error_of(json_of(r).await), "member_not_found");
    let r = c
        .http
        .post(format!("{}{}", c.url(via), transfer(&c.procs[old].name)))
        .send()
        .await
        .expect("transfer without a token");
    assert_eq!(r.status(), 401);
    assert_eq!(error_of(json_of(r).await), "unauthorized");
    // A learner cannot be master.
    let (n4, _, peer_port) = spawn_joining(&c, "n4");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let r = c
            .http
            .post(format!("{}/v1/cluster/members", c.url(via)))
            .bearer_auth(TOKEN)
            .json(&json!({"name": "n4", "peer_url": format!("http://127.0.0.1:{peer_port}")}))
            .send()
            .await
            .expect("add");
        if r.status() == 200 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "n4 was never added: {:?}",
            r.text().await
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let r = c.post_with_token(via, &transfer("n4")).await;
    assert_eq!(r.status(), 409);
    assert_eq!(error_of(json_of(r).await), "member_not_voter");
    let info = c.cluster_info(via).await.expect("cluster info");
    assert_eq!(info["master"].as_str(), Some(name.as_str()), "{info}");

    // And back, asked at the new master itself.
    let old_name = c.procs[old].name.clone();
    let r = c.post_with_token(target, &transfer(&old_name)).await;
    assert_eq!(r.status(), 200, "{:?}", r.text().await);
    assert_eq!(json_of(r).await["master"].as_str(), Some(old_name.as_str()));
    assert_eq!(c.put(via, "back", "4").await.status(), 200);
    drop(n4);
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_hands_mastership_over_and_exits_cleanly() {
    let mut c = Cluster::start(3, &["--lease", "5s"]).await;
    let m = c.wait_for_master(Duration::from_secs(20)).await;
    let other = (m + 1) % 3;
    assert_eq!(c.put(other, "before", "1").await.status(), 200);
    let status = c.terminate(m);
    assert!(status.success(), "exit status {status:?}:\n{}", c.log_of(m));
    assert!(
        c.log_of(m).contains("handing mastership over"),
        "{}",
        c.log_of(m)
    );
    // With a 5 s lease, an ordinary failover would take longer than this.
    let started = Instant::now();
    let r = c
        .http
        .put(format!("{}/v1/kv/after", c.url(other)))
        .body("2")
        .send()
        .await
        .expect("put");
    assert_eq!(r.status(), 200);
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "the handoff did not spare a lease-long wait: {:?}",
        started.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn metrics_expose_requests_proposals_batches_commits_fsyncs_and_master_changes() {
    let c = Cluster::start(3, &[]).await;
    let m = c.wait_for_master(Duration::from_secs(20)).await;
    for i in 0..5 {
        assert_eq!(c.put(m, &format!("m/{i}"), "x").await.status(), 200);
    }
    let text = c.metrics_text(m).await;
    for name in [
        "phxkv_http_requests_total{",
        "phxkv_http_request_duration_seconds",
        "phxkv_proposals_total",
        "phxkv_batch_commands",
        "phxkv_commit_latency_seconds",
        "phxkv_fsync_duration_seconds",
        "phxkv_master_changes_total",
        "phxkv_is_master 1",
    ] {
        assert!(text.contains(name), "{name} missing from /metrics:\n{text}");
    }
    let proposals: f64 = text
        .lines()
        .find(|l| l.starts_with("phxkv_proposals_total "))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .expect("proposals value");
    assert!(proposals >= 5.0, "{proposals}");
}

#[tokio::test(flavor = "multi_thread")]
async fn removing_the_master_hands_mastership_over_first() {
    // A long lease: without a handoff the cluster would wait it out.
    let c = Cluster::start(3, &["--lease", "10s"]).await;
    let master = c.wait_for_master(Duration::from_secs(20)).await;
    let name = c.procs[master].name.clone();
    let other = (master + 1) % 3;
    let r = c
        .http
        .delete(format!("{}/v1/cluster/members/{name}", c.url(other)))
        .bearer_auth(TOKEN)
        .send()
        .await
        .expect("remove");
    assert_eq!(r.status(), 200, "{:?}", r.text().await);
    let info = json_of(r).await;
    let names: Vec<&str> = info["members"]
        .as_array()
        .expect("members")
        .iter()
        .filter_map(|m| m["name"].as_str())
        .collect();
    assert!(!names.contains(&name.as_str()), "{names:?}");
    assert!(
        c.log_of(master).contains("handing mastership over"),
        "the master handed over before its removal"
    );
    // The survivors have a master and take writes.
    assert_eq!(c.put(other, "after-removal", "1").await.status(), 200);
    let info = c.cluster_info(other).await.expect("cluster info");
    assert_ne!(info["master"].as_str(), Some(name.as_str()));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_write_retried_at_another_node_with_its_idempotency_key_applies_once() {
    // A client that got no answer (a 504: the outcome is unknown) retries
    // elsewhere with the same Idempotency-Key: the write lands once, and the
    // retry reports the first outcome.
    let c = Cluster::start(3, &[]).await;
    let put = |i: usize, value: &'static str| {
        let url = format!("{}/v1/kv/once", c.url(i));
        let http = c.http.clone();
        async move {
            http.put(url)
                .header("idempotency-key", "0b7a9d3e-retry")
                .body(value)
                .send()
                .await
                .expect("put")
        }
    };
    let first: Value = put(0, "v").await.json().await.expect("json");
    let retry = put(1, "v").await;
    assert_eq!(retry.status(), 200);
    let retry: Value = retry.json().await.expect("json");
    assert_eq!(retry, first, "the retry reports the first outcome");
    assert_eq!(first["version"], 1);
    let r = c
        .http
        .get(format!("{}/v1/kv/once", c.url(2)))
        .send()
        .await
        .expect("get");
    assert_eq!(r.headers()["x-phxkv-version"], "1", "applied once");
    let reused = put(2, "different").await;
    assert_eq!(reused.status(), 422);
}

/// A restarted replica learns what its peers decode from their answers to
/// the digest report it sends as it starts, so it takes a prefix delete
/// (an op proposed only once every member said it decodes it) as soon as
/// it is ready, instead of answering 503 until the other follower's next
/// report, up to 2 s later.
#[tokio::test(flavor = "multi_thread")]
async fn a_restarted_replica_knows_its_peers_features_as_soon_as_it_is_ready() {
    let mut c = Cluster::start(3, &[]).await;
    let f = follower(&c).await;
    assert_eq!(c.put(f, "app/a", "1").await.status(), 200);
    c.kill9(f);
    c.spawn(f);
    let ready = format!("{}/readyz", c.url(f));
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let r = c
            .http
            .get(&ready)
            .timeout(Duration::from_secs(1))
            .send()
            .await;
        if r.is_ok_and(|r| r.status() == 200) {
            break;
        }
        assert!(Instant::now() < deadline, "{}", c.log_of(f));
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let r = c
        .http
        .delete(format!("{}/v1/kv?prefix=app/", c.url(f)))
        .send()
        .await
        .expect("delete");
    let status = r.status();
    let body = r.text().await.unwrap_or_default();
    assert_eq!(status, 200, "{body}");
    let deleted: Value = serde_json::from_str(&body).expect("JSON");
    assert_eq!(deleted["deleted"], 1, "{deleted}");
}

/// The value of an unlabelled gauge in node `i`'s metrics.
async fn gauge(c: &Cluster, i: usize, name: &str) -> Option<f64> {
    c.metrics_text(i)
        .await
        .lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
}

/// A watch replays a history longer than one page of it, in order and
/// without a gap, then follows live changes; and the work behind a watch
/// ends when its client goes away, even one on a prefix nothing is
/// written to (which would otherwise wait for a matching change forever).
#[tokio::test(flavor = "multi_thread")]
async fn a_watch_replays_a_long_history_and_ends_with_its_client() {
    let c = Cluster::start(3, &[]).await;
    let f = follower(&c).await;
    let mut first = None;
    for i in 0..600 {
        let r = c.put(f, &format!("w/{:03}", i % 50), &i.to_string()).await;
        assert_eq!(r.status(), 200);
        first.get_or_insert(json_of(r).await["revision"].as_u64().expect("revision"));
    }
    let first = first.expect("a revision");
    let mut watch = c
        .http
        .get(format!(
            "{}/v1/watch?prefix=w/&start_revision={first}",
            c.url(f)
        ))
        .timeout(Duration::from_secs(60))
        .send()
        .await
        .expect("watch");
    assert_eq!(watch.status(), 200);
    let mut text = String::new();
    let mut ids = Vec::new();
    let mut live_sent = false;
    while ids.len() < 601 {
        let chunk = tokio::time::timeout(Duration::from_secs(10), watch.chunk())
            .await
            .expect("the next events in time")
            .expect("the stream")
            .expect("open");
        text.push_str(&String::from_utf8_lossy(&chunk));
        while let Some(end) = text.find("\n\n") {
            let event: String = text.drain(..end + 2).collect();
            if let Some(id) = event.lines().find_map(|l| l.strip_prefix("id: ")) {
                ids.push(id.parse::<u64>().expect("a revision"));
            }
        }
        if ids.len() >= 600 && !live_sent {
            assert_eq!(c.put(f, "w/live", "1").await.status(), 200);
            live_sent = true;
        }
    }
    let expected: Vec<u64> = (first..first + 601).collect();
    assert_eq!(ids, expected, "every revision once, in order");
    assert_eq!(gauge(&c, f, "phxkv_watches").await, Some(1.0));
    drop(watch);
    // Changes go on elsewhere; none of them is for a watch.
    let none_open = || async {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            assert_eq!(c.put(f, "elsewhere", "x").await.status(), 200);
            let open = gauge(&c, f, "phxkv_watches").await;
            if open == Some(0.0) || Instant::now() >= deadline {
                return open;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    assert_eq!(
        none_open().await,
        Some(0.0),
        "the watch ended with its client"
    );

    let quiet = c
        .http
        .get(format!("{}/v1/watch?prefix=nobody-writes-here/", c.url(f)))
        .send()
        .await
        .expect("watch");
    assert_eq!(quiet.status(), 200);
    assert_eq!(gauge(&c, f, "phxkv_watches").await, Some(1.0));
    drop(quiet);
    assert_eq!(
        none_open().await,
        Some(0.0),
        "the quiet watch ended with its client"
    );
}

/// Sum of a metric's samples whose line contains `filter`.
fn metric_sum(text: &str, name: &str, filter: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(name) && l.contains(filter))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[tokio::test(flavor = "multi_thread")]
async fn peers_speak_json_and_refuse_anything_else() {
    let mut c = Cluster::start(3, &[]).await;
    let m = c.wait_for_master(Duration::from_secs(20)).await;
    assert_eq!(c.put((m + 1) % 3, "k0", "v").await.status(), 200);

    // The peer port documents itself, without a token.
    let doc: Value = c
        .http
        .get(format!("{}/peer/v1/openapi.json", c.peer_url(0)))
        .send()
        .await
        .expect("peer document")
        .json()
        .await
        .expect("JSON");
    assert_eq!(doc["info"]["title"], "phxkv peer API");
    assert!(doc["components"]["schemas"]["Message"].is_object());

    // A person can ask a peer route with curl-like tools and read the answer.
    let r = c
        .http
        .post(format!("{}/peer/v1/read_index", c.peer_url(m)))
        .bearer_auth(TOKEN)
        .send()
        .await
        .expect("read_index");
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["accept-post"], "application/json");
    let answer: Value = r.json().await.expect("JSON answer");
    assert!(answer["index"].as_u64().is_some(), "{answer}");
    // Bodies in any other encoding (the binary one earlier versions
    // offered included) are refused with a JSON error.
    for ct in ["text/plain", "application/x-phxkv-postcard"] {
        let r = c
            .http
            .post(format!("{}/peer/v1/messages", c.peer_url(m)))
            .bearer_auth(TOKEN)
            .header("content-type", ct)
            .body(vec![0u8])
            .send()
            .await
            .expect("messages");
        assert_eq!(r.status(), 415, "{ct}");
        let err: Value = r.json().await.expect("JSON error");
        assert_eq!(err["error"]["code"], "unsupported_media_type");
    }

    // Everything between peers is JSON.
    for i in 0..3 {
        let text = c.metrics_text(i).await;
        let name = "phxkv_peer_message_bytes_sent_total";
        assert!(metric_sum(&text, name, "json") > 0.0, "node {i}:\n{text}");
    }

    // A node still configured with the removed option starts, says in its
    // log that it ignores it, and serves as before.
    c.env
        .push(("PHXKV_PEER_ENCODING".to_string(), "compact".to_string()));
    c.terminate(0);
    c.spawn(0);
    c.env.pop();
    c.wait_for_master(Duration::from_secs(20)).await;
    for n in 0..30 {
        let r = c.put(n % 3, &format!("k{n}"), "value").await;
        assert_eq!(r.status(), 200, "put through node {}", n % 3);
    }
    for n in 0..30 {
        let (status, body) = c.get((n + 1) % 3, &format!("k{n}"), "").await.expect("get");
        assert_eq!((status, body.as_slice()), (200, b"value".as_slice()));
    }
    let log = c.log_of(0);
    assert!(
        log.contains("--peer-encoding compact (PHXKV_PEER_ENCODING) is ignored"),
        "{log}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn large_writes_compact_the_log_by_size_before_the_instance_count() {
    // One key overwritten with large values: the store stays small, the log
    // would not. Ten thousand instances would never come in this test.
    let c = Cluster::start(
        3,
        &[
            "--snapshot-every",
            "10000",
            "--snapshot-every-bytes",
            "1048576",
        ],
    )
    .await;
    let m = c.wait_for_master(Duration::from_secs(20)).await;
    let big = "v".repeat(200_000);
    for _ in 0..30 {
        assert_eq!(c.put(m, "big", &big).await.status(), 200);
    }
    // Every replica counts what it applied and compacts on its own.
    let deadline = Instant::now() + Duration::from_secs(20);
    for i in 0..c.procs.len() {
        loop {
            let text = c.metrics_text(i).await;
            let taken = metric_sum(&text, "phxkv_snapshots_total", "kind=\"taken\"");
            let entries = metric_sum(&text, "phxkv_log_entries", "");
            // 6 MB were written: at least one compaction at each 1 MiB,
            // and never more than about 1 MiB of instances left behind.
            if taken >= 2.0 && entries < 15.0 {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "replica {i}: {taken} snapshots taken, {entries} log entries"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    assert_eq!(c.get(m, "big", "").await.map(|(s, _)| s), Some(200));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_replica_whose_volume_is_nearly_full_refuses_writes_takes_deletes_and_compacts_early() {
    let mut c = Cluster::start(3, &[]).await;
    let m = c.wait_for_master(Duration::from_secs(20)).await;
    let f = (m + 1) % c.procs.len();
    assert_eq!(c.put(m, "d/1", "one").await.status(), 200);
    assert_eq!(c.put(m, "d/2", "two").await.status(), 200);
    let free = |text: String| metric_sum(&text, "phxkv_disk_free_bytes", "");
    assert!(
        free(c.metrics_text(f).await) > 0.0,
        "the free space is read"
    );

    // The follower comes back keeping more free than any volume has.
    c.terminate(f);
    c.env
        .push(("PHXKV_DISK_RESERVE_BYTES".into(), (1u64 << 60).to_string()));
    c.spawn(f);
    let deadline = Instant::now() + Duration::from_secs(20);
    while c.get(f, "d/2", "?consistency=local").await.map(|(s, _)| s) != Some(200) {
        assert!(Instant::now() < deadline, "the follower never came back");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let refused = c.put(f, "d/3", "three").await;
    assert_eq!(refused.status(), 507);
    let body = json_of(refused).await;
    assert_eq!(body["error"]["code"], "disk_full", "{body}");
    let message = body["error"]["message"].as_str().unwrap_or_default();
    assert!(message.contains("--disk-reserve-bytes"), "{message}");
    let txn = c
        .http
        .post(format!("{}/v1/txn", c.url(f)))
        .bearer_auth(TOKEN)
        .json(&json!({"success": [{"put": {"key": "ZC8z", "value": "dGhyZWU="}}]}))
        .send()
        .await
        .expect("txn");
    assert_eq!(txn.status(), 507);
    assert_eq!(c.get(m, "d/3", "").await.map(|(s, _)| s), Some(404));

    // A delete adds nothing and is taken; the master, whose volume has
    // room, still takes writes (each replica admits by its own).
    let del = c
        .http
        .delete(format!("{}/v1/kv/d/1", c.url(f)))
        .bearer_auth(TOKEN)
        .send()
        .await
        .expect("delete");
    assert_eq!(del.status(), 200);
    assert_eq!(c.get(m, "d/1", "").await.map(|(s, _)| s), Some(404));
    assert_eq!(c.put(m, "d/4", "four").await.status(), 200);

    let text = c.metrics_text(f).await;
    assert_eq!(metric_sum(&text, "phxkv_disk_full_refusals_total", ""), 2.0);

    // Compaction is what gives a full volume space back, so the tight
    // follower compacts once a log segment's worth (16 MiB) was applied,
    // long before the 64 MiB (or 10,000 instances) the master waits for.
    let taken = |text: String| metric_sum(&text, "phxkv_snapshots_total", "kind=\"taken\"");
    let before = taken(c.metrics_text(f).await);
    let big = "b".repeat(512 << 10);
    for i in 0..36 {
        assert_eq!(c.put(m, &format!("big/{i}"), &big).await.status(), 200);
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    while taken(c.metrics_text(f).await) <= before {
        assert!(
            Instant::now() < deadline,
            "the tight follower never compacted its log"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        taken(c.metrics_text(m).await),
        0.0,
        "the master, with room, keeps its log until the usual threshold"
    );
    let log = c.log_of(f);
    assert!(
        log.contains("the data volume is nearly full"),
        "the replica says why it refuses writes"
    );
    assert!(
        log.contains("the data volume is smaller than a replica needs"),
        "the replica says its volume can never hold the reserve"
    );
    assert!(
        !c.log_of(m).contains("smaller than a replica needs"),
        "a volume with room draws no such error"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_write_is_not_sent_again_to_another_master_past_the_resend_window() {
    // A write timeout far above the 5 s resend window, and a lease that
    // keeps the cluster without a master for longer than that.
    let mut c = Cluster::start(3, &["--write-timeout", "30s", "--lease", "7s"]).await;
    let m = c.wait_for_master(Duration::from_secs(30)).await;
    let f = (m + 1) % c.procs.len();
    assert_eq!(c.put(f, "before", "1").await.status(), 200);
    c.kill9(m);

    // The follower still names the dead master and keeps sending the write
    // to it, then would send it to the next master once one is elected
    // (after the 7 s lease), where a copy could land after the request-id
    // table forgot the first. It stops at 5 s instead.
    let started = Instant::now();
    let r = c
        .http
        .put(format!("{}/v1/kv/during", c.url(f)))
        .bearer_auth(TOKEN)
        .body("2")
        .timeout(Duration::from_secs(40))
        .send()
        .await
        .expect("an answer");
    let took = started.elapsed();
    assert_eq!(r.status(), 504, "{:?}", r.text().await);
    let body = json_of(r).await;
    let message = body["error"]["message"].as_str().unwrap_or_default();
    assert!(message.contains("not sent again after 5 s"), "{message}");
    assert!(
        took >= Duration::from_secs(5) && took < Duration::from_secs(20),
        "answered after {took:?}"
    );

    // The cluster elects another master and takes writes again.
    let m2 = c.wait_for_master(Duration::from_secs(30)).await;
    assert_ne!(m2, m);
    assert_eq!(c.put(f, "after", "3").await.status(), 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn writes_past_the_store_quota_are_refused_and_deletes_make_room() {
    let c = Cluster::start(3, &["--quota-bytes", "1600"]).await;
    let m = c.wait_for_master(Duration::from_secs(20)).await;
    let f = (m + 1) % c.procs.len();
    // The master's lease fence is the store's first record: 182 bytes (14
    // of key, 24 of value and 144 for the key's bookkeeping).
    let held = |text: String| metric_sum(&text, "phxkv_store_bytes", "");
    let deadline = Instant::now() + Duration::from_secs(10);
    while held(c.metrics_text(m).await) != 182.0 {
        assert!(Instant::now() < deadline, "no lease fence on the master");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let big = "v".repeat(400);
    // 547 bytes each (key, value and 144 for the key's bookkeeping): two
    // fit beside the fence, a third would not.
    assert_eq!(c.put(m, "q/1", &big).await.status(), 200);
    assert_eq!(c.put(m, "q/2", &big).await.status(), 200);
    let refused = c.put(m, "q/3", &big).await;
    assert_eq!(refused.status(), 507);
    let body = json_of(refused).await;
    assert_eq!(body["error"]["code"], "quota_exceeded", "{body}");
    let message = body["error"]["message"].as_str().unwrap_or_default();
    assert!(message.contains("quota of 1600 bytes"), "{message}");
    assert_eq!(c.get(m, "q/3", "").await.map(|(s, _)| s), Some(404));
    // Overwriting a value with one no larger adds nothing: taken.
    assert_eq!(c.put(m, "q/2", &big).await.status(), 200);
    // A transaction that adds as much is refused the same way.
    let txn = c
        .http
        .post(format!("{}/v1/txn", c.url(m)))
        .bearer_auth(TOKEN)
        .json(&json!({"success": [{"put": {"key": "cS8z", "value": "dnZ2".repeat(134)}}]}))
        .send()
        .await
        .expect("txn");
    assert_eq!(txn.status(), 507);

    // A small write still fits; a delete is always taken and makes room.
    assert_eq!(c.put(m, "q/s", "x").await.status(), 200);
    let del = c
        .http
        .delete(format!("{}/v1/kv/q/1", c.url(m)))
        .bearer_auth(TOKEN)
        .send()
        .await
        .expect("delete");
    assert_eq!(del.status(), 200);
    assert_eq!(c.put(m, "q/3", &big).await.status(), 200);

    // A follower checks against what it has applied: once it has caught
    // up with the master, it refuses the next large write too.
    let on_master = held(c.metrics_text(m).await);
    // The fence, q/2, q/s and q/3: 182 + 547 + 148 + 547.
    assert_eq!(on_master, 1424.0);
    let deadline = Instant::now() + Duration::from_secs(10);
    while held(c.metrics_text(f).await) != on_master {
        assert!(Instant::now() < deadline, "the follower never caught up");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(c.put(f, "q/4", &big).await.status(), 507);
    let text = c.metrics_text(m).await;
    assert_eq!(metric_sum(&text, "phxkv_quota_refusals_total", ""), 2.0);
    assert_eq!(metric_sum(&text, "phxkv_store_quota_bytes", ""), 1600.0);
}

/// Every client write reaches the log as a `once` op naming a slot below
/// which all was chosen (see `phxkv::kv::dedup`), whichever replica took
/// it and with or without an `Idempotency-Key`, and is chosen above that
/// slot: read back from the master's own log on disk.
#[tokio::test(flavor = "multi_thread")]
async fn client_writes_reach_the_log_as_once_ops_chosen_above_their_after() {
    use phxkv::kv::Op;
    use phxkv::paxos::Value as Chosen;
    use phxkv::storage::{DiskStore, Identity};

    let mut c = Cluster::start(3, &[]).await;
    let m = c.wait_for_master(Duration::from_secs(20)).await;
    let f = (m + 1) % 3;
    // A replica proposes `once` ops once it has heard that every member
    // decodes them: the master's view lists every member's features, and
    // members report them to each other every 2 s.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let all_once = c.cluster_info(m).await.is_some_and(|info| {
            info["members"].as_array().is_some_and(|ms| {
                ms.len() == 3
                    && ms.iter().all(|x| {
                        x["peer_features"]
                            .as_array()
                            .is_some_and(|fs| fs.iter().any(|f| f == "once"))
                    })
            })
        });
        if all_once {
            break;
        }
        assert!(Instant::now() < deadline, "features never known");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(c.put(m, "once/master", "a").await.status(), 200);
    assert_eq!(c.put(f, "once/follower", "b").await.status(), 200);
    let keyed = c
        .http
        .put(format!("{}/v1/kv/once/keyed", c.url(f)))
        .header("idempotency-key", "once-keyed-1")
        .body("c")
        .send()
        .await
        .expect("put");
    assert_eq!(keyed.status(), 200);

    c.kill9(m);
    let dir = &c.procs[m].data_dir;
    let identity: Value =
        serde_json::from_slice(&std::fs::read(dir.join("identity.json")).expect("identity.json"))
            .expect("identity json");
    let identity = Identity {
        node: identity["node"].as_str().expect("node").into(),
        cluster: identity["cluster"].as_str().expect("cluster").into(),
    };
    let store = DiskStore::open(dir, &identity).expect("open the master's data");
    let (recovered, _) = store.recover_streaming().expect("recover");
    let mut found = Vec::new();
    for (index, entry) in &recovered.entries {
        let Chosen::Batch(cmds) = &entry.value else {
            continue;
        };
        for cmd in cmds.iter() {
            let (after, op) = match &cmd.op {
                Op::Once { after, op } => (Some(*after), &**op),
                op => (None, op),
            };
            let op = match op {
                Op::Anonymous { op } => &**op,
                op => op,
            };
            if let Op::Put { key, .. } = op
                && key.starts_with(b"once/")
            {
                found.push((String::from_utf8_lossy(key).into_owned(), after, *index));
            }
        }
    }
    found.sort();
    let keys: Vec<&str> = found.iter().map(|(k, ..)| k.as_str()).collect();
    assert_eq!(
        keys,
        ["once/follower", "once/keyed", "once/master"],
        "each write chosen once: {found:?}"
    );
    for (key, after, index) in &found {
        let after = after.unwrap_or_else(|| panic!("{key} was not proposed as a once op"));
        assert!(
            after >= 1 && after < *index,
            "{key}: after {after}, chosen at {index}"
        );
    }
}
