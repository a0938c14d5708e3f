//! `phxkv delete KEY`: deletes a key, optionally only if its version
//! matches.

use clap::Args;
use serde::Deserialize;

use super::http::{self, Client};
use super::{ConnectArgs, key_path};
use crate::cli::CliError;

#[derive(Args, Debug)]
pub struct DeleteArgs {
    /// The key.
    pub key: String,
    /// Delete only if the key's version is N; otherwise nothing changes and
    /// the exit code is 1.
    #[arg(long, value_name = "N")]
    pub if_version: Option<u64>,
    #[command(flatten)]
    pub connect: ConnectArgs,
}

/// What a delete did.
#[derive(Debug, Deserialize)]
pub struct DeleteResponse {
    pub deleted: bool,
    pub revision: u64,
}

/// Deletes `key`; a missing key is not an error here (see `deleted`).
pub async fn delete(
    client: &Client,
    key: &[u8],
    if_version: Option<u64>,
) -> Result<DeleteResponse, CliError> {
    let mut path = key_path(key)?;
    if let Some(v) = if_version {
        path.push_str(&format!("?if_version={v}"));
    }
    let resp = client
        .send_write(|h, base| h.delete(format!("{base}{path}")))
        .await?;
    http::json(resp).await
}

pub async fn run(args: DeleteArgs) -> Result<(), CliError> {
    let client = Client::new(&args.connect)?;
    let r = delete(&client, args.key.as_bytes(), args.if_version).await?;
    if r.deleted {
        println!("deleted");
        Ok(())
    } else {
        println!("not found");
        Err(CliError::NotFound(format!("key not found: {}", args.key)))
    }
}
