//! `TeamManager`: creating, changing and deleting teams.

use std::sync::Arc;

use serde::Deserialize;
use utoipa::ToSchema;

use crate::auth::Caller;
use crate::auth::authorize::{Capability, check};
// Named so utoipa does not take it for chrono's `Duration` (see `http::openapi`).
use crate::auth::invalidation::{Change, Invalidator};
use crate::config::Duration as HumanDuration;
use crate::error::AppError;
use crate::json::{Limit, double_option, is_blank};
use crate::store::{Audit, AuditAction, Page, Store, Team, TeamFields, Unreadable};

/// `POST /team/new`. Every field is optional.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewTeam {
    /// 1-128 letters, digits and `- _ . : @`; a UUID when absent.
    pub team_id: Option<String>,
    pub team_alias: Option<String>,
    pub models: Option<Vec<String>>,
    pub max_budget: Option<f64>,
    pub budget_duration: Option<HumanDuration>,
    pub tpm_limit: Option<Limit>,
    pub rpm_limit: Option<Limit>,
    pub max_parallel_requests: Option<Limit>,
    pub blocked: Option<bool>,
    /// A JSON object kept with the team.
    #[schema(value_type = Option<Object>)]
    pub metadata: Option<serde_json::Value>,
}

/// `POST /team/update`. Absent fields stay as they are; `null` clears.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateTeam {
    pub team_id: String,
    #[serde(default, deserialize_with = "double_option")]
    pub team_alias: Option<Option<String>>,
    #[serde(default, deserialize_with = "double_option")]
    pub models: Option<Option<Vec<String>>>,
    #[serde(default, deserialize_with = "double_option")]
    pub max_budget: Option<Option<f64>>,
    #[serde(default, deserialize_with = "double_option")]
    pub budget_duration: Option<Option<HumanDuration>>,
    #[serde(default, deserialize_with = "double_option")]
    pub tpm_limit: Option<Option<Limit>>,
    #[serde(default, deserialize_with = "double_option")]
    pub rpm_limit: Option<Option<Limit>>,
    #[serde(default, deserialize_with = "double_option")]
    pub max_parallel_requests: Option<Option<Limit>>,
    #[serde(default)]
    pub blocked: Option<bool>,
    #[serde(default, deserialize_with = "double_option")]
    #[schema(value_type = Option<Object>)]
    pub metadata: Option<Option<serde_json::Value>>,
}

/// `POST /team/delete`: `team_id` and/or LiteLLM's `team_ids` list.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DeleteTeams {
    #[serde(default)]
    pub team_id: Option<String>,
    #[serde(default)]
    pub team_ids: Option<Vec<String>>,
    /// Also delete the teams' keys (and their mappings); without it a team with keys is 409.
    #[serde(default)]
    pub force: bool,
}

fn check_team_id(id: &str) -> Result<(), AppError> {
    let ok = !id.is_empty()
        && id.len() <= 128
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':' | b'@'));
    if ok {
        Ok(())
    } else {
        Err(AppError::invalid(
            "field `team_id` must be 1-128 characters of letters, digits and - _ . : @",
        ))
    }
}

fn validate(fields: &TeamFields) -> Result<(), AppError> {
    if let Some(b) = fields.max_budget
        && !(b.is_finite() && b >= 0.0)
    {
        return Err(AppError::invalid(
            "field `max_budget` must be a non-negative number",
        ));
    }
    if fields.models.iter().any(|m| is_blank(m)) {
        return Err(AppError::invalid(
            "field `models` must not contain empty names",
        ));
    }
    if !fields.metadata.is_object() {
        return Err(AppError::invalid("field `metadata` must be an object"));
    }
    Ok(())
}

/// Team management: long-lived, built from the store and the invalidator.
pub struct TeamService {
    store: Arc<dyn Store>,
    invalidator: Arc<Invalidator>,
}

impl TeamService {
    pub fn new(store: Arc<dyn Store>, invalidator: Arc<Invalidator>) -> Self {
        Self { store, invalidator }
    }

    /// The operations, as `caller` may perform them.
    pub fn for_caller<'a>(&'a self, caller: &'a Caller) -> TeamManager<'a> {
        TeamManager {
            store: self.store.as_ref(),
            invalidator: &self.invalidator,
            caller,
        }
    }
}

/// [`TeamService`]'s operations on behalf of one caller.
pub struct TeamManager<'a> {
    store: &'a dyn Store,
    invalidator: &'a Invalidator,
    caller: &'a Caller,
}

impl TeamManager<'_> {
    fn audit(&self, action: AuditAction) -> Audit {
        Audit::new(self.caller.actor(), action)
    }

    pub async fn create(&self, req: NewTeam) -> Result<Team, AppError> {
        check(self.caller, Capability::TeamWrite, None)?;
        let team_id = req
            .team_id
            .unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
        check_team_id(&team_id)?;
        let fields = TeamFields {
            team_alias: req.team_alias,
            models: req.models.unwrap_or_default(),
            max_budget: req.max_budget,
            budget_duration: req.budget_duration,
            tpm_limit: req.tpm_limit.map(Limit::get),
            rpm_limit: req.rpm_limit.map(Limit::get),
            max_parallel_requests: req.max_parallel_requests.map(Limit::get),
            blocked: req.blocked.unwrap_or(false),
            metadata: req.metadata.unwrap_or_else(|| serde_json::json!({})),
            unreadable: Unreadable::default(),
        };
        validate(&fields)?;
        let team = self
            .store
            .insert_team(&team_id, &fields, &self.audit(AuditAction::TeamNew))
            .await
            .map_err(|e| match e {
                crate::store::StoreError::Conflict => {
                    AppError::Conflict(format!("team `{team_id}` already exists"))
                }
                other => other.into(),
            })?;
        self.invalidator
            .publish(Change::Team(team_id.clone()))
            .await;
        Ok(team)
    }

    pub async fn find(&self, team_id: &str) -> Result<Team, AppError> {
        check(self.caller, Capability::TeamRead, Some(team_id))?;
        self.store
            .team(team_id)
            .await?
            .ok_or_else(|| AppError::NotFound("team not found".into()))
    }

    pub async fn update(&self, req: UpdateTeam) -> Result<Team, AppError> {
        check(self.caller, Capability::TeamWrite, Some(&req.team_id))?;
        let existing = self.find(&req.team_id).await?;
        let mut f = TeamFields {
            team_alias: existing.team_alias.clone(),
            models: existing.models.clone(),
            unreadable: existing.unreadable,
            max_budget: existing.max_budget,
            budget_duration: existing.budget_duration,
            tpm_limit: existing.tpm_limit,
            rpm_limit: existing.rpm_limit,
            max_parallel_requests: existing.max_parallel_requests,
            blocked: existing.blocked,
            metadata: existing.metadata.clone(),
        };
        if let Some(v) = req.team_alias {
            f.team_alias = v;
        }
        if let Some(v) = req.models {
            f.models = v.unwrap_or_default();
            f.unreadable.models = false;
        }
        if let Some(v) = req.max_budget {
            f.max_budget = v;
        }
        if let Some(v) = req.budget_duration {
            f.budget_duration = v;
        }
        if let Some(v) = req.tpm_limit {
            f.tpm_limit = v.map(Limit::get);
        }
        if let Some(v) = req.rpm_limit {
            f.rpm_limit = v.map(Limit::get);
        }
        if let Some(v) = req.max_parallel_requests {
            f.max_parallel_requests = v.map(Limit::get);
        }
        if let Some(v) = req.blocked {
            f.blocked = v;
        }
        if let Some(v) = req.metadata {
            f.metadata = v.unwrap_or_else(|| serde_json::json!({}));
        }
        validate(&f)?;
        let team = self
            .store
            .update_team(&req.team_id, &f, &self.audit(AuditAction::TeamUpdate))
            .await?
            .ok_or_else(|| AppError::NotFound("team not found".into()))?;
        self.invalidator
            .publish(Change::Team(req.team_id.clone()))
            .await;
        Ok(team)
    }

    /// Deletes teams; a team that still has keys is a 409 unless `force` (which deletes
    /// its keys and their mappings too).
    pub async fn delete(&self, req: DeleteTeams) -> Result<Vec<String>, AppError> {
        let ids: Vec<String> = req
            .team_id
            .into_iter()
            .chain(req.team_ids.unwrap_or_default())
            .collect();
        if ids.is_empty() {
            return Err(AppError::invalid("missing field `team_id` or `team_ids`"));
        }
        for id in &ids {
            check(self.caller, Capability::TeamWrite, Some(id))?;
            self.find(id).await?;
            if !req.force && self.store.team_key_count(id).await? > 0 {
                return Err(AppError::Conflict(format!(
                    "team `{id}` still has keys; pass \"force\": true to delete them too"
                )));
            }
        }
        let mut deleted = Vec::new();
        for id in ids {
            if let Some(key_ids) = self
                .store
                .delete_team(&id, &self.audit(AuditAction::TeamDelete))
                .await?
            {
                if !key_ids.is_empty() {
                    // Only key ids are known here; the cache is keyed by hash.
                    self.invalidator.publish(Change::AllKeys).await;
                }
                self.invalidator.publish(Change::Team(id.clone())).await;
                deleted.push(id);
            }
        }
        Ok(deleted)
    }

    pub async fn list(&self, page: Page) -> Result<Vec<Team>, AppError> {
        if self.caller.is_admin() {
            return Ok(self.store.list_teams(page).await?.0);
        }
        // Team roles see their own team.
        let own = self.caller.team_id.clone().unwrap_or_default();
        Ok(vec![self.find(&own).await?])
    }
}
