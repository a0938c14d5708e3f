//! `phxkv put KEY [VALUE|-]`: stores a value, optionally only if the key's
//! version matches (compare-and-swap).

use clap::Args;
use phxkv_client::{PutOptions, Written};
use tokio::io::AsyncReadExt;

use super::http::Client;
use super::{ConnectArgs, KeyArg};
use crate::cli::CliError;

#[derive(Args, Debug)]
pub struct PutArgs {
    /// The key: its text (it may contain `/`), or `b64:` and base64 for any
    /// bytes (as `list` and `watch` print a key that is not plain text).
    pub key: KeyArg,
    /// The value. `-`, or leaving it out, reads the value from stdin as raw
    /// bytes (binary safe, nothing stripped).
    pub value: Option<String>,
    /// Write only if the key's version is N (`0`: only if the key does not
    /// exist). Otherwise nothing changes and the exit code is 1.
    #[arg(long, value_name = "N")]
    pub if_version: Option<u64>,
    /// Attach the key to lease ID (`phxkv lease grant`): it is deleted when
    /// the lease ends. A put without --lease detaches the key from the
    /// lease it had.
    #[arg(long, value_name = "ID")]
    pub lease: Option<u64>,
    #[command(flatten)]
    pub connect: ConnectArgs,
}

/// Stores `value` under `key`.
pub async fn put(
    client: &Client,
    key: &[u8],
    value: Vec<u8>,
    if_version: Option<u64>,
    lease: Option<u64>,
) -> Result<Written, CliError> {
    Ok(client
        .api()
        .put(key, value, PutOptions { if_version, lease })
        .await?)
}

pub async fn run(args: PutArgs) -> Result<(), CliError> {
    let client = Client::new(&args.connect)?;
    let value = match args.value {
        Some(v) if v != "-" => v.into_bytes(),
        _ => {
            if std::io::IsTerminal::is_terminal(&std::io::stdin()) {
                // Otherwise a forgotten value looks like a hang.
                crate::cli::tell!("reading the value from stdin; end it with Ctrl-D");
            }
            let mut buf = Vec::new();
            tokio::io::stdin()
                .read_to_end(&mut buf)
                .await
                .map_err(|e| CliError::Fatal(format!("cannot read the value from stdin: {e}")))?;
            buf
        }
    };
    let r = put(&client, &args.key.0, value, args.if_version, args.lease).await?;
    crate::cli::say!("OK revision={} version={}", r.revision, r.version);
    Ok(())
}
