//! `phxkv lease ...` (grant, keep alive, revoke, inspect leases) and
//! `phxkv lock NAME [-- COMMAND...]` (hold a lock while a command runs).

use std::time::{Duration, Instant};

use clap::{Args, Subcommand};
use phxkv_client::KeepAlive;

use super::http::Client;
use super::{ConnectArgs, Output, OutputArgs, display_bytes};
use crate::cli::CliError;

#[derive(Args, Debug)]
pub struct LeaseArgs {
    #[command(subcommand)]
    pub command: LeaseCommand,
    #[command(flatten)]
    pub connect: ConnectArgs,
    #[command(flatten)]
    pub output: OutputArgs,
}

#[derive(Subcommand, Debug)]
pub enum LeaseCommand {
    /// Grant a lease that lives TTL seconds without a keep-alive (2 to
    /// 604800). Prints its id; attach keys with `phxkv put --lease ID`.
    Grant {
        /// Seconds without a keep-alive before the lease expires (10, or
        /// 10s, 2m).
        #[arg(value_parser = crate::cli::parse_ttl)]
        ttl: u64,
        /// Ask for this id (1 to 2^53-1) instead of a random one.
        #[arg(long)]
        id: Option<u64>,
    },
    /// Renew a lease every third of its TTL until Ctrl-C (exit 1 once it is
    /// gone), or once with --once.
    Keepalive {
        /// The lease to renew.
        id: u64,
        /// Renew once, print the time left, and exit.
        #[arg(long)]
        once: bool,
    },
    /// Revoke a lease now: its keys are deleted with it.
    Revoke {
        /// The lease to revoke.
        id: u64,
    },
    /// Show a lease's TTL and the time it has left, and with --keys the keys
    /// attached to it. With -o json: the API's answer (keys base64), plus
    /// `keys_utf8`, each key as text or null when it is not UTF-8.
    Get {
        /// The lease to show.
        id: u64,
        /// Also list the keys attached to it (refused unless the token may
        /// read them all).
        #[arg(long)]
        keys: bool,
    },
    /// List the leases. With auth on: those granted with your token, or
    /// every lease for an admin (the cluster token or an admin role)
    List,
}

/// Renews lease `id` every third of its TTL, printing each renewal,
/// until it is gone (exit 1) or Ctrl-C.
async fn keep_alive_printing(client: &Client, id: u64, ttl_secs: u64) -> Result<(), CliError> {
    let interval = Duration::from_millis(ttl_secs.saturating_mul(1000) / 3);
    let mut last_ok = Instant::now();
    loop {
        let sent = Instant::now();
        match client.api().keep_alive_once(id).await {
            Ok(status) => {
                last_ok = sent;
                super::write_line(&format!(
                    "lease {id} renewed: {} s left",
                    status.remaining_ms / 1000
                ))?;
                tokio::time::sleep(interval).await;
            }
            Err(e) if e.is_not_found() => {
                return Err(CliError::NotFound(format!("lease {id} is gone: {e}")));
            }
            Err(e) => {
                if last_ok.elapsed() >= Duration::from_secs(ttl_secs) {
                    return Err(CliError::NotFound(format!(
                        "lease {id} could not be renewed for its whole TTL ({e}); it may have expired"
                    )));
                }
                tracing::debug!(error = %e, "keep-alive failed; retrying");
                tokio::time::sleep(Duration::from_millis(500).min(interval)).await;
            }
        }
    }
}

pub async fn run(args: LeaseArgs) -> Result<(), CliError> {
    let client = Client::new(&args.connect)?;
    let format = args.output.format();
    match args.command {
        LeaseCommand::Grant { ttl, id } => {
            let g = client.api().grant(ttl, id).await?;
            match format {
                Output::Json => super::print_json(&g),
                _ => super::write_line(&format!(
                    "lease {} granted with TTL {}s (revision {})",
                    g.id, g.ttl_secs, g.revision
                )),
            }
        }
        LeaseCommand::Keepalive { id, once } => {
            let status = client.api().keep_alive_once(id).await?;
            if once {
                return match format {
                    Output::Json => super::print_json(&status),
                    _ => super::write_line(&format!(
                        "lease {id} renewed: {} s left",
                        status.remaining_ms / 1000
                    )),
                };
            }
            tokio::select! {
                () = crate::cli::wait_for_signal() => Ok(()),
                r = keep_alive_printing(&client, id, status.ttl_secs) => r,
            }
        }
        LeaseCommand::Revoke { id } => {
            let r = client.api().revoke(id).await?;
            match format {
                Output::Json => super::print_json(&r),
                _ => super::write_line(&format!(
                    "lease {id} revoked at revision {}; {} deleted",
                    r.revision,
                    crate::text::count(r.deleted, "key")
                )),
            }
        }
        LeaseCommand::Get { id, keys } => {
            let s = client.api().lease(id, keys).await?;
            match format {
                Output::Json => {
                    // The API's answer, with text copies of the keys as
                    // `list -o json` gives them (null where not UTF-8).
                    let mut json = serde_json::to_value(&s)
                        .map_err(|e| CliError::Fatal(format!("cannot format JSON: {e}")))?;
                    if s.keys.is_some() {
                        let text: Vec<Option<String>> = s
                            .key_bytes()?
                            .into_iter()
                            .map(|k| String::from_utf8(k).ok())
                            .collect();
                        json["keys_utf8"] = serde_json::json!(text);
                    }
                    super::print_json(&json)
                }
                _ => {
                    super::write_line(&format!(
                        "lease {} TTL {}s, {:.1}s left, granted at revision {}",
                        s.id,
                        s.ttl_secs,
                        s.remaining_ms as f64 / 1000.0,
                        s.granted_revision
                    ))?;
                    for key in s.key_bytes()? {
                        super::write_line(&display_bytes(&key))?;
                    }
                    Ok(())
                }
            }
        }
        LeaseCommand::List => {
            let mut all = Vec::new();
            let mut after = 0;
            loop {
                let page = client.api().leases(after, 1000).await?;
                after = page.leases.last().map_or(after, |l| l.id);
                all.extend(page.leases);
                if !page.more {
                    break;
                }
            }
            match format {
                Output::Json => super::print_json(&all),
                Output::Table => {
                    let rows: Vec<Vec<String>> = all
                        .iter()
                        .map(|l| {
                            vec![
                                l.id.to_string(),
                                l.ttl_secs.to_string(),
                                l.granted_revision.to_string(),
                            ]
                        })
                        .collect();
                    super::write_out(
                        super::render_table(&["ID", "TTL", "GRANTED AT"], &rows).as_bytes(),
                    )
                }
                Output::Text => {
                    for l in &all {
                        super::write_line(&format!("{} ttl={}s", l.id, l.ttl_secs))?;
                    }
                    Ok(())
                }
            }
        }
    }
}

#[derive(Args, Debug)]
pub struct LockArgs {
    /// The lock's name (holders' keys live under NAME/).
    pub name: String,
    /// The command to run while holding the lock, after `--`. It gets
    /// PHXKV_LOCK_KEY, PHXKV_LOCK_LEASE and PHXKV_FENCING_TOKEN in its
    /// environment; phxkv exits with its exit code and releases the lock.
    /// Without a command, phxkv prints the lock's key and fencing token and
    /// holds the lock until Ctrl-C. SIGTERM is passed on to the command,
    /// and the lock released once the command exits.
    #[arg(last = true, value_name = "COMMAND")]
    pub command: Vec<String>,
    /// The TTL of the lease that holds the lock, in seconds: if this process
    /// dies, the lock is free again that long after its last keep-alive.
    #[arg(long, default_value_t = 10, value_name = "SECS", value_parser = crate::cli::parse_ttl)]
    pub ttl: u64,
    /// Give up (exit 1) if the lock is not acquired within this long, like
    /// 30s or 5m; waits for ever when left out.
    #[arg(long, value_parser = crate::cli::parse_duration, value_name = "DURATION")]
    pub wait: Option<Duration>,
    #[command(flatten)]
    pub connect: ConnectArgs,
}

pub async fn run_lock(args: LockArgs) -> Result<(), CliError> {
    if args.name.is_empty() {
        return Err(CliError::Usage("the lock needs a name".into()));
    }
    let client = Client::new(&args.connect)?;
    let lease = client.api().grant(args.ttl, None).await?;
    let mut keeper = client.api().keep_alive(&[(lease.id, lease.ttl_secs)]);
    let outcome = hold(&client, &args, lease.id, &mut keeper).await;
    drop(keeper);
    // Revoking the lease releases the lock (its key goes with it). A lease
    // that could not be kept alive is gone, or about to be: asking the
    // cluster that could not renew it would only hold up the exit.
    if !matches!(outcome, Err(Held::Lost(_)))
        && let Err(e) = client.api().revoke(lease.id).await
    {
        tracing::debug!(error = %e, "revoking the lock's lease failed; it expires on its own");
    }
    match outcome {
        Ok(0) => Ok(()),
        Ok(code) => Err(CliError::Child(code)),
        Err(Held::Lost(why)) => Err(CliError::Fatal(why)),
        Err(Held::Failed(e)) => Err(e),
    }
}

/// Why holding a lock ended other than with the command's exit code.
enum Held {
    /// The lease could not be kept alive: the lock may be another's now.
    Lost(String),
    Failed(CliError),
}

impl From<CliError> for Held {
    fn from(e: CliError) -> Held {
        Held::Failed(e)
    }
}

impl From<phxkv_client::Error> for Held {
    fn from(e: phxkv_client::Error) -> Held {
        Held::Failed(e.into())
    }
}

/// Sends `signal` to the command: to its process group when it has one of
/// its own (see [`hold`]), so that what it started gets it too.
fn signal_command(pid: Option<u32>, group: bool, signal: rustix::process::Signal) {
    let Some(pid) = pid
        .and_then(|p| i32::try_from(p).ok())
        .and_then(rustix::process::Pid::from_raw)
    else {
        return;
    };
    let sent = if group {
        rustix::process::kill_process_group(pid, signal)
    } else {
        rustix::process::kill_process(pid, signal)
    };
    if let Err(e) = sent {
        tracing::debug!(error = %e, ?signal, "signalling the command failed");
    }
}

/// The exit code a command's end gives `phxkv lock`: its own, or 128 and
/// the number of the signal that ended it, as a shell reports it.
fn exit_code_of(status: std::process::ExitStatus) -> u8 {
    use std::os::unix::process::ExitStatusExt as _;
    match (status.code(), status.signal()) {
        (Some(code), _) => u8::try_from(code).unwrap_or(1),
        (None, Some(signal)) => u8::try_from(128 + signal).unwrap_or(1),
        (None, None) => 1,
    }
}

/// Acquires the lock, then runs the command (or waits for Ctrl-C or
/// SIGTERM) while the lease lives.
///
/// SIGTERM (what systemd, Kubernetes and CI runners send) is handled like
/// Ctrl-C: before the command runs it ends the wait and releases the lock;
/// while the command runs it is passed on to the command, and the lock is
/// kept, and released, only once the command has exited. Left to its
/// default, SIGTERM would end this process at once and leave the command
/// running without the lock, which passes to the next holder after the TTL.
/// SIGINT and SIGHUP are passed on the same way.
///
/// Unless its input is a terminal, the command runs in a process group of
/// its own, so that when the lock is lost everything it started (a script's
/// workers) is killed with it, not only the script. At a terminal it stays
/// in the terminal's group, where it may read the terminal and where
/// Ctrl-C reaches it directly; only the command itself is killed then.
async fn hold(
    client: &Client,
    args: &LockArgs,
    lease: u64,
    keeper: &mut KeepAlive,
) -> Result<u8, Held> {
    let locked = tokio::select! {
        r = client.api().lock(args.name.as_bytes(), lease, args.wait) => r?,
        () = crate::cli::wait_for_signal() => return Ok(130),
        why = keeper.lost() => return Err(Held::Lost(why)),
    };
    let key = display_bytes(&locked.key);
    let Some((program, rest)) = args.command.split_first() else {
        super::write_line(&format!("{key} fencing_token={}", locked.fencing_token))?;
        return tokio::select! {
            () = crate::cli::wait_for_signal() => Ok(0),
            why = keeper.lost() => Err(Held::Lost(format!("lock lost: {why}"))),
        };
    };
    // Listening before the command starts, so that no signal finds this
    // process without a handler while the command runs.
    use tokio::signal::unix::{SignalKind, signal};
    let listen = |kind: SignalKind, name: &str| {
        signal(kind).map_err(|e| CliError::Fatal(format!("cannot handle {name}: {e}")))
    };
    let mut terminate = listen(SignalKind::terminate(), "SIGTERM")?;
    let mut interrupt = listen(SignalKind::interrupt(), "SIGINT")?;
    let mut hangup = listen(SignalKind::hangup(), "SIGHUP")?;
    let own_group = !std::io::IsTerminal::is_terminal(&std::io::stdin());
    let mut command = tokio::process::Command::new(program);
    command
        .args(rest)
        .env("PHXKV_LOCK_KEY", &key)
        .env("PHXKV_LOCK_LEASE", lease.to_string())
        .env("PHXKV_FENCING_TOKEN", locked.fencing_token.to_string())
        .kill_on_drop(true);
    if own_group {
        command.process_group(0);
    }
    let child = command.spawn();
    let mut child = match child {
        Ok(child) => child,
        Err(e) => {
            // As a shell says it: 127 for a command not found, 126 for one
            // that cannot be run.
            crate::cli::tell!("phxkv: cannot run {program}: {e}");
            return Ok(if e.kind() == std::io::ErrorKind::NotFound {
                127
            } else {
                126
            });
        }
    };
    use rustix::process::Signal;
    loop {
        // Passed on; the lock is held until the command exits. A signal
        // that can no longer arrive waits for ever.
        let pass_on = tokio::select! {
            status = child.wait() => {
                let status = status.map_err(|e| CliError::Fatal(format!("waiting for {program}: {e}")))?;
                return Ok(exit_code_of(status));
            }
            why = keeper.lost() => {
                // The lock may pass to another holder now: stop the command
                // and everything it started, at once.
                signal_command(child.id(), own_group, Signal::KILL);
                let _ = child.kill().await;
                return Err(Held::Lost(format!(
                    "lock lost while {program} ran, so it was stopped: {why}"
                )));
            }
            Some(()) = terminate.recv() => Signal::TERM,
            Some(()) = hangup.recv() => Signal::HUP,
            // At a terminal, Ctrl-C reached the command already.
            Some(()) = interrupt.recv() => {
                if !own_group {
                    continue;
                }
                Signal::INT
            }
        };
        signal_command(child.id(), own_group, pass_on);
    }
}
