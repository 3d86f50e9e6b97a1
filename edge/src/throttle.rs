//! The appliance's throttles per client: failed logins and hand-off codes per IP and per
//! username, WebSocket frames and new connections per IP (the values are in limits.rs).
//!
//! The client is the TCP peer address: the appliance is reached directly on the store's
//! network, never through a proxy, so the address cannot be forged by a header. A refusal is
//! answered before any work is done for it (no Argon2, no database read), counted in
//! `aisle_limit_exceeded_total{limit="<limit name>"}` on every request, and logged once per
//! key per window, so a flood does not flood the log.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use aisle_service::throttle::{FailureLimiter, GuessGuard, GuessKey, KeyedBuckets, Refused};
use axum::extract::{ConnectInfo, FromRequestParts};
use axum::http::request::Parts;
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};

use crate::App;
use crate::error::{ApiError, Code};
use crate::limits::Limits;
use crate::metrics::METRICS;

/// Every per-client throttle of the appliance.
#[derive(Debug)]
pub struct Throttles {
    login: GuessGuard,
    handoff: FailureLimiter<IpAddr>,
    frames: KeyedBuckets<IpAddr>,
    connections: KeyedBuckets<IpAddr>,
}

impl Throttles {
    pub fn new(limits: &Limits) -> Self {
        let window = Duration::from_secs(limits.failure_window_secs);
        let keys = limits.max_throttle_keys;
        Self {
            login: GuessGuard::new(
                limits.max_login_failures_per_ip_per_window,
                limits.max_login_failures_per_username_per_window,
                window,
                keys,
            ),
            handoff: FailureLimiter::new(
                limits.max_handoff_failures_per_ip_per_window,
                window,
                keys,
            ),
            frames: KeyedBuckets::new(
                limits.max_frames_per_ip_per_sec,
                limits.max_frames_per_ip_burst,
                keys,
            ),
            connections: KeyedBuckets::new(
                limits.max_new_connections_per_ip_per_sec,
                limits.max_new_connections_per_ip_burst,
                keys,
            ),
        }
    }

    /// Before a login is checked: refused (429) when the IP or the username is locked out.
    pub fn check_login(&self, ip: IpAddr, username: &str) -> Result<(), Throttled> {
        self.login
            .check(ip, Some(username))
            .map_err(|(key, refused)| match key {
                GuessKey::Ip => refuse(
                    "max_login_failures_per_ip_per_window",
                    refused,
                    ip,
                    None,
                    "too many failed logins from this address",
                ),
                GuessKey::Name => refuse(
                    "max_login_failures_per_username_per_window",
                    refused,
                    ip,
                    Some(username),
                    "too many failed logins for this username",
                ),
            })
    }

    /// A login failed (wrong username or password, or a disabled account).
    pub fn login_failed(&self, ip: IpAddr, username: &str) {
        self.login.fail(ip, Some(username));
    }

    /// Before a hand-off code is looked up.
    pub fn check_handoff(&self, ip: IpAddr) -> Result<(), Throttled> {
        self.handoff.check(&ip).map_err(|refused| {
            refuse(
                "max_handoff_failures_per_ip_per_window",
                refused,
                ip,
                None,
                "too many unknown hand-off codes from this address",
            )
        })
    }

    /// A hand-off code was unknown, used or expired.
    pub fn handoff_failed(&self, ip: IpAddr) {
        self.handoff.fail(&ip);
    }

    /// A new WebSocket connection from `ip`.
    pub fn new_connection(&self, ip: IpAddr) -> Result<(), Throttled> {
        self.connections.take(&ip).map_err(|refused| {
            refuse(
                "max_new_connections_per_ip_per_sec",
                refused,
                ip,
                None,
                "too many new connections from this address",
            )
        })
    }

    /// One inbound WebSocket frame from `ip`, across all its connections.
    pub fn frame(&self, ip: IpAddr) -> Result<(), ApiError> {
        self.frames.take(&ip).map_err(|refused| {
            METRICS.limit("max_frames_per_ip_per_sec");
            if refused.first {
                tracing::warn!(
                    limit = "max_frames_per_ip_per_sec",
                    %ip,
                    "client address over its frame rate; frames refused"
                );
            }
            ApiError::new(
                Code::RateLimited,
                "this address sends more than max_frames_per_ip_per_sec frames over all its \
                 connections; frame dropped",
            )
        })
    }
}

/// A request refused by a throttle: answered 429 `rate_limited` with `Retry-After`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Throttled {
    pub message: &'static str,
    pub retry_after_secs: u64,
}

impl IntoResponse for Throttled {
    fn into_response(self) -> Response {
        rate_limited(self.message, self.retry_after_secs)
    }
}

/// The refusal, counted and (once per key and window) logged.
fn refuse(
    limit: &'static str,
    refused: Refused,
    ip: IpAddr,
    username: Option<&str>,
    message: &'static str,
) -> Throttled {
    METRICS.limit(limit);
    if refused.first {
        tracing::warn!(
            limit,
            %ip,
            username,
            retry_after_secs = refused.retry_after_secs,
            "over a per-client limit; refusing until the window ends"
        );
    }
    Throttled {
        message,
        retry_after_secs: refused.retry_after_secs,
    }
}

/// The answer to a throttled request.
pub fn rate_limited(message: &str, retry_after_secs: u64) -> Response {
    let mut response = ApiError::new(
        Code::RateLimited,
        format!("{message}; retry after {retry_after_secs} s"),
    )
    .into_response();
    response.headers_mut().insert(
        header::RETRY_AFTER,
        HeaderValue::from(retry_after_secs.max(1)),
    );
    response
}

/// The client's address: the TCP peer (`ConnectInfo`). An IPv6 client is keyed by its /64
/// (one device picks new privacy addresses inside it at will); an IPv4-mapped address counts
/// as the IPv4 one. A request without one (a router driven in-process, as unit tests do)
/// counts as `0.0.0.0`.
#[derive(Clone, Copy, Debug)]
pub struct ClientIp(pub IpAddr);

impl FromRequestParts<Arc<App>> for ClientIp {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &Arc<App>) -> Result<Self, Self::Rejection> {
        Ok(ClientIp(
            parts
                .extensions
                .get::<ConnectInfo<SocketAddr>>()
                .map_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED), |c| client_key(c.0.ip())),
        ))
    }
}

/// The key a client address is throttled under (see [`ClientIp`]).
pub fn client_key(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V6(v6) => {
            let prefix = u128::from(v6) & !((1u128 << 64) - 1);
            IpAddr::V6(prefix.into())
        }
        v4 => v4,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clients_are_keyed_by_address_and_ipv6_prefix() {
        let a: IpAddr = "2001:db8:1:2:aaaa::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:bbbb::9".parse().unwrap();
        let c: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert_eq!(client_key(a), client_key(b));
        assert_ne!(client_key(a), client_key(c));
        let mapped: IpAddr = "::ffff:192.0.2.7".parse().unwrap();
        assert_eq!(client_key(mapped), "192.0.2.7".parse::<IpAddr>().unwrap());
    }
}
