//! The audit log (SPEC §4.2): one row per management change, written in the change's
//! transaction, with actor, action, object, before/after (never a secret) and request id;
//! `GET /audit/logs` with filters and paging, under `audit:read` (SPEC §6.5).

use std::collections::BTreeMap;

use sea_orm::{ConnectionTrait, EntityTrait};
use serde_json::{Value, json};
use testkit::idp::MockIdp;
use tollgate::auth::secrets::hash_secret;
use tollgate::config::{Role, UnregisteredPolicy};
use tollgate::store::KeyFields;

use crate::jwt_support::{person, sso, token, token_for};
use crate::keys_support::ok_json;
use crate::support::*;

/// `POST path` with the master key and `X-Request-ID: id`.
async fn post_as(app: &TestApp, path: &str, body: Value, id: &str) -> reqwest::Response {
    app.request(reqwest::Method::POST, path, Some(&app.master_key))
        .header("x-request-id", id)
        .json(&body)
        .send()
        .await
        .unwrap_or_else(|e| panic!("POST {path}: {e}"))
}

async fn ok_as(app: &TestApp, path: &str, body: Value, id: &str) -> Value {
    ok_json(post_as(app, path, body, id).await).await
}

/// `GET /audit/logs?{query}` with the master key: the rows.
async fn audit(app: &TestApp, query: &str) -> Vec<Value> {
    rows(ok_json(app.admin_get(&format!("/audit/logs?{query}")).await).await)
}

fn rows(body: Value) -> Vec<Value> {
    body.as_array().expect("/audit/logs is an array").clone()
}

/// Every stored audit row, as the database holds it (for looking for secrets).
async fn stored_rows(app: &TestApp) -> Vec<entity::audit_log::Model> {
    let db = app.db.connect().await;
    entity::audit_log::Entity::find()
        .all(&db)
        .await
        .expect("read audit_logs")
}

backend_tests! {
    /// Every action writes exactly one row, with the actor, the request id and the object
    /// before and after as the API shows it; no plaintext key or hash is anywhere in the
    /// table.
    async fn every_change_writes_one_row_with_its_before_and_after(app) {
        let team = ok_as(app, "/team/new", json!({"team_id": "t1"}), "rq-team-new").await;
        ok_as(app, "/team/update", json!({"team_id": "t1", "rpm_limit": 5}), "rq-team-update").await;
        let key = ok_as(app, "/key/generate", json!({"team_id": "t1", "key_alias": "svc"}), "rq-key-generate").await;
        let key_id = key["key_id"].as_str().unwrap().to_string();
        let first = key["key"].as_str().unwrap().to_string();
        ok_as(app, "/key/update", json!({"key_id": key_id, "rpm_limit": 7}), "rq-key-update").await;
        ok_as(app, "/key/block", json!({"key_id": key_id}), "rq-key-block").await;
        ok_as(app, "/key/unblock", json!({"key_id": key_id}), "rq-key-unblock").await;
        let rotated = ok_as(app, "/key/regenerate", json!({"key_id": key_id, "grace_period": "1h"}), "rq-key-regenerate").await;
        let second = rotated["key"].as_str().unwrap().to_string();
        let mapping = ok_as(
            app,
            "/jwt/key/mapping/new",
            json!({"jwt_claim_name": "email", "jwt_claim_value": "a@corp.example", "key_id": key_id}),
            "rq-mapping-new",
        )
        .await;
        let mapping_id = mapping["id"].as_str().unwrap().to_string();
        ok_as(app, "/jwt/key/mapping/update", json!({"id": mapping_id, "description": "d"}), "rq-mapping-update").await;
        ok_as(app, "/jwt/key/mapping/delete", json!({"id": mapping_id}), "rq-mapping-delete").await;
        ok_as(app, "/upstream/drain", json!({"name": "default"}), "rq-upstream-drain").await;
        ok_as(app, "/upstream/undrain", json!({"name": "default"}), "rq-upstream-undrain").await;
        ok_as(app, "/key/delete", json!({"key_ids": [key_id]}), "rq-key-delete").await;
        ok_as(app, "/team/delete", json!({"team_id": "t1"}), "rq-team-delete").await;

        let all = audit(app, "limit=1000").await;
        let order = [
            "team.new", "team.update", "key.generate", "key.update", "key.block", "key.unblock",
            "key.regenerate", "mapping.new", "mapping.update", "mapping.delete",
            "upstream.drain", "upstream.undrain", "key.delete", "team.delete",
        ];
        let actions: Vec<&str> = all.iter().map(|r| r["action"].as_str().unwrap()).collect();
        let mut newest_first = order.to_vec();
        newest_first.reverse();
        assert_eq!(actions, newest_first, "one row per change, newest first");
        let by_action: BTreeMap<&str, &Value> = all.iter().map(|r| (r["action"].as_str().unwrap(), r)).collect();
        for action in order {
            let row = by_action[action];
            assert_eq!(row["actor"], "master_key", "{action}");
            assert_eq!(row["request_id"], format!("rq-{}", action.replace('.', "-")), "{action}");
            assert!(row["id"].as_str().is_some_and(|id| !id.is_empty()));
            assert!(row["at"].as_str().is_some());
            let mut fields: Vec<&str> = row.as_object().unwrap().keys().map(String::as_str).collect();
            fields.sort_unstable();
            assert_eq!(
                fields,
                ["action", "actor", "after", "at", "before", "id", "object_id", "object_type", "request_id", "team_id"],
                "exactly the documented fields"
            );
        }
        let row = |a: &str| by_action[a];
        // Creates: no before; deletes: no after.
        for (action, object_type, object_id) in [
            ("team.new", "team", "t1"),
            ("key.generate", "key", key_id.as_str()),
            ("mapping.new", "mapping", mapping_id.as_str()),
        ] {
            assert_eq!(row(action)["object_type"], object_type);
            assert_eq!(row(action)["object_id"], object_id);
            assert_eq!(row(action)["before"], Value::Null, "{action}");
            assert!(row(action)["after"].is_object(), "{action}");
        }
        for action in ["team.delete", "key.delete", "mapping.delete"] {
            assert!(row(action)["before"].is_object(), "{action}");
            assert_eq!(row(action)["after"], Value::Null, "{action}");
        }
        // The objects as the API shows them.
        assert_eq!(row("team.new")["after"], team);
        assert_eq!(row("team.update")["before"]["rpm_limit"], Value::Null);
        assert_eq!(row("team.update")["after"]["rpm_limit"], 5);
        assert_eq!(row("key.generate")["after"]["key_alias"], "svc");
        assert_eq!(row("key.update")["before"]["rpm_limit"], Value::Null);
        assert_eq!(row("key.update")["after"]["rpm_limit"], 7);
        assert_eq!(row("key.block")["after"]["blocked"], true);
        assert_eq!(row("key.unblock")["before"]["blocked"], true);
        assert_eq!(row("key.unblock")["after"]["blocked"], false);
        assert_eq!(row("key.regenerate")["before"]["grace_until"], Value::Null);
        assert_eq!(row("key.regenerate")["after"]["grace_until"], rotated["grace_until"]);
        assert_ne!(row("key.regenerate")["before"]["key_name"], row("key.regenerate")["after"]["key_name"]);
        assert_eq!(row("mapping.new")["after"], mapping);
        assert_eq!(row("mapping.update")["after"]["description"], "d");
        assert_eq!(row("upstream.drain")["object_type"], "upstream");
        assert_eq!(row("upstream.drain")["object_id"], "default");
        assert_eq!(row("upstream.drain")["before"]["state"], "in_service");
        assert_eq!(row("upstream.drain")["after"]["state"], "draining");
        assert_eq!(row("upstream.undrain")["after"]["state"], "in_service");
        assert_eq!(row("upstream.drain")["team_id"], Value::Null);
        // Filed under the object's team (what team admins are shown by).
        for action in ["team.new", "key.generate", "key.regenerate", "mapping.new", "mapping.delete", "key.delete"] {
            assert_eq!(row(action)["team_id"], "t1", "{action}");
        }

        // No plaintext, no hash, anywhere.
        let stored = format!("{:?}", stored_rows(app).await);
        for secret in [&first, &second] {
            assert!(!stored.contains(secret.as_str()), "a plaintext key in the audit table");
            assert!(!stored.contains(&hash_secret(secret)), "a key hash in the audit table");
        }
        assert!(!stored.contains("key_hash"), "{stored}");
    }

    /// A change that fails writes no row: a duplicate mapping or team (409), a missing key
    /// (404), invalid input (400), a caller without the right (403).
    async fn a_failed_change_writes_no_row(app) {
        let (_, key) = app.create_key(KeyFields { metadata: json!({}), ..KeyFields::default() }).await;
        ok_as(app, "/team/new", json!({"team_id": "dup"}), "r1").await;
        let mapping = json!({"jwt_claim_name": "email", "jwt_claim_value": "x@corp.example", "key_id": key.key_id});
        ok_as(app, "/jwt/key/mapping/new", mapping.clone(), "r2").await;
        let (plain, _) = app.create_key(KeyFields { metadata: json!({}), ..KeyFields::default() }).await;
        let before = app.db.count("audit_logs").await;
        assert_error(post_as(app, "/jwt/key/mapping/new", mapping, "r3").await, 409, "conflict").await;
        assert_error(post_as(app, "/team/new", json!({"team_id": "dup"}), "r4").await, 409, "conflict").await;
        assert_error(post_as(app, "/key/update", json!({"key_id": "nope", "rpm_limit": 1}), "r5").await, 404, "not_found").await;
        assert_error(post_as(app, "/key/update", json!({"key_id": key.key_id, "rpm_limit": -1}), "r6").await, 400, "invalid_request").await;
        assert_error(post_as(app, "/upstream/drain", json!({"name": "nosuch"}), "r7").await, 404, "not_found").await;
        let resp = app.post_json("/team/new", Some(&plain), &json!({"team_id": "by-key"})).await;
        assert_eq!(resp.status(), 403);
        assert_eq!(app.db.count("audit_logs").await, before, "no row for a change that did not happen");
    }

    /// No change without its row: when the audit row cannot be written the change is
    /// not made (its transaction rolls back), and the route says so with a 5xx.
    async fn a_change_whose_row_cannot_be_written_does_not_happen(app) {
        let (_, key) = app.create_key(KeyFields { rpm_limit: Some(1), metadata: json!({}), ..KeyFields::default() }).await;
        let db = app.db.connect().await;
        db.execute_unprepared("DROP TABLE audit_logs").await.expect("drop the audit table");
        let keys = app.db.count("virtual_keys").await;
        let failed = |resp: reqwest::Response| async move {
            let status = resp.status();
            let text = resp.text().await.unwrap();
            assert!(status.is_server_error(), "{status}: {text}");
            assert_no_internals(&text);
        };
        failed(app.admin_post("/key/generate", &json!({})).await).await;
        assert_eq!(app.db.count("virtual_keys").await, keys, "no key without its row");
        failed(app.admin_post("/team/new", &json!({"team_id": "t"})).await).await;
        assert_eq!(app.db.count("teams").await, 0, "no team without its row");
        failed(app.admin_post("/key/update", &json!({"key_id": key.key_id, "rpm_limit": 9})).await).await;
        failed(app.admin_post("/key/block", &json!({"key_id": key.key_id})).await).await;
        let stored = app.app.store.key_by_id(&key.key_id).await.unwrap().unwrap();
        assert_eq!((stored.rpm_limit, stored.blocked), (Some(1), false), "the key is unchanged");
        failed(app.admin_post("/key/regenerate", &json!({"key_id": key.key_id})).await).await;
        assert_eq!(app.app.store.key_by_id(&key.key_id).await.unwrap().unwrap().key_hash, key.key_hash);
        failed(app.admin_post("/jwt/key/mapping/new", &json!({"jwt_claim_name": "email", "jwt_claim_value": "v", "key_id": key.key_id})).await).await;
        assert_eq!(app.db.count("jwt_key_mappings").await, 0);
        failed(app.admin_post("/key/delete", &json!({"key_ids": [key.key_id]})).await).await;
        assert!(app.app.store.key_by_id(&key.key_id).await.unwrap().is_some(), "not deleted");
        // The drain state is in memory: it is put back when its row cannot be written.
        failed(app.admin_post("/upstream/drain", &json!({"name": "default"})).await).await;
        let status = ok_json(app.admin_get("/upstream/status").await).await;
        assert_eq!(status["servers"][0]["state"], "in_service", "{status}");
    }

    /// Filters (object type and id, actor, time), paging (a page past the last is empty,
    /// pages do not overlap) and bad parameters (400 naming the field).
    async fn logs_filter_and_page(app) {
        ok_as(app, "/team/new", json!({"team_id": "t"}), "f0").await;
        let mut ids = Vec::new();
        for i in 0..5 {
            let key = ok_as(app, "/key/generate", json!({}), &format!("f{}", i + 1)).await;
            ids.push(key["key_id"].as_str().unwrap().to_string());
        }
        let all = audit(app, "").await;
        assert_eq!(all.len(), 6);
        assert_eq!(audit(app, "object_type=team").await.len(), 1);
        assert_eq!(audit(app, "object_type=key").await.len(), 5);
        assert_eq!(audit(app, "object_type=mapping").await.len(), 0);
        let one = audit(app, &format!("object_type=key&object_id={}", ids[2])).await;
        assert_eq!(one.len(), 1);
        assert_eq!(one[0]["request_id"], "f3");
        assert_eq!(audit(app, "actor=master_key").await.len(), 6);
        assert_eq!(audit(app, "actor=system%3Aauto_register").await.len(), 0);
        assert_eq!(audit(app, "start=2000-01-01").await.len(), 6);
        assert_eq!(audit(app, "end=2000-01-01").await.len(), 0);
        assert_eq!(audit(app, "start=2999-01-01T00:00:00Z").await.len(), 0);
        let newest = all[0]["at"].as_str().unwrap().to_string();
        let before_newest = audit(app, &format!("end={}", newest.replace('+', "%2B"))).await;
        assert_eq!(before_newest.len(), 5, "end is exclusive");

        let mut paged = Vec::new();
        for page in 1..=3 {
            let got = audit(app, &format!("limit=2&page={page}")).await;
            assert_eq!(got.len(), 2, "page {page}");
            paged.extend(got);
        }
        assert_eq!(paged, all, "pages in order, none overlapping");
        assert!(audit(app, "limit=2&page=4").await.is_empty(), "a page past the last is empty");
        assert!(audit(app, "limit=10000&page=1000000").await.is_empty());

        for (query, field) in [
            ("object_type=widget", "object_type"),
            ("limit=0", "limit"),
            ("limit=10001", "limit"),
            ("page=0", "page"),
            ("start=yesterday", "start"),
            ("end=2026-13-01", "end"),
            ("colour=red", "colour"),
        ] {
            let err = assert_error(app.admin_get(&format!("/audit/logs?{query}")).await, 400, "invalid_request").await;
            assert!(err.message.contains(field), "{query}: {}", err.message);
        }
    }
}

/// SPEC §6.5: `audit:read` — a team admin sees only the rows of its team's objects; a
/// viewer, a JWT without a role and a virtual key get 403.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn team_admins_see_their_teams_rows_and_viewers_none() {
    for backend in Backend::ALL {
        team_admin_view(backend).await;
    }
}

async fn team_admin_view(backend: Backend) {
    let idp = MockIdp::start().await;
    let Some(app) = TestApp::builder()
        .backend(backend)
        .config(sso(&idp, UnregisteredPolicy::Reject))
        .config(|c| {
            c.jwt.team_id_claim = Some("team".into());
            c.jwt.role_claim = Some("roles".into());
            c.jwt
                .role_map
                .insert("gw-team-admin".into(), Role::TeamAdmin);
            c.jwt.role_map.insert("gw-viewer".into(), Role::Viewer);
        })
        .try_spawn()
        .await
    else {
        return;
    };
    let as_role = |sub: &str, role: Option<&str>, team: &str| {
        let mut c = person(&idp, sub, Some(&format!("{sub}@corp.example")));
        if let Some(r) = role {
            c["roles"] = json!([r]);
        }
        c["team"] = json!(team);
        token(&idp, &c)
    };
    for team in ["team-a", "team-b"] {
        ok_as(&app, "/team/new", json!({"team_id": team}), "setup").await;
    }
    let a_key = ok_as(&app, "/key/generate", json!({"team_id": "team-a"}), "ka").await;
    let b_key = ok_as(&app, "/key/generate", json!({"team_id": "team-b"}), "kb").await;
    ok_as(&app, "/key/generate", json!({}), "k-none").await;

    // The team admin's own change is recorded as `jwt:<user_id>`.
    let admin = as_role("alice", Some("gw-team-admin"), "team-a");
    let resp = app
        .post_json(
            "/key/update",
            Some(&admin),
            &json!({"key_id": a_key["key_id"], "rpm_limit": 3}),
        )
        .await;
    ok_json(resp).await;

    let seen = rows(ok_json(app.get("/audit/logs", Some(&admin)).await).await);
    let mut summary: Vec<(String, String)> = seen
        .iter()
        .map(|r| {
            (
                r["action"].as_str().unwrap().to_string(),
                r["object_id"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    summary.sort();
    let a_id = a_key["key_id"].as_str().unwrap().to_string();
    assert_eq!(
        summary,
        [
            ("key.generate".to_string(), a_id.clone()),
            ("key.update".to_string(), a_id.clone()),
            ("team.new".to_string(), "team-a".to_string()),
        ],
        "only team-a's objects"
    );
    assert!(seen.iter().all(|r| r["team_id"] == "team-a"));
    let update = seen.iter().find(|r| r["action"] == "key.update").unwrap();
    assert_eq!(update["actor"], "jwt:alice");
    // Naming another team's object finds nothing.
    let other = app
        .get(
            &format!(
                "/audit/logs?object_id={}",
                b_key["key_id"].as_str().unwrap()
            ),
            Some(&admin),
        )
        .await;
    assert!(rows(ok_json(other).await).is_empty());
    // The master key sees all of it.
    assert_eq!(audit(&app, "").await.len(), 6);

    let viewer = as_role("vic", Some("gw-viewer"), "team-a");
    forbidden(app.get("/audit/logs", Some(&viewer)).await).await;
    let nobody = as_role("nora", None, "team-a");
    forbidden(app.get("/audit/logs", Some(&nobody)).await).await;
    let (plain, _) = app
        .create_key(KeyFields {
            metadata: json!({}),
            ..KeyFields::default()
        })
        .await;
    forbidden(app.get("/audit/logs", Some(&plain)).await).await;
    app.shutdown().await;
}

async fn forbidden(resp: reqwest::Response) {
    assert_eq!(resp.status(), 403);
}

/// Auto-registration writes `key.generate` and `mapping.new` as `system:auto_register`,
/// with the request id of the request that minted the key; a later request of the same
/// identity writes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auto_registration_is_audited_as_the_system() {
    for backend in Backend::ALL {
        auto_registration_audit(backend).await;
    }
}

async fn auto_registration_audit(backend: Backend) {
    let idp = MockIdp::start().await;
    let Some(app) = TestApp::builder()
        .backend(backend)
        .config(sso(&idp, UnregisteredPolicy::AutoRegister))
        .try_spawn()
        .await
    else {
        return;
    };
    let jwt = token_for(&idp, "newcomer", "newcomer@corp.example");
    let resp = app
        .request(reqwest::Method::POST, "/api/chat", Some(&jwt))
        .header("x-request-id", "rq-auto")
        .json(&json!({"model": "llama3.1:8b", "messages": [{"role": "user", "content": "hi"}], "stream": false}))
        .send()
        .await
        .unwrap();
    ok_json(resp).await;
    let all = audit(&app, "").await;
    let actions: Vec<&str> = all.iter().map(|r| r["action"].as_str().unwrap()).collect();
    assert_eq!(actions, ["mapping.new", "key.generate"], "{all:?}");
    for row in &all {
        assert_eq!(row["actor"], "system:auto_register");
        assert_eq!(row["request_id"], "rq-auto");
        assert_eq!(row["before"], Value::Null);
    }
    let key_id = all[1]["object_id"].as_str().unwrap();
    assert_eq!(all[0]["after"]["key_id"], key_id);
    assert_eq!(all[0]["after"]["jwt_claim_value"], "newcomer@corp.example");
    assert_eq!(all[1]["after"]["user_id"], "newcomer");
    let again = app
        .post_json("/api/chat", Some(&jwt), &chat("llama3.1:8b"))
        .await;
    assert_eq!(again.status(), 200);
    read_to_end(again).await.unwrap();
    assert_eq!(
        audit(&app, "").await.len(),
        2,
        "a mapped identity changes nothing"
    );
    app.shutdown().await;
}

/// `/openapi.json` documents `/audit/logs`: its query parameters and the row's schema.
#[tokio::test]
async fn the_audit_route_is_documented() {
    let app = TestApp::spawn().await;
    let doc = ok_json(app.get("/openapi.json", None).await).await;
    let op = &doc["paths"]["/audit/logs"]["get"];
    let mut params: Vec<&str> = op["parameters"]
        .as_array()
        .expect("parameters")
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    params.sort_unstable();
    assert_eq!(
        params,
        [
            "actor",
            "end",
            "limit",
            "object_id",
            "object_type",
            "page",
            "start"
        ]
    );
    assert_eq!(
        op["responses"]["200"]["content"]["application/json"]["schema"]["items"]["$ref"],
        "#/components/schemas/AuditEntry"
    );
    for status in ["400", "401", "403", "503"] {
        assert!(op["responses"][status].is_object(), "{status}");
    }
    let entry = &doc["components"]["schemas"]["AuditEntry"];
    let mut required: Vec<&str> = entry["required"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    required.sort_unstable();
    assert_eq!(
        required,
        ["action", "actor", "at", "id", "object_id", "object_type"]
    );
    let actions = &doc["components"]["schemas"]["AuditAction"]["enum"];
    assert_eq!(actions.as_array().map(Vec::len), Some(14), "{actions}");
    let regenerate = &doc["components"]["schemas"]["RegenerateKey"]["properties"]["grace_period"];
    assert!(regenerate.is_object(), "grace_period is documented");
    assert!(doc["components"]["schemas"]["VirtualKey"]["properties"]["grace_until"].is_object());
    app.shutdown().await;
}

/// The console has the audit view (calling `/audit/logs`), the grace-period field of the
/// regenerate dialog and the key's remaining grace, each with the stable `data-testid`
/// the browser tests drive.
#[tokio::test]
async fn the_console_has_the_audit_view_and_the_grace_field() {
    let app = TestApp::spawn().await;
    let html = app.get("/ui", None).await.text().await.unwrap();
    let js = app.get("/ui/app.js", None).await.text().await.unwrap();
    assert!(
        js.contains("\"/audit/logs\""),
        "app.js never calls /audit/logs"
    );
    assert!(js.contains("grace_period") && js.contains("grace_until"));
    for id in [
        "tab-audit",
        "audit-filter-type",
        "audit-filter-object",
        "audit-filter-actor",
        "audit-apply",
        "audit-body",
    ] {
        assert!(
            html.contains(&format!("data-testid=\"{id}\"")),
            "index.html lacks {id}"
        );
    }
    for id in [
        "regenerate-grace",
        "key-grace",
        "audit-row",
        "audit-before",
        "audit-after",
        "audit-actor",
        "audit-action",
    ] {
        assert!(js.contains(&format!("\"{id}\"")), "app.js lacks {id}");
    }
    app.shutdown().await;
}
