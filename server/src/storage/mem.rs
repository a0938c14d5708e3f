//! A [`LogStore`] held in memory, for the deterministic simulator.
//!
//! The simulator needs to decide exactly what a crash keeps. Since every call
//! here is "durable" the moment it returns, a `MemStore` *is* the disk: clone
//! it to take the image a crash would leave, hand the clone to the restarted
//! node. It never fails, which keeps simulated runs free of I/O noise.

use super::{LogStore, StorageError};
use crate::paxos::{Persist, Recovered, SnapshotMeta};

/// An in-memory [`LogStore`]; `Clone` it to capture what survives a crash.
#[derive(Clone, Debug, Default)]
pub struct MemStore {
    state: Recovered,
    snapshot_data: Option<Vec<u8>>,
}

impl MemStore {
    /// An empty store, as a node's disk is before its first start.
    pub fn new() -> Self {
        Self::default()
    }

    fn snapshot_index(&self) -> u64 {
        self.state.snapshot.as_ref().map_or(0, |s| s.index)
    }
}

impl LogStore for MemStore {
    fn append(&mut self, records: &[Persist]) -> Result<(), StorageError> {
        for record in records {
            match record {
                Persist::Promise(b) => self.state.promised = self.state.promised.max(*b),
                Persist::Entry(i, _) if *i <= self.snapshot_index() => {}
                Persist::Entry(i, e) => {
                    self.state.entries.insert(*i, e.clone());
                }
                Persist::Commit(c) => self.state.commit = self.state.commit.max(*c),
            }
        }
        Ok(())
    }

    fn recover(&self) -> Result<(Recovered, Option<Vec<u8>>), StorageError> {
        Ok((self.state.clone(), self.snapshot_data.clone()))
    }

    fn install_snapshot(&mut self, meta: &SnapshotMeta, data: &[u8]) -> Result<(), StorageError> {
        if meta.index < self.snapshot_index() {
            return Ok(());
        }
        self.state.entries.retain(|i, _| *i > meta.index);
        self.state.commit = self.state.commit.max(meta.index);
        self.state.snapshot = Some(meta.clone());
        self.snapshot_data = Some(data.to_vec());
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::conformance::{Harness, conformance_tests};

    /// A restart keeps the store as is: in memory, everything appended is durable.
    impl Harness for MemStore {
        fn store(&mut self) -> &mut dyn LogStore {
            self
        }

        fn restart(&mut self) {
            *self = self.clone();
        }
    }

    conformance_tests!(MemStore::new());
}
