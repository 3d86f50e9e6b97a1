//! Every limit the appliance enforces, in one place, named with its unit.
//!
//! A limit that is reached answers the client with a stable error code (protocol.md §9,
//! api.md) and increments `aisle_limit_exceeded_total{limit="<field name>"}`, so an operator
//! can see which one bites. Nothing already accepted is dropped when a limit is hit.

use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Limits {
    /// Largest WebSocket text frame we parse. Up to 4× this the frame is read and refused with
    /// `frame_too_large`; beyond that the socket layer refuses to buffer it and closes (1009).
    pub max_frame_bytes: usize,
    /// Longest message body, in Unicode scalar values (characters).
    pub max_message_chars: usize,
    /// Longest client message id, in bytes.
    pub max_client_msg_id_bytes: usize,
    /// Steady rate of frames one connection may send, per second (token bucket refill).
    pub max_frames_per_sec: u32,
    /// Token bucket size: a burst of this many frames is allowed.
    pub max_frames_burst: u32,
    /// Sends of one connection waiting for their commit; past this the server stops reading
    /// that connection (TCP back-pressure) until acks go out.
    pub max_inflight_sends: usize,
    /// Frames queued for one connection; a client that stops reading is dropped (`slow_consumer`).
    pub max_outbound_frames: usize,
    /// Commands queued for the writer thread; past this, sends get `overloaded`.
    pub max_write_queue: usize,
    /// Queries queued for the reader threads; past this, requests get `overloaded`.
    pub max_read_queue: usize,
    /// Most commands the writer folds into one transaction (group commit).
    pub max_batch_commands: usize,
    /// Open WebSocket connections held by the process; past this, upgrades get HTTP 503.
    /// Each costs one file descriptor, so at start the value in force is lowered to what the
    /// open-file limit leaves after `reserved_file_descriptors` (logged, `aisle_max_connections`).
    pub max_connections: usize,
    /// File descriptors kept back from WebSocket connections for everything else the process
    /// opens: the database (main file, WAL and shared memory per connection), the listener,
    /// HTTP requests, the hub link, uploads, the model file and its watcher. Without this
    /// reserve a full house of sockets would make SQLite or `accept` fail with EMFILE.
    pub reserved_file_descriptors: usize,
    /// Pause of the accept loop after `accept` failed for want of descriptors (EMFILE,
    /// ENFILE): the waiting connection stays in the kernel's backlog instead of the loop
    /// spinning on the same error; counted as `aisle_limit_exceeded_total{limit="nofile"}`.
    pub accept_error_backoff_ms: u64,
    /// Messages one conversation may hold.
    pub max_messages_per_conversation: u64,
    /// Size of one conversation's Automerge document (compacted size plus pending increments).
    pub max_document_bytes: usize,
    /// Conversation documents kept in the writer's memory (LRU); others are loaded on demand.
    pub max_hot_documents: usize,
    /// SQLite page cache of the writer connection, in KiB: it touches every conversation's
    /// pages, so it gets the larger share. Part of the process's resident memory.
    pub writer_page_cache_kib: u32,
    /// SQLite page cache of each reader connection (history pages, lists), in KiB.
    pub reader_page_cache_kib: u32,
    /// History frames replayed for one `resume`; the client resumes again for more.
    pub max_history_frames: usize,
    /// Items per page of the HTTP API.
    pub max_page_items: usize,
    /// Conversations erased in one transaction (a retention sweep's batch, an `erase` frame's
    /// share); more are erased in further transactions.
    pub max_erase_batch_documents: usize,
    /// HTTP request body size.
    pub max_http_body_bytes: usize,
    /// Size of one uploaded image (`POST /api/attachments`).
    pub max_attachment_bytes: usize,
    /// Size of one firmware update bundle (`POST /api/update`); the bundle format allows at
    /// most `aisle_update::MAX_BUNDLE_BYTES` (256 MiB), so a larger value is refused at start.
    pub max_bundle_bytes: u64,
    /// Text a QR code drawn by `GET /api/qr.svg` may hold (a hand-off link is ~40 bytes).
    pub max_qr_text_bytes: usize,
    /// Customer messages waiting for an inference thread; past it a message is stored
    /// without an intent (never refused, never delayed further).
    pub max_classify_queue: usize,
    /// How long a send waits for its intent before it is stored without one.
    pub classify_timeout_ms: u64,
    /// Bytes tungstenite reads per socket read call (its 128 KiB default costs ~137 KB per idle
    /// connection; 4 KiB costs ~9 KB, docs/MEASUREMENTS.md).
    pub ws_read_buffer_bytes: usize,
    /// Bytes tungstenite gathers before writing to the socket: frames fed together (a history
    /// replay, a burst of acks) go out in a few writes instead of one syscall each.
    pub ws_write_buffer_bytes: usize,
    /// Time a new connection has to send `hello`.
    pub hello_timeout_ms: u64,
    /// Interval of server pings.
    pub heartbeat_interval_secs: u64,
    /// A connection that sends nothing (not even a pong) for this long is closed.
    pub idle_timeout_secs: u64,
    /// A write to a client socket that takes longer than this drops the connection (a
    /// client that stopped reading must not hold its task forever).
    pub write_timeout_ms: u64,
    /// Time SIGTERM waits for connections to say goodbye and commits to finish.
    pub shutdown_grace_ms: u64,
    /// Concurrent password hashes (Argon2 costs ~20 MiB and tens of ms each).
    pub max_concurrent_password_hashes: usize,
    /// Longest frame on the sync connection to the hub, either way. A document's first sync
    /// carries the whole document, so documents larger than this (less the envelope) are not
    /// synced (`document_too_large`, counted).
    pub max_sync_frame_bytes: usize,
    /// Conversations with a `sync` sent to the hub and not yet answered (the sync window).
    pub max_sync_docs_in_flight: usize,
    /// Hub frames being applied by the writer at once; past this the uplink stops reading its
    /// socket (TCP back-pressure on the hub).
    pub max_sync_pending_frames: usize,
    /// Time to connect to the hub and get its `welcome`.
    pub sync_connect_timeout_ms: u64,
    /// The hub connection is retried after a doubling delay between these two.
    pub sync_retry_min_ms: u64,
    pub sync_retry_max_ms: u64,
    /// After a refusal (revoked, wrong region, unknown store, bad credential) the hub is asked
    /// again only this rarely: an operator has to act first.
    pub sync_refused_retry_ms: u64,
    /// Time a new hand-off code waits for the hub to register it (so it works at the region's
    /// other stores at once); past this the code is answered anyway and registration goes on.
    pub handoff_register_timeout_ms: u64,
    /// Steady rate of frames all WebSocket connections of one client IP may send together,
    /// per second: a phone opening 50 connections does not get 50 `max_frames_per_sec`
    /// buckets. Generous, because a kiosk or a store's NAT'd Wi-Fi puts many people behind
    /// one address. Past it, frames get `rate_limited` (docs/protocol.md §9).
    pub max_frames_per_ip_per_sec: u32,
    /// Burst of frames one client IP may send above its steady rate.
    pub max_frames_per_ip_burst: u32,
    /// Steady rate of new WebSocket connections one client IP may open, per second; past it
    /// the upgrade is answered 429 `rate_limited` with `Retry-After`.
    pub max_new_connections_per_ip_per_sec: u32,
    /// Burst of new connections per client IP (every phone behind a store's NAT reconnecting
    /// after a restart of the appliance).
    pub max_new_connections_per_ip_burst: u32,
    /// The window in which failed logins and failed hand-off codes are counted; a key past
    /// its limit is refused until the window that began with its first failure ends.
    pub failure_window_secs: u64,
    /// Failed `POST /api/login` attempts from one client IP per `failure_window_secs`; past
    /// it every login from that IP is answered 429 `rate_limited` without checking it.
    pub max_login_failures_per_ip_per_window: u32,
    /// Failed `POST /api/login` attempts for one username (from any IP) per window.
    pub max_login_failures_per_username_per_window: u32,
    /// Unknown, used or expired hand-off codes tried from one client IP per window
    /// (`POST /api/handoff/{code}`).
    pub max_handoff_failures_per_ip_per_window: u32,
    /// Keys (client IPs, usernames) each throttle remembers; the least recently seen is
    /// forgotten first, so a flood of new addresses or names cannot grow memory.
    pub max_throttle_keys: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_frame_bytes: 16 * 1024,
            max_message_chars: 4000,
            max_client_msg_id_bytes: 64,
            max_frames_per_sec: 100,
            max_frames_burst: 200,
            max_inflight_sends: 64,
            max_outbound_frames: 1024,
            max_write_queue: 16 * 1024,
            max_read_queue: 4096,
            max_batch_commands: 2048,
            max_connections: 19_000,
            reserved_file_descriptors: 256,
            accept_error_backoff_ms: 100,
            max_messages_per_conversation: 20_000,
            max_document_bytes: 8 * 1024 * 1024,
            max_hot_documents: 2048,
            writer_page_cache_kib: 64_000,
            reader_page_cache_kib: 8_000,
            max_history_frames: 1000,
            max_page_items: 500,
            max_erase_batch_documents: 256,
            max_http_body_bytes: 64 * 1024,
            max_attachment_bytes: 5 * 1024 * 1024,
            max_bundle_bytes: aisle_update::MAX_BUNDLE_BYTES,
            max_qr_text_bytes: 512,
            max_classify_queue: 256,
            classify_timeout_ms: 50,
            ws_read_buffer_bytes: 4 * 1024,
            ws_write_buffer_bytes: 8 * 1024,
            hello_timeout_ms: 10_000,
            heartbeat_interval_secs: 20,
            idle_timeout_secs: 60,
            write_timeout_ms: 10_000,
            shutdown_grace_ms: 5_000,
            max_concurrent_password_hashes: 2,
            max_sync_frame_bytes: 8 * 1024 * 1024 + 64 * 1024,
            max_sync_docs_in_flight: 32,
            max_sync_pending_frames: 256,
            sync_connect_timeout_ms: 10_000,
            sync_retry_min_ms: 250,
            sync_retry_max_ms: 30_000,
            sync_refused_retry_ms: 300_000,
            handoff_register_timeout_ms: 2_000,
            max_frames_per_ip_per_sec: 500,
            max_frames_per_ip_burst: 1_000,
            max_new_connections_per_ip_per_sec: 20,
            max_new_connections_per_ip_burst: 300,
            failure_window_secs: 60,
            max_login_failures_per_ip_per_window: 30,
            max_login_failures_per_username_per_window: 10,
            max_handoff_failures_per_ip_per_window: 30,
            max_throttle_keys: 10_000,
        }
    }
}

impl Limits {
    /// Checks the values make sense together; called once at start so a bad config file fails
    /// loudly instead of misbehaving later.
    pub fn validate(&self) -> Result<(), String> {
        let positive = [
            ("max_frame_bytes", self.max_frame_bytes),
            ("max_message_chars", self.max_message_chars),
            ("max_client_msg_id_bytes", self.max_client_msg_id_bytes),
            ("max_inflight_sends", self.max_inflight_sends),
            ("max_outbound_frames", self.max_outbound_frames),
            ("max_write_queue", self.max_write_queue),
            ("max_read_queue", self.max_read_queue),
            ("max_batch_commands", self.max_batch_commands),
            ("max_connections", self.max_connections),
            ("max_hot_documents", self.max_hot_documents),
            ("writer_page_cache_kib", self.writer_page_cache_kib as usize),
            ("reader_page_cache_kib", self.reader_page_cache_kib as usize),
            ("max_history_frames", self.max_history_frames),
            ("max_page_items", self.max_page_items),
            ("max_erase_batch_documents", self.max_erase_batch_documents),
            ("max_attachment_bytes", self.max_attachment_bytes),
            ("max_qr_text_bytes", self.max_qr_text_bytes),
            ("max_classify_queue", self.max_classify_queue),
            ("ws_read_buffer_bytes", self.ws_read_buffer_bytes),
            (
                "max_concurrent_password_hashes",
                self.max_concurrent_password_hashes,
            ),
            ("max_sync_docs_in_flight", self.max_sync_docs_in_flight),
            ("max_sync_pending_frames", self.max_sync_pending_frames),
            ("max_throttle_keys", self.max_throttle_keys),
        ];
        for (name, value) in positive {
            if value == 0 {
                return Err(format!("limits.{name} must be greater than 0"));
            }
        }
        if self.max_bundle_bytes == 0 || self.max_bundle_bytes > aisle_update::MAX_BUNDLE_BYTES {
            return Err(format!(
                "limits.max_bundle_bytes must be 1 to {} (the bundle format's limit)",
                aisle_update::MAX_BUNDLE_BYTES
            ));
        }
        if self.max_frames_per_sec == 0 || self.max_frames_burst == 0 {
            return Err("limits.max_frames_per_sec and max_frames_burst must be > 0".into());
        }
        for (name, value) in [
            ("max_frames_per_ip_per_sec", self.max_frames_per_ip_per_sec),
            ("max_frames_per_ip_burst", self.max_frames_per_ip_burst),
            (
                "max_new_connections_per_ip_per_sec",
                self.max_new_connections_per_ip_per_sec,
            ),
            (
                "max_new_connections_per_ip_burst",
                self.max_new_connections_per_ip_burst,
            ),
            (
                "max_login_failures_per_ip_per_window",
                self.max_login_failures_per_ip_per_window,
            ),
            (
                "max_login_failures_per_username_per_window",
                self.max_login_failures_per_username_per_window,
            ),
            (
                "max_handoff_failures_per_ip_per_window",
                self.max_handoff_failures_per_ip_per_window,
            ),
        ] {
            if value == 0 {
                return Err(format!("limits.{name} must be greater than 0"));
            }
        }
        if self.failure_window_secs == 0 {
            return Err("limits.failure_window_secs must be greater than 0".into());
        }
        // A frame must be able to carry a full-length message (4 bytes per char in UTF-8, plus
        // JSON around it), or the body limit would be unreachable.
        if self.max_frame_bytes < self.max_message_chars + 256 {
            return Err("limits.max_frame_bytes must exceed max_message_chars + 256".into());
        }
        if self.heartbeat_interval_secs == 0
            || self.idle_timeout_secs <= self.heartbeat_interval_secs
        {
            return Err("limits.idle_timeout_secs must exceed heartbeat_interval_secs > 0".into());
        }
        if self.accept_error_backoff_ms == 0 {
            return Err("limits.accept_error_backoff_ms must be greater than 0".into());
        }
        if self.max_sync_frame_bytes < 64 * 1024 {
            return Err("limits.max_sync_frame_bytes must be at least 65536".into());
        }
        if self.sync_retry_min_ms == 0 || self.sync_retry_max_ms < self.sync_retry_min_ms {
            return Err("limits.sync_retry_max_ms must be >= sync_retry_min_ms > 0".into());
        }
        Ok(())
    }

    /// The sync protocol's limits for the hub connection.
    pub fn sync(&self) -> aisle_sync::Limits {
        aisle_sync::Limits {
            max_frame_bytes: self.max_sync_frame_bytes,
            max_docs_in_flight: self.max_sync_docs_in_flight,
            // A document's first sync fills one frame: larger documents are refused per
            // document (`document_too_large`), never by dropping the session.
            max_document_bytes: self
                .max_document_bytes
                .min(self.max_sync_frame_bytes - aisle_sync::protocol::FRAME_OVERHEAD_BYTES),
        }
    }
}

/// Token bucket for one connection's inbound frames.
#[derive(Debug)]
pub struct RateLimiter {
    tokens: f64,
    burst: f64,
    per_sec: f64,
    last: std::time::Instant,
}

impl RateLimiter {
    pub fn new(per_sec: u32, burst: u32) -> Self {
        Self {
            tokens: f64::from(burst),
            burst: f64::from(burst),
            per_sec: f64::from(per_sec),
            last: std::time::Instant::now(),
        }
    }

    /// Takes one token; false when the bucket is empty.
    pub fn allow(&mut self) -> bool {
        let now = std::time::Instant::now();
        let elapsed = now.duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + elapsed * self.per_sec).min(self.burst);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid() {
        Limits::default().validate().unwrap();
    }

    #[test]
    fn zero_limit_is_refused() {
        let limits = Limits {
            max_write_queue: 0,
            ..Limits::default()
        };
        assert!(limits.validate().unwrap_err().contains("max_write_queue"));
    }

    #[test]
    fn bucket_refuses_past_burst() {
        let mut bucket = RateLimiter::new(1, 3);
        assert!(bucket.allow() && bucket.allow() && bucket.allow());
        assert!(!bucket.allow());
    }
}
