//! The client commands of the `phxkv` binary, run as a user would run them,
//! against a real three-node cluster: output, exit codes and failover.

mod common;

use std::io::Write;
use std::net::TcpListener;
use std::process::{Command, Output, Stdio};

use common::Cluster;

/// What one CLI run printed and how it exited.
struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

/// `phxkv ARGS` against `endpoints`, its input and output still to set.
fn phxkv_command(endpoints: &str, args: &[&str]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_phxkv"));
    command
        .args(args)
        .env("PHXKV_ENDPOINTS", endpoints)
        .env_remove("PHXKV_CLUSTER_TOKEN_FILE");
    command
}

/// Runs `phxkv ARGS` with `stdin` as its input, against `endpoints`.
fn phxkv(endpoints: &str, args: &[&str], stdin: &str) -> Run {
    let mut child = phxkv_command(endpoints, args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn phxkv");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(stdin.as_bytes())
        .expect("write stdin");
    let Output {
        status,
        stdout,
        stderr,
    } = child.wait_with_output().expect("phxkv output");
    Run {
        code: status.code().expect("exit code"),
        stdout: String::from_utf8_lossy(&stdout).into_owned(),
        stderr: String::from_utf8_lossy(&stderr).into_owned(),
    }
}

/// A loopback URL nobody listens on.
fn dead_endpoint() -> String {
    let port = TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port");
    format!("http://127.0.0.1:{port}")
}

fn all_endpoints(c: &Cluster) -> String {
    (0..c.procs.len())
        .map(|i| c.url(i))
        .collect::<Vec<_>>()
        .join(",")
}

#[tokio::test(flavor = "multi_thread")]
async fn kv_commands_round_trip_with_exit_codes() {
    let c = Cluster::start(3, &[]).await;
    let ep = all_endpoints(&c);

    let r = phxkv(&ep, &["put", "greeting", "hello world"], "");
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(r.stdout.starts_with("OK revision="), "{}", r.stdout);
    assert!(r.stdout.trim_end().ends_with("version=1"), "{}", r.stdout);

    // Not a terminal: the raw value, no newline added.
    let r = phxkv(&ep, &["get", "greeting"], "");
    assert_eq!((r.code, r.stdout.as_str()), (0, "hello world"));

    // An endpoint with a path reaches no route: not "key not found" (exit
    // 1), which a script would take for an answer, but a usage error.
    let with_path = format!("{}/v1", c.url(0));
    let r = phxkv(&with_path, &["get", "greeting"], "");
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(r.stderr.contains("--endpoints"), "{}", r.stderr);

    // The value from stdin, byte for byte.
    let r = phxkv(&ep, &["put", "from-stdin", "-"], "line 1\nline 2\n");
    assert_eq!(r.code, 0, "{}", r.stderr);
    let r = phxkv(&ep, &["get", "from-stdin"], "");
    assert_eq!((r.code, r.stdout.as_str()), (0, "line 1\nline 2\n"));
    // -o json: the API's key object (base64 with text copies) and the
    // revision of the read; --json is the same.
    for flags in [&["-o", "json"][..], &["--output=json"], &["--json"]] {
        let args = [&["get", "from-stdin"][..], flags].concat();
        let r = phxkv(&ep, &args, "");
        assert_eq!(r.code, 0, "{}", r.stderr);
        let v: serde_json::Value = serde_json::from_str(&r.stdout).expect("JSON");
        assert_eq!(v["key"], "ZnJvbS1zdGRpbg==", "{v}");
        assert_eq!(v["key_utf8"], "from-stdin", "{v}");
        assert_eq!(v["value"], "bGluZSAxCmxpbmUgMgo=", "{v}");
        assert_eq!(v["value_utf8"], "line 1\nline 2\n", "{v}");
        assert_eq!(v["version"], 1, "{v}");
        assert_eq!(v["create_revision"], v["mod_revision"], "{v}");
        assert!(v["revision"].as_u64() >= v["mod_revision"].as_u64(), "{v}");
    }
    // Control characters: still UTF-8, so the text copy is there too.
    let r = phxkv(&ep, &["put", "ctl", "-"], "\u{7f}\u{0}");
    assert_eq!(r.code, 0, "{}", r.stderr);
    let r = phxkv(&ep, &["get", "ctl", "-o", "json"], "");
    let v: serde_json::Value = serde_json::from_str(&r.stdout).expect("JSON");
    assert_eq!(
        (&v["value"], &v["value_utf8"]),
        (&"fwA=".into(), &"\u{7f}\u{0}".into()),
        "{v}"
    );
    // A table shows such values as base64.
    let r = phxkv(&ep, &["get", "from-stdin", "-o", "table"], "");
    assert_eq!(r.code, 0, "{}", r.stderr);
    let lines: Vec<&str> = r.stdout.lines().collect();
    assert_eq!(lines.len(), 2, "{}", r.stdout);
    assert!(lines[0].starts_with("KEY         VALUE"), "{}", r.stdout);
    assert!(lines[1].starts_with("from-stdin  b64:"), "{}", r.stdout);

    // A key that needs percent-encoding.
    let r = phxkv(&ep, &["put", "odd key?&#%/é", "x"], "");
    assert_eq!(r.code, 0, "{}", r.stderr);
    let r = phxkv(&ep, &["get", "odd key?&#%/é"], "");
    assert_eq!((r.code, r.stdout.as_str()), (0, "x"));

    // A key that is not text: list prints it as b64:..., and that form
    // names it again in get, delete and --prefix.
    let r = phxkv(&ep, &["put", "b64:/wBh", "binary"], "");
    assert_eq!(r.code, 0, "{}", r.stderr);
    let r = phxkv(&ep, &["list", "--prefix", "b64:/w=="], "");
    assert_eq!(
        (r.code, r.stdout.as_str()),
        (0, "b64:/wBh\tbinary\n"),
        "{}",
        r.stderr
    );
    let r = phxkv(&ep, &["get", "b64:/wBh"], "");
    assert_eq!((r.code, r.stdout.as_str()), (0, "binary"), "{}", r.stderr);
    let r = phxkv(&ep, &["delete", "b64:/wBh"], "");
    assert_eq!((r.code, r.stdout.trim()), (0, "deleted"), "{}", r.stderr);
    let r = phxkv(&ep, &["get", "b64:/wBh"], "");
    assert_eq!(r.code, 1);
    assert_eq!(r.stderr.trim(), "phxkv: key not found: b64:/wBh");
    let r = phxkv(&ep, &["get", "b64:not base64"], "");
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert_eq!(r.stderr.lines().count(), 1, "{}", r.stderr);
    assert!(
        r.stderr.contains("not b64: followed by base64"),
        "{}",
        r.stderr
    );

    // A local read waiting for the revision of one's own write sees it.
    let r = phxkv(&ep, &["put", "ryw", "mine"], "");
    let revision = r
        .stdout
        .split_whitespace()
        .find_map(|w| w.strip_prefix("revision="))
        .expect("revision")
        .to_string();
    let r = phxkv(
        &ep,
        &["get", "ryw", "--local", "--min-revision", &revision],
        "",
    );
    assert_eq!((r.code, r.stdout.as_str()), (0, "mine"));

    // Compare-and-swap: a wrong version changes nothing and exits 1.
    let r = phxkv(&ep, &["put", "greeting", "nope", "--if-version", "7"], "");
    assert_eq!(r.code, 1);
    assert_eq!(r.stderr.trim(), "phxkv: compare failed: current version 1");
    let r = phxkv(&ep, &["put", "greeting", "hi", "--if-version", "1"], "");
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(r.stdout.trim_end().ends_with("version=2"), "{}", r.stdout);

    // Delete, then the key is gone.
    let r = phxkv(&ep, &["delete", "greeting"], "");
    assert_eq!((r.code, r.stdout.trim()), (0, "deleted"));
    let r = phxkv(&ep, &["delete", "greeting"], "");
    assert_eq!(
        (r.code, r.stdout.as_str()),
        (1, ""),
        "errors go to stderr only"
    );
    assert_eq!(r.stderr.trim(), "phxkv: key not found: greeting");
    // `b64:` alone would be the empty prefix, every key: refused.
    for args in [&["delete", "--prefix", "b64:"][..], &["list", "b64:"]] {
        let r = phxkv(&ep, args, "");
        assert_eq!(r.code, 2, "{args:?}: {}", r.stderr);
        assert!(
            r.stderr.contains("give the empty prefix ''"),
            "{}",
            r.stderr
        );
    }
    let r = phxkv(&ep, &["get", "greeting"], "");
    assert_eq!(r.code, 1);
    assert_eq!(r.stderr.trim(), "phxkv: key not found: greeting");
    assert!(r.stdout.is_empty());

    // A lease's keys in JSON come with text copies, as list gives them.
    let r = phxkv(&ep, &["lease", "grant", "1m", "--id", "4242"], "");
    assert_eq!(r.code, 0, "{}", r.stderr);
    let r = phxkv(&ep, &["put", "leased key", "v", "--lease", "4242"], "");
    assert_eq!(r.code, 0, "{}", r.stderr);
    let r = phxkv(&ep, &["lease", "get", "4242", "--keys", "-o", "json"], "");
    assert_eq!(r.code, 0, "{}", r.stderr);
    let v: serde_json::Value = serde_json::from_str(&r.stdout).expect("JSON");
    assert_eq!(v["keys"], serde_json::json!(["bGVhc2VkIGtleQ=="]), "{v}");
    assert_eq!(v["keys_utf8"], serde_json::json!(["leased key"]), "{v}");
    let r = phxkv(&ep, &["lease", "revoke", "4242"], "");
    assert_eq!(r.code, 0, "{}", r.stderr);
}

#[tokio::test(flavor = "multi_thread")]
async fn list_txn_and_watch() {
    let c = Cluster::start(3, &[]).await;
    let ep = all_endpoints(&c);
    for (k, v) in [
        ("users/a", "1"),
        ("users/b", "2"),
        ("users/c", "3"),
        ("other", "x"),
    ] {
        assert_eq!(phxkv(&ep, &["put", k, v], "").code, 0);
    }

    let r = phxkv(&ep, &["list", "--prefix", "users/"], "");
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(r.stdout, "users/a\t1\nusers/b\t2\nusers/c\t3\n");
    let r = phxkv(&ep, &["list", "--prefix", "users/", "--limit", "2"], "");
    assert_eq!(r.stdout, "users/a\t1\nusers/b\t2\n");

    // Output read by something that stops reading (`phxkv list | head -1`):
    // the command ends quietly and successfully, as cat would. With
    // stderr closed too, an error has nowhere to go but is no panic.
    let closed = |args: &[&str], stderr: bool| {
        let mut child = phxkv_command(&ep, args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn phxkv");
        drop(child.stdout.take());
        if !stderr {
            drop(child.stderr.take());
        }
        let out = child.wait_with_output().expect("phxkv output");
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    assert_eq!(
        closed(&["list", "--prefix", "users/"], true),
        (Some(0), String::new())
    );
    assert_eq!(closed(&["get", "users/nobody"], false).0, Some(1));
    let r = phxkv(&ep, &["list", "--prefix", "users/", "-o", "json"], "");
    assert_eq!(r.code, 0, "{}", r.stderr);
    let v: serde_json::Value = serde_json::from_str(&r.stdout).expect("JSON");
    let kvs = v.as_array().expect("an array");
    assert_eq!(kvs.len(), 3, "{v}");
    assert_eq!(
        (&kvs[0]["key"], &kvs[0]["key_utf8"]),
        (&"dXNlcnMvYQ==".into(), &"users/a".into())
    );
    assert_eq!(
        (&kvs[2]["value"], &kvs[2]["value_utf8"]),
        (&"Mw==".into(), &"3".into())
    );
    for kv in kvs {
        for field in ["version", "create_revision", "mod_revision"] {
            assert!(kv[field].as_u64().is_some(), "{field}: {kv}");
        }
    }
    let r = phxkv(&ep, &["list", "--prefix", "users/", "-o", "table"], "");
    assert_eq!(r.code, 0, "{}", r.stderr);
    let lines: Vec<&str> = r.stdout.lines().collect();
    assert_eq!(lines.len(), 4, "{}", r.stdout);
    assert!(
        lines[0].starts_with("KEY      VALUE  VERSION  MOD_REV"),
        "{}",
        r.stdout
    );
    assert!(
        lines[1].starts_with("users/a  1      1        "),
        "{}",
        r.stdout
    );

    // Watch from the start: the history so far replays as lines.
    let mut watch = Command::new(env!("CARGO_BIN_EXE_phxkv"))
        .args(["watch", "--prefix", "users/", "--start-revision", "1"])
        .env("PHXKV_ENDPOINTS", &ep)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn watch");
    // The same as NDJSON: one API watch event per line.
    let mut json_watch = Command::new(env!("CARGO_BIN_EXE_phxkv"))
        .args([
            "watch",
            "--prefix",
            "users/",
            "--start-revision",
            "1",
            "-o",
            "json",
        ])
        .env("PHXKV_ENDPOINTS", &ep)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn watch");
    let first = {
        use std::io::BufRead;
        let mut line = String::new();
        let out = json_watch.stdout.take().expect("watch stdout");
        std::io::BufReader::new(out)
            .read_line(&mut line)
            .expect("a watch line");
        line
    };
    let _ = json_watch.kill();
    let _ = json_watch.wait();
    let ev: serde_json::Value = serde_json::from_str(&first).expect("one JSON object");
    assert_eq!(
        (&ev["type"], &ev["key_utf8"]),
        (&"put".into(), &"users/a".into()),
        "{ev}"
    );
    assert_eq!(
        (&ev["value"], &ev["value_utf8"]),
        (&"MQ==".into(), &"1".into()),
        "{ev}"
    );
    assert!(ev["revision"].as_u64().is_some(), "{ev}");

    let out = watch.stdout.take().expect("watch stdout");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(out).lines() {
            if tx.send(line.unwrap_or_default()).is_err() {
                break;
            }
        }
    });

    // A transaction from stdin: it deletes users/b if users/a is at version 1.
    let txn = r#"{"compare": [{"key": "users/a", "target": "version", "version": 1}],
                  "success": [{"delete": {"key": "users/b"}}],
                  "failure": []}"#;
    let r = phxkv(&ep, &["txn", "-"], txn);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let v: serde_json::Value = serde_json::from_str(&r.stdout).expect("JSON");
    assert_eq!(v["succeeded"], true);
    // The same again: users/a is still at version 1, but now a compare on
    // the deleted key fails, so the exit code is 1.
    let failing = r#"{"compare": [{"key": "users/b", "target": "version", "version": 1}]}"#;
    let r = phxkv(&ep, &["txn", "-"], failing);
    assert_eq!(r.code, 1, "{}", r.stdout);
    let r = phxkv(&ep, &["txn", "-"], "{not json");
    assert_eq!(r.code, 2);

    let mut seen = Vec::new();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
    while !seen
        .iter()
        .any(|l: &String| l.starts_with("DELETE users/b rev="))
        && std::time::Instant::now() < deadline
    {
        if let Ok(line) = rx.recv_timeout(std::time::Duration::from_millis(200)) {
            seen.push(line);
        }
    }
    let _ = watch.kill();
    let _ = watch.wait();
    assert!(
        seen.first()
            .is_some_and(|l| l.starts_with("PUT users/a 1 rev=")),
        "{seen:?}"
    );
    assert!(
        seen.iter().any(|l| l.starts_with("DELETE users/b rev=")),
        "{seen:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn status_members_and_failover() {
    let c = Cluster::start(3, &[]).await;
    let ep = all_endpoints(&c);

    let r = phxkv(&ep, &["status"], "");
    assert_eq!(r.code, 0, "{}", r.stderr);
    for name in ["n1", "n2", "n3"] {
        assert_eq!(
            r.stdout.lines().filter(|l| l.starts_with(name)).count(),
            1,
            "{}",
            r.stdout
        );
    }
    assert_eq!(r.stdout.matches("voter").count(), 3, "{}", r.stdout);
    let r = phxkv(&ep, &["status", "-o", "table"], "");
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(r.stdout.matches("voter").count(), 3, "{}", r.stdout);
    for args in [
        &["status", "--json"][..],
        &["status", "-o", "json"],
        &["members", "list", "-o", "json"],
    ] {
        let r = phxkv(&ep, args, "");
        assert_eq!(r.code, 0, "{args:?}: {}", r.stderr);
        let v: serde_json::Value = serde_json::from_str(&r.stdout).expect("JSON");
        for field in [
            "cluster_id",
            "node",
            "revision",
            "commit_index",
            "applied_index",
        ] {
            assert!(!v[field].is_null(), "{args:?} {field}: {v}");
        }
        assert!(v.get("master").is_some(), "{args:?}: {v}");
        let members = v["members"].as_array().expect("members");
        assert_eq!(members.len(), 3, "{v}");
        assert_eq!(members.iter().filter(|m| m["role"] == "voter").count(), 3);
        // In name order, as the text view shows them (the configuration
        // keeps them by random incarnation id).
        let names: Vec<&str> = members.iter().filter_map(|m| m["name"].as_str()).collect();
        let mut sorted = names.clone();
        sorted.sort_unstable();
        assert_eq!(names, sorted, "{args:?}: {v}");
        for m in members {
            for field in ["name", "id", "peer_url", "is_master", "healthy"] {
                assert!(!m[field].is_null(), "{args:?} {field}: {m}");
            }
        }
        // Every field of the API's answer, as the README says.
        let api: serde_json::Value = c
            .http
            .get(format!("{}/v1/cluster", c.url(0)))
            .send()
            .await
            .expect("GET /v1/cluster")
            .json()
            .await
            .expect("JSON");
        let fields = |v: &serde_json::Value| {
            let mut keys: Vec<String> = v.as_object().expect("object").keys().cloned().collect();
            keys.sort();
            keys
        };
        assert_eq!(fields(&v), fields(&api), "{args:?}");
        assert_eq!(fields(&members[0]), fields(&api["members"][0]), "{args:?}");
    }

    // Membership changes need the token: without it, a usage error.
    let r = phxkv(&ep, &["members", "add", "n4", "http://127.0.0.1:9"], "");
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert_eq!(r.stderr.lines().count(), 1, "{}", r.stderr);
    assert!(r.stderr.contains("cluster token"), "{}", r.stderr);
    let r = phxkv(&ep, &["members"], "");
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(!r.stdout.contains("n4"), "{}", r.stdout);

    // A dead first endpoint is skipped.
    let dead_then_live = format!("{},{}", dead_endpoint(), c.url(1));
    let r = phxkv(&dead_then_live, &["put", "failover", "ok"], "");
    assert_eq!(r.code, 0, "{}", r.stderr);
    let r = phxkv(&dead_then_live, &["get", "failover"], "");
    assert_eq!((r.code, r.stdout.as_str()), (0, "ok"));
}

#[tokio::test(flavor = "multi_thread")]
async fn members_transfer_moves_mastership_and_explains_refusals() {
    let c = Cluster::start(3, &[]).await;
    let ep = all_endpoints(&c);
    let token = c.dir.path().join("token");
    let token = token.to_str().expect("a UTF-8 path");
    let old = c.wait_for_master(std::time::Duration::from_secs(20)).await;
    let name = c.procs[(old + 1) % 3].name.clone();

    let r = phxkv(
        &ep,
        &[
            "members",
            "transfer",
            &name,
            "--token-file",
            token,
            "-o",
            "json",
        ],
        "",
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    let v: serde_json::Value = serde_json::from_str(&r.stdout).expect("JSON");
    assert_eq!(v["master"].as_str(), Some(name.as_str()), "{v}");
    assert!(
        r.stderr.contains(&format!("{name} is master")),
        "{}",
        r.stderr
    );
    // Text output: the message, then the members.
    let r = phxkv(
        &ep,
        &["members", "transfer", &name, "--token-file", token],
        "",
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(
        r.stdout.starts_with(&format!("{name} is master\n")),
        "{}",
        r.stdout
    );

    // One line on stderr for each refusal, with the exit code it means.
    let r = phxkv(
        &ep,
        &["members", "transfer", "nobody", "--token-file", token],
        "",
    );
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert_eq!(r.stderr.lines().count(), 1, "{}", r.stderr);
    assert!(r.stderr.contains("no member is named"), "{}", r.stderr);
    // Replacing a member that does not exist is a missing member (exit 1,
    // as for any 404), not a usage error.
    let r = phxkv(
        &ep,
        &["members", "replace", "nobody", "--token-file", token],
        "",
    );
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert_eq!(r.stderr.lines().count(), 1, "{}", r.stderr);
    assert!(r.stderr.contains("peer_url"), "{}", r.stderr);
    let r = phxkv(&ep, &["members", "transfer", &name], "");
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(r.stderr.contains("cluster token"), "{}", r.stderr);
    let r = phxkv(&ep, &["members", "transfer", "--help"], "");
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(r.stdout.contains("Make a voter the master"), "{}", r.stdout);
}

#[tokio::test(flavor = "multi_thread")]
async fn shell_driven_through_stdin() {
    let c = Cluster::start(3, &[]).await;
    let ep = all_endpoints(&c);
    let r = phxkv(
        &ep,
        &["shell"],
        "put a 1\nget a\nget missing\nbogus\nlist\nquit\nget a\n",
    );
    // Every line ran; the exit code is the first failure's (not found).
    assert_eq!(r.code, 1, "{}", r.stderr);
    let lines: Vec<&str> = r.stdout.lines().collect();
    assert!(lines[0].starts_with("OK revision="), "{}", r.stdout);
    assert_eq!(lines[1], "1");
    assert_eq!(lines[2], "a\t1");
    // Nothing after quit ran.
    assert_eq!(lines.len(), 3, "{}", r.stdout);
    // Each error was one line, and the session went on.
    assert_eq!(r.stderr.lines().count(), 2, "{}", r.stderr);
    assert!(r.stderr.contains("key not found: missing"), "{}", r.stderr);

    // A delete of a missing key fails as `phxkv delete` does.
    let r = phxkv(&ep, &["shell"], "delete nope\n");
    assert_eq!((r.code, r.stdout.as_str()), (1, ""), "{}", r.stderr);
    assert!(r.stderr.contains("key not found: nope"), "{}", r.stderr);

    // End of input ends the session cleanly too.
    let r = phxkv(&ep, &["shell"], "get a\n");
    assert_eq!((r.code, r.stdout.as_str()), (0, "1\n"));

    // Keys with spaces, quoted as in a shell; a value of several words is
    // the rest of the line as typed.
    let script = concat!(
        "put \"a key\" 'two  words'\n",
        "get \"a key\"\n",
        "get 'a key'\n",
        "get a\\ key\n",
        "put plain it's  here\n",
        "get plain\n",
        "list \"a \"\n",
        "get a key\n",
        "get \"a key\n",
        "delete \"a key\"\n",
    );
    let r = phxkv(&ep, &["shell"], script);
    assert_eq!(r.code, 2, "a usage error came first: {}", r.stderr);
    let lines: Vec<&str> = r.stdout.lines().collect();
    assert!(lines[0].starts_with("OK revision="), "{}", r.stdout);
    assert_eq!(lines[1..4], ["two  words"; 3], "{}", r.stdout);
    assert!(lines[4].starts_with("OK revision="), "{}", r.stdout);
    assert_eq!(
        lines[5..],
        ["it's  here", "a key\ttwo  words", "deleted"],
        "{}",
        r.stdout
    );
    let errors: Vec<&str> = r.stderr.lines().collect();
    assert_eq!(errors.len(), 2, "{}", r.stderr);
    assert!(errors[0].contains("quote keys with spaces"), "{}", r.stderr);
    assert!(errors[1].contains("unterminated quote"), "{}", r.stderr);
    assert_eq!(
        phxkv(&ep, &["get", "a key"], "").code,
        1,
        "the shell's delete removed the key"
    );
}

#[test]
fn a_bad_output_format_exits_2_with_one_line() {
    for args in [
        &["get", "k", "-o", "xml"][..],
        &["list", "--output", "yaml"],
        &["status", "-o", "csv"],
        &["watch", "-o", "table"],
    ] {
        let r = phxkv(&dead_endpoint(), args, "");
        assert_eq!(r.code, 2, "{args:?}: {}", r.stderr);
        assert_eq!(r.stderr.lines().count(), 1, "{args:?}: {}", r.stderr);
        assert!(r.stderr.starts_with("phxkv: invalid value"), "{}", r.stderr);
        assert!(
            r.stderr.contains("possible values: text, json"),
            "{}",
            r.stderr
        );
        assert!(r.stdout.is_empty());
    }
}

#[test]
fn completion_scripts_are_printed_for_each_shell() {
    for shell in ["bash", "zsh", "fish"] {
        let r = phxkv("", &["completion", shell], "");
        assert_eq!(r.code, 0, "{shell}: {}", r.stderr);
        assert!(r.stdout.len() > 1000, "{shell}: {}", r.stdout);
        for word in ["phxkv", "shell", "output"] {
            assert!(r.stdout.contains(word), "{shell} lacks {word}");
        }
    }
    let r = phxkv("", &["completion", "tcsh"], "");
    assert_eq!((r.code, r.stderr.lines().count()), (2, 1), "{}", r.stderr);
}

#[test]
fn dev_refuses_a_lease_it_cannot_keep_and_ports_in_use_naming_its_own_flags() {
    let dead = dead_endpoint();
    let r = phxkv(&dead, &["dev", "--ephemeral", "--lease", "0s"], "");
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(
        r.stderr
            .starts_with("phxkv: --lease: must be between 100ms and 120s"),
        "{}",
        r.stderr
    );
    // The peer port of a one-node cluster taken by someone else.
    let taken = (0..20)
        .filter_map(|_| TcpListener::bind("127.0.0.1:0").ok())
        .find(|l| l.local_addr().is_ok_and(|a| a.port() > 1124))
        .expect("a port above 1124");
    let peer = taken.local_addr().expect("address").port();
    let first = (peer - 100).to_string();
    let r = phxkv(
        &dead,
        &["dev", "--ephemeral", "--nodes", "1", "--port", &first],
        "",
    );
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert_eq!(r.stderr.lines().count(), 1, "{}", r.stderr);
    assert!(
        r.stderr.starts_with("phxkv: --port: 127.0.0.1:")
            && r.stderr.contains("give another first port with --port"),
        "{}",
        r.stderr
    );
}

#[test]
fn a_dead_endpoint_exits_3_with_one_line() {
    let dead = dead_endpoint();
    let r = phxkv(&dead, &["get", "k", "--timeout", "2s"], "");
    assert_eq!(r.code, 3);
    assert_eq!(r.stderr.lines().count(), 1, "{}", r.stderr);
    assert!(
        r.stderr.starts_with(&format!(
            "phxkv: no endpoint answered ({dead}: connection refused"
        )),
        "{}",
        r.stderr
    );
    assert!(r.stdout.is_empty());
}

#[test]
fn an_environment_variable_set_to_nothing_counts_as_not_set() {
    let dead = dead_endpoint();
    let r = phxkv_command(&dead, &["get", "k", "--timeout", "2s"])
        .env("PHXKV_TOKEN_FILE", "")
        .env("PHXKV_CACERT", "")
        .output()
        .expect("runs");
    let stderr = String::from_utf8_lossy(&r.stderr);
    // Not "a value is required for '--token-file'": the endpoint is tried.
    assert_eq!(r.status.code(), Some(3), "{stderr}");
    assert!(stderr.contains("no endpoint answered"), "{stderr}");
}

#[test]
fn every_client_command_documents_its_flags() {
    for cmd in [
        "put", "get", "delete", "list", "txn", "watch", "status", "members", "shell", "lease",
        "lock", "elect",
    ] {
        let r = phxkv("", &[cmd, "--help"], "");
        assert_eq!(r.code, 0, "{cmd}: {}", r.stderr);
        assert!(r.stdout.contains("--endpoints"), "{cmd}: {}", r.stdout);
        assert!(r.stdout.contains("--timeout"), "{cmd}: {}", r.stdout);
    }
}

#[test]
fn dev_refuses_a_bad_port_and_leaves_no_temporary_directory_behind() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dev = |port: &str| {
        Command::new(env!("CARGO_BIN_EXE_phxkv"))
            .args(["dev", "--ephemeral", "--nodes", "1", "--port", port])
            .env("TMPDIR", tmp.path())
            .stdin(Stdio::null())
            .output()
            .expect("run phxkv dev")
    };
    let out = dev("0");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("--port"), "{err}");
    // A client port in use: the start fails after the temporary data
    // directory (with its token) was made, and it goes too.
    let busy = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = busy.local_addr().expect("addr").port();
    let out = dev(&port.to_string());
    let err = String::from_utf8_lossy(&out.stderr);
    assert_ne!(out.status.code(), Some(0), "{err}");
    let left: Vec<_> = std::fs::read_dir(tmp.path())
        .expect("read tmp")
        .flatten()
        .map(|e| e.path())
        .collect();
    assert!(left.is_empty(), "left behind: {left:?}; {err}");
}

#[tokio::test(flavor = "multi_thread")]
async fn delete_by_prefix_removes_the_keys_under_it_on_every_replica_at_one_revision() {
    let c = Cluster::start(3, &[]).await;
    let ep = all_endpoints(&c);
    for k in ["tmp/a", "tmp/b", "tmp/c/d", "tmpx", "keep"] {
        assert_eq!(phxkv(&ep, &["put", k, "v"], "").code, 0);
    }
    let r = phxkv(&ep, &["delete", "--prefix", "tmp/"], "");
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(
        r.stdout.starts_with("deleted 3 keys (revision 6)"),
        "{}",
        r.stdout
    );
    // Gone from every replica's own copy once it has applied revision 6;
    // the keys beside the prefix stay.
    for i in 0..c.procs.len() {
        let one = c.url(i);
        for (key, code) in [("tmp/a", 1), ("tmp/c/d", 1), ("tmpx", 0), ("keep", 0)] {
            let r = phxkv(&one, &["get", key, "--min-revision", "6"], "");
            assert_eq!(r.code, code, "replica {i}, {key}: {}", r.stderr);
        }
    }
    let r = phxkv(&ep, &["list"], "");
    assert_eq!(r.stdout, "keep\tv\ntmpx\tv\n");
    // Every key only when confirmed.
    let r = phxkv(&ep, &["delete", "--prefix", ""], "");
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(r.stderr.contains("add --yes to confirm"), "{}", r.stderr);
    assert_eq!(phxkv(&ep, &["list"], "").stdout, "keep\tv\ntmpx\tv\n");
    // A watcher sees the three deletes at the one revision.
    let mut watch = phxkv_command(
        &ep,
        &["watch", "tmp/", "--start-revision", "6", "-o", "json"],
    )
    .stdout(Stdio::piped())
    .stderr(Stdio::null())
    .spawn()
    .expect("spawn watch");
    let out = watch.stdout.take().expect("watch stdout");
    let lines: Vec<serde_json::Value> = {
        use std::io::BufRead;
        std::io::BufReader::new(out)
            .lines()
            .take(3)
            .map(|l| serde_json::from_str(&l.expect("a line")).expect("JSON"))
            .collect()
    };
    let _ = watch.kill();
    let _ = watch.wait();
    let seen: Vec<(&str, u64, &str)> = lines
        .iter()
        .map(|e| {
            (
                e["type"].as_str().unwrap_or_default(),
                e["revision"].as_u64().unwrap_or_default(),
                e["key_utf8"].as_str().unwrap_or_default(),
            )
        })
        .collect();
    assert_eq!(
        seen,
        [
            ("delete", 6, "tmp/a"),
            ("delete", 6, "tmp/b"),
            ("delete", 6, "tmp/c/d")
        ]
    );
    // Nothing left: still a success, with nothing deleted.
    let r = phxkv(&ep, &["delete", "--prefix", "tmp/"], "");
    assert_eq!(
        (r.code, r.stdout.as_str()),
        (0, "deleted 0 keys (revision 6)\n")
    );
    // A key and a prefix, or neither, or --yes for one key: usage errors.
    for args in [
        &["delete"][..],
        &["delete", "k", "--prefix", "tmp/"],
        &["delete", "keep", "--yes"],
    ] {
        let r = phxkv(&ep, args, "");
        assert_eq!(r.code, 2, "{args:?}: {}", r.stderr);
    }
    let r = phxkv(&ep, &["delete", "--prefix", "", "--yes"], "");
    assert_eq!(
        (r.code, r.stdout.as_str()),
        (0, "deleted 2 keys (revision 7)\n")
    );
    assert_eq!(phxkv(&ep, &["list"], "").stdout, "");
}

/// A switch set through its variable takes `1`/`0` and `yes`/`no` as well
/// as `true`/`false`, as container specs and shells write them: the
/// command line parses, and what fails next is the bad `--id` given on
/// purpose (so nothing starts).
#[test]
fn switches_read_from_variables_take_1_and_yes() {
    for (var, value) in [
        ("PHXKV_AUTH", "1"),
        ("PHXKV_JOIN", "yes"),
        ("PHXKV_CLIENT_CERT_AUTH", "0"),
        ("PHXKV_AUTH", "off"),
    ] {
        let (code, _, err) = common::run_phxkv(
            &[
                "serve",
                "--id",
                "not a name",
                "--data-dir",
                "/nonexistent/x",
            ],
            &[(var, value.to_string())],
        );
        assert_eq!(code, 2, "{var}={value}: {err}");
        assert!(
            !err.contains("invalid value") && err.contains("--id"),
            "{var}={value}: {err}"
        );
    }
    // Anything else says what it takes.
    let (code, _, err) = common::run_phxkv(
        &["serve", "--data-dir", "/nonexistent/x"],
        &[("PHXKV_AUTH", "maybe".to_string())],
    );
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("--auth") && err.contains("1, yes, on or true"),
        "{err}"
    );
}

/// A refusal comes alone, without the line that says a snapshot is under
/// way.
#[tokio::test(flavor = "multi_thread")]
async fn backup_take_without_an_archive_is_one_line() {
    let c = Cluster::start(1, &[]).await;
    c.wait_for_master(std::time::Duration::from_secs(20)).await;
    let token = c.dir.path().join("token");
    let token = token.to_str().expect("utf-8 path");
    let r = phxkv(
        &all_endpoints(&c),
        &["backup", "take", "--token-file", token],
        "",
    );
    assert_ne!(r.code, 0);
    assert_eq!(r.stderr.trim().lines().count(), 1, "{}", r.stderr);
    assert!(r.stderr.contains("--archive-url"), "{}", r.stderr);
}

/// `phxkv backup list|take|delete` manage the bases of the cluster's
/// archive, as `/v1/admin/backups` does.
#[tokio::test(flavor = "multi_thread")]
async fn backup_list_take_and_delete_manage_the_archive() {
    let archive = tempfile::tempdir().expect("tempdir");
    let url = format!("file://{}/a", archive.path().display());
    let c = Cluster::start(1, &["--archive-url", &url]).await;
    c.wait_for_master(std::time::Duration::from_secs(20)).await;
    let ep = all_endpoints(&c);
    let token = c.dir.path().join("token");
    let token = token.to_str().expect("utf-8 path");
    let admin = |args: &[&str]| {
        let mut all = args.to_vec();
        all.extend(["--token-file", token]);
        phxkv(&ep, &all, "")
    };
    let r = admin(&["backup", "take"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(r.stdout.starts_with("stored base "), "{}", r.stdout);
    let r = admin(&["backup", "list"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(r.stdout.contains(&format!("archive {url}")), "{}", r.stdout);
    assert!(
        r.stdout.contains("recoverable from revision"),
        "{}",
        r.stdout
    );
    let r = admin(&["backup", "list", "-o", "json"]);
    let listed: serde_json::Value = serde_json::from_str(&r.stdout).expect("json");
    let bases = listed["backups"].as_array().expect("backups");
    assert!(!bases.is_empty(), "{listed}");
    let newest = bases
        .last()
        .and_then(|b| b["name"].as_str())
        .expect("a name");
    // The newest is refused; a name that is none is not found (exit 1).
    let r = admin(&["backup", "delete", newest]);
    assert_eq!(r.code, 4, "{}", r.stderr);
    assert!(r.stderr.contains("take a new one first"), "{}", r.stderr);
    let r = admin(&["backup", "delete", "nosuch"]);
    assert_eq!(r.code, 1, "{}", r.stderr);
    // With a second base the first can go, and with it a segment only it
    // needed, here one an earlier deletion cut short left behind.
    let first = newest.to_string();
    let leftover = archive
        .path()
        .join("a/wal/00000000000000000001-00000000000000000002-r1-t1.seg");
    std::fs::create_dir_all(leftover.parent().expect("wal/")).expect("wal/");
    std::fs::write(&leftover, b"left behind").expect("a leftover segment");
    let r = admin(&["backup", "take"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let r = admin(&["backup", "delete", &first]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(!leftover.exists(), "the leftover segment was not deleted");
    let r = admin(&["backup", "list", "-o", "json"]);
    assert!(!r.stdout.contains(&first), "{}", r.stdout);
    // Without the token: a usage error that says what to pass.
    let r = phxkv(&ep, &["backup", "list"], "");
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(r.stderr.contains("--token-file"), "{}", r.stderr);
}
