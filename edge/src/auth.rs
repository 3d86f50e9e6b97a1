//! Credentials: staff passwords and sessions, customers' signed resume tokens, hand-off codes.
//!
//! - Staff passwords are Argon2id hashes (PHC strings); hashing runs off the async runtime.
//! - A staff session token is 32 random bytes; only its SHA-256 is stored, so a copy of the
//!   database does not hold usable tokens.
//! - A customer's resume token is `base64url(payload).base64url(HMAC-SHA256(payload))` with a
//!   key kept in the data directory: the appliance can check it without a database lookup,
//!   and it works on any device the customer carries it to.

use std::path::Path;

use aisle_sync::CustomerId;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, Mac};
use rand::Rng;
use serde::{Deserialize, Serialize};
use sha2::Sha256;

use crate::error::{ApiError, Code};

const KEY_FILE: &str = "secret.key";
const KEY_BYTES: usize = 32;
/// Hand-off codes avoid look-alike characters (0/O, 1/I/L) so they can be read aloud or typed.
const CODE_ALPHABET: &[u8] = b"23456789ABCDEFGHJKMNPQRSTUVWXYZ";
pub const HANDOFF_CODE_CHARS: usize = 8;

pub use aisle_service::secret::{random_password, secret_hash as token_hash, verify_password};

/// Argon2id (aisle-service), as an API error when it fails.
pub fn hash_password(password: &str) -> Result<String, ApiError> {
    aisle_service::secret::hash_password(password).map_err(ApiError::internal)
}

/// What every staff session token starts with (customers' resume tokens never do: they are
/// base64url of a JSON object, `eyJ…`).
pub const SESSION_TOKEN_PREFIX: &str = "st_";

/// A new staff session token (`st_…`) and the hash to store.
pub fn new_session_token() -> (String, Vec<u8>) {
    let (token, hash) = aisle_service::secret::new_secret("st");
    debug_assert!(token.starts_with(SESSION_TOKEN_PREFIX));
    (token, hash)
}

pub fn handoff_code() -> String {
    let mut rng = rand::rng();
    (0..HANDOFF_CODE_CHARS)
        .map(|_| CODE_ALPHABET[rng.random_range(0..CODE_ALPHABET.len())] as char)
        .collect()
}

/// Normalises what a person typed: case and separators do not matter.
pub fn normalise_code(code: &str) -> String {
    code.chars()
        .filter(|c| c.is_ascii_alphanumeric())
        .map(|c| c.to_ascii_uppercase())
        .collect()
}

#[derive(Serialize, Deserialize)]
struct Payload {
    /// Customer id.
    c: CustomerId,
    /// Expiry, seconds since the epoch.
    e: u64,
}

/// Signs and checks customers' resume tokens.
#[derive(Clone)]
pub struct ResumeTokens {
    key: [u8; KEY_BYTES],
}

impl ResumeTokens {
    /// Loads the appliance's key from the data directory, creating it (mode 0600) on first start.
    pub fn load_or_create(data_dir: &Path) -> std::io::Result<Self> {
        let path = data_dir.join(KEY_FILE);
        match std::fs::read(&path) {
            Ok(bytes) if bytes.len() == KEY_BYTES => {
                let mut key = [0u8; KEY_BYTES];
                key.copy_from_slice(&bytes);
                Ok(Self { key })
            }
            Ok(_) => Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("{} is not a {KEY_BYTES}-byte key", path.display()),
            )),
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => {
                let mut key = [0u8; KEY_BYTES];
                rand::rng().fill(&mut key);
                write_private(&path, &key)?;
                Ok(Self { key })
            }
            Err(err) => Err(err),
        }
    }

    pub fn sign(&self, customer: CustomerId, expires_at_secs: u64) -> String {
        let payload = serde_json::to_vec(&Payload {
            c: customer,
            e: expires_at_secs,
        })
        .expect("payload serialises");
        let payload = URL_SAFE_NO_PAD.encode(payload);
        let signature = URL_SAFE_NO_PAD.encode(self.mac(payload.as_bytes()));
        format!("{payload}.{signature}")
    }

    pub fn verify(&self, token: &str, now_secs: u64) -> Result<CustomerId, ApiError> {
        let bad = || ApiError::new(Code::Unauthorized, "invalid resume token");
        let (payload, signature) = token.split_once('.').ok_or_else(bad)?;
        let signature = URL_SAFE_NO_PAD.decode(signature).map_err(|_| bad())?;
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.key).expect("any key length");
        mac.update(payload.as_bytes());
        mac.verify_slice(&signature).map_err(|_| bad())?;
        let payload = URL_SAFE_NO_PAD.decode(payload).map_err(|_| bad())?;
        let payload: Payload = serde_json::from_slice(&payload).map_err(|_| bad())?;
        if payload.e <= now_secs {
            return Err(ApiError::new(Code::TokenExpired, "resume token expired"));
        }
        Ok(payload.c)
    }

    fn mac(&self, bytes: &[u8]) -> Vec<u8> {
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.key).expect("any key length");
        mac.update(bytes);
        mac.finalize().into_bytes().to_vec()
    }
}

fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options.open(path)?;
    file.write_all(bytes)?;
    file.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resume_token_round_trip_and_tamper() {
        let dir = tempfile::tempdir().unwrap();
        let tokens = ResumeTokens::load_or_create(dir.path()).unwrap();
        let customer = CustomerId::new();
        let token = tokens.sign(customer, 2_000);
        assert_eq!(tokens.verify(&token, 1_000).unwrap(), customer);
        assert_eq!(
            tokens.verify(&token, 2_000).unwrap_err().code,
            Code::TokenExpired
        );
        let mut tampered = token.clone();
        tampered.insert(3, 'x');
        assert_eq!(
            tokens.verify(&tampered, 1_000).unwrap_err().code,
            Code::Unauthorized
        );
        // The same key is found again after a restart.
        let again = ResumeTokens::load_or_create(dir.path()).unwrap();
        assert_eq!(again.verify(&token, 1_000).unwrap(), customer);
    }

    #[test]
    fn passwords() {
        let hash = hash_password("correct horse").unwrap();
        assert!(verify_password(&hash, "correct horse"));
        assert!(!verify_password(&hash, "wrong horse"));
        assert!(!verify_password("garbage", "x"));
    }

    #[test]
    fn codes_are_readable() {
        let code = handoff_code();
        assert_eq!(code.len(), HANDOFF_CODE_CHARS);
        assert!(!code.contains(['0', 'O', '1', 'I', 'L']));
        assert_eq!(normalise_code("k7q4-m2xp"), "K7Q4M2XP");
    }
}
