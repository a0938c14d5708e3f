//! `phxkv shell`: an interactive prompt for quick looks and edits, in the
//! manner of classic key-value store clients. One connection pool serves
//! the whole session.
//!
//! At a terminal the prompt has line editing, a history kept in a file
//! between sessions, and Tab completion of commands and keys (rustyline).
//! With input from a pipe or file it reads plain lines and prints only the
//! answers, so scripts can drive it. Either way a line is split into words
//! the way a shell does it (see [`words`]), so keys may hold spaces.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use clap::Args;
use rustyline::completion::{Completer, Pair};
use rustyline::error::ReadlineError;
use rustyline::highlight::Highlighter;
use rustyline::hint::Hinter;
use rustyline::history::DefaultHistory;
use rustyline::validate::Validator;
use rustyline::{CompletionType, Config, Editor, Helper};
use tokio::io::{AsyncBufReadExt, BufReader};

use super::http::Client;
use super::{
    ConnectArgs, KeyArg, delete, display_bytes, get, list, put, status, write_line, write_out,
};
use crate::cli::CliError;

const HELP: &str = "\
commands:
  get KEY            print the value (as text, or b64: and base64)
  put KEY VALUE      store VALUE: one (quoted) word, or else the rest of
                     the line as typed
  delete KEY         delete the key
  list [PREFIX]      print key<TAB>value for keys starting with PREFIX
  status             show the cluster's members and progress
  help               this text
  quit, exit         leave (so does end of input, or Ctrl-D)
a KEY or PREFIX written b64:BASE64 names any bytes (as list prints them)
quote words with spaces: get \"a key\", get 'a key' or get a\\ key
at a terminal: Tab completes commands and keys, Up and Ctrl-R search the
history; a line starting with a space is kept out of the history
piped input: every line runs, and the exit code is the first failed line's";

/// The most entries the history file keeps; older ones are dropped.
const HISTORY_MAX: usize = 1000;

/// The most keys one Tab press fetches, and how long it may wait for them.
const COMPLETE_KEYS: u64 = 100;
const COMPLETE_WAIT: Duration = Duration::from_secs(2);

/// The commands, for completion.
const COMMANDS: &[&str] = &[
    "get", "put", "delete", "list", "status", "help", "quit", "exit",
];

#[derive(Args, Debug)]
#[command(after_help = HELP)]
pub struct ShellArgs {
    /// Where the prompt keeps its history (default:
    /// $XDG_STATE_HOME/phxkv/history, or ~/.local/state/phxkv/history).
    /// Only used at a terminal; at most 1000 entries are kept.
    #[arg(long, env = "PHXKV_HISTORY_FILE", value_name = "PATH")]
    pub history_file: Option<PathBuf>,
    /// Keep no history file (PHXKV_NO_HISTORY=1 does the same).
    #[arg(
        long,
        env = "PHXKV_NO_HISTORY",
        value_parser = clap::builder::BoolishValueParser::new()
    )]
    pub no_history: bool,
    #[command(flatten)]
    pub connect: ConnectArgs,
}

/// One word of a command line: its text, with quotes and escapes resolved,
/// and the byte offsets in the line where it starts and ends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Word {
    pub text: String,
    pub start: usize,
    pub end: usize,
}

/// A line split into words.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Words {
    pub words: Vec<Word>,
    /// The quote still open at the end of the line, if any; the last word
    /// then holds what follows it.
    pub open_quote: Option<char>,
}

/// Splits a line into words as a POSIX shell does, without its expansions:
/// blanks separate words; `'...'` keeps everything literally; `"..."`
/// keeps everything but `\"` and `\\`, which stand for `"` and `\`; outside
/// quotes a backslash makes the next character literal (a backslash at the
/// very end stays a backslash). Quoted and unquoted parts next to each
/// other form one word: `a" b"` is `a b`.
pub fn words(line: &str) -> Words {
    let mut words = Vec::new();
    let mut current: Option<Word> = None;
    let mut quote: Option<char> = None;
    let mut chars = line.char_indices().peekable();
    while let Some((i, c)) = chars.next() {
        let word = current.get_or_insert_with(|| Word {
            text: String::new(),
            start: i,
            end: i,
        });
        match (quote, c) {
            (None, c) if c.is_whitespace() => {
                if let Some(w) = current.take()
                    && w.start < i
                {
                    words.push(w);
                }
                continue;
            }
            (None, '\'' | '"') => quote = Some(c),
            (None, '\\') => match chars.next() {
                Some((_, next)) => word.text.push(next),
                None => word.text.push('\\'),
            },
            (Some('"'), '\\') => match chars.peek() {
                Some(&(_, next @ ('"' | '\\'))) => {
                    word.text.push(next);
                    chars.next();
                }
                _ => word.text.push('\\'),
            },
            (Some(q), c) if c == q => quote = None,
            (_, c) => word.text.push(c),
        }
        word.end = chars.peek().map_or(line.len(), |&(j, _)| j);
    }
    if let Some(w) = current
        && (w.end > w.start || quote.is_some())
    {
        words.push(w);
    }
    Words {
        words,
        open_quote: quote,
    }
}

/// `s` as one word that [`words`] reads back as `s`: as it is when it has
/// nothing special in it, otherwise in double quotes.
pub fn quote(s: &str) -> String {
    let plain = !s.is_empty()
        && !s
            .chars()
            .any(|c| c.is_whitespace() || matches!(c, '"' | '\'' | '\\'));
    if plain {
        return s.to_string();
    }
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        if matches!(c, '"' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('"');
    out
}

/// A command line, parsed.
#[derive(Debug, PartialEq, Eq)]
enum Line {
    Empty,
    Help,
    Quit,
    Get(String),
    Put(String, String),
    Delete(String),
    List(String),
    Status,
}

/// Parses one line of the shell. `put`'s value is the one word after the
/// key, quotes resolved, or when more follows the rest of the line as typed
/// (`put k hello  world` stores `hello  world`, `put k it's` stores `it's`).
fn parse(line: &str) -> Result<Line, CliError> {
    let parsed = words(line);
    let w = &parsed.words;
    let cmd = w.first().map_or("", |w| w.text.as_str());
    // An open quote is only an error where it spoils a word we need.
    let quote_error = |upto: usize| {
        if parsed.open_quote.is_some() && w.len() <= upto {
            Err(CliError::Usage("unterminated quote".into()))
        } else {
            Ok(())
        }
    };
    let usage = |u: &str| CliError::Usage(format!("usage: {u} (quote keys with spaces)"));
    let one_key = |u: &str| {
        quote_error(usize::MAX)?;
        match w.len() {
            2 if !w[1].text.is_empty() => Ok(w[1].text.clone()),
            _ => Err(usage(u)),
        }
    };
    Ok(match cmd {
        "" if w.is_empty() => Line::Empty,
        "help" | "?" => Line::Help,
        "quit" | "exit" => Line::Quit,
        "get" => Line::Get(one_key("get KEY")?),
        "delete" | "del" => Line::Delete(one_key("delete KEY")?),
        "list" | "ls" => {
            quote_error(usize::MAX)?;
            match w.len() {
                1 => Line::List(String::new()),
                2 => Line::List(w[1].text.clone()),
                _ => return Err(usage("list [PREFIX]")),
            }
        }
        "status" => Line::Status,
        "put" => {
            quote_error(2)?;
            if w.len() < 3 || w[1].text.is_empty() {
                return Err(CliError::Usage("usage: put KEY VALUE".into()));
            }
            let rest = line[w[1].end..].trim();
            let rest_words = words(rest);
            let value = match rest_words.words.as_slice() {
                [only] if rest_words.open_quote.is_none() => only.text.clone(),
                _ => rest.to_string(),
            };
            Line::Put(w[1].text.clone(), value)
        }
        other => {
            return Err(CliError::Usage(format!(
                "unknown command {other:?}; type help"
            )));
        }
    })
}

/// What the loop does after a line.
enum Next {
    Continue,
    Quit,
}

/// A key or prefix typed in the shell, read as on the command line.
fn key_bytes(word: &str) -> Result<Vec<u8>, CliError> {
    word.parse::<KeyArg>().map(|k| k.0).map_err(CliError::Usage)
}

/// Runs one command line, printing its results.
async fn execute(client: &Client, line: &str) -> Result<Next, CliError> {
    match parse(line)? {
        Line::Empty => {}
        Line::Help => write_line(HELP)?,
        Line::Quit => return Ok(Next::Quit),
        Line::Get(key) => {
            let f = get::fetch(client, &key_bytes(&key)?, false, None).await?;
            write_line(&display_bytes(&f.value))?;
        }
        Line::Put(key, value) => {
            let r = put::put(client, &key_bytes(&key)?, value.into_bytes(), None, None).await?;
            write_line(&format!("OK revision={} version={}", r.revision, r.version))?;
        }
        Line::Delete(key) => {
            let bytes = key_bytes(&key)?;
            if !delete::delete(client, &bytes, None).await?.deleted {
                // As `phxkv delete` says it: an error, exit code 1.
                return Err(CliError::NotFound(format!(
                    "key not found: {}",
                    display_bytes(&bytes)
                )));
            }
            write_line("deleted")?;
        }
        Line::List(prefix) => {
            list::list(client, &key_bytes(&prefix)?, None, |kv| {
                write_line(&list::line(&kv)?)
            })
            .await?;
        }
        Line::Status => write_out(status::render(&status::fetch(client).await?).as_bytes())?,
    }
    Ok(Next::Continue)
}

/// Tab completion candidates for `line` with the cursor at byte `pos`:
/// where the replaced text starts, and what may replace it. Command names
/// complete the first word; keys (from `keys`, given the prefix typed so
/// far) complete the argument of get, put, delete and list.
fn complete(line: &str, pos: usize, keys: impl FnOnce(&str) -> Vec<String>) -> (usize, Vec<Pair>) {
    let Some(before) = line.get(..pos) else {
        return (pos, Vec::new());
    };
    let parsed = words(before);
    let mut ws = parsed.words;
    // The cursor after a blank starts a new, empty word.
    let at_new_word = parsed.open_quote.is_none()
        && (before.is_empty() || ws.last().is_none_or(|w| w.end < before.len()));
    if at_new_word {
        ws.push(Word {
            text: String::new(),
            start: pos,
            end: pos,
        });
    }
    let index = ws.len() - 1;
    let current = &ws[index];
    let pairs: Vec<Pair> = match index {
        0 => COMMANDS
            .iter()
            .filter(|c| c.starts_with(current.text.as_str()))
            .map(|c| Pair {
                display: (*c).to_string(),
                replacement: format!("{c} "),
            })
            .collect(),
        1 if matches!(
            ws[0].text.as_str(),
            "get" | "put" | "delete" | "del" | "list" | "ls"
        ) =>
        {
            keys(&current.text)
                .into_iter()
                .filter(|k| k.starts_with(current.text.as_str()))
                .map(|k| Pair {
                    replacement: quote(&k),
                    display: k,
                })
                .collect()
        }
        _ => Vec::new(),
    };
    (current.start, pairs)
}

/// The prompt's helper: completion, and nothing else of rustyline's hooks.
struct ShellHelper {
    client: Arc<Client>,
    runtime: tokio::runtime::Handle,
}

impl ShellHelper {
    /// Up to [`COMPLETE_KEYS`] UTF-8 keys starting with `prefix`; none when
    /// the cluster does not answer within [`COMPLETE_WAIT`].
    fn keys(&self, prefix: &str) -> Vec<String> {
        let mut found = Vec::new();
        let fetch = list::list(&self.client, prefix.as_bytes(), Some(COMPLETE_KEYS), |kv| {
            if let Some(k) = kv.key_utf8 {
                found.push(k);
            }
            Ok(())
        });
        // The prompt runs on a blocking thread, where waiting on the
        // runtime is allowed.
        let answered = self
            .runtime
            .block_on(tokio::time::timeout(COMPLETE_WAIT, fetch));
        match answered {
            Ok(Ok(())) => found,
            _ => Vec::new(),
        }
    }
}

impl Completer for ShellHelper {
    type Candidate = Pair;

    fn complete(
        &self,
        line: &str,
        pos: usize,
        _ctx: &rustyline::Context<'_>,
    ) -> rustyline::Result<(usize, Vec<Pair>)> {
        Ok(complete(line, pos, |prefix| self.keys(prefix)))
    }
}

impl Hinter for ShellHelper {
    type Hint = String;
}
impl Highlighter for ShellHelper {}
impl Validator for ShellHelper {}
impl Helper for ShellHelper {}

/// Where the history lives, or `None` when it is turned off or there is
/// no home to keep it in.
fn history_path(args: &ShellArgs) -> Option<PathBuf> {
    if args.no_history {
        return None;
    }
    if let Some(p) = &args.history_file {
        return Some(p.clone());
    }
    let env_dir = |name: &str| {
        std::env::var_os(name)
            .map(PathBuf::from)
            .filter(|p| p.is_absolute())
    };
    let state = env_dir("XDG_STATE_HOME")
        .or_else(|| env_dir("HOME").map(|h| h.join(".local").join("state")))?;
    Some(state.join("phxkv").join("history"))
}

pub async fn run(args: ShellArgs) -> Result<(), CliError> {
    let client = Client::new(&args.connect)?;
    if std::io::stdin().is_terminal() {
        let history = history_path(&args);
        let runtime = tokio::runtime::Handle::current();
        return tokio::task::spawn_blocking(move || interactive(client, history, runtime))
            .await
            .map_err(|e| CliError::Fatal(format!("the prompt stopped: {e}")))?;
    }
    // Piped input: just the answers, so scripts can read them. Every line
    // runs; the exit code is that of the first line that failed (0 if
    // none did), so a script learns that something went wrong.
    let mut lines = BufReader::new(tokio::io::stdin()).lines();
    let mut first_failure = None;
    loop {
        let line = match lines.next_line().await {
            Ok(Some(l)) => l,
            Ok(None) => break,
            Err(e) => return Err(CliError::Fatal(format!("reading input: {e}"))),
        };
        match execute(&client, &line).await {
            Ok(Next::Quit) => break,
            Ok(Next::Continue) => {}
            Err(CliError::OutputClosed) => return Err(CliError::OutputClosed),
            Err(e) => {
                crate::cli::tell!("error: {e}");
                first_failure.get_or_insert(e.exit_code());
            }
        }
    }
    match first_failure {
        // Said already, line by line: exit with the code, saying nothing more.
        Some(code) => Err(CliError::Child(code)),
        None => Ok(()),
    }
}

/// The prompt at a terminal. Runs on a blocking thread (rustyline waits
/// for keys synchronously) and hands each command to the runtime.
fn interactive(
    client: Client,
    history: Option<PathBuf>,
    runtime: tokio::runtime::Handle,
) -> Result<(), CliError> {
    let setup = |e: ReadlineError| CliError::Fatal(format!("cannot set up the prompt: {e}"));
    let config = Config::builder()
        .max_history_size(HISTORY_MAX)
        .map_err(setup)?
        .history_ignore_dups(true)
        .map_err(setup)?
        .history_ignore_space(true)
        .auto_add_history(true)
        .completion_type(CompletionType::List)
        .build();
    let mut editor: Editor<ShellHelper, DefaultHistory> =
        Editor::with_config(config).map_err(setup)?;
    let client = Arc::new(client);
    editor.set_helper(Some(ShellHelper {
        client: Arc::clone(&client),
        runtime: runtime.clone(),
    }));
    if let Some(path) = &history {
        if let Some(dir) = path.parent()
            && let Err(e) = std::fs::create_dir_all(dir)
        {
            crate::cli::tell!("phxkv: history not kept: {}: {e}", dir.display());
        }
        // A missing file is a first session; anything else is worth a word.
        if path.exists()
            && let Err(e) = editor.load_history(path)
        {
            crate::cli::tell!("phxkv: history not loaded: {}: {e}", path.display());
        }
    }
    let mut save_failed = false;
    loop {
        let line = match editor.readline("phxkv> ") {
            Ok(l) => l,
            // Ctrl-C drops the line being typed, as in a shell.
            Err(ReadlineError::Interrupted) => continue,
            Err(ReadlineError::Eof) => {
                // The shell's own prompt then starts on a line of its own.
                let _ = write_out(b"\n");
                return Ok(());
            }
            Err(e) => return Err(CliError::Fatal(format!("reading input: {e}"))),
        };
        // Saved after every line, so a killed session keeps its history.
        if let Some(path) = &history
            && !save_failed
            && let Err(e) = editor.append_history(path)
        {
            crate::cli::tell!("phxkv: history not saved: {}: {e}", path.display());
            save_failed = true;
        }
        match runtime.block_on(execute(&client, &line)) {
            Ok(Next::Quit) => return Ok(()),
            Ok(Next::Continue) => {}
            Err(e) => crate::cli::tell!("error: {e}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn texts(line: &str) -> Vec<String> {
        words(line).words.into_iter().map(|w| w.text).collect()
    }

    #[test]
    fn words_follow_shell_quoting() {
        assert_eq!(texts("  get  a  "), ["get", "a"]);
        assert_eq!(texts(r#"get "a key""#), ["get", "a key"]);
        assert_eq!(texts("get 'a \"key\"'"), ["get", "a \"key\""]);
        assert_eq!(texts(r"get a\ key"), ["get", "a key"]);
        assert_eq!(
            texts(r#"put k "say \"hi\" \\ \n""#),
            ["put", "k", r#"say "hi" \ \n"#]
        );
        assert_eq!(texts(r#"get a" b"'c'"#), ["get", "a bc"]);
        assert_eq!(texts(r#"get """#), ["get", ""]);
        assert_eq!(texts(r"get a\"), ["get", r"a\"]);
        let open = words(r#"get "a k"#);
        assert_eq!(open.open_quote, Some('"'));
        assert_eq!(open.words[1].text, "a k");
        assert_eq!(open.words[1].start, 4);
    }

    #[test]
    fn quoting_round_trips_through_words() {
        for s in [
            "plain",
            "a key",
            "it's",
            "say \"hi\"",
            r"back\slash",
            "",
            "tab\there",
        ] {
            let line = format!("get {}", quote(s));
            assert_eq!(texts(&line), ["get", s], "{line}");
        }
        assert_eq!(quote("plain"), "plain");
        assert_eq!(quote("a key"), "\"a key\"");
    }

    #[test]
    fn lines_parse_into_commands() {
        let p = |l: &str| parse(l).map_err(|e| e.to_string());
        assert_eq!(p("  "), Ok(Line::Empty));
        assert_eq!(p(r#"get "a key""#), Ok(Line::Get("a key".into())));
        assert_eq!(p("del 'a key'"), Ok(Line::Delete("a key".into())));
        assert_eq!(p("ls users/"), Ok(Line::List("users/".into())));
        assert_eq!(p("put k v"), Ok(Line::Put("k".into(), "v".into())));
        assert_eq!(
            p(r#"put "a key" "a  value""#),
            Ok(Line::Put("a key".into(), "a  value".into()))
        );
        assert_eq!(
            p("put k hello  world "),
            Ok(Line::Put("k".into(), "hello  world".into()))
        );
        assert_eq!(p("put k it's"), Ok(Line::Put("k".into(), "it's".into())));
        assert!(p("get a key").is_err_and(|e| e.contains("quote keys")));
        assert!(p(r#"get "a key"#).is_err_and(|e| e.contains("unterminated")));
        assert!(p("put k").is_err());
        assert!(p("get").is_err());
        assert!(p("bogus").is_err_and(|e| e.contains("unknown command")));
    }

    #[test]
    fn completion_offers_commands_then_quoted_keys() {
        let no_keys = |_: &str| -> Vec<String> { panic!("no keys wanted here") };
        let (start, c) = complete("de", 2, no_keys);
        assert_eq!(start, 0);
        assert_eq!(
            c.iter().map(|p| p.replacement.as_str()).collect::<Vec<_>>(),
            ["delete "]
        );
        let (_, c) = complete("", 0, no_keys);
        assert_eq!(c.len(), COMMANDS.len());

        let keys = |prefix: &str| -> Vec<String> {
            assert_eq!(prefix, "a k");
            vec!["a key".into(), "a kite".into()]
        };
        let (start, c) = complete(r#"get "a k"#, 8, keys);
        assert_eq!(start, 4);
        assert_eq!(
            c.iter().map(|p| p.replacement.as_str()).collect::<Vec<_>>(),
            ["\"a key\"", "\"a kite\""]
        );
        let (start, c) = complete("get ", 4, |p: &str| vec![format!("{p}x")]);
        assert_eq!((start, c[0].replacement.as_str()), (4, "x"));
        let (_, c) = complete("get a b", 7, no_keys);
        assert!(c.is_empty());
        let (_, c) = complete("status x", 8, no_keys);
        assert!(c.is_empty());
    }
}
