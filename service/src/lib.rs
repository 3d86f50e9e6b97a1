//! `aisle-service`: the pieces both servers (`aisle-edge` in a store, `aisle-hub` in a region)
//! need and that have nothing to do with chat: layered configuration, the binary's `main`,
//! secrets, signals, the clock, SQLite WAL checkpoints off the writer thread and the
//! hash-chained audit log. One copy, so a
//! fix (say, installing the SIGTERM handler before the first request) reaches both.

pub mod audit;
pub mod checkpoint;
pub mod config;
pub mod run;
pub mod secret;
pub mod signals;
pub mod throttle;
pub mod web;

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}
