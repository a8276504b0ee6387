//! Virtual keys through the management API (SPEC §4.2 keys, §5.1, §5.2 checks 1–2): what
//! `/key/*` return, validation, and that every change reaches the very next proxied
//! request although the key is cached.

use serde_json::{Value, json};
use tollgate::auth::secrets::hash_secret;
use tollgate::store::{KeyFields, TeamFields};

use crate::keys_support::*;
use crate::support::{TestApp, assert_error};

/// `sk-` followed by at least 32 URL-safe characters.
fn assert_key_shape(key: &str) {
    let rest = key
        .strip_prefix("sk-")
        .unwrap_or_else(|| panic!("a key starts with sk-: {key}"));
    assert!(rest.len() >= 32, "at least 32 characters after sk-: {key}");
    assert!(
        rest.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'),
        "URL-safe characters only: {key}"
    );
}

/// The display name shown for `key`: `sk-…` and its last four characters.
fn display_name(key: &str) -> String {
    format!("sk-…{}", &key[key.len() - 4..])
}

/// Fails when `text` contains the plaintext `key` or its stored hash.
fn assert_no_secret(text: &str, key: &str, context: &str) {
    assert!(
        !text.contains(key),
        "{context}: the plaintext key appears in {text}"
    );
    assert!(
        !text.contains(&hash_secret(key)),
        "{context}: the key's hash appears in {text}"
    );
}

/// A key object as the API shows it: never `key` nor `key_hash`.
fn assert_no_secret_fields(obj: &Value) {
    let map = obj.as_object().expect("a key object");
    assert!(!map.contains_key("key_hash"), "key_hash shown: {obj}");
    assert!(!map.contains_key("hash"), "hash shown: {obj}");
}

fn full_generate_body() -> Value {
    json!({
        "key_alias": "billing-app",
        "models": ["llama3.1:*", "qwen2.5:7b"],
        "max_budget": 12.5,
        "budget_duration": "30d",
        "tpm_limit": 100000,
        "rpm_limit": 600,
        "max_parallel_requests": 4,
        "duration": "1h",
        "metadata": {"owner": "billing", "tier": 2},
        "user_id": "user-7",
        "org_id": "org-1",
        "allowed_routes": ["/api/chat", "/v1/*"],
    })
}

fn ts(v: &Value) -> chrono::DateTime<chrono::Utc> {
    chrono::DateTime::parse_from_rfc3339(v.as_str().unwrap_or_else(|| panic!("a timestamp: {v}")))
        .unwrap_or_else(|e| panic!("a RFC 3339 timestamp ({e}): {v}"))
        .with_timezone(&chrono::Utc)
}

/// The fields every key view (generate, info, list, update) shows with these values.
fn assert_full_fields(obj: &Value) {
    assert_eq!(obj["key_alias"], "billing-app", "{obj}");
    assert_eq!(obj["models"], json!(["llama3.1:*", "qwen2.5:7b"]), "{obj}");
    assert_eq!(obj["max_budget"], 12.5, "{obj}");
    assert_eq!(obj["budget_duration"], "30d", "{obj}");
    assert_eq!(obj["tpm_limit"], 100000, "{obj}");
    assert_eq!(obj["rpm_limit"], 600, "{obj}");
    assert_eq!(obj["max_parallel_requests"], 4, "{obj}");
    assert_eq!(
        obj["metadata"],
        json!({"owner": "billing", "tier": 2}),
        "{obj}"
    );
    assert_eq!(obj["user_id"], "user-7", "{obj}");
    assert_eq!(obj["org_id"], "org-1", "{obj}");
    assert_eq!(
        obj["allowed_routes"],
        json!(["/api/chat", "/v1/*"]),
        "{obj}"
    );
    assert_eq!(obj["blocked"], false, "{obj}");
}

/// `KeyFields` of a stored key, to change it behind the API's back.
fn fields_of(k: &tollgate::store::VirtualKey) -> KeyFields {
    KeyFields {
        key_alias: k.key_alias.clone(),
        team_id: k.team_id.clone(),
        user_id: k.user_id.clone(),
        org_id: k.org_id.clone(),
        models: k.models.clone(),
        allowed_routes: k.allowed_routes.clone(),
        unreadable: k.unreadable,
        max_budget: k.max_budget,
        budget_duration: k.budget_duration,
        tpm_limit: k.tpm_limit,
        rpm_limit: k.rpm_limit,
        max_parallel_requests: k.max_parallel_requests,
        expires: k.expires,
        blocked: k.blocked,
        metadata: k.metadata.clone(),
    }
}

async fn team(app: &TestApp, team_id: &str) {
    app.create_team(
        team_id,
        TeamFields {
            metadata: json!({}),
            ..TeamFields::default()
        },
    )
    .await;
}

backend_tests! {
    /// `/key/generate` returns the plaintext once (`sk-` + ≥32 URL-safe characters), a
    /// `key_id`, a `key_name` showing only the tail, every field, and `expires` from
    /// `duration`; two keys never share a secret or an id.
    async fn generate_returns_key_id_and_name(app) {
        let before = chrono::Utc::now();
        let k = generate(app, full_generate_body()).await;
        let after = chrono::Utc::now();
        assert_key_shape(&k.key);
        assert!(!k.key_id.is_empty());
        assert_ne!(k.key_id, k.key, "key_id is not the secret");
        assert_eq!(k.body["key_name"], display_name(&k.key), "{}", k.body);
        assert_full_fields(&k.body);
        assert_no_secret_fields(&k.body);
        let body = k.body.to_string();
        assert!(!body.contains(&hash_secret(&k.key)), "hash in /key/generate: {body}");
        let expires = ts(&k.body["expires"]);
        assert!(
            expires >= before + chrono::Duration::hours(1) - chrono::Duration::seconds(1)
                && expires <= after + chrono::Duration::hours(1) + chrono::Duration::seconds(1),
            "expires = now + duration: {expires} (request between {before} and {after})"
        );

        let other = plain_key(app).await;
        assert_key_shape(&other.key);
        assert_ne!(other.key, k.key);
        assert_ne!(other.key_id, k.key_id);
        assert!(other.body["expires"].is_null(), "no duration, no expiry: {}", other.body);
        assert_eq!(other.body["models"], json!([]), "{}", other.body);
        // Only the hash is stored.
        let stored = app.app.store.key_by_hash(&hash_secret(&k.key)).await.expect("store");
        assert_eq!(stored.map(|s| s.key_id), Some(k.key_id.clone()));
    }

    /// `/key/info` by `key_id` and by `key` shows every limit, `spend` and
    /// `budget_reset_at`, and never the key, its hash or the plaintext.
    async fn info_by_key_and_by_key_id(app) {
        let k = generate(app, full_generate_body()).await;
        let by_id = ok_json(app.admin_get(&format!("/key/info?key_id={}", k.key_id)).await).await;
        let by_key = ok_json(app.admin_get(&format!("/key/info?key={}", k.key)).await).await;
        assert_eq!(by_id, by_key, "the same key either way");
        assert_eq!(by_id["key_id"], k.key_id);
        let info = &by_id["info"];
        assert_full_fields(info);
        assert_no_secret_fields(info);
        assert!(!info.as_object().expect("info").contains_key("key"), "{info}");
        assert_eq!(info["key_id"], k.key_id);
        assert_eq!(info["key_name"], display_name(&k.key));
        assert_eq!(info["spend"], 0.0, "{info}");
        // budget_duration 30d: the first reset is ~30 days out.
        let reset = ts(&info["budget_reset_at"]);
        let days = (reset - chrono::Utc::now()).num_hours();
        assert!((29 * 24..=30 * 24).contains(&days), "budget_reset_at ≈ now + 30d: {reset}");
        assert_eq!(ts(&info["expires"]), ts(&k.body["expires"]));
        let text = by_id.to_string();
        assert_no_secret(&text, &k.key, "/key/info");

        // A key without budget_duration has no reset time.
        let plain = plain_key(app).await;
        assert!(info_of(app, &plain.key_id).await["budget_reset_at"].is_null());

        // Unknown keys are 404; naming none is 400.
        assert_error(app.admin_get("/key/info?key_id=no-such-key").await, 404, "not_found").await;
        let unknown = format!("sk-{}", "A".repeat(43));
        assert_error(app.admin_get(&format!("/key/info?key={unknown}")).await, 404, "not_found").await;
        assert_error(app.admin_get("/key/info").await, 400, "invalid_request").await;
    }

    /// `/key/list` pages with `page`/`size` and `total_count`, and filters by `team_id`
    /// and `user_id`.
    async fn list_pages_and_filters(app) {
        team(app, "team-list").await;
        let mut paged = Vec::new();
        for i in 0..5 {
            paged.push(generate(app, json!({"user_id": "pager", "key_alias": format!("p{i}")})).await.key_id);
        }
        let mut in_team = Vec::new();
        for _ in 0..2 {
            in_team.push(generate(app, json!({"team_id": "team-list", "user_id": "other"})).await.key_id);
        }
        plain_key(app).await;

        let mut seen = Vec::new();
        for (page, expected) in [(1, 2), (2, 2), (3, 1)] {
            let body = ok_json(app.admin_get(&format!("/key/list?user_id=pager&page={page}&size=2")).await).await;
            assert_eq!(body["total_count"], 5, "{body}");
            assert_eq!(body["current_page"], page, "{body}");
            assert_eq!(body["total_pages"], 3, "{body}");
            let keys = body["keys"].as_array().expect("keys");
            assert_eq!(keys.len(), expected, "page {page}: {body}");
            for k in keys {
                assert_eq!(k["user_id"], "pager");
                assert_no_secret_fields(k);
                assert!(k["key_name"].as_str().is_some_and(|n| n.starts_with("sk-…")), "{k}");
                seen.push(k["key_id"].as_str().expect("key_id").to_string());
            }
        }
        let mut expected = paged.clone();
        expected.sort();
        seen.sort();
        assert_eq!(seen, expected, "the pages hold every key exactly once");

        let beyond = ok_json(app.admin_get("/key/list?user_id=pager&page=4&size=2").await).await;
        assert_eq!(beyond["keys"], json!([]), "{beyond}");

        let body = ok_json(app.admin_get("/key/list?team_id=team-list").await).await;
        assert_eq!(body["total_count"], 2, "{body}");
        let mut ids: Vec<String> = body["keys"].as_array().expect("keys").iter()
            .map(|k| k["key_id"].as_str().expect("key_id").to_string()).collect();
        ids.sort();
        in_team.sort();
        assert_eq!(ids, in_team);

        let body = ok_json(app.admin_get("/key/list?team_id=team-list&user_id=pager").await).await;
        assert_eq!(body["total_count"], 0, "filters combine: {body}");
        let body = ok_json(app.admin_get("/key/list").await).await;
        assert_eq!(body["total_count"], 8, "{body}");

        for bad in ["page=0", "size=0", "size=1001", "page=x", "bogus=1"] {
            assert_error(app.admin_get(&format!("/key/list?{bad}")).await, 400, "invalid_request").await;
        }
    }

    /// `/key/update` changes the fields it names, keeps the others, and `null` clears.
    async fn update_changes_fields_and_null_clears(app) {
        let k = generate(app, full_generate_body()).await;
        let updated = ok_json(app.admin_post("/key/update", &json!({
            "key_id": k.key_id,
            "key_alias": "renamed",
            "rpm_limit": 5,
            "models": ["qwen2.5:7b"],
            "metadata": {"owner": "ops"},
        })).await).await;
        assert_no_secret_fields(&updated);
        assert_eq!(updated["key_alias"], "renamed");
        assert_eq!(updated["rpm_limit"], 5);
        assert_eq!(updated["models"], json!(["qwen2.5:7b"]));
        assert_eq!(updated["metadata"], json!({"owner": "ops"}));
        // Untouched fields stay.
        assert_eq!(updated["max_budget"], 12.5);
        assert_eq!(updated["tpm_limit"], 100000);
        assert_eq!(updated["user_id"], "user-7");
        assert_eq!(updated["allowed_routes"], json!(["/api/chat", "/v1/*"]));
        assert_eq!(ts(&updated["expires"]), ts(&k.body["expires"]));
        assert_eq!(info_of(app, &k.key_id).await, updated, "/key/info shows the update");

        // `null` clears; the key can be named by its plaintext too.
        let cleared = ok_json(app.admin_post("/key/update", &json!({
            "key": k.key,
            "key_alias": null,
            "models": null,
            "max_budget": null,
            "budget_duration": null,
            "tpm_limit": null,
            "rpm_limit": null,
            "max_parallel_requests": null,
            "duration": null,
            "metadata": null,
            "user_id": null,
            "org_id": null,
            "allowed_routes": null,
        })).await).await;
        for field in ["key_alias", "max_budget", "budget_duration", "tpm_limit", "rpm_limit",
                      "max_parallel_requests", "expires", "user_id", "org_id", "budget_reset_at"] {
            assert!(cleared[field].is_null(), "{field} cleared: {cleared}");
        }
        assert_eq!(cleared["models"], json!([]));
        assert_eq!(cleared["allowed_routes"], json!([]));
        assert_eq!(cleared["metadata"], json!({}));
        assert_eq!(cleared["key_id"], k.key_id);
        assert_no_secret(&cleared.to_string(), &k.key, "/key/update");

        // `duration` on update sets a new expiry from now.
        let before = chrono::Utc::now();
        let later = ok_json(app.admin_post("/key/update", &json!({"key_id": k.key_id, "duration": "2h"})).await).await;
        let expires = ts(&later["expires"]);
        assert!(expires >= before + chrono::Duration::hours(2) - chrono::Duration::seconds(1)
            && expires <= chrono::Utc::now() + chrono::Duration::hours(2) + chrono::Duration::seconds(1),
            "expires = now + 2h: {expires}");

        // Updating a key that does not exist is 404.
        assert_error(app.admin_post("/key/update", &json!({"key_id": "missing", "rpm_limit": 1})).await, 404, "not_found").await;
    }

    /// A cached key: narrowing its models applies to the very next request, which never
    /// reaches Ollama.
    async fn update_reaches_the_next_request(app) {
        let k = plain_key(app).await;
        assert_chat_ok(app, &k.key, "llama3.1:8b").await; // cached now
        ok_json(app.admin_post("/key/update", &json!({"key_id": k.key_id, "models": ["qwen2.5:7b"]})).await).await;
        let seen = app.ollama.request_count();
        assert_error(chat_with(app, &k.key, "llama3.1:8b").await, 403, "model_not_allowed").await;
        assert_eq!(app.ollama.request_count(), seen, "a refused request never reaches Ollama");
        assert_chat_ok(app, &k.key, "qwen2.5:7b").await;
        // Widening again works at once too.
        ok_json(app.admin_post("/key/update", &json!({"key_id": k.key_id, "models": null})).await).await;
        assert_chat_ok(app, &k.key, "llama3.1:8b").await;
    }

    /// `/key/block` → 403 `key_blocked` on the next request; `/key/unblock` → 200 again;
    /// both accept `key` or `key_id`.
    async fn block_and_unblock_reach_the_next_request(app) {
        let k = plain_key(app).await;
        assert_chat_ok(app, &k.key, "llama3.1:8b").await;
        let blocked = ok_json(app.admin_post("/key/block", &json!({"key_id": k.key_id})).await).await;
        assert_eq!(blocked["blocked"], true, "{blocked}");
        assert_no_secret(&blocked.to_string(), &k.key, "/key/block");
        let seen = app.ollama.request_count();
        assert_error(chat_with(app, &k.key, "llama3.1:8b").await, 403, "key_blocked").await;
        assert_error(app.get("/api/tags", Some(&k.key)).await, 403, "key_blocked").await;
        assert_eq!(app.ollama.request_count(), seen, "a blocked key reaches nothing");
        assert_eq!(info_of(app, &k.key_id).await["blocked"], true);

        let unblocked = ok_json(app.admin_post("/key/unblock", &json!({"key": k.key})).await).await;
        assert_eq!(unblocked["blocked"], false, "{unblocked}");
        assert_chat_ok(app, &k.key, "llama3.1:8b").await;

        ok_json(app.admin_post("/key/block", &json!({"key": k.key})).await).await;
        assert_error(chat_with(app, &k.key, "llama3.1:8b").await, 403, "key_blocked").await;
        ok_json(app.admin_post("/key/unblock", &json!({"key_id": k.key_id})).await).await;
        assert_chat_ok(app, &k.key, "llama3.1:8b").await;

        // `blocked` through /key/update and at creation.
        ok_json(app.admin_post("/key/update", &json!({"key_id": k.key_id, "blocked": true})).await).await;
        assert_error(chat_with(app, &k.key, "llama3.1:8b").await, 403, "key_blocked").await;
        let born_blocked = generate(app, json!({"blocked": true})).await;
        assert_error(chat_with(app, &born_blocked.key, "llama3.1:8b").await, 403, "key_blocked").await;

        assert_error(app.admin_post("/key/block", &json!({"key_id": "missing"})).await, 404, "not_found").await;
    }

    /// `/key/regenerate`: a new secret under the same `key_id`; the old secret is 401 on
    /// the very next request and the new one works.
    async fn regenerate_swaps_the_secret(app) {
        let k = generate(app, json!({"models": ["llama3.1:*"], "key_alias": "rotating"})).await;
        assert_chat_ok(app, &k.key, "llama3.1:8b").await;
        let fresh = ok_json(app.admin_post("/key/regenerate", &json!({"key_id": k.key_id})).await).await;
        let new_key = fresh["key"].as_str().expect("a new key").to_string();
        assert_key_shape(&new_key);
        assert_ne!(new_key, k.key);
        assert_eq!(fresh["key_id"], k.key_id, "key_id is stable across regenerate");
        assert_eq!(fresh["key_name"], display_name(&new_key));
        assert_eq!(fresh["models"], json!(["llama3.1:*"]), "limits are kept");
        assert_eq!(fresh["key_alias"], "rotating");
        assert_no_secret_fields(&fresh);
        assert_no_secret(&fresh.to_string(), &k.key, "/key/regenerate");

        let seen = app.ollama.request_count();
        assert_error(chat_with(app, &k.key, "llama3.1:8b").await, 401, "unauthorized").await;
        assert_eq!(app.ollama.request_count(), seen);
        assert_chat_ok(app, &new_key, "llama3.1:8b").await;
        assert_error(app.admin_get(&format!("/key/info?key={}", k.key)).await, 404, "not_found").await;
        let info = ok_json(app.admin_get(&format!("/key/info?key={new_key}")).await).await;
        assert_eq!(info["key_id"], k.key_id);

        // By plaintext too; the previous one dies at once.
        let again = ok_json(app.admin_post("/key/regenerate", &json!({"key": new_key})).await).await;
        let third = again["key"].as_str().expect("key").to_string();
        assert_eq!(again["key_id"], k.key_id);
        assert_error(chat_with(app, &new_key, "llama3.1:8b").await, 401, "unauthorized").await;
        assert_chat_ok(app, &third, "llama3.1:8b").await;

        assert_error(app.admin_post("/key/regenerate", &json!({"key_id": "missing"})).await, 404, "not_found").await;
    }

    /// `/key/delete`: the next request is 401 and `/key/info` is 404.
    async fn delete_reaches_the_next_request(app) {
        let k = plain_key(app).await;
        assert_chat_ok(app, &k.key, "llama3.1:8b").await;
        let deleted = ok_json(app.admin_post("/key/delete", &json!({"keys": [k.key]})).await).await;
        assert_eq!(deleted["deleted_keys"], json!([k.key_id]), "{deleted}");
        assert_no_secret(&deleted.to_string(), &k.key, "/key/delete");
        let seen = app.ollama.request_count();
        assert_error(chat_with(app, &k.key, "llama3.1:8b").await, 401, "unauthorized").await;
        assert_eq!(app.ollama.request_count(), seen);
        assert_error(app.admin_get(&format!("/key/info?key_id={}", k.key_id)).await, 404, "not_found").await;
        assert_error(app.admin_post("/key/delete", &json!({"key_id": k.key_id})).await, 404, "not_found").await;
    }

    /// `/key/delete` takes LiteLLM's `keys` and `key_ids` lists (and single `key` /
    /// `key_id`); one unknown entry deletes nothing.
    async fn delete_takes_lists(app) {
        let ks = [plain_key(app).await, plain_key(app).await, plain_key(app).await,
                  plain_key(app).await, plain_key(app).await];
        let deleted = ok_json(app.admin_post("/key/delete", &json!({
            "keys": [ks[0].key, ks[1].key],
            "key_ids": [ks[2].key_id],
        })).await).await;
        let mut got: Vec<String> = deleted["deleted_keys"].as_array().expect("deleted_keys").iter()
            .map(|v| v.as_str().expect("id").to_string()).collect();
        got.sort();
        let mut want = vec![ks[0].key_id.clone(), ks[1].key_id.clone(), ks[2].key_id.clone()];
        want.sort();
        assert_eq!(got, want);
        for k in &ks[..3] {
            assert_error(app.admin_get(&format!("/key/info?key_id={}", k.key_id)).await, 404, "not_found").await;
            assert_error(chat_with(app, &k.key, "llama3.1:8b").await, 401, "unauthorized").await;
        }
        // One missing id: 404 and nothing deleted.
        assert_error(app.admin_post("/key/delete", &json!({"key_ids": [ks[3].key_id, "missing"]})).await, 404, "not_found").await;
        assert_chat_ok(app, &ks[3].key, "llama3.1:8b").await;
        info(app, &ks[3].key_id).await;
        // Nothing named is 400.
        assert_error(app.admin_post("/key/delete", &json!({})).await, 400, "invalid_request").await;
        assert_error(app.admin_post("/key/delete", &json!({"keys": []})).await, 400, "invalid_request").await;
        assert_eq!(key_total(app).await, 2);
        ok_json(app.admin_post("/key/delete", &json!({"key": ks[3].key, "key_id": ks[4].key_id})).await).await;
        assert_eq!(key_total(app).await, 0);
    }

    /// An expired key is 401 `key_expired`, also when its expiry passes while cached; a
    /// key whose expiry lies ahead works.
    async fn expired_key_is_rejected(app) {
        let past = chrono::Utc::now() - chrono::Duration::seconds(5);
        let (expired, _) = app.create_key(KeyFields {
            expires: Some(past),
            metadata: json!({}),
            ..KeyFields::default()
        }).await;
        let seen = app.ollama.request_count();
        assert_error(chat_with(app, &expired, "llama3.1:8b").await, 401, "key_expired").await;
        assert_eq!(app.ollama.request_count(), seen, "an expired key reaches nothing");

        // A key with a future `duration` works; move its expiry into the past in the
        // store and drop the cached entry: the next request is key_expired.
        let k = generate(app, json!({"duration": "1h"})).await;
        assert_chat_ok(app, &k.key, "llama3.1:8b").await;
        let stored = app.app.store.key_by_id(&k.key_id).await.expect("store").expect("the key");
        let mut fields = fields_of(&stored);
        fields.expires = Some(past);
        app.app.store.update_key(&k.key_id, &fields, &crate::support::audit()).await.expect("update").expect("the key");
        app.app.keys.invalidate_key(&hash_secret(&k.key)).await;
        assert_error(chat_with(app, &k.key, "llama3.1:8b").await, 401, "key_expired").await;

        // Extending it through the API revives it at once.
        ok_json(app.admin_post("/key/update", &json!({"key_id": k.key_id, "duration": "1d"})).await).await;
        assert_chat_ok(app, &k.key, "llama3.1:8b").await;
    }

    /// Invalid input to `/key/generate` and `/key/update` is 400 `invalid_request`
    /// naming the field, and nothing is written.
    async fn invalid_input_is_rejected_and_nothing_written(app) {
        team(app, "real-team").await;
        let existing = generate(app, full_generate_body()).await;
        let total = key_total(app).await;

        let cases: Vec<(Value, &str)> = vec![
            (json!({"rpm_limit": -1}), "rpm_limit"),
            (json!({"tpm_limit": -100}), "tpm_limit"),
            (json!({"max_parallel_requests": -2}), "max_parallel_requests"),
            (json!({"max_budget": -5.0}), "max_budget"),
            (json!({"duration": "1y"}), "duration"),
            (json!({"duration": "soon"}), "duration"),
            (json!({"budget_duration": "-1d"}), "budget_duration"),
            (json!({"bogus_field": 1}), "bogus_field"),
            (json!({"models": "llama3.1:8b"}), "models"),
            (json!({"rpm_limit": "ten"}), "rpm_limit"),
            (json!({"blocked": "yes"}), "blocked"),
            (json!({"metadata": "x"}), "metadata"),
            (json!({"allowed_routes": ["api/chat"]}), "allowed_routes"),
            (json!({"team_id": "no-such-team"}), "team_id"),
            (json!({"models": ["llama3.1:8b"], "max_budget": -1}), "max_budget"),
        ];
        for (body, field) in &cases {
            let err = assert_error(app.admin_post("/key/generate", body).await, 400, "invalid_request").await;
            assert!(err.message.contains(field), "the message names `{field}` for {body}: {}", err.message);
        }
        for raw in ["{nope", "", "[1,2]", "{\"rpm_limit\": 1} trailing"] {
            assert_error(app.post_raw("/key/generate", Some(&app.master_key), raw).await, 400, "invalid_request").await;
        }
        assert_eq!(key_total(app).await, total, "no key was written");

        // The same on update: the key is unchanged afterwards.
        let before = info(app, &existing.key_id).await;
        for (body, field) in &cases {
            let mut body = body.clone();
            body["key_id"] = json!(existing.key_id);
            let err = assert_error(app.admin_post("/key/update", &body).await, 400, "invalid_request").await;
            assert!(err.message.contains(field), "the message names `{field}` for {body}: {}", err.message);
        }
        let err = assert_error(app.post_raw("/key/update", Some(&app.master_key), "{\"key_id\": ").await, 400, "invalid_request").await;
        assert!(!err.message.is_empty());
        assert_eq!(info(app, &existing.key_id).await, before, "the key was not changed");
        assert_eq!(key_total(app).await, total);

        // Key references must be strings too.
        for path in ["/key/block", "/key/regenerate", "/key/delete"] {
            let err = assert_error(app.admin_post(path, &json!({"key_id": 5})).await, 400, "invalid_request").await;
            assert!(err.message.contains("key_id"), "{path}: {}", err.message);
            let err = assert_error(app.admin_post(path, &json!({"kye_id": "x"})).await, 400, "invalid_request").await;
            assert!(err.message.contains("kye_id"), "{path}: {}", err.message);
        }
        assert_eq!(info(app, &existing.key_id).await, before);
    }

    /// The management API: a plain virtual key is 403 (authenticated, not allowed), no
    /// or an unknown credential is 401.
    async fn key_routes_need_an_admin(app) {
        let k = plain_key(app).await;
        let total = key_total(app).await;
        let gets = [
            "/key/list".to_string(),
            format!("/key/info?key_id={}", k.key_id),
            format!("/spend/logs?key_id={}", k.key_id),
        ];
        let posts = [
            ("/key/generate", json!({})),
            ("/key/update", json!({"key_id": k.key_id, "rpm_limit": 1})),
            ("/key/block", json!({"key_id": k.key_id})),
            ("/key/unblock", json!({"key_id": k.key_id})),
            ("/key/regenerate", json!({"key_id": k.key_id})),
            ("/key/delete", json!({"key_ids": [k.key_id]})),
        ];
        let unknown = format!("sk-{}", "Z".repeat(43));
        for path in &gets {
            assert_error(app.get(path, Some(&k.key)).await, 403, "forbidden").await;
            assert_error(app.get(path, None).await, 401, "unauthorized").await;
            assert_error(app.get(path, Some(&unknown)).await, 401, "unauthorized").await;
        }
        for (path, body) in &posts {
            assert_error(app.post_json(path, Some(&k.key), body).await, 403, "forbidden").await;
            assert_error(app.post_json(path, None, body).await, 401, "unauthorized").await;
            assert_error(app.post_json(path, Some(&unknown), body).await, 401, "unauthorized").await;
        }
        // Wrong scheme: 401 too.
        let resp = app.client.get(app.url("/key/list"))
            .header("authorization", format!("Basic {}", app.master_key))
            .send().await.expect("request");
        assert_error(resp, 401, "unauthorized").await;
        // Nothing changed.
        assert_eq!(key_total(app).await, total);
        let info = info(app, &k.key_id).await;
        assert!(info["rpm_limit"].is_null());
        assert_eq!(info["blocked"], false);
        assert_chat_ok(app, &k.key, "llama3.1:8b").await;
    }

    /// After `/key/generate` the plaintext appears in no response: not in `/key/info`
    /// (even when asked by it), `/key/list`, `/key/update`, `/key/block`, `/spend/logs`,
    /// nor in proxied error bodies.
    async fn plaintext_never_returned_again(app) {
        let k = generate(app, json!({"models": ["llama3.1:8b"], "key_alias": "secret-holder"})).await;
        let mut bodies = Vec::new();
        let mut keep = |label: &str, text: String| bodies.push((label.to_string(), text));

        let resp = chat_with(app, &k.key, "llama3.1:8b").await;
        keep("proxied chat", resp.text().await.expect("body"));
        let resp = chat_with(app, &k.key, "qwen2.5:7b").await;
        keep("refused chat", resp.text().await.expect("body"));
        keep("info by id", app.admin_get(&format!("/key/info?key_id={}", k.key_id)).await.text().await.expect("body"));
        keep("info by key", app.admin_get(&format!("/key/info?key={}", k.key)).await.text().await.expect("body"));
        keep("list", app.admin_get("/key/list").await.text().await.expect("body"));
        keep("update", app.admin_post("/key/update", &json!({"key": k.key, "rpm_limit": 100})).await.text().await.expect("body"));
        keep("block", app.admin_post("/key/block", &json!({"key": k.key})).await.text().await.expect("body"));
        let resp = chat_with(app, &k.key, "llama3.1:8b").await;
        keep("blocked chat", resp.text().await.expect("body"));
        keep("unblock", app.admin_post("/key/unblock", &json!({"key": k.key})).await.text().await.expect("body"));
        app.app.spend.flush().await;
        keep("spend logs", app.admin_get(&format!("/spend/logs?key_id={}", k.key_id)).await.text().await.expect("body"));
        keep("all spend logs", app.admin_get("/spend/logs").await.text().await.expect("body"));
        // The request reached Ollama without the key (checked on the mock's side too).
        for r in app.ollama.requests() {
            let seen = format!("{:?} {}", r.headers, String::from_utf8_lossy(&r.body));
            keep("upstream request", seen);
        }
        for (label, text) in &bodies {
            assert_no_secret(text, &k.key, label);
        }
        // The same after regenerate: the new secret is shown once, then never.
        let fresh = ok_json(app.admin_post("/key/regenerate", &json!({"key_id": k.key_id})).await).await;
        let new_key = fresh["key"].as_str().expect("key").to_string();
        for text in [
            app.admin_get(&format!("/key/info?key_id={}", k.key_id)).await.text().await.expect("body"),
            app.admin_get("/key/list").await.text().await.expect("body"),
        ] {
            assert_no_secret(&text, &new_key, "after regenerate");
            assert_no_secret(&text, &k.key, "after regenerate");
        }
    }
}

/// `/key/info?key_id=…`'s `info`, as a value to compare with update responses.
async fn info_of(app: &TestApp, key_id: &str) -> Value {
    info(app, key_id).await
}

/// Collects formatted log output in memory.
#[derive(Clone, Default)]
struct LogBuffer(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for LogBuffer {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl LogBuffer {
    fn text(&self) -> String {
        String::from_utf8_lossy(
            &self
                .0
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        )
        .into_owned()
    }
}

/// The plaintext key never reaches the logs: every event of the gateway, at every level,
/// across the key's life (generate, proxied requests allowed and refused, update, block,
/// regenerate, delete). A current-thread runtime keeps the server's tasks on this thread,
/// where the capturing subscriber is the default.
#[tokio::test(flavor = "current_thread")]
async fn plaintext_key_never_logged() {
    let logs = LogBuffer::default();
    let writer = logs.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);

    let app = TestApp::spawn().await;
    let k = generate(&app, json!({"models": ["llama3.1:8b"]})).await;
    assert_chat_ok(&app, &k.key, "llama3.1:8b").await;
    let stream = app
        .post_json(
            "/api/chat",
            Some(&k.key),
            &json!({"model": "llama3.1:8b", "messages": []}),
        )
        .await;
    stream.bytes().await.expect("stream");
    assert_error(
        chat_with(&app, &k.key, "qwen2.5:7b").await,
        403,
        "model_not_allowed",
    )
    .await;
    app.ollama
        .fail_next(1, testkit::ollama::Failure::Status(500, "boom".into()));
    assert_error(
        chat_with(&app, &k.key, "llama3.1:8b").await,
        502,
        "upstream_error",
    )
    .await;
    ok_json(
        app.admin_post("/key/update", &json!({"key": k.key, "rpm_limit": 10}))
            .await,
    )
    .await;
    ok_json(app.admin_post("/key/block", &json!({"key": k.key})).await).await;
    assert_error(
        chat_with(&app, &k.key, "llama3.1:8b").await,
        403,
        "key_blocked",
    )
    .await;
    ok_json(app.admin_post("/key/unblock", &json!({"key": k.key})).await).await;
    ok_json(app.admin_get(&format!("/key/info?key={}", k.key)).await).await;
    let fresh = ok_json(
        app.admin_post("/key/regenerate", &json!({"key": k.key}))
            .await,
    )
    .await;
    let new_key = fresh["key"].as_str().expect("key").to_string();
    assert_error(
        chat_with(&app, &k.key, "llama3.1:8b").await,
        401,
        "unauthorized",
    )
    .await;
    assert_chat_ok(&app, &new_key, "llama3.1:8b").await;
    ok_json(
        app.admin_post("/key/delete", &json!({"keys": [new_key]}))
            .await,
    )
    .await;
    assert_error(
        chat_with(&app, &new_key, "llama3.1:8b").await,
        401,
        "unauthorized",
    )
    .await;
    app.app.spend.flush().await;
    app.shutdown().await;

    let text = logs.text();
    // The capture works: the gateway's request lines are there.
    assert!(text.contains("proxied"), "no request log captured:\n{text}");
    assert!(
        text.contains(&display_name(&k.key)),
        "requests are logged by key name:\n{text}"
    );
    for secret in [&k.key, &new_key, &crate::support::MASTER_KEY.to_string()] {
        assert!(
            !text.contains(secret.as_str()),
            "a secret appears in the logs:\n{text}"
        );
        assert!(
            !text.contains(&hash_secret(secret)),
            "a secret's hash appears in the logs"
        );
        // Nor any long fragment of it (more than the first 8 characters).
        assert!(
            !text.contains(&secret[..16]),
            "a fragment of a secret appears in the logs:\n{text}"
        );
    }
}
