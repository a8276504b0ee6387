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
    /// Stored fields that could not be read (they refuse, see [`Unreadable`]).
    #[serde(skip)]
    pub unreadable: Unreadable,
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
    /// Stored fields that could not be read (they refuse, see [`Unreadable`]).
    #[serde(skip)]
    pub unreadable: Unreadable,
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
    /// Lists an update carries over unread: the store leaves them as they are stored.
    pub unreadable: Unreadable,
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
    /// `models` carried over unread: the store leaves it as it is stored.
    pub unreadable: Unreadable,
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

/// Fields of a stored key or team that could not be read. Each refuses what it would have
/// granted — an unreadable `models` admits no model, an unreadable `allowed_routes` no
/// route — instead of reading as empty, which would mean "every model" or "every route".
/// An update that does not set such a field leaves it as it is stored.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Unreadable {
    pub models: bool,
    pub allowed_routes: bool,
}

/// Which record a decoded value belongs to, for the one log line about a bad value.
#[derive(Clone, Copy)]
struct Record<'a> {
    kind: &'static str,
    id: &'a str,
}

impl Record<'_> {
    /// Logs a stored value that cannot be read, once per record, field and value (records
    /// are decoded on every cache fill and listing; one line is enough).
    fn unreadable(self, field: &'static str, stored: &str, refused_as: &'static str) {
        static SEEN: std::sync::OnceLock<std::sync::Mutex<std::collections::HashSet<String>>> =
            std::sync::OnceLock::new();
        const MAX_REMEMBERED: usize = 10_000;
        let stored: String = stored.chars().take(64).collect();
        let entry = format!("{}\u{0}{}\u{0}{field}\u{0}{stored}", self.kind, self.id);
        let mut seen = SEEN
            .get_or_init(Default::default)
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if seen.contains(&entry) {
            return;
        }
        if seen.len() >= MAX_REMEMBERED {
            seen.clear();
        }
        seen.insert(entry);
        drop(seen);
        tracing::error!(
            record = self.kind,
            id = self.id,
            field,
            refused_as,
            "a stored value cannot be read; it refuses what it would have granted until it is set again"
        );
    }

    /// A JSON list of strings; `None` (logged) when it is anything else.
    fn list(self, field: &'static str, text: &str) -> Option<Vec<String>> {
        match serde_json::from_str(text) {
            Ok(list) => Some(list),
            Err(_) => {
                self.unreadable(field, text, "matches nothing");
                None
            }
        }
    }

    /// A count limit: a negative one (no version of tollgate stores those) admits nothing.
    fn limit(self, field: &'static str, v: Option<i64>) -> Option<u64> {
        v.map(|n| {
            u64::try_from(n).unwrap_or_else(|_| {
                self.unreadable(field, &n.to_string(), "limit 0");
                0
            })
        })
    }

    /// A budget that is negative or not a number admits nothing.
    fn budget(self, v: Option<f64>) -> Option<f64> {
        v.map(|b| {
            if b.is_finite() && b >= 0.0 {
                b
            } else {
                self.unreadable("max_budget", &b.to_string(), "budget 0");
                0.0
            }
        })
    }

    /// Spend that is negative or not a number counts as exhausting any budget.
    fn spend(self, v: f64) -> f64 {
        if v.is_finite() && v >= 0.0 {
            v
        } else {
            self.unreadable("spend", &v.to_string(), "budget exhausted");
            f64::MAX
        }
    }
}

fn json_object(text: &str) -> serde_json::Value {
    serde_json::from_str(text).unwrap_or_else(|_| serde_json::json!({}))
}

impl From<entity::virtual_key::Model> for VirtualKey {
    fn from(m: entity::virtual_key::Model) -> Self {
        let record = Record {
            kind: "key",
            id: &m.id,
        };
        let models = record.list("models", &m.models);
        let allowed_routes = record.list("allowed_routes", &m.allowed_routes);
        let unreadable = Unreadable {
            models: models.is_none(),
            allowed_routes: allowed_routes.is_none(),
        };
        let max_budget = record.budget(m.max_budget);
        let spend = record.spend(m.spend);
        let tpm_limit = record.limit("tpm_limit", m.tpm_limit);
        let rpm_limit = record.limit("rpm_limit", m.rpm_limit);
        let max_parallel_requests = record.limit("max_parallel_requests", m.max_parallel_requests);
        Self {
            key_id: m.id,
            key_hash: m.key_hash,
            key_name: m.key_name,
            key_alias: m.key_alias,
            team_id: m.team_id,
            user_id: m.user_id,
            org_id: m.org_id,
            models: models.unwrap_or_default(),
            allowed_routes: allowed_routes.unwrap_or_default(),
            unreadable,
            max_budget,
            budget_duration: m.budget_duration.as_deref().and_then(parse_duration),
            budget_reset_at: m.budget_reset_at,
            spend,
            tpm_limit,
            rpm_limit,
            max_parallel_requests,
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
        let record = Record {
            kind: "team",
            id: &m.id,
        };
        let models = record.list("models", &m.models);
        let unreadable = Unreadable {
            models: models.is_none(),
            allowed_routes: false,
        };
        let max_budget = record.budget(m.max_budget);
        let spend = record.spend(m.spend);
        let tpm_limit = record.limit("tpm_limit", m.tpm_limit);
        let rpm_limit = record.limit("rpm_limit", m.rpm_limit);
        let max_parallel_requests = record.limit("max_parallel_requests", m.max_parallel_requests);
        Self {
            team_id: m.id,
            team_alias: m.team_alias,
            models: models.unwrap_or_default(),
            unreadable,
            max_budget,
            budget_duration: m.budget_duration.as_deref().and_then(parse_duration),
            budget_reset_at: m.budget_reset_at,
            spend,
            tpm_limit,
            rpm_limit,
            max_parallel_requests,
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
