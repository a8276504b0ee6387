//! Admission limits through the real router (in-process limiter): exact under real
//! concurrency, and refused requests never reach Ollama.

use chrono::{DateTime, Utc};
use futures_util::future::join_all;
use serde_json::{Value, json};
use tollgate::store::{KeyFields, TeamFields};

use super::support::*;
use crate::keys_support::{info, ok_json};

/// A non-streaming `/api/chat` body.
pub(crate) fn once() -> Value {
    json!({"model": "llama3.1:8b", "stream": false, "messages": []})
}

/// Prices every token at one cost unit, so a request to the mock (11 prompt + 5
/// completion tokens) costs exactly [`REQUEST_COST`].
pub(crate) fn unit_pricing(c: &mut tollgate::config::Config) {
    c.pricing.default = tollgate::config::Price {
        input: 1e6,
        output: 1e6,
    };
}

/// What one mock request costs under [`unit_pricing`].
pub(crate) const REQUEST_COST: f64 = 16.0;

pub(crate) fn duration(text: &str) -> Option<tollgate::config::Duration> {
    Some(tollgate::config::parse_duration(text).expect("a duration"))
}

/// Moves a key's `budget_reset_at` straight in the database (as if its period's end had
/// come), the way the store itself writes the column.
pub(crate) async fn move_budget_reset(app: &TestApp, key_id: &str, to: DateTime<Utc>) {
    use sea_orm::{ActiveModelTrait, EntityTrait, IntoActiveModel, Set};
    let db = app.db.connect().await;
    let row = entity::virtual_key::Entity::find_by_id(key_id.to_string())
        .one(&db)
        .await
        .expect("read the key row")
        .expect("the key row exists");
    let mut am = row.into_active_model();
    am.budget_reset_at = Set(Some(to));
    am.update(&db).await.expect("move budget_reset_at");
    drop(db.close().await);
}

fn ts(v: &Value) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(v.as_str().unwrap_or_else(|| panic!("a timestamp: {v}")))
        .unwrap_or_else(|e| panic!("a RFC 3339 timestamp ({e}): {v}"))
        .with_timezone(&Utc)
}

/// `/key/info` of a key whose period was just reset: spend 0 and a `budget_reset_at`
/// one period after the moved one (so in the future).
pub(crate) async fn assert_new_period(app: &TestApp, key_id: &str, moved_to: DateTime<Utc>) {
    let info = info(app, key_id).await;
    assert_eq!(info["spend"], 0.0, "spend starts over: {info}");
    let reset = ts(&info["budget_reset_at"]);
    assert!(
        reset > Utc::now(),
        "the new period ends in the future: {info}"
    );
    let expected = moved_to + chrono::Duration::days(30);
    assert!(
        (reset - expected).num_seconds().abs() <= 1,
        "the new period is one budget_duration after the old end ({expected}): {info}"
    );
}

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

/// A team's RPM bounds all its keys together, on top of each key's own; requests refused
/// by either limit charge neither (SPEC §5.2: a refused request consumes nothing).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn team_rpm_applies_in_addition_to_the_keys() {
    let app = TestApp::spawn().await;
    app.create_team(
        "team-rpm",
        TeamFields {
            rpm_limit: Some(4),
            metadata: json!({}),
            ..Default::default()
        },
    )
    .await;
    let (narrow, _) = app
        .create_key(KeyFields {
            team_id: Some("team-rpm".into()),
            rpm_limit: Some(1),
            metadata: json!({}),
            ..Default::default()
        })
        .await;
    let (wide, _) = app
        .create_key(KeyFields {
            team_id: Some("team-rpm".into()),
            rpm_limit: Some(100),
            metadata: json!({}),
            ..Default::default()
        })
        .await;
    let body = once();
    // The key's own limit: one of three, although the team has room for four.
    let responses =
        join_all((0..3).map(|_| app.post_json("/api/chat", Some(&narrow), &body))).await;
    let mut admitted = 0;
    for resp in responses {
        if resp.status() == 200 {
            admitted += 1;
        } else {
            assert!(resp.headers().contains_key("retry-after"));
            assert_error(resp, 429, "rate_limited").await;
        }
    }
    assert_eq!(admitted, 1, "the key's own rpm_limit");
    // The team's limit: the other key gets the team's remaining three of ten, although
    // its own limit is far higher — the narrow key's two refusals used none of them.
    let responses = join_all((0..10).map(|_| app.post_json("/api/chat", Some(&wide), &body))).await;
    let mut admitted = 0;
    for resp in responses {
        if resp.status() == 200 {
            admitted += 1;
        } else {
            assert!(resp.headers().contains_key("retry-after"));
            assert_error(resp, 429, "rate_limited").await;
        }
    }
    assert_eq!(admitted, 3, "the team's rpm_limit, shared by its keys");
    assert_eq!(app.ollama.request_count(), 4);
    app.shutdown().await;
}

/// A team's `max_parallel_requests` is shared by its keys; a slot freed by one key's
/// stream admits another key's request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn team_parallel_slots_are_shared_by_its_keys() {
    let app = TestApp::spawn().await;
    app.create_team(
        "team-par",
        TeamFields {
            max_parallel_requests: Some(1),
            metadata: json!({}),
            ..Default::default()
        },
    )
    .await;
    let mut keys = Vec::new();
    for _ in 0..2 {
        let (key, _) = app
            .create_key(KeyFields {
                team_id: Some("team-par".into()),
                max_parallel_requests: Some(5),
                metadata: json!({}),
                ..Default::default()
            })
            .await;
        keys.push(key);
    }
    let gate = app.ollama.hold_streams();
    let first = app
        .post_json("/api/chat", Some(&keys[0]), &chat("llama3.1:8b"))
        .await;
    assert_eq!(first.status(), 200);
    for key in &keys {
        let resp = app
            .post_json("/api/chat", Some(key), &chat("llama3.1:8b"))
            .await;
        assert_error(resp, 429, "too_many_parallel_requests").await;
    }
    assert_eq!(app.ollama.request_count(), 1);
    gate.release();
    read_to_end(first).await.expect("the stream completes");
    app.app.in_flight.idle().await;
    let resp = app.post_json("/api/chat", Some(&keys[1]), &once()).await;
    assert_eq!(resp.status(), 200, "the team's slot is free again");
    app.shutdown().await;
}

/// A request the team refuses consumes nothing of the key's own limits: with the team's
/// RPM used up by another key, this key's one request per minute is refused by the team,
/// and is still there once the team's limit is lifted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_refused_by_the_team_consumes_nothing_of_the_key() {
    let app = TestApp::spawn().await;
    app.create_team(
        "team-full",
        TeamFields {
            rpm_limit: Some(2),
            metadata: json!({}),
            ..Default::default()
        },
    )
    .await;
    let (other, _) = app
        .create_key(KeyFields {
            team_id: Some("team-full".into()),
            metadata: json!({}),
            ..Default::default()
        })
        .await;
    let (mine, _) = app
        .create_key(KeyFields {
            team_id: Some("team-full".into()),
            rpm_limit: Some(1),
            metadata: json!({}),
            ..Default::default()
        })
        .await;
    for _ in 0..2 {
        let resp = app.post_json("/api/chat", Some(&other), &once()).await;
        assert_eq!(resp.status(), 200);
    }
    for _ in 0..3 {
        let resp = app.post_json("/api/chat", Some(&mine), &once()).await;
        assert_error(resp, 429, "rate_limited").await;
    }
    assert_eq!(app.ollama.request_count(), 2);
    // Lift the team's limit: the key's own single request is still unused…
    ok_json(
        app.admin_post(
            "/team/update",
            &json!({"team_id": "team-full", "rpm_limit": null}),
        )
        .await,
    )
    .await;
    let resp = app.post_json("/api/chat", Some(&mine), &once()).await;
    assert_eq!(
        resp.status(),
        200,
        "the team's refusals charged the key nothing"
    );
    // …and now it is used.
    let resp = app.post_json("/api/chat", Some(&mine), &once()).await;
    assert_error(resp, 429, "rate_limited").await;
    assert_eq!(app.ollama.request_count(), 3);
    app.shutdown().await;
}

/// A team's TPM and budget count the tokens and cost of all its keys.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn team_tpm_and_budget_count_every_key() {
    let app = TestApp::builder().config(unit_pricing).spawn().await;
    for (team, tpm, budget) in [
        ("team-tpm", Some(32), None),
        ("team-cost", None, Some(32.0)),
    ] {
        app.create_team(
            team,
            TeamFields {
                tpm_limit: tpm,
                max_budget: budget,
                metadata: json!({}),
                ..Default::default()
            },
        )
        .await;
        let mut keys = Vec::new();
        for _ in 0..2 {
            let (key, _) = app
                .create_key(KeyFields {
                    team_id: Some(team.into()),
                    metadata: json!({}),
                    ..Default::default()
                })
                .await;
            keys.push(key);
        }
        // 16 tokens (and 16 cost units) each: two requests reach the team's 32.
        for key in &keys {
            let resp = app.post_json("/api/chat", Some(key), &once()).await;
            assert_eq!(resp.status(), 200, "{team}");
            read_to_end(resp).await.expect("body");
        }
        app.app.in_flight.idle().await;
        let before = app.ollama.request_count();
        for key in &keys {
            let resp = app.post_json("/api/chat", Some(key), &once()).await;
            if tpm.is_some() {
                assert_error(resp, 429, "rate_limited").await;
            } else {
                assert_eq!(resp.headers()["x-should-retry"], "false");
                assert_error(resp, 429, "budget_exceeded").await;
            }
        }
        assert_eq!(
            app.ollama.request_count(),
            before,
            "{team}: refusals reach nothing"
        );
    }
    app.shutdown().await;
}

/// A budget period rolls over (SPEC §5.3): once the key's `budget_reset_at` has passed,
/// the reset job zeroes its spend and starts the next period, and the exhausted key is
/// admitted again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn budget_period_rolls_over() {
    let app = TestApp::builder().config(unit_pricing).spawn().await;
    let (key, stored) = app
        .create_key(KeyFields {
            max_budget: Some(40.0),
            budget_duration: duration("30d"),
            metadata: json!({}),
            ..Default::default()
        })
        .await;
    for _ in 0..3 {
        let resp = app.post_json("/api/chat", Some(&key), &once()).await;
        assert_eq!(resp.status(), 200);
        read_to_end(resp).await.expect("body");
    }
    app.app.in_flight.idle().await;
    let resp = app.post_json("/api/chat", Some(&key), &once()).await;
    assert_eq!(resp.headers()["x-should-retry"], "false");
    assert_error(resp, 429, "budget_exceeded").await;
    app.app.spend.flush().await;
    assert_eq!(
        info(&app, &stored.key_id).await["spend"],
        3.0 * REQUEST_COST
    );

    // The period ends.
    let moved_to = Utc::now() - chrono::Duration::minutes(1);
    move_budget_reset(&app, &stored.key_id, moved_to).await;
    // The background job (every second) may get there first; either way it is reset.
    let count = app.app.budgets.reset_due().await;
    assert!(count <= 1, "one row was due, {count} reset");
    assert_new_period(&app, &stored.key_id, moved_to).await;

    let resp = app.post_json("/api/chat", Some(&key), &once()).await;
    assert_eq!(resp.status(), 200, "a new period admits the key again");
    read_to_end(resp).await.expect("body");
    assert_eq!(app.ollama.request_count(), 4);
    app.shutdown().await;
}

/// Polls until `key` is admitted, for at most `within`; every refusal before that must be
/// 429 `budget_exceeded`. For waits the spec bounds in time (a budget period's end).
pub(crate) async fn admitted_within(
    app: &TestApp,
    key: &str,
    within: std::time::Duration,
) -> reqwest::Response {
    let deadline = std::time::Instant::now() + within;
    loop {
        let resp = app.post_json("/api/chat", Some(key), &once()).await;
        if resp.status() == 200 {
            return resp;
        }
        assert_error(resp, 429, "budget_exceeded").await;
        assert!(
            std::time::Instant::now() < deadline,
            "still over budget after {within:?}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

/// Shortening `budget_duration` through `/key/update` starts a period that ends one new
/// duration from now (SPEC §5.3): an exhausted key whose budget_duration becomes `1s` is
/// admitted again once that second is over and the reset job (every second) has run —
/// polled for at most 4 s.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shorter_budget_duration_ends_the_period_early() {
    let app = TestApp::builder().config(unit_pricing).spawn().await;
    let (key, stored) = app
        .create_key(KeyFields {
            max_budget: Some(10.0),
            budget_duration: duration("30d"),
            metadata: json!({}),
            ..Default::default()
        })
        .await;
    let resp = app.post_json("/api/chat", Some(&key), &once()).await;
    assert_eq!(resp.status(), 200);
    read_to_end(resp).await.expect("body");
    app.app.in_flight.idle().await;
    assert_error(
        app.post_json("/api/chat", Some(&key), &once()).await,
        429,
        "budget_exceeded",
    )
    .await;

    let updated = ok_json(
        app.admin_post(
            "/key/update",
            &json!({"key_id": stored.key_id, "budget_duration": "1s"}),
        )
        .await,
    )
    .await;
    assert!(ts(&updated["budget_reset_at"]) <= Utc::now() + chrono::Duration::seconds(1));
    let resp = admitted_within(&app, &key, std::time::Duration::from_secs(4)).await;
    read_to_end(resp).await.expect("body");
    assert_eq!(app.ollama.request_count(), 2);
    app.shutdown().await;
}
