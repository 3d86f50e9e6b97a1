//! Firmware updates offered to the region's stores: `GET /api/updates/{arch}/latest`.
//!
//! The region's operator drops signed bundles into `<updates_dir>/<arch>/` (`*.aisle`); the
//! newest file (by modification time) is the one offered. The hub only reads each bundle's
//! manifest to name its version (`X-Aisle-Update-Version`, and the ETag); it trusts no key
//! and verifies nothing: every store verifies a bundle against the keys built into its own
//! image before installing it. A store that already runs the version offered sends it as
//! `If-None-Match` and gets 304, so polling costs no download.
//!
//! Authenticated like the other store endpoints (`X-Aisle-Store` + the store credential).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::{Path as UrlPath, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use tokio::io::AsyncReadExt;

use crate::App;
use crate::error::{ApiError, Code};

/// The header naming the offered bundle's version.
pub const VERSION_HEADER: &str = "x-aisle-update-version";
/// Bytes read from the bundle file per body chunk.
const CHUNK_BYTES: usize = 64 * 1024;

/// The newest `*.aisle` file in `dir`, if any.
fn newest_bundle(dir: &Path) -> std::io::Result<Option<PathBuf>> {
    let listing = match std::fs::read_dir(dir) {
        Ok(listing) => listing,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(err) => return Err(err),
    };
    let mut newest: Option<(std::time::SystemTime, PathBuf)> = None;
    for entry in listing {
        let entry = entry?;
        let path = entry.path();
        if path.extension().is_none_or(|e| e != "aisle") {
            continue;
        }
        let metadata = entry.metadata()?;
        if !metadata.is_file() {
            continue;
        }
        let modified = metadata.modified()?;
        if newest.as_ref().is_none_or(|(time, _)| modified > *time) {
            newest = Some((modified, path));
        }
    }
    Ok(newest.map(|(_, path)| path))
}

/// `GET /api/updates/{arch}/latest` (stores): the newest bundle for `arch`, streamed.
pub async fn latest(
    State(app): State<Arc<App>>,
    UrlPath(arch): UrlPath<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let store_id = crate::continuation::authorize_store(&app, &headers).await?;
    let arch: aisle_update::Arch = arch
        .parse()
        .map_err(|_| ApiError::new(Code::BadRequest, "arch is x86_64 or aarch64"))?;
    let Some(dir) = app.config.updates_dir.clone() else {
        return Err(ApiError::new(Code::NotFound, "this hub offers no updates"));
    };
    let dir = dir.join(arch.as_str());
    let found = tokio::task::spawn_blocking(move || -> Result<_, String> {
        let Some(path) = newest_bundle(&dir).map_err(|e| format!("{}: {e}", dir.display()))? else {
            return Ok(None);
        };
        let manifest =
            aisle_update::read_manifest(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        Ok(Some((path, manifest)))
    })
    .await
    .map_err(ApiError::internal)?
    .map_err(ApiError::internal)?;
    let Some((path, manifest)) = found else {
        return Err(ApiError::new(
            Code::NotFound,
            format!("no update offered for {arch}"),
        ));
    };
    let etag = format!("\"{}\"", manifest.version);
    let version = HeaderValue::from_str(&manifest.version).map_err(ApiError::internal)?;
    let etag_value = HeaderValue::from_str(&etag).map_err(ApiError::internal)?;
    let unchanged = headers
        .get(header::IF_NONE_MATCH)
        .is_some_and(|v| v.as_bytes() == etag.as_bytes());
    if unchanged {
        return Ok((
            StatusCode::NOT_MODIFIED,
            [
                (header::HeaderName::from_static(VERSION_HEADER), version),
                (header::ETAG, etag_value),
            ],
        )
            .into_response());
    }
    let file = tokio::fs::File::open(&path)
        .await
        .map_err(ApiError::internal)?;
    let length = file.metadata().await.map_err(ApiError::internal)?.len();
    tracing::info!(
        store_id,
        version = %manifest.version,
        %arch,
        bytes = length,
        "sending an update bundle"
    );
    let chunks = futures_util::stream::try_unfold(file, |mut file| async move {
        let mut buffer = vec![0u8; CHUNK_BYTES];
        let read = file.read(&mut buffer).await?;
        if read == 0 {
            return Ok::<_, std::io::Error>(None);
        }
        buffer.truncate(read);
        Ok(Some((Bytes::from(buffer), file)))
    });
    Ok((
        [
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/octet-stream"),
            ),
            (header::CONTENT_LENGTH, HeaderValue::from(length)),
            (header::ETAG, etag_value),
            (header::HeaderName::from_static(VERSION_HEADER), version),
        ],
        Body::from_stream(chunks),
    )
        .into_response())
}
