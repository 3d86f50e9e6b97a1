//! The SQLite schema and its versioned migrations.
//!
//! `PRAGMA user_version` holds the number of migrations applied. Each migration runs in its
//! own transaction; a database newer than this binary is refused rather than guessed at.

use std::path::{Path, PathBuf};

use rusqlite::Connection;

use crate::error::StartError;

/// Applied in order; never edit one that has shipped, add a new one.
const MIGRATIONS: &[&str] = &[
    // 1: the chat core.
    r#"
    CREATE TABLE settings (
        key   TEXT PRIMARY KEY,
        value TEXT NOT NULL
    ) WITHOUT ROWID;

    CREATE TABLE staff (
        id            TEXT PRIMARY KEY,
        username      TEXT NOT NULL UNIQUE COLLATE NOCASE,
        name          TEXT NOT NULL,
        password_hash TEXT NOT NULL,
        role          TEXT NOT NULL CHECK (role IN ('staff', 'admin')),
        capacity      INTEGER NOT NULL CHECK (capacity >= 0),
        disabled      INTEGER NOT NULL DEFAULT 0,
        created_at_ms INTEGER NOT NULL
    ) WITHOUT ROWID;

    -- Only the SHA-256 of a session token is stored.
    CREATE TABLE sessions (
        token_hash    BLOB PRIMARY KEY,
        staff_id      TEXT NOT NULL REFERENCES staff(id),
        created_at_ms INTEGER NOT NULL,
        expires_at_ms INTEGER NOT NULL
    ) WITHOUT ROWID;
    CREATE INDEX sessions_staff ON sessions(staff_id);

    CREATE TABLE customers (
        id            TEXT PRIMARY KEY,
        display_name  TEXT NOT NULL DEFAULT '',
        created_at_ms INTEGER NOT NULL
    ) WITHOUT ROWID;

    -- One row per conversation. status/agent/... are an index over the conversation
    -- document's event log (the document is the truth; these columns are rewritten from its
    -- fold in the same transaction as every event).
    CREATE TABLE conversations (
        rowid              INTEGER PRIMARY KEY,
        id                 TEXT NOT NULL UNIQUE,
        customer_id        TEXT NOT NULL,
        status             TEXT NOT NULL,
        agent_id           TEXT,
        previous_agent_id  TEXT,
        snoozed_until_ms   INTEGER,
        state_version      INTEGER NOT NULL DEFAULT 0,
        last_seq           INTEGER NOT NULL DEFAULT 0,
        created_at_ms      INTEGER NOT NULL,
        last_message_at_ms INTEGER,
        first_response_at_ms INTEGER,
        resolved_at_ms     INTEGER,
        doc_bytes          INTEGER NOT NULL DEFAULT 0
    );
    CREATE INDEX conversations_status ON conversations(status, created_at_ms);
    CREATE INDEX conversations_agent ON conversations(agent_id, status);
    CREATE INDEX conversations_customer ON conversations(customer_id, created_at_ms);

    -- Messages as rows, for history pages and resume; the same messages live in the
    -- conversation document (for sync). Both are written in one transaction.
    -- Rows append in commit order (few pages touched per group commit); the small
    -- (conversation, seq) index serves history pages and resume. Clustering the rows by
    -- conversation instead touches one page per active conversation per commit, which under
    -- load is most of what the WAL writes (docs/benchmarks.md).
    CREATE TABLE messages (
        rowid         INTEGER PRIMARY KEY,
        conversation  INTEGER NOT NULL REFERENCES conversations(rowid),
        seq           INTEGER NOT NULL,
        id            TEXT NOT NULL,
        client_msg_id TEXT NOT NULL,
        sender_kind   TEXT NOT NULL,
        sender_id     TEXT,
        body          TEXT NOT NULL,
        sent_at_ms    INTEGER NOT NULL
    );
    CREATE UNIQUE INDEX messages_seq ON messages(conversation, seq);
    -- A retried send finds its first copy here: this is what makes retries idempotent.
    CREATE UNIQUE INDEX messages_client ON messages(conversation, client_msg_id);

    -- Session events, as rows for the HTTP API and audits (the document holds them too).
    CREATE TABLE events (
        conversation INTEGER NOT NULL REFERENCES conversations(rowid),
        id           TEXT NOT NULL,
        body         TEXT NOT NULL,
        at_ms        INTEGER NOT NULL,
        PRIMARY KEY (conversation, id)
    ) WITHOUT ROWID;

    -- The Automerge document of each conversation: a compacted save followed by incremental
    -- chunks, concatenated in `n` order on load. Appended in commit order, like messages.
    CREATE TABLE doc_chunks (
        rowid        INTEGER PRIMARY KEY,
        conversation INTEGER NOT NULL REFERENCES conversations(rowid),
        n            INTEGER NOT NULL,
        bytes        BLOB NOT NULL
    );
    CREATE UNIQUE INDEX doc_chunks_n ON doc_chunks(conversation, n);

    CREATE TABLE read_cursors (
        conversation INTEGER NOT NULL REFERENCES conversations(rowid),
        participant  TEXT NOT NULL,
        seq          INTEGER NOT NULL,
        PRIMARY KEY (conversation, participant)
    ) WITHOUT ROWID;

    CREATE TABLE canned_replies (
        id            TEXT PRIMARY KEY,
        shortcut      TEXT NOT NULL,
        title         TEXT NOT NULL,
        body          TEXT NOT NULL,
        updated_at_ms INTEGER NOT NULL
    ) WITHOUT ROWID;

    CREATE TABLE handoffs (
        code            TEXT PRIMARY KEY,
        customer_id     TEXT NOT NULL,
        conversation_id TEXT NOT NULL,
        expires_at_ms   INTEGER NOT NULL,
        used_at_ms      INTEGER
    ) WITHOUT ROWID;
    "#,
    // 2: sync with the region's hub.
    r#"
    -- The document's heads after each write (the sync manifest is read from here, not from
    -- the documents), and the heads the hub acknowledged holding durably (from its `ack`s).
    -- A conversation is synced when the two are equal.
    ALTER TABLE conversations ADD COLUMN heads BLOB;
    ALTER TABLE conversations ADD COLUMN hub_heads BLOB;
    -- The store that opened the conversation (another store's for a continued conversation).
    ALTER TABLE conversations ADD COLUMN origin_store TEXT;

    -- Automerge sync state per (hub storage, document): only the shared heads, so the next
    -- session sends just what changed. Written in the transaction that stores the document.
    CREATE TABLE sync_states (
        conversation INTEGER NOT NULL REFERENCES conversations(rowid),
        hub_id       TEXT NOT NULL,
        state        BLOB NOT NULL,
        PRIMARY KEY (conversation, hub_id)
    ) WITHOUT ROWID;
    "#,
    // 3: documents the hub writes for this store (its settings: HQ's canned replies).
    r#"
    CREATE TABLE hub_documents (
        key        TEXT PRIMARY KEY,
        bytes      BLOB NOT NULL,
        heads      BLOB NOT NULL,
        hub_id     TEXT,
        sync_state BLOB
    ) WITHOUT ROWID;
    -- 'store': written by the store's admin; 'hq': projected from the settings document (read
    -- only here, changed by HQ at the hub).
    ALTER TABLE canned_replies ADD COLUMN source TEXT NOT NULL DEFAULT 'store';
    -- Names of other stores' staff, from the participant records of documents received by
    -- sync (a conversation continued at another store shows who holds it there).
    CREATE TABLE remote_staff (
        id   TEXT PRIMARY KEY,
        name TEXT NOT NULL
    ) WITHOUT ROWID;
    "#,
    // 4: images sent with messages. The bytes are files in `<data>/attachments/`, written and
    // fsynced before the row; a message may only attach an upload of its own sender.
    r#"
    CREATE TABLE attachments (
        id            TEXT PRIMARY KEY,
        mime          TEXT NOT NULL,
        bytes         INTEGER NOT NULL,
        sha256        BLOB NOT NULL,
        uploader      TEXT NOT NULL,
        created_at_ms INTEGER NOT NULL
    ) WITHOUT ROWID;
    -- The message's attachment (JSON of aisle_sync::Attachment), NULL for text only.
    ALTER TABLE messages ADD COLUMN attachment TEXT;
    "#,
    // 5: intents read by the on-device model, and the guarded bot.
    r#"
    -- A customer message's intent (aisle_models::Intent label), its probability and the model
    -- version; NULL for other senders. A conversation's priority is derived from these.
    ALTER TABLE messages ADD COLUMN intent TEXT;
    ALTER TABLE messages ADD COLUMN intent_confidence REAL;
    ALTER TABLE messages ADD COLUMN intent_model TEXT;
    -- The intent a canned reply answers: suggested to staff for it, sent by the bot when the
    -- store admin allows the bot that intent.
    ALTER TABLE canned_replies ADD COLUMN intent TEXT;
    -- Every answer the bot gave, append-only: what it read, how sure it was, what it sent.
    CREATE TABLE bot_answers (
        message_id    TEXT PRIMARY KEY,
        conversation  TEXT NOT NULL,
        answered_id   TEXT NOT NULL,
        intent        TEXT NOT NULL,
        confidence    REAL NOT NULL,
        model         TEXT NOT NULL,
        canned_reply  TEXT NOT NULL,
        at_ms         INTEGER NOT NULL
    ) WITHOUT ROWID;
    "#,
    // 6: the tamper-evident audit log (crate::audit): append-only, hash-chained, written by the
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
    // 7: erasure (a customer's deletion request, the region's retention period).
    r#"
    -- What is left of an erased conversation: its id, never its content. `hub_told`: the hub
    -- confirmed it holds no copy (until then the uplink tells it at every session).
    CREATE TABLE erased_conversations (
        id           TEXT PRIMARY KEY,
        erased_at_ms INTEGER NOT NULL,
        reason       TEXT NOT NULL,
        requested_by TEXT NOT NULL,
        hub_told     INTEGER NOT NULL DEFAULT 0
    ) WITHOUT ROWID;
    CREATE INDEX erased_untold ON erased_conversations(hub_told) WHERE hub_told = 0;
    CREATE INDEX conversations_resolved ON conversations(resolved_at_ms) WHERE status = 'resolved';
    "#,
    // 8: live settings (aisle-settings). Who routing rules can name: a staff member's team and
    // skills. An account created without its own capacity follows the store's
    // `routing.capacity_per_staff` (its `capacity` is rewritten when the settings in force
    // change); accounts from before keep the capacity they were given.
    r#"
    ALTER TABLE staff ADD COLUMN team TEXT;
    ALTER TABLE staff ADD COLUMN skills TEXT NOT NULL DEFAULT '[]';
    ALTER TABLE staff ADD COLUMN capacity_follows_store INTEGER NOT NULL DEFAULT 0;
    "#,
];

/// Number of migrations this binary knows.
pub const SCHEMA_VERSION: u32 = MIGRATIONS.len() as u32;

/// The copy of the database taken before migrating it from schema `version` (`VACUUM INTO`,
/// next to the database): what an older edge goes back to when the update that migrated the
/// database failed its trial and the box booted its old slot (`store::open_after_rollback`).
pub fn backup_path(db: &Path, version: u32) -> PathBuf {
    let mut name = db.as_os_str().to_owned();
    name.push(format!(".schema-{version}.bak"));
    PathBuf::from(name)
}

pub fn migrate(conn: &mut Connection) -> Result<(), StartError> {
    let current: u32 = conn.pragma_query_value(None, "user_version", |row| row.get(0))?;
    if current > 0 && current < SCHEMA_VERSION {
        // A database written by an older edge is about to change shape: keep a copy first, so
        // a rolled-back update leaves the old edge a database it can open.
        if let Some(db) = conn.path().filter(|p| !p.is_empty()).map(PathBuf::from) {
            let backup = backup_path(&db, current);
            let _ = std::fs::remove_file(&backup);
            conn.execute("VACUUM INTO ?1", [backup.to_string_lossy()])?;
            tracing::info!(backup = %backup.display(), from = current, to = SCHEMA_VERSION, "copied the database before migrating it");
        }
    }
    if current > SCHEMA_VERSION {
        return Err(StartError::Schema(format!(
            "database has schema version {current}, this aisle-edge knows up to {SCHEMA_VERSION}; \
             refusing to open it (upgrade aisle-edge)"
        )));
    }
    for (index, sql) in MIGRATIONS.iter().enumerate().skip(current as usize) {
        let version = index as u32 + 1;
        let tx = conn.transaction()?;
        tx.execute_batch(sql)?;
        tx.pragma_update(None, "user_version", version)?;
        tx.commit()?;
        tracing::info!(version, "applied schema migration");
    }
    Ok(())
}

/// Pragmas for every connection: WAL so readers never block the writer, FULL sync so a
/// committed transaction (and so an acknowledged message) survives power loss.
pub fn configure(conn: &Connection) -> rusqlite::Result<()> {
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", "FULL")?;
    conn.pragma_update(None, "foreign_keys", "ON")?;
    // Deleted rows are overwritten with zeros, so an erased conversation leaves the file, not
    // just the b-tree (deletes are rare: erasure, sessions, compaction's chunks).
    conn.pragma_update(None, "secure_delete", "ON")?;
    conn.pragma_update(None, "busy_timeout", 5000)?;
    conn.pragma_update(None, "cache_size", -16_000)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn migrates_once_and_refuses_newer() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.db");
        let mut conn = Connection::open(&path).unwrap();
        configure(&conn).unwrap();
        migrate(&mut conn).unwrap();
        migrate(&mut conn).unwrap();
        let version: u32 = conn
            .pragma_query_value(None, "user_version", |r| r.get(0))
            .unwrap();
        assert_eq!(version, SCHEMA_VERSION);
        conn.pragma_update(None, "user_version", SCHEMA_VERSION + 1)
            .unwrap();
        assert!(matches!(migrate(&mut conn), Err(StartError::Schema(_))));
    }

    #[test]
    fn an_older_database_is_copied_before_it_is_migrated() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.db");
        let mut conn = Connection::open(&path).unwrap();
        configure(&conn).unwrap();
        // A database as an older edge (schema 3) left it.
        for sql in &MIGRATIONS[..3] {
            conn.execute_batch(sql).unwrap();
        }
        conn.pragma_update(None, "user_version", 3).unwrap();
        migrate(&mut conn).unwrap();
        let backup = backup_path(&path, 3);
        let copy = Connection::open(&backup).unwrap();
        let version: u32 = copy
            .pragma_query_value(None, "user_version", |r| r.get(0))
            .unwrap();
        assert_eq!(version, 3, "the copy is the database before the migration");
        // A fresh database has nothing to keep.
        let fresh = dir.path().join("fresh.db");
        let mut conn = Connection::open(&fresh).unwrap();
        migrate(&mut conn).unwrap();
        assert!(!backup_path(&fresh, 0).exists());
    }
}
