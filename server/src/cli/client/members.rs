//! `phxkv members`: lists the cluster's members and changes them. Changes
//! need the cluster token, sent as a bearer token.

use clap::{Args, Subcommand};
use serde::Deserialize;
use serde_json::json;

use super::http::{self, Client};
use super::status::{self, ClusterInfo};
use super::{ConnectArgs, Output, OutputArgs, path_segment, query_value};
use crate::cli::CliError;

#[derive(Args, Debug)]
#[command(after_help = status::JSON_HELP)]
pub struct MembersArgs {
    #[command(subcommand)]
    pub action: Option<MembersAction>,
    /// With `-o json`, the cluster's state after the action is the only
    /// thing on stdout; progress messages go to stderr.
    #[command(flatten)]
    pub output: OutputArgs,
    #[command(flatten)]
    pub connect: ConnectArgs,
}

#[derive(Subcommand, Debug)]
pub enum MembersAction {
    /// List the members (what `phxkv members` alone does).
    List,
    /// Add a member as a learner: it receives the log but does not vote
    /// until promoted. Start the new node first, with --join.
    Add {
        /// A name unique in the cluster (the new node's --id).
        name: String,
        /// Where the other members reach the new node's peer API, like
        /// http://10.0.0.4:8081.
        peer_url: String,
    },
    /// Make a caught-up learner a voter.
    Promote {
        /// The member's name.
        name: String,
    },
    /// Remove a member, voter or learner.
    Remove {
        /// The member's name.
        name: String,
    },
    /// Make a voter the master (a switchover), without waiting out a lease.
    ///
    /// The master hands mastership over as it does before a clean
    /// shutdown, and the command returns once NAME is master. Refused for a
    /// learner, and for a voter the master has not heard from recently or
    /// that is behind. Naming the master changes nothing.
    Transfer {
        /// The member to make master.
        name: String,
    },
    /// Replace a member whose node came back with a new data directory (a
    /// lost volume): remove the old incarnation, add the new one as a
    /// learner, promote it once caught up. Start the node first, with the
    /// same name and flags; it says it is awaiting replacement. Safe to run
    /// again: it does what is left, and nothing to a healthy member.
    Replace {
        /// The member's name.
        name: String,
        /// Where the new node's peer API listens, if not at the member's
        /// peer URL.
        #[arg(long, value_name = "URL")]
        peer_url: Option<String>,
        /// Leave the new incarnation a learner.
        #[arg(long)]
        learner: bool,
        /// Give up after this long if the new node has not caught up.
        #[arg(long, default_value = "10m", value_parser = crate::cli::parse_duration, value_name = "DURATION")]
        wait: std::time::Duration,
    },
}

pub async fn run(args: MembersArgs) -> Result<(), CliError> {
    let action = args.action.unwrap_or(MembersAction::List);
    let format = args.output.format();
    // Progress goes where it does not corrupt a JSON document.
    let say = |line: &str| {
        if format == Output::Json {
            crate::cli::tell!("{line}");
        } else {
            // A closed stdout shows up when the state is printed below.
            let _ = super::write_line(line);
        }
    };
    // Changes need the cluster token (or, with --auth, an admin token):
    // --token-file, PHXKV_TOKEN or PHXKV_CLUSTER_TOKEN_FILE.
    let client = Client::new(&args.connect)?;
    let (done, info): (String, ClusterInfo) = match action {
        MembersAction::List => (String::new(), status::fetch(&client).await?),
        MembersAction::Add { name, peer_url } => {
            let body = json!({ "name": name, "peer_url": peer_url });
            let resp = client
                .send(|h, base| h.post(format!("{base}/v1/cluster/members")).json(&body))
                .await?;
            (
                format!(
                    "added {name} as a learner; once it has caught up: phxkv members promote {name}"
                ),
                http::json(resp).await?,
            )
        }
        MembersAction::Promote { name } => {
            let path = format!(
                "/v1/cluster/members/{}/promote",
                path_segment(name.as_bytes())
            );
            let resp = client
                .send(|h, base| h.post(format!("{base}{path}")))
                .await?;
            (format!("promoted {name} to voter"), http::json(resp).await?)
        }
        MembersAction::Remove { name } => {
            let path = format!("/v1/cluster/members/{}", path_segment(name.as_bytes()));
            let resp = client
                .send(|h, base| h.delete(format!("{base}{path}")))
                .await?;
            (format!("removed {name}"), http::json(resp).await?)
        }
        MembersAction::Transfer { name } => {
            let path = format!(
                "/v1/cluster/members/{}/transfer",
                path_segment(name.as_bytes())
            );
            let resp = client
                .send(|h, base| h.post(format!("{base}{path}")))
                .await?;
            (format!("{name} is master"), http::json(resp).await?)
        }
        MembersAction::Replace {
            name,
            peer_url,
            learner,
            wait,
        } => {
            let done = replace(&client, &name, peer_url.as_deref(), learner, wait, &say).await?;
            (done, status::fetch(&client).await?)
        }
    };
    if !done.is_empty() {
        say(&format!("{done}\n"));
    }
    status::print_info(&info, format)
}

/// What one call of the replace endpoint reports.
#[derive(Debug, Deserialize)]
struct ReplaceReport {
    removed: Option<String>,
    incarnation: String,
    state: String,
    message: String,
}

/// Calls the replace endpoint until it says done, printing each step.
async fn replace(
    client: &Client,
    name: &str,
    peer_url: Option<&str>,
    learner: bool,
    wait: std::time::Duration,
    say: &dyn Fn(&str),
) -> Result<String, CliError> {
    let mut path = format!(
        "/v1/cluster/members/{}/replace?learner={learner}",
        path_segment(name.as_bytes())
    );
    if let Some(url) = peer_url {
        path.push_str(&format!("&peer_url={}", query_value(url.as_bytes())));
    }
    let deadline = std::time::Instant::now() + wait;
    let mut last = String::new();
    loop {
        let resp = client
            .send(|h, base| h.post(format!("{base}{path}")))
            .await?;
        let report: ReplaceReport = http::json(resp).await?;
        if let Some(old) = &report.removed {
            say(&format!("removed incarnation {old} of {name}"));
        }
        if report.state == "done" {
            return Ok(report.message);
        }
        if report.message != last {
            say(&report.message);
            last = report.message.clone();
        }
        if std::time::Instant::now() >= deadline {
            return Err(CliError::Fatal(format!(
                "{name} (incarnation {}) has not caught up after {}; run this again to go on",
                report.incarnation,
                humantime_ish(wait)
            )));
        }
        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
    }
}

fn humantime_ish(d: std::time::Duration) -> String {
    if d.as_secs() >= 60 {
        format!("{}m{}s", d.as_secs() / 60, d.as_secs() % 60)
    } else {
        format!("{}s", d.as_secs())
    }
}
