//! Bodies of the peer API: how engine messages, forwarded writes, read-index
//! requests, membership changes and snapshots travel between nodes.
//!
//! Peer bodies are JSON (`application/json`), described by
//! `openapi/phxkv-peer.json`: an operator can read replica traffic with curl
//! or a proxy log, and a peer can be written from the document. Byte strings
//! (keys, values) are base64 strings ([`crate::kv::bytes`]).
//!
//! There is no other encoding. Earlier versions offered a binary one
//! (postcard) between nodes that both opted in; once messages travelled as
//! lines on long-lived streams it was no faster than JSON (write-64 0.88×,
//! read-lin-64 1.08×, write-1 1.01× of JSON's throughput in one
//! `compare.sh` run), so it went. A node of such a version sends JSON to
//! peers that do not announce the binary type, which no node does now.

use axum::body::Bytes;
use axum::extract::{FromRequest, Request};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::kv::OpResult;
use crate::paxos::{Index, NodeId, SnapshotMeta};

/// Header with which a node tells peers its own peer URL, so a member that
/// does not know it yet (a learner that just joined) can answer.
pub const PEER_URL_HEADER: &str = "x-phxkv-peer-url";

/// The header in which a node lists, comma-separated, what it does beyond
/// the messages every version understands. It goes with every request a
/// node makes of its peers, and with its answer to a peer's digest report
/// (so a node that has just started learns its peers' features from its
/// first report):
///
/// - `forward`: as master it proposes client writes that reach it as
///   `forward` messages and answers `read_index_request` messages, so a
///   follower that hears this from its master sends those on its message
///   stream instead of `POST /peer/v1/propose_batch` and
///   `POST /peer/v1/read_index` (which a node of an earlier version needs,
///   and which stay for `curl`).
/// - `anonymous`: it decodes and applies the `anonymous` op (a write by a
///   caller without a credential, refused where it is applied if auth is on
///   by then). A node proposes that op only once every member of its
///   configuration said this, so a node of an earlier version never meets
///   an op it cannot read during a rolling upgrade.
/// - `delete_prefix`: it decodes and applies the `delete_prefix` op (the
///   keys under a prefix deleted at one revision), proposed on the same
///   condition.
/// - `lease_owner`: it decodes and applies the `grant_owned` lease op (a
///   lease held by the API token that granted it), proposed on the same
///   condition.
/// - `lease_fence`: it decodes and applies the `fence` and `expire_fenced`
///   lease ops (an expiry that takes effect only if no later master put
///   its fence in the log before it; see `crate::kv::lease`), proposed on
///   the same condition.
/// - `once`: it decodes and applies the `once` op (a write that may be sent
///   to a master again, applied only if the request-id table cannot have
///   forgotten an earlier copy; see `crate::kv::dedup`), proposed on the
///   same condition.
pub const FEATURES_HEADER: &str = "phxkv-peer-features";
/// What this version puts in [`FEATURES_HEADER`].
pub const FEATURES: &str = "forward,anonymous,delete_prefix,lease_owner,lease_fence,once,timeline";

/// What a peer's [`FEATURES_HEADER`] says it does.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Features {
    /// It takes `forward` and `read_index_request` messages as master.
    pub forward: bool,
    /// It decodes the `anonymous` op.
    pub anonymous: bool,
    /// It decodes the `delete_prefix` op.
    pub delete_prefix: bool,
    /// It decodes the `grant_owned` lease op.
    pub lease_owner: bool,
    /// It decodes the `fence` and `expire_fenced` lease ops.
    pub lease_fence: bool,
    /// It decodes the `once` op.
    pub once: bool,
    /// It decodes the `timeline` op.
    pub timeline: bool,
}

impl Features {
    /// What this version does ([`FEATURES`]).
    pub fn of_own() -> Features {
        Features {
            forward: true,
            anonymous: true,
            delete_prefix: true,
            lease_owner: true,
            lease_fence: true,
            once: true,
            timeline: true,
        }
    }

    /// The features' names, as the header lists them.
    pub fn names(&self) -> Vec<String> {
        [
            ("forward", self.forward),
            ("anonymous", self.anonymous),
            ("delete_prefix", self.delete_prefix),
            ("lease_owner", self.lease_owner),
            ("lease_fence", self.lease_fence),
            ("once", self.once),
            ("timeline", self.timeline),
        ]
        .into_iter()
        .filter(|(_, on)| *on)
        .map(|(name, _)| name.to_string())
        .collect()
    }

    /// The features a [`FEATURES_HEADER`] lists; unknown ones are ignored.
    pub fn of(value: Option<&HeaderValue>) -> Features {
        let mut out = Features::default();
        for f in value
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .split(',')
        {
            match f.trim() {
                "forward" => out.forward = true,
                "anonymous" => out.anonymous = true,
                "delete_prefix" => out.delete_prefix = true,
                "lease_owner" => out.lease_owner = true,
                "lease_fence" => out.lease_fence = true,
                "once" => out.once = true,
                "timeline" => out.timeline = true,
                _ => {}
            }
        }
        out
    }
}

/// Content type of peer bodies.
pub const JSON: &str = "application/json";
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

/// The response header in which a node lists the request content types it
/// takes: `application/json`. A node of an earlier version that offered the
/// binary encoding sends it only to peers listing it here, so this header
/// is also what moves such a node back to JSON during an upgrade.
pub const ACCEPT_POST: &str = "accept-post";

/// A media type without its parameters (`application/json; charset=utf-8`
/// is `application/json`).
pub(super) fn media_type(t: &str) -> &str {
    t.split(';').next().unwrap_or_default().trim()
}

/// Whether a request's content type is JSON (a missing one counts as JSON).
pub fn is_json(content_type: Option<&HeaderValue>) -> bool {
    content_type.is_none_or(|ct| {
        ct.to_str()
            .is_ok_and(|t| media_type(t).eq_ignore_ascii_case(JSON))
    })
}

/// Encodes a peer body.
pub fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, String> {
    serde_json::to_vec(value).map_err(|e| format!("cannot encode a peer body: {e}"))
}

/// Decodes a peer body.
pub fn decode<T: DeserializeOwned>(body: &[u8]) -> Result<T, String> {
    serde_json::from_slice(body).map_err(|e| format!("bad JSON peer body: {e}"))
}

/// A peer request's JSON body, decoded.
#[derive(Debug)]
pub struct PeerBody<T> {
    pub value: T,
}

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for PeerBody<T> {
    type Rejection = Response;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        if !is_json(req.headers().get(header::CONTENT_TYPE)) {
            return Err(peer_error(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                PeerErrorCode::UnsupportedMediaType,
                "peer bodies are application/json",
            ));
        }
        let body = Bytes::from_request(req, state)
            .await
            .map_err(IntoResponse::into_response)?;
        match decode(&body) {
            Ok(value) => Ok(PeerBody { value }),
            Err(e) => Err(peer_error(
                StatusCode::BAD_REQUEST,
                PeerErrorCode::BadRequest,
                &e,
            )),
        }
    }
}

/// A peer answer, as JSON.
#[derive(Debug)]
pub struct Reply<T>(pub T);

impl<T: Serialize> IntoResponse for Reply<T> {
    fn into_response(self) -> Response {
        match encode(&self.0) {
            Ok(body) => (
                [(header::CONTENT_TYPE, HeaderValue::from_static(JSON))],
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
    /// The caller's address sent too many wrong cluster tokens (to either
    /// port) within a minute; it is refused, whatever it sends, until the
    /// time in `Retry-After` has passed.
    TooManyAttempts,
    /// No such peer route.
    NotFound,
    /// The route does not take the request's method.
    MethodNotAllowed,
    /// The body could not be decoded.
    BadRequest,
    /// The body's content type is not JSON.
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

/// The master's answer to lease keep-alives and TTL questions
/// (`/peer/v1/lease`, and the engine thread's answer to the node).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum LeaseReply {
    /// One answer per id asked, in order.
    Leases(Vec<LeaseAnswer>),
    /// This node cannot answer for leases: it is not master (`hint`: who
    /// is), or not yet caught up with the log (`hint` is itself).
    NotMaster { hint: Option<NodeId> },
}

/// One lease's state as the master sees it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum LeaseAnswer {
    /// The lease lives: its TTL, and the time left before the master may
    /// expire it (after a renewal, at least the TTL).
    Alive {
        id: u64,
        ttl_secs: u64,
        remaining_ms: u64,
        granted_revision: u64,
    },
    /// No such lease (never granted, revoked, or expired and deleted).
    NotFound { id: u64 },
    /// Its deadline passed: it is being expired and cannot be renewed.
    Expired { id: u64 },
}

/// Keep-alives or TTL questions for leases, asked of the master.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct LeaseQuestion {
    /// The leases, at most 1,000.
    pub ids: Vec<u64>,
    /// Renew them (a keep-alive) rather than only report their TTL.
    pub renew: bool,
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

/// A request to the master to hand mastership to a member
/// (`POST /peer/v1/transfer`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct TransferRequest {
    /// The member to hand mastership to (its incarnation id).
    pub target: NodeId,
}

/// The master's answer to a handoff request.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum TransferReply {
    /// Handed over: this node is no longer master, and `master` is the
    /// node it now takes for master (the target, unless the handoff failed
    /// and an election followed).
    HandedOver {
        master: Option<NodeId>,
    },
    /// The target is this node, and it is master.
    AlreadyMaster,
    NotMaster {
        hint: Option<NodeId>,
    },
    /// Not handed over, and asking again at once would not change that.
    Refused {
        reason: TransferRefusal,
        message: String,
    },
}

/// Why a master refused to hand mastership to a member.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum TransferRefusal {
    /// The target is not in the master's configuration.
    NotMember,
    /// The target is a learner.
    NotVoter,
    /// The target has not answered the master recently, or is behind.
    NotReady,
    /// Another handoff is under way; ask again shortly.
    InProgress,
}

impl From<crate::paxos::HandoffError> for TransferReply {
    fn from(e: crate::paxos::HandoffError) -> Self {
        use crate::paxos::HandoffError as E;
        let reason = match &e {
            E::NotMaster { hint } => return TransferReply::NotMaster { hint: *hint },
            E::AlreadyMaster(_) => return TransferReply::AlreadyMaster,
            E::NotMember(_) => TransferRefusal::NotMember,
            E::NotVoter(_) => TransferRefusal::NotVoter,
            E::Unreachable(_) | E::Behind { .. } | E::NoCandidate => TransferRefusal::NotReady,
            E::InProgress => TransferRefusal::InProgress,
        };
        TransferReply::Refused {
            reason,
            message: e.to_string(),
        }
    }
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
                entries: vec![(9, Value::Batch(vec![cmd].into())), (10, Value::Noop)],
                commit: 8,
            },
        }]
    }

    #[test]
    fn the_features_header_is_read_as_a_list() {
        let of = |v: &'static str| Features::of(Some(&HeaderValue::from_static(v)));
        let all = Features {
            forward: true,
            anonymous: true,
            delete_prefix: true,
            lease_owner: true,
            lease_fence: true,
            once: true,
            timeline: true,
        };
        assert_eq!(of(FEATURES), all);
        assert_eq!(
            Features::of_own(),
            all,
            "FEATURES lists what this version does"
        );
        assert_eq!(all.names().join(","), FEATURES);
        assert_eq!(
            of(
                "something, delete_prefix, once,lease_fence,timeline,lease_owner,anonymous ,forward"
            ),
            all
        );
        let forward_only = Features {
            forward: true,
            ..Features::default()
        };
        assert_eq!(of("forward"), forward_only, "an earlier version");
        assert_eq!(of("forwarded,anonymously"), Features::default());
        assert_eq!(of(""), Features::default());
        assert_eq!(Features::of(None), Features::default());
    }

    #[test]
    fn peer_bodies_roundtrip_as_readable_json() {
        use crate::paxos::Envelope;
        let envs = sample_envelopes();
        let bytes = encode(&envs).expect("encodes");
        assert_eq!(decode::<Vec<Envelope>>(&bytes), Ok(envs.clone()));
        // Readable, byte strings as base64, snake_case names, ids exact.
        let json = String::from_utf8(bytes).expect("utf8");
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
        assert!(decode::<Vec<Envelope>>(b"[{").is_err());
        assert!(decode::<crate::paxos::Command>(&[]).is_err());
    }

    #[test]
    fn content_types_are_read() {
        let ct = |s: &'static str| HeaderValue::from_static(s);
        assert!(is_json(None));
        assert!(is_json(Some(&ct("application/json; charset=utf-8"))));
        assert!(is_json(Some(&ct("Application/JSON"))));
        assert!(!is_json(Some(&ct("application/x-phxkv-postcard"))));
        assert!(!is_json(Some(&ct("text/plain"))));
    }
}
