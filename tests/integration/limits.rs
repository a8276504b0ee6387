//! Admission limits through the real router (in-process limiter): exact under real
//! concurrency, and refused requests never reach Ollama.

use futures_util::future::join_all;
use serde_json::json;
use tollgate::store::KeyFields;

use super::support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rpm_admits_exactly_n_of_many_concurrent_requests() {
    let app = TestApp::spawn().await;
    let (key, _) = app
        .create_key(KeyFields {
            rpm_limit: Some(7),
            metadata: json!({}),
            ..Default::default()
        })
        .await;
    let body = json!({"model": "llama3.1:8b", "stream": false, "messages": []});
    let responses = join_all((0..28).map(|_| app.post_json("/api/chat", Some(&key), &body))).await;
    let mut admitted = 0;
    for resp in responses {
        if resp.status() == 200 {
            admitted += 1;
        } else {
            assert!(resp.headers().contains_key("retry-after"));
            assert_error(resp, 429, "rate_limited").await;
        }
    }
    assert_eq!(admitted, 7);
    assert_eq!(
        app.ollama.request_count(),
        7,
        "refused requests never reached the upstream"
    );
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parallel_slots_hold_under_slow_streams_and_free_when_they_end() {
    let app = TestApp::spawn().await;
    let (key, _) = app
        .create_key(KeyFields {
            max_parallel_requests: Some(2),
            metadata: json!({}),
            ..Default::default()
        })
        .await;
    let gate = app.ollama.hold_streams();
    let first = app
        .post_json("/api/chat", Some(&key), &chat("llama3.1:8b"))
        .await;
    let second = app
        .post_json("/api/chat", Some(&key), &chat("llama3.1:8b"))
        .await;
    assert_eq!(
        (first.status().as_u16(), second.status().as_u16()),
        (200, 200)
    );
    let third = app
        .post_json("/api/chat", Some(&key), &chat("llama3.1:8b"))
        .await;
    assert_error(third, 429, "too_many_parallel_requests").await;
    assert_eq!(app.ollama.request_count(), 2);

    // A client that walks away frees its slot; a finished stream frees its slot.
    drop(first);
    app.ollama.wait_for_cancelled(1).await;
    gate.release();
    read_to_end(second).await.expect("second stream completes");
    app.app.in_flight.idle().await;
    for _ in 0..2 {
        let resp = app
            .post_json(
                "/api/chat",
                Some(&key),
                &json!({"model": "llama3.1:8b", "stream": false, "messages": []}),
            )
            .await;
        assert_eq!(resp.status(), 200);
    }
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tpm_refuses_the_first_request_after_the_limit_is_crossed() {
    let app = TestApp::spawn().await;
    // The mock reports 11 prompt + 5 completion tokens per request.
    let (key, _) = app
        .create_key(KeyFields {
            tpm_limit: Some(32),
            metadata: json!({}),
            ..Default::default()
        })
        .await;
    let body = json!({"model": "llama3.1:8b", "stream": false, "messages": []});
    for _ in 0..2 {
        let resp = app.post_json("/api/chat", Some(&key), &body).await;
        assert_eq!(resp.status(), 200);
        // Tokens are counted when the response ends: read it to the end.
        read_to_end(resp).await.expect("body");
    }
    app.app.in_flight.idle().await;
    let resp = app.post_json("/api/chat", Some(&key), &body).await;
    assert_error(resp, 429, "rate_limited").await;
    assert_eq!(app.ollama.request_count(), 2);
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_bounded_requests_cannot_overshoot_the_budget() {
    let app = TestApp::builder()
        .config(|c| {
            c.pricing.default = tollgate::config::Price {
                input: 1_000.0,
                output: 1_000.0,
            };
        })
        .spawn()
        .await;
    let body = json!({"model": "llama3.1:8b", "messages": [], "options": {"num_predict": 100}});
    // Each request reserves (prompt estimate = body bytes / 4, plus its bound of 100)
    // tokens at 1000 units per 1M tokens; the budget fits ten and a half of them.
    let estimate = serde_json::to_vec(&body).unwrap().len().div_ceil(4) as f64;
    let reserve = (estimate + 100.0) * 1_000.0 / 1e6;
    let (key, _) = app
        .create_key(KeyFields {
            max_budget: Some(reserve * 10.5),
            metadata: json!({}),
            ..Default::default()
        })
        .await;
    // Streams are held upstream, so every admitted request is still in flight (its
    // reservation standing) while the others race for the budget.
    let gate = app.ollama.hold_streams();
    let responses = join_all((0..50).map(|_| app.post_json("/api/chat", Some(&key), &body))).await;
    let (admitted, refused): (Vec<_>, Vec<_>) =
        responses.into_iter().partition(|r| r.status() == 200);
    assert_eq!(admitted.len(), 10, "exactly the 10 that fit");
    for resp in refused {
        assert_eq!(resp.headers()["x-should-retry"], "false");
        assert_error(resp, 429, "budget_exceeded").await;
    }
    assert_eq!(app.ollama.request_count(), 10);
    gate.release();
    for resp in admitted {
        read_to_end(resp).await.expect("stream completes");
    }
    app.shutdown().await;
}
