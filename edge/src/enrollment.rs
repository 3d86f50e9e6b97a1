//! Enrollment with the region's hub: the one-time token from the hub's admin is exchanged for a
//! long-lived store credential (`POST /api/enroll`, docs/hub-api.md), kept in the data directory
//! (`hub-credential.json`, readable by the appliance's user only). From then on the edge
//! connects with the credential and the token is not needed.
//!
//! - A box provisioned for a region (`region` in its config) asks the hub's `/healthz` for its
//!   region first and refuses a hub of another region before the token is spent
//!   (`wrong_region`); the enrollment's answer is checked again.
//! - The token is single-use: once exchanged, it is removed from the config file it came from
//!   (comments and everything else kept), so the provisioning partition holds no used secret.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::config::Config;

/// Where the one-time token sits in the config file (removed once used).
pub const ENROLL_TOKEN_SETTING: &[&str] = &["hub", "enroll_token"];

/// The file in the data directory holding the credential.
pub const CREDENTIAL_FILE: &str = "hub-credential.json";

/// What the hub gave this store at enrollment.
#[derive(Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct StoreCredential {
    pub store_id: String,
    /// The region of the hub that enrolled the store; sent in every `hello`.
    pub region: String,
    pub hub_id: String,
    pub credential: String,
    pub enrolled_at_ms: u64,
}

impl std::fmt::Debug for StoreCredential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoreCredential")
            .field("store_id", &self.store_id)
            .field("region", &self.region)
            .field("hub_id", &self.hub_id)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum EnrollError {
    /// The hub said no: the token is wrong, used or expired, or the store is revoked. Retrying
    /// will not help; an operator must issue a new token.
    #[error("the hub refused the enrollment ({code}): {message}")]
    Refused { code: String, message: String },
    /// The store is configured with a hub but has neither a credential nor a token.
    #[error(
        "a hub is configured but this store is not enrolled: start once with --enroll TOKEN (hub.enroll_token)"
    )]
    NoToken,
    /// The hub could not be reached or answered nonsense: retried.
    #[error("enrollment failed: {0}")]
    Transient(String),
    #[error("keeping the credential in {path}: {source}")]
    Storage {
        path: PathBuf,
        source: std::io::Error,
    },
}

impl EnrollError {
    pub fn is_transient(&self) -> bool {
        matches!(self, EnrollError::Transient(_))
    }

    /// A stable code for `/healthz`.
    pub fn code(&self) -> String {
        match self {
            EnrollError::Refused { code, .. } => code.clone(),
            EnrollError::NoToken => "not_enrolled".into(),
            EnrollError::Transient(_) => "hub_unreachable".into(),
            EnrollError::Storage { .. } => "storage".into(),
        }
    }
}

pub fn credential_path(data: &Path) -> PathBuf {
    data.join(CREDENTIAL_FILE)
}

/// The stored credential of this store, if it was enrolled (a credential of another store id,
/// e.g. a data directory moved between boxes, is ignored with a warning).
pub fn load(config: &Config) -> Option<StoreCredential> {
    let path = credential_path(&config.data);
    let bytes = std::fs::read(&path).ok()?;
    match serde_json::from_slice::<StoreCredential>(&bytes) {
        Ok(credential) if credential.store_id == config.store_id => Some(credential),
        Ok(credential) => {
            tracing::warn!(
                path = %path.display(),
                enrolled_as = %credential.store_id,
                store_id = %config.store_id,
                "the stored hub credential belongs to another store id; ignoring it"
            );
            None
        }
        Err(err) => {
            tracing::warn!(path = %path.display(), error = %err, "unreadable hub credential; ignoring it");
            None
        }
    }
}

/// The credential to connect with: the stored one, or a new one from the enrollment token.
pub async fn obtain(
    config: &Config,
    http: &reqwest::Client,
) -> Result<StoreCredential, EnrollError> {
    if let Some(credential) = load(config) {
        return Ok(credential);
    }
    let (Some(url), Some(token)) = (&config.hub.url, &config.hub.enroll_token) else {
        return Err(EnrollError::NoToken);
    };
    if let Some(region) = &config.region {
        check_hub_region(http, url, region).await?;
    }
    let request = http
        .post(format!("{}/api/enroll", url.trim_end_matches('/')))
        .json(&serde_json::json!({
            "store_id": config.store_id,
            "enrollment_token": token,
            "edge_version": env!("CARGO_PKG_VERSION"),
        }));
    let (status, body) = json_answer(request, "hub").await?;
    if !status.is_success() {
        let code = body["error"]["code"]
            .as_str()
            .unwrap_or("unknown")
            .to_owned();
        let message = body["error"]["message"].as_str().unwrap_or("").to_owned();
        if status.is_server_error() {
            return Err(EnrollError::Transient(format!(
                "{status} {code}: {message}"
            )));
        }
        return Err(EnrollError::Refused { code, message });
    }
    let field = |name: &str| {
        body[name]
            .as_str()
            .map(str::to_owned)
            .ok_or_else(|| EnrollError::Transient(format!("the hub's answer lacks {name}")))
    };
    let credential = StoreCredential {
        store_id: config.store_id.clone(),
        region: field("region")?,
        hub_id: field("hub_id")?,
        credential: field("credential")?,
        enrolled_at_ms: crate::now_ms(),
    };
    if let Some(region) = &config.region
        && *region != credential.region
    {
        return Err(wrong_region(url, &credential.region, region));
    }
    let data = config.data.clone();
    let stored = credential.clone();
    tokio::task::spawn_blocking(move || store(&data, &stored))
        .await
        .map_err(|err| EnrollError::Transient(format!("storing the credential: {err}")))??;
    tracing::info!(
        store_id = %credential.store_id,
        region = %credential.region,
        hub_id = %credential.hub_id,
        "enrolled with the region's hub"
    );
    if let Some(file) = config.file.clone() {
        let shown = file.clone();
        match tokio::task::spawn_blocking(move || {
            crate::config::forget_setting(&file, ENROLL_TOKEN_SETTING)
        })
        .await
        {
            Ok(Ok(true)) => tracing::info!(
                file = %shown.display(),
                "removed the used enrollment token from the config file"
            ),
            Ok(Ok(false)) => {}
            Ok(Err(err)) => tracing::warn!(
                file = %shown.display(),
                error = %err,
                "could not remove the used enrollment token from the config file; remove hub.enroll_token by hand"
            ),
            Err(err) => tracing::warn!(error = %err, "removing the used enrollment token"),
        }
    }
    Ok(credential)
}

fn wrong_region(url: &str, hub_region: &str, region: &str) -> EnrollError {
    EnrollError::Refused {
        code: aisle_sync::protocol::codes::WRONG_REGION.into(),
        message: format!(
            "the hub at {url} serves region {hub_region}, this store was provisioned for region {region}: check hub.url"
        ),
    }
}

/// Sends `request` and reads its JSON answer; the hub not answering, or answering something
/// that is not JSON, is transient (retried).
async fn json_answer(
    request: reqwest::RequestBuilder,
    what: &str,
) -> Result<(reqwest::StatusCode, serde_json::Value), EnrollError> {
    let response = request
        .send()
        .await
        .map_err(|err| EnrollError::Transient(err.to_string()))?;
    let status = response.status();
    let body = response
        .json()
        .await
        .map_err(|err| EnrollError::Transient(format!("{what} answered {status}: {err}")))?;
    Ok((status, body))
}

/// Asks the hub's `/healthz` which region it serves; another region than the store's is
/// refused before the token is sent (a token spent at the wrong hub is lost).
async fn check_hub_region(
    http: &reqwest::Client,
    url: &str,
    region: &str,
) -> Result<(), EnrollError> {
    let url = url.trim_end_matches('/');
    let (status, body) = json_answer(http.get(format!("{url}/healthz")), "hub /healthz").await?;
    match body["region"].as_str() {
        Some(hub_region) if hub_region == region => Ok(()),
        Some(hub_region) => Err(wrong_region(url, hub_region, region)),
        None => Err(EnrollError::Transient(format!(
            "hub /healthz answered {status} without a region"
        ))),
    }
}

/// Writes the credential atomically (temporary file, fsync, rename), readable by the owner only.
fn store(data: &Path, credential: &StoreCredential) -> Result<(), EnrollError> {
    let path = credential_path(data);
    let temporary = data.join(format!("{CREDENTIAL_FILE}.tmp"));
    let storage = |source| EnrollError::Storage {
        path: path.clone(),
        source,
    };
    let bytes = serde_json::to_vec_pretty(credential).expect("plain struct serialises");
    {
        use std::io::Write;
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create(true).truncate(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            options.mode(0o600);
        }
        let mut file = options.open(&temporary).map_err(storage)?;
        file.write_all(&bytes).map_err(storage)?;
        file.sync_all().map_err(storage)?;
    }
    std::fs::rename(&temporary, &path).map_err(storage)?;
    // The rename itself must survive a power cut: the token is used up at the hub already.
    std::fs::File::open(data)
        .and_then(|dir| dir.sync_all())
        .map_err(storage)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_used_token_is_removed_and_the_rest_kept() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("aisle.toml");
        let text = "# provisioned for store 12\nstore_id = \"sh-12\" # the box\n\n[hub]\n# the region's hub\nurl = \"http://hub:8090\"\nenroll_token = \"secret-token\"\n\n[update]\nboot_tries = 3\n";
        std::fs::write(&path, text).unwrap();
        assert!(crate::config::forget_setting(&path, ENROLL_TOKEN_SETTING).unwrap());
        let after = std::fs::read_to_string(&path).unwrap();
        assert_eq!(after, text.replace("enroll_token = \"secret-token\"\n", ""));
        assert!(!crate::config::forget_setting(&path, ENROLL_TOKEN_SETTING).unwrap());
        assert_eq!(std::fs::read_to_string(&path).unwrap(), after);

        // A dotted key and an inline table too.
        std::fs::write(&path, "hub.url = \"http://h\"\nhub.enroll_token = \"t\"\n").unwrap();
        assert!(crate::config::forget_setting(&path, ENROLL_TOKEN_SETTING).unwrap());
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            "hub.url = \"http://h\"\n"
        );
        std::fs::write(
            &path,
            "hub = { url = \"http://h\", enroll_token = \"t\" }\n",
        )
        .unwrap();
        assert!(crate::config::forget_setting(&path, ENROLL_TOKEN_SETTING).unwrap());
        assert!(
            !std::fs::read_to_string(&path)
                .unwrap()
                .contains("enroll_token")
        );
    }
}
