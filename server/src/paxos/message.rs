//! Messages between replicas. The transport (HTTP/JSON between peer ports, or
//! the simulator's network) carries them unchanged; the engine never assumes
//! delivery, order or uniqueness.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::log::LogEntry;
use super::types::{Ballot, Command, Index, InstanceValue, NodeId, RequestId};

/// Why an acceptor refused a prepare or accept.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum RejectReason {
    /// The acceptor has promised a higher ballot.
    Outdated,
    /// The acceptor holds an unexpired lease for another node (`0`: unknown
    /// holder, after a restart).
    Lease { holder: NodeId },
    /// The candidate is too far behind to be master: it must catch up first.
    Behind { commit: Index },
}

/// A master's answer to a [`Message::ReadIndexRequest`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ReadIndexAnswer {
    /// Reads that began before the request may be served once the
    /// follower has applied this index.
    Index(Index),
    /// The receiver is not master; `hint` is who is, as far as it knows.
    NotMaster { hint: Option<NodeId> },
    /// The master cannot answer now (no valid lease yet, or too many reads
    /// wait for a confirmation round): ask again shortly.
    NotNow,
}

/// A message from one replica to another.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Message {
    /// Phase 1a for every instance from `from_index` on.
    Prepare { ballot: Ballot, from_index: Index },
    /// Phase 1b: the acceptor promised `ballot`; `entries` are every slot it
    /// holds at or after the prepare's `from_index`.
    Promise {
        ballot: Ballot,
        entries: Vec<(Index, LogEntry)>,
        commit: Index,
    },
    /// A prepare or accept at `ballot` was refused.
    Reject {
        ballot: Ballot,
        promised: Ballot,
        reason: RejectReason,
    },
    /// Phase 2a for a run of instances, with the master's commit index.
    Accept {
        ballot: Ballot,
        entries: Vec<(Index, InstanceValue)>,
        commit: Index,
    },
    /// Phase 2b: these instances were accepted at `ballot`.
    Accepted {
        ballot: Ballot,
        indexes: Vec<Index>,
        commit: Index,
    },
    /// The master's periodic proof of life and commit index.
    Heartbeat { ballot: Ballot, commit: Index },
    /// A follower's answer to a heartbeat, with how far it has learned.
    HeartbeatAck { ballot: Ballot, commit: Index },
    /// Asks for chosen values from `from_index` on.
    CatchupRequest { from_index: Index },
    /// The master at `ballot` handed its mastership to the receiver, whose
    /// lease the acceptors now honour: run for master now.
    TimeoutNow { ballot: Ballot },
    /// Chosen values, contiguous from the requested index.
    Catchup {
        entries: Vec<(Index, InstanceValue)>,
        commit: Index,
    },
    /// Quorum read mode: the master at `ballot` asks whether the receiver
    /// still knows no higher ballot; round `seq` confirms the reads that
    /// arrived before it started.
    ReadProbe { ballot: Ballot, seq: u64 },
    /// The receiver had promised no ballot above `ballot` when it answered
    /// round `seq`.
    ReadAck { ballot: Ballot, seq: u64 },
    /// A follower asks the master for a read index: its linearizable reads
    /// that arrived before this request wait for it. `seq` names the request
    /// in the answer.
    ReadIndexRequest { seq: u64 },
    /// The answer to the sender's [`Message::ReadIndexRequest`] `seq`.
    ReadIndexAnswer { seq: u64, answer: ReadIndexAnswer },
    /// Client writes that reached a follower, for the master to propose. No
    /// answer comes back for the ones it takes: the follower answers its
    /// clients when it applies them itself (their request ids name them).
    /// A follower that has applied everything the master reported committed
    /// and still not seen a write sends it again, under the same request
    /// id; a master proposes no second copy while the first is queued or in
    /// flight, and the state machine applies a later copy as a duplicate.
    Forward { cmds: Vec<Command> },
    /// The receiver did not take these forwarded writes: it is not master
    /// (`hint`: who is, as far as it knows), or its queue is full (`busy`).
    /// A master that stops before proposing writes it took sends them back
    /// the same way (not master), so that the follower retries at once.
    ForwardRefused {
        ids: Vec<RequestId>,
        hint: Option<NodeId>,
        busy: bool,
    },
}

impl Message {
    /// Whether this message may leave before the records of the same
    /// [`Ready`](super::Ready) are durable.
    ///
    /// Only a master's phase 2 and the learner's traffic qualify: an
    /// `Accept` proposes a value, a `Heartbeat` carries commit knowledge,
    /// `Catchup`/`CatchupRequest` move values that are already chosen (so
    /// durable on a majority). None of them states anything about this
    /// node's acceptor state, so losing this node's records in a crash
    /// cannot contradict them. What the master records alongside (its own
    /// acceptance of the values it proposes) counts towards a quorum only
    /// together with a peer's `Accepted`, which can only be handled after
    /// this output's records are durable. Sending them first lets the
    /// master's fsync overlap the round trip to its acceptors, as etcd's
    /// leader does with its own log append.
    ///
    /// Everything an acceptor says (`Promise`, `Accepted`, `Reject`,
    /// `HeartbeatAck`) and everything that starts or hands over mastership
    /// (`Prepare`, `TimeoutNow`) still waits for the records.
    ///
    /// `ReadIndexRequest` states nothing; `ReadIndexAnswer` states a commit
    /// index (chosen values, durable on a majority) under this master's
    /// lease or a confirmation round, neither of which is on its disk.
    ///
    /// `Forward` and `ForwardRefused` carry client commands that are not
    /// chosen yet and say nothing about any acceptor, so they qualify.
    ///
    /// `ReadProbe` and `ReadAck` qualify too: a probe states nothing about
    /// the sender's acceptor, and an ack states that the acceptor had
    /// promised nothing above the probe's ballot when it answered, which
    /// its memory tells at least as well as its disk (a promise is sent only
    /// once durable, and one raised earlier in the same turn already makes
    /// it refuse). See [`super::quorum_read`].
    pub fn may_precede_persist(&self) -> bool {
        matches!(
            self,
            Message::Accept { .. }
                | Message::Heartbeat { .. }
                | Message::CatchupRequest { .. }
                | Message::Catchup { .. }
                | Message::ReadProbe { .. }
                | Message::ReadAck { .. }
                | Message::ReadIndexRequest { .. }
                | Message::ReadIndexAnswer { .. }
                | Message::Forward { .. }
                | Message::ForwardRefused { .. }
        )
    }
}

/// A message with its addressing.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Envelope {
    pub from: NodeId,
    pub to: NodeId,
    pub msg: Message,
}

impl From<Result<Index, super::ReadError>> for ReadIndexAnswer {
    fn from(r: Result<Index, super::ReadError>) -> Self {
        match r {
            Ok(i) => ReadIndexAnswer::Index(i),
            Err(super::ReadError::NotMaster { hint }) => ReadIndexAnswer::NotMaster { hint },
            Err(super::ReadError::NoLease | super::ReadError::Busy(_)) => ReadIndexAnswer::NotNow,
        }
    }
}

impl ReadIndexAnswer {
    /// The answer as the asking replica reports it to its caller; "not
    /// now" reads as no lease (the caller asks again either way).
    pub fn into_result(self) -> Result<Index, super::ReadError> {
        match self {
            ReadIndexAnswer::Index(i) => Ok(i),
            ReadIndexAnswer::NotMaster { hint } => Err(super::ReadError::NotMaster { hint }),
            ReadIndexAnswer::NotNow => Err(super::ReadError::NoLease),
        }
    }
}
