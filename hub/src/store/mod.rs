//! Hub storage behind one small trait ([`HubStore`]), so that a PostgreSQL back end can follow;
//! [`sqlite::SqliteStore`] is the default and what the tests run.
//!
//! Every method is async and never blocks the runtime: the SQLite implementation runs writes on
//! one writer thread and reads on reader threads.

pub mod schema;
pub mod sqlite;

use futures_util::future::BoxFuture;
use serde::Serialize;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("sqlite: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("schema: {0}")]
    Schema(String),
    #[error("the storage thread stopped")]
    Stopped,
}

pub type StoreResult<T> = Result<T, StoreError>;

/// One manifest entry as stored: the document key and its heads (32 bytes each, concatenated).
pub type ManifestRow = (String, Vec<u8>);
/// A stored document: its origin store and its chunks concatenated.
pub type StoredDocument = (String, Vec<u8>);

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
    /// Appends the chunk, updates the heads, then the sync state, in one transaction; `true` if
    /// the document was new.
    fn save_synced(&self, write: SyncWrite) -> BoxFuture<'_, StoreResult<bool>>;
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
}
