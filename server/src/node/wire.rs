//! Bodies of the peer API that are not engine messages: forwarded writes,
//! read-index requests, membership changes and snapshots.

use serde::{Deserialize, Serialize};

use crate::kv::OpResult;
use crate::paxos::{Index, NodeId, SnapshotMeta};

/// Header with which a node tells peers its own peer URL, so a member that
/// does not know it yet (a learner that just joined) can answer.
pub const PEER_URL_HEADER: &str = "x-phxkv-peer-url";

/// The master's answer to a forwarded write.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum ProposeReply {
    Applied(OpResult),
    NotMaster { hint: Option<NodeId> },
    Busy(String),
}

/// The master's answer to a read-index request.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum ReadIndexReply {
    Index(Index),
    NotMaster { hint: Option<NodeId> },
    NoLease,
}

/// The master's answer to a membership change.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum ChangeReply {
    /// Proposed at this index; in force once it is applied.
    Index(Index),
    NotMaster {
        hint: Option<NodeId>,
    },
    Rejected(String),
}

/// Snapshot body: a 4-byte big-endian length, the JSON metadata, then the
/// state machine bytes.
pub fn encode_snapshot(meta: &SnapshotMeta, data: &[u8]) -> Vec<u8> {
    let meta = serde_json::to_vec(meta).unwrap_or_default();
    let mut out = Vec::with_capacity(4 + meta.len() + data.len());
    out.extend_from_slice(&(meta.len() as u32).to_be_bytes());
    out.extend_from_slice(&meta);
    out.extend_from_slice(data);
    out
}

/// Inverse of [`encode_snapshot`].
pub fn decode_snapshot(body: &[u8]) -> Result<(SnapshotMeta, Vec<u8>), String> {
    let len_bytes: [u8; 4] = body
        .get(..4)
        .and_then(|b| b.try_into().ok())
        .ok_or("snapshot body too short")?;
    let len = u32::from_be_bytes(len_bytes) as usize;
    let meta_bytes = body.get(4..4 + len).ok_or("snapshot metadata truncated")?;
    let meta: SnapshotMeta =
        serde_json::from_slice(meta_bytes).map_err(|e| format!("snapshot metadata: {e}"))?;
    Ok((meta, body[4 + len..].to_vec()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::paxos::Membership;

    #[test]
    fn snapshot_bodies_roundtrip_and_garbage_is_an_error() {
        let meta = SnapshotMeta {
            index: 42,
            membership: Membership::default(),
        };
        let body = encode_snapshot(&meta, b"state");
        let (m, d) = decode_snapshot(&body).expect("decodes");
        assert_eq!(m, meta);
        assert_eq!(d, b"state");
        assert!(decode_snapshot(b"\x00\x00").is_err());
        assert!(decode_snapshot(b"\x00\x00\x10\x00{}").is_err());
    }
}
