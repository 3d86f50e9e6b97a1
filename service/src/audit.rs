//! The tamper-evident audit log both servers keep: an append-only, hash-chained SQLite table
//! (`audit_log`), its anchor file and its verification. The edge and the hub each record their
//! own actions through [`append`]; what they record, and their HTTP pages of it, stay in their
//! crates (`aisle_edge::audit`, `aisle_hub::audit`).
//!
//! Why a chain: the log lives in the same SQLite file as everything else, so anyone holding
//! the file can edit it. Each entry's `hash` covers all its fields *and* the previous entry's
//! hash, so changing, inserting or removing an entry breaks every hash after it, which
//! `audit verify` finds. Rewriting the whole chain from the edit onwards is still possible; the
//! *anchor* (the head written beside the database after each commit, and the check at start)
//! catches a removed tail and a rewrite that did not also fix the anchor (docs/security.md says
//! what this does and does not protect).
//!
//! Why in the action's transaction: an entry is appended by the writer thread inside the
//! transaction of the write it records, so a committed action always has its entry and a
//! rolled-back one has none. Entries are never updated or deleted.
//!
//! ## Canonical encoding (what `hash` is the SHA-256 of)
//!
//! The fields as text, in this order, each written as a netstring (`<byte length in
//! decimal>:<UTF-8 bytes>,`), concatenated:
//!
//! 1. the format tag `aisle-audit-1`
//! 2. `seq` in decimal (no sign, no leading zeros)
//! 3. `at_ms` in decimal (milliseconds since the Unix epoch)
//! 4. `actor` (`staff:<id>`, `bot`, `customer:<id>`, `system`, `anonymous`, `hq:<id>`, `store:<id>`)
//! 5. `action` (a stable snake_case name)
//! 6. `target` (e.g. a conversation or staff id; empty when none)
//! 7. `details` exactly as stored (compact JSON text)
//! 8. `prev_hash`: the previous entry's `hash`, 64 lowercase hex digits; [`GENESIS`] for the
//!    first entry
//!
//! `hash` is the SHA-256 of those bytes as 64 lowercase hex digits. Example: the entry
//! `seq 1, at_ms 5, actor "system", action "a", target "", details "{}"` hashes the text
//! `13:aisle-audit-1,1:1,1:5,6:system,1:a,0:,2:{},64:000…000,`.
//!
//! `details` is small JSON built by the callers, never message text, notes or passwords.

use std::cell::Cell;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use rusqlite::{Connection, OpenFlags, OptionalExtension, params};
use serde::Serialize;
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::now_ms;

/// The `prev_hash` of the first entry.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// The format tag that starts every entry's canonical encoding.
const FORMAT: &str = "aisle-audit-1";

/// The server itself as an actor (start-up checks, sweeps).
pub const SYSTEM: &str = "system";

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
    /// The hash this entry's fields (with its `prev_hash`) give.
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
    hex(&Sha256::digest(text.as_bytes()))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().fold(String::with_capacity(64), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

thread_local! {
    /// Set by [`append`] on the writer thread; [`anchor_after_commit`] writes the anchor once
    /// the transaction is over.
    static APPENDED: Cell<bool> = const { Cell::new(false) };
}

/// Appends an entry inside the caller's transaction and returns it.
///
/// This is the one way entries are written: call it on the writer thread, with the
/// transaction of the action it records (an `exec` closure, a writer command), so the action
/// and its entry commit or roll back together. The writer thread being the only writer is
/// what makes reading the head and appending after it race-free.
pub fn append(
    db: &Connection,
    actor: &str,
    action: &str,
    target: &str,
    details: Value,
) -> rusqlite::Result<Entry> {
    let (prev_seq, prev_hash) = head(db)?.unwrap_or((0, GENESIS.to_owned()));
    let details = details.to_string();
    let mut entry = Entry {
        seq: prev_seq + 1,
        at_ms: now_ms(),
        actor: actor.to_owned(),
        action: action.to_owned(),
        target: target.to_owned(),
        details,
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

/// Entries after `after`, oldest first, at most `limit` (the API's page).
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

/// The anchor: the latest committed head, kept beside the database (`<db>.audit-head`).
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

/// After the writer's transaction ended (committed or not): if entries were appended in it,
/// writes the committed head to the anchor file (written to a temporary file and renamed, not
/// fsynced: a crash can leave the anchor behind the log, which verify accepts, never ahead).
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

/// At start, before the writer appends anything: a log that ends before its anchor, or whose
/// entry at the anchor's seq has another hash, was cut or rewritten while the server was
/// stopped. Appending would hide that (the next entry would take the removed seq), so the
/// finding is appended to the log first, as an `audit_anchor_mismatch` entry, and logged.
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
        "the audit log does not reach its anchor: entries were removed or rewritten while the server was stopped"
    );
    append(
        db,
        SYSTEM,
        "audit_anchor_mismatch",
        "",
        serde_json::json!({
            "anchor_seq": anchor.seq,
            "anchor_hash": anchor.hash,
            "last_seq": last,
        }),
    )?;
    Ok(())
}

/// Why verification stopped at an entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Fault {
    /// The entry's fields do not give its stored hash.
    Edited,
    /// A seq is missing (a gap), or the log ends before its anchor.
    Removed,
    /// The entry does not follow the one before it (its prev_hash names another entry).
    Reordered,
}

/// What `audit verify` prints.
#[derive(Clone, Debug, Serialize)]
pub struct Report {
    pub entries: u64,
    pub ok: bool,
    /// The last entry's hash (the genesis value for an empty log).
    pub head: String,
    /// The anchor found beside the database, if any.
    pub anchor: Option<Anchor>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub first_bad_seq: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<Fault>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

/// Walks the whole chain of the database at `db` (opened read-only: safe beside a running
/// server) and checks it against its anchor.
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

/// Checks every entry: its hash, its seq (no gaps), its link to the one before; then that the
/// log reaches the anchor and has the anchor's hash there.
pub fn verify(conn: &Connection, anchor: Option<Anchor>) -> Result<Report, AuditError> {
    let mut statement = conn.prepare(
        "SELECT seq, at_ms, actor, action, target, details, prev_hash, hash
         FROM audit_log ORDER BY seq",
    )?;
    let mut rows = statement.query([])?;
    let mut chain = Chain::new(anchor);
    while let Some(row) = rows.next()? {
        if !chain.push(entry_row(row)?) {
            break;
        }
    }
    Ok(chain.report())
}

/// [`verify`] over entries read from elsewhere (a PostgreSQL hub's table), oldest first.
pub fn verify_entries(entries: Vec<Entry>, anchor: Option<Anchor>) -> Report {
    let mut chain = Chain::new(anchor);
    for entry in entries {
        if !chain.push(entry) {
            break;
        }
    }
    chain.report()
}

/// The walk behind [`verify`] and [`verify_entries`]: entries are pushed in seq order until the
/// first fault.
struct Chain {
    anchor: Option<Anchor>,
    entries: u64,
    expected_seq: u64,
    prev_hash: String,
    at_anchor: Option<String>,
    fault: Option<(u64, Fault, String)>,
}

impl Chain {
    fn new(anchor: Option<Anchor>) -> Chain {
        Chain {
            anchor,
            entries: 0,
            expected_seq: 1,
            prev_hash: GENESIS.to_owned(),
            at_anchor: None,
            fault: None,
        }
    }

    /// Checks the next entry; `false` once a fault is found (the walk stops there).
    fn push(&mut self, entry: Entry) -> bool {
        self.entries += 1;
        let expected_seq = self.expected_seq;
        if entry.seq != expected_seq {
            self.fault = Some((
                expected_seq,
                Fault::Removed,
                format!(
                    "entry {expected_seq} is missing (the next is {})",
                    entry.seq
                ),
            ));
            return false;
        }
        if entry.computed_hash() != entry.hash {
            self.fault = Some((
                entry.seq,
                Fault::Edited,
                "its fields do not give its stored hash".into(),
            ));
            return false;
        }
        if entry.prev_hash != self.prev_hash {
            self.fault = Some((
                entry.seq,
                Fault::Reordered,
                if entry.seq == 1 {
                    "the first entry does not start from the genesis value".into()
                } else {
                    format!("its prev_hash is not the hash of entry {}", entry.seq - 1)
                },
            ));
            return false;
        }
        if self.anchor.as_ref().is_some_and(|a| a.seq == entry.seq) {
            self.at_anchor = Some(entry.hash.clone());
        }
        self.prev_hash = entry.hash;
        self.expected_seq += 1;
        true
    }

    fn report(self) -> Report {
        let Chain {
            anchor,
            entries,
            expected_seq,
            prev_hash,
            at_anchor,
            mut fault,
        } = self;
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
        Report {
            entries,
            ok: reason.is_none(),
            head: prev_hash,
            anchor,
            first_bad_seq,
            reason,
            detail,
        }
    }
}
