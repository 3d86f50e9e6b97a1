//! Every limit of the hub, named with its unit, validated at start.

use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Limits {
    /// Longest sync frame accepted or sent (aisle-sync envelope included).
    pub max_frame_bytes: usize,
    /// Longest Automerge sync message for one document.
    pub max_document_bytes: usize,
    /// Documents this hub may have with a `sync` sent and not yet answered, per store.
    pub max_docs_in_flight: usize,
    /// Time a new sync connection has to send its `hello`.
    pub hello_timeout_ms: u64,
    /// A sync connection silent for this long is closed.
    pub idle_timeout_ms: u64,
    /// Open store sync connections.
    pub max_sync_connections: usize,
    /// Largest HTTP request body.
    pub max_http_body_bytes: usize,
    /// Argon2 computations running at once (each takes ~19 MiB and tens of milliseconds).
    pub max_concurrent_password_hashes: usize,
    /// Reader threads for HTTP queries (SQLite).
    pub reader_threads: usize,
    /// Connections of this process's pool to PostgreSQL (`database = "postgres://…"`); the
    /// server's `max_connections` must cover every replica's pool plus one listening
    /// connection each.
    pub postgres_pool_connections: usize,
    /// Longest wait of a request for a pooled PostgreSQL connection (or for a new one to
    /// open); past it the request fails with `internal` and the timeout is logged.
    pub postgres_pool_wait_ms: u64,
    /// Changes of other replicas waiting to be applied to this one's in-memory state; a
    /// replica that falls this far behind rebuilds that state from the database instead
    /// (`aisle_hub_replica_events_total{kind="resync"}`).
    pub max_replica_events: usize,
    /// Conversations per page of `GET /api/conversations` when `limit` is not given.
    pub default_page_conversations: usize,
    /// Largest `limit` of `GET /api/conversations` (a larger one is a `bad_request`).
    pub max_page_conversations: usize,
    /// Largest `limit` of `GET /api/audit` (a larger one is a `bad_request`).
    pub max_page_audit_entries: usize,
    /// Results of `GET /api/search` when `limit` is not given.
    pub default_search_results: usize,
    /// Largest `limit` of `GET /api/search`.
    pub max_search_results: usize,
    /// Longest search query `q`.
    pub max_search_query_chars: usize,
    /// A query whose every term is shorter than a trigram (3 characters, e.g. the Chinese word
    /// 退货) cannot use the index: it scans at most this many of the newest messages.
    pub max_search_scan_messages: usize,
    /// Documents erased in one transaction (a customer's deletion, a retention sweep, a store's
    /// `erase` frame); more are erased in further transactions.
    pub max_erase_batch_documents: usize,
    /// Longest time range of `GET /api/figures` (one volume entry per hour).
    pub max_figures_range_hours: u64,
    /// Documents one sync session keeps in memory; past this, documents with no open round are
    /// dropped from memory (they are on disk and reload when needed).
    pub max_session_documents: usize,
    /// The window in which failed logins, enrollments and continuation codes are counted; a
    /// key past its limit is refused until the window that began with its first failure ends.
    pub failure_window_secs: u64,
    /// Failed `POST /api/login` attempts from one client IP per `failure_window_secs`; past
    /// it logins from that IP are answered 429 `rate_limited` without being checked. The hub
    /// sees the TCP peer: behind a TLS proxy that is the proxy, hence a generous default.
    pub max_login_failures_per_ip_per_window: u32,
    /// Failed `POST /api/login` attempts for one username (from any IP) per window.
    pub max_login_failures_per_username_per_window: u32,
    /// Failed `POST /api/enroll` attempts (unknown store, wrong/used/expired token) from one
    /// client IP per window.
    pub max_enroll_failures_per_ip_per_window: u32,
    /// Failed `POST /api/enroll` attempts for one store id per window.
    pub max_enroll_failures_per_store_per_window: u32,
    /// Unknown, used or expired continuation codes one store may try per window
    /// (`POST /api/continuations`); every customer of the store comes through it, so this is
    /// higher than a person's limit at the store (which the store enforces itself).
    pub max_redeem_failures_per_store_per_window: u32,
    /// Unknown, used or expired continuation codes from one client IP per window.
    pub max_redeem_failures_per_ip_per_window: u32,
    /// Keys (client IPs, usernames, store ids) each throttle remembers; the least recently
    /// seen is forgotten first, so memory stays bounded whatever arrives.
    pub max_throttle_keys: usize,
}

impl Default for Limits {
    fn default() -> Self {
        let sync = aisle_sync::Limits::default();
        Self {
            max_frame_bytes: sync.max_frame_bytes,
            max_document_bytes: sync.max_document_bytes,
            max_docs_in_flight: sync.max_docs_in_flight,
            hello_timeout_ms: 10_000,
            idle_timeout_ms: 120_000,
            max_sync_connections: 10_000,
            max_http_body_bytes: 64 * 1024,
            max_concurrent_password_hashes: 4,
            reader_threads: 2,
            postgres_pool_connections: 16,
            postgres_pool_wait_ms: 5_000,
            max_replica_events: 4096,
            default_page_conversations: 50,
            max_page_conversations: 200,
            max_page_audit_entries: 500,
            default_search_results: 20,
            max_search_results: 100,
            max_search_query_chars: 200,
            max_search_scan_messages: 200_000,
            max_erase_batch_documents: 256,
            max_figures_range_hours: 31 * 24,
            max_session_documents: 256,
            failure_window_secs: 60,
            max_login_failures_per_ip_per_window: 100,
            max_login_failures_per_username_per_window: 10,
            max_enroll_failures_per_ip_per_window: 20,
            max_enroll_failures_per_store_per_window: 10,
            max_redeem_failures_per_store_per_window: 300,
            max_redeem_failures_per_ip_per_window: 600,
            max_throttle_keys: 10_000,
        }
    }
}

impl Limits {
    /// The protocol limits handed to `PeerSync` and the codec.
    pub fn sync(&self) -> aisle_sync::Limits {
        aisle_sync::Limits {
            max_frame_bytes: self.max_frame_bytes,
            max_docs_in_flight: self.max_docs_in_flight,
            max_document_bytes: self.max_document_bytes,
        }
    }

    pub fn validate(&self) -> Result<(), String> {
        self.sync().validate()?;
        for (name, value) in [
            ("hello_timeout_ms", self.hello_timeout_ms),
            ("idle_timeout_ms", self.idle_timeout_ms),
            ("max_sync_connections", self.max_sync_connections as u64),
            ("max_http_body_bytes", self.max_http_body_bytes as u64),
            (
                "max_concurrent_password_hashes",
                self.max_concurrent_password_hashes as u64,
            ),
            ("reader_threads", self.reader_threads as u64),
            (
                "postgres_pool_connections",
                self.postgres_pool_connections as u64,
            ),
            ("max_replica_events", self.max_replica_events as u64),
            ("postgres_pool_wait_ms", self.postgres_pool_wait_ms),
            (
                "default_page_conversations",
                self.default_page_conversations as u64,
            ),
            ("max_page_audit_entries", self.max_page_audit_entries as u64),
            ("default_search_results", self.default_search_results as u64),
            ("max_search_query_chars", self.max_search_query_chars as u64),
            (
                "max_search_scan_messages",
                self.max_search_scan_messages as u64,
            ),
            ("max_figures_range_hours", self.max_figures_range_hours),
            ("max_session_documents", self.max_session_documents as u64),
            (
                "max_erase_batch_documents",
                self.max_erase_batch_documents as u64,
            ),
            ("failure_window_secs", self.failure_window_secs),
            (
                "max_login_failures_per_ip_per_window",
                u64::from(self.max_login_failures_per_ip_per_window),
            ),
            (
                "max_login_failures_per_username_per_window",
                u64::from(self.max_login_failures_per_username_per_window),
            ),
            (
                "max_enroll_failures_per_ip_per_window",
                u64::from(self.max_enroll_failures_per_ip_per_window),
            ),
            (
                "max_enroll_failures_per_store_per_window",
                u64::from(self.max_enroll_failures_per_store_per_window),
            ),
            (
                "max_redeem_failures_per_store_per_window",
                u64::from(self.max_redeem_failures_per_store_per_window),
            ),
            (
                "max_redeem_failures_per_ip_per_window",
                u64::from(self.max_redeem_failures_per_ip_per_window),
            ),
            ("max_throttle_keys", self.max_throttle_keys as u64),
        ] {
            if value == 0 {
                return Err(format!("limits.{name} must be positive"));
            }
        }
        for (default, max, name) in [
            (
                self.default_page_conversations,
                self.max_page_conversations,
                "max_page_conversations",
            ),
            (
                self.default_search_results,
                self.max_search_results,
                "max_search_results",
            ),
        ] {
            if max < default {
                return Err(format!("limits.{name} must be at least its default"));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_zero_is_not() {
        Limits::default().validate().unwrap();
        let limits = Limits {
            reader_threads: 0,
            ..Limits::default()
        };
        assert!(limits.validate().unwrap_err().contains("reader_threads"));
        let limits = Limits {
            max_frame_bytes: 1000,
            ..Limits::default()
        };
        assert!(limits.validate().is_err());
    }
}
