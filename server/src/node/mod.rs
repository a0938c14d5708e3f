//! The runtime around the engine: a [`Node`] starts the driver thread, owns
//! the peer transport, and implements [`Service`] for the HTTP layer:
//! writes are proposed here or forwarded to the master, linearizable reads
//! wait for the master's read index, watches follow the applied log.

mod archiving;
pub mod digest;
pub mod driver;
pub mod peer;
pub mod peer_client;
mod replace;
pub mod rollback;
mod transfer;
pub mod transport;
pub mod wire;

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{SyncSender, TrySendError, sync_channel};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use serde::de::DeserializeOwned;
use tokio::sync::{broadcast, mpsc, oneshot, watch};
use tracing::Instrument as _;

use std::collections::{BTreeMap, HashMap};

use crate::api::service::{
    ClusterInfo, Consistency, Health, MemberChange, MemberInfo, MemberRole, NodeStatus,
    ReplaceReport, Service, ServiceError,
};
use crate::cluster::bootstrap::{self, Decision, Hello, NodeState};
use crate::cluster::{self, BootstrapPeer};
use crate::kv::{Event, Limits, Op, OpResult, Store};
use crate::paxos::{
    Command, ConfChange, EngineConfig, Index, Membership, NodeId, ProposeError, ReadError, Replica,
    RequestId, Role, Status,
};
use crate::storage::{DiskStore, Identity};
use crate::telemetry::Metrics;

use driver::{Driver, Input, Published, ReadLease};
use transport::Outbox;
use wire::{ChangeReply, ProposeReply, ReadIndexReply, TransferReply};

/// Everything a node needs to start.
#[derive(Clone, Debug)]
pub struct NodeConfig {
    /// This node's name (its pod name in Kubernetes).
    pub name: String,
    pub cluster_id: String,
    pub data_dir: PathBuf,
    /// The bootstrap members (this node among them); empty for a node that
    /// joins an existing cluster and waits to be added. Used only while the
    /// data directory is new: see [`crate::cluster::bootstrap`].
    pub bootstrap: Vec<BootstrapPeer>,
    pub engine: EngineConfig,
    pub limits: Limits,
    /// Largest size ([`crate::kv::Store::size_bytes`]) the store may reach
    /// before writes that add to it are refused; 0 for no quota. See
    /// [`Node::check_quota`].
    pub quota_bytes: u64,
    /// Free space kept on the data directory's file system beyond the
    /// store's own size: while less is free, writes that add data are
    /// refused; 0 for no check. See [`Node::check_disk`].
    pub disk_reserve_bytes: u64,
    pub token: String,
    /// How long a write may wait for its outcome before answering 504.
    pub write_timeout: Duration,
    /// How long a read may wait for a master or for this replica to catch up.
    pub read_timeout: Duration,
    /// Compact the log after this many applied instances.
    pub compact_after: u64,
    /// Compact the log after commands of this many bytes were applied.
    pub compact_after_bytes: u64,
    /// An HTTP proxy for every request to peers; none means direct.
    pub peer_proxy: Option<String>,
    /// Continuous archiving to object storage; none means off.
    pub archive: Option<crate::archive::archiver::Settings>,
    /// Mutual TLS with peers: the certificate this node presents when it
    /// calls them and the CA their certificates must chain to. None: peers
    /// are called over plain HTTP.
    pub peer_tls: Option<Arc<crate::tls::Material>>,
    /// Require a credential on the client port (see [`crate::auth`]).
    pub auth: bool,
    /// A client certificate names the API token a request without a bearer
    /// token acts as (see [`crate::auth::gate`]).
    pub client_cert_identity: bool,
}

/// Why a node cannot start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Storage(#[from] crate::storage::StorageError),
    #[error("{0}")]
    State(String),
    #[error("cannot start the engine thread: {0}")]
    Thread(std::io::Error),
}

/// What each peer does beyond the base protocol (see
/// [`wire::FEATURES_HEADER`]), as its latest request said.
pub(crate) type PeerFeatures = Mutex<HashMap<NodeId, wire::Features>>;

/// Whether every member of `membership` but `me` said it does `feature`,
/// as its latest request to this node said. A member not heard from since
/// this node started counts as one that does not.
pub(crate) fn members_do(
    peers: &PeerFeatures,
    membership: &Membership,
    me: NodeId,
    feature: impl Fn(&wire::Features) -> bool,
) -> bool {
    let Ok(peers) = peers.lock() else {
        return false;
    };
    membership
        .members
        .keys()
        .all(|id| *id == me || peers.get(id).is_some_and(&feature))
}

/// A running replica. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Node {
    inner: Arc<Inner>,
}

/// Where a node stands before and around its engine.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Phase {
    /// The data directory is new; the bootstrap is being negotiated (why it
    /// waits, for people).
    Bootstrapping(String),
    /// The engine runs without a configuration that counts this node yet:
    /// it waits to be added.
    Joining(String),
    /// The engine runs without a configuration that counts this node, and
    /// the cluster counts another incarnation under its name.
    AwaitingReplacement(String),
    /// The engine runs with the node's own configuration.
    Running,
}

#[derive(Debug)]
struct Inner {
    cfg: NodeConfig,
    id: NodeId,
    inputs: SyncSender<Input>,
    store: Arc<RwLock<Store>>,
    events: broadcast::Sender<Event>,
    published: watch::Receiver<Published>,
    membership: watch::Receiver<Membership>,
    /// What the driver thread takes when the engine starts.
    pending: Mutex<Option<Pending>>,
    /// The engine runs (inputs are handled).
    running: std::sync::atomic::AtomicBool,
    phase: RwLock<Phase>,
    /// The configuration the cluster was bootstrapped with, once recorded.
    bootstrap_record: RwLock<Option<Membership>>,
    client: Arc<peer_client::PeerClient>,
    outbox: Outbox,
    metrics: Metrics,
    client_id: u64,
    next_seq: AtomicU64,
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
    /// `Bearer <cluster token>`, the peer API's authorization header.
    auth: String,
    /// Client authentication, when on.
    gate: crate::auth::gate::Gate,
    /// The driver's clock origin (engine time is time since this).
    epoch: Instant,
    read_lease: Arc<ReadLease>,
    /// Followers' read-index requests to the master, coalesced.
    read_batch: Mutex<ReadBatch>,
    /// Writes forwarded to the master, coalesced.
    forward_batch: Mutex<ForwardBatch>,
    /// What each peer does beyond the base protocol (see
    /// [`wire::FEATURES_HEADER`]), as its latest request said.
    peer_features: Arc<PeerFeatures>,
    /// Writes this node is forwarding to the master right now.
    forwarding: AtomicUsize,
    /// State digests of this replica and its peers (see [`digest`]).
    digests: Arc<Mutex<digest::Digests>>,
    /// Set once this replica's state is known to differ from the majority's.
    diverged: std::sync::atomic::AtomicBool,
    /// A snapshot is being received: one at a time, since each is decoded
    /// into a whole store.
    receiving_snapshot: std::sync::atomic::AtomicBool,
    /// Set when the node begins to shut down: long-lived exchanges (peers'
    /// message streams) end, so that serving can finish.
    closing: watch::Sender<bool>,
    /// Continuous archiving, when configured.
    archive: Option<Arc<crate::archive::archiver::Archive>>,
    /// Bytes free on the data directory's file system as last read
    /// ([`watch_disk_space`]); `u64::MAX` until read, or when it cannot be.
    disk_free: AtomicU64,
    /// Bytes of writes admitted since [`Inner::disk_free`] was read: what
    /// the log will take of it soon, so that a burst between two readings
    /// cannot eat the reserve.
    disk_admitted: AtomicU64,
    /// Less is free than [`Node::check_disk`] asks for (the driver then
    /// compacts early).
    disk_tight: Arc<std::sync::atomic::AtomicBool>,
    /// The largest write [`Node::check_disk`] refused since the volume
    /// turned tight: it stays tight until a write that large would fit.
    disk_refused_adds: AtomicU64,
    /// What each peer incarnation was seen to acknowledge (see [`rollback`]).
    seen: Arc<Mutex<rollback::Seen>>,
    /// How far this replica's own durable acceptor state reaches.
    durable: Arc<Mutex<rollback::Mark>>,
}

/// The parts of a node that wait for its engine to start.
#[derive(Debug)]
struct Pending {
    disk: DiskStore,
    inputs: std::sync::mpsc::Receiver<Input>,
    published: watch::Sender<Published>,
    membership: watch::Sender<Membership>,
}

/// What [`Node::keep_seen`] last wrote.
#[derive(Debug, Default)]
struct SeenWritten {
    /// [`rollback::Seen::changes`] at the last write.
    changes: u64,
    /// The last write failed (and said so).
    failing: bool,
}

/// Forwarded writes travel to the master in batches: at most
/// [`FORWARDS_IN_FLIGHT`] requests are out at a time, and writes that arrive
/// meanwhile go together in the next one. A lone write still leaves at once;
/// under load one HTTP exchange carries many writes instead of one each.
#[derive(Debug, Default)]
struct ForwardBatch {
    in_flight: usize,
    waiting: Vec<(Command, oneshot::Sender<Result<ProposeReply, String>>)>,
}

/// Who sent peer messages, as the headers of their request say.
#[derive(Debug, Default)]
pub struct Origin<'a> {
    /// The sender's own peer URL.
    pub url: Option<&'a str>,
    /// What the sender does beyond the base protocol.
    pub features: wire::Features,
}

/// Why peer messages were not taken.
#[derive(Debug)]
pub enum Misaddressed {
    /// Every message was for another incarnation; this one is named.
    OtherIncarnation(String),
    /// The node cannot take input now.
    Service(ServiceError),
}

impl Node {
    /// Refuses a peer URL that cannot work with this node's peer port: an
    /// http:// peer when peers speak TLS, or the other way round.
    fn check_peer_scheme(&self, url: &str) -> Result<(), ServiceError> {
        crate::cluster::check_peer_scheme(url, self.inner.cfg.peer_tls.is_some())
            .and_then(|()| crate::cluster::check_peer_url(url))
            .map_err(|e| ServiceError::Invalid(format!("peer_url {e}")))
    }
}

/// Why [`Node::hello_of`] got no answer to use.
#[derive(Debug, thiserror::Error)]
enum HelloError {
    /// It answered 401: it runs with another cluster token, and waiting
    /// will not change that.
    #[error("it refused this node's cluster token")]
    TokenRefused,
    /// Unreachable, another status, or an answer that does not decode.
    #[error("{0}")]
    Other(String),
}

/// Counts a write as forwarded until it is dropped.
struct Forwarding<'a>(&'a AtomicUsize);

impl Drop for Forwarding<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The engine's answer to a write as a [`ProposeReply`]; `None` if the
/// engine stopped without answering.
fn propose_reply(
    answer: Result<Result<OpResult, ProposeError>, oneshot::error::RecvError>,
) -> Option<ProposeReply> {
    Some(match answer.ok()? {
        Ok(result) => ProposeReply::Applied(result),
        Err(ProposeError::NotMaster { hint }) => ProposeReply::NotMaster { hint },
        Err(e) => ProposeReply::Busy(e.to_string()),
    })
}

/// One readable line for a failed HTTP call, without the URL reqwest repeats.
fn short_error(e: reqwest::Error) -> String {
    if let Some(reason) = crate::tls::failure_reason(&e) {
        format!("{}{reason}", transport::TLS_FAILURE)
    } else if e.is_timeout() {
        "no answer in time".into()
    } else if e.is_connect() {
        "connection refused or unreachable".into()
    } else {
        e.without_url().to_string()
    }
}

/// Members as `name=incarnation` for a log line.
fn describe(m: &Membership) -> String {
    m.members
        .iter()
        .map(|(id, m)| format!("{}={}", m.name, bootstrap::format_id(*id)))
        .collect::<Vec<_>>()
        .join(",")
}

/// How often a node with `--auth` retries switching auth on for the cluster.
const AUTH_ENABLE_RETRY: Duration = Duration::from_secs(2);

/// How long a read-index request on the peer stream may go unanswered
/// before it is asked again: it may have been lost with a broken stream.
/// Far above a round trip under load.
const READ_INDEX_ATTEMPT: Duration = Duration::from_secs(2);

/// Forward requests a follower keeps out at once.
const FORWARDS_IN_FLIGHT: usize = 2;
/// Applied events a watcher may be behind on the live feed before it is
/// told to resume from history.
const LIVE_EVENTS: usize = 4096;
/// Events of history a watch reads from the store at a time (a page ends
/// at a revision's last event, so one may hold a few more).
const REPLAY_PAGE: usize = 256;
/// Events queued between a watch's task and its HTTP stream.
const WATCH_QUEUE: usize = 64;
// One prefix delete's events (one revision) never make a watcher fall
// behind, nor push their own revision out of the watch history.
const _: () = assert!((crate::kv::MAX_DELETE_PREFIX as usize) < LIVE_EVENTS);
const _: () =
    assert!((crate::kv::MAX_DELETE_PREFIX as usize) < crate::kv::watch::DEFAULT_HISTORY_EVENTS);

/// Most commands in one forward request.
const MAX_FORWARD_BATCH: usize = 1024;

/// Linearizable reads on a follower that wait for the master's read index.
/// One request to the master is in flight at a time; reads that arrive
/// meanwhile wait for the next one, which starts after they arrived, so
/// every read still gets an index taken after it began (the rule that makes
/// it linearizable) and the master answers one request per round trip
/// instead of one per read.
#[derive(Debug, Default)]
struct ReadBatch {
    running: bool,
    waiting: Vec<oneshot::Sender<ReadIndexReply>>,
}

/// How often replicas exchange state digests.
const DIGEST_INTERVAL: Duration = Duration::from_secs(2);
/// How long a starting replica waits for each member's answer about its
/// data directory (see [`rollback`]).
const ROLLBACK_CHECK_TIMEOUT: Duration = Duration::from_secs(2);
/// How long a starting replica keeps asking when no member answers its
/// check (see [`rollback`]), and how often.
const ROLLBACK_CHECK_PATIENCE: Duration = Duration::from_secs(5);
const ROLLBACK_CHECK_RETRY: Duration = Duration::from_millis(500);
/// The exit status of a replica whose data directory is older than what
/// it acknowledged (EX_DATAERR).
pub const EXIT_ROLLED_BACK: i32 = 65;
/// How soon a report goes out again, in the first [`FEATURES_HURRY`] after
/// a start, while some member's features are unknown (its answer to the
/// first report was lost or late).
const FEATURES_RETRY: Duration = Duration::from_millis(200);
/// See [`FEATURES_RETRY`]; after it, a member not heard from is asked
/// every [`DIGEST_INTERVAL`] like the others (it may be down for good).
const FEATURES_HURRY: Duration = Duration::from_secs(10);

/// The longest a replica keeps sending a write it already sent to a master
/// (to the next master, after a failover), whatever `--write-timeout` says.
/// Every copy carries the first's request id and is answered as a
/// duplicate while the first is in the request-id table, the last
/// [`crate::kv::DEFAULT_DEDUP_CAPACITY`] ids applied; one chosen after the
/// table forgot the first is refused, not applied again (see
/// [`crate::kv::dedup`]), and its write answered 504. The shorter the time
/// in which copies may be proposed, the rarer that is. A longer write
/// timeout then means waiting longer for an outcome, not sending the write
/// again later.
const MAX_RESEND_WINDOW: Duration = Duration::from_secs(5);

/// How often a write forwarded to a master that has not answered checks
/// whether another node became master (see `Node::forward_while_master`).
const MASTER_RECHECK: Duration = Duration::from_millis(250);

/// How long a write may be sent again after it is first sent: see
/// [`MAX_RESEND_WINDOW`].
fn resend_window(write_timeout: Duration) -> Duration {
    write_timeout.min(MAX_RESEND_WINDOW)
}

/// Bound of the driver's input channel; beyond it requests are refused busy.
const INPUT_QUEUE: usize = 65_536;

/// How often the free space of the data directory's file system is read
/// (see [`Node::check_disk`]).
const DISK_SAMPLE_INTERVAL: Duration = Duration::from_secs(1);

/// Reads the free space of the data directory's file system every
/// [`DISK_SAMPLE_INTERVAL`] for [`Node::check_disk`] and the metrics,
/// until the node is gone. A file system that cannot be read leaves the
/// check open (logged once): the log's own writes still fail safe.
async fn watch_disk_space(inner: std::sync::Weak<Inner>) {
    let mut tick = tokio::time::interval(DISK_SAMPLE_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut warned = false;
    let mut warned_small = false;
    loop {
        tick.tick().await;
        let Some(dir) = inner.upgrade().map(|i| i.cfg.data_dir.clone()) else {
            return;
        };
        // statvfs may block on a network file system.
        let read = tokio::task::spawn_blocking(move || free_bytes(&dir)).await;
        let Some(inner) = inner.upgrade() else {
            return;
        };
        let reserve = inner.cfg.disk_reserve_bytes;
        let free = match read {
            Ok(Ok((free, total))) => {
                inner.metrics.set_disk_free_bytes(free);
                let least = crate::storage::min_volume_bytes(reserve);
                if total < least && !std::mem::replace(&mut warned_small, true) {
                    tracing::error!(
                        data_dir = %inner.cfg.data_dir.display(),
                        volume_bytes = total,
                        least,
                        "the data volume is smaller than a replica needs: {least} bytes, \
                         {} for the log's segments and a compaction's files plus \
                         --disk-reserve-bytes ({reserve}); writes that add data will be \
                         refused (507 disk_full) after the first few MiB, or with no reserve \
                         the log will fail to grow; give the replica a larger volume",
                        least - reserve
                    );
                }
                free
            }
            Ok(Err(e)) => {
                if !std::mem::replace(&mut warned, true) {
                    tracing::warn!(
                        data_dir = %inner.cfg.data_dir.display(),
                        error = %e,
                        "cannot read the free space of the data directory's file system; \
                         writes are taken whatever it is"
                    );
                }
                u64::MAX
            }
            Err(_) => u64::MAX,
        };
        inner.disk_free.store(free, Ordering::Relaxed);
        inner.disk_admitted.store(0, Ordering::Relaxed);
        let held = inner.published.borrow().store_bytes;
        // Tight while even the largest write refused since would be.
        let refused = inner.disk_refused_adds.load(Ordering::Relaxed);
        let tight = reserve > 0 && free < reserve.saturating_add(held).saturating_add(refused);
        if !tight {
            inner.disk_refused_adds.store(0, Ordering::Relaxed);
        }
        if inner.disk_tight.swap(tight, Ordering::Relaxed) != tight {
            if tight {
                log_disk_tight(free, reserve, held);
            } else {
                tracing::info!(free, "the data volume has room again: writes are taken");
            }
        }
    }
}

/// Says that writes that add data are refused for want of space: once, when
/// the volume turns tight (the sampler, or the first write refused).
fn log_disk_tight(free: u64, reserve: u64, held: u64) {
    tracing::warn!(
        free,
        reserve,
        store_bytes = held,
        "the data volume is nearly full: writes that add data are refused (507 disk_full) \
         until more is free; delete keys or grow the volume"
    );
}

/// Bytes an unprivileged process may still write on the file system that
/// holds `dir`, and that file system's size.
fn free_bytes(dir: &std::path::Path) -> std::io::Result<(u64, u64)> {
    let st = rustix::fs::statvfs(dir)?;
    Ok((
        st.f_bavail.saturating_mul(st.f_frsize),
        st.f_blocks.saturating_mul(st.f_frsize),
    ))
}

impl Node {
    /// Opens the data directory (refusing one that belongs to another node or
    /// cluster) and starts the engine: at once when the directory holds a
    /// configuration (or the node joins), after the bootstrap negotiation
    /// when it is new (see [`crate::cluster::bootstrap`]). Must be called
    /// inside a tokio runtime; the peer API must be served for the
    /// negotiation to finish.
    pub fn start(cfg: NodeConfig, metrics: Metrics) -> Result<Node, StartError> {
        metrics.set_quota_bytes(cfg.quota_bytes);
        let identity = Identity {
            node: cfg.name.clone(),
            cluster: cfg.cluster_id.clone(),
        };
        let mut disk = DiskStore::open(&cfg.data_dir, &identity)?;
        let seen = rollback::Seen::load(&cfg.data_dir).unwrap_or_else(|e| {
            // Only what peers acknowledged: the check of their directories
            // is weaker until they speak again, nothing else.
            tracing::warn!(error = %e, "starting without the record of what peers acknowledged");
            rollback::Seen::default()
        });
        let incarnation = disk.incarnation();
        let id = incarnation.id;
        let listed = cfg.bootstrap.iter().any(|p| p.name == cfg.name);
        enum Plan {
            Run(Membership, Phase),
            Negotiate,
        }
        let plan = match disk.bootstrap().cloned() {
            Some(b) => Plan::Run(b, Phase::Running),
            None if incarnation.migrated => {
                // Written before incarnations: the node's id is derived from
                // its name and its bootstrap list comes from the flags, as
                // they always did.
                let m = if listed {
                    cluster::legacy_membership(&cfg.bootstrap)
                } else {
                    Membership::default()
                };
                if !m.members.is_empty() {
                    disk.record_bootstrap(&m)?;
                }
                Plan::Run(m, Phase::Running)
            }
            // Added to a cluster earlier: its configuration is in its log.
            None if !disk.is_fresh() => Plan::Run(Membership::default(), Phase::Running),
            None if !listed => Plan::Run(
                Membership::default(),
                Phase::Joining(
                    "waiting to be added as a member (POST /v1/cluster/members on the cluster)"
                        .into(),
                ),
            ),
            None => Plan::Negotiate,
        };
        let bootstrap_record = disk.bootstrap().cloned();
        let epoch = Instant::now();
        let status0 = Status {
            id,
            is_master: false,
            master: None,
            ballot: crate::paxos::Ballot::ZERO,
            commit: 0,
            known_chosen: 0,
            last_index: 0,
            first_index: 1,
            membership: Membership::default(),
            lease_remaining: None,
        };
        let (membership_tx, membership_rx) = watch::channel(Membership::default());
        let (published_tx, published_rx) = watch::channel(Published {
            status: status0,
            applied: 0,
            revision: 0,
            peer_commit: Default::default(),
            silent: Default::default(),
            master_silent: false,
            auth_enabled: false,
            store_bytes: 0,
        });
        let (events, _) = broadcast::channel(LIVE_EVENTS);
        let (inputs_tx, inputs_rx) = sync_channel(INPUT_QUEUE);
        let client = peer_client::PeerClient::new(&peer_client::Settings {
            read_mode: cfg.engine.read_mode.name(),
            proxy: cfg.peer_proxy.clone(),
            tls: cfg.peer_tls.clone(),
        })
        .map_err(StartError::State)?;
        let outbox = Outbox::new(
            id,
            client.clone(),
            cfg.token.clone(),
            membership_rx.clone(),
            tokio::runtime::Handle::current(),
            metrics.clone(),
        );
        let client_id = request_id_seed(&cfg.name, epoch);
        let archive = match &cfg.archive {
            Some(settings) => Some(Arc::new(
                crate::archive::archiver::Archive::open(settings.clone())
                    .map_err(StartError::State)?,
            )),
            None => None,
        };
        // Even without --auth: the cluster may switch auth on.
        let gate = crate::auth::gate::Gate::new(metrics.clone(), cfg.client_cert_identity);
        let node = Node {
            inner: Arc::new(Inner {
                id,
                inputs: inputs_tx,
                store: Arc::new(RwLock::new(Store::new())),
                events,
                published: published_rx,
                membership: membership_rx,
                pending: Mutex::new(Some(Pending {
                    disk,
                    inputs: inputs_rx,
                    published: published_tx,
                    membership: membership_tx,
                })),
                running: std::sync::atomic::AtomicBool::new(false),
                phase: RwLock::new(Phase::Bootstrapping("starting".into())),
                bootstrap_record: RwLock::new(bootstrap_record),
                client,
                outbox,
                metrics,
                client_id,
                next_seq: AtomicU64::new(1),
                thread: Mutex::new(None),
                auth: format!("Bearer {}", cfg.token),
                gate,
                epoch,
                read_lease: Arc::new(ReadLease::default()),
                read_batch: Mutex::new(ReadBatch::default()),
                forward_batch: Mutex::new(ForwardBatch::default()),
                peer_features: Arc::default(),
                forwarding: AtomicUsize::new(0),
                digests: Arc::new(Mutex::new(digest::Digests::default())),
                diverged: std::sync::atomic::AtomicBool::new(false),
                receiving_snapshot: std::sync::atomic::AtomicBool::new(false),
                closing: watch::channel(false).0,
                archive,
                disk_free: AtomicU64::new(u64::MAX),
                disk_admitted: AtomicU64::new(0),
                disk_tight: Arc::default(),
                disk_refused_adds: AtomicU64::new(0),
                seen: Arc::new(Mutex::new(seen)),
                durable: Arc::default(),
                cfg,
            }),
        };
        match plan {
            Plan::Run(initial, phase) => node.launch(initial, phase, false)?,
            Plan::Negotiate => {
                node.set_phase(Phase::Bootstrapping(
                    "asking the bootstrap members whether the cluster exists".into(),
                ));
                let n = node.clone();
                tokio::spawn(async move { n.negotiate().await }.in_current_span());
            }
        }
        Ok(node)
    }

    /// Starts the engine with `initial` as the bootstrap configuration
    /// (recording it first when `record`).
    fn launch(&self, initial: Membership, phase: Phase, record: bool) -> Result<(), StartError> {
        let pending = self
            .inner
            .pending
            .lock()
            .map_err(|_| StartError::State("start-up state poisoned".into()))?
            .take();
        let Some(Pending {
            mut disk,
            inputs,
            published,
            membership,
        }) = pending
        else {
            return Err(StartError::State("the engine was started twice".into()));
        };
        if record {
            // Durable before the engine says anything (rule 1 of the
            // bootstrap argument).
            disk.record_bootstrap(&initial)?;
            if let Ok(mut b) = self.inner.bootstrap_record.write() {
                *b = Some(initial.clone());
            }
        }
        let (recovered, snapshot) = disk.recover_streaming()?;
        let own_mark = rollback::Mark::of_recovered(&recovered);
        if let Ok(mut d) = self.inner.durable.lock() {
            *d = own_mark;
        }
        let restored = driver::restore_store(snapshot).map_err(StartError::State)?;
        let (applied0, revision0) = (restored.applied_index(), restored.revision());
        let auth0 = restored.auth().enabled();
        let store_bytes0 = restored.size_bytes() as u64;
        if let Ok(mut store) = self.inner.store.write() {
            *store = restored;
        }
        let mut engine = self.inner.cfg.engine.clone();
        engine.id = self.inner.id;
        // A forward is sent again while its caller may send it again, and
        // no longer.
        engine.forward_for = resend_window(self.inner.cfg.write_timeout);
        engine.seed = self.inner.id ^ self.inner.client_id;
        let now = self.inner.epoch.elapsed();
        let replica = Replica::new(engine, recovered, initial, now);
        membership.send_replace(replica.membership().clone());
        published.send_replace(Published {
            status: replica.status(now),
            applied: applied0,
            revision: revision0,
            peer_commit: Default::default(),
            silent: Default::default(),
            master_silent: false,
            auth_enabled: auth0,
            store_bytes: store_bytes0,
        });
        let driver = Driver {
            replica,
            disk,
            store: self.inner.store.clone(),
            inputs,
            inputs_tx: self.inner.inputs.clone(),
            compacting: false,
            outbox: self.inner.outbox.clone(),
            events: self.inner.events.clone(),
            published,
            membership,
            metrics: self.inner.metrics.clone(),
            compact_after: self.inner.cfg.compact_after,
            compact_after_bytes: self.inner.cfg.compact_after_bytes,
            log_bytes: Default::default(),
            disk_tight: self.inner.disk_tight.clone(),
            epoch: self.inner.epoch,
            read_lease: self.inner.read_lease.clone(),
            digests: self.inner.digests.clone(),
            reads: driver::ReadWaiters::starting_at(self.inner.client_id),
            archive_tail: self.inner.archive.clone(),
            lease_timers: crate::kv::LeaseTimers::for_engine(&self.inner.cfg.engine),
            lease_questions: Vec::new(),
            peer_features: self.inner.peer_features.clone(),
            expiry_ids: RequestId {
                // A client id of its own, never one of the idempotency keys'.
                client: (self.inner.client_id ^ 0x5eed_1ea5e) & !crate::kv::dedup::IDEMPOTENT_BIT,
                seq: 0,
            },
            cut_off_logged: false,
            seen: self.inner.seen.clone(),
            durable: self.inner.durable.clone(),
        };
        // Every directory is checked against what the other members saw
        // its incarnation acknowledge (see `rollback`): those of its
        // configuration, and the bootstrap members (a copy taken before
        // the directory recorded a configuration, or an empty one, would
        // otherwise go unchecked). A new directory gets zeros back.
        let me = self.inner.id;
        let mut check: Vec<(String, String)> = driver
            .replica
            .membership()
            .members
            .iter()
            .filter(|(id, _)| **id != me)
            .map(|(_, m)| (m.name.clone(), m.addr.clone()))
            .collect();
        for p in &self.inner.cfg.bootstrap {
            if p.name != self.inner.cfg.name
                && !check
                    .iter()
                    .any(|(_, url)| url.trim_end_matches('/') == p.peer_url.trim_end_matches('/'))
            {
                check.push((p.name.clone(), p.peer_url.clone()));
            }
        }
        // Say what this node is before its engine says anything.
        self.set_phase(phase);
        if check.is_empty() {
            return self.run_engine(driver);
        }
        let node = self.clone();
        tokio::spawn(
            async move {
                node.check_not_rolled_back(own_mark, check).await;
                if *node.inner.closing.borrow() {
                    return;
                }
                if let Err(e) = node.run_engine(driver) {
                    tracing::error!(error = %e, "cannot start the engine; exiting");
                    std::process::exit(70);
                }
            }
            .in_current_span(),
        );
        Ok(())
    }

    /// Starts the driver thread and the tasks that go with a running engine.
    fn run_engine(&self, driver: Driver) -> Result<(), StartError> {
        self.inner.running.store(true, Ordering::SeqCst);
        // The engine's log lines name this replica (see `telemetry::replica_span`).
        let span = tracing::Span::current();
        let thread = std::thread::Builder::new()
            .name("phxkv-engine".into())
            .spawn(move || span.in_scope(|| driver.run()))
            .map_err(StartError::Thread)?;
        if let Ok(mut t) = self.inner.thread.lock() {
            *t = Some(thread);
        }
        if let Some(d) = digest::recorded_divergence(&self.inner.cfg.data_dir) {
            // Marked before it stopped: still diverged (only a wipe clears
            // it), before any comparison.
            tracing::error!(
                index = d.index,
                part = ?d.part,
                "this replica was found diverged from the cluster before it stopped ({} in its \
                 data directory): it serves no reads and will not be master; wipe its data \
                 directory and replace it (phxkv members replace {})",
                digest::DIVERGED_FILE,
                self.inner.cfg.name
            );
            self.inner.metrics.set_diverged(true);
            self.inner.diverged.store(true, Ordering::SeqCst);
            if let Ok(mut digests) = self.inner.digests.lock() {
                digests.restore_divergence(d);
            }
            let _ = self.submit(Input::ForbidCandidacy);
        }
        let node = self.clone();
        tokio::spawn(async move { node.exchange_digests().await }.in_current_span());
        // Read once before the first write can arrive, then every interval.
        if let Ok((free, _)) = free_bytes(&self.inner.cfg.data_dir) {
            self.inner.disk_free.store(free, Ordering::Relaxed);
        }
        tokio::spawn(watch_disk_space(Arc::downgrade(&self.inner)).in_current_span());
        if self.inner.cfg.auth {
            let node = self.clone();
            tokio::spawn(async move { node.enable_auth_for_the_cluster().await }.in_current_span());
        }
        if let Some(archive) = &self.inner.archive {
            tokio::spawn(
                crate::archive::archiver::run(
                    archive.clone(),
                    archiving::ArchiveSource(Arc::downgrade(&self.inner)),
                    self.closing(),
                )
                .in_current_span(),
            );
            tokio::spawn(
                crate::archive::archiver::merge_segments(
                    archive.clone(),
                    archiving::ArchiveSource(Arc::downgrade(&self.inner)),
                    self.closing(),
                )
                .in_current_span(),
            );
        }
        Ok(())
    }

    /// Sends this replica's newest state digests to its peers every few
    /// seconds and compares (see [`digest`]).
    /// With `--auth`: switches auth on for the whole cluster once, so that
    /// a replica started without the flag (added by hand, or misconfigured)
    /// requires a credential too. Tries every few seconds until this node
    /// has applied an enable (its own or another's), then stops: an admin
    /// may disable it later (`phxkv auth disable`), and only a restart with
    /// `--auth` enables it again.
    async fn enable_auth_for_the_cluster(&self) {
        let mut closing = self.closing();
        let mut published = self.inner.published.clone();
        loop {
            let (enabled, has_master) = {
                let p = published.borrow_and_update();
                (p.auth_enabled, p.status.master.is_some())
            };
            if enabled {
                return;
            }
            if has_master {
                match self
                    .write(crate::kv::Op::Auth(crate::auth::AuthChange::Enable), None)
                    .await
                {
                    Ok(_) => {
                        tracing::info!("auth enabled for the whole cluster (--auth)");
                        return;
                    }
                    Err(e) => {
                        tracing::debug!(error = %e, "could not enable auth for the cluster yet")
                    }
                }
            }
            tokio::select! {
                _ = closing.changed() => return,
                _ = tokio::time::sleep(AUTH_ENABLE_RETRY) => {}
            }
            if *closing.borrow() || Arc::strong_count(&self.inner) <= 1 {
                return;
            }
        }
    }

    async fn exchange_digests(&self) {
        let started = tokio::time::Instant::now();
        let mut tick = tokio::time::interval(DIGEST_INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut seen_written = SeenWritten::default();
        loop {
            tick.tick().await;
            if Arc::strong_count(&self.inner) <= 1 {
                return;
            }
            let checkpoints = match self.inner.digests.lock() {
                Ok(d) => d.newest(),
                Err(_) => return,
            };
            // Sent even with nothing to compare: the report's features
            // header is how members that never exchange Paxos messages
            // (two followers) learn what the other decodes.
            let durable = self.inner.durable.lock().ok().map(|d| *d);
            let report = digest::DigestReport {
                name: self.inner.cfg.name.clone(),
                checkpoints,
                durable: durable.filter(|d| !d.is_zero()),
                incarnation: Some(bootstrap::format_id(self.inner.id)),
            };
            let peers: Vec<(NodeId, String)> = self
                .inner
                .membership
                .borrow()
                .members
                .iter()
                .filter(|(id, _)| **id != self.inner.id)
                .map(|(id, m)| (*id, m.addr.trim_end_matches('/').to_string()))
                .collect();
            let report = &report;
            let sends = peers.iter().map(|(id, url)| async move {
                let answer = self
                    .inner
                    .client
                    .get()
                    .post(format!("{url}/peer/v1/digests"))
                    .header(reqwest::header::AUTHORIZATION, &self.inner.auth)
                    .header(wire::FEATURES_HEADER, wire::FEATURES)
                    .timeout(Duration::from_secs(2))
                    .json(report)
                    .send()
                    .await;
                (*id, answer)
            });
            // Best effort: a peer that misses one report gets the next.
            for (id, answer) in futures_util::future::join_all(sends).await {
                self.note_answered_features(id, answer.ok().as_ref());
            }
            self.keep_seen(&mut seen_written).await;
            self.judge_digests();
            // Keeps the gauge current through membership changes too.
            self.refresh_anonymous_gauge();
            if started.elapsed() < FEATURES_HURRY && !self.members_do(|_| true) {
                tick.reset_after(FEATURES_RETRY);
            }
        }
    }

    /// Writes what peers were seen to acknowledge to the data directory
    /// when it changed since the last write (at most once per digest
    /// round), so that this replica can still answer a restarted peer's
    /// check after it restarted itself (see [`rollback`]).
    async fn keep_seen(&self, written: &mut SeenWritten) {
        let due = match self.inner.seen.lock() {
            Ok(s) if s.changes() != written.changes => Some((s.changes(), s.to_file())),
            _ => None,
        };
        let Some((changes, bytes)) = due else { return };
        let dir = self.inner.cfg.data_dir.clone();
        let wrote = tokio::task::spawn_blocking(move || {
            crate::storage::replace_file(&dir, rollback::SEEN_FILE, &bytes)
        })
        .await
        .unwrap_or_else(|e| Err(std::io::Error::other(e)));
        match wrote {
            Ok(()) => {
                written.changes = changes;
                written.failing = false;
            }
            Err(e) if !written.failing => {
                written.failing = true;
                tracing::warn!(
                    error = %e,
                    "cannot keep the record of what peers acknowledged ({}); will retry",
                    rollback::SEEN_FILE
                );
            }
            Err(_) => {}
        }
    }

    /// Records the features peer `id` named in its answer to this node's
    /// digest report. The first report goes out as the node starts, so a
    /// restarted replica knows its peers' features one round trip after it
    /// starts, rather than once each of them next reports to it (up to
    /// [`DIGEST_INTERVAL`] later; until then it would refuse prefix deletes
    /// and propose writes without a credential unwrapped). A report whose
    /// answer is lost is sent again after [`FEATURES_RETRY`] in the first
    /// seconds. An answer
    /// without the header (a refusal, or a peer of a version that names its
    /// features in its requests only) says nothing, and what its requests
    /// said stands.
    fn note_answered_features(&self, id: NodeId, answer: Option<&reqwest::Response>) {
        let Some(answer) = answer.filter(|a| a.status().is_success()) else {
            return;
        };
        if let Some(named) = answer.headers().get(wire::FEATURES_HEADER) {
            self.note_features(id, wire::Features::of(Some(named)));
        }
    }

    /// Takes a peer's digest report (peer API), sent with `features`.
    pub fn receive_digests(&self, report: digest::DigestReport, features: wire::Features) {
        // By incarnation when the report names one (two members may share
        // a name for a moment during a replacement), by name otherwise.
        let named = report
            .incarnation
            .as_deref()
            .and_then(|i| bootstrap::parse_id(i).ok());
        let sender = self
            .inner
            .membership
            .borrow()
            .members
            .iter()
            .find(|(id, m)| m.name == report.name && named.is_none_or(|n| n == **id))
            .map(|(id, _)| *id);
        if let Some(id) = sender
            && id != self.inner.id
        {
            self.note_features(id, features);
            if let Some(mark) = report.durable
                && named == Some(id)
                && let Ok(mut seen) = self.inner.seen.lock()
            {
                seen.raise(id, mark);
            }
        }
        if let Ok(mut d) = self.inner.digests.lock() {
            d.receive(&report);
        }
        self.judge_digests();
    }

    fn judge_digests(&self) {
        let voters: Vec<String> = {
            let m = self.inner.membership.borrow();
            m.voters()
                .filter_map(|id| m.members.get(&id).map(|x| x.name.clone()))
                .collect()
        };
        let findings = match self.inner.digests.lock() {
            Ok(mut d) => d.judge(&voters),
            Err(_) => return,
        };
        for f in findings {
            match f {
                digest::Finding::PeerDiffers { peer, index } => {
                    self.inner.metrics.inc_digest_mismatches();
                    tracing::warn!(
                        peer = %peer,
                        index,
                        "{peer}'s state differs from this replica's at index {index}"
                    );
                }
                digest::Finding::Diverged(d) => {
                    self.inner.metrics.inc_digest_mismatches();
                    self.inner.metrics.set_diverged(true);
                    self.inner.diverged.store(true, Ordering::SeqCst);
                    let what = match d.part {
                        digest::DivergedPart::Keys => "state",
                        digest::DivergedPart::Requests => "request-id table",
                    };
                    tracing::error!(
                        index = d.index,
                        part = ?d.part,
                        ours = %d.ours,
                        majority = %d.majority,
                        agreeing = %d.agreeing.join(","),
                        "this replica's {what} diverged from the cluster's: it serves no reads \
                         and will not be master; wipe its data directory and replace it \
                         (phxkv members replace {})",
                        self.inner.cfg.name
                    );
                    if let Err(e) = digest::record_divergence(&self.inner.cfg.data_dir, &d) {
                        tracing::warn!(
                            error = %e,
                            "cannot record the divergence in the data directory: a restart \
                             forgets it until the next comparison"
                        );
                    }
                    let _ = self.submit(Input::ForbidCandidacy);
                    let node = self.clone();
                    tokio::spawn(
                        async move { node.hand_off(Duration::from_secs(3)).await }
                            .in_current_span(),
                    );
                }
            }
        }
    }

    /// Why reads are refused here, if this replica diverged.
    fn refuse_if_diverged(&self) -> Result<(), ServiceError> {
        if !self.inner.diverged.load(Ordering::SeqCst) {
            return Ok(());
        }
        let at = self
            .inner
            .digests
            .lock()
            .ok()
            .and_then(|d| d.divergence().map(|d| d.index))
            .unwrap_or_default();
        Err(ServiceError::Diverged(format!(
            "this replica's state differs from the cluster's (from log index {at} on); it \
             serves no reads: ask another replica, and replace this one"
        )))
    }

    fn set_phase(&self, phase: Phase) {
        if let Ok(mut p) = self.inner.phase.write() {
            *p = phase;
        }
        let (state, _) = self.state();
        self.inner.metrics.set_node_state(match state {
            NodeStatus::Bootstrapping => "bootstrapping",
            NodeStatus::Joining => "joining",
            NodeStatus::AwaitingReplacement => "awaiting_replacement",
            NodeStatus::Member => "member",
        });
    }

    /// This node's state, and why it is not a member when it is not.
    pub fn state(&self) -> (NodeStatus, Option<String>) {
        let phase = self
            .inner
            .phase
            .read()
            .map(|p| p.clone())
            .unwrap_or(Phase::Running);
        if let Phase::Bootstrapping(why) = phase {
            return (NodeStatus::Bootstrapping, Some(why));
        }
        if self
            .inner
            .membership
            .borrow()
            .members
            .contains_key(&self.inner.id)
        {
            return (NodeStatus::Member, None);
        }
        match phase {
            Phase::AwaitingReplacement(why) => (NodeStatus::AwaitingReplacement, Some(why)),
            Phase::Joining(why) => (NodeStatus::Joining, Some(why)),
            _ => (
                NodeStatus::Joining,
                Some("this node is not in the cluster's configuration".into()),
            ),
        }
    }

    /// The bootstrap negotiation of a node with a new data directory: asks
    /// the bootstrap members about themselves until
    /// [`bootstrap::decide`] settles it, then starts the engine.
    async fn negotiate(&self) {
        let peers = self.inner.cfg.bootstrap.clone();
        let mut said: Option<(String, Instant)> = None;
        // Members started together need a moment to find each other; only
        // a wait that lasts is worth a line at info level.
        let started = Instant::now();
        loop {
            let answers = self.ask_peers(&peers).await;
            let me = bootstrap::Me {
                name: &self.inner.cfg.name,
                incarnation: self.inner.id,
                cluster_id: &self.inner.cfg.cluster_id,
            };
            let decision = bootstrap::decide(&me, &peers, &answers);
            let id = bootstrap::format_id(self.inner.id);
            let launched = match decision {
                Decision::Wait(why) => {
                    // Say it when it changes, and every 10 s while it lasts.
                    let repeat = said
                        .as_ref()
                        .is_none_or(|(w, t)| *w != why || t.elapsed() >= Duration::from_secs(10));
                    if repeat && started.elapsed() >= Duration::from_secs(2) {
                        tracing::info!(incarnation = %id, "bootstrapping: {why}");
                        said = Some((why.clone(), Instant::now()));
                    } else if repeat {
                        tracing::debug!(incarnation = %id, "bootstrapping: {why}");
                    }
                    self.set_phase(Phase::Bootstrapping(why));
                    tokio::time::sleep(Duration::from_millis(300)).await;
                    continue;
                }
                Decision::Create(m) => {
                    tracing::info!(
                        incarnation = %id,
                        members = %describe(&m),
                        "every bootstrap member is empty: creating the cluster"
                    );
                    self.launch(m, Phase::Running, true)
                }
                Decision::Adopt(m) => {
                    tracing::info!(
                        incarnation = %id,
                        members = %describe(&m),
                        "joining the cluster being created"
                    );
                    self.launch(m, Phase::Running, true)
                }
                Decision::Join(why) => {
                    tracing::info!(incarnation = %id, "{why}");
                    self.launch(Membership::default(), Phase::Joining(why), false)
                }
                Decision::AwaitReplacement(why) => {
                    tracing::warn!(incarnation = %id, "this node waits to be replaced: {why}");
                    self.launch(
                        Membership::default(),
                        Phase::AwaitingReplacement(why),
                        false,
                    )
                }
            };
            if let Err(e) = launched {
                // Nothing was promised yet, but nothing can go on either.
                tracing::error!(error = %e, "cannot start the engine; exiting");
                std::process::exit(70);
            }
            return;
        }
    }

    /// Asks each bootstrap member (but this node) who it is.
    async fn ask_peers(&self, peers: &[BootstrapPeer]) -> BTreeMap<String, bootstrap::Answer> {
        let asks = peers
            .iter()
            .filter(|p| p.name != self.inner.cfg.name)
            .map(|p| async move {
                let answer = match self.hello_of(&p.peer_url).await {
                    Ok(h) => bootstrap::Answer::Hello(h),
                    Err(e) => bootstrap::Answer::Unreachable(e.to_string()),
                };
                (p.name.clone(), answer)
            });
        futures_util::future::join_all(asks)
            .await
            .into_iter()
            .collect()
    }

    /// Asks the members in `peers` (name, peer URL) what they saw this
    /// replica acknowledge, and exits when its data directory, which holds
    /// `own`, is older than that (see [`rollback`]). Peers that cannot be
    /// reached, or of versions that do not keep the record, are skipped.
    async fn check_not_rolled_back(&self, own: rollback::Mark, peers: Vec<(String, String)>) {
        let me = bootstrap::format_id(self.inner.id);
        let started = Instant::now();
        let mut heard = Vec::new();
        let mut asking = peers;
        let mut unheard = Vec::new();
        loop {
            let asks = asking.iter().map(|(name, url)| {
                let me = &me;
                async move { (name, url, self.acknowledged_by(url, me).await) }
            });
            let mut again = Vec::new();
            unheard.clear();
            for (name, url, answer) in futures_util::future::join_all(asks).await {
                match answer {
                    Ok(Some(mark)) => heard.push((name.clone(), mark)),
                    Ok(None) => {}
                    Err(e) => {
                        unheard.push(format!("{name} ({e})"));
                        again.push((name.clone(), url.clone()));
                    }
                }
            }
            // One member that answers is enough to go on with: each has
            // seen every other's synced state within a digest round. When
            // none does (the whole cluster starting at once), they get a
            // few seconds to come up.
            if !heard.is_empty() || again.is_empty() || started.elapsed() >= ROLLBACK_CHECK_PATIENCE
            {
                break;
            }
            asking = again;
            tokio::time::sleep(ROLLBACK_CHECK_RETRY).await;
        }
        if let Some(behind) = rollback::judge(own, &heard) {
            tracing::error!(
                data_dir = %self.inner.cfg.data_dir.display(),
                "{behind}. It was put back from an older copy (a volume snapshot, a backup of \
                 the directory) or the disk lost synced writes; voting with it could lose \
                 acknowledged writes, so this replica will not start. Move the directory away \
                 (in Kubernetes: delete the pod's PersistentVolumeClaim and the pod) and start \
                 the node again: it comes back empty, as a new incarnation, and is replaced \
                 (phxkv members replace {})",
                self.inner.cfg.name
            );
            std::process::exit(EXIT_ROLLED_BACK);
        }
        let with_record: Vec<&str> = heard
            .iter()
            .filter(|(_, m)| !m.is_zero())
            .map(|(name, _)| name.as_str())
            .collect();
        if !with_record.is_empty() {
            tracing::info!(
                %own,
                checked_with = %with_record.join(", "),
                unreachable = %unheard.join(", "),
                "this data directory was checked against what the other members saw"
            );
        } else if own.is_zero() {
            tracing::debug!("a new data directory: nothing to check");
        } else {
            tracing::warn!(
                %own,
                unreachable = %unheard.join(", "),
                "started without checking this data directory against the other members \
                 (none that answered had a record of it): an older copy of it would go \
                 unnoticed"
            );
        }
    }

    /// `GET /peer/v1/acknowledged/{me}` on the node at `peer_url`; `None`
    /// from a node of a version without the route.
    async fn acknowledged_by(
        &self,
        peer_url: &str,
        me: &str,
    ) -> Result<Option<rollback::Mark>, String> {
        let url = format!(
            "{}/peer/v1/acknowledged/{me}",
            peer_url.trim_end_matches('/')
        );
        let resp = self
            .peer_get(&url, ROLLBACK_CHECK_TIMEOUT)
            .header(wire::FEATURES_HEADER, wire::FEATURES)
            .send()
            .await
            .map_err(short_error)?;
        if resp.status() == reqwest::StatusCode::NOT_FOUND {
            // A version that keeps no record: nothing to compare, and
            // nothing to wait for.
            return Ok(None);
        }
        if !resp.status().is_success() {
            return Err(format!("HTTP {}", resp.status()));
        }
        resp.json::<rollback::Mark>()
            .await
            .map(Some)
            .map_err(|e| format!("unreadable answer: {e}"))
    }

    /// What this node saw incarnation `id` acknowledge (peer API).
    pub fn acknowledged(&self, id: NodeId) -> rollback::Mark {
        self.inner.seen.lock().map(|s| s.of(id)).unwrap_or_default()
    }

    /// A GET of a peer route, with the cluster token and a deadline.
    fn peer_get(&self, url: &str, within: Duration) -> reqwest::RequestBuilder {
        self.inner
            .client
            .get()
            .get(url)
            .header(reqwest::header::AUTHORIZATION, &self.inner.auth)
            .timeout(within)
    }

    /// `GET /peer/v1/hello` on the node at `peer_url`.
    async fn hello_of(&self, peer_url: &str) -> Result<Hello, HelloError> {
        let url = format!("{}/peer/v1/hello", peer_url.trim_end_matches('/'));
        let resp = self
            .peer_get(&url, Duration::from_secs(2))
            .send()
            .await
            .map_err(|e| HelloError::Other(short_error(e)))?;
        match resp.status() {
            s if s.is_success() => {}
            reqwest::StatusCode::UNAUTHORIZED => return Err(HelloError::TokenRefused),
            s => return Err(HelloError::Other(format!("HTTP {s}"))),
        }
        resp.json::<Hello>()
            .await
            .map_err(|e| HelloError::Other(format!("unreadable answer: {e}")))
    }

    /// What this node tells a peer that asks who it is.
    pub fn hello(&self) -> Hello {
        let (state, _) = self.state();
        let membership = self.inner.membership.borrow().clone();
        Hello {
            cluster_id: self.inner.cfg.cluster_id.clone(),
            name: self.inner.cfg.name.clone(),
            incarnation: bootstrap::format_id(self.inner.id),
            state: match state {
                NodeStatus::Bootstrapping => NodeState::Fresh,
                NodeStatus::Joining | NodeStatus::AwaitingReplacement => NodeState::Joining,
                NodeStatus::Member => NodeState::Member,
            },
            bootstrap: self
                .inner
                .bootstrap_record
                .read()
                .ok()
                .and_then(|b| b.as_ref().map(bootstrap::records)),
            members: (!membership.members.is_empty()).then(|| bootstrap::records(&membership)),
            list: bootstrap::list_of(&self.inner.cfg.bootstrap),
        }
    }

    pub fn name(&self) -> &str {
        &self.inner.cfg.name
    }

    pub fn id(&self) -> NodeId {
        self.inner.id
    }

    pub fn metrics(&self) -> &Metrics {
        &self.inner.metrics
    }

    /// True while this node is master.
    pub fn is_master(&self) -> bool {
        self.inner.published.borrow().status.is_master
    }

    /// If this node is master, hands mastership to the most caught-up voter
    /// that can take over at once and waits (up to `within`) until it is no
    /// longer master, so clients see no lease-long gap when this node goes
    /// away.
    pub async fn hand_off(&self, within: Duration) {
        if !self.is_master() {
            return;
        }
        match self.transfer_to(None, within).await {
            Ok(TransferReply::HandedOver { .. }) => {
                // Stepping down queues the target's cue to take over at
                // once; leaving before it is on the wire would make it wait
                // out an election instead.
                let flush_by = Instant::now() + Duration::from_millis(500);
                while !self.inner.outbox.drained() && Instant::now() < flush_by {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            }
            Ok(TransferReply::Refused { message, .. }) => {
                tracing::info!(reason = %message, "not handing mastership over");
            }
            Ok(_) => {}
            Err(e) => tracing::info!(reason = %e, "mastership was not handed over"),
        }
    }

    /// Ends the peers' message streams into this node (they reconnect to
    /// another incarnation or give up), so that a graceful shutdown does
    /// not wait for them forever.
    pub fn begin_closing(&self) {
        self.inner.closing.send_replace(true);
    }

    /// Becomes true when the node begins to shut down.
    pub fn closing(&self) -> watch::Receiver<bool> {
        self.inner.closing.subscribe()
    }

    /// Stops the driver thread after its current turn, then writes what
    /// peers were seen to acknowledge: the digest rounds write it at most
    /// every few seconds, and a peer put back on an older copy while this
    /// replica restarts is judged against this file alone.
    pub fn shutdown(&self) {
        let _ = self.inner.inputs.try_send(Input::Shutdown);
        let handle = self.inner.thread.lock().ok().and_then(|mut t| t.take());
        if let Some(h) = handle {
            let _ = h.join();
        }
        let bytes = match self.inner.seen.lock() {
            Ok(s) if s.changes() > 0 => s.to_file(),
            _ => return,
        };
        if let Err(e) =
            crate::storage::replace_file(&self.inner.cfg.data_dir, rollback::SEEN_FILE, &bytes)
        {
            tracing::warn!(
                error = %e,
                "cannot keep the record of what peers acknowledged ({}) on the way out",
                rollback::SEEN_FILE
            );
        }
    }

    fn submit(&self, input: Input) -> Result<(), ServiceError> {
        if !self.inner.running.load(Ordering::SeqCst) {
            let (status, why) = self.state();
            if status == NodeStatus::Member {
                return Err(ServiceError::Unavailable {
                    message: "this node is starting: it is checking its data directory against \
                              the other members"
                        .into(),
                    retry_after_secs: 1,
                });
            }
            return Err(ServiceError::Unavailable {
                message: format!(
                    "this node has not joined its cluster yet: {}",
                    why.unwrap_or_default()
                ),
                retry_after_secs: 1,
            });
        }
        match self.inner.inputs.try_send(input) {
            Ok(()) => Ok(()),
            Err(TrySendError::Full(_)) => Err(ServiceError::Unavailable {
                message: "this node is overloaded; retry shortly".into(),
                retry_after_secs: 1,
            }),
            Err(TrySendError::Disconnected(_)) => Err(ServiceError::Unavailable {
                message: "this node is shutting down".into(),
                retry_after_secs: 1,
            }),
        }
    }

    /// Feeds peer messages to the engine (from the peer API); `from_url` is
    /// the sender's peer URL if it told us. Messages for another incarnation
    /// of this node (one whose volume was lost) are dropped: this one never
    /// promised what that one did. If that is all there was, the answer says
    /// so, and the sender can tell its operator that this node must be
    /// replaced.
    pub fn deliver(
        &self,
        mut envs: Vec<crate::paxos::Envelope>,
        origin: &Origin<'_>,
    ) -> Result<(), Misaddressed> {
        let before = envs.len();
        envs.retain(|e| e.to == self.inner.id);
        let astray = before - envs.len();
        if astray > 0 {
            self.inner.metrics.inc_misaddressed(astray as u64);
        }
        if envs.is_empty() {
            return if astray > 0 {
                Err(Misaddressed::OtherIncarnation(bootstrap::format_id(
                    self.inner.id,
                )))
            } else {
                Ok(())
            };
        }
        if let Some(first) = envs.first() {
            if let Some(url) = origin.url {
                self.inner.outbox.learn_address(first.from, url);
            }
            self.note_features(first.from, origin.features);
        }
        self.answer_read_index_requests(&mut envs);
        self.drop_inadmissible_forwards(&mut envs);
        if envs.is_empty() {
            return Ok(());
        }
        self.submit(Input::Peer(envs))
            .map_err(Misaddressed::Service)
    }

    /// Checks `op` against this node's limits, as every op is where it
    /// enters the cluster: from a client, or forwarded by a peer (a
    /// follower has checked it already; anything else that holds the
    /// cluster token and speaks the peer protocol has not).
    fn admit(&self, op: &Op) -> Result<(), ServiceError> {
        op.validate(&self.inner.cfg.limits).map_err(|e| match e {
            crate::kv::KvError::EmptyKey
            | crate::kv::KvError::ReservedKey
            | crate::kv::KvError::InvalidLease(_)
            | crate::kv::KvError::DuplicateTxnKey(_)
            | crate::kv::KvError::DeleteLimit { .. } => ServiceError::Invalid(e.to_string()),
            _ => ServiceError::TooLarge(e.to_string()),
        })
    }

    /// Drops forwarded commands this node would not admit from a client
    /// (see [`Node::admit`]), saying so in the log; the sender's client is
    /// not answered for them (there is no refusal for it in the protocol)
    /// and times out. Only a peer that skipped the check sends one, or one
    /// with larger limits: every replica should have the same.
    fn drop_inadmissible_forwards(&self, envs: &mut Vec<crate::paxos::Envelope>) {
        for env in envs.iter_mut() {
            if let crate::paxos::Message::Forward { cmds } = &mut env.msg {
                cmds.retain(|cmd| match self.admit(&cmd.op) {
                    Ok(()) => true,
                    Err(e) => {
                        tracing::warn!(
                            from = %bootstrap::format_id(env.from),
                            error = %e,
                            "dropped a forwarded write this node would refuse from a client; \
                             give every replica the same limits (--max-key-bytes, \
                             --max-value-bytes, --max-txn-ops)"
                        );
                        false
                    }
                });
            }
        }
        envs.retain(
            |e| !matches!(&e.msg, crate::paxos::Message::Forward { cmds } if cmds.is_empty()),
        );
    }

    /// [`Node::propose_local`] for a command a peer sent, checked first as
    /// a client's would be.
    pub async fn propose_forwarded(
        &self,
        cmd: Command,
        deadline: Instant,
    ) -> Result<ProposeReply, ServiceError> {
        self.admit(&cmd.op)?;
        self.propose_local(cmd, deadline).await
    }

    /// Proposes `cmd` on this node only and waits for it to be applied.
    async fn propose_local(
        &self,
        cmd: Command,
        deadline: Instant,
    ) -> Result<ProposeReply, ServiceError> {
        let (reply, rx) = oneshot::channel();
        self.submit(Input::Propose { cmd, reply })?;
        match tokio::time::timeout_at(deadline.into(), rx).await {
            Ok(answer) => propose_reply(answer)
                .ok_or_else(|| ServiceError::Internal("the engine stopped".into())),
            Err(_) => Err(ServiceError::Timeout(
                "the write was proposed but not applied before the deadline".into(),
            )),
        }
    }

    /// Lease keep-alives or TTL questions, answered by this node's engine
    /// only if it is a master that may decide them.
    pub async fn lease_local(
        &self,
        q: wire::LeaseQuestion,
    ) -> Result<wire::LeaseReply, ServiceError> {
        if q.ids.len() > MAX_LEASES_PER_QUESTION {
            return Err(ServiceError::Invalid(format!(
                "at most {MAX_LEASES_PER_QUESTION} leases per request, got {}",
                q.ids.len()
            )));
        }
        let (reply, rx) = oneshot::channel();
        self.submit(Input::Lease {
            ids: q.ids,
            renew: q.renew,
            reply,
        })?;
        match tokio::time::timeout(self.inner.cfg.read_timeout, rx).await {
            Ok(Ok(r)) => Ok(r),
            Ok(Err(_)) => Err(ServiceError::Internal("the engine stopped".into())),
            Err(_) => Ok(wire::LeaseReply::NotMaster { hint: None }),
        }
    }

    /// This node's read index, if it is a master with a valid lease.
    pub async fn read_index_local(&self) -> Result<ReadIndexReply, ServiceError> {
        if let Some(i) = self.lease_read_index() {
            return Ok(ReadIndexReply::Index(i));
        }
        // In quorum read mode the answer waits for a round trip to a
        // majority, which a partition can hold up: "not now" after a while.
        self.engine_read_index(None, self.inner.cfg.read_timeout)
            .await
    }

    /// A read index from this node's engine: its own (`master` unset), or
    /// asked of `master` on the peer stream; "no lease" (ask again) if none
    /// comes within `wait`.
    async fn engine_read_index(
        &self,
        master: Option<NodeId>,
        wait: Duration,
    ) -> Result<ReadIndexReply, ServiceError> {
        let (reply, rx) = oneshot::channel();
        self.submit(Input::ReadIndex { master, reply })?;
        match tokio::time::timeout(wait, rx).await {
            Ok(Ok(Ok(i))) => Ok(ReadIndexReply::Index(i)),
            Ok(Ok(Err(ReadError::NotMaster { hint }))) => Ok(ReadIndexReply::NotMaster { hint }),
            Ok(Ok(Err(ReadError::NoLease | ReadError::Busy(_)))) | Err(_) => {
                Ok(ReadIndexReply::NoLease)
            }
            Ok(Err(_)) => Err(ServiceError::Internal("the engine stopped".into())),
        }
    }

    /// Proposes a batch of forwarded commands on this node only; answers
    /// each in order once it is applied (or refused).
    pub async fn propose_batch_local(
        &self,
        cmds: Vec<Command>,
        deadline: Instant,
    ) -> Vec<wire::Forwarded> {
        futures_util::future::join_all(
            cmds.into_iter()
                .map(|cmd| async move { self.propose_forwarded(cmd, deadline).await }),
        )
        .await
        .into_iter()
        .map(|r| r.map_err(|e| e.to_string()).into())
        .collect()
    }

    /// Sends `cmd` to master `hint`: as a `forward` message on the peer
    /// stream when the master takes them, else in the next forward request
    /// (see [`ForwardBatch`]); waits for its answer.
    ///
    /// A write forwarded while no other is goes by request too: the master
    /// answers it as soon as it applies it, where on the stream the answer
    /// waits for this node to learn the commit and apply it itself, two
    /// more hand-overs between threads (write-1 p50 0.88 ms by request,
    /// 1.25 ms on the stream, in `compare.sh` runs on 2 cores). Writes that
    /// queue behind others take the stream, which costs less per write.
    ///
    /// While spans are exported, forwards go by request: its headers carry
    /// the trace context, so that a write through a follower is one trace
    /// across both nodes, which a message on the stream (many writes of many
    /// traces in one line) cannot be.
    async fn forward(
        &self,
        cmd: Command,
        hint: NodeId,
        deadline: Instant,
    ) -> Result<ProposeReply, String> {
        let others = self.inner.forwarding.fetch_add(1, Ordering::Relaxed);
        let _done = Forwarding(&self.inner.forwarding);
        let engine =
            others > 0 && !crate::telemetry::exporting_spans() && self.takes_stream_requests(hint);
        if engine {
            return self.forward_by_engine(cmd, hint, deadline).await;
        }
        let (tx, rx) = oneshot::channel();
        let start = match self.inner.forward_batch.lock() {
            Ok(mut b) => {
                b.waiting.push((cmd, tx));
                if b.in_flight < FORWARDS_IN_FLIGHT {
                    b.in_flight += 1;
                    true
                } else {
                    false
                }
            }
            Err(_) => return Err("forward queue poisoned".into()),
        };
        if start {
            let node = self.clone();
            tokio::spawn(async move { node.forward_rounds(hint).await }.in_current_span());
        }
        rx.await
            .unwrap_or_else(|_| Err("the forwarder stopped".into()))
    }

    /// [`Node::forward`] to `master`, given up when this node learns that
    /// another node is master: a master that stopped (paused, partitioned)
    /// without closing its connections never answers, and the write is
    /// sent to the new one instead, under the same request id, within the
    /// write's resend window. Should both copies be chosen, the state
    /// machine applies the second as a duplicate of the first (see
    /// [`crate::kv::dedup`]), as for any write sent again. Checked every
    /// [`MASTER_RECHECK`], not on every change this node publishes: a
    /// forward that is answered in time costs one timer.
    async fn forward_while_master(
        &self,
        cmd: Command,
        master: NodeId,
        deadline: Instant,
    ) -> Result<ProposeReply, String> {
        let forward = self.forward(cmd, master, deadline);
        tokio::pin!(forward);
        loop {
            match tokio::time::timeout(MASTER_RECHECK, &mut forward).await {
                Ok(answer) => return answer,
                Err(_) => {
                    let now = self.inner.published.borrow().status.master;
                    if now.is_some_and(|m| m != master) {
                        return Err(format!(
                            "no answer from the master it was sent to; {} is master now",
                            now.map(bootstrap::format_id).unwrap_or_default()
                        ));
                    }
                }
            }
        }
    }

    /// Answers followers' read-index requests here, at once, while this
    /// node is a master with a valid lease, as `POST /peer/v1/read_index`
    /// does: the index is taken after the request arrived, which is all a
    /// linearizable read needs. The rest go to the engine.
    fn answer_read_index_requests(&self, envs: &mut Vec<crate::paxos::Envelope>) {
        use crate::paxos::{Envelope, Message, ReadIndexAnswer};
        if !envs
            .iter()
            .any(|e| matches!(e.msg, Message::ReadIndexRequest { .. }))
        {
            return;
        }
        let Some(index) = self.lease_read_index() else {
            return;
        };
        envs.retain(|e| match e.msg {
            Message::ReadIndexRequest { seq } => {
                self.inner.outbox.send(Envelope {
                    from: self.inner.id,
                    to: e.from,
                    msg: Message::ReadIndexAnswer {
                        seq,
                        answer: ReadIndexAnswer::Index(index),
                    },
                });
                false
            }
            _ => true,
        });
    }

    /// Whether `master` said it takes forwarded writes and read-index
    /// requests on its stream (see [`wire::FEATURES_HEADER`]).
    fn takes_stream_requests(&self, master: NodeId) -> bool {
        self.inner
            .peer_features
            .lock()
            .is_ok_and(|peers| peers.get(&master).is_some_and(|f| f.forward))
    }

    /// Whether every other member of the configuration this node knows said
    /// it decodes [`crate::kv::Op::Anonymous`].
    ///
    /// A member not heard from since this node started counts as one that
    /// does not: its writes are then proposed unwrapped, as before the op
    /// existed (checked against this replica's rules only). A node of an
    /// earlier version added to the cluster after this check could meet
    /// such an op in the log it catches up on; adding members of an earlier
    /// version to an upgraded cluster is not supported.
    fn members_decode_anonymous(&self) -> bool {
        self.members_do(|f| f.anonymous)
    }

    /// Whether every other member of the configuration said it does
    /// `feature`, as its latest request to this node said.
    fn members_do(&self, feature: impl Fn(&wire::Features) -> bool) -> bool {
        let membership = self.inner.membership.borrow();
        members_do(
            &self.inner.peer_features,
            &membership,
            self.inner.id,
            feature,
        )
    }

    /// Sets `phxkv_anonymous_ops` from [`Node::members_decode_anonymous`].
    fn refresh_anonymous_gauge(&self) {
        let on = self.members_decode_anonymous();
        self.inner.metrics.set_anonymous_ops(on);
    }

    /// Records what peer `id` said it does, as its latest request to this
    /// node said; the gauge follows when that changes.
    fn note_features(&self, id: NodeId, features: wire::Features) {
        let changed = match self.inner.peer_features.lock() {
            Ok(mut peers) => peers.insert(id, features) != Some(features),
            Err(_) => false,
        };
        if changed {
            self.refresh_anonymous_gauge();
        }
    }

    /// Hands `cmd` to this node's engine to forward to `master` (see
    /// [`crate::paxos::Replica::forward`]); the answer comes when this node
    /// applies it, or "not master" once this node sees another master (then
    /// the caller sends it again, under the same id, to that one).
    ///
    /// One lost on the way (a broken stream, an overflowing queue) is sent
    /// again by the engine, under the same id, within limits that keep a
    /// copy from being proposed long after the first (see
    /// `Replica::resend_forwards`); one still unanswered at the deadline is
    /// answered "may still commit".
    async fn forward_by_engine(
        &self,
        cmd: Command,
        master: NodeId,
        deadline: Instant,
    ) -> Result<ProposeReply, String> {
        let (reply, rx) = oneshot::channel();
        self.submit(Input::Forward {
            to: master,
            cmd,
            reply,
        })
        .map_err(|e| e.to_string())?;
        match tokio::time::timeout_at(deadline.into(), rx).await {
            Ok(answer) => propose_reply(answer).ok_or_else(|| "the engine stopped".into()),
            Err(_) => Err("the master did not answer in time".into()),
        }
    }

    /// Sends the waiting forwards to the master until none are left.
    async fn forward_rounds(&self, hint: NodeId) {
        loop {
            let batch: Vec<_> = match self.inner.forward_batch.lock() {
                Ok(mut b) => {
                    if b.waiting.is_empty() {
                        b.in_flight -= 1;
                        return;
                    }
                    let n = b.waiting.len().min(MAX_FORWARD_BATCH);
                    b.waiting.drain(..n).collect()
                }
                Err(_) => return,
            };
            let master = self.inner.published.borrow().status.master.unwrap_or(hint);
            let (cmds, replies): (Vec<Command>, Vec<_>) = batch.into_iter().unzip();
            let deadline = Instant::now() + self.inner.cfg.write_timeout;
            let n = cmds.len();
            let answer = if master == self.inner.id {
                Err("this node became master".to_string())
            } else {
                self.call_peer::<_, Vec<wire::Forwarded>>(
                    master,
                    "/peer/v1/propose_batch",
                    &cmds,
                    deadline,
                )
                .await
                .and_then(|r| {
                    if r.len() == n {
                        Ok(r)
                    } else {
                        Err(format!("{} answers for {n} forwarded writes", r.len()))
                    }
                })
            };
            match answer {
                Ok(results) => {
                    for (tx, r) in replies.into_iter().zip(results) {
                        let _ = tx.send(r.into());
                    }
                }
                Err(e) => {
                    for tx in replies {
                        let _ = tx.send(Err(e.clone()));
                    }
                }
            }
        }
    }

    /// Proposes a membership change on this node only. A master asked to
    /// remove itself first hands mastership to another voter, so the cluster
    /// does not sit out a lease without a master after the removal; the
    /// caller then retries at the new master (the reply names it).
    pub async fn change_local(&self, change: ConfChange) -> Result<ChangeReply, ServiceError> {
        if let ConfChange::Remove { id } = &change
            && *id == self.inner.id
            && self.is_master()
        {
            self.hand_off(self.inner.cfg.write_timeout / 2).await;
        }
        let (reply, rx) = oneshot::channel();
        self.submit(Input::Change { change, reply })?;
        match rx.await {
            Ok(Ok(i)) => Ok(ChangeReply::Index(i)),
            Ok(Err(ProposeError::NotMaster { hint })) => Ok(ChangeReply::NotMaster { hint }),
            Ok(Err(e)) => Ok(ChangeReply::Rejected(e.to_string())),
            Err(_) => Err(ServiceError::Internal("the engine stopped".into())),
        }
    }

    /// Installs a snapshot received from a peer: its state machine, decoded
    /// from its file, which becomes this node's snapshot.
    pub async fn install_snapshot(
        &self,
        meta: crate::paxos::SnapshotMeta,
        store: Store,
        file: crate::storage::snapshot_file::Sealed,
    ) -> Result<(), ServiceError> {
        let (reply, rx) = oneshot::channel();
        self.submit(Input::InstallSnapshot {
            meta,
            store: Box::new(store),
            file,
            reply,
        })?;
        match rx.await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(ServiceError::Invalid(e)),
            Err(_) => Err(ServiceError::Internal("the engine stopped".into())),
        }
    }

    fn next_request_id(&self) -> RequestId {
        RequestId {
            // Never in the space of ids derived from idempotency keys.
            client: self.inner.client_id & !crate::kv::dedup::IDEMPOTENT_BIT,
            seq: self.inner.next_seq.fetch_add(1, Ordering::Relaxed),
        }
    }

    /// POSTs `body` to `path` on peer `to`'s peer API as JSON, and decodes
    /// the JSON answer.
    async fn call_peer<B: serde::Serialize, T: DeserializeOwned>(
        &self,
        to: NodeId,
        path: &'static str,
        body: &B,
        deadline: Instant,
    ) -> Result<T, String> {
        let outbox = &self.inner.outbox;
        let url = outbox
            .endpoint(to, path)
            .ok_or("the master's address is unknown")?;
        let timeout = deadline.saturating_duration_since(Instant::now());
        let mut headers = reqwest::header::HeaderMap::new();
        crate::telemetry::inject_context(&mut headers);
        let resp = self
            .inner
            .client
            .get()
            .post(url.clone())
            .header(reqwest::header::AUTHORIZATION, &self.inner.auth)
            .headers(headers)
            .timeout(timeout.max(Duration::from_millis(1)))
            .header(reqwest::header::CONTENT_TYPE, wire::JSON)
            .header(reqwest::header::ACCEPT, wire::JSON)
            .body(wire::encode(body)?)
            .send()
            .await
            .map_err(|e| format!("{url}: {e}"))?;
        if !resp.status().is_success() {
            return Err(format!("{url}: HTTP {}", resp.status()));
        }
        if !wire::is_json(resp.headers().get(reqwest::header::CONTENT_TYPE)) {
            return Err(format!("{url}: an answer that is not JSON"));
        }
        let bytes = resp.bytes().await.map_err(|e| format!("{url}: {e}"))?;
        wire::decode(&bytes).map_err(|e| format!("{url}: {e}"))
    }

    async fn wait_until(
        &self,
        deadline: Instant,
        what: &str,
        done: impl Fn(&Published) -> bool,
    ) -> Result<(), ServiceError> {
        let mut rx = self.inner.published.clone();
        loop {
            if done(&rx.borrow_and_update()) {
                return Ok(());
            }
            match tokio::time::timeout_at(deadline.into(), rx.changed()).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) => return Err(ServiceError::Internal("the engine stopped".into())),
                Err(_) => {
                    return Err(ServiceError::Unavailable {
                        message: format!("this replica did not {what} in time"),
                        retry_after_secs: 1,
                    });
                }
            }
        }
    }

    fn member_name(&self, id: NodeId) -> Option<String> {
        self.inner
            .membership
            .borrow()
            .members
            .get(&id)
            .map(|m| m.name.clone())
    }

    /// Why a request that needs the master cannot go on: no master known,
    /// or, on a node that is not a member (still bootstrapping, joining, or
    /// waiting to be replaced), why not; the cluster may well have one.
    fn no_master(&self) -> ServiceError {
        let message = match self.state() {
            (NodeStatus::Member, _) | (_, None) => {
                "no master is elected right now; retry shortly".to_string()
            }
            (_, Some(why)) => format!(
                "this node is not a member of the cluster and cannot serve: {why}; \
                 the other members can"
            ),
        };
        ServiceError::Unavailable {
            message,
            retry_after_secs: 1,
        }
    }

    /// Refuses a write that could take the store's size (its keys and
    /// values, and a fixed overhead per key: what it takes in memory) past
    /// the quota ([`NodeConfig::quota_bytes`]), as etcd refuses writes
    /// past its backend quota: the whole store lives in every replica's
    /// memory, so a store allowed to grow until a replica runs out of it
    /// would take all of them down together (they all apply the same
    /// writes) and keep them down, since each restart loads it again.
    ///
    /// It is admission, checked where the write arrives against what this
    /// replica has applied, not a rule of the state machine: a chosen op
    /// is applied the same way everywhere, whatever each node's quota or
    /// progress, so nodes configured differently can never disagree about
    /// an outcome. The price is that the store may pass the quota by what
    /// is in flight when it is reached (bounded by the proposal window and
    /// batch size), and by a lagging replica's lag. Deletes, lease and
    /// auth changes add nothing ([`Op::stored_bytes`]) and are always
    /// taken, so a full store can be emptied.
    fn check_quota(&self, op: &Op) -> Result<(), ServiceError> {
        let quota = self.inner.cfg.quota_bytes;
        let adds = op.stored_bytes() as u64;
        if quota == 0 || adds == 0 {
            return Ok(());
        }
        let held = self.inner.published.borrow().store_bytes;
        if held.saturating_add(adds) <= quota {
            return Ok(());
        }
        // Past the quota by what it writes: count what it replaces too, so
        // that a full store can still shrink a value or swap one key for a
        // smaller one. Only here, since it reads the store.
        let net = match self.inner.store.read() {
            Ok(store) => op.net_stored_bytes(&|key| store.held_bytes(key)),
            Err(_) => i64::try_from(adds).unwrap_or(i64::MAX),
        };
        let grows = u64::try_from(net).unwrap_or(0);
        if grows == 0 || held.saturating_add(grows) <= quota {
            return Ok(());
        }
        self.inner.metrics.inc_quota_refusals();
        Err(ServiceError::QuotaExceeded(format!(
            "the store takes {held} bytes (its keys and values, and {overhead} bytes per key), \
             and this write would add {grows} and pass the quota of {quota} bytes \
             (serve --quota-bytes); delete keys, write smaller values, or raise the quota \
             on every replica",
            overhead = crate::kv::store::KEY_OVERHEAD_BYTES
        )))
    }

    /// Refuses a write that adds `adds` bytes while the data directory's
    /// file system has less free than the reserve
    /// ([`NodeConfig::disk_reserve_bytes`]) plus the store's size plus the
    /// write. A replica that cannot write its log stops (an error on a
    /// durable write is never retried, since what reached the disk is then
    /// unknown), and restarts into the same full disk; every replica
    /// applies the same writes, so equal volumes fill together and the
    /// whole cluster would stop at once. The reserve leaves room for what
    /// a full replica still has to write: log segments (deletes, elections,
    /// lease and auth changes, which are always taken) and the next
    /// snapshot, which compaction writes before it removes the log it
    /// replaces, and which is never larger than the store's size as the
    /// quota counts it.
    ///
    /// Admission, like [`Node::check_quota`]: checked where the write
    /// arrives, against that replica's volume: its reading of it (taken
    /// every [`DISK_SAMPLE_INTERVAL`]) less the writes admitted since.
    fn check_disk(&self, adds: u64) -> Result<(), ServiceError> {
        let reserve = self.inner.cfg.disk_reserve_bytes;
        if reserve == 0 || adds == 0 {
            return Ok(());
        }
        let free = self
            .inner
            .disk_free
            .load(Ordering::Relaxed)
            .saturating_sub(self.inner.disk_admitted.load(Ordering::Relaxed));
        let held = self.inner.published.borrow().store_bytes;
        if free >= reserve.saturating_add(held).saturating_add(adds) {
            self.inner.disk_admitted.fetch_add(adds, Ordering::Relaxed);
            return Ok(());
        }
        self.inner.metrics.inc_disk_full_refusals();
        // The sampler compares the volume with the store alone: a write
        // refused just above that line turns it tight here, so that the
        // refusal is logged and the log compacted early.
        self.inner
            .disk_refused_adds
            .fetch_max(adds, Ordering::Relaxed);
        if !self.inner.disk_tight.swap(true, Ordering::Relaxed) {
            log_disk_tight(free, reserve, held);
        }
        Err(ServiceError::DiskFull(format!(
            "the file system of this replica's data directory has {free} bytes free, and a \
             replica keeps {reserve} (serve --disk-reserve-bytes) plus the store's size \
             ({held}) free for its log and its next snapshot; delete keys, or give every \
             replica's volume more space"
        )))
    }

    /// The read index straight from the lease, without asking the driver
    /// thread: `Some` only on a master whose lease is valid now.
    fn lease_read_index(&self) -> Option<Index> {
        self.inner.read_lease.read_index(self.inner.epoch.elapsed())
    }

    /// The master's read index, through one request shared with every read
    /// that is waiting for one (see [`ReadBatch`]).
    async fn remote_read_index(&self) -> ReadIndexReply {
        let (tx, rx) = oneshot::channel();
        let start = match self.inner.read_batch.lock() {
            Ok(mut b) => {
                b.waiting.push(tx);
                !std::mem::replace(&mut b.running, true)
            }
            Err(_) => return ReadIndexReply::NoLease,
        };
        if start {
            let node = self.clone();
            tokio::spawn(async move { node.read_index_rounds().await }.in_current_span());
        }
        rx.await.unwrap_or(ReadIndexReply::NoLease)
    }

    /// Asks the master for its read index for as long as reads wait for one.
    async fn read_index_rounds(&self) {
        loop {
            let waiting = match self.inner.read_batch.lock() {
                Ok(mut b) => {
                    if b.waiting.is_empty() {
                        b.running = false;
                        return;
                    }
                    std::mem::take(&mut b.waiting)
                }
                Err(_) => return,
            };
            let master = self.inner.published.borrow().status.master;
            let reply = match master {
                // On the peer stream, answered by the master's engine.
                Some(m) if m != self.inner.id && self.takes_stream_requests(m) => {
                    let wait = self.inner.cfg.read_timeout.min(READ_INDEX_ATTEMPT);
                    self.engine_read_index(Some(m), wait)
                        .await
                        .unwrap_or(ReadIndexReply::NoLease)
                }
                Some(m) if m != self.inner.id => {
                    let deadline = Instant::now() + self.inner.cfg.read_timeout;
                    match self
                        .call_peer::<_, ReadIndexReply>(m, "/peer/v1/read_index", &(), deadline)
                        .await
                    {
                        Ok(r) => r,
                        Err(e) => {
                            tracing::debug!(error = %e, "read index from master failed");
                            ReadIndexReply::NoLease
                        }
                    }
                }
                _ => ReadIndexReply::NotMaster { hint: master },
            };
            for w in waiting {
                let _ = w.send(reply.clone());
            }
        }
    }

    async fn read_index(&self, deadline: Instant) -> Result<Index, ServiceError> {
        loop {
            let known_master = {
                let p = self.inner.published.borrow();
                (!p.status.is_master).then_some(p.status.master).flatten()
            };
            let reply = match known_master {
                // A follower that knows the master asks it directly.
                Some(m) if m != self.inner.id => self.remote_read_index().await,
                _ => match self.read_index_local().await? {
                    ReadIndexReply::NotMaster { hint: Some(m) } if m != self.inner.id => {
                        self.remote_read_index().await
                    }
                    other => other,
                },
            };
            if let ReadIndexReply::Index(i) = reply {
                return Ok(i);
            }
            if Instant::now() >= deadline {
                return Err(self.no_master());
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }
}

impl Node {
    /// The cluster as this node alone sees it.
    /// Why the master this node knows of may no longer be the master, if
    /// it may not: this node is master but has not heard from a majority
    /// of the voters lately, or is a follower that has not heard from its
    /// master for three leases (cut off, or no longer a member). Neither
    /// node can serve what a client expects, and the master it names may
    /// have been replaced behind its back. For status only.
    fn master_in_doubt(&self, p: &Published) -> Option<String> {
        let voters: Vec<NodeId> = p.status.membership.voters().collect();
        let heard = voters
            .iter()
            .filter(|v| **v == self.inner.id || !p.silent.contains(v))
            .count();
        if p.status.is_master && heard * 2 <= voters.len() {
            Some(format!(
                "this node is master but has heard from {heard} of {} voters lately, not a \
                 majority",
                voters.len()
            ))
        } else if !p.status.is_master && p.master_silent {
            Some(format!(
                "no word from the master ({}) for over {:?}: this node is cut off, or no longer \
                 a member",
                p.status
                    .master
                    .and_then(|m| self.member_name(m))
                    .unwrap_or_else(|| "unknown".into()),
                self.inner.cfg.engine.lease * 3
            ))
        } else {
            None
        }
    }

    pub fn local_cluster(&self) -> ClusterInfo {
        let p = self.inner.published.borrow().clone();
        let membership = self.inner.membership.borrow().clone();
        let features = self
            .inner
            .peer_features
            .lock()
            .map(|f| f.clone())
            .unwrap_or_default();
        // A master this node has lost touch with is not named: the others
        // may have chosen another since (see `master_in_doubt`).
        let master = p
            .status
            .master
            .filter(|_| self.master_in_doubt(&p).is_none());
        let mut members: Vec<MemberInfo> = membership
            .members
            .iter()
            .map(|(id, m)| {
                let commit = if *id == self.inner.id {
                    Some(p.status.commit)
                } else {
                    p.peer_commit.get(id).copied()
                };
                MemberInfo {
                    name: m.name.clone(),
                    id: bootstrap::format_id(*id),
                    role: match m.role {
                        Role::Voter => MemberRole::Voter,
                        Role::Learner => MemberRole::Learner,
                    },
                    peer_url: m.addr.clone(),
                    is_master: master == Some(*id),
                    commit_index: commit,
                    healthy: *id == self.inner.id
                        || (commit.is_some_and(|c| c + 10_000 >= p.status.commit)
                            && !p.silent.contains(id)),
                    peer_features: if *id == self.inner.id {
                        Some(wire::Features::of_own().names())
                    } else {
                        features.get(id).map(|f| f.names())
                    },
                }
            })
            .collect();
        // By name, as a person reads them (the configuration orders them by
        // incarnation id, which is random).
        members.sort_by(|a, b| a.name.cmp(&b.name).then_with(|| a.id.cmp(&b.id)));
        let (node_state, node_state_reason) = self.state();
        let divergence = self
            .inner
            .digests
            .lock()
            .ok()
            .and_then(|d| d.divergence().cloned());
        ClusterInfo {
            divergence,
            cluster_id: self.inner.cfg.cluster_id.clone(),
            node: self.inner.cfg.name.clone(),
            node_id: bootstrap::format_id(self.inner.id),
            node_state,
            node_state_reason,
            master: master.and_then(|m| self.member_name(m)),
            lease_remaining_ms: p.status.lease_remaining.map(|d| d.as_millis() as u64),
            read_mode: self.inner.cfg.engine.read_mode,
            revision: p.revision,
            applied_index: p.applied,
            commit_index: p.status.commit,
            members,
        }
    }
}

impl Node {
    /// The master's view of the cluster (`info`) with this node's own state
    /// and progress in it, as `/v1/cluster` answers on this node.
    fn with_own_state(&self, mut info: ClusterInfo) -> ClusterInfo {
        let local = self.local_cluster();
        info.node = local.node;
        let removed = local.node_state == NodeStatus::Member
            && !info.members.iter().any(|m| m.id == local.node_id);
        info.node_id = local.node_id.clone();
        info.node_state = local.node_state;
        info.node_state_reason = if removed {
            // A removed member is sent nothing more, so its own
            // configuration still counts it in: the master's tells.
            Some(format!(
                "the master's configuration no longer includes this node (incarnation {}): it \
                 was removed from the cluster; stop it (to bring it back, start it with an \
                 empty data directory and add it again)",
                local.node_id
            ))
        } else {
            local.node_state_reason
        };
        info.divergence = local.divergence;
        info.revision = local.revision;
        info.applied_index = local.applied_index;
        info.commit_index = local.commit_index;
        info.lease_remaining_ms = None;
        info
    }
}

/// Whether `info`'s members show `change` made.
fn shows(info: &ClusterInfo, change: &ConfChange) -> bool {
    let member = |id: NodeId| {
        info.members
            .iter()
            .find(|m| bootstrap::parse_id(&m.id) == Ok(id))
    };
    match change {
        ConfChange::AddLearner { id, .. } => member(*id).is_some(),
        ConfChange::Promote { id } => {
            member(*id).is_some_and(|m| m.role == crate::api::service::MemberRole::Voter)
        }
        ConfChange::Remove { id } => member(*id).is_none(),
    }
}

/// A per-process id for this node's requests: the node name, the wall clock
/// and the process id keep two incarnations of one node from reusing ids.
fn request_id_seed(name: &str, epoch: Instant) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    name.hash(&mut h);
    epoch.hash(&mut h);
    std::time::SystemTime::now().hash(&mut h);
    std::process::id().hash(&mut h);
    h.finish()
}

/// Up to [`REPLAY_PAGE`] events of `store`'s history from `start` on under
/// `prefix`, and the revision the store was at when they were read (every
/// event up to it under `prefix` is in this page or an earlier one, unless
/// the page is full).
fn replay_page(
    store: &RwLock<Store>,
    start: u64,
    prefix: &[u8],
) -> Result<(Vec<crate::kv::Event>, u64), ServiceError> {
    let store = store
        .read()
        .map_err(|_| ServiceError::Internal("state machine lock poisoned".into()))?;
    let page = store
        .events_since(start, prefix, REPLAY_PAGE)
        .map_err(|e| match e {
            crate::kv::KvError::Compacted { requested, oldest } => {
                ServiceError::Compacted { requested, oldest }
            }
            other => ServiceError::Invalid(other.to_string()),
        })?;
    Ok((page, store.revision()))
}

fn propose_error(e: ChangeReply) -> ServiceError {
    match e {
        ChangeReply::Rejected(m) => ServiceError::Conflict(m),
        _ => ServiceError::Unavailable {
            message: "no master is elected right now; retry shortly".into(),
            retry_after_secs: 1,
        },
    }
}

/// Pieces of a backup queued for the client at most: with
/// Most leases one keep-alive or TTL request may name.
pub const MAX_LEASES_PER_QUESTION: usize = 1000;

/// [`BACKUP_KEYS_PER_PIECE`], what bounds a backup's memory.
const BACKUP_QUEUE: usize = 4;
/// Keys encoded per piece of a backup, under the state machine's lock.
const BACKUP_KEYS_PER_PIECE: usize = 256;

impl Service for Node {
    async fn write(
        &self,
        op: Op,
        idempotency_key: Option<String>,
    ) -> Result<OpResult, ServiceError> {
        self.admit(&op)?;
        self.check_quota(&op)?;
        self.check_disk(op.stored_bytes() as u64)?;
        let started = Instant::now();
        let deadline = started + self.inner.cfg.write_timeout;
        let resend_until = started + resend_window(self.inner.cfg.write_timeout);
        let id = match &idempotency_key {
            Some(key) => crate::kv::dedup::idempotent_id(key, &op),
            None => self.next_request_id(),
        };
        // Every copy of this write this node sends will carry a slot below
        // which all was chosen before it sent any (set in the loop), so
        // that one the request-id table may have forgotten is told apart
        // where it is applied (see `crate::kv::dedup`). A client's retry
        // under the same `Idempotency-Key` is another write to this node,
        // with its own.
        let op = if self.members_do(|f| f.once) {
            Op::Once {
                after: 0,
                op: Box::new(op),
            }
        } else {
            op
        };
        let mut cmd = Command { id, op };
        let mut proposed = false;
        loop {
            // Until a master took it, no copy is in any instance (a refusal
            // by this node's own engine means it never proposed it), so
            // `after` may still rise to what is chosen now: a write that
            // waited long for a master is not refused for what was applied
            // meanwhile.
            if !proposed && let Op::Once { after, .. } = &mut cmd.op {
                *after = (*after).max(self.inner.published.borrow().status.known_chosen);
            }
            // A write that reached a master is sent again only within its
            // resend window, one that did not until its deadline.
            if proposed && Instant::now() >= resend_until {
                return Err(ServiceError::Timeout(format!(
                    "the master this write was sent to did not answer, and it is not sent \
                     again after {} s",
                    (resend_until - started).as_secs_f64()
                )));
            }
            if Instant::now() >= deadline {
                return Err(self.no_master());
            }
            // A follower that knows the master forwards at once; otherwise
            // the engine says whether this node is master, or who is.
            let known_master = {
                let p = self.inner.published.borrow();
                (!p.status.is_master).then_some(p.status.master).flatten()
            };
            let local = match known_master {
                Some(m) if m != self.inner.id => ProposeReply::NotMaster { hint: Some(m) },
                _ => self.propose_local(cmd.clone(), deadline).await?,
            };
            let reply = match local {
                ProposeReply::NotMaster { hint: Some(m) } if m != self.inner.id => {
                    self.inner.metrics.inc_forwarded();
                    match self.forward_while_master(cmd.clone(), m, deadline).await {
                        Ok(r) => {
                            proposed = true;
                            r
                        }
                        Err(e) => {
                            // The master may have received it: keep the id,
                            // so a retry cannot apply it twice.
                            proposed = true;
                            tracing::debug!(error = %e, "forward to master failed");
                            ProposeReply::NotMaster { hint: None }
                        }
                    }
                }
                other => other,
            };
            match reply {
                ProposeReply::Applied(OpResult::Forgotten) => {
                    self.inner.metrics.inc_forgotten_copies();
                    return Err(ServiceError::Timeout(
                        "this write was sent to a master again after more writes than the \
                         cluster remembers request ids for, so it was not applied again: an \
                         earlier attempt may have committed"
                            .into(),
                    ));
                }
                ProposeReply::Applied(result) => return Ok(result),
                // An earlier attempt may have been taken: not "retry", which
                // a client would do under a new id, but "may still commit".
                ProposeReply::Busy(m) if proposed => {
                    return Err(ServiceError::Timeout(format!(
                        "{m}; an earlier attempt reached the master"
                    )));
                }
                ProposeReply::Busy(m) => {
                    return Err(ServiceError::Unavailable {
                        message: m,
                        retry_after_secs: 1,
                    });
                }
                ProposeReply::NotMaster { .. } => {}
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    async fn backup(&self) -> Result<crate::api::service::BackupStream, ServiceError> {
        // A linearizable read first: what follows is at or after its index.
        self.read(Consistency::Linearizable, |_| ()).await?;
        let poisoned = || ServiceError::Internal("state machine lock poisoned".into());
        let (start, revision) = {
            let mut store = self.inner.store.write().map_err(|_| poisoned())?;
            let revision = store.revision();
            (store.begin_snapshot(), revision)
        };
        let (tx, pieces) = tokio::sync::mpsc::channel(BACKUP_QUEUE);
        let store = self.inner.store.clone();
        let spawned = std::thread::Builder::new()
            .name("phxkv-backup".into())
            .spawn(move || {
                // The receiver gone means the client went away (or an upload
                // failed): the snapshot is abandoned, so the store stops
                // setting prior states aside for it.
                let snapshot_id = start.id;
                let give_up = || {
                    if let Ok(mut s) = store.write() {
                        s.abandon_snapshot(snapshot_id);
                    }
                };
                if tx.blocking_send(Ok(Some(start.head))).is_err() {
                    give_up();
                    return;
                }
                loop {
                    let mut piece = Vec::new();
                    // The lock is held for one piece: writes go on between.
                    let done = match store.write() {
                        Ok(mut s) => s.snapshot_chunk(start.id, BACKUP_KEYS_PER_PIECE, &mut piece),
                        Err(_) => {
                            let _ = tx.blocking_send(Err(ServiceError::Internal(
                                "state machine lock poisoned".into(),
                            )));
                            return;
                        }
                    };
                    let done = match done {
                        Ok(done) => done,
                        Err(e) => {
                            // Abandoned: an installed snapshot replaced the store, or more snapshots began.
                            let _ = tx.blocking_send(Err(ServiceError::Unavailable {
                                message: format!("{e}; retry"),
                                retry_after_secs: 1,
                            }));
                            return;
                        }
                    };
                    if tx.blocking_send(Ok(Some(piece))).is_err() {
                        give_up();
                        return;
                    }
                    if done {
                        let _ = tx.blocking_send(Ok(None));
                        return;
                    }
                }
            });
        if let Err(e) = spawned {
            return Err(ServiceError::Internal(format!(
                "cannot start the backup thread: {e}"
            )));
        }
        Ok(crate::api::service::BackupStream {
            cluster_id: self.inner.cfg.cluster_id.clone(),
            index: start.applied_index,
            revision,
            pieces,
        })
    }

    async fn archive_backup(&self) -> Result<crate::archive::Base, ServiceError> {
        archiving::backup(self).await
    }

    async fn archive_list(&self) -> Result<crate::api::service::BackupList, ServiceError> {
        archiving::list(self).await
    }

    async fn archive_delete(&self, name: String) -> Result<(), ServiceError> {
        archiving::delete(self, name).await
    }

    async fn read<R, F>(&self, consistency: Consistency, f: F) -> Result<R, ServiceError>
    where
        R: Send + 'static,
        F: FnOnce(&Store) -> R + Send + 'static,
    {
        self.refuse_if_diverged()?;
        let deadline = Instant::now() + self.inner.cfg.read_timeout;
        match consistency {
            Consistency::Linearizable => {
                let index = self.read_index(deadline).await?;
                // Usually applied already: then no need to wait for the
                // driver to publish its progress.
                {
                    let store = self.inner.store.read().map_err(|_| {
                        ServiceError::Internal("state machine lock poisoned".into())
                    })?;
                    if store.applied_index() >= index {
                        return Ok(f(&store));
                    }
                }
                self.wait_until(deadline, "catch up with the master", |p| p.applied >= index)
                    .await?;
            }
            Consistency::Local {
                min_revision: Some(min),
            } => {
                self.wait_until(deadline, &format!("reach revision {min}"), |p| {
                    p.revision >= min
                })
                .await?;
            }
            Consistency::Local { min_revision: None } => {}
        }
        let store = self
            .inner
            .store
            .read()
            .map_err(|_| ServiceError::Internal("state machine lock poisoned".into()))?;
        Ok(f(&store))
    }

    fn watch(
        &self,
        prefix: Vec<u8>,
        start_revision: u64,
    ) -> Result<mpsc::Receiver<Result<Event, ServiceError>>, ServiceError> {
        self.refuse_if_diverged()?;
        // Subscribe before reading history so nothing falls in between; the
        // driver broadcasts while holding the write lock, so every live event
        // at or below the revision a page of history was read at is also in
        // the history.
        let mut live = self.inner.events.subscribe();
        let store = self.inner.store.clone();
        // The first page is read here, so that a start older than the
        // history is answered with a status code rather than a stream.
        let (mut page, mut seen) = replay_page(&store, start_revision, &prefix)?;
        let (tx, rx) = mpsc::channel(WATCH_QUEUE);
        let mut closing = self.closing();
        tokio::spawn(async move {
            // The rest of the history, a page at a time, each read once the
            // previous one is sent: a watcher that reads slowly holds a page
            // and its queue, never the whole history.
            loop {
                let full = page.len() >= REPLAY_PAGE;
                let next = page.last().map(|e| e.revision + 1);
                for e in page {
                    if tx.send(Ok(e)).await.is_err() {
                        return;
                    }
                }
                let Some(next) = next.filter(|_| full) else {
                    break;
                };
                match replay_page(&store, next, &prefix) {
                    Ok((more, at)) => (page, seen) = (more, at),
                    Err(e) => {
                        // Compacted under a watcher that read too slowly.
                        let _ = tx.send(Err(e)).await;
                        return;
                    }
                }
            }
            loop {
                // A watcher that goes away is noticed even when nothing it
                // watches changes: its task and subscription end with it.
                let received = tokio::select! {
                    () = tx.closed() => return,
                    r = live.recv() => r,
                    // A replica shutting down applies nothing more: its
                    // watchers are told, and resume on another replica,
                    // rather than wait on a stream that stays silent.
                    true = async { closing.wait_for(|v| *v).await.is_ok() } => {
                        let _ = tx
                            .send(Err(ServiceError::Unavailable {
                                message: "this replica is shutting down; resume the watch on \
                                          another from the last revision received"
                                    .into(),
                                retry_after_secs: 0,
                            }))
                            .await;
                        return;
                    }
                };
                match received {
                    Ok(e) => {
                        if e.revision <= seen
                            || e.revision < start_revision
                            || !crate::auth::watch_delivers(&e.kv.key, &prefix)
                        {
                            continue;
                        }
                        if tx.send(Ok(e)).await.is_err() {
                            return;
                        }
                    }
                    Err(broadcast::error::RecvError::Lagged(_)) => {
                        // The watcher fell behind the live feed; it must
                        // resume from history with a new watch.
                        let _ = tx
                            .send(Err(ServiceError::Unavailable {
                                message: "the watcher fell behind; resume from the last revision received".into(),
                                retry_after_secs: 0,
                            }))
                            .await;
                        return;
                    }
                    Err(broadcast::error::RecvError::Closed) => return,
                }
            }
        });
        Ok(rx)
    }

    async fn cluster(&self) -> Result<ClusterInfo, ServiceError> {
        // Only the master knows how far every member got: ask it, and keep
        // this node's own view of its progress.
        let (is_master, master) = {
            let p = self.inner.published.borrow();
            (p.status.is_master, p.status.master)
        };
        if !is_master && let Some(m) = master {
            let deadline = Instant::now() + Duration::from_secs(1);
            if let Ok(info) = self
                .call_peer::<_, ClusterInfo>(m, "/peer/v1/cluster", &(), deadline)
                .await
            {
                return Ok(self.with_own_state(info));
            }
        }
        Ok(self.local_cluster())
    }

    async fn change_members(&self, change: MemberChange) -> Result<ClusterInfo, ServiceError> {
        // Names are resolved in the configuration the master reports (this
        // node's own may be behind, or empty while it joins).
        let view = self.cluster().await?;
        let by_name = |name: &str| -> Result<NodeId, ServiceError> {
            view.members
                .iter()
                .find(|m| m.name == name)
                .and_then(|m| bootstrap::parse_id(&m.id).ok())
                .ok_or_else(|| {
                    ServiceError::UnknownMember(format!(
                        "no member is named {}",
                        crate::text::quoted(name)
                    ))
                })
        };
        let change = match change {
            MemberChange::Add { name, peer_url } => {
                if name.is_empty() || peer_url.is_empty() {
                    return Err(ServiceError::Invalid(
                        "a new member needs a name and a peer_url".into(),
                    ));
                }
                let peer_url = peer_url.trim_end_matches('/').to_string();
                self.check_peer_scheme(&peer_url)?;
                let id = self.incarnation_at(&name, &peer_url).await?;
                if let Some(m) = view.members.iter().find(|m| m.name == name)
                    && bootstrap::parse_id(&m.id) != Ok(id)
                {
                    // Most likely its volume was lost and it came back as a
                    // new incarnation: adding cannot fix that, replacing can.
                    return Err(ServiceError::Conflict(format!(
                        "a member named {} already exists, as incarnation {}, and the node at \
                         {peer_url} runs incarnation {}: if its data directory was lost, \
                         replace it (phxkv members replace {name}, or POST \
                         /v1/cluster/members/{name}/replace)",
                        crate::text::quoted(&name),
                        m.id,
                        bootstrap::format_id(id)
                    )));
                }
                ConfChange::AddLearner {
                    id,
                    name,
                    addr: peer_url,
                }
            }
            MemberChange::Promote { name } => ConfChange::Promote {
                id: by_name(&name)?,
            },
            MemberChange::Remove { name } => ConfChange::Remove {
                id: by_name(&name)?,
            },
            MemberChange::RemoveIncarnation { name, id } => {
                let id = bootstrap::parse_id(&id).map_err(ServiceError::Invalid)?;
                if by_name(&name)? != id {
                    return Err(ServiceError::Conflict(format!(
                        "{name} is no longer incarnation {}; nothing removed",
                        bootstrap::format_id(id)
                    )));
                }
                ConfChange::Remove { id }
            }
        };
        let deadline = Instant::now() + self.inner.cfg.write_timeout;
        let index = loop {
            let reply = match self.change_local(change.clone()).await? {
                ChangeReply::NotMaster { hint: Some(m) } if m != self.inner.id => self
                    .call_peer::<_, ChangeReply>(m, "/peer/v1/change", &change, deadline)
                    .await
                    .unwrap_or(ChangeReply::NotMaster { hint: None }),
                other => other,
            };
            match reply {
                ChangeReply::Index(i) => break i,
                ChangeReply::Rejected(m)
                    if m.contains("in progress") && Instant::now() < deadline =>
                {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                r @ ChangeReply::Rejected(_) => return Err(propose_error(r)),
                r @ ChangeReply::NotMaster { .. } => {
                    if Instant::now() >= deadline {
                        return Err(propose_error(r));
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        };
        // A node the change removes may never learn that it was chosen:
        // the master tells only members of the new configuration. It goes
        // by the master's view below instead of waiting for its own.
        let removes_me = matches!(change, ConfChange::Remove { id } if id == self.inner.id);
        if !removes_me || self.inner.published.borrow().status.is_master {
            self.wait_until(deadline, "apply the membership change", |p| {
                p.applied >= index || p.status.commit >= index
            })
            .await?;
        }
        // Answer with a view that shows the change: the master's, or this
        // node's own when the master cannot be asked, and either may not
        // have applied the change yet when this node learns it was chosen.
        // One that has not by the deadline is answered as it is.
        let mut info = self.cluster().await?;
        while !shows(&info, &change) && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
            info = self.cluster().await?;
        }
        Ok(info)
    }

    async fn replace_member(
        &self,
        name: String,
        peer_url: Option<String>,
        learner: bool,
    ) -> Result<ReplaceReport, ServiceError> {
        self.replace_step(name, peer_url, learner).await
    }

    async fn transfer_master(&self, name: String) -> Result<ClusterInfo, ServiceError> {
        self.switch_over(&name).await
    }

    async fn leases(
        &self,
        ids: Vec<u64>,
        renew: bool,
    ) -> Result<Vec<wire::LeaseAnswer>, ServiceError> {
        let q = wire::LeaseQuestion { ids, renew };
        let deadline = Instant::now() + self.inner.cfg.read_timeout;
        // Ask the master this node knows of; then whoever it names.
        let mut target = {
            let p = self.inner.published.borrow();
            (!p.status.is_master).then_some(p.status.master).flatten()
        };
        loop {
            let reply = match target {
                Some(m) if m != self.inner.id => self
                    .call_peer::<_, wire::LeaseReply>(m, "/peer/v1/lease", &q, deadline)
                    .await
                    .unwrap_or_else(|e| {
                        tracing::debug!(error = %e, "lease question to the master failed");
                        wire::LeaseReply::NotMaster { hint: None }
                    }),
                _ => self.lease_local(q.clone()).await?,
            };
            match reply {
                wire::LeaseReply::Leases(answers) => return Ok(answers),
                wire::LeaseReply::NotMaster { hint } => {
                    target = hint.or_else(|| self.inner.published.borrow().status.master);
                }
            }
            if Instant::now() >= deadline {
                return Err(self.no_master());
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    fn health(&self) -> Health {
        let (state, why) = self.state();
        if state != NodeStatus::Member {
            return Health {
                ready: false,
                reason: why.or_else(|| Some("not a member of the cluster (yet)".into())),
            };
        }
        if let Err(e) = self.refuse_if_diverged() {
            return Health {
                ready: false,
                reason: Some(e.to_string()),
            };
        }
        let p = self.inner.published.borrow();
        let (ready, reason) = if p.status.master.is_none() {
            (false, Some("no master is known".to_string()))
        } else if let Some(why) = self.master_in_doubt(&p) {
            (false, Some(why))
        } else if p.applied < p.status.commit {
            (
                false,
                Some(format!(
                    "catching up: applied {} of {}",
                    p.applied, p.status.commit
                )),
            )
        } else {
            (true, None)
        };
        Health { ready, reason }
    }

    fn limits(&self) -> Limits {
        self.inner.cfg.limits
    }

    fn cluster_token(&self) -> String {
        self.inner.cfg.token.clone()
    }

    fn auth_gate(&self) -> Option<crate::auth::gate::Gate> {
        Some(self.inner.gate.clone())
    }

    fn auth_required(&self) -> bool {
        self.inner.cfg.auth || self.inner.published.borrow().auth_enabled
    }

    fn anonymous_ops(&self) -> bool {
        self.members_decode_anonymous()
    }

    fn prefix_deletes(&self) -> bool {
        // As for anonymous ops (see `members_decode_anonymous`): a member
        // not heard from since this node started counts as one that does
        // not, and the API answers 503 until it is.
        self.members_do(|f| f.delete_prefix)
    }

    fn lease_owners(&self) -> bool {
        // As for prefix deletes; until then a token's grant records no
        // owner, as an earlier version's does.
        self.members_do(|f| f.lease_owner)
    }

    fn metrics_text(&self) -> String {
        // Only watches subscribe to the feed of applied changes.
        self.inner
            .metrics
            .set_watches(self.inner.events.receiver_count());
        self.inner.metrics.render()
    }
}
