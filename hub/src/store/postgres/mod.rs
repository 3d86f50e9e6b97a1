//! The PostgreSQL implementation of [`HubStore`] and [`AuditLog`], for several hub processes
//! ("replicas") on one database.
//!
//! The semantics are those of the SQLite store (`store/sqlite.rs`, the specification); what
//! differs is how writers that run at the same time in different processes are kept apart:
//!
//! - every write is one transaction (READ COMMITTED) on a pooled connection;
//! - writes of one document take a transaction-level advisory lock on its key (`lock_document`)
//!   before anything else of it, so a synced round, a settings write, a hand-off share and an
//!   erasure of the same document run one after the other (an erasure's tombstone is always
//!   seen by a round that runs after it, and a round that ran first is erased with the rest);
//!   `save_synced` then also locks the document row (`FOR UPDATE`), under which the
//!   compare-and-swap on the version and the next chunk number are race-free;
//! - audit appends take one fixed advisory lock (`audit_append`), first in their transaction,
//!   so the chain has one head across processes; locks are always taken in the order audit,
//!   document, store row, so two transactions never wait for each other in a cycle;
//! - a change other replicas keep in memory is announced with `pg_notify` in the transaction
//!   that makes it (`notify`); each process LISTENs on a dedicated connection and hands the
//!   others' notifications to [`HubStore::events`] (`listen.rs`). A receiver that lags behind
//!   the channel's capacity misses events (`RecvError::Lagged`): it must resynchronise as for
//!   [`ReplicaEvent::Resync`].
//!
//! Deployment notes: a process holds up to `max_connections` pooled connections, one more that
//! listens, and one more while it migrates at start. Connections are made without TLS
//! (`NoTls`; a URL that requires TLS is refused). The first migration creates the `pg_trgm`
//! extension (trusted: the role needs CREATE on the database, or an administrator creates it
//! first). Erased rows are dead tuples until (auto)vacuum; see `erase_document`.

mod hq;
mod listen;
pub mod schema;

#[cfg(test)]
mod tests;

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use futures_util::future::BoxFuture;
use tokio::sync::{broadcast, watch};
use tokio_postgres::types::ToSql;
use tokio_postgres::{IsolationLevel, NoTls, Row};

use super::{
    Account, ConversationDetail, ConversationFilter, ConversationSummary, EnrollOutcome,
    ErasedDocument, Erasure, Figures, FiguresQuery, HubStore, ManifestRow, NewHandoff, NewStore,
    Redeemed, RegionSettings, ReplicaEvent, SearchHit, SearchMethod, SearchQuery, StoreError,
    StoreRecord, StoreResult, StoredDocument, SyncSaved, SyncWrite,
};
use crate::audit::{self, Anchor, AuditLog, Entry, GENESIS, Record};
use crate::projection::Projection;

/// The channel of the hub's notifications.
const CHANNEL: &str = "aisle_hub";
/// The transaction-level advisory lock that serialises audit appends across replicas (a fixed
/// number: "aisle_au").
const AUDIT_LOCK: i64 = 0x6169_736c_655f_6175;
/// The first key of the two-key advisory locks on documents (the second is the hash of the
/// document's key). Two-key and one-key advisory locks never collide.
const DOCUMENT_LOCK_SPACE: i32 = 0x6169_736c; // "aisl"
/// `pg_notify` refuses payloads of 8000 bytes or more; a larger event (an erased document held
/// by very many stores) is sent as a resync instead.
const MAX_PAYLOAD: usize = 7_900;

pub struct PostgresStore {
    pool: Pool,
    replica_id: String,
    events: broadcast::Sender<ReplicaEvent>,
    stop: watch::Sender<bool>,
}

impl PostgresStore {
    /// Connects (pool of at most `max_connections`), checks the database is UTF8, takes a
    /// session advisory lock while applying versioned migrations (replicas may start at once),
    /// starts the LISTEN task. `replica_id` names this process in notifications.
    /// A request waits at most `pool_wait` for a pooled connection (then fails with a storage
    /// error, logged): a stalled database must not queue requests without end.
    pub async fn connect(
        url: &str,
        max_connections: usize,
        pool_wait: std::time::Duration,
        replica_id: String,
        event_capacity: usize,
    ) -> StoreResult<PostgresStore> {
        let config: tokio_postgres::Config = url.parse()?;
        // Migrations on a connection of their own: the session lock goes with it, whatever
        // happens.
        {
            let (mut client, connection) = config.connect(NoTls).await?;
            let driver = tokio::spawn(connection);
            let migrated = schema::migrate(&mut client).await;
            drop(client);
            let _ = driver.await;
            migrated?;
        }
        // A replica that vanishes mid-transaction (a network cut) must not keep its locks (the
        // audit chain's, a document's) until TCP gives up hours later: the server ends such a
        // session after a minute idle in its transaction, and keepalives notice a dead peer.
        let mut pool_config = config.clone();
        let options = format!(
            "{} -c idle_in_transaction_session_timeout=60000",
            config.get_options().unwrap_or("")
        );
        pool_config
            .options(options.trim())
            .keepalives(true)
            .keepalives_idle(std::time::Duration::from_secs(30))
            .keepalives_interval(std::time::Duration::from_secs(10))
            .keepalives_retries(3);
        let manager = Manager::from_config(
            pool_config,
            NoTls,
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(manager)
            .max_size(max_connections.max(1))
            .wait_timeout(Some(pool_wait))
            .create_timeout(Some(pool_wait))
            .runtime(Runtime::Tokio1)
            .build()
            .map_err(|err| StoreError::Postgres(format!("building the pool: {err}")))?;
        let (events, _) = broadcast::channel(event_capacity.max(1));
        let (stop, stopped) = watch::channel(false);
        let mut listen_config = config;
        listen_config.application_name(format!("aisle-hub-listen {replica_id}"));
        // A connection that idles (it only receives) notices a dead peer by its keepalives.
        listen_config
            .keepalives(true)
            .keepalives_idle(std::time::Duration::from_secs(30))
            .keepalives_interval(std::time::Duration::from_secs(10))
            .keepalives_retries(3);
        // Listening before connect returns: nothing committed after it is missed.
        let listener = listen::Listener::open(&listen_config).await?;
        tokio::spawn(listen::run(
            listener,
            listen_config,
            replica_id.clone(),
            events.clone(),
            stopped,
        ));
        Ok(PostgresStore {
            pool,
            replica_id,
            events,
            stop,
        })
    }

    /// Stops the LISTEN task (at shutdown).
    pub fn stop(&self) {
        self.stop.send_replace(true);
    }

    async fn client(&self) -> StoreResult<deadpool_postgres::Object> {
        Ok(self.pool.get().await?)
    }
}

impl Drop for PostgresStore {
    fn drop(&mut self) {
        self.stop();
    }
}

/// `aisle-hub audit verify` for a PostgreSQL hub: reads the chain and verifies it like the
/// SQLite one. There is no anchor beside a shared database: the chain alone is checked.
pub async fn verify_audit(url: &str) -> StoreResult<aisle_service::audit::Report> {
    let config: tokio_postgres::Config = url.parse()?;
    let (client, connection) = config.connect(NoTls).await?;
    let driver = tokio::spawn(connection);
    let result = async {
        let exists: bool = client
            .query_one("SELECT to_regclass('audit_log') IS NOT NULL", &[])
            .await?
            .get(0);
        if !exists {
            return Err(StoreError::Schema(
                aisle_service::audit::AuditError::NoLog.to_string(),
            ));
        }
        let rows = client
            .query(
                "SELECT seq, at_ms, actor, action, target, details, prev_hash, hash \
                 FROM audit_log ORDER BY seq",
                &[],
            )
            .await?;
        let entries = rows.iter().map(entry_row).collect();
        Ok(aisle_service::audit::verify_entries(entries, None))
    }
    .await;
    drop(client);
    let _ = driver.await;
    result
}

fn entry_row(r: &tokio_postgres::Row) -> Entry {
    Entry {
        seq: r.get::<_, i64>(0) as u64,
        at_ms: r.get::<_, i64>(1) as u64,
        actor: r.get(2),
        action: r.get(3),
        target: r.get(4),
        details: r.get(5),
        prev_hash: r.get(6),
        hash: r.get(7),
    }
}

/// What a notification carries (JSON, `{"replica": …, "kind": …, …}`).
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
struct Notice {
    replica: String,
    #[serde(flatten)]
    event: Event,
}

#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
enum Event {
    DocumentChanged {
        doc_key: String,
        origin_store: String,
    },
    Shared {
        doc_key: String,
        store_id: String,
    },
    Erased {
        doc_key: String,
        holders: Vec<String>,
    },
    Revoked {
        store_id: String,
    },
    Resync,
}

impl From<Event> for ReplicaEvent {
    fn from(event: Event) -> Self {
        match event {
            Event::DocumentChanged {
                doc_key,
                origin_store,
            } => ReplicaEvent::DocumentChanged {
                doc_key,
                origin_store,
            },
            Event::Shared { doc_key, store_id } => ReplicaEvent::Shared { doc_key, store_id },
            Event::Erased { doc_key, holders } => ReplicaEvent::Erased { doc_key, holders },
            Event::Revoked { store_id } => ReplicaEvent::Revoked { store_id },
            Event::Resync => ReplicaEvent::Resync,
        }
    }
}

/// Announces a change to the other replicas, delivered when (and only if) the transaction
/// commits.
async fn notify(tx: &Tx<'_>, replica: &str, event: Event) -> StoreResult<()> {
    let payload = payload(replica, event);
    tx.run("SELECT pg_notify($1, $2)", &[&CHANNEL, &payload])
        .await?;
    Ok(())
}

/// The JSON of a notice, or of a resync when the event's is too large for `pg_notify`.
fn payload(replica: &str, event: Event) -> String {
    let mut notice = Notice {
        replica: replica.to_owned(),
        event,
    };
    let payload = serde_json::to_string(&notice).expect("a notice serialises");
    if payload.len() <= MAX_PAYLOAD {
        return payload;
    }
    notice.event = Event::Resync;
    serde_json::to_string(&notice).expect("a notice serialises")
}

/// Serialises the transactions that write one document (held until commit or rollback).
async fn lock_document(tx: &Tx<'_>, doc_key: &str) -> StoreResult<()> {
    tx.run(
        "SELECT pg_advisory_xact_lock($1, hashtext($2))",
        &[&DOCUMENT_LOCK_SPACE, &doc_key],
    )
    .await?;
    Ok(())
}

/// Appends an audit entry inside the caller's transaction, under the audit lock (which the
/// transaction then holds until it ends, so the next appender, in any replica, reads this entry
/// as the head). Audited transactions call [`lock_audit`] first, before any other lock.
async fn audit_append(tx: &Tx<'_>, record: &Record) -> StoreResult<Entry> {
    lock_audit(tx).await?;
    let head = tx
        .query_opt(
            "SELECT seq, hash FROM audit_log ORDER BY seq DESC LIMIT 1",
            &[],
        )
        .await?;
    let (prev_seq, prev_hash) = match head {
        Some(row) => (row.get::<_, i64>(0) as u64, row.get::<_, String>(1)),
        None => (0, GENESIS.to_owned()),
    };
    let mut entry = Entry {
        seq: prev_seq + 1,
        at_ms: crate::now_ms(),
        actor: record.actor.clone(),
        action: record.action.to_owned(),
        target: record.target.clone(),
        details: record.details.to_string(),
        prev_hash,
        hash: String::new(),
    };
    entry.hash = entry.computed_hash();
    tx.run(
        "INSERT INTO audit_log (seq, at_ms, actor, action, target, details, prev_hash, hash) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        &[
            &(entry.seq as i64),
            &(entry.at_ms as i64),
            &entry.actor,
            &entry.action,
            &entry.target,
            &entry.details,
            &entry.prev_hash,
            &entry.hash,
        ],
    )
    .await?;
    Ok(entry)
}

async fn lock_audit(tx: &Tx<'_>) -> StoreResult<()> {
    tx.run("SELECT pg_advisory_xact_lock($1)", &[&AUDIT_LOCK])
        .await?;
    Ok(())
}

/// A transaction on a pooled connection.
type Tx<'a> = deadpool_postgres::Transaction<'a>;

/// Queries through the connection's statement cache (deadpool's `prepare_cached`): each
/// statement is parsed once per connection, and then costs one round trip. For the fixed SQL of
/// this module; the HQ queries built at run time go uncached.
trait Cached {
    async fn run(&self, sql: &str, params: &[&(dyn ToSql + Sync)]) -> StoreResult<u64>;
    async fn one(&self, sql: &str, params: &[&(dyn ToSql + Sync)]) -> StoreResult<Row>;
    async fn opt(&self, sql: &str, params: &[&(dyn ToSql + Sync)]) -> StoreResult<Option<Row>>;
    async fn all(&self, sql: &str, params: &[&(dyn ToSql + Sync)]) -> StoreResult<Vec<Row>>;
}

macro_rules! cached {
    ($($ty:ty),*) => {$(
        impl Cached for $ty {
            async fn run(&self, sql: &str, params: &[&(dyn ToSql + Sync)]) -> StoreResult<u64> {
                let statement = self.prepare_cached(sql).await?;
                Ok(self.execute(&statement, params).await?)
            }

            async fn one(&self, sql: &str, params: &[&(dyn ToSql + Sync)]) -> StoreResult<Row> {
                let statement = self.prepare_cached(sql).await?;
                Ok(self.query_one(&statement, params).await?)
            }

            async fn opt(
                &self,
                sql: &str,
                params: &[&(dyn ToSql + Sync)],
            ) -> StoreResult<Option<Row>> {
                let statement = self.prepare_cached(sql).await?;
                Ok(self.query_opt(&statement, params).await?)
            }

            async fn all(
                &self,
                sql: &str,
                params: &[&(dyn ToSql + Sync)],
            ) -> StoreResult<Vec<Row>> {
                let statement = self.prepare_cached(sql).await?;
                Ok(self.query(&statement, params).await?)
            }
        }
    )*};
}

cached!(Tx<'_>, deadpool_postgres::Object);

const STORE_COLUMNS: &str = "id, name, region, created_at_ms, enrolled_at_ms, last_sync_at_ms, \
                             revoked, credential_hash";

fn store_row(row: &tokio_postgres::Row) -> StoreRecord {
    StoreRecord {
        id: row.get(0),
        name: row.get(1),
        region: row.get(2),
        created_at_ms: row.get::<_, i64>(3) as u64,
        enrolled_at_ms: row.get::<_, Option<i64>>(4).map(|v| v as u64),
        last_sync_at_ms: row.get::<_, Option<i64>>(5).map(|v| v as u64),
        revoked: row.get(6),
        credential_hash: row.get(7),
    }
}

fn account_row(row: &tokio_postgres::Row) -> Account {
    Account {
        id: row.get(0),
        username: row.get(1),
        password_hash: row.get(2),
        role: row.get(3),
    }
}

fn strings(rows: Vec<tokio_postgres::Row>) -> Vec<String> {
    rows.iter().map(|r| r.get(0)).collect()
}

// The writes shared by the plain `HubStore` methods and their audited twins (`AuditLog`): each
// runs inside the caller's transaction.

async fn insert_account(
    tx: &Tx<'_>,
    username: &str,
    password_hash: &str,
    role: &str,
) -> StoreResult<String> {
    let id = ulid::Ulid::new().to_string();
    tx.run(
        "INSERT INTO accounts (id, username, password_hash, role, created_at_ms) \
         VALUES ($1, $2, $3, $4, $5)",
        &[
            &id,
            &username,
            &password_hash,
            &role,
            &(crate::now_ms() as i64),
        ],
    )
    .await?;
    Ok(id)
}

async fn insert_session(
    tx: &Tx<'_>,
    token_hash: &[u8],
    account_id: &str,
    expires_at_ms: u64,
) -> StoreResult<()> {
    tx.run(
        "DELETE FROM sessions WHERE expires_at_ms < $1",
        &[&(crate::now_ms() as i64)],
    )
    .await?;
    tx.run(
        "INSERT INTO sessions (token_hash, account_id, expires_at_ms) VALUES ($1, $2, $3)",
        &[&token_hash, &account_id, &(expires_at_ms as i64)],
    )
    .await?;
    Ok(())
}

async fn insert_store(tx: &Tx<'_>, store: &NewStore) -> StoreResult<bool> {
    let inserted = tx
        .execute(
            "INSERT INTO stores (id, name, region, created_at_ms, token_hash, \
             token_expires_at_ms) VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (id) DO NOTHING",
            &[
                &store.id,
                &store.name,
                &store.region,
                &(store.now_ms as i64),
                &store.token_hash,
                &(store.token_expires_at_ms as i64),
            ],
        )
        .await?;
    Ok(inserted == 1)
}

async fn enroll_in(
    tx: &Tx<'_>,
    store_id: &str,
    token_hash: &[u8],
    credential_hash: &[u8],
    now_ms: u64,
) -> StoreResult<EnrollOutcome> {
    // The row lock: two replicas enrolling with one token, one of them wins.
    let row = tx
        .query_opt(
            "SELECT token_hash, token_expires_at_ms, token_used, revoked FROM stores \
             WHERE id = $1 FOR UPDATE",
            &[&store_id],
        )
        .await?;
    let Some(row) = row else {
        return Ok(EnrollOutcome::UnknownStore);
    };
    let stored_hash: Vec<u8> = row.get(0);
    let expires = row.get::<_, i64>(1) as u64;
    let used: bool = row.get(2);
    let revoked: bool = row.get(3);
    Ok(if revoked {
        EnrollOutcome::Revoked
    } else if !crate::auth::hashes_equal(&stored_hash, token_hash) {
        EnrollOutcome::BadToken
    } else if used {
        EnrollOutcome::TokenUsed
    } else if expires <= now_ms {
        EnrollOutcome::TokenExpired
    } else {
        tx.run(
            "UPDATE stores SET token_used = true, credential_hash = $2, enrolled_at_ms = $3 \
             WHERE id = $1",
            &[&store_id, &credential_hash, &(now_ms as i64)],
        )
        .await?;
        EnrollOutcome::Enrolled
    })
}

async fn revoke(tx: &Tx<'_>, replica: &str, store_id: &str) -> StoreResult<bool> {
    let revoked = tx
        .execute(
            "UPDATE stores SET revoked = true, credential_hash = NULL WHERE id = $1",
            &[&store_id],
        )
        .await?
        == 1;
    if revoked {
        notify(
            tx,
            replica,
            Event::Revoked {
                store_id: store_id.to_owned(),
            },
        )
        .await?;
    }
    Ok(revoked)
}

/// Appends the next chunk of a document (numbered after the last; the caller holds the
/// document's lock).
async fn append_chunk(tx: &Tx<'_>, doc_key: &str, chunk: &[u8]) -> StoreResult<()> {
    tx.run(
        "INSERT INTO doc_chunks (doc_key, seq, bytes) \
         SELECT $1, coalesce(max(seq), 0) + 1, $2 FROM doc_chunks WHERE doc_key = $1",
        &[&doc_key, &chunk],
    )
    .await?;
    Ok(())
}

async fn store_document(
    tx: &Tx<'_>,
    replica: &str,
    doc_key: &str,
    origin_store: &str,
    chunk: &[u8],
    heads: &[u8],
    now_ms: u64,
) -> StoreResult<()> {
    lock_document(tx, doc_key).await?;
    // As SQLite's: a new row starts at version 0 (the column's default), an update bumps it.
    let origin: String = tx
        .query_one(
            "INSERT INTO documents (key, origin_store, heads, created_at_ms, updated_at_ms) \
             VALUES ($1, $2, $3, $4, $4) \
             ON CONFLICT (key) DO UPDATE SET heads = excluded.heads, \
             updated_at_ms = excluded.updated_at_ms, version = documents.version + 1 \
             RETURNING origin_store",
            &[&doc_key, &origin_store, &heads, &(now_ms as i64)],
        )
        .await?
        .get(0);
    if !chunk.is_empty() {
        append_chunk(tx, doc_key, chunk).await?;
        notify(
            tx,
            replica,
            Event::DocumentChanged {
                doc_key: doc_key.to_owned(),
                origin_store: origin,
            },
        )
        .await?;
    }
    Ok(())
}

/// The region layer, unless one of the same or a higher version is stored (`false` then). One
/// statement: the row's lock orders two replicas' writes, and the later version stays.
async fn put_region_settings(tx: &Tx<'_>, settings: &RegionSettings) -> StoreResult<bool> {
    Ok(tx.run(
        "INSERT INTO region_settings (id, version, layer, updated_at_ms) VALUES (1, $1, $2, $3) \
         ON CONFLICT (id) DO UPDATE SET version = excluded.version, layer = excluded.layer, \
         updated_at_ms = excluded.updated_at_ms WHERE excluded.version > region_settings.version",
        &[
            &(settings.version as i64),
            &settings.layer,
            &(crate::now_ms() as i64),
        ],
    )
    .await?
        == 1)
}

/// One synced round (SQLite's `write_synced`): `None` when the document is erased (nothing is
/// written; the caller rolls back).
async fn write_synced(tx: &Tx<'_>, replica: &str, w: &SyncWrite) -> StoreResult<Option<SyncSaved>> {
    // Under the document's lock an erasure either committed before (its tombstone is seen
    // here) or runs after this round, erasing it with the rest.
    lock_document(tx, &w.doc_key).await?;
    if tx
        .query_opt(
            "SELECT 1 FROM erased_documents WHERE doc_key = $1",
            &[&w.doc_key],
        )
        .await?
        .is_some()
    {
        return Ok(None);
    }
    let now = w.now_ms as i64;
    let created = tx
        .execute(
            "INSERT INTO documents (key, origin_store, heads, created_at_ms, updated_at_ms, \
             version) VALUES ($1, $2, $3, $4, $4, 1) ON CONFLICT (key) DO NOTHING",
            &[&w.doc_key, &w.origin_store, &w.heads, &now],
        )
        .await?
        == 1;
    let row = tx
        .query_one(
            "SELECT version, heads, origin_store FROM documents WHERE key = $1 FOR UPDATE",
            &[&w.doc_key],
        )
        .await?;
    let origin_store: String = row.get(2);
    let (stale, version) = if created {
        (false, 1)
    } else {
        let version: i64 = row.get(0);
        let stored_heads: Vec<u8> = row.get(1);
        let stale = w.expected_version != Some(version);
        let heads = if stale {
            super::union_heads(&stored_heads, &w.heads)
        } else {
            w.heads.clone()
        };
        tx.run(
            "UPDATE documents SET heads = $2, updated_at_ms = $3, version = $4 WHERE key = $1",
            &[&w.doc_key, &heads, &now, &(version + 1)],
        )
        .await?;
        (stale, version + 1)
    };
    if w.replace_chunks && !stale {
        tx.run("DELETE FROM doc_chunks WHERE doc_key = $1", &[&w.doc_key])
            .await?;
    }
    if !w.chunk.is_empty() {
        append_chunk(tx, &w.doc_key, &w.chunk).await?;
    }
    // Other replicas need to hear of a change only when a store other than the writer syncs
    // the document (its origin, or a store it was continued at): a NOTIFY takes a
    // database-wide lock at commit, so the common case (a store's own, unshared conversation)
    // goes without.
    let others_sync_it = !w.chunk.is_empty()
        && (w.store_id != origin_store
            || tx
                .query_opt(
                    "SELECT 1 FROM shares WHERE doc_key = $1 LIMIT 1",
                    &[&w.doc_key],
                )
                .await?
                .is_some());
    if others_sync_it {
        notify(
            tx,
            replica,
            Event::DocumentChanged {
                doc_key: w.doc_key.clone(),
                origin_store,
            },
        )
        .await?;
    }
    tx.run(
        "INSERT INTO sync_states (store_id, doc_key, state) VALUES ($1, $2, $3) \
         ON CONFLICT (store_id, doc_key) DO UPDATE SET state = excluded.state",
        &[&w.store_id, &w.doc_key, &w.sync_state],
    )
    .await?;
    if let Some(projection) = &w.projection {
        hq::write_projection(tx, projection).await?;
    }
    Ok(Some(SyncSaved {
        created,
        version,
        stale,
    }))
}

/// Deletes one document and everything derived from it (the caller holds its lock and keeps
/// its tombstone). `None` if the hub did not hold it.
///
/// The deleted rows stay in the table files as dead tuples until (auto)vacuum reclaims their
/// space for reuse; for the bytes to leave the disk at once, `VACUUM (FULL)` the tables (it
/// cannot run inside a transaction, and it locks them while it runs): docs/ explains it.
async fn erase_document(tx: &Tx<'_>, doc_key: &str) -> StoreResult<Option<ErasedDocument>> {
    let Some(row) = tx
        .query_opt(
            "SELECT origin_store FROM documents WHERE key = $1 FOR UPDATE",
            &[&doc_key],
        )
        .await?
    else {
        return Ok(None);
    };
    let mut holders: Vec<String> = vec![row.get(0)];
    for store in strings(
        tx.all(
            "SELECT store_id FROM shares WHERE doc_key = $1",
            &[&doc_key],
        )
        .await?,
    ) {
        if !holders.contains(&store) {
            holders.push(store);
        }
    }
    if let Some(id) = doc_key.strip_prefix("conversation:") {
        for sql in [
            "DELETE FROM messages WHERE conversation = $1",
            "DELETE FROM participants WHERE conversation = $1",
            "DELETE FROM conversations WHERE id = $1",
        ] {
            tx.run(sql, &[&id]).await?;
        }
    }
    for sql in [
        "DELETE FROM doc_chunks WHERE doc_key = $1",
        "DELETE FROM sync_states WHERE doc_key = $1",
        "DELETE FROM shares WHERE doc_key = $1",
        "DELETE FROM handoffs WHERE doc_key = $1",
        "DELETE FROM documents WHERE key = $1",
    ] {
        tx.run(sql, &[&doc_key]).await?;
    }
    Ok(Some(ErasedDocument {
        doc_key: doc_key.to_owned(),
        holders,
    }))
}

impl HubStore for PostgresStore {
    fn count_accounts(&self) -> BoxFuture<'_, StoreResult<u64>> {
        Box::pin(async move {
            let c = self.client().await?;
            let n: i64 = c
                .query_one("SELECT count(*) FROM accounts", &[])
                .await?
                .get(0);
            Ok(n as u64)
        })
    }

    fn create_account(
        &self,
        username: String,
        password_hash: String,
        role: String,
    ) -> BoxFuture<'_, StoreResult<String>> {
        Box::pin(async move {
            let mut c = self.client().await?;
            let tx = c.transaction().await?;
            let id = insert_account(&tx, &username, &password_hash, &role).await?;
            tx.commit().await?;
            Ok(id)
        })
    }

    fn account_by_username(&self, username: String) -> BoxFuture<'_, StoreResult<Option<Account>>> {
        Box::pin(async move {
            let c = self.client().await?;
            Ok(c.opt(
                "SELECT id, username, password_hash, role FROM accounts WHERE username = $1",
                &[&username],
            )
            .await?
            .as_ref()
            .map(account_row))
        })
    }

    fn create_session(
        &self,
        token_hash: Vec<u8>,
        account_id: String,
        expires_at_ms: u64,
    ) -> BoxFuture<'_, StoreResult<()>> {
        Box::pin(async move {
            let mut c = self.client().await?;
            let tx = c.transaction().await?;
            insert_session(&tx, &token_hash, &account_id, expires_at_ms).await?;
            tx.commit().await?;
            Ok(())
        })
    }

    fn session_account(
        &self,
        token_hash: Vec<u8>,
        now_ms: u64,
    ) -> BoxFuture<'_, StoreResult<Option<Account>>> {
        Box::pin(async move {
            let c = self.client().await?;
            Ok(c.opt(
                "SELECT a.id, a.username, a.password_hash, a.role FROM sessions s \
                 JOIN accounts a ON a.id = s.account_id \
                 WHERE s.token_hash = $1 AND s.expires_at_ms > $2",
                &[&token_hash, &(now_ms as i64)],
            )
            .await?
            .as_ref()
            .map(account_row))
        })
    }

    fn create_store(&self, store: NewStore) -> BoxFuture<'_, StoreResult<bool>> {
        Box::pin(async move {
            let mut c = self.client().await?;
            let tx = c.transaction().await?;
            let created = insert_store(&tx, &store).await?;
            tx.commit().await?;
            Ok(created)
        })
    }

    fn enroll(
        &self,
        store_id: String,
        token_hash: Vec<u8>,
        credential_hash: Vec<u8>,
        now_ms: u64,
    ) -> BoxFuture<'_, StoreResult<EnrollOutcome>> {
        Box::pin(async move {
            let mut c = self.client().await?;
            let tx = c.transaction().await?;
            let outcome = enroll_in(&tx, &store_id, &token_hash, &credential_hash, now_ms).await?;
            tx.commit().await?;
            Ok(outcome)
        })
    }

    fn revoke_store(&self, store_id: String) -> BoxFuture<'_, StoreResult<bool>> {
        Box::pin(async move {
            let mut c = self.client().await?;
            let tx = c.transaction().await?;
            let revoked = revoke(&tx, &self.replica_id, &store_id).await?;
            tx.commit().await?;
            Ok(revoked)
        })
    }

    fn store(&self, store_id: String) -> BoxFuture<'_, StoreResult<Option<StoreRecord>>> {
        Box::pin(async move {
            let c = self.client().await?;
            Ok(c.opt(
                &format!("SELECT {STORE_COLUMNS} FROM stores WHERE id = $1"),
                &[&store_id],
            )
            .await?
            .as_ref()
            .map(store_row))
        })
    }

    fn list_stores(&self) -> BoxFuture<'_, StoreResult<Vec<StoreRecord>>> {
        Box::pin(async move {
            let c = self.client().await?;
            let rows = c
                .query(
                    &format!("SELECT {STORE_COLUMNS} FROM stores ORDER BY id"),
                    &[],
                )
                .await?;
            Ok(rows.iter().map(store_row).collect())
        })
    }

    fn touch_store(&self, store_id: String, now_ms: u64) -> BoxFuture<'_, StoreResult<()>> {
        Box::pin(async move {
            let c = self.client().await?;
            c.run(
                "UPDATE stores SET last_sync_at_ms = $2 WHERE id = $1",
                &[&store_id, &(now_ms as i64)],
            )
            .await?;
            Ok(())
        })
    }

    fn manifest(&self, store_id: String) -> BoxFuture<'_, StoreResult<Vec<ManifestRow>>> {
        Box::pin(async move {
            let c = self.client().await?;
            let rows = c
                .query(
                    "SELECT key, heads FROM documents WHERE origin_store = $1 \
                     UNION SELECT d.key, d.heads FROM shares s JOIN documents d \
                     ON d.key = s.doc_key WHERE s.store_id = $1 ORDER BY 1",
                    &[&store_id],
                )
                .await?;
            Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
        })
    }

    fn load_document(&self, doc_key: String) -> BoxFuture<'_, StoreResult<Option<StoredDocument>>> {
        Box::pin(async move {
            let mut c = self.client().await?;
            // One snapshot: the version and the chunks it counts.
            let tx = c
                .build_transaction()
                .isolation_level(IsolationLevel::RepeatableRead)
                .read_only(true)
                .start()
                .await?;
            let Some(row) = tx
                .query_opt(
                    "SELECT origin_store, version FROM documents WHERE key = $1",
                    &[&doc_key],
                )
                .await?
            else {
                return Ok(None);
            };
            let mut bytes = Vec::new();
            for chunk in tx
                .query(
                    "SELECT bytes FROM doc_chunks WHERE doc_key = $1 ORDER BY seq",
                    &[&doc_key],
                )
                .await?
            {
                bytes.extend_from_slice(chunk.get::<_, &[u8]>(0));
            }
            tx.commit().await?;
            Ok(Some(StoredDocument {
                origin_store: row.get(0),
                bytes,
                version: row.get(1),
            }))
        })
    }

    fn sync_state(
        &self,
        store_id: String,
        doc_key: String,
    ) -> BoxFuture<'_, StoreResult<Option<Vec<u8>>>> {
        Box::pin(async move {
            let c = self.client().await?;
            Ok(c.opt(
                "SELECT state FROM sync_states WHERE store_id = $1 AND doc_key = $2",
                &[&store_id, &doc_key],
            )
            .await?
            .map(|r| r.get(0)))
        })
    }

    /// The write runs on a task of its own, not in the returned future: a sync session keeps
    /// up to 64 rounds' writes pending and polls them only between its own steps, and a
    /// transaction that waits to be polled holds a pooled connection and its locks (the
    /// store's row, the document's) while the session waits for a connection of the pool in
    /// turn — with the SQLite back end the writer thread works on its own anyway.
    fn save_synced(&self, w: SyncWrite) -> BoxFuture<'_, StoreResult<SyncSaved>> {
        let pool = self.pool.clone();
        let replica = self.replica_id.clone();
        let task = tokio::spawn(async move {
            let mut c = pool.get().await?;
            let tx = c.transaction().await?;
            let saved = match write_synced(&tx, &replica, &w).await? {
                Some(saved) => {
                    tx.commit().await?;
                    saved
                }
                // A round that raced an erasure of its document is dropped, never written
                // back: the store that sent it is told to erase its copy (sync.rs).
                None => {
                    tx.rollback().await?;
                    return Ok(SyncSaved {
                        created: false,
                        version: 0,
                        stale: false,
                    });
                }
            };
            // The store's last sync time, after the commit and at most once a second: inside
            // the transaction the store's row lock would serialise every round of the store.
            // The round is committed whatever happens here.
            if let Err(err) = c
                .run(
                    "UPDATE stores SET last_sync_at_ms = $2::bigint WHERE id = $1 \
                     AND (last_sync_at_ms IS NULL OR last_sync_at_ms < $2::bigint - 1000)",
                    &[&w.store_id, &(w.now_ms as i64)],
                )
                .await
            {
                tracing::warn!(store_id = %w.store_id, error = %err, "recording a store's last sync");
            }
            Ok(saved)
        });
        Box::pin(async move {
            task.await
                .map_err(|err| StoreError::Postgres(format!("a sync write's task failed: {err}")))?
        })
    }

    fn count_documents(&self) -> BoxFuture<'_, StoreResult<u64>> {
        Box::pin(async move {
            let c = self.client().await?;
            let n: i64 = c
                .query_one("SELECT count(*) FROM documents", &[])
                .await?
                .get(0);
            Ok(n as u64)
        })
    }

    fn register_handoff(&self, h: NewHandoff) -> BoxFuture<'_, StoreResult<()>> {
        Box::pin(async move {
            let c = self.client().await?;
            c.run(
                "INSERT INTO handoffs (code_hash, doc_key, store_id, expires_at_ms) \
                 VALUES ($1, $2, $3, $4) ON CONFLICT (code_hash) DO NOTHING",
                &[
                    &h.code_hash,
                    &h.doc_key,
                    &h.store_id,
                    &(h.expires_at_ms as i64),
                ],
            )
            .await?;
            Ok(())
        })
    }

    fn redeem_handoff(
        &self,
        code_hash: Vec<u8>,
        store_id: String,
        now_ms: u64,
    ) -> BoxFuture<'_, StoreResult<Redeemed>> {
        Box::pin(async move {
            let mut c = self.client().await?;
            let tx = c.transaction().await?;
            // The document's lock before the code's row lock (the order an erasure, which
            // deletes the document's codes, takes them in); the code's document never changes.
            let Some(doc) = tx
                .query_opt(
                    "SELECT doc_key FROM handoffs WHERE code_hash = $1",
                    &[&code_hash],
                )
                .await?
            else {
                return Ok(Redeemed::Unknown);
            };
            lock_document(&tx, doc.get(0)).await?;
            // The row lock: two replicas redeeming one code, one of them first (and a code
            // erased meanwhile is gone).
            let Some(row) = tx
                .query_opt(
                    "SELECT doc_key, store_id, expires_at_ms, used_at_ms, used_by FROM handoffs \
                     WHERE code_hash = $1 FOR UPDATE",
                    &[&code_hash],
                )
                .await?
            else {
                return Ok(Redeemed::Unknown);
            };
            let doc_key: String = row.get(0);
            let issuer: String = row.get(1);
            let expires: i64 = row.get(2);
            let used: Option<i64> = row.get(3);
            let used_by: Option<String> = row.get(4);
            // A retry by the store that redeemed it (its first answer was lost) gets the same
            // answer again.
            let retry = used.is_some() && used_by.as_deref() == Some(store_id.as_str());
            if used.is_some() && !retry {
                return Ok(Redeemed::Used);
            }
            if expires as u64 <= now_ms && !retry {
                return Ok(Redeemed::Expired);
            }
            let mark_used =
                "UPDATE handoffs SET used_at_ms = $2, used_by = $3 WHERE code_hash = $1";
            if issuer == store_id {
                tx.run(mark_used, &[&code_hash, &(now_ms as i64), &store_id])
                    .await?;
                tx.commit().await?;
                return Ok(Redeemed::Own);
            }
            let origin = tx
                .query_opt(
                    "SELECT origin_store FROM documents WHERE key = $1 AND (origin_store = $2 \
                     OR EXISTS (SELECT 1 FROM shares WHERE doc_key = $1 AND store_id = $2))",
                    &[&doc_key, &issuer],
                )
                .await?;
            let Some(origin) = origin else {
                return Ok(Redeemed::NotSynced);
            };
            let origin_store: String = origin.get(0);
            tx.run(mark_used, &[&code_hash, &(now_ms as i64), &store_id])
                .await?;
            if origin_store != store_id {
                let shared = tx
                    .execute(
                        "INSERT INTO shares (doc_key, store_id, granted_at_ms) VALUES ($1, $2, $3) \
                         ON CONFLICT (doc_key, store_id) DO NOTHING",
                        &[&doc_key, &store_id, &(now_ms as i64)],
                    )
                    .await?;
                if shared == 1 {
                    let event = Event::Shared {
                        doc_key: doc_key.clone(),
                        store_id: store_id.clone(),
                    };
                    notify(&tx, &self.replica_id, event).await?;
                }
            }
            tx.commit().await?;
            Ok(Redeemed::Shared {
                doc_key,
                origin_store,
            })
        })
    }

    fn shares(&self) -> BoxFuture<'_, StoreResult<Vec<(String, String)>>> {
        Box::pin(async move {
            let c = self.client().await?;
            let rows = c.all("SELECT doc_key, store_id FROM shares", &[]).await?;
            Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
        })
    }

    fn shared_with(&self, doc_key: String) -> BoxFuture<'_, StoreResult<Vec<String>>> {
        Box::pin(async move {
            let c = self.client().await?;
            Ok(strings(
                c.all(
                    "SELECT store_id FROM shares WHERE doc_key = $1 ORDER BY 1",
                    &[&doc_key],
                )
                .await?,
            ))
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
        Box::pin(async move {
            let mut c = self.client().await?;
            let tx = c.transaction().await?;
            store_document(
                &tx,
                &self.replica_id,
                &doc_key,
                &origin_store,
                &chunk,
                &heads,
                now_ms,
            )
            .await?;
            tx.commit().await?;
            Ok(())
        })
    }

    fn unprojected_documents(&self) -> BoxFuture<'_, StoreResult<Vec<String>>> {
        Box::pin(async move {
            let c = self.client().await?;
            Ok(strings(
                c.all(
                    "SELECT d.key FROM documents d LEFT JOIN conversations c \
                     ON c.id = substr(d.key, length('conversation:') + 1) \
                     WHERE d.key LIKE 'conversation:%' AND c.id IS NULL ORDER BY d.key",
                    &[],
                )
                .await?,
            ))
        })
    }

    fn save_projection(&self, projection: Projection) -> BoxFuture<'_, StoreResult<()>> {
        Box::pin(async move {
            let mut c = self.client().await?;
            let tx = c.transaction().await?;
            let key = format!("conversation:{}", projection.conversation.id);
            lock_document(&tx, &key).await?;
            hq::write_projection(&tx, &projection).await?;
            tx.commit().await?;
            Ok(())
        })
    }

    fn list_conversations(
        &self,
        filter: ConversationFilter,
    ) -> BoxFuture<'_, StoreResult<Vec<ConversationSummary>>> {
        Box::pin(async move {
            let c = self.client().await?;
            hq::list_conversations(&c, &filter).await
        })
    }

    fn conversation_detail(
        &self,
        id: String,
    ) -> BoxFuture<'_, StoreResult<Option<ConversationDetail>>> {
        Box::pin(async move {
            let mut c = self.client().await?;
            let tx = c
                .build_transaction()
                .isolation_level(IsolationLevel::RepeatableRead)
                .read_only(true)
                .start()
                .await?;
            let detail = hq::conversation_detail(&tx, &id).await?;
            tx.commit().await?;
            Ok(detail)
        })
    }

    fn search_messages(
        &self,
        query: SearchQuery,
    ) -> BoxFuture<'_, StoreResult<(SearchMethod, Vec<SearchHit>)>> {
        Box::pin(async move {
            let c = self.client().await?;
            hq::search_messages(&c, &query).await
        })
    }

    fn figures(&self, query: FiguresQuery) -> BoxFuture<'_, StoreResult<Figures>> {
        Box::pin(async move {
            let mut c = self.client().await?;
            let tx = c
                .build_transaction()
                .isolation_level(IsolationLevel::RepeatableRead)
                .read_only(true)
                .start()
                .await?;
            let figures = hq::figures(&tx, &query).await?;
            tx.commit().await?;
            Ok(figures)
        })
    }

    fn erase_documents(&self, erase: Erasure) -> BoxFuture<'_, StoreResult<Vec<ErasedDocument>>> {
        Box::pin(async move {
            let mut c = self.client().await?;
            let tx = c.transaction().await?;
            // The audit lock first (the order every transaction takes locks in); it also
            // serialises erasures, so two replicas sweeping the same expired documents erase
            // each once and the second finds only tombstones.
            lock_audit(&tx).await?;
            let mut erased = Vec::new();
            for key in &erase.doc_keys {
                lock_document(&tx, key).await?;
                if let Some(doc) = erase_document(&tx, key).await? {
                    // Recorded with the key and why, never what was erased.
                    let record = Record::new(
                        erase.requested_by.clone(),
                        "document_erased",
                        key,
                        serde_json::json!({ "reason": erase.reason, "holders": doc.holders }),
                    );
                    audit_append(&tx, &record).await?;
                    let event = Event::Erased {
                        doc_key: doc.doc_key.clone(),
                        holders: doc.holders.clone(),
                    };
                    notify(&tx, &self.replica_id, event).await?;
                    erased.push(doc);
                }
                tx.run(
                    "INSERT INTO erased_documents (doc_key, erased_at_ms, reason, requested_by) \
                     VALUES ($1, $2, $3, $4) ON CONFLICT (doc_key) DO NOTHING",
                    &[
                        key,
                        &(erase.now_ms as i64),
                        &erase.reason,
                        &erase.requested_by,
                    ],
                )
                .await?;
            }
            tx.commit().await?;
            // No equivalent of SQLite's WAL truncation: the erased rows are dead tuples until
            // autovacuum reclaims them, and their bytes leave the disk only with a
            // `VACUUM (FULL)` (which cannot run inside a transaction).
            Ok(erased)
        })
    }

    fn erased(&self, doc_keys: Vec<String>) -> BoxFuture<'_, StoreResult<Vec<String>>> {
        Box::pin(async move {
            let c = self.client().await?;
            let found: std::collections::HashSet<String> = strings(
                c.all(
                    "SELECT doc_key FROM erased_documents WHERE doc_key = ANY($1)",
                    &[&doc_keys],
                )
                .await?,
            )
            .into_iter()
            .collect();
            Ok(doc_keys.into_iter().filter(|k| found.contains(k)).collect())
        })
    }

    fn customer_documents(&self, customer_id: String) -> BoxFuture<'_, StoreResult<Vec<String>>> {
        Box::pin(async move {
            let c = self.client().await?;
            Ok(strings(
                c.all(
                    "SELECT 'conversation:' || id FROM conversations WHERE customer_id = $1 \
                     ORDER BY id",
                    &[&customer_id],
                )
                .await?,
            ))
        })
    }

    fn expired_documents(
        &self,
        resolved_before_ms: u64,
        limit: usize,
    ) -> BoxFuture<'_, StoreResult<Vec<String>>> {
        Box::pin(async move {
            let c = self.client().await?;
            Ok(strings(
                c.all(
                    "SELECT 'conversation:' || id FROM conversations \
                     WHERE status = 'resolved' AND resolved_at_ms < $1 \
                     ORDER BY resolved_at_ms LIMIT $2",
                    &[
                        &(resolved_before_ms.min(i64::MAX as u64) as i64),
                        &(limit.min(i64::MAX as usize) as i64),
                    ],
                )
                .await?,
            ))
        })
    }

    /// Every replica on the database shares one identity: the first to ask stores its
    /// proposal, the others get that one.
    fn identity(&self, proposed: String) -> BoxFuture<'_, StoreResult<String>> {
        Box::pin(async move {
            let c = self.client().await?;
            c.run(
                "INSERT INTO hub_meta (name, value) VALUES ('identity', $1) \
                 ON CONFLICT (name) DO NOTHING",
                &[&proposed],
            )
            .await?;
            Ok(
                c.one("SELECT value FROM hub_meta WHERE name = 'identity'", &[])
                    .await?
                    .get(0),
            )
        })
    }

    fn region_settings(&self) -> BoxFuture<'_, StoreResult<Option<RegionSettings>>> {
        Box::pin(async move {
            let c = self.client().await?;
            Ok(c.opt(
                "SELECT version, layer FROM region_settings WHERE id = 1",
                &[],
            )
            .await?
            .map(|r| RegionSettings {
                version: r.get::<_, i64>(0) as u64,
                layer: r.get(1),
            }))
        })
    }

    fn put_region_settings(&self, settings: RegionSettings) -> BoxFuture<'_, StoreResult<bool>> {
        Box::pin(async move {
            let mut c = self.client().await?;
            let tx = c.transaction().await?;
            let stored = put_region_settings(&tx, &settings).await?;
            tx.commit().await?;
            Ok(stored)
        })
    }

    fn events(&self) -> Option<broadcast::Receiver<ReplicaEvent>> {
        Some(self.events.subscribe())
    }
}

/// Each audited write and its entry in one transaction, the audit lock taken first.
impl AuditLog for PostgresStore {
    fn append(&self, record: Record) -> BoxFuture<'_, StoreResult<Entry>> {
        Box::pin(async move {
            let mut c = self.client().await?;
            let tx = c.transaction().await?;
            let entry = audit_append(&tx, &record).await?;
            tx.commit().await?;
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
        Box::pin(async move {
            let mut c = self.client().await?;
            let tx = c.transaction().await?;
            lock_audit(&tx).await?;
            let id = insert_account(&tx, &username, &password_hash, &role).await?;
            let details = serde_json::json!({ "username": username, "role": role });
            let record = Record::new(by, "hq_account_created", &id, details);
            audit_append(&tx, &record).await?;
            tx.commit().await?;
            Ok(id)
        })
    }

    fn audited_login(
        &self,
        token_hash: Vec<u8>,
        account_id: String,
        expires_at_ms: u64,
    ) -> BoxFuture<'_, StoreResult<()>> {
        Box::pin(async move {
            let mut c = self.client().await?;
            let tx = c.transaction().await?;
            lock_audit(&tx).await?;
            insert_session(&tx, &token_hash, &account_id, expires_at_ms).await?;
            let record = Record::new(
                audit::actor::hq(&account_id),
                "hq_login",
                &account_id,
                serde_json::json!({}),
            );
            audit_append(&tx, &record).await?;
            tx.commit().await?;
            Ok(())
        })
    }

    fn audited_create_store(
        &self,
        store: NewStore,
        by: String,
    ) -> BoxFuture<'_, StoreResult<bool>> {
        Box::pin(async move {
            let mut c = self.client().await?;
            let tx = c.transaction().await?;
            lock_audit(&tx).await?;
            let created = insert_store(&tx, &store).await?;
            if created {
                let details = serde_json::json!({ "name": store.name, "region": store.region });
                let record = Record::new(by, "store_created", &store.id, details);
                audit_append(&tx, &record).await?;
            }
            tx.commit().await?;
            Ok(created)
        })
    }

    fn audited_revoke_store(
        &self,
        store_id: String,
        by: String,
    ) -> BoxFuture<'_, StoreResult<bool>> {
        Box::pin(async move {
            let mut c = self.client().await?;
            let tx = c.transaction().await?;
            lock_audit(&tx).await?;
            let revoked = revoke(&tx, &self.replica_id, &store_id).await?;
            if revoked {
                let record = Record::new(by, "store_revoked", &store_id, serde_json::json!({}));
                audit_append(&tx, &record).await?;
            }
            tx.commit().await?;
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
        Box::pin(async move {
            let mut c = self.client().await?;
            let tx = c.transaction().await?;
            lock_audit(&tx).await?;
            let outcome = enroll_in(&tx, &store_id, &token_hash, &credential_hash, now_ms).await?;
            let record = audit::enrollment_record(&store_id, outcome);
            audit_append(&tx, &record).await?;
            tx.commit().await?;
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
        Box::pin(async move {
            let mut c = self.client().await?;
            let tx = c.transaction().await?;
            lock_audit(&tx).await?;
            store_document(
                &tx,
                &self.replica_id,
                &doc_key,
                &origin_store,
                &chunk,
                &heads,
                now_ms,
            )
            .await?;
            audit_append(&tx, &record).await?;
            tx.commit().await?;
            Ok(())
        })
    }

    fn audited_put_region_settings(
        &self,
        settings: RegionSettings,
        record: Record,
    ) -> BoxFuture<'_, StoreResult<bool>> {
        Box::pin(async move {
            let mut c = self.client().await?;
            let tx = c.transaction().await?;
            lock_audit(&tx).await?;
            let stored = put_region_settings(&tx, &settings).await?;
            if stored {
                audit_append(&tx, &record).await?;
            }
            tx.commit().await?;
            Ok(stored)
        })
    }

    /// There is no anchor file beside a shared database: the head is read from the table.
    fn page(
        &self,
        after: u64,
        limit: usize,
    ) -> BoxFuture<'_, StoreResult<(Vec<Entry>, Option<Anchor>)>> {
        Box::pin(async move {
            let mut c = self.client().await?;
            let tx = c
                .build_transaction()
                .isolation_level(IsolationLevel::RepeatableRead)
                .read_only(true)
                .start()
                .await?;
            let entries = tx
                .query(
                    "SELECT seq, at_ms, actor, action, target, details, prev_hash, hash \
                     FROM audit_log WHERE seq > $1 ORDER BY seq LIMIT $2",
                    &[
                        &(after.min(i64::MAX as u64) as i64),
                        &(limit.min(i64::MAX as usize) as i64),
                    ],
                )
                .await?
                .iter()
                .map(entry_row)
                .collect();
            let head = tx
                .query_opt(
                    "SELECT seq, hash FROM audit_log ORDER BY seq DESC LIMIT 1",
                    &[],
                )
                .await?
                .map(|r| Anchor {
                    seq: r.get::<_, i64>(0) as u64,
                    hash: r.get(1),
                });
            tx.commit().await?;
            Ok((entries, head))
        })
    }
}
