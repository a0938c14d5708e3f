//! What the engine asks its caller to make durable, and what it gets back after
//! a restart.
//!
//! The contract, as in etcd's raft: every [`Persist`] record in a step's output
//! must be durable (fsync) before any message of that same output is sent and
//! before chosen values are applied or clients answered. A restarted node hands
//! the engine a [`Recovered`] built from exactly those records.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::types::{Ballot, Index, InstanceValue, Membership};

/// One slot of the replicated log, as an acceptor/learner holds it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct LogEntry {
    /// The ballot this value was accepted at (meaningless once `chosen`).
    pub ballot: Ballot,
    pub value: InstanceValue,
    /// The value is known to be chosen.
    pub chosen: bool,
}

/// A durable record the engine needs written before its messages leave.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Persist {
    /// The acceptor promised not to accept anything below this ballot.
    Promise(Ballot),
    /// The log slot at this index now holds this entry (accepted or learned).
    Entry(Index, LogEntry),
    /// Every instance up to and including this index is chosen and held.
    Commit(Index),
}

/// The state machine image a snapshot carries, with the log position it reflects.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct SnapshotMeta {
    /// The last instance whose effects the snapshot contains.
    pub index: Index,
    /// The configuration in force at `index`.
    pub membership: Membership,
}

/// Everything that survives a crash, handed to the engine at start-up.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Recovered {
    pub promised: Ballot,
    /// Highest index known chosen with every earlier one.
    pub commit: Index,
    /// Log slots after the snapshot.
    pub entries: BTreeMap<Index, LogEntry>,
    /// The latest snapshot, if the log was ever compacted.
    pub snapshot: Option<SnapshotMeta>,
}
