//! `usage_logs`: one row per finished proxied request (served as `/spend/logs`).

use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
#[sea_orm(table_name = "usage_logs")]
pub struct Model {
    /// UUIDv7, so ids sort by time on every database.
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: String,
    /// The request's `X-Request-ID`.
    pub request_id: String,
    pub key_id: Option<String>,
    pub team_id: Option<String>,
    pub user_id: Option<String>,
    pub model: Option<String>,
    pub route: String,
    pub prompt_tokens: i64,
    pub completion_tokens: i64,
    pub spend: f64,
    /// `success`, `error`, `cancelled` or `timeout`.
    pub status: String,
    pub http_status: i32,
    pub started_at: DateTimeUtc,
    pub duration_ms: i64,
    /// The Ollama server that answered (`upstream.servers[].name`, or `default`).
    pub server: Option<String>,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
