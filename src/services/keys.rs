//! `KeyManager`: creating, changing and deleting virtual keys.

use std::sync::Arc;

use chrono::Utc;
use serde::Deserialize;
use utoipa::{IntoParams, ToSchema};

use crate::auth::Caller;
use crate::auth::authorize::{Capability, check};
use crate::auth::invalidation::{Change, Invalidator};
use crate::auth::secrets;
// Named so utoipa does not take it for chrono's `Duration` (see `http::openapi`).
use crate::config::Duration as HumanDuration;
use crate::error::AppError;
use crate::json::{Limit, double_option, is_blank};
use crate::store::{Audit, AuditAction, KeyFields, KeyFilter, Page, Store, Unreadable, VirtualKey};

/// `key` (plaintext) or `key_id`: how every key route names its key.
#[derive(Debug, Default, Deserialize, ToSchema, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct KeyRef {
    /// The key itself (`sk-…`).
    #[serde(default)]
    pub key: Option<String>,
    /// The key's stable id.
    #[serde(default)]
    pub key_id: Option<String>,
}

/// `POST /key/generate`. Every field is optional.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct GenerateKey {
    pub key_alias: Option<String>,
    /// Models the key may use; absent or empty means any model.
    pub models: Option<Vec<String>>,
    /// Spend allowed per budget period (non-negative).
    pub max_budget: Option<f64>,
    /// Length of a budget period, e.g. `30d`.
    pub budget_duration: Option<HumanDuration>,
    /// Tokens per minute.
    pub tpm_limit: Option<Limit>,
    /// Requests per minute.
    pub rpm_limit: Option<Limit>,
    pub max_parallel_requests: Option<Limit>,
    /// Lifetime of the key from now; sets `expires`.
    pub duration: Option<HumanDuration>,
    /// A JSON object kept with the key.
    #[schema(value_type = Option<Object>)]
    pub metadata: Option<serde_json::Value>,
    /// An existing team.
    pub team_id: Option<String>,
    pub user_id: Option<String>,
    pub org_id: Option<String>,
    /// Exact paths (`/api/chat`) or prefixes ending in `*`.
    pub allowed_routes: Option<Vec<String>>,
    pub blocked: Option<bool>,
}

/// `POST /key/regenerate`: `key` or `key_id` names the key.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RegenerateKey {
    /// The key itself (`sk-…`).
    #[serde(default)]
    pub key: Option<String>,
    /// The key's stable id.
    #[serde(default)]
    pub key_id: Option<String>,
    /// How long the replaced plaintext keeps working (e.g. `24h`), so clients can roll
    /// over without an outage. Absent: it stops at once. Any older plaintext still in
    /// its grace period stops at once either way.
    #[serde(default)]
    pub grace_period: Option<HumanDuration>,
}

/// `POST /key/update`: `key` or `key_id` names the key. Absent fields stay as they are;
/// `null` clears.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateKey {
    #[serde(default)]
    pub key: Option<String>,
    #[serde(default)]
    pub key_id: Option<String>,
    #[serde(default, deserialize_with = "double_option")]
    pub key_alias: Option<Option<String>>,
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
    #[serde(default, deserialize_with = "double_option")]
    pub duration: Option<Option<HumanDuration>>,
    #[serde(default, deserialize_with = "double_option")]
    #[schema(value_type = Option<Object>)]
    pub metadata: Option<Option<serde_json::Value>>,
    #[serde(default, deserialize_with = "double_option")]
    pub team_id: Option<Option<String>>,
    #[serde(default, deserialize_with = "double_option")]
    pub user_id: Option<Option<String>>,
    #[serde(default, deserialize_with = "double_option")]
    pub org_id: Option<Option<String>>,
    #[serde(default, deserialize_with = "double_option")]
    pub allowed_routes: Option<Option<Vec<String>>>,
    #[serde(default)]
    pub blocked: Option<bool>,
}

/// `POST /key/delete`: any mix of `key`, `key_id` and LiteLLM's lists `keys` / `key_ids`.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DeleteKeys {
    #[serde(default)]
    pub key: Option<String>,
    #[serde(default)]
    pub key_id: Option<String>,
    #[serde(default)]
    pub keys: Option<Vec<String>>,
    #[serde(default)]
    pub key_ids: Option<Vec<String>>,
}

#[derive(Debug, Default, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ListKeys {
    pub team_id: Option<String>,
    pub user_id: Option<String>,
    /// 1-based page number (default 1).
    pub page: Option<u64>,
    /// Page size, 1-1000 (default 50).
    pub size: Option<u64>,
}

fn check_budget(value: Option<f64>) -> Result<(), AppError> {
    match value {
        Some(b) if !(b.is_finite() && b >= 0.0) => Err(AppError::invalid(
            "field `max_budget` must be a non-negative number",
        )),
        _ => Ok(()),
    }
}

fn check_routes(routes: &[String]) -> Result<(), AppError> {
    if routes.iter().any(|r| !r.starts_with('/')) {
        return Err(AppError::invalid(
            "field `allowed_routes` entries must start with `/`",
        ));
    }
    Ok(())
}

fn check_models(models: &[String]) -> Result<(), AppError> {
    if models.iter().any(|m| is_blank(m)) {
        return Err(AppError::invalid(
            "field `models` must not contain empty names",
        ));
    }
    Ok(())
}

fn check_metadata(metadata: &serde_json::Value) -> Result<(), AppError> {
    if !metadata.is_object() {
        return Err(AppError::invalid("field `metadata` must be an object"));
    }
    Ok(())
}

/// A key as returned by the API (never its hash), plus the plaintext when just minted.
#[derive(Debug, serde::Serialize, ToSchema)]
pub struct IssuedKey {
    /// The plaintext key, shown only this once.
    pub key: String,
    #[serde(flatten)]
    pub info: VirtualKey,
}

/// Key management: long-lived, built from the store and the invalidator.
pub struct KeyService {
    store: Arc<dyn Store>,
    invalidator: Arc<Invalidator>,
}

impl KeyService {
    pub fn new(store: Arc<dyn Store>, invalidator: Arc<Invalidator>) -> Self {
        Self { store, invalidator }
    }

    /// The operations, as `caller` may perform them.
    pub fn for_caller<'a>(&'a self, caller: &'a Caller) -> KeyManager<'a> {
        KeyManager {
            store: self.store.as_ref(),
            invalidator: &self.invalidator,
            caller,
        }
    }
}

/// [`KeyService`]'s operations on behalf of one caller, authorised per key's team.
pub struct KeyManager<'a> {
    store: &'a dyn Store,
    invalidator: &'a Invalidator,
    caller: &'a Caller,
}

impl KeyManager<'_> {
    fn audit(&self, action: AuditAction) -> Audit {
        Audit::new(self.caller.actor(), action)
    }

    async fn ensure_team(&self, team_id: Option<&str>) -> Result<(), AppError> {
        if let Some(team) = team_id
            && self.store.team(team).await?.is_none()
        {
            return Err(AppError::invalid(format!(
                "field `team_id`: team `{team}` does not exist"
            )));
        }
        Ok(())
    }

    pub async fn generate(&self, req: GenerateKey) -> Result<IssuedKey, AppError> {
        check(self.caller, Capability::KeyWrite, req.team_id.as_deref())?;
        check_budget(req.max_budget)?;
        let models = req.models.unwrap_or_default();
        check_models(&models)?;
        let allowed_routes = req.allowed_routes.unwrap_or_default();
        check_routes(&allowed_routes)?;
        let metadata = req.metadata.unwrap_or_else(|| serde_json::json!({}));
        check_metadata(&metadata)?;
        self.ensure_team(req.team_id.as_deref()).await?;
        let fields = KeyFields {
            key_alias: req.key_alias,
            team_id: req.team_id,
            user_id: req.user_id,
            org_id: req.org_id,
            models,
            allowed_routes,
            max_budget: req.max_budget,
            budget_duration: req.budget_duration,
            tpm_limit: req.tpm_limit.map(Limit::get),
            rpm_limit: req.rpm_limit.map(Limit::get),
            max_parallel_requests: req.max_parallel_requests.map(Limit::get),
            expires: req.duration.map(|d| Utc::now() + d.to_chrono()),
            blocked: req.blocked.unwrap_or(false),
            metadata,
            unreadable: Unreadable::default(),
        };
        self.mint(&fields).await
    }

    /// Creates a key with `fields`; also used by auto-registration.
    pub async fn mint(&self, fields: &KeyFields) -> Result<IssuedKey, AppError> {
        let key = secrets::mint_key();
        let hash = secrets::hash_secret(&key);
        let key_id = uuid::Uuid::new_v4().to_string();
        let info = self
            .store
            .insert_key(
                &key_id,
                &hash,
                &secrets::display_name(&key),
                fields,
                Some(self.caller.label.to_string()),
                &self.audit(AuditAction::KeyGenerate),
            )
            .await?;
        self.invalidator.publish(Change::Key(hash.clone())).await;
        tracing::info!(key_id = %info.key_id, by = %self.caller.label, "key created");
        Ok(IssuedKey { key, info })
    }

    /// Finds the key named by `key` or `key_id`; 404 when it does not exist.
    pub async fn find(
        &self,
        key: Option<&str>,
        key_id: Option<&str>,
    ) -> Result<VirtualKey, AppError> {
        lookup(self.store, key, key_id)
            .await?
            .ok_or_else(|| AppError::NotFound("key not found".into()))
    }

    pub async fn info(
        &self,
        key: Option<&str>,
        key_id: Option<&str>,
    ) -> Result<VirtualKey, AppError> {
        let found = self.find(key, key_id).await?;
        check(self.caller, Capability::KeyRead, found.team_id.as_deref())?;
        Ok(found)
    }

    pub async fn update(&self, req: UpdateKey) -> Result<VirtualKey, AppError> {
        let existing = self.find(req.key.as_deref(), req.key_id.as_deref()).await?;
        check(
            self.caller,
            Capability::KeyWrite,
            existing.team_id.as_deref(),
        )?;
        let mut f = fields_of(&existing);
        if let Some(v) = req.key_alias {
            f.key_alias = v;
        }
        if let Some(v) = req.models {
            f.models = v.unwrap_or_default();
            f.unreadable.models = false;
            check_models(&f.models)?;
        }
        if let Some(v) = req.max_budget {
            check_budget(v)?;
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
        if let Some(v) = req.duration {
            f.expires = v.map(|d| Utc::now() + d.to_chrono());
        }
        if let Some(v) = req.metadata {
            f.metadata = v.unwrap_or_else(|| serde_json::json!({}));
            check_metadata(&f.metadata)?;
        }
        if let Some(v) = req.team_id {
            self.ensure_team(v.as_deref()).await?;
            check(self.caller, Capability::KeyWrite, v.as_deref())?;
            f.team_id = v;
        }
        if let Some(v) = req.user_id {
            f.user_id = v;
        }
        if let Some(v) = req.org_id {
            f.org_id = v;
        }
        if let Some(v) = req.allowed_routes {
            f.allowed_routes = v.unwrap_or_default();
            f.unreadable.allowed_routes = false;
            check_routes(&f.allowed_routes)?;
        }
        if let Some(v) = req.blocked {
            f.blocked = v;
        }
        self.save(&existing, &f, AuditAction::KeyUpdate).await
    }

    async fn save(
        &self,
        existing: &VirtualKey,
        fields: &KeyFields,
        action: AuditAction,
    ) -> Result<VirtualKey, AppError> {
        let updated = self
            .store
            .update_key(&existing.key_id, fields, &self.audit(action))
            .await?
            .ok_or_else(|| AppError::NotFound("key not found".into()))?;
        self.invalidator
            .publish(Change::Key(existing.key_hash.clone()))
            .await;
        Ok(updated)
    }

    pub async fn set_blocked(
        &self,
        key_ref: KeyRef,
        blocked: bool,
    ) -> Result<VirtualKey, AppError> {
        let existing = self
            .find(key_ref.key.as_deref(), key_ref.key_id.as_deref())
            .await?;
        check(
            self.caller,
            Capability::KeyWrite,
            existing.team_id.as_deref(),
        )?;
        let mut f = fields_of(&existing);
        f.blocked = blocked;
        let action = if blocked {
            AuditAction::KeyBlock
        } else {
            AuditAction::KeyUnblock
        };
        self.save(&existing, &f, action).await
    }

    pub async fn regenerate(&self, req: RegenerateKey) -> Result<IssuedKey, AppError> {
        let existing = self.find(req.key.as_deref(), req.key_id.as_deref()).await?;
        check(
            self.caller,
            Capability::KeyWrite,
            existing.team_id.as_deref(),
        )?;
        let key = secrets::mint_key();
        let hash = secrets::hash_secret(&key);
        let grace_until = req.grace_period.map(|d| Utc::now() + d.to_chrono());
        let (before, info) = self
            .store
            .rehash_key(
                &existing.key_id,
                &hash,
                &secrets::display_name(&key),
                grace_until,
                &self.audit(AuditAction::KeyRegenerate),
            )
            .await?
            .ok_or_else(|| AppError::NotFound("key not found".into()))?;
        // Both older secrets' entries (the one now in grace must learn its deadline, the
        // one whose grace just ended must stop), and the new secret's negative entry.
        for old in before.hashes() {
            self.invalidator.publish(Change::Key(old.to_string())).await;
        }
        self.invalidator.publish(Change::Key(hash.clone())).await;
        Ok(IssuedKey { key, info })
    }

    pub async fn delete(&self, req: DeleteKeys) -> Result<Vec<String>, AppError> {
        let mut targets = Vec::new();
        let plain = req.key.into_iter().chain(req.keys.unwrap_or_default());
        for k in plain {
            targets.push(self.find(Some(&k), None).await?);
        }
        for id in req
            .key_id
            .into_iter()
            .chain(req.key_ids.unwrap_or_default())
        {
            targets.push(self.find(None, Some(&id)).await?);
        }
        if targets.is_empty() {
            return Err(AppError::invalid(
                "missing field `keys`, `key_ids`, `key` or `key_id`",
            ));
        }
        for key in &targets {
            check(self.caller, Capability::KeyWrite, key.team_id.as_deref())?;
        }
        let ids: Vec<String> = targets.iter().map(|k| k.key_id.clone()).collect();
        let deleted = self
            .store
            .delete_keys(&ids, &self.audit(AuditAction::KeyDelete))
            .await?;
        for key in &deleted {
            for hash in key.hashes() {
                self.invalidator
                    .publish(Change::Key(hash.to_string()))
                    .await;
            }
        }
        Ok(deleted.into_iter().map(|k| k.key_id).collect())
    }

    pub async fn list(&self, q: ListKeys) -> Result<(Vec<VirtualKey>, u64, Page), AppError> {
        let page = super::paging::page(q.page, q.size)?;
        // Team roles see their own team only.
        let team_id = if self.caller.is_admin() {
            q.team_id
        } else {
            let own = self.caller.team_id.clone();
            check(
                self.caller,
                Capability::KeyRead,
                q.team_id.as_deref().or(own.as_deref()),
            )?;
            own
        };
        let filter = KeyFilter {
            team_id,
            user_id: q.user_id,
        };
        let (keys, total) = self.store.list_keys(&filter, page).await?;
        Ok((keys, total, page))
    }
}

/// The key named by `key` (plaintext) or `key_id` — how every route names a key.
/// `key_id` wins when both are given; neither is a 400.
pub async fn lookup(
    store: &dyn Store,
    key: Option<&str>,
    key_id: Option<&str>,
) -> Result<Option<VirtualKey>, AppError> {
    Ok(match (key, key_id) {
        (_, Some(id)) => store.key_by_id(id).await?,
        (Some(k), None) => store.key_by_hash(&secrets::hash_secret(k)).await?,
        (None, None) => return Err(AppError::invalid("missing field `key` or `key_id`")),
    })
}

fn fields_of(k: &VirtualKey) -> KeyFields {
    KeyFields {
        key_alias: k.key_alias.clone(),
        team_id: k.team_id.clone(),
        user_id: k.user_id.clone(),
        org_id: k.org_id.clone(),
        models: k.models.clone(),
        allowed_routes: k.allowed_routes.clone(),
        unreadable: k.unreadable,
        max_budget: k.max_budget,
        budget_duration: k.budget_duration,
        tpm_limit: k.tpm_limit,
        rpm_limit: k.rpm_limit,
        max_parallel_requests: k.max_parallel_requests,
        expires: k.expires,
        blocked: k.blocked,
        metadata: k.metadata.clone(),
    }
}
