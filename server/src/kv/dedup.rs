//! The table of recently applied request ids and their results.
//!
//! A client that times out retries, and a node that loses its master lease
//! may forward a command that was already chosen, so the same request can
//! reach the log twice. Remembering recent results lets the second copy
//! answer like the first without applying again. The table is part of the
//! replicated state: every replica must evict the same ids at the same time,
//! so eviction follows apply order and its capacity must be equal everywhere.

use std::collections::{BTreeMap, VecDeque};

use crate::kv::{Op, OpResult};
use crate::paxos::types::RequestId;

/// The bit that marks a request id derived from a client's
/// `Idempotency-Key`; ids a node makes up for a request never have it.
pub const IDEMPOTENT_BIT: u64 = 1 << 63;

/// Longest `Idempotency-Key` accepted, in bytes.
pub const MAX_IDEMPOTENCY_KEY: usize = 128;

/// 64-bit FNV-1a: fixed, so every replica and every version derives the
/// same ids from the same bytes.
pub fn fnv1a64(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// The request id of a write sent with `Idempotency-Key: key`: the key names
/// the client, a fingerprint of the operation the sequence. A retry of the
/// same write (at any node) gets the same id, so it is applied at most once;
/// the same key with another write is recognised as a mistake.
pub fn idempotent_id(key: &str, op: &Op) -> RequestId {
    let mut named = b"phxkv idempotency key\0".to_vec();
    named.extend_from_slice(key.as_bytes());
    let encoded = postcard::to_stdvec(op).unwrap_or_default();
    RequestId {
        client: fnv1a64(&named) | IDEMPOTENT_BIT,
        seq: fnv1a64(&encoded),
    }
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
    fn zero_capacity_remembers_nothing() {
        let mut t = DedupTable::new(0);
        t.insert(id(1), result(1));
        assert_eq!(t.entries().count(), 0);
        assert_eq!(t.get(&id(1)), None);
    }
}
