//! Backups over real processes: a three-node cluster is written to, saved
//! with `phxkv backup save`, restored into a new one-member cluster, and
//! every key, version and revision is compared; damaged files and a used
//! data directory are refused.

mod common;

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::{Cluster, free_port};
use serde_json::{Value, json};

const KEYS: usize = 3000;
const PER_TXN: usize = 100;

/// Runs `phxkv ARGS`; its exit code and stderr.
fn phxkv(args: &[&str]) -> (i32, String) {
    let Output { status, stderr, .. } = Command::new(env!("CARGO_BIN_EXE_phxkv"))
        .args(args)
        .env_remove("PHXKV_CLUSTER_TOKEN_FILE")
        .env_remove("PHXKV_ENDPOINTS")
        .stdin(Stdio::null())
        .output()
        .expect("run phxkv");
    (
        status.code().expect("exit code"),
        String::from_utf8_lossy(&stderr).into_owned(),
    )
}

async fn txn(http: &reqwest::Client, url: &str, ops: Vec<Value>) {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let r = http
            .post(format!("{url}/v1/txn"))
            .json(&json!({ "success": ops }))
            .send()
            .await;
        match r {
            Ok(r) if r.status() == 200 => return,
            Ok(r) if r.status() != 503 => panic!("txn failed: {}", r.status()),
            _ if Instant::now() > deadline => panic!("txn kept failing"),
            _ => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

/// Every key with its value, version and revisions, and the store's
/// revision, read linearizably page by page.
async fn everything(http: &reqwest::Client, url: &str) -> (Vec<Value>, u64) {
    let mut kvs = Vec::new();
    let mut after: Option<String> = None;
    let mut revision = 0;
    loop {
        // The test's keys need only '/' escaped.
        let from = match &after {
            Some(a) => format!("&after={}", a.replace('/', "%2F")),
            None => String::new(),
        };
        let page: Value = http
            .get(format!("{url}/v1/kv?limit=1000{from}"))
            .send()
            .await
            .expect("list")
            .json()
            .await
            .expect("list body");
        revision = revision.max(page["revision"].as_u64().expect("revision"));
        kvs.extend(page["kvs"].as_array().expect("kvs").iter().cloned());
        if page["more"] != json!(true) {
            return (kvs, revision);
        }
        let last = kvs.last().and_then(|kv| kv["key_utf8"].as_str());
        after = Some(last.expect("a page with more has keys").to_string());
    }
}

fn write_damaged(from: &Path, to: &Path, damage: impl FnOnce(&mut Vec<u8>)) {
    let mut bytes = std::fs::read(from).expect("read backup");
    damage(&mut bytes);
    std::fs::write(to, bytes).expect("write damaged copy");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_saved_backup_restores_every_key_version_and_revision_into_a_new_cluster() {
    let c = Cluster::start(3, &[]).await;
    let master = c.wait_for_master(Duration::from_secs(20)).await;
    let url = c.url(master);
    // Written, some keys updated twice more, some deleted.
    let key = |i: usize| format!("k/{i:05}");
    let rounds: [Box<dyn Fn(usize) -> Option<Value>>; 4] = [
        Box::new(|i| Some(json!({"put": {"key": key(i), "value": format!("v{i}")}}))),
        Box::new(|i| {
            (i % 5 == 0).then(|| json!({"put": {"key": key(i), "value": format!("w{i}")}}))
        }),
        Box::new(|i| {
            (i % 10 == 0).then(|| json!({"put": {"key": key(i), "value": format!("x{i}")}}))
        }),
        Box::new(|i| (i % 7 == 0).then(|| json!({"delete": {"key": key(i)}}))),
    ];
    for round in &rounds {
        let ops: Vec<Value> = (0..KEYS).filter_map(round).collect();
        let mut pending = Vec::new();
        for batch in ops.chunks(PER_TXN) {
            pending.push(txn(&c.http, &url, batch.to_vec()));
        }
        futures_util::future::join_all(pending).await;
    }
    let (before, revision) = everything(&c.http, &url).await;
    assert_eq!(before.len(), KEYS - KEYS.div_ceil(7));

    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("cluster.backup");
    let file_s = file.to_str().expect("utf-8 path");
    // Outlives the cluster's directory, for the restored node.
    let token = dir.path().join("token");
    std::fs::copy(c.dir.path().join("token"), &token).expect("token copy");
    let token_s = token.to_str().expect("utf-8 path");
    let endpoints = (0..3).map(|i| c.url(i)).collect::<Vec<_>>().join(",");
    let save = [
        "backup",
        "save",
        file_s,
        "--endpoints",
        &endpoints,
        "--token-file",
        token_s,
    ];
    let (code, err) = phxkv(&save);
    assert_eq!(code, 0, "save failed: {err}");
    let (code, err) = phxkv(&save);
    assert_ne!(code, 0, "an existing file must not be overwritten");
    assert!(err.contains("--force"), "{err}");
    let (code, err) = phxkv(&[
        "backup",
        "save",
        file_s,
        "--force",
        "--endpoints",
        &endpoints,
    ]);
    assert_ne!(code, 0, "saved without the cluster token");
    assert!(err.contains("token"), "{err}");
    let (code, err) = phxkv(&["backup", "inspect", file_s]);
    assert_eq!(code, 0, "inspect failed: {err}");

    let peer_port = free_port();
    let members = format!("r1=http://127.0.0.1:{peer_port}");
    let restore = |from: &str, into: &Path| {
        phxkv(&[
            "backup",
            "restore",
            from,
            "--data-dir",
            into.to_str().expect("utf-8 path"),
            "--name",
            "r1",
            "--cluster-id",
            "restored",
            "--initial-members",
            &members,
        ])
    };

    // Damaged files and a used directory are refused, and leave nothing.
    let truncated = dir.path().join("truncated.backup");
    write_damaged(&file, &truncated, |b| b.truncate(b.len() * 2 / 3));
    let flipped = dir.path().join("flipped.backup");
    write_damaged(&file, &flipped, |b| {
        let at = b.len() / 2;
        b[at] ^= 0x01;
    });
    let future = dir.path().join("future.backup");
    write_damaged(&file, &future, |b| b[8] = 9);
    let fresh = dir.path().join("refused");
    for (bad, says) in [
        (&truncated, &["truncated"][..]),
        // A flip in a frame length may also read as a cut.
        (&flipped, &["corrupted", "truncated"][..]),
        (&future, &["version 9"][..]),
    ] {
        let (code, err) = restore(bad.to_str().expect("utf-8 path"), &fresh);
        assert_ne!(code, 0, "{} was restored", bad.display());
        assert!(says.iter().any(|s| err.contains(s)), "{err}");
        assert_eq!(err.trim().lines().count(), 1, "{err}");
        assert!(
            !fresh.exists(),
            "a refused restore left {}",
            fresh.display()
        );
    }
    let used = dir.path().join("used");
    std::fs::create_dir_all(&used).expect("dir");
    std::fs::write(used.join("something"), "x").expect("file");
    let (code, err) = restore(file_s, &used);
    assert_ne!(code, 0);
    assert!(err.contains("not empty"), "{err}");

    // Restored and started as a one-member cluster: the same store.
    let data = dir.path().join("r1");
    let (code, err) = restore(file_s, &data);
    assert_eq!(code, 0, "restore failed: {err}");
    drop(c);
    let client_port = free_port();
    let log = std::fs::File::create(dir.path().join("r1.log")).expect("log");
    let mut child = Command::new(env!("CARGO_BIN_EXE_phxkv"))
        .arg("serve")
        .args(["--id", "r1", "--cluster-id", "restored"])
        .arg("--data-dir")
        .arg(&data)
        .args(["--listen", &format!("127.0.0.1:{client_port}")])
        .args(["--peer-listen", &format!("127.0.0.1:{peer_port}")])
        .args(["--initial-members", &members])
        .arg("--cluster-token-file")
        .arg(&token)
        .stdout(Stdio::null())
        .stderr(Stdio::from(log))
        .spawn()
        .expect("spawn phxkv");
    let url = format!("http://127.0.0.1:{client_port}");
    let http = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(8);
    loop {
        let r = http.get(format!("{url}/v1/kv/k%2F00001")).send().await;
        if matches!(&r, Ok(r) if r.status() == 200) {
            break;
        }
        if Instant::now() > deadline {
            let log = std::fs::read_to_string(dir.path().join("r1.log")).unwrap_or_default();
            panic!("the restored node never served:\n{log}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (after, restored_revision) = everything(&http, &url).await;
    assert_eq!(restored_revision, revision);
    assert_eq!(after.len(), before.len());
    assert!(after == before, "the restored keys differ");
    // It goes on from the revision it was restored at.
    let r: Value = http
        .put(format!("{url}/v1/kv/after"))
        .body("x")
        .send()
        .await
        .expect("put")
        .json()
        .await
        .expect("put body");
    assert_eq!(r["revision"].as_u64(), Some(revision + 1), "{r}");
    let _ = child.kill();
    let _ = child.wait();
}
