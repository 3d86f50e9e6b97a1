//! The image's inputs from Debian: the kernel (with its modules), a static busybox and
//! systemd-boot, fetched with `apt-get download` into a cache and unpacked with `dpkg -x`, never
//! installed on the build machine. Each input's package version and sha256 go into the manifest.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, bail};
use serde::Serialize;

use crate::arch::Arch;

/// One Debian package used by the image.
#[derive(Clone, Debug, Serialize)]
pub struct Package {
    pub name: String,
    pub version: String,
    pub arch: String,
    pub sha256: String,
    #[serde(skip)]
    pub deb: PathBuf,
}

/// The package names for an architecture. The kernel is Debian's `cloud` flavour by default:
/// small, with virtio drivers (the QEMU boots in CI); `--kernel-package linux-image-amd64` picks
/// the generic kernel with drivers for real boxes' disks and network cards.
pub fn kernel_meta_package(arch: Arch) -> String {
    format!("linux-image-cloud-{}", arch.deb())
}

/// The package `spec` (`busybox-static`) for `arch`, from the cache or downloaded into it.
pub fn fetch(cache: &Path, name: &str, arch: Arch, offline: bool) -> anyhow::Result<Package> {
    std::fs::create_dir_all(cache).with_context(|| format!("creating {}", cache.display()))?;
    let name = resolve_meta(name, arch, cache, offline)?;
    if let Some(found) = cached(cache, &name, arch)? {
        return Ok(found);
    }
    if offline {
        bail!(
            "{name} ({}) is not in {} and --offline forbids downloading it",
            arch.deb(),
            cache.display()
        );
    }
    let spec = format!("{name}:{}", arch.deb());
    let output = Command::new("apt-get")
        .args(["download", "-qq", &spec])
        .current_dir(cache)
        .output()
        .context("running apt-get (aisle-image build fetches its inputs from Debian: run it on Debian, see docs/field-guide.md)")?;
    if !output.status.success() {
        bail!(
            "apt-get download {spec} failed: {}{}",
            String::from_utf8_lossy(&output.stderr).trim(),
            if arch == Arch::Aarch64 {
                " (for arm64 packages run firmware-images/toolchain/setup, which adds the arm64 architecture)"
            } else {
                ""
            }
        );
    }
    cached(cache, &name, arch)?.with_context(|| format!("apt-get download {spec} left no .deb"))
}

/// A meta package (`linux-image-cloud-arm64`) names the versioned one it depends on
/// (`linux-image-6.1.0-56-cloud-arm64`); the versioned name is what the manifest records.
fn resolve_meta(name: &str, arch: Arch, cache: &Path, offline: bool) -> anyhow::Result<String> {
    if !name.starts_with("linux-image-") || name.chars().nth(12).is_some_and(|c| c.is_ascii_digit())
    {
        return Ok(name.to_string());
    }
    let flavour = name.trim_start_matches("linux-image-").to_string();
    if offline {
        // The newest cached versioned kernel of this flavour.
        let mut found: Vec<String> = list_debs(cache)?
            .into_iter()
            .filter_map(|(n, _, a)| {
                // `linux-image-<release>-<abi>-<flavour>`: the flavour exactly, so `amd64` does
                // not pick `cloud-amd64`.
                let own_flavour = n
                    .strip_prefix("linux-image-")
                    .and_then(|rest| rest.splitn(3, '-').nth(2));
                (a == arch.deb() && own_flavour == Some(flavour.as_str())).then_some(n)
            })
            .collect();
        found.sort();
        return found
            .pop()
            .with_context(|| format!("no cached kernel for {name} in {}", cache.display()));
    }
    let output = Command::new("apt-cache")
        .args(["depends", "--important", &format!("{name}:{}", arch.deb())])
        .output()
        .context("running apt-cache")?;
    let text = String::from_utf8_lossy(&output.stdout);
    text.lines()
        .filter_map(|l| l.trim().strip_prefix("Depends: "))
        .map(|d| d.split(':').next().unwrap_or(d).trim().to_string())
        .find(|d| d.starts_with("linux-image-"))
        .with_context(|| format!("apt-cache does not know {name} for {}", arch.deb()))
}

fn list_debs(cache: &Path) -> anyhow::Result<Vec<(String, String, String)>> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(cache).with_context(|| format!("reading {}", cache.display()))? {
        let file_name = entry?.file_name().to_string_lossy().into_owned();
        let Some(stem) = file_name.strip_suffix(".deb") else {
            continue;
        };
        let parts: Vec<&str> = stem.split('_').collect();
        if let [name, version, arch] = parts[..] {
            out.push((
                name.to_string(),
                version.replace("%3a", ":"),
                arch.to_string(),
            ));
        }
    }
    Ok(out)
}

fn cached(cache: &Path, name: &str, arch: Arch) -> anyhow::Result<Option<Package>> {
    let mut found: Vec<(String, String, String)> = list_debs(cache)?
        .into_iter()
        .filter(|(n, _, a)| n == name && (a == arch.deb() || a == "all"))
        .collect();
    found.sort();
    let Some((name, version, deb_arch)) = found.pop() else {
        return Ok(None);
    };
    let deb = cache.join(format!(
        "{name}_{}_{deb_arch}.deb",
        version.replace(':', "%3a")
    ));
    let sha256 = crate::sha256_file(&deb)?;
    Ok(Some(Package {
        name,
        version,
        arch: deb_arch,
        sha256,
        deb,
    }))
}

/// Unpacks the package's files into `dir` (`dpkg -x`: no scripts run, nothing installed).
pub fn unpack(package: &Package, dir: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir)?;
    let status = Command::new("dpkg")
        .arg("-x")
        .arg(&package.deb)
        .arg(dir)
        .status()
        .context("running dpkg -x")?;
    if !status.success() {
        bail!("dpkg -x {} failed", package.deb.display());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offline_kernel_is_the_asked_flavour() {
        let cache = tempfile::tempdir().unwrap();
        for deb in [
            "linux-image-6.1.0-56-cloud-amd64_6.1.192-2_amd64.deb",
            "linux-image-6.1.0-56-amd64_6.1.192-2_amd64.deb",
        ] {
            std::fs::write(cache.path().join(deb), b"deb").unwrap();
        }
        let pick = |meta: &str| resolve_meta(meta, Arch::X86_64, cache.path(), true).unwrap();
        assert_eq!(pick("linux-image-amd64"), "linux-image-6.1.0-56-amd64");
        assert_eq!(
            pick("linux-image-cloud-amd64"),
            "linux-image-6.1.0-56-cloud-amd64"
        );
    }
}
