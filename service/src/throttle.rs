//! Keyed throttles against guessing and flooding: failed attempts counted per key (a client
//! IP, a username, a store id) in a fixed window, and token buckets per key (a client IP's
//! frames and new connections).
//!
//! Both servers use them: the edge for staff logins, hand-off codes, WebSocket frames and
//! connections; the hub for HQ logins, store enrollment and continuation codes.
//!
//! Why not `governor`: a login must be refused *before* its password is checked (no Argon2
//! spent on a locked-out key), which needs a look at a key's state without taking a cell, and
//! governor's keyed limiters only offer checks that consume one; its keyed store also grows
//! with every key seen until someone calls `retain_recent`. Here every keyed map is an
//! [`lru::LruCache`] holding at most `max_keys` entries: a flood of spoofed usernames or
//! many source addresses evicts the least recently seen keys, so memory is bounded by
//! `max_keys` × (key + a few words) whatever arrives.
//!
//! A lock per map, held for one hash lookup: these are on the login path (rare) and the
//! per-frame path (one short critical section per frame).

use std::hash::Hash;
use std::num::NonZeroUsize;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use lru::LruCache;

/// A key is over its limit: when to try again, and whether this is the first refusal of
/// the key in this window (the one to log, so a flood writes one line, not one per request).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Refused {
    pub retry_after_secs: u64,
    pub first: bool,
}

#[derive(Debug)]
struct Window {
    started: Instant,
    failures: u32,
    reported: bool,
}

/// Failed attempts per key in a fixed window. Past `max_failures` the key is refused until
/// the window that started with its first failure ends; then it starts from zero.
#[derive(Debug)]
pub struct FailureLimiter<K: Hash + Eq> {
    max_failures: u32,
    window: Duration,
    entries: Mutex<LruCache<K, Window>>,
}

impl<K: Hash + Eq + Clone> FailureLimiter<K> {
    /// `max_failures` per `window`, tracking at most `max_keys` keys (0 is taken as 1).
    pub fn new(max_failures: u32, window: Duration, max_keys: usize) -> Self {
        Self {
            max_failures,
            window,
            entries: Mutex::new(LruCache::new(
                NonZeroUsize::new(max_keys).unwrap_or(NonZeroUsize::MIN),
            )),
        }
    }

    /// Whether `key` may try now. Takes nothing: only [`FailureLimiter::fail`] counts.
    pub fn check(&self, key: &K) -> Result<(), Refused> {
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        let Some(window) = entries.get_mut(key) else {
            return Ok(());
        };
        let elapsed = now.duration_since(window.started);
        if elapsed >= self.window {
            entries.pop(key);
            return Ok(());
        }
        if window.failures < self.max_failures {
            return Ok(());
        }
        let first = !window.reported;
        window.reported = true;
        Err(Refused {
            retry_after_secs: (self.window - elapsed).as_secs_f64().ceil().max(1.0) as u64,
            first,
        })
    }

    /// Counts one failed attempt of `key`.
    pub fn fail(&self, key: &K) {
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        match entries.get_mut(key) {
            Some(window) if now.duration_since(window.started) < self.window => {
                window.failures = window.failures.saturating_add(1);
            }
            _ => {
                entries.put(
                    key.clone(),
                    Window {
                        started: now,
                        failures: 1,
                        reported: false,
                    },
                );
            }
        }
    }

    /// Keys tracked now (at most `max_keys`).
    pub fn tracked(&self) -> usize {
        self.entries.lock().map(|e| e.len()).unwrap_or(0)
    }
}

#[derive(Debug)]
struct Bucket {
    tokens: f64,
    last: Instant,
    reported: bool,
}

/// A token bucket per key: `per_sec` refill, `burst` size.
#[derive(Debug)]
pub struct KeyedBuckets<K: Hash + Eq> {
    per_sec: f64,
    burst: f64,
    entries: Mutex<LruCache<K, Bucket>>,
}

impl<K: Hash + Eq + Clone> KeyedBuckets<K> {
    /// Tracks at most `max_keys` keys (0 is taken as 1); an evicted key starts full again.
    pub fn new(per_sec: u32, burst: u32, max_keys: usize) -> Self {
        Self {
            per_sec: f64::from(per_sec),
            burst: f64::from(burst.max(1)),
            entries: Mutex::new(LruCache::new(
                NonZeroUsize::new(max_keys).unwrap_or(NonZeroUsize::MIN),
            )),
        }
    }

    /// Takes one token of `key`'s bucket.
    pub fn take(&self, key: &K) -> Result<(), Refused> {
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        let bucket = entries.get_or_insert_mut(key.clone(), || Bucket {
            tokens: self.burst,
            last: now,
            reported: false,
        });
        let elapsed = now.duration_since(bucket.last).as_secs_f64();
        bucket.last = now;
        bucket.tokens = (bucket.tokens + elapsed * self.per_sec).min(self.burst);
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            bucket.reported = false;
            return Ok(());
        }
        let first = !bucket.reported;
        bucket.reported = true;
        let wait = if self.per_sec > 0.0 {
            ((1.0 - bucket.tokens) / self.per_sec).ceil().max(1.0)
        } else {
            60.0
        };
        Err(Refused {
            retry_after_secs: wait as u64,
            first,
        })
    }

    /// Keys tracked now (at most `max_keys`).
    pub fn tracked(&self) -> usize {
        self.entries.lock().map(|e| e.len()).unwrap_or(0)
    }
}

/// One guessing endpoint's limits: failures per client IP and per name (a username, a store
/// id), in the same window. A refused attempt is not checked and not counted.
#[derive(Debug)]
pub struct GuessGuard {
    pub by_ip: FailureLimiter<std::net::IpAddr>,
    pub by_name: FailureLimiter<String>,
}

/// Which key of a [`GuessGuard`] refused, for the metric's `limit` label and the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GuessKey {
    Ip,
    Name,
}

/// Names are compared trimmed and lowercased (the edge's usernames are case-insensitive:
/// `Admin` and `ADMIN` are one account and share one budget), cut to this many bytes so a
/// key's size is bounded too.
const MAX_NAME_KEY_BYTES: usize = 128;

fn name_key(name: &str) -> String {
    let name = name.trim().to_lowercase();
    let mut end = name.len().min(MAX_NAME_KEY_BYTES);
    while !name.is_char_boundary(end) {
        end -= 1;
    }
    name[..end].to_owned()
}

impl GuessGuard {
    pub fn new(
        max_failures_per_ip: u32,
        max_failures_per_name: u32,
        window: Duration,
        max_keys: usize,
    ) -> Self {
        Self {
            by_ip: FailureLimiter::new(max_failures_per_ip, window, max_keys),
            by_name: FailureLimiter::new(max_failures_per_name, window, max_keys),
        }
    }

    /// Whether an attempt from `ip` (for `name`, if the endpoint has one) may be checked.
    pub fn check(
        &self,
        ip: std::net::IpAddr,
        name: Option<&str>,
    ) -> Result<(), (GuessKey, Refused)> {
        self.by_ip.check(&ip).map_err(|r| (GuessKey::Ip, r))?;
        if let Some(name) = name {
            self.by_name
                .check(&name_key(name))
                .map_err(|r| (GuessKey::Name, r))?;
        }
        Ok(())
    }

    /// Counts a failed attempt against `ip` and `name`.
    pub fn fail(&self, ip: std::net::IpAddr, name: Option<&str>) {
        self.by_ip.fail(&ip);
        if let Some(name) = name {
            self.by_name.fail(&name_key(name));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_lock_out_then_the_window_ends() {
        let limiter = FailureLimiter::new(2, Duration::from_millis(200), 16);
        assert!(limiter.check(&"a").is_ok());
        limiter.fail(&"a");
        limiter.fail(&"a");
        let refused = limiter.check(&"a").unwrap_err();
        assert!(refused.first && refused.retry_after_secs >= 1);
        assert!(!limiter.check(&"a").unwrap_err().first, "logged once");
        assert!(limiter.check(&"b").is_ok(), "other keys are not affected");
        std::thread::sleep(Duration::from_millis(250));
        assert!(limiter.check(&"a").is_ok());
    }

    #[test]
    fn keyed_maps_are_bounded() {
        let limiter = FailureLimiter::new(1, Duration::from_secs(60), 3);
        for key in 0..100 {
            limiter.fail(&key);
        }
        assert_eq!(limiter.tracked(), 3);
        // The oldest keys were evicted; the newest are still locked out.
        assert!(limiter.check(&0).is_ok());
        assert!(limiter.check(&99).is_err());
        let buckets = KeyedBuckets::new(1, 1, 2);
        for key in 0..10 {
            let _ = buckets.take(&key);
        }
        assert_eq!(buckets.tracked(), 2);
    }

    #[test]
    fn buckets_refuse_past_the_burst_per_key() {
        let buckets = KeyedBuckets::new(1, 3, 16);
        for _ in 0..3 {
            assert!(buckets.take(&"ip").is_ok());
        }
        let refused = buckets.take(&"ip").unwrap_err();
        assert!(refused.first);
        assert!(!buckets.take(&"ip").unwrap_err().first);
        assert!(buckets.take(&"other").is_ok());
    }

    #[test]
    fn guard_counts_ip_and_name() {
        let guard = GuessGuard::new(3, 2, Duration::from_secs(60), 16);
        let ip: std::net::IpAddr = [127, 0, 0, 1].into();
        let other: std::net::IpAddr = [127, 0, 0, 2].into();
        guard.fail(ip, Some("admin"));
        guard.fail(other, Some("admin"));
        assert_eq!(
            guard
                .check([127, 0, 0, 3].into(), Some("admin"))
                .unwrap_err()
                .0,
            GuessKey::Name
        );
        assert!(guard.check(ip, Some("alice")).is_ok());
        guard.fail(ip, Some("alice"));
        guard.fail(ip, None);
        assert_eq!(guard.check(ip, Some("bob")).unwrap_err().0, GuessKey::Ip);
        assert!(guard.check(other, Some("bob")).is_ok());
    }
}
