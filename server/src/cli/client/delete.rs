//! `phxkv delete KEY`: deletes a key, optionally only if its version
//! matches; `phxkv delete --prefix P`: every key under a prefix.

use clap::Args;
use phxkv_client::Deleted;

use super::http::Client;
use super::{ConnectArgs, KeyArg};
use crate::cli::CliError;

#[derive(Args, Debug)]
pub struct DeleteArgs {
    /// The key: its text, or `b64:` and base64 for any
    /// bytes (as `list` and `watch` print a key that is not plain text).
    #[arg(required_unless_present = "prefix")]
    pub key: Option<KeyArg>,
    /// Delete only if the key's version is N; otherwise nothing changes and
    /// the exit code is 1.
    #[arg(long, value_name = "N")]
    pub if_version: Option<u64>,
    /// Delete every key starting with P instead of one key ("" for every
    /// key, with --yes), up to 1000 at one revision per request, repeated
    /// until none is left. Keys written under P meanwhile may be deleted too.
    #[arg(long, value_name = "P", conflicts_with_all = ["key", "if_version"])]
    pub prefix: Option<KeyArg>,
    /// Confirms `--prefix ''`: every key in the cluster is deleted.
    #[arg(long)]
    pub yes: bool,
    #[command(flatten)]
    pub connect: ConnectArgs,
}

/// Deletes `key`; a missing key is not an error here (see `deleted`).
pub async fn delete(
    client: &Client,
    key: &[u8],
    if_version: Option<u64>,
) -> Result<Deleted, CliError> {
    Ok(client.api().delete(key, if_version).await?)
}

pub async fn run(args: DeleteArgs) -> Result<(), CliError> {
    let client = Client::new(&args.connect)?;
    if args.yes && args.prefix.is_none() {
        return Err(CliError::Usage(
            "--yes confirms --prefix '' (every key); a single key needs no confirmation".into(),
        ));
    }
    let key = match (args.key, args.prefix) {
        (_, Some(prefix)) if prefix.0.is_empty() && !args.yes => {
            return Err(CliError::Usage(
                "--prefix '' deletes every key in the cluster; add --yes to confirm".into(),
            ));
        }
        (_, Some(prefix)) => return delete_prefix(&client, &prefix.0).await,
        (Some(key), None) => key,
        (None, None) => return Err(CliError::Usage("give a KEY or --prefix P".into())),
    };
    let r = delete(&client, &key.0, args.if_version).await?;
    if r.deleted {
        crate::cli::say!("deleted");
        Ok(())
    } else {
        Err(CliError::NotFound(format!(
            "key not found: {}",
            super::display_bytes(&key.0)
        )))
    }
}

/// Deletes the keys under `prefix` a round at a time, saying how many so
/// far on stderr while more are left.
async fn delete_prefix(client: &Client, prefix: &[u8]) -> Result<(), CliError> {
    let mut total = 0u64;
    loop {
        let round = client.api().delete_prefix(prefix, None).await?;
        total += round.deleted;
        if !round.more {
            crate::cli::say!(
                "deleted {} (revision {})",
                crate::text::count(total, "key"),
                round.revision
            );
            return Ok(());
        }
        crate::cli::tell!("deleted {} so far...", crate::text::count(total, "key"));
    }
}
