//! The table of recently applied request ids and their results.
//!
//! A client that times out retries, and a node that loses its master lease
//! may forward a command that was already chosen, so the same request can
//! reach the log twice. Remembering recent results lets the second copy
//! answer like the first without applying again. The table is part of the
//! replicated state: every replica must evict the same ids at the same time,
//! so eviction follows apply order and its capacity must be equal everywhere.
//!
//! What bounds the guarantee: a second copy is recognised only while the
//! first is among the last [`DEFAULT_DEDUP_CAPACITY`] ids applied. The
//! engine's own resends keep to that (see `Replica::resend_forwards`), and
//! a replica sends a write again to a new master only within 5 s of first
//! sending it (`MAX_RESEND_WINDOW` in `crate::node`, or the write timeout
//! if shorter). So a write forwarded to a master that then fails, from a
//! replica cut off until shortly before those 5 s are over, is applied once
//! only if fewer than the capacity were applied in between: below 20,000
//! writes a second. Nothing checks this at apply time; doing so needs each
//! copy to carry the log position it was first sent at and the table to
//! keep the position of what it forgot (a change to the log and snapshot
//! formats).

use std::borrow::Cow;
use std::collections::{BTreeMap, VecDeque};

use crate::kv::{LeaseOp, Op, OpResult};
use crate::paxos::types::RequestId;

/// The bit that marks a request id derived from a client's
/// `Idempotency-Key`; ids a node makes up for a request never have it.
pub const IDEMPOTENT_BIT: u64 = 1 << 63;

/// Longest `Idempotency-Key` accepted, in bytes.
pub const MAX_IDEMPOTENCY_KEY: usize = 128;

/// The request id of a write sent with `Idempotency-Key: key`: the key names
/// the client, a fingerprint of the operation the sequence. A retry of the
/// same write (at any node) gets the same id, so it is applied at most once;
/// the same key with another write is recognised as a mistake.
///
/// Both halves are SHA-256, cut to 64 bits, so that no caller can craft a
/// write whose id equals another's (and be answered with its result), and
/// a token's writes (`Op::As`) name the token in the client half: one
/// caller's key is never another's. An anonymous write has the id of the
/// op it wraps, so a retry is the same write whether or not the replica it
/// reaches wraps it (see [`Op::Anonymous`]). A token's grant has the id of
/// a grant without a holder, for the same reason: whether the replica
/// proposes it with one depends on what it has heard from its peers (see
/// [`LeaseOp::GrantOwned`]), and the holder is the token, already named.
pub fn idempotent_id(key: &str, op: &Op) -> RequestId {
    let mut named = b"phxkv idempotency key\0".to_vec();
    named.extend_from_slice(key.as_bytes());
    if let Op::As { token, .. } = op {
        named.push(0);
        named.extend_from_slice(token.as_bytes());
    }
    let plain = |op: &Op| match op {
        Op::Lease(LeaseOp::GrantOwned { id, ttl_secs, .. }) => Some(Op::Lease(LeaseOp::Grant {
            id: *id,
            ttl_secs: *ttl_secs,
        })),
        _ => None,
    };
    let op = match op {
        Op::Anonymous { op } => Cow::Borrowed(&**op),
        Op::As { token, op: inner } => match plain(inner) {
            Some(grant) => Cow::Owned(Op::As {
                token: token.clone(),
                op: Box::new(grant),
            }),
            None => Cow::Borrowed(op),
        },
        op => plain(op).map_or(Cow::Borrowed(op), Cow::Owned),
    };
    let encoded = postcard::to_stdvec(&*op).unwrap_or_default();
    RequestId {
        client: sha256_u64(&named) | IDEMPOTENT_BIT,
        seq: sha256_u64(&encoded),
    }
}

fn sha256_u64(bytes: &[u8]) -> u64 {
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, bytes);
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest.as_ref()[..8]);
    u64::from_le_bytes(first)
}

/// How many request ids a store remembers unless configured otherwise.
pub const DEFAULT_DEDUP_CAPACITY: usize = 100_000;

/// Recently applied request ids, oldest first, with their results.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct DedupTable {
    capacity: usize,
    order: VecDeque<RequestId>,
    results: BTreeMap<RequestId, OpResult>,
}

impl DedupTable {
    pub(crate) fn new(capacity: usize) -> Self {
        DedupTable {
            capacity,
            order: VecDeque::new(),
            results: BTreeMap::new(),
        }
    }

    pub(crate) fn get(&self, id: &RequestId) -> Option<&OpResult> {
        self.results.get(id)
    }

    /// Any remembered request of `client`, with its sequence number.
    pub(crate) fn of_client(&self, client: u64) -> Option<(u64, &OpResult)> {
        let from = RequestId { client, seq: 0 };
        let to = RequestId {
            client,
            seq: u64::MAX,
        };
        self.results
            .range(from..=to)
            .next()
            .map(|(id, r)| (id.seq, r))
    }

    /// Remembers `result` for `id`, forgetting the oldest ids beyond capacity.
    pub(crate) fn insert(&mut self, id: RequestId, result: OpResult) {
        if self.results.insert(id, result).is_none() {
            self.order.push_back(id);
        }
        while self.order.len() > self.capacity {
            if let Some(old) = self.order.pop_front() {
                self.results.remove(&old);
            }
        }
    }

    /// Entries oldest first, the order in which they will be evicted.
    /// Number of remembered requests.
    pub(crate) fn len(&self) -> usize {
        self.results.len()
    }

    pub(crate) fn entries(&self) -> impl Iterator<Item = (RequestId, &OpResult)> {
        self.order
            .iter()
            .filter_map(|id| self.results.get(id).map(|r| (*id, r)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(seq: u64) -> RequestId {
        RequestId { client: 7, seq }
    }

    fn result(revision: u64) -> OpResult {
        OpResult::Delete {
            revision,
            deleted: false,
        }
    }

    #[test]
    fn evicts_oldest_first_beyond_capacity() {
        let mut t = DedupTable::new(2);
        for seq in 1..=3 {
            t.insert(id(seq), result(seq));
        }
        assert_eq!(t.entries().count(), 2);
        assert_eq!(t.get(&id(1)), None);
        assert_eq!(t.get(&id(2)), Some(&result(2)));
        let order: Vec<_> = t.entries().map(|(id, _)| id.seq).collect();
        assert_eq!(order, vec![2, 3]);
    }

    #[test]
    fn a_tokens_grant_has_one_id_with_or_without_its_holder() {
        let grant = |owned: bool, ttl_secs: u64| {
            let op = if owned {
                LeaseOp::GrantOwned {
                    id: 5,
                    ttl_secs,
                    owner: "0123456789abcdef".into(),
                }
            } else {
                LeaseOp::Grant { id: 5, ttl_secs }
            };
            Op::As {
                token: "0123456789abcdef".into(),
                op: Box::new(Op::Lease(op)),
            }
        };
        let key = "grant-1";
        assert_eq!(
            idempotent_id(key, &grant(true, 10)),
            idempotent_id(key, &grant(false, 10))
        );
        assert_ne!(
            idempotent_id(key, &grant(true, 10)),
            idempotent_id(key, &grant(true, 20)),
            "another TTL is another grant"
        );
        let another_token = Op::As {
            token: "fedcba9876543210".into(),
            op: Box::new(Op::Lease(LeaseOp::Grant {
                id: 5,
                ttl_secs: 10,
            })),
        };
        assert_ne!(
            idempotent_id(key, &grant(true, 10)),
            idempotent_id(key, &another_token)
        );
    }

    #[test]
    fn zero_capacity_remembers_nothing() {
        let mut t = DedupTable::new(0);
        t.insert(id(1), result(1));
        assert_eq!(t.entries().count(), 0);
        assert_eq!(t.get(&id(1)), None);
    }
}
