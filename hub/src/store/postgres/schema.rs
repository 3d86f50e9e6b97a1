//! The PostgreSQL schema: the same tables, with the same meaning, as the SQLite schema
//! (`store/schema.rs`), as versioned migrations recorded in `schema_migrations`.
//!
//! Several replicas may start at once: [`migrate`] holds a session advisory lock while it reads
//! the version and applies what is missing, so exactly one of them migrates and the others find
//! the schema current. Milliseconds and other u64 values are BIGINT, bytes BYTEA, flags
//! BOOLEAN. Identifiers that the queries order by are `COLLATE "C"` (byte order, as SQLite's
//! BINARY), whatever the database's default collation.

use tokio_postgres::Client;

use super::super::{StoreError, StoreResult};

/// The session advisory lock held while migrating (any fixed number; the audit chain's lock is
/// another one).
const MIGRATION_LOCK: i64 = 0x6169_736c_655f_6d69; // "aisle_mi"

/// Each entry migrates from version `index` to `index + 1`.
const MIGRATIONS: &[&str] = &[
    // 1: accounts, stores, documents (and SQLite's 7: the version per document).
    r#"
CREATE TABLE accounts (
    id            TEXT COLLATE "C" PRIMARY KEY,
    username      TEXT NOT NULL UNIQUE,
    password_hash TEXT NOT NULL,
    role          TEXT NOT NULL CHECK (role IN ('hq_viewer', 'hq_admin')),
    created_at_ms BIGINT NOT NULL
);
CREATE TABLE sessions (
    token_hash    BYTEA PRIMARY KEY,
    account_id    TEXT COLLATE "C" NOT NULL REFERENCES accounts(id),
    expires_at_ms BIGINT NOT NULL
);
CREATE TABLE stores (
    id                  TEXT COLLATE "C" PRIMARY KEY,
    name                TEXT NOT NULL,
    region              TEXT NOT NULL,
    created_at_ms       BIGINT NOT NULL,
    token_hash          BYTEA NOT NULL,
    token_expires_at_ms BIGINT NOT NULL,
    token_used          BOOLEAN NOT NULL DEFAULT false,
    credential_hash     BYTEA,
    revoked             BOOLEAN NOT NULL DEFAULT false,
    enrolled_at_ms      BIGINT,
    last_sync_at_ms     BIGINT
);
-- `version` is bumped by every write of the document: the compare-and-swap of save_synced.
CREATE TABLE documents (
    key           TEXT COLLATE "C" PRIMARY KEY,
    origin_store  TEXT COLLATE "C" NOT NULL REFERENCES stores(id),
    heads         BYTEA NOT NULL,
    created_at_ms BIGINT NOT NULL,
    updated_at_ms BIGINT NOT NULL,
    version       BIGINT NOT NULL DEFAULT 0
);
CREATE INDEX documents_by_origin ON documents(origin_store);
CREATE TABLE doc_chunks (
    doc_key TEXT COLLATE "C" NOT NULL REFERENCES documents(key),
    seq     BIGINT NOT NULL,
    bytes   BYTEA NOT NULL,
    PRIMARY KEY (doc_key, seq)
);
CREATE TABLE sync_states (
    store_id TEXT COLLATE "C" NOT NULL REFERENCES stores(id),
    doc_key  TEXT COLLATE "C" NOT NULL,
    state    BYTEA NOT NULL,
    PRIMARY KEY (store_id, doc_key)
);
CREATE INDEX sync_states_by_doc ON sync_states(doc_key);
"#,
    // 2: the HQ projection (hub/src/projection.rs), written in the transaction of each chunk.
    r#"
CREATE EXTENSION IF NOT EXISTS pg_trgm;
CREATE TABLE conversations (
    id                           TEXT COLLATE "C" PRIMARY KEY,
    store_id                     TEXT COLLATE "C" NOT NULL REFERENCES stores(id),
    customer_id                  TEXT COLLATE "C" NOT NULL,
    status                       TEXT NOT NULL,
    agent_id                     TEXT COLLATE "C",
    agent_name                   TEXT,
    created_at_ms                BIGINT NOT NULL,
    first_customer_message_at_ms BIGINT,
    -- The first staff message at or after the first customer message.
    first_response_at_ms         BIGINT,
    -- Set while the conversation is resolved (the resolve event's HLC time), NULL otherwise.
    resolved_at_ms               BIGINT,
    last_message_at_ms           BIGINT,
    message_count                BIGINT NOT NULL DEFAULT 0,
    intent                       TEXT
);
CREATE INDEX conversations_by_created ON conversations(created_at_ms, id);
CREATE INDEX conversations_by_store ON conversations(store_id, created_at_ms, id);
CREATE INDEX conversations_by_agent ON conversations(agent_id, created_at_ms, id);
CREATE INDEX conversations_by_customer ON conversations(customer_id);
CREATE INDEX conversations_by_resolved ON conversations(resolved_at_ms) WHERE status = 'resolved';
CREATE TABLE participants (
    conversation   TEXT COLLATE "C" NOT NULL REFERENCES conversations(id),
    participant    TEXT COLLATE "C" NOT NULL,
    kind           TEXT NOT NULL,
    participant_id TEXT,
    display_name   TEXT NOT NULL,
    joined_at_ms   BIGINT NOT NULL,
    PRIMARY KEY (conversation, participant)
);
-- `seq` numbers messages in insertion order (search shows the newest received first); `id` is
-- unique so that projecting a record twice inserts it once. `attachment` is JSON of
-- aisle_sync::Attachment (SQLite's migration 4).
CREATE TABLE messages (
    seq           BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    id            TEXT COLLATE "C" NOT NULL UNIQUE,
    conversation  TEXT COLLATE "C" NOT NULL REFERENCES conversations(id),
    store_id      TEXT COLLATE "C" NOT NULL,
    sender_kind   TEXT NOT NULL,
    sender_id     TEXT,
    sender_name   TEXT,
    body          TEXT NOT NULL,
    sent_at_ms    BIGINT NOT NULL,
    intent        TEXT,
    attachment    TEXT
);
CREATE INDEX messages_by_conversation ON messages(conversation, sent_at_ms, id);
CREATE INDEX messages_by_sender ON messages(conversation, sender_kind, sent_at_ms);
CREATE INDEX messages_by_time ON messages(sent_at_ms);
CREATE INDEX messages_by_store ON messages(store_id, seq);
-- Trigrams match any substring of 3 or more characters (ILIKE '%term%'), so Chinese (no spaces
-- between words) and English are searched the same way; shorter terms are a scan (hq.rs). In a
-- C.UTF-8 (or any UTF-8 locale) database pg_trgm takes CJK characters as word characters.
CREATE INDEX messages_body_trgm ON messages USING gin (body gin_trgm_ops);
"#,
    // 3: conversations continued at another store of the region.
    r#"
CREATE TABLE shares (
    doc_key       TEXT COLLATE "C" NOT NULL REFERENCES documents(key),
    store_id      TEXT COLLATE "C" NOT NULL REFERENCES stores(id),
    granted_at_ms BIGINT NOT NULL,
    PRIMARY KEY (doc_key, store_id)
);
CREATE INDEX shares_by_store ON shares(store_id);
CREATE TABLE handoffs (
    code_hash     BYTEA PRIMARY KEY,
    doc_key       TEXT COLLATE "C" NOT NULL,
    store_id      TEXT COLLATE "C" NOT NULL REFERENCES stores(id),
    expires_at_ms BIGINT NOT NULL,
    used_at_ms    BIGINT,
    used_by       TEXT COLLATE "C"
);
CREATE INDEX handoffs_by_doc ON handoffs(doc_key);
"#,
    // 4: the tamper-evident audit log (crate::audit), appended under an advisory lock.
    r#"
CREATE TABLE audit_log (
    seq       BIGINT PRIMARY KEY,
    at_ms     BIGINT NOT NULL,
    actor     TEXT NOT NULL,
    action    TEXT NOT NULL,
    target    TEXT NOT NULL,
    details   TEXT NOT NULL,
    prev_hash TEXT NOT NULL,
    hash      TEXT NOT NULL
);
"#,
    // 5: erasure tombstones, and the storage identity every replica shares.
    r#"
CREATE TABLE erased_documents (
    doc_key      TEXT COLLATE "C" PRIMARY KEY,
    erased_at_ms BIGINT NOT NULL,
    reason       TEXT NOT NULL,
    requested_by TEXT NOT NULL
);
CREATE TABLE hub_meta (
    name  TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
"#,
    // 6: HQ's settings layer for the whole region (SQLite's 8), one row.
    r#"
CREATE TABLE region_settings (
    id            INTEGER PRIMARY KEY CHECK (id = 1),
    version       BIGINT NOT NULL,
    layer         TEXT NOT NULL,
    updated_at_ms BIGINT NOT NULL
);
"#,
];

/// Checks the encoding, then applies the missing migrations under a session advisory lock.
pub async fn migrate(client: &mut Client) -> StoreResult<()> {
    let encoding: String = client
        .query_one("SELECT pg_catalog.pg_encoding_to_char(encoding) FROM pg_catalog.pg_database WHERE datname = current_database()", &[])
        .await?
        .get(0);
    if encoding != "UTF8" {
        return Err(StoreError::Schema(format!(
            "the database's encoding is {encoding}; the hub needs UTF8"
        )));
    }
    client
        .execute("SELECT pg_advisory_lock($1)", &[&MIGRATION_LOCK])
        .await?;
    let result = apply(client).await;
    let unlocked = client
        .execute("SELECT pg_advisory_unlock($1)", &[&MIGRATION_LOCK])
        .await;
    result?;
    unlocked?;
    Ok(())
}

async fn apply(client: &mut Client) -> StoreResult<()> {
    client
        .batch_execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations (
                 version       BIGINT PRIMARY KEY,
                 applied_at_ms BIGINT NOT NULL
             )",
        )
        .await?;
    let version: i64 = client
        .query_one(
            "SELECT coalesce(max(version), 0) FROM schema_migrations",
            &[],
        )
        .await?
        .get(0);
    if version as usize > MIGRATIONS.len() {
        return Err(StoreError::Schema(format!(
            "the database is at schema version {version}, newer than this aisle-hub ({})",
            MIGRATIONS.len()
        )));
    }
    for (index, sql) in MIGRATIONS.iter().enumerate().skip(version as usize) {
        let tx = client.transaction().await?;
        tx.batch_execute(sql).await?;
        tx.execute(
            "INSERT INTO schema_migrations (version, applied_at_ms) VALUES ($1, $2)",
            &[&((index + 1) as i64), &(crate::now_ms() as i64)],
        )
        .await?;
        tx.commit().await?;
    }
    Ok(())
}
