//! `phxkv members`: lists the cluster's members and changes them. Changes
//! need the cluster token, sent as a bearer token.

use std::path::PathBuf;

use clap::{Args, Subcommand};
use serde_json::json;

use super::http::{self, Client};
use super::status::{self, ClusterInfo};
use super::{ConnectArgs, path_segment};
use crate::cli::CliError;

#[derive(Args, Debug)]
pub struct MembersArgs {
    #[command(subcommand)]
    pub action: Option<MembersAction>,
    /// A file holding the cluster token (the one the nodes were started
    /// with); needed by add, promote and remove.
    #[arg(
        long,
        env = "PHXKV_CLUSTER_TOKEN_FILE",
        value_name = "PATH",
        global = true
    )]
    pub token_file: Option<PathBuf>,
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
        /// http://10.0.0.4:2380.
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
}

fn read_token(path: Option<&PathBuf>) -> Result<Option<String>, CliError> {
    let Some(path) = path else {
        return Ok(None);
    };
    let text = std::fs::read_to_string(path)
        .map_err(|e| CliError::Usage(format!("--token-file {}: {e}", path.display())))?;
    let token = text.trim();
    if token.is_empty() {
        return Err(CliError::Usage(format!(
            "--token-file {}: the file is empty",
            path.display()
        )));
    }
    Ok(Some(token.to_string()))
}

pub async fn run(args: MembersArgs) -> Result<(), CliError> {
    let action = args.action.unwrap_or(MembersAction::List);
    let mut client = Client::new(&args.connect)?;
    if !matches!(action, MembersAction::List) {
        client = client.with_token(read_token(args.token_file.as_ref())?);
    }
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
    };
    if !done.is_empty() {
        println!("{done}\n");
    }
    print!("{}", status::render(&info));
    Ok(())
}
