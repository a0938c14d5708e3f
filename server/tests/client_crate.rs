//! The Rust client crate (`phxkv-client`) against a real cluster: typed
//! calls, failover past a dead endpoint and a killed master, a watch that
//! resumes on another node without losing or repeating a change, leases
//! kept alive in the background, locks and elections.

mod common;

use std::time::{Duration, Instant};

use common::{Cluster, TOKEN, free_port};
use phxkv_client::{Client, Config, Error, PutOptions, WatchKind, WatchOptions};

fn client(endpoints: Vec<String>) -> Client {
    Client::new(
        Config::new(endpoints)
            .timeout(Duration::from_secs(3))
            // A master kill costs an election (lease 1 s plus timeouts).
            .retry_for(Duration::from_secs(20))
            .token(Some(TOKEN.into())),
    )
    .expect("client")
}

fn urls(c: &Cluster) -> Vec<String> {
    (0..c.procs.len()).map(|i| c.url(i)).collect()
}

fn code(e: &Error) -> Option<&str> {
    e.code()
}

async fn put_leased(api: &Client, key: &[u8], lease: u64) {
    let opts = PutOptions {
        if_version: None,
        lease: Some(lease),
    };
    api.put(key, b"up".to_vec(), opts).await.expect("put");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn typed_calls_fail_over_and_watches_resume_elsewhere() {
    let mut c = Cluster::start(3, &[]).await;
    let master = c.wait_for_master(Duration::from_secs(20)).await;
    // A dead endpoint first: every call still gets through.
    let mut endpoints = vec![format!("http://127.0.0.1:{}", free_port())];
    endpoints.extend(urls(&c));
    let api = client(endpoints);

    let w = api
        .put(b"k/a", b"1".to_vec(), PutOptions::default())
        .await
        .expect("put");
    assert_eq!(w.version, 1);
    let kv = api.get(b"k/a").await.expect("get").expect("the key");
    assert_eq!(
        (kv.value.as_slice(), kv.version, kv.mod_revision),
        (&b"1"[..], 1, w.revision)
    );
    assert_eq!(api.get(b"k/none").await.expect("get"), None);
    // Compare-and-swap: the API's code and the key's version come back.
    let stale = api
        .put(
            b"k/a",
            b"2".to_vec(),
            PutOptions {
                if_version: Some(7),
                lease: None,
            },
        )
        .await
        .expect_err("a stale version");
    assert_eq!(code(&stale), Some("compare_failed"), "{stale}");
    // Paging through a listing.
    for k in ["k/b", "k/c", "k/d"] {
        api.put(k.as_bytes(), b"v".to_vec(), PutOptions::default())
            .await
            .expect("put");
    }
    let first = api.list(b"k/", None, 3).await.expect("list");
    assert!(first.more);
    let rest = api
        .list(b"k/", first.next_after.as_deref(), 3)
        .await
        .expect("list");
    let keys: Vec<Vec<u8>> = first
        .kvs
        .iter()
        .chain(&rest.kvs)
        .map(|kv| kv.key.clone())
        .collect();
    assert_eq!(
        keys,
        [b"k/a", b"k/b", b"k/c", b"k/d"]
            .map(|k| k.to_vec())
            .to_vec()
    );
    assert!(!rest.more);
    let d = api.delete(b"k/d", None).await.expect("delete");
    assert!(d.deleted);
    assert!(!api.delete(b"k/d", None).await.expect("delete").deleted);
    // A prefix in rounds of two: k/a and k/b at one revision, then k/c.
    let first = api
        .delete_prefix(b"k/", Some(2))
        .await
        .expect("delete prefix");
    assert_eq!((first.deleted, first.more), (2, true));
    let last = api
        .delete_prefix(b"k/", Some(2))
        .await
        .expect("delete prefix");
    assert_eq!(
        (last.deleted, last.more, last.revision),
        (1, false, first.revision + 1)
    );
    assert!(
        api.list(b"k/", None, 10)
            .await
            .expect("list")
            .kvs
            .is_empty()
    );
    assert!(matches!(
        api.put(b"", Vec::new(), PutOptions::default()).await,
        Err(Error::Config(_))
    ));

    // A watch through a follower, which is then killed: the watch goes on
    // through another node from the revision after the last it gave.
    let follower = (0..3).find(|i| *i != master).expect("a follower");
    let mut order = vec![c.url(follower)];
    order.extend((0..3).filter(|i| *i != follower).map(|i| c.url(i)));
    let mut watch = client(order)
        .watch(WatchOptions {
            prefix: b"w/".to_vec(),
            start_revision: None,
        })
        .await
        .expect("watch");
    let mut written = Vec::new();
    for i in 0..3 {
        let key = format!("w/{i}");
        written.push(
            api.put(key.as_bytes(), b"x".to_vec(), PutOptions::default())
                .await
                .expect("put")
                .revision,
        );
    }
    for want in &written[..3] {
        let ev = watch.next().await.expect("an event");
        assert_eq!((ev.kind, ev.revision), (WatchKind::Put, *want));
    }
    c.kill9(follower);
    for i in 3..6 {
        let key = format!("w/{i}");
        written.push(
            api.put(key.as_bytes(), b"x".to_vec(), PutOptions::default())
                .await
                .expect("put")
                .revision,
        );
    }
    written.push(api.delete(b"w/0", None).await.expect("delete").revision);
    for (n, want) in written[3..].iter().enumerate() {
        let ev = tokio::time::timeout(Duration::from_secs(30), watch.next())
            .await
            .expect("the watch resumed within 30 s")
            .expect("an event");
        assert_eq!(ev.revision, *want, "event {} after the kill", n + 1);
    }
    assert_eq!(watch.last_revision(), written.last().copied());

    // The master killed: a write retries through the election, and a
    // lease kept alive over a stream survives it (the stream is resumed
    // elsewhere if it was on the master).
    c.spawn(follower);
    let lease = api.grant(6, None).await.expect("grant");
    put_leased(&api, b"k/leased", lease.id).await;
    let keeper = api.keep_alive(&[(lease.id, lease.ttl_secs)]);
    c.kill9(master);
    let w = api
        .put(b"k/after", b"y".to_vec(), PutOptions::default())
        .await
        .expect("a put across the master's death");
    assert!(w.revision > *written.last().expect("revisions"));
    tokio::time::sleep(Duration::from_secs(8)).await;
    assert_eq!(keeper.lost_now(), None);
    assert!(
        api.get(b"k/leased").await.expect("get").is_some(),
        "the key of a lease kept alive across the master's death"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leases_kept_alive_in_the_background_locks_and_elections() {
    let c = Cluster::start(3, &[]).await;
    c.wait_for_master(Duration::from_secs(20)).await;
    let api = client(urls(&c));

    // A key on a 2 s lease outlives several TTLs while kept alive, and is
    // deleted once the keep-alive stops.
    let lease = api.grant(2, None).await.expect("grant");
    put_leased(&api, b"svc/a", lease.id).await;
    let keeper = api.keep_alive(&[(lease.id, lease.ttl_secs)]);
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(keeper.lost_now(), None);
    assert!(keeper.streaming(), "renewals go over one stream");
    assert!(
        api.get(b"svc/a").await.expect("get").is_some(),
        "kept alive"
    );
    let status = api.lease(lease.id, true).await.expect("lease");
    assert_eq!(status.key_bytes().expect("keys"), vec![b"svc/a".to_vec()]);
    drop(keeper);
    let deadline = Instant::now() + Duration::from_secs(30);
    while api.get(b"svc/a").await.expect("get").is_some() {
        assert!(Instant::now() < deadline, "the key outlived its lease");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let gone = api.keep_alive_once(lease.id).await.expect_err("expired");
    assert!(gone.is_not_found(), "{gone}");
    // A background keep-alive of a lease that is gone says so.
    let mut lost = api.keep_alive(&[(lease.id, 2)]);
    let why = tokio::time::timeout(Duration::from_secs(10), lost.lost())
        .await
        .expect("reported");
    assert!(why.contains("gone"), "{why}");

    // Locks: the second holder waits, and its fencing token is larger.
    let a = api.grant(10, None).await.expect("grant").id;
    let b = api.grant(10, None).await.expect("grant").id;
    let first = api.lock(b"jobs", a, None).await.expect("lock");
    let held = api
        .lock(b"jobs", b, Some(Duration::from_millis(300)))
        .await
        .expect_err("held by a");
    assert_eq!(code(&held), Some("lock_held"), "{held}");
    assert!(api.unlock(b"jobs", a).await.expect("unlock").released);
    let second = api
        .lock(b"jobs", b, Some(Duration::from_secs(5)))
        .await
        .expect("lock after the release");
    assert!(second.fencing_token > first.fencing_token);
    assert!(api.unlock(b"jobs", b).await.expect("unlock").released);

    // Elections: an observer sees each leader and each proclamation.
    let mut observe = api.observe(b"sched").await.expect("observe");
    assert_eq!(observe.next().await.expect("leader"), None);
    let leader = api
        .campaign(b"sched", a, b"host-a", None)
        .await
        .expect("campaign");
    assert_eq!((leader.lease, leader.value.as_slice()), (a, &b"host-a"[..]));
    let seen = observe.next().await.expect("leader").expect("a leader");
    assert_eq!(seen.value, b"host-a");
    let waited = api
        .campaign(b"sched", b, b"host-b", Some(Duration::from_millis(300)))
        .await
        .expect_err("a leads");
    assert_eq!(code(&waited), Some("lock_held"), "{waited}");
    api.proclaim(b"sched", a, b"host-a:2")
        .await
        .expect("proclaim");
    let seen = observe.next().await.expect("leader").expect("a leader");
    assert_eq!((seen.lease, seen.value.as_slice()), (a, &b"host-a:2"[..]));
    let not = api
        .proclaim(b"sched", b, b"x")
        .await
        .expect_err("b does not lead");
    assert_eq!(code(&not), Some("not_leader"), "{not}");
    assert!(api.resign(b"sched", a).await.expect("resign").released);
    assert_eq!(observe.next().await.expect("leader"), None);
    let next = api
        .campaign(b"sched", b, b"host-b", Some(Duration::from_secs(5)))
        .await
        .expect("b leads");
    assert!(next.term_revision > leader.term_revision);
    let seen = observe.next().await.expect("leader").expect("a leader");
    assert_eq!(seen.value, b"host-b");
    assert_eq!(api.leader(b"sched").await.expect("leader"), Some(next));
}

/// A wait longer than one request keeps its place in line: a waiter that
/// came later does not get the lock first, and a wait that ends without
/// the lock leaves the line.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_lock_wait_keeps_its_place_in_line() {
    let c = Cluster::start(3, &[]).await;
    c.wait_for_master(Duration::from_secs(20)).await;
    let api = Client::new(
        Config::new(urls(&c))
            .timeout(Duration::from_secs(3))
            .retry_for(Duration::from_secs(20))
            .lock_poll(Duration::from_secs(1))
            .token(Some(TOKEN.into())),
    )
    .expect("client");
    let [a, b, late] = [0; 3].map(|_| api.grant(30, None));
    let (a, b, late) = (
        a.await.expect("grant").id,
        b.await.expect("grant").id,
        late.await.expect("grant").id,
    );
    api.lock(b"q", a, None).await.expect("lock");
    let waiter = |lease: u64| {
        let api = api.clone();
        tokio::spawn(async move { api.lock(b"q", lease, Some(Duration::from_secs(20))).await })
    };
    let first = waiter(b);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let second = waiter(late);
    // By now the first waiter has asked again twice; rejoining at the back
    // would have put it behind the second.
    tokio::time::sleep(Duration::from_millis(2000)).await;
    assert!(api.unlock(b"q", a).await.expect("unlock").released);
    let locked = first
        .await
        .expect("joins")
        .expect("the first waiter's lock");
    assert_eq!(locked.lease, b);
    assert!(!second.is_finished(), "the second waits for the first");
    assert!(api.unlock(b"q", b).await.expect("unlock").released);
    let locked = second
        .await
        .expect("joins")
        .expect("the second waiter's lock");
    assert_eq!(locked.lease, late);

    // A wait of several requests that ends without the lock leaves no place
    // behind: the lease does not hold the lock later.
    let gave_up = api
        .lock(b"q", b, Some(Duration::from_millis(2500)))
        .await
        .expect_err("held by the second waiter");
    assert_eq!(code(&gave_up), Some("lock_held"), "{gave_up}");
    let status = api.lease(b, true).await.expect("lease");
    assert_eq!(status.key_bytes().expect("keys"), Vec::<Vec<u8>>::new());
}

/// Against a server of an earlier version, which refuses `keep_place` as an
/// unknown field, a long wait still works: each request rejoins the line,
/// as before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_lock_wait_works_with_a_server_that_cannot_keep_places() {
    use axum::Json;
    use axum::http::StatusCode;
    use serde_json::{Value, json};
    use std::sync::{Arc, Mutex};

    /// The lock request of the earlier version.
    #[derive(serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Earlier {
        lease: u64,
        wait_ms: Option<u64>,
    }
    let seen: Arc<Mutex<Vec<Value>>> = Arc::default();
    let app = axum::Router::new().route(
        "/v1/lock/{*name}",
        axum::routing::post({
            let seen = seen.clone();
            move |body: String| async move {
                let v: Value = serde_json::from_str(&body).unwrap_or_default();
                seen.lock().expect("lock").push(v);
                let (status, code, message) = match serde_json::from_str::<Earlier>(&body) {
                    Err(e) => (
                        StatusCode::BAD_REQUEST,
                        "invalid_argument",
                        format!("invalid request body: {e}"),
                    ),
                    Ok(_) => (
                        StatusCode::CONFLICT,
                        "lock_held",
                        "\"q\" is held by another lease".to_owned(),
                    ),
                };
                (
                    status,
                    Json(json!({"error": {"code": code, "message": message}})),
                )
            }
        })
        .delete(|| async { Json(json!({"released": false})) }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("addr"));
    tokio::spawn(async move { axum::serve(listener, app).await });
    let api = Client::new(Config::new([url]).lock_poll(Duration::from_secs(1))).expect("client");
    let e = api
        .lock(b"q", 7, Some(Duration::from_millis(2500)))
        .await
        .expect_err("held");
    assert_eq!(code(&e), Some("lock_held"), "{e}");
    let seen = seen.lock().expect("lock").clone();
    // One refused request with keep_place, then requests without it.
    assert_eq!(seen[0]["keep_place"], true, "{seen:?}");
    assert!(seen.len() >= 3, "{seen:?}");
    assert!(
        seen[1..].iter().all(|b| b.get("keep_place").is_none()),
        "{seen:?}"
    );
}
