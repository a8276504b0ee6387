//! Several identity providers (issue 11, SPEC §6.2 "keys are bound to their issuer"):
//! `jwt.providers`, each with its own keys and audiences; OIDC discovery; an IdP that is
//! down at start-up; and the ambiguous flat form refused at start-up.

use std::process::{Command, Stdio};

use serde_json::{Value, json};
use testkit::idp::MockIdp;
use tollgate::config::{Config, ProviderConfig, UnregisteredPolicy};

use crate::jwt_support::*;
use crate::support::*;

const ADMIN: &str = "tollgate:admin";

/// `idp`'s standard claims for `sub` with the admin scope.
fn admin_claims(idp: &MockIdp, sub: &str) -> Value {
    let mut claims = person(idp, sub, Some(&format!("{sub}@corp.example")));
    claims["scope"] = json!(ADMIN);
    claims
}

/// `jwt.providers` = `providers` (audience `tollgate` unless a provider says otherwise),
/// admin scope [`ADMIN`], the `reject` mapping policy on `email`.
fn with_providers(providers: Vec<ProviderConfig>) -> impl FnOnce(&mut Config) + Send + 'static {
    move |c: &mut Config| {
        c.jwt.enabled = true;
        c.jwt.providers = providers;
        c.jwt.audiences = vec!["tollgate".into()];
        c.jwt.admin_scope = Some(ADMIN.into());
        c.jwt.virtual_key_claim = Some(CLAIM.into());
        c.jwt.unregistered_policy = UnregisteredPolicy::Reject;
    }
}

/// The status of `GET /key/list` (an admin-only route) with `bearer`.
async fn key_list_status(app: &TestApp, bearer: &str) -> u16 {
    app.get("/key/list", Some(bearer)).await.status().as_u16()
}

/// The 401 of an unknown virtual key, for comparing every refusal with.
async fn reference_401(app: &TestApp) -> String {
    let unknown = format!("sk-{}", "x".repeat(40));
    anonymous_401(app.get("/api/tags", Some(&unknown)).await).await
}

/// SPEC §6.2: a token signed with provider A's key but claiming B's issuer is the usual
/// 401 — with the admin scope on the management API, and for an identity B has mapped —
/// while each provider's own tokens work.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_provider_cannot_mint_another_providers_identities() {
    let a = MockIdp::start().await;
    let b = MockIdp::start().await;
    b.rotate(); // the two IdPs sign with different keys
    let app = TestApp::builder()
        .config(with_providers(vec![jwks_provider(&a), jwks_provider(&b)]))
        .spawn()
        .await;
    let reference = reference_401(&app).await;

    // Each provider's own admin tokens are admins.
    assert_eq!(
        key_list_status(&app, &token(&a, &admin_claims(&a, "root-a"))).await,
        200
    );
    assert_eq!(
        key_list_status(&app, &token(&b, &admin_claims(&b, "root-b"))).await,
        200
    );

    // Signed by A, claiming B (with and without A's kid, every algorithm): 401.
    let mut forged_claims = admin_claims(&a, "mallory");
    forged_claims["iss"] = json!(b.issuer());
    for alg in testkit::idp::SIGNING_ALGORITHMS {
        for forged in [
            a.sign(alg, &forged_claims),
            a.sign_with_kid(alg, None, &forged_claims),
        ] {
            assert_eq!(
                anonymous_401(app.get("/key/list", Some(&forged)).await).await,
                reference,
                "{alg:?}: a token of A claiming B's issuer is the one 401"
            );
        }
    }

    // B's mapped identity cannot be claimed by A either.
    let (_, key_id) = key_for_models(&app, &["llama3.1:8b"]).await;
    map(&app, &b.issuer(), "victim@corp.example", &key_id).await;
    assert_eq!(
        tags(&app, &token_for(&b, "victim", "victim@corp.example")).await,
        ["llama3.1:8b"]
    );
    let mut as_victim = person(&a, "victim", Some("victim@corp.example"));
    as_victim["iss"] = json!(b.issuer());
    assert_eq!(
        anonymous_401(app.get("/api/tags", Some(&token(&a, &as_victim))).await).await,
        reference
    );

    // An issuer nobody configured is the same 401.
    let mut stranger = admin_claims(&a, "stranger");
    stranger["iss"] = json!("https://idp.nobody.example");
    assert_eq!(
        anonymous_401(app.get("/key/list", Some(&token(&a, &stranger))).await).await,
        reference
    );
    app.shutdown().await;
}

/// A provider's `audiences` replace `jwt.audiences` for its issuer only.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_provider_checks_its_own_audiences() {
    let a = MockIdp::start().await;
    let b = MockIdp::start().await;
    let app = TestApp::builder()
        .config(with_providers(vec![
            ProviderConfig {
                audiences: Some(vec!["api://a".into()]),
                ..jwks_provider(&a)
            },
            jwks_provider(&b),
        ]))
        .spawn()
        .await;
    let for_audience = |idp: &MockIdp, aud: &str| {
        let mut claims = admin_claims(idp, "aud-test");
        claims["aud"] = json!(aud);
        token(idp, &claims)
    };
    assert_eq!(
        key_list_status(&app, &for_audience(&a, "api://a")).await,
        200
    );
    assert_eq!(
        key_list_status(&app, &for_audience(&a, "tollgate")).await,
        401
    );
    assert_eq!(
        key_list_status(&app, &for_audience(&b, "tollgate")).await,
        200
    );
    assert_eq!(
        key_list_status(&app, &for_audience(&b, "api://a")).await,
        401
    );
    app.shutdown().await;
}

/// `discovery: true` reads `jwks_uri` from the issuer's discovery document at start-up
/// and again at every refresh, so a rotation the IdP publishes is picked up by the
/// periodic refresh alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn discovery_finds_the_jwks_at_start_up_and_at_every_refresh() {
    let idp = MockIdp::start().await;
    let app = TestApp::builder()
        .config(with_providers(vec![discovery_provider(&idp)]))
        .config(|c| {
            c.jwt.jwks_refresh_s = 1;
            c.jwt.verified_token_cache = false;
        })
        .spawn()
        .await;
    // The start-up fetch, through the document.
    idp.wait_for_fetches(1).await;
    assert!(idp.discovery_count() >= 1);
    assert_eq!(
        key_list_status(&app, &token(&idp, &admin_claims(&idp, "d"))).await,
        200
    );

    // Rotate; once two more documents were read, a whole refresh ran after the rotation.
    idp.rotate();
    let seen = idp.discovery_count();
    idp.wait_for_discoveries(seen + 2).await;
    // With the JWKS down, an on-demand refetch could not help: the refresh did it.
    idp.set_available(false);
    assert_eq!(
        key_list_status(&app, &token(&idp, &admin_claims(&idp, "d"))).await,
        200
    );
    app.shutdown().await;
}

/// A discovery document naming another issuer is refused: that provider's tokens get
/// the usual 401 (its JWKS is never fetched) while the other provider keeps working.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_discovery_document_naming_another_issuer_is_refused() {
    let honest = MockIdp::start().await;
    let liar = MockIdp::start().await;
    liar.rotate();
    liar.set_discovery_issuer(Some(&honest.issuer()));
    let app = TestApp::builder()
        .config(with_providers(vec![
            discovery_provider(&honest),
            discovery_provider(&liar),
        ]))
        .spawn()
        .await;
    let reference = reference_401(&app).await;
    assert_eq!(
        anonymous_401(
            app.get("/key/list", Some(&token(&liar, &admin_claims(&liar, "l"))))
                .await
        )
        .await,
        reference
    );
    assert!(liar.discovery_count() >= 1, "its document was read");
    assert_eq!(liar.fetch_count(), 0, "and its jwks_uri never followed");
    assert_eq!(
        key_list_status(&app, &token(&honest, &admin_claims(&honest, "h"))).await,
        200
    );
    app.shutdown().await;
}

/// An IdP unreachable at start-up does not stop or hold up start-up: its tokens get 401
/// while the other provider works, and the background retry loads its keys once it is
/// up (on-demand refetches are throttled for an hour here, so only the retry can).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idp_down_at_start_up_is_retried_in_the_background() {
    let up = MockIdp::start().await;
    let down = MockIdp::start().await;
    down.rotate();
    down.stop().await;
    let app = TestApp::builder()
        .config(with_providers(vec![
            jwks_provider(&up),
            discovery_provider(&down),
        ]))
        .config(|c| c.jwt.jwks_min_refetch_s = 3600)
        .spawn()
        .await;
    let reference = reference_401(&app).await;
    assert_eq!(
        key_list_status(&app, &token(&up, &admin_claims(&up, "u"))).await,
        200
    );
    let later = token(&down, &admin_claims(&down, "d"));
    assert_eq!(
        anonymous_401(app.get("/key/list", Some(&later)).await).await,
        reference
    );

    down.restart().await;
    // The retry reads the document, then the JWKS; a request that arrives while it is
    // fetching waits for that fetch (single flight), so no further wait is needed.
    down.wait_for_fetches(1).await;
    assert!(down.discovery_count() >= 1);
    assert_eq!(key_list_status(&app, &later).await, 200);
    assert_eq!(
        key_list_status(&app, &token(&up, &admin_claims(&up, "u"))).await,
        200
    );
    app.shutdown().await;
}

// ------------------------------------------------------------------ start-up errors

/// Runs `tollgate serve` with `yaml` as its configuration; returns (success, stderr).
fn serve_with(yaml: &str) -> (bool, String) {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("tollgate.yaml");
    std::fs::write(&path, yaml).expect("write config");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_tollgate"));
    cmd.env_clear()
        .current_dir(dir.path())
        .stdin(Stdio::null())
        .arg("serve")
        .arg("--config")
        .arg(&path);
    if let Ok(p) = std::env::var("PATH") {
        cmd.env("PATH", p);
    }
    let out = cmd.output().expect("run tollgate");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// SPEC §6.2: the flat form with two or more `issuers` cannot bind keys to issuers, so
/// start-up fails naming `jwt.providers`; so does mixing `providers` with the flat key
/// sources.
#[test]
fn ambiguous_identity_provider_configurations_stop_start_up() {
    let flat_two = "jwt:\n  enabled: true\n  jwks_urls: [\"https://a.example/jwks\", \"https://b.example/jwks\"]\n  issuers: [\"https://a.example\", \"https://b.example\"]\n";
    let mixed = "jwt:\n  enabled: true\n  jwks_urls: [\"https://a.example/jwks\"]\n  providers:\n    - issuer: https://b.example\n      discovery: true\n";
    let two_sources = "jwt:\n  enabled: true\n  providers:\n    - issuer: https://b.example\n      discovery: true\n      jwks_url: https://b.example/jwks\n";
    for (yaml, needle) in [
        (flat_two, "jwt.providers"),
        (mixed, "jwt.providers"),
        (two_sources, "jwt.providers[0]"),
    ] {
        let (ok, stderr) = serve_with(yaml);
        assert!(!ok, "start-up accepted {yaml:?}; stderr: {stderr}");
        assert!(
            stderr.contains(needle),
            "stderr does not name {needle}: {stderr}"
        );
    }
}

/// The same check holds for configuration built in code (the path tests and embedders
/// take): the app does not build.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_app_with_two_flat_issuers_does_not_build() {
    let a = MockIdp::start().await;
    let b = MockIdp::start().await;
    let db = TestDb::create(Backend::Sqlite).await.expect("a database");
    let mut config = Config::default();
    config.database.url = tollgate::config::Secret(db.url().to_string());
    config.jwt.enabled = true;
    config.jwt.jwks_urls = vec![a.jwks_url(), b.jwks_url()];
    config.jwt.issuers = vec![a.issuer(), b.issuer()];
    let built = tollgate::app::App::build_with(config, |store| store).await;
    match built {
        Ok(_) => panic!("an app with two flat issuers was built"),
        Err(e) => assert!(format!("{e:#}").contains("jwt.providers"), "{e:#}"),
    }
}
