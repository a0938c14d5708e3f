//! Tunables of the engine, with defaults that suit a cluster on one LAN.

use std::time::Duration;

use super::types::NodeId;

/// How a master makes sure no other master exists before it answers a
/// linearizable read. Every replica of a cluster must use the same mode.
#[derive(
    Clone,
    Copy,
    Debug,
    Default,
    PartialEq,
    Eq,
    serde::Serialize,
    serde::Deserialize,
    utoipa::ToSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum ReadMode {
    /// From a master lease: no round trip, but safe only while clock rates
    /// differ by less than `max_drift_ppm` and a process is not paused
    /// between checking its lease and answering (see [`super::lease`]).
    #[default]
    Lease,
    /// From a round trip to a majority that starts after the read arrived
    /// (see [`super::quorum_read`]). Nothing depends on clocks; acceptors
    /// honour no master lease, so a new master is elected without waiting
    /// one out.
    Quorum,
}

impl ReadMode {
    pub fn name(self) -> &'static str {
        match self {
            ReadMode::Lease => "lease",
            ReadMode::Quorum => "quorum",
        }
    }

    /// Parses a mode's [`name`](ReadMode::name).
    pub fn parse(s: &str) -> Option<ReadMode> {
        match s {
            "lease" => Some(ReadMode::Lease),
            "quorum" => Some(ReadMode::Quorum),
            _ => None,
        }
    }
}

/// Engine settings. Every replica of a cluster must use the same `lease` and
/// `max_drift_ppm`: the lease safety argument depends on them.
#[derive(Clone, Debug)]
pub struct EngineConfig {
    pub id: NodeId,
    /// Lease length, as timed by acceptors.
    pub lease: Duration,
    /// Bound on the relative clock-rate difference between any two nodes, in
    /// parts per million. The master shortens its own view of the lease by it.
    pub max_drift_ppm: u32,
    /// How often the master sends heartbeats with its commit index.
    pub heartbeat: Duration,
    /// A follower that hears nothing from a master for a random time in
    /// `[election_timeout, 2 * election_timeout)` (and holds no lease for
    /// another node) runs for master.
    pub election_timeout: Duration,
    /// Unanswered prepares, accepts and catch-up requests are resent after this.
    pub retry: Duration,
    /// A forwarded command not yet applied here nor refused is forwarded
    /// again, under the same request id, this long after it was last sent:
    /// a forward lost on the way (a peer stream that broke, a queue that
    /// overflowed) is not retransmitted by anything else.
    pub forward_retry: Duration,
    /// Forwards are sent again only this long after they were first sent:
    /// the caller's deadline. Beyond it the caller has given up, and a late
    /// copy could reach the log after the request-id table (see
    /// [`crate::kv::dedup`]) forgot an earlier one.
    pub forward_for: Duration,
    /// Upper bound of one batch in bytes (a single larger command still goes alone).
    pub max_batch_bytes: usize,
    /// Upper bound of commands in one batch.
    pub max_batch_commands: usize,
    /// Instances a master keeps in flight beyond its commit index.
    pub window: u64,
    /// Commands waiting for a slot; beyond this proposals are refused as busy.
    pub max_queue: usize,
    /// Chosen values sent in one catch-up reply.
    pub catchup_batch: usize,
    /// A candidate more than this many chosen instances behind an acceptor is
    /// told to catch up before it can be elected.
    pub max_promise_lag: u64,
    /// Seed for the engine's own randomness (election jitter).
    pub seed: u64,
    /// How linearizable reads are confirmed.
    pub read_mode: ReadMode,
}

impl EngineConfig {
    pub fn new(id: NodeId) -> Self {
        EngineConfig {
            id,
            lease: Duration::from_secs(5),
            max_drift_ppm: 10_000,
            heartbeat: Duration::from_millis(500),
            election_timeout: Duration::from_millis(1000),
            retry: Duration::from_millis(300),
            forward_retry: Duration::from_secs(1),
            forward_for: Duration::from_secs(5),
            max_batch_bytes: 1 << 20,
            max_batch_commands: 4096,
            window: 4,
            max_queue: 65_536,
            catchup_batch: 1024,
            max_promise_lag: 4096,
            seed: id,
            read_mode: ReadMode::Lease,
        }
    }

    /// How long the master may rely on a lease it started proposing at time
    /// `t`: the acceptors' lease shrunk by the worst clock drift in both
    /// directions, so the master's view always ends first in real time.
    pub fn master_lease(&self) -> Duration {
        let rho = f64::from(self.max_drift_ppm) / 1e6;
        let factor = (1.0 - rho) / (1.0 + rho);
        self.lease.mul_f64(factor.max(0.0))
    }
}
