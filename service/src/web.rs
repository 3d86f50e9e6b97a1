//! The web pages a server ships (staff console and customer chat on the edge, the HQ dashboard
//! on the hub).
//!
//! The files live in the repository's `web/` folder and are embedded in the binary at build time
//! (`rust-embed`), so the appliance serves its pages with no Node.js and no network at run time.
//! Setting `web_dir` serves them from a directory instead, read on every request: front-end work
//! without rebuilding the binary.
//!
//! Every page gets a Content-Security-Policy that only allows its own origin: even a page with a
//! bug can not fetch a font, a script or an image from anywhere else.

use std::path::{Component, Path, PathBuf};

use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use rust_embed::EmbeddedFile;

/// Longest asset path accepted (the `web/` tree is shallow; anything longer is a probe).
const MAX_ASSET_PATH_BYTES: usize = 200;

/// Whether a page may be shown inside another site's frame (the customer chat, embedded on the
/// store's own web site), or never (staff console, HQ dashboard: no click-jacking).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Framing {
    Anywhere,
    Never,
}

/// The embedded files, or a directory overriding them.
pub struct WebAssets {
    embedded: fn(&str) -> Option<EmbeddedFile>,
    dir: Option<PathBuf>,
}

impl WebAssets {
    /// `E` is the binary's `#[derive(RustEmbed)]` type (each binary embeds only its own pages).
    pub fn new<E: rust_embed::RustEmbed>(dir: Option<PathBuf>) -> Self {
        Self {
            embedded: E::get,
            dir,
        }
    }

    /// The file at `path` (relative to `web/`, e.g. `console/index.html`), or `None` when there
    /// is no such file. Answers `304` to a matching `If-None-Match`.
    pub async fn serve(
        &self,
        path: &str,
        request: &HeaderMap,
        framing: Framing,
    ) -> Option<Response> {
        if !is_safe(path) {
            return None;
        }
        let mime = mime_guess::from_path(path)
            .first_or_octet_stream()
            .to_string();
        let (body, etag) = match &self.dir {
            Some(dir) => (tokio::fs::read(dir.join(path)).await.ok()?, None),
            None => {
                let file = (self.embedded)(path)?;
                let etag = format!("\"{}\"", hex(&file.metadata.sha256_hash()[..16]));
                (file.data.into_owned(), Some(etag))
            }
        };
        let mut response = match &etag {
            Some(tag) if matches_etag(request, tag) => StatusCode::NOT_MODIFIED.into_response(),
            _ => body.into_response(),
        };
        let headers = response.headers_mut();
        if let Ok(value) = HeaderValue::from_str(&mime) {
            headers.insert(header::CONTENT_TYPE, value);
        }
        match etag.and_then(|t| HeaderValue::from_str(&t).ok()) {
            // Revalidate every time: a new binary must show its new pages at once.
            Some(tag) => {
                headers.insert(header::ETAG, tag);
                headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
            }
            None => {
                headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
            }
        }
        security_headers(headers, framing);
        Some(response)
    }
}

/// Headers every page and asset carries.
pub fn security_headers(headers: &mut HeaderMap, framing: Framing) {
    let csp = match framing {
        Framing::Anywhere => CSP_FRAMEABLE,
        Framing::Never => CSP_OWN_ORIGIN,
    };
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(csp),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    if framing == Framing::Never {
        headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    }
}

const CSP_OWN_ORIGIN: &str = "default-src 'self'; img-src 'self' data: blob:; \
    style-src 'self' 'unsafe-inline'; connect-src 'self'; object-src 'none'; \
    base-uri 'none'; form-action 'self'; frame-ancestors 'none'";
const CSP_FRAMEABLE: &str = "default-src 'self'; img-src 'self' data: blob:; \
    style-src 'self' 'unsafe-inline'; connect-src 'self'; object-src 'none'; \
    base-uri 'none'; form-action 'self'; frame-ancestors *";

/// Relative, no `..`, no hidden files, plain characters only.
fn is_safe(path: &str) -> bool {
    !path.is_empty()
        && path.len() <= MAX_ASSET_PATH_BYTES
        && path
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'/' | b'.' | b'-' | b'_'))
        && Path::new(path)
            .components()
            .all(|c| matches!(c, Component::Normal(s) if !s.to_string_lossy().starts_with('.')))
}

fn matches_etag(request: &HeaderMap, tag: &str) -> bool {
    request
        .get_all(header::IF_NONE_MATCH)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|candidate| candidate.trim() == tag || candidate.trim() == "*")
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_plain_relative_paths_are_served() {
        assert!(is_safe("console/index.html"));
        assert!(is_safe("common/i18n.js"));
        for bad in [
            "",
            "../Cargo.toml",
            "console/../../etc/passwd",
            "/etc/passwd",
            "console/.hidden",
            "console\\index.html",
            "console/index.html?x",
            "console//index.html%00",
        ] {
            assert!(!is_safe(bad), "{bad} must be refused");
        }
    }

    #[test]
    fn etags_match_in_lists() {
        let mut h = HeaderMap::new();
        h.insert(
            header::IF_NONE_MATCH,
            HeaderValue::from_static("\"a\", \"b\""),
        );
        assert!(matches_etag(&h, "\"b\""));
        assert!(!matches_etag(&h, "\"c\""));
    }
}
