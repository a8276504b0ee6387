//! Storage (SPEC §1, issue 2): the schema, its constraints and the `Store` trait, each
//! test on SQLite and on PostgreSQL (see `backend_tests!`).

use chrono::{Duration as ChronoDuration, Utc};
use serde_json::json;
use tollgate::config::parse_duration;
use tollgate::store::{
    KeyFields, KeyFilter, Mapping, Page, StoreError, TeamFields, UsageFilter, UsageRow,
};

use super::support::*;

const TABLES: [&str; 5] = [
    "audit_logs",
    "jwt_key_mappings",
    "teams",
    "usage_logs",
    "virtual_keys",
];

fn mapping(id: &str, key_id: &str, issuer: &str, claim: &str, value: &str) -> Mapping {
    let now = Utc::now();
    Mapping {
        id: id.to_string(),
        jwt_claim_name: claim.to_string(),
        jwt_claim_value: value.to_string(),
        jwt_issuer: issuer.to_string(),
        key_id: key_id.to_string(),
        description: Some("test".into()),
        is_active: true,
        created_at: now,
        updated_at: now,
        created_by: Some("tests".into()),
        updated_by: None,
    }
}

fn usage(key_id: &str, team_id: Option<&str>, spend: f64) -> UsageRow {
    UsageRow {
        request_id: uuid::Uuid::new_v4().to_string(),
        key_id: Some(key_id.to_string()),
        team_id: team_id.map(str::to_string),
        user_id: Some("alice".into()),
        model: Some("llama3.1:8b".into()),
        route: "/api/chat".into(),
        prompt_tokens: 11,
        completion_tokens: 5,
        spend,
        status: tollgate::store::RequestStatus::Success,
        http_status: 200,
        started_at: Utc::now(),
        duration_ms: 3,
        server: None,
    }
}

fn page(page: u64, size: u64) -> Page {
    Page { page, size }
}

/// Floats round-trip through the database; compare with a tolerance far below any
/// meaningful spend.
fn close(a: f64, b: f64) -> bool {
    (a - b).abs() < 1e-9
}

backend_tests! {
    /// The migrations create the five tables (and sea-orm's bookkeeping); running them
    /// again is a no-op.
    async fn migrations_create_the_tables(app) {
        let tables = app.db.tables().await;
        for t in TABLES {
            assert!(tables.iter().any(|x| x == t), "missing table {t}: {tables:?}");
        }
        assert_eq!(app.db.count("seaql_migrations").await, crate::support::migrations());
        let db = app.db.connect().await;
        tollgate::store::migrate(&db).await.expect("second migration run");
        tollgate::store::migrate(&db).await.expect("third migration run");
        assert_eq!(app.db.count("seaql_migrations").await, crate::support::migrations());
        assert_eq!(tollgate::store::is_postgres(&db), app.backend == Backend::Postgres);
        drop(db.close().await);
    }

    /// The latest migration (grace columns, the audit table) rolls back and applies
    /// again cleanly.
    async fn the_governance_migration_rolls_back(app) {
        use migration::MigratorTrait;
        let db = app.db.connect().await;
        migration::Migrator::down(&db, Some(1)).await.expect("roll back one migration");
        assert!(!app.db.tables().await.iter().any(|t| t == "audit_logs"));
        assert_eq!(app.db.count("seaql_migrations").await, crate::support::migrations() - 1);
        tollgate::store::migrate(&db).await.expect("apply it again");
        assert!(app.db.tables().await.iter().any(|t| t == "audit_logs"));
        let (plain, key) = app.create_key(KeyFields::default()).await;
        assert_eq!(
            app.app.store.key_by_hash(&tollgate::auth::secrets::hash_secret(&plain)).await.expect("read").map(|k| k.key_id),
            Some(key.key_id)
        );
        drop(db.close().await);
    }

    /// Keys: insert, read by id and by hash, update, rehash, list with filters and pages.
    async fn keys_round_trip(app) {
        let team = app.create_team("team-a", TeamFields::default()).await;
        assert_eq!(team.team_id, "team-a");
        let fields = KeyFields {
            key_alias: Some("ci".into()),
            team_id: Some("team-a".into()),
            user_id: Some("alice".into()),
            org_id: Some("org-1".into()),
            models: vec!["llama3.1:8b".into(), "qwen*".into()],
            allowed_routes: vec!["/api/chat".into()],
            unreadable: Default::default(),
            max_budget: Some(12.5),
            budget_duration: parse_duration("30d"),
            tpm_limit: Some(1000),
            rpm_limit: Some(60),
            max_parallel_requests: Some(2),
            expires: Some(Utc::now() + ChronoDuration::days(7)),
            blocked: false,
            metadata: json!({"owner": "ci", "n": 1}),
        };
        let (plain, key) = app.create_key(fields.clone()).await;
        assert!(plain.starts_with("sk-"));
        assert_eq!(key.key_alias.as_deref(), Some("ci"));
        assert_eq!(key.models, fields.models);
        assert_eq!(key.allowed_routes, fields.allowed_routes);
        assert_eq!(key.max_budget, Some(12.5));
        assert_eq!(key.budget_duration, fields.budget_duration);
        assert!(key.budget_reset_at.is_some(), "a budget period starts at creation");
        assert_eq!((key.tpm_limit, key.rpm_limit, key.max_parallel_requests), (Some(1000), Some(60), Some(2)));
        assert_eq!(key.metadata, json!({"owner": "ci", "n": 1}));
        assert!(close(key.spend, 0.0));
        assert!(!key.blocked);

        let store = &app.app.store;
        let by_id = store.key_by_id(&key.key_id).await.expect("by id").expect("exists");
        assert_eq!(by_id.key_hash, key.key_hash);
        assert_eq!(by_id.models, key.models);
        assert_eq!(by_id.metadata, key.metadata);
        assert_eq!(by_id.team_id.as_deref(), Some("team-a"));
        let expires = by_id.expires.expect("expires");
        assert!((expires - fields.expires.expect("set")).num_milliseconds().abs() < 1000);
        let by_hash = store.key_by_hash(&key.key_hash).await.expect("by hash").expect("exists");
        assert_eq!(by_hash.key_id, key.key_id);
        assert!(store.key_by_hash("0".repeat(64).as_str()).await.expect("lookup").is_none());
        assert!(store.key_by_id("no-such-key").await.expect("lookup").is_none());

        // Update replaces every editable field.
        let updated = KeyFields {
            key_alias: None,
            models: vec![],
            rpm_limit: None,
            blocked: true,
            metadata: json!({}),
            ..fields.clone()
        };
        let after = store.update_key(&key.key_id, &updated, &crate::support::audit()).await.expect("update").expect("exists");
        assert!(after.blocked);
        assert_eq!(after.key_alias, None);
        assert!(after.models.is_empty());
        assert_eq!(after.rpm_limit, None);
        assert_eq!(after.tpm_limit, Some(1000));
        assert!(after.updated_at >= key.updated_at);
        let reread = store.key_by_id(&key.key_id).await.expect("by id").expect("exists");
        assert!(reread.blocked);
        assert_eq!(reread.key_alias, None);
        assert!(store.update_key("no-such-key", &updated, &crate::support::audit()).await.expect("update").is_none());

        // Rehash swaps the secret, keeps the id.
        let new_hash = "f".repeat(64);
        let (_, rehashed) = store.rehash_key(&key.key_id, &new_hash, "sk-…beef", None, &crate::support::audit()).await.expect("rehash").expect("exists");
        assert_eq!(rehashed.key_id, key.key_id);
        assert!(store.key_by_hash(&key.key_hash).await.expect("lookup").is_none());
        assert_eq!(store.key_by_hash(&new_hash).await.expect("lookup").map(|k| k.key_id), Some(key.key_id.clone()));

        // Listing: filters, totals and pages.
        for _ in 0..4 {
            app.create_key(KeyFields { user_id: Some("bob".into()), ..KeyFields::default() }).await;
        }
        let (all, total) = store.list_keys(&KeyFilter::default(), page(1, 100)).await.expect("list");
        assert_eq!((all.len(), total), (5, 5));
        let bob = KeyFilter { user_id: Some("bob".into()), ..KeyFilter::default() };
        let (first, total) = store.list_keys(&bob, page(1, 3)).await.expect("page 1");
        let (second, _) = store.list_keys(&bob, page(2, 3)).await.expect("page 2");
        assert_eq!((first.len(), second.len(), total), (3, 1, 4));
        assert!(first.iter().chain(&second).all(|k| k.user_id.as_deref() == Some("bob")));
        let mut ids: Vec<_> = first.iter().chain(&second).map(|k| k.key_id.clone()).collect();
        ids.sort();
        ids.dedup();
        assert_eq!(ids.len(), 4, "pages do not overlap");
        let team_filter = KeyFilter { team_id: Some("team-a".into()), ..KeyFilter::default() };
        let (in_team, total) = store.list_keys(&team_filter, page(1, 10)).await.expect("list");
        assert_eq!((in_team.len(), total), (1, 1));
        assert_eq!(in_team[0].key_id, key.key_id);
    }

    /// Teams: insert, read, update, list, count keys, delete (with its keys); duplicates
    /// and keys of a missing team are refused.
    async fn teams_round_trip(app) {
        let store = &app.app.store;
        let fields = TeamFields {
            team_alias: Some("Platform".into()),
            models: vec!["llama3.1:8b".into()],
            unreadable: Default::default(),
            max_budget: Some(100.0),
            budget_duration: parse_duration("1h"),
            tpm_limit: Some(5000),
            rpm_limit: Some(100),
            max_parallel_requests: Some(8),
            blocked: false,
            metadata: json!({"cost_center": 42}),
        };
        let team = app.create_team("platform", fields.clone()).await;
        assert_eq!(team.team_alias.as_deref(), Some("Platform"));
        assert!(team.budget_reset_at.is_some());
        let read = store.team("platform").await.expect("read").expect("exists");
        assert_eq!(read.models, fields.models);
        assert_eq!(read.metadata, json!({"cost_center": 42}));
        assert_eq!((read.tpm_limit, read.rpm_limit, read.max_parallel_requests), (Some(5000), Some(100), Some(8)));
        assert!(store.team("nobody").await.expect("read").is_none());

        assert!(matches!(store.insert_team("platform", &TeamFields::default(), &crate::support::audit()).await, Err(StoreError::Conflict)));

        let changed = TeamFields { blocked: true, team_alias: None, ..fields.clone() };
        let after = store.update_team("platform", &changed, &crate::support::audit()).await.expect("update").expect("exists");
        assert!(after.blocked);
        assert_eq!(after.team_alias, None);
        assert!(store.update_team("nobody", &changed, &crate::support::audit()).await.expect("update").is_none());

        app.create_team("research", TeamFields::default()).await;
        let (teams, total) = store.list_teams(page(1, 10)).await.expect("list");
        assert_eq!(total, 2);
        let mut names: Vec<_> = teams.iter().map(|t| t.team_id.as_str()).collect();
        names.sort_unstable();
        assert_eq!(names, ["platform", "research"]);

        let team_key = KeyFields { team_id: Some("platform".into()), ..KeyFields::default() };
        let (_, k1) = app.create_key(team_key.clone()).await;
        let (_, k2) = app.create_key(team_key.clone()).await;
        let (_, other) = app.create_key(KeyFields { team_id: Some("research".into()), ..KeyFields::default() }).await;
        assert_eq!(store.team_key_count("platform").await.expect("count"), 2);
        store.insert_mapping(&mapping("m-team", &k1.key_id, "", "email", "a@example.com"), &crate::support::audit()).await.expect("mapping");

        // A key for a team that does not exist.
        let orphan = KeyFields { team_id: Some("ghost".into()), ..KeyFields::default() };
        let refused = store.insert_key("orphan", &"e".repeat(64), "sk-…orph", &orphan, None, &crate::support::audit()).await;
        assert!(matches!(refused, Err(StoreError::MissingReference)), "{refused:?}");

        let mut deleted = store.delete_team("platform", &crate::support::audit()).await.expect("delete").expect("existed");
        deleted.sort();
        let mut expected = vec![k1.key_id.clone(), k2.key_id.clone()];
        expected.sort();
        assert_eq!(deleted, expected);
        assert!(store.team("platform").await.expect("read").is_none());
        assert!(store.key_by_id(&k1.key_id).await.expect("read").is_none());
        assert!(store.mapping("m-team").await.expect("read").is_none());
        assert!(store.key_by_id(&other.key_id).await.expect("read").is_some());
        assert!(store.delete_team("platform", &crate::support::audit()).await.expect("delete").is_none());
    }

    /// One mapping per (issuer, claim name, claim value): a duplicate is a conflict; a
    /// different issuer, claim or value is not.
    async fn duplicate_mappings_are_a_conflict(app) {
        let store = &app.app.store;
        let (_, key) = app.create_key(KeyFields::default()).await;
        let (_, other) = app.create_key(KeyFields::default()).await;
        let first = store
            .insert_mapping(&mapping("m1", &key.key_id, "https://idp.example", "email", "a@example.com"), &crate::support::audit())
            .await
            .expect("first mapping");
        assert_eq!(first.jwt_claim_value, "a@example.com");
        let dup = store
            .insert_mapping(&mapping("m2", &other.key_id, "https://idp.example", "email", "a@example.com"), &crate::support::audit())
            .await;
        assert!(matches!(dup, Err(StoreError::Conflict)), "{dup:?}");
        for (id, issuer, claim, value) in [
            ("m3", "https://other.example", "email", "a@example.com"),
            ("m4", "", "email", "a@example.com"),
            ("m5", "https://idp.example", "sub", "a@example.com"),
            ("m6", "https://idp.example", "email", "b@example.com"),
        ] {
            store.insert_mapping(&mapping(id, &key.key_id, issuer, claim, value), &crate::support::audit()).await.expect(id);
        }
        // Same id twice is a conflict too.
        let same_id = store.insert_mapping(&mapping("m1", &key.key_id, "x", "y", "z"), &crate::support::audit()).await;
        assert!(matches!(same_id, Err(StoreError::Conflict)), "{same_id:?}");
        // A mapping to a key that does not exist.
        let dangling = store.insert_mapping(&mapping("m7", "no-such-key", "i", "c", "v"), &crate::support::audit()).await;
        assert!(matches!(dangling, Err(StoreError::MissingReference)), "{dangling:?}");

        // Lookups match the issuer or the any-issuer ("") rows.
        let mut found: Vec<_> = store
            .find_mappings("https://idp.example", "email", "a@example.com")
            .await
            .expect("find")
            .into_iter()
            .map(|m| m.id)
            .collect();
        found.sort();
        assert_eq!(found, ["m1", "m4"]);
        let (all, total) = store.list_mappings(page(1, 100)).await.expect("list");
        assert_eq!((all.len(), total), (5, 5));

        // Update and delete.
        let mut changed = first.clone();
        changed.is_active = false;
        changed.description = None;
        changed.updated_by = Some("admin".into());
        let after = store.update_mapping(&changed, &crate::support::audit()).await.expect("update").expect("exists");
        assert!(!after.is_active);
        assert_eq!(after.created_by.as_deref(), Some("tests"), "creation facts are kept");
        assert_eq!(store.delete_mapping("m1", &crate::support::audit()).await.expect("delete").map(|m| m.id).as_deref(), Some("m1"));
        assert!(store.delete_mapping("m1", &crate::support::audit()).await.expect("delete").is_none());
        // The identity is free again.
        store
            .insert_mapping(&mapping("m8", &other.key_id, "https://idp.example", "email", "a@example.com"), &crate::support::audit())
            .await
            .expect("re-insert after delete");
    }

    /// Deleting a key deletes its mappings, through the store and through the schema's
    /// foreign key alone.
    async fn deleting_a_key_deletes_its_mappings(app) {
        let store = &app.app.store;
        let (_, key) = app.create_key(KeyFields::default()).await;
        let (_, keep) = app.create_key(KeyFields::default()).await;
        store.insert_mapping(&mapping("a", &key.key_id, "", "email", "a@x"), &crate::support::audit()).await.expect("a");
        store.insert_mapping(&mapping("b", &key.key_id, "", "sub", "123"), &crate::support::audit()).await.expect("b");
        store.insert_mapping(&mapping("c", &keep.key_id, "", "email", "c@x"), &crate::support::audit()).await.expect("c");
        let deleted = store.delete_keys(&[key.key_id.clone(), "no-such-key".into()], &crate::support::audit()).await.expect("delete");
        assert_eq!(deleted.iter().map(|k| k.key_id.as_str()).collect::<Vec<_>>(), [key.key_id.as_str()]);
        assert!(store.mapping("a").await.expect("read").is_none());
        assert!(store.mapping("b").await.expect("read").is_none());
        assert!(store.find_mappings("", "email", "a@x").await.expect("find").is_empty());
        assert!(store.mapping("c").await.expect("read").is_some());
        assert!(store.delete_keys(std::slice::from_ref(&key.key_id), &crate::support::audit()).await.expect("delete").is_empty());

        // The foreign key cascades on its own (raw SQL, no store logic).
        let db = app.db.connect().await;
        use sea_orm::ConnectionTrait;
        db.execute_unprepared(&format!("DELETE FROM virtual_keys WHERE id = '{}'", keep.key_id))
            .await
            .expect("raw delete");
        drop(db.close().await);
        assert!(store.mapping("c").await.expect("read").is_none());
        assert_eq!(app.db.count("jwt_key_mappings").await, 0);
    }

    /// Usage rows and spend: concurrent writers never lose an increment; key and team
    /// spend move together with the rows.
    async fn record_usage_adds_spend_atomically(app) {
        let store = app.app.store.clone();
        app.create_team("t", TeamFields::default()).await;
        let (_, key) = app.create_key(KeyFields { team_id: Some("t".into()), ..KeyFields::default() }).await;
        let (_, solo) = app.create_key(KeyFields::default()).await;

        // 20 concurrent writers of one row each (0.25 is exact in binary).
        let writers: Vec<_> = (0..20)
            .map(|_| {
                let store = store.clone();
                let row = usage(&key.key_id, Some("t"), 0.25);
                tokio::spawn(async move { store.record_usage(&[row]).await })
            })
            .collect();
        for w in writers {
            w.await.expect("writer task").expect("record_usage");
        }
        let k = store.key_by_id(&key.key_id).await.expect("read").expect("exists");
        let t = store.team("t").await.expect("read").expect("exists");
        assert!(close(k.spend, 5.0), "key spend {}", k.spend);
        assert!(close(t.spend, 5.0), "team spend {}", t.spend);

        // One batch of many rows, mixing keys.
        let mut batch: Vec<UsageRow> = (0..30).map(|_| usage(&key.key_id, Some("t"), 0.5)).collect();
        batch.extend((0..10).map(|_| usage(&solo.key_id, None, 1.0)));
        batch.push(usage(&solo.key_id, None, 0.0));
        store.record_usage(&batch).await.expect("batch");
        store.record_usage(&[]).await.expect("empty batch");
        let k = store.key_by_id(&key.key_id).await.expect("read").expect("exists");
        let t = store.team("t").await.expect("read").expect("exists");
        let s = store.key_by_id(&solo.key_id).await.expect("read").expect("exists");
        assert!(close(k.spend, 20.0), "key spend {}", k.spend);
        assert!(close(t.spend, 20.0), "team spend {}", t.spend);
        assert!(close(s.spend, 10.0), "solo spend {}", s.spend);
        assert_eq!(app.db.count("usage_logs").await, 61);

        let logs = store
            .spend_logs(&UsageFilter { key_id: Some(key.key_id.clone()), limit: 1000, ..UsageFilter::default() })
            .await
            .expect("logs");
        assert_eq!(logs.len(), 50);
        let row = &logs[0];
        assert_eq!((row.prompt_tokens, row.completion_tokens, row.http_status), (11, 5, 200));
        assert_eq!(row.model.as_deref(), Some("llama3.1:8b"));
        assert_eq!(row.route, "/api/chat");
        let team_logs = store
            .spend_logs(&UsageFilter { team_id: Some("t".into()), limit: 7, ..UsageFilter::default() })
            .await
            .expect("logs");
        assert_eq!(team_logs.len(), 7, "limit applies");
        let future = store
            .spend_logs(&UsageFilter { start: Some(Utc::now() + ChronoDuration::hours(1)), limit: 1000, ..UsageFilter::default() })
            .await
            .expect("logs");
        assert!(future.is_empty());
    }

    /// A second instance on the same database sees the first one's writes.
    async fn instances_share_one_database(app) {
        let second = TestApp::builder().shared_db_with(app).spawn().await;
        assert_eq!(second.backend, app.backend);
        let (_, key) = app.create_key(KeyFields { key_alias: Some("shared".into()), ..KeyFields::default() }).await;
        let seen = second.app.store.key_by_id(&key.key_id).await.expect("read").expect("visible");
        assert_eq!(seen.key_alias.as_deref(), Some("shared"));
        assert_eq!(second.ollama.url(), app.ollama.url());
        second.shutdown().await;
    }
}

/// `database.auto_migrate: false` leaves a fresh database empty.
#[tokio::test]
async fn auto_migrate_off_does_not_migrate() {
    let app = TestApp::builder()
        .config(|c| c.database.auto_migrate = false)
        .spawn()
        .await;
    let tables = app.db.tables().await;
    for t in TABLES {
        assert!(!tables.iter().any(|x| x == t), "{t} exists: {tables:?}");
    }
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_instances_share_a_prefix_and_tests_do_not() {
    let Some(a) = TestApp::builder().redis().try_spawn().await else {
        return;
    };
    let b = TestApp::builder().shared_db_with(&a).spawn().await;
    let c = TestApp::builder().redis().spawn().await;
    assert_eq!(a.redis_prefix, b.redis_prefix);
    assert_ne!(a.redis_prefix, c.redis_prefix);
    let key = |t: &TestApp| t.app.redis.as_ref().expect("redis").key("k");
    assert_eq!(key(&a), key(&b));
    assert_ne!(key(&a), key(&c));
    for t in [c, b, a] {
        t.shutdown().await;
    }
}

/// Writes `sql` straight to the app's database, behind tollgate's back.
async fn corrupt(app: &TestApp, sql: &str) {
    use sea_orm::ConnectionTrait;
    let db = app.db.connect().await;
    db.execute_unprepared(sql)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
    drop(db.close().await);
}

backend_tests! {
    /// Issue 11: a stored value that grants or bounds access and cannot be read refuses —
    /// an unreadable `models` (key or team) is no model, an unreadable `allowed_routes` no
    /// route, a negative limit admits nothing — instead of reading as "no bound". An update
    /// that does not set the field leaves it refusing; setting it repairs the record.
    async fn unreadable_stored_grants_refuse(app) {
        let body = || chat("llama3.1:8b");
        let (models_key, k) = app
            .create_key(KeyFields { models: vec!["llama3.1:8b".into()], metadata: json!({}), ..KeyFields::default() })
            .await;
        corrupt(app, &format!("UPDATE virtual_keys SET models = 'llama3.1:8b' WHERE id = '{}'", k.key_id)).await;
        let (routes_key, k) = app
            .create_key(KeyFields { allowed_routes: vec!["/api/*".into()], ..KeyFields::default() })
            .await;
        corrupt(app, &format!("UPDATE virtual_keys SET allowed_routes = '{{\"a\": 1}}' WHERE id = '{}'", k.key_id)).await;
        app.create_team("broken", TeamFields { models: vec!["llama3.1:8b".into()], metadata: json!({}), ..TeamFields::default() }).await;
        corrupt(app, "UPDATE teams SET models = '[\"llama3.1:8b\"' WHERE id = 'broken'").await;
        let (team_key, _) = app
            .create_key(KeyFields { team_id: Some("broken".into()), ..KeyFields::default() })
            .await;
        let (rpm_key, k) = app.create_key(KeyFields { rpm_limit: Some(100), ..KeyFields::default() }).await;
        corrupt(app, &format!("UPDATE virtual_keys SET rpm_limit = -1 WHERE id = '{}'", k.key_id)).await;

        for key in [&models_key, &team_key] {
            assert_error(app.post_json("/api/chat", Some(key), &body()).await, 403, "model_not_allowed").await;
            assert_error(app.get("/v1/models/llama3.1:8b", Some(key)).await, 403, "model_not_allowed").await;
        }
        assert_error(app.post_json("/api/chat", Some(&routes_key), &body()).await, 403, "route_not_allowed").await;
        assert_error(app.get("/api/tags", Some(&routes_key)).await, 403, "route_not_allowed").await;
        assert_error(app.post_json("/api/chat", Some(&rpm_key), &body()).await, 429, "rate_limited").await;
        assert_eq!(app.ollama.request_count(), 0, "nothing reached Ollama");
        // Lists show nothing.
        let tags: serde_json::Value = app.get("/api/tags", Some(&models_key)).await.json().await.unwrap();
        assert_eq!(tags["models"], json!([]), "{tags}");

        if app.backend == Backend::Postgres {
            // PostgreSQL can store a spend that is not a number; it exhausts the budget.
            let (spend_key, k) = app.create_key(KeyFields { max_budget: Some(10.0), ..KeyFields::default() }).await;
            corrupt(app, &format!("UPDATE virtual_keys SET spend = 'NaN' WHERE id = '{}'", k.key_id)).await;
            assert_error(app.post_json("/api/chat", Some(&spend_key), &body()).await, 429, "budget_exceeded").await;
        }

        // An update that does not set `models` keeps the key refusing…
        let updated = app.admin_post("/key/update", &json!({"key": models_key, "key_alias": "renamed"})).await;
        assert_eq!(updated.status(), 200);
        app.admin_post("/key/block", &json!({"key": models_key})).await;
        app.admin_post("/key/unblock", &json!({"key": models_key})).await;
        assert_error(app.post_json("/api/chat", Some(&models_key), &body()).await, 403, "model_not_allowed").await;
        let team = app.admin_post("/team/update", &json!({"team_id": "broken", "team_alias": "b"})).await;
        assert_eq!(team.status(), 200, "{}", team.text().await.unwrap());
        assert_error(app.post_json("/api/chat", Some(&team_key), &body()).await, 403, "model_not_allowed").await;
        // …and setting it repairs it.
        let fixed = app.admin_post("/key/update", &json!({"key": models_key, "models": ["llama3.1:8b"]})).await;
        assert_eq!(fixed.status(), 200);
        assert_eq!(app.post_json("/api/chat", Some(&models_key), &body()).await.status(), 200);
        let fixed = app.admin_post("/team/update", &json!({"team_id": "broken", "models": []})).await;
        assert_eq!(fixed.status(), 200);
        assert_eq!(app.post_json("/api/chat", Some(&team_key), &body()).await.status(), 200);
    }
}
