//! The hub's configuration: one typed struct.
//!
//! Sources, later ones win: embedded defaults (`cargo run -p aisle-hub` works with no file) → a
//! TOML file (`--config FILE` or `AISLE_HUB_CONFIG`) → environment (`AISLE_HUB_LISTEN`,
//! `AISLE_HUB_REGION`, `AISLE_HUB_LIMITS__MAX_FRAME_BYTES`, …: `__` separates nesting) →
//! command-line flags.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::limits::Limits;

/// The region of a development hub (the default): accepted on loopback addresses only.
pub const DEV_REGION: &str = "default";

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Address the HTTP/WebSocket server binds.
    pub listen: SocketAddr,
    /// Directory holding the SQLite database and the hub id.
    pub data: PathBuf,
    /// Where the hub's data lives. Unset: the SQLite file `<data>/aisle-hub.db` (one hub
    /// process). `postgres://user:password@host:port/dbname`: a PostgreSQL database that
    /// several `aisle-hub` replicas share behind a load balancer (docs/deploy-region.md).
    pub database: Option<String>,
    /// The region this hub serves; stores enrolled here belong to it. Required in production,
    /// `default` in development.
    pub region: String,
    /// Password of the first HQ account (`admin`, role `hq_admin`) created on an empty data
    /// directory. Unset: a random one is generated and printed once.
    pub first_admin_password: Option<String>,
    /// Log filter (tracing's EnvFilter syntax).
    pub log: String,
    /// Lifetime of an HQ session token.
    pub session_ttl_secs: u64,
    /// Lifetime of a store's one-time enrollment token.
    pub enrollment_token_ttl_secs: u64,
    /// Serve the dashboard from this directory (the repository's `web/`) instead of the copy
    /// embedded in the binary: for front-end work without a rebuild. Unset in production.
    pub web_dir: Option<PathBuf>,
    /// Firmware update bundles offered to the region's stores: `<updates_dir>/<arch>/*.aisle`
    /// (`x86_64`, `aarch64`); the newest file (by modification time) is the one offered.
    /// Unset: no updates are offered. The hub does not verify them; each store does.
    pub updates_dir: Option<PathBuf>,
    /// How long the region keeps what it no longer needs.
    pub retention: Retention,
    pub limits: Limits,
}

/// The region's retention period, applied by the hub and carried to every store in the sync
/// `welcome` (a store keeps applying it while its uplink is down).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Retention {
    /// A resolved conversation is erased everywhere this long after it was resolved
    /// (31536000 = 365 days). 0: conversations are kept until erased on request.
    pub resolved_conversation_secs: u64,
    /// How often the hub looks for conversations past the period.
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
            listen: SocketAddr::from(([127, 0, 0, 1], 8090)),
            data: PathBuf::from("data/hub"),
            database: None,
            region: DEV_REGION.into(),
            first_admin_password: None,
            log: "info".into(),
            session_ttl_secs: 12 * 3600,
            enrollment_token_ttl_secs: 24 * 3600,
            web_dir: None,
            updates_dir: None,
            retention: Retention::default(),
            limits: Limits::default(),
        }
    }
}

/// Flags given on the command line; they override every other source.
#[derive(Debug, Default, Clone)]
pub struct Overrides {
    pub listen: Option<SocketAddr>,
    pub data: Option<PathBuf>,
    pub region: Option<String>,
    pub database: Option<String>,
}

pub use aisle_service::config::ConfigError;

impl Config {
    pub fn load(file: Option<&Path>, overrides: &Overrides) -> Result<Self, ConfigError> {
        let mut config: Config = aisle_service::config::layered(file, "AISLE_HUB_")?;
        if let Some(listen) = overrides.listen {
            config.listen = listen;
        }
        if let Some(data) = &overrides.data {
            config.data = data.clone();
        }
        if let Some(region) = &overrides.region {
            config.region = region.clone();
        }
        if let Some(database) = &overrides.database {
            config.database = Some(database.clone());
        }
        config.validate()?;
        Ok(config)
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        self.limits.validate().map_err(ConfigError::Invalid)?;
        if self.region.is_empty()
            || self.region.len() > 64
            || self.region.chars().any(char::is_control)
        {
            return Err(ConfigError::Invalid(
                "region must be 1 to 64 characters without control characters".into(),
            ));
        }
        // The dev default is for a hub on this machine only: a hub other machines can reach
        // (its stores) is a real region's, and must say which.
        if self.region == DEV_REGION && !self.listen.ip().is_loopback() {
            return Err(ConfigError::Invalid(format!(
                "a hub listening on {} serves stores: name its region with --region (AISLE_HUB_REGION); \"{DEV_REGION}\" is for development on loopback",
                self.listen
            )));
        }
        if let Some(password) = &self.first_admin_password
            && password.chars().count() < 8
        {
            return Err(ConfigError::Invalid(
                "first_admin_password needs at least 8 characters".into(),
            ));
        }
        if let Some(url) = &self.database
            && !(url.starts_with("postgres://") || url.starts_with("postgresql://"))
        {
            return Err(ConfigError::Invalid(
                "database must be a postgres:// URL (or unset for the SQLite file in data)".into(),
            ));
        }
        if self.retention.sweep_interval_secs == 0 {
            return Err(ConfigError::Invalid(
                "retention.sweep_interval_secs must be positive".into(),
            ));
        }
        if self.session_ttl_secs == 0 || self.enrollment_token_ttl_secs == 0 {
            return Err(ConfigError::Invalid(
                "session_ttl_secs and enrollment_token_ttl_secs must be positive".into(),
            ));
        }
        Ok(())
    }

    pub fn database_path(&self) -> PathBuf {
        self.data.join("aisle-hub.db")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_then_flags() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("hub.toml");
        std::fs::write(
            &file,
            "listen = \"127.0.0.1:9000\"\nregion = \"eu-west\"\n[limits]\nmax_docs_in_flight = 4\n",
        )
        .unwrap();
        let config = Config::load(Some(&file), &Overrides::default()).unwrap();
        assert_eq!(config.listen.port(), 9000);
        assert_eq!(config.region, "eu-west");
        assert_eq!(config.limits.max_docs_in_flight, 4);
        let overrides = Overrides {
            listen: Some("127.0.0.1:9100".parse().unwrap()),
            data: Some("/tmp/x".into()),
            region: Some("us-east".into()),
            database: None,
        };
        let config = Config::load(Some(&file), &overrides).unwrap();
        assert_eq!(config.listen.port(), 9100);
        assert_eq!(config.data, PathBuf::from("/tmp/x"));
        assert_eq!(config.region, "us-east");

        // A hub other machines can reach must name its region.
        let exposed = Overrides {
            listen: Some("0.0.0.0:8090".parse().unwrap()),
            ..Overrides::default()
        };
        let err = Config::load(None, &exposed).unwrap_err();
        assert!(err.to_string().contains("--region"), "{err}");
    }

    #[test]
    fn unknown_key_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("hub.toml");
        std::fs::write(&file, "[limits]\nmax_fram_bytes = 5\n").unwrap();
        let err = Config::load(Some(&file), &Overrides::default()).unwrap_err();
        assert!(err.to_string().contains("max_fram_bytes"), "{err}");
    }
}
