//! The short form of the fault-injection suite, in the ordinary test run:
//! two runs of real `phxkv serve` processes under every kind of fault, one
//! over plain HTTP and one with TLS on both ports (as in Kubernetes), each
//! history checked for linearizability. The long form is documented in the
//! README (`phxkv-faults --runs 30`).

use std::path::{Path, PathBuf};
use std::process::Command;

/// The `phxkv` binary of this build profile, built if missing (it belongs
/// to another package, so Cargo does not hand its path to this test).
fn phxkv_bin() -> PathBuf {
    let exe = std::env::current_exe().expect("test binary path");
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("target/<profile>")
        .to_path_buf();
    let bin = profile_dir.join("phxkv");
    if !bin.exists() {
        let release = profile_dir.file_name().is_some_and(|n| n == "release");
        let mut cargo = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
        cargo.args(["build", "-p", "phxkv-server", "--bin", "phxkv"]);
        if release {
            cargo.arg("--release");
        }
        assert!(
            cargo.status().expect("run cargo build").success(),
            "building phxkv failed"
        );
    }
    bin
}

/// Runs `phxkv-faults` with `extra` arguments and checks its verdict.
fn fault_runs(extra: &[&str]) {
    let out = Command::new(env!("CARGO_BIN_EXE_phxkv-faults"))
        .args(["--duration", "20s"])
        .args(extra)
        .arg("--bin")
        .arg(phxkv_bin())
        .output()
        .expect("run phxkv-faults");
    let stdout = String::from_utf8_lossy(&out.stdout);
    println!("{stdout}{}", String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "the fault suite failed:\n{stdout}");
    assert!(
        stdout.contains("0 anomalies, 0 runs that did not recover"),
        "{stdout}"
    );
}

/// One test, so that the two runs never share the machine's cores.
#[test]
fn histories_under_every_fault_are_linearizable() {
    fault_runs(&["--runs", "1"]);
    fault_runs(&["--runs", "1", "--tls"]);
}
