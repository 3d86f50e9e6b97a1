//! The HQ dashboard: `/` and `/hq/…`, with the shared `/common/…` files, embedded at build time
//! from the repository's `web/hq` and `web/common` (`aisle_service::web`).

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
#[include = "hq/*"]
struct Embedded;

/// The pages this binary serves (`web_dir` overrides the embedded copy).
pub fn assets(dir: Option<std::path::PathBuf>) -> WebAssets {
    WebAssets::new::<Embedded>(dir)
}

pub async fn dashboard(State(app): State<Arc<App>>, headers: HeaderMap) -> Response {
    page(&app, "hq/index.html", &headers).await
}

/// `/hq/…` and `/common/…`.
pub async fn asset(
    State(app): State<Arc<App>>,
    Path((dir, file)): Path<(String, String)>,
    headers: HeaderMap,
) -> Response {
    if dir != "hq" && dir != "common" {
        return ApiError::new(Code::NotFound, "no such endpoint").into_response();
    }
    page(&app, &format!("{dir}/{file}"), &headers).await
}

async fn page(app: &App, path: &str, headers: &HeaderMap) -> Response {
    match app.web.serve(path, headers, Framing::Never).await {
        Some(response) => response,
        None => ApiError::new(Code::NotFound, "no such page").into_response(),
    }
}
