//! How one logical operation (put a key, read a key) becomes an HTTP request
//! for each system under test, and how its answer is judged.
//!
//! phxkv takes raw values: `PUT /v1/kv/{key}` with the value as the body,
//! `GET /v1/kv/{key}[?consistency=local]`. etcd is driven through its
//! HTTP/JSON gateway, the like-for-like interface: `POST /v3/kv/put
//! {"key": b64, "value": b64}` and `POST /v3/kv/range {"key": b64}`, with
//! `"serializable": true` as the equivalent of a local read. Both answers are
//! read in full; neither is parsed beyond its status, so the generator's cost
//! per request is the same small amount for both.

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use bytes::Bytes;
use hyper::{Method, StatusCode};

/// The system a benchmark drives.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Target {
    Phxkv,
    Etcd,
}

/// Read consistency, mapped to each system's equivalent.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Consistency {
    /// phxkv's default; etcd's default (quorum) range.
    Linearizable,
    /// phxkv `consistency=local`; etcd `serializable: true`.
    Local,
}

/// A request ready to send.
#[derive(Debug)]
pub struct Prepared {
    pub method: Method,
    pub path: String,
    pub content_type: Option<&'static str>,
    pub body: Bytes,
}

/// Builds requests for one target; holds the encoded value once.
#[derive(Debug, Clone)]
pub struct Requests {
    target: Target,
    consistency: Consistency,
    value: Bytes,
    value_b64: String,
}

impl Requests {
    pub fn new(target: Target, consistency: Consistency, value: Vec<u8>) -> Requests {
        let value_b64 = B64.encode(&value);
        Requests {
            target,
            consistency,
            value: Bytes::from(value),
            value_b64,
        }
    }

    pub fn put(&self, key: &str) -> Prepared {
        match self.target {
            Target::Phxkv => Prepared {
                method: Method::PUT,
                path: format!("/v1/kv/{key}"),
                content_type: Some("application/octet-stream"),
                body: self.value.clone(),
            },
            Target::Etcd => Prepared {
                method: Method::POST,
                path: "/v3/kv/put".to_string(),
                content_type: Some("application/json"),
                body: Bytes::from(format!(
                    r#"{{"key":"{}","value":"{}"}}"#,
                    B64.encode(key),
                    self.value_b64
                )),
            },
        }
    }

    pub fn get(&self, key: &str) -> Prepared {
        match (self.target, self.consistency) {
            (Target::Phxkv, Consistency::Linearizable) => Prepared {
                method: Method::GET,
                path: format!("/v1/kv/{key}"),
                content_type: None,
                body: Bytes::new(),
            },
            (Target::Phxkv, Consistency::Local) => Prepared {
                method: Method::GET,
                path: format!("/v1/kv/{key}?consistency=local"),
                content_type: None,
                body: Bytes::new(),
            },
            (Target::Etcd, c) => Prepared {
                method: Method::POST,
                path: "/v3/kv/range".to_string(),
                content_type: Some("application/json"),
                body: Bytes::from(if c == Consistency::Local {
                    format!(r#"{{"key":"{}","serializable":true}}"#, B64.encode(key))
                } else {
                    format!(r#"{{"key":"{}"}}"#, B64.encode(key))
                }),
            },
        }
    }

    /// Grants a lease of `ttl` seconds (the lock benchmark's, one per
    /// client).
    pub fn grant(&self, ttl: u64) -> Prepared {
        match self.target {
            Target::Phxkv => json_post("/v1/leases", format!(r#"{{"ttl_secs":{ttl}}}"#)),
            Target::Etcd => json_post("/v3/lease/grant", format!(r#"{{"TTL":{ttl}}}"#)),
        }
    }

    /// The lease id in a grant's answer (etcd's gateway writes 64-bit
    /// integers as strings).
    pub fn lease_id(&self, body: &[u8]) -> Option<u64> {
        let v: serde_json::Value = serde_json::from_slice(body).ok()?;
        let id = match self.target {
            Target::Phxkv => &v["id"],
            Target::Etcd => &v["ID"],
        };
        id.as_u64().or_else(|| id.as_str()?.parse().ok())
    }

    /// Acquires lock `name` with `lease`, waiting for it.
    pub fn lock(&self, name: &str, lease: u64) -> Prepared {
        match self.target {
            Target::Phxkv => json_post(
                &format!("/v1/lock/{name}"),
                format!(r#"{{"lease":{lease},"wait_ms":30000}}"#),
            ),
            Target::Etcd => json_post(
                "/v3/lock/lock",
                format!(r#"{{"name":"{}","lease":"{lease}"}}"#, B64.encode(name)),
            ),
        }
    }

    /// The holder's key in a lock's answer (base64), which etcd's unlock
    /// needs.
    pub fn lock_key(&self, body: &[u8]) -> Option<String> {
        let v: serde_json::Value = serde_json::from_slice(body).ok()?;
        v["key"].as_str().map(str::to_string)
    }

    /// Releases lock `name` held by `lease` under `key` (base64).
    pub fn unlock(&self, name: &str, lease: u64, key: &str) -> Prepared {
        match self.target {
            Target::Phxkv => Prepared {
                method: Method::DELETE,
                path: format!("/v1/lock/{name}?lease={lease}"),
                content_type: None,
                body: Bytes::new(),
            },
            Target::Etcd => json_post("/v3/lock/unlock", format!(r#"{{"key":"{key}"}}"#)),
        }
    }

    /// Whether an answer counts as success. A read of a key nobody wrote is
    /// a successful read for both (phxkv says 404, etcd 200 with no kvs).
    pub fn ok(&self, is_read: bool, status: StatusCode) -> bool {
        status.is_success() || (is_read && self.target == Target::Phxkv && status == 404)
    }
}

fn json_post(path: &str, body: String) -> Prepared {
    Prepared {
        method: Method::POST,
        path: path.to_string(),
        content_type: Some("application/json"),
        body: Bytes::from(body),
    }
}

/// The key with number `i`: fixed width, so every key has the same size, and
/// no characters that need escaping in a URL path.
pub fn key_name(prefix: &str, i: u64) -> String {
    format!("{prefix}{i:010}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_match_each_api() {
        let r = Requests::new(Target::Phxkv, Consistency::Local, b"v".to_vec());
        assert_eq!(r.put("k").path, "/v1/kv/k");
        assert_eq!(r.put("k").body.as_ref(), b"v");
        assert_eq!(r.get("k").path, "/v1/kv/k?consistency=local");
        let e = Requests::new(Target::Etcd, Consistency::Local, b"v".to_vec());
        assert_eq!(
            e.put("k").body.as_ref(),
            br#"{"key":"aw==","value":"dg=="}"#
        );
        assert_eq!(
            e.get("k").body.as_ref(),
            br#"{"key":"aw==","serializable":true}"#
        );
        let e = Requests::new(Target::Etcd, Consistency::Linearizable, b"v".to_vec());
        assert_eq!(e.get("k").body.as_ref(), br#"{"key":"aw=="}"#);
        assert!(r.ok(true, StatusCode::NOT_FOUND));
        assert!(!r.ok(false, StatusCode::NOT_FOUND));
        assert!(!e.ok(true, StatusCode::NOT_FOUND));
    }

    #[test]
    fn keys_have_a_fixed_width() {
        assert_eq!(key_name("b-", 7), "b-0000000007");
        assert_eq!(key_name("b-", 7).len(), key_name("b-", 123_456).len());
    }
}
