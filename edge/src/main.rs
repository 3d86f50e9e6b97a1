//! `aisle-edge`: the store appliance. `cargo run --release` serves on 127.0.0.1:8080 with its
//! data in `./data`.

use std::net::SocketAddr;
use std::path::PathBuf;

use aisle_edge::config::{Config, Overrides};
use clap::Parser;

/// mimalloc instead of the system allocator: the writer thread allocates and frees many small
/// objects per message (Automerge ops, SQLite rows, JSON), and glibc's per-thread arenas kept
/// memory the process no longer used; musl's malloc is slower still (docs/benchmarks.md has
/// the figures for both).
#[cfg(feature = "mimalloc")]
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
    #[arg(long, value_name = "DIR", global = true)]
    data: Option<PathBuf>,
    /// The region's hub to sync with, e.g. http://hub:8090 (config `hub.url`).
    #[arg(long, value_name = "URL")]
    hub: Option<String>,
    /// One-time enrollment token from the hub's admin (config `hub.enroll_token`).
    #[arg(long, value_name = "TOKEN")]
    enroll: Option<String>,
    /// TOML configuration file.
    #[arg(long, value_name = "FILE", env = "AISLE_CONFIG", global = true)]
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
    /// Firmware updates of the appliance image (A/B boot slots on `update.boot_dir`).
    #[command(subcommand)]
    Update(UpdateCommand),
    /// The tamper-evident audit log of staff, admin and bot actions.
    #[command(subcommand)]
    Audit(AuditCommand),
}

#[derive(clap::Subcommand, Debug)]
enum AuditCommand {
    /// Check the whole hash chain and its anchor, reading the database read-only (safe while
    /// the server runs). Prints `{entries, ok, head, anchor}`, and on a fault
    /// `first_bad_seq`, `reason` (edited, removed, reordered) and `detail`; exit 1 on a fault,
    /// 2 if the log cannot be read.
    Verify,
}

#[derive(clap::Subcommand, Debug)]
enum UpdateCommand {
    /// Verify a signed bundle and install it into the slot not running, on trial
    /// (`update.boot_tries` boots). Prints `{slot, version, generation}`; exit 2 if refused.
    Install {
        /// The bundle file (`aisle-image sign` makes one).
        file: PathBuf,
        /// Run `update.reboot_command` once installed.
        #[arg(long)]
        reboot: bool,
    },
    /// Print both slots: versions, boot entry states, the running slot, a rollback.
    Status,
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
    if let Some(Command::Update(command)) = cli.command {
        return update(&config, command);
    }
    if let Some(Command::Audit(AuditCommand::Verify)) = cli.command {
        return match aisle_edge::audit::verify_file(&config.database_path()) {
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
                eprintln!("aisle-edge: {err}");
                std::process::ExitCode::from(2)
            }
        };
    }
    aisle_service::run::serve(
        "aisle-edge",
        &config.log.clone(),
        aisle_edge::server::run(config),
    )
}

/// `aisle-edge update …`: runs on the appliance's shell, beside (or instead of) the server.
fn update(config: &Config, command: UpdateCommand) -> std::process::ExitCode {
    use aisle_edge::update::{self, UpdateError};
    let current = update::current_slot(&config.update);
    let (printed, then_reboot) = match command {
        UpdateCommand::Status => (
            update::status_blocking(&config.update, current).and_then(|status| {
                let status = status.ok_or(UpdateError::NoBootDir)?;
                Ok(serde_json::to_string_pretty(&status).expect("a status serialises"))
            }),
            false,
        ),
        UpdateCommand::Install { file, reboot } => (
            update::install_blocking(&config.update, current, &file)
                .map(|outcome| serde_json::to_string(&outcome).expect("an outcome serialises")),
            reboot,
        ),
    };
    match printed {
        Ok(json) => {
            println!("{json}");
            if then_reboot {
                reboot_now(&config.update.reboot_command);
            }
            std::process::ExitCode::SUCCESS
        }
        Err(err @ UpdateError::Failed(_)) => {
            eprintln!("aisle-edge: {err}");
            std::process::ExitCode::FAILURE
        }
        Err(err) => {
            eprintln!("aisle-edge: {err}");
            std::process::ExitCode::from(2)
        }
    }
}

fn reboot_now(command: &[String]) {
    let Some((program, args)) = command.split_first() else {
        return;
    };
    match std::process::Command::new(program).args(args).status() {
        Ok(status) if status.success() => {}
        Ok(status) => eprintln!("aisle-edge: the reboot command exited with {status}"),
        Err(err) => eprintln!("aisle-edge: running the reboot command: {err}"),
    }
}
