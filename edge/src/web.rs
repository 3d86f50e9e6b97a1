//! The appliance's web pages: the staff console at `/`, the customer chat at `/chat` (and the
//! hand-off link `/h/{code}`, which opens the chat and redeems the code), and the script that
//! embeds the chat on the store's own site (`/chat/embed.js`). The files are `web/console`,
//! `web/chat` and `web/common`, embedded at build time (`aisle_service::web`).

use std::sync::Arc;

use aisle_service::web::{Framing, WebAssets};
use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use rust_embed::RustEmbed;

use crate::App;
use crate::error::{ApiError, Code};

#[derive(RustEmbed)]
#[folder = "../web"]
#[include = "common/*"]
#[include = "console/*"]
#[include = "chat/*"]
struct Embedded;

/// The pages this binary serves (`web_dir` overrides the embedded copy).
pub fn assets(dir: Option<std::path::PathBuf>) -> WebAssets {
    WebAssets::new::<Embedded>(dir)
}

pub async fn console(State(app): State<Arc<App>>, headers: HeaderMap) -> Response {
    page(&app, "console/index.html", &headers, Framing::Never).await
}

pub async fn chat(State(app): State<Arc<App>>, headers: HeaderMap) -> Response {
    page(&app, "chat/index.html", &headers, Framing::Anywhere).await
}

/// `/h/{code}`: the chat page; it reads the code from its own address and redeems it.
pub async fn handoff_link(
    State(app): State<Arc<App>>,
    Path(_code): Path<String>,
    headers: HeaderMap,
) -> Response {
    page(&app, "chat/index.html", &headers, Framing::Anywhere).await
}

/// `/console/…`, `/chat/…`, `/common/…`.
pub async fn asset(
    State(app): State<Arc<App>>,
    Path((dir, file)): Path<(String, String)>,
    headers: HeaderMap,
) -> Response {
    let framing = match dir.as_str() {
        "chat" | "common" => Framing::Anywhere,
        "console" => Framing::Never,
        _ => return ApiError::new(Code::NotFound, "no such endpoint").into_response(),
    };
    page(&app, &format!("{dir}/{file}"), &headers, framing).await
}

#[derive(serde::Deserialize)]
pub struct QrParams {
    text: String,
}

/// `GET /api/qr.svg?text=…`: a QR code of `text` as SVG, drawn here so that the customer's
/// "continue on another device" works with no network and no script library.
pub async fn qr(
    State(app): State<Arc<App>>,
    query: Result<axum::extract::Query<QrParams>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let text = match query {
        Ok(axum::extract::Query(p)) => p.text,
        Err(e) => return ApiError::new(Code::BadRequest, e.body_text()).into_response(),
    };
    let max = app.config.limits.max_qr_text_bytes;
    if text.is_empty() || text.len() > max {
        crate::metrics::METRICS.limit("max_qr_text_bytes");
        return ApiError::new(
            Code::BadRequest,
            format!("text must be 1 to max_qr_text_bytes = {max} bytes"),
        )
        .into_response();
    }
    let code = match qrcode::QrCode::new(text.as_bytes()) {
        Ok(code) => code,
        Err(e) => {
            return ApiError::new(Code::BadRequest, format!("no QR code: {e}")).into_response();
        }
    };
    let svg = code
        .render::<qrcode::render::svg::Color>()
        .min_dimensions(240, 240)
        .quiet_zone(true)
        .build();
    (
        [
            (axum::http::header::CONTENT_TYPE, "image/svg+xml"),
            (axum::http::header::CACHE_CONTROL, "no-store"),
            (
                axum::http::header::CONTENT_SECURITY_POLICY,
                "default-src 'none'",
            ),
        ],
        svg,
    )
        .into_response()
}

async fn page(app: &App, path: &str, headers: &HeaderMap, framing: Framing) -> Response {
    match app.web.serve(path, headers, framing).await {
        Some(response) => response,
        None => ApiError::new(Code::NotFound, "no such page").into_response(),
    }
}
