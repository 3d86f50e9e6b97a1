//! The appliance's configuration: one typed struct.
//!
//! Sources, later ones win: embedded defaults (`cargo run` works with no file) → a TOML file
//! (`--config FILE` or `AISLE_CONFIG`) → environment (`AISLE_LISTEN`, `AISLE_DATA`,
//! `AISLE_LIMITS__MAX_FRAME_BYTES`, …: `__` separates nesting) → command-line flags.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::limits::Limits;

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Address the HTTP/WebSocket server binds.
    pub listen: SocketAddr,
    /// Directory holding the SQLite database and the appliance's secret key.
    pub data: PathBuf,
    /// This store's id (set by provisioning; documents and the hub know the store by it).
    pub store_id: String,
    /// The region this box was provisioned for. Set: enrollment at a hub of another region is
    /// refused before the token is spent. Shown in `/healthz` until the store is enrolled
    /// (then the enrolled region is shown).
    pub region: Option<String>,
    /// Password of the first staff account (`admin`) created on an empty data directory.
    /// Unset: a random one is generated and printed once.
    pub first_admin_password: Option<String>,
    /// Log filter (tracing's EnvFilter syntax).
    pub log: String,
    /// Lifetime of a staff session token.
    pub session_ttl_secs: u64,
    /// Lifetime of a customer's resume token.
    pub resume_token_ttl_secs: u64,
    /// Lifetime of a device hand-off code.
    pub handoff_ttl_secs: u64,
    /// Serve the web pages from this directory (the repository's `web/`) instead of the copy
    /// embedded in the binary: for front-end work without a rebuild. Unset in production.
    pub web_dir: Option<PathBuf>,
    /// Live settings (`aisle-settings`; docs/settings.md): this file is their `file` layer,
    /// over the built-in defaults and under the store admin's and HQ's. Watched: a saved edit
    /// applies without a restart.
    pub routing: aisle_settings::Routing,
    pub bot: aisle_settings::BotPolicy,
    pub hours: aisle_settings::BusinessHours,
    /// How long the store keeps resolved conversations (the region's period, told by the hub,
    /// wins when it sets one). `resolved_conversation_secs` is a live setting.
    pub retention: Retention,
    pub hub: HubLink,
    pub model: ModelConfig,
    pub limits: Limits,
    pub update: UpdateConfig,
    /// The file this configuration was read from (`--config`), if any: the used enrollment
    /// token is removed from it. Not a setting.
    #[serde(skip)]
    pub file: Option<PathBuf>,
}

/// Firmware updates of the appliance image (signed bundles into the inactive boot slot).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct UpdateConfig {
    /// The mounted EFI system partition holding the boot slots (`/boot` on the appliance
    /// image). Unset: this is not an appliance image; installs are refused
    /// (`updates_unavailable`) and `/healthz` shows no image.
    pub boot_dir: Option<PathBuf>,
    /// Directory of the trusted update public keys (`*.pub`), built into the image.
    pub trusted_keys_dir: PathBuf,
    /// Boots a newly installed slot gets to become healthy (be blessed) before the previous
    /// slot boots again.
    pub boot_tries: u32,
    /// Run after an update was installed over HTTP (program and arguments, no shell).
    pub reboot_command: Vec<String>,
    /// Every this many seconds, ask the region's hub for the newest bundle of this
    /// architecture (`GET /api/updates/{arch}/latest`) and install it and reboot when its
    /// version differs from the running one. 0: never (updates only by an admin).
    pub pull_interval_secs: u64,
    /// The running slot. For tests and non-appliance use; on the appliance it is read from
    /// `/proc/cmdline` (`aisle.slot=a|b`).
    pub current_slot: Option<aisle_update::Slot>,
}

impl Default for UpdateConfig {
    fn default() -> Self {
        Self {
            boot_dir: None,
            trusted_keys_dir: PathBuf::from("/etc/aisle/update-keys"),
            boot_tries: 3,
            reboot_command: vec!["/sbin/reboot".into()],
            pull_interval_secs: 0,
            current_slot: None,
        }
    }
}

/// The on-device intent model.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct ModelConfig {
    /// A model file replacing the one built into the binary. Watched: writing a new file
    /// there swaps it in without a restart (validated first; a bad file is refused and the
    /// model in force keeps serving).
    pub path: Option<PathBuf>,
    /// Inference threads.
    pub workers: usize,
}

impl Default for ModelConfig {
    fn default() -> Self {
        Self {
            path: None,
            workers: 1,
        }
    }
}

/// The region's hub this store syncs with. Unset `url`: the store runs on its own.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct HubLink {
    /// Base URL of the hub (`http://hub.example:8090`); its sync endpoint is `/sync`.
    pub url: Option<String>,
    /// One-time enrollment token from the hub's admin. Exchanged for the store's credential at
    /// the first start; the credential is kept in the data directory, so the token is not
    /// needed afterwards.
    pub enroll_token: Option<String>,
}

/// The store's own retention period, for a store without a hub or whose hub sets none: the
/// region's period (sent by the hub in every sync `welcome`, kept in the database) wins.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Retention {
    /// A resolved conversation is erased this long after it was resolved (31536000 = 365
    /// days), at this store only (the hub keeps the region's history). 0: kept until erased on
    /// request (or by the region's period, which wins when set).
    pub resolved_conversation_secs: u64,
    /// How often the store looks for conversations past the period.
    pub sweep_interval_secs: u64,
}

impl Default for Retention {
    fn default() -> Self {
        Self {
            resolved_conversation_secs: 0,
            sweep_interval_secs: 3600,
        }
    }
}

impl Default for Config {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            data: PathBuf::from("data"),
            store_id: "store-1".into(),
            region: None,
            first_admin_password: None,
            log: "info".into(),
            session_ttl_secs: 12 * 3600,
            resume_token_ttl_secs: 30 * 24 * 3600,
            handoff_ttl_secs: 600,
            web_dir: None,
            routing: aisle_settings::Routing::default(),
            bot: aisle_settings::BotPolicy::default(),
            hours: aisle_settings::BusinessHours::default(),
            retention: Retention::default(),
            hub: HubLink::default(),
            model: ModelConfig::default(),
            limits: Limits::default(),
            update: UpdateConfig::default(),
            file: None,
        }
    }
}

/// Flags given on the command line; they override every other source.
#[derive(Debug, Default, Clone)]
pub struct Overrides {
    pub listen: Option<SocketAddr>,
    pub data: Option<PathBuf>,
    pub hub: Option<String>,
    pub enroll_token: Option<String>,
}

pub use aisle_service::config::ConfigError;

impl Config {
    pub fn load(file: Option<&Path>, overrides: &Overrides) -> Result<Self, ConfigError> {
        let mut config: Config = aisle_service::config::layered(file, "AISLE_")?;
        if let Some(listen) = overrides.listen {
            config.listen = listen;
        }
        if let Some(data) = &overrides.data {
            config.data = data.clone();
        }
        if let Some(hub) = &overrides.hub {
            config.hub.url = Some(hub.clone());
        }
        if let Some(token) = &overrides.enroll_token {
            config.hub.enroll_token = Some(token.clone());
        }
        config.file = file.map(Path::to_owned);
        config.validate()?;
        Ok(config)
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        self.limits.validate().map_err(ConfigError::Invalid)?;
        self.live_settings()
            .validate()
            .map_err(|err| ConfigError::Invalid(err.to_string()))?;
        if self.retention.sweep_interval_secs == 0 {
            return Err(ConfigError::Invalid(
                "retention.sweep_interval_secs must be positive".into(),
            ));
        }
        if self.store_id.is_empty() || self.store_id.len() > 64 {
            return Err(ConfigError::Invalid(
                "store_id must be 1 to 64 characters".into(),
            ));
        }
        if let Some(url) = &self.hub.url
            && !(url.starts_with("http://") || url.starts_with("https://"))
        {
            return Err(ConfigError::Invalid(format!(
                "hub.url must start with http:// or https:// (got {url})"
            )));
        }
        if let Some(region) = &self.region
            && (region.is_empty() || region.len() > 64)
        {
            return Err(ConfigError::Invalid(
                "region must be 1 to 64 characters".into(),
            ));
        }
        if self.update.boot_tries == 0
            || self.update.boot_tries > aisle_update::slot::MAX_BOOT_TRIES
        {
            return Err(ConfigError::Invalid(format!(
                "update.boot_tries must be 1 to {}",
                aisle_update::slot::MAX_BOOT_TRIES
            )));
        }
        if self.update.reboot_command.is_empty() {
            return Err(ConfigError::Invalid(
                "update.reboot_command needs at least the program".into(),
            ));
        }
        if self.model.workers == 0 || self.model.workers > 16 {
            return Err(ConfigError::Invalid("model.workers must be 1 to 16".into()));
        }
        if let Some(password) = &self.first_admin_password
            && password.chars().count() < 8
        {
            return Err(ConfigError::Invalid(
                "first_admin_password needs at least 8 characters".into(),
            ));
        }
        Ok(())
    }

    /// The live settings as this file (over the defaults) sets them.
    pub fn live_settings(&self) -> aisle_settings::StoreSettings {
        aisle_settings::StoreSettings {
            routing: self.routing.clone(),
            bot: self.bot.clone(),
            hours: self.hours.clone(),
            retention: aisle_settings::Retention {
                resolved_conversation_secs: self.retention.resolved_conversation_secs,
            },
        }
    }

    pub fn database_path(&self) -> PathBuf {
        self.data.join("aisle-edge.db")
    }
}

/// Removes the setting `key` (a path of table names and the key, `["hub", "enroll_token"]`)
/// from the TOML file at `path`: a secret used once (the enrollment token, the first admin's
/// password) does not stay on the provisioning partition. Everything else stays byte for
/// byte (comments, order, formatting): written to a temporary file in the same directory,
/// fsynced, renamed over the original (on the appliance the file is on a FAT partition,
/// where Linux renames over an existing file too) and the directory fsynced. `Ok(false)`
/// when the file does not hold the setting.
pub fn forget_setting(path: &Path, key: &[&str]) -> std::io::Result<bool> {
    let (name_of_key, tables) = key.split_last().expect("a setting has a name");
    let invalid = |err: String| std::io::Error::new(std::io::ErrorKind::InvalidData, err);
    let text = std::fs::read_to_string(path)?;
    let mut document: toml_edit::DocumentMut = text
        .parse()
        .map_err(|err: toml_edit::TomlError| invalid(err.to_string()))?;
    let mut table: Option<&mut dyn toml_edit::TableLike> = Some(document.as_table_mut());
    for name in tables {
        table = table
            .and_then(|t| t.get_mut(name))
            .and_then(|item| item.as_table_like_mut());
    }
    let removed = table.and_then(|t| t.remove(name_of_key)).is_some();
    if !removed {
        return Ok(false);
    }
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir.to_owned(),
        _ => PathBuf::from("."),
    };
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let temporary = dir.join(format!(".{name}.tmp"));
    {
        use std::io::Write;
        let mut file = std::fs::File::create(&temporary)?;
        file.write_all(document.to_string().as_bytes())?;
        file.sync_all()?;
    }
    if let Err(err) = std::fs::rename(&temporary, path) {
        let _ = std::fs::remove_file(&temporary);
        return Err(err);
    }
    std::fs::File::open(&dir)?.sync_all()?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_then_flags() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("edge.toml");
        std::fs::write(
            &file,
            "listen = \"127.0.0.1:9000\"\nstore_id = \"sh-01\"\n[limits]\nmax_message_chars = 500\n",
        )
        .unwrap();
        let config = Config::load(Some(&file), &Overrides::default()).unwrap();
        assert_eq!(config.listen.port(), 9000);
        assert_eq!(config.store_id, "sh-01");
        assert_eq!(config.limits.max_message_chars, 500);
        assert_eq!(
            config.limits.max_frame_bytes,
            Limits::default().max_frame_bytes
        );

        let overrides = Overrides {
            listen: Some("127.0.0.1:9100".parse().unwrap()),
            data: Some("/tmp/x".into()),
            ..Overrides::default()
        };
        let config = Config::load(Some(&file), &overrides).unwrap();
        assert_eq!(config.listen.port(), 9100);
        assert_eq!(config.data, PathBuf::from("/tmp/x"));
    }

    /// docs/settings.md names every setting: a new key without its row fails here.
    #[test]
    fn every_setting_is_documented() {
        let docs = std::fs::read_to_string(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/settings.md"),
        )
        .unwrap();
        let tree = serde_json::to_value(Config::default()).unwrap();
        let mut missing = Vec::new();
        for (key, value) in tree.as_object().unwrap() {
            match value.as_object() {
                Some(table) => {
                    for sub in table.keys() {
                        let named = if key == "limits" {
                            format!("| `{sub}` |")
                        } else {
                            format!("`{key}.{sub}`")
                        };
                        if !docs.contains(&named) {
                            missing.push(named);
                        }
                    }
                }
                None => {
                    if !docs.contains(&format!("| `{key}` |")) {
                        missing.push(key.clone());
                    }
                }
            }
        }
        assert!(missing.is_empty(), "not in docs/settings.md: {missing:?}");
    }

    #[test]
    fn unknown_key_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("edge.toml");
        std::fs::write(&file, "[limits]\nmax_fram_bytes = 5\n").unwrap();
        let err = Config::load(Some(&file), &Overrides::default()).unwrap_err();
        assert!(err.to_string().contains("max_fram_bytes"), "{err}");
    }
}
