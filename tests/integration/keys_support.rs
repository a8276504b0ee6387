//! Helpers shared by the key, proxy and client-library tests (issue 3): minting keys
//! through the management API, reading `/key/info`, `/key/list` and `/spend/logs`, and
//! reading streamed bodies frame by frame.

#![allow(dead_code)]

use std::time::Duration;

use serde_json::{Value, json};
use tollgate::store::KeyFields;

use crate::support::TestApp;

/// How long a test waits for a frame that must arrive before it fails (a bound against
/// hanging forever, never a timing assertion).
pub const FRAME_WAIT: Duration = Duration::from_secs(30);

/// A 2xx response's JSON body; panics with the body otherwise.
pub async fn ok_json(resp: reqwest::Response) -> Value {
    let status = resp.status();
    let text = resp.text().await.expect("response body");
    assert!(
        status.is_success(),
        "expected a success, got {status}: {text}"
    );
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("body is not JSON ({e}): {text}"))
}

/// A key minted through `POST /key/generate`.
#[derive(Debug, Clone)]
pub struct NewKey {
    /// The plaintext `sk-…`.
    pub key: String,
    pub key_id: String,
    /// The whole `/key/generate` response.
    pub body: Value,
}

/// `POST /key/generate` with `body`; asserts success.
pub async fn generate(app: &TestApp, body: Value) -> NewKey {
    let body = ok_json(app.admin_post("/key/generate", &body).await).await;
    NewKey {
        key: body["key"]
            .as_str()
            .expect("`key` in /key/generate")
            .to_string(),
        key_id: body["key_id"]
            .as_str()
            .expect("`key_id` in /key/generate")
            .to_string(),
        body,
    }
}

/// A key with no limits at all, minted through the API.
pub async fn plain_key(app: &TestApp) -> NewKey {
    generate(app, json!({})).await
}

/// A key written straight to the store with these models (and nothing else).
pub async fn key_with_models(app: &TestApp, models: &[&str]) -> String {
    let (plain, _) = app
        .create_key(KeyFields {
            models: models.iter().map(|m| (*m).to_string()).collect(),
            metadata: json!({}),
            ..KeyFields::default()
        })
        .await;
    plain
}

/// `GET /key/info?key_id=…` → the `info` object (asserts 200).
pub async fn info(app: &TestApp, key_id: &str) -> Value {
    let body = ok_json(app.admin_get(&format!("/key/info?key_id={key_id}")).await).await;
    assert_eq!(body["key_id"], key_id, "{body}");
    body["info"].clone()
}

/// `total_count` of `GET /key/list` (everything).
pub async fn key_total(app: &TestApp) -> u64 {
    let body = ok_json(app.admin_get("/key/list?size=1000").await).await;
    body["total_count"].as_u64().expect("total_count")
}

/// Flushes the usage writer, then `GET /spend/logs?key_id=…` (newest first).
pub async fn logs_for(app: &TestApp, key_id: &str) -> Vec<Value> {
    app.app.spend.flush().await;
    let body = ok_json(
        app.admin_get(&format!("/spend/logs?key_id={key_id}&limit=10000"))
            .await,
    )
    .await;
    body.as_array().expect("/spend/logs is an array").clone()
}

/// The one `/spend/logs` row of `request_id` among `rows`.
pub fn row_of<'a>(rows: &'a [Value], request_id: &str) -> &'a Value {
    let matching: Vec<&Value> = rows
        .iter()
        .filter(|r| r["request_id"] == request_id)
        .collect();
    assert_eq!(
        matching.len(),
        1,
        "expected exactly one usage row for request {request_id}; rows: {rows:#?}"
    );
    matching[0]
}

/// A non-streaming `/api/chat` body.
pub fn chat_once(model: &str) -> Value {
    json!({
        "model": model,
        "messages": [{"role": "user", "content": "hello"}],
        "stream": false,
    })
}

/// A proxied non-streaming `/api/chat` with `key`; returns the response.
pub async fn chat_with(app: &TestApp, key: &str, model: &str) -> reqwest::Response {
    app.post_json("/api/chat", Some(key), &chat_once(model))
        .await
}

/// Asserts a proxied `/api/chat` with `key` succeeds.
pub async fn assert_chat_ok(app: &TestApp, key: &str, model: &str) {
    let resp = chat_with(app, key, model).await;
    let body = ok_json(resp).await;
    assert_eq!(body["done"], true, "{body}");
}

/// Reads the next chunk of a streamed body, failing (instead of hanging) when none
/// arrives within [`FRAME_WAIT`].
pub async fn next_chunk(resp: &mut reqwest::Response) -> Option<bytes::Bytes> {
    tokio::time::timeout(FRAME_WAIT, resp.chunk())
        .await
        .expect("no chunk arrived: the stream is held back")
        .expect("reading the stream")
}

/// Reads chunks until `buf` holds `needle` (e.g. the end of the first frame), failing
/// when the stream ends first or stalls.
pub async fn read_until(resp: &mut reqwest::Response, buf: &mut Vec<u8>, needle: &[u8]) {
    while !contains(buf, needle) {
        let chunk = next_chunk(resp)
            .await
            .unwrap_or_else(|| panic!("stream ended before {:?}", String::from_utf8_lossy(needle)));
        buf.extend_from_slice(&chunk);
    }
}

/// Reads the rest of a streamed body.
pub async fn read_rest(resp: &mut reqwest::Response, buf: &mut Vec<u8>) {
    while let Some(chunk) = next_chunk(resp).await {
        buf.extend_from_slice(&chunk);
    }
}

pub fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// The `data:` payloads of an SSE body (`[DONE]` included, as a string).
pub fn sse_data(body: &[u8]) -> Vec<String> {
    std::str::from_utf8(body)
        .expect("SSE is UTF-8")
        .lines()
        .filter_map(|l| l.strip_prefix("data:"))
        .map(|d| d.trim_start().to_string())
        .collect()
}

/// The JSON `data:` payloads of an SSE body (without `[DONE]`).
pub fn sse_json(body: &[u8]) -> Vec<Value> {
    sse_data(body)
        .into_iter()
        .filter(|d| d != "[DONE]")
        .map(|d| serde_json::from_str(&d).unwrap_or_else(|e| panic!("bad SSE data ({e}): {d}")))
        .collect()
}
