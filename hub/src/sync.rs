//! `GET /sync`: one WebSocket per store, binary aisle-sync frames (docs/sync-protocol.md).
//!
//! The first frame must be `hello`; the store's region, id, revocation and credential are
//! checked before anything else, and a refused connection gets a `refused` frame and is closed
//! with nothing stored. After `welcome` both sides send their manifests; the hub then answers the
//! edge's `sync` frames with [`PeerSync`]: receive, store the document's new chunk and the sync
//! state in one transaction, then answer (so an `ack` names heads the hub holds durably).

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use aisle_sync::protocol::{MAX_ERASE_DOCS, codes};
use aisle_sync::{
    Conversation, DocumentKey, Frame, ManifestEntry, PeerSync, ProtocolError, Settings,
    decode_frame, encode_frame, manifest_frames,
};
use axum::extract::ws::{Message, WebSocket};
use futures_util::StreamExt;
use futures_util::future::BoxFuture;
use futures_util::stream::FuturesOrdered;
use tokio::sync::{Notify, OwnedSemaphorePermit};

use crate::metrics::METRICS;
use crate::store::{StoreResult, SyncSaved, SyncWrite};
use crate::{App, auth, now_ms, projection};

/// The connected stores: at most one sync connection each (a newer one replaces the older).
#[derive(Default)]
pub struct Registry {
    connections: Mutex<HashMap<String, Connected>>,
    next_id: AtomicU64,
}

struct Connected {
    id: u64,
    /// Tells the connection to close (replaced or revoked).
    kick: Arc<Notify>,
    /// Documents changed by another store that this store shares.
    pushes: Arc<Pushes>,
}

/// Documents to push to one connected store: a set (bounded by the documents the store
/// shares), drained by its session.
#[derive(Default)]
pub struct Pushes {
    keys: Mutex<HashSet<DocumentKey>>,
    /// Documents erased at the hub that this store holds: it is told to erase them.
    erased: Mutex<HashSet<DocumentKey>>,
    notify: Notify,
}

impl Pushes {
    fn mark(&self, key: DocumentKey) {
        if let Ok(mut keys) = self.keys.lock() {
            keys.insert(key);
        }
        self.notify.notify_one();
    }

    fn take(&self) -> Vec<DocumentKey> {
        self.keys
            .lock()
            .map(|mut keys| keys.drain().collect())
            .unwrap_or_default()
    }

    fn mark_erased(&self, key: DocumentKey) {
        if let Ok(mut keys) = self.erased.lock() {
            keys.insert(key);
        }
        self.notify.notify_one();
    }

    fn take_erased(&self) -> Vec<DocumentKey> {
        self.erased
            .lock()
            .map(|mut keys| keys.drain().collect())
            .unwrap_or_default()
    }
}

impl Registry {
    /// Registers a connection of `store_id`, telling an older one to close. Returns its id and
    /// the signal that tells it to close.
    fn register(&self, store_id: &str) -> (u64, Arc<Notify>, Arc<Pushes>) {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let kick = Arc::new(Notify::new());
        let pushes = Arc::new(Pushes::default());
        if let Ok(mut map) = self.connections.lock() {
            let connected = Connected {
                id,
                kick: Arc::clone(&kick),
                pushes: Arc::clone(&pushes),
            };
            if let Some(old) = map.insert(store_id.to_owned(), connected) {
                old.kick.notify_one();
            }
            METRICS.connected_stores.set(map.len() as i64);
        }
        (id, kick, pushes)
    }

    fn unregister(&self, store_id: &str, id: u64) {
        if let Ok(mut map) = self.connections.lock() {
            if map.get(store_id).is_some_and(|c| c.id == id) {
                map.remove(store_id);
            }
            METRICS.connected_stores.set(map.len() as i64);
        }
    }

    /// Closes the store's connection, if it has one (after a revocation).
    pub fn disconnect(&self, store_id: &str) {
        if let Ok(map) = self.connections.lock()
            && let Some(connected) = map.get(store_id)
        {
            connected.kick.notify_one();
        }
    }

    /// Tells `store_id`'s session (if connected) that `key` changed at another store. A store
    /// that is offline finds the change in the manifest of its next session.
    pub(crate) fn push(&self, store_id: &str, key: &DocumentKey) {
        if let Ok(map) = self.connections.lock()
            && let Some(connected) = map.get(store_id)
        {
            connected.pushes.mark(key.clone());
        }
    }

    /// Tells `store_id`'s session (if connected) that `key` was erased. A store that is offline
    /// is told when its next manifest lists the document.
    pub(crate) fn push_erased(&self, store_id: &str, key: &DocumentKey) {
        if let Ok(map) = self.connections.lock()
            && let Some(connected) = map.get(store_id)
        {
            connected.pushes.mark_erased(key.clone());
        }
    }

    /// Closes every store's connection: they reconnect and exchange manifests, which brings
    /// them whatever this process may have missed (replica.rs, after lost notifications).
    pub fn disconnect_all(&self) {
        if let Ok(map) = self.connections.lock() {
            for connected in map.values() {
                connected.kick.notify_one();
            }
        }
    }

    pub fn is_online(&self, store_id: &str) -> bool {
        self.connections
            .lock()
            .map(|map| map.contains_key(store_id))
            .unwrap_or(false)
    }
}

/// Unregisters the connection when its task ends, however it ends.
struct Registered {
    app: Arc<App>,
    store_id: String,
    id: u64,
}

impl Drop for Registered {
    fn drop(&mut self) {
        self.app.registry.unregister(&self.store_id, self.id);
    }
}

/// Serves one sync connection until it closes.
pub async fn serve(app: Arc<App>, mut socket: WebSocket, _permit: OwnedSemaphorePermit) {
    let limits = app.config.limits.clone();
    let max_frame = limits.max_frame_bytes;
    let hello = tokio::time::timeout(
        Duration::from_millis(limits.hello_timeout_ms),
        socket.recv(),
    )
    .await;
    let bytes = match hello {
        Ok(Some(Ok(Message::Binary(bytes)))) => bytes,
        Ok(Some(Ok(_))) => {
            let _ = send_error(
                &mut socket,
                codes::BAD_FRAME,
                "binary hello expected",
                max_frame,
            )
            .await;
            return;
        }
        _ => return,
    };
    METRICS.frames_in.with_label_values(&["hello"]).inc();
    let frame = match decode_frame(&bytes, max_frame) {
        Ok(frame) => frame,
        Err(ProtocolError::WrongVersion { found }) => {
            refuse(
                &mut socket,
                codes::UNSUPPORTED_VERSION,
                &format!("protocol version {found} is not spoken here"),
                max_frame,
            )
            .await;
            return;
        }
        Err(err) => {
            let _ = send(&mut socket, &err.to_frame(), max_frame).await;
            return;
        }
    };
    let Frame::Hello {
        store_id,
        region,
        credential,
        edge_version,
    } = frame
    else {
        let _ = send_error(
            &mut socket,
            codes::BAD_FRAME,
            "the first frame must be hello",
            max_frame,
        )
        .await;
        return;
    };
    if let Err((code, message)) = check_hello(&app, &store_id, &region, &credential.0).await {
        tracing::warn!(store_id = %store_id, code, "sync connection refused");
        METRICS.refused.with_label_values(&[code]).inc();
        refuse(&mut socket, code, &message, max_frame).await;
        return;
    }
    let (id, kicked, pushes) = app.registry.register(&store_id);
    let _registered = Registered {
        app: Arc::clone(&app),
        store_id: store_id.clone(),
        id,
    };
    tracing::info!(store_id = %store_id, edge_version = %edge_version, "store connected");
    let mut session = Session {
        peer: PeerSync::new(limits.sync()),
        app: Arc::clone(&app),
        store_id,
        docs: HashMap::new(),
        settings: None,
        saving: FuturesOrdered::new(),
        saving_keys: HashSet::new(),
        rounds_since_save: HashMap::new(),
        persisted: HashSet::new(),
        versions: HashMap::new(),
        local_manifest: Vec::new(),
        remote_manifest: Vec::new(),
        to_erase: Vec::new(),
        erased: HashSet::new(),
        socket,
        max_frame,
    };
    let reason = session.run(kicked, pushes).await;
    tracing::info!(store_id = %session.store_id, reason, "store disconnected");
    let _ = session.socket.send(Message::Close(None)).await;
}

/// The checks of a `hello` (also used for the store-authenticated HTTP endpoints): the error
/// code and message of a refusal.
pub(crate) async fn check_hello(
    app: &App,
    store_id: &str,
    region: &str,
    credential: &str,
) -> Result<(), (&'static str, String)> {
    if region != app.config.region {
        return Err((
            codes::WRONG_REGION,
            format!("this hub serves region {}, not {region}", app.config.region),
        ));
    }
    let store = app
        .store
        .store(store_id.to_owned())
        .await
        .map_err(|err| {
            tracing::error!(error = %err, "looking up a store");
            (codes::INTERNAL, "internal error".to_owned())
        })?
        .ok_or_else(|| (codes::UNKNOWN_STORE, format!("unknown store {store_id}")))?;
    if store.region != app.config.region {
        return Err((
            codes::WRONG_REGION,
            format!("{store_id} is enrolled in {}", store.region),
        ));
    }
    if store.revoked {
        return Err((codes::REVOKED, format!("{store_id} was revoked")));
    }
    match store.credential_hash {
        Some(hash) if auth::hashes_equal(&hash, &auth::secret_hash(credential)) => Ok(()),
        _ => Err((
            codes::BAD_CREDENTIAL,
            format!("the credential does not match {store_id}"),
        )),
    }
}

async fn send(socket: &mut WebSocket, frame: &Frame, max_frame: usize) -> Result<(), ()> {
    let bytes = match encode_frame(frame, max_frame) {
        Ok(bytes) => bytes,
        Err(err) => {
            tracing::error!(error = %err, "encoding a frame");
            return Err(());
        }
    };
    METRICS.frames_out.with_label_values(&[frame.kind()]).inc();
    if let Frame::Error { code, .. } | Frame::Refused { code, .. } = frame {
        METRICS.error(code);
    }
    socket
        .send(Message::Binary(bytes.into()))
        .await
        .map_err(|_| ())
}

async fn send_error(
    socket: &mut WebSocket,
    code: &str,
    message: &str,
    max_frame: usize,
) -> Result<(), ()> {
    let frame = Frame::Error {
        code: code.into(),
        message: message.into(),
        doc: None,
    };
    send(socket, &frame, max_frame).await
}

async fn refuse(socket: &mut WebSocket, code: &str, message: &str, max_frame: usize) {
    let frame = Frame::Refused {
        code: code.into(),
        message: message.into(),
    };
    let _ = send(socket, &frame, max_frame).await;
    let _ = socket.send(Message::Close(None)).await;
}

struct Session {
    app: Arc<App>,
    store_id: String,
    peer: PeerSync,
    /// Documents touched this session (loaded or being received).
    docs: HashMap<DocumentKey, Conversation>,
    /// The store's settings document, once loaded (HQ's canned replies).
    settings: Option<Settings>,
    /// Rounds whose write is committing, in arrival order (answered in that order).
    saving: FuturesOrdered<BoxFuture<'static, (Saved, StoreResult<SyncSaved>)>>,
    /// Their documents: not pushed, trimmed or re-sent before the write is on disk.
    saving_keys: HashSet<DocumentKey>,
    /// Rounds stored per document since its last full save (compaction).
    rounds_since_save: HashMap<DocumentKey, u32>,
    /// Documents the hub holds on disk (their next chunk is incremental).
    persisted: HashSet<DocumentKey>,
    /// The stored version each copy in `docs` (and `settings`) holds entirely: the
    /// compare-and-swap of `HubStore::save_synced`. Another session, here or at another hub
    /// replica, may write the same document (a conversation continued at two stores).
    versions: HashMap<DocumentKey, i64>,
    local_manifest: Vec<ManifestEntry>,
    remote_manifest: Vec<ManifestEntry>,
    /// Erased documents the store still holds: sent in `erase` frames before the next read.
    to_erase: Vec<DocumentKey>,
    /// Documents erased during this session (a round of theirs may still be committing: its
    /// answer is then `erased`, not a lost document).
    erased: HashSet<DocumentKey>,
    socket: WebSocket,
    max_frame: usize,
}

/// An unshared document's chunks are replaced by one full save after this many rounds.
const COMPACT_EVERY_ROUNDS: u32 = 64;

/// Rounds of one session whose writes may be committing at once; past this the session stops
/// reading its socket until some are answered.
const MAX_PENDING_SAVES: usize = 64;

/// How a received `sync` is answered.
enum Reply {
    /// At once (nothing to store, or an error).
    Now(Frame),
    /// When the write committed.
    AfterSave(BoxFuture<'static, StoreResult<SyncSaved>>, Saved),
}

/// A round waiting for its write.
struct Saved {
    key: DocumentKey,
    origin: String,
    stored_chunk: bool,
}

/// What to do after a frame.
enum Next {
    Continue,
    Close(&'static str),
}

impl Session {
    async fn run(&mut self, kicked: Arc<Notify>, pushes: Arc<Pushes>) -> &'static str {
        let app = Arc::clone(&self.app);
        if let Err(err) = app.store.touch_store(self.store_id.clone(), now_ms()).await {
            tracing::error!(error = %err, "recording the connection");
        }
        let welcome = Frame::Welcome {
            region: app.config.region.clone(),
            hub_id: app.hub_id.clone(),
            resolved_retention_secs: app.config.retention.resolved_conversation_secs,
        };
        if self.send(&welcome).await.is_err() {
            return "send failed";
        }
        match self.send_manifest().await {
            Ok(()) => {}
            Err(reason) => return reason,
        }
        let idle = Duration::from_millis(app.config.limits.idle_timeout_ms);
        loop {
            if let Err(reason) = self.send_erasures().await {
                return reason;
            }
            if let Err(reason) = self.pump().await {
                return reason;
            }
            let can_read = self.saving.len() < MAX_PENDING_SAVES;
            let message = tokio::select! {
                _ = kicked.notified() => return "replaced or revoked",
                Some((saved, result)) = self.saving.next(), if !self.saving.is_empty() => {
                    match self.on_saved(saved, result).await {
                        Next::Continue => continue,
                        Next::Close(reason) => return reason,
                    }
                }
                _ = pushes.notify.notified() => {
                    for key in pushes.take_erased() {
                        self.drop_document(&key);
                        self.to_erase.push(key);
                    }
                    for key in pushes.take() {
                        if let Err(reason) = self.refresh(&key).await {
                            return reason;
                        }
                        self.peer.want(key);
                    }
                    continue;
                }
                message = tokio::time::timeout(idle, self.socket.recv()), if can_read => message,
            };
            let bytes = match message {
                Err(_) => return "idle timeout",
                Ok(None) | Ok(Some(Err(_))) | Ok(Some(Ok(Message::Close(_)))) => return "closed",
                Ok(Some(Ok(Message::Binary(bytes)))) => bytes,
                Ok(Some(Ok(Message::Text(_)))) => {
                    let _ = self
                        .send_error(codes::BAD_FRAME, "text frames are not used")
                        .await;
                    return "text frame";
                }
                Ok(Some(Ok(_))) => continue,
            };
            let frame = match decode_frame(&bytes, self.max_frame) {
                Ok(frame) => frame,
                Err(err) => {
                    let _ = self.send(&err.to_frame()).await;
                    return "bad frame";
                }
            };
            METRICS.frames_in.with_label_values(&[frame.kind()]).inc();
            match self.on_frame(frame).await {
                Next::Continue => {}
                Next::Close(reason) => return reason,
            }
        }
    }

    async fn send(&mut self, frame: &Frame) -> Result<(), ()> {
        send(&mut self.socket, frame, self.max_frame).await
    }

    async fn send_error(&mut self, code: &str, message: &str) -> Result<(), ()> {
        send_error(&mut self.socket, code, message, self.max_frame).await
    }

    async fn send_manifest(&mut self) -> Result<(), &'static str> {
        let rows = self
            .app
            .store
            .manifest(self.store_id.clone())
            .await
            .map_err(|err| {
                tracing::error!(error = %err, "reading the manifest");
                "storage error"
            })?;
        self.local_manifest = rows
            .into_iter()
            .filter_map(|(key, heads)| {
                let key: DocumentKey = key.parse().ok()?;
                let heads = aisle_sync::protocol::heads_from_bytes(&heads);
                Some((key, heads))
            })
            .collect();
        for (key, _) in &self.local_manifest {
            self.persisted.insert(key.clone());
        }
        let frames = manifest_frames(self.local_manifest.clone(), self.max_frame)
            .map_err(|_| "manifest too large")?;
        for frame in frames {
            self.send(&frame).await.map_err(|_| "send failed")?;
        }
        Ok(())
    }

    async fn on_frame(&mut self, frame: Frame) -> Next {
        match frame {
            Frame::Manifest { docs, more } => {
                if self.remote_manifest.len() + docs.len()
                    > aisle_sync::protocol::MAX_MANIFEST_ENTRIES
                {
                    let _ = self
                        .send_error(codes::BAD_FRAME, "the manifest lists too many documents")
                        .await;
                    return Next::Close("manifest too long");
                }
                self.remote_manifest.extend(docs);
                if !more {
                    let mut remote = std::mem::take(&mut self.remote_manifest);
                    // Documents erased here while the store was away: it erases its copy
                    // instead of syncing it back.
                    let keys = remote.iter().map(|(key, _)| key.to_string()).collect();
                    match self.app.store.erased(keys).await {
                        Ok(erased) if !erased.is_empty() => {
                            remote.retain(|(key, _)| !erased.contains(&key.to_string()));
                            self.to_erase
                                .extend(erased.iter().filter_map(|key| key.parse().ok()));
                        }
                        Ok(_) => {}
                        Err(err) => {
                            tracing::error!(error = %err, "reading erased documents");
                            return Next::Close("storage error");
                        }
                    }
                    let diff = self.peer.on_manifest(&self.local_manifest, &remote);
                    tracing::debug!(
                        store_id = %self.store_id,
                        to_sync = diff.to_sync().len(),
                        "manifests compared"
                    );
                }
                Next::Continue
            }
            Frame::Sync { doc, message } => {
                let answer = match self.on_sync(&doc, &message).await {
                    Ok(Reply::Now(answer)) => answer,
                    Ok(Reply::AfterSave(write, saved)) => {
                        self.saving_keys.insert(saved.key.clone());
                        self.saving
                            .push_back(Box::pin(async move { (saved, write.await) }));
                        return Next::Continue;
                    }
                    Err(frame) => {
                        let ends = !matches!(&frame, Frame::Error { doc: Some(_), .. });
                        if self.send(&frame).await.is_err() || ends {
                            return Next::Close("sync error");
                        }
                        return Next::Continue;
                    }
                };
                if self.send(&answer).await.is_err() {
                    return Next::Close("send failed");
                }
                Next::Continue
            }
            Frame::Ack { doc, heads } => {
                self.peer.on_ack(&doc, &heads);
                Next::Continue
            }
            Frame::Erase { docs } => self.on_erase(docs).await,
            Frame::Ping => {
                if self.send(&Frame::Pong).await.is_err() {
                    return Next::Close("send failed");
                }
                Next::Continue
            }
            Frame::Pong => Next::Continue,
            Frame::Error {
                doc: Some(doc),
                code,
                ..
            } => {
                tracing::warn!(store_id = %self.store_id, doc = %doc, code, "store reported a document error");
                self.peer.on_error(&doc);
                Next::Continue
            }
            Frame::Error {
                doc: None, code, ..
            } => {
                tracing::warn!(store_id = %self.store_id, code, "store ended the session");
                Next::Close("error from the store")
            }
            other => {
                let _ = self
                    .send_error(
                        codes::BAD_FRAME,
                        &format!("{} is not valid now", other.kind()),
                    )
                    .await;
                Next::Close("unexpected frame")
            }
        }
    }

    /// Sends `erase` frames for the erased documents the store still holds.
    async fn send_erasures(&mut self) -> Result<(), &'static str> {
        while !self.to_erase.is_empty() {
            let take = self.to_erase.len().min(MAX_ERASE_DOCS);
            let docs: Vec<DocumentKey> = self.to_erase.drain(..take).collect();
            self.send(&Frame::Erase { docs })
                .await
                .map_err(|_| "send failed")?;
        }
        Ok(())
    }

    /// Forgets everything this session holds about an erased document.
    fn drop_document(&mut self, key: &DocumentKey) {
        self.erased.insert(key.clone());
        self.docs.remove(key);
        self.versions.remove(key);
        self.persisted.remove(key);
        self.rounds_since_save.remove(key);
        if !self.peer.is_awaiting(key) {
            self.peer.forget(key);
        }
    }

    /// The store erased documents (a customer's request made at the store, or the region's
    /// retention period): the hub erases its copies of those the store may sync, tells the
    /// other stores holding them, and answers with the documents it holds no copy of now.
    async fn on_erase(&mut self, docs: Vec<DocumentKey>) -> Next {
        if docs.len() > MAX_ERASE_DOCS {
            let _ = self
                .send_error(codes::BAD_FRAME, "an erase frame lists too many documents")
                .await;
            return Next::Close("erase too long");
        }
        let store = Arc::clone(&self.app.store);
        let mut allowed = Vec::with_capacity(docs.len());
        let mut confirmed = Vec::with_capacity(docs.len());
        for key in docs {
            if key.conversation_id().is_none() {
                continue;
            }
            let name = key.to_string();
            let origin = match store.load_document(name.clone()).await {
                Ok(Some(doc)) => Some(doc.origin_store),
                // Not on disk: maybe its first round is still committing in this session.
                Ok(None) => self
                    .docs
                    .get(&key)
                    .and_then(|doc| doc.meta().ok())
                    .map(|meta| meta.store_id),
                Err(err) => {
                    tracing::error!(error = %err, "erase: loading");
                    return Next::Close("storage error");
                }
            };
            let holds = match &origin {
                Some(origin) if *origin == self.store_id => true,
                Some(_) => match shared_with(&self.app, &self.store_id, &name).await {
                    Ok(shared) => shared,
                    Err(err) => {
                        tracing::error!(error = %err, "erase: reading the shares");
                        return Next::Close("storage error");
                    }
                },
                None => false,
            };
            match origin {
                Some(_) if holds => allowed.push(key.clone()),
                // Another store's conversation: not this store's to erase for the region.
                Some(_) => {
                    tracing::warn!(store_id = %self.store_id, doc = %key, "a store asked to erase another store's conversation; erased at that store only");
                }
                // Never reached the hub: nothing to erase here, and no region-wide tombstone
                // (a store must not be able to block an id it does not hold).
                None => {}
            }
            // Every key is answered, so the store stops telling it.
            confirmed.push(key);
        }
        let keys = allowed.iter().map(ToString::to_string).collect();
        let requested_by = format!("store:{}", self.store_id);
        if let Err(err) = crate::erasure::erase(
            &self.app,
            keys,
            crate::erasure::STORE_REQUEST,
            &requested_by,
            Some(&self.store_id),
        )
        .await
        {
            tracing::error!(error = %err, "erasing at a store's request");
            return Next::Close("storage error");
        }
        for key in &allowed {
            self.drop_document(key);
        }
        self.to_erase.extend(confirmed);
        Next::Continue
    }

    /// Starts rounds for documents to push while the window has room.
    async fn pump(&mut self) -> Result<(), &'static str> {
        let mut later = Vec::new();
        while let Some(key) = self.peer.next_ready() {
            if self.saving_keys.contains(&key) {
                // Its received changes are not on disk yet: push after the commit.
                later.push(key);
                continue;
            }
            if let DocumentKey::Settings(_) = key {
                if self.settings.is_none() && self.refresh(&key).await.is_err() {
                    continue;
                }
                let Some(doc) = self.settings.as_mut() else {
                    continue;
                };
                if let Some(frame) = self.peer.generate(&key, doc) {
                    self.send(&frame).await.map_err(|_| "send failed")?;
                }
                continue;
            }
            if !self.docs.contains_key(&key) && self.refresh(&key).await.is_err() {
                continue;
            }
            let Some(doc) = self.docs.get_mut(&key) else {
                continue;
            };
            if let Some(frame) = self.peer.generate(&key, doc) {
                self.send(&frame).await.map_err(|_| "send failed")?;
            }
        }
        for key in later {
            self.peer.want(key);
        }
        Ok(())
    }

    /// Brings this session's copy of `key` up to date with storage (another store's session
    /// stored changes) and loads the store's sync state for it.
    async fn refresh(&mut self, key: &DocumentKey) -> Result<(), &'static str> {
        let store = Arc::clone(&self.app.store);
        let Some(loaded) = store.load_document(key.to_string()).await.map_err(|err| {
            tracing::error!(error = %err, "loading a document to push");
            "storage error"
        })?
        else {
            return Ok(());
        };
        if let DocumentKey::Settings(store) = key {
            if *store != self.store_id {
                return Ok(());
            }
            let mut stored = match Settings::load(&loaded.bytes) {
                Ok(doc) => doc,
                Err(err) => {
                    tracing::error!(doc = %key, error = %err, "stored settings do not load");
                    return Ok(());
                }
            };
            match self.settings.as_mut() {
                Some(cached) => {
                    if let Err(err) = cached.merge(&mut stored) {
                        tracing::error!(doc = %key, error = %err, "merging stored settings");
                        return Ok(());
                    }
                    let _ = cached.save_incremental();
                }
                None => self.settings = Some(stored),
            }
            self.persisted.insert(key.clone());
            self.versions.insert(key.clone(), loaded.version);
            return self.load_sync_state(key).await;
        }
        let mut stored = match Conversation::load(&loaded.bytes) {
            Ok(doc) => doc,
            Err(err) => {
                tracing::error!(doc = %key, error = %err, "a stored document does not load");
                return Ok(());
            }
        };
        match self.docs.get_mut(key) {
            Some(cached) => {
                if let Err(err) = cached.merge(&mut stored) {
                    tracing::error!(doc = %key, error = %err, "merging a stored document");
                    return Ok(());
                }
                // What the merge brought is on disk already: move the save cursor past it.
                let _ = cached.save_incremental();
            }
            None => {
                let _ = stored.save_incremental();
                self.docs.insert(key.clone(), stored);
            }
        }
        self.persisted.insert(key.clone());
        self.versions.insert(key.clone(), loaded.version);
        self.load_sync_state(key).await
    }

    /// Installs the stored sync state of (this store, `key`), once per session.
    async fn load_sync_state(&mut self, key: &DocumentKey) -> Result<(), &'static str> {
        if self.peer.has_state(key) {
            return Ok(());
        }
        match self
            .app
            .store
            .sync_state(self.store_id.clone(), key.to_string())
            .await
        {
            Ok(Some(state)) => {
                if let Err(err) = self.peer.load_state(key.clone(), &state) {
                    tracing::warn!(error = %err, "a stored sync state did not decode");
                }
                Ok(())
            }
            Ok(None) => Ok(()),
            Err(err) => {
                tracing::error!(error = %err, "loading a sync state");
                Err("storage error")
            }
        }
    }

    /// A store's `sync` for its settings document: the store only answers HQ's rounds (it
    /// never writes settings), so this is mostly acknowledgements; anything it sends is stored
    /// like any round.
    async fn on_settings_sync(
        &mut self,
        key: &DocumentKey,
        store: &str,
        message: &[u8],
    ) -> Result<Frame, Frame> {
        if store != self.store_id {
            self.peer.on_error(key);
            return Err(Self::doc_error(
                key,
                codes::NOT_ALLOWED,
                "the settings of another store",
            ));
        }
        if self.settings.is_none() {
            self.refresh(key).await.map_err(Self::internal)?;
        }
        let doc = self
            .settings
            .get_or_insert_with(|| Settings::empty_for_sync(store));
        if let Err(err) = self.peer.receive(key, doc, message) {
            return Err(err.to_frame());
        }
        if !doc.is_complete() {
            return Ok(self.peer.answer(key, doc));
        }
        let chunk = if self.persisted.contains(key) {
            doc.save_incremental()
        } else {
            doc.save()
        };
        let write = SyncWrite {
            store_id: self.store_id.clone(),
            doc_key: key.to_string(),
            origin_store: self.store_id.clone(),
            chunk,
            heads: doc.heads().iter().flat_map(|h| h.0.to_vec()).collect(),
            sync_state: self.peer.save_state(key),
            projection: None,
            now_ms: now_ms(),
            replace_chunks: false,
            expected_version: self.versions.get(key).copied(),
        };
        let saved = match self.app.store.save_synced(write).await {
            Ok(saved) => saved,
            Err(err) => {
                self.settings = None;
                return Err(Self::internal(err));
            }
        };
        self.persisted.insert(key.clone());
        self.versions.insert(key.clone(), saved.version);
        let doc = self.settings.as_mut().expect("set above");
        let answer = self.peer.answer(key, doc);
        if saved.stale {
            // HQ wrote the settings meanwhile (here or at another replica): reload next time.
            self.settings = None;
        }
        Ok(answer)
    }

    /// The stores other than this one that sync `key` (its origin and the stores it was
    /// continued at) hear that it changed.
    fn push_to_others(&self, key: &DocumentKey, origin: &str) {
        let registry = &self.app.registry;
        if origin != self.store_id {
            registry.push(origin, key);
        }
        for store in self.app.shares.stores_of(&key.to_string()) {
            if store != self.store_id {
                registry.push(&store, key);
            }
        }
    }

    fn doc_error(doc: &DocumentKey, code: &str, message: impl Into<String>) -> Frame {
        Frame::Error {
            code: code.into(),
            message: message.into(),
            doc: Some(doc.clone()),
        }
    }

    fn internal(err: impl std::fmt::Display) -> Frame {
        tracing::error!(error = %err, "sync storage error");
        Frame::Error {
            code: codes::INTERNAL.into(),
            message: "internal error; reconnect later".into(),
            doc: None,
        }
    }

    /// One received `sync`: the answer to send, or an error frame (session-ending when it has no
    /// `doc`).
    async fn on_sync(&mut self, key: &DocumentKey, message: &[u8]) -> Result<Reply, Frame> {
        if let DocumentKey::Settings(store) = key {
            let store = store.clone();
            return self
                .on_settings_sync(key, &store, message)
                .await
                .map(Reply::Now);
        }
        let Some(id) = key.conversation_id() else {
            self.peer.on_error(key);
            return Err(Self::doc_error(
                key,
                codes::NOT_ALLOWED,
                "only conversations are synced from stores",
            ));
        };
        let store = Arc::clone(&self.app.store);
        if !self.docs.contains_key(key) {
            let conversation = match store.load_document(key.to_string()).await {
                Err(err) => return Err(Self::internal(err)),
                Ok(Some(stored))
                    if stored.origin_store != self.store_id
                        && !shared_with(&self.app, &self.store_id, &key.to_string())
                            .await
                            .map_err(Self::internal)? =>
                {
                    self.peer.on_error(key);
                    return Err(Self::doc_error(
                        key,
                        codes::NOT_ALLOWED,
                        "the conversation belongs to another store",
                    ));
                }
                Ok(Some(stored)) => {
                    self.persisted.insert(key.clone());
                    self.versions.insert(key.clone(), stored.version);
                    Conversation::load(&stored.bytes).map_err(Self::internal)?
                }
                Ok(None) => {
                    match store.erased(vec![key.to_string()]).await {
                        Err(err) => return Err(Self::internal(err)),
                        Ok(erased) if !erased.is_empty() => {
                            self.peer.on_error(key);
                            self.to_erase.push(key.clone());
                            return Err(Self::doc_error(
                                key,
                                codes::ERASED,
                                "the conversation was erased",
                            ));
                        }
                        Ok(_) => {}
                    }
                    Conversation::empty_for_sync(id)
                }
            };
            if !self.peer.has_state(key) {
                match store
                    .sync_state(self.store_id.clone(), key.to_string())
                    .await
                {
                    Ok(Some(state)) => {
                        if let Err(err) = self.peer.load_state(key.clone(), &state) {
                            tracing::warn!(error = %err, "a stored sync state did not decode");
                        }
                    }
                    Ok(None) => {}
                    Err(err) => return Err(Self::internal(err)),
                }
            }
            self.docs.insert(key.clone(), conversation);
        }
        let Some(conversation) = self.docs.get_mut(key) else {
            return Err(Self::internal("document vanished"));
        };
        let before = conversation.heads();
        let peer = &mut self.peer;
        if let Err(err) = cpu_work(message.len(), || peer.receive(key, conversation, message)) {
            if !self.persisted.contains(key) {
                self.docs.remove(key);
            }
            return Err(err.to_frame());
        }
        if !conversation.is_complete() {
            // Not a conversation yet: neither stored nor listed until its skeleton arrives.
            return Ok(Reply::Now(self.peer.answer(key, conversation)));
        }
        let meta = conversation.meta().map_err(Self::internal)?;
        let mut shared = self.app.shares.allows(&key.to_string(), &self.store_id);
        if meta.store_id != self.store_id && !shared {
            shared = shared_with(&self.app, &self.store_id, &key.to_string())
                .await
                .map_err(Self::internal)?;
        }
        if (meta.store_id != self.store_id && !shared) || meta.id != id {
            tracing::warn!(
                store_id = %self.store_id,
                doc = %key,
                origin = %meta.store_id,
                "refused a conversation of another store"
            );
            self.docs.remove(key);
            self.peer.on_error(key);
            self.peer.forget(key);
            return Err(Self::doc_error(
                key,
                codes::NOT_ALLOWED,
                "the conversation was not opened at this store",
            ));
        }
        let new = !self.persisted.contains(key);
        // A document only its origin store writes is compacted every `COMPACT_EVERY_ROUNDS`
        // rounds: a full save replaces its chunks. (A shared document is not: another
        // session's copy may hold changes this one has not merged yet.)
        let rounds = self.rounds_since_save.entry(key.clone()).or_default();
        *rounds += 1;
        let compact = !new
            && *rounds >= COMPACT_EVERY_ROUNDS
            && !shared
            && self.app.shares.stores_of(&key.to_string()).is_empty();
        if compact || new {
            *rounds = 0;
        }
        let (projection, chunk) = cpu_work(message.len(), || {
            let delta = conversation.changes_since(&before);
            let projection = projection::of_round(conversation, delta);
            let chunk = if new || compact {
                conversation.save()
            } else {
                conversation.save_incremental()
            };
            (projection, chunk)
        });
        let heads: Vec<u8> = conversation
            .heads()
            .iter()
            .flat_map(|h| h.0.to_vec())
            .collect();
        let origin = meta.store_id.clone();
        let write = SyncWrite {
            store_id: self.store_id.clone(),
            doc_key: key.to_string(),
            origin_store: meta.store_id,
            chunk,
            heads,
            sync_state: self.peer.save_state(key),
            projection,
            now_ms: now_ms(),
            replace_chunks: compact,
            expected_version: self.versions.get(key).copied(),
        };
        let saved = Saved {
            key: key.clone(),
            origin,
            stored_chunk: !write.chunk.is_empty(),
        };
        // Answered when the write has committed (`on_saved`); meanwhile the session goes on
        // with other documents' frames, and the hub's writer group-commits them together.
        let write = Box::pin(async move { store.save_synced(write).await });
        Ok(Reply::AfterSave(write, saved))
    }

    /// A round's write committed (or failed): answer it.
    async fn on_saved(&mut self, saved: Saved, result: StoreResult<SyncSaved>) -> Next {
        let key = &saved.key;
        self.saving_keys.remove(key);
        let mut stale = false;
        match result {
            Ok(saved_round) => {
                if saved_round.created {
                    METRICS.documents.inc();
                }
                self.versions.insert(key.clone(), saved_round.version);
                if saved_round.stale {
                    stale = true;
                }
                if saved.stored_chunk {
                    METRICS.chunks_stored.inc();
                    self.push_to_others(key, &saved.origin);
                }
                self.persisted.insert(key.clone());
            }
            Err(err) => {
                // The in-memory copy is ahead of the disk: drop it (it reloads) and end the
                // session; the store reconnects and resends from the persisted states.
                self.docs.remove(key);
                let _ = self.send(&Self::internal(err)).await;
                return Next::Close("storage error");
            }
        }
        if self.erased.contains(key) {
            // Erased while its round was committing (the write was dropped at commit).
            self.peer.on_error(key);
            let answer = Self::doc_error(key, codes::ERASED, "the conversation was erased");
            if self.send(&answer).await.is_err() {
                return Next::Close("send failed");
            }
            return Next::Continue;
        }
        if stale || !self.docs.contains_key(key) {
            // Stale: another session (another store continuing the conversation, or a session
            // at another hub replica) wrote it since this copy was loaded. Nothing was lost
            // (the chunk was appended), but this copy lacks their changes: the stored document
            // is merged into it, so the answer offers the store the merged document, and the
            // HQ row this round may have rewritten from the older copy is projected again
            // from the merged one. Missing: dropped meanwhile (trimmed, or a second round's
            // stale reload): it reloads.
            if stale {
                METRICS.stale_writes.inc();
            }
            if let Err(reason) = self.refresh(key).await {
                let _ = self.send(&Self::internal(reason)).await;
                return Next::Close("storage error");
            }
            if stale && let Err(err) = self.reproject(key).await {
                tracing::error!(doc = %key, error = %err, "projecting a merged document");
                METRICS.projection_failures.inc();
            }
        }
        let Some(conversation) = self.docs.get_mut(key) else {
            let _ = self.send(&Self::internal("document vanished")).await;
            return Next::Close("storage error");
        };
        let answer = self.peer.answer(key, conversation);
        self.trim_documents(key);
        if self.send(&answer).await.is_err() {
            return Next::Close("send failed");
        }
        Next::Continue
    }

    /// Writes the HQ projection of this session's whole copy of `key` (after a merge).
    async fn reproject(&mut self, key: &DocumentKey) -> StoreResult<()> {
        let Some(conversation) = self.docs.get_mut(key) else {
            return Ok(());
        };
        let projection = cpu_work(0, || {
            let delta = conversation.changes_since(&[]);
            projection::of_round(conversation, delta)
        });
        match projection {
            Some(projection) => self.app.store.save_projection(projection).await,
            None => Ok(()),
        }
    }

    /// Keeps at most `max_session_documents` in memory: documents with no open round (other
    /// than `keep`) are dropped; they are on disk and reload when the store or a push needs
    /// them.
    fn trim_documents(&mut self, keep: &DocumentKey) {
        let max = self.app.config.limits.max_session_documents;
        if self.docs.len() <= max {
            return;
        }
        let excess = self.docs.len() - max;
        let drop: Vec<DocumentKey> = self
            .docs
            .keys()
            .filter(|k| {
                *k != keep
                    && !self.peer.is_awaiting(k)
                    && !self.saving_keys.contains(*k)
                    && self.persisted.contains(*k)
            })
            .take(excess)
            .cloned()
            .collect();
        for key in drop {
            self.docs.remove(&key);
            self.versions.remove(&key);
        }
    }
}

/// Whether `doc_key` was continued at `store_id`: the in-memory map, and when it says no, the
/// database (another hub replica may have shared it a moment ago, its notification still on
/// the way; replica.rs). Only refusals pay for the query.
async fn shared_with(app: &App, store_id: &str, doc_key: &str) -> StoreResult<bool> {
    if app.shares.allows(doc_key, store_id) {
        return Ok(true);
    }
    let stores = app.store.shared_with(doc_key.to_owned()).await?;
    let shared = stores.iter().any(|s| s == store_id);
    if shared {
        app.shares.add(doc_key, store_id);
    }
    Ok(shared)
}

/// A round carrying more than this is applied under `block_in_place`.
const LARGE_ROUND_BYTES: usize = 64 * 1024;

/// Runs a round's Automerge work (applying it, saving, projecting). Small rounds — nearly all:
/// a few changes, tens of microseconds — run inline; handing the worker over costs more than
/// the work (measured: 18.3k vs 19.3k merged messages/s, docs/benchmarks.md). A large round
/// (a document's first sync, up to `max_document_bytes`) can take milliseconds: on the
/// multi-threaded runtime the worker hands its other tasks to another thread meanwhile.
fn cpu_work<R>(round_bytes: usize, work: impl FnOnce() -> R) -> R {
    match tokio::runtime::Handle::try_current() {
        Ok(handle)
            if round_bytes > LARGE_ROUND_BYTES
                && handle.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread =>
        {
            tokio::task::block_in_place(work)
        }
        _ => work(),
    }
}
