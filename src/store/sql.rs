//! [`Store`] on sea-orm: the same queries on SQLite and PostgreSQL.

use std::time::Duration as StdDuration;

use async_trait::async_trait;
use chrono::Utc;
use sea_orm::sea_query::Expr;
use sea_orm::{
    ActiveModelTrait, ColumnTrait, Condition, ConnectOptions, ConnectionTrait, Database,
    DatabaseConnection, DatabaseTransaction, EntityTrait, PaginatorTrait, QueryFilter, QueryOrder,
    QuerySelect, Set, TransactionTrait,
};

use entity::{audit_log, jwt_key_mapping, team, usage_log, virtual_key};

use super::{
    Audit, AuditEntry, AuditFilter, BudgetReset, KeyFields, KeyFilter, Mapping, NewKey, Page,
    RetainedTable, Store, StoreError, StoreResult, Team, TeamFields, UsageFilter, UsageRow,
    VirtualKey,
};
use crate::config::DatabaseConfig;

mod usage;

/// Opens a pool on the configured database.
pub async fn connect(config: &DatabaseConfig) -> Result<DatabaseConnection, sea_orm::DbErr> {
    let mut options = ConnectOptions::new(config.url.expose().to_string());
    options
        .max_connections(config.max_connections)
        .min_connections(1)
        .connect_timeout(StdDuration::from_secs(5))
        .acquire_timeout(StdDuration::from_secs(5))
        .sqlx_logging(false);
    Database::connect(options).await
}

/// The production store.
#[derive(Clone)]
pub struct SqlStore {
    db: DatabaseConnection,
}

impl SqlStore {
    pub fn new(db: DatabaseConnection) -> Self {
        Self { db }
    }

    pub fn connection(&self) -> &DatabaseConnection {
        &self.db
    }
}

fn to_json<T: serde::Serialize>(value: &T) -> String {
    serde_json::to_string(value).unwrap_or_else(|_| "null".into())
}

fn signed(v: Option<u64>) -> Option<i64> {
    v.map(|n| i64::try_from(n).unwrap_or(i64::MAX))
}

fn key_fields(am: &mut virtual_key::ActiveModel, f: &KeyFields) {
    am.key_alias = Set(f.key_alias.clone());
    am.team_id = Set(f.team_id.clone());
    am.user_id = Set(f.user_id.clone());
    am.org_id = Set(f.org_id.clone());
    // A list carried over unread stays as stored: writing it back as read (empty) would
    // turn "unreadable, refuses" into "every model".
    if !f.unreadable.models {
        am.models = Set(to_json(&f.models));
    }
    if !f.unreadable.allowed_routes {
        am.allowed_routes = Set(to_json(&f.allowed_routes));
    }
    am.max_budget = Set(f.max_budget);
    am.budget_duration = Set(f.budget_duration.map(|d| d.to_string()));
    am.tpm_limit = Set(signed(f.tpm_limit));
    am.rpm_limit = Set(signed(f.rpm_limit));
    am.max_parallel_requests = Set(signed(f.max_parallel_requests));
    am.expires = Set(f.expires);
    am.blocked = Set(f.blocked);
    am.metadata = Set(to_json(&f.metadata));
    am.updated_at = Set(Utc::now());
}

fn team_fields(am: &mut team::ActiveModel, f: &TeamFields) {
    am.team_alias = Set(f.team_alias.clone());
    if !f.unreadable.models {
        am.models = Set(to_json(&f.models));
    }
    am.max_budget = Set(f.max_budget);
    am.budget_duration = Set(f.budget_duration.map(|d| d.to_string()));
    am.tpm_limit = Set(signed(f.tpm_limit));
    am.rpm_limit = Set(signed(f.rpm_limit));
    am.max_parallel_requests = Set(signed(f.max_parallel_requests));
    am.blocked = Set(f.blocked);
    am.metadata = Set(to_json(&f.metadata));
    am.updated_at = Set(Utc::now());
}

/// The next reset time for a budget period starting now.
fn first_reset(duration: Option<crate::config::Duration>) -> Option<chrono::DateTime<Utc>> {
    duration.map(|d| Utc::now() + d.to_chrono())
}

/// The first period end after `now`, stepping from `old` in whole periods (an instance
/// that was down for several periods does not replay them).
fn next_period_end(
    old: chrono::DateTime<Utc>,
    period: crate::config::Duration,
    now: chrono::DateTime<Utc>,
) -> chrono::DateTime<Utc> {
    let step = period.to_chrono();
    let behind = Ord::max((now - old).num_seconds(), 0) / Ord::max(step.num_seconds(), 1);
    old + step * i32::try_from(behind + 1).unwrap_or(i32::MAX)
}

fn mapping_model(m: &Mapping) -> jwt_key_mapping::ActiveModel {
    jwt_key_mapping::ActiveModel {
        id: Set(m.id.clone()),
        jwt_issuer: Set(m.jwt_issuer.clone()),
        jwt_claim_name: Set(m.jwt_claim_name.clone()),
        jwt_claim_value: Set(m.jwt_claim_value.clone()),
        key_id: Set(m.key_id.clone()),
        description: Set(m.description.clone()),
        is_active: Set(m.is_active),
        created_at: Set(m.created_at),
        updated_at: Set(m.updated_at),
        created_by: Set(m.created_by.clone()),
        updated_by: Set(m.updated_by.clone()),
    }
}

/// Writes one audit row on `conn` (the change's transaction).
async fn write_audit(conn: &impl ConnectionTrait, entry: &AuditEntry) -> StoreResult<()> {
    let json = |v: &Option<serde_json::Value>| v.as_ref().map(|v| v.to_string());
    audit_log::ActiveModel {
        id: Set(entry.id.clone()),
        at: Set(entry.at),
        actor: Set(entry.actor.clone()),
        action: Set(entry.action.as_str().to_string()),
        object_type: Set(entry.object_type.as_str().to_string()),
        object_id: Set(entry.object_id.clone()),
        team_id: Set(entry.team_id.clone()),
        before: Set(json(&entry.before)),
        after: Set(json(&entry.after)),
        request_id: Set(entry.request_id.clone()),
    }
    .insert(conn)
    .await?;
    Ok(())
}

/// The team of the key a mapping points at (what a mapping's audit row is filed under).
async fn key_team(conn: &impl ConnectionTrait, key_id: &str) -> StoreResult<Option<String>> {
    Ok(virtual_key::Entity::find_by_id(key_id.to_string())
        .one(conn)
        .await?
        .and_then(|k| k.team_id))
}

async fn insert_key_on(
    conn: &impl ConnectionTrait,
    key: &NewKey,
    audit: &Audit,
) -> StoreResult<VirtualKey> {
    let now = Utc::now();
    let mut am = virtual_key::ActiveModel {
        id: Set(key.key_id.clone()),
        key_hash: Set(key.key_hash.clone()),
        previous_key_hash: Set(None),
        grace_until: Set(None),
        key_name: Set(key.key_name.clone()),
        spend: Set(0.0),
        budget_reset_at: Set(first_reset(key.fields.budget_duration)),
        created_by: Set(key.created_by.clone()),
        created_at: Set(now),
        ..Default::default()
    };
    key_fields(&mut am, &key.fields);
    let created: VirtualKey = am.insert(conn).await?.into();
    write_audit(
        conn,
        &AuditEntry::of(
            audit,
            &created.key_id,
            created.team_id.as_deref(),
            None,
            Some(&created),
        ),
    )
    .await?;
    Ok(created)
}

async fn insert_mapping_on(
    conn: &impl ConnectionTrait,
    mapping: &Mapping,
    audit: &Audit,
) -> StoreResult<Mapping> {
    let created: Mapping = mapping_model(mapping).insert(conn).await?.into();
    let team = key_team(conn, &created.key_id).await?;
    write_audit(
        conn,
        &AuditEntry::of(audit, &created.id, team.as_deref(), None, Some(&created)),
    )
    .await?;
    Ok(created)
}

/// A lock only one instance holds at a time (SPEC §13: one retention job at a time).
///
/// On PostgreSQL it is a transaction-scoped advisory lock held by an open transaction on
/// a connection of its own: the lock ends with the transaction, so a holder that dies
/// (its connection closed) never leaves it behind. The job's deletions run on other
/// connections, each statement committed on its own. SQLite is one process's file: there
/// is nothing to coordinate, and the lock is always granted.
pub struct JobLock {
    txn: Option<DatabaseTransaction>,
}

impl JobLock {
    /// A lock that coordinates nothing (SQLite; test stores).
    pub fn local() -> Self {
        Self { txn: None }
    }

    /// Ends the lock.
    pub async fn release(self) {
        if let Some(txn) = self.txn
            && let Err(e) = txn.rollback().await
        {
            // The connection goes back to the pool broken or is dropped; either way the
            // transaction, and with it the lock, is over.
            tracing::warn!(error = %e, "releasing a job lock failed");
        }
    }
}

/// The advisory lock id of a job: a stable 63-bit number from its name.
fn lock_id(job: &str) -> i64 {
    use sha2::{Digest, Sha256};
    let digest = Sha256::digest(format!("tollgate:job:{job}").as_bytes());
    let mut bytes = [0u8; 8];
    bytes.copy_from_slice(&digest[..8]);
    i64::from_be_bytes(bytes) & i64::MAX
}

#[async_trait]
impl Store for SqlStore {
    async fn ping(&self) -> StoreResult<()> {
        self.db.ping().await.map_err(StoreError::Unavailable)
    }

    async fn insert_key(
        &self,
        key_id: &str,
        key_hash: &str,
        key_name: &str,
        fields: &KeyFields,
        created_by: Option<String>,
        audit: &Audit,
    ) -> StoreResult<VirtualKey> {
        let key = NewKey {
            key_id: key_id.to_string(),
            key_hash: key_hash.to_string(),
            key_name: key_name.to_string(),
            fields: fields.clone(),
            created_by,
        };
        let txn = self.db.begin().await?;
        let created = insert_key_on(&txn, &key, audit).await?;
        txn.commit().await?;
        Ok(created)
    }

    async fn key_by_hash(&self, key_hash: &str) -> StoreResult<Option<VirtualKey>> {
        Ok(virtual_key::Entity::find()
            .filter(
                Condition::any()
                    .add(virtual_key::Column::KeyHash.eq(key_hash))
                    .add(
                        Condition::all()
                            .add(virtual_key::Column::PreviousKeyHash.eq(key_hash))
                            .add(virtual_key::Column::GraceUntil.gt(Utc::now())),
                    ),
            )
            .one(&self.db)
            .await?
            .map(Into::into))
    }

    async fn key_by_id(&self, key_id: &str) -> StoreResult<Option<VirtualKey>> {
        Ok(virtual_key::Entity::find_by_id(key_id.to_string())
            .one(&self.db)
            .await?
            .map(Into::into))
    }

    async fn update_key(
        &self,
        key_id: &str,
        fields: &KeyFields,
        audit: &Audit,
    ) -> StoreResult<Option<VirtualKey>> {
        let Some(existing) = virtual_key::Entity::find_by_id(key_id.to_string())
            .one(&self.db)
            .await?
        else {
            return Ok(None);
        };
        let before: VirtualKey = existing.clone().into();
        let old_duration = existing.budget_duration.clone();
        let mut am: virtual_key::ActiveModel = existing.into();
        key_fields(&mut am, fields);
        if old_duration != fields.budget_duration.map(|d| d.to_string()) {
            am.budget_reset_at = Set(first_reset(fields.budget_duration));
        }
        // Starts with the write (see `delete_keys`).
        let txn = self.db.begin().await?;
        let updated: VirtualKey = am.update(&txn).await?.into();
        let team = updated.team_id.as_deref().or(before.team_id.as_deref());
        write_audit(
            &txn,
            &AuditEntry::of(audit, key_id, team, Some(&before), Some(&updated)),
        )
        .await?;
        txn.commit().await?;
        Ok(Some(updated))
    }

    async fn rehash_key(
        &self,
        key_id: &str,
        key_hash: &str,
        key_name: &str,
        grace_until: Option<chrono::DateTime<Utc>>,
        audit: &Audit,
    ) -> StoreResult<Option<(VirtualKey, VirtualKey)>> {
        let Some(before) = self.key_by_id(key_id).await? else {
            return Ok(None);
        };
        let txn = self.db.begin().await?;
        // SET reads the row as it was: the replaced secret moves to `previous_key_hash`
        // (or nowhere, without a grace period), and whatever was there stops working.
        let previous = match grace_until {
            Some(_) => Expr::col(virtual_key::Column::KeyHash),
            None => Expr::value(Option::<String>::None),
        };
        let result = virtual_key::Entity::update_many()
            .col_expr(virtual_key::Column::PreviousKeyHash, previous)
            .col_expr(virtual_key::Column::GraceUntil, Expr::value(grace_until))
            .col_expr(virtual_key::Column::KeyHash, Expr::value(key_hash))
            .col_expr(virtual_key::Column::KeyName, Expr::value(key_name))
            .col_expr(virtual_key::Column::UpdatedAt, Expr::value(Utc::now()))
            .filter(virtual_key::Column::Id.eq(key_id))
            .exec(&txn)
            .await?;
        if result.rows_affected == 0 {
            return Ok(None);
        }
        let Some(after) = virtual_key::Entity::find_by_id(key_id.to_string())
            .one(&txn)
            .await?
            .map(VirtualKey::from)
        else {
            return Ok(None);
        };
        write_audit(
            &txn,
            &AuditEntry::of(
                audit,
                key_id,
                after.team_id.as_deref(),
                Some(&before),
                Some(&after),
            ),
        )
        .await?;
        txn.commit().await?;
        Ok(Some((before, after)))
    }

    async fn delete_keys(&self, key_ids: &[String], audit: &Audit) -> StoreResult<Vec<VirtualKey>> {
        // Read outside the transaction: on SQLite a deferred transaction that reads and
        // then writes cannot wait for the write lock (it fails at once under concurrent
        // writers), while one that starts by writing waits its turn.
        let keys: Vec<VirtualKey> = virtual_key::Entity::find()
            .filter(virtual_key::Column::Id.is_in(key_ids.iter().cloned()))
            .all(&self.db)
            .await?
            .into_iter()
            .map(Into::into)
            .collect();
        let txn = self.db.begin().await?;
        // Mappings go with their key (the foreign key cascades too; this keeps SQLite
        // connections without the pragma correct).
        jwt_key_mapping::Entity::delete_many()
            .filter(jwt_key_mapping::Column::KeyId.is_in(key_ids.iter().cloned()))
            .exec(&txn)
            .await?;
        virtual_key::Entity::delete_many()
            .filter(virtual_key::Column::Id.is_in(key_ids.iter().cloned()))
            .exec(&txn)
            .await?;
        for key in &keys {
            write_audit(
                &txn,
                &AuditEntry::of(audit, &key.key_id, key.team_id.as_deref(), Some(key), None),
            )
            .await?;
        }
        txn.commit().await?;
        Ok(keys)
    }

    async fn register_key(
        &self,
        key: &NewKey,
        mapping: &Mapping,
        audit: &Audit,
    ) -> StoreResult<VirtualKey> {
        let txn = self.db.begin().await?;
        let created =
            insert_key_on(&txn, key, &audit.with(super::AuditAction::KeyGenerate)).await?;
        // A duplicate identity fails here and the whole transaction, key included, rolls
        // back: the race's losers leave nothing behind.
        insert_mapping_on(&txn, mapping, &audit.with(super::AuditAction::MappingNew)).await?;
        txn.commit().await?;
        Ok(created)
    }

    async fn list_keys(
        &self,
        filter: &KeyFilter,
        page: Page,
    ) -> StoreResult<(Vec<VirtualKey>, u64)> {
        let mut query = virtual_key::Entity::find();
        if let Some(team) = &filter.team_id {
            query = query.filter(virtual_key::Column::TeamId.eq(team.as_str()));
        }
        if let Some(user) = &filter.user_id {
            query = query.filter(virtual_key::Column::UserId.eq(user.as_str()));
        }
        let paginator = query
            .order_by_asc(virtual_key::Column::CreatedAt)
            .order_by_asc(virtual_key::Column::Id)
            .paginate(&self.db, page.size);
        let total = paginator.num_items().await?;
        let items = paginator.fetch_page(page.page.saturating_sub(1)).await?;
        Ok((items.into_iter().map(Into::into).collect(), total))
    }

    async fn insert_team(
        &self,
        team_id: &str,
        fields: &TeamFields,
        audit: &Audit,
    ) -> StoreResult<Team> {
        let now = Utc::now();
        let mut am = team::ActiveModel {
            id: Set(team_id.to_string()),
            spend: Set(0.0),
            budget_reset_at: Set(first_reset(fields.budget_duration)),
            created_at: Set(now),
            ..Default::default()
        };
        team_fields(&mut am, fields);
        let txn = self.db.begin().await?;
        let created: Team = am.insert(&txn).await?.into();
        write_audit(
            &txn,
            &AuditEntry::of(audit, team_id, Some(team_id), None, Some(&created)),
        )
        .await?;
        txn.commit().await?;
        Ok(created)
    }

    async fn team(&self, team_id: &str) -> StoreResult<Option<Team>> {
        Ok(team::Entity::find_by_id(team_id.to_string())
            .one(&self.db)
            .await?
            .map(Into::into))
    }

    async fn update_team(
        &self,
        team_id: &str,
        fields: &TeamFields,
        audit: &Audit,
    ) -> StoreResult<Option<Team>> {
        let Some(existing) = team::Entity::find_by_id(team_id.to_string())
            .one(&self.db)
            .await?
        else {
            return Ok(None);
        };
        let before: Team = existing.clone().into();
        let old_duration = existing.budget_duration.clone();
        let mut am: team::ActiveModel = existing.into();
        team_fields(&mut am, fields);
        if old_duration != fields.budget_duration.map(|d| d.to_string()) {
            am.budget_reset_at = Set(first_reset(fields.budget_duration));
        }
        let txn = self.db.begin().await?;
        let updated: Team = am.update(&txn).await?.into();
        write_audit(
            &txn,
            &AuditEntry::of(audit, team_id, Some(team_id), Some(&before), Some(&updated)),
        )
        .await?;
        txn.commit().await?;
        Ok(Some(updated))
    }

    async fn delete_team(&self, team_id: &str, audit: &Audit) -> StoreResult<Option<Vec<String>>> {
        // Reads first, outside the transaction (see `delete_keys`).
        let Some(before) = team::Entity::find_by_id(team_id.to_string())
            .one(&self.db)
            .await?
            .map(Team::from)
        else {
            return Ok(None);
        };
        let key_ids: Vec<String> = virtual_key::Entity::find()
            .filter(virtual_key::Column::TeamId.eq(team_id))
            .select_only()
            .column(virtual_key::Column::Id)
            .into_tuple()
            .all(&self.db)
            .await?;
        let txn = self.db.begin().await?;
        jwt_key_mapping::Entity::delete_many()
            .filter(
                jwt_key_mapping::Column::KeyId.in_subquery(
                    sea_orm::sea_query::Query::select()
                        .column(virtual_key::Column::Id)
                        .from(virtual_key::Entity)
                        .and_where(virtual_key::Column::TeamId.eq(team_id))
                        .to_owned(),
                ),
            )
            .exec(&txn)
            .await?;
        virtual_key::Entity::delete_many()
            .filter(virtual_key::Column::TeamId.eq(team_id))
            .exec(&txn)
            .await?;
        team::Entity::delete_by_id(team_id.to_string())
            .exec(&txn)
            .await?;
        write_audit(
            &txn,
            &AuditEntry::of(audit, team_id, Some(team_id), Some(&before), None),
        )
        .await?;
        txn.commit().await?;
        Ok(Some(key_ids))
    }

    async fn team_key_count(&self, team_id: &str) -> StoreResult<u64> {
        Ok(virtual_key::Entity::find()
            .filter(virtual_key::Column::TeamId.eq(team_id))
            .count(&self.db)
            .await?)
    }

    async fn list_teams(&self, page: Page) -> StoreResult<(Vec<Team>, u64)> {
        let paginator = team::Entity::find()
            .order_by_asc(team::Column::CreatedAt)
            .order_by_asc(team::Column::Id)
            .paginate(&self.db, page.size);
        let total = paginator.num_items().await?;
        let items = paginator.fetch_page(page.page.saturating_sub(1)).await?;
        Ok((items.into_iter().map(Into::into).collect(), total))
    }

    async fn insert_mapping(&self, mapping: &Mapping, audit: &Audit) -> StoreResult<Mapping> {
        let txn = self.db.begin().await?;
        let created = insert_mapping_on(&txn, mapping, audit).await?;
        txn.commit().await?;
        Ok(created)
    }

    async fn mapping(&self, id: &str) -> StoreResult<Option<Mapping>> {
        Ok(jwt_key_mapping::Entity::find_by_id(id.to_string())
            .one(&self.db)
            .await?
            .map(Into::into))
    }

    async fn find_mappings(
        &self,
        issuer: &str,
        claim: &str,
        value: &str,
    ) -> StoreResult<Vec<Mapping>> {
        Ok(jwt_key_mapping::Entity::find()
            .filter(jwt_key_mapping::Column::JwtClaimName.eq(claim))
            .filter(jwt_key_mapping::Column::JwtClaimValue.eq(value))
            .filter(jwt_key_mapping::Column::JwtIssuer.is_in([issuer.to_string(), String::new()]))
            .all(&self.db)
            .await?
            .into_iter()
            .map(Into::into)
            .collect())
    }

    async fn update_mapping(
        &self,
        mapping: &Mapping,
        audit: &Audit,
    ) -> StoreResult<Option<Mapping>> {
        let Some(before) = self.mapping(&mapping.id).await? else {
            return Ok(None);
        };
        let mut am = mapping_model(mapping);
        am.created_at = sea_orm::NotSet;
        am.created_by = sea_orm::NotSet;
        let txn = self.db.begin().await?;
        let updated: Mapping = am.update(&txn).await?.into();
        let team = key_team(&txn, &updated.key_id).await?;
        write_audit(
            &txn,
            &AuditEntry::of(
                audit,
                &updated.id,
                team.as_deref(),
                Some(&before),
                Some(&updated),
            ),
        )
        .await?;
        txn.commit().await?;
        Ok(Some(updated))
    }

    async fn delete_mapping(&self, id: &str, audit: &Audit) -> StoreResult<Option<Mapping>> {
        let Some(existing) = self.mapping(id).await? else {
            return Ok(None);
        };
        let txn = self.db.begin().await?;
        let done = jwt_key_mapping::Entity::delete_by_id(id.to_string())
            .exec(&txn)
            .await?;
        if done.rows_affected == 0 {
            // Deleted meanwhile by someone else, who wrote its row.
            return Ok(None);
        }
        let team = key_team(&txn, &existing.key_id).await?;
        write_audit(
            &txn,
            &AuditEntry::of(audit, id, team.as_deref(), Some(&existing), None),
        )
        .await?;
        txn.commit().await?;
        Ok(Some(existing))
    }

    async fn list_mappings(&self, page: Page) -> StoreResult<(Vec<Mapping>, u64)> {
        let paginator = jwt_key_mapping::Entity::find()
            .order_by_asc(jwt_key_mapping::Column::CreatedAt)
            .order_by_asc(jwt_key_mapping::Column::Id)
            .paginate(&self.db, page.size);
        let total = paginator.num_items().await?;
        let items = paginator.fetch_page(page.page.saturating_sub(1)).await?;
        Ok((items.into_iter().map(Into::into).collect(), total))
    }

    async fn reset_budgets(&self, now: chrono::DateTime<Utc>) -> StoreResult<Vec<BudgetReset>> {
        let mut reset = Vec::new();
        let keys = virtual_key::Entity::find()
            .filter(virtual_key::Column::BudgetResetAt.lte(now))
            .all(&self.db)
            .await?;
        for k in keys {
            let (Some(old), Some(period)) = (
                k.budget_reset_at,
                k.budget_duration
                    .as_deref()
                    .and_then(crate::config::parse_duration),
            ) else {
                continue;
            };
            let done = virtual_key::Entity::update_many()
                .col_expr(virtual_key::Column::Spend, Expr::value(0.0))
                .col_expr(
                    virtual_key::Column::BudgetResetAt,
                    Expr::value(next_period_end(old, period, now)),
                )
                .filter(virtual_key::Column::Id.eq(k.id.as_str()))
                .filter(virtual_key::Column::BudgetResetAt.eq(old))
                .exec(&self.db)
                .await?;
            if done.rows_affected == 1 {
                reset.push(BudgetReset::Key {
                    key_hash: k.key_hash,
                });
            }
        }
        let teams = team::Entity::find()
            .filter(team::Column::BudgetResetAt.lte(now))
            .all(&self.db)
            .await?;
        for t in teams {
            let (Some(old), Some(period)) = (
                t.budget_reset_at,
                t.budget_duration
                    .as_deref()
                    .and_then(crate::config::parse_duration),
            ) else {
                continue;
            };
            let done = team::Entity::update_many()
                .col_expr(team::Column::Spend, Expr::value(0.0))
                .col_expr(
                    team::Column::BudgetResetAt,
                    Expr::value(next_period_end(old, period, now)),
                )
                .filter(team::Column::Id.eq(t.id.as_str()))
                .filter(team::Column::BudgetResetAt.eq(old))
                .exec(&self.db)
                .await?;
            if done.rows_affected == 1 {
                reset.push(BudgetReset::Team { team_id: t.id });
            }
        }
        Ok(reset)
    }

    async fn record_usage(&self, rows: &[UsageRow]) -> StoreResult<()> {
        if rows.is_empty() {
            return Ok(());
        }
        usage::record(&self.db, rows).await
    }

    async fn spend_logs(&self, filter: &UsageFilter) -> StoreResult<Vec<UsageRow>> {
        let mut query = usage_log::Entity::find();
        if let Some(k) = &filter.key_id {
            query = query.filter(usage_log::Column::KeyId.eq(k.as_str()));
        }
        if let Some(t) = &filter.team_id {
            query = query.filter(usage_log::Column::TeamId.eq(t.as_str()));
        }
        if let Some(start) = filter.start {
            query = query.filter(usage_log::Column::StartedAt.gte(start));
        }
        if let Some(end) = filter.end {
            query = query.filter(usage_log::Column::StartedAt.lt(end));
        }
        Ok(query
            .order_by_desc(usage_log::Column::StartedAt)
            .order_by_desc(usage_log::Column::Id)
            .limit(filter.limit)
            .all(&self.db)
            .await?
            .into_iter()
            .map(Into::into)
            .collect())
    }

    async fn record_audit(&self, entry: &AuditEntry) -> StoreResult<()> {
        write_audit(&self.db, entry).await
    }

    async fn audit_logs(&self, filter: &AuditFilter) -> StoreResult<Vec<AuditEntry>> {
        let mut query = audit_log::Entity::find();
        if let Some(t) = filter.object_type {
            query = query.filter(audit_log::Column::ObjectType.eq(t.as_str()));
        }
        if let Some(id) = &filter.object_id {
            query = query.filter(audit_log::Column::ObjectId.eq(id.as_str()));
        }
        if let Some(actor) = &filter.actor {
            query = query.filter(audit_log::Column::Actor.eq(actor.as_str()));
        }
        if let Some(team) = &filter.team_id {
            query = query.filter(audit_log::Column::TeamId.eq(team.as_str()));
        }
        if let Some(start) = filter.start {
            query = query.filter(audit_log::Column::At.gte(start));
        }
        if let Some(end) = filter.end {
            query = query.filter(audit_log::Column::At.lt(end));
        }
        Ok(query
            .order_by_desc(audit_log::Column::At)
            .order_by_desc(audit_log::Column::Id)
            .limit(filter.limit)
            .offset(filter.page.saturating_sub(1).saturating_mul(filter.limit))
            .all(&self.db)
            .await?
            .into_iter()
            .map(Into::into)
            .collect())
    }

    async fn purge(
        &self,
        table: RetainedTable,
        before: chrono::DateTime<Utc>,
        max_rows: u64,
    ) -> StoreResult<u64> {
        use sea_orm::sea_query::Query;
        // `DELETE … LIMIT` is not portable (SQLite builds without it): the batch is the
        // oldest `max_rows` ids, chosen by a subquery on the time index.
        let done = match table {
            RetainedTable::Usage => {
                usage_log::Entity::delete_many()
                    .filter(
                        usage_log::Column::Id.in_subquery(
                            Query::select()
                                .column(usage_log::Column::Id)
                                .from(usage_log::Entity)
                                .and_where(usage_log::Column::StartedAt.lt(before))
                                .order_by(usage_log::Column::StartedAt, sea_orm::Order::Asc)
                                .limit(max_rows)
                                .to_owned(),
                        ),
                    )
                    .exec(&self.db)
                    .await?
            }
            RetainedTable::Audit => {
                audit_log::Entity::delete_many()
                    .filter(
                        audit_log::Column::Id.in_subquery(
                            Query::select()
                                .column(audit_log::Column::Id)
                                .from(audit_log::Entity)
                                .and_where(audit_log::Column::At.lt(before))
                                .order_by(audit_log::Column::At, sea_orm::Order::Asc)
                                .limit(max_rows)
                                .to_owned(),
                        ),
                    )
                    .exec(&self.db)
                    .await?
            }
        };
        Ok(done.rows_affected)
    }

    async fn try_job_lock(&self, job: &str) -> StoreResult<Option<JobLock>> {
        if !is_postgres(&self.db) {
            return Ok(Some(JobLock::local()));
        }
        let txn = self.db.begin().await?;
        let row = txn
            .query_one_raw(sea_orm::Statement::from_sql_and_values(
                sea_orm::DatabaseBackend::Postgres,
                "SELECT pg_try_advisory_xact_lock($1) AS locked",
                [lock_id(job).into()],
            ))
            .await?;
        let locked = match row {
            Some(row) => row.try_get::<bool>("", "locked")?,
            None => false,
        };
        if locked {
            Ok(Some(JobLock { txn: Some(txn) }))
        } else {
            txn.rollback().await?;
            Ok(None)
        }
    }
}

/// Runs pending migrations; a no-op when the schema is current.
pub async fn migrate(db: &DatabaseConnection) -> Result<(), sea_orm::DbErr> {
    use migration::MigratorTrait;
    migration::Migrator::up(db, None).await
}

/// True when the connection is PostgreSQL (used by tests and diagnostics).
pub fn is_postgres(db: &DatabaseConnection) -> bool {
    matches!(
        db.get_database_backend(),
        sea_orm::DatabaseBackend::Postgres
    )
}

/// Rows per multi-row `INSERT` of usage rows, largest first. A batch is written in
/// chunks of these sizes only (a batch of 1,000 is 15 × 64 + 2 × 16 + 2 × 4), so the
/// connections' prepared-statement caches hold at most four `INSERT` shapes. Chunks of
/// whatever size the batch had made every batch size a statement of its own, each cached
/// per connection (sqlx keeps 100 per connection; a 500-row `INSERT` is about a megabyte
/// compiled on SQLite): resident memory grew with the requests served and stayed. 64 rows
/// also stay far under every backend's bind-parameter limit.
const USAGE_CHUNKS: [usize; 4] = [64, 16, 4, 1];

/// `rows` cut into chunks whose sizes are all in [`USAGE_CHUNKS`].
fn usage_chunks(rows: &[UsageRow]) -> impl Iterator<Item = &[UsageRow]> {
    let mut rest = rows;
    std::iter::from_fn(move || {
        let size = USAGE_CHUNKS.into_iter().find(|&n| n <= rest.len())?;
        let (chunk, tail) = rest.split_at(size);
        rest = tail;
        Some(chunk)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rows(n: usize) -> Vec<UsageRow> {
        (0..n)
            .map(|i| UsageRow {
                request_id: format!("r{i}"),
                key_id: None,
                team_id: None,
                user_id: None,
                model: None,
                route: "/api/chat".into(),
                prompt_tokens: 0,
                completion_tokens: 0,
                spend: 0.0,
                status: crate::store::RequestStatus::Success,
                http_status: 200,
                started_at: Utc::now(),
                duration_ms: 0,
                server: None,
            })
            .collect()
    }

    #[test]
    fn job_lock_ids_are_stable_distinct_and_non_negative() {
        assert_eq!(lock_id("retention"), lock_id("retention"));
        assert_ne!(lock_id("retention"), lock_id("other"));
        assert!(lock_id("retention") >= 0);
    }

    #[test]
    fn usage_batches_use_four_statement_shapes_only() {
        for n in [0, 1, 3, 4, 63, 64, 65, 500, 999, 1000] {
            let all = rows(n);
            let chunks: Vec<&[UsageRow]> = usage_chunks(&all).collect();
            assert_eq!(chunks.iter().map(|c| c.len()).sum::<usize>(), n);
            assert!(chunks.iter().all(|c| USAGE_CHUNKS.contains(&c.len())));
            let order: Vec<&str> = chunks
                .iter()
                .flat_map(|c| c.iter())
                .map(|r| r.request_id.as_str())
                .collect();
            let expected: Vec<&str> = all.iter().map(|r| r.request_id.as_str()).collect();
            assert_eq!(order, expected, "every row once, in order");
        }
        assert_eq!(usage_chunks(&rows(1000)).count(), 19);
    }
}
