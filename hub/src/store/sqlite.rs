//! The SQLite implementation of [`HubStore`]: WAL, `synchronous=FULL`, one writer thread that
//! runs every write (in order, each in its own transaction), and reader threads for queries.
//! Callers await a oneshot answer, so the async runtime never blocks on SQLite.

use std::path::Path;
use std::sync::{Arc, Mutex, mpsc};

use futures_util::FutureExt;
use futures_util::future::BoxFuture;
use rusqlite::{Connection, OpenFlags, OptionalExtension, params};
use tokio::sync::oneshot;

use super::{
    Account, EnrollOutcome, HubStore, ManifestRow, NewHandoff, NewStore, Redeemed, StoreError,
    StoreRecord, StoreResult, StoredDocument, SyncWrite, schema,
};

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

pub struct SqliteStore {
    writer: Threads,
    readers: Threads,
}

impl SqliteStore {
    /// Opens (creating and migrating) the database and starts the writer and reader threads.
    pub fn open(path: &Path, reader_threads: usize) -> StoreResult<Self> {
        let mut conn = Connection::open(path)?;
        schema::configure(&conn)?;
        schema::migrate(&mut conn)?;
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
            writer: Threads::start("hub-writer", vec![conn]).map_err(io)?,
            readers: Threads::start("hub-reader", readers).map_err(io)?,
        })
    }

    /// Stops the threads once their queued work is done.
    pub fn stop(&self) {
        self.writer.stop();
        self.readers.stop();
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
        self.writer.run(move |c| {
            let id = ulid::Ulid::new().to_string();
            c.execute(
                "INSERT INTO accounts (id, username, password_hash, role, created_at_ms) \
                 VALUES (?1, ?2, ?3, ?4, ?5)",
                params![id, username, password_hash, role, crate::now_ms() as i64],
            )?;
            Ok(id)
        })
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
            tx.execute(
                "DELETE FROM sessions WHERE expires_at_ms < ?1",
                [crate::now_ms() as i64],
            )?;
            tx.execute(
                "INSERT INTO sessions (token_hash, account_id, expires_at_ms) VALUES (?1, ?2, ?3)",
                params![token_hash, account_id, expires_at_ms as i64],
            )?;
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
        self.writer.run(move |c| {
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
        })
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
            let row = tx
                .query_row(
                    "SELECT token_hash, token_expires_at_ms, token_used, revoked FROM stores \
                     WHERE id = ?1",
                    [&store_id],
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
            let outcome = if revoked {
                EnrollOutcome::Revoked
            } else if !crate::auth::hashes_equal(&stored_hash, &token_hash) {
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
            };
            tx.commit()?;
            Ok(outcome)
        })
    }

    fn revoke_store(&self, store_id: String) -> BoxFuture<'_, StoreResult<bool>> {
        self.writer.run(move |c| {
            Ok(c.execute(
                "UPDATE stores SET revoked = 1, credential_hash = NULL WHERE id = ?1",
                [store_id],
            )? == 1)
        })
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
            let Some(origin) = tx
                .query_row(
                    "SELECT origin_store FROM documents WHERE key = ?1",
                    [&doc_key],
                    |r| r.get::<_, String>(0),
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
            Ok(Some((origin, bytes)))
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

    fn save_synced(&self, w: SyncWrite) -> BoxFuture<'_, StoreResult<bool>> {
        self.writer.run(move |c| {
            let tx = c.transaction()?;
            let created = tx.execute(
                "INSERT OR IGNORE INTO documents (key, origin_store, heads, created_at_ms, \
                 updated_at_ms) VALUES (?1, ?2, ?3, ?4, ?4)",
                params![w.doc_key, w.origin_store, w.heads, w.now_ms as i64],
            )? == 1;
            if !created {
                tx.execute(
                    "UPDATE documents SET heads = ?2, updated_at_ms = ?3 WHERE key = ?1",
                    params![w.doc_key, w.heads, w.now_ms as i64],
                )?;
            }
            if !w.chunk.is_empty() {
                tx.execute(
                    "INSERT INTO doc_chunks (doc_key, seq, bytes) VALUES (?1, \
                     (SELECT coalesce(max(seq), 0) + 1 FROM doc_chunks WHERE doc_key = ?1), ?2)",
                    params![w.doc_key, w.chunk],
                )?;
            }
            tx.execute(
                "INSERT INTO sync_states (store_id, doc_key, state) VALUES (?1, ?2, ?3) \
                 ON CONFLICT (store_id, doc_key) DO UPDATE SET state = excluded.state",
                params![w.store_id, w.doc_key, w.sync_state],
            )?;
            tx.execute(
                "UPDATE stores SET last_sync_at_ms = ?2 WHERE id = ?1",
                params![w.store_id, w.now_ms as i64],
            )?;
            tx.commit()?;
            Ok(created)
        })
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
            let row: Option<(String, String, i64, Option<i64>)> = tx
                .query_row(
                    "SELECT doc_key, store_id, expires_at_ms, used_at_ms FROM handoffs \
                     WHERE code_hash = ?1",
                    [&code_hash],
                    |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
                )
                .optional()?;
            let Some((doc_key, issuer, expires, used)) = row else {
                return Ok(Redeemed::Unknown);
            };
            if used.is_some() {
                return Ok(Redeemed::Used);
            }
            if expires as u64 <= now_ms {
                return Ok(Redeemed::Expired);
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

    fn shares(&self) -> BoxFuture<'_, StoreResult<Vec<(String, String)>>> {
        self.readers.run(|c| {
            let mut stmt = c.prepare("SELECT doc_key, store_id FROM shares")?;
            let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?;
            Ok(rows.collect::<Result<Vec<_>, _>>()?)
        })
    }

    fn count_documents(&self) -> BoxFuture<'_, StoreResult<u64>> {
        self.readers.run(|c| {
            Ok(c.query_row("SELECT count(*) FROM documents", [], |r| r.get::<_, i64>(0))? as u64)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn enrollment_and_documents() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&dir.path().join("hub.db"), 1).unwrap();
        let token = crate::auth::secret_hash("et_x");
        assert!(
            store
                .create_store(NewStore {
                    id: "s1".into(),
                    name: "One".into(),
                    region: "r".into(),
                    token_hash: token.clone(),
                    token_expires_at_ms: u64::MAX / 2,
                    now_ms: 1,
                })
                .await
                .unwrap()
        );
        let enroll = |t: Vec<u8>| store.enroll("s1".into(), t, vec![1; 32], 2);
        assert_eq!(
            enroll(crate::auth::secret_hash("bad")).await.unwrap(),
            EnrollOutcome::BadToken
        );
        assert_eq!(
            enroll(token.clone()).await.unwrap(),
            EnrollOutcome::Enrolled
        );
        assert_eq!(
            enroll(token.clone()).await.unwrap(),
            EnrollOutcome::TokenUsed
        );
        let write = SyncWrite {
            store_id: "s1".into(),
            doc_key: "conversation:x".into(),
            origin_store: "s1".into(),
            chunk: vec![1, 2],
            heads: vec![7; 32],
            sync_state: vec![0],
            now_ms: 3,
        };
        assert!(store.save_synced(write.clone()).await.unwrap());
        assert!(
            !store
                .save_synced(SyncWrite {
                    chunk: vec![3],
                    ..write
                })
                .await
                .unwrap()
        );
        let (origin, bytes) = store
            .load_document("conversation:x".into())
            .await
            .unwrap()
            .unwrap();
        assert_eq!((origin.as_str(), bytes), ("s1", vec![1, 2, 3]));
        assert_eq!(store.manifest("s1".into()).await.unwrap().len(), 1);
        assert_eq!(store.count_documents().await.unwrap(), 1);
        store.stop();
    }
}
