//! `phxkv completion SHELL`: prints a script that teaches a shell the
//! commands and flags of `phxkv`, generated from the same clap definitions
//! the binary parses with, so it never drifts from them.

use std::io::Write;

use clap::{Args, CommandFactory};
use clap_complete::Shell;

use super::{Cli, CliError};

const INSTALL: &str = "\
Install it where the shell looks for completions, for example:
  bash  phxkv completion bash > ~/.local/share/bash-completion/completions/phxkv
  zsh   phxkv completion zsh > ~/.zfunc/_phxkv   (with ~/.zfunc in $fpath, before compinit)
  fish  phxkv completion fish > ~/.config/fish/completions/phxkv.fish
or, for the current bash session only: source <(phxkv completion bash)";

#[derive(Args, Debug)]
#[command(after_help = INSTALL)]
pub struct CompletionArgs {
    /// The shell to complete for.
    #[arg(value_enum)]
    pub shell: Shell,
}

/// The completion script for `shell`.
pub fn script(shell: Shell) -> Vec<u8> {
    let mut out = Vec::new();
    // Into memory first: the generator panics when its writer fails, and
    // stdout may be a closed pipe.
    clap_complete::generate(shell, &mut Cli::command(), "phxkv", &mut out);
    out
}

pub fn run(args: &CompletionArgs) -> Result<(), CliError> {
    let mut stdout = std::io::stdout().lock();
    stdout
        .write_all(&script(args.shell))
        .and_then(|()| stdout.flush())
        .map_err(|e| CliError::Fatal(format!("writing to stdout: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_shell_gets_a_script_naming_the_commands() {
        for shell in [Shell::Bash, Shell::Zsh, Shell::Fish] {
            let text = String::from_utf8(script(shell)).unwrap_or_default();
            assert!(text.contains("phxkv"), "{shell}");
            for cmd in ["get", "shell", "completion"] {
                assert!(text.contains(cmd), "{shell} misses {cmd}");
            }
        }
    }
}
