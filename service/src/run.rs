//! The `main` of a server binary: logs on stderr, a multi-threaded runtime, exit codes.

use std::fmt::Display;
use std::future::Future;
use std::process::ExitCode;

use tracing_subscriber::EnvFilter;

/// Runs `server` to completion. `RUST_LOG` overrides the configured `log` filter. Exit code 1
/// when the server fails (the error is printed as `<name>: <error>`).
pub fn serve<F, E>(name: &'static str, log: &str, server: F) -> ExitCode
where
    F: Future<Output = Result<(), E>>,
    E: Display,
{
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_env("RUST_LOG").unwrap_or_else(|_| EnvFilter::new(log)),
        )
        .with_writer(std::io::stderr)
        .init();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name(name)
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("{name}: cannot start the runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(server) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("{name}: {err}");
            ExitCode::FAILURE
        }
    }
}
