//! HQ's two layers of the stores' live settings (issue 9): one for every store of the region,
//! one per store. Both travel inside each store's settings document (`settings:<store id>`,
//! [`aisle_sync::Settings::put_layer`]) like HQ's canned replies (`crate::settings`): written
//! under the settings lock, stored with one audit entry per store, pushed to a connected store.
//!
//! A layer is checked with the stores' own code (`aisle_settings`) before anything is written,
//! alone and together with the other HQ layer, so HQ cannot push a set a store would refuse.
//! The region layer is also kept in the hub's database (`HubStore::region_settings`): a store
//! registered later gets it in its document at registration.
//!
//! What a store's own file sets is not known here: the effective settings the hub shows are
//! HQ's two layers over the built-in defaults, and a store's file only shows through where
//! neither HQ layer sets a value.
//!
//! Between replicas on PostgreSQL each layer is one scalar replaced whole, so the last edit
//! wins per layer; the region row keeps the higher version, and two edits at the very same
//! moment at two replicas leave each store's document with one of the two (Automerge's rule
//! for concurrent writes of one key) until the next edit.

use std::sync::Arc;

use aisle_settings::{Resolved, SettingsError, Source, resolve, validate_layer};
use aisle_sync::{HqLayer, LayerScope, Settings};
use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::{Extension, Json};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::api::{ROLE_ADMIN, ROLE_VIEWER, authorize};
use crate::audit::{Audit, AuditLog, Record, actor};
use crate::error::{ApiError, Code};
use crate::settings::{SettingsGuard, edit_each_held, load};
use crate::store::RegionSettings;
use crate::{App, now_ms};

/// The audit action of every change of an HQ layer (one entry per store document, and one for
/// the region row).
const ACTION: &str = "settings_changed";

/// Attempts at storing the region layer when another replica stored a newer one between the
/// read of the previous version and the write (each attempt reads it again).
const MAX_REGION_WRITE_ATTEMPTS: u32 = 3;

/// The body of both PUTs.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PutLayer {
    /// A partial `StoreSettings` object; `{}` clears the layer.
    settings: Value,
}

fn invalid(err: SettingsError) -> ApiError {
    ApiError::new(Code::InvalidSettings, err.to_string())
}

/// The layer of a PUT body, checked on its own.
fn checked_body(payload: Result<Json<PutLayer>, JsonRejection>) -> Result<Value, ApiError> {
    let PutLayer { settings } = crate::api::body(payload)?;
    if !settings.is_object() {
        return Err(ApiError::new(
            Code::InvalidSettings,
            "settings: a JSON object in the shape of the store settings ({} clears the layer)",
        ));
    }
    validate_layer(&settings).map_err(invalid)?;
    Ok(settings)
}

/// The next version of a layer: the hub's clock, or one more than the previous version when the
/// clock is behind it (so a version only grows).
fn next_version(previous: Option<u64>, now_ms: u64) -> u64 {
    match previous {
        Some(previous) => now_ms.max(previous.saturating_add(1)),
        None => now_ms,
    }
}

/// HQ's layers resolved over the defaults: what a store without settings of its own runs.
fn effective(region: Option<&HqLayer>, store: Option<&HqLayer>) -> Result<Resolved, SettingsError> {
    let mut layers = Vec::new();
    if let Some(region) = region {
        layers.push((Source::HqRegion, &region.settings));
    }
    if let Some(store) = store {
        layers.push((Source::HqStore, &store.settings));
    }
    resolve(&layers)
}

/// The region layer the hub keeps.
async fn region_layer(app: &App) -> Result<Option<HqLayer>, ApiError> {
    match app.store.region_settings().await? {
        None => Ok(None),
        Some(stored) => serde_json::from_str(&stored.layer)
            .map(Some)
            .map_err(ApiError::internal),
    }
}

/// One of HQ's layers as a store's document holds it.
async fn document_layer(
    app: &App,
    store_id: &str,
    scope: LayerScope,
) -> Result<Option<HqLayer>, ApiError> {
    match load(app, store_id).await? {
        None => Ok(None),
        Some(doc) => doc.layer(scope).map_err(ApiError::internal),
    }
}

/// A registered store, or 404.
async fn known_store(app: &App, store_id: &str) -> Result<(), ApiError> {
    match app.store.store(store_id.to_owned()).await? {
        Some(_) => Ok(()),
        None => Err(ApiError::new(
            Code::NotFound,
            format!("no store {store_id} in this region"),
        )),
    }
}

/// Writes `layer` into each store's document unless the document already holds this scope at
/// the same or a higher version; one audit entry per document written.
async fn write_layer(
    held: &SettingsGuard<'_>,
    app: &Arc<App>,
    audit: &Arc<dyn AuditLog>,
    stores: Vec<String>,
    scope: LayerScope,
    layer: &HqLayer,
    by: &str,
) -> Result<Vec<String>, ApiError> {
    let scope_name = match scope {
        LayerScope::Region => "region",
        LayerScope::Store => "store",
    };
    edit_each_held(
        held,
        app,
        audit,
        stores,
        |doc: &mut Settings| {
            if doc
                .layer(scope)
                .ok()
                .flatten()
                .is_some_and(|held| held.version >= layer.version)
            {
                return Ok(false);
            }
            doc.put_layer(scope, layer)?;
            Ok(true)
        },
        |store| {
            let details = json!({
                "scope": scope_name,
                "version": layer.version,
                "store_id": store,
            });
            Record::new(by.to_owned(), ACTION, store, details)
        },
    )
    .await
}

/// `GET /api/settings/region` (hq_viewer, hq_admin): `{"layer": HqLayer | null}`.
pub async fn get_region(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    authorize(&app, &headers, &[ROLE_ADMIN, ROLE_VIEWER]).await?;
    Ok(Json(json!({ "layer": region_layer(&app).await? })))
}

/// `PUT /api/settings/region` (hq_admin): replaces the region layer, in the hub's row and in
/// every registered store's document.
pub async fn put_region(
    State(app): State<Arc<App>>,
    Extension(audit): Audit,
    headers: HeaderMap,
    payload: Result<Json<PutLayer>, JsonRejection>,
) -> Result<Json<Value>, ApiError> {
    let by = actor::hq(&authorize(&app, &headers, &[ROLE_ADMIN]).await?.id);
    let settings = checked_body(payload)?;
    let held = app.settings_lock.lock().await;
    let stores: Vec<String> = app
        .store
        .list_stores()
        .await?
        .into_iter()
        .map(|s| s.id)
        .collect();
    // Every store's own HQ layer must still resolve on top of the new region layer.
    for store_id in &stores {
        if let Some(store) = document_layer(&app, store_id, LayerScope::Store).await? {
            resolve(&[
                (Source::HqRegion, &settings),
                (Source::HqStore, &store.settings),
            ])
            .map_err(|err| {
                ApiError::new(
                    Code::InvalidSettings,
                    format!("with the layer of store {store_id}: {err}"),
                )
            })?;
        }
    }
    let mut attempts = 0;
    let layer = loop {
        attempts += 1;
        let previous = region_layer(&app).await?.map(|l| l.version);
        let now = now_ms();
        let layer = HqLayer {
            version: next_version(previous, now),
            author: by.clone(),
            updated_at_ms: now,
            settings: settings.clone(),
        };
        let row = RegionSettings {
            version: layer.version,
            layer: serde_json::to_string(&layer).map_err(ApiError::internal)?,
        };
        let details = json!({ "scope": "region", "version": layer.version });
        let record = Record::new(by.clone(), ACTION, "region", details);
        if audit.audited_put_region_settings(row, record).await? {
            break layer;
        }
        // Another replica stored a newer layer since `previous` was read: ours is the later
        // edit, so it goes on top of that one.
        if attempts >= MAX_REGION_WRITE_ATTEMPTS {
            return Err(ApiError::internal(format!(
                "the region layer moved on {MAX_REGION_WRITE_ATTEMPTS} times while it was written"
            )));
        }
    };
    let written = write_layer(&held, &app, &audit, stores, LayerScope::Region, &layer, &by).await?;
    tracing::info!(
        version = layer.version,
        stores = written.len(),
        "region settings set"
    );
    Ok(Json(json!({ "layer": layer, "stores": written })))
}

/// What `GET /api/stores/{id}/settings` answers.
async fn store_view(app: &App, store_id: &str) -> Result<Value, ApiError> {
    let (region, store) = match load(app, store_id).await? {
        None => (None, None),
        Some(doc) => (
            doc.layer(LayerScope::Region).map_err(ApiError::internal)?,
            doc.layer(LayerScope::Store).map_err(ApiError::internal)?,
        ),
    };
    let mut view = json!({ "store_id": store_id, "region": region, "store": store });
    match effective(region.as_ref(), store.as_ref()) {
        Ok(resolved) => view["effective"] = json!(resolved),
        // Only when two replicas accepted layers that do not fit each other at the same moment:
        // shown, not hidden behind a 500.
        Err(err) => {
            view["effective"] = Value::Null;
            view["effective_error"] = json!(err.to_string());
        }
    }
    Ok(view)
}

/// `GET /api/stores/{id}/settings` (hq_viewer, hq_admin): HQ's two layers as the store's
/// document holds them and their resolution over the defaults.
pub async fn get_store(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    Path(store_id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    authorize(&app, &headers, &[ROLE_ADMIN, ROLE_VIEWER]).await?;
    known_store(&app, &store_id).await?;
    Ok(Json(store_view(&app, &store_id).await?))
}

/// `PUT /api/stores/{id}/settings` (hq_admin): replaces the store's own HQ layer (`{}` clears
/// it: the store then runs the region's layer).
pub async fn put_store(
    State(app): State<Arc<App>>,
    Extension(audit): Audit,
    headers: HeaderMap,
    Path(store_id): Path<String>,
    payload: Result<Json<PutLayer>, JsonRejection>,
) -> Result<Json<Value>, ApiError> {
    let by = actor::hq(&authorize(&app, &headers, &[ROLE_ADMIN]).await?.id);
    let settings = checked_body(payload)?;
    known_store(&app, &store_id).await?;
    let held = app.settings_lock.lock().await;
    if let Some(region) = region_layer(&app).await? {
        resolve(&[
            (Source::HqRegion, &region.settings),
            (Source::HqStore, &settings),
        ])
        .map_err(|err| {
            ApiError::new(
                Code::InvalidSettings,
                format!("with the region layer: {err}"),
            )
        })?;
    }
    let previous = document_layer(&app, &store_id, LayerScope::Store)
        .await?
        .map(|l| l.version);
    let now = now_ms();
    let layer = HqLayer {
        version: next_version(previous, now),
        author: by.clone(),
        updated_at_ms: now,
        settings,
    };
    let stores = vec![store_id.clone()];
    write_layer(&held, &app, &audit, stores, LayerScope::Store, &layer, &by).await?;
    drop(held);
    tracing::info!(store_id = %store_id, version = layer.version, "store settings set");
    Ok(Json(store_view(&app, &store_id).await?))
}

/// Writes the region layer the hub keeps into a newly registered store's document (creating
/// it), so the store starts with what every other store of the region has. `by` registered it
/// and is the actor of the audit entry; the layer keeps its author.
pub async fn seed_registered_store(
    app: &Arc<App>,
    audit: &Arc<dyn AuditLog>,
    store_id: &str,
    by: &str,
) -> Result<(), ApiError> {
    let held = app.settings_lock.lock().await;
    if let Some(layer) = region_layer(app).await? {
        let stores = vec![store_id.to_owned()];
        write_layer(&held, app, audit, stores, LayerScope::Region, &layer, by).await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_version_only_grows() {
        assert_eq!(next_version(None, 5), 5);
        assert_eq!(next_version(Some(3), 5), 5);
        // The clock went back (or two edits in one ms): one more than before.
        assert_eq!(next_version(Some(9), 5), 10);
        assert_eq!(next_version(Some(5), 5), 6);
        assert_eq!(next_version(Some(u64::MAX), 5), u64::MAX);
    }

    #[test]
    fn the_store_layer_wins_over_the_region_and_says_so() {
        let layer = |settings| HqLayer {
            version: 1,
            author: "hq:a".into(),
            updated_at_ms: 1,
            settings,
        };
        let region = layer(json!({"routing": {"capacity_per_staff": 5, "fallback": "queue"}}));
        let store = layer(json!({"routing": {"capacity_per_staff": 2}}));
        let r = effective(Some(&region), Some(&store)).unwrap();
        assert_eq!(r.settings.routing.capacity_per_staff, 2);
        assert_eq!(r.sources["routing.capacity_per_staff"], Source::HqStore);
        assert_eq!(r.sources["routing.fallback"], Source::HqRegion);
        assert_eq!(r.sources["bot.min_confidence"], Source::Default);
        // An empty store layer (cleared) leaves the region's.
        let r = effective(Some(&region), Some(&layer(json!({})))).unwrap();
        assert_eq!(r.settings.routing.capacity_per_staff, 5);
        assert_eq!(effective(None, None).unwrap(), Resolved::default());
    }
}
