//! `aisle-bench`: load generator and benchmarks for `aisle-edge`.
//!
//! Starts its own `aisle-edge` (the binary next to this one, a temporary data directory, a
//! free port, raised frame-rate limits, a known first-admin password) unless `--url` names a
//! running one (then `--user` / `--password` are an admin's credentials). Scenarios:
//!
//! - `throughput`: staff and customers chat over `--conversations` connections; messages per
//!   second that were acked *and* delivered, ack latency p50/p99.
//! - `switch`: a customer switches device onto a conversation of `--history` messages while
//!   `--conversations` chats have light background traffic: hello + `resume after_seq 0` →
//!   `resumed` with the whole history, p50/p99.
//! - `startup`: exec of aisle-edge → first `/healthz` 200 (median of `--runs` on an existing
//!   data directory; the first run on an empty directory separately). Always local.
//! - `all`: the three.
//! - `sync`: against `aisle-hub` instead (its own local hub unless `--url`, which may list
//!   several replicas of one hub, comma-separated, to spread the stores over): `--stores`
//!   simulated stores push conversations over the sync protocol; messages per second the hub
//!   acknowledged, and the catch-up time of a store that wrote `--catchup-messages` offline
//!   (see `aisle_tests::syncbench`).
//! - `crash`: crash safety under load: SIGKILLs `aisle-edge` (or, `--target hub`, the
//!   `aisle-hub` an edge syncs into) at seeded random moments for `--cycles` cycles, restarts
//!   it on the same data and checks that every acked message is there exactly once and every
//!   document loads; exit code 1 when anything was lost or duplicated (see
//!   `aisle_tests::crashbench`).
//! - `inference`: the intent classifier (aisle-models) alone, on one thread: model load time,
//!   per-message classify latency p50/p99 over models/data (see `aisle_tests::inferencebench`).
//!
//! - `connections`: `--count` idle customer connections (hello, start, resume, then idle)
//!   on one server, from several loopback source addresses; connections held (each answers a
//!   `ping`) and the server's resident memory per connection (see `aisle_tests::connbench`).
//!
//! `--json` prints one JSON object per scenario on stdout and nothing else there; progress
//! goes to stderr. `--duration-secs` bounds each measured run.
//!
//! The generator shares the machine's cores with the server, so it stays lean: one tokio
//! runtime, one task per connection with no channels on the message path, borrowed JSON
//! parsing, TCP_NODELAY and 8 KiB WebSocket buffers.

use std::collections::{HashSet, VecDeque};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use aisle_tests::crashbench::{self, CrashBenchOptions, CrashTarget};
use aisle_tests::edge::{ADMIN_PASSWORD, ADMIN_USER, Edge, EdgeOptions};
use aisle_tests::http::{Http, StaffSession};
use aisle_tests::syncbench::{self, SyncBenchOptions};
use anyhow::{Context, anyhow, bail};
use clap::{Args, Parser, Subcommand};
use futures_util::{SinkExt, StreamExt};
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio::sync::{Semaphore, mpsc, watch};
use tokio::time::{Instant, timeout, timeout_at};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

#[derive(Parser, Debug)]
#[command(
    name = "aisle-bench",
    version,
    about = "Load generator and benchmarks for aisle-edge"
)]
struct Cli {
    /// A running server (`http://host:port`); default: start a local aisle-edge. For `sync`,
    /// several hub replicas of one region may be given, separated by commas: the simulated
    /// stores are spread over them in turn.
    #[arg(long, global = true)]
    url: Option<String>,
    /// Admin username on the `--url` server.
    #[arg(long, global = true, default_value = ADMIN_USER)]
    user: String,
    /// Admin password on the `--url` server.
    #[arg(long, global = true)]
    password: Option<String>,
    /// One JSON object per scenario on stdout, nothing else there.
    #[arg(long, global = true)]
    json: bool,
    /// Upper bound of each measured run, in seconds.
    #[arg(long, global = true, default_value_t = 10)]
    duration_secs: u64,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Messages per second acked and delivered, ack latency.
    Throughput(ThroughputArgs),
    /// Device switch: full-history resume latency under background load.
    Switch(SwitchArgs),
    /// Start-up time to the first healthy answer.
    Startup(StartupArgs),
    /// All three scenarios with their defaults (sizes can be given).
    All(AllArgs),
    /// Hub sync: stores pushing conversations into aisle-hub; merged messages/s, catch-up.
    Sync(SyncArgs),
    /// Intent classifier: model load time and classify latency on one thread.
    Inference(InferenceArgs),
    /// Crash safety: SIGKILL under load, restart, every acked message there exactly once.
    Crash(CrashArgs),
    /// Idle connections one server holds, and its resident memory per connection.
    Connections(ConnectionsArgs),
    /// Live settings: time from HQ's push to the version in force at every store.
    Settings(SettingsArgs),
}

#[derive(Args, Debug, Clone)]
struct SettingsArgs {
    /// Stores (aisle-edge processes) enrolled at the hub.
    #[arg(long, default_value_t = 2)]
    stores: usize,
    /// Region capacity pushes from HQ, one after the other.
    #[arg(long, default_value_t = 20)]
    pushes: usize,
}

#[derive(Args, Debug, Clone)]
struct CrashArgs {
    /// Kill-and-restart cycles.
    #[arg(long, default_value_t = 100)]
    cycles: usize,
    /// The process that is killed: `edge` (the store appliance under chat load) or `hub`
    /// (the regional hub a loaded store syncs into).
    #[arg(long, value_enum, default_value_t = CrashTargetArg::Edge)]
    target: CrashTargetArg,
    /// Seed of the random kill moments (printed by every run, to replay it).
    #[arg(long)]
    seed: Option<u64>,
    /// Customers connected at once (each cycle one leaves and a new one starts a chat).
    #[arg(long, default_value_t = 6)]
    customers: usize,
    /// Staff tablets answering their chats.
    #[arg(long, default_value_t = 2)]
    staff: usize,
    /// Unacked sends each client keeps in flight.
    #[arg(long, default_value_t = 4)]
    window: usize,
    /// Shortest delay from the start of a cycle to the kill, in milliseconds.
    #[arg(long, default_value_t = 0)]
    min_delay_ms: u64,
    /// Longest delay from the start of a cycle to the kill, in milliseconds.
    #[arg(long, default_value_t = 1000)]
    max_delay_ms: u64,
    /// Characters per message body (random padding): long enough that documents pass their
    /// compaction threshold during the run, so kills also land in compactions.
    #[arg(long, default_value_t = 2000)]
    body_chars: usize,
    /// Edge target: enroll the edge at a real aisle-hub (never killed) that it syncs with
    /// while it is killed; the hub must then hold every acked message exactly once too.
    #[arg(long)]
    with_hub: bool,
}

#[derive(clap::ValueEnum, Debug, Clone, Copy)]
enum CrashTargetArg {
    Edge,
    Hub,
}

#[derive(Args, Debug, Clone)]
struct ConnectionsArgs {
    /// Customer connections to open and hold.
    #[arg(long, default_value_t = 1000)]
    count: usize,
    /// Loopback source addresses to spread them over (127.0.0.2 upwards; one address has
    /// ~28,000 ephemeral ports).
    #[arg(long, default_value_t = 4)]
    source_addresses: usize,
    /// Connections being set up at once.
    #[arg(long, default_value_t = 256)]
    concurrency: usize,
    /// Seconds every connection stays idle before each is checked with a ping.
    #[arg(long, default_value_t = 0)]
    hold_secs: u64,
    /// Process id of the `--url` server, to read its resident memory.
    #[arg(long)]
    pid: Option<u32>,
}

#[derive(Args, Debug, Clone)]
struct InferenceArgs {
    /// A model file instead of the embedded models/intent.onnx.
    #[arg(long)]
    model: Option<std::path::PathBuf>,
    /// The messages: a models/data directory (`<lang>/<label>.txt`).
    #[arg(long)]
    data: Option<std::path::PathBuf>,
    /// Timed passes over the messages.
    #[arg(long, default_value_t = 5)]
    passes: usize,
    /// Model loads timed (the median is `model_load_ms`).
    #[arg(long, default_value_t = 5)]
    load_runs: usize,
}

#[derive(Args, Debug, Clone)]
struct SyncArgs {
    /// Simulated stores, each with its own sync connection.
    #[arg(long, default_value_t = 100)]
    stores: usize,
    /// Messages the catch-up store writes while offline before it connects.
    #[arg(long, default_value_t = 10_000)]
    catchup_messages: usize,
    /// Conversations the catch-up store spreads them over.
    #[arg(long, default_value_t = 100)]
    catchup_conversations: usize,
    /// Messages per Automerge change while offline.
    #[arg(long, default_value_t = 1)]
    catchup_batch: usize,
    /// Conversations each store writes into (each keeps one sync round going).
    #[arg(long, default_value_t = 10)]
    conversations_per_store: usize,
    /// Messages per Automerge change (one change per round) in the measured window.
    #[arg(long, default_value_t = 10)]
    batch: usize,
}

#[derive(Args, Debug, Clone)]
struct ThroughputArgs {
    /// Conversations, each with a connected customer.
    #[arg(long, default_value_t = 1000)]
    conversations: usize,
    /// Staff accounts, each with one connection.
    #[arg(long, default_value_t = 50)]
    staff: usize,
    /// Unacked sends each client keeps in flight.
    #[arg(long, default_value_t = 8)]
    window: usize,
}

#[derive(Args, Debug, Clone)]
struct SwitchArgs {
    /// Active conversations (with connected customers and light background traffic).
    #[arg(long, default_value_t = 1000)]
    conversations: usize,
    /// Messages in the conversation that switches device.
    #[arg(long, default_value_t = 200)]
    history: usize,
    /// Device switches to measure (fewer if the duration ends first).
    #[arg(long, default_value_t = 200)]
    switches: usize,
    /// Staff accounts serving the background conversations.
    #[arg(long, default_value_t = 20)]
    staff: usize,
    /// Each background customer sends one message per this many milliseconds.
    #[arg(long, default_value_t = 5000)]
    background_interval_ms: u64,
}

#[derive(Args, Debug, Clone)]
struct StartupArgs {
    /// Starts on the existing data directory.
    #[arg(long, default_value_t = 10)]
    runs: usize,
}

#[derive(Args, Debug, Clone)]
struct AllArgs {
    #[arg(long, default_value_t = 1000)]
    conversations: usize,
    #[arg(long, default_value_t = 50)]
    staff: usize,
    #[arg(long, default_value_t = 8)]
    window: usize,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    raise_nofile_limit();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(run(cli))
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let results: Vec<Value> = match &cli.cmd {
        Cmd::Throughput(a) => vec![throughput(&cli, a).await?],
        Cmd::Switch(a) => vec![switch(&cli, a).await?],
        Cmd::Startup(a) => vec![startup(&cli, a).await?],
        Cmd::Inference(a) => vec![aisle_tests::inferencebench::run(
            &aisle_tests::inferencebench::InferenceBenchOptions {
                model: a.model.clone(),
                data_dir: a
                    .data
                    .clone()
                    .unwrap_or_else(aisle_tests::inferencebench::default_data_dir),
                passes: a.passes,
                load_runs: a.load_runs,
            },
        )?],
        Cmd::Settings(a) => {
            if cli.url.is_some() {
                bail!("settings starts its own hub and stores: --url is not supported");
            }
            vec![
                aisle_tests::settingsbench::run(
                    &aisle_tests::settingsbench::SettingsBenchOptions {
                        stores: a.stores,
                        pushes: a.pushes,
                    },
                )
                .await?,
            ]
        }
        Cmd::Connections(a) => vec![
            aisle_tests::connbench::run(&aisle_tests::connbench::ConnBenchOptions {
                url: cli.url.clone(),
                pid: a.pid,
                count: a.count,
                source_addresses: a.source_addresses,
                concurrency: a.concurrency,
                hold: Duration::from_secs(a.hold_secs),
            })
            .await?,
        ],
        Cmd::Sync(a) => {
            let o = SyncBenchOptions {
                url: cli.url.clone(),
                user: cli.user.clone(),
                password: cli.password.clone(),
                stores: a.stores,
                duration: Duration::from_secs(cli.duration_secs.max(1)),
                conversations_per_store: a.conversations_per_store,
                batch: a.batch,
                catchup_messages: a.catchup_messages,
                catchup_conversations: a.catchup_conversations,
                catchup_batch: a.catchup_batch,
            };
            let r = syncbench::run(&o).await?;
            if cli.json {
                println!("{}", r.to_json());
            } else {
                println!("{}", r.to_text(&o));
            }
            return Ok(());
        }
        Cmd::Crash(a) => {
            if cli.url.is_some() {
                bail!("crash starts, kills and restarts its own processes: --url is not supported");
            }
            let o = CrashBenchOptions {
                cycles: a.cycles,
                target: match a.target {
                    CrashTargetArg::Edge => CrashTarget::Edge,
                    CrashTargetArg::Hub => CrashTarget::Hub,
                },
                seed: a.seed,
                customers: a.customers,
                staff: a.staff,
                window: a.window.max(1),
                min_delay_ms: a.min_delay_ms,
                max_delay_ms: a.max_delay_ms,
                body_chars: a.body_chars,
                with_hub: a.with_hub,
            };
            let r = crashbench::run(&o).await?;
            if cli.json {
                println!("{}", r.to_json());
            } else {
                println!("{}", r.to_text());
            }
            if !r.passed() {
                bail!(
                    "crash safety violated (seed {}): {} lost, {} duplicated, {} mismatched, {} unloadable documents",
                    r.seed,
                    r.lost,
                    r.duplicated,
                    r.mismatched,
                    r.unloadable_documents
                );
            }
            return Ok(());
        }
        Cmd::All(a) => {
            let t = throughput(
                &cli,
                &ThroughputArgs {
                    conversations: a.conversations,
                    staff: a.staff,
                    window: a.window,
                },
            )
            .await?;
            emit(&cli, &t);
            let s = switch(
                &cli,
                &SwitchArgs {
                    conversations: a.conversations,
                    history: 200,
                    switches: 200,
                    staff: 20.min(a.staff.max(1)),
                    background_interval_ms: 5000,
                },
            )
            .await?;
            emit(&cli, &s);
            let st = startup(&cli, &StartupArgs { runs: 10 }).await?;
            emit(&cli, &st);
            return Ok(());
        }
    };
    for r in &results {
        emit(&cli, r);
    }
    Ok(())
}

fn emit(cli: &Cli, r: &Value) {
    if cli.json {
        println!("{r}");
        return;
    }
    let f = |k: &str| r[k].as_f64().unwrap_or(f64::NAN);
    match r["scenario"].as_str() {
        Some("throughput") => println!(
            "throughput: {:.0} messages/s acked and delivered ({} acked, {} delivered, {} conversations, {:.1} s); ack latency p50 {:.2} ms, p99 {:.2} ms",
            f("messages_per_sec"),
            r["acked"],
            r["delivered"],
            r["conversations"],
            f("duration_secs"),
            f("ack_p50_ms"),
            f("ack_p99_ms")
        ),
        Some("switch") => println!(
            "switch: {} device switches onto {} messages of history: p50 {:.2} ms, p99 {:.2} ms",
            r["switches"],
            r["history_messages"],
            f("switch_p50_ms"),
            f("switch_p99_ms")
        ),
        Some("startup") => println!(
            "startup: ready after {:.2} ms (median of {} runs, min {:.2}, max {:.2}); first run on an empty data dir {:.2} ms",
            f("ready_ms"),
            r["runs"],
            f("ready_min_ms"),
            f("ready_max_ms"),
            f("first_run_ready_ms")
        ),
        Some("inference") => println!(
            "inference: {} classifications on one thread: p50 {:.1} us, p99 {:.1} us; model load {:.2} ms (median of {})",
            r["messages"],
            f("classify_p50_us"),
            f("classify_p99_us"),
            f("model_load_ms"),
            r["load_runs"]
        ),
        Some("connections") => println!(
            "connections: {} of {} held and answering (each pinged), over {} source addresses; \
             server RSS {:.1} MiB -> {:.1} MiB: {:.0} bytes per connection; connected in {:.1} s",
            r["connections"],
            r["requested"],
            r["source_addresses"],
            f("rss_bytes_before") / 1048576.0,
            f("rss_bytes_after") / 1048576.0,
            f("rss_bytes_per_connection"),
            f("connect_seconds")
        ),
        Some("settings") => println!(
            "settings: {} region pushes from HQ in force at {} stores: p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms after the push; {} connections dropped",
            r["pushes"],
            r["stores"],
            f("apply_p50_ms"),
            f("apply_p99_ms"),
            f("apply_max_ms"),
            r["connections_dropped"]
        ),
        _ => println!("{r}"),
    }
}

macro_rules! progress {
    ($($t:tt)*) => { eprintln!("[aisle-bench] {}", format!($($t)*)) };
}

// ---- the server under test ----------------------------------------------------------------

/// The server the scenario talks to, and the admin session on it.
struct Target {
    http: Http,
    addr: SocketAddr,
    admin: StaffSession,
    edge: Option<Edge>,
}

impl Target {
    async fn new(cli: &Cli) -> anyhow::Result<Target> {
        match &cli.url {
            Some(url) => {
                let hostport = url
                    .trim_start_matches("http://")
                    .trim_end_matches('/')
                    .to_string();
                let addr = tokio::net::lookup_host(&hostport)
                    .await
                    .with_context(|| format!("resolve {hostport}"))?
                    .next()
                    .ok_or_else(|| anyhow!("{hostport} resolves to nothing"))?;
                let http = Http::with_base(format!("http://{hostport}"));
                let password = cli
                    .password
                    .clone()
                    .ok_or_else(|| anyhow!("--url needs --password (and --user) of an admin"))?;
                let r = http.try_login(&cli.user, &password).await;
                if r.status != 200 {
                    bail!("login as {} failed: {} {}", cli.user, r.status, r.text);
                }
                let admin = http.login(&cli.user, &password).await;
                Ok(Target {
                    http,
                    addr,
                    admin,
                    edge: None,
                })
            }
            None => {
                let edge = Edge::try_start_with(EdgeOptions::default()).await?;
                progress!("started aisle-edge on {}", edge.addr());
                let http = edge.http().clone();
                let admin = http.login(ADMIN_USER, ADMIN_PASSWORD).await;
                Ok(Target {
                    addr: edge.addr(),
                    http,
                    admin,
                    edge: Some(edge),
                })
            }
        }
    }

    /// Creates `n` staff accounts with `capacity` (two at a time: password hashing is
    /// deliberately slow) and logs them in.
    async fn create_staff(&self, n: usize, capacity: usize) -> anyhow::Result<Vec<StaffSession>> {
        let run = ulid::Ulid::new().to_string().to_lowercase();
        let run = &run[run.len() - 8..];
        let sem = Arc::new(Semaphore::new(2));
        let mut handles = Vec::new();
        for i in 0..n {
            let http = self.http.clone();
            let admin = self.admin.clone();
            let sem = sem.clone();
            let username = format!("bench-{run}-{i}");
            handles.push(tokio::spawn(async move {
                let _permit = sem.acquire_owned().await;
                http.create_and_login_staff(
                    &admin,
                    &username,
                    &format!("Bench Staff {i}"),
                    capacity as u32,
                )
                .await
            }));
        }
        let mut out = Vec::new();
        for h in handles {
            out.push(h.await.context("staff setup task")?);
        }
        Ok(out)
    }

    async fn finish(mut self) {
        if let Some(edge) = self.edge.as_mut() {
            let _ = timeout(Duration::from_secs(30), edge.terminate()).await;
        }
    }
}

// ---- a lean WebSocket client ---------------------------------------------------------------

type Socket = WebSocketStream<TcpStream>;

async fn ws_connect(addr: SocketAddr) -> anyhow::Result<Socket> {
    let tcp = TcpStream::connect(addr).await?;
    tcp.set_nodelay(true)?;
    let cfg = WebSocketConfig::default()
        .read_buffer_size(8 * 1024)
        .write_buffer_size(8 * 1024);
    let (ws, _) =
        tokio_tungstenite::client_async_with_config(format!("ws://{addr}/ws"), tcp, Some(cfg))
            .await?;
    Ok(ws)
}

/// The fields of a server frame the bench looks at (borrowed: no allocation per frame).
#[derive(Deserialize)]
struct In<'a> {
    #[serde(rename = "type", borrow)]
    ty: &'a str,
    #[serde(default, borrow)]
    conversation_id: Option<&'a str>,
    #[serde(default, borrow)]
    client_msg_id: Option<&'a str>,
    #[serde(default, borrow)]
    agent: Option<AgentRef<'a>>,
    #[serde(default, borrow)]
    code: Option<&'a str>,
    #[serde(default, borrow)]
    resume_token: Option<&'a str>,
    #[serde(default)]
    more: Option<bool>,
    #[serde(default)]
    seq: Option<u64>,
}

#[derive(Deserialize)]
struct AgentRef<'a> {
    #[serde(borrow)]
    id: &'a str,
}

/// Reads frames until one satisfies `want` (given the parsed frame and its text); errors on
/// an `error` frame, a closed connection or after `limit`.
async fn read_until<T>(
    ws: &mut Socket,
    limit: Duration,
    mut want: impl FnMut(&In<'_>, &str) -> Option<T>,
) -> anyhow::Result<T> {
    let deadline = Instant::now() + limit;
    loop {
        let msg = timeout_at(deadline, ws.next())
            .await
            .map_err(|_| anyhow!("no answer within {limit:?}"))?
            .ok_or_else(|| anyhow!("connection closed"))??;
        if let Message::Text(t) = msg {
            let f: In = serde_json::from_str(t.as_str())
                .with_context(|| format!("bad frame {}", t.as_str()))?;
            if f.ty == "error" {
                bail!("server error: {}", t.as_str());
            }
            if let Some(v) = want(&f, t.as_str()) {
                return Ok(v);
            }
        }
    }
}

const SETUP_LIMIT: Duration = Duration::from_secs(30);

/// Connects a customer, says hello and starts a conversation: (socket, conversation id,
/// resume token).
async fn setup_customer(addr: SocketAddr, i: usize) -> anyhow::Result<(Socket, String, String)> {
    let mut ws = ws_connect(addr).await?;
    ws.send(Message::text(
        json!({"type":"hello","role":"customer","display_name":format!("Bench Customer {i}")})
            .to_string(),
    ))
    .await?;
    let token = read_until(&mut ws, SETUP_LIMIT, |f, _| {
        (f.ty == "welcome").then(|| f.resume_token.unwrap_or_default().to_string())
    })
    .await?;
    ws.send(Message::text(r#"{"type":"start","request_id":"s"}"#))
        .await?;
    let conv = read_until(&mut ws, SETUP_LIMIT, |f, _| {
        (f.ty == "started").then(|| f.conversation_id.unwrap_or_default().to_string())
    })
    .await?;
    Ok((ws, conv, token))
}

async fn setup_staff(addr: SocketAddr, s: &StaffSession) -> anyhow::Result<Socket> {
    let mut ws = ws_connect(addr).await?;
    ws.send(Message::text(
        json!({"type":"hello","role":"staff","token":s.token}).to_string(),
    ))
    .await?;
    read_until(&mut ws, SETUP_LIMIT, |f, _| {
        (f.ty == "welcome").then_some(())
    })
    .await?;
    Ok(ws)
}

// ---- statistics ----------------------------------------------------------------------------

#[derive(Default)]
struct Stats {
    acked: u64,
    delivered: u64,
    errors: u64,
    disconnected: u64,
    /// Ack latencies in microseconds.
    lat_us: Vec<u32>,
}

impl Stats {
    fn merge(&mut self, o: Stats) {
        self.acked += o.acked;
        self.delivered += o.delivered;
        self.errors += o.errors;
        self.disconnected += o.disconnected;
        self.lat_us.extend(o.lat_us);
    }
}

/// Nearest-rank percentile of sorted microseconds, in milliseconds.
fn percentile_ms(sorted_us: &[u32], q: f64) -> f64 {
    if sorted_us.is_empty() {
        return f64::NAN;
    }
    let rank = ((q * sorted_us.len() as f64).ceil() as usize).clamp(1, sorted_us.len());
    f64::from(sorted_us[rank - 1]) / 1000.0
}

fn round2(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

fn micros(d: Duration) -> u32 {
    d.as_micros().min(u128::from(u32::MAX)) as u32
}

// ---- throughput ----------------------------------------------------------------------------

/// One chatting connection (customer or staff) in the measured phase.
struct Chatter {
    ws: Socket,
    /// Prefix of this connection's client message ids (`c12-`, `s3-`).
    prefix: String,
    /// Conversations this connection writes into (a customer: its own; staff: assigned).
    convs: Vec<String>,
    known: HashSet<String>,
    staff_id: Option<String>,
    next_conv: usize,
    counter: u64,
    inflight: VecDeque<(u64, Instant)>,
}

impl Chatter {
    fn learn(&mut self, conv: &str) {
        if !self.known.contains(conv) {
            self.known.insert(conv.to_string());
            self.convs.push(conv.to_string());
        }
    }

    async fn run(
        mut self,
        window: usize,
        go: watch::Receiver<Option<(Instant, Instant)>>,
    ) -> Stats {
        let mut stats = Stats::default();
        let (start, deadline) = match wait_go(go).await {
            Some(v) => v,
            None => return stats,
        };
        let body = "Do you have the blue one in size 40? Bench message.";
        loop {
            let mut fed = false;
            while self.inflight.len() < window && !self.convs.is_empty() {
                let conv = &self.convs[self.next_conv % self.convs.len()];
                self.next_conv += 1;
                self.counter += 1;
                let text = format!(
                    r#"{{"type":"send","conversation_id":"{conv}","client_msg_id":"{}{}","body":"{body}"}}"#,
                    self.prefix, self.counter
                );
                self.inflight.push_back((self.counter, Instant::now()));
                if self.ws.feed(Message::text(text)).await.is_err() {
                    stats.disconnected += 1;
                    return stats;
                }
                fed = true;
            }
            if fed && self.ws.flush().await.is_err() {
                stats.disconnected += 1;
                return stats;
            }
            let msg = match timeout_at(deadline, self.ws.next()).await {
                Err(_) => return stats,
                Ok(Some(Ok(m))) => m,
                Ok(_) => {
                    stats.disconnected += 1;
                    return stats;
                }
            };
            let Message::Text(t) = msg else { continue };
            let Ok(f) = serde_json::from_str::<In>(t.as_str()) else {
                stats.errors += 1;
                continue;
            };
            let now = Instant::now();
            match f.ty {
                "ack" => {
                    if let Some(n) = f
                        .client_msg_id
                        .and_then(|c| c.rsplit('-').next())
                        .and_then(|n| n.parse::<u64>().ok())
                        && let Some(i) = self.inflight.iter().position(|(k, _)| *k == n)
                    {
                        let (_, sent) = self.inflight.remove(i).unwrap();
                        if now >= start {
                            stats.acked += 1;
                            stats.lat_us.push(micros(now - sent));
                        }
                    }
                }
                "message" => {
                    if now >= start {
                        stats.delivered += 1;
                    }
                    if self.staff_id.is_some()
                        && let Some(c) = f.conversation_id
                    {
                        self.learn(c);
                    }
                }
                "state" => {
                    if let (Some(me), Some(agent), Some(c)) =
                        (&self.staff_id, &f.agent, f.conversation_id)
                        && agent.id == me
                    {
                        self.learn(c);
                    }
                }
                "error" => {
                    stats.errors += 1;
                    if let Some(n) = f
                        .client_msg_id
                        .and_then(|c| c.rsplit('-').next())
                        .and_then(|n| n.parse::<u64>().ok())
                    {
                        self.inflight.retain(|(k, _)| *k != n);
                    }
                    if f.code == Some("slow_consumer") || f.code == Some("shutting_down") {
                        stats.disconnected += 1;
                        return stats;
                    }
                }
                _ => {}
            }
        }
    }
}

async fn wait_go(
    mut go: watch::Receiver<Option<(Instant, Instant)>>,
) -> Option<(Instant, Instant)> {
    let v = go.wait_for(|v| v.is_some()).await.ok()?;
    *v
}

async fn throughput(cli: &Cli, a: &ThroughputArgs) -> anyhow::Result<Value> {
    if a.conversations == 0 || a.staff == 0 || a.window == 0 {
        bail!("--conversations, --staff and --window must be > 0");
    }
    let target = Target::new(cli).await?;
    let capacity = a.conversations.div_ceil(a.staff) + 4;
    progress!(
        "throughput: creating {} staff accounts (capacity {capacity})",
        a.staff
    );
    let staff = target.create_staff(a.staff, capacity).await?;

    let (go_tx, go_rx) = watch::channel(None);
    let (ready_tx, mut ready_rx) = mpsc::channel::<anyhow::Result<()>>(64);
    let setup_sem = Arc::new(Semaphore::new(64));
    let mut tasks = Vec::new();

    progress!("throughput: connecting {} staff", staff.len());
    for (i, s) in staff.iter().enumerate() {
        let ws = setup_staff(target.addr, s).await?;
        let chatter = Chatter {
            ws,
            prefix: format!("s{i}-"),
            convs: Vec::new(),
            known: HashSet::new(),
            staff_id: Some(s.id.clone()),
            next_conv: 0,
            counter: 0,
            inflight: VecDeque::with_capacity(a.window),
        };
        tasks.push(tokio::spawn(chatter.run(a.window, go_rx.clone())));
    }

    progress!("throughput: connecting {} customers", a.conversations);
    for i in 0..a.conversations {
        let addr = target.addr;
        let go = go_rx.clone();
        let ready = ready_tx.clone();
        let sem = setup_sem.clone();
        let window = a.window;
        tasks.push(tokio::spawn(async move {
            let permit = sem.acquire_owned().await;
            let setup = setup_customer(addr, i).await;
            drop(permit);
            match setup {
                Ok((ws, conv, _token)) => {
                    let _ = ready.send(Ok(())).await;
                    let mut known = HashSet::new();
                    known.insert(conv.clone());
                    Chatter {
                        ws,
                        prefix: format!("c{i}-"),
                        convs: vec![conv],
                        known,
                        staff_id: None,
                        next_conv: 0,
                        counter: 0,
                        inflight: VecDeque::with_capacity(window),
                    }
                    .run(window, go)
                    .await
                }
                Err(e) => {
                    let _ = ready.send(Err(e)).await;
                    Stats::default()
                }
            }
        }));
    }
    drop(ready_tx);
    for _ in 0..a.conversations {
        match ready_rx.recv().await {
            Some(Ok(())) => {}
            Some(Err(e)) => return Err(e.context("customer setup")),
            None => bail!("customer setup tasks ended early"),
        }
    }
    // Let the staff connections read their assignments before the clock starts.
    tokio::time::sleep(Duration::from_millis(500)).await;

    let duration = Duration::from_secs(cli.duration_secs.max(1));
    progress!("throughput: measuring for {duration:?}");
    let start = Instant::now();
    go_tx.send(Some((start, start + duration)))?;
    let mut stats = Stats::default();
    for t in tasks {
        stats.merge(t.await?);
    }
    let elapsed = duration.as_secs_f64();
    stats.lat_us.sort_unstable();
    if stats.errors > 0 || stats.disconnected > 0 {
        progress!(
            "throughput: {} error frames, {} connections lost",
            stats.errors,
            stats.disconnected
        );
    }
    let counted = stats.acked.min(stats.delivered);
    let r = json!({
        "scenario": "throughput",
        "messages_per_sec": round2(counted as f64 / elapsed),
        "ack_p50_ms": round2(percentile_ms(&stats.lat_us, 0.50)),
        "ack_p99_ms": round2(percentile_ms(&stats.lat_us, 0.99)),
        "acked": stats.acked,
        "delivered": stats.delivered,
        "conversations": a.conversations,
        "duration_secs": round2(elapsed),
    });
    target.finish().await;
    Ok(r)
}

// ---- device switch -------------------------------------------------------------------------

/// A background customer: one message every `interval` (phase-shifted), acks and replies
/// read, until `stop`.
async fn background_customer(
    mut ws: Socket,
    conv: String,
    i: usize,
    interval: Duration,
    mut stop: watch::Receiver<bool>,
) -> u64 {
    let phase = interval.mul_f64((i as f64 * 0.618_033_988_7).fract());
    let mut next = Instant::now() + phase;
    let mut n = 0u64;
    loop {
        tokio::select! {
            _ = stop.changed() => return n,
            _ = tokio::time::sleep_until(next) => {
                n += 1;
                let text = format!(
                    r#"{{"type":"send","conversation_id":"{conv}","client_msg_id":"b{i}-{n}","body":"background chatter"}}"#
                );
                if ws.send(Message::text(text)).await.is_err() {
                    return n;
                }
                next += interval;
            }
            m = ws.next() => {
                if !matches!(m, Some(Ok(_))) {
                    return n;
                }
            }
        }
    }
}

/// A staff connection that only reads (its chats' background messages) until `stop`.
async fn idle_reader(mut ws: Socket, mut stop: watch::Receiver<bool>) {
    loop {
        tokio::select! {
            _ = stop.changed() => return,
            m = ws.next() => if !matches!(m, Some(Ok(_))) { return },
        }
    }
}

/// One device switch: connect, hello with the token, resume from 0 until `resumed` with
/// `more: false`; returns the number of history messages received.
async fn one_switch(addr: SocketAddr, token: &str, conv: &str) -> anyhow::Result<usize> {
    let mut ws = ws_connect(addr).await?;
    ws.send(Message::text(
        json!({"type":"hello","role":"customer","resume_token":token}).to_string(),
    ))
    .await?;
    read_until(&mut ws, SETUP_LIMIT, |f, _| {
        (f.ty == "welcome").then_some(())
    })
    .await?;
    let mut after = 0u64;
    let mut got = 0usize;
    loop {
        ws.send(Message::text(format!(
            r#"{{"type":"resume","conversation_id":"{conv}","after_seq":{after}}}"#
        )))
        .await?;
        let more = read_until(&mut ws, SETUP_LIMIT, |f, _| {
            if f.conversation_id != Some(conv) {
                return None;
            }
            match f.ty {
                "message" => {
                    got += 1;
                    if let Some(s) = f.seq {
                        after = after.max(s);
                    }
                    None
                }
                "resumed" => Some(f.more.unwrap_or(false)),
                _ => None,
            }
        })
        .await?;
        if !more {
            break;
        }
    }
    let _ = ws.close(None).await;
    Ok(got)
}

async fn switch(cli: &Cli, a: &SwitchArgs) -> anyhow::Result<Value> {
    if a.conversations == 0 || a.staff == 0 || a.history == 0 {
        bail!("--conversations, --staff and --history must be > 0");
    }
    let target = Target::new(cli).await?;
    let capacity = a.conversations.div_ceil(a.staff) + 4;
    progress!(
        "switch: creating {} staff accounts (capacity {capacity})",
        a.staff
    );
    let staff = target.create_staff(a.staff, capacity).await?;
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut tasks = Vec::new();
    for s in &staff {
        let ws = setup_staff(target.addr, s).await?;
        tasks.push(tokio::spawn(idle_reader(ws, stop_rx.clone())));
    }

    // The customer who will switch devices, with `history` messages.
    let (mut ws, conv, token) = setup_customer(target.addr, 0).await?;
    progress!("switch: writing {} messages into {conv}", a.history);
    let mut acked = 0usize;
    let mut sent = 0usize;
    while acked < a.history {
        while sent < a.history && sent - acked < 8 {
            sent += 1;
            ws.feed(Message::text(format!(
                r#"{{"type":"send","conversation_id":"{conv}","client_msg_id":"h-{sent}","body":"history message number {sent}"}}"#
            )))
            .await?;
        }
        ws.flush().await?;
        read_until(&mut ws, SETUP_LIMIT, |f, _| (f.ty == "ack").then_some(())).await?;
        acked += 1;
    }
    tasks.push(tokio::spawn(idle_reader(ws, stop_rx.clone())));

    progress!(
        "switch: connecting {} background customers",
        a.conversations.saturating_sub(1)
    );
    let interval = Duration::from_millis(a.background_interval_ms.max(1));
    let sem = Arc::new(Semaphore::new(64));
    let mut setups = Vec::new();
    for i in 1..a.conversations {
        let addr = target.addr;
        let sem = sem.clone();
        setups.push(tokio::spawn(async move {
            let _p = sem.acquire_owned().await;
            setup_customer(addr, i).await
        }));
    }
    let mut bg = Vec::new();
    for (i, s) in setups.into_iter().enumerate() {
        let (ws, c, _) = s.await?.context("background customer setup")?;
        bg.push(tokio::spawn(background_customer(
            ws,
            c,
            i + 1,
            interval,
            stop_rx.clone(),
        )));
    }

    let duration = Duration::from_secs(cli.duration_secs.max(1));
    progress!(
        "switch: measuring up to {} switches for at most {duration:?}",
        a.switches
    );
    let deadline = Instant::now() + duration;
    let mut lat = Vec::with_capacity(a.switches);
    for _ in 0..a.switches {
        if Instant::now() >= deadline {
            break;
        }
        let t0 = Instant::now();
        let got = timeout(SETUP_LIMIT, one_switch(target.addr, &token, &conv))
            .await
            .map_err(|_| anyhow!("a device switch hung"))??;
        let d = t0.elapsed();
        if got != a.history {
            bail!(
                "a device switch received {got} history messages, expected {}",
                a.history
            );
        }
        lat.push(micros(d));
    }
    let _ = stop_tx.send(true);
    let mut background_msgs = 0;
    for t in bg {
        background_msgs += t.await.unwrap_or(0);
    }
    for t in tasks {
        let _ = t.await;
    }
    progress!("switch: {background_msgs} background messages sent meanwhile");
    lat.sort_unstable();
    let r = json!({
        "scenario": "switch",
        "switch_p50_ms": round2(percentile_ms(&lat, 0.50)),
        "switch_p99_ms": round2(percentile_ms(&lat, 0.99)),
        "switches": lat.len(),
        "history_messages": a.history,
    });
    target.finish().await;
    Ok(r)
}

// ---- start-up ------------------------------------------------------------------------------

async fn startup(cli: &Cli, a: &StartupArgs) -> anyhow::Result<Value> {
    let opts = EdgeOptions {
        ready_poll: Duration::from_micros(500),
        ..EdgeOptions::default()
    };
    let mut edge = Edge::try_start_with(opts).await?;
    let first = edge.last_ready_time();
    let deadline = Instant::now() + Duration::from_secs(cli.duration_secs.max(1));
    let mut times = Vec::new();
    for _ in 0..a.runs.max(1) {
        if !times.is_empty() && Instant::now() >= deadline {
            break;
        }
        edge.try_restart().await?;
        times.push(micros(edge.last_ready_time()));
    }
    let _ = edge.terminate().await;
    times.sort_unstable();
    let median = if times.len() % 2 == 1 {
        f64::from(times[times.len() / 2]) / 1000.0
    } else {
        (f64::from(times[times.len() / 2 - 1]) + f64::from(times[times.len() / 2])) / 2000.0
    };
    Ok(json!({
        "scenario": "startup",
        "ready_ms": round2(median),
        "ready_min_ms": round2(f64::from(times[0]) / 1000.0),
        "ready_max_ms": round2(f64::from(*times.last().unwrap()) / 1000.0),
        "first_run_ready_ms": round2(first.as_secs_f64() * 1000.0),
        "runs": times.len(),
    }))
}

/// Raises the soft open-files limit to the hard one (a thousand connections need it; the
/// server started by the bench inherits it).
fn raise_nofile_limit() {
    // SAFETY: plain getrlimit/setrlimit on a local struct.
    unsafe {
        let mut lim = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 && lim.rlim_cur < lim.rlim_max {
            lim.rlim_cur = lim.rlim_max;
            let _ = libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        }
    }
}
