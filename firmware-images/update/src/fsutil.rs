//! Durable file writes shared by the bundle writer and the slot installer: a file is written
//! under a temporary name, fsynced, renamed over its final name, and its directory fsynced,
//! so after a power cut the name holds either the old bytes or the new ones, never a part.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

/// The temporary name a file is written under before its rename (same directory, so the
/// rename never crosses a file system). Hidden, so a reader listing the directory skips it.
pub(crate) fn temporary_path(path: &Path) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    path.with_file_name(format!(".{name}.tmp"))
}

/// Creates (truncating) the temporary file for `path`.
pub(crate) fn create_temporary(path: &Path) -> io::Result<(File, PathBuf)> {
    let temporary = temporary_path(path);
    let file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(&temporary)?;
    Ok((file, temporary))
}

/// fsyncs `file`, renames `temporary` to `path` and fsyncs the directory.
pub(crate) fn commit(file: File, temporary: &Path, path: &Path) -> io::Result<()> {
    file.sync_all()?;
    drop(file);
    std::fs::rename(temporary, path)?;
    sync_parent(path)
}

/// Writes `bytes` to `path` atomically (temporary file, fsync, rename, directory fsync).
pub(crate) fn write_atomically(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let (mut file, temporary) = create_temporary(path)?;
    let written = file.write_all(bytes);
    if let Err(err) = written {
        let _ = std::fs::remove_file(&temporary);
        return Err(err);
    }
    commit(file, &temporary, path)
}

/// fsyncs the directory holding `path`, so a rename or removal in it survives a power cut.
pub(crate) fn sync_parent(path: &Path) -> io::Result<()> {
    match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => sync_dir(dir),
        _ => sync_dir(Path::new(".")),
    }
}

pub(crate) fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}
