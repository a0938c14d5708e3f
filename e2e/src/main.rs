//! `phxkv-bench`: a load generator that drives phxkv or etcd with the same
//! workload, so the two can be compared side by side on one machine (see
//! `e2e/bench/compare.sh`, which runs both and writes BENCHMARKS.md).
//!
//! `phxkv-bench run` applies a workload and reports throughput and latency
//! percentiles as a table or JSON; `phxkv-bench probe` times how long until a
//! write succeeds (failover measurements).

mod http;
mod load;
mod probe;
mod report;
mod target;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};

use http::{Endpoint, Transport};
use target::{Consistency, Requests, Target};

/// Load generator for phxkv and etcd (through etcd's HTTP/JSON gateway).
#[derive(Parser, Debug)]
#[command(name = "phxkv-bench", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run a workload and report throughput and latency percentiles.
    Run(RunArgs),
    /// Retry a small write until one is acknowledged; print how long it took
    /// (JSON). For timing failover after killing the master.
    Probe(ProbeArgs),
}

#[derive(Args, Debug, Clone)]
struct TargetArgs {
    /// The system behind the endpoints: phxkv (its /v1 API) or etcd (its
    /// /v3 HTTP/JSON gateway).
    #[arg(long, value_enum, default_value_t = Target::Phxkv)]
    target: Target,

    /// Comma-separated base URLs, e.g.
    /// http://127.0.0.1:8080,http://127.0.0.1:8081. Client i connects to
    /// endpoint i mod n, like a load-balancing Service would.
    #[arg(long, value_delimiter = ',', required = true)]
    endpoints: Vec<String>,

    /// Size of each written value in bytes.
    #[arg(long, default_value_t = 256)]
    value_size: usize,

    /// Prefix of every key; keys are the prefix plus a 10-digit number.
    #[arg(long, default_value = "bench-")]
    key_prefix: String,

    /// The CA certificate(s), PEM, that sign the servers' certificates;
    /// needed for https:// endpoints, which are verified against it and
    /// against the URL's host name.
    #[arg(long, value_name = "PATH")]
    cacert: Option<PathBuf>,

    /// A client certificate chain (PEM) to present to servers that ask for
    /// one (phxkv --client-cert-auth, etcd --client-cert-auth).
    #[arg(long, value_name = "PATH", requires = "key", requires = "cacert")]
    cert: Option<PathBuf>,

    /// The private key (PEM) of --cert.
    #[arg(long, value_name = "PATH", requires = "cert")]
    key: Option<PathBuf>,

    /// Send `Authorization: Bearer <token>` with every request, the token
    /// read from this file (a phxkv cluster started with --auth).
    #[arg(long, value_name = "PATH")]
    token_file: Option<PathBuf>,
}

#[derive(Args, Debug)]
struct RunArgs {
    #[command(flatten)]
    target: TargetArgs,

    /// Concurrent clients, each with its own keep-alive connection.
    #[arg(long, short = 'c', default_value_t = 16)]
    clients: usize,

    /// Number of distinct keys; each request picks one uniformly at random.
    #[arg(long, default_value_t = 10_000)]
    keys: u64,

    /// Fraction of requests that are reads (0 = all writes, 1 = all reads).
    #[arg(long, default_value_t = 0.0)]
    read_ratio: f64,

    /// Consistency of reads: linearizable (phxkv default; etcd quorum range)
    /// or local (phxkv consistency=local; etcd serializable range).
    #[arg(long, value_enum, default_value_t = Consistency::Linearizable)]
    consistency: Consistency,

    /// Total requests per second across all clients (open loop). Without
    /// it, each client sends its next request as soon as it has an answer
    /// (closed loop).
    #[arg(long)]
    rate: Option<f64>,

    /// How long to measure, e.g. 10s, 500ms, 2m.
    #[arg(long, short = 'd', default_value = "10s", value_parser = parse_duration)]
    duration: Duration,

    /// Load before measuring starts; its requests are not counted.
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    warmup: Duration,

    /// Instead of a timed mix: write every key of the key space exactly once,
    /// then stop (bulk load; every request is measured).
    #[arg(long, default_value_t = false, conflicts_with_all = ["rate", "read_ratio"])]
    fill: bool,

    /// Instead of reads and writes: every client acquires and releases the
    /// lock NAME in a loop (phxkv `POST /v1/lock/{name}` and `DELETE`; etcd
    /// the v3 lock service through its JSON gateway), each with a lease of
    /// its own. One acquire-and-release pair counts as one write.
    #[arg(long, value_name = "NAME", conflicts_with_all = ["rate", "read_ratio", "fill"])]
    lock: Option<String>,

    /// A request without an answer after this long counts as an error.
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    timeout: Duration,

    /// Seed of the key and read/write choices, to repeat a run exactly.
    #[arg(long, default_value_t = 1)]
    seed: u64,

    /// Worker threads of the generator (1 keeps its CPU use small and
    /// predictable when it shares the machine with the servers).
    #[arg(long, default_value_t = 1)]
    threads: usize,

    /// What to print on stdout when done.
    #[arg(long, value_enum, default_value_t = Output::Table)]
    output: Output,

    /// Also write the JSON report to this file.
    #[arg(long)]
    json_file: Option<std::path::PathBuf>,

    /// Write every measured request to this file, one line each: when it
    /// was due (Unix time in ns; open loop: its scheduled start), its
    /// latency in µs, and `r` or `w`. For splitting latencies by what else
    /// ran at the time (e2e/bench/backup.sh).
    #[arg(long)]
    latency_log: Option<std::path::PathBuf>,

    /// No progress line on stderr.
    #[arg(long, short = 'q', default_value_t = false)]
    quiet: bool,
}

#[derive(Args, Debug)]
struct ProbeArgs {
    #[command(flatten)]
    target: TargetArgs,

    /// Give up (exit 1) when no write succeeded within this long.
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    deadline: Duration,

    /// Per-attempt timeout; an attempt that takes longer is abandoned and
    /// the next endpoint is tried.
    #[arg(long, default_value = "500ms", value_parser = parse_duration)]
    request_timeout: Duration,

    /// Measure from this wall-clock instant (nanoseconds since the Unix
    /// epoch, as `date +%s%N` prints) instead of from the probe's start.
    #[arg(long)]
    since_unix_ns: Option<u128>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Output {
    Table,
    Json,
}

/// Parses `250ms`, `10s`, `2m` or a bare number of seconds.
fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (num, unit) = match s.find(|c: char| !c.is_ascii_digit() && c != '.') {
        Some(i) => s.split_at(i),
        None => (s, "s"),
    };
    let n: f64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a duration (examples: 500ms, 10s, 2m)"))?;
    let secs = match unit {
        "ms" => n / 1000.0,
        "s" => n,
        "m" => n * 60.0,
        _ => return Err(format!("{s:?}: unknown unit {unit:?} (use ms, s or m)")),
    };
    if !secs.is_finite() || secs < 0.0 {
        return Err(format!("{s:?} is not a duration"));
    }
    Ok(Duration::from_secs_f64(secs))
}

/// One readable line for a bad flag, and exit status 2.
fn usage(msg: String) -> ExitCode {
    eprintln!("phxkv-bench: {msg}");
    ExitCode::from(2)
}

fn endpoints(args: &TargetArgs) -> Result<Vec<Endpoint>, String> {
    if args.endpoints.is_empty() {
        return Err("--endpoints: give at least one URL".into());
    }
    args.endpoints
        .iter()
        .map(|u| Endpoint::parse(u.trim()).map_err(|e| format!("--endpoints: {e}")))
        .collect()
}

/// TLS and credentials from the flags; https:// endpoints and --cacert go
/// together.
fn transport(args: &TargetArgs, endpoints: &[Endpoint]) -> Result<Transport, String> {
    let any_https = endpoints.iter().any(|e| e.tls_name.is_some());
    let mut t = Transport::default();
    match (&args.cacert, any_https) {
        (None, true) => {
            return Err(
                "--cacert: https:// endpoints need the CA that signs their certificates".into(),
            );
        }
        (Some(_), false) => {
            return Err("--cacert: only for https:// endpoints".into());
        }
        (Some(ca), true) => {
            let identity = args.cert.as_deref().zip(args.key.as_deref());
            t = t
                .with_tls(ca, identity)
                .map_err(|e| format!("--cacert/--cert/--key: {e}"))?;
        }
        (None, false) => {}
    }
    if let Some(path) = &args.token_file {
        let token = std::fs::read_to_string(path)
            .map_err(|e| format!("--token-file {}: {e}", path.display()))?;
        t = t
            .with_bearer_token(&token)
            .map_err(|e| format!("--token-file {}: {e}", path.display()))?;
    }
    Ok(t)
}

fn check_target(args: &TargetArgs) -> Result<(), String> {
    if args.value_size > 1 << 20 {
        return Err("--value-size: at most 1048576 bytes".into());
    }
    if args.key_prefix.is_empty()
        || !args
            .key_prefix
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
    {
        return Err("--key-prefix: use letters, digits, '-', '_' or '.'".into());
    }
    Ok(())
}

fn validate_run(a: &RunArgs) -> Result<(Vec<Endpoint>, Transport), String> {
    check_target(&a.target)?;
    if a.clients == 0 || a.clients > 10_000 {
        return Err("--clients: must be between 1 and 10000".into());
    }
    if a.keys == 0 {
        return Err("--keys: must be at least 1".into());
    }
    if !(0.0..=1.0).contains(&a.read_ratio) {
        return Err("--read-ratio: must be between 0 and 1".into());
    }
    if let Some(r) = a.rate
        && !(r.is_finite() && r > 0.0)
    {
        return Err("--rate: must be a positive number of requests per second".into());
    }
    if a.duration.is_zero() {
        return Err("--duration: must be longer than zero".into());
    }
    if a.timeout.is_zero() {
        return Err("--timeout: must be longer than zero".into());
    }
    if a.threads == 0 || a.threads > 64 {
        return Err("--threads: must be between 1 and 64".into());
    }
    let eps = endpoints(&a.target)?;
    let t = transport(&a.target, &eps)?;
    Ok((eps, t))
}

fn runtime(threads: usize) -> std::io::Result<tokio::runtime::Runtime> {
    if threads <= 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads)
            .enable_all()
            .build()
    }
}

fn value(size: usize) -> Vec<u8> {
    // Printable and incompressible enough; the same bytes for both systems.
    (0..size).map(|i| b'a' + (i * 7 % 26) as u8).collect()
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Run(a) => run(a),
        Command::Probe(a) => probe(a),
    }
}

/// One line per request, in order of when each was due.
fn write_latency_log(path: &std::path::Path, log: &[load::Logged]) -> std::io::Result<()> {
    use std::io::Write;
    let mut sorted = log.to_vec();
    sorted.sort_by_key(|l| l.due_unix_ns);
    let mut out = std::io::BufWriter::new(std::fs::File::create(path)?);
    for l in sorted {
        let kind = if l.read { 'r' } else { 'w' };
        writeln!(out, "{} {} {kind}", l.due_unix_ns, l.latency_us)?;
    }
    out.flush()
}

fn run(a: RunArgs) -> ExitCode {
    let (eps, transport) = match validate_run(&a) {
        Ok(v) => v,
        Err(m) => return usage(m),
    };
    let rt = match runtime(a.threads) {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("phxkv-bench: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let requests = Requests::new(a.target.target, a.consistency, value(a.target.value_size));
    let workload = load::Workload {
        endpoints: eps,
        transport,
        clients: a.clients,
        keys: a.keys,
        key_prefix: a.target.key_prefix.clone(),
        read_ratio: a.read_ratio,
        rate: a.rate,
        duration: a.duration,
        warmup: if a.fill { Duration::ZERO } else { a.warmup },
        fill: a.fill,
        timeout: a.timeout,
        seed: a.seed,
        progress: !a.quiet,
        latency_log: a.latency_log.is_some(),
        lock: a.lock.clone(),
    };
    let outcome = rt.block_on(load::run(workload, requests));
    let settings = report::Settings {
        target: a.target.target,
        endpoints: a.target.endpoints.clone(),
        clients: a.clients,
        mode: if a.lock.is_some() {
            "lock"
        } else if a.fill {
            "fill"
        } else if a.rate.is_some() {
            "open"
        } else {
            "closed"
        },
        rate: a.rate,
        read_ratio: a.read_ratio,
        consistency: a.consistency,
        keys: a.keys,
        value_size: a.target.value_size,
        duration_s: a.duration.as_secs_f64(),
        warmup_s: if a.fill { 0.0 } else { a.warmup.as_secs_f64() },
    };
    let report = report::Report::new(settings, &outcome);
    let json = match serde_json::to_string_pretty(&report) {
        Ok(j) => j,
        Err(e) => {
            eprintln!("phxkv-bench: cannot encode the report: {e}");
            return ExitCode::FAILURE;
        }
    };
    if let Some(path) = &a.json_file
        && let Err(e) = std::fs::write(path, format!("{json}\n"))
    {
        eprintln!("phxkv-bench: --json-file {}: {e}", path.display());
        return ExitCode::FAILURE;
    }
    if let Some(path) = &a.latency_log
        && let Err(e) = write_latency_log(path, &outcome.stats.log)
    {
        eprintln!("phxkv-bench: --latency-log {}: {e}", path.display());
        return ExitCode::FAILURE;
    }
    match a.output {
        Output::Table => print!("{}", report.table()),
        Output::Json => println!("{json}"),
    }
    if report.ops == 0 {
        eprintln!("phxkv-bench: no request succeeded");
        return ExitCode::FAILURE;
    }
    ExitCode::SUCCESS
}

fn probe(a: ProbeArgs) -> ExitCode {
    if let Err(m) = check_target(&a.target) {
        return usage(m);
    }
    let (eps, transport) =
        match endpoints(&a.target).and_then(|eps| transport(&a.target, &eps).map(|t| (eps, t))) {
            Ok(v) => v,
            Err(m) => return usage(m),
        };
    if a.request_timeout.is_zero() || a.deadline.is_zero() {
        return usage("--request-timeout and --deadline must be longer than zero".into());
    }
    let rt = match runtime(1) {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("phxkv-bench: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let requests = Requests::new(
        a.target.target,
        Consistency::Linearizable,
        value(a.target.value_size),
    );
    let key = format!("{}probe", a.target.key_prefix);
    match rt.block_on(probe::run(
        eps,
        transport,
        requests,
        &key,
        a.request_timeout,
        a.deadline,
        a.since_unix_ns,
    )) {
        Ok(r) => {
            println!("{}", serde_json::json!(r));
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("phxkv-bench: {e}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_with_units_and_refuse_nonsense() {
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("3"), Ok(Duration::from_secs(3)));
        assert!(parse_duration("ten").is_err());
        assert!(parse_duration("5h").is_err());
    }

    #[test]
    fn bad_flags_are_refused_with_the_flag_named() {
        let parse = |args: &[&str]| {
            let mut v = vec!["phxkv-bench", "run", "--endpoints", "http://127.0.0.1:1"];
            v.extend_from_slice(args);
            match Cli::try_parse_from(v).expect("parses").command {
                Command::Run(a) => validate_run(&a).map(|_| ()),
                Command::Probe(_) => unreachable!(),
            }
        };
        assert!(parse(&[]).is_ok());
        assert!(
            parse(&["--read-ratio", "1.5"])
                .err()
                .unwrap_or_default()
                .contains("--read-ratio")
        );
        assert!(
            parse(&["--clients", "0"])
                .err()
                .unwrap_or_default()
                .contains("--clients")
        );
        assert!(
            parse(&["--rate", "0"])
                .err()
                .unwrap_or_default()
                .contains("--rate")
        );
        assert!(
            parse(&["--key-prefix", "a/b"])
                .err()
                .unwrap_or_default()
                .contains("--key-prefix")
        );
    }

    #[test]
    fn https_endpoints_and_cacert_go_together() {
        let parse = |args: &[&str]| {
            let mut v = vec!["phxkv-bench", "run"];
            v.extend_from_slice(args);
            let cli = Cli::try_parse_from(v).map_err(|e| e.to_string())?;
            match cli.command {
                Command::Run(a) => validate_run(&a).map(|_| ()),
                Command::Probe(_) => unreachable!(),
            }
        };
        let err = parse(&["--endpoints", "https://127.0.0.1:1"]).expect_err("no CA");
        assert!(err.contains("--cacert"), "{err}");
        let err = parse(&["--endpoints", "http://127.0.0.1:1", "--cacert", "ca.crt"])
            .expect_err("CA for plain HTTP");
        assert!(err.contains("only for https"), "{err}");
        let err = parse(&[
            "--endpoints",
            "https://127.0.0.1:1",
            "--cacert",
            "/nonexistent/ca.crt",
        ])
        .expect_err("missing CA file");
        assert!(err.contains("/nonexistent/ca.crt"), "{err}");
        // --cert without --key is refused by the parser.
        assert!(
            parse(&[
                "--endpoints",
                "https://127.0.0.1:1",
                "--cacert",
                "ca.crt",
                "--cert",
                "c.crt",
            ])
            .is_err()
        );
        let err = parse(&[
            "--endpoints",
            "http://127.0.0.1:1",
            "--token-file",
            "/nonexistent/token",
        ])
        .expect_err("missing token file");
        assert!(err.contains("--token-file"), "{err}");
    }
}
