//! Durable storage for the engine's records and snapshots.
//!
//! The engine only produces [`Persist`] records and consumes a [`Recovered`];
//! where they live is the caller's business. [`LogStore`] is that seam: the
//! node runtime uses [`DiskStore`], the deterministic simulator [`MemStore`],
//! and both obey the same semantics, checked by one shared conformance suite.
//!
//! The key-value data itself is held by the state machine in memory and made
//! durable by the log plus snapshots: a snapshot carries the KV image *with*
//! the applied index it reflects, and is durable before the log slots it
//! covers are dropped. Recovery loads the snapshot, then the engine
//! hands the chosen slots after it back for replay, so the data and its
//! applied index can never disagree after a crash at any point.

pub mod backup_file;
mod disk;
mod error;
mod legacy;
mod mem;
pub mod snapshot_file;
mod wal;

pub use disk::{DiskStore, Identity, Incarnation, Presence};
pub use error::StorageError;

/// What to do about a data directory whose files are damaged: its data
/// cannot be trusted, and the cluster holds it all.
pub const DAMAGED_ADVICE: &str = "this replica's data cannot be trusted: wipe the whole data \
     directory, start the node again and replace the member (phxkv members replace NAME)";
pub use mem::MemStore;
pub(crate) use wal::SEGMENT_BYTES;

use crate::paxos::{Persist, Recovered, SnapshotMeta};

/// The smallest data volume on which a replica that keeps `reserve` bytes
/// free (`serve --disk-reserve-bytes`) can take writes: the log's current
/// segment and the spare it switches to (each [`SEGMENT_BYTES`], written
/// in full before use, so an empty replica already holds two), as much
/// again for the snapshots and segments of a compaction in progress, and
/// the reserve. On a smaller volume writes that add data are refused (507
/// `disk_full`) once the little room left is used, before a compaction
/// could make more, or, with no reserve, the log fails to grow.
pub fn min_volume_bytes(reserve: u64) -> u64 {
    reserve.saturating_add(4 * SEGMENT_BYTES)
}

/// Replaces the small file `name` in `dir` atomically and durably: written
/// beside it, synced, renamed over it, and the directory synced.
pub fn replace_file(dir: &std::path::Path, name: &str, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write as _;
    let tmp = dir.join(format!("{name}.tmp"));
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    drop(f);
    std::fs::rename(&tmp, dir.join(name))?;
    std::fs::File::open(dir)?.sync_all()
}

/// A durable home for one node's Paxos state: promise, log, commit index and
/// latest snapshot.
///
/// Records are applied in order with these rules, which make replaying a
/// record harmless and keep a late or duplicated write from undoing progress:
/// - `Promise(b)` raises the promised ballot to `b`; a lower ballot is ignored,
///   because an acceptor must never forget a promise it has made;
/// - `Entry(i, e)` stores `e` in slot `i`, replacing what was there; it is
///   ignored when `i` is covered by the snapshot, since that slot is already
///   chosen and folded into the state machine image;
/// - `Commit(c)` raises the commit index to `c`; it never goes down.
///
/// The commit index is knowledge, not a vote: a replica that recovers an
/// older one re-learns the rest from the master (or, as master, re-proposes
/// what it had accepted, which Paxos chooses again unchanged). So a store may
/// write it lazily: recovering any commit index at or above the last one it
/// wrote, and at most the newest one appended, is correct.
pub trait LogStore: std::fmt::Debug {
    /// Applies `records` in order as one atomic unit that is durable (synced
    /// to stable storage) when this returns: after a crash, either all of them
    /// are recovered or none (the commit index may lag; see above).
    fn append(&mut self, records: &[Persist]) -> Result<(), StorageError>;

    /// Reads back everything durable: the engine's state, with only the log
    /// slots above the snapshot index, and the snapshot's state-machine bytes
    /// if a snapshot was ever stored.
    fn recover(&self) -> Result<(Recovered, Option<Vec<u8>>), StorageError>;

    /// Atomically stores a snapshot (its meta and opaque state-machine bytes),
    /// drops the log slots up to and including `meta.index`, and raises the
    /// commit index to at least `meta.index`.
    ///
    /// A snapshot older than the one already held is ignored: the slots it
    /// would need have been dropped, so accepting it would leave a gap.
    fn install_snapshot(&mut self, meta: &SnapshotMeta, data: &[u8]) -> Result<(), StorageError>;

    /// Replaces the log prefix with a snapshot the node took of its own
    /// applied state. Same effect as [`install_snapshot`](Self::install_snapshot),
    /// which is why there is only one implementation of it.
    fn compact(&mut self, meta: &SnapshotMeta, data: &[u8]) -> Result<(), StorageError> {
        self.install_snapshot(meta, data)
    }
}

/// Semantic tests every [`LogStore`] must pass, run against each store through
/// [`conformance_tests!`].
#[cfg(test)]
pub(crate) mod conformance {
    use std::collections::BTreeMap;

    use super::LogStore;
    use crate::paxos::{
        Ballot, LogEntry, Member, Membership, Persist, Recovered, Role, SnapshotMeta, Value,
    };

    /// A store under test together with the means to crash and restart it.
    pub(crate) trait Harness {
        fn store(&mut self) -> &mut dyn LogStore;
        /// Drops the store and reopens it from whatever it made durable.
        fn restart(&mut self);
    }

    pub(crate) fn entry(round: u64, value: Value) -> LogEntry {
        LogEntry {
            ballot: Ballot::new(round, 7),
            value,
            chosen: false,
        }
    }

    pub(crate) fn meta(index: u64) -> SnapshotMeta {
        let member = Member {
            name: "a".into(),
            addr: "a:7000".into(),
            role: Role::Voter,
        };
        SnapshotMeta {
            index,
            membership: Membership {
                members: BTreeMap::from([(1, member)]),
            },
        }
    }

    fn append(h: &mut dyn Harness, records: &[Persist]) {
        h.store().append(records).expect("append");
    }

    fn recover_after_restart(h: &mut dyn Harness) -> (Recovered, Option<Vec<u8>>) {
        h.restart();
        h.store().recover().expect("recover")
    }

    pub(crate) fn fresh_store_recovers_empty(h: &mut dyn Harness) {
        assert_eq!(recover_after_restart(h), (Recovered::default(), None));
    }

    pub(crate) fn records_survive_restart(h: &mut dyn Harness) {
        let e1 = entry(1, Value::Noop);
        let e2 = entry(
            1,
            Value::Lease {
                holder: 3,
                duration_ms: 5000,
            },
        );
        append(
            h,
            &[
                Persist::Promise(Ballot::new(1, 7)),
                Persist::Entry(1, e1.clone()),
            ],
        );
        append(h, &[Persist::Entry(2, e2.clone()), Persist::Commit(1)]);
        let (r, data) = recover_after_restart(h);
        assert_eq!(r.promised, Ballot::new(1, 7));
        assert_eq!(r.commit, 1);
        assert_eq!(r.entries, BTreeMap::from([(1, e1), (2, e2)]));
        assert_eq!((r.snapshot, data), (None, None));
    }

    pub(crate) fn promise_never_goes_backwards(h: &mut dyn Harness) {
        append(h, &[Persist::Promise(Ballot::new(5, 2))]);
        append(
            h,
            &[
                Persist::Promise(Ballot::new(4, 9)),
                Persist::Promise(Ballot::new(5, 1)),
            ],
        );
        assert_eq!(recover_after_restart(h).0.promised, Ballot::new(5, 2));
        append(h, &[Persist::Promise(Ballot::new(6, 1))]);
        assert_eq!(recover_after_restart(h).0.promised, Ballot::new(6, 1));
    }

    pub(crate) fn entry_overwrite_keeps_latest(h: &mut dyn Harness) {
        let later = entry(3, Value::Batch(Vec::new().into()));
        append(
            h,
            &[
                Persist::Entry(4, entry(1, Value::Noop)),
                Persist::Entry(4, entry(2, Value::Noop)),
            ],
        );
        append(h, &[Persist::Entry(4, later.clone())]);
        assert_eq!(
            recover_after_restart(h).0.entries,
            BTreeMap::from([(4, later)])
        );
    }

    pub(crate) fn commit_is_monotonic(h: &mut dyn Harness) {
        append(h, &[Persist::Commit(10), Persist::Commit(3)]);
        append(h, &[Persist::Commit(7)]);
        assert_eq!(recover_after_restart(h).0.commit, 10);
        append(h, &[Persist::Commit(11)]);
        assert_eq!(recover_after_restart(h).0.commit, 11);
    }

    pub(crate) fn install_snapshot_drops_covered_entries(h: &mut dyn Harness) {
        let records: Vec<_> = (1..=6)
            .map(|i| Persist::Entry(i, entry(i, Value::Noop)))
            .collect();
        append(h, &records);
        append(h, &[Persist::Commit(2)]);
        h.store()
            .install_snapshot(&meta(4), b"image@4")
            .expect("install");
        let (r, data) = recover_after_restart(h);
        assert_eq!(r.entries.keys().copied().collect::<Vec<_>>(), [5, 6]);
        assert_eq!(r.snapshot, Some(meta(4)));
        assert_eq!(data.as_deref(), Some(&b"image@4"[..]));
        assert_eq!(
            r.commit, 4,
            "a snapshot's index is chosen, so commit catches up"
        );
    }

    pub(crate) fn entries_at_or_below_snapshot_are_ignored(h: &mut dyn Harness) {
        h.store().install_snapshot(&meta(4), b"s").expect("install");
        let kept = entry(2, Value::Noop);
        append(
            h,
            &[
                Persist::Entry(3, entry(2, Value::Noop)),
                Persist::Entry(4, entry(2, Value::Noop)),
                Persist::Entry(5, kept.clone()),
            ],
        );
        assert_eq!(
            recover_after_restart(h).0.entries,
            BTreeMap::from([(5, kept)])
        );
    }

    pub(crate) fn stale_snapshot_is_ignored(h: &mut dyn Harness) {
        let records: Vec<_> = (1..=8)
            .map(|i| Persist::Entry(i, entry(i, Value::Noop)))
            .collect();
        append(h, &records);
        h.store()
            .install_snapshot(&meta(6), b"new")
            .expect("install");
        h.store()
            .install_snapshot(&meta(3), b"old")
            .expect("install");
        let (r, data) = recover_after_restart(h);
        assert_eq!(r.snapshot, Some(meta(6)));
        assert_eq!(data.as_deref(), Some(&b"new"[..]));
        assert_eq!(r.entries.keys().copied().collect::<Vec<_>>(), [7, 8]);
    }

    pub(crate) fn compact_has_install_snapshot_effect(h: &mut dyn Harness) {
        append(
            h,
            &[
                Persist::Entry(1, entry(1, Value::Noop)),
                Persist::Entry(2, entry(1, Value::Noop)),
            ],
        );
        h.store().compact(&meta(1), b"applied").expect("compact");
        let (r, data) = recover_after_restart(h);
        assert_eq!(r.entries.keys().copied().collect::<Vec<_>>(), [2]);
        assert_eq!((r.snapshot, r.commit), (Some(meta(1)), 1));
        assert_eq!(data.as_deref(), Some(&b"applied"[..]));
    }

    /// Expands to one `#[test]` per conformance check, each starting from the
    /// fresh harness that `$harness` evaluates to.
    macro_rules! conformance_tests {
        ($harness:expr) => {
            $crate::storage::conformance::conformance_tests!(@each $harness;
                fresh_store_recovers_empty,
                records_survive_restart,
                promise_never_goes_backwards,
                entry_overwrite_keeps_latest,
                commit_is_monotonic,
                install_snapshot_drops_covered_entries,
                entries_at_or_below_snapshot_are_ignored,
                stale_snapshot_is_ignored,
                compact_has_install_snapshot_effect,
            );
        };
        (@each $harness:expr; $($name:ident),* $(,)?) => {$(
            #[test]
            fn $name() {
                let mut harness = $harness;
                $crate::storage::conformance::$name(&mut harness);
            }
        )*};
    }
    pub(crate) use conformance_tests;
}
