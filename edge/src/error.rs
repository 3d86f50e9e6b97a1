//! Errors of the appliance, each with a stable code a client can act on.
//!
//! The same `Code` is used for WebSocket `error` frames and HTTP JSON error bodies, and is the
//! label of `aisle_errors_total{code}`.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Serialize;

/// Stable error codes (docs/protocol.md §9 and docs/api.md). Never rename one.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Code {
    BadJson,
    UnknownType,
    BadFrame,
    BadRequest,
    UnsupportedFrame,
    FrameTooLarge,
    MessageTooLong,
    RateLimited,
    HelloRequired,
    AlreadyHello,
    Unauthorized,
    TokenExpired,
    InvalidCredentials,
    Forbidden,
    NotFound,
    AlreadyClaimed,
    IllegalTransition,
    Conflict,
    ConversationFull,
    Overloaded,
    TooManyConnections,
    SlowConsumer,
    ShuttingDown,
    HandoffUsed,
    HandoffExpired,
    PayloadTooLarge,
    UnsupportedMediaType,
    HubUnavailable,
    BundleRejected,
    UpdatesUnavailable,
    /// A live settings change that does not validate (the settings in force stay).
    InvalidSettings,
    Internal,
}

impl Code {
    pub fn as_str(self) -> &'static str {
        match self {
            Code::BadJson => "bad_json",
            Code::UnknownType => "unknown_type",
            Code::BadFrame => "bad_frame",
            Code::BadRequest => "bad_request",
            Code::UnsupportedFrame => "unsupported_frame",
            Code::FrameTooLarge => "frame_too_large",
            Code::MessageTooLong => "message_too_long",
            Code::RateLimited => "rate_limited",
            Code::HelloRequired => "hello_required",
            Code::AlreadyHello => "already_hello",
            Code::Unauthorized => "unauthorized",
            Code::TokenExpired => "token_expired",
            Code::InvalidCredentials => "invalid_credentials",
            Code::Forbidden => "forbidden",
            Code::NotFound => "not_found",
            Code::AlreadyClaimed => "already_claimed",
            Code::IllegalTransition => "illegal_transition",
            Code::Conflict => "conflict",
            Code::ConversationFull => "conversation_full",
            Code::Overloaded => "overloaded",
            Code::TooManyConnections => "too_many_connections",
            Code::SlowConsumer => "slow_consumer",
            Code::ShuttingDown => "shutting_down",
            Code::HandoffUsed => "handoff_used",
            Code::HandoffExpired => "handoff_expired",
            Code::PayloadTooLarge => "payload_too_large",
            Code::UnsupportedMediaType => "unsupported_media_type",
            Code::HubUnavailable => "hub_unavailable",
            Code::BundleRejected => "bundle_rejected",
            Code::UpdatesUnavailable => "updates_unavailable",
            Code::InvalidSettings => "invalid_settings",
            Code::Internal => "internal",
        }
    }

    pub fn http_status(self) -> StatusCode {
        match self {
            Code::BadJson
            | Code::UnknownType
            | Code::BadFrame
            | Code::BadRequest
            | Code::UnsupportedFrame
            | Code::InvalidSettings
            | Code::MessageTooLong
            | Code::HelloRequired
            | Code::AlreadyHello => StatusCode::BAD_REQUEST,
            Code::Unauthorized | Code::TokenExpired | Code::InvalidCredentials => {
                StatusCode::UNAUTHORIZED
            }
            Code::Forbidden => StatusCode::FORBIDDEN,
            Code::NotFound => StatusCode::NOT_FOUND,
            Code::AlreadyClaimed
            | Code::IllegalTransition
            | Code::Conflict
            | Code::ConversationFull
            | Code::HandoffUsed
            | Code::UpdatesUnavailable => StatusCode::CONFLICT,
            Code::BundleRejected => StatusCode::UNPROCESSABLE_ENTITY,
            Code::HandoffExpired => StatusCode::GONE,
            Code::FrameTooLarge | Code::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Code::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Code::RateLimited => StatusCode::TOO_MANY_REQUESTS,
            Code::Overloaded
            | Code::TooManyConnections
            | Code::SlowConsumer
            | Code::HubUnavailable
            | Code::ShuttingDown => StatusCode::SERVICE_UNAVAILABLE,
            Code::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

/// An error a client is told about: a code and a sentence for people.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{code:?}: {message}")]
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
        Self::new(
            Code::Internal,
            "internal error; nothing acknowledged was lost",
        )
    }
}

impl From<rusqlite::Error> for ApiError {
    fn from(err: rusqlite::Error) -> Self {
        ApiError::internal(format!("sqlite: {err}"))
    }
}

impl From<aisle_sync::SyncError> for ApiError {
    fn from(err: aisle_sync::SyncError) -> Self {
        ApiError::internal(format!("document: {err}"))
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        crate::metrics::METRICS.error(self.code);
        let body = serde_json::json!({
            "error": { "code": self.code.as_str(), "message": self.message }
        });
        (self.code.http_status(), axum::Json(body)).into_response()
    }
}

/// Errors that stop the appliance from starting.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    #[error("data directory {path}: {source}")]
    DataDir {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error("database: {0}")]
    Database(#[from] rusqlite::Error),
    #[error("database schema: {0}")]
    Schema(String),
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: std::net::SocketAddr,
        source: std::io::Error,
    },
    #[error("{0}")]
    Other(String),
}
