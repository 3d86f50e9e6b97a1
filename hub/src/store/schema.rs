//! The hub's SQL schema and its migrations (`PRAGMA user_version`).

use rusqlite::Connection;

use super::StoreError;

/// Each entry migrates from version `index` to `index + 1`.
const MIGRATIONS: &[&str] = &[
    // 1: accounts, stores, documents.
    r#"
CREATE TABLE accounts (
    id            TEXT PRIMARY KEY,
    username      TEXT NOT NULL UNIQUE,
    password_hash TEXT NOT NULL,
    role          TEXT NOT NULL CHECK (role IN ('hq_viewer', 'hq_admin')),
    created_at_ms INTEGER NOT NULL
);
CREATE TABLE sessions (
    token_hash    BLOB PRIMARY KEY,
    account_id    TEXT NOT NULL REFERENCES accounts(id),
    expires_at_ms INTEGER NOT NULL
);
CREATE TABLE stores (
    id                  TEXT PRIMARY KEY,
    name                TEXT NOT NULL,
    region              TEXT NOT NULL,
    created_at_ms       INTEGER NOT NULL,
    token_hash          BLOB NOT NULL,
    token_expires_at_ms INTEGER NOT NULL,
    token_used          INTEGER NOT NULL DEFAULT 0,
    credential_hash     BLOB,
    revoked             INTEGER NOT NULL DEFAULT 0,
    enrolled_at_ms      INTEGER,
    last_sync_at_ms     INTEGER
);
CREATE TABLE documents (
    key           TEXT PRIMARY KEY,
    origin_store  TEXT NOT NULL REFERENCES stores(id),
    heads         BLOB NOT NULL,
    created_at_ms INTEGER NOT NULL,
    updated_at_ms INTEGER NOT NULL
);
CREATE INDEX documents_by_origin ON documents(origin_store);
CREATE TABLE doc_chunks (
    doc_key TEXT NOT NULL REFERENCES documents(key),
    seq     INTEGER NOT NULL,
    bytes   BLOB NOT NULL,
    PRIMARY KEY (doc_key, seq)
) WITHOUT ROWID;
CREATE TABLE sync_states (
    store_id TEXT NOT NULL REFERENCES stores(id),
    doc_key  TEXT NOT NULL,
    state    BLOB NOT NULL,
    PRIMARY KEY (store_id, doc_key)
) WITHOUT ROWID;
"#,
    // 2: the HQ projection (hub/src/projection.rs). An index of the documents, rewritten in the
    // transaction that stores each synced chunk; the documents stay the truth.
    r#"
CREATE TABLE conversations (
    id                           TEXT PRIMARY KEY,
    store_id                     TEXT NOT NULL REFERENCES stores(id),
    customer_id                  TEXT NOT NULL,
    status                       TEXT NOT NULL,
    agent_id                     TEXT,
    agent_name                   TEXT,
    created_at_ms                INTEGER NOT NULL,
    first_customer_message_at_ms INTEGER,
    -- The first staff message at or after the first customer message.
    first_response_at_ms         INTEGER,
    -- Set while the conversation is resolved (the resolve event's HLC time), NULL otherwise.
    resolved_at_ms               INTEGER,
    last_message_at_ms           INTEGER,
    message_count                INTEGER NOT NULL DEFAULT 0,
    -- NULL until the on-device model writes intents into the document (a later issue).
    intent                       TEXT
);
CREATE INDEX conversations_by_created ON conversations(created_at_ms, id);
CREATE INDEX conversations_by_store ON conversations(store_id, created_at_ms, id);
CREATE INDEX conversations_by_agent ON conversations(agent_id, created_at_ms, id);
CREATE TABLE participants (
    conversation   TEXT NOT NULL REFERENCES conversations(id),
    participant    TEXT NOT NULL,
    kind           TEXT NOT NULL,
    participant_id TEXT,
    display_name   TEXT NOT NULL,
    joined_at_ms   INTEGER NOT NULL,
    PRIMARY KEY (conversation, participant)
) WITHOUT ROWID;
-- `seq` is the explicit rowid the full-text index points at (an implicit rowid may be renumbered
-- by VACUUM); `id` is unique so that projecting a record twice inserts it once.
CREATE TABLE messages (
    seq           INTEGER PRIMARY KEY,
    id            TEXT NOT NULL UNIQUE,
    conversation  TEXT NOT NULL REFERENCES conversations(id),
    store_id      TEXT NOT NULL,
    sender_kind   TEXT NOT NULL,
    sender_id     TEXT,
    sender_name   TEXT,
    body          TEXT NOT NULL,
    sent_at_ms    INTEGER NOT NULL,
    intent        TEXT
);
CREATE INDEX messages_by_conversation ON messages(conversation, sent_at_ms, id);
CREATE INDEX messages_by_sender ON messages(conversation, sender_kind, sent_at_ms);
CREATE INDEX messages_by_time ON messages(sent_at_ms);
-- With the rowid, (store_id, seq): a store's newest messages first (search).
CREATE INDEX messages_by_store ON messages(store_id);
-- Trigram tokens match any substring of 3 or more characters, so Chinese (no spaces between
-- words) and English are searched the same way. Shorter queries are a LIKE scan (hq.rs).
CREATE VIRTUAL TABLE messages_fts USING fts5(
    body, content = 'messages', content_rowid = 'seq', tokenize = 'trigram'
);
-- Messages are immutable: rows are inserted (or ignored) and never updated. New rows are
-- indexed by the writer with one INSERT … SELECT as the last statement of each transaction
-- (sqlite.rs, `index_new_messages`), not by a trigger: FTS5 flushes its pending terms to a new
-- segment at every statement savepoint, so a per-row trigger made one tiny segment per message
-- and spent the writer's time merging them.
CREATE TRIGGER messages_fts_delete AFTER DELETE ON messages BEGIN
    INSERT INTO messages_fts (messages_fts, rowid, body) VALUES ('delete', old.seq, old.body);
END;
"#,
    // 3: conversations continued at another store of the region.
    r#"
-- A document another store may sync too (besides its origin store): granted when a customer's
-- hand-off code from the origin is redeemed there.
CREATE TABLE shares (
    doc_key       TEXT NOT NULL REFERENCES documents(key),
    store_id      TEXT NOT NULL REFERENCES stores(id),
    granted_at_ms INTEGER NOT NULL,
    PRIMARY KEY (doc_key, store_id)
) WITHOUT ROWID;
CREATE INDEX shares_by_store ON shares(store_id);
-- Hand-off codes registered by the store that issued them (hashed: the code is the secret).
CREATE TABLE handoffs (
    code_hash     BLOB PRIMARY KEY,
    doc_key       TEXT NOT NULL,
    store_id      TEXT NOT NULL REFERENCES stores(id),
    expires_at_ms INTEGER NOT NULL,
    used_at_ms    INTEGER,
    used_by       TEXT
) WITHOUT ROWID;
"#,
    // 4: images sent with messages (the bytes stay at the store that received them).
    r#"
-- JSON of aisle_sync::Attachment (id, mime, bytes), NULL for text only.
ALTER TABLE messages ADD COLUMN attachment TEXT;
"#,
    // 5: the tamper-evident audit log (crate::audit): append-only, hash-chained, written by the
    // writer in the transaction of the action each entry records.
    r#"
CREATE TABLE audit_log (
    seq       INTEGER PRIMARY KEY,
    at_ms     INTEGER NOT NULL,
    actor     TEXT NOT NULL,
    action    TEXT NOT NULL,
    target    TEXT NOT NULL,
    details   TEXT NOT NULL,
    prev_hash TEXT NOT NULL,
    hash      TEXT NOT NULL
);
"#,
    // 6: erasure (a customer's deletion request, the region's retention period).
    r#"
-- What is left of an erased document: its key, never its content. A store that still holds a
-- copy is told to erase it instead of syncing it back.
CREATE TABLE erased_documents (
    doc_key      TEXT PRIMARY KEY,
    erased_at_ms INTEGER NOT NULL,
    reason       TEXT NOT NULL,
    requested_by TEXT NOT NULL
) WITHOUT ROWID;
-- Deleting a message removes its terms from the index's segments at once (a plain FTS5 delete
-- only marks them, and the text stays on disk until segments merge).
INSERT INTO messages_fts (messages_fts, rank) VALUES ('secure-delete', 1);
"#,
    // 7: a version per document, bumped by every write: a session (of this hub or of another
    // replica on the same database) knows whether its copy holds everything stored, and a
    // compaction replaces chunks only when it does (the compare-and-swap of HubStore::save_synced).
    r#"
ALTER TABLE documents ADD COLUMN version INTEGER NOT NULL DEFAULT 0;
"#,
    // 8: HQ's settings layer for the whole region (crate::live_settings), one row: it is also
    // in every store's settings document, and kept here for the stores registered later.
    r#"
CREATE TABLE region_settings (
    id            INTEGER PRIMARY KEY CHECK (id = 1),
    version       INTEGER NOT NULL,
    -- JSON of aisle_sync::HqLayer.
    layer         TEXT NOT NULL,
    updated_at_ms INTEGER NOT NULL
);
"#,
];

pub fn configure(conn: &Connection) -> Result<(), StoreError> {
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", "FULL")?;
    conn.pragma_update(None, "foreign_keys", "ON")?;
    // Deleted rows are overwritten with zeros: erased conversations leave the file, not just
    // the b-tree (deletes are rare; the extra writes cost nothing measurable).
    conn.pragma_update(None, "secure_delete", "ON")?;
    conn.busy_timeout(std::time::Duration::from_secs(5))?;
    Ok(())
}

pub fn migrate(conn: &mut Connection) -> Result<(), StoreError> {
    let version: u32 = conn.pragma_query_value(None, "user_version", |row| row.get(0))?;
    if version as usize > MIGRATIONS.len() {
        return Err(StoreError::Schema(format!(
            "the database is at schema version {version}, newer than this aisle-hub ({})",
            MIGRATIONS.len()
        )));
    }
    for (index, sql) in MIGRATIONS.iter().enumerate().skip(version as usize) {
        let tx = conn.transaction()?;
        tx.execute_batch(sql)?;
        tx.pragma_update(None, "user_version", (index + 1) as u32)?;
        tx.commit()?;
    }
    Ok(())
}
