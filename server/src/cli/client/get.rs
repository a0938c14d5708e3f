//! `phxkv get KEY`: prints a value, raw, or with its metadata as JSON.

use std::io::{IsTerminal, Write};

use clap::Args;
use reqwest::header::HeaderMap;
use serde_json::json;

use super::http::{ApiFailure, Client};
use super::{ConnectArgs, key_path, print_json};
use crate::cli::CliError;

#[derive(Args, Debug)]
pub struct GetArgs {
    /// The key.
    pub key: String,
    /// Read from the answering replica without asking the master: faster,
    /// but possibly stale.
    #[arg(long)]
    pub local: bool,
    /// Wait until the replica has applied revision R before reading (for
    /// reading your own writes with a local read; implies --local).
    #[arg(long, value_name = "R")]
    pub min_revision: Option<u64>,
    /// Print the value (as text and base64) and its versions and revisions
    /// as JSON instead of the raw value.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub connect: ConnectArgs,
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

fn header_u64(headers: &HeaderMap, name: &str) -> u64 {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// Reads `key`; a missing key is [`CliError::NotFound`].
pub async fn fetch(
    client: &Client,
    key: &[u8],
    local: bool,
    min_revision: Option<u64>,
) -> Result<Fetched, CliError> {
    let mut path = key_path(key)?;
    if local || min_revision.is_some() {
        path.push_str("?consistency=local");
        if let Some(r) = min_revision {
            path.push_str(&format!("&min_revision={r}"));
        }
    }
    let resp = client
        .send(|h, base| h.get(format!("{base}{path}")))
        .await?;
    if !resp.status().is_success() {
        let failure = ApiFailure::read(resp).await;
        if failure.code == "key_not_found" {
            return Err(CliError::NotFound(format!(
                "key not found: {}",
                String::from_utf8_lossy(key)
            )));
        }
        return Err(failure.into_cli_error());
    }
    let headers = resp.headers().clone();
    let value = resp
        .bytes()
        .await
        .map_err(|e| CliError::Fatal(format!("reading the value: {e}")))?
        .to_vec();
    Ok(Fetched {
        value,
        version: header_u64(&headers, "x-phxkv-version"),
        create_revision: header_u64(&headers, "x-phxkv-create-revision"),
        mod_revision: header_u64(&headers, "x-phxkv-mod-revision"),
        revision: header_u64(&headers, "x-phxkv-revision"),
    })
}

pub async fn run(args: GetArgs) -> Result<(), CliError> {
    let client = Client::new(&args.connect)?;
    let f = fetch(&client, args.key.as_bytes(), args.local, args.min_revision).await?;
    if args.json {
        use base64::Engine as _;
        return print_json(&json!({
            "key": args.key,
            "value": std::str::from_utf8(&f.value).ok(),
            "value_b64": base64::engine::general_purpose::STANDARD.encode(&f.value),
            "version": f.version,
            "create_revision": f.create_revision,
            "mod_revision": f.mod_revision,
            "revision": f.revision,
        }));
    }
    let mut out = std::io::stdout().lock();
    // Raw bytes so `phxkv get k > file` round-trips exactly; a newline only
    // for a person reading a terminal.
    let mut write = || -> std::io::Result<()> {
        out.write_all(&f.value)?;
        if out.is_terminal() && !f.value.ends_with(b"\n") {
            out.write_all(b"\n")?;
        }
        out.flush()
    };
    write().map_err(|e| CliError::Fatal(format!("writing to stdout: {e}")))
}
