//! `aisle-image keygen` and `aisle-image sign`: the release key pair and the signed update
//! bundle (kernel + initramfs + manifest, ed25519), in the format of `aisle-update`, which the
//! appliance verifies before installing anything.

use std::path::{Path, PathBuf};

use anyhow::{Context, ensure};

use crate::arch::Arch;

impl From<Arch> for aisle_update::Arch {
    fn from(arch: Arch) -> Self {
        match arch {
            Arch::X86_64 => aisle_update::Arch::X86_64,
            Arch::Aarch64 => aisle_update::Arch::Aarch64,
        }
    }
}

/// Writes `PREFIX.key` (secret, readable by its owner only) and `PREFIX.pub`; never overwrites.
pub fn keygen(prefix: &Path) -> anyhow::Result<(PathBuf, PathBuf, String)> {
    // Appended, not `with_extension`: `release-2026.05` keeps its dot.
    let with = |ext: &str| {
        let mut name = prefix.as_os_str().to_owned();
        name.push(ext);
        PathBuf::from(name)
    };
    let (secret, public) = (with(".key"), with(".pub"));
    for path in [&secret, &public] {
        ensure!(
            !path.exists(),
            "{} exists: not overwriting a key",
            path.display()
        );
    }
    if let Some(dir) = prefix.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    let (sk, pk) = aisle_update::generate();
    aisle_update::key::write_secret_key(&secret, &sk)?;
    aisle_update::key::write_public_key(&public, &pk)?;
    Ok((secret, public, pk.key_id().to_string()))
}

pub struct SignOptions {
    pub key: PathBuf,
    pub arch: Arch,
    pub kernel: PathBuf,
    pub initrd: PathBuf,
    pub version: String,
    pub out: PathBuf,
    /// The image build's manifest (`aisle-<arch>.manifest.json`) whose provenance the bundle
    /// carries, when there is one.
    pub build_manifest: Option<PathBuf>,
}

pub fn sign(opts: &SignOptions) -> anyhow::Result<aisle_update::Manifest> {
    let key = aisle_update::key::read_secret_key(&opts.key)?;
    let inputs = match &opts.build_manifest {
        Some(path) if path.is_file() => {
            let built: serde_json::Value = serde_json::from_slice(&std::fs::read(path)?)
                .with_context(|| format!("{} is not JSON", path.display()))?;
            // A build without update keys makes an initramfs that trusts nothing: a box that
            // installs it can never be updated again without reflashing.
            ensure!(
                built["update_keys"]
                    .as_array()
                    .is_some_and(|keys| !keys.is_empty()),
                "{} was built without --update-key: a box running it would refuse every later update; rebuild with --update-key",
                path.display()
            );
            built["slot_a"]["inputs"].clone()
        }
        _ => serde_json::Value::Null,
    };
    let manifest = aisle_update::write_bundle(
        &opts.out,
        &opts.version,
        opts.arch.into(),
        &opts.kernel,
        &opts.initrd,
        inputs,
        &key,
    )?;
    Ok(manifest)
}
