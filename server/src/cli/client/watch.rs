//! `phxkv watch`: prints changes under a prefix as they happen, one line
//! each, until interrupted. A dropped stream is resumed, on any endpoint,
//! from the revision after the last one printed.

use std::time::Duration;

use clap::{Args, ValueEnum};
use serde::{Deserialize, Serialize};

use super::http::{self, Client};
use super::{ConnectArgs, KvJson, display_bytes, query_value, write_line};
use crate::cli::CliError;

/// The server sends a keep-alive comment every 15 seconds; this much
/// silence means the connection is dead even if TCP has not noticed.
const IDLE: Duration = Duration::from_secs(45);

const AFTER_HELP: &str = "\
Each change prints one line. Ctrl-C stops watching.
Output (-o):
  text  PUT key value rev=R  or  DELETE key rev=R; keys and values that are
        not printable UTF-8 print as `b64:` and their base64
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
    /// Only keys starting with P (all keys when left out).
    #[arg(long, value_name = "P")]
    pub prefix: Option<String>,
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

#[derive(Debug, Serialize, Deserialize)]
struct WatchEvent {
    #[serde(rename = "type")]
    kind: String,
    revision: u64,
    #[serde(flatten)]
    kv: KvJson,
}

#[derive(Debug, Deserialize)]
struct ErrorEvent {
    error: ErrorDetail,
}

#[derive(Debug, Deserialize)]
struct ErrorDetail {
    code: String,
    message: String,
}

/// One server-sent event, assembled from its field lines.
#[derive(Debug, Default, PartialEq)]
struct SseEvent {
    name: String,
    data: String,
}

/// Splits a byte stream into server-sent events. Lines may end in `\n`,
/// `\r\n` or `\r`; a blank line ends an event; `:` lines are comments.
#[derive(Default)]
struct SseParser {
    buf: Vec<u8>,
    current: SseEvent,
    has_data: bool,
}

impl SseParser {
    fn push(&mut self, chunk: &[u8], out: &mut Vec<SseEvent>) {
        self.buf.extend_from_slice(chunk);
        while let Some(end) = self.buf.iter().position(|b| *b == b'\n' || *b == b'\r') {
            // A `\r` at the very end may be the first half of `\r\n`; wait.
            if self.buf[end] == b'\r' && end + 1 == self.buf.len() {
                break;
            }
            let skip = if self.buf[end] == b'\r' && self.buf.get(end + 1) == Some(&b'\n') {
                2
            } else {
                1
            };
            let line: Vec<u8> = self.buf.drain(..end + skip).take(end).collect();
            self.line(&String::from_utf8_lossy(&line), out);
        }
    }

    fn line(&mut self, line: &str, out: &mut Vec<SseEvent>) {
        if line.is_empty() {
            if self.has_data {
                out.push(std::mem::take(&mut self.current));
            }
            self.current = SseEvent::default();
            self.has_data = false;
            return;
        }
        if line.starts_with(':') {
            return;
        }
        let (field, value) = match line.split_once(':') {
            Some((f, v)) => (f, v.strip_prefix(' ').unwrap_or(v)),
            None => (line, ""),
        };
        match field {
            "event" => self.current.name = value.to_string(),
            "data" => {
                if self.has_data {
                    self.current.data.push('\n');
                }
                self.current.data.push_str(value);
                self.has_data = true;
            }
            // `id` repeats the revision that `data` carries; nothing else
            // is needed from the other fields.
            _ => {}
        }
    }
}

/// How one connection's stream ended.
enum Ended {
    /// Closed, broken, silent too long or stopped by the server in a way
    /// that resuming elsewhere can fix.
    Resumable(String),
}

/// Formats one change as the line the command prints.
fn format_event(ev: &WatchEvent, output: WatchOutput) -> Result<String, CliError> {
    if output == WatchOutput::Json {
        return serde_json::to_string(ev)
            .map_err(|e| CliError::Fatal(format!("cannot format JSON: {e}")));
    }
    let key = display_bytes(&ev.kv.key_bytes()?);
    Ok(if ev.kind == "delete" {
        format!("DELETE {key} rev={}", ev.revision)
    } else {
        let value = display_bytes(&ev.kv.value_bytes()?);
        format!("PUT {key} {value} rev={}", ev.revision)
    })
}

/// Reads one connection's events, printing each and remembering the last
/// revision in `last`.
async fn consume(
    mut resp: reqwest::Response,
    last: &mut Option<u64>,
    output: WatchOutput,
) -> Result<Ended, CliError> {
    let mut parser = SseParser::default();
    let mut events = Vec::new();
    loop {
        let chunk = match tokio::time::timeout(IDLE, resp.chunk()).await {
            Err(_) => return Ok(Ended::Resumable(format!("no data for {IDLE:?}"))),
            Ok(Err(e)) => return Ok(Ended::Resumable(e.to_string())),
            Ok(Ok(None)) => return Ok(Ended::Resumable("the stream ended".into())),
            Ok(Ok(Some(c))) => c,
        };
        parser.push(&chunk, &mut events);
        for ev in events.drain(..) {
            match ev.name.as_str() {
                "put" | "delete" => {
                    let we: WatchEvent = serde_json::from_str(&ev.data).map_err(|e| {
                        CliError::Fatal(format!("unexpected watch event from the server: {e}"))
                    })?;
                    write_line(&format_event(&we, output)?)?;
                    *last = Some(we.revision);
                }
                "error" => {
                    let err: ErrorEvent = serde_json::from_str(&ev.data).map_err(|e| {
                        CliError::Fatal(format!("unexpected watch error from the server: {e}"))
                    })?;
                    if err.error.code == "compacted" {
                        return Err(CliError::Fatal(err.error.message));
                    }
                    return Ok(Ended::Resumable(err.error.message));
                }
                _ => {}
            }
        }
    }
}

pub async fn run(args: WatchArgs) -> Result<(), CliError> {
    let client = Client::new(&args.connect)?;
    let prefix = args.prefix.unwrap_or_default();
    tokio::select! {
        r = watch(&client, prefix.as_bytes(), args.start_revision, args.output) => r,
        _ = tokio::signal::ctrl_c() => Ok(()),
    }
}

async fn watch(
    client: &Client,
    prefix: &[u8],
    start: Option<u64>,
    output: WatchOutput,
) -> Result<(), CliError> {
    let mut last: Option<u64> = None;
    loop {
        let from = last.map(|r| r + 1).or(start);
        let mut query = String::from("/v1/watch?");
        if !prefix.is_empty() {
            query.push_str(&format!("prefix={}&", query_value(prefix)));
        }
        if let Some(r) = from {
            query.push_str(&format!("start_revision={r}"));
        }
        let query = query.trim_end_matches(['&', '?']).to_string();
        let resp = client
            .send_streaming(|h, base| h.get(format!("{base}{query}")))
            .await?;
        let resp = http::check(resp).await?;
        let Ended::Resumable(why) = consume(resp, &mut last, output).await?;
        eprintln!("phxkv: watch interrupted ({why}); resuming");
        // Do not hammer a node that keeps closing the stream at once.
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sse_events_are_assembled_across_chunks_and_line_endings() {
        let mut p = SseParser::default();
        let mut out = Vec::new();
        p.push(b": keep-alive\n\nevent: put\r", &mut out);
        assert!(out.is_empty());
        p.push(b"\nid: 7\ndata: {\"a\"\ndata:1}\n", &mut out);
        assert!(out.is_empty());
        p.push(b"\nevent: delete\rdata: x\r\r\n", &mut out);
        assert_eq!(
            out,
            vec![
                SseEvent {
                    name: "put".into(),
                    data: "{\"a\"\n1}".into()
                },
                SseEvent {
                    name: "delete".into(),
                    data: "x".into()
                },
            ]
        );
    }

    #[test]
    fn events_format_as_one_line() {
        let ev: WatchEvent = serde_json::from_str(
            r#"{"type":"put","revision":9,"key":"YQ==","value":"b24=","version":1,"create_revision":9,"mod_revision":9}"#,
        )
        .expect("event");
        assert_eq!(
            format_event(&ev, WatchOutput::Text).ok().as_deref(),
            Some("PUT a on rev=9")
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
            (Some("YQ=="), None)
        );
    }
}
