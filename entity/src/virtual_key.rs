//! `virtual_keys`: an API key (stored only as its SHA-256) with its limits and spend.

use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
#[sea_orm(table_name = "virtual_keys")]
pub struct Model {
    /// Public, stable id (`key_id`), unchanged by regeneration.
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: String,
    /// Hex SHA-256 of the plaintext key.
    #[sea_orm(unique)]
    pub key_hash: String,
    /// Hex SHA-256 of the previous plaintext, which keeps working until `grace_until`
    /// (`/key/regenerate` with `grace_period`).
    pub previous_key_hash: Option<String>,
    pub grace_until: Option<DateTimeUtc>,
    /// Short display form, e.g. `sk-…a1b2`.
    pub key_name: String,
    pub key_alias: Option<String>,
    pub team_id: Option<String>,
    pub user_id: Option<String>,
    pub org_id: Option<String>,
    /// JSON array of model patterns.
    pub models: String,
    /// JSON array of exact paths or `prefix*` patterns.
    pub allowed_routes: String,
    pub max_budget: Option<f64>,
    pub budget_duration: Option<String>,
    pub budget_reset_at: Option<DateTimeUtc>,
    pub spend: f64,
    pub tpm_limit: Option<i64>,
    pub rpm_limit: Option<i64>,
    pub max_parallel_requests: Option<i64>,
    pub expires: Option<DateTimeUtc>,
    pub blocked: bool,
    /// JSON object.
    pub metadata: String,
    pub created_by: Option<String>,
    pub created_at: DateTimeUtc,
    pub updated_at: DateTimeUtc,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
