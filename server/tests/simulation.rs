//! The deterministic simulator as part of the normal test run: hundreds of
//! seeded runs with faults, plus runs aimed at specific hazards, and a run
//! with a broken clock assumption that must be caught.
//!
//! It runs without libtest's harness so that the starting seed is printed on
//! every run, passing or not.

use phxkv::paxos::ReadMode;
use phxkv::sim::{SeedOutcome, options_for, run_seed, run_with, untrusted_clocks};

fn report(failures: &[SeedOutcome]) -> String {
    failures
        .iter()
        .map(|f| {
            format!(
                "seed {}: {}\n    {}\n    replay: cargo run --release -p phxkv-server --bin phxkv-sim -- --start {} --seeds 1",
                f.seed,
                f.failure.as_deref().unwrap_or(""),
                f.trace.join("\n    "),
                f.seed
            )
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// A start seed that differs from run to run (override with
/// `PHXKV_SIM_START`), so the suite keeps exploring new schedules.
fn start_seed() -> u64 {
    std::env::var("PHXKV_SIM_START")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64 % 1_000_000_000)
                .unwrap_or(0)
        })
}

fn two_hundred_seeded_simulations_keep_every_invariant() {
    let start = start_seed();
    let seeds = 240;
    println!(
        "simulating seeds {start}..{} (replay one with PHXKV_SIM_START)",
        start + seeds
    );
    let outcomes: Vec<SeedOutcome> = (start..start + seeds).map(run_seed).collect();
    let acked: usize = outcomes.iter().map(|o| o.acknowledged_writes).sum();
    // Turns that take several inputs happened: clients' commands shared
    // instances, as they do under load on a real node.
    let shared = outcomes.iter().filter(|o| o.largest_batch > 1).count();
    let intrusions: usize = outcomes.iter().map(|o| o.lease_intrusions_refused).sum();
    let failures: Vec<SeedOutcome> = outcomes
        .into_iter()
        .filter(|o| o.failure.is_some())
        .collect();
    assert!(
        failures.is_empty(),
        "{} of {seeds} seeds failed:\n{}",
        failures.len(),
        report(&failures)
    );
    // The runs did real work: clients got writes acknowledged.
    assert!(
        acked > seeds as usize * 5,
        "only {acked} writes acknowledged in {seeds} runs"
    );
    assert!(
        shared >= 10,
        "only {shared} of {seeds} runs chose an instance holding several commands"
    );
    // A token tried leases held by another token, and every replica
    // refused it (a use that was applied fails the seed).
    assert!(
        intrusions > 0,
        "no use of a lease by a token that does not hold it in {seeds} runs"
    );
}

fn crashes_between_persist_and_send_lose_no_acknowledged_write() {
    let mut hits = 0;
    let mut failures = Vec::new();
    for seed in 0..60 {
        let mut opts = options_for(seed);
        opts.faults = true;
        opts.crash_points_only = true;
        let out = run_with(seed, opts);
        hits += out.crash_points;
        if out.failure.is_some() {
            failures.push(out);
        }
    }
    assert!(failures.is_empty(), "{}", report(&failures));
    assert!(hits >= 20, "crash points were hit only {hits} times");
}

fn membership_changes_under_faults_keep_every_invariant() {
    let mut failures = Vec::new();
    for seed in 1000..1060 {
        let mut opts = options_for(seed);
        opts.membership_changes = true;
        let out = run_with(seed, opts);
        if out.failure.is_some() {
            failures.push(out);
        }
    }
    assert!(failures.is_empty(), "{}", report(&failures));
}

fn lost_disks_are_replaced_without_losing_a_write() {
    // Nodes come back with nothing, as new incarnations that vote nowhere
    // until the administrator has replaced the old ones.
    let (mut losses, mut replaced) = (0, 0);
    let mut failures = Vec::new();
    for seed in 2000..2080 {
        let mut opts = options_for(seed);
        opts.nodes = if seed % 2 == 0 { 3 } else { 5 };
        opts.faults = true;
        opts.membership_changes = true;
        opts.disk_loss = true;
        let out = run_with(seed, opts);
        losses += out.disk_losses;
        replaced += out.replacements;
        if out.failure.is_some() {
            failures.push(out);
        }
    }
    assert!(failures.is_empty(), "{}", report(&failures));
    println!("  {losses} disks lost, {replaced} nodes replaced");
    assert!(losses >= 80, "only {losses} disks were lost");
    assert!(replaced >= 40, "only {replaced} replacements completed");
}

fn lost_files_on_real_directories_are_refused() {
    // Disks lost as above, on real data directories: before each goes,
    // some of its files go first (the whole log, one segment or the
    // snapshot) and opening what is left must be refused, wherever in its
    // life (rotations, compactions, crashes) the directory was.
    let (mut refused, mut losses) = (0, 0);
    let mut failures = Vec::new();
    for seed in 2100..2124 {
        let dir = tempfile::tempdir().expect("temporary directory");
        let mut opts = options_for(seed);
        opts.nodes = 3;
        opts.faults = true;
        opts.membership_changes = true;
        opts.disk_loss = true;
        opts.active = 4_000_000;
        opts.disk_root = Some(dir.path().to_path_buf());
        let out = run_with(seed, opts);
        refused += out.lost_files_refused;
        losses += out.disk_losses;
        if out.failure.is_some() {
            failures.push(out);
        }
    }
    assert!(failures.is_empty(), "{}", report(&failures));
    println!("  {refused} of {losses} lost disks lost some files first and were refused");
    assert!(refused >= 15, "only {refused} directories lost some files");
}

fn a_node_back_from_a_lost_disk_under_its_old_identity_loses_writes() {
    // What phxkv did before incarnations: a node whose disk is gone starts
    // again under its old name with the bootstrap configuration and votes
    // at once, having forgotten its promises. The checks must catch the
    // writes this loses, or the test above would prove nothing.
    let mut caught = 0;
    for seed in 0..300 {
        let mut opts = options_for(seed);
        opts.nodes = 3;
        opts.faults = true;
        opts.membership_changes = true;
        opts.spares = 0;
        opts.disk_loss = true;
        opts.disk_loss_keeps_identity = true;
        if run_with(seed, opts).failure.is_some() {
            caught += 1;
        }
    }
    println!("  {caught} of 300 runs with amnesiac voters were caught");
    assert!(
        caught >= 5,
        "only {caught} anomalies caught in 300 runs where amnesiac nodes vote"
    );
}

fn single_voters_with_learners_keep_every_invariant() {
    // One voter: its own acceptance is the whole quorum, so nothing may
    // reach the learners before its records are durable, crash or not.
    let mut hits = 0;
    let mut failures = Vec::new();
    for seed in 3000..3060 {
        let mut opts = options_for(seed);
        opts.nodes = 1;
        opts.membership_changes = true;
        opts.spares = 2;
        opts.keep_learners = true;
        opts.faults = true;
        opts.crash_points_only = seed % 2 == 0;
        let out = run_with(seed, opts);
        hits += out.crash_points;
        if out.failure.is_some() {
            failures.push(out);
        }
    }
    assert!(failures.is_empty(), "{}", report(&failures));
    assert!(hits >= 10, "crash points were hit only {hits} times");
}

fn consecutive_voter_changes_within_one_lease_keep_every_invariant() {
    // Add, promote and remove faster than a lease (400ms here), proposed
    // at whichever node believes it is master, stale ones included.
    let mut failures = Vec::new();
    for seed in 4000..4060 {
        let mut opts = options_for(seed);
        opts.membership_changes = true;
        opts.spares = 2;
        opts.keep_learners = false;
        opts.admin_interval = 5_000 + (seed % 4) * 5_000;
        let out = run_with(seed, opts);
        if out.failure.is_some() {
            failures.push(out);
        }
    }
    assert!(failures.is_empty(), "{}", report(&failures));
}

fn leases_overlap_when_clocks_drift_beyond_the_configured_bound() {
    // The engine assumes perfect clocks while real ones drift by 10%: the
    // simulator's lease check must notice two masters holding leases at once.
    // This proves that check can fail.
    let mut caught = 0;
    for seed in 0..200 {
        let mut opts = options_for(seed);
        opts.faults = true;
        opts.engine_drift_ppm = 0;
        opts.clock_drift_ppm = 100_000;
        let out = run_with(seed, opts);
        if out
            .failure
            .as_deref()
            .is_some_and(|f| f.contains("overlapping valid leases"))
        {
            caught += 1;
        }
    }
    assert!(
        caught > 0,
        "no overlap detected in 200 runs with broken clock assumptions"
    );
}

fn quorum_reads_stay_linearizable_when_clocks_drift_and_processes_pause() {
    let start = start_seed();
    let seeds = 120;
    println!(
        "quorum read mode, untrusted clocks: seeds {start}..{}",
        start + seeds
    );
    let (mut pauses, mut reads) = (0, 0);
    let mut failures = Vec::new();
    for seed in start..start + seeds {
        let out = run_with(seed, untrusted_clocks(seed, ReadMode::Quorum));
        pauses += out.pauses;
        reads += out.reads_answered;
        if out.failure.is_some() {
            failures.push(out);
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {seeds} seeds failed:\n{}",
        failures.len(),
        report(&failures)
    );
    assert!(
        pauses >= seeds as usize,
        "only {pauses} pauses in {seeds} runs"
    );
    assert!(reads >= seeds as usize * 5, "only {reads} reads answered");
}

fn lease_reads_are_caught_going_stale_under_the_same_clocks() {
    // The same conditions break lease mode's assumptions: the checks must
    // catch it (overlapping leases or a read that missed a write), which
    // proves the run above could fail.
    let mut caught = 0;
    for seed in 0..120 {
        let out = run_with(seed, untrusted_clocks(seed, ReadMode::Lease));
        if out.failure.as_deref().is_some_and(|f| {
            f.contains("overlapping valid leases") || f.contains("not linearizable")
        }) {
            caught += 1;
        }
    }
    assert!(
        caught > 0,
        "lease mode survived 120 runs with untrusted clocks"
    );
}

fn clusters_on_real_databases_survive_crashes() {
    // The same scenarios with every node's records in a data directory with
    // fsync; a crash closes the store and the restart reopens it from disk.
    let mut failures = Vec::new();
    for seed in 7..10 {
        let dir = tempfile::tempdir().expect("temporary directory");
        let mut opts = options_for(seed);
        opts.faults = true;
        opts.active = 3_000_000;
        opts.disk_root = Some(dir.path().to_path_buf());
        let out = run_with(seed, opts);
        assert!(
            dir.path().join("n1").join("wal").is_dir(),
            "the nodes kept their records on disk"
        );
        assert!(
            out.acknowledged_writes > 0,
            "seed {seed} acknowledged nothing"
        );
        if out.failure.is_some() {
            failures.push(out);
        }
    }
    assert!(failures.is_empty(), "{}", report(&failures));
}
fn rolling_upgrades_to_lease_fences_keep_every_invariant() {
    // Every node restarts in turn while the lease actor's lease runs out;
    // masters decide expiries without fences until the last is back, and
    // with them after. Both kinds must take effect in these runs, and
    // nothing decided before the upgrade may take effect past the start
    // of a fenced mastership.
    let (mut unfenced, mut fenced) = (0, 0);
    let mut failures = Vec::new();
    for seed in 5000..5120 {
        let mut opts = options_for(seed);
        opts.fences_from = opts.active * (1 + seed % 3) / 5;
        let out = run_with(seed, opts);
        unfenced += out.lease_unfenced;
        fenced += out.lease_expiries - out.lease_unfenced;
        if out.failure.is_some() {
            failures.push(out);
        }
    }
    assert!(failures.is_empty(), "{}", report(&failures));
    println!("  {unfenced} expiries decided before an upgrade, {fenced} after");
    assert!(
        unfenced >= 10,
        "only {unfenced} expiries decided before an upgrade"
    );
    assert!(
        fenced >= 10,
        "only {fenced} expiries decided after an upgrade"
    );
}

fn main() {
    let tests: [(&str, fn()); 13] = [
        (
            "quorum_reads_stay_linearizable_when_clocks_drift_and_processes_pause",
            quorum_reads_stay_linearizable_when_clocks_drift_and_processes_pause,
        ),
        (
            "lease_reads_are_caught_going_stale_under_the_same_clocks",
            lease_reads_are_caught_going_stale_under_the_same_clocks,
        ),
        (
            "clusters_on_real_databases_survive_crashes",
            clusters_on_real_databases_survive_crashes,
        ),
        (
            "two_hundred_seeded_simulations_keep_every_invariant",
            two_hundred_seeded_simulations_keep_every_invariant,
        ),
        (
            "crashes_between_persist_and_send_lose_no_acknowledged_write",
            crashes_between_persist_and_send_lose_no_acknowledged_write,
        ),
        (
            "membership_changes_under_faults_keep_every_invariant",
            membership_changes_under_faults_keep_every_invariant,
        ),
        (
            "lost_disks_are_replaced_without_losing_a_write",
            lost_disks_are_replaced_without_losing_a_write,
        ),
        (
            "lost_files_on_real_directories_are_refused",
            lost_files_on_real_directories_are_refused,
        ),
        (
            "a_node_back_from_a_lost_disk_under_its_old_identity_loses_writes",
            a_node_back_from_a_lost_disk_under_its_old_identity_loses_writes,
        ),
        (
            "single_voters_with_learners_keep_every_invariant",
            single_voters_with_learners_keep_every_invariant,
        ),
        (
            "consecutive_voter_changes_within_one_lease_keep_every_invariant",
            consecutive_voter_changes_within_one_lease_keep_every_invariant,
        ),
        (
            "leases_overlap_when_clocks_drift_beyond_the_configured_bound",
            leases_overlap_when_clocks_drift_beyond_the_configured_bound,
        ),
        (
            "rolling_upgrades_to_lease_fences_keep_every_invariant",
            rolling_upgrades_to_lease_fences_keep_every_invariant,
        ),
    ];
    let filter: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    let (mut passed, mut failed) = (0, 0);
    for (name, test) in tests {
        if !filter.is_empty() && !filter.iter().any(|f| name.contains(f.as_str())) {
            continue;
        }
        match std::panic::catch_unwind(test) {
            Ok(()) => {
                println!("test {name} ... ok");
                passed += 1;
            }
            Err(_) => {
                println!("test {name} ... FAILED");
                failed += 1;
            }
        }
    }
    println!("{passed} passed, {failed} failed");
    if failed > 0 {
        std::process::exit(1);
    }
}
