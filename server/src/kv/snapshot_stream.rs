//! Snapshots taken piece by piece while writes go on, and restored from a
//! stream: a store of any size is snapshotted and restored without holding
//! its image in memory, and without stopping the engine while it is encoded.
//!
//! A snapshot *in progress* has a cursor: keys at or below it have been
//! emitted. When a write or delete is about to change a key above the cursor
//! for the first time since the snapshot began, the store sets the key's
//! prior state (its slot, or "absent") aside. The encoder walks the live map
//! and the set-aside states together, in key order, and for each key emits
//! the set-aside state if there is one, else the live one (which then has
//! not changed since the start). So what it emits is exactly the store as it
//! was when the snapshot began, in the same bytes as
//! [`Store::encode_snapshot`] would have produced then; the set-aside states
//! are at most the keys written during the snapshot, and are dropped as the
//! cursor passes them.
//!
//! Several snapshots may be in progress at once (a compaction, a backup
//! download, an archive's base snapshot), up to
//! [`MAX_SNAPSHOTS_IN_PROGRESS`]. Each has its own cursor and its own
//! set-aside states; a write sets the prior state aside for every one whose
//! cursor has not passed the key, sharing one copy of it between them. When
//! the set is full, beginning another abandons the one that has gone longest
//! without a piece being taken: a snapshot whose taker went away (a client
//! that disconnected) stops asking for pieces, so it is the first to go, and
//! a live one is abandoned only when more than that many are really being
//! taken at once. A taker that gives up should say so with
//! [`Store::abandon_snapshot`]: until it does, or the snapshot is evicted,
//! the snapshot keeps setting states aside (at most one per key above its
//! cursor, so never more than a copy of the store).
//!
//! The request-id table is small and bounded, and it is encoded whole when
//! the snapshot begins.

use std::collections::BTreeMap;
use std::io::Read;
use std::ops::Bound;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::kv::dedup::{DedupMarks, DedupTable};
use crate::kv::snapshot::KeyValueView;
use crate::kv::store::{Slot, digest_of};
use crate::kv::watch::History;
use crate::kv::{KeyValue, KvError, OpResult, Store, StoreConfig};
use crate::paxos::types::RequestId;

/// Most snapshots a store keeps in progress at once; beginning one more
/// abandons the one that has gone longest without a piece taken.
///
/// Each costs, at most, a copy of the keys written while it is in progress
/// (set-aside states are shared between snapshots that need the same one),
/// so this bounds a store's snapshot memory to a few times the keys written
/// during the longest of them.
pub const MAX_SNAPSHOTS_IN_PROGRESS: usize = 4;

/// Snapshot ids are unique in the process, not only in one store: a store
/// replaced by an installed snapshot starts with none in progress, and a
/// taker still holding an id of the old one must get [`SnapshotAbandoned`],
/// never the pieces of a newer snapshot that happens to have the same id.
static NEXT_SNAPSHOT_ID: AtomicU64 = AtomicU64::new(1);

/// The state of one snapshot in progress, kept by the store it is of.
#[derive(Clone, Debug)]
struct Taking {
    id: u64,
    /// Keys at or below it were emitted; `None` before the first.
    cursor: Option<Box<[u8]>>,
    /// The state at the start of keys above the cursor changed since then
    /// (`None`: absent). Shared with the other snapshots that set the same
    /// state aside.
    before: BTreeMap<Box<[u8]>, Option<Arc<Slot>>>,
    /// Keys still to emit (the count was announced up front).
    remaining: u64,
    /// The encoded request-id table, emitted last.
    tail: Vec<u8>,
    /// When it last began or gave a piece, on [`InProgress::clock`].
    touched: u64,
}

/// The snapshots in progress on a store.
///
/// # Why each snapshot's bytes are the store at its start
///
/// For each snapshot `S` in progress, at every moment between calls:
///
/// (I) for every key `k` above `S.cursor` (every key, before the first
/// piece), `S.before[k]` if present is `k`'s state when `S` began, and if
/// absent `k` has not changed since `S` began.
///
/// It holds when `S` begins (`before` empty, nothing changed yet). The
/// store's map changes only in `Store::write` and `Store::remove`, and both
/// call [`Store::note_change`] first, which, for every snapshot in progress
/// whose cursor has not passed `k` and that has nothing set aside for `k`,
/// sets aside `k`'s state as it is just before this change; by (I) that is
/// `k`'s state when that snapshot began, since nothing changed `k` since.
/// Keys that already have a set-aside state keep it. So (I) survives every
/// write, for every snapshot at once: no snapshot's bookkeeping depends on
/// another's, and the shared copies are never changed after they are made.
/// A piece of `S` emits keys above the cursor in order, each from
/// `S.before` when present, else live, which by (I) is the state at the
/// start; keys with a set-aside "absent" were created since and are
/// skipped. It then moves the cursor to the last key it looked at and drops
/// only set-aside states at or below it, which (I) no longer speaks of. So
/// the keys emitted, in order, are those of the store when `S` began, with
/// their state then, which are the bytes `Store::encode_snapshot` would have
/// written then; the key count in the head and the request table in the tail
/// were taken at the start.
///
/// A snapshot leaves the set whole (finished, abandoned or evicted), and a
/// store replaced by an installed snapshot starts with an empty set; since
/// ids are unique in the process, a taker holding a stale id is told
/// [`SnapshotAbandoned`] and never given another snapshot's bytes.
#[derive(Clone, Debug, Default)]
pub(super) struct InProgress {
    takings: Vec<Taking>,
    /// Counts begins and pieces, to find the one idle the longest.
    clock: u64,
}

impl InProgress {
    fn tick(&mut self) -> u64 {
        self.clock += 1;
        self.clock
    }

    fn position(&self, id: u64) -> Option<usize> {
        self.takings.iter().position(|t| t.id == id)
    }
}

/// A snapshot just begun: what it is of and its first bytes.
#[derive(Debug)]
pub struct SnapshotStart {
    /// Names this snapshot in [`Store::snapshot_chunk`].
    pub id: u64,
    /// The log instance the snapshot reflects.
    pub applied_index: u64,
    /// The first bytes of the encoding (index, revision, key count).
    pub head: Vec<u8>,
}

/// The snapshot a chunk was asked for is no longer in progress: the store
/// was replaced (a newer snapshot installed), it was abandoned, or
/// [`MAX_SNAPSHOTS_IN_PROGRESS`] others began since it last gave a piece.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the snapshot in progress was abandoned")]
pub struct SnapshotAbandoned;

impl Store {
    /// Begins a snapshot of the store as it is now. Follow with
    /// [`Store::snapshot_chunk`] until it says it is done; writes, and
    /// pieces of other snapshots, may come in between. With
    /// [`MAX_SNAPSHOTS_IN_PROGRESS`] already in progress, the one that has
    /// gone longest without a piece is abandoned.
    pub fn begin_snapshot(&mut self) -> SnapshotStart {
        let id = NEXT_SNAPSHOT_ID.fetch_add(1, Ordering::Relaxed);
        let requests: Vec<(RequestId, &OpResult)> = self.dedup.entries().collect();
        // Postcard writes only sequences of unknown length or custom errors
        // as failures; these have neither.
        let tail = postcard::to_stdvec(&requests).expect("the request table always serializes");
        let tail = super::snapshot::append_marks(self.dedup.marks().as_ref(), tail);
        let head = postcard::to_stdvec(&(self.applied_index, self.revision, self.kvs.len()))
            .expect("integers always serialize");
        let snapshots = &mut self.snapshots;
        if snapshots.takings.len() >= MAX_SNAPSHOTS_IN_PROGRESS
            && let Some(idle) =
                (0..snapshots.takings.len()).min_by_key(|&i| snapshots.takings[i].touched)
        {
            snapshots.takings.swap_remove(idle);
        }
        let touched = snapshots.tick();
        snapshots.takings.push(Taking {
            id,
            cursor: None,
            before: BTreeMap::new(),
            remaining: self.kvs.len() as u64,
            tail,
            touched,
        });
        SnapshotStart {
            id,
            applied_index: self.applied_index,
            head,
        }
    }

    /// Appends the next at most `max_keys` keys of snapshot `id` to `out`;
    /// true once the snapshot is complete (its last bytes appended).
    pub fn snapshot_chunk(
        &mut self,
        id: u64,
        max_keys: usize,
        out: &mut Vec<u8>,
    ) -> Result<bool, SnapshotAbandoned> {
        let Some(at) = self.snapshots.position(id) else {
            return Err(SnapshotAbandoned);
        };
        let t = &self.snapshots.takings[at];
        let lower = match &t.cursor {
            Some(c) => Bound::Excluded(&c[..]),
            None => Bound::Unbounded,
        };
        let mut live = self
            .kvs
            .range::<[u8], _>((lower, Bound::Unbounded))
            .peekable();
        let mut before = t
            .before
            .range::<[u8], _>((lower, Bound::Unbounded))
            .peekable();
        let mut emitted = 0;
        let mut last: Option<&[u8]> = None;
        while emitted < max_keys {
            // The next key in either, preferring the set-aside state.
            let (key, slot) = match (live.peek(), before.peek()) {
                (None, None) => break,
                (Some((lk, _)), Some((bk, _))) if lk < bk => {
                    let (k, s) = live.next().expect("peeked");
                    (k, Some(s))
                }
                (Some((lk, _)), Some((bk, _))) if lk == bk => {
                    live.next();
                    let (k, s) = before.next().expect("peeked");
                    (k, s.as_deref())
                }
                (Some(_), None) => {
                    let (k, s) = live.next().expect("peeked");
                    (k, Some(s))
                }
                (_, Some(_)) => {
                    let (k, s) = before.next().expect("peeked");
                    (k, s.as_deref())
                }
            };
            last = Some(key);
            // Absent at the start: created during the snapshot.
            let Some(slot) = slot else { continue };
            let view = KeyValueView {
                key,
                value: &slot.value,
                version: slot.version,
                create_revision: slot.create_revision,
                mod_revision: slot.mod_revision,
            };
            let buf = std::mem::take(out);
            *out = postcard::to_extend(&view, buf).expect("a key always serializes");
            emitted += 1;
        }
        let done = live.peek().is_none() && before.peek().is_none();
        let last = last.map(Box::<[u8]>::from);
        let touched = self.snapshots.tick();
        let t = &mut self.snapshots.takings[at];
        t.touched = touched;
        t.remaining = t.remaining.saturating_sub(emitted as u64);
        if let Some(last) = last {
            // Set-aside states at or below the cursor are spent.
            t.before = t.before.split_off(&last[..]);
            t.before.remove(&last[..]);
            t.cursor = Some(last);
        }
        if !done {
            return Ok(false);
        }
        debug_assert_eq!(t.remaining, 0, "a snapshot emits the keys it announced");
        out.extend_from_slice(&t.tail);
        self.snapshots.takings.swap_remove(at);
        Ok(true)
    }

    /// Ends snapshot `id` without finishing it, dropping what it set aside;
    /// false if it was not in progress.
    pub fn abandon_snapshot(&mut self, id: u64) -> bool {
        match self.snapshots.position(id) {
            Some(at) => {
                self.snapshots.takings.swap_remove(at);
                true
            }
            None => false,
        }
    }

    /// How many snapshots are in progress.
    pub fn snapshots_in_progress(&self) -> usize {
        self.snapshots.takings.len()
    }

    /// Called before `key` changes: keeps its prior state for every snapshot
    /// in progress that has not emitted it yet nor set it aside already (see
    /// [`InProgress`] for why that is enough).
    pub(super) fn note_change(&mut self, key: &[u8]) {
        let mut prior: Option<Option<Arc<Slot>>> = None;
        for t in &mut self.snapshots.takings {
            if t.cursor.as_deref().is_some_and(|c| key <= c) || t.before.contains_key(key) {
                continue;
            }
            let prior = prior.get_or_insert_with(|| self.kvs.get(key).cloned().map(Arc::new));
            t.before.insert(key.into(), prior.clone());
        }
    }

    /// Rebuilds a store from an encoded snapshot read from `input` a piece at
    /// a time: only the store being built and a small buffer are in memory.
    pub fn restore_from_reader(input: impl Read, config: StoreConfig) -> Result<Store, KvError> {
        let mut r = Pieces::new(input);
        let (applied_index, revision, count): (u64, u64, usize) = r.next()?;
        let mut kvs = BTreeMap::new();
        let mut data_bytes = 0;
        for _ in 0..count {
            let kv: KeyValue = r.next()?;
            data_bytes += kv.key.len() + kv.value.len();
            let slot = Slot {
                value: kv.value.into_boxed_slice(),
                version: kv.version,
                create_revision: kv.create_revision,
                mod_revision: kv.mod_revision,
            };
            kvs.insert(kv.key.into_boxed_slice(), slot);
        }
        let requests: Vec<(RequestId, OpResult)> = r.next()?;
        // Marks follow the table only if there are any (see `DedupMarks`).
        let marks: Option<DedupMarks> = if r.at_end()? { None } else { Some(r.next()?) };
        r.finish()?;
        if let Some(marks) = &marks {
            super::snapshot::check_marks(marks, requests.len())?;
        }
        let dedup = DedupTable::restore(config.dedup_capacity, requests, marks, applied_index);
        let mut store = Store {
            digest: digest_of(&kvs),
            kvs,
            revision,
            applied_index,
            data_bytes,
            dedup,
            history: History::new(&config, revision + 1),
            snapshots: InProgress::default(),
            auth: Default::default(),
            auth_generation: 0,
            lease_count: 0,
            lease_generation: 0,
        };
        store.reload_auth();
        store.reload_leases();
        Ok(store)
    }
}

/// Postcard values pulled one at a time from a reader through a buffer that
/// grows only to the largest single value.
struct Pieces<R> {
    input: R,
    buf: Vec<u8>,
    at: usize,
    eof: bool,
}

const READ_CHUNK: usize = 256 << 10;

impl<R: Read> Pieces<R> {
    fn new(input: R) -> Self {
        Pieces {
            input,
            buf: Vec::new(),
            at: 0,
            eof: false,
        }
    }

    fn next<T: serde::de::DeserializeOwned>(&mut self) -> Result<T, KvError> {
        loop {
            match postcard::take_from_bytes::<T>(&self.buf[self.at..]) {
                Ok((value, rest)) => {
                    self.at = self.buf.len() - rest.len();
                    return Ok(value);
                }
                Err(postcard::Error::DeserializeUnexpectedEnd) if !self.eof => self.fill()?,
                Err(e) => return Err(KvError::SnapshotDecode(e)),
            }
        }
    }

    /// Reads more input, dropping what was consumed.
    fn fill(&mut self) -> Result<(), KvError> {
        self.buf.drain(..self.at);
        self.at = 0;
        let start = self.buf.len();
        self.buf.resize(start + READ_CHUNK, 0);
        let n = loop {
            match self.input.read(&mut self.buf[start..]) {
                Ok(n) => break n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(KvError::SnapshotRead(e.to_string())),
            }
        };
        self.buf.truncate(start + n);
        self.eof = n == 0;
        Ok(())
    }

    /// Whether the input has nothing left.
    fn at_end(&mut self) -> Result<bool, KvError> {
        while self.at == self.buf.len() && !self.eof {
            self.fill()?;
        }
        Ok(self.at == self.buf.len())
    }

    /// Fails if anything follows the snapshot.
    fn finish(mut self) -> Result<(), KvError> {
        if self.at_end()? {
            return Ok(());
        }
        Err(KvError::SnapshotRead(
            "unexpected bytes after the end of the snapshot".into(),
        ))
    }
}

#[cfg(test)]
mod tests {
    use rand::rngs::SmallRng;
    use rand::{Rng, SeedableRng};

    use super::*;
    use crate::kv::testutil::{del, fresh_id, put, run};
    use crate::kv::{Op, Txn, TxnOp};

    fn random_op(rng: &mut SmallRng) -> Op {
        let key = format!("k{:03}", rng.random_range(0..200)).into_bytes();
        match rng.random_range(0..10) {
            0..=5 => put(&key, &vec![rng.random::<u8>(); rng.random_range(0..40)]),
            6..=8 => del(&key),
            _ => Op::Txn(Txn {
                success: vec![
                    TxnOp::Put {
                        key: key.clone(),
                        value: b"t".to_vec(),
                    },
                    TxnOp::Delete {
                        key: format!("k{:03}", rng.random_range(0..200)).into_bytes(),
                    },
                ],
                ..Txn::default()
            }),
        }
    }

    /// The property the module rests on: whatever is applied between the
    /// pieces, the bytes are those of the store when the snapshot began.
    #[test]
    fn a_snapshot_taken_in_pieces_during_writes_is_the_store_at_its_start() {
        for seed in 0..60 {
            let mut rng = SmallRng::seed_from_u64(seed);
            let mut store = Store::new();
            for _ in 0..rng.random_range(0..300) {
                run(&mut store, &random_op(&mut rng));
            }
            store.set_applied_index(seed + 1);
            let expected = store.encode_snapshot();
            let start = store.begin_snapshot();
            let mut bytes = start.head;
            let mut pieces = 0;
            loop {
                for _ in 0..rng.random_range(0..20) {
                    run(&mut store, &random_op(&mut rng));
                }
                let max = rng.random_range(1..30);
                pieces += 1;
                if store
                    .snapshot_chunk(start.id, max, &mut bytes)
                    .expect("in progress")
                {
                    break;
                }
                assert!(pieces < 10_000, "seed {seed}: never finished");
            }
            assert_eq!(bytes, expected, "seed {seed}");
            assert_eq!(store.snapshots_in_progress(), 0);
        }
    }

    #[test]
    fn an_empty_store_snapshots_in_one_piece() {
        let mut store = Store::new();
        let start = store.begin_snapshot();
        let mut bytes = start.head;
        assert_eq!(store.snapshot_chunk(start.id, 10, &mut bytes), Ok(true));
        assert_eq!(bytes, Store::new().encode_snapshot());
    }

    /// A snapshot being taken: its id, the bytes so far and the bytes the
    /// store encoded whole when it began.
    struct Taken {
        id: u64,
        bytes: Vec<u8>,
        expected: Vec<u8>,
    }

    fn begin(store: &mut Store) -> Taken {
        let expected = store.encode_snapshot();
        let start = store.begin_snapshot();
        Taken {
            id: start.id,
            bytes: start.head,
            expected,
        }
    }

    /// Begins `count` snapshots at random moments, applies random writes,
    /// deletes and transactions between random pieces of random ones, and
    /// checks that each one's bytes are the store as of its own start.
    fn interleaved_snapshots_are_each_the_store_at_their_own_start(count: usize) {
        assert!(count <= MAX_SNAPSHOTS_IN_PROGRESS);
        for seed in 0..80 {
            let mut rng = SmallRng::seed_from_u64(seed);
            let mut store = Store::new();
            for _ in 0..rng.random_range(0..300) {
                run(&mut store, &random_op(&mut rng));
            }
            let mut index = seed * 1000;
            let mut taking: Vec<Taken> = Vec::new();
            let mut begun = 0;
            let mut finished = 0;
            let mut steps = 0;
            while finished < count {
                steps += 1;
                assert!(steps < 100_000, "seed {seed}: never finished");
                for _ in 0..rng.random_range(0..8) {
                    run(&mut store, &random_op(&mut rng));
                    index += 1;
                    store.set_applied_index(index);
                }
                // Begin the next one now and then, or when none is left.
                if begun < count && (taking.is_empty() || rng.random_range(0..6) == 0) {
                    taking.push(begin(&mut store));
                    begun += 1;
                    continue;
                }
                let i = rng.random_range(0..taking.len());
                let t = &mut taking[i];
                let max = rng.random_range(1..25);
                if store
                    .snapshot_chunk(t.id, max, &mut t.bytes)
                    .expect("in progress")
                {
                    let t = taking.swap_remove(i);
                    assert_eq!(t.bytes, t.expected, "seed {seed}: snapshot {}", t.id);
                    // And it is a store that restores.
                    Store::restore_from_reader(&t.bytes[..], StoreConfig::default())
                        .expect("restores");
                    finished += 1;
                }
            }
            assert_eq!(store.snapshots_in_progress(), 0, "seed {seed}");
        }
    }

    #[test]
    fn two_interleaved_snapshots_are_each_the_store_at_their_own_start() {
        interleaved_snapshots_are_each_the_store_at_their_own_start(2);
    }

    #[test]
    fn three_interleaved_snapshots_are_each_the_store_at_their_own_start() {
        interleaved_snapshots_are_each_the_store_at_their_own_start(3);
    }

    #[test]
    fn as_many_snapshots_as_allowed_are_each_the_store_at_their_own_start() {
        interleaved_snapshots_are_each_the_store_at_their_own_start(MAX_SNAPSHOTS_IN_PROGRESS);
    }

    /// Drives snapshot `t` to its end and checks its bytes.
    fn finish(store: &mut Store, mut t: Taken) {
        while !store
            .snapshot_chunk(t.id, 3, &mut t.bytes)
            .expect("in progress")
        {}
        assert_eq!(t.bytes, t.expected);
    }

    #[test]
    fn one_snapshot_too_many_abandons_the_one_idle_longest() {
        let mut rng = SmallRng::seed_from_u64(3);
        let mut store = Store::new();
        for _ in 0..300 {
            run(&mut store, &random_op(&mut rng));
        }
        let mut taking: Vec<Taken> = (0..MAX_SNAPSHOTS_IN_PROGRESS)
            .map(|_| begin(&mut store))
            .collect();
        // Every one but the second takes a piece after the second began, so
        // the second is the one idle longest, though not the oldest.
        for (i, t) in taking.iter_mut().enumerate() {
            if i != 1 {
                assert_eq!(store.snapshot_chunk(t.id, 5, &mut t.bytes), Ok(false));
            }
            run(&mut store, &random_op(&mut rng));
        }
        let newest = begin(&mut store);
        assert_eq!(store.snapshots_in_progress(), MAX_SNAPSHOTS_IN_PROGRESS);
        let idle = taking.remove(1);
        let mut out = Vec::new();
        assert_eq!(
            store.snapshot_chunk(idle.id, 10, &mut out),
            Err(SnapshotAbandoned)
        );
        run(&mut store, &random_op(&mut rng));
        for t in taking {
            finish(&mut store, t);
        }
        finish(&mut store, newest);
        assert_eq!(store.snapshots_in_progress(), 0);
    }

    #[test]
    fn an_abandoned_snapshot_is_gone_and_the_others_go_on() {
        let mut store = Store::new();
        run(&mut store, &put(b"a", b"1"));
        run(&mut store, &put(b"b", b"2"));
        let first = begin(&mut store);
        let second = begin(&mut store);
        run(&mut store, &del(b"a"));
        assert!(store.abandon_snapshot(first.id));
        assert!(!store.abandon_snapshot(first.id));
        let mut out = Vec::new();
        assert_eq!(
            store.snapshot_chunk(first.id, 10, &mut out),
            Err(SnapshotAbandoned)
        );
        assert_eq!(store.snapshots_in_progress(), 1);
        run(&mut store, &put(b"b", b"3"));
        finish(&mut store, second);
    }

    #[test]
    fn snapshots_that_need_the_same_prior_state_share_one_copy() {
        let mut store = Store::new();
        run(&mut store, &put(b"k", &[7; 100]));
        let first = begin(&mut store);
        let second = begin(&mut store);
        run(&mut store, &put(b"k", b"new"));
        let shared: Vec<&Arc<Slot>> = store
            .snapshots
            .takings
            .iter()
            .map(|t| t.before[&b"k"[..]].as_ref().expect("existed"))
            .collect();
        assert_eq!(shared.len(), 2);
        assert!(Arc::ptr_eq(shared[0], shared[1]));
        finish(&mut store, first);
        finish(&mut store, second);
    }

    #[test]
    fn a_replaced_store_abandons_every_snapshot_in_progress() {
        let mut store = Store::new();
        run(&mut store, &put(b"a", b"1"));
        let first = store.begin_snapshot();
        let second = store.begin_snapshot();
        store = Store::restore(store.snapshot());
        // The new store's own snapshot never answers to an old id.
        let third = store.begin_snapshot();
        assert!(third.id != first.id && third.id != second.id);
        let mut out = Vec::new();
        for id in [first.id, second.id] {
            assert_eq!(
                store.snapshot_chunk(id, 10, &mut out),
                Err(SnapshotAbandoned)
            );
        }
        assert!(out.is_empty());
        assert_eq!(store.snapshots_in_progress(), 1);
    }

    #[test]
    fn a_store_restored_from_a_reader_equals_one_restored_from_bytes() {
        let mut rng = SmallRng::seed_from_u64(7);
        let mut store = Store::new();
        for _ in 0..2000 {
            run(&mut store, &random_op(&mut rng));
        }
        // Values larger than a read, too.
        store.apply(fresh_id(), &put(b"big", &vec![7; 3 * READ_CHUNK]));
        store.set_applied_index(99);
        let bytes = store.encode_snapshot();
        let restored =
            Store::restore_from_reader(&bytes[..], StoreConfig::default()).expect("restores");
        assert_eq!(restored.snapshot(), store.snapshot());
        assert_eq!(restored.digest(), store.digest());
        assert_eq!(restored.data_bytes(), store.data_bytes());
    }

    #[test]
    fn a_snapshot_in_pieces_carries_the_request_marks_as_they_were_at_its_start() {
        let config = StoreConfig {
            dedup_capacity: 3,
            ..StoreConfig::default()
        };
        let once = |after: u64, key: &[u8]| Op::Once {
            after,
            op: Box::new(put(key, b"v")),
        };
        let mut store = Store::with_config(config);
        for index in 1..=10u64 {
            store.apply(fresh_id(), &once(index - 1, format!("k{index}").as_bytes()));
            store.set_applied_index(index);
        }
        let expected = store.encode_snapshot();
        let start = store.begin_snapshot();
        let mut bytes = start.head;
        let mut index = 10;
        // Writes between the pieces forget more marked ids.
        while !store
            .snapshot_chunk(start.id, 3, &mut bytes)
            .expect("in progress")
        {
            index += 1;
            store.apply(fresh_id(), &once(index - 1, b"k1"));
            store.set_applied_index(index);
        }
        assert_eq!(bytes, expected);
        let restored = Store::restore_from_reader(&bytes[..], config).expect("restores");
        // Written at indexes 1 to 10 with room for three: 8, 9 and 10 are
        // remembered, 7 was the last forgotten.
        assert_eq!(
            restored.snapshot().marks,
            Some(DedupMarks {
                forgotten: 7,
                marks: vec![Some(8), Some(9), Some(10)],
            })
        );
    }

    #[test]
    fn a_cut_or_padded_stream_is_an_error_not_a_smaller_store() {
        let mut store = Store::new();
        run(&mut store, &put(b"a", b"1"));
        run(&mut store, &put(b"b", b"2"));
        let bytes = store.encode_snapshot();
        for cut in 0..bytes.len() {
            assert!(
                Store::restore_from_reader(&bytes[..cut], StoreConfig::default()).is_err(),
                "cut at {cut}"
            );
        }
        let mut padded = bytes.clone();
        padded.push(0);
        assert!(Store::restore_from_reader(&padded[..], StoreConfig::default()).is_err());
    }
}
