//! `phxkv watch`: prints changes under a prefix as they happen, one line
//! each, until interrupted. A dropped stream is resumed, on any endpoint,
//! from the revision after the last one printed.

use clap::{Args, ValueEnum};
use phxkv_client::{WatchEvent, WatchKind, WatchOptions};
use serde::{Deserialize, Serialize};

use super::http::Client;
use super::{ConnectArgs, KvJson, PrefixArgs, display_bytes, display_word, write_line};
use crate::cli::CliError;

const AFTER_HELP: &str = "\
Each change prints one line. Ctrl-C stops watching.
Output (-o):
  text  PUT key value rev=R  or  DELETE key rev=R; keys and values that are
        not printable UTF-8, and keys with spaces, print as `b64:` and their
        base64 (the value runs to the last ` rev=`)
  json  one JSON object per line (NDJSON), the API's watch event:
        {\"type\": \"put\"|\"delete\", \"revision\": R, \"key\": base64,
         \"key_utf8\": text, \"value\": base64, \"value_utf8\": text,
         \"version\": N, \"create_revision\": R, \"mod_revision\": R}
        *_utf8 only when the bytes are UTF-8";

/// How `watch` prints each change.
#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum WatchOutput {
    /// One line per change (see below).
    Text,
    /// One JSON object per line (NDJSON).
    Json,
}

#[derive(Args, Debug)]
#[command(after_help = AFTER_HELP)]
pub struct WatchArgs {
    #[command(flatten)]
    pub prefix: PrefixArgs,
    /// Replay changes from revision R on before the live ones (default:
    /// only changes made after the watch starts).
    #[arg(long, value_name = "R")]
    pub start_revision: Option<u64>,
    /// How to print each change: text or json (described below).
    #[arg(
        short = 'o',
        long = "output",
        value_enum,
        default_value = "text",
        value_name = "FORMAT"
    )]
    pub output: WatchOutput,
    #[command(flatten)]
    pub connect: ConnectArgs,
}

/// The API's watch event, as `-o json` prints it.
#[derive(Debug, Serialize, Deserialize)]
struct WatchEventJson {
    #[serde(rename = "type")]
    kind: String,
    revision: u64,
    #[serde(flatten)]
    kv: KvJson,
}

impl From<&WatchEvent> for WatchEventJson {
    fn from(ev: &WatchEvent) -> WatchEventJson {
        WatchEventJson {
            kind: match ev.kind {
                WatchKind::Put => "put",
                WatchKind::Delete => "delete",
            }
            .into(),
            revision: ev.revision,
            kv: KvJson::from_bytes(
                &ev.kv.key,
                &ev.kv.value,
                ev.kv.version,
                ev.kv.create_revision,
                ev.kv.mod_revision,
            ),
        }
    }
}

/// Formats one change as the line the command prints.
fn format_event(ev: &WatchEvent, output: WatchOutput) -> Result<String, CliError> {
    if output == WatchOutput::Json {
        return serde_json::to_string(&WatchEventJson::from(ev))
            .map_err(|e| CliError::Fatal(format!("cannot format JSON: {e}")));
    }
    // The key as one word, so that the line reads back: `PUT <key> <value
    // to the last " rev="> rev=<n>`.
    let key = display_word(&ev.kv.key);
    Ok(match ev.kind {
        WatchKind::Delete => format!("DELETE {key} rev={}", ev.revision),
        WatchKind::Put => {
            let value = display_bytes(&ev.kv.value);
            format!("PUT {key} {value} rev={}", ev.revision)
        }
    })
}

pub async fn run(args: WatchArgs) -> Result<(), CliError> {
    let client = Client::new(&args.connect)?;
    let opts = WatchOptions {
        prefix: args.prefix.into_bytes(),
        start_revision: args.start_revision,
    };
    tokio::select! {
        r = watch(&client, opts, args.output) => r,
        _ = tokio::signal::ctrl_c() => Ok(()),
    }
}

async fn watch(client: &Client, opts: WatchOptions, output: WatchOutput) -> Result<(), CliError> {
    let mut w = client
        .api()
        .watch(opts)
        .await?
        .on_resume(|why| crate::cli::tell!("phxkv: watch interrupted ({why}); resuming"));
    loop {
        let ev = w.next().await?;
        write_line(&format_event(&ev, output)?)?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_format_as_one_line() {
        let ev = WatchEvent {
            kind: WatchKind::Put,
            revision: 9,
            kv: phxkv_client::Kv {
                key: b"a".to_vec(),
                value: b"on".to_vec(),
                version: 1,
                create_revision: 9,
                mod_revision: 9,
            },
        };
        assert_eq!(
            format_event(&ev, WatchOutput::Text).ok().as_deref(),
            Some("PUT a on rev=9")
        );
        // A key with a space prints as one word, so the line reads back.
        let spaced = WatchEvent {
            kv: phxkv_client::Kv {
                key: b"a b".to_vec(),
                value: b"c d".to_vec(),
                ..ev.kv.clone()
            },
            ..ev.clone()
        };
        assert_eq!(
            format_event(&spaced, WatchOutput::Text).ok().as_deref(),
            Some("PUT b64:YSBi c d rev=9")
        );
        let line = format_event(&ev, WatchOutput::Json).unwrap_or_default();
        assert!(!line.contains('\n'), "{line}");
        let v: serde_json::Value = serde_json::from_str(&line).unwrap_or_default();
        assert_eq!(
            (v["type"].as_str(), v["revision"].as_u64()),
            (Some("put"), Some(9))
        );
        assert_eq!(
            (v["key"].as_str(), v["value_utf8"].as_str()),
            (Some("YQ=="), Some("on"))
        );
    }
}
