//! `aisle-image`: the field engineers' tool. Builds the appliance's flashable disk image for
//! x86_64 or ARM64 (`image`), writes a store's configuration into it (`provision`), writes it
//! to a disk and checks it (`flash`), asks a booted box who it is (`verify`), boots an image
//! under QEMU (`qemu`), and makes and signs update bundles (with `aisle-update`).
//!
//! ARCHITECTURE.md ("Firmware images") has the disk layout and the boot and update flow;
//! docs/field-guide.md the commands in the order a field engineer uses them.

pub mod arch;
pub mod cpio;
pub mod flash;
pub mod gpt;
pub mod image;
pub mod inputs;
pub mod modules;
pub mod provision;
pub mod qemu;
pub mod sign;
pub mod verify;

use std::io::Read;
use std::path::Path;

use sha2::{Digest, Sha256};

/// Hex sha256 of a file, read in blocks.
pub fn sha256_file(path: &Path) -> anyhow::Result<String> {
    let mut file = std::fs::File::open(path)?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hex::encode(hasher.finalize()))
}

/// Reads until `buf` is full or the file ends; the bytes read.
pub fn read_full(from: &mut impl Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match from.read(&mut buf[filled..])? {
            0 => break,
            n => filled += n,
        }
    }
    Ok(filled)
}

pub fn sha256_bytes(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// A progress bar counting bytes (hidden when stderr is not a terminal, e.g. in CI logs).
pub fn bytes_bar(total: u64, what: &'static str) -> indicatif::ProgressBar {
    let bar = indicatif::ProgressBar::new(total);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{msg:>10} [{bar:40}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
        )
        .expect("a valid template")
        .progress_chars("=> "),
    );
    bar.set_message(what);
    bar
}
