//! The `db-migrate` binary: parse flags, set up logging, run, turn the outcome into an exit code.

use std::process::ExitCode;
use std::time::Instant;

use db_migrate::cli::Cli;
use db_migrate::{Summary, log};

// The static musl binary (the image's) allocates through mimalloc: with musl's own allocator
// it ran up to 1.9x slower than the glibc build (BENCHMARKS.md, "The static binary").
#[cfg(target_env = "musl")]
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let started = Instant::now();
    // One run, and the process ends: what it read goes back with the exit.
    db_migrate::exit_after_run();
    let cli = match Cli::parse_args(std::env::args_os()) {
        Ok(cli) => cli,
        Err(error) if !error.use_stderr() => {
            // --help and --version: clap's text on stdout, exit 0. Nothing to do if stdout
            // is closed.
            let _ = error.print();
            return ExitCode::SUCCESS;
        }
        Err(error) => return ExitCode::from(log::usage(Cli::usage(&error), started)),
    };
    let output = log::init(cli.log_format.into(), cli.verbose);
    let command = cli.command.name();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| db_migrate::Error::Config(format!("cannot start the runtime: {e}")));
    let (summary, result) = match cli.config().and_then(|config| Ok((config, runtime?))) {
        Ok((config, runtime)) => {
            let (summary, result) = runtime.block_on(db_migrate::run(&config));
            let outcome = |()| config.command.outcome(summary.dry_run, summary.applied);
            let result = result.map(outcome);
            (summary, result)
        }
        Err(error) => (Summary::new(command), Err(error)),
    };
    ExitCode::from(log::finish(&summary, &result, started, output))
}
