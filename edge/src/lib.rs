//! `aisle-edge`: the store appliance's chat server.
//!
//! Bird's-eye view (ARCHITECTURE.md has the whole picture):
//!
//! ```text
//! WebSocket / HTTP (axum, tokio)          store/writer.rs: one thread, group commit
//!   connection.rs ── Command ──────────▶  SQLite rows + Automerge documents, one txn
//!   api.rs                                 │ commit
//!       ▲                                  ▼
//!       └──── delivery.rs (fan-out) ◀── acks, messages, state frames
//!   store/reader.rs: read-only SQLite threads for history and lists
//! ```

pub mod api;
pub mod attachment;
pub mod audit;
pub mod auth;
pub mod bot;
pub mod config;
pub mod connection;
pub mod delivery;
pub mod enrollment;
pub mod erasure;
pub mod error;
pub mod frame;
pub mod intent;
pub mod limits;
pub mod metrics;
pub mod routing;
pub mod server;
pub mod settings;
pub mod shutdown;
pub mod store;
pub mod throttle;
pub mod update;
pub mod uplink;
pub mod watch;
pub mod web;

use std::sync::Arc;
use std::time::Instant;

use tokio::sync::Semaphore;

use crate::auth::ResumeTokens;
use crate::config::Config;
use crate::delivery::Delivery;
use crate::shutdown::Shutdown;
use crate::store::reader::Reader;
use crate::store::writer::Writer;

pub use aisle_service::now_ms;

/// Everything a request handler or connection task needs; shared behind an `Arc`.
pub struct App {
    pub config: Config,
    pub writer: Writer,
    pub reader: Reader,
    pub delivery: Arc<Delivery>,
    pub tokens: ResumeTokens,
    /// One permit per open WebSocket connection (`max_connections`).
    pub connections: Arc<Semaphore>,
    /// Bounds concurrent Argon2 work (`max_concurrent_password_hashes`).
    pub password_hashes: Semaphore,
    pub shutdown: Shutdown,
    pub started: Instant,
    /// Conversations changed since the uplink last looked (filled by the writer).
    pub changes: Arc<store::writer::replica::Changes>,
    /// The link to the region's hub (idle when no hub is configured).
    pub uplink: uplink::Uplink,
    /// The web pages (embedded, or `web_dir`).
    pub web: aisle_service::web::WebAssets,
    /// The intent model's inference threads and the model in force (hot-swappable).
    pub classifier: aisle_models::Classifier,
    /// Why the last model file offered was refused, until one is accepted (`/healthz`).
    pub model_error: std::sync::Mutex<Option<String>>,
    /// Firmware updates: the running slot, one install at a time.
    pub update: update::Updates,
    /// Per-client limits: failed logins and codes, frames and new connections per IP.
    pub throttles: throttle::Throttles,
    /// The live settings in force (routing, capacity, bot, hours, retention), swapped whole.
    pub settings: Arc<settings::LiveSettings>,
}
