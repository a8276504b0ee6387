//! The HTTP skeleton (SPEC §4, §4.3, §6.1): the error envelope and `X-Request-ID` on every
//! kind of error, operational endpoints, no internals in any body, graceful shutdown.

use std::sync::Arc;

use serde_json::{Value, json};
use testkit::ollama::Failure;
use tollgate::store::{
    Audit, KeyFields, KeyFilter, Mapping, Page, Store, StoreResult, Team, TeamFields, UsageFilter,
    UsageRow, VirtualKey,
};

use super::keys_support::chat_once;
use super::support::*;

/// A valid-looking virtual key nobody minted.
fn unknown_key() -> String {
    format!("sk-{}", "x".repeat(40))
}

// ------------------------------------------------------------------ envelope

#[tokio::test]
async fn unknown_paths_are_404_with_the_envelope() {
    let app = TestApp::spawn().await;
    for path in [
        "/nope",
        "/api/me",
        "/api/chat/extra",
        "/v1/nope",
        "/healthz/x",
    ] {
        assert_error(app.get(path, None).await, 404, "not_found").await;
        // Authenticated callers get the same.
        assert_error(app.admin_get(path).await, 404, "not_found").await;
    }
    app.shutdown().await;
}

#[tokio::test]
async fn wrong_methods_are_405_with_the_envelope() {
    let app = TestApp::spawn().await;
    assert_error(app.get("/api/chat", None).await, 405, "method_not_allowed").await;
    assert_error(app.admin_get("/api/chat").await, 405, "method_not_allowed").await;
    assert_error(
        app.request(
            reqwest::Method::DELETE,
            "/v1/chat/completions",
            Some(MASTER_KEY),
        )
        .send()
        .await
        .expect("DELETE"),
        405,
        "method_not_allowed",
    )
    .await;
    assert_error(
        app.post_json("/healthz", None, &json!({})).await,
        405,
        "method_not_allowed",
    )
    .await;
    assert_eq!(
        app.ollama.request_count(),
        0,
        "nothing reaches the upstream"
    );
    app.shutdown().await;
}

#[tokio::test]
async fn every_authentication_failure_is_one_identical_401() {
    let app = TestApp::spawn().await;
    let body = chat("llama3.1:8b");
    let unknown = unknown_key();
    let mut bodies = Vec::new();
    let cases: Vec<(&str, Option<String>)> = vec![
        ("no Authorization", None),
        ("unknown sk- key", Some(format!("Bearer {unknown}"))),
        ("Basic scheme", Some("Basic x".to_string())),
        ("empty bearer", Some("Bearer ".to_string())),
        ("bearer without token", Some("Bearer".to_string())),
        ("not a key", Some("Bearer hello".to_string())),
        (
            "JWT-shaped, JWT disabled",
            Some("Bearer aaa.bbb.ccc".to_string()),
        ),
        (
            "master key with wrong case",
            Some(format!("Bearer {}", MASTER_KEY.to_uppercase())),
        ),
        (
            "master key prefix",
            Some(format!("Bearer {}", &MASTER_KEY[..16])),
        ),
    ];
    for (what, header) in &cases {
        let mut rb = app
            .request(reqwest::Method::POST, "/api/chat", None)
            .json(&body);
        if let Some(h) = header {
            rb = rb.header(reqwest::header::AUTHORIZATION, h);
        }
        let resp = rb.send().await.expect("POST /api/chat");
        let err = assert_error(resp, 401, "unauthorized").await;
        let normalised = err.raw.replace(&err.request_id, "<id>");
        bodies.push((*what, normalised));
    }
    let (first_case, first) = &bodies[0];
    for (what, b) in &bodies[1..] {
        assert_eq!(
            b, first,
            "401 for {what:?} differs from 401 for {first_case:?}"
        );
    }
    assert_eq!(
        app.ollama.request_count(),
        0,
        "nothing reaches the upstream"
    );
    app.shutdown().await;
}

#[tokio::test]
async fn oversized_bodies_are_413_with_the_envelope() {
    let app = TestApp::builder()
        .config(|c| c.server.max_body_bytes = 1024)
        .spawn()
        .await;
    let big = json!({
        "model": "llama3.1:8b",
        "messages": [{"role": "user", "content": "a".repeat(4096)}],
    });
    // With a Content-Length …
    assert_error(
        app.admin_post("/api/chat", &big).await,
        413,
        "payload_too_large",
    )
    .await;
    // … and chunked, without one.
    let bytes = serde_json::to_vec(&big).expect("serialise");
    let chunks: Vec<Result<Vec<u8>, std::io::Error>> =
        bytes.chunks(256).map(|c| Ok(c.to_vec())).collect();
    let stream = futures_util::stream::iter(chunks);
    let resp = app
        .post_raw(
            "/api/chat",
            Some(MASTER_KEY),
            reqwest::Body::wrap_stream(stream),
        )
        .await;
    assert_error(resp, 413, "payload_too_large").await;
    // A body under the limit still goes through.
    let resp = app
        .admin_post(
            "/api/chat",
            &json!({"model": "llama3.1:8b", "stream": false, "messages": []}),
        )
        .await;
    assert_eq!(resp.status(), 200);
    assert_eq!(
        app.ollama.request_count(),
        1,
        "only the small request reached the upstream"
    );
    app.shutdown().await;
}

#[tokio::test]
async fn malformed_json_is_400_with_the_envelope() {
    let app = TestApp::spawn().await;
    for body in [
        "{nope",
        "{\"model\": ",
        "[1, 2]",
        "\"text\"",
        "{\"model\": \"x\"} trailing",
    ] {
        let resp = app.post_raw("/api/chat", Some(MASTER_KEY), body).await;
        let err = assert_error(resp, 400, "invalid_request").await;
        assert!(!err.message.contains("serde"), "{}", err.raw);
    }
    // A wrong type names the field, not a Rust type.
    let resp = app
        .post_raw("/api/chat", Some(MASTER_KEY), r#"{"model": 7}"#)
        .await;
    let err = assert_error(resp, 400, "invalid_request").await;
    assert!(err.message.contains("model"), "{}", err.raw);
    for rust_type in ["Cow", "str", "i64", "u64", "Option"] {
        assert!(!err.message.contains(rust_type), "{}", err.raw);
    }
    assert_eq!(
        app.ollama.request_count(),
        0,
        "nothing reaches the upstream"
    );
    app.shutdown().await;
}

/// Delegates to the real store, except that `ping` (what `/readyz` calls) panics.
struct PanickingPing(Arc<dyn Store>);

#[async_trait::async_trait]
impl Store for PanickingPing {
    async fn ping(&self) -> StoreResult<()> {
        panic!("injected panic at src/store/fake.rs:1 in tollgate::store::ping (redis, sqlx)");
    }
    async fn insert_key(
        &self,
        key_id: &str,
        key_hash: &str,
        key_name: &str,
        fields: &KeyFields,
        created_by: Option<String>,
        audit: &Audit,
    ) -> StoreResult<VirtualKey> {
        self.0
            .insert_key(key_id, key_hash, key_name, fields, created_by, audit)
            .await
    }
    async fn key_by_hash(&self, key_hash: &str) -> StoreResult<Option<VirtualKey>> {
        self.0.key_by_hash(key_hash).await
    }
    async fn key_by_id(&self, key_id: &str) -> StoreResult<Option<VirtualKey>> {
        self.0.key_by_id(key_id).await
    }
    async fn update_key(
        &self,
        key_id: &str,
        fields: &KeyFields,
        audit: &Audit,
    ) -> StoreResult<Option<VirtualKey>> {
        self.0.update_key(key_id, fields, audit).await
    }
    async fn rehash_key(
        &self,
        key_id: &str,
        key_hash: &str,
        key_name: &str,
        grace_until: Option<chrono::DateTime<chrono::Utc>>,
        audit: &Audit,
    ) -> StoreResult<Option<(VirtualKey, VirtualKey)>> {
        self.0
            .rehash_key(key_id, key_hash, key_name, grace_until, audit)
            .await
    }
    async fn delete_keys(&self, key_ids: &[String], audit: &Audit) -> StoreResult<Vec<VirtualKey>> {
        self.0.delete_keys(key_ids, audit).await
    }
    async fn register_key(
        &self,
        key: &tollgate::store::NewKey,
        mapping: &Mapping,
        audit: &Audit,
    ) -> StoreResult<VirtualKey> {
        self.0.register_key(key, mapping, audit).await
    }
    async fn list_keys(
        &self,
        filter: &KeyFilter,
        page: Page,
    ) -> StoreResult<(Vec<VirtualKey>, u64)> {
        self.0.list_keys(filter, page).await
    }
    async fn insert_team(
        &self,
        team_id: &str,
        fields: &TeamFields,
        audit: &Audit,
    ) -> StoreResult<Team> {
        self.0.insert_team(team_id, fields, audit).await
    }
    async fn team(&self, team_id: &str) -> StoreResult<Option<Team>> {
        self.0.team(team_id).await
    }
    async fn update_team(
        &self,
        team_id: &str,
        fields: &TeamFields,
        audit: &Audit,
    ) -> StoreResult<Option<Team>> {
        self.0.update_team(team_id, fields, audit).await
    }
    async fn delete_team(&self, team_id: &str, audit: &Audit) -> StoreResult<Option<Vec<String>>> {
        self.0.delete_team(team_id, audit).await
    }
    async fn team_key_count(&self, team_id: &str) -> StoreResult<u64> {
        self.0.team_key_count(team_id).await
    }
    async fn list_teams(&self, page: Page) -> StoreResult<(Vec<Team>, u64)> {
        self.0.list_teams(page).await
    }
    async fn insert_mapping(&self, mapping: &Mapping, audit: &Audit) -> StoreResult<Mapping> {
        self.0.insert_mapping(mapping, audit).await
    }
    async fn mapping(&self, id: &str) -> StoreResult<Option<Mapping>> {
        self.0.mapping(id).await
    }
    async fn find_mappings(
        &self,
        issuer: &str,
        claim: &str,
        value: &str,
    ) -> StoreResult<Vec<Mapping>> {
        self.0.find_mappings(issuer, claim, value).await
    }
    async fn update_mapping(
        &self,
        mapping: &Mapping,
        audit: &Audit,
    ) -> StoreResult<Option<Mapping>> {
        self.0.update_mapping(mapping, audit).await
    }
    async fn delete_mapping(&self, id: &str, audit: &Audit) -> StoreResult<Option<Mapping>> {
        self.0.delete_mapping(id, audit).await
    }
    async fn list_mappings(&self, page: Page) -> StoreResult<(Vec<Mapping>, u64)> {
        self.0.list_mappings(page).await
    }
    async fn reset_budgets(
        &self,
        now: chrono::DateTime<chrono::Utc>,
    ) -> StoreResult<Vec<tollgate::store::BudgetReset>> {
        self.0.reset_budgets(now).await
    }
    async fn record_usage(&self, rows: &[UsageRow]) -> StoreResult<()> {
        self.0.record_usage(rows).await
    }
    async fn spend_logs(&self, filter: &UsageFilter) -> StoreResult<Vec<UsageRow>> {
        self.0.spend_logs(filter).await
    }
    async fn record_audit(&self, entry: &tollgate::store::AuditEntry) -> StoreResult<()> {
        self.0.record_audit(entry).await
    }
    async fn audit_logs(
        &self,
        filter: &tollgate::store::AuditFilter,
    ) -> StoreResult<Vec<tollgate::store::AuditEntry>> {
        self.0.audit_logs(filter).await
    }
    async fn purge(
        &self,
        table: tollgate::store::RetainedTable,
        before: chrono::DateTime<chrono::Utc>,
        max_rows: u64,
    ) -> StoreResult<u64> {
        self.0.purge(table, before, max_rows).await
    }
    async fn try_job_lock(&self, job: &str) -> StoreResult<Option<tollgate::store::JobLock>> {
        self.0.try_job_lock(job).await
    }
}

/// A handler that panics inside the production router (its `/readyz` calls a store whose
/// `ping` panics) gets the 500 envelope from the panic layer, with the request id, and
/// the server keeps serving.
#[tokio::test]
async fn a_panicking_handler_is_500_with_the_envelope() {
    let app = TestApp::builder()
        .wrap_store(|store| Arc::new(PanickingPing(store)))
        .spawn()
        .await;
    let resp = app
        .request(reqwest::Method::GET, "/readyz", None)
        .header("x-request-id", "panic-test-1")
        .send()
        .await
        .expect("GET /readyz");
    let err = assert_error(resp, 500, "internal_error").await;
    assert_eq!(err.request_id, "panic-test-1");
    // Without an incoming id the 500 carries a fresh one.
    let err = assert_error(app.get("/readyz", None).await, 500, "internal_error").await;
    uuid::Uuid::parse_str(&err.request_id).expect("a UUID request id");
    // The process (and this connection pool) carries on.
    assert_eq!(app.get("/healthz", None).await.status(), 200);
    app.shutdown().await;
}

// ------------------------------------------------------------------ request ids

#[tokio::test]
async fn request_ids_are_echoed_when_well_formed_and_minted_otherwise() {
    let app = TestApp::spawn().await;
    let send = |path: &'static str, id: Option<String>| {
        let mut rb = app.request(reqwest::Method::GET, path, None);
        if let Some(id) = id {
            rb = rb.header("x-request-id", id);
        }
        rb.send()
    };

    // Well-formed ids are honoured, on success and on errors.
    for id in ["abc-123_x.y", "A", &"a".repeat(128), "0123456789.-_ABCxyz"] {
        let resp = send("/healthz", Some(id.to_string()))
            .await
            .expect("healthz");
        assert_eq!(resp.status(), 200);
        assert_eq!(request_id(&resp), id);
        let resp = send("/nope", Some(id.to_string())).await.expect("nope");
        let err = assert_error(resp, 404, "not_found").await;
        assert_eq!(err.request_id, id);
    }

    // Malformed ids are replaced by a fresh UUID.
    for id in [
        "a".repeat(129),
        "has space".to_string(),
        "semi;colon".to_string(),
        "slash/id".to_string(),
        "quote\"d".to_string(),
        "".to_string(),
    ] {
        let resp = send("/nope", Some(id.clone())).await.expect("nope");
        let err = assert_error(resp, 404, "not_found").await;
        assert_ne!(err.request_id, id);
        uuid::Uuid::parse_str(&err.request_id)
            .unwrap_or_else(|_| panic!("{:?} replaced by a non-UUID {:?}", id, err.request_id));
    }

    // No incoming id: a fresh UUID each time.
    let a = request_id(&send("/healthz", None).await.expect("healthz"));
    let b = request_id(&send("/healthz", None).await.expect("healthz"));
    uuid::Uuid::parse_str(&a).expect("a UUID");
    assert_ne!(a, b);
    app.shutdown().await;
}

#[tokio::test]
async fn request_ids_are_not_trusted_when_configured_off() {
    let app = TestApp::builder()
        .config(|c| c.server.trusted_request_id = false)
        .spawn()
        .await;
    let resp = app
        .request(reqwest::Method::GET, "/nope", None)
        .header("x-request-id", "caller-chosen")
        .send()
        .await
        .expect("GET");
    let err = assert_error(resp, 404, "not_found").await;
    uuid::Uuid::parse_str(&err.request_id).expect("a minted UUID");
    app.shutdown().await;
}

#[tokio::test]
async fn the_request_id_is_passed_upstream_and_on_proxied_responses() {
    let app = TestApp::spawn().await;
    let resp = app
        .request(reqwest::Method::POST, "/api/chat", Some(MASTER_KEY))
        .header("x-request-id", "trace-me-42")
        .json(&chat("llama3.1:8b"))
        .send()
        .await
        .expect("POST /api/chat");
    assert_eq!(resp.status(), 200);
    assert_eq!(request_id(&resp), "trace-me-42");
    let frames = ndjson(&read_to_end(resp).await.expect("stream"));
    assert_eq!(
        frames.last().map(|f| f["done"].clone()),
        Some(Value::Bool(true))
    );
    let seen = app.ollama.last_request().expect("the mock saw the request");
    assert_eq!(seen.header("x-request-id"), Some("trace-me-42"));
    assert_eq!(
        seen.header("authorization"),
        None,
        "credentials stay behind"
    );
    app.shutdown().await;
}

// ------------------------------------------------------------------ no internals

/// Errors caused by a dependency failing say nothing about the dependency.
#[tokio::test]
async fn upstream_failures_do_not_mention_internals() {
    let app = TestApp::spawn().await;
    // Ollama answers 500 with its own words.
    app.ollama.fail_next(
        1,
        Failure::Status(
            500,
            "ollama runner crashed: llama.cpp/src/llama.rs::decode".into(),
        ),
    );
    let err = assert_error(
        app.admin_post("/api/chat", &chat("llama3.1:8b")).await,
        502,
        "upstream_error",
    )
    .await;
    assert!(!err.raw.contains("llama.cpp"));
    // Ollama is gone.
    app.ollama.stop().await;
    assert_error(
        app.admin_post("/api/chat", &chat("llama3.1:8b")).await,
        502,
        "upstream_error",
    )
    .await;
    app.shutdown().await;
}

// ------------------------------------------------------------------ operations

#[tokio::test]
async fn healthz_is_ok() {
    let app = TestApp::spawn().await;
    let resp = app.get("/healthz", None).await;
    assert_eq!(resp.status(), 200);
    request_id(&resp);
    let body: Value = resp.json().await.expect("JSON");
    assert_eq!(body, json!({"status": "ok"}));
    app.shutdown().await;
}

/// `/readyz`'s failure body: 503, names `dependency` (and no other), carries no message
/// text (every string in it is a bare identifier) and no internals.
async fn assert_not_ready(resp: reqwest::Response, dependency: &str, other: &str) {
    assert_eq!(resp.status(), 503);
    request_id(&resp);
    let raw = resp.text().await.expect("body");
    let json: Value =
        serde_json::from_str(&raw).unwrap_or_else(|e| panic!("not JSON ({e}): {raw}"));
    assert!(raw.contains(dependency), "must name {dependency}: {raw}");
    assert!(!raw.contains(other), "must not name {other}: {raw}");
    fn strings(v: &Value, out: &mut Vec<String>) {
        match v {
            Value::String(s) => out.push(s.clone()),
            Value::Array(a) => a.iter().for_each(|x| strings(x, out)),
            Value::Object(o) => o.values().for_each(|x| strings(x, out)),
            _ => {}
        }
    }
    let mut all = Vec::new();
    strings(&json, &mut all);
    for s in all {
        assert!(
            !s.is_empty() && s.bytes().all(|b| b.is_ascii_lowercase() || b == b'_'),
            "readyz body carries more than dependency names: {raw}"
        );
    }
    assert_no_internals(&raw.replace(dependency, ""));
}

#[tokio::test]
async fn readyz_is_ready_on_sqlite() {
    let app = TestApp::spawn().await;
    let resp = app.get("/readyz", None).await;
    assert_eq!(resp.status(), 200);
    request_id(&resp);
    let body = resp.text().await.expect("body");
    assert_no_internals(&body);
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_is_ready_on_every_backend() {
    each_backend(|app| async move {
        let resp = app.get("/readyz", None).await;
        assert_eq!(resp.status(), 200, "{:?}", app.backend);
        assert_no_internals(&resp.text().await.expect("body"));
        app
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_names_the_database_when_it_is_gone() {
    let Some(app) = TestApp::builder().postgres().try_spawn().await else {
        return;
    };
    assert_eq!(app.get("/readyz", None).await.status(), 200);
    app.db.destroy().await;
    assert_not_ready(app.get("/readyz", None).await, "database", "redis").await;
    // A request that needs the database gets a 503 that says nothing about it.
    let resp = app
        .post_json("/api/chat", Some(&unknown_key()), &chat("llama3.1:8b"))
        .await;
    assert_error(resp, 503, "service_unavailable").await;
    assert_eq!(app.ollama.request_count(), 0);
    // The process itself still serves.
    assert_eq!(app.get("/healthz", None).await.status(), 200);
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_is_ready_with_redis() {
    let Some(app) = TestApp::builder().redis().try_spawn().await else {
        return;
    };
    let resp = app.get("/readyz", None).await;
    assert_eq!(resp.status(), 200);
    assert_no_internals(&resp.text().await.expect("body"));
    let prefix = app.redis_prefix.clone().expect("a Redis prefix");
    let redis = app.app.redis.as_ref().expect("Redis configured");
    assert!(redis.key("x").starts_with(&prefix));
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_names_redis_when_it_is_gone() {
    let Some(redis) = redis_addr().await else {
        skip(&format!("{REDIS_VAR} not set"));
        return;
    };
    let proxy = TcpProxy::start(redis).await;
    let url = proxy.url("redis");
    let app = TestApp::builder()
        .redis()
        .config(move |c| c.redis.url = Some(tollgate::config::Secret(url)))
        .spawn()
        .await;
    assert_eq!(app.get("/readyz", None).await.status(), 200);
    proxy.stop().await;
    assert_not_ready(app.get("/readyz", None).await, "redis", "database").await;
    assert_eq!(app.get("/healthz", None).await.status(), 200);
    drop(app);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_names_only_redis_on_postgres_too() {
    let Some(redis) = redis_addr().await else {
        skip(&format!("{REDIS_VAR} not set"));
        return;
    };
    let proxy = TcpProxy::start(redis).await;
    let url = proxy.url("redis");
    let Some(app) = TestApp::builder()
        .postgres()
        .redis()
        .config(move |c| c.redis.url = Some(tollgate::config::Secret(url)))
        .try_spawn()
        .await
    else {
        return;
    };
    assert_eq!(app.get("/readyz", None).await.status(), 200);
    proxy.stop().await;
    assert_not_ready(app.get("/readyz", None).await, "redis", "database").await;
    drop(app);
}

// ------------------------------------------------------------------ shutdown

/// In process: a stream in flight when shutdown starts runs to its end; the server stops
/// accepting meanwhile and finishes once the stream is done.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_lets_an_in_flight_stream_finish() {
    let mut app = TestApp::spawn().await;
    let gate = app.ollama.hold_streams();
    let resp = app.admin_post("/api/chat", &chat("llama3.1:8b")).await;
    assert_eq!(resp.status(), 200);
    app.ollama.wait_for_requests(1).await;
    let reader = tokio::spawn(read_to_end(resp));

    app.begin_shutdown();
    // Stopped accepting: a new connection is refused (the listener is closed).
    wait_until_refused(app.addr).await;
    gate.release();

    let body = reader
        .await
        .expect("reader task")
        .expect("the stream completes");
    let frames = ndjson(&body);
    let last = frames.last().expect("frames");
    assert_eq!(last["done"], json!(true), "final frame: {last}");
    assert!(
        last["eval_count"].as_u64().is_some(),
        "final frame carries counts: {last}"
    );
    app.shutdown().await;
}

/// In process: a stream still held when `server.shutdown_grace_s` runs out is cut, and
/// the server stops anyway.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_cancels_streams_after_the_grace_period() {
    let mut app = TestApp::builder()
        .config(|c| c.server.shutdown_grace_s = 1)
        .spawn()
        .await;
    let _gate = app.ollama.hold_streams();
    let resp = app.admin_post("/api/chat", &chat("llama3.1:8b")).await;
    assert_eq!(resp.status(), 200);
    app.ollama.wait_for_requests(1).await;
    let reader = tokio::spawn(read_to_end(resp));
    app.begin_shutdown();
    // Guards against a hang only; no timing is asserted.
    let outcome = tokio::time::timeout(std::time::Duration::from_secs(60), async {
        let body = reader.await.expect("reader task");
        app.shutdown().await;
        body
    })
    .await
    .expect("the held stream was cut and the server stopped");
    if let Ok(body) = outcome {
        let frames = ndjson(&body);
        assert!(
            frames
                .last()
                .is_none_or(|f| f["done"] != json!(true) || f.get("error").is_some()),
            "a cut stream must not look complete: {frames:?}"
        );
    }
}

/// Waits (bounded) until `addr` refuses connections.
pub async fn wait_until_refused(addr: std::net::SocketAddr) {
    for _ in 0..3000 {
        if tokio::net::TcpStream::connect(addr).await.is_err() {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    panic!("{addr} still accepts connections after shutdown began");
}

/// Every background task (usage writer, budget job, the invalidation subscriber and the
/// Redis settlements when Redis is configured) is tracked: shutdown stops them and
/// returns only once none is left.
async fn shutdown_awaits_every_background_task(builder: TestAppBuilder) {
    let Some(app) = builder.try_spawn().await else {
        return;
    };
    let (key, _) = app
        .create_key(KeyFields {
            rpm_limit: Some(100),
            ..Default::default()
        })
        .await;
    let resp = app
        .post_json("/api/chat", Some(&key), &chat_once("llama3.1:8b"))
        .await;
    assert_eq!(resp.status(), 200);
    let state = app.app.clone();
    assert!(
        state.background_tasks() >= 2,
        "the usage writer and the budget job run: {}",
        state.background_tasks()
    );
    app.shutdown().await;
    assert_eq!(state.background_tasks(), 0);
}

#[tokio::test]
async fn shutdown_awaits_every_background_task_in_process() {
    shutdown_awaits_every_background_task(TestApp::builder()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_awaits_every_background_task_with_redis() {
    shutdown_awaits_every_background_task(TestApp::builder().redis()).await;
}
