//! WAL checkpoints on their own thread.
//!
//! SQLite's automatic checkpoint runs inside the committing connection: on the appliance and
//! the hub that is the single writer thread, which then copies the WAL into the database while
//! every sender waits for its answer (~12 % of the edge writer's time under load, ~10 % of the
//! hub writer's, docs/benchmarks.md). The writer turns automatic checkpoints off
//! (`wal_autocheckpoint = 0`) and this thread runs `PASSIVE` checkpoints instead: they copy what
//! no reader still needs, concurrently with new commits, and never block them.

use std::path::Path;
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::time::Duration;

use rusqlite::Connection;

/// How often the WAL is copied back into the database file.
const CHECKPOINT_INTERVAL: Duration = Duration::from_millis(500);

/// Starts the checkpoint thread; it stops when `stop` is dropped or sent to.
pub fn start(path: &Path, stop: Receiver<()>) -> rusqlite::Result<std::thread::JoinHandle<()>> {
    let conn = Connection::open(path)?;
    conn.pragma_update(None, "busy_timeout", 5000)?;
    std::thread::Builder::new()
        .name("sqlite-checkpoint".into())
        .spawn(move || run(conn, stop))
        .map_err(|e| rusqlite::Error::ToSqlConversionFailure(Box::new(e)))
}

fn run(conn: Connection, stop: Receiver<()>) {
    // Until told to stop (or the server is gone), checkpoint every interval.
    while let Err(RecvTimeoutError::Timeout) = stop.recv_timeout(CHECKPOINT_INTERVAL) {
        if let Err(err) = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(())) {
            tracing::warn!(error = %err, "WAL checkpoint");
        }
    }
    // A last full checkpoint so the next start opens a short WAL.
    if let Err(err) = conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(())) {
        tracing::warn!(error = %err, "final WAL checkpoint");
    }
}
