//! The `phxkv` command line: `serve` runs a replica, `dev` a local cluster,
//! and the client commands talk to a cluster over its public API.
//!
//! Exit codes: 0 success, 1 key or member not found or compare failed, 2
//! usage, 3 unavailable, 4 any other failure.

/// `println!` that cannot panic: with stdout closed (`phxkv ... | head`),
/// what cannot be written is dropped. Client commands that print much use
/// [`client::write_out`], which stops them instead.
macro_rules! say {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout(), $($arg)*);
    }};
}
pub(crate) use say;

/// `eprintln!` that cannot panic (with stderr closed, as in
/// `phxkv ... 2>&1 | head`).
macro_rules! tell {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stderr(), $($arg)*);
    }};
}
pub(crate) use tell;

/// `eprint!` that cannot panic.
macro_rules! tell_part {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = write!(std::io::stderr(), $($arg)*);
    }};
}
pub(crate) use tell_part;

pub mod client;
pub mod completion;
pub mod dev;
pub mod serve;

use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};

/// What `phxkv --help` says of exit codes (see [`CliError::exit_code`]).
const EXIT_CODES: &str = "Exit codes: 0 done; 1 key or member not found, or a compare failed; \
2 bad usage, or a missing, wrong or too narrow credential (401/403); \
3 no endpoint answered (unreachable, or a certificate this client does not trust), \
or every one answered 503 (no master elected yet, say); \
4 anything else. Errors are one line on stderr.";

/// What `phxkv serve --help` says of exit codes.
const SERVE_EXIT_CODES: &str = "Exit codes: 0 stopped (SIGTERM or SIGINT); 2 bad flags; \
4 could not start (the reason is on stderr), or the data directory was removed or replaced \
while running; 65 the data directory is older than what this replica acknowledged to its \
peers (an older copy put back: move it away and let the node be replaced); 70 the data \
directory cannot be written.";

/// phxkv: a strongly consistent key-value store on Multi-Paxos.
#[derive(Parser, Debug)]
#[command(name = "phxkv", version, about, long_about = None, after_help = EXIT_CODES)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run one replica (what each Kubernetes pod runs).
    #[command(after_help = SERVE_EXIT_CODES)]
    Serve(Box<serve::ServeArgs>),
    /// Run a local cluster on this machine, for development.
    Dev(dev::DevArgs),
    /// Store a value under a key.
    Put(client::put::PutArgs),
    /// Print a key's value.
    Get(client::get::GetArgs),
    /// Delete a key, or every key under a prefix (--prefix).
    Delete(client::delete::DeleteArgs),
    /// List keys and values, optionally under a prefix.
    List(client::list::ListArgs),
    /// Run a transaction (compares, then one of two branches) from JSON.
    Txn(client::txn::TxnArgs),
    /// Print changes to keys as they happen, until Ctrl-C.
    Watch(client::watch::WatchArgs),
    /// Show the cluster's members, master and progress.
    Status(client::status::StatusArgs),
    /// List, add, promote, remove or replace cluster members; move mastership.
    Members(client::members::MembersArgs),
    /// Manage roles and API tokens of a cluster started with --auth.
    Auth(client::auth::AuthArgs),
    /// Save a consistent backup of a cluster, inspect one, or restore one
    /// into the first member of a new cluster.
    Backup(client::backup::BackupArgs),
    /// Grant, renew, revoke and inspect leases: keys attached to a lease
    /// (`phxkv put --lease ID`) are deleted when it ends.
    Lease(client::lease::LeaseArgs),
    /// Acquire a lock and run a command while holding it (like `etcdctl
    /// lock`); the lock is released when the command ends or this process
    /// dies (after the lease's TTL).
    Lock(client::lease::LockArgs),
    /// Campaign in a leader election and lead until Ctrl-C, or with
    /// --listen print each new leader (like `etcdctl elect`).
    Elect(client::elect::ElectArgs),
    /// An interactive prompt: get, put, delete, list, status.
    Shell(client::shell::ShellArgs),
    /// Print a completion script for bash, zsh or fish.
    Completion(completion::CompletionArgs),
}

/// Reads the command line. Help and `--version` print as clap prints them;
/// a usage error is one line on stderr (exit 2), like every other error of
/// the CLI, instead of clap's multi-line report.
pub fn parse_args() -> Result<Cli, ExitCode> {
    use clap::error::ErrorKind;
    match parse_from(std::env::args_os()) {
        Ok(cli) => Ok(cli),
        Err(e) => {
            let code = u8::try_from(e.exit_code()).unwrap_or(2);
            match e.kind() {
                ErrorKind::DisplayHelp
                | ErrorKind::DisplayVersion
                | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand => {
                    let _ = e.print();
                }
                _ => crate::cli::tell!("phxkv: {}", one_line_usage_error(&e.render().to_string())),
            }
            Err(ExitCode::from(code))
        }
    }
}

/// Parses `argv` (its first item is the program's name) with every
/// command taking a negative number as a value, as in `phxkv put
/// temperature -5`; a `--limit -1` is then refused as a bad value of
/// `--limit`, not as an unknown flag `-1`.
///
/// An environment variable set to the empty string counts as not set, as
/// most tools read them (`export PHXKV_TOKEN_FILE=` to stop using one),
/// rather than as a flag given without its value.
///
/// What the command line says beats the environment: a `--token-file`
/// given there is used even when `PHXKV_TOKEN` is set (which otherwise
/// comes first, as the more specific of the two variables).
fn parse_from<I, T>(argv: I) -> Result<Cli, clap::Error>
where
    I: IntoIterator<Item = T>,
    T: Into<std::ffi::OsString> + Clone,
{
    use clap::{CommandFactory, FromArgMatches};
    fn prepare(cmd: clap::Command, token_from_env: bool) -> clap::Command {
        cmd.allow_negative_numbers(true)
            .mut_args(|arg| {
                let unset = arg
                    .get_env()
                    .and_then(std::env::var_os)
                    .is_some_and(|v| v.is_empty())
                    || (!token_from_env && arg.get_id() == "token");
                if unset {
                    arg.env(None::<&str>)
                } else {
                    boolish(arg)
                }
            })
            .mut_subcommands(|sub| prepare(sub, token_from_env))
    }
    /// The matches of the command that runs (the innermost subcommand).
    fn innermost(m: &clap::ArgMatches) -> &clap::ArgMatches {
        match m.subcommand() {
            Some((_, sub)) => innermost(sub),
            None => m,
        }
    }
    let mut cmd = prepare(Cli::command(), true);
    let argv = options_after_command(&mut cmd, argv.into_iter().map(Into::into).collect())?;
    let mut matches = cmd.try_get_matches_from_mut(argv.clone())?;
    let leaf = innermost(&matches);
    if leaf.ids().any(|id| id == "token")
        && leaf.value_source("token") == Some(clap::parser::ValueSource::CommandLine)
    {
        return Err(cmd.error(
            clap::error::ErrorKind::ArgumentConflict,
            "--token is not taken on the command line, where every user of the machine \
             can read it: put the token in a file for --token-file, or in PHXKV_TOKEN",
        ));
    }
    let token_file_given = leaf.ids().any(|id| id == "token_file")
        && leaf.value_source("token_file") == Some(clap::parser::ValueSource::CommandLine);
    let token_from_env = leaf.ids().any(|id| id == "token")
        && leaf.value_source("token") == Some(clap::parser::ValueSource::EnvVariable);
    if token_file_given && token_from_env {
        cmd = prepare(Cli::command(), false);
        matches = cmd.try_get_matches_from_mut(argv)?;
    }
    Cli::from_arg_matches(&matches).map_err(|e| e.format(&mut cmd))
}

/// A switch (`--auth`, `--join`, ...) read from its variable takes what
/// shells and container specs write for yes and no (`1`, `yes`, `on`,
/// `0`, `no`, `off`, as well as `true` and `false`). A variable that says
/// no counts as not set: clap would otherwise count the switch as given
/// (with the value false), and hold it to the options it requires.
fn boolish(arg: clap::Arg) -> clap::Arg {
    if !matches!(arg.get_action(), clap::ArgAction::SetTrue) {
        return arg;
    }
    let Some(value) = arg.get_env().and_then(std::env::var_os) else {
        return arg;
    };
    let no = ["0", "false", "no", "off", "n", "f"];
    if no.iter().any(|n| value.eq_ignore_ascii_case(n)) {
        return arg.env(None::<&str>);
    }
    arg.value_parser(switch_value)
}

/// A switch's value from its variable, as [`boolish`] takes it.
fn switch_value(s: &str) -> Result<bool, String> {
    match s.trim().to_ascii_lowercase().as_str() {
        "1" | "true" | "yes" | "on" | "y" | "t" => Ok(true),
        "0" | "false" | "no" | "off" | "n" | "f" => Ok(false),
        _ => Err(
            "write 1, yes, on or true to turn it on, and 0, no, off or false to turn it off".into(),
        ),
    }
}

/// Options written before the command's name, as etcdctl takes them
/// (`phxkv --endpoints URL --cacert ca.crt get k`), moved after it, where
/// the command defines them. Only when every one of them is an option of
/// that command; otherwise `argv` is left as it is, for clap to report.
/// Options with no command after them are an error that says so. (Not
/// clap's global arguments on `Cli`: those would put `--endpoints` into
/// `serve` and `dev` too, and `-o` into commands that print nothing.)
fn options_after_command(
    cmd: &mut clap::Command,
    argv: Vec<std::ffi::OsString>,
) -> Result<Vec<std::ffi::OsString>, clap::Error> {
    // The option an argument names (`--cacert`, `--cacert=x`, `-o`,
    // `-ojson`), and whether its value is part of the same argument.
    fn named(arg: &str) -> Option<(Result<&str, char>, bool)> {
        if let Some(long) = arg.strip_prefix("--") {
            let (name, inline) = long
                .split_once('=')
                .map_or((long, false), |(n, _)| (n, true));
            return (!name.is_empty()).then_some((Ok(name), inline));
        }
        let mut short = arg.strip_prefix('-')?.chars();
        let c = short.next()?;
        Some((Err(c), short.next().is_some()))
    }
    fn find<'a>(cmd: &'a clap::Command, name: Result<&str, char>) -> Option<&'a clap::Arg> {
        cmd.get_arguments().find(|a| match name {
            Ok(long) => a.get_long() == Some(long),
            Err(c) => a.get_short() == Some(c),
        })
    }
    let mut i = 1;
    let mut leading = Vec::new();
    while let Some(arg) = argv.get(i).and_then(|a| a.to_str()) {
        let Some((name, inline)) = named(arg) else {
            break;
        };
        // Whether it takes a value is the same in every command that has it.
        let Some(opt) = cmd.get_subcommands().find_map(|sub| find(sub, name)) else {
            return Ok(argv);
        };
        leading.push(name);
        i += if inline || !opt.get_action().takes_values() {
            1
        } else {
            2
        };
    }
    if i == 1 {
        return Ok(argv);
    }
    let Some(name) = argv.get(i).map(|a| a.to_string_lossy()) else {
        return Err(cmd.error(
            clap::error::ErrorKind::MissingSubcommand,
            "the options need a command after them, as in \
             `phxkv --endpoints URLS get KEY`; `phxkv --help` lists the commands",
        ));
    };
    if name.starts_with('-') {
        return Ok(argv);
    }
    // A name that is no command moves too, so that clap reports it (with
    // a similar name, if there is one) rather than the options before it.
    if let Some(sub) = cmd.find_subcommand(name.as_ref())
        && leading.iter().any(|&name| find(sub, name).is_none())
    {
        return Ok(argv);
    }
    let mut out = Vec::with_capacity(argv.len());
    out.push(argv[0].clone());
    out.push(argv[i].clone());
    out.extend_from_slice(&argv[1..i]);
    out.extend_from_slice(&argv[i + 1..]);
    Ok(out)
}

/// Folds clap's error report into one line: the message, then its details
/// (possible values, a similar name) after semicolons; the usage synopsis
/// and the pointer to `--help` are left out.
fn one_line_usage_error(report: &str) -> String {
    let mut out = String::new();
    for line in report.lines().map(str::trim) {
        if line.is_empty() || line.starts_with("Usage:") || line.starts_with("For more information")
        {
            continue;
        }
        let line = line.strip_prefix("error: ").unwrap_or(line);
        let line = line.strip_prefix("tip: ").unwrap_or(line);
        let line = line
            .strip_prefix('[')
            .and_then(|l| l.strip_suffix(']'))
            .unwrap_or(line);
        if !out.is_empty() {
            out.push_str(if out.ends_with(':') { " " } else { "; " });
        }
        out.push_str(line);
    }
    out
}

/// A failure the CLI reports with one line and an exit code.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// Bad flags or arguments (exit 2).
    #[error("{0}")]
    Usage(String),
    /// The key does not exist or a compare failed (exit 1).
    #[error("{0}")]
    NotFound(String),
    /// No endpoint could serve the request (exit 3).
    #[error("{0}")]
    Unavailable(String),
    /// Anything else (exit 4).
    #[error("{0}")]
    Fatal(String),
    /// A command run by phxkv (`phxkv lock NAME -- COMMAND`) ended with
    /// this exit code, which phxkv exits with, saying nothing more.
    #[error("the command exited with code {0}")]
    Child(u8),
    /// Whoever read the output stopped reading (`phxkv list | head`): the
    /// command ends there, successfully and silently, as `cat` would.
    #[error("the output was closed")]
    OutputClosed,
}

impl CliError {
    pub fn exit_code(&self) -> u8 {
        match self {
            CliError::NotFound(_) => 1,
            CliError::Usage(_) => 2,
            CliError::Unavailable(_) => 3,
            CliError::Fatal(_) => 4,
            CliError::Child(code) => *code,
            CliError::OutputClosed => 0,
        }
    }
}

/// Parses `500ms`, `5s`, `2m`, `1h` (a bare number means seconds).
/// A lease's TTL in whole seconds: `10`, or a duration with a unit that
/// comes to whole seconds (`10s`, `2m`).
pub fn parse_ttl(s: &str) -> Result<u64, String> {
    let bad = || format!("{s:?} is not a TTL: give whole seconds, like 10, 10s or 2m");
    if let Ok(secs) = s.trim().parse::<u64>() {
        return Ok(secs);
    }
    let d = parse_duration(s).map_err(|_| bad())?;
    if d.subsec_nanos() != 0 {
        return Err(bad());
    }
    Ok(d.as_secs())
}

pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: f64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a duration like 500ms, 5s or 2m"))?;
    let secs = match unit.trim() {
        "ms" => n / 1000.0,
        "" | "s" => n,
        "m" => n * 60.0,
        "h" => n * 3600.0,
        other => {
            return Err(format!(
                "unknown duration unit {other:?} (use ms, s, m or h)"
            ));
        }
    };
    if !secs.is_finite() || !(0.0..=1e9).contains(&secs) {
        return Err(format!("{s:?} is out of range"));
    }
    Ok(Duration::from_secs_f64(secs))
}

/// Reads a size in bytes: a whole number, optionally followed by a unit,
/// as Kubernetes writes quantities: `Ki`, `Mi`, `Gi`, `Ti` (powers of
/// 1024, also written `KiB`, `MiB`, ...) or `k`, `M`, `G`, `T` (powers of
/// 1000, also `kB`, `MB`, ...), and `B` for bytes; `64Mi`, `2GiB`,
/// `500M`, `1048576`.
pub fn parse_bytes(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a size like 1048576, 64Mi, 64MiB, 2Gi or 500M"))?;
    let unit = unit.trim();
    let scale: u64 = match unit.strip_suffix('B').unwrap_or(unit) {
        "" => 1,
        "Ki" => 1 << 10,
        "Mi" => 1 << 20,
        "Gi" => 1 << 30,
        "Ti" => 1 << 40,
        "k" | "K" => 1_000,
        "M" => 1_000_000,
        "G" => 1_000_000_000,
        "T" => 1_000_000_000_000,
        _ => {
            return Err(format!(
                "unknown size unit {unit:?} in {s:?} (use Ki, Mi, Gi, Ti, k, M, G, T or none)"
            ));
        }
    };
    n.checked_mul(scale)
        .ok_or_else(|| format!("{s:?} is too large"))
}

/// [`parse_bytes`] for a size the program holds as a `usize`.
pub fn parse_bytes_usize(s: &str) -> Result<usize, String> {
    let n = parse_bytes(s)?;
    usize::try_from(n).map_err(|_| format!("{s:?} is too large"))
}

/// SIGTERM, listened for from [`Terminate::listen`] on, and passed on to
/// a child process.
#[derive(Debug)]
pub struct Terminate(tokio::signal::unix::Signal);

impl Terminate {
    /// Handles SIGTERM from now on: it no longer ends the process, and
    /// [`Terminate::recv`] sees each one.
    pub fn listen() -> Result<Terminate, CliError> {
        tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .map(Terminate)
            .map_err(|e| CliError::Fatal(format!("cannot handle SIGTERM: {e}")))
    }

    /// The next SIGTERM.
    pub async fn recv(&mut self) {
        if self.0.recv().await.is_none() {
            // No more signals can arrive: wait for ever, as for one that
            // never comes.
            std::future::pending::<()>().await;
        }
    }
}

/// Resolves on SIGTERM or Ctrl-C.
pub async fn wait_for_signal() {
    match Terminate::listen() {
        Ok(mut term) => {
            tokio::select! {
                () = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
        }
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

/// Runs the parsed command.
pub async fn run(cli: Cli) -> Result<(), CliError> {
    match cli.command {
        Command::Serve(args) => serve::run(*args).await,
        Command::Dev(args) => dev::run(args).await,
        Command::Put(args) => client::put::run(args).await,
        Command::Get(args) => client::get::run(args).await,
        Command::Delete(args) => client::delete::run(args).await,
        Command::List(args) => client::list::run(args).await,
        Command::Txn(args) => client::txn::run(args).await,
        Command::Watch(args) => client::watch::run(args).await,
        Command::Status(args) => client::status::run(args).await,
        Command::Members(args) => client::members::run(args).await,
        Command::Backup(args) => client::backup::run(args).await,
        Command::Auth(args) => client::auth::run(args).await,
        Command::Shell(args) => client::shell::run(args).await,
        Command::Lease(args) => client::lease::run(args).await,
        Command::Lock(args) => client::lease::run_lock(args).await,
        Command::Elect(args) => client::elect::run(args).await,
        Command::Completion(args) => completion::run(&args),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ttls_take_whole_seconds_with_or_without_a_unit() {
        assert_eq!(parse_ttl("10"), Ok(10));
        assert_eq!(parse_ttl("10s"), Ok(10));
        assert_eq!(parse_ttl("2m"), Ok(120));
        for bad in ["-3", "1.5s", "500ms", "x"] {
            let err = parse_ttl(bad).expect_err(bad);
            assert!(err.contains("whole seconds"), "{err}");
        }
    }

    #[test]
    fn durations_parse_in_common_units_and_reject_garbage() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("5s"), Ok(Duration::from_secs(5)));
        assert_eq!(parse_duration("2"), Ok(Duration::from_secs(2)));
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert!(parse_duration("fast").is_err());
        assert!(parse_duration("5 parsecs").is_err());
        assert!(parse_duration("").is_err());
    }

    #[test]
    fn usage_errors_fold_into_one_line() {
        let report = "error: invalid value 'xml' for '--output <FORMAT>'\n  \
                      [possible values: text, json, table]\n\n\
                      For more information, try '--help'.\n";
        assert_eq!(
            one_line_usage_error(report),
            "invalid value 'xml' for '--output <FORMAT>'; possible values: text, json, table"
        );
        let report = "error: the following required arguments were not provided:\n  \
                      <KEY>\n\nUsage: phxkv get <KEY>\n\nFor more information, try '--help'.\n";
        assert_eq!(
            one_line_usage_error(report),
            "the following required arguments were not provided: <KEY>"
        );
    }

    #[test]
    fn sizes_take_binary_and_decimal_units() {
        assert_eq!(parse_bytes("1048576"), Ok(1 << 20));
        assert_eq!(parse_bytes("64Mi"), Ok(64 << 20));
        assert_eq!(parse_bytes("64MiB"), Ok(64 << 20));
        assert_eq!(parse_bytes(" 2GiB "), Ok(2 << 30));
        assert_eq!(parse_bytes("500M"), Ok(500_000_000));
        assert_eq!(parse_bytes("1kB"), Ok(1_000));
        assert_eq!(parse_bytes("0"), Ok(0));
        for bad in ["", "-1", "1.5Gi", "1 gigabyte", "GiB", "99999999999999Ti"] {
            assert!(parse_bytes(bad).is_err(), "{bad:?}");
        }
        assert!(parse_bytes("1GB2").is_err());
    }

    #[test]
    fn a_restore_target_needs_an_archive() {
        for target in [
            ["--target-revision", "5"],
            ["--target-time", "2026-01-01T00:00:00Z"],
        ] {
            let err = parse_from([
                "phxkv",
                "backup",
                "restore",
                "f.backup",
                "--data-dir",
                "d",
                "--name",
                "a",
                "--cluster-id",
                "c",
                "--initial-members",
                "a=http://h:1",
                target[0],
                target[1],
            ])
            .expect_err("a target applies to an archive only");
            assert!(
                err.to_string().contains(target[0]) && err.to_string().contains("FILE"),
                "{err}"
            );
        }
    }

    #[test]
    fn a_client_key_and_a_key_to_read_do_not_collide() {
        for args in [
            &["phxkv", "get", "app/x", "--cert", "c.pem", "--key", "k.pem"][..],
            &["phxkv", "--cert", "c.pem", "--key", "k.pem", "get", "app/x"],
            &[
                "phxkv", "put", "--cert", "c.pem", "--key", "k.pem", "app/x", "v",
            ],
            &["phxkv", "delete", "app/x", "--key=k.pem", "--cert=c.pem"],
        ] {
            let cli = parse_from(args.iter().copied());
            let debug = format!("{cli:?}");
            for part in ["\"app/x\"", "k.pem", "c.pem"] {
                assert!(debug.contains(part), "{args:?}: {part} lost: {debug}");
            }
        }
        let err = parse_from(["phxkv", "get", "app/x", "--key", "k.pem"])
            .expect_err("--key needs --cert");
        assert!(err.to_string().contains("--cert"), "{err}");
    }

    #[test]
    fn connection_options_may_come_before_the_command() {
        let cli = parse_from([
            "phxkv",
            "--endpoints",
            "https://a:8080,https://b:8080",
            "--cacert=ca.crt",
            "-o",
            "json",
            "--timeout",
            "2s",
            "get",
            "k",
        ]);
        let Ok(Cli {
            command: Command::Get(get),
        }) = cli
        else {
            panic!("not parsed as get: {cli:?}");
        };
        let debug = format!("{get:?}");
        for part in ["https://a:8080", "https://b:8080", "ca.crt", "Json", "2s"] {
            assert!(debug.contains(part), "{part} lost: {debug}");
        }
        // The token itself only from the environment.
        let err = parse_from(["phxkv", "get", "k", "--token", "secret"])
            .expect_err("--token on the command line");
        assert!(err.to_string().contains("--token-file"), "{err}");
        // Under a command with commands of its own too.
        let cli = parse_from(["phxkv", "--token-file", "t", "auth", "token", "list"]);
        assert!(
            matches!(
                &cli,
                Ok(Cli {
                    command: Command::Auth(_)
                })
            ),
            "{cli:?}"
        );
        // An option the command does not take is still refused.
        let err =
            parse_from(["phxkv", "-o", "json", "put", "k", "v"]).expect_err("put takes no -o");
        assert!(err.to_string().contains("'-o'"), "{err}");
        let err = parse_from(["phxkv", "--nonsense", "get", "k"]).expect_err("no such option");
        assert!(err.to_string().contains("--nonsense"), "{err}");
        // Options with no command, or with a misspelt one.
        let err = parse_from(["phxkv", "--endpoints", "http://a:8080"]).expect_err("no command");
        assert!(
            err.to_string().contains("need a command after them"),
            "{err}"
        );
        let err = parse_from(["phxkv", "--cacert", "ca.crt", "gte", "k"]).expect_err("misspelt");
        assert!(err.to_string().contains("'gte'"), "{err}");
    }

    #[test]
    fn a_negative_number_is_a_value_not_a_flag() {
        let cli = parse_from(["phxkv", "put", "temperature", "-5"]);
        let Ok(Cli {
            command: Command::Put(put),
        }) = cli
        else {
            panic!("not parsed as put: {cli:?}");
        };
        assert_eq!(put.value.as_deref(), Some("-5"));
        let e = parse_from(["phxkv", "list", "--limit", "-1"])
            .err()
            .map(|e| one_line_usage_error(&e.render().to_string()));
        assert_eq!(
            e.as_deref(),
            Some("invalid value '-1' for '--limit <N>': invalid digit found in string")
        );
        // Anything else that starts with a dash is still a flag.
        let e = parse_from(["phxkv", "get", "-x"])
            .err()
            .map(|e| one_line_usage_error(&e.render().to_string()));
        assert!(
            e.as_deref()
                .is_some_and(|e| e.starts_with("unexpected argument '-x' found")),
            "{e:?}"
        );
    }

    #[test]
    fn a_bad_output_format_is_a_usage_error() {
        let e = parse_from(["phxkv", "get", "k", "-o", "xml"])
            .err()
            .map(|e| one_line_usage_error(&e.render().to_string()));
        assert_eq!(
            e.as_deref(),
            Some("invalid value 'xml' for '--output <FORMAT>'; possible values: text, json, table")
        );
    }
}
