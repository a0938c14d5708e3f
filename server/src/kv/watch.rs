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
            if !event.kv.key.starts_with(prefix) {
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
