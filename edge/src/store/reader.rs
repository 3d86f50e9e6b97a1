//! Read-only SQLite connections on their own threads.
//!
//! WAL lets these read while the writer commits. Queries are closures sent to the pool and
//! answered over a oneshot, so an async task never runs SQLite on the runtime's threads.

use std::path::Path;
use std::sync::mpsc::{Receiver, SyncSender, TrySendError, sync_channel};
use std::sync::{Arc, Mutex};

use rusqlite::{Connection, OpenFlags};
use tokio::sync::oneshot;

use crate::error::{ApiError, Code};
use crate::metrics::METRICS;

type Job = Box<dyn FnOnce(&Connection) + Send>;

#[derive(Clone)]
pub struct Reader {
    jobs: SyncSender<Job>,
}

impl Reader {
    /// Opens `threads` read-only connections, each with a page cache of `page_cache_kib`.
    /// `queue` bounds the jobs waiting for a thread.
    pub fn open(
        path: &Path,
        threads: usize,
        queue: usize,
        page_cache_kib: u32,
    ) -> rusqlite::Result<Self> {
        let (jobs, rx) = sync_channel::<Job>(queue);
        let rx = Arc::new(Mutex::new(rx));
        for index in 0..threads {
            let conn = Connection::open_with_flags(
                path,
                OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
            )?;
            conn.pragma_update(None, "busy_timeout", 5000)?;
            conn.pragma_update(None, "cache_size", -i64::from(page_cache_kib))?;
            let rx = Arc::clone(&rx);
            std::thread::Builder::new()
                .name(format!("sqlite-reader-{index}"))
                .spawn(move || reader_loop(conn, rx))
                .map_err(|e| rusqlite::Error::ToSqlConversionFailure(Box::new(e)))?;
        }
        Ok(Self { jobs })
    }

    /// Runs `query` on a reader thread.
    pub async fn read<T, F>(&self, query: F) -> Result<T, ApiError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T, ApiError> + Send + 'static,
    {
        let (reply, answer) = oneshot::channel();
        let job: Job = Box::new(move |conn| {
            let _ = reply.send(query(conn));
        });
        match self.jobs.try_send(job) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => {
                METRICS.limit("max_read_queue");
                return Err(ApiError::new(
                    Code::Overloaded,
                    "the appliance is busy; try again",
                ));
            }
            Err(TrySendError::Disconnected(_)) => {
                return Err(ApiError::new(
                    Code::ShuttingDown,
                    "the appliance is stopping",
                ));
            }
        }
        answer
            .await
            .map_err(|_| ApiError::internal("reader thread dropped a query"))?
    }
}

fn reader_loop(conn: Connection, jobs: Arc<Mutex<Receiver<Job>>>) {
    loop {
        let job = {
            let Ok(rx) = jobs.lock() else { return };
            match rx.recv() {
                Ok(job) => job,
                Err(_) => return,
            }
        };
        job(&conn);
    }
}
