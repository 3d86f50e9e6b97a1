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
    // 2: conversations continued at another store of the region.
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
];

pub fn configure(conn: &Connection) -> Result<(), StoreError> {
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", "FULL")?;
    conn.pragma_update(None, "foreign_keys", "ON")?;
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
