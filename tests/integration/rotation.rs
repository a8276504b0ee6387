//! Key rotation with a grace period (SPEC §4.2): `/key/regenerate` with `grace_period`
//! keeps the previous plaintext working — as the same key, with its limits and spend —
//! until `grace_until`; at most two plaintexts work; without a grace period the old one
//! stops at once; across instances (PostgreSQL + Redis) the change is seen within a
//! second.

use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use serde_json::{Value, json};

use crate::keys_support::{generate, info, ok_json};
use crate::limits::{REQUEST_COST, unit_pricing};
use crate::support::*;

/// `POST /key/regenerate` with `body`; the response (asserts 200).
async fn regenerate(app: &TestApp, body: Value) -> Value {
    ok_json(app.admin_post("/key/regenerate", &body).await).await
}

fn plaintext(body: &Value) -> String {
    body["key"].as_str().expect("a plaintext `key`").to_string()
}

fn time(v: &Value) -> DateTime<Utc> {
    v.as_str()
        .and_then(|t| DateTime::parse_from_rfc3339(t).ok())
        .map(|t| t.with_timezone(&Utc))
        .unwrap_or_else(|| panic!("not a time: {v}"))
}

/// A proxied request with `key`, read to its end (a request cut short would be recorded
/// as cancelled, with part of its cost): its status.
async fn status_with(app: &TestApp, key: &str) -> u16 {
    let resp = app
        .post_json("/api/chat", Some(key), &chat("llama3.1:8b"))
        .await;
    let status = resp.status().as_u16();
    read_to_end(resp).await.expect("the whole response");
    status
}

/// Polls until `key` gets `status` on `app`, for at most `limit` (no signal exists for
/// a clock passing or a message arriving on another instance).
async fn eventually_status(app: &TestApp, key: &str, status: u16, limit: Duration) {
    let deadline = Instant::now() + limit;
    loop {
        let got = app.get("/api/tags", Some(key)).await.status().as_u16();
        if got == status {
            return;
        }
        assert!(Instant::now() < deadline, "still {got}, expected {status}");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

backend_tests! {
    /// During the grace period the old plaintext is the same key: the same `key_id`,
    /// limits and spend — both plaintexts' requests add to the one key's spend.
    async fn the_old_key_works_as_the_same_key_during_grace(app) using (|b| b.config(unit_pricing)) {
        let old = generate(app, json!({"rpm_limit": 100, "key_alias": "svc"})).await;
        assert_eq!(old.body["grace_until"], Value::Null);
        assert_eq!(status_with(app, &old.key).await, 200);

        let before = Utc::now();
        let body = regenerate(app, json!({"key_id": old.key_id, "grace_period": "24h"})).await;
        let new = plaintext(&body);
        assert_ne!(new, old.key);
        assert_eq!(body["key_id"], old.key_id.as_str(), "key_id is stable");
        let until = time(&body["grace_until"]);
        assert!(
            until >= before + chrono::Duration::hours(24) - chrono::Duration::seconds(5)
                && until <= Utc::now() + chrono::Duration::hours(24),
            "grace_until {until} is about 24h from now"
        );
        let shown = info(app, &old.key_id).await;
        assert_eq!(time(&shown["grace_until"]), until, "/key/info shows grace_until");
        assert_eq!(shown["rpm_limit"], 100);

        // Both plaintexts work; /key/info by either names the same key.
        assert_eq!(status_with(app, &old.key).await, 200);
        assert_eq!(status_with(app, &new).await, 200);
        for plain in [&old.key, &new] {
            let by_key = ok_json(app.admin_get(&format!("/key/info?key={plain}")).await).await;
            assert_eq!(by_key["key_id"], old.key_id.as_str());
        }

        // Three requests in all, each recorded on the one key and added to its spend.
        app.app.spend.flush().await;
        let rows = ok_json(app.admin_get(&format!("/spend/logs?key_id={}", old.key_id)).await).await;
        assert_eq!(rows.as_array().map(Vec::len), Some(3), "{rows}");
        let spend = info(app, &old.key_id).await["spend"].as_f64().expect("spend");
        assert!((spend - 3.0 * REQUEST_COST).abs() < 1e-9, "spend {spend}");
        assert_eq!(
            ok_json(app.admin_get("/key/list").await).await["total_count"], 1,
            "still one key"
        );
    }

    /// A second regeneration ends the first grace at once: the oldest plaintext stops,
    /// the one it replaces enters its own grace, the newest works.
    async fn a_second_regeneration_ends_the_first_grace(app) {
        let first = generate(app, json!({})).await;
        let second = plaintext(&regenerate(app, json!({"key_id": first.key_id, "grace_period": "1h"})).await);
        assert_eq!(status_with(app, &first.key).await, 200, "cached as valid");
        let body = regenerate(app, json!({"key": second, "grace_period": "2h"})).await;
        let third = plaintext(&body);
        assert_eq!(status_with(app, &first.key).await, 401, "the first grace ended at once");
        assert_eq!(status_with(app, &second).await, 200, "in its own grace");
        assert_eq!(status_with(app, &third).await, 200);
        // A regeneration without grace stops both older plaintexts.
        let body = regenerate(app, json!({"key_id": first.key_id})).await;
        assert_eq!(body["grace_until"], Value::Null);
        let fourth = plaintext(&body);
        for (old, name) in [(&first.key, "first"), (&second, "second"), (&third, "third")] {
            assert_eq!(status_with(app, old).await, 401, "{name} plaintext");
        }
        assert_eq!(status_with(app, &fourth).await, 200);
        assert_eq!(info(app, &first.key_id).await["grace_until"], Value::Null);
    }

    /// Without `grace_period` the old plaintext stops at once, even though it was cached.
    async fn without_grace_the_old_key_stops_at_once(app) {
        let old = generate(app, json!({})).await;
        assert_eq!(status_with(app, &old.key).await, 200);
        let body = regenerate(app, json!({"key_id": old.key_id})).await;
        assert_eq!(body["grace_until"], Value::Null);
        assert_eq!(status_with(app, &old.key).await, 401);
        assert_eq!(status_with(app, &plaintext(&body)).await, 200);
        assert_error(app.admin_get(&format!("/key/info?key={}", old.key)).await, 404, "not_found").await;
    }

    /// An invalid `grace_period` is a 400 naming the field, and nothing changes.
    async fn an_invalid_grace_period_is_refused(app) {
        let key = generate(app, json!({})).await;
        for bad in [json!("0s"), json!("soon"), json!("-5m"), json!(""), json!(true), json!(0), json!("1.5h")] {
            let resp = app
                .admin_post("/key/regenerate", &json!({"key_id": key.key_id, "grace_period": bad}))
                .await;
            let err = assert_error(resp, 400, "invalid_request").await;
            assert!(err.message.contains("grace_period"), "{bad}: {}", err.message);
        }
        assert_eq!(status_with(app, &key.key).await, 200, "the key is unchanged");
        assert_eq!(info(app, &key.key_id).await["grace_until"], Value::Null);
    }

    /// A grace period that ends stops the old plaintext at `grace_until` — from the cache
    /// too, which is still fresh then (the clock is checked on every resolution) — and
    /// `/key/info` shows no grace afterwards.
    async fn an_expired_grace_stops_the_old_key_even_from_the_cache(app) {
        let old = generate(app, json!({})).await;
        let body = regenerate(app, json!({"key_id": old.key_id, "grace_period": "1s"})).await;
        let until = time(&body["grace_until"]);
        // Resolved (and cached, fresh for the default 60 s) during the grace: a request
        // answered before `grace_until` was admitted by the old plaintext.
        let status = app.get("/api/tags", Some(&old.key)).await.status().as_u16();
        if Utc::now() < until {
            assert_eq!(status, 200, "the old plaintext works during its grace");
        }
        eventually_status(app, &old.key, 401, Duration::from_secs(10)).await;
        assert!(Utc::now() >= until, "refused only once the grace ended");
        assert_eq!(status_with(app, &plaintext(&body)).await, 200);
        assert_eq!(info(app, &old.key_id).await["grace_until"], Value::Null);
        assert_error(app.admin_get(&format!("/key/info?key={}", old.key)).await, 404, "not_found").await;
    }

    /// The stored row holds hashes only: the previous plaintext's hash, never a plaintext.
    async fn only_hashes_are_stored(app) {
        use sea_orm::{EntityTrait};
        let old = generate(app, json!({})).await;
        let new = plaintext(&regenerate(app, json!({"key_id": old.key_id, "grace_period": "1h"})).await);
        let db = app.db.connect().await;
        let row = entity::virtual_key::Entity::find_by_id(old.key_id.clone())
            .one(&db)
            .await
            .expect("read")
            .expect("the key");
        use tollgate::auth::secrets::hash_secret;
        assert_eq!(row.key_hash, hash_secret(&new));
        assert_eq!(row.previous_key_hash.as_deref(), Some(hash_secret(&old.key).as_str()));
        let dump = format!("{row:?}");
        assert!(!dump.contains(&old.key) && !dump.contains(&new), "{dump}");
    }
}

/// Two instances sharing PostgreSQL and Redis: a key cached on B keeps working there
/// through a graceful rotation made on A (and the new plaintext works on B at once); a
/// later rotation without grace stops both old plaintexts on B within a second.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotation_reaches_every_instance() {
    let Some(a) = TestApp::builder().postgres().redis().try_spawn().await else {
        return;
    };
    let b = TestApp::builder().shared_db_with(&a).spawn().await;
    let old = generate(&a, json!({})).await;
    assert_eq!(
        b.get("/api/tags", Some(&old.key)).await.status(),
        200,
        "cached on B"
    );

    let body = regenerate(&a, json!({"key_id": old.key_id, "grace_period": "1h"})).await;
    let second = plaintext(&body);
    assert_eq!(b.get("/api/tags", Some(&second)).await.status(), 200);
    // B learns the deadline: its cached entry for the old plaintext is dropped and
    // reloaded, and the old plaintext keeps working meanwhile.
    assert_eq!(b.get("/api/tags", Some(&old.key)).await.status(), 200);
    let seen_on_b = ok_json(b.admin_get(&format!("/key/info?key={}", old.key)).await).await;
    assert_eq!(seen_on_b["info"]["grace_until"], body["grace_until"]);

    let third = plaintext(&regenerate(&a, json!({"key_id": old.key_id})).await);
    eventually_status(&b, &old.key, 401, Duration::from_millis(1500)).await;
    eventually_status(&b, &second, 401, Duration::from_millis(1500)).await;
    assert_eq!(b.get("/api/tags", Some(&third)).await.status(), 200);
    b.shutdown().await;
    a.shutdown().await;
}
