//! Several Ollama servers (SPEC §11): model-aware routing, ejection and readmission,
//! failover on refused connections and on Ollama's "server busy", draining, merged
//! lists, admin routes naming their server, the `server` of every usage row, and
//! `/upstream/status` against the simulators' own counts.
//!
//! Every server is a testkit simulator in scheduler mode: a model must be loaded before
//! it answers, a load evicts the least recently used idle model, each loaded model runs
//! `parallel` requests at once.

use std::time::Duration;

use serde_json::{Value, json};
use testkit::ollama::{BUSY_MESSAGE, Failure, MockOllama};
use tollgate::config::{Config, UpstreamServerConfig};
use tollgate::store::KeyFields;
use tollgate::upstream::{ServerState, ServerStatus};

use crate::keys_support::{chat_once, ok_json};
use crate::support::{TestApp, assert_error, chat, read_to_end};

/// A simulated server with `models`, `parallel` 2 and room for 2 loaded models.
async fn sim(models: &[&str]) -> MockOllama {
    MockOllama::builder()
        .models(models.iter().map(|m| (*m).to_string()))
        .parallel(2)
        .max_loaded_models(2)
        .load_time(Duration::from_millis(20))
        .start()
        .await
}

/// A gateway in front of `servers` (named `gpu-a`, `gpu-b`, … in order).
async fn gateway(
    servers: &[&MockOllama],
    edit: impl FnOnce(&mut Config) + Send + 'static,
) -> TestApp {
    let servers: Vec<UpstreamServerConfig> = servers
        .iter()
        .enumerate()
        .map(|(i, s)| UpstreamServerConfig {
            name: format!(
                "gpu-{}",
                (b'a' + u8::try_from(i).expect("few servers")) as char
            ),
            url: s.url(),
            parallel: None,
            max_loaded_models: None,
        })
        .collect();
    let app = TestApp::builder()
        .config(move |c| {
            c.upstream.servers = servers;
            c.upstream.parallel = 2;
            c.upstream.max_loaded_models = 2;
            c.upstream.discovery_interval_s = 1;
            c.upstream.eject_after_failures = 1;
            c.upstream.eject_s = 1;
            c.upstream.queue_max_wait_s = 30;
            edit(c);
        })
        .spawn()
        .await;
    // The first discovery round runs in the background at start-up.
    until(&app, "every server's list read", |s| {
        s.iter().all(|s| s.models.is_some())
    })
    .await;
    app
}

/// Waits (on the fleet's change signal, never by polling a clock) until `ok` holds.
async fn until(
    app: &TestApp,
    what: &str,
    ok: impl Fn(&[ServerStatus]) -> bool,
) -> Vec<ServerStatus> {
    let fleet = app.app.upstream.fleet().clone();
    let mut changes = fleet.changes();
    let waited = tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            let status = fleet.status();
            if ok(&status) {
                return status;
            }
            changes.changed().await.expect("the fleet is alive");
        }
    })
    .await;
    waited.unwrap_or_else(|_| panic!("timed out waiting for {what}: {:#?}", fleet.status()))
}

/// Generation requests a simulator received (discovery's reads left out).
fn chats(server: &MockOllama) -> Vec<Value> {
    server
        .requests()
        .into_iter()
        .filter(|r| r.path == "/api/chat")
        .map(|r| r.json())
        .collect()
}

async fn admin_chat(app: &TestApp, model: &str) -> reqwest::Response {
    app.post_json("/api/chat", Some(&app.master_key), &chat_once(model))
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_model_present_on_one_server_goes_there() {
    let a = sim(&["llama3.1:8b"]).await;
    let b = sim(&["qwen2.5:7b"]).await;
    let app = gateway(&[&a, &b], |_| {}).await;
    for _ in 0..3 {
        ok_json(admin_chat(&app, "qwen2.5:7b").await).await;
    }
    assert_eq!(chats(&a).len(), 0);
    assert_eq!(chats(&b).len(), 3);
    // No server has it: 404 before anything is sent.
    assert_error(admin_chat(&app, "mistral:7b").await, 404, "model_not_found").await;
    assert_eq!(chats(&a).len() + chats(&b).len(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_warm_server_is_preferred_over_a_cold_one() {
    let a = sim(&["llama3.1:8b"]).await;
    let b = sim(&["llama3.1:8b"]).await;
    // Load the model on b behind the gateway's back; discovery's /api/ps shows it.
    let direct = crate::support::client()
        .post(format!("{}/api/chat", b.url()))
        .json(&chat_once("llama3.1:8b"))
        .send()
        .await
        .expect("direct request");
    assert!(direct.status().is_success());
    let app = gateway(&[&a, &b], |_| {}).await;
    until(&app, "b warm", |s| {
        s[1].loaded.contains(&"llama3.1:8b".to_string())
    })
    .await;
    for _ in 0..4 {
        ok_json(admin_chat(&app, "llama3.1:8b").await).await;
    }
    assert_eq!(chats(&a).len(), 0, "the cold server got nothing");
    assert_eq!(a.sim_stats().expect("sim").loads, 0);
    assert_eq!(b.sim_stats().expect("sim").model("llama3.1:8b").loads, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_load_never_evicts_a_model_with_requests_in_flight() {
    // One slot for one loaded model; the second server does not have `qwen`.
    let a = MockOllama::builder()
        .models(["llama3.1:8b".to_string(), "qwen2.5:7b".to_string()])
        .parallel(1)
        .max_loaded_models(1)
        .start()
        .await;
    let b = sim(&["llama3.1:8b"]).await;
    let app = gateway(&[&a, &b], |c| {
        c.upstream.servers[0].parallel = Some(1);
        c.upstream.servers[0].max_loaded_models = Some(1);
    })
    .await;
    let gate = a.hold_streams();
    // `llama` goes to a (both cold, a first), and stays in flight.
    let held = app
        .post_json("/api/chat", Some(&app.master_key), &chat("llama3.1:8b"))
        .await;
    assert_eq!(held.status(), 200);
    until(&app, "llama in flight on a", |s| {
        s[0].in_flight.get("llama3.1:8b") == Some(&1)
    })
    .await;
    // `qwen` exists only on a, whose one model is busy: the gateway waits rather than
    // make a evict it.
    let app2 = app.url("/api/chat");
    let key = app.master_key.clone();
    let waiting = tokio::spawn(async move {
        crate::support::client()
            .post(app2)
            .bearer_auth(key)
            .json(&chat_once("qwen2.5:7b"))
            .send()
            .await
            .expect("qwen request")
    });
    until(&app, "qwen queued", |_| {
        app.app.upstream.fleet().queued() == 1
    })
    .await;
    assert!(
        chats(&a).iter().all(|c| c["model"] != "qwen2.5:7b"),
        "nothing was sent that would evict the busy model"
    );
    assert_eq!(a.sim_stats().expect("sim").evictions, 0);
    gate.release();
    read_to_end(held).await.expect("the llama stream completes");
    let resp = waiting.await.expect("join");
    ok_json(resp).await;
    let stats = a.sim_stats().expect("sim");
    assert_eq!(stats.model("llama3.1:8b").evictions, 1, "evicted once idle");
    assert_eq!(stats.model("qwen2.5:7b").served, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refusing_server_is_ejected_its_requests_go_elsewhere_and_it_comes_back() {
    let a = sim(&["llama3.1:8b"]).await;
    let b = sim(&["llama3.1:8b"]).await;
    let addr = a.addr().to_string();
    let app = gateway(&[&a, &b], |_| {}).await;
    // Both cold and empty: the first request loads on a (the first of equals), so a
    // is warm and preferred from now on.
    ok_json(admin_chat(&app, "llama3.1:8b").await).await;
    assert_eq!(chats(&a).len(), 1);
    a.stop().await;
    for _ in 0..3 {
        let body = ok_json(admin_chat(&app, "llama3.1:8b").await).await;
        assert_eq!(body["done"], true);
    }
    let status = until(&app, "a ejected", |s| s[0].state == ServerState::Ejected).await;
    assert!(status[0].consecutive_failures >= 1 && status[0].last_error_at.is_some());
    assert_eq!(chats(&b).len(), 3, "every request went to b, with 200");
    // Back on the same address: the probe after `eject_s` readmits it.
    let _again = MockOllama::builder()
        .models(["llama3.1:8b".to_string()])
        .parallel(2)
        .start_on(&addr)
        .await
        .expect("rebind a's address");
    until(&app, "a readmitted", |s| {
        s[0].state == ServerState::InService
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ollamas_server_busy_moves_the_request_to_another_server() {
    let a = sim(&["llama3.1:8b"]).await;
    let b = sim(&["llama3.1:8b"]).await;
    let app = gateway(&[&a, &b], |c| c.upstream.eject_after_failures = 3).await;
    a.set_failure(Some(Failure::Status(503, BUSY_MESSAGE.into())));
    b.set_failure(Some(Failure::Status(503, BUSY_MESSAGE.into())));
    // Both busy: 503 upstream_busy with Retry-After, each server tried once.
    let resp = admin_chat(&app, "llama3.1:8b").await;
    assert!(resp.headers().get("retry-after").is_some());
    assert_error(resp, 503, "upstream_busy").await;
    assert_eq!((chats(&a).len(), chats(&b).len()), (1, 1));
    // Only a busy: the request lands on b.
    b.set_failure(None);
    ok_json(admin_chat(&app, "llama3.1:8b").await).await;
    assert_eq!(chats(&b).len(), 2);
    // Busy is not broken: nobody was ejected.
    let status = app.app.upstream.fleet().status();
    assert!(status.iter().all(|s| s.state == ServerState::InService));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drained_server_gets_nothing_new_while_its_stream_finishes() {
    let a = sim(&["llama3.1:8b"]).await;
    let b = sim(&["llama3.1:8b"]).await;
    let app = gateway(&[&a, &b], |_| {}).await;
    let gate = a.hold_streams();
    let held = app
        .post_json("/api/chat", Some(&app.master_key), &chat("llama3.1:8b"))
        .await;
    assert_eq!(held.status(), 200);
    let on_a = !chats(&a).is_empty();
    let (busy, other, name) = if on_a {
        (&a, &b, "gpu-a")
    } else {
        (&b, &a, "gpu-b")
    };
    let drained = app
        .admin_post("/upstream/drain", &json!({"name": name}))
        .await;
    assert_eq!(ok_json(drained).await["state"], "draining");
    for _ in 0..3 {
        ok_json(admin_chat(&app, "llama3.1:8b").await).await;
    }
    assert_eq!(chats(busy).len(), 1, "the drained server got nothing new");
    assert_eq!(chats(other).len(), 3);
    gate.release();
    let body = read_to_end(held).await.expect("the stream finishes");
    let body = String::from_utf8_lossy(&body);
    assert!(body.contains("\"done\":true"), "{body}");
    let back = app
        .admin_post("/upstream/undrain", &json!({"name": name}))
        .await;
    assert_eq!(ok_json(back).await["state"], "in_service");
    assert_error(
        app.admin_post("/upstream/drain", &json!({"name": "gpu-z"}))
            .await,
        404,
        "not_found",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lists_are_merged_then_filtered_per_caller() {
    let a = sim(&["llama3.1:8b", "qwen2.5:7b"]).await;
    let b = sim(&["qwen2.5:7b", "nomic-embed-text:latest"]).await;
    let app = gateway(&[&a, &b], |_| {}).await;
    let names = |v: &Value, field: &str, name: &str| -> Vec<String> {
        let mut n: Vec<String> = v[field]
            .as_array()
            .expect("a list")
            .iter()
            .map(|m| m[name].as_str().expect("a name").to_string())
            .collect();
        n.sort();
        n
    };
    let all = ok_json(app.get("/api/tags", Some(&app.master_key)).await).await;
    assert_eq!(
        names(&all, "models", "name"),
        ["llama3.1:8b", "nomic-embed-text:latest", "qwen2.5:7b"]
    );
    let (key, _) = app
        .create_key(KeyFields {
            models: vec!["llama3.1:8b".into(), "nomic-embed-text:latest".into()],
            ..Default::default()
        })
        .await;
    let mine = ok_json(app.get("/api/tags", Some(&key)).await).await;
    assert_eq!(
        names(&mine, "models", "name"),
        ["llama3.1:8b", "nomic-embed-text:latest"]
    );
    let openai = ok_json(app.get("/v1/models", Some(&key)).await).await;
    assert_eq!(openai["object"], "list");
    assert_eq!(
        names(&openai, "data", "id"),
        ["llama3.1:8b", "nomic-embed-text:latest"]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_routes_name_their_server_when_there_are_several() {
    let a = sim(&["llama3.1:8b"]).await;
    let b = sim(&["llama3.1:8b"]).await;
    let app = gateway(&[&a, &b], |_| {}).await;
    let pull = json!({"model": "mistral:7b", "stream": false});
    let missing = app.admin_post("/api/pull", &pull).await;
    let body = missing.text().await.expect("body");
    assert!(
        body.contains("invalid_request") && body.contains("X-Tollgate-Server"),
        "{body}"
    );
    let unknown = app
        .request(reqwest::Method::POST, "/api/pull", Some(&app.master_key))
        .header("x-tollgate-server", "gpu-z")
        .json(&pull)
        .send()
        .await
        .expect("send");
    assert_error(unknown, 404, "not_found").await;
    let named = app
        .request(reqwest::Method::POST, "/api/pull", Some(&app.master_key))
        .header("x-tollgate-server", "gpu-b")
        .json(&pull)
        .send()
        .await
        .expect("send");
    assert_eq!(named.status(), 200);
    let pulls = |s: &MockOllama| {
        s.requests()
            .iter()
            .filter(|r| r.path == "/api/pull")
            .count()
    };
    assert_eq!((pulls(&a), pulls(&b)), (0, 1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_usage_row_names_its_server() {
    let a = sim(&["llama3.1:8b"]).await;
    let b = sim(&["qwen2.5:7b"]).await;
    let app = gateway(&[&a, &b], |_| {}).await;
    ok_json(admin_chat(&app, "llama3.1:8b").await).await;
    ok_json(admin_chat(&app, "qwen2.5:7b").await).await;
    app.app.spend.flush().await;
    let rows = ok_json(app.admin_get("/spend/logs").await).await;
    let mut seen: Vec<(String, String)> = rows
        .as_array()
        .expect("rows")
        .iter()
        .map(|r| {
            (
                r["model"].as_str().expect("model").to_string(),
                r["server"]
                    .as_str()
                    .expect("a server on every row")
                    .to_string(),
            )
        })
        .collect();
    seen.sort();
    assert_eq!(
        seen,
        [
            ("llama3.1:8b".to_string(), "gpu-a".to_string()),
            ("qwen2.5:7b".to_string(), "gpu-b".to_string())
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_status_matches_the_servers_own_counts() {
    let a = sim(&["llama3.1:8b"]).await;
    let b = sim(&["qwen2.5:7b"]).await;
    let app = gateway(&[&a, &b], |_| {}).await;
    let gate = a.hold_streams();
    let first = app
        .post_json("/api/chat", Some(&app.master_key), &chat("llama3.1:8b"))
        .await;
    let second = app
        .post_json("/api/chat", Some(&app.master_key), &chat("llama3.1:8b"))
        .await;
    a.wait_for_sim("two generating", |s| s.model("llama3.1:8b").in_flight == 2)
        .await;
    let status = ok_json(app.admin_get("/upstream/status").await).await;
    let gpu_a = &status["servers"][0];
    assert_eq!(gpu_a["name"], "gpu-a");
    assert_eq!(gpu_a["state"], "in_service");
    assert_eq!(gpu_a["in_flight"]["llama3.1:8b"], 2);
    assert_eq!(gpu_a["loaded"], json!(a.loaded_models()));
    assert_eq!(status["servers"][1]["models"], json!(["qwen2.5:7b"]));
    assert_eq!(status["queued"], 0);
    gate.release();
    read_to_end(first).await.expect("first");
    read_to_end(second).await.expect("second");
    until(&app, "nothing in flight", |s| s[0].in_flight.is_empty()).await;
    // Proxy admins only: a virtual key is refused.
    let (key, _) = app.create_key(KeyFields::default()).await;
    assert_error(
        app.get("/upstream/status", Some(&key)).await,
        403,
        "forbidden",
    )
    .await;
    assert_error(
        app.post_json("/upstream/drain", Some(&key), &json!({"name": "gpu-a"}))
            .await,
        403,
        "forbidden",
    )
    .await;
}
