//! `phxkv-sim`: runs seeded deterministic simulations of phxkv clusters and
//! reports `N passed, M failed`. A failing seed prints its trace and replays
//! exactly with `--start SEED --seeds 1`.

use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use clap::Parser;

use phxkv::paxos::ReadMode;
use phxkv::sim::{SeedOutcome, run_seed, run_with, untrusted_clocks};

/// Deterministic simulation of phxkv: faults, crashes, partitions, clock drift
/// and membership changes, checked for safety and linearizability.
#[derive(Parser, Debug)]
#[command(name = "phxkv-sim", version)]
struct Args {
    /// How many seeds to run.
    #[arg(long, default_value_t = 100)]
    seeds: u64,
    /// The first seed; seeds run from START to START+SEEDS-1. Defaults to a
    /// value derived from the current time, printed so a run can be repeated.
    #[arg(long)]
    start: Option<u64>,
    /// Worker threads (default: available cores).
    #[arg(long)]
    jobs: Option<usize>,
    /// Print one line per seed.
    #[arg(long)]
    verbose: bool,
    /// Measure engine throughput instead: a fault-free 3-node cluster with
    /// batching, for this many commands.
    #[arg(long, value_name = "COMMANDS")]
    throughput: Option<u64>,
    /// Run every seed in quorum read mode with clocks that cannot be
    /// trusted: rates 50% off while the engine is told they are perfect,
    /// and processes paused for up to 1.5 s. Reads must stay linearizable.
    #[arg(long)]
    untrusted_clocks: bool,
}

fn main() -> ExitCode {
    let args = Args::parse();
    if let Some(n) = args.throughput {
        let r = phxkv::sim::bench::throughput(n);
        println!("{r}");
        return ExitCode::SUCCESS;
    }
    let start = args.start.unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs() % 1_000_000 * 1000)
            .unwrap_or(0)
    });
    let jobs = args
        .jobs
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
        .max(1);
    println!(
        "phxkv-sim: seeds {start}..{} on {jobs} threads",
        start + args.seeds
    );
    let began = Instant::now();
    let next = Arc::new(AtomicU64::new(start));
    let failures: Arc<Mutex<Vec<SeedOutcome>>> = Arc::new(Mutex::new(Vec::new()));
    let passed = Arc::new(AtomicU64::new(0));
    let refusals = Arc::new(AtomicU64::new(0));
    let renewals = Arc::new(AtomicU64::new(0));
    let expiries = Arc::new(AtomicU64::new(0));
    let fenced_off = Arc::new(AtomicU64::new(0));
    let unfenced = Arc::new(AtomicU64::new(0));
    let intrusions = Arc::new(AtomicU64::new(0));
    let forwarded = Arc::new(AtomicU64::new(0));
    let forward_refusals = Arc::new(AtomicU64::new(0));
    let sent_again = Arc::new(AtomicU64::new(0));
    let forgotten = Arc::new(AtomicU64::new(0));
    let timeouts = Arc::new(AtomicU64::new(0));
    let follower_reads = Arc::new(AtomicU64::new(0));
    let end = start + args.seeds;
    let workers: Vec<_> = (0..jobs)
        .map(|_| {
            let (next, failures, passed) = (next.clone(), failures.clone(), passed.clone());
            let refusals = refusals.clone();
            let (renewals, expiries) = (renewals.clone(), expiries.clone());
            let (fenced_off, unfenced) = (fenced_off.clone(), unfenced.clone());
            let (forwarded, follower_reads) = (forwarded.clone(), follower_reads.clone());
            let (forward_refusals, intrusions) = (forward_refusals.clone(), intrusions.clone());
            let (sent_again, timeouts) = (sent_again.clone(), timeouts.clone());
            let forgotten = forgotten.clone();
            let verbose = args.verbose;
            let untrusted = args.untrusted_clocks;
            std::thread::spawn(move || {
                loop {
                    let seed = next.fetch_add(1, Ordering::SeqCst);
                    if seed >= end {
                        break;
                    }
                    let out = if untrusted {
                        run_with(seed, untrusted_clocks(seed, ReadMode::Quorum))
                    } else {
                        run_seed(seed)
                    };
                    if verbose {
                        println!(
                            "seed {seed}: {} nodes, {} reads, {} ops, {} acked writes, {} instances (largest batch {}), {} pauses: {}",
                            out.nodes,
                            out.read_mode.name(),
                            out.operations,
                            out.acknowledged_writes,
                            out.chosen_instances,
                            out.largest_batch,
                            out.pauses,
                            out.failure.as_deref().unwrap_or("ok")
                        );
                    }
                    refusals.fetch_add(out.auth_refusals as u64, Ordering::SeqCst);
                    renewals.fetch_add(out.lease_renewals as u64, Ordering::SeqCst);
                    expiries.fetch_add(out.lease_expiries as u64, Ordering::SeqCst);
                    fenced_off.fetch_add(out.lease_fenced_off as u64, Ordering::SeqCst);
                    unfenced.fetch_add(out.lease_unfenced as u64, Ordering::SeqCst);
                    intrusions.fetch_add(out.lease_intrusions_refused as u64, Ordering::SeqCst);
                    forwarded.fetch_add(out.forwarded_acks as u64, Ordering::SeqCst);
                    forward_refusals.fetch_add(out.forward_refusals as u64, Ordering::SeqCst);
                    sent_again.fetch_add(out.forwards_sent_again as u64, Ordering::SeqCst);
                    forgotten.fetch_add(out.forgotten_copies as u64, Ordering::SeqCst);
                    timeouts.fetch_add(out.client_timeouts as u64, Ordering::SeqCst);
                    follower_reads.fetch_add(out.follower_reads as u64, Ordering::SeqCst);
                    if out.failure.is_some() {
                        if let Ok(mut f) = failures.lock() {
                            f.push(out);
                        }
                    } else {
                        passed.fetch_add(1, Ordering::SeqCst);
                    }
                }
            })
        })
        .collect();
    for w in workers {
        let _ = w.join();
    }
    let failures = failures
        .lock()
        .map(|mut f| std::mem::take(&mut *f))
        .unwrap_or_default();
    let mut failures = failures;
    failures.sort_by_key(|f| f.seed);
    for f in &failures {
        println!(
            "FAILED seed {} ({} nodes): {}",
            f.seed,
            f.nodes,
            f.failure.as_deref().unwrap_or("")
        );
        for line in f.trace.iter().rev().take(25).rev() {
            println!("    {line}");
        }
        println!("    replay: phxkv-sim --start {} --seeds 1", f.seed);
    }
    println!(
        "elapsed {:.1}s; {} writes refused alike on every replica by the auth rules (a revoked token, or no credential after auth enable); \
         {} lease keep-alives, {} leases expired, none before its TTL \
         ({} of them decided without fences before an upgrade, whose TTL is not promised), \
         {} expiries fenced off by a later master; \
         {} uses of a lease by a token that does not hold it refused alike on every replica; \
         {} writes answered by the follower that forwarded them ({} sent back as not master, \
         {} forwards sent again unanswered), {} copies of a write refused because the \
         request-id table may have forgotten the first, {} client attempts timed out, \
         {} reads served by a follower at the master's read index",
        began.elapsed().as_secs_f64(),
        refusals.load(Ordering::SeqCst),
        renewals.load(Ordering::SeqCst),
        expiries.load(Ordering::SeqCst),
        unfenced.load(Ordering::SeqCst),
        fenced_off.load(Ordering::SeqCst),
        intrusions.load(Ordering::SeqCst),
        forwarded.load(Ordering::SeqCst),
        forward_refusals.load(Ordering::SeqCst),
        sent_again.load(Ordering::SeqCst),
        forgotten.load(Ordering::SeqCst),
        timeouts.load(Ordering::SeqCst),
        follower_reads.load(Ordering::SeqCst)
    );
    let failed = failures.len() as u64;
    println!(
        "{} passed, {} failed",
        passed.load(Ordering::SeqCst),
        failed
    );
    if failed > 0 {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}
