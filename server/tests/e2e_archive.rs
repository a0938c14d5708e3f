//! Continuous archiving and point-in-time recovery against a real
//! S3-compatible server (`moto_server`, from `pip install "moto[server]"`):
//! a three-node cluster archives while it is written to, then is restored
//! into new one-member clusters at a revision in the middle, at a time in
//! the middle and at the latest point, and each holds exactly the writes up
//! to its target. Damaged segments and targets outside the archive are
//! refused with one line.
//!
//! `PHXKV_ARCHIVE_SECONDS` sets how long the concurrent writes last (8 by
//! default; the long form is 60).

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::{Cluster, TOKEN, free_port};
use object_store::ObjectStoreExt as _;
use phxkv::archive::{Catalog, Location};
use serde_json::Value;

const BUCKET: &str = "phxkv-archive-test";

/// A moto S3 server, stopped when dropped.
struct S3 {
    child: Child,
    endpoint: String,
}

impl Drop for S3 {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl S3 {
    async fn start(http: &reqwest::Client) -> S3 {
        let port = free_port();
        let child = Command::new("moto_server")
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot start moto_server ({e}): these tests need an S3-compatible \
                     server; install it with: pip install \"moto[server]\""
                )
            });
        let s3 = S3 {
            child,
            endpoint: format!("http://127.0.0.1:{port}"),
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            // Creating the bucket is also the readiness check.
            if let Ok(r) = http.put(format!("{}/{BUCKET}", s3.endpoint)).send().await
                && r.status().is_success()
            {
                return s3;
            }
            assert!(Instant::now() < deadline, "moto_server did not start");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("AWS_ACCESS_KEY_ID", "test".into()),
            ("AWS_SECRET_ACCESS_KEY", "test".into()),
            ("AWS_REGION", "us-east-1".into()),
            ("AWS_ENDPOINT_URL", self.endpoint.clone()),
        ]
    }
}

/// Runs `phxkv ARGS` with the S3 settings; exit code, stdout, stderr.
fn phxkv(s3: &S3, args: &[&str]) -> (i32, String, String) {
    common::run_phxkv(args, &s3.env())
}

/// One acknowledged write.
#[derive(Clone, Debug)]
struct Write {
    key: String,
    value: String,
    revision: u64,
}

async fn put(http: &reqwest::Client, url: &str, key: &str, value: &str) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let r = http
            .put(format!("{url}/v1/kv/{key}"))
            .body(value.to_string())
            .send()
            .await;
        match r {
            Ok(r) if r.status() == 200 => {
                let body: Value = r.json().await.expect("put body");
                return body["revision"].as_u64().expect("revision");
            }
            Ok(r) if r.status() != 503 => panic!("put {key}: {}", r.status()),
            _ if Instant::now() > deadline => panic!("put {key} kept failing"),
            _ => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
}

/// Every key with its value and mod revision, and the store's revision.
async fn contents(http: &reqwest::Client, url: &str) -> (BTreeMap<String, (String, u64)>, u64) {
    let mut out = BTreeMap::new();
    let mut after: Option<String> = None;
    let mut revision = 0;
    loop {
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
        for kv in page["kvs"].as_array().expect("kvs") {
            let key = kv["key_utf8"].as_str().expect("key").to_string();
            let value = kv["value_utf8"].as_str().expect("value").to_string();
            let rev = kv["mod_revision"].as_u64().expect("mod_revision");
            after = Some(key.clone());
            out.insert(key, (value, rev));
        }
        if page["more"] != Value::Bool(true) {
            return (out, revision);
        }
    }
}

/// What the store holds after exactly the writes with revision <= `upto`.
fn expected(writes: &[Write], upto: u64) -> BTreeMap<String, (String, u64)> {
    let mut out = BTreeMap::new();
    let mut sorted: Vec<&Write> = writes.iter().filter(|w| w.revision <= upto).collect();
    sorted.sort_by_key(|w| w.revision);
    for w in sorted {
        out.insert(w.key.clone(), (w.value.clone(), w.revision));
    }
    out
}

/// A restored one-member cluster, killed when dropped.
struct Restored {
    child: Child,
    url: String,
}

impl Drop for Restored {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Restores `target` args into a new directory under `root` and starts it.
async fn restore_and_start(
    s3: &S3,
    http: &reqwest::Client,
    root: &Path,
    name: &str,
    target: &[&str],
) -> Restored {
    restore_as(s3, http, root, name, "restored", target, &[]).await
}

/// [`restore_and_start`] as cluster `cluster_id`, started with `serve_args`
/// too.
async fn restore_as(
    s3: &S3,
    http: &reqwest::Client,
    root: &Path,
    name: &str,
    cluster_id: &str,
    target: &[&str],
    serve_args: &[&str],
) -> Restored {
    let dir: PathBuf = root.join(name);
    let peer = free_port();
    let client = free_port();
    let members = format!("{name}=http://127.0.0.1:{peer}");
    let archive = format!("s3://{BUCKET}/c1");
    let dir_s = dir.to_str().expect("utf-8 path");
    let mut args = vec![
        "backup",
        "restore",
        "--from-archive",
        &archive,
        "--data-dir",
        dir_s,
        "--name",
        name,
        "--cluster-id",
        cluster_id,
        "--initial-members",
        &members,
    ];
    args.extend_from_slice(target);
    let (code, out, err) = phxkv(s3, &args);
    assert_eq!(code, 0, "restore {target:?} failed: {err}");
    assert!(out.contains("restored revision"), "{out}");
    let token = root.join("token");
    std::fs::write(&token, TOKEN).expect("token");
    let log = std::fs::File::create(root.join(format!("{name}.log"))).expect("log");
    let child = Command::new(env!("CARGO_BIN_EXE_phxkv"))
        .args(["serve", "--id", name, "--cluster-id", cluster_id])
        .args(["--data-dir", dir_s])
        .args(serve_args)
        .envs(s3.env())
        .args(["--listen", &format!("127.0.0.1:{client}")])
        .args(["--peer-listen", &format!("127.0.0.1:{peer}")])
        .args(["--initial-members", &members])
        .arg("--cluster-token-file")
        .arg(&token)
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("start the restored node");
    let restored = Restored {
        child,
        url: format!("http://127.0.0.1:{client}"),
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(r) = http
            .get(format!("{}/v1/kv?limit=1", restored.url))
            .send()
            .await
            && r.status() == 200
        {
            return restored;
        }
        assert!(Instant::now() < deadline, "the restored node did not serve");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn archive_listing(http: &reqwest::Client, url: &str) -> Value {
    let r = http
        .get(format!("{url}/v1/admin/backups"))
        .bearer_auth(TOKEN)
        .send()
        .await
        .expect("list backups");
    assert_eq!(r.status(), 200);
    r.json().await.expect("backups body")
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

async fn backups(c: &Cluster, i: usize) -> Value {
    archive_listing(&c.http, &c.url(i)).await
}

#[tokio::test(flavor = "multi_thread")]
async fn an_archived_cluster_restores_to_a_revision_a_time_and_the_latest_point() {
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(60))
        .build()
        .expect("client");
    let s3 = S3::start(&http).await;
    let env = s3.env();
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let archive = format!("s3://{BUCKET}/c1");
    let c = Cluster::start_with_env(
        3,
        &[
            "--archive-url",
            &archive,
            "--archive-flush-every",
            "200ms",
            // Windows of 2 s merged while the writes go on: every restore
            // below reads merged segments.
            "--archive-merge-every",
            "2s",
            "--snapshot-every",
            "500",
        ],
        &env,
    )
    .await;
    let seconds: u64 = std::env::var("PHXKV_ARCHIVE_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(8);

    // Concurrent writers over every node, keys overwritten many times.
    let started = Instant::now();
    let mut tasks = Vec::new();
    for t in 0..4usize {
        let http = http.clone();
        let url = c.url(t % 3);
        tasks.push(tokio::spawn(async move {
            let mut done = Vec::new();
            let mut n = 0usize;
            while started.elapsed() < Duration::from_secs(seconds) {
                let key = format!("k/{t}/{:03}", n % 200);
                let value = format!("v{t}-{n}");
                let revision = put(&http, &url, &key, &value).await;
                done.push(Write {
                    key,
                    value,
                    revision,
                });
                n += 1;
            }
            done
        }));
    }
    // A one-off backup in the middle: a second base to choose from.
    tokio::time::sleep(Duration::from_secs(seconds / 2)).await;
    let master = c.wait_for_master(Duration::from_secs(10)).await;
    let r = c.post_with_token(master, "/v1/admin/backups").await;
    assert_eq!(r.status(), 201, "one-off backup");
    let one_off: Value = r.json().await.expect("backup body");
    let mut writes = Vec::new();
    for t in tasks {
        writes.extend(t.await.expect("writer"));
    }
    // Then a slow single writer, to cut at a time between two writes.
    let url = c.url(master);
    let mut timed = Vec::new();
    for n in 0..20 {
        let sent = now_ms();
        let key = format!("t/{n:02}");
        let revision = put(&http, &url, &key, "x").await;
        let acked = now_ms();
        timed.push((sent, acked, revision));
        writes.push(Write {
            key,
            value: "x".into(),
            revision,
        });
        tokio::time::sleep(Duration::from_millis(60)).await;
    }
    let last = writes.iter().map(|w| w.revision).max().expect("writes");
    eprintln!(
        "{} writes in {seconds} s, last revision {last}",
        writes.len()
    );

    // The archive catches up with the last write.
    let deadline = Instant::now() + Duration::from_secs(30);
    let listing = loop {
        let master = c.wait_for_master(Duration::from_secs(10)).await;
        let l = backups(&c, master).await;
        if l["recoverable"]["last"]["revision"].as_u64() >= Some(last) {
            break l;
        }
        assert!(
            Instant::now() < deadline,
            "the archive did not catch up: {l}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let names: Vec<&str> = listing["backups"]
        .as_array()
        .expect("backups")
        .iter()
        .filter_map(|b| b["name"].as_str())
        .collect();
    assert!(
        names.len() >= 2,
        "the first base and the one-off: {listing}"
    );
    assert!(names.contains(&one_off["name"].as_str().expect("name")));
    let master = c.wait_for_master(Duration::from_secs(10)).await;
    let metrics = c.metrics_text(master).await;
    assert!(metrics.contains("phxkv_archive_lag_entries"), "{metrics}");
    // The newest base is what every point archived since is restored from.
    let newest = names.last().expect("a base");
    let r = c
        .http
        .delete(format!("{}/v1/admin/backups/{newest}", c.url(master)))
        .bearer_auth(TOKEN)
        .send()
        .await
        .expect("delete");
    assert_eq!(r.status(), 409, "the newest base was deleted");
    let body: Value = r.json().await.expect("json");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap_or_default()
            .contains("newest"),
        "{body}"
    );

    // Each window of 2 s, once settled, is one segment.
    let root = tempfile::tempdir().expect("temp dir");
    let credentials = root.path().join("credentials");
    let lines: String = s3.env().iter().map(|(k, v)| format!("{k}={v}\n")).collect();
    std::fs::write(&credentials, lines).expect("credentials");
    let loc = Location::open(&archive, Some(&credentials)).expect("open the archive");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let catalog = Catalog::list(&loc).await.expect("list the archive");
        let oldest = catalog.bases.first().map_or(0, |b| b.index);
        // Settled a third of a second after the window, merged within a
        // second after that, its members deleted 2 s later, within a second.
        let settled = (now_ms() - 4_500) / 2_000;
        let mut per_window = BTreeMap::<u64, usize>::new();
        for s in catalog.segments.iter().filter(|s| s.last > oldest) {
            let w = s.time_ms / 2_000;
            if w < settled {
                *per_window.entry(w).or_default() += 1;
            }
        }
        if per_window.len() >= 3 && per_window.values().all(|n| *n == 1) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "settled windows were not merged (segments per window: {per_window:?})"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    drop(c);

    // A revision in the middle of the concurrent writes.
    let mut revisions: Vec<u64> = writes.iter().map(|w| w.revision).collect();
    revisions.sort_unstable();
    let middle = revisions[revisions.len() / 2];
    let r_s = middle.to_string();
    let at_r = restore_and_start(&s3, &http, root.path(), "r1", &["--target-revision", &r_s]).await;
    let (got, revision) = contents(&http, &at_r.url).await;
    assert_eq!(revision, middle);
    assert!(
        got == expected(&writes, middle),
        "restored state differs at revision {middle}"
    );
    drop(at_r);

    // A time between two of the slow writes.
    let (_, acked, cut_rev) = timed[9];
    let (sent_next, _, _) = timed[10];
    let cut = (acked + sent_next) / 2;
    let t_s = chrono_rfc3339(cut);
    let at_t = restore_and_start(&s3, &http, root.path(), "r2", &["--target-time", &t_s]).await;
    let (got, revision) = contents(&http, &at_t.url).await;
    assert_eq!(revision, cut_rev, "restored to {t_s}");
    assert!(
        got == expected(&writes, cut_rev),
        "restored state differs at {t_s}"
    );
    drop(at_t);

    let latest = restore_and_start(&s3, &http, root.path(), "r3", &[]).await;
    let (got, revision) = contents(&http, &latest.url).await;
    assert!(revision >= last);
    assert!(
        got == expected(&writes, last),
        "the latest restore lacks writes"
    );
    drop(latest);

    // Targets outside the archive, a used directory: one line each.
    let members = "r9=http://127.0.0.1:1";
    let fresh = root.path().join("r9");
    let fresh_s = fresh.to_str().expect("utf-8 path");
    let beyond = (last + 1_000_000).to_string();
    let base_args = [
        "backup",
        "restore",
        "--from-archive",
        archive.as_str(),
        "--data-dir",
        fresh_s,
        "--name",
        "r9",
        "--cluster-id",
        "x",
        "--initial-members",
        members,
    ];
    for (target, says) in [
        (
            vec!["--target-revision", beyond.as_str()],
            "past the last recoverable",
        ),
        (
            vec!["--target-time", "2001-01-01T00:00:00Z"],
            "before the first recoverable",
        ),
        (vec!["--target-time", "yesterday"], "RFC 3339"),
    ] {
        let (code, _, err) = phxkv(&s3, &[&base_args[..], &target[..]].concat());
        assert_ne!(code, 0, "{target:?} was restored");
        assert!(err.contains(says), "{target:?}: {err}");
        assert!(!fresh.exists(), "a refused restore left {fresh_s}");
    }

    // Only the member named restores, and a used directory is left alone
    // when asked to: both successfully, touching nothing.
    for only in ["--only-member=r0", "--only-member="] {
        let (code, out, err) = phxkv(&s3, &[&base_args[..], &[only]].concat());
        assert_eq!(code, 0, "{only}: {err}");
        assert!(out.contains("nothing restored"), "{out}");
        assert!(!fresh.exists());
    }
    let used = root.path().join("r3");
    let used_s = used.to_str().expect("utf-8 path");
    let mut if_empty = base_args.to_vec();
    if_empty[5] = used_s;
    if_empty.push("--if-empty");
    let (code, out, err) = phxkv(&s3, &if_empty);
    assert_eq!(code, 0, "--if-empty: {err}");
    assert!(out.contains("already holds data"), "{out}");
    // A mount point's own lost+found is no data: the restore goes on.
    let mount = root.path().join("mount");
    std::fs::create_dir_all(mount.join("lost+found")).expect("lost+found");
    let mut into_mount = base_args.to_vec();
    into_mount[5] = mount.to_str().expect("utf-8 path");
    into_mount.push("--if-empty");
    let (code, out, err) = phxkv(&s3, &into_mount);
    assert_eq!(code, 0, "into a mount point: {err}");
    assert!(!out.contains("already holds data"), "{out}");
    assert!(mount.join("identity.json").exists() && mount.join("lost+found").is_dir());

    // A damaged segment is refused by its checksum.
    // One the restore reads: with merging, a merged segment's members may
    // still be there beside it, unread.
    let catalog = Catalog::list(&loc).await.expect("list the archive");
    let plan = phxkv::archive::restore::plan(&catalog, phxkv::archive::restore::Target::Latest)
        .expect("a plan");
    let seg = plan.segments.last().expect("a segment");
    let path = loc.path(&seg.key);
    let mut bytes = loc
        .store
        .get(&path)
        .await
        .expect("get segment")
        .bytes()
        .await
        .expect("segment bytes")
        .to_vec();
    let intact = bytes.clone();
    let at = bytes.len() / 2;
    bytes[at] ^= 0x01;
    loc.store
        .put(&path, bytes.into())
        .await
        .expect("put segment");
    let (code, _, err) = phxkv(&s3, &base_args);
    assert_ne!(code, 0, "a damaged segment was replayed");
    assert!(err.contains("corrupted"), "{err}");
    assert_eq!(
        err.trim().lines().count(),
        2,
        "a progress line and the error: {err}"
    );
    assert!(!fresh.exists());
    loc.store
        .put(&path, intact.into())
        .await
        .expect("put the segment back");

    // Restored under the archived cluster's own id and pointed at its
    // archive: a restore to an earlier point starts a history of its own,
    // and is refused (even once it passes the archive's end); one from the
    // latest point continues the archive.
    let archive_flags = [
        "--archive-url",
        archive.as_str(),
        "--archive-flush-every",
        "200ms",
    ];
    let forked = restore_as(
        &s3,
        &http,
        root.path(),
        "r4",
        "phxkv",
        &["--target-revision", &r_s],
        &archive_flags,
    )
    .await;
    let forked_write = put(&http, &forked.url, "forked", "x").await;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let l = archive_listing(&http, &forked.url).await;
        if l["archive_error"]
            .as_str()
            .is_some_and(|e| e.contains("restored at index"))
        {
            break;
        }
        assert!(Instant::now() < deadline, "the fork was not refused: {l}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    drop(forked);
    // The archived cluster stopped long enough ago (its two seconds here;
    // two minutes by default) for the restored one to take over.
    let mut takeover = archive_flags.to_vec();
    takeover.extend(["--archive-takeover-after", "2s"]);
    let continued = restore_as(&s3, &http, root.path(), "r5", "phxkv", &[], &takeover).await;
    let continued_write = put(&http, &continued.url, "continued", "x").await;
    assert!(continued_write > last && forked_write > middle);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let l = archive_listing(&http, &continued.url).await;
        if l["recoverable"]["last"]["revision"].as_u64() >= Some(continued_write) {
            assert!(l["archive_error"].is_null(), "{l}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the restore from the latest point did not continue the archive: {l}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    drop(continued);
}

/// `ms` since the epoch as RFC 3339 with milliseconds, in UTC.
fn chrono_rfc3339(ms: u64) -> String {
    chrono::DateTime::from_timestamp_millis(ms as i64)
        .expect("a time")
        .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}
