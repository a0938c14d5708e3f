//! One replica's share of Multi-Paxos: acceptor, proposer (master) and learner
//! in one value, driven by [`Replica::step`], [`Replica::tick`] and
//! [`Replica::propose`], drained with [`Replica::take_ready`].
//!
//! The replica never performs I/O and never reads a clock: time arrives as the
//! `now` argument (a monotonic reading of the caller's clock), randomness from
//! a seed in the config. The caller must make every [`Persist`] record of a
//! [`Ready`] durable before sending its messages and before applying its
//! committed values; that is what makes a promise or an accept a promise.
//!
//! # Roles
//!
//! - *Acceptor*: holds `promised` and the log slots; answers prepares and
//!   accepts; times master leases (see [`super::lease`]).
//! - *Proposer*: a follower that hears from no master runs phase 1 once for
//!   every instance from its first unchosen one; with a quorum of promises it
//!   re-proposes the highest-ballot value found for each slot (a no-op for
//!   empty ones), then proposes its lease. From then on it runs phase 2 only:
//!   it packs queued commands into batches and keeps up to `window` instances
//!   in flight.
//! - *Learner*: an instance is chosen when a quorum accepted it at one ballot.
//!   The master learns that from `Accepted` replies and spreads its commit index
//!   on accepts and heartbeats. A follower marks a slot chosen when it holds the
//!   value accepted at the very ballot of the master that reports the commit
//!   (a master proposes one value per slot per ballot); anything else it fetches
//!   with a catch-up request, or, if the peer compacted that far, by snapshot.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::time::Duration;

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

use super::config::{EngineConfig, ReadMode};
use super::log::{LogEntry, Persist, Recovered, SnapshotMeta};
use super::message::{Envelope, Message, ReadIndexAnswer, RejectReason};
use super::types::{Ballot, Command, ConfChange, Index, Membership, NodeId, RequestId, Value};

/// The bit of the read tokens a master uses for its followers' read-index
/// requests; the tokens callers pass to [`Replica::request_read`] must not
/// have it.
pub const REMOTE_READ_TOKEN: u64 = 1 << 63;

/// Most commands in one [`Message::Forward`].
pub const MAX_FORWARD_COMMANDS: usize = 1024;
/// Most bytes of commands ([`Command::size_hint`]) in one
/// [`Message::Forward`] beyond its first command, so that a line of the peer
/// stream stays far below its limit whatever the value sizes.
pub const MAX_FORWARD_BYTES: usize = 4 << 20;
/// Most bytes of commands ([`Command::size_hint`]) a replica keeps to
/// forward again (see [`EngineConfig::forward_retry`]); a forward beyond
/// it is sent once, as every forward was before, and its caller hears of a
/// loss at its deadline.
pub const MAX_UNANSWERED_FORWARD_BYTES: usize = 32 << 20;

/// Panics with a message when a safety invariant is broken. Continuing after
/// that would risk acknowledging or applying something that was not chosen.
macro_rules! invariant {
    ($cond:expr, $($arg:tt)+) => {
        if !$cond {
            panic!("paxos invariant violated: {}", format!($($arg)+));
        }
    };
}

/// Why a proposal was not taken.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ProposeError {
    #[error("this node is not the master (master: {hint:?})")]
    NotMaster { hint: Option<NodeId> },
    #[error("the proposal queue is full ({0} commands); retry later")]
    Busy(usize),
    #[error("a membership change is already in progress")]
    ChangeInProgress,
    #[error("invalid membership change: {0}")]
    InvalidChange(String),
}

/// Why a master does not hand mastership over (see [`Replica::hand_off`]).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum HandoffError {
    #[error("this node is not the master (master: {hint:?})")]
    NotMaster { hint: Option<NodeId> },
    #[error("node {0:016x} is the master already")]
    AlreadyMaster(NodeId),
    #[error("node {0:016x} is not a member")]
    NotMember(NodeId),
    #[error("node {0:016x} is a learner; only a voter can be master")]
    NotVoter(NodeId),
    #[error("node {0:016x} has not answered the master recently; it could not take over")]
    Unreachable(NodeId),
    #[error("node {id:016x} is behind (at {theirs} of {commit}); retry once it has caught up")]
    Behind {
        id: NodeId,
        theirs: Index,
        commit: Index,
    },
    #[error("a mastership handoff is already in progress")]
    InProgress,
    #[error("no other voter is reachable and caught up")]
    NoCandidate,
}

/// Why a linearizable read cannot be served here now.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ReadError {
    #[error("this node is not the master (master: {hint:?})")]
    NotMaster { hint: Option<NodeId> },
    #[error("the master does not hold a valid lease yet")]
    NoLease,
    #[error("too many reads are waiting for a confirmation round ({0}); retry later")]
    Busy(usize),
}

/// What the caller must do after feeding the replica, in this order:
/// persist, send, apply. Messages for which
/// [`Message::may_precede_persist`] holds may be sent before persisting,
/// but nothing else this replica is fed may be handled before the records
/// are durable.
///
/// Messages addressed to this replica itself are its own votes (a
/// candidate's promise, a master's acceptance of what it proposes): the
/// caller feeds them back with [`Replica::step`] once the records are
/// durable, never earlier and never through the network (they must not be
/// lost). A vote counted before it is durable could be forgotten in a
/// crash after it helped choose a value.
#[derive(Debug, Default)]
pub struct Ready {
    /// Records to make durable before anything else in this value.
    pub persist: Vec<Persist>,
    /// Messages to send once `persist` is durable (some may go earlier: see
    /// [`Message::may_precede_persist`]).
    pub messages: Vec<Envelope>,
    /// Chosen values, contiguous and in log order, to apply to the state machine.
    pub committed: Vec<(Index, Value)>,
    /// Commands of this node's clients that were queued but never proposed,
    /// because this node stopped being master. They will never be applied
    /// through this node's proposal. (Forwarded ones go back to their
    /// follower as `forward_refused`.)
    pub rejected: Vec<Command>,
    /// Peers that need a snapshot: this node compacted the log they are missing.
    pub send_snapshot: Vec<NodeId>,
    /// Answers to [`Replica::request_read`], by the caller's token: the index
    /// to apply before reading, or why the read cannot be served here.
    pub reads: Vec<(u64, Result<Index, ReadError>)>,
    /// Commands this node forwarded ([`Replica::forward`]) that the node they
    /// went to did not take, and why. Taken ones are answered at apply.
    pub refused: Vec<(RequestId, ProposeError)>,
    /// Forwarded commands sent again among `messages` (see
    /// [`Replica::resend_forwards`]), for the caller's metrics.
    pub forwards_sent_again: usize,
}

impl Ready {
    pub fn is_empty(&self) -> bool {
        self.persist.is_empty()
            && self.messages.is_empty()
            && self.committed.is_empty()
            && self.rejected.is_empty()
            && self.send_snapshot.is_empty()
            && self.reads.is_empty()
            && self.refused.is_empty()
    }
}

/// The lease an acceptor honours: it refuses other proposers until `until`.
#[derive(Clone, Copy, Debug)]
struct AcceptorLease {
    /// `0` when unknown (after a restart).
    holder: NodeId,
    until: Duration,
}

#[derive(Debug)]
struct Candidate {
    ballot: Ballot,
    from_index: Index,
    promises: BTreeMap<NodeId, Vec<(Index, LogEntry)>>,
    /// The configuration whose quorum the promises so far are counted in.
    counting: Membership,
    started: Duration,
    last_sent: Duration,
}

#[derive(Debug)]
struct Inflight {
    value: Value,
    acks: BTreeSet<NodeId>,
    sent_at: Duration,
}

/// A command waiting for an instance, and the follower that forwarded it
/// (`None`: a client of this node's).
#[derive(Debug)]
struct Queued {
    cmd: Command,
    from: Option<NodeId>,
}

/// A command this replica forwarded and has not seen applied or refused.
#[derive(Debug)]
struct Unanswered {
    to: NodeId,
    cmd: Command,
    first_sent: Duration,
    last_sent: Duration,
    /// Copies sent so far: each waits twice as long as the one before
    /// (up to eight times `forward_retry`), so a master that is slow, not
    /// lossy, is not sent every pending write again every second.
    copies: u32,
}

#[derive(Debug)]
struct Master {
    ballot: Ballot,
    /// Index of the first lease this master proposed; reads are served only
    /// once it is committed (everything an earlier master chose is below it).
    barrier: Index,
    next_index: Index,
    inflight: BTreeMap<Index, Inflight>,
    queue: VecDeque<Queued>,
    /// When each pending lease proposal started (keyed by its index).
    lease_starts: BTreeMap<Index, Duration>,
    /// The master's own lease: valid while `now < lease_until`.
    lease_until: Option<Duration>,
    /// When the newest lease proposal started.
    last_lease_start: Duration,
    last_heartbeat: Duration,
    /// Highest commit index each peer reported.
    peer_commit: BTreeMap<NodeId, Index>,
    /// When each peer last answered this master.
    peer_seen: BTreeMap<NodeId, Duration>,
    /// When this node became master.
    since: Duration,
    /// Mastership is being handed to this node: the handoff lease was
    /// proposed at `index` at time `since`; no new commands are taken.
    transfer: Option<Transfer>,
    /// A membership change waits for the instances in flight to be chosen:
    /// until then no new batch is proposed (see `propose_change`).
    drain_until: Option<Duration>,
    /// Quorum read mode: reads waiting for a confirmation round (boxed:
    /// empty in lease mode).
    reads: Box<QuorumReads>,
    /// Request ids of forwarded commands queued, in flight or chosen but
    /// not yet committed here: a copy of one forwarded again (see
    /// [`EngineConfig::forward_retry`]) is not proposed a second time.
    /// Bounded by the queue and the window.
    forwarded: BTreeSet<RequestId>,
}

/// Reads waiting for a confirmation round (see [`super::quorum_read`]).
#[derive(Debug, Default)]
struct QuorumReads {
    /// Reads that arrived after the round in flight started.
    waiting: Vec<u64>,
    round: Option<ReadRound>,
    /// The last round's number.
    seq: u64,
}

impl QuorumReads {
    /// Every read waiting or in a round. The round count stays: a round
    /// number is never reused at one ballot, so a late ack cannot confirm a
    /// later round.
    fn drain(&mut self) -> Vec<u64> {
        let mut all = self.round.take().map(|r| r.reads).unwrap_or_default();
        all.append(&mut self.waiting);
        all
    }

    fn len(&self) -> usize {
        self.waiting.len() + self.round.as_ref().map_or(0, |r| r.reads.len())
    }
}

#[derive(Debug)]
struct ReadRound {
    seq: u64,
    started: Duration,
    /// Who acknowledged this round at the master's ballot (the master too).
    acks: BTreeSet<NodeId>,
    /// The reads this round confirms: all arrived before it started.
    reads: Vec<u64>,
}

#[derive(Clone, Copy, Debug)]
struct Transfer {
    target: NodeId,
    index: Index,
    since: Duration,
}

#[derive(Debug)]
enum State {
    Follower,
    Candidate(Candidate),
    Master(Master),
}

/// A public view of the replica, for status pages and tests.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Status {
    pub id: NodeId,
    pub is_master: bool,
    pub master: Option<NodeId>,
    pub ballot: Ballot,
    pub commit: Index,
    /// Every slot at or below it is chosen, as far as this replica knows:
    /// its own `commit` or the highest a master reported to it, whichever
    /// is higher (a lagging follower knows of more chosen slots than it
    /// holds).
    pub known_chosen: Index,
    pub last_index: Index,
    pub first_index: Index,
    pub membership: Membership,
    pub lease_remaining: Option<Duration>,
}

/// One replica of the Multi-Paxos log.
#[derive(Debug)]
pub struct Replica {
    cfg: EngineConfig,
    rng: SmallRng,

    // acceptor
    promised: Ballot,
    log: BTreeMap<Index, LogEntry>,
    lease: Option<AcceptorLease>,

    // learner
    /// Every slot `<= commit` is chosen and known here (or compacted).
    commit: Index,
    /// Last index handed out in `Ready::committed`.
    emitted: Index,
    /// Log slots `<= snapshot_index` were compacted into a snapshot.
    snapshot_index: Index,
    catchup_sent: Option<Duration>,

    // membership: the latest configuration in the log rules
    base_membership: Membership,
    configs: BTreeMap<Index, Membership>,

    // proposer
    state: State,
    /// False once this replica must never run for master (its state is
    /// known to be wrong).
    candidacy: bool,
    highest_round: u64,
    known_master: Option<NodeId>,
    last_heard: Duration,
    election_deadline: Duration,
    /// The latest `now` this replica was fed. Work left for
    /// [`Replica::take_ready`] (packing queued commands into instances,
    /// starting a read round) is done at this time.
    last_now: Duration,
    /// Commands for another node to propose ([`Replica::forward`]), by that
    /// node, sent at the next [`Replica::take_ready`].
    forwards: BTreeMap<NodeId, Vec<Command>>,
    /// Forwarded commands not yet applied here nor refused, sent again
    /// until they are (see [`Replica::resend_forwards`]).
    unanswered: BTreeMap<RequestId, Unanswered>,
    /// The [`Command::size_hint`]s of `unanswered`, bounded by
    /// [`MAX_UNANSWERED_FORWARD_BYTES`].
    unanswered_bytes: usize,
    /// The highest commit index a master has reported to this replica,
    /// and when it last reported one.
    master_commit: Index,
    master_report_at: Duration,
    /// When [`Replica::resend_forwards`] next looks at `unanswered`.
    next_forward_scan: Duration,
    /// Followers' read-index requests this master is answering, by the
    /// token it asked itself with (see [`REMOTE_READ_TOKEN`]): who asked,
    /// and their `seq`. Bounded; the oldest are forgotten first.
    remote_reads: BTreeMap<u64, (NodeId, u64)>,
    next_remote_read: u64,

    ready: Ready,
}

impl Replica {
    /// Builds a replica from what survived on disk. `initial` is the bootstrap
    /// configuration, used only when neither the snapshot nor the log holds one
    /// (a brand-new node of a brand-new cluster; a joining node passes an empty
    /// one and learns its configuration from the master).
    pub fn new(
        cfg: EngineConfig,
        recovered: Recovered,
        initial: Membership,
        now: Duration,
    ) -> Self {
        let rng = SmallRng::seed_from_u64(cfg.seed);
        let (snapshot_index, base_membership) = match recovered.snapshot {
            Some(SnapshotMeta { index, membership }) => (index, membership),
            None => (0, initial),
        };
        let commit = recovered.commit.max(snapshot_index);
        let log: BTreeMap<Index, LogEntry> = recovered
            .entries
            .into_iter()
            .filter(|(i, _)| *i > snapshot_index)
            .map(|(i, mut e)| {
                e.chosen |= i <= commit;
                (i, e)
            })
            .collect();
        let configs = log
            .iter()
            .filter_map(|(i, e)| match &e.value {
                Value::Config(m) => Some((*i, m.clone())),
                _ => None,
            })
            .collect();
        // A restarted acceptor may have accepted a lease it no longer
        // remembers the timing of: honour an unknown holder for a full lease.
        let lease_len = log
            .values()
            .filter_map(|e| match e.value {
                Value::Lease { duration_ms, .. } => Some(Duration::from_millis(duration_ms)),
                _ => None,
            })
            .max()
            .unwrap_or(Duration::ZERO)
            .max(cfg.lease);
        let mut r = Replica {
            highest_round: recovered.promised.round,
            promised: recovered.promised,
            log,
            lease: Some(AcceptorLease {
                holder: 0,
                until: now + lease_len,
            }),
            commit,
            emitted: snapshot_index,
            snapshot_index,
            catchup_sent: None,
            base_membership,
            configs,
            state: State::Follower,
            candidacy: true,
            known_master: None,
            last_heard: now,
            election_deadline: now,
            last_now: now,
            forwards: BTreeMap::new(),
            unanswered: BTreeMap::new(),
            unanswered_bytes: 0,
            master_commit: 0,
            master_report_at: Duration::ZERO,
            next_forward_scan: Duration::ZERO,
            remote_reads: BTreeMap::new(),
            next_remote_read: 0,
            ready: Ready::default(),
            rng,
            cfg,
        };
        r.reset_election_timer(now);
        r.advance_commit();
        r
    }

    pub fn id(&self) -> NodeId {
        self.cfg.id
    }

    pub fn config(&self) -> &EngineConfig {
        &self.cfg
    }

    /// The configuration in force: the latest one in the log, chosen or not.
    pub fn membership(&self) -> &Membership {
        self.configs
            .values()
            .next_back()
            .unwrap_or(&self.base_membership)
    }

    pub fn commit_index(&self) -> Index {
        self.commit
    }

    pub fn is_master(&self) -> bool {
        matches!(self.state, State::Master(_))
    }

    /// The node this replica believes is master, if any.
    pub fn master_hint(&self) -> Option<NodeId> {
        if self.is_master() {
            Some(self.cfg.id)
        } else {
            self.known_master
        }
    }

    /// True while this node is master and its own lease is valid. Two nodes
    /// never both answer true at the same real time (see [`super::lease`]).
    pub fn lease_valid(&self, now: Duration) -> bool {
        match &self.state {
            State::Master(m) => m.lease_until.is_some_and(|u| now < u),
            _ => false,
        }
    }

    pub fn status(&self, now: Duration) -> Status {
        let (ballot, lease_remaining) = match &self.state {
            State::Master(m) => (
                m.ballot,
                m.lease_until
                    .and_then(|u| u.checked_sub(now))
                    .filter(|d| !d.is_zero()),
            ),
            State::Candidate(c) => (c.ballot, None),
            State::Follower => (self.promised, None),
        };
        Status {
            id: self.cfg.id,
            is_master: self.is_master(),
            master: self.master_hint(),
            ballot,
            commit: self.commit,
            known_chosen: self.commit.max(self.master_commit),
            last_index: self.last_index(),
            first_index: self.snapshot_index + 1,
            membership: self.membership().clone(),
            lease_remaining,
        }
    }

    /// Whether [`Replica::take_ready`] has anything to hand out.
    pub fn has_ready(&self) -> bool {
        !self.ready.is_empty()
            || self.can_pump()
            || self.can_start_read_round()
            || !self.forwards.is_empty()
    }

    /// Hands out everything the caller must now persist, send and apply.
    ///
    /// Commands queued by [`Replica::propose`] since the last call are packed
    /// into instances here, so everything the caller fed in one turn travels
    /// in as few instances (one fsync and one message per peer each) as the
    /// window allows.
    pub fn take_ready(&mut self) -> Ready {
        if self.can_pump() {
            self.pump(self.last_now);
        }
        if self.can_start_read_round() {
            self.start_read_round(self.last_now);
        }
        self.send_forwards();
        self.answer_remote_reads();
        std::mem::take(&mut self.ready)
    }

    /// Sends the answers to followers' read-index requests out of the read
    /// answers, leaving the local callers' ones.
    fn answer_remote_reads(&mut self) {
        if !self
            .ready
            .reads
            .iter()
            .any(|(t, _)| t & REMOTE_READ_TOKEN != 0)
        {
            return;
        }
        let (remote, local) = std::mem::take(&mut self.ready.reads)
            .into_iter()
            .partition(|(t, _)| t & REMOTE_READ_TOKEN != 0);
        self.ready.reads = local;
        for (token, answer) in remote {
            if let Some((to, seq)) = self.remote_reads.remove(&token) {
                let answer = ReadIndexAnswer::from(answer);
                self.send(to, Message::ReadIndexAnswer { seq, answer });
            }
        }
    }

    /// A follower's read-index request: asked of this replica as its own
    /// read under a token of its own, answered at [`Replica::take_ready`].
    fn on_read_index_request(&mut self, now: Duration, from: NodeId, seq: u64) {
        let token = REMOTE_READ_TOKEN | self.next_remote_read;
        self.next_remote_read = (self.next_remote_read + 1) & !REMOTE_READ_TOKEN;
        match self.request_read(now, token) {
            Ok(()) => {
                self.remote_reads.insert(token, (from, seq));
                while self.remote_reads.len() > self.cfg.max_queue.max(1) {
                    self.remote_reads.pop_first();
                }
            }
            Err(e) => {
                let answer = ReadIndexAnswer::from(Err(e));
                self.send(from, Message::ReadIndexAnswer { seq, answer });
            }
        }
    }

    /// Asks master `to` for a read index for this node's reads: the answer
    /// comes out of [`Replica::take_ready`] in [`Ready::reads`] under
    /// `token`, if one comes (a lost request or answer gets none: the
    /// caller asks again). A master answers its own, as
    /// [`Replica::request_read`].
    pub fn request_remote_read(
        &mut self,
        now: Duration,
        to: NodeId,
        token: u64,
    ) -> Result<(), ReadError> {
        if self.is_master() || to == self.cfg.id {
            return self.request_read(now, token);
        }
        if self.known_master.is_some_and(|m| m != to) {
            return Err(ReadError::NotMaster {
                hint: self.known_master,
            });
        }
        self.last_now = self.last_now.max(now);
        self.send(to, Message::ReadIndexRequest { seq: token });
        Ok(())
    }

    /// Sends the commands [`Replica::forward`] queued since the last call,
    /// one message per target unless they exceed [`MAX_FORWARD_COMMANDS`]
    /// or [`MAX_FORWARD_BYTES`].
    fn send_forwards(&mut self) {
        for (to, cmds) in std::mem::take(&mut self.forwards) {
            let mut chunk = Vec::new();
            let mut bytes = 0;
            for cmd in cmds {
                let size = cmd.size_hint();
                if !chunk.is_empty()
                    && (chunk.len() >= MAX_FORWARD_COMMANDS || bytes + size > MAX_FORWARD_BYTES)
                {
                    self.send(
                        to,
                        Message::Forward {
                            cmds: std::mem::take(&mut chunk),
                        },
                    );
                    bytes = 0;
                }
                bytes += size;
                chunk.push(cmd);
            }
            if !chunk.is_empty() {
                self.send(to, Message::Forward { cmds: chunk });
            }
        }
    }

    /// Whether queued commands wait for an instance the window has room for.
    fn can_pump(&self) -> bool {
        match &self.state {
            State::Master(m) => {
                !m.queue.is_empty()
                    && m.transfer.is_none()
                    && m.next_index <= self.commit + self.cfg.window
                    && m.drain_until.is_none_or(|t| self.last_now >= t)
            }
            _ => false,
        }
    }

    fn last_index(&self) -> Index {
        self.log
            .keys()
            .next_back()
            .copied()
            .unwrap_or(self.snapshot_index)
            .max(self.snapshot_index)
    }

    fn send(&mut self, to: NodeId, msg: Message) {
        self.ready.messages.push(Envelope {
            from: self.cfg.id,
            to,
            msg,
        });
    }

    fn peers(&self) -> Vec<NodeId> {
        self.membership()
            .members
            .keys()
            .copied()
            .filter(|id| *id != self.cfg.id)
            .collect()
    }

    fn reset_election_timer(&mut self, now: Duration) {
        self.election_deadline = now + self.cfg.election_timeout + self.election_jitter();
    }

    /// A random time in `[0, election_timeout)`.
    fn election_jitter(&mut self) -> Duration {
        let base = self.cfg.election_timeout;
        Duration::from_micros(self.rng.random_range(0..base.as_micros().max(1) as u64))
    }

    // ---------------------------------------------------------------- log

    /// Writes a slot (durably, through `persist`) and keeps the config index.
    fn write_slot(&mut self, index: Index, entry: LogEntry) {
        if index <= self.snapshot_index {
            return;
        }
        match &entry.value {
            Value::Config(m) => {
                self.configs.insert(index, m.clone());
            }
            _ => {
                self.configs.remove(&index);
            }
        }
        self.ready
            .persist
            .push(Persist::Entry(index, entry.clone()));
        self.log.insert(index, entry);
    }

    /// Records that `value` is chosen at `index`.
    fn learn(&mut self, index: Index, value: Value) {
        // A master whose own proposal lost this instance is stale: a higher
        // ballot chose it. It must stop before it advertises a commit index
        // covering it, which followers would read as "my value at my ballot".
        if let State::Master(m) = &self.state
            && m.inflight.get(&index).is_some_and(|f| f.value != value)
        {
            self.step_down(None);
        }
        if index <= self.snapshot_index || index <= self.commit {
            if let Some(e) = self.log.get(&index) {
                invariant!(
                    e.value == value,
                    "instance {index} was chosen as {:?} but is now learned as {:?}",
                    e.value,
                    value
                );
            }
            return;
        }
        match self.log.get_mut(&index) {
            Some(e) if e.chosen => {
                invariant!(
                    e.value == value,
                    "instance {index} was chosen as {:?} but is now learned as {:?}",
                    e.value,
                    value
                );
            }
            Some(e) if e.value == value => {
                // Same value already held: the flag needs no fsync, the
                // commit record covers it once the prefix is contiguous.
                e.chosen = true;
            }
            _ => {
                let ballot = self.log.get(&index).map(|e| e.ballot).unwrap_or_default();
                self.write_slot(
                    index,
                    LogEntry {
                        ballot,
                        value,
                        chosen: true,
                    },
                );
            }
        }
    }

    /// Moves `commit` over every contiguous chosen slot and emits them.
    fn advance_commit(&mut self) {
        let before = self.commit;
        let mut voters_changed_at = None;
        while let Some(e) = self.log.get(&(self.commit + 1)) {
            if !e.chosen {
                break;
            }
            self.commit += 1;
            if let Value::Config(m) = &e.value {
                let previous = self.membership_at(self.commit - 1);
                if !m.voters().eq(previous.voters()) {
                    voters_changed_at = Some(self.commit);
                }
            }
        }
        if self.commit > before {
            self.ready.persist.push(Persist::Commit(self.commit));
        }
        // Followers learn a commit from the master's next accept or
        // heartbeat. When nothing is in flight or queued, no accept will
        // carry it soon, and a follower would apply (and wake its watchers,
        // its waiting lock holders, its reads) only at the next heartbeat:
        // tell them now. Safe: a heartbeat says only what is true (these
        // instances are chosen), whenever it is sent. Under load the next
        // accept carries the commit, and no heartbeat is added.
        if self.commit > before
            && let State::Master(m) = &self.state
            && m.inflight.is_empty()
            && m.queue.is_empty()
        {
            let (ballot, commit) = (m.ballot, self.commit);
            for p in self.peers() {
                self.send(p, Message::Heartbeat { ballot, commit });
            }
        }
        if let (Some(at), State::Master(m)) = (voters_changed_at, &mut self.state) {
            // A lease protects the master only in the configuration it was
            // chosen in and the next one: their majorities meet. Once a
            // change of voters is chosen, the next one may be proposed, and
            // a lease from before this one could then be honoured by no
            // majority at all. So every lease chosen (or proposed) before
            // it is given up, and a new one in the new configuration takes
            // its place (see `master_tick`).
            m.lease_until = None;
            m.lease_starts.retain(|i, _| *i > at);
        }
        while self.emitted < self.commit {
            let i = self.emitted + 1;
            let Some(e) = self.log.get(&i) else {
                break;
            };
            if let Value::Batch(cmds) = &e.value {
                let forwarded = match &mut self.state {
                    State::Master(m) => Some(&mut m.forwarded),
                    _ => None,
                };
                forget_committed(
                    cmds,
                    &mut self.unanswered,
                    &mut self.unanswered_bytes,
                    forwarded,
                );
            }
            self.ready.committed.push((i, e.value.clone()));
            self.emitted = i;
        }
        // Stepping down once removed from the voters keeps a removed master
        // from blocking the new configuration with its lease.
        let removed = !self.membership().is_voter(self.cfg.id);
        if removed
            && self.is_master()
            && let State::Master(m) = &self.state
        {
            let committed_removal = self
                .configs
                .keys()
                .next_back()
                .is_some_and(|ci| *ci <= self.commit);
            if committed_removal && m.inflight.is_empty() {
                self.step_down(None);
            }
        }
    }

    // ----------------------------------------------------------- inputs

    /// Feeds one message from a peer.
    pub fn step(&mut self, now: Duration, from: NodeId, msg: Message) {
        self.last_now = self.last_now.max(now);
        match msg {
            Message::Prepare { ballot, from_index } => {
                self.on_prepare(now, from, ballot, from_index)
            }
            Message::Promise {
                ballot,
                entries,
                commit,
            } => self.on_promise(now, from, ballot, entries, commit),
            Message::Reject {
                ballot,
                promised,
                reason,
            } => self.on_reject(now, from, ballot, promised, reason),
            Message::Accept {
                ballot,
                entries,
                commit,
            } => self.on_accept(now, from, ballot, entries, commit),
            Message::Accepted {
                ballot,
                indexes,
                commit,
            } => self.on_accepted(now, from, ballot, indexes, commit),
            Message::Heartbeat { ballot, commit } => self.on_heartbeat(now, from, ballot, commit),
            Message::HeartbeatAck { ballot, commit } => {
                if let State::Master(m) = &mut self.state
                    && m.ballot == ballot
                {
                    m.peer_commit.insert(from, commit);
                    m.peer_seen.insert(from, now);
                }
            }
            Message::CatchupRequest { from_index } => self.on_catchup_request(from, from_index),
            Message::TimeoutNow { ballot } => {
                // Only a handoff from the current master, never a stale one.
                if ballot >= self.promised && !self.is_master() && self.may_campaign(now) {
                    self.campaign(now);
                }
            }
            Message::Catchup { entries, commit } => self.on_catchup(now, from, entries, commit),
            Message::ReadProbe { ballot, seq } => self.on_read_probe(now, from, ballot, seq),
            Message::ReadAck { ballot, seq } => self.on_read_ack(from, ballot, seq),
            Message::ReadIndexRequest { seq } => self.on_read_index_request(now, from, seq),
            Message::ReadIndexAnswer { seq, answer } => {
                self.ready.reads.push((seq, answer.into_result()));
            }
            Message::Forward { cmds } => self.on_forward(now, from, cmds),
            Message::ForwardRefused {
                mut ids,
                hint,
                busy,
            } => {
                // A late refusal from a former master is not about the
                // attempt sent since to the new one.
                ids.retain(|id| self.unanswered.get(id).is_none_or(|u| u.to == from));
                for id in &ids {
                    if let Some(u) = self.unanswered.remove(id) {
                        self.unanswered_bytes -= u.cmd.size_hint();
                    }
                }
                let max_queue = self.cfg.max_queue;
                self.ready.refused.extend(ids.into_iter().map(|id| {
                    let e = if busy {
                        ProposeError::Busy(max_queue)
                    } else {
                        ProposeError::NotMaster { hint }
                    };
                    (id, e)
                }));
            }
        }
    }

    /// A follower's forwarded writes: proposed as if they had arrived here;
    /// the ones that cannot be go back refused, so that the follower retries
    /// them (at the master it is told of) instead of waiting.
    fn on_forward(&mut self, now: Duration, from: NodeId, cmds: Vec<Command>) {
        let mut not_master = Vec::new();
        let mut busy = Vec::new();
        let mut hint = None;
        for cmd in cmds {
            let id = cmd.id;
            match self.enqueue(now, cmd, Some(from)) {
                Ok(()) => {}
                Err(ProposeError::NotMaster { hint: h }) => {
                    hint = h;
                    not_master.push(id);
                }
                Err(_) => busy.push(id),
            }
        }
        if !not_master.is_empty() {
            self.send(
                from,
                Message::ForwardRefused {
                    ids: not_master,
                    hint,
                    busy: false,
                },
            );
        }
        if !busy.is_empty() {
            self.send(
                from,
                Message::ForwardRefused {
                    ids: busy,
                    hint: None,
                    busy: true,
                },
            );
        }
    }

    /// Advances timers: elections, retransmissions, heartbeats, lease renewal.
    pub fn tick(&mut self, now: Duration) {
        self.last_now = self.last_now.max(now);
        self.resend_forwards(now);
        match &self.state {
            State::Follower => {
                if now >= self.election_deadline {
                    if self.may_campaign(now) {
                        self.campaign(now);
                    } else if let Some(until) = self.lease_for_another(now) {
                        // Every follower that waits out the same lease (the
                        // lost master's, or the unknown one of a restart)
                        // would otherwise run the moment it ends, all at
                        // once, and duelling candidates step each other down.
                        // Run from a random point after it instead, as the
                        // election timer does, so the first to run usually
                        // wins before the others' turn comes.
                        self.election_deadline = until + self.election_jitter();
                    }
                }
            }
            State::Candidate(c) => {
                if now >= c.started + self.cfg.election_timeout * 2 {
                    // Split vote or lost messages: back off and try again later.
                    self.state = State::Follower;
                    self.reset_election_timer(now);
                } else if now >= c.last_sent + self.cfg.retry {
                    let (ballot, from_index) = (c.ballot, c.from_index);
                    // Voters of the configuration being counted may be
                    // missing from the one this node holds.
                    let missing: BTreeSet<NodeId> = self
                        .membership()
                        .voters()
                        .chain(c.counting.voters())
                        .filter(|v| *v != self.cfg.id && !c.promises.contains_key(v))
                        .collect();
                    for p in missing {
                        self.send(p, Message::Prepare { ballot, from_index });
                    }
                    if let State::Candidate(c) = &mut self.state {
                        c.last_sent = now;
                    }
                }
            }
            State::Master(_) => self.master_tick(now),
        }
    }

    /// This replica will never run for master again (it keeps voting as an
    /// acceptor: its promises and accepted values are still its own). For a
    /// replica whose applied state is known to be wrong: as master it would
    /// answer reads and compare-and-swaps from that state.
    pub fn forbid_candidacy(&mut self) {
        self.candidacy = false;
    }

    fn may_campaign(&self, now: Duration) -> bool {
        if !self.candidacy || !self.membership().is_voter(self.cfg.id) {
            return false;
        }
        // Our own acceptor would refuse us while it honours another's lease.
        self.lease_for_another(now).is_none()
    }

    /// When the lease this acceptor honours for another node ends, if it
    /// honours one now.
    fn lease_for_another(&self, now: Duration) -> Option<Duration> {
        match self.lease {
            Some(l) if now < l.until && l.holder != self.cfg.id => Some(l.until),
            _ => None,
        }
    }

    // ---------------------------------------------------------- acceptor

    fn lease_blocks(&self, now: Duration, proposer: NodeId) -> Option<NodeId> {
        match self.lease {
            Some(l) if now < l.until && l.holder != proposer => Some(l.holder),
            _ => None,
        }
    }

    fn reject(&mut self, to: NodeId, ballot: Ballot, reason: RejectReason) {
        let promised = self.promised;
        self.send(
            to,
            Message::Reject {
                ballot,
                promised,
                reason,
            },
        );
    }

    fn on_prepare(&mut self, now: Duration, from: NodeId, ballot: Ballot, from_index: Index) {
        self.highest_round = self.highest_round.max(ballot.round);
        if ballot < self.promised {
            return self.reject(from, ballot, RejectReason::Outdated);
        }
        if let Some(holder) = self.lease_blocks(now, ballot.node) {
            return self.reject(from, ballot, RejectReason::Lease { holder });
        }
        if from_index <= self.snapshot_index || self.commit >= from_index + self.cfg.max_promise_lag
        {
            let commit = self.commit;
            return self.reject(from, ballot, RejectReason::Behind { commit });
        }
        if ballot > self.promised {
            self.promised = ballot;
            self.ready.persist.push(Persist::Promise(ballot));
            if from != self.cfg.id {
                self.yield_to(now, ballot);
            }
        }
        let entries: Vec<(Index, LogEntry)> = self
            .log
            .range(from_index..)
            .map(|(i, e)| {
                let mut e = e.clone();
                e.chosen |= *i <= self.commit;
                (*i, e)
            })
            .collect();
        let commit = self.commit;
        // Also to ourselves: our own promise counts only once the caller
        // has made it durable and handed it back (see `Ready`).
        self.send(
            from,
            Message::Promise {
                ballot,
                entries,
                commit,
            },
        );
    }

    /// A higher ballot was promised to someone else: stop proposing.
    fn yield_to(&mut self, now: Duration, ballot: Ballot) {
        let mine = match &self.state {
            State::Master(m) => Some(m.ballot),
            State::Candidate(c) => Some(c.ballot),
            State::Follower => None,
        };
        if mine.is_some_and(|b| b < ballot) {
            self.step_down(Some(ballot.node));
            self.reset_election_timer(now);
        }
    }

    fn on_accept(
        &mut self,
        now: Duration,
        from: NodeId,
        ballot: Ballot,
        entries: Vec<(Index, Value)>,
        commit: Index,
    ) {
        self.highest_round = self.highest_round.max(ballot.round);
        if ballot < self.promised {
            return self.reject(from, ballot, RejectReason::Outdated);
        }
        if ballot > self.promised {
            if let Some(holder) = self.lease_blocks(now, ballot.node) {
                return self.reject(from, ballot, RejectReason::Lease { holder });
            }
            self.promised = ballot;
            self.ready.persist.push(Persist::Promise(ballot));
            if from != self.cfg.id {
                self.yield_to(now, ballot);
            }
        }
        if from != self.cfg.id {
            self.heard_from_master(now, ballot.node);
        }
        let mut indexes = Vec::with_capacity(entries.len());
        let mut stale = false;
        for (index, value) in entries {
            if index <= self.snapshot_index {
                // Compacted, hence chosen: acknowledging a different value
                // would help choose it twice, so only say the proposer is behind.
                stale = true;
                continue;
            }
            if let Some(e) = self.log.get(&index)
                && (e.chosen || index <= self.commit)
                && e.value != value
            {
                // A stale master (its ballot is below the one that chose
                // this slot) re-proposing an old value.
                stale = true;
                continue;
            }
            if let Value::Lease {
                holder,
                duration_ms,
            } = value
                && self.cfg.read_mode == ReadMode::Lease
            {
                // Timed from acceptance: the master started its clock before
                // sending, so its view of the lease ends first.
                self.lease = Some(AcceptorLease {
                    holder,
                    until: now + Duration::from_millis(duration_ms),
                });
            }
            match self.log.get(&index) {
                Some(e) if e.chosen || (e.ballot == ballot && e.value == value) => {}
                _ => self.write_slot(
                    index,
                    LogEntry {
                        ballot,
                        value,
                        chosen: false,
                    },
                ),
            }
            indexes.push(index);
        }
        let my_commit = self.commit;
        if stale {
            self.reject(from, ballot, RejectReason::Behind { commit: my_commit });
        }
        // The master's own vote travels as a message to itself too, so it
        // counts only after its records are durable: with a single voter,
        // counting it at once let a commit index leave (on an accept or a
        // heartbeat that may precede the fsync) for entries durable nowhere.
        self.send(
            from,
            Message::Accepted {
                ballot,
                indexes,
                commit: my_commit,
            },
        );
        if from != self.cfg.id {
            self.learn_commit(now, from, ballot, commit);
        }
    }

    fn heard_from_master(&mut self, now: Duration, master: NodeId) {
        self.known_master = Some(master);
        self.last_heard = now;
        if !self.is_master() {
            self.reset_election_timer(now);
        }
    }

    /// The master at `ballot` says every slot up to `commit` is chosen.
    fn learn_commit(&mut self, now: Duration, from: NodeId, ballot: Ballot, commit: Index) {
        self.master_commit = self.master_commit.max(commit);
        self.master_report_at = self.master_report_at.max(now);
        if commit <= self.commit {
            return;
        }
        let mut gap = false;
        for i in self.commit + 1..=commit {
            match self.log.get_mut(&i) {
                Some(e) if e.chosen => {}
                Some(e) if e.ballot == ballot => e.chosen = true,
                _ => gap = true,
            }
        }
        self.advance_commit();
        if gap || self.commit < commit {
            self.request_catchup(now, from);
        }
    }

    fn request_catchup(&mut self, now: Duration, from: NodeId) {
        if self.catchup_sent.is_some_and(|t| now < t + self.cfg.retry) {
            return;
        }
        self.catchup_sent = Some(now);
        let from_index = self.commit + 1;
        self.send(from, Message::CatchupRequest { from_index });
    }

    fn on_heartbeat(&mut self, now: Duration, from: NodeId, ballot: Ballot, commit: Index) {
        if ballot < self.promised {
            return self.reject(from, ballot, RejectReason::Outdated);
        }
        // A master with a higher ballot exists: stop advertising commits at
        // ours before learning anything from it.
        self.yield_to(now, ballot);
        self.heard_from_master(now, ballot.node);
        self.learn_commit(now, from, ballot, commit);
        let my_commit = self.commit;
        self.send(
            from,
            Message::HeartbeatAck {
                ballot,
                commit: my_commit,
            },
        );
    }

    fn on_catchup_request(&mut self, from: NodeId, from_index: Index) {
        if from_index <= self.snapshot_index {
            if !self.ready.send_snapshot.contains(&from) {
                self.ready.send_snapshot.push(from);
            }
            return;
        }
        let end = self.commit.min(from_index + self.cfg.catchup_batch as u64);
        let entries: Vec<(Index, Value)> = self
            .log
            .range(from_index..=end.max(from_index))
            .filter(|(i, _)| **i <= end)
            .map(|(i, e)| (*i, e.value.clone()))
            .collect();
        let commit = self.commit;
        if !entries.is_empty() || commit >= from_index {
            self.send(from, Message::Catchup { entries, commit });
        }
    }

    fn on_catchup(
        &mut self,
        now: Duration,
        from: NodeId,
        entries: Vec<(Index, Value)>,
        commit: Index,
    ) {
        self.catchup_sent = None;
        for (i, v) in entries {
            if i <= commit {
                self.learn(i, v);
            }
        }
        self.advance_commit();
        if self.commit < commit {
            self.request_catchup(now, from);
        }
    }

    /// The caller installed a snapshot taken at `meta.index` (state machine and
    /// storage). The log below it is gone; the configuration comes with it.
    pub fn snapshot_installed(&mut self, meta: SnapshotMeta) {
        let index = meta.index;
        if !self.drop_log_through(meta) {
            return;
        }
        // Values handed out but not yet applied that the snapshot covers are
        // already in it: applying them on top would apply them twice and move
        // the applied index backwards.
        self.ready.committed.retain(|(i, _)| *i > index);
        // This replica's forwards may be in the snapshot, where it cannot
        // see them, applied any time before: never sent again (see
        // `resend_forwards`); their callers hear at their deadlines.
        self.unanswered.clear();
        self.unanswered_bytes = 0;
        self.commit = self.commit.max(index);
        self.emitted = self.emitted.max(index);
        self.catchup_sent = None;
        self.advance_commit();
    }

    /// The caller saved a snapshot of its applied state at `meta.index`; the
    /// log up to there may go.
    pub fn compacted(&mut self, meta: SnapshotMeta) {
        invariant!(
            meta.index <= self.emitted,
            "compaction to {} beyond applied {}",
            meta.index,
            self.emitted
        );
        self.drop_log_through(meta);
    }

    /// Forgets the log up to a snapshot's index and takes its configuration
    /// as the base; false when the snapshot is not newer than the current one.
    fn drop_log_through(&mut self, meta: SnapshotMeta) -> bool {
        if meta.index <= self.snapshot_index {
            return false;
        }
        self.snapshot_index = meta.index;
        self.log = self.log.split_off(&(meta.index + 1));
        self.configs = self.configs.split_off(&(meta.index + 1));
        self.base_membership = meta.membership;
        true
    }

    /// The configuration in force right after `index` is applied, for the
    /// caller's snapshot metadata.
    pub fn membership_at(&self, index: Index) -> Membership {
        self.configs
            .range(..=index)
            .next_back()
            .map(|(_, m)| m.clone())
            .unwrap_or_else(|| self.base_membership.clone())
    }

    // ---------------------------------------------------------- proposer

    fn campaign(&mut self, now: Duration) {
        let ballot = Ballot::new(self.highest_round.max(self.promised.round) + 1, self.cfg.id);
        self.highest_round = ballot.round;
        let from_index = self.commit + 1;
        let counting = self.membership().clone();
        self.state = State::Candidate(Candidate {
            ballot,
            from_index,
            promises: BTreeMap::new(),
            counting,
            started: now,
            last_sent: now,
        });
        self.known_master = None;
        for p in self
            .membership()
            .voters()
            .filter(|v| *v != self.cfg.id)
            .collect::<Vec<_>>()
        {
            self.send(p, Message::Prepare { ballot, from_index });
        }
        self.on_prepare(now, self.cfg.id, ballot, from_index);
    }

    fn on_promise(
        &mut self,
        now: Duration,
        from: NodeId,
        ballot: Ballot,
        entries: Vec<(Index, LogEntry)>,
        // Slots at or below the acceptor's commit arrive flagged chosen, so
        // the index itself adds nothing here.
        _commit: Index,
    ) {
        let commit = self.commit;
        let State::Candidate(c) = &mut self.state else {
            return;
        };
        if c.ballot != ballot {
            return;
        }
        c.promises.insert(from, entries);
        // Count the quorum in the configuration of the log this candidate
        // would drive: the newest one among the values that survive the
        // merge (a chosen value, else the highest ballot per slot), or the
        // one in force at the commit index. A configuration whose slot a
        // higher ballot took over was never chosen and never will be, so it
        // must not decide anything; one that may have been chosen survives
        // the merge, because every quorum of a configuration meets every
        // quorum of the next (see `super::membership`).
        let merged = merge_promises(&c.promises, commit);
        let counting = merged.iter().rev().find_map(|(_, e)| match &e.value {
            Value::Config(m) => Some(m.clone()),
            _ => None,
        });
        let counting = match counting {
            Some(m) => m,
            None => self.membership_at(commit),
        };
        let State::Candidate(c) = &mut self.state else {
            return;
        };
        let votes = c
            .promises
            .keys()
            .filter(|id| counting.is_voter(**id))
            .count();
        let won = votes >= counting.quorum() && counting.is_voter(self.cfg.id);
        c.counting = counting;
        if won {
            self.become_master(now);
        }
    }

    fn on_reject(
        &mut self,
        now: Duration,
        from: NodeId,
        ballot: Ballot,
        promised: Ballot,
        reason: RejectReason,
    ) {
        self.highest_round = self.highest_round.max(promised.round);
        let mine = match &self.state {
            State::Master(m) => m.ballot,
            State::Candidate(c) => c.ballot,
            State::Follower => return,
        };
        if mine != ballot {
            return;
        }
        match reason {
            RejectReason::Outdated if promised > mine => {
                self.step_down(Some(promised.node));
                self.reset_election_timer(now);
            }
            RejectReason::Behind { .. } => {
                self.step_down(None);
                self.reset_election_timer(now);
                self.request_catchup(now, from);
            }
            // A lease elsewhere only delays us; the election timer retries.
            _ => {}
        }
    }

    /// Gives back commands this master queued but will never propose (it
    /// stepped down, or hands mastership over): its own clients' through
    /// [`Ready::rejected`], forwarded ones to their followers as
    /// `forward_refused` (not master, with `hint`), so that those retry at
    /// once instead of waiting out their deadline. Safe because none of them
    /// is in an instance: nothing this node proposed can choose them.
    fn give_back(&mut self, queue: VecDeque<Queued>, hint: Option<NodeId>) {
        let mut forwarded: BTreeMap<NodeId, Vec<RequestId>> = BTreeMap::new();
        for q in queue {
            match q.from {
                None => self.ready.rejected.push(q.cmd),
                Some(from) => forwarded.entry(from).or_default().push(q.cmd.id),
            }
        }
        for (from, ids) in forwarded {
            self.send(
                from,
                Message::ForwardRefused {
                    ids,
                    hint,
                    busy: false,
                },
            );
        }
    }

    fn step_down(&mut self, hint: Option<NodeId>) {
        let old = std::mem::replace(&mut self.state, State::Follower);
        if let State::Master(mut m) = old {
            let reads = m.reads.drain();
            self.give_back(m.queue, hint);
            self.fail_reads(reads, hint);
            // A master heard no master but itself: the silence that
            // `master_silent` reports counts from here, not from before it
            // became master.
            self.last_heard = self.last_now;
        }
        self.known_master = hint;
    }

    fn become_master(&mut self, now: Duration) {
        let State::Candidate(c) = std::mem::replace(&mut self.state, State::Follower) else {
            return;
        };
        let ballot = c.ballot;
        let mut merged: BTreeMap<Index, LogEntry> = merge_promises(&c.promises, self.commit)
            .into_iter()
            .map(|(i, e)| (i, e.clone()))
            .collect();
        let last = merged
            .keys()
            .next_back()
            .copied()
            .unwrap_or(self.commit)
            .max(self.commit);
        let barrier = last + 1;
        self.known_master = Some(self.cfg.id);
        self.state = State::Master(Master {
            ballot,
            barrier,
            next_index: self.commit + 1,
            inflight: BTreeMap::new(),
            queue: VecDeque::new(),
            lease_starts: BTreeMap::new(),
            lease_until: None,
            last_lease_start: now,
            last_heartbeat: now,
            peer_commit: BTreeMap::new(),
            peer_seen: BTreeMap::new(),
            since: now,
            transfer: None,
            drain_until: None,
            reads: Box::default(),
            forwarded: BTreeSet::new(),
        });
        let mut values: Vec<(Index, Value)> = Vec::new();
        for i in c.from_index.max(self.commit + 1)..=last {
            let v = match merged.remove(&i) {
                Some(e) if e.chosen => {
                    self.learn(i, e.value);
                    continue;
                }
                Some(e) => e.value,
                None => Value::Noop,
            };
            values.push((i, v));
        }
        self.advance_commit();
        let lease_mode = self.cfg.read_mode == ReadMode::Lease;
        if let State::Master(m) = &mut self.state {
            // In quorum mode the barrier is proposed as a lease too (it is
            // what acceptors in lease mode time), but this master never
            // relies on it: acceptors in that mode do not honour it.
            if lease_mode {
                m.lease_starts.insert(barrier, now);
            }
            m.last_lease_start = now;
            m.next_index = barrier + 1;
        }
        values.push((
            barrier,
            Value::Lease {
                holder: self.cfg.id,
                duration_ms: self.cfg.lease.as_millis() as u64,
            },
        ));
        self.propose_values(now, values);
        self.pump(now);
    }

    /// Accepts `values` locally at the master's ballot and sends them out.
    fn propose_values(&mut self, now: Duration, values: Vec<(Index, Value)>) {
        let State::Master(m) = &mut self.state else {
            return;
        };
        let ballot = m.ballot;
        for (i, v) in &values {
            m.inflight.insert(
                *i,
                Inflight {
                    value: v.clone(),
                    acks: BTreeSet::new(),
                    sent_at: now,
                },
            );
        }
        let commit = self.commit;
        for p in self.peers() {
            self.send(
                p,
                Message::Accept {
                    ballot,
                    entries: values.clone(),
                    commit,
                },
            );
        }
        let me = self.cfg.id;
        self.on_accept(now, me, ballot, values, commit);
    }

    fn on_accepted(
        &mut self,
        now: Duration,
        from: NodeId,
        ballot: Ballot,
        indexes: Vec<Index>,
        commit: Index,
    ) {
        let membership = self.membership().clone();
        let quorum = membership.quorum();
        let State::Master(m) = &mut self.state else {
            return;
        };
        if m.ballot != ballot {
            return;
        }
        if from != self.cfg.id {
            let c = m.peer_commit.entry(from).or_default();
            *c = (*c).max(commit);
            m.peer_seen.insert(from, now);
        }
        let mut chosen = Vec::new();
        for i in indexes {
            if let Some(f) = m.inflight.get_mut(&i) {
                f.acks.insert(from);
                let votes = f.acks.iter().filter(|id| membership.is_voter(**id)).count();
                if votes >= quorum
                    && let Some(f) = m.inflight.remove(&i)
                {
                    chosen.push((i, f.value));
                }
            }
        }
        if chosen.is_empty() {
            return;
        }
        let mut handed_over = None;
        for (i, v) in chosen {
            if let State::Master(m) = &self.state
                && let Some(t) = m.transfer
                && t.index == i
            {
                handed_over = Some(t.target);
            }
            if let (Value::Lease { holder, .. }, State::Master(m)) = (&v, &mut self.state)
                && *holder == self.cfg.id
                && let Some(start) = m.lease_starts.remove(&i)
            {
                let until = start + self.cfg.master_lease();
                m.lease_until = Some(m.lease_until.map_or(until, |u| u.max(until)));
            }
            self.learn(i, v);
        }
        self.advance_commit();
        if let Some(target) = handed_over {
            // The acceptors now honour `target`'s lease: let it take over at
            // once instead of waiting for an election timeout.
            let ballot = self.status(now).ballot;
            self.step_down(Some(target));
            self.send(target, Message::TimeoutNow { ballot });
            return;
        }
        self.pump(now);
    }

    /// Hands mastership to `target` (a caught-up voter), for a clean
    /// shutdown or upgrade. The master stops serving lease reads and taking
    /// commands at once, and proposes a lease *for the target*: acceptors that
    /// accept it refuse everyone but the target, exactly as for any lease, so
    /// no third node can step in. Once it is chosen the master steps down and
    /// tells the target to run for master immediately.
    pub fn transfer_mastership(
        &mut self,
        now: Duration,
        target: NodeId,
    ) -> Result<(), ProposeError> {
        let hint = self.known_master;
        let duration_ms = self.cfg.lease.as_millis() as u64;
        if target == self.cfg.id || !self.membership().is_voter(target) {
            return Err(ProposeError::InvalidChange(format!(
                "node {target:x} is not another voter"
            )));
        }
        let State::Master(m) = &mut self.state else {
            return Err(ProposeError::NotMaster { hint });
        };
        if m.transfer.is_some() {
            return Err(ProposeError::ChangeInProgress);
        }
        m.lease_until = None;
        m.lease_starts.clear();
        let reads = m.reads.drain();
        // Commands not yet in an instance would follow the handoff lease
        // and depend on the target's election: give them back now, the
        // caller retries at the new master.
        let queue = std::mem::take(&mut m.queue);
        let index = m.next_index;
        m.next_index += 1;
        m.transfer = Some(Transfer {
            target,
            index,
            since: now,
        });
        self.propose_values(
            now,
            vec![(
                index,
                Value::Lease {
                    holder: target,
                    duration_ms,
                },
            )],
        );
        self.give_back(queue, Some(target));
        self.fail_reads(reads, Some(target));
        Ok(())
    }

    /// Hands mastership to `target`, or to the most caught-up voter when
    /// `None`, through [`Replica::transfer_mastership`], after checking that
    /// the target can take over at once; returns the target.
    ///
    /// The handoff lease binds every acceptor that accepts it to the
    /// target: nobody else can be elected until the target is, or until that
    /// lease runs out. So a target that cannot win right away costs the
    /// cluster its master for a lease, and is refused instead: one the
    /// master has not heard from within two election timeouts (the
    /// reachability rule of [`Replica::propose_change`]), or one more than
    /// half of `max_promise_lag` behind the commit index (at the full lag
    /// acceptors refuse its prepare until it has caught up; the half leaves
    /// room for what is in flight and for a report that is a heartbeat old).
    pub fn hand_off(
        &mut self,
        now: Duration,
        target: Option<NodeId>,
    ) -> Result<NodeId, HandoffError> {
        let target = match target {
            Some(t) => {
                self.handoff_check(now, t)?;
                t
            }
            None => {
                let State::Master(m) = &self.state else {
                    return Err(HandoffError::NotMaster {
                        hint: self.known_master,
                    });
                };
                if m.transfer.is_some() {
                    return Err(HandoffError::InProgress);
                }
                // The most caught-up of those that pass, the lowest id on a tie.
                let progress = self.peer_progress();
                self.membership()
                    .voters()
                    .filter(|v| self.handoff_check(now, *v).is_ok())
                    .max_by_key(|v| (progress.get(v).copied().unwrap_or(0), std::cmp::Reverse(*v)))
                    .ok_or(HandoffError::NoCandidate)?
            }
        };
        self.transfer_mastership(now, target).map_err(|e| match e {
            ProposeError::NotMaster { hint } => HandoffError::NotMaster { hint },
            ProposeError::ChangeInProgress => HandoffError::InProgress,
            // The only other refusal it gives: not another voter.
            ProposeError::Busy(_) | ProposeError::InvalidChange(_) => {
                HandoffError::NotVoter(target)
            }
        })?;
        Ok(target)
    }

    /// Whether this master could hand mastership to `target` now (see
    /// [`Replica::hand_off`]).
    fn handoff_check(&self, now: Duration, target: NodeId) -> Result<(), HandoffError> {
        let State::Master(m) = &self.state else {
            return Err(HandoffError::NotMaster {
                hint: self.known_master,
            });
        };
        if target == self.cfg.id {
            return Err(HandoffError::AlreadyMaster(target));
        }
        let membership = self.membership();
        if !membership.members.contains_key(&target) {
            return Err(HandoffError::NotMember(target));
        }
        if !membership.is_voter(target) {
            return Err(HandoffError::NotVoter(target));
        }
        if m.transfer.is_some() {
            return Err(HandoffError::InProgress);
        }
        let recent = self.cfg.election_timeout * 2;
        if m.peer_seen
            .get(&target)
            .is_none_or(|t| now.saturating_sub(*t) > recent)
        {
            return Err(HandoffError::Unreachable(target));
        }
        let theirs = m.peer_commit.get(&target).copied().unwrap_or(0);
        if theirs + self.cfg.max_promise_lag / 2 < self.commit {
            return Err(HandoffError::Behind {
                id: target,
                theirs,
                commit: self.commit,
            });
        }
        Ok(())
    }

    fn master_tick(&mut self, now: Duration) {
        let lease_len = self.cfg.master_lease();
        let retry = self.cfg.retry;
        let heartbeat = self.cfg.heartbeat;
        let State::Master(m) = &mut self.state else {
            return;
        };
        // Renew well before expiry: a third of the way in (not while handing
        // mastership over: that lease belongs to the target now).
        if let Some(t) = m.transfer
            && now >= t.since + self.cfg.lease
        {
            // The handoff did not complete in a lease: give up mastership
            // anyway; an ordinary election follows.
            self.step_down(None);
            return;
        }
        // A master no longer among the voters takes no new lease: the
        // others would have to wait it out before electing a master.
        let voter = match &self.configs.values().next_back() {
            Some(c) => c.is_voter(self.cfg.id),
            None => self.base_membership.is_voter(self.cfg.id),
        };
        let State::Master(m) = &mut self.state else {
            return;
        };
        let renew = (now >= m.last_lease_start + lease_len / 3 || m.lease_until.is_none())
            && m.lease_starts.is_empty()
            && m.transfer.is_none()
            && voter
            && self.cfg.read_mode == ReadMode::Lease;
        // A read round without a majority in time (lost messages, slow
        // peers) asks again those that have not answered, under the same
        // number: acks already counted stay valid (each answers a probe
        // sent after the round's reads arrived), so a round slower than
        // `retry` still completes instead of starting over for ever.
        let mut acked: Vec<NodeId> = Vec::new();
        let mut probe_seq = 0;
        if let Some(r) = m.reads.round.as_mut()
            && now >= r.started + retry
        {
            r.started = now;
            probe_seq = r.seq;
            acked = r.acks.iter().copied().collect();
        }
        let mut resend: Vec<(Index, Value)> = Vec::new();
        for (i, f) in m.inflight.iter_mut() {
            if now >= f.sent_at + retry {
                f.sent_at = now;
                resend.push((*i, f.value.clone()));
            }
        }
        let send_heartbeat = now >= m.last_heartbeat + heartbeat;
        if send_heartbeat {
            m.last_heartbeat = now;
        }
        let ballot = m.ballot;
        let commit = self.commit;
        if !resend.is_empty() {
            for p in self.peers() {
                let entries: Vec<(Index, Value)> = match &self.state {
                    State::Master(m) => resend
                        .iter()
                        .filter(|(i, _)| m.inflight.get(i).is_some_and(|f| !f.acks.contains(&p)))
                        .cloned()
                        .collect(),
                    _ => Vec::new(),
                };
                if !entries.is_empty() {
                    self.send(
                        p,
                        Message::Accept {
                            ballot,
                            entries,
                            commit,
                        },
                    );
                }
            }
        }
        if send_heartbeat {
            for p in self.peers() {
                self.send(p, Message::Heartbeat { ballot, commit });
            }
        }
        if probe_seq != 0 {
            for p in self.peers() {
                if !acked.contains(&p) {
                    self.send(
                        p,
                        Message::ReadProbe {
                            ballot,
                            seq: probe_seq,
                        },
                    );
                }
            }
        }
        if renew {
            self.propose_lease(now);
        }
        self.pump(now);
        if self.can_start_read_round() {
            self.start_read_round(now);
        }
    }

    fn propose_lease(&mut self, now: Duration) {
        let duration_ms = self.cfg.lease.as_millis() as u64;
        let me = self.cfg.id;
        let State::Master(m) = &mut self.state else {
            return;
        };
        let index = m.next_index;
        m.next_index += 1;
        m.lease_starts.insert(index, now);
        m.last_lease_start = now;
        self.propose_values(
            now,
            vec![(
                index,
                Value::Lease {
                    holder: me,
                    duration_ms,
                },
            )],
        );
    }

    /// Packs queued commands into new instances while the window has room.
    fn pump(&mut self, now: Duration) {
        let window = self.cfg.window;
        let max_bytes = self.cfg.max_batch_bytes;
        let max_cmds = self.cfg.max_batch_commands;
        let commit = self.commit;
        let State::Master(m) = &mut self.state else {
            return;
        };
        if m.drain_until.is_some_and(|t| now < t) || m.transfer.is_some() {
            return;
        }
        let mut values = Vec::new();
        while !m.queue.is_empty() && m.next_index <= commit + window {
            let mut batch = Vec::new();
            let mut bytes = 0;
            while let Some(q) = m.queue.front() {
                let size = q.cmd.size_hint();
                if !batch.is_empty() && (bytes + size > max_bytes || batch.len() >= max_cmds) {
                    break;
                }
                bytes += size;
                if let Some(q) = m.queue.pop_front() {
                    batch.push(q.cmd);
                }
            }
            values.push((m.next_index, Value::Batch(batch.into())));
            m.next_index += 1;
        }
        if !values.is_empty() {
            self.propose_values(now, values);
        }
    }

    /// Queues a client command. It is answered when it is applied; if this
    /// node stops being master before proposing it, it comes back in
    /// [`Ready::rejected`]. It goes out in an instance at the next
    /// [`Replica::take_ready`].
    pub fn propose(&mut self, now: Duration, cmd: Command) -> Result<(), ProposeError> {
        self.enqueue(now, cmd, None)
    }

    /// Proposes a command of the cluster's own that must not wait behind
    /// clients, or be refused because of them: a master's lease fence,
    /// without which it answers no keep-alive (see `crate::kv::lease`). It
    /// goes to the head of the queue, past the queue's bound; its caller
    /// proposes at most one a second, so that bound is passed by at most
    /// that.
    pub fn propose_first(&mut self, now: Duration, cmd: Command) -> Result<(), ProposeError> {
        self.taking_master()?
            .queue
            .push_front(Queued { cmd, from: None });
        self.last_now = self.last_now.max(now);
        Ok(())
    }

    /// This node's mastership, if it takes commands now: not while it hands
    /// mastership over.
    fn taking_master(&mut self) -> Result<&mut Master, ProposeError> {
        let hint = self.known_master;
        let State::Master(m) = &mut self.state else {
            return Err(ProposeError::NotMaster { hint });
        };
        if let Some(t) = m.transfer {
            return Err(ProposeError::NotMaster {
                hint: Some(t.target),
            });
        }
        Ok(m)
    }

    /// [`Replica::propose`] for a client of this node (`from` is `None`) or
    /// of the follower `from`, which forwarded it.
    fn enqueue(
        &mut self,
        now: Duration,
        cmd: Command,
        from: Option<NodeId>,
    ) -> Result<(), ProposeError> {
        let max_queue = self.cfg.max_queue;
        let m = self.taking_master()?;
        if from.is_some() && m.forwarded.contains(&cmd.id) {
            // Forwarded again while the first copy is queued or in flight
            // (see `EngineConfig::forward_retry`): already taken.
            return Ok(());
        }
        if m.queue.len() >= max_queue {
            return Err(ProposeError::Busy(max_queue));
        }
        if from.is_some() {
            m.forwarded.insert(cmd.id);
        }
        m.queue.push_back(Queued { cmd, from });
        // Packed at take_ready, with whatever else arrives before it.
        self.last_now = self.last_now.max(now);
        Ok(())
    }

    /// Queues a client command for `to`, which this node believes is master,
    /// to propose; it is answered when this node applies it, or comes back in
    /// [`Ready::refused`] if `to` does not take it. A master proposes it
    /// itself. A forward lost on the way is sent again, under the same
    /// request id, every [`EngineConfig::forward_retry`] for
    /// [`EngineConfig::forward_for`] while `to` is still the master this
    /// replica knows (see [`Replica::resend_forwards`]); once this replica
    /// sees another master its caller sends it again (under the same request
    /// id) to that one.
    pub fn forward(&mut self, now: Duration, to: NodeId, cmd: Command) -> Result<(), ProposeError> {
        if self.is_master() || to == self.cfg.id {
            return self.propose(now, cmd);
        }
        if self.known_master.is_some_and(|m| m != to) {
            // The caller's view of the master lags this replica's.
            return Err(ProposeError::NotMaster {
                hint: self.known_master,
            });
        }
        let queued: usize = self.forwards.values().map(Vec::len).sum();
        if queued >= self.cfg.max_queue {
            return Err(ProposeError::Busy(self.cfg.max_queue));
        }
        let size = cmd.size_hint();
        // The caller may send one request again (to a new master): its
        // copies still stop `forward_for` after its first send.
        let first_sent = match self.unanswered.remove(&cmd.id) {
            Some(u) => {
                self.unanswered_bytes -= u.cmd.size_hint();
                u.first_sent
            }
            None => now,
        };
        if self.unanswered.len() < self.cfg.max_queue
            && self.unanswered_bytes + size <= MAX_UNANSWERED_FORWARD_BYTES
        {
            self.unanswered_bytes += size;
            self.unanswered.insert(
                cmd.id,
                Unanswered {
                    to,
                    cmd: cmd.clone(),
                    first_sent,
                    last_sent: now,
                    copies: 0,
                },
            );
        }
        self.forwards.entry(to).or_default().push(cmd);
        self.last_now = self.last_now.max(now);
        Ok(())
    }

    /// Sends again the forwards that have had no answer for
    /// [`EngineConfig::forward_retry`] (twice that after one copy, and so
    /// on up to eight times), to the master they went to, once this replica
    /// has applied everything that master reported committed in a report
    /// that came after the forward's last send;
    /// forgets those that went to a node that is no longer the master this
    /// replica knows (the caller sends them again, to the new one) or
    /// were first sent [`EngineConfig::forward_for`] ago.
    ///
    /// Why a copy is safe: every copy carries the same request id, and a
    /// copy proposed as well as the first is applied as a duplicate that
    /// answers with the first's result (see [`crate::kv::dedup`]), as long
    /// as the request-id table still holds the first. So copies are kept
    /// from being proposed long after the first:
    /// - the master proposes none while the first is queued, in flight or
    ///   chosen but not committed there (`Master::forwarded`);
    /// - this replica sends none while it lags behind the commit index the
    ///   master reported, or before the master reported one after the last
    ///   send: the first may be in what it has not applied yet. Once it has
    ///   applied all of a fresh report (and so forgotten every forward of
    ///   its own in there), a copy meets a first that the master committed
    ///   only after that report, moments before;
    /// - none is sent past the caller's deadline.
    ///
    /// A new master holds no `forwarded` ids, but forwards to a former master
    /// are never sent again by the engine (the caller sends those under the
    /// same id, as it always has).
    fn resend_forwards(&mut self, now: Duration) {
        if self.unanswered.is_empty() || now < self.next_forward_scan {
            return;
        }
        // A scan walks every entry: a few per `forward_retry`, not one per
        // tick.
        self.next_forward_scan = now + self.cfg.forward_retry / 4;
        let master = if self.is_master() {
            Some(self.cfg.id)
        } else {
            self.known_master
        };
        let (retry, until) = (self.cfg.forward_retry, self.cfg.forward_for);
        let (caught_up, report_at) = (self.emitted >= self.master_commit, self.master_report_at);
        let mut dropped = 0;
        let mut again: Vec<(NodeId, Command)> = Vec::new();
        self.unanswered.retain(|_, u| {
            if Some(u.to) != master || now >= u.first_sent + until {
                dropped += u.cmd.size_hint();
                return false;
            }
            let due = u.last_sent + retry * (1 << u.copies.min(3));
            if caught_up && report_at > u.last_sent && now >= due {
                u.last_sent = now;
                u.copies += 1;
                again.push((u.to, u.cmd.clone()));
            }
            true
        });
        self.unanswered_bytes -= dropped;
        self.ready.forwards_sent_again += again.len();
        for (to, cmd) in again {
            self.forwards.entry(to).or_default().push(cmd);
        }
    }

    /// Proposes one membership change. Returns the instance it will occupy;
    /// the change is in force once that instance is committed.
    pub fn propose_change(
        &mut self,
        now: Duration,
        change: ConfChange,
    ) -> Result<Index, ProposeError> {
        let hint = self.known_master;
        let commit = self.commit;
        let newest_config = self.configs.keys().next_back().copied().unwrap_or(0);
        let State::Master(m) = &self.state else {
            return Err(ProposeError::NotMaster { hint });
        };
        // One change at a time, and only once every instance up to the last
        // change (and this master's own barrier) is chosen: then at most two
        // adjacent configurations are ever in use. See `super::membership`.
        if commit < newest_config || commit < m.barrier {
            return Err(ProposeError::ChangeInProgress);
        }
        // A learner that has not caught up would count in quorums without
        // holding the log: promoting it could cost the cluster its quorum.
        if let ConfChange::Promote { id } = &change {
            let theirs = m.peer_commit.get(id).copied().unwrap_or(0);
            if theirs + self.cfg.max_promise_lag < commit {
                return Err(ProposeError::InvalidChange(format!(
                    "node {id:x} has not caught up yet (at {theirs} of {commit}); retry once it has"
                )));
            }
        }
        let next = super::membership::apply_change(self.membership(), &change)
            .map_err(ProposeError::InvalidChange)?;
        let drain = self.cfg.retry * 4;
        let voters_change = !next.voters().eq(self.membership().voters());
        let recent = self.cfg.election_timeout * 2;
        let me = self.cfg.id;
        let current_voters: Vec<NodeId> = self.membership().voters().collect();
        let current_quorum = self.membership().quorum();
        let State::Master(m) = &mut self.state else {
            return Err(ProposeError::NotMaster { hint });
        };
        let reachable = |v: &NodeId| {
            *v == me
                || m.peer_seen
                    .get(v)
                    .is_some_and(|t| now.saturating_sub(*t) <= recent)
        };
        // A change that leaves fewer live voters than its quorum can never
        // be committed, and blocks every later one: the cluster would be
        // stuck with it (etcd's strict reconfiguration check does the
        // same). Checked before waiting for instances in flight, which
        // without a quorum never drain: that is the reason to give.
        // Nor can one whose own configuration has no live quorum to
        // choose it (a two-voter cluster that lost one): it would wait in
        // flight for good, and every later change behind it.
        let live_now = current_voters.iter().filter(|v| reachable(v)).count();
        if live_now < current_quorum {
            return Err(ProposeError::InvalidChange(format!(
                "only {live_now} of the {} voters are reachable, fewer than the {current_quorum} \
                 needed to choose any change; bring members back first (if a majority is lost \
                 for good, restore from a backup)",
                current_voters.len(),
            )));
        }
        let live = next.voters().filter(reachable).count();
        if voters_change && live < next.quorum() {
            return Err(ProposeError::InvalidChange(format!(
                "after this change only {live} of its {} voters would be reachable, fewer than \
                 the {} it needs to make progress; bring members back (or replace lost ones) first",
                next.voter_count(),
                next.quorum()
            )));
        }
        // Every instance below a configuration's slot must be chosen when it
        // is proposed (see `super::membership`, point 2): a change placed
        // above instances still in flight could outlive, at a later
        // election, a sibling change another master chose in one of them.
        // New batches wait meanwhile, and the caller retries.
        if m.next_index != commit + 1 {
            m.drain_until = Some(now + drain);
            return Err(ProposeError::ChangeInProgress);
        }
        if voters_change {
            // And a quorum of the new voters must hold every instance chosen
            // so far (point 2 of `super::membership`): instances chosen by
            // older quorums may be known to none of the new configuration's
            // majorities otherwise, and a master elected there would fill
            // them with no-ops.
            let caught_up = next
                .voters()
                .filter(|v| {
                    *v == me || (reachable(v) && m.peer_commit.get(v).is_some_and(|c| *c >= commit))
                })
                .count();
            if caught_up < next.quorum() {
                m.drain_until = Some(now + drain);
                return Err(ProposeError::ChangeInProgress);
            }
        }
        m.drain_until = None;
        let index = m.next_index;
        m.next_index += 1;
        self.propose_values(now, vec![(index, Value::Config(next))]);
        Ok(index)
    }

    /// A linearizable read may be served once the state machine has applied
    /// up to the returned index. Only a master holding a valid lease, whose
    /// barrier is committed, can promise that no newer write exists elsewhere.
    pub fn read_index(&self, now: Duration) -> Result<Index, ReadError> {
        match &self.state {
            State::Master(m) => {
                if self.commit >= m.barrier && m.lease_until.is_some_and(|u| now < u) {
                    Ok(self.commit)
                } else {
                    Err(ReadError::NoLease)
                }
            }
            _ => Err(ReadError::NotMaster {
                hint: self.known_master,
            }),
        }
    }

    /// Asks for a linearizable read; the answer comes out of
    /// [`Replica::take_ready`] in [`Ready::reads`] under `token`. In lease
    /// mode that is at once ([`Replica::read_index`]); in quorum mode once a
    /// confirmation round that starts after this call has a majority (see
    /// [`super::quorum_read`]), or when this node stops being master.
    pub fn request_read(&mut self, now: Duration, token: u64) -> Result<(), ReadError> {
        self.last_now = self.last_now.max(now);
        if self.cfg.read_mode == ReadMode::Lease {
            let answer = self.read_index(now);
            self.ready.reads.push((token, answer));
            return Ok(());
        }
        let max = self.cfg.max_queue;
        let hint = self.known_master;
        let State::Master(m) = &mut self.state else {
            return Err(ReadError::NotMaster { hint });
        };
        if let Some(t) = m.transfer {
            return Err(ReadError::NotMaster {
                hint: Some(t.target),
            });
        }
        if m.reads.len() >= max {
            return Err(ReadError::Busy(max));
        }
        // Joins the next round, not the one in flight: that one may have
        // been answered by a majority before this read arrived.
        m.reads.waiting.push(token);
        Ok(())
    }

    /// Whether reads wait for a round that may start now: none is in
    /// flight, and the barrier is committed (everything an earlier master
    /// chose is below the commit index).
    fn can_start_read_round(&self) -> bool {
        match &self.state {
            State::Master(m) => {
                self.cfg.read_mode == ReadMode::Quorum
                    && m.reads.round.is_none()
                    && !m.reads.waiting.is_empty()
                    && m.transfer.is_none()
                    && self.commit >= m.barrier
            }
            _ => false,
        }
    }

    fn start_read_round(&mut self, now: Duration) {
        let me = self.cfg.id;
        let State::Master(m) = &mut self.state else {
            return;
        };
        m.reads.seq += 1;
        let seq = m.reads.seq;
        let ballot = m.ballot;
        m.reads.round = Some(ReadRound {
            seq,
            started: now,
            acks: BTreeSet::from([me]),
            reads: std::mem::take(&mut m.reads.waiting),
        });
        for p in self.peers() {
            self.send(p, Message::ReadProbe { ballot, seq });
        }
        // A single voter is a majority by itself.
        self.finish_read_round();
    }

    /// An acceptor answers a probe unless it promised a higher ballot.
    fn on_read_probe(&mut self, now: Duration, from: NodeId, ballot: Ballot, seq: u64) {
        self.highest_round = self.highest_round.max(ballot.round);
        if ballot < self.promised {
            return self.reject(from, ballot, RejectReason::Outdated);
        }
        if ballot == self.promised && from != self.cfg.id {
            self.heard_from_master(now, ballot.node);
        }
        self.send(from, Message::ReadAck { ballot, seq });
    }

    fn on_read_ack(&mut self, from: NodeId, ballot: Ballot, seq: u64) {
        let State::Master(m) = &mut self.state else {
            return;
        };
        if m.ballot != ballot {
            return;
        }
        if let Some(r) = m.reads.round.as_mut()
            && r.seq == seq
        {
            r.acks.insert(from);
            self.finish_read_round();
        }
    }

    /// Answers the round's reads at the commit index once a majority of
    /// voters acknowledged it.
    fn finish_read_round(&mut self) {
        let commit = self.commit;
        let membership = self.membership().clone();
        let State::Master(m) = &mut self.state else {
            return;
        };
        let Some(r) = m.reads.round.as_ref() else {
            return;
        };
        let votes = r.acks.iter().filter(|id| membership.is_voter(**id)).count();
        if votes < membership.quorum() {
            return;
        }
        invariant!(
            commit >= m.barrier,
            "a read round finished below the barrier ({commit} < {})",
            m.barrier
        );
        let reads = m.reads.round.take().map(|r| r.reads).unwrap_or_default();
        self.ready
            .reads
            .extend(reads.into_iter().map(|t| (t, Ok(commit))));
    }

    fn fail_reads(&mut self, reads: Vec<u64>, hint: Option<NodeId>) {
        self.ready.reads.extend(
            reads
                .into_iter()
                .map(|t| (t, Err(ReadError::NotMaster { hint }))),
        );
    }

    /// Until when [`Replica::read_index`] keeps answering with the commit
    /// index, unless this replica is fed anything first: the master's lease
    /// end once it has committed its first lease, `None` otherwise. Lets the
    /// runtime answer lease reads without a round trip to the engine.
    pub fn read_lease_until(&self, now: Duration) -> Option<Duration> {
        match &self.state {
            State::Master(m) if self.commit >= m.barrier => m.lease_until.filter(|u| now < *u),
            _ => None,
        }
    }

    /// This master's ballot while it may act on the whole log: its lease is
    /// valid at `now` and everything earlier masters chose is committed
    /// (what [`Replica::read_lease_until`] asks). `None` elsewhere. Lease
    /// renewals and expiries are decided only then (see `crate::kv::lease`).
    pub fn serving_ballot(&self, now: Duration) -> Option<Ballot> {
        match &self.state {
            State::Master(m)
                if self.commit >= m.barrier && m.lease_until.is_some_and(|u| now < u) =>
            {
                Some(m.ballot)
            }
            _ => None,
        }
    }

    /// Members the master would send to, with their last reported commit.
    pub fn peer_progress(&self) -> BTreeMap<NodeId, Index> {
        match &self.state {
            State::Master(m) => m.peer_commit.clone(),
            _ => BTreeMap::new(),
        }
    }

    /// On a follower or learner: whether the master it knows of has said
    /// nothing for longer than three leases (a live master sends several
    /// heartbeats per lease, and a failover elects another within about
    /// one), or none is known. False on the master. For status only (a
    /// node that was removed, or cut off from the others, is told so by
    /// its silence): nothing in the protocol depends on it.
    pub fn master_silent(&self, now: Duration) -> bool {
        if self.is_master() {
            return false;
        }
        self.known_master.is_none() || now.saturating_sub(self.last_heard) > self.cfg.lease * 3
    }

    /// On the master: the other members it has not heard from for longer
    /// than twice the lease (a live member answers every heartbeat, several
    /// per lease). A member never heard from counts from when this node
    /// became master. Empty on other nodes, which cannot tell. For status
    /// only: nothing in the protocol depends on it.
    pub fn silent_peers(&self, now: Duration) -> BTreeSet<NodeId> {
        let State::Master(m) = &self.state else {
            return BTreeSet::new();
        };
        let window = self.cfg.lease * 2;
        self.membership()
            .members
            .keys()
            .copied()
            .filter(|id| *id != self.cfg.id)
            .filter(|id| {
                let last = m.peer_seen.get(id).copied().unwrap_or(m.since);
                now.saturating_sub(last) > window
            })
            .collect()
    }
}

/// The log a candidate's promises add up to above `commit`: for each slot, a
/// value known chosen, else the value accepted at the highest ballot (the
/// only one that may have been chosen).
fn merge_promises(
    promises: &BTreeMap<NodeId, Vec<(Index, LogEntry)>>,
    commit: Index,
) -> BTreeMap<Index, &LogEntry> {
    let mut merged: BTreeMap<Index, &LogEntry> = BTreeMap::new();
    for entries in promises.values() {
        for (i, e) in entries {
            if *i <= commit {
                continue;
            }
            match merged.get(i) {
                Some(m) if m.chosen => {
                    if e.chosen {
                        invariant!(
                            m.value == e.value,
                            "two chosen values for instance {i}: {:?} and {:?}",
                            m.value,
                            e.value
                        );
                    }
                }
                Some(m) if !e.chosen && m.ballot >= e.ballot => {}
                _ => {
                    merged.insert(*i, e);
                }
            }
        }
    }
    merged
}

/// Forgets the request ids of a committed batch: this replica's forwards
/// among them are answered (applied), and, on a master, copies of them
/// forwarded again may be proposed (the state machine takes them as
/// duplicates).
fn forget_committed(
    cmds: &[Command],
    unanswered: &mut BTreeMap<RequestId, Unanswered>,
    unanswered_bytes: &mut usize,
    forwarded: Option<&mut BTreeSet<RequestId>>,
) {
    if !unanswered.is_empty() {
        for c in cmds {
            if let Some(u) = unanswered.remove(&c.id) {
                *unanswered_bytes -= u.cmd.size_hint();
            }
        }
    }
    if let Some(f) = forwarded
        && !f.is_empty()
    {
        for c in cmds {
            f.remove(&c.id);
        }
    }
}
