//! The committed OpenAPI document must match what the code generates.
//!
//! The document is committed so that API changes show up in review diffs
//! and clients can be generated without building the server. This test
//! keeps the copy honest; run it with `PHXKV_UPDATE_OPENAPI=1` to rewrite
//! the file after an intended change.

use std::path::PathBuf;

fn committed_path() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../openapi/phxkv.json")
}

#[test]
fn committed_openapi_document_is_current() {
    let generated = phxkv::api::openapi()
        .to_pretty_json()
        .expect("the OpenAPI document serializes")
        + "\n";
    let path = committed_path();
    if std::env::var_os("PHXKV_UPDATE_OPENAPI").is_some_and(|v| v == "1") {
        std::fs::write(&path, &generated).expect("openapi/phxkv.json is writable");
        return;
    }
    let committed = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        committed == generated,
        "openapi/phxkv.json is out of date with the API code; regenerate it with\n\
         PHXKV_UPDATE_OPENAPI=1 cargo test -p phxkv-server --test api_openapi\n\
         and commit the result"
    );
}
