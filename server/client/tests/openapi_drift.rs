//! The crate's types mirror the API's OpenAPI document by hand; this test
//! reads the document and fails when a route the crate calls, or a field
//! it reads, is renamed, removed or made optional there.

use serde_json::Value;

/// The routes the crate calls: path and method.
const ROUTES: &[(&str, &str)] = &[
    ("/v1/kv", "get"),
    ("/v1/kv", "delete"),
    ("/v1/kv/{key}", "get"),
    ("/v1/kv/{key}", "put"),
    ("/v1/kv/{key}", "delete"),
    ("/v1/watch", "get"),
    ("/v1/leases", "post"),
    ("/v1/leases", "get"),
    ("/v1/leases/{id}", "get"),
    ("/v1/leases/{id}", "delete"),
    ("/v1/leases/{id}/keepalive", "post"),
    ("/v1/leases/keepalive", "post"),
    ("/v1/leases/keepalive/stream", "post"),
    ("/v1/lock/{name}", "post"),
    ("/v1/lock/{name}", "delete"),
    ("/v1/election/{name}", "post"),
    ("/v1/election/{name}", "get"),
    ("/v1/election/{name}", "put"),
    ("/v1/election/{name}", "delete"),
];

/// The schemas the crate decodes, with the fields it needs from each
/// (fields it may go without, like `next_after`, are not listed).
const FIELDS: &[(&str, &[&str])] = &[
    ("ErrorDetail", &["code", "message"]),
    (
        "KvJson",
        &["key", "value", "version", "create_revision", "mod_revision"],
    ),
    ("PutResponse", &["revision", "version"]),
    ("DeleteResponse", &["deleted", "revision"]),
    ("DeletePrefixResponse", &["deleted", "revision", "more"]),
    ("ListResponse", &["kvs", "more"]),
    ("GrantResponse", &["id", "ttl_secs", "revision"]),
    (
        "LeaseStatus",
        &["id", "ttl_secs", "remaining_ms", "granted_revision"],
    ),
    ("RevokeResponse", &["revision", "deleted"]),
    ("KeepAliveResponse", &["leases", "missing"]),
    ("LeaseEntry", &["id", "ttl_secs", "granted_revision"]),
    ("LeaseList", &["leases", "more"]),
    ("LockResponse", &["key", "lease", "fencing_token"]),
    ("UnlockResponse", &["revision", "released"]),
    ("Leader", &["key", "value", "lease", "term_revision"]),
];

/// Fields the crate sends, which the document must accept.
const SENT: &[(&str, &[&str])] = &[
    ("GrantRequest", &["ttl_secs", "id"]),
    ("KeepAliveRequest", &["ids"]),
    ("LockRequest", &["lease", "wait_ms"]),
    ("CampaignRequest", &["lease", "value_b64", "wait_ms"]),
];

fn document() -> Value {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../openapi/phxkv.json");
    let text = std::fs::read_to_string(path).expect("openapi/phxkv.json");
    serde_json::from_str(&text).expect("the OpenAPI document is JSON")
}

#[test]
fn every_route_the_client_calls_is_documented() {
    let doc = document();
    for (path, method) in ROUTES {
        assert!(
            doc["paths"][path][method].is_object(),
            "the client calls {method} {path}, which the OpenAPI document lacks"
        );
    }
}

#[test]
fn every_field_the_client_reads_is_required_by_the_document() {
    let doc = document();
    let schemas = &doc["components"]["schemas"];
    for (schema, fields) in FIELDS {
        let required: Vec<&str> = schemas[schema]["required"]
            .as_array()
            .unwrap_or_else(|| panic!("schema {schema} has no required fields"))
            .iter()
            .filter_map(Value::as_str)
            .collect();
        for f in *fields {
            assert!(
                required.contains(f),
                "the client reads {schema}.{f}, which the document does not require"
            );
        }
    }
    // A watch event is a KvJson (checked above) with its type and revision.
    let event = schemas["WatchEvent"].to_string();
    for f in ["\"type\"", "\"revision\"", "#/components/schemas/KvJson"] {
        assert!(event.contains(f), "WatchEvent lacks {f}");
    }
}

#[test]
fn every_field_the_client_sends_is_accepted_by_the_document() {
    let doc = document();
    let schemas = &doc["components"]["schemas"];
    for (schema, fields) in SENT {
        for f in *fields {
            assert!(
                schemas[schema]["properties"][f].is_object(),
                "the client sends {schema}.{f}, which the document does not accept"
            );
        }
    }
}
