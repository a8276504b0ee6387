//! JWT authentication (SPEC §6.2): signature against JWKS and static keys, the
//! registered-claim checks, then the policy checks, producing a [`JwtIdentity`].
//!
//! - [`keys`]: JWK/PEM parsing; every key is bound to its key type (and the JWK's own
//!   `alg`), so RSA/EC/OKP keys only verify their own algorithms and HS* never.
//! - [`jwks`]: the key store, with the single-flight, rate-limited refetch for unknown
//!   `kid`s and the periodic refresh that keeps the last good keys.
//! - [`claims`]: dotted claim paths and `exp`/`nbf`/`iat`/`iss`/`aud`.
//! - [`policy`]: `required_scopes`, `allowed_email_domains`, `required_claims`, and the
//!   identity (user, email, team, org, scopes, admin, role).
//!
//! Successful verifications are cached by the token's SHA-256 until `min(exp, 60 s)`.

mod claims;
#[doc(hidden)]
pub mod fuzzing;
mod jwks;
mod keys;
mod policy;
#[cfg(test)]
mod tests;

use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use jsonwebtoken::{Algorithm, AlgorithmFamily, Validation};
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::config::{JwtConfig, Role};
use crate::tasks::TaskSpawner;
use claims::Registered;
use jwks::{KeySet, KeyStore};
use keys::VerifyingKey;
use policy::Policy;

/// Longest time a verification is reused without checking the signature again.
const CACHE_FOR_S: i64 = 60;
/// Bound on the verified-token cache.
const CACHE_ENTRIES: u64 = 100_000;

/// The result of a verified, policy-approved JWT.
#[derive(Debug, Clone)]
pub struct JwtIdentity {
    /// `iss`, or `""` if the token has none.
    pub issuer: String,
    /// `jwt.user_id_claim` (numbers stringified).
    pub user_id: Option<String>,
    /// `jwt.email_claim`.
    pub email: Option<String>,
    /// `jwt.team_id_claim`, else `jwt.team_default`.
    pub team_id: Option<String>,
    /// `jwt.org_id_claim`.
    pub org_id: Option<String>,
    /// From `jwt.scope_claim` and `scp`.
    pub scopes: Vec<String>,
    /// `jwt.admin_scope` is among the scopes.
    pub is_admin: bool,
    /// `ProxyAdmin` for admins, else the strongest `jwt.role_claim` value mapped by
    /// `jwt.role_map`.
    pub role: Option<Role>,
    /// The whole validated payload.
    pub claims: Arc<Value>,
    /// `exp`.
    pub expires_at: i64,
}

impl JwtIdentity {
    /// A claim by dotted path: strings as they are, numbers and booleans printed; `None`
    /// for objects, arrays, null and missing claims.
    pub fn claim_str(&self, path: &str) -> Option<String> {
        claims::lookup(&self.claims, path).and_then(claims::scalar_string)
    }
}

/// Why a JWT was not accepted.
#[derive(Debug, thiserror::Error)]
pub enum JwtError {
    /// Any failed JWT check (401). The reason is for metrics and logs only; it is already
    /// counted in `tollgate_auth_failures_total` by [`JwtVerifier::verify`].
    #[error("unauthorized")]
    Unauthorized(&'static str),
    /// A failed policy check (403 `jwt_policy_denied`); the message may be shown.
    #[error("{0}")]
    PolicyDenied(String),
}

#[derive(Debug)]
struct CachedIdentity {
    identity: JwtIdentity,
    /// Unix seconds; the entry is used only while `now < valid_until`.
    valid_until: i64,
}

/// Outcome of trying a key set on a token.
enum Attempt {
    Verified(Value),
    /// No key for this token (unknown `kid`, or no key of the token's type).
    NoKey,
    /// The `kid` names a key of another type or with another `alg`.
    KeyMismatch,
    BadSignature,
}

/// Verifies JWTs. `Send + Sync`; share it as `Arc<JwtVerifier>`.
pub struct JwtVerifier {
    /// The allowed algorithms, each with a signature-only `Validation` (the claims are
    /// checked by [`Registered`] against an injectable clock).
    algorithms: Vec<(Algorithm, Validation)>,
    max_token_bytes: usize,
    refresh_every: Duration,
    registered: Registered,
    policy: Policy,
    store: KeyStore,
    cache: Option<moka::sync::Cache<[u8; 32], Arc<CachedIdentity>>>,
    #[cfg(test)]
    signature_checks: std::sync::atomic::AtomicUsize,
}

impl std::fmt::Debug for JwtVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JwtVerifier")
            .field(
                "algorithms",
                &self.algorithms.iter().map(|(a, _)| a).collect::<Vec<_>>(),
            )
            .field("store", &self.store)
            .finish_non_exhaustive()
    }
}

impl JwtVerifier {
    /// Builds from configuration. Static `public_keys` are parsed now (a bad one is an
    /// error naming `jwt.public_keys[i]`); JWKS URLs are fetched by
    /// [`start_refresh`](Self::start_refresh), or lazily by the first verification.
    pub fn new(config: &JwtConfig, http: reqwest::Client) -> Result<Self, String> {
        let mut algorithms: Vec<(Algorithm, Validation)> = Vec::new();
        for name in &config.algorithms {
            let alg = Algorithm::from_str(name)
                .map_err(|_| format!("jwt.algorithms: `{name}` is not a supported algorithm"))?;
            if alg.family() == AlgorithmFamily::Hmac {
                return Err(format!(
                    "jwt.algorithms: `{name}` is not allowed (asymmetric algorithms only)"
                ));
            }
            if algorithms.iter().any(|(a, _)| *a == alg) {
                continue;
            }
            let mut validation = Validation::new(alg);
            validation.required_spec_claims.clear();
            validation.validate_exp = false;
            validation.validate_nbf = false;
            validation.validate_aud = false;
            validation.leeway = 0;
            algorithms.push((alg, validation));
        }
        if algorithms.is_empty() {
            return Err("jwt.algorithms: at least one algorithm is required".into());
        }
        let static_keys = config
            .public_keys
            .iter()
            .enumerate()
            .map(|(i, k)| {
                keys::parse_pem(&k.pem, k.kid.clone())
                    .map_err(|e| format!("jwt.public_keys[{i}]: {e}"))
            })
            .collect::<Result<Vec<VerifyingKey>, String>>()?;
        let store = KeyStore::new(
            http,
            config.jwks_urls.clone(),
            static_keys,
            Duration::from_secs(config.jwks_min_refetch_s),
        );
        let cache = config.verified_token_cache.then(|| {
            moka::sync::Cache::builder()
                .max_capacity(CACHE_ENTRIES)
                .time_to_live(Duration::from_secs(CACHE_FOR_S as u64))
                .build()
        });
        Ok(Self {
            algorithms,
            max_token_bytes: config.max_token_bytes,
            refresh_every: Duration::from_secs(config.jwks_refresh_s.max(1)),
            registered: Registered {
                leeway: i64::try_from(config.leeway_s).unwrap_or(i64::MAX),
                issuers: config.issuers.clone(),
                audiences: config.audiences.clone(),
            },
            policy: Policy::new(config),
            store,
            cache,
            #[cfg(test)]
            signature_checks: std::sync::atomic::AtomicUsize::new(0),
        })
    }

    /// Starts the periodic JWKS refresh: at once, then every `jwks_refresh_s`. A failed
    /// refresh logs a warning and keeps the last good keys. Stops at shutdown or when the
    /// verifier is dropped. Does nothing without `jwks_urls`.
    pub fn start_refresh(self: &Arc<Self>, tasks: &TaskSpawner) {
        if !self.store.has_urls() {
            return;
        }
        let verifier = Arc::downgrade(self);
        let every = self.refresh_every;
        tasks.spawn_loop("JWKS refresh", async move {
            let mut ticker = tokio::time::interval(every);
            ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                ticker.tick().await;
                let Some(verifier) = verifier.upgrade() else {
                    break;
                };
                verifier.store.refresh().await;
            }
        });
    }

    /// Runs every JWT check of SPEC §6.2, then the policy checks. Failures are logged at
    /// debug (token shown as its first 8 characters) and `Unauthorized` ones counted in
    /// `tollgate_auth_failures_total`.
    pub async fn verify(&self, token: &str) -> Result<JwtIdentity, JwtError> {
        self.verify_at(token, chrono::Utc::now().timestamp()).await
    }

    /// True for the JWT shape: three base64url segments, the first two non-empty.
    pub fn looks_like_jwt(token: &str) -> bool {
        let mut parts = token.split('.');
        let (Some(header), Some(payload), Some(signature), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return false;
        };
        let base64url = |s: &str| {
            s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        };
        !header.is_empty()
            && !payload.is_empty()
            && base64url(header)
            && base64url(payload)
            && base64url(signature)
    }

    /// [`verify`](Self::verify) at the given Unix time.
    async fn verify_at(&self, token: &str, now: i64) -> Result<JwtIdentity, JwtError> {
        let result = self.check(token, now).await;
        match &result {
            Ok(_) => {}
            Err(JwtError::Unauthorized(reason)) => {
                metrics::counter!(crate::telemetry::AUTH_FAILURES, "reason" => *reason)
                    .increment(1);
                tracing::debug!(
                    reason,
                    token = %crate::telemetry::redact(token),
                    "JWT rejected"
                );
            }
            Err(JwtError::PolicyDenied(message)) => {
                tracing::debug!(
                    reason = %message,
                    token = %crate::telemetry::redact(token),
                    "JWT denied by policy"
                );
            }
        }
        result
    }

    async fn check(&self, token: &str, now: i64) -> Result<JwtIdentity, JwtError> {
        use JwtError::Unauthorized;
        if token.len() > self.max_token_bytes {
            return Err(Unauthorized("jwt_too_large"));
        }
        if !Self::looks_like_jwt(token) {
            return Err(Unauthorized("jwt_malformed"));
        }
        let cache_key: Option<[u8; 32]> = self.cache.as_ref().map(|_| Sha256::digest(token).into());
        if let (Some(cache), Some(key)) = (&self.cache, &cache_key)
            && let Some(hit) = cache.get(key)
        {
            if now < hit.valid_until {
                return Ok(hit.identity.clone());
            }
            cache.invalidate(key);
        }

        let header = jsonwebtoken::decode_header(token).map_err(|_| {
            Unauthorized(if declares_unknown_alg(token) {
                "jwt_alg_not_allowed"
            } else {
                "jwt_malformed"
            })
        })?;
        if header.crit.is_some() {
            // No header extension is understood here (RFC 7515 §4.1.11).
            return Err(Unauthorized("jwt_unsupported_header"));
        }
        let alg = header.alg;
        let Some((_, validation)) = self.algorithms.iter().find(|(a, _)| *a == alg) else {
            return Err(Unauthorized("jwt_alg_not_allowed"));
        };
        let kid = header.kid.as_deref();

        let (seen, set) = self.store.snapshot();
        let mut attempt = self.attempt(&set, token, kid, alg, validation, false);
        let retry = match attempt {
            Attempt::NoKey => true,
            // Without a kid, a failure against every key of the type may mean rotation.
            Attempt::BadSignature => kid.is_none() && self.store.has_urls(),
            Attempt::Verified(_) | Attempt::KeyMismatch => false,
        };
        if retry {
            match self.store.refetch(seen).await {
                Some(set) => attempt = self.attempt(&set, token, kid, alg, validation, true),
                None if kid.is_some() => {
                    attempt = self.attempt(&set, token, kid, alg, validation, true);
                }
                None => {}
            }
        }
        let claims = match attempt {
            Attempt::Verified(claims) => claims,
            Attempt::NoKey if kid.is_some() => return Err(Unauthorized("jwt_unknown_kid")),
            Attempt::NoKey => return Err(Unauthorized("jwt_no_key_for_alg")),
            Attempt::KeyMismatch => return Err(Unauthorized("jwt_key_mismatch")),
            Attempt::BadSignature => return Err(Unauthorized("jwt_bad_signature")),
        };

        let exp = self.registered.check(&claims, now).map_err(Unauthorized)?;
        let identity = self
            .policy
            .evaluate(Arc::new(claims), exp)
            .map_err(JwtError::PolicyDenied)?;

        if let (Some(cache), Some(key)) = (&self.cache, cache_key) {
            let valid_until = exp.min(now.saturating_add(CACHE_FOR_S));
            if valid_until > now {
                let entry = CachedIdentity {
                    identity: identity.clone(),
                    valid_until,
                };
                cache.insert(key, Arc::new(entry));
            }
        }
        Ok(identity)
    }

    /// Tries the keys of `set` that may verify this token. With a `kid`, only keys
    /// published under it (a key of another type or `alg` is a mismatch); when there is
    /// none and `wildcards` is set, keys without a kid. Without a `kid`, every key of the
    /// right type.
    fn attempt(
        &self,
        set: &KeySet,
        token: &str,
        kid: Option<&str>,
        alg: Algorithm,
        validation: &Validation,
        wildcards: bool,
    ) -> Attempt {
        let candidates: Vec<&Arc<VerifyingKey>> = match kid {
            Some(kid) => {
                let mut named = set
                    .keys
                    .iter()
                    .filter(|k| k.kid.as_deref() == Some(kid))
                    .peekable();
                if named.peek().is_some() {
                    let fitting: Vec<_> = named.filter(|k| k.accepts(alg)).collect();
                    if fitting.is_empty() {
                        return Attempt::KeyMismatch;
                    }
                    fitting
                } else if wildcards {
                    set.keys
                        .iter()
                        .filter(|k| k.kid.is_none() && k.accepts(alg))
                        .collect()
                } else {
                    Vec::new()
                }
            }
            None => set.keys.iter().filter(|k| k.accepts(alg)).collect(),
        };
        if candidates.is_empty() {
            return Attempt::NoKey;
        }
        for key in candidates {
            #[cfg(test)]
            self.signature_checks
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            if let Ok(data) = jsonwebtoken::decode::<Value>(token, &key.key, validation) {
                return Attempt::Verified(data.claims);
            }
        }
        Attempt::BadSignature
    }
}

/// For the log reason only: `true` if the header names an algorithm that is not a
/// supported JWS signature algorithm (`none`, `HS1`, ...).
fn declares_unknown_alg(token: &str) -> bool {
    use base64::Engine;
    let segment = token.split('.').next().unwrap_or_default();
    let Ok(bytes) = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(segment) else {
        return false;
    };
    serde_json::from_slice::<Value>(&bytes)
        .ok()
        .and_then(|h| {
            h.get("alg")?
                .as_str()
                .map(|a| Algorithm::from_str(a).is_err())
        })
        .unwrap_or(false)
}
