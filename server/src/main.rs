//! The `phxkv` binary: see [`phxkv::cli`].

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = phxkv::cli::Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("phxkv")
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("phxkv: cannot start the async runtime: {e}");
            return ExitCode::from(4);
        }
    };
    match runtime.block_on(phxkv::cli::run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("phxkv: {e}");
            ExitCode::from(e.exit_code())
        }
    }
}
