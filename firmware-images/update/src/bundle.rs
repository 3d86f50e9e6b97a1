//! The update bundle: one uncompressed tar holding exactly `manifest.json`, `manifest.sig`,
//! `vmlinuz` and `initrd.img`, in that order.
//!
//! Why this shape: the signature covers only the manifest's exact bytes, and the manifest
//! names each file's size and sha256, so one ed25519 verification plus two hashes verify
//! everything, and the signed bytes never have to be re-serialised (no canonical JSON). An
//! uncompressed tar can be checked entry by entry with seeks (no decompressor to trust with
//! hostile input) and its files copied straight out of it.
//!
//! [`open_verified`] checks, in this order, each failure with its own error: the file's total
//! size; the entries' names, types and order; the manifest's size; the signature (by a
//! trusted key: [`BundleError::UnknownKey`] vs [`BundleError::BadSignature`]); the manifest's
//! contents; the architecture; each file's size and sha256. Sizes in tar headers are only
//! used after they were checked against those limits and the file's real length.

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use ed25519_dalek::Signature;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::fsutil;
use crate::key::{PublicKey, SecretKey};
use crate::manifest::{self, Arch, FileEntry, INITRD_FILE, KERNEL_FILE, Manifest, ManifestError};

/// Largest bundle file accepted (kernel + initramfs + tar headers).
pub const MAX_BUNDLE_BYTES: u64 = 256 * 1024 * 1024;
/// Largest `manifest.json` accepted (a real one is ~1 KiB; `inputs` is provenance text).
pub const MAX_MANIFEST_BYTES: u64 = 64 * 1024;
/// Largest `manifest.sig` accepted (a real one is ~180 bytes).
pub const MAX_SIGNATURE_FILE_BYTES: u64 = 1024;
pub const MANIFEST_ENTRY: &str = "manifest.json";
pub const SIGNATURE_ENTRY: &str = "manifest.sig";
/// The entries of a bundle, in their order.
pub const ENTRIES: [&str; 4] = [MANIFEST_ENTRY, SIGNATURE_ENTRY, KERNEL_FILE, INITRD_FILE];

/// Tar's block size: every header is one block, every file is padded to whole blocks.
const TAR_BLOCK_BYTES: u64 = 512;

#[derive(Debug, thiserror::Error)]
pub enum BundleError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("the bundle is {size_bytes} bytes, more than the {max_bytes} allowed")]
    TooLarge { size_bytes: u64, max_bytes: u64 },
    #[error("the bundle is not a readable tar archive: {0}")]
    Tar(String),
    #[error(
        "a bundle holds exactly the files manifest.json, manifest.sig, vmlinuz, initrd.img in that order; this one holds {found:?}"
    )]
    Entries { found: Vec<String> },
    #[error("manifest.json is {size_bytes} bytes, more than the {MAX_MANIFEST_BYTES} allowed")]
    ManifestTooLarge { size_bytes: u64 },
    #[error("manifest.sig is not a signature file: {0}")]
    SignatureFile(String),
    #[error("signed by key {key_id}, which this appliance does not trust")]
    UnknownKey { key_id: String },
    #[error("the signature by key {key_id} does not match the manifest")]
    BadSignature { key_id: String },
    #[error(transparent)]
    Manifest(#[from] ManifestError),
    #[error("the bundle is built for {bundle}, this appliance is {expected}")]
    WrongArch { bundle: Arch, expected: Arch },
    #[error("{name} is {actual} bytes, the manifest says {expected}")]
    SizeMismatch {
        name: String,
        expected: u64,
        actual: u64,
    },
    #[error("the sha256 of {name} does not match the manifest")]
    ChecksumMismatch { name: String },
    /// Downgrade protection: a correctly signed bundle built before the running image is
    /// refused (an old image may carry fixed vulnerabilities). `created_at_ms` is signed.
    #[error(
        "version {version} was built before the running {running_version} (created_at_ms {created_at_ms} < {running_created_at_ms}); older images are not installed"
    )]
    Older {
        version: String,
        created_at_ms: u64,
        running_version: String,
        running_created_at_ms: u64,
    },
}

impl BundleError {
    /// A short stable name of the reason (API messages, metrics labels).
    pub fn reason(&self) -> &'static str {
        match self {
            BundleError::Io { .. } => "io",
            BundleError::TooLarge { .. } => "too_large",
            BundleError::Tar(_) => "not_a_tar",
            BundleError::Entries { .. } => "entries",
            BundleError::ManifestTooLarge { .. } => "manifest_too_large",
            BundleError::SignatureFile(_) => "signature_file",
            BundleError::UnknownKey { .. } => "unknown_key",
            BundleError::BadSignature { .. } => "bad_signature",
            BundleError::Manifest(_) => "manifest",
            BundleError::WrongArch { .. } => "arch",
            BundleError::SizeMismatch { .. } => "size",
            BundleError::ChecksumMismatch { .. } => "checksum",
            BundleError::Older { .. } => "downgrade",
        }
    }

    /// True when the bundle itself is refused (as opposed to a local I/O failure).
    pub fn is_rejection(&self) -> bool {
        !matches!(self, BundleError::Io { .. })
    }
}

/// `manifest.sig`: which key signed, and the ed25519 signature over manifest.json's bytes.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct SignatureFile {
    key_id: String,
    /// 128 hex digits.
    signature: String,
}

/// Where a file's bytes are inside the bundle.
#[derive(Clone, Copy, Debug)]
struct Span {
    offset: u64,
    size: u64,
}

/// A bundle whose signature, manifest and checksums were verified. Copying its files out
/// ([`VerifiedBundle::copy_file`]) hashes them again, so a bundle file changed after the
/// verification is still caught.
#[derive(Debug)]
pub struct VerifiedBundle {
    path: PathBuf,
    manifest: Manifest,
    manifest_bytes: Vec<u8>,
    key_id: String,
    kernel: Span,
    initrd: Span,
}

impl VerifiedBundle {
    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    /// The signed bytes of manifest.json, exactly as in the bundle.
    pub fn manifest_bytes(&self) -> &[u8] {
        &self.manifest_bytes
    }

    /// The id of the trusted key that signed it.
    pub fn key_id(&self) -> &str {
        &self.key_id
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Copies the file `name` (`vmlinuz` or `initrd.img`) to `out`, checking its sha256 again.
    pub fn copy_file(&self, name: &str, out: &mut impl Write) -> Result<(), BundleError> {
        let (span, entry) = match name {
            KERNEL_FILE => (self.kernel, self.manifest.files[0].clone()),
            INITRD_FILE => (self.initrd, self.manifest.files[1].clone()),
            other => {
                return Err(BundleError::Entries {
                    found: vec![other.to_owned()],
                });
            }
        };
        let io = |source| BundleError::Io {
            path: self.path.clone(),
            source,
        };
        let mut file = File::open(&self.path).map_err(io)?;
        file.seek(SeekFrom::Start(span.offset)).map_err(io)?;
        let mut reader = HashingReader::new(file.take(span.size));
        let copied = io::copy(&mut reader, out).map_err(io)?;
        check_file(&entry, copied, &reader.finish())
    }
}

/// Reads and verifies the bundle at `path` against the `trusted` keys, for an appliance of
/// architecture `expected_arch`.
pub fn open_verified(
    path: &Path,
    trusted: &[PublicKey],
    expected_arch: Arch,
) -> Result<VerifiedBundle, BundleError> {
    let io = |source| BundleError::Io {
        path: path.to_owned(),
        source,
    };
    let (mut file, total) = open_bounded(path)?;

    let spans = list_entries(&mut file, total)?;
    let [manifest_span, signature_span, kernel, initrd] = spans;
    if manifest_span.size > MAX_MANIFEST_BYTES {
        return Err(BundleError::ManifestTooLarge {
            size_bytes: manifest_span.size,
        });
    }
    if signature_span.size > MAX_SIGNATURE_FILE_BYTES {
        return Err(BundleError::SignatureFile(format!(
            "{} bytes, more than the {MAX_SIGNATURE_FILE_BYTES} allowed",
            signature_span.size
        )));
    }
    let manifest_bytes = read_span(&mut file, manifest_span).map_err(io)?;
    let signature_bytes = read_span(&mut file, signature_span).map_err(io)?;

    let key_id = verify_signature(&manifest_bytes, &signature_bytes, trusted)?;
    let manifest = Manifest::from_json(&manifest_bytes)?;
    if manifest.arch != expected_arch {
        return Err(BundleError::WrongArch {
            bundle: manifest.arch,
            expected: expected_arch,
        });
    }
    for (span, entry) in [kernel, initrd].into_iter().zip(&manifest.files) {
        if span.size != entry.size_bytes {
            return Err(BundleError::SizeMismatch {
                name: entry.name.clone(),
                expected: entry.size_bytes,
                actual: span.size,
            });
        }
        file.seek(SeekFrom::Start(span.offset)).map_err(io)?;
        let mut reader = HashingReader::new((&mut file).take(span.size));
        let read = io::copy(&mut reader, &mut io::sink()).map_err(io)?;
        check_file(entry, read, &reader.finish())?;
    }
    Ok(VerifiedBundle {
        path: path.to_owned(),
        manifest,
        manifest_bytes,
        key_id,
        kernel,
        initrd,
    })
}

/// The manifest of the bundle at `path`, **not verified**: its layout and manifest are
/// checked, not its signature nor its files. For a hub that only offers bundles (it names the
/// version it serves); whoever installs one uses [`open_verified`].
pub fn read_manifest(path: &Path) -> Result<Manifest, BundleError> {
    let io = |source| BundleError::Io {
        path: path.to_owned(),
        source,
    };
    let (mut file, total) = open_bounded(path)?;
    let [manifest_span, ..] = list_entries(&mut file, total)?;
    if manifest_span.size > MAX_MANIFEST_BYTES {
        return Err(BundleError::ManifestTooLarge {
            size_bytes: manifest_span.size,
        });
    }
    let bytes = read_span(&mut file, manifest_span).map_err(io)?;
    Ok(Manifest::from_json(&bytes)?)
}

/// The four entries' positions, after checking their names, types and order, and that each
/// lies inside the file.
fn list_entries(file: &mut File, total: u64) -> Result<[Span; 4], BundleError> {
    let tar_error = |err: io::Error| BundleError::Tar(err.to_string());
    let mut archive = tar::Archive::new(&mut *file);
    let mut found = Vec::new();
    let mut spans = Vec::new();
    let mut regular = true;
    // One more than expected is enough to tell an extra entry; never walk a hostile list.
    for entry in archive
        .entries_with_seek()
        .map_err(tar_error)?
        .take(ENTRIES.len() + 1)
    {
        let entry = entry.map_err(tar_error)?;
        found.push(String::from_utf8_lossy(&entry.path_bytes()).into_owned());
        regular &= entry.header().entry_type().is_file();
        let span = Span {
            offset: entry.raw_file_position(),
            size: entry.size(),
        };
        if span
            .offset
            .checked_add(span.size)
            .is_none_or(|end| end > total)
        {
            return Err(BundleError::Tar(format!(
                "{} runs past the end of the file",
                found.last().map(String::as_str).unwrap_or("an entry")
            )));
        }
        spans.push(span);
    }
    if found != ENTRIES || !regular {
        return Err(BundleError::Entries { found });
    }
    Ok([spans[0], spans[1], spans[2], spans[3]])
}

fn read_span(file: &mut File, span: Span) -> io::Result<Vec<u8>> {
    // The caller checked `span.size` against a small limit.
    let mut bytes = vec![0; span.size as usize];
    file.seek(SeekFrom::Start(span.offset))?;
    file.read_exact(&mut bytes)?;
    Ok(bytes)
}

/// The signing key's id when the signature is a trusted key's over `manifest`.
fn verify_signature(
    manifest: &[u8],
    signature_file: &[u8],
    trusted: &[PublicKey],
) -> Result<String, BundleError> {
    let parsed: SignatureFile = serde_json::from_slice(signature_file)
        .map_err(|err| BundleError::SignatureFile(err.to_string()))?;
    let mut bytes = [0u8; 64];
    hex::decode_to_slice(&parsed.signature, &mut bytes)
        .map_err(|_| BundleError::SignatureFile("the signature is not 128 hex digits".into()))?;
    let signature = Signature::from_bytes(&bytes);
    let Some(key) = trusted.iter().find(|k| k.key_id() == parsed.key_id) else {
        return Err(BundleError::UnknownKey {
            key_id: printable(&parsed.key_id),
        });
    };
    if !key.verify(manifest, &signature) {
        return Err(BundleError::BadSignature {
            key_id: parsed.key_id,
        });
    }
    Ok(parsed.key_id)
}

/// A key id from an untrusted file, safe to put in a log line or an error message.
fn printable(text: &str) -> String {
    text.chars()
        .take(64)
        .map(|c| if c.is_ascii_graphic() { c } else { '?' })
        .collect()
}

fn check_file(entry: &FileEntry, size: u64, sha256: &str) -> Result<(), BundleError> {
    if size != entry.size_bytes {
        return Err(BundleError::SizeMismatch {
            name: entry.name.clone(),
            expected: entry.size_bytes,
            actual: size,
        });
    }
    if sha256 != entry.sha256 {
        return Err(BundleError::ChecksumMismatch {
            name: entry.name.clone(),
        });
    }
    Ok(())
}

/// Hashes what passes through it.
struct HashingReader<R> {
    inner: R,
    hash: Sha256,
}

impl<R: Read> HashingReader<R> {
    fn new(inner: R) -> Self {
        Self {
            inner,
            hash: Sha256::new(),
        }
    }

    fn finish(self) -> String {
        hex::encode(self.hash.finalize())
    }
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hash.update(&buf[..n]);
        Ok(n)
    }
}

/// Size and sha256 of the file at `path`, refused past `max_bytes`.
fn describe(path: &Path, name: &str, max_bytes: u64) -> Result<FileEntry, BundleError> {
    let io = |source| BundleError::Io {
        path: path.to_owned(),
        source,
    };
    let file = File::open(path).map_err(io)?;
    let size = file.metadata().map_err(io)?.len();
    if size > max_bytes {
        return Err(ManifestError::FileTooLarge {
            name: name.to_owned(),
            size_bytes: size,
            max_bytes,
        }
        .into());
    }
    let mut reader = HashingReader::new(file.take(max_bytes));
    let size_bytes = io::copy(&mut reader, &mut io::sink()).map_err(io)?;
    Ok(FileEntry {
        name: name.to_owned(),
        size_bytes,
        sha256: reader.finish(),
    })
}

/// Bytes a tar entry of `size` bytes takes (header block + data padded to whole blocks).
fn tar_entry_bytes(size: u64) -> u64 {
    TAR_BLOCK_BYTES + size.div_ceil(TAR_BLOCK_BYTES) * TAR_BLOCK_BYTES
}

/// The manifest of a kernel and an initramfs (sizes and sha256 read from the files), as a
/// bundle carries it and as an image's slot keeps it (`aisle/<slot>/manifest.json`).
pub fn describe_files(
    version: &str,
    arch: Arch,
    kernel: &Path,
    initrd: &Path,
    inputs: serde_json::Value,
) -> Result<Manifest, BundleError> {
    manifest::validate_version(version)?;
    let files = vec![
        describe(kernel, KERNEL_FILE, manifest::MAX_KERNEL_BYTES)?,
        describe(initrd, INITRD_FILE, manifest::MAX_INITRD_BYTES)?,
    ];
    let created_at_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0);
    let manifest = Manifest {
        format: manifest::FORMAT,
        version: version.to_owned(),
        arch,
        created_at_ms,
        files,
        inputs,
    };
    manifest.validate()?;
    Ok(manifest)
}

/// Opens a bundle file, refusing one over [`MAX_BUNDLE_BYTES`] before reading any of it.
fn open_bounded(path: &Path) -> Result<(File, u64), BundleError> {
    let io = |source| BundleError::Io {
        path: path.to_owned(),
        source,
    };
    let file = File::open(path).map_err(io)?;
    let total = file.metadata().map_err(io)?.len();
    if total > MAX_BUNDLE_BYTES {
        return Err(BundleError::TooLarge {
            size_bytes: total,
            max_bytes: MAX_BUNDLE_BYTES,
        });
    }
    Ok((file, total))
}

/// Builds, signs and writes a bundle to `out` (temporary file, fsync, rename): the kernel
/// and initramfs are hashed, the manifest is made from them and `inputs`, and signed with
/// `key`. Returns the manifest written.
pub fn write_bundle(
    out: &Path,
    manifest_version: &str,
    arch: Arch,
    kernel: &Path,
    initrd: &Path,
    inputs: serde_json::Value,
    key: &SecretKey,
) -> Result<Manifest, BundleError> {
    let manifest = describe_files(manifest_version, arch, kernel, initrd, inputs)?;
    manifest.validate()?;
    let manifest_bytes = manifest.to_json();
    if manifest_bytes.len() as u64 > MAX_MANIFEST_BYTES {
        return Err(BundleError::ManifestTooLarge {
            size_bytes: manifest_bytes.len() as u64,
        });
    }
    let signature = SignatureFile {
        key_id: key.public().key_id().to_owned(),
        signature: hex::encode(key.sign(&manifest_bytes).to_bytes()),
    };
    let signature_bytes = serde_json::to_vec(&signature).expect("a signature serialises");

    let total = tar_entry_bytes(manifest_bytes.len() as u64)
        + tar_entry_bytes(signature_bytes.len() as u64)
        + tar_entry_bytes(manifest.files[0].size_bytes)
        + tar_entry_bytes(manifest.files[1].size_bytes)
        + 2 * TAR_BLOCK_BYTES;
    if total > MAX_BUNDLE_BYTES {
        return Err(BundleError::TooLarge {
            size_bytes: total,
            max_bytes: MAX_BUNDLE_BYTES,
        });
    }

    let out_io = |source| BundleError::Io {
        path: out.to_owned(),
        source,
    };
    let (file, temporary) = fsutil::create_temporary(out).map_err(out_io)?;
    let written = (|| {
        let mut builder = tar::Builder::new(file);
        let mtime = manifest.created_at_ms / 1000;
        let mut append = |name: &str, size: u64, data: &mut dyn Read| {
            let mut header = tar::Header::new_ustar();
            header.set_entry_type(tar::EntryType::Regular);
            header.set_mode(0o644);
            header.set_mtime(mtime);
            header.set_size(size);
            builder.append_data(&mut header, name, data).map_err(out_io)
        };
        append(
            MANIFEST_ENTRY,
            manifest_bytes.len() as u64,
            &mut &manifest_bytes[..],
        )?;
        append(
            SIGNATURE_ENTRY,
            signature_bytes.len() as u64,
            &mut &signature_bytes[..],
        )?;
        for (path, entry) in [kernel, initrd].into_iter().zip(&manifest.files) {
            let input_io = |source| BundleError::Io {
                path: path.to_owned(),
                source,
            };
            let mut reader =
                HashingReader::new(File::open(path).map_err(input_io)?.take(entry.size_bytes));
            append(&entry.name, entry.size_bytes, &mut reader)?;
            // The file changed between hashing and copying: the manifest would lie.
            if reader.finish() != entry.sha256 {
                return Err(BundleError::ChecksumMismatch {
                    name: entry.name.clone(),
                });
            }
        }
        let file = builder.into_inner().map_err(out_io)?;
        fsutil::commit(file, &temporary, out).map_err(out_io)
    })();
    if written.is_err() {
        let _ = std::fs::remove_file(&temporary);
    }
    written?;
    Ok(manifest)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::key::generate;

    /// A signed bundle in a temporary directory, and the key that signed it.
    pub(crate) struct Fixture {
        pub dir: tempfile::TempDir,
        pub bundle: PathBuf,
        pub key: SecretKey,
        pub public: PublicKey,
    }

    pub(crate) fn fixture(version: &str) -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("vmlinuz"), b"kernel bytes").unwrap();
        std::fs::write(dir.path().join("initrd.img"), vec![7u8; 5000]).unwrap();
        let (key, public) = generate();
        let bundle = dir.path().join("update.aisle");
        write_bundle(
            &bundle,
            version,
            Arch::X86_64,
            &dir.path().join("vmlinuz"),
            &dir.path().join("initrd.img"),
            serde_json::json!({"edge": {"version": "0.1.0"}}),
            &key,
        )
        .unwrap();
        Fixture {
            dir,
            bundle,
            key,
            public,
        }
    }

    /// The bundle's entries, as (name, bytes).
    fn entries(path: &Path) -> Vec<(String, Vec<u8>)> {
        let mut archive = tar::Archive::new(File::open(path).unwrap());
        archive
            .entries()
            .unwrap()
            .map(|e| {
                let mut e = e.unwrap();
                let name = String::from_utf8(e.path_bytes().into_owned()).unwrap();
                let mut bytes = Vec::new();
                e.read_to_end(&mut bytes).unwrap();
                (name, bytes)
            })
            .collect()
    }

    fn write_entries(path: &Path, entries: &[(String, Vec<u8>)]) {
        let mut builder = tar::Builder::new(File::create(path).unwrap());
        for (name, bytes) in entries {
            let mut header = tar::Header::new_ustar();
            header.set_size(bytes.len() as u64);
            header.set_mode(0o644);
            builder.append_data(&mut header, name, &bytes[..]).unwrap();
        }
        builder.finish().unwrap();
    }

    /// Rewrites the fixture's bundle through `change` and opens it.
    fn tampered(
        f: &Fixture,
        change: impl FnOnce(&mut Vec<(String, Vec<u8>)>),
    ) -> Result<VerifiedBundle, BundleError> {
        let mut list = entries(&f.bundle);
        change(&mut list);
        let path = f.dir.path().join("tampered.aisle");
        write_entries(&path, &list);
        open_verified(&path, std::slice::from_ref(&f.public), Arch::X86_64)
    }

    #[test]
    fn sign_then_verify() {
        let f = fixture("2026.11.1");
        let bundle =
            open_verified(&f.bundle, &[generate().1, f.public.clone()], Arch::X86_64).unwrap();
        assert_eq!(bundle.manifest().version, "2026.11.1");
        assert_eq!(bundle.key_id(), f.public.key_id());
        assert_eq!(bundle.manifest().inputs["edge"]["version"], "0.1.0");
        let mut kernel = Vec::new();
        bundle.copy_file(KERNEL_FILE, &mut kernel).unwrap();
        assert_eq!(kernel, b"kernel bytes");
        assert_eq!(&read_manifest(&f.bundle).unwrap(), bundle.manifest());
        let names: Vec<String> = entries(&f.bundle).into_iter().map(|e| e.0).collect();
        assert_eq!(names, ENTRIES);
    }

    #[test]
    fn each_fault_has_its_own_error() {
        let f = fixture("1.0");
        let other = generate().1;
        let err = open_verified(&f.bundle, &[other], Arch::X86_64).unwrap_err();
        assert!(matches!(err, BundleError::UnknownKey { .. }), "{err}");

        let err =
            open_verified(&f.bundle, std::slice::from_ref(&f.public), Arch::Aarch64).unwrap_err();
        assert!(matches!(err, BundleError::WrongArch { .. }), "{err}");

        let err = tampered(&f, |e| {
            let mut sig: serde_json::Value = serde_json::from_slice(&e[1].1).unwrap();
            let hex = sig["signature"].as_str().unwrap().to_owned();
            let flipped = if hex.starts_with('0') { "1" } else { "0" };
            sig["signature"] = format!("{flipped}{}", &hex[1..]).into();
            e[1].1 = serde_json::to_vec(&sig).unwrap();
        })
        .unwrap_err();
        assert!(matches!(err, BundleError::BadSignature { .. }), "{err}");

        let err = tampered(&f, |e| {
            let text = String::from_utf8(e[0].1.clone()).unwrap();
            e[0].1 = text.replace("\"1.0\"", "\"1.1\"").into_bytes();
        })
        .unwrap_err();
        assert!(matches!(err, BundleError::BadSignature { .. }), "{err}");

        let err = tampered(&f, |e| e[2].1[0] ^= 1).unwrap_err();
        assert!(
            matches!(err, BundleError::ChecksumMismatch { ref name } if name == KERNEL_FILE),
            "{err}"
        );
        let err = tampered(&f, |e| e[3].1.push(0)).unwrap_err();
        assert!(matches!(err, BundleError::SizeMismatch { .. }), "{err}");

        let err = tampered(&f, |e| e.push(("extra".into(), vec![1]))).unwrap_err();
        assert!(matches!(err, BundleError::Entries { .. }), "{err}");
        let err = tampered(&f, |e| {
            e.pop();
        })
        .unwrap_err();
        assert!(matches!(err, BundleError::Entries { .. }), "{err}");
        let err = tampered(&f, |e| e.swap(2, 3)).unwrap_err();
        assert!(matches!(err, BundleError::Entries { .. }), "{err}");

        let err =
            tampered(&f, |e| e[0].1 = vec![b' '; MAX_MANIFEST_BYTES as usize + 1]).unwrap_err();
        assert!(matches!(err, BundleError::ManifestTooLarge { .. }), "{err}");

        let err = tampered(&f, |e| e[1].1 = b"not json".to_vec()).unwrap_err();
        assert!(matches!(err, BundleError::SignatureFile(_)), "{err}");

        std::fs::write(f.dir.path().join("junk.aisle"), vec![0xAB; 4096]).unwrap();
        let err = open_verified(
            &f.dir.path().join("junk.aisle"),
            std::slice::from_ref(&f.public),
            Arch::X86_64,
        )
        .unwrap_err();
        assert!(err.is_rejection(), "{err}");
    }

    #[test]
    fn an_oversize_bundle_is_refused_before_reading() {
        let f = fixture("1.0");
        let big = f.dir.path().join("big.aisle");
        std::fs::copy(&f.bundle, &big).unwrap();
        // Sparse: no 256 MiB written to the test disk.
        File::options()
            .write(true)
            .open(&big)
            .unwrap()
            .set_len(MAX_BUNDLE_BYTES + 1)
            .unwrap();
        let err = open_verified(&big, std::slice::from_ref(&f.public), Arch::X86_64).unwrap_err();
        assert!(matches!(err, BundleError::TooLarge { .. }), "{err}");
    }

    #[test]
    fn a_signed_manifest_that_is_invalid_is_refused_as_such() {
        let f = fixture("1.0");
        let err = tampered(&f, |e| {
            let text = String::from_utf8(e[0].1.clone()).unwrap();
            e[0].1 = text.replace("\"1.0\"", "\"1/0\"").into_bytes();
            let signature = SignatureFile {
                key_id: f.public.key_id().to_owned(),
                signature: hex::encode(f.key.sign(&e[0].1).to_bytes()),
            };
            e[1].1 = serde_json::to_vec(&signature).unwrap();
        })
        .unwrap_err();
        assert!(
            matches!(err, BundleError::Manifest(ManifestError::Version(_))),
            "{err}"
        );
    }
}
