//! The table of recently applied request ids and their results.
//!
//! A client that times out retries, and a node that loses its master lease
//! may forward a command that was already chosen, so the same request can
//! reach the log twice. Remembering recent results lets the second copy
//! answer like the first without applying again. The table is part of the
//! replicated state: every replica must evict the same ids at the same time,
//! so eviction follows apply order and its capacity must be equal everywhere.

use std::collections::{BTreeMap, VecDeque};

use crate::kv::OpResult;
use crate::paxos::types::RequestId;

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
