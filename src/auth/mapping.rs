//! `MappingResolver`: which virtual key an SSO identity runs as (SPEC §6.3).
//!
//! Runs only after every JWT check has passed. The resolution of (issuer, claim, value)
//! is cached in the shared cache under `jwt_key_mapping:{issuer}:{claim}:{value}`: a key
//! (stored as `k:<key hash>`), or the `__NO_MAPPING__` / `__JWT_PROXY_ADMIN__` sentinels.
//! A cached sentinel applies the unregistered policy without touching the mapping table.
//!
//! `auto_register` is race-safe across instances: every racer mints a key and tries to
//! insert the mapping; the unique (issuer, claim name, value) constraint picks one
//! winner, and each loser deletes the key it minted and runs as the winner's key.

use super::identity::Caller;
use super::jwt::JwtIdentity;
use super::secrets;
use crate::app::App;
use crate::config::UnregisteredPolicy;
use crate::http::AppError;
use crate::manage::mappings::{cache_key, cache_tag};
use crate::store::{KeyFields, Mapping, StoreError, VirtualKey};

pub const NO_MAPPING: &str = "__NO_MAPPING__";
pub const PROXY_ADMIN: &str = "__JWT_PROXY_ADMIN__";

/// Resolves the caller a verified identity acts as on proxied routes.
pub async fn resolve(app: &App, identity: JwtIdentity) -> Result<Caller, AppError> {
    let config = &app.config.jwt;
    let claim = config.virtual_key_claim.as_deref();
    let value = claim.and_then(|c| identity.claim_str(c));
    if identity.is_admin {
        // Admins skip mapping and limits; the sentinel spares later requests a lookup.
        if let (Some(claim), Some(value)) = (claim, &value) {
            let key = cache_key(&identity.issuer, claim, value);
            remember(app, &key, PROXY_ADMIN, claim, value).await;
        }
        return Ok(Caller::from_jwt(identity, None, None));
    }
    let Some(claim) = claim else {
        // No mapping configured: SSO callers run under their team's limits.
        return fallback(app, identity).await;
    };
    let Some(value) = value else {
        return match config.unregistered_policy {
            UnregisteredPolicy::Fallback => fallback(app, identity).await,
            UnregisteredPolicy::Reject | UnregisteredPolicy::AutoRegister => Err(
                AppError::JwtUnmapped(format!("the token has no `{claim}` claim to map to a key")),
            ),
        };
    };
    let key = cache_key(&identity.issuer, claim, &value);
    let cached = match app.mapping_cache.get(&key).await {
        Ok(v) => v,
        Err(e) => {
            tracing::warn!(error = %e, "mapping cache unavailable; asking the database");
            None
        }
    };
    match cached.as_deref() {
        Some(NO_MAPPING) => return unregistered(app, identity, claim, &value).await,
        Some(entry) if entry.starts_with("k:") => {
            if let Some(resolved) = app.keys.resolve(&entry[2..]).await? {
                return Ok(Caller::from_key(resolved.key, resolved.team));
            }
            // The key is gone (its mappings went with it): resolve afresh.
        }
        _ => {}
    }
    match mapped_key(app, &identity.issuer, claim, &value).await? {
        Some(found) => {
            remember(
                app,
                &key,
                &format!("k:{}", found.key.key_hash),
                claim,
                &value,
            )
            .await;
            Ok(Caller::from_key(found.key, found.team))
        }
        None => {
            remember(app, &key, NO_MAPPING, claim, &value).await;
            unregistered(app, identity, claim, &value).await
        }
    }
}

async fn remember(app: &App, key: &str, value: &str, claim: &str, claim_value: &str) {
    if let Err(e) = app
        .mapping_cache
        .set(key, value, &cache_tag(claim, claim_value))
        .await
    {
        tracing::warn!(error = %e, "could not cache a mapping resolution");
    }
}

/// The active mapping for (issuer, claim, value) — issuer-specific first, then any
/// issuer — and its key.
async fn mapped_key(
    app: &App,
    issuer: &str,
    claim: &str,
    value: &str,
) -> Result<Option<super::keys::ResolvedKey>, AppError> {
    let mappings = app.store.find_mappings(issuer, claim, value).await?;
    let chosen = mappings
        .iter()
        .filter(|m| m.is_active)
        .min_by_key(|m| if m.jwt_issuer == issuer { 0 } else { 1 });
    let Some(mapping) = chosen else {
        return Ok(None);
    };
    let Some(key) = app.store.key_by_id(&mapping.key_id).await? else {
        return Ok(None);
    };
    app.keys.resolve(&key.key_hash).await
}

async fn unregistered(
    app: &App,
    identity: JwtIdentity,
    claim: &str,
    value: &str,
) -> Result<Caller, AppError> {
    match app.config.jwt.unregistered_policy {
        UnregisteredPolicy::Reject => Err(AppError::JwtUnmapped(format!(
            "no virtual key is mapped to {claim} `{value}`"
        ))),
        UnregisteredPolicy::Fallback => fallback(app, identity).await,
        UnregisteredPolicy::AutoRegister => auto_register(app, identity, claim, value).await,
    }
}

/// Runs as the JWT identity under its team's limits; no team → 403.
async fn fallback(app: &App, identity: JwtIdentity) -> Result<Caller, AppError> {
    let no_team = || AppError::Forbidden("the token maps to no key and no known team".into());
    let team_id = identity.team_id.clone().ok_or_else(no_team)?;
    let team = app.keys.team(&team_id).await?.ok_or_else(no_team)?;
    Ok(Caller::from_jwt(identity, Some(team), None))
}

/// Mints a key (and its mapping) for a new identity, race-safely.
async fn auto_register(
    app: &App,
    identity: JwtIdentity,
    claim: &str,
    value: &str,
) -> Result<Caller, AppError> {
    let config = &app.config.jwt;
    if identity.team_id.is_none() && config.team_id_claim.is_some() {
        // Never mint a key outside the team structure the operator asked for.
        return Err(AppError::Forbidden("the token carries no team".into()));
    }
    if let Some(team) = &identity.team_id
        && app.keys.team(team).await?.is_none()
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
    let minted: VirtualKey = app
        .store
        .insert_key(
            &key_id,
            &hash,
            &secrets::display_name(&plaintext),
            &fields,
            Some("auto_register".into()),
        )
        .await?;
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
        created_by: Some("auto_register".into()),
        updated_by: Some("auto_register".into()),
    };
    let cache = cache_key(&identity.issuer, claim, value);
    match app.store.insert_mapping(&mapping).await {
        Ok(_) => {
            tracing::info!(key_id = %minted.key_id, claim, "auto-registered a key for an SSO identity");
            remember(app, &cache, &format!("k:{hash}"), claim, value).await;
            let resolved = app.keys.resolve(&hash).await?.ok_or_else(|| {
                AppError::Unavailable(anyhow::anyhow!("auto-registered key vanished"))
            })?;
            Ok(Caller::from_key(resolved.key, resolved.team))
        }
        Err(StoreError::Conflict) => {
            // Another request won the race: drop ours, run as the winner's key.
            app.store.delete_keys(std::slice::from_ref(&key_id)).await?;
            match mapped_key(app, &identity.issuer, claim, value).await? {
                Some(winner) => {
                    remember(
                        app,
                        &cache,
                        &format!("k:{}", winner.key.key_hash),
                        claim,
                        value,
                    )
                    .await;
                    Ok(Caller::from_key(winner.key, winner.team))
                }
                None => Err(AppError::MappingConflict),
            }
        }
        Err(other) => {
            let _ = app.store.delete_keys(std::slice::from_ref(&key_id)).await;
            Err(other.into())
        }
    }
}
