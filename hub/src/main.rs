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
    #[arg(long, value_name = "DIR", global = true)]
    data: Option<PathBuf>,
    /// The region this hub serves (default "default"; set it in production).
    #[arg(long, value_name = "NAME")]
    region: Option<String>,
    /// The database: a `postgres://user:password@host/db` URL shared by several hub replicas
    /// (default: the SQLite file in the data directory).
    #[arg(long, value_name = "URL", global = true)]
    database: Option<String>,
    /// TOML configuration file.
    #[arg(long, value_name = "FILE", env = "AISLE_HUB_CONFIG", global = true)]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(clap::Subcommand, Debug)]
enum Command {
    /// The tamper-evident audit log of HQ and store actions.
    #[command(subcommand)]
    Audit(AuditCommand),
}

#[derive(clap::Subcommand, Debug)]
enum AuditCommand {
    /// Check the whole hash chain and its anchor, reading the database read-only (safe while
    /// the hub runs). Prints `{entries, ok, head, anchor}`, and on a fault `first_bad_seq`,
    /// `reason` (edited, removed, reordered) and `detail`; exit 1 on a fault, 2 if the log
    /// cannot be read.
    Verify,
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let overrides = Overrides {
        listen: cli.listen,
        data: cli.data,
        region: cli.region,
        database: cli.database,
    };
    let config = match Config::load(cli.config.as_deref(), &overrides) {
        Ok(config) => config,
        Err(err) => {
            eprintln!("aisle-hub: {err}");
            return std::process::ExitCode::from(2);
        }
    };
    if let Some(Command::Audit(AuditCommand::Verify)) = cli.command {
        let verified = match &config.database {
            None => {
                aisle_hub::audit::verify_file(&config.database_path()).map_err(|e| e.to_string())
            }
            Some(url) => tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| e.to_string())
                .and_then(|runtime| {
                    runtime
                        .block_on(aisle_hub::store::postgres::verify_audit(url))
                        .map_err(|e| e.to_string())
                }),
        };
        return match verified {
            Ok(report) => {
                println!(
                    "{}",
                    serde_json::to_string(&report).expect("a report serialises")
                );
                if report.ok {
                    std::process::ExitCode::SUCCESS
                } else {
                    std::process::ExitCode::FAILURE
                }
            }
            Err(err) => {
                eprintln!("aisle-hub: {err}");
                std::process::ExitCode::from(2)
            }
        };
    }
    aisle_service::run::serve(
        "aisle-hub",
        &config.log.clone(),
        aisle_hub::server::run(config),
    )
}
