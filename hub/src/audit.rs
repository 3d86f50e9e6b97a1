//! The hub's tamper-evident audit log: HQ logins, stores registered, enrolled and revoked, HQ's
//! canned replies, as an append-only, hash-chained table (`audit_log`).
//!
//! The chain, its canonical encoding and its anchor are the edge's (`aisle-edge`'s
//! `audit.rs` documents them; both must stay byte-for-byte the same): each entry's `hash` is
//! the SHA-256 of the netstrings (`<byte length>:<bytes>,`) of `aisle-audit-1`, `seq`,
//! `at_ms`, `actor`, `action`, `target`, `details` (as stored) and `prev_hash`, as lowercase
//! hex; the first entry's `prev_hash` is [`GENESIS`]. The head is kept beside the database
//! (`<db>.audit-head`) after each commit that appended.
//!
//! Actors here: `hq:<account id>`, `store:<store id>`, `system`, `anonymous`.
//!
//! Entries are written by the store's writer thread inside the transaction of the action they
//! record: [`AuditLog`] is the part of the SQLite store that writes an action together with
//! its entry (the plain [`crate::store::HubStore`] methods write without one, for code that
//! acts on no one's behalf).

use std::cell::Cell;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use axum::extract::{Query, State};
use axum::http::HeaderMap;
use axum::{Extension, Json};
use futures_util::future::BoxFuture;
use rusqlite::{Connection, OpenFlags, OptionalExtension, params};
use serde::Serialize;
use serde_json::{Value, json};

use crate::api::{ROLE_ADMIN, authorize};
use crate::error::{ApiError, Code};
use crate::store::{EnrollOutcome, NewStore, StoreResult};
use crate::{App, now_ms};

/// The `prev_hash` of the first entry.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

const FORMAT: &str = "aisle-audit-1";

/// Who acted, as the `actor` column spells it.
pub mod actor {
    /// An HQ account.
    pub fn hq(account_id: &str) -> String {
        format!("hq:{account_id}")
    }

    /// A store, with its credential or enrollment token.
    pub fn store(store_id: &str) -> String {
        format!("store:{store_id}")
    }

    pub const SYSTEM: &str = "system";
    /// Someone not signed in (a failed login, an enrollment for an unknown store).
    pub const ANONYMOUS: &str = "anonymous";
}

/// An entry to append: everything but what the chain fills in.
#[derive(Clone, Debug)]
pub struct Record {
    pub actor: String,
    pub action: &'static str,
    pub target: String,
    /// Small JSON: ids, names, reasons; never passwords or message text.
    pub details: Value,
}

impl Record {
    pub fn new(actor: String, action: &'static str, target: &str, details: Value) -> Record {
        Record {
            actor,
            action,
            target: target.to_owned(),
            details,
        }
    }
}

/// The writes HQ and stores make that are audited, each with its entry in one transaction.
/// Implemented by the SQLite store (`store/sqlite.rs`); handlers reach it as an axum
/// `Extension<Arc<dyn AuditLog>>`.
pub trait AuditLog: Send + Sync + 'static {
    /// Appends an entry on its own (an action that writes nothing else: a refused login).
    fn append(&self, record: Record) -> BoxFuture<'_, StoreResult<Entry>>;
    /// An HQ account and its `hq_account_created` entry (by `by`).
    fn audited_create_account(
        &self,
        username: String,
        password_hash: String,
        role: String,
        by: String,
    ) -> BoxFuture<'_, StoreResult<String>>;
    /// An HQ session and its `hq_login` entry.
    fn audited_login(
        &self,
        token_hash: Vec<u8>,
        account_id: String,
        expires_at_ms: u64,
    ) -> BoxFuture<'_, StoreResult<()>>;
    /// Registers a store; `store_created` by `by` when it was new.
    fn audited_create_store(&self, store: NewStore, by: String)
    -> BoxFuture<'_, StoreResult<bool>>;
    /// Revokes a store; `store_revoked` by `by` when it exists.
    fn audited_revoke_store(
        &self,
        store_id: String,
        by: String,
    ) -> BoxFuture<'_, StoreResult<bool>>;
    /// An enrollment and its entry: `store_enrolled`, or `store_enrollment_refused` with the
    /// reason.
    fn audited_enroll(
        &self,
        store_id: String,
        token_hash: Vec<u8>,
        credential_hash: Vec<u8>,
        now_ms: u64,
    ) -> BoxFuture<'_, StoreResult<EnrollOutcome>>;
    /// A settings document change (HQ's canned replies) and its entry.
    fn audited_save_document(
        &self,
        doc_key: String,
        origin_store: String,
        chunk: Vec<u8>,
        heads: Vec<u8>,
        now_ms: u64,
        record: Record,
    ) -> BoxFuture<'_, StoreResult<()>>;
    /// Entries after `after`, oldest first, and the head.
    fn page(
        &self,
        after: u64,
        limit: usize,
    ) -> BoxFuture<'_, StoreResult<(Vec<Entry>, Option<Anchor>)>>;
}

/// The handle handlers take.
pub type Audit = Extension<Arc<dyn AuditLog>>;

/// The name `enroll`'s refusals are recorded under.
pub fn refusal_reason(outcome: EnrollOutcome) -> Option<&'static str> {
    match outcome {
        EnrollOutcome::Enrolled => None,
        EnrollOutcome::UnknownStore => Some("unknown_store"),
        EnrollOutcome::BadToken => Some("bad_token"),
        EnrollOutcome::TokenUsed => Some("token_used"),
        EnrollOutcome::TokenExpired => Some("token_expired"),
        EnrollOutcome::Revoked => Some("revoked"),
    }
}

#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    #[error("opening the database {path}: {source}")]
    Open {
        path: PathBuf,
        source: rusqlite::Error,
    },
    #[error("reading the audit log: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("the database has no audit log (schema older than the audit migration)")]
    NoLog,
}

/// One entry as stored.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Entry {
    pub seq: u64,
    pub at_ms: u64,
    pub actor: String,
    pub action: String,
    pub target: String,
    /// Compact JSON text (parsed when shown by the API).
    #[serde(serialize_with = "details_as_json")]
    pub details: String,
    pub prev_hash: String,
    pub hash: String,
}

fn details_as_json<S: serde::Serializer>(details: &str, s: S) -> Result<S::Ok, S::Error> {
    serde_json::from_str::<Value>(details)
        .unwrap_or(Value::String(details.to_owned()))
        .serialize(s)
}

impl Entry {
    pub fn computed_hash(&self) -> String {
        entry_hash(
            self.seq,
            self.at_ms,
            &self.actor,
            &self.action,
            &self.target,
            &self.details,
            &self.prev_hash,
        )
    }
}

/// SHA-256 over the canonical encoding (module docs), as lowercase hex.
pub fn entry_hash(
    seq: u64,
    at_ms: u64,
    actor: &str,
    action: &str,
    target: &str,
    details: &str,
    prev_hash: &str,
) -> String {
    let mut text = String::with_capacity(160 + details.len());
    for field in [
        FORMAT,
        &seq.to_string(),
        &at_ms.to_string(),
        actor,
        action,
        target,
        details,
        prev_hash,
    ] {
        let _ = write!(text, "{}:{field},", field.len());
    }
    // The SHA-256 of the text (the same digest the hub stores of its secrets).
    crate::auth::secret_hash(&text)
        .iter()
        .fold(String::with_capacity(64), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
}

thread_local! {
    /// Set by [`append`] on the writer thread; [`anchor_after_commit`] writes the anchor once
    /// the job's transaction is over.
    static APPENDED: Cell<bool> = const { Cell::new(false) };
}

/// Appends an entry inside the caller's transaction (on the writer thread) and returns it.
/// This is the one way entries are written; the retention sweep calls it too, in the
/// transaction that deletes.
pub fn append(db: &Connection, record: &Record) -> rusqlite::Result<Entry> {
    let (prev_seq, prev_hash) = head(db)?.unwrap_or((0, GENESIS.to_owned()));
    let mut entry = Entry {
        seq: prev_seq + 1,
        at_ms: now_ms(),
        actor: record.actor.clone(),
        action: record.action.to_owned(),
        target: record.target.clone(),
        details: record.details.to_string(),
        prev_hash,
        hash: String::new(),
    };
    entry.hash = entry.computed_hash();
    db.prepare_cached(
        "INSERT INTO audit_log (seq, at_ms, actor, action, target, details, prev_hash, hash)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
    )?
    .execute(params![
        entry.seq as i64,
        entry.at_ms as i64,
        entry.actor,
        entry.action,
        entry.target,
        entry.details,
        entry.prev_hash,
        entry.hash
    ])?;
    APPENDED.with(|a| a.set(true));
    Ok(entry)
}

/// The last entry's `(seq, hash)`, if any.
pub fn head(db: &Connection) -> rusqlite::Result<Option<(u64, String)>> {
    db.prepare_cached("SELECT seq, hash FROM audit_log ORDER BY seq DESC LIMIT 1")?
        .query_row([], |r| Ok((r.get::<_, i64>(0)? as u64, r.get(1)?)))
        .optional()
}

/// Entries after `after`, oldest first, at most `limit`.
pub fn page(db: &Connection, after: u64, limit: usize) -> rusqlite::Result<Vec<Entry>> {
    let mut statement = db.prepare_cached(
        "SELECT seq, at_ms, actor, action, target, details, prev_hash, hash
         FROM audit_log WHERE seq > ?1 ORDER BY seq LIMIT ?2",
    )?;
    let rows = statement.query_map(params![after as i64, limit as i64], entry_row)?;
    rows.collect()
}

fn entry_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Entry> {
    Ok(Entry {
        seq: r.get::<_, i64>(0)? as u64,
        at_ms: r.get::<_, i64>(1)? as u64,
        actor: r.get(2)?,
        action: r.get(3)?,
        target: r.get(4)?,
        details: r.get(5)?,
        prev_hash: r.get(6)?,
        hash: r.get(7)?,
    })
}

/// The latest committed head, kept beside the database (`<db>.audit-head`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct Anchor {
    pub seq: u64,
    pub hash: String,
}

pub fn anchor_path(db: &Path) -> PathBuf {
    let mut name = db.as_os_str().to_owned();
    name.push(".audit-head");
    PathBuf::from(name)
}

fn read_anchor(db: &Path) -> Option<Anchor> {
    let text = std::fs::read_to_string(anchor_path(db)).ok()?;
    serde_json::from_str(&text).ok()
}

/// After a writer job (committed or not): if it appended entries, writes the committed head
/// to the anchor file (temporary file + rename, not fsynced: a crash can leave the anchor
/// behind the log, which verify accepts, never ahead of it).
pub fn anchor_after_commit(db: &Connection) {
    if !APPENDED.with(|a| a.replace(false)) {
        return;
    }
    let Some(path) = db.path().filter(|p| !p.is_empty()).map(PathBuf::from) else {
        return;
    };
    let head = match head(db) {
        Ok(Some((seq, hash))) => Anchor { seq, hash },
        Ok(None) => return,
        Err(err) => {
            tracing::warn!(error = %err, "reading the audit head for its anchor");
            return;
        }
    };
    let target = anchor_path(&path);
    let mut temporary = target.as_os_str().to_owned();
    temporary.push(".tmp");
    let temporary = PathBuf::from(temporary);
    let text = serde_json::to_string(&head).expect("an anchor serialises");
    if let Err(err) =
        std::fs::write(&temporary, text).and_then(|()| std::fs::rename(&temporary, &target))
    {
        tracing::warn!(error = %err, path = %target.display(), "writing the audit anchor");
    }
}

/// At start, before anything is appended: a log cut or rewritten behind its anchor while the
/// hub was stopped is recorded (`audit_anchor_mismatch`) and logged, so the next entry does
/// not silently take the removed seq.
pub fn check_anchor_at_start(db: &Connection) -> rusqlite::Result<()> {
    let Some(path) = db.path().filter(|p| !p.is_empty()).map(PathBuf::from) else {
        return Ok(());
    };
    let Some(anchor) = read_anchor(&path) else {
        return Ok(());
    };
    let at_anchor: Option<String> = db
        .query_row(
            "SELECT hash FROM audit_log WHERE seq = ?1",
            [anchor.seq as i64],
            |r| r.get(0),
        )
        .optional()?;
    if at_anchor.as_deref() == Some(anchor.hash.as_str()) {
        return Ok(());
    }
    let last = head(db)?.map(|(seq, _)| seq).unwrap_or(0);
    tracing::error!(
        anchor_seq = anchor.seq,
        anchor_hash = %anchor.hash,
        last_seq = last,
        "the audit log does not reach its anchor: entries were removed or rewritten while the hub was stopped"
    );
    let record = Record::new(
        actor::SYSTEM.into(),
        "audit_anchor_mismatch",
        "",
        json!({ "anchor_seq": anchor.seq, "anchor_hash": anchor.hash, "last_seq": last }),
    );
    append(db, &record)?;
    Ok(())
}

/// Why verification stopped at an entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Fault {
    Edited,
    Removed,
    Reordered,
}

/// What `aisle-hub audit verify` prints.
#[derive(Clone, Debug, Serialize)]
pub struct Report {
    pub entries: u64,
    pub ok: bool,
    pub head: String,
    pub anchor: Option<Anchor>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub first_bad_seq: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<Fault>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

/// Walks the chain of the database at `db`, opened read-only (safe beside a running hub).
pub fn verify_file(db: &Path) -> Result<Report, AuditError> {
    let conn = Connection::open_with_flags(
        db,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(|source| AuditError::Open {
        path: db.to_owned(),
        source,
    })?;
    conn.busy_timeout(std::time::Duration::from_secs(5))?;
    let exists: bool = conn.query_row(
        "SELECT EXISTS (SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'audit_log')",
        [],
        |r| r.get(0),
    )?;
    if !exists {
        return Err(AuditError::NoLog);
    }
    verify(&conn, read_anchor(db))
}

/// Checks every entry (hash, seq without gaps, link to the one before), then the anchor.
pub fn verify(conn: &Connection, anchor: Option<Anchor>) -> Result<Report, AuditError> {
    let mut statement = conn.prepare(
        "SELECT seq, at_ms, actor, action, target, details, prev_hash, hash
         FROM audit_log ORDER BY seq",
    )?;
    let mut rows = statement.query([])?;
    let mut entries = 0u64;
    let mut expected_seq = 1u64;
    let mut prev_hash = GENESIS.to_owned();
    let mut at_anchor: Option<String> = None;
    let mut fault: Option<(u64, Fault, String)> = None;
    while let Some(row) = rows.next()? {
        let entry = entry_row(row)?;
        entries += 1;
        if entry.seq != expected_seq {
            fault = Some((
                expected_seq,
                Fault::Removed,
                format!(
                    "entry {expected_seq} is missing (the next is {})",
                    entry.seq
                ),
            ));
            break;
        }
        if entry.computed_hash() != entry.hash {
            fault = Some((
                entry.seq,
                Fault::Edited,
                "its fields do not give its stored hash".into(),
            ));
            break;
        }
        if entry.prev_hash != prev_hash {
            fault = Some((
                entry.seq,
                Fault::Reordered,
                if entry.seq == 1 {
                    "the first entry does not start from the genesis value".into()
                } else {
                    format!("its prev_hash is not the hash of entry {}", entry.seq - 1)
                },
            ));
            break;
        }
        if anchor.as_ref().is_some_and(|a| a.seq == entry.seq) {
            at_anchor = Some(entry.hash.clone());
        }
        prev_hash = entry.hash;
        expected_seq += 1;
    }
    if fault.is_none()
        && let Some(anchor) = &anchor
    {
        match &at_anchor {
            None => {
                fault = Some((
                    expected_seq,
                    Fault::Removed,
                    format!(
                        "the log ends at entry {} but its anchor is entry {}",
                        expected_seq - 1,
                        anchor.seq
                    ),
                ))
            }
            Some(hash) if *hash != anchor.hash => {
                fault = Some((
                    anchor.seq,
                    Fault::Edited,
                    "the entry's hash differs from the anchor's: the log was rewritten from here or before".into(),
                ))
            }
            Some(_) => {}
        }
    }
    let (first_bad_seq, reason, detail) = match fault {
        Some((seq, reason, detail)) => (Some(seq), Some(reason), Some(detail)),
        None => (None, None, None),
    };
    Ok(Report {
        entries,
        ok: reason.is_none(),
        head: prev_hash,
        anchor,
        first_bad_seq,
        reason,
        detail,
    })
}

/// `GET /api/audit?after=SEQ&limit=N` (hq_admin): entries after `SEQ`, oldest first;
/// `next_after` names the next page (`null` on the last).
pub async fn list(
    State(app): State<Arc<App>>,
    Extension(audit): Audit,
    headers: HeaderMap,
    Query(params): Query<std::collections::HashMap<String, String>>,
) -> Result<Json<Value>, ApiError> {
    authorize(&app, &headers, &[ROLE_ADMIN]).await?;
    let max = app.config.limits.max_page_audit_entries;
    let number = |name: &str, default: u64| -> Result<u64, ApiError> {
        match params.get(name) {
            None => Ok(default),
            Some(text) => text.parse().map_err(|_| {
                ApiError::new(Code::BadRequest, format!("{name} must be a whole number"))
            }),
        }
    };
    let after = number("after", 0)?;
    let limit = number("limit", 100.min(max as u64))? as usize;
    if limit == 0 || limit > max {
        return Err(ApiError::new(
            Code::BadRequest,
            format!("limit must be 1 to max_page_audit_entries = {max}"),
        ));
    }
    let (entries, head) = audit.page(after, limit).await?;
    let next_after = match entries.last() {
        Some(last) if entries.len() == limit => Some(last.seq),
        _ => None,
    };
    Ok(Json(
        json!({ "entries": entries, "next_after": next_after, "head": head }),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The documented example; the same vector is in the other side's `audit.rs` (edge and hub
    /// must hash alike). Reproduce: `printf '13:aisle-audit-1,1:1,1:5,6:system,1:a,0:,2:{},64:%064d,' 0 | sha256sum`.
    #[test]
    fn the_encoding_is_the_documented_one() {
        assert_eq!(
            entry_hash(1, 5, "system", "a", "", "{}", GENESIS),
            "20b9ebe22f7aa29149bfd12e2b178c7a949e8c9693871dcf874cccc9465f58ff"
        );
    }
}
