//! Hub replicas: several `aisle-hub` processes on one PostgreSQL database behind a load
//! balancer. The database is the only thing they share; what each keeps in memory (which
//! stores are connected here, which documents are shared with which stores) follows the
//! others' commits through [`HubStore::events`] (LISTEN/NOTIFY in the PostgreSQL back end).
//!
//! - A document another replica stored is pushed to the stores connected *here* that sync it
//!   (its origin and the stores it was continued at), exactly as a change stored here is.
//! - A share (a redeemed hand-off code) joins this replica's map, so the store's next round
//!   for that conversation is accepted here even though it redeemed the code elsewhere.
//! - An erasure is told to the stores connected here that held a copy.
//! - A revoked store's connection here is closed.
//! - When notifications may have been missed (the listening connection was lost, or this
//!   replica fell `max_replica_events` behind), the shares are reloaded and every connection
//!   here is closed: the stores reconnect and their manifests bring them up to date. That is
//!   the bound on how stale a replica can be: a lost notification costs a reconnect, never a
//!   change.

use std::sync::Arc;

use aisle_sync::DocumentKey;
use tokio::sync::broadcast::Receiver;
use tokio::sync::broadcast::error::RecvError;

use crate::App;
use crate::metrics::METRICS;
use crate::store::ReplicaEvent;

/// Applies other replicas' changes (`events`, subscribed before the in-memory state was
/// loaded) until the stream ends. Does nothing for a store only this process writes (SQLite).
pub async fn follow(app: Arc<App>, events: Option<Receiver<ReplicaEvent>>) {
    let Some(mut events) = events else {
        return;
    };
    loop {
        match events.recv().await {
            Ok(event) => apply(&app, event).await,
            Err(RecvError::Lagged(missed)) => {
                tracing::warn!(missed, "fell behind the other replicas' changes: resyncing");
                apply(&app, ReplicaEvent::Resync).await;
            }
            Err(RecvError::Closed) => return,
        }
    }
}

async fn apply(app: &App, event: ReplicaEvent) {
    let kind = match &event {
        ReplicaEvent::DocumentChanged { .. } => "document_changed",
        ReplicaEvent::Shared { .. } => "shared",
        ReplicaEvent::Erased { .. } => "erased",
        ReplicaEvent::Revoked { .. } => "revoked",
        ReplicaEvent::Resync => "resync",
    };
    METRICS.replica_events.with_label_values(&[kind]).inc();
    match event {
        ReplicaEvent::DocumentChanged {
            doc_key,
            origin_store,
        } => {
            let Ok(key) = doc_key.parse::<DocumentKey>() else {
                tracing::warn!(doc = %doc_key, "another replica named a document this one cannot parse");
                return;
            };
            app.registry.push(&origin_store, &key);
            for store in app.shares.stores_of(&doc_key) {
                app.registry.push(&store, &key);
            }
        }
        ReplicaEvent::Shared { doc_key, store_id } => app.shares.add(&doc_key, &store_id),
        ReplicaEvent::Erased { doc_key, holders } => {
            app.shares.remove(&doc_key);
            if let Ok(key) = doc_key.parse::<DocumentKey>() {
                for store in holders {
                    app.registry.push_erased(&store, &key);
                }
            }
        }
        ReplicaEvent::Revoked { store_id } => app.registry.disconnect(&store_id),
        ReplicaEvent::Resync => {
            match app.store.shares().await {
                Ok(rows) => app.shares.reload(rows),
                Err(err) => tracing::error!(error = %err, "reloading the shares after a resync"),
            }
            app.registry.disconnect_all();
        }
    }
}
