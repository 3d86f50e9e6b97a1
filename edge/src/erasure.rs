//! Erasing a customer's data on request and resolved conversations past the retention period
//! (the writer's side is `store/writer/erase.rs`).
//!
//! Requests made here are carried to the hub by the uplink (`erase` frames, until the hub
//! confirms), which erases its copy and tells every other store holding one; erasures decided
//! at the hub (HQ's requests, the region's retention period) arrive the same way.

use std::sync::Arc;
use std::time::Duration;

use aisle_sync::{ConversationId, CustomerId};
use axum::Json;
use axum::extract::{Path, State};
use rusqlite::OptionalExtension;
use serde_json::{Value, json};
use tokio::sync::oneshot;

use crate::App;
use crate::api::StaffAuth;
use crate::error::{ApiError, Code};
use crate::store::writer::Command;
use crate::store::writer::erase::{self, EraseCmd};

/// The `settings` row holding the region's retention period, as the hub last told it.
pub const REGION_RETENTION_SETTING: &str = "region_resolved_retention_secs";

/// Erases `ids` (and the customer's record) on the writer thread; returns those held here.
pub async fn erase(
    app: &App,
    ids: Vec<ConversationId>,
    customer: Option<String>,
    reason: &'static str,
    requested_by: String,
    hub_told: bool,
) -> Result<Vec<ConversationId>, ApiError> {
    let (reply, answer) = oneshot::channel();
    app.writer.submit(Command::Erase(EraseCmd {
        ids,
        customer,
        reason,
        requested_by,
        hub_told,
        attachments_dir: app.config.data.join("attachments"),
        reply: Some(reply),
    }))?;
    answer
        .await
        .map_err(|_| ApiError::new(Code::ShuttingDown, "the appliance is stopping"))?
}

/// `DELETE /api/customers/{customer_id}` (store admins): erases every conversation of the
/// customer held here, the customer's record and hand-off codes; the hub and the other stores
/// holding a copy follow.
pub async fn erase_customer(
    State(app): State<Arc<App>>,
    auth: StaffAuth,
    Path(customer_id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    auth.require_admin()?;
    let customer: CustomerId = customer_id
        .parse()
        .map_err(|_| ApiError::new(Code::NotFound, "no such customer"))?;
    let key = customer.to_string();
    let ids = app
        .reader
        .read(move |conn| {
            let mut stmt = conn.prepare("SELECT id FROM conversations WHERE customer_id = ?1")?;
            let rows = stmt.query_map([key], |r| r.get::<_, String>(0))?;
            let mut ids = Vec::new();
            for id in rows {
                if let Ok(id) = id?.parse::<ConversationId>() {
                    ids.push(id);
                }
            }
            Ok(ids)
        })
        .await?;
    let by = format!("staff:{}", auth.0.staff.id);
    let erased = erase(
        &app,
        ids,
        Some(customer.to_string()),
        erase::CUSTOMER_REQUEST,
        by,
        false,
    )
    .await?;
    Ok(Json(json!({
        "customer_id": customer.to_string(),
        "erased": erased.iter().map(ToString::to_string).collect::<Vec<_>>(),
    })))
}

/// `DELETE /api/conversations/{id}` (store admins): erases one conversation everywhere.
pub async fn erase_conversation(
    State(app): State<Arc<App>>,
    auth: StaffAuth,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    auth.require_admin()?;
    let id: ConversationId = id
        .parse()
        .map_err(|_| ApiError::new(Code::NotFound, "no such conversation"))?;
    let by = format!("staff:{}", auth.0.staff.id);
    let erased = erase(&app, vec![id], None, erase::CUSTOMER_REQUEST, by, false).await?;
    if erased.is_empty() {
        return Err(ApiError::new(Code::NotFound, "no such conversation"));
    }
    Ok(Json(json!({ "erased": [id.to_string()] })))
}

/// The retention period in force and whether it is the region's: the region's (from the hub)
/// when it sets one, else the store's own `retention.resolved_conversation_secs`; 0 keeps
/// everything.
pub async fn retention_secs(app: &App) -> Result<(u64, bool), ApiError> {
    let region: Option<String> = app
        .reader
        .read(|conn| {
            Ok(conn
                .query_row(
                    "SELECT value FROM settings WHERE key = ?1",
                    [REGION_RETENTION_SETTING],
                    |r| r.get(0),
                )
                .optional()?)
        })
        .await?;
    let region = region.and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    Ok(if region > 0 {
        (region, true)
    } else {
        let in_force = app.settings.current();
        (
            in_force
                .resolved
                .settings
                .retention
                .resolved_conversation_secs,
            false,
        )
    })
}

/// Keeps the region's retention period the hub announced (only written when it changed).
pub async fn remember_region_retention(app: &App, secs: u64) {
    let result = app
        .writer
        .exec(move |conn| {
            conn.execute(
                "INSERT INTO settings (key, value) VALUES (?1, ?2) \
                 ON CONFLICT (key) DO UPDATE SET value = excluded.value \
                 WHERE value != excluded.value",
                [REGION_RETENTION_SETTING, &secs.to_string()],
            )?;
            Ok(())
        })
        .await;
    if let Err(err) = result {
        tracing::warn!(error = %err.message, "keeping the region's retention period");
    }
}

/// Conversations erased here that the hub has not confirmed, by id after `after` (a page of
/// at most `limit`; the caller pages on with the last id).
pub async fn untold(
    app: &App,
    after: Option<ConversationId>,
    limit: usize,
) -> Result<Vec<ConversationId>, ApiError> {
    let after = after.map(|id| id.to_string()).unwrap_or_default();
    app.reader
        .read(move |conn| {
            let mut stmt = conn.prepare(
                "SELECT id FROM erased_conversations WHERE hub_told = 0 AND id > ?1 \
                 ORDER BY id LIMIT ?2",
            )?;
            let rows = stmt.query_map(rusqlite::params![after, limit as i64], |r| {
                r.get::<_, String>(0)
            })?;
            let mut ids = Vec::new();
            for id in rows {
                if let Ok(id) = id?.parse() {
                    ids.push(id);
                }
            }
            Ok(ids)
        })
        .await
}

/// The retention sweep: every `retention.sweep_interval_secs`, erases the conversations
/// resolved longer ago than the period in force (in batches of `max_erase_batch_documents`).
pub async fn sweep(app: Arc<App>) {
    let mut tick = tokio::time::interval(Duration::from_secs(
        app.config.retention.sweep_interval_secs,
    ));
    let mut shutdown = app.shutdown.subscribe();
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.recv() => return,
        }
        let (secs, regional) = match retention_secs(&app).await {
            Ok((0, _)) => continue,
            Ok(period) => period,
            Err(err) => {
                tracing::warn!(error = %err.message, "retention sweep: reading the period");
                continue;
            }
        };
        let before_ms = crate::now_ms().saturating_sub(secs.saturating_mul(1000)) as i64;
        let batch = app.config.limits.max_erase_batch_documents;
        loop {
            let ids = app
                .reader
                .read(move |conn| {
                    let mut stmt = conn.prepare(
                        "SELECT id FROM conversations \
                         WHERE status = 'resolved' AND resolved_at_ms < ?1 \
                         ORDER BY resolved_at_ms LIMIT ?2",
                    )?;
                    let rows =
                        stmt.query_map([before_ms, batch as i64], |r| r.get::<_, String>(0))?;
                    let mut ids = Vec::new();
                    for id in rows {
                        if let Ok(id) = id?.parse::<ConversationId>() {
                            ids.push(id);
                        }
                    }
                    Ok(ids)
                })
                .await;
            let ids = match ids {
                Ok(ids) if ids.is_empty() => break,
                Ok(ids) => ids,
                Err(err) => {
                    tracing::warn!(error = %err.message, "retention sweep: reading");
                    break;
                }
            };
            let full = ids.len() == batch;
            // The store's own period (the region keeps longer) erases here only: the hub and
            // the other stores keep their copies. The region's is carried like any erasure.
            let local_only = !regional;
            match erase(
                &app,
                ids,
                None,
                erase::RETENTION,
                "system".into(),
                local_only,
            )
            .await
            {
                Ok(erased) => tracing::info!(count = erased.len(), "retention sweep"),
                Err(err) => {
                    tracing::warn!(error = %err.message, "retention sweep: erasing");
                    break;
                }
            }
            if !full {
                break;
            }
        }
    }
}
