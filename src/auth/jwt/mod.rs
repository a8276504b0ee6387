//! JWT authentication (SPEC §6.2): signature against JWKS and static keys, the
//! registered-claim checks, then the policy checks, producing a [`JwtIdentity`].
//!
//! **Keys are bound to their issuer.** Every identity provider (`jwt.providers`, or the
//! flat form as one provider) has a key store of its own. A token's `iss` picks the
//! provider before any signature is checked, and only that provider's keys may verify
//! it; the signed `iss` is then checked against the provider again. A token claiming
//! issuer B but signed with issuer A's key finds no key that verifies it: the usual 401.
//!
//! - [`keys`]: JWK/PEM parsing; every key is bound to its key type (and the JWK's own
//!   `alg`), so RSA/EC/OKP keys only verify their own algorithms and HS* never.
//! - [`jwks`]: a provider's key store, with the single-flight, rate-limited refetch for
//!   unknown `kid`s and the periodic refresh that keeps the last good keys.
//! - [`discovery`]: `jwks_uri` from `{issuer}/.well-known/openid-configuration`.
//! - [`claims`]: dotted claim paths and `exp`/`nbf`/`iat`/`iss`/`aud`.
//! - [`policy`]: `required_scopes`, `allowed_email_domains`, `required_claims`, and the
//!   identity (user, email, team, org, scopes, admin, role).
//!
//! Successful verifications are cached by the token's SHA-256 until `min(exp, 60 s)`.

mod claims;
mod discovery;
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
use jwks::{KeySet, KeyStore, Source};
use keys::VerifyingKey;
use policy::Policy;

/// Longest time a verification is reused without checking the signature again.
const CACHE_FOR_S: i64 = 60;
/// Bound on the verified-token cache.
const CACHE_ENTRIES: u64 = 100_000;
/// First retry of a provider whose keys could never be fetched (IdP down at start-up);
/// doubled after every failure up to [`RETRY_AT_MOST`] (or `jwks_refresh_s` if shorter).
const RETRY_FIRST: Duration = Duration::from_secs(1);
const RETRY_AT_MOST: Duration = Duration::from_secs(30);

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

/// One identity provider: the issuer it speaks for, the registered-claim checks for its
/// tokens, and the only keys that may verify them.
#[derive(Debug)]
struct Provider {
    /// `None` only for the flat form without `issuers` (then the only provider).
    issuer: Option<String>,
    registered: Registered,
    store: KeyStore,
}

/// Verifies JWTs. `Send + Sync`; share it as `Arc<JwtVerifier>`.
pub struct JwtVerifier {
    /// The allowed algorithms, each with a signature-only `Validation` (the claims are
    /// checked by [`Registered`] against an injectable clock).
    algorithms: Vec<(Algorithm, Validation)>,
    max_token_bytes: usize,
    refresh_every: Duration,
    policy: Policy,
    providers: Vec<Provider>,
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
            .field("providers", &self.providers)
            .finish_non_exhaustive()
    }
}

impl JwtVerifier {
    /// Builds from configuration (`jwt.providers`, or the flat form as one provider; an
    /// ambiguous or contradictory one is an error naming the key). Static `public_keys`
    /// are parsed now (a bad one is an error naming `jwt.public_keys[i]` or
    /// `jwt.providers[i].public_keys[j]`); JWKS are fetched by
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
        let leeway = i64::try_from(config.leeway_s).unwrap_or(i64::MAX);
        let providers = config
            .resolved_providers()
            .map_err(|(key, message)| format!("{key}: {message}"))?
            .into_iter()
            .map(|p| {
                let static_keys = p
                    .public_keys
                    .iter()
                    .enumerate()
                    .map(|(i, k)| {
                        keys::parse_pem(&k.pem, k.kid.clone())
                            .map_err(|e| format!("{}.public_keys[{i}]: {e}", p.path))
                    })
                    .collect::<Result<Vec<VerifyingKey>, String>>()?;
                let mut sources: Vec<Source> =
                    p.jwks_urls.iter().cloned().map(Source::Jwks).collect();
                if let (true, Some(issuer)) = (p.discovery, &p.issuer) {
                    sources.push(Source::Discovery(issuer.clone()));
                }
                Ok(Provider {
                    registered: Registered {
                        leeway,
                        issuers: p.issuer.iter().cloned().collect(),
                        audiences: p.audiences,
                    },
                    issuer: p.issuer,
                    store: KeyStore::new(
                        http.clone(),
                        sources,
                        static_keys,
                        Duration::from_secs(config.jwks_min_refetch_s),
                    ),
                })
            })
            .collect::<Result<Vec<Provider>, String>>()?;
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
            policy: Policy::new(config),
            providers,
            cache,
            #[cfg(test)]
            signature_checks: std::sync::atomic::AtomicUsize::new(0),
        })
    }

    /// Starts the JWKS refresh of every provider that fetches keys: at once, then every
    /// `jwks_refresh_s`. A failed refresh logs a warning and keeps the last good keys. A
    /// provider that has never served keys (its IdP was down at start-up, or its
    /// discovery document was refused) is retried sooner: after 1 s, then twice as long
    /// each time, up to 30 s (or `jwks_refresh_s` if shorter); its tokens get 401
    /// meanwhile, and the other providers are not held up. Stops at shutdown or when the
    /// verifier is dropped.
    pub fn start_refresh(self: &Arc<Self>, tasks: &TaskSpawner) {
        for (index, provider) in self.providers.iter().enumerate() {
            if !provider.store.has_urls() {
                continue;
            }
            let verifier = Arc::downgrade(self);
            let every = self.refresh_every;
            tasks.spawn_loop("JWKS refresh", async move {
                let mut retry = RETRY_FIRST;
                loop {
                    let Some(v) = verifier.upgrade() else {
                        break;
                    };
                    let Some(provider) = v.providers.get(index) else {
                        break;
                    };
                    let loaded = provider.store.refresh().await;
                    drop(v);
                    let wait = if loaded {
                        retry = RETRY_FIRST;
                        every
                    } else {
                        let wait = retry.min(every);
                        retry = (retry * 2).min(RETRY_AT_MOST);
                        wait
                    };
                    tokio::time::sleep(wait).await;
                }
            });
        }
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

        // The claimed issuer picks the only keys that may verify the token; the signed
        // `iss` is checked against the same provider below.
        let claimed = unverified_issuer(token).map_err(Unauthorized)?;
        let provider = self
            .provider_for(claimed.as_deref())
            .ok_or(Unauthorized("jwt_wrong_issuer"))?;
        let store = &provider.store;

        let (seen, set) = store.snapshot();
        let mut attempt = self.attempt(&set, token, kid, alg, validation, false);
        let retry = match attempt {
            Attempt::NoKey => true,
            // Without a kid, a failure against every key of the type may mean rotation.
            Attempt::BadSignature => kid.is_none() && store.has_urls(),
            Attempt::Verified(_) | Attempt::KeyMismatch => false,
        };
        if retry {
            match store.refetch(seen).await {
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

        let exp = provider
            .registered
            .check(&claims, now)
            .map_err(Unauthorized)?;
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

    /// The provider whose keys may verify a token claiming `issuer`: the one configured
    /// for exactly that issuer, else the flat form's any-issuer provider if there is one.
    fn provider_for(&self, issuer: Option<&str>) -> Option<&Provider> {
        issuer
            .and_then(|iss| {
                self.providers
                    .iter()
                    .find(|p| p.issuer.as_deref() == Some(iss))
            })
            .or_else(|| self.providers.iter().find(|p| p.issuer.is_none()))
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

/// The `iss` a token claims, read from its (not yet verified) payload only to pick the
/// keys that may verify it. `None` when there is no `iss`; a payload that is not a JSON
/// object, or an `iss` that is not a string, is an error reason.
fn unverified_issuer(token: &str) -> Result<Option<String>, &'static str> {
    use base64::Engine;
    let segment = token.split('.').nth(1).unwrap_or_default();
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(segment)
        .map_err(|_| "jwt_malformed")?;
    let claims: serde_json::Map<String, Value> =
        serde_json::from_slice(&bytes).map_err(|_| "jwt_invalid_claims")?;
    match claims.get("iss") {
        None => Ok(None),
        Some(Value::String(iss)) => Ok(Some(iss.clone())),
        Some(_) => Err("jwt_invalid_claims"),
    }
}
