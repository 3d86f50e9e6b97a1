//! Update signing keys: ed25519, one line per file.
//!
//! The secret key stays with whoever signs releases (`aisle-image keygen` / `sign`); the
//! public key is built into the appliance's initramfs (`/etc/aisle/update-keys/*.pub`), so
//! trusting a new key takes an image signed by an old one. A key is named by its id (the
//! first 16 hex digits of the SHA-256 of the public key's 32 bytes), which the signature file
//! carries so the appliance can say *which* key signed a bundle it refuses.
//!
//! Formats (one line, a trailing newline optional):
//! - secret: `aisle-update-secret-key-v1 <64 hex digits>`
//! - public: `aisle-update-public-key-v1 <64 hex digits>`

use std::path::{Path, PathBuf};

use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use sha2::{Digest, Sha256};

pub const SECRET_KEY_PREFIX: &str = "aisle-update-secret-key-v1";
pub const PUBLIC_KEY_PREFIX: &str = "aisle-update-public-key-v1";
/// Largest key file read (a key line is ~92 bytes): a wrong path never reads a disk image.
pub const MAX_KEY_FILE_BYTES: u64 = 1024;
/// Hex digits of a key id.
pub const KEY_ID_HEX_CHARS: usize = 16;

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: not an {expected} file ({reason})")]
    Format {
        path: PathBuf,
        expected: &'static str,
        reason: String,
    },
    #[error("no trusted update keys (*.pub) in {0}")]
    NoKeys(PathBuf),
}

/// A signing key. Its `Debug` never shows the secret.
#[derive(Clone)]
pub struct SecretKey(SigningKey);

/// A verifying key with its id.
#[derive(Clone, PartialEq, Eq)]
pub struct PublicKey {
    key: VerifyingKey,
    id: String,
}

impl std::fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SecretKey({})", self.public().key_id())
    }
}

impl std::fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PublicKey({})", self.id)
    }
}

/// A new key pair from the operating system's random source.
pub fn generate() -> (SecretKey, PublicKey) {
    let secret = SecretKey(SigningKey::from_bytes(&rand::random::<[u8; 32]>()));
    let public = secret.public();
    (secret, public)
}

impl SecretKey {
    pub fn public(&self) -> PublicKey {
        PublicKey::new(self.0.verifying_key())
    }

    pub(crate) fn sign(&self, message: &[u8]) -> Signature {
        self.0.sign(message)
    }

    /// The key file's line (with a newline).
    pub fn to_line(&self) -> String {
        format!("{SECRET_KEY_PREFIX} {}\n", hex::encode(self.0.to_bytes()))
    }

    pub fn from_line(line: &str) -> Result<SecretKey, String> {
        Ok(SecretKey(SigningKey::from_bytes(&parse_line(
            line,
            SECRET_KEY_PREFIX,
        )?)))
    }
}

impl PublicKey {
    fn new(key: VerifyingKey) -> PublicKey {
        let digest = Sha256::digest(key.as_bytes());
        let mut id = hex::encode(digest);
        id.truncate(KEY_ID_HEX_CHARS);
        PublicKey { key, id }
    }

    /// First 16 hex digits of the SHA-256 of the key's 32 bytes.
    pub fn key_id(&self) -> &str {
        &self.id
    }

    /// Strict ed25519 verification (no malleable or small-order signatures).
    pub(crate) fn verify(&self, message: &[u8], signature: &Signature) -> bool {
        self.key.verify_strict(message, signature).is_ok()
    }

    pub fn to_line(&self) -> String {
        format!("{PUBLIC_KEY_PREFIX} {}\n", hex::encode(self.key.as_bytes()))
    }

    pub fn from_line(line: &str) -> Result<PublicKey, String> {
        let bytes = parse_line(line, PUBLIC_KEY_PREFIX)?;
        let key = VerifyingKey::from_bytes(&bytes)
            .map_err(|_| "the 32 bytes are not an ed25519 point".to_owned())?;
        Ok(PublicKey::new(key))
    }
}

fn parse_line(text: &str, prefix: &str) -> Result<[u8; 32], String> {
    let text = text.strip_suffix('\n').unwrap_or(text);
    let text = text.strip_suffix('\r').unwrap_or(text);
    if text.contains('\n') {
        return Err("more than one line".into());
    }
    let Some((found, hex_key)) = text.split_once(' ') else {
        return Err(format!("expected \"{prefix} <64 hex digits>\""));
    };
    if found != prefix {
        return Err(format!("starts with {found:?}, expected {prefix:?}"));
    }
    let mut bytes = [0u8; 32];
    hex::decode_to_slice(hex_key, &mut bytes)
        .map_err(|_| "the key is not 64 hex digits".to_owned())?;
    Ok(bytes)
}

fn read_small(path: &Path) -> Result<String, KeyError> {
    use std::io::Read;
    let io = |source| KeyError::Io {
        path: path.to_owned(),
        source,
    };
    let mut text = String::new();
    std::fs::File::open(path)
        .map_err(io)?
        .take(MAX_KEY_FILE_BYTES)
        .read_to_string(&mut text)
        .map_err(io)?;
    Ok(text)
}

pub fn read_secret_key(path: &Path) -> Result<SecretKey, KeyError> {
    SecretKey::from_line(&read_small(path)?).map_err(|reason| KeyError::Format {
        path: path.to_owned(),
        expected: SECRET_KEY_PREFIX,
        reason,
    })
}

pub fn read_public_key(path: &Path) -> Result<PublicKey, KeyError> {
    PublicKey::from_line(&read_small(path)?).map_err(|reason| KeyError::Format {
        path: path.to_owned(),
        expected: PUBLIC_KEY_PREFIX,
        reason,
    })
}

/// Writes the secret key readable by its owner only; refuses to overwrite an existing file
/// (losing a release key to a typo is worse than an error).
pub fn write_secret_key(path: &Path, key: &SecretKey) -> Result<(), KeyError> {
    use std::io::Write;
    let io = |source| KeyError::Io {
        path: path.to_owned(),
        source,
    };
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options.open(path).map_err(io)?;
    file.write_all(key.to_line().as_bytes()).map_err(io)?;
    file.sync_all().map_err(io)
}

/// Writes the public key (atomically; overwriting is fine, it is derived from the secret).
pub fn write_public_key(path: &Path, key: &PublicKey) -> Result<(), KeyError> {
    crate::fsutil::write_atomically(path, key.to_line().as_bytes()).map_err(|source| KeyError::Io {
        path: path.to_owned(),
        source,
    })
}

/// Every `*.pub` key in `dir`, sorted by file name. A file that is not a public key is an
/// error naming it (a half-copied key must not silently shrink the trusted set); a directory
/// without keys is [`KeyError::NoKeys`] (an appliance that trusts no key can not update).
pub fn load_trusted_keys(dir: &Path) -> Result<Vec<PublicKey>, KeyError> {
    let io = |source| KeyError::Io {
        path: dir.to_owned(),
        source,
    };
    let mut paths = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(io)? {
        let path = entry.map_err(io)?.path();
        if path.extension().is_some_and(|e| e == "pub") {
            paths.push(path);
        }
    }
    paths.sort();
    let keys = paths
        .iter()
        .map(|p| read_public_key(p))
        .collect::<Result<Vec<_>, _>>()?;
    if keys.is_empty() {
        return Err(KeyError::NoKeys(dir.to_owned()));
    }
    Ok(keys)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_round_trip_and_ids_match() {
        let dir = tempfile::tempdir().unwrap();
        let (secret, public) = generate();
        write_secret_key(&dir.path().join("release.key"), &secret).unwrap();
        write_public_key(&dir.path().join("release.pub"), &public).unwrap();
        assert!(write_secret_key(&dir.path().join("release.key"), &secret).is_err());
        let read = read_secret_key(&dir.path().join("release.key")).unwrap();
        assert_eq!(read.public(), public);
        assert_eq!(public.key_id().len(), KEY_ID_HEX_CHARS);
        let trusted = load_trusted_keys(dir.path()).unwrap();
        assert_eq!(trusted, vec![public]);
        assert!(!format!("{secret:?}").contains(&hex::encode(secret.0.to_bytes())));
    }

    #[test]
    fn a_bad_key_file_is_named() {
        let dir = tempfile::tempdir().unwrap();
        assert!(matches!(
            load_trusted_keys(dir.path()),
            Err(KeyError::NoKeys(_))
        ));
        let (_, public) = generate();
        write_public_key(&dir.path().join("a.pub"), &public).unwrap();
        std::fs::write(dir.path().join("b.pub"), "aisle-update-public-key-v1 zz\n").unwrap();
        let err = load_trusted_keys(dir.path()).unwrap_err();
        assert!(err.to_string().contains("b.pub"), "{err}");
        std::fs::write(
            dir.path().join("b.pub"),
            public.to_line().replace("public", "secret"),
        )
        .unwrap();
        assert!(load_trusted_keys(dir.path()).is_err());
    }
}
