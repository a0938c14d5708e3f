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
//! The request-id table is small and bounded, and it is encoded whole when
//! the snapshot begins.

use std::collections::BTreeMap;
use std::io::Read;
use std::ops::Bound;

use crate::kv::dedup::DedupTable;
use crate::kv::snapshot::KeyValueView;
use crate::kv::store::{Slot, digest_of};
use crate::kv::watch::History;
use crate::kv::{KeyValue, KvError, OpResult, Store, StoreConfig};
use crate::paxos::types::RequestId;

/// The state of a snapshot in progress, kept by the store it is of.
#[derive(Clone, Debug)]
pub(super) struct Taking {
    id: u64,
    /// Keys at or below it were emitted; `None` before the first.
    cursor: Option<Box<[u8]>>,
    /// The state at the start of keys above the cursor changed since then.
    before: BTreeMap<Box<[u8]>, Option<Slot>>,
    /// Keys still to emit (the count was announced up front).
    remaining: u64,
    /// The encoded request-id table, emitted last.
    tail: Vec<u8>,
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
/// was replaced (a newer snapshot installed) or another one began.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the snapshot in progress was abandoned")]
pub struct SnapshotAbandoned;

impl Store {
    /// Begins a snapshot of the store as it is now; any snapshot already in
    /// progress is abandoned. Follow with [`Store::snapshot_chunk`] until it
    /// says it is done; writes may be applied in between.
    pub fn begin_snapshot(&mut self) -> SnapshotStart {
        let id = self.taking.as_ref().map_or(1, |t| t.id + 1);
        let requests: Vec<(RequestId, &OpResult)> = self.dedup.entries().collect();
        // Postcard writes only sequences of unknown length or custom errors
        // as failures; these have neither.
        let tail = postcard::to_stdvec(&requests).expect("the request table always serializes");
        let head = postcard::to_stdvec(&(self.applied_index, self.revision, self.kvs.len()))
            .expect("integers always serialize");
        self.taking = Some(Taking {
            id,
            cursor: None,
            before: BTreeMap::new(),
            remaining: self.kvs.len() as u64,
            tail,
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
        let Some(t) = self.taking.as_ref().filter(|t| t.id == id) else {
            return Err(SnapshotAbandoned);
        };
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
                    (k, s.as_ref())
                }
                (Some(_), None) => {
                    let (k, s) = live.next().expect("peeked");
                    (k, Some(s))
                }
                (_, Some(_)) => {
                    let (k, s) = before.next().expect("peeked");
                    (k, s.as_ref())
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
        let t = self.taking.as_mut().expect("checked above");
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
        self.taking = None;
        Ok(true)
    }

    /// Called before `key` changes: keeps its prior state for a snapshot in
    /// progress that has not emitted it yet.
    pub(super) fn note_change(&mut self, key: &[u8]) {
        let Some(t) = self.taking.as_mut() else {
            return;
        };
        if t.cursor.as_deref().is_some_and(|c| key <= c) || t.before.contains_key(key) {
            return;
        }
        t.before.insert(key.into(), self.kvs.get(key).cloned());
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
        r.finish()?;
        let mut dedup = DedupTable::new(config.dedup_capacity);
        for (id, result) in requests {
            dedup.insert(id, result);
        }
        Ok(Store {
            digest: digest_of(&kvs),
            kvs,
            revision,
            applied_index,
            data_bytes,
            dedup,
            history: History::new(&config, revision + 1),
            taking: None,
        })
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

    /// Fails if anything follows the snapshot.
    fn finish(mut self) -> Result<(), KvError> {
        if self.at == self.buf.len() {
            self.fill()?;
        }
        if self.at == self.buf.len() {
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
            assert!(store.taking.is_none());
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

    #[test]
    fn a_replaced_store_or_a_newer_snapshot_abandons_the_one_in_progress() {
        let mut store = Store::new();
        run(&mut store, &put(b"a", b"1"));
        let first = store.begin_snapshot();
        let second = store.begin_snapshot();
        let mut out = Vec::new();
        assert_eq!(
            store.snapshot_chunk(first.id, 10, &mut out),
            Err(SnapshotAbandoned)
        );
        store = Store::restore(store.snapshot());
        assert_eq!(
            store.snapshot_chunk(second.id, 10, &mut out),
            Err(SnapshotAbandoned)
        );
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
