//! The fair queue in front of the servers (SPEC §12): a freed slot goes to the tenant
//! served least recently; a request waits at most `queue_max_wait_s` and then consumes
//! nothing; a client that leaves is gone from the queue at once.

use std::time::Duration;

use serde_json::Value;
use testkit::ollama::MockOllama;
use tollgate::config::{Config, UpstreamServerConfig};
use tollgate::store::KeyFields;

use crate::keys_support::{chat_once, ok_json};
use crate::support::{TestApp, assert_error, chat, client, read_to_end};

/// One simulated server with one slot (`parallel` 1) for `model`, behind a gateway that
/// knows it as `gpu-a`; a second server that lists nothing keeps it a fleet.
async fn one_slot(
    model: &str,
    edit: impl FnOnce(&mut Config) + Send + 'static,
) -> (MockOllama, MockOllama, TestApp) {
    let server = MockOllama::builder()
        .models([model.to_string()])
        .parallel(1)
        .max_loaded_models(1)
        .start()
        .await;
    let spare = MockOllama::builder()
        .models(Vec::<String>::new())
        .start()
        .await;
    let (url, spare_url) = (server.url(), spare.url());
    let app = TestApp::builder()
        .config(move |c| {
            c.upstream.servers = vec![
                UpstreamServerConfig {
                    name: "gpu-a".into(),
                    url,
                    parallel: Some(1),
                    max_loaded_models: Some(1),
                },
                UpstreamServerConfig {
                    name: "gpu-b".into(),
                    url: spare_url,
                    parallel: Some(1),
                    max_loaded_models: Some(1),
                },
            ];
            c.upstream.discovery_interval_s = 60;
            edit(c);
        })
        .spawn()
        .await;
    wait_for(&app, "both lists read", |a| {
        a.app
            .upstream
            .fleet()
            .status()
            .iter()
            .all(|s| s.models.is_some())
    })
    .await;
    (server, spare, app)
}

/// Waits on the fleet's change signal until `ok` holds.
async fn wait_for(app: &TestApp, what: &str, ok: impl Fn(&TestApp) -> bool) {
    let mut changes = app.app.upstream.fleet().changes();
    let waited = tokio::time::timeout(Duration::from_secs(30), async {
        while !ok(app) {
            changes.changed().await.expect("the fleet is alive");
        }
    })
    .await;
    assert!(waited.is_ok(), "timed out waiting for {what}");
}

fn queued(app: &TestApp) -> usize {
    app.app.upstream.fleet().queued()
}

async fn key(app: &TestApp, fields: KeyFields) -> String {
    app.create_key(fields).await.0
}

fn send_chat(app: &TestApp, key: &str, tag: &str) -> tokio::task::JoinHandle<reqwest::Response> {
    let url = app.url("/api/chat");
    let key = key.to_string();
    let mut body = chat_once("llama3.1:8b");
    body["messages"][0]["content"] = Value::String(tag.to_string());
    tokio::spawn(async move {
        client()
            .post(url)
            .bearer_auth(key)
            .json(&body)
            .send()
            .await
            .expect("a response")
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_tenants_single_request_is_served_before_a_backlog_of_twenty() {
    let (server, _spare, app) = one_slot("llama3.1:8b", |_| {}).await;
    let heavy = key(&app, KeyFields::default()).await;
    let light = key(&app, KeyFields::default()).await;
    let gate = server.hold_streams();
    // The heavy tenant takes the one slot and queues twenty more…
    let holder = app
        .post_json("/api/chat", Some(&heavy), &chat("llama3.1:8b"))
        .await;
    assert_eq!(holder.status(), 200);
    // One at a time, so their order in the queue is known.
    let mut backlog = Vec::new();
    for i in 0..20 {
        backlog.push(send_chat(&app, &heavy, &format!("heavy-{i}")));
        wait_for(&app, "the next one queued", |a| queued(a) == i + 1).await;
    }
    // …then the light tenant asks once.
    let single = send_chat(&app, &light, "light");
    wait_for(&app, "twenty-one queued", |a| queued(a) == 21).await;
    gate.release();
    read_to_end(holder).await.expect("the first stream ends");
    ok_json(single.await.expect("join")).await;
    for r in backlog {
        ok_json(r.await.expect("join")).await;
    }
    let order: Vec<String> = server
        .requests()
        .into_iter()
        .filter(|r| r.path == "/api/chat")
        .map(|r| {
            r.json()["messages"][0]["content"]
                .as_str()
                .unwrap_or("")
                .to_string()
        })
        .collect();
    assert_eq!(order.len(), 22);
    assert_eq!(order[1], "light", "the light tenant went next: {order:?}");
    let rest: Vec<String> = (0..20).map(|i| format!("heavy-{i}")).collect();
    assert_eq!(order[2..], rest[..], "then the backlog, oldest first");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_that_waits_too_long_is_503_and_consumes_nothing() {
    let (server, _spare, app) = one_slot("llama3.1:8b", |c| c.upstream.queue_max_wait_s = 1).await;
    let limited = key(
        &app,
        KeyFields {
            rpm_limit: Some(2),
            ..Default::default()
        },
    )
    .await;
    let gate = server.hold_streams();
    let holder = app
        .post_json("/api/chat", Some(&app.master_key), &chat("llama3.1:8b"))
        .await;
    assert_eq!(holder.status(), 200);
    let resp = app
        .post_json("/api/chat", Some(&limited), &chat_once("llama3.1:8b"))
        .await;
    assert!(
        resp.headers().get("retry-after").is_some(),
        "{:?}",
        resp.headers()
    );
    assert_error(resp, 503, "upstream_busy").await;
    assert_eq!(queued(&app), 0);
    let chats = || {
        server
            .requests()
            .iter()
            .filter(|r| r.path == "/api/chat")
            .count()
    };
    assert_eq!(chats(), 1, "the timed-out request reached no server");
    gate.release();
    read_to_end(holder).await.expect("the holder's stream ends");
    // Its rpm admission came back: the key still has both requests of its minute.
    for _ in 0..2 {
        ok_json(
            app.post_json("/api/chat", Some(&limited), &chat_once("llama3.1:8b"))
                .await,
        )
        .await;
    }
    assert_error(
        app.post_json("/api/chat", Some(&limited), &chat_once("llama3.1:8b"))
            .await,
        429,
        "rate_limited",
    )
    .await;
    app.app.spend.flush().await;
    let key_id = app
        .app
        .store
        .key_by_hash(&tollgate::auth::secrets::hash_secret(&limited))
        .await
        .expect("store")
        .expect("the key")
        .key_id;
    let rows = ok_json(app.admin_get(&format!("/spend/logs?key_id={key_id}")).await).await;
    assert_eq!(
        rows.as_array().map(Vec::len),
        Some(2),
        "no usage row for the 503: {rows}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_leaves_while_queued_is_gone_from_the_queue() {
    let (server, _spare, app) = one_slot("llama3.1:8b", |_| {}).await;
    let gate = server.hold_streams();
    let holder = app
        .post_json("/api/chat", Some(&app.master_key), &chat("llama3.1:8b"))
        .await;
    assert_eq!(holder.status(), 200);
    let waiting = send_chat(&app, &app.master_key, "leaves");
    wait_for(&app, "one queued", |a| queued(a) == 1).await;
    let status = ok_json(app.admin_get("/upstream/status").await).await;
    assert_eq!(status["queued"], 1);
    waiting.abort();
    wait_for(&app, "the queue empty", |a| queued(a) == 0).await;
    let status = ok_json(app.admin_get("/upstream/status").await).await;
    assert_eq!(status["queued"], 0, "the status route agrees");
    let metrics = app
        .get("/metrics", None)
        .await
        .text()
        .await
        .expect("metrics");
    let depth = metrics
        .lines()
        .find(|l| l.starts_with("tollgate_queue_depth"))
        .unwrap_or_else(|| panic!("no queue depth metric in:\n{metrics}"));
    assert!(depth.ends_with(" 0"), "{depth}");
    gate.release();
    read_to_end(holder).await.expect("the stream ends");
    let chats = server
        .requests()
        .iter()
        .filter(|r| r.path == "/api/chat")
        .count();
    assert_eq!(chats, 1, "the departed request was never sent");
}
