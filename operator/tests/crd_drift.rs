//! The CRD committed in the chart is the one the operator's types generate.
//! After changing the types, regenerate it with
//! `PHXKV_UPDATE_CRD=1 cargo test -p phxkv-operator --test crd_drift`.

use std::path::PathBuf;

fn committed() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../charts/phxkv/crds/paxoskv.yaml")
}

#[test]
fn the_chart_carries_the_crd_the_types_generate() {
    let generated = phxkv_operator::crd_yaml().expect("the CRD renders");
    let path = committed();
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
fn the_crd_refuses_even_replica_counts_and_names_itself() {
    let yaml = phxkv_operator::crd_yaml().expect("the CRD renders");
    assert!(yaml.contains("name: paxoskvs.phxkv.io"));
    assert!(yaml.contains("- pkv"));
    assert!(yaml.contains("rule: self % 2 == 1"));
    assert!(yaml.contains("subresources:"));
    assert!(yaml.contains("status: {}"));
    assert!(yaml.contains("specReplicasPath: .spec.replicas"));
}
