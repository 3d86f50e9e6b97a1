//! Images sent with messages.
//!
//! `POST /api/attachments` takes the raw bytes of one image from a staff member (session token)
//! or a customer (resume token), checks what they are by their first bytes (never by the
//! declared `Content-Type`), writes them to `<data>/attachments/<id>` (temporary file, fsync,
//! rename, directory fsync) and only then records the row, so a row always has its file. The
//! sender then names the id in a WebSocket `send`; the writer checks the upload is the sender's.
//!
//! The document carries only id, type and size ([`aisle_sync::Attachment`]): the bytes stay on
//! this appliance. `GET /api/attachments/{id}` serves them to anyone holding the id — an
//! unguessable ULID that only the conversation's participants see — because `<img>` tags can
//! not send a bearer token.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use aisle_sync::{Attachment, AttachmentId, Participant};
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path as UrlPath, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use rusqlite::{OptionalExtension, params};
use sha2::{Digest, Sha256};

use crate::error::{ApiError, Code};
use crate::frame::AttachmentView;
use crate::metrics::METRICS;
use crate::store::writer::uploader_key;
use crate::{App, auth, now_ms};

/// The image types a chat shows, with the bytes each starts with.
fn sniff(bytes: &[u8]) -> Option<&'static str> {
    if bytes.starts_with(b"\x89PNG\r\n\x1a\n") {
        Some("image/png")
    } else if bytes.starts_with(&[0xFF, 0xD8, 0xFF]) {
        Some("image/jpeg")
    } else if bytes.starts_with(b"GIF87a") || bytes.starts_with(b"GIF89a") {
        Some("image/gif")
    } else if bytes.len() >= 12 && &bytes[..4] == b"RIFF" && &bytes[8..12] == b"WEBP" {
        Some("image/webp")
    } else {
        None
    }
}

fn dir(app: &App) -> PathBuf {
    app.config.data.join("attachments")
}

/// Who is uploading: a staff session token or a customer's resume token.
async fn uploader(app: &Arc<App>, headers: &HeaderMap) -> Result<Participant, ApiError> {
    let token = crate::api::required_bearer(headers)?;
    if token.starts_with(auth::SESSION_TOKEN_PREFIX) {
        let session = crate::api::staff_session(app, &token).await?;
        return Ok(Participant::Staff(session.staff.id));
    }
    let customer = app.tokens.verify(&token, now_ms() / 1000)?;
    Ok(Participant::Customer(customer))
}

/// `POST /api/attachments`: the raw image as the body → 201 `{"attachment":{…}}`.
pub async fn upload(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let sender = uploader(&app, &headers).await?;
    let limit = app.config.limits.max_attachment_bytes;
    let bytes = body.map_err(|rejection| {
        if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
            METRICS.limit("max_attachment_bytes");
            ApiError::new(
                Code::PayloadTooLarge,
                format!("the image is larger than max_attachment_bytes = {limit}"),
            )
        } else {
            ApiError::new(Code::BadRequest, rejection.body_text())
        }
    })?;
    let Some(mime) = sniff(&bytes) else {
        return Err(ApiError::new(
            Code::UnsupportedMediaType,
            "only PNG, JPEG, GIF and WebP images can be sent",
        ));
    };
    let attachment = Attachment {
        id: AttachmentId::new(),
        mime: mime.to_owned(),
        bytes: bytes.len() as u64,
    };
    let sha256 = Sha256::digest(&bytes).to_vec();
    let folder = dir(&app);
    let id = attachment.id;
    tokio::task::spawn_blocking(move || write_durably(&folder, &id.to_string(), &bytes))
        .await
        .map_err(ApiError::internal)?
        .map_err(|e| ApiError::internal(format!("storing the image: {e}")))?;
    let row = attachment.clone();
    app.writer
        .exec(move |conn| {
            conn.execute(
                "INSERT INTO attachments (id, mime, bytes, sha256, uploader, created_at_ms)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                params![
                    row.id.to_string(),
                    row.mime,
                    row.bytes as i64,
                    sha256,
                    uploader_key(&sender),
                    now_ms() as i64
                ],
            )?;
            Ok(())
        })
        .await?;
    let view = AttachmentView::from(&attachment);
    Ok((
        StatusCode::CREATED,
        axum::Json(serde_json::json!({ "attachment": view })),
    )
        .into_response())
}

/// Temporary file, fsync, rename, fsync of the directory: the file is whole or absent.
fn write_durably(folder: &Path, name: &str, bytes: &[u8]) -> std::io::Result<()> {
    std::fs::create_dir_all(folder)?;
    let tmp = folder.join(format!("{name}.tmp"));
    let mut file = std::fs::File::create(&tmp)?;
    file.write_all(bytes)?;
    file.sync_all()?;
    std::fs::rename(&tmp, folder.join(name))?;
    std::fs::File::open(folder)?.sync_all()
}

/// `GET /api/attachments/{id}`: the image, with its sniffed type.
pub async fn download(
    State(app): State<Arc<App>>,
    UrlPath(id): UrlPath<String>,
) -> Result<Response, ApiError> {
    let id: AttachmentId = id
        .parse()
        .map_err(|_| ApiError::new(Code::NotFound, "no such attachment"))?;
    let key = id.to_string();
    let mime: Option<String> = app
        .reader
        .read(move |conn| {
            Ok(conn
                .prepare_cached("SELECT mime FROM attachments WHERE id = ?1")?
                .query_row([key], |r| r.get(0))
                .optional()?)
        })
        .await?;
    let Some(mime) = mime else {
        return Err(ApiError::new(Code::NotFound, "no such attachment"));
    };
    let bytes = tokio::fs::read(dir(&app).join(id.to_string()))
        .await
        .map_err(|e| ApiError::internal(format!("reading attachment {id}: {e}")))?;
    let mut response = bytes.into_response();
    let h = response.headers_mut();
    if let Ok(value) = HeaderValue::from_str(&mime) {
        h.insert(header::CONTENT_TYPE, value);
    }
    // Immutable: an id names one upload forever.
    h.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("private, max-age=31536000, immutable"),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static("default-src 'none'; sandbox"),
    );
    Ok(response)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn images_are_told_by_their_bytes() {
        assert_eq!(sniff(b"\x89PNG\r\n\x1a\n...."), Some("image/png"));
        assert_eq!(sniff(&[0xFF, 0xD8, 0xFF, 0xE0, 0, 0]), Some("image/jpeg"));
        assert_eq!(sniff(b"GIF89a...."), Some("image/gif"));
        assert_eq!(sniff(b"RIFF\x10\x00\x00\x00WEBPVP8 "), Some("image/webp"));
        assert_eq!(sniff(b"<svg xmlns='http://www.w3.org/2000/svg'/>"), None);
        assert_eq!(sniff(b"<html><script>"), None);
        assert_eq!(sniff(b""), None);
        assert_eq!(sniff(b"RIFF\x10\x00\x00\x00WAVE"), None);
    }
}
