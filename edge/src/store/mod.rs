//! Durable state: SQLite on disk, one writer thread, a few reader threads.

pub mod queries;
pub mod reader;
pub mod schema;
pub mod writer;

use std::path::Path;

use rusqlite::Connection;

use crate::error::StartError;

/// After a rolled-back update: when the database was migrated by the newer edge (its schema is
/// newer than this binary's) and the copy taken before that migration exists, the newer
/// database is moved aside (`<db>.schema-<N>.rolled-back-<ms>`, with its WAL: kept, never
/// deleted) and the copy put back, so this edge can start. A slot on trial is blessed as soon
/// as it serves, so the failed update accepted no message the copy lacks. Returns whether it
/// restored. Only called when the boot entries show a rollback: a deliberate downgrade keeps
/// refusing a newer database rather than lose what was written since.
pub fn restore_after_rollback(path: &Path) -> Result<bool, StartError> {
    if !path.exists() {
        return Ok(false);
    }
    let version: u32 = {
        let conn = Connection::open(path)?;
        conn.pragma_query_value(None, "user_version", |row| row.get(0))?
    };
    let backup = schema::backup_path(path, schema::SCHEMA_VERSION);
    if version <= schema::SCHEMA_VERSION || !backup.exists() {
        return Ok(false);
    }
    let stamp = aisle_service::now_ms();
    for suffix in ["", "-wal", "-shm"] {
        let mut from = path.as_os_str().to_owned();
        from.push(suffix);
        let from = std::path::PathBuf::from(from);
        if from.exists() {
            let mut to = path.as_os_str().to_owned();
            to.push(format!(".schema-{version}.rolled-back-{stamp}{suffix}"));
            std::fs::rename(&from, std::path::PathBuf::from(to))
                .map_err(|e| StartError::Other(format!("moving {} aside: {e}", from.display())))?;
        }
    }
    std::fs::copy(&backup, path)
        .map_err(|e| StartError::Other(format!("restoring {}: {e}", backup.display())))?;
    std::fs::File::open(path)
        .and_then(|f| f.sync_all())
        .map_err(|e| StartError::Other(format!("syncing {}: {e}", path.display())))?;
    tracing::warn!(
        restored = %backup.display(),
        newer_schema = version,
        "the update that migrated the database was rolled back: restored the copy taken before it (the newer database is kept beside it)"
    );
    Ok(true)
}

/// Opens (creating if needed) the database, applies migrations and returns the write
/// connection, with a page cache of `page_cache_kib`.
pub fn open(path: &Path, page_cache_kib: u32) -> Result<Connection, StartError> {
    let mut conn = Connection::open(path)?;
    schema::configure(&conn)?;
    schema::migrate(&mut conn)?;
    // Checkpoints run on their own thread (checkpoint.rs), not inside the writer's commits;
    // and the writer gets a larger page cache (it touches every conversation's pages).
    conn.pragma_update(None, "wal_autocheckpoint", 0)?;
    conn.pragma_update(None, "cache_size", -i64::from(page_cache_kib))?;
    Ok(conn)
}
