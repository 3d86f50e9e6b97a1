//! Erasing conversations everywhere: a customer's deletion request (HQ, or a store that
//! received it) and the region's retention period.
//!
//! Automerge keeps every change, so a conversation cannot be "edited" clean: erasing deletes
//! the whole document with everything derived from it (chunks, sync states, shares, hand-off
//! codes, HQ rows and their full-text entries), zeroes the freed pages (`secure_delete`),
//! truncates the WAL, and keeps a tombstone of the key only. Every store that held a copy is
//! told (`erase` frame) now if it is connected, or when its next manifest lists the document;
//! a tombstoned document is never synced back.

use std::sync::Arc;
use std::time::Duration;

use aisle_sync::DocumentKey;
use axum::Json;
use axum::extract::{Path, State};
use axum::http::HeaderMap;
use serde_json::{Value, json};

use crate::api::{ROLE_ADMIN, authorize};
use crate::error::{ApiError, Code};
use crate::metrics::METRICS;
use crate::store::{Erasure, StoreResult};
use crate::{App, now_ms};

/// Why a document was erased (the tombstone's `reason`, the metric's label).
pub const CUSTOMER_REQUEST: &str = "customer_request";
pub const RETENTION: &str = "retention";
pub const STORE_REQUEST: &str = "store_request";

/// Erases `keys` (in batches of `max_erase_batch_documents`) and tells every store holding a
/// copy, except `told_by` (the store that asked, answered by its session). Returns the keys
/// the hub held.
pub async fn erase(
    app: &App,
    keys: Vec<String>,
    reason: &str,
    requested_by: &str,
    told_by: Option<&str>,
) -> StoreResult<Vec<String>> {
    let mut held = Vec::new();
    for batch in keys.chunks(app.config.limits.max_erase_batch_documents) {
        let erased = app
            .store
            .erase_documents(Erasure {
                doc_keys: batch.to_vec(),
                reason: reason.into(),
                requested_by: requested_by.into(),
                now_ms: now_ms(),
            })
            .await?;
        for doc in erased {
            app.shares.remove(&doc.doc_key);
            METRICS.documents.dec();
            METRICS.erased.with_label_values(&[reason]).inc();
            if let Ok(key) = doc.doc_key.parse::<DocumentKey>() {
                for store in doc.holders.iter().filter(|s| Some(s.as_str()) != told_by) {
                    app.registry.push_erased(store, &key);
                }
            }
            tracing::info!(doc = %doc.doc_key, reason, requested_by, holders = ?doc.holders, "erased");
            held.push(doc.doc_key);
        }
    }
    Ok(held)
}

/// `DELETE /api/customers/{customer_id}` (hq_admin): erases every conversation of the customer
/// in the region, at the hub and at every store holding one.
pub async fn erase_customer(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    Path(customer_id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let account = authorize(&app, &headers, &[ROLE_ADMIN]).await?;
    if customer_id.is_empty() || customer_id.len() > 64 {
        return Err(ApiError::new(Code::BadRequest, "bad customer id"));
    }
    let keys = app.store.customer_documents(customer_id.clone()).await?;
    let by = format!("hq:{}", account.id);
    let erased = erase(&app, keys, CUSTOMER_REQUEST, &by, None).await?;
    Ok(Json(json!({
        "customer_id": customer_id,
        "erased": conversation_ids(&erased),
    })))
}

/// `DELETE /api/conversations/{id}` (hq_admin): erases one conversation everywhere.
pub async fn erase_conversation(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let account = authorize(&app, &headers, &[ROLE_ADMIN]).await?;
    let id: aisle_sync::ConversationId = id
        .parse()
        .map_err(|_| ApiError::new(Code::NotFound, "no such conversation"))?;
    let key = DocumentKey::from(id).to_string();
    let by = format!("hq:{}", account.id);
    let erased = erase(&app, vec![key], CUSTOMER_REQUEST, &by, None).await?;
    if erased.is_empty() {
        return Err(ApiError::new(Code::NotFound, "no such conversation"));
    }
    Ok(Json(json!({ "erased": conversation_ids(&erased) })))
}

fn conversation_ids(keys: &[String]) -> Vec<&str> {
    keys.iter()
        .filter_map(|k| k.strip_prefix("conversation:"))
        .collect()
}

/// The retention sweep: every `retention.sweep_interval_secs`, erases the conversations resolved
/// longer ago than `retention.resolved_conversation_secs` (nothing when that is 0).
pub async fn sweep(app: Arc<App>) {
    let retention = app.config.retention.clone();
    if retention.resolved_conversation_secs == 0 {
        return;
    }
    let mut tick = tokio::time::interval(Duration::from_secs(retention.sweep_interval_secs));
    loop {
        tick.tick().await;
        let before_ms =
            now_ms().saturating_sub(retention.resolved_conversation_secs.saturating_mul(1000));
        loop {
            let batch = app.config.limits.max_erase_batch_documents;
            let keys = match app.store.expired_documents(before_ms, batch).await {
                Ok(keys) => keys,
                Err(err) => {
                    tracing::error!(error = %err, "retention sweep: reading");
                    break;
                }
            };
            let full = keys.len() == batch;
            if keys.is_empty() {
                break;
            }
            match erase(&app, keys, RETENTION, "system", None).await {
                Ok(erased) => tracing::info!(count = erased.len(), "retention sweep"),
                Err(err) => {
                    tracing::error!(error = %err, "retention sweep: erasing");
                    break;
                }
            }
            if !full {
                break;
            }
        }
    }
}
