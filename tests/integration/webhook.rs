//! The auth webhook (SPEC §6.4): tokens of no known shape are validated by an operator's
//! service, whose answer can bound the request.

use std::sync::{Arc, Mutex};

use axum::Json;
use axum::Router;
use axum::routing::post;
use serde_json::{Value, json};

use super::support::*;

/// A webhook that allows `allow-…` tokens (bounded to one model) and refuses the rest,
/// recording every request it receives.
struct Hook {
    url: String,
    seen: Arc<Mutex<Vec<Value>>>,
}

async fn start_hook() -> Hook {
    let seen: Arc<Mutex<Vec<Value>>> = Arc::default();
    let log = seen.clone();
    let app = Router::new().route(
        "/check",
        post(move |Json(body): Json<Value>| {
            let log = log.clone();
            async move {
                log.lock().unwrap().push(body.clone());
                let token = body["api_key"].as_str().unwrap_or_default().to_string();
                if token.starts_with("allow-") {
                    (
                        axum::http::StatusCode::OK,
                        Json(json!({"user_id": "hook-user", "models": ["llama3.1:8b"]})),
                    )
                } else {
                    (
                        axum::http::StatusCode::FORBIDDEN,
                        Json(json!({"error": "no"})),
                    )
                }
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/check", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    Hook { url, seen }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn allowed_tokens_run_bounded_by_the_answer_and_are_cached() {
    let hook = start_hook().await;
    let url = hook.url.clone();
    let app = TestApp::builder()
        .config(move |c| c.auth_webhook.url = Some(url))
        .spawn()
        .await;
    let token = "allow-opaque-token-123";
    let body = json!({"model": "llama3.1:8b", "stream": false, "messages": []});
    let resp = app
        .request(reqwest::Method::POST, "/api/chat?trace=1", Some(token))
        .header("cookie", "session=secret")
        .header("x-team", "blue")
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);

    let seen = hook.seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 1);
    let asked = &seen[0];
    assert_eq!(asked["api_key"], token);
    assert_eq!(asked["request"]["method"], "POST");
    assert_eq!(asked["request"]["path"], "/api/chat");
    assert_eq!(asked["request"]["params"]["trace"], "1");
    assert_eq!(asked["request"]["headers"]["x-team"], "blue");
    assert!(asked["request"]["headers"].get("authorization").is_none());
    assert!(asked["request"]["headers"].get("cookie").is_none());

    // The answer bounds the request's models.
    let other = json!({"model": "qwen2.5:7b", "stream": false, "messages": []});
    assert_error(
        app.post_json("/api/chat", Some(token), &other).await,
        403,
        "model_not_allowed",
    )
    .await;
    // Answers are cached by token: the webhook was asked once.
    assert_eq!(hook.seen.lock().unwrap().len(), 1);

    app.app.spend.flush().await;
    let logs: Value = app.admin_get("/spend/logs").await.json().await.unwrap();
    assert_eq!(logs[0]["user_id"], "hook-user");
    assert!(logs[0]["key_id"].is_null());
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_tokens_get_the_common_401() {
    let hook = start_hook().await;
    let url = hook.url.clone();
    let app = TestApp::builder()
        .config(move |c| c.auth_webhook.url = Some(url))
        .spawn()
        .await;
    let refused = assert_error(
        app.get("/api/tags", Some("deny-me")).await,
        401,
        "unauthorized",
    )
    .await;
    let bad_key = assert_error(
        app.get("/api/tags", Some(&format!("sk-{}", "x".repeat(40))))
            .await,
        401,
        "unauthorized",
    )
    .await;
    assert_eq!(refused.message, bad_key.message);
    assert_eq!(app.ollama.request_count(), 0);
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_webhook_is_a_503() {
    // A port that was free a moment ago: nothing listens there.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let app = TestApp::builder()
        .config(move |c| c.auth_webhook.url = Some(format!("http://127.0.0.1:{port}/check")))
        .spawn()
        .await;
    assert_error(
        app.get("/api/tags", Some("allow-x")).await,
        503,
        "auth_unavailable",
    )
    .await;
    assert_eq!(app.ollama.request_count(), 0);
    app.shutdown().await;
}

/// A webhook that answers every request 200 with `body` as it is (JSON content type).
async fn start_hook_answering(body: &'static str) -> String {
    let app = Router::new().route(
        "/check",
        post(move || async move {
            (
                axum::http::StatusCode::OK,
                [(axum::http::header::CONTENT_TYPE, "application/json")],
                body,
            )
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/check", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    url
}

async fn webhook_app(body: &'static str) -> TestApp {
    let url = start_hook_answering(body).await;
    TestApp::builder()
        .config(move |c| c.auth_webhook.url = Some(url))
        .spawn()
        .await
}

/// An empty 200 body is the delegation contract of SPEC §6.4: allowed, without bounds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_empty_200_allows_without_bounds() {
    let app = webhook_app("").await;
    let resp = app
        .post_json("/api/chat", Some("opaque-token"), &chat("qwen2.5:7b"))
        .await;
    assert_eq!(resp.status(), 200);
    assert_eq!(app.ollama.request_count(), 1);
    app.shutdown().await;
}

/// A 200 whose body cannot be read as a grant — not JSON, not an object, or with
/// `user_id`, `team_id` or `models` of the wrong type — is the common 401, never a
/// request without bounds (a `models` string meant to restrict must not lift them).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreadable_200_is_a_401() {
    for body in [
        r#"{"models": "llama3.1:8b"}"#,
        r#"{"models": [1, 2]}"#,
        r#"{"user_id": 42}"#,
        r#"{"team_id": {"id": "blue"}}"#,
        "allowed",
        "[]",
        r#"{"models": ["llama3.1:8b"]"#,
    ] {
        let app = webhook_app(body).await;
        let refused = assert_error(
            app.post_json("/api/chat", Some("opaque-token"), &chat("llama3.1:8b"))
                .await,
            401,
            "unauthorized",
        )
        .await;
        let bad_key = assert_error(
            app.get("/api/tags", Some(&format!("sk-{}", "x".repeat(40))))
                .await,
            401,
            "unauthorized",
        )
        .await;
        assert_eq!(refused.message, bad_key.message, "{body}");
        assert_eq!(app.ollama.request_count(), 0, "{body}");
        app.shutdown().await;
    }
}
