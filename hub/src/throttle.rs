//! The hub's throttles against guessing (values in limits.rs): failed HQ logins per client IP
//! and per username, failed enrollments per IP and per store id, failed continuation codes
//! per IP and per store.
//!
//! The client is the TCP peer address (`ConnectInfo`): a hub behind a TLS-terminating proxy
//! sees the proxy for every client, which is why its per-IP defaults are higher than the
//! per-name ones. A refused attempt is answered 429 `rate_limited` with `Retry-After` before
//! anything is checked (no Argon2, no database), counted in
//! `aisle_hub_limit_exceeded_total{limit="<limit name>"}` and logged once per key per window.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use aisle_service::throttle::{GuessGuard, GuessKey, Refused};
use axum::extract::{ConnectInfo, FromRequestParts};
use axum::http::request::Parts;
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};

use crate::App;
use crate::error::{ApiError, Code};
use crate::limits::Limits;
use crate::metrics::METRICS;

/// One guessing endpoint: its guard and the names of its two limits.
#[derive(Debug)]
pub struct Endpoint {
    guard: GuessGuard,
    ip_limit: &'static str,
    name_limit: &'static str,
    what: &'static str,
}

impl Endpoint {
    /// Before an attempt is checked: the 429 to answer when `ip` or `name` is locked out.
    pub fn check(&self, ip: IpAddr, name: &str) -> Result<(), Throttled> {
        self.guard
            .check(ip, Some(name))
            .map_err(|(key, refused)| match key {
                GuessKey::Ip => refuse(self.ip_limit, refused, ip, None, self.what),
                GuessKey::Name => refuse(self.name_limit, refused, ip, Some(name), self.what),
            })
    }

    /// Counts a failed attempt against `ip` and `name`.
    pub fn fail(&self, ip: IpAddr, name: &str) {
        self.guard.fail(ip, Some(name));
    }
}

/// Every throttle of the hub.
#[derive(Debug)]
pub struct Throttles {
    pub login: Endpoint,
    pub enroll: Endpoint,
    pub redeem: Endpoint,
}

impl Throttles {
    pub fn new(limits: &Limits) -> Self {
        let window = Duration::from_secs(limits.failure_window_secs);
        let keys = limits.max_throttle_keys;
        Self {
            login: Endpoint {
                guard: GuessGuard::new(
                    limits.max_login_failures_per_ip_per_window,
                    limits.max_login_failures_per_username_per_window,
                    window,
                    keys,
                ),
                ip_limit: "max_login_failures_per_ip_per_window",
                name_limit: "max_login_failures_per_username_per_window",
                what: "too many failed logins",
            },
            enroll: Endpoint {
                guard: GuessGuard::new(
                    limits.max_enroll_failures_per_ip_per_window,
                    limits.max_enroll_failures_per_store_per_window,
                    window,
                    keys,
                ),
                ip_limit: "max_enroll_failures_per_ip_per_window",
                name_limit: "max_enroll_failures_per_store_per_window",
                what: "too many failed enrollments",
            },
            redeem: Endpoint {
                guard: GuessGuard::new(
                    limits.max_redeem_failures_per_ip_per_window,
                    limits.max_redeem_failures_per_store_per_window,
                    window,
                    keys,
                ),
                ip_limit: "max_redeem_failures_per_ip_per_window",
                name_limit: "max_redeem_failures_per_store_per_window",
                what: "too many unknown continuation codes",
            },
        }
    }
}

/// A request refused by a throttle: answered 429 `rate_limited` with `Retry-After`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Throttled {
    pub limit: &'static str,
    pub what: &'static str,
    pub retry_after_secs: u64,
}

impl IntoResponse for Throttled {
    fn into_response(self) -> Response {
        let retry = self.retry_after_secs.max(1);
        let mut response = ApiError::new(
            Code::RateLimited,
            format!("{} ({}); retry after {retry} s", self.what, self.limit),
        )
        .into_response();
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(retry));
        response
    }
}

/// The refusal, counted and (once per key and window) logged.
fn refuse(
    limit: &'static str,
    refused: Refused,
    ip: IpAddr,
    name: Option<&str>,
    what: &'static str,
) -> Throttled {
    METRICS.limit(limit);
    if refused.first {
        tracing::warn!(
            limit,
            %ip,
            name,
            retry_after_secs = refused.retry_after_secs,
            "over a per-client limit; refusing until the window ends"
        );
    }
    Throttled {
        limit,
        what,
        retry_after_secs: refused.retry_after_secs,
    }
}

/// The client's address: the TCP peer (`ConnectInfo`), an IPv4-mapped address as IPv4 and an
/// IPv6 one by its /64. Without one (a router driven in-process) it is `0.0.0.0`.
#[derive(Clone, Copy, Debug)]
pub struct ClientIp(pub IpAddr);

impl FromRequestParts<Arc<App>> for ClientIp {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &Arc<App>) -> Result<Self, Self::Rejection> {
        let ip = parts
            .extensions
            .get::<ConnectInfo<SocketAddr>>()
            .map_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED), |c| c.0.ip());
        Ok(ClientIp(match ip.to_canonical() {
            IpAddr::V6(v6) => IpAddr::V6((u128::from(v6) & !((1u128 << 64) - 1)).into()),
            v4 => v4,
        }))
    }
}
