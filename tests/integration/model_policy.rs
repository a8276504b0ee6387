//! Model policy on proxied routes (SPEC §5.2.4, issue 11): `name` ≡ `name:latest` under
//! wildcards, a body without a model, and Ollama cloud models.

use reqwest::Method;
use serde_json::{Value, json};

use crate::keys_support::*;
use crate::support::{TestApp, assert_error, chat};

const MODELS: [&str; 6] = [
    "llama3.1:latest",
    "llama3.1:8b",
    "llama3.2:latest",
    "qwen2.5:7b",
    "glm-4.6:cloud",
    "gpt-oss:120b-cloud",
];

async fn app_with(allow_cloud: bool) -> TestApp {
    let app = TestApp::builder()
        .config(move |c| c.upstream.allow_cloud_models = allow_cloud)
        .spawn()
        .await;
    app.ollama.set_models(MODELS);
    app
}

fn names(list: &Value, array: &str, field: &str) -> Vec<String> {
    list[array]
        .as_array()
        .unwrap_or_else(|| panic!("`{array}` in {list}"))
        .iter()
        .map(|m| m[field].as_str().expect("a name").to_string())
        .collect()
}

/// The names `bearer` sees on `/api/tags`, `/api/ps` and `/v1/models` (all three agree).
async fn listed(app: &TestApp, bearer: &str) -> Vec<String> {
    let tags = ok_json(app.get("/api/tags", Some(bearer)).await).await;
    let ps = ok_json(app.get("/api/ps", Some(bearer)).await).await;
    let v1 = ok_json(app.get("/v1/models", Some(bearer)).await).await;
    let tags = names(&tags, "models", "name");
    assert_eq!(names(&ps, "models", "name"), tags, "/api/ps");
    assert_eq!(names(&v1, "data", "id"), tags, "/v1/models");
    tags
}

async fn chat_status(app: &TestApp, bearer: &str, model: &str) -> u16 {
    let body = json!({"model": model, "stream": false, "messages": []});
    app.post_json("/api/chat", Some(bearer), &body)
        .await
        .status()
        .as_u16()
}

/// `llama3.1:*` admits `llama3.1` and `llama3.1:latest`, and the lists it filters show
/// `llama3.1:latest`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wildcards_admit_the_latest_tag() {
    let app = app_with(false).await;
    let key = key_with_models(&app, &["llama3.1:*"]).await;
    for model in ["llama3.1", "llama3.1:latest", "llama3.1:8b"] {
        assert_eq!(chat_status(&app, &key, model).await, 200, "{model}");
    }
    assert_error(
        app.post_json("/api/chat", Some(&key), &chat("llama3.2"))
            .await,
        403,
        "model_not_allowed",
    )
    .await;
    assert_eq!(listed(&app, &key).await, ["llama3.1:latest", "llama3.1:8b"]);
    let one = app.get("/v1/models/llama3.1", Some(&key)).await;
    assert_eq!(one.status(), 200);

    // And `name` on the allow-list side: `llama3.2` admits `llama3.2:latest`.
    let plain = key_with_models(&app, &["llama3.2"]).await;
    assert_eq!(chat_status(&app, &plain, "llama3.2:latest").await, 200);
    assert_eq!(listed(&app, &plain).await, ["llama3.2:latest"]);
    app.shutdown().await;
}

/// A model route whose body has no model it can be checked against — none at all, `null`,
/// not a string, empty, or no body — is 400 naming `model` for every caller, the master
/// key too, and nothing reaches Ollama.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_model_route_without_a_model_is_a_400() {
    let app = app_with(false).await;
    let key = key_with_models(&app, &["llama3.1:8b"]).await;
    let cases: Vec<(&str, Option<Value>)> = vec![
        ("/api/chat", Some(json!({"messages": []}))),
        ("/api/chat", None),
        ("/api/chat", Some(json!({"model": null, "messages": []}))),
        ("/api/chat", Some(json!({"model": "", "messages": []}))),
        ("/api/chat", Some(json!({"model": 8, "messages": []}))),
        ("/api/chat", Some(json!({"model": ["llama3.1:8b"]}))),
        (
            "/api/chat",
            Some(json!({"name": "llama3.1:8b", "messages": []})),
        ),
        ("/api/generate", Some(json!({"prompt": "hi"}))),
        ("/api/embed", Some(json!({"input": "hi"}))),
        ("/api/embeddings", Some(json!({"prompt": "hi"}))),
        ("/api/show", Some(json!({}))),
        ("/api/show", None),
        ("/api/show", Some(json!({"name": ""}))),
        (
            "/api/show",
            Some(json!({"model": {"x": 1}, "name": "llama3.1:8b"})),
        ),
        ("/v1/chat/completions", Some(json!({"messages": []}))),
        ("/v1/completions", Some(json!({"prompt": "hi"}))),
        ("/v1/embeddings", Some(json!({"input": "hi"}))),
        ("/v1/responses", Some(json!({"input": "hi"}))),
        (
            "/v1/messages",
            Some(json!({"messages": [], "max_tokens": 8})),
        ),
    ];
    for bearer in [key.clone(), app.master_key.clone()] {
        for (path, body) in &cases {
            let mut rb = app.request(Method::POST, path, Some(&bearer));
            if let Some(b) = body {
                rb = rb.json(b);
            }
            let resp = rb.send().await.expect("request");
            let err = assert_error(resp, 400, "invalid_request").await;
            assert!(
                err.message.contains("`model`"),
                "{path} {body:?}: {}",
                err.message
            );
        }
    }
    assert_eq!(app.ollama.request_count(), 0, "nothing reached Ollama");

    // The legacy `name` still names the model on `/api/show`, and is checked.
    let show = app
        .post_json("/api/show", Some(&key), &json!({"name": "llama3.1:8b"}))
        .await;
    assert_eq!(show.status(), 200);
    assert_error(
        app.post_json("/api/show", Some(&key), &json!({"name": "qwen2.5:7b"}))
            .await,
        403,
        "model_not_allowed",
    )
    .await;
    app.shutdown().await;
}

/// Cloud models are refused for non-admin callers whatever their allow-list, and hidden
/// from their model lists; admins are unaffected.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cloud_models_are_refused_and_hidden_by_default() {
    let app = app_with(false).await;
    let local: Vec<String> = MODELS
        .iter()
        .filter(|m| !m.contains("cloud"))
        .map(|m| (*m).to_string())
        .collect();
    let everything = key_with_models(&app, &[]).await;
    let star = key_with_models(&app, &["*"]).await;
    let named = key_with_models(&app, &["glm-4.6:cloud", "gpt-oss:*", "qwen2.5:7b"]).await;
    for key in [&everything, &star, &named] {
        for model in ["glm-4.6:cloud", "gpt-oss:120b-cloud", "GLM-4.6:Cloud"] {
            let seen = app.ollama.request_count();
            assert_error(
                app.post_json("/api/chat", Some(key), &chat(model)).await,
                403,
                "model_not_allowed",
            )
            .await;
            assert_error(
                app.post_json(
                    "/v1/chat/completions",
                    Some(key),
                    &json!({"model": model, "messages": []}),
                )
                .await,
                403,
                "model_not_allowed",
            )
            .await;
            assert_error(
                app.get(&format!("/v1/models/{model}"), Some(key)).await,
                403,
                "model_not_allowed",
            )
            .await;
            assert_eq!(app.ollama.request_count(), seen, "{model} reached Ollama");
        }
    }
    assert_eq!(listed(&app, &everything).await, local);
    assert_eq!(listed(&app, &star).await, local);
    assert_eq!(listed(&app, &named).await, ["qwen2.5:7b"]);

    // Admins are unaffected.
    assert_eq!(
        chat_status(&app, &app.master_key, "glm-4.6:cloud").await,
        200
    );
    assert_eq!(listed(&app, &app.master_key).await, MODELS);
    app.shutdown().await;
}

/// `upstream.allow_cloud_models: true` lifts the ban; the allow-list still applies.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn allow_cloud_models_lets_tenants_use_them() {
    let app = app_with(true).await;
    let everything = key_with_models(&app, &[]).await;
    assert_eq!(chat_status(&app, &everything, "glm-4.6:cloud").await, 200);
    assert_eq!(
        chat_status(&app, &everything, "gpt-oss:120b-cloud").await,
        200
    );
    assert_eq!(listed(&app, &everything).await, MODELS);
    let narrow = key_with_models(&app, &["qwen2.5:7b"]).await;
    assert_error(
        app.post_json("/api/chat", Some(&narrow), &chat("glm-4.6:cloud"))
            .await,
        403,
        "model_not_allowed",
    )
    .await;
    app.shutdown().await;
}
