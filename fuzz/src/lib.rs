//! Shared set-up for the fuzz targets: JWT verifiers configured as a deployment would
//! be, with the mock IdP's fixture keys (`testkit/fixtures/`), and a fixed clock.

use std::sync::LazyLock;

use futures_util::FutureExt;
use tollgate::auth::jwt::{JwtError, JwtIdentity, JwtVerifier, fuzzing};
use tollgate::config::{JwtConfig, PublicKeyConfig, Role};

pub const ISSUER: &str = "https://idp.example";
pub const AUDIENCE: &str = "tollgate";
/// The clock of every verification (2027-01-15T08:00:00Z).
pub const NOW: i64 = 1_800_000_000;
pub const LEEWAY_S: i64 = 30;
/// The scope the strict verifier requires, and the admin scope of both.
pub const REQUIRED_SCOPE: &str = "llm";
pub const ADMIN_SCOPE: &str = "tollgate:admin";
pub const EMAIL_DOMAIN: &str = "example.com";

/// The Ed25519 private key whose public half the verifiers know under kid `ed25519`.
pub const ED25519_PRIVATE_PEM: &str = include_str!("../../testkit/fixtures/set1/ed25519.pem");

fn key(pem: &str, kid: Option<&str>) -> PublicKeyConfig {
    PublicKeyConfig {
        pem: pem.to_owned(),
        kid: kid.map(str::to_owned),
    }
}

/// Every fixture key type, with kids, and one Ed25519 key without a kid (tried for
/// tokens whose kid is unknown).
fn keys() -> Vec<PublicKeyConfig> {
    vec![
        key(
            include_str!("../../testkit/fixtures/set1/rsa.pub.pem"),
            Some("rsa"),
        ),
        key(
            include_str!("../../testkit/fixtures/set1/ec256.pub.pem"),
            Some("ec256"),
        ),
        key(
            include_str!("../../testkit/fixtures/set1/ec384.pub.pem"),
            Some("ec384"),
        ),
        key(
            include_str!("../../testkit/fixtures/set1/ed25519.pub.pem"),
            Some("ed25519"),
        ),
        key(
            include_str!("../../testkit/fixtures/set2/ed25519.pub.pem"),
            None,
        ),
    ]
}

/// No issuer, audience or policy requirement; roles, team and org from claims.
pub fn open_config() -> JwtConfig {
    JwtConfig {
        enabled: true,
        public_keys: keys(),
        leeway_s: LEEWAY_S as u64,
        verified_token_cache: false,
        team_id_claim: Some("ext.team".into()),
        org_id_claim: Some("https://example.com/org".into()),
        team_default: Some("default-team".into()),
        admin_scope: Some(ADMIN_SCOPE.into()),
        role_claim: Some("roles".into()),
        role_map: [
            ("admin".to_owned(), Role::ProxyAdmin),
            ("lead".to_owned(), Role::TeamAdmin),
            ("reader".to_owned(), Role::Viewer),
        ]
        .into_iter()
        .collect(),
        ..JwtConfig::default()
    }
}

/// One issuer, one audience, a required scope, an email domain and a required claim.
pub fn strict_config() -> JwtConfig {
    JwtConfig {
        issuers: vec![ISSUER.into()],
        audiences: vec![AUDIENCE.into()],
        required_scopes: vec![REQUIRED_SCOPE.into()],
        allowed_email_domains: vec![format!("@{}", EMAIL_DOMAIN.to_uppercase())],
        required_claims: [(
            "ext.tier".to_owned(),
            vec![serde_json::json!("gold"), serde_json::json!(2)],
        )]
        .into_iter()
        .collect(),
        ..open_config()
    }
}

fn verifier(config: &JwtConfig) -> JwtVerifier {
    let http = tollgate::outbound::client_builder()
        .build()
        .expect("an HTTP client");
    JwtVerifier::new(config, http).expect("the fuzz JWT configuration is valid")
}

pub static OPEN: LazyLock<JwtVerifier> = LazyLock::new(|| verifier(&open_config()));
pub static STRICT: LazyLock<JwtVerifier> = LazyLock::new(|| verifier(&strict_config()));

/// Verifies at [`NOW`]. Without JWKS URLs nothing waits on I/O, so the future is ready
/// at once; a verification that is not would be a bug.
pub fn verify(verifier: &JwtVerifier, token: &str) -> Result<JwtIdentity, JwtError> {
    fuzzing::verify_at(verifier, token, NOW)
        .now_or_never()
        .expect("a verification without JWKS URLs completes without waiting")
}
