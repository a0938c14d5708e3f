//! A self-contained copy of the replicated state, for catching up lagging
//! replicas and for truncating the log.
//!
//! Everything that influences the result of a future apply is included (the
//! data, the revision and the request-id table), so a restored store
//! continues exactly like the original. The watch history is deliberately
//! left out: it is a local convenience, not replicated state.

use serde::{Deserialize, Serialize};

use crate::kv::dedup::{DedupMarks, DedupTable};
use crate::kv::store::Slot;
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
    /// The marks of `requests` (see [`DedupMarks`]), encoded after them
    /// when there are any.
    #[serde(skip)]
    pub marks: Option<DedupMarks>,
}

impl StoreSnapshot {
    /// The snapshot in postcard encoding.
    pub fn encode(&self) -> Vec<u8> {
        // Postcard only fails on sequences of unknown length or on custom
        // serializer errors; the derived impls here produce neither.
        let out = postcard::to_stdvec(self).expect("a store snapshot always serializes");
        append_marks(self.marks.as_ref(), out)
    }

    /// Parses a snapshot produced by [`StoreSnapshot::encode`] (or by a
    /// version before marks existed, which ends after the request table).
    pub fn decode(bytes: &[u8]) -> Result<StoreSnapshot, KvError> {
        let (mut snap, rest): (StoreSnapshot, _) =
            postcard::take_from_bytes(bytes).map_err(KvError::SnapshotDecode)?;
        if !rest.is_empty() {
            let (marks, rest): (DedupMarks, _) =
                postcard::take_from_bytes(rest).map_err(KvError::SnapshotDecode)?;
            if !rest.is_empty() {
                return Err(KvError::SnapshotRead(
                    "unexpected bytes after the end of the snapshot".into(),
                ));
            }
            check_marks(&marks, snap.requests.len())?;
            snap.marks = Some(marks);
        }
        Ok(snap)
    }
}

/// Appends `marks` to an encoded snapshot, unless there is nothing in them.
pub(super) fn append_marks(marks: Option<&DedupMarks>, out: Vec<u8>) -> Vec<u8> {
    match marks.filter(|m| !m.is_empty()) {
        // As for the rest of the snapshot: nothing here fails.
        Some(m) => postcard::to_extend(m, out).expect("request marks always serialize"),
        None => out,
    }
}

/// Marks are written only when there is something in them, and name
/// every remembered request or none.
pub(super) fn check_marks(marks: &DedupMarks, requests: usize) -> Result<(), KvError> {
    if marks.is_empty() {
        return Err(KvError::SnapshotRead(
            "unexpected bytes after the end of the snapshot".into(),
        ));
    }
    if marks.marks.is_empty() || marks.marks.len() == requests {
        return Ok(());
    }
    Err(KvError::SnapshotRead(format!(
        "the snapshot marks {} of its {requests} remembered requests",
        marks.marks.len()
    )))
}

/// [`StoreSnapshot`]'s shape over borrowed data, so that a snapshot of a
/// large store is encoded straight from the store instead of from a full
/// copy of it first. Same fields in the same order: the same bytes.
#[derive(Serialize)]
struct SnapshotView<'a> {
    applied_index: u64,
    revision: u64,
    kvs: KvsView<'a>,
    requests: Vec<(RequestId, &'a OpResult)>,
}

struct KvsView<'a>(&'a Store);

impl Serialize for KvsView<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(self.0.kvs.iter().map(|(key, slot)| KeyValueView {
            key,
            value: &slot.value,
            version: slot.version,
            create_revision: slot.create_revision,
            mod_revision: slot.mod_revision,
        }))
    }
}

/// [`KeyValue`]'s shape, borrowed.
#[derive(Serialize)]
pub(super) struct KeyValueView<'a> {
    #[serde(with = "crate::kv::bytes")]
    pub(super) key: &'a [u8],
    #[serde(with = "crate::kv::bytes")]
    pub(super) value: &'a [u8],
    pub(super) version: u64,
    pub(super) create_revision: u64,
    pub(super) mod_revision: u64,
}

impl Store {
    /// The replicated state in [`StoreSnapshot`] encoding, written straight
    /// from the store.
    pub fn encode_snapshot(&self) -> Vec<u8> {
        self.encode_snapshot_into(Vec::new())
    }

    /// Appends the [`Store::encode_snapshot`] bytes to `out`, reserving room
    /// for all of them first: a grown buffer would copy the whole image
    /// again and could end up twice its size.
    pub fn encode_snapshot_into(&self, mut out: Vec<u8>) -> Vec<u8> {
        // Upper bounds: 3 varint u64s and 2 varint lengths per key, and a
        // generous share per remembered request.
        out.reserve(64 + self.data_bytes + self.kvs.len() * 40 + self.dedup.len() * 64);
        let view = SnapshotView {
            applied_index: self.applied_index,
            revision: self.revision,
            kvs: KvsView(self),
            // Bounded (the dedup capacity), and its length must be known
            // up front, which a filtered iterator does not tell.
            requests: self.dedup.entries().collect(),
        };
        // As for StoreSnapshot::encode: every length is known, nothing fails.
        let out = postcard::to_extend(&view, out).expect("a store snapshot always serializes");
        append_marks(self.dedup.marks().as_ref(), out)
    }

    /// Copies the replicated state.
    pub fn snapshot(&self) -> StoreSnapshot {
        StoreSnapshot {
            applied_index: self.applied_index,
            revision: self.revision,
            kvs: self.kvs.iter().map(|(key, slot)| slot.to_kv(key)).collect(),
            requests: self
                .dedup
                .entries()
                .map(|(id, result)| (id, result.clone()))
                .collect(),
            marks: self.dedup.marks(),
        }
    }

    /// Rebuilds a store from a snapshot with the default capacities.
    pub fn restore(snap: StoreSnapshot) -> Store {
        Store::restore_with(snap, StoreConfig::default())
    }

    /// Rebuilds a store from a snapshot. Its watch history starts empty, so
    /// revisions up to the snapshot's are reported as compacted.
    pub fn restore_with(snap: StoreSnapshot, config: StoreConfig) -> Store {
        let dedup = DedupTable::restore(
            config.dedup_capacity,
            snap.requests,
            snap.marks,
            snap.applied_index,
        );
        let data_bytes = snap
            .kvs
            .iter()
            .map(|kv| kv.key.len() + kv.value.len())
            .sum();
        let kvs = snap
            .kvs
            .into_iter()
            .map(|kv| {
                let slot = Slot {
                    value: kv.value.into_boxed_slice(),
                    version: kv.version,
                    create_revision: kv.create_revision,
                    mod_revision: kv.mod_revision,
                };
                (kv.key.into_boxed_slice(), slot)
            })
            .collect();
        let mut store = Store {
            digest: super::store::digest_of(&kvs),
            kvs,
            revision: snap.revision,
            applied_index: snap.applied_index,
            data_bytes,
            dedup,
            history: History::new(&config, snap.revision + 1),
            snapshots: Default::default(),
            auth: Default::default(),
            auth_generation: 0,
            lease_count: 0,
            lease_generation: 0,
        };
        store.reload_auth();
        store.reload_leases();
        store
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kv::testutil::{del, fresh_id, put, put_if, run};
    use crate::kv::{Expect, Op, Txn, TxnOp};

    /// A store that has seen every kind of op, with a known retried id.
    fn busy_store() -> (Store, RequestId, Op) {
        let mut s = Store::new();
        run(&mut s, &put(b"a", b"1"));
        run(&mut s, &put(b"b", b"22"));
        run(&mut s, &put(b"a", b"333"));
        run(&mut s, &del(b"b"));
        run(&mut s, &put_if(b"c", b"x", Expect::Version(5)));
        let retried = fresh_id();
        let op = Op::Txn(Txn {
            success: vec![
                TxnOp::Put {
                    key: b"t\xff".to_vec(),
                    value: vec![9; 10],
                },
                TxnOp::Get { key: b"a".to_vec() },
            ],
            ..Txn::default()
        });
        s.apply(retried, &op);
        s.set_applied_index(17);
        (s, retried, op)
    }

    #[test]
    fn snapshot_roundtrips_through_bytes_and_restore() {
        let (s, _, _) = busy_store();
        let snap = s.snapshot();
        assert_eq!(snap.applied_index, 17);
        assert_eq!(snap.revision, 5);
        assert_eq!(snap.requests.len(), 6);
        let decoded = StoreSnapshot::decode(&snap.encode()).expect("valid encoding");
        assert_eq!(decoded, snap);
        let restored = Store::restore(decoded);
        assert_eq!(restored.snapshot(), snap);
        assert_eq!(restored.data_bytes(), s.data_bytes());
        assert_eq!(restored.len(), s.len());
    }

    #[test]
    fn restored_store_behaves_like_the_original() {
        let (mut original, retried, retried_op) = busy_store();
        let mut restored = Store::restore(original.snapshot());
        let ops = [
            (retried, retried_op),
            (fresh_id(), put(b"a", b"4")),
            (fresh_id(), put_if(b"a", b"5", Expect::ModRevision(3))),
            (fresh_id(), del(b"t\xff")),
            (fresh_id(), put(b"new", b"n")),
        ];
        for (id, op) in &ops {
            assert_eq!(original.apply(*id, op), restored.apply(*id, op));
        }
        assert_eq!(original.snapshot(), restored.snapshot());
        assert_eq!(original.data_bytes(), restored.data_bytes());
        // The retried txn was deduplicated on both sides.
        assert_eq!(restored.revision(), 8);
    }

    /// A store with room for two ids, which has forgotten a write marked
    /// [`Op::Once`] at index 11, and a copy of that write.
    fn forgetful_store() -> (Store, RequestId, Op) {
        let mut s = Store::with_config(StoreConfig {
            dedup_capacity: 2,
            ..StoreConfig::default()
        });
        let once = |after: u64, op: Op| Op::Once {
            after,
            op: Box::new(op),
        };
        s.set_applied_index(10);
        let first = fresh_id();
        let write = once(10, put(b"a", b"1"));
        s.apply(first, &write);
        for index in 11..=13 {
            s.set_applied_index(index);
            s.apply(fresh_id(), &once(index, put(b"b", b"2")));
        }
        s.set_applied_index(14);
        run(&mut s, &put(b"c", b"3"));
        (s, first, write)
    }

    #[test]
    fn a_restored_replica_refuses_a_forgotten_copy_as_the_original_does() {
        let (mut s, first, write) = forgetful_store();
        let config = StoreConfig {
            dedup_capacity: 2,
            ..StoreConfig::default()
        };
        let snap = StoreSnapshot::decode(&s.encode_snapshot()).expect("decodes");
        assert_eq!(snap, s.snapshot());
        assert_eq!(
            snap.marks,
            Some(DedupMarks {
                forgotten: 13,
                marks: vec![Some(14), None],
            })
        );
        let mut restored = Store::restore_with(snap, config);
        let mut streamed =
            Store::restore_from_reader(&s.encode_snapshot()[..], config).expect("restores");
        for store in [&mut s, &mut restored, &mut streamed] {
            assert_eq!(store.apply(first, &write), OpResult::Forgotten);
            assert_eq!(store.revision(), 5);
        }
    }

    /// A snapshot without marks is the format an earlier version wrote and
    /// reads: a rolling upgrade sends such snapshots both ways.
    #[test]
    fn a_snapshot_of_a_store_without_once_writes_is_encoded_as_before() {
        #[derive(Serialize, Deserialize)]
        struct Earlier {
            applied_index: u64,
            revision: u64,
            kvs: Vec<KeyValue>,
            requests: Vec<(RequestId, OpResult)>,
        }
        let (s, _, _) = busy_store();
        let bytes = s.encode_snapshot();
        let snap = s.snapshot();
        let earlier = Earlier {
            applied_index: snap.applied_index,
            revision: snap.revision,
            kvs: snap.kvs.clone(),
            requests: snap.requests.clone(),
        };
        assert_eq!(postcard::to_stdvec(&earlier).expect("encodes"), bytes);
        assert_eq!(StoreSnapshot::decode(&bytes).expect("decodes"), snap);
        // One with marks reads as the earlier shape up to them, followed by
        // the marks (which an earlier version's streaming decoder refuses:
        // a rollback past the first marked write is not supported).
        let (forgetful, _, _) = forgetful_store();
        let encoded = forgetful.encode_snapshot();
        let (read, rest): (Earlier, _) = postcard::take_from_bytes(&encoded).expect("decodes");
        assert_eq!(read.kvs, forgetful.snapshot().kvs);
        assert!(!rest.is_empty());
    }

    #[test]
    fn marks_that_name_nothing_or_too_few_requests_are_an_error() {
        let (s, _, _) = forgetful_store();
        let mut bytes = Store::new().encode_snapshot();
        bytes.extend_from_slice(&[0, 0]);
        assert!(StoreSnapshot::decode(&bytes).is_err(), "empty marks");
        let mut snap = s.snapshot();
        snap.marks = Some(DedupMarks {
            forgotten: 1,
            marks: vec![Some(3)],
        });
        assert!(StoreSnapshot::decode(&snap.encode()).is_err());
        let mut padded = s.encode_snapshot();
        padded.push(0);
        assert!(
            StoreSnapshot::decode(&padded).is_err(),
            "bytes after the marks"
        );
        assert!(Store::restore_from_reader(&snap.encode()[..], StoreConfig::default()).is_err());
    }

    #[test]
    fn restored_history_starts_after_the_snapshot_revision() {
        let (s, _, _) = busy_store();
        let mut restored = Store::restore(s.snapshot());
        for requested in [0, 1, 5] {
            assert_eq!(
                restored.events_since(requested, b"", 0),
                Err(KvError::Compacted {
                    requested,
                    oldest: 6
                })
            );
        }
        assert_eq!(restored.events_since(6, b"", 0), Ok(vec![]));
        run(&mut restored, &put(b"z", b"1"));
        let events = restored
            .events_since(6, b"", 0)
            .expect("new events are kept");
        assert_eq!(events.len(), 1);
        assert_eq!(events[0].revision, 6);
    }

    #[test]
    fn empty_store_snapshot_keeps_full_history_available() {
        let mut restored = Store::restore(Store::new().snapshot());
        run(&mut restored, &put(b"a", b"1"));
        assert_eq!(restored.events_since(0, b"", 0).map(|e| e.len()), Ok(1));
    }

    #[test]
    fn restore_respects_a_smaller_dedup_capacity() {
        let (s, _, _) = busy_store();
        let config = StoreConfig {
            dedup_capacity: 2,
            ..StoreConfig::default()
        };
        let restored = Store::restore_with(s.snapshot(), config);
        let kept: Vec<_> = restored.snapshot().requests;
        assert_eq!(kept, s.snapshot().requests[4..]);
    }

    #[test]
    fn garbage_bytes_fail_to_decode() {
        let encoded = busy_store().0.snapshot().encode();
        let truncated = &encoded[..encoded.len() / 2];
        assert!(matches!(
            StoreSnapshot::decode(truncated),
            Err(KvError::SnapshotDecode(_))
        ));
        assert!(StoreSnapshot::decode(&[0xff; 3]).is_err());
    }

    #[test]
    fn snapshot_written_straight_from_the_store_is_the_same_bytes() {
        let (store, _, _) = busy_store();
        let direct = store.encode_snapshot();
        assert_eq!(direct, store.snapshot().encode());
        let restored = Store::restore(StoreSnapshot::decode(&direct).expect("decodes"));
        assert_eq!(restored.snapshot(), store.snapshot());
    }
}
