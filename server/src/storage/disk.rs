//! The on-disk [`LogStore`] a real node runs on.
//!
//! A data directory holds:
//! - `identity.json`: whose directory this is (node and cluster), its
//!   incarnation and the configuration the cluster was bootstrapped with,
//!   replaced atomically (written aside, synced, renamed);
//! - `wal/`: the write-ahead log (see [`super::wal`]): promises, accepted
//!   and chosen entries and the commit index, one checksummed frame and one
//!   `fdatasync` per engine turn;
//! - `snapshots/`: the newest snapshot of the state machine (see
//!   [`super::snapshot_file`]); log segments it covers are deleted;
//! - `phxkv.lock`: held while a process uses the directory, so that two
//!   processes never write the same log.
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
//! used, derived from the node's name. Directories in the older one-database
//! layout are converted on first open (see [`super::legacy`]).
//!
//! # Why not one embedded database
//!
//! Earlier versions kept all of this in redb, one transaction per engine
//! turn. A B-tree transaction copies the path to every page it touches and
//! writes them all at scattered offsets; an append writes the turn's bytes
//! once, at the end of a file. Nothing here is ever read back except at
//! start-up, so a log is the shape the data has.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::snapshot_file::{self, Reader};
use super::wal::{Summary, Wal, io, sync_dir};
use super::{LogStore, StorageError, legacy};
use crate::paxos::{
    Ballot, Index, Membership, NodeId, Persist, Recovered, SnapshotMeta, node_id_from_name,
};

const IDENTITY_FILE: &str = "identity.json";
const LOCK_FILE: &str = "phxkv.lock";
/// The layout this version writes; an identity file with another one was
/// written by a newer version and is refused rather than misread.
const FORMAT: u32 = 2;

/// Who a data directory belongs to.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Identity {
    /// The node's name, stable across restarts (the pod name in Kubernetes).
    pub node: String,
    /// The cluster's name, so that two clusters never share a directory.
    pub cluster: String,
}

/// Commit-index progress after which it is written even when there is
/// nothing else to write. The commit index is knowledge, not a vote (see
/// [`LogStore`]), and it moves with almost every write: a frame and an
/// fsync of its own each time it moved alone would double the syncs of an
/// idle follower. It rides along with every frame written for another
/// reason, is written alone once this far ahead of the stored one, and when
/// the store is closed.
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

/// The contents of `identity.json`.
#[derive(Debug, Serialize, Deserialize)]
struct IdentityFile {
    format: u32,
    node: String,
    cluster: String,
    incarnation: Incarnation,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    bootstrap: Option<Membership>,
    /// What the log and snapshots held when last recorded; absent in a
    /// directory written by a version that did not keep it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    files: Option<Files>,
}

/// What must be in a data directory besides `identity.json`, recorded there
/// so that files lost from under the node are noticed at start-up.
///
/// # Why a record outside the log
///
/// A node's promises and accepted values live in its log: a node that
/// lost them and still voted under its incarnation could let a majority
/// form that never saw a write another majority acknowledged, the very
/// thing incarnations exist to prevent (see [`Incarnation`]). A directory
/// that lost everything is safe, since it gets a new incarnation; one that
/// lost only its log or its snapshot (a careless clean-up, a restore of
/// some files, a volume mounted over a subdirectory) keeps the identity
/// and would open as if nothing happened: with no log it has promised
/// nothing, and with no snapshot it holds no data and no configuration
/// beyond the bootstrap one. Nothing left in `wal/` or `snapshots/` can say
/// what is missing from them, so the record lives beside the identity.
///
/// # Why it is checked with `>=`
///
/// Each field only grows, and it is written after what it describes is
/// durable, so after a crash the files are at or ahead of the record.
/// Versions before the record existed leave it as it was (they ignore the
/// field), so after a rollback and an upgrade again it is behind, never
/// ahead. A check that files are at least as new as the record therefore
/// never fails on a directory that lost nothing. The oldest segment is
/// checked only while the record is exactly current (the newest segment
/// and the snapshot match it): only then is nothing since unrecorded.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
struct Files {
    /// The newest log segment ever started.
    newest_segment: u64,
    /// The oldest log segment kept after the last compaction.
    oldest_segment: u64,
    /// The index of the newest snapshot stored (0: none).
    snapshot: Index,
}

/// A [`LogStore`] in a data directory: a write-ahead log, a snapshot file
/// and an identity file.
#[derive(Debug)]
pub struct DiskStore {
    dir: PathBuf,
    /// Held (locked) for as long as the store is open.
    _lock: File,
    wal: Wal,
    identity: Identity,
    incarnation: Incarnation,
    bootstrap: Option<Membership>,
    /// What `identity.json` last recorded of the log and snapshots.
    files: Files,
    /// Nothing durable yet: no promise, log entry, snapshot or configuration.
    fresh: bool,
    /// The index of the stored snapshot (0: none); entries at or below it
    /// are covered by the snapshot.
    floor: Index,
    promised: Ballot,
    stored_commit: Index,
    /// The newest commit index appended; written lazily (see
    /// [`COMMIT_WRITE_EVERY`]).
    commit: Index,
}

impl DiskStore {
    /// Opens the store in `dir`, creating the directory and its files if
    /// needed, converting a directory of the older layout, and cutting off a
    /// write torn by a crash at the end of the log.
    ///
    /// A new store is stamped with `identity`; an existing one must carry the
    /// same identity, or this fails with [`StorageError::WrongCluster`] or
    /// [`StorageError::WrongNode`]. A directory another process has open is
    /// refused with [`StorageError::Locked`].
    pub fn open(dir: &Path, identity: &Identity) -> Result<DiskStore, StorageError> {
        make_private(dir)?;
        let lock = lock(dir)?;
        let id_path = dir.join(IDENTITY_FILE);
        let old_db = dir.join(legacy::FILE_NAME);
        let file = if id_path.exists() {
            let file = read_identity(&id_path)?;
            check_identity(dir, identity, &file)?;
            if old_db.exists() {
                // Converted, but the crash came before the old file went.
                legacy::remove(dir)?;
            }
            file
        } else if old_db.exists() {
            convert(dir, identity)?
        } else {
            if Wal::exists(dir)? || snapshot_file::latest(&snapshot_file::dir_of(dir))?.is_some() {
                return Err(StorageError::Corrupt(format!(
                    "{} has a log or snapshot but no {IDENTITY_FILE}; refusing to guess whose it is",
                    dir.display()
                )));
            }
            let file = IdentityFile {
                format: FORMAT,
                node: identity.node.clone(),
                cluster: identity.cluster.clone(),
                incarnation: Incarnation {
                    id: random_id()?,
                    migrated: false,
                },
                bootstrap: None,
                files: None,
            };
            write_identity(dir, &file)?;
            file
        };
        let snapshots = snapshot_file::dir_of(dir);
        snapshot_file::tidy(&snapshots)?;
        let floor = match snapshot_file::latest(&snapshots)? {
            Some((_, path)) => Reader::open(&path)?.meta().index,
            None => 0,
        };
        check_files(dir, file.files.as_ref(), &Wal::present(dir)?, floor)?;
        let (wal, summary) = Wal::open(dir)?;
        let fresh = file.bootstrap.is_none()
            && floor == 0
            && summary.promised == Ballot::ZERO
            && !summary.has_entries
            && !file.incarnation.migrated;
        let commit = summary.commit.max(floor);
        let mut store = DiskStore {
            dir: dir.to_path_buf(),
            _lock: lock,
            wal,
            identity: identity.clone(),
            incarnation: file.incarnation,
            bootstrap: file.bootstrap,
            files: file.files.unwrap_or_default(),
            fresh,
            floor,
            promised: summary.promised,
            stored_commit: commit,
            commit,
        };
        if file.files.is_none() {
            tracing::info!(
                dir = %dir.display(),
                "recording which log segments and snapshot this data directory holds"
            );
        }
        store.record_files()?;
        Ok(store)
    }

    /// Records in `identity.json` what the log and snapshots hold now, if
    /// that differs from what it says (see [`Files`]).
    fn record_files(&mut self) -> Result<(), StorageError> {
        let (oldest_segment, newest_segment) = self.wal.seq_range();
        let now = Files {
            newest_segment,
            oldest_segment,
            snapshot: self.floor,
        };
        if now == self.files {
            return Ok(());
        }
        write_identity(&self.dir, &self.identity_file(Some(now)))?;
        self.files = now;
        Ok(())
    }

    /// What `identity.json` holds, with `files` as given.
    fn identity_file(&self, files: Option<Files>) -> IdentityFile {
        IdentityFile {
            format: FORMAT,
            node: self.identity.node.clone(),
            cluster: self.identity.cluster.clone(),
            incarnation: self.incarnation,
            bootstrap: self.bootstrap.clone(),
            files,
        }
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

    /// Records the bootstrap configuration (durably). It never changes once
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
        let mut file = self.identity_file(Some(self.files));
        file.bootstrap = Some(membership.clone());
        write_identity(&self.dir, &file)?;
        self.bootstrap = Some(membership.clone());
        self.fresh = false;
        Ok(())
    }

    /// The directory this store lives in.
    pub fn data_dir(&self) -> &Path {
        &self.dir
    }

    /// Where snapshot files are written; a snapshot written there (see
    /// [`snapshot_file::Writer`]) counts once it is published and
    /// [`DiskStore::snapshot_stored`] is told.
    pub fn snapshot_dir(&self) -> PathBuf {
        snapshot_file::dir_of(&self.dir)
    }

    /// The newest snapshot file, if any.
    pub fn latest_snapshot(&self) -> Result<Option<PathBuf>, StorageError> {
        Ok(snapshot_file::latest(&self.snapshot_dir())?.map(|(_, path)| path))
    }

    /// A snapshot file for `meta` was published in [`Self::snapshot_dir`]:
    /// the log slots it covers are no longer needed. An older snapshot than
    /// the one already held changes nothing.
    pub fn snapshot_stored(&mut self, meta: &SnapshotMeta) -> Result<(), StorageError> {
        if meta.index < self.floor {
            return Ok(());
        }
        self.floor = meta.index;
        self.commit = self.commit.max(meta.index);
        self.stored_commit = self.stored_commit.max(meta.index);
        self.fresh = false;
        let state = self.summary();
        self.wal.release_through(self.floor, &state)?;
        self.record_files()
    }

    /// Like [`LogStore::recover`], but the snapshot's data is left in its
    /// file, to be read a piece at a time.
    pub fn recover_streaming(&self) -> Result<(Recovered, Option<Reader>), StorageError> {
        let reader = match self.latest_snapshot()? {
            Some(path) => Some(Reader::open(&path)?),
            None => None,
        };
        let snapshot = reader.as_ref().map(|r| r.meta().clone());
        let floor = snapshot.as_ref().map_or(0, |s| s.index);
        let mut recovered = Recovered {
            snapshot,
            commit: floor,
            ..Recovered::default()
        };
        self.wal.replay(|record| match record {
            Persist::Promise(b) => recovered.promised = recovered.promised.max(b),
            Persist::Entry(i, e) if i > floor => {
                recovered.entries.insert(i, e);
            }
            Persist::Entry(..) => {}
            Persist::Commit(c) => recovered.commit = recovered.commit.max(c),
        })?;
        Ok((recovered, reader))
    }

    /// Appends one frame, first starting (and recording) a new segment if
    /// the newest is full, so that no frame is ever written to a segment
    /// `identity.json` does not know of.
    fn append_frame(&mut self, records: &[Persist], state: &Summary) -> Result<(), StorageError> {
        if self.wal.rotate_if_full(state)? {
            self.record_files()?;
        }
        self.wal.append(records, state)
    }

    fn summary(&self) -> Summary {
        Summary {
            promised: self.promised,
            commit: self.commit,
            has_entries: false,
        }
    }
}

/// Creates `dir` if needed, readable by its owner alone (0700), and takes
/// away what an existing one allows others: it holds every key and value
/// and the promises this node made, which no other local user should read
/// (or, through a writable directory, replace). Files inside keep the
/// modes they were created with; the directory alone is what guards them.
/// A directory this process may not change (not its owner) is used as it
/// is, with a warning.
fn make_private(dir: &Path) -> Result<(), StorageError> {
    use std::os::unix::fs::{DirBuilderExt as _, PermissionsExt as _};
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(io(dir))?;
    let mode = std::fs::metadata(dir)
        .map_err(io(dir))?
        .permissions()
        .mode();
    if mode & 0o077 != 0 {
        let private = std::fs::Permissions::from_mode(mode & 0o700);
        match std::fs::set_permissions(dir, private) {
            Ok(()) => tracing::info!(
                dir = %dir.display(),
                was = format!("{:o}", mode & 0o777),
                "made the data directory readable by its owner alone (700)"
            ),
            Err(e) => tracing::warn!(
                dir = %dir.display(),
                mode = format!("{:o}", mode & 0o777),
                error = %e,
                "the data directory is open to other users and cannot be changed; \
                 make it 700 so that only phxkv can read it"
            ),
        }
    }
    Ok(())
}

/// Takes the directory's lock, or says who (which directory) is in use.
fn lock(dir: &Path) -> Result<File, StorageError> {
    let path = dir.join(LOCK_FILE);
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(io(&path))?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(std::fs::TryLockError::WouldBlock) => Err(StorageError::Locked {
            dir: dir.to_path_buf(),
        }),
        Err(std::fs::TryLockError::Error(e)) => Err(io(&path)(e)),
    }
}

/// A data directory as a running replica opened it, to notice it removed
/// or replaced underneath ([`Presence::lost`]).
///
/// A replica whose directory is deleted while it runs goes on writing to
/// files no path leads to: its promises hold while it runs, and are gone at
/// its next start, which then finds an empty directory and comes up as a
/// new incarnation that waits to be replaced (the safe outcome of a lost
/// volume). Noticed at once, the replica stops and restarts into that
/// state now, instead of passing for a healthy member until some restart.
#[derive(Clone, Debug)]
pub struct Presence {
    dir: PathBuf,
    device: u64,
    inode: u64,
}

impl Presence {
    /// What `dir` is now; taken once the replica has opened it.
    pub fn of(dir: &Path) -> std::io::Result<Presence> {
        use std::os::unix::fs::MetadataExt as _;
        let meta = std::fs::metadata(dir)?;
        Ok(Presence {
            dir: dir.to_path_buf(),
            device: meta.dev(),
            inode: meta.ino(),
        })
    }

    /// Why the directory is no longer the one opened, if it is not: it was
    /// removed, another one stands at its path, or its `identity.json` is
    /// gone (which a replica never removes; it replaces it by a rename).
    /// Any other failure to read it (permissions, a volume's I/O errors)
    /// is not taken for a loss: the log's own writes fail safe on those.
    pub fn lost(&self) -> Option<String> {
        use std::io::ErrorKind::NotFound;
        use std::os::unix::fs::MetadataExt as _;
        let dir = self.dir.display();
        match std::fs::metadata(&self.dir) {
            Err(e) if e.kind() == NotFound => {
                return Some(format!("the data directory {dir} was removed"));
            }
            Ok(m) if (m.dev(), m.ino()) != (self.device, self.inode) => {
                return Some(format!(
                    "the data directory {dir} was replaced by another directory"
                ));
            }
            _ => {}
        }
        match std::fs::symlink_metadata(self.dir.join(IDENTITY_FILE)) {
            Err(e) if e.kind() == NotFound => Some(format!(
                "{IDENTITY_FILE} was removed from the data directory {dir}"
            )),
            _ => None,
        }
    }
}

fn read_identity(path: &Path) -> Result<IdentityFile, StorageError> {
    let bytes = std::fs::read(path).map_err(io(path))?;
    let file: IdentityFile = serde_json::from_slice(&bytes)
        .map_err(|e| StorageError::Corrupt(format!("{}: {e}", path.display())))?;
    if file.format != FORMAT {
        return Err(StorageError::Corrupt(format!(
            "{} is in format {}, which this version does not know (it writes format {FORMAT})",
            path.display(),
            file.format
        )));
    }
    Ok(file)
}

/// Replaces `identity.json` atomically and durably.
fn write_identity(dir: &Path, file: &IdentityFile) -> Result<(), StorageError> {
    let mut bytes = serde_json::to_vec_pretty(file)
        .map_err(|e| StorageError::Corrupt(format!("cannot encode the identity file: {e}")))?;
    bytes.push(b'\n');
    let tmp = dir.join(format!("{IDENTITY_FILE}.tmp"));
    let mut f = File::create(&tmp).map_err(io(&tmp))?;
    f.write_all(&bytes).map_err(io(&tmp))?;
    f.sync_all().map_err(io(&tmp))?;
    drop(f);
    let path = dir.join(IDENTITY_FILE);
    std::fs::rename(&tmp, &path).map_err(io(&path))?;
    sync_dir(dir)
}

/// Converts a directory of the one-database layout (see [`legacy`]).
fn convert(dir: &Path, identity: &Identity) -> Result<IdentityFile, StorageError> {
    let old = legacy::read(&dir.join(legacy::FILE_NAME))?;
    let found = old.identity.clone().unwrap_or_else(|| identity.clone());
    let file = IdentityFile {
        format: FORMAT,
        node: found.node,
        cluster: found.cluster,
        // A database without an incarnation predates them: its id is the
        // one derived from the name, as it always was.
        incarnation: old.incarnation.unwrap_or(Incarnation {
            id: node_id_from_name(&identity.node),
            migrated: true,
        }),
        bootstrap: old.bootstrap,
        files: None,
    };
    check_identity(dir, identity, &file)?;
    // Whatever an interrupted conversion left is redone from the database.
    for sub in [Wal::dir_of(dir), snapshot_file::dir_of(dir)] {
        match std::fs::remove_dir_all(&sub) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io(&sub)(e)),
        }
    }
    if let Some((meta, data)) = &old.snapshot {
        snapshot_file::write(&snapshot_file::dir_of(dir), meta, data)?;
    }
    let (mut wal, _) = Wal::open(dir)?;
    if !old.records.is_empty() {
        wal.append(&old.records, &Summary::default())?;
    }
    drop(wal);
    write_identity(dir, &file)?;
    legacy::remove(dir)?;
    tracing::info!(dir = %dir.display(), "converted the data directory to the log layout");
    Ok(file)
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

/// Refuses a directory that lost log segments or its snapshot, going by
/// what `identity.json` recorded (see [`Files`]) and by the segments'
/// numbers, which are consecutive in a log nothing was taken from.
/// `segments` are the sequence numbers found, oldest first; `snapshot` the
/// index of the newest snapshot found (0: none).
fn check_files(
    dir: &Path,
    recorded: Option<&Files>,
    segments: &[u64],
    snapshot: Index,
) -> Result<(), StorageError> {
    let lost = |what: String| {
        StorageError::Corrupt(format!(
            "{what} in {}: files were removed from this data directory, so this replica may \
             have forgotten promises it made and values it accepted, and it must not vote \
             again under its identity; wipe the whole directory and replace the member \
             (phxkv members replace)",
            dir.display()
        ))
    };
    let wal = Wal::dir_of(dir);
    if let Some(gap) = segments.windows(2).find(|w| w[1] != w[0] + 1) {
        return Err(lost(format!(
            "log segments {} to {} are missing from {}",
            gap[0] + 1,
            gap[1] - 1,
            wal.display()
        )));
    }
    let Some(files) = recorded else {
        return Ok(());
    };
    match (segments.first(), segments.last()) {
        (Some(&oldest), Some(&newest)) => {
            if newest < files.newest_segment {
                return Err(lost(format!(
                    "log segments {} to {} are missing from {}",
                    newest + 1,
                    files.newest_segment,
                    wal.display()
                )));
            }
            let current = newest == files.newest_segment && snapshot == files.snapshot;
            if current && oldest > files.oldest_segment {
                return Err(lost(format!(
                    "log segments {} to {} are missing from {}",
                    files.oldest_segment,
                    oldest - 1,
                    wal.display()
                )));
            }
        }
        _ if files.newest_segment > 0 => {
            return Err(lost(format!(
                "the log is gone ({} holds no segment; it had up to segment {})",
                wal.display(),
                files.newest_segment
            )));
        }
        _ => {}
    }
    if snapshot < files.snapshot {
        let found = match snapshot {
            0 => "none".to_string(),
            i => format!("only one at index {i}"),
        };
        return Err(lost(format!(
            "the snapshot at index {} is missing from {} (found {found})",
            files.snapshot,
            snapshot_file::dir_of(dir).display()
        )));
    }
    Ok(())
}

fn check_identity(
    dir: &Path,
    expected: &Identity,
    found: &IdentityFile,
) -> Result<(), StorageError> {
    if found.cluster != expected.cluster {
        return Err(StorageError::WrongCluster {
            dir: dir.to_path_buf(),
            expected: expected.cluster.clone(),
            found: found.cluster.clone(),
        });
    }
    if found.node != expected.node {
        return Err(StorageError::WrongNode {
            dir: dir.to_path_buf(),
            cluster: found.cluster.clone(),
            expected: expected.node.clone(),
            found: found.node.clone(),
        });
    }
    Ok(())
}

impl LogStore for DiskStore {
    fn append(&mut self, records: &[Persist]) -> Result<(), StorageError> {
        let floor = self.floor;
        let mut promised = self.promised;
        let mut entries = false;
        let mut commit_in_frame = 0;
        for record in records {
            match record {
                Persist::Promise(b) => promised = promised.max(*b),
                Persist::Entry(i, _) => entries |= *i > floor,
                Persist::Commit(c) => commit_in_frame = commit_in_frame.max(*c),
            }
        }
        self.commit = self.commit.max(commit_in_frame);
        let write_commit = self.commit >= self.stored_commit + COMMIT_WRITE_EVERY;
        if !entries && promised == self.promised && !write_commit {
            return Ok(());
        }
        let state = self.summary();
        self.append_frame(records, &state)?;
        if entries {
            self.fresh = false;
        }
        self.promised = promised;
        self.stored_commit = self.stored_commit.max(commit_in_frame);
        Ok(())
    }

    fn recover(&self) -> Result<(Recovered, Option<Vec<u8>>), StorageError> {
        let (recovered, reader) = self.recover_streaming()?;
        let data = match reader {
            Some(r) => Some(r.read_all()?.1),
            None => None,
        };
        Ok((recovered, data))
    }

    fn install_snapshot(&mut self, new: &SnapshotMeta, data: &[u8]) -> Result<(), StorageError> {
        if new.index < self.floor {
            return Ok(());
        }
        // The snapshot is durable before any segment it covers is deleted,
        // so a crash in between leaves both, and recovery skips the entries.
        snapshot_file::write(&self.snapshot_dir(), new, data)?;
        self.snapshot_stored(new)
    }
}

impl Drop for DiskStore {
    /// A store closed in an orderly way writes its newest commit index, so a
    /// clean restart has nothing to re-learn.
    fn drop(&mut self) {
        if self.commit > self.stored_commit {
            let state = self.summary();
            if let Err(e) = self.append_frame(&[Persist::Commit(self.commit)], &state) {
                tracing::warn!(error = %e, "could not write the commit index on close");
            }
        }
    }
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
            // The old handle holds the directory's lock, so it must go first.
            self.store = None;
            let store = DiskStore::open(self.dir.path(), &identity("a", "c1")).expect("reopen");
            self.store = Some(store);
        }
    }

    conformance_tests!(DiskHarness::new());

    #[test]
    fn open_creates_missing_directory_with_its_identity() {
        let tmp = TempDir::new().expect("tempdir");
        let dir = tmp.path().join("data").join("a");
        let store = DiskStore::open(&dir, &identity("a", "c1")).expect("open");
        assert_eq!(store.data_dir(), dir);
        let text = std::fs::read_to_string(dir.join(IDENTITY_FILE)).expect("identity file");
        assert!(
            text.contains("\"node\": \"a\"") && text.contains("\"cluster\": \"c1\""),
            "{text}"
        );
        assert!(store.is_fresh());
    }

    #[test]
    fn the_data_directory_is_made_readable_by_its_owner_alone() {
        use std::os::unix::fs::PermissionsExt as _;
        let tmp = TempDir::new().expect("tempdir");
        let mode = |p: &Path| std::fs::metadata(p).expect("stat").permissions().mode() & 0o777;
        let dir = tmp.path().join("new").join("a");
        drop(DiskStore::open(&dir, &identity("a", "c1")).expect("open"));
        assert_eq!(mode(&dir), 0o700, "a new directory");
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        drop(DiskStore::open(&dir, &identity("a", "c1")).expect("open"));
        assert_eq!(mode(&dir), 0o700, "an existing directory open to others");
    }

    #[test]
    fn a_directory_in_use_by_another_process_is_refused() {
        let tmp = TempDir::new().expect("tempdir");
        let _first = DiskStore::open(tmp.path(), &identity("a", "c1")).expect("open");
        let err = DiskStore::open(tmp.path(), &identity("a", "c1")).expect_err("locked");
        assert!(matches!(err, StorageError::Locked { .. }), "{err}");
        assert!(err.to_string().contains("in use"), "{err}");
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
    fn a_damaged_identity_file_is_reported_not_panicked() {
        let tmp = TempDir::new().expect("tempdir");
        drop(DiskStore::open(tmp.path(), &identity("a", "c1")).expect("open"));
        std::fs::write(tmp.path().join(IDENTITY_FILE), b"{\"format\": 2, \"no").expect("write");
        let err = DiskStore::open(tmp.path(), &identity("a", "c1")).expect_err("must refuse");
        assert!(
            matches!(&err, StorageError::Corrupt(m) if m.contains(IDENTITY_FILE)),
            "{err}"
        );
    }

    #[test]
    fn a_log_without_an_identity_file_is_refused() {
        let mut h = DiskHarness::new();
        h.store()
            .append(&[Persist::Entry(1, entry(1, Value::Noop))])
            .expect("append");
        h.store = None;
        std::fs::remove_file(h.dir.path().join(IDENTITY_FILE)).expect("remove");
        let err = DiskStore::open(h.dir.path(), &identity("a", "c1")).expect_err("must refuse");
        assert!(
            matches!(&err, StorageError::Corrupt(m) if m.contains("no identity.json")),
            "{err}"
        );
    }

    /// A store in a harness with a promise and entries 1..=6 in its first
    /// segment, a snapshot at 2 (which starts a second segment and keeps
    /// the first, since it holds entries above 2) and entry 7 in the second.
    fn two_segments_and_a_snapshot() -> DiskHarness {
        let mut h = DiskHarness::new();
        let mut records = vec![Persist::Promise(Ballot::new(3, 1))];
        records.extend((1..=6).map(|i| Persist::Entry(i, entry(i, Value::Noop))));
        h.store().append(&records).expect("append");
        h.store()
            .install_snapshot(&meta(2), b"at 2")
            .expect("install");
        h.store()
            .append(&[Persist::Entry(7, entry(7, Value::Noop))])
            .expect("append");
        assert_eq!(h.store.as_ref().expect("open").wal.segment_count(), 2);
        h.store = None;
        h
    }

    /// The log segment files of `dir`, oldest first.
    fn segment_files(dir: &Path) -> Vec<PathBuf> {
        let mut files: Vec<PathBuf> = std::fs::read_dir(Wal::dir_of(dir))
            .expect("wal dir")
            .map(|e| e.expect("entry").path())
            .filter(|p| p.extension().is_some_and(|x| x == "wal"))
            .collect();
        files.sort();
        files
    }

    fn refused_for_lost_files(dir: &Path, what: &str) {
        let err = DiskStore::open(dir, &identity("a", "c1")).expect_err("must refuse");
        let msg = err.to_string();
        assert!(
            matches!(err, StorageError::Corrupt(_))
                && msg.contains(what)
                && msg.contains("replace the member"),
            "{msg}"
        );
    }

    #[test]
    fn a_directory_whose_log_was_removed_is_refused_not_opened_empty() {
        let h = two_segments_and_a_snapshot();
        for f in segment_files(h.dir.path()) {
            std::fs::remove_file(f).expect("remove");
        }
        refused_for_lost_files(h.dir.path(), "the log is gone");
        std::fs::remove_dir_all(Wal::dir_of(h.dir.path())).expect("remove");
        refused_for_lost_files(h.dir.path(), "the log is gone");
    }

    #[test]
    fn a_directory_whose_snapshot_was_removed_is_refused() {
        let h = two_segments_and_a_snapshot();
        std::fs::remove_dir_all(snapshot_file::dir_of(h.dir.path())).expect("remove");
        refused_for_lost_files(h.dir.path(), "the snapshot at index 2 is missing");
    }

    #[test]
    fn a_directory_missing_its_newest_or_oldest_or_a_middle_segment_is_refused() {
        for (lose, what) in [
            (1, "log segments 2 to 2 are missing"),
            (0, "log segments 1 to 1 are missing"),
        ] {
            let h = two_segments_and_a_snapshot();
            std::fs::remove_file(&segment_files(h.dir.path())[lose]).expect("remove");
            refused_for_lost_files(h.dir.path(), what);
        }
        // Three segments, the middle one lost.
        let mut h = two_segments_and_a_snapshot();
        h.restart();
        h.store()
            .install_snapshot(&meta(3), b"at 3")
            .expect("install");
        h.store = None;
        let files = segment_files(h.dir.path());
        assert_eq!(files.len(), 3);
        std::fs::remove_file(&files[1]).expect("remove");
        refused_for_lost_files(h.dir.path(), "log segments 2 to 2 are missing");
    }

    #[test]
    fn a_directory_that_lost_nothing_opens_after_every_step_and_a_stale_record() {
        let mut h = two_segments_and_a_snapshot();
        h.restart();
        let (r, data) = h.store().recover().expect("recover");
        assert_eq!(
            r.entries.keys().copied().collect::<Vec<_>>(),
            [3, 4, 5, 6, 7]
        );
        assert_eq!(data.as_deref(), Some(&b"at 2"[..]));
        // Compacting everything deletes the older segments: that is no loss.
        h.store()
            .install_snapshot(&meta(7), b"at 7")
            .expect("install");
        h.restart();
        assert_eq!(h.store.as_ref().expect("open").wal.segment_count(), 1);
        // A version that kept no record, or a record left behind by one that
        // ran since (a rollback): the files are ahead of it, which is no loss.
        h.store = None;
        let path = h.dir.path().join(IDENTITY_FILE);
        let mut file = read_identity(&path).expect("read");
        file.files = Some(Files {
            newest_segment: 1,
            oldest_segment: 1,
            snapshot: 2,
        });
        write_identity(h.dir.path(), &file).expect("write");
        h.restart();
        file.files = None;
        write_identity(h.dir.path(), &file).expect("write");
        h.restart();
        h.store = None;
        let recorded = read_identity(&path)
            .expect("read")
            .files
            .expect("recorded again");
        assert_eq!(recorded.snapshot, 7);
        h.restart();
        let (r, data) = h.store().recover().expect("recover");
        assert_eq!((r.snapshot, data), (Some(meta(7)), Some(b"at 7".to_vec())));
    }

    #[test]
    fn a_full_segment_is_recorded_before_a_frame_is_written_to_the_next() {
        let mut h = DiskHarness::new();
        let big = Value::Batch(
            vec![crate::paxos::Command {
                id: crate::paxos::RequestId { client: 1, seq: 1 },
                op: crate::kv::Op::Put {
                    key: b"k".to_vec(),
                    value: vec![7u8; 1 << 20],
                    expect: None,
                },
            }]
            .into(),
        );
        let mut i = 0;
        while h.store.as_ref().expect("open").wal.segment_count() < 2 {
            i += 1;
            h.store()
                .append(&[Persist::Entry(i, entry(1, big.clone()))])
                .expect("append");
        }
        h.store = None;
        let files = segment_files(h.dir.path());
        std::fs::remove_file(&files[1]).expect("remove");
        refused_for_lost_files(h.dir.path(), "log segments 2 to 2 are missing");
    }

    #[test]
    fn the_commit_index_is_written_lazily_but_within_bounds_and_on_close() {
        let mut h = DiskHarness::new();
        h.store().append(&[Persist::Commit(5)]).expect("append");
        let frames = |h: &DiskHarness| h.store.as_ref().expect("open").wal.active_len();
        let empty = frames(&h);
        // Not written: no frame (and no fsync) for a commit alone.
        assert_eq!(frames(&h), empty);
        assert_eq!(h.store().recover().expect("recover").0.commit, 0);
        // It rides along with entries.
        h.store()
            .append(&[Persist::Entry(6, entry(1, Value::Noop)), Persist::Commit(6)])
            .expect("append");
        assert_eq!(h.store().recover().expect("recover").0.commit, 6);
        let with_entry = frames(&h);
        h.store().append(&[Persist::Commit(7)]).expect("append");
        assert_eq!(frames(&h), with_entry, "a commit alone waits");
        // Far enough ahead: written on its own.
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
    fn install_snapshot_deletes_covered_log_segments() {
        let mut h = DiskHarness::new();
        let records: Vec<_> = (1..=5)
            .map(|i| Persist::Entry(i, entry(1, Value::Noop)))
            .collect();
        h.store().append(&records).expect("append");
        h.store().install_snapshot(&meta(3), b"s").expect("install");
        assert_eq!(
            h.store.as_ref().expect("open").wal.segment_count(),
            2,
            "entries 4 and 5 keep their segment"
        );
        h.store().install_snapshot(&meta(5), b"t").expect("install");
        assert_eq!(h.store.as_ref().expect("open").wal.segment_count(), 1);
        let (r, data) = {
            h.restart();
            h.store().recover().expect("recover")
        };
        assert!(r.entries.is_empty());
        assert_eq!((r.snapshot, data), (Some(meta(5)), Some(b"t".to_vec())));
    }

    #[test]
    fn a_directory_of_the_one_database_layout_is_converted_on_open() {
        let tmp = TempDir::new().expect("tempdir");
        let incarnation = Incarnation {
            id: 0xfeed,
            migrated: false,
        };
        let e5 = entry(3, Value::Noop);
        let e6 = entry(4, Value::Noop);
        legacy::write_old(
            tmp.path(),
            &identity("a", "c1"),
            &incarnation,
            Ballot::new(4, 2),
            &[(3, entry(1, Value::Noop)), (5, e5.clone()), (6, e6.clone())],
            5,
            Some((&meta(4), b"image@4")),
        );
        let store = DiskStore::open(tmp.path(), &identity("a", "c1")).expect("convert");
        assert_eq!(store.incarnation(), incarnation);
        assert!(!store.is_fresh());
        let (r, data) = store.recover().expect("recover");
        assert_eq!(r.promised, Ballot::new(4, 2));
        assert_eq!(r.commit, 5);
        assert_eq!(
            r.entries,
            std::collections::BTreeMap::from([(5, e5), (6, e6)])
        );
        assert_eq!(
            (r.snapshot, data),
            (Some(meta(4)), Some(b"image@4".to_vec()))
        );
        assert!(
            !tmp.path().join(legacy::FILE_NAME).exists(),
            "the old file is gone"
        );
        drop(store);
        let again = DiskStore::open(tmp.path(), &identity("a", "c1")).expect("reopen");
        assert_eq!(
            again.recover().expect("recover").0.promised,
            Ballot::new(4, 2)
        );
    }

    #[test]
    fn an_old_directory_of_another_node_is_refused_not_converted() {
        let tmp = TempDir::new().expect("tempdir");
        let incarnation = Incarnation {
            id: 1,
            migrated: false,
        };
        legacy::write_old(
            tmp.path(),
            &identity("b", "c1"),
            &incarnation,
            Ballot::ZERO,
            &[],
            0,
            None,
        );
        let err = DiskStore::open(tmp.path(), &identity("a", "c1")).expect_err("must refuse");
        assert!(matches!(err, StorageError::WrongNode { .. }), "{err}");
        assert!(
            tmp.path().join(legacy::FILE_NAME).exists(),
            "nothing was touched"
        );
    }

    /// Drives both stores through the same random history, restarting the
    /// disk store now and then, and compares what each would recover.
    #[test]
    fn mem_and_disk_stores_agree_on_random_history() {
        let mut rng = SmallRng::seed_from_u64(0x5eed);
        let mut mem = MemStore::new();
        let mut disk = DiskHarness::new();
        for step in 0..300 {
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

    #[test]
    fn a_directory_removed_or_replaced_under_an_open_store_is_noticed() {
        let parent = TempDir::new().expect("tempdir");
        let dir = parent.path().join("data");
        let store = DiskStore::open(&dir, &identity("a", "c1")).expect("open");
        let presence = Presence::of(&dir).expect("presence");
        assert_eq!(presence.lost(), None);
        // The store's own rewrite of its identity (a rename) is no loss.
        drop(store);
        let store = DiskStore::open(&dir, &identity("a", "c1")).expect("reopen");
        assert_eq!(presence.lost(), None);

        std::fs::remove_file(dir.join(IDENTITY_FILE)).expect("remove identity");
        let lost = presence.lost().expect("identity removed");
        assert!(lost.contains("identity.json was removed"), "{lost}");

        std::fs::remove_dir_all(&dir).expect("remove all");
        let lost = presence.lost().expect("removed");
        assert!(lost.ends_with("/data was removed"), "{lost}");

        std::fs::create_dir(&dir).expect("a new directory");
        std::fs::write(dir.join(IDENTITY_FILE), b"{}").expect("write");
        let lost = presence.lost().expect("replaced");
        assert!(lost.contains("was replaced by another directory"), "{lost}");
        drop(store);
    }
}
