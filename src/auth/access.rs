//! Per-request access checks of SPEC §5.2 (1–4): expiry, blocking, routes and models.

use chrono::{DateTime, Utc};

use super::identity::Caller;
use crate::error::AppError;

/// Check 2: expired → 401 `key_expired`; blocked key or team → 403 `key_blocked`.
pub fn check_key_state(caller: &Caller, now: DateTime<Utc>) -> Result<(), AppError> {
    if let Some(key) = &caller.key {
        if key.expires.is_some_and(|e| e <= now) {
            return Err(AppError::KeyExpired);
        }
        if key.blocked {
            return Err(AppError::KeyBlocked);
        }
    }
    if caller.team.as_ref().is_some_and(|t| t.blocked) {
        return Err(AppError::KeyBlocked);
    }
    Ok(())
}

/// Check 3: the key's `allowed_routes` (exact or `prefix*`), and admin-only routes.
pub fn check_route(caller: &Caller, path: &str, admin_only: bool) -> Result<(), AppError> {
    if admin_only && !caller.is_admin() {
        return Err(AppError::RouteNotAllowed);
    }
    if let Some(key) = &caller.key
        && !key.allowed_routes.is_empty()
        && !key.allowed_routes.iter().any(|r| route_matches(r, path))
    {
        return Err(AppError::RouteNotAllowed);
    }
    Ok(())
}

fn route_matches(pattern: &str, path: &str) -> bool {
    match pattern.strip_suffix('*') {
        Some(prefix) => path.starts_with(prefix),
        None => pattern == path,
    }
}

/// The model patterns that bound this caller: key's if non-empty, else team's if
/// non-empty, else `None` (everything).
pub fn model_patterns(caller: &Caller) -> Option<&[String]> {
    if caller.is_admin() {
        return None;
    }
    if !caller.models.is_empty() {
        return Some(&caller.models);
    }
    if let Some(key) = &caller.key
        && !key.models.is_empty()
    {
        return Some(&key.models);
    }
    match &caller.team {
        Some(team) if !team.models.is_empty() => Some(&team.models),
        _ => None,
    }
}

/// Check 4: 403 `model_not_allowed` unless the model matches.
pub fn check_model(caller: &Caller, model: &str) -> Result<(), AppError> {
    match model_patterns(caller) {
        Some(patterns) if !model_allowed(patterns, model) => {
            Err(AppError::ModelNotAllowed(model.to_string()))
        }
        _ => Ok(()),
    }
}

/// Exact match, `name` ≡ `name:latest`, or a trailing `*` wildcard.
pub fn model_allowed(patterns: &[String], model: &str) -> bool {
    let model = normalize(model);
    patterns
        .iter()
        .any(|pattern| match pattern.strip_suffix('*') {
            Some(prefix) => model.starts_with(prefix),
            None => normalize(pattern) == model,
        })
}

fn normalize(model: &str) -> &str {
    model.strip_suffix(":latest").unwrap_or(model)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn exact_and_latest_are_equivalent() {
        assert!(model_allowed(&p(&["llama3.2"]), "llama3.2:latest"));
        assert!(model_allowed(&p(&["llama3.2:latest"]), "llama3.2"));
        assert!(model_allowed(&p(&["qwen2.5:7b"]), "qwen2.5:7b"));
        assert!(!model_allowed(&p(&["qwen2.5:7b"]), "qwen2.5:14b"));
        assert!(!model_allowed(&p(&["llama3.2"]), "llama3.2:1b"));
    }

    #[test]
    fn trailing_wildcard() {
        assert!(model_allowed(&p(&["llama3.1:*"]), "llama3.1:8b"));
        assert!(!model_allowed(&p(&["llama3.1:*"]), "llama3.2:1b"));
        assert!(model_allowed(&p(&["*"]), "anything"));
    }

    #[test]
    fn routes_exact_and_prefix() {
        assert!(route_matches("/api/chat", "/api/chat"));
        assert!(!route_matches("/api/chat", "/api/chats"));
        assert!(route_matches("/v1/*", "/v1/models/x"));
        assert!(!route_matches("/v1/*", "/api/chat"));
    }
}
