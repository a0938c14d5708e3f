//! Catching a replica whose data directory went back in time.
//!
//! # Why this matters
//!
//! Paxos survives crashes, not amnesia (see [`crate::cluster::bootstrap`]).
//! An empty volume is caught by its new incarnation id; an *older copy* of
//! the right volume is not: a volume snapshot put back, a backup of the
//! directory restored, a disk that acknowledged writes it then lost. Such a
//! directory carries the member's identity and a configuration that counts
//! it, but it has forgotten promises it made and values it accepted. If it
//! voted again, it and one other member could form a majority that never
//! saw writes a different majority acknowledged, and those writes would
//! vanish, exactly as with a lost volume.
//!
//! # What a replica remembers of its peers
//!
//! Every replica keeps, for each incarnation it hears from, a [`Mark`]: the
//! highest ballot that incarnation promised and the highest log index it
//! held durably, as far as this replica has seen. Only durable facts count:
//!
//! - a `Promise` at ballot `b`: an acceptor sends it only once its promise
//!   of `b` is on disk (see [`crate::paxos::Message::may_precede_persist`]);
//! - an `Accepted` for index `i`: sent only once the entry at `i` is on
//!   disk;
//! - the mark a replica states in its digest report, which its driver
//!   raises only after the records it counts were written and synced (a
//!   master's own acceptances never travel as messages, so they reach its
//!   peers this way, within one report interval).
//!
//! The ballot of an `Accepted`, a `Reject`'s promised ballot and heartbeat
//! answers are left out: they are true, but nothing guarantees that a
//! record of exactly that value exists on the sender's disk.
//!
//! # The check
//!
//! A replica that starts with a data directory holding a configuration
//! asks every other member of it, before its engine handles anything
//! (`GET /peer/v1/acknowledged/{incarnation}`), what that member saw it
//! acknowledge, and compares with what its directory holds: the promise it
//! recovered and the highest index of its log or snapshot. A correct
//! directory never holds less: a promise is never lowered, a log entry is
//! removed only by compaction to a snapshot at or above its index, so both
//! only grow, and everything a peer saw was on this disk before the peer
//! saw it. A directory that holds less than a peer saw is older than the
//! replica's own past: the replica refuses to start, says which peer saw
//! what, and asks for the directory to be moved away so that the node
//! comes back empty, as a new incarnation, and is replaced.
//!
//! The simulator checks the premise after every restart, crash points
//! included: the recovered mark is at least every acceptor fact the node
//! sent and every mark it stated (`sim::world`).
//!
//! Each replica writes what it saw to its own data directory
//! ([`SEEN_FILE`], at most once per digest round, when it changed, and
//! once more when it shuts down), so a peer that restarted still answers. A starting replica goes on once one
//! member answered (each has seen every other's synced state within a
//! digest round); when none does (the whole cluster starting at once) it
//! keeps asking for a few seconds.
//!
//! # What it does not catch
//!
//! A replica that reaches no member with a record of it when it starts
//! starts unchecked, and says so. What a peer saw in the last moments
//! before it was killed (rather than told to stop) may be missing from its
//! file, so a copy only a few seconds old can pass a peer that restarted
//! since. A copy taken after
//! the replica last said anything is caught by nothing, and loses nothing
//! either: whatever it forgot, it never told anyone.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::paxos::{Ballot, Index, Membership, Message, NodeId, Persist, Recovered};

/// How far a replica's acceptor state reached: what it promised and the
/// highest log index it held.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[schema(as = AcceptorMark)]
pub struct Mark {
    /// The highest ballot promised.
    pub promised: Ballot,
    /// The highest log index held (accepted, learned, or covered by a
    /// snapshot).
    pub accepted_to: Index,
}

impl Mark {
    /// What a data directory holds, as recovered at start.
    pub fn of_recovered(r: &Recovered) -> Mark {
        let snapshot = r.snapshot.as_ref().map_or(0, |s| s.index);
        let logged = r.entries.keys().next_back().copied().unwrap_or(0);
        Mark {
            promised: r.promised,
            accepted_to: snapshot.max(logged),
        }
    }

    /// Raises this mark by records that are now durable.
    pub fn raise_by(&mut self, records: &[Persist]) {
        for r in records {
            match r {
                Persist::Promise(b) => self.promised = self.promised.max(*b),
                Persist::Entry(i, _) => self.accepted_to = self.accepted_to.max(*i),
                Persist::Commit(_) => {}
            }
        }
    }

    /// The higher of each part.
    pub fn max(self, other: Mark) -> Mark {
        Mark {
            promised: self.promised.max(other.promised),
            accepted_to: self.accepted_to.max(other.accepted_to),
        }
    }

    /// Whether this mark reaches at least as far as `other` in both parts.
    pub fn covers(&self, other: &Mark) -> bool {
        self.promised >= other.promised && self.accepted_to >= other.accepted_to
    }

    /// The durable fact a message states about its sender: a `Promise`'s
    /// ballot, an `Accepted`'s highest index; `None` for the others.
    pub fn told_by(msg: &Message) -> Option<Mark> {
        match msg {
            Message::Promise { ballot, .. } => Some(Mark {
                promised: *ballot,
                accepted_to: 0,
            }),
            Message::Accepted { indexes, .. } => Some(Mark {
                promised: Ballot::ZERO,
                accepted_to: indexes.iter().copied().max().unwrap_or(0),
            }),
            _ => None,
        }
    }

    /// Whether nothing was ever promised or held.
    pub fn is_zero(&self) -> bool {
        *self == Mark::default()
    }
}

impl std::fmt::Display for Mark {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "promised ballot {}, log up to index {}",
            self.promised, self.accepted_to
        )
    }
}

/// More incarnations than this in [`Seen`] and those no longer members
/// are forgotten.
const SEEN_BOUND: usize = 256;

/// Where a replica keeps what it saw its peers acknowledge, so that a
/// restart does not forget it.
pub const SEEN_FILE: &str = "acknowledged.json";

/// What this replica saw each incarnation acknowledge.
#[derive(Debug, Default)]
pub struct Seen {
    marks: HashMap<NodeId, Mark>,
    /// Counts the changes, so that the file is written only after one.
    changes: u64,
}

/// [`Seen`] as [`SEEN_FILE`] holds it: marks by incarnation id (16 hex
/// digits).
#[derive(Debug, Default, Serialize, Deserialize)]
struct SeenFile {
    marks: std::collections::BTreeMap<String, Mark>,
}

impl Seen {
    /// Takes note of a message `from` sent, if it states a durable fact.
    pub fn observe(&mut self, from: NodeId, msg: &Message) {
        if let Some(mark) = Mark::told_by(msg) {
            self.raise(from, mark);
        }
    }

    /// Takes note of the mark `from` stated.
    pub fn raise(&mut self, from: NodeId, mark: Mark) {
        if mark.is_zero() {
            return;
        }
        let m = self.marks.entry(from).or_default();
        let raised = m.max(mark);
        if raised != *m {
            *m = raised;
            self.changes += 1;
        }
    }

    /// How many times a mark rose: the file is due when this changed.
    pub fn changes(&self) -> u64 {
        self.changes
    }

    /// The contents of [`SEEN_FILE`].
    pub fn to_file(&self) -> Vec<u8> {
        let file = SeenFile {
            marks: self
                .marks
                .iter()
                .map(|(id, m)| (crate::cluster::bootstrap::format_id(*id), *m))
                .collect(),
        };
        serde_json::to_vec_pretty(&file).unwrap_or_default()
    }

    /// What [`SEEN_FILE`] in `data_dir` holds; empty when there is none.
    /// A file that does not decode is an error: the caller decides.
    pub fn load(data_dir: &std::path::Path) -> Result<Seen, String> {
        let path = data_dir.join(SEEN_FILE);
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Seen::default()),
            Err(e) => return Err(format!("cannot read {}: {e}", path.display())),
        };
        let file: SeenFile = serde_json::from_slice(&bytes)
            .map_err(|e| format!("cannot decode {}: {e}", path.display()))?;
        let mut seen = Seen::default();
        for (id, mark) in file.marks {
            let id = crate::cluster::bootstrap::parse_id(&id)
                .map_err(|e| format!("{}: {e}", path.display()))?;
            seen.raise(id, mark);
        }
        Ok(seen)
    }

    /// What was seen of `id` (zero: nothing).
    pub fn of(&self, id: NodeId) -> Mark {
        self.marks.get(&id).copied().unwrap_or_default()
    }

    /// Keeps the table bounded: past [`SEEN_BOUND`] entries, only members
    /// of `m` stay.
    pub fn bound(&mut self, m: &Membership) {
        if self.marks.len() > SEEN_BOUND {
            self.marks.retain(|id, _| m.members.contains_key(id));
            self.changes += 1;
        }
    }
}

/// A data directory found older than what its replica acknowledged.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Behind {
    /// The member that saw more.
    pub peer: String,
    pub seen: Mark,
    pub own: Mark,
}

impl std::fmt::Display for Behind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "this data directory is older than this replica's own past: {} saw it \
             acknowledge {}, but the directory holds {}",
            self.peer, self.seen, self.own
        )
    }
}

/// Compares what the directory holds with what peers saw; the first peer
/// that saw more, if any.
pub fn judge(own: Mark, answers: &[(String, Mark)]) -> Option<Behind> {
    answers
        .iter()
        .find(|(_, seen)| !own.covers(seen))
        .map(|(peer, seen)| Behind {
            peer: peer.clone(),
            seen: *seen,
            own,
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::paxos::{LogEntry, SnapshotMeta, Value};

    fn entry(b: Ballot) -> LogEntry {
        LogEntry {
            ballot: b,
            value: Value::Noop,
            chosen: false,
        }
    }

    #[test]
    fn a_recovered_mark_counts_the_snapshot_when_the_log_is_empty_above_it() {
        let mut r = Recovered {
            promised: Ballot::new(3, 1),
            ..Recovered::default()
        };
        r.snapshot = Some(SnapshotMeta {
            index: 40,
            membership: Membership::default(),
        });
        assert_eq!(Mark::of_recovered(&r).accepted_to, 40);
        r.entries.insert(41, entry(Ballot::new(3, 1)));
        r.entries.insert(45, entry(Ballot::new(3, 1)));
        let m = Mark::of_recovered(&r);
        assert_eq!(m.accepted_to, 45);
        assert_eq!(m.promised, Ballot::new(3, 1));
    }

    #[test]
    fn durable_records_raise_the_mark_and_commits_do_not() {
        let mut m = Mark::default();
        m.raise_by(&[
            Persist::Promise(Ballot::new(2, 7)),
            Persist::Entry(9, entry(Ballot::new(2, 7))),
            Persist::Commit(100),
            Persist::Promise(Ballot::new(1, 9)),
        ]);
        assert_eq!(
            m,
            Mark {
                promised: Ballot::new(2, 7),
                accepted_to: 9
            }
        );
    }

    #[test]
    fn only_promises_and_accepts_are_observed() {
        let mut seen = Seen::default();
        seen.observe(
            5,
            &Message::Accepted {
                ballot: Ballot::new(9, 1),
                indexes: vec![4, 12, 7],
                commit: 3,
            },
        );
        // An accept's ballot says nothing about the promise on disk.
        assert_eq!(seen.of(5).promised, Ballot::ZERO);
        assert_eq!(seen.of(5).accepted_to, 12);
        seen.observe(
            5,
            &Message::Promise {
                ballot: Ballot::new(4, 2),
                entries: vec![],
                commit: 0,
            },
        );
        seen.observe(
            5,
            &Message::Reject {
                ballot: Ballot::new(1, 1),
                promised: Ballot::new(50, 1),
                reason: crate::paxos::RejectReason::Outdated,
            },
        );
        seen.observe(
            5,
            &Message::HeartbeatAck {
                ballot: Ballot::new(60, 1),
                commit: 99,
            },
        );
        assert_eq!(
            seen.of(5),
            Mark {
                promised: Ballot::new(4, 2),
                accepted_to: 12
            }
        );
        assert!(seen.of(6).is_zero());
    }

    #[test]
    fn a_directory_is_judged_behind_when_any_peer_saw_more_of_either_part() {
        let own = Mark {
            promised: Ballot::new(5, 1),
            accepted_to: 100,
        };
        let fine = [
            ("b".to_string(), own),
            (
                "c".to_string(),
                Mark {
                    promised: Ballot::new(4, 3),
                    accepted_to: 90,
                },
            ),
        ];
        assert_eq!(judge(own, &fine), None);
        let more_log = Mark {
            promised: Ballot::new(5, 1),
            accepted_to: 101,
        };
        let found = judge(own, &[("c".to_string(), more_log)]).expect("behind");
        assert_eq!(found.peer, "c");
        assert!(found.to_string().contains("log up to index 101"), "{found}");
        let more_promise = Mark {
            promised: Ballot::new(5, 2),
            accepted_to: 0,
        };
        assert!(judge(own, &[("b".to_string(), more_promise)]).is_some());
    }

    #[test]
    fn the_table_comes_back_from_its_file_and_a_damaged_file_is_an_error() {
        let dir = tempfile::tempdir().expect("tempdir");
        assert!(Seen::load(dir.path()).expect("no file").marks.is_empty());
        let mut seen = Seen::default();
        let mark = Mark {
            promised: Ballot::new(3, 0xfeed),
            accepted_to: 77,
        };
        seen.raise(0x0123_4567_89ab_cdef, mark);
        assert_eq!(seen.changes(), 1);
        // The same mark again changes nothing, so nothing is written.
        seen.raise(0x0123_4567_89ab_cdef, mark);
        assert_eq!(seen.changes(), 1);
        crate::storage::replace_file(dir.path(), SEEN_FILE, &seen.to_file()).expect("write");
        let back = Seen::load(dir.path()).expect("load");
        assert_eq!(back.of(0x0123_4567_89ab_cdef), mark);
        std::fs::write(dir.path().join(SEEN_FILE), b"{\"marks\": {\"zz\": 1}}").expect("damage");
        let e = Seen::load(dir.path()).expect_err("damaged");
        assert!(e.contains(SEEN_FILE), "{e}");
    }

    #[test]
    fn the_table_forgets_non_members_only_past_its_bound() {
        let mut seen = Seen::default();
        let m = Membership::default();
        for id in 1..=(SEEN_BOUND as u64) {
            seen.raise(
                id,
                Mark {
                    promised: Ballot::ZERO,
                    accepted_to: 1,
                },
            );
        }
        seen.bound(&m);
        assert_eq!(seen.marks.len(), SEEN_BOUND);
        seen.raise(
            9999,
            Mark {
                promised: Ballot::ZERO,
                accepted_to: 1,
            },
        );
        seen.bound(&m);
        assert!(seen.marks.is_empty());
    }
}
