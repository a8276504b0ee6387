//! Domain records the rest of the service works with, decoded from the table rows once
//! (JSON columns parsed, limits as unsigned numbers) so hot paths never re-parse them.

use std::sync::Arc;

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
    /// `key:{key_id}`: what the limiter and the fair queue call this key, built once when
    /// the key is read so that no request formats it.
    #[serde(skip)]
    pub subject_id: Arc<str>,
    #[serde(skip)]
    pub key_hash: String,
    /// The previous secret's hash while a rotation grace period runs (never shown).
    #[serde(skip)]
    pub previous_key_hash: Option<String>,
    /// Until when the previous plaintext keeps working (`/key/regenerate` with
    /// `grace_period`); null when no grace period is running.
    pub grace_until: Option<DateTime<Utc>>,
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
    /// `team:{team_id}`: what the limiter and the fair queue call this team, built once
    /// when the team is read.
    #[serde(skip)]
    pub subject_id: Arc<str>,
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

    pub const ALL: [Self; 5] = [
        Self::Success,
        Self::Error,
        Self::Timeout,
        Self::Cancelled,
        Self::Refused,
    ];

    /// Reads a stored status; `None` for text no version of tollgate wrote.
    pub fn parse(text: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|s| s.as_str() == text)
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

/// A key about to be inserted: its id, secret hash, display name and fields.
#[derive(Debug, Clone)]
pub struct NewKey {
    pub key_id: String,
    pub key_hash: String,
    pub key_name: String,
    pub fields: KeyFields,
    pub created_by: Option<String>,
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

impl VirtualKey {
    /// True when `hash` is this key's previous secret and its grace period is still
    /// running at `now` (checked on every resolution, cached or not).
    pub fn in_grace(&self, hash: &str, now: DateTime<Utc>) -> bool {
        self.previous_key_hash.as_deref() == Some(hash) && self.grace_until.is_some_and(|t| t > now)
    }

    /// Every hash a cache may hold this key under: the current one and, during a grace
    /// period, the previous one.
    pub fn hashes(&self) -> impl Iterator<Item = &str> {
        std::iter::once(self.key_hash.as_str()).chain(self.previous_key_hash.as_deref())
    }
}

/// A management change to record: who made it and which action it is. The store writes
/// the audit row (with the object before and after) in the change's own transaction.
#[derive(Debug, Clone)]
pub struct Audit {
    /// `master_key`, `jwt:<user_id>` or `system:auto_register`.
    pub actor: String,
    pub action: AuditAction,
    /// The `X-Request-ID` of the request that caused the change.
    pub request_id: Option<String>,
}

impl Audit {
    pub fn new(actor: impl Into<String>, action: AuditAction) -> Self {
        let id = crate::request_id::current_request_id();
        Self {
            actor: actor.into(),
            action,
            // Outside a request (a background job) there is no request id.
            request_id: (&*id != "-").then(|| id.to_string()),
        }
    }

    /// The same actor and request, another action (one request, several changes).
    pub fn with(&self, action: AuditAction) -> Self {
        Self {
            action,
            ..self.clone()
        }
    }
}

/// The actions the audit log records (SPEC §4.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
pub enum AuditAction {
    #[serde(rename = "key.generate")]
    KeyGenerate,
    #[serde(rename = "key.update")]
    KeyUpdate,
    #[serde(rename = "key.delete")]
    KeyDelete,
    #[serde(rename = "key.block")]
    KeyBlock,
    #[serde(rename = "key.unblock")]
    KeyUnblock,
    #[serde(rename = "key.regenerate")]
    KeyRegenerate,
    #[serde(rename = "team.new")]
    TeamNew,
    #[serde(rename = "team.update")]
    TeamUpdate,
    #[serde(rename = "team.delete")]
    TeamDelete,
    #[serde(rename = "mapping.new")]
    MappingNew,
    #[serde(rename = "mapping.update")]
    MappingUpdate,
    #[serde(rename = "mapping.delete")]
    MappingDelete,
    #[serde(rename = "upstream.drain")]
    UpstreamDrain,
    #[serde(rename = "upstream.undrain")]
    UpstreamUndrain,
}

impl AuditAction {
    pub const ALL: [AuditAction; 14] = [
        Self::KeyGenerate,
        Self::KeyUpdate,
        Self::KeyDelete,
        Self::KeyBlock,
        Self::KeyUnblock,
        Self::KeyRegenerate,
        Self::TeamNew,
        Self::TeamUpdate,
        Self::TeamDelete,
        Self::MappingNew,
        Self::MappingUpdate,
        Self::MappingDelete,
        Self::UpstreamDrain,
        Self::UpstreamUndrain,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::KeyGenerate => "key.generate",
            Self::KeyUpdate => "key.update",
            Self::KeyDelete => "key.delete",
            Self::KeyBlock => "key.block",
            Self::KeyUnblock => "key.unblock",
            Self::KeyRegenerate => "key.regenerate",
            Self::TeamNew => "team.new",
            Self::TeamUpdate => "team.update",
            Self::TeamDelete => "team.delete",
            Self::MappingNew => "mapping.new",
            Self::MappingUpdate => "mapping.update",
            Self::MappingDelete => "mapping.delete",
            Self::UpstreamDrain => "upstream.drain",
            Self::UpstreamUndrain => "upstream.undrain",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|a| a.as_str() == text)
    }

    /// The kind of object the action changes.
    pub fn object_type(self) -> AuditObject {
        match self {
            Self::KeyGenerate
            | Self::KeyUpdate
            | Self::KeyDelete
            | Self::KeyBlock
            | Self::KeyUnblock
            | Self::KeyRegenerate => AuditObject::Key,
            Self::TeamNew | Self::TeamUpdate | Self::TeamDelete => AuditObject::Team,
            Self::MappingNew | Self::MappingUpdate | Self::MappingDelete => AuditObject::Mapping,
            Self::UpstreamDrain | Self::UpstreamUndrain => AuditObject::Upstream,
        }
    }
}

/// What an audit row's object is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum AuditObject {
    Key,
    Team,
    Mapping,
    Upstream,
}

impl AuditObject {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Key => "key",
            Self::Team => "team",
            Self::Mapping => "mapping",
            Self::Upstream => "upstream",
        }
    }
}

/// One audit row as `/audit/logs` shows it.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct AuditEntry {
    pub id: String,
    pub at: DateTime<Utc>,
    /// `master_key`, `jwt:<user_id>` or `system:auto_register`.
    pub actor: String,
    pub action: AuditAction,
    pub object_type: AuditObject,
    pub object_id: String,
    /// The team the object belongs to (null for none, and for servers).
    pub team_id: Option<String>,
    /// The object before the change as the API shows it; null for a create.
    #[schema(value_type = Option<Object>)]
    pub before: Option<serde_json::Value>,
    /// The object after the change as the API shows it; null for a delete.
    #[schema(value_type = Option<Object>)]
    pub after: Option<serde_json::Value>,
    /// The `X-Request-ID` of the request that made the change.
    pub request_id: Option<String>,
}

impl AuditEntry {
    /// A row for a change to `object_id` (its team, if any) from `before` to `after`.
    pub fn of<T: Serialize>(
        audit: &Audit,
        object_id: &str,
        team_id: Option<&str>,
        before: Option<&T>,
        after: Option<&T>,
    ) -> Self {
        let json = |v: Option<&T>| v.and_then(|v| serde_json::to_value(v).ok());
        Self {
            id: uuid::Uuid::now_v7().to_string(),
            at: Utc::now(),
            actor: audit.actor.clone(),
            action: audit.action,
            object_type: audit.action.object_type(),
            object_id: object_id.to_string(),
            team_id: team_id.map(str::to_string),
            before: json(before),
            after: json(after),
            request_id: audit.request_id.clone(),
        }
    }
}

#[derive(Debug, Clone, Default)]
pub struct AuditFilter {
    pub object_type: Option<AuditObject>,
    pub object_id: Option<String>,
    pub actor: Option<String>,
    /// Only rows of this team (team admins' view).
    pub team_id: Option<String>,
    pub start: Option<DateTime<Utc>>,
    pub end: Option<DateTime<Utc>>,
    /// Rows per page, and the 1-based page.
    pub limit: u64,
    pub page: u64,
}

/// The tables the retention job (SPEC §13) trims.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RetainedTable {
    Usage,
    Audit,
}

impl RetainedTable {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Usage => "usage",
            Self::Audit => "audit",
        }
    }
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
        // A grace period that has ended is no grace period: the old hash is left in the
        // row (harmless, it no longer resolves) and overwritten by the next regeneration.
        let (previous_key_hash, grace_until) = match (m.previous_key_hash, m.grace_until) {
            (Some(hash), Some(until)) if until > Utc::now() => (Some(hash), Some(until)),
            _ => (None, None),
        };
        Self {
            subject_id: Arc::from(format!("key:{}", m.id)),
            key_id: m.id,
            key_hash: m.key_hash,
            previous_key_hash,
            grace_until,
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
            subject_id: Arc::from(format!("team:{}", m.id)),
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

impl From<entity::audit_log::Model> for AuditEntry {
    fn from(m: entity::audit_log::Model) -> Self {
        let object_type = match m.object_type.as_str() {
            "team" => AuditObject::Team,
            "mapping" => AuditObject::Mapping,
            "upstream" => AuditObject::Upstream,
            _ => AuditObject::Key,
        };
        let json = |v: Option<String>| v.and_then(|t| serde_json::from_str(&t).ok());
        Self {
            // Only this code writes the column; an unknown action reads as the object's
            // update rather than failing the whole listing.
            action: AuditAction::parse(&m.action).unwrap_or(match object_type {
                AuditObject::Key => AuditAction::KeyUpdate,
                AuditObject::Team => AuditAction::TeamUpdate,
                AuditObject::Mapping => AuditAction::MappingUpdate,
                AuditObject::Upstream => AuditAction::UpstreamDrain,
            }),
            id: m.id,
            at: m.at,
            actor: m.actor,
            object_type,
            object_id: m.object_id,
            team_id: m.team_id,
            before: json(m.before),
            after: json(m.after),
            request_id: m.request_id,
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

#[cfg(test)]
mod tests {
    use super::*;

    fn key_with_grace(previous: Option<&str>, until: Option<DateTime<Utc>>) -> VirtualKey {
        let now = Utc::now();
        VirtualKey {
            subject_id: Arc::from("key:k"),
            key_id: "k".into(),
            key_hash: "new".into(),
            previous_key_hash: previous.map(str::to_string),
            grace_until: until,
            key_name: "sk-…0000".into(),
            key_alias: None,
            team_id: None,
            user_id: None,
            org_id: None,
            models: vec![],
            allowed_routes: vec![],
            unreadable: Unreadable::default(),
            max_budget: None,
            budget_duration: None,
            budget_reset_at: None,
            spend: 0.0,
            tpm_limit: None,
            rpm_limit: None,
            max_parallel_requests: None,
            expires: None,
            blocked: false,
            metadata: serde_json::json!({}),
            created_by: None,
            created_at: now,
            updated_at: now,
        }
    }

    #[test]
    fn grace_holds_strictly_before_its_deadline_and_for_the_previous_hash_only() {
        let until = Utc::now();
        let key = key_with_grace(Some("old"), Some(until));
        let before = until - chrono::Duration::milliseconds(1);
        assert!(key.in_grace("old", before));
        assert!(!key.in_grace("old", until), "ends at grace_until");
        assert!(
            !key.in_grace("new", before),
            "the current hash is not a grace hash"
        );
        assert!(!key.in_grace("other", before));
        assert!(!key_with_grace(None, Some(until)).in_grace("old", before));
        assert_eq!(key.hashes().collect::<Vec<_>>(), ["new", "old"]);
        assert_eq!(
            key_with_grace(None, None).hashes().collect::<Vec<_>>(),
            ["new"]
        );
    }

    #[test]
    fn audit_actions_round_trip_and_name_their_object() {
        for action in AuditAction::ALL {
            assert_eq!(AuditAction::parse(action.as_str()), Some(action));
            let json = serde_json::to_value(action).expect("serializes");
            assert_eq!(json, action.as_str());
            let prefix = action.as_str().split('.').next().unwrap_or_default();
            assert_eq!(action.object_type().as_str(), prefix);
        }
        assert_eq!(AuditAction::parse("key.explode"), None);
    }

    #[test]
    fn an_audit_row_never_carries_a_key_hash() {
        let key = key_with_grace(Some("previoushash"), Some(Utc::now()));
        let audit = Audit {
            actor: "master_key".into(),
            action: AuditAction::KeyRegenerate,
            request_id: Some("r".into()),
        };
        let entry = AuditEntry::of(&audit, "k", None, Some(&key), Some(&key));
        let text = serde_json::to_string(&entry).expect("serializes");
        assert!(
            !text.contains("previoushash") && !text.contains("\"new\""),
            "{text}"
        );
        assert_eq!(entry.object_type, AuditObject::Key);
    }
}
