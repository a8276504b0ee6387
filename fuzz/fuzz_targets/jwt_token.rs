//! Arbitrary tokens through the JWT verifier: the shape check, header decoding, the
//! algorithm and key choice, the signature check.
//!
//! Input: one mode byte, then either the token text (even mode) or, base64url-encoded
//! here so the fuzzer works on the decoded JSON, `header \xff payload \xff signature`
//! (odd mode). Bit 1 of the mode picks the strict or the open verifier.

#![no_main]

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use libfuzzer_sys::fuzz_target;
use tollgate::auth::jwt::{JwtError, JwtVerifier};
use tollgate_fuzz::{LEEWAY_S, NOW, OPEN, STRICT, verify};

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let (token, segments_non_empty) = if mode & 1 == 0 {
        (String::from_utf8_lossy(rest).into_owned(), false)
    } else {
        let mut parts = rest.splitn(3, |b| *b == 0xff);
        let header = parts.next().unwrap_or_default();
        let payload = parts.next().unwrap_or_default();
        let signature = parts.next().unwrap_or_default();
        let token = format!(
            "{}.{}.{}",
            URL_SAFE_NO_PAD.encode(header),
            URL_SAFE_NO_PAD.encode(payload),
            URL_SAFE_NO_PAD.encode(signature)
        );
        (token, !header.is_empty() && !payload.is_empty())
    };
    let shaped = JwtVerifier::looks_like_jwt(&token);
    if segments_non_empty {
        assert!(shaped, "three base64url segments are JWT-shaped: {token}");
    }
    let verifier = if mode & 2 == 0 { &*OPEN } else { &*STRICT };
    match verify(verifier, &token) {
        Err(JwtError::Unauthorized(reason)) => {
            if !shaped {
                assert!(
                    reason == "jwt_malformed" || reason == "jwt_too_large",
                    "{reason} for a token that is not JWT-shaped"
                );
            }
        }
        Err(JwtError::PolicyDenied(_)) => assert!(shaped),
        Ok(identity) => {
            assert!(shaped);
            assert!(identity.expires_at.saturating_add(LEEWAY_S) > NOW);
        }
    }
});
