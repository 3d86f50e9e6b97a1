//! `aisle-hub`: the regional hub. `cargo run --release -p aisle-hub` serves on 127.0.0.1:8090
//! with its data in `./data/hub` for region `default`.

use std::net::SocketAddr;
use std::path::PathBuf;

use aisle_hub::config::{Config, Overrides};
use clap::Parser;

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
    aisle_service::run::serve(
        "aisle-hub",
        &config.log.clone(),
        aisle_hub::server::run(config),
    )
}
