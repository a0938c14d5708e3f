//! A replica whose stored state is damaged is caught by the digest
//! comparison, not trusted: real processes, one replica's snapshot altered
//! on disk while it is down.

mod common;

use std::time::{Duration, Instant};

use common::Cluster;
use phxkv::kv::StoreSnapshot;
use phxkv::storage::snapshot_file;
use serde_json::Value;

/// Rewrites the node's stored snapshot after `damage` changed it, keeping
/// everything else (index, revision, versions) as it was: the kind of
/// damage nothing but a comparison with the other replicas can notice.
/// Returns what `damage` says it changed.
fn damage_snapshot(
    data_dir: &std::path::Path,
    damage: &dyn Fn(&mut StoreSnapshot) -> String,
) -> String {
    let (_, path) = snapshot_file::latest(&snapshot_file::dir_of(data_dir))
        .expect("list snapshots")
        .expect("a snapshot was taken");
    let (meta, bytes) = snapshot_file::Reader::open(&path)
        .and_then(snapshot_file::Reader::read_all)
        .expect("read the snapshot");
    let mut snap = StoreSnapshot::decode(&bytes).expect("decodes");
    let what = damage(&mut snap);
    // Written as a whole new file, checksum and all: damage no check of the
    // file itself can see.
    snapshot_file::write(&snapshot_file::dir_of(data_dir), &meta, &snap.encode())
        .expect("write the damaged snapshot");
    what
}

/// One value changed; returns its key.
fn damage_a_value(snap: &mut StoreSnapshot) -> String {
    let kv = snap
        .kvs
        .iter_mut()
        .find(|kv| kv.key.starts_with(b"d/"))
        .expect("a key to damage");
    kv.value = b"damaged".to_vec();
    String::from_utf8_lossy(&kv.key).into_owned()
}

/// One remembered request id changed, the keys left alone: a copy of that
/// write would be applied here and not elsewhere. The new id is one no
/// node ever sends (had it been a later write's, that write would be taken
/// for a copy here, and the keys would differ too). Returns a key to read.
fn damage_a_request_id(snap: &mut StoreSnapshot) -> String {
    let (id, _) = snap.requests.last_mut().expect("requests are remembered");
    id.seq = u64::MAX;
    "d/0".into()
}

/// Starts a 3-replica cluster, writes, damages one follower's snapshot
/// while it is down and restarts it, until that replica finds it has
/// diverged. Returns the cluster, its master, the victim, the victim's
/// `divergence` and what the damage named.
async fn damage_until_noticed(
    damage: &dyn Fn(&mut StoreSnapshot) -> String,
) -> (Cluster, usize, usize, Value, String) {
    let mut c = Cluster::start(3, &["--snapshot-every", "100"]).await;
    let m = c.wait_for_master(Duration::from_secs(20)).await;
    for k in 0..250 {
        assert_eq!(c.put(m, &format!("d/{k}"), "good").await.status(), 200);
    }
    let victim = (m + 1) % 3;
    // A replica that fell behind the others' compaction while it was down
    // gets a snapshot from them, which repairs the damage before anyone can
    // see it; then the damage is done again.
    let mut n = 0;
    let mut attempt = 0;
    let (info, damaged) = 'attempts: loop {
        attempt += 1;
        assert!(
            attempt <= 5,
            "the damage was never noticed\n{}",
            c.log_of(victim)
        );
        c.kill9(victim);
        let installs_before = c.log_of(victim).matches("installed snapshot").count();
        let damaged = damage_snapshot(&c.procs[victim].data_dir, damage);
        c.spawn(victim);
        // More writes move every replica past new checkpoints.
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            n += 1;
            let _ = c.put(m, &format!("after/{n}"), "x").await;
            if let Some(info) = c.cluster_info(victim).await
                && !info["divergence"].is_null()
            {
                break 'attempts (info, damaged);
            }
            if c.log_of(victim).matches("installed snapshot").count() > installs_before {
                continue 'attempts;
            }
        }
    };
    (c, m, victim, info["divergence"].clone(), damaged)
}

/// The diverged replica refuses reads of every kind and readiness, and
/// says so once in its log and in its metric.
async fn refuses_reads(c: &Cluster, victim: usize, key: &str) {
    for query in ["", "?consistency=local"] {
        let r = c
            .http
            .get(format!("{}/v1/kv/{key}{query}", c.url(victim)))
            .send()
            .await
            .expect("get");
        assert_eq!(r.status(), 503);
        let body: Value = r.json().await.expect("json");
        assert_eq!(body["error"]["code"], "replica_diverged", "{body}");
    }
    let ready = c
        .http
        .get(format!("{}/readyz", c.url(victim)))
        .send()
        .await
        .expect("readyz");
    assert_eq!(ready.status(), 503);
    assert_eq!(metric(c, victim, "phxkv_diverged").await, 1.0);
    assert!(
        c.log_of(victim).contains("diverged from the cluster"),
        "one clear error line"
    );
}

async fn metric(c: &Cluster, i: usize, name: &str) -> f64 {
    let text = c.metrics_text(i).await;
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{name} ")))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_replica_with_damaged_data_is_caught_and_serves_no_reads() {
    let (mut c, _, victim, div, damaged) = damage_until_noticed(&damage_a_value).await;
    assert!(div["index"].as_u64().is_some(), "{div}");
    assert_eq!(div["part"], "keys", "{div}");
    assert_eq!(div["agreeing"].as_array().map(Vec::len), Some(2), "{div}");
    assert_ne!(div["ours"], div["majority"]);
    refuses_reads(&c, victim, &damaged).await;
    // The healthy replicas noticed the odd one out and keep serving the
    // right value.
    let healthy = (victim + 1) % 3;
    assert_eq!(metric(&c, healthy, "phxkv_diverged").await, 0.0);
    let deadline = Instant::now() + Duration::from_secs(20);
    while metric(&c, healthy, "phxkv_digest_mismatches_total").await < 1.0 {
        assert!(Instant::now() < deadline, "the healthy replica saw nothing");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let (status, value) = c.get(healthy, &damaged, "").await.expect("read");
    assert_eq!((status, value), (200, b"good".to_vec()));
    // One healthy replica goes: the damaged one still votes, so writes go
    // on, but only the other healthy replica may lead.
    let master = c.wait_for_master(Duration::from_secs(20)).await;
    assert_ne!(master, victim, "the damaged replica handed mastership over");
    let survivor = 3 - victim - master;
    c.kill9(master);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let r = c
            .http
            .put(format!("{}/v1/kv/later", c.url(survivor)))
            .body("y")
            .send()
            .await;
        if r.is_ok_and(|r| r.status() == 200) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no write after losing the master"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let info = c.cluster_info(survivor).await.expect("answers");
    assert_eq!(
        info["master"].as_str(),
        Some(c.procs[survivor].name.as_str()),
        "the damaged replica never leads"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_replica_with_a_damaged_request_table_is_caught_though_its_keys_agree() {
    let (mut c, _, victim, div, key) = damage_until_noticed(&damage_a_request_id).await;
    assert_eq!(div["part"], "requests", "{div}");
    assert!(
        c.log_of(victim)
            .contains("this replica's request-id table diverged from the cluster's"),
        "the log says which part differs"
    );
    assert_eq!(div["agreeing"].as_array().map(Vec::len), Some(2), "{div}");
    assert_ne!(div["ours"], div["majority"]);
    refuses_reads(&c, victim, &key).await;
    let healthy = (victim + 1) % 3;
    let (status, value) = c.get(healthy, &key, "").await.expect("read");
    assert_eq!((status, value), (200, b"good".to_vec()));

    // Restarted, it is still out of service from its first answer on, not
    // only once the next comparison finds it out again.
    c.terminate(victim);
    c.spawn(victim);
    let deadline = Instant::now() + Duration::from_secs(20);
    while c
        .http
        .get(format!("{}/healthz", c.url(victim)))
        .send()
        .await
        .is_err()
    {
        assert!(Instant::now() < deadline, "the victim did not come back");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    refuses_reads(&c, victim, &key).await;
    let log = c.log_of(victim);
    assert!(
        log.contains("was found diverged from the cluster before it stopped"),
        "{log}"
    );
}
