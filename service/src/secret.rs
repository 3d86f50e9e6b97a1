//! Secrets: people's passwords as Argon2id PHC strings; bearer secrets (session tokens,
//! enrollment tokens, store credentials) as 32 random bytes, base64url, of which only the
//! SHA-256 is stored, so a copy of a database holds nothing usable.

use argon2::Argon2;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use rand::Rng;
use sha2::{Digest, Sha256};

/// Generated passwords avoid look-alike characters (0/O, 1/l/I) so they can be typed from a
/// screen or a printout.
const PASSWORD_ALPHABET: &[u8] = b"23456789ABCDEFGHJKMNPQRSTUVWXYZabcdefghijkmnpqrstuvwxyz";
const GENERATED_PASSWORD_CHARS: usize = 20;

/// Argon2id with a random salt. CPU and memory heavy (~20 MiB, tens of ms): call it off the
/// async runtime.
pub fn hash_password(password: &str) -> Result<String, String> {
    let mut salt = [0u8; 16];
    rand::rng().fill(&mut salt);
    let salt = SaltString::encode_b64(&salt).map_err(|e| e.to_string())?;
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|hash| hash.to_string())
        .map_err(|e| e.to_string())
}

/// False for a wrong password and for a hash that does not parse.
pub fn verify_password(hash: &str, password: &str) -> bool {
    PasswordHash::new(hash)
        .map(|parsed| {
            Argon2::default()
                .verify_password(password.as_bytes(), &parsed)
                .is_ok()
        })
        .unwrap_or(false)
}

/// A new secret (`<prefix>_` + 32 random bytes, base64url) and the hash to store.
pub fn new_secret(prefix: &str) -> (String, Vec<u8>) {
    let mut bytes = [0u8; 32];
    rand::rng().fill(&mut bytes);
    let secret = format!("{prefix}_{}", URL_SAFE_NO_PAD.encode(bytes));
    let hash = secret_hash(&secret);
    (secret, hash)
}

/// What is stored of a secret.
pub fn secret_hash(secret: &str) -> Vec<u8> {
    Sha256::digest(secret.as_bytes()).to_vec()
}

/// Compares two hashes without an early exit.
pub fn hashes_equal(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// A password for a first account, printed once.
pub fn random_password() -> String {
    let mut rng = rand::rng();
    (0..GENERATED_PASSWORD_CHARS)
        .map(|_| PASSWORD_ALPHABET[rng.random_range(0..PASSWORD_ALPHABET.len())] as char)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_and_secrets() {
        let hash = hash_password("correct horse").unwrap();
        assert!(verify_password(&hash, "correct horse"));
        assert!(!verify_password(&hash, "wrong horse"));
        assert!(!verify_password("garbage", "x"));
        let (secret, hash) = new_secret("sc");
        assert!(secret.starts_with("sc_"));
        assert!(hashes_equal(&secret_hash(&secret), &hash));
        assert!(!hashes_equal(&secret_hash("other"), &hash));
        let password = random_password();
        assert_eq!(password.len(), GENERATED_PASSWORD_CHARS);
        assert!(!password.contains(['0', 'O', '1', 'l', 'I']));
    }
}
