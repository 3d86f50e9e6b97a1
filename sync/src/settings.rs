//! A store's settings document (`settings:<store id>`): what HQ decides for a store and the hub
//! carries to it over the same sync protocol as conversations.
//!
//! # Layout
//!
//! | root key         | type  | contents                                                   |
//! |------------------|-------|------------------------------------------------------------|
//! | `meta`           | bytes | JSON of [`SettingsMeta`] (written once, by the hub)          |
//! | `canned_replies` | map   | reply id → JSON of [`CannedReply`]                         |
//! | `hq_region`      | bytes | JSON of [`HqLayer`]: HQ's settings for every store         |
//! | `hq_store`       | bytes | JSON of [`HqLayer`]: HQ's settings for this store          |
//!
//! **Only the hub writes it** (it is the document's creator, as the opening store is for a
//! conversation); the edge receives it by sync, starting from [`Settings::empty_for_sync`], and
//! projects it into its own tables. Replies are replaced whole (last writer wins per reply id),
//! and removed by deleting their key. HQ's layers of the live settings (`aisle-settings`:
//! routing rules, capacity, bot policy, hours, retention) are root scalars replaced whole, so
//! two hub replicas writing at once leave one of the two whole layers, never a mix, and no
//! container is ever created twice.

use automerge::sync::{self, SyncDoc};
use automerge::transaction::Transactable;
use automerge::{AutoCommit, ChangeHash, ObjId, ObjType, ROOT, ReadDoc, ScalarValueRef, ValueRef};
use serde::{Deserialize, Serialize};

use crate::error::SyncError;
use crate::peer::SyncedDoc;

const META: &str = "meta";
const CANNED_REPLIES: &str = "canned_replies";
const HQ_REGION: &str = "hq_region";
const HQ_STORE: &str = "hq_store";

/// Version of the settings document layout.
pub const SETTINGS_SCHEMA_VERSION: u32 = 1;

/// Facts fixed when the hub creates the document.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SettingsMeta {
    pub store_id: String,
    pub schema_version: u32,
}

/// A canned reply decided by HQ (region-wide or for this store).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CannedReply {
    pub id: String,
    pub shortcut: String,
    pub title: String,
    pub body: String,
    pub updated_at_ms: u64,
}

/// Which of HQ's two layers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LayerScope {
    /// Set for every store of the region (written into each store's document).
    Region,
    /// Set for this store only; wins over the region's.
    Store,
}

impl LayerScope {
    fn key(self) -> &'static str {
        match self {
            LayerScope::Region => HQ_REGION,
            LayerScope::Store => HQ_STORE,
        }
    }
}

/// One of HQ's layers of a store's live settings, replaced whole at each edit.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct HqLayer {
    /// Grows with every edit of this layer (the hub's clock in ms, or one more than the
    /// previous version): the version in force at a store is the larger of its two layers'.
    pub version: u64,
    /// Who made the edit (`hq:<user id>`), for the stores' audit logs.
    pub author: String,
    pub updated_at_ms: u64,
    /// A partial settings object in the shape of `aisle_settings::StoreSettings`.
    pub settings: serde_json::Value,
}

/// A replica of one store's settings document.
#[derive(Debug)]
pub struct Settings {
    doc: AutoCommit,
    saved_heads: Vec<ChangeHash>,
    store_id: String,
}

impl Settings {
    /// A new document; only the hub calls this (once per store).
    pub fn create(store_id: &str) -> Result<Self, SyncError> {
        let mut doc = AutoCommit::new();
        let meta = SettingsMeta {
            store_id: store_id.to_owned(),
            schema_version: SETTINGS_SCHEMA_VERSION,
        };
        doc.put(
            ROOT,
            META,
            serde_json::to_vec(&meta).expect("plain struct serialises"),
        )?;
        doc.put_object(ROOT, CANNED_REPLIES, ObjType::Map)?;
        Ok(Settings {
            doc,
            saved_heads: Vec::new(),
            store_id: store_id.to_owned(),
        })
    }

    /// A replica this peer has never held, to be filled by sync (the edge).
    pub fn empty_for_sync(store_id: &str) -> Self {
        Settings {
            doc: AutoCommit::new(),
            saved_heads: Vec::new(),
            store_id: store_id.to_owned(),
        }
    }

    /// Loads stored bytes (a save, optionally followed by incremental chunks).
    pub fn load(bytes: &[u8]) -> Result<Self, SyncError> {
        let mut doc = crate::conversation::load_guarded(bytes)?;
        let saved_heads = doc.get_heads();
        let meta = read_meta(&doc)?.ok_or(SyncError::MissingSchema(META))?;
        Ok(Settings {
            doc,
            saved_heads,
            store_id: meta.store_id,
        })
    }

    /// The store this document is for.
    pub fn store_id(&self) -> &str {
        &self.store_id
    }

    /// True once the document holds its skeleton (`meta` and `canned_replies`).
    pub fn is_complete(&self) -> bool {
        matches!(read_meta(&self.doc), Ok(Some(_))) && self.replies_obj().is_ok()
    }

    /// Adds or replaces a canned reply.
    pub fn put_canned_reply(&mut self, reply: &CannedReply) -> Result<(), SyncError> {
        let obj = self.replies_obj()?;
        self.doc.put(
            &obj,
            reply.id.as_str(),
            serde_json::to_vec(reply).expect("plain struct serialises"),
        )?;
        Ok(())
    }

    /// Removes a canned reply; false if there was none with this id.
    pub fn remove_canned_reply(&mut self, id: &str) -> Result<bool, SyncError> {
        let obj = self.replies_obj()?;
        if self.doc.get(&obj, id)?.is_none() {
            return Ok(false);
        }
        self.doc.delete(&obj, id)?;
        Ok(true)
    }

    /// Every canned reply, by id. A record that does not decode is an error (a buggy writer).
    pub fn canned_replies(&self) -> Result<Vec<CannedReply>, SyncError> {
        let obj = self.replies_obj()?;
        self.doc
            .map_range(&obj, ..)
            .map(|item| {
                let bytes = match &item.value {
                    ValueRef::Scalar(ScalarValueRef::Bytes(b)) => Some(b.as_ref()),
                    _ => None,
                };
                bytes
                    .and_then(|b| serde_json::from_slice::<CannedReply>(b).ok())
                    .filter(|r| r.id == item.key)
                    .ok_or_else(|| SyncError::Corrupt {
                        what: "canned reply",
                        key: item.key.to_string(),
                    })
            })
            .collect()
    }

    /// Replaces one of HQ's layers.
    pub fn put_layer(&mut self, scope: LayerScope, layer: &HqLayer) -> Result<(), SyncError> {
        self.doc.put(
            ROOT,
            scope.key(),
            serde_json::to_vec(layer).expect("plain struct serialises"),
        )?;
        Ok(())
    }

    /// One of HQ's layers, if HQ set it. A layer that does not decode is an error.
    pub fn layer(&self, scope: LayerScope) -> Result<Option<HqLayer>, SyncError> {
        match self.doc.get(ROOT, scope.key())? {
            None => Ok(None),
            Some((automerge::Value::Scalar(s), _)) => {
                match s.as_ref() {
                    automerge::ScalarValue::Bytes(b) => serde_json::from_slice(b)
                        .map(Some)
                        .map_err(|_| SyncError::Corrupt {
                            what: "settings layer",
                            key: scope.key().to_owned(),
                        }),
                    _ => Err(SyncError::Corrupt {
                        what: "settings layer",
                        key: scope.key().to_owned(),
                    }),
                }
            }
            Some(_) => Err(SyncError::Corrupt {
                what: "settings layer",
                key: scope.key().to_owned(),
            }),
        }
    }

    /// The whole document in Automerge's compact format.
    pub fn save(&mut self) -> Vec<u8> {
        let bytes = self.doc.save();
        self.saved_heads = self.doc.get_heads();
        bytes
    }

    /// The changes since the previous save; empty if none.
    pub fn save_incremental(&mut self) -> Vec<u8> {
        let bytes = self.doc.save_after(&self.saved_heads);
        self.saved_heads = self.doc.get_heads();
        bytes
    }

    /// Pulls every change of `other` (another replica of the same store's settings).
    pub fn merge(&mut self, other: &mut Settings) -> Result<(), SyncError> {
        if other.store_id != self.store_id {
            return Err(SyncError::ForeignDocument("another store's settings"));
        }
        self.doc.merge(&mut other.doc)?;
        Ok(())
    }

    pub fn heads(&mut self) -> Vec<ChangeHash> {
        self.doc.get_heads()
    }

    fn replies_obj(&self) -> Result<ObjId, SyncError> {
        match self.doc.get(ROOT, CANNED_REPLIES)? {
            None => Err(SyncError::MissingSchema(CANNED_REPLIES)),
            Some((automerge::Value::Object(ObjType::Map), obj)) => Ok(obj),
            Some(_) => Err(SyncError::Corrupt {
                what: "container",
                key: CANNED_REPLIES.to_owned(),
            }),
        }
    }
}

/// After a sync applied changes: one skeleton, for this store.
fn check(doc: &AutoCommit, store_id: &str) -> Result<(), SyncError> {
    for name in [META, CANNED_REPLIES] {
        if doc.get_all(ROOT, name)?.len() > 1 {
            return Err(SyncError::ForeignDocument(
                "the settings were created twice (conflicting skeletons)",
            ));
        }
    }
    if let Some(meta) = read_meta(doc)?
        && meta.store_id != store_id
    {
        return Err(SyncError::ForeignDocument("another store's settings"));
    }
    Ok(())
}

fn read_meta(doc: &AutoCommit) -> Result<Option<SettingsMeta>, SyncError> {
    match doc.get(ROOT, META)? {
        None => Ok(None),
        Some((value, _)) => {
            let bytes = match &value {
                automerge::Value::Scalar(s) => match s.as_ref() {
                    automerge::ScalarValue::Bytes(b) => Some(b.as_slice()),
                    _ => None,
                },
                _ => None,
            };
            bytes
                .and_then(|b| serde_json::from_slice(b).ok())
                .map(Some)
                .ok_or_else(|| SyncError::Corrupt {
                    what: "settings meta",
                    key: META.to_owned(),
                })
        }
    }
}

impl SyncedDoc for Settings {
    fn generate_sync_message(&mut self, state: &mut sync::State) -> Option<Vec<u8>> {
        self.doc
            .sync()
            .generate_sync_message(state)
            .map(sync::Message::encode)
    }

    fn receive_sync_message(
        &mut self,
        state: &mut sync::State,
        message: &[u8],
    ) -> Result<(), SyncError> {
        let store_id = self.store_id.clone();
        crate::conversation::receive_checked(&mut self.doc, state, message, |doc| {
            check(doc, &store_id)?;
            // Automerge 0.12 can accept changes whose document then saves to bytes that do not
            // load again (found by the `automerge_load` fuzz target). A store would then keep
            // settings it cannot reopen after a restart; the document is small, so every
            // change received is proved to round-trip before it is kept.
            let saved = crate::conversation::guarded(|| doc.clone().save())?;
            crate::conversation::load_guarded(&saved).map(|_| ())
        })
    }

    fn heads(&mut self) -> Vec<ChangeHash> {
        self.doc.get_heads()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::peer::PeerSync;
    use crate::protocol::{DocumentKey, Frame, Limits};

    fn reply(id: &str, body: &str) -> CannedReply {
        CannedReply {
            id: id.into(),
            shortcut: format!("/{id}"),
            title: id.into(),
            body: body.into(),
            updated_at_ms: 1,
        }
    }

    /// Runs rounds between two replicas until both are quiet.
    fn sync_pair(hub: &mut Settings, edge: &mut Settings) {
        let key = DocumentKey::settings(hub.store_id().to_owned()).unwrap();
        let mut hub_peer = PeerSync::new(Limits::default());
        let mut edge_peer = PeerSync::new(Limits::default());
        let mut next = hub_peer.generate(&key, hub);
        let mut to_edge = true;
        for _ in 0..20 {
            let Some(Frame::Sync { message, .. }) = next.take() else {
                break;
            };
            next = if to_edge {
                edge_peer.receive(&key, edge, &message).unwrap();
                Some(edge_peer.answer(&key, edge))
            } else {
                hub_peer.receive(&key, hub, &message).unwrap();
                Some(hub_peer.answer(&key, hub))
            };
            to_edge = !to_edge;
        }
    }

    #[test]
    fn hq_replies_reach_an_empty_replica_and_later_edits_follow() {
        let mut hub = Settings::create("store-1").unwrap();
        hub.put_canned_reply(&reply("hours", "We open at 9."))
            .unwrap();
        hub.put_canned_reply(&reply("returns", "30 days with receipt."))
            .unwrap();
        let mut edge = Settings::empty_for_sync("store-1");
        assert!(!edge.is_complete());
        sync_pair(&mut hub, &mut edge);
        assert!(edge.is_complete());
        assert_eq!(
            edge.canned_replies().unwrap(),
            hub.canned_replies().unwrap()
        );

        hub.put_canned_reply(&reply("hours", "We open at 8 during the sale."))
            .unwrap();
        assert!(hub.remove_canned_reply("returns").unwrap());
        sync_pair(&mut hub, &mut edge);
        let replies = edge.canned_replies().unwrap();
        assert_eq!(replies.len(), 1);
        assert_eq!(replies[0].body, "We open at 8 during the sale.");

        let bytes = edge.save();
        let loaded = Settings::load(&bytes).unwrap();
        assert_eq!(loaded.canned_replies().unwrap(), replies);
    }

    #[test]
    fn hq_layers_reach_the_store_and_are_replaced_whole() {
        let mut hub = Settings::create("store-1").unwrap();
        let layer = |version, capacity| HqLayer {
            version,
            author: "hq:ops".into(),
            updated_at_ms: version,
            settings: serde_json::json!({"routing": {"capacity_per_staff": capacity}}),
        };
        hub.put_layer(LayerScope::Region, &layer(10, 4)).unwrap();
        let mut edge = Settings::empty_for_sync("store-1");
        sync_pair(&mut hub, &mut edge);
        assert_eq!(edge.layer(LayerScope::Region).unwrap(), Some(layer(10, 4)));
        assert_eq!(edge.layer(LayerScope::Store).unwrap(), None);
        hub.put_layer(LayerScope::Region, &layer(11, 6)).unwrap();
        hub.put_layer(LayerScope::Store, &layer(12, 2)).unwrap();
        sync_pair(&mut hub, &mut edge);
        assert_eq!(edge.layer(LayerScope::Region).unwrap(), Some(layer(11, 6)));
        assert_eq!(edge.layer(LayerScope::Store).unwrap(), Some(layer(12, 2)));
        let loaded = Settings::load(&edge.save()).unwrap();
        assert_eq!(loaded.layer(LayerScope::Store).unwrap(), Some(layer(12, 2)));
    }

    #[test]
    fn another_stores_settings_are_refused_and_change_nothing() {
        let mut other = Settings::create("store-2").unwrap();
        other.put_canned_reply(&reply("x", "y")).unwrap();
        let mut edge = Settings::empty_for_sync("store-1");
        let mut state = sync::State::new();
        let mut other_state = sync::State::new();
        // Other's first message only announces heads; answer and get the changes.
        let first = other.generate_sync_message(&mut other_state).unwrap();
        edge.receive_sync_message(&mut state, &first).unwrap();
        let ask = edge.generate_sync_message(&mut state).unwrap();
        other.receive_sync_message(&mut other_state, &ask).unwrap();
        let changes = other.generate_sync_message(&mut other_state).unwrap();
        assert!(edge.receive_sync_message(&mut state, &changes).is_err());
        assert!(!edge.is_complete());
    }
}
