//! `phxkv-faults`: fault injection against real `phxkv serve` processes,
//! with every history checked for linearizability.
//!
//! Each run starts a cluster on loopback (every node's peer traffic through
//! a proxy the harness controls), lets concurrent clients read, write,
//! compare-and-swap and delete a few keys on random nodes, and meanwhile
//! injects faults one after another (see [`nemesis`]). Then it heals
//! everything, finishes any replacement still pending, reads every key on
//! every node, and checks the whole history with the project's
//! linearizability checker. A failing run keeps its directory (node logs and
//! the history of the offending key) and says where.
//!
//! CI runs a short form (`e2e/tests/faults.rs`); the long form is
//! `cargo run --release -p phxkv-e2e --bin phxkv-faults -- --runs 30`.

mod cluster;
mod nemesis;
mod proxy;
mod workload;

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use clap::Parser;

use phxkv::sim::lincheck::{CheckResult, KvCall, Operation, check_with_budget};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

use cluster::Cluster;
use nemesis::Fault;

/// Fault injection against real phxkv processes: kill -9, SIGSTOP,
/// partitions, lost volumes, membership changes and volumes put back from
/// an older copy, under concurrent clients; every history is checked for
/// linearizability.
#[derive(Parser, Debug)]
#[command(name = "phxkv-faults", version)]
struct Args {
    /// How many runs (each a fresh cluster).
    #[arg(long, default_value_t = 5)]
    runs: u64,
    /// How long clients and faults run in each run (like 20s or 1m).
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    duration: Duration,
    /// Nodes per cluster (3 or 5).
    #[arg(long, default_value_t = 3)]
    nodes: usize,
    /// Concurrent clients.
    #[arg(long, default_value_t = 5)]
    clients: usize,
    /// Keys the clients share (few keys, many conflicts).
    #[arg(long, default_value_t = 6)]
    keys: usize,
    /// The faults to inject, comma-separated (default: all of them).
    #[arg(long, value_enum, value_delimiter = ',')]
    faults: Vec<Fault>,
    /// Seed of the first run (runs use seed, seed+1, ...); default: from
    /// the clock, printed.
    #[arg(long)]
    seed: Option<u64>,
    /// The nodes' `--read-mode`: `lease` or `quorum` (then SIGSTOP pauses
    /// test reads that trust no clock).
    #[arg(long, default_value = "lease", value_parser = ["lease", "quorum"])]
    read_mode: String,
    /// TLS on both ports of every node: mutual TLS between peers (partitions
    /// then cut the `CONNECT` tunnels peers reach one another through) and
    /// https for the clients, as a `PaxosKV` in Kubernetes runs by default.
    #[arg(long)]
    tls: bool,
    /// The phxkv binary; default: `phxkv` next to this program.
    #[arg(long, env = "PHXKV_BIN")]
    bin: Option<PathBuf>,
    /// Keep every run's directory under this one (failed runs are always
    /// kept, under the system's temporary directory otherwise).
    #[arg(long)]
    keep: Option<PathBuf>,
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    let (num, unit) = s
        .find(|c: char| !c.is_ascii_digit())
        .map_or((s, "s"), |i| (&s[..i], &s[i..]));
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a duration like 20s or 1m"))?;
    match unit {
        "s" => Ok(Duration::from_secs(n)),
        "m" => Ok(Duration::from_secs(n * 60)),
        "ms" => Ok(Duration::from_millis(n)),
        _ => Err(format!("{s:?}: use s, m or ms")),
    }
}

/// What one run came to.
struct RunResult {
    ops: usize,
    unknown: usize,
    faults: Vec<String>,
    failure: Option<String>,
    dir: PathBuf,
}

/// Search states the checker may spend per key.
const LINCHECK_BUDGET: usize = 20_000_000;

async fn run(args: &Args, bin: &std::path::Path, seed: u64, dir: PathBuf) -> RunResult {
    let mut result = RunResult {
        ops: 0,
        unknown: 0,
        faults: Vec::new(),
        failure: None,
        dir: dir.clone(),
    };
    // A kept directory of an earlier run with this seed must not leak in.
    let _ = std::fs::remove_dir_all(&dir);
    let mut c = match Cluster::new(&dir, bin, args.nodes, args.tls).await {
        Ok(mut c) => {
            c.read_mode = args.read_mode.clone();
            c
        }
        Err(e) => {
            result.failure = Some(format!("cannot set up the cluster: {e}"));
            return result;
        }
    };
    for i in 0..args.nodes {
        if let Err(e) = c.start(i) {
            result.failure = Some(format!("cannot start {}: {e}", c.nodes[i].name));
            return result;
        }
    }
    if let Err(e) = c.settle(Duration::from_secs(30)).await {
        result.failure = Some(format!("the cluster never started: {e}"));
        return result;
    }
    let faults: Vec<Fault> = if args.faults.is_empty() {
        nemesis::ALL.to_vec()
    } else {
        args.faults.clone()
    };
    let history = workload::History::new();
    let seq = Arc::new(AtomicU64::new(1));
    let until = Instant::now() + args.duration;
    let clients: Vec<_> = (0..args.clients as u64)
        .map(|id| {
            tokio::spawn(workload::client(
                id + 1,
                seed,
                workload::Nodes {
                    http: c.client(),
                    urls: c.urls(),
                },
                args.keys,
                history.clone(),
                until,
                seq.clone(),
            ))
        })
        .collect();
    let mut rng = SmallRng::seed_from_u64(seed);
    let mut nemesis_failure = None;
    tokio::time::sleep(Duration::from_millis(rng.random_range(300..1500))).await;
    while Instant::now() + Duration::from_secs(2) < until {
        let kind = faults[rng.random_range(0..faults.len())];
        match nemesis::inject(&mut c, &mut rng, kind).await {
            Ok(what) => result.faults.push(what),
            Err(wrong) => {
                result.faults.push(wrong.clone());
                nemesis_failure.get_or_insert(format!("UNSAFE: {wrong}"));
            }
        }
        tokio::time::sleep(Duration::from_millis(rng.random_range(300..2000))).await;
    }
    for h in clients {
        let _ = h.await;
    }
    // Heal, finish replacements, and read everything everywhere.
    if let Err(e) = c.heal() {
        result.failure = Some(format!("cannot restart a node: {e}"));
        return result;
    }
    if let Err(e) = finish_replacements(&c).await {
        result.failure = Some(e);
        return result;
    }
    if let Err(e) = c.settle(Duration::from_secs(60)).await {
        result.failure = Some(e);
        return result;
    }
    let http = c.client();
    for (i, url) in c.urls().iter().enumerate() {
        for k in 0..args.keys {
            let key = format!("k{k}").into_bytes();
            let _ =
                workload::call(&http, &history, 1000 + i as u64, url, KvCall::Get { key }).await;
        }
    }
    let ops = history.take();
    result.ops = ops.len();
    result.unknown = history.unknown.load(Ordering::Relaxed);
    match check_with_budget(&ops, LINCHECK_BUDGET) {
        CheckResult::Linearizable => {}
        CheckResult::NotLinearizable { key, explanation } => {
            let path = dir.join("history.txt");
            let _ = std::fs::write(&path, render(&ops, &key));
            result.failure = Some(format!(
                "NOT LINEARIZABLE on key {:?}: {explanation} (history in {})",
                String::from_utf8_lossy(&key),
                path.display()
            ));
        }
        CheckResult::Unknown { key } => {
            result.failure = Some(format!(
                "the checker gave up on key {:?} (search budget)",
                String::from_utf8_lossy(&key)
            ));
        }
    }
    c.stop_all();
    // A fault the system got wrong fails the run even when the history
    // passed.
    if result.failure.is_none() {
        result.failure = nemesis_failure;
    }
    result
}

/// Replaces every node that waits to be replaced (a disk loss whose
/// replacement the nemesis could not finish under faults).
async fn finish_replacements(c: &Cluster) -> Result<(), String> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let mut pending = Vec::new();
        for i in 0..c.nodes.len() {
            if let Some(info) = c.info(i).await
                && info["node_state"] != "member"
                && info["node_state"] != "bootstrapping"
            {
                pending.push(c.nodes[i].name.clone());
            }
        }
        if pending.is_empty() {
            return Ok(());
        }
        for name in &pending {
            let _ = c.replace(name, Duration::from_secs(20)).await;
        }
        if Instant::now() > deadline {
            return Err(format!("could not replace {}", pending.join(", ")));
        }
    }
}

fn render(ops: &[Operation], key: &[u8]) -> String {
    let mut out = String::new();
    for op in ops.iter().filter(|o| o.call.key() == key) {
        out.push_str(&format!(
            "client {:>4} {:>12}us..{:<14} {:?} -> {:?}\n",
            op.client,
            op.invoked,
            op.completed
                .as_ref()
                .map_or("?".to_string(), |(t, _)| format!("{t}us")),
            op.call,
            op.completed.as_ref().map(|(_, r)| r)
        ));
    }
    out
}

fn default_bin() -> Option<PathBuf> {
    let exe = std::env::current_exe().ok()?;
    let bin = exe.parent()?.join("phxkv");
    bin.exists().then_some(bin)
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    if args.nodes < 3 {
        eprintln!("phxkv-faults: --nodes must be at least 3 (faults need a majority to survive)");
        return ExitCode::from(2);
    }
    let Some(bin) = args.bin.clone().or_else(default_bin) else {
        eprintln!(
            "phxkv-faults: no phxkv binary next to this program; build it \
             (cargo build --release -p phxkv-server) or pass --bin"
        );
        return ExitCode::from(2);
    };
    let seed = args.seed.unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs() % 1_000_000)
            .unwrap_or(0)
    });
    let root = args
        .keep
        .clone()
        .unwrap_or_else(|| std::env::temp_dir().join(format!("phxkv-faults-{seed}")));
    println!(
        "phxkv-faults: {} runs of {:?}, {} nodes, {} clients, {} reads, {}, seed {seed}",
        args.runs,
        args.duration,
        args.nodes,
        args.clients,
        args.read_mode,
        if args.tls { "TLS" } else { "plain HTTP" }
    );
    let (mut anomalies, mut failed, mut total_ops) = (0, 0, 0);
    for r in 0..args.runs {
        let s = seed + r;
        let dir = root.join(format!("run-{s}"));
        let started = Instant::now();
        let result = run(&args, &bin, s, dir.clone()).await;
        total_ops += result.ops;
        let verdict = match &result.failure {
            None => "linearizable".to_string(),
            Some(f) => {
                if f.starts_with("NOT LINEARIZABLE") || f.starts_with("UNSAFE") {
                    anomalies += 1;
                } else {
                    failed += 1;
                }
                format!("FAILED: {f}")
            }
        };
        println!(
            "run {}/{} (seed {s}, {:.0}s): {} ops, {} of unknown outcome, faults: {}: {verdict}",
            r + 1,
            args.runs,
            started.elapsed().as_secs_f64(),
            result.ops,
            result.unknown,
            result.faults.join("; ")
        );
        if result.failure.is_some() {
            println!("  logs and history kept in {}", result.dir.display());
        } else if args.keep.is_none() {
            let _ = std::fs::remove_dir_all(&result.dir);
        }
    }
    if args.keep.is_none() {
        // Empty unless a run failed.
        let _ = std::fs::remove_dir(&root);
    }
    println!(
        "phxkv-faults: {} runs, {total_ops} operations, {anomalies} anomalies, {failed} runs that did not recover",
        args.runs
    );
    if anomalies + failed > 0 {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    }
}
