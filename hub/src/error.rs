//! Errors of the hub's HTTP API, each with a stable code (docs/hub-api.md). The code is also the
//! label of `aisle_hub_errors_total{code}`. Sync connections use the codes of
//! `aisle_sync::protocol::codes` instead.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

/// Stable error codes. Never rename one.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Code {
    BadJson,
    BadRequest,
    Unauthorized,
    InvalidCredentials,
    InvalidEnrollment,
    TokenExpired,
    Forbidden,
    Revoked,
    NotFound,
    MethodNotAllowed,
    StoreExists,
    TokenUsed,
    PayloadTooLarge,
    TooManyConnections,
    HandoffUsed,
    HandoffExpired,
    NotSynced,
    RateLimited,
    /// A settings layer HQ sent would not resolve at a store (the message names the setting).
    InvalidSettings,
    Internal,
}

impl Code {
    pub fn as_str(self) -> &'static str {
        match self {
            Code::BadJson => "bad_json",
            Code::BadRequest => "bad_request",
            Code::Unauthorized => "unauthorized",
            Code::InvalidCredentials => "invalid_credentials",
            Code::InvalidEnrollment => "invalid_enrollment",
            Code::TokenExpired => "token_expired",
            Code::Forbidden => "forbidden",
            Code::Revoked => "revoked",
            Code::NotFound => "not_found",
            Code::MethodNotAllowed => "method_not_allowed",
            Code::StoreExists => "store_exists",
            Code::TokenUsed => "token_used",
            Code::PayloadTooLarge => "payload_too_large",
            Code::TooManyConnections => "too_many_connections",
            Code::HandoffUsed => "handoff_used",
            Code::HandoffExpired => "handoff_expired",
            Code::NotSynced => "not_synced",
            Code::RateLimited => "rate_limited",
            Code::InvalidSettings => "invalid_settings",
            Code::Internal => "internal",
        }
    }

    pub fn http_status(self) -> StatusCode {
        match self {
            Code::BadJson | Code::BadRequest | Code::InvalidSettings => StatusCode::BAD_REQUEST,
            Code::Unauthorized
            | Code::InvalidCredentials
            | Code::InvalidEnrollment
            | Code::TokenExpired => StatusCode::UNAUTHORIZED,
            Code::Forbidden | Code::Revoked => StatusCode::FORBIDDEN,
            Code::NotFound => StatusCode::NOT_FOUND,
            Code::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            Code::StoreExists | Code::TokenUsed | Code::HandoffUsed => StatusCode::CONFLICT,
            Code::HandoffExpired => StatusCode::GONE,
            Code::NotSynced => StatusCode::SERVICE_UNAVAILABLE,
            Code::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Code::TooManyConnections => StatusCode::SERVICE_UNAVAILABLE,
            Code::RateLimited => StatusCode::TOO_MANY_REQUESTS,
            Code::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

/// An error a client is told about: a code and a sentence for people.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{}: {message}", code.as_str())]
pub struct ApiError {
    pub code: Code,
    pub message: String,
}

impl ApiError {
    pub fn new(code: Code, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }

    pub fn internal(err: impl std::fmt::Display) -> Self {
        tracing::error!(error = %err, "internal error");
        Self::new(Code::Internal, "internal error")
    }
}

impl From<crate::store::StoreError> for ApiError {
    fn from(err: crate::store::StoreError) -> Self {
        ApiError::internal(err)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        crate::metrics::METRICS.error(self.code.as_str());
        let body = serde_json::json!({
            "error": { "code": self.code.as_str(), "message": self.message }
        });
        (self.code.http_status(), axum::Json(body)).into_response()
    }
}

/// Errors that stop the hub from starting.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    #[error("data directory {path}: {source}")]
    DataDir {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error("storage: {0}")]
    Store(#[from] crate::store::StoreError),
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: std::net::SocketAddr,
        source: std::io::Error,
    },
    #[error("{0}")]
    Other(String),
}
