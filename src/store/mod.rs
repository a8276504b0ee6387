//! Storage: the [`Store`] trait every other module talks to, and its sea-orm
//! implementation ([`SqlStore`]) that runs unchanged on SQLite and PostgreSQL.
//!
//! The trait is the unit-test seam (mockall); integration tests use the real databases.

pub mod redis;
pub mod shared_cache;
mod sql;
pub mod types;

use async_trait::async_trait;

pub use sql::{SqlStore, connect, is_postgres, migrate};
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

    async fn insert_key(
        &self,
        key_id: &str,
        key_hash: &str,
        key_name: &str,
        fields: &KeyFields,
        created_by: Option<String>,
    ) -> StoreResult<VirtualKey>;
    async fn key_by_hash(&self, key_hash: &str) -> StoreResult<Option<VirtualKey>>;
    async fn key_by_id(&self, key_id: &str) -> StoreResult<Option<VirtualKey>>;
    /// Replaces every editable field. `None` when the key does not exist.
    async fn update_key(&self, key_id: &str, fields: &KeyFields)
    -> StoreResult<Option<VirtualKey>>;
    /// Swaps the key's secret (regenerate); the id stays.
    async fn rehash_key(
        &self,
        key_id: &str,
        key_hash: &str,
        key_name: &str,
    ) -> StoreResult<Option<VirtualKey>>;
    /// Deletes keys (and, by cascade, their mappings); returns the ones that existed.
    async fn delete_keys(&self, key_ids: &[String]) -> StoreResult<Vec<VirtualKey>>;
    async fn list_keys(
        &self,
        filter: &KeyFilter,
        page: Page,
    ) -> StoreResult<(Vec<VirtualKey>, u64)>;

    async fn insert_team(&self, team_id: &str, fields: &TeamFields) -> StoreResult<Team>;
    async fn team(&self, team_id: &str) -> StoreResult<Option<Team>>;
    async fn update_team(&self, team_id: &str, fields: &TeamFields) -> StoreResult<Option<Team>>;
    /// Deletes the team and (by cascade) its keys; returns the deleted key ids, or `None`
    /// when the team did not exist.
    async fn delete_team(&self, team_id: &str) -> StoreResult<Option<Vec<String>>>;
    async fn team_key_count(&self, team_id: &str) -> StoreResult<u64>;
    async fn list_teams(&self, page: Page) -> StoreResult<(Vec<Team>, u64)>;

    async fn insert_mapping(&self, mapping: &Mapping) -> StoreResult<Mapping>;
    async fn mapping(&self, id: &str) -> StoreResult<Option<Mapping>>;
    /// Mappings for (claim, value) whose issuer is `issuer` or empty (any issuer).
    async fn find_mappings(
        &self,
        issuer: &str,
        claim: &str,
        value: &str,
    ) -> StoreResult<Vec<Mapping>>;
    async fn update_mapping(&self, mapping: &Mapping) -> StoreResult<Option<Mapping>>;
    async fn delete_mapping(&self, id: &str) -> StoreResult<Option<Mapping>>;
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
}
