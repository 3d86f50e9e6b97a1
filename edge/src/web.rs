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

async fn page(app: &App, path: &str, headers: &HeaderMap, framing: Framing) -> Response {
    match app.web.serve(path, headers, framing).await {
        Some(response) => response,
        None => ApiError::new(Code::NotFound, "no such page").into_response(),
    }
}
