//! Arbitrary payloads, signed here with the fixture Ed25519 key, through the verifier:
//! claims decoding, the registered-claim checks (`exp`, `nbf`, `iat`, `iss`, `aud`),
//! the policy and the identity it builds.
//!
//! Input: one mode byte (bit 0: strict or open verifier; bit 1: with or without `kid`),
//! then the payload bytes (meant to be JSON; anything goes).

#![no_main]

use std::sync::LazyLock;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{Algorithm, EncodingKey};
use libfuzzer_sys::fuzz_target;
use serde_json::Value;
use tollgate::auth::jwt::JwtError;
use tollgate::auth::jwt::fuzzing::lookup;
use tollgate::config::Role;
use tollgate_fuzz::{
    ADMIN_SCOPE, AUDIENCE, ED25519_PRIVATE_PEM, EMAIL_DOMAIN, ISSUER, LEEWAY_S, NOW, OPEN,
    REQUIRED_SCOPE, STRICT, verify,
};

static KEY: LazyLock<EncodingKey> = LazyLock::new(|| {
    EncodingKey::from_ed_pem(ED25519_PRIVATE_PEM.as_bytes()).expect("the fixture Ed25519 key")
});

/// Reasons that only a bad token (not bad claims) may give: this one is well formed and
/// correctly signed.
const TOKEN_FAILURES: &[&str] = &[
    "jwt_too_large",
    "jwt_malformed",
    "jwt_alg_not_allowed",
    "jwt_unsupported_header",
    "jwt_unknown_kid",
    "jwt_no_key_for_alg",
    "jwt_key_mismatch",
];

fuzz_target!(|data: &[u8]| {
    let Some((&mode, payload)) = data.split_first() else {
        return;
    };
    let strict = mode & 1 == 1;
    let header = if mode & 2 == 0 {
        r#"{"alg":"EdDSA","typ":"JWT","kid":"ed25519"}"#
    } else {
        r#"{"alg":"EdDSA","typ":"JWT"}"#
    };
    let message = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(header),
        URL_SAFE_NO_PAD.encode(payload)
    );
    let signature = jsonwebtoken::crypto::sign(message.as_bytes(), &KEY, Algorithm::EdDSA)
        .expect("Ed25519 signing");
    let token = format!("{message}.{signature}");
    let verifier = if strict { &*STRICT } else { &*OPEN };
    let parsed: Option<Value> = serde_json::from_slice(payload).ok();

    match verify(verifier, &token) {
        Err(JwtError::Unauthorized(reason)) => {
            if !payload.is_empty() && token.len() <= 16384 {
                assert!(
                    !TOKEN_FAILURES.contains(&reason),
                    "{reason} for a well-formed, signed token"
                );
            }
        }
        Err(JwtError::PolicyDenied(_)) => {
            assert!(parsed.as_ref().is_some_and(Value::is_object));
        }
        Ok(identity) => {
            let claims = parsed.expect("accepted claims are JSON");
            assert_eq!(*identity.claims, claims, "the identity keeps the payload");
            assert!(identity.expires_at.saturating_add(LEEWAY_S) > NOW);
            if identity.is_admin {
                assert_eq!(identity.role, Some(Role::ProxyAdmin));
                assert!(identity.scopes.iter().any(|s| s == ADMIN_SCOPE));
            }
            if strict {
                assert_eq!(identity.issuer, ISSUER);
                let aud = claims.get("aud").expect("an accepted token has `aud`");
                assert!(
                    aud == AUDIENCE
                        || aud
                            .as_array()
                            .is_some_and(|a| a.iter().any(|v| v == AUDIENCE)),
                    "audience {aud}"
                );
                assert!(identity.scopes.iter().any(|s| s == REQUIRED_SCOPE));
                let email = identity
                    .email
                    .as_deref()
                    .expect("an accepted token has an email");
                let domain = email.rsplit_once('@').map(|(_, d)| d.to_ascii_lowercase());
                assert_eq!(domain.as_deref(), Some(EMAIL_DOMAIN));
                assert!(lookup(&claims, "ext.tier").is_some());
            }
        }
    }
});
