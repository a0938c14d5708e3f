//! The client commands: they talk to a running cluster over its public
//! HTTP/JSON API, failing over between the endpoints they are given.
//!
//! Each command lives in its own module with a `run` entry point; the
//! pieces the interactive shell reuses (fetching, printing) are public too.

pub mod auth;
pub mod backup;
pub mod delete;
pub mod elect;
pub mod get;
pub mod http;
pub mod lease;
pub mod list;
pub mod members;
pub mod put;
pub mod shell;
pub mod status;
pub mod txn;
pub mod watch;

use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use clap::{Args, ValueEnum};
use serde::{Deserialize, Serialize};

use super::CliError;

/// Where the cluster is and how long to wait for it; shared by every
/// client command.
#[derive(Args, Debug, Clone)]
pub struct ConnectArgs {
    /// Client URLs of the cluster's nodes, comma-separated. Requests go to
    /// the first that answers; the next is tried when one is unreachable
    /// (connection refused, timeout) or unavailable (HTTP 503).
    #[arg(
        long,
        env = "PHXKV_ENDPOINTS",
        value_delimiter = ',',
        default_value = "http://127.0.0.1:8080",
        value_name = "URLS",
        global = true
    )]
    pub endpoints: Vec<String>,
    /// How long to wait for one endpoint (connecting and answering) before
    /// trying the next, like 500ms, 10s or 1m. A write answered 504 (its
    /// outcome unknown) is sent again, under the same idempotency key, until
    /// this much time has passed since the first attempt.
    #[arg(
        long,
        default_value = "10s",
        value_parser = super::parse_duration,
        value_name = "DURATION",
        global = true
    )]
    pub timeout: Duration,
    /// CA certificate(s) (PEM) to trust for https:// endpoints, instead of
    /// the system's: the cluster's own CA (in Kubernetes, `ca.crt` of the
    /// cluster's TLS Secret).
    #[arg(long, env = "PHXKV_CACERT", value_name = "PATH", global = true)]
    pub cacert: Option<PathBuf>,
    /// A client certificate (PEM) to present, for clusters that require
    /// one (`phxkv serve --client-cert-auth`); with --key.
    #[arg(
        long,
        env = "PHXKV_CERT",
        value_name = "PATH",
        global = true,
        requires = "client_key"
    )]
    pub cert: Option<PathBuf>,
    /// The private key (PEM) of --cert.
    // Its own id: `get`, `put` and `delete` have a positional named `key`.
    #[arg(
        id = "client_key",
        long = "key",
        env = "PHXKV_KEY",
        value_name = "PATH",
        global = true,
        requires = "cert"
    )]
    pub key: Option<PathBuf>,
    /// A file holding the bearer token to send: an API token
    /// (`phxkv auth token create`) for a cluster started with --auth, or
    /// the cluster token, which is also what membership changes and
    /// backups need. Given here it beats PHXKV_TOKEN (the token itself),
    /// which beats PHXKV_TOKEN_FILE; PHXKV_CLUSTER_TOKEN_FILE is read when
    /// none of them is set.
    #[arg(long, env = "PHXKV_TOKEN_FILE", value_name = "PATH", global = true)]
    pub token_file: Option<PathBuf>,
    /// The bearer token itself, from the environment only: a command line
    /// is visible to every user of the machine, so `--token` given there
    /// is refused (see `parse_from`); it exists for the variable.
    #[arg(
        long,
        env = "PHXKV_TOKEN",
        hide = true,
        hide_env_values = true,
        global = true
    )]
    pub token: Option<String>,
}

impl ConnectArgs {
    /// The bearer token to send, if any: PHXKV_TOKEN, --token-file, or
    /// PHXKV_CLUSTER_TOKEN_FILE, in that order (a --token-file on the
    /// command line has already cleared PHXKV_TOKEN: see `parse_from`).
    pub fn bearer(&self) -> Result<Option<String>, CliError> {
        if let Some(t) = self
            .token
            .as_deref()
            .map(str::trim)
            .filter(|t| !t.is_empty())
        {
            return Ok(Some(t.to_string()));
        }
        if let Some(path) = &self.token_file {
            return read_token_file("--token-file", path).map(Some);
        }
        match std::env::var_os("PHXKV_CLUSTER_TOKEN_FILE") {
            Some(path) if !path.is_empty() => {
                read_token_file("PHXKV_CLUSTER_TOKEN_FILE", std::path::Path::new(&path)).map(Some)
            }
            _ => Ok(None),
        }
    }
}

/// The token in the file at `path` (named `what` in errors), trimmed.
fn read_token_file(what: &str, path: &std::path::Path) -> Result<String, CliError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| CliError::Usage(format!("{what} {}: {e}", path.display())))?;
    let token = text.trim();
    if token.is_empty() {
        return Err(CliError::Usage(format!(
            "{what} {}: the file is empty",
            path.display()
        )));
    }
    Ok(token.to_string())
}

/// How a read or status command prints its answer.
#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum Output {
    /// Lines for reading, as the command's help shows them.
    Text,
    /// One JSON document with the API's field names; keys and values in
    /// base64, with `key_utf8` and `value_utf8` copies when they are UTF-8.
    Json,
    /// Aligned columns under a header, for reading.
    Table,
}

/// `-o/--output`, shared by the commands that print data.
#[derive(Args, Debug, Clone)]
pub struct OutputArgs {
    /// How to print the answer: text, json (the API's document, for
    /// scripts) or table.
    #[arg(
        short = 'o',
        long = "output",
        value_enum,
        default_value = "text",
        value_name = "FORMAT",
        global = true
    )]
    pub output: Output,
    /// The same as `-o json`.
    #[arg(long, hide = true, global = true)]
    pub json: bool,
}

impl OutputArgs {
    /// The format asked for; `--json` wins for older scripts.
    pub fn format(&self) -> Output {
        if self.json { Output::Json } else { self.output }
    }
}

/// Writes `bytes` to stdout and flushes, turning a failed write (a closed
/// pipe, a full disk) into an error instead of a panic.
pub fn write_out(bytes: &[u8]) -> Result<(), CliError> {
    let mut out = std::io::stdout().lock();
    out.write_all(bytes)
        .and_then(|()| out.flush())
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::BrokenPipe => CliError::OutputClosed,
            _ => CliError::Fatal(format!("writing to stdout: {e}")),
        })
}

/// Writes one line to stdout (see [`write_out`]).
pub fn write_line(line: &str) -> Result<(), CliError> {
    let mut buf = String::with_capacity(line.len() + 1);
    buf.push_str(line);
    buf.push('\n');
    write_out(buf.as_bytes())
}

/// Lines of cells under a header, each column as wide as its widest cell
/// (counted in characters), two spaces between columns, no trailing blanks.
pub fn render_table<R: AsRef<[String]>>(header: &[&str], rows: &[R]) -> String {
    // Columns are as wide as a terminal shows them: CJK and most emoji
    // take two cells, combining marks none.
    use unicode_width::UnicodeWidthStr as _;
    let mut widths: Vec<usize> = header.iter().map(|h| h.width()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row.as_ref()) {
            *w = (*w).max(cell.width());
        }
    }
    let mut out = String::new();
    let mut push_row = |cells: &mut dyn Iterator<Item = &str>| {
        let line: Vec<String> = cells
            .zip(&widths)
            .map(|(c, w)| format!("{c}{}", " ".repeat(w.saturating_sub(c.width()))))
            .collect();
        out.push_str(line.join("  ").trim_end());
        out.push('\n');
    };
    push_row(&mut header.iter().copied());
    for row in rows {
        push_row(&mut row.as_ref().iter().map(String::as_str));
    }
    out
}

/// Text for a table cell: [`display_bytes`], cut to `max` terminal
/// columns with `…` so that one long value does not push every other
/// column away.
pub fn table_cell(bytes: &[u8], max: usize) -> String {
    use unicode_width::{UnicodeWidthChar as _, UnicodeWidthStr as _};
    let s = display_bytes(bytes);
    if s.width() <= max {
        return s;
    }
    let mut cut = String::new();
    let mut used = 0;
    for c in s.chars() {
        let w = c.width().unwrap_or(0);
        if used + w > max.saturating_sub(1) {
            break;
        }
        used += w;
        cut.push(c);
    }
    cut.push('…');
    cut
}

/// The `/v1/kv/...` path of a key (see [`phxkv_client::key_path`]).
pub fn key_path(key: &[u8]) -> Result<String, CliError> {
    Ok(phxkv_client::key_path(key)?)
}

pub use phxkv_client::{path_segment, query_value};

/// Bytes as one printable token: the text itself when it is UTF-8 without
/// control characters, otherwise `b64:` and the base64. Text that itself
/// starts with `b64:` is encoded too, so the two forms never collide.
pub fn display_bytes(bytes: &[u8]) -> String {
    match std::str::from_utf8(bytes) {
        Ok(s) if !s.starts_with("b64:") && !s.chars().any(char::is_control) => s.to_string(),
        _ => format!("b64:{}", B64.encode(bytes)),
    }
}

/// [`display_bytes`] as one space-free word, for lines whose fields are
/// separated by spaces: text with whitespace is written as `b64:` too.
pub fn display_word(bytes: &[u8]) -> String {
    let shown = display_bytes(bytes);
    if shown.chars().any(char::is_whitespace) {
        format!("b64:{}", B64.encode(bytes))
    } else {
        shown
    }
}

/// A key (or prefix) as given on the command line: the text itself, or,
/// written `b64:` and base64, the bytes that decodes to. It is the form
/// [`display_bytes`] prints, so a key that `list` or `watch` shows can be
/// pasted into `get` or `delete` whatever its bytes. A key that really
/// starts with `b64:` is written in the second form too, as `list` shows it.
#[derive(Clone, PartialEq, Eq)]
pub struct KeyArg(pub Vec<u8>);

impl std::fmt::Debug for KeyArg {
    /// As typed: `KeyArg("app/x")`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("KeyArg")
            .field(&display_bytes(&self.0))
            .finish()
    }
}

impl std::str::FromStr for KeyArg {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.strip_prefix("b64:") {
            // The empty key, or as a prefix every key: too easy to reach
            // by a slip (`delete --prefix b64:$(...)` of an empty result).
            Some("") => Err(
                "\"b64:\" with nothing after it names no bytes; for every key, give the \
                 empty prefix '' instead"
                    .into(),
            ),
            Some(encoded) => B64.decode(encoded).map(KeyArg).map_err(|e| {
                format!(
                    "{s:?} is not b64: followed by base64 ({e}); a key written b64:... \
                     names the key by its bytes, as list prints keys that are not plain text"
                )
            }),
            None => Ok(KeyArg(s.as_bytes().to_vec())),
        }
    }
}

/// The key prefix of `list` and `watch`: `--prefix P`, or `P` alone, the
/// way one would type it first (`phxkv list app/`).
#[derive(clap::Args, Debug)]
pub struct PrefixArgs {
    /// Only keys starting with PREFIX (all keys when left out): text, or
    /// `b64:` and base64 for any bytes. The same as --prefix.
    #[arg(value_name = "PREFIX", conflicts_with = "prefix")]
    at: Option<KeyArg>,
    /// The same as PREFIX.
    #[arg(long, value_name = "P")]
    prefix: Option<KeyArg>,
}

impl PrefixArgs {
    /// The prefix's bytes; empty for every key.
    pub fn into_bytes(self) -> Vec<u8> {
        self.at.or(self.prefix).map(|p| p.0).unwrap_or_default()
    }
}

/// Decodes a base64 field of an API answer.
pub fn decode_b64(field: &str, s: &str) -> Result<Vec<u8>, CliError> {
    B64.decode(s)
        .map_err(|e| CliError::Fatal(format!("the server sent a bad base64 {field}: {e}")))
}

/// A key with its value and bookkeeping, as the API returns it in lists,
/// transactions and watch events.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct KvJson {
    pub key: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_utf8: Option<String>,
    pub value: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value_utf8: Option<String>,
    pub version: u64,
    pub create_revision: u64,
    pub mod_revision: u64,
}

impl KvJson {
    /// The API's form of a key and value: base64, plus text copies when
    /// they are UTF-8.
    pub fn from_bytes(
        key: &[u8],
        value: &[u8],
        version: u64,
        create_revision: u64,
        mod_revision: u64,
    ) -> KvJson {
        let utf8 = |b: &[u8]| std::str::from_utf8(b).ok().map(str::to_owned);
        KvJson {
            key: B64.encode(key),
            key_utf8: utf8(key),
            value: B64.encode(value),
            value_utf8: utf8(value),
            version,
            create_revision,
            mod_revision,
        }
    }

    pub fn key_bytes(&self) -> Result<Vec<u8>, CliError> {
        decode_b64("key", &self.key)
    }

    pub fn value_bytes(&self) -> Result<Vec<u8>, CliError> {
        decode_b64("value", &self.value)
    }
}

/// Prints a JSON document, pretty, on stdout.
pub fn print_json<T: Serialize>(value: &T) -> Result<(), CliError> {
    let mut text = serde_json::to_string_pretty(value)
        .map_err(|e| CliError::Fatal(format!("cannot format JSON: {e}")))?;
    text.push('\n');
    write_out(text.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn list_and_watch_take_their_prefix_as_an_argument_or_a_flag() {
        use clap::Parser;
        let prefix = |argv: &[&str]| -> Result<Vec<u8>, String> {
            match crate::cli::Cli::try_parse_from(argv)
                .map_err(|e| e.to_string())?
                .command
            {
                crate::cli::Command::List(a) => Ok(a.prefix.into_bytes()),
                crate::cli::Command::Watch(a) => Ok(a.prefix.into_bytes()),
                other => panic!("{other:?}"),
            }
        };
        for cmd in ["list", "watch"] {
            assert_eq!(prefix(&["phxkv", cmd, "app/"]).as_deref(), Ok(&b"app/"[..]));
            assert_eq!(
                prefix(&["phxkv", cmd, "--prefix", "app/"]).as_deref(),
                Ok(&b"app/"[..])
            );
            assert_eq!(
                prefix(&["phxkv", cmd, "b64:AP8="]).as_deref(),
                Ok(&[0u8, 255][..])
            );
            assert_eq!(prefix(&["phxkv", cmd]).as_deref(), Ok(&b""[..]));
            let both = prefix(&["phxkv", cmd, "a", "--prefix", "b"]).expect_err("both");
            assert!(both.contains("cannot be used with"), "{both}");
        }
    }

    #[test]
    fn keys_are_encoded_byte_wise_keeping_slashes() {
        assert_eq!(
            key_path(b"users/a b").ok().as_deref(),
            Some("/v1/kv/users/a%20b")
        );
        assert_eq!(
            key_path("é?&#%".as_bytes()).ok().as_deref(),
            Some("/v1/kv/%C3%A9%3F%26%23%25")
        );
        assert!(key_path(b"").is_err());
        assert!(key_path(b"a/../b").is_err());
        assert!(key_path(b"a/..b").is_ok());
    }

    #[test]
    fn bytes_display_as_text_or_base64() {
        assert_eq!(display_bytes(b"hello world"), "hello world");
        assert_eq!(display_word(b"hello world"), "b64:aGVsbG8gd29ybGQ=");
        assert_eq!(display_word(b"app/x"), "app/x");
        assert_eq!(display_word(&[0xff]), "b64:/w==");
        assert_eq!(display_bytes(b"a\tb"), "b64:YQli");
        assert_eq!(display_bytes(&[0xff]), "b64:/w==");
        assert_eq!(display_bytes(b"b64:x"), "b64:YjY0Ong=");
    }

    #[test]
    fn a_key_argument_reads_back_what_display_prints() {
        for bytes in [
            &b"plain"[..],
            b"a\tb",
            &[0xff, 0x00],
            b"b64:x",
            "é".as_bytes(),
        ] {
            let shown = display_bytes(bytes);
            let read: KeyArg = shown.parse().expect("printed keys parse");
            assert_eq!(read.0, bytes, "{shown}");
        }
        let bad = "b64:not base64!".parse::<KeyArg>().expect_err("bad base64");
        assert!(bad.contains("not b64: followed by base64"), "{bad}");
    }

    #[test]
    fn tables_align_columns_by_the_width_a_terminal_shows() {
        let rows = vec![
            vec!["é".to_string(), "1".to_string()],
            vec!["long key".to_string(), String::new()],
            // Two columns each.
            vec!["日本".to_string(), "2".to_string()],
        ];
        assert_eq!(
            render_table(&["KEY", "VALUE"], &rows),
            "KEY       VALUE\né         1\nlong key\n日本      2\n"
        );
        assert_eq!(table_cell(b"abcdef", 4), "abc…");
        assert_eq!(table_cell(b"abcd", 4), "abcd");
        assert_eq!(table_cell("日本語です".as_bytes(), 6), "日本…");
    }

    #[test]
    fn kv_json_has_base64_and_text_copies() {
        let kv = KvJson::from_bytes(b"a key", &[0xff], 1, 2, 3);
        let v = serde_json::to_value(&kv).unwrap_or_default();
        assert_eq!(v["key"], "YSBrZXk=");
        assert_eq!(v["key_utf8"], "a key");
        assert_eq!(v["value"], "/w==");
        assert!(v.get("value_utf8").is_none(), "{v}");
        assert_eq!(
            (v["version"].as_u64(), v["mod_revision"].as_u64()),
            (Some(1), Some(3))
        );
    }
}
