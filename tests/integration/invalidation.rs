//! Cross-instance cache invalidation (SPEC §5.1): a key or team changed through one
//! instance is seen by another sharing PostgreSQL and Redis within a second.

use std::time::{Duration, Instant};

use serde_json::json;
use tollgate::store::{KeyFields, TeamFields};

use super::support::*;

/// Polls `probe` on instance B until it answers `status`, for at most 1.5 s (the spec's
/// 1 s plus scheduling slack); the publish has no signal B could expose to the test.
async fn eventually_status(app: &TestApp, key: &str, status: u16) {
    let deadline = Instant::now() + Duration::from_millis(1500);
    loop {
        let got = app.get("/api/tags", Some(key)).await.status().as_u16();
        if got == status {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "instance B still answers {got}, expected {status}"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

async fn two_instances() -> Option<(TestApp, TestApp)> {
    let a = TestApp::builder().postgres().redis().try_spawn().await?;
    let b = TestApp::builder().shared_db_with(&a).spawn().await;
    Some((a, b))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_blocked_on_one_instance_is_refused_by_the_other() {
    let Some((a, b)) = two_instances().await else {
        return;
    };
    let (key, info) = a.create_key(KeyFields::default()).await;
    // B caches the key as usable.
    assert_eq!(b.get("/api/tags", Some(&key)).await.status(), 200);

    let resp = a
        .admin_post("/key/block", &json!({"key_id": info.key_id}))
        .await;
    assert_eq!(resp.status(), 200);
    eventually_status(&b, &key, 403).await;

    let resp = a
        .admin_post("/key/unblock", &json!({"key_id": info.key_id}))
        .await;
    assert_eq!(resp.status(), 200);
    eventually_status(&b, &key, 200).await;

    let resp = a
        .admin_post("/key/delete", &json!({"key_ids": [info.key_id]}))
        .await;
    assert_eq!(resp.status(), 200);
    eventually_status(&b, &key, 401).await;
    b.shutdown().await;
    a.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_team_blocked_on_one_instance_blocks_its_keys_on_the_other() {
    let Some((a, b)) = two_instances().await else {
        return;
    };
    a.create_team(
        "team-x",
        TeamFields {
            metadata: json!({}),
            ..Default::default()
        },
    )
    .await;
    let (key, _) = a
        .create_key(KeyFields {
            team_id: Some("team-x".into()),
            metadata: json!({}),
            ..Default::default()
        })
        .await;
    assert_eq!(b.get("/api/tags", Some(&key)).await.status(), 200);
    let resp = a
        .admin_post(
            "/team/update",
            &json!({"team_id": "team-x", "blocked": true}),
        )
        .await;
    assert_eq!(resp.status(), 200);
    eventually_status(&b, &key, 403).await;
    b.shutdown().await;
    a.shutdown().await;
}
