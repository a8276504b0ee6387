//! Authentication and authorisation: a bearer credential becomes a [`Caller`], and one
//! function ([`authorize::check`]) decides what a caller may do.
//!
//! The token's shape picks the path (SPEC §6): the master key, `sk-…` virtual keys
//! ([`keys::KeyResolver`]), JWTs ([`jwt::JwtVerifier`], then [`mapping::MappingResolver`]
//! on proxied routes), and the auth webhook for anything else. Every failure is the same
//! 401 so callers cannot tell which check failed.
//!
//! Also here, because they are about who a credential is: the key cache's invalidation
//! across instances ([`invalidation`]) and the console's single-use WebSocket tickets
//! ([`tickets`]).

pub mod access;
pub mod authorize;
pub mod identity;
pub mod invalidation;
pub mod jwt;
pub mod keys;
pub mod mapping;
pub mod secrets;
pub mod tickets;
pub mod webhook;

use std::sync::Arc;

use axum::http::{HeaderMap, Method, Uri};
use subtle::ConstantTimeEq;

pub use identity::{Caller, CallerKind};

use crate::error::AppError;
use keys::KeyResolver;
use mapping::MappingResolver;

/// The bearer token of a request, if the header is well-formed.
pub fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers
        .get(axum::http::header::AUTHORIZATION)?
        .to_str()
        .ok()?;
    let (scheme, token) = value.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return None;
    }
    let token = token.trim();
    (!token.is_empty()).then_some(token)
}

fn unauthorized(reason: &'static str) -> AppError {
    metrics::counter!(crate::telemetry::AUTH_FAILURES, "reason" => reason).increment(1);
    AppError::Unauthorized
}

/// What the credential is being used for: JWTs resolve to a mapped key only on
/// proxied routes; on the management API they act with their own role.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Purpose {
    Proxy,
    Manage,
}

/// Turns a request's bearer credential into a [`Caller`].
pub struct Authenticator {
    /// SHA-256 of `server.master_key` (compared in constant time), if set.
    master_key_hash: Option<String>,
    keys: Arc<KeyResolver>,
    jwt: Option<Arc<jwt::JwtVerifier>>,
    mappings: Arc<MappingResolver>,
    webhook: Option<webhook::AuthWebhook>,
}

impl Authenticator {
    pub fn new(
        master_key_hash: Option<String>,
        keys: Arc<KeyResolver>,
        jwt: Option<Arc<jwt::JwtVerifier>>,
        mappings: Arc<MappingResolver>,
        webhook: Option<webhook::AuthWebhook>,
    ) -> Self {
        Self {
            master_key_hash,
            keys,
            jwt,
            mappings,
            webhook,
        }
    }

    /// Authenticates a request (its method and URI matter only to the auth webhook).
    pub async fn authenticate(
        &self,
        method: &Method,
        uri: &Uri,
        headers: &HeaderMap,
        purpose: Purpose,
    ) -> Result<Caller, AppError> {
        let token = bearer(headers).ok_or_else(|| unauthorized("missing_credential"))?;
        let hash = secrets::hash_secret(token);
        if let Some(master) = &self.master_key_hash {
            // Both sides are SHA-256 digests: equal length, compared in constant time.
            if bool::from(hash.as_bytes().ct_eq(master.as_bytes())) {
                return Ok(Caller::master());
            }
        }
        if secrets::looks_like_key(token) {
            return match self.keys.resolve(&hash).await? {
                Some(resolved) => Ok(Caller::from_key(resolved.key, resolved.team)),
                None => Err(unauthorized("unknown_key")),
            };
        }
        if let Some(verifier) = &self.jwt
            && jwt::JwtVerifier::looks_like_jwt(token)
        {
            let identity = verifier.verify(token).await.map_err(|e| match e {
                jwt::JwtError::Unauthorized(_) => AppError::Unauthorized,
                jwt::JwtError::PolicyDenied(message) => AppError::JwtPolicyDenied(message),
            })?;
            return match purpose {
                Purpose::Proxy => self.mappings.resolve(identity).await,
                Purpose::Manage => Ok(Caller::from_jwt(identity, None, None)),
            };
        }
        if let Some(webhook) = &self.webhook {
            let grant = webhook.check(token, &hash, method, uri, headers).await?;
            let team = match &grant.team_id {
                Some(team_id) => self.keys.team(team_id).await?,
                None => None,
            };
            return Ok(Caller::from_webhook(&grant, team));
        }
        Err(unauthorized("malformed_credential"))
    }
}
