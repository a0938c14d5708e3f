//! How binary keys and values travel over HTTP and JSON.
//!
//! Keys and values are arbitrary bytes, but URLs and JSON are text. In URLs
//! bytes are percent-encoded; in JSON they are base64, with a plain UTF-8
//! copy alongside whenever the bytes happen to be valid UTF-8, so that the
//! common case of text keys stays readable without making binary data lossy.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use percent_encoding::percent_decode_str;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::api::error::ApiError;
use crate::kv::KeyValue;

/// Standard base64 with padding, the encoding of every `*_b64` and binary field.
pub fn to_b64(bytes: &[u8]) -> String {
    STANDARD.encode(bytes)
}

/// Decodes the base64 in field `field`, naming the field on failure.
pub fn from_b64(field: &str, text: &str) -> Result<Vec<u8>, ApiError> {
    STANDARD
        .decode(text)
        .map_err(|e| ApiError::invalid(format!("{field} is not valid base64: {e}")))
}

/// The UTF-8 reading of `bytes`, when there is one.
pub fn utf8(bytes: &[u8]) -> Option<String> {
    std::str::from_utf8(bytes).ok().map(str::to_owned)
}

/// Percent-decodes a raw (still encoded) URL component into bytes.
///
/// Decoding happens on the raw text rather than through the router's path
/// parameters, which insist on UTF-8 and would refuse binary keys.
///
/// A `%` that does not start an escape (two hex digits) is refused rather
/// than taken literally: `a%zz` could be a typo as well as a key, and a
/// client that forgot to encode a `%` would otherwise write a key it did not
/// mean whenever two hex digits happen to follow.
pub fn percent_decode(raw: &str) -> Result<Vec<u8>, ApiError> {
    let bytes = raw.as_bytes();
    for (at, _) in raw.match_indices('%') {
        let escape = bytes.get(at + 1..at + 3);
        if !escape.is_some_and(|hex| hex.iter().all(u8::is_ascii_hexdigit)) {
            return Err(ApiError::invalid(format!(
                "bad percent-encoding in {}: a % must start an escape of two hex digits \
                 (write a literal % as %25)",
                crate::text::quoted(raw)
            )));
        }
    }
    Ok(percent_decode_str(raw).collect())
}

/// A key with its value and bookkeeping, as JSON.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[schema(example = json!({"key": "Y29uZmlnL2E=", "key_utf8": "config/a",
    "value": "b24=", "value_utf8": "on", "version": 2, "create_revision": 5,
    "mod_revision": 9}))]
pub struct KvJson {
    /// The key, base64.
    #[schema(content_encoding = "base64")]
    pub key: String,
    /// The key as text; present only when the key is valid UTF-8.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub key_utf8: Option<String>,
    /// The value, base64.
    #[schema(content_encoding = "base64")]
    pub value: String,
    /// The value as text; present only when the value is valid UTF-8.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub value_utf8: Option<String>,
    /// Writes since the key was (re)created; `1` right after creation.
    pub version: u64,
    /// The revision that created the key.
    pub create_revision: u64,
    /// The revision of the last write to the key.
    pub mod_revision: u64,
}

impl From<&KeyValue> for KvJson {
    fn from(kv: &KeyValue) -> KvJson {
        KvJson {
            key: to_b64(&kv.key),
            key_utf8: utf8(&kv.key),
            value: to_b64(&kv.value),
            value_utf8: utf8(&kv.value),
            version: kv.version,
            create_revision: kv.create_revision,
            mod_revision: kv.mod_revision,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn binary_bytes_get_no_utf8_copy() {
        let kv = KeyValue {
            key: b"k\xff".to_vec(),
            value: b"v".to_vec(),
            version: 1,
            create_revision: 2,
            mod_revision: 2,
        };
        let json = KvJson::from(&kv);
        assert_eq!(json.key_utf8, None);
        assert_eq!(json.value_utf8.as_deref(), Some("v"));
        assert_eq!(from_b64("key", &json.key).ok(), Some(kv.key));
    }

    #[test]
    fn percent_decoding_yields_raw_bytes() {
        assert_eq!(
            percent_decode("a%00%FF%2Fb").ok(),
            Some(b"a\x00\xff/b".to_vec())
        );
        assert_eq!(percent_decode("100%25").ok(), Some(b"100%".to_vec()));
    }

    #[test]
    fn a_percent_that_starts_no_escape_is_refused() {
        for raw in ["a%zz", "a%", "a%4", "%g0b", "ok%41%"] {
            assert!(percent_decode(raw).is_err(), "{raw}");
        }
    }
}
