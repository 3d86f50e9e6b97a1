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
    /// Reader threads for HTTP queries.
    pub reader_threads: usize,
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
        ] {
            if value == 0 {
                return Err(format!("limits.{name} must be positive"));
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
