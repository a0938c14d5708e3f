//! A self-contained copy of the replicated state, for catching up lagging
//! replicas and for truncating the log.
//!
//! Everything that influences the result of a future apply is included (the
//! data, the revision and the request-id table), so a restored store
//! continues exactly like the original. The watch history is deliberately
//! left out: it is a local convenience, not replicated state.

use serde::{Deserialize, Serialize};

use crate::kv::dedup::DedupTable;
use crate::kv::watch::History;
use crate::kv::{KeyValue, KvError, OpResult, Store, StoreConfig};
use crate::paxos::types::RequestId;

/// The replicated state of a [`Store`] at one log instance.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoreSnapshot {
    /// The log instance the state reflects.
    pub applied_index: u64,
    pub revision: u64,
    /// All keys, in key order.
    pub kvs: Vec<KeyValue>,
    /// Remembered request ids, oldest first.
    pub requests: Vec<(RequestId, OpResult)>,
}

impl StoreSnapshot {
    /// The snapshot in postcard encoding.
    pub fn encode(&self) -> Vec<u8> {
        // Postcard only fails on sequences of unknown length or on custom
        // serializer errors; the derived impls here produce neither.
        postcard::to_stdvec(self).expect("a store snapshot always serializes")
    }

    /// Parses a snapshot produced by [`StoreSnapshot::encode`].
    pub fn decode(bytes: &[u8]) -> Result<StoreSnapshot, KvError> {
        postcard::from_bytes(bytes).map_err(KvError::SnapshotDecode)
    }
}

impl Store {
    /// Copies the replicated state.
    pub fn snapshot(&self) -> StoreSnapshot {
        StoreSnapshot {
            applied_index: self.applied_index,
            revision: self.revision,
            kvs: self.kvs.values().cloned().collect(),
            requests: self
                .dedup
                .entries()
                .map(|(id, result)| (id, result.clone()))
                .collect(),
        }
    }

    /// Rebuilds a store from a snapshot with the default capacities.
    pub fn restore(snap: StoreSnapshot) -> Store {
        Store::restore_with(snap, StoreConfig::default())
    }

    /// Rebuilds a store from a snapshot. Its watch history starts empty, so
    /// revisions up to the snapshot's are reported as compacted.
    pub fn restore_with(snap: StoreSnapshot, config: StoreConfig) -> Store {
        let mut dedup = DedupTable::new(config.dedup_capacity);
        for (id, result) in snap.requests {
            dedup.insert(id, result);
        }
        let data_bytes = snap
            .kvs
            .iter()
            .map(|kv| kv.key.len() + kv.value.len())
            .sum();
        Store {
            kvs: snap
                .kvs
                .into_iter()
                .map(|kv| (kv.key.clone(), kv))
                .collect(),
            revision: snap.revision,
            applied_index: snap.applied_index,
            data_bytes,
            dedup,
            history: History::new(&config, snap.revision + 1),
        }
    }
}
