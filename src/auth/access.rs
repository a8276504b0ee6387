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
        && (key.unreadable.allowed_routes
            || (!key.allowed_routes.is_empty()
                && !key.allowed_routes.iter().any(|r| route_matches(r, path))))
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
/// non-empty, else `None` (everything). A stored list that cannot be read bounds the
/// caller to nothing (`Some(&[])`), never to everything.
pub fn model_patterns(caller: &Caller) -> Option<&[String]> {
    if caller.is_admin() {
        return None;
    }
    if !caller.models.is_empty() {
        return Some(&caller.models);
    }
    if let Some(key) = &caller.key {
        if key.unreadable.models {
            return Some(&[]);
        }
        if !key.models.is_empty() {
            return Some(&key.models);
        }
    }
    match &caller.team {
        Some(team) if team.unreadable.models => Some(&[]),
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

/// Exact match, `name` ≡ `name:latest`, or a trailing `*` wildcard. Both sides are
/// compared in their full form (`name` reads as `name:latest`), so `llama3.1:*` admits
/// `llama3.1` and `llama3.1:latest`, and `llama3.1` admits `llama3.1:latest`.
pub fn model_allowed(patterns: &[String], model: &str) -> bool {
    let model = with_tag(model);
    patterns
        .iter()
        .any(|pattern| match pattern.strip_suffix('*') {
            Some(prefix) => model.starts_with(prefix),
            None => with_tag(pattern) == model,
        })
}

/// The tag of a model name: what follows `:` in its last path segment (a registry's
/// `host:port/` is not a tag), before any `@digest`; `None` when it has none.
fn tag(model: &str) -> Option<&str> {
    let name = model.split_once('@').map_or(model, |(name, _)| name);
    let last = name.rsplit_once('/').map_or(name, |(_, last)| last);
    last.split_once(':').map(|(_, tag)| tag)
}

/// `name` as `name:latest`; names with a tag unchanged.
fn with_tag(model: &str) -> std::borrow::Cow<'_, str> {
    if tag(model).is_some() {
        std::borrow::Cow::Borrowed(model)
    } else {
        std::borrow::Cow::Owned(format!("{model}:latest"))
    }
}

/// An Ollama cloud model (SPEC §5.2.4): its tag is `cloud` or ends in `-cloud`
/// (`glm-4.6:cloud`, `gpt-oss:120b-cloud`), in any case. Such a model runs off the
/// premises, so prompts sent to it leave them.
pub fn is_cloud_model(model: &str) -> bool {
    tag(model).is_some_and(|tag| {
        let tag = tag.trim().to_ascii_lowercase();
        tag == "cloud" || tag.ends_with("-cloud")
    })
}

/// Check 4 for cloud models: refused for non-admin callers unless
/// `upstream.allow_cloud_models`, whatever their allow-list says.
pub fn check_cloud_model(caller: &Caller, model: &str, allow_cloud: bool) -> Result<(), AppError> {
    if !allow_cloud && !caller.is_admin() && is_cloud_model(model) {
        return Err(AppError::ModelNotAllowed(model.to_string()));
    }
    Ok(())
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
    fn wildcards_see_the_latest_tag() {
        let list = p(&["llama3.1:*"]);
        assert!(model_allowed(&list, "llama3.1"));
        assert!(model_allowed(&list, "llama3.1:latest"));
        assert!(!model_allowed(&list, "llama3.10"));
        assert!(!model_allowed(&list, "llama3"));
        assert!(model_allowed(&p(&["llama3.1:lat*"]), "llama3.1"));
        assert!(model_allowed(&p(&["llama*"]), "llama3.1"));
        assert!(model_allowed(&p(&["llama3.1*"]), "llama3.1"));
        // A registry's port is not a tag.
        assert!(model_allowed(
            &p(&["registry.local:5000/team/llama3.1:*"]),
            "registry.local:5000/team/llama3.1"
        ));
        assert!(model_allowed(
            &p(&["registry.local:5000/team/llama3.1"]),
            "registry.local:5000/team/llama3.1:latest"
        ));
    }

    #[test]
    fn cloud_models_are_recognised_by_their_tag() {
        for cloud in [
            "glm-4.6:cloud",
            "gpt-oss:120b-cloud",
            "qwen3-coder:480b-CLOUD",
            "GLM-4.6:Cloud",
            "library/glm-4.6:cloud",
            "glm-4.6:cloud@sha256:abc",
        ] {
            assert!(is_cloud_model(cloud), "{cloud}");
        }
        for local in [
            "llama3.1",
            "llama3.1:8b",
            "cloud",
            "cloud:latest",
            "mycloud-model:7b",
            "glm-4.6:cloudy",
            "registry.cloud:5000/llama3.1",
        ] {
            assert!(!is_cloud_model(local), "{local}");
        }
    }

    #[test]
    fn routes_exact_and_prefix() {
        assert!(route_matches("/api/chat", "/api/chat"));
        assert!(!route_matches("/api/chat", "/api/chats"));
        assert!(route_matches("/v1/*", "/v1/models/x"));
        assert!(!route_matches("/v1/*", "/api/chat"));
    }
}
