//! The body of a log segment object.
//!
//! ```text
//! segment := MAGIC version:u32le body checksum:u64le
//! body    := postcard of Body
//! checksum = xxh3_64 of every byte before it
//! ```
//!
//! The version comes first so that a newer format is refused before its body
//! is interpreted.

use serde::{Deserialize, Serialize};
use xxhash_rust::xxh3::xxh3_64;

use crate::paxos::Value;

const MAGIC: &[u8; 8] = b"PHXSEG1\n";
/// The format this version writes and reads.
pub const FORMAT_VERSION: u32 = 1;

/// One chosen log entry as archived.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    pub index: u64,
    /// When the archiving node applied it, in ms since the Unix epoch.
    pub time_ms: u64,
    pub value: Value,
    /// The store revision after the entry.
    pub revision: u64,
    /// The store revision after each command of a batch (empty for other
    /// values).
    pub revisions: Vec<u64>,
}

impl Entry {
    /// Roughly the memory it holds, for bounding buffers.
    pub fn size_hint(&self) -> usize {
        let value = match &self.value {
            Value::Batch(cmds) => cmds.iter().map(crate::paxos::Command::size_hint).sum(),
            Value::Config(m) => 64 * (m.members.len() + 1),
            Value::Noop | Value::Lease { .. } => 16,
        };
        64 + value + 8 * self.revisions.len()
    }
}

#[derive(Debug, Serialize, Deserialize)]
struct Body {
    cluster_id: String,
    entries: Vec<Entry>,
}

/// Encodes a segment of `entries` (consecutive indexes).
pub fn encode(cluster_id: &str, entries: Vec<Entry>) -> Result<Vec<u8>, String> {
    let body = Body {
        cluster_id: cluster_id.to_string(),
        entries,
    };
    let mut out = MAGIC.to_vec();
    out.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
    let out = postcard::to_extend(&body, out).map_err(|e| e.to_string())?;
    let mut out = out;
    let sum = xxh3_64(&out);
    out.extend_from_slice(&sum.to_le_bytes());
    Ok(out)
}

/// Decodes a segment; the cluster it came from and its entries.
pub fn decode(bytes: &[u8]) -> Result<(String, Vec<Entry>), String> {
    if bytes.len() < MAGIC.len() + 4 + 8 || &bytes[..MAGIC.len()] != MAGIC {
        return Err("not a phxkv log segment".into());
    }
    let mut version = [0u8; 4];
    version.copy_from_slice(&bytes[MAGIC.len()..MAGIC.len() + 4]);
    let version = u32::from_le_bytes(version);
    if version != FORMAT_VERSION {
        return Err(format!(
            "log segment format version {version} is not supported (this version reads {FORMAT_VERSION})"
        ));
    }
    let (data, sum) = bytes.split_at(bytes.len() - 8);
    let mut expected = [0u8; 8];
    expected.copy_from_slice(sum);
    if xxh3_64(data) != u64::from_le_bytes(expected) {
        return Err("the log segment is corrupted (checksum mismatch)".into());
    }
    let body: Body = postcard::from_bytes(&data[MAGIC.len() + 4..])
        .map_err(|e| format!("the log segment is corrupted ({e})"))?;
    for pair in body.entries.windows(2) {
        if pair[1].index != pair[0].index + 1 {
            return Err(format!(
                "the log segment skips from index {} to {}",
                pair[0].index, pair[1].index
            ));
        }
    }
    Ok((body.cluster_id, body.entries))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kv::Op;
    use crate::paxos::{Command, RequestId};

    fn entries() -> Vec<Entry> {
        vec![
            Entry {
                index: 7,
                time_ms: 1,
                value: Value::Noop,
                revision: 4,
                revisions: vec![],
            },
            Entry {
                index: 8,
                time_ms: 2,
                value: Value::Batch(
                    vec![Command {
                        id: RequestId { client: 1, seq: 1 },
                        op: Op::Put {
                            key: b"k".to_vec(),
                            value: b"v".to_vec(),
                            expect: None,
                        },
                    }]
                    .into(),
                ),
                revision: 5,
                revisions: vec![5],
            },
        ]
    }

    #[test]
    fn a_segment_round_trips_and_every_flipped_byte_is_refused() {
        let bytes = encode("c", entries()).expect("encode");
        assert_eq!(
            decode(&bytes).expect("decode"),
            ("c".to_string(), entries())
        );
        for at in 0..bytes.len() {
            let mut bad = bytes.clone();
            bad[at] ^= 0x10;
            assert!(decode(&bad).is_err(), "flip at {at} accepted");
        }
        assert!(decode(&bytes[..bytes.len() - 1]).is_err());
    }
}
