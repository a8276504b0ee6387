//! Limits shared by several instances (SPEC §5.2 checks 5–7, §5.3, §7): two gateways A
//! and B on one PostgreSQL database, one Redis (same key prefix) and one mock Ollama,
//! what two instances behind a load balancer share. Requests are split across both.
//!
//! Redis settles finished requests in batches sent by a background task a few
//! milliseconds after their responses end, so a test that needs every finished request
//! counted first waits for the subject's parallel leases to be gone ([`wait_settled`]),
//! with a bounded deadline.

use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use futures_util::future::join_all;
use serde_json::{Value, json};
use tollgate::app::App;
use tollgate::config::{Config, FailureMode, Secret};
use tollgate::limits::{Demand, Permit, Subject};
use tollgate::store::redis::RedisConn;
use tollgate::store::{KeyFields, TeamFields};

use crate::keys_support::{info, ok_json};
use crate::limits::{
    REQUEST_COST, admitted_within, assert_new_period, duration, move_budget_reset, once,
    unit_pricing,
};
use crate::support::*;

/// How long a test waits for something asynchronous but prompt (a background settle, a
/// published invalidation) before failing: a bound against hanging, not a measurement.
const EVENTUALLY: Duration = Duration::from_secs(3);

/// A (PostgreSQL + Redis) and B sharing its database, Redis prefix and mock Ollama, both
/// configured by `config`; `None` when the services are not configured.
async fn two_instances<F>(config: F) -> Option<(TestApp, TestApp)>
where
    F: Fn(&mut Config) + Clone + Send + 'static,
{
    let first = config.clone();
    let a = TestApp::builder()
        .postgres()
        .redis()
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

fn no_change(_: &mut Config) {}

/// `instance(i)`: even requests go to A, odd ones to B.
fn pick<'a>(a: &'a TestApp, b: &'a TestApp, i: usize) -> &'a TestApp {
    if i.is_multiple_of(2) { a } else { b }
}

/// Sends `n` concurrent `/api/chat` requests with `key(i)`, alternating A and B.
async fn burst<'a>(
    a: &'a TestApp,
    b: &'a TestApp,
    n: usize,
    key: impl Fn(usize) -> &'a str,
    body: &Value,
) -> Vec<reqwest::Response> {
    join_all((0..n).map(|i| pick(a, b, i).post_json("/api/chat", Some(key(i)), body))).await
}

/// Splits responses into the admitted (200) and checks every other one is a 429 with
/// `code` (plus `Retry-After` for `rate_limited`, `x-should-retry: false` for budgets).
async fn admitted_only(responses: Vec<reqwest::Response>, code: &str) -> Vec<reqwest::Response> {
    let mut admitted = Vec::new();
    for resp in responses {
        if resp.status() == 200 {
            admitted.push(resp);
            continue;
        }
        match code {
            "rate_limited" => {
                let retry: u64 = resp.headers()["retry-after"]
                    .to_str()
                    .expect("Retry-After is ASCII")
                    .parse()
                    .expect("Retry-After is whole seconds");
                assert!((1..=60).contains(&retry), "Retry-After {retry}");
            }
            "budget_exceeded" => assert_eq!(resp.headers()["x-should-retry"], "false"),
            _ => {}
        }
        assert_error(resp, 429, code).await;
    }
    admitted
}

/// Waits until no request of `subject` (`key:{id}` / `team:{id}`) holds a parallel lease
/// in Redis any more, i.e. every finished request was settled there.
async fn wait_settled(app: &TestApp, subject: &str) {
    use fred::interfaces::SortedSetsInterface;
    let redis = app.app.redis.as_ref().expect("Redis configured");
    let leases = redis.key(&format!("lim:{subject}:par"));
    let deadline = Instant::now() + EVENTUALLY;
    loop {
        let held: i64 = redis.client.zcard(&leases).await.expect("ZCARD");
        if held == 0 {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{subject}: {held} requests still unsettled"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Sends `body` with `key` to `app` until it is admitted, for at most [`EVENTUALLY`];
/// every refusal before that must be a 429 `code` (refusals consume nothing).
async fn admitted_eventually(
    app: &TestApp,
    key: &str,
    body: &Value,
    code: &str,
) -> reqwest::Response {
    let deadline = Instant::now() + EVENTUALLY;
    loop {
        let resp = app.post_json("/api/chat", Some(key), body).await;
        if resp.status() == 200 {
            return resp;
        }
        assert_error(resp, 429, code).await;
        assert!(
            Instant::now() < deadline,
            "still refused ({code}) after {EVENTUALLY:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn limited_key(app: &TestApp, fields: KeyFields) -> (String, String) {
    let (plain, stored) = app
        .create_key(KeyFields {
            metadata: json!({}),
            ..fields
        })
        .await;
    (plain, stored.key_id)
}

async fn shutdown(a: TestApp, b: TestApp) {
    b.shutdown().await;
    a.shutdown().await;
}

// ------------------------------------------------------------------ RPM

/// `rpm_limit: 10` and 40 concurrent requests split across A and B: exactly 10 are
/// admitted, the rest are 429 `rate_limited` with `Retry-After` and never reach Ollama.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rpm_admits_exactly_n_across_instances() {
    let Some((a, b)) = two_instances(no_change).await else {
        return;
    };
    let (key, _) = limited_key(
        &a,
        KeyFields {
            rpm_limit: Some(10),
            ..Default::default()
        },
    )
    .await;
    let responses = burst(&a, &b, 40, |_| &key, &once()).await;
    let admitted = admitted_only(responses, "rate_limited").await;
    assert_eq!(admitted.len(), 10);
    assert_eq!(a.ollama.request_count(), 10, "refusals reached nothing");
    shutdown(a, b).await;
}

/// A team's `rpm_limit: 10` across A and B, with two keys of the team that have no
/// limits of their own: exactly 10 of 40 are admitted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn team_rpm_admits_exactly_n_across_instances() {
    let Some((a, b)) = two_instances(no_change).await else {
        return;
    };
    a.create_team(
        "team-shared",
        TeamFields {
            rpm_limit: Some(10),
            metadata: json!({}),
            ..Default::default()
        },
    )
    .await;
    let mut keys = Vec::new();
    for _ in 0..2 {
        keys.push(
            limited_key(
                &a,
                KeyFields {
                    team_id: Some("team-shared".into()),
                    ..Default::default()
                },
            )
            .await
            .0,
        );
    }
    // Each key is used on both instances.
    let responses = burst(&a, &b, 40, |i| &keys[(i / 2) % 2], &once()).await;
    let admitted = admitted_only(responses, "rate_limited").await;
    assert_eq!(admitted.len(), 10);
    assert_eq!(a.ollama.request_count(), 10);
    shutdown(a, b).await;
}

// ------------------------------------------------------------------ parallel

/// `max_parallel_requests: 3` holds under slow streams split across A and B; a stream
/// the client abandons frees its slot, and so do streams that end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parallel_limit_holds_across_instances_and_frees_slots() {
    let Some((a, b)) = two_instances(no_change).await else {
        return;
    };
    let (key, _) = limited_key(
        &a,
        KeyFields {
            max_parallel_requests: Some(3),
            ..Default::default()
        },
    )
    .await;
    let streaming = chat("llama3.1:8b");
    let gate = a.ollama.hold_streams();
    let responses = burst(&a, &b, 8, |_| &key, &streaming).await;
    let mut admitted = admitted_only(responses, "too_many_parallel_requests").await;
    assert_eq!(admitted.len(), 3);
    a.ollama.wait_for_in_flight(3).await;
    assert_eq!(a.ollama.request_count(), 3);

    // A client walks away: its slot comes back (settled in the background) and is taken
    // by a request on the other instance — and then the limit is exact again.
    drop(admitted.remove(0));
    a.ollama.wait_for_cancelled(1).await;
    admitted.push(admitted_eventually(&b, &key, &streaming, "too_many_parallel_requests").await);
    for app in [&a, &b] {
        let resp = app.post_json("/api/chat", Some(&key), &streaming).await;
        assert_error(resp, 429, "too_many_parallel_requests").await;
    }

    // Streams that end free their slots: all three are available again.
    gate.release();
    for resp in admitted {
        read_to_end(resp).await.expect("the stream completes");
    }
    a.app.in_flight.idle().await;
    b.app.in_flight.idle().await;
    let gate = a.ollama.hold_streams();
    let mut held = Vec::new();
    for i in 0..3 {
        held.push(
            admitted_eventually(
                pick(&a, &b, i),
                &key,
                &streaming,
                "too_many_parallel_requests",
            )
            .await,
        );
    }
    let resp = a.post_json("/api/chat", Some(&key), &streaming).await;
    assert_error(resp, 429, "too_many_parallel_requests").await;
    gate.release();
    for resp in held {
        read_to_end(resp).await.expect("the stream completes");
    }
    shutdown(a, b).await;
}

/// A crashed instance cannot hold a parallel slot past `server.request_timeout_s`: a
/// permit taken on A and never settled (as if A died) blocks B until its lease lapses.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crashed_instances_slot_lapses_with_its_lease() {
    let Some((a, b)) = two_instances(|c| c.server.request_timeout_s = 1).await else {
        return;
    };
    let (key, key_id) = limited_key(
        &a,
        KeyFields {
            max_parallel_requests: Some(1),
            ..Default::default()
        },
    )
    .await;
    let subject = Subject {
        id: format!("key:{key_id}").into(),
        parallel: Some(1),
        ..Default::default()
    };
    let permit = a
        .app
        .limiter
        .admit(&[subject], Demand::default())
        .await
        .expect("the slot is free");
    assert!(
        matches!(permit, Permit::Redis(_)),
        "a shared (Redis) permit"
    );
    // A crashes: the permit is never settled nor released.
    std::mem::forget(permit);
    let resp = b.post_json("/api/chat", Some(&key), &once()).await;
    assert_error(resp, 429, "too_many_parallel_requests").await;
    assert_eq!(a.ollama.request_count(), 0);
    // The lease is 1 s: B is admitted once it has lapsed.
    let resp = admitted_eventually(&b, &key, &once(), "too_many_parallel_requests").await;
    read_to_end(resp).await.expect("body");
    assert_eq!(a.ollama.request_count(), 1);
    shutdown(a, b).await;
}

// ------------------------------------------------------------------ tokens and budgets

/// TPM counts the tokens of requests finished on either instance and refuses the first
/// request after the limit is crossed, on both.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tpm_refuses_the_first_request_after_the_limit_across_instances() {
    let Some((a, b)) = two_instances(no_change).await else {
        return;
    };
    // 16 tokens per request: two reach 32.
    let (key, key_id) = limited_key(
        &a,
        KeyFields {
            tpm_limit: Some(32),
            ..Default::default()
        },
    )
    .await;
    for app in [&a, &b] {
        let resp = app.post_json("/api/chat", Some(&key), &once()).await;
        assert_eq!(resp.status(), 200);
        read_to_end(resp).await.expect("body");
    }
    wait_settled(&a, &format!("key:{key_id}")).await;
    for app in [&b, &a] {
        let resp = app.post_json("/api/chat", Some(&key), &once()).await;
        assert!(resp.headers().contains_key("retry-after"));
        assert_error(resp, 429, "rate_limited").await;
    }
    assert_eq!(a.ollama.request_count(), 2);
    shutdown(a, b).await;
}

/// A key's and a team's budget count the cost of requests finished on either instance
/// and refuse (429 `budget_exceeded`, `x-should-retry: false`) the first request after
/// the budget is crossed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn budget_refuses_once_crossed_across_instances() {
    let Some((a, b)) = two_instances(unit_pricing).await else {
        return;
    };
    let (key, key_id) = limited_key(
        &a,
        KeyFields {
            max_budget: Some(40.0),
            ..Default::default()
        },
    )
    .await;
    // 16 units a request: spent 0, 16, 32 are under 40; 48 is not.
    for i in 0..3 {
        let resp = pick(&a, &b, i)
            .post_json("/api/chat", Some(&key), &once())
            .await;
        assert_eq!(resp.status(), 200, "request {i}");
        read_to_end(resp).await.expect("body");
    }
    wait_settled(&a, &format!("key:{key_id}")).await;
    for app in [&b, &a] {
        let resp = app.post_json("/api/chat", Some(&key), &once()).await;
        assert_eq!(resp.headers()["x-should-retry"], "false");
        assert_error(resp, 429, "budget_exceeded").await;
    }
    assert_eq!(a.ollama.request_count(), 3);

    // A team's budget, spent by two keys on two instances.
    a.create_team(
        "team-budget",
        TeamFields {
            max_budget: Some(20.0),
            metadata: json!({}),
            ..Default::default()
        },
    )
    .await;
    let mut keys = Vec::new();
    for _ in 0..2 {
        keys.push(
            limited_key(
                &a,
                KeyFields {
                    team_id: Some("team-budget".into()),
                    ..Default::default()
                },
            )
            .await
            .0,
        );
    }
    for (app, key) in [(&a, &keys[0]), (&b, &keys[1])] {
        let resp = app.post_json("/api/chat", Some(key), &once()).await;
        assert_eq!(resp.status(), 200);
        read_to_end(resp).await.expect("body");
    }
    wait_settled(&a, "team:team-budget").await;
    for (app, key) in [(&b, &keys[0]), (&a, &keys[1])] {
        let resp = app.post_json("/api/chat", Some(key), &once()).await;
        assert_eq!(resp.headers()["x-should-retry"], "false");
        assert_error(resp, 429, "budget_exceeded").await;
    }
    assert_eq!(a.ollama.request_count(), 5);
    shutdown(a, b).await;
}

/// 50 concurrent bounded requests (`options.num_predict`) split across A and B against
/// a budget that fits 10 of their reservations: exactly 10 are admitted, even though
/// none has finished (streams are held, so no reservation is settled early).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bounded_requests_cannot_overshoot_the_budget_across_instances() {
    let Some((a, b)) = two_instances(|c| {
        c.pricing.default = tollgate::config::Price {
            input: 1_000.0,
            output: 1_000.0,
        };
    })
    .await
    else {
        return;
    };
    let body = json!({"model": "llama3.1:8b", "messages": [], "options": {"num_predict": 100}});
    // Reserved per request: (prompt estimate = body bytes / 4 rounded up, + the bound of
    // 100) tokens at 1000 units per 1M tokens. The budget fits ten and a half.
    let estimate = serde_json::to_vec(&body).unwrap().len().div_ceil(4) as f64;
    let reserve = (estimate + 100.0) * 1_000.0 / 1e6;
    let (key, _) = limited_key(
        &a,
        KeyFields {
            max_budget: Some(reserve * 10.5),
            ..Default::default()
        },
    )
    .await;
    let gate = a.ollama.hold_streams();
    let responses = burst(&a, &b, 50, |_| &key, &body).await;
    let admitted = admitted_only(responses, "budget_exceeded").await;
    assert_eq!(admitted.len(), 10, "exactly the 10 that fit");
    assert_eq!(a.ollama.request_count(), 10);
    gate.release();
    for resp in admitted {
        read_to_end(resp).await.expect("the stream completes");
    }
    shutdown(a, b).await;
}

/// A budget period rolls over with two instances: the exhausted key's period ends (its
/// `budget_reset_at` moved into the past), the reset job starts the next one (spend 0,
/// a new `budget_reset_at` in `/key/info`), and both instances admit the key again —
/// B within the spec's second for invalidations.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn budget_period_rolls_over_across_instances() {
    let Some((a, b)) = two_instances(unit_pricing).await else {
        return;
    };
    let (key, key_id) = limited_key(
        &a,
        KeyFields {
            max_budget: Some(40.0),
            budget_duration: duration("30d"),
            ..Default::default()
        },
    )
    .await;
    for i in 0..3 {
        let resp = pick(&a, &b, i)
            .post_json("/api/chat", Some(&key), &once())
            .await;
        assert_eq!(resp.status(), 200);
        read_to_end(resp).await.expect("body");
    }
    wait_settled(&a, &format!("key:{key_id}")).await;
    for app in [&a, &b] {
        assert_error(
            app.post_json("/api/chat", Some(&key), &once()).await,
            429,
            "budget_exceeded",
        )
        .await;
    }
    a.app.spend.flush().await;
    b.app.spend.flush().await;
    assert_eq!(info(&a, &key_id).await["spend"], 3.0 * REQUEST_COST);

    let moved_to = Utc::now() - chrono::Duration::minutes(1);
    move_budget_reset(&a, &key_id, moved_to).await;
    // Either this call or an instance's background job (every second) resets the row.
    let count = a.app.budgets.reset_due().await;
    assert!(count <= 1, "one row was due, {count} reset");
    assert_new_period(&a, &key_id, moved_to).await;
    assert_new_period(&b, &key_id, moved_to).await;
    for app in [&a, &b] {
        let resp = admitted_eventually(app, &key, &once(), "budget_exceeded").await;
        read_to_end(resp).await.expect("body");
    }
    assert_eq!(a.ollama.request_count(), 5);
    shutdown(a, b).await;
}

/// Shortening `budget_duration` through `/key/update` on A starts a period that ends a
/// second later: once it is over, both instances admit the exhausted key again (polled
/// for at most 4 s: the period, the reset job's second and the invalidation's second).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shorter_budget_duration_ends_the_period_early_across_instances() {
    let Some((a, b)) = two_instances(unit_pricing).await else {
        return;
    };
    let (key, key_id) = limited_key(
        &a,
        KeyFields {
            max_budget: Some(10.0),
            budget_duration: duration("30d"),
            ..Default::default()
        },
    )
    .await;
    let resp = a.post_json("/api/chat", Some(&key), &once()).await;
    assert_eq!(resp.status(), 200);
    read_to_end(resp).await.expect("body");
    wait_settled(&a, &format!("key:{key_id}")).await;
    for app in [&a, &b] {
        assert_error(
            app.post_json("/api/chat", Some(&key), &once()).await,
            429,
            "budget_exceeded",
        )
        .await;
    }
    ok_json(
        a.admin_post(
            "/key/update",
            &json!({"key_id": key_id, "budget_duration": "1s"}),
        )
        .await,
    )
    .await;
    for app in [&b, &a] {
        let resp = admitted_within(app, &key, Duration::from_secs(4)).await;
        read_to_end(resp).await.expect("body");
    }
    shutdown(a, b).await;
}

/// An instance that is not serving (so it runs no background reset job of its own).
async fn unserved_instance(db: &TestDb) -> Arc<App> {
    let mut config = Config::default();
    config.database.url = Secret(db.url().to_string());
    App::build(config).await.expect("the app builds")
}

/// The reset job running on two instances at once resets each due key and team exactly
/// once (the conditional update decides), and every one of them is reset.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_budget_resets_reset_each_row_once() {
    use sea_orm::sea_query::Expr;
    use sea_orm::{ColumnTrait, EntityTrait, QueryFilter};
    let Some(db) = TestDb::create(Backend::Postgres).await else {
        return;
    };
    let a = unserved_instance(&db).await;
    let b = unserved_instance(&db).await;
    const KEYS: usize = 20;
    const TEAMS: usize = 5;
    for t in 0..TEAMS {
        a.store
            .insert_team(
                &format!("team-{t}"),
                &TeamFields {
                    max_budget: Some(10.0),
                    budget_duration: duration("30d"),
                    metadata: json!({}),
                    ..Default::default()
                },
                &crate::support::audit(),
            )
            .await
            .expect("insert a team");
    }
    for k in 0..KEYS {
        let plain = tollgate::auth::secrets::mint_key();
        a.store
            .insert_key(
                &format!("key-{k}"),
                &tollgate::auth::secrets::hash_secret(&plain),
                &tollgate::auth::secrets::display_name(&plain),
                &KeyFields {
                    team_id: Some(format!("team-{}", k % TEAMS)),
                    max_budget: Some(10.0),
                    budget_duration: duration("30d"),
                    metadata: json!({}),
                    ..Default::default()
                },
                None,
                &crate::support::audit(),
            )
            .await
            .expect("insert a key");
    }
    let conn = db.connect().await;
    for round in 0..3 {
        // Every period ends (with some spend in it).
        let past = Utc::now() - chrono::Duration::minutes(1);
        entity::virtual_key::Entity::update_many()
            .col_expr(
                entity::virtual_key::Column::BudgetResetAt,
                Expr::value(past),
            )
            .col_expr(entity::virtual_key::Column::Spend, Expr::value(5.0))
            .filter(entity::virtual_key::Column::Id.like("key-%"))
            .exec(&conn)
            .await
            .expect("end the keys' periods");
        entity::team::Entity::update_many()
            .col_expr(entity::team::Column::BudgetResetAt, Expr::value(past))
            .col_expr(entity::team::Column::Spend, Expr::value(5.0))
            .filter(entity::team::Column::Id.like("team-%"))
            .exec(&conn)
            .await
            .expect("end the teams' periods");
        let (on_a, on_b) = tokio::join!(a.budgets.reset_due(), b.budgets.reset_due());
        assert_eq!(
            on_a + on_b,
            KEYS + TEAMS,
            "round {round}: every due row reset exactly once (A {on_a}, B {on_b})"
        );
        let now = Utc::now();
        for k in 0..KEYS {
            let key = a
                .store
                .key_by_id(&format!("key-{k}"))
                .await
                .unwrap()
                .unwrap();
            assert_eq!(key.spend, 0.0, "round {round}: key-{k}");
            assert!(key.budget_reset_at.unwrap() > now, "round {round}: key-{k}");
        }
        for t in 0..TEAMS {
            let team = a.store.team(&format!("team-{t}")).await.unwrap().unwrap();
            assert_eq!(team.spend, 0.0, "round {round}: team-{t}");
            assert!(
                team.budget_reset_at.unwrap() > now,
                "round {round}: team-{t}"
            );
        }
        // Nothing is due any more.
        assert_eq!(b.budgets.reset_due().await, 0);
    }
    drop(conn.close().await);
    a.close().await;
    b.close().await;
}

// ------------------------------------------------------------------ spend

/// 200 concurrent requests on one key of a team, split across A and B: once both
/// instances have flushed, the key's and the team's spend equal the sum of their usage
/// rows, and there is exactly one row per request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spend_equals_the_sum_of_usage_rows_across_instances() {
    let Some((a, b)) = two_instances(|c| {
        c.pricing.default = tollgate::config::Price {
            input: 370.0,
            output: 1_130.0,
        };
    })
    .await
    else {
        return;
    };
    a.create_team(
        "team-spend",
        TeamFields {
            rpm_limit: Some(100_000),
            metadata: json!({}),
            ..Default::default()
        },
    )
    .await;
    let (key, key_id) = limited_key(
        &a,
        KeyFields {
            team_id: Some("team-spend".into()),
            rpm_limit: Some(100_000),
            ..Default::default()
        },
    )
    .await;
    const N: usize = 200;
    let responses = burst(&a, &b, N, |_| &key, &once()).await;
    for resp in responses {
        assert_eq!(resp.status(), 200);
        read_to_end(resp).await.expect("body");
    }
    a.app.spend.flush().await;
    b.app.spend.flush().await;

    let per_request = (11.0 * 370.0 + 5.0 * 1_130.0) / 1e6;
    let close = |got: f64, want: f64, what: &str| {
        assert!(
            (got - want).abs() <= 1e-9 * want.abs().max(1e-12),
            "{what}: {got} vs {want}"
        );
    };
    let rows_of = |body: Value| -> Vec<Value> { body.as_array().expect("an array").clone() };
    let key_rows = rows_of(
        ok_json(
            a.admin_get(&format!("/spend/logs?key_id={key_id}&limit=1000"))
                .await,
        )
        .await,
    );
    let team_rows = rows_of(
        ok_json(
            b.admin_get("/spend/logs?team_id=team-spend&limit=1000")
                .await,
        )
        .await,
    );
    assert_eq!(key_rows.len(), N, "one usage row per request");
    assert_eq!(team_rows.len(), N);
    let mut ids: Vec<&str> = key_rows
        .iter()
        .map(|r| r["request_id"].as_str().expect("request_id"))
        .collect();
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), N, "distinct requests");
    for row in &key_rows {
        assert_eq!(row["status"], "success", "{row}");
        assert_eq!(row["team_id"], "team-spend", "{row}");
        close(
            row["spend"].as_f64().expect("spend"),
            per_request,
            "a row's spend",
        );
    }
    let sum = |rows: &[Value]| {
        rows.iter()
            .map(|r| r["spend"].as_f64().expect("spend"))
            .sum::<f64>()
    };
    for app in [&a, &b] {
        let key_spend = info(app, &key_id).await["spend"]
            .as_f64()
            .expect("key spend");
        close(key_spend, sum(&key_rows), "the key's spend");
        let team = ok_json(app.admin_get("/team/info?team_id=team-spend").await).await;
        let team_spend = team["team_info"]["spend"].as_f64().expect("team spend");
        close(team_spend, sum(&team_rows), "the team's spend");
    }
    close(sum(&key_rows), per_request * N as f64, "the rows' total");
    shutdown(a, b).await;
}

// ------------------------------------------------------------------ settlement batches

/// A string value in Redis, parsed; 0 when the key does not exist.
async fn redis_number(redis: &RedisConn, name: &str) -> f64 {
    use fred::interfaces::KeysInterface;
    let value: Option<String> = redis.client.get(redis.key(name)).await.expect("GET");
    value.map_or(0.0, |v| v.parse().expect("a number"))
}

async fn redis_zcard(redis: &RedisConn, name: &str) -> i64 {
    use fred::interfaces::SortedSetsInterface;
    redis.client.zcard(redis.key(name)).await.expect("ZCARD")
}

/// 300 concurrent requests across A and B, from a key of a limited team (two subjects
/// per settlement) and a key of its own (one), so batches mix settlements of both
/// shapes: Redis ends with every request's tokens and cost counted exactly once, no
/// reservation and no parallel lease left, and `/key/info` agrees with the usage.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_requests_settle_exactly_in_batches() {
    let Some((a, b)) = two_instances(unit_pricing).await else {
        return;
    };
    a.create_team(
        "team-batch",
        TeamFields {
            tpm_limit: Some(1_000_000_000),
            max_budget: Some(1e12),
            max_parallel_requests: Some(10_000),
            metadata: json!({}),
            ..Default::default()
        },
    )
    .await;
    let limits = KeyFields {
        rpm_limit: Some(100_000),
        tpm_limit: Some(1_000_000_000),
        max_budget: Some(1e12),
        max_parallel_requests: Some(10_000),
        ..Default::default()
    };
    let (teamed, teamed_id) = limited_key(
        &a,
        KeyFields {
            team_id: Some("team-batch".into()),
            ..limits.clone()
        },
    )
    .await;
    let (alone, alone_id) = limited_key(&a, limits).await;
    const N: usize = 300;
    // Bounded requests reserve tokens and cost, which settling must give back.
    let bounded = json!({"model": "llama3.1:8b", "stream": false, "messages": [],
        "options": {"num_predict": 50}});
    let responses = burst(
        &a,
        &b,
        N,
        |i| if i % 3 == 0 { &alone } else { &teamed },
        &bounded,
    )
    .await;
    for resp in responses {
        assert_eq!(resp.status(), 200);
        read_to_end(resp).await.expect("body");
    }
    let counts = [
        (format!("key:{alone_id}"), N / 3),
        (format!("key:{teamed_id}"), N - N / 3),
        ("team:team-batch".to_string(), N - N / 3),
    ];
    for (subject, _) in &counts {
        wait_settled(&a, subject).await;
    }
    let redis = a.app.redis.as_ref().expect("Redis configured");
    for (subject, n) in &counts {
        let n = *n as f64;
        let tokens = 16.0 * n;
        assert_eq!(
            redis_zcard(redis, &format!("lim:{subject}:tok")).await as f64,
            n,
            "{subject}: one token entry per request"
        );
        assert_eq!(
            redis_number(redis, &format!("lim:{subject}:toksum")).await,
            tokens,
            "{subject}: the TPM sum"
        );
        assert_eq!(
            redis_number(redis, &format!("lim:{subject}:spend:open")).await,
            n * REQUEST_COST,
            "{subject}: the spend"
        );
        assert_eq!(
            redis_number(redis, &format!("lim:{subject}:resv")).await,
            0.0,
            "{subject}: no tokens left reserved"
        );
        assert_eq!(
            redis_number(redis, &format!("lim:{subject}:rcost")).await,
            0.0,
            "{subject}: no cost left reserved"
        );
    }
    a.app.spend.flush().await;
    b.app.spend.flush().await;
    for (key_id, n) in [(&alone_id, N / 3), (&teamed_id, N - N / 3)] {
        assert_eq!(
            info(&b, key_id).await["spend"].as_f64().expect("spend"),
            n as f64 * REQUEST_COST,
            "/key/info matches the usage"
        );
    }
    shutdown(a, b).await;
}

fn batch_subject(key_id: &str) -> Subject {
    Subject {
        id: format!("key:{key_id}").into(),
        rpm: Some(100_000),
        tpm: Some(1_000_000_000),
        parallel: Some(100_000),
        max_budget: Some(1e12),
        ..Default::default()
    }
}

/// Settlements still queued when the instance shuts down reach Redis before `close`
/// returns: 1,000 permits (more than the settler sends in one batch) settled or
/// cancelled just before shutdown, then Redis read through a connection of the test's
/// own. The settler is a background task like the others: none is left running.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn settlements_queued_at_shutdown_reach_redis() {
    let Some(app) = TestApp::builder().redis().try_spawn().await else {
        return;
    };
    let prefix = app.redis_prefix.clone().expect("a prefix");
    let subject = batch_subject("queued");
    let demand = Demand {
        reserve_tokens: 40,
        reserve_cost: 0.5,
    };
    const N: usize = 1_000;
    let permits = join_all((0..N).map(|_| {
        app.app
            .limiter
            .admit(std::slice::from_ref(&subject), demand)
    }))
    .await;
    for (i, permit) in permits.into_iter().enumerate() {
        let permit = permit.expect("admitted");
        assert!(matches!(permit, Permit::Redis(_)));
        if i % 4 == 0 {
            app.app.limiter.cancel(permit);
        } else {
            app.app.limiter.settle(permit, 7, 0.25);
        }
    }
    let state = app.app.clone();
    app.shutdown().await;
    assert_eq!(state.background_tasks(), 0, "the settler has ended");

    let url = redis_url().expect("Redis configured");
    let redis = RedisConn::connect(&url, &prefix).await.expect("Redis");
    let settled = (N - N / 4) as f64;
    assert_eq!(
        redis_zcard(&redis, "lim:key:queued:par").await,
        0,
        "every lease released"
    );
    assert_eq!(
        redis_zcard(&redis, "lim:key:queued:req").await as f64,
        settled,
        "cancelled admissions left the RPM log"
    );
    assert_eq!(
        redis_zcard(&redis, "lim:key:queued:tok").await as f64,
        settled
    );
    assert_eq!(
        redis_number(&redis, "lim:key:queued:toksum").await,
        7.0 * settled
    );
    assert_eq!(
        redis_number(&redis, "lim:key:queued:spend:open").await,
        0.25 * settled
    );
    assert_eq!(redis_number(&redis, "lim:key:queued:resv").await, 0.0);
    assert_eq!(redis_number(&redis, "lim:key:queued:rcost").await, 0.0);
    redis.quit().await;
}

/// A cancelled permit — and one dropped unsettled — gives its RPM admission back in
/// Redis; a settled one keeps it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_permit_gives_its_rpm_admission_back_in_redis() {
    let Some(app) = TestApp::builder().redis().try_spawn().await else {
        return;
    };
    let limiter = &app.app.limiter;
    let subject = [Subject {
        rpm: Some(1),
        ..batch_subject("cancel")
    }];
    let admit_eventually = || async {
        let deadline = Instant::now() + EVENTUALLY;
        loop {
            match limiter.admit(&subject, Demand::default()).await {
                Ok(permit) => return permit,
                Err(e) => assert!(
                    Instant::now() < deadline,
                    "still refused after {EVENTUALLY:?}: {e}"
                ),
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    };
    let permit = admit_eventually().await;
    assert!(
        limiter.admit(&subject, Demand::default()).await.is_err(),
        "rpm 1 is used"
    );
    limiter.cancel(permit);
    let permit = admit_eventually().await;
    drop(permit);
    let permit = admit_eventually().await;
    limiter.settle(permit, 3, 0.0);
    wait_settled(&app, "key:cancel").await;
    let redis = app.app.redis.as_ref().expect("Redis configured");
    assert_eq!(
        redis_zcard(redis, "lim:key:cancel:req").await,
        1,
        "the settled admission stays"
    );
    assert_eq!(redis_number(redis, "lim:key:cancel:toksum").await, 3.0);
    assert!(limiter.admit(&subject, Demand::default()).await.is_err());
    app.shutdown().await;
}

// ------------------------------------------------------------------ Redis failure

/// One instance whose Redis is reached through a [`TcpProxy`] the test can cut.
async fn behind_cuttable_redis(mode: FailureMode) -> Option<(TestApp, TcpProxy)> {
    let Some(redis) = redis_addr().await else {
        skip(&format!("{REDIS_VAR} not set"));
        return None;
    };
    let proxy = TcpProxy::start(redis).await;
    let url = proxy.url("redis");
    let app = TestApp::builder()
        .postgres()
        .redis()
        .config(move |c| {
            c.redis.url = Some(Secret(url));
            c.redis.failure_mode = mode;
            // No shared server slots: their fallback counter is process-wide, and
            // `slots_shared` counts it exactly while these tests may run beside it.
            c.upstream.routing = tollgate::config::RoutingPolicy::RoundRobin;
        })
        .try_spawn()
        .await?;
    Some((app, proxy))
}

async fn assert_redis_not_ready(app: &TestApp) {
    let resp = app.get("/readyz", None).await;
    assert_eq!(resp.status(), 503);
    let body = resp.text().await.expect("body");
    assert!(body.contains("redis"), "/readyz names redis: {body}");
    assert!(!body.contains("database"), "only redis failed: {body}");
}

/// `redis.failure_mode: closed`: with Redis gone, a limited key's request is 503
/// `limits_unavailable` and reaches nothing; `/readyz` names redis.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_down_closed_mode_refuses_with_limits_unavailable() {
    let Some((app, proxy)) = behind_cuttable_redis(FailureMode::Closed).await else {
        return;
    };
    let (key, _) = limited_key(
        &app,
        KeyFields {
            rpm_limit: Some(100),
            ..Default::default()
        },
    )
    .await;
    let resp = app.post_json("/api/chat", Some(&key), &once()).await;
    assert_eq!(resp.status(), 200, "served while Redis answers");
    read_to_end(resp).await.expect("body");

    proxy.stop().await;
    for _ in 0..2 {
        let resp = app.post_json("/api/chat", Some(&key), &once()).await;
        assert_error(resp, 503, "limits_unavailable").await;
    }
    assert_eq!(
        app.ollama.request_count(),
        1,
        "nothing reached the upstream"
    );
    assert_redis_not_ready(&app).await;
    drop(app);
}

/// `redis.failure_mode: closed` refuses every proxied request while Redis is gone, not
/// only those with limits to check: a key without limits and the master key get 503
/// `limits_unavailable` too, and nothing more reaches the upstream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_down_closed_mode_refuses_unlimited_callers_too() {
    let Some((app, proxy)) = behind_cuttable_redis(FailureMode::Closed).await else {
        return;
    };
    let (key, _) = limited_key(&app, KeyFields::default()).await;
    for caller in [key.as_str(), MASTER_KEY] {
        let resp = app.post_json("/api/chat", Some(caller), &once()).await;
        assert_eq!(resp.status(), 200, "served while Redis answers");
        read_to_end(resp).await.expect("body");
    }

    proxy.stop().await;
    // The outage as operators see it; by then the client has seen its connection close.
    assert_redis_not_ready(&app).await;
    for caller in [key.as_str(), MASTER_KEY] {
        let resp = app.post_json("/api/chat", Some(caller), &once()).await;
        assert_error(resp, 503, "limits_unavailable").await;
    }
    assert_eq!(
        app.ollama.request_count(),
        2,
        "nothing reached the upstream"
    );
    drop(app);
}

/// `redis.failure_mode: open`: with Redis gone, requests are served under this
/// instance's own limits (`rpm_limit: 2` → exactly two of three), the fallback is
/// counted in `/metrics`, and `/readyz` names redis.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_down_open_mode_serves_under_local_limits() {
    let Some((app, proxy)) = behind_cuttable_redis(FailureMode::Open).await else {
        return;
    };
    let (key, _) = limited_key(
        &app,
        KeyFields {
            rpm_limit: Some(2),
            ..Default::default()
        },
    )
    .await;
    let fallbacks_before = fallbacks(&app).await;
    proxy.stop().await;
    let body = once();
    let responses = join_all((0..3).map(|_| app.post_json("/api/chat", Some(&key), &body))).await;
    let admitted = admitted_only(responses, "rate_limited").await;
    assert_eq!(admitted.len(), 2, "the local limiter applies rpm_limit");
    for resp in admitted {
        read_to_end(resp).await.expect("body");
    }
    assert_eq!(app.ollama.request_count(), 2);
    assert!(
        fallbacks(&app).await >= fallbacks_before + 3.0,
        "every admission fell back and was counted"
    );
    assert_redis_not_ready(&app).await;
    drop(app);
}

/// `tollgate_limiter_fallbacks_total` in `/metrics` (0 when not yet reported).
async fn fallbacks(app: &TestApp) -> f64 {
    app.metric("tollgate_limiter_fallbacks_total").await
}
