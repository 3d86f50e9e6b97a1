//! The kernel modules the appliance loads at boot, with their dependencies, in load order.
//!
//! Debian's kernel package ships no `modules.dep` (its install script runs depmod), so the
//! dependencies are read from each module's `.modinfo` section (`depends=a,b`), and the order is
//! worked out here: the init only runs `insmod` down a list.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use anyhow::Context;

/// Drivers the appliance needs that Debian may build as modules: virtio disks and network
/// (QEMU and most hypervisors), ext4 (built in today), the FAT file system of the boot and provisioning partitions, and the
/// disk and network drivers of common small x86/ARM boxes. A name the kernel does not have is
/// skipped (the cloud kernel has no drivers for physical network cards).
pub const WANTED: &[&str] = &[
    "virtio_pci",
    "virtio_mmio",
    "virtio_blk",
    "virtio_scsi",
    "virtio_net",
    "virtio_rng",
    "ext4",
    "vfat",
    "nls_cp437",
    "nls_ascii",
    "nls_iso8859_1",
    "crc32c_generic",
    "nvme",
    "ahci",
    "sd_mod",
    "mmc_block",
    "sdhci_pci",
    "xhci_pci",
    "usb_storage",
    "uas",
    "e1000",
    "e1000e",
    "igb",
    "igc",
    "r8169",
];

/// The modules to put in the initramfs, in an order where each follows its dependencies:
/// (path relative to the kernel tree's root, e.g. `lib/modules/6.1.0/kernel/fs/fat/vfat.ko`).
pub fn load_order(kernel_root: &Path) -> anyhow::Result<(String, Vec<PathBuf>)> {
    let modules_dir = kernel_root.join("lib/modules");
    let version = std::fs::read_dir(&modules_dir)
        .with_context(|| format!("the kernel package has no {}", modules_dir.display()))?
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .next()
        .context("the kernel package has no modules directory")?;
    let mut by_name: BTreeMap<String, PathBuf> = BTreeMap::new();
    collect(&modules_dir.join(&version), &mut by_name)?;

    let mut order = Vec::new();
    let mut done = BTreeSet::new();
    for wanted in WANTED {
        visit(wanted, &by_name, &mut done, &mut order, kernel_root, 0)?;
    }
    Ok((version, order))
}

fn collect(dir: &Path, out: &mut BTreeMap<String, PathBuf>) -> anyhow::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let path = entry.path();
        if entry.file_type()?.is_dir() {
            collect(&path, out)?;
        } else if let Some(name) = path
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.strip_suffix(".ko"))
        {
            out.insert(name.replace('-', "_"), path);
        }
    }
    Ok(())
}

fn visit(
    name: &str,
    by_name: &BTreeMap<String, PathBuf>,
    done: &mut BTreeSet<String>,
    order: &mut Vec<PathBuf>,
    root: &Path,
    depth: usize,
) -> anyhow::Result<()> {
    assert!(
        depth < 64,
        "module dependencies are not that deep: a cycle at {name}"
    );
    let name = name.replace('-', "_");
    if done.contains(&name) {
        return Ok(());
    }
    let Some(path) = by_name.get(&name) else {
        // Built into the kernel, or not built at all.
        return Ok(());
    };
    done.insert(name.clone());
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    for dep in depends(&bytes) {
        visit(&dep, by_name, done, order, root, depth + 1)?;
    }
    order.push(
        path.strip_prefix(root)
            .expect("found under the root")
            .to_path_buf(),
    );
    Ok(())
}

/// The `depends=` list of a module's `.modinfo` (NUL-separated `key=value` strings).
fn depends(module: &[u8]) -> Vec<String> {
    const KEY: &[u8] = b"\0depends=";
    let Some(at) = module.windows(KEY.len()).position(|w| w == KEY) else {
        return Vec::new();
    };
    let rest = &module[at + KEY.len()..];
    let end = rest.iter().position(|&b| b == 0).unwrap_or(rest.len());
    String::from_utf8_lossy(&rest[..end])
        .split(',')
        .filter(|d| !d.is_empty())
        .map(str::to_string)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dependencies_load_first() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("lib/modules/6.1.0-test/kernel");
        std::fs::create_dir_all(dir.join("fs/fat")).unwrap();
        std::fs::write(dir.join("fs/fat/fat.ko"), b"ELF\0license=GPL\0depends=\0").unwrap();
        std::fs::write(
            dir.join("fs/fat/vfat.ko"),
            b"ELF\0depends=fat\0vermagic=6.1\0",
        )
        .unwrap();
        std::fs::write(dir.join("virtio_blk.ko"), b"ELF\0name=virtio_blk\0").unwrap();
        let (version, order) = load_order(root.path()).unwrap();
        assert_eq!(version, "6.1.0-test");
        let names: Vec<String> = order
            .iter()
            .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names, ["virtio_blk.ko", "fat.ko", "vfat.ko"]);
        assert!(order[0].starts_with("lib/modules/6.1.0-test"));
    }
}
