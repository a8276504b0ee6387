//! `Caller`: who is making a request, after authentication.

use std::sync::Arc;

use crate::config::Role;
use crate::store::{Team, VirtualKey};

/// How the caller authenticated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CallerKind {
    /// `server.master_key`.
    MasterKey,
    /// A virtual key (`sk-…`).
    VirtualKey,
    /// An SSO identity's JWT, running under its team (fallback) or as an admin.
    Jwt,
    /// A token the auth webhook allowed.
    Webhook,
}

/// An authenticated caller.
#[derive(Debug, Clone)]
pub struct Caller {
    pub kind: CallerKind,
    /// The key whose limits apply (none for the master key).
    pub key: Option<Arc<VirtualKey>>,
    /// The team whose limits also apply.
    pub team: Option<Arc<Team>>,
    pub user_id: Option<String>,
    pub team_id: Option<String>,
    /// Management role, if any (plain virtual keys have none).
    pub role: Option<Role>,
    /// What logs and the live feed show: a key's display name, never the key.
    pub label: Arc<str>,
    /// Models an auth-webhook answer bounded the request to (empty: no bound).
    pub models: Arc<[String]>,
}

impl Caller {
    pub fn master() -> Self {
        Self {
            kind: CallerKind::MasterKey,
            key: None,
            team: None,
            user_id: None,
            team_id: None,
            role: Some(Role::ProxyAdmin),
            label: Arc::from("master_key"),
            models: Arc::from([]),
        }
    }

    pub fn from_key(key: Arc<VirtualKey>, team: Option<Arc<Team>>) -> Self {
        Self {
            kind: CallerKind::VirtualKey,
            user_id: key.user_id.clone(),
            team_id: key.team_id.clone(),
            label: Arc::from(key.key_name.as_str()),
            key: Some(key),
            team,
            role: None,
            models: Arc::from([]),
        }
    }

    /// A JWT identity acting as itself: as a proxy admin, under its team's limits
    /// (`fallback`), or on the management API with its mapped role.
    pub fn from_jwt(
        identity: crate::auth::jwt::JwtIdentity,
        team: Option<Arc<Team>>,
        role_override: Option<Role>,
    ) -> Self {
        let label = identity
            .user_id
            .as_deref()
            .or(identity.email.as_deref())
            .map(|u| format!("jwt:{u}"))
            .unwrap_or_else(|| "jwt".to_string());
        Self {
            kind: CallerKind::Jwt,
            key: None,
            team_id: team
                .as_ref()
                .map(|t| t.team_id.clone())
                .or(identity.team_id),
            team,
            user_id: identity.user_id,
            role: role_override.or(identity.role),
            label: Arc::from(label),
            models: Arc::from([]),
        }
    }

    /// A caller the auth webhook allowed, bounded by its answer.
    pub fn from_webhook(
        grant: &crate::auth::webhook::WebhookGrant,
        team: Option<Arc<Team>>,
    ) -> Self {
        let label = grant
            .user_id
            .as_deref()
            .map(|u| format!("webhook:{u}"))
            .unwrap_or_else(|| "webhook".to_string());
        Self {
            kind: CallerKind::Webhook,
            key: None,
            team_id: team
                .as_ref()
                .map(|t| t.team_id.clone())
                .or_else(|| grant.team_id.clone()),
            team,
            user_id: grant.user_id.clone(),
            role: None,
            label: Arc::from(label),
            models: Arc::from(grant.models.clone()),
        }
    }

    /// Who the audit log says made a change: `master_key`, or `jwt:<user_id>` (the
    /// label, i.e. the e-mail or plain `jwt`, for a token without a user id).
    pub fn actor(&self) -> String {
        match (self.kind, &self.user_id) {
            (CallerKind::MasterKey, _) => "master_key".to_string(),
            (CallerKind::Jwt, Some(user)) => format!("jwt:{user}"),
            _ => self.label.to_string(),
        }
    }

    /// Proxy admins bypass model policy and may call Ollama's admin routes.
    pub fn is_admin(&self) -> bool {
        self.role == Some(Role::ProxyAdmin)
    }
}
