//! The client commands: they talk to a running cluster over its public
//! HTTP/JSON API, failing over between the endpoints they are given.
//!
//! Each command lives in its own module with a `run` entry point; the
//! pieces the interactive shell reuses (fetching, printing) are public too.

pub mod delete;
pub mod get;
pub mod http;
pub mod list;
pub mod members;
pub mod put;
pub mod shell;
pub mod status;
pub mod txn;
pub mod watch;

use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use clap::Args;
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, percent_encode};
use serde::{Deserialize, Serialize};

use super::CliError;

/// Where the cluster is and how long to wait for it; shared by every
/// client command.
#[derive(Args, Debug, Clone)]
pub struct ConnectArgs {
    /// Client URLs of the cluster's nodes, comma-separated. Requests go to
    /// the first that answers; the next is tried when one is unreachable
    /// (connection refused, timeout) or unavailable (HTTP 503).
    #[arg(
        long,
        env = "PHXKV_ENDPOINTS",
        value_delimiter = ',',
        default_value = "http://127.0.0.1:8080",
        value_name = "URLS",
        global = true
    )]
    pub endpoints: Vec<String>,
    /// How long to wait for one endpoint (connecting and answering) before
    /// trying the next, like 500ms, 10s or 1m.
    #[arg(
        long,
        default_value = "10s",
        value_parser = super::parse_duration,
        value_name = "DURATION",
        global = true
    )]
    pub timeout: Duration,
}

/// Bytes left alone in a key's URL path: the unreserved characters, and
/// `/` because the API takes the whole rest of the path as the key.
const PATH_SAFE: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~')
    .remove(b'/');

/// Bytes left alone in a query parameter; `/` is harmless there too.
const QUERY_SAFE: &AsciiSet = PATH_SAFE;

/// The `/v1/kv/...` path of a key, percent-encoded byte by byte.
///
/// URL parsers collapse `.` and `..` path segments (even percent-encoded
/// ones), so such keys would silently address another key; refuse them.
pub fn key_path(key: &[u8]) -> Result<String, CliError> {
    if key.is_empty() {
        return Err(CliError::Usage("the key must not be empty".into()));
    }
    if key
        .split(|b| *b == b'/')
        .any(|seg| seg == b"." || seg == b"..")
    {
        return Err(CliError::Usage(
            "keys with `.` or `..` between slashes cannot be addressed over HTTP; use `phxkv txn`"
                .into(),
        ));
    }
    Ok(format!("/v1/kv/{}", percent_encode(key, PATH_SAFE)))
}

/// A query parameter value, percent-encoded byte by byte.
pub fn query_value(bytes: &[u8]) -> String {
    percent_encode(bytes, QUERY_SAFE).to_string()
}

/// One URL path segment (a member's name), `/` included in the encoding.
pub fn path_segment(bytes: &[u8]) -> String {
    const SEGMENT_SAFE: &AsciiSet = &PATH_SAFE.add(b'/');
    percent_encode(bytes, SEGMENT_SAFE).to_string()
}

/// Bytes as one printable token: the text itself when it is UTF-8 without
/// control characters, otherwise `b64:` and the base64. Text that itself
/// starts with `b64:` is encoded too, so the two forms never collide.
pub fn display_bytes(bytes: &[u8]) -> String {
    match std::str::from_utf8(bytes) {
        Ok(s) if !s.starts_with("b64:") && !s.chars().any(char::is_control) => s.to_string(),
        _ => format!("b64:{}", B64.encode(bytes)),
    }
}

/// Decodes a base64 field of an API answer.
pub fn decode_b64(field: &str, s: &str) -> Result<Vec<u8>, CliError> {
    B64.decode(s)
        .map_err(|e| CliError::Fatal(format!("the server sent a bad base64 {field}: {e}")))
}

/// A key with its value and bookkeeping, as the API returns it in lists,
/// transactions and watch events.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct KvJson {
    pub key: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_utf8: Option<String>,
    pub value: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value_utf8: Option<String>,
    pub version: u64,
    pub create_revision: u64,
    pub mod_revision: u64,
}

impl KvJson {
    pub fn key_bytes(&self) -> Result<Vec<u8>, CliError> {
        decode_b64("key", &self.key)
    }

    pub fn value_bytes(&self) -> Result<Vec<u8>, CliError> {
        decode_b64("value", &self.value)
    }
}

/// Prints a JSON document, pretty, on stdout.
pub fn print_json<T: Serialize>(value: &T) -> Result<(), CliError> {
    let text = serde_json::to_string_pretty(value)
        .map_err(|e| CliError::Fatal(format!("cannot format JSON: {e}")))?;
    println!("{text}");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_encoded_byte_wise_keeping_slashes() {
        assert_eq!(
            key_path(b"users/a b").ok().as_deref(),
            Some("/v1/kv/users/a%20b")
        );
        assert_eq!(
            key_path("é?&#%".as_bytes()).ok().as_deref(),
            Some("/v1/kv/%C3%A9%3F%26%23%25")
        );
        assert!(key_path(b"").is_err());
        assert!(key_path(b"a/../b").is_err());
        assert!(key_path(b"a/..b").is_ok());
    }

    #[test]
    fn bytes_display_as_text_or_base64() {
        assert_eq!(display_bytes(b"hello world"), "hello world");
        assert_eq!(display_bytes(b"a\tb"), "b64:YQli");
        assert_eq!(display_bytes(&[0xff]), "b64:/w==");
        assert_eq!(display_bytes(b"b64:x"), "b64:YjY0Ong=");
    }
}
