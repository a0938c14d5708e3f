//! Backups over real processes, as an operator would use them: a
//! three-node cluster is filled, then saved with `phxkv backup save` while
//! writers keep writing; all three data directories are wiped, the backup is
//! restored into the first member, the other two join empty and catch up,
//! and every member must hold every key, version and revision exactly as
//! they were at the backup's revision. Damaged files and a used data
//! directory are refused with one line.
//!
//! The key count is `PHXKV_BACKUP_KEYS` (3,000 by default, to keep the
//! ordinary test run short); the acceptance run uses 100,000:
//! `PHXKV_BACKUP_KEYS=100000 cargo test --release -p phxkv-server --test e2e_backup`.

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::{Cluster, TOKEN};
use futures_util::StreamExt;
use serde_json::{Value, json};

const DEFAULT_KEYS: usize = 3000;
const PER_TXN: usize = 100;
/// Transactions in flight while the store is filled.
const FILL_CONCURRENCY: usize = 8;
/// Writers that keep writing while the backup is saved.
const WRITERS: usize = 4;
/// Writes each writer has acknowledged before the save starts, so that it
/// starts under load.
const WRITES_BEFORE_SAVE: usize = 10;
/// Writes each writer sends after the save returned: all of them must be
/// missing from the restored store.
const WRITES_AFTER_SAVE: usize = 10;

/// How many keys the test writes before the backup.
fn key_count() -> usize {
    match std::env::var("PHXKV_BACKUP_KEYS") {
        Ok(v) => v
            .parse()
            .unwrap_or_else(|_| panic!("PHXKV_BACKUP_KEYS must be a number of keys, got {v:?}")),
        Err(_) => DEFAULT_KEYS,
    }
}

/// Runs `phxkv ARGS`; its exit code, stdout and stderr.
fn phxkv(args: &[&str]) -> (i32, String, String) {
    common::run_phxkv(args, &[])
}

async fn txn(http: &reqwest::Client, url: &str, ops: Vec<Value>) {
    let deadline = Instant::now() + Duration::from_secs(30);
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

/// A key as the comparison sees it: value, version, create and mod revision.
type KeyState = (String, u64, u64, u64);

/// Every key with its state, and the store's revision, read page by page
/// from node `url` with `query` (a read level); retried until `deadline`
/// while the node cannot answer yet.
async fn everything(
    http: &reqwest::Client,
    url: &str,
    query: &str,
    deadline: Instant,
) -> (BTreeMap<String, KeyState>, u64) {
    let mut kvs = BTreeMap::new();
    let mut after: Option<String> = None;
    let mut revision = 0;
    loop {
        // The test's keys need only '/' escaped.
        let from = match &after {
            Some(a) => format!("&after={}", a.replace('/', "%2F")),
            None => String::new(),
        };
        let r = http
            .get(format!("{url}/v1/kv?limit=1000{query}{from}"))
            .send()
            .await;
        let page: Value = match r {
            Ok(r) if r.status() == 200 => r.json().await.expect("list body"),
            other => {
                let said = match other {
                    Ok(r) => format!("{} {}", r.status(), r.text().await.unwrap_or_default()),
                    Err(e) => e.to_string(),
                };
                assert!(Instant::now() < deadline, "{url} never listed: {said}");
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
        };
        revision = revision.max(page["revision"].as_u64().expect("revision"));
        for kv in page["kvs"].as_array().expect("kvs") {
            let field = |f: &str| kv[f].as_u64().expect("a number");
            let key = kv["key_utf8"].as_str().expect("a text key").to_string();
            let value = kv["value_utf8"].as_str().expect("a text value").to_string();
            let state = (
                value,
                field("version"),
                field("create_revision"),
                field("mod_revision"),
            );
            after = Some(key.clone());
            kvs.insert(key, state);
        }
        if page["more"] != json!(true) {
            return (kvs, revision);
        }
        assert!(after.is_some(), "a page with more has keys");
    }
}

/// An acknowledged write: key, value, the revision it was applied at, and
/// whether it was sent after the save returned.
type Acked = (String, String, u64, bool);

/// What the writers and the test tell each other.
#[derive(Default)]
struct Progress {
    /// The save returned.
    saved: AtomicBool,
    /// Writes acknowledged that were sent before, and after, it returned.
    before_save: AtomicUsize,
    after_save: AtomicUsize,
    /// The writers are to stop.
    stop: AtomicBool,
}

/// Puts keys until told to stop, one at a time: every other write updates one of
/// this writer's existing keys, the rest create new ones. Any answer but
/// success or "no master yet" (nothing proposed) fails the test, since its
/// outcome would be unknown.
async fn writer(
    http: reqwest::Client,
    url: String,
    w: usize,
    existing: Vec<String>,
    progress: Arc<Progress>,
) -> Vec<Acked> {
    let mut acked = Vec::new();
    let mut n = 0;
    while !progress.stop.load(Ordering::SeqCst) {
        let key = match existing.get((n / 2) % existing.len().max(1)) {
            Some(k) if n % 2 == 0 => k.clone(),
            _ => format!("load/{w}/{n:07}"),
        };
        let value = format!("w{w}-{n}");
        let sent_after_save = progress.saved.load(Ordering::SeqCst);
        let deadline = Instant::now() + Duration::from_secs(30);
        let revision = loop {
            let r = http
                .put(format!("{url}/v1/kv/{}", key.replace('/', "%2F")))
                .body(value.clone())
                .send()
                .await
                .expect("a put answered");
            match r.status().as_u16() {
                200 => {
                    let body: Value = r.json().await.expect("put body");
                    break body["revision"].as_u64().expect("revision");
                }
                503 if Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                status => panic!("put {key} failed: {status} {:?}", r.text().await),
            }
        };
        acked.push((key, value, revision, sent_after_save));
        if sent_after_save {
            progress.after_save.fetch_add(1, Ordering::SeqCst);
        } else {
            progress.before_save.fetch_add(1, Ordering::SeqCst);
        }
        n += 1;
    }
    acked
}

/// The store at `revision`: `initial` with every acknowledged write at or
/// below it applied in revision order.
fn as_of(
    initial: &BTreeMap<String, KeyState>,
    acked: &[Acked],
    revision: u64,
) -> BTreeMap<String, KeyState> {
    let mut kvs = initial.clone();
    let mut writes: Vec<&Acked> = acked.iter().filter(|a| a.2 <= revision).collect();
    writes.sort_by_key(|a| a.2);
    for (key, value, rev, _) in writes {
        let state = kvs
            .entry(key.clone())
            .or_insert_with(|| (String::new(), 0, *rev, 0));
        state.0 = value.clone();
        state.1 += 1;
        state.3 = *rev;
    }
    kvs
}

/// Starts an empty member of cluster `restored` on node `i`'s ports and
/// directory that waits to be added.
fn spawn_joining(c: &Cluster, i: usize) -> Child {
    let p = &c.procs[i];
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&p.log)
        .expect("log file");
    Command::new(env!("CARGO_BIN_EXE_phxkv"))
        .arg("serve")
        .args(["--id", &p.name, "--join", "--cluster-id", "restored"])
        .arg("--data-dir")
        .arg(&p.data_dir)
        .args(["--listen", &format!("127.0.0.1:{}", p.client_port)])
        .args(["--peer-listen", &format!("127.0.0.1:{}", p.peer_port)])
        .arg("--cluster-token-file")
        .arg(c.dir.path().join("token"))
        .args(["--lease", "1s"])
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::from(log))
        .spawn()
        .expect("spawn a joining node")
}

/// POSTs a membership change to `url` until it is committed; 503 (the new
/// node not listening yet) and 409 (a learner not caught up yet) are retried.
async fn member_change(c: &Cluster, url: &str, path: &str, body: Value, deadline: Instant) {
    loop {
        let r = c
            .http
            .post(format!("{url}/v1/cluster/members{path}"))
            .bearer_auth(TOKEN)
            .json(&body)
            .send()
            .await;
        let said = match r {
            Ok(r) if r.status() == 200 => return,
            Ok(r) if r.status() == 503 || r.status() == 409 => {
                format!("{} {}", r.status(), r.text().await.unwrap_or_default())
            }
            Ok(r) => panic!("{path}: {} {:?}", r.status(), r.text().await),
            Err(e) => e.to_string(),
        };
        assert!(Instant::now() < deadline, "{path} never committed: {said}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn write_damaged(from: &Path, to: &Path, damage: impl FnOnce(&mut Vec<u8>)) {
    let mut bytes = std::fs::read(from).expect("read backup");
    damage(&mut bytes);
    std::fs::write(to, bytes).expect("write damaged copy");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_backup_saved_under_load_restores_every_key_version_and_revision_into_a_rebuilt_cluster()
{
    let keys = key_count();
    // Waits for the cluster's liveness grow with the data it has to move.
    let patience = Duration::from_secs(30 + (keys / 1000) as u64);
    let started = Instant::now();
    let mut c = Cluster::start(3, &[]).await;
    let master = c.wait_for_master(Duration::from_secs(20)).await;
    let url = c.url(master);
    // Written, some keys updated twice more, some deleted.
    let key = |i: usize| format!("k/{i:07}");
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
        let ops: Vec<Value> = (0..keys).filter_map(round).collect();
        futures_util::stream::iter(ops.chunks(PER_TXN))
            .map(|batch| txn(&c.http, &url, batch.to_vec()))
            .buffer_unordered(FILL_CONCURRENCY)
            .collect::<Vec<()>>()
            .await;
    }
    let deadline = Instant::now() + patience;
    let (initial, _) = everything(&c.http, &url, "", deadline).await;
    assert_eq!(initial.len(), keys - keys.div_ceil(7));
    let filled = started.elapsed();

    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("cluster.backup");
    let file_s = file.to_str().expect("utf-8 path");
    let token = c.dir.path().join("token");
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

    // Writers on every node, updating existing keys and creating new ones,
    // while the backup is saved.
    let progress = Arc::new(Progress::default());
    let writers: Vec<_> = (0..WRITERS)
        .map(|w| {
            let existing: Vec<String> = initial
                .keys()
                .skip(w)
                .step_by(WRITERS * 97)
                .cloned()
                .collect();
            tokio::spawn(writer(
                c.http.clone(),
                c.url(w % 3),
                w,
                existing,
                progress.clone(),
            ))
        })
        .collect();
    let deadline = Instant::now() + patience;
    while progress.before_save.load(Ordering::SeqCst) < WRITERS * WRITES_BEFORE_SAVE {
        assert!(Instant::now() < deadline, "the writers never got going");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let save_started = Instant::now();
    let save_args: Vec<String> = save.iter().map(|s| s.to_string()).collect();
    let (code, out, err) = tokio::task::spawn_blocking(move || {
        phxkv(&save_args.iter().map(String::as_str).collect::<Vec<_>>())
    })
    .await
    .expect("save ran");
    let save_took = save_started.elapsed();
    assert_eq!(code, 0, "save failed: {err}");
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(&file).expect("backup file").permissions(),
    );
    assert_eq!(
        mode & 0o777,
        0o600,
        "a backup holds every value: its owner's alone"
    );
    progress.saved.store(true, Ordering::SeqCst);
    let deadline = Instant::now() + patience;
    while progress.after_save.load(Ordering::SeqCst) < WRITERS * WRITES_AFTER_SAVE {
        assert!(Instant::now() < deadline, "the writers stalled");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    progress.stop.store(true, Ordering::SeqCst);
    let mut acked = Vec::new();
    for w in writers {
        acked.extend(w.await.expect("writer"));
    }
    println!("{}", out.trim());

    let (code, again, err) = phxkv(&save);
    assert_ne!(code, 0, "an existing file must not be overwritten: {again}");
    assert!(err.contains("--force"), "{err}");
    let (code, _, err) = phxkv(&[
        "backup",
        "save",
        file_s,
        "--force",
        "--endpoints",
        &endpoints,
    ]);
    assert_ne!(code, 0, "saved without the cluster token");
    assert!(err.contains("token"), "{err}");
    let (code, inspect, err) = phxkv(&["backup", "inspect", file_s]);
    assert_eq!(code, 0, "inspect failed: {err}");
    // Unix seconds, then the same time in RFC 3339.
    let created = inspect
        .lines()
        .find_map(|l| l.strip_prefix("created_at: "))
        .unwrap_or_else(|| panic!("no created_at in: {inspect}"));
    assert!(
        created.contains(" (20") && created.ends_with("Z)"),
        "{created}"
    );
    let revision: u64 = inspect
        .lines()
        .find_map(|l| l.strip_prefix("revision: "))
        .and_then(|r| r.trim().parse().ok())
        .unwrap_or_else(|| panic!("no revision in: {inspect}"));
    let expected = as_of(&initial, &acked, revision);
    // Whatever was sent after the save returned is past the backup.
    let late: Vec<&Acked> = acked.iter().filter(|a| a.3).collect();
    assert!(late.len() >= WRITERS * WRITES_AFTER_SAVE);
    assert!(
        late.iter().all(|a| a.2 > revision),
        "a write after the save is in it"
    );

    let members = format!("n1=http://127.0.0.1:{}", c.procs[0].peer_port);
    let restore = |from: &str, into: &Path| {
        let (code, out, err) = phxkv(&[
            "backup",
            "restore",
            from,
            "--data-dir",
            into.to_str().expect("utf-8 path"),
            "--name",
            "n1",
            "--cluster-id",
            "restored",
            "--initial-members",
            &members,
        ]);
        if code == 0 {
            // The command it prints to start the member is one `serve`
            // takes (with --help at the end, clap checks every argument
            // before it and then prints the help).
            let serve = out
                .split("start it with phxkv ")
                .nth(1)
                .and_then(|rest| rest.split(" (with").next())
                .unwrap_or_else(|| panic!("no serve command in: {out}"));
            let mut args: Vec<&str> = serve.split_whitespace().collect();
            args.push("--help");
            let (parsed, _, why) = phxkv(&args);
            assert_eq!(parsed, 0, "{serve}: {why}");
        }
        (code, err)
    };

    // Damaged files and a used directory are refused, with one line, and
    // leave nothing.
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

    // Every member lost: all three directories wiped, the backup restored
    // into the first, the others join empty.
    for i in 0..3 {
        c.kill9(i);
        std::fs::remove_dir_all(&c.procs[i].data_dir).expect("wipe a data directory");
    }
    let restore_started = Instant::now();
    let (code, err) = restore(file_s, &c.procs[0].data_dir);
    assert_eq!(code, 0, "restore failed: {err}");
    c.members = members.clone();
    c.extra_args = vec!["--cluster-id".into(), "restored".into()];
    c.spawn(0);
    for i in 1..3 {
        // Kept with the cluster, so they are killed with it.
        c.procs[i].child = Some(spawn_joining(&c, i));
    }
    let first = c.url(0);
    let deadline = Instant::now() + patience;
    for i in 1..3 {
        let name = c.procs[i].name.clone();
        let peer_url = c.peer_url(i);
        let add = json!({ "name": name, "peer_url": peer_url });
        member_change(&c, &first, "", add, deadline).await;
        let promote = format!("/{name}/promote");
        member_change(&c, &first, &promote, json!({}), deadline).await;
    }

    // Each member, read locally once it has applied the backup's revision:
    // the store as it was then.
    let local = format!("&consistency=local&min_revision={revision}");
    for i in 0..3 {
        let (kvs, at) = everything(&c.http, &c.url(i), &local, deadline).await;
        assert_eq!(at, revision, "member {i}");
        assert_eq!(kvs.len(), expected.len(), "member {i}");
        if kvs != expected {
            let differ = expected
                .iter()
                .find(|(k, v)| kvs.get(*k) != Some(*v))
                .map(|(k, v)| format!("{k}: expected {v:?}, found {:?}", kvs.get(k)));
            panic!("member {i} differs from the backup's revision: {differ:?}");
        }
    }
    let rebuilt = restore_started.elapsed();
    // It goes on from the revision it was restored at.
    let r: Value = c
        .http
        .put(format!("{first}/v1/kv/after"))
        .body("x")
        .send()
        .await
        .expect("put")
        .json()
        .await
        .expect("put body");
    assert_eq!(r["revision"].as_u64(), Some(revision + 1), "{r}");
    println!(
        "{keys} keys: filled in {:.1}s, saved under load in {:.1}s ({} writes acknowledged, \
         {} at or before revision {revision}), rebuilt and checked in {:.1}s",
        filled.as_secs_f64(),
        save_took.as_secs_f64(),
        acked.len(),
        acked.iter().filter(|a| a.2 <= revision).count(),
        rebuilt.as_secs_f64(),
    );
}
