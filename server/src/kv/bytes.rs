//! How byte strings (keys, values) are written by serde: base64 text in
//! human-readable formats, raw bytes in binary ones.
//!
//! Use with `#[serde(with = "crate::kv::bytes")]` on a `Vec<u8>` field. In
//! JSON (the peer protocol, which people read with curl and a proxy log) a
//! 256-byte value is 344 characters of standard base64 instead of the
//! kilobyte of digits serde would write for a list of numbers. In postcard
//! (the log and snapshots on disk, and the opt-in compact peer encoding) the
//! bytes go as a length and the bytes themselves, exactly as before this
//! module existed, so what is on disk reads back unchanged.
//!
//! Reading JSON accepts a base64 string (standard alphabet, with or without
//! padding) and, for tolerance, a list of numbers.

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD};
use serde::de::{self, SeqAccess, Visitor};
use serde::{Deserializer, Serializer};

/// Writes `bytes` as base64 text or as raw bytes, as the format prefers.
pub fn serialize<S: Serializer>(bytes: &[u8], serializer: S) -> Result<S::Ok, S::Error> {
    if serializer.is_human_readable() {
        serializer.serialize_str(&STANDARD.encode(bytes))
    } else {
        serializer.serialize_bytes(bytes)
    }
}

/// Reads what [`serialize`] wrote.
pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Vec<u8>, D::Error> {
    if deserializer.is_human_readable() {
        deserializer.deserialize_any(BytesVisitor)
    } else {
        deserializer.deserialize_byte_buf(BytesVisitor)
    }
}

struct BytesVisitor;

impl<'de> Visitor<'de> for BytesVisitor {
    type Value = Vec<u8>;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a base64 string or bytes")
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Vec<u8>, E> {
        let decoded = if v.len().is_multiple_of(4) {
            STANDARD.decode(v)
        } else {
            STANDARD_NO_PAD.decode(v)
        };
        decoded.map_err(|e| E::custom(format!("invalid base64: {e}")))
    }

    fn visit_bytes<E: de::Error>(self, v: &[u8]) -> Result<Vec<u8>, E> {
        Ok(v.to_vec())
    }

    fn visit_byte_buf<E: de::Error>(self, v: Vec<u8>) -> Result<Vec<u8>, E> {
        Ok(v)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<u8>, A::Error> {
        let mut out = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(1 << 16));
        while let Some(b) = seq.next_element::<u8>()? {
            out.push(b);
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use serde::{Deserialize, Serialize};

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct Holder {
        #[serde(with = "super")]
        b: Vec<u8>,
    }

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct Plain {
        b: Vec<u8>,
    }

    #[test]
    fn json_is_base64_and_postcard_is_unchanged() {
        let h = Holder {
            b: b"\x00\xffhello".to_vec(),
        };
        let json = serde_json::to_string(&h).expect("json");
        assert_eq!(json, r#"{"b":"AP9oZWxsbw=="}"#);
        assert_eq!(serde_json::from_str::<Holder>(&json).expect("back"), h);
        // Without padding, and as a list of numbers, it is read too.
        assert_eq!(
            serde_json::from_str::<Holder>(r#"{"b":"AP9oZWxsbw"}"#).expect("no pad"),
            h
        );
        assert_eq!(
            serde_json::from_str::<Holder>(r#"{"b":[0,255,104,101,108,108,111]}"#).expect("list"),
            h
        );
        let bad = serde_json::from_str::<Holder>(r#"{"b":"not base64!"}"#)
            .expect_err("garbage is refused");
        assert!(bad.to_string().contains("invalid base64"), "{bad}");
        assert!(serde_json::from_str::<Holder>(r#"{"b":[256]}"#).is_err());

        // postcard: the same bytes as a plain Vec<u8> (what the disk holds).
        let pc = postcard::to_stdvec(&h).expect("postcard");
        let plain = postcard::to_stdvec(&Plain { b: h.b.clone() }).expect("postcard");
        assert_eq!(pc, plain);
        assert_eq!(postcard::from_bytes::<Holder>(&plain).expect("back"), h);
    }
}
