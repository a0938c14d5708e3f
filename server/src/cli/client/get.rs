//! `phxkv get KEY`: prints a value, raw, or with its metadata as JSON or
//! a table.

use std::io::IsTerminal;

use clap::Args;
use serde::Serialize;

use super::http::Client;
use super::{
    ConnectArgs, KeyArg, KvJson, Output, OutputArgs, print_json, render_table, table_cell,
    write_out,
};
use crate::cli::CliError;

const AFTER_HELP: &str = "\
Output (-o):
  text   the value, byte for byte; at a terminal a newline follows when the
         value does not end with one (never when piped or redirected)
  json   {\"key\": base64, \"key_utf8\": text, \"value\": base64, \"value_utf8\": text,
          \"version\": N, \"create_revision\": R, \"mod_revision\": R, \"revision\": R}
         *_utf8 only when the bytes are UTF-8; revision is the store's
         revision the read reflects
  table  KEY VALUE VERSION CREATE_REV MOD_REV, long values cut";

#[derive(Args, Debug)]
#[command(after_help = AFTER_HELP)]
pub struct GetArgs {
    /// The key: its text, or `b64:` and base64 for any
    /// bytes (as `list` and `watch` print a key that is not plain text).
    pub key: KeyArg,
    /// Read from the answering replica without asking the master: faster,
    /// but possibly stale.
    #[arg(long)]
    pub local: bool,
    /// Wait until the replica has applied revision R before reading (for
    /// reading your own writes with a local read; implies --local).
    #[arg(long, value_name = "R")]
    pub min_revision: Option<u64>,
    #[command(flatten)]
    pub output: OutputArgs,
    #[command(flatten)]
    pub connect: ConnectArgs,
}

/// `get -o json`: the API's key object plus the revision of the read.
#[derive(Debug, Serialize)]
pub struct GetJson {
    #[serde(flatten)]
    pub kv: KvJson,
    pub revision: u64,
}

/// A value with the metadata the API sends in headers.
#[derive(Debug)]
pub struct Fetched {
    pub value: Vec<u8>,
    pub version: u64,
    pub create_revision: u64,
    pub mod_revision: u64,
    pub revision: u64,
}

/// Reads `key`; a missing key is [`CliError::NotFound`].
pub async fn fetch(
    client: &Client,
    key: &[u8],
    local: bool,
    min_revision: Option<u64>,
) -> Result<Fetched, CliError> {
    let local = (local || min_revision.is_some()).then(|| min_revision.unwrap_or(0));
    let read = client.api().read(key, local).await?.ok_or_else(|| {
        CliError::NotFound(format!("key not found: {}", super::display_bytes(key)))
    })?;
    Ok(Fetched {
        value: read.kv.value,
        version: read.kv.version,
        create_revision: read.kv.create_revision,
        mod_revision: read.kv.mod_revision,
        revision: read.revision,
    })
}

/// Whether a newline follows the value: only for a person at a terminal,
/// so the prompt starts on a line of its own, and only when the value does
/// not end with one. Piped or redirected, the value is written byte for
/// byte (`phxkv get k > file` round-trips).
pub fn newline_after(value: &[u8], stdout_is_terminal: bool) -> bool {
    stdout_is_terminal && !value.ends_with(b"\n")
}

pub async fn run(args: GetArgs) -> Result<(), CliError> {
    let client = Client::new(&args.connect)?;
    let key = &args.key.0;
    let f = fetch(&client, key, args.local, args.min_revision).await?;
    match args.output.format() {
        Output::Json => print_json(&GetJson {
            kv: KvJson::from_bytes(key, &f.value, f.version, f.create_revision, f.mod_revision),
            revision: f.revision,
        }),
        Output::Table => write_out(
            render_table(
                &["KEY", "VALUE", "VERSION", "CREATE_REV", "MOD_REV"],
                &[[
                    table_cell(key, 60),
                    table_cell(&f.value, 60),
                    f.version.to_string(),
                    f.create_revision.to_string(),
                    f.mod_revision.to_string(),
                ]],
            )
            .as_bytes(),
        ),
        Output::Text => {
            let mut value = f.value;
            if newline_after(&value, std::io::stdout().is_terminal()) {
                value.push(b'\n');
            }
            write_out(&value)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_newline_follows_the_value_only_at_a_terminal() {
        assert!(newline_after(b"hello", true));
        assert!(!newline_after(b"hello", false));
        assert!(!newline_after(b"two lines\n", true));
        assert!(!newline_after(b"", false));
        assert!(newline_after(b"", true));
    }
}
