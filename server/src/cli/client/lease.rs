//! `phxkv lease ...` (grant, keep alive, revoke, inspect leases) and
//! `phxkv lock NAME [-- COMMAND...]` (hold a lock while a command runs).

use std::time::{Duration, Instant};

use clap::{Args, Subcommand};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use super::http::{self, ApiFailure, Client};
use super::{ConnectArgs, Output, OutputArgs, decode_b64, display_bytes, path_segment};
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
        /// Seconds without a keep-alive before the lease expires.
        ttl: u64,
        /// Ask for this id (1 to 2^53-1) instead of a random one.
        #[arg(long)]
        id: Option<u64>,
    },
    /// Renew a lease every third of its TTL until Ctrl-C (exit 1 once it is
    /// gone), or once with --once.
    Keepalive {
        id: u64,
        #[arg(long)]
        once: bool,
    },
    /// Revoke a lease now: its keys are deleted with it.
    Revoke { id: u64 },
    /// Show a lease's TTL and the time it has left, and with --keys the keys
    /// attached to it.
    Get {
        id: u64,
        #[arg(long)]
        keys: bool,
    },
    /// List the leases.
    List,
}

#[derive(Debug, Deserialize, Serialize)]
struct Granted {
    id: u64,
    ttl_secs: u64,
    revision: u64,
}

#[derive(Debug, Deserialize, Serialize)]
struct LeaseStatus {
    id: u64,
    ttl_secs: u64,
    remaining_ms: u64,
    granted_revision: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    keys: Option<Vec<String>>,
}

#[derive(Debug, Deserialize, Serialize)]
struct Revoked {
    revision: u64,
    deleted: u64,
}

#[derive(Debug, Deserialize, Serialize)]
struct LeaseEntry {
    id: u64,
    ttl_secs: u64,
    granted_revision: u64,
}

#[derive(Debug, Deserialize, Serialize)]
struct LeaseList {
    leases: Vec<LeaseEntry>,
    more: bool,
}

/// Grants a lease of `ttl` seconds.
async fn grant(client: &Client, ttl: u64, id: Option<u64>) -> Result<Granted, CliError> {
    let body = serde_json::json!({ "ttl_secs": ttl, "id": id });
    let resp = client
        .send_write(|h, base| h.post(format!("{base}/v1/leases")).json(&body))
        .await?;
    http::json(resp).await
}

/// Renews lease `id` once.
async fn keep_alive_once(client: &Client, id: u64) -> Result<LeaseStatus, CliError> {
    let resp = client
        .send(|h, base| h.post(format!("{base}/v1/leases/{id}/keepalive")))
        .await?;
    http::json(resp).await
}

/// Revokes lease `id`.
async fn revoke(client: &Client, id: u64) -> Result<Revoked, CliError> {
    let resp = client
        .send(|h, base| h.delete(format!("{base}/v1/leases/{id}")))
        .await?;
    http::json(resp).await
}

/// Renews lease `id` every third of its TTL until it is gone (or, on
/// errors, until it would have expired), telling `lost` when that happens.
/// Never returns otherwise.
async fn keep_alive_forever(
    client: Client,
    id: u64,
    ttl_secs: u64,
    lost: watch::Sender<Option<String>>,
    print: bool,
) {
    let interval = Duration::from_millis(ttl_secs * 1000 / 3);
    let mut last_ok = Instant::now();
    loop {
        match keep_alive_once(&client, id).await {
            Ok(status) => {
                last_ok = Instant::now();
                if print {
                    let _ = super::write_line(&format!(
                        "lease {id} renewed: {} s left",
                        status.remaining_ms / 1000
                    ));
                }
                tokio::time::sleep(interval).await;
            }
            Err(CliError::NotFound(message)) => {
                let _ = lost.send(Some(format!("lease {id} is gone: {message}")));
                return;
            }
            Err(e) => {
                if last_ok.elapsed() >= Duration::from_secs(ttl_secs) {
                    let _ = lost.send(Some(format!(
                        "lease {id} could not be renewed for its whole TTL ({e}); it may have expired"
                    )));
                    return;
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
            let g = grant(&client, ttl, id).await?;
            match format {
                Output::Json => super::print_json(&g),
                _ => super::write_line(&format!(
                    "lease {} granted with TTL {}s (revision {})",
                    g.id, g.ttl_secs, g.revision
                )),
            }
        }
        LeaseCommand::Keepalive { id, once } => {
            let status = keep_alive_once(&client, id).await?;
            if once {
                return match format {
                    Output::Json => super::print_json(&status),
                    _ => super::write_line(&format!(
                        "lease {id} renewed: {} s left",
                        status.remaining_ms / 1000
                    )),
                };
            }
            let (tx, mut rx) = watch::channel(None);
            let keeper = tokio::spawn(keep_alive_forever(
                client.clone(),
                id,
                status.ttl_secs,
                tx,
                true,
            ));
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {
                    keeper.abort();
                    Ok(())
                }
                why = lost_reason(&mut rx) => Err(CliError::NotFound(why)),
            }
        }
        LeaseCommand::Revoke { id } => {
            let r = revoke(&client, id).await?;
            match format {
                Output::Json => super::print_json(&r),
                _ => super::write_line(&format!(
                    "lease {id} revoked at revision {}; {} keys deleted",
                    r.revision, r.deleted
                )),
            }
        }
        LeaseCommand::Get { id, keys } => {
            let query = if keys { "?keys=true" } else { "" };
            let resp = client
                .send(|h, base| h.get(format!("{base}/v1/leases/{id}{query}")))
                .await?;
            let s: LeaseStatus = http::json(resp).await?;
            match format {
                Output::Json => super::print_json(&s),
                _ => {
                    super::write_line(&format!(
                        "lease {} TTL {}s, {:.1}s left, granted at revision {}",
                        s.id,
                        s.ttl_secs,
                        s.remaining_ms as f64 / 1000.0,
                        s.granted_revision
                    ))?;
                    for key in s.keys.iter().flatten() {
                        super::write_line(&display_bytes(&decode_b64("key", key)?))?;
                    }
                    Ok(())
                }
            }
        }
        LeaseCommand::List => {
            let mut all = Vec::new();
            let mut after = 0;
            loop {
                let resp = client
                    .send(|h, base| h.get(format!("{base}/v1/leases?limit=1000&after={after}")))
                    .await?;
                let page: LeaseList = http::json(resp).await?;
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
    /// holds the lock until Ctrl-C.
    #[arg(last = true, value_name = "COMMAND")]
    pub command: Vec<String>,
    /// The TTL of the lease that holds the lock, in seconds: if this process
    /// dies, the lock is free again that long after its last keep-alive.
    #[arg(long, default_value_t = 10, value_name = "SECS")]
    pub ttl: u64,
    /// Give up (exit 1) if the lock is not acquired within this long, like
    /// 30s or 5m; waits for ever when left out.
    #[arg(long, value_parser = crate::cli::parse_duration, value_name = "DURATION")]
    pub wait: Option<Duration>,
    #[command(flatten)]
    pub connect: ConnectArgs,
}

#[derive(Debug, Deserialize)]
struct Locked {
    key: String,
    fencing_token: u64,
}

/// How long one lock request waits on the server before asking again.
const LOCK_POLL_MS: u64 = 30_000;

/// Acquires the lock `name` for `lease`, waiting up to `wait`.
async fn acquire(
    client: &Client,
    name: &str,
    lease: u64,
    wait: Option<Duration>,
) -> Result<Locked, CliError> {
    let path = format!(
        "/v1/lock/{}",
        path_segment(name.as_bytes()).replace("%2F", "/")
    );
    let started = Instant::now();
    loop {
        let left = wait.map(|w| w.saturating_sub(started.elapsed()));
        let wait_ms = left.map_or(LOCK_POLL_MS, |l| (l.as_millis() as u64).min(LOCK_POLL_MS));
        let body = serde_json::json!({ "lease": lease, "wait_ms": wait_ms });
        // No deadline for the whole answer: the server holds it while it
        // waits for the lock.
        let resp = client
            .send_streaming(|h, base| h.post(format!("{base}{path}")).json(&body))
            .await?;
        if resp.status().is_success() {
            return resp
                .json()
                .await
                .map_err(|e| CliError::Fatal(format!("unexpected answer from the server: {e}")));
        }
        let failure = ApiFailure::read(resp).await;
        if failure.code != "lock_held" {
            return Err(failure.into_cli_error());
        }
        if left.is_some_and(|l| l <= Duration::from_millis(wait_ms)) {
            return Err(CliError::NotFound(failure.message));
        }
    }
}

pub async fn run_lock(args: LockArgs) -> Result<(), CliError> {
    if args.name.is_empty() {
        return Err(CliError::Usage("the lock needs a name".into()));
    }
    let client = Client::new(&args.connect)?;
    let lease = grant(&client, args.ttl, None).await?;
    let (lost_tx, mut lost) = watch::channel(None);
    let keeper = tokio::spawn(keep_alive_forever(
        client.clone(),
        lease.id,
        lease.ttl_secs,
        lost_tx,
        false,
    ));
    let outcome = hold(&client, &args, lease.id, &mut lost).await;
    keeper.abort();
    // Revoking the lease releases the lock (its key goes with it).
    if let Err(e) = revoke(&client, lease.id).await {
        tracing::debug!(error = %e, "revoking the lock's lease failed; it expires on its own");
    }
    match outcome? {
        0 => Ok(()),
        code => Err(CliError::Child(code)),
    }
}

/// Acquires the lock, then runs the command (or waits for Ctrl-C) while
/// the lease lives.
async fn hold(
    client: &Client,
    args: &LockArgs,
    lease: u64,
    lost: &mut watch::Receiver<Option<String>>,
) -> Result<u8, CliError> {
    let locked = tokio::select! {
        r = acquire(client, &args.name, lease, args.wait) => r?,
        _ = tokio::signal::ctrl_c() => return Ok(130),
        why = lost_reason(lost) => return Err(CliError::Fatal(why)),
    };
    let key = display_bytes(&decode_b64("key", &locked.key)?);
    let Some((program, rest)) = args.command.split_first() else {
        super::write_line(&format!("{key} fencing_token={}", locked.fencing_token))?;
        return tokio::select! {
            _ = tokio::signal::ctrl_c() => Ok(0),
            why = lost_reason(lost) => Err(CliError::Fatal(format!("lock lost: {why}"))),
        };
    };
    let mut child = tokio::process::Command::new(program)
        .args(rest)
        .env("PHXKV_LOCK_KEY", &key)
        .env("PHXKV_LOCK_LEASE", lease.to_string())
        .env("PHXKV_FENCING_TOKEN", locked.fencing_token.to_string())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| CliError::Usage(format!("cannot run {program}: {e}")))?;
    tokio::select! {
        status = child.wait() => {
            let status = status.map_err(|e| CliError::Fatal(format!("waiting for {program}: {e}")))?;
            Ok(status.code().map_or(1, |c| u8::try_from(c).unwrap_or(1)))
        }
        why = lost_reason(lost) => {
            // The lock may pass to another holder now: stop the command.
            let _ = child.kill().await;
            Err(CliError::Fatal(format!(
                "lock lost while {program} ran, so it was stopped: {why}"
            )))
        }
    }
}

/// Waits until the keep-alive reports the lease lost, and says why; never
/// returns if the keep-alive stopped without a reason.
async fn lost_reason(rx: &mut watch::Receiver<Option<String>>) -> String {
    match rx.wait_for(Option::is_some).await {
        Ok(why) => why.clone().unwrap_or_default(),
        Err(_) => std::future::pending().await,
    }
}
