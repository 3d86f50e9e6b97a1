//! `aisle-chat`: a tiny customer client for demos and manual checks (docs/protocol.md).
//!
//! Connects to a store's `/ws` as a customer (`hello` with a display name), opens a
//! conversation (`start`), sends each MESSAGE and waits for its `ack`, then prints one line
//! per step on stdout:
//!
//! ```text
//! conversation 01J…
//! ack 01J… seq=1 "do you have this in blue?"
//! ```
//!
//! ```sh
//! aisle-chat --addr 127.0.0.1:8080 --name Lin "do you have this in blue?" "size 42"
//! ```
//!
//! Exits non-zero (with every frame it saw) if the store refuses or does not answer within
//! 10 s.

use std::net::SocketAddr;

use aisle_tests::{Json, Ws, cmid};
use clap::Parser;

#[derive(Parser, Debug)]
#[command(
    name = "aisle-chat",
    about = "Send a few messages to an Aisle store as a customer"
)]
struct Cli {
    /// The store's address (what its --listen says).
    #[arg(long, default_value = "127.0.0.1:8080")]
    addr: SocketAddr,
    /// The customer's display name.
    #[arg(long, default_value = "Demo customer")]
    name: String,
    /// Messages to send, in order.
    messages: Vec<String>,
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    // The client helpers panic with a report of every frame seen; that is the error message.
    let outcome = rt.block_on(async {
        tokio::spawn(async move {
            let label = format!("customer {}", cli.name);
            let mut ws = Ws::connect(cli.addr, &label).await;
            ws.hello_customer(&cli.name).await;
            let started = ws.start(&format!("r-{}", ulid::Ulid::new())).await;
            let conversation = started.str_("conversation_id").to_string();
            println!("conversation {conversation}");
            for body in &cli.messages {
                let ack = ws.send_msg(&conversation, &cmid(), body).await;
                println!(
                    "ack {} seq={} {:?}",
                    ack.str_("message_id"),
                    ack.u64_("seq"),
                    body
                );
            }
            ws.close().await;
        })
        .await
    });
    match outcome {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(_) => std::process::ExitCode::FAILURE,
    }
}
