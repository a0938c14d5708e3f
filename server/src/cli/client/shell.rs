//! `phxkv shell`: an interactive prompt for quick looks and edits, in the
//! manner of classic key-value store clients. One connection pool serves
//! the whole session.

use std::io::{IsTerminal, Write};

use clap::Args;
use tokio::io::{AsyncBufReadExt, BufReader};

use super::http::Client;
use super::{ConnectArgs, delete, display_bytes, get, list, put, status};
use crate::cli::CliError;

const HELP: &str = "\
commands:
  get KEY            print the value (as text, or b64: and base64)
  put KEY VALUE      store VALUE (the rest of the line, spaces included)
  delete KEY         delete the key
  list [PREFIX]      print key<TAB>value for keys starting with PREFIX
  status             show the cluster's members and progress
  help               this text
  quit, exit         leave (so does end of input)
keys are single words; use the other phxkv commands for keys with spaces";

#[derive(Args, Debug)]
#[command(after_help = HELP)]
pub struct ShellArgs {
    #[command(flatten)]
    pub connect: ConnectArgs,
}

/// What the loop does after a line.
enum Next {
    Continue,
    Quit,
}

/// Runs one command line, printing its results.
async fn execute(client: &Client, line: &str) -> Result<Next, CliError> {
    let line = line.trim();
    let (cmd, rest) = match line.split_once(char::is_whitespace) {
        Some((c, r)) => (c, r.trim_start()),
        None => (line, ""),
    };
    let (arg, tail) = match rest.split_once(char::is_whitespace) {
        Some((a, t)) => (a, t.trim_start()),
        None => (rest, ""),
    };
    let need_key = || {
        if arg.is_empty() {
            Err(CliError::Usage(format!("usage: {cmd} KEY")))
        } else {
            Ok(arg.as_bytes())
        }
    };
    match cmd {
        "" => {}
        "help" | "?" => println!("{HELP}"),
        "quit" | "exit" => return Ok(Next::Quit),
        "get" => {
            let f = get::fetch(client, need_key()?, false, None).await?;
            println!("{}", display_bytes(&f.value));
        }
        "put" => {
            let key = need_key()?;
            if tail.is_empty() {
                return Err(CliError::Usage("usage: put KEY VALUE".into()));
            }
            let r = put::put(client, key, tail.as_bytes().to_vec(), None).await?;
            println!("OK revision={} version={}", r.revision, r.version);
        }
        "delete" | "del" => {
            let r = delete::delete(client, need_key()?, None).await?;
            println!("{}", if r.deleted { "deleted" } else { "not found" });
        }
        "list" | "ls" => {
            list::list(client, arg.as_bytes(), None, |kv| {
                println!("{}", list::line(&kv)?);
                Ok(())
            })
            .await?;
        }
        "status" => print!("{}", status::render(&status::fetch(client).await?)),
        other => {
            return Err(CliError::Usage(format!(
                "unknown command {other:?}; type help"
            )));
        }
    }
    Ok(Next::Continue)
}

pub async fn run(args: ShellArgs) -> Result<(), CliError> {
    let client = Client::new(&args.connect)?;
    // Prompts only for a person at a terminal; piped input gets just the
    // answers, so scripts can read them.
    let interactive = std::io::stdin().is_terminal();
    let mut lines = BufReader::new(tokio::io::stdin()).lines();
    loop {
        if interactive {
            print!("phxkv> ");
            let _ = std::io::stdout().flush();
        }
        let line = match lines.next_line().await {
            Ok(Some(l)) => l,
            Ok(None) => {
                if interactive {
                    println!();
                }
                return Ok(());
            }
            Err(e) => return Err(CliError::Fatal(format!("reading input: {e}"))),
        };
        match execute(&client, &line).await {
            Ok(Next::Quit) => return Ok(()),
            Ok(Next::Continue) => {}
            Err(e) => eprintln!("error: {e}"),
        }
    }
}
