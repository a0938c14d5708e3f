//! The on-disk [`LogStore`] a real node runs on, built on redb.
//!
//! redb gives us atomic, crash-safe transactions with an explicit fsync on
//! commit, which is exactly the engine's contract: a batch of records is
//! durable, all or nothing, before the messages that depend on it leave.
//!
//! One database file holds three tables:
//! - `meta`: the directory's owner (node and cluster), promised ballot, commit
//!   index and snapshot meta, each postcard-encoded under a fixed key;
//! - `log`: log slots above the snapshot, by index, postcard-encoded;
//! - `snapshot`: the opaque state-machine bytes of the latest snapshot.
//!
//! The owner is recorded on first open and checked on every later one, so a
//! volume mounted on the wrong pod, or reused across clusters, is refused
//! instead of silently voting with someone else's promises.
//!
//! A directory also gets an *incarnation* when it is created: a random
//! 64-bit id that is this node's id in the cluster for as long as the
//! directory lives. A node whose volume is lost comes back under the same
//! name with a new incarnation, which no configuration counts, so it cannot
//! vote with the promises it forgot (see `crate::cluster::bootstrap`).
//! Directories written before incarnations existed keep the id they always
//! used, derived from the node's name. The configuration a cluster was
//! bootstrapped with is recorded once, with the node's first durable state.

use std::collections::BTreeMap;
use std::fmt::Display;
use std::ops::Bound;
use std::path::{Path, PathBuf};

use redb::{
    Database, Durability, ReadableDatabase, ReadableTable, TableDefinition, WriteTransaction,
};
use serde::{Deserialize, Serialize, de::DeserializeOwned};

use super::{LogStore, StorageError};
use crate::paxos::{
    Ballot, Index, Membership, NodeId, Persist, Recovered, SnapshotMeta, node_id_from_name,
};

const FILE_NAME: &str = "phxkv.redb";

/// redb's page cache. Its default (1 GiB) held on to every page written,
/// snapshots included, so a replica's memory grew with the data a second
/// time over; the log is read back only on recovery, and the write path
/// needs little beyond the pages of one transaction.
const CACHE_BYTES: usize = 16 << 20;

const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");
const LOG: TableDefinition<Index, &[u8]> = TableDefinition::new("log");
const SNAPSHOT: TableDefinition<(), &[u8]> = TableDefinition::new("snapshot");

const IDENTITY: &str = "identity";
const INCARNATION: &str = "incarnation";
const BOOTSTRAP: &str = "bootstrap";
const PROMISED: &str = "promised";
const COMMIT: &str = "commit";
const SNAPSHOT_META: &str = "snapshot";

/// Who a data directory belongs to.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Identity {
    /// The node's name, stable across restarts (the pod name in Kubernetes).
    pub node: String,
    /// The cluster's name, so that two clusters never share a directory.
    pub cluster: String,
}

/// Commit-index progress after which it is written even without a snapshot.
///
/// Each redb transaction copies the B-tree path of every table it touches,
/// and the commit index moves with almost every write: writing it each time
/// cost a second table path in every transaction, and a transaction (with
/// its fsync) of its own whenever it was all there was to write. It is
/// written with the next transaction once it is this far ahead of the stored
/// one, with every snapshot, and when the store is closed.
const COMMIT_WRITE_EVERY: Index = 1024;

/// Where a directory's incarnation came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Incarnation {
    /// This node's id in the cluster while the directory lives.
    pub id: NodeId,
    /// The directory predates incarnations: `id` is derived from the name,
    /// and the bootstrap configuration comes from the flags as it used to.
    pub migrated: bool,
}

/// A [`LogStore`] in one redb file inside a data directory; every write is a
/// single fsynced transaction.
#[derive(Debug)]
pub struct DiskStore {
    db: Database,
    dir: PathBuf,
    incarnation: Incarnation,
    bootstrap: Option<Membership>,
    /// Nothing durable yet: no promise, log entry, snapshot or configuration.
    fresh: bool,
    /// The meta records as stored, kept here so that appending does not read
    /// them back in every transaction (this store is their only writer).
    floor: Index,
    promised: Ballot,
    stored_commit: Index,
    /// The newest commit index appended; written lazily (see
    /// [`COMMIT_WRITE_EVERY`]).
    commit: Index,
}

impl DiskStore {
    /// Opens the store in `dir`, creating the directory and database if
    /// needed.
    ///
    /// A new store is stamped with `identity`; an existing one must carry the
    /// same identity, or this fails with [`StorageError::WrongCluster`] or
    /// [`StorageError::WrongNode`].
    pub fn open(dir: &Path, identity: &Identity) -> Result<DiskStore, StorageError> {
        std::fs::create_dir_all(dir).map_err(|source| StorageError::Io {
            path: dir.to_path_buf(),
            source,
        })?;
        let path = dir.join(FILE_NAME);
        let db = Database::builder()
            .set_cache_size(CACHE_BYTES)
            .create(&path)
            .map_err(|source| StorageError::Open { path, source })?;
        let mut store = DiskStore {
            db,
            dir: dir.to_path_buf(),
            incarnation: Incarnation {
                id: 0,
                migrated: false,
            },
            bootstrap: None,
            fresh: false,
            floor: 0,
            promised: Ballot::ZERO,
            stored_commit: 0,
            commit: 0,
        };
        let mut cached = (0, Ballot::ZERO, 0);
        let mut incarnation = store.incarnation;
        let mut bootstrap = None;
        let mut fresh = false;
        store.write(|txn| {
            // Creating every table up front lets readers open them unconditionally.
            let log = txn.open_table(LOG)?;
            let empty_log = log.first()?.is_none();
            drop(log);
            txn.open_table(SNAPSHOT)?;
            let mut meta = txn.open_table(META)?;
            let new_dir = match get::<Identity>(&meta, IDENTITY)? {
                None => {
                    put(&mut meta, IDENTITY, identity)?;
                    true
                }
                Some(found) => {
                    check_identity(dir, identity, found)?;
                    false
                }
            };
            incarnation = match get::<Incarnation>(&meta, INCARNATION)? {
                Some(i) => i,
                None => {
                    let i = if new_dir {
                        Incarnation {
                            id: random_id()?,
                            migrated: false,
                        }
                    } else {
                        Incarnation {
                            id: node_id_from_name(&identity.node),
                            migrated: true,
                        }
                    };
                    put(&mut meta, INCARNATION, &i)?;
                    i
                }
            };
            bootstrap = get::<Membership>(&meta, BOOTSTRAP)?;
            let snapshot = get::<SnapshotMeta>(&meta, SNAPSHOT_META)?;
            let promised = get::<Ballot>(&meta, PROMISED)?.unwrap_or_default();
            fresh = bootstrap.is_none()
                && snapshot.is_none()
                && promised == Ballot::ZERO
                && empty_log
                && !incarnation.migrated;
            cached = (
                snapshot.map_or(0, |s| s.index),
                promised,
                get::<Index>(&meta, COMMIT)?.unwrap_or(0),
            );
            Ok(())
        })?;
        (store.floor, store.promised, store.stored_commit) = cached;
        store.commit = store.stored_commit;
        store.incarnation = incarnation;
        store.bootstrap = bootstrap;
        store.fresh = fresh;
        Ok(store)
    }

    /// This directory's incarnation: the node's id in the cluster.
    pub fn incarnation(&self) -> Incarnation {
        self.incarnation
    }

    /// The configuration the cluster was bootstrapped with, once recorded.
    pub fn bootstrap(&self) -> Option<&Membership> {
        self.bootstrap.as_ref()
    }

    /// True while nothing durable was ever written: this incarnation has
    /// never promised, accepted or learned anything, nor joined a cluster.
    pub fn is_fresh(&self) -> bool {
        self.fresh && self.promised == Ballot::ZERO && self.floor == 0 && self.commit == 0
    }

    /// Records the bootstrap configuration (fsynced). It never changes once
    /// written: a second, different one is refused.
    pub fn record_bootstrap(&mut self, membership: &Membership) -> Result<(), StorageError> {
        if let Some(existing) = &self.bootstrap {
            if existing == membership {
                return Ok(());
            }
            return Err(StorageError::Corrupt(
                "a different bootstrap configuration is already recorded".into(),
            ));
        }
        self.write(|txn| put(&mut txn.open_table(META)?, BOOTSTRAP, membership))?;
        self.bootstrap = Some(membership.clone());
        self.fresh = false;
        Ok(())
    }

    /// The directory this store lives in.
    pub fn data_dir(&self) -> &Path {
        &self.dir
    }

    /// Runs `f` in one write transaction and commits it with an fsync.
    fn write(
        &self,
        f: impl FnOnce(&WriteTransaction) -> Result<(), StorageError>,
    ) -> Result<(), StorageError> {
        let mut txn = self.db.begin_write()?;
        // Immediate is redb's default, but the engine's safety rests on it.
        txn.set_durability(Durability::Immediate)?;
        f(&txn)?;
        txn.commit()?;
        Ok(())
    }
}

/// A random, non-zero node id from the operating system's generator.
fn random_id() -> Result<NodeId, StorageError> {
    use rand::TryRngCore;
    loop {
        let id = rand::rngs::OsRng
            .try_next_u64()
            .map_err(|e| StorageError::Random(e.to_string()))?;
        if id != 0 {
            return Ok(id);
        }
    }
}

fn check_identity(dir: &Path, expected: &Identity, found: Identity) -> Result<(), StorageError> {
    if found.cluster != expected.cluster {
        return Err(StorageError::WrongCluster {
            dir: dir.to_path_buf(),
            expected: expected.cluster.clone(),
            found: found.cluster,
        });
    }
    if found.node != expected.node {
        return Err(StorageError::WrongNode {
            dir: dir.to_path_buf(),
            cluster: found.cluster,
            expected: expected.node.clone(),
            found: found.node,
        });
    }
    Ok(())
}

impl LogStore for DiskStore {
    fn append(&mut self, records: &[Persist]) -> Result<(), StorageError> {
        let floor = self.floor;
        let mut promised = self.promised;
        let mut entries = false;
        for record in records {
            match record {
                Persist::Promise(b) => promised = promised.max(*b),
                Persist::Entry(i, _) => entries |= *i > floor,
                Persist::Commit(c) => self.commit = self.commit.max(*c),
            }
        }
        let commit = self.commit;
        let write_commit = commit >= self.stored_commit + COMMIT_WRITE_EVERY;
        if !entries && promised == self.promised && !write_commit {
            return Ok(());
        }
        if entries {
            self.fresh = false;
        }
        let old_promised = self.promised;
        self.write(|txn| {
            if entries {
                let mut log = txn.open_table(LOG)?;
                for record in records {
                    if let Persist::Entry(i, e) = record
                        && *i > floor
                    {
                        log.insert(*i, encode(e, format_args!("log entry {i}"))?.as_slice())?;
                    }
                }
            }
            if promised != old_promised || write_commit {
                let mut meta = txn.open_table(META)?;
                if promised != old_promised {
                    put(&mut meta, PROMISED, &promised)?;
                }
                if write_commit {
                    put(&mut meta, COMMIT, &commit)?;
                }
            }
            Ok(())
        })?;
        self.promised = promised;
        if write_commit {
            self.stored_commit = commit;
        }
        Ok(())
    }

    fn recover(&self) -> Result<(Recovered, Option<Vec<u8>>), StorageError> {
        let txn = self.db.begin_read()?;
        let meta = txn.open_table(META)?;
        let snapshot = get::<SnapshotMeta>(&meta, SNAPSHOT_META)?;
        let floor = snapshot.as_ref().map_or(0, |s| s.index);
        let mut entries = BTreeMap::new();
        let log = txn.open_table(LOG)?;
        for item in log.range::<Index>((Bound::Excluded(floor), Bound::Unbounded))? {
            let (index, bytes) = item?;
            let index = index.value();
            entries.insert(
                index,
                decode(bytes.value(), format_args!("log entry {index}"))?,
            );
        }
        let data = match snapshot {
            None => None,
            Some(_) => match txn.open_table(SNAPSHOT)?.get(())? {
                Some(bytes) => Some(bytes.value().to_vec()),
                None => {
                    return Err(StorageError::Corrupt(
                        "snapshot meta is present but its data is missing".into(),
                    ));
                }
            },
        };
        let recovered = Recovered {
            promised: get(&meta, PROMISED)?.unwrap_or_default(),
            commit: get(&meta, COMMIT)?.unwrap_or(0),
            entries,
            snapshot,
        };
        Ok((recovered, data))
    }

    fn install_snapshot(&mut self, new: &SnapshotMeta, data: &[u8]) -> Result<(), StorageError> {
        let commit = self.commit.max(new.index);
        let mut installed = false;
        self.write(|txn| {
            let mut meta = txn.open_table(META)?;
            if get::<SnapshotMeta>(&meta, SNAPSHOT_META)?.is_some_and(|s| new.index < s.index) {
                return Ok(());
            }
            put(&mut meta, COMMIT, &commit)?;
            put(&mut meta, SNAPSHOT_META, new)?;
            txn.open_table(LOG)?.retain_in(..=new.index, |_, _| false)?;
            txn.open_table(SNAPSHOT)?.insert((), data)?;
            installed = true;
            Ok(())
        })?;
        if installed {
            self.floor = new.index;
            self.commit = commit;
            self.stored_commit = commit;
        }
        Ok(())
    }
}

impl Drop for DiskStore {
    /// A store closed in an orderly way writes its newest commit index, so a
    /// clean restart has nothing to re-learn.
    fn drop(&mut self) {
        if self.commit > self.stored_commit {
            let commit = self.commit;
            let result = self.write(|txn| put(&mut txn.open_table(META)?, COMMIT, &commit));
            if let Err(e) = result {
                tracing::warn!(error = %e, "could not write the commit index on close");
            }
        }
    }
}

fn get<T: DeserializeOwned>(
    table: &impl ReadableTable<&'static str, &'static [u8]>,
    key: &str,
) -> Result<Option<T>, StorageError> {
    match table.get(key)? {
        Some(bytes) => decode(bytes.value(), format_args!("meta record {key:?}")).map(Some),
        None => Ok(None),
    }
}

fn put<T: Serialize + ?Sized>(
    table: &mut redb::Table<&'static str, &'static [u8]>,
    key: &str,
    value: &T,
) -> Result<(), StorageError> {
    table.insert(
        key,
        encode(value, format_args!("meta record {key:?}"))?.as_slice(),
    )?;
    Ok(())
}

fn decode<T: DeserializeOwned>(bytes: &[u8], what: impl Display) -> Result<T, StorageError> {
    postcard::from_bytes(bytes).map_err(|e| StorageError::Corrupt(format!("{what}: {e}")))
}

fn encode<T: Serialize + ?Sized>(value: &T, what: impl Display) -> Result<Vec<u8>, StorageError> {
    // Our records always encode; a failure here means a broken type, and it
    // is reported rather than written as half a record.
    postcard::to_stdvec(value)
        .map_err(|e| StorageError::Corrupt(format!("cannot encode {what}: {e}")))
}

#[cfg(test)]
mod tests {
    use rand::rngs::SmallRng;
    use rand::{Rng, SeedableRng};
    use tempfile::TempDir;

    use super::*;
    use crate::paxos::Value;
    use crate::storage::MemStore;
    use crate::storage::conformance::{Harness, conformance_tests, entry, meta};

    fn identity(node: &str, cluster: &str) -> Identity {
        Identity {
            node: node.into(),
            cluster: cluster.into(),
        }
    }

    struct DiskHarness {
        dir: TempDir,
        store: Option<DiskStore>,
    }

    impl DiskHarness {
        fn new() -> Self {
            let dir = TempDir::new().expect("tempdir");
            let store = DiskStore::open(dir.path(), &identity("a", "c1")).expect("open");
            DiskHarness {
                dir,
                store: Some(store),
            }
        }
    }

    impl Harness for DiskHarness {
        fn store(&mut self) -> &mut dyn LogStore {
            self.store.as_mut().expect("store is open")
        }

        fn restart(&mut self) {
            // The old handle holds the file lock, so it must go first.
            self.store = None;
            let store = DiskStore::open(self.dir.path(), &identity("a", "c1")).expect("reopen");
            self.store = Some(store);
        }
    }

    conformance_tests!(DiskHarness::new());

    #[test]
    fn open_creates_missing_directory() {
        let tmp = TempDir::new().expect("tempdir");
        let dir = tmp.path().join("data").join("a");
        let store = DiskStore::open(&dir, &identity("a", "c1")).expect("open");
        assert_eq!(store.data_dir(), dir);
        assert!(dir.join(FILE_NAME).is_file());
    }

    #[test]
    fn reopening_as_another_node_fails_with_wrong_node() {
        let tmp = TempDir::new().expect("tempdir");
        drop(DiskStore::open(tmp.path(), &identity("b", "c1")).expect("open"));
        let err = DiskStore::open(tmp.path(), &identity("a", "c1")).expect_err("must refuse");
        assert!(
            matches!(&err, StorageError::WrongNode { expected, found, .. }
            if expected == "a" && found == "b")
        );
        let msg = err.to_string();
        assert!(
            msg.contains("node \"b\"") && msg.contains("not node \"a\""),
            "{msg}"
        );
        assert!(msg.contains("cluster \"c1\""), "{msg}");
    }

    #[test]
    fn reopening_in_another_cluster_fails_with_wrong_cluster() {
        let tmp = TempDir::new().expect("tempdir");
        drop(DiskStore::open(tmp.path(), &identity("a", "c1")).expect("open"));
        let err = DiskStore::open(tmp.path(), &identity("a", "c2")).expect_err("must refuse");
        assert!(
            matches!(&err, StorageError::WrongCluster { expected, found, .. }
            if expected == "c2" && found == "c1")
        );
        let msg = err.to_string();
        assert!(msg.contains("cluster \"c1\", not cluster \"c2\""), "{msg}");
    }

    #[test]
    fn corrupted_log_value_is_reported_not_panicked() {
        let mut h = DiskHarness::new();
        h.store()
            .append(&[Persist::Entry(3, entry(1, Value::Noop))])
            .expect("append");
        let store = h.store.as_ref().expect("store is open");
        let txn = store.db.begin_write().expect("begin");
        txn.open_table(LOG)
            .expect("log table")
            .insert(3, &[0xff_u8; 3][..])
            .expect("insert garbage");
        txn.commit().expect("commit");
        let err = h.store().recover().expect_err("garbage must not decode");
        assert!(
            matches!(&err, StorageError::Corrupt(m) if m.contains("log entry 3")),
            "{err}"
        );
    }

    #[test]
    fn corrupted_meta_value_is_reported_not_panicked() {
        let mut h = DiskHarness::new();
        let store = h.store.as_ref().expect("store is open");
        let txn = store.db.begin_write().expect("begin");
        txn.open_table(META)
            .expect("meta table")
            .insert(PROMISED, &[0xff_u8; 2][..])
            .expect("insert garbage");
        txn.commit().expect("commit");
        assert!(matches!(h.store().recover(), Err(StorageError::Corrupt(_))));
        // Opening reads the meta records too, and refuses the garbage.
        h.store = None;
        let err = DiskStore::open(h.dir.path(), &identity("a", "c1")).expect_err("must refuse");
        assert!(matches!(err, StorageError::Corrupt(_)), "{err}");
    }

    #[test]
    fn the_commit_index_is_written_lazily_but_within_bounds_and_on_close() {
        let mut h = DiskHarness::new();
        h.store().append(&[Persist::Commit(5)]).expect("append");
        // Not written yet: no transaction (and no fsync) for a commit alone.
        assert_eq!(h.store().recover().expect("recover").0.commit, 0);
        h.store()
            .append(&[Persist::Entry(6, entry(1, Value::Noop)), Persist::Commit(6)])
            .expect("append");
        assert_eq!(h.store().recover().expect("recover").0.commit, 0);
        // Far enough ahead: written with this append.
        let far = 6 + COMMIT_WRITE_EVERY;
        h.store().append(&[Persist::Commit(far)]).expect("append");
        assert_eq!(h.store().recover().expect("recover").0.commit, far);
        h.store()
            .append(&[Persist::Commit(far + 1)])
            .expect("append");
        // A clean close writes the newest one.
        h.restart();
        assert_eq!(h.store().recover().expect("recover").0.commit, far + 1);
    }

    #[test]
    fn install_snapshot_deletes_covered_log_rows() {
        let mut h = DiskHarness::new();
        let records: Vec<_> = (1..=5)
            .map(|i| Persist::Entry(i, entry(1, Value::Noop)))
            .collect();
        h.store().append(&records).expect("append");
        h.store().install_snapshot(&meta(3), b"s").expect("install");
        let store = h.store.as_ref().expect("store is open");
        let txn = store.db.begin_read().expect("begin");
        let log = txn.open_table(LOG).expect("log table");
        // Recovery would hide them anyway; the point is to reclaim the space.
        let left: Vec<Index> = log
            .iter()
            .expect("iter")
            .map(|row| row.expect("row").0.value())
            .collect();
        assert_eq!(left, [4, 5]);
    }

    /// Drives both stores through the same random history, restarting the
    /// disk store now and then, and compares what each would recover.
    #[test]
    fn mem_and_disk_stores_agree_on_random_history() {
        let mut rng = SmallRng::seed_from_u64(0x5eed);
        let mut mem = MemStore::new();
        let mut disk = DiskHarness::new();
        for step in 0..150 {
            let index = rng.random_range(1..40);
            if rng.random_ratio(1, 10) {
                let data = format!("image@{index}").into_bytes();
                mem.install_snapshot(&meta(index), &data).expect("mem");
                disk.store()
                    .install_snapshot(&meta(index), &data)
                    .expect("disk");
            } else {
                let records: Vec<Persist> = (0..rng.random_range(1..5))
                    .map(|_| match rng.random_range(0..3) {
                        0 => Persist::Promise(Ballot::new(rng.random_range(0..20), 1)),
                        1 => Persist::Commit(rng.random_range(0..40)),
                        _ => Persist::Entry(index, entry(rng.random_range(0..9), Value::Noop)),
                    })
                    .collect();
                mem.append(&records).expect("mem");
                disk.store().append(&records).expect("disk");
            }
            let restarted = step % 25 == 0;
            if restarted {
                disk.restart();
            }
            let (expected, expected_data) = mem.recover().expect("mem");
            let (mut got, got_data) = disk.store().recover().expect("disk");
            // The disk store may write the commit index late, never ahead,
            // and a clean close catches it up.
            assert!(got.commit <= expected.commit, "step {step}");
            if restarted {
                assert_eq!(got.commit, expected.commit, "step {step}");
            }
            got.commit = expected.commit;
            assert_eq!((got, got_data), (expected, expected_data), "step {step}");
        }
    }
}
