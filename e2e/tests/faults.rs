//! The short form of the fault-injection suite, in the ordinary test run:
//! two runs of real `phxkv serve` processes under every kind of fault, each
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

#[test]
fn histories_under_every_fault_are_linearizable() {
    let out = Command::new(env!("CARGO_BIN_EXE_phxkv-faults"))
        .args(["--runs", "2", "--duration", "20s"])
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
