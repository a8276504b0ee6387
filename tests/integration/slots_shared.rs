//! Server slots shared across instances (SPEC §12, "Across instances"): two gateways A
//! and B on one PostgreSQL and one Redis (same key prefix), in front of one simulated
//! server. With Redis, all instances together run at most `parallel` of the gateway's
//! requests per loaded model on a server; a slot freed on one instance wakes a request
//! waiting on another; a crashed instance's leases lapse.
//!
//! The simulator runs more requests at once than the gateway's `upstream.parallel`, so
//! its recorded maximum concurrency shows what the gateways sent, not what it allowed.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fred::prelude::*;
use futures_util::future::join_all;
use testkit::ollama::MockOllama;
use tollgate::config::{Config, UpstreamServerConfig};
use tollgate::store::redis::RedisConn;

use crate::support::{TestApp, chat, read_to_end};

const MODEL: &str = "llama3.1:8b";

/// The simulator: room for eight requests at once, so it never hides the gateway's
/// concurrency behind its own queue.
async fn sim() -> MockOllama {
    MockOllama::builder()
        .models([MODEL.to_string()])
        .parallel(8)
        .max_loaded_models(1)
        .load_time(Duration::from_millis(10))
        .start()
        .await
}

/// One server `gpu-a` at `url`, `parallel` 2.
fn one_server(url: String) -> impl Fn(&mut Config) + Clone + Send + 'static {
    move |c: &mut Config| {
        c.upstream.servers = vec![UpstreamServerConfig {
            name: "gpu-a".into(),
            url: url.clone(),
            parallel: Some(2),
            max_loaded_models: Some(1),
        }];
        c.upstream.parallel = 2;
        c.upstream.queue_max_wait_s = 60;
    }
}

/// A (PostgreSQL + Redis) and B sharing its database, Redis prefix and simulator;
/// `None` when the services are not configured.
async fn two_instances(server: &MockOllama) -> Option<(TestApp, TestApp)> {
    let config = one_server(server.url());
    let first = config.clone();
    let a = TestApp::builder()
        .postgres()
        .redis()
        .ollama(server.clone())
        .config(move |c| first(c))
        .try_spawn()
        .await?;
    let b = TestApp::builder()
        .shared_db_with(&a)
        .config(move |c| config(c))
        .spawn()
        .await;
    assert!(b.redis_prefix.is_some() && b.redis_prefix == a.redis_prefix);
    Some((a, b))
}

/// Waits, woken by either fleet's change signal, until `ok(queued on A, queued on B)`.
async fn until_queued(a: &TestApp, b: &TestApp, what: &str, ok: impl Fn(usize, usize) -> bool) {
    let (fa, fb) = (
        a.app.upstream.fleet().clone(),
        b.app.upstream.fleet().clone(),
    );
    let (mut ca, mut cb) = (fa.changes(), fb.changes());
    let waited = tokio::time::timeout(Duration::from_secs(30), async {
        while !ok(fa.queued(), fb.queued()) {
            tokio::select! {
                r = ca.changed() => r.expect("fleet A is alive"),
                r = cb.changed() => r.expect("fleet B is alive"),
            }
        }
    })
    .await;
    assert!(
        waited.is_ok(),
        "timed out waiting for {what}: A queued {}, B queued {}; A {:?}; B {:?}",
        fa.queued(),
        fb.queued(),
        fa.status(),
        fb.status()
    );
}

/// Waits, woken by the fleet's change signal, until `n` requests wait on `app`.
async fn until_queued_on(app: &TestApp, n: usize, what: &str) {
    let fleet = app.app.upstream.fleet().clone();
    let mut changes = fleet.changes();
    tokio::time::timeout(Duration::from_secs(30), async {
        while fleet.queued() != n {
            changes.changed().await.expect("fleet alive");
        }
    })
    .await
    .unwrap_or_else(|_| panic!("timed out waiting: {what}"));
}

/// Every response of `sent` is a 200 whose stream completes.
async fn all_served(sent: Vec<tokio::task::JoinHandle<reqwest::Response>>) {
    for response in join_all(sent).await {
        let response = response.expect("join");
        assert_eq!(response.status(), 200);
        read_to_end(response).await.expect("the stream completes");
    }
}

fn send(app: &TestApp) -> tokio::task::JoinHandle<reqwest::Response> {
    let url = app.url("/api/chat");
    let key = app.master_key.clone();
    tokio::spawn(async move {
        crate::support::client()
            .post(url)
            .bearer_auth(key)
            .json(&chat(MODEL))
            .send()
            .await
            .expect("chat request")
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_together_never_run_more_than_parallel_requests_on_a_server() {
    let server = sim().await;
    let Some((a, b)) = two_instances(&server).await else {
        return;
    };
    let gate = server.hold_streams();
    // Eight requests, four through each instance, all held once generating.
    let sent: Vec<_> = (0..8)
        .map(|i| send(if i % 2 == 0 { &a } else { &b }))
        .collect();
    server
        .wait_for_sim("two generating", |s| s.model(MODEL).in_flight >= 2)
        .await;
    // The other six wait in the instances' own queues rather than reach the server.
    until_queued(&a, &b, "six queued across A and B", |qa, qb| qa + qb == 6).await;
    let stats = server.sim_stats().expect("sim");
    assert_eq!(stats.model(MODEL).in_flight, 2, "{stats:?}");
    gate.release();
    all_served(sent).await;
    let stats = server.sim_stats().expect("sim");
    assert_eq!(stats.model(MODEL).served, 8);
    assert_eq!(
        stats.model(MODEL).max_in_flight,
        2,
        "never more than `parallel` at once, both instances together"
    );
}

/// A burst through both instances — more leases and releases at once than one
/// `slots.lua` call carries, so they leave in shared calls — still runs at most
/// `parallel` at once on the server, serves everything, and leaves no lease in Redis once
/// both instances have shut down (their queued releases drained).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_through_two_instances_shares_calls_and_leaves_no_lease_behind() {
    let server = sim().await;
    let Some((a, b)) = two_instances(&server).await else {
        return;
    };
    const N: usize = 96;
    let sent: Vec<_> = (0..N)
        .map(|i| send(if i % 2 == 0 { &a } else { &b }))
        .collect();
    all_served(sent).await;
    let stats = server.sim_stats().expect("sim");
    assert_eq!(stats.model(MODEL).served, N as u64);
    assert!(
        stats.model(MODEL).max_in_flight <= 2,
        "never more than `parallel` at once: {stats:?}"
    );
    let key = a
        .app
        .upstream
        .shared_slots()
        .expect("shared slots")
        .leases_key("gpu-a", MODEL);
    b.shutdown().await;
    a.shutdown().await;
    // The instances' connections are closed: a fresh one, with the key already prefixed.
    let url = crate::support::redis_url().expect("Redis configured");
    let redis = RedisConn::connect(&url, "").await.expect("Redis");
    let left: i64 = redis.client.zcard(&key).await.expect("zcard");
    assert_eq!(left, 0, "every lease released");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slot_freed_on_one_instance_wakes_a_request_waiting_on_another() {
    let server = sim().await;
    let Some((a, b)) = two_instances(&server).await else {
        return;
    };
    let gate = server.hold_streams();
    // A holds both slots.
    let first = a
        .post_json("/api/chat", Some(&a.master_key), &chat(MODEL))
        .await;
    let second = a
        .post_json("/api/chat", Some(&a.master_key), &chat(MODEL))
        .await;
    assert_eq!(first.status(), 200);
    assert_eq!(second.status(), 200);
    // B's request waits in B's queue: B knows A holds them.
    let waiting = send(&b);
    until_queued(&a, &b, "B's request queued", |qa, qb| qa == 0 && qb == 1).await;
    assert_eq!(server.sim_stats().expect("sim").model(MODEL).in_flight, 2);
    assert_eq!(
        b.app.upstream.fleet().status()[0].in_flight.get(MODEL),
        None,
        "nothing of B's in flight"
    );
    // A's streams end; one freed slot on A lets B's request go.
    gate.release();
    read_to_end(first).await.expect("first");
    read_to_end(second).await.expect("second");
    let response = waiting.await.expect("join");
    let stats = server.sim_stats().expect("sim");
    assert!(
        stats.model(MODEL).served >= 1,
        "B's request reached the server only after one of A's had ended: {stats:?}"
    );
    assert_eq!(response.status(), 200);
    read_to_end(response).await.expect("B's stream");
    assert_eq!(
        server.sim_stats().expect("sim").model(MODEL).max_in_flight,
        2
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_slots_of_a_crashed_instance_lapse() {
    let server = sim().await;
    let config = one_server(server.url());
    let Some(a) = TestApp::builder()
        .postgres()
        .redis()
        .ollama(server.clone())
        .config(move |c| config(c))
        .try_spawn()
        .await
    else {
        return;
    };
    // A "crashed" instance left both slots leased, expiring in a moment (as its
    // `request_timeout_s` would have them).
    let slots = a.app.upstream.shared_slots().expect("shared slots");
    let key = slots.leases_key("gpu-a", MODEL);
    let now_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_millis();
    let expiry = (now_ms + 1_500) as f64;
    let redis = a.app.redis.as_ref().expect("redis");
    let added: i64 = redis
        .client
        .zadd(
            &key,
            None,
            None,
            false,
            false,
            vec![(expiry, "crashed-1"), (expiry, "crashed-2")],
        )
        .await
        .expect("zadd");
    assert_eq!(added, 2);
    let waiting = send(&a);
    until_queued_on(
        &a,
        1,
        "the request waits while the crashed instance's leases last",
    )
    .await;
    assert_eq!(server.sim_stats().expect("sim").model(MODEL).served, 0);
    // Once they lapse, the request is served.
    let response = waiting.await.expect("join");
    assert_eq!(response.status(), 200);
    read_to_end(response).await.expect("the stream");
    let left: i64 = redis.client.zcard(&key).await.expect("zcard");
    assert!(left <= 1, "the lapsed leases are gone");
}

/// `redis.failure_mode: open` with Redis gone: slots are counted by this instance alone —
/// still at most `parallel` at once on the server — and each fallback is counted in
/// `/metrics`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_redis_gone_open_mode_counts_slots_locally() {
    let Some(redis) = crate::support::redis_addr().await else {
        crate::support::skip("TEST_REDIS_URL not set");
        return;
    };
    let proxy = crate::support::TcpProxy::start(redis).await;
    let url = proxy.url("redis");
    let server = sim().await;
    let config = one_server(server.url());
    let Some(app) = TestApp::builder()
        .postgres()
        .redis()
        .ollama(server.clone())
        .config(move |c| {
            config(c);
            c.redis.url = Some(tollgate::config::Secret(url));
            c.redis.failure_mode = tollgate::config::FailureMode::Open;
        })
        .try_spawn()
        .await
    else {
        return;
    };
    // The counter is process-wide and other tests' outages add to it: only what this
    // test adds is this test's.
    let fallbacks_before = slot_fallbacks(&app).await;
    // Served with a lease in Redis first (seen there while it runs), so the fallbacks
    // below are the outage's.
    let leases = app
        .app
        .upstream
        .shared_slots()
        .expect("shared slots")
        .leases_key("gpu-a", MODEL);
    let gate = server.hold_streams();
    let first = send(&app);
    server
        .wait_for_sim("the first generating", |s| s.model(MODEL).in_flight >= 1)
        .await;
    let held: i64 = app
        .app
        .redis
        .as_ref()
        .expect("redis")
        .client
        .zcard(&leases)
        .await
        .expect("zcard");
    assert_eq!(held, 1, "the first request's slot is leased in Redis");
    gate.release();
    let first = first.await.expect("join");
    assert_eq!(first.status(), 200);
    read_to_end(first).await.expect("body");

    proxy.stop().await;
    let gate = server.hold_streams();
    let sent: Vec<_> = (0..4).map(|_| send(&app)).collect();
    server
        .wait_for_sim("two generating", |s| s.model(MODEL).in_flight >= 2)
        .await;
    until_queued_on(&app, 2, "the other two wait in this instance's queue").await;
    assert_eq!(server.sim_stats().expect("sim").model(MODEL).in_flight, 2);
    gate.release();
    all_served(sent).await;
    let stats = server.sim_stats().expect("sim");
    assert_eq!(stats.model(MODEL).served, 5);
    assert_eq!(
        stats.model(MODEL).max_in_flight,
        2,
        "local counting kept `parallel`"
    );
    assert!(
        slot_fallbacks(&app).await >= fallbacks_before + 4.0,
        "every claim without Redis was counted"
    );
}

/// `tollgate_upstream_slot_fallbacks_total` in `/metrics` (0 when not yet reported).
async fn slot_fallbacks(app: &TestApp) -> f64 {
    app.metric(tollgate::telemetry::SLOT_FALLBACKS).await
}
