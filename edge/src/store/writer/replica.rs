//! The writer's side of syncing with the region's hub: the conversation documents live here
//! (in the writer's hot set), so the Automerge work of a sync round runs on the writer thread,
//! inside a group-commit transaction like every other write.
//!
//! - [`sync_in`]: a hub `sync` for one conversation is applied to the document; whatever it
//!   brought (another store's messages and session events) is projected into this store's rows
//!   and fanned out to the connected devices; the document's new chunk and the sync state are
//!   written in the batch's transaction, and the answer frame reaches the uplink only after the
//!   commit (a frame never names heads that are not on disk).
//! - [`sync_out`]: the next `sync` frame for each conversation that changed here.
//! - [`import`]: a whole document handed over by the hub when a customer continues at this
//!   store a conversation opened at another one.
//!
//! The uplink task (`crate::uplink`) owns the socket and the session's [`PeerSync`]; the writer
//! locks the `PeerSync` only while it works on a document (never across an await).

use std::collections::HashSet;
use std::sync::Mutex;

use aisle_sync::{ChangeHash, HqLayer, LayerScope};
use aisle_sync::{
    Conversation, ConversationId, Delta, DocumentKey, EventKind, Frame, Participant, PeerSync,
    ProtocolError, Settings, Status,
};
use rusqlite::{Connection, OptionalExtension, params};
use tokio::sync::{Notify, oneshot};

use super::{Actor, Hot, Outbox, State, apply_event, hot, insert_hot, participant_columns, route};
use crate::delivery::{Audience, Outbound, Targets};
use crate::error::{ApiError, Code};
use crate::frame::{MessageView, ServerFrame};
use crate::metrics::METRICS;
use crate::now_ms;

/// One sync session with a hub: its Automerge states and window, and the hub's storage id
/// (sync states are kept per hub storage, so a store moved to a new hub starts afresh there).
#[derive(Debug)]
pub struct HubSession {
    pub hub_id: String,
    /// Distinguishes sessions: documents half-received in an earlier one are dropped.
    pub session_id: u64,
    pub peer: Mutex<PeerSync>,
}

impl HubSession {
    fn peer(&self) -> Result<std::sync::MutexGuard<'_, PeerSync>, ApiError> {
        self.peer
            .lock()
            .map_err(|_| ApiError::internal("sync session lock poisoned"))
    }
}

pub struct SyncInCmd {
    pub session: std::sync::Arc<HubSession>,
    pub key: DocumentKey,
    pub message: Vec<u8>,
    /// The frame to send back (an answer, or a per-document error frame).
    pub reply: oneshot::Sender<Result<Vec<Frame>, ApiError>>,
}

pub struct SyncOutCmd {
    pub session: std::sync::Arc<HubSession>,
    pub keys: Vec<DocumentKey>,
    pub reply: oneshot::Sender<Result<Vec<Frame>, ApiError>>,
}

pub struct ImportCmd {
    /// A whole conversation document (Automerge save format).
    pub bytes: Vec<u8>,
    pub reply: oneshot::Sender<Result<Imported, ApiError>>,
}

/// A conversation now held (and served) by this store.
#[derive(Debug, Clone)]
pub struct Imported {
    pub conversation_id: ConversationId,
    pub customer_id: aisle_sync::CustomerId,
}

/// Conversations whose documents changed since the uplink last looked. Bounded by the number of
/// conversations (a set, not a queue); while no uplink runs nothing is recorded.
#[derive(Debug, Default)]
pub struct Changes {
    set: Mutex<HashSet<ConversationId>>,
    /// Conversations erased here that the hub has not been told about.
    erased: Mutex<HashSet<ConversationId>>,
    notify: Notify,
    enabled: std::sync::atomic::AtomicBool,
}

impl Changes {
    /// Start recording (the uplink is configured).
    pub fn enable(&self) {
        self.enabled
            .store(true, std::sync::atomic::Ordering::Relaxed);
    }

    pub(super) fn mark(&self, ids: &[ConversationId]) {
        if ids.is_empty() || !self.enabled.load(std::sync::atomic::Ordering::Relaxed) {
            return;
        }
        if let Ok(mut set) = self.set.lock() {
            set.extend(ids.iter().copied());
        }
        self.notify.notify_one();
    }

    /// Conversations erased here (the uplink tells the hub; the database keeps the list too).
    pub(super) fn mark_erased(&self, ids: &[ConversationId]) {
        if ids.is_empty() || !self.enabled.load(std::sync::atomic::Ordering::Relaxed) {
            return;
        }
        if let Ok(mut set) = self.set.lock() {
            for id in ids {
                set.remove(id);
            }
        }
        if let Ok(mut set) = self.erased.lock() {
            set.extend(ids.iter().copied());
        }
        self.notify.notify_one();
    }

    /// Everything erased since the last call.
    pub fn take_erased(&self) -> Vec<ConversationId> {
        self.erased
            .lock()
            .map(|mut set| set.drain().collect())
            .unwrap_or_default()
    }

    /// Everything changed since the last call.
    pub fn take(&self) -> Vec<ConversationId> {
        self.set
            .lock()
            .map(|mut set| set.drain().collect())
            .unwrap_or_default()
    }

    /// Waits until something is marked (returns at once if something was marked since the last
    /// wait).
    pub async fn changed(&self) {
        self.notify.notified().await;
    }
}

/// Heads as stored in `conversations.heads` / `hub_heads`: 32 bytes each, concatenated.
pub fn heads_bytes(heads: &[ChangeHash]) -> Vec<u8> {
    heads.iter().flat_map(|h| h.0).collect()
}

fn protocol_frame(err: ProtocolError) -> Result<Frame, ApiError> {
    METRICS.sync_error(err.code());
    Ok(err.to_frame())
}

/// A received round whose records do not decode (another store's bug, a newer layout): the
/// document is not synced this session and nothing of the round is kept (its sync state is
/// forgotten, so the next session starts it afresh). Never a batch failure: that would roll
/// back every other command of the batch, and the hub would resend the same round.
fn refuse_document(peer: &mut PeerSync, key: &DocumentKey, err: aisle_sync::SyncError) -> Frame {
    tracing::warn!(doc = %key, error = %err, "a document from the hub does not decode; not synced");
    peer.on_error(key);
    peer.forget(key);
    let err = ProtocolError::Document {
        doc: key.clone(),
        source: Box::new(err),
    };
    METRICS.sync_error(err.code());
    err.to_frame()
}

/// Drops documents half-received in an earlier session (their Automerge state is gone).
fn start_of(state: &mut State, session: &HubSession) {
    if state.incoming_session != session.session_id {
        state.incoming.clear();
        state.incoming_session = session.session_id;
    }
}

/// Installs the persisted sync state of `key` for this hub, once per session.
fn load_state(
    db: &Connection,
    peer: &mut PeerSync,
    hub_id: &str,
    key: &DocumentKey,
    rowid: i64,
) -> Result<(), ApiError> {
    if peer.has_state(key) {
        return Ok(());
    }
    let stored: Option<Vec<u8>> = db
        .prepare_cached("SELECT state FROM sync_states WHERE conversation = ?1 AND hub_id = ?2")?
        .query_row(params![rowid, hub_id], |r| r.get(0))
        .optional()?;
    if let Some(bytes) = stored
        && let Err(err) = peer.load_state(key.clone(), &bytes)
    {
        tracing::warn!(doc = %key, error = %err, "a stored sync state did not decode; starting afresh");
    }
    Ok(())
}

fn save_state(
    db: &Connection,
    peer: &PeerSync,
    hub_id: &str,
    key: &DocumentKey,
    rowid: i64,
) -> Result<(), ApiError> {
    db.prepare_cached(
        "INSERT INTO sync_states (conversation, hub_id, state) VALUES (?1, ?2, ?3)
         ON CONFLICT (conversation, hub_id) DO UPDATE SET state = excluded.state",
    )?
    .execute(params![rowid, hub_id, peer.save_state(key)])?;
    Ok(())
}

/// Applies one hub `sync` and returns the frame that answers it.
pub(super) fn sync_in(
    db: &Connection,
    state: &mut State,
    session: &HubSession,
    key: &DocumentKey,
    message: &[u8],
    out: &mut Outbox,
) -> Result<Frame, ApiError> {
    let mut peer = session.peer()?;
    start_of(state, session);
    let id = match key {
        DocumentKey::Conversation(id) => *id,
        DocumentKey::Settings(store) if *store == state.store_id => {
            return settings_in(db, state, session, &mut peer, key, message, out);
        }
        _ => {
            peer.on_error(key);
            return Ok(Frame::Error {
                code: aisle_sync::protocol::codes::NOT_ALLOWED.into(),
                message: "not a document of this store".into(),
                doc: Some(key.clone()),
            });
        }
    };
    if hot(db, state, id, out)?.is_none() {
        if super::erase::is_erased(db, id)? {
            peer.on_error(key);
            return Ok(Frame::Error {
                code: aisle_sync::protocol::codes::ERASED.into(),
                message: "the conversation was erased at this store".into(),
                doc: Some(key.clone()),
            });
        }
        return receive_new(db, state, session, &mut peer, key, id, message, out);
    }
    let hot = state.docs.get_mut(&id).expect("loaded above");
    load_state(db, &mut peer, &session.hub_id, key, hot.rowid)?;
    let before = hot.doc.heads();
    if let Err(err) = peer.receive(key, &mut hot.doc, message) {
        tracing::warn!(doc = %key, error = %err, "a hub sync message was refused");
        return protocol_frame(err);
    }
    let delta = match hot.doc.changes_since(&before) {
        Ok(delta) => delta,
        Err(err) => {
            hot.doc.rewind(&before)?;
            return Ok(refuse_document(&mut peer, key, err));
        }
    };
    let rowid = hot.rowid;
    if hot.doc.heads() != before {
        hot.dirty = true;
    }
    project(db, state, id, delta, out)?;
    save_state(db, &peer, &session.hub_id, key, rowid)?;
    let hot = state.docs.get_mut(&id).expect("loaded above");
    Ok(peer.answer(key, &mut hot.doc))
}

/// A `sync` for a conversation this store never held: filled in `state.incoming` until its
/// skeleton has arrived, then stored like any conversation.
#[allow(clippy::too_many_arguments)]
fn receive_new(
    db: &Connection,
    state: &mut State,
    session: &HubSession,
    peer: &mut PeerSync,
    key: &DocumentKey,
    id: ConversationId,
    message: &[u8],
    out: &mut Outbox,
) -> Result<Frame, ApiError> {
    if !state.incoming.contains_key(&id) && state.incoming.len() >= state.limits.max_hot_documents {
        METRICS.limit("max_hot_documents");
        peer.on_error(key);
        return Ok(Frame::Error {
            code: aisle_sync::protocol::codes::INTERNAL.into(),
            message: "too many documents arriving at once; retry next session".into(),
            doc: Some(key.clone()),
        });
    }
    let doc = state
        .incoming
        .entry(id)
        .or_insert_with(|| Conversation::empty_for_sync(id));
    if let Err(err) = peer.receive(key, doc, message) {
        state.incoming.remove(&id);
        return protocol_frame(err);
    }
    if !doc.is_complete() {
        return Ok(peer.answer(key, doc));
    }
    let mut doc = state.incoming.remove(&id).expect("present above");
    let records = match Records::read(&mut doc) {
        Ok(records) => records,
        Err(err) => return Ok(refuse_document(peer, key, err)),
    };
    let rowid = adopt(db, state, doc, records, out)?;
    save_state(db, peer, &session.hub_id, key, rowid)?;
    let hot = state.docs.get_mut(&id).expect("adopted");
    Ok(peer.answer(key, &mut hot.doc))
}

/// Stores a complete document this store did not hold: its row, its customer, its records;
/// returns the conversation's rowid.
/// What a complete document from elsewhere holds, read (and so checked) before anything of it
/// is written here.
struct Records {
    meta: aisle_sync::Meta,
    fold: aisle_sync::Fold,
    customer_name: String,
    delta: Delta,
}

impl Records {
    fn read(doc: &mut Conversation) -> Result<Records, aisle_sync::SyncError> {
        let meta = doc.meta()?;
        let fold = doc.fold()?;
        let customer_name = doc
            .participants()?
            .into_iter()
            .find(|p| p.participant == Participant::Customer(meta.customer))
            .map(|p| p.display_name)
            .unwrap_or_default();
        let delta = doc.changes_since(&[])?;
        Ok(Records {
            meta,
            fold,
            customer_name,
            delta,
        })
    }
}

fn adopt(
    db: &Connection,
    state: &mut State,
    doc: Conversation,
    records: Records,
    out: &mut Outbox,
) -> Result<i64, ApiError> {
    let Records {
        meta,
        fold,
        customer_name,
        delta,
    } = records;
    let id = meta.id;
    let now = now_ms();
    db.prepare_cached(
        "INSERT INTO customers (id, display_name, created_at_ms) VALUES (?1, ?2, ?3)
         ON CONFLICT (id) DO NOTHING",
    )?
    .execute(params![
        meta.customer.to_string(),
        customer_name,
        now as i64
    ])?;
    db.prepare_cached(
        "INSERT INTO conversations (id, customer_id, status, created_at_ms, origin_store)
         VALUES (?1, ?2, ?3, ?4, ?5)",
    )?
    .execute(params![
        id.to_string(),
        meta.customer.to_string(),
        fold.state.status.as_str(),
        meta.created_at_ms as i64,
        meta.store_id,
    ])?;
    let rowid = db.last_insert_rowid();
    insert_hot(db, state, id, Hot::fresh(rowid, meta, doc, fold), out)?;
    let agent = state.docs.get(&id).and_then(|h| h.fold.state.agent);
    out.audiences.push((id, Some(Audience { agent })));
    project(db, state, id, delta, out)?;
    METRICS.conversations_adopted.inc();
    Ok(rowid)
}

/// Writes what another replica added into this store's rows and tells the connected devices:
/// messages get this store's next `seq` (their order of arrival here), events are recorded and
/// the session state re-folded.
fn project(
    db: &Connection,
    state: &mut State,
    id: ConversationId,
    delta: Delta,
    out: &mut Outbox,
) -> Result<(), ApiError> {
    if delta.is_empty() {
        return Ok(());
    }
    for participant in &delta.participants {
        if let Participant::Staff(staff) = participant.participant {
            db.prepare_cached(
                "INSERT INTO remote_staff (id, name) VALUES (?1, ?2)
                 ON CONFLICT (id) DO UPDATE SET name = excluded.name",
            )?
            .execute(params![staff.to_string(), participant.display_name])?;
        }
    }
    let hot = state.docs.get_mut(&id).expect("caller loaded it");
    for event in &delta.events {
        state.clock.observe(event.hlc);
        db.prepare_cached(
            "INSERT INTO events (conversation, id, body, at_ms) VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT DO NOTHING",
        )?
        .execute(params![
            hot.rowid,
            event.id.to_string(),
            serde_json::to_string(event).map_err(ApiError::internal)?,
            event.hlc.wall_ms() as i64
        ])?;
    }
    for message in delta.messages {
        let seq = hot.last_seq + 1;
        let (sender_kind, sender_id) = participant_columns(&message.sender);
        let attachment_json = message
            .attachment
            .as_ref()
            .map(serde_json::to_string)
            .transpose()
            .map_err(ApiError::internal)?;
        let insert = |client_msg_id: &str| -> Result<usize, ApiError> {
            Ok(db
                .prepare_cached(
                    "INSERT INTO messages (conversation, seq, id, client_msg_id, sender_kind, sender_id, body,
                                           sent_at_ms, attachment, intent, intent_confidence, intent_model)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12) ON CONFLICT DO NOTHING",
                )?
                .execute(params![
                    hot.rowid,
                    seq as i64,
                    message.id.to_string(),
                    client_msg_id,
                    sender_kind,
                    sender_id,
                    message.body,
                    message.sent_at_ms as i64,
                    attachment_json,
                    message.intent.as_ref().map(|i| i.label.as_str()),
                    message.intent.as_ref().map(|i| i.confidence as f64),
                    message.intent.as_ref().map(|i| i.model.as_str()),
                ])?)
        };
        // A client id is unique per conversation only on the store that accepted the message
        // (retries are answered there); here it is namespaced by the message id, so that a
        // device at this store using the same client id is not taken for a retry of it.
        if insert(&format!("{}#{}", message.client_msg_id, message.id))? == 0 {
            continue;
        }
        hot.last_seq = seq;
        hot.last_message_at_ms = Some(hot.last_message_at_ms.unwrap_or(0).max(message.sent_at_ms));
        if matches!(message.sender, Participant::Staff(_)) && hot.first_response_at_ms.is_none() {
            hot.first_response_at_ms = Some(message.sent_at_ms);
        }
        METRICS.messages_merged.inc();
        let view = MessageView::of(seq, message);
        let text = ServerFrame::Message {
            conversation_id: id,
            message: &view,
        }
        .to_text();
        out.publishes
            .push((id, Outbound::new(Some(id), seq, text), Targets::default()));
    }
    hot.dirty = true;
    if !delta.events.is_empty() {
        let before = hot.fold.state.clone();
        hot.fold = hot.doc.fold()?;
        let after = hot.fold.state.clone();
        if after.status == Status::Resolved && before.status != Status::Resolved {
            hot.resolved_at_ms = Some(now_ms());
        }
        if before != after {
            out.audiences
                .push((id, Some(Audience { agent: after.agent })));
            let extra = before.agent.into_iter().collect();
            super::publish_state(db, id, Some(&before), &after, None, extra, out)?;
        }
    }
    Ok(())
}

/// The next `sync` frame of each document in `keys` that has something to send (and any
/// per-document error frame). Frames reach the uplink after the batch commits.
pub(super) fn sync_out(
    db: &Connection,
    state: &mut State,
    session: &HubSession,
    keys: Vec<DocumentKey>,
    out: &mut Outbox,
) -> Result<Vec<Frame>, ApiError> {
    let mut peer = session.peer()?;
    start_of(state, session);
    let mut frames = Vec::with_capacity(keys.len());
    for key in keys {
        let id = match &key {
            DocumentKey::Conversation(id) => *id,
            DocumentKey::Settings(store) if *store == state.store_id => {
                let doc = settings(db, state, &mut peer, &session.hub_id, &key)?;
                frames.extend(peer.generate(&key, doc));
                continue;
            }
            _ => continue,
        };
        let frame = match hot(db, state, id, out)? {
            Some(hot) => {
                load_state(db, &mut peer, &session.hub_id, &key, hot.rowid)?;
                peer.generate(&key, &mut hot.doc)
            }
            // Erased here: never asked for again.
            None if super::erase::is_erased(db, id)? => continue,
            // Only the hub holds it (shared with this store while it was offline): ask for it
            // from an empty replica.
            None => {
                if !state.incoming.contains_key(&id)
                    && state.incoming.len() >= state.limits.max_hot_documents
                {
                    METRICS.limit("max_hot_documents");
                    continue;
                }
                let doc = state
                    .incoming
                    .entry(id)
                    .or_insert_with(|| Conversation::empty_for_sync(id));
                peer.generate(&key, doc)
            }
        };
        frames.extend(frame);
    }
    Ok(frames)
}

/// Takes over a conversation handed over by the hub (a customer continuing here what they
/// started at another store): the document is merged or adopted, and if it is open and held
/// by someone who does not work here, it goes back to this store's queue and routing.
pub(super) fn import(
    db: &Connection,
    state: &mut State,
    bytes: Vec<u8>,
    out: &mut Outbox,
) -> Result<Imported, ApiError> {
    let mut doc = Conversation::load(&bytes)
        .map_err(|err| ApiError::new(Code::BadRequest, format!("the hub's document: {err}")))?;
    let meta = doc.meta()?;
    let id = meta.id;
    match hot(db, state, id, out)? {
        Some(hot) => {
            let before = hot.doc.heads();
            hot.doc.merge(&mut doc)?;
            let delta = match hot.doc.changes_since(&before) {
                Ok(delta) => delta,
                Err(err) => {
                    hot.doc.rewind(&before)?;
                    return Err(ApiError::new(
                        Code::BadRequest,
                        format!("the hub's document: {err}"),
                    ));
                }
            };
            project(db, state, id, delta, out)?;
        }
        None if super::erase::is_erased(db, id)? => {
            return Err(ApiError::new(
                Code::NotFound,
                "the conversation was erased at this store",
            ));
        }
        None => {
            let records = Records::read(&mut doc).map_err(|err| {
                ApiError::new(Code::BadRequest, format!("the hub's document: {err}"))
            })?;
            adopt(db, state, doc, records, out)?;
        }
    }
    let hot = state.docs.get(&id).expect("loaded above");
    let session = hot.fold.state.clone();
    if session.status != Status::Resolved
        && let Some(agent) = session.agent
    {
        let works_here: Option<i64> = db
            .prepare_cached("SELECT 1 FROM staff WHERE id = ?1")?
            .query_row([agent.to_string()], |r| r.get(0))
            .optional()?;
        if works_here.is_none()
            && let Err(rejection) =
                apply_event(db, state, id, EventKind::Release, Actor::System, None, out)?
        {
            tracing::warn!(conversation = %id, ?rejection, "could not release a continued conversation");
        }
    }
    route(db, state, id, None, out)?;
    Ok(Imported {
        conversation_id: id,
        customer_id: meta.customer,
    })
}

/// HQ's layers of the live settings, from the settings document just received: resolved,
/// validated and swapped in (crate::settings), recorded in the audit log with their author,
/// and the queue offered again (a capacity may have grown). A set that does not validate is
/// refused and recorded; the settings in force keep routing.
fn apply_hq_layers(db: &Connection, state: &mut State, out: &mut Outbox) -> Result<(), ApiError> {
    let Some(doc) = state.settings.as_ref() else {
        return Ok(());
    };
    let (region, store) = match (doc.layer(LayerScope::Region), doc.layer(LayerScope::Store)) {
        (Ok(region), Ok(store)) => (region, store),
        (Err(err), _) | (_, Err(err)) => {
            tracing::warn!(error = %err, "HQ's settings layer does not decode; refused");
            return Ok(());
        }
    };
    let (author, version) = crate::settings::newest(&region, &store)
        .map_or(("hq".into(), 0), |l| (l.author.clone(), l.version));
    match state.live.set_hq(region, store) {
        Ok(Some(applied)) => {
            crate::settings::record(db, &state.live, &applied)?;
            out.drain_queue = true;
        }
        Ok(None) => {}
        Err(err) => {
            crate::audit::append(
                db,
                &author,
                "settings_refused",
                "",
                serde_json::json!({ "hq_version": version, "reason": err.to_string() }),
            )?;
        }
    }
    Ok(())
}

/// HQ's layers as the stored settings document holds them (none before the hub sent it).
pub fn stored_hq_layers(
    db: &Connection,
    store_id: &str,
) -> Result<(Option<HqLayer>, Option<HqLayer>), ApiError> {
    let key = DocumentKey::settings(store_id.to_owned()).map_err(ApiError::internal)?;
    let bytes: Option<Vec<u8>> = db
        .prepare_cached("SELECT bytes FROM hub_documents WHERE key = ?1")?
        .query_row([key.to_string()], |r| r.get(0))
        .optional()?;
    let Some(doc) = bytes.and_then(|b| Settings::load(&b).ok()) else {
        return Ok((None, None));
    };
    let region = doc.layer(LayerScope::Region).unwrap_or_else(|err| {
        tracing::warn!(error = %err, "stored region settings do not decode");
        None
    });
    let store = doc.layer(LayerScope::Store).unwrap_or_else(|err| {
        tracing::warn!(error = %err, "stored store settings do not decode");
        None
    });
    Ok((region, store))
}

/// A row of `hub_documents`: the document's bytes, the hub its sync state is for, the state.
type StoredHubDocument = (Vec<u8>, Option<String>, Option<Vec<u8>>);

/// The store's settings document (loaded once from `hub_documents`, or empty until the hub
/// sends it), with its sync state for this hub installed.
fn settings<'a>(
    db: &Connection,
    state: &'a mut State,
    peer: &mut PeerSync,
    hub_id: &str,
    key: &DocumentKey,
) -> Result<&'a mut Settings, ApiError> {
    let stored: Option<StoredHubDocument> = if state.settings.is_none() || !peer.has_state(key) {
        db.prepare_cached("SELECT bytes, hub_id, sync_state FROM hub_documents WHERE key = ?1")?
            .query_row([key.to_string()], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
            .optional()?
    } else {
        None
    };
    if let Some((bytes, stored_hub, sync_state)) = stored {
        if state.settings.is_none() {
            match Settings::load(&bytes) {
                Ok(doc) => state.settings = Some(doc),
                Err(err) => {
                    tracing::warn!(error = %err, "stored settings do not load; asking the hub again")
                }
            }
        }
        if !peer.has_state(key)
            && stored_hub.as_deref() == Some(hub_id)
            && let Some(bytes) = sync_state
            && let Err(err) = peer.load_state(key.clone(), &bytes)
        {
            tracing::warn!(error = %err, "stored settings sync state does not decode");
        }
    }
    let store_id = state.store_id.clone();
    Ok(state
        .settings
        .get_or_insert_with(|| Settings::empty_for_sync(&store_id)))
}

/// A hub `sync` for this store's settings: applied, stored whole (a small document), and HQ's
/// canned replies projected into `canned_replies` (source `hq`) in the same transaction.
fn settings_in(
    db: &Connection,
    state: &mut State,
    session: &HubSession,
    peer: &mut PeerSync,
    key: &DocumentKey,
    message: &[u8],
    out: &mut Outbox,
) -> Result<Frame, ApiError> {
    let doc = settings(db, state, peer, &session.hub_id, key)?;
    let before = doc.heads();
    if let Err(err) = peer.receive(key, doc, message) {
        tracing::warn!(doc = %key, error = %err, "the hub's settings were refused");
        return protocol_frame(err);
    }
    if !doc.is_complete() {
        return Ok(peer.answer(key, doc));
    }
    if doc.heads() != before {
        let replies = match doc.canned_replies() {
            Ok(replies) => replies,
            Err(err) => {
                state.settings = None;
                return Ok(refuse_document(peer, key, err));
            }
        };
        db.prepare_cached("DELETE FROM canned_replies WHERE source = 'hq'")?
            .execute([])?;
        for reply in &replies {
            db.prepare_cached(
                "INSERT INTO canned_replies (id, shortcut, title, body, updated_at_ms, source)
                 VALUES (?1, ?2, ?3, ?4, ?5, 'hq')
                 ON CONFLICT (id) DO UPDATE SET shortcut = excluded.shortcut,
                   title = excluded.title, body = excluded.body,
                   updated_at_ms = excluded.updated_at_ms, source = 'hq'",
            )?
            .execute(params![
                format!("hq:{}", reply.id),
                reply.shortcut,
                reply.title,
                reply.body,
                reply.updated_at_ms as i64
            ])?;
        }
        tracing::info!(canned_replies = replies.len(), "HQ canned replies applied");
    }
    let changed = doc.heads() != before;
    let bytes = doc.save();
    let heads = heads_bytes(&doc.heads());
    db.prepare_cached(
        "INSERT INTO hub_documents (key, bytes, heads, hub_id, sync_state) VALUES (?1, ?2, ?3, ?4, ?5)
         ON CONFLICT (key) DO UPDATE SET bytes = excluded.bytes, heads = excluded.heads,
           hub_id = excluded.hub_id, sync_state = excluded.sync_state",
    )?
    .execute(params![
        key.to_string(),
        bytes,
        heads,
        session.hub_id,
        peer.save_state(key)
    ])?;
    let answer = peer.answer(key, doc);
    if changed {
        apply_hq_layers(db, state, out)?;
    }
    Ok(answer)
}
