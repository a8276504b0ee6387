//! SSO through the proxy (issue 5; SPEC §6.1–§6.3, §6.5): JWT verification against a
//! mock identity provider, the policy checks, the claim → virtual-key mapping policies
//! (`reject`, `fallback`, `auto_register`) with their cache and sentinels, admin
//! identities, and JWT callers on the management API.

use futures_util::future::join_all;
use jsonwebtoken::Algorithm;
use serde_json::json;
use testkit::idp::{MockIdp, SIGNING_ALGORITHMS};
use tollgate::config::{Role, UnregisteredPolicy};
use tollgate::store::{KeyFields, TeamFields};

use crate::jwt_support::*;
use crate::keys_support::{info, ok_json};
use crate::support::*;

/// A valid-looking virtual key nobody minted.
fn unknown_key() -> String {
    format!("sk-{}", "x".repeat(40))
}

fn now() -> i64 {
    chrono::Utc::now().timestamp()
}

/// An app trusting `idp` with `policy`, extra configuration `edit`, and its store
/// wrapped to count mapping-table lookups.
async fn spawn_counted(
    idp: &MockIdp,
    policy: UnregisteredPolicy,
    edit: impl FnOnce(&mut tollgate::config::Config) + Send + 'static,
) -> (TestApp, Lookups) {
    let lookups = Lookups::default();
    let app = TestApp::builder()
        .config(sso(idp, policy))
        .config(edit)
        .wrap_store(lookups.wrap())
        .spawn()
        .await;
    (app, lookups)
}

// ------------------------------------------------------------------ verification

/// Every algorithm of the default allow-list (RSA PKCS#1 and PSS, P-256, P-384, Ed25519)
/// verifies end to end against the IdP's JWKS.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_signing_algorithm_is_accepted_end_to_end() {
    let idp = MockIdp::start().await;
    let app = TestApp::builder()
        .config(sso(&idp, UnregisteredPolicy::Fallback))
        .config(|c| c.jwt.team_default = Some("sso".into()))
        .spawn()
        .await;
    team(&app, "sso", TeamFields::default()).await;
    assert_eq!(SIGNING_ALGORITHMS.len(), 9);
    for alg in SIGNING_ALGORITHMS {
        let claims = person(&idp, &format!("user-{alg:?}"), Some("someone@corp.example"));
        let jwt = idp.sign(alg, &claims);
        let resp = app.get("/api/tags", Some(&jwt)).await;
        assert_eq!(
            resp.status(),
            200,
            "{alg:?}: {}",
            resp.text().await.unwrap()
        );
        let resp = chat_as(&app, &jwt, "llama3.1:8b").await;
        assert_eq!(
            resp.status(),
            200,
            "{alg:?}: {}",
            resp.text().await.unwrap()
        );
    }
    app.shutdown().await;
}

/// SPEC §6.1: every failed JWT check is the same 401 as an unknown virtual key — byte
/// for byte apart from the request id — and they all run before any mapping policy
/// (the identity is mapped, so a skipped check would answer 200).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_failed_jwt_check_is_the_one_identical_401() {
    let idp = MockIdp::start().await;
    let app = TestApp::builder()
        .config(sso(&idp, UnregisteredPolicy::Reject))
        .spawn()
        .await;
    let (_, key_id) = key_for_models(&app, &[]).await;
    let email = "good@corp.example";
    map(&app, "", email, &key_id).await;
    let good = person(&idp, "good", Some(email));
    assert_eq!(
        app.get("/api/tags", Some(&token(&idp, &good)))
            .await
            .status(),
        200,
        "a valid token for the mapped identity is served"
    );

    let reference = anonymous_401(app.get("/api/tags", Some(&unknown_key())).await).await;
    let t = now();
    let with = |edit: &dyn Fn(&mut serde_json::Value)| {
        let mut claims = good.clone();
        edit(&mut claims);
        claims
    };
    let valid = token(&idp, &good);
    let (head, rest) = valid.split_once('.').unwrap();
    let (_, signature) = rest.split_once('.').unwrap();
    let tampered_payload = {
        use base64::Engine;
        let mut claims = good.clone();
        claims["email"] = json!("someone-else@corp.example");
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(claims.to_string())
    };
    let cases: Vec<(&str, String)> = vec![
        ("alg none", idp.unsigned_none(&good)),
        (
            "HS256 keyed with the RSA public key",
            idp.hs256_with_public_key(&good),
        ),
        (
            "expired",
            token(
                &idp,
                &with(&|c| {
                    c["exp"] = json!(t - 3600);
                    c["iat"] = json!(t - 7200);
                    c["nbf"] = json!(t - 7200);
                }),
            ),
        ),
        (
            "nbf in the future",
            token(&idp, &with(&|c| c["nbf"] = json!(t + 3600))),
        ),
        (
            "no exp",
            token(
                &idp,
                &with(&|c| drop(c.as_object_mut().unwrap().remove("exp"))),
            ),
        ),
        (
            "wrong issuer",
            token(
                &idp,
                &with(&|c| c["iss"] = json!("https://other-idp.example")),
            ),
        ),
        (
            "wrong audience",
            token(&idp, &with(&|c| c["aud"] = json!("someone-else"))),
        ),
        (
            "unknown kid",
            idp.sign_with_kid(Algorithm::RS256, Some("no-such-kid"), &good),
        ),
        (
            "a key not in the JWKS",
            idp.sign_with_foreign_key(Algorithm::ES256, &good),
        ),
        (
            "a foreign RSA key",
            idp.sign_with_foreign_key(Algorithm::RS256, &good),
        ),
        (
            "bad signature",
            format!("{head}.{tampered_payload}.{signature}"),
        ),
        (
            "oversized (otherwise valid)",
            token(&idp, &with(&|c| c["pad"] = json!("x".repeat(20_000)))),
        ),
        ("garbage three segments", "abc.def.ghi".to_string()),
    ];
    for (what, jwt) in &cases {
        let body = anonymous_401(app.get("/api/tags", Some(jwt)).await).await;
        assert_eq!(
            body, reference,
            "{what}: the 401 differs from an unknown key's"
        );
        let body = anonymous_401(chat_as(&app, jwt, "llama3.1:8b").await).await;
        assert_eq!(body, reference, "{what} on /api/chat");
    }
    // The header-level failures are the same body too.
    let missing = app
        .request(reqwest::Method::GET, "/api/tags", None)
        .send()
        .await
        .unwrap();
    assert_eq!(anonymous_401(missing).await, reference, "missing header");
    let basic = app
        .request(reqwest::Method::GET, "/api/tags", None)
        .header("authorization", format!("Basic {valid}"))
        .send()
        .await
        .unwrap();
    assert_eq!(anonymous_401(basic).await, reference, "wrong scheme");
    // Nothing failed reached Ollama.
    assert!(
        app.ollama.requests().iter().all(|r| r.path == "/api/tags"),
        "only the one valid /api/tags was forwarded"
    );
    assert_eq!(app.ollama.request_count(), 1);
    app.shutdown().await;
}

/// The IdP rotates its keys: a token with a new `kid` is accepted after exactly one
/// refetch, and keys that left the JWKS stop verifying.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_rotation_is_picked_up_with_one_refetch() {
    let idp = MockIdp::start().await;
    let app = TestApp::builder()
        .config(sso(&idp, UnregisteredPolicy::Fallback))
        .config(|c| {
            c.jwt.team_default = Some("sso".into());
            c.jwt.jwks_min_refetch_s = 3600;
        })
        .spawn()
        .await;
    team(&app, "sso", TeamFields::default()).await;
    // The start-up refresh is in flight (or done) once the IdP saw it; a request now
    // shares it rather than fetching again.
    idp.wait_for_fetches(1).await;
    let old = token_for(&idp, "before", "a@corp.example");
    let old_unused = token_for(&idp, "before-2", "b@corp.example");
    assert_eq!(app.get("/api/tags", Some(&old)).await.status(), 200);
    let before = idp.fetch_count();
    assert_eq!(before, 1, "one JWKS fetch at start-up");

    idp.rotate();
    for alg in SIGNING_ALGORITHMS {
        let jwt = idp.sign(alg, &person(&idp, "after", Some("a@corp.example")));
        let resp = app.get("/api/tags", Some(&jwt)).await;
        assert_eq!(resp.status(), 200, "{alg:?} with the rotated key");
    }
    assert_eq!(
        idp.fetch_count(),
        before + 1,
        "the new kids were found with exactly one refetch"
    );
    // The retired key is gone from the refetched set.
    assert_error(
        app.get("/api/tags", Some(&old_unused)).await,
        401,
        "unauthorized",
    )
    .await;
    app.shutdown().await;
}

/// 100 concurrent requests with unknown `kid`s share one refetch: at most one JWKS fetch
/// per `jwks_min_refetch_s`, however many arrive.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_kids_cause_at_most_one_fetch_per_interval() {
    let idp = MockIdp::start().await;
    let app = TestApp::builder()
        .config(sso(&idp, UnregisteredPolicy::Fallback))
        .config(|c| {
            c.jwt.team_default = Some("sso".into());
            c.jwt.jwks_min_refetch_s = 3600;
        })
        .spawn()
        .await;
    team(&app, "sso", TeamFields::default()).await;
    idp.wait_for_fetches(1).await;
    let good = token_for(&idp, "warm", "w@corp.example");
    assert_eq!(app.get("/api/tags", Some(&good)).await.status(), 200);
    let before = idp.fetch_count();

    for round in 0..2 {
        let tokens: Vec<String> = (0..100)
            .map(|i| {
                idp.sign_with_kid(
                    Algorithm::RS256,
                    Some(&format!("unknown-{round}-{i}")),
                    &person(&idp, &format!("u{i}"), Some("x@corp.example")),
                )
            })
            .collect();
        let responses = join_all(tokens.iter().map(|t| app.get("/api/tags", Some(t)))).await;
        for resp in responses {
            assert_eq!(resp.status(), 401);
        }
        let fetched = idp.fetch_count() - before;
        assert!(
            fetched <= 1,
            "round {round}: {fetched} JWKS fetches for unknown kids within one interval"
        );
    }
    // Known keys keep working.
    assert_eq!(app.get("/api/tags", Some(&good)).await.status(), 200);
    app.shutdown().await;
}

/// SPEC §6.2: `required_scopes` (`scope` string or `scp` array), `allowed_email_domains`
/// and `required_claims` deny with 403 `jwt_policy_denied` — before any mapping, so a
/// mapped identity is denied too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn policy_checks_deny_with_jwt_policy_denied() {
    let idp = MockIdp::start().await;
    let app = TestApp::builder()
        .config(sso(&idp, UnregisteredPolicy::Reject))
        .config(|c| {
            c.jwt.required_scopes = vec!["llm".into()];
            c.jwt.allowed_email_domains = vec!["corp.example".into()];
            c.jwt
                .required_claims
                .insert("ext.tier".into(), vec![json!("gold"), json!("platinum")]);
        })
        .spawn()
        .await;
    let (_, key_id) = key_for_models(&app, &[]).await;
    for email in ["ok@corp.example", "ok@evil.example"] {
        map(&app, "", email, &key_id).await;
    }
    let good = {
        let mut c = person(&idp, "ok", Some("ok@corp.example"));
        c["scope"] = json!("openid llm");
        c["ext"] = json!({"tier": "gold"});
        c
    };
    let with = |edit: &dyn Fn(&mut serde_json::Value)| {
        let mut claims = good.clone();
        edit(&mut claims);
        token(&idp, &claims)
    };
    assert_eq!(
        app.get("/api/tags", Some(&with(&|_| {}))).await.status(),
        200
    );
    // `scp` as an array counts as scopes too; tier lists are accepted by any member.
    let scp = with(&|c| {
        c.as_object_mut().unwrap().remove("scope");
        c["scp"] = json!(["openid", "llm"]);
        c["ext"] = json!({"tier": ["silver", "platinum"]});
    });
    assert_eq!(app.get("/api/tags", Some(&scp)).await.status(), 200);

    let denied = [
        (
            "no scope",
            with(&|c| drop(c.as_object_mut().unwrap().remove("scope"))),
        ),
        (
            "other scopes",
            with(&|c| c["scope"] = json!("openid profile")),
        ),
        (
            "email of another domain",
            with(&|c| c["email"] = json!("ok@evil.example")),
        ),
        (
            "email without a domain",
            with(&|c| c["email"] = json!("ok")),
        ),
        (
            "no email",
            with(&|c| drop(c.as_object_mut().unwrap().remove("email"))),
        ),
        (
            "required claim with another value",
            with(&|c| c["ext"] = json!({"tier": "silver"})),
        ),
        (
            "required claim missing",
            with(&|c| drop(c.as_object_mut().unwrap().remove("ext"))),
        ),
    ];
    for (what, jwt) in denied {
        let resp = app.get("/api/tags", Some(&jwt)).await;
        let err = assert_error(resp, 403, "jwt_policy_denied").await;
        assert!(!err.message.is_empty(), "{what}");
    }
    assert_eq!(
        app.ollama.request_count(),
        2,
        "denied requests reach nobody"
    );
    app.shutdown().await;
}

// ------------------------------------------------------------------ the policies

/// `reject` × {hit, database miss, cached sentinel, claim missing}.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reject_policy_on_hit_miss_sentinel_and_missing_claim() {
    let idp = MockIdp::start().await;
    let (app, lookups) = spawn_counted(&idp, UnregisteredPolicy::Reject, |_| {}).await;
    let iss = idp.issuer();

    // Hit: runs as the mapped key, its usage row carries that key.
    let (plain, key_id) = key_for_models(&app, &[]).await;
    map(&app, "", "hit@corp.example", &key_id).await;
    let hit = token_for(&idp, "hit", "hit@corp.example");
    let rid = chat_ok(&app, &hit, "llama3.1:8b").await;
    let row = usage_row(&app, &format!("key_id={key_id}"), &rid).await;
    assert_eq!(row["key_id"], key_id.as_str(), "{row}");
    assert_eq!(lookups.get(), 1);
    assert_eq!(
        cached(&app, &iss, "hit@corp.example").await,
        Some(format!(
            "k:{}",
            tollgate::auth::secrets::hash_secret(&plain)
        ))
    );
    chat_ok(&app, &hit, "llama3.1:8b").await;
    assert_eq!(
        lookups.get(),
        1,
        "a cached mapping does not query the table"
    );

    // Database miss: one lookup, the sentinel is cached, 403 jwt_unmapped.
    let miss = token_for(&idp, "miss", "miss@corp.example");
    assert_error(
        chat_as(&app, &miss, "llama3.1:8b").await,
        403,
        "jwt_unmapped",
    )
    .await;
    assert_eq!(lookups.get(), 2);
    assert_eq!(
        cached(&app, &iss, "miss@corp.example").await.as_deref(),
        Some(NO_MAPPING)
    );
    // Cached sentinel: the same answer without touching the table.
    assert_error(
        chat_as(&app, &miss, "llama3.1:8b").await,
        403,
        "jwt_unmapped",
    )
    .await;
    assert_error(app.get("/api/tags", Some(&miss)).await, 403, "jwt_unmapped").await;
    assert_eq!(
        lookups.get(),
        2,
        "the sentinel answered without a mapping query"
    );

    // Claim missing: 403.
    let anonymous = token(&idp, &person(&idp, "no-email", None));
    assert_error(
        chat_as(&app, &anonymous, "llama3.1:8b").await,
        403,
        "jwt_unmapped",
    )
    .await;
    assert_eq!(
        app.ollama.request_count(),
        2,
        "only the mapped requests went upstream"
    );
    app.shutdown().await;
}

/// `fallback` × {hit, database miss, cached sentinel, claim missing}: unmapped identities
/// run as themselves under their team's limits (usage rows with their user and team and
/// no key); no team or an unknown team → 403.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fallback_policy_on_hit_miss_sentinel_and_missing_claim() {
    let idp = MockIdp::start().await;
    let (app, lookups) = spawn_counted(&idp, UnregisteredPolicy::Fallback, |c| {
        c.jwt.team_id_claim = Some("team".into());
    })
    .await;
    let iss = idp.issuer();
    team(
        &app,
        "t-fb",
        TeamFields {
            models: vec!["llama3.1:8b".into()],
            rpm_limit: Some(5),
            ..TeamFields::default()
        },
    )
    .await;
    let member = |sub: &str, email: Option<&str>, team: Option<&str>| {
        let mut claims = person(&idp, sub, email);
        if let Some(team) = team {
            claims["team"] = json!(team);
        }
        token(&idp, &claims)
    };

    // Hit: the mapped key, not the team.
    let (_, key_id) = key_for_models(&app, &["qwen2.5:7b"]).await;
    map(&app, "", "hit@corp.example", &key_id).await;
    let hit = member("u-hit", Some("hit@corp.example"), Some("t-fb"));
    let rid = chat_ok(&app, &hit, "qwen2.5:7b").await;
    let row = usage_row(&app, &format!("key_id={key_id}"), &rid).await;
    assert_eq!(row["key_id"], key_id.as_str(), "{row}");
    assert_eq!(lookups.get(), 1);

    // Database miss: the sentinel is cached and the request runs under team t-fb.
    let miss = member("u-miss", Some("miss@corp.example"), Some("t-fb"));
    let rid = chat_ok(&app, &miss, "llama3.1:8b").await; // team rpm 1/5
    assert_eq!(lookups.get(), 2);
    assert_eq!(
        cached(&app, &iss, "miss@corp.example").await.as_deref(),
        Some(NO_MAPPING)
    );
    let row = usage_row(&app, "team_id=t-fb", &rid).await;
    assert!(
        row["key_id"].is_null(),
        "a fallback request has no key: {row}"
    );
    assert_eq!(row["user_id"], "u-miss", "{row}");
    assert_eq!(row["team_id"], "t-fb", "{row}");

    // Cached sentinel: same answer, no mapping query.
    let rid = chat_ok(&app, &miss, "llama3.1:8b").await; // 2/5
    assert_eq!(
        lookups.get(),
        2,
        "the sentinel answered without a mapping query"
    );
    let row = usage_row(&app, "team_id=t-fb", &rid).await;
    assert!(row["key_id"].is_null(), "{row}");
    assert_eq!(row["user_id"], "u-miss", "{row}");

    // The team's limits apply: its model allow-list...
    assert_error(
        chat_as(&app, &miss, "qwen2.5:7b").await,
        403,
        "model_not_allowed",
    )
    .await;
    assert_eq!(tags(&app, &miss).await, ["llama3.1:8b"]); // 3/5

    // Claim missing: fallback too.
    let anonymous = member("u-anon", None, Some("t-fb"));
    let rid = chat_ok(&app, &anonymous, "llama3.1:8b").await; // 4/5
    let row = usage_row(&app, "team_id=t-fb", &rid).await;
    assert!(row["key_id"].is_null(), "{row}");
    assert_eq!(row["user_id"], "u-anon", "{row}");
    assert_eq!(row["team_id"], "t-fb", "{row}");
    assert_eq!(lookups.get(), 2, "nothing to look up without the claim");

    // ...and its rpm_limit, shared by every member.
    chat_ok(&app, &anonymous, "llama3.1:8b").await; // 5/5
    assert_error(
        chat_as(&app, &miss, "llama3.1:8b").await,
        429,
        "rate_limited",
    )
    .await;

    // No team (claim absent, no team_default) or an unknown team → 403.
    for (what, jwt) in [
        ("no team", member("u-x", Some("x@corp.example"), None)),
        ("no team, no claim", member("u-y", None, None)),
        (
            "unknown team",
            member("u-z", Some("z@corp.example"), Some("nope")),
        ),
        ("unknown team, no claim", member("u-w", None, Some("nope"))),
    ] {
        let code = forbidden(chat_as(&app, &jwt, "llama3.1:8b").await).await;
        assert_ne!(code, "jwt_policy_denied", "{what}");
    }
    app.shutdown().await;
}

/// `auto_register` × {hit, database miss, cached sentinel, claim missing}: a new
/// identity gets exactly one key (stamped with its team, user and org and the
/// `jwt.auto_register` limits) and its mapping; never a key without the team the
/// operator asked for.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auto_register_policy_on_hit_miss_sentinel_and_missing_claim() {
    let idp = MockIdp::start().await;
    let (app, lookups) = spawn_counted(&idp, UnregisteredPolicy::AutoRegister, |c| {
        c.jwt.team_id_claim = Some("team".into());
        c.jwt.org_id_claim = Some("org".into());
        c.jwt.auto_register.models = vec!["llama3.1:8b".into()];
        c.jwt.auto_register.rpm_limit = Some(7);
        c.jwt.auto_register.tpm_limit = Some(5000);
        c.jwt.auto_register.max_parallel_requests = Some(3);
        c.jwt.auto_register.max_budget = Some(2.5);
    })
    .await;
    let iss = idp.issuer();
    team(&app, "t-ar", TeamFields::default()).await;
    let member = |sub: &str, email: Option<&str>, team: Option<&str>| {
        let mut claims = person(&idp, sub, email);
        claims["org"] = json!("o-1");
        if let Some(team) = team {
            claims["team"] = json!(team);
        }
        token(&idp, &claims)
    };

    // Hit: the mapped key; nothing is minted.
    let (_, key_id) = key_for_models(&app, &["qwen2.5:7b"]).await;
    map(&app, "", "hit@corp.example", &key_id).await;
    let hit = member("u-hit", Some("hit@corp.example"), Some("t-ar"));
    let rid = chat_ok(&app, &hit, "qwen2.5:7b").await;
    let row = usage_row(&app, &format!("key_id={key_id}"), &rid).await;
    assert_eq!(row["key_id"], key_id.as_str(), "{row}");
    assert_eq!(tags(&app, &hit).await, ["qwen2.5:7b"]);
    assert_eq!(key_count(&app, "").await, 1, "a hit mints nothing");
    assert_eq!(lookups.get(), 1);

    // Database miss: exactly one key and one mapping, stamped and limited.
    let new = member("u-new", Some("new@corp.example"), Some("t-ar"));
    let rid = chat_ok(&app, &new, "llama3.1:8b").await;
    assert_eq!(lookups.get(), 2);
    let minted = ok_json(app.admin_get("/key/list?user_id=u-new").await).await;
    assert_eq!(minted["total_count"], 1, "{minted}");
    let new_key = minted["keys"][0]["key_id"].as_str().unwrap().to_string();
    let key = info(&app, &new_key).await;
    assert_eq!(key["models"], json!(["llama3.1:8b"]), "{key}");
    assert_eq!(key["rpm_limit"], 7, "{key}");
    assert_eq!(key["tpm_limit"], 5000, "{key}");
    assert_eq!(key["max_parallel_requests"], 3, "{key}");
    assert_eq!(key["max_budget"], 2.5, "{key}");
    assert_eq!(key["team_id"], "t-ar", "{key}");
    assert_eq!(key["user_id"], "u-new", "{key}");
    assert_eq!(key["org_id"], "o-1", "{key}");
    let mappings: Vec<_> = all_mappings(&app)
        .await
        .into_iter()
        .filter(|m| m["jwt_claim_value"] == "new@corp.example")
        .collect();
    assert_eq!(mappings.len(), 1, "{mappings:?}");
    assert_eq!(mappings[0]["key_id"], new_key.as_str());
    assert_eq!(mappings[0]["jwt_claim_name"], CLAIM);
    assert_eq!(mappings[0]["jwt_issuer"], iss.as_str());
    assert_eq!(mappings[0]["is_active"], true);
    let row = usage_row(&app, &format!("key_id={new_key}"), &rid).await;
    assert_eq!(
        row["key_id"],
        new_key.as_str(),
        "it ran as the minted key: {row}"
    );
    // It runs under the minted key's limits from now on, resolved from the cache.
    assert!(
        cached(&app, &iss, "new@corp.example")
            .await
            .is_some_and(|v| v.starts_with("k:")),
        "the resolution is cached"
    );
    assert_error(
        chat_as(&app, &new, "qwen2.5:7b").await,
        403,
        "model_not_allowed",
    )
    .await;
    chat_ok(&app, &new, "llama3.1:8b").await;
    assert_eq!(lookups.get(), 2, "later requests use the cached mapping");
    assert_eq!(key_count(&app, "user_id=u-new").await, 1, "still one key");
    assert_eq!(key_count(&app, "").await, 2);

    // A cached (stale) sentinel applies the policy without a mapping query: it
    // auto-registers.
    seed_cache(&app, &iss, "stale@corp.example", NO_MAPPING).await;
    let stale = member("u-stale", Some("stale@corp.example"), Some("t-ar"));
    chat_ok(&app, &stale, "llama3.1:8b").await;
    assert_eq!(
        lookups.get(),
        2,
        "the sentinel answered without a mapping query"
    );
    assert_eq!(key_count(&app, "user_id=u-stale").await, 1);
    assert_eq!(
        all_mappings(&app)
            .await
            .iter()
            .filter(|m| m["jwt_claim_value"] == "stale@corp.example")
            .count(),
        1
    );
    assert!(
        cached(&app, &iss, "stale@corp.example")
            .await
            .is_some_and(|v| v.starts_with("k:")),
        "the sentinel was replaced by the new mapping"
    );
    let total = key_count(&app, "").await;
    assert_eq!(total, 3);

    // A team claim is configured but absent, no team_default: 403, nothing minted.
    let teamless = member("u-noteam", Some("noteam@corp.example"), None);
    forbidden(chat_as(&app, &teamless, "llama3.1:8b").await).await;
    // Claim missing: 403, nothing minted.
    let anonymous = member("u-anon", None, Some("t-ar"));
    forbidden(chat_as(&app, &anonymous, "llama3.1:8b").await).await;
    // A token failing a JWT check never reaches the policy.
    let mut ghost = person(&idp, "u-ghost", Some("ghost@corp.example"));
    ghost["team"] = json!("t-ar");
    ghost["exp"] = json!(now() - 3600);
    assert_error(
        chat_as(&app, &token(&idp, &ghost), "llama3.1:8b").await,
        401,
        "unauthorized",
    )
    .await;
    assert_eq!(key_count(&app, "").await, total, "no key was minted");
    assert_eq!(all_mappings(&app).await.len(), 3, "hit, new and stale");
    app.shutdown().await;
}

/// A `__NO_MAPPING__` sentinel that outlived the absence of a mapping (the mapping was
/// written behind the cache's back) does not block auto-registration, and the minted
/// key is not left behind: the request runs as the existing mapping's key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_sentinel_never_blocks_auto_registration() {
    let idp = MockIdp::start().await;
    let app = TestApp::builder()
        .config(sso(&idp, UnregisteredPolicy::AutoRegister))
        .spawn()
        .await;
    let iss = idp.issuer();
    let (_, key_id) = key_for_models(&app, &["qwen2.5:7b"]).await;
    seed_cache(&app, &iss, "s@corp.example", NO_MAPPING).await;
    let at = chrono::Utc::now();
    app.app
        .store
        .insert_mapping(
            &tollgate::store::Mapping {
                id: uuid::Uuid::new_v4().to_string(),
                jwt_claim_name: CLAIM.into(),
                jwt_claim_value: "s@corp.example".into(),
                jwt_issuer: iss.clone(),
                key_id: key_id.clone(),
                description: None,
                is_active: true,
                created_at: at,
                updated_at: at,
                created_by: None,
                updated_by: None,
            },
            &crate::support::audit(),
        )
        .await
        .expect("insert a mapping behind the cache");
    let jwt = token_for(&idp, "u-s", "s@corp.example");
    assert_eq!(
        tags(&app, &jwt).await,
        ["qwen2.5:7b"],
        "runs as the mapped key"
    );
    assert_eq!(key_count(&app, "").await, 1, "no orphan key");
    assert_eq!(all_mappings(&app).await.len(), 1);
    assert_eq!(tags(&app, &jwt).await, ["qwen2.5:7b"]);
    app.shutdown().await;
}

// ------------------------------------------------------------------ admins

/// Admin identities (`admin_scope`) skip mapping and limits on proxied routes, may call
/// Ollama's admin routes, and leave the `__JWT_PROXY_ADMIN__` sentinel instead of
/// querying the mapping table. The sentinel does not make a non-admin token of the same
/// identity an admin.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_identities_skip_mapping_and_limits() {
    let idp = MockIdp::start().await;
    let (app, lookups) = spawn_counted(&idp, UnregisteredPolicy::Reject, |c| {
        c.jwt.admin_scope = Some("tollgate:admin".into());
    })
    .await;
    let iss = idp.issuer();
    let admin_claims = |email: &str| {
        let mut c = person(&idp, "boss", Some(email));
        c["scope"] = json!("openid tollgate:admin");
        c
    };
    // The admin's email is mapped to a narrow key, and an unmapped admin would be
    // rejected by the policy: neither applies to admins.
    let (_, key_id) = {
        let (plain, key) = app
            .create_key(KeyFields {
                models: vec!["qwen2.5:7b".into()],
                rpm_limit: Some(1),
                metadata: json!({}),
                ..KeyFields::default()
            })
            .await;
        (plain, key.key_id)
    };
    map(&app, "", "boss@corp.example", &key_id).await;
    for email in ["boss@corp.example", "root@corp.example"] {
        let admin = token(&idp, &admin_claims(email));
        let pulled = ok_json(
            app.post_json(
                "/api/pull",
                Some(&admin),
                &json!({"model": format!("phi3:{}", email.len()), "stream": false}),
            )
            .await,
        )
        .await;
        assert_eq!(pulled["status"], "success", "{email}");
        for _ in 0..3 {
            chat_ok(&app, &admin, "llama3.1:8b").await;
        }
        assert!(tags(&app, &admin).await.len() >= 4, "every model is listed");
        assert_eq!(
            cached(&app, &iss, email).await.as_deref(),
            Some(PROXY_ADMIN),
            "{email}: the admin sentinel is cached"
        );
    }
    assert_eq!(lookups.get(), 0, "admins never query the mapping table");

    // The same identity without the admin scope runs as its mapped key.
    let plain = token_for(&idp, "boss", "boss@corp.example");
    assert_error(
        app.post_json(
            "/api/pull",
            Some(&plain),
            &json!({"model": "phi3:x", "stream": false}),
        )
        .await,
        403,
        "route_not_allowed",
    )
    .await;
    assert_error(
        chat_as(&app, &plain, "llama3.1:8b").await,
        403,
        "model_not_allowed",
    )
    .await;
    chat_ok(&app, &plain, "qwen2.5:7b").await;
    assert_error(
        chat_as(&app, &plain, "qwen2.5:7b").await,
        429,
        "rate_limited",
    )
    .await;
    // An unmapped identity without the scope is rejected despite the admin sentinel.
    let nobody = token_for(&idp, "boss", "root@corp.example");
    assert_error(
        chat_as(&app, &nobody, "llama3.1:8b").await,
        403,
        "jwt_unmapped",
    )
    .await;
    assert_error(
        app.post_json(
            "/api/pull",
            Some(&nobody),
            &json!({"model": "phi3:y", "stream": false}),
        )
        .await,
        403,
        "jwt_unmapped",
    )
    .await;
    app.shutdown().await;
}

/// Admin identities are admins on proxied routes also when no claim is mapped
/// (`virtual_key_claim` unset) and they carry no team (SPEC §4.1: admin-only routes are
/// open to "master key or admin identity"; §6.2 `is_admin`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_identities_are_admins_without_a_mapping_claim() {
    let idp = MockIdp::start().await;
    let app = TestApp::builder()
        .config(sso(&idp, UnregisteredPolicy::Fallback))
        .config(|c| {
            c.jwt.virtual_key_claim = None;
            c.jwt.admin_scope = Some("tollgate:admin".into());
        })
        .spawn()
        .await;
    let mut claims = person(&idp, "boss", Some("boss@corp.example"));
    claims["scope"] = json!("tollgate:admin");
    let admin = token(&idp, &claims);
    let resp = app
        .post_json(
            "/api/pull",
            Some(&admin),
            &json!({"model": "phi3:mini", "stream": false}),
        )
        .await;
    assert_eq!(ok_json(resp).await["status"], "success");
    chat_ok(&app, &admin, "llama3.1:8b").await;
    app.shutdown().await;
}

/// The JWT checks run on every request, also when the resolution is cached: an expired
/// token of a mapped, cached identity is the one 401.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_token_with_a_cached_mapping_is_401() {
    let idp = MockIdp::start().await;
    let app = TestApp::builder()
        .config(sso(&idp, UnregisteredPolicy::Reject))
        .spawn()
        .await;
    let (_, key_id) = key_for_models(&app, &[]).await;
    map(&app, "", "m@corp.example", &key_id).await;
    let fresh = token_for(&idp, "m", "m@corp.example");
    chat_ok(&app, &fresh, "llama3.1:8b").await;
    assert!(
        cached(&app, &idp.issuer(), "m@corp.example")
            .await
            .is_some_and(|v| v.starts_with("k:")),
        "the mapping is cached"
    );
    let reference = anonymous_401(app.get("/api/tags", Some(&unknown_key())).await).await;
    let t = now();
    let mut claims = person(&idp, "m", Some("m@corp.example"));
    claims["exp"] = json!(t - 120);
    claims["iat"] = json!(t - 900);
    claims["nbf"] = json!(t - 900);
    let expired = token(&idp, &claims);
    assert_eq!(
        anonymous_401(chat_as(&app, &expired, "llama3.1:8b").await).await,
        reference
    );
    assert_eq!(
        anonymous_401(app.get("/api/tags", Some(&expired)).await).await,
        reference
    );
    // A token from another issuer's key for the same identity is refused just the same.
    let foreign =
        idp.sign_with_foreign_key(Algorithm::RS256, &person(&idp, "m", Some("m@corp.example")));
    assert_eq!(
        anonymous_401(app.get("/api/tags", Some(&foreign)).await).await,
        reference
    );
    chat_ok(&app, &fresh, "llama3.1:8b").await;
    app.shutdown().await;
}

/// Two identity providers issuing the same claim value resolve to their own
/// issuer-scoped mappings; an issuer-specific mapping wins over an any-issuer one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_issuers_with_the_same_claim_value_resolve_to_their_own_mappings() {
    let one = MockIdp::start().await;
    let two = MockIdp::start().await;
    let app = TestApp::builder()
        .config(sso_many(&[&one, &two], UnregisteredPolicy::Reject))
        .spawn()
        .await;
    let (_, k1) = key_for_models(&app, &["llama3.1:8b"]).await;
    let (_, k2) = key_for_models(&app, &["qwen2.5:7b"]).await;
    let (_, any) = key_for_models(&app, &["llama3.2:latest"]).await;

    map(&app, &one.issuer(), "same@corp.example", &k1).await;
    map(&app, &two.issuer(), "same@corp.example", &k2).await;
    let from_one = token_for(&one, "same", "same@corp.example");
    let from_two = token_for(&two, "same", "same@corp.example");
    assert_eq!(tags(&app, &from_one).await, ["llama3.1:8b"]);
    assert_eq!(tags(&app, &from_two).await, ["qwen2.5:7b"]);
    let rid = chat_ok(&app, &from_two, "qwen2.5:7b").await;
    assert_eq!(
        usage_row(&app, &format!("key_id={k2}"), &rid).await["key_id"],
        k2.as_str()
    );

    // Issuer-specific beats any-issuer, whichever was created first.
    map(&app, "", "other@corp.example", &any).await;
    map(&app, &one.issuer(), "other@corp.example", &k1).await;
    map(&app, &two.issuer(), "third@corp.example", &k2).await;
    map(&app, "", "third@corp.example", &any).await;
    let one_other = token_for(&one, "o", "other@corp.example");
    let two_other = token_for(&two, "o", "other@corp.example");
    let one_third = token_for(&one, "t", "third@corp.example");
    let two_third = token_for(&two, "t", "third@corp.example");
    for _ in 0..2 {
        // Twice: the cached resolutions keep the issuers apart as well.
        assert_eq!(tags(&app, &one_other).await, ["llama3.1:8b"]);
        assert_eq!(tags(&app, &two_other).await, ["llama3.2:latest"]);
        assert_eq!(tags(&app, &one_third).await, ["llama3.2:latest"]);
        assert_eq!(tags(&app, &two_third).await, ["qwen2.5:7b"]);
    }
    // An issuer with no mapping of its own and no any-issuer mapping is unmapped.
    map(&app, &one.issuer(), "solo@corp.example", &k1).await;
    assert_eq!(
        tags(&app, &token_for(&one, "s", "solo@corp.example")).await,
        ["llama3.1:8b"]
    );
    assert_error(
        app.get(
            "/api/tags",
            Some(&token_for(&two, "s", "solo@corp.example")),
        )
        .await,
        403,
        "jwt_unmapped",
    )
    .await;
    app.shutdown().await;
}

// ------------------------------------------------------------------ management API

/// SPEC §6.5 with JWT callers: `admin_scope` → proxy admin; `role_map` roles act inside
/// their own team (team_admin writes, viewer reads); a JWT without a role and a plain
/// virtual key get 403 on the management API.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jwt_roles_on_the_management_api() {
    let idp = MockIdp::start().await;
    let app = TestApp::builder()
        .config(sso(&idp, UnregisteredPolicy::Reject))
        .config(|c| {
            c.jwt.admin_scope = Some("tollgate:admin".into());
            c.jwt.team_id_claim = Some("team".into());
            c.jwt.role_claim = Some("roles".into());
            c.jwt
                .role_map
                .insert("gw-team-admin".into(), Role::TeamAdmin);
            c.jwt.role_map.insert("gw-viewer".into(), Role::Viewer);
        })
        .spawn()
        .await;
    team(&app, "team-a", TeamFields::default()).await;
    team(&app, "team-b", TeamFields::default()).await;
    let as_role = |sub: &str, roles: Option<&str>, scope: Option<&str>, team: Option<&str>| {
        let mut c = person(&idp, sub, Some(&format!("{sub}@corp.example")));
        if let Some(r) = roles {
            c["roles"] = json!([r]);
        }
        if let Some(s) = scope {
            c["scope"] = json!(s);
        }
        if let Some(t) = team {
            c["team"] = json!(t);
        }
        token(&idp, &c)
    };
    let key_in = |team: &'static str| {
        let app = &app;
        async move {
            let (_, key) = app
                .create_key(KeyFields {
                    team_id: Some(team.into()),
                    metadata: json!({}),
                    ..KeyFields::default()
                })
                .await;
            key.key_id
        }
    };
    let a_key = key_in("team-a").await;
    let b_key = key_in("team-b").await;

    // Admin scope: everything.
    let admin = as_role("admin", None, Some("openid tollgate:admin"), None);
    let made = ok_json(
        app.post_json("/key/generate", Some(&admin), &json!({}))
            .await,
    )
    .await;
    assert!(made["key"].as_str().is_some_and(|k| k.starts_with("sk-")));
    ok_json(
        app.post_json("/team/new", Some(&admin), &json!({"team_alias": "c"}))
            .await,
    )
    .await;
    ok_json(app.get("/jwt/key/mapping/list", Some(&admin)).await).await;
    ok_json(
        app.post_json(
            "/jwt/key/mapping/new",
            Some(&admin),
            &json!({"jwt_claim_name": "email", "jwt_claim_value": "x@corp.example", "key_id": b_key}),
        )
        .await,
    )
    .await;

    // Team admin of team-a: keys of team-a only.
    let ta = as_role("ta", Some("gw-team-admin"), None, Some("team-a"));
    let made = ok_json(
        app.post_json("/key/generate", Some(&ta), &json!({"team_id": "team-a"}))
            .await,
    )
    .await;
    assert_eq!(made["team_id"], "team-a", "{made}");
    ok_json(
        app.get(&format!("/key/info?key_id={a_key}"), Some(&ta))
            .await,
    )
    .await;
    ok_json(
        app.post_json(
            "/key/update",
            Some(&ta),
            &json!({"key_id": a_key, "rpm_limit": 5}),
        )
        .await,
    )
    .await;
    ok_json(
        app.post_json(
            "/jwt/key/mapping/new",
            Some(&ta),
            &json!({"jwt_claim_name": "email", "jwt_claim_value": "a@corp.example", "key_id": a_key}),
        )
        .await,
    )
    .await;
    let other_team = [
        app.post_json("/key/generate", Some(&ta), &json!({"team_id": "team-b"}))
            .await,
        app.post_json("/key/generate", Some(&ta), &json!({})).await,
        app.get(&format!("/key/info?key_id={b_key}"), Some(&ta)).await,
        app.post_json("/key/update", Some(&ta), &json!({"key_id": b_key, "rpm_limit": 5}))
            .await,
        app.post_json("/key/delete", Some(&ta), &json!({"key_ids": [b_key]}))
            .await,
        app.get("/key/list?team_id=team-b", Some(&ta)).await,
        app.post_json(
            "/jwt/key/mapping/new",
            Some(&ta),
            &json!({"jwt_claim_name": "email", "jwt_claim_value": "b@corp.example", "key_id": b_key}),
        )
        .await,
        app.post_json("/team/new", Some(&ta), &json!({"team_alias": "d"})).await,
    ];
    for resp in other_team {
        assert_error(resp, 403, "forbidden").await;
    }

    // Viewer of team-a: reads its team, writes nothing.
    let viewer = as_role("v", Some("gw-viewer"), None, Some("team-a"));
    let listed = ok_json(app.get("/key/list?team_id=team-a", Some(&viewer)).await).await;
    let teams: Vec<&serde_json::Value> = listed["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| &k["team_id"])
        .collect();
    assert!(
        !teams.is_empty() && teams.iter().all(|t| *t == "team-a"),
        "{listed}"
    );
    let own = ok_json(app.get("/key/list", Some(&viewer)).await).await;
    assert_eq!(
        own["total_count"], listed["total_count"],
        "own team by default"
    );
    ok_json(
        app.get(&format!("/key/info?key_id={a_key}"), Some(&viewer))
            .await,
    )
    .await;
    for resp in [
        app.get("/key/list?team_id=team-b", Some(&viewer)).await,
        app.get(&format!("/key/info?key_id={b_key}"), Some(&viewer)).await,
        app.post_json("/key/generate", Some(&viewer), &json!({"team_id": "team-a"}))
            .await,
        app.post_json("/key/update", Some(&viewer), &json!({"key_id": a_key, "rpm_limit": 9}))
            .await,
        app.post_json(
            "/jwt/key/mapping/new",
            Some(&viewer),
            &json!({"jwt_claim_name": "email", "jwt_claim_value": "v@corp.example", "key_id": a_key}),
        )
        .await,
    ] {
        assert_error(resp, 403, "forbidden").await;
    }

    // A JWT with no role, and a plain virtual key: authenticated, not allowed.
    let nobody = as_role("n", None, Some("openid"), Some("team-a"));
    let (plain_key, _) = app
        .create_key(KeyFields {
            team_id: Some("team-a".into()),
            metadata: json!({}),
            ..KeyFields::default()
        })
        .await;
    for bearer in [&nobody, &plain_key] {
        for resp in [
            app.post_json("/key/generate", Some(bearer), &json!({})).await,
            app.post_json("/key/generate", Some(bearer), &json!({"team_id": "team-a"}))
                .await,
            app.get("/key/list", Some(bearer)).await,
            app.get(&format!("/key/info?key_id={a_key}"), Some(bearer)).await,
            app.post_json("/key/delete", Some(bearer), &json!({"key_ids": [a_key]}))
                .await,
            app.get("/jwt/key/mapping/list", Some(bearer)).await,
            app.get("/jwt/key/mapping/info?id=x", Some(bearer)).await,
            app.post_json(
                "/jwt/key/mapping/new",
                Some(bearer),
                &json!({"jwt_claim_name": "email", "jwt_claim_value": "z@corp.example", "key_id": a_key}),
            )
            .await,
            app.post_json("/jwt/key/mapping/update", Some(bearer), &json!({"id": "x"}))
                .await,
            app.post_json("/jwt/key/mapping/delete", Some(bearer), &json!({"id": "x"}))
                .await,
        ] {
            assert_error(resp, 403, "forbidden").await;
        }
    }
    // An invalid JWT on the management API is the 401.
    let expired = {
        let mut c = person(&idp, "admin", Some("admin@corp.example"));
        c["scope"] = json!("tollgate:admin");
        c["exp"] = json!(now() - 3600);
        token(&idp, &c)
    };
    assert_error(
        app.get("/key/list", Some(&expired)).await,
        401,
        "unauthorized",
    )
    .await;
    app.shutdown().await;
}

/// Without a master key the management API answers admin JWTs (SPEC §3).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_master_key_admin_jwts_manage() {
    let idp = MockIdp::start().await;
    let app = TestApp::builder()
        .no_master_key()
        .config(sso(&idp, UnregisteredPolicy::Reject))
        .config(|c| c.jwt.admin_scope = Some("tollgate:admin".into()))
        .spawn()
        .await;
    let mut c = person(&idp, "admin", Some("admin@corp.example"));
    c["scope"] = json!("tollgate:admin");
    let admin = token(&idp, &c);
    let made = ok_json(
        app.post_json("/key/generate", Some(&admin), &json!({}))
            .await,
    )
    .await;
    let key = made["key"].as_str().unwrap().to_string();
    ok_json(app.get("/key/list", Some(&admin)).await).await;
    assert_error(app.get("/key/list", Some(&key)).await, 403, "forbidden").await;
    let user = token_for(&idp, "u", "u@corp.example");
    assert_error(app.get("/key/list", Some(&user)).await, 403, "forbidden").await;
    app.shutdown().await;
}
