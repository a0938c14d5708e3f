//! The committed OpenAPI documents (the public API's and the peer API's)
//! must match what the code generates.
//!
//! The document is committed so that API changes show up in review diffs
//! and clients can be generated without building the server. This test
//! keeps the copy honest; run it with `PHXKV_UPDATE_OPENAPI=1` to rewrite
//! the file after an intended change.

use std::path::PathBuf;

fn check(file: &str, doc: utoipa::openapi::OpenApi) {
    // Every reference points at a schema the document defines.
    let value = serde_json::to_value(&doc).expect("the document is JSON");
    let schemas = &value["components"]["schemas"];
    let mut refs = Vec::new();
    collect_refs(&value, &mut refs);
    assert!(!refs.is_empty(), "{file}: no references at all");
    for r in refs {
        let name = r
            .strip_prefix("#/components/schemas/")
            .unwrap_or_else(|| panic!("{file}: unexpected reference {r}"));
        assert!(
            schemas.get(name).is_some(),
            "{file}: {r} points at no schema"
        );
    }
    let generated = doc
        .to_pretty_json()
        .expect("the OpenAPI document serializes")
        + "\n";
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../openapi")
        .join(file);
    if std::env::var_os("PHXKV_UPDATE_OPENAPI").is_some_and(|v| v == "1") {
        std::fs::write(&path, &generated).expect("the openapi directory is writable");
        return;
    }
    let committed = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        committed == generated,
        "openapi/{file} is out of date with the code; regenerate it with\n\
         PHXKV_UPDATE_OPENAPI=1 cargo test -p phxkv-server --test api_openapi\n\
         and commit the result"
    );
}

#[test]
fn committed_openapi_document_is_current() {
    check("phxkv.json", phxkv::api::openapi());
}

#[test]
fn committed_peer_openapi_document_is_current() {
    check("phxkv-peer.json", phxkv::node::peer::openapi());
}

/// Node ids are random and use all 64 bits: a peer written from the
/// document must not read them as signed.
#[test]
fn peer_document_names_unsigned_integers_as_such() {
    let doc = serde_json::to_value(phxkv::node::peer::openapi()).expect("JSON");
    let schemas = &doc["components"]["schemas"];
    assert_eq!(schemas["u64"]["format"], "uint64", "{}", schemas["u64"]);
    assert_eq!(
        schemas["RequestId"]["properties"]["client"]["format"],
        "uint64"
    );
    fn signed_but_unsigned(v: &serde_json::Value, found: &mut usize) {
        match v {
            serde_json::Value::Object(m) => {
                if m.get("format")
                    .is_some_and(|f| f == "int64" || f == "int32")
                    && m.get("minimum").and_then(|n| n.as_f64()) == Some(0.0)
                {
                    *found += 1;
                }
                m.values().for_each(|v| signed_but_unsigned(v, found));
            }
            serde_json::Value::Array(a) => a.iter().for_each(|v| signed_but_unsigned(v, found)),
            _ => {}
        }
    }
    let mut found = 0;
    signed_but_unsigned(&doc, &mut found);
    assert_eq!(found, 0, "unsigned integers still described as signed");
}

fn collect_refs(v: &serde_json::Value, out: &mut Vec<String>) {
    match v {
        serde_json::Value::Object(map) => {
            for (k, v) in map {
                match (k.as_str(), v) {
                    ("$ref", serde_json::Value::String(r)) => out.push(r.clone()),
                    _ => collect_refs(v, out),
                }
            }
        }
        serde_json::Value::Array(items) => items.iter().for_each(|v| collect_refs(v, out)),
        _ => {}
    }
}
