//! Minting, hashing and comparing secrets (virtual keys, master key, tickets).
//!
//! Keys carry 256 bits of CSPRNG entropy, so a single SHA-256 is the right hash: slow
//! password hashes buy nothing against brute force here and would cost the hot path.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// Prefix of every virtual key.
pub const KEY_PREFIX: &str = "sk-";

/// A new virtual key: `sk-` + 43 URL-safe characters (256 random bits).
pub fn mint_key() -> String {
    let mut bytes = [0u8; 32];
    rand::fill(&mut bytes);
    format!("{KEY_PREFIX}{}", URL_SAFE_NO_PAD.encode(bytes))
}

/// Hex SHA-256 of a secret: what the database stores.
pub fn hash_secret(secret: &str) -> String {
    let mut hex = [0u8; 64];
    // 32 bytes always fit 64 hex digits, which are always ASCII: neither step can fail.
    if hex::encode_to_slice(Sha256::digest(secret.as_bytes()), &mut hex).is_err() {
        return String::new();
    }
    std::str::from_utf8(&hex)
        .map(str::to_owned)
        .unwrap_or_default()
}

/// The short display form shown in lists: `sk-…a1b2`.
pub fn display_name(key: &str) -> String {
    let tail: String = key
        .chars()
        .rev()
        .take(4)
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .collect();
    format!("{KEY_PREFIX}…{tail}")
}

/// Constant-time equality for secrets of possibly different lengths: both sides are
/// hashed first so neither content nor length leaks through timing.
pub fn secrets_equal(a: &str, b: &str) -> bool {
    let ha = Sha256::digest(a.as_bytes());
    let hb = Sha256::digest(b.as_bytes());
    ha.as_slice().ct_eq(hb.as_slice()).into()
}

/// True for a string shaped like a virtual key (cheap pre-check before any lookup).
pub fn looks_like_key(token: &str) -> bool {
    token.len() >= KEY_PREFIX.len() + 32
        && token.len() <= 256
        && token.starts_with(KEY_PREFIX)
        && token[KEY_PREFIX.len()..]
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn minted_keys_are_long_unique_and_well_formed() {
        let a = mint_key();
        let b = mint_key();
        assert_ne!(a, b);
        assert!(a.len() >= 3 + 32);
        assert!(looks_like_key(&a), "{a}");
    }

    #[test]
    fn hash_is_hex_sha256() {
        assert_eq!(
            hash_secret("abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn display_name_shows_only_the_tail() {
        assert_eq!(display_name("sk-abcdefgh1234"), "sk-…1234");
    }

    #[test]
    fn secret_comparison() {
        assert!(secrets_equal("same-secret", "same-secret"));
        assert!(!secrets_equal("same-secret", "same-secreT"));
        assert!(!secrets_equal("short", "much-longer-secret"));
    }
}
