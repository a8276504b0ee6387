//! The Ollama proxy (SPEC §4.1, §5.2 checks 3–4, §5.3): what is forwarded and how, what
//! is refused before it reaches Ollama, streaming frame by frame, upstream failures, and
//! the usage recorded per request.

use reqwest::Method;
use serde_json::{Value, json};
use testkit::ollama::{DEFAULT_MODELS, Failure, ReceivedRequest};
use tollgate::config::Price;
use tollgate::store::{KeyFields, TeamFields};

use crate::keys_support::*;
use crate::support::{TestApp, assert_error, ndjson, request_id};

const QUERY: &str = "probe=1&x=y%20z";

/// Sends `method path?QUERY` with `bearer`, a cookie and (when given) a JSON body.
async fn send(
    app: &TestApp,
    method: Method,
    path: &str,
    bearer: &str,
    body: Option<&Value>,
) -> reqwest::Response {
    let mut rb = app
        .request(method.clone(), &format!("{path}?{QUERY}"), Some(bearer))
        .header("cookie", "session=abc123");
    if let Some(b) = body {
        rb = rb.json(b);
    }
    rb.send()
        .await
        .unwrap_or_else(|e| panic!("{method} {path}: {e}"))
}

/// The request Ollama received last, checked for the forwarding rules: same method, path,
/// query and body; Ollama's own `Host`; no `Authorization`, no `Cookie`.
fn assert_forwarded(
    app: &TestApp,
    method: &Method,
    path: &str,
    body: Option<&Value>,
) -> ReceivedRequest {
    let r = app.ollama.last_request().expect("a request reached Ollama");
    assert_eq!(r.method, method.as_str(), "{path}");
    assert_eq!(r.path, path);
    assert_eq!(r.query.as_deref(), Some(QUERY), "{path}: query kept");
    match body {
        Some(b) => assert_eq!(&r.json(), b, "{path}: body intact"),
        None => assert!(r.body.is_empty(), "{path}: no body"),
    }
    assert_eq!(
        r.header("host"),
        Some(app.ollama.addr().to_string().as_str()),
        "{path}: Ollama's own Host"
    );
    assert!(
        r.header("authorization").is_none(),
        "{path}: Authorization forwarded: {:?}",
        r.headers
    );
    assert!(
        r.header("cookie").is_none(),
        "{path}: Cookie forwarded: {:?}",
        r.headers
    );
    r
}

fn messages() -> Value {
    json!([{"role": "user", "content": "hello"}])
}

/// Every proxied route of SPEC §4.1 with a body that needs no rewriting.
fn tenant_routes() -> Vec<(Method, &'static str, Option<Value>)> {
    vec![
        (
            Method::POST,
            "/api/chat",
            Some(json!({"model": "llama3.1:8b", "messages": messages(), "stream": false})),
        ),
        (
            Method::POST,
            "/api/generate",
            Some(json!({"model": "llama3.1:8b", "prompt": "hi", "stream": false})),
        ),
        (
            Method::POST,
            "/api/embed",
            Some(json!({"model": "nomic-embed-text", "input": ["a", "b"]})),
        ),
        (
            Method::POST,
            "/api/embeddings",
            Some(json!({"model": "nomic-embed-text", "prompt": "a"})),
        ),
        (
            Method::POST,
            "/api/show",
            Some(json!({"model": "llama3.1:8b"})),
        ),
        (Method::GET, "/api/tags", None),
        (Method::GET, "/api/ps", None),
        (Method::GET, "/api/version", None),
        (
            Method::POST,
            "/v1/chat/completions",
            Some(json!({"model": "llama3.1:8b", "messages": messages()})),
        ),
        (
            Method::POST,
            "/v1/completions",
            Some(json!({"model": "llama3.1:8b", "prompt": "hi"})),
        ),
        (
            Method::POST,
            "/v1/embeddings",
            Some(json!({"model": "nomic-embed-text", "input": "a"})),
        ),
        (
            Method::POST,
            "/v1/responses",
            Some(json!({"model": "llama3.1:8b", "input": "hi"})),
        ),
        (
            Method::POST,
            "/v1/messages",
            Some(json!({"model": "llama3.1:8b", "max_tokens": 64, "messages": messages()})),
        ),
        (Method::GET, "/v1/models", None),
        (Method::GET, "/v1/models/llama3.1:8b", None),
    ]
}

/// Ollama's admin routes, in an order that works against the mock.
fn admin_routes() -> Vec<(Method, &'static str, Option<Value>)> {
    vec![
        (
            Method::POST,
            "/api/pull",
            Some(json!({"model": "phi3:mini", "stream": false})),
        ),
        (
            Method::POST,
            "/api/push",
            Some(json!({"model": "llama3.1:8b", "stream": false})),
        ),
        (
            Method::POST,
            "/api/create",
            Some(json!({"model": "mine:1", "from": "llama3.1:8b", "stream": false})),
        ),
        (
            Method::POST,
            "/api/copy",
            Some(json!({"source": "llama3.1:8b", "destination": "copy:1"})),
        ),
        (
            Method::DELETE,
            "/api/delete",
            Some(json!({"model": "copy:1"})),
        ),
        (Method::POST, "/api/blobs/sha256:abc", None),
        (Method::HEAD, "/api/blobs/sha256:abc", None),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_route_is_forwarded_intact() {
    let app = TestApp::spawn().await;
    let key = plain_key(&app).await.key;
    for (i, (method, path, body)) in tenant_routes().into_iter().enumerate() {
        let resp = send(&app, method.clone(), path, &key, body.as_ref()).await;
        let status = resp.status();
        let raw = resp.text().await.expect("body");
        assert!(status.is_success(), "{method} {path}: {status} {raw}");
        assert_eq!(
            app.ollama.request_count(),
            i + 1,
            "{path}: exactly one upstream request"
        );
        assert_forwarded(&app, &method, path, body.as_ref());
        if path == "/api/version" {
            assert_eq!(
                raw,
                json!({"version": testkit::ollama::OLLAMA_VERSION}).to_string()
            );
        }
    }
    // The master key reaches the admin routes, forwarded the same way (its bearer stays
    // behind too).
    app.ollama.clear();
    for (i, (method, path, body)) in admin_routes().into_iter().enumerate() {
        let resp = send(&app, method.clone(), path, &app.master_key, body.as_ref()).await;
        let status = resp.status();
        let raw = resp.text().await.expect("body");
        assert!(status.is_success(), "{method} {path}: {status} {raw}");
        assert_eq!(app.ollama.request_count(), i + 1, "{path}");
        assert_forwarded(&app, &method, path, body.as_ref());
    }
    let models = app.ollama.models();
    assert!(
        models.iter().any(|m| m == "phi3:mini"),
        "pull reached Ollama: {models:?}"
    );
    assert!(
        !models.iter().any(|m| m == "copy:1"),
        "delete reached Ollama: {models:?}"
    );
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_paths_are_404_and_never_forwarded() {
    let app = TestApp::spawn().await;
    let key = plain_key(&app).await.key;
    let paths = [
        (Method::GET, "/api/me"),
        (Method::POST, "/api/me"),
        (Method::POST, "/api/signout"),
        (Method::GET, "/api/experimental/x"),
        (Method::POST, "/api/experimental/web_search"),
        (Method::GET, "/v2/x"),
        (Method::POST, "/v1/audio/speech"),
        (Method::GET, "/v1/unknown"),
        (Method::POST, "/api/chat/extra"),
        (Method::GET, "/api/blobs"),
        (Method::GET, "/"),
    ];
    for bearer in [key.as_str(), app.master_key.as_str()] {
        for (method, path) in &paths {
            let resp = app
                .request(method.clone(), path, Some(bearer))
                .json(&json!({"model": "llama3.1:8b"}))
                .send()
                .await
                .expect("request");
            assert_error(resp, 404, "not_found").await;
        }
    }
    // A known path with the wrong method is not forwarded either.
    assert_error(
        app.get("/api/chat", Some(&key)).await,
        405,
        "method_not_allowed",
    )
    .await;
    assert_eq!(app.ollama.request_count(), 0, "nothing reached Ollama");
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_routes_are_refused_for_virtual_keys() {
    let app = TestApp::spawn().await;
    let key = plain_key(&app).await.key;
    let models = app.ollama.models();
    for (method, path, body) in admin_routes() {
        let mut rb = app.request(method.clone(), path, Some(&key));
        if let Some(b) = &body {
            rb = rb.json(b);
        }
        let resp = rb.send().await.expect("request");
        if method == Method::HEAD {
            assert_eq!(resp.status(), 403, "{method} {path}");
        } else {
            assert_error(resp, 403, "route_not_allowed").await;
        }
    }
    // Also with every model allowed explicitly and with a matching allowed_routes.
    let (wide, _) = app
        .create_key(KeyFields {
            models: vec!["*".into()],
            allowed_routes: vec!["/api/*".into()],
            metadata: json!({}),
            ..KeyFields::default()
        })
        .await;
    let resp = app
        .post_json(
            "/api/pull",
            Some(&wide),
            &json!({"model": "x:1", "stream": false}),
        )
        .await;
    assert_error(resp, 403, "route_not_allowed").await;
    assert_eq!(app.ollama.request_count(), 0, "nothing reached Ollama");
    assert_eq!(
        app.ollama.models(),
        models,
        "no model was pulled, created or deleted"
    );
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_routes_open_to_keys_when_configured() {
    let app = TestApp::builder()
        .config(|c| c.upstream.admin_routes_require_admin = false)
        .spawn()
        .await;
    let key = plain_key(&app).await.key;
    let body = ok_json(
        app.post_json(
            "/api/pull",
            Some(&key),
            &json!({"model": "phi3:mini", "stream": false}),
        )
        .await,
    )
    .await;
    assert_eq!(body["status"], "success");
    assert_eq!(app.ollama.request_count(), 1);
    app.shutdown().await;
}

/// Sends a generation for `model` on `path` and returns the status (reading the body).
async fn generate_on(app: &TestApp, key: &str, path: &str, model: &str) -> reqwest::Response {
    let body = match path {
        "/api/chat" | "/v1/chat/completions" => {
            json!({"model": model, "messages": messages(), "stream": false})
        }
        "/api/generate" | "/v1/completions" => {
            json!({"model": model, "prompt": "hi", "stream": false})
        }
        "/api/embed" | "/v1/embeddings" => json!({"model": model, "input": "hi"}),
        "/api/embeddings" => json!({"model": model, "prompt": "hi"}),
        "/api/show" => json!({"model": model}),
        "/v1/responses" => json!({"model": model, "input": "hi"}),
        "/v1/messages" => json!({"model": model, "max_tokens": 16, "messages": messages()}),
        other => panic!("no body for {other}"),
    };
    app.post_json(path, Some(key), &body).await
}

const MODEL_ROUTES: [&str; 10] = [
    "/api/chat",
    "/api/generate",
    "/api/embed",
    "/api/embeddings",
    "/api/show",
    "/v1/chat/completions",
    "/v1/completions",
    "/v1/embeddings",
    "/v1/responses",
    "/v1/messages",
];

/// Asserts `model` is refused for `key` on every model-carrying route, without reaching
/// Ollama.
async fn assert_model_refused(app: &TestApp, key: &str, model: &str) {
    let seen = app.ollama.request_count();
    for path in MODEL_ROUTES {
        let err = assert_error(
            generate_on(app, key, path, model).await,
            403,
            "model_not_allowed",
        )
        .await;
        assert!(
            err.message.contains(model),
            "{path}: the message names the model: {}",
            err.message
        );
    }
    let resp = app.get(&format!("/v1/models/{model}"), Some(key)).await;
    assert_error(resp, 403, "model_not_allowed").await;
    assert_eq!(
        app.ollama.request_count(),
        seen,
        "refused requests never reach Ollama ({model})"
    );
}

async fn assert_model_allowed(app: &TestApp, key: &str, model: &str) {
    for path in ["/api/chat", "/v1/chat/completions"] {
        let resp = generate_on(app, key, path, model).await;
        ok_json(resp).await;
        assert_eq!(
            app.ollama.last_request().expect("forwarded").json()["model"],
            model
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn model_allow_list_exact_latest_and_wildcard() {
    let app = TestApp::spawn().await;
    app.ollama.set_models([
        "llama3.1:8b",
        "llama3.1:70b",
        "llama3.2:latest",
        "llama3.2:1b",
        "qwen2.5:7b",
        "qwen2.5:14b",
    ]);

    let wildcard = key_with_models(&app, &["llama3.1:*"]).await;
    assert_model_allowed(&app, &wildcard, "llama3.1:8b").await;
    assert_model_allowed(&app, &wildcard, "llama3.1:70b").await;
    assert_model_refused(&app, &wildcard, "qwen2.5:7b").await;
    assert_model_refused(&app, &wildcard, "llama3.2:1b").await;

    let bare = key_with_models(&app, &["llama3.2"]).await;
    assert_model_allowed(&app, &bare, "llama3.2").await;
    assert_model_allowed(&app, &bare, "llama3.2:latest").await;
    assert_model_refused(&app, &bare, "llama3.2:1b").await;

    let latest = key_with_models(&app, &["llama3.2:latest"]).await;
    assert_model_allowed(&app, &latest, "llama3.2").await;
    assert_model_refused(&app, &latest, "llama3.1:8b").await;

    let exact = key_with_models(&app, &["qwen2.5:7b"]).await;
    assert_model_allowed(&app, &exact, "qwen2.5:7b").await;
    assert_model_refused(&app, &exact, "qwen2.5:14b").await;
    assert_model_refused(&app, &exact, "qwen2.5").await;
    assert_model_refused(&app, &exact, "qwen2.5:7b-instruct").await;

    // No models on the key: everything; the master key: everything.
    let open = key_with_models(&app, &[]).await;
    assert_model_allowed(&app, &open, "qwen2.5:14b").await;
    assert_model_allowed(&app, &app.master_key, "qwen2.5:14b").await;
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn team_models_apply_when_the_key_has_none() {
    let app = TestApp::spawn().await;
    app.create_team(
        "t-models",
        TeamFields {
            models: vec!["qwen2.5:7b".into()],
            metadata: json!({}),
            ..TeamFields::default()
        },
    )
    .await;
    let team_only = generate(&app, json!({"team_id": "t-models"})).await.key;
    assert_model_allowed(&app, &team_only, "qwen2.5:7b").await;
    assert_model_refused(&app, &team_only, "llama3.1:8b").await;
    // The key's own models win over the team's.
    let own = generate(
        &app,
        json!({"team_id": "t-models", "models": ["llama3.1:8b"]}),
    )
    .await
    .key;
    assert_model_allowed(&app, &own, "llama3.1:8b").await;
    assert_model_refused(&app, &own, "qwen2.5:7b").await;
    app.shutdown().await;
}

/// A key in a blocked team is 403 `key_blocked`, and reaches nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blocked_team_blocks_its_keys() {
    let app = TestApp::spawn().await;
    app.create_team(
        "t-blocked",
        TeamFields {
            blocked: true,
            metadata: json!({}),
            ..TeamFields::default()
        },
    )
    .await;
    let key = generate(&app, json!({"team_id": "t-blocked"})).await.key;
    assert_error(
        chat_with(&app, &key, "llama3.1:8b").await,
        403,
        "key_blocked",
    )
    .await;
    assert_error(app.get("/api/tags", Some(&key)).await, 403, "key_blocked").await;
    assert_eq!(app.ollama.request_count(), 0);
    app.shutdown().await;
}

/// Ollama's `/api/show` still accepts the deprecated `name` field for the model: the
/// allow-list must see it too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn legacy_name_field_is_checked() {
    let app = TestApp::spawn().await;
    let key = key_with_models(&app, &["qwen2.5:7b"]).await;
    let resp = app
        .post_json("/api/show", Some(&key), &json!({"name": "llama3.1:8b"}))
        .await;
    assert_error(resp, 403, "model_not_allowed").await;
    assert_eq!(
        app.ollama.request_count(),
        0,
        "a refused request never reaches Ollama"
    );
    app.shutdown().await;
}

fn names(list: &Value, array: &str, field: &str) -> Vec<String> {
    list[array]
        .as_array()
        .unwrap_or_else(|| panic!("`{array}` in {list}"))
        .iter()
        .map(|m| m[field].as_str().expect("a name").to_string())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn model_lists_are_filtered_to_the_callers_models() {
    let app = TestApp::spawn().await;
    let key = key_with_models(&app, &["llama3.1:*", "nomic-embed-text"]).await;
    let mine = vec![
        "llama3.1:8b".to_string(),
        "nomic-embed-text:latest".to_string(),
    ];
    let all: Vec<String> = DEFAULT_MODELS.iter().map(|m| (*m).to_string()).collect();

    let tags = ok_json(app.get("/api/tags", Some(&key)).await).await;
    assert_eq!(names(&tags, "models", "name"), mine, "{tags}");
    let ps = ok_json(app.get("/api/ps", Some(&key)).await).await;
    assert_eq!(names(&ps, "models", "name"), mine, "{ps}");
    let v1 = ok_json(app.get("/v1/models", Some(&key)).await).await;
    assert_eq!(names(&v1, "data", "id"), mine, "{v1}");
    assert_eq!(v1["object"], "list", "the rest of the document is kept");
    // Entries are kept whole.
    assert!(tags["models"][0]["digest"].is_string(), "{tags}");

    for bearer in [app.master_key.clone(), key_with_models(&app, &[]).await] {
        let tags = ok_json(app.get("/api/tags", Some(&bearer)).await).await;
        assert_eq!(names(&tags, "models", "name"), all);
        let ps = ok_json(app.get("/api/ps", Some(&bearer)).await).await;
        assert_eq!(names(&ps, "models", "name"), all);
        let v1 = ok_json(app.get("/v1/models", Some(&bearer)).await).await;
        assert_eq!(names(&v1, "data", "id"), all);
    }

    let one = ok_json(app.get("/v1/models/llama3.1:8b", Some(&key)).await).await;
    assert_eq!(one["id"], "llama3.1:8b");
    let seen = app.ollama.request_count();
    assert_error(
        app.get("/v1/models/qwen2.5:7b", Some(&key)).await,
        403,
        "model_not_allowed",
    )
    .await;
    assert_eq!(app.ollama.request_count(), seen);
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn allowed_routes_exact_and_prefix() {
    let app = TestApp::spawn().await;
    let k = generate(&app, json!({"allowed_routes": ["/api/chat", "/v1/*"]}))
        .await
        .key;
    ok_json(chat_with(&app, &k, "llama3.1:8b").await).await;
    ok_json(generate_on(&app, &k, "/v1/chat/completions", "llama3.1:8b").await).await;
    ok_json(app.get("/v1/models", Some(&k)).await).await;
    ok_json(app.get("/v1/models/llama3.1:8b", Some(&k)).await).await;
    let seen = app.ollama.request_count();
    for path in ["/api/generate", "/api/embed", "/api/show"] {
        assert_error(
            generate_on(&app, &k, path, "llama3.1:8b").await,
            403,
            "route_not_allowed",
        )
        .await;
    }
    assert_error(
        app.get("/api/tags", Some(&k)).await,
        403,
        "route_not_allowed",
    )
    .await;
    assert_error(
        app.get("/api/version", Some(&k)).await,
        403,
        "route_not_allowed",
    )
    .await;
    assert_eq!(
        app.ollama.request_count(),
        seen,
        "refused requests never reach Ollama"
    );

    // The route check comes before the model check.
    let narrow = generate(
        &app,
        json!({"allowed_routes": ["/api/chat"], "models": ["qwen2.5:7b"]}),
    )
    .await
    .key;
    assert_error(
        generate_on(&app, &narrow, "/api/generate", "llama3.1:8b").await,
        403,
        "route_not_allowed",
    )
    .await;
    assert_error(
        chat_with(&app, &narrow, "llama3.1:8b").await,
        403,
        "model_not_allowed",
    )
    .await;
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keep_alive_is_removed_for_virtual_keys() {
    let app = TestApp::spawn().await;
    let key = plain_key(&app).await.key;
    for (path, mut body) in [
        ("/api/chat", chat_once("llama3.1:8b")),
        (
            "/api/generate",
            json!({"model": "llama3.1:8b", "prompt": "hi", "stream": false}),
        ),
        (
            "/api/embed",
            json!({"model": "nomic-embed-text", "input": "hi"}),
        ),
    ] {
        body["keep_alive"] = json!(0);
        body["options"] = json!({"temperature": 0.5});
        ok_json(app.post_json(path, Some(&key), &body).await).await;
        let mut forwarded = app.ollama.last_request().expect("forwarded").json();
        assert!(
            forwarded.get("keep_alive").is_none(),
            "{path}: keep_alive removed: {forwarded}"
        );
        forwarded["keep_alive"] = json!(0);
        assert_eq!(forwarded, body, "{path}: everything else intact");

        // The master key keeps it.
        body["keep_alive"] = json!("10m");
        ok_json(app.post_json(path, Some(&app.master_key), &body).await).await;
        let forwarded = app.ollama.last_request().expect("forwarded").json();
        assert_eq!(
            forwarded["keep_alive"], "10m",
            "{path}: admin keep_alive kept"
        );
    }
    app.shutdown().await;

    let app = TestApp::builder()
        .config(|c| c.upstream.allow_keep_alive = true)
        .spawn()
        .await;
    let key = plain_key(&app).await.key;
    let mut body = chat_once("llama3.1:8b");
    body["keep_alive"] = json!("5m");
    ok_json(app.post_json("/api/chat", Some(&key), &body).await).await;
    assert_eq!(
        app.ollama.last_request().expect("forwarded").json()["keep_alive"],
        "5m"
    );
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn num_ctx_above_the_cap_is_refused() {
    let app = TestApp::builder()
        .config(|c| c.upstream.max_num_ctx = Some(4096))
        .spawn()
        .await;
    let key = plain_key(&app).await.key;
    for path in ["/api/chat", "/api/generate"] {
        let mut body = json!({"model": "llama3.1:8b", "prompt": "hi", "messages": messages(), "stream": false});
        body["options"] = json!({"num_ctx": 8192});
        let err = assert_error(
            app.post_json(path, Some(&key), &body).await,
            400,
            "invalid_request",
        )
        .await;
        assert!(err.message.contains("num_ctx"), "{}", err.message);
        assert_eq!(app.ollama.request_count(), 0, "{path}: not forwarded");
    }
    let mut body = chat_once("llama3.1:8b");
    body["options"] = json!({"num_ctx": 4096});
    ok_json(app.post_json("/api/chat", Some(&key), &body).await).await;
    assert_eq!(
        app.ollama.last_request().expect("forwarded").json()["options"]["num_ctx"],
        4096
    );
    // Admins are not capped.
    body["options"] = json!({"num_ctx": 32768});
    ok_json(
        app.post_json("/api/chat", Some(&app.master_key), &body)
            .await,
    )
    .await;
    assert_eq!(
        app.ollama.last_request().expect("forwarded").json()["options"]["num_ctx"],
        32768
    );
    app.shutdown().await;
}

/// A streaming request for each streaming route; the terminator of the first frame; a
/// marker of the last.
fn streaming_cases() -> Vec<(&'static str, Value, &'static [u8], &'static str)> {
    vec![
        (
            "/api/chat",
            json!({"model": "llama3.1:8b", "messages": messages()}),
            b"\n",
            "\"done\":true",
        ),
        (
            "/api/generate",
            json!({"model": "llama3.1:8b", "prompt": "hi"}),
            b"\n",
            "\"done\":true",
        ),
        (
            "/v1/chat/completions",
            json!({"model": "llama3.1:8b", "messages": messages(), "stream": true}),
            b"\n\n",
            "data: [DONE]",
        ),
        (
            "/v1/completions",
            json!({"model": "llama3.1:8b", "prompt": "hi", "stream": true}),
            b"\n\n",
            "data: [DONE]",
        ),
        (
            "/v1/responses",
            json!({"model": "llama3.1:8b", "input": "hi", "stream": true}),
            b"\n\n",
            "response.completed",
        ),
        (
            "/v1/messages",
            json!({"model": "llama3.1:8b", "max_tokens": 64, "messages": messages(), "stream": true}),
            b"\n\n",
            "message_stop",
        ),
    ]
}

/// The first frame of a stream reaches the client while Ollama still holds the rest; the
/// rest follows once released (NDJSON and SSE).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn first_frame_arrives_before_the_upstream_finishes() {
    let app = TestApp::spawn().await;
    let key = plain_key(&app).await.key;
    for (n, (path, body, first_end, last_marker)) in streaming_cases().into_iter().enumerate() {
        let gate = app.ollama.hold_streams();
        let mut resp = app.post_json(path, Some(&key), &body).await;
        assert_eq!(resp.status(), 200, "{path}");
        let content_type = resp.headers()["content-type"]
            .to_str()
            .expect("ascii")
            .to_string();
        if path.starts_with("/api/") {
            assert!(
                content_type.starts_with("application/x-ndjson"),
                "{path}: {content_type}"
            );
        } else {
            assert!(
                content_type.starts_with("text/event-stream"),
                "{path}: {content_type}"
            );
        }
        let mut buf = Vec::new();
        read_until(&mut resp, &mut buf, first_end).await;
        assert!(gate.is_held(), "{path}");
        assert_eq!(
            app.ollama.completed_streams(),
            n,
            "{path}: Ollama has not sent its last frame yet"
        );
        let so_far = String::from_utf8_lossy(&buf).to_string();
        assert!(!so_far.contains(last_marker), "{path}: {so_far}");
        gate.release();
        read_rest(&mut resp, &mut buf).await;
        let all = String::from_utf8(buf).expect("utf-8");
        assert!(all.contains(last_marker), "{path}: {all}");
        assert!(
            all.contains("tok4 "),
            "{path}: every content frame arrived: {all}"
        );
        if path.starts_with("/api/") {
            let frames = ndjson(all.as_bytes());
            assert_eq!(
                frames.len(),
                6,
                "{path}: five content frames and the final one"
            );
            assert_eq!(frames[5]["done"], true);
            assert_eq!(frames[5]["eval_count"], 5);
        }
        app.ollama.wait_for_completed(n + 1).await;
    }
    app.shutdown().await;
}

/// Streaming OpenAI completions: the gateway asks Ollama for usage; the client sees the
/// usage chunk only when it asked for it; the usage row has the right tokens either way.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sse_usage_chunk_only_when_asked() {
    let app = TestApp::spawn().await;
    let k = plain_key(&app).await;
    app.ollama.set_prompt_tokens(23);
    app.ollama.set_completion_frames(4);
    let mut expected_rows = Vec::new();
    for path in ["/v1/chat/completions", "/v1/completions"] {
        let base = if path == "/v1/chat/completions" {
            json!({"model": "llama3.1:8b", "messages": messages(), "stream": true})
        } else {
            json!({"model": "llama3.1:8b", "prompt": "hi", "stream": true})
        };
        let mut explicit_false = base.clone();
        explicit_false["stream_options"] = json!({"include_usage": false});
        let mut asked = base.clone();
        asked["stream_options"] = json!({"include_usage": true});
        for (body, wants) in [(base, false), (explicit_false, false), (asked, true)] {
            let resp = app.post_json(path, Some(&k.key), &body).await;
            assert_eq!(resp.status(), 200);
            let rid = request_id(&resp);
            let raw = resp.bytes().await.expect("body");
            let events = sse_json(&raw);
            let forwarded = app.ollama.last_request().expect("forwarded").json();
            assert_eq!(
                forwarded["stream_options"]["include_usage"], true,
                "{path}: usage asked of Ollama: {forwarded}"
            );
            let usage_chunks: Vec<&Value> = events
                .iter()
                .filter(|e| e.get("usage").is_some_and(|u| !u.is_null()))
                .collect();
            let text: String = events
                .iter()
                .filter_map(|e| {
                    let c = &e["choices"][0];
                    c["delta"]["content"]
                        .as_str()
                        .or(c["text"].as_str())
                        .map(str::to_string)
                })
                .collect();
            assert_eq!(text, "tok0 tok1 tok2 tok3 ", "{path}: every content chunk");
            assert_eq!(
                sse_data(&raw).last().map(String::as_str),
                Some("[DONE]"),
                "{path}"
            );
            if wants {
                assert_eq!(
                    usage_chunks.len(),
                    1,
                    "{path}: the usage chunk the client asked for"
                );
                assert_eq!(usage_chunks[0]["usage"]["prompt_tokens"], 23);
                assert_eq!(usage_chunks[0]["usage"]["completion_tokens"], 4);
                assert_eq!(usage_chunks[0]["choices"], json!([]));
            } else {
                assert!(
                    usage_chunks.is_empty(),
                    "{path}: no usage chunk unasked: {events:?}"
                );
                assert!(
                    !String::from_utf8_lossy(&raw).contains("\"usage\""),
                    "{path}"
                );
            }
            expected_rows.push(rid);
        }
    }
    let rows = logs_for(&app, &k.key_id).await;
    assert_eq!(rows.len(), expected_rows.len());
    for rid in expected_rows {
        let row = row_of(&rows, &rid);
        assert_eq!(row["prompt_tokens"], 23, "{row}");
        assert_eq!(row["completion_tokens"], 4, "{row}");
        assert_eq!(row["status"], "success", "{row}");
    }
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_4xx_keeps_status_and_message() {
    let app = TestApp::spawn().await;
    let key = key_with_models(&app, &["llama3.1:*"]).await;
    for path in [
        "/api/chat",
        "/api/generate",
        "/v1/chat/completions",
        "/v1/messages",
        "/v1/embeddings",
    ] {
        let err = assert_error(
            generate_on(&app, &key, path, "llama3.1:405b").await,
            404,
            "upstream_rejected",
        )
        .await;
        assert!(
            err.message.contains("model \"llama3.1:405b\" not found"),
            "{path}: Ollama's message is kept: {}",
            err.message
        );
    }
    let err = assert_error(
        app.get("/v1/models/llama3.1:405b", Some(&key)).await,
        404,
        "upstream_rejected",
    )
    .await;
    assert!(err.message.contains("llama3.1:405b"), "{}", err.message);
    app.ollama.fail_next(
        1,
        Failure::Status(400, "invalid format: expected \"json\"".into()),
    );
    let err = assert_error(
        chat_with(&app, &key, "llama3.1:8b").await,
        400,
        "upstream_rejected",
    )
    .await;
    assert!(err.message.contains("invalid format"), "{}", err.message);
    app.ollama.fail_next(
        1,
        Failure::Status(429, "server busy, please try again".into()),
    );
    let err = assert_error(
        chat_with(&app, &key, "llama3.1:8b").await,
        429,
        "upstream_rejected",
    )
    .await;
    assert!(err.message.contains("server busy"), "{}", err.message);
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_5xx_is_a_502_without_detail() {
    let app = TestApp::spawn().await;
    let k = plain_key(&app).await;
    let key = k.key.clone();
    let detail =
        "CUDA error: out of memory at ggml-cuda.cu:1234 (llama runner process has terminated)";
    for (status, path) in [
        (500, "/api/chat"),
        (503, "/api/chat"),
        (500, "/v1/chat/completions"),
        (502, "/api/tags"),
    ] {
        app.ollama
            .fail_next(1, Failure::Status(status, detail.into()));
        let resp = if path == "/api/tags" {
            app.get(path, Some(&key)).await
        } else {
            generate_on(&app, &key, path, "llama3.1:8b").await
        };
        // assert_error pins the envelope to code, message and request_id, so
        // the message is the one place upstream detail could leak (the random
        // request_id may itself contain "500").
        let err = assert_error(resp, 502, "upstream_error").await;
        for word in ["CUDA", "ggml", "runner", "500", "503"] {
            assert!(
                !err.message.contains(word),
                "{path}: upstream detail {word:?} leaked: {}",
                err.raw
            );
        }
    }
    // Ollama is back: the next request works.
    assert_chat_ok(&app, &key, "llama3.1:8b").await;
    // Failed requests were admitted, so they are recorded too.
    let rows = logs_for(&app, &k.key_id).await;
    assert_eq!(rows.len(), 5, "{rows:#?}");
    assert_eq!(
        rows.iter().filter(|r| r["status"] == "error").count(),
        4,
        "{rows:#?}"
    );
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_down_is_a_502() {
    let app = TestApp::spawn().await;
    let key = plain_key(&app).await.key;
    assert_chat_ok(&app, &key, "llama3.1:8b").await; // a pooled connection exists
    app.ollama.stop().await;
    let err = assert_error(
        chat_with(&app, &key, "llama3.1:8b").await,
        502,
        "upstream_error",
    )
    .await;
    assert!(
        !err.raw.contains("127.0.0.1"),
        "no upstream address: {}",
        err.raw
    );
    assert!(
        !err.raw.to_ascii_lowercase().contains("connect"),
        "no connection detail: {}",
        err.raw
    );
    assert_error(
        app.get("/api/tags", Some(&key)).await,
        502,
        "upstream_error",
    )
    .await;
    assert_error(
        app.get("/v1/models", Some(&key)).await,
        502,
        "upstream_error",
    )
    .await;
    app.shutdown().await;
}

/// This test waits `request_timeout_s` (1 s) by its nature.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_timeout_is_a_504() {
    let app = TestApp::builder()
        .config(|c| c.server.request_timeout_s = 1)
        .spawn()
        .await;
    let key = plain_key(&app).await.key;
    app.ollama.fail_next(1, Failure::Hang);
    let err = assert_error(
        chat_with(&app, &key, "llama3.1:8b").await,
        504,
        "upstream_timeout",
    )
    .await;
    assert!(!err.raw.contains("127.0.0.1"), "{}", err.raw);
    assert_chat_ok(&app, &key, "llama3.1:8b").await;
    app.shutdown().await;
}

/// A client that leaves mid-stream cancels the upstream request, and the request is
/// recorded as `cancelled` with its request id (NDJSON and SSE).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_disconnect_cancels_upstream_and_is_recorded() {
    let app = TestApp::spawn().await;
    let k = plain_key(&app).await;
    let cases = [
        (
            "/api/chat",
            json!({"model": "llama3.1:8b", "messages": messages()}),
            &b"\n"[..],
        ),
        (
            "/v1/chat/completions",
            json!({"model": "llama3.1:8b", "messages": messages(), "stream": true}),
            &b"\n\n"[..],
        ),
    ];
    let mut ids = Vec::new();
    for (n, (path, body, first_end)) in cases.into_iter().enumerate() {
        let gate = app.ollama.hold_streams();
        let mut resp = app.post_json(path, Some(&k.key), &body).await;
        assert_eq!(resp.status(), 200);
        ids.push((path, request_id(&resp)));
        let mut buf = Vec::new();
        read_until(&mut resp, &mut buf, first_end).await;
        drop(resp);
        app.ollama.wait_for_cancelled(n + 1).await;
        assert_eq!(
            app.ollama.completed_streams(),
            0,
            "{path}: the stream never finished upstream"
        );
        drop(gate);
    }
    let rows = logs_for(&app, &k.key_id).await;
    assert_eq!(rows.len(), 2, "{rows:#?}");
    for (path, rid) in ids {
        let row = row_of(&rows, &rid);
        assert_eq!(row["status"], "cancelled", "{path}: {row}");
        assert_eq!(row["route"], path);
        assert_eq!(row["model"], "llama3.1:8b");
    }
    app.shutdown().await;
}

/// `/spend/logs` token counts equal what Ollama reported, request for request, on every
/// metered route (streaming and not); `request_id` is the response's `X-Request-ID`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn usage_rows_match_ollama_counts_request_for_request() {
    let app = TestApp::spawn().await;
    let k = plain_key(&app).await;
    let chat =
        |stream: bool| json!({"model": "llama3.1:8b", "messages": messages(), "stream": stream});
    let prompt = |stream: bool| json!({"model": "llama3.1:8b", "prompt": "hi", "stream": stream});
    let cases: Vec<(&str, Value, bool)> = vec![
        (
            "/api/chat",
            json!({"model": "llama3.1:8b", "messages": messages()}),
            true,
        ),
        ("/api/chat", chat(false), true),
        (
            "/api/generate",
            json!({"model": "llama3.1:8b", "prompt": "hi"}),
            true,
        ),
        ("/api/generate", prompt(false), true),
        (
            "/api/embed",
            json!({"model": "nomic-embed-text", "input": ["a", "b"]}),
            false,
        ),
        ("/v1/chat/completions", chat(false), true),
        ("/v1/chat/completions", chat(true), true),
        (
            "/v1/chat/completions",
            json!({"model": "llama3.1:8b", "messages": messages(), "stream": true, "stream_options": {"include_usage": true}}),
            true,
        ),
        ("/v1/completions", prompt(false), true),
        ("/v1/completions", prompt(true), true),
        (
            "/v1/embeddings",
            json!({"model": "nomic-embed-text", "input": ["a", "b"]}),
            false,
        ),
        (
            "/v1/responses",
            json!({"model": "llama3.1:8b", "input": "hi"}),
            true,
        ),
        (
            "/v1/responses",
            json!({"model": "llama3.1:8b", "input": "hi", "stream": true}),
            true,
        ),
        (
            "/v1/messages",
            json!({"model": "llama3.1:8b", "max_tokens": 64, "messages": messages()}),
            true,
        ),
        (
            "/v1/messages",
            json!({"model": "llama3.1:8b", "max_tokens": 64, "messages": messages(), "stream": true}),
            true,
        ),
    ];
    let mut expected = Vec::new();
    for (i, (path, body, generates)) in cases.iter().enumerate() {
        // Different counts for every request, so rows cannot be mixed up.
        let prompt_tokens = 30 + 7 * i as u64;
        let frames = 2 + i;
        app.ollama.set_prompt_tokens(prompt_tokens);
        app.ollama.set_completion_frames(frames);
        let resp = app.post_json(path, Some(&k.key), body).await;
        let status = resp.status();
        let rid = request_id(&resp);
        let raw = resp.bytes().await.expect("body");
        assert_eq!(status, 200, "{path}: {}", String::from_utf8_lossy(&raw));
        if *generates {
            assert!(
                String::from_utf8_lossy(&raw).contains(&format!("tok{} ", frames - 1)),
                "{path}"
            );
        }
        let completion = if *generates { frames as u64 } else { 0 };
        expected.push((*path, body["model"].clone(), rid, prompt_tokens, completion));
    }
    let rows = logs_for(&app, &k.key_id).await;
    assert_eq!(rows.len(), cases.len(), "one row per request: {rows:#?}");
    for (path, model, rid, prompt_tokens, completion) in expected {
        let row = row_of(&rows, &rid);
        assert_eq!(row["prompt_tokens"], prompt_tokens, "{path}: {row}");
        assert_eq!(row["completion_tokens"], completion, "{path}: {row}");
        assert_eq!(row["route"], path, "{row}");
        assert_eq!(row["model"], model, "{row}");
        assert_eq!(row["key_id"], k.key_id.as_str(), "{row}");
        assert_eq!(row["status"], "success", "{row}");
        assert!(
            row["started_at"].is_string() && row["duration_ms"].is_u64(),
            "{row}"
        );
        assert!(
            row.as_object().expect("row").contains_key("team_id"),
            "{row}"
        );
        assert!(
            row.as_object().expect("row").contains_key("user_id"),
            "{row}"
        );
    }
    app.shutdown().await;
}

/// A caller's well-formed `X-Request-ID` is the row's `request_id`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn caller_request_id_is_recorded() {
    let app = TestApp::spawn().await;
    let k = plain_key(&app).await;
    let resp = app
        .request(Method::POST, "/api/chat", Some(&k.key))
        .header("x-request-id", "caller-req.42_x")
        .json(&chat_once("llama3.1:8b"))
        .send()
        .await
        .expect("request");
    assert_eq!(request_id(&resp), "caller-req.42_x");
    ok_json(resp).await;
    assert_eq!(
        app.ollama
            .last_request()
            .expect("forwarded")
            .header("x-request-id"),
        Some("caller-req.42_x")
    );
    let rows = logs_for(&app, &k.key_id).await;
    row_of(&rows, "caller-req.42_x");
    app.shutdown().await;
}

/// With pricing configured, every row costs its tokens at the price, and the key's spend
/// in `/key/info` is the sum of its rows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_spend_is_the_sum_of_its_rows() {
    let app = TestApp::builder()
        .config(|c| {
            c.pricing.default = Price {
                input: 1.0,
                output: 2.0,
            }
        })
        .spawn()
        .await;
    let k = plain_key(&app).await;
    let other = plain_key(&app).await;
    let mut ids = Vec::new();
    for (i, (path, body)) in [
        ("/api/chat", chat_once("llama3.1:8b")),
        (
            "/api/chat",
            json!({"model": "llama3.1:8b", "messages": messages()}),
        ),
        (
            "/v1/chat/completions",
            json!({"model": "llama3.1:8b", "messages": messages(), "stream": true}),
        ),
        (
            "/api/embed",
            json!({"model": "nomic-embed-text", "input": "a"}),
        ),
    ]
    .into_iter()
    .enumerate()
    {
        app.ollama.set_prompt_tokens(1000 * (i as u64 + 1));
        app.ollama.set_completion_frames(3 + i);
        let resp = app.post_json(path, Some(&k.key), &body).await;
        ids.push(request_id(&resp));
        resp.bytes().await.expect("body");
    }
    // Another key's spend is its own.
    assert_chat_ok(&app, &other.key, "llama3.1:8b").await;

    let rows = logs_for(&app, &k.key_id).await;
    assert_eq!(rows.len(), 4);
    let mut sum = 0.0;
    for rid in &ids {
        let row = row_of(&rows, rid);
        let p = row["prompt_tokens"].as_f64().expect("prompt_tokens");
        let c = row["completion_tokens"]
            .as_f64()
            .expect("completion_tokens");
        let spend = row["spend"].as_f64().expect("spend");
        assert!((spend - (p + 2.0 * c) / 1e6).abs() < 1e-12, "{row}");
        assert!(spend > 0.0);
        sum += spend;
    }
    let info_spend = info(&app, &k.key_id).await["spend"]
        .as_f64()
        .expect("spend");
    assert!(
        (info_spend - sum).abs() < 1e-9,
        "key spend {info_spend} = sum of rows {sum}"
    );
    let other_rows = logs_for(&app, &other.key_id).await;
    let other_spend = info(&app, &other.key_id).await["spend"]
        .as_f64()
        .expect("spend");
    let other_sum: f64 = other_rows
        .iter()
        .map(|r| r["spend"].as_f64().expect("spend"))
        .sum();
    assert!((other_spend - other_sum).abs() < 1e-9 && other_sum > 0.0);
    app.shutdown().await;
}

/// Requests without a usable credential are 401 and reach nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxied_routes_need_a_credential() {
    let app = TestApp::spawn().await;
    let unknown = format!("sk-{}", "Q".repeat(43));
    for bearer in [
        None,
        Some("not-a-key"),
        Some(unknown.as_str()),
        Some("sk-short"),
    ] {
        assert_error(chat_with_opt(&app, bearer).await, 401, "unauthorized").await;
        assert_error(app.get("/api/tags", bearer).await, 401, "unauthorized").await;
        assert_error(app.get("/v1/models", bearer).await, 401, "unauthorized").await;
    }
    assert_eq!(app.ollama.request_count(), 0);
    app.shutdown().await;
}

async fn chat_with_opt(app: &TestApp, bearer: Option<&str>) -> reqwest::Response {
    app.post_json("/api/chat", bearer, &chat_once("llama3.1:8b"))
        .await
}

/// `/metrics` counts proxied requests by route and outcome, with their duration and
/// their upstream time, and the key cache's hits — through handles registered once
/// (metrics are process-wide and other tests add to them, so only growth is asserted).
#[tokio::test]
async fn proxied_requests_are_counted_by_route_and_outcome() {
    let app = TestApp::spawn().await;
    let k = plain_key(&app).await;
    // Each series and how much three requests add to it at least: the new key's first
    // lookup misses the cache, the next two hit it.
    let series = [
        (
            r#"tollgate_requests_total{route="/api/embed",status="success"}"#,
            3.0,
        ),
        (
            r#"tollgate_request_duration_seconds_count{route="/api/embed"}"#,
            3.0,
        ),
        (
            r#"tollgate_upstream_duration_seconds_count{route="/api/embed"}"#,
            3.0,
        ),
        (
            r#"tollgate_cache_lookups_total{cache="key",result="miss"}"#,
            1.0,
        ),
        (
            r#"tollgate_cache_lookups_total{cache="key",result="hit"}"#,
            2.0,
        ),
    ];
    let mut before = Vec::new();
    for (s, _) in series {
        before.push(app.metric(s).await);
    }
    let body = json!({"model": "nomic-embed-text", "input": ["a"]});
    for _ in 0..3 {
        let resp = app.post_json("/api/embed", Some(&k.key), &body).await;
        assert_eq!(resp.status(), 200);
        resp.bytes().await.expect("body");
    }
    app.app.spend.flush().await;
    for ((s, added), was) in series.iter().zip(before) {
        let now = app.metric(s).await;
        assert!(now >= was + added, "{s}: {was} -> {now}");
    }
    app.shutdown().await;
}
