//! Generating credentials and the one-way hashes we store instead of them.

use rand::Rng;
use sha2::{Digest, Sha256};

const URL_SAFE: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

/// API key prefix (clients).
pub const API_KEY_PREFIX: &str = "cmdop_";
/// Access token prefix (clients, short-lived).
pub const ACCESS_TOKEN_PREFIX: &str = "cmdat_";
/// Refresh token prefix.
pub const REFRESH_TOKEN_PREFIX: &str = "cmdrt_";
/// Enrollment token prefix (single-use, for agents).
pub const ENROLLMENT_TOKEN_PREFIX: &str = "cmdenr_";
/// Agent secret prefix.
pub const AGENT_SECRET_PREFIX: &str = "cmdag_";
/// Machine id prefix.
pub const MACHINE_ID_PREFIX: &str = "mach_";

/// `prefix` followed by `len` random URL-safe characters (6 bits each).
pub fn random_token(prefix: &str, len: usize) -> String {
    let mut rng = rand::rng();
    let mut out = String::with_capacity(prefix.len() + len);
    out.push_str(prefix);
    // 256 is a multiple of 64, so masking keeps the distribution uniform.
    out.extend((0..len).map(|_| URL_SAFE[usize::from(rng.random::<u8>() & 63)] as char));
    out
}

/// `prefix` followed by `bytes` random bytes in lowercase hex.
pub fn random_hex(prefix: &str, bytes: usize) -> String {
    let mut buf = vec![0u8; bytes];
    rand::rng().fill(&mut buf[..]);
    format!("{prefix}{}", hex::encode(buf))
}

/// Lowercase hex SHA-256 of a credential; what the database keeps.
pub fn hash(secret: &str) -> String {
    hex::encode(Sha256::digest(secret.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_have_prefix_and_length() {
        let t = random_token(API_KEY_PREFIX, 32);
        assert!(t.starts_with("cmdop_"));
        assert_eq!(t.len(), 6 + 32);
        assert!(t[6..].bytes().all(|b| URL_SAFE.contains(&b)));
        assert_ne!(t, random_token(API_KEY_PREFIX, 32));
    }

    #[test]
    fn machine_ids_are_16_hex_chars() {
        let id = random_hex(MACHINE_ID_PREFIX, 8);
        assert_eq!(id.len(), 5 + 16);
        assert!(id[5..]
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)));
    }
}
