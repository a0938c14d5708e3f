//! The vocabulary of the engine: node ids, ballots, log indexes, commands and
//! the values that instances choose.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::kv::Op;

/// A node's identity inside the engine. The cluster layer derives it from the
/// node's name ([`node_id_from_name`]) so that every replica agrees on it
/// without coordination.
pub type NodeId = u64;

/// A Paxos instance number. Instance `0` is never used; the log starts at 1.
pub type Index = u64;

/// Stable 64-bit id for a node name (FNV-1a). Collisions are checked when a
/// member is added.
pub fn node_id_from_name(name: &str) -> NodeId {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in name.as_bytes() {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    // Keep 0 free so it can mean "nobody".
    h.max(1)
}

/// A proposal number: totally ordered by round, then by node id, so two
/// proposers never use the same ballot.
#[derive(
    Clone,
    Copy,
    Debug,
    Default,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    Serialize,
    Deserialize,
    ToSchema,
)]
pub struct Ballot {
    pub round: u64,
    pub node: NodeId,
}

impl Ballot {
    /// The ballot below every real ballot.
    pub const ZERO: Ballot = Ballot { round: 0, node: 0 };

    pub fn new(round: u64, node: NodeId) -> Self {
        Ballot { round, node }
    }
}

impl std::fmt::Display for Ballot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{:x}", self.round, self.node)
    }
}

/// Identifies one client request across retries and forwards, so a retried
/// command is applied at most once.
#[derive(
    Clone,
    Copy,
    Debug,
    Default,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    Serialize,
    Deserialize,
    ToSchema,
)]
pub struct RequestId {
    /// A random id chosen by the client (or by the node on its behalf).
    pub client: u64,
    /// Increases with every new request of that client.
    pub seq: u64,
}

/// A client command as it travels through the log.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Command {
    pub id: RequestId,
    pub op: Op,
}

impl Command {
    pub fn size_hint(&self) -> usize {
        16 + self.op.size_hint()
    }
}

/// Whether a member takes part in quorums.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Votes in phase 1 and phase 2 quorums.
    Voter,
    /// Receives the log but is not counted; becomes a voter once promoted.
    Learner,
}

/// One member of the cluster configuration.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Member {
    /// Human name (the pod name in Kubernetes).
    pub name: String,
    /// Where its peer API listens (opaque to the engine).
    pub addr: String,
    pub role: Role,
}

/// A cluster configuration, as chosen through the log.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Membership {
    /// By node id; in JSON the ids are object keys, so decimal strings.
    #[schema(value_type = BTreeMap<String, Member>)]
    pub members: BTreeMap<NodeId, Member>,
}

impl Membership {
    pub fn voters(&self) -> impl Iterator<Item = NodeId> + '_ {
        self.members
            .iter()
            .filter(|(_, m)| m.role == Role::Voter)
            .map(|(id, _)| *id)
    }

    /// A member's name for people to read (logs, errors), or its id in hex
    /// when it is not a member of this configuration.
    pub fn name_of(&self, id: NodeId) -> String {
        match self.members.get(&id) {
            Some(m) => m.name.clone(),
            None => format!("{id:016x}"),
        }
    }

    pub fn is_voter(&self, id: NodeId) -> bool {
        self.members.get(&id).is_some_and(|m| m.role == Role::Voter)
    }

    pub fn voter_count(&self) -> usize {
        self.voters().count()
    }

    /// Number of voters that make a majority.
    pub fn quorum(&self) -> usize {
        self.voter_count() / 2 + 1
    }
}

/// A requested change of membership. One change at a time goes through the
/// log; see the `membership` module for why that is safe.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ConfChange {
    AddLearner {
        id: NodeId,
        name: String,
        addr: String,
    },
    Promote {
        id: NodeId,
    },
    Remove {
        id: NodeId,
    },
}

/// [`Value`] under the name the peer API's document gives it: the OpenAPI
/// generator takes any type named `Value` for "any JSON value", so fields
/// that travel to peers name it through this alias.
pub type InstanceValue = Value;

/// What one Paxos instance chooses.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
#[schema(as = InstanceValue)]
pub enum Value {
    /// Fills a gap when a new master finds an instance with no accepted value.
    Noop,
    /// A master lease for `holder`, `duration_ms` long, timed by each acceptor
    /// from the moment it accepts this value.
    Lease { holder: NodeId, duration_ms: u64 },
    // Shared, not copied: the master keeps a batch in flight, puts it in an
    // accept to every peer, logs it and hands it to the state machine, and
    // a deep copy for each of those cost the engine thread more allocator
    // time than the state machine's own work (write-64: about a sixth of
    // that thread's samples). On the wire and on disk an `Arc<Vec<_>>` is
    // the same plain sequence a `Vec` is.
    /// A batch of client commands.
    Batch(Arc<Vec<Command>>),
    /// The complete new configuration.
    Config(Membership),
}

impl Value {
    pub fn size_hint(&self) -> usize {
        match self {
            Value::Noop | Value::Lease { .. } => 16,
            Value::Batch(cmds) => 8 + cmds.iter().map(Command::size_hint).sum::<usize>(),
            Value::Config(m) => {
                8 + m
                    .members
                    .values()
                    .map(|m| 16 + m.name.len() + m.addr.len())
                    .sum::<usize>()
            }
        }
    }
}
