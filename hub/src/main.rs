//! `aisle-hub`: the regional hub. `cargo run --release -p aisle-hub` serves on 127.0.0.1:8090
//! with its data in `./data/hub` for region `default`.

use std::net::SocketAddr;
use std::path::PathBuf;

use aisle_hub::config::{Config, Overrides};
use clap::Parser;
use tracing_subscriber::EnvFilter;

#[derive(Parser, Debug)]
#[command(
    name = "aisle-hub",
    version,
    about = "Aisle regional hub: store sync, enrollment, HQ API"
)]
struct Cli {
    /// Address to listen on (default 127.0.0.1:8090).
    #[arg(long, value_name = "ADDR")]
    listen: Option<SocketAddr>,
    /// Data directory (default ./data/hub).
    #[arg(long, value_name = "DIR")]
    data: Option<PathBuf>,
    /// The region this hub serves (default "default"; set it in production).
    #[arg(long, value_name = "NAME")]
    region: Option<String>,
    /// TOML configuration file.
    #[arg(long, value_name = "FILE", env = "AISLE_HUB_CONFIG")]
    config: Option<PathBuf>,
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let overrides = Overrides {
        listen: cli.listen,
        data: cli.data,
        region: cli.region,
    };
    let config = match Config::load(cli.config.as_deref(), &overrides) {
        Ok(config) => config,
        Err(err) => {
            eprintln!("aisle-hub: {err}");
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
        .thread_name("aisle-hub")
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("aisle-hub: cannot start the runtime: {err}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match runtime.block_on(aisle_hub::server::run(config)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("aisle-hub: {err}");
            std::process::ExitCode::FAILURE
        }
    }
}
