//! Secrets: HQ passwords (Argon2id PHC strings), bearer session tokens, store enrollment tokens
//! and store credentials. Tokens and credentials are 32 random bytes, base64url; only their
//! SHA-256 is stored, so a copy of the database holds nothing usable.

pub use aisle_service::secret::{
    hash_password, hashes_equal, new_secret, random_password, secret_hash, verify_password,
};
