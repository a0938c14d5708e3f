//! The simulated world: replicas with their in-memory "disks", a network that
//! loses, duplicates, delays and partitions messages, drifting clocks, clients
//! that record their histories, and an operator that changes membership.
//!
//! Everything is driven from one seeded RNG and one event queue, so a seed
//! replays exactly. Only what a node persisted (its [`MemStore`]) survives a
//! crash; the replica, its state machine and its waiting clients are lost.
//! After every event the world checks its invariants; the first violation
//! ends the run with a message and the recent trace.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::time::Duration;

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

use super::lincheck::{KvCall, KvReturn, Operation};
use crate::auth::{AuthChange, Permission, TokenRecord};
use crate::kv::lease::Gate;
use crate::kv::{Expect, LeaseOp, LeaseTimers, Op, OpResult, Store, StoreSnapshot};
use crate::node::rollback::Mark;
use crate::paxos::{
    Ballot, Command, ConfChange, EngineConfig, Envelope, Index, Member, Membership, NodeId,
    ProposeError, ReadMode, Replica, RequestId, Role, SnapshotMeta, Value,
};
use crate::storage::{DiskStore, Identity, LogStore, MemStore};

/// Microseconds of simulated real time.
type Time = u64;

const TICK: Time = 5_000;
const CLIENT_TIMEOUT: Time = 600_000;
const MAX_ATTEMPTS: u32 = 12;
const TRACE_LEN: usize = 60;

/// Knobs of one simulated run, drawn from the seed.
#[derive(Clone, Debug)]
pub struct WorldOptions {
    pub nodes: usize,
    pub clients: usize,
    pub keys: usize,
    /// Simulated time during which clients run and faults happen.
    pub active: Time,
    /// Simulated time after healing for the cluster to settle.
    pub settle: Time,
    pub faults: bool,
    /// An administrator changes membership: adds the spare nodes as
    /// learners, promotes them, removes a voter, and replaces nodes that
    /// lost their disks.
    pub membership_changes: bool,
    /// Nodes beyond `nodes` that join during the run (with membership changes).
    pub spares: usize,
    /// Spares stay learners (with one voter: a single voter plus learners).
    pub keep_learners: bool,
    /// Time between the administrator's steps; below the lease, several
    /// voter changes complete within one lease.
    pub admin_interval: Time,
    /// Nodes lose their disks now and then and come back empty.
    pub disk_loss: bool,
    /// How a node that lost its disk comes back. `false` (the product): as a
    /// new incarnation with a new id that votes nowhere until the
    /// administrator replaces the old one. `true`: under its old id with the
    /// bootstrap configuration, voting at once, as phxkv did before
    /// incarnations; runs with it must be caught losing writes.
    pub disk_loss_keeps_identity: bool,
    /// Compact the log once it holds more than this many instances.
    pub compact_after: u64,
    /// How far each node's clock rate may stray from real time, in ppm.
    pub clock_drift_ppm: u32,
    /// The drift bound the engine is configured to tolerate, in ppm. Safe
    /// runs use `engine_drift_ppm >= clock_drift_ppm`.
    pub engine_drift_ppm: u32,
    /// Every injected crash hits the master exactly between sending its
    /// proposals and persisting, between persisting and sending the rest,
    /// or between sending and its next record.
    pub crash_points_only: bool,
    /// Keep each node's records in a real database under this directory
    /// (fsync and all) instead of in memory.
    pub disk_root: Option<std::path::PathBuf>,
    /// How masters confirm linearizable reads.
    pub read_mode: ReadMode,
    /// Processes are paused now and then (SIGSTOP, a VM migrated): nothing
    /// they are sent is handled until they resume, while time runs on.
    pub pauses: bool,
    /// When a rolling upgrade to a version with lease fences starts (see
    /// `crate::kv::lease`): every node restarts in turn, the lease actor
    /// goes quiet so that its lease expires meanwhile, and once the last
    /// node is back, masters fence. Before that they decide expiries
    /// without fences, as a cluster does until every member has them.
    /// 0: no upgrade, fences from the start.
    pub fences_from: Time,
    /// How many request ids each store remembers. Clients send a write
    /// again under the same id until it is answered, each copy marked as
    /// [`Op::Once`] from where the first attempt reached; with a small
    /// table, copies meet a table that forgot the first, and each must be
    /// answered from the table or refused as [`OpResult::Forgotten`],
    /// never applied a second time.
    pub dedup_capacity: usize,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum CrashPoint {
    /// Crash after the messages that may precede persisting left, before
    /// the records are durable.
    BeforePersist,
    /// Crash right after persisting, before any message of that output leaves.
    AfterPersist,
    /// Crash after sending, before applying or answering anything.
    AfterSend,
}

#[derive(Debug)]
enum Event {
    Tick(usize),
    Deliver(Envelope),
    Snapshot {
        to: NodeId,
        meta: SnapshotMeta,
        data: Vec<u8>,
    },
    ClientSend {
        client: usize,
    },
    ClientArrive {
        client: usize,
        node: usize,
        attempt: u32,
    },
    ClientReply {
        client: usize,
        attempt: u32,
        reply: Reply,
    },
    ClientTimeout {
        client: usize,
        attempt: u32,
    },
    ClientRetry {
        client: usize,
        attempt: u32,
    },
    Crash,
    Restart(usize),
    Partition,
    Heal,
    Admin,
    Handoff,
    DiskLoss,
    /// The end of a node's turn: what it was fed since is persisted, sent
    /// and applied together (see `World::turn_delay`).
    Turn(usize),
    Pause,
    /// The auth actor's next step (see [`AuthModel`]).
    Auth,
    /// The lease actor's next step (see [`LeaseActor`]).
    Lease,
    /// The next step of a rolling upgrade to a version with lease fences:
    /// node `n` restarts, or with every node done, fences are on (see
    /// [`WorldOptions::fences_from`]).
    Upgrade(usize),
}

/// The sim's lease actor: holds one lease at a time, keeps it alive at a
/// master (as the API does: only at a master that may act on the whole
/// log), attaches keys to it, revokes it now and then, and goes silent for
/// longer than its TTL so that it expires. The world checks the guarantee
/// of [`crate::kv::lease`]: no expiry is proposed, let alone applied, less
/// than the TTL of real time after the last acknowledged keep-alive.
#[derive(Debug, Default)]
struct LeaseActor {
    seq: u64,
    /// The lease it holds, once its grant is applied.
    held: Option<u64>,
    /// A grant proposed and not yet seen applied: the id, and when.
    granting: Option<(u64, Time)>,
    /// Leases granted and not ended, with the real time of their grant or
    /// latest acknowledged keep-alive (the guarantee counts from there).
    alive: BTreeMap<u64, Time>,
    /// The actor is silent (a hung client) until then.
    silent_until: Time,
    renewals: usize,
    expiries: usize,
    /// Expiries that changed nothing because a later fence preceded them.
    fenced_off: usize,
    /// Expiries decided before an upgrade that took effect.
    unfenced: usize,
    /// The expiries proposed before an upgrade.
    unfenced_ids: BTreeSet<RequestId>,
    /// Its leases granted to [`LEASE_OWNER`] (half of them): the auth
    /// actor's token must never attach a key to one or revoke it.
    owned: BTreeSet<u64>,
    /// Attempts by the auth actor's token on such a lease, refused.
    intrusions_refused: BTreeSet<RequestId>,
    /// The mastership that decided each expiry proposed.
    deciders: BTreeMap<RequestId, Ballot>,
    /// Each mastership that answered a lease question or decided an
    /// expiry, with the index it had applied when it first did.
    opened: BTreeMap<Ballot, Index>,
    /// The expiries that took effect: where, and which mastership decided
    /// them.
    effective: Vec<(Index, Ballot)>,
}

/// The lease actor's request ids; the masters' expiries use
/// `EXPIRY_CLIENT + node index`.
const LEASE_CLIENT: u64 = 0x7fff_0000_0000_0002;
const EXPIRY_CLIENT: u64 = 0x7fff_0000_0001_0000;
/// The actor's TTL, in seconds: the shortest allowed.
const SIM_LEASE_TTL: u64 = crate::kv::lease::MIN_TTL_SECS;
/// The token that holds the lease actor's owned leases: never the auth
/// actor's [`SIM_TOKEN`], which tries to use them now and then.
const LEASE_OWNER: &str = "00000000000000bb";
/// The ids of the auth actor's own leases start above the lease actor's.
const AUTH_LEASES: u64 = 1 << 40;

/// The sim's auth actor changes the rules for one token now and then
/// (creates and revokes it, creates and deletes the role that lets it write
/// `t/`, switches auth on and off for the cluster) and writes as that token
/// and without a credential, through the log like any client. This is what
/// the rules are at a point of the log, computed from the chosen ops alone:
/// every replica must refuse exactly the writes this model refuses,
/// whatever it restarted from or installed as a snapshot.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct AuthModel {
    token: bool,
    role: bool,
    enabled: bool,
}

const SIM_TOKEN: &str = "00000000000000aa";
const SIM_ROLE: &str = "t-writer";
/// The auth actor's request ids.
const AUTH_CLIENT: u64 = 0x7fff_0000_0000_0001;

impl AuthModel {
    fn follow(&mut self, op: &Op) {
        match op {
            Op::Auth(AuthChange::CreateToken { .. }) => self.token = true,
            Op::Auth(AuthChange::DeleteToken { .. }) => self.token = false,
            Op::Auth(AuthChange::PutRole { .. }) => self.role = true,
            Op::Auth(AuthChange::DeleteRole { .. }) => self.role = false,
            Op::Auth(AuthChange::Enable) => self.enabled = true,
            Op::Auth(AuthChange::Disable) => self.enabled = false,
            _ => {}
        }
    }

    /// Whether the rules refuse `op`, a put as the token or without a
    /// credential, or a grant by the token (to itself, or to another token,
    /// which is never allowed) (`None` for anything else).
    fn refuses(&self, op: &Op) -> Option<bool> {
        match op {
            Op::As { op, .. } if matches!(**op, Op::Put { .. }) => Some(!(self.token && self.role)),
            Op::As { op, .. } => match &**op {
                Op::Lease(LeaseOp::GrantOwned { owner, .. }) => {
                    Some(!self.token || owner != SIM_TOKEN)
                }
                _ => None,
            },
            Op::Anonymous { op } if matches!(**op, Op::Put { .. }) => Some(self.enabled),
            _ => None,
        }
    }
}

#[derive(Clone, Debug)]
enum Reply {
    Done(KvReturn),
    Redirect(Option<NodeId>),
    /// The write was refused as [`OpResult::Forgotten`] and no copy of it
    /// was applied before: it never takes effect (see
    /// [`World::check_once`]). A client of the product would hear 504 and
    /// not know; the simulator knows, and tells the checker.
    NoEffect,
}

#[derive(Debug)]
struct Node {
    id: NodeId,
    name: String,
    up: bool,
    /// Still a member (or about to become one); removed nodes stay down.
    alive: bool,
    replica: Option<Replica>,
    store: Store,
    /// What survives a crash: in memory, or a real data directory on disk
    /// that is closed at a crash and reopened at the restart.
    disk: Box<dyn LogStore + Send>,
    /// Local monotonic clock: `offset + rate * real time`.
    clock_offset: u64,
    clock_rate_ppm: i64,
    initial: Membership,
    waiters: BTreeMap<RequestId, (usize, u32)>,
    reads: Vec<(Index, usize, u32, Vec<u8>)>,
    crash_point: Option<CrashPoint>,
    /// Last index applied to `store`, to check that applies are contiguous.
    applied: Index,
    /// A compaction in progress, taken in pieces while applies go on, as
    /// a real node does.
    taking: Option<Taking>,
    /// An [`Event::Turn`] is scheduled for this node.
    turn_pending: bool,
    /// Reads asked of the replica and not answered yet, by token.
    pending_reads: BTreeMap<u64, (usize, u32, Vec<u8>)>,
    /// The process is paused until then.
    paused_until: Time,
    /// The lease deadlines, kept while this node is master.
    timers: LeaseTimers,
    /// The highest promise and log index this incarnation told anyone,
    /// in `promise` and `accepted` messages, and the mark its driver would
    /// state once its records are synced: what peers may remember of it
    /// (see `crate::node::rollback`). Every restart must recover at least
    /// as much, or the check of a starting replica would refuse a correct
    /// data directory.
    told: Mark,
}

/// A snapshot being taken in pieces: its id in the store, what it covers,
/// the bytes so far, and the bytes a one-shot snapshot gave at its start
/// (which the pieces must add up to).
#[derive(Debug)]
struct Taking {
    id: u64,
    meta: SnapshotMeta,
    bytes: Vec<u8>,
    expected: Vec<u8>,
}

#[derive(Debug)]
struct Client {
    id: u64,
    seq: u64,
    /// Index into the history of the operation in progress.
    current: Option<usize>,
    /// Token of the newest attempt; never reused, so late replies to an
    /// earlier attempt (or an earlier operation) are recognised and dropped.
    attempt: u32,
    /// Attempts made for the current operation.
    tries: u32,
    /// Where its first attempt arrived, every slot up to this was chosen
    /// (the `after` of its [`Op::Once`] copies).
    after: Option<u64>,
    target: usize,
    done: bool,
}

/// One membership change the administrator wants, in terms of nodes; the
/// node's current incarnation is looked up when the step runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum AdminOp {
    /// Add node `i` as a learner (starting it if it never ran).
    Add(usize),
    Promote(usize),
    /// Remove a voter: the proposing master itself, sometimes; decided when
    /// the step first runs.
    RemoveSomeVoter,
    /// Remove node `i`, which then leaves the cluster for good.
    Retire(usize),
    /// Remove one incarnation (a node's before it lost its disk).
    RemoveIncarnation(NodeId),
}

/// The outcome of a run.
#[derive(Debug)]
pub struct RunReport {
    pub failure: Option<String>,
    pub trace: Vec<String>,
    pub history: Vec<Operation>,
    pub acknowledged_writes: usize,
    pub chosen_instances: usize,
    /// The most client commands chosen in one instance.
    pub largest_batch: usize,
    /// Processes paused.
    pub pauses: usize,
    /// Reads answered to clients.
    pub reads_answered: usize,
    /// Crashes that hit exactly between persisting and sending, or between
    /// sending and the next record.
    pub crash_points: usize,
    /// Disks lost, and replacements of their nodes that completed.
    pub disk_losses: usize,
    pub replacements: usize,
    /// Data directories (with `disk_root`) that lost some of their files
    /// but kept their identity, and were refused when opened.
    pub lost_files_refused: usize,
    /// Writes by the auth actor's token refused because the log had
    /// revoked it or its role first (every replica must refuse the same).
    pub auth_refusals: usize,
    /// Keep-alives acknowledged, and leases that expired.
    pub lease_renewals: usize,
    pub lease_expiries: usize,
    /// Expiries that changed nothing: a later master's fence came first.
    pub lease_fenced_off: usize,
    /// Expiries decided without a fence (before an upgrade) that took
    /// effect.
    pub lease_unfenced: usize,
    /// Attempts by a token on a lease held by another token, refused.
    pub lease_intrusions_refused: usize,
    /// Writes answered by a follower that had forwarded them to the master.
    pub forwarded_acks: usize,
    /// Forwarded writes the master sent back as "not master": it was not,
    /// or it stopped before proposing them.
    pub forward_refusals: usize,
    /// Forwarded writes a follower sent to the master again, unanswered.
    pub forwards_sent_again: usize,
    /// Client writes answered [`OpResult::Forgotten`]: a copy met a table
    /// that may have forgotten an earlier one.
    pub forgotten_copies: usize,
    /// Client attempts that had no answer within the client's timeout.
    pub client_timeouts: usize,
    /// Reads a follower served at the master's read index.
    pub follower_reads: usize,
}

/// A simulated cluster.
#[derive(Debug)]
pub struct World {
    opts: WorldOptions,
    rng: SmallRng,
    now: Time,
    seq: u64,
    events: BTreeMap<(Time, u64), Event>,
    nodes: Vec<Node>,
    clients: Vec<Client>,
    history: Vec<Operation>,
    /// The chosen value of every instance, as first applied anywhere.
    chosen: BTreeMap<Index, Value>,
    /// The digests of the keys and of the request-id table after each
    /// instance, as first applied (by whom).
    digests: BTreeMap<Index, (usize, (u128, u128))>,
    /// The auth rules after each instance that changed them.
    auth_models: BTreeMap<Index, AuthModel>,
    /// The auth actor's ops so far, and how many of its writes were
    /// refused as the model says.
    auth_seq: u64,
    auth_refusals: usize,
    forwarded_acks: usize,
    forward_refusals: usize,
    forwards_sent_again: usize,
    forgotten_copies: usize,
    /// The instance each client write was first applied at, and how: a
    /// copy applied later must be answered as that was (from the request-id
    /// table) or [`OpResult::Forgotten`], never applied again.
    first_applied: HashMap<RequestId, (Index, OpResult)>,
    /// The first instance at which a copy of each client write was refused
    /// as [`OpResult::Forgotten`].
    refused_at: HashMap<RequestId, Index>,
    /// Operations of the history known to have had no effect.
    no_effect: BTreeSet<usize>,
    client_timeouts: usize,
    follower_reads: usize,
    /// Where each of the actor's ops was first chosen: a copy chosen again
    /// later is answered from the dedup table, with the first outcome.
    auth_first: BTreeMap<RequestId, Index>,
    lease: LeaseActor,
    /// The first outcome of every lease change, by instance and request:
    /// every replica must come to the same (the same keys deleted at the
    /// same revision).
    lease_results: BTreeMap<(Index, RequestId), OpResult>,
    expiry_seq: u64,
    /// Request ids of writes a client saw acknowledged.
    acked: BTreeSet<RequestId>,
    blocked: BTreeSet<(NodeId, NodeId)>,
    loss: f64,
    dup: f64,
    slow: f64,
    max_delay: Time,
    /// How long a node keeps taking client requests and messages before it
    /// ends its turn; 0 ends a turn after every input. A real node handles
    /// whatever is queued before one persist-send-apply, so several
    /// proposals share an instance and several accepts one fsync.
    turn_delay: Time,
    engine_drift_ppm: u32,
    admin: VecDeque<AdminOp>,
    admin_running: bool,
    /// Nodes removed for good once their removal is committed.
    retiring: BTreeSet<usize>,
    /// Incarnations handed out so far, for fresh ids.
    incarnations: u64,
    /// The last step of each replacement under way.
    replacing: BTreeSet<AdminOp>,
    trace: VecDeque<String>,
    failure: Option<String>,
    crash_points: usize,
    disk_losses: usize,
    replacements: usize,
    lost_files_refused: usize,
    pauses: usize,
    stopping: bool,
    /// Every member decodes lease fences (see [`WorldOptions::fences_from`]).
    fences: bool,
    print_trace: bool,
}

fn node_id(i: usize) -> NodeId {
    i as NodeId + 1
}

impl World {
    pub fn new(seed: u64, opts: WorldOptions) -> World {
        let mut rng = SmallRng::seed_from_u64(seed);
        let engine_drift_ppm = opts.engine_drift_ppm;
        let drift = i64::from(opts.clock_drift_ppm);
        let total = opts.nodes
            + if opts.membership_changes {
                opts.spares
            } else {
                0
            };
        let mut initial = Membership::default();
        for i in 0..opts.nodes {
            initial.members.insert(
                node_id(i),
                Member {
                    name: format!("n{}", i + 1),
                    addr: format!("sim://n{}", i + 1),
                    role: Role::Voter,
                },
            );
        }
        let nodes = (0..total)
            .map(|i| Node {
                id: node_id(i),
                name: format!("n{}", i + 1),
                up: false,
                alive: i < opts.nodes,
                replica: None,
                store: Store::with_config(store_config(&opts)),
                disk: Box::new(MemStore::new()),
                clock_offset: rng.random_range(0..1_000_000_000),
                // Within the engine's drift bound, at either extreme sometimes.
                // Within the drift bound, often at either extreme.
                clock_rate_ppm: match rng.random_range(0..4) {
                    0 => -drift,
                    1 => drift,
                    _ => rng.random_range(-drift..=drift),
                },
                initial: if i < opts.nodes {
                    initial.clone()
                } else {
                    Membership::default()
                },
                waiters: BTreeMap::new(),
                reads: Vec::new(),
                crash_point: None,
                applied: 0,
                taking: None,
                turn_pending: false,
                pending_reads: BTreeMap::new(),
                paused_until: 0,
                timers: LeaseTimers::for_engine(&EngineConfig::new(node_id(i))),
                told: Mark::default(),
            })
            .collect();
        let clients = (0..opts.clients)
            .map(|c| Client {
                id: 1000 + c as u64,
                seq: 0,
                current: None,
                attempt: 0,
                tries: 0,
                after: None,
                target: 0,
                done: false,
            })
            .collect();
        let loss = if opts.faults {
            [0.0, 0.01, 0.05, 0.15][rng.random_range(0..4)]
        } else {
            0.0
        };
        let dup = if opts.faults { 0.02 } else { 0.0 };
        let opts_faults = opts.faults;
        let opts_fences_from = opts.fences_from;
        let max_delay = [1_000, 5_000, 30_000][rng.random_range(0..3)];
        let turn_delay = [0, 0, 300, 2_000][rng.random_range(0..4)];
        let mut w = World {
            opts,
            rng,
            now: 0,
            seq: 0,
            events: BTreeMap::new(),
            nodes,
            clients,
            history: Vec::new(),
            chosen: BTreeMap::new(),
            digests: BTreeMap::new(),
            auth_models: BTreeMap::new(),
            auth_seq: 0,
            auth_refusals: 0,
            forwarded_acks: 0,
            forward_refusals: 0,
            forwards_sent_again: 0,
            forgotten_copies: 0,
            first_applied: HashMap::new(),
            refused_at: HashMap::new(),
            no_effect: BTreeSet::new(),
            client_timeouts: 0,
            follower_reads: 0,
            auth_first: BTreeMap::new(),
            lease: LeaseActor::default(),
            lease_results: BTreeMap::new(),
            expiry_seq: 0,
            acked: BTreeSet::new(),
            blocked: BTreeSet::new(),
            loss,
            dup,
            slow: if opts_faults { 0.01 } else { 0.0 },
            max_delay,
            turn_delay,
            engine_drift_ppm,
            admin: VecDeque::new(),
            admin_running: false,
            retiring: BTreeSet::new(),
            incarnations: 0,
            replacing: BTreeSet::new(),
            trace: VecDeque::new(),
            failure: None,
            crash_points: 0,
            disk_losses: 0,
            lost_files_refused: 0,
            replacements: 0,
            pauses: 0,
            stopping: false,
            fences: opts_fences_from == 0,
            print_trace: std::env::var_os("PHXKV_SIM_TRACE").is_some(),
        };
        if opts_fences_from > 0 {
            w.schedule(opts_fences_from, Event::Upgrade(0));
        }
        for i in 0..w.opts.nodes {
            w.start_node(i);
        }
        for c in 0..w.opts.clients {
            let at = w.rng.random_range(0..50_000);
            w.schedule(at, Event::ClientSend { client: c });
        }
        if w.opts.clients > 0 {
            let at = w.rng.random_range(0..100_000);
            w.schedule(at, Event::Auth);
            let at = w.rng.random_range(0..100_000);
            w.schedule(at, Event::Lease);
        }
        if w.opts.faults {
            // About one fault per simulated second, crashes twice as often
            // as partitions.
            let faults = w.opts.active / 1_000_000 + w.rng.random_range(1..4);
            for _ in 0..faults {
                let at = w.rng.random_range(0..w.opts.active);
                let ev = match w.rng.random_range(0..5) {
                    0 => Event::Partition,
                    1 => Event::Handoff,
                    2 if w.opts.pauses => Event::Pause,
                    _ => Event::Crash,
                };
                w.schedule(at, ev);
            }
        }
        if w.opts.disk_loss {
            for _ in 0..w.rng.random_range(1..4) {
                let at = w.rng.random_range(0..w.opts.active * 3 / 4);
                w.schedule(at, Event::DiskLoss);
            }
        }
        if w.opts.membership_changes {
            for s in w.opts.nodes..w.nodes.len() {
                w.admin.push_back(AdminOp::Add(s));
                if !w.opts.keep_learners {
                    w.admin.push_back(AdminOp::Promote(s));
                }
            }
            if w.opts.nodes + w.opts.spares > 1 && !w.opts.keep_learners {
                w.admin.push_back(AdminOp::RemoveSomeVoter);
            }
            let at = w.rng.random_range(0..w.opts.active / 2);
            w.admin_running = true;
            w.schedule(at, Event::Admin);
        }
        w
    }

    fn schedule(&mut self, delay: Time, ev: Event) {
        self.seq += 1;
        self.events.insert((self.now + delay, self.seq), ev);
    }

    fn note(&mut self, s: String) {
        if self.print_trace {
            println!("{:>9}us {s}", self.now);
        }
        if self.trace.len() == TRACE_LEN {
            self.trace.pop_front();
        }
        self.trace.push_back(format!("{:>9}us {s}", self.now));
    }

    fn fail(&mut self, s: String) {
        if self.failure.is_none() {
            self.note(format!("FAILURE: {s}"));
            self.failure = Some(s);
        }
    }

    fn local_now(&self, i: usize) -> Duration {
        let n = &self.nodes[i];
        let scaled = self.now as i128 * (1_000_000 + n.clock_rate_ppm as i128) / 1_000_000;
        Duration::from_micros(n.clock_offset + scaled as u64)
    }

    fn index_of(&self, id: NodeId) -> Option<usize> {
        self.nodes.iter().position(|n| n.id == id)
    }

    fn engine_config(&self, i: usize) -> EngineConfig {
        let mut cfg = EngineConfig::new(self.nodes[i].id);
        cfg.lease = Duration::from_millis(400);
        cfg.max_drift_ppm = self.engine_drift_ppm;
        cfg.heartbeat = Duration::from_millis(50);
        cfg.election_timeout = Duration::from_millis(150);
        cfg.retry = Duration::from_millis(60);
        cfg.forward_retry = Duration::from_millis(120);
        cfg.forward_for = Duration::from_micros(CLIENT_TIMEOUT);
        cfg.window = 8;
        cfg.max_batch_commands = 16;
        cfg.catchup_batch = 64;
        cfg.max_promise_lag = 256;
        cfg.seed = self.nodes[i].id ^ self.now;
        cfg.read_mode = self.opts.read_mode;
        cfg
    }

    // ------------------------------------------------------------ nodes

    fn start_node(&mut self, i: usize) {
        let now = self.local_now(i);
        let cfg = self.engine_config(i);
        let name = self.nodes[i].name.clone();
        if let Some(root) = &self.opts.disk_root {
            // Reopen from the file, exactly as a restarted process would.
            let identity = Identity {
                node: name.clone(),
                cluster: "sim".into(),
            };
            match DiskStore::open(&root.join(&name), &identity) {
                Ok(d) => self.nodes[i].disk = Box::new(d),
                Err(e) => return self.fail(format!("{name} cannot open its data: {e}")),
            }
        }
        let (recovered, data) = match self.nodes[i].disk.recover() {
            Ok(r) => r,
            Err(e) => return self.fail(format!("{name} cannot recover: {e}")),
        };
        let recovered_mark = Mark::of_recovered(&recovered);
        let told = self.nodes[i].told;
        if !recovered_mark.covers(&told) {
            return self.fail(format!(
                "{name} recovered {recovered_mark} but had told its peers {told}: \
                 the start-up check would refuse a correct data directory"
            ));
        }
        // A started node states what it recovered: the next recovery must
        // not go below it either.
        self.nodes[i].told = told.max(recovered_mark);
        let store = match data {
            Some(bytes) => match StoreSnapshot::decode(&bytes) {
                Ok(s) => Store::restore_with(s, store_config(&self.opts)),
                Err(e) => return self.fail(format!("{name} bad snapshot: {e}")),
            },
            None => Store::with_config(store_config(&self.opts)),
        };
        let node = &mut self.nodes[i];
        node.store = store;
        node.applied = node.store.applied_index();
        node.timers = LeaseTimers::for_engine(&cfg);
        node.replica = Some(Replica::new(cfg, recovered, node.initial.clone(), now));
        node.up = true;
        node.waiters.clear();
        node.reads.clear();
        let name = node.name.clone();
        self.note(format!("{name} starts"));
        self.schedule(TICK, Event::Tick(i));
        self.process_ready(i);
    }

    /// Takes node `i` down, losing everything it did not persist, and
    /// schedules its restart.
    fn crash(&mut self, i: usize) {
        let down_for = self.rng.random_range(10_000..1_500_000);
        self.schedule(down_for, Event::Restart(i));
        let node = &mut self.nodes[i];
        node.up = false;
        node.replica = None;
        node.waiters.clear();
        node.reads.clear();
        node.pending_reads.clear();
        node.timers.step_down();
        node.crash_point = None;
        node.taking = None;
        if self.opts.disk_root.is_some() {
            // Close the database: only what it made durable comes back.
            node.disk = Box::new(MemStore::new());
        }
        let name = node.name.clone();
        self.note(format!("{name} crashes"));
    }

    /// Carries out a replica's output: persist, then send, then apply.
    fn process_ready(&mut self, i: usize) {
        let Some(replica) = self.nodes[i].replica.as_mut() else {
            return;
        };
        let mut ready = replica.take_ready();
        let is_master = replica.is_master();
        if ready.is_empty() {
            return;
        }
        if self.print_trace {
            let st = replica.status(Duration::ZERO);
            self.note(format!(
                "{} master={is_master} ballot={} commit={} persist={} msgs={:?} committed={:?}",
                self.nodes[i].name,
                st.ballot,
                st.commit,
                ready.persist.len(),
                ready
                    .messages
                    .iter()
                    .map(|m| (m.to, short(&m.msg)))
                    .collect::<Vec<_>>(),
                ready
                    .committed
                    .iter()
                    .map(|(i, v)| (*i, short_value(v)))
                    .collect::<Vec<_>>()
            ));
        }
        let crash_point = self.nodes[i].crash_point;
        // As the node's driver does: proposals leave before the records
        // are durable, everything else after.
        if !ready.persist.is_empty() {
            let (early, late): (Vec<_>, Vec<_>) = std::mem::take(&mut ready.messages)
                .into_iter()
                .partition(|env| env.msg.may_precede_persist());
            ready.messages = late;
            for env in early {
                // None of these states an acceptor fact today; if one ever
                // did, a crash right here must still find it on disk.
                if let Some(m) = Mark::told_by(&env.msg) {
                    self.nodes[i].told = self.nodes[i].told.max(m);
                }
                self.send(env);
            }
            if crash_point == Some(CrashPoint::BeforePersist) {
                self.crash_points += 1;
                self.note(format!(
                    "{} crash point: proposals sent, nothing persisted",
                    self.nodes[i].name
                ));
                return self.crash(i);
            }
        }
        if let Err(e) = self.nodes[i].disk.append(&ready.persist) {
            return self.fail(format!("persist failed: {e}"));
        }
        // What a node states once its records are synced, and what its
        // acceptor messages (all of which leave after that) tell.
        let node = &mut self.nodes[i];
        node.told.raise_by(&ready.persist);
        for m in ready
            .messages
            .iter()
            .filter_map(|env| Mark::told_by(&env.msg))
        {
            node.told = node.told.max(m);
        }
        if crash_point == Some(CrashPoint::AfterPersist) && !ready.persist.is_empty() {
            self.crash_points += 1;
            self.note(format!(
                "{} crash point: persisted, nothing sent",
                self.nodes[i].name
            ));
            return self.crash(i);
        }
        // A replica's messages to itself are its own votes: handed back once
        // the records are durable, never through the (lossy) network.
        let me = self.nodes[i].id;
        let (own, others): (Vec<_>, Vec<_>) =
            ready.messages.into_iter().partition(|env| env.to == me);
        for env in others {
            self.send(env);
        }
        if crash_point == Some(CrashPoint::AfterSend) && !ready.persist.is_empty() {
            self.crash_points += 1;
            self.note(format!(
                "{} crash point: sent, nothing applied",
                self.nodes[i].name
            ));
            return self.crash(i);
        }
        for (index, value) in ready.committed {
            self.apply(i, index, value);
        }
        self.forwards_sent_again += ready.forwards_sent_again;
        self.forward_refusals += ready
            .refused
            .iter()
            .filter(|(_, e)| matches!(e, ProposeError::NotMaster { .. }))
            .count();
        let refused = ready.refused.into_iter().map(|(id, _)| id);
        for id in ready.rejected.iter().map(|c| c.id).chain(refused) {
            if let Some((client, attempt)) = self.nodes[i].waiters.remove(&id) {
                let hint = self.nodes[i].replica.as_ref().and_then(|r| r.master_hint());
                self.reply(client, attempt, Reply::Redirect(hint));
            }
        }
        for peer in ready.send_snapshot {
            self.send_snapshot(i, peer);
        }
        for (token, answer) in ready.reads {
            let Some((client, attempt, key)) = self.nodes[i].pending_reads.remove(&token) else {
                continue;
            };
            match answer {
                Ok(index) => self.nodes[i].reads.push((index, client, attempt, key)),
                Err(_) => {
                    let hint = self.nodes[i].replica.as_ref().and_then(|r| r.master_hint());
                    self.reply(client, attempt, Reply::Redirect(hint));
                }
            }
        }
        self.serve_reads(i);
        self.maybe_compact(i);
        if !own.is_empty() {
            let now = self.local_now(i);
            if let Some(r) = self.nodes[i].replica.as_mut() {
                for env in own {
                    r.step(now, env.from, env.msg);
                }
            }
            self.process_ready(i);
        }
    }

    fn apply(&mut self, i: usize, index: Index, value: Value) {
        let name = self.nodes[i].name.clone();
        if index != self.nodes[i].applied + 1 {
            return self.fail(format!(
                "{name} applied {index} after {}: applied log is not a prefix",
                self.nodes[i].applied
            ));
        }
        match self.chosen.get(&index) {
            Some(v) if *v != value => {
                return self.fail(format!(
                    "instance {index}: {name} applied {value:?} but {v:?} was chosen"
                ));
            }
            Some(_) => {}
            None => {
                self.chosen.insert(index, value.clone());
            }
        }
        self.nodes[i].applied = index;
        if let Value::Batch(cmds) = &value {
            let before = self
                .auth_models
                .range(..index)
                .next_back()
                .map(|(_, m)| *m)
                .unwrap_or_default();
            let mut model = before;
            for cmd in cmds.iter() {
                let result = self.nodes[i].store.apply(cmd.id, &cmd.op);
                if matches!(cmd.op, Op::Once { .. })
                    && let Err(e) = self.check_once(index, cmd.id, &result)
                {
                    return self.fail(e);
                }
                if let (Some(expected), AUTH_CLIENT) = (model.refuses(&cmd.op), cmd.id.client) {
                    let refused = matches!(result, OpResult::Refused(_));
                    let written =
                        matches!(result, OpResult::Put { .. } | OpResult::LeaseGranted { .. });
                    // A retry that the dedup table answered repeats the
                    // first outcome; only first applies are judged.
                    let first = *self.auth_first.entry(cmd.id).or_insert(index) == index;
                    if first && (refused != expected || written == refused) {
                        return self.fail(format!(
                            "instance {index}: {name} answered {result:?} to {:?}, which the \
                             log says is {}",
                            cmd.op,
                            if expected { "refused" } else { "allowed" }
                        ));
                    }
                    if refused {
                        self.auth_refusals += 1;
                    }
                }
                model.follow(&cmd.op);
                if let Err(e) = self.follow_lease(i, index, cmd, &result) {
                    return self.fail(e);
                }
                if let Some((client, attempt)) = self.nodes[i].waiters.remove(&cmd.id) {
                    if !self.nodes[i]
                        .replica
                        .as_ref()
                        .is_some_and(|r| r.is_master())
                    {
                        self.forwarded_acks += 1;
                    }
                    let reply = match &result {
                        OpResult::Forgotten => {
                            self.forgotten_copies += 1;
                            match self.first_applied.get(&cmd.id) {
                                // An earlier copy was applied: that was
                                // its outcome, before this answer.
                                Some((_, first)) => Reply::Done(to_return(&cmd.op, first)),
                                None => Reply::NoEffect,
                            }
                        }
                        _ => Reply::Done(to_return(&cmd.op, &result)),
                    };
                    self.reply(client, attempt, reply);
                }
            }
            if model != before {
                self.auth_models.entry(index).or_insert(model);
            }
        }
        self.nodes[i].store.set_applied_index(index);
        // Replicas that applied the same log hold the same state: the
        // digests the nodes compare in production (of the keys and of the
        // request-id table) must agree at every index.
        let store = &self.nodes[i].store;
        let digest = (store.digest(), store.requests_digest());
        match self.digests.get(&index) {
            Some((first, d)) if *d != digest => {
                let first = self.nodes[*first].name.clone();
                let what = if d.0 != digest.0 {
                    "state"
                } else {
                    "request-id table"
                };
                return self.fail(format!(
                    "instance {index}: {name}'s {what} digest differs from {first}'s"
                ));
            }
            Some(_) => {}
            None => {
                self.digests.insert(index, (i, digest));
            }
        }
        if let Value::Config(m) = &value {
            self.note(format!(
                "{name} applies config at {index}: {:?}",
                m.members.keys().collect::<Vec<_>>()
            ));
        }
    }

    fn serve_reads(&mut self, i: usize) {
        let applied = self.nodes[i].store.applied_index();
        let reads = std::mem::take(&mut self.nodes[i].reads);
        for (index, client, attempt, key) in reads {
            if index <= applied {
                if !self.nodes[i]
                    .replica
                    .as_ref()
                    .is_some_and(|r| r.is_master())
                {
                    self.follower_reads += 1;
                }
                let v = self.nodes[i].store.get(&key).map(|kv| kv.value.clone());
                self.reply(client, attempt, Reply::Done(KvReturn::Get(v)));
            } else {
                self.nodes[i].reads.push((index, client, attempt, key));
            }
        }
    }

    fn snapshot_of(&self, i: usize) -> (SnapshotMeta, Vec<u8>) {
        let node = &self.nodes[i];
        let index = node.store.applied_index();
        let membership = node
            .replica
            .as_ref()
            .map(|r| r.membership_at(index))
            .unwrap_or_default();
        (
            SnapshotMeta { index, membership },
            node.store.snapshot().encode(),
        )
    }

    /// Begins a compaction once enough was applied, and advances the one
    /// in progress by a few keys; when its last piece is taken the log is
    /// compacted to it.
    fn maybe_compact(&mut self, i: usize) {
        if self.nodes[i].taking.is_none() {
            let Some(r) = self.nodes[i].replica.as_ref() else {
                return;
            };
            let st = r.status(Duration::ZERO);
            let applied = self.nodes[i].store.applied_index();
            if applied < st.first_index + self.opts.compact_after {
                return;
            }
            let (meta, expected) = self.snapshot_of(i);
            let start = self.nodes[i].store.begin_snapshot();
            self.nodes[i].taking = Some(Taking {
                id: start.id,
                meta,
                bytes: start.head,
                expected,
            });
        }
        let keys = self.rng.random_range(1..8);
        let node = &mut self.nodes[i];
        let Some(t) = node.taking.as_mut() else {
            return;
        };
        match node.store.snapshot_chunk(t.id, keys, &mut t.bytes) {
            Err(_) => {
                // A snapshot was installed over the state being taken.
                node.taking = None;
                return;
            }
            Ok(false) => return,
            Ok(true) => {}
        }
        let Some(t) = node.taking.take() else { return };
        if t.bytes != t.expected {
            let name = node.name.clone();
            return self.fail(format!(
                "{name}: the snapshot taken in pieces at {} differs from the state at its start",
                t.meta.index
            ));
        }
        if let Err(e) = node.disk.compact(&t.meta, &t.bytes) {
            return self.fail(format!("compact failed: {e}"));
        }
        if let Some(r) = node.replica.as_mut() {
            r.compacted(t.meta);
        }
    }

    /// Sends the stored snapshot, the one the log was compacted to, as a
    /// node does.
    fn send_snapshot(&mut self, i: usize, peer: NodeId) {
        let (meta, data) = match self.nodes[i].disk.recover() {
            Ok((
                crate::paxos::Recovered {
                    snapshot: Some(meta),
                    ..
                },
                Some(data),
            )) => (meta, data),
            Ok(_) => return self.fail("asked to send a snapshot before any was stored".into()),
            Err(e) => return self.fail(format!("cannot read the stored snapshot: {e}")),
        };
        let name = self.nodes[i].name.clone();
        self.note(format!("{name} sends snapshot at {} to {peer}", meta.index));
        if self.link_down(self.nodes[i].id, peer) {
            return;
        }
        let d = self.rng.random_range(100..self.max_delay * 2);
        self.schedule(
            d,
            Event::Snapshot {
                to: peer,
                meta,
                data,
            },
        );
    }

    fn install_snapshot(&mut self, to: NodeId, meta: SnapshotMeta, data: Vec<u8>) {
        let Some(i) = self.index_of(to) else { return };
        if !self.nodes[i].up || meta.index <= self.nodes[i].store.applied_index() {
            return;
        }
        let snap = match StoreSnapshot::decode(&data) {
            Ok(s) => s,
            Err(e) => return self.fail(format!("bad snapshot: {e}")),
        };
        // The snapshot stands for instances up to its index: they must agree
        // with what was chosen.
        if let Err(e) = self.nodes[i].disk.install_snapshot(&meta, &data) {
            return self.fail(format!("install failed: {e}"));
        }
        self.nodes[i].store = Store::restore_with(snap, store_config(&self.opts));
        self.nodes[i].applied = meta.index;
        let name = self.nodes[i].name.clone();
        self.note(format!("{name} installs snapshot at {}", meta.index));
        if let Some(r) = self.nodes[i].replica.as_mut() {
            r.snapshot_installed(meta);
        }
        self.process_ready(i);
    }

    // ---------------------------------------------------------- network

    fn link_down(&self, from: NodeId, to: NodeId) -> bool {
        self.blocked.contains(&(from, to))
    }

    fn send(&mut self, env: Envelope) {
        if self.link_down(env.from, env.to) || self.rng.random_bool(self.loss) {
            return;
        }
        let copies = if self.rng.random_bool(self.dup) { 2 } else { 1 };
        for _ in 0..copies {
            // Now and then a message is held up for long, so stale messages
            // from old ballots keep arriving after the world moved on.
            let d = if self.rng.random_bool(self.slow) {
                self.rng.random_range(self.max_delay..300_000)
            } else {
                self.rng.random_range(50..self.max_delay)
            };
            self.schedule(d, Event::Deliver(env.clone()));
        }
    }

    fn deliver(&mut self, env: Envelope) {
        let Some(i) = self.index_of(env.to) else {
            return;
        };
        if !self.nodes[i].up || self.link_down(env.from, env.to) {
            return;
        }
        let now = self.local_now(i);
        if let Some(r) = self.nodes[i].replica.as_mut() {
            r.step(now, env.from, env.msg);
        }
        self.end_input(i);
    }

    /// After feeding node `i` one input: end its turn now, or, when turns
    /// are batched, by an [`Event::Turn`] that collects what else arrives.
    fn end_input(&mut self, i: usize) {
        if self.turn_delay == 0 {
            self.process_ready(i);
        } else if !self.nodes[i].turn_pending {
            self.nodes[i].turn_pending = true;
            let d = self.rng.random_range(1..self.turn_delay);
            self.schedule(d, Event::Turn(i));
        }
    }

    fn end_turn(&mut self, i: usize) {
        self.nodes[i].turn_pending = false;
        if self.nodes[i].up {
            self.process_ready(i);
        }
    }

    // ---------------------------------------------------------- clients

    fn new_call(&mut self) -> KvCall {
        let key = format!("k{}", self.rng.random_range(0..self.opts.keys)).into_bytes();
        self.seq += 1;
        let value = format!("v{}", self.seq).into_bytes();
        match self.rng.random_range(0..10) {
            0..=3 => KvCall::Get { key },
            4..=6 => KvCall::Put { key, value },
            // Now and then every key under a prefix: "k" is all of them,
            // "k1" k1 and k10 to k19 when there are that many.
            7 if self.rng.random_bool(0.2) => KvCall::DeletePrefix {
                prefix: key[..self.rng.random_range(1..=key.len())].to_vec(),
            },
            7 => KvCall::Delete { key },
            _ => KvCall::Cas {
                key,
                expected_version: self.rng.random_range(0..4),
                value,
            },
        }
    }

    fn client_send(&mut self, c: usize) {
        if self.stopping {
            self.clients[c].done = true;
            return;
        }
        let call = self.new_call();
        self.clients[c].seq += 1;
        self.clients[c].tries = 0;
        self.clients[c].after = None;
        self.clients[c].target = self.rng.random_range(0..self.nodes.len());
        self.history.push(Operation {
            client: self.clients[c].id,
            call,
            invoked: self.now,
            completed: None,
        });
        self.clients[c].current = Some(self.history.len() - 1);
        self.client_attempt(c);
    }

    fn client_attempt(&mut self, c: usize) {
        let client = &mut self.clients[c];
        client.attempt += 1;
        client.tries += 1;
        let attempt = client.attempt;
        let node = client.target;
        // Near the end, stop retrying so the cluster can go quiet before the
        // final comparison; the operation stays open in the history.
        let quiet = self.now > self.opts.active + self.opts.settle / 2;
        if client.tries > MAX_ATTEMPTS || quiet {
            // Outcome unknown: it stays open in the history.
            client.current = None;
            self.schedule(1_000, Event::ClientSend { client: c });
            return;
        }
        let d = self.rng.random_range(50..self.max_delay);
        self.schedule(
            d,
            Event::ClientArrive {
                client: c,
                node,
                attempt,
            },
        );
        self.schedule(CLIENT_TIMEOUT, Event::ClientTimeout { client: c, attempt });
    }

    fn reply(&mut self, client: usize, attempt: u32, reply: Reply) {
        let d = self.rng.random_range(50..self.max_delay);
        self.schedule(
            d,
            Event::ClientReply {
                client,
                attempt,
                reply,
            },
        );
    }

    fn client_arrive(&mut self, c: usize, i: usize, attempt: u32) {
        let Some(op) = self.clients[c].current else {
            return;
        };
        if !self.nodes[i].up {
            return; // the client times out
        }
        let now = self.local_now(i);
        let call = self.history[op].call.clone();
        let id = RequestId {
            client: self.clients[c].id,
            seq: self.clients[c].seq,
        };
        // Most requests at a follower are forwarded (writes) or served with
        // the master's read index (reads), the rest redirected, so both ways
        // are exercised.
        let may_forward = self.rng.random_bool(0.75);
        let Some(r) = self.nodes[i].replica.as_mut() else {
            return;
        };
        // As a node does for a write it makes the id of (see
        // `crate::kv::dedup`), though fixed at the first attempt where a
        // node raises it until a master took the write: the stricter form,
        // and every copy is still chosen above what was chosen then.
        let after = *self.clients[c]
            .after
            .get_or_insert(r.status(now).known_chosen);
        let op = match call {
            KvCall::Get { key } => {
                let token = self.seq;
                self.seq += 1;
                // A follower that knows a master asks it for a read index,
                // as a node does on its peer stream, then serves the read
                // itself once it has applied that index.
                let asked = match r.master_hint().filter(|m| may_forward && *m != r.id()) {
                    Some(m) => r.request_remote_read(now, m, token),
                    None => r.request_read(now, token),
                };
                match asked {
                    Ok(()) => {
                        self.nodes[i].pending_reads.insert(token, (c, attempt, key));
                    }
                    Err(_) => {
                        let hint = r.master_hint();
                        self.reply(c, attempt, Reply::Redirect(hint));
                    }
                }
                self.end_input(i);
                return;
            }
            KvCall::Put { key, value } => Some(Op::Put {
                key,
                value,
                expect: None,
            }),
            KvCall::Delete { key } => Some(Op::Delete { key, expect: None }),
            // The simulator's few keys are far below the limit, so one op
            // deletes every key under the prefix (as the checker assumes).
            KvCall::DeletePrefix { prefix } => Some(Op::DeletePrefix {
                prefix,
                limit: crate::kv::MAX_DELETE_PREFIX,
            }),
            KvCall::Cas {
                key,
                expected_version,
                value,
            } => Some(Op::Put {
                key,
                value,
                expect: Some(Expect::Version(expected_version)),
            }),
        };
        // A follower that knows a master forwards the write through the
        // engine (as a node does when its master takes forwards) and answers
        // when it applies it; otherwise the client is redirected.
        let forward_to = r.master_hint().filter(|m| may_forward && *m != r.id());
        let sent = op.map(|op| {
            let cmd = Command {
                id,
                op: once(after, op),
            };
            match forward_to {
                Some(m) => r.forward(now, m, cmd),
                None => r.propose(now, cmd),
            }
        });
        let reply = match sent {
            None => None,
            Some(Ok(())) => {
                self.nodes[i].waiters.insert(id, (c, attempt));
                None
            }
            Some(Err(ProposeError::NotMaster { hint })) => Some(Reply::Redirect(hint)),
            Some(Err(_)) => Some(Reply::Redirect(None)),
        };
        if let Some(reply) = reply {
            self.reply(c, attempt, reply);
        }
        self.end_input(i);
    }

    fn client_reply(&mut self, c: usize, attempt: u32, reply: Reply) {
        if self.clients[c].attempt != attempt {
            return; // a late answer to an abandoned attempt
        }
        let Some(op) = self.clients[c].current else {
            return;
        };
        match reply {
            Reply::Done(ret) => {
                self.note(format!(
                    "client {} op {:?} -> {:?}",
                    self.clients[c].id, self.history[op].call, ret
                ));
                if matches!(
                    self.history[op].call,
                    KvCall::Put { .. } | KvCall::Delete { .. } | KvCall::Cas { .. }
                ) {
                    self.acked.insert(RequestId {
                        client: self.clients[c].id,
                        seq: self.clients[c].seq,
                    });
                }
                self.history[op].completed = Some((self.now, ret));
                self.clients[c].current = None;
                let think = self.rng.random_range(0..20_000);
                self.schedule(think, Event::ClientSend { client: c });
            }
            Reply::NoEffect => {
                self.note(format!(
                    "client {} op {:?} -> refused as forgotten, never applied",
                    self.clients[c].id, self.history[op].call
                ));
                self.no_effect.insert(op);
                self.clients[c].current = None;
                self.schedule(1_000, Event::ClientSend { client: c });
            }
            Reply::Redirect(hint) => {
                self.clients[c].target = hint
                    .and_then(|h| self.index_of(h))
                    .unwrap_or_else(|| self.rng.random_range(0..self.nodes.len()));
                // Back off a little so an election can finish.
                self.schedule(20_000, Event::ClientRetry { client: c, attempt });
            }
        }
    }

    fn client_timeout(&mut self, c: usize, attempt: u32) {
        if self.clients[c].attempt != attempt || self.clients[c].current.is_none() {
            return;
        }
        self.client_timeouts += 1;
        if self.rng.random_bool(0.5) {
            self.clients[c].target = self.rng.random_range(0..self.nodes.len());
        }
        self.client_attempt(c);
    }

    // ----------------------------------------------------------- faults

    /// A node that is up: the master if there is one and `prefer_master`
    /// (asked only then) says so, else any.
    fn pick_up_node(&mut self, prefer_master: impl FnOnce(&mut World) -> bool) -> Option<usize> {
        let up: Vec<usize> = (0..self.nodes.len())
            .filter(|i| self.nodes[*i].up)
            .collect();
        if up.is_empty() {
            return None;
        }
        let master = up.iter().copied().find(|i| {
            self.nodes[*i]
                .replica
                .as_ref()
                .is_some_and(|r| r.is_master())
        });
        Some(match master {
            Some(m) if prefer_master(self) => m,
            _ => up[self.rng.random_range(0..up.len())],
        })
    }

    fn random_crash(&mut self) {
        let only_points = self.opts.crash_points_only;
        // Prefer the master: that is where crashes hurt.
        let Some(i) = self.pick_up_node(|w| only_points || w.rng.random_bool(0.6)) else {
            return;
        };
        match self.rng.random_range(0..if only_points { 3 } else { 5 }) {
            // The crash happens at the node's next durable write; its
            // restart is scheduled then.
            0 => self.nodes[i].crash_point = Some(CrashPoint::AfterPersist),
            1 => self.nodes[i].crash_point = Some(CrashPoint::AfterSend),
            2 => self.nodes[i].crash_point = Some(CrashPoint::BeforePersist),
            _ => self.crash(i),
        }
    }

    fn partition(&mut self) {
        let ids: Vec<NodeId> = self.nodes.iter().map(|n| n.id).collect();
        let master = self
            .nodes
            .iter()
            .find(|n| n.replica.as_ref().is_some_and(|r| r.is_master()))
            .map(|n| n.id);
        let mut side: BTreeSet<NodeId> = BTreeSet::new();
        match master {
            // A lone old master, cut off from everyone.
            Some(m) if self.rng.random_bool(0.5) => {
                side.insert(m);
            }
            _ => {
                for id in &ids {
                    if self.rng.random_bool(0.5) {
                        side.insert(*id);
                    }
                }
            }
        }
        for a in &ids {
            for b in &ids {
                if side.contains(a) != side.contains(b) {
                    self.blocked.insert((*a, *b));
                }
            }
        }
        self.note(format!("partition {side:?} from the rest"));
        let d = self.rng.random_range(100_000..2_000_000);
        self.schedule(d, Event::Heal);
    }

    /// The master hands its mastership over, as on a clean shutdown, an
    /// upgrade or an operator's switchover. A third of the time through the
    /// engine's bare transfer to a random other voter, whatever its state
    /// (down, cut off, far behind: the cluster must stay safe and recover);
    /// otherwise through the checked path the runtime uses
    /// ([`crate::paxos::Replica::hand_off`]): to a member named at random
    /// (learners and the master itself included, which it must refuse), or
    /// to whichever voter it picks.
    fn handoff(&mut self) {
        let Some(m) = self.master_index() else { return };
        let now = self.local_now(m);
        let mode = self.rng.random_range(0..3);
        let name = self.nodes[m].name.clone();
        let Some(r) = self.nodes[m].replica.as_mut() else {
            return;
        };
        let note = match mode {
            0 => {
                let voters: Vec<NodeId> =
                    r.membership().voters().filter(|v| *v != r.id()).collect();
                if voters.is_empty() {
                    return;
                }
                let target = voters[self.rng.random_range(0..voters.len())];
                let result = r.transfer_mastership(now, target);
                format!("{name} hands mastership to {target}: {result:?}")
            }
            1 => {
                let members: Vec<NodeId> = r.membership().members.keys().copied().collect();
                let target = members[self.rng.random_range(0..members.len())];
                let voter = r.membership().is_voter(target);
                let me = r.id();
                let result = r.hand_off(now, Some(target));
                if result.is_ok() && (!voter || target == me) {
                    self.fail(format!(
                        "{name} accepted a handoff to {target}, which is itself or no voter"
                    ));
                }
                format!("{name} hands mastership to {target} (checked): {result:?}")
            }
            _ => {
                let result = r.hand_off(now, None);
                format!("{name} hands mastership to the best voter (checked): {result:?}")
            }
        };
        self.note(note);
        self.process_ready(m);
    }

    // ------------------------------------------------------------ admin

    fn master_index(&self) -> Option<usize> {
        (0..self.nodes.len()).find(|i| {
            self.nodes[*i].up
                && self.nodes[*i]
                    .replica
                    .as_ref()
                    .is_some_and(|r| r.is_master())
        })
    }

    /// A node that believes it is master, stale ones included: changes are
    /// proposed wherever an administrator's request lands.
    fn some_master(&mut self) -> Option<usize> {
        let masters: Vec<usize> = (0..self.nodes.len())
            .filter(|i| {
                self.nodes[*i].up
                    && self.nodes[*i]
                        .replica
                        .as_ref()
                        .is_some_and(|r| r.is_master())
            })
            .collect();
        if masters.is_empty() {
            return None;
        }
        Some(masters[self.rng.random_range(0..masters.len())])
    }

    fn admin(&mut self) {
        let Some(&op) = self.admin.front() else {
            self.admin_running = false;
            return;
        };
        if self.stopping {
            // The cluster settles as it is; a replacement left half done
            // leaves the new incarnation outside, which the checks allow.
            self.admin.clear();
            self.admin_running = false;
            return;
        }
        let interval = self.opts.admin_interval;
        let Some(m) = self.some_master() else {
            return self.schedule(interval.max(50_000), Event::Admin);
        };
        let now = self.local_now(m);
        // Progress is judged by the newest chosen configuration anywhere
        // (the proposer may be a stale master that knows little).
        let Some(committed) = self.newest_committed_config() else {
            return self.schedule(interval, Event::Admin);
        };
        let (change, done) = match op {
            AdminOp::Add(i) => {
                if !self.nodes[i].alive {
                    self.nodes[i].alive = true;
                    self.start_node(i);
                }
                let id = self.nodes[i].id;
                (
                    Some(ConfChange::AddLearner {
                        id,
                        name: self.nodes[i].name.clone(),
                        addr: format!("sim://{}", self.nodes[i].name),
                    }),
                    committed.members.contains_key(&id),
                )
            }
            AdminOp::Promote(i) => {
                let id = self.nodes[i].id;
                (Some(ConfChange::Promote { id }), committed.is_voter(id))
            }
            AdminOp::RemoveSomeVoter => {
                // Sometimes the master itself, else another voter.
                let voters: Vec<NodeId> = committed.voters().collect();
                let me = self.nodes[m].id;
                let pick = if self.rng.random_bool(0.4) || voters.len() < 2 {
                    me
                } else {
                    let others: Vec<NodeId> = voters.into_iter().filter(|v| *v != me).collect();
                    others[self.rng.random_range(0..others.len())]
                };
                match self.index_of(pick) {
                    Some(i) if committed.voter_count() > 1 => {
                        if let Some(front) = self.admin.front_mut() {
                            *front = AdminOp::Retire(i);
                        }
                        self.retiring.insert(i);
                    }
                    _ => {
                        self.admin.pop_front();
                    }
                }
                return self.schedule(1, Event::Admin);
            }
            AdminOp::Retire(i) => {
                let id = self.nodes[i].id;
                (
                    Some(ConfChange::Remove { id }),
                    !committed.members.contains_key(&id),
                )
            }
            AdminOp::RemoveIncarnation(id) => (
                Some(ConfChange::Remove { id }),
                !committed.members.contains_key(&id),
            ),
        };
        if done {
            self.note(format!("admin step done: {op:?}"));
            if self.replacing.remove(&op) {
                self.replacements += 1;
            }
            self.admin.pop_front();
            return self.schedule(1, Event::Admin);
        }
        let name = self.nodes[m].name.clone();
        if let (Some(change), Some(r)) = (change, self.nodes[m].replica.as_mut()) {
            match r.propose_change(now, change.clone()) {
                Ok(index) => self.note(format!(
                    "admin proposes {change:?} at {name}, index {index}"
                )),
                Err(e) => self.note(format!("admin at {name}: {e}")),
            }
            self.process_ready(m);
        }
        self.schedule(interval, Event::Admin);
    }

    /// One step of the auth actor: a change to its token's rules or a write
    /// as that token, proposed at some master.
    fn auth_step(&mut self) {
        if self.stopping {
            return;
        }
        let Some(m) = self.some_master() else {
            return self.schedule(50_000, Event::Auth);
        };
        self.auth_seq += 1;
        let seq = self.auth_seq;
        let held = self.lease.held;
        let op = match self.rng.random_range(0..18) {
            0..=1 => Op::Auth(AuthChange::CreateToken {
                id: SIM_TOKEN.into(),
                token: TokenRecord {
                    name: "sim".into(),
                    roles: vec![SIM_ROLE.into()],
                    secret_sha256: "0".repeat(64),
                },
            }),
            2 => Op::Auth(AuthChange::DeleteToken {
                id: SIM_TOKEN.into(),
            }),
            3..=4 => Op::Auth(AuthChange::PutRole {
                name: SIM_ROLE.into(),
                role: crate::auth::Role {
                    permissions: vec![Permission {
                        prefix: "t/".into(),
                        read: true,
                        write: true,
                    }],
                    admin: false,
                },
            }),
            5 => Op::Auth(AuthChange::DeleteRole {
                name: SIM_ROLE.into(),
            }),
            6 => Op::Auth(AuthChange::Enable),
            7 => Op::Auth(AuthChange::Disable),
            8..=9 => Op::Anonymous {
                op: Box::new(Op::Put {
                    key: format!("t/{}", seq % 8).into_bytes(),
                    value: format!("n{seq}").into_bytes(),
                    expect: None,
                }),
            },
            // The token tries the lease actor's lease: allowed on a lease
            // granted without a holder (and keys it may write), refused on
            // one held by another token (see `follow_intrusion`).
            14 if held.is_some() => Op::As {
                token: SIM_TOKEN.into(),
                op: Box::new(Op::Leased {
                    lease: held.unwrap_or_default(),
                    op: Box::new(Op::Put {
                        key: b"t/leased".to_vec(),
                        value: format!("a{seq}").into_bytes(),
                        expect: None,
                    }),
                }),
            },
            15 if held.is_some() => Op::As {
                token: SIM_TOKEN.into(),
                op: Box::new(Op::Lease(LeaseOp::Revoke {
                    id: held.unwrap_or_default(),
                })),
            },
            // A lease of its own (left to expire), or one for another
            // token, which no token may grant.
            16..=17 => Op::As {
                token: SIM_TOKEN.into(),
                op: Box::new(Op::Lease(LeaseOp::GrantOwned {
                    id: AUTH_LEASES + seq,
                    ttl_secs: SIM_LEASE_TTL,
                    owner: if seq.is_multiple_of(2) {
                        SIM_TOKEN
                    } else {
                        LEASE_OWNER
                    }
                    .into(),
                })),
            },
            _ => Op::As {
                token: SIM_TOKEN.into(),
                op: Box::new(Op::Put {
                    key: format!("t/{}", seq % 8).into_bytes(),
                    value: format!("a{seq}").into_bytes(),
                    expect: None,
                }),
            },
        };
        let now = self.local_now(m);
        let id = RequestId {
            client: AUTH_CLIENT,
            seq,
        };
        if let Some(r) = self.nodes[m].replica.as_mut() {
            let _ = r.propose(now, Command { id, op });
        }
        self.process_ready(m);
        let next = self.rng.random_range(20_000..200_000);
        self.schedule(next, Event::Auth);
    }

    /// A client write applied at `index` with `result`: a copy chosen
    /// after its first must come out as the first did (answered from the
    /// request-id table) or be refused as forgotten, never applied again;
    /// and once a copy was refused, none is applied for the first time
    /// after it (what a table forgets stays forgotten), so a write refused
    /// before any copy was applied never takes effect.
    fn check_once(&mut self, index: Index, id: RequestId, result: &OpResult) -> Result<(), String> {
        if matches!(result, OpResult::Forgotten) {
            self.refused_at.entry(id).or_insert(index);
            return Ok(());
        }
        match self.first_applied.get(&id) {
            None => {
                if let Some(refused) = self.refused_at.get(&id).filter(|r| **r < index) {
                    return Err(format!(
                        "request {id:?} applied at instance {index}, after a copy was refused \
                         as forgotten at {refused}"
                    ));
                }
                self.first_applied.insert(id, (index, result.clone()));
                Ok(())
            }
            Some((_, first)) if first == result => Ok(()),
            Some((at, first)) => Err(format!(
                "request {id:?} applied twice: at instance {at} ({first:?}) and again at \
                 {index} ({result:?})"
            )),
        }
    }

    /// Checks one applied command against the lease actor's model, and
    /// follows the actor's grants and the leases that end (by the auth
    /// actor's token too).
    fn follow_lease(
        &mut self,
        i: usize,
        index: Index,
        cmd: &Command,
        result: &OpResult,
    ) -> Result<(), String> {
        self.follow_intrusion(index, cmd, result)?;
        let op = match &cmd.op {
            Op::As { op, .. } => &**op,
            op => op,
        };
        if !matches!(op, Op::Lease(_)) {
            return Ok(());
        }
        let name = &self.nodes[i].name;
        match self.lease_results.get(&(index, cmd.id)) {
            Some(first) if first != result => {
                return Err(format!(
                    "instance {index}: {name} applied {:?} as {result:?}, another replica as {first:?}",
                    cmd.op
                ));
            }
            Some(_) => return Ok(()),
            None => {
                self.lease_results.insert((index, cmd.id), result.clone());
            }
        }
        match (op, result) {
            (
                Op::Lease(LeaseOp::Grant { id, .. } | LeaseOp::GrantOwned { id, .. }),
                OpResult::LeaseGranted { .. },
            ) if self.lease.granting.is_some_and(|(g, _)| g == *id) => {
                let (_, sent) = self.lease.granting.take().unwrap_or((0, self.now));
                self.lease.alive.insert(*id, sent);
                self.lease.held = Some(*id);
            }
            (Op::Lease(LeaseOp::ExpireFenced { fence, .. }), OpResult::LeaseNotFound { .. })
                if self.nodes[i]
                    .store
                    .lease_fence()
                    .is_some_and(|f| f.number != *fence) =>
            {
                self.lease.fenced_off += 1;
            }
            // Decided without a fence, before an upgrade; any fence since
            // makes it stale.
            (Op::Lease(LeaseOp::Expire { .. }), OpResult::LeaseNotFound { .. })
                if self.nodes[i].store.lease_fence().is_some() =>
            {
                self.lease.fenced_off += 1;
            }
            (Op::Lease(op), OpResult::LeaseRevoked { id, .. }) => {
                let expiry = matches!(op, LeaseOp::Expire { .. } | LeaseOp::ExpireFenced { .. });
                let unfenced = expiry && self.lease.unfenced_ids.contains(&cmd.id);
                if unfenced {
                    self.lease.unfenced += 1;
                }
                // An expiry decided before the upgrade may cut short a
                // lease that a later master of that time renewed: the flaw
                // fences remove, which stays until every member has them.
                // It never takes effect past a fenced mastership's start
                // (checked by the expiry order below, as every expiry is).
                if let (true, false, Some(&last)) = (expiry, unfenced, self.lease.alive.get(id))
                    && self.clocks_in_bound()
                    && self.now < last + SIM_LEASE_TTL * 1_000_000
                {
                    return Err(format!(
                        "instance {index}: lease {id} expired {}ms after its last keep-alive, \
                         before its TTL of {SIM_LEASE_TTL}s",
                        (self.now - last) / 1000
                    ));
                }
                if expiry {
                    self.lease.expiries += 1;
                    if let Some(&decider) = self.lease.deciders.get(&cmd.id) {
                        self.check_expiry_order(index, decider)?;
                        self.lease.effective.push((index, decider));
                    }
                }
                self.lease.alive.remove(id);
                if self.lease.held == Some(*id) {
                    self.lease.held = None;
                }
                let name = name.clone();
                self.note(format!("{name} applies the end of lease {id} at {index}"));
            }
            _ => {}
        }
        Ok(())
    }

    /// Checks an op of the auth actor's token on one of the lease actor's
    /// leases held by [`LEASE_OWNER`]: it must be refused (or find the
    /// lease gone) on every replica, since only the holder and admins may
    /// attach keys to such a lease or revoke it.
    fn follow_intrusion(
        &mut self,
        index: Index,
        cmd: &Command,
        result: &OpResult,
    ) -> Result<(), String> {
        let Op::As { op, .. } = &cmd.op else {
            return Ok(());
        };
        let lease = match &**op {
            Op::Leased { lease, .. } | Op::Lease(LeaseOp::Revoke { id: lease }) => *lease,
            _ => return Ok(()),
        };
        if !self.lease.owned.contains(&lease) {
            return Ok(());
        }
        match result {
            OpResult::Refused(r) => {
                // Counted when the holder is why (the token may have
                // lost its role, or have no right to the lease's keys).
                if r.message.contains(crate::kv::lease::HELD_BY_ANOTHER) {
                    self.lease.intrusions_refused.insert(cmd.id);
                }
                Ok(())
            }
            OpResult::LeaseNotFound { .. } => Ok(()),
            other => Err(format!(
                "instance {index}: {:?}, by a token that does not hold lease {lease}, \
                 applied as {other:?}",
                cmd.op
            )),
        }
    }

    /// On a master that may act on the whole log: brings its lease timers
    /// up to date and proposes the expiry of every lease past its deadline,
    /// as the node's engine thread does. Elsewhere the timers are dropped.
    fn expire_leases(&mut self, i: usize) {
        // Nothing expires in the second half of the settling time, so that
        // every replica has applied the same log when the run is judged.
        if self.now > self.opts.active + self.opts.settle / 2 {
            return;
        }
        let Some(ballot) = self.lease_gate(i) else {
            return;
        };
        let now = self.local_now(i);
        let due = self.nodes[i].timers.due(now);
        for (id, op) in due {
            if let Some(&last) = self.lease.alive.get(&id)
                && self.clocks_in_bound()
                && self.now < last + SIM_LEASE_TTL * 1_000_000
            {
                let name = self.nodes[i].name.clone();
                return self.fail(format!(
                    "{name} proposes the expiry of lease {id} {}ms after its last keep-alive, \
                     before its TTL of {SIM_LEASE_TTL}s",
                    (self.now - last) / 1000
                ));
            }
            let cmd = self.clusters_own(i, op);
            self.lease.deciders.insert(cmd.id, ballot);
            if !self.fences {
                self.lease.unfenced_ids.insert(cmd.id);
            }
            let name = self.nodes[i].name.clone();
            self.note(format!("{name} proposes the expiry of lease {id}"));
            if let Some(r) = self.nodes[i].replica.as_mut() {
                let _ = r.propose(now, cmd);
            }
        }
        self.process_ready(i);
    }

    /// The mastership node `i` may answer lease questions in, as the
    /// node's engine thread decides it: master with a valid lease, the
    /// whole committed log applied, and its own lease fence applied, which
    /// it proposes when missing. Elsewhere the timers are dropped.
    fn lease_gate(&mut self, i: usize) -> Option<Ballot> {
        let now = self.local_now(i);
        let fences = self.fences;
        let node = &mut self.nodes[i];
        let replica = node.replica.as_mut()?;
        let ballot = replica
            .serving_ballot(now)
            .filter(|_| node.store.applied_index() >= replica.commit_index());
        let Some(ballot) = ballot else {
            if !replica.is_master() {
                node.timers.step_down();
            }
            return None;
        };
        match node.timers.gate(now, ballot, &node.store, fences) {
            Gate::Open => {}
            Gate::Closed(fence) => {
                if let Some(op) = fence {
                    let cmd = self.clusters_own(i, op);
                    let name = self.nodes[i].name.clone();
                    self.note(format!("{name} proposes its lease fence"));
                    if let Some(r) = self.nodes[i].replica.as_mut() {
                        let _ = r.propose_first(now, cmd);
                    }
                    self.process_ready(i);
                }
                return None;
            }
        }
        let applied = self.nodes[i].store.applied_index();
        // Before an upgrade, a mastership opens without a fence, and the
        // order fences keep is not promised (see `WorldOptions::
        // fences_from`): only masterships that opened after it are checked.
        if fences && let Err(e) = self.note_lease_gate(ballot, applied) {
            self.fail(e);
            return None;
        }
        Some(ballot)
    }

    /// A command of node `i`'s own: a lease expiry or fence.
    fn clusters_own(&mut self, i: usize, op: LeaseOp) -> Command {
        self.expiry_seq += 1;
        Command {
            id: RequestId {
                client: EXPIRY_CLIENT + i as u64,
                seq: self.expiry_seq,
            },
            op: Op::Lease(op),
        }
    }

    /// The order the lease guarantee rests on (see `crate::kv::lease`): an
    /// expiry decided by one mastership takes effect only where no later
    /// mastership had answered a lease question or decided an expiry
    /// before applying the expiry's instance. A later master starts every
    /// deadline afresh and acknowledges keep-alives its predecessor never
    /// saw; an expiry decided before it and taking effect after it would
    /// cut them short. Checked whichever of the two comes second, and
    /// whether or not a keep-alive fell in between, so it fails far more
    /// often than the TTL check would on the same fault.
    fn check_expiry_order(&self, index: Index, decider: Ballot) -> Result<(), String> {
        match self
            .lease
            .opened
            .iter()
            .find(|(ballot, applied)| **ballot > decider && **applied < index)
        {
            Some((ballot, applied)) => Err(format!(
                "instance {index}: an expiry decided by the master at {decider} took effect, \
                 but the master at {ballot} answered lease questions having applied only \
                 up to {applied}"
            )),
            None => Ok(()),
        }
    }

    /// Records that the master at `ballot`, having applied up to
    /// `applied`, answers lease questions, and checks that against the
    /// expiries that took effect (see [`World::check_expiry_order`]).
    fn note_lease_gate(&mut self, ballot: Ballot, applied: Index) -> Result<(), String> {
        let first = self.lease.opened.entry(ballot).or_insert(applied);
        *first = (*first).min(applied);
        if let Some((index, decider)) = self
            .lease
            .effective
            .iter()
            .find(|(index, decider)| *decider < ballot && applied < *index)
        {
            return Err(format!(
                "the master at {ballot} answers lease questions having applied only up to \
                 {applied}, but an expiry decided by the master at {decider} took effect at {index}"
            ));
        }
        Ok(())
    }

    /// Whether every clock keeps to the drift bound the engine assumes:
    /// runs with untrusted clocks promise nothing about lease time.
    fn clocks_in_bound(&self) -> bool {
        self.opts.clock_drift_ppm <= self.engine_drift_ppm
    }

    /// Step `n` of the rolling upgrade (see [`WorldOptions::fences_from`]):
    /// node `n` restarts, as a pod of a StatefulSet does when its image
    /// changes, and the next follows a little later; after the last, every
    /// member decodes fences. At the start the lease actor goes quiet, so
    /// that masters of both versions decide its lease's expiry.
    fn upgrade(&mut self, n: usize) {
        if n == 0 && self.lease.held.is_some() {
            let quiet = self.rng.random_range(1_000_000..3_000_000);
            self.lease.silent_until = self.lease.silent_until.max(self.now + quiet);
            self.note(format!("lease actor goes quiet for {}ms", quiet / 1000));
        }
        if n >= self.nodes.len() {
            self.fences = true;
            self.note("upgraded: every member decodes lease fences".into());
            return;
        }
        if self.nodes[n].up && !self.stopping {
            let name = self.nodes[n].name.clone();
            self.note(format!("{name} restarts for the upgrade"));
            self.crash(n);
        }
        let next = self.rng.random_range(200_000..800_000);
        self.schedule(next, Event::Upgrade(n + 1));
    }

    /// One step of the lease actor (see [`LeaseActor`]).
    fn lease_step(&mut self) {
        let next = self.rng.random_range(100_000..400_000);
        self.schedule(next, Event::Lease);
        if self.stopping || self.now < self.lease.silent_until {
            return;
        }
        let Some(m) = self.some_master() else {
            return;
        };
        let now = self.local_now(m);
        self.lease.seq += 1;
        let seq = self.lease.seq;
        let op = match self.lease.held {
            None => {
                // A grant that was lost is asked again, under a new id.
                if self
                    .lease
                    .granting
                    .is_some_and(|(_, sent)| self.now < sent + 1_000_000)
                {
                    return;
                }
                let id = 1000 + seq;
                self.lease.granting = Some((id, self.now));
                if self.rng.random_bool(0.5) {
                    self.lease.owned.insert(id);
                    Op::Lease(LeaseOp::GrantOwned {
                        id,
                        ttl_secs: SIM_LEASE_TTL,
                        owner: LEASE_OWNER.into(),
                    })
                } else {
                    Op::Lease(LeaseOp::Grant {
                        id,
                        ttl_secs: SIM_LEASE_TTL,
                    })
                }
            }
            Some(id) => match self.rng.random_range(0..100) {
                0..=64 => return self.keep_alive(m, id),
                65..=84 => Op::Leased {
                    lease: id,
                    op: Box::new(Op::Put {
                        key: format!("l/{}", seq % 4).into_bytes(),
                        value: format!("l{seq}").into_bytes(),
                        expect: None,
                    }),
                },
                85..=89 => Op::Lease(LeaseOp::Revoke { id }),
                _ => {
                    let quiet = self.rng.random_range(1_000_000..4_000_000);
                    self.lease.silent_until = self.now + quiet;
                    self.note(format!("lease actor goes quiet for {}ms", quiet / 1000));
                    return;
                }
            },
        };
        let cmd = Command {
            id: RequestId {
                client: LEASE_CLIENT,
                seq,
            },
            op,
        };
        if let Some(r) = self.nodes[m].replica.as_mut() {
            let _ = r.propose(now, cmd);
        }
        self.process_ready(m);
    }

    /// A keep-alive for lease `id` at node `m`, answered only where the
    /// node's API would answer it: a master that may act on the whole log
    /// and has applied it.
    fn keep_alive(&mut self, m: usize, id: u64) {
        if self.lease_gate(m).is_none() {
            return;
        }
        let now = self.local_now(m);
        let node = &mut self.nodes[m];
        match node.timers.renew(id, now) {
            Ok(_) => {
                self.lease.renewals += 1;
                self.lease.alive.insert(id, self.now);
            }
            Err(e) => {
                let name = node.name.clone();
                self.note(format!("{name} refuses a keep-alive of lease {id}: {e:?}"));
            }
        }
    }

    /// The configuration chosen at the highest commit index any live
    /// replica knows.
    fn newest_committed_config(&self) -> Option<Membership> {
        self.nodes
            .iter()
            .filter(|n| n.up)
            .filter_map(|n| n.replica.as_ref())
            // A node that joined by replaying the log knows no configuration
            // before the one that added it.
            .filter(|r| !r.membership_at(r.commit_index()).members.is_empty())
            .max_by_key(|r| r.commit_index())
            .map(|r| r.membership_at(r.commit_index()))
    }

    /// Node `i` loses its disk: it crashes and comes back with nothing.
    fn disk_loss(&mut self) {
        // One lost disk at a time, and only while a majority of the voters
        // keeps theirs: more is the loss of the cluster, not of a replica.
        if self
            .admin
            .iter()
            .any(|o| matches!(o, AdminOp::RemoveIncarnation(_)))
        {
            return;
        }
        let Some(membership) = self.newest_committed_config() else {
            return;
        };
        // Every configuration that may come into force: the committed one
        // and the newest in any log.
        let configs: Vec<Membership> = self
            .nodes
            .iter()
            .filter_map(|n| n.replica.as_ref())
            .map(|r| r.membership().clone())
            .chain([membership.clone()])
            .collect();
        // Voters that still hold their disks: the incarnation a live node runs.
        let intact = |c: &Membership, lost: NodeId| {
            c.voters()
                .filter(|v| *v != lost && self.nodes.iter().any(|n| n.alive && n.id == *v))
                .count()
        };
        let candidates: Vec<usize> = (0..self.nodes.len())
            .filter(|i| {
                let id = self.nodes[*i].id;
                self.nodes[*i].alive
                    && !self.retiring.contains(i)
                    && membership.members.contains_key(&id)
                    && configs.iter().all(|c| intact(c, id) >= c.quorum())
            })
            .collect();
        if candidates.is_empty() {
            return;
        }
        let i = candidates[self.rng.random_range(0..candidates.len())];
        let old = self.nodes[i].id;
        if self.nodes[i].up {
            self.crash(i);
        }
        if let Some(root) = self.opts.disk_root.clone()
            && !self.opts.disk_loss_keeps_identity
        {
            let dir = root.join(&self.nodes[i].name);
            self.lose_some_files(&dir);
        }
        let node = &mut self.nodes[i];
        node.disk = Box::new(MemStore::new());
        // An empty volume told nobody anything; under a new id (the
        // product) the old id's record stays with the old id, and under
        // the old one (the bug this option shows) the check is what is
        // missing.
        node.told = Mark::default();
        if let Some(root) = &self.opts.disk_root {
            let _ = std::fs::remove_dir_all(root.join(&node.name));
        }
        let name = node.name.clone();
        self.disk_losses += 1;
        if self.opts.disk_loss_keeps_identity {
            self.note(format!(
                "{name} loses its disk; it comes back under its old id"
            ));
            return;
        }
        self.incarnations += 1;
        let fresh = (self.incarnations << 16) | (i as NodeId + 1);
        let node = &mut self.nodes[i];
        node.id = fresh;
        // A new incarnation finds the cluster existing and waits to be
        // replaced: it holds no configuration of its own.
        node.initial = Membership::default();
        self.note(format!(
            "{name} loses its disk; incarnation {old} is gone, {fresh} waits to be replaced"
        ));
        // Replacing it comes before anything else the administrator had
        // planned: other voter changes may need its vote.
        if membership.is_voter(old) {
            self.admin.push_front(AdminOp::Promote(i));
            self.replacing.insert(AdminOp::Promote(i));
        } else {
            self.replacing.insert(AdminOp::Add(i));
        }
        self.admin.push_front(AdminOp::Add(i));
        self.admin.push_front(AdminOp::RemoveIncarnation(old));
        if !self.admin_running {
            self.admin_running = true;
            let d = self.opts.admin_interval;
            self.schedule(d, Event::Admin);
        }
    }

    /// Before a lost disk goes whole: takes some of the files of the
    /// (closed) data directory `dir` away, keeping its `identity.json`, and
    /// checks that opening it is refused. A directory that kept its identity
    /// but lost its log, a segment of it or its snapshot would vote under an
    /// incarnation whose promises it forgot.
    fn lose_some_files(&mut self, dir: &std::path::Path) {
        let files = |sub: &str, ext: &str| -> Vec<std::path::PathBuf> {
            let mut found: Vec<_> = std::fs::read_dir(dir.join(sub))
                .map(|d| {
                    d.flatten()
                        .map(|e| e.path())
                        .filter(|p| p.extension().is_some_and(|x| x == ext))
                        .collect()
                })
                .unwrap_or_default();
            found.sort();
            found
        };
        let segments = files("wal", "wal");
        let snapshots = files("snapshots", "snap");
        let mut choices: Vec<(String, Vec<std::path::PathBuf>)> = Vec::new();
        if !segments.is_empty() {
            choices.push(("its whole log".into(), segments.clone()));
            let one = self.rng.random_range(0..segments.len());
            choices.push((
                format!("log segment {}", one + 1),
                vec![segments[one].clone()],
            ));
        }
        if !snapshots.is_empty() {
            choices.push(("its snapshot".into(), snapshots));
        }
        if choices.is_empty() {
            return;
        }
        let (what, lost) = choices.swap_remove(self.rng.random_range(0..choices.len()));
        for path in &lost {
            if let Err(e) = std::fs::remove_file(path) {
                return self.fail(format!("cannot remove {}: {e}", path.display()));
            }
        }
        let identity = Identity {
            node: dir
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default(),
            cluster: "sim".into(),
        };
        match DiskStore::open(dir, &identity) {
            Ok(_) => self.fail(format!(
                "{} opened after losing {what} (its identity kept)",
                identity.node
            )),
            Err(e) if e.to_string().contains("files were removed") => {
                self.lost_files_refused += 1;
                self.note(format!("{} lost {what} and is refused: {e}", identity.node));
            }
            Err(e) => self.fail(format!(
                "{} lost {what} and failed to open for another reason: {e}",
                identity.node
            )),
        }
    }

    // ------------------------------------------------------------- run

    fn tick(&mut self, i: usize) {
        if !self.nodes[i].up {
            return;
        }
        let now = self.local_now(i);
        if let Some(r) = self.nodes[i].replica.as_mut() {
            r.tick(now);
        }
        self.process_ready(i);
        self.expire_leases(i);
        // A node removed by a committed change leaves the cluster for good.
        if self.retiring.contains(&i) {
            let id = self.nodes[i].id;
            let removed = (0..self.nodes.len()).any(|m| {
                m != i
                    && self.nodes[m].up
                    && self.nodes[m].replica.as_ref().is_some_and(|r| {
                        r.is_master()
                            && !r.membership_at(r.commit_index()).members.contains_key(&id)
                    })
            });
            if removed {
                self.retiring.remove(&i);
                self.nodes[i].alive = false;
                self.crash(i);
                return;
            }
        }
        self.schedule(TICK, Event::Tick(i));
    }

    fn check_leases(&mut self) {
        let holders: Vec<String> = (0..self.nodes.len())
            .filter(|i| {
                let now = self.local_now(*i);
                self.nodes[*i].up
                    && self.nodes[*i]
                        .replica
                        .as_ref()
                        .is_some_and(|r| r.lease_valid(now))
            })
            .map(|i| self.nodes[i].name.clone())
            .collect();
        if holders.len() > 1 {
            self.fail(format!("overlapping valid leases: {holders:?}"));
        }
    }

    /// The node an event is handled by, if one.
    fn handled_by(&self, ev: &Event) -> Option<usize> {
        match ev {
            Event::Tick(i) | Event::Turn(i) => Some(*i),
            Event::Deliver(env) => self.index_of(env.to),
            Event::Snapshot { to, .. } => self.index_of(*to),
            Event::ClientArrive { node, .. } => Some(*node),
            _ => None,
        }
    }

    /// Pauses a node, the master more often than not, for up to several
    /// leases: whatever it was about to do (answer a read whose index it
    /// took before the pause) happens after the world moved on.
    fn pause(&mut self) {
        let Some(i) = self.pick_up_node(|w| w.rng.random_bool(0.7)) else {
            return;
        };
        let d = self.rng.random_range(50_000..1_500_000);
        self.nodes[i].paused_until = self.now + d;
        self.pauses += 1;
        let name = self.nodes[i].name.clone();
        self.note(format!("{name} paused for {}ms", d / 1000));
    }

    fn step_event(&mut self, ev: Event) {
        if let Some(i) = self.handled_by(&ev)
            && self.nodes[i].paused_until > self.now
        {
            // Handled when the process resumes, in the order it arrived.
            let d = self.nodes[i].paused_until - self.now;
            return self.schedule(d, ev);
        }
        match ev {
            Event::Pause => {
                if !self.stopping {
                    self.pause();
                }
            }
            Event::Tick(i) => self.tick(i),
            Event::Turn(i) => self.end_turn(i),
            Event::Deliver(env) => self.deliver(env),
            Event::Snapshot { to, meta, data } => self.install_snapshot(to, meta, data),
            Event::ClientSend { client } => self.client_send(client),
            Event::ClientArrive {
                client,
                node,
                attempt,
            } => self.client_arrive(client, node, attempt),
            Event::ClientReply {
                client,
                attempt,
                reply,
            } => self.client_reply(client, attempt, reply),
            Event::ClientTimeout { client, attempt } => self.client_timeout(client, attempt),
            Event::ClientRetry { client, attempt } => {
                if self.clients[client].attempt == attempt && self.clients[client].current.is_some()
                {
                    self.client_attempt(client);
                }
            }
            Event::Crash => {
                if !self.stopping {
                    self.random_crash();
                }
            }
            Event::Restart(i) => {
                if !self.nodes[i].up && self.nodes[i].alive {
                    self.start_node(i);
                }
            }
            Event::Partition => {
                if !self.stopping {
                    self.partition();
                }
            }
            Event::Heal => {
                self.blocked.clear();
                self.note("partition healed".into());
            }
            Event::Admin => self.admin(),
            Event::Auth => self.auth_step(),
            Event::Lease => self.lease_step(),
            Event::Upgrade(n) => self.upgrade(n),
            Event::DiskLoss => {
                if !self.stopping {
                    self.disk_loss();
                }
            }
            Event::Handoff => {
                if !self.stopping {
                    self.handoff();
                }
            }
        }
        self.check_leases();
    }

    /// Runs the whole scenario and reports.
    pub fn run(mut self) -> RunReport {
        let end_active = self.opts.active;
        let end = end_active + self.opts.settle;
        while let Some(((t, _), ev)) = self.events.pop_first() {
            if t > end || self.failure.is_some() {
                break;
            }
            if !self.stopping && t >= end_active {
                self.heal_all();
            }
            self.now = t;
            self.step_event(ev);
        }
        if self.failure.is_none() {
            self.final_checks();
        }
        RunReport {
            failure: self.failure,
            trace: self.trace.into_iter().collect(),
            acknowledged_writes: self.acked.len(),
            chosen_instances: self.chosen.len(),
            largest_batch: self
                .chosen
                .values()
                .map(|v| match v {
                    Value::Batch(cmds) => cmds.len(),
                    _ => 0,
                })
                .max()
                .unwrap_or(0),
            crash_points: self.crash_points,
            disk_losses: self.disk_losses,
            lost_files_refused: self.lost_files_refused,
            auth_refusals: self.auth_refusals,
            forwarded_acks: self.forwarded_acks,
            forward_refusals: self.forward_refusals,
            forwards_sent_again: self.forwards_sent_again,
            forgotten_copies: self.forgotten_copies,
            client_timeouts: self.client_timeouts,
            follower_reads: self.follower_reads,
            lease_renewals: self.lease.renewals,
            lease_expiries: self.lease.expiries,
            lease_fenced_off: self.lease.fenced_off,
            lease_unfenced: self.lease.unfenced,
            lease_intrusions_refused: self.lease.intrusions_refused.len(),
            replacements: self.replacements,
            pauses: self.pauses,
            reads_answered: self
                .history
                .iter()
                .filter(|o| matches!(o.completed, Some((_, KvReturn::Get(_)))))
                .count(),
            history: self
                .history
                .into_iter()
                .enumerate()
                .filter(|(i, _)| !self.no_effect.contains(i))
                .map(|(_, op)| op)
                .collect(),
        }
    }

    fn heal_all(&mut self) {
        self.stopping = true;
        self.blocked.clear();
        self.loss = 0.0;
        for i in 0..self.nodes.len() {
            self.nodes[i].crash_point = None;
            if self.nodes[i].alive && !self.nodes[i].up {
                self.start_node(i);
            }
        }
        self.note("all faults healed; clients finish".into());
    }

    fn final_checks(&mut self) {
        // The members are those of the newest configuration any replica holds.
        let membership = self
            .nodes
            .iter()
            .filter_map(|n| n.replica.as_ref())
            .max_by_key(|r| r.status(Duration::ZERO).commit)
            .map(|r| r.membership().clone())
            .unwrap_or_default();
        let members: Vec<usize> = (0..self.nodes.len())
            .filter(|i| self.nodes[*i].up && membership.members.contains_key(&self.nodes[*i].id))
            .collect();
        let Some(&first) = members.first() else {
            return self.fail("no live member at the end".into());
        };
        if self.clients.iter().any(|c| c.current.is_some() && !c.done) {
            // Clients still retrying at the end are fine: their outcome is open.
        }
        // Replicas may trail by the newest lease renewals, which change no
        // data; the data itself and its revision must be identical.
        let reference = self.nodes[first].store.snapshot();
        let mut min_applied = reference.applied_index;
        for &i in &members {
            let s = self.nodes[i].store.snapshot();
            min_applied = min_applied.min(s.applied_index);
            if s.revision != reference.revision || s.kvs != reference.kvs {
                return self.fail(format!(
                    "after healing, {} (applied {}, revision {}) and {} (applied {}, revision {}) hold different data",
                    self.nodes[first].name,
                    reference.applied_index,
                    reference.revision,
                    self.nodes[i].name,
                    s.applied_index,
                    s.revision
                ));
            }
        }
        let mut applied_ids = BTreeSet::new();
        for (index, v) in &self.chosen {
            if *index > min_applied {
                break;
            }
            if let Value::Batch(cmds) = v {
                applied_ids.extend(cmds.iter().map(|c| c.id));
            }
        }
        if let Some(lost) = self.acked.iter().find(|id| !applied_ids.contains(id)) {
            return self.fail(format!(
                "acknowledged write {lost:?} is not applied on live replicas"
            ));
        }
        if self.acked.is_empty() {
            self.note("warning: no write was acknowledged".into());
        }
    }
}

/// `op` as a write sent at most once, every copy chosen above `after`.
fn once(after: u64, op: Op) -> Op {
    Op::Once {
        after,
        op: Box::new(op),
    }
}

/// The store of every node, as the options say.
fn store_config(opts: &WorldOptions) -> crate::kv::StoreConfig {
    crate::kv::StoreConfig {
        dedup_capacity: opts.dedup_capacity,
        ..Default::default()
    }
}

fn to_return(op: &Op, result: &OpResult) -> KvReturn {
    let op = match op {
        Op::Once { op, .. } => &**op,
        op => op,
    };
    match (op, result) {
        (
            Op::Put {
                expect: Some(_), ..
            },
            OpResult::Put { .. },
        ) => KvReturn::Cas { ok: true },
        (
            Op::Put {
                expect: Some(_), ..
            },
            _,
        ) => KvReturn::Cas { ok: false },
        (Op::Delete { .. }, OpResult::Delete { deleted, .. }) => {
            KvReturn::Delete { deleted: *deleted }
        }
        (Op::DeletePrefix { .. }, _) => KvReturn::DeletePrefix,
        _ => KvReturn::Put,
    }
}

fn short(m: &crate::paxos::Message) -> String {
    use crate::paxos::Message as M;
    match m {
        M::Prepare { ballot, from_index } => format!("Prepare({ballot},{from_index})"),
        M::ReadProbe { ballot, seq } => format!("ReadProbe({ballot},#{seq})"),
        M::ReadAck { ballot, seq } => format!("ReadAck({ballot},#{seq})"),
        M::ReadIndexRequest { seq } => format!("ReadIndexReq(#{seq})"),
        M::ReadIndexAnswer { seq, answer } => format!("ReadIndex(#{seq},{answer:?})"),
        M::Promise {
            ballot,
            entries,
            commit,
        } => {
            format!("Promise({ballot},{} entries,c{commit})", entries.len())
        }
        M::Reject {
            ballot,
            promised,
            reason,
        } => format!("Reject({ballot},{promised},{reason:?})"),
        M::Accept {
            ballot,
            entries,
            commit,
        } => format!(
            "Accept({ballot},{:?},c{commit})",
            entries
                .iter()
                .map(|(i, v)| (*i, short_value(v)))
                .collect::<Vec<_>>()
        ),
        M::Accepted {
            ballot,
            indexes,
            commit,
        } => format!("Accepted({ballot},{indexes:?},c{commit})"),
        M::Heartbeat { ballot, commit } => format!("Hb({ballot},c{commit})"),
        M::HeartbeatAck { ballot, commit } => format!("HbAck({ballot},c{commit})"),
        M::CatchupRequest { from_index } => format!("CatchupReq({from_index})"),
        M::Catchup { entries, commit } => format!("Catchup({} entries,c{commit})", entries.len()),
        M::TimeoutNow { ballot } => format!("TimeoutNow({ballot})"),
        M::Forward { cmds } => format!(
            "Forward({:?})",
            cmds.iter()
                .map(|c| (c.id.client, c.id.seq))
                .collect::<Vec<_>>()
        ),
        M::ForwardRefused { ids, hint, busy } => format!(
            "ForwardRefused({:?},{hint:?}{})",
            ids.iter().map(|id| (id.client, id.seq)).collect::<Vec<_>>(),
            if *busy { ",busy" } else { "" }
        ),
    }
}

fn short_value(v: &Value) -> String {
    match v {
        Value::Noop => "noop".into(),
        Value::Lease { holder, .. } => format!("lease{holder}"),
        Value::Batch(c) => format!(
            "{:?}",
            c.iter()
                .map(|c| (c.id.client, c.id.seq))
                .collect::<Vec<_>>()
        ),
        Value::Config(m) => format!("config{:?}", m.members.keys().collect::<Vec<_>>()),
    }
}
