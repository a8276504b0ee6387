//! `MappingResolver`: which virtual key an SSO identity runs as (SPEC §6.3).
//!
//! Runs only after every JWT check has passed. The resolution of (issuer, claim, value)
//! is cached in the shared cache under `jwt_key_mapping:{issuer}:{claim}:{value}`: a key
//! (stored as `k:<key hash>`), or the `__NO_MAPPING__` / `__JWT_PROXY_ADMIN__` sentinels.
//! A cached sentinel applies the unregistered policy without touching the mapping table.
//!
//! `auto_register` is race-safe across instances: every racer mints a key and tries to
//! insert the mapping; the unique (issuer, claim name, value) constraint picks one
//! winner — the key and its mapping are written in one transaction, so a loser's key
//! rolls back with its mapping — and each loser runs as the winner's key.

use std::sync::Arc;

use super::identity::Caller;
use super::jwt::JwtIdentity;
use super::keys::{KeyResolver, ResolvedKey};
use super::secrets;
use crate::config::{AutoRegisterLimits, JwtConfig, UnregisteredPolicy};
use crate::error::AppError;
use crate::store::shared_cache::SharedCache;
use crate::store::{Audit, AuditAction, KeyFields, Mapping, NewKey, Store, StoreError};

pub const NO_MAPPING: &str = "__NO_MAPPING__";
/// `created_by` of auto-registered keys and mappings.
const AUTO_REGISTER: &str = "auto_register";
/// The audit log's actor for auto-registration (SPEC §4.2).
pub const AUTO_REGISTER_ACTOR: &str = "system:auto_register";
pub const PROXY_ADMIN: &str = "__JWT_PROXY_ADMIN__";

/// The shared-cache key of one resolution (SPEC §6.3).
pub fn cache_key(issuer: &str, claim: &str, value: &str) -> String {
    format!("jwt_key_mapping:{issuer}:{claim}:{value}")
}

/// The tag grouping every issuer's resolution of one (claim, value).
pub fn cache_tag(claim: &str, value: &str) -> String {
    format!("jwt_key_mapping:{claim}:{value}")
}

/// The parts of `jwt.*` that decide a mapping.
#[derive(Debug, Clone)]
pub struct MappingPolicy {
    /// `jwt.virtual_key_claim`: `None` means SSO callers run under their team's limits.
    pub claim: Option<String>,
    pub unregistered: UnregisteredPolicy,
    /// `jwt.team_id_claim` is set: a token without a team may not mint a key.
    pub team_claim_required: bool,
    pub auto_register: AutoRegisterLimits,
}

impl MappingPolicy {
    pub fn from_config(config: &JwtConfig) -> Self {
        Self {
            claim: config.virtual_key_claim.clone(),
            unregistered: config.unregistered_policy,
            team_claim_required: config.team_id_claim.is_some(),
            auto_register: config.auto_register.clone(),
        }
    }
}

/// Resolves which caller a verified SSO identity acts as on proxied routes.
pub struct MappingResolver {
    policy: MappingPolicy,
    store: Arc<dyn Store>,
    keys: Arc<KeyResolver>,
    cache: SharedCache,
}

impl MappingResolver {
    pub fn new(
        policy: MappingPolicy,
        store: Arc<dyn Store>,
        keys: Arc<KeyResolver>,
        cache: SharedCache,
    ) -> Self {
        Self {
            policy,
            store,
            keys,
            cache,
        }
    }

    /// The shared cache of resolutions (Redis when configured, else in process).
    pub fn cache(&self) -> &SharedCache {
        &self.cache
    }

    /// Resolves the caller a verified identity acts as on proxied routes.
    pub async fn resolve(&self, identity: JwtIdentity) -> Result<Caller, AppError> {
        let config = &self.policy;
        let claim = config.claim.as_deref();
        let value = claim.and_then(|c| identity.claim_str(c));
        if identity.is_admin {
            // Admins skip mapping and limits; the sentinel spares later requests a lookup.
            if let (Some(claim), Some(value)) = (claim, &value) {
                let key = cache_key(&identity.issuer, claim, value);
                self.remember(&key, PROXY_ADMIN, claim, value).await;
            }
            return Ok(Caller::from_jwt(identity, None, None));
        }
        let Some(claim) = claim else {
            // No mapping configured: SSO callers run under their team's limits.
            return self.fallback(identity).await;
        };
        let Some(value) = value else {
            return match config.unregistered {
                UnregisteredPolicy::Fallback => self.fallback(identity).await,
                UnregisteredPolicy::Reject | UnregisteredPolicy::AutoRegister => {
                    Err(AppError::JwtUnmapped(format!(
                        "the token has no `{claim}` claim to map to a key"
                    )))
                }
            };
        };
        let key = cache_key(&identity.issuer, claim, &value);
        let cached = match self.cache.get(&key).await {
            Ok(v) => v,
            Err(e) => {
                tracing::warn!(error = %e, "mapping cache unavailable; asking the database");
                None
            }
        };
        match cached.as_deref() {
            Some(NO_MAPPING) => return self.unregistered(identity, claim, &value).await,
            Some(entry) if entry.starts_with("k:") => {
                if let Some(resolved) = self.keys.resolve(&entry[2..]).await? {
                    return Ok(Caller::from_key(resolved.key, resolved.team));
                }
                // The key is gone (its mappings went with it): resolve afresh.
            }
            _ => {}
        }
        match self.mapped_key(&identity.issuer, claim, &value).await? {
            Some(found) => {
                self.remember(&key, &format!("k:{}", found.key.key_hash), claim, &value)
                    .await;
                Ok(Caller::from_key(found.key, found.team))
            }
            None => {
                self.remember(&key, NO_MAPPING, claim, &value).await;
                self.unregistered(identity, claim, &value).await
            }
        }
    }

    async fn remember(&self, key: &str, value: &str, claim: &str, claim_value: &str) {
        if let Err(e) = self
            .cache
            .set(key, value, &cache_tag(claim, claim_value))
            .await
        {
            tracing::warn!(error = %e, "could not cache a mapping resolution");
        }
    }

    /// The active mapping for (issuer, claim, value) — issuer-specific first, then any
    /// issuer — and its key.
    async fn mapped_key(
        &self,
        issuer: &str,
        claim: &str,
        value: &str,
    ) -> Result<Option<ResolvedKey>, AppError> {
        let mappings = self.store.find_mappings(issuer, claim, value).await?;
        let chosen = mappings
            .iter()
            .filter(|m| m.is_active)
            .min_by_key(|m| if m.jwt_issuer == issuer { 0 } else { 1 });
        let Some(mapping) = chosen else {
            return Ok(None);
        };
        let Some(key) = self.store.key_by_id(&mapping.key_id).await? else {
            return Ok(None);
        };
        self.keys.resolve(&key.key_hash).await
    }

    async fn unregistered(
        &self,
        identity: JwtIdentity,
        claim: &str,
        value: &str,
    ) -> Result<Caller, AppError> {
        match self.policy.unregistered {
            UnregisteredPolicy::Reject => Err(AppError::JwtUnmapped(format!(
                "no virtual key is mapped to {claim} `{value}`"
            ))),
            UnregisteredPolicy::Fallback => self.fallback(identity).await,
            UnregisteredPolicy::AutoRegister => self.auto_register(identity, claim, value).await,
        }
    }

    /// Runs as the JWT identity under its team's limits; no team → 403.
    async fn fallback(&self, identity: JwtIdentity) -> Result<Caller, AppError> {
        let no_team = || AppError::Forbidden("the token maps to no key and no known team".into());
        let team_id = identity.team_id.clone().ok_or_else(no_team)?;
        let team = self.keys.team(&team_id).await?.ok_or_else(no_team)?;
        Ok(Caller::from_jwt(identity, Some(team), None))
    }

    /// Mints a key (and its mapping) for a new identity, race-safely.
    async fn auto_register(
        &self,
        identity: JwtIdentity,
        claim: &str,
        value: &str,
    ) -> Result<Caller, AppError> {
        let config = &self.policy;
        if identity.team_id.is_none() && config.team_claim_required {
            // Never mint a key outside the team structure the operator asked for.
            return Err(AppError::Forbidden("the token carries no team".into()));
        }
        if let Some(team) = &identity.team_id
            && self.keys.team(team).await?.is_none()
        {
            return Err(AppError::Forbidden("the token's team is not known".into()));
        }
        let limits = &config.auto_register;
        let fields = KeyFields {
            key_alias: Some(format!("{claim}:{value}")),
            team_id: identity.team_id.clone(),
            user_id: identity.user_id.clone(),
            org_id: identity.org_id.clone(),
            models: limits.models.clone(),
            allowed_routes: Vec::new(),
            unreadable: Default::default(),
            max_budget: limits.max_budget,
            budget_duration: limits.budget_duration,
            tpm_limit: limits.tpm_limit,
            rpm_limit: limits.rpm_limit,
            max_parallel_requests: limits.max_parallel_requests,
            expires: limits.duration.map(|d| chrono::Utc::now() + d.to_chrono()),
            blocked: false,
            metadata: serde_json::json!({"auto_registered": true, "jwt_issuer": identity.issuer}),
        };
        let plaintext = secrets::mint_key();
        let hash = secrets::hash_secret(&plaintext);
        let key_id = uuid::Uuid::new_v4().to_string();
        let now = chrono::Utc::now();
        let mapping = Mapping {
            id: uuid::Uuid::new_v4().to_string(),
            jwt_claim_name: claim.to_string(),
            jwt_claim_value: value.to_string(),
            jwt_issuer: identity.issuer.clone(),
            key_id: key_id.clone(),
            description: Some("auto-registered".into()),
            is_active: true,
            created_at: now,
            updated_at: now,
            created_by: Some(AUTO_REGISTER.into()),
            updated_by: Some(AUTO_REGISTER.into()),
        };
        let cache = cache_key(&identity.issuer, claim, value);
        let new_key = NewKey {
            key_id: key_id.clone(),
            key_hash: hash.clone(),
            key_name: secrets::display_name(&plaintext),
            fields,
            created_by: Some(AUTO_REGISTER.into()),
        };
        // The key, its mapping and both audit rows commit together or not at all.
        let audit = Audit::new(AUTO_REGISTER_ACTOR, AuditAction::KeyGenerate);
        match self.store.register_key(&new_key, &mapping, &audit).await {
            Ok(minted) => {
                tracing::info!(key_id = %minted.key_id, claim, "auto-registered a key for an SSO identity");
                self.remember(&cache, &format!("k:{hash}"), claim, value)
                    .await;
                let resolved = self.keys.resolve(&hash).await?.ok_or_else(|| {
                    AppError::Unavailable(anyhow::anyhow!("auto-registered key vanished"))
                })?;
                Ok(Caller::from_key(resolved.key, resolved.team))
            }
            Err(StoreError::Conflict) => {
                // Another request won the race (ours rolled back whole): run as the
                // winner's key.
                match self.mapped_key(&identity.issuer, claim, value).await? {
                    Some(winner) => {
                        self.remember(&cache, &format!("k:{}", winner.key.key_hash), claim, value)
                            .await;
                        Ok(Caller::from_key(winner.key, winner.team))
                    }
                    None => Err(AppError::MappingConflict),
                }
            }
            Err(other) => Err(other.into()),
        }
    }

    /// Drops the cached resolutions a mapping affects: one issuer's, or every issuer's
    /// when the mapping applies to any issuer.
    pub async fn forget(&self, mapping: &Mapping) {
        let dropped = if mapping.jwt_issuer.is_empty() {
            self.cache
                .delete_tag(&cache_tag(
                    &mapping.jwt_claim_name,
                    &mapping.jwt_claim_value,
                ))
                .await
        } else {
            self.cache
                .delete(&cache_key(
                    &mapping.jwt_issuer,
                    &mapping.jwt_claim_name,
                    &mapping.jwt_claim_value,
                ))
                .await
        };
        if let Err(e) = dropped {
            tracing::warn!(error = %e, "could not drop a cached mapping resolution");
        }
    }
}
