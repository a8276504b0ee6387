//! Teams through the management API (SPEC §4.2 teams, §5.2 checks 2 and 4): what
//! `/team/*` return, validation that writes nothing, deletion with and without keys, and
//! that a team's models and blocking reach its keys' very next request.

use chrono::{DateTime, Utc};
use serde_json::{Value, json};
use tollgate::store::Mapping;

use crate::keys_support::*;
use crate::support::{TestApp, assert_error};

fn ts(v: &Value) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(v.as_str().unwrap_or_else(|| panic!("a timestamp: {v}")))
        .unwrap_or_else(|e| panic!("a RFC 3339 timestamp ({e}): {v}"))
        .with_timezone(&Utc)
}

fn full_team_body(team_id: &str) -> Value {
    json!({
        "team_id": team_id,
        "team_alias": "Research",
        "models": ["llama3.1:*", "qwen2.5:7b"],
        "max_budget": 50.5,
        "budget_duration": "30d",
        "tpm_limit": 200000,
        "rpm_limit": 900,
        "max_parallel_requests": 8,
        "metadata": {"cost_center": "r&d", "tier": 1},
    })
}

/// The fields every team view shows for [`full_team_body`].
fn assert_full_team(obj: &Value, team_id: &str) {
    assert_eq!(obj["team_id"], team_id, "{obj}");
    assert_eq!(obj["team_alias"], "Research", "{obj}");
    assert_eq!(obj["models"], json!(["llama3.1:*", "qwen2.5:7b"]), "{obj}");
    assert_eq!(obj["max_budget"], 50.5, "{obj}");
    assert_eq!(obj["budget_duration"], "30d", "{obj}");
    assert_eq!(obj["tpm_limit"], 200000, "{obj}");
    assert_eq!(obj["rpm_limit"], 900, "{obj}");
    assert_eq!(obj["max_parallel_requests"], 8, "{obj}");
    assert_eq!(obj["blocked"], false, "{obj}");
    assert_eq!(
        obj["metadata"],
        json!({"cost_center": "r&d", "tier": 1}),
        "{obj}"
    );
    assert_eq!(obj["spend"], 0.0, "{obj}");
}

/// `POST /team/new` with `body`; asserts success and returns the team.
async fn new_team(app: &TestApp, body: Value) -> Value {
    ok_json(app.admin_post("/team/new", &body).await).await
}

/// `GET /team/info?team_id=…` → the `team_info` object (asserts 200).
async fn team_info(app: &TestApp, team_id: &str) -> Value {
    let body = ok_json(
        app.admin_get(&format!("/team/info?team_id={team_id}"))
            .await,
    )
    .await;
    assert_eq!(body["team_id"], team_id, "{body}");
    body["team_info"].clone()
}

/// Every team id `GET /team/list` shows (one page of 1000), sorted.
async fn team_ids(app: &TestApp) -> Vec<String> {
    let body = ok_json(app.admin_get("/team/list?size=1000").await).await;
    let mut ids: Vec<String> = body
        .as_array()
        .unwrap_or_else(|| panic!("/team/list is an array: {body}"))
        .iter()
        .map(|t| t["team_id"].as_str().expect("team_id").to_string())
        .collect();
    ids.sort();
    ids
}

/// A JWT mapping for `key_id`, written straight to the store (the mapping API belongs to
/// another area; here only its removal with the key matters).
async fn mapping_for(app: &TestApp, key_id: &str, value: &str) -> String {
    let now = Utc::now();
    let mapping = Mapping {
        id: uuid::Uuid::new_v4().to_string(),
        jwt_claim_name: "email".into(),
        jwt_claim_value: value.into(),
        jwt_issuer: String::new(),
        key_id: key_id.into(),
        description: None,
        is_active: true,
        created_at: now,
        updated_at: now,
        created_by: None,
        updated_by: None,
    };
    app.app
        .store
        .insert_mapping(&mapping, &crate::support::audit())
        .await
        .expect("insert a mapping")
        .id
}

backend_tests! {
    /// `/team/new` with a chosen `team_id` echoes every field; without one it makes an
    /// id of its own; the same id twice is 409 and writes nothing.
    async fn new_with_and_without_team_id(app) {
        let before = Utc::now();
        let created = new_team(app, full_team_body("team-research")).await;
        assert_full_team(&created, "team-research");
        let reset = ts(&created["budget_reset_at"]);
        assert!(
            reset >= before - chrono::Duration::seconds(1) + chrono::Duration::days(30) && reset <= Utc::now() + chrono::Duration::days(30),
            "budget_reset_at is one period from now: {created}"
        );
        assert_full_team(&team_info(app, "team-research").await, "team-research");

        let minted = new_team(app, json!({"team_alias": "No id"})).await;
        let minted_id = minted["team_id"].as_str().expect("a generated team_id").to_string();
        assert!(!minted_id.is_empty() && minted_id != "team-research", "{minted}");
        let other = new_team(app, json!({})).await;
        assert_ne!(other["team_id"], minted["team_id"], "generated ids are distinct");
        let info = team_info(app, &minted_id).await;
        assert_eq!(info["team_alias"], "No id");
        assert_eq!(info["models"], json!([]));
        assert!(info["rpm_limit"].is_null() && info["max_budget"].is_null(), "{info}");
        assert!(info["budget_reset_at"].is_null(), "no budget_duration, no reset: {info}");
        assert_eq!(info["blocked"], false);

        let ids = team_ids(app).await;
        let err = assert_error(
            app.admin_post("/team/new", &json!({"team_id": "team-research", "team_alias": "Again"})).await,
            409,
            "conflict",
        )
        .await;
        assert!(err.message.contains("team-research"), "{}", err.message);
        assert_eq!(team_ids(app).await, ids, "nothing was written");
        assert_eq!(team_info(app, "team-research").await["team_alias"], "Research");
    }

    /// `/team/info` of an unknown team is 404; `/team/list` lists every team and pages.
    async fn info_and_list(app) {
        assert_error(app.admin_get("/team/info?team_id=nobody").await, 404, "not_found").await;
        assert_error(app.admin_get("/team/info").await, 400, "invalid_request").await;
        let mut made = Vec::new();
        for i in 0..5 {
            let id = format!("list-{i}");
            new_team(app, json!({"team_id": id, "rpm_limit": i})).await;
            made.push(id);
        }
        assert_eq!(team_ids(app).await, made);
        let body = ok_json(app.admin_get("/team/list").await).await;
        let listed = body.as_array().expect("array");
        assert_eq!(listed.len(), 5);
        let third = listed.iter().find(|t| t["team_id"] == "list-3").expect("list-3 listed");
        assert_eq!(third["rpm_limit"], 3, "{third}");
        // Paging: two pages of two and a last page of one, no overlaps.
        let mut paged = Vec::new();
        for page in 1..=3 {
            let body = ok_json(app.admin_get(&format!("/team/list?page={page}&size=2")).await).await;
            let ids: Vec<String> = body.as_array().expect("array").iter()
                .map(|t| t["team_id"].as_str().expect("team_id").to_string()).collect();
            assert_eq!(ids.len(), if page < 3 { 2 } else { 1 }, "page {page}: {body}");
            paged.extend(ids);
        }
        paged.sort();
        assert_eq!(paged, made);
        assert_error(app.admin_get("/team/list?size=0").await, 400, "invalid_request").await;
    }

    /// `/team/update` changes what it is given, leaves what is absent, and `null` clears;
    /// changing `budget_duration` starts a new period and clearing it drops the reset.
    async fn update_changes_fields_and_null_clears(app) {
        new_team(app, full_team_body("team-up")).await;
        let updated = ok_json(app.admin_post("/team/update", &json!({
            "team_id": "team-up",
            "team_alias": "Renamed",
            "rpm_limit": 5,
            "budget_duration": "1d",
        })).await).await;
        assert_eq!(updated["team_alias"], "Renamed", "{updated}");
        assert_eq!(updated["rpm_limit"], 5);
        assert_eq!(updated["tpm_limit"], 200000, "absent fields stay");
        assert_eq!(updated["models"], json!(["llama3.1:*", "qwen2.5:7b"]));
        assert_eq!(updated["budget_duration"], "1d");
        let reset = ts(&updated["budget_reset_at"]);
        let day = chrono::Duration::days(1);
        assert!(reset <= Utc::now() + day && reset > Utc::now() + day - chrono::Duration::minutes(5), "{updated}");
        assert_eq!(team_info(app, "team-up").await, updated);

        let cleared = ok_json(app.admin_post("/team/update", &json!({
            "team_id": "team-up",
            "team_alias": null,
            "models": null,
            "max_budget": null,
            "budget_duration": null,
            "tpm_limit": null,
            "rpm_limit": null,
            "max_parallel_requests": null,
            "metadata": null,
        })).await).await;
        for field in ["team_alias", "max_budget", "budget_duration", "budget_reset_at", "tpm_limit", "rpm_limit", "max_parallel_requests"] {
            assert!(cleared[field].is_null(), "{field} cleared: {cleared}");
        }
        assert_eq!(cleared["models"], json!([]));
        assert_eq!(cleared["metadata"], json!({}));
        assert_eq!(team_info(app, "team-up").await, cleared);

        let blocked = ok_json(app.admin_post("/team/update", &json!({"team_id": "team-up", "blocked": true})).await).await;
        assert_eq!(blocked["blocked"], true);
        assert_error(
            app.admin_post("/team/update", &json!({"team_id": "nobody", "rpm_limit": 1})).await,
            404,
            "not_found",
        )
        .await;
        assert!(!team_ids(app).await.contains(&"nobody".to_string()), "an update creates nothing");
    }

    /// Unknown fields, wrong types and out-of-range values are 400 `invalid_request`
    /// naming the field, on `/team/new` and `/team/update` alike; nothing is written.
    async fn invalid_input_is_rejected_and_nothing_written(app) {
        new_team(app, full_team_body("team-valid")).await;
        let before = team_info(app, "team-valid").await;
        let ids = team_ids(app).await;
        let cases: Vec<(Value, &str)> = vec![
            (json!({"rpm_limit": -1}), "rpm_limit"),
            (json!({"tpm_limit": -5}), "tpm_limit"),
            (json!({"max_parallel_requests": -1}), "max_parallel_requests"),
            (json!({"max_budget": -0.5}), "max_budget"),
            (json!({"budget_duration": "forever"}), "budget_duration"),
            (json!({"budget_duration": "-1d"}), "budget_duration"),
            (json!({"bogus": true}), "bogus"),
            (json!({"models": "llama3.1:8b"}), "models"),
            (json!({"models": [""]}), "models"),
            (json!({"rpm_limit": "ten"}), "rpm_limit"),
            (json!({"blocked": "yes"}), "blocked"),
            (json!({"metadata": [1]}), "metadata"),
            (json!({"team_alias": "ok", "max_budget": -1}), "max_budget"),
        ];
        for (i, (body, field)) in cases.iter().enumerate() {
            let mut body = body.clone();
            body["team_id"] = json!(format!("bad-{i}"));
            let err = assert_error(app.admin_post("/team/new", &body).await, 400, "invalid_request").await;
            assert!(err.message.contains(field), "/team/new names `{field}` for {body}: {}", err.message);
        }
        let err = assert_error(app.admin_post("/team/new", &json!({"team_id": "has space"})).await, 400, "invalid_request").await;
        assert!(err.message.contains("team_id"), "{}", err.message);
        assert_eq!(team_ids(app).await, ids, "/team/new wrote nothing");

        for (body, field) in &cases {
            let mut body = body.clone();
            body["team_id"] = json!("team-valid");
            let err = assert_error(app.admin_post("/team/update", &body).await, 400, "invalid_request").await;
            assert!(err.message.contains(field), "/team/update names `{field}` for {body}: {}", err.message);
        }
        let err = assert_error(app.admin_post("/team/update", &json!({"rpm_limit": 1})).await, 400, "invalid_request").await;
        assert!(err.message.contains("team_id"), "{}", err.message);
        for raw in ["{nope", "", "[]", "{\"team_id\": \"team-valid\"} trailing"] {
            assert_error(app.post_raw("/team/update", Some(&app.master_key), raw).await, 400, "invalid_request").await;
            assert_error(app.post_raw("/team/new", Some(&app.master_key), raw).await, 400, "invalid_request").await;
        }
        assert_eq!(team_info(app, "team-valid").await, before, "/team/update wrote nothing");
        assert_eq!(team_ids(app).await, ids);
    }

    /// Deleting a team that still has keys is 409 (team and keys untouched) unless
    /// `force: true`, which deletes its keys (401 on their very next request, 404 in
    /// `/key/info`) and their JWT mappings too; a deleted team is 404.
    async fn delete_with_keys_needs_force(app) {
        new_team(app, json!({"team_id": "team-del"})).await;
        let k1 = generate(app, json!({"team_id": "team-del"})).await;
        let k2 = generate(app, json!({"team_id": "team-del"})).await;
        let outsider = plain_key(app).await;
        let m1 = mapping_for(app, &k1.key_id, "a@example.com").await;
        let kept = mapping_for(app, &outsider.key_id, "b@example.com").await;
        // Both keys are cached as usable.
        assert_chat_ok(app, &k1.key, "llama3.1:8b").await;
        assert_chat_ok(app, &k2.key, "llama3.1:8b").await;

        let err = assert_error(app.admin_post("/team/delete", &json!({"team_id": "team-del"})).await, 409, "conflict").await;
        assert!(err.message.contains("team-del"), "{}", err.message);
        assert_error(
            app.admin_post("/team/delete", &json!({"team_id": "team-del", "force": false})).await,
            409,
            "conflict",
        )
        .await;
        team_info(app, "team-del").await;
        assert_chat_ok(app, &k1.key, "llama3.1:8b").await;
        assert!(app.app.store.mapping(&m1).await.expect("store").is_some());

        let body = ok_json(app.admin_post("/team/delete", &json!({"team_id": "team-del", "force": true})).await).await;
        assert_eq!(body["deleted_teams"], json!(["team-del"]), "{body}");
        assert_error(app.admin_get("/team/info?team_id=team-del").await, 404, "not_found").await;
        let requests = app.ollama.request_count();
        for k in [&k1, &k2] {
            assert_error(chat_with(app, &k.key, "llama3.1:8b").await, 401, "unauthorized").await;
            assert_error(app.admin_get(&format!("/key/info?key_id={}", k.key_id)).await, 404, "not_found").await;
        }
        assert_eq!(app.ollama.request_count(), requests, "the deleted keys reached nothing");
        assert!(app.app.store.mapping(&m1).await.expect("store").is_none(), "the keys' mappings are gone");
        assert!(app.app.store.mapping(&kept).await.expect("store").is_some(), "other mappings stay");
        assert_chat_ok(app, &outsider.key, "llama3.1:8b").await;
        assert!(!team_ids(app).await.contains(&"team-del".to_string()));

        // Deleting again, or updating the deleted team: 404.
        assert_error(app.admin_post("/team/delete", &json!({"team_id": "team-del", "force": true})).await, 404, "not_found").await;
        assert_error(app.admin_post("/team/update", &json!({"team_id": "team-del", "rpm_limit": 1})).await, 404, "not_found").await;
    }

    /// `/team/delete` takes LiteLLM's `team_ids` list; a team with keys in the list makes
    /// the whole call 409 and deletes none of them.
    async fn delete_takes_team_ids(app) {
        for id in ["many-1", "many-2", "many-3", "busy"] {
            new_team(app, json!({"team_id": id})).await;
        }
        let busy_key = generate(app, json!({"team_id": "busy"})).await;
        assert_error(
            app.admin_post("/team/delete", &json!({"team_ids": ["many-1", "busy"]})).await,
            409,
            "conflict",
        )
        .await;
        assert_eq!(team_ids(app).await, ["busy", "many-1", "many-2", "many-3"], "nothing deleted");

        let body = ok_json(app.admin_post("/team/delete", &json!({"team_ids": ["many-1", "many-2"]})).await).await;
        let mut deleted: Vec<String> = serde_json::from_value(body["deleted_teams"].clone()).expect("deleted_teams");
        deleted.sort();
        assert_eq!(deleted, ["many-1", "many-2"]);
        assert_eq!(team_ids(app).await, ["busy", "many-3"]);
        assert_error(app.admin_get("/team/info?team_id=many-1").await, 404, "not_found").await;
        assert_error(app.admin_post("/team/delete", &json!({})).await, 400, "invalid_request").await;
        assert_error(app.admin_post("/team/delete", &json!({"team_ids": ["many-3", "ghost"]})).await, 404, "not_found").await;
        assert_eq!(team_ids(app).await, ["busy", "many-3"], "an unknown id deletes nothing");
        assert_chat_ok(app, &busy_key.key, "llama3.1:8b").await;
    }

    /// A key cannot name a team that does not exist, on `/key/generate` or `/key/update`.
    async fn key_with_a_missing_team_is_rejected(app) {
        let total = key_total(app).await;
        let err = assert_error(app.admin_post("/key/generate", &json!({"team_id": "ghost"})).await, 400, "invalid_request").await;
        assert!(err.message.contains("team_id"), "{}", err.message);
        assert_eq!(key_total(app).await, total, "no key was written");

        new_team(app, json!({"team_id": "real"})).await;
        let k = generate(app, json!({"team_id": "real"})).await;
        let err = assert_error(
            app.admin_post("/key/update", &json!({"key_id": k.key_id, "team_id": "ghost"})).await,
            400,
            "invalid_request",
        )
        .await;
        assert!(err.message.contains("team_id"), "{}", err.message);
        assert_eq!(info(app, &k.key_id).await["team_id"], "real", "the key was not moved");
    }

    /// A team's `models` bound its keys that have none (403 `model_not_allowed`), the
    /// key's own list wins, and a `/team/update` of the list reaches the next request.
    async fn team_models_apply_to_keys_without_models(app) {
        new_team(app, json!({"team_id": "team-m", "models": ["qwen2.5:*"]})).await;
        let bare = generate(app, json!({"team_id": "team-m"})).await;
        let own = generate(app, json!({"team_id": "team-m", "models": ["llama3.1:8b"]})).await;
        assert_chat_ok(app, &bare.key, "qwen2.5:7b").await;
        let seen = app.ollama.request_count();
        assert_error(chat_with(app, &bare.key, "llama3.1:8b").await, 403, "model_not_allowed").await;
        assert_chat_ok(app, &own.key, "llama3.1:8b").await;
        assert_error(chat_with(app, &own.key, "qwen2.5:7b").await, 403, "model_not_allowed").await;
        assert_eq!(app.ollama.request_count(), seen + 1, "refusals reached nothing");

        ok_json(app.admin_post("/team/update", &json!({"team_id": "team-m", "models": ["llama3.1:8b"]})).await).await;
        assert_chat_ok(app, &bare.key, "llama3.1:8b").await;
        assert_error(chat_with(app, &bare.key, "qwen2.5:7b").await, 403, "model_not_allowed").await;
        // No team models any more: everything.
        ok_json(app.admin_post("/team/update", &json!({"team_id": "team-m", "models": null})).await).await;
        assert_chat_ok(app, &bare.key, "qwen2.5:7b").await;
        assert_chat_ok(app, &bare.key, "llama3.2:latest").await;
    }

    /// Blocking a team through `/team/update` blocks every key of it on the very next
    /// request (403 `key_blocked`, nothing sent upstream); unblocking restores them.
    async fn blocked_team_blocks_its_keys_at_once(app) {
        new_team(app, json!({"team_id": "team-b"})).await;
        let member = generate(app, json!({"team_id": "team-b"})).await;
        let outsider = plain_key(app).await;
        assert_chat_ok(app, &member.key, "llama3.1:8b").await;
        let seen = app.ollama.request_count();

        ok_json(app.admin_post("/team/update", &json!({"team_id": "team-b", "blocked": true})).await).await;
        assert_error(chat_with(app, &member.key, "llama3.1:8b").await, 403, "key_blocked").await;
        assert_error(app.get("/api/tags", Some(&member.key)).await, 403, "key_blocked").await;
        assert_eq!(app.ollama.request_count(), seen, "a blocked team's key reaches nothing");
        assert_chat_ok(app, &outsider.key, "llama3.1:8b").await;
        assert_eq!(info(app, &member.key_id).await["blocked"], false, "the key itself is not blocked");

        ok_json(app.admin_post("/team/update", &json!({"team_id": "team-b", "blocked": false})).await).await;
        assert_chat_ok(app, &member.key, "llama3.1:8b").await;
    }

    /// A virtual key — even one of the team — is 403 on every `/team/*` route, no
    /// credential is 401, and nothing changes.
    async fn team_routes_need_an_admin(app) {
        new_team(app, json!({"team_id": "team-a", "rpm_limit": 7})).await;
        let member = generate(app, json!({"team_id": "team-a"})).await;
        let outsider = plain_key(app).await;
        let before = team_info(app, "team-a").await;
        let ids = team_ids(app).await;
        let gets = ["/team/info?team_id=team-a", "/team/list"];
        let posts = [
            ("/team/new", json!({"team_id": "team-z"})),
            ("/team/update", json!({"team_id": "team-a", "rpm_limit": 1000})),
            ("/team/delete", json!({"team_id": "team-a", "force": true})),
        ];
        for key in [&member.key, &outsider.key] {
            for path in gets {
                assert_error(app.get(path, Some(key)).await, 403, "forbidden").await;
            }
            for (path, body) in &posts {
                assert_error(app.post_json(path, Some(key), body).await, 403, "forbidden").await;
            }
        }
        for path in gets {
            assert_error(app.get(path, None).await, 401, "unauthorized").await;
        }
        for (path, body) in &posts {
            assert_error(app.post_json(path, None, body).await, 401, "unauthorized").await;
        }
        assert_eq!(team_info(app, "team-a").await, before);
        assert_eq!(team_ids(app).await, ids);
        assert_chat_ok(app, &member.key, "llama3.1:8b").await;
    }
}
