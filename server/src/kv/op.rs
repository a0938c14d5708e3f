//! The commands a client can ask the replicated state machine to perform.
//!
//! An [`Op`] travels through the Paxos log unchanged: the engine never looks
//! inside it, it only needs its encoded size to bound batches. Everything an op
//! needs to be applied deterministically on every replica is in the op itself.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

// Byte strings go through `crate::kv::bytes`: raw bytes in postcard (the
// log, snapshots), base64 strings in JSON (the peer protocol). Enum variants
// are snake_case in JSON; postcard writes variant indexes, not names, so
// renaming them changes nothing on disk.

/// A condition on the current state of a key, used by compare-and-swap puts and
/// deletes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Expect {
    /// The key's version must equal this; `0` means the key must not exist.
    Version(u64),
    /// The key's `mod_revision` must equal this; `0` means the key must not exist.
    ModRevision(u64),
}

/// What a transaction compare looks at.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum CompareTarget {
    /// The key's value bytes (a missing key never equals any value).
    #[schema(value_type = String, format = Byte)]
    Value(#[serde(with = "crate::kv::bytes")] Vec<u8>),
    /// The key's version (`0` for a missing key).
    Version(u64),
    /// The key's mod revision (`0` for a missing key).
    ModRevision(u64),
    /// The key's create revision (`0` for a missing key).
    CreateRevision(u64),
}

/// How a compare relates the key's current state to the target.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum CompareOp {
    Equal,
    NotEqual,
    Less,
    Greater,
}

/// One condition of a transaction.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Compare {
    #[serde(with = "crate::kv::bytes")]
    #[schema(value_type = String, format = Byte)]
    pub key: Vec<u8>,
    pub op: CompareOp,
    pub target: CompareTarget,
}

/// One operation inside a transaction branch.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum TxnOp {
    Put {
        #[serde(with = "crate::kv::bytes")]
        #[schema(value_type = String, format = Byte)]
        key: Vec<u8>,
        #[serde(with = "crate::kv::bytes")]
        #[schema(value_type = String, format = Byte)]
        value: Vec<u8>,
    },
    Delete {
        #[serde(with = "crate::kv::bytes")]
        #[schema(value_type = String, format = Byte)]
        key: Vec<u8>,
    },
    Get {
        #[serde(with = "crate::kv::bytes")]
        #[schema(value_type = String, format = Byte)]
        key: Vec<u8>,
    },
}

/// A multi-key transaction: if every compare holds, run `success`, else `failure`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Txn {
    pub compare: Vec<Compare>,
    pub success: Vec<TxnOp>,
    pub failure: Vec<TxnOp>,
}

/// A mutating command, as it is proposed and chosen.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Op {
    Put {
        #[serde(with = "crate::kv::bytes")]
        #[schema(value_type = String, format = Byte)]
        key: Vec<u8>,
        #[serde(with = "crate::kv::bytes")]
        #[schema(value_type = String, format = Byte)]
        value: Vec<u8>,
        expect: Option<Expect>,
    },
    Delete {
        #[serde(with = "crate::kv::bytes")]
        #[schema(value_type = String, format = Byte)]
        key: Vec<u8>,
        expect: Option<Expect>,
    },
    Txn(Txn),
    /// A change to the auth rules (see [`crate::auth`]). (After the data
    /// ops, so that logs written before it existed decode unchanged.)
    Auth(crate::auth::AuthChange),
    /// `op` on behalf of the API token `token` (its id): applied only if
    /// the token exists and may make it at this point of the log.
    As {
        token: String,
        #[schema(no_recursion)]
        op: Box<Op>,
    },
    /// A change to the leases (see [`crate::kv::lease`]).
    Lease(crate::kv::LeaseOp),
    /// `op`, a put or a transaction, with every key it writes attached to
    /// lease `lease`; refused if the lease does not exist when applied.
    Leased {
        lease: u64,
        #[schema(no_recursion)]
        op: Box<Op>,
    },
    /// `op` from a caller without a credential, taken by a replica on
    /// which auth was off: applied only if auth is still off for the
    /// cluster at this point of the log, so that no anonymous write chosen
    /// after `auth enable` takes effect, whatever the replica that took it
    /// had applied. Proposed only once every member said it decodes it
    /// (the `anonymous` peer feature).
    Anonymous {
        #[schema(no_recursion)]
        op: Box<Op>,
    },
    /// Deletes the first `limit` keys starting with `prefix`, in key
    /// order, all at one revision (the store's own `\0phxkv/` keys are
    /// never among them). Proposed only once every member said it decodes
    /// it (the `delete_prefix` peer feature). (Last, so that logs written
    /// before it existed decode unchanged.)
    DeletePrefix {
        #[serde(with = "crate::kv::bytes")]
        #[schema(value_type = String, format = Byte)]
        prefix: Vec<u8>,
        limit: u32,
    },
    /// `op`, a client's write as a replica sends it to the master, which
    /// it may send again (under the same request id) when that master
    /// fails. Every slot up to `after` was chosen before the replica sent
    /// it anywhere, so every copy of it is chosen above `after`. A copy the
    /// request-id table does not remember is applied only if the table has
    /// forgotten no such write applied above `after`; otherwise it changes
    /// nothing and is answered [`crate::kv::OpResult::Forgotten`] (see
    /// [`crate::kv::dedup`]). Only ever the outermost op. Proposed only
    /// once every member said it decodes it (the `once` peer feature).
    /// (Last, so that logs written before it existed decode unchanged.)
    Once {
        after: u64,
        #[schema(no_recursion)]
        op: Box<Op>,
    },
    /// Gives a store that has no timeline yet its first, `id` (see
    /// [`crate::kv::timeline`]); changes nothing on a store that has one.
    /// Proposed by the cluster itself, only once every member said it
    /// decodes it (the `timeline` peer feature). (Last, so that logs
    /// written before it existed decode unchanged.)
    Timeline {
        id: String,
    },
}

/// The most keys one [`Op::DeletePrefix`] deletes: what one chosen op may
/// cost the state machine stays bounded, and its events (all of one
/// revision) fit well within the live feed a watcher follows (4096 events)
/// and the history it resumes from (10,000 by default), so a round never
/// makes a watcher fall behind on its own. A larger prefix is emptied by
/// repeating the delete.
pub const MAX_DELETE_PREFIX: u32 = 1000;

impl Op {
    /// An estimate of the op's size on the wire and in the log, used to bound
    /// batches. Cheap: it never serializes.
    pub fn size_hint(&self) -> usize {
        const OVERHEAD: usize = 16;
        match self {
            Op::Put { key, value, .. } => OVERHEAD + key.len() + value.len(),
            Op::Delete { key, .. } => OVERHEAD + key.len(),
            Op::DeletePrefix { prefix, .. } => OVERHEAD + 4 + prefix.len(),
            Op::Txn(txn) => {
                let cmp: usize = txn
                    .compare
                    .iter()
                    .map(|c| {
                        OVERHEAD
                            + c.key.len()
                            + match &c.target {
                                CompareTarget::Value(v) => v.len(),
                                _ => 8,
                            }
                    })
                    .sum();
                let ops = |ops: &[TxnOp]| -> usize {
                    ops.iter()
                        .map(|o| match o {
                            TxnOp::Put { key, value } => OVERHEAD + key.len() + value.len(),
                            TxnOp::Delete { key } | TxnOp::Get { key } => OVERHEAD + key.len(),
                        })
                        .sum()
                };
                OVERHEAD + cmp + ops(&txn.success) + ops(&txn.failure)
            }
            Op::Auth(change) => OVERHEAD + serde_json::to_vec(change).map_or(OVERHEAD, |v| v.len()),
            Op::As { token, op } => OVERHEAD + token.len() + op.size_hint(),
            Op::Lease(crate::kv::LeaseOp::GrantOwned { owner, .. }) => OVERHEAD + 16 + owner.len(),
            Op::Lease(_) => OVERHEAD + 16,
            Op::Leased { op, .. } => OVERHEAD + 8 + op.size_hint(),
            Op::Anonymous { op } => OVERHEAD + op.size_hint(),
            Op::Once { op, .. } => 8 + op.size_hint(),
            Op::Timeline { id } => OVERHEAD + id.len(),
        }
    }

    /// The most the op can add to the store's size as the quota counts it
    /// ([`crate::kv::Store::size_bytes`]): what a put writes (key, value
    /// and the per-key overhead, counted whole even when it replaces an
    /// older value), for a transaction the larger of its two branches;
    /// nothing for deletes, leases and auth changes, so that those stay
    /// possible when the store is full. What the store quota is checked
    /// against (see `Node::check_quota`).
    pub fn stored_bytes(&self) -> usize {
        // What it adds with nothing to replace: never negative.
        usize::try_from(self.net_stored_bytes(&|_| 0)).unwrap_or(0)
    }

    /// How much the store may grow by this op, counting what it replaces
    /// or deletes (`held` says what a key holds now): negative when it
    /// shrinks the store. A transaction counts its larger branch.
    pub fn net_stored_bytes(&self, held: &dyn Fn(&[u8]) -> usize) -> i64 {
        let size = |n: usize| i64::try_from(n).unwrap_or(i64::MAX);
        let put = |key: &[u8], value: &[u8]| {
            size(key.len() + value.len() + crate::kv::store::KEY_OVERHEAD_BYTES)
                .saturating_sub(size(held(key)))
        };
        let branch = |ops: &[TxnOp]| -> i64 {
            ops.iter()
                .map(|o| match o {
                    TxnOp::Put { key, value } => put(key, value),
                    TxnOp::Delete { key } => -size(held(key)),
                    TxnOp::Get { .. } => 0,
                })
                .fold(0i64, i64::saturating_add)
        };
        match self {
            Op::Put { key, value, .. } => put(key, value),
            Op::Txn(txn) => branch(&txn.success).max(branch(&txn.failure)),
            Op::As { op, .. }
            | Op::Leased { op, .. }
            | Op::Anonymous { op }
            | Op::Once { op, .. } => op.net_stored_bytes(held),
            Op::Delete { key, .. } => -size(held(key)),
            Op::DeletePrefix { .. } | Op::Auth(_) | Op::Lease(_) | Op::Timeline { .. } => 0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The shape `Op::Put` had before its byte strings were marked
    /// `crate::kv::bytes`.
    #[derive(Serialize, Deserialize, Debug, PartialEq)]
    enum PlainOp {
        Put {
            key: Vec<u8>,
            value: Vec<u8>,
            expect: Option<Expect>,
        },
    }

    #[test]
    fn byte_strings_encode_as_before_so_old_logs_and_snapshots_still_read() {
        let op = Op::Put {
            key: b"key".to_vec(),
            value: vec![0, 1, 2, 255],
            expect: Some(Expect::Version(3)),
        };
        let plain = PlainOp::Put {
            key: b"key".to_vec(),
            value: vec![0, 1, 2, 255],
            expect: Some(Expect::Version(3)),
        };
        let new = postcard::to_stdvec(&op).expect("encodes");
        let old = postcard::to_stdvec(&plain).expect("encodes");
        assert_eq!(new, old);
        assert_eq!(postcard::from_bytes::<Op>(&old).expect("decodes"), op);
        // JSON is the peer protocol's documented shape: snake_case variant
        // names, byte strings as base64.
        let json = serde_json::to_string(&op).expect("json");
        assert_eq!(
            json,
            r#"{"put":{"key":"a2V5","value":"AAEC/w==","expect":{"version":3}}}"#
        );
        assert_eq!(serde_json::from_str::<Op>(&json).expect("decodes"), op);
    }

    #[test]
    fn net_stored_bytes_counts_what_a_write_replaces_or_deletes() {
        const KEY: i64 = crate::kv::store::KEY_OVERHEAD_BYTES as i64;
        let held = |k: &[u8]| {
            if k == b"big" {
                3 + 100 + KEY as usize
            } else {
                0
            }
        };
        let put = |k: &[u8], v: &[u8]| Op::Put {
            key: k.to_vec(),
            value: v.to_vec(),
            expect: None,
        };
        assert_eq!(put(b"big", b"small").net_stored_bytes(&held), 5 - 100);
        assert_eq!(put(b"new", b"v").net_stored_bytes(&held), 4 + KEY);
        let swap = Op::Txn(Txn {
            compare: vec![],
            success: vec![
                TxnOp::Delete {
                    key: b"big".to_vec(),
                },
                TxnOp::Put {
                    key: b"b".to_vec(),
                    value: b"v".to_vec(),
                },
            ],
            failure: vec![],
        });
        // Which branch runs is not known yet: the larger, here the empty one.
        assert_eq!(swap.net_stored_bytes(&held), 0);
        let Op::Txn(txn) = &swap else { unreachable!() };
        let flipped = Op::Txn(Txn {
            failure: vec![TxnOp::Put {
                key: b"x".to_vec(),
                value: vec![],
            }],
            ..txn.clone()
        });
        assert_eq!(flipped.net_stored_bytes(&held), 1 + KEY);
        let wrapped = Op::Once {
            after: 0,
            op: Box::new(put(b"big", b"")),
        };
        assert!(wrapped.net_stored_bytes(&held) < 0);
    }

    #[test]
    fn stored_bytes_counts_what_a_write_may_add_and_nothing_for_deletes() {
        let put = |k: &[u8], v: &[u8]| Op::Put {
            key: k.to_vec(),
            value: v.to_vec(),
            expect: None,
        };
        const KEY: usize = crate::kv::store::KEY_OVERHEAD_BYTES;
        assert_eq!(put(b"key", b"value").stored_bytes(), 8 + KEY);
        let del = Op::Delete {
            key: b"key".to_vec(),
            expect: None,
        };
        assert_eq!(del.stored_bytes(), 0);
        assert_eq!(
            Op::Lease(crate::kv::LeaseOp::Revoke { id: 7 }).stored_bytes(),
            0
        );
        let txn = Op::Txn(Txn {
            compare: vec![],
            success: vec![
                TxnOp::Put {
                    key: b"a".to_vec(),
                    value: b"12".to_vec(),
                },
                TxnOp::Put {
                    key: b"b".to_vec(),
                    value: b"3".to_vec(),
                },
                TxnOp::Delete { key: b"c".to_vec() },
            ],
            failure: vec![TxnOp::Put {
                key: b"d".to_vec(),
                value: b"45678".to_vec(),
            }],
        });
        // The larger branch: two keys on success (3 + 2 bytes) against one
        // on failure (6 bytes): each key costs its overhead too.
        assert_eq!(txn.stored_bytes(), 5 + 2 * KEY);
        let wrapped = Op::As {
            token: "t".into(),
            op: Box::new(Op::Leased {
                lease: 1,
                op: Box::new(Op::Anonymous {
                    op: Box::new(put(b"k", b"vv")),
                }),
            }),
        };
        assert_eq!(wrapped.stored_bytes(), 3 + KEY);
    }
}
