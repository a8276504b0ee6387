//! Tokens minted by the mock IdP verify against the JWKS it serves, and its bad tokens
//! are bad in exactly the advertised way.

#![allow(
    clippy::expect_used,
    clippy::panic,
    reason = "test helpers fail the test the way a test does"
)]

use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey, Validation, decode, decode_header};
use serde_json::{Value, json};
use testkit::idp::{MockIdp, SIGNING_ALGORITHMS};

/// reqwest is built without a TLS provider of its own (see tollgate's `outbound`).
async fn get(url: String) -> reqwest::Result<reqwest::Response> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::new().get(url).send().await
}

async fn fetch_jwks(idp: &MockIdp) -> JwkSet {
    get(idp.jwks_url())
        .await
        .expect("JWKS reachable")
        .error_for_status()
        .expect("JWKS 200")
        .json()
        .await
        .expect("JWKS parses as a JwkSet")
}

fn validation(idp: &MockIdp, alg: Algorithm) -> Validation {
    let mut v = Validation::new(alg);
    v.set_audience(&["tollgate"]);
    v.set_issuer(&[idp.issuer()]);
    v.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
    v.validate_nbf = true;
    v
}

fn verify(idp: &MockIdp, jwks: &JwkSet, token: &str) -> Result<Value, String> {
    let header = decode_header(token).map_err(|e| format!("header: {e}"))?;
    let kid = header.kid.ok_or("no kid")?;
    let jwk = jwks
        .find(&kid)
        .ok_or_else(|| format!("kid {kid} not in JWKS"))?;
    let key = DecodingKey::from_jwk(jwk).map_err(|e| format!("jwk: {e}"))?;
    decode::<Value>(token, &key, &validation(idp, header.alg))
        .map(|d| d.claims)
        .map_err(|e| format!("verify: {e}"))
}

#[tokio::test]
async fn discovery_points_at_the_jwks() {
    let idp = MockIdp::start().await;
    let doc: Value = get(idp.discovery_url())
        .await
        .expect("reachable")
        .json()
        .await
        .expect("json");
    assert_eq!(doc["issuer"], idp.issuer());
    assert_eq!(doc["jwks_uri"], idp.jwks_url());
    assert_eq!(idp.fetch_count(), 0);
}

#[tokio::test]
async fn every_algorithm_verifies_against_the_served_jwks() {
    let idp = MockIdp::start().await;
    let jwks = fetch_jwks(&idp).await;
    assert_eq!(jwks.keys.len(), SIGNING_ALGORITHMS.len());
    for jwk in &jwks.keys {
        let raw = serde_json::to_value(jwk).expect("serializes");
        assert_eq!(raw["use"], "sig");
        assert!(raw["kid"].is_string() && raw["alg"].is_string() && raw["kty"].is_string());
    }
    for alg in SIGNING_ALGORITHMS {
        let mut claims = idp.standard_claims("alice");
        claims["email"] = json!("alice@example.com");
        let token = idp.sign(alg, &claims);
        let header = decode_header(&token).expect("header");
        assert_eq!(header.alg, alg);
        assert_eq!(header.kid.as_deref(), Some(idp.kid(alg).as_str()));
        let verified = verify(&idp, &jwks, &token).unwrap_or_else(|e| panic!("{alg:?}: {e}"));
        assert_eq!(verified["sub"], "alice");
        assert_eq!(verified["email"], "alice@example.com");
    }
    assert_eq!(idp.fetch_count(), 1);
}

#[tokio::test]
async fn rotation_replaces_every_kid() {
    let idp = MockIdp::start().await;
    let before = fetch_jwks(&idp).await;
    let old_token = idp.sign(Algorithm::RS256, &idp.standard_claims("bob"));
    idp.rotate();
    let after = fetch_jwks(&idp).await;
    for jwk in &before.keys {
        let kid = jwk.common.key_id.as_deref().expect("kid");
        assert!(after.find(kid).is_none(), "{kid} survived rotation");
    }
    assert!(verify(&idp, &after, &old_token).is_err());
    let new_token = idp.sign(Algorithm::RS256, &idp.standard_claims("bob"));
    assert!(verify(&idp, &after, &new_token).is_ok());
    idp.wait_for_fetches(2).await;
}

#[tokio::test]
async fn bad_tokens_do_not_verify() {
    let idp = MockIdp::start().await;
    let jwks = fetch_jwks(&idp).await;
    let claims = idp.standard_claims("mallory");

    for alg in SIGNING_ALGORITHMS {
        let foreign = idp.sign_with_foreign_key(alg, &claims);
        let kid = decode_header(&foreign).expect("header").kid.expect("kid");
        assert!(jwks.find(&kid).is_none());
        // Even under a published kid, the foreign signature fails.
        let relabelled_key =
            DecodingKey::from_jwk(jwks.find(&idp.kid(alg)).expect("kid")).expect("decoding key");
        assert!(decode::<Value>(&foreign, &relabelled_key, &validation(&idp, alg)).is_err());
    }

    let no_kid = idp.sign_with_kid(Algorithm::ES256, None, &claims);
    assert!(decode_header(&no_kid).expect("header").kid.is_none());
    let custom = idp.sign_with_kid(Algorithm::ES256, Some("nope"), &claims);
    assert_eq!(
        decode_header(&custom).expect("header").kid.as_deref(),
        Some("nope")
    );

    // Alg confusion: a genuine HMAC over the RSA public PEM, under the RSA kid ...
    let confused = idp.hs256_with_public_key(&claims);
    let header = decode_header(&confused).expect("header");
    assert_eq!(header.alg, Algorithm::HS256);
    assert_eq!(
        header.kid.as_deref(),
        Some(idp.kid(Algorithm::RS256).as_str())
    );
    let hmac = DecodingKey::from_secret(idp.rsa_public_pem().as_bytes());
    assert!(decode::<Value>(&confused, &hmac, &validation(&idp, Algorithm::HS256)).is_ok());
    // ... which a JWKS-based verifier refuses.
    assert!(verify(&idp, &jwks, &confused).is_err());

    // alg=none: no signature at all.
    let none = idp.unsigned_none(&claims);
    assert!(none.ends_with('.'));
    assert_eq!(none.split('.').count(), 3);
    assert!(
        decode_header(&none).is_err(),
        "jsonwebtoken has no `none` algorithm"
    );
}

#[tokio::test]
async fn unavailable_jwks_answers_500_and_is_counted() {
    let idp = MockIdp::start().await;
    idp.set_available(false);
    let resp = get(idp.jwks_url()).await.expect("reachable");
    assert_eq!(resp.status(), 500);
    assert_eq!(idp.fetch_count(), 1);
    idp.set_available(true);
    fetch_jwks(&idp).await;
    assert_eq!(idp.fetch_count(), 2);
}

#[tokio::test]
async fn static_public_pem_verifies_rsa_tokens() {
    let idp = MockIdp::start().await;
    let token = idp.sign(Algorithm::PS384, &idp.standard_claims("carol"));
    let key = DecodingKey::from_rsa_pem(idp.rsa_public_pem().as_bytes()).expect("pem");
    assert!(decode::<Value>(&token, &key, &validation(&idp, Algorithm::PS384)).is_ok());
    let token = idp.sign(Algorithm::EdDSA, &idp.standard_claims("carol"));
    let key = DecodingKey::from_ed_pem(idp.public_pem(Algorithm::EdDSA).as_bytes()).expect("pem");
    assert!(decode::<Value>(&token, &key, &validation(&idp, Algorithm::EdDSA)).is_ok());
}
