//! Verifier tests against the mock identity provider.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use jsonwebtoken::Algorithm;
use serde_json::{Value, json};
use testkit::idp::{AUDIENCE, MockIdp, SIGNING_ALGORITHMS};

use super::*;
use crate::config::{ProviderConfig, PublicKeyConfig};

fn config(idp: &MockIdp) -> JwtConfig {
    JwtConfig {
        enabled: true,
        jwks_urls: vec![idp.jwks_url()],
        issuers: vec![idp.issuer()],
        audiences: vec![AUDIENCE.into()],
        ..JwtConfig::default()
    }
}

fn verifier(config: &JwtConfig) -> JwtVerifier {
    JwtVerifier::new(config, test_client()).expect("verifier builds")
}

fn test_client() -> reqwest::Client {
    crate::outbound::client_builder()
        .build()
        .expect("client builds")
}

fn now() -> i64 {
    chrono::Utc::now().timestamp()
}

fn reason(result: Result<JwtIdentity, JwtError>) -> &'static str {
    match result {
        Err(JwtError::Unauthorized(reason)) => reason,
        other => panic!("expected Unauthorized, got {other:?}"),
    }
}

fn denied(result: Result<JwtIdentity, JwtError>) -> String {
    match result {
        Err(JwtError::PolicyDenied(message)) => message,
        other => panic!("expected PolicyDenied, got {other:?}"),
    }
}

fn checks(v: &JwtVerifier) -> usize {
    v.signature_checks.load(Ordering::Relaxed)
}

fn with(mut claims: Value, key: &str, value: Value) -> Value {
    claims[key] = value;
    claims
}

fn without(mut claims: Value, key: &str) -> Value {
    claims.as_object_mut().expect("an object").remove(key);
    claims
}

#[test]
fn jwt_shape() {
    assert!(JwtVerifier::looks_like_jwt("eyJh.eyJz.c2ln"));
    assert!(JwtVerifier::looks_like_jwt("eyJh.eyJz."));
    assert!(JwtVerifier::looks_like_jwt("a-_9.B_-0.x"));
    assert!(!JwtVerifier::looks_like_jwt(".eyJz.c2ln"));
    assert!(!JwtVerifier::looks_like_jwt("eyJh..c2ln"));
    assert!(!JwtVerifier::looks_like_jwt("eyJh.eyJz"));
    assert!(!JwtVerifier::looks_like_jwt("a.b.c.d"));
    assert!(!JwtVerifier::looks_like_jwt("a.b+/.c"));
    assert!(!JwtVerifier::looks_like_jwt("a.b.c="));
    assert!(!JwtVerifier::looks_like_jwt("sk-abcdef"));
    assert!(!JwtVerifier::looks_like_jwt(""));
}

#[test]
fn configuration_errors_name_the_key() {
    let http = test_client;
    for algorithms in [vec!["HS256"], vec!["RS256", "none"], vec!["FOO"], vec![]] {
        let config = JwtConfig {
            algorithms: algorithms.iter().map(|a| a.to_string()).collect(),
            ..JwtConfig::default()
        };
        let e = JwtVerifier::new(&config, http()).expect_err("refused");
        assert!(e.contains("jwt.algorithms"), "{algorithms:?}: {e}");
    }
    let config = JwtConfig {
        public_keys: vec![PublicKeyConfig {
            pem: "-----BEGIN PUBLIC KEY-----\nnot base64\n-----END PUBLIC KEY-----".into(),
            kid: None,
        }],
        ..JwtConfig::default()
    };
    let e = JwtVerifier::new(&config, http()).expect_err("refused");
    assert!(e.contains("jwt.public_keys[0]"), "{e}");
}

#[tokio::test]
async fn every_algorithm_is_accepted_with_and_without_kid() {
    let idp = MockIdp::start().await;
    let v = verifier(&config(&idp));
    for alg in SIGNING_ALGORITHMS {
        let claims = with(
            idp.standard_claims("alice"),
            "email",
            json!("alice@example.com"),
        );
        let id = v.verify(&idp.sign(alg, &claims)).await;
        let id = id.unwrap_or_else(|e| panic!("{alg:?} with kid: {e:?}"));
        assert_eq!(id.user_id.as_deref(), Some("alice"));
        assert_eq!(id.email.as_deref(), Some("alice@example.com"));
        assert_eq!(id.issuer, idp.issuer());
        assert_eq!(id.expires_at, claims["exp"].as_i64().expect("exp"));
        let no_kid = idp.sign_with_kid(alg, None, &claims);
        v.verify(&no_kid)
            .await
            .unwrap_or_else(|e| panic!("{alg:?} without kid: {e:?}"));
    }
    assert_eq!(idp.fetch_count(), 1, "one lazy load serves every algorithm");
}

#[tokio::test]
async fn every_failed_check_is_unauthorized() {
    let idp = MockIdp::start().await;
    let v = verifier(&config(&idp));
    let t = now();
    let good = idp.standard_claims("bob");
    let sign = |claims: &Value| idp.sign(Algorithm::RS256, claims);
    let tampered = {
        let token = sign(&good);
        let other = sign(&with(good.clone(), "sub", json!("admin")));
        let parts: Vec<&str> = token.split('.').collect();
        let other_payload = other.split('.').nth(1).expect("payload");
        format!("{}.{}.{}", parts[0], other_payload, parts[2])
    };
    let cases: Vec<(&str, String, &str)> = vec![
        ("alg none", idp.unsigned_none(&good), "jwt_alg_not_allowed"),
        (
            "HS256 signed with the RSA public key",
            idp.hs256_with_public_key(&good),
            "jwt_alg_not_allowed",
        ),
        (
            "expired beyond the leeway",
            sign(&with(good.clone(), "exp", json!(t - 31))),
            "jwt_expired",
        ),
        (
            "nbf in the future beyond the leeway",
            sign(&with(good.clone(), "nbf", json!(t + 120))),
            "jwt_not_yet_valid",
        ),
        (
            "iat in the future beyond the leeway",
            sign(&with(good.clone(), "iat", json!(t + 120))),
            "jwt_issued_in_future",
        ),
        (
            "missing exp",
            sign(&without(good.clone(), "exp")),
            "jwt_missing_exp",
        ),
        (
            "wrong issuer",
            sign(&with(good.clone(), "iss", json!("https://evil.example"))),
            "jwt_wrong_issuer",
        ),
        (
            "missing issuer",
            sign(&without(good.clone(), "iss")),
            "jwt_wrong_issuer",
        ),
        (
            "wrong audience",
            sign(&with(good.clone(), "aud", json!(["other", "another"]))),
            "jwt_wrong_audience",
        ),
        (
            "missing audience",
            sign(&without(good.clone(), "aud")),
            "jwt_wrong_audience",
        ),
        (
            "unknown kid",
            idp.sign_with_kid(Algorithm::RS256, Some("no-such-kid"), &good),
            "jwt_unknown_kid",
        ),
        (
            "key not in the JWKS",
            idp.sign_with_foreign_key(Algorithm::ES256, &good),
            "jwt_unknown_kid",
        ),
        (
            "EC signature under an RSA kid",
            idp.sign_with_kid(Algorithm::ES256, Some(&idp.kid(Algorithm::RS256)), &good),
            "jwt_key_mismatch",
        ),
        (
            "ES384 under the P-256 kid",
            idp.sign_with_kid(Algorithm::ES384, Some(&idp.kid(Algorithm::ES256)), &good),
            "jwt_key_mismatch",
        ),
        (
            "PS256 under a JWK whose alg is RS256 (valid RSA signature)",
            idp.sign_with_kid(Algorithm::PS256, Some(&idp.kid(Algorithm::RS256)), &good),
            "jwt_key_mismatch",
        ),
        ("tampered payload", tampered, "jwt_bad_signature"),
        (
            "oversized",
            sign(&with(good.clone(), "pad", json!("x".repeat(20_000)))),
            "jwt_too_large",
        ),
        ("garbage", "garbage".into(), "jwt_malformed"),
        (
            "two segments",
            "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJ4In0".into(),
            "jwt_malformed",
        ),
        ("not JSON", "bm90.anNvbg.c2ln".into(), "jwt_malformed"),
        ("empty", String::new(), "jwt_malformed"),
    ];
    for (name, token, expected) in cases {
        assert_eq!(reason(v.verify(&token).await), expected, "{name}");
    }
    // The unknown kids above caused one refetch (after the lazy load), not one each.
    assert_eq!(idp.fetch_count(), 2);

    // The same token passes once nothing is wrong with it.
    v.verify(&sign(&good)).await.expect("good token");
}

#[tokio::test]
async fn leeway_applies_to_exp_nbf_and_iat() {
    let idp = MockIdp::start().await;
    let v = verifier(&config(&idp));
    let t = now();
    let claims = idp.standard_claims("carol");
    let claims = with(claims, "exp", json!(t - 10));
    let claims = with(claims, "nbf", json!(t + 10));
    let claims = with(claims, "iat", json!(t + 10));
    v.verify(&idp.sign(Algorithm::ES256, &claims))
        .await
        .expect("within the leeway");

    let strict = JwtConfig {
        leeway_s: 0,
        ..config(&idp)
    };
    let v = verifier(&strict);
    let claims = with(idp.standard_claims("carol"), "exp", json!(t - 1));
    assert_eq!(
        reason(v.verify(&idp.sign(Algorithm::ES256, &claims)).await),
        "jwt_expired"
    );
}

#[tokio::test]
async fn algorithms_outside_the_allow_list_are_refused() {
    let idp = MockIdp::start().await;
    let v = verifier(&JwtConfig {
        algorithms: vec!["ES256".into()],
        ..config(&idp)
    });
    let claims = idp.standard_claims("dave");
    v.verify(&idp.sign(Algorithm::ES256, &claims))
        .await
        .expect("ES256 allowed");
    for alg in [
        Algorithm::RS256,
        Algorithm::PS256,
        Algorithm::EdDSA,
        Algorithm::ES384,
    ] {
        assert_eq!(
            reason(v.verify(&idp.sign(alg, &claims)).await),
            "jwt_alg_not_allowed",
            "{alg:?}"
        );
    }
}

#[tokio::test]
async fn rotation_is_accepted_after_one_refetch() {
    let idp = MockIdp::start().await;
    let v = verifier(&JwtConfig {
        verified_token_cache: false,
        ..config(&idp)
    });
    let claims = idp.standard_claims("erin");
    let old = idp.sign(Algorithm::RS256, &claims);
    v.verify(&old).await.expect("old key");
    assert_eq!(idp.fetch_count(), 1);

    idp.rotate();
    let new = idp.sign(Algorithm::RS256, &claims);
    assert_ne!(idp.kid(Algorithm::RS256), old_kid(&old));
    v.verify(&new).await.expect("new key after a refetch");
    assert_eq!(idp.fetch_count(), 2, "exactly one refetch");
    v.verify(&new).await.expect("new key, cached set");
    assert_eq!(idp.fetch_count(), 2);

    // The old key left the JWKS; within the min-refetch interval no new fetch happens.
    assert_eq!(reason(v.verify(&old).await), "jwt_unknown_kid");
    assert_eq!(idp.fetch_count(), 2);
}

fn old_kid(token: &str) -> String {
    jsonwebtoken::decode_header(token)
        .expect("header")
        .kid
        .expect("kid")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_unknown_kids_share_one_fetch() {
    let idp = MockIdp::start().await;
    // An interval no slow machine outlasts: signing 100 tokens in a debug build may take
    // longer than the default 10 s.
    let config = || JwtConfig {
        jwks_min_refetch_s: 3600,
        ..config(&idp)
    };
    let v = Arc::new(verifier(&config()));
    let claims = idp.standard_claims("frank");

    // 100 concurrent first requests: one (lazy) load.
    let tokens: Vec<String> = (0..100)
        .map(|i| idp.sign(Algorithm::EdDSA, &with(claims.clone(), "n", json!(i))))
        .collect();
    let results = run_concurrently(&v, tokens).await;
    assert!(results.iter().all(Result::is_ok), "{results:?}");
    assert_eq!(idp.fetch_count(), 1);

    // After a rotation: 100 concurrent tokens with the (unknown) new kid, one refetch.
    idp.rotate();
    let tokens: Vec<String> = (0..100)
        .map(|i| idp.sign(Algorithm::ES384, &with(claims.clone(), "n", json!(i))))
        .collect();
    let results = run_concurrently(&v, tokens).await;
    assert!(results.iter().all(Result::is_ok), "{results:?}");
    assert_eq!(idp.fetch_count(), 2);

    // 100 concurrent tokens with kids that exist nowhere, within the interval: no fetch.
    let tokens: Vec<String> = (0..100)
        .map(|i| idp.sign_with_kid(Algorithm::RS256, Some(&format!("ghost-{i}")), &claims))
        .collect();
    let results = run_concurrently(&v, tokens).await;
    assert!(
        results
            .iter()
            .all(|r| matches!(r, Err(JwtError::Unauthorized("jwt_unknown_kid")))),
        "{results:?}"
    );
    assert_eq!(idp.fetch_count(), 2);

    // A fresh verifier whose set is loaded: 100 unknown kids cause exactly one fetch.
    let v = Arc::new(verifier(&config()));
    v.verify(&idp.sign(Algorithm::RS256, &claims))
        .await
        .expect("load");
    assert_eq!(idp.fetch_count(), 3);
    let tokens: Vec<String> = (0..100)
        .map(|i| idp.sign_with_kid(Algorithm::RS256, Some(&format!("ghost-{i}")), &claims))
        .collect();
    let results = run_concurrently(&v, tokens).await;
    assert!(results.iter().all(Result::is_err));
    assert_eq!(idp.fetch_count(), 4);
}

async fn run_concurrently(
    v: &Arc<JwtVerifier>,
    tokens: Vec<String>,
) -> Vec<Result<JwtIdentity, JwtError>> {
    let barrier = Arc::new(tokio::sync::Barrier::new(tokens.len()));
    let tasks: Vec<_> = tokens
        .into_iter()
        .map(|token| {
            let v = Arc::clone(v);
            let barrier = Arc::clone(&barrier);
            #[expect(
                clippy::disallowed_methods,
                reason = "real concurrency for the test, joined below"
            )]
            tokio::spawn(async move {
                barrier.wait().await;
                v.verify(&token).await
            })
        })
        .collect();
    let mut results = Vec::with_capacity(tasks.len());
    for task in tasks {
        results.push(task.await.expect("task"));
    }
    results
}

#[tokio::test]
async fn a_failed_refresh_keeps_the_last_good_keys() {
    let idp = MockIdp::start().await;
    let v = verifier(&JwtConfig {
        verified_token_cache: false,
        ..config(&idp)
    });
    let token = idp.sign(Algorithm::PS384, &idp.standard_claims("gina"));
    v.verify(&token).await.expect("loaded");

    idp.set_available(false);
    v.providers[0].store.refresh().await;
    assert_eq!(idp.fetch_count(), 2);
    v.verify(&token).await.expect("kept after a 500");

    idp.stop().await;
    v.providers[0].store.refresh().await;
    v.verify(&token)
        .await
        .expect("kept after a refused connection");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn periodic_refresh_follows_rotation_and_survives_an_outage() {
    let idp = MockIdp::start().await;
    let v = Arc::new(verifier(&JwtConfig {
        jwks_refresh_s: 1,
        verified_token_cache: false,
        ..config(&idp)
    }));
    let tasks = crate::tasks::BackgroundTasks::new();
    v.start_refresh(&tasks.spawner());
    idp.wait_for_fetches(1).await;
    let claims = idp.standard_claims("hank");
    v.verify(&idp.sign(Algorithm::RS512, &claims))
        .await
        .expect("initial keys");

    // A refresh that starts after the rotation has completed once the next one began.
    idp.rotate();
    let base = idp.fetch_count();
    idp.wait_for_fetches(base + 2).await;
    // With the IdP down an on-demand refetch could not help: the periodic one did it.
    idp.set_available(false);
    let rotated = idp.sign(Algorithm::RS512, &claims);
    v.verify(&rotated)
        .await
        .expect("rotated keys from the periodic refresh");

    // Failing refreshes keep the keys.
    let base = idp.fetch_count();
    idp.wait_for_fetches(base + 2).await;
    v.verify(&rotated)
        .await
        .expect("kept while the IdP is down");
    assert!(tasks.shutdown(std::time::Duration::from_secs(5)).await);
}

/// A provider of `jwt.providers` fetching its keys from `jwks_url`.
fn jwks_provider(idp: &MockIdp) -> ProviderConfig {
    ProviderConfig {
        issuer: idp.issuer(),
        jwks_url: Some(idp.jwks_url()),
        ..ProviderConfig::default()
    }
}

#[tokio::test]
async fn several_providers_verify_their_own_tokens_and_fail_independently() {
    let a = MockIdp::start().await;
    let b = MockIdp::start().await;
    b.rotate(); // different keys from `a`
    let v = verifier(&JwtConfig {
        jwks_urls: vec![],
        issuers: vec![],
        providers: vec![jwks_provider(&a), jwks_provider(&b)],
        ..config(&a)
    });
    v.verify(&a.sign(Algorithm::ES256, &a.standard_claims("x")))
        .await
        .expect("from a");
    v.verify(&b.sign(Algorithm::ES256, &b.standard_claims("y")))
        .await
        .expect("from b");
    assert_eq!((a.fetch_count(), b.fetch_count()), (1, 1));

    // One IdP down from the start: the other still serves.
    let c = MockIdp::start().await;
    c.set_available(false);
    let v = verifier(&JwtConfig {
        jwks_urls: vec![],
        issuers: vec![],
        providers: vec![jwks_provider(&c), jwks_provider(&a)],
        ..config(&a)
    });
    v.verify(&a.sign(Algorithm::EdDSA, &a.standard_claims("z")))
        .await
        .expect("a still verifies");
    assert_eq!(
        reason(
            v.verify(&c.sign(Algorithm::EdDSA, &c.standard_claims("z")))
                .await
        ),
        "jwt_unknown_kid"
    );

    // The flat form with one issuer may still merge several JWKS URLs.
    let v = verifier(&JwtConfig {
        jwks_urls: vec![c.jwks_url(), a.jwks_url()],
        ..config(&a)
    });
    v.verify(&a.sign(Algorithm::EdDSA, &a.standard_claims("w")))
        .await
        .expect("a through the flat form");
}

/// SPEC §6.2: a key verifies only tokens of the issuer it was configured for, whether
/// it came from a JWKS or a static PEM, with or without a `kid`.
#[tokio::test]
async fn keys_are_bound_to_their_issuer() {
    let a = MockIdp::start().await;
    let b = MockIdp::start().await;
    b.rotate();
    let statics = ProviderConfig {
        issuer: "urn:static".into(),
        public_keys: vec![PublicKeyConfig {
            pem: b.public_pem(Algorithm::ES256),
            kid: None,
        }],
        ..ProviderConfig::default()
    };
    let v = verifier(&JwtConfig {
        jwks_urls: vec![],
        issuers: vec![],
        providers: vec![jwks_provider(&a), jwks_provider(&b), statics],
        verified_token_cache: false,
        ..config(&a)
    });
    let claiming = |iss: &str| with(a.standard_claims("mallory"), "iss", json!(iss));
    for alg in SIGNING_ALGORITHMS {
        // Signed by a, claiming b: b's keys do not verify it.
        let forged = a.sign(alg, &claiming(&b.issuer()));
        let r = reason(v.verify(&forged).await);
        assert!(r == "jwt_unknown_kid", "{alg:?}: {r}");
        let forged = a.sign_with_kid(alg, None, &claiming(&b.issuer()));
        let r = reason(v.verify(&forged).await);
        assert!(
            r == "jwt_bad_signature" || r == "jwt_no_key_for_alg",
            "{alg:?}: {r}"
        );
        // ... nor does a static key of another provider.
        let forged = a.sign_with_kid(alg, None, &claiming("urn:static"));
        let r = reason(v.verify(&forged).await);
        assert!(
            r == "jwt_bad_signature" || r == "jwt_no_key_for_alg",
            "{alg:?}: {r}"
        );
        // An issuer nobody configured.
        let r = reason(v.verify(&a.sign(alg, &claiming("https://nobody"))).await);
        assert_eq!(r, "jwt_wrong_issuer", "{alg:?}");
        // Its own tokens verify.
        v.verify(&a.sign(alg, &a.standard_claims("alice")))
            .await
            .unwrap_or_else(|e| panic!("{alg:?}: {e:?}"));
        v.verify(&b.sign(alg, &b.standard_claims("bob")))
            .await
            .unwrap_or_else(|e| panic!("{alg:?}: {e:?}"));
    }
    let own = b.sign_with_kid(Algorithm::ES256, None, &claiming("urn:static"));
    let id = v.verify(&own).await.expect("the static key's own issuer");
    assert_eq!(id.issuer, "urn:static");
    // A token without `iss` belongs to no provider.
    let r = reason(
        v.verify(&a.sign(Algorithm::RS256, &without(a.standard_claims("n"), "iss")))
            .await,
    );
    assert_eq!(r, "jwt_wrong_issuer");
}

#[tokio::test]
async fn provider_audiences_override_jwt_audiences() {
    let a = MockIdp::start().await;
    let b = MockIdp::start().await;
    let v = verifier(&JwtConfig {
        jwks_urls: vec![],
        issuers: vec![],
        providers: vec![
            ProviderConfig {
                audiences: Some(vec!["api://a".into()]),
                ..jwks_provider(&a)
            },
            jwks_provider(&b),
        ],
        ..config(&a)
    });
    let aud = |idp: &MockIdp, aud: &str| {
        idp.sign(
            Algorithm::RS256,
            &with(idp.standard_claims("u"), "aud", json!(aud)),
        )
    };
    v.verify(&aud(&a, "api://a"))
        .await
        .expect("a's own audience");
    assert_eq!(
        reason(v.verify(&aud(&a, AUDIENCE)).await),
        "jwt_wrong_audience"
    );
    v.verify(&aud(&b, AUDIENCE))
        .await
        .expect("b inherits jwt.audiences");
    assert_eq!(
        reason(v.verify(&aud(&b, "api://a")).await),
        "jwt_wrong_audience"
    );
}

#[tokio::test]
async fn discovery_reads_jwks_uri_and_refuses_another_issuer() {
    let a = MockIdp::start().await;
    let b = MockIdp::start().await;
    b.rotate();
    let discovered = |idp: &MockIdp| ProviderConfig {
        issuer: idp.issuer(),
        discovery: true,
        ..ProviderConfig::default()
    };
    b.set_discovery_issuer(Some(&a.issuer()));
    let v = verifier(&JwtConfig {
        jwks_urls: vec![],
        issuers: vec![],
        providers: vec![discovered(&a), discovered(&b)],
        verified_token_cache: false,
        ..config(&a)
    });
    let claims = a.standard_claims("dora");
    v.verify(&a.sign(Algorithm::RS256, &claims))
        .await
        .expect("keys through discovery");
    assert_eq!((a.discovery_count(), a.fetch_count()), (1, 1));
    // Every fetch reads the document again.
    a.rotate();
    v.verify(&a.sign(Algorithm::RS256, &claims))
        .await
        .expect("rotated keys through discovery");
    assert_eq!((a.discovery_count(), a.fetch_count()), (2, 2));

    // b's document names a's issuer: refused, its JWKS never fetched, its tokens 401.
    let r = reason(
        v.verify(&b.sign(Algorithm::RS256, &b.standard_claims("eve")))
            .await,
    );
    assert_eq!(r, "jwt_unknown_kid");
    assert_eq!((b.discovery_count(), b.fetch_count()), (1, 0));
    // Once it tells the truth, the next fetch loads its keys.
    b.set_discovery_issuer(None);
    assert!(v.providers[1].store.refresh().await);
    v.verify(&b.sign(Algorithm::RS256, &b.standard_claims("eve")))
        .await
        .expect("b after an honest document");
}

#[tokio::test]
async fn static_pem_keys_verify_without_any_jwks() {
    let idp = MockIdp::start().await;
    let config = JwtConfig {
        jwks_urls: vec![],
        public_keys: vec![
            PublicKeyConfig {
                pem: idp.rsa_public_pem(),
                kid: None,
            },
            PublicKeyConfig {
                pem: idp.public_pem(Algorithm::ES256),
                kid: Some("ec-static".into()),
            },
            PublicKeyConfig {
                pem: idp.public_pem(Algorithm::ES384),
                kid: None,
            },
            PublicKeyConfig {
                pem: idp.public_pem(Algorithm::EdDSA),
                kid: Some("ed".into()),
            },
        ],
        ..config(&idp)
    };
    let v = verifier(&config);
    let claims = idp.standard_claims("ivy");
    // A key without kid matches tokens whatever their kid.
    for alg in [Algorithm::RS256, Algorithm::PS512, Algorithm::ES384] {
        v.verify(&idp.sign(alg, &claims))
            .await
            .unwrap_or_else(|e| panic!("{alg:?}: {e:?}"));
    }
    v.verify(&idp.sign_with_kid(Algorithm::ES256, Some("ec-static"), &claims))
        .await
        .expect("ES256 by kid");
    v.verify(&idp.sign_with_kid(Algorithm::ES256, None, &claims))
        .await
        .expect("ES256 without kid");
    v.verify(&idp.sign_with_kid(Algorithm::EdDSA, Some("ed"), &claims))
        .await
        .expect("EdDSA by kid");
    // A key with a kid only matches that kid.
    assert_eq!(
        reason(v.verify(&idp.sign(Algorithm::EdDSA, &claims)).await),
        "jwt_unknown_kid"
    );
    assert_eq!(
        reason(
            v.verify(&idp.sign_with_kid(Algorithm::ES384, Some("ec-static"), &claims))
                .await
        ),
        "jwt_key_mismatch"
    );
    assert_eq!(idp.fetch_count(), 0, "no JWKS configured, none fetched");
}

fn policy_config(idp: &MockIdp, edit: impl FnOnce(&mut JwtConfig)) -> JwtConfig {
    let mut config = config(idp);
    config.verified_token_cache = false;
    edit(&mut config);
    config
}

#[tokio::test]
async fn required_scopes_accept_scope_strings_and_scp_arrays() {
    let idp = MockIdp::start().await;
    let v = verifier(&policy_config(&idp, |c| {
        c.required_scopes = vec!["llm:use".into()];
    }));
    let sign = |claims: &Value| idp.sign(Algorithm::ES256, claims);
    let base = idp.standard_claims("jack");
    let id = v
        .verify(&sign(&with(base.clone(), "scope", json!("openid llm:use"))))
        .await
        .expect("scope string");
    assert_eq!(id.scopes, ["openid", "llm:use"]);
    v.verify(&sign(&with(base.clone(), "scp", json!(["llm:use"]))))
        .await
        .expect("scp array");
    v.verify(&sign(&with(base.clone(), "scope", json!(["a", "llm:use"]))))
        .await
        .expect("scope array");
    let message = denied(
        v.verify(&sign(&with(base.clone(), "scope", json!("openid llm"))))
            .await,
    );
    assert!(message.contains("scope"), "{message}");
    denied(v.verify(&sign(&base)).await);
    // JWT checks come first: an expired token without the scope is a 401.
    let expired = with(base, "exp", json!(now() - 3600));
    reason(v.verify(&sign(&expired)).await);
}

#[tokio::test]
async fn allowed_email_domains() {
    let idp = MockIdp::start().await;
    let v = verifier(&policy_config(&idp, |c| {
        c.allowed_email_domains = vec!["example.com".into()];
    }));
    let sign = |email: Option<&str>| {
        let mut claims = idp.standard_claims("kate");
        if let Some(email) = email {
            claims["email"] = json!(email);
        }
        idp.sign(Algorithm::RS384, &claims)
    };
    v.verify(&sign(Some("kate@Example.COM")))
        .await
        .expect("allowed");
    denied(v.verify(&sign(Some("kate@example.org"))).await);
    denied(v.verify(&sign(Some("kate@notexample.com"))).await);
    denied(v.verify(&sign(None)).await);
}

#[tokio::test]
async fn required_claims_with_dotted_paths_and_arrays() {
    let idp = MockIdp::start().await;
    let v = verifier(&policy_config(&idp, |c| {
        c.required_claims = [
            ("ext.dept".to_string(), vec![json!("ai"), json!("ml")]),
            ("groups".to_string(), vec![json!("llm-users")]),
            ("email_verified".to_string(), vec![json!(true)]),
        ]
        .into_iter()
        .collect();
    }));
    let sign = |claims: &Value| idp.sign(Algorithm::PS256, claims);
    let good = idp.standard_claims("liam");
    let good = with(good, "ext", json!({"dept": "ml"}));
    let good = with(good, "groups", json!(["staff", "llm-users"]));
    let good = with(good, "email_verified", json!(true));
    v.verify(&sign(&good)).await.expect("all required claims");

    let cases = [
        with(good.clone(), "ext", json!({"dept": "sales"})),
        with(good.clone(), "ext", json!("ml")),
        without(good.clone(), "ext"),
        with(good.clone(), "groups", json!(["staff"])),
        with(good.clone(), "groups", json!("staff")),
        with(good.clone(), "email_verified", json!("true")),
    ];
    for claims in cases {
        let message = denied(v.verify(&sign(&claims)).await);
        assert!(message.contains("required claim"), "{message}");
    }
    v.verify(&sign(&with(good, "groups", json!("llm-users"))))
        .await
        .expect("a string claim equal to an accepted value");
}

#[tokio::test]
async fn identity_fields() {
    let idp = MockIdp::start().await;
    let v = verifier(&policy_config(&idp, |c| {
        c.team_id_claim = Some("ext.team".into());
        c.team_default = Some("default-team".into());
        c.org_id_claim = Some("org".into());
        c.admin_scope = Some("tollgate:admin".into());
        c.role_claim = Some("roles".into());
        c.role_map = [
            ("readers".to_string(), Role::Viewer),
            ("leads".to_string(), Role::TeamAdmin),
        ]
        .into_iter()
        .collect();
    }));
    let sign = |claims: &Value| idp.sign(Algorithm::ES384, claims);
    let base = idp.standard_claims("mia");

    let claims = with(base.clone(), "ext", json!({"team": "t1", "level": 3}));
    let claims = with(claims, "org", json!(42));
    let claims = with(claims, "roles", json!(["readers", "leads", "unknown"]));
    let id = v.verify(&sign(&claims)).await.expect("verified");
    assert_eq!(id.team_id.as_deref(), Some("t1"));
    assert_eq!(id.org_id.as_deref(), Some("42"));
    assert!(!id.is_admin);
    assert_eq!(id.role, Some(Role::TeamAdmin));
    assert_eq!(id.claim_str("ext.level").as_deref(), Some("3"));
    assert_eq!(id.claim_str("sub").as_deref(), Some("mia"));
    assert_eq!(id.claim_str("ext"), None);
    assert_eq!(id.claim_str("roles"), None);
    assert_eq!(id.claim_str("nope"), None);
    assert_eq!(id.claims["ext"]["team"], "t1");

    let id = v.verify(&sign(&base)).await.expect("verified");
    assert_eq!(id.team_id.as_deref(), Some("default-team"));
    assert_eq!(id.org_id, None);
    assert_eq!(id.role, None);
    assert!(id.scopes.is_empty());

    let admin = with(base.clone(), "scope", json!("openid tollgate:admin"));
    let admin = with(admin, "roles", json!("readers"));
    let id = v.verify(&sign(&admin)).await.expect("verified");
    assert!(id.is_admin);
    assert_eq!(id.role, Some(Role::ProxyAdmin));
    let id = v
        .verify(&sign(&with(base, "scp", json!(["tollgate:admin"]))))
        .await
        .expect("verified");
    assert!(id.is_admin, "admin scope through scp");

    // No team claim configured and no default: no team. A numeric user id is printed.
    let v = verifier(&policy_config(&idp, |c| c.user_id_claim = "uid".into()));
    let id = v
        .verify(&sign(&with(
            idp.standard_claims("nora"),
            "uid",
            json!(1234),
        )))
        .await
        .expect("verified");
    assert_eq!(id.team_id, None);
    assert_eq!(id.user_id.as_deref(), Some("1234"));
}

#[tokio::test]
async fn verified_tokens_are_cached_until_min_of_exp_and_60s() {
    let idp = MockIdp::start().await;
    let v = verifier(&JwtConfig {
        leeway_s: 0,
        ..config(&idp)
    });
    // Verified at explicit times with no leeway: the claims are pinned to `t` too, or a
    // second boundary crossed while signing would make them "not yet valid".
    let t = now();
    let issued_at_t = |claims: Value| with(with(claims, "iat", json!(t)), "nbf", json!(t));
    let token = idp.sign(
        Algorithm::RS256,
        &issued_at_t(with(idp.standard_claims("olga"), "exp", json!(t + 600))),
    );
    v.verify_at(&token, t).await.expect("verified");
    assert_eq!(checks(&v), 1);
    v.verify_at(&token, t + 59).await.expect("cache hit");
    assert_eq!(checks(&v), 1, "a cache hit checks no signature");

    // The cache skips the signature: the key may even have left the key set.
    idp.rotate();
    v.verify(&idp.sign(Algorithm::RS256, &idp.standard_claims("olga")))
        .await
        .expect("new keys loaded");
    assert_eq!(checks(&v), 2);
    v.verify_at(&token, t + 1).await.expect("still cached");
    assert_eq!(checks(&v), 2);

    // After 60 s the entry is not used: full verification, which now fails (old kid).
    assert_eq!(reason(v.verify_at(&token, t + 61).await), "jwt_unknown_kid");

    // An entry never outlives the token's exp.
    let short = issued_at_t(with(idp.standard_claims("olga"), "exp", json!(t + 5)));
    let short = idp.sign(Algorithm::ES256, &short);
    v.verify_at(&short, t).await.expect("verified");
    let before = checks(&v);
    v.verify_at(&short, t + 4).await.expect("cache hit");
    assert_eq!(checks(&v), before);
    assert_eq!(reason(v.verify_at(&short, t + 5).await), "jwt_expired");
    assert_eq!(checks(&v), before + 1, "the expired entry was not used");

    // Policy denials and failures are not cached.
    let v = verifier(&JwtConfig {
        required_scopes: vec!["x".into()],
        ..config(&idp)
    });
    let token = idp.sign(Algorithm::ES256, &idp.standard_claims("pia"));
    denied(v.verify(&token).await);
    denied(v.verify(&token).await);
    assert_eq!(checks(&v), 2);
}

#[tokio::test]
async fn without_the_cache_every_request_checks_the_signature() {
    let idp = MockIdp::start().await;
    let v = verifier(&JwtConfig {
        verified_token_cache: false,
        ..config(&idp)
    });
    let token = idp.sign(Algorithm::EdDSA, &idp.standard_claims("quinn"));
    v.verify(&token).await.expect("verified");
    v.verify(&token).await.expect("verified");
    assert_eq!(checks(&v), 2);
}
