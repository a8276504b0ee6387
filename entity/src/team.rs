//! `teams`: a group of keys sharing a model list, limits and a budget.

use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
#[sea_orm(table_name = "teams")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: String,
    pub team_alias: Option<String>,
    /// JSON array of model patterns.
    pub models: String,
    pub max_budget: Option<f64>,
    /// `30d`-style period after which spend resets.
    pub budget_duration: Option<String>,
    pub budget_reset_at: Option<DateTimeUtc>,
    pub spend: f64,
    pub tpm_limit: Option<i64>,
    pub rpm_limit: Option<i64>,
    pub max_parallel_requests: Option<i64>,
    pub blocked: bool,
    /// JSON object.
    pub metadata: String,
    pub created_at: DateTimeUtc,
    pub updated_at: DateTimeUtc,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
