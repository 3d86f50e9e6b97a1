//! HQ's canned replies, carried to the stores in each store's settings document
//! (`settings:<store id>`, [`aisle_sync::Settings`]): the hub is the document's only writer; the
//! stores receive it over their sync connection (pushed at once when connected, found by the
//! manifest of their next session otherwise) and show the replies to their staff.
//!
//! A region-wide reply is written into every store's document; `stores` narrows it to some.

use std::sync::Arc;

use aisle_sync::{CannedReply, DocumentKey, Settings};
use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::HeaderMap;
use axum::{Extension, Json};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::api::{ROLE_ADMIN, ROLE_VIEWER, authorize};
use crate::audit::{Audit, AuditLog, Record, actor};
use crate::error::{ApiError, Code};
use crate::{App, now_ms};

/// Longest canned reply body, shortcut and title (characters).
const MAX_BODY_CHARS: usize = 4000;
const MAX_SHORTCUT_CHARS: usize = 32;
const MAX_TITLE_CHARS: usize = 100;
const MAX_ID_BYTES: usize = 64;

/// Serialises HQ's edits of settings documents: two edits must not both create a store's
/// document (two skeletons would hide each other).
#[derive(Default)]
pub struct SettingsLock(tokio::sync::Mutex<()>);

/// Proof that the caller holds the [`SettingsLock`] (for an edit that reads, checks and writes
/// under one hold: `crate::live_settings`).
pub type SettingsGuard<'a> = tokio::sync::MutexGuard<'a, ()>;

impl SettingsLock {
    pub async fn lock(&self) -> SettingsGuard<'_> {
        self.0.lock().await
    }
}

fn key_of(store_id: &str) -> Result<DocumentKey, ApiError> {
    DocumentKey::settings(store_id.to_owned())
        .map_err(|err| ApiError::new(Code::BadRequest, err.to_string()))
}

/// A store's settings document as stored, if HQ ever wrote one.
pub(crate) async fn load(app: &App, store_id: &str) -> Result<Option<Settings>, ApiError> {
    let key = key_of(store_id)?;
    match app.store.load_document(key.to_string()).await? {
        None => Ok(None),
        Some(stored) => Settings::load(&stored.bytes)
            .map(Some)
            .map_err(ApiError::internal),
    }
}

/// Applies `edit` to each store's document (creating it if needed), stores the change with its
/// audit entry (`audited` names the action for a store) and pushes it to the store if it is
/// connected.
async fn edit_each(
    app: &Arc<App>,
    audit: &Arc<dyn AuditLog>,
    stores: Vec<String>,
    edit: impl Fn(&mut Settings) -> Result<bool, aisle_sync::SyncError>,
    audited: impl Fn(&str) -> Record,
) -> Result<Vec<String>, ApiError> {
    let held = app.settings_lock.lock().await;
    edit_each_held(&held, app, audit, stores, edit, audited).await
}

/// [`edit_each`] for a caller that already holds the settings lock. An `edit` returning
/// `false` leaves an existing document as it was (nothing stored, audited or pushed).
pub(crate) async fn edit_each_held(
    _held: &SettingsGuard<'_>,
    app: &Arc<App>,
    audit: &Arc<dyn AuditLog>,
    stores: Vec<String>,
    edit: impl Fn(&mut Settings) -> Result<bool, aisle_sync::SyncError>,
    audited: impl Fn(&str) -> Record,
) -> Result<Vec<String>, ApiError> {
    let mut changed = Vec::new();
    for store_id in stores {
        let key = key_of(&store_id)?;
        let (mut doc, new) = match load(app, &store_id).await? {
            Some(doc) => (doc, false),
            None => (
                Settings::create(&store_id).map_err(ApiError::internal)?,
                true,
            ),
        };
        if !edit(&mut doc).map_err(ApiError::internal)? && !new {
            continue;
        }
        let chunk = if new {
            doc.save()
        } else {
            doc.save_incremental()
        };
        let heads: Vec<u8> = doc.heads().iter().flat_map(|h| h.0).collect();
        let record = audited(&store_id);
        audit
            .audited_save_document(
                key.to_string(),
                store_id.clone(),
                chunk,
                heads,
                now_ms(),
                record,
            )
            .await?;
        app.registry.push(&store_id, &key);
        changed.push(store_id);
    }
    Ok(changed)
}

/// The stores a request names, or every registered store.
async fn targets(app: &App, stores: Option<Vec<String>>) -> Result<Vec<String>, ApiError> {
    let registered: Vec<String> = app
        .store
        .list_stores()
        .await?
        .into_iter()
        .map(|s| s.id)
        .collect();
    match stores {
        None => Ok(registered),
        Some(stores) => {
            if let Some(unknown) = stores.iter().find(|s| !registered.contains(s)) {
                return Err(ApiError::new(
                    Code::NotFound,
                    format!("no store {unknown} in this region"),
                ));
            }
            Ok(stores)
        }
    }
}

#[derive(Deserialize)]
pub struct ListQuery {
    store: String,
}

/// `GET /api/canned-replies?store=ID`: the replies HQ set for a store.
pub async fn list(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    query: Result<Query<ListQuery>, QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    // Who asks first: a caller without a session gets 401, never a hint about the query.
    authorize(&app, &headers, &[ROLE_ADMIN, ROLE_VIEWER]).await?;
    let Query(query) = query.map_err(|err| ApiError::new(Code::BadRequest, err.body_text()))?;
    let replies = match load(&app, &query.store).await? {
        Some(doc) => doc.canned_replies().map_err(ApiError::internal)?,
        None => Vec::new(),
    };
    Ok(Json(
        json!({ "store_id": query.store, "canned_replies": replies }),
    ))
}

#[derive(Deserialize)]
pub struct PutReply {
    #[serde(default)]
    shortcut: String,
    title: String,
    body: String,
    /// Only these stores (default: every store of the region).
    stores: Option<Vec<String>>,
}

/// `PUT /api/canned-replies/{id}` (hq_admin): adds or replaces a reply at the stores.
pub async fn put(
    State(app): State<Arc<App>>,
    Extension(audit): Audit,
    headers: HeaderMap,
    Path(id): Path<String>,
    payload: Result<Json<PutReply>, JsonRejection>,
) -> Result<Json<Value>, ApiError> {
    let by = actor::hq(&authorize(&app, &headers, &[ROLE_ADMIN]).await?.id);
    let request = crate::api::body(payload)?;
    let valid_id = !id.is_empty()
        && id.len() <= MAX_ID_BYTES
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    if !valid_id {
        return Err(ApiError::new(
            Code::BadRequest,
            format!("id: 1 to {MAX_ID_BYTES} of A-Z a-z 0-9 - _"),
        ));
    }
    if request.shortcut.chars().count() > MAX_SHORTCUT_CHARS
        || request.title.trim().is_empty()
        || request.title.chars().count() > MAX_TITLE_CHARS
        || request.body.trim().is_empty()
        || request.body.chars().count() > MAX_BODY_CHARS
    {
        return Err(ApiError::new(
            Code::BadRequest,
            format!(
                "shortcut at most {MAX_SHORTCUT_CHARS} characters, title 1 to {MAX_TITLE_CHARS}, body 1 to {MAX_BODY_CHARS}"
            ),
        ));
    }
    let stores = targets(&app, request.stores).await?;
    let reply = CannedReply {
        id,
        shortcut: request.shortcut,
        title: request.title,
        body: request.body,
        updated_at_ms: now_ms(),
    };
    let written = edit_each(
        &app,
        &audit,
        stores,
        |doc| {
            doc.put_canned_reply(&reply)?;
            Ok(true)
        },
        |store| {
            let details = json!({ "store_id": store });
            Record::new(by.clone(), "canned_reply_put", &reply.id, details)
        },
    )
    .await?;
    Ok(Json(json!({ "canned_reply": reply, "stores": written })))
}

#[derive(Deserialize)]
pub struct DeleteQuery {
    store: Option<String>,
}

/// `DELETE /api/canned-replies/{id}[?store=ID]` (hq_admin): removes a reply from the stores.
pub async fn delete(
    State(app): State<Arc<App>>,
    Extension(audit): Audit,
    headers: HeaderMap,
    Path(id): Path<String>,
    Query(query): Query<DeleteQuery>,
) -> Result<Json<Value>, ApiError> {
    let by = actor::hq(&authorize(&app, &headers, &[ROLE_ADMIN]).await?.id);
    let stores = targets(&app, query.store.map(|s| vec![s])).await?;
    let mut existing = Vec::new();
    for store in stores {
        if load(&app, &store).await?.is_some() {
            existing.push(store);
        }
    }
    let removed = edit_each(
        &app,
        &audit,
        existing,
        |doc| doc.remove_canned_reply(&id),
        |store| {
            let details = json!({ "store_id": store });
            Record::new(by.clone(), "canned_reply_deleted", &id, details)
        },
    )
    .await?;
    if removed.is_empty() {
        return Err(ApiError::new(Code::NotFound, "no such canned reply"));
    }
    Ok(Json(json!({ "id": id, "stores": removed })))
}
