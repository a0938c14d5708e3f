//! Leader election against a fake API server, in paused test time: a lease
//! is created when absent, left alone while another holds it, taken over
//! once it expired (judged by when this candidate saw it change, not by
//! the holder's clock), renewed by its holder, handed over on release; the
//! leader stops its work when it cannot renew past the deadline, and
//! releases the lease on shutdown.

mod support;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use phxkv_operator::leader::{self, Attempt, Elector, LeaseConfig};
use phxkv_operator::metrics::{OperatorMetrics, Role};
use serde_json::json;
use support::{FakeApi, LEASE, LEASES, lease, until};
use tokio::time::Instant;

fn elector(api: &FakeApi, identity: &str) -> Elector {
    let config = LeaseConfig::new("phxkv-operator", "ops", identity, Duration::from_secs(15))
        .expect("valid config");
    Elector::new(api.client("ops"), config)
}

fn writes(api: &FakeApi) -> Vec<(String, serde_json::Value)> {
    api.log()
        .into_iter()
        .filter(|s| s.method != "GET")
        .map(|s| (s.method, s.body))
        .collect()
}

#[tokio::test(start_paused = true)]
async fn an_absent_lease_is_created_with_this_replica_as_holder() {
    let api = FakeApi::new();
    let mut a = elector(&api, "op-a");
    assert_eq!(
        a.try_acquire_or_renew().await.expect("try"),
        Attempt::Leading
    );
    let log = api.log();
    assert_eq!(
        log.iter()
            .map(|s| (s.method.as_str(), s.route()))
            .collect::<Vec<_>>(),
        vec![("GET", LEASE), ("POST", LEASES)]
    );
    let stored = api.get(LEASE).expect("created");
    assert_eq!(stored["spec"]["holderIdentity"], "op-a");
    assert_eq!(stored["spec"]["leaseDurationSeconds"], 15);
    assert_eq!(stored["spec"]["leaseTransitions"], 0);
    assert!(stored["spec"]["acquireTime"].is_string());
    assert!(stored["spec"]["renewTime"].is_string());
}

#[tokio::test(start_paused = true)]
async fn a_lease_held_by_another_is_left_alone_until_it_expires() {
    let api = FakeApi::new();
    api.put(LEASE, lease(Some("op-b"), 15, 4));
    let mut a = elector(&api, "op-a");
    assert_eq!(
        a.try_acquire_or_renew().await.expect("try"),
        Attempt::Following(Some("op-b".into()))
    );
    // Just short of the holder's duration since this replica saw it.
    tokio::time::advance(Duration::from_secs(14)).await;
    assert_eq!(
        a.try_acquire_or_renew().await.expect("try"),
        Attempt::Following(Some("op-b".into()))
    );
    assert!(writes(&api).is_empty(), "no write: {:?}", writes(&api));
    assert_eq!(
        api.get(LEASE).expect("lease")["spec"]["holderIdentity"],
        "op-b"
    );
}

#[tokio::test(start_paused = true)]
async fn an_expired_lease_is_taken_over_with_a_guarded_update() {
    let api = FakeApi::new();
    api.put(LEASE, lease(Some("op-b"), 15, 4));
    let seen_version = api.get(LEASE).expect("lease")["metadata"]["resourceVersion"].clone();
    let mut a = elector(&api, "op-a");
    assert!(matches!(
        a.try_acquire_or_renew().await.expect("try"),
        Attempt::Following(_)
    ));
    tokio::time::advance(Duration::from_secs(15)).await;
    assert_eq!(
        a.try_acquire_or_renew().await.expect("try"),
        Attempt::Leading
    );
    let w = writes(&api);
    assert_eq!(w.len(), 1, "{w:?}");
    let (method, body) = &w[0];
    assert_eq!(method, "PUT");
    assert_eq!(
        body["metadata"]["resourceVersion"], seen_version,
        "guarded by the version read"
    );
    assert_eq!(body["spec"]["holderIdentity"], "op-a");
    assert_eq!(body["spec"]["leaseTransitions"], 5);
    assert_ne!(
        body["spec"]["acquireTime"], "2026-01-01T00:00:00.000000Z",
        "a new acquire time"
    );
}

#[tokio::test(start_paused = true)]
async fn a_lease_its_holder_keeps_renewing_never_expires() {
    let api = FakeApi::new();
    api.put(LEASE, lease(Some("op-b"), 15, 0));
    let mut a = elector(&api, "op-a");
    a.try_acquire_or_renew().await.expect("try");
    for _ in 0..5 {
        tokio::time::advance(Duration::from_secs(10)).await;
        // op-b renews: a new version, whatever its clock says.
        api.put(LEASE, lease(Some("op-b"), 15, 0));
        assert_eq!(
            a.try_acquire_or_renew().await.expect("try"),
            Attempt::Following(Some("op-b".into()))
        );
    }
    assert!(writes(&api).is_empty());
}

#[tokio::test(start_paused = true)]
async fn the_leader_renews_keeping_its_acquire_time_and_transitions() {
    let api = FakeApi::new();
    let mut a = elector(&api, "op-a");
    assert_eq!(
        a.try_acquire_or_renew().await.expect("try"),
        Attempt::Leading
    );
    let first = api.get(LEASE).expect("lease");
    tokio::time::advance(Duration::from_secs(3)).await;
    assert_eq!(
        a.try_acquire_or_renew().await.expect("try"),
        Attempt::Leading
    );
    let w = writes(&api);
    assert_eq!(w.len(), 2, "{w:?}");
    let (method, body) = &w[1];
    assert_eq!(method, "PUT");
    assert_eq!(
        body["metadata"]["resourceVersion"],
        first["metadata"]["resourceVersion"]
    );
    assert_eq!(body["spec"]["holderIdentity"], "op-a");
    assert_eq!(body["spec"]["acquireTime"], first["spec"]["acquireTime"]);
    assert_eq!(body["spec"]["leaseTransitions"], 0);
}

#[tokio::test(start_paused = true)]
async fn of_two_candidates_racing_for_a_free_lease_one_wins() {
    let api = FakeApi::new();
    api.put(LEASE, lease(None, 1, 2));
    let mut a = elector(&api, "op-a");
    let mut b = elector(&api, "op-b");
    // Both read the free lease before either writes: b's write carries a
    // version that a's write made stale.
    let (ra, rb) = tokio::join!(a.try_acquire_or_renew(), b.try_acquire_or_renew());
    let results = [ra.expect("a"), rb.expect("b")];
    let leaders = results.iter().filter(|r| **r == Attempt::Leading).count();
    assert_eq!(leaders, 1, "{results:?}");
    let holder = api.get(LEASE).expect("lease")["spec"]["holderIdentity"].clone();
    let winner = if results[0] == Attempt::Leading {
        "op-a"
    } else {
        "op-b"
    };
    assert_eq!(holder, winner);
    let conflicts = api.log().iter().filter(|s| s.method == "PUT").count();
    assert_eq!(conflicts, 2, "both wrote; one got 409");
}

#[tokio::test(start_paused = true)]
async fn a_released_lease_is_taken_by_a_standby_at_once() {
    let api = FakeApi::new();
    let mut a = elector(&api, "op-a");
    let mut b = elector(&api, "op-b");
    assert_eq!(a.try_acquire_or_renew().await.expect("a"), Attempt::Leading);
    assert_eq!(
        b.try_acquire_or_renew().await.expect("b"),
        Attempt::Following(Some("op-a".into()))
    );
    assert!(a.release().await.expect("release"));
    let released = api.get(LEASE).expect("lease");
    assert!(released["spec"]["holderIdentity"].is_null(), "{released}");
    // No time passes: a lease without a holder is free.
    assert_eq!(b.try_acquire_or_renew().await.expect("b"), Attempt::Leading);
    let taken = api.get(LEASE).expect("lease");
    assert_eq!(taken["spec"]["holderIdentity"], "op-b");
    assert_eq!(taken["spec"]["leaseTransitions"], 1);
    // a no longer holds it: nothing to release.
    assert!(!a.release().await.expect("release"));
}

/// What the work under the lease saw: when it started and stopped.
#[derive(Default)]
struct Work {
    started: Vec<Instant>,
    stopped: Vec<Instant>,
}

fn spawn_elected(
    api: &FakeApi,
    identity: &str,
    metrics: OperatorMetrics,
    shutdown: tokio::sync::oneshot::Receiver<()>,
) -> (
    Arc<Mutex<Work>>,
    tokio::task::JoinHandle<Result<(), String>>,
) {
    let work = Arc::new(Mutex::new(Work::default()));
    let mut e = elector(api, identity);
    let w = work.clone();
    let task = tokio::spawn(async move {
        leader::run_elected(
            &mut e,
            &metrics,
            async {
                let _ = shutdown.await;
            },
            |stop| {
                let w = w.clone();
                async move {
                    w.lock().expect("lock").started.push(Instant::now());
                    stop.stopped().await;
                    w.lock().expect("lock").stopped.push(Instant::now());
                    Ok(())
                }
            },
        )
        .await
    });
    (work, task)
}

#[tokio::test(start_paused = true)]
async fn the_leader_stops_its_work_when_it_cannot_renew_by_the_deadline() {
    let api = FakeApi::new();
    let metrics = OperatorMetrics::new();
    let (_keep, shutdown) = tokio::sync::oneshot::channel();
    let (work, task) = spawn_elected(&api, "op-a", metrics.clone(), shutdown);
    assert!(
        until(Duration::from_secs(5), || !work
            .lock()
            .expect("lock")
            .started
            .is_empty())
        .await
    );
    // Renew a few times, then the API server fails.
    tokio::time::sleep(Duration::from_secs(7)).await;
    let last_ok = api
        .log()
        .iter()
        .filter(|s| s.method == "PUT" || s.method == "POST")
        .count();
    assert!(last_ok >= 2, "renewed while leading");
    let failed_at = Instant::now();
    api.fail(LEASES, true);
    assert!(
        until(Duration::from_secs(20), || !work
            .lock()
            .expect("lock")
            .stopped
            .is_empty())
        .await,
        "the work was stopped"
    );
    let stopped = work.lock().expect("lock").stopped[0];
    // The last renewal succeeded at most one retry period (3 s) before the
    // failure; the deadline is 10 s after it, well before a standby could
    // take over (15 s after it).
    let after = stopped - failed_at;
    assert!(
        after >= Duration::from_secs(7) && after <= Duration::from_secs(10),
        "stopped {after:?} after the API server failed"
    );
    let (ready, what) = metrics.role().readiness();
    assert!(!ready, "{what}");
    assert!(matches!(metrics.role(), Role::Standby { .. }));

    // The API server comes back; nobody else took the lease: this replica
    // leads (and works) again.
    api.fail(LEASES, false);
    assert!(
        until(Duration::from_secs(10), || work
            .lock()
            .expect("lock")
            .started
            .len()
            == 2)
        .await
    );
    assert!(!task.is_finished());
}

#[tokio::test(start_paused = true)]
async fn shutdown_stops_the_work_then_releases_the_lease_to_the_standby() {
    let api = FakeApi::new();
    let (metrics_a, metrics_b) = (OperatorMetrics::new(), OperatorMetrics::new());
    let (stop_a, shutdown_a) = tokio::sync::oneshot::channel();
    let (work_a, task_a) = spawn_elected(&api, "op-a", metrics_a.clone(), shutdown_a);
    assert!(
        until(Duration::from_secs(5), || !work_a
            .lock()
            .expect("lock")
            .started
            .is_empty())
        .await
    );
    let (_keep_b, shutdown_b) = tokio::sync::oneshot::channel();
    let (work_b, _task_b) = spawn_elected(&api, "op-b", metrics_b.clone(), shutdown_b);
    tokio::time::sleep(Duration::from_secs(30)).await;
    assert!(work_b.lock().expect("lock").started.is_empty(), "b waits");
    assert_eq!(
        metrics_a.role().readiness(),
        (false, "leader, starting the controller".into())
    );
    assert_eq!(
        metrics_b.role().readiness(),
        (true, "standby: the lease is held by op-a".into()),
        "a standby that can read the lease is ready"
    );

    let _ = stop_a.send(());
    task_a.await.expect("joined").expect("a shut down cleanly");
    assert_eq!(work_a.lock().expect("lock").stopped.len(), 1);
    let released = api.get(LEASE).expect("lease");
    assert!(released["spec"]["holderIdentity"].is_null(), "{released}");
    let handed_over = Instant::now();
    assert!(
        until(Duration::from_secs(10), || !work_b
            .lock()
            .expect("lock")
            .started
            .is_empty())
        .await
    );
    let took = work_b.lock().expect("lock").started[0] - handed_over;
    assert!(
        took <= Duration::from_secs(3),
        "took over within a retry period: {took:?}"
    );
    assert_eq!(
        api.get(LEASE).expect("lease")["spec"]["holderIdentity"],
        json!("op-b")
    );
}
