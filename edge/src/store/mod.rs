//! Durable state: SQLite on disk, one writer thread, a few reader threads.

pub mod queries;
pub mod reader;
pub mod schema;
pub mod writer;

use std::path::Path;

use rusqlite::Connection;

use crate::error::StartError;

/// Opens (creating if needed) the database, applies migrations and returns the write
/// connection.
pub fn open(path: &Path) -> Result<Connection, StartError> {
    let mut conn = Connection::open(path)?;
    schema::configure(&conn)?;
    schema::migrate(&mut conn)?;
    // Checkpoints run on their own thread (checkpoint.rs), not inside the writer's commits;
    // and the writer gets a larger page cache (it touches every conversation's pages).
    conn.pragma_update(None, "wal_autocheckpoint", 0)?;
    conn.pragma_update(None, "cache_size", -64_000)?;
    Ok(conn)
}
