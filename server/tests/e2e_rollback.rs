//! A replica whose data directory is put back from an older copy must not
//! vote with it.
//!
//! With real `phxkv serve` processes: a follower's directory is copied while
//! it is stopped, the follower runs again and acknowledges more writes, and
//! then the copy is put back in place of its directory (as restoring a
//! volume snapshot does). The follower must refuse to start, say why and
//! exit with status 65, while the cluster keeps every write; once the
//! directory is moved away it comes back as a new incarnation, like any
//! lost volume. Restarts with a current directory (every member's) must
//! not be refused, and what the members saw survives their own restarts.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::Cluster;

fn copy_dir(from: &Path, to: &Path) {
    let status = std::process::Command::new("cp")
        .arg("-a")
        .arg(from)
        .arg(to)
        .status()
        .expect("cp");
    assert!(
        status.success(),
        "cp -a {} {}",
        from.display(),
        to.display()
    );
}

async fn write_all(c: &Cluster, via: usize, keys: std::ops::Range<u64>) {
    for k in keys {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let r = c.put(via, &format!("w{k}"), &format!("v{k}")).await;
            if r.status() == 200 {
                break;
            }
            assert!(Instant::now() < deadline, "write w{k}: {}", r.status());
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// Waits until node `i` serves `w{k}` from its own state.
async fn applied(c: &Cluster, i: usize, k: u64) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some((200, v)) = c.get(i, &format!("w{k}"), "?consistency=local").await {
            assert_eq!(v, format!("v{k}").into_bytes());
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{} never applied w{k}\n{}",
            c.procs[i].name,
            c.log_of(i)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits until node `i` answers as a member with a master in view.
async fn serving(c: &Cluster, i: usize) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(info) = c.cluster_info(i).await
            && info["node_state"] == "member"
            && info["master"].is_string()
        {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{} never came back\n{}",
            c.procs[i].name,
            c.log_of(i)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_replica_whose_directory_went_back_in_time_refuses_to_start() {
    let mut c = Cluster::start(3, &[]).await;
    let m = c.wait_for_master(Duration::from_secs(20)).await;
    let f = (m + 1) % 3;
    write_all(&c, m, 0..10).await;
    applied(&c, f, 9).await;

    // 1. A copy of F's directory, taken while F is stopped.
    c.kill9(f);
    let copy = c.dir.path().join("f-copy");
    copy_dir(&c.procs[f].data_dir, &copy);

    // 2. F runs again (a current directory passes the check) and takes
    // part in more writes.
    c.spawn(f);
    serving(&c, f).await;
    write_all(&c, m, 10..60).await;
    applied(&c, f, 59).await;
    // Long enough for a digest report to carry F's synced state, and for
    // the others to write what they saw to their directories.
    tokio::time::sleep(Duration::from_secs(5)).await;

    // 3. F stops; the other two restart (their directories are current,
    // and they come back), so that what they remember of F comes from
    // their files alone.
    c.kill9(f);
    let other = (m + 2) % 3;
    c.kill9(m);
    c.kill9(other);
    c.spawn(m);
    c.spawn(other);
    serving(&c, m).await;
    serving(&c, other).await;
    for i in [m, other] {
        let log = c.log_of(i);
        assert!(
            log.contains("this data directory was checked against what the other members saw")
                && !log.contains("started without checking"),
            "{} did not check its directory on restart\n{log}",
            c.procs[i].name
        );
    }

    // 4. The copy is put back in place of F's directory.
    std::fs::remove_dir_all(&c.procs[f].data_dir).expect("remove F's directory");
    std::fs::rename(&copy, &c.procs[f].data_dir).expect("put the copy back");
    c.spawn(f);
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        let child = c.procs[f].child.as_mut().expect("spawned");
        if let Some(status) = child.try_wait().expect("try_wait") {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "a replica with an older copy of its directory kept running\n{}",
            c.log_of(f)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    c.procs[f].child = None;
    assert_eq!(status.code(), Some(65), "{}", c.log_of(f));
    let log = c.log_of(f);
    assert!(
        log.contains("older than this replica's own past")
            && log.contains("will not start")
            && log.contains(&format!("members replace {}", c.procs[f].name)),
        "{log}"
    );

    // 5. The other two hold every write.
    for k in [0, 9, 10, 35, 59] {
        let got = c.get(other, &format!("w{k}"), "").await;
        assert_eq!(
            got,
            Some((200, format!("v{k}").into_bytes())),
            "w{k} through {}",
            c.procs[other].name
        );
    }

    // 6. Moved away, the directory comes back empty as a new incarnation
    // that waits to be replaced, like a lost volume.
    std::fs::remove_dir_all(&c.procs[f].data_dir).expect("move F's directory away");
    c.spawn(f);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(info) = c.cluster_info(f).await
            && info["node_state"] == "awaiting_replacement"
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "F never waited to be replaced\n{}",
            c.log_of(f)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A replica told to stop writes what it saw its peers acknowledge on the
/// way out, not only every digest round: after a rolling restart, a peer
/// put back on a copy only moments old is judged against that file.
#[tokio::test(flavor = "multi_thread")]
async fn a_replica_that_stops_keeps_what_its_peers_acknowledged_up_to_the_end() {
    let mut c = Cluster::start(3, &[]).await;
    let m = c.wait_for_master(Duration::from_secs(20)).await;
    let f = (m + 1) % 3;
    let f_id = c.cluster_info(f).await.expect("F answers")["node_id"]
        .as_str()
        .expect("a node id")
        .to_string();
    write_all(&c, m, 0..40).await;
    applied(&c, f, 39).await;
    let held = c.cluster_info(f).await.expect("F answers")["applied_index"]
        .as_u64()
        .expect("an applied index");
    // F's `accepted` for what it applied is on its way to the master.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let status = c.terminate(m);
    assert!(status.success(), "{}", c.log_of(m));
    let path = c.procs[m].data_dir.join("acknowledged.json");
    let file: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&path).expect("the record")).expect("JSON");
    let seen = file["marks"][&f_id]["accepted_to"].as_u64().unwrap_or(0);
    assert!(
        seen >= held,
        "the master's record of F ends at index {seen}, before the {held} F held when the \
         master stopped: {file}"
    );
}
