//! Runs `phxkv-bench` briefly against a real three-node `phxkv` cluster and
//! checks that what it reports is sane: requests succeeded, none failed, the
//! percentiles are ordered. Nothing here asserts on speed.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

const BENCH: &str = env!("CARGO_BIN_EXE_phxkv-bench");

/// Three `phxkv serve` processes; killed when dropped.
struct Cluster {
    _dir: tempfile::TempDir,
    children: Vec<Child>,
    urls: Vec<String>,
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// The `phxkv` binary of the same build profile as this test, built if
/// `cargo test` did not build it already.
fn phxkv_binary() -> PathBuf {
    let exe = std::env::current_exe().expect("test executable");
    // target/<profile>/deps/<test> -> target/<profile>/phxkv
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("test executable under target/<profile>/deps");
    let bin = profile_dir.join("phxkv");
    if !bin.exists() {
        let mut cargo = Command::new(env!("CARGO"));
        cargo.args(["build", "-p", "phxkv-server", "--bin", "phxkv"]);
        if profile_dir.ends_with("release") {
            cargo.arg("--release");
        }
        let status = cargo.status().expect("run cargo build");
        assert!(status.success(), "building phxkv failed");
    }
    bin
}

/// True when `GET path` on `port` answers 200.
fn http_ok(port: u16, path: &str) -> bool {
    use std::io::{Read, Write};
    let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(1)));
    if s.write_all(format!("GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").as_bytes())
        .is_err()
    {
        return false;
    }
    let mut buf = [0u8; 16];
    matches!(s.read(&mut buf), Ok(n) if n >= 12 && &buf[9..12] == b"200")
}

fn start_cluster() -> Cluster {
    let dir = tempfile::tempdir().expect("temp dir");
    std::fs::write(dir.path().join("token"), "bench-test-token-0123456789").expect("token");
    let ports: Vec<(u16, u16)> = (0..3).map(|_| (free_port(), free_port())).collect();
    let members = ports
        .iter()
        .enumerate()
        .map(|(i, (_, peer))| format!("n{i}=http://127.0.0.1:{peer}"))
        .collect::<Vec<_>>()
        .join(",");
    let bin = phxkv_binary();
    let mut children = Vec::new();
    for (i, (client, peer)) in ports.iter().enumerate() {
        let log = std::fs::File::create(dir.path().join(format!("n{i}.log"))).expect("log");
        let child = Command::new(&bin)
            .arg("serve")
            .args(["--id", &format!("n{i}")])
            .arg("--data-dir")
            .arg(dir.path().join(format!("n{i}")))
            .args(["--listen", &format!("127.0.0.1:{client}")])
            .args(["--peer-listen", &format!("127.0.0.1:{peer}")])
            .args(["--initial-members", &members])
            .arg("--cluster-token-file")
            .arg(dir.path().join("token"))
            .stdout(Stdio::null())
            .stderr(Stdio::from(log))
            .spawn()
            .expect("spawn phxkv");
        children.push(child);
    }
    let cluster = Cluster {
        urls: ports
            .iter()
            .map(|(c, _)| format!("http://127.0.0.1:{c}"))
            .collect(),
        children,
        _dir: dir,
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    for (client, _) in &ports {
        while !http_ok(*client, "/readyz") {
            assert!(Instant::now() < deadline, "the cluster did not get ready");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    cluster
}

fn bench(args: &[&str]) -> (std::process::Output, Option<Value>) {
    let out = Command::new(BENCH)
        .args(args)
        .output()
        .expect("run phxkv-bench");
    let json = serde_json::from_slice(&out.stdout).ok();
    (out, json)
}

fn assert_sane_latency(l: &Value) {
    let get = |k: &str| {
        l[k].as_f64()
            .unwrap_or_else(|| panic!("latency {k} in {l}"))
    };
    assert!(get("p50") > 0.0, "{l}");
    assert!(get("p50") <= get("p90"), "{l}");
    assert!(get("p90") <= get("p99"), "{l}");
    assert!(get("p99") <= get("p999"), "{l}");
    assert!(get("p999") <= get("max"), "{l}");
}

#[test]
fn bench_reports_a_sane_mixed_run_a_fill_and_a_probe_against_a_real_cluster() {
    let c = start_cluster();
    let endpoints = c.urls.join(",");

    // Every key written once: exactly as many writes as keys.
    let (out, json) = bench(&[
        "run",
        "--target",
        "phxkv",
        "--endpoints",
        &endpoints,
        "--fill",
        "--keys",
        "200",
        "--clients",
        "8",
        "--value-size",
        "100",
        "--output",
        "json",
        "--quiet",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let r = json.expect("JSON report");
    assert_eq!(r["writes"], 200, "{r}");
    assert_eq!(r["errors"], 0, "{r}");

    // A short mixed run over all three endpoints, both read consistencies.
    for consistency in ["linearizable", "local"] {
        let (out, json) = bench(&[
            "run",
            "--target",
            "phxkv",
            "--endpoints",
            &endpoints,
            "--clients",
            "6",
            "--keys",
            "200",
            "--read-ratio",
            "0.5",
            "--consistency",
            consistency,
            "--duration",
            "2s",
            "--warmup",
            "200ms",
            "--output",
            "json",
            "--quiet",
        ]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let r = json.expect("JSON report");
        assert_eq!(r["errors"], 0, "{r}");
        assert_eq!(r["misses"], 0, "every key was filled: {r}");
        assert!(r["reads"].as_u64() > Some(0), "{r}");
        assert!(r["writes"].as_u64() > Some(0), "{r}");
        assert_eq!(
            r["ops"].as_u64(),
            Some(r["reads"].as_u64().unwrap_or(0) + r["writes"].as_u64().unwrap_or(0))
        );
        assert!(r["throughput"].as_f64() > Some(0.0), "{r}");
        assert_sane_latency(&r["latency_ms"]);
        assert_sane_latency(&r["read_latency_ms"]);
        assert_sane_latency(&r["write_latency_ms"]);
    }

    // The failover probe succeeds at once on a healthy cluster.
    let (out, json) = bench(&["probe", "--target", "phxkv", "--endpoints", &endpoints]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let r = json.expect("JSON probe result");
    assert!(r["ms"].as_f64() > Some(0.0), "{r}");
    assert_eq!(r["attempts"], 1, "{r}");
}

#[test]
fn bench_refuses_bad_flags_with_one_line_naming_the_flag() {
    let (out, _) = bench(&[
        "run",
        "--endpoints",
        "http://127.0.0.1:1",
        "--read-ratio",
        "2",
    ]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(err.contains("--read-ratio"), "{err}");
    let (out, _) = bench(&["run", "--endpoints", "localhost:8080"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--endpoints"));
}
