//! JWT claim → virtual key mappings (issue 5; SPEC §4.2 `/jwt/key/mapping/*`, §6.3):
//! CRUD and its errors, cache invalidation on the instance that changed a mapping and on
//! another instance sharing PostgreSQL and Redis, and race-safe auto-registration across
//! two instances.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use futures_util::future::join_all;
use serde_json::{Value, json};
use testkit::idp::MockIdp;
use tollgate::config::UnregisteredPolicy;

use crate::jwt_support::*;
use crate::keys_support::{generate, ok_json};
use crate::support::*;

/// The fields every mapping response carries (SPEC §4.2).
const MAPPING_FIELDS: [&str; 11] = [
    "id",
    "jwt_claim_name",
    "jwt_claim_value",
    "jwt_issuer",
    "key_id",
    "description",
    "is_active",
    "created_at",
    "updated_at",
    "created_by",
    "updated_by",
];

/// Asserts `body` is a full mapping and does not leak `key` (plaintext) or its hash.
fn assert_mapping(body: &Value, key: &str) {
    for field in MAPPING_FIELDS {
        assert!(body.get(field).is_some(), "mapping lacks `{field}`: {body}");
    }
    assert_no_secret(&body.to_string(), key);
}

fn assert_no_secret(text: &str, key: &str) {
    let hash = tollgate::auth::secrets::hash_secret(key);
    assert_eq!(hash.len(), 64, "hex SHA-256");
    assert!(!text.contains(key), "the plaintext key leaked: {text}");
    assert!(
        !text.to_ascii_lowercase().contains(&hash),
        "the key's hash leaked: {text}"
    );
    assert!(!text.contains("key_hash"), "a hash field: {text}");
}

async fn new_mapping(app: &TestApp, body: Value) -> reqwest::Response {
    app.admin_post("/jwt/key/mapping/new", &body).await
}

backend_tests! {
    /// Create, read, update, delete and list, with every error of SPEC §4.2.
    async fn mapping_crud(app) {
        let k1 = generate(app, json!({"key_alias": "one"})).await;
        let k2 = generate(app, json!({"key_alias": "two"})).await;

        // new, by key_id.
        let created = ok_json(
            new_mapping(
                app,
                json!({
                    "jwt_claim_name": "email",
                    "jwt_claim_value": "alice@corp.example",
                    "key_id": k1.key_id,
                    "description": "Alice's laptop",
                }),
            )
            .await,
        )
        .await;
        assert_mapping(&created, &k1.key);
        assert_eq!(created["jwt_claim_name"], "email");
        assert_eq!(created["jwt_claim_value"], "alice@corp.example");
        assert_eq!(created["jwt_issuer"], "", "no issuer = any issuer");
        assert_eq!(created["key_id"], k1.key_id.as_str());
        assert_eq!(created["description"], "Alice's laptop");
        assert_eq!(created["is_active"], true);
        assert!(created["created_by"].is_string() && created["updated_by"].is_string());
        let id = created["id"].as_str().expect("id").to_string();

        // new, by the plaintext key, for one issuer.
        let scoped = ok_json(
            new_mapping(
                app,
                json!({
                    "jwt_claim_name": "email",
                    "jwt_claim_value": "alice@corp.example",
                    "jwt_issuer": "https://idp.corp.example",
                    "key": k2.key,
                    "is_active": false,
                }),
            )
            .await,
        )
        .await;
        assert_mapping(&scoped, &k2.key);
        assert_eq!(scoped["key_id"], k2.key_id.as_str());
        assert_eq!(scoped["jwt_issuer"], "https://idp.corp.example");
        assert_eq!(scoped["is_active"], false);

        // Duplicate (issuer, claim name, value) → 409, whichever key.
        for (issuer, key_id) in [("", &k2.key_id), ("https://idp.corp.example", &k1.key_id)] {
            let resp = new_mapping(
                app,
                json!({
                    "jwt_claim_name": "email",
                    "jwt_claim_value": "alice@corp.example",
                    "jwt_issuer": issuer,
                    "key_id": key_id,
                }),
            )
            .await;
            assert_error(resp, 409, "conflict").await;
        }
        // Unknown key → 400, by id or by plaintext.
        for key in [json!({"key_id": "no-such-key"}), json!({"key": format!("sk-{}", "q".repeat(43))})] {
            let mut body = json!({"jwt_claim_name": "email", "jwt_claim_value": "bob@corp.example"});
            body.as_object_mut().unwrap().extend(key.as_object().unwrap().clone());
            assert_error(new_mapping(app, body).await, 400, "invalid_request").await;
        }
        // Bad input → 400, nothing written.
        for body in [
            json!({"jwt_claim_name": "email", "key_id": k1.key_id}),
            json!({"jwt_claim_name": "", "jwt_claim_value": "x", "key_id": k1.key_id}),
            json!({"jwt_claim_name": "email", "jwt_claim_value": "x", "key_id": k1.key_id, "bogus": 1}),
            json!({"jwt_claim_name": "email", "jwt_claim_value": "x"}),
        ] {
            assert_error(new_mapping(app, body).await, 400, "invalid_request").await;
        }

        // info
        let got = ok_json(app.admin_get(&format!("/jwt/key/mapping/info?id={id}")).await).await;
        assert_mapping(&got, &k1.key);
        assert_eq!(got, created);

        // update
        let updated = ok_json(
            app.admin_post(
                "/jwt/key/mapping/update",
                &json!({"id": id, "description": "rotated", "key_id": k2.key_id}),
            )
            .await,
        )
        .await;
        assert_mapping(&updated, &k2.key);
        assert_no_secret(&updated.to_string(), &k1.key);
        assert_eq!(updated["description"], "rotated");
        assert_eq!(updated["key_id"], k2.key_id.as_str());
        assert_eq!(updated["created_at"], created["created_at"]);
        assert_eq!(updated["jwt_claim_value"], "alice@corp.example");
        let got = ok_json(app.admin_get(&format!("/jwt/key/mapping/info?id={id}")).await).await;
        assert_eq!(got, updated);
        // Updating into an existing (issuer, claim, value) → 409.
        let resp = app
            .admin_post(
                "/jwt/key/mapping/update",
                &json!({"id": id, "jwt_issuer": "https://idp.corp.example"}),
            )
            .await;
        assert_error(resp, 409, "conflict").await;
        let resp = app
            .admin_post(
                "/jwt/key/mapping/update",
                &json!({"id": id, "key_id": "no-such-key"}),
            )
            .await;
        assert_error(resp, 400, "invalid_request").await;

        // Missing mapping → 404 on info, update and delete.
        assert_error(app.admin_get("/jwt/key/mapping/info?id=no-such-id").await, 404, "not_found").await;
        assert_error(
            app.admin_post("/jwt/key/mapping/update", &json!({"id": "no-such-id", "is_active": false})).await,
            404,
            "not_found",
        )
        .await;
        assert_error(
            app.admin_post("/jwt/key/mapping/delete", &json!({"id": "no-such-id"})).await,
            404,
            "not_found",
        )
        .await;

        // A virtual key is authenticated but not allowed: 403 on every route.
        for bearer in [&k1.key, &k2.key] {
            let denied = [
                app.post_json(
                    "/jwt/key/mapping/new",
                    Some(bearer),
                    &json!({"jwt_claim_name": "email", "jwt_claim_value": "eve@corp.example", "key_id": k1.key_id}),
                )
                .await,
                app.post_json("/jwt/key/mapping/update", Some(bearer), &json!({"id": id, "is_active": false})).await,
                app.post_json("/jwt/key/mapping/delete", Some(bearer), &json!({"id": id})).await,
                app.get(&format!("/jwt/key/mapping/info?id={id}"), Some(bearer)).await,
                app.get("/jwt/key/mapping/list", Some(bearer)).await,
            ];
            for resp in denied {
                assert_error(resp, 403, "forbidden").await;
            }
        }
        // ... and changed nothing.
        let got = ok_json(app.admin_get(&format!("/jwt/key/mapping/info?id={id}")).await).await;
        assert_eq!(got, updated);
        assert_eq!(all_mappings(app).await.len(), 2);

        // delete
        let deleted = ok_json(app.admin_post("/jwt/key/mapping/delete", &json!({"id": id})).await).await;
        assert_no_secret(&deleted.to_string(), &k2.key);
        assert_error(app.admin_get(&format!("/jwt/key/mapping/info?id={id}")).await, 404, "not_found").await;
        assert_error(
            app.admin_post("/jwt/key/mapping/delete", &json!({"id": id})).await,
            404,
            "not_found",
        )
        .await;
        // The triple is free again.
        ok_json(
            new_mapping(
                app,
                json!({"jwt_claim_name": "email", "jwt_claim_value": "alice@corp.example", "key_id": k1.key_id}),
            )
            .await,
        )
        .await;
    }

    /// `GET /jwt/key/mapping/list?page=&size=`: 1-based pages, `total_count`,
    /// `total_pages`, every mapping exactly once, no secrets.
    async fn mapping_list_pages(app) {
        let key = generate(app, json!({})).await;
        let mut ids = BTreeSet::new();
        for i in 0..5 {
            let m = ok_json(
                new_mapping(
                    app,
                    json!({"jwt_claim_name": "sub", "jwt_claim_value": format!("user-{i}"), "key_id": key.key_id}),
                )
                .await,
            )
            .await;
            ids.insert(m["id"].as_str().unwrap().to_string());
        }
        let mut seen = BTreeSet::new();
        for (page, expected) in [(1, 2), (2, 2), (3, 1), (4, 0)] {
            let body = ok_json(
                app.admin_get(&format!("/jwt/key/mapping/list?page={page}&size=2"))
                    .await,
            )
            .await;
            assert_no_secret(&body.to_string(), &key.key);
            assert_eq!(body["total_count"], 5, "{body}");
            assert_eq!(body["total_pages"], 3, "{body}");
            assert_eq!(body["current_page"], page, "{body}");
            let items = body["mappings"].as_array().unwrap();
            assert_eq!(items.len(), expected, "page {page}: {body}");
            for m in items {
                assert_mapping(m, &key.key);
                assert!(seen.insert(m["id"].as_str().unwrap().to_string()), "repeated: {m}");
            }
        }
        assert_eq!(seen, ids);
        let all = ok_json(app.admin_get("/jwt/key/mapping/list").await).await;
        assert_eq!(all["mappings"].as_array().unwrap().len(), 5);
        for bad in ["page=0", "size=0", "size=1001", "page=x", "bogus=1"] {
            assert_error(
                app.admin_get(&format!("/jwt/key/mapping/list?{bad}")).await,
                400,
                "invalid_request",
            )
            .await;
        }
    }

    /// Deleting a key deletes its mappings (and only its).
    async fn deleting_a_key_deletes_its_mappings(app) {
        let doomed = generate(app, json!({})).await;
        let kept = generate(app, json!({})).await;
        let mut doomed_ids = Vec::new();
        for value in ["a@corp.example", "b@corp.example"] {
            let m = ok_json(
                new_mapping(app, json!({"jwt_claim_name": "email", "jwt_claim_value": value, "key_id": doomed.key_id}))
                    .await,
            )
            .await;
            doomed_ids.push(m["id"].as_str().unwrap().to_string());
        }
        let survivor = ok_json(
            new_mapping(app, json!({"jwt_claim_name": "email", "jwt_claim_value": "c@corp.example", "key_id": kept.key_id}))
                .await,
        )
        .await;
        ok_json(app.admin_post("/key/delete", &json!({"key_ids": [doomed.key_id]})).await).await;
        for id in &doomed_ids {
            assert_error(
                app.admin_get(&format!("/jwt/key/mapping/info?id={id}")).await,
                404,
                "not_found",
            )
            .await;
        }
        let left = all_mappings(app).await;
        assert_eq!(left.len(), 1, "{left:?}");
        assert_eq!(left[0]["id"], survivor["id"]);
        // The freed claim value can be mapped again.
        ok_json(
            new_mapping(app, json!({"jwt_claim_name": "email", "jwt_claim_value": "a@corp.example", "key_id": kept.key_id}))
                .await,
        )
        .await;
    }
}

// ------------------------------------------------------------------ mappings in effect

/// An inactive mapping counts as no mapping: the policy applies (here `reject`), and
/// reactivating it takes effect on the next request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_inactive_mapping_counts_as_no_mapping() {
    let idp = MockIdp::start().await;
    let app = TestApp::builder()
        .config(sso(&idp, UnregisteredPolicy::Reject))
        .spawn()
        .await;
    let (_, key_id) = key_for_models(&app, &["qwen2.5:7b"]).await;
    let jwt = token_for(&idp, "i", "i@corp.example");

    let mapping = ok_json(
        new_mapping(
            &app,
            json!({"jwt_claim_name": CLAIM, "jwt_claim_value": "i@corp.example", "key_id": key_id, "is_active": false}),
        )
        .await,
    )
    .await;
    let id = mapping["id"].as_str().unwrap();
    assert_error(app.get("/api/tags", Some(&jwt)).await, 403, "jwt_unmapped").await;
    let update = |active: bool| {
        let app = &app;
        async move {
            app.admin_post(
                "/jwt/key/mapping/update",
                &json!({"id": id, "is_active": active}),
            )
            .await
        }
    };
    ok_json(update(true).await).await;
    assert_eq!(tags(&app, &jwt).await, ["qwen2.5:7b"]);
    ok_json(update(false).await).await;
    assert_error(app.get("/api/tags", Some(&jwt)).await, 403, "jwt_unmapped").await;
    assert_error(chat_as(&app, &jwt, "qwen2.5:7b").await, 403, "jwt_unmapped").await;
    ok_json(update(true).await).await;
    chat_ok(&app, &jwt, "qwen2.5:7b").await;
    app.shutdown().await;
}

/// Create, update and delete each take effect on the very next request of the instance
/// that made them, though a resolution (sentinel or key) was cached before.
async fn changes_apply_on_the_next_request(app: &TestApp, idp: &MockIdp) {
    let iss = idp.issuer();
    let (_, k1) = key_for_models(app, &["llama3.1:8b"]).await;
    let (_, k2) = key_for_models(app, &["qwen2.5:7b"]).await;
    let alice = token_for(idp, "alice", "alice@corp.example");
    let bob = token_for(idp, "bob", "bob@corp.example");

    // The sentinel is cached...
    assert_error(
        app.get("/api/tags", Some(&alice)).await,
        403,
        "jwt_unmapped",
    )
    .await;
    assert_eq!(
        cached(app, &iss, "alice@corp.example").await.as_deref(),
        Some(NO_MAPPING)
    );
    // ...and a new issuer-specific mapping applies at once.
    let m = map(app, &iss, "alice@corp.example", &k1).await;
    let id = m["id"].as_str().unwrap().to_string();
    assert_eq!(tags(app, &alice).await, ["llama3.1:8b"]);

    // Update to another key: the cached key resolution is dropped.
    ok_json(
        app.admin_post("/jwt/key/mapping/update", &json!({"id": id, "key_id": k2}))
            .await,
    )
    .await;
    assert_eq!(tags(app, &alice).await, ["qwen2.5:7b"]);

    // Update the claim value: the old identity loses it, the new one gets it (its
    // sentinel was cached first).
    assert_error(app.get("/api/tags", Some(&bob)).await, 403, "jwt_unmapped").await;
    ok_json(
        app.admin_post(
            "/jwt/key/mapping/update",
            &json!({"id": id, "jwt_claim_value": "bob@corp.example"}),
        )
        .await,
    )
    .await;
    assert_error(
        app.get("/api/tags", Some(&alice)).await,
        403,
        "jwt_unmapped",
    )
    .await;
    assert_eq!(tags(app, &bob).await, ["qwen2.5:7b"]);

    // Update the issuer to "any": still bob's.
    ok_json(
        app.admin_post(
            "/jwt/key/mapping/update",
            &json!({"id": id, "jwt_issuer": ""}),
        )
        .await,
    )
    .await;
    assert_eq!(tags(app, &bob).await, ["qwen2.5:7b"]);
    // An issuer-specific mapping created later wins at once over the cached any-issuer
    // resolution.
    let specific = map(app, &iss, "bob@corp.example", &k1).await;
    assert_eq!(tags(app, &bob).await, ["llama3.1:8b"]);
    ok_json(
        app.admin_post("/jwt/key/mapping/delete", &json!({"id": specific["id"]}))
            .await,
    )
    .await;
    assert_eq!(tags(app, &bob).await, ["qwen2.5:7b"]);

    // Delete: the cached key resolution is dropped.
    ok_json(
        app.admin_post("/jwt/key/mapping/delete", &json!({"id": id}))
            .await,
    )
    .await;
    assert_error(app.get("/api/tags", Some(&bob)).await, 403, "jwt_unmapped").await;

    // An any-issuer mapping drops the issuer-scoped sentinel too.
    assert_eq!(
        cached(app, &iss, "alice@corp.example").await.as_deref(),
        Some(NO_MAPPING)
    );
    map(app, "", "alice@corp.example", &k1).await;
    assert_eq!(tags(app, &alice).await, ["llama3.1:8b"]);
}

/// In-process cache (no Redis).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mapping_changes_apply_on_the_next_request() {
    let idp = MockIdp::start().await;
    let app = TestApp::builder()
        .config(sso(&idp, UnregisteredPolicy::Reject))
        .spawn()
        .await;
    changes_apply_on_the_next_request(&app, &idp).await;
    app.shutdown().await;
}

/// The shared cache in Redis.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mapping_changes_apply_on_the_next_request_with_redis() {
    let idp = MockIdp::start().await;
    let Some(app) = TestApp::builder()
        .postgres()
        .redis()
        .config(sso(&idp, UnregisteredPolicy::Reject))
        .try_spawn()
        .await
    else {
        return;
    };
    changes_apply_on_the_next_request(&app, &idp).await;
    app.shutdown().await;
}

/// Two instances sharing PostgreSQL, Redis (same prefix) and the mock Ollama, both
/// trusting `idp` with `policy`.
async fn two_instances(idp: &MockIdp, policy: UnregisteredPolicy) -> Option<(TestApp, TestApp)> {
    two_counted_instances(idp, policy, &Lookups::default()).await
}

/// [`two_instances`] with both stores counted (and gated) by `lookups`.
async fn two_counted_instances(
    idp: &MockIdp,
    policy: UnregisteredPolicy,
    lookups: &Lookups,
) -> Option<(TestApp, TestApp)> {
    let config = sso(idp, policy);
    let a = TestApp::builder()
        .wrap_store(lookups.wrap())
        .postgres()
        .redis()
        .config(config.clone())
        .try_spawn()
        .await?;
    let b = TestApp::builder()
        .wrap_store(lookups.wrap())
        .shared_db_with(&a)
        .config(config)
        .spawn()
        .await;
    assert!(b.redis_prefix.is_some() && b.redis_prefix == a.redis_prefix);
    Some((a, b))
}

/// Polls `/api/tags` on `app` with `bearer` until it answers `status`, for at most the
/// spec's 1 s (plus scheduling slack).
async fn within_a_second(app: &TestApp, bearer: &str, status: u16) {
    let deadline = Instant::now() + Duration::from_millis(1500);
    loop {
        let got = app.get("/api/tags", Some(bearer)).await.status().as_u16();
        if got == status {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the other instance still answers {got}, expected {status}"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// SPEC §6.3: a mapping created, updated or deleted through A applies on B within 1 s.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mapping_changes_through_one_instance_apply_on_the_other() {
    let idp = MockIdp::start().await;
    let Some((a, b)) = two_instances(&idp, UnregisteredPolicy::Reject).await else {
        return;
    };
    let (_, k1) = key_for_models(&a, &["llama3.1:8b"]).await;
    let (_, k2) = key_for_models(&a, &["qwen2.5:7b"]).await;
    let jwt = token_for(&idp, "x", "x@corp.example");

    // B caches the sentinel; A creates a mapping; B serves it.
    assert_error(b.get("/api/tags", Some(&jwt)).await, 403, "jwt_unmapped").await;
    let m = map(&a, "", "x@corp.example", &k1).await;
    within_a_second(&b, &jwt, 200).await;
    assert_eq!(tags(&b, &jwt).await, ["llama3.1:8b"]);

    // A moves it to another key; B follows.
    ok_json(
        a.admin_post(
            "/jwt/key/mapping/update",
            &json!({"id": m["id"], "key_id": k2}),
        )
        .await,
    )
    .await;
    let deadline = Instant::now() + Duration::from_millis(1500);
    while tags(&b, &jwt).await != ["qwen2.5:7b"] {
        assert!(Instant::now() < deadline, "B still runs the old key");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }

    // A deletes it; B stops applying it.
    assert_eq!(tags(&b, &jwt).await, ["qwen2.5:7b"]);
    ok_json(
        a.admin_post("/jwt/key/mapping/delete", &json!({"id": m["id"]}))
            .await,
    )
    .await;
    within_a_second(&b, &jwt, 403).await;
    assert_error(b.get("/api/tags", Some(&jwt)).await, 403, "jwt_unmapped").await;
    b.shutdown().await;
    a.shutdown().await;
}

/// 50 concurrent first requests of one new identity, split across two instances
/// (`auto_register`): exactly one key and one mapping exist afterwards, no key minted by
/// a loser is left behind, every request is 200 or 503 `mapping_conflict`, and every 200
/// ran as the one key. The first 20 mapping lookups (over both instances) are held
/// until all 20 arrived, so at least 20 requests mint a key and race for the mapping.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_auto_registration_across_two_instances_makes_one_key() {
    let idp = MockIdp::start().await;
    let racers = 20;
    let lookups = Lookups::gated(racers);
    let Some((a, b)) =
        two_counted_instances(&idp, UnregisteredPolicy::AutoRegister, &lookups).await
    else {
        return;
    };
    let jwt = token_for(&idp, "newcomer", "newcomer@corp.example");
    let responses = join_all((0..50).map(|i| {
        let app = if i % 2 == 0 { &a } else { &b };
        chat_as(app, &jwt, "llama3.1:8b")
    }))
    .await;
    let mut served = Vec::new();
    for resp in responses {
        if resp.status() == 200 {
            let id = request_id(&resp);
            let body = ok_json(resp).await;
            assert_eq!(body["done"], true);
            served.push(id);
        } else {
            assert_error(resp, 503, "mapping_conflict").await;
        }
    }
    assert!(!served.is_empty(), "somebody won the race");
    assert!(
        lookups.inserted_keys() >= racers,
        "{} keys minted: the requests did not race",
        lookups.inserted_keys()
    );

    let keys = ok_json(a.admin_get("/key/list?size=1000").await).await;
    assert_eq!(
        keys["total_count"], 1,
        "exactly one key, no orphans: {keys}"
    );
    let key_id = keys["keys"][0]["key_id"].as_str().unwrap().to_string();
    assert_eq!(keys["keys"][0]["user_id"], "newcomer");
    let mappings = all_mappings(&a).await;
    assert_eq!(mappings.len(), 1, "{mappings:?}");
    assert_eq!(mappings[0]["key_id"], key_id.as_str());
    assert_eq!(mappings[0]["jwt_claim_value"], "newcomer@corp.example");
    assert_eq!(mappings[0]["jwt_issuer"], idp.issuer().as_str());

    // Every admitted request ran as that key.
    a.app.spend.flush().await;
    b.app.spend.flush().await;
    let rows = ok_json(
        a.admin_get(&format!("/spend/logs?key_id={key_id}&limit=10000"))
            .await,
    )
    .await;
    let recorded: BTreeSet<&str> = rows
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["request_id"].as_str().unwrap())
        .collect();
    for id in &served {
        assert!(
            recorded.contains(id.as_str()),
            "request {id} did not run as the key"
        );
    }
    // Later requests on either instance keep using it.
    chat_ok(&a, &jwt, "llama3.1:8b").await;
    chat_ok(&b, &jwt, "llama3.1:8b").await;
    assert_eq!(key_count(&a, "").await, 1);
    b.shutdown().await;
    a.shutdown().await;
}

/// The same race on one SQLite-backed instance (the single-instance default): at least
/// 10 of 50 requests mint a key at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_auto_registration_on_one_instance_makes_one_key() {
    let idp = MockIdp::start().await;
    let lookups = Lookups::gated(10);
    let app = TestApp::builder()
        .config(sso(&idp, UnregisteredPolicy::AutoRegister))
        .wrap_store(lookups.wrap())
        .spawn()
        .await;
    let jwt = token_for(&idp, "solo", "solo@corp.example");
    let responses = join_all((0..50).map(|_| chat_as(&app, &jwt, "llama3.1:8b"))).await;
    for resp in responses {
        if resp.status() == 200 {
            ok_json(resp).await;
        } else {
            assert_error(resp, 503, "mapping_conflict").await;
        }
    }
    assert!(lookups.inserted_keys() >= 10, "the requests raced");
    assert_eq!(key_count(&app, "").await, 1, "exactly one key, no orphans");
    assert_eq!(all_mappings(&app).await.len(), 1);
    app.shutdown().await;
}
