//! Timelines: which history of a cluster's state a store continues.
//!
//! A cluster's state is one history of chosen entries, index after index.
//! A restore (from a backup file, or from an archive to a point in time)
//! starts a new one: the restored cluster goes on from the restored index
//! with writes of its own, while the cluster it came from may still run,
//! or has written more after that point. Both keep the same cluster id
//! when the operator reuses it, so the id cannot tell the two apart, and an
//! archive written by both would hold segments of one history after a base
//! of the other: a restore of its latest point would return a state that
//! never existed (or the wrong cluster's).
//!
//! So the store records its timeline: a random id, the timeline it was
//! restored from (`parent`) and the log index of the restore (`from_index`).
//! It lives in the replicated state (a record under the store's reserved
//! prefix, in every snapshot and backup), so every replica, and every member
//! added later, holds the same one.
//!
//! - A cluster without one (new, or made by a version before timelines)
//!   gets one through the log ([`crate::kv::Op::Timeline`]), once every
//!   member decodes it (the `timeline` peer feature). The first one applied
//!   stays: a second proposal (two masters in turn) changes nothing.
//! - A restore replaces it before the restored node first starts
//!   ([`Store::fork_timeline`]), with the old id as parent. Nothing goes
//!   through the log for that: the restored image is the cluster's first
//!   state, which every member later added receives from it.
//!
//! The archive records the timeline that writes to it (see
//! [`crate::archive::claim`]). Like the lease fence, the record takes no
//! revision of its own, so clients see neither it nor an event for it.

use serde::{Deserialize, Serialize};

use crate::kv::{OpResult, Store};

/// Where the record lives (inside the store's reserved prefix).
pub const TIMELINE_KEY: &[u8] = b"\0phxkv/timeline";

/// A store's timeline (see the module doc).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Timeline {
    /// 16 hex digits, drawn at random.
    pub id: String,
    /// The timeline this one was restored from, when it was restored from
    /// one that had an id.
    #[serde(default)]
    pub parent: Option<String>,
    /// The log index the restore started from; 0 for a cluster's first
    /// timeline.
    #[serde(default)]
    pub from_index: u64,
    /// The store revision there (a restore to a revision may cut a batch:
    /// its index then says less than the revision).
    #[serde(default)]
    pub from_revision: u64,
}

impl Timeline {
    /// A new id: 16 hex digits from the thread's random generator.
    pub fn new_id() -> String {
        format!("{:016x}", rand::random::<u64>())
    }

    /// For people: the id, and where it came from.
    pub fn describe(&self) -> String {
        match &self.parent {
            Some(parent) => format!(
                "timeline {}, restored at index {} from timeline {parent}",
                self.id, self.from_index
            ),
            None if self.from_index > 0 => format!(
                "timeline {}, restored at index {}",
                self.id, self.from_index
            ),
            None => format!("timeline {}", self.id),
        }
    }
}

impl Store {
    /// The timeline this store is on, if it has one yet. A record that does
    /// not decode (only this module writes it) counts as none.
    pub fn timeline(&self) -> Option<Timeline> {
        let slot = self.kvs.get(TIMELINE_KEY)?;
        serde_json::from_slice(&slot.value).ok()
    }

    /// Applies [`crate::kv::Op::Timeline`]: `id` becomes the store's first
    /// timeline, unless it has one already, which stays. Either way the
    /// answer names the timeline in force.
    pub(super) fn apply_timeline(&mut self, id: &str) -> OpResult {
        if let Some(current) = self.timeline() {
            return OpResult::Timeline { id: current.id };
        }
        self.set_timeline(&Timeline {
            id: id.to_string(),
            parent: None,
            from_index: 0,
            from_revision: 0,
        });
        OpResult::Timeline { id: id.to_string() }
    }

    /// Starts timeline `id` here, restored from the store's current one at
    /// its applied index. Only for a restore, before the restored node
    /// first starts (see the module doc).
    pub fn fork_timeline(&mut self, id: &str) -> Timeline {
        let timeline = Timeline {
            id: id.to_string(),
            parent: self.timeline().map(|t| t.id),
            from_index: self.applied_index(),
            from_revision: self.revision(),
        };
        self.set_timeline(&timeline);
        timeline
    }

    fn set_timeline(&mut self, timeline: &Timeline) {
        // Every replica writes the same bytes for the same op: this
        // encoding is part of the replicated state (digests compare it),
        // so a later version must not change it for `Op::Timeline`.
        // Serialising a struct of strings and numbers cannot fail.
        let record = serde_json::to_vec(timeline).unwrap_or_default();
        let revision = self.revision;
        self.write(TIMELINE_KEY, &record, revision);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kv::testutil::fresh_id;
    use crate::kv::{Op, StoreConfig};

    #[test]
    fn the_first_timeline_applied_stays_and_takes_no_revision() {
        let mut s = Store::new();
        let put = Op::Put {
            key: b"a".to_vec(),
            value: b"1".to_vec(),
            expect: None,
        };
        s.apply(fresh_id(), &put);
        assert_eq!(s.timeline(), None);
        let first = s.apply(
            fresh_id(),
            &Op::Timeline {
                id: "00000000000000aa".into(),
            },
        );
        assert_eq!(
            first,
            OpResult::Timeline {
                id: "00000000000000aa".into()
            }
        );
        let second = s.apply(
            fresh_id(),
            &Op::Timeline {
                id: "00000000000000bb".into(),
            },
        );
        assert_eq!(
            second,
            OpResult::Timeline {
                id: "00000000000000aa".into()
            }
        );
        assert_eq!(
            s.timeline(),
            Some(Timeline {
                id: "00000000000000aa".into(),
                parent: None,
                from_index: 0,
                from_revision: 0
            })
        );
        assert_eq!(s.revision(), 1, "clients count no revision for it");
        // Neither a range over every key nor the watch history shows it.
        assert_eq!(s.range(&crate::kv::RangeRequest::default()).kvs.len(), 1);
        assert!(
            s.events_since(1, b"", 100)
                .expect("events")
                .iter()
                .all(|e| !crate::auth::is_system_key(&e.kv.key))
        );
    }

    #[test]
    fn a_restore_forks_the_timeline_and_snapshots_carry_it() {
        let mut s = Store::new();
        s.apply(
            fresh_id(),
            &Op::Timeline {
                id: "00000000000000aa".into(),
            },
        );
        s.set_applied_index(41);
        let forked = s.fork_timeline("00000000000000cc");
        assert_eq!(
            forked,
            Timeline {
                id: "00000000000000cc".into(),
                parent: Some("00000000000000aa".into()),
                from_index: 41,
                from_revision: 0
            }
        );
        assert!(
            forked
                .describe()
                .contains("restored at index 41 from timeline 00000000000000aa")
        );
        let restored = Store::restore_from_reader(&s.encode_snapshot()[..], StoreConfig::default())
            .expect("restores");
        assert_eq!(restored.timeline(), Some(forked));
        // A store of a version before timelines forks with no parent.
        let mut old = Store::new();
        old.set_applied_index(7);
        let t = old.fork_timeline("00000000000000dd");
        assert_eq!((t.parent, t.from_index), (None, 7));
    }
}
