//! `aisle-edge`: the store appliance. `cargo run --release` serves on 127.0.0.1:8080 with its
//! data in `./data`.

use std::net::SocketAddr;
use std::path::PathBuf;

use aisle_edge::config::{Config, Overrides};
use clap::Parser;

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
    /// The region's hub to sync with, e.g. http://hub:8090 (config `hub.url`).
    #[arg(long, value_name = "URL")]
    hub: Option<String>,
    /// One-time enrollment token from the hub's admin (config `hub.enroll_token`).
    #[arg(long, value_name = "TOKEN")]
    enroll: Option<String>,
    /// TOML configuration file.
    #[arg(long, value_name = "FILE", env = "AISLE_CONFIG")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(clap::Subcommand, Debug)]
enum Command {
    /// Classify messages read from stdin, one per line; prints one JSON object per line
    /// (`intent`, `confidence`, `model`) with the model the server would use.
    Classify {
        /// A model file instead of the configured one (`model.path`) or the built-in one.
        #[arg(long, value_name = "FILE")]
        model: Option<PathBuf>,
    },
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let overrides = Overrides {
        listen: cli.listen,
        data: cli.data,
        hub: cli.hub,
        enroll_token: cli.enroll,
    };
    let mut config = match Config::load(cli.config.as_deref(), &overrides) {
        Ok(config) => config,
        Err(err) => {
            eprintln!("aisle-edge: {err}");
            return std::process::ExitCode::from(2);
        }
    };
    if let Some(Command::Classify { model }) = cli.command {
        if model.is_some() {
            config.model.path = model;
        }
        return aisle_edge::intent::classify_lines(&config);
    }
    aisle_service::run::serve(
        "aisle-edge",
        &config.log.clone(),
        aisle_edge::server::run(config),
    )
}
