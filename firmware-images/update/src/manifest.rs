//! The manifest of an update bundle: what it holds and where it came from.
//!
//! It is the one thing the signature covers (the file's exact bytes), and it names each
//! file's size and sha256, so verifying the signature and then each file's checksum
//! verifies the whole bundle. Unknown fields are refused (a field this version does not
//! understand could be one it ought to enforce), except inside `inputs`, which is free-form
//! provenance for people and is never acted on.

use serde::{Deserialize, Serialize};

/// The manifest format this crate reads and writes.
pub const FORMAT: u32 = 1;
/// The kernel file's name inside a bundle and a slot.
pub const KERNEL_FILE: &str = "vmlinuz";
/// The initramfs file's name inside a bundle and a slot.
pub const INITRD_FILE: &str = "initrd.img";
/// Largest kernel image accepted (a distribution kernel is ~12 MiB).
pub const MAX_KERNEL_BYTES: u64 = 64 * 1024 * 1024;
/// Largest initramfs accepted (ours holds busybox, aisle-edge and its model: tens of MiB);
/// with the kernel it must still fit in a bundle of `MAX_BUNDLE_BYTES`.
pub const MAX_INITRD_BYTES: u64 = 192 * 1024 * 1024;
/// Longest version string, in characters (it is shown in the boot menu entry's title).
pub const MAX_VERSION_CHARS: usize = 64;

/// The CPU architecture a bundle was built for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Arch {
    #[serde(rename = "x86_64")]
    X86_64,
    #[serde(rename = "aarch64")]
    Aarch64,
}

impl Arch {
    pub fn as_str(self) -> &'static str {
        match self {
            Arch::X86_64 => "x86_64",
            Arch::Aarch64 => "aarch64",
        }
    }

    /// The architecture this binary was compiled for, if it is one Aisle images exist for.
    pub fn host() -> Option<Arch> {
        match std::env::consts::ARCH {
            "x86_64" => Some(Arch::X86_64),
            "aarch64" => Some(Arch::Aarch64),
            _ => None,
        }
    }
}

impl std::fmt::Display for Arch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Arch {
    type Err = ManifestError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "x86_64" => Ok(Arch::X86_64),
            "aarch64" => Ok(Arch::Aarch64),
            other => Err(ManifestError::UnknownArch(other.to_owned())),
        }
    }
}

/// One file of the bundle.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileEntry {
    /// `vmlinuz` or `initrd.img`.
    pub name: String,
    pub size_bytes: u64,
    /// Lower-case hex of the file's SHA-256.
    pub sha256: String,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// Always [`FORMAT`].
    pub format: u32,
    /// The image's version, shown in `/healthz` and the boot menu (1 to 64 printable ASCII
    /// characters, no spaces or path separators).
    pub version: String,
    pub arch: Arch,
    pub created_at_ms: u64,
    /// Exactly the kernel and the initramfs, in that order.
    pub files: Vec<FileEntry>,
    /// Provenance from the image build (kernel, busybox and edge versions and checksums):
    /// free-form, for people; never acted on.
    #[serde(default)]
    pub inputs: serde_json::Value,
}

#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    #[error("the manifest is not valid JSON of format {FORMAT}: {0}")]
    Json(String),
    #[error("manifest format {0} is not supported (this appliance reads format {FORMAT})")]
    Format(u32),
    #[error(
        "the version {0:?} is not 1 to {MAX_VERSION_CHARS} printable characters without spaces or path separators"
    )]
    Version(String),
    #[error("unknown architecture {0:?} (x86_64 or aarch64)")]
    UnknownArch(String),
    #[error("the manifest must list exactly {KERNEL_FILE} then {INITRD_FILE}; it lists {0:?}")]
    Files(Vec<String>),
    #[error("{name} is {size_bytes} bytes, more than the {max_bytes} allowed")]
    FileTooLarge {
        name: String,
        size_bytes: u64,
        max_bytes: u64,
    },
    #[error("the sha256 of {0} is not 64 lower-case hex digits")]
    Checksum(String),
}

impl Manifest {
    /// Parses and validates the manifest's bytes.
    pub fn from_json(bytes: &[u8]) -> Result<Manifest, ManifestError> {
        let manifest: Manifest =
            serde_json::from_slice(bytes).map_err(|err| ManifestError::Json(err.to_string()))?;
        manifest.validate()?;
        Ok(manifest)
    }

    /// The bytes that get signed: pretty JSON, so a person can read the bundle's manifest.
    pub fn to_json(&self) -> Vec<u8> {
        let mut bytes = serde_json::to_vec_pretty(self).expect("a manifest serialises");
        bytes.push(b'\n');
        bytes
    }

    pub fn validate(&self) -> Result<(), ManifestError> {
        if self.format != FORMAT {
            return Err(ManifestError::Format(self.format));
        }
        validate_version(&self.version)?;
        let names: Vec<String> = self.files.iter().map(|f| f.name.clone()).collect();
        if names != [KERNEL_FILE, INITRD_FILE] {
            return Err(ManifestError::Files(names));
        }
        for (file, max_bytes) in self.files.iter().zip([MAX_KERNEL_BYTES, MAX_INITRD_BYTES]) {
            if file.size_bytes > max_bytes {
                return Err(ManifestError::FileTooLarge {
                    name: file.name.clone(),
                    size_bytes: file.size_bytes,
                    max_bytes,
                });
            }
            let hex_ok = file.sha256.len() == 64
                && file
                    .sha256
                    .bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
            if !hex_ok {
                return Err(ManifestError::Checksum(file.name.clone()));
            }
        }
        Ok(())
    }

    /// The entry of the file `name` (`vmlinuz` or `initrd.img`).
    pub fn file(&self, name: &str) -> Option<&FileEntry> {
        self.files.iter().find(|f| f.name == name)
    }
}

/// A version goes into a boot entry's title line and names nothing on disk: printable ASCII,
/// no whitespace (a newline would add a line to the entry file), no path separators.
pub fn validate_version(version: &str) -> Result<(), ManifestError> {
    let ok = !version.is_empty()
        && version.len() <= MAX_VERSION_CHARS
        && version
            .bytes()
            .all(|b| b.is_ascii_graphic() && b != b'/' && b != b'\\');
    if ok {
        Ok(())
    } else {
        Err(ManifestError::Version(version.to_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn manifest() -> Manifest {
        Manifest {
            format: FORMAT,
            version: "2026.11.1".into(),
            arch: Arch::X86_64,
            created_at_ms: 1,
            files: vec![
                FileEntry {
                    name: KERNEL_FILE.into(),
                    size_bytes: 10,
                    sha256: "a".repeat(64),
                },
                FileEntry {
                    name: INITRD_FILE.into(),
                    size_bytes: 10,
                    sha256: "b".repeat(64),
                },
            ],
            inputs: serde_json::json!({"kernel": {"version": "6.12"}}),
        }
    }

    #[test]
    fn round_trip() {
        let m = manifest();
        assert_eq!(Manifest::from_json(&m.to_json()).unwrap(), m);
    }

    #[test]
    fn unknown_fields_are_refused_outside_inputs() {
        let mut value = serde_json::to_value(manifest()).unwrap();
        value["inputs"]["anything"] = serde_json::json!(1);
        Manifest::from_json(value.to_string().as_bytes()).unwrap();
        value["extra"] = serde_json::json!(1);
        let err = Manifest::from_json(value.to_string().as_bytes()).unwrap_err();
        assert!(matches!(err, ManifestError::Json(_)), "{err}");
    }

    #[test]
    fn bad_versions_files_and_sizes_are_refused() {
        for version in ["", "a/b", "a b", "x\ny", "..\\x", &"v".repeat(65)] {
            let m = Manifest {
                version: version.into(),
                ..manifest()
            };
            assert!(
                matches!(m.validate(), Err(ManifestError::Version(_))),
                "{version:?}"
            );
        }
        let mut m = manifest();
        m.files.swap(0, 1);
        assert!(matches!(m.validate(), Err(ManifestError::Files(_))));
        let mut m = manifest();
        m.files[1].size_bytes = MAX_INITRD_BYTES + 1;
        assert!(matches!(
            m.validate(),
            Err(ManifestError::FileTooLarge { .. })
        ));
        let mut m = manifest();
        m.files[0].sha256 = "A".repeat(64);
        assert!(matches!(m.validate(), Err(ManifestError::Checksum(_))));
        let m = Manifest {
            format: 2,
            ..manifest()
        };
        assert!(matches!(m.validate(), Err(ManifestError::Format(2))));
        let json = serde_json::to_string(&manifest())
            .unwrap()
            .replace("x86_64", "riscv64");
        assert!(Manifest::from_json(json.as_bytes()).is_err());
    }
}
