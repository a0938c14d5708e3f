//! A bounded, in-memory history of changes, so that watches can replay what
//! happened since a revision.
//!
//! Keeping every change forever would grow without bound, so old events are
//! dropped; a watch that asks for a dropped revision gets
//! [`KvError::Compacted`] and must re-read the current state instead of
//! silently missing changes. The history is not replicated state: it is not
//! in snapshots, and a restored store only knows what happens after it.

use std::collections::VecDeque;

use serde::{Deserialize, Serialize};

use crate::kv::{KeyValue, KvError, Store, StoreConfig};

/// Events kept for watches unless configured otherwise.
pub const DEFAULT_HISTORY_EVENTS: usize = 10_000;
/// Key and value bytes kept for watches unless configured otherwise.
pub const DEFAULT_HISTORY_BYTES: usize = 64 << 20;
/// How many events a watch read returns when asked for `0`.
pub const DEFAULT_WATCH_LIMIT: usize = 1000;

/// Accounts for the event's fixed fields, so that many tiny events still count.
const EVENT_OVERHEAD: usize = 48;

/// What happened to a key.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum EventKind {
    Put,
    Delete,
}

/// One change to one key.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    /// The revision of the change; shared by all writes of one transaction.
    pub revision: u64,
    pub kind: EventKind,
    /// For a put, the key as written. For a delete, the key with an empty
    /// value, version and create revision `0`, and `mod_revision` set to the
    /// revision of the deletion.
    pub kv: KeyValue,
}

impl Event {
    fn cost(&self) -> usize {
        EVENT_OVERHEAD + self.kv.key.len() + self.kv.value.len()
    }
}

/// Recent events in revision order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct History {
    max_events: usize,
    max_bytes: usize,
    events: VecDeque<Event>,
    bytes: usize,
    /// Every event with a revision at or above this is retained.
    oldest: u64,
}

impl History {
    /// An empty history that can answer from revision `oldest` on.
    pub(crate) fn new(config: &StoreConfig, oldest: u64) -> Self {
        History {
            max_events: config.history_max_events,
            max_bytes: config.history_max_bytes,
            events: VecDeque::new(),
            bytes: 0,
            oldest,
        }
    }

    pub(crate) fn push(&mut self, event: Event) {
        self.bytes += event.cost();
        self.events.push_back(event);
        while self.events.len() > self.max_events || self.bytes > self.max_bytes {
            let Some(old) = self.events.pop_front() else {
                break;
            };
            self.bytes -= old.cost();
            // Losing one event of a transaction makes its whole revision
            // incomplete; its remaining events are skipped by `since`.
            self.oldest = self.oldest.max(old.revision + 1);
        }
    }

    fn since(
        &self,
        start: u64,
        current: u64,
        prefix: &[u8],
        limit: usize,
    ) -> Result<Vec<Event>, KvError> {
        if start > current {
            return Ok(Vec::new());
        }
        // Revision 0 has no events, so asking from 0 loses nothing when
        // history still reaches back to revision 1.
        if start.max(1) < self.oldest {
            return Err(KvError::Compacted {
                requested: start,
                oldest: self.oldest,
            });
        }
        let limit = match limit {
            0 => DEFAULT_WATCH_LIMIT,
            n => n,
        };
        let first = self.events.partition_point(|e| e.revision < start);
        let mut out: Vec<Event> = Vec::new();
        for event in self.events.range(first..) {
            if !crate::auth::watch_delivers(&event.kv.key, prefix) {
                continue;
            }
            if out.len() >= limit && out.last().is_some_and(|e| e.revision != event.revision) {
                break;
            }
            out.push(event.clone());
        }
        Ok(out)
    }
}

impl Store {
    /// Events with revision `>= start_revision` on keys starting with
    /// `prefix`, in revision order.
    ///
    /// Returns at most `limit` events (`0` means [`DEFAULT_WATCH_LIMIT`]),
    /// except that a transaction's events are never split: the last revision
    /// returned is complete, so a caller resumes from its revision + 1.
    /// A start beyond the current revision yields nothing yet.
    pub fn events_since(
        &self,
        start_revision: u64,
        prefix: &[u8],
        limit: usize,
    ) -> Result<Vec<Event>, KvError> {
        self.history
            .since(start_revision, self.revision, prefix, limit)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kv::testutil::{del, put, run};
    use crate::kv::{Op, Txn, TxnOp};

    fn summary(events: &[Event]) -> Vec<(u64, EventKind, &[u8])> {
        events
            .iter()
            .map(|e| (e.revision, e.kind, e.kv.key.as_slice()))
            .collect()
    }

    fn small_history(max_events: usize) -> Store {
        Store::with_config(StoreConfig {
            history_max_events: max_events,
            ..StoreConfig::default()
        })
    }

    fn txn_put(keys: &[&[u8]]) -> Op {
        Op::Txn(Txn {
            success: keys
                .iter()
                .map(|k| TxnOp::Put {
                    key: k.to_vec(),
                    value: b"t".to_vec(),
                })
                .collect(),
            ..Txn::default()
        })
    }

    #[test]
    fn events_come_in_revision_order_and_txn_events_share_a_revision() {
        let mut s = Store::new();
        run(&mut s, &put(b"a", b"1"));
        run(&mut s, &txn_put(&[b"b", b"c"]));
        run(&mut s, &del(b"a"));
        run(&mut s, &del(b"missing"));
        let events = s.events_since(0, b"", 0).expect("history is complete");
        assert_eq!(
            summary(&events),
            [
                (1, EventKind::Put, &b"a"[..]),
                (2, EventKind::Put, b"b"),
                (2, EventKind::Put, b"c"),
                (3, EventKind::Delete, b"a"),
            ]
        );
        let from_two = s.events_since(2, b"", 0).expect("history is complete");
        assert_eq!(from_two.len(), 3);
    }

    #[test]
    fn event_payloads_describe_the_change() {
        let mut s = Store::new();
        run(&mut s, &put(b"a", b"1"));
        run(&mut s, &put(b"a", b"2"));
        run(&mut s, &del(b"a"));
        let events = s.events_since(2, b"", 0).expect("history is complete");
        let expected_put = KeyValue {
            key: b"a".to_vec(),
            value: b"2".to_vec(),
            version: 2,
            create_revision: 1,
            mod_revision: 2,
        };
        assert_eq!(events[0].kv, expected_put);
        let deleted = &events[1].kv;
        assert_eq!(
            (
                deleted.key.as_slice(),
                deleted.value.len(),
                deleted.mod_revision
            ),
            (&b"a"[..], 0, 3)
        );
    }

    #[test]
    fn prefix_filters_events() {
        let mut s = Store::new();
        run(&mut s, &put(b"app/1", b"x"));
        run(&mut s, &put(b"other", b"x"));
        run(&mut s, &txn_put(&[b"app/2", b"zzz"]));
        let events = s.events_since(1, b"app/", 0).expect("history is complete");
        assert_eq!(
            summary(&events),
            [
                (1, EventKind::Put, &b"app/1"[..]),
                (3, EventKind::Put, b"app/2"),
            ]
        );
    }

    #[test]
    fn start_beyond_current_revision_is_empty_not_an_error() {
        let mut s = Store::new();
        assert_eq!(s.events_since(1, b"", 0), Ok(vec![]));
        run(&mut s, &put(b"a", b"1"));
        assert_eq!(s.events_since(2, b"", 0), Ok(vec![]));
        assert_eq!(s.events_since(u64::MAX, b"", 0), Ok(vec![]));
    }

    #[test]
    fn eviction_keeps_the_newest_events_and_reports_compaction() {
        let mut s = small_history(3);
        for i in 0..5u8 {
            run(&mut s, &put(&[b'k', i], b"v"));
        }
        assert_eq!(s.history.events.len(), 3);
        let kept = s.events_since(3, b"", 0).expect("revision 3 is retained");
        assert_eq!(
            kept.iter().map(|e| e.revision).collect::<Vec<_>>(),
            [3, 4, 5]
        );
        assert_eq!(
            s.events_since(2, b"", 0),
            Err(KvError::Compacted {
                requested: 2,
                oldest: 3
            })
        );
        assert_eq!(
            s.events_since(0, b"", 0),
            Err(KvError::Compacted {
                requested: 0,
                oldest: 3
            })
        );
    }

    #[test]
    fn partly_evicted_txn_revision_counts_as_compacted() {
        let mut s = small_history(3);
        run(&mut s, &txn_put(&[b"a", b"b", b"c"]));
        run(&mut s, &put(b"d", b"v"));
        // One event of revision 1 was dropped, so revision 1 is incomplete.
        assert_eq!(
            s.events_since(1, b"", 0),
            Err(KvError::Compacted {
                requested: 1,
                oldest: 2
            })
        );
        let events = s.events_since(2, b"", 0).expect("revision 2 is retained");
        assert_eq!(summary(&events), [(2, EventKind::Put, &b"d"[..])]);
    }

    #[test]
    fn history_is_bounded_by_bytes() {
        let mut s = Store::with_config(StoreConfig {
            history_max_bytes: 2 * (EVENT_OVERHEAD + 1 + 100),
            ..StoreConfig::default()
        });
        for key in [b"a", b"b", b"c"] {
            run(&mut s, &put(key, &[0; 100]));
        }
        assert_eq!(s.history.events.len(), 2);
        assert!(matches!(
            s.events_since(1, b"", 0),
            Err(KvError::Compacted { oldest: 2, .. })
        ));
    }

    #[test]
    fn limit_stops_at_a_revision_boundary() {
        let mut s = Store::new();
        run(&mut s, &put(b"a", b"1"));
        run(&mut s, &txn_put(&[b"b", b"c"]));
        run(&mut s, &put(b"d", b"1"));
        let one = s.events_since(1, b"", 1).expect("history is complete");
        assert_eq!(one.len(), 1);
        // The txn's two events come together even though the limit is 2.
        let two = s.events_since(1, b"", 2).expect("history is complete");
        assert_eq!(
            two.iter().map(|e| e.revision).collect::<Vec<_>>(),
            [1, 2, 2]
        );
        let rest = s.events_since(3, b"", 2).expect("history is complete");
        assert_eq!(summary(&rest), [(3, EventKind::Put, &b"d"[..])]);
    }
}
