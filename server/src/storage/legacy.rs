//! Data directories written by earlier versions, which kept everything in
//! one redb database (`phxkv.redb`), are converted to the current layout
//! the first time they are opened.
//!
//! The conversion writes the snapshot file and one log segment holding the
//! promise, the entries and the commit index, and only then the identity
//! file, which is what marks a directory as converted. The database is
//! deleted last. A crash at any point leaves either a directory that still
//! converts from the database (the half-written files are cleared first) or
//! a converted one whose leftover database is deleted on the next open.

use std::path::Path;

use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use serde::de::DeserializeOwned;

use super::StorageError;
use super::wal::{io, sync_dir};
use crate::paxos::{Ballot, Index, LogEntry, Membership, Persist, SnapshotMeta};

/// The database file of the old layout.
pub(super) const FILE_NAME: &str = "phxkv.redb";

const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");
const LOG: TableDefinition<Index, &[u8]> = TableDefinition::new("log");
const SNAPSHOT: TableDefinition<(), &[u8]> = TableDefinition::new("snapshot");

/// Everything an old database held.
#[derive(Debug)]
pub(super) struct Contents {
    pub identity: Option<super::Identity>,
    pub incarnation: Option<super::Incarnation>,
    pub bootstrap: Option<Membership>,
    pub records: Vec<Persist>,
    pub snapshot: Option<(SnapshotMeta, Vec<u8>)>,
}

/// Reads an old database completely.
pub(super) fn read(path: &Path) -> Result<Contents, StorageError> {
    let db = Database::builder()
        .set_cache_size(16 << 20)
        .open(path)
        .map_err(|source| StorageError::Open {
            path: path.to_path_buf(),
            source,
        })?;
    let txn = db.begin_read()?;
    let meta = txn.open_table(META)?;
    let mut records = Vec::new();
    if let Some(p) = get::<Ballot>(&meta, "promised")? {
        records.push(Persist::Promise(p));
    }
    let snapshot_meta = get::<SnapshotMeta>(&meta, "snapshot")?;
    let floor = snapshot_meta.as_ref().map_or(0, |s| s.index);
    for row in txn.open_table(LOG)?.iter()? {
        let (index, bytes) = row?;
        let index = index.value();
        if index > floor {
            let entry: LogEntry = decode(bytes.value(), &format!("log entry {index}"))?;
            records.push(Persist::Entry(index, entry));
        }
    }
    if let Some(c) = get::<Index>(&meta, "commit")? {
        records.push(Persist::Commit(c));
    }
    let snapshot = match snapshot_meta {
        None => None,
        Some(m) => {
            let data = txn
                .open_table(SNAPSHOT)?
                .get(())?
                .map(|b| b.value().to_vec())
                .ok_or_else(|| {
                    StorageError::Corrupt("snapshot meta is present but its data is missing".into())
                })?;
            Some((m, data))
        }
    };
    Ok(Contents {
        identity: get(&meta, "identity")?,
        incarnation: get(&meta, "incarnation")?,
        bootstrap: get(&meta, "bootstrap")?,
        records,
        snapshot,
    })
}

/// Deletes the old database once the directory was converted.
pub(super) fn remove(dir: &Path) -> Result<(), StorageError> {
    let path = dir.join(FILE_NAME);
    std::fs::remove_file(&path).map_err(io(&path))?;
    sync_dir(dir)
}

fn get<T: DeserializeOwned>(
    table: &impl ReadableTable<&'static str, &'static [u8]>,
    key: &str,
) -> Result<Option<T>, StorageError> {
    match table.get(key)? {
        Some(bytes) => decode(bytes.value(), &format!("meta record {key:?}")).map(Some),
        None => Ok(None),
    }
}

fn decode<T: DeserializeOwned>(bytes: &[u8], what: &str) -> Result<T, StorageError> {
    postcard::from_bytes(bytes)
        .map_err(|e| StorageError::Corrupt(format!("old database, {what}: {e}")))
}

/// Writes a directory in the old layout, as earlier versions did.
#[cfg(test)]
pub(super) fn write_old(
    dir: &Path,
    identity: &super::Identity,
    incarnation: &super::Incarnation,
    promised: Ballot,
    entries: &[(Index, LogEntry)],
    commit: Index,
    snapshot: Option<(&SnapshotMeta, &[u8])>,
) {
    let put = |t: &mut redb::Table<&str, &[u8]>, k: &str, v: Vec<u8>| {
        t.insert(k, v.as_slice()).expect("insert");
    };
    let enc = |v: &dyn erased::Encode| v.encode();
    std::fs::create_dir_all(dir).expect("mkdir");
    let db = Database::create(dir.join(FILE_NAME)).expect("create");
    let txn = db.begin_write().expect("begin");
    {
        let mut meta = txn.open_table(META).expect("meta");
        put(&mut meta, "identity", enc(identity));
        put(&mut meta, "incarnation", enc(incarnation));
        put(&mut meta, "promised", enc(&promised));
        put(&mut meta, "commit", enc(&commit));
        let mut log = txn.open_table(LOG).expect("log");
        for (i, e) in entries {
            log.insert(*i, enc(e).as_slice()).expect("insert");
        }
        let mut snap = txn.open_table(SNAPSHOT).expect("snapshot");
        if let Some((m, data)) = snapshot {
            put(&mut meta, "snapshot", enc(m));
            snap.insert((), data).expect("insert");
        }
    }
    txn.commit().expect("commit");
}

#[cfg(test)]
mod erased {
    /// Lets the test writer encode records of different types in one closure.
    pub(super) trait Encode {
        fn encode(&self) -> Vec<u8>;
    }
    impl<T: serde::Serialize> Encode for T {
        fn encode(&self) -> Vec<u8> {
            postcard::to_stdvec(self).expect("encode")
        }
    }
}
