//! The thread that drives the engine: it owns the [`Replica`], the durable
//! store and the write side of the state machine, and runs the loop
//!
//! 1. take every input that is waiting (peer messages, proposals, reads, ticks);
//! 2. feed them all to the engine;
//! 3. persist the engine's records with one fsync (group commit), with the
//!    master's proposals already on their way so the fsyncs overlap;
//! 4. hand the other messages to the transport;
//! 5. apply what was chosen and answer the clients waiting for it.
//!
//! One thread, because the engine is a plain value and an fsync is a blocking
//! call; everything else talks to it through a bounded channel.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use tokio::sync::{broadcast, oneshot, watch};

use crate::kv::{Event, OpResult, Store, StoreConfig};
use crate::paxos::{
    Command, ConfChange, Envelope, HandoffError, Index, Membership, NodeId, ProposeError,
    ReadError, Replica, RequestId, SnapshotMeta, Status, Value,
};
use crate::storage::snapshot_file::{self, Sealed};
use crate::storage::{DiskStore, LogStore};
use crate::telemetry::Metrics;

use super::transport::Outbox;
use super::wire::{LeaseAnswer, LeaseReply};

/// How often the engine's timers are advanced.
const TICK: Duration = Duration::from_millis(10);
/// Inputs handled per loop turn before persisting (bounds latency of a turn).
const MAX_INPUTS_PER_TURN: usize = 4096;
/// Keys a compaction encodes per hold of the state machine's lock: bounds
/// how long an apply can wait behind it.
const SNAPSHOT_KEYS_PER_PIECE: usize = 1024;

/// Work for the driver thread.
#[derive(Debug)]
pub enum Input {
    Peer(Vec<Envelope>),
    Propose {
        cmd: Command,
        reply: oneshot::Sender<Result<OpResult, ProposeError>>,
    },
    /// A write for master `to` to propose, answered when this node applies
    /// it (see [`Replica::forward`]).
    Forward {
        to: NodeId,
        cmd: Command,
        reply: oneshot::Sender<Result<OpResult, ProposeError>>,
    },
    /// A read index: this node's own, or with `master` set, asked of that
    /// master on the peer stream (see [`Replica::request_remote_read`]).
    ReadIndex {
        master: Option<NodeId>,
        reply: ReadReply,
    },
    Change {
        change: ConfChange,
        reply: oneshot::Sender<Result<Index, ProposeError>>,
    },
    /// Hand mastership to `target`, or to the most caught-up voter when
    /// `None` (clean shutdown); answered with the target once the handoff
    /// has begun, or with why not (see [`Replica::hand_off`]).
    HandOff {
        target: Option<NodeId>,
        reply: oneshot::Sender<Result<NodeId, HandoffError>>,
    },
    /// This replica's state is known to be wrong: never run for master.
    ForbidCandidacy,
    /// A snapshot received from a peer, checked, and decoded into `store`.
    InstallSnapshot {
        meta: SnapshotMeta,
        store: Box<Store>,
        file: Sealed,
        reply: oneshot::Sender<Result<(), String>>,
    },
    /// The background compaction published a snapshot at `meta`.
    Compacted {
        meta: SnapshotMeta,
        bytes: u64,
        took: Duration,
    },
    /// The background compaction ended without a snapshot.
    CompactionFailed {
        error: String,
    },
    /// Keep-alives (`renew`) or TTL queries for leases, answered by a
    /// master that may act on the whole log, after the turn's applies.
    Lease {
        ids: Vec<u64>,
        renew: bool,
        reply: oneshot::Sender<LeaseReply>,
    },
    Shutdown,
}

/// How often the master looks for leases past their deadline.
const LEASE_CHECK: Duration = Duration::from_millis(100);

/// What the driver publishes after every turn, for status pages and
/// readiness without a round trip to the thread.
#[derive(Clone, Debug)]
pub struct Published {
    pub status: Status,
    pub applied: Index,
    pub revision: u64,
    pub peer_commit: std::collections::BTreeMap<NodeId, Index>,
    /// On the master: members it has not heard from lately.
    pub silent: std::collections::BTreeSet<NodeId>,
    /// Elsewhere: the master has not been heard from lately (see
    /// [`crate::paxos::Replica::master_silent`]).
    pub master_silent: bool,
    /// Auth is on for the whole cluster, as far as this node has applied.
    pub auth_enabled: bool,
    /// The store's size as the quota counts it, as applied here
    /// ([`crate::kv::Store::size_bytes`]).
    pub store_bytes: u64,
}

/// What a lease read on the master needs, shared without a round trip to the
/// driver thread.
///
/// The driver stores both values at the start of every turn, before
/// anything of that turn becomes visible outside (messages, applied writes,
/// answers). So a reader that loads them sees a commit index at least as
/// high as that of any write acknowledged or seen before its read began,
/// and a lease that was valid then: a mastership handoff clears it in the
/// engine, and the turn that sends the handoff first stores "no lease".
#[derive(Debug, Default)]
pub struct ReadLease {
    /// The master's lease end, in nanoseconds since the node's epoch; `0`
    /// when this node may not serve lease reads.
    until_ns: AtomicU64,
    commit: AtomicU64,
}

impl ReadLease {
    /// The read index if this node holds a valid lease at `now` (since the
    /// node's epoch).
    pub fn read_index(&self, now: Duration) -> Option<Index> {
        let until = self.until_ns.load(Ordering::SeqCst);
        let commit = self.commit.load(Ordering::SeqCst);
        (u128::from(until) > now.as_nanos()).then_some(commit)
    }

    fn store(&self, commit: Index, until: Option<Duration>) {
        self.commit.store(commit, Ordering::SeqCst);
        let until = until.map_or(0, |u| u64::try_from(u.as_nanos()).unwrap_or(u64::MAX));
        self.until_ns.store(until, Ordering::SeqCst);
    }
}

/// Everything the driver thread owns.
pub struct Driver {
    pub replica: Replica,
    pub disk: DiskStore,
    pub store: Arc<RwLock<Store>>,
    pub inputs: Receiver<Input>,
    /// For work done off this thread to report back.
    pub inputs_tx: SyncSender<Input>,
    /// A compaction is running in the background.
    pub compacting: bool,
    pub outbox: Outbox,
    pub events: broadcast::Sender<Event>,
    pub published: watch::Sender<Published>,
    pub membership: watch::Sender<Membership>,
    pub metrics: Metrics,
    /// Compact the log once this many applied instances follow the snapshot.
    pub compact_after: u64,
    /// Compact the log once commands of this many bytes were applied since
    /// the snapshot, however few the instances.
    pub compact_after_bytes: u64,
    /// What was applied since the snapshot, in bytes.
    pub log_bytes: LogBytes,
    /// The data volume has less free than the node keeps (see
    /// `Node::check_disk`): compact as soon as a log segment's worth was
    /// applied, since writes are refused until space comes back.
    pub disk_tight: Arc<std::sync::atomic::AtomicBool>,
    pub epoch: Instant,
    pub read_lease: Arc<ReadLease>,
    /// Checkpoints of the state digest, compared with the peers'.
    pub digests: Arc<std::sync::Mutex<super::digest::Digests>>,
    /// Reads the engine has not answered yet.
    pub reads: ReadWaiters,
    /// With archiving on: every applied entry goes here, for the archiver.
    pub archive_tail: Option<Arc<crate::archive::archiver::Archive>>,
    /// The lease deadlines, kept while this node is master.
    pub lease_timers: crate::kv::LeaseTimers,
    /// Lease questions waiting for the end of the turn.
    pub lease_questions: Vec<(Vec<u64>, bool, oneshot::Sender<LeaseReply>)>,
    /// Request ids of this node's lease expiries and fences: a client id
    /// of its own and a counter.
    pub expiry_ids: RequestId,
    /// What the peers said they do: lease fences once every member does.
    pub peer_features: Arc<super::PeerFeatures>,
    /// The master this node followed fell silent and this was logged; the
    /// next word from a master is logged too.
    pub cut_off_logged: bool,
    /// What peers acknowledged (see [`super::rollback`]).
    pub seen: Arc<std::sync::Mutex<super::rollback::Seen>>,
    /// How far this replica's durable acceptor state reaches, raised once
    /// each turn's records are synced (see [`super::rollback`]).
    pub durable: Arc<std::sync::Mutex<super::rollback::Mark>>,
}

/// Once this node sees another master (or none), writes it forwarded to the
/// old one are answered "not master", to be sent again to the new one under
/// the same request id: the old master may never propose them, and nothing
/// else would tell. If it did propose them and they are chosen too, the
/// state machine applies the second copy as a duplicate (see
/// [`crate::kv::dedup`]), so retrying is safe.
///
/// Writes this node proposed itself, as a master that has since stepped
/// down, wait for their deadline: one in an instance a new master may
/// still choose must be answered "may still commit", never "retry", and
/// the write loop could not tell that answer from an engine that refused
/// it outright.
fn answer_stale_forwards(waiters: &mut HashMap<RequestId, Waiter>, master: Option<NodeId>) {
    for (_, w) in waiters.extract_if(|_, w| sent_elsewhere(w.forwarded_to, master)) {
        let _ = w.reply.send(Err(ProposeError::NotMaster { hint: master }));
    }
}

/// Whether a request that went to `to` (`None`: to this node's own engine)
/// went to another node than `master`.
fn sent_elsewhere(to: Option<NodeId>, master: Option<NodeId>) -> bool {
    to.is_some_and(|to| Some(to) != master)
}

/// Where the engine's answer to [`Input::ReadIndex`] goes.
type ReadReply = oneshot::Sender<Result<Index, ReadError>>;

/// Callers of [`Input::ReadIndex`] waiting for the engine's answer, by the
/// token it was asked with.
#[derive(Debug, Default)]
pub struct ReadWaiters {
    /// With the master a remote request went to.
    waiting: HashMap<u64, (ReadReply, Option<NodeId>)>,
    next: u64,
}

impl ReadWaiters {
    /// Tokens from `seed` on (below [`crate::paxos::REMOTE_READ_TOKEN`]),
    /// `seed` being this process's own: a read-index answer addressed to an
    /// earlier process of this node (queued at the master while it was down)
    /// then names no token this one waits for.
    pub fn starting_at(seed: u64) -> ReadWaiters {
        ReadWaiters {
            waiting: HashMap::new(),
            next: seed >> 2,
        }
    }

    /// Answers "not master" to the reads that wait for an answer from
    /// another master than `master`: the one they asked is gone and may
    /// never answer (their callers ask `master` next).
    fn answer_stale(&mut self, master: Option<NodeId>) {
        for (_, (reply, _)) in self
            .waiting
            .extract_if(|_, (_, to)| sent_elsewhere(*to, master))
        {
            let _ = reply.send(Err(ReadError::NotMaster { hint: master }));
        }
    }
}

/// The bytes of commands applied since the newest snapshot: the part of the
/// log that a compaction would free.
///
/// The engine keeps every instance since the snapshot in memory (and the
/// log on disk holds them too), so compacting only by count let the log grow
/// with the size of what was written: ten thousand instances of one 1 MiB
/// value each (a client overwriting one large key) is 10 GiB on every
/// replica at once, which the store quota does not see, since the store
/// itself holds one value. Counting bytes too bounds the log by
/// `serve --snapshot-every-bytes` plus what one snapshot takes to write.
#[derive(Debug, Default)]
pub struct LogBytes {
    /// Everything applied since the process started.
    applied: u64,
    /// Of that, what the newest published snapshot covers.
    covered: u64,
    /// `applied` when the compaction in progress began.
    began: Option<u64>,
}

impl LogBytes {
    fn add(&mut self, bytes: usize) {
        self.applied = self.applied.saturating_add(bytes as u64);
    }

    /// Bytes applied that no snapshot covers yet.
    fn since_snapshot(&self) -> u64 {
        self.applied.saturating_sub(self.covered)
    }

    /// A compaction begins: it will cover everything applied so far.
    fn begin(&mut self) {
        self.began = Some(self.applied);
    }

    /// The compaction that began is published.
    fn compacted(&mut self) {
        if let Some(began) = self.began.take() {
            self.covered = self.covered.max(began);
        }
    }

    /// A snapshot from a peer replaced the state and the log before it.
    fn replaced(&mut self) {
        self.covered = self.applied;
        self.began = None;
    }
}

impl std::fmt::Debug for Driver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Driver")
            .field("node", &self.replica.id())
            .field("compact_after", &self.compact_after)
            .finish_non_exhaustive()
    }
}

struct Waiter {
    reply: oneshot::Sender<Result<OpResult, ProposeError>>,
    since: Instant,
    /// The master a forwarded write went to.
    forwarded_to: Option<NodeId>,
}

impl Driver {
    /// Runs until a [`Input::Shutdown`] arrives or every sender is gone.
    pub fn run(mut self) {
        let mut waiters: HashMap<RequestId, Waiter> = HashMap::new();
        let mut last_tick = Instant::now();
        let mut last_lease_check = Instant::now();
        let mut was_master = false;
        let mut master = None;
        self.turn(&mut waiters);
        loop {
            // The engine's own votes, fed back at the end of the last turn,
            // may have left work (a commit, the next batch): do it now
            // rather than after waiting for input.
            let wait = if self.replica.has_ready() {
                Duration::ZERO
            } else {
                TICK
            };
            let first = match self.inputs.recv_timeout(wait) {
                Ok(i) => Some(i),
                Err(RecvTimeoutError::Timeout) => None,
                Err(RecvTimeoutError::Disconnected) => return,
            };
            let mut shutdown = false;
            let mut handled = 0;
            let mut next = first;
            while let Some(input) = next {
                if matches!(input, Input::Shutdown) {
                    shutdown = true;
                    break;
                }
                self.handle(input, &mut waiters);
                handled += 1;
                if handled >= MAX_INPUTS_PER_TURN {
                    break;
                }
                next = self.inputs.try_recv().ok();
            }
            if last_tick.elapsed() >= TICK {
                last_tick = Instant::now();
                let now = self.now();
                self.replica.tick(now);
            }
            self.turn(&mut waiters);
            let now_master = self.replica.master_hint();
            if now_master != master {
                master = now_master;
                answer_stale_forwards(&mut waiters, master);
                self.reads.answer_stale(master);
            }
            self.answer_lease_questions();
            if last_lease_check.elapsed() >= LEASE_CHECK {
                last_lease_check = Instant::now();
                self.expire_leases();
            }
            let is_master = self.replica.is_master();
            if is_master != was_master {
                was_master = is_master;
                if is_master {
                    self.metrics.inc_master_changes();
                    tracing::info!(ballot = %self.replica.status(self.now()).ballot, "became master");
                } else {
                    match self.replica.master_hint() {
                        Some(m) => {
                            let name = self.replica.membership().name_of(m);
                            tracing::info!(master = %name, "no longer master");
                        }
                        None => tracing::info!("no longer master"),
                    }
                }
            }
            self.publish();
            if shutdown {
                return;
            }
        }
    }

    fn now(&self) -> Duration {
        self.epoch.elapsed()
    }

    fn handle(&mut self, input: Input, waiters: &mut HashMap<RequestId, Waiter>) {
        let now = self.now();
        match input {
            Input::Peer(envs) => {
                self.metrics.inc_peer_messages("in", envs.len() as u64);
                if let Ok(mut seen) = self.seen.lock() {
                    for env in &envs {
                        seen.observe(env.from, &env.msg);
                    }
                    seen.bound(self.replica.membership());
                }
                for env in envs {
                    self.replica.step(now, env.from, env.msg);
                }
            }
            Input::Propose { cmd, reply } => {
                let id = cmd.id;
                let proposed = self.replica.propose(now, cmd);
                self.wait_for(waiters, id, proposed, reply, None);
            }
            Input::Forward { to, cmd, reply } => {
                let id = cmd.id;
                let forwarded = self.replica.forward(now, to, cmd);
                self.wait_for(waiters, id, forwarded, reply, Some(to));
            }
            Input::ReadIndex { master, reply } => {
                let token = self.reads.next;
                self.reads.next += 1;
                let asked = match master {
                    Some(m) => self.replica.request_remote_read(now, m, token),
                    None => self.replica.request_read(now, token),
                };
                match asked {
                    Ok(()) => {
                        self.reads.waiting.insert(token, (reply, master));
                    }
                    Err(e) => {
                        let _ = reply.send(Err(e));
                    }
                }
            }
            Input::Change { change, reply } => {
                let _ = reply.send(self.replica.propose_change(now, change));
            }
            Input::InstallSnapshot {
                meta,
                store,
                file,
                reply,
            } => {
                let _ = reply.send(self.install_snapshot(meta, store, file));
            }
            Input::Compacted { meta, bytes, took } => self.compacted(meta, bytes, took),
            Input::CompactionFailed { error } => {
                self.compacting = false;
                tracing::warn!(%error, "compaction did not finish; will retry");
            }
            Input::HandOff { target, reply } => {
                let _ = reply.send(self.replica.hand_off(now, target));
            }
            Input::ForbidCandidacy => self.replica.forbid_candidacy(),
            Input::Lease { ids, renew, reply } => self.lease_questions.push((ids, renew, reply)),
            Input::Shutdown => {}
        }
    }

    /// Registers the caller of a write the engine took, or answers it with
    /// why the engine did not.
    fn wait_for(
        &self,
        waiters: &mut HashMap<RequestId, Waiter>,
        id: RequestId,
        taken: Result<(), ProposeError>,
        reply: oneshot::Sender<Result<OpResult, ProposeError>>,
        forwarded_to: Option<NodeId>,
    ) {
        match taken {
            Ok(()) => {
                if forwarded_to.is_none() {
                    self.metrics.inc_proposals(1);
                }
                waiters.insert(
                    id,
                    Waiter {
                        reply,
                        since: Instant::now(),
                        forwarded_to,
                    },
                );
            }
            Err(e) => {
                let _ = reply.send(Err(e));
            }
        }
    }

    /// Persist, send, apply: the engine's contract, in that order.
    fn turn(&mut self, waiters: &mut HashMap<RequestId, Waiter>) {
        let now = self.now();
        self.read_lease.store(
            self.replica.commit_index(),
            self.replica.read_lease_until(now),
        );
        let mut ready = self.replica.take_ready();
        if ready.is_empty() {
            return;
        }
        self.metrics
            .inc_peer_messages("out", ready.messages.len() as u64);
        let me = self.replica.id();
        let mut to_self = Vec::new();
        let mut after_persist = Vec::new();
        if !ready.persist.is_empty() {
            // Proposals go out first, so the acceptors' fsyncs overlap ours;
            // no input is handled before ours is done (this thread is busy).
            for env in std::mem::take(&mut ready.messages) {
                if env.to == me {
                    to_self.push(env);
                } else if env.msg.may_precede_persist() {
                    self.outbox.send(env);
                } else {
                    after_persist.push(env);
                }
            }
        } else {
            after_persist = std::mem::take(&mut ready.messages);
        }
        if !ready.persist.is_empty() {
            let started = Instant::now();
            if let Err(e) = self.disk.append(&ready.persist) {
                // Without durability no promise may leave this node: stop
                // here rather than send anything that relies on it.
                tracing::error!(error = %e, "cannot persist; shutting the engine down");
                std::process::exit(70);
            }
            self.metrics.observe_fsync(started.elapsed());
            // Synced: what these records say may now be stated to peers.
            if let Ok(mut durable) = self.durable.lock() {
                durable.raise_by(&ready.persist);
            }
        }
        for env in after_persist {
            if env.to == me {
                to_self.push(env);
            } else {
                self.outbox.send(env);
            }
        }
        if !ready.committed.is_empty() {
            self.apply(ready.committed, waiters);
        }
        for cmd in ready.rejected {
            if let Some(w) = waiters.remove(&cmd.id) {
                let _ = w.reply.send(Err(ProposeError::NotMaster {
                    hint: self.replica.master_hint(),
                }));
            }
        }
        if ready.forwards_sent_again > 0 {
            self.metrics
                .inc_forwards_sent_again(ready.forwards_sent_again as u64);
        }
        for (id, e) in ready.refused {
            if let Some(w) = waiters.remove(&id) {
                let _ = w.reply.send(Err(e));
            }
        }
        for peer in ready.send_snapshot {
            self.send_snapshot(peer);
        }
        for (token, answer) in ready.reads {
            if let Some((reply, _)) = self.reads.waiting.remove(&token) {
                let _ = reply.send(answer);
            }
        }
        // A replica's messages to itself (its own promise, its acceptance of
        // what it proposed, a refusal of its own stale accept) count only
        // once this turn's records are durable, which they are now.
        let now = self.now();
        for env in to_self {
            self.replica.step(now, env.from, env.msg);
        }
        // Forget waiters whose caller gave up (deadline passed).
        if waiters.len() > 1024 {
            waiters.retain(|_, w| !w.reply.is_closed());
        }
        if self.reads.waiting.len() > 1024 {
            self.reads.waiting.retain(|_, (r, _)| !r.is_closed());
        }
        self.maybe_compact();
    }

    /// The mastership this node may decide lease questions in: master with
    /// a valid lease, everything earlier masters chose committed and
    /// applied, and its own lease fence applied (see `crate::kv::lease`
    /// for why that is enough). Brings the timers up to date for it, and
    /// proposes the fence when it is missing; `None` (and timers dropped
    /// when no longer master) otherwise.
    fn lease_ballot(&mut self, store: &Store) -> Option<crate::paxos::Ballot> {
        let now = self.now();
        let ballot = self
            .replica
            .serving_ballot(now)
            .filter(|_| store.applied_index() >= self.replica.commit_index());
        let Some(ballot) = ballot else {
            if !self.replica.is_master() {
                self.lease_timers.step_down();
            }
            return None;
        };
        let fences = super::members_do(
            &self.peer_features,
            self.replica.membership(),
            self.replica.id(),
            |f| f.lease_fence,
        );
        match self.lease_timers.gate(now, ballot, store, fences) {
            crate::kv::lease::Gate::Open => Some(ballot),
            crate::kv::lease::Gate::Closed(fence) => {
                if let Some(op) = fence {
                    tracing::debug!(%ballot, "proposing this mastership's lease fence");
                    self.propose_lease_op(op);
                }
                None
            }
        }
    }

    /// Proposes a lease op of the cluster's own: an expiry, or a fence,
    /// which goes ahead of every client's write (see
    /// [`Replica::propose_first`]).
    fn propose_lease_op(&mut self, op: crate::kv::LeaseOp) {
        self.expiry_ids.seq += 1;
        let first = matches!(op, crate::kv::LeaseOp::Fence { .. });
        let cmd = Command {
            id: self.expiry_ids,
            op: crate::kv::Op::Lease(op),
        };
        let now = self.now();
        let proposed = if first {
            self.replica.propose_first(now, cmd)
        } else {
            self.replica.propose(now, cmd)
        };
        if let Err(e) = proposed {
            tracing::debug!(error = %e, "could not propose a lease op");
        }
    }

    fn answer_lease_questions(&mut self) {
        use crate::kv::lease::RenewError;
        if self.lease_questions.is_empty() {
            return;
        }
        let store = self.store.clone();
        let Ok(store) = store.read() else {
            tracing::error!("state machine lock poisoned");
            std::process::exit(70);
        };
        let ballot = self.lease_ballot(&store);
        let now = self.now();
        for (ids, renew, reply) in std::mem::take(&mut self.lease_questions) {
            if ballot.is_none() {
                let hint = self.replica.master_hint();
                let _ = reply.send(LeaseReply::NotMaster { hint });
                continue;
            }
            let answers: Result<Vec<LeaseAnswer>, RenewError> = ids
                .into_iter()
                .map(|id| {
                    let Some(info) = store.lease(id) else {
                        return Ok(LeaseAnswer::NotFound { id });
                    };
                    if renew {
                        match self.lease_timers.renew(id, now) {
                            Ok(_) => {}
                            Err(RenewError::NotFound) => return Ok(LeaseAnswer::NotFound { id }),
                            Err(RenewError::Expired) => return Ok(LeaseAnswer::Expired { id }),
                            Err(e @ RenewError::NotReady) => return Err(e),
                        }
                    }
                    Ok(match self.lease_timers.remaining(id, now) {
                        Some(left) if !left.is_zero() => LeaseAnswer::Alive {
                            id,
                            ttl_secs: info.ttl_secs,
                            remaining_ms: u64::try_from(left.as_millis()).unwrap_or(u64::MAX),
                            granted_revision: info.granted,
                        },
                        Some(_) => LeaseAnswer::Expired { id },
                        None => LeaseAnswer::NotFound { id },
                    })
                })
                .collect();
            let _ = reply.send(match answers {
                Ok(answers) => LeaseReply::Leases(answers),
                // Not after `lease_ballot` said this master may; if it
                // ever were, the caller asks again.
                Err(_) => LeaseReply::NotMaster {
                    hint: self.replica.master_hint(),
                },
            });
        }
    }

    /// Proposes the expiry of every lease past its deadline (on a master
    /// that may decide it; see [`Driver::lease_ballot`]).
    fn expire_leases(&mut self) {
        let due = {
            let store = self.store.clone();
            let Ok(store) = store.read() else {
                return;
            };
            if self.lease_ballot(&store).is_none() {
                return;
            }
            self.lease_timers.due(self.now())
        };
        for (id, op) in due {
            tracing::info!(lease = id, "lease expired; proposing its end");
            self.propose_lease_op(op);
        }
    }

    fn apply(&mut self, committed: Vec<(Index, Value)>, waiters: &mut HashMap<RequestId, Waiter>) {
        let Ok(mut store) = self.store.write() else {
            tracing::error!("state machine lock poisoned");
            std::process::exit(70);
        };
        let before = store.revision();
        let mut config_changed = false;
        // Archived entries are pushed while the store's lock is held, so a
        // snapshot begun at applied index `b` is followed in the tail by
        // `b + 1` onwards (see `archive::tail`).
        let archive_ms = self.archive_tail.as_ref().map(|_| crate::archive::now_ms());
        for (index, value) in committed {
            let mut revisions = Vec::new();
            match &value {
                Value::Batch(cmds) => {
                    let bytes = cmds.iter().map(Command::size_hint).sum();
                    self.log_bytes.add(bytes);
                    self.metrics.observe_batch(cmds.len(), bytes);
                    for cmd in cmds.iter() {
                        let result = store.apply(cmd.id, &cmd.op);
                        if archive_ms.is_some() {
                            revisions.push(store.revision());
                        }
                        if let Some(w) = waiters.remove(&cmd.id) {
                            self.metrics.observe_commit_latency(w.since.elapsed());
                            let _ = w.reply.send(Ok(result));
                        }
                    }
                }
                Value::Config(_) => config_changed = true,
                Value::Noop | Value::Lease { .. } => {}
            }
            store.set_applied_index(index);
            if let (Some(archive), Some(time_ms)) = (&self.archive_tail, archive_ms) {
                archive.tail.push(crate::archive::segment::Entry {
                    index,
                    time_ms,
                    revision: store.revision(),
                    value,
                    revisions,
                });
            }
            if index % super::digest::CHECK_EVERY == 0
                && let Ok(mut d) = self.digests.lock()
            {
                d.record(
                    index,
                    super::digest::StateDigest {
                        keys: store.digest(),
                        requests: Some(store.requests_digest()),
                    },
                );
            }
        }
        let after = store.revision();
        if after > before
            && self.events.receiver_count() > 0
            && let Ok(events) = store.events_since(before + 1, b"", usize::MAX)
        {
            for e in events {
                let _ = self.events.send(e);
            }
        }
        drop(store);
        if config_changed {
            let m = self.replica.membership().clone();
            self.membership.send_replace(m);
        }
    }

    /// Sends the newest snapshot file to `peer`. It is the one the log was
    /// compacted to (a compaction counts only once its file is published),
    /// so it covers everything the peer lacks that is no longer in the log.
    fn send_snapshot(&mut self, peer: NodeId) {
        let path = match self.disk.latest_snapshot() {
            Ok(Some(path)) => path,
            Ok(None) => {
                let peer = self.replica.membership().name_of(peer);
                tracing::warn!(%peer, "no snapshot to send yet");
                return;
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot find the snapshot to send");
                return;
            }
        };
        // The engine asks again on every catch-up request, more often than
        // a large snapshot takes to send: count and log only a send that
        // began, not the asks that found one still on its way.
        if self.outbox.send_snapshot(peer, &path) {
            self.metrics.inc_snapshots("sent");
            let name = self.replica.membership().name_of(peer);
            tracing::info!(peer = %name, file = %path.display(), "sending snapshot");
        }
    }

    /// Starts a compaction in the background once enough was applied since
    /// the last one.
    ///
    /// The snapshot is of the state machine as it is now, taken in pieces
    /// while writes go on (see [`crate::kv::snapshot_stream`]): the lock is
    /// held for one piece at a time, and the file is written and synced off
    /// this thread. The log is compacted only once the file is published
    /// ([`Input::Compacted`]).
    fn maybe_compact(&mut self) {
        if self.compacting {
            return;
        }
        let applied = match self.store.read() {
            Ok(s) => s.applied_index(),
            Err(_) => return,
        };
        let first = self.replica.status(Duration::ZERO).first_index;
        let since = self.log_bytes.since_snapshot();
        // A full volume frees space only by compaction: deletes shrink the
        // store, and the log that still holds what they deleted goes once
        // a snapshot covers it.
        let tight = self.disk_tight.load(std::sync::atomic::Ordering::Relaxed)
            && since >= crate::storage::SEGMENT_BYTES;
        if applied < first + self.compact_after && since < self.compact_after_bytes && !tight {
            return;
        }
        let Ok(mut store) = self.store.write() else {
            return;
        };
        let start = store.begin_snapshot();
        // On this thread, as `apply` counts: the snapshot covers exactly the
        // bytes counted so far.
        self.log_bytes.begin();
        drop(store);
        let meta = SnapshotMeta {
            index: start.applied_index,
            membership: self.replica.membership_at(start.applied_index),
        };
        let mut writer = match snapshot_file::Writer::create(&self.disk.snapshot_dir(), &meta) {
            Ok(w) => w,
            Err(e) => {
                tracing::warn!(error = %e, "cannot start a snapshot; will retry");
                return;
            }
        };
        let store = self.store.clone();
        let report = self.inputs_tx.clone();
        let started = Instant::now();
        let spawned = std::thread::Builder::new()
            .name("phxkv-snapshot".into())
            .spawn(move || {
                let result = (|| {
                    writer.write(&start.head).map_err(|e| e.to_string())?;
                    let mut piece = Vec::new();
                    loop {
                        piece.clear();
                        let done = store
                            .write()
                            .map_err(|_| "state machine lock poisoned".to_string())?
                            .snapshot_chunk(start.id, SNAPSHOT_KEYS_PER_PIECE, &mut piece)
                            .map_err(|e| e.to_string())?;
                        writer.write(&piece).map_err(|e| e.to_string())?;
                        if done {
                            break;
                        }
                    }
                    let bytes = writer.written();
                    writer
                        .seal()
                        .and_then(Sealed::publish)
                        .map_err(|e| e.to_string())?;
                    Ok::<_, String>(bytes)
                })();
                let input = match result {
                    Ok(bytes) => Input::Compacted {
                        meta,
                        bytes,
                        took: started.elapsed(),
                    },
                    Err(error) => Input::CompactionFailed { error },
                };
                let _ = report.send(input);
            });
        match spawned {
            Ok(_) => self.compacting = true,
            Err(e) => tracing::warn!(error = %e, "cannot start the snapshot thread"),
        }
    }

    fn compacted(&mut self, meta: SnapshotMeta, bytes: u64, took: Duration) {
        self.compacting = false;
        match self.disk.snapshot_stored(&meta) {
            Ok(()) => {
                self.metrics.inc_snapshots("taken");
                tracing::info!(
                    index = meta.index,
                    bytes,
                    ms = took.as_millis() as u64,
                    "log compacted into a snapshot"
                );
                self.replica.compacted(meta);
                self.log_bytes.compacted();
            }
            Err(e) => tracing::warn!(error = %e, "compaction failed; will retry"),
        }
    }

    fn install_snapshot(
        &mut self,
        meta: SnapshotMeta,
        store: Box<Store>,
        file: Sealed,
    ) -> Result<(), String> {
        let applied = self.store.read().map(|s| s.applied_index()).unwrap_or(0);
        if meta.index <= applied {
            // Nothing new in it; dropping the file deletes it.
            return Ok(());
        }
        if store.applied_index() != meta.index {
            return Err(format!(
                "snapshot claims index {} but holds state at {}",
                meta.index,
                store.applied_index()
            ));
        }
        file.publish().map_err(|e| e.to_string())?;
        self.disk
            .snapshot_stored(&meta)
            .map_err(|e| e.to_string())?;
        if let Ok(mut current) = self.store.write() {
            // Also abandons a compaction in progress: it was of the old state.
            *current = *store;
        }
        tracing::info!(index = meta.index, "installed snapshot");
        self.metrics.inc_snapshots("installed");
        self.log_bytes.replaced();
        self.replica.snapshot_installed(meta);
        let m = self.replica.membership().clone();
        self.membership.send_replace(m);
        Ok(())
    }

    fn publish(&mut self) {
        let now = self.now();
        let status = self.replica.status(now);
        let master_silent = self.replica.master_silent(now);
        self.log_cut_off(master_silent, status.master);
        let (applied, revision, auth_enabled, store_bytes) = self
            .store
            .read()
            .map(|s| {
                (
                    s.applied_index(),
                    s.revision(),
                    s.auth().enabled(),
                    s.size_bytes() as u64,
                )
            })
            .unwrap_or((0, 0, false, 0));
        self.metrics.set_store_bytes(store_bytes);
        self.metrics.set_is_master(status.is_master);
        self.metrics
            .set_lease_remaining(status.lease_remaining.unwrap_or_default());
        self.metrics
            .set_log_entries(status.last_index.saturating_sub(status.first_index) + 1);
        self.metrics.set_commit_index(status.commit);
        self.metrics.set_applied_index(applied);
        let peer_commit = self.replica.peer_progress();
        let silent = self.replica.silent_peers(now);
        self.published.send_if_modified(|p| {
            let changed = p.status != status
                || p.applied != applied
                || p.peer_commit != peer_commit
                || p.silent != silent
                || p.master_silent != master_silent
                || p.auth_enabled != auth_enabled
                || p.store_bytes != store_bytes;
            if changed {
                *p = Published {
                    status: status.clone(),
                    applied,
                    revision,
                    peer_commit: peer_commit.clone(),
                    silent: silent.clone(),
                    master_silent,
                    auth_enabled,
                    store_bytes,
                };
            }
            changed
        });
    }
}

impl Driver {
    /// Says in the log when the master this node followed falls silent (the
    /// node was cut off, or removed from the cluster: a removed member is
    /// sent nothing more, so this is how it learns), and when a master is
    /// heard from again. The engine's state says when a node starts without
    /// a master, so that is not logged here.
    fn log_cut_off(&mut self, master_silent: bool, master: Option<NodeId>) {
        if master_silent && !self.cut_off_logged {
            if let Some(m) = master {
                let name = self.replica.membership().name_of(m);
                tracing::warn!(
                    master = %name,
                    "no word from the master for over three leases: this node is cut off from \
                     the others, or was removed from the cluster (it answers /readyz with 503 \
                     until a master is heard from)"
                );
                self.cut_off_logged = true;
            }
        } else if !master_silent && self.cut_off_logged {
            let name = master.map(|m| self.replica.membership().name_of(m));
            tracing::info!(
                master = name.as_deref().unwrap_or("this node"),
                "a master is heard from again"
            );
            self.cut_off_logged = false;
        }
    }
}

/// Loads the state machine from a snapshot file read a piece at a time, or
/// starts empty.
pub fn restore_store(snapshot: Option<snapshot_file::Reader>) -> Result<Store, String> {
    match snapshot {
        Some(reader) => {
            // Its checksum is checked at the end: damage before that shows
            // as a record that does not decode. Either way the file is bad.
            let path = reader.path().display().to_string();
            Store::restore_from_reader(reader, StoreConfig::default()).map_err(|e| {
                format!(
                    "snapshot file {path} is damaged or unreadable ({e}): {}",
                    crate::storage::DAMAGED_ADVICE
                )
            })
        }
        None => Ok(Store::new()),
    }
}

#[cfg(test)]
mod tests {
    use super::{LogBytes, Waiter, answer_stale_forwards};
    use crate::paxos::{ProposeError, RequestId};
    use std::collections::HashMap;
    use std::time::Instant;

    #[test]
    fn forwards_to_a_node_other_than_the_master_are_answered_not_master() {
        let mut waiters = HashMap::new();
        let mut answers = Vec::new();
        let mut wait = |waiters: &mut HashMap<RequestId, Waiter>, seq, to| {
            let (reply, rx) = tokio::sync::oneshot::channel();
            let waiter = Waiter {
                reply,
                since: Instant::now(),
                forwarded_to: to,
            };
            waiters.insert(RequestId { client: 9, seq }, waiter);
            answers.push((seq, rx));
        };
        // Proposed here (as a master, since stepped down), forwarded to
        // node 2, and to node 3, which is master now.
        wait(&mut waiters, 1, None);
        wait(&mut waiters, 2, Some(2));
        wait(&mut waiters, 3, Some(3));
        answer_stale_forwards(&mut waiters, Some(3));
        let mut left: Vec<u64> = waiters.keys().map(|id| id.seq).collect();
        left.sort_unstable();
        assert_eq!(left, vec![1, 3]);
        for (seq, mut rx) in answers {
            let got = rx.try_recv().ok();
            let expected = (seq == 2).then_some(Err(ProposeError::NotMaster { hint: Some(3) }));
            assert_eq!(got, expected, "request {seq}");
        }
    }

    #[test]
    fn log_bytes_count_what_no_published_snapshot_covers() {
        let mut b = LogBytes::default();
        b.add(300);
        b.begin();
        // Applied while the snapshot is written: not covered by it.
        b.add(50);
        assert_eq!(b.since_snapshot(), 350);
        b.compacted();
        assert_eq!(b.since_snapshot(), 50);
        // A compaction that failed covers nothing; the next one covers all.
        b.begin();
        b.add(20);
        b.begin();
        b.compacted();
        assert_eq!(b.since_snapshot(), 0);
        // A second report of the same compaction changes nothing.
        b.add(10);
        b.compacted();
        assert_eq!(b.since_snapshot(), 10);
        // A snapshot from a peer replaces everything before it.
        b.begin();
        b.add(5);
        b.replaced();
        b.compacted();
        assert_eq!(b.since_snapshot(), 0);
    }
}
