//! The `phxkv` binary: see [`phxkv::cli`].

use std::process::ExitCode;

/// mimalloc instead of glibc's malloc: glibc gives each thread that
/// allocates its own 64 MiB arena and keeps what was freed in it, so a
/// replica that had applied 1M keys held eight or more such arenas full of
/// freed request and log memory (RSS 600 MiB for 120 MB of data); mimalloc
/// returns freed pages to the system.
///
/// Built without transparent huge pages (`no_thp`): with them, every time
/// mimalloc reused memory it had returned, the kernel zeroed a whole 2 MiB
/// page for it (`clear_page_erms`, 4.7% of all CPU samples in a 64-client
/// write run, 0.06% without).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let cli = match phxkv::cli::parse_args() {
        Ok(cli) => cli,
        Err(code) => return code,
    };
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    builder.enable_all().thread_name("phxkv");
    if let phxkv::cli::Command::Serve(args) = &cli.command
        && let Some(n) = args.worker_threads
    {
        builder.worker_threads(usize::from(n));
    }
    let runtime = match builder.build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("phxkv: cannot start the async runtime: {e}");
            return ExitCode::from(4);
        }
    };
    match runtime.block_on(phxkv::cli::run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(phxkv::cli::CliError::Child(code)) => ExitCode::from(code),
        Err(phxkv::cli::CliError::OutputClosed) => ExitCode::SUCCESS,
        Err(e) => {
            // Not eprintln!, which panics when stderr is closed.
            use std::io::Write as _;
            let _ = writeln!(std::io::stderr(), "phxkv: {e}");
            ExitCode::from(e.exit_code())
        }
    }
}
