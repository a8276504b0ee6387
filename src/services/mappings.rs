//! `MappingManager`: JWT claim → virtual key mappings (`/jwt/key/mapping/*`).
//!
//! Every change drops the affected resolutions from the shared mapping cache, so the
//! next request resolves afresh — on every instance at once when the cache is Redis.

use std::sync::Arc;

use chrono::Utc;
use serde::Deserialize;
use utoipa::{IntoParams, ToSchema};

use crate::auth::Caller;
use crate::auth::authorize::{Capability, check};
use crate::auth::mapping::MappingResolver;
use crate::error::AppError;
use crate::json::{double_option, is_blank};
use crate::store::{Audit, AuditAction, Mapping, Page, Store, StoreError, VirtualKey};

/// `POST /jwt/key/mapping/new`: `key` or `key_id` names the target key.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewMapping {
    pub jwt_claim_name: String,
    pub jwt_claim_value: String,
    /// Absent or empty: any issuer.
    #[serde(default)]
    pub jwt_issuer: Option<String>,
    #[serde(default)]
    pub key: Option<String>,
    #[serde(default)]
    pub key_id: Option<String>,
    #[serde(default)]
    pub description: Option<String>,
    /// Default `true`.
    #[serde(default)]
    pub is_active: Option<bool>,
}

/// `POST /jwt/key/mapping/update`. Absent fields stay as they are; `null` clears.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateMapping {
    pub id: String,
    #[serde(default)]
    pub jwt_claim_name: Option<String>,
    #[serde(default)]
    pub jwt_claim_value: Option<String>,
    #[serde(default, deserialize_with = "double_option")]
    pub jwt_issuer: Option<Option<String>>,
    #[serde(default)]
    pub key: Option<String>,
    #[serde(default)]
    pub key_id: Option<String>,
    #[serde(default, deserialize_with = "double_option")]
    pub description: Option<Option<String>>,
    #[serde(default)]
    pub is_active: Option<bool>,
}

/// Names one mapping (a JSON body, or the query of `/jwt/key/mapping/info`).
#[derive(Debug, Deserialize, ToSchema, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct MappingId {
    pub id: String,
}

fn check_text(field: &str, value: &str) -> Result<(), AppError> {
    if is_blank(value) || value.chars().count() > 512 {
        return Err(AppError::invalid(format!(
            "field `{field}` must be 1-512 characters"
        )));
    }
    Ok(())
}

/// Mapping management: long-lived, built from the store and the resolver whose cached
/// resolutions a change must drop.
pub struct MappingService {
    store: Arc<dyn Store>,
    resolver: Arc<MappingResolver>,
}

impl MappingService {
    pub fn new(store: Arc<dyn Store>, resolver: Arc<MappingResolver>) -> Self {
        Self { store, resolver }
    }

    /// The operations, as `caller` may perform them.
    pub fn for_caller<'a>(&'a self, caller: &'a Caller) -> MappingManager<'a> {
        MappingManager {
            store: self.store.as_ref(),
            resolver: &self.resolver,
            caller,
        }
    }
}

/// [`MappingService`]'s operations on behalf of one caller, authorised per the team of
/// the key a mapping points at.
pub struct MappingManager<'a> {
    store: &'a dyn Store,
    resolver: &'a MappingResolver,
    caller: &'a Caller,
}

impl MappingManager<'_> {
    fn audit(&self, action: AuditAction) -> Audit {
        Audit::new(self.caller.actor(), action)
    }

    /// The key a mapping is to point at, once the caller may write mappings for its team.
    async fn target_key(
        &self,
        key: Option<&str>,
        key_id: Option<&str>,
    ) -> Result<VirtualKey, AppError> {
        let key = super::keys::lookup(self.store, key, key_id)
            .await?
            .ok_or_else(|| AppError::invalid("field `key_id`: no such key"))?;
        check(
            self.caller,
            Capability::MappingWrite,
            key.team_id.as_deref(),
        )?;
        Ok(key)
    }

    /// A mapping the caller may read, with the team of the key it points at (which its
    /// authorisation depends on).
    async fn load(&self, id: &str) -> Result<(Mapping, Option<String>), AppError> {
        let mapping = self
            .store
            .mapping(id)
            .await?
            .ok_or_else(|| AppError::NotFound("mapping not found".into()))?;
        let team = self
            .store
            .key_by_id(&mapping.key_id)
            .await?
            .and_then(|k| k.team_id);
        check(self.caller, Capability::MappingRead, team.as_deref())?;
        Ok((mapping, team))
    }

    /// A mapping the caller may read and change.
    async fn load_for_write(&self, id: &str) -> Result<Mapping, AppError> {
        let (mapping, team) = self.load(id).await?;
        check(self.caller, Capability::MappingWrite, team.as_deref())?;
        Ok(mapping)
    }

    async fn forget(&self, mapping: &Mapping) {
        self.resolver.forget(mapping).await;
    }

    pub async fn create(&self, req: NewMapping) -> Result<Mapping, AppError> {
        check_text("jwt_claim_name", &req.jwt_claim_name)?;
        check_text("jwt_claim_value", &req.jwt_claim_value)?;
        let key = self
            .target_key(req.key.as_deref(), req.key_id.as_deref())
            .await?;
        let now = Utc::now();
        let mapping = Mapping {
            id: uuid::Uuid::new_v4().to_string(),
            jwt_claim_name: req.jwt_claim_name,
            jwt_claim_value: req.jwt_claim_value,
            jwt_issuer: req.jwt_issuer.unwrap_or_default(),
            key_id: key.key_id,
            description: req.description,
            is_active: req.is_active.unwrap_or(true),
            created_at: now,
            updated_at: now,
            created_by: Some(self.caller.label.to_string()),
            updated_by: Some(self.caller.label.to_string()),
        };
        let created = self
            .store
            .insert_mapping(&mapping, &self.audit(AuditAction::MappingNew))
            .await
            .map_err(conflict)?;
        self.forget(&created).await;
        Ok(created)
    }

    pub async fn find(&self, id: &str) -> Result<Mapping, AppError> {
        Ok(self.load(id).await?.0)
    }

    pub async fn update(&self, req: UpdateMapping) -> Result<Mapping, AppError> {
        let existing = self.load_for_write(&req.id).await?;
        let mut updated = existing.clone();
        if let Some(v) = req.jwt_claim_name {
            check_text("jwt_claim_name", &v)?;
            updated.jwt_claim_name = v;
        }
        if let Some(v) = req.jwt_claim_value {
            check_text("jwt_claim_value", &v)?;
            updated.jwt_claim_value = v;
        }
        if let Some(v) = req.jwt_issuer {
            updated.jwt_issuer = v.unwrap_or_default();
        }
        if req.key.is_some() || req.key_id.is_some() {
            let key = self
                .target_key(req.key.as_deref(), req.key_id.as_deref())
                .await?;
            updated.key_id = key.key_id;
        }
        if let Some(v) = req.description {
            updated.description = v;
        }
        if let Some(v) = req.is_active {
            updated.is_active = v;
        }
        updated.updated_at = Utc::now();
        updated.updated_by = Some(self.caller.label.to_string());
        let saved = self
            .store
            .update_mapping(&updated, &self.audit(AuditAction::MappingUpdate))
            .await
            .map_err(conflict)?
            .ok_or_else(|| AppError::NotFound("mapping not found".into()))?;
        self.forget(&existing).await;
        self.forget(&saved).await;
        Ok(saved)
    }

    pub async fn delete(&self, id: &str) -> Result<Mapping, AppError> {
        self.load_for_write(id).await?;
        let deleted = self
            .store
            .delete_mapping(id, &self.audit(AuditAction::MappingDelete))
            .await?
            .ok_or_else(|| AppError::NotFound("mapping not found".into()))?;
        self.forget(&deleted).await;
        Ok(deleted)
    }

    pub async fn list(&self, page: Page) -> Result<(Vec<Mapping>, u64), AppError> {
        check(self.caller, Capability::MappingRead, None)?;
        Ok(self.store.list_mappings(page).await?)
    }
}

fn conflict(e: StoreError) -> AppError {
    match e {
        StoreError::Conflict => AppError::Conflict(
            "a mapping for this issuer, claim name and value already exists".into(),
        ),
        StoreError::MissingReference => AppError::invalid("field `key_id`: no such key"),
        other => other.into(),
    }
}
