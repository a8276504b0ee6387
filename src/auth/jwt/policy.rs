//! The policy checks that run after a token is verified (`required_scopes`,
//! `allowed_email_domains`, `required_claims`) and the identity they produce.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde_json::Value;

use super::JwtIdentity;
use super::claims::{lookup, scalar_string, strings};
use crate::config::{JwtConfig, Role};

/// The identity and policy settings of `jwt:`, prepared once.
#[derive(Debug)]
pub(super) struct Policy {
    user_id_claim: String,
    email_claim: String,
    team_id_claim: Option<String>,
    org_id_claim: Option<String>,
    team_default: Option<String>,
    scope_claim: String,
    required_scopes: Vec<String>,
    admin_scope: Option<String>,
    /// Lower-cased, without a leading `@`.
    allowed_email_domains: Vec<String>,
    required_claims: Vec<(String, Vec<Value>)>,
    role_claim: Option<String>,
    role_map: BTreeMap<String, Role>,
}

impl Policy {
    pub(super) fn new(config: &JwtConfig) -> Self {
        Self {
            user_id_claim: config.user_id_claim.clone(),
            email_claim: config.email_claim.clone(),
            team_id_claim: config.team_id_claim.clone(),
            org_id_claim: config.org_id_claim.clone(),
            team_default: config.team_default.clone(),
            scope_claim: config.scope_claim.clone(),
            required_scopes: config.required_scopes.clone(),
            admin_scope: config.admin_scope.clone(),
            allowed_email_domains: config
                .allowed_email_domains
                .iter()
                .map(|d| d.trim().trim_start_matches('@').to_ascii_lowercase())
                .collect(),
            required_claims: config
                .required_claims
                .iter()
                .map(|(path, values)| (path.clone(), values.clone()))
                .collect(),
            role_claim: config.role_claim.clone(),
            role_map: config.role_map.clone(),
        }
    }

    /// Runs the policy checks on verified claims and builds the identity. The error is
    /// a message that may be shown to the caller.
    pub(super) fn evaluate(&self, claims: Arc<Value>, exp: i64) -> Result<JwtIdentity, String> {
        let scopes = self.scopes(&claims);
        for required in &self.required_scopes {
            if !scopes.iter().any(|s| s == required) {
                return Err(format!("missing required scope `{required}`"));
            }
        }
        let email = lookup(&claims, &self.email_claim).and_then(scalar_string);
        if !self.allowed_email_domains.is_empty() {
            let domain = email
                .as_deref()
                .and_then(|e| e.rsplit_once('@'))
                .map(|(_, domain)| domain.to_ascii_lowercase());
            let allowed = domain.is_some_and(|d| self.allowed_email_domains.contains(&d));
            if !allowed {
                return Err("email domain not allowed".into());
            }
        }
        for (path, accepted) in &self.required_claims {
            let satisfied = lookup(&claims, path).is_some_and(|value| match value {
                Value::Array(items) => items.iter().any(|item| one_of(item, accepted)),
                value => one_of(value, accepted),
            });
            if !satisfied {
                return Err(format!(
                    "required claim `{path}` is missing or not accepted"
                ));
            }
        }

        let is_admin = self
            .admin_scope
            .as_ref()
            .is_some_and(|admin| scopes.iter().any(|s| s == admin));
        let role = if is_admin {
            Some(Role::ProxyAdmin)
        } else {
            self.role(&claims)
        };
        let claim = |path: &Option<String>| {
            path.as_deref()
                .and_then(|p| lookup(&claims, p))
                .and_then(scalar_string)
        };
        let team_id = claim(&self.team_id_claim).or_else(|| self.team_default.clone());
        let org_id = claim(&self.org_id_claim);
        Ok(JwtIdentity {
            issuer: claims
                .get("iss")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned(),
            user_id: lookup(&claims, &self.user_id_claim).and_then(scalar_string),
            email,
            team_id,
            org_id,
            scopes,
            is_admin,
            role,
            claims,
            expires_at: exp,
        })
    }

    /// Scopes from `scope_claim` and `scp`: space-separated strings or arrays of
    /// strings, duplicates removed, in order of appearance.
    fn scopes(&self, claims: &Value) -> Vec<String> {
        let mut scopes: Vec<String> = Vec::new();
        let sources = [
            Some(self.scope_claim.as_str()),
            (self.scope_claim != "scp").then_some("scp"),
        ];
        for path in sources.into_iter().flatten() {
            let Some(value) = lookup(claims, path) else {
                continue;
            };
            for scope in strings(value).into_iter().flat_map(str::split_whitespace) {
                if !scopes.iter().any(|s| s == scope) {
                    scopes.push(scope.to_owned());
                }
            }
        }
        scopes
    }

    /// The most powerful role named by `role_claim` through `role_map`.
    fn role(&self, claims: &Value) -> Option<Role> {
        let value = lookup(claims, self.role_claim.as_deref()?)?;
        strings(value)
            .into_iter()
            .filter_map(|name| self.role_map.get(name).copied())
            .max_by_key(|role| rank(*role))
    }
}

fn rank(role: Role) -> u8 {
    match role {
        Role::Viewer => 1,
        Role::TeamAdmin => 2,
        Role::ProxyAdmin => 3,
    }
}

/// JSON equality, except that numbers compare by value (`1` equals `1.0`).
fn one_of(value: &Value, accepted: &[Value]) -> bool {
    accepted.iter().any(|a| match (value, a) {
        (Value::Number(x), Value::Number(y)) => {
            x == y || matches!((x.as_f64(), y.as_f64()), (Some(x), Some(y)) if x == y)
        }
        _ => value == a,
    })
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn policy(edit: impl FnOnce(&mut JwtConfig)) -> Policy {
        let mut config = JwtConfig::default();
        edit(&mut config);
        Policy::new(&config)
    }

    fn eval(p: &Policy, claims: Value) -> Result<JwtIdentity, String> {
        p.evaluate(Arc::new(claims), 99)
    }

    #[test]
    fn scopes_from_string_array_and_scp() {
        let p = policy(|_| {});
        let id = eval(&p, json!({"scope": "a b  a", "scp": ["c", "b"]})).expect("ok");
        assert_eq!(id.scopes, ["a", "b", "c"]);
        let p = policy(|c| c.scope_claim = "ext.perms".into());
        let id = eval(&p, json!({"ext": {"perms": ["x", "y z"]}})).expect("ok");
        assert_eq!(id.scopes, ["x", "y", "z"]);
    }

    #[test]
    fn numbers_compare_by_value() {
        assert!(one_of(&json!(1), &[json!(1.0)]));
        assert!(!one_of(&json!(1), &[json!("1")]));
        assert!(one_of(&json!("a"), &[json!("b"), json!("a")]));
    }

    #[test]
    fn roles_take_the_most_powerful_known_value() {
        let p = policy(|c| {
            c.role_claim = Some("roles".into());
            c.role_map = [("reader", Role::Viewer), ("lead", Role::TeamAdmin)]
                .into_iter()
                .map(|(k, v)| (k.to_string(), v))
                .collect();
        });
        let role = |claims| eval(&p, claims).expect("ok").role;
        assert_eq!(
            role(json!({"roles": ["reader", "lead", "unknown"]})),
            Some(Role::TeamAdmin)
        );
        assert_eq!(role(json!({"roles": "reader"})), Some(Role::Viewer));
        assert_eq!(role(json!({"roles": ["unknown"]})), None);
        assert_eq!(role(json!({})), None);
    }

    #[test]
    fn email_domains_are_case_insensitive_and_exact() {
        let p = policy(|c| c.allowed_email_domains = vec!["@Example.com".into()]);
        assert!(eval(&p, json!({"email": "a@EXAMPLE.COM"})).is_ok());
        assert!(eval(&p, json!({"email": "a@evil-example.com"})).is_err());
        assert!(eval(&p, json!({"email": "a@example.com.evil.io"})).is_err());
        assert!(eval(&p, json!({"email": "example.com"})).is_err());
        assert!(eval(&p, json!({})).is_err());
    }
}
