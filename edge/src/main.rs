//! `aisle-edge`: the store appliance. `cargo run --release` serves on 127.0.0.1:8080 with its
//! data in `./data`.

use std::net::SocketAddr;
use std::path::PathBuf;

use aisle_edge::config::{Config, Overrides};
use clap::Parser;
use tracing_subscriber::EnvFilter;

/// mimalloc instead of the system allocator: the writer thread allocates and frees many small
/// objects per message (Automerge ops, SQLite rows, JSON), and glibc's per-thread arenas kept
/// memory the process no longer used (docs/benchmarks.md has the figures).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser, Debug)]
#[command(
    name = "aisle-edge",
    version,
    about = "Aisle store appliance: customer and staff chat"
)]
struct Cli {
    /// Address to listen on (default 127.0.0.1:8080).
    #[arg(long, value_name = "ADDR")]
    listen: Option<SocketAddr>,
    /// Data directory (default ./data).
    #[arg(long, value_name = "DIR")]
    data: Option<PathBuf>,
    /// TOML configuration file.
    #[arg(long, value_name = "FILE", env = "AISLE_CONFIG")]
    config: Option<PathBuf>,
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let overrides = Overrides {
        listen: cli.listen,
        data: cli.data,
    };
    let config = match Config::load(cli.config.as_deref(), &overrides) {
        Ok(config) => config,
        Err(err) => {
            eprintln!("aisle-edge: {err}");
            return std::process::ExitCode::from(2);
        }
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_env("RUST_LOG").unwrap_or_else(|_| EnvFilter::new(&config.log)),
        )
        .with_writer(std::io::stderr)
        .init();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("aisle-edge")
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("aisle-edge: cannot start the runtime: {err}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match runtime.block_on(aisle_edge::server::run(config)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("aisle-edge: {err}");
            std::process::ExitCode::FAILURE
        }
    }
}
