//! Deterministic simulation of a phxkv cluster, and the checkers it runs.
//!
//! [`run_seed`] builds a [`world::World`] from a seed: 1, 3 or 5 voters of the
//! real engine and the real KV state machine (a single voter always with
//! learners beside it), over a simulated network with loss, duplication,
//! reordering, delays and partitions (including a lone old master), crashes
//! that keep only what was persisted (also exactly between persisting and
//! sending, and between sending and the next record), disks lost outright (a
//! node back with nothing, as a new incarnation that must be replaced),
//! clocks that drift within the configured bound, clients, and membership
//! changes proposed at any node that believes it is master (stale ones too),
//! often several voter changes within one lease.
//! After every event it checks that no instance chose two values, that applied
//! logs are prefixes of one another, and that no two nodes hold valid leases
//! at once; at the end, after healing every fault, that every acknowledged
//! write is applied on every live replica and that the clients' history is
//! linearizable. An auth actor meanwhile creates and revokes a token and
//! its role and writes as that token: every replica must refuse exactly the
//! writes the log says were made without the rights (see `world::AuthModel`).
//! A lease actor holds and renews leases that masters expire; a quarter of
//! the runs start as a cluster mid-upgrade, whose masters decide expiries
//! without lease fences until every member has them (see `crate::kv::lease`).
//! The same seed replays the same run.

pub mod bench;
pub mod lincheck;
pub mod world;

use std::panic::{AssertUnwindSafe, catch_unwind};

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

use crate::paxos::ReadMode;
use lincheck::CheckResult;
use world::{World, WorldOptions};

/// Search states the linearizability checker may explore per key. Long runs
/// with many operations of unknown outcome on one key need more than the
/// checker's default; the cost is paid only by those rare histories.
const LINCHECK_BUDGET: usize = 5_000_000;

/// The outcome of one seed.
#[derive(Debug)]
pub struct SeedOutcome {
    pub seed: u64,
    pub nodes: usize,
    /// `None` when every check passed.
    pub failure: Option<String>,
    /// The last events before the failure (or the end).
    pub trace: Vec<String>,
    pub operations: usize,
    pub acknowledged_writes: usize,
    pub chosen_instances: usize,
    /// The most client commands chosen in one instance.
    pub largest_batch: usize,
    pub read_mode: ReadMode,
    pub pauses: usize,
    pub reads_answered: usize,
    pub crash_points: usize,
    pub disk_losses: usize,
    /// Directories that lost some files but kept their identity, refused.
    pub lost_files_refused: usize,
    /// Writes by a revoked token (or one whose role was deleted) refused.
    pub auth_refusals: usize,
    /// Lease keep-alives acknowledged, and leases that expired.
    pub lease_renewals: usize,
    pub lease_expiries: usize,
    /// Expiries that changed nothing: a later master's fence came first.
    pub lease_fenced_off: usize,
    /// Expiries decided without a fence, before an upgrade, that took
    /// effect.
    pub lease_unfenced: usize,
    /// Attempts by a token on a lease held by another token, refused.
    pub lease_intrusions_refused: usize,
    pub replacements: usize,
    /// Writes answered by a follower that had forwarded them.
    pub forwarded_acks: usize,
    /// Forwarded writes sent back by a node that was not, or stopped being,
    /// master.
    pub forward_refusals: usize,
    /// Forwarded writes a follower sent to the master again, unanswered.
    pub forwards_sent_again: usize,
    /// Client writes refused as possibly forgotten copies.
    pub forgotten_copies: usize,
    /// Client attempts that had no answer within the client's timeout.
    pub client_timeouts: usize,
    /// Reads a follower served at the master's read index.
    pub follower_reads: usize,
}

/// Options derived from a seed: cluster size, faults, membership changes.
pub fn options_for(seed: u64) -> WorldOptions {
    let mut rng = SmallRng::seed_from_u64(seed ^ 0x9e37_79b9_7f4a_7c15);
    let nodes = [1, 3, 3, 3, 5, 5, 5][rng.random_range(0..7)];
    let faults = !rng.random_bool(0.1);
    // A single voter is only interesting with learners beside it.
    let membership_changes = nodes == 1 || rng.random_bool(0.4);
    let spares = if nodes == 1 {
        rng.random_range(1..3)
    } else {
        rng.random_range(0..3)
    };
    let quorum = rng.random_bool(0.35);
    let mut opts = WorldOptions {
        nodes,
        clients: rng.random_range(2..8),
        keys: rng.random_range(2..6),
        active: rng.random_range(5..20) * 1_000_000,
        settle: 3_000_000,
        faults,
        membership_changes,
        spares,
        keep_learners: nodes == 1 && rng.random_bool(0.5),
        // Often several steps within one lease (400ms in the simulator).
        admin_interval: if rng.random_bool(0.5) {
            200_000
        } else {
            rng.random_range(5_000..40_000)
        },
        disk_loss: faults && nodes >= 3 && membership_changes && rng.random_bool(0.5),
        disk_loss_keeps_identity: false,
        compact_after: [20, 100, 1000][rng.random_range(0..3)],
        // In quorum read mode nothing may depend on clocks: their rates
        // stray far beyond what the engine is told, and processes pause.
        clock_drift_ppm: if quorum { 300_000 } else { 10_000 },
        engine_drift_ppm: 10_000,
        crash_points_only: false,
        disk_root: None,
        read_mode: if quorum {
            ReadMode::Quorum
        } else {
            ReadMode::Lease
        },
        pauses: quorum && faults,
        fences_from: 0,
        dedup_capacity: crate::kv::DEFAULT_DEDUP_CAPACITY,
    };
    // Drawn last, so that every other option of a seed stays what it was
    // before upgrades were simulated. A quarter of the runs upgrade: the
    // members decode lease fences only from a time within the active
    // phase (see `WorldOptions::fences_from`).
    if rng.random_bool(0.25) {
        opts.fences_from = rng.random_range(0..opts.active);
    }
    // Drawn after that, for the same reason. A quarter of the runs give
    // the request-id table room for a few dozen ids only, so that copies of
    // a write sent again arrive after the first was forgotten.
    if rng.random_bool(0.25) {
        opts.dedup_capacity = rng.random_range(4..40);
    }
    opts
}

/// Options for a run in which clocks cannot be trusted: their rates stray
/// by 50% while the engine is told they are perfect, and processes pause
/// for up to several leases. Quorum mode must stay linearizable in it;
/// lease mode is expected to be caught failing.
pub fn untrusted_clocks(seed: u64, mode: ReadMode) -> WorldOptions {
    let mut opts = options_for(seed);
    opts.faults = true;
    opts.pauses = true;
    opts.engine_drift_ppm = 0;
    opts.clock_drift_ppm = 500_000;
    opts.read_mode = mode;
    opts
}

/// Runs one seed with the options [`options_for`] draws, checking everything.
pub fn run_seed(seed: u64) -> SeedOutcome {
    run_with(seed, options_for(seed))
}

/// Runs one seed with explicit options.
pub fn run_with(seed: u64, opts: WorldOptions) -> SeedOutcome {
    let nodes = opts.nodes;
    let read_mode = opts.read_mode;
    let result = catch_unwind(AssertUnwindSafe(|| World::new(seed, opts).run()));
    let report = match result {
        Ok(r) => r,
        Err(panic) => {
            let msg = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_else(|| "panic".into());
            return SeedOutcome {
                seed,
                nodes,
                failure: Some(format!("panicked: {msg}")),
                trace: Vec::new(),
                operations: 0,
                acknowledged_writes: 0,
                chosen_instances: 0,
                largest_batch: 0,
                read_mode,
                pauses: 0,
                reads_answered: 0,
                crash_points: 0,
                disk_losses: 0,
                lost_files_refused: 0,
                auth_refusals: 0,
                lease_renewals: 0,
                lease_expiries: 0,
                lease_fenced_off: 0,
                lease_unfenced: 0,
                lease_intrusions_refused: 0,
                replacements: 0,
                forwarded_acks: 0,
                forward_refusals: 0,
                forwards_sent_again: 0,
                forgotten_copies: 0,
                client_timeouts: 0,
                follower_reads: 0,
            };
        }
    };
    let mut failure = report.failure;
    if failure.is_none() {
        match lincheck::check_with_budget(&report.history, LINCHECK_BUDGET) {
            CheckResult::Linearizable => {}
            CheckResult::NotLinearizable { key, explanation } => {
                failure = Some(format!(
                    "history not linearizable on key {:?}: {explanation}",
                    String::from_utf8_lossy(&key)
                ));
            }
            CheckResult::Unknown { key } => {
                failure = Some(format!(
                    "linearizability check gave up on key {:?} (search budget)",
                    String::from_utf8_lossy(&key)
                ));
            }
        }
    }
    SeedOutcome {
        seed,
        nodes,
        failure,
        trace: report.trace,
        operations: report.history.len(),
        acknowledged_writes: report.acknowledged_writes,
        chosen_instances: report.chosen_instances,
        largest_batch: report.largest_batch,
        read_mode,
        pauses: report.pauses,
        reads_answered: report.reads_answered,
        crash_points: report.crash_points,
        disk_losses: report.disk_losses,
        lost_files_refused: report.lost_files_refused,
        auth_refusals: report.auth_refusals,
        lease_renewals: report.lease_renewals,
        lease_expiries: report.lease_expiries,
        lease_fenced_off: report.lease_fenced_off,
        lease_unfenced: report.lease_unfenced,
        lease_intrusions_refused: report.lease_intrusions_refused,
        replacements: report.replacements,
        forwarded_acks: report.forwarded_acks,
        forward_refusals: report.forward_refusals,
        forwards_sent_again: report.forwards_sent_again,
        forgotten_copies: report.forgotten_copies,
        client_timeouts: report.client_timeouts,
        follower_reads: report.follower_reads,
    }
}
