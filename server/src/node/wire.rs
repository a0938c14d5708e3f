//! Bodies of the peer API: how engine messages, forwarded writes, read-index
//! requests, membership changes and snapshots travel between nodes.
//!
//! Peer bodies are postcard, not JSON: a peer message is mostly byte strings
//! (keys and values), which serde_json writes as lists of numbers, so a
//! 256-byte value cost about a kilobyte of digits to print and parse on every
//! hop. postcard (already the log's on-disk encoding) writes them as they
//! are. Requests that say `content-type: application/json` are still
//! understood, so a node can take messages from an older peer.

use axum::body::Bytes;
use axum::extract::{FromRequest, Request};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::kv::OpResult;
use crate::paxos::{Index, NodeId, SnapshotMeta};

/// Header with which a node tells peers its own peer URL, so a member that
/// does not know it yet (a learner that just joined) can answer.
pub const PEER_URL_HEADER: &str = "x-phxkv-peer-url";

/// Content type of postcard bodies on the peer port.
pub const POSTCARD: &str = "application/x-phxkv-postcard";

/// Encodes a peer body.
pub fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, String> {
    postcard::to_stdvec(value).map_err(|e| format!("cannot encode a peer body: {e}"))
}

/// Decodes a peer body: postcard, or JSON when `json` (older peers).
pub fn decode<T: DeserializeOwned>(body: &[u8], json: bool) -> Result<T, String> {
    if json {
        serde_json::from_slice(body).map_err(|e| format!("bad JSON peer body: {e}"))
    } else {
        postcard::from_bytes(body).map_err(|e| format!("bad peer body: {e}"))
    }
}

/// Extractor and response for postcard peer bodies.
#[derive(Debug)]
pub struct Postcard<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for Postcard<T> {
    type Rejection = Response;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let json = req
            .headers()
            .get(header::CONTENT_TYPE)
            .is_some_and(|v| v.as_bytes().starts_with(b"application/json"));
        let body = Bytes::from_request(req, state)
            .await
            .map_err(IntoResponse::into_response)?;
        decode(&body, json)
            .map(Postcard)
            .map_err(|e| (StatusCode::BAD_REQUEST, e).into_response())
    }
}

impl<T: Serialize> IntoResponse for Postcard<T> {
    fn into_response(self) -> Response {
        match encode(&self.0) {
            Ok(body) => (
                [(header::CONTENT_TYPE, HeaderValue::from_static(POSTCARD))],
                body,
            )
                .into_response(),
            Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e).into_response(),
        }
    }
}

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
    let mut out = snapshot_header(meta);
    out.extend_from_slice(data);
    out
}

/// The start of a snapshot body, for the state machine bytes to be
/// appended to in place (a snapshot is the whole state: copying it into a
/// body after encoding it would hold it twice).
pub fn snapshot_header(meta: &SnapshotMeta) -> Vec<u8> {
    let meta = serde_json::to_vec(meta).unwrap_or_default();
    let mut out = Vec::with_capacity(4 + meta.len());
    out.extend_from_slice(&(meta.len() as u32).to_be_bytes());
    out.extend_from_slice(&meta);
    out
}

/// Inverse of [`encode_snapshot`]: the metadata, and where in `body` the
/// state machine bytes start (so the caller can keep them without a copy).
pub fn decode_snapshot(body: &[u8]) -> Result<(SnapshotMeta, usize), String> {
    let len_bytes: [u8; 4] = body
        .get(..4)
        .and_then(|b| b.try_into().ok())
        .ok_or("snapshot body too short")?;
    let len = u32::from_be_bytes(len_bytes) as usize;
    let meta_bytes = body.get(4..4 + len).ok_or("snapshot metadata truncated")?;
    let meta: SnapshotMeta =
        serde_json::from_slice(meta_bytes).map_err(|e| format!("snapshot metadata: {e}"))?;
    Ok((meta, 4 + len))
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
        let (m, start) = decode_snapshot(&body).expect("decodes");
        assert_eq!(m, meta);
        assert_eq!(&body[start..], b"state");
        assert!(decode_snapshot(b"\x00\x00").is_err());
        assert!(decode_snapshot(b"\x00\x00\x10\x00{}").is_err());
    }

    #[test]
    fn peer_bodies_roundtrip_in_postcard_and_json_is_still_read() {
        use crate::kv::Op;
        use crate::paxos::{Command, Envelope, Message, RequestId, Value};
        let value = vec![7u8; 256];
        let cmd = Command {
            id: RequestId { client: 1, seq: 2 },
            op: Op::Put {
                key: b"k".to_vec(),
                value: value.clone(),
                expect: None,
            },
        };
        let envs = vec![Envelope {
            from: 1,
            to: 2,
            msg: Message::Accept {
                ballot: crate::paxos::Ballot::new(3, 1),
                entries: vec![(9, Value::Batch(vec![cmd.clone()]))],
                commit: 8,
            },
        }];
        let bytes = encode(&envs).expect("encodes");
        // The value travels as itself, not as a list of numbers.
        assert!(bytes.len() < value.len() + 64, "{} bytes", bytes.len());
        assert_eq!(decode::<Vec<Envelope>>(&bytes, false), Ok(envs.clone()));
        let json = serde_json::to_vec(&envs).expect("json");
        assert_eq!(decode::<Vec<Envelope>>(&json, true), Ok(envs));
        assert!(decode::<Vec<Envelope>>(b"\xff\xff", false).is_err());
        assert!(decode::<Command>(&[], false).is_err());
    }
}
