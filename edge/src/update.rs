//! Firmware updates of the appliance image: signed bundles (`aisle-update`) installed into the
//! boot slot that is not running, and the running slot blessed once it serves.
//!
//! - Install: `POST /api/update` (store admins; the bundle's bytes as the body) or
//!   `aisle-edge update install FILE`. The bundle is verified against the trusted keys built
//!   into the image (`update.trusted_keys_dir`) before anything is written to the boot
//!   partition, then written into the inactive slot on trial (`update.boot_tries` boots); the
//!   HTTP install then reboots (`update.reboot_command`).
//! - Bless: once this process serves (database open, model loaded, listener bound) on a slot
//!   whose boot entry is on trial, the entry is blessed. A new image that never gets this far
//!   is rebooted by the init until its tries run out, and the previous slot boots again
//!   (`/healthz` then shows `image.rolled_back`).
//! - Not an appliance image (`update.boot_dir` unset): installs are refused
//!   (`updates_unavailable`), nothing is blessed, `/healthz` shows `"image": null`.
//!
//! - Pull (`update.pull_interval_secs` > 0): the hub's newest bundle for this architecture is
//!   fetched when its version differs from the running one, installed and rebooted into, as
//!   if an admin had uploaded it. A bundle refused once is not fetched again while the edge
//!   runs, and a version the box rolled back from (`rolled_back`, kept by the boot entries)
//!   is never installed again from the hub.
//!
//! Every file operation runs in `spawn_blocking`; one install at a time.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use aisle_update::{
    Arch, Boot, BundleError, EntryState, InstallOutcome, KeyError, Slot, SlotError, SlotStatus,
};
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use futures_util::StreamExt;
use serde_json::{Value, json};
use tokio::io::AsyncWriteExt;

use crate::App;
use crate::api::StaffAuth;
use crate::config::UpdateConfig;
use crate::error::{ApiError, Code};
use crate::metrics::METRICS;

/// Longest time one request to the hub for a bundle may take (download included).
pub const PULL_TIMEOUT_SECS: u64 = 600;
/// Time between answering an HTTP install and running the reboot command, so the answer
/// reaches the admin's browser first.
pub const REBOOT_DELAY_MS: u64 = 1000;
/// The kernel command line, where the boot entry says which slot is running.
const CMDLINE_PATH: &str = "/proc/cmdline";

#[derive(Debug, thiserror::Error)]
pub enum UpdateError {
    #[error("updates are unavailable: update.boot_dir is not set (this is not an appliance image)")]
    NoBootDir,
    #[error(
        "updates are unavailable: the running slot is unknown (no aisle.slot= on the kernel command line and update.current_slot unset)"
    )]
    UnknownSlot,
    #[error("updates are unavailable: this appliance's architecture has no images")]
    UnknownArch,
    #[error("updates are unavailable: trusted keys: {0}")]
    Keys(#[from] KeyError),
    #[error("updates are unavailable: {0}")]
    Boot(SlotError),
    #[error("bundle rejected ({reason}): {0}", reason = .0.reason())]
    Rejected(BundleError),
    #[error("an update is being installed already")]
    Busy,
    #[error("installing the update: {0}")]
    Failed(String),
}

impl From<BundleError> for UpdateError {
    fn from(err: BundleError) -> Self {
        if err.is_rejection() {
            UpdateError::Rejected(err)
        } else {
            UpdateError::Failed(err.to_string())
        }
    }
}

impl From<SlotError> for UpdateError {
    fn from(err: SlotError) -> Self {
        match err {
            SlotError::Bundle(err) => err.into(),
            err @ (SlotError::RunningSlot(_)
            | SlotError::RunningOnTrial(_)
            | SlotError::NoRunningEntry(_)
            | SlotError::BadEntry { .. }) => UpdateError::Boot(err),
            err => UpdateError::Failed(err.to_string()),
        }
    }
}

impl From<UpdateError> for ApiError {
    fn from(err: UpdateError) -> Self {
        let message = err.to_string();
        match err {
            UpdateError::Rejected(BundleError::TooLarge { .. }) => {
                ApiError::new(Code::PayloadTooLarge, message)
            }
            UpdateError::Rejected(_) => ApiError::new(Code::BundleRejected, message),
            UpdateError::Busy => ApiError::new(Code::Conflict, message),
            UpdateError::Failed(_) => ApiError::internal(message),
            UpdateError::NoBootDir
            | UpdateError::UnknownSlot
            | UpdateError::UnknownArch
            | UpdateError::Keys(_)
            | UpdateError::Boot(_) => ApiError::new(Code::UpdatesUnavailable, message),
        }
    }
}

/// The slot this process booted from: the kernel command line's `aisle.slot=` (what the boot
/// loader actually started), else `update.current_slot` (tests, non-appliance use). A stray
/// `current_slot` in a box's file can never point the installer at the running slot.
pub fn current_slot(config: &UpdateConfig) -> Option<Slot> {
    std::fs::read_to_string(CMDLINE_PATH)
        .ok()
        .and_then(|cmdline| aisle_update::current_slot_from_cmdline(&cmdline))
        .or(config.current_slot)
}

/// The update state shared by the handlers.
pub struct Updates {
    /// Read once at start (the running slot does not change without a reboot).
    pub current_slot: Option<Slot>,
    /// Held for the whole of an install.
    installing: tokio::sync::Mutex<()>,
}

impl Updates {
    pub fn new(config: &UpdateConfig) -> Updates {
        Updates {
            current_slot: if config.boot_dir.is_some() {
                current_slot(config)
            } else {
                None
            },
            installing: Default::default(),
        }
    }
}

/// Verifies the bundle at `bundle` and installs it into the slot not running (blocking).
pub fn install_blocking(
    config: &UpdateConfig,
    current: Option<Slot>,
    bundle: &Path,
) -> Result<InstallOutcome, UpdateError> {
    let boot = Boot::new(config.boot_dir.clone().ok_or(UpdateError::NoBootDir)?);
    let current = current.ok_or(UpdateError::UnknownSlot)?;
    let arch = Arch::host().ok_or(UpdateError::UnknownArch)?;
    let trusted = aisle_update::load_trusted_keys(&config.trusted_keys_dir)?;
    let verified = aisle_update::open_verified(bundle, &trusted, arch)?;
    let outcome = boot.install(&verified, current, config.boot_tries)?;
    tracing::info!(
        slot = %outcome.slot,
        version = %outcome.version,
        generation = outcome.generation,
        key_id = verified.key_id(),
        tries = config.boot_tries,
        "update installed into the inactive slot, on trial"
    );
    Ok(outcome)
}

/// Both slots (blocking); `None` when `update.boot_dir` is unset.
pub fn status_blocking(
    config: &UpdateConfig,
    current: Option<Slot>,
) -> Result<Option<SlotStatus>, UpdateError> {
    let Some(dir) = &config.boot_dir else {
        return Ok(None);
    };
    Ok(Some(Boot::new(dir).status(current)?))
}

/// Counts an install's failure by its reason.
fn count_failure(err: &UpdateError) {
    match err {
        UpdateError::Rejected(err) => {
            METRICS.update_event(&format!("rejected_{}", err.reason()));
        }
        UpdateError::Busy => {}
        _ => METRICS.update_event("failed"),
    }
}

/// Blesses the running slot if its entry is on trial; spawned once the server serves.
pub async fn bless_running(app: Arc<App>) {
    let Some(dir) = app.config.update.boot_dir.clone() else {
        return;
    };
    let Some(current) = app.update.current_slot else {
        tracing::warn!(
            "update.boot_dir is set but the running slot is unknown; not blessing any slot"
        );
        return;
    };
    let blessed = tokio::task::spawn_blocking(move || Boot::new(dir).bless(current)).await;
    match blessed {
        Ok(Ok(true)) => {
            METRICS.update_event("blessed");
            tracing::info!(slot = %current, "this slot serves: its boot entry is blessed");
        }
        Ok(Ok(false)) => {}
        Ok(Err(err)) => {
            METRICS.update_event("bless_failed");
            tracing::error!(slot = %current, error = %err, "could not bless the running slot; it falls back when its tries run out");
        }
        Err(err) => tracing::error!(error = %err, "blessing the running slot"),
    }
}

/// The `image` object of `/healthz`: `null` off an appliance image.
pub async fn health(app: &Arc<App>) -> Value {
    let config = app.config.update.clone();
    let current = app.update.current_slot;
    let status = tokio::task::spawn_blocking(move || status_blocking(&config, current)).await;
    match status {
        Ok(Ok(None)) => Value::Null,
        Ok(Ok(Some(status))) => {
            let running = status.running_slot();
            json!({
                "slot": status.running,
                "version": running.and_then(|s| s.version.clone()),
                "trial": running.is_some_and(|s| matches!(
                    s.entry,
                    Some(EntryState::Trial { .. } | EntryState::Bad { .. })
                )),
                "rolled_back": status.rolled_back,
            })
        }
        Ok(Err(err)) => json!({
            "slot": current,
            "version": null,
            "trial": false,
            "rolled_back": null,
            "error": err.to_string(),
        }),
        Err(err) => json!({ "error": err.to_string() }),
    }
}

/// `GET /api/update` (store admins): both slots.
pub async fn get_update(
    State(app): State<Arc<App>>,
    auth: StaffAuth,
) -> Result<Response, ApiError> {
    auth.require_admin()?;
    let config = app.config.update.clone();
    let current = app.update.current_slot;
    let status = tokio::task::spawn_blocking(move || status_blocking(&config, current))
        .await
        .map_err(ApiError::internal)??
        .ok_or(UpdateError::NoBootDir)?;
    Ok(axum::Json(status).into_response())
}

/// A bundle being received; removed when dropped (whatever happened to the request).
struct Upload(PathBuf);

impl Upload {
    /// A fresh file name for a bundle being received, in the data directory (same disk as the
    /// database, not the RAM-backed /tmp of the appliance).
    fn in_data_dir(data: &Path) -> Upload {
        Upload(data.join(format!("update-{}.aisle.partial", ulid::Ulid::new())))
    }
}

impl Drop for Upload {
    fn drop(&mut self) {
        let path = std::mem::take(&mut self.0);
        // Off the runtime when there is one (an unlink may wait on the disk).
        match tokio::runtime::Handle::try_current() {
            Ok(handle) => {
                handle.spawn_blocking(move || std::fs::remove_file(path));
            }
            Err(_) => {
                let _ = std::fs::remove_file(path);
            }
        }
    }
}

fn too_large(max: u64) -> ApiError {
    METRICS.limit("max_bundle_bytes");
    ApiError::new(
        Code::PayloadTooLarge,
        format!("an update bundle is at most max_bundle_bytes ({max} bytes)"),
    )
}

/// `POST /api/update` (store admins): the body is a bundle (`application/octet-stream`). It is
/// written to a temporary file in the data directory, verified and installed into the slot
/// not running; the answer is 202 and the appliance reboots `REBOOT_DELAY_MS` later.
pub async fn post_update(
    State(app): State<Arc<App>>,
    auth: StaffAuth,
    headers: HeaderMap,
    body: axum::body::Body,
) -> Result<Response, ApiError> {
    auth.require_admin()?;
    let config = &app.config.update;
    if config.boot_dir.is_none() {
        return Err(UpdateError::NoBootDir.into());
    }
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if content_type != "application/octet-stream" {
        return Err(ApiError::new(
            Code::UnsupportedMediaType,
            "an update bundle is sent as application/octet-stream",
        ));
    }
    let max = app.config.limits.max_bundle_bytes;
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|length| length > max) {
        return Err(too_large(max));
    }
    let Ok(_installing) = app.update.installing.try_lock() else {
        return Err(UpdateError::Busy.into());
    };

    let upload = Upload::in_data_dir(&app.config.data);
    let mut file = tokio::fs::File::create(&upload.0)
        .await
        .map_err(ApiError::internal)?;
    let mut received: u64 = 0;
    let mut stream = body.into_data_stream();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk
            .map_err(|err| ApiError::new(Code::BadRequest, format!("reading the bundle: {err}")))?;
        received += chunk.len() as u64;
        if received > max {
            return Err(too_large(max));
        }
        file.write_all(&chunk).await.map_err(ApiError::internal)?;
    }
    file.flush().await.map_err(ApiError::internal)?;
    drop(file);

    let config = config.clone();
    let current = app.update.current_slot;
    let path = upload.0.clone();
    let installed = tokio::task::spawn_blocking(move || install_blocking(&config, current, &path))
        .await
        .map_err(ApiError::internal)?;
    drop(upload);
    let outcome = match installed {
        Ok(outcome) => outcome,
        Err(err) => {
            count_failure(&err);
            tracing::warn!(error = %err, staff = %auth.0.staff.username, "update refused");
            return Err(err.into());
        }
    };
    METRICS.update_event("installed");
    tracing::info!(
        staff = %auth.0.staff.username,
        version = %outcome.version,
        slot = %outcome.slot,
        "update installed over HTTP; rebooting"
    );
    reboot_later(app.config.update.reboot_command.clone());
    Ok((
        StatusCode::ACCEPTED,
        axum::Json(json!({
            "slot": outcome.slot,
            "version": outcome.version,
            "generation": outcome.generation,
            "rebooting": true,
        })),
    )
        .into_response())
}

/// Runs the reboot command after `REBOOT_DELAY_MS` (the init's reboot stops this process with
/// SIGTERM, which drains connections as usual).
pub fn reboot_later(command: Vec<String>) {
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(REBOOT_DELAY_MS)).await;
        let Some((program, args)) = command.split_first() else {
            return;
        };
        tracing::info!(command = ?command, "rebooting into the new slot");
        match tokio::process::Command::new(program)
            .args(args)
            .status()
            .await
        {
            Ok(status) if status.success() => {}
            Ok(status) => {
                tracing::error!(command = ?command, %status, "the reboot command failed; the update boots at the next restart")
            }
            Err(err) => {
                tracing::error!(command = ?command, error = %err, "could not run the reboot command; the update boots at the next restart")
            }
        }
    });
}

/// Asks the hub for updates every `update.pull_interval_secs` (spawned at start; returns at
/// once when pulling is off, without a boot partition or without a hub).
pub async fn pull_from_hub(app: Arc<App>) {
    let interval = app.config.update.pull_interval_secs;
    if interval == 0 || app.config.update.boot_dir.is_none() {
        return;
    }
    let Some(url) = app.config.hub.url.clone() else {
        tracing::warn!("update.pull_interval_secs is set but no hub.url: not pulling updates");
        return;
    };
    let Some(arch) = Arch::host() else {
        return;
    };
    let http = match reqwest::Client::builder()
        .timeout(Duration::from_secs(PULL_TIMEOUT_SECS))
        .build()
    {
        Ok(http) => http,
        Err(err) => {
            tracing::error!(error = %err, "cannot build the HTTP client; not pulling updates");
            return;
        }
    };
    let mut shutdown = app.shutdown.subscribe();
    // The version last refused: not fetched again (it would be refused again).
    let mut refused: Option<String> = None;
    loop {
        tokio::select! {
            _ = shutdown.recv() => return,
            _ = tokio::time::sleep(Duration::from_secs(interval)) => {}
        }
        match pull_once(&app, &http, url.trim_end_matches('/'), arch, &mut refused).await {
            Ok(Some(outcome)) => {
                METRICS.update_event("installed");
                tracing::info!(
                    version = %outcome.version,
                    slot = %outcome.slot,
                    "update from the hub installed; rebooting"
                );
                reboot_later(app.config.update.reboot_command.clone());
                return;
            }
            Ok(None) => {}
            Err(err) => tracing::warn!(error = %err, "pulling an update from the hub"),
        }
    }
}

/// One look at the hub: `Some` when a new bundle was installed.
async fn pull_once(
    app: &Arc<App>,
    http: &reqwest::Client,
    url: &str,
    arch: Arch,
    refused: &mut Option<String>,
) -> Result<Option<InstallOutcome>, String> {
    let Some(credential) = app.uplink.credential() else {
        return Ok(None); // not enrolled (yet)
    };
    let config = app.config.update.clone();
    let current = app.update.current_slot;
    let status = tokio::task::spawn_blocking(move || status_blocking(&config, current))
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| e.to_string())?;
    let running = status
        .as_ref()
        .and_then(|status| status.running_slot().and_then(|s| s.version.clone()));
    // A version this box already tried and rolled back from is not installed again (else a
    // bad bundle the hub keeps offering would cost three failed boots every interval).
    let rolled_back = status.and_then(|status| status.rolled_back);
    let mut request = http
        .get(format!("{url}/api/updates/{arch}/latest"))
        .header("x-aisle-store", &credential.store_id)
        .bearer_auth(&credential.credential);
    if let Some(version) = &running {
        request = request.header(header::IF_NONE_MATCH.as_str(), format!("\"{version}\""));
    }
    let mut response = request.send().await.map_err(|e| e.to_string())?;
    let status = response.status();
    if status == reqwest::StatusCode::NOT_MODIFIED || status == reqwest::StatusCode::NOT_FOUND {
        return Ok(None);
    }
    if !status.is_success() {
        return Err(format!("the hub answered {status}"));
    }
    let version = response
        .headers()
        .get("x-aisle-update-version")
        .and_then(|v| v.to_str().ok())
        .ok_or("the hub's answer names no version")?
        .to_owned();
    if running.as_deref() == Some(version.as_str())
        || refused.as_deref() == Some(version.as_str())
        || rolled_back.as_deref() == Some(version.as_str())
    {
        return Ok(None);
    }
    let Ok(_installing) = app.update.installing.try_lock() else {
        return Ok(None); // an admin is installing one now
    };
    let max = app.config.limits.max_bundle_bytes;
    if response.content_length().is_some_and(|length| length > max) {
        METRICS.limit("max_bundle_bytes");
        *refused = Some(version.clone());
        return Err(format!("bundle {version} exceeds max_bundle_bytes ({max})"));
    }
    tracing::info!(%version, running = ?running, "the hub offers another version; fetching it");
    let upload = Upload::in_data_dir(&app.config.data);
    let mut file = tokio::fs::File::create(&upload.0)
        .await
        .map_err(|e| e.to_string())?;
    let mut received: u64 = 0;
    while let Some(chunk) = response.chunk().await.map_err(|e| e.to_string())? {
        received += chunk.len() as u64;
        if received > max {
            METRICS.limit("max_bundle_bytes");
            *refused = Some(version.clone());
            return Err(format!("bundle {version} exceeds max_bundle_bytes ({max})"));
        }
        file.write_all(&chunk).await.map_err(|e| e.to_string())?;
    }
    file.flush().await.map_err(|e| e.to_string())?;
    drop(file);
    let config = app.config.update.clone();
    let path = upload.0.clone();
    let installed = tokio::task::spawn_blocking(move || install_blocking(&config, current, &path))
        .await
        .map_err(|e| e.to_string())?;
    drop(upload);
    match installed {
        Ok(outcome) => Ok(Some(outcome)),
        Err(err) => {
            count_failure(&err);
            if matches!(err, UpdateError::Rejected(_)) {
                *refused = Some(version);
            }
            Err(err.to_string())
        }
    }
}
