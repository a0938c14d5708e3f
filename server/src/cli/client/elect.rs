//! `phxkv elect NAME PROPOSAL` (campaign and lead until Ctrl-C) and
//! `phxkv elect NAME --listen` (print each new leader), like `etcdctl
//! elect`.

use std::time::Duration;

use clap::Args;
use phxkv_client::Leader;

use super::http::Client;
use super::{ConnectArgs, display_bytes, write_line};
use crate::cli::CliError;

const AFTER_HELP: &str = "\
Campaigning prints `elected NAME/KEY term=R value=PROPOSAL` once this process
leads; it then leads until Ctrl-C or SIGTERM (it resigns) or until its lease is lost
(exit 4). R, the revision at which it became leader, grows with every new
leader: pass it to the services the leader talks to as a fencing token.

With --listen, each change of leader prints one line:
  leader NAME/KEY term=R value=VALUE    or    no leader";

#[derive(Args, Debug)]
#[command(after_help = AFTER_HELP)]
pub struct ElectArgs {
    /// The election's name (candidates' keys live under NAME/).
    pub name: String,
    /// What to announce once elected (an address, say). Required unless
    /// --listen.
    #[arg(required_unless_present = "listen")]
    pub proposal: Option<String>,
    /// Do not campaign: print the leader now and each change of leader,
    /// until Ctrl-C.
    #[arg(long, conflicts_with = "proposal")]
    pub listen: bool,
    /// The TTL of the lease behind the candidacy, in seconds: if this
    /// process dies, another candidate leads that long after its last
    /// keep-alive.
    #[arg(long, default_value_t = 10, value_name = "SECS", value_parser = crate::cli::parse_ttl)]
    pub ttl: u64,
    /// Give up (exit 1) if not elected within this long, like 30s or 5m;
    /// waits for ever when left out.
    #[arg(long, value_parser = crate::cli::parse_duration, value_name = "DURATION")]
    pub wait: Option<Duration>,
    #[command(flatten)]
    pub connect: ConnectArgs,
}

fn describe(leader: &Leader) -> String {
    format!(
        "{} term={} value={}",
        display_bytes(&leader.key),
        leader.term_revision,
        display_bytes(&leader.value)
    )
}

pub async fn run(args: ElectArgs) -> Result<(), CliError> {
    if args.name.is_empty() {
        return Err(CliError::Usage("the election needs a name".into()));
    }
    let client = Client::new(&args.connect)?;
    if args.listen {
        return tokio::select! {
            r = listen(&client, &args.name) => r,
            () = crate::cli::wait_for_signal() => Ok(()),
        };
    }
    let proposal = args.proposal.clone().unwrap_or_default();
    let api = client.api();
    let lease = api.grant(args.ttl, None).await?;
    let mut keeper = api.keep_alive(&[(lease.id, lease.ttl_secs)]);
    let outcome = async {
        let leader = tokio::select! {
            r = api.campaign(args.name.as_bytes(), lease.id, proposal.as_bytes(), args.wait) => r?,
            () = crate::cli::wait_for_signal() => return Ok(()),
            why = keeper.lost() => return Err(CliError::Fatal(why)),
        };
        write_line(&format!("elected {}", describe(&leader)))?;
        tokio::select! {
            () = crate::cli::wait_for_signal() => Ok(()),
            why = keeper.lost() => Err(CliError::Fatal(format!("leadership lost: {why}"))),
        }
    }
    .await;
    drop(keeper);
    // Revoking the lease ends the candidacy (its key goes with it), so the
    // next candidate leads at once rather than after the TTL.
    if let Err(e) = api.revoke(lease.id).await {
        tracing::debug!(error = %e, "revoking the candidacy's lease failed; it expires on its own");
    }
    outcome
}

async fn listen(client: &Client, name: &str) -> Result<(), CliError> {
    let mut observe = client.api().observe(name.as_bytes()).await?;
    loop {
        match observe.next().await? {
            Some(leader) => write_line(&format!("leader {}", describe(&leader)))?,
            None => write_line("no leader")?,
        }
    }
}
