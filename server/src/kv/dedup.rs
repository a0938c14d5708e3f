//! The table of recently applied request ids and their results.
//!
//! A client that times out retries, and a node that loses its master lease
//! may forward a command that was already chosen, so the same request can
//! reach the log twice. Remembering recent results lets the second copy
//! answer like the first without applying again. The table is part of the
//! replicated state: every replica must evict the same ids at the same time,
//! so eviction follows apply order and its capacity must be equal everywhere.
//!
//! # What bounds the guarantee, and how a copy past it is told apart
//!
//! The table remembers the last [`DEFAULT_DEDUP_CAPACITY`] ids applied. A
//! second copy of a write arriving after its first was forgotten would be
//! applied again, so a replica marks each client write it sends to a
//! master ([`Op::Once`], proposed once every member decodes it) with
//! `after`: the highest index it knows every slot up to is chosen, read
//! when the write reaches it and again until a master takes it. The table
//! keeps, for each such write it remembers, the index it was applied at,
//! and the highest such index among the ones it has forgotten
//! (`forgotten`). A copy it does not remember is applied only if
//! `forgotten <= after`; otherwise it changes nothing and is answered
//! [`OpResult::Forgotten`], which the replica that sent it reports as a
//! write that may have committed.
//!
//! Why no write is applied twice: every slot at or below `after` was chosen
//! before the replica sent the write anywhere, so none of the copies it
//! sends is in one of them, and each is chosen in a slot above `after`. Say
//! a first copy was applied at index `i > after`, was remembered with mark
//! `i`, and a later copy at `j > i` is not found. Then the first was
//! forgotten between `i` and `j`, which set `forgotten >= i > after`, and
//! the later copy is refused. Every replica applies the same log in the
//! same order with the same capacity, so every one remembers, forgets and
//! refuses alike; the marks and `forgotten` travel in snapshots
//! ([`DedupMarks`]), so a replica restored from one decides as the others
//! do.
//!
//! What it costs: a write is refused this way only when more than the
//! capacity of ids were applied between the moment its replica first sent
//! it to a master (`after` is read again until then) and the moment a copy
//! of it is chosen. A replica sends a write again for at most 5 s
//! (`MAX_RESEND_WINDOW` in `crate::node`), so that takes more than 20,000
//! writes a second during a failover (or a master whose queue and pipeline,
//! up to about 82,000 commands, are full when the write joins them), and
//! even then it is a 504, never a second apply.
//!
//! A client's retry under the same `Idempotency-Key` is not a copy in this
//! sense: it reaches a replica as a new write, perhaps long after, and is
//! marked from where that replica stands then. So it is recognised while
//! the first attempt is among the ids the table remembers, as the API
//! documents, and may be applied again past that (the copies each replica
//! sends of it are still told apart).

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap, VecDeque};

use serde::{Deserialize, Serialize};

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
    /// The index each remembered [`Op::Once`] write was applied at.
    marks: HashMap<RequestId, u64>,
    /// The highest mark of a forgotten write; 0 while none was forgotten.
    forgotten: u64,
    /// The sum (mod 2^128) of [`entry_digest`] over the remembered ids, kept
    /// up to date by every insert and eviction (see [`DedupTable::digest`]).
    sum: u128,
}

/// One remembered id's share of [`DedupTable::digest`]: XXH3-128 (a fixed
/// algorithm, so replicas built apart agree) of its id and mark.
fn entry_digest(id: &RequestId, mark: Option<u64>) -> u128 {
    let mut bytes = [0u8; 25];
    bytes[..8].copy_from_slice(&id.client.to_le_bytes());
    bytes[8..16].copy_from_slice(&id.seq.to_le_bytes());
    if let Some(mark) = mark {
        bytes[16] = 1;
        bytes[17..].copy_from_slice(&mark.to_le_bytes());
    }
    xxhash_rust::xxh3::xxh3_128(&bytes)
}

/// What a snapshot adds to the request table for [`Op::Once`] writes: the
/// mark of each remembered request (in the table's order, `None` for one
/// that is not such a write) and the highest mark forgotten. Encoded after
/// the table only when there is something in it, so that a snapshot of a
/// cluster that never proposed such a write is byte for byte what an
/// earlier version wrote and reads.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DedupMarks {
    pub forgotten: u64,
    pub marks: Vec<Option<u64>>,
}

impl DedupMarks {
    /// Whether a snapshot needs to carry these at all.
    pub fn is_empty(&self) -> bool {
        self.forgotten == 0 && self.marks.iter().all(Option::is_none)
    }
}

impl DedupTable {
    pub(crate) fn new(capacity: usize) -> Self {
        DedupTable {
            capacity,
            order: VecDeque::new(),
            results: BTreeMap::new(),
            marks: HashMap::new(),
            forgotten: 0,
            sum: 0,
        }
    }

    /// The table a snapshot at `applied_index` holds: `requests` oldest
    /// first, with `marks` (in the same order) if the snapshot has them.
    /// Beyond `capacity` the oldest are forgotten, as they would have been
    /// when applied.
    ///
    /// Marks that do not name every request (which a decoded snapshot never
    /// has: decoding checks) are dropped, and everything applied up to the
    /// snapshot is taken as possibly forgotten: the safe side.
    pub(crate) fn restore(
        capacity: usize,
        requests: Vec<(RequestId, OpResult)>,
        marks: Option<DedupMarks>,
        applied_index: u64,
    ) -> Self {
        let mut table = DedupTable::new(capacity);
        let mut marks = marks.unwrap_or_default();
        if !marks.marks.is_empty() && marks.marks.len() != requests.len() {
            marks.marks.clear();
            marks.forgotten = marks.forgotten.max(applied_index);
        }
        table.forgotten = marks.forgotten;
        let mut marked = marks.marks.into_iter();
        for (id, result) in requests {
            table.insert_marked(id, result, marked.next().flatten());
        }
        table
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

    /// Whether an [`Op::Once`] write applied above `after` may have been
    /// forgotten, so that a copy of it not found here may not be applied.
    pub(crate) fn may_have_forgotten(&self, after: u64) -> bool {
        self.forgotten > after
    }

    /// Remembers `result` for `id`, forgetting the oldest ids beyond capacity.
    #[cfg(test)]
    pub(crate) fn insert(&mut self, id: RequestId, result: OpResult) {
        self.insert_marked(id, result, None);
    }

    /// Remembers `result` for `id`, forgetting the oldest ids beyond
    /// capacity; `mark` is the index an [`Op::Once`] write was applied at.
    pub(crate) fn insert_marked(&mut self, id: RequestId, result: OpResult, mark: Option<u64>) {
        if self.results.insert(id, result).is_none() {
            self.order.push_back(id);
        } else {
            self.sum = self
                .sum
                .wrapping_sub(entry_digest(&id, self.marks.get(&id).copied()));
        }
        if let Some(mark) = mark {
            self.marks.insert(id, mark);
        }
        self.sum = self
            .sum
            .wrapping_add(entry_digest(&id, self.marks.get(&id).copied()));
        while self.order.len() > self.capacity {
            if let Some(old) = self.order.pop_front() {
                self.results.remove(&old);
                let mark = self.marks.remove(&old);
                self.sum = self.sum.wrapping_sub(entry_digest(&old, mark));
                if let Some(mark) = mark {
                    self.forgotten = self.forgotten.max(mark);
                }
            }
        }
    }

    /// A digest of what decides how a copy of a write is treated: the ids
    /// remembered, with the marks of [`Op::Once`] writes, and the highest
    /// mark forgotten. Replicas that applied the same log agree on it (the
    /// simulator checks this at every index), and compare it as they
    /// compare the keys' digest (`crate::node::digest`), so a replica whose
    /// table went wrong is caught before a copy it would treat differently
    /// from the others comes along.
    ///
    /// The results are left out: each is what applying the op to the keys
    /// gave, and the keys have their own digest. So is the order of the
    /// ids: it decides only which id is forgotten next, and an order gone
    /// wrong shows, once it matters, as a different id forgotten, so as
    /// different ids remembered.
    ///
    /// Replicas of different versions compare it, so the formula is part
    /// of the peer protocol: a version that changes it (or what the table
    /// holds) must send the new one under a new checkpoint field, or the
    /// upgraded replicas of a rolling upgrade would be found diverged.
    pub(crate) fn digest(&self) -> u128 {
        let mut h = xxhash_rust::xxh3::Xxh3::new();
        h.update(&self.sum.to_le_bytes());
        h.update(&self.forgotten.to_le_bytes());
        h.update(&(self.results.len() as u64).to_le_bytes());
        h.digest128()
    }

    /// Number of remembered requests.
    pub(crate) fn len(&self) -> usize {
        self.results.len()
    }

    /// Entries oldest first, the order in which they will be evicted.
    pub(crate) fn entries(&self) -> impl Iterator<Item = (RequestId, &OpResult)> {
        self.order
            .iter()
            .filter_map(|id| self.results.get(id).map(|r| (*id, r)))
    }

    /// What a snapshot must carry besides [`DedupTable::entries`], in the
    /// same order; `None` when there is nothing to carry.
    pub(crate) fn marks(&self) -> Option<DedupMarks> {
        if self.forgotten == 0 && self.marks.is_empty() {
            return None;
        }
        Some(DedupMarks {
            forgotten: self.forgotten,
            marks: self
                .order
                .iter()
                .filter(|id| self.results.contains_key(id))
                .map(|id| self.marks.get(id).copied())
                .collect(),
        })
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
    fn forgetting_a_marked_write_raises_what_may_have_been_forgotten() {
        let mut t = DedupTable::new(2);
        t.insert_marked(id(1), result(1), Some(10));
        t.insert(id(2), result(2));
        assert!(!t.may_have_forgotten(9), "nothing forgotten yet");
        // Forgetting a write that was not marked says nothing of marked ones.
        t.insert_marked(id(3), result(3), Some(12));
        assert_eq!(t.get(&id(1)), None);
        assert!(t.may_have_forgotten(9), "the write at 10 is forgotten");
        assert!(!t.may_have_forgotten(10), "nothing above 10 is");
        t.insert(id(4), result(4));
        assert!(!t.may_have_forgotten(10), "id 2 was not marked");
        t.insert(id(5), result(5));
        assert!(t.may_have_forgotten(11), "the write at 12 is forgotten");
        assert!(!t.may_have_forgotten(12));
    }

    #[test]
    fn marks_survive_a_restore_and_a_smaller_capacity_forgets_as_applying_would() {
        let mut t = DedupTable::new(4);
        for seq in 1..=4 {
            t.insert_marked(id(seq), result(seq), (seq % 2 == 0).then_some(seq * 10));
        }
        let requests: Vec<_> = t.entries().map(|(id, r)| (id, r.clone())).collect();
        let marks = t.marks().expect("two writes are marked");
        assert_eq!(marks.marks, vec![None, Some(20), None, Some(40)]);
        assert_eq!(
            DedupTable::restore(4, requests.clone(), Some(marks.clone()), 99),
            t
        );
        // With room for one, ids 1 to 3 go as they came: 20 is forgotten.
        let smaller = DedupTable::restore(1, requests.clone(), Some(marks), 99);
        assert!(smaller.may_have_forgotten(19));
        assert!(!smaller.may_have_forgotten(20));
        // Marks that do not fit the table: everything up to the snapshot may
        // have been forgotten.
        let odd = DedupMarks {
            forgotten: 5,
            marks: vec![Some(1)],
        };
        let t = DedupTable::restore(4, requests, Some(odd), 99);
        assert!(t.may_have_forgotten(98));
        assert!(!t.may_have_forgotten(99));
    }

    #[test]
    fn a_table_without_marked_writes_has_nothing_for_a_snapshot() {
        let mut t = DedupTable::new(1);
        t.insert(id(1), result(1));
        t.insert(id(2), result(2));
        assert_eq!(t.marks(), None);
        t.insert_marked(id(3), result(3), Some(7));
        t.insert(id(4), result(4));
        assert_eq!(
            t.marks(),
            Some(DedupMarks {
                forgotten: 7,
                marks: vec![None],
            }),
            "what was forgotten still counts"
        );
    }

    #[test]
    fn the_digest_follows_ids_marks_and_what_was_forgotten() {
        let build = |marks: &[Option<u64>]| {
            let mut t = DedupTable::new(3);
            for (seq, mark) in (1..).zip(marks) {
                t.insert_marked(id(seq), result(seq), *mark);
            }
            t
        };
        let a = build(&[None, Some(20), None]);
        assert_eq!(a.digest(), build(&[None, Some(20), None]).digest());
        assert_ne!(a.digest(), build(&[None, Some(21), None]).digest());
        assert_ne!(a.digest(), build(&[None, None, None]).digest());
        assert_ne!(a.digest(), build(&[None, Some(20)]).digest());
        // Results are the keys' business: another result, the same digest.
        let mut other = DedupTable::new(3);
        for (seq, mark) in [(1, None), (2, Some(20)), (3, None)] {
            other.insert_marked(id(seq), result(seq + 100), mark);
        }
        assert_eq!(a.digest(), other.digest());

        // Evictions take their share out: the table that forgot ids 1 and 2
        // equals one restored from what it remembers, and differs from one
        // that holds the same ids but never forgot the mark at 20.
        let mut evicted = build(&[None, Some(20), None]);
        evicted.insert(id(4), result(4));
        evicted.insert(id(5), result(5));
        let kept: Vec<_> = evicted.entries().map(|(id, r)| (id, r.clone())).collect();
        assert_eq!(kept.len(), 3);
        let restored = DedupTable::restore(3, kept.clone(), evicted.marks(), 99);
        assert_eq!(restored.digest(), evicted.digest());
        let unforgetting = DedupTable::restore(3, kept, None, 99);
        assert_ne!(unforgetting.digest(), evicted.digest());

        // An id remembered again counts once, with its latest mark.
        let mut again = build(&[None, None, None]);
        again.insert_marked(id(2), result(2), Some(20));
        assert_eq!(again.digest(), a.digest());
    }

    #[test]
    fn zero_capacity_remembers_nothing() {
        let mut t = DedupTable::new(0);
        t.insert(id(1), result(1));
        assert_eq!(t.entries().count(), 0);
        assert_eq!(t.get(&id(1)), None);
    }
}
