//! Watches as streams: server-sent events parsed, a broken stream resumed
//! on any endpoint from the revision after the last event seen.

use std::collections::VecDeque;
use std::time::Duration;

use futures_util::Stream;
use serde::Deserialize;

use crate::error::ErrorDetail;
use crate::kv::{Kv, KvWire};
use crate::{ApiError, Client, Error, check, query_value};

/// The server sends a keep-alive comment every 15 seconds; this much
/// silence means the connection is dead even if TCP has not noticed.
const IDLE: Duration = Duration::from_secs(45);

/// The pause before resuming, so that a node that keeps closing the
/// stream at once is not hammered.
const RESUME_PAUSE: Duration = Duration::from_millis(500);

/// A put or a delete.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WatchKind {
    Put,
    Delete,
}

/// One change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WatchEvent {
    pub kind: WatchKind,
    /// The revision of the change.
    pub revision: u64,
    /// The key after a put; for a delete, the key with an empty value.
    pub kv: Kv,
}

#[derive(Debug, Deserialize)]
struct WatchEventWire {
    #[serde(rename = "type")]
    kind: String,
    revision: u64,
    #[serde(flatten)]
    kv: KvWire,
}

#[derive(Debug, Deserialize)]
struct ErrorEvent {
    error: ErrorDetail,
}

/// What to watch and from where.
#[derive(Debug, Clone, Default)]
pub struct WatchOptions {
    /// Only keys starting with this (every key when empty).
    pub prefix: Vec<u8>,
    /// Replay changes from this revision on before the live ones; only
    /// changes after the watch starts when `None`.
    pub start_revision: Option<u64>,
}

/// Told why a watch's stream broke, each time it is resumed.
type ResumeHook = Box<dyn Fn(&str) + Send + Sync>;

/// A watch: [`Watch::next`] gives the changes one by one, in revision
/// order, each once, across reconnections. It ends only with an error
/// that resuming cannot fix (`compacted`, refused by the API).
pub struct Watch {
    client: Client,
    opts: WatchOptions,
    last: Option<u64>,
    resp: Option<reqwest::Response>,
    parser: SseParser,
    ready: VecDeque<WatchEvent>,
    on_resume: Option<ResumeHook>,
}

impl std::fmt::Debug for Watch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Watch")
            .field("opts", &self.opts)
            .field("last", &self.last)
            .finish_non_exhaustive()
    }
}

impl Client {
    /// Watches changes under `opts.prefix`. The first connection is made
    /// here, so a refused watch (no permission, bad revision) fails now.
    pub async fn watch(&self, opts: WatchOptions) -> Result<Watch, Error> {
        let mut w = Watch {
            client: self.clone(),
            opts,
            last: None,
            resp: None,
            parser: SseParser::default(),
            ready: VecDeque::new(),
            on_resume: None,
        };
        w.connect().await?;
        Ok(w)
    }
}

/// How one connection's stream ended.
enum Ended {
    /// Closed, broken, silent too long or stopped by the server in a way
    /// that resuming elsewhere can fix.
    Resumable(String),
    /// Not ended: events are ready and the connection stays.
    Pending,
}

impl Watch {
    /// Calls `f` with the reason each time the stream breaks and is
    /// resumed (the command line prints it).
    pub fn on_resume(mut self, f: impl Fn(&str) + Send + Sync + 'static) -> Watch {
        self.on_resume = Some(Box::new(f));
        self
    }

    /// The revision of the last change given out.
    pub fn last_revision(&self) -> Option<u64> {
        self.last
    }

    async fn connect(&mut self) -> Result<(), Error> {
        let from = self.last.map(|r| r + 1).or(self.opts.start_revision);
        let mut query = String::from("/v1/watch?");
        if !self.opts.prefix.is_empty() {
            query.push_str(&format!("prefix={}&", query_value(&self.opts.prefix)));
        }
        if let Some(r) = from {
            query.push_str(&format!("start_revision={r}"));
        }
        let query = query.trim_end_matches(['&', '?']).to_string();
        let resp = self
            .client
            .send_streaming(|h, base| h.get(format!("{base}{query}")))
            .await?;
        self.resp = Some(check(resp).await?);
        self.parser = SseParser::default();
        Ok(())
    }

    /// The next change; waits for it as long as it takes.
    pub async fn next(&mut self) -> Result<WatchEvent, Error> {
        loop {
            if let Some(ev) = self.ready.pop_front() {
                self.last = Some(ev.revision);
                return Ok(ev);
            }
            if self.resp.is_none() {
                self.connect().await?;
            }
            if let Ended::Resumable(why) = self.fill().await? {
                self.resp = None;
                if self.ready.is_empty() {
                    if let Some(f) = &self.on_resume {
                        f(&why);
                    }
                    tracing::debug!(%why, "watch interrupted; resuming");
                    tokio::time::sleep(RESUME_PAUSE).await;
                }
            }
        }
    }

    /// Reads the current connection until it gives events (put in
    /// `ready`, the connection kept) or ends.
    async fn fill(&mut self) -> Result<Ended, Error> {
        let Some(resp) = self.resp.as_mut() else {
            return Ok(Ended::Resumable("not connected".into()));
        };
        let mut events = Vec::new();
        loop {
            let chunk = match tokio::time::timeout(IDLE, resp.chunk()).await {
                Err(_) => return Ok(Ended::Resumable(format!("no data for {IDLE:?}"))),
                // reqwest's own text ("error decoding response body") says
                // nothing of the cause; the innermost error does.
                Ok(Err(e)) => {
                    return Ok(Ended::Resumable(format!(
                        "the connection broke: {}",
                        crate::error::describe(&e, IDLE)
                    )));
                }
                Ok(Ok(None)) => return Ok(Ended::Resumable("the stream ended".into())),
                Ok(Ok(Some(c))) => c,
            };
            self.parser.push(&chunk, &mut events);
            for ev in events.drain(..) {
                match ev.name.as_str() {
                    "put" | "delete" => {
                        let w: WatchEventWire = serde_json::from_str(&ev.data)
                            .map_err(|e| Error::Decode(format!("a watch event: {e}")))?;
                        self.ready.push_back(WatchEvent {
                            kind: if w.kind == "delete" {
                                WatchKind::Delete
                            } else {
                                WatchKind::Put
                            },
                            revision: w.revision,
                            kv: Kv::try_from(w.kv)?,
                        });
                    }
                    "error" => {
                        let err: ErrorEvent = serde_json::from_str(&ev.data)
                            .map_err(|e| Error::Decode(format!("a watch error: {e}")))?;
                        if err.error.code == "compacted" {
                            return Err(Error::Api(ApiError::from_detail(
                                reqwest::StatusCode::GONE,
                                err.error,
                            )));
                        }
                        return Ok(Ended::Resumable(err.error.message));
                    }
                    _ => {}
                }
            }
            if !self.ready.is_empty() {
                // Hand these out first; the connection stays for more.
                return Ok(Ended::Pending);
            }
        }
    }

    /// The watch as a [`Stream`]; it ends after its first error.
    pub fn into_stream(self) -> impl Stream<Item = Result<WatchEvent, Error>> + Send {
        futures_util::stream::unfold(Some(self), |w| async move {
            let mut w = w?;
            match w.next().await {
                Ok(ev) => Some((Ok(ev), Some(w))),
                Err(e) => Some((Err(e), None)),
            }
        })
    }
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
}
