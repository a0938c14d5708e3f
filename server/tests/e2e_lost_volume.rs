//! A node that loses its volume must never vote under its old identity.
//!
//! The scenario that lost acknowledged writes before incarnations, with
//! real `phxkv serve` processes: the master M keeps committing with one
//! follower F while the other follower C is away; M and F crash and F's
//! data directory is gone; F restarts empty next to C. F and C are a
//! majority by name that never saw those writes. F must wait to be
//! replaced instead of voting; once M is back, every write is there, and
//! `replace` brings F back as a new incarnation holding the data.

mod common;

use std::time::{Duration, Instant};

use common::Cluster;
use serde_json::Value;

async fn state_of(c: &Cluster, i: usize) -> Option<(String, String)> {
    let info = c.cluster_info(i).await?;
    Some((
        info["node_state"].as_str()?.to_string(),
        info["node_id"].as_str()?.to_string(),
    ))
}

async fn wait_for_state(c: &Cluster, i: usize, want: &str, within: Duration) -> String {
    let deadline = Instant::now() + within;
    loop {
        if let Some((state, id)) = state_of(c, i).await
            && state == want
        {
            return id;
        }
        assert!(
            Instant::now() < deadline,
            "{} never reached state {want}; last: {:?}\n{}",
            c.procs[i].name,
            state_of(c, i).await,
            c.log_of(i)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits until node `i` reads every write `w{k}` for `k` in `keys` as
/// `v{k}`, with `query`; a write that reads as missing was lost.
async fn reads_every_write(c: &Cluster, i: usize, keys: &[u64], query: &str) {
    for k in keys {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            match c.get(i, &format!("w{k}"), query).await {
                Some((200, v)) => {
                    assert_eq!(v, format!("v{k}").into_bytes());
                    break;
                }
                Some((404, _)) if query.is_empty() => panic!("acknowledged write w{k} was lost"),
                _ => {}
            }
            assert!(
                Instant::now() < deadline,
                "w{k} unreadable on {}",
                c.procs[i].name
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// Calls replace for node `f`'s member through node `via` until it is
/// done; the last report.
async fn replace(c: &Cluster, via: usize, f: usize) -> Value {
    let path = format!("/v1/cluster/members/{}/replace", c.procs[f].name);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let r = c.post_with_token(via, &path).await;
        let status = r.status();
        let body: Value = r.json().await.expect("json");
        if status == 200 && body["state"] == "done" {
            return body;
        }
        assert!(
            status == 200 || status == 503 || status == 409,
            "replace: {status} {body}"
        );
        assert!(Instant::now() < deadline, "replace never finished: {body}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_node_back_with_an_empty_volume_never_votes_and_is_replaced() {
    let mut c = Cluster::start(3, &[]).await;
    let m = c.wait_for_master(Duration::from_secs(20)).await;
    let f = (m + 1) % 3;
    let cc = (m + 2) % 3;
    let old_f = state_of(&c, f).await.expect("F answers").1;

    // 1. C is away; M commits with F.
    c.kill9(cc);
    for k in 0..20 {
        let r = c.put(m, &format!("w{k}"), &format!("v{k}")).await;
        assert_eq!(r.status(), 200, "write w{k}");
    }

    // 2. M and F crash; F's volume is gone.
    c.kill9(m);
    c.kill9(f);
    std::fs::remove_dir_all(&c.procs[f].data_dir).expect("wipe F");

    // 3. F restarts with the same name and flags, next to C.
    c.spawn(f);
    c.spawn(cc);
    let new_f = wait_for_state(&c, f, "awaiting_replacement", Duration::from_secs(20)).await;
    assert_ne!(new_f, old_f, "a new volume is a new incarnation");
    let info = c.cluster_info(f).await.expect("F answers");
    let reason = info["node_state_reason"].as_str().unwrap_or_default();
    assert!(
        reason.contains(&format!("members replace {}", c.procs[f].name)),
        "{reason}"
    );
    let ready = c
        .http
        .get(format!("{}/readyz", c.url(f)))
        .send()
        .await
        .expect("readyz");
    assert_eq!(ready.status(), 503);
    // A request to F says why F cannot serve it, not that no master exists.
    let r = c
        .http
        .put(format!("{}/v1/kv/to-f", c.url(f)))
        .body("x")
        .send()
        .await
        .expect("put");
    assert_eq!(r.status(), 503);
    let body: Value = r.json().await.expect("json");
    let message = body["error"]["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("not a member") && message.contains("members replace"),
        "{body}"
    );
    let metrics = c.metrics_text(f).await;
    assert!(
        metrics.contains("phxkv_node_state{state=\"awaiting_replacement\"} 1"),
        "{metrics}"
    );
    // F and C are no majority: nothing may be read or written, and above
    // all no write may read as missing.
    for k in [0, 7, 19] {
        let got = c
            .get(cc, &format!("w{k}"), "")
            .await
            .map(|(s, _)| s)
            .unwrap_or(0);
        assert_ne!(got, 404, "acknowledged write w{k} reads as missing");
        assert_ne!(got, 200, "a minority served a linearizable read");
    }
    let r = c
        .http
        .put(format!("{}/v1/kv/during", c.url(cc)))
        .body("x")
        .send()
        .await
        .expect("put");
    assert!(
        r.status() == 503 || r.status() == 504,
        "a minority took a write: {}",
        r.status()
    );

    // 4. M comes back: M and C are a majority holding every write.
    c.spawn(m);
    let all: Vec<u64> = (0..20).collect();
    reads_every_write(&c, cc, &all, "").await;

    // 5. Replace F: its new incarnation becomes a voter holding the data.
    // Adding it again instead is refused with the way out.
    let name = c.procs[f].name.clone();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let r = c
            .http
            .post(format!("{}/v1/cluster/members", c.url(m)))
            .bearer_auth(common::TOKEN)
            .json(&serde_json::json!({"name": name, "peer_url": c.peer_url(f)}))
            .send()
            .await
            .expect("add");
        let status = r.status().as_u16();
        let body: Value = r.json().await.unwrap_or(Value::Null);
        if status == 409 {
            let message = body["error"]["message"].as_str().unwrap_or_default();
            assert!(
                message.contains(&format!("members replace {name}")),
                "{body}"
            );
            break;
        }
        // No master yet while M rejoins: 503, asked again.
        assert!(
            status == 503 && Instant::now() < deadline,
            "add: {status} {body}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let report = replace(&c, m, f).await;
    assert_eq!(report["incarnation"], Value::String(new_f.clone()));
    wait_for_state(&c, f, "member", Duration::from_secs(20)).await;
    let info = c.cluster_info(m).await.expect("cluster");
    let member = info["members"]
        .as_array()
        .expect("members")
        .iter()
        .find(|x| x["name"] == Value::String(name.clone()))
        .cloned()
        .expect("F is a member");
    assert_eq!(member["id"], Value::String(new_f));
    assert_eq!(member["role"], "voter");
    reads_every_write(&c, f, &all, "?consistency=local").await;
    // Replacing a healthy member does nothing.
    let path = format!("/v1/cluster/members/{name}/replace");
    let body: Value = c
        .post_with_token(m, &path)
        .await
        .json()
        .await
        .expect("json");
    assert_eq!(body["state"], "done");
    assert_eq!(body["removed"], Value::Null);
    // The cluster goes on with F counting.
    c.kill9(cc);
    assert_eq!(c.put(m, "after", "1").await.status(), 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_new_cluster_waits_for_every_bootstrap_member() {
    // Two of three start: the one that would create the cluster cannot know
    // the third is empty, so nothing starts until it answers.
    let mut c = Cluster::start_later(3, &[]);
    c.spawn(0);
    c.spawn(1);
    tokio::time::sleep(Duration::from_secs(2)).await;
    for i in [0, 1] {
        let (state, _) = state_of(&c, i).await.expect("answers");
        assert_eq!(state, "bootstrapping");
    }
    let info = c.cluster_info(0).await.expect("answers");
    let reason = info["node_state_reason"].as_str().unwrap_or_default();
    assert!(reason.contains("waiting for n3"), "{reason}");
    c.spawn(2);
    c.wait_for_master(Duration::from_secs(20)).await;
    assert_eq!(c.put(2, "k", "v").await.status(), 200);
}

/// Waits for node `i`'s process to exit; its exit status.
async fn wait_for_exit(c: &mut Cluster, i: usize, within: Duration) -> std::process::ExitStatus {
    let deadline = Instant::now() + within;
    loop {
        let child = c.procs[i].child.as_mut().expect("spawned");
        if let Some(status) = child.try_wait().expect("wait") {
            c.procs[i].child = None;
            return status;
        }
        assert!(
            Instant::now() < deadline,
            "{} kept running\n{}",
            c.procs[i].name,
            c.log_of(i)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// True once node `i`'s data directory holds a snapshot file.
fn has_snapshot(c: &Cluster, i: usize) -> bool {
    std::fs::read_dir(c.procs[i].data_dir.join("snapshots"))
        .map(|d| {
            d.flatten()
                .any(|e| e.path().extension().is_some_and(|x| x == "snap"))
        })
        .unwrap_or(false)
}

/// The scenario above with only some files lost: F keeps its
/// `identity.json` (and so its incarnation) but its log is gone. Opened as
/// it was, F had promised nothing and accepted nothing, and with C it
/// formed a majority that answered "not found" for acknowledged writes. It
/// must refuse to start; the same for a node whose snapshot is gone.
#[tokio::test(flavor = "multi_thread")]
async fn a_node_whose_log_or_snapshot_was_removed_refuses_to_start() {
    let mut c = Cluster::start(3, &["--snapshot-every", "100"]).await;
    let m = c.wait_for_master(Duration::from_secs(20)).await;
    let f = (m + 1) % 3;
    let cc = (m + 2) % 3;

    // C is away while M and F take the writes.
    c.kill9(cc);
    for k in 0..150 {
        let r = c.put(m, &format!("w{k}"), &format!("v{k}")).await;
        assert_eq!(r.status(), 200, "write w{k}");
    }
    c.kill9(m);
    c.kill9(f);
    let wal = c.procs[f].data_dir.join("wal");
    for segment in std::fs::read_dir(&wal).expect("F's log").flatten() {
        std::fs::remove_file(segment.path()).expect("remove a segment");
    }
    assert!(c.procs[f].data_dir.join("identity.json").exists());

    c.spawn(f);
    c.spawn(cc);
    let status = wait_for_exit(&mut c, f, Duration::from_secs(20)).await;
    assert!(!status.success(), "F started without its log");
    let log = c.log_of(f);
    assert!(
        log.contains("the log is gone") && log.contains("replace the member"),
        "{log}"
    );
    // C alone is no majority: nothing reads as missing.
    for k in [0, 99, 149] {
        let got = c.get(cc, &format!("w{k}"), "").await.map(|(s, _)| s);
        assert_ne!(got, Some(404), "acknowledged write w{k} reads as missing");
    }

    // M is back: M and C hold every write, and C catches up from M's
    // snapshot. Then C loses its snapshot, and refuses to start too.
    c.spawn(m);
    let all: Vec<u64> = (0..150).collect();
    reads_every_write(&c, cc, &all, "").await;
    let deadline = Instant::now() + Duration::from_secs(20);
    while !has_snapshot(&c, cc) {
        assert!(Instant::now() < deadline, "C never stored a snapshot");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(c.terminate(cc).success());
    let snapshots = c.procs[cc].data_dir.join("snapshots");
    let aside = c.dir.path().join("snapshots-aside");
    std::fs::rename(&snapshots, &aside).expect("move the snapshots away");
    c.spawn(cc);
    let status = wait_for_exit(&mut c, cc, Duration::from_secs(20)).await;
    assert!(!status.success(), "C started without its snapshot");
    let log = c.log_of(cc);
    assert!(log.contains("the snapshot at index"), "{log}");
    // With the file back, C starts as it was.
    std::fs::rename(&aside, &snapshots).expect("put the snapshots back");
    c.spawn(cc);
    wait_for_state(&c, cc, "member", Duration::from_secs(20)).await;

    // The remedy the message names: a wiped directory is a new incarnation,
    // which is replaced and catches up.
    std::fs::remove_dir_all(&c.procs[f].data_dir).expect("wipe F");
    c.spawn(f);
    wait_for_state(&c, f, "awaiting_replacement", Duration::from_secs(20)).await;
    replace(&c, m, f).await;
    wait_for_state(&c, f, "member", Duration::from_secs(20)).await;
    assert_eq!(c.put(m, "after", "1").await.status(), 200);
    reads_every_write(&c, f, &[0, 99, 149], "?consistency=local").await;
}

/// A volume lost while its replica runs: the replica notices that its data
/// directory is gone and stops on its own, with a reason that says what to
/// do; started again, it is a new incarnation that is replaced and catches
/// up, and nothing acknowledged is lost.
#[tokio::test(flavor = "multi_thread")]
async fn a_replica_whose_data_directory_is_removed_while_it_runs_stops_and_is_replaced() {
    let mut c = Cluster::start(3, &[]).await;
    let m = c.wait_for_master(Duration::from_secs(20)).await;
    let f = (m + 1) % 3;
    for k in 0..20 {
        assert_eq!(
            c.put(m, &format!("w{k}"), &format!("v{k}")).await.status(),
            200
        );
    }
    std::fs::remove_dir_all(&c.procs[f].data_dir).expect("remove F's data directory");
    let status = wait_for_exit(&mut c, f, Duration::from_secs(20)).await;
    assert!(!status.success(), "F went on without its data directory");
    let log = c.log_of(f);
    assert!(
        log.contains("was removed while this replica ran") && log.contains("replaced"),
        "{log}"
    );
    // The other two go on; F, started again, waits to be replaced.
    assert_eq!(c.put(m, "while-away", "v").await.status(), 200);
    c.spawn(f);
    wait_for_state(&c, f, "awaiting_replacement", Duration::from_secs(20)).await;
    replace(&c, m, f).await;
    wait_for_state(&c, f, "member", Duration::from_secs(20)).await;
    let all: Vec<u64> = (0..20).collect();
    reads_every_write(&c, f, &all, "?consistency=local").await;
}
