//! `aisle-bench crash`: crash safety under load. SIGKILL at random moments, restart on the same
//! data, and check that every acknowledged message is present exactly once and every
//! conversation document loads.
//!
//! Why a bench and not only a test: the promise "an ack means committed, a retry never
//! duplicates" (ARCHITECTURE.md, invariants 1, 2 and 8) is only as good as the moments a crash
//! was tried at. This runs many cycles with a seeded random kill delay, so a failure found once
//! can be replayed with `--seed`.
//!
//! The clients behave like the real ones (docs/protocol.md): customers and staff on WebSockets,
//! every `send` with its own `client_msg_id`, an unacknowledged send retried after reconnecting
//! with the *same* `client_msg_id`, customers resuming with their resume token, staff with
//! their session token. Every cycle a new customer arrives (a new conversation, so documents
//! are created while the process dies too) and one leaves once its unacked sends are settled.
//!
//! Two targets:
//!
//! - `edge`: the `aisle-edge` process is SIGKILLed `delay` after the clients connected and
//!   restarted on the same data directory. At the end: the HTTP history
//!   (`GET /api/conversations/{id}/messages`), the replay a customer gets on `resume after_seq 0`
//!   and the conversation documents read straight from the edge's SQLite file must each hold
//!   every acked message exactly once (same message id as its ack).
//! - `hub`: a store enrolled at a real `aisle-hub` takes the same load (it is not killed); the
//!   hub is SIGKILLed at random moments during sync and restarted on the same data and port.
//!   At the end every message the edge acked must be at the hub exactly once: in the HQ
//!   transcript (`GET /api/conversations/{id}`) and in the hub's document (loaded from its
//!   SQLite file).

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use aisle_sync::Conversation;
use anyhow::{Context, anyhow, bail};
use futures_util::{SinkExt, StreamExt};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::time::{Instant, timeout};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

use crate::edge::{ADMIN_PASSWORD, ADMIN_USER, Edge, EdgeOptions, http_get_raw};
use crate::http::{Http, metric_value};
use crate::hub::Hub;

/// Guards one wait (a frame, a start, a convergence step) against hangs; never a speed claim.
const HANG_GUARD: Duration = Duration::from_secs(30);
/// How long the hub may take, after the load stopped, to hold every message the edge acked.
const CONVERGE_LIMIT: Duration = Duration::from_secs(300);

macro_rules! progress {
    ($($t:tt)*) => { eprintln!("[aisle-bench crash] {}", format!($($t)*)) };
}

/// Which process is killed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CrashTarget {
    Edge,
    Hub,
}

impl CrashTarget {
    pub fn as_str(self) -> &'static str {
        match self {
            CrashTarget::Edge => "edge",
            CrashTarget::Hub => "hub",
        }
    }
}

/// What to run (see `aisle-bench crash --help`).
#[derive(Clone, Debug)]
pub struct CrashBenchOptions {
    pub cycles: usize,
    pub target: CrashTarget,
    /// The RNG seed of the kill delays; `None`: a fresh one (printed, so the run can be replayed).
    pub seed: Option<u64>,
    /// Customers connected at once (one conversation each).
    pub customers: usize,
    /// Staff members, one tablet each, answering the chats assigned to them.
    pub staff: usize,
    /// Unacknowledged sends each client keeps in flight.
    pub window: usize,
    /// The kill comes at a uniformly random delay in `[min_delay_ms, max_delay_ms]` after the
    /// clients connected (edge) or the store reconnected to the hub (hub).
    pub min_delay_ms: u64,
    pub max_delay_ms: u64,
    /// Length of each message body in characters: long bodies grow the documents past their
    /// compaction threshold within a run, so crashes also hit compactions (a chunk rewrite).
    pub body_chars: usize,
    /// Edge target: the edge is enrolled at a real `aisle-hub` (never killed) and syncs while
    /// it is killed; at the end the hub must hold every acked message once, too.
    pub with_hub: bool,
}

impl Default for CrashBenchOptions {
    fn default() -> Self {
        Self {
            cycles: 100,
            target: CrashTarget::Edge,
            seed: None,
            customers: 6,
            staff: 2,
            window: 4,
            min_delay_ms: 0,
            max_delay_ms: 1000,
            body_chars: 2000,
            with_hub: false,
        }
    }
}

/// The figures; [`CrashBenchResult::to_json`] gives the documented keys.
#[derive(Clone, Debug, Default)]
pub struct CrashBenchResult {
    pub target: &'static str,
    pub seed: u64,
    pub cycles: usize,
    /// Sends the server acknowledged (each `client_msg_id` counted once).
    pub acked: u64,
    /// Acknowledged messages missing from the final check.
    pub lost: u64,
    /// `client_msg_id`s found more than once (any sent message, acked or not).
    pub duplicated: u64,
    /// Acknowledged messages found under another message id than their ack named.
    pub mismatched: u64,
    /// Sends attempted (distinct `client_msg_id`s).
    pub sent: u64,
    /// Sends retried after a reconnect with the same `client_msg_id`.
    pub retried: u64,
    /// Retries answered as duplicates (committed before the crash, the ack lost with it).
    pub duplicate_acks: u64,
    /// Sends refused with an error code that is not worth retrying.
    pub refused: u64,
    pub documents_checked: u64,
    pub unloadable_documents: u64,
    /// Edge target: document compactions the edge reported (its metrics read just before each
    /// kill, so a lower bound).
    pub document_compactions: Option<u64>,
    /// Restart times: exec to first healthy answer, median and max.
    pub restart_p50_ms: f64,
    pub restart_max_ms: f64,
    /// Hub target: time from the end of the load to the hub holding every acked message.
    pub converge_ms: Option<f64>,
    pub duration_secs: f64,
    /// Human-readable descriptions of the first problems found.
    pub problems: Vec<String>,
}

impl CrashBenchResult {
    pub fn to_json(&self) -> Value {
        let mut v = json!({
            "scenario": "crash",
            "target": self.target,
            "seed": self.seed,
            "cycles": self.cycles,
            "acked": self.acked,
            "lost": self.lost,
            "duplicated": self.duplicated,
            "mismatched": self.mismatched,
            "sent": self.sent,
            "retried": self.retried,
            "duplicate_acks": self.duplicate_acks,
            "refused": self.refused,
            "documents_checked": self.documents_checked,
            "unloadable_documents": self.unloadable_documents,
            "restart_p50_ms": round2(self.restart_p50_ms),
            "restart_max_ms": round2(self.restart_max_ms),
            "duration_secs": round2(self.duration_secs),
            "problems": self.problems,
        });
        if let Some(c) = self.document_compactions {
            v["document_compactions"] = json!(c);
        }
        if let Some(c) = self.converge_ms {
            v["converge_ms"] = json!(round2(c));
        }
        v
    }

    /// True when nothing was lost, duplicated, changed or unloadable.
    pub fn passed(&self) -> bool {
        self.lost == 0
            && self.duplicated == 0
            && self.mismatched == 0
            && self.unloadable_documents == 0
    }

    pub fn to_text(&self) -> String {
        format!(
            "crash ({}): {} cycles, seed {}: {} acked, {} lost, {} duplicated, {} mismatched; \
             {} documents checked, {} unloadable; {} retried ({} were already committed); \
             restart p50 {:.1} ms, max {:.1} ms{}",
            self.target,
            self.cycles,
            self.seed,
            self.acked,
            self.lost,
            self.duplicated,
            self.mismatched,
            self.documents_checked,
            self.unloadable_documents,
            self.retried,
            self.duplicate_acks,
            self.restart_p50_ms,
            self.restart_max_ms,
            self.converge_ms
                .map(|c| format!("; hub converged {c:.0} ms after the load"))
                .unwrap_or_default()
        )
    }
}

fn round2(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

// ---- what was sent and acknowledged -----------------------------------------------------------

/// One acknowledgement as the server gave it.
#[derive(Clone, Debug)]
struct Ack {
    message_id: String,
}

#[derive(Clone, Debug)]
struct Sent {
    conversation: String,
    ack: Option<Ack>,
}

/// Every send of the run, by `client_msg_id`, shared by the client tasks.
#[derive(Default)]
struct Ledger {
    sent: HashMap<String, Sent>,
    retried: u64,
    duplicate_acks: u64,
    refused: u64,
    /// Refusal codes seen (for the report).
    refusal_codes: BTreeMap<String, u64>,
    /// Acks that contradict an earlier ack of the same `client_msg_id`.
    ack_conflicts: Vec<String>,
}

type SharedLedger = Arc<Mutex<Ledger>>;

impl Ledger {
    fn record_ack(&mut self, cmid: &str, ack: &Value) {
        let message_id = ack["message_id"].as_str().unwrap_or_default().to_string();
        if ack["duplicate"] == true {
            self.duplicate_acks += 1;
        }
        let Some(s) = self.sent.get_mut(cmid) else {
            return;
        };
        match &s.ack {
            Some(prev) if prev.message_id != message_id => self.ack_conflicts.push(format!(
                "{cmid} was acked as {} and later as {message_id}",
                prev.message_id
            )),
            Some(_) => {}
            None => s.ack = Some(Ack { message_id }),
        }
    }
}

/// Error codes after which the same `client_msg_id` is sent again (protocol.md §9).
fn retryable(code: &str) -> bool {
    matches!(code, "overloaded" | "internal" | "rate_limited")
}

// ---- a WebSocket that reports a dead server as an error, never a panic ------------------------

struct Link {
    ws: WebSocketStream<TcpStream>,
}

impl Link {
    async fn connect(addr: SocketAddr) -> anyhow::Result<Link> {
        let tcp = timeout(HANG_GUARD, TcpStream::connect(addr)).await??;
        tcp.set_nodelay(true)?;
        let cfg = WebSocketConfig::default()
            .read_buffer_size(8 * 1024)
            .write_buffer_size(0);
        let (ws, _) = timeout(
            HANG_GUARD,
            tokio_tungstenite::client_async_with_config(format!("ws://{addr}/ws"), tcp, Some(cfg)),
        )
        .await??;
        Ok(Link { ws })
    }

    async fn send(&mut self, v: &Value) -> anyhow::Result<()> {
        timeout(HANG_GUARD, self.ws.send(Message::text(v.to_string()))).await??;
        Ok(())
    }

    /// The next JSON frame; `Err` when the connection ended (the server died) or hung.
    async fn recv(&mut self) -> anyhow::Result<Value> {
        loop {
            let m = timeout(HANG_GUARD, self.ws.next())
                .await
                .map_err(|_| anyhow!("no frame within {HANG_GUARD:?}"))?
                .ok_or_else(|| anyhow!("connection closed"))??;
            match m {
                Message::Text(t) => return Ok(serde_json::from_str(t.as_str())?),
                Message::Close(_) => bail!("connection closed"),
                _ => continue,
            }
        }
    }

    /// Frames until one of type `ty` (or an `error`) satisfying `pred`.
    async fn recv_reply(
        &mut self,
        ty: &str,
        pred: impl Fn(&Value) -> bool,
    ) -> anyhow::Result<Value> {
        loop {
            let v = self.recv().await?;
            if (v["type"] == ty || v["type"] == "error") && pred(&v) {
                return Ok(v);
            }
        }
    }

    async fn hello(&mut self, hello: Value) -> anyhow::Result<Value> {
        self.send(&hello).await?;
        let w = self.recv_reply("welcome", |_| true).await?;
        if w["type"] != "welcome" {
            bail!("hello answered with {w}");
        }
        Ok(w)
    }

    async fn close(mut self) {
        let _ = timeout(Duration::from_secs(2), self.ws.close(None)).await;
    }
}

// ---- the clients --------------------------------------------------------------------------

/// A send waiting for its ack (kept across reconnects, retried with the same id).
#[derive(Clone, Debug)]
struct Pending {
    conversation: String,
    cmid: String,
    body: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Role {
    Customer,
    Staff,
}

/// One client (a customer's phone or a staff tablet) and what it remembers across crashes.
struct Client {
    role: Role,
    label: String,
    /// Customer: the resume token once welcomed. Staff: the session token.
    token: Option<String>,
    staff_id: String,
    /// Customer: its conversation once `started`.
    conversation: Option<String>,
    /// Staff: conversations assigned to this staff member (from `welcome` and `state`).
    held: Vec<String>,
    next_held: usize,
    pending: VecDeque<Pending>,
    counter: u64,
    /// A leaving customer sends nothing new; it is done once nothing is pending.
    leaving: bool,
    done: bool,
    body_chars: usize,
}

impl Client {
    fn customer(label: String, body_chars: usize) -> Client {
        Client {
            role: Role::Customer,
            label,
            token: None,
            staff_id: String::new(),
            conversation: None,
            held: Vec::new(),
            next_held: 0,
            pending: VecDeque::new(),
            counter: 0,
            leaving: false,
            done: false,
            body_chars,
        }
    }

    fn staff(label: String, token: String, staff_id: String, body_chars: usize) -> Client {
        Client {
            role: Role::Staff,
            token: Some(token),
            staff_id,
            ..Client::customer(label, body_chars)
        }
    }

    fn send_frame(p: &Pending) -> Value {
        json!({"type":"send","conversation_id":p.conversation,"client_msg_id":p.cmid,"body":p.body})
    }

    /// The next new message, or `None` when this client has nothing to write into.
    fn next_message(&mut self) -> Option<Pending> {
        if self.leaving {
            return None;
        }
        let conversation = match self.role {
            Role::Customer => self.conversation.clone()?,
            Role::Staff => {
                if self.held.is_empty() {
                    return None;
                }
                self.next_held = (self.next_held + 1) % self.held.len();
                self.held[self.next_held].clone()
            }
        };
        self.counter += 1;
        let cmid = format!("c-{}", ulid::Ulid::new());
        // The id is in the body too, so the hub's HQ transcript (which shows bodies, not
        // client ids) can be counted by it.
        let mut body = format!("{cmid} message {} from {}", self.counter, self.label);
        // Random padding (ULIDs, ASCII): it does not compress away in the document's chunks.
        let natural = body.len();
        while body.len() < self.body_chars {
            body.push(' ');
            body.push_str(&ulid::Ulid::new().to_string());
        }
        body.truncate(self.body_chars.max(natural));
        Some(Pending {
            conversation,
            cmid,
            body,
        })
    }

    fn update_held(&mut self, state: &Value) {
        let Some(conv) = state["conversation_id"].as_str() else {
            return;
        };
        let mine = state["agent"]["id"] == self.staff_id.as_str()
            && matches!(
                state["status"].as_str(),
                Some("assigned" | "transferred" | "reopened")
            );
        let at = self.held.iter().position(|c| c == conv);
        match (mine, at) {
            (true, None) => self.held.push(conv.to_string()),
            (false, Some(i)) => {
                self.held.remove(i);
            }
            _ => {}
        }
    }
}

/// One connection's life: connect, `hello`, retry what is pending, then keep `window` sends in
/// flight until the server dies (`Err`) or `stop` asks to finish (outstanding acks are awaited).
async fn session(
    addr: SocketAddr,
    c: &mut Client,
    ledger: &SharedLedger,
    window: usize,
    mut stop: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let mut link = Link::connect(addr).await?;
    let welcome = match (c.role, &c.token) {
        (Role::Staff, Some(t)) => {
            link.hello(json!({"type":"hello","role":"staff","token":t}))
                .await?
        }
        (Role::Customer, Some(t)) => {
            link.hello(json!({"type":"hello","role":"customer","resume_token":t}))
                .await?
        }
        (_, None) => {
            link.hello(json!({"type":"hello","role":"customer","display_name":c.label}))
                .await?
        }
    };
    match c.role {
        Role::Customer => {
            if let Some(t) = welcome["resume_token"].as_str() {
                c.token = Some(t.to_string());
            }
            if c.conversation.is_none() && !c.leaving {
                let rid = format!("r-{}", ulid::Ulid::new());
                link.send(&json!({"type":"start","request_id":rid})).await?;
                let s = link
                    .recv_reply("started", |v| v["request_id"] == rid.as_str())
                    .await?;
                let Some(conv) = s["conversation_id"].as_str() else {
                    bail!("start answered with {s}");
                };
                c.conversation = Some(conv.to_string());
            }
        }
        Role::Staff => {
            c.held.clear();
            for conv in welcome["conversations"].as_array().into_iter().flatten() {
                let mut s = conv.clone();
                s["conversation_id"] = conv["id"].clone();
                c.update_held(&s);
            }
        }
    }

    // Retries first, in their order, with the same client_msg_id.
    let mut inflight: Vec<String> = Vec::new();
    let retries: Vec<Pending> = c.pending.iter().cloned().collect();
    for p in &retries {
        link.send(&Client::send_frame(p)).await?;
        inflight.push(p.cmid.clone());
        ledger.lock().unwrap().retried += 1;
    }

    let mut stopping = *stop.borrow();
    loop {
        if c.leaving && c.pending.is_empty() {
            c.done = true;
            link.close().await;
            return Ok(());
        }
        if stopping && inflight.is_empty() {
            link.close().await;
            return Ok(());
        }
        while !stopping && inflight.len() < window {
            let Some(p) = c.next_message() else { break };
            ledger.lock().unwrap().sent.insert(
                p.cmid.clone(),
                Sent {
                    conversation: p.conversation.clone(),
                    ack: None,
                },
            );
            c.pending.push_back(p.clone());
            // Pending before the frame leaves: a crash in between still retries it.
            link.send(&Client::send_frame(&p)).await?;
            inflight.push(p.cmid);
        }
        let frame = tokio::select! {
            f = link.recv() => f?,
            _ = stop.changed(), if !stopping => {
                stopping = true;
                continue;
            }
        };
        match frame["type"].as_str() {
            Some("ack") => {
                let cmid = frame["client_msg_id"].as_str().unwrap_or_default();
                ledger.lock().unwrap().record_ack(cmid, &frame);
                inflight.retain(|i| i != cmid);
                c.pending.retain(|p| p.cmid != cmid);
            }
            Some("error") => {
                let Some(cmid) = frame["client_msg_id"].as_str() else {
                    continue;
                };
                let code = frame["code"].as_str().unwrap_or_default();
                inflight.retain(|i| i != cmid);
                if retryable(code) {
                    if let Some(p) = c.pending.iter().find(|p| p.cmid == cmid).cloned() {
                        tokio::time::sleep(Duration::from_millis(20)).await;
                        link.send(&Client::send_frame(&p)).await?;
                        inflight.push(p.cmid);
                        ledger.lock().unwrap().retried += 1;
                    }
                } else {
                    c.pending.retain(|p| p.cmid != cmid);
                    let mut l = ledger.lock().unwrap();
                    l.refused += 1;
                    *l.refusal_codes.entry(code.to_string()).or_default() += 1;
                }
            }
            Some("state") if c.role == Role::Staff => c.update_held(&frame),
            _ => {}
        }
    }
}

/// Runs every client's session against `addr` until `stop` or the server's death; returns
/// the clients (with what they still have pending).
async fn run_clients(
    addr: SocketAddr,
    clients: Vec<Client>,
    ledger: &SharedLedger,
    window: usize,
    stop: &watch::Sender<bool>,
) -> Vec<tokio::task::JoinHandle<Client>> {
    clients
        .into_iter()
        .map(|mut c| {
            let ledger = ledger.clone();
            let stop = stop.subscribe();
            tokio::spawn(async move {
                // An error is the server dying under the session: expected here.
                let _ = session(addr, &mut c, &ledger, window, stop).await;
                c
            })
        })
        .collect()
}

async fn join_clients(
    handles: Vec<tokio::task::JoinHandle<Client>>,
) -> anyhow::Result<Vec<Client>> {
    let mut out = Vec::with_capacity(handles.len());
    for h in handles {
        out.push(h.await.context("client task panicked")?);
    }
    Ok(out)
}

/// One customer leaves and a new one arrives: conversations keep being created.
fn rotate_customers(clients: &mut Vec<Client>, arrivals: &mut usize, body_chars: usize) {
    clients.retain(|c| !c.done);
    if let Some(c) = clients
        .iter_mut()
        .find(|c| c.role == Role::Customer && !c.leaving)
    {
        c.leaving = true;
    }
    *arrivals += 1;
    clients.push(Client::customer(format!("customer {arrivals}"), body_chars));
}

// ---- the run ------------------------------------------------------------------------------

/// Runs the cycles against the chosen target and checks the result.
pub async fn run(o: &CrashBenchOptions) -> anyhow::Result<CrashBenchResult> {
    if o.min_delay_ms > o.max_delay_ms {
        bail!("--min-delay-ms is above --max-delay-ms");
    }
    let seed = o.seed.unwrap_or_else(rand::random);
    progress!(
        "target {}, {} cycles, seed {seed} (replay with --seed {seed})",
        o.target.as_str(),
        o.cycles
    );
    let started = std::time::Instant::now();
    let mut result = match o.target {
        CrashTarget::Edge => run_edge(o, seed).await?,
        CrashTarget::Hub => run_hub(o, seed).await?,
    };
    result.duration_secs = started.elapsed().as_secs_f64();
    Ok(result)
}

/// Logs in the admin, creates the staff accounts (high capacity: every chat gets an agent).
async fn setup_staff(http: &Http, n: usize, body_chars: usize) -> anyhow::Result<Vec<Client>> {
    let admin = login(http, ADMIN_USER, ADMIN_PASSWORD).await?;
    let mut out = Vec::new();
    for i in 1..=n {
        let username = format!("crash{i}");
        let password = format!("pw-{username}-12345");
        let r = http
            .post(
                "/api/staff",
                Some(&admin.0),
                &json!({"username": username, "name": format!("Crash Staff {i}"),
                        "password": password, "role": "staff", "capacity": 1000}),
            )
            .await;
        if r.status != 201 {
            bail!("create staff {username}: HTTP {} {}", r.status, r.text);
        }
        let (token, id) = login(http, &username, &password).await?;
        out.push(Client::staff(format!("staff {i}"), token, id, body_chars));
    }
    Ok(out)
}

/// `POST /api/login` → (token, staff id).
async fn login(http: &Http, user: &str, password: &str) -> anyhow::Result<(String, String)> {
    let r = http
        .post(
            "/api/login",
            None,
            &json!({"username": user, "password": password}),
        )
        .await;
    if r.status != 200 {
        bail!("login {user}: HTTP {} {}", r.status, r.text);
    }
    let token = r.body["token"].as_str().context("no token")?.to_string();
    let id = r.body["staff"]["id"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    Ok((token, id))
}

fn median_max(mut v: Vec<f64>) -> (f64, f64) {
    if v.is_empty() {
        return (0.0, 0.0);
    }
    v.sort_by(|a, b| a.total_cmp(b));
    (v[v.len() / 2], v[v.len() - 1])
}

async fn run_edge(o: &CrashBenchOptions, seed: u64) -> anyhow::Result<CrashBenchResult> {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut options = EdgeOptions::default().env("AISLE_LOG", "warn");
    let mut hub = None;
    if o.with_hub {
        let mut h = Hub::try_start("crash").await?;
        let token = h.register_store("store-crash").await;
        options = options.enrolled_at(&h.url(), "store-crash", &token);
        hub = Some(h);
    }
    let mut edge = Edge::try_start_with(options).await?;
    let mut clients = setup_staff(edge.http(), o.staff, o.body_chars).await?;
    let mut arrivals = 0;
    for _ in 0..o.customers {
        arrivals += 1;
        clients.push(Client::customer(
            format!("customer {arrivals}"),
            o.body_chars,
        ));
    }
    let ledger: SharedLedger = Arc::default();
    let (stop, _) = watch::channel(false);
    let mut restarts = Vec::new();
    let mut compactions = 0;
    for cycle in 1..=o.cycles {
        let delay = rng.random_range(o.min_delay_ms..=o.max_delay_ms);
        let handles = run_clients(edge.addr(), clients, &ledger, o.window, &stop).await;
        tokio::time::sleep(Duration::from_millis(delay)).await;
        if let Some((200, text)) = http_get_raw(edge.addr(), "/metrics").await {
            compactions += metric_value(&text, "aisle_document_compactions_total") as u64;
        }
        edge.kill();
        clients = timeout(HANG_GUARD * 2, join_clients(handles))
            .await
            .context("clients did not notice the crash")??;
        edge.try_restart()
            .await
            .with_context(|| format!("restart after the crash of cycle {cycle} (seed {seed})"))?;
        restarts.push(edge.last_ready_time().as_secs_f64() * 1000.0);
        rotate_customers(&mut clients, &mut arrivals, o.body_chars);
        if cycle % 10 == 0 || cycle == o.cycles {
            let l = ledger.lock().unwrap();
            progress!(
                "cycle {cycle}/{}: killed after {delay} ms; {} sent, {} acked so far",
                o.cycles,
                l.sent.len(),
                l.sent.values().filter(|s| s.ack.is_some()).count()
            );
        }
    }
    let (restart_p50_ms, restart_max_ms) = median_max(restarts);
    let mut result = CrashBenchResult {
        document_compactions: Some(compactions),
        target: if o.with_hub { "edge+hub" } else { "edge" },
        seed,
        cycles: o.cycles,
        restart_p50_ms,
        restart_max_ms,
        ..Default::default()
    };
    // Every client task has ended: the ledger is complete.
    let l = std::mem::take(&mut *ledger.lock().unwrap());
    ledger_figures(&l, &mut result);
    check_edge(&edge, &clients, &l, &mut result).await?;
    if let Some(hub) = &mut hub {
        // What the edge acked before its crashes reaches the hub once, after the last restart.
        check_hub(hub, &l, &mut result).await?;
    }
    Ok(result)
}

/// Counts of each `client_msg_id`, and the message ids it was found under.
#[derive(Default)]
struct Found {
    by_cmid: HashMap<String, Vec<String>>,
}

impl Found {
    fn add(&mut self, cmid: &str, message_id: &str) {
        self.by_cmid
            .entry(cmid.to_string())
            .or_default()
            .push(message_id.to_string());
    }
}

/// Compares what a view of the data (`what`) holds with the ledger; adds to the result.
fn compare(what: &str, found: &Found, ledger: &Ledger, r: &mut CrashBenchResult) {
    for (cmid, s) in &ledger.sent {
        let ids = found.by_cmid.get(cmid).map(Vec::as_slice).unwrap_or(&[]);
        if ids.len() > 1 {
            r.duplicated += 1;
            problem(
                r,
                format!(
                    "{what}: {cmid} in {} is there {} times: {ids:?}",
                    s.conversation,
                    ids.len()
                ),
            );
        }
        let Some(ack) = &s.ack else { continue };
        match ids.first() {
            None => {
                r.lost += 1;
                problem(
                    r,
                    format!(
                        "{what}: {cmid} (acked as {}) in {} is missing",
                        ack.message_id, s.conversation
                    ),
                );
            }
            Some(id) if *id != ack.message_id && ids.len() == 1 => {
                r.mismatched += 1;
                problem(
                    r,
                    format!(
                        "{what}: {cmid} was acked as {} but is there as {id}",
                        ack.message_id
                    ),
                );
            }
            _ => {}
        }
    }
}

fn problem(r: &mut CrashBenchResult, p: String) {
    if r.problems.len() < 20 {
        progress!("PROBLEM: {p}");
        r.problems.push(p);
    }
}

fn ledger_figures(l: &Ledger, r: &mut CrashBenchResult) {
    r.sent = l.sent.len() as u64;
    r.acked = l.sent.values().filter(|s| s.ack.is_some()).count() as u64;
    r.retried = l.retried;
    r.duplicate_acks = l.duplicate_acks;
    r.refused = l.refused;
    if !l.refusal_codes.is_empty() {
        progress!("refusals by code: {:?}", l.refusal_codes);
    }
    for c in &l.ack_conflicts {
        r.mismatched += 1;
        let c = c.clone();
        problem(r, c);
    }
}

/// The conversations the run wrote into, in a stable order.
fn conversations_of(l: &Ledger) -> Vec<String> {
    let mut v: Vec<String> = l.sent.values().map(|s| s.conversation.clone()).collect();
    v.sort();
    v.dedup();
    v
}

async fn check_edge(
    edge: &Edge,
    clients: &[Client],
    l: &Ledger,
    r: &mut CrashBenchResult,
) -> anyhow::Result<()> {
    let conversations = conversations_of(l);
    progress!(
        "checking {} conversations ({} acked messages) after the last restart",
        conversations.len(),
        r.acked
    );

    // 1. The public API: every conversation's history over HTTP.
    let (admin, _) = login(edge.http(), ADMIN_USER, ADMIN_PASSWORD).await?;
    let mut http_found = Found::default();
    for conv in &conversations {
        for m in http_history(edge.http(), &admin, conv).await? {
            http_found.add(
                m["client_msg_id"].as_str().unwrap_or_default(),
                m["id"].as_str().unwrap_or_default(),
            );
        }
    }
    compare("HTTP history", &http_found, l, r);

    // 2. The replay a customer's device gets on `resume after_seq 0` (gap-free seqs).
    let mut replay_found = Found::default();
    let mut replayed = std::collections::HashSet::new();
    for c in clients.iter().filter(|c| c.role == Role::Customer) {
        let (Some(token), Some(conv)) = (&c.token, &c.conversation) else {
            continue;
        };
        let msgs = resume_history(edge.addr(), token, conv).await?;
        for (i, m) in msgs.iter().enumerate() {
            if m["seq"].as_u64() != Some(i as u64 + 1) {
                problem(
                    r,
                    format!("resume of {conv}: frame {i} has seq {}", m["seq"]),
                );
                r.mismatched += 1;
                break;
            }
        }
        for m in &msgs {
            replay_found.add(
                m["client_msg_id"].as_str().unwrap_or_default(),
                m["id"].as_str().unwrap_or_default(),
            );
        }
        replayed.insert(conv.clone());
    }
    let replay_ledger = Ledger {
        sent: l
            .sent
            .iter()
            .filter(|(_, s)| replayed.contains(&s.conversation))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
        ..Default::default()
    };
    compare("resume replay", &replay_found, &replay_ledger, r);

    // 3. The documents themselves, loaded from the edge's SQLite file.
    let docs = edge_documents(&edge.data_dir().join("aisle-edge.db"), &conversations)?;
    let mut doc_found = Found::default();
    for (conv, loaded) in docs {
        r.documents_checked += 1;
        match loaded {
            Ok(doc) => match doc.messages() {
                Ok(ms) => {
                    for m in ms {
                        doc_found.add(&m.client_msg_id, &m.id.to_string());
                    }
                }
                Err(e) => {
                    r.unloadable_documents += 1;
                    problem(r, format!("document {conv}: messages do not decode: {e}"));
                }
            },
            Err(e) => {
                r.unloadable_documents += 1;
                problem(r, format!("document {conv} does not load: {e}"));
            }
        }
    }
    compare("edge documents", &doc_found, l, r);
    Ok(())
}

/// `GET /api/conversations/{id}/messages`, page by page.
async fn http_history(http: &Http, token: &str, conv: &str) -> anyhow::Result<Vec<Value>> {
    let mut out = Vec::new();
    let mut after = 0u64;
    loop {
        let r = http
            .get(
                &format!("/api/conversations/{conv}/messages?after_seq={after}&limit=500"),
                Some(token),
            )
            .await;
        if r.status != 200 {
            bail!("{}: HTTP {} {}", r.what, r.status, r.text);
        }
        let page = r.body["messages"].as_array().cloned().unwrap_or_default();
        let more = r.body["more"] == true;
        if let Some(last) = page.last() {
            after = last["seq"].as_u64().context("message without seq")?;
        }
        let empty = page.is_empty();
        out.extend(page);
        if !more || empty {
            return Ok(out);
        }
    }
}

/// The customer's device: `hello` with its token, `resume after_seq 0` until `more` is false.
async fn resume_history(addr: SocketAddr, token: &str, conv: &str) -> anyhow::Result<Vec<Value>> {
    let mut link = Link::connect(addr).await?;
    link.hello(json!({"type":"hello","role":"customer","resume_token":token}))
        .await?;
    let mut out: Vec<Value> = Vec::new();
    let mut after = 0u64;
    loop {
        link.send(&json!({"type":"resume","conversation_id":conv,"after_seq":after}))
            .await?;
        let resumed = loop {
            let v = link.recv().await?;
            if v["conversation_id"] != conv {
                continue;
            }
            match v["type"].as_str() {
                Some("message") => out.push(v),
                Some("resumed") => break v,
                Some("error") => bail!("resume of {conv}: {v}"),
                _ => {}
            }
        };
        if resumed["more"] != true {
            link.close().await;
            return Ok(out);
        }
        after = out.last().and_then(|m| m["seq"].as_u64()).unwrap_or(after);
    }
}

/// Every conversation's document as the edge stores it (its chunks concatenated, loaded).
fn edge_documents(
    db: &Path,
    conversations: &[String],
) -> anyhow::Result<Vec<(String, Result<Conversation, String>)>> {
    let conn = open_read_only(db)?;
    let mut out = Vec::new();
    for conv in conversations {
        let chunks: Vec<Vec<u8>> = conn
            .prepare(
                "SELECT d.bytes FROM doc_chunks d JOIN conversations c ON c.rowid = d.conversation
                 WHERE c.id = ?1 ORDER BY d.n",
            )?
            .query_map([conv], |r| r.get(0))?
            .collect::<Result<_, _>>()?;
        out.push((conv.clone(), load_chunks(&chunks)));
    }
    Ok(out)
}

fn load_chunks(chunks: &[Vec<u8>]) -> Result<Conversation, String> {
    if chunks.is_empty() {
        return Err("no stored chunks".into());
    }
    Conversation::load(&chunks.concat()).map_err(|e| e.to_string())
}

fn open_read_only(path: &Path) -> anyhow::Result<rusqlite::Connection> {
    let conn = rusqlite::Connection::open_with_flags(
        path,
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .with_context(|| format!("open {} read-only", path.display()))?;
    conn.busy_timeout(Duration::from_secs(10))?;
    Ok(conn)
}

// ---- hub target ---------------------------------------------------------------------------

async fn run_hub(o: &CrashBenchOptions, seed: u64) -> anyhow::Result<CrashBenchResult> {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut hub = Hub::try_start("crash").await?;
    hub.set_env("AISLE_HUB_LOG", "warn");
    let token = hub.register_store("store-crash").await;
    let edge = Edge::try_start_with(EdgeOptions::default().env("AISLE_LOG", "warn").enrolled_at(
        &hub.url(),
        "store-crash",
        &token,
    ))
    .await?;
    wait_store_connected(&edge).await?;
    let mut clients = setup_staff(edge.http(), o.staff, o.body_chars).await?;
    let mut arrivals = 0;
    for _ in 0..o.customers {
        arrivals += 1;
        clients.push(Client::customer(
            format!("customer {arrivals}"),
            o.body_chars,
        ));
    }
    let ledger: SharedLedger = Arc::default();
    let mut restarts = Vec::new();
    for cycle in 1..=o.cycles {
        let (stop, _) = watch::channel(false);
        let handles = run_clients(edge.addr(), clients, &ledger, o.window, &stop).await;
        let delay = rng.random_range(o.min_delay_ms..=o.max_delay_ms);
        tokio::time::sleep(Duration::from_millis(delay)).await;
        hub.kill();
        let t0 = std::time::Instant::now();
        // Panics with the hub's logs if it does not come back.
        hub.restart().await;
        restarts.push(t0.elapsed().as_secs_f64() * 1000.0);
        let _ = stop.send(true);
        clients = timeout(HANG_GUARD * 2, join_clients(handles))
            .await
            .context("clients did not finish")??;
        // The next kill comes during a sync session, not while the store waits to reconnect.
        wait_store_connected(&edge).await?;
        rotate_customers(&mut clients, &mut arrivals, o.body_chars);
        if cycle % 10 == 0 || cycle == o.cycles {
            let l = ledger.lock().unwrap();
            progress!(
                "cycle {cycle}/{}: hub killed after {delay} ms; {} sent, {} acked by the edge so far",
                o.cycles,
                l.sent.len(),
                l.sent.values().filter(|s| s.ack.is_some()).count()
            );
        }
    }
    let (restart_p50_ms, restart_max_ms) = median_max(restarts);
    let mut result = CrashBenchResult {
        target: "hub",
        seed,
        cycles: o.cycles,
        restart_p50_ms,
        restart_max_ms,
        ..Default::default()
    };
    let l = std::mem::take(&mut *ledger.lock().unwrap());
    ledger_figures(&l, &mut result);
    check_hub(&mut hub, &l, &mut result).await?;
    Ok(result)
}

async fn wait_store_connected(edge: &Edge) -> anyhow::Result<()> {
    let end = Instant::now() + HANG_GUARD;
    loop {
        let h = edge.http().healthz().await;
        if h.body["hub"]["connected"] == true {
            return Ok(());
        }
        if Instant::now() > end {
            bail!("the store did not reconnect to its hub: {}", h.text);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The HQ transcript of every conversation: message id and body of each message.
async fn hq_transcripts(
    hub: &mut Hub,
    conversations: &[String],
) -> anyhow::Result<HashMap<String, Vec<(String, String)>>> {
    let token = hub.admin_token().await;
    let mut out = HashMap::new();
    for conv in conversations {
        let r = hub
            .http()
            .get(&format!("/api/conversations/{conv}"), Some(&token))
            .await;
        let msgs = match r.status {
            200 => r.body["messages"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|m| {
                    (
                        m["id"].as_str().unwrap_or_default().to_string(),
                        m["body"].as_str().unwrap_or_default().to_string(),
                    )
                })
                .collect(),
            404 => Vec::new(),
            s => bail!("{}: HTTP {s} {}", r.what, r.text),
        };
        out.insert(conv.clone(), msgs);
    }
    Ok(out)
}

async fn check_hub(hub: &mut Hub, l: &Ledger, r: &mut CrashBenchResult) -> anyhow::Result<()> {
    let (conversations, acked_ids) = {
        let acked: HashMap<String, String> = l
            .sent
            .values()
            .filter_map(|s| {
                s.ack
                    .as_ref()
                    .map(|a| (a.message_id.clone(), s.conversation.clone()))
            })
            .collect();
        (conversations_of(l), acked)
    };
    progress!(
        "waiting for the hub to hold {} acked messages of {} conversations",
        acked_ids.len(),
        conversations.len()
    );
    let t0 = std::time::Instant::now();
    let transcripts = loop {
        let t = hq_transcripts(hub, &conversations).await?;
        let held: std::collections::HashSet<&str> =
            t.values().flatten().map(|(id, _)| id.as_str()).collect();
        let missing = acked_ids
            .keys()
            .filter(|id| !held.contains(id.as_str()))
            .count();
        if missing == 0 {
            r.converge_ms = Some(t0.elapsed().as_secs_f64() * 1000.0);
            break t;
        }
        if t0.elapsed() > CONVERGE_LIMIT {
            progress!("after {CONVERGE_LIMIT:?} the hub still misses {missing} acked messages");
            break t;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    // 1. The HQ API: the transcript, counted by the client id the body carries.
    let mut hq_found = Found::default();
    for msgs in transcripts.values() {
        for (id, body) in msgs {
            if let Some(cmid) = body.split_whitespace().next()
                && l.sent.contains_key(cmid)
            {
                hq_found.add(cmid, id);
            }
        }
    }
    compare("HQ transcript", &hq_found, l, r);
    // 2. The hub's documents, loaded from its SQLite file.
    let conn = open_read_only(&hub.database_path())?;
    let mut doc_found = Found::default();
    for conv in &conversations {
        let chunks: Vec<Vec<u8>> = conn
            .prepare("SELECT bytes FROM doc_chunks WHERE doc_key = ?1 ORDER BY seq")?
            .query_map([format!("conversation:{conv}")], |row| row.get(0))?
            .collect::<Result<_, _>>()?;
        r.documents_checked += 1;
        match load_chunks(&chunks).and_then(|d| d.messages().map_err(|e| e.to_string())) {
            Ok(ms) => {
                for m in ms {
                    doc_found.add(&m.client_msg_id, &m.id.to_string());
                }
            }
            Err(e) => {
                r.unloadable_documents += 1;
                problem(r, format!("the hub's document {conv} does not load: {e}"));
            }
        }
    }
    compare("hub documents", &doc_found, l, r);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ledger(entries: &[(&str, Option<&str>)]) -> Ledger {
        Ledger {
            sent: entries
                .iter()
                .map(|(cmid, ack)| {
                    (
                        cmid.to_string(),
                        Sent {
                            conversation: "conv".into(),
                            ack: ack.map(|m| Ack {
                                message_id: m.to_string(),
                            }),
                        },
                    )
                })
                .collect(),
            ..Default::default()
        }
    }

    /// The check must be able to fail: a missing acked message is lost, a client id found
    /// twice is duplicated, an acked message under another id is mismatched; an unacked
    /// message may be absent.
    #[test]
    fn compare_counts_lost_duplicated_and_mismatched() {
        let l = ledger(&[
            ("a", Some("m-a")),
            ("b", Some("m-b")),
            ("c", Some("m-c")),
            ("d", None),
            ("e", None),
            ("f", Some("m-f")),
        ]);
        let mut found = Found::default();
        found.add("a", "m-a");
        // b is lost.
        found.add("c", "m-c");
        found.add("c", "m-c2");
        // d (never acked) is absent: fine. e was committed twice without an ack.
        found.add("e", "m-e");
        found.add("e", "m-e2");
        found.add("f", "m-other");
        let mut r = CrashBenchResult::default();
        compare("test", &found, &l, &mut r);
        assert_eq!(
            (r.lost, r.duplicated, r.mismatched),
            (1, 2, 1),
            "{:?}",
            r.problems
        );
        assert!(!r.passed());

        let mut all = Found::default();
        for (cmid, id) in [("a", "m-a"), ("b", "m-b"), ("c", "m-c"), ("f", "m-f")] {
            all.add(cmid, id);
        }
        let mut r = CrashBenchResult::default();
        compare("test", &all, &l, &mut r);
        assert!(r.passed(), "{:?}", r.problems);
    }
}
