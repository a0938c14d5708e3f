//! Leases and locks on a real cluster: a lock holder killed with SIGKILL
//! frees the lock after its TTL (not before), fencing tokens grow, and a
//! lease kept alive through a master kill keeps its keys.

mod common;

use std::os::unix::process::CommandExt as _;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{Cluster, TOKEN};
use serde_json::{Value, json};

/// `phxkv lock jobs --ttl TTL -- sh -c SCRIPT` against `c`, in its own
/// process group, its input not a terminal (so phxkv runs the command in
/// a group of its own too).
fn lock_command(c: &Cluster, ttl: u64, script: &str) -> std::process::Child {
    let endpoints: Vec<String> = (0..c.procs.len()).map(|i| c.url(i)).collect();
    Command::new(env!("CARGO_BIN_EXE_phxkv"))
        .args([
            "lock",
            "jobs",
            "--ttl",
            &ttl.to_string(),
            "--",
            "sh",
            "-c",
            script,
        ])
        .env("PHXKV_ENDPOINTS", endpoints.join(","))
        .env("PHXKV_TOKEN", TOKEN)
        .env_remove("PHXKV_CLUSTER_TOKEN_FILE")
        .env_remove("PHXKV_CACERT")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .process_group(0)
        .spawn()
        .expect("run phxkv lock")
}

async fn wait_for_file(path: &std::path::Path, within: Duration) -> String {
    let deadline = Instant::now() + within;
    loop {
        if let Ok(text) = std::fs::read_to_string(path)
            && text.ends_with('\n')
        {
            return text.trim().to_string();
        }
        assert!(
            Instant::now() < deadline,
            "{} never appeared",
            path.display()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_killed_lock_holder_frees_the_lock_after_its_ttl_and_fencing_tokens_grow() {
    let c = Cluster::start(3, &[]).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let (a, b) = (dir.path().join("a"), dir.path().join("b"));
    let command_pid = dir.path().join("pid");
    const TTL: u64 = 3;
    let mut holder = lock_command(
        &c,
        TTL,
        &format!(
            "echo $$ > {}; echo $PHXKV_FENCING_TOKEN > {}; exec sleep 600",
            command_pid.display(),
            a.display()
        ),
    );
    let token_a: u64 = wait_for_file(&a, Duration::from_secs(20))
        .await
        .parse()
        .expect("a token");
    let mut waiter = lock_command(
        &c,
        TTL,
        &format!("echo $PHXKV_FENCING_TOKEN > {}", b.display()),
    );
    // The waiter waits while the holder lives (and keeps its lease alive
    // well past the TTL).
    tokio::time::sleep(Duration::from_secs(TTL + 2)).await;
    assert!(!b.exists(), "the waiter got the lock while it was held");
    assert!(waiter.try_wait().expect("waiter").is_none());
    // SIGKILL the holder and its command (which phxkv runs in a process
    // group of its own): nothing releases the lock but the lease's expiry.
    let command = wait_for_file(&command_pid, Duration::from_secs(5)).await;
    let killed = Instant::now();
    let group = i32::try_from(holder.id()).expect("pid");
    let killed_ok = Command::new("kill")
        .args(["-KILL", "--", &format!("-{group}"), &format!("-{command}")])
        .status()
        .expect("run kill");
    assert!(killed_ok.success());
    let _ = holder.wait();
    assert!(
        waiter.try_wait().expect("waiter").is_none(),
        "the waiter ended at the holder's death"
    );
    let token_b: u64 = wait_for_file(&b, Duration::from_secs(30))
        .await
        .parse()
        .expect("b token");
    let waited = killed.elapsed();
    let status = waiter.wait().expect("waiter exits");
    assert!(status.success(), "{status:?}");
    // The holder's last keep-alive was at most a third of the TTL before
    // the kill, and the lease outlives it by the TTL.
    assert!(
        waited >= Duration::from_secs(TTL) - Duration::from_secs(TTL) / 3,
        "the lock passed on {waited:?} after the holder died, before its TTL"
    );
    assert!(token_b > token_a, "fencing tokens {token_a} then {token_b}");
    eprintln!("lock passed on {waited:?} after kill -9; tokens {token_a} -> {token_b}");
}

#[tokio::test(flavor = "multi_thread")]
async fn phxkv_lock_exits_as_a_shell_would_for_the_command_it_ran() {
    let c = Cluster::start(3, &[]).await;
    c.wait_for_master(Duration::from_secs(15)).await;
    let run = |script: &str| {
        lock_command(&c, 10, script)
            .wait()
            .expect("phxkv lock exits")
    };
    assert_eq!(run("exit 7").code(), Some(7));
    // Ended by a signal: 128 and its number (SIGKILL, 9).
    assert_eq!(run("kill -9 $$").code(), Some(137));
    // A command that is not there, or cannot be run: 127 and 126, with one
    // line that says so; the lock is released all the same.
    let dir = tempfile::tempdir().expect("tempdir");
    let not_executable = dir.path().join("script");
    std::fs::write(&not_executable, "#!/bin/sh\n").expect("write");
    for (program, code) in [
        (dir.path().join("missing"), 127),
        (not_executable.clone(), 126),
    ] {
        let program = program.display().to_string();
        let (got, _, err) = common::run_phxkv(
            &["lock", "jobs", "--ttl", "10", "--", &program],
            &[
                ("PHXKV_ENDPOINTS", c.url(0)),
                ("PHXKV_TOKEN", TOKEN.to_owned()),
            ],
        );
        assert_eq!(got, code, "{program}: {err}");
        assert!(
            err.trim()
                .starts_with(&format!("phxkv: cannot run {program}: "))
                && err.trim().lines().count() == 1,
            "{err}"
        );
    }
    assert_eq!(run("exit 0").code(), Some(0), "the lock was released");
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_reaches_the_locked_command_and_the_lock_is_released_once_it_exits() {
    let c = Cluster::start(3, &[]).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let (a, b) = (dir.path().join("a"), dir.path().join("b"));
    // A TTL far longer than the test waits: only a release passes the lock
    // on in time, not the lease's expiry.
    const TTL: u64 = 60;
    let mut holder = lock_command(
        &c,
        TTL,
        &format!(
            "trap 'sleep 1; echo done >> {a}; exit 0' TERM; echo held > {a}; \
             while :; do sleep 0.1; done",
            a = a.display()
        ),
    );
    wait_for_file(&a, Duration::from_secs(20)).await;
    let mut waiter = lock_command(&c, TTL, &format!("cat {} > {}", a.display(), b.display()));
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(!b.exists(), "the waiter got the lock while it was held");
    // SIGTERM to phxkv alone, as a service manager sends it.
    let sent = Instant::now();
    let termed = Command::new("kill")
        .args(["-TERM", &holder.id().to_string()])
        .status()
        .expect("run kill");
    assert!(termed.success());
    let status = holder.wait().expect("holder exits");
    assert!(
        status.success(),
        "the command's exit status is phxkv's: {status:?}"
    );
    // The waiter's command ran after the holder's had finished.
    let seen = wait_for_file(&b, Duration::from_secs(15)).await;
    assert_eq!(
        seen, "held\ndone",
        "the lock passed on before the command ended"
    );
    assert!(
        sent.elapsed() < Duration::from_secs(TTL / 2),
        "released by expiry, not on exit"
    );
    assert!(waiter.wait().expect("waiter exits").success());
}

/// Lines in `path` now (0 when it does not exist).
fn lines_in(path: &std::path::Path) -> usize {
    std::fs::read_to_string(path).map_or(0, |t| t.lines().count())
}

/// A lock lost while its command runs stops the command and everything it
/// started (a script's worker), not the script alone: the lock may belong
/// to another holder from then on.
#[tokio::test(flavor = "multi_thread")]
async fn a_lost_lock_stops_the_command_and_what_it_started() {
    let c = Cluster::start(3, &[]).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let (lease, ticks) = (dir.path().join("lease"), dir.path().join("ticks"));
    let mut holder = lock_command(
        &c,
        60,
        &format!(
            "(while :; do echo tick >> {t}; sleep 0.05; done) & \
             echo $PHXKV_LOCK_LEASE > {l}; wait",
            t = ticks.display(),
            l = lease.display()
        ),
    );
    let id = wait_for_file(&lease, Duration::from_secs(20)).await;
    while lines_in(&ticks) < 3 {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let r = c
        .http
        .delete(format!("{}/v1/leases/{id}", c.url(0)))
        .bearer_auth(TOKEN)
        .send()
        .await
        .expect("revoke");
    assert!(r.status().is_success(), "revoke: {}", r.status());
    let status = holder.wait().expect("holder exits");
    assert_eq!(status.code(), Some(4), "a lost lock is an error");
    let after = lines_in(&ticks);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        lines_in(&ticks),
        after,
        "the command's worker went on without the lock"
    );
}

/// SIGINT sent to `phxkv lock` (by a supervisor, not a terminal) reaches
/// the command, as SIGTERM does.
#[tokio::test(flavor = "multi_thread")]
async fn sigint_to_phxkv_lock_reaches_the_command() {
    let c = Cluster::start(1, &[]).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let a = dir.path().join("a");
    let mut holder = lock_command(
        &c,
        60,
        &format!(
            "trap 'echo interrupted >> {a}; exit 5' INT; echo held > {a}; \
             while :; do sleep 0.1; done",
            a = a.display()
        ),
    );
    wait_for_file(&a, Duration::from_secs(20)).await;
    let sent = Command::new("kill")
        .args(["-INT", &holder.id().to_string()])
        .status()
        .expect("run kill");
    assert!(sent.success());
    let status = holder.wait().expect("holder exits");
    assert_eq!(status.code(), Some(5), "the command's own exit code");
    assert_eq!(
        wait_for_file(&a, Duration::from_secs(5)).await,
        "held\ninterrupted"
    );
}

async fn post(c: &Cluster, i: usize, path: &str, body: Value) -> (u16, Value) {
    let r = c
        .http
        .post(format!("{}{path}", c.url(i)))
        .bearer_auth(TOKEN)
        .json(&body)
        .send()
        .await;
    match r {
        Ok(r) => {
            let status = r.status().as_u16();
            (status, r.json().await.unwrap_or(Value::Null))
        }
        Err(_) => (0, Value::Null),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_lease_kept_alive_through_a_master_kill_keeps_its_keys_then_expires_everywhere() {
    let mut c = Cluster::start(3, &[]).await;
    let m = c.wait_for_master(Duration::from_secs(20)).await;
    let f = (m + 1) % 3;
    let (status, granted) = post(&c, f, "/v1/leases", json!({"ttl_secs": 3})).await;
    assert_eq!(status, 200, "{granted}");
    let id = granted["id"].as_u64().expect("id");
    let r = c
        .http
        .put(format!("{}/v1/kv/owned?lease={id}", c.url(f)))
        .bearer_auth(TOKEN)
        .body("v")
        .send()
        .await
        .expect("put");
    assert_eq!(r.status(), 200);
    c.kill9(m);
    // Keep it alive through the follower for twice the TTL, across the
    // election: the key must survive.
    let until = Instant::now() + Duration::from_secs(6);
    while Instant::now() < until {
        let (status, body) = post(&c, f, &format!("/v1/leases/{id}/keepalive"), json!({})).await;
        assert!(
            status == 200 || status == 503 || status == 0,
            "{status} {body}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let m2 = c.wait_for_master(Duration::from_secs(20)).await;
    let (status, _) = c.get(f, "owned", "").await.expect("get");
    assert_eq!(status, 200, "a key of a lease kept alive was deleted");
    // Now let it go: it expires, on every live replica at one revision.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (status, _) = c.get(m2, "owned", "").await.expect("get");
        if status == 404 {
            break;
        }
        assert!(Instant::now() < deadline, "the lease never expired");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let (status, body) = post(&c, f, &format!("/v1/leases/{id}/keepalive"), json!({})).await;
    assert_eq!(status, 404, "{body}");
    for i in [m2, 3 - m - m2] {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let (status, _) = c.get(i, "owned", "consistency=local").await.expect("get");
            if status == 404 {
                break;
            }
            assert!(Instant::now() < deadline, "node {i} kept the key");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// `phxkv elect ARGS...` against `c`, its stdout to `out`.
fn elect_command(c: &Cluster, args: &[&str], out: &std::path::Path) -> std::process::Child {
    let endpoints: Vec<String> = (0..c.procs.len()).map(|i| c.url(i)).collect();
    Command::new(env!("CARGO_BIN_EXE_phxkv"))
        .arg("elect")
        .args(args)
        .env("PHXKV_ENDPOINTS", endpoints.join(","))
        .env("PHXKV_TOKEN", TOKEN)
        .env_remove("PHXKV_CLUSTER_TOKEN_FILE")
        .env_remove("PHXKV_CACERT")
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(out).expect("output file"))
        .spawn()
        .expect("run phxkv elect")
}

/// Waits until the file at `path` has `n` complete lines; returns them.
async fn wait_for_lines(path: &std::path::Path, n: usize, within: Duration) -> Vec<String> {
    let deadline = Instant::now() + within;
    loop {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        let lines: Vec<String> = text
            .split_inclusive('\n')
            .filter(|l| l.ends_with('\n'))
            .map(|l| l.trim().to_string())
            .collect();
        if lines.len() >= n {
            return lines;
        }
        assert!(
            Instant::now() < deadline,
            "{} has {lines:?}, not {n} lines",
            path.display()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn elect_leads_until_interrupted_and_listen_follows_each_leader() {
    let c = Cluster::start(3, &[]).await;
    c.wait_for_master(Duration::from_secs(20)).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let (listen_out, a_out, b_out) = (
        dir.path().join("listen"),
        dir.path().join("a"),
        dir.path().join("b"),
    );
    let mut listener = elect_command(&c, &["sched", "--listen"], &listen_out);
    assert_eq!(
        wait_for_lines(&listen_out, 1, Duration::from_secs(20)).await,
        ["no leader"]
    );
    let mut a = elect_command(&c, &["sched", "host-a"], &a_out);
    let elected_a = wait_for_lines(&a_out, 1, Duration::from_secs(20)).await;
    assert!(
        elected_a[0].starts_with("elected sched/") && elected_a[0].ends_with("value=host-a"),
        "{elected_a:?}"
    );
    let mut b = elect_command(&c, &["sched", "host-b"], &b_out);
    let seen = wait_for_lines(&listen_out, 2, Duration::from_secs(20)).await;
    assert!(seen[1].ends_with("value=host-a"), "{seen:?}");
    // b waits while a leads; a interrupted resigns, and b leads at once
    // (not a TTL later).
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let list: Value = c
            .http
            .get(format!("{}/v1/kv?prefix=sched/", c.url(0)))
            .bearer_auth(TOKEN)
            .send()
            .await
            .expect("list")
            .json()
            .await
            .expect("json");
        if list["kvs"].as_array().map_or(0, Vec::len) == 2 {
            break;
        }
        assert!(Instant::now() < deadline, "b never became a candidate");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(std::fs::read_to_string(&b_out).unwrap_or_default(), "");
    let _ = Command::new("kill")
        .args(["-INT", &a.id().to_string()])
        .status();
    let status = a.wait().expect("a exits");
    assert!(status.success(), "{status:?}");
    let elected_b = wait_for_lines(&b_out, 1, Duration::from_secs(5)).await;
    assert!(elected_b[0].ends_with("value=host-b"), "{elected_b:?}");
    let term = |line: &str| -> u64 {
        line.split_whitespace()
            .find_map(|w| w.strip_prefix("term="))
            .and_then(|t| t.parse().ok())
            .unwrap_or(0)
    };
    assert!(term(&elected_b[0]) > term(&elected_a[0]));
    let seen = wait_for_lines(&listen_out, 3, Duration::from_secs(20)).await;
    assert!(seen[2].ends_with("value=host-b"), "{seen:?}");
    let _ = b.kill();
    let _ = listener.kill();
    let _ = (b.wait(), listener.wait());
}
