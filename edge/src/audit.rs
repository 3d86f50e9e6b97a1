//! The tamper-evident audit log: who did what to which account, setting or conversation on
//! this box (staff, admins, the bot, the system), as an append-only, hash-chained table.
//!
//! Why a chain: the log lives in the same SQLite file as everything else, so anyone holding
//! the file can edit it. Each entry's `hash` covers all its fields *and* the previous entry's
//! hash, so changing, inserting or removing an entry breaks every hash after it, which
//! `aisle-edge audit verify` finds. Rewriting the whole chain from the edit onwards is still
//! possible; the *anchor* (the head written beside the database after each commit, and the
//! check at start) catches a removed tail and a rewrite that did not also fix the anchor
//! (docs/security.md says what this does and does not protect).
//!
//! Why in the action's transaction: an entry is appended by the writer thread inside the
//! transaction of the write it records ([`append`]), so a committed action always has its
//! entry and a rolled-back one has none. Entries are never updated or deleted (the retention
//! sweep, when it deletes data, appends its own entry).
//!
//! ## Canonical encoding (what `hash` is the SHA-256 of)
//!
//! The fields as text, in this order, each written as a netstring (`<byte length in
//! decimal>:<UTF-8 bytes>,`), concatenated:
//!
//! 1. the format tag `aisle-audit-1`
//! 2. `seq` in decimal (no sign, no leading zeros)
//! 3. `at_ms` in decimal (milliseconds since the Unix epoch)
//! 4. `actor` (`staff:<id>`, `bot`, `customer:<id>`, `system`, `anonymous`)
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
//! `details` is small JSON built by the code here, never message text, notes or passwords.

use std::sync::Arc;

use axum::Json;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::response::{IntoResponse, Response};
use serde_json::json;

pub use aisle_service::audit::*;

use crate::App;
use crate::api::StaffAuth;
use crate::error::{ApiError, Code};

/// Who acted, as the `actor` column spells it.
pub mod actor {
    use std::fmt::Display;

    /// A staff account (admins are staff accounts with the admin role).
    pub fn staff(id: impl Display) -> String {
        format!("staff:{id}")
    }

    pub fn customer(id: impl Display) -> String {
        format!("customer:{id}")
    }

    /// The guarded bot.
    pub const BOT: &str = "bot";
    /// The box itself (start-up checks, routing, enrollment).
    pub const SYSTEM: &str = "system";
    /// Someone not signed in (a failed login).
    pub const ANONYMOUS: &str = "anonymous";
}

#[derive(serde::Deserialize)]
pub struct PageParams {
    after: Option<u64>,
    limit: Option<usize>,
}

/// `GET /api/audit?after=SEQ&limit=N` (store admins): entries after `SEQ`, oldest first, with
/// `next_after` to ask for the next page (`null` on the last).
pub async fn list(
    State(app): State<Arc<App>>,
    auth: StaffAuth,
    params: Result<Query<PageParams>, QueryRejection>,
) -> Result<Response, ApiError> {
    auth.require_admin()?;
    let Query(params) =
        params.map_err(|rejection| ApiError::new(Code::BadRequest, rejection.body_text()))?;
    let after = params.after.unwrap_or(0);
    let limit = params
        .limit
        .unwrap_or(100)
        .clamp(1, app.config.limits.max_page_items);
    let (entries, head) = app
        .reader
        .read(move |conn| Ok((page(conn, after, limit)?, head(conn)?)))
        .await?;
    let next_after = match entries.last() {
        Some(last) if entries.len() == limit => Some(last.seq),
        _ => None,
    };
    let head = head.map(|(seq, hash)| Anchor { seq, hash });
    Ok(Json(json!({ "entries": entries, "next_after": next_after, "head": head })).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;
    use rusqlite::{Connection, params};

    fn log() -> Connection {
        let conn = Connection::open_in_memory().unwrap();
        conn.execute_batch(
            "CREATE TABLE audit_log (seq INTEGER PRIMARY KEY, at_ms INTEGER NOT NULL,
               actor TEXT NOT NULL, action TEXT NOT NULL, target TEXT NOT NULL,
               details TEXT NOT NULL, prev_hash TEXT NOT NULL, hash TEXT NOT NULL)",
        )
        .unwrap();
        for i in 0..5 {
            append(
                &conn,
                "system",
                "test",
                &i.to_string(),
                serde_json::json!({"i": i}),
            )
            .unwrap();
        }
        conn
    }

    /// The documented example; the same vector is in the other side's `audit.rs` (edge and hub
    /// must hash alike). Reproduce: `printf '13:aisle-audit-1,1:1,1:5,6:system,1:a,0:,2:{},64:%064d,' 0 | sha256sum`.
    #[test]
    fn the_encoding_is_the_documented_one() {
        assert_eq!(
            entry_hash(1, 5, "system", "a", "", "{}", GENESIS),
            "20b9ebe22f7aa29149bfd12e2b178c7a949e8c9693871dcf874cccc9465f58ff"
        );
    }

    #[test]
    fn a_chain_verifies_and_each_tampering_is_named() {
        let conn = log();
        let report = verify(&conn, None).unwrap();
        assert!(report.ok && report.entries == 5, "{report:?}");
        assert_eq!(report.head, head(&conn).unwrap().unwrap().1);

        conn.execute(
            "UPDATE audit_log SET details = '{\"i\":9}' WHERE seq = 3",
            [],
        )
        .unwrap();
        let report = verify(&conn, None).unwrap();
        assert_eq!(
            (report.first_bad_seq, report.reason),
            (Some(3), Some(Fault::Edited))
        );

        let conn = log();
        conn.execute("DELETE FROM audit_log WHERE seq = 2", [])
            .unwrap();
        let report = verify(&conn, None).unwrap();
        assert_eq!(
            (report.first_bad_seq, report.reason),
            (Some(2), Some(Fault::Removed))
        );

        // Two entries swapped (each re-hashed with its new seq, links left as they were).
        let conn = log();
        let a = page(&conn, 1, 1).unwrap().remove(0);
        let b = page(&conn, 2, 1).unwrap().remove(0);
        for (seq, from) in [(2u64, &b), (3u64, &a)] {
            let hash = entry_hash(
                seq,
                from.at_ms,
                &from.actor,
                &from.action,
                &from.target,
                &from.details,
                &from.prev_hash,
            );
            conn.execute(
                "UPDATE audit_log SET target = ?2, details = ?3, prev_hash = ?4, hash = ?5 WHERE seq = ?1",
                params![seq as i64, from.target, from.details, from.prev_hash, hash],
            )
            .unwrap();
        }
        let report = verify(&conn, None).unwrap();
        assert_eq!(
            (report.first_bad_seq, report.reason),
            (Some(2), Some(Fault::Reordered))
        );

        // The last entry removed: only the anchor tells.
        let conn = log();
        let anchor = head(&conn).unwrap().map(|(seq, hash)| Anchor { seq, hash });
        conn.execute("DELETE FROM audit_log WHERE seq = 5", [])
            .unwrap();
        assert!(verify(&conn, None).unwrap().ok);
        let report = verify(&conn, anchor).unwrap();
        assert_eq!(
            (report.first_bad_seq, report.reason),
            (Some(5), Some(Fault::Removed))
        );
    }
}
