//! The layers of a store's settings and how they resolve: built-in defaults < the box's file
//! (and environment) < the store admin < HQ for the region < HQ for this store. Each layer is
//! a partial JSON object in the model's shape; a later layer's value replaces an earlier one
//! key by key (lists, such as the routing rules, are replaced whole). The result says, for
//! every setting, which layer it came from.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::error::SettingsError;
use crate::model::{StoreSettings, limits};

/// Where a setting's value came from, lowest first.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Source {
    /// Built into the binary.
    Default,
    /// The box's TOML file or its environment (`AISLE_ROUTING__CAPACITY_PER_STAFF`).
    File,
    /// The store's admin, on the store's admin page (the bot policy).
    Admin,
    /// HQ, for every store of the region.
    HqRegion,
    /// HQ, for this store.
    HqStore,
}

impl Source {
    pub fn as_str(self) -> &'static str {
        match self {
            Source::Default => "default",
            Source::File => "file",
            Source::Admin => "admin",
            Source::HqRegion => "hq_region",
            Source::HqStore => "hq_store",
        }
    }
}

/// Settings resolved from their layers, with the source of every value.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Resolved {
    pub settings: StoreSettings,
    /// Dotted path of every setting (`routing.capacity_per_staff`) → its source.
    pub sources: BTreeMap<String, Source>,
}

impl Default for Resolved {
    fn default() -> Self {
        resolve(&[]).expect("the defaults resolve")
    }
}

/// Resolves `layers` (in any order; applied lowest source first) over the defaults and
/// validates the result. An error names the setting at fault; nothing is half-applied.
pub fn resolve(layers: &[(Source, &Value)]) -> Result<Resolved, SettingsError> {
    let mut tree = serde_json::to_value(StoreSettings::default()).expect("plain struct");
    let mut sources = BTreeMap::new();
    leaves(&tree, "", &mut |path| {
        sources.insert(path, Source::Default);
    });
    let mut ordered: Vec<&(Source, &Value)> = layers.iter().collect();
    ordered.sort_by_key(|(source, _)| *source);
    for (source, layer) in ordered {
        check_shape(layer)?;
        merge(&mut tree, layer, "", *source, &mut sources)?;
    }
    let settings: StoreSettings = serde_path_to_error::deserialize(tree)
        .map_err(|err| SettingsError::Shape(format!("{}: {}", err.path(), err.inner())))?;
    settings.validate()?;
    Ok(Resolved { settings, sources })
}

/// Checks one layer on its own (what HQ pushes or a file holds): its shape, its size, and
/// that it resolves over the defaults.
pub fn validate_layer(layer: &Value) -> Result<(), SettingsError> {
    let bytes = serde_json::to_vec(layer)
        .map(|v| v.len())
        .unwrap_or(usize::MAX);
    if bytes > limits::MAX_LAYER_BYTES {
        return Err(SettingsError::Shape(format!(
            "a settings layer is at most {} bytes of JSON (got {bytes})",
            limits::MAX_LAYER_BYTES
        )));
    }
    resolve(&[(Source::HqStore, layer)]).map(|_| ())
}

fn check_shape(layer: &Value) -> Result<(), SettingsError> {
    match layer {
        Value::Object(_) | Value::Null => Ok(()),
        _ => Err(SettingsError::Shape(
            "a settings layer is a JSON object (or TOML table)".into(),
        )),
    }
}

/// Calls `f` with the dotted path of every leaf (a non-object value) of `tree`.
fn leaves(tree: &Value, prefix: &str, f: &mut impl FnMut(String)) {
    match tree {
        Value::Object(map) if !map.is_empty() => {
            for (key, value) in map {
                leaves(value, &join(prefix, key), f);
            }
        }
        _ => f(prefix.to_owned()),
    }
}

fn join(prefix: &str, key: &str) -> String {
    if prefix.is_empty() {
        key.to_owned()
    } else {
        format!("{prefix}.{key}")
    }
}

fn merge(
    base: &mut Value,
    layer: &Value,
    prefix: &str,
    source: Source,
    sources: &mut BTreeMap<String, Source>,
) -> Result<(), SettingsError> {
    let Value::Object(layer) = layer else {
        return Ok(());
    };
    let base = match base {
        Value::Object(map) => map,
        _ => {
            return Err(SettingsError::Shape(format!(
                "{prefix} is a value, not a table"
            )));
        }
    };
    for (key, value) in layer {
        let path = join(prefix, key);
        if value.is_null() {
            continue;
        }
        match base.get_mut(key) {
            None => {
                return Err(SettingsError::Shape(format!("unknown setting {path}")));
            }
            Some(existing @ Value::Object(_)) => {
                if !value.is_object() {
                    return Err(SettingsError::Shape(format!(
                        "{path} is a table of settings, not a value"
                    )));
                }
                merge(existing, value, &path, source, sources)?;
            }
            Some(existing) => {
                *existing = value.clone();
                sources.insert(path, source);
            }
        }
    }
    Ok(())
}

/// The sub-object of `layer` under the top-level keys of the model: what of a whole TOML
/// configuration (which also holds the box's static settings) is a settings layer.
pub fn live_part(config: &Map<String, Value>) -> Value {
    let defaults = serde_json::to_value(StoreSettings::default()).expect("plain struct");
    let mut out = Map::new();
    let Value::Object(defaults) = defaults else {
        unreachable!("a struct serialises to an object")
    };
    for (section, default) in &defaults {
        let Some(Value::Object(given)) = config.get(section) else {
            continue;
        };
        let Value::Object(known) = default else {
            continue;
        };
        let picked: Map<String, Value> = given
            .iter()
            .filter(|(k, _)| known.contains_key(*k))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        if !picked.is_empty() {
            out.insert(section.clone(), Value::Object(picked));
        }
    }
    Value::Object(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn later_layers_win_key_by_key_and_say_so() {
        let file = json!({"routing": {"capacity_per_staff": 5}, "bot": {"min_confidence": 0.9}});
        let region = json!({"routing": {"capacity_per_staff": 12}});
        let store = json!({"bot": {"intents": ["store_info"]}});
        let r = resolve(&[
            (Source::HqStore, &store),
            (Source::File, &file),
            (Source::HqRegion, &region),
        ])
        .unwrap();
        assert_eq!(r.settings.routing.capacity_per_staff, 12);
        assert_eq!(r.settings.bot.min_confidence, 0.9);
        assert_eq!(r.settings.bot.intents, vec!["store_info".to_string()]);
        assert_eq!(r.sources["routing.capacity_per_staff"], Source::HqRegion);
        assert_eq!(r.sources["bot.min_confidence"], Source::File);
        assert_eq!(r.sources["bot.intents"], Source::HqStore);
        assert_eq!(r.sources["routing.rules"], Source::Default);
        assert_eq!(r.sources["hours.offline_message"], Source::Default);
    }

    #[test]
    fn an_unknown_or_misshapen_setting_is_named() {
        let err = resolve(&[(Source::File, &json!({"routing": {"capacity": 3}}))]).unwrap_err();
        assert!(err.to_string().contains("routing.capacity"), "{err}");
        let err = resolve(&[(Source::File, &json!({"routing": 3}))]).unwrap_err();
        assert!(err.to_string().contains("routing"), "{err}");
        let err = validate_layer(&json!({"routing": {"capacity_per_staff": "many"}})).unwrap_err();
        assert!(matches!(err, SettingsError::Shape(_)), "{err}");
        assert!(
            err.to_string().starts_with("routing.capacity_per_staff:"),
            "{err}"
        );
        let rule = json!({"name": "r", "assign": {"skill": "x"}, "whne": {}});
        let err = validate_layer(&json!({"routing": {"rules": [rule]}})).unwrap_err();
        assert!(err.to_string().starts_with("routing.rules[0]"), "{err}");
        assert!(err.to_string().contains("whne"), "{err}");
        let err = validate_layer(&json!({"routing": {"capacity_per_staff": 100000}})).unwrap_err();
        assert!(err.to_string().contains("capacity_per_staff"), "{err}");
    }

    #[test]
    fn the_live_part_of_a_whole_configuration() {
        let config = json!({
            "listen": "0.0.0.0:80",
            "routing": {"capacity_per_staff": 3},
            "retention": {"resolved_conversation_secs": 60, "sweep_interval_secs": 5},
        });
        let Value::Object(config) = config else {
            unreachable!()
        };
        assert_eq!(
            live_part(&config),
            json!({"routing": {"capacity_per_staff": 3},
                   "retention": {"resolved_conversation_secs": 60}})
        );
    }
}
