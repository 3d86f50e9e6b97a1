//! Erasing conversations from this store: a customer's deletion request (the store's admin, or
//! HQ through the hub), the region's retention period, or the hub telling the store that a copy
//! it holds was erased elsewhere.
//!
//! Automerge keeps every change, so a conversation cannot be edited clean: its document, rows,
//! events, cursors, sync states, hand-off codes, bot answers and attachments (rows and files)
//! are deleted in one transaction, with `secure_delete` on so the freed pages are zeroed, and
//! the WAL is then truncated so no copy of the old pages stays on disk. A tombstone of the id
//! (no content) stays in `erased_conversations`, so the conversation is never taken back from
//! the hub; `hub_told` says whether the hub confirmed it holds no copy either.

use std::path::PathBuf;

use aisle_sync::ConversationId;
use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};
use tokio::sync::oneshot;

use super::State;
use crate::error::ApiError;
use crate::metrics::METRICS;

/// Why a conversation was erased (the tombstone's `reason`, the metric's label).
pub const CUSTOMER_REQUEST: &str = "customer_request";
pub const RETENTION: &str = "retention";
/// The hub erased it (HQ's request, another store's, or the region's retention period).
pub const HUB: &str = "hub";

/// Erase these conversations (and, with `customer`, that customer's record).
pub struct EraseCmd {
    pub ids: Vec<ConversationId>,
    pub customer: Option<String>,
    pub reason: &'static str,
    /// `staff:<id>`, `hub`, `system`.
    pub requested_by: String,
    /// The hub asked for it (or confirmed it): it need not be told.
    pub hub_told: bool,
    /// `<data>/attachments`: the files of erased messages' images are removed.
    pub attachments_dir: PathBuf,
    /// The ids that were held here and are now erased.
    pub reply: Option<oneshot::Sender<Result<Vec<ConversationId>, ApiError>>>,
}

/// Runs one erasure in its own transaction, then truncates the WAL.
pub(super) fn run(conn: &mut Connection, state: &mut State, cmd: EraseCmd) {
    let result = erase(conn, &cmd);
    if let Ok((erased, files)) = &result {
        for id in erased {
            state.docs.pop(id);
            state.incoming.remove(id);
            state.delivery.set_audience(*id, None);
            METRICS
                .erased_conversations
                .with_label_values(&[cmd.reason])
                .inc();
        }
        for file in files {
            if let Err(err) = std::fs::remove_file(file)
                && err.kind() != std::io::ErrorKind::NotFound
            {
                tracing::error!(error = %err, file = %file.display(), "removing an erased attachment");
            }
        }
        if !cmd.hub_told {
            state.changes.mark_erased(erased);
        }
        // The freed pages are zeroed in the database file (`secure_delete`), but the WAL still
        // holds them as they were until it is copied back and truncated.
        match conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |r| {
            r.get::<_, i64>(0)
        }) {
            Ok(0) => {}
            // Busy: a reader still needs old pages. They stay in the WAL until a later
            // checkpoint overwrites or truncates it (the final one at shutdown at the latest).
            Ok(_) => tracing::warn!(
                "the WAL could not be truncated after an erasure (readers busy); a later checkpoint will"
            ),
            Err(err) => tracing::warn!(error = %err, "truncating the WAL after an erasure"),
        }
        tracing::info!(count = erased.len(), reason = cmd.reason, requested_by = %cmd.requested_by, "erased conversations");
    }
    if let Some(reply) = cmd.reply {
        let _ = reply.send(result.map(|(erased, _)| erased));
    }
}

type Erased = (Vec<ConversationId>, Vec<PathBuf>);

fn erase(conn: &mut Connection, cmd: &EraseCmd) -> Result<Erased, ApiError> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let now = crate::now_ms() as i64;
    let mut erased = Vec::new();
    let mut files = Vec::new();
    for id in &cmd.ids {
        let key = id.to_string();
        let rowid: Option<i64> = tx
            .prepare_cached("SELECT rowid FROM conversations WHERE id = ?1")?
            .query_row([&key], |r| r.get(0))
            .optional()?;
        if let Some(rowid) = rowid {
            {
                let mut attached = tx.prepare_cached(
                    "SELECT attachment FROM messages WHERE conversation = ?1 AND attachment IS NOT NULL",
                )?;
                let rows = attached.query_map([rowid], |r| r.get::<_, String>(0))?;
                for json in rows {
                    if let Ok(attachment) = serde_json::from_str::<aisle_sync::Attachment>(&json?) {
                        let name = attachment.id.to_string();
                        tx.prepare_cached("DELETE FROM attachments WHERE id = ?1")?
                            .execute([&name])?;
                        files.push(cmd.attachments_dir.join(name));
                    }
                }
            }
            for sql in [
                "DELETE FROM messages WHERE conversation = ?1",
                "DELETE FROM events WHERE conversation = ?1",
                "DELETE FROM doc_chunks WHERE conversation = ?1",
                "DELETE FROM read_cursors WHERE conversation = ?1",
                "DELETE FROM sync_states WHERE conversation = ?1",
                "DELETE FROM conversations WHERE rowid = ?1",
            ] {
                tx.prepare_cached(sql)?.execute([rowid])?;
            }
            for sql in [
                "DELETE FROM handoffs WHERE conversation_id = ?1",
                "DELETE FROM bot_answers WHERE conversation = ?1",
            ] {
                tx.prepare_cached(sql)?.execute([&key])?;
            }
            erased.push(*id);
            // The erasure is recorded with its id and why, never what was erased.
            crate::audit::append(
                &tx,
                &cmd.requested_by,
                "conversation_erased",
                &key,
                serde_json::json!({ "reason": cmd.reason }),
            )?;
        }
        // A tombstone for what was held here (or the hub's confirmation of one). An id this
        // store never held gets none: it must not travel to the hub as an erasure, since
        // another store's conversation is not this store's to erase.
        if erased.last() == Some(id) {
            tx.prepare_cached(
                "INSERT INTO erased_conversations (id, erased_at_ms, reason, requested_by, hub_told) \
                 VALUES (?1, ?2, ?3, ?4, ?5) \
                 ON CONFLICT (id) DO UPDATE SET hub_told = max(hub_told, excluded.hub_told)",
            )?
            .execute(params![key, now, cmd.reason, cmd.requested_by, cmd.hub_told])?;
        } else if cmd.hub_told {
            tx.prepare_cached("UPDATE erased_conversations SET hub_told = 1 WHERE id = ?1")?
                .execute([&key])?;
        }
    }
    if let Some(customer) = &cmd.customer {
        tx.prepare_cached("DELETE FROM handoffs WHERE customer_id = ?1")?
            .execute([customer])?;
        tx.prepare_cached("DELETE FROM customers WHERE id = ?1")?
            .execute([customer])?;
    }
    tx.commit()?;
    crate::audit::anchor_after_commit(conn);
    Ok((erased, files))
}

/// Whether `id` was erased here (a tombstone): it must never be taken back from the hub.
pub(super) fn is_erased(db: &Connection, id: ConversationId) -> rusqlite::Result<bool> {
    db.prepare_cached("SELECT 1 FROM erased_conversations WHERE id = ?1")?
        .exists([id.to_string()])
}
