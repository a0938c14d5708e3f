//! `phxkv delete KEY`: deletes a key, optionally only if its version
//! matches.

use clap::Args;
use phxkv_client::Deleted;

use super::http::Client;
use super::{ConnectArgs, KeyArg};
use crate::cli::CliError;

#[derive(Args, Debug)]
pub struct DeleteArgs {
    /// The key: its text, or `b64:` and base64 for any
    /// bytes (as `list` and `watch` print a key that is not plain text).
    pub key: KeyArg,
    /// Delete only if the key's version is N; otherwise nothing changes and
    /// the exit code is 1.
    #[arg(long, value_name = "N")]
    pub if_version: Option<u64>,
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
    let r = delete(&client, &args.key.0, args.if_version).await?;
    if r.deleted {
        crate::cli::say!("deleted");
        Ok(())
    } else {
        crate::cli::say!("not found");
        Err(CliError::NotFound(format!(
            "key not found: {}",
            super::display_bytes(&args.key.0)
        )))
    }
}
