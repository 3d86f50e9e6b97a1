//! `aisle-hub`: the regional hub. Stores enroll over HTTP and then sync their conversation
//! documents over one WebSocket each (`GET /sync`, the aisle-sync protocol of
//! docs/sync-protocol.md); HQ accounts use the HTTP API (docs/hub-api.md).
//!
//! ```text
//! edge ── /sync (binary aisle-sync frames) ──▶ sync.rs: one task per store
//!                                               │ PeerSync; chunk + sync state + HQ
//!                                               │ projection (projection.rs), then answer
//! HQ ──── /api (JSON, bearer tokens) ───────▶ api.rs, hq.rs (conversations, search, figures)
//!                                               ▼
//!                          store/ (HubStore): SQLite, one writer thread, reader threads
//! ```

pub mod api;
pub mod audit;
pub mod auth;
pub mod config;
pub mod continuation;
pub mod erasure;
pub mod error;
pub mod hq;
pub mod limits;
pub mod live_settings;
pub mod metrics;
pub mod projection;
pub mod replica;
pub mod server;
pub mod settings;
pub mod store;
pub mod sync;
pub mod throttle;
pub mod updates;
pub mod web;

use std::sync::Arc;

use tokio::sync::Semaphore;

use crate::config::Config;
use crate::store::HubStore;
use crate::sync::Registry;

/// Milliseconds since the Unix epoch.
pub use aisle_service::now_ms;

/// Everything a handler or sync task needs; shared behind an `Arc`.
pub struct App {
    pub config: Config,
    /// This hub's storage identity (a ULID kept in the data directory).
    pub hub_id: String,
    pub store: Arc<dyn HubStore>,
    /// Connected stores (one sync connection each).
    pub registry: Registry,
    /// Documents continued at stores other than their origin.
    pub shares: continuation::Shares,
    /// Serialises HQ's edits of the stores' settings documents.
    pub settings_lock: settings::SettingsLock,
    /// One permit per open sync connection.
    pub sync_connections: Arc<Semaphore>,
    /// Bounds concurrent Argon2 work.
    pub password_hashes: Semaphore,
    /// The HQ dashboard's files (embedded, or `web_dir`).
    pub web: aisle_service::web::WebAssets,
    /// Failed logins, enrollments and continuation codes per client IP and per name.
    pub throttles: throttle::Throttles,
}
