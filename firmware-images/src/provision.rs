//! `aisle-image provision`: writes a store's configuration (`aisle.toml`) into the provisioning
//! partition of an image or a flashed disk. The partition is FAT, written here through the
//! `fatfs` crate (no mount, no root, works on any OS), and readable and editable from any OS.

use std::fs::OpenOptions;
use std::io::{Read, Write};
use std::path::Path;

use anyhow::{Context, ensure};
use serde::Serialize;

use crate::gpt;

/// The file the edge reads at start (`/provision/aisle.toml` on the box).
pub const CONFIG_FILE: &str = "aisle.toml";
/// Where the box mounts its partitions (see `firmware-images/rootfs/etc/aisle/rcS`).
pub const DATA_DIR: &str = "/data/aisle";
pub const BOOT_DIR: &str = "/boot";
pub const UPDATE_KEYS_DIR: &str = "/etc/aisle/update-keys";
pub const LISTEN: &str = "0.0.0.0:8080";

/// What a field engineer sets for a store.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StoreConfig {
    pub store_id: Option<String>,
    pub region: Option<String>,
    pub hub_url: Option<String>,
    pub enroll_token: Option<String>,
    /// The first admin's password (used by the edge only on an empty data directory).
    pub admin_password: Option<String>,
}

impl StoreConfig {
    /// Refuses what the edge would refuse at boot, so the mistake shows at the desk, not in
    /// the store.
    pub fn validate(&self) -> anyhow::Result<()> {
        let id_ok = |s: &str| {
            !s.is_empty()
                && s.len() <= 64
                && s.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        };
        if let Some(store) = &self.store_id {
            ensure!(
                id_ok(store),
                "--store must be 1 to 64 letters, digits, '-', '_' or '.': {store:?}"
            );
        }
        if let Some(region) = &self.region {
            ensure!(
                id_ok(region),
                "--region must be 1 to 64 letters, digits, '-', '_' or '.': {region:?}"
            );
        }
        if let Some(url) = &self.hub_url {
            ensure!(
                (url.starts_with("http://") || url.starts_with("https://"))
                    && url.len() <= 512
                    && !url.contains(char::is_whitespace),
                "--hub must be an http:// or https:// URL: {url:?}"
            );
        }
        if let Some(token) = &self.enroll_token {
            ensure!(
                !token.is_empty()
                    && token.len() <= 256
                    && token.chars().all(|c| c.is_ascii_graphic()),
                "--enroll-token must be the token the hub printed (no spaces)"
            );
        }
        ensure!(
            self.enroll_token.is_none() || self.hub_url.is_some(),
            "an enrollment token needs --hub"
        );
        Ok(())
    }
}

#[derive(Serialize)]
struct EdgeToml<'a> {
    store_id: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    region: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    first_admin_password: Option<&'a str>,
    listen: &'a str,
    data: &'a str,
    hub: Hub<'a>,
    update: Update<'a>,
}

#[derive(Serialize)]
struct Hub<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    url: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    enroll_token: Option<&'a str>,
}

#[derive(Serialize)]
struct Update<'a> {
    boot_dir: &'a str,
    trusted_keys_dir: &'a str,
}

/// The edge's TOML configuration on the box (the keys of `edge/src/config.rs`).
pub fn config_toml(store: &StoreConfig) -> String {
    let body = toml::to_string(&EdgeToml {
        store_id: store.store_id.as_deref().unwrap_or("unprovisioned"),
        region: store.region.as_deref(),
        first_admin_password: store.admin_password.as_deref(),
        listen: LISTEN,
        data: DATA_DIR,
        hub: Hub {
            url: store.hub_url.as_deref(),
            enroll_token: store.enroll_token.as_deref(),
        },
        update: Update {
            boot_dir: BOOT_DIR,
            trusted_keys_dir: UPDATE_KEYS_DIR,
        },
    })
    .expect("plain strings serialise");
    format!(
        "# The Aisle store appliance's configuration (edge/src/config.rs has every key).\n\
         # Written by `aisle-image provision`; editable here. The box removes the enrollment\n\
         # token once it has enrolled with the hub.\n\n{body}"
    )
}

/// Writes `aisle.toml` for `store` into the provisioning partition of `image` (an image file or
/// a disk device).
pub fn provision(image: &Path, store: &StoreConfig) -> anyhow::Result<()> {
    store.validate()?;
    let text = config_toml(store);
    with_partition(image, |root| {
        let mut file = root.create_file(CONFIG_FILE)?;
        file.truncate()?;
        file.write_all(text.as_bytes())?;
        file.flush()?;
        Ok(())
    })
}

/// The `aisle.toml` in the provisioning partition, if any.
pub fn read_config(image: &Path) -> anyhow::Result<Option<String>> {
    let mut found = None;
    with_partition(image, |root| {
        match root.open_file(CONFIG_FILE) {
            Ok(mut file) => {
                let mut text = String::new();
                file.read_to_string(&mut text)?;
                found = Some(text);
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e.into()),
        }
        Ok(())
    })?;
    Ok(found)
}

type Root<'a> = fatfs::Dir<'a, fscommon::BufStream<fscommon::StreamSlice<std::fs::File>>>;

fn with_partition(
    image: &Path,
    work: impl FnOnce(&Root<'_>) -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
    let mut options = OpenOptions::new();
    options.read(true).write(true);
    if std::fs::metadata(image).is_ok_and(|m| m.file_type().is_block_device()) {
        // A flashed disk a desktop has mounted (AISLE-PROV appears after a replug): writing
        // behind the mounted file system would corrupt it. O_EXCL fails while it is mounted.
        options.custom_flags(libc::O_EXCL);
    }
    let mut file = options.open(image).with_context(|| {
        format!(
            "opening {} (unmount its partitions first if it is a disk)",
            image.display()
        )
    })?;
    let part = gpt::find(&mut file, gpt::PROVISION)?;
    let slice =
        fscommon::StreamSlice::new(file, part.offset_bytes, part.offset_bytes + part.size_bytes)?;
    let fs = fatfs::FileSystem::new(fscommon::BufStream::new(slice), fatfs::FsOptions::new())
        .context("the provisioning partition is not a FAT file system")?;
    work(&fs.root_dir())?;
    fs.unmount().context("writing the provisioning partition")?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_what_the_box_would() {
        let ok = StoreConfig {
            store_id: Some("shanghai-07".into()),
            region: Some("cn-east".into()),
            hub_url: Some("http://hub:8090".into()),
            enroll_token: Some("tok123".into()),
            admin_password: None,
        };
        ok.validate().unwrap();
        for bad in [
            StoreConfig {
                store_id: Some("a b".into()),
                ..ok.clone()
            },
            StoreConfig {
                region: Some(String::new()),
                ..ok.clone()
            },
            StoreConfig {
                hub_url: Some("hub:8090".into()),
                ..ok.clone()
            },
            StoreConfig {
                enroll_token: Some("x y".into()),
                ..ok.clone()
            },
            StoreConfig {
                hub_url: None,
                ..ok.clone()
            },
        ] {
            assert!(bad.validate().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn provisioning_writes_and_rewrites_the_config_in_the_image() {
        let dir = tempfile::tempdir().unwrap();
        let disk = gpt::small_test_disk(dir.path());
        assert_eq!(
            read_config(&disk).unwrap(),
            None,
            "a fresh image is unprovisioned"
        );
        let store = StoreConfig {
            store_id: Some("sh-07".into()),
            region: Some("cn-east".into()),
            hub_url: Some("http://hub:8090".into()),
            enroll_token: Some("et_123".into()),
            admin_password: None,
        };
        provision(&disk, &store).unwrap();
        let text = read_config(&disk).unwrap().unwrap();
        let value: toml::Value = toml::from_str(&text).unwrap();
        assert_eq!(value["store_id"].as_str(), Some("sh-07"));
        assert_eq!(value["hub"]["enroll_token"].as_str(), Some("et_123"));
        // Provisioning again (a box sent to another store) replaces the whole file.
        provision(
            &disk,
            &StoreConfig {
                store_id: Some("sh-08".into()),
                enroll_token: Some("et_9".into()),
                ..store
            },
        )
        .unwrap();
        let text = read_config(&disk).unwrap().unwrap();
        assert!(
            text.contains("sh-08") && !text.contains("sh-07") && !text.contains("et_123"),
            "{text}"
        );
        // The disk's other bytes are untouched: the GPT still reads.
        let mut file = std::fs::File::open(&disk).unwrap();
        assert_eq!(gpt::read(&mut file).unwrap().len(), 3);
    }

    #[test]
    fn refuses_a_file_that_is_not_an_image() {
        let dir = tempfile::tempdir().unwrap();
        let not = dir.path().join("photo.jpg");
        std::fs::write(&not, vec![0xff; 4096]).unwrap();
        let err = provision(&not, &StoreConfig::default())
            .unwrap_err()
            .to_string();
        assert!(err.contains("not a GPT"), "{err}");
    }

    #[test]
    fn config_is_toml_with_quotes_escaped() {
        let text = config_toml(&StoreConfig {
            store_id: Some("s1".into()),
            hub_url: Some("http://hub:8090/\"x".into()),
            ..Default::default()
        });
        let value: toml::Value = toml::from_str(&text).unwrap();
        assert_eq!(value["store_id"].as_str(), Some("s1"));
        assert_eq!(value["hub"]["url"].as_str(), Some("http://hub:8090/\"x"));
        assert_eq!(value["update"]["boot_dir"].as_str(), Some("/boot"));
        assert!(value.get("region").is_none());
    }
}
