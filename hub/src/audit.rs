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

use std::sync::Arc;

use axum::extract::{Query, State};
use axum::http::HeaderMap;
use axum::{Extension, Json};
use futures_util::future::BoxFuture;
use serde_json::{Value, json};

pub use aisle_service::audit::{
    Anchor, AuditError, Entry, Fault, GENESIS, Report, anchor_after_commit, anchor_path,
    check_anchor_at_start, entry_hash, head, page, verify, verify_file,
};

use crate::App;
use crate::api::{ROLE_ADMIN, authorize};
use crate::error::{ApiError, Code};
use crate::store::{EnrollOutcome, NewStore, RegionSettings, StoreResult};

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
    /// HQ's region settings layer ([`crate::store::HubStore::put_region_settings`]) and its
    /// entry, which is appended only when the layer was stored.
    fn audited_put_region_settings(
        &self,
        settings: RegionSettings,
        record: Record,
    ) -> BoxFuture<'_, StoreResult<bool>>;
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

/// The entry of an enrollment attempt: `store_enrolled`, or `store_enrollment_refused` with
/// the reason. The id as sent (bounded: it may be anything) names the store that tried.
pub fn enrollment_record(store_id: &str, outcome: EnrollOutcome) -> Record {
    let target: String = store_id.chars().take(128).collect();
    match refusal_reason(outcome) {
        None => Record::new(
            actor::store(&target),
            "store_enrolled",
            &target,
            serde_json::json!({}),
        ),
        Some(reason) => Record::new(
            if outcome == EnrollOutcome::UnknownStore {
                actor::ANONYMOUS.to_owned()
            } else {
                actor::store(&target)
            },
            "store_enrollment_refused",
            &target,
            serde_json::json!({ "reason": reason }),
        ),
    }
}

/// Appends an entry inside the caller's transaction (on the writer thread) and returns it.
/// This is the one way the hub writes entries; erasures call it in the transaction that
/// deletes.
pub fn append(db: &rusqlite::Connection, record: &Record) -> rusqlite::Result<Entry> {
    aisle_service::audit::append(
        db,
        &record.actor,
        record.action,
        &record.target,
        record.details.clone(),
    )
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
