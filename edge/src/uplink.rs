//! The store's uplink to the region's hub: one WebSocket (`GET /sync` on the hub), binary
//! aisle-sync frames (docs/sync-protocol.md), kept up for as long as the appliance runs.
//!
//! - Enrollment first ([`crate::enrollment`]); a refused enrollment is logged, shown in
//!   `/healthz`, and the store keeps serving on its own.
//! - Each session: `hello` → `welcome` (or `refused`: logged, shown, retried rarely), manifests
//!   both ways, then rounds for every conversation whose heads differ, and live rounds for
//!   every conversation that changes while connected ([`Changes`]).
//! - The documents stay with the writer thread: a hub `sync` becomes a writer command
//!   ([`SyncInCmd`]) and its answer comes back after the commit; outgoing rounds are generated
//!   by the writer too ([`SyncOutCmd`]). Replies are sent in the order the commands were
//!   queued, so each document's messages stay in order.
//! - Back-pressure: at most `max_sync_docs_in_flight` rounds open (the protocol's window) and
//!   `max_sync_pending_frames` hub frames being applied; past that the socket is not read.
//! - What the hub acknowledged is written to `conversations.hub_heads`, so the store knows which
//!   conversations the hub holds durably.
//! - Lost link: reconnect after a doubling, jittered delay; nothing is lost meanwhile (the
//!   store writes to its own disk, and the next session's manifests find what changed).

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use aisle_sync::protocol::{MAX_ERASE_DOCS, codes};
use aisle_sync::{
    ConversationId, Credential, DocumentKey, Frame, ManifestEntry, PeerSync, decode_frame,
    encode_frame, manifest_frames,
};
use futures_util::stream::{FuturesOrdered, StreamExt};
use futures_util::{SinkExt, future::BoxFuture};
use serde::Serialize;
use tokio::sync::oneshot;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

use crate::App;
use crate::enrollment::{self, EnrollError, StoreCredential};
use crate::error::ApiError;
use crate::metrics::METRICS;
use crate::now_ms;
use crate::store::writer::Command;
use crate::store::writer::replica::{HubSession, SyncInCmd, SyncOutCmd};

/// What `/healthz` shows about the hub link.
#[derive(Clone, Debug, Default, Serialize)]
pub struct HubStatus {
    pub url: Option<String>,
    pub enrolled: bool,
    pub connected: bool,
    pub region: Option<String>,
    pub hub_id: Option<String>,
    /// Last time the hub acknowledged something (or the last session started).
    pub last_sync_at_ms: Option<u64>,
    /// The last refusal or failure, until the next successful session.
    pub error: Option<StatusError>,
}

#[derive(Clone, Debug, Serialize)]
pub struct StatusError {
    pub code: String,
    pub message: String,
    pub at_ms: u64,
}

/// The uplink's shared state: its status and, once enrolled, the credential (the hand-off
/// redemption asks the hub with it).
#[derive(Default)]
pub struct Uplink {
    status: Mutex<HubStatus>,
    credential: Mutex<Option<StoreCredential>>,
    http: reqwest::Client,
}

impl Uplink {
    pub fn status(&self) -> HubStatus {
        self.status.lock().map(|s| s.clone()).unwrap_or_default()
    }

    pub fn credential(&self) -> Option<StoreCredential> {
        self.credential.lock().ok().and_then(|c| c.clone())
    }

    /// A store-authenticated request to the hub (hand-off codes), if enrolled.
    fn hub_request(&self, app: &App, path: &str) -> Option<reqwest::RequestBuilder> {
        let url = app.config.hub.url.as_deref()?.trim_end_matches('/');
        let credential = self.credential()?;
        Some(
            self.http
                .post(format!("{url}{path}"))
                .timeout(Duration::from_millis(
                    app.config.limits.sync_connect_timeout_ms,
                ))
                .header("x-aisle-store", credential.store_id)
                .bearer_auth(credential.credential),
        )
    }

    fn update(&self, f: impl FnOnce(&mut HubStatus)) {
        if let Ok(mut status) = self.status.lock() {
            f(&mut status);
        }
    }

    fn fail(&self, code: &str, message: impl Into<String>) {
        let message = message.into();
        METRICS.sync_error(code);
        self.update(|s| {
            s.connected = false;
            s.error = Some(StatusError {
                code: code.to_owned(),
                message,
                at_ms: now_ms(),
            })
        });
    }
}

/// How a session ended.
enum Ended {
    /// The hub refused this store (`refused` frame): an operator must act.
    Refused,
    /// Anything else: the link, the hub or this side failed; retry soon.
    Lost(String),
    Shutdown,
}

/// Runs the uplink until shutdown (spawned at start when `hub.url` is set).
pub async fn run(app: Arc<App>) {
    let Some(url) = app.config.hub.url.clone() else {
        return;
    };
    let url = url.trim_end_matches('/').to_owned();
    app.uplink.update(|s| s.url = Some(url.clone()));
    let mut shutdown = app.shutdown.subscribe();
    let limits = app.config.limits.clone();
    let http = match reqwest::Client::builder()
        .timeout(Duration::from_millis(limits.sync_connect_timeout_ms))
        .build()
    {
        Ok(http) => http,
        Err(err) => {
            tracing::error!(error = %err, "cannot build the HTTP client; no hub sync");
            return;
        }
    };
    let mut retry = Backoff::new(limits.sync_retry_min_ms, limits.sync_retry_max_ms);
    let credential = loop {
        match enrollment::obtain(&app.config, &http).await {
            Ok(credential) => break credential,
            Err(err) => {
                tracing::error!(error = %err, "not syncing with the hub; the store keeps serving on its own");
                app.uplink.fail(&err.code(), err.to_string());
                let delay = if err.is_transient() {
                    retry.next()
                } else if matches!(err, EnrollError::NoToken) {
                    // Nothing can change without a restart with a token.
                    Duration::from_secs(365 * 24 * 3600)
                } else {
                    Duration::from_millis(limits.sync_refused_retry_ms)
                };
                tokio::select! {
                    _ = shutdown.recv() => return,
                    _ = tokio::time::sleep(delay) => {}
                }
            }
        }
    };
    app.uplink.update(|s| {
        s.enrolled = true;
        s.region = Some(credential.region.clone());
        s.hub_id = Some(credential.hub_id.clone());
    });
    if let Ok(mut slot) = app.uplink.credential.lock() {
        *slot = Some(credential.clone());
    }
    app.changes.enable();
    let mut retry = Backoff::new(limits.sync_retry_min_ms, limits.sync_retry_max_ms);
    loop {
        let ended = tokio::select! {
            _ = shutdown.recv() => Ended::Shutdown,
            ended = session(&app, &url, &credential, &mut retry) => ended,
        };
        METRICS.hub_connected.set(0);
        app.uplink.update(|s| s.connected = false);
        let delay = match ended {
            Ended::Shutdown => return,
            Ended::Refused => Duration::from_millis(limits.sync_refused_retry_ms),
            Ended::Lost(reason) => {
                tracing::info!(reason, "hub link lost; reconnecting");
                retry.next()
            }
        };
        tokio::select! {
            _ = shutdown.recv() => return,
            _ = tokio::time::sleep(delay) => {}
        }
    }
}

/// A doubling delay with ±25 % jitter (so a region's stores do not all reconnect in step after
/// a hub restart).
struct Backoff {
    min_ms: u64,
    max_ms: u64,
    next_ms: u64,
}

impl Backoff {
    fn new(min_ms: u64, max_ms: u64) -> Self {
        Self {
            min_ms,
            max_ms,
            next_ms: min_ms,
        }
    }

    fn next(&mut self) -> Duration {
        let base = self.next_ms;
        self.next_ms = (self.next_ms * 2).min(self.max_ms);
        let jitter = rand::random_range(0.75..1.25);
        Duration::from_millis((base as f64 * jitter) as u64)
    }

    fn reset(&mut self) {
        self.next_ms = self.min_ms;
    }
}

type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// What a writer reply is for.
enum Pending {
    /// Frames answering hub `sync`s.
    Answer,
    /// Frames of rounds this side started.
    Rounds,
}

type PendingReply = BoxFuture<'static, (Pending, Result<Vec<Frame>, ApiError>)>;

/// One session, from connect to the first failure.
async fn session(
    app: &Arc<App>,
    url: &str,
    credential: &StoreCredential,
    retry: &mut Backoff,
) -> Ended {
    let limits = &app.config.limits;
    let max_frame = limits.max_sync_frame_bytes;
    let ws_url = format!("{}/sync", url.replacen("http", "ws", 1));
    let config = WebSocketConfig::default()
        .max_message_size(Some(max_frame))
        .max_frame_size(Some(max_frame));
    let connect = tokio_tungstenite::connect_async_with_config(ws_url, Some(config), true);
    let timeout = Duration::from_millis(limits.sync_connect_timeout_ms);
    let mut socket = match tokio::time::timeout(timeout, connect).await {
        Ok(Ok((socket, _))) => socket,
        Ok(Err(err)) => {
            app.uplink.fail("hub_unreachable", err.to_string());
            return Ended::Lost(format!("connect: {err}"));
        }
        Err(_) => {
            app.uplink.fail("hub_unreachable", "connect timed out");
            return Ended::Lost("connect timed out".into());
        }
    };
    let hello = Frame::Hello {
        store_id: credential.store_id.clone(),
        region: credential.region.clone(),
        credential: Credential(credential.credential.clone()),
        edge_version: env!("CARGO_PKG_VERSION").into(),
    };
    if let Err(reason) = send(&mut socket, &hello, max_frame).await {
        return Ended::Lost(reason);
    }
    let welcome = match tokio::time::timeout(timeout, receive(&mut socket, max_frame)).await {
        Ok(Ok(frame)) => frame,
        Ok(Err(reason)) => return Ended::Lost(reason),
        Err(_) => return Ended::Lost("no welcome".into()),
    };
    let (hub_id, resolved_retention_secs) = match welcome {
        Frame::Welcome {
            region,
            hub_id,
            resolved_retention_secs,
        } if region == credential.region => (hub_id, resolved_retention_secs),
        Frame::Welcome { region, .. } => {
            let message = format!(
                "the hub serves region {region}, this store is enrolled in {}",
                credential.region
            );
            tracing::error!(%message, "hub refused: not syncing");
            app.uplink.fail(codes::WRONG_REGION, message);
            return Ended::Refused;
        }
        Frame::Refused { code, message } => {
            tracing::error!(code, %message, "the hub refused this store; it keeps serving on its own");
            app.uplink.fail(&code, message);
            return Ended::Refused;
        }
        other => return Ended::Lost(format!("expected welcome, got {}", other.kind())),
    };
    retry.reset();
    METRICS.hub_connected.set(1);
    app.uplink.update(|s| {
        s.connected = true;
        s.error = None;
        s.hub_id = Some(hub_id.clone());
        s.last_sync_at_ms = Some(now_ms());
    });
    tracing::info!(hub_id = %hub_id, region = %credential.region, "connected to the hub");
    crate::erasure::remember_region_retention(app, resolved_retention_secs).await;

    static SESSIONS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
    let hub = Arc::new(HubSession {
        hub_id,
        session_id: SESSIONS.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
        peer: Mutex::new(PeerSync::new(limits.sync())),
    });
    // The manifests cover whatever changed before this session.
    let _ = app.changes.take();
    let local = match local_manifest(app).await {
        Ok(local) => local,
        Err(err) => return Ended::Lost(format!("reading the manifest: {}", err.message)),
    };
    let frames = match manifest_frames(local.clone(), max_frame) {
        Ok(frames) => frames,
        Err(err) => return Ended::Lost(format!("manifest: {err}")),
    };
    for frame in &frames {
        if let Err(reason) = send(&mut socket, frame, max_frame).await {
            return Ended::Lost(reason);
        }
    }
    let mut link = Link {
        app: Arc::clone(app),
        hub,
        local_manifest: local,
        remote_manifest: Vec::new(),
        erasures_sent: HashSet::new(),
        pending: FuturesOrdered::new(),
        generating: false,
        acked: HashSet::new(),
        socket,
        max_frame,
    };
    link.run().await
}

struct Link {
    app: Arc<App>,
    hub: Arc<HubSession>,
    local_manifest: Vec<ManifestEntry>,
    remote_manifest: Vec<ManifestEntry>,
    pending: FuturesOrdered<PendingReply>,
    /// A `SyncOut` is with the writer (the window is counted when it comes back).
    generating: bool,
    /// Conversations the hub answered since the last flush of `hub_heads`.
    acked: HashSet<DocumentKey>,
    /// Erasures told to the hub this session, not yet confirmed (not sent twice).
    erasures_sent: HashSet<ConversationId>,
    socket: Socket,
    max_frame: usize,
}

impl Link {
    async fn run(&mut self) -> Ended {
        let limits = self.app.config.limits.clone();
        let mut shutdown = self.app.shutdown.subscribe();
        let heartbeat = Duration::from_secs(limits.heartbeat_interval_secs);
        let idle = Duration::from_secs(limits.idle_timeout_secs);
        let mut ping = tokio::time::interval(heartbeat);
        let mut flush = tokio::time::interval(Duration::from_millis(500));
        let mut last_heard = Instant::now();
        let app = Arc::clone(&self.app);
        // Erasures made here while the hub was away (or not yet confirmed by it).
        if let Err(reason) = self.tell_erasures().await {
            return Ended::Lost(reason);
        }
        loop {
            if let Err(reason) = self.pump() {
                return Ended::Lost(reason);
            }
            let can_read = self.pending.len() < limits.max_sync_pending_frames;
            tokio::select! {
                _ = shutdown.recv() => {
                    self.flush_acks().await;
                    let _ = self.socket.close(None).await;
                    return Ended::Shutdown;
                }
                Some((kind, result)) = self.pending.next(), if !self.pending.is_empty() => {
                    if matches!(kind, Pending::Rounds) {
                        self.generating = false;
                    }
                    let frames = match result {
                        Ok(frames) => frames,
                        Err(err) => return Ended::Lost(format!("writer: {}", err.message)),
                    };
                    for frame in &frames {
                        if let Err(reason) = send(&mut self.socket, frame, self.max_frame).await {
                            return Ended::Lost(reason);
                        }
                    }
                }
                message = self.socket.next(), if can_read => {
                    last_heard = Instant::now();
                    let frame = match message {
                        Some(Ok(Message::Binary(bytes))) => match decode_frame(&bytes, self.max_frame) {
                            Ok(frame) => frame,
                            Err(err) => {
                                let _ = send(&mut self.socket, &err.to_frame(), self.max_frame).await;
                                return Ended::Lost(format!("bad frame from the hub: {err}"));
                            }
                        },
                        Some(Ok(Message::Close(_))) | None => return Ended::Lost("closed by the hub".into()),
                        Some(Ok(_)) => continue,
                        Some(Err(err)) => return Ended::Lost(err.to_string()),
                    };
                    METRICS.sync_frames.with_label_values(&["in", frame.kind()]).inc();
                    if let Some(ended) = self.on_frame(frame).await {
                        return ended;
                    }
                }
                _ = app.changes.changed() => {
                    if !app.changes.take_erased().is_empty()
                        && let Err(reason) = self.tell_erasures().await
                    {
                        return Ended::Lost(reason);
                    }
                    let changed = app.changes.take();
                    if let Ok(mut peer) = self.hub.peer.lock() {
                        for id in changed {
                            peer.want(DocumentKey::from(id));
                        }
                    }
                }
                _ = ping.tick() => {
                    if last_heard.elapsed() > idle {
                        return Ended::Lost("the hub went silent".into());
                    }
                    if let Err(reason) = send(&mut self.socket, &Frame::Ping, self.max_frame).await {
                        return Ended::Lost(reason);
                    }
                }
                _ = flush.tick() => self.flush_acks().await,
            }
        }
    }

    /// Starts rounds for wanted conversations while the window has room (one writer command at
    /// a time, so the window is counted before the next one).
    fn pump(&mut self) -> Result<(), String> {
        if self.generating {
            return Ok(());
        }
        let keys: Vec<DocumentKey> = {
            let mut peer = self.hub.peer.lock().map_err(|_| "sync lock poisoned")?;
            let room = peer
                .limits()
                .max_docs_in_flight
                .saturating_sub(peer.in_flight());
            let mut keys = Vec::with_capacity(room);
            while keys.len() < room.max(1) {
                let Some(key) = peer.next_ready() else { break };
                keys.push(key);
            }
            keys
        };
        if keys.is_empty() {
            return Ok(());
        }
        let (reply, answer) = oneshot::channel();
        let command = Command::SyncOut(SyncOutCmd {
            session: Arc::clone(&self.hub),
            keys,
            reply,
        });
        self.submit(command, Pending::Rounds, answer);
        self.generating = true;
        Ok(())
    }

    fn submit(
        &mut self,
        command: Command,
        kind: Pending,
        answer: oneshot::Receiver<Result<Vec<Frame>, ApiError>>,
    ) {
        let writer = self.app.writer.clone();
        self.pending.push_back(Box::pin(async move {
            let mut command = Some(command);
            // A full write queue is the chat's back-pressure: wait for room rather than fail
            // the session.
            while let Some(next) = command.take() {
                match writer.submit_or_return(next) {
                    Ok(()) => {}
                    Err(Some(back)) => {
                        command = Some(back);
                        tokio::time::sleep(Duration::from_millis(5)).await;
                    }
                    Err(None) => {
                        return (kind, Err(ApiError::internal("the writer has stopped")));
                    }
                }
            }
            let result = match answer.await {
                Ok(result) => result,
                Err(_) => Err(ApiError::internal("the writer dropped a sync command")),
            };
            (kind, result)
        }));
    }

    async fn on_frame(&mut self, frame: Frame) -> Option<Ended> {
        match frame {
            Frame::Manifest { docs, more } => {
                if self.remote_manifest.len() + docs.len()
                    > aisle_sync::protocol::MAX_MANIFEST_ENTRIES
                {
                    return Some(Ended::Lost("the hub's manifest is too long".into()));
                }
                self.remote_manifest.extend(docs);
                if !more {
                    let remote = std::mem::take(&mut self.remote_manifest);
                    let local = std::mem::take(&mut self.local_manifest);
                    let mut peer = self.hub.peer.lock().ok()?;
                    let diff = peer.on_manifest(&local, &remote);
                    let to_sync = diff.to_sync();
                    tracing::info!(conversations = to_sync.len(), "manifests compared");
                    for key in to_sync {
                        peer.want(key);
                    }
                }
            }
            Frame::Sync { doc, message } => {
                let (reply, answer) = oneshot::channel();
                let command = Command::SyncIn(SyncInCmd {
                    session: Arc::clone(&self.hub),
                    key: doc.clone(),
                    message,
                    reply,
                });
                self.acked.insert(doc);
                self.submit(command, Pending::Answer, answer);
            }
            Frame::Ack { doc, heads } => {
                if let Ok(mut peer) = self.hub.peer.lock() {
                    peer.on_ack(&doc, &heads);
                }
                self.acked.insert(doc);
            }
            Frame::Erase { docs } => self.on_erase(docs).await,
            Frame::Ping => {
                if let Err(reason) = send(&mut self.socket, &Frame::Pong, self.max_frame).await {
                    return Some(Ended::Lost(reason));
                }
            }
            Frame::Pong => {}
            Frame::Error {
                doc: Some(doc),
                code,
                message,
            } => {
                tracing::warn!(doc = %doc, code, %message, "the hub refused a document");
                METRICS.sync_error(&code);
                if let Ok(mut peer) = self.hub.peer.lock() {
                    peer.on_error(&doc);
                }
            }
            Frame::Error {
                doc: None,
                code,
                message,
            } => {
                tracing::warn!(code, %message, "the hub ended the session");
                self.app.uplink.fail(&code, message);
                return Some(Ended::Lost(format!("hub error {code}")));
            }
            Frame::Refused { code, message } => {
                self.app.uplink.fail(&code, message);
                return Some(Ended::Refused);
            }
            other => {
                let frame = Frame::Error {
                    code: codes::BAD_FRAME.into(),
                    message: format!("{} is not valid now", other.kind()),
                    doc: None,
                };
                let _ = send(&mut self.socket, &frame, self.max_frame).await;
                return Some(Ended::Lost(format!("unexpected {}", other.kind())));
            }
        }
        None
    }

    /// Sends `erase` frames for the conversations erased here that the hub has not confirmed.
    async fn tell_erasures(&mut self) -> Result<(), String> {
        let mut after = None;
        loop {
            let page = crate::erasure::untold(&self.app, after, MAX_ERASE_DOCS)
                .await
                .map_err(|err| format!("reading erasures: {}", err.message))?;
            let full = page.len() == MAX_ERASE_DOCS;
            after = page.last().copied();
            let docs: Vec<DocumentKey> = page
                .into_iter()
                .filter(|id| self.erasures_sent.insert(*id))
                .map(DocumentKey::from)
                .collect();
            if !docs.is_empty() {
                send(&mut self.socket, &Frame::Erase { docs }, self.max_frame).await?;
            }
            if !full {
                return Ok(());
            }
        }
    }

    /// The hub erased these conversations (or confirms it erased those this store told it
    /// about): erase the copies held here and keep their tombstones as told.
    async fn on_erase(&mut self, docs: Vec<DocumentKey>) {
        let ids: Vec<ConversationId> = docs.iter().filter_map(|k| k.conversation_id()).collect();
        if let Ok(mut peer) = self.hub.peer.lock() {
            for key in &docs {
                if !peer.is_awaiting(key) {
                    peer.forget(key);
                }
            }
        }
        // Not awaited: the writer answers when it committed; a failure is logged and the hub
        // says it again when the next manifest still lists the conversation.
        let app = Arc::clone(&self.app);
        tokio::spawn(async move {
            if let Err(err) = crate::erasure::erase(
                &app,
                ids,
                None,
                crate::store::writer::erase::HUB,
                "hub".into(),
                true,
            )
            .await
            {
                tracing::warn!(error = %err.message, "erasing what the hub erased");
            }
        });
    }

    /// Records what the hub holds (`conversations.hub_heads`) for the conversations it answered.
    async fn flush_acks(&mut self) {
        if self.acked.is_empty() {
            return;
        }
        let rows: Vec<(String, Vec<u8>)> = {
            let Ok(peer) = self.hub.peer.lock() else {
                return;
            };
            self.acked
                .drain()
                .filter_map(|key| {
                    let id = key.conversation_id()?;
                    let heads = peer.remote_heads(&key)?;
                    Some((id.to_string(), aisle_sync::protocol::heads_to_bytes(heads)))
                })
                .collect()
        };
        let result = self
            .app
            .writer
            .exec(move |conn| {
                let mut update =
                    conn.prepare_cached("UPDATE conversations SET hub_heads = ?2 WHERE id = ?1")?;
                for (id, heads) in &rows {
                    update.execute(rusqlite::params![id, heads])?;
                }
                Ok(())
            })
            .await;
        match result {
            Ok(()) => self
                .app
                .uplink
                .update(|s| s.last_sync_at_ms = Some(now_ms())),
            Err(err) => tracing::warn!(error = %err.message, "recording the hub's heads"),
        }
    }
}

/// Every conversation of this store with its heads, as stored by the writer.
async fn local_manifest(app: &App) -> Result<Vec<ManifestEntry>, ApiError> {
    app.reader
        .read(|conn| {
            let mut statement =
                conn.prepare("SELECT id, heads FROM conversations WHERE heads IS NOT NULL")?;
            let rows = statement.query_map([], |r| {
                Ok((r.get::<_, String>(0)?, r.get::<_, Vec<u8>>(1)?))
            })?;
            let mut manifest = Vec::new();
            for row in rows {
                let (id, heads) = row?;
                let Ok(id) = id.parse::<ConversationId>() else {
                    continue;
                };
                let heads = aisle_sync::protocol::heads_from_bytes(&heads);
                manifest.push((DocumentKey::from(id), heads));
            }
            // And the documents the hub writes for this store (its settings).
            let mut statement = conn.prepare("SELECT key, heads FROM hub_documents")?;
            let rows = statement.query_map([], |r| {
                Ok((r.get::<_, String>(0)?, r.get::<_, Vec<u8>>(1)?))
            })?;
            for row in rows {
                let (key, heads) = row?;
                let Ok(key) = key.parse::<DocumentKey>() else {
                    continue;
                };
                let heads = aisle_sync::protocol::heads_from_bytes(&heads);
                manifest.push((key, heads));
            }
            Ok(manifest)
        })
        .await
}

async fn send(socket: &mut Socket, frame: &Frame, max_frame: usize) -> Result<(), String> {
    let bytes = encode_frame(frame, max_frame).map_err(|err| format!("encoding: {err}"))?;
    METRICS
        .sync_frames
        .with_label_values(&["out", frame.kind()])
        .inc();
    if let Frame::Error { code, .. } = frame {
        METRICS.sync_error(code);
    }
    socket
        .send(Message::Binary(bytes.into()))
        .await
        .map_err(|err| format!("send: {err}"))
}

async fn receive(socket: &mut Socket, max_frame: usize) -> Result<Frame, String> {
    loop {
        match socket.next().await {
            Some(Ok(Message::Binary(bytes))) => {
                let frame =
                    decode_frame(&bytes, max_frame).map_err(|err| format!("bad frame: {err}"))?;
                METRICS
                    .sync_frames
                    .with_label_values(&["in", frame.kind()])
                    .inc();
                return Ok(frame);
            }
            Some(Ok(Message::Close(_))) | None => return Err("closed by the hub".into()),
            Some(Ok(_)) => continue,
            Some(Err(err)) => return Err(err.to_string()),
        }
    }
}

/// Tells the hub about a hand-off code this store issued, so the customer can redeem it at
/// another store of the region. Waits at most `handoff_register_timeout_ms` (the code is shown to
/// the customer after this, so it is usable elsewhere at once); without a hub, or if the hub is
/// slow or down, the code still works here and the failure is logged.
pub async fn register_handoff(
    app: &Arc<App>,
    code: &str,
    conversation: ConversationId,
    expires_at_ms: u64,
) {
    let Some(request) = app.uplink.hub_request(app, "/api/handoffs") else {
        return;
    };
    let body = serde_json::json!({
        "code": code,
        "conversation_id": conversation,
        "expires_at_ms": expires_at_ms,
    });
    let wait = Duration::from_millis(app.config.limits.handoff_register_timeout_ms);
    let send = tokio::spawn(async move { request.json(&body).send().await });
    match tokio::time::timeout(wait, send).await {
        Ok(Ok(Ok(response))) if response.status().is_success() => {}
        Ok(Ok(Ok(response))) => {
            tracing::warn!(status = %response.status(), "the hub did not take a hand-off code")
        }
        Ok(Ok(Err(err))) => tracing::info!(error = %err, "hand-off code not registered at the hub"),
        Ok(Err(_)) => {}
        // The request goes on in the background.
        Err(_) => tracing::info!("the hub is slow to register a hand-off code"),
    }
}

/// Redeems at the hub a hand-off code issued by another store of the region and takes the
/// conversation over (the whole document comes back with the answer).
pub async fn continue_from_hub(
    app: &Arc<App>,
    code: &str,
) -> Result<crate::store::writer::replica::Imported, ApiError> {
    use crate::error::Code;
    use base64::Engine;
    let not_found = || ApiError::new(Code::NotFound, "no such hand-off code");
    let Some(request) = app.uplink.hub_request(app, "/api/continuations") else {
        return Err(not_found());
    };
    let response = request
        .json(&serde_json::json!({ "code": code }))
        .send()
        .await
        .map_err(|err| {
            ApiError::new(
                Code::HubUnavailable,
                format!(
                    "this code is not from this store, and the region's hub cannot be asked: {err}"
                ),
            )
        })?;
    let status = response.status();
    let body: serde_json::Value = response.json().await.map_err(|err| {
        ApiError::new(
            Code::HubUnavailable,
            format!("the hub answered {status}: {err}"),
        )
    })?;
    if !status.is_success() {
        let code = body["error"]["code"].as_str().unwrap_or("");
        let message = body["error"]["message"].as_str().unwrap_or("").to_owned();
        return Err(match code {
            "not_found" => not_found(),
            "handoff_used" => ApiError::new(Code::HandoffUsed, message),
            "handoff_expired" => ApiError::new(Code::HandoffExpired, message),
            _ => ApiError::new(Code::HubUnavailable, format!("the hub: {code}: {message}")),
        });
    }
    let bytes = body["document"]
        .as_str()
        .and_then(|b| base64::engine::general_purpose::STANDARD.decode(b).ok())
        .ok_or_else(|| ApiError::internal("the hub's answer has no document"))?;
    let (reply, answer) = oneshot::channel();
    app.writer
        .submit(Command::Import(crate::store::writer::replica::ImportCmd {
            bytes,
            reply,
        }))?;
    let imported = answer
        .await
        .map_err(|_| ApiError::internal("the writer dropped an import"))??;
    tracing::info!(
        conversation = %imported.conversation_id,
        origin = body["origin_store"].as_str().unwrap_or(""),
        "conversation continued here from another store"
    );
    Ok(imported)
}

/// A hand-off code of this store is being redeemed here: it is used up at the hub too, so it
/// cannot also be redeemed at another store. A code used elsewhere already is `handoff_used`
/// (or `handoff_expired`); if the hub cannot be asked, or never heard of the code (it was down
/// when the code was issued), the local redemption stands.
pub async fn use_own_code_at_hub(app: &Arc<App>, code: &str) -> Result<(), ApiError> {
    use crate::error::Code;
    let Some(request) = app.uplink.hub_request(app, "/api/continuations") else {
        return Ok(());
    };
    let Ok(response) = request
        .json(&serde_json::json!({ "code": code }))
        .send()
        .await
    else {
        return Ok(());
    };
    if response.status().is_success() {
        return Ok(());
    }
    let body: serde_json::Value = response.json().await.unwrap_or_default();
    let message = body["error"]["message"].as_str().unwrap_or("").to_owned();
    match body["error"]["code"].as_str() {
        Some("handoff_used") => Err(ApiError::new(Code::HandoffUsed, message)),
        Some("handoff_expired") => Err(ApiError::new(Code::HandoffExpired, message)),
        _ => Ok(()),
    }
}
