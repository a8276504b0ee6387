//! Verification keys: parsed from JWKS documents and static PEM files, each bound to
//! the key type (and, for JWKs that say so, the one algorithm) it may verify.

use std::str::FromStr;

use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey};
use serde_json::Value;

/// The type of a public key, which decides the algorithms it can verify.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum KeyKind {
    Rsa,
    EcP256,
    EcP384,
    Ed25519,
}

impl KeyKind {
    /// `true` if a token signed with `alg` may be verified by a key of this type.
    /// HMAC algorithms never match: tollgate holds no shared secrets.
    pub(super) fn verifies(self, alg: Algorithm) -> bool {
        matches!(
            (self, alg),
            (
                KeyKind::Rsa,
                Algorithm::RS256
                    | Algorithm::RS384
                    | Algorithm::RS512
                    | Algorithm::PS256
                    | Algorithm::PS384
                    | Algorithm::PS512
            ) | (KeyKind::EcP256, Algorithm::ES256)
                | (KeyKind::EcP384, Algorithm::ES384)
                | (KeyKind::Ed25519, Algorithm::EdDSA)
        )
    }
}

/// One public key that can verify token signatures.
pub(super) struct VerifyingKey {
    /// The `kid` it is published under; `None` matches tokens by type alone.
    pub(super) kid: Option<String>,
    pub(super) kind: KeyKind,
    /// The JWK's own `alg`: when present, the only algorithm this key verifies.
    pub(super) alg: Option<Algorithm>,
    pub(super) key: DecodingKey,
}

impl std::fmt::Debug for VerifyingKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VerifyingKey")
            .field("kid", &self.kid)
            .field("kind", &self.kind)
            .field("alg", &self.alg)
            .finish_non_exhaustive()
    }
}

impl VerifyingKey {
    /// `true` if this key may verify a token whose header says `alg`.
    pub(super) fn accepts(&self, alg: Algorithm) -> bool {
        self.kind.verifies(alg) && self.alg.is_none_or(|own| own == alg)
    }
}

/// Parses a JWKS document (`{"keys": [...]}`). Keys that cannot verify signatures here
/// (encryption keys, symmetric keys, unknown types or curves, inconsistent `alg`) are
/// skipped with a debug log; a document that is not a JWKS at all is an error.
pub(super) fn parse_jwks(body: &[u8]) -> Result<Vec<VerifyingKey>, String> {
    #[derive(serde::Deserialize)]
    struct Document {
        keys: Vec<Value>,
    }
    let document: Document =
        serde_json::from_slice(body).map_err(|e| format!("not a JWKS document: {e}"))?;
    let mut keys = Vec::with_capacity(document.keys.len());
    for raw in document.keys {
        match parse_jwk(raw) {
            Ok(key) => keys.push(key),
            Err(reason) => tracing::debug!(reason, "JWKS entry skipped"),
        }
    }
    Ok(keys)
}

fn parse_jwk(raw: Value) -> Result<VerifyingKey, String> {
    let jwk: Jwk = serde_json::from_value(raw).map_err(|e| format!("unreadable JWK: {e}"))?;
    let kid = jwk.common.key_id.clone();
    if let Some(usage) = &jwk.common.public_key_use
        && *usage != PublicKeyUse::Signature
    {
        return Err(format!("JWK {kid:?} is not a signature key"));
    }
    let (kind, key) = match &jwk.algorithm {
        AlgorithmParameters::RSA(_) => (KeyKind::Rsa, DecodingKey::from_jwk(&jwk)),
        AlgorithmParameters::EllipticCurve(p) => match p.curve {
            EllipticCurve::P256 => (KeyKind::EcP256, DecodingKey::from_jwk(&jwk)),
            EllipticCurve::P384 => (KeyKind::EcP384, DecodingKey::from_jwk(&jwk)),
            _ => return Err(format!("JWK {kid:?}: unsupported EC curve")),
        },
        AlgorithmParameters::OctetKeyPair(p) => match p.curve {
            EllipticCurve::Ed25519 => (KeyKind::Ed25519, DecodingKey::from_jwk(&jwk)),
            _ => return Err(format!("JWK {kid:?}: unsupported OKP curve")),
        },
        _ => return Err(format!("JWK {kid:?}: not an asymmetric signature key")),
    };
    let key = key.map_err(|e| format!("JWK {kid:?}: {e}"))?;
    let alg = match jwk.common.key_algorithm {
        None => None,
        Some(declared) => {
            // `KeyAlgorithm` and `Algorithm` share their JOSE names.
            let alg = Algorithm::from_str(&declared.to_string())
                .map_err(|_| format!("JWK {kid:?}: alg {declared} is not a signature alg"))?;
            if !kind.verifies(alg) {
                return Err(format!(
                    "JWK {kid:?}: alg {declared} does not fit its key type"
                ));
            }
            Some(alg)
        }
    };
    Ok(VerifyingKey {
        kid,
        kind,
        alg,
        key,
    })
}

/// Parses a static PEM public key (SPKI `PUBLIC KEY`, PKCS#1 `RSA PUBLIC KEY` or a
/// `CERTIFICATE`): RSA, EC P-256/P-384 or Ed25519.
pub(super) fn parse_pem(pem: &str, kid: Option<String>) -> Result<VerifyingKey, String> {
    if pem.contains("PRIVATE KEY") {
        return Err("is a private key; configure the public key".into());
    }
    let bytes = pem.trim().as_bytes();
    let (kind, key) = if let Ok(key) = DecodingKey::from_rsa_pem(bytes) {
        (KeyKind::Rsa, key)
    } else if let Ok(key) = DecodingKey::from_ec_pem(bytes) {
        // The decoded content is the uncompressed point: 0x04 || x || y.
        let kind = match key.try_get_as_bytes().map(<[u8]>::len) {
            Ok(65) => KeyKind::EcP256,
            Ok(97) => KeyKind::EcP384,
            _ => return Err("unsupported EC curve (P-256 and P-384 only)".into()),
        };
        (kind, key)
    } else if let Ok(key) = DecodingKey::from_ed_pem(bytes) {
        if key.try_get_as_bytes().map(<[u8]>::len) != Ok(32) {
            return Err("unsupported EdDSA curve (Ed25519 only)".into());
        }
        (KeyKind::Ed25519, key)
    } else {
        return Err("not a PEM-encoded RSA, EC (P-256, P-384) or Ed25519 public key".into());
    };
    Ok(VerifyingKey {
        kid,
        kind,
        alg: None,
        key,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_types_bind_algorithms() {
        assert!(KeyKind::Rsa.verifies(Algorithm::PS512));
        assert!(!KeyKind::Rsa.verifies(Algorithm::ES256));
        assert!(!KeyKind::Rsa.verifies(Algorithm::HS256));
        assert!(KeyKind::EcP256.verifies(Algorithm::ES256));
        assert!(!KeyKind::EcP256.verifies(Algorithm::ES384));
        assert!(KeyKind::EcP384.verifies(Algorithm::ES384));
        assert!(KeyKind::Ed25519.verifies(Algorithm::EdDSA));
        assert!(!KeyKind::Ed25519.verifies(Algorithm::RS256));
    }

    #[test]
    fn jwks_skips_unusable_entries() {
        let body = serde_json::json!({"keys": [
            {"kty": "oct", "k": "c2VjcmV0", "kid": "hmac"},
            {"kty": "RSA", "use": "enc", "n": "AQAB", "e": "AQAB", "kid": "enc"},
            {"kty": "RSA", "alg": "RSA-OAEP", "n": "AQAB", "e": "AQAB", "kid": "oaep"},
            {"kty": "RSA", "alg": "ES256", "n": "AQAB", "e": "AQAB", "kid": "liar"},
            {"kty": "EC", "crv": "P-521", "x": "AA", "y": "AA", "kid": "p521"},
            {"kty": "RSA", "alg": "RS256", "n": "AQAB", "e": "AQAB", "kid": "good"},
            {"kty": "weird"},
        ]});
        let keys = parse_jwks(body.to_string().as_bytes()).expect("a JWKS");
        assert_eq!(keys.len(), 1, "{keys:?}");
        assert_eq!(keys[0].kid.as_deref(), Some("good"));
        assert_eq!(keys[0].alg, Some(Algorithm::RS256));
        assert!(keys[0].accepts(Algorithm::RS256));
        assert!(!keys[0].accepts(Algorithm::PS256));
        assert!(parse_jwks(b"{\"not\": \"keys\"}").is_err());
        assert!(parse_jwks(b"<html>").is_err());
    }

    #[test]
    fn pem_rejects_garbage_and_private_keys() {
        assert!(
            parse_pem(
                "-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----",
                None
            )
            .is_err()
        );
        assert!(parse_pem("hello", None).is_err());
        let e = parse_pem(
            "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----",
            None,
        )
        .expect_err("private");
        assert!(e.contains("private"), "{e}");
    }
}
