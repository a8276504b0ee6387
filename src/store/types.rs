//! Domain records the rest of the service works with, decoded from the table rows once
//! (JSON columns parsed, limits as unsigned numbers) so hot paths never re-parse them.

use chrono::{DateTime, Utc};
use serde::Serialize;
use utoipa::ToSchema;

// Named so utoipa does not take it for chrono's `Duration` (see `http::openapi`).
use crate::config::{Duration as HumanDuration, parse_duration};

/// A virtual key as stored (the plaintext is never stored).
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct VirtualKey {
    /// Stable public id, unchanged by `/key/regenerate`.
    pub key_id: String,
    #[serde(skip)]
    pub key_hash: String,
    /// A short prefix shown in lists, e.g. `sk-…a1b2`.
    pub key_name: String,
    pub key_alias: Option<String>,
    pub team_id: Option<String>,
    pub user_id: Option<String>,
    pub org_id: Option<String>,
    /// Models the key may use; empty means any model.
    pub models: Vec<String>,
    /// Exact paths or prefixes ending in `*`; empty means every proxied route.
    pub allowed_routes: Vec<String>,
    pub max_budget: Option<f64>,
    pub budget_duration: Option<HumanDuration>,
    pub budget_reset_at: Option<DateTime<Utc>>,
    /// Spend in the current budget period.
    pub spend: f64,
    pub tpm_limit: Option<u64>,
    pub rpm_limit: Option<u64>,
    pub max_parallel_requests: Option<u64>,
    pub expires: Option<DateTime<Utc>>,
    pub blocked: bool,
    #[schema(value_type = Object)]
    pub metadata: serde_json::Value,
    pub created_by: Option<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct Team {
    pub team_id: String,
    pub team_alias: Option<String>,
    pub models: Vec<String>,
    pub max_budget: Option<f64>,
    pub budget_duration: Option<HumanDuration>,
    pub budget_reset_at: Option<DateTime<Utc>>,
    pub spend: f64,
    pub tpm_limit: Option<u64>,
    pub rpm_limit: Option<u64>,
    pub max_parallel_requests: Option<u64>,
    pub blocked: bool,
    #[schema(value_type = Object)]
    pub metadata: serde_json::Value,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// A JWT claim → virtual key mapping (never the key or its hash).
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct Mapping {
    pub id: String,
    pub jwt_claim_name: String,
    pub jwt_claim_value: String,
    /// Empty: the mapping applies to every issuer.
    pub jwt_issuer: String,
    pub key_id: String,
    pub description: Option<String>,
    pub is_active: bool,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub created_by: Option<String>,
    pub updated_by: Option<String>,
}

/// How a proxied request ended: the `status` of its usage row and of the live feed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum RequestStatus {
    /// The response was delivered whole.
    Success,
    /// The upstream failed, refused, or cut the stream.
    Error,
    /// The upstream did not answer within `server.request_timeout_s`.
    Timeout,
    /// The client left, or shutdown cut the stream.
    Cancelled,
    /// Refused before anything was sent upstream (live feed only: no usage row).
    Refused,
}

impl RequestStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Success => "success",
            Self::Error => "error",
            Self::Timeout => "timeout",
            Self::Cancelled => "cancelled",
            Self::Refused => "refused",
        }
    }

    /// Reads a stored status; `None` for text no version of tollgate wrote.
    pub fn parse(text: &str) -> Option<Self> {
        [
            Self::Success,
            Self::Error,
            Self::Timeout,
            Self::Cancelled,
            Self::Refused,
        ]
        .into_iter()
        .find(|s| s.as_str() == text)
    }
}

impl std::fmt::Display for RequestStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One finished proxied request.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct UsageRow {
    /// The request's `X-Request-ID`.
    pub request_id: String,
    pub key_id: Option<String>,
    pub team_id: Option<String>,
    pub user_id: Option<String>,
    pub model: Option<String>,
    pub route: String,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    pub spend: f64,
    /// How the request ended.
    pub status: RequestStatus,
    #[serde(skip)]
    pub http_status: u16,
    pub started_at: DateTime<Utc>,
    pub duration_ms: u64,
    /// The Ollama server that answered (SPEC §11); null when none did.
    pub server: Option<String>,
}

/// Limits and attributes shared by key creation and update.
#[derive(Debug, Clone, Default)]
pub struct KeyFields {
    pub key_alias: Option<String>,
    pub team_id: Option<String>,
    pub user_id: Option<String>,
    pub org_id: Option<String>,
    pub models: Vec<String>,
    pub allowed_routes: Vec<String>,
    pub max_budget: Option<f64>,
    pub budget_duration: Option<HumanDuration>,
    pub tpm_limit: Option<u64>,
    pub rpm_limit: Option<u64>,
    pub max_parallel_requests: Option<u64>,
    pub expires: Option<DateTime<Utc>>,
    pub blocked: bool,
    pub metadata: serde_json::Value,
}

#[derive(Debug, Clone, Default)]
pub struct TeamFields {
    pub team_alias: Option<String>,
    pub models: Vec<String>,
    pub max_budget: Option<f64>,
    pub budget_duration: Option<HumanDuration>,
    pub tpm_limit: Option<u64>,
    pub rpm_limit: Option<u64>,
    pub max_parallel_requests: Option<u64>,
    pub blocked: bool,
    pub metadata: serde_json::Value,
}

#[derive(Debug, Clone, Default)]
pub struct KeyFilter {
    pub team_id: Option<String>,
    pub user_id: Option<String>,
}

#[derive(Debug, Clone, Default)]
pub struct UsageFilter {
    pub key_id: Option<String>,
    pub team_id: Option<String>,
    pub start: Option<DateTime<Utc>>,
    pub end: Option<DateTime<Utc>>,
    pub limit: u64,
}

/// A key or team whose budget period was just reset.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BudgetReset {
    /// By key hash (what the key cache is keyed by).
    Key {
        key_hash: String,
    },
    Team {
        team_id: String,
    },
}

/// A page request: 1-based page number and page size.
#[derive(Debug, Clone, Copy)]
pub struct Page {
    pub page: u64,
    pub size: u64,
}

fn json_list(text: &str) -> Vec<String> {
    serde_json::from_str(text).unwrap_or_default()
}

fn json_object(text: &str) -> serde_json::Value {
    serde_json::from_str(text).unwrap_or_else(|_| serde_json::json!({}))
}

fn limit(v: Option<i64>) -> Option<u64> {
    v.and_then(|n| u64::try_from(n).ok())
}

impl From<entity::virtual_key::Model> for VirtualKey {
    fn from(m: entity::virtual_key::Model) -> Self {
        Self {
            key_id: m.id,
            key_hash: m.key_hash,
            key_name: m.key_name,
            key_alias: m.key_alias,
            team_id: m.team_id,
            user_id: m.user_id,
            org_id: m.org_id,
            models: json_list(&m.models),
            allowed_routes: json_list(&m.allowed_routes),
            max_budget: m.max_budget,
            budget_duration: m.budget_duration.as_deref().and_then(parse_duration),
            budget_reset_at: m.budget_reset_at,
            spend: m.spend,
            tpm_limit: limit(m.tpm_limit),
            rpm_limit: limit(m.rpm_limit),
            max_parallel_requests: limit(m.max_parallel_requests),
            expires: m.expires,
            blocked: m.blocked,
            metadata: json_object(&m.metadata),
            created_by: m.created_by,
            created_at: m.created_at,
            updated_at: m.updated_at,
        }
    }
}

impl From<entity::team::Model> for Team {
    fn from(m: entity::team::Model) -> Self {
        Self {
            team_id: m.id,
            team_alias: m.team_alias,
            models: json_list(&m.models),
            max_budget: m.max_budget,
            budget_duration: m.budget_duration.as_deref().and_then(parse_duration),
            budget_reset_at: m.budget_reset_at,
            spend: m.spend,
            tpm_limit: limit(m.tpm_limit),
            rpm_limit: limit(m.rpm_limit),
            max_parallel_requests: limit(m.max_parallel_requests),
            blocked: m.blocked,
            metadata: json_object(&m.metadata),
            created_at: m.created_at,
            updated_at: m.updated_at,
        }
    }
}

impl From<entity::jwt_key_mapping::Model> for Mapping {
    fn from(m: entity::jwt_key_mapping::Model) -> Self {
        Self {
            id: m.id,
            jwt_claim_name: m.jwt_claim_name,
            jwt_claim_value: m.jwt_claim_value,
            jwt_issuer: m.jwt_issuer,
            key_id: m.key_id,
            description: m.description,
            is_active: m.is_active,
            created_at: m.created_at,
            updated_at: m.updated_at,
            created_by: m.created_by,
            updated_by: m.updated_by,
        }
    }
}

impl From<entity::usage_log::Model> for UsageRow {
    fn from(m: entity::usage_log::Model) -> Self {
        Self {
            request_id: m.request_id,
            key_id: m.key_id,
            team_id: m.team_id,
            user_id: m.user_id,
            model: m.model,
            route: m.route,
            prompt_tokens: u64::try_from(m.prompt_tokens).unwrap_or(0),
            completion_tokens: u64::try_from(m.completion_tokens).unwrap_or(0),
            spend: m.spend,
            // A status this version does not know reads as an error, never as success.
            status: RequestStatus::parse(&m.status).unwrap_or(RequestStatus::Error),
            http_status: u16::try_from(m.http_status).unwrap_or(0),
            started_at: m.started_at,
            duration_ms: u64::try_from(m.duration_ms).unwrap_or(0),
            server: m.server,
        }
    }
}
