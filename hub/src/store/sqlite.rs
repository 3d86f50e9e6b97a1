//! The SQLite implementation of [`HubStore`]: WAL, `synchronous=FULL`, one writer thread that
//! runs every write (in order, each in its own transaction), and reader threads for queries.
//! Callers await a oneshot answer, so the async runtime never blocks on SQLite.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex, mpsc};

use futures_util::FutureExt;
use futures_util::future::BoxFuture;
use rusqlite::{Connection, OpenFlags, OptionalExtension, params};
use tokio::sync::oneshot;

use super::{
    Account, ConversationDetail, ConversationFilter, ConversationSummary, DurationStats,
    EnrollOutcome, ErasedDocument, Erasure, Figures, FiguresQuery, GroupFigures, HubStore,
    ManifestRow, NewHandoff, NewStore, ParticipantView, Redeemed, RegionSettings, SearchHit,
    SearchMethod, SearchQuery, Sender, StoreError, StoreRecord, StoreResult, StoredDocument,
    SyncSaved, SyncWrite, TranscriptMessage, schema,
};
use crate::audit::{self, Anchor, AuditLog, Entry, Record};
use crate::projection::Projection;

type Job = Box<dyn FnOnce(&mut Connection) + Send>;

/// A pool of threads each owning one connection, fed from one queue.
struct Threads {
    jobs: Mutex<Option<mpsc::Sender<Job>>>,
}

impl Threads {
    fn start(name: &str, connections: Vec<Connection>) -> std::io::Result<Self> {
        let (tx, rx) = mpsc::channel::<Job>();
        let rx = Arc::new(Mutex::new(rx));
        for (i, mut conn) in connections.into_iter().enumerate() {
            let rx = Arc::clone(&rx);
            std::thread::Builder::new()
                .name(format!("{name}-{i}"))
                .spawn(move || {
                    loop {
                        let job = match rx.lock() {
                            Ok(rx) => rx.recv(),
                            Err(_) => return,
                        };
                        match job {
                            Ok(job) => job(&mut conn),
                            Err(_) => return,
                        }
                    }
                })?;
        }
        Ok(Threads {
            jobs: Mutex::new(Some(tx)),
        })
    }

    fn run<T, F>(&self, f: F) -> BoxFuture<'static, StoreResult<T>>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> StoreResult<T> + Send + 'static,
    {
        let (tx, rx) = oneshot::channel();
        let job: Job = Box::new(move |conn| {
            let _ = tx.send(f(conn));
        });
        let sent = self
            .jobs
            .lock()
            .ok()
            .and_then(|jobs| jobs.as_ref().map(|jobs| jobs.send(job).is_ok()))
            .unwrap_or(false);
        async move {
            if !sent {
                return Err(StoreError::Stopped);
            }
            rx.await.map_err(|_| StoreError::Stopped)?
        }
        .boxed()
    }

    fn stop(&self) {
        if let Ok(mut jobs) = self.jobs.lock() {
            jobs.take();
        }
    }
}

/// A `handoffs` row: document, issuing store, expiry, when used and by whom.
type HandoffRow = (String, String, i64, Option<i64>, Option<String>);

/// Most sync rounds committed in one transaction.
const MAX_SYNC_BATCH: usize = 256;

/// What the writer thread does: a job in its own transaction, or a synced round, which is
/// group-committed with the other rounds waiting (one fsync for many stores' rounds).
enum Work {
    Job(Job),
    Synced(Box<SyncWrite>, oneshot::Sender<StoreResult<SyncSaved>>),
}

/// The one writer thread.
struct Writer {
    work: Mutex<Option<mpsc::Sender<Work>>>,
}

impl Writer {
    fn start(mut conn: Connection) -> std::io::Result<Self> {
        let (tx, rx) = mpsc::channel::<Work>();
        std::thread::Builder::new()
            .name("hub-writer".into())
            .spawn(move || {
                let mut deferred = Vec::new();
                while let Ok(work) = rx.recv() {
                    match work {
                        Work::Job(job) => {
                            job(&mut conn);
                            crate::audit::anchor_after_commit(&conn);
                        }
                        Work::Synced(write, reply) => {
                            let mut batch = vec![(write, reply)];
                            while batch.len() < MAX_SYNC_BATCH {
                                match rx.try_recv() {
                                    Ok(Work::Synced(write, reply)) => batch.push((write, reply)),
                                    Ok(Work::Job(job)) => deferred.push(job),
                                    Err(_) => break,
                                }
                            }
                            commit_synced(&mut conn, batch);
                            for job in deferred.drain(..) {
                                job(&mut conn);
                                crate::audit::anchor_after_commit(&conn);
                            }
                        }
                    }
                }
                // The audit head in the logs too (a second copy of the anchor).
                if let Ok(Some((seq, hash))) = crate::audit::head(&conn) {
                    tracing::info!(seq, hash = %hash, "audit log head");
                }
            })?;
        Ok(Writer {
            work: Mutex::new(Some(tx)),
        })
    }

    fn send(&self, work: Work) -> bool {
        self.work
            .lock()
            .ok()
            .and_then(|tx| tx.as_ref().map(|tx| tx.send(work).is_ok()))
            .unwrap_or(false)
    }

    fn run<T, F>(&self, f: F) -> BoxFuture<'static, StoreResult<T>>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> StoreResult<T> + Send + 'static,
    {
        let (tx, rx) = oneshot::channel();
        let sent = self.send(Work::Job(Box::new(move |conn| {
            let _ = tx.send(f(conn));
        })));
        async move {
            if !sent {
                return Err(StoreError::Stopped);
            }
            rx.await.map_err(|_| StoreError::Stopped)?
        }
        .boxed()
    }

    fn synced(&self, write: SyncWrite) -> BoxFuture<'static, StoreResult<SyncSaved>> {
        let (tx, rx) = oneshot::channel();
        let sent = self.send(Work::Synced(Box::new(write), tx));
        async move {
            if !sent {
                return Err(StoreError::Stopped);
            }
            rx.await.map_err(|_| StoreError::Stopped)?
        }
        .boxed()
    }

    fn stop(&self) {
        if let Ok(mut work) = self.work.lock() {
            work.take();
        }
    }
}

/// Commits a batch of synced rounds in one transaction and only then answers each (an answer
/// means "on disk"). If the transaction fails, every round of the batch fails (their sessions
/// drop their in-memory copies and the stores retry).
fn commit_synced(
    conn: &mut Connection,
    batch: Vec<(Box<SyncWrite>, oneshot::Sender<StoreResult<SyncSaved>>)>,
) {
    let result = (|| -> StoreResult<Vec<SyncSaved>> {
        let tx = conn.transaction()?;
        let indexed = last_message_seq(&tx)?;
        let mut created = Vec::with_capacity(batch.len());
        let mut last_sync: HashMap<&str, u64> = HashMap::new();
        for (write, _) in &batch {
            created.push(write_synced(&tx, write)?);
            let at = last_sync.entry(write.store_id.as_str()).or_default();
            *at = (*at).max(write.now_ms);
        }
        // Once per store and batch, not per round (a page write each).
        for (store_id, at) in last_sync {
            tx.prepare_cached("UPDATE stores SET last_sync_at_ms = ?2 WHERE id = ?1")?
                .execute(params![store_id, at as i64])?;
        }
        index_new_messages(&tx, indexed)?;
        tx.commit()?;
        Ok(created)
    })();
    match result {
        Ok(created) => {
            for ((_, reply), created) in batch.into_iter().zip(created) {
                let _ = reply.send(Ok(created));
            }
        }
        Err(err) => {
            tracing::error!(error = %err, rounds = batch.len(), "a batch of synced rounds failed");
            let message = err.to_string();
            for (_, reply) in batch {
                let _ = reply.send(Err(StoreError::Batch(message.clone())));
            }
        }
    }
}

/// The newest projected message (messages are numbered in insertion order).
fn last_message_seq(tx: &rusqlite::Transaction<'_>) -> rusqlite::Result<i64> {
    tx.prepare_cached("SELECT coalesce(max(seq), 0) FROM messages")?
        .query_row([], |r| r.get(0))
}

/// Adds the messages inserted after `after_seq` to the full-text index, in one statement, the
/// transaction's last (see the schema: no statement savepoint follows it, so FTS5 writes one
/// segment per transaction).
fn index_new_messages(tx: &rusqlite::Transaction<'_>, after_seq: i64) -> rusqlite::Result<()> {
    tx.prepare_cached(
        "INSERT INTO messages_fts (rowid, body) SELECT seq, body FROM messages WHERE seq > ?1",
    )?
    .execute([after_seq])?;
    Ok(())
}

/// One synced round: the document row and chunk, the sync state, the HQ projection.
fn write_synced(tx: &rusqlite::Transaction<'_>, w: &SyncWrite) -> StoreResult<SyncSaved> {
    // A round that raced an erasure of its document is dropped, never written back: the store
    // that sent it is told to erase its copy (sync.rs).
    if tx
        .prepare_cached("SELECT 1 FROM erased_documents WHERE doc_key = ?1")?
        .exists([&w.doc_key])?
    {
        return Ok(SyncSaved {
            created: false,
            version: 0,
            stale: false,
        });
    }
    let stored: Option<(i64, Vec<u8>)> = tx
        .prepare_cached("SELECT version, heads FROM documents WHERE key = ?1")?
        .query_row([&w.doc_key], |r| Ok((r.get(0)?, r.get(1)?)))
        .optional()?;
    let (created, stale, version) = match stored {
        None => {
            tx.prepare_cached(
                "INSERT INTO documents (key, origin_store, heads, created_at_ms, updated_at_ms, \
                 version) VALUES (?1, ?2, ?3, ?4, ?4, 1)",
            )?
            .execute(params![w.doc_key, w.origin_store, w.heads, w.now_ms as i64])?;
            (true, false, 1)
        }
        Some((version, stored_heads)) => {
            let stale = w.expected_version != Some(version);
            let heads = if stale {
                super::union_heads(&stored_heads, &w.heads)
            } else {
                w.heads.clone()
            };
            tx.prepare_cached(
                "UPDATE documents SET heads = ?2, updated_at_ms = ?3, version = ?4 WHERE key = ?1",
            )?
            .execute(params![w.doc_key, heads, w.now_ms as i64, version + 1])?;
            (false, stale, version + 1)
        }
    };
    if w.replace_chunks && !stale {
        tx.prepare_cached("DELETE FROM doc_chunks WHERE doc_key = ?1")?
            .execute([&w.doc_key])?;
    }
    if !w.chunk.is_empty() {
        tx.prepare_cached(
            "INSERT INTO doc_chunks (doc_key, seq, bytes) VALUES (?1, \
             (SELECT coalesce(max(seq), 0) + 1 FROM doc_chunks WHERE doc_key = ?1), ?2)",
        )?
        .execute(params![w.doc_key, w.chunk])?;
    }
    tx.prepare_cached(
        "INSERT INTO sync_states (store_id, doc_key, state) VALUES (?1, ?2, ?3) \
         ON CONFLICT (store_id, doc_key) DO UPDATE SET state = excluded.state",
    )?
    .execute(params![w.store_id, w.doc_key, w.sync_state])?;
    if let Some(projection) = &w.projection {
        write_projection(tx, projection)?;
    }
    Ok(SyncSaved {
        created,
        version,
        stale,
    })
}

pub struct SqliteStore {
    writer: Writer,
    readers: Threads,
    /// Stops the checkpoint thread (`aisle_service::checkpoint`).
    checkpoints: Mutex<Option<(mpsc::Sender<()>, std::thread::JoinHandle<()>)>>,
}

impl SqliteStore {
    /// Opens (creating and migrating) the database and starts the writer and reader threads.
    pub fn open(path: &Path, reader_threads: usize) -> StoreResult<Self> {
        let mut conn = Connection::open(path)?;
        schema::configure(&conn)?;
        schema::migrate(&mut conn)?;
        // A log cut or rewritten while the hub was stopped is recorded before anything is
        // appended after it (crate::audit).
        audit::check_anchor_at_start(&conn)?;
        audit::anchor_after_commit(&conn);
        if let Some((seq, hash)) = audit::head(&conn)? {
            tracing::info!(seq, hash = %hash, "audit log head");
        }
        // Checkpoints run on their own thread, not inside the writer's commits; and the writer
        // gets a larger page cache (a batch touches many documents' pages; spilling it mid
        // transaction cost ~7 % of the writer's time).
        conn.pragma_update(None, "wal_autocheckpoint", 0)?;
        conn.pragma_update(None, "cache_size", -64_000)?;
        let (stop_checkpoints, stop) = mpsc::channel();
        let checkpoint_thread = aisle_service::checkpoint::start(path, stop)?;
        let mut readers = Vec::new();
        for _ in 0..reader_threads {
            let reader = Connection::open_with_flags(
                path,
                OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
            )?;
            reader.busy_timeout(std::time::Duration::from_secs(5))?;
            readers.push(reader);
        }
        let io = |e: std::io::Error| StoreError::Schema(format!("starting a thread: {e}"));
        Ok(SqliteStore {
            writer: Writer::start(conn).map_err(io)?,
            readers: Threads::start("hub-reader", readers).map_err(io)?,
            checkpoints: Mutex::new(Some((stop_checkpoints, checkpoint_thread))),
        })
    }

    /// Stops the threads once their queued work is done.
    pub fn stop(&self) {
        self.writer.stop();
        self.readers.stop();
        if let Some((stop, thread)) = self.checkpoints.lock().ok().and_then(|mut c| c.take()) {
            let _ = stop.send(());
            let _ = thread.join();
        }
    }
}

const STORE_COLUMNS: &str = "id, name, region, created_at_ms, enrolled_at_ms, last_sync_at_ms, \
                             revoked, credential_hash";

fn store_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<StoreRecord> {
    Ok(StoreRecord {
        id: row.get(0)?,
        name: row.get(1)?,
        region: row.get(2)?,
        created_at_ms: row.get::<_, i64>(3)? as u64,
        enrolled_at_ms: row.get::<_, Option<i64>>(4)?.map(|v| v as u64),
        last_sync_at_ms: row.get::<_, Option<i64>>(5)?.map(|v| v as u64),
        revoked: row.get(6)?,
        credential_hash: row.get(7)?,
    })
}

fn account_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<Account> {
    Ok(Account {
        id: row.get(0)?,
        username: row.get(1)?,
        password_hash: row.get(2)?,
        role: row.get(3)?,
    })
}

impl HubStore for SqliteStore {
    fn count_accounts(&self) -> BoxFuture<'_, StoreResult<u64>> {
        self.readers.run(|c| {
            Ok(c.query_row("SELECT count(*) FROM accounts", [], |r| r.get::<_, i64>(0))? as u64)
        })
    }

    fn create_account(
        &self,
        username: String,
        password_hash: String,
        role: String,
    ) -> BoxFuture<'_, StoreResult<String>> {
        self.writer
            .run(move |c| Ok(insert_account(c, &username, &password_hash, &role)?))
    }

    fn account_by_username(&self, username: String) -> BoxFuture<'_, StoreResult<Option<Account>>> {
        self.readers.run(move |c| {
            Ok(c.query_row(
                "SELECT id, username, password_hash, role FROM accounts WHERE username = ?1",
                [username],
                account_row,
            )
            .optional()?)
        })
    }

    fn create_session(
        &self,
        token_hash: Vec<u8>,
        account_id: String,
        expires_at_ms: u64,
    ) -> BoxFuture<'_, StoreResult<()>> {
        self.writer.run(move |c| {
            let tx = c.transaction()?;
            insert_session(&tx, &token_hash, &account_id, expires_at_ms)?;
            tx.commit()?;
            Ok(())
        })
    }

    fn session_account(
        &self,
        token_hash: Vec<u8>,
        now_ms: u64,
    ) -> BoxFuture<'_, StoreResult<Option<Account>>> {
        self.readers.run(move |c| {
            Ok(c.query_row(
                "SELECT a.id, a.username, a.password_hash, a.role FROM sessions s \
                 JOIN accounts a ON a.id = s.account_id \
                 WHERE s.token_hash = ?1 AND s.expires_at_ms > ?2",
                params![token_hash, now_ms as i64],
                account_row,
            )
            .optional()?)
        })
    }

    fn create_store(&self, store: NewStore) -> BoxFuture<'_, StoreResult<bool>> {
        self.writer.run(move |c| Ok(insert_store(c, &store)?))
    }

    fn enroll(
        &self,
        store_id: String,
        token_hash: Vec<u8>,
        credential_hash: Vec<u8>,
        now_ms: u64,
    ) -> BoxFuture<'_, StoreResult<EnrollOutcome>> {
        self.writer.run(move |c| {
            let tx = c.transaction()?;
            let outcome = enroll_in(&tx, &store_id, &token_hash, &credential_hash, now_ms)?;
            tx.commit()?;
            Ok(outcome)
        })
    }

    fn revoke_store(&self, store_id: String) -> BoxFuture<'_, StoreResult<bool>> {
        self.writer.run(move |c| Ok(revoke(c, &store_id)?))
    }

    fn store(&self, store_id: String) -> BoxFuture<'_, StoreResult<Option<StoreRecord>>> {
        self.readers.run(move |c| {
            Ok(c.query_row(
                &format!("SELECT {STORE_COLUMNS} FROM stores WHERE id = ?1"),
                [store_id],
                store_row,
            )
            .optional()?)
        })
    }

    fn list_stores(&self) -> BoxFuture<'_, StoreResult<Vec<StoreRecord>>> {
        self.readers.run(|c| {
            let mut stmt = c.prepare(&format!("SELECT {STORE_COLUMNS} FROM stores ORDER BY id"))?;
            let rows = stmt.query_map([], store_row)?;
            Ok(rows.collect::<Result<Vec<_>, _>>()?)
        })
    }

    fn touch_store(&self, store_id: String, now_ms: u64) -> BoxFuture<'_, StoreResult<()>> {
        self.writer.run(move |c| {
            c.execute(
                "UPDATE stores SET last_sync_at_ms = ?2 WHERE id = ?1",
                params![store_id, now_ms as i64],
            )?;
            Ok(())
        })
    }

    fn manifest(&self, store_id: String) -> BoxFuture<'_, StoreResult<Vec<ManifestRow>>> {
        self.readers.run(move |c| {
            let mut stmt = c.prepare(
                "SELECT key, heads FROM documents WHERE origin_store = ?1 \
                 UNION SELECT d.key, d.heads FROM shares s JOIN documents d ON d.key = s.doc_key \
                 WHERE s.store_id = ?1 ORDER BY 1",
            )?;
            let rows = stmt.query_map([store_id], |r| Ok((r.get(0)?, r.get(1)?)))?;
            Ok(rows.collect::<Result<Vec<_>, _>>()?)
        })
    }

    fn load_document(&self, doc_key: String) -> BoxFuture<'_, StoreResult<Option<StoredDocument>>> {
        self.readers.run(move |c| {
            let tx = c.transaction()?;
            let Some((origin_store, version)) = tx
                .query_row(
                    "SELECT origin_store, version FROM documents WHERE key = ?1",
                    [&doc_key],
                    |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)),
                )
                .optional()?
            else {
                return Ok(None);
            };
            let mut bytes = Vec::new();
            {
                let mut stmt =
                    tx.prepare("SELECT bytes FROM doc_chunks WHERE doc_key = ?1 ORDER BY seq")?;
                let mut rows = stmt.query([&doc_key])?;
                while let Some(row) = rows.next()? {
                    bytes.extend_from_slice(&row.get::<_, Vec<u8>>(0)?);
                }
            }
            Ok(Some(StoredDocument {
                origin_store,
                bytes,
                version,
            }))
        })
    }

    fn sync_state(
        &self,
        store_id: String,
        doc_key: String,
    ) -> BoxFuture<'_, StoreResult<Option<Vec<u8>>>> {
        self.readers.run(move |c| {
            Ok(c.query_row(
                "SELECT state FROM sync_states WHERE store_id = ?1 AND doc_key = ?2",
                [store_id, doc_key],
                |r| r.get(0),
            )
            .optional()?)
        })
    }

    fn save_synced(&self, w: SyncWrite) -> BoxFuture<'_, StoreResult<SyncSaved>> {
        self.writer.synced(w)
    }

    fn register_handoff(&self, h: NewHandoff) -> BoxFuture<'_, StoreResult<()>> {
        self.writer.run(move |c| {
            c.execute(
                "INSERT OR IGNORE INTO handoffs (code_hash, doc_key, store_id, expires_at_ms) \
                 VALUES (?1, ?2, ?3, ?4)",
                params![h.code_hash, h.doc_key, h.store_id, h.expires_at_ms as i64],
            )?;
            Ok(())
        })
    }

    fn redeem_handoff(
        &self,
        code_hash: Vec<u8>,
        store_id: String,
        now_ms: u64,
    ) -> BoxFuture<'_, StoreResult<Redeemed>> {
        self.writer.run(move |c| {
            let tx = c.transaction()?;
            let row: Option<HandoffRow> = tx
                .query_row(
                    "SELECT doc_key, store_id, expires_at_ms, used_at_ms, used_by FROM handoffs \
                     WHERE code_hash = ?1",
                    [&code_hash],
                    |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?)),
                )
                .optional()?;
            let Some((doc_key, issuer, expires, used, used_by)) = row else {
                return Ok(Redeemed::Unknown);
            };
            // A retry by the store that redeemed it (its first answer was lost) gets the same
            // answer again.
            let retry = used.is_some() && used_by.as_deref() == Some(store_id.as_str());
            if used.is_some() && !retry {
                return Ok(Redeemed::Used);
            }
            if expires as u64 <= now_ms && !retry {
                return Ok(Redeemed::Expired);
            }
            if issuer == store_id {
                // The issuing store's own redemption (a device switch there): used up here too,
                // whether or not the conversation has reached the hub yet.
                tx.execute(
                    "UPDATE handoffs SET used_at_ms = ?2, used_by = ?3 WHERE code_hash = ?1",
                    params![code_hash, now_ms as i64, store_id],
                )?;
                tx.commit()?;
                return Ok(Redeemed::Own);
            }
            // The issuer must hold the document: its origin, or a store it was shared with.
            let origin: Option<String> = tx
                .query_row(
                    "SELECT origin_store FROM documents WHERE key = ?1 AND (origin_store = ?2 \
                     OR EXISTS (SELECT 1 FROM shares WHERE doc_key = ?1 AND store_id = ?2))",
                    params![doc_key, issuer],
                    |r| r.get(0),
                )
                .optional()?;
            let Some(origin_store) = origin else {
                return Ok(Redeemed::NotSynced);
            };
            tx.execute(
                "UPDATE handoffs SET used_at_ms = ?2, used_by = ?3 WHERE code_hash = ?1",
                params![code_hash, now_ms as i64, store_id],
            )?;
            if origin_store != store_id {
                tx.execute(
                    "INSERT OR IGNORE INTO shares (doc_key, store_id, granted_at_ms) \
                     VALUES (?1, ?2, ?3)",
                    params![doc_key, store_id, now_ms as i64],
                )?;
            }
            tx.commit()?;
            Ok(Redeemed::Shared {
                doc_key,
                origin_store,
            })
        })
    }

    fn save_document(
        &self,
        doc_key: String,
        origin_store: String,
        chunk: Vec<u8>,
        heads: Vec<u8>,
        now_ms: u64,
    ) -> BoxFuture<'_, StoreResult<()>> {
        self.writer.run(move |c| {
            let tx = c.transaction()?;
            store_document(&tx, &doc_key, &origin_store, &chunk, &heads, now_ms)?;
            tx.commit()?;
            Ok(())
        })
    }

    fn shares(&self) -> BoxFuture<'_, StoreResult<Vec<(String, String)>>> {
        self.readers.run(|c| {
            let mut stmt = c.prepare("SELECT doc_key, store_id FROM shares")?;
            let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?;
            Ok(rows.collect::<Result<Vec<_>, _>>()?)
        })
    }

    fn shared_with(&self, doc_key: String) -> BoxFuture<'_, StoreResult<Vec<String>>> {
        self.readers.run(move |c| {
            let mut stmt =
                c.prepare_cached("SELECT store_id FROM shares WHERE doc_key = ?1 ORDER BY 1")?;
            let rows = stmt.query_map([&doc_key], |r| r.get(0))?;
            Ok(rows.collect::<Result<Vec<_>, _>>()?)
        })
    }

    fn region_settings(&self) -> BoxFuture<'_, StoreResult<Option<RegionSettings>>> {
        self.readers.run(|c| {
            Ok(c.query_row(
                "SELECT version, layer FROM region_settings WHERE id = 1",
                [],
                |r| {
                    Ok(RegionSettings {
                        version: r.get::<_, i64>(0)? as u64,
                        layer: r.get(1)?,
                    })
                },
            )
            .optional()?)
        })
    }

    fn put_region_settings(&self, settings: RegionSettings) -> BoxFuture<'_, StoreResult<bool>> {
        self.writer
            .run(move |c| Ok(put_region_settings(c, &settings, crate::now_ms())?))
    }

    /// The file in the data directory is the identity of a SQLite hub (kept by `server.rs`
    /// since the first version); one process owns the file, so it is taken as it is.
    fn identity(&self, proposed: String) -> BoxFuture<'_, StoreResult<String>> {
        Box::pin(async move { Ok(proposed) })
    }

    fn count_documents(&self) -> BoxFuture<'_, StoreResult<u64>> {
        self.readers.run(|c| {
            Ok(c.query_row("SELECT count(*) FROM documents", [], |r| r.get::<_, i64>(0))? as u64)
        })
    }

    fn unprojected_documents(&self) -> BoxFuture<'_, StoreResult<Vec<String>>> {
        self.readers.run(|c| {
            let mut stmt = c.prepare(
                "SELECT d.key FROM documents d LEFT JOIN conversations c \
                 ON c.id = substr(d.key, length('conversation:') + 1) \
                 WHERE d.key LIKE 'conversation:%' AND c.id IS NULL ORDER BY d.key",
            )?;
            let rows = stmt.query_map([], |r| r.get(0))?;
            Ok(rows.collect::<Result<Vec<_>, _>>()?)
        })
    }

    fn save_projection(&self, projection: Projection) -> BoxFuture<'_, StoreResult<()>> {
        self.writer.run(move |c| {
            let tx = c.transaction()?;
            let indexed = last_message_seq(&tx)?;
            write_projection(&tx, &projection)?;
            index_new_messages(&tx, indexed)?;
            tx.commit()?;
            Ok(())
        })
    }

    fn list_conversations(
        &self,
        filter: ConversationFilter,
    ) -> BoxFuture<'_, StoreResult<Vec<ConversationSummary>>> {
        self.readers
            .run(move |c| Ok(list_conversations(c, &filter)?))
    }

    fn conversation_detail(
        &self,
        id: String,
    ) -> BoxFuture<'_, StoreResult<Option<ConversationDetail>>> {
        self.readers.run(move |c| Ok(conversation_detail(c, &id)?))
    }

    fn search_messages(
        &self,
        query: SearchQuery,
    ) -> BoxFuture<'_, StoreResult<(SearchMethod, Vec<SearchHit>)>> {
        self.readers.run(move |c| Ok(search_messages(c, &query)?))
    }

    fn figures(&self, query: FiguresQuery) -> BoxFuture<'_, StoreResult<Figures>> {
        self.readers.run(move |c| Ok(figures(c, &query)?))
    }

    fn erase_documents(&self, erase: Erasure) -> BoxFuture<'_, StoreResult<Vec<ErasedDocument>>> {
        self.writer.run(move |c| {
            let erased = {
                let tx = c.transaction()?;
                let mut erased = Vec::new();
                for key in &erase.doc_keys {
                    if let Some(doc) = erase_document(&tx, key)? {
                        // Recorded with the key and why, never what was erased.
                        let record = Record::new(
                            erase.requested_by.clone(),
                            "document_erased",
                            key,
                            serde_json::json!({ "reason": erase.reason, "holders": doc.holders }),
                        );
                        audit::append(&tx, &record)?;
                        erased.push(doc);
                    }
                    tx.prepare_cached(
                        "INSERT OR IGNORE INTO erased_documents \
                         (doc_key, erased_at_ms, reason, requested_by) VALUES (?1, ?2, ?3, ?4)",
                    )?
                    .execute(params![
                        key,
                        erase.now_ms as i64,
                        erase.reason,
                        erase.requested_by
                    ])?;
                }
                tx.commit()?;
                erased
            };
            // The erased rows are zeroed in the database file (`secure_delete`); the WAL still
            // holds the pages as they were until it is copied back and truncated.
            match c.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |r| r.get::<_, i64>(0)) {
                Ok(0) => {}
                // Busy: a reader still needs old pages; a later checkpoint overwrites them.
                Ok(_) => tracing::warn!(
                    "the WAL could not be truncated after an erasure (readers busy); a later checkpoint will"
                ),
                Err(err) => tracing::warn!(error = %err, "truncating the WAL after an erasure"),
            }
            Ok(erased)
        })
    }

    fn erased(&self, doc_keys: Vec<String>) -> BoxFuture<'_, StoreResult<Vec<String>>> {
        self.readers.run(move |c| {
            let mut stmt = c.prepare_cached("SELECT 1 FROM erased_documents WHERE doc_key = ?1")?;
            let mut erased = Vec::new();
            for key in doc_keys {
                if stmt.exists([&key])? {
                    erased.push(key);
                }
            }
            Ok(erased)
        })
    }

    fn customer_documents(&self, customer_id: String) -> BoxFuture<'_, StoreResult<Vec<String>>> {
        self.readers.run(move |c| {
            let mut stmt = c.prepare(
                "SELECT 'conversation:' || id FROM conversations WHERE customer_id = ?1 ORDER BY id",
            )?;
            let rows = stmt.query_map([customer_id], |r| r.get(0))?;
            Ok(rows.collect::<Result<Vec<_>, _>>()?)
        })
    }

    fn expired_documents(
        &self,
        resolved_before_ms: u64,
        limit: usize,
    ) -> BoxFuture<'_, StoreResult<Vec<String>>> {
        self.readers.run(move |c| {
            let mut stmt = c.prepare(
                "SELECT 'conversation:' || id FROM conversations \
                 WHERE status = 'resolved' AND resolved_at_ms < ?1 \
                 ORDER BY resolved_at_ms LIMIT ?2",
            )?;
            let rows = stmt.query_map(
                params![resolved_before_ms.min(i64::MAX as u64) as i64, limit as i64],
                |r| r.get(0),
            )?;
            Ok(rows.collect::<Result<Vec<_>, _>>()?)
        })
    }
}

// The writes shared by the plain `HubStore` methods and their audited twins (`AuditLog`): each
// runs inside the caller's transaction.

fn insert_account(
    c: &Connection,
    username: &str,
    password_hash: &str,
    role: &str,
) -> rusqlite::Result<String> {
    let id = ulid::Ulid::new().to_string();
    c.execute(
        "INSERT INTO accounts (id, username, password_hash, role, created_at_ms) \
         VALUES (?1, ?2, ?3, ?4, ?5)",
        params![id, username, password_hash, role, crate::now_ms() as i64],
    )?;
    Ok(id)
}

fn insert_session(
    c: &Connection,
    token_hash: &[u8],
    account_id: &str,
    expires_at_ms: u64,
) -> rusqlite::Result<()> {
    c.execute(
        "DELETE FROM sessions WHERE expires_at_ms < ?1",
        [crate::now_ms() as i64],
    )?;
    c.execute(
        "INSERT INTO sessions (token_hash, account_id, expires_at_ms) VALUES (?1, ?2, ?3)",
        params![token_hash, account_id, expires_at_ms as i64],
    )?;
    Ok(())
}

fn insert_store(c: &Connection, store: &NewStore) -> rusqlite::Result<bool> {
    let inserted = c.execute(
        "INSERT OR IGNORE INTO stores (id, name, region, created_at_ms, token_hash, \
         token_expires_at_ms) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        params![
            store.id,
            store.name,
            store.region,
            store.now_ms as i64,
            store.token_hash,
            store.token_expires_at_ms as i64
        ],
    )?;
    Ok(inserted == 1)
}

fn enroll_in(
    tx: &Connection,
    store_id: &str,
    token_hash: &[u8],
    credential_hash: &[u8],
    now_ms: u64,
) -> rusqlite::Result<EnrollOutcome> {
    let row = tx
        .query_row(
            "SELECT token_hash, token_expires_at_ms, token_used, revoked FROM stores \
             WHERE id = ?1",
            [store_id],
            |r| {
                Ok((
                    r.get::<_, Vec<u8>>(0)?,
                    r.get::<_, i64>(1)? as u64,
                    r.get::<_, bool>(2)?,
                    r.get::<_, bool>(3)?,
                ))
            },
        )
        .optional()?;
    let Some((stored_hash, expires, used, revoked)) = row else {
        return Ok(EnrollOutcome::UnknownStore);
    };
    Ok(if revoked {
        EnrollOutcome::Revoked
    } else if !crate::auth::hashes_equal(&stored_hash, token_hash) {
        EnrollOutcome::BadToken
    } else if used {
        EnrollOutcome::TokenUsed
    } else if expires <= now_ms {
        EnrollOutcome::TokenExpired
    } else {
        tx.execute(
            "UPDATE stores SET token_used = 1, credential_hash = ?2, enrolled_at_ms = ?3 \
             WHERE id = ?1",
            params![store_id, credential_hash, now_ms as i64],
        )?;
        EnrollOutcome::Enrolled
    })
}

fn revoke(c: &Connection, store_id: &str) -> rusqlite::Result<bool> {
    Ok(c.execute(
        "UPDATE stores SET revoked = 1, credential_hash = NULL WHERE id = ?1",
        [store_id],
    )? == 1)
}

fn store_document(
    tx: &Connection,
    doc_key: &str,
    origin_store: &str,
    chunk: &[u8],
    heads: &[u8],
    now_ms: u64,
) -> rusqlite::Result<()> {
    tx.execute(
        "INSERT INTO documents (key, origin_store, heads, created_at_ms, updated_at_ms) \
         VALUES (?1, ?2, ?3, ?4, ?4) \
         ON CONFLICT (key) DO UPDATE SET heads = excluded.heads, \
         updated_at_ms = excluded.updated_at_ms, version = version + 1",
        params![doc_key, origin_store, heads, now_ms as i64],
    )?;
    if !chunk.is_empty() {
        tx.execute(
            "INSERT INTO doc_chunks (doc_key, seq, bytes) VALUES (?1, \
             (SELECT coalesce(max(seq), 0) + 1 FROM doc_chunks WHERE doc_key = ?1), ?2)",
            params![doc_key, chunk],
        )?;
    }
    Ok(())
}

/// The region layer, unless one of the same or a higher version is stored (`false` then).
fn put_region_settings(
    c: &Connection,
    settings: &RegionSettings,
    now_ms: u64,
) -> rusqlite::Result<bool> {
    Ok(c.execute(
        "INSERT INTO region_settings (id, version, layer, updated_at_ms) VALUES (1, ?1, ?2, ?3) \
         ON CONFLICT (id) DO UPDATE SET version = excluded.version, layer = excluded.layer, \
         updated_at_ms = excluded.updated_at_ms WHERE excluded.version > region_settings.version",
        params![settings.version as i64, settings.layer, now_ms as i64],
    )? == 1)
}

/// Each audited write and its entry in one transaction on the writer thread.
impl AuditLog for SqliteStore {
    fn append(&self, record: Record) -> BoxFuture<'_, StoreResult<Entry>> {
        self.writer.run(move |c| {
            let tx = c.transaction()?;
            let entry = audit::append(&tx, &record)?;
            tx.commit()?;
            Ok(entry)
        })
    }

    fn audited_create_account(
        &self,
        username: String,
        password_hash: String,
        role: String,
        by: String,
    ) -> BoxFuture<'_, StoreResult<String>> {
        self.writer.run(move |c| {
            let tx = c.transaction()?;
            let id = insert_account(&tx, &username, &password_hash, &role)?;
            let details = serde_json::json!({ "username": username, "role": role });
            let record = Record::new(by, "hq_account_created", &id, details);
            audit::append(&tx, &record)?;
            tx.commit()?;
            Ok(id)
        })
    }

    fn audited_login(
        &self,
        token_hash: Vec<u8>,
        account_id: String,
        expires_at_ms: u64,
    ) -> BoxFuture<'_, StoreResult<()>> {
        self.writer.run(move |c| {
            let tx = c.transaction()?;
            insert_session(&tx, &token_hash, &account_id, expires_at_ms)?;
            let record = Record::new(
                audit::actor::hq(&account_id),
                "hq_login",
                &account_id,
                serde_json::json!({}),
            );
            audit::append(&tx, &record)?;
            tx.commit()?;
            Ok(())
        })
    }

    fn audited_create_store(
        &self,
        store: NewStore,
        by: String,
    ) -> BoxFuture<'_, StoreResult<bool>> {
        self.writer.run(move |c| {
            let tx = c.transaction()?;
            let created = insert_store(&tx, &store)?;
            if created {
                let details = serde_json::json!({ "name": store.name, "region": store.region });
                audit::append(&tx, &Record::new(by, "store_created", &store.id, details))?;
            }
            tx.commit()?;
            Ok(created)
        })
    }

    fn audited_revoke_store(
        &self,
        store_id: String,
        by: String,
    ) -> BoxFuture<'_, StoreResult<bool>> {
        self.writer.run(move |c| {
            let tx = c.transaction()?;
            let revoked = revoke(&tx, &store_id)?;
            if revoked {
                let record = Record::new(by, "store_revoked", &store_id, serde_json::json!({}));
                audit::append(&tx, &record)?;
            }
            tx.commit()?;
            Ok(revoked)
        })
    }

    fn audited_enroll(
        &self,
        store_id: String,
        token_hash: Vec<u8>,
        credential_hash: Vec<u8>,
        now_ms: u64,
    ) -> BoxFuture<'_, StoreResult<EnrollOutcome>> {
        self.writer.run(move |c| {
            let tx = c.transaction()?;
            let outcome = enroll_in(&tx, &store_id, &token_hash, &credential_hash, now_ms)?;
            let record = audit::enrollment_record(&store_id, outcome);
            audit::append(&tx, &record)?;
            tx.commit()?;
            Ok(outcome)
        })
    }

    fn audited_save_document(
        &self,
        doc_key: String,
        origin_store: String,
        chunk: Vec<u8>,
        heads: Vec<u8>,
        now_ms: u64,
        record: Record,
    ) -> BoxFuture<'_, StoreResult<()>> {
        self.writer.run(move |c| {
            let tx = c.transaction()?;
            store_document(&tx, &doc_key, &origin_store, &chunk, &heads, now_ms)?;
            audit::append(&tx, &record)?;
            tx.commit()?;
            Ok(())
        })
    }

    fn audited_put_region_settings(
        &self,
        settings: RegionSettings,
        record: Record,
    ) -> BoxFuture<'_, StoreResult<bool>> {
        self.writer.run(move |c| {
            let tx = c.transaction()?;
            let stored = put_region_settings(&tx, &settings, crate::now_ms())?;
            if stored {
                audit::append(&tx, &record)?;
            }
            tx.commit()?;
            Ok(stored)
        })
    }

    fn page(
        &self,
        after: u64,
        limit: usize,
    ) -> BoxFuture<'_, StoreResult<(Vec<Entry>, Option<Anchor>)>> {
        self.readers.run(move |c| {
            let entries = audit::page(c, after, limit)?;
            let head = audit::head(c)?.map(|(seq, hash)| Anchor { seq, hash });
            Ok((entries, head))
        })
    }
}

/// Applies a round's projection inside the sync transaction. Idempotent: the conversation row
/// is rewritten, participants upserted, messages inserted once by id; the derived figures are
/// recomputed from the message rows (indexed lookups, not scans) only when a message was new.
fn write_projection(tx: &rusqlite::Transaction<'_>, p: &Projection) -> rusqlite::Result<()> {
    let conv = &p.conversation;
    tx.prepare_cached(
        "INSERT INTO conversations (id, store_id, customer_id, status, agent_id, agent_name, \
         created_at_ms, resolved_at_ms, intent) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9) \
         ON CONFLICT (id) DO UPDATE SET status = excluded.status, agent_id = excluded.agent_id, \
         agent_name = excluded.agent_name, resolved_at_ms = excluded.resolved_at_ms, \
         intent = coalesce(excluded.intent, conversations.intent)",
    )?
    .execute(params![
        conv.id,
        conv.store_id,
        conv.customer_id,
        conv.status,
        conv.agent_id,
        conv.agent_name,
        conv.created_at_ms as i64,
        conv.resolved_at_ms.map(|v| v as i64),
        conv.intent,
    ])?;
    {
        let mut stmt = tx.prepare_cached(
            "INSERT INTO participants (conversation, participant, kind, participant_id, \
             display_name, joined_at_ms) VALUES (?1, ?2, ?3, ?4, ?5, ?6) \
             ON CONFLICT (conversation, participant) DO UPDATE SET \
             display_name = excluded.display_name, joined_at_ms = excluded.joined_at_ms",
        )?;
        for part in &p.participants {
            stmt.execute(params![
                conv.id,
                part.key,
                part.kind,
                part.id,
                part.display_name,
                part.joined_at_ms as i64
            ])?;
        }
    }
    let mut inserted = 0;
    {
        let mut stmt = tx.prepare_cached(
            "INSERT OR IGNORE INTO messages (id, conversation, store_id, sender_kind, sender_id, \
             sender_name, body, sent_at_ms, intent, attachment) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
        )?;
        for m in &p.messages {
            inserted += stmt.execute(params![
                m.id,
                m.conversation,
                m.store_id,
                m.sender_kind,
                m.sender_id,
                m.sender_name,
                m.body,
                m.sent_at_ms as i64,
                m.intent,
                m.attachment,
            ])?;
        }
    }
    if inserted > 0 {
        tx.prepare_cached(
            "UPDATE conversations SET message_count = message_count + ?2, \
             last_message_at_ms = (SELECT max(sent_at_ms) FROM messages WHERE conversation = ?1), \
             first_customer_message_at_ms = (SELECT min(sent_at_ms) FROM messages \
                 WHERE conversation = ?1 AND sender_kind = 'customer'), \
             first_response_at_ms = (SELECT min(sent_at_ms) FROM messages \
                 WHERE conversation = ?1 AND sender_kind = 'staff' AND sent_at_ms >= \
                 (SELECT min(sent_at_ms) FROM messages \
                  WHERE conversation = ?1 AND sender_kind = 'customer')) \
             WHERE id = ?1",
        )?
        .execute(params![conv.id, inserted as i64])?;
    }
    Ok(())
}

const CONVERSATION_COLUMNS: &str = "id, store_id, customer_id, status, agent_id, agent_name, \
    created_at_ms, first_customer_message_at_ms, first_response_at_ms, resolved_at_ms, \
    last_message_at_ms, message_count, intent";

fn opt_u64(row: &rusqlite::Row<'_>, index: usize) -> rusqlite::Result<Option<u64>> {
    Ok(row.get::<_, Option<i64>>(index)?.map(|v| v.max(0) as u64))
}

fn conversation_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<ConversationSummary> {
    Ok(ConversationSummary {
        id: row.get(0)?,
        store_id: row.get(1)?,
        customer_id: row.get(2)?,
        status: row.get(3)?,
        agent_id: row.get(4)?,
        agent_name: row.get(5)?,
        created_at_ms: row.get::<_, i64>(6)?.max(0) as u64,
        first_customer_message_at_ms: opt_u64(row, 7)?,
        first_response_at_ms: opt_u64(row, 8)?,
        resolved_at_ms: opt_u64(row, 9)?,
        last_message_at_ms: opt_u64(row, 10)?,
        message_count: row.get::<_, i64>(11)?.max(0) as u64,
        intent: row.get(12)?,
    })
}

/// SQL arguments built alongside a query string: `push` returns the placeholder.
#[derive(Default)]
struct Args(Vec<rusqlite::types::Value>);

impl Args {
    fn push(&mut self, value: impl Into<rusqlite::types::Value>) -> String {
        self.0.push(value.into());
        format!("?{}", self.0.len())
    }
}

fn list_conversations(
    c: &Connection,
    f: &ConversationFilter,
) -> rusqlite::Result<Vec<ConversationSummary>> {
    let mut args = Args::default();
    let mut sql = format!("SELECT {CONVERSATION_COLUMNS} FROM conversations WHERE 1");
    if let Some(store) = &f.store {
        sql += &format!(" AND store_id = {}", args.push(store.clone()));
    }
    if let Some(statuses) = &f.statuses {
        let list: Vec<String> = statuses.iter().map(|s| args.push(s.to_string())).collect();
        sql += &format!(" AND status IN ({})", list.join(", "));
    }
    if let Some(from) = f.from_ms {
        sql += &format!(" AND created_at_ms >= {}", args.push(from as i64));
    }
    if let Some(to) = f.to_ms {
        sql += &format!(" AND created_at_ms < {}", args.push(to as i64));
    }
    if let Some(agent) = &f.agent_id {
        sql += &format!(" AND agent_id = {}", args.push(agent.clone()));
    }
    if let Some(intent) = &f.intent {
        sql += &format!(
            " AND coalesce(intent, 'unknown') = {}",
            args.push(intent.clone())
        );
    }
    if let Some((at, id)) = &f.before {
        let at = args.push(*at as i64);
        let id = args.push(id.clone());
        sql += &format!(" AND (created_at_ms, id) < ({at}, {id})");
    }
    sql += &format!(
        " ORDER BY created_at_ms DESC, id DESC LIMIT {}",
        args.push(f.limit as i64)
    );
    let mut stmt = c.prepare(&sql)?;
    let rows = stmt.query_map(rusqlite::params_from_iter(args.0.iter()), conversation_row)?;
    rows.collect()
}

/// The sender's current display name (from the participants table), else the one the message
/// was projected with. `m` is the messages table, `p` a LEFT JOIN of participants on [`SENDER_JOIN`].
const SENDER_NAME: &str = "coalesce(p.display_name, m.sender_name)";
const SENDER_JOIN: &str = "LEFT JOIN participants p ON p.conversation = m.conversation AND \
    p.participant = CASE WHEN m.sender_id IS NULL THEN m.sender_kind \
    ELSE m.sender_kind || ':' || m.sender_id END";

fn conversation_detail(
    c: &mut Connection,
    id: &str,
) -> rusqlite::Result<Option<ConversationDetail>> {
    let tx = c.transaction()?;
    let Some(conversation) = tx
        .query_row(
            &format!("SELECT {CONVERSATION_COLUMNS} FROM conversations WHERE id = ?1"),
            [id],
            conversation_row,
        )
        .optional()?
    else {
        return Ok(None);
    };
    let participants = {
        let mut stmt = tx.prepare(
            "SELECT kind, participant_id, display_name, joined_at_ms FROM participants \
             WHERE conversation = ?1 ORDER BY joined_at_ms, participant",
        )?;
        let rows = stmt.query_map([id], |r| {
            Ok(ParticipantView {
                kind: r.get(0)?,
                id: r.get(1)?,
                display_name: r.get(2)?,
                joined_at_ms: r.get::<_, i64>(3)?.max(0) as u64,
            })
        })?;
        rows.collect::<Result<Vec<_>, _>>()?
    };
    let messages = {
        let mut stmt = tx.prepare(&format!(
            "SELECT m.id, m.sender_kind, m.sender_id, {SENDER_NAME}, m.body, m.sent_at_ms, \
             m.intent, m.attachment FROM messages m {SENDER_JOIN} \
             WHERE m.conversation = ?1 ORDER BY m.sent_at_ms, m.id"
        ))?;
        let rows = stmt.query_map([id], |r| {
            Ok(TranscriptMessage {
                id: r.get(0)?,
                sender: Sender {
                    kind: r.get(1)?,
                    id: r.get(2)?,
                    display_name: r.get(3)?,
                },
                body: r.get(4)?,
                sent_at_ms: r.get::<_, i64>(5)?.max(0) as u64,
                intent: r.get(6)?,
                attachment: r
                    .get::<_, Option<String>>(7)?
                    .and_then(|json| serde_json::from_str(&json).ok()),
            })
        })?;
        rows.collect::<Result<Vec<_>, _>>()?
    };
    Ok(Some(ConversationDetail {
        conversation,
        participants,
        messages,
    }))
}

/// Characters a trigram index needs in a term to find it.
pub const TRIGRAM_CHARS: usize = 3;

/// `%term%` for LIKE, with the pattern characters escaped by `\`.
fn like_pattern(term: &str) -> String {
    let mut pattern = String::with_capacity(term.len() + 2);
    pattern.push('%');
    for ch in term.chars() {
        if matches!(ch, '%' | '_' | '\\') {
            pattern.push('\\');
        }
        pattern.push(ch);
    }
    pattern.push('%');
    pattern
}

/// Terms of 3+ characters go to the trigram index as quoted phrases (substring matches); the
/// shorter ones filter the index's candidates with LIKE. With no long term there is nothing to
/// look up, so the newest `scan_messages` messages are scanned with LIKE. Either way the newest
/// received come first (the index walks its rowids backwards, which stops at `limit`).
fn search_messages(
    c: &Connection,
    q: &SearchQuery,
) -> rusqlite::Result<(SearchMethod, Vec<SearchHit>)> {
    let (long, short): (Vec<&String>, Vec<&String>) = q
        .terms
        .iter()
        .partition(|t| t.chars().count() >= TRIGRAM_CHARS);
    let mut args = Args::default();
    let method;
    let mut sql;
    if long.is_empty() {
        method = SearchMethod::Scan;
        let store = match &q.store {
            Some(store) => format!("WHERE store_id = {}", args.push(store.clone())),
            None => String::new(),
        };
        let scan = args.push(q.scan_messages as i64);
        sql = format!(
            "SELECT m.conversation, m.store_id, m.id, m.sender_kind, m.sender_id, \
             {SENDER_NAME}, m.sent_at_ms, m.body \
             FROM (SELECT * FROM messages {store} ORDER BY seq DESC LIMIT {scan}) m \
             {SENDER_JOIN} WHERE 1"
        );
    } else {
        method = SearchMethod::Index;
        let phrase: Vec<String> = long
            .iter()
            .map(|t| format!("\"{}\"", t.replace('"', "\"\"")))
            .collect();
        let matched = args.push(phrase.join(" AND "));
        sql = format!(
            "SELECT m.conversation, m.store_id, m.id, m.sender_kind, m.sender_id, \
             {SENDER_NAME}, m.sent_at_ms, m.body \
             FROM messages_fts f JOIN messages m ON m.seq = f.rowid {SENDER_JOIN} \
             WHERE messages_fts MATCH {matched}"
        );
        if let Some(store) = &q.store {
            sql += &format!(" AND m.store_id = {}", args.push(store.clone()));
        }
    }
    for term in short {
        sql += &format!(
            " AND m.body LIKE {} ESCAPE '\\'",
            args.push(like_pattern(term))
        );
    }
    sql += &format!(" ORDER BY m.seq DESC LIMIT {}", args.push(q.limit as i64));
    let mut stmt = c.prepare(&sql)?;
    let rows = stmt.query_map(rusqlite::params_from_iter(args.0.iter()), |r| {
        Ok(SearchHit {
            conversation_id: r.get(0)?,
            store_id: r.get(1)?,
            message_id: r.get(2)?,
            sender: Sender {
                kind: r.get(3)?,
                id: r.get(4)?,
                display_name: r.get(5)?,
            },
            sent_at_ms: r.get::<_, i64>(6)?.max(0) as u64,
            body: r.get(7)?,
        })
    })?;
    Ok((method, rows.collect::<Result<Vec<_>, _>>()?))
}

use super::HOUR_MS;

/// Duration statistics of conversations created in the range, grouped by `group` (an SQL
/// expression over `conversations`): nearest-rank percentiles computed by SQLite's window
/// functions, so no list of durations is held in memory.
fn duration_stats(
    c: &Connection,
    q: &FiguresQuery,
    group: &str,
    value: &str,
    present: &str,
) -> rusqlite::Result<Vec<(String, DurationStats)>> {
    let sql = format!(
        "WITH v AS (SELECT {group} AS g, max(0, {value}) AS v FROM conversations \
             WHERE {present} IS NOT NULL AND created_at_ms >= ?1 AND created_at_ms < ?2 \
             AND (?3 IS NULL OR store_id = ?3)), \
         r AS (SELECT g, v, row_number() OVER (PARTITION BY g ORDER BY v) AS rn, \
             count(*) OVER (PARTITION BY g) AS n FROM v) \
         SELECT g, n, sum(v), \
             max(CASE WHEN rn = (n * 50 + 99) / 100 THEN v END), \
             max(CASE WHEN rn = (n * 90 + 99) / 100 THEN v END) \
         FROM r GROUP BY g, n"
    );
    let mut stmt = c.prepare(&sql)?;
    let rows = stmt.query_map(params![q.from_ms as i64, q.to_ms as i64, q.store], |r| {
        let count = r.get::<_, i64>(1)?.max(0) as u64;
        let sum = r.get::<_, i64>(2)?.max(0) as u64;
        Ok((
            r.get::<_, String>(0)?,
            DurationStats {
                count,
                avg_ms: (count > 0).then(|| (sum + count / 2) / count),
                p50_ms: opt_u64(r, 3)?,
                p90_ms: opt_u64(r, 4)?,
            },
        ))
    })?;
    rows.collect()
}

/// Counts grouped by `group` over `table` rows whose `at` column is in the range (and whose
/// `store` column is the query's store, if it names one).
fn counts(
    c: &Connection,
    q: &FiguresQuery,
    table: &str,
    group: &str,
    [at, store]: [&str; 2],
) -> rusqlite::Result<Vec<(String, u64)>> {
    let sql = format!(
        "SELECT {group}, count(*) FROM {table} WHERE {at} >= ?1 AND {at} < ?2 \
         AND (?3 IS NULL OR {store} = ?3) GROUP BY 1"
    );
    let mut stmt = c.prepare(&sql)?;
    let rows = stmt.query_map(params![q.from_ms as i64, q.to_ms as i64, q.store], |r| {
        // Hours come back as integers; every other group is text.
        let key = match r.get_ref(0)? {
            rusqlite::types::ValueRef::Integer(i) => i.to_string(),
            other => other.as_str().unwrap_or("").to_owned(),
        };
        Ok((key, r.get::<_, i64>(1)?.max(0) as u64))
    })?;
    rows.collect()
}

fn figures(c: &mut Connection, q: &FiguresQuery) -> rusqlite::Result<Figures> {
    let tx = c.transaction()?;
    let first_response = (
        "first_response_at_ms - first_customer_message_at_ms",
        "first_response_at_ms",
    );
    let resolution = ("resolved_at_ms - created_at_ms", "resolved_at_ms");
    let intent = "coalesce(intent, 'unknown')";
    let mut groups: [(&str, std::collections::BTreeMap<String, GroupFigures>); 3] = [
        ("'all'", Default::default()),
        ("store_id", Default::default()),
        (intent, Default::default()),
    ];
    for (group, figures) in groups.iter_mut() {
        for (key, stats) in duration_stats(&tx, q, group, first_response.0, first_response.1)? {
            figures.entry(key).or_default().first_response = stats;
        }
        for (key, stats) in duration_stats(&tx, q, group, resolution.0, resolution.1)? {
            figures.entry(key).or_default().resolution = stats;
        }
        for (key, n) in counts(
            &tx,
            q,
            "conversations",
            group,
            ["created_at_ms", "store_id"],
        )? {
            figures.entry(key).or_default().new_conversations = n;
        }
    }
    // Messages count under their conversation's intent (messages have none of their own yet).
    let [(_, all), (_, by_store), (_, by_intent)] = &mut groups;
    for (group, figures) in [("'all'", all), ("store_id", by_store)] {
        for (key, n) in counts(&tx, q, "messages", group, ["sent_at_ms", "store_id"])? {
            figures.entry(key).or_default().messages = n;
        }
    }
    let messages_by_intent = counts(
        &tx,
        q,
        "messages m JOIN conversations c ON c.id = m.conversation",
        "coalesce(c.intent, 'unknown')",
        ["m.sent_at_ms", "m.store_id"],
    );
    for (key, n) in messages_by_intent? {
        by_intent.entry(key).or_default().messages = n;
    }
    let hour = format!("(sent_at_ms / {HOUR_MS})");
    let message_hours = counts(&tx, q, "messages", &hour, ["sent_at_ms", "store_id"])?;
    let hour = format!("(created_at_ms / {HOUR_MS})");
    let conversation_hours = counts(
        &tx,
        q,
        "conversations",
        &hour,
        ["created_at_ms", "store_id"],
    )?;
    let hours = super::hour_volumes(q, message_hours, conversation_hours);
    let [(_, mut all), (_, by_store), (_, by_intent)] = groups;
    Ok(Figures {
        hours,
        totals: all.remove("all").unwrap_or_default(),
        by_store,
        by_intent,
    })
}

/// Deletes one document and everything derived from it (the caller keeps its tombstone).
/// `None` if the hub did not hold it.
fn erase_document(
    tx: &rusqlite::Transaction<'_>,
    doc_key: &str,
) -> StoreResult<Option<ErasedDocument>> {
    let origin: Option<String> = tx
        .prepare_cached("SELECT origin_store FROM documents WHERE key = ?1")?
        .query_row([doc_key], |r| r.get(0))
        .optional()?;
    let Some(origin) = origin else {
        return Ok(None);
    };
    let mut holders = vec![origin];
    {
        let mut stmt = tx.prepare_cached("SELECT store_id FROM shares WHERE doc_key = ?1")?;
        for store in stmt.query_map([doc_key], |r| r.get::<_, String>(0))? {
            let store = store?;
            if !holders.contains(&store) {
                holders.push(store);
            }
        }
    }
    if let Some(id) = doc_key.strip_prefix("conversation:") {
        // The messages' delete trigger removes their full-text entries (FTS5 `secure-delete`
        // drops the terms from the index's segments at once, not at the next merge).
        for sql in [
            "DELETE FROM messages WHERE conversation = ?1",
            "DELETE FROM participants WHERE conversation = ?1",
            "DELETE FROM conversations WHERE id = ?1",
        ] {
            tx.prepare_cached(sql)?.execute([id])?;
        }
    }
    for sql in [
        "DELETE FROM doc_chunks WHERE doc_key = ?1",
        "DELETE FROM sync_states WHERE doc_key = ?1",
        "DELETE FROM shares WHERE doc_key = ?1",
        "DELETE FROM handoffs WHERE doc_key = ?1",
        "DELETE FROM documents WHERE key = ?1",
    ] {
        tx.prepare_cached(sql)?.execute([doc_key])?;
    }
    Ok(Some(ErasedDocument {
        doc_key: doc_key.to_owned(),
        holders,
    }))
}

#[cfg(test)]
mod tests {
    //! The back-end-agnostic semantics are asserted by `store/conformance.rs` (on PostgreSQL
    //! too); each test here runs one of them on a fresh SQLite store.

    use super::super::conformance;
    use super::*;

    fn open() -> (tempfile::TempDir, SqliteStore) {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&dir.path().join("hub.db"), 1).unwrap();
        (dir, store)
    }

    macro_rules! conformance {
        ($($name:ident),* $(,)?) => {$(
            #[tokio::test]
            async fn $name() {
                let (_dir, store) = open();
                conformance::$name(&store).await;
                store.stop();
            }
        )*};
    }

    macro_rules! audited_conformance {
        ($($name:ident),* $(,)?) => {$(
            #[tokio::test]
            async fn $name() {
                let (_dir, store) = open();
                conformance::$name(&store, &store).await;
                store.stop();
            }
        )*};
    }

    conformance!(
        enrollment_and_documents,
        accounts_sessions_and_stores,
        settings_documents,
        handoffs_are_redeemed_once,
        projection_is_idempotent_searchable_and_counted,
        documents_stored_without_a_projection_are_backfilled,
        region_settings_only_move_forward,
    );
    audited_conformance!(
        erasure_leaves_tombstones_that_block_writes,
        audited_writes_form_one_chain,
        region_settings_are_audited_when_stored,
    );

    /// SQLite only: the audit head is anchored in a file beside the database after each commit
    /// that appended.
    #[tokio::test]
    async fn the_audit_head_is_anchored_beside_the_database() {
        let (dir, store) = open();
        let entry = AuditLog::append(
            &store,
            Record::new("system".into(), "a", "", serde_json::json!({})),
        )
        .await
        .unwrap();
        // The anchor is written after the writer's job; a read on the writer orders after it.
        store.writer.run(|_| Ok(())).await.unwrap();
        let anchor =
            std::fs::read_to_string(audit::anchor_path(&dir.path().join("hub.db"))).unwrap();
        let anchor: Anchor = serde_json::from_str(&anchor).unwrap();
        assert_eq!((anchor.seq, anchor.hash), (entry.seq, entry.hash));
        store.stop();
    }
}
