//! Authorisation of the management API (SPEC §6.5): one function, [`check`], decides
//! whether a caller holds a capability for a team.

use super::identity::Caller;
use crate::config::Role;
use crate::error::AppError;

/// What a management route needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Capability {
    KeyRead,
    KeyWrite,
    TeamRead,
    TeamWrite,
    MappingRead,
    MappingWrite,
    SpendRead,
    /// The audit log (`/audit/logs`): proxy admins everywhere, team admins for their
    /// teams' objects; not viewers (SPEC §6.5).
    AuditRead,
    ModelAdmin,
    /// The Ollama servers' state (`/upstream/status`): proxy admins only, since servers
    /// belong to no team.
    UpstreamRead,
    /// Draining a server: proxy admins only.
    UpstreamWrite,
}

impl Capability {
    fn is_read(self) -> bool {
        matches!(
            self,
            Self::KeyRead | Self::TeamRead | Self::MappingRead | Self::SpendRead
        )
    }
}

fn role_grants(role: Role, capability: Capability) -> bool {
    match role {
        Role::ProxyAdmin => true,
        Role::TeamAdmin => matches!(
            capability,
            Capability::KeyRead
                | Capability::KeyWrite
                | Capability::MappingRead
                | Capability::MappingWrite
                | Capability::SpendRead
                | Capability::AuditRead
                | Capability::TeamRead
        ),
        Role::Viewer => capability.is_read(),
    }
}

/// May `caller` use `capability` on `team`? `team: None` means "across all teams", which
/// only proxy admins may do. Team roles act only inside the caller's own team.
pub fn check(caller: &Caller, capability: Capability, team: Option<&str>) -> Result<(), AppError> {
    let denied = || AppError::Forbidden("not allowed to perform this action".into());
    let role = caller.role.ok_or_else(denied)?;
    if !role_grants(role, capability) {
        return Err(denied());
    }
    if role == Role::ProxyAdmin {
        return Ok(());
    }
    match (team, caller.team_id.as_deref()) {
        (Some(wanted), Some(own)) if wanted == own => Ok(()),
        _ => Err(denied()),
    }
}

/// The route-level gate: could this caller hold `capability` in any scope at all?
pub fn check_any(caller: &Caller, capability: Capability) -> Result<(), AppError> {
    match caller.role {
        Some(role) if role_grants(role, capability) => Ok(()),
        _ => Err(AppError::Forbidden(
            "not allowed to perform this action".into(),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::identity::CallerKind;
    use std::sync::Arc;

    fn caller(role: Option<Role>, team: Option<&str>) -> Caller {
        Caller {
            kind: CallerKind::VirtualKey,
            key: None,
            team: None,
            user_id: None,
            team_id: team.map(String::from),
            role,
            label: Arc::from("t"),
            models: Arc::from([]),
        }
    }

    #[test]
    fn proxy_admin_can_do_everything_everywhere() {
        let c = caller(Some(Role::ProxyAdmin), None);
        assert!(check(&c, Capability::TeamWrite, None).is_ok());
        assert!(check(&c, Capability::ModelAdmin, Some("x")).is_ok());
    }

    #[test]
    fn team_admin_only_in_own_team() {
        let c = caller(Some(Role::TeamAdmin), Some("a"));
        assert!(check(&c, Capability::KeyWrite, Some("a")).is_ok());
        assert!(check(&c, Capability::KeyWrite, Some("b")).is_err());
        assert!(check(&c, Capability::KeyWrite, None).is_err());
        assert!(check(&c, Capability::TeamWrite, Some("a")).is_err());
        assert!(check(&c, Capability::ModelAdmin, Some("a")).is_err());
    }

    #[test]
    fn viewer_reads_only() {
        let c = caller(Some(Role::Viewer), Some("a"));
        assert!(check(&c, Capability::KeyRead, Some("a")).is_ok());
        assert!(check(&c, Capability::KeyWrite, Some("a")).is_err());
    }

    #[test]
    fn audit_read_is_for_admins_and_own_team_admins_not_viewers() {
        let admin = caller(Some(Role::ProxyAdmin), None);
        assert!(check(&admin, Capability::AuditRead, None).is_ok());
        let team_admin = caller(Some(Role::TeamAdmin), Some("a"));
        assert!(check(&team_admin, Capability::AuditRead, Some("a")).is_ok());
        assert!(check(&team_admin, Capability::AuditRead, Some("b")).is_err());
        assert!(check(&team_admin, Capability::AuditRead, None).is_err());
        let viewer = caller(Some(Role::Viewer), Some("a"));
        assert!(check(&viewer, Capability::AuditRead, Some("a")).is_err());
        assert!(check_any(&viewer, Capability::AuditRead).is_err());
    }

    #[test]
    fn no_role_no_access() {
        let c = caller(None, Some("a"));
        assert!(check(&c, Capability::KeyRead, Some("a")).is_err());
        assert!(check_any(&c, Capability::SpendRead).is_err());
    }
}
