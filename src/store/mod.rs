//! Storage: the [`Store`] trait every other module talks to, and its sea-orm
//! implementation ([`SqlStore`]) that runs unchanged on SQLite and PostgreSQL.
//!
//! The trait is the unit-test seam (mockall); integration tests use the real databases.

pub mod redis;
pub mod shared_cache;
mod sql;
pub mod types;

use async_trait::async_trait;

pub use sql::{JobLock, SqlStore, connect, is_postgres, migrate};
pub use types::*;

/// Why a storage call failed, as far as callers need to tell.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A unique constraint said no (duplicate team id, duplicate mapping identity).
    #[error("conflict")]
    Conflict,
    /// A referenced row does not exist (e.g. a key's team).
    #[error("reference to a missing row")]
    MissingReference,
    /// The database cannot be reached.
    #[error("database unavailable: {0}")]
    Unavailable(#[source] sea_orm::DbErr),
    #[error("database error: {0}")]
    Other(#[source] sea_orm::DbErr),
}

impl From<sea_orm::DbErr> for StoreError {
    fn from(err: sea_orm::DbErr) -> Self {
        use sea_orm::{DbErr, SqlErr};
        match err.sql_err() {
            Some(SqlErr::UniqueConstraintViolation(_)) => return Self::Conflict,
            Some(SqlErr::ForeignKeyConstraintViolation(_)) => return Self::MissingReference,
            _ => {}
        }
        match err {
            DbErr::Conn(_) | DbErr::ConnectionAcquire(_) => Self::Unavailable(err),
            other => Self::Other(other),
        }
    }
}

/// How callers read a storage failure (the envelope decides what that means over HTTP).
impl crate::error::Classify for StoreError {
    fn class(&self) -> crate::error::ErrorClass {
        use crate::error::ErrorClass;
        match self {
            StoreError::Conflict => ErrorClass::Conflict,
            StoreError::MissingReference => ErrorClass::MissingReference,
            StoreError::Unavailable(_) => ErrorClass::Unavailable,
            StoreError::Other(_) => ErrorClass::Internal,
        }
    }
}

pub type StoreResult<T> = Result<T, StoreError>;

#[cfg_attr(test, mockall::automock)]
#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// Cheap liveness check for `/readyz`.
    async fn ping(&self) -> StoreResult<()>;

    /// Every change below writes its audit row (`audit`) in the change's own transaction:
    /// no change without its row, no row without its change.
    async fn insert_key(
        &self,
        key_id: &str,
        key_hash: &str,
        key_name: &str,
        fields: &KeyFields,
        created_by: Option<String>,
        audit: &Audit,
    ) -> StoreResult<VirtualKey>;
    /// The key whose current secret hashes to `key_hash`, or whose previous one does while
    /// its grace period runs.
    async fn key_by_hash(&self, key_hash: &str) -> StoreResult<Option<VirtualKey>>;
    async fn key_by_id(&self, key_id: &str) -> StoreResult<Option<VirtualKey>>;
    /// Replaces every editable field. `None` when the key does not exist.
    async fn update_key(
        &self,
        key_id: &str,
        fields: &KeyFields,
        audit: &Audit,
    ) -> StoreResult<Option<VirtualKey>>;
    /// Swaps the key's secret (regenerate); the id stays. With `grace_until` the secret
    /// replaced keeps working until then; any older one stops at once. Returns the key
    /// before and after.
    async fn rehash_key(
        &self,
        key_id: &str,
        key_hash: &str,
        key_name: &str,
        grace_until: Option<chrono::DateTime<chrono::Utc>>,
        audit: &Audit,
    ) -> StoreResult<Option<(VirtualKey, VirtualKey)>>;
    /// Deletes keys (and, by cascade, their mappings); returns the ones that existed.
    async fn delete_keys(&self, key_ids: &[String], audit: &Audit) -> StoreResult<Vec<VirtualKey>>;
    /// Auto-registration: the key and its mapping in one transaction, with both audit
    /// rows (`key.generate`, `mapping.new`). [`StoreError::Conflict`] when the mapping's
    /// identity already exists — then nothing was written.
    async fn register_key(
        &self,
        key: &NewKey,
        mapping: &Mapping,
        audit: &Audit,
    ) -> StoreResult<VirtualKey>;
    async fn list_keys(
        &self,
        filter: &KeyFilter,
        page: Page,
    ) -> StoreResult<(Vec<VirtualKey>, u64)>;

    async fn insert_team(
        &self,
        team_id: &str,
        fields: &TeamFields,
        audit: &Audit,
    ) -> StoreResult<Team>;
    async fn team(&self, team_id: &str) -> StoreResult<Option<Team>>;
    async fn update_team(
        &self,
        team_id: &str,
        fields: &TeamFields,
        audit: &Audit,
    ) -> StoreResult<Option<Team>>;
    /// Deletes the team and (by cascade) its keys; returns the deleted key ids, or `None`
    /// when the team did not exist.
    async fn delete_team(&self, team_id: &str, audit: &Audit) -> StoreResult<Option<Vec<String>>>;
    async fn team_key_count(&self, team_id: &str) -> StoreResult<u64>;
    async fn list_teams(&self, page: Page) -> StoreResult<(Vec<Team>, u64)>;

    async fn insert_mapping(&self, mapping: &Mapping, audit: &Audit) -> StoreResult<Mapping>;
    async fn mapping(&self, id: &str) -> StoreResult<Option<Mapping>>;
    /// Mappings for (claim, value) whose issuer is `issuer` or empty (any issuer).
    async fn find_mappings(
        &self,
        issuer: &str,
        claim: &str,
        value: &str,
    ) -> StoreResult<Vec<Mapping>>;
    async fn update_mapping(
        &self,
        mapping: &Mapping,
        audit: &Audit,
    ) -> StoreResult<Option<Mapping>>;
    async fn delete_mapping(&self, id: &str, audit: &Audit) -> StoreResult<Option<Mapping>>;
    async fn list_mappings(&self, page: Page) -> StoreResult<(Vec<Mapping>, u64)>;

    /// Starts a new budget period for every key and team whose period ended by `now`:
    /// spend back to zero, `budget_reset_at` moved past `now`. Safe to run on several
    /// instances at once (each row is reset by exactly one of them).
    async fn reset_budgets(
        &self,
        now: chrono::DateTime<chrono::Utc>,
    ) -> StoreResult<Vec<BudgetReset>>;

    /// Writes usage rows and adds their spend to keys and teams, in one transaction.
    async fn record_usage(&self, rows: &[UsageRow]) -> StoreResult<()>;
    async fn spend_logs(&self, filter: &UsageFilter) -> StoreResult<Vec<UsageRow>>;

    /// Writes an audit row on its own, for a change that lives outside the database
    /// (a server's drain state).
    async fn record_audit(&self, entry: &AuditEntry) -> StoreResult<()>;
    /// Audit rows, newest first.
    async fn audit_logs(&self, filter: &AuditFilter) -> StoreResult<Vec<AuditEntry>>;

    /// Deletes at most `max_rows` of `table`'s rows older than `before`, in one
    /// statement; returns how many it deleted (the retention job calls it until fewer
    /// than `max_rows` go). Spend totals are columns of keys and teams, never touched.
    async fn purge(
        &self,
        table: RetainedTable,
        before: chrono::DateTime<chrono::Utc>,
        max_rows: u64,
    ) -> StoreResult<u64>;
    /// Takes the cluster-wide lock of the job named `job`, or `None` when another
    /// instance holds it. The lock lasts until [`JobLock::release`] (or the holder's
    /// connection ends).
    async fn try_job_lock(&self, job: &str) -> StoreResult<Option<JobLock>>;
}
