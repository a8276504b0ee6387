//! The mock Ollama speaks Ollama's wire format and its controls behave as documented.

#![allow(
    clippy::expect_used,
    clippy::panic,
    reason = "test helpers fail the test the way a test does"
)]

use std::time::Duration;

use serde_json::{Value, json};
use testkit::ollama::{Failure, MockOllama};

/// reqwest is built without a TLS provider of its own (see tollgate's `outbound`).
fn client() -> reqwest::Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::new()
}

fn ndjson_lines(body: &str) -> Vec<Value> {
    body.lines()
        .filter(|l| !l.is_empty())
        .map(|l| serde_json::from_str(l).expect("NDJSON line is JSON"))
        .collect()
}

/// `(event, data)` pairs of an SSE body.
fn sse_events(body: &str) -> Vec<(Option<String>, String)> {
    assert!(body.ends_with("\n\n"), "SSE body ends with a blank line");
    body.split("\n\n")
        .filter(|e| !e.is_empty())
        .map(|event| {
            let mut name = None;
            let mut data = String::new();
            for line in event.lines() {
                if let Some(v) = line.strip_prefix("event: ") {
                    name = Some(v.to_owned());
                } else if let Some(v) = line.strip_prefix("data: ") {
                    data.push_str(v);
                } else {
                    panic!("unexpected SSE line {line:?}");
                }
            }
            (name, data)
        })
        .collect()
}

async fn post(mock: &MockOllama, path: &str, body: Value) -> reqwest::Response {
    client()
        .post(format!("{}{path}", mock.url()))
        .json(&body)
        .send()
        .await
        .expect("request reaches the mock")
}

#[tokio::test]
async fn chat_ndjson_stream_ends_with_done_frame_carrying_counts() {
    let mock = MockOllama::start().await;
    // `stream` absent means streaming on /api/chat.
    let resp = post(
        &mock,
        "/api/chat",
        json!({"model": "llama3.1:8b", "messages": [{"role": "user", "content": "hi"}]}),
    )
    .await;
    assert_eq!(resp.status(), 200);
    assert_eq!(
        resp.headers()["content-type"].to_str().expect("ascii"),
        "application/x-ndjson"
    );
    let lines = ndjson_lines(&resp.text().await.expect("body"));
    assert_eq!(lines.len(), 6);
    for (i, frame) in lines[..5].iter().enumerate() {
        assert_eq!(frame["done"], false);
        assert_eq!(frame["model"], "llama3.1:8b");
        assert_eq!(frame["message"]["role"], "assistant");
        assert_eq!(frame["message"]["content"], format!("tok{i} "));
        assert!(frame["created_at"].is_string());
    }
    let last = &lines[5];
    assert_eq!(last["done"], true);
    assert_eq!(last["done_reason"], "stop");
    assert_eq!(last["prompt_eval_count"], 11);
    assert_eq!(last["eval_count"], 5);
    for field in [
        "total_duration",
        "load_duration",
        "prompt_eval_duration",
        "eval_duration",
    ] {
        assert!(last[field].is_u64(), "{field}");
    }
    assert_eq!(mock.completed_streams(), 1);
}

#[tokio::test]
async fn generate_counts_follow_the_settings_streaming_or_not() {
    let mock = MockOllama::start().await;
    mock.set_prompt_tokens(7);
    mock.set_completion_frames(3);

    let resp = post(
        &mock,
        "/api/generate",
        json!({"model": "llama3.2", "prompt": "x"}),
    )
    .await;
    let lines = ndjson_lines(&resp.text().await.expect("body"));
    assert_eq!(lines.len(), 4);
    assert_eq!(lines[0]["response"], "tok0 ");
    assert_eq!(lines[3]["done"], true);
    assert_eq!(lines[3]["prompt_eval_count"], 7);
    assert_eq!(lines[3]["eval_count"], 3);

    let resp = post(
        &mock,
        "/api/generate",
        json!({"model": "llama3.2:latest", "prompt": "x", "stream": false}),
    )
    .await;
    assert!(
        resp.headers()["content-type"]
            .to_str()
            .expect("ascii")
            .starts_with("application/json")
    );
    let body: Value = resp.json().await.expect("json");
    assert_eq!(body["done"], true);
    assert_eq!(body["response"], "tok0 tok1 tok2 ");
    assert_eq!(body["prompt_eval_count"], 7);
    assert_eq!(body["eval_count"], 3);
}

#[tokio::test]
async fn sse_ends_with_done_and_has_usage_chunk_only_when_asked() {
    let mock = MockOllama::start().await;
    let request = json!({"model": "qwen2.5:7b", "messages": [], "stream": true});

    let resp = post(&mock, "/v1/chat/completions", request.clone()).await;
    assert_eq!(
        resp.headers()["content-type"].to_str().expect("ascii"),
        "text/event-stream"
    );
    let events = sse_events(&resp.text().await.expect("body"));
    assert_eq!(events.len(), 6);
    assert_eq!(events[5].1, "[DONE]");
    let chunks: Vec<Value> = events[..5]
        .iter()
        .map(|(_, d)| serde_json::from_str(d).expect("chunk is JSON"))
        .collect();
    for (i, c) in chunks.iter().enumerate() {
        assert_eq!(c["object"], "chat.completion.chunk");
        assert_eq!(c["choices"][0]["delta"]["content"], format!("tok{i} "));
        assert!(c.get("usage").is_none());
    }
    assert_eq!(chunks[3]["choices"][0]["finish_reason"], Value::Null);
    assert_eq!(chunks[4]["choices"][0]["finish_reason"], "stop");

    let mut with_usage = request;
    with_usage["stream_options"] = json!({"include_usage": true});
    let resp = post(&mock, "/v1/chat/completions", with_usage).await;
    let events = sse_events(&resp.text().await.expect("body"));
    assert_eq!(events.len(), 7);
    assert_eq!(events[6].1, "[DONE]");
    let usage: Value = serde_json::from_str(&events[5].1).expect("usage chunk is JSON");
    assert_eq!(usage["choices"], json!([]));
    assert_eq!(
        usage["usage"],
        json!({"prompt_tokens": 11, "completion_tokens": 5, "total_tokens": 16})
    );

    // Same for /v1/completions.
    let resp = post(
        &mock,
        "/v1/completions",
        json!({"model": "qwen2.5:7b", "prompt": "x", "stream": true,
               "stream_options": {"include_usage": true}}),
    )
    .await;
    let events = sse_events(&resp.text().await.expect("body"));
    assert_eq!(events.last().map(|e| e.1.as_str()), Some("[DONE]"));
    let usage: Value = serde_json::from_str(&events[events.len() - 2].1).expect("JSON");
    assert_eq!(usage["usage"]["completion_tokens"], 5);
    assert_eq!(usage["object"], "text_completion");
}

#[tokio::test]
async fn openai_non_streaming_shapes() {
    let mock = MockOllama::start().await;
    let body: Value = post(
        &mock,
        "/v1/chat/completions",
        json!({"model": "llama3.1:8b", "messages": []}),
    )
    .await
    .json()
    .await
    .expect("json");
    assert_eq!(body["object"], "chat.completion");
    assert_eq!(body["system_fingerprint"], "fp_ollama");
    assert_eq!(
        body["choices"][0]["message"]["content"],
        "tok0 tok1 tok2 tok3 tok4 "
    );
    assert_eq!(body["usage"]["total_tokens"], 16);

    let body: Value = post(
        &mock,
        "/v1/embeddings",
        json!({"model": "nomic-embed-text", "input": ["a", "b"]}),
    )
    .await
    .json()
    .await
    .expect("json");
    assert_eq!(body["object"], "list");
    assert_eq!(body["data"][1]["index"], 1);
    assert_eq!(
        body["data"][0]["embedding"].as_array().map(Vec::len),
        Some(4)
    );
    assert_eq!(body["usage"]["prompt_tokens"], 11);

    let models: Value = client()
        .get(format!("{}/v1/models", mock.url()))
        .send()
        .await
        .expect("send")
        .json()
        .await
        .expect("json");
    assert_eq!(models["data"].as_array().map(Vec::len), Some(4));
    assert_eq!(models["data"][0]["owned_by"], "library");

    let one = client()
        .get(format!("{}/v1/models/llama3.1:8b", mock.url()))
        .send()
        .await
        .expect("send");
    assert_eq!(one.status(), 200);
    let missing = client()
        .get(format!("{}/v1/models/nope:1b", mock.url()))
        .send()
        .await
        .expect("send");
    assert_eq!(missing.status(), 404);
}

#[tokio::test]
async fn responses_and_messages_streams_carry_usage() {
    let mock = MockOllama::start().await;
    let resp = post(
        &mock,
        "/v1/responses",
        json!({"model": "llama3.1:8b", "input": "hi", "stream": true}),
    )
    .await;
    let events = sse_events(&resp.text().await.expect("body"));
    assert_eq!(events[0].0.as_deref(), Some("response.created"));
    let deltas = events
        .iter()
        .filter(|e| e.0.as_deref() == Some("response.output_text.delta"))
        .count();
    assert_eq!(deltas, 5);
    let (name, data) = events.last().expect("events");
    assert_eq!(name.as_deref(), Some("response.completed"));
    let completed: Value = serde_json::from_str(data).expect("json");
    assert_eq!(completed["type"], "response.completed");
    assert_eq!(
        completed["response"]["usage"],
        json!({"input_tokens": 11, "output_tokens": 5, "total_tokens": 16})
    );

    let resp = post(
        &mock,
        "/v1/messages",
        json!({"model": "llama3.1:8b", "max_tokens": 9, "messages": [], "stream": true}),
    )
    .await;
    let events = sse_events(&resp.text().await.expect("body"));
    let names: Vec<&str> = events.iter().filter_map(|e| e.0.as_deref()).collect();
    assert_eq!(names.first(), Some(&"message_start"));
    assert_eq!(names.last(), Some(&"message_stop"));
    assert_eq!(
        names
            .iter()
            .filter(|n| **n == "content_block_delta")
            .count(),
        5
    );
    let start: Value = serde_json::from_str(&events[0].1).expect("json");
    assert_eq!(start["message"]["usage"]["input_tokens"], 11);
    let delta = events
        .iter()
        .find(|e| e.0.as_deref() == Some("message_delta"))
        .expect("message_delta");
    let delta: Value = serde_json::from_str(&delta.1).expect("json");
    assert_eq!(delta["usage"]["output_tokens"], 5);

    let body: Value = post(
        &mock,
        "/v1/messages",
        json!({"model": "llama3.1:8b", "max_tokens": 9, "messages": []}),
    )
    .await
    .json()
    .await
    .expect("json");
    assert_eq!(body["stop_reason"], "end_turn");
    assert_eq!(
        body["usage"],
        json!({"input_tokens": 11, "output_tokens": 5})
    );
}

#[tokio::test]
async fn native_catalogue_and_embeddings() {
    let mock = MockOllama::start().await;
    let tags: Value = client()
        .get(format!("{}/api/tags", mock.url()))
        .send()
        .await
        .expect("send")
        .json()
        .await
        .expect("json");
    let names: Vec<&str> = tags["models"]
        .as_array()
        .expect("models")
        .iter()
        .filter_map(|m| m["name"].as_str())
        .collect();
    assert_eq!(
        names,
        [
            "llama3.1:8b",
            "llama3.2:latest",
            "qwen2.5:7b",
            "nomic-embed-text:latest"
        ]
    );
    assert_eq!(tags["models"][0]["details"]["parameter_size"], "8.0B");

    let embed: Value = post(
        &mock,
        "/api/embed",
        json!({"model": "nomic-embed-text", "input": ["a", "b", "c"]}),
    )
    .await
    .json()
    .await
    .expect("json");
    assert_eq!(embed["embeddings"].as_array().map(Vec::len), Some(3));
    assert_eq!(embed["prompt_eval_count"], 11);

    let legacy: Value = post(
        &mock,
        "/api/embeddings",
        json!({"model": "nomic-embed-text", "prompt": "a"}),
    )
    .await
    .json()
    .await
    .expect("json");
    assert_eq!(legacy["embedding"], embed["embeddings"][0]);

    let show: Value = post(&mock, "/api/show", json!({"model": "llama3.1:8b"}))
        .await
        .json()
        .await
        .expect("json");
    for field in [
        "modelfile",
        "parameters",
        "template",
        "details",
        "model_info",
        "capabilities",
    ] {
        assert!(show.get(field).is_some(), "{field}");
    }

    let version: Value = client()
        .get(format!("{}/api/version", mock.url()))
        .send()
        .await
        .expect("send")
        .json()
        .await
        .expect("json");
    assert_eq!(version, json!({"version": "0.12.6"}));

    // pull adds a model; delete removes it.
    let pull = post(&mock, "/api/pull", json!({"model": "mistral:7b"})).await;
    let lines = ndjson_lines(&pull.text().await.expect("body"));
    assert_eq!(lines.last(), Some(&json!({"status": "success"})));
    assert!(mock.models().contains(&"mistral:7b".to_owned()));
    let deleted = client()
        .delete(format!("{}/api/delete", mock.url()))
        .json(&json!({"model": "mistral:7b"}))
        .send()
        .await
        .expect("send");
    assert_eq!(deleted.status(), 200);
    assert!(!mock.models().contains(&"mistral:7b".to_owned()));
}

#[tokio::test]
async fn unknown_models_and_routes_get_ollama_errors() {
    let mock = MockOllama::start().await;
    let resp = post(
        &mock,
        "/api/chat",
        json!({"model": "ghost:1b", "messages": []}),
    )
    .await;
    assert_eq!(resp.status(), 404);
    let body: Value = resp.json().await.expect("json");
    assert_eq!(
        body,
        json!({"error": "model \"ghost:1b\" not found, try pulling it first"})
    );

    let resp = post(
        &mock,
        "/v1/chat/completions",
        json!({"model": "ghost:1b", "messages": []}),
    )
    .await;
    assert_eq!(resp.status(), 404);
    let body: Value = resp.json().await.expect("json");
    assert_eq!(
        body,
        json!({"error": {"message": "model \"ghost:1b\" not found, try pulling it first",
                         "type": "api_error", "param": null, "code": null}})
    );

    let resp = client()
        .get(format!("{}/api/me", mock.url()))
        .send()
        .await
        .expect("send");
    assert_eq!(resp.status(), 404);
    assert_eq!(resp.text().await.expect("body"), "404 page not found");
}

#[tokio::test]
async fn requests_are_recorded() {
    let mock = MockOllama::start().await;
    let waiter = {
        let mock = mock.clone();
        tokio::spawn(async move { mock.wait_for_requests(2).await })
    };
    client()
        .get(format!("{}/api/tags?x=1", mock.url()))
        .header("X-Probe", "one")
        .send()
        .await
        .expect("send");
    post(&mock, "/api/show", json!({"model": "qwen2.5:7b"})).await;
    waiter.await.expect("waiter");

    let requests = mock.requests();
    assert_eq!(requests.len(), 2);
    assert_eq!(requests[0].method, "GET");
    assert_eq!(requests[0].path, "/api/tags");
    assert_eq!(requests[0].query.as_deref(), Some("x=1"));
    assert_eq!(requests[0].header("x-probe"), Some("one"));
    assert_eq!(requests[0].header("X-PROBE"), Some("one"));
    assert!(requests[0].header("host").is_some());
    let last = mock.last_request().expect("last");
    assert_eq!(last.json()["model"], "qwen2.5:7b");
    mock.clear();
    assert_eq!(mock.request_count(), 0);
}

#[tokio::test]
async fn held_streams_send_their_first_frame_then_wait() {
    let mock = MockOllama::start().await;
    let gate = mock.hold_streams();
    let mut resp = post(
        &mock,
        "/api/chat",
        json!({"model": "llama3.1:8b", "messages": []}),
    )
    .await;
    let first = resp.chunk().await.expect("chunk").expect("a first frame");
    let first: Value = serde_json::from_slice(&first).expect("exactly one NDJSON line");
    assert_eq!(first["message"]["content"], "tok0 ");
    // The upstream has not finished: the rest is held.
    assert_eq!(mock.completed_streams(), 0);
    assert_eq!(mock.in_flight(), 1);

    gate.release();
    let rest = resp.text().await.expect("rest of the body");
    let lines = ndjson_lines(&rest);
    assert_eq!(lines.len(), 5);
    assert_eq!(lines[4]["done"], true);
    mock.wait_for_completed(1).await;
    mock.wait_for_in_flight(0).await;
    assert_eq!(mock.cancelled_streams(), 0);
}

#[tokio::test]
async fn abandoned_streams_are_counted_as_cancelled() {
    let mock = MockOllama::start().await;
    let _gate = mock.hold_streams();
    let mut resp = post(
        &mock,
        "/api/generate",
        json!({"model": "llama3.1:8b", "prompt": "x"}),
    )
    .await;
    resp.chunk().await.expect("chunk").expect("first frame");
    drop(resp);
    mock.wait_for_cancelled(1).await;
    mock.wait_for_in_flight(0).await;
    assert_eq!(mock.completed_streams(), 0);
}

#[tokio::test]
async fn abandoned_delayed_streams_are_counted_as_cancelled() {
    let mock = MockOllama::start().await;
    mock.set_completion_frames(50);
    mock.set_frame_delay(Duration::from_millis(10));
    let mut resp = post(
        &mock,
        "/v1/chat/completions",
        json!({"model": "llama3.1:8b", "messages": [], "stream": true}),
    )
    .await;
    resp.chunk().await.expect("chunk").expect("first frame");
    drop(resp);
    mock.wait_for_cancelled(1).await;
    assert_eq!(mock.completed_streams(), 0);
}

#[tokio::test]
async fn status_failures_use_the_path_dialect_and_are_consumed() {
    let mock = MockOllama::start().await;
    mock.fail_next(2, Failure::Status(503, "busy".into()));

    let resp = post(&mock, "/api/chat", json!({"model": "llama3.1:8b"})).await;
    assert_eq!(resp.status(), 503);
    assert_eq!(
        resp.json::<Value>().await.expect("json"),
        json!({"error": "busy"})
    );

    let resp = post(
        &mock,
        "/v1/chat/completions",
        json!({"model": "llama3.1:8b"}),
    )
    .await;
    assert_eq!(resp.status(), 503);
    let body: Value = resp.json().await.expect("json");
    assert_eq!(body["error"]["message"], "busy");

    let resp = post(
        &mock,
        "/api/chat",
        json!({"model": "llama3.1:8b", "stream": false}),
    )
    .await;
    assert_eq!(resp.status(), 200);

    mock.set_failure(Some(Failure::Status(400, "bad".into())));
    let resp = post(&mock, "/v1/messages", json!({"model": "llama3.1:8b"})).await;
    assert_eq!(resp.status(), 400);
    let body: Value = resp.json().await.expect("json");
    assert_eq!(body["type"], "error");
    assert_eq!(body["error"]["type"], "invalid_request_error");
    mock.set_failure(None);
    let resp = post(
        &mock,
        "/api/chat",
        json!({"model": "llama3.1:8b", "stream": false}),
    )
    .await;
    assert_eq!(resp.status(), 200);
}

#[tokio::test]
async fn close_mid_stream_delivers_the_first_frame_then_breaks() {
    let mock = MockOllama::start().await;
    mock.fail_next(1, Failure::CloseMidStream);
    let mut resp = post(
        &mock,
        "/api/chat",
        json!({"model": "llama3.1:8b", "messages": []}),
    )
    .await;
    assert_eq!(resp.status(), 200);
    let first = resp.chunk().await.expect("first chunk").expect("a frame");
    let first: Value = serde_json::from_slice(&first).expect("one NDJSON line");
    assert_eq!(first["done"], false);
    assert!(resp.chunk().await.is_err(), "the body ends with an error");
    assert_eq!(mock.cancelled_streams(), 0);
    assert_eq!(mock.completed_streams(), 0);

    // Non-streaming: half a body, then the connection drops.
    mock.fail_next(1, Failure::CloseMidStream);
    let resp = post(&mock, "/api/tags", json!({})).await;
    assert!(resp.text().await.is_err());
}

#[tokio::test]
async fn hanging_requests_stay_in_flight() {
    let mock = MockOllama::start().await;
    mock.fail_next(1, Failure::Hang);
    let pending = tokio::spawn({
        let url = format!("{}/api/version", mock.url());
        async move { client().get(url).send().await }
    });
    mock.wait_for_in_flight(1).await;
    assert_eq!(mock.request_count(), 1);
    // The next request is answered normally while the first still hangs.
    let ok = client()
        .get(format!("{}/api/version", mock.url()))
        .send()
        .await
        .expect("send");
    assert_eq!(ok.status(), 200);
    assert!(!pending.is_finished());
    // Stopping the mock drops the hanging connection.
    mock.stop().await;
    let outcome = tokio::time::timeout(Duration::from_secs(10), pending)
        .await
        .expect("the hanging request ends once the mock stops")
        .expect("task");
    assert!(outcome.is_err());
    mock.wait_for_in_flight(0).await;
}
