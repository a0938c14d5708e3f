//! Keys and values: get, put, delete, list.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, percent_encode};
use reqwest::header::HeaderMap;
use serde::Deserialize;

use crate::{ApiError, Client, Error, json};

/// Bytes left alone in a key's path: what RFC 3986 calls unreserved, and
/// `/` so that hierarchical keys read naturally in logs.
const PATH_SAFE: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~')
    .remove(b'/');

/// The `/v1/kv/...` path of a key, percent-encoded byte by byte.
///
/// URL parsers collapse `.` and `..` path segments (even percent-encoded
/// ones), so such keys would silently address another key; they are
/// refused (a transaction can still write them).
pub fn key_path(key: &[u8]) -> Result<String, Error> {
    if key.is_empty() {
        return Err(Error::Config("the key must not be empty".into()));
    }
    if key
        .split(|b| *b == b'/')
        .any(|seg| seg == b"." || seg == b"..")
    {
        return Err(Error::Config(
            "keys with `.` or `..` between slashes cannot be addressed over HTTP; use `phxkv txn`"
                .into(),
        ));
    }
    Ok(format!("/v1/kv/{}", percent_encode(key, PATH_SAFE)))
}

/// A query parameter value, percent-encoded byte by byte.
pub fn query_value(bytes: &[u8]) -> String {
    percent_encode(bytes, PATH_SAFE).to_string()
}

/// One URL path segment (a member's name), `/` included in the encoding.
pub fn path_segment(bytes: &[u8]) -> String {
    const SEGMENT_SAFE: &AsciiSet = &PATH_SAFE.add(b'/');
    percent_encode(bytes, SEGMENT_SAFE).to_string()
}

/// A key with its value and bookkeeping (the API's `KeyValue`, decoded).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Kv {
    pub key: Vec<u8>,
    pub value: Vec<u8>,
    /// Writes to the key since it was created; 1 after the first.
    pub version: u64,
    pub create_revision: u64,
    pub mod_revision: u64,
}

/// The API's `KeyValue` as sent: byte strings in base64.
#[derive(Debug, Deserialize)]
pub(crate) struct KvWire {
    key: String,
    value: String,
    version: u64,
    create_revision: u64,
    mod_revision: u64,
}

pub(crate) fn encode_b64(bytes: &[u8]) -> String {
    B64.encode(bytes)
}

pub(crate) fn decode_b64(field: &str, s: &str) -> Result<Vec<u8>, Error> {
    B64.decode(s)
        .map_err(|e| Error::Decode(format!("a bad base64 {field}: {e}")))
}

impl TryFrom<KvWire> for Kv {
    type Error = Error;
    fn try_from(w: KvWire) -> Result<Kv, Error> {
        Ok(Kv {
            key: decode_b64("key", &w.key)?,
            value: decode_b64("value", &w.value)?,
            version: w.version,
            create_revision: w.create_revision,
            mod_revision: w.mod_revision,
        })
    }
}

/// A value read with [`Client::get`], and the store's revision the read
/// reflects.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Read {
    pub kv: Kv,
    pub revision: u64,
}

/// Conditions and attachments of a put.
#[derive(Debug, Clone, Copy, Default)]
pub struct PutOptions {
    /// Write only if the key's version is this (`0`: only if it does not
    /// exist); otherwise the put fails with `compare_failed`.
    pub if_version: Option<u64>,
    /// Attach the key to this lease. A put without one detaches the key.
    pub lease: Option<u64>,
}

/// What a put did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub struct Written {
    pub revision: u64,
    /// The key's version after the put.
    pub version: u64,
}

/// What a delete did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub struct Deleted {
    /// False when there was no such key.
    pub deleted: bool,
    pub revision: u64,
}

/// What one round of a prefix delete did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub struct DeletedPrefix {
    /// Keys deleted, all at `revision`.
    pub deleted: u64,
    /// The revision of the deletion; the unchanged current one when no key
    /// matched.
    pub revision: u64,
    /// Keys under the prefix are left (the round reached its limit): call
    /// again for the next ones.
    pub more: bool,
}

/// One page of a listing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListPage {
    pub kvs: Vec<Kv>,
    /// More keys follow: ask again with `after` = [`ListPage::next_after`].
    pub more: bool,
    pub next_after: Option<Vec<u8>>,
}

#[derive(Debug, Deserialize)]
struct ListWire {
    kvs: Vec<KvWire>,
    more: bool,
    #[serde(default)]
    next_after: Option<String>,
}

fn header_u64(headers: &HeaderMap, name: &str) -> u64 {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

impl Client {
    /// Reads a key, linearizably; `None` when it does not exist.
    pub async fn get(&self, key: &[u8]) -> Result<Option<Kv>, Error> {
        Ok(self.read(key, None).await?.map(|r| r.kv))
    }

    /// Reads a key with the revision of the read. With `local`, from the
    /// answering replica without asking the master (faster, possibly
    /// stale), after it has applied `local`'s revision (0: no wait).
    pub async fn read(&self, key: &[u8], local: Option<u64>) -> Result<Option<Read>, Error> {
        let mut path = key_path(key)?;
        match local {
            Some(0) => path.push_str("?consistency=local"),
            Some(min) => path.push_str(&format!("?consistency=local&min_revision={min}")),
            None => {}
        }
        let resp = self.send(|h, base| h.get(format!("{base}{path}"))).await?;
        if !resp.status().is_success() {
            let failure = ApiError::read(resp).await;
            if failure.code == "key_not_found" {
                return Ok(None);
            }
            return Err(Error::Api(failure));
        }
        let headers = resp.headers().clone();
        let value = resp
            .bytes()
            .await
            .map_err(|e| Error::Decode(format!("reading the value: {e}")))?
            .to_vec();
        Ok(Some(Read {
            kv: Kv {
                key: key.to_vec(),
                value,
                version: header_u64(&headers, "x-phxkv-version"),
                create_revision: header_u64(&headers, "x-phxkv-create-revision"),
                mod_revision: header_u64(&headers, "x-phxkv-mod-revision"),
            },
            revision: header_u64(&headers, "x-phxkv-revision"),
        }))
    }

    /// Stores `value` under `key`; retried safely (one idempotency key).
    pub async fn put(
        &self,
        key: &[u8],
        value: Vec<u8>,
        opts: PutOptions,
    ) -> Result<Written, Error> {
        let mut path = key_path(key)?;
        let mut query = Vec::new();
        if let Some(v) = opts.if_version {
            query.push(format!("if_version={v}"));
        }
        if let Some(l) = opts.lease {
            query.push(format!("lease={l}"));
        }
        if !query.is_empty() {
            path.push('?');
            path.push_str(&query.join("&"));
        }
        let resp = self
            .send_write(|h, base| h.put(format!("{base}{path}")).body(value.clone()))
            .await?;
        json(resp).await
    }

    /// Deletes `key` (only at version `if_version`, when given).
    pub async fn delete(&self, key: &[u8], if_version: Option<u64>) -> Result<Deleted, Error> {
        let mut path = key_path(key)?;
        if let Some(v) = if_version {
            path.push_str(&format!("?if_version={v}"));
        }
        let resp = self
            .send_write(|h, base| h.delete(format!("{base}{path}")))
            .await?;
        json(resp).await
    }

    /// Deletes up to `limit` keys under `prefix` (an empty prefix: every
    /// key) at one revision; the server's bound when `limit` is `None`.
    /// Repeat while [`DeletedPrefix::more`] to empty a larger prefix.
    pub async fn delete_prefix(
        &self,
        prefix: &[u8],
        limit: Option<u32>,
    ) -> Result<DeletedPrefix, Error> {
        let mut query = format!("/v1/kv?prefix={}", query_value(prefix));
        if let Some(limit) = limit {
            query.push_str(&format!("&limit={limit}"));
        }
        let resp = self
            .send_write(|h, base| h.delete(format!("{base}{query}")))
            .await?;
        json(resp).await
    }

    /// One page of up to `limit` keys under `prefix`, after key `after`.
    pub async fn list(
        &self,
        prefix: &[u8],
        after: Option<&[u8]>,
        limit: u64,
    ) -> Result<ListPage, Error> {
        let mut query = format!("/v1/kv?limit={limit}");
        if !prefix.is_empty() {
            query.push_str(&format!("&prefix={}", query_value(prefix)));
        }
        if let Some(a) = after {
            query.push_str(&format!("&after={}", query_value(a)));
        }
        let resp = self.send(|h, base| h.get(format!("{base}{query}"))).await?;
        let page: ListWire = json(resp).await?;
        Ok(ListPage {
            kvs: page
                .kvs
                .into_iter()
                .map(Kv::try_from)
                .collect::<Result<_, _>>()?,
            more: page.more,
            next_after: page
                .next_after
                .map(|a| decode_b64("next_after", &a))
                .transpose()?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_paths_encode_bytes_and_refuse_dot_segments() {
        assert_eq!(key_path(b"a/b c").ok().as_deref(), Some("/v1/kv/a/b%20c"));
        assert_eq!(key_path(&[0xff]).ok().as_deref(), Some("/v1/kv/%FF"));
        assert!(key_path(b"").is_err());
        assert!(key_path(b"a/../b").is_err());
        assert!(key_path(b"a/./b").is_err());
        assert!(key_path(b"a/..b").is_ok());
    }
}
