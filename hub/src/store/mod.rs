//! Hub storage behind one small trait ([`HubStore`]), so that a PostgreSQL back end can follow;
//! [`sqlite::SqliteStore`] is the default and what the tests run.
//!
//! Every method is async and never blocks the runtime: the SQLite implementation runs writes on
//! one writer thread and reads on reader threads.

#[cfg(test)]
mod conformance;
pub mod postgres;
pub mod schema;
pub mod sqlite;

use futures_util::future::BoxFuture;
use serde::Serialize;

use crate::projection::Projection;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("sqlite: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("schema: {0}")]
    Schema(String),
    #[error("the storage thread stopped")]
    Stopped,
    /// A group-committed batch failed as a whole (the first error, as text).
    #[error("batch: {0}")]
    Batch(String),
    /// PostgreSQL (the server's code and message when it answered with an error) or its pool.
    #[error("postgres: {0}")]
    Postgres(String),
}

impl From<tokio_postgres::Error> for StoreError {
    fn from(err: tokio_postgres::Error) -> Self {
        StoreError::Postgres(match err.as_db_error() {
            Some(db) => format!("{} ({})", db.message(), db.code().code()),
            None => err.to_string(),
        })
    }
}

impl From<deadpool_postgres::PoolError> for StoreError {
    fn from(err: deadpool_postgres::PoolError) -> Self {
        match err {
            deadpool_postgres::PoolError::Backend(err) => err.into(),
            deadpool_postgres::PoolError::Timeout(kind) => {
                tracing::error!(
                    ?kind,
                    limit = "postgres_pool_wait_ms",
                    "no PostgreSQL connection within the pool's wait limit"
                );
                crate::metrics::METRICS.limit("postgres_pool_wait_ms");
                StoreError::Postgres(format!("pool: timed out ({kind:?})"))
            }
            other => StoreError::Postgres(format!("pool: {other}")),
        }
    }
}

pub type StoreResult<T> = Result<T, StoreError>;

/// One manifest entry as stored: the document key and its heads (32 bytes each, concatenated).
pub type ManifestRow = (String, Vec<u8>);
/// A stored document.
#[derive(Clone, Debug)]
pub struct StoredDocument {
    /// The store the document belongs to.
    pub origin_store: String,
    /// Its chunks concatenated (loadable by `Conversation::load`).
    pub bytes: Vec<u8>,
    /// Bumped by every write of the document (see [`SyncWrite::expected_version`]).
    pub version: i64,
}

/// What [`HubStore::save_synced`] came to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SyncSaved {
    /// The document was new.
    pub created: bool,
    /// The document's version after the write.
    pub version: i64,
    /// The document had been written by someone else since `expected_version`: the chunk was
    /// appended (never a replacement), the stored heads are the union of both sides', and the
    /// writer's copy lacks what the other wrote, so it must reload before it is trusted again.
    pub stale: bool,
}

/// An HQ account as the API needs it.
#[derive(Clone, Debug)]
pub struct Account {
    pub id: String,
    pub username: String,
    pub password_hash: String,
    pub role: String,
}

/// A registered store.
#[derive(Clone, Debug, Serialize)]
pub struct StoreRecord {
    pub id: String,
    pub name: String,
    pub region: String,
    pub created_at_ms: u64,
    pub enrolled_at_ms: Option<u64>,
    pub last_sync_at_ms: Option<u64>,
    pub revoked: bool,
    #[serde(skip)]
    pub credential_hash: Option<Vec<u8>>,
}

/// A store to register, with its one-time enrollment token (hashed).
#[derive(Clone, Debug)]
pub struct NewStore {
    pub id: String,
    pub name: String,
    pub region: String,
    pub token_hash: Vec<u8>,
    pub token_expires_at_ms: u64,
    pub now_ms: u64,
}

/// What an enrollment attempt came to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EnrollOutcome {
    Enrolled,
    UnknownStore,
    BadToken,
    TokenUsed,
    TokenExpired,
    Revoked,
}

/// One document received by sync, to persist with the peer's sync state in one transaction.
#[derive(Clone, Debug)]
pub struct SyncWrite {
    pub store_id: String,
    pub doc_key: String,
    /// The store the document belongs to (`meta.store_id` of a conversation).
    pub origin_store: String,
    /// Bytes to append to the document's chunks (a full save for a new document, else
    /// incremental; may be empty when nothing changed).
    pub chunk: Vec<u8>,
    /// The document's heads after the chunk, 32 bytes each, concatenated.
    pub heads: Vec<u8>,
    /// `PeerSync::save_state` for (store, document).
    pub sync_state: Vec<u8>,
    /// `chunk` is a full save that replaces every stored chunk of the document (compaction).
    /// Honoured only when the stored version is `expected_version`, so a compaction never
    /// drops chunks another session or another hub replica appended meanwhile.
    pub replace_chunks: bool,
    /// The version of the stored document this session's copy holds entirely (from its load
    /// or its last write); `None` for a document it never loaded.
    pub expected_version: Option<i64>,
    /// The HQ rows this round changes (`None`: the round brought no record).
    pub projection: Option<Projection>,
    pub now_ms: u64,
}

/// A hand-off code a store registered so the customer can continue at another store.
#[derive(Clone, Debug)]
pub struct NewHandoff {
    pub code_hash: Vec<u8>,
    pub doc_key: String,
    pub store_id: String,
    pub expires_at_ms: u64,
}

/// What redeeming a hand-off code at a store came to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Redeemed {
    /// The store now shares the document (`origin_store` opened it).
    Shared {
        doc_key: String,
        origin_store: String,
    },
    Unknown,
    Used,
    Expired,
    /// The issuing store has not synced the conversation to the hub yet.
    NotSynced,
    /// The issuing store redeemed its own code (now used up region-wide).
    Own,
}

/// A conversation as HQ sees it: meta, folded state, and figures derived from its messages.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct ConversationSummary {
    pub id: String,
    pub store_id: String,
    pub customer_id: String,
    pub status: String,
    pub agent_id: Option<String>,
    pub agent_name: Option<String>,
    pub created_at_ms: u64,
    pub first_customer_message_at_ms: Option<u64>,
    pub first_response_at_ms: Option<u64>,
    pub resolved_at_ms: Option<u64>,
    pub last_message_at_ms: Option<u64>,
    pub message_count: u64,
    pub intent: Option<String>,
}

/// Which conversations to list; every field narrows the list.
#[derive(Clone, Debug, Default)]
pub struct ConversationFilter {
    pub store: Option<String>,
    /// Any of these statuses (`None`: all).
    pub statuses: Option<Vec<&'static str>>,
    /// Created at or after.
    pub from_ms: Option<u64>,
    /// Created before.
    pub to_ms: Option<u64>,
    /// Held by this staff member now (`agent_id`).
    pub agent_id: Option<String>,
    /// `"unknown"` matches conversations without an intent.
    pub intent: Option<String>,
    /// Only conversations before this (created_at_ms, id) in the list's order: the cursor of
    /// the previous page.
    pub before: Option<(u64, String)>,
    pub limit: usize,
}

/// Who sent a message, as the API shows it.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct Sender {
    pub kind: String,
    pub id: Option<String>,
    pub display_name: Option<String>,
}

/// One message of a transcript.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct TranscriptMessage {
    pub id: String,
    pub sender: Sender,
    pub body: String,
    pub sent_at_ms: u64,
    pub intent: Option<String>,
    /// An image sent with the message: id, type and size; the bytes stay at the store
    /// (`GET /api/attachments/{id}` there), so HQ shows that there was one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub attachment: Option<aisle_sync::Attachment>,
}

/// A participant of a conversation.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct ParticipantView {
    pub kind: String,
    pub id: Option<String>,
    pub display_name: String,
    pub joined_at_ms: u64,
}

/// One conversation with its participants and its transcript in display order.
#[derive(Clone, Debug, Serialize)]
pub struct ConversationDetail {
    pub conversation: ConversationSummary,
    pub participants: Vec<ParticipantView>,
    pub messages: Vec<TranscriptMessage>,
}

/// A full-text search over message bodies.
#[derive(Clone, Debug)]
pub struct SearchQuery {
    /// Whitespace-separated terms, all of which must occur (as substrings) in a message.
    pub terms: Vec<String>,
    pub store: Option<String>,
    pub limit: usize,
    /// When every term is shorter than a trigram, only this many of the newest messages are
    /// scanned.
    pub scan_messages: usize,
}

/// How a search was answered.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SearchMethod {
    /// The trigram index (at least one term has 3 or more characters).
    Index,
    /// A LIKE scan of the newest messages (every term is shorter than 3 characters).
    Scan,
}

/// A message that matched a search.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SearchHit {
    pub conversation_id: String,
    pub store_id: String,
    pub message_id: String,
    pub sender: Sender,
    pub sent_at_ms: u64,
    pub body: String,
}

/// Which activity the figures cover.
#[derive(Clone, Debug)]
pub struct FiguresQuery {
    pub from_ms: u64,
    pub to_ms: u64,
    pub store: Option<String>,
}

/// Count, mean and nearest-rank percentiles of durations (ms).
#[derive(Clone, Debug, Default, Serialize, PartialEq, Eq)]
pub struct DurationStats {
    pub count: u64,
    pub avg_ms: Option<u64>,
    pub p50_ms: Option<u64>,
    pub p90_ms: Option<u64>,
}

/// Activity in one hour.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct HourVolume {
    pub hour_start_ms: u64,
    pub messages: u64,
    pub new_conversations: u64,
}

/// Figures of one group (everything, one store, one intent).
#[derive(Clone, Debug, Default, Serialize, PartialEq, Eq)]
pub struct GroupFigures {
    pub messages: u64,
    pub new_conversations: u64,
    pub first_response: DurationStats,
    pub resolution: DurationStats,
}

/// The activity figures of a time range: volume per hour, response and resolution times.
#[derive(Clone, Debug, Serialize)]
pub struct Figures {
    pub hours: Vec<HourVolume>,
    pub totals: GroupFigures,
    pub by_store: std::collections::BTreeMap<String, GroupFigures>,
    pub by_intent: std::collections::BTreeMap<String, GroupFigures>,
}

/// HQ's settings layer for every store of the region, as the hub keeps it: written into each
/// store's settings document when HQ sets it, and kept here so that a store registered later
/// gets it too (`crate::live_settings`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RegionSettings {
    /// The layer's version (`aisle_sync::HqLayer::version`): a write only replaces a stored
    /// layer with a lower one, so two replicas writing at once leave the later edit.
    pub version: u64,
    /// JSON of `aisle_sync::HqLayer`; the store keeps it as text and never reads into it.
    pub layer: String,
}

/// Length of one head (an Automerge change hash) in a concatenated heads column.
pub const HEAD_BYTES: usize = 32;

/// The union of two concatenated heads lists, sorted and without repeats: what a document holds
/// after two writers appended changes neither had seen. Some of the hashes may be ancestors of
/// others; that costs a store one sync round that finds nothing to exchange, never a change.
pub fn union_heads(a: &[u8], b: &[u8]) -> Vec<u8> {
    let mut heads: Vec<&[u8]> = a.chunks(HEAD_BYTES).chain(b.chunks(HEAD_BYTES)).collect();
    heads.sort_unstable();
    heads.dedup();
    heads.concat()
}

/// One hour, in ms (the figures' volume buckets).
pub const HOUR_MS: u64 = 3_600_000;

/// Every hour of the figures' range with its counts, from `(hour number, count)` rows of
/// messages and of new conversations (hour number = ms / `HOUR_MS`, as text); hours without a
/// row count 0.
pub fn hour_volumes(
    q: &FiguresQuery,
    message_hours: Vec<(String, u64)>,
    conversation_hours: Vec<(String, u64)>,
) -> Vec<HourVolume> {
    let first = q.from_ms / HOUR_MS;
    let mut hours: Vec<HourVolume> = (first..q.to_ms.div_ceil(HOUR_MS))
        .map(|h| HourVolume {
            hour_start_ms: h * HOUR_MS,
            messages: 0,
            new_conversations: 0,
        })
        .collect();
    let slot = |key: &str| {
        key.parse::<u64>()
            .ok()
            .and_then(|h| h.checked_sub(first))
            .map(|i| i as usize)
    };
    for (key, n) in message_hours {
        if let Some(h) = slot(&key).and_then(|i| hours.get_mut(i)) {
            h.messages = n;
        }
    }
    for (key, n) in conversation_hours {
        if let Some(h) = slot(&key).and_then(|i| hours.get_mut(i)) {
            h.new_conversations = n;
        }
    }
    hours
}

/// The hub's storage.
pub trait HubStore: Send + Sync + 'static {
    fn count_accounts(&self) -> BoxFuture<'_, StoreResult<u64>>;
    fn create_account(
        &self,
        username: String,
        password_hash: String,
        role: String,
    ) -> BoxFuture<'_, StoreResult<String>>;
    fn account_by_username(&self, username: String) -> BoxFuture<'_, StoreResult<Option<Account>>>;
    fn create_session(
        &self,
        token_hash: Vec<u8>,
        account_id: String,
        expires_at_ms: u64,
    ) -> BoxFuture<'_, StoreResult<()>>;
    /// The account of a live session token.
    fn session_account(
        &self,
        token_hash: Vec<u8>,
        now_ms: u64,
    ) -> BoxFuture<'_, StoreResult<Option<Account>>>;

    /// Registers a store; `false` if the id is taken.
    fn create_store(&self, store: NewStore) -> BoxFuture<'_, StoreResult<bool>>;
    fn enroll(
        &self,
        store_id: String,
        token_hash: Vec<u8>,
        credential_hash: Vec<u8>,
        now_ms: u64,
    ) -> BoxFuture<'_, StoreResult<EnrollOutcome>>;
    /// `false` if the store is unknown.
    fn revoke_store(&self, store_id: String) -> BoxFuture<'_, StoreResult<bool>>;
    fn store(&self, store_id: String) -> BoxFuture<'_, StoreResult<Option<StoreRecord>>>;
    fn list_stores(&self) -> BoxFuture<'_, StoreResult<Vec<StoreRecord>>>;
    fn touch_store(&self, store_id: String, now_ms: u64) -> BoxFuture<'_, StoreResult<()>>;

    /// The documents shared with `store_id` and their heads: (key, heads concatenated).
    fn manifest(&self, store_id: String) -> BoxFuture<'_, StoreResult<Vec<ManifestRow>>>;
    /// A document's origin store and its chunks concatenated (loadable by `Conversation::load`).
    fn load_document(&self, doc_key: String) -> BoxFuture<'_, StoreResult<Option<StoredDocument>>>;
    fn sync_state(
        &self,
        store_id: String,
        doc_key: String,
    ) -> BoxFuture<'_, StoreResult<Option<Vec<u8>>>>;
    /// Appends the chunk, updates the heads and the version, then the sync state, in one
    /// transaction. A compare-and-swap on the version: when the document moved past
    /// `expected_version` the write still loses nothing (see [`SyncSaved::stale`]).
    fn save_synced(&self, write: SyncWrite) -> BoxFuture<'_, StoreResult<SyncSaved>>;
    fn count_documents(&self) -> BoxFuture<'_, StoreResult<u64>>;

    /// Registers a hand-off code issued by `store_id` (idempotent for the same code).
    fn register_handoff(&self, handoff: NewHandoff) -> BoxFuture<'_, StoreResult<()>>;
    /// Redeems a code at `store_id`: checks it, marks it used and shares the document with the
    /// store, in one transaction.
    fn redeem_handoff(
        &self,
        code_hash: Vec<u8>,
        store_id: String,
        now_ms: u64,
    ) -> BoxFuture<'_, StoreResult<Redeemed>>;
    /// Every (document, store) share, for the hub's in-memory map of who syncs what.
    fn shares(&self) -> BoxFuture<'_, StoreResult<Vec<(String, String)>>>;
    /// The stores `doc_key` is shared with (not its origin): the check behind the in-memory
    /// map when it says no, since another replica may have shared it a moment ago.
    fn shared_with(&self, doc_key: String) -> BoxFuture<'_, StoreResult<Vec<String>>>;
    /// Appends a chunk of a document written at the hub itself (HQ's settings), creating the
    /// document row if needed.
    fn save_document(
        &self,
        doc_key: String,
        origin_store: String,
        chunk: Vec<u8>,
        heads: Vec<u8>,
        now_ms: u64,
    ) -> BoxFuture<'_, StoreResult<()>>;

    /// Conversation documents without a projection row (stored before schema version 2).
    fn unprojected_documents(&self) -> BoxFuture<'_, StoreResult<Vec<String>>>;
    /// Writes a projection on its own (the start-up backfill; sync writes it with the chunk).
    fn save_projection(&self, projection: Projection) -> BoxFuture<'_, StoreResult<()>>;
    /// HQ: conversations of every store, newest first (created_at_ms, then id).
    fn list_conversations(
        &self,
        filter: ConversationFilter,
    ) -> BoxFuture<'_, StoreResult<Vec<ConversationSummary>>>;
    /// HQ: one conversation with its participants and transcript.
    fn conversation_detail(
        &self,
        id: String,
    ) -> BoxFuture<'_, StoreResult<Option<ConversationDetail>>>;
    /// HQ: messages whose body holds every term, newest first.
    fn search_messages(
        &self,
        query: SearchQuery,
    ) -> BoxFuture<'_, StoreResult<(SearchMethod, Vec<SearchHit>)>>;
    /// HQ: the activity figures of a time range.
    fn figures(&self, query: FiguresQuery) -> BoxFuture<'_, StoreResult<Figures>>;

    /// Erases documents: their chunks, sync states, shares, hand-off codes and HQ rows (messages
    /// and their full-text entries) are deleted, and a tombstone of each key is kept (no
    /// content) so that no store can sync one back. In one transaction, after which the WAL is
    /// truncated so the erased text leaves the disk. Keys already erased or never held are
    /// tombstoned too. Returns, per key that was held, the stores that held a copy.
    fn erase_documents(&self, erase: Erasure) -> BoxFuture<'_, StoreResult<Vec<ErasedDocument>>>;
    /// Which of `doc_keys` are erased (tombstoned).
    fn erased(&self, doc_keys: Vec<String>) -> BoxFuture<'_, StoreResult<Vec<String>>>;
    /// The conversation documents of one customer (from the HQ projection).
    fn customer_documents(&self, customer_id: String) -> BoxFuture<'_, StoreResult<Vec<String>>>;
    /// Conversation documents resolved before `resolved_before_ms`, oldest first, at most `limit`.
    fn expired_documents(
        &self,
        resolved_before_ms: u64,
        limit: usize,
    ) -> BoxFuture<'_, StoreResult<Vec<String>>>;

    /// HQ's region settings layer, if HQ ever set one.
    fn region_settings(&self) -> BoxFuture<'_, StoreResult<Option<RegionSettings>>>;
    /// Stores the region layer if its version is above the stored one's (or none is stored);
    /// `false` when a layer of the same or a higher version is already there.
    fn put_region_settings(&self, settings: RegionSettings) -> BoxFuture<'_, StoreResult<bool>>;

    /// The hub's storage identity, which every replica on the database shares (stores key
    /// their sync states by it): the stored one, or `proposed` stored now if there is none.
    fn identity(&self, proposed: String) -> BoxFuture<'_, StoreResult<String>>;
    /// Changes committed by other hub processes on the same database (replicas on one
    /// PostgreSQL), for the in-memory state this process keeps: which stores to push a document
    /// to, who shares what, which connection to close. `None` when only this process writes.
    fn events(&self) -> Option<tokio::sync::broadcast::Receiver<ReplicaEvent>> {
        None
    }
}

/// A change committed by another hub replica, as [`HubStore::events`] tells it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ReplicaEvent {
    /// A document's chunks changed (a synced round, HQ's settings edit).
    DocumentChanged {
        doc_key: String,
        origin_store: String,
    },
    /// A document was shared with a store (a redeemed hand-off code).
    Shared { doc_key: String, store_id: String },
    /// A document was erased; `holders` are the stores that held a copy.
    Erased {
        doc_key: String,
        holders: Vec<String>,
    },
    /// A store was revoked: its sync connection, wherever it is, must close.
    Revoked { store_id: String },
    /// Events may have been missed (the listening connection was lost and is back): every
    /// piece of in-memory state must be rebuilt from the database.
    Resync,
}

/// Documents to erase, and why.
#[derive(Clone, Debug)]
pub struct Erasure {
    pub doc_keys: Vec<String>,
    /// `customer_request`, `retention`, `store_request`.
    pub reason: String,
    /// Who asked: `hq:<account id>`, `store:<id>`, `system`.
    pub requested_by: String,
    pub now_ms: u64,
}

/// A document that was erased and the stores that held a copy (its origin and its shares).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ErasedDocument {
    pub doc_key: String,
    pub holders: Vec<String>,
}
