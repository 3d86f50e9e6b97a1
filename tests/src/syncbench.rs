//! `aisle-bench sync`: simulated stores syncing conversations into a real `aisle-hub`.
//!
//! Each simulated store does what a store appliance does on its sync connection
//! (docs/sync-protocol.md), with real aisle-sync documents: it is registered and enrolled over
//! the hub's HTTP API (docs/hub-api.md), opens one WebSocket to `/sync`, says `hello`, reads the
//! hub's manifest and sends its own, and then writes messages into conversations it created
//! itself (`Conversation::create`, `add_new_message`, one Automerge change per batch) and pushes
//! them with [`PeerSync`]: `want` → `next_ready` → `generate` within the window, an answer to
//! every `sync` the hub sends, `on_ack` for every `ack`. Nothing is persisted on the store side
//! (the hub's persistence is what is measured).
//!
//! Two figures:
//!
//! - `merged_messages_per_sec`: messages the hub acknowledged (an `ack`, or a `sync` from the
//!   hub, whose heads cover them: the hub stores before it answers, so those heads are on its
//!   disk) per second over the measured window, all stores together. The load is closed-loop
//!   per conversation: a conversation gets its next batch of messages (one change) when the
//!   round that pushed the previous one is over, so every store keeps
//!   `conversations_per_store` rounds going and the hub's answers pace everything.
//! - `catchup_ms`: one more store writes `catchup_messages` messages into
//!   `catchup_conversations` conversations while offline (not connected; `catchup_batch`
//!   messages per change), then connects: time from the TCP connect until the hub has
//!   acknowledged heads covering all of them. Measured after the load stores disconnected.

use std::collections::{HashMap, VecDeque};
use std::fs::File;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use aisle_sync::protocol::heads_to_wire;
use aisle_sync::{
    Conversation, ConversationId, Credential, CustomerId, DocumentKey, Frame, Head, Limits,
    ManifestEntry, MessageId, MessageRecord, Meta, Participant, PeerSync, StaffId, decode_frame,
    encode_frame,
};
use anyhow::{Context, anyhow, bail};
use futures_util::{FutureExt, SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio::sync::{Semaphore, mpsc, watch};
use tokio::time::{Instant, timeout, timeout_at};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

use crate::edge::{find_binary, free_port, http_get_raw};
use crate::http::Http;

/// Password given to the local hub's first admin through `AISLE_HUB_FIRST_ADMIN_PASSWORD`.
pub const HUB_ADMIN_PASSWORD: &str = "hub-admin-password-for-bench";
/// What the simulated stores claim to run.
const EDGE_VERSION: &str = "0.1.0";
/// Guards against hangs in setup steps and while waiting for an answer (never a speed claim).
const STEP_LIMIT: Duration = Duration::from_secs(60);
const BODY: &str = "Do you have the blue one in size 40? Bench message from the shop floor.";

/// What to run (see `aisle-bench sync --help`).
#[derive(Clone, Debug)]
pub struct SyncBenchOptions {
    /// A running hub (`http://host:port`), or several replicas of one region's hub separated
    /// by commas (the stores are spread over them in turn, as a round-robin load balancer
    /// would; enrollment and login go to the first); `None`: start a local `aisle-hub`.
    pub url: Option<String>,
    /// Admin username on the `url` hub.
    pub user: String,
    /// Admin password on the `url` hub.
    pub password: Option<String>,
    /// Simulated stores, each with its own sync connection.
    pub stores: usize,
    /// Length of the measured window.
    pub duration: Duration,
    /// Conversations each store writes into (rounds it keeps going at once).
    pub conversations_per_store: usize,
    /// Messages per Automerge change (per round) in the throughput phase.
    pub batch: usize,
    /// Messages the catch-up store writes while offline.
    pub catchup_messages: usize,
    /// Conversations they are spread over.
    pub catchup_conversations: usize,
    /// Messages per change while offline.
    pub catchup_batch: usize,
}

/// The figures (`to_json` gives the documented keys).
#[derive(Clone, Debug)]
pub struct SyncBenchResult {
    pub merged_messages_per_sec: f64,
    pub catchup_ms: f64,
    pub stores: usize,
    /// Messages acknowledged by the hub within the measured window.
    pub messages: u64,
    pub duration_secs: f64,
}

impl SyncBenchResult {
    /// Exactly the keys other tools read.
    pub fn to_json(&self) -> Value {
        json!({
            "merged_messages_per_sec": round2(self.merged_messages_per_sec),
            "catchup_ms": round2(self.catchup_ms),
            "stores": self.stores,
            "messages": self.messages,
            "duration_secs": round2(self.duration_secs),
        })
    }

    /// One human-readable line.
    pub fn to_text(&self, o: &SyncBenchOptions) -> String {
        format!(
            "sync: {:.0} merged messages/s ({} messages acknowledged by the hub in {:.1} s, {} stores × {} conversations, {} messages per change); catch-up of {} messages in {} conversations: {:.1} ms",
            self.merged_messages_per_sec,
            self.messages,
            self.duration_secs,
            self.stores,
            o.conversations_per_store,
            o.batch,
            o.catchup_messages,
            o.catchup_conversations.min(o.catchup_messages.max(1)),
            self.catchup_ms
        )
    }
}

fn round2(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

macro_rules! progress {
    ($($t:tt)*) => { eprintln!("[aisle-bench] {}", format!($($t)*)) };
}

// ---- the hub under test ----------------------------------------------------------------------

/// A local `aisle-hub` process: temporary data directory, free port, logs in files.
pub struct HubProcess {
    child: Option<Child>,
    addr: SocketAddr,
    dir: tempfile::TempDir,
}

impl HubProcess {
    /// Starts `aisle-hub` (next to this executable, or `AISLE_HUB_BIN`) and waits for
    /// `GET /healthz`.
    pub async fn start() -> anyhow::Result<HubProcess> {
        let bin = find_binary("aisle-hub", "AISLE_HUB_BIN")?;
        let dir = tempfile::Builder::new()
            .prefix("aisle-hub-bench-")
            .tempdir()
            .context("create temp dir")?;
        let addr: SocketAddr = ([127, 0, 0, 1], free_port()).into();
        let out = File::create(dir.path().join("stdout.log")).context("stdout log")?;
        let err = File::create(dir.path().join("stderr.log")).context("stderr log")?;
        let child = Command::new(&bin)
            .arg("--listen")
            .arg(addr.to_string())
            .arg("--data")
            .arg(dir.path().join("data"))
            .args(["--region", "bench"])
            // The hub reads every AISLE_HUB_* variable as configuration and refuses unknown
            // keys: do not pass on the bench's own.
            .env_remove("AISLE_HUB_BIN")
            .env("AISLE_HUB_FIRST_ADMIN_PASSWORD", HUB_ADMIN_PASSWORD)
            .env("AISLE_HUB_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .with_context(|| format!("spawn {}", bin.display()))?;
        let mut hub = HubProcess {
            child: Some(child),
            addr,
            dir,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = hub.child.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                hub.child = None;
                bail!(
                    "aisle-hub exited with {status} before it was ready\n{}",
                    hub.logs()
                );
            }
            if let Some((200, body)) = http_get_raw(addr, "/healthz").await
                && body.contains("\"ok\"")
            {
                return Ok(hub);
            }
            if Instant::now() > deadline {
                bail!("aisle-hub did not become ready in 20 s\n{}", hub.logs());
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// The data directory (the SQLite database is `aisle-hub.db` in it).
    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// The tail of the hub's stderr.
    pub fn logs(&self) -> String {
        let text = std::fs::read_to_string(self.dir.path().join("stderr.log")).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }

    /// SIGTERM, then waits (SIGKILL after 20 s).
    pub async fn terminate(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        // SAFETY: kill(2) on a child we spawned and have not reaped.
        unsafe {
            libc::kill(child.id() as libc::pid_t, libc::SIGTERM);
        }
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let _ = child.kill();
        let _ = child.wait();
    }
}

impl Drop for HubProcess {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// CPU time (user + system) of a process so far, from `/proc/PID/stat`.
fn process_cpu(pid: u32) -> Option<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    // SAFETY: sysconf has no preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    let ticks = if ticks > 0 { ticks as u64 } else { 100 };
    Some(Duration::from_secs_f64(
        (utime + stime) as f64 / ticks as f64,
    ))
}

/// The hub to talk to, an admin session on it, and the process if the bench started it.
struct HubTarget {
    http: Http,
    /// Where the stores connect: store `i` to `addrs[i % len]`.
    addrs: Vec<SocketAddr>,
    admin_token: String,
    process: Option<HubProcess>,
}

impl HubTarget {
    async fn new(o: &SyncBenchOptions) -> anyhow::Result<HubTarget> {
        let (http, addrs, process, user, password) = match &o.url {
            Some(urls) => {
                let mut addrs = Vec::new();
                let mut first = None;
                for url in urls.split(',').map(str::trim).filter(|u| !u.is_empty()) {
                    let hostport = url
                        .trim_start_matches("http://")
                        .trim_end_matches('/')
                        .to_string();
                    let addr = tokio::net::lookup_host(&hostport)
                        .await
                        .with_context(|| format!("resolve {hostport}"))?
                        .next()
                        .ok_or_else(|| anyhow!("{hostport} resolves to nothing"))?;
                    first.get_or_insert(hostport);
                    addrs.push(addr);
                }
                let first = first.ok_or_else(|| anyhow!("--url names no hub"))?;
                let password = o
                    .password
                    .clone()
                    .ok_or_else(|| anyhow!("--url needs --password (and --user) of an hq_admin"))?;
                (
                    Http::with_base(format!("http://{first}")),
                    addrs,
                    None,
                    o.user.clone(),
                    password,
                )
            }
            None => {
                let hub = HubProcess::start().await?;
                progress!(
                    "started aisle-hub on {} (data in {})",
                    hub.addr(),
                    hub.data_dir().display()
                );
                (
                    Http::new(hub.addr()),
                    vec![hub.addr()],
                    Some(hub),
                    "admin".to_string(),
                    HUB_ADMIN_PASSWORD.to_string(),
                )
            }
        };
        let r = http
            .post(
                "/api/login",
                None,
                &json!({"username": user, "password": password}),
            )
            .await;
        if r.status != 200 {
            bail!("hub login as {user} failed: {} {}", r.status, r.text);
        }
        let admin_token = r.body["token"]
            .as_str()
            .ok_or_else(|| anyhow!("login answer without a token: {}", r.text))?
            .to_string();
        Ok(HubTarget {
            http,
            addrs,
            admin_token,
            process,
        })
    }

    /// Registers `store_id` (admin) and enrolls it: its credential and region.
    async fn enrolled_store(&self, store_id: &str) -> anyhow::Result<(String, String)> {
        let r = self
            .http
            .post(
                "/api/stores",
                Some(&self.admin_token),
                &json!({"store_id": store_id, "name": format!("Bench store {store_id}")}),
            )
            .await;
        if r.status != 201 {
            bail!("register {store_id}: {} {}", r.status, r.text);
        }
        let token = r.body["enrollment_token"]
            .as_str()
            .ok_or_else(|| anyhow!("no enrollment_token: {}", r.text))?
            .to_string();
        let r = self
            .http
            .post(
                "/api/enroll",
                None,
                &json!({"store_id": store_id, "enrollment_token": token, "edge_version": EDGE_VERSION}),
            )
            .await;
        if r.status != 200 {
            bail!("enroll {store_id}: {} {}", r.status, r.text);
        }
        let credential = r.body["credential"].as_str().unwrap_or_default();
        let region = r.body["region"].as_str().unwrap_or_default();
        if credential.is_empty() || region.is_empty() {
            bail!("enroll {store_id}: unexpected answer {}", r.text);
        }
        Ok((credential.to_string(), region.to_string()))
    }

    /// Registers and enrolls `ids`, a few at a time.
    async fn enroll_all(self: &Arc<Self>, ids: &[String]) -> anyhow::Result<Vec<StoreIdentity>> {
        let sem = Arc::new(Semaphore::new(8));
        let mut handles = Vec::new();
        for id in ids {
            let target = Arc::clone(self);
            let sem = Arc::clone(&sem);
            let id = id.clone();
            handles.push(tokio::spawn(async move {
                let _permit = sem.acquire_owned().await;
                let (credential, region) = target.enrolled_store(&id).await?;
                anyhow::Ok(StoreIdentity {
                    store_id: id,
                    credential,
                    region,
                })
            }));
        }
        let mut out = Vec::new();
        for h in handles {
            out.push(h.await.context("enrollment task")??);
        }
        Ok(out)
    }
}

#[derive(Clone, Debug)]
struct StoreIdentity {
    store_id: String,
    credential: String,
    region: String,
}

// ---- one conversation on the store side ------------------------------------------------------

/// A conversation the simulated store created, and what the hub is known to hold of it.
struct Conv {
    key: DocumentKey,
    doc: Conversation,
    customer: CustomerId,
    staff: StaffId,
    /// Messages written so far.
    written: u64,
    /// Messages covered by heads the hub acknowledged.
    acked: u64,
    /// After each change not yet acknowledged: its hash (the document's single head then) and
    /// the messages written up to it. The store is the only writer, so the history is linear
    /// and the hub's heads are always one of these.
    unacked: VecDeque<(Head, u64)>,
}

impl Conv {
    fn create(store_id: &str) -> anyhow::Result<Conv> {
        let customer = CustomerId::new();
        let meta = Meta::new(ConversationId::new(), store_id, customer, crate::now_ms());
        let doc = Conversation::create(&meta)?;
        Ok(Conv {
            key: DocumentKey::from(meta.id),
            doc,
            customer,
            staff: StaffId::new(),
            written: 0,
            acked: 0,
            unacked: VecDeque::new(),
        })
    }

    /// Writes `n` messages as one Automerge change (the edge's writer does one change per
    /// document per batch), customer and staff taking turns.
    fn write_batch(&mut self, n: usize) -> anyhow::Result<()> {
        let now = crate::now_ms();
        for _ in 0..n {
            self.written += 1;
            let sender = if self.written % 2 == 1 {
                Participant::Customer(self.customer)
            } else {
                Participant::Staff(self.staff)
            };
            self.doc.add_new_message(&MessageRecord {
                id: MessageId::new(),
                client_msg_id: format!("b-{}", self.written),
                sender,
                body: BODY.to_string(),
                sent_at_ms: now,
                attachment: None,
                intent: None,
            })?;
        }
        // Reading the heads closes the pending transaction: one change for the batch.
        let heads = self.doc.heads();
        if heads.len() != 1 {
            bail!("a single-writer conversation has {} heads", heads.len());
        }
        self.unacked.push_back((Head::from(heads[0]), self.written));
        Ok(())
    }

    /// The hub holds `heads` durably: returns how many more messages that covers.
    fn on_remote_heads(&mut self, heads: &[Head]) -> u64 {
        let [head] = heads else { return 0 };
        let Some(i) = self.unacked.iter().position(|(h, _)| h == head) else {
            return 0;
        };
        let covered = self.unacked[i].1;
        self.unacked.drain(..=i);
        let newly = covered.saturating_sub(self.acked);
        self.acked = self.acked.max(covered);
        newly
    }

    fn manifest_entry(&mut self) -> ManifestEntry {
        (self.key.clone(), heads_to_wire(&self.doc.heads()))
    }

    fn all_acked(&self) -> bool {
        self.acked == self.written
    }
}

// ---- one store's sync connection -------------------------------------------------------------

type Socket = WebSocketStream<TcpStream>;

/// What a received frame meant for the store.
struct Handled {
    /// The conversation whose round is over (this side awaits nothing more for it).
    round_over: Option<usize>,
    /// Messages newly covered by the hub's durable heads.
    newly_acked: u64,
}

/// A simulated store: its conversations and its sync connection.
struct Store {
    id: StoreIdentity,
    convs: Vec<Conv>,
    index: HashMap<DocumentKey, usize>,
    peer: PeerSync,
    ws: Option<Socket>,
    max_frame: usize,
    /// Frames fed and not yet flushed.
    unflushed: bool,
}

impl Store {
    fn new(id: StoreIdentity, convs: Vec<Conv>) -> Store {
        let limits = Limits::default();
        let index = convs
            .iter()
            .enumerate()
            .map(|(i, c)| (c.key.clone(), i))
            .collect();
        Store {
            id,
            convs,
            index,
            max_frame: limits.max_frame_bytes,
            peer: PeerSync::new(limits),
            ws: None,
            unflushed: false,
        }
    }

    fn ws(&mut self) -> anyhow::Result<&mut Socket> {
        self.ws.as_mut().ok_or_else(|| anyhow!("not connected"))
    }

    /// TCP + WebSocket + hello → welcome + the hub's manifest → this store's manifest; then
    /// every document that differs is wanted (the edge starts the rounds).
    async fn connect(&mut self, addr: SocketAddr) -> anyhow::Result<()> {
        let tcp = TcpStream::connect(addr).await?;
        tcp.set_nodelay(true)?;
        let cfg = WebSocketConfig::default()
            .read_buffer_size(16 * 1024)
            .write_buffer_size(16 * 1024)
            .max_message_size(Some(self.max_frame))
            .max_frame_size(Some(self.max_frame));
        let (ws, _) = tokio_tungstenite::client_async_with_config(
            format!("ws://{addr}/sync"),
            tcp,
            Some(cfg),
        )
        .await
        .context("WebSocket handshake on /sync")?;
        self.ws = Some(ws);
        self.peer = PeerSync::new(self.peer.limits().clone());
        let hello = Frame::Hello {
            store_id: self.id.store_id.clone(),
            region: self.id.region.clone(),
            credential: Credential(self.id.credential.clone()),
            edge_version: EDGE_VERSION.into(),
        };
        self.send(&hello).await?;
        match self.recv(Instant::now() + STEP_LIMIT).await? {
            Frame::Welcome { .. } => {}
            other => bail!("{}: expected welcome, got {other:?}", self.id.store_id),
        }
        let mut remote = Vec::new();
        loop {
            match self.recv(Instant::now() + STEP_LIMIT).await? {
                Frame::Manifest { docs, more } => {
                    remote.extend(docs);
                    if !more {
                        break;
                    }
                }
                other => bail!("{}: expected manifest, got {other:?}", self.id.store_id),
            }
        }
        let local: Vec<ManifestEntry> = self.convs.iter_mut().map(Conv::manifest_entry).collect();
        for frame in aisle_sync::manifest_frames(local.clone(), self.max_frame)? {
            self.feed(&frame).await?;
        }
        let diff = self.peer.on_manifest(&local, &remote);
        if !diff.only_remote.is_empty() {
            bail!(
                "{}: the hub lists {} documents this store does not have",
                self.id.store_id,
                diff.only_remote.len()
            );
        }
        for key in diff.to_sync() {
            self.peer.want(key);
        }
        // The hub's manifest may already cover what was written (a reconnect).
        for (key, heads) in &remote {
            if let Some(&i) = self.index.get(key) {
                self.convs[i].on_remote_heads(heads);
            }
        }
        self.pump().await?;
        self.flush().await
    }

    async fn send(&mut self, frame: &Frame) -> anyhow::Result<()> {
        self.feed(frame).await?;
        self.flush().await
    }

    async fn feed(&mut self, frame: &Frame) -> anyhow::Result<()> {
        let bytes = encode_frame(frame, self.max_frame)?;
        self.ws()?.feed(Message::Binary(bytes.into())).await?;
        self.unflushed = true;
        Ok(())
    }

    async fn flush(&mut self) -> anyhow::Result<()> {
        if self.unflushed {
            self.ws()?.flush().await?;
            self.unflushed = false;
        }
        Ok(())
    }

    /// The next frame (binary frames only), or an error at `deadline` / on close.
    async fn recv(&mut self, deadline: Instant) -> anyhow::Result<Frame> {
        let max = self.max_frame;
        let store = self.id.store_id.clone();
        let ws = self.ws()?;
        loop {
            let msg = timeout_at(deadline, ws.next())
                .await
                .map_err(|_| anyhow!("{store}: no frame from the hub in time"))?
                .ok_or_else(|| anyhow!("{store}: the hub closed the connection"))??;
            match msg {
                Message::Binary(bytes) => return Ok(decode_frame(&bytes, max)?),
                Message::Close(_) => bail!("{store}: the hub closed the connection"),
                _ => continue,
            }
        }
    }

    /// A frame that is already there, without waiting.
    fn try_recv(&mut self) -> anyhow::Result<Option<Frame>> {
        let max = self.max_frame;
        let ws = self.ws()?;
        loop {
            match ws.next().now_or_never() {
                None => return Ok(None),
                Some(None) => bail!("the hub closed the connection"),
                Some(Some(msg)) => match msg? {
                    Message::Binary(bytes) => return Ok(Some(decode_frame(&bytes, max)?)),
                    Message::Close(_) => bail!("the hub closed the connection"),
                    _ => continue,
                },
            }
        }
    }

    /// Starts the rounds the window allows (wanted documents, oldest first).
    async fn pump(&mut self) -> anyhow::Result<()> {
        while let Some(key) = self.peer.next_ready() {
            let Some(&i) = self.index.get(&key) else {
                continue;
            };
            if let Some(frame) = self.peer.generate(&key, &mut self.convs[i].doc) {
                if let Frame::Error { code, message, .. } = &frame {
                    bail!(
                        "{}: could not send {key}: {code}: {message}",
                        self.id.store_id
                    );
                }
                self.feed(&frame).await?;
            }
        }
        Ok(())
    }

    /// Writes a batch into conversation `i` and wants it pushed.
    fn write(&mut self, i: usize, batch: usize) -> anyhow::Result<()> {
        self.convs[i].write_batch(batch)?;
        self.peer.want(self.convs[i].key.clone());
        Ok(())
    }

    /// Applies one frame from the hub, feeding the answer the protocol requires.
    async fn handle(&mut self, frame: Frame) -> anyhow::Result<Handled> {
        let mut out = Handled {
            round_over: None,
            newly_acked: 0,
        };
        match frame {
            Frame::Sync { doc, message } => {
                let &i = self
                    .index
                    .get(&doc)
                    .ok_or_else(|| anyhow!("the hub pushed {doc}, which this store never had"))?;
                let conv = &mut self.convs[i];
                if let Err(err) = self.peer.receive(&doc, &mut conv.doc, &message) {
                    bail!("{}: receiving {doc}: {err}", self.id.store_id);
                }
                let answer = self.peer.answer(&doc, &mut conv.doc);
                if let Some(heads) = self.peer.remote_heads(&doc) {
                    out.newly_acked = conv.on_remote_heads(heads);
                }
                self.feed(&answer).await?;
                if !self.peer.is_awaiting(&doc) {
                    out.round_over = Some(i);
                }
            }
            Frame::Ack { doc, heads } => {
                self.peer.on_ack(&doc, &heads);
                if let Some(&i) = self.index.get(&doc) {
                    out.newly_acked = self.convs[i].on_remote_heads(&heads);
                    out.round_over = Some(i);
                }
            }
            Frame::Ping => self.feed(&Frame::Pong).await?,
            Frame::Pong => {}
            Frame::Error { code, message, doc } => bail!(
                "{}: the hub sent error {code} ({message}) about {doc:?}",
                self.id.store_id
            ),
            other => bail!("{}: unexpected {other:?}", self.id.store_id),
        }
        Ok(out)
    }

    /// Syncs until the hub holds everything written (no new writes meanwhile).
    async fn sync_all(&mut self, deadline: Instant) -> anyhow::Result<()> {
        self.pump().await?;
        self.flush().await?;
        while !self.convs.iter().all(Conv::all_acked) {
            let frame = self.recv(deadline).await?;
            self.handle(frame).await?;
            while let Some(frame) = self.try_recv()? {
                self.handle(frame).await?;
            }
            self.pump().await?;
            self.flush().await?;
        }
        Ok(())
    }

    async fn close(&mut self) {
        if let Some(mut ws) = self.ws.take() {
            let _ = timeout(Duration::from_secs(2), ws.close(None)).await;
        }
    }
}

// ---- the throughput phase --------------------------------------------------------------------

#[derive(Default)]
struct LoadStats {
    /// Messages newly covered by the hub's heads within the window.
    merged: u64,
    rounds: u64,
}

/// One load store: set up (conversations created and synced once), report ready, wait for the
/// start, then keep every conversation's round going until the deadline.
async fn load_store(
    mut store: Store,
    addr: SocketAddr,
    batch: usize,
    setup: Arc<Semaphore>,
    ready: mpsc::Sender<anyhow::Result<()>>,
    mut go: watch::Receiver<Option<(Instant, Instant)>>,
) -> anyhow::Result<LoadStats> {
    let prepared = async {
        let _permit = setup.acquire().await?;
        for i in 0..store.convs.len() {
            store.write(i, batch)?;
        }
        store.connect(addr).await?;
        store.sync_all(Instant::now() + STEP_LIMIT).await
    }
    .await;
    let failed = prepared.is_err();
    let _ = ready
        .send(prepared.map_err(|e| e.context("store setup")))
        .await;
    if failed {
        return Ok(LoadStats::default());
    }
    let Some((start, deadline)) = *go.wait_for(Option::is_some).await? else {
        return Ok(LoadStats::default());
    };
    let mut stats = LoadStats::default();
    for i in 0..store.convs.len() {
        store.write(i, batch)?;
    }
    store.pump().await?;
    store.flush().await?;
    loop {
        let frame = match timeout_at(deadline, store.recv(deadline + STEP_LIMIT)).await {
            Err(_) => break,
            Ok(frame) => frame?,
        };
        let mut next = Some(frame);
        while let Some(frame) = next {
            let h = store.handle(frame).await?;
            let now = Instant::now();
            if now >= start && now <= deadline {
                stats.merged += h.newly_acked;
            }
            if let Some(i) = h.round_over {
                stats.rounds += 1;
                if now < deadline {
                    store.write(i, batch)?;
                }
            }
            next = store.try_recv()?;
        }
        store.pump().await?;
        store.flush().await?;
    }
    store.close().await;
    Ok(stats)
}

// ---- the scenario ----------------------------------------------------------------------------

/// Runs the benchmark: the throughput window with `stores` stores, then the catch-up store.
pub async fn run(o: &SyncBenchOptions) -> anyhow::Result<SyncBenchResult> {
    if o.stores == 0 || o.conversations_per_store == 0 || o.batch == 0 || o.catchup_batch == 0 {
        bail!("--stores, --conversations-per-store, --batch and --catchup-batch must be > 0");
    }
    let target = Arc::new(HubTarget::new(o).await?);
    let run_id = ulid::Ulid::new().to_string().to_lowercase();
    let run_id = &run_id[run_id.len() - 8..];
    let ids: Vec<String> = (0..o.stores)
        .map(|i| format!("bench-{run_id}-{i}"))
        .chain([format!("bench-{run_id}-catchup")])
        .collect();
    progress!("sync: registering and enrolling {} stores", ids.len());
    let mut identities = target.enroll_all(&ids).await?;
    let catchup_identity = identities.pop().expect("the catch-up store");

    // The catch-up store writes while offline: before anything is measured.
    let catchup_convs = o.catchup_conversations.clamp(1, o.catchup_messages.max(1));
    progress!(
        "sync: the catch-up store writes {} messages into {catchup_convs} conversations offline",
        o.catchup_messages
    );
    let mut convs = Vec::with_capacity(catchup_convs);
    for c in 0..catchup_convs {
        let mut conv = Conv::create(&catchup_identity.store_id)?;
        let mut left = o.catchup_messages / catchup_convs
            + usize::from(c < o.catchup_messages % catchup_convs);
        while left > 0 {
            let n = left.min(o.catchup_batch);
            conv.write_batch(n)?;
            left -= n;
        }
        convs.push(conv);
    }
    let mut catchup_store = Store::new(catchup_identity, convs);

    // Throughput.
    progress!(
        "sync: connecting {} stores × {} conversations",
        o.stores,
        o.conversations_per_store
    );
    let (go_tx, go_rx) = watch::channel(None);
    let (ready_tx, mut ready_rx) = mpsc::channel(o.stores.max(1));
    let setup = Arc::new(Semaphore::new(16));
    let mut tasks = Vec::new();
    for (i, identity) in identities.into_iter().enumerate() {
        let convs = (0..o.conversations_per_store)
            .map(|_| Conv::create(&identity.store_id))
            .collect::<anyhow::Result<Vec<_>>>()?;
        let store = Store::new(identity, convs);
        tasks.push(tokio::spawn(load_store(
            store,
            target.addrs[i % target.addrs.len()],
            o.batch,
            Arc::clone(&setup),
            ready_tx.clone(),
            go_rx.clone(),
        )));
    }
    drop(ready_tx);
    for _ in 0..o.stores {
        match ready_rx.recv().await {
            Some(Ok(())) => {}
            Some(Err(e)) => {
                drop(go_tx);
                return Err(e);
            }
            None => bail!("store tasks ended early"),
        }
    }
    let hub_pid = target.process.as_ref().and_then(HubProcess::pid);
    let hub_cpu0 = hub_pid.and_then(process_cpu);
    let own_cpu0 = process_cpu(std::process::id());
    let duration = o.duration.max(Duration::from_secs(1));
    progress!("sync: measuring for {duration:?}");
    let start = Instant::now();
    go_tx.send(Some((start, start + duration)))?;
    let mut stats = LoadStats::default();
    for t in tasks {
        let s = t.await.context("store task")??;
        stats.merged += s.merged;
        stats.rounds += s.rounds;
    }
    let wall = start.elapsed();
    if let (Some(pid), Some(c0), Some(o0)) = (hub_pid, hub_cpu0, own_cpu0)
        && let (Some(c1), Some(o1)) = (process_cpu(pid), process_cpu(std::process::id()))
    {
        progress!(
            "sync: CPU over {:.1} s: aisle-hub {:.2} cores, aisle-bench {:.2} cores; {} rounds ({:.0}/s, {:.1} messages each)",
            wall.as_secs_f64(),
            (c1 - c0).as_secs_f64() / wall.as_secs_f64(),
            (o1 - o0).as_secs_f64() / wall.as_secs_f64(),
            stats.rounds,
            stats.rounds as f64 / duration.as_secs_f64(),
            stats.merged as f64 / stats.rounds.max(1) as f64,
        );
    }

    // Catch-up, on a hub that is otherwise idle.
    tokio::time::sleep(Duration::from_millis(300)).await;
    progress!("sync: catch-up store connects");
    let t0 = Instant::now();
    catchup_store.connect(target.addrs[0]).await?;
    catchup_store.sync_all(t0 + STEP_LIMIT).await?;
    let catchup = t0.elapsed();
    catchup_store.close().await;

    if let Some(mut hub) = Arc::try_unwrap(target).ok().and_then(|t| t.process) {
        hub.terminate().await;
    }
    Ok(SyncBenchResult {
        merged_messages_per_sec: stats.merged as f64 / duration.as_secs_f64(),
        catchup_ms: catchup.as_secs_f64() * 1000.0,
        stores: o.stores,
        messages: stats.merged,
        duration_secs: duration.as_secs_f64(),
    })
}
