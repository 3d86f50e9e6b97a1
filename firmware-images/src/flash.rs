//! `aisle-image flash`: writes an image to a disk with a progress bar, then reads it back and
//! compares sha256. Refuses a partition, a disk with anything mounted (which includes the
//! machine's own system disk) or in use as swap, and a disk smaller than the image; asks before
//! writing unless `--yes`. A plain file as the target works the same (tests, VMs).

use std::fs::{File, OpenOptions};
use std::io::{IsTerminal, Seek, SeekFrom, Write};
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail, ensure};
use sha2::{Digest, Sha256};

use crate::gpt;

/// Bytes written or read per step.
const CHUNK_BYTES: usize = 4 << 20;

#[derive(Debug)]
pub struct Flashed {
    pub bytes: u64,
    pub sha256: String,
    pub seconds: f64,
}

pub fn flash(image: &Path, device: &Path, yes: bool) -> anyhow::Result<Flashed> {
    let started = std::time::Instant::now();
    let mut source = File::open(image).with_context(|| format!("opening {}", image.display()))?;
    gpt::find(&mut source, gpt::ESP).context("refusing to flash")?;
    let size = source.metadata()?.len();

    let is_block = std::fs::metadata(device)
        .map(|m| m.file_type().is_block_device())
        .unwrap_or(false);
    if is_block {
        check_disk(device, size)?;
    } else if let Ok(meta) = std::fs::metadata(device) {
        ensure!(
            meta.is_file(),
            "{} is neither a disk nor a plain file",
            device.display()
        );
    }
    if !yes {
        confirm(image, device, size)?;
    }

    let mut options = OpenOptions::new();
    options
        .write(true)
        .read(true)
        .create(!is_block)
        .truncate(false);
    if is_block {
        // O_EXCL on a block device: the kernel refuses it (EBUSY) while anything holds it:
        // a mount in any namespace, LVM, dm-crypt, md, swap.
        options.custom_flags(libc::O_EXCL);
    }
    let mut target = options.open(device).with_context(|| {
        format!(
            "opening {} for writing (in use by a mount, LVM, RAID or swap?)",
            device.display()
        )
    })?;
    if !is_block {
        target.set_len(size)?;
    }

    let bar = crate::bytes_bar(size, "writing");
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; CHUNK_BYTES];
    source.seek(SeekFrom::Start(0))?;
    let mut done = 0u64;
    while done < size {
        let n = crate::read_full(&mut source, &mut buf)?;
        ensure!(n > 0, "{} ended early", image.display());
        hasher.update(&buf[..n]);
        target
            .write_all(&buf[..n])
            .with_context(|| format!("writing {} at byte {done}", device.display()))?;
        done += n as u64;
        bar.set_position(done);
    }
    bar.set_message("syncing");
    target.sync_all().context("flushing the disk")?;
    bar.finish_with_message("written");
    let expected = hex::encode(hasher.finalize());
    drop_cache(&target);
    drop(target);

    let bar = crate::bytes_bar(size, "verifying");
    let mut check = File::open(device)?;
    let mut hasher = Sha256::new();
    let mut done = 0u64;
    while done < size {
        let want = CHUNK_BYTES.min((size - done) as usize);
        let n = crate::read_full(&mut check, &mut buf[..want])?;
        ensure!(n > 0, "{} is shorter than the image", device.display());
        hasher.update(&buf[..n]);
        done += n as u64;
        bar.set_position(done);
    }
    let actual = hex::encode(hasher.finalize());
    if actual != expected {
        bar.abandon_with_message("MISMATCH");
        bail!(
            "read back differs from the image (sha256 {actual} ≠ {expected}): the disk may be failing; do not use it"
        );
    }
    bar.finish_with_message("verified");
    Ok(Flashed {
        bytes: size,
        sha256: actual,
        seconds: started.elapsed().as_secs_f64(),
    })
}

/// Asks the kernel to forget the cached pages, so the read-back comes from the disk.
fn drop_cache(file: &File) {
    // SAFETY: a valid open descriptor; the advice has no memory effects.
    unsafe {
        libc::posix_fadvise(file.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED);
    }
}

/// The checks on a real disk: whole disk, nothing of it mounted or swapped on, big enough.
fn check_disk(device: &Path, image_bytes: u64) -> anyhow::Result<()> {
    let real = std::fs::canonicalize(device)?;
    let name = real
        .file_name()
        .context("a device has a name")?
        .to_string_lossy()
        .into_owned();
    let sys = PathBuf::from("/sys/class/block").join(&name);
    ensure!(
        sys.exists(),
        "{} is not a known block device",
        device.display()
    );
    ensure!(
        !sys.join("partition").exists(),
        "{} is a partition: give the whole disk (e.g. /dev/sdb, not /dev/sdb1)",
        device.display()
    );
    // Held by device-mapper (LVM, dm-crypt) or md: in use even with nothing mounted.
    let held = |dir: &Path| {
        std::fs::read_dir(dir.join("holders"))
            .map(|mut d| d.next().is_some())
            .unwrap_or(false)
    };
    // The disk and its partitions, by device name.
    let mut names = vec![name.clone()];
    ensure!(
        !held(&sys),
        "{} is in use (held by LVM, dm-crypt or RAID). Refusing to overwrite it.",
        device.display()
    );
    for entry in std::fs::read_dir(&sys)? {
        let entry = entry?;
        if entry.path().join("partition").exists() {
            ensure!(
                !held(&entry.path()),
                "{} is in use: its partition {} is held by LVM, dm-crypt or RAID. Refusing to overwrite it.",
                device.display(),
                entry.file_name().to_string_lossy()
            );
            names.push(entry.file_name().to_string_lossy().into_owned());
        }
    }
    let in_use = |source: &str| {
        std::fs::canonicalize(source)
            .ok()
            .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
            .is_some_and(|n| names.contains(&n))
    };
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap_or_default();
    for line in mounts.lines() {
        let mut fields = line.split_whitespace();
        if let (Some(source), Some(target)) = (fields.next(), fields.next())
            && source.starts_with("/dev/")
            && in_use(source)
        {
            bail!(
                "{} is in use: {source} is mounted on {target}{}. Refusing to overwrite it.",
                device.display(),
                if target == "/" {
                    " (this is the system disk)"
                } else {
                    ""
                }
            );
        }
    }
    let swaps = std::fs::read_to_string("/proc/swaps").unwrap_or_default();
    for line in swaps.lines().skip(1) {
        if let Some(source) = line.split_whitespace().next()
            && in_use(source)
        {
            bail!(
                "{} is in use as swap ({source}). Refusing to overwrite it.",
                device.display()
            );
        }
    }
    let sectors: u64 = std::fs::read_to_string(sys.join("size"))?.trim().parse()?;
    let disk_bytes = sectors * 512;
    ensure!(
        disk_bytes >= image_bytes,
        "{} holds {} MB, the image needs {} MB",
        device.display(),
        disk_bytes / 1_000_000,
        image_bytes / 1_000_000
    );
    Ok(())
}

fn confirm(image: &Path, device: &Path, size: u64) -> anyhow::Result<()> {
    if !std::io::stdin().is_terminal() {
        bail!(
            "not asking on a non-interactive input: pass --yes to write {} to {}",
            image.display(),
            device.display()
        );
    }
    eprint!(
        "Write {} ({} MB) to {}? Everything on {} is lost. Type yes to go on: ",
        image.display(),
        size / 1_000_000,
        device.display(),
        device.display()
    );
    std::io::stderr().flush()?;
    let mut answer = String::new();
    std::io::stdin().read_line(&mut answer)?;
    ensure!(answer.trim() == "yes", "not written");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flashing_to_a_file_writes_the_image_and_checks_it() {
        let dir = tempfile::tempdir().unwrap();
        let image = gpt::small_test_disk(dir.path());
        crate::provision::provision(
            &image,
            &crate::provision::StoreConfig {
                store_id: Some("s-1".into()),
                ..Default::default()
            },
        )
        .unwrap();
        let target = dir.path().join("disk");
        let done = flash(&image, &target, true).unwrap();
        assert_eq!(done.bytes, std::fs::metadata(&image).unwrap().len());
        assert_eq!(done.sha256, crate::sha256_file(&image).unwrap());
        assert_eq!(crate::sha256_file(&target).unwrap(), done.sha256);
        let config = crate::provision::read_config(&target).unwrap().unwrap();
        assert!(config.contains("s-1"), "{config}");
    }

    #[test]
    fn refuses_what_is_not_an_image() {
        let dir = tempfile::tempdir().unwrap();
        let junk = dir.path().join("junk.img");
        std::fs::write(&junk, vec![7u8; 8192]).unwrap();
        let err = flash(&junk, &dir.path().join("disk"), true).unwrap_err();
        assert!(format!("{err:#}").contains("not a GPT"), "{err:#}");
        assert!(!dir.path().join("disk").exists(), "nothing written");
    }

    #[test]
    fn refuses_the_disk_this_machine_runs_from() {
        // The block device holding `/`, when there is one visible (not in every container).
        let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap_or_default();
        let Some(root) = mounts
            .lines()
            .filter_map(|l| {
                l.split_whitespace()
                    .collect::<Vec<_>>()
                    .get(0..2)
                    .map(|f| (f[0].to_string(), f[1].to_string()))
            })
            .find(|(src, target)| target == "/" && src.starts_with("/dev/"))
            .map(|(src, _)| src)
        else {
            return;
        };
        let dir = tempfile::tempdir().unwrap();
        let image = gpt::small_test_disk(dir.path());
        let Ok(real) = std::fs::canonicalize(&root) else {
            return; // e.g. /dev/root, a name without a device node
        };
        let name = real.file_name().unwrap().to_string_lossy().into_owned();
        // Its whole disk: the parent in sysfs when `/` is on a partition.
        let Ok(sys) = std::fs::canonicalize(format!("/sys/class/block/{name}")) else {
            return;
        };
        let disk = if sys.join("partition").exists() {
            format!(
                "/dev/{}",
                sys.parent().unwrap().file_name().unwrap().to_string_lossy()
            )
        } else {
            format!("/dev/{name}")
        };
        let err = flash(&image, Path::new(&disk), true).unwrap_err();
        assert!(format!("{err:#}").contains("in use"), "{err:#}");
    }
}
