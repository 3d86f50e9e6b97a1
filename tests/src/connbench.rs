//! `aisle-bench connections`: how many idle chat connections one `aisle-edge` holds, and what
//! each costs in resident memory.
//!
//! Every client does what the customer chat page (`web/chat/session.js`) does on a first
//! visit: WebSocket upgrade, `hello` as a customer with a display name, `start` (a new
//! conversation, written to the database), `resume` from seq 0 — and then stays idle, reading
//! (so the server's heartbeat pings are answered) but sending nothing. Customers rather than
//! staff because they are the many: a store has a handful of tablets and thousands of phones.
//!
//! The clients are spread over several loopback source addresses (127.0.0.2, 127.0.0.3, …:
//! bind, then connect), since one source address has only ~28,000 ephemeral ports towards one
//! server port. The server's resident memory (`VmRSS` of `/proc/<pid>/status`) is read before
//! the first connection and once every connection is open and has answered a `ping` with a
//! `pong` (each connection, not a sample, so `connections` counts only sockets that work).
//!
//! Both processes need one descriptor per connection; each has its own open-file limit (the
//! bench raises its soft limit to the hard one in `main`, the edge does the same at start).

use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, anyhow, bail};
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::{Semaphore, mpsc, watch};
use tokio::time::{Instant, timeout};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

use crate::edge::{Edge, EdgeOptions};
use crate::http::metric_value;

/// Guard against a hang of one step of one client (never a speed claim).
const STEP_TIMEOUT: Duration = Duration::from_secs(60);

/// What to run.
#[derive(Clone, Debug)]
pub struct ConnBenchOptions {
    /// A running server (`http://host:port`); `None` starts a local `aisle-edge`.
    pub url: Option<String>,
    /// The `--url` server's process id, to read its memory (the local one's is known).
    pub pid: Option<u32>,
    /// Connections to open.
    pub count: usize,
    /// Loopback source addresses to spread them over (127.0.0.2 upwards).
    pub source_addresses: usize,
    /// Connections being set up at once.
    pub concurrency: usize,
    /// Time to keep every connection open and idle before checking them (longer than the
    /// server's `idle_timeout_secs` shows that heartbeats keep idle clients).
    pub hold: Duration,
}

/// What one client reports to the bench.
enum Event {
    /// Upgraded, said hello, started and resumed its conversation.
    Ready,
    /// Could not: the reason (`503 too_many_connections`, a connect error…).
    Failed(String),
    /// Answered the check with `pong`.
    Alive,
    /// Was closed, or did not answer the check.
    Lost(String),
}

/// Runs the scenario and returns its JSON result.
pub async fn run(o: &ConnBenchOptions) -> anyhow::Result<Value> {
    if o.count == 0 {
        bail!("--count must be at least 1");
    }
    let sources = o.source_addresses.clamp(1, 250);
    let (addr, pid, edge) = match &o.url {
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
            (addr, o.pid, None)
        }
        None => {
            let edge = Edge::try_start_with(EdgeOptions::default()).await?;
            eprintln!("[aisle-bench] started aisle-edge on {}", edge.addr());
            (edge.addr(), edge.pid(), Some(edge))
        }
    };
    if !addr.ip().is_loopback() {
        bail!("connections runs against a loopback server only (got {addr})");
    }
    let metrics_before = metrics(addr).await;
    let max_connections = metrics_before
        .as_deref()
        .map(|m| metric_value(m, "aisle_max_connections"));
    let open_files_limit = metrics_before
        .as_deref()
        .map(|m| metric_value(m, "aisle_open_files_limit"));
    let rss_before = match pid {
        Some(pid) => Some(rss_bytes(pid)?),
        None => None,
    };

    let (events_tx, mut events) = mpsc::unbounded_channel();
    let (check_tx, check_rx) = watch::channel(false);
    let (stop_tx, stop_rx) = watch::channel(false);
    let gate = Arc::new(Semaphore::new(o.concurrency.max(1)));
    let started = Instant::now();
    for i in 0..o.count {
        let source = Ipv4Addr::new(127, 0, 0, 2 + (i % sources) as u8);
        let tx = events_tx.clone();
        let (check, stop) = (check_rx.clone(), stop_rx.clone());
        let gate = Arc::clone(&gate);
        tokio::spawn(async move {
            let setup = async {
                let _permit = gate.acquire_owned().await?;
                open(source, addr, i).await
            };
            match setup.await {
                Ok(ws) => {
                    let _ = tx.send(Event::Ready);
                    idle(ws, check, stop, tx).await;
                }
                Err(e) => {
                    let _ = tx.send(Event::Failed(format!("{e:#}")));
                }
            }
        });
    }
    drop(events_tx);

    let (mut ready, mut failures, mut lost) = (0usize, Vec::new(), Vec::new());
    while ready + failures.len() < o.count {
        match events.recv().await {
            Some(Event::Ready) => {
                ready += 1;
                if ready % 1000 == 0 {
                    eprintln!(
                        "[aisle-bench] {ready} connections open ({:.1} s)",
                        started.elapsed().as_secs_f64()
                    );
                }
            }
            Some(Event::Failed(why)) => failures.push(why),
            Some(Event::Lost(why)) => lost.push(format!("lost while others connected: {why}")),
            Some(Event::Alive) => {}
            None => bail!("the client tasks ended early"),
        }
    }
    let connect_seconds = started.elapsed().as_secs_f64();
    eprintln!(
        "[aisle-bench] {ready} open, {} failed, in {connect_seconds:.1} s; holding {:?}",
        failures.len(),
        o.hold
    );
    tokio::time::sleep(o.hold).await;

    // Every connection that got ready answers one ping.
    let _ = check_tx.send(true);
    let mut alive = 0usize;
    let waiting = ready - lost.len();
    let lost_before_check = lost.len();
    while alive + lost.len() - lost_before_check < waiting {
        match timeout(STEP_TIMEOUT * 2, events.recv()).await {
            Ok(Some(Event::Alive)) => alive += 1,
            Ok(Some(Event::Lost(why))) => lost.push(why),
            Ok(Some(_)) => {}
            Ok(None) | Err(_) => break,
        }
    }
    // Settle: let the server finish what the last frames allocated before reading its memory.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let rss_after = match pid {
        Some(pid) => Some(rss_bytes(pid)?),
        None => None,
    };
    let metrics_after = metrics(addr).await;
    let server_customers = metrics_after
        .as_deref()
        .map(|m| metric_value(m, "aisle_connections{role=\"customer\"}"));
    let per_connection = match (rss_before, rss_after) {
        (Some(b), Some(a)) if alive > 0 => Some((a.saturating_sub(b)) as f64 / alive as f64),
        _ => None,
    };
    let _ = stop_tx.send(true);

    let mut failure_kinds: std::collections::BTreeMap<String, usize> = Default::default();
    for why in failures.iter().chain(&lost) {
        let kind: String = why.chars().take(120).collect();
        *failure_kinds.entry(kind).or_default() += 1;
    }
    let result = json!({
        "scenario": "connections",
        "requested": o.count,
        "connections": alive,
        "failed": failures.len(),
        "lost": lost.len(),
        "failures": failure_kinds,
        "role": "customer",
        "source_addresses": sources,
        "connect_seconds": connect_seconds,
        "hold_seconds": o.hold.as_secs_f64(),
        "rss_bytes_before": rss_before,
        "rss_bytes_after": rss_after,
        "rss_bytes_per_connection": per_connection,
        "server_customer_connections": server_customers,
        "max_connections": max_connections,
        "open_files_limit": open_files_limit,
        "server_pid": pid,
    });
    // Close politely before the local server goes (dropping `edge` kills it).
    tokio::time::sleep(Duration::from_millis(500)).await;
    drop(edge);
    Ok(result)
}

/// One client, as the chat page on a first visit: upgrade, `hello`, `start`, `resume`.
async fn open(
    source: Ipv4Addr,
    server: SocketAddr,
    i: usize,
) -> anyhow::Result<WebSocketStream<TcpStream>> {
    let socket = TcpSocket::new_v4()?;
    socket
        .bind(SocketAddr::new(source.into(), 0))
        .with_context(|| format!("bind {source}:0"))?;
    let tcp = timeout(STEP_TIMEOUT, socket.connect(server))
        .await
        .context("connect timed out")?
        .context("connect")?;
    tcp.set_nodelay(true)?;
    // Small client buffers: the bench holds as many sockets as the server.
    let cfg = WebSocketConfig::default()
        .read_buffer_size(4 * 1024)
        .write_buffer_size(0);
    let (mut ws, _) = timeout(
        STEP_TIMEOUT,
        tokio_tungstenite::client_async_with_config(format!("ws://{server}/ws"), tcp, Some(cfg)),
    )
    .await
    .context("upgrade timed out")?
    .map_err(|e| match &e {
        tokio_tungstenite::tungstenite::Error::Http(resp) => {
            let body = resp
                .body()
                .as_deref()
                .map(String::from_utf8_lossy)
                .unwrap_or_default();
            anyhow!("upgrade refused: {} {body}", resp.status().as_u16())
        }
        _ => anyhow!("upgrade: {e}"),
    })?;
    let name = format!("Shopper {i}");
    send(
        &mut ws,
        json!({"type":"hello","role":"customer","display_name":name}),
    )
    .await?;
    expect(&mut ws, "welcome").await?;
    send(
        &mut ws,
        json!({"type":"start","request_id":format!("s{i}"),"display_name":name}),
    )
    .await?;
    let started = expect(&mut ws, "started").await?;
    let conversation = started["conversation_id"].clone();
    send(
        &mut ws,
        json!({"type":"resume","conversation_id":conversation,"after_seq":0}),
    )
    .await?;
    expect(&mut ws, "resumed").await?;
    Ok(ws)
}

/// Idle: reads (answering the server's pings) until asked to check, then sends `ping` and
/// waits for `pong`; then reads on until told to stop.
async fn idle(
    mut ws: WebSocketStream<TcpStream>,
    mut check: watch::Receiver<bool>,
    mut stop: watch::Receiver<bool>,
    events: mpsc::UnboundedSender<Event>,
) {
    let mut checking = false;
    loop {
        tokio::select! {
            changed = check.changed(), if !checking => {
                if changed.is_err() {
                    return;
                }
                checking = true;
                if let Err(e) = send(&mut ws, json!({"type":"ping"})).await {
                    let _ = events.send(Event::Lost(format!("ping: {e:#}")));
                    return;
                }
                let answer = expect(&mut ws, "pong").await;
                let _ = events.send(match answer {
                    Ok(_) => Event::Alive,
                    Err(e) => Event::Lost(format!("{e:#}")),
                });
            }
            _ = stop.changed() => {
                let _ = timeout(Duration::from_secs(2), ws.close(None)).await;
                return;
            }
            msg = ws.next() => match msg {
                Some(Ok(Message::Close(close))) => {
                    if !checking {
                        let _ = events.send(Event::Lost(format!("closed by the server: {close:?}")));
                    }
                    return;
                }
                Some(Ok(_)) => {}
                Some(Err(e)) => {
                    if !checking {
                        let _ = events.send(Event::Lost(format!("read: {e}")));
                    }
                    return;
                }
                None => {
                    if !checking {
                        let _ = events.send(Event::Lost("end of stream".into()));
                    }
                    return;
                }
            },
        }
    }
}

async fn send(ws: &mut WebSocketStream<TcpStream>, frame: Value) -> anyhow::Result<()> {
    timeout(STEP_TIMEOUT, ws.send(Message::text(frame.to_string())))
        .await
        .context("send timed out")??;
    Ok(())
}

/// Reads until a frame of type `ty`; an `error` frame or a close is an error.
async fn expect(ws: &mut WebSocketStream<TcpStream>, ty: &str) -> anyhow::Result<Value> {
    let deadline = Instant::now() + STEP_TIMEOUT;
    loop {
        let msg = tokio::time::timeout_at(deadline, ws.next())
            .await
            .with_context(|| format!("no {ty} within {STEP_TIMEOUT:?}"))?;
        match msg {
            Some(Ok(Message::Text(t))) => {
                let v: Value = serde_json::from_str(t.as_str())?;
                match v["type"].as_str() {
                    Some(t) if t == ty => return Ok(v),
                    Some("error") => bail!("waiting for {ty}: error {}", v["code"]),
                    _ => {}
                }
            }
            Some(Ok(Message::Close(close))) => bail!("closed while waiting for {ty}: {close:?}"),
            Some(Ok(_)) => {}
            Some(Err(e)) => bail!("waiting for {ty}: {e}"),
            None => bail!("end of stream while waiting for {ty}"),
        }
    }
}

/// `GET /metrics` of the server (`None` if it does not answer).
async fn metrics(addr: SocketAddr) -> Option<String> {
    match crate::edge::http_get_raw(addr, "/metrics").await {
        Some((200, body)) => Some(body),
        _ => None,
    }
}

/// The resident memory of process `pid` (`VmRSS` of `/proc/<pid>/status`), in bytes.
pub fn rss_bytes(pid: u32) -> anyhow::Result<u64> {
    let path = PathBuf::from(format!("/proc/{pid}/status"));
    let status =
        std::fs::read_to_string(&path).with_context(|| format!("read {}", path.display()))?;
    let kb = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .with_context(|| format!("no VmRSS line in {}", path.display()))?;
    Ok(kb * 1024)
}
