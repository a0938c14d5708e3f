//! The CRD committed in the chart is the one the operator's types generate.
//! After changing the types, regenerate it with
//! `PHXKV_UPDATE_CRD=1 cargo test -p phxkv-operator --test crd_drift`.

use std::path::PathBuf;

fn committed(file: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(format!("../charts/phxkv/crds/{file}"))
}

fn check(file: &str, generated: String) {
    let path = committed(file);
    if std::env::var_os("PHXKV_UPDATE_CRD").is_some() {
        std::fs::write(&path, &generated).expect("write the CRD");
    }
    let on_disk = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        on_disk == generated,
        "{} differs from what the types generate; run \
         `PHXKV_UPDATE_CRD=1 cargo test -p phxkv-operator --test crd_drift` and commit it",
        path.display()
    );
}

#[test]
fn the_chart_carries_the_crd_the_types_generate() {
    check(
        "paxoskv.yaml",
        phxkv_operator::crd_yaml().expect("the CRD renders"),
    );
}

#[test]
fn the_chart_carries_the_backup_crd_the_types_generate() {
    check(
        "paxoskvbackup.yaml",
        phxkv_operator::backup_crd_yaml().expect("the CRD renders"),
    );
}

#[test]
fn the_backup_crd_names_itself_and_refuses_a_changed_spec() {
    let yaml = phxkv_operator::backup_crd_yaml().expect("the CRD renders");
    assert!(yaml.contains("name: paxoskvbackups.phxkv.io"));
    assert!(yaml.contains("- pkvb"));
    assert!(yaml.contains("rule: self == oldSelf"));
    assert!(yaml.contains("jsonPath: .status.phase"));
}

#[test]
fn the_crd_refuses_even_replica_counts_and_names_itself() {
    let yaml = phxkv_operator::crd_yaml().expect("the CRD renders");
    assert!(yaml.contains("name: paxoskvs.phxkv.io"));
    assert!(yaml.contains("- pkv"));
    assert!(yaml.contains("rule: self % 2 == 1"));
    assert!(yaml.contains("subresources:"));
    assert!(yaml.contains("status: {}"));
    assert!(yaml.contains("specReplicasPath: .spec.replicas"));
}
