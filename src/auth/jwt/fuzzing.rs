//! Entry points for the fuzz targets in `fuzz/`; not part of the API.
//!
//! The verifier's checks at a fixed clock, so a target can feed it arbitrary tokens (the
//! shape check, header decoding, algorithm and key selection, the signature) and
//! arbitrary signed payloads (the registered claims, then the policy and the identity).

use super::{JwtError, JwtIdentity, JwtVerifier, claims};
use serde_json::Value;

/// Every check of [`JwtVerifier::verify`], at Unix time `now`.
pub async fn verify_at(
    verifier: &JwtVerifier,
    token: &str,
    now: i64,
) -> Result<JwtIdentity, JwtError> {
    verifier.verify_at(token, now).await
}

/// A claim by dotted path, as the policy reads it.
pub fn lookup<'a>(claims: &'a Value, path: &str) -> Option<&'a Value> {
    claims::lookup(claims, path)
}
