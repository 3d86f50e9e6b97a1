//! The store's live settings in force: resolved from their layers (built-in defaults < the
//! box's file and environment < the store admin < HQ's region < HQ's store, `aisle-settings`)
//! and swapped in whole.
//!
//! Why a swap of one immutable value (`arc-swap`): the writer thread routes every chat and the
//! HTTP handlers answer with the settings, and none of them may block on an edit or see half
//! of one. A change resolves all layers again and validates the result *before* the swap; a
//! refused change leaves the set in force untouched (and is reported in `GET
//! /api/v1/settings`, the log and `aisle_settings_changes_total{outcome="refused"}`). Nothing
//! else is restarted: connections stay open and chats keep their state, because the settings
//! are read at each decision, not copied into the connections.
//!
//! Where changes come from: HQ's layers arrive in the store's settings document by sync
//! (applied by the writer thread, `store::writer::replica`), the file by [`watch`], the
//! admin's bot policy by `PUT /api/bot-policy`.

use std::path::Path;
use std::sync::{Arc, Mutex};

use aisle_settings::{Resolved, SettingsError, Source, resolve};
use aisle_sync::HqLayer;
use arc_swap::ArcSwap;
use serde::Serialize;
use serde_json::{Value, json};

use crate::metrics::METRICS;
use crate::{App, now_ms};

/// The settings in force, and how they came to be.
#[derive(Debug, Clone, Serialize)]
pub struct InForce {
    #[serde(flatten)]
    pub resolved: Resolved,
    /// Swaps since the process started (1: the set resolved at start).
    pub generation: u64,
    /// HQ's version in force: the larger of its two layers' versions (0: HQ set nothing).
    pub hq_version: u64,
    pub changed_at_ms: u64,
    /// Who made the last change applied (`file`, `staff:<id>`, `hq:<id>`, `start`).
    pub changed_by: String,
    /// The last change refused since then, with the reason.
    pub refused: Option<Refusal>,
}

/// A change that was refused; the set in force kept routing.
#[derive(Debug, Clone, Serialize)]
pub struct Refusal {
    pub source: Source,
    pub reason: String,
    pub at_ms: u64,
}

/// A change that applied.
#[derive(Debug)]
pub struct Applied {
    pub generation: u64,
    /// Dotted paths of the settings whose value changed.
    pub changed: Vec<String>,
    /// Who made it (`file`, `staff:<id>`, `hq:<id>`).
    pub by: String,
    pub hq_version: u64,
}

#[derive(Debug, Clone, Default, PartialEq)]
struct Inputs {
    file: Value,
    admin: Value,
    hq_region: Option<HqLayer>,
    hq_store: Option<HqLayer>,
}

impl Inputs {
    fn resolve(&self) -> Result<Resolved, SettingsError> {
        let mut layers: Vec<(Source, &Value)> =
            vec![(Source::File, &self.file), (Source::Admin, &self.admin)];
        if let Some(l) = &self.hq_region {
            layers.push((Source::HqRegion, &l.settings));
        }
        if let Some(l) = &self.hq_store {
            layers.push((Source::HqStore, &l.settings));
        }
        resolve(&layers)
    }

    fn hq_version(&self) -> u64 {
        newest(&self.hq_region, &self.hq_store).map_or(0, |l| l.version)
    }
}

/// The newer of HQ's two layers: its version is HQ's version in force, its author the author
/// of HQ's last change.
pub fn newest<'a>(region: &'a Option<HqLayer>, store: &'a Option<HqLayer>) -> Option<&'a HqLayer> {
    [region, store]
        .into_iter()
        .flatten()
        .max_by_key(|l| l.version)
}

/// The live settings of this store; shared by the handlers and the writer thread.
pub struct LiveSettings {
    current: ArcSwap<InForce>,
    /// The layers; held while one change resolves, so two changes never interleave.
    inputs: Mutex<Inputs>,
}

impl LiveSettings {
    /// Resolves the layers found at start. The file's layer must resolve (a bad file stops
    /// the start, as any bad configuration does); HQ's layers that do not resolve on top of
    /// it are left out, logged, and reported as refused.
    pub fn start(
        file: Value,
        admin: Value,
        hq_region: Option<HqLayer>,
        hq_store: Option<HqLayer>,
    ) -> Result<Self, SettingsError> {
        let mut inputs = Inputs {
            file,
            admin,
            hq_region,
            hq_store,
        };
        let mut refused = None;
        let resolved = match inputs.resolve() {
            Ok(resolved) => resolved,
            Err(err) => {
                tracing::warn!(error = %err, "HQ's settings do not apply on top of this box's; using the box's");
                refused = Some(Refusal {
                    source: Source::HqStore,
                    reason: err.to_string(),
                    at_ms: now_ms(),
                });
                inputs.hq_region = None;
                inputs.hq_store = None;
                inputs.resolve()?
            }
        };
        let in_force = InForce {
            resolved,
            generation: 1,
            hq_version: inputs.hq_version(),
            changed_at_ms: now_ms(),
            changed_by: "start".into(),
            refused,
        };
        METRICS.settings_generation.set(1);
        METRICS.settings_hq_version.set(in_force.hq_version as i64);
        Ok(Self {
            current: ArcSwap::from_pointee(in_force),
            inputs: Mutex::new(inputs),
        })
    }

    /// The settings in force (cheap: an atomic load and a reference count).
    pub fn current(&self) -> Arc<InForce> {
        self.current.load_full()
    }

    /// The layers as they are held now, for `GET /api/v1/settings`.
    pub fn layers(&self) -> Value {
        let inputs = self.inputs.lock().unwrap_or_else(|e| e.into_inner());
        json!({
            "file": inputs.file,
            "admin": inputs.admin,
            "hq_region": inputs.hq_region,
            "hq_store": inputs.hq_store,
        })
    }

    /// A new layer from the box's file (or environment).
    pub fn set_file(&self, layer: Value) -> Result<Option<Applied>, SettingsError> {
        self.change(Source::File, "file", |i| i.file = layer)
    }

    /// A new admin layer (the store admin's bot policy).
    pub fn set_admin(&self, layer: Value, by: &str) -> Result<Option<Applied>, SettingsError> {
        self.change(Source::Admin, by, |i| i.admin = layer)
    }

    /// HQ's layers as the store's settings document holds them now. Unchanged versions are a
    /// no-op (`Ok(None)`).
    pub fn set_hq(
        &self,
        region: Option<HqLayer>,
        store: Option<HqLayer>,
    ) -> Result<Option<Applied>, SettingsError> {
        let by = newest(&region, &store).map_or_else(|| "hq".into(), |l| l.author.clone());
        let source = if store.is_some() {
            Source::HqStore
        } else {
            Source::HqRegion
        };
        self.change(source, &by, |i| {
            i.hq_region = region;
            i.hq_store = store;
        })
    }

    /// Records a refused change (the set in force stays): shown until a change applies.
    fn note_refusal(&self, source: Source, reason: String) {
        let mut kept = (*self.current()).clone();
        kept.refused = Some(Refusal {
            source,
            reason,
            at_ms: now_ms(),
        });
        self.current.store(Arc::new(kept));
    }

    /// Applies `edit` to a copy of the layers, resolves and validates it, and swaps it in;
    /// `Ok(None)` when the change leaves the layers as they were.
    fn change(
        &self,
        source: Source,
        by: &str,
        edit: impl FnOnce(&mut Inputs),
    ) -> Result<Option<Applied>, SettingsError> {
        let label = match source {
            Source::HqRegion | Source::HqStore => "hq",
            other => other.as_str(),
        };
        let mut inputs = self.inputs.lock().unwrap_or_else(|e| e.into_inner());
        let mut next = inputs.clone();
        edit(&mut next);
        let before = self.current();
        if next == *inputs {
            // Back to what is in force (a bad edit undone): the refusal is over.
            if before.refused.as_ref().is_some_and(|r| r.source == source) {
                let mut cleared = (*before).clone();
                cleared.refused = None;
                self.current.store(Arc::new(cleared));
            }
            return Ok(None);
        }
        let resolved = match next.resolve() {
            Ok(resolved) => resolved,
            Err(err) => {
                METRICS
                    .settings_changes
                    .with_label_values(&[label, "refused"])
                    .inc();
                tracing::warn!(source = label, by, error = %err,
                    "settings change refused; the settings in force keep working");
                self.note_refusal(source, err.to_string());
                return Err(err);
            }
        };
        let changed = changed_paths(&before.resolved, &resolved);
        let generation = before.generation + 1;
        let in_force = InForce {
            resolved,
            generation,
            hq_version: next.hq_version(),
            changed_at_ms: now_ms(),
            changed_by: by.to_owned(),
            refused: None,
        };
        METRICS.settings_generation.set(generation as i64);
        METRICS.settings_hq_version.set(in_force.hq_version as i64);
        METRICS
            .settings_changes
            .with_label_values(&[label, "applied"])
            .inc();
        tracing::info!(source = label, by, generation, hq_version = in_force.hq_version,
            changed = ?changed, "settings applied");
        let in_force_hq_version = in_force.hq_version;
        self.current.store(Arc::new(in_force));
        *inputs = next;
        Ok(Some(Applied {
            generation,
            changed,
            by: by.to_owned(),
            hq_version: in_force_hq_version,
        }))
    }
}

/// The dotted paths whose values differ between two resolved sets.
fn changed_paths(before: &Resolved, after: &Resolved) -> Vec<String> {
    let (a, b) = (
        serde_json::to_value(&before.settings).expect("plain struct"),
        serde_json::to_value(&after.settings).expect("plain struct"),
    );
    after
        .sources
        .keys()
        .filter(|path| {
            let pointer = format!("/{}", path.replace('.', "/"));
            a.pointer(&pointer) != b.pointer(&pointer)
        })
        .cloned()
        .collect()
}

/// The box's layer: the live part of what its file and environment set.
pub fn file_layer(file: Option<&Path>) -> Result<Value, crate::config::ConfigError> {
    let raw = aisle_service::config::file_and_env(file, "AISLE_")?;
    Ok(aisle_settings::live_part(&raw))
}

/// The writer-side effects of a change that applied: its audit entry, and the capacity of
/// the accounts that follow the store's. Run in the transaction that records the change.
pub fn record(
    conn: &rusqlite::Connection,
    live: &LiveSettings,
    applied: &Applied,
) -> Result<(), crate::error::ApiError> {
    // The capacity of the set in force now (a later change may already have replaced this one).
    project_capacity(conn, &live.current())?;
    crate::audit::append(
        conn,
        &applied.by,
        "settings_changed",
        "",
        json!({
            "generation": applied.generation,
            "hq_version": applied.hq_version,
            "changed": applied.changed,
        }),
    )?;
    Ok(())
}

/// Accounts without a capacity of their own hold the store's `routing.capacity_per_staff`.
pub fn project_capacity(
    conn: &rusqlite::Connection,
    in_force: &InForce,
) -> Result<(), crate::error::ApiError> {
    conn.prepare_cached("UPDATE staff SET capacity = ?1 WHERE capacity_follows_store = 1")?
        .execute([in_force.resolved.settings.routing.capacity_per_staff])?;
    Ok(())
}

/// Watches the configuration file and applies each saved version's live settings. Returns
/// the watcher, which stops when dropped.
pub fn watch(app: &Arc<App>) -> Option<notify::RecommendedWatcher> {
    let path = app.config.file.clone()?;
    let app = Arc::clone(app);
    let watched = path.clone();
    crate::watch::watch_file(&watched, "configuration file", move || {
        let (app, path) = (Arc::clone(&app), path.clone());
        async move { reload_file(&app, &path).await }
    })
}

/// Reads the file again and applies its live settings; a file that does not load or whose
/// settings do not validate is refused, and the settings in force stay.
pub async fn reload_file(app: &Arc<App>, path: &Path) {
    let file = path.to_owned();
    let read = tokio::task::spawn_blocking(move || {
        // The whole file must still load (a typo anywhere would stop the next start).
        crate::config::Config::load(Some(&file), &crate::config::Overrides::default())?;
        file_layer(Some(&file))
    })
    .await;
    let layer = match read {
        Ok(Ok(layer)) => layer,
        Ok(Err(err)) => {
            METRICS
                .settings_changes
                .with_label_values(&["file", "refused"])
                .inc();
            tracing::warn!(error = %err, file = %path.display(),
                "the configuration file was refused; the settings in force keep working");
            app.settings.note_refusal(Source::File, err.to_string());
            return;
        }
        Err(_) => return,
    };
    match app.settings.set_file(layer) {
        Ok(Some(applied)) => {
            let live = Arc::clone(&app.settings);
            if let Err(err) = app
                .writer
                .exec(move |conn| record(conn, &live, &applied))
                .await
            {
                tracing::warn!(error = %err.message, "could not record the settings change");
            }
        }
        Ok(None) => tracing::debug!("configuration file saved without a change of settings"),
        Err(_) => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hq(version: u64, settings: Value) -> HqLayer {
        HqLayer {
            version,
            author: "hq:ops".into(),
            updated_at_ms: version,
            settings,
        }
    }

    #[test]
    fn a_refused_change_keeps_the_set_in_force() {
        let live = LiveSettings::start(
            json!({"routing": {"capacity_per_staff": 3}}),
            Value::Null,
            None,
            None,
        )
        .unwrap();
        assert_eq!(live.current().generation, 1);
        let applied = live
            .set_hq(
                Some(hq(7, json!({"routing": {"capacity_per_staff": 5}}))),
                None,
            )
            .unwrap()
            .unwrap();
        assert_eq!(applied.generation, 2);
        assert_eq!(applied.changed, vec!["routing.capacity_per_staff"]);
        let now = live.current();
        assert_eq!(now.resolved.settings.routing.capacity_per_staff, 5);
        assert_eq!(now.hq_version, 7);
        assert_eq!(now.changed_by, "hq:ops");

        let bad = json!({"routing": {"rules": [{"name": "r", "assign": {}}]}});
        assert!(live.set_hq(None, Some(hq(8, bad))).is_err());
        let kept = live.current();
        assert_eq!(kept.generation, 2);
        assert_eq!(kept.resolved.settings.routing.capacity_per_staff, 5);
        assert!(
            kept.refused
                .as_ref()
                .unwrap()
                .reason
                .contains("exactly one")
        );
        // The same layers again: nothing to do.
        assert!(
            live.set_hq(
                Some(hq(7, json!({"routing": {"capacity_per_staff": 5}}))),
                None
            )
            .unwrap()
            .is_none()
        );
    }

    #[test]
    fn the_intent_labels_are_the_models() {
        let model: Vec<&str> = aisle_models::Intent::ALL
            .iter()
            .map(|i| i.as_str())
            .collect();
        assert_eq!(model, aisle_settings::INTENT_LABELS);
    }
}
