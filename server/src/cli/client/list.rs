//! `phxkv list`: every key under a prefix, following the API's pages.

use clap::Args;
use serde::Deserialize;

use super::http::{self, Client};
use super::{
    ConnectArgs, KvJson, Output, OutputArgs, PrefixArgs, decode_b64, display_bytes, print_json,
    query_value, render_table, table_cell, write_line, write_out,
};
use crate::cli::CliError;

const AFTER_HELP: &str = "\
Output (-o):
  text   one line per key: KEY<TAB>VALUE; keys and values that are not
         printable UTF-8 print as `b64:` and their base64
  json   an array of the API's key objects:
         [{\"key\": base64, \"key_utf8\": text, \"value\": base64, \"value_utf8\": text,
           \"version\": N, \"create_revision\": R, \"mod_revision\": R}, ...]
         *_utf8 only when the bytes are UTF-8
  table  KEY VALUE VERSION MOD_REV, long values cut";

/// The most keys the API returns in one page.
const PAGE: u64 = 1000;

#[derive(Args, Debug)]
#[command(after_help = AFTER_HELP)]
pub struct ListArgs {
    #[command(flatten)]
    pub prefix: PrefixArgs,
    /// Stop after N keys (default: all of them, fetched in pages of 1000).
    #[arg(long, value_name = "N", value_parser = parse_limit)]
    pub limit: Option<u64>,
    #[command(flatten)]
    pub output: OutputArgs,
    #[command(flatten)]
    pub connect: ConnectArgs,
}

#[derive(Debug, Deserialize)]
struct ListPage {
    kvs: Vec<KvJson>,
    more: bool,
    #[serde(default)]
    next_after: Option<String>,
}

/// `--limit`: a count of keys, at least 1.
fn parse_limit(s: &str) -> Result<u64, String> {
    match s.parse::<u64>() {
        Ok(0) => Err("must be at least 1 (leave --limit out for every key)".into()),
        Ok(n) => Ok(n),
        Err(e) => Err(e.to_string()),
    }
}

/// Calls `each` for the keys under `prefix` in byte order, at most `limit`
/// of them, fetching page after page.
pub async fn list(
    client: &Client,
    prefix: &[u8],
    limit: Option<u64>,
    mut each: impl FnMut(KvJson) -> Result<(), CliError>,
) -> Result<(), CliError> {
    let mut remaining = limit;
    let mut after: Option<Vec<u8>> = None;
    loop {
        let page_size = remaining.map_or(PAGE, |r| r.min(PAGE));
        let mut query = format!("/v1/kv?limit={page_size}");
        if !prefix.is_empty() {
            query.push_str(&format!("&prefix={}", query_value(prefix)));
        }
        if let Some(a) = &after {
            query.push_str(&format!("&after={}", query_value(a)));
        }
        let resp = client
            .send(|h, base| h.get(format!("{base}{query}")))
            .await?;
        let page: ListPage = http::json(resp).await?;
        let got = page.kvs.len() as u64;
        for kv in page.kvs {
            each(kv)?;
        }
        if let Some(r) = remaining.as_mut() {
            *r = r.saturating_sub(got);
            if *r == 0 {
                return Ok(());
            }
        }
        match (page.more, page.next_after) {
            (true, Some(next)) if got > 0 => after = Some(decode_b64("next_after", &next)?),
            _ => return Ok(()),
        }
    }
}

/// One `key<TAB>value` line.
pub fn line(kv: &KvJson) -> Result<String, CliError> {
    Ok(format!(
        "{}\t{}",
        display_bytes(&kv.key_bytes()?),
        display_bytes(&kv.value_bytes()?)
    ))
}

/// One table row: key, value (cut), version, mod revision.
fn table_row(kv: &KvJson) -> Result<[String; 4], CliError> {
    Ok([
        table_cell(&kv.key_bytes()?, 60),
        table_cell(&kv.value_bytes()?, 60),
        kv.version.to_string(),
        kv.mod_revision.to_string(),
    ])
}

pub async fn run(args: ListArgs) -> Result<(), CliError> {
    let client = Client::new(&args.connect)?;
    let prefix = args.prefix.into_bytes();
    match args.output.format() {
        Output::Json => {
            let mut all = Vec::new();
            list(&client, &prefix, args.limit, |kv| {
                all.push(kv);
                Ok(())
            })
            .await?;
            print_json(&all)
        }
        Output::Table => {
            // Aligning needs every row first (as JSON needs the whole
            // array); --limit bounds both.
            let mut rows = Vec::new();
            list(&client, &prefix, args.limit, |kv| {
                rows.push(table_row(&kv)?);
                Ok(())
            })
            .await?;
            write_out(render_table(&["KEY", "VALUE", "VERSION", "MOD_REV"], &rows).as_bytes())
        }
        Output::Text => list(&client, &prefix, args.limit, |kv| write_line(&line(&kv)?)).await,
    }
}
