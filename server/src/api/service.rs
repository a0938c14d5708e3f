//! The seam between the HTTP layer and the replica: everything a handler may
//! ask of the node, as a trait. The node runtime implements it for real; the
//! API tests implement it over a plain in-memory store. Handlers map
//! [`ServiceError`] to HTTP once, in the error module.

use std::future::Future;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::kv::{Event, Limits, Op, OpResult, Store};

/// How fresh a read must be.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Consistency {
    /// Reflects every write acknowledged before the read began (default).
    Linearizable,
    /// Served from this replica at once; if `min_revision` is set, waits
    /// (briefly) until the replica has applied at least that revision.
    Local { min_revision: Option<u64> },
}

/// A membership change, as the operator asks for it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MemberChange {
    /// Join as a learner: receives the log, does not vote.
    Add { name: String, peer_url: String },
    /// Make a caught-up learner a voter.
    Promote { name: String },
    /// Remove a member (voter or learner).
    Remove { name: String },
    /// Remove `name` only if the configuration holds it as incarnation `id`
    /// (16 hex digits): a replacement that raced another must not remove
    /// the new incarnation.
    RemoveIncarnation { name: String, id: String },
}

/// A member's role in quorums.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum MemberRole {
    Voter,
    Learner,
}

/// One member as this node sees it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct MemberInfo {
    pub name: String,
    /// The member's incarnation: an id its data directory drew when it was
    /// created (16 hex digits). A node back with an empty volume has a new
    /// one and must be replaced before it counts.
    #[schema(example = "3f9a0c4e12b7d5a8")]
    #[serde(default)]
    pub id: String,
    pub role: MemberRole,
    pub peer_url: String,
    pub is_master: bool,
    /// The member's commit index as last reported to the master (the
    /// node's own for itself); `null` when unknown here.
    pub commit_index: Option<u64>,
    /// Up and caught up, as far as the answering node can tell: on the
    /// master, heard from within two leases and no more than 10,000
    /// entries behind; elsewhere, only the node itself is known healthy.
    pub healthy: bool,
    /// What the member does beyond the base peer protocol, as its latest
    /// request to the master said (the `phxkv-peer-features` header; see
    /// the peer API document): `forward`, `anonymous` and so on. During a rolling
    /// upgrade this shows which members run a version that has them.
    /// `null` for a member not heard from since the master started.
    #[serde(default)]
    #[schema(example = json!(["forward", "anonymous", "delete_prefix", "lease_owner", "lease_fence", "once", "timeline"]))]
    pub peer_features: Option<Vec<String>>,
}

/// Where the answering node stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum NodeStatus {
    /// Its data directory is new: it is finding out from the bootstrap
    /// members whether to create the cluster, join its creation or wait.
    Bootstrapping,
    /// Waiting to be added as a member (started with `--join`, or added and
    /// not caught up with its first configuration yet).
    Joining,
    /// Its data directory is new but the cluster exists and counts another
    /// incarnation under this node's name: the volume was lost or replaced.
    /// It votes nowhere until replaced (`POST
    /// /v1/cluster/members/{name}/replace`).
    AwaitingReplacement,
    /// A member of the cluster.
    Member,
}

fn member_status() -> NodeStatus {
    NodeStatus::Member
}

/// The cluster as seen from the node that answers.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ClusterInfo {
    pub cluster_id: String,
    /// The answering node's name.
    pub node: String,
    /// The answering node's incarnation (16 hex digits).
    #[serde(default)]
    pub node_id: String,
    /// Missing from nodes older than incarnations, which are members.
    #[serde(default = "member_status")]
    pub node_state: NodeStatus,
    /// Why the node is not (yet) a member, or no longer one (removed while
    /// it ran), for people.
    #[serde(default)]
    pub node_state_reason: Option<String>,
    /// Set when the answering replica's state differs from what a majority
    /// of the voters hold at the same log index (compared by digest): it
    /// serves no reads and must be replaced.
    #[serde(default)]
    pub divergence: Option<crate::node::digest::Divergence>,
    /// Current master, if known.
    pub master: Option<String>,
    /// Milliseconds left on the master lease, when this node is master
    /// (never in quorum read mode, where no lease is relied on).
    pub lease_remaining_ms: Option<u64>,
    /// How linearizable reads are confirmed (`--read-mode`, the same on
    /// every replica).
    #[serde(default)]
    pub read_mode: crate::paxos::ReadMode,
    /// The KV revision this node has applied.
    pub revision: u64,
    pub applied_index: u64,
    pub commit_index: u64,
    /// The members of the configuration this node holds, sorted by name.
    pub members: Vec<MemberInfo>,
}

/// Where a replacement stands after one call.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ReplaceState {
    /// The new incarnation is a learner receiving the log; call again to
    /// promote it once it has caught up.
    CatchingUp,
    /// The member is the node's current incarnation with its old role.
    Done,
}

/// The outcome of one call of a member replacement.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ReplaceReport {
    pub member: String,
    /// The incarnation that was removed by this call, if any.
    pub removed: Option<String>,
    /// The incarnation the node at the member's peer URL runs now.
    pub incarnation: String,
    pub state: ReplaceState,
    /// What was done and what is left, for people.
    pub message: String,
}

/// Liveness and readiness, for `/healthz` and `/readyz`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Health {
    /// The node is a member of a cluster that has a master, and has caught up.
    pub ready: bool,
    /// Why not ready, for humans.
    pub reason: Option<String>,
}

/// What can go wrong serving a request; each maps to one HTTP status.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ServiceError {
    /// Malformed or invalid input (400).
    #[error("{0}")]
    Invalid(String),
    /// Over a configured limit (413).
    #[error("{0}")]
    TooLarge(String),
    /// Watch start revision no longer in history (410).
    #[error("revision {requested} has been compacted; the oldest available is {oldest}")]
    Compacted { requested: u64, oldest: u64 },
    /// Missing or wrong cluster token (401).
    #[error("{0}")]
    Unauthorized(String),
    /// No master or no quorum right now; retry after the hint (503).
    #[error("{message}")]
    Unavailable {
        message: String,
        retry_after_secs: u64,
    },
    /// The write was proposed but its outcome is unknown at the deadline; it
    /// may still commit (504).
    #[error("{0}")]
    Timeout(String),
    /// The membership change conflicts with the current configuration (409).
    #[error("{0}")]
    Conflict(String),
    /// A bug or an I/O failure on this node (500).
    #[error("{0}")]
    Internal(String),
    /// This replica's state diverged from the cluster's; it serves no reads
    /// (503, `replica_diverged`).
    #[error("{0}")]
    Diverged(String),
    /// No member has the name given (404, `member_not_found`).
    #[error("{0}")]
    UnknownMember(String),
    /// The member is a learner, and the request needs a voter (409,
    /// `member_not_voter`).
    #[error("{0}")]
    NotVoter(String),
    /// The member cannot take over now: the master has not heard from it
    /// recently, or it is behind (409, `member_not_ready`).
    #[error("{0}")]
    NotReady(String),
    /// Mastership was handed over but the new master was not seen in
    /// charge by the deadline; it may still take over (504, `timeout`).
    #[error("{0}")]
    HandoffTimeout(String),
    /// The node has no archive configured (412, `no_archive`).
    #[error("{0}")]
    NoArchive(String),
    /// The archive has no base of that name (404, `backup_not_found`).
    #[error("{0}")]
    UnknownBackup(String),
    /// The write could take the store past its quota (507,
    /// `quota_exceeded`); nothing changed.
    #[error("{0}")]
    QuotaExceeded(String),
    /// The replica's data volume is nearly full (507, `disk_full`);
    /// nothing changed.
    #[error("{0}")]
    DiskFull(String),
}

/// The backups in a node's archive (`GET /v1/admin/backups`).
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct BackupList {
    /// Where the archive is.
    pub archive_url: String,
    /// Base snapshots, oldest first.
    pub backups: Vec<crate::archive::Base>,
    /// The first and last points a restore can reach; none without a base.
    /// Points between them may fall in a gap: see `recoverable_ranges`.
    pub recoverable: Option<crate::archive::Recoverable>,
    /// Every stretch a restore can reach, oldest first: one when the
    /// archive has no gap. A point after one stretch's end and before the
    /// next one's start cannot be restored.
    #[serde(default)]
    pub recoverable_ranges: Vec<crate::archive::Recoverable>,
    /// The archive's end as this node knows it, while it is the master that
    /// ships the log; absent on other nodes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub archived_index: Option<u64>,
    /// Applied entries not archived yet (on the master; absent elsewhere).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub archive_lag: Option<u64>,
    /// The archiver's last error, if its last round failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub archive_error: Option<String>,
}

fn no_archive() -> ServiceError {
    ServiceError::NoArchive(
        "this node has no archive; start it with --archive-url s3://bucket/prefix".into(),
    )
}

/// A snapshot of the state machine on its way out, for a backup.
#[derive(Debug)]
pub struct BackupStream {
    /// The cluster it is of.
    pub cluster_id: String,
    /// The log index it reflects.
    pub index: u64,
    /// The store revision at that index.
    pub revision: u64,
    /// The store image (the snapshot encoding), piece by piece, then
    /// `Ok(None)` once it is complete: a channel that closes without it
    /// was cut short.
    pub pieces: tokio::sync::mpsc::Receiver<Result<Option<Vec<u8>>, ServiceError>>,
}

/// Everything the public API needs from a node.
pub trait Service: Clone + Send + Sync + 'static {
    /// Proposes a mutating op and waits until it is applied (chosen and
    /// durable on a majority). Forwards to the master when needed. With an
    /// idempotency key, a retry of the same op (at any node) is applied at
    /// most once and answered with the first outcome.
    fn write(
        &self,
        op: Op,
        idempotency_key: Option<String>,
    ) -> impl Future<Output = Result<OpResult, ServiceError>> + Send;

    /// Runs `f` against the state machine once the consistency level is met.
    /// The closure must be quick: it holds the state machine's read lock.
    fn read<R, F>(
        &self,
        consistency: Consistency,
        f: F,
    ) -> impl Future<Output = Result<R, ServiceError>> + Send
    where
        R: Send + 'static,
        F: FnOnce(&Store) -> R + Send + 'static;

    /// Changes below `start_revision` are replayed from history, then new ones
    /// follow as they are applied, in revision order. The receiver ends when
    /// the node shuts down or the watcher falls too far behind (an error item).
    fn watch(
        &self,
        prefix: Vec<u8>,
        start_revision: u64,
    ) -> Result<tokio::sync::mpsc::Receiver<Result<Event, ServiceError>>, ServiceError>;

    fn cluster(&self) -> impl Future<Output = Result<ClusterInfo, ServiceError>> + Send;

    /// Applies one membership change through the master and waits until it
    /// is committed.
    fn change_members(
        &self,
        change: MemberChange,
    ) -> impl Future<Output = Result<ClusterInfo, ServiceError>> + Send;

    /// Replaces the member `name` by the incarnation that now runs at its
    /// peer URL (or at `peer_url`): removes the old one, adds the new one as
    /// a learner, and promotes it once caught up (unless `learner`). Waits
    /// for the catch-up up to the write timeout; call again until the
    /// report says done.
    fn replace_member(
        &self,
        name: String,
        peer_url: Option<String>,
        learner: bool,
    ) -> impl Future<Output = Result<ReplaceReport, ServiceError>> + Send;

    /// Moves mastership to the voter `name` (a switchover): the master
    /// hands it over the way it does on a clean shutdown, and the call
    /// returns once `name` says it is master, with the cluster as it sees
    /// it. Asking for the current master changes nothing. Bounded by the
    /// write timeout.
    fn transfer_master(
        &self,
        name: String,
    ) -> impl Future<Output = Result<ClusterInfo, ServiceError>> + Send;

    /// Begins a consistent snapshot of the state machine for a backup: at
    /// an applied index at or after a linearizable read barrier, so it
    /// holds every write acknowledged before the call. The image arrives in
    /// pieces through a bounded channel while writes go on; an error item
    /// ends it early.
    fn backup(&self) -> impl Future<Output = Result<BackupStream, ServiceError>> + Send;

    /// Takes a consistent base snapshot (as [`Service::backup`]) and uploads
    /// it to the archive.
    fn archive_backup(
        &self,
    ) -> impl Future<Output = Result<crate::archive::Base, ServiceError>> + Send {
        async { Err(no_archive()) }
    }

    /// Lists the archive.
    fn archive_list(&self) -> impl Future<Output = Result<BackupList, ServiceError>> + Send {
        async { Err(no_archive()) }
    }

    /// Deletes a base from the archive, and the log segments no remaining
    /// base needs.
    fn archive_delete(
        &self,
        name: String,
    ) -> impl Future<Output = Result<(), ServiceError>> + Send {
        let _ = name;
        async { Err(no_archive()) }
    }

    /// Keep-alives (`renew`) or TTL questions for leases, answered by the
    /// master (forwarded there when needed): one answer per id, in order.
    /// Waits for a master up to the read timeout.
    fn leases(
        &self,
        ids: Vec<u64>,
        renew: bool,
    ) -> impl Future<Output = Result<Vec<crate::node::wire::LeaseAnswer>, ServiceError>> + Send;

    fn health(&self) -> Health;

    fn limits(&self) -> Limits;

    /// The cluster token membership changes must present as a bearer token.
    fn cluster_token(&self) -> String;

    /// Client authentication on this node's client port; `None` when it
    /// can never be on.
    fn auth_gate(&self) -> Option<crate::auth::gate::Gate> {
        None
    }

    /// Whether writes by callers without a credential may be proposed as
    /// [`crate::kv::Op::Anonymous`], checked against the auth rules where
    /// they are applied: every member of the configuration decodes it.
    fn anonymous_ops(&self) -> bool {
        false
    }

    /// Whether [`crate::kv::Op::DeletePrefix`] may be proposed: every
    /// member of the configuration decodes it.
    fn prefix_deletes(&self) -> bool {
        false
    }

    /// Whether a token's grant may be proposed as
    /// [`crate::kv::LeaseOp::GrantOwned`], recording the token as the
    /// lease's holder: every member of the configuration decodes it.
    fn lease_owners(&self) -> bool {
        false
    }

    /// Whether this node requires a credential now: it runs with `--auth`,
    /// or it has applied an [`AuthChange::Enable`](crate::auth::AuthChange)
    /// (auth on for the whole cluster).
    fn auth_required(&self) -> bool {
        self.auth_gate().is_some()
    }

    /// Prometheus text exposition of the node's metrics.
    fn metrics_text(&self) -> String;
}
