//! Bodies of the peer API: how engine messages, forwarded writes, read-index
//! requests, membership changes and snapshots travel between nodes.
//!
//! Peer bodies are JSON (`application/json`), described by
//! `openapi/phxkv-peer.json`: an operator can read replica traffic with curl
//! or a proxy log, and a peer can be written from the document. Byte strings
//! (keys, values) are base64 strings ([`crate::kv::bytes`]).
//!
//! A compact binary encoding (postcard, the log's on-disk encoding, as
//! `application/x-phxkv-postcard`) is an opt-in: a node started with
//! `--peer-encoding compact` announces it in an `Accept-Post` header on every
//! peer response, and a node sends compact bodies to a peer only when it has
//! the option on itself and that peer announced it. Every node reads both,
//! and answers in the encoding the request's `Accept` asks for, so the
//! choice is per peer and either side can turn it off: a peer that stops
//! announcing it (restarted without the option) gets JSON again after its
//! next answer.

use axum::body::Bytes;
use axum::extract::{FromRequest, Request};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::kv::OpResult;
use crate::paxos::{Index, NodeId, SnapshotMeta};

/// Header with which a node tells peers its own peer URL, so a member that
/// does not know it yet (a learner that just joined) can answer.
pub const PEER_URL_HEADER: &str = "x-phxkv-peer-url";

/// Content type of JSON peer bodies (the default).
pub const JSON: &str = "application/json";
/// Content type of compact (postcard) peer bodies.
pub const POSTCARD: &str = "application/x-phxkv-postcard";
/// The content type of a message stream: newline-delimited JSON, one batch
/// (a JSON array of envelopes) per line.
pub const NDJSON: &str = "application/x-ndjson";
/// Longest line accepted on a message stream.
pub const MAX_STREAM_LINE: usize = 256 << 20;

/// One batch as a line of a message stream. serde_json escapes every
/// newline inside strings, so the only newline is the one that ends it.
pub fn stream_line(batch: &[crate::paxos::Envelope]) -> Result<Vec<u8>, String> {
    let mut line = serde_json::to_vec(batch).map_err(|e| e.to_string())?;
    line.push(b'\n');
    Ok(line)
}
/// The request header in which a node states its `--read-mode` (`lease`
/// when absent). A node refuses peers in another mode: a quorum-mode
/// acceptor does not honour the leases a lease-mode master reads from.
pub const READ_MODE_HEADER: &str = "phxkv-read-mode";

/// `Accept-Post` value of a node that takes only JSON.
pub const ACCEPTS_JSON: &str = "application/json";
/// `Accept-Post` value of a node that also takes compact bodies.
pub const ACCEPTS_COMPACT: &str = "application/json, application/x-phxkv-postcard";

/// The response header in which a node lists the request encodings it takes.
pub const ACCEPT_POST: &str = "accept-post";

/// A media type without its parameters (`application/json; charset=utf-8`
/// is `application/json`).
pub(super) fn media_type(t: &str) -> &str {
    t.split(';').next().unwrap_or_default().trim()
}

/// Whether the comma-separated media types of header `name` include the
/// compact one.
fn lists_compact(headers: &HeaderMap, name: &str) -> bool {
    headers
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| media_type(t) == POSTCARD)
}

/// How peer bodies are encoded.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum Encoding {
    /// JSON with base64 byte strings: readable, documented, the default.
    #[default]
    Json,
    /// postcard: smaller and cheaper, used only between nodes that both
    /// turned it on.
    Compact,
}

impl Encoding {
    /// The encoding's name in flags and metrics.
    pub fn name(self) -> &'static str {
        match self {
            Encoding::Json => "json",
            Encoding::Compact => "compact",
        }
    }

    pub fn content_type(self) -> &'static str {
        match self {
            Encoding::Json => JSON,
            Encoding::Compact => POSTCARD,
        }
    }

    /// The encoding a content type names; a missing one means JSON, an
    /// unknown one `None`.
    pub fn of(content_type: Option<&HeaderValue>) -> Option<Encoding> {
        let Some(ct) = content_type else {
            return Some(Encoding::Json);
        };
        let essence = media_type(ct.to_str().ok()?);
        if essence.eq_ignore_ascii_case(JSON) {
            Some(Encoding::Json)
        } else if essence.eq_ignore_ascii_case(POSTCARD) {
            Some(Encoding::Compact)
        } else {
            None
        }
    }

    /// The encoding the `Accept` header of a request asks the answer in:
    /// compact only when it names the compact type.
    pub fn accepted(headers: &HeaderMap) -> Encoding {
        if lists_compact(headers, header::ACCEPT.as_str()) {
            Encoding::Compact
        } else {
            Encoding::Json
        }
    }

    /// Whether an `Accept-Post` header announces compact bodies.
    pub fn announced(headers: &HeaderMap) -> bool {
        lists_compact(headers, ACCEPT_POST)
    }

    pub fn encode<T: Serialize>(self, value: &T) -> Result<Vec<u8>, String> {
        match self {
            Encoding::Json => {
                serde_json::to_vec(value).map_err(|e| format!("cannot encode a peer body: {e}"))
            }
            Encoding::Compact => {
                postcard::to_stdvec(value).map_err(|e| format!("cannot encode a peer body: {e}"))
            }
        }
    }

    pub fn decode<T: DeserializeOwned>(self, body: &[u8]) -> Result<T, String> {
        match self {
            Encoding::Json => {
                serde_json::from_slice(body).map_err(|e| format!("bad JSON peer body: {e}"))
            }
            Encoding::Compact => {
                postcard::from_bytes(body).map_err(|e| format!("bad compact peer body: {e}"))
            }
        }
    }
}

/// A peer request's body, decoded as its content type says, remembering
/// which encoding the answer should use.
#[derive(Debug)]
pub struct PeerBody<T> {
    pub value: T,
    /// What the request's `Accept` asked the answer in.
    pub reply: Encoding,
}

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for PeerBody<T> {
    type Rejection = Response;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let reply = Encoding::accepted(req.headers());
        let Some(encoding) = Encoding::of(req.headers().get(header::CONTENT_TYPE)) else {
            return Err(peer_error(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                PeerErrorCode::UnsupportedMediaType,
                "peer bodies are application/json or application/x-phxkv-postcard",
            ));
        };
        let body = Bytes::from_request(req, state)
            .await
            .map_err(IntoResponse::into_response)?;
        match encoding.decode(&body) {
            Ok(value) => Ok(PeerBody { value, reply }),
            Err(e) => Err(peer_error(
                StatusCode::BAD_REQUEST,
                PeerErrorCode::BadRequest,
                &e,
            )),
        }
    }
}

/// A peer answer in a chosen encoding.
#[derive(Debug)]
pub struct Reply<T>(pub Encoding, pub T);

impl<T: Serialize> IntoResponse for Reply<T> {
    fn into_response(self) -> Response {
        match self.0.encode(&self.1) {
            Ok(body) => (
                [(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static(self.0.content_type()),
                )],
                body,
            )
                .into_response(),
            Err(e) => peer_error(
                StatusCode::INTERNAL_SERVER_ERROR,
                PeerErrorCode::Internal,
                &e,
            ),
        }
    }
}

/// What a peer request's error is about; the `code` of [`PeerError`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum PeerErrorCode {
    /// The cluster token is missing or wrong.
    Unauthorized,
    /// No such peer route.
    NotFound,
    /// The body could not be decoded.
    BadRequest,
    /// The body's content type is neither JSON nor the compact encoding.
    UnsupportedMediaType,
    /// The request names another incarnation of this member: its data
    /// directory is new, and the member must be replaced.
    WrongIncarnation,
    /// A snapshot body is malformed.
    BadSnapshot,
    /// This node cannot serve the request now (retry, or ask the master).
    Unavailable,
    /// The request's deadline passed; a write may still commit.
    Timeout,
    /// The sender runs another read mode (`phxkv-read-mode`): every replica
    /// of a cluster must use the same `--read-mode`.
    ReadModeMismatch,
    /// Anything else.
    Internal,
}

/// The body of every peer error: the same shape as the public API's.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct PeerError {
    pub error: PeerErrorDetail,
}

/// What went wrong.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct PeerErrorDetail {
    pub code: PeerErrorCode,
    /// A human-readable explanation; not meant to be parsed.
    pub message: String,
}

/// A peer error response.
pub fn peer_error(status: StatusCode, code: PeerErrorCode, message: &str) -> Response {
    let body = PeerError {
        error: PeerErrorDetail {
            code,
            message: message.to_string(),
        },
    };
    (status, axum::Json(body)).into_response()
}

/// The master's answer to a forwarded write.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ProposeReply {
    Applied(OpResult),
    NotMaster { hint: Option<NodeId> },
    Busy(String),
}

/// One answer of a forwarded batch (`POST /peer/v1/propose_batch`), in the
/// order of the commands.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Forwarded {
    /// The master's answer.
    Reply(ProposeReply),
    /// The master could not take the command (it stopped, timed out).
    Failed(String),
}

impl From<Result<ProposeReply, String>> for Forwarded {
    fn from(r: Result<ProposeReply, String>) -> Self {
        match r {
            Ok(reply) => Forwarded::Reply(reply),
            Err(e) => Forwarded::Failed(e),
        }
    }
}

impl From<Forwarded> for Result<ProposeReply, String> {
    fn from(f: Forwarded) -> Self {
        match f {
            Forwarded::Reply(reply) => Ok(reply),
            Forwarded::Failed(e) => Err(e),
        }
    }
}

/// The master's answer to a read-index request.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ReadIndexReply {
    Index(Index),
    NotMaster { hint: Option<NodeId> },
    NoLease,
}

/// The master's answer to a membership change.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
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

    fn sample_envelopes() -> Vec<crate::paxos::Envelope> {
        use crate::kv::Op;
        use crate::paxos::{Command, Envelope, Message, RequestId, Value};
        let cmd = Command {
            id: RequestId { client: 1, seq: 2 },
            op: Op::Put {
                key: b"k".to_vec(),
                value: vec![7u8; 256],
                expect: None,
            },
        };
        vec![Envelope {
            from: 1,
            to: u64::MAX - 1,
            msg: Message::Accept {
                ballot: crate::paxos::Ballot::new(3, 1),
                entries: vec![(9, Value::Batch(vec![cmd])), (10, Value::Noop)],
                commit: 8,
            },
        }]
    }

    #[test]
    fn peer_bodies_roundtrip_in_both_encodings() {
        use crate::paxos::Envelope;
        let envs = sample_envelopes();
        for enc in [Encoding::Json, Encoding::Compact] {
            let bytes = enc.encode(&envs).expect("encodes");
            assert_eq!(enc.decode::<Vec<Envelope>>(&bytes), Ok(envs.clone()));
        }
        // Compact: the value travels as itself.
        let compact = Encoding::Compact.encode(&envs).expect("encodes");
        assert!(compact.len() < 256 + 64, "{} bytes", compact.len());
        // JSON: readable, byte strings as base64, snake_case names, ids exact.
        let json = String::from_utf8(Encoding::Json.encode(&envs).expect("encodes")).expect("utf8");
        assert!(
            json.contains(r#""accept":{"ballot":{"round":3,"node":1}"#),
            "{json}"
        );
        assert!(json.contains(r#""key":"aw==""#), "{json}");
        assert!(json.contains(r#"[10,"noop"]"#), "{json}");
        assert!(
            json.contains(&format!(r#""to":{}"#, u64::MAX - 1)),
            "{json}"
        );
        assert!(
            json.len() < 256 * 4 / 3 + 300,
            "{} bytes: {json}",
            json.len()
        );
        assert!(
            Encoding::Compact
                .decode::<Vec<Envelope>>(b"\xff\xff")
                .is_err()
        );
        assert!(Encoding::Json.decode::<Vec<Envelope>>(b"[{").is_err());
        assert!(
            Encoding::Compact
                .decode::<crate::paxos::Command>(&[])
                .is_err()
        );
    }

    #[test]
    fn content_types_and_announcements_are_read() {
        use axum::http::HeaderMap;
        let ct = |s: &'static str| HeaderValue::from_static(s);
        assert_eq!(Encoding::of(None), Some(Encoding::Json));
        assert_eq!(
            Encoding::of(Some(&ct("application/json; charset=utf-8"))),
            Some(Encoding::Json)
        );
        assert_eq!(Encoding::of(Some(&ct(POSTCARD))), Some(Encoding::Compact));
        assert_eq!(Encoding::of(Some(&ct("text/plain"))), None);

        let mut h = HeaderMap::new();
        assert_eq!(Encoding::accepted(&h), Encoding::Json);
        assert!(!Encoding::announced(&h));
        h.insert(
            header::ACCEPT,
            ct("application/json, application/x-phxkv-postcard;q=0.9"),
        );
        h.insert(ACCEPT_POST, ct(ACCEPTS_COMPACT));
        assert_eq!(Encoding::accepted(&h), Encoding::Compact);
        assert!(Encoding::announced(&h));
        h.insert(ACCEPT_POST, ct(ACCEPTS_JSON));
        assert!(!Encoding::announced(&h));
    }
}
