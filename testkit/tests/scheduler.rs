//! Scheduler mode: the mock behaves like one real Ollama server's scheduler (loads,
//! LRU eviction of idle models, `parallel` slots, a bounded queue). Every wait is on
//! the simulator's own signal; assertions are on counts and order, never on how long
//! something took (except lower bounds a sleep guarantees).

#![allow(
    clippy::expect_used,
    clippy::panic,
    reason = "test helpers fail the test the way a test does"
)]

use std::time::Duration;

use serde_json::{Value, json};
use testkit::ollama::{BUSY_MESSAGE, Fleet, MockOllama, ModelState, SimEvent};

/// reqwest is built without a TLS provider of its own (see tollgate's `outbound`).
fn client() -> reqwest::Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::new()
}

fn chat(model: &str, stream: bool) -> Value {
    json!({"model": model, "stream": stream, "messages": [{"role": "user", "content": "hi"}]})
}

async fn post(url: &str, path: &str, body: Value) -> reqwest::Response {
    client()
        .post(format!("{url}{path}"))
        .json(&body)
        .send()
        .await
        .expect("request reaches the mock")
}

/// A non-streaming chat; returns its final JSON.
async fn chat_once(mock: &MockOllama, model: &str) -> Value {
    let resp = post(&mock.url(), "/api/chat", chat(model, false)).await;
    assert_eq!(resp.status(), 200, "chat with {model}");
    resp.json().await.expect("JSON body")
}

async fn get_json(mock: &MockOllama, path: &str) -> Value {
    let resp = client()
        .get(format!("{}{path}", mock.url()))
        .send()
        .await
        .expect("request reaches the mock");
    assert_eq!(resp.status(), 200, "GET {path}");
    resp.json().await.expect("JSON body")
}

fn names(list: &Value) -> Vec<String> {
    let mut names: Vec<String> = list["models"]
        .as_array()
        .expect("models array")
        .iter()
        .map(|m| m["name"].as_str().expect("name").to_owned())
        .collect();
    names.sort();
    names
}

fn loaded(model: &str) -> SimEvent {
    SimEvent::Loaded(model.to_owned())
}

fn evicted(model: &str) -> SimEvent {
    SimEvent::Evicted(model.to_owned())
}

/// Spawn a streaming chat and return once its first frame arrived (it then holds its
/// slot for as long as the mock's stream gate is held).
async fn start_stream(url: String, model: &str) -> tokio::task::JoinHandle<String> {
    let mut resp = post(&url, "/api/chat", chat(model, true)).await;
    assert_eq!(resp.status(), 200);
    let first = resp.chunk().await.expect("first frame").expect("a frame");
    tokio::spawn(async move {
        let mut body = String::from_utf8(first.to_vec()).expect("utf-8");
        while let Some(chunk) = resp.chunk().await.expect("rest of the stream") {
            body.push_str(std::str::from_utf8(&chunk).expect("utf-8"));
        }
        body
    })
}

#[tokio::test]
async fn request_waits_for_load_and_reports_load_duration() {
    let load_time = Duration::from_millis(100);
    let interval = Duration::from_millis(5);
    let mock = MockOllama::builder()
        .models(["a"])
        .load_time(load_time)
        .token_interval(interval)
        .completion_frames(4)
        .start()
        .await;
    assert_eq!(mock.sim_stats().expect("scheduler mode").loads, 0);

    let cold = chat_once(&mock, "a").await;
    assert_eq!(cold["done"], true);
    assert_eq!(cold["eval_count"], 4);
    let load_ns = cold["load_duration"].as_u64().expect("load_duration in ns");
    assert!(
        load_ns >= load_time.as_nanos() as u64,
        "load_duration {load_ns} ns"
    );
    let eval_ns = cold["eval_duration"].as_u64().expect("eval_duration in ns");
    assert!(
        eval_ns >= (interval * 4).as_nanos() as u64,
        "eval {eval_ns} ns"
    );
    let total_ns = cold["total_duration"]
        .as_u64()
        .expect("total_duration in ns");
    assert!(total_ns >= load_ns + eval_ns, "total {total_ns} ns");

    // Warm: no second load.
    let warm = chat_once(&mock, "a").await;
    assert!(warm["load_duration"].as_u64().is_some());
    let stats = mock.sim_stats().expect("scheduler mode");
    assert_eq!(stats.model("a").loads, 1);
    assert_eq!(stats.model("a").state, ModelState::Loaded);
    assert_eq!(stats.served, 2);
    assert_eq!(stats.events, vec![loaded("a")]);
}

#[tokio::test]
async fn streamed_final_frame_carries_measured_load_duration() {
    let load_time = Duration::from_millis(50);
    let mock = MockOllama::builder()
        .models(["a"])
        .load_time(load_time)
        .start()
        .await;
    let body = post(
        &mock.url(),
        "/api/generate",
        json!({"model": "a", "prompt": "hi"}),
    )
    .await
    .text()
    .await
    .expect("body");
    let last: Value = serde_json::from_str(body.lines().last().expect("frames")).expect("JSON");
    assert_eq!(last["done"], true);
    assert!(last["load_duration"].as_u64().expect("ns") >= load_time.as_nanos() as u64);
}

#[tokio::test]
async fn least_recently_used_idle_model_is_evicted() {
    let mock = MockOllama::builder()
        .models(["a", "b", "c"])
        .max_loaded_models(2)
        .load_time(Duration::from_millis(20))
        .start()
        .await;
    for model in ["a", "b", "a", "c", "b"] {
        chat_once(&mock, model).await;
    }
    let stats = mock.sim_stats().expect("scheduler mode");
    // `a` was used after `b`, so `b` makes room for `c`; then `a` is the oldest.
    assert_eq!(
        stats.events,
        vec![
            loaded("a"),
            loaded("b"),
            evicted("b"),
            loaded("c"),
            evicted("a"),
            loaded("b")
        ]
    );
    assert_eq!(stats.loaded, ["c", "b"]);
    assert_eq!(stats.model("b").loads, 2);
    assert_eq!(stats.model("b").evictions, 1);
    assert_eq!(stats.model("a").evictions, 1);
    assert_eq!(stats.model("c").evictions, 0);
    assert_eq!((stats.loads, stats.evictions), (4, 2));
    assert_eq!(names(&get_json(&mock, "/api/ps").await), ["b", "c"]);
}

#[tokio::test]
async fn a_model_with_requests_in_flight_is_never_evicted() {
    let mock = MockOllama::builder()
        .models(["a", "b"])
        .max_loaded_models(1)
        .start()
        .await;
    let gate = mock.hold_streams();
    let stream_a = start_stream(mock.url(), "a").await;
    mock.wait_for_sim("a generating", |s| s.model("a").in_flight == 1)
        .await;

    // `b` needs `a`'s place: its load waits for `a` to go idle, and (as in Ollama)
    // the whole queue waits behind it, a request for the loaded `a` included.
    let url = mock.url();
    let wants_b = tokio::spawn(async move { post(&url, "/api/chat", chat("b", false)).await });
    mock.wait_for_queued(1).await;
    let url = mock.url();
    let wants_a = tokio::spawn(async move { post(&url, "/api/chat", chat("a", false)).await });
    let stats = mock.wait_for_queued(2).await;
    assert_eq!(stats.loaded, ["a"]);
    assert_eq!(stats.model("a").in_flight, 1);
    assert_eq!(stats.evictions, 0);
    assert_eq!(stats.model("b").loads, 0);
    assert_eq!(stats.model("b").queued, 1);
    assert_eq!(stats.model("a").queued, 1);

    gate.release();
    assert!(
        stream_a
            .await
            .expect("stream task")
            .contains("\"done\":true")
    );
    assert_eq!(wants_b.await.expect("task").status(), 200);
    assert_eq!(wants_a.await.expect("task").status(), 200);
    let stats = mock.wait_for_served(3).await;
    assert_eq!(
        stats.events,
        vec![
            loaded("a"),
            evicted("a"),
            loaded("b"),
            evicted("b"),
            loaded("a")
        ]
    );
    assert_eq!(stats.max_in_flight, 1);
}

#[tokio::test]
async fn parallel_limit_holds_and_the_rest_queue() {
    let mock = MockOllama::builder()
        .models(["a"])
        .parallel(2)
        .load_time(Duration::from_millis(20))
        .start()
        .await;
    let gate = mock.hold_streams();
    let requests: Vec<_> = (0..10)
        .map(|_| {
            let url = mock.url();
            tokio::spawn(async move {
                post(&url, "/api/chat", chat("a", true))
                    .await
                    .text()
                    .await
                    .expect("body")
            })
        })
        .collect();
    let stats = mock
        .wait_for_sim("2 generating, 8 waiting", |s| {
            s.in_flight == 2 && s.queued == 8
        })
        .await;
    assert_eq!(stats.model("a").in_flight, 2);
    assert_eq!(stats.model("a").queued, 8);

    gate.release();
    for request in requests {
        let body = request.await.expect("task");
        assert_eq!(
            body.lines().count(),
            6,
            "5 content frames and the final one"
        );
    }
    let stats = mock.wait_for_served(10).await;
    assert_eq!(stats.model("a").max_in_flight, 2);
    assert_eq!(stats.max_in_flight, 2);
    // All ten may have waited for the load; at least eight waited for a slot.
    assert!(stats.max_queued >= 8, "max_queued {}", stats.max_queued);
    assert_eq!(stats.model("a").loads, 1);
    assert_eq!((stats.in_flight, stats.queued), (0, 0));
}

#[tokio::test]
async fn a_full_queue_answers_503_server_busy() {
    let mock = MockOllama::builder()
        .models(["a"])
        .parallel(1)
        .max_queue(2)
        .start()
        .await;
    let gate = mock.hold_streams();
    let running = start_stream(mock.url(), "a").await;
    let waiting: Vec<_> = (0..2)
        .map(|_| {
            let url = mock.url();
            tokio::spawn(async move { post(&url, "/api/chat", chat("a", false)).await.status() })
        })
        .collect();
    mock.wait_for_queued(2).await;

    let refused = post(&mock.url(), "/api/chat", chat("a", false)).await;
    assert_eq!(refused.status(), 503);
    assert_eq!(
        refused.text().await.expect("body"),
        json!({ "error": BUSY_MESSAGE }).to_string()
    );
    assert_eq!(
        BUSY_MESSAGE,
        "server busy, please try again.  maximum pending requests exceeded"
    );
    // The OpenAI-compatible route says the same in its envelope.
    let refused = post(
        &mock.url(),
        "/v1/chat/completions",
        json!({"model": "a", "messages": [{"role": "user", "content": "hi"}]}),
    )
    .await;
    assert_eq!(refused.status(), 503);
    let body: Value = refused.json().await.expect("JSON");
    assert_eq!(body["error"]["message"], BUSY_MESSAGE);

    gate.release();
    running.await.expect("stream task");
    for status in waiting {
        assert_eq!(status.await.expect("task"), 200);
    }
    let stats = mock.wait_for_served(3).await;
    assert_eq!(stats.rejected, 2);
    assert_eq!(stats.model("a").rejected, 2);
    assert_eq!(stats.max_queued, 2);
}

#[tokio::test]
async fn a_client_that_leaves_the_queue_frees_its_place() {
    let mock = MockOllama::builder()
        .models(["a"])
        .max_queue(1)
        .start()
        .await;
    let gate = mock.hold_streams();
    let running = start_stream(mock.url(), "a").await;
    let url = mock.url();
    let leaver = tokio::spawn(async move { post(&url, "/api/chat", chat("a", false)).await });
    mock.wait_for_queued(1).await;
    leaver.abort();
    mock.wait_for_queued(0).await;

    let url = mock.url();
    let stays = tokio::spawn(async move { post(&url, "/api/chat", chat("a", false)).await });
    mock.wait_for_queued(1).await;
    gate.release();
    running.await.expect("stream task");
    assert_eq!(stays.await.expect("task").status(), 200);
    let stats = mock.wait_for_served(2).await;
    assert_eq!(stats.rejected, 0);
}

#[tokio::test]
async fn ps_lists_exactly_the_loaded_models_and_tags_the_pulled_ones() {
    let mock = MockOllama::builder()
        .models(["a", "b:7b", "c"])
        .max_loaded_models(2)
        .start()
        .await;
    assert_eq!(
        names(&get_json(&mock, "/api/tags").await),
        ["a", "b:7b", "c"]
    );
    assert!(names(&get_json(&mock, "/api/ps").await).is_empty());

    chat_once(&mock, "a").await;
    // `b` and `b:7b` are different names; the listed one is reported.
    chat_once(&mock, "b:7b").await;
    let ps = get_json(&mock, "/api/ps").await;
    assert_eq!(names(&ps), ["a", "b:7b"]);
    assert_eq!(names(&ps), {
        let mut loaded = mock.loaded_models();
        loaded.sort();
        loaded
    });
    for entry in ps["models"].as_array().expect("models") {
        for field in [
            "name",
            "model",
            "size",
            "digest",
            "details",
            "expires_at",
            "size_vram",
        ] {
            assert!(entry.get(field).is_some(), "ps entry has {field}: {entry}");
        }
        assert_eq!(entry["name"], entry["model"]);
    }

    chat_once(&mock, "c").await;
    assert_eq!(names(&get_json(&mock, "/api/ps").await), ["b:7b", "c"]);
}

#[tokio::test]
async fn an_unlisted_model_is_ollamas_404_and_never_scheduled() {
    let mock = MockOllama::builder().models(["a"]).start().await;
    let resp = post(&mock.url(), "/api/chat", chat("llama3.1:8b", false)).await;
    assert_eq!(resp.status(), 404);
    assert_eq!(
        resp.text().await.expect("body"),
        r#"{"error":"model \"llama3.1:8b\" not found, try pulling it first"}"#
    );
    let stats = mock.sim_stats().expect("scheduler mode");
    assert_eq!((stats.loads, stats.served, stats.rejected), (0, 0, 0));
}

#[tokio::test]
async fn keep_alive_zero_unloads_the_model_after_the_request() {
    let mock = MockOllama::builder().models(["a"]).start().await;
    let mut body = chat("a", false);
    body["keep_alive"] = json!(0);
    assert_eq!(post(&mock.url(), "/api/chat", body).await.status(), 200);
    let stats = mock.sim_stats().expect("scheduler mode");
    assert!(stats.loaded.is_empty());
    assert_eq!(stats.model("a").unloads, 1);
    assert_eq!(stats.model("a").evictions, 0);
    assert_eq!(
        stats.events,
        vec![loaded("a"), SimEvent::Unloaded("a".into())]
    );

    // Any other keep_alive keeps it.
    let mut body = chat("a", false);
    body["keep_alive"] = json!("5m");
    assert_eq!(post(&mock.url(), "/api/chat", body).await.status(), 200);
    assert_eq!(mock.loaded_models(), ["a"]);
}

#[tokio::test]
async fn openai_and_embedding_routes_are_scheduled_too() {
    let mock = MockOllama::builder()
        .models(["a", "embed"])
        .max_loaded_models(1)
        .start()
        .await;
    let resp = post(
        &mock.url(),
        "/v1/chat/completions",
        json!({"model": "a", "messages": [{"role": "user", "content": "hi"}]}),
    )
    .await;
    assert_eq!(resp.status(), 200);
    let resp = post(
        &mock.url(),
        "/api/embed",
        json!({"model": "embed", "input": "x"}),
    )
    .await;
    assert_eq!(resp.status(), 200);
    let stats = mock.sim_stats().expect("scheduler mode");
    assert_eq!(
        stats.events,
        vec![loaded("a"), evicted("a"), loaded("embed")]
    );
    assert_eq!(stats.served, 2);
}

#[tokio::test]
async fn sim_stats_route_serves_the_counters_as_json() {
    let mock = MockOllama::builder()
        .models(["a"])
        .parallel(2)
        .start()
        .await;
    chat_once(&mock, "a").await;
    let json = get_json(&mock, "/_sim/stats").await;
    assert_eq!(json, mock.sim_stats().expect("scheduler mode").to_json());
    assert_eq!(json["loaded"], json!(["a"]));
    assert_eq!(json["served"], 1);
    assert_eq!(json["max_in_flight"], 1);
    assert_eq!(json["models"]["a"]["loads"], 1);
    assert_eq!(json["models"]["a"]["state"], "loaded");
    // Reading the counters is not a request the mock records.
    assert_eq!(mock.request_count(), 1);

    // The plain mock has no such route: gin's 404, as before.
    let plain = MockOllama::start().await;
    assert!(plain.sim_stats().is_none());
    let resp = client()
        .get(format!("{}/_sim/stats", plain.url()))
        .send()
        .await
        .expect("request reaches the mock");
    assert_eq!(resp.status(), 404);
}

#[tokio::test]
async fn a_fleet_is_independent_servers_with_their_own_models() {
    let fleet = Fleet::start([
        MockOllama::builder().models(["a", "b"]),
        MockOllama::builder()
            .models(["b", "c"])
            .max_loaded_models(1),
    ])
    .await;
    assert_eq!(fleet.urls().len(), 2);
    assert_eq!(
        names(&get_json(fleet.server(0), "/api/tags").await),
        ["a", "b"]
    );
    assert_eq!(
        names(&get_json(fleet.server(1), "/api/tags").await),
        ["b", "c"]
    );
    chat_once(fleet.server(0), "a").await;
    chat_once(fleet.server(1), "b").await;
    chat_once(fleet.server(1), "c").await;
    let resp = post(&fleet.server(1).url(), "/api/chat", chat("a", false)).await;
    assert_eq!(resp.status(), 404);
    assert_eq!(fleet.total_loads(), 3);
    assert_eq!(fleet.total_served(), 3);
    let stats = fleet.stats();
    assert_eq!(stats[0].loaded, ["a"]);
    assert_eq!(stats[1].loaded, ["c"]);
    assert_eq!(stats[1].evictions, 1);
}
