//! The conversation document.
//!
//! # Layout
//!
//! One Automerge document per conversation; its root map holds exactly four entries, all created
//! by [`Conversation::create`]:
//!
//! | root key       | type | contents                                                          |
//! |----------------|------|-------------------------------------------------------------------|
//! | `meta`         | bytes| JSON of [`Meta`] (written once, by the creator)                    |
//! | `participants` | map  | `customer:<id>` / `staff:<id>` / `bot` / `system` → JSON of [`ParticipantRecord`] |
//! | `messages`     | map  | message id (ULID string) → JSON of [`MessageRecord`]              |
//! | `events`       | map  | event id (ULID string) → JSON of [`Event`]                        |
//!
//! Records are stored as opaque JSON byte scalars rather than as nested Automerge maps because
//! they are immutable (or, for participants, replaced whole): there is nothing to merge field by
//! field, and a scalar costs one op instead of one op per field. Keying by id makes concurrent
//! inserts of *different* records commute (different keys never conflict) and retries of the
//! *same* record idempotent.
//!
//! Nothing is ordered by Automerge: messages are displayed by `(sent_at_ms, id)` and the session
//! state is [`fold`]ed from the event set, so the document's internal order never leaks out.
//!
//! # Only the creator creates the skeleton
//!
//! Two peers that each call `create` for the same conversation produce two different `messages`
//! maps under the same root key. Automerge keeps both but shows only one, so the other side's
//! messages silently disappear. Hence exactly one peer creates; every other peer starts from
//! [`Conversation::load`] of bytes it stored, or from [`Conversation::empty_for_sync`] filled by
//! the sync protocol ([`crate::peer`]), which refuses a second skeleton.
//! [`Conversation::merge`] refuses to combine documents whose skeletons differ.

use automerge::sync::{self, SyncDoc};
use automerge::transaction::Transactable;
use automerge::{AutoCommit, ChangeHash, ObjId, ObjType, ROOT, ReadDoc, ScalarValueRef, ValueRef};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::SCHEMA_VERSION;
use crate::error::SyncError;
use crate::ids::{AttachmentId, ConversationId, CustomerId, MessageId, Participant};
use crate::session::{Event, Fold, fold};

const META: &str = "meta";
const PARTICIPANTS: &str = "participants";
const MESSAGES: &str = "messages";
const EVENTS: &str = "events";
const CONTAINERS: [&str; 3] = [PARTICIPANTS, MESSAGES, EVENTS];

/// Facts fixed when the conversation is opened.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Meta {
    pub id: ConversationId,
    pub store_id: String,
    pub customer: CustomerId,
    pub created_at_ms: u64,
    /// The document layout version ([`SCHEMA_VERSION`] when written by this crate).
    pub schema_version: u32,
}

impl Meta {
    /// Meta for a new conversation at the current [`SCHEMA_VERSION`].
    pub fn new(
        id: ConversationId,
        store_id: impl Into<String>,
        customer: CustomerId,
        created_at_ms: u64,
    ) -> Self {
        Meta {
            id,
            store_id: store_id.into(),
            customer,
            created_at_ms,
            schema_version: SCHEMA_VERSION,
        }
    }
}

/// Someone taking part in the conversation, as shown to the others.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ParticipantRecord {
    pub participant: Participant,
    pub display_name: String,
    pub joined_at_ms: u64,
}

/// Records that appeared in a document between two versions ([`Conversation::changes_since`]).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Delta {
    /// New messages, in display order (sent_at_ms, id).
    pub messages: Vec<MessageRecord>,
    /// New session events, in id order.
    pub events: Vec<Event>,
    /// New or replaced participant records.
    pub participants: Vec<ParticipantRecord>,
}

impl Delta {
    /// Nothing appeared.
    pub fn is_empty(&self) -> bool {
        self.messages.is_empty() && self.events.is_empty() && self.participants.is_empty()
    }
}

/// One chat message. Immutable once written.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MessageRecord {
    pub id: MessageId,
    /// The sending client's own id for the message, so the client can match its optimistic copy.
    pub client_msg_id: String,
    pub sender: Participant,
    pub body: String,
    pub sent_at_ms: u64,
    /// An image sent with the message (the body may then be empty). Absent in documents
    /// written before attachments existed, and skipped when `None`, so those stay readable and
    /// byte-identical.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attachment: Option<Attachment>,
    /// What the receiving store's model read in a customer's message, written with the
    /// message (so the hub and every store see the same reading); absent for staff, bot and
    /// older messages.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub intent: Option<IntentRecord>,
}

/// An intent reading of one message: the label (`aisle_models::Intent::as_str`), its
/// probability and the model that gave it (so a later model's readings can be told apart).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct IntentRecord {
    pub label: String,
    pub confidence: f32,
    pub model: String,
}

/// What a reader needs to show an attached image: the bytes themselves stay on the appliance
/// that received the upload (`GET /api/attachments/{id}` there), never in the document, which
/// every store and the hub replicate.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attachment {
    pub id: AttachmentId,
    /// `image/png`, `image/jpeg`, `image/gif` or `image/webp`: sniffed from the bytes.
    pub mime: String,
    pub bytes: u64,
}

/// A conversation replica: an Automerge document plus the bookkeeping for incremental saves.
///
/// Deliberately not `Clone`: a clone would share the Automerge actor id, and two replicas writing
/// under one actor id corrupt each other's history. Use [`Conversation::fork`].
#[derive(Debug)]
pub struct Conversation {
    doc: AutoCommit,
    /// Heads as of the last `save`/`save_incremental` (or `load`): everything after them is what
    /// the next `save_incremental` must return. Tracked here rather than relying on
    /// `AutoCommit`'s own cursor, which `AutoCommit::load` leaves empty (so the first incremental
    /// save after a load would re-emit the whole history).
    saved_heads: Vec<ChangeHash>,
    /// Ids of the `participants`, `messages` and `events` maps, looked up once.
    containers: std::cell::OnceCell<[ObjId; 3]>,
    /// The conversation this replica is: from `meta` for `create`/`load`, given to
    /// [`Conversation::empty_for_sync`]. A sync that would deliver another id is refused.
    id: ConversationId,
}

impl Conversation {
    /// Only the peer that opens a conversation creates its document; every other peer receives it
    /// by sync/load (two independently created skeletons conflict and hide each other's data).
    pub fn create(meta: &Meta) -> Result<Self, SyncError> {
        let mut doc = AutoCommit::new();
        doc.put(ROOT, META, encode(meta))?;
        for name in CONTAINERS {
            doc.put_object(ROOT, name, ObjType::Map)?;
        }
        doc.commit();
        Ok(Conversation {
            doc,
            saved_heads: Vec::new(),
            containers: std::cell::OnceCell::new(),
            id: meta.id,
        })
    }

    /// Loads a document from `save()` output, optionally followed by any number of
    /// `save_incremental()` chunks concatenated (the append-only storage format). Truncated or
    /// checksum-failing chunks are an error rather than being silently dropped.
    pub fn load(bytes: &[u8]) -> Result<Self, SyncError> {
        let mut doc = load_guarded(bytes)?;
        let saved_heads = doc.get_heads();
        let meta = match doc.get(ROOT, META)? {
            None => return Err(SyncError::MissingSchema(META)),
            Some((value, _)) => decode::<Meta>(value.as_bytes(), "meta", META)?,
        };
        let conversation = Conversation {
            doc,
            saved_heads,
            containers: std::cell::OnceCell::new(),
            id: meta.id,
        };
        for name in CONTAINERS {
            conversation.container(name)?;
        }
        Ok(conversation)
    }

    /// The conversation's fixed facts.
    pub fn meta(&self) -> Result<Meta, SyncError> {
        match self.doc.get(ROOT, META)? {
            None => Err(SyncError::MissingSchema(META)),
            Some((value, _)) => decode(value.as_bytes(), "meta", META),
        }
    }

    /// Adds or replaces (keyed by participant) a participant record. Writing a record identical
    /// to the stored one is a no-op, so repeated joins do not grow the document.
    pub fn put_participant(&mut self, p: &ParticipantRecord) -> Result<(), SyncError> {
        let obj = self.container(PARTICIPANTS)?;
        let key = p.participant.to_string();
        let bytes = encode(p);
        if let Some((value, _)) = self.doc.get(&obj, key.as_str())?
            && value.as_bytes() == Some(bytes.as_slice())
        {
            return Ok(());
        }
        self.doc.put(&obj, key, bytes)?;
        Ok(())
    }

    /// All participants, ordered by their map key.
    pub fn participants(&self) -> Result<Vec<ParticipantRecord>, SyncError> {
        self.records(PARTICIPANTS, "participant")
    }

    /// Messages are immutable: one scalar (JSON bytes) in a map keyed by message id. Returns false
    /// (and changes nothing) if that id is already present — idempotent retries.
    pub fn add_message(&mut self, m: &MessageRecord) -> Result<bool, SyncError> {
        self.insert_once(MESSAGES, &m.id.to_string(), encode(m))
    }

    /// Adds a message whose id the caller has just minted (a fresh, time-ordered id can not be
    /// present yet). Skips the existence lookup of [`Self::add_message`], which costs about a
    /// third of a write; a duplicate id here is a caller bug, caught in debug builds.
    pub fn add_new_message(&mut self, m: &MessageRecord) -> Result<(), SyncError> {
        let obj = self.container(MESSAGES)?;
        let key = m.id.to_string();
        debug_assert!(
            self.doc.get(&obj, key.as_str())?.is_none(),
            "add_new_message with an id already present"
        );
        self.doc.put(&obj, key, encode(m))?;
        Ok(())
    }

    /// The message with this id, if present.
    pub fn message(&self, id: MessageId) -> Result<Option<MessageRecord>, SyncError> {
        let obj = self.container(MESSAGES)?;
        let key = id.to_string();
        match self.doc.get(&obj, key.as_str())? {
            None => Ok(None),
            Some((value, _)) => {
                let record: MessageRecord = decode(value.as_bytes(), "message", &key)?;
                check_key(record.id.to_string(), "message", &key)?;
                Ok(Some(record))
            }
        }
    }

    /// Number of messages (0 if the document has no `messages` container, which `load` rules
    /// out).
    pub fn message_count(&self) -> usize {
        self.container(MESSAGES)
            .map(|obj| self.doc.length(&obj))
            .unwrap_or(0)
    }

    /// Display order is (sent_at_ms, id), never insertion order.
    pub fn messages(&self) -> Result<Vec<MessageRecord>, SyncError> {
        let mut records: Vec<MessageRecord> = self.records(MESSAGES, "message")?;
        records.sort_by_key(|m| (m.sent_at_ms, m.id));
        Ok(records)
    }

    /// Appends a session event, keyed by event id; idempotent like [`Self::add_message`].
    pub fn add_event(&mut self, e: &Event) -> Result<bool, SyncError> {
        self.insert_once(EVENTS, &e.id.to_string(), encode(e))
    }

    /// All session events, in id order (use [`Self::fold`] for their meaning).
    pub fn events(&self) -> Result<Vec<Event>, SyncError> {
        self.records(EVENTS, "event")
    }

    /// The session state folded from the events.
    pub fn fold(&self) -> Result<Fold, SyncError> {
        Ok(fold(&self.events()?))
    }

    /// The whole document in Automerge's compact format. Resets the incremental-save cursor.
    pub fn save(&mut self) -> Vec<u8> {
        let bytes = self.doc.save();
        self.saved_heads = self.doc.get_heads();
        bytes
    }

    /// The changes since the previous save/save_incremental; empty Vec if nothing changed.
    ///
    /// Includes changes received by `merge`, not just local ones. The chunks can be appended
    /// after the last `save()` output and handed to [`Self::load`] as one byte string.
    pub fn save_incremental(&mut self) -> Vec<u8> {
        let bytes = self.doc.save_after(&self.saved_heads);
        self.saved_heads = self.doc.get_heads();
        bytes
    }

    /// Pulls every change of `other` that this replica lacks (`other` is only read, but Automerge
    /// needs `&mut` to close its pending transaction).
    ///
    /// Refuses documents that are not replicas of this one: a different conversation id, or the
    /// same id with a separately created skeleton (invariant 1), because merging either would
    /// hide one side's messages.
    pub fn merge(&mut self, other: &mut Conversation) -> Result<(), SyncError> {
        if self.meta()?.id != other.meta()?.id {
            return Err(SyncError::ForeignDocument("different conversation ids"));
        }
        for name in CONTAINERS {
            if self.container(name)? != other.container(name)? {
                return Err(SyncError::ForeignDocument(
                    "the conversation was created twice (different skeletons)",
                ));
            }
        }
        self.doc.merge(&mut other.doc)?;
        Ok(())
    }

    /// A replica with a new actor id (used by tests and later by sync). Its incremental-save
    /// cursor starts empty: it has saved nothing yet.
    pub fn fork(&mut self) -> Conversation {
        Conversation {
            doc: self.doc.fork(),
            saved_heads: Vec::new(),
            containers: self.containers.clone(),
            id: self.id,
        }
    }

    /// The current Automerge heads (identify this replica's version for sync and tests).
    pub fn heads(&mut self) -> Vec<ChangeHash> {
        self.doc.get_heads()
    }

    /// Puts the document back as it was at `heads` (which it holds), keeping its actor id:
    /// undoes a received round whose records turned out unreadable (`changes_since` failed),
    /// so nothing of it is stored or shown.
    pub fn rewind(&mut self, heads: &[ChangeHash]) -> Result<(), SyncError> {
        let actor = self.doc.get_actor().clone();
        let mut restored = self.doc.fork_at(heads)?;
        restored.set_actor(actor);
        self.doc = restored;
        Ok(())
    }

    /// What changed between `before` (heads this replica held, e.g. before a sync round; empty
    /// for "from nothing") and now: the messages, events and participant records that appeared.
    /// Used to project a received round into the edge's and the hub's tables without reading
    /// the whole document again. It may also name a record this replica already held, when two
    /// replicas wrote the same record (a retried send reaching both): consumers insert
    /// idempotently, by id.
    pub fn changes_since(&mut self, before: &[ChangeHash]) -> Result<Delta, SyncError> {
        let mut delta = Delta::default();
        if !self.is_complete() {
            return Ok(delta);
        }
        let after = self.doc.get_heads();
        if before == after.as_slice() {
            return Ok(delta);
        }
        let [participants, messages, events] = [PARTICIPANTS, MESSAGES, EVENTS]
            .map(|name| self.container(name))
            .map(Result::ok);
        for patch in self.doc.diff(before, &after) {
            let automerge::PatchAction::PutMap { key, value, .. } = patch.action else {
                continue;
            };
            let bytes = match &value.0 {
                automerge::Value::Scalar(s) => match s.as_ref() {
                    automerge::ScalarValue::Bytes(b) => Some(b.as_slice()),
                    _ => None,
                },
                _ => None,
            };
            if Some(&patch.obj) == messages.as_ref() {
                let record: MessageRecord = decode(bytes, "message", &key)?;
                check_key(record.key(), "message", &key)?;
                delta.messages.push(record);
            } else if Some(&patch.obj) == events.as_ref() {
                let record: Event = decode(bytes, "event", &key)?;
                check_key(record.key(), "event", &key)?;
                delta.events.push(record);
            } else if Some(&patch.obj) == participants.as_ref() {
                let record: ParticipantRecord = decode(bytes, "participant", &key)?;
                check_key(record.key(), "participant", &key)?;
                delta.participants.push(record);
            }
        }
        delta.messages.sort_by_key(|m| (m.sent_at_ms, m.id));
        Ok(delta)
    }

    /// A replica of a conversation this peer has never held, to be filled by the sync protocol.
    ///
    /// Invariant 1: only the creator calls [`Self::create`]; every other peer starts here (or from
    /// [`Self::load`] of bytes it stored earlier) and receives the creator's skeleton by sync.
    /// Until [`Self::is_complete`] is true the typed accessors return
    /// [`SyncError::MissingSchema`] and writes fail the same way, so nothing can be written into a
    /// document that has no containers yet.
    pub fn empty_for_sync(id: ConversationId) -> Conversation {
        Conversation {
            doc: AutoCommit::new(),
            saved_heads: Vec::new(),
            containers: std::cell::OnceCell::new(),
            id,
        }
    }

    /// The conversation this replica is (known even before a synced skeleton arrived).
    pub fn id(&self) -> ConversationId {
        self.id
    }

    /// True once the document holds its skeleton: `meta` (decodable) and the three containers.
    /// A replica from [`Self::empty_for_sync`] becomes complete when the sync round that carries
    /// the creator's first change has been received; only then may it be treated as a
    /// conversation (listed, folded, written to, persisted).
    pub fn is_complete(&self) -> bool {
        self.meta().is_ok() && self.container(MESSAGES).is_ok()
    }

    /// The next Automerge sync message (already encoded) for the peer whose per-document state
    /// is `state`, or `None` when there is nothing to say (in sync, or waiting for the peer's
    /// answer). Closes the pending local transaction first, so writes made since the last save
    /// are included.
    pub fn generate_sync_message(&mut self, state: &mut sync::State) -> Option<Vec<u8>> {
        self.doc
            .sync()
            .generate_sync_message(state)
            .map(sync::Message::encode)
    }

    /// Applies one encoded Automerge sync message from the peer whose state is `state`.
    ///
    /// Changes that arrive this way are returned by the next [`Self::save_incremental`] like
    /// local ones (it saves everything after the heads of the previous save).
    ///
    /// Refuses, leaving both the document and `state` exactly as they were:
    /// - bytes that are not a sync message ([`SyncError::BadSyncMessage`]) or changes Automerge
    ///   rejects ([`SyncError::Automerge`]);
    /// - a skeleton created a second time (conflicting `meta`/container keys), a replaced
    ///   container, or the skeleton of another conversation ([`SyncError::ForeignDocument`]);
    /// - a `meta` that does not decode ([`SyncError::Corrupt`]).
    ///
    /// Rolling back re-forks the document at its previous heads, which costs about a `load`; it
    /// only happens on these error paths.
    pub fn receive_sync_message(
        &mut self,
        state: &mut sync::State,
        message: &[u8],
    ) -> Result<(), SyncError> {
        let (containers, id) = (&self.containers, self.id);
        receive_checked(&mut self.doc, state, message, |doc| {
            check_skeleton(doc, containers, id)
        })
    }
}

/// After a sync applied changes: the skeleton is still the one this replica had (or, for a
/// replica that had none, exactly one skeleton of the expected conversation arrived).
fn check_skeleton(
    doc: &AutoCommit,
    containers: &std::cell::OnceCell<[ObjId; 3]>,
    id: ConversationId,
) -> Result<(), SyncError> {
    for name in [META, PARTICIPANTS, MESSAGES, EVENTS] {
        if doc.get_all(ROOT, name)?.len() > 1 {
            return Err(SyncError::ForeignDocument(
                "the conversation was created twice (conflicting skeletons)",
            ));
        }
    }
    if let Some(cached) = containers.get() {
        for (name, obj) in CONTAINERS.iter().zip(cached) {
            match doc.get(ROOT, *name)? {
                Some((_, current)) if current == *obj => {}
                _ => {
                    return Err(SyncError::ForeignDocument("a root container was replaced"));
                }
            }
        }
    }
    if let Some((value, _)) = doc.get(ROOT, META)? {
        let meta: Meta = decode(value.as_bytes(), "meta", META)?;
        if meta.id != id {
            return Err(SyncError::ForeignDocument(
                "the skeleton of a different conversation",
            ));
        }
    }
    Ok(())
}

/// Applies an encoded Automerge sync message to `doc`. If Automerge refuses it, or `check`
/// refuses what it changed, the document and the sync state are restored as they were (sync
/// never corrupts a replica). Shared by every document kind.
pub(crate) fn receive_checked(
    doc: &mut AutoCommit,
    state: &mut sync::State,
    message: &[u8],
    check: impl FnOnce(&AutoCommit) -> Result<(), SyncError>,
) -> Result<(), SyncError> {
    let message = guarded(|| sync::Message::decode(message))?
        .map_err(|err| SyncError::BadSyncMessage(err.to_string()))?;
    let before = doc.get_heads();
    let state_before = state.clone();
    let applied = guarded(|| doc.sync().receive_sync_message(state, message));
    let result = match applied {
        Err(panicked) => Err(panicked),
        Ok(Err(err)) => Err(SyncError::from(err)),
        Ok(Ok(())) if doc.get_heads() == before => Ok(()),
        Ok(Ok(())) => check(doc),
    };
    if let Err(err) = result {
        // Replace the document by its state before the message, keeping the actor id. After a
        // panic too: Automerge applies a change to the history only once it is whole, so the
        // heads before the message are still there to fork from.
        let actor = doc.get_actor().clone();
        let mut restored = guarded(|| doc.fork_at(&before))??;
        restored.set_actor(actor);
        *doc = restored;
        *state = state_before;
        return Err(err);
    }
    Ok(())
}

/// `AutoCommit::load` of bytes from another machine, with Automerge's panics caught
/// ([`guarded`]).
pub(crate) fn load_guarded(bytes: &[u8]) -> Result<AutoCommit, SyncError> {
    Ok(guarded(|| AutoCommit::load(bytes))??)
}

/// Runs an Automerge call on bytes from another machine, turning a panic inside Automerge into
/// [`SyncError::Panicked`]. Automerge 0.12 panics on some malformed column data (an assertion in
/// its column reader, `hexane`; found by the `automerge_load` fuzz target) instead of returning
/// an error. Unguarded, such a message would kill the edge's single writer thread, or end a
/// hub's sync task on every retry of the store.
pub(crate) fn guarded<T>(f: impl FnOnce() -> T) -> Result<T, SyncError> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).map_err(|panic| {
        let message = panic
            .downcast_ref::<&str>()
            .map(|s| (*s).to_owned())
            .or_else(|| panic.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "a panic without a message".to_owned());
        SyncError::Panicked(message)
    })
}

impl Conversation {
    /// The object id of a root container, checking it is a map.
    fn container(&self, name: &'static str) -> Result<ObjId, SyncError> {
        let index = CONTAINERS
            .iter()
            .position(|c| *c == name)
            .expect("a known container name");
        if let Some(objs) = self.containers.get() {
            return Ok(objs[index].clone());
        }
        let mut objs = Vec::with_capacity(CONTAINERS.len());
        for name in CONTAINERS {
            objs.push(match self.doc.get(ROOT, name)? {
                None => return Err(SyncError::MissingSchema(name)),
                Some((automerge::Value::Object(ObjType::Map), obj)) => obj,
                Some(_) => {
                    return Err(SyncError::Corrupt {
                        what: "container",
                        key: name.to_owned(),
                    });
                }
            });
        }
        let objs: [ObjId; 3] = objs.try_into().expect("three containers");
        let found = objs[index].clone();
        // The containers are created once, by the document's creator, and never replaced
        // (merge refuses a different skeleton): their ids can be remembered.
        let _ = self.containers.set(objs);
        Ok(found)
    }

    /// Writes `bytes` under `key` unless the key already exists; true if written.
    fn insert_once(
        &mut self,
        container: &'static str,
        key: &str,
        bytes: Vec<u8>,
    ) -> Result<bool, SyncError> {
        let obj = self.container(container)?;
        if self.doc.get(&obj, key)?.is_some() {
            return Ok(false);
        }
        // No commit here: the pending transaction closes at the next save, save_incremental,
        // heads or merge, so a batch of writes becomes one Automerge change (commits cost
        // more than the puts).
        self.doc.put(&obj, key, bytes)?;
        Ok(true)
    }

    /// Decodes every value of a container, in key order. Records that carry their own id must
    /// match their key (a mismatch means a buggy writer, and would break idempotency).
    fn records<T: DeserializeOwned + Keyed>(
        &self,
        container: &'static str,
        what: &'static str,
    ) -> Result<Vec<T>, SyncError> {
        let obj = self.container(container)?;
        self.doc
            .map_range(&obj, ..)
            .map(|item| {
                let bytes = match &item.value {
                    ValueRef::Scalar(ScalarValueRef::Bytes(b)) => Some(b.as_ref()),
                    _ => None,
                };
                let record: T = decode(bytes, what, &item.key)?;
                check_key(record.key(), what, &item.key)?;
                Ok(record)
            })
            .collect()
    }
}

/// Records whose document key is derived from their content.
trait Keyed {
    fn key(&self) -> String;
}

impl Keyed for MessageRecord {
    fn key(&self) -> String {
        self.id.to_string()
    }
}

impl Keyed for Event {
    fn key(&self) -> String {
        self.id.to_string()
    }
}

impl Keyed for ParticipantRecord {
    fn key(&self) -> String {
        self.participant.to_string()
    }
}

fn check_key(actual: String, what: &'static str, key: &str) -> Result<(), SyncError> {
    if actual == key {
        Ok(())
    } else {
        Err(SyncError::Corrupt {
            what,
            key: key.to_owned(),
        })
    }
}

/// JSON-encodes a record for storage as a bytes scalar.
fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    // Invariant: these are plain derive(Serialize) structs with string-keyed fields, which
    // serde_json cannot fail to write into a Vec.
    serde_json::to_vec(value).expect("records always serialise to JSON")
}

/// Decodes a bytes scalar; anything else (wrong scalar type, bad JSON) is `Corrupt`.
fn decode<T: DeserializeOwned>(
    bytes: Option<&[u8]>,
    what: &'static str,
    key: &str,
) -> Result<T, SyncError> {
    bytes
        .and_then(|b| serde_json::from_slice(b).ok())
        .ok_or_else(|| SyncError::Corrupt {
            what,
            key: key.to_owned(),
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hlc::Hlc;
    use crate::ids::{EventId, StaffId};
    use crate::session::{EventKind, Status};
    use ulid::Ulid;

    fn meta() -> Meta {
        Meta::new(
            ConversationId::from_ulid(Ulid(1)),
            "store-42",
            CustomerId::from_ulid(Ulid(2)),
            1_000,
        )
    }

    fn msg(n: u128, at: u64) -> MessageRecord {
        MessageRecord {
            id: MessageId::from_ulid(Ulid(n)),
            client_msg_id: format!("c{n}"),
            sender: Participant::Customer(CustomerId::from_ulid(Ulid(2))),
            body: format!("hello {n}"),
            sent_at_ms: at,
            attachment: None,
            intent: None,
        }
    }

    fn new_doc() -> Conversation {
        Conversation::create(&meta()).expect("create")
    }

    #[test]
    fn create_writes_meta_and_empty_containers() {
        let c = new_doc();
        assert_eq!(c.meta().expect("meta"), meta());
        assert_eq!(c.meta().expect("meta").schema_version, SCHEMA_VERSION);
        assert_eq!(c.message_count(), 0);
        assert!(c.messages().expect("messages").is_empty());
        assert!(c.participants().expect("participants").is_empty());
        assert!(c.events().expect("events").is_empty());
    }

    #[test]
    fn round_trip_through_save_and_load() {
        let mut c = new_doc();
        for (n, at) in [(10, 5), (11, 6), (12, 7)] {
            assert!(c.add_message(&msg(n, at)).expect("add"));
        }
        let p = ParticipantRecord {
            participant: Participant::Bot,
            display_name: "Aisle bot".into(),
            joined_at_ms: 3,
        };
        c.put_participant(&p).expect("participant");
        let loaded = Conversation::load(&c.save()).expect("load");
        assert_eq!(loaded.meta().expect("meta"), meta());
        assert_eq!(loaded.messages().expect("m"), c.messages().expect("m"));
        assert_eq!(loaded.message_count(), 3);
        assert_eq!(loaded.participants().expect("p"), vec![p]);
        assert_eq!(
            loaded.message(MessageId::from_ulid(Ulid(11))).expect("get"),
            Some(msg(11, 6))
        );
        assert_eq!(
            loaded.message(MessageId::from_ulid(Ulid(99))).expect("get"),
            None
        );
    }

    #[test]
    fn save_plus_incremental_chunks_concatenated_load() {
        let mut c = new_doc();
        c.add_message(&msg(10, 1)).expect("add");
        let mut storage = c.save();
        assert!(
            c.save_incremental().is_empty(),
            "nothing changed since save"
        );
        c.add_message(&msg(11, 2)).expect("add");
        let chunk1 = c.save_incremental();
        assert!(!chunk1.is_empty());
        assert!(c.save_incremental().is_empty());
        c.add_message(&msg(12, 3)).expect("add");
        c.add_event(&Event {
            id: EventId::from_ulid(Ulid(50)),
            kind: EventKind::Claim {
                agent: StaffId::from_ulid(Ulid(7)),
            },
            actor: Participant::Staff(StaffId::from_ulid(Ulid(7))),
            hlc: Hlc::new(10, 0),
            prev: None,
        })
        .expect("event");
        let chunk2 = c.save_incremental();
        storage.extend_from_slice(&chunk1);
        storage.extend_from_slice(&chunk2);

        let mut loaded = Conversation::load(&storage).expect("load concatenated");
        assert_eq!(loaded.messages().expect("m"), c.messages().expect("m"));
        assert_eq!(loaded.fold().expect("fold"), c.fold().expect("fold"));
        assert_eq!(loaded.heads(), c.heads());
        // Everything loaded is already on disk: nothing to append.
        assert!(loaded.save_incremental().is_empty());
        loaded.add_message(&msg(13, 4)).expect("add");
        let chunk3 = loaded.save_incremental();
        storage.extend_from_slice(&chunk3);
        assert_eq!(
            Conversation::load(&storage).expect("load").message_count(),
            4
        );
    }

    #[test]
    fn incremental_chunks_alone_load_when_they_cover_the_history() {
        let mut c = new_doc();
        c.add_message(&msg(10, 1)).expect("add");
        let mut log = c.save_incremental();
        c.add_message(&msg(11, 2)).expect("add");
        log.extend(c.save_incremental());
        let loaded = Conversation::load(&log).expect("load changes only");
        assert_eq!(loaded.messages().expect("m"), c.messages().expect("m"));
    }

    #[test]
    fn incremental_save_includes_merged_changes() {
        let mut a = new_doc();
        let base = a.save();
        let mut b = a.fork();
        b.add_message(&msg(20, 1)).expect("add");
        a.merge(&mut b).expect("merge");
        let mut storage = base;
        storage.extend(a.save_incremental());
        assert_eq!(
            Conversation::load(&storage).expect("load").message_count(),
            1
        );
    }

    #[test]
    fn torn_tail_is_an_error() {
        let mut c = new_doc();
        let mut storage = c.save();
        c.add_message(&msg(10, 1)).expect("add");
        let chunk = c.save_incremental();
        storage.extend_from_slice(&chunk[..chunk.len() - 3]);
        assert!(matches!(
            Conversation::load(&storage),
            Err(SyncError::Automerge(_))
        ));
    }

    #[test]
    fn load_rejects_non_conversations() {
        assert!(matches!(
            Conversation::load(&[]),
            Err(SyncError::MissingSchema("meta"))
        ));
        assert!(matches!(
            Conversation::load(b"definitely not automerge"),
            Err(SyncError::Automerge(_))
        ));
        let mut other = AutoCommit::new();
        other.put(ROOT, META, encode(&meta())).expect("put");
        assert!(matches!(
            Conversation::load(&other.save()),
            Err(SyncError::MissingSchema(PARTICIPANTS))
        ));
    }

    #[test]
    fn add_message_is_idempotent() {
        let mut c = new_doc();
        assert!(c.add_message(&msg(10, 1)).expect("add"));
        c.save();
        let heads = c.heads();
        // Same id, even with different content: the first write stands.
        let mut changed = msg(10, 1);
        changed.body = "edited".into();
        assert!(!c.add_message(&msg(10, 1)).expect("add"));
        assert!(!c.add_message(&changed).expect("add"));
        assert_eq!(c.heads(), heads, "a retry must not create a change");
        assert!(c.save_incremental().is_empty());
        assert_eq!(c.message_count(), 1);
        assert_eq!(c.messages().expect("m"), vec![msg(10, 1)]);
    }

    #[test]
    fn messages_are_ordered_by_time_then_id() {
        let mut c = new_doc();
        // Inserted out of order; ids 30 and 31 share a timestamp.
        for (n, at) in [(31, 5), (40, 1), (30, 5), (10, 9), (20, 3)] {
            c.add_message(&msg(n, at)).expect("add");
        }
        let order: Vec<u128> = c
            .messages()
            .expect("m")
            .iter()
            .map(|m| m.id.as_ulid().0)
            .collect();
        assert_eq!(order, vec![40, 20, 30, 31, 10]);
    }

    #[test]
    fn put_participant_overwrites_by_participant() {
        let mut c = new_doc();
        let staff = Participant::Staff(StaffId::from_ulid(Ulid(7)));
        let mut rec = ParticipantRecord {
            participant: staff.clone(),
            display_name: "Sam".into(),
            joined_at_ms: 1,
        };
        c.put_participant(&rec).expect("put");
        let heads = c.heads();
        c.put_participant(&rec).expect("identical put");
        assert_eq!(c.heads(), heads, "identical re-put is a no-op");
        rec.display_name = "Sam (floor)".into();
        c.put_participant(&rec).expect("put");
        c.put_participant(&ParticipantRecord {
            participant: Participant::System,
            display_name: "Aisle".into(),
            joined_at_ms: 0,
        })
        .expect("put");
        let all = c.participants().expect("p");
        assert_eq!(all.len(), 2);
        assert!(all.contains(&rec));
    }

    #[test]
    fn events_round_trip_and_fold() {
        let mut c = new_doc();
        let agent = StaffId::from_ulid(Ulid(7));
        let claim = Event {
            id: EventId::from_ulid(Ulid(50)),
            kind: EventKind::Claim { agent },
            actor: Participant::Staff(agent),
            hlc: Hlc::new(10, 0),
            prev: None,
        };
        let resolve = Event {
            id: EventId::from_ulid(Ulid(51)),
            kind: EventKind::Resolve,
            actor: Participant::Staff(agent),
            hlc: Hlc::new(11, 0),
            prev: Some(claim.id),
        };
        assert!(c.add_event(&resolve).expect("add"));
        assert!(c.add_event(&claim).expect("add"));
        assert!(!c.add_event(&claim).expect("retry"));
        let loaded = Conversation::load(&c.save()).expect("load");
        assert_eq!(loaded.events().expect("events"), vec![claim, resolve]);
        let f = loaded.fold().expect("fold");
        assert_eq!(f.state.status, Status::Resolved);
        assert_eq!(f.state.agent, Some(agent));
        assert_eq!(f.state.applied, 2);
    }

    #[test]
    fn undecodable_values_are_corrupt_not_panics() {
        let mut c = new_doc();
        let messages = c.container(MESSAGES).expect("messages");
        let key = MessageId::from_ulid(Ulid(10)).to_string();
        c.doc
            .put(&messages, key.as_str(), "a string, not bytes")
            .expect("put");
        match c.messages() {
            Err(SyncError::Corrupt { what, key: k }) => {
                assert_eq!(what, "message");
                assert_eq!(k, key);
            }
            other => panic!("unexpected {other:?}"),
        }
        assert!(matches!(
            c.message(MessageId::from_ulid(Ulid(10))),
            Err(SyncError::Corrupt { .. })
        ));

        // Valid JSON under the wrong key is also corrupt.
        let mut c = new_doc();
        let messages = c.container(MESSAGES).expect("messages");
        c.doc
            .put(&messages, "01ARZ3NDEKTSV4RRFFQ69G5FAV", encode(&msg(10, 1)))
            .expect("put");
        assert!(matches!(c.messages(), Err(SyncError::Corrupt { .. })));

        let mut c = new_doc();
        let events = c.container(EVENTS).expect("events");
        c.doc.put(&events, "x", vec![1u8, 2, 3]).expect("put");
        assert!(matches!(
            c.fold(),
            Err(SyncError::Corrupt { what: "event", .. })
        ));

        let mut c = new_doc();
        c.doc.put(ROOT, META, b"{}".to_vec()).expect("put");
        assert!(matches!(
            c.meta(),
            Err(SyncError::Corrupt { what: "meta", .. })
        ));
        let bytes = c.save();
        assert!(matches!(
            Conversation::load(&bytes),
            Err(SyncError::Corrupt { .. })
        ));
    }

    #[test]
    fn fork_and_merge_combine_concurrent_messages() {
        let mut a = new_doc();
        let mut b = a.fork();
        a.add_message(&msg(10, 2)).expect("add");
        b.add_message(&msg(11, 1)).expect("add");
        // The same retry landing on both replicas stays one message.
        a.add_message(&msg(12, 3)).expect("add");
        b.add_message(&msg(12, 3)).expect("add");
        a.merge(&mut b).expect("merge");
        b.merge(&mut a).expect("merge");
        assert_eq!(a.messages().expect("m"), b.messages().expect("m"));
        assert_eq!(a.message_count(), 3);
        assert_eq!(a.heads(), b.heads());
    }

    /// Runs Automerge's sync loop between two replicas until neither has anything to say.
    fn sync_pair(a: &mut Conversation, b: &mut Conversation) -> Result<usize, SyncError> {
        let (mut sa, mut sb) = (sync::State::new(), sync::State::new());
        let mut bytes = 0;
        loop {
            let ab = a.generate_sync_message(&mut sa);
            if let Some(m) = &ab {
                bytes += m.len();
                b.receive_sync_message(&mut sb, m)?;
            }
            let ba = b.generate_sync_message(&mut sb);
            if let Some(m) = &ba {
                bytes += m.len();
                a.receive_sync_message(&mut sa, m)?;
            }
            if ab.is_none() && ba.is_none() {
                return Ok(bytes);
            }
        }
    }

    #[test]
    fn an_empty_replica_receives_the_whole_conversation_by_sync() {
        let mut a = new_doc();
        a.add_message(&msg(10, 1)).expect("add");
        a.add_message(&msg(11, 2)).expect("add");
        let mut b = Conversation::empty_for_sync(meta().id);
        assert_eq!(b.id(), meta().id);
        assert!(!b.is_complete());
        assert!(matches!(b.messages(), Err(SyncError::MissingSchema(_))));
        assert!(matches!(
            b.add_message(&msg(12, 3)),
            Err(SyncError::MissingSchema(_))
        ));
        assert!(b.save_incremental().is_empty());

        sync_pair(&mut a, &mut b).expect("sync");
        assert!(b.is_complete());
        assert_eq!(b.meta().expect("meta"), meta());
        assert_eq!(b.messages().expect("m"), a.messages().expect("m"));
        assert_eq!(b.heads(), a.heads());

        // What arrived by sync is what the next incremental save returns, and it loads.
        let mut storage = b.save_incremental();
        assert!(!storage.is_empty());
        b.add_message(&msg(12, 3)).expect("b writes once complete");
        sync_pair(&mut a, &mut b).expect("sync back");
        assert_eq!(a.message_count(), 3);
        a.add_message(&msg(13, 4)).expect("add");
        sync_pair(&mut a, &mut b).expect("sync again");
        storage.extend(b.save_incremental());
        let mut loaded = Conversation::load(&storage).expect("load synced chunks");
        assert_eq!(loaded.messages().expect("m"), a.messages().expect("m"));
        assert_eq!(loaded.heads(), a.heads());
    }

    #[test]
    fn a_second_skeleton_is_refused_and_nothing_changes() {
        let mut a = new_doc();
        a.add_message(&msg(10, 1)).expect("add");
        // The same conversation created a second time (invariant 1 broken by a buggy peer).
        let mut twin = new_doc();
        twin.add_message(&msg(20, 1)).expect("add");
        let heads = twin.heads();
        let mut state = sync::State::new();
        let err = sync_pair(&mut a, &mut twin).expect_err("conflicting skeletons");
        assert!(matches!(err, SyncError::ForeignDocument(_)), "{err:?}");
        assert_eq!(twin.heads(), heads, "rolled back");
        assert_eq!(twin.messages().expect("m"), vec![msg(20, 1)]);
        // The replica still works: writes and saves as before.
        twin.add_message(&msg(21, 2)).expect("add");
        let mut loaded = Conversation::load(&twin.save()).expect("load");
        assert_eq!(loaded.message_count(), 2);
        assert_eq!(loaded.heads(), twin.heads());

        // Same for an empty replica waiting for another conversation.
        let mut other = Conversation::empty_for_sync(ConversationId::from_ulid(Ulid(77)));
        let err = sync_pair(&mut a, &mut other).expect_err("wrong conversation");
        assert!(matches!(err, SyncError::ForeignDocument(_)), "{err:?}");
        assert!(other.heads().is_empty());
        assert!(!other.is_complete());

        // Bytes that are not a sync message.
        assert!(matches!(
            other.receive_sync_message(&mut state, b"nope"),
            Err(SyncError::BadSyncMessage(_))
        ));
        assert_eq!(state, sync::State::new());
    }

    #[test]
    fn merge_refuses_foreign_documents() {
        let mut a = new_doc();
        // Same conversation created twice: invariant 1 violated.
        let mut twin = new_doc();
        assert!(matches!(
            a.merge(&mut twin),
            Err(SyncError::ForeignDocument(_))
        ));
        let mut other_meta = meta();
        other_meta.id = ConversationId::from_ulid(Ulid(77));
        let mut other = Conversation::create(&other_meta).expect("create");
        assert!(matches!(
            a.merge(&mut other),
            Err(SyncError::ForeignDocument(_))
        ));
        assert_eq!(a.meta().expect("meta"), meta());
    }
}
