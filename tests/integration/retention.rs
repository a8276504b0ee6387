//! Data retention (SPEC §13): usage and audit rows older than their retention period are
//! deleted in batches of at most 10,000 rows per statement, recent rows are kept, spend
//! totals are untouched, and with several instances on one PostgreSQL only one run goes
//! at a time.

use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{Duration as Span, Utc};
use serde_json::json;
use tollgate::store::{
    Audit, AuditAction, AuditEntry, KeyFields, RequestStatus, Store, TeamFields, UsageRow,
};
use tollgate::usage::Retention;
use tollgate::usage::retention::{BATCH_ROWS, Pass, RetentionRun};

use crate::support::*;

fn usage(key_id: &str, team_id: &str, age: Span, spend: f64) -> UsageRow {
    UsageRow {
        request_id: uuid::Uuid::new_v4().to_string(),
        key_id: Some(key_id.to_string()),
        team_id: Some(team_id.to_string()),
        user_id: None,
        model: Some("llama3.1:8b".into()),
        route: "/api/chat".into(),
        prompt_tokens: 1,
        completion_tokens: 1,
        spend,
        status: RequestStatus::Success,
        http_status: 200,
        started_at: Utc::now() - age,
        duration_ms: 1,
        server: None,
    }
}

/// An audit row for a team, `age` old.
fn audit_row(team_id: &str, age: Span) -> AuditEntry {
    let mut entry = AuditEntry::of::<serde_json::Value>(
        &Audit::new("test", AuditAction::TeamUpdate),
        team_id,
        Some(team_id),
        None,
        None,
    );
    entry.at = Utc::now() - age;
    entry
}

async fn seed(store: &Arc<dyn Store>, old_usage: usize, new_usage: usize) -> (String, String) {
    let team = "t";
    let (key_id, _) = (uuid::Uuid::new_v4().to_string(), ());
    store
        .insert_team(
            team,
            &TeamFields {
                metadata: json!({}),
                ..TeamFields::default()
            },
            &audit(),
        )
        .await
        .expect("team");
    store
        .insert_key(
            &key_id,
            &"a".repeat(64),
            "sk-…aaaa",
            &KeyFields {
                team_id: Some(team.into()),
                metadata: json!({}),
                ..KeyFields::default()
            },
            None,
            &audit(),
        )
        .await
        .expect("key");
    let mut rows: Vec<UsageRow> = (0..old_usage)
        .map(|_| usage(&key_id, team, Span::days(40), 0.5))
        .collect();
    rows.extend((0..new_usage).map(|_| usage(&key_id, team, Span::days(2), 0.25)));
    for chunk in rows.chunks(1000) {
        store.record_usage(chunk).await.expect("usage rows");
    }
    (key_id, team.to_string())
}

backend_tests! {
    /// Rows past their period go, recent ones stay, and the key's and team's spend
    /// totals are what they were.
    async fn old_rows_go_recent_rows_and_spend_totals_stay(app) {
        let store = app.app.store.clone();
        let (key_id, team) = seed(&store, 30, 7).await;
        for age in [Span::days(100), Span::days(91)] {
            store.record_audit(&audit_row(&team, age)).await.expect("old audit row");
        }
        store.record_audit(&audit_row(&team, Span::days(1))).await.expect("new audit row");
        let audit_before = app.db.count("audit_logs").await;
        let key_spend = store.key_by_id(&key_id).await.unwrap().unwrap().spend;
        let team_spend = store.team(&team).await.unwrap().unwrap().spend;
        assert!((key_spend - (30.0 * 0.5 + 7.0 * 0.25)).abs() < 1e-9);

        let job = Retention::new(store.clone(), Some(30), Some(90));
        let run = job.run_once().await.expect("a run");
        assert_eq!(
            run,
            RetentionRun::Ran {
                usage: Pass { deleted: 30, statements: 1 },
                audit: Pass { deleted: 2, statements: 1 },
            }
        );
        assert_eq!(app.db.count("usage_logs").await, 7, "recent usage rows stay");
        assert_eq!(app.db.count("audit_logs").await, audit_before - 2, "recent audit rows stay");
        assert_eq!(store.key_by_id(&key_id).await.unwrap().unwrap().spend, key_spend, "key spend untouched");
        assert_eq!(store.team(&team).await.unwrap().unwrap().spend, team_spend, "team spend untouched");
        // Nothing left to do: one (empty) statement per table.
        assert_eq!(
            job.run_once().await.expect("a second run"),
            RetentionRun::Ran { usage: Pass { deleted: 0, statements: 1 }, audit: Pass { deleted: 0, statements: 1 } }
        );
        // A table without a period is not touched; none at all is no run.
        let usage_only = Retention::new(store.clone(), Some(1), None);
        assert!(matches!(usage_only.run_once().await.unwrap(), RetentionRun::Ran { audit: Pass { statements: 0, .. }, .. }));
        assert_eq!(app.db.count("audit_logs").await, audit_before - 2);
        assert_eq!(Retention::new(store, None, None).run_once().await.unwrap(), RetentionRun::Disabled);
    }

    /// 25,000 old rows go in three statements of at most 10,000 rows each.
    async fn deletion_goes_in_bounded_batches(app) {
        let store = app.app.store.clone();
        seed(&store, 25_000, 3).await;
        let run = Retention::new(store, Some(30), None).run_once().await.expect("a run");
        let RetentionRun::Ran { usage, .. } = run else { panic!("{run:?}") };
        assert_eq!(usage, Pass { deleted: 25_000, statements: 3 });
        assert_eq!(BATCH_ROWS, 10_000);
        assert_eq!(app.db.count("usage_logs").await, 3);
    }
}

/// Two instances sharing PostgreSQL: while one holds the retention lock, the other's run
/// is skipped and deletes nothing; once it is released, the other runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_one_instance_runs_retention_at_a_time() {
    let Some(a) = TestApp::builder().postgres().try_spawn().await else {
        return;
    };
    let b = TestApp::builder().shared_db_with(&a).spawn().await;
    seed(&a.app.store, 5, 1).await;
    let held = a
        .app
        .store
        .try_job_lock("retention")
        .await
        .expect("lock")
        .expect("free");
    assert!(
        b.app
            .store
            .try_job_lock("retention")
            .await
            .expect("lock")
            .is_none(),
        "the lock is exclusive"
    );
    let job_b = Retention::new(b.app.store.clone(), Some(30), Some(30));
    assert_eq!(
        job_b.run_once().await.expect("a run"),
        RetentionRun::Skipped
    );
    assert_eq!(
        a.db.count("usage_logs").await,
        6,
        "a skipped run deletes nothing"
    );
    let job_a = Retention::new(a.app.store.clone(), Some(30), Some(30));
    assert_eq!(
        job_a.run_once().await.expect("a run"),
        RetentionRun::Skipped,
        "even on the holder's instance"
    );
    held.release().await;
    let run = job_b.run_once().await.expect("a run");
    assert!(
        matches!(
            run,
            RetentionRun::Ran {
                usage: Pass { deleted: 5, .. },
                ..
            }
        ),
        "{run:?}"
    );
    // Released after the run: A can take it again.
    a.app
        .store
        .try_job_lock("retention")
        .await
        .expect("lock")
        .expect("free again")
        .release()
        .await;
    b.shutdown().await;
    a.shutdown().await;
}

/// A serving instance with a retention period runs the job at start-up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_job_runs_at_start_up() {
    let a = TestApp::spawn().await;
    seed(&a.app.store, 4, 2).await;
    let b = TestApp::builder()
        .shared_db_with(&a)
        .config(|c| c.usage.retention_days = Some(30))
        .spawn()
        .await;
    // The start-up run has no signal of its own to wait on: poll, bounded.
    let deadline = Instant::now() + Duration::from_secs(20);
    while a.db.count("usage_logs").await != 2 {
        assert!(
            Instant::now() < deadline,
            "the start-up run did not delete the old rows"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let metrics = b.get("/metrics", None).await.text().await.unwrap();
    assert!(
        metrics.contains("tollgate_retention_deleted_rows_total"),
        "{metrics}"
    );
    b.shutdown().await;
    a.shutdown().await;
}
