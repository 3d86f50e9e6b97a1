//! The disk layout: a GPT with the EFI system partition (boot loader and the A/B slots), the
//! provisioning partition (the store's config, FAT so it is editable from any OS) and the data
//! partition (ext4, the SQLite files). Written by `sfdisk` on a plain file; read back here
//! (provision, flash) so those commands need no tool beyond this binary.

use std::io::{Read, Seek, SeekFrom};

use anyhow::{Context, bail, ensure};

/// GPT names of the partitions: the init finds them by these, on whatever disk the box has.
pub const ESP: &str = "aisle-esp";
pub const PROVISION: &str = "aisle-provision";
pub const DATA: &str = "aisle-data";

pub const SECTOR_BYTES: u64 = 512;
/// Partitions start on 1 MiB boundaries.
pub const ALIGN_BYTES: u64 = 1 << 20;

/// One partition of an image, in bytes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Partition {
    pub name: String,
    pub offset_bytes: u64,
    pub size_bytes: u64,
}

/// The `sfdisk` script of the layout for partitions of the given sizes (MiB), in order ESP,
/// provision, data.
pub fn sfdisk_script(esp_mib: u64, provision_mib: u64, data_mib: u64) -> String {
    let sectors = |mib: u64| mib * (1 << 20) / SECTOR_BYTES;
    let first = ALIGN_BYTES / SECTOR_BYTES;
    format!(
        "label: gpt\nunit: sectors\nfirst-lba: {first}\n\
         start={first}, size={}, type=C12A7328-F81F-11D2-BA4B-00A0C93EC93B, name=\"{ESP}\"\n\
         start={}, size={}, type=EBD0A0A2-B9E5-4433-87C0-68B6B72699C7, name=\"{PROVISION}\"\n\
         start={}, size={}, type=0FC63DAF-8483-4772-8E79-3D69D8477DE4, name=\"{DATA}\"\n",
        sectors(esp_mib),
        first + sectors(esp_mib),
        sectors(provision_mib),
        first + sectors(esp_mib) + sectors(provision_mib),
        sectors(data_mib),
    )
}

/// The partitions of a GPT disk image (512-byte sectors).
pub fn read(disk: &mut (impl Read + Seek)) -> anyhow::Result<Vec<Partition>> {
    let mut header = [0u8; 92];
    disk.seek(SeekFrom::Start(SECTOR_BYTES))?;
    disk.read_exact(&mut header)
        .context("the file is too short to be a disk image")?;
    if &header[..8] != b"EFI PART" {
        bail!("not a GPT disk image (no \"EFI PART\" header at sector 1)");
    }
    let u32_at = |at: usize| u32::from_le_bytes(header[at..at + 4].try_into().expect("4 bytes"));
    let u64_at = |at: usize| u64::from_le_bytes(header[at..at + 8].try_into().expect("8 bytes"));
    let entries_lba = u64_at(72);
    let count = u32_at(80);
    let entry_bytes = u32_at(84) as usize;
    ensure!(
        (1..=1024).contains(&count) && (128..=1024).contains(&entry_bytes),
        "implausible GPT: {count} entries of {entry_bytes} bytes"
    );
    let mut table = vec![0u8; count as usize * entry_bytes];
    disk.seek(SeekFrom::Start(entries_lba * SECTOR_BYTES))?;
    disk.read_exact(&mut table)
        .context("the GPT's partition table is cut off")?;
    let mut out = Vec::new();
    for entry in table.chunks_exact(entry_bytes) {
        if entry[..16].iter().all(|&b| b == 0) {
            continue;
        }
        let first = u64::from_le_bytes(entry[32..40].try_into().expect("8 bytes"));
        let last = u64::from_le_bytes(entry[40..48].try_into().expect("8 bytes"));
        ensure!(last >= first, "a GPT entry ends before it starts");
        let units: Vec<u16> = entry[56..128]
            .chunks_exact(2)
            .map(|c| u16::from_le_bytes([c[0], c[1]]))
            .take_while(|&u| u != 0)
            .collect();
        out.push(Partition {
            name: String::from_utf16_lossy(&units),
            offset_bytes: first * SECTOR_BYTES,
            size_bytes: (last - first + 1) * SECTOR_BYTES,
        });
    }
    Ok(out)
}

/// The partition called `name`, or an error saying this is not an Aisle image.
pub fn find(disk: &mut (impl Read + Seek), name: &str) -> anyhow::Result<Partition> {
    read(disk)?
        .into_iter()
        .find(|p| p.name == name)
        .with_context(|| {
            format!("the image has no partition {name:?}: not an Aisle appliance image")
        })
}

#[cfg(test)]
/// A small disk laid out like an image (GPT by sfdisk, FAT by mkfs.vfat), as the field
/// engineer's image or flashed disk would be.
pub(crate) fn small_test_disk(dir: &std::path::Path) -> std::path::PathBuf {
    use std::io::{Seek, SeekFrom, Write};
    use std::process::{Command, Stdio};
    let disk = dir.join("disk.img");
    std::fs::File::create(&disk)
        .unwrap()
        .set_len(2 * ALIGN_BYTES + ((4 + 16 + 4) << 20))
        .unwrap();
    let mut sfdisk = Command::new("sfdisk")
        .args(["--quiet", "--no-reread", "--no-tell-kernel"])
        .arg(&disk)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .expect("sfdisk (firmware-images/toolchain/setup installs it)");
    sfdisk
        .stdin
        .take()
        .unwrap()
        .write_all(sfdisk_script(4, 16, 4).as_bytes())
        .unwrap();
    assert!(sfdisk.wait().unwrap().success());
    let fat = dir.join("prov.img");
    assert!(
        Command::new("mkfs.vfat")
            .arg("-C")
            .arg(&fat)
            .arg("16384")
            .stdout(Stdio::null())
            .status()
            .expect("mkfs.vfat")
            .success()
    );
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&disk)
        .unwrap();
    let part = find(&mut file, PROVISION).unwrap();
    assert_eq!(part.size_bytes, 16 << 20);
    file.seek(SeekFrom::Start(part.offset_bytes)).unwrap();
    file.write_all(&std::fs::read(&fat).unwrap()).unwrap();
    disk
}
