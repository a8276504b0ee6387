//! `Retention`: deletes usage and audit rows older than `usage.retention_days` /
//! `audit.retention_days` (SPEC §13) — at start-up, then hourly.
//!
//! Deletion goes in batches of at most [`BATCH_ROWS`] rows, one statement each, each
//! committed on its own, until a batch comes back short: no statement holds locks on a
//! large table for long, and `/readyz` (a ping on the pool) never waits behind it. Spend
//! totals are columns of keys and teams and are never touched; only the per-request rows
//! go.
//!
//! With several instances on one PostgreSQL, one run at a time: each run first takes the
//! store's job lock (a PostgreSQL advisory lock held by a transaction on a connection of
//! its own, released when the run ends or its connection dies). An instance that finds
//! it taken skips that run — the holder is deleting the same rows.

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;

use crate::store::{RetainedTable, Store, StoreError};
use crate::tasks::TaskSpawner;

/// The most rows one statement deletes.
pub const BATCH_ROWS: u64 = 10_000;
const RUN_EVERY: Duration = Duration::from_secs(3600);
/// The job lock's name (one lock per job kind).
const LOCK: &str = "retention";

/// What one table's pass deleted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Pass {
    pub deleted: u64,
    /// Delete statements issued (the last one short, possibly empty).
    pub statements: u64,
}

/// What one run did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RetentionRun {
    /// Neither table has a retention period: nothing to do.
    Disabled,
    /// Another instance holds the lock; this run did nothing.
    Skipped,
    Ran {
        usage: Pass,
        audit: Pass,
    },
}

/// The retention job; long-lived, built from the store and the two periods.
pub struct Retention {
    store: Arc<dyn Store>,
    usage_days: Option<u64>,
    audit_days: Option<u64>,
}

impl Retention {
    pub fn new(store: Arc<dyn Store>, usage_days: Option<u64>, audit_days: Option<u64>) -> Self {
        Self {
            store,
            usage_days,
            audit_days,
        }
    }

    /// One run: takes the lock, trims both tables, releases it.
    pub async fn run_once(&self) -> Result<RetentionRun, StoreError> {
        if self.usage_days.is_none() && self.audit_days.is_none() {
            return Ok(RetentionRun::Disabled);
        }
        let Some(lock) = self.store.try_job_lock(LOCK).await? else {
            metrics::counter!(crate::telemetry::RETENTION_RUNS, "outcome" => "skipped")
                .increment(1);
            return Ok(RetentionRun::Skipped);
        };
        let usage = self.trim(RetainedTable::Usage, self.usage_days).await;
        let audit = match &usage {
            Ok(_) => self.trim(RetainedTable::Audit, self.audit_days).await,
            Err(_) => Ok(Pass::default()),
        };
        lock.release().await;
        let (usage, audit) = (usage?, audit?);
        metrics::counter!(crate::telemetry::RETENTION_RUNS, "outcome" => "ran").increment(1);
        if usage.deleted + audit.deleted > 0 {
            tracing::info!(
                usage_rows = usage.deleted,
                audit_rows = audit.deleted,
                "retention: old rows deleted"
            );
        }
        Ok(RetentionRun::Ran { usage, audit })
    }

    async fn trim(&self, table: RetainedTable, days: Option<u64>) -> Result<Pass, StoreError> {
        let mut pass = Pass::default();
        let Some(days) = days else {
            return Ok(pass);
        };
        let before = Utc::now() - chrono::Duration::days(i64::try_from(days).unwrap_or(36_500));
        loop {
            let deleted = self.store.purge(table, before, BATCH_ROWS).await?;
            pass.statements += 1;
            pass.deleted += deleted;
            metrics::counter!(crate::telemetry::RETENTION_DELETED, "table" => table.as_str())
                .increment(deleted);
            if deleted < BATCH_ROWS {
                return Ok(pass);
            }
            // Let requests waiting for the database in between.
            tokio::task::yield_now().await;
        }
    }

    /// Runs at start-up, then hourly, until shutdown (when a retention period is set).
    pub fn start(self: &Arc<Self>, tasks: &TaskSpawner) {
        if self.usage_days.is_none() && self.audit_days.is_none() {
            return;
        }
        let job = self.clone();
        tasks.spawn_loop("retention", async move {
            let mut ticker = tokio::time::interval(RUN_EVERY);
            ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                // The first tick is immediate: the start-up run.
                ticker.tick().await;
                if let Err(e) = job.run_once().await {
                    metrics::counter!(crate::telemetry::RETENTION_RUNS, "outcome" => "failed")
                        .increment(1);
                    tracing::warn!(error = %e, "retention run failed; will retry next hour");
                }
            }
        });
    }
}
