//! Typed configuration (SPEC §3): the YAML file, `${VAR}` expansion, `TOLLGATE__…`
//! overrides and validation.
//!
//! Configuration is read exactly once, at start-up, and this is the only module that reads
//! environment variables. Every section rejects unknown keys so a typo (`sever:`,
//! `database.ulr`) stops start-up with the key's name instead of being silently ignored.

mod duration;
mod expand;
mod jwt;
mod load;

pub use duration::{
    Duration, MAX_SECS as MAX_DURATION_SECS, parse_duration, pattern as duration_pattern,
};
pub use jwt::{JwtProvider, ProviderConfig};
pub use load::{ConfigError, load};

/// Entry points for the fuzz targets in `fuzz/` (the `${VAR}` expansion and loading
/// from text); not part of the API.
#[doc(hidden)]
pub mod fuzzing {
    pub use super::expand::{expand_str, is_whole_reference};
    pub use super::load::load_from;
}

use serde::{Deserialize, Serialize};

/// A secret string whose `Debug` never prints it.
#[derive(Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Secret(pub String);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(***)")
    }
}

impl Secret {
    pub fn expose(&self) -> &str {
        &self.0
    }
}

/// The whole configuration file.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    pub server: ServerConfig,
    pub database: DatabaseConfig,
    pub redis: RedisConfig,
    pub cache: CacheConfig,
    pub upstream: UpstreamConfig,
    pub pricing: PricingConfig,
    pub jwt: JwtConfig,
    /// Usage rows (`/spend/logs`): how long they are kept (SPEC §13).
    pub usage: RetentionConfig,
    /// Audit rows (`/audit/logs`): how long they are kept (SPEC §13).
    pub audit: RetentionConfig,
    pub auth_webhook: AuthWebhookConfig,
    pub log: LogConfig,
}

/// `usage:` and `audit:`: rows older than `retention_days` are deleted by the retention
/// job; `null` keeps everything.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RetentionConfig {
    pub retention_days: Option<u64>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServerConfig {
    /// Address to bind, `host:port`.
    pub listen: String,
    /// Admin bearer. `None` means only admin JWTs can use the management API.
    pub master_key: Option<Secret>,
    pub max_body_bytes: usize,
    /// Whole upstream request, streams included.
    pub request_timeout_s: u64,
    pub shutdown_grace_s: u64,
    /// Honour a well-formed incoming `X-Request-ID`.
    pub trusted_request_id: bool,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:4000".into(),
            master_key: None,
            max_body_bytes: 10 * 1024 * 1024,
            request_timeout_s: 600,
            shutdown_grace_s: 30,
            trusted_request_id: true,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DatabaseConfig {
    pub url: Secret,
    pub auto_migrate: bool,
    pub max_connections: u32,
}

impl Default for DatabaseConfig {
    fn default() -> Self {
        Self {
            url: Secret("sqlite://tollgate.db?mode=rwc".into()),
            auto_migrate: true,
            max_connections: 20,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FailureMode {
    /// Limits unavailable → 503 `limits_unavailable`.
    #[default]
    Closed,
    /// Fall back to in-process limits, logged and counted.
    Open,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RedisConfig {
    /// `None` = single instance: in-process cache and limiters.
    pub url: Option<Secret>,
    pub failure_mode: FailureMode,
    /// Prepended to every Redis key and channel, so several deployments (or test runs)
    /// can share one Redis. Empty by default: keys are exactly as SPEC §6.3 names them.
    pub key_prefix: String,
}

impl Default for RedisConfig {
    fn default() -> Self {
        Self {
            url: None,
            failure_mode: FailureMode::Closed,
            key_prefix: String::new(),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CacheConfig {
    pub key_ttl_s: u64,
    pub stale_if_error_s: u64,
}

impl Default for CacheConfig {
    fn default() -> Self {
        Self {
            key_ttl_s: 60,
            stale_if_error_s: 300,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct UpstreamConfig {
    /// One server, named `default` (shorthand for `servers`; both set is an error).
    pub url: String,
    pub connect_timeout_s: u64,
    pub admin_routes_require_admin: bool,
    pub allow_keep_alive: bool,
    pub max_num_ctx: Option<u64>,
    /// Several Ollama servers (SPEC §11) instead of `url`.
    pub servers: Vec<UpstreamServerConfig>,
    /// Default per server: requests one loaded model runs at once (`OLLAMA_NUM_PARALLEL`).
    pub parallel: u32,
    /// Default per server: models it keeps loaded (`OLLAMA_MAX_LOADED_MODELS`).
    pub max_loaded_models: u32,
    /// How often each server's `/api/tags` and `/api/ps` are read.
    pub discovery_interval_s: u64,
    /// Consecutive connection failures or 5xx that take a server out of service.
    pub eject_after_failures: u32,
    /// How long an ejected server stays out before it is probed.
    pub eject_s: u64,
    /// Longest a request waits for a slot (SPEC §12) before 503 `upstream_busy`.
    pub queue_max_wait_s: u64,
    /// Requests that may wait at once on this instance; more are 503 at once.
    pub queue_max_depth: u64,
    /// `model_aware` (SPEC §11) or `round_robin` (kept for the fleet benchmark's
    /// comparison; not for production).
    pub routing: RoutingPolicy,
    /// Let non-admin callers use Ollama cloud models (a tag of `cloud` or ending in
    /// `-cloud`), which send prompts off the premises; off, they are refused and hidden.
    pub allow_cloud_models: bool,
}

/// The default upstream when neither `url` nor `servers` is given.
pub const DEFAULT_UPSTREAM_URL: &str = "http://127.0.0.1:11434";

impl Default for UpstreamConfig {
    fn default() -> Self {
        Self {
            url: DEFAULT_UPSTREAM_URL.into(),
            connect_timeout_s: 5,
            admin_routes_require_admin: true,
            allow_keep_alive: false,
            max_num_ctx: None,
            servers: Vec::new(),
            parallel: 4,
            max_loaded_models: 3,
            discovery_interval_s: 10,
            eject_after_failures: 3,
            eject_s: 10,
            queue_max_wait_s: 30,
            queue_max_depth: 1000,
            routing: RoutingPolicy::ModelAware,
            allow_cloud_models: false,
        }
    }
}

/// One Ollama server of `upstream.servers`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamServerConfig {
    /// 1–32 characters of `[a-z0-9-]`, unique.
    pub name: String,
    pub url: String,
    /// Overrides `upstream.parallel` for this server.
    #[serde(default)]
    pub parallel: Option<u32>,
    /// Overrides `upstream.max_loaded_models` for this server.
    #[serde(default)]
    pub max_loaded_models: Option<u32>,
}

/// How requests are spread over the servers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RoutingPolicy {
    /// Warm first, loads only where they evict nothing busy, otherwise wait (SPEC §11).
    #[default]
    ModelAware,
    /// Each request to the next server that lists the model, whatever is loaded.
    RoundRobin,
}

/// A server with the defaults applied: what the fleet is built from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerSpec {
    pub name: String,
    pub url: String,
    pub parallel: u32,
    pub max_loaded_models: u32,
}

impl UpstreamConfig {
    /// The servers to route to: `servers`, or `url` as one server named `default`.
    pub fn server_specs(&self) -> Vec<ServerSpec> {
        let spec = |name: &str, url: &str, parallel: Option<u32>, loaded: Option<u32>| ServerSpec {
            name: name.to_string(),
            url: url.trim_end_matches('/').to_string(),
            parallel: parallel.unwrap_or(self.parallel),
            max_loaded_models: loaded.unwrap_or(self.max_loaded_models),
        };
        if self.servers.is_empty() {
            vec![spec("default", &self.url, None, None)]
        } else {
            self.servers
                .iter()
                .map(|s| spec(&s.name, &s.url, s.parallel, s.max_loaded_models))
                .collect()
        }
    }
}

/// Cost units per one million tokens.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Price {
    pub input: f64,
    pub output: f64,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PricingConfig {
    pub default: Price,
    pub models: std::collections::BTreeMap<String, Price>,
}

impl PricingConfig {
    /// Cost of one request in cost units.
    pub fn cost(&self, model: &str, prompt_tokens: u64, completion_tokens: u64) -> f64 {
        let price = self
            .models
            .get(model)
            .or_else(|| {
                // `name` and `name:latest` are the same model to Ollama.
                match model.strip_suffix(":latest") {
                    Some(base) => self.models.get(base),
                    None => self.models.get(&format!("{model}:latest")),
                }
            })
            .unwrap_or(&self.default);
        (prompt_tokens as f64 * price.input + completion_tokens as f64 * price.output) / 1e6
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UnregisteredPolicy {
    Reject,
    #[default]
    Fallback,
    AutoRegister,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    ProxyAdmin,
    TeamAdmin,
    Viewer,
}

/// A PEM public key for JWT verification, with an optional `kid`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PublicKeyConfig {
    pub pem: String,
    #[serde(default)]
    pub kid: Option<String>,
}

/// Limits stamped on keys minted by `auto_register`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AutoRegisterLimits {
    pub models: Vec<String>,
    pub rpm_limit: Option<u64>,
    pub tpm_limit: Option<u64>,
    pub max_parallel_requests: Option<u64>,
    pub max_budget: Option<f64>,
    pub budget_duration: Option<Duration>,
    pub duration: Option<Duration>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct JwtConfig {
    pub enabled: bool,
    /// Several identity providers, each key bound to its issuer (SPEC §6.2). Excludes
    /// the flat `jwks_urls` / `public_keys` / `issuers`; see
    /// [`JwtConfig::resolved_providers`].
    pub providers: Vec<ProviderConfig>,
    pub jwks_urls: Vec<String>,
    pub public_keys: Vec<PublicKeyConfig>,
    pub issuers: Vec<String>,
    pub audiences: Vec<String>,
    pub algorithms: Vec<String>,
    pub leeway_s: u64,
    pub jwks_refresh_s: u64,
    pub jwks_min_refetch_s: u64,
    pub max_token_bytes: usize,
    pub user_id_claim: String,
    pub email_claim: String,
    pub team_id_claim: Option<String>,
    pub org_id_claim: Option<String>,
    pub team_default: Option<String>,
    pub scope_claim: String,
    pub required_scopes: Vec<String>,
    pub admin_scope: Option<String>,
    pub allowed_email_domains: Vec<String>,
    pub required_claims: std::collections::BTreeMap<String, Vec<serde_json::Value>>,
    pub verified_token_cache: bool,
    pub role_claim: Option<String>,
    pub role_map: std::collections::BTreeMap<String, Role>,
    pub virtual_key_claim: Option<String>,
    pub unregistered_policy: UnregisteredPolicy,
    pub mapping_cache_ttl_s: u64,
    pub auto_register: AutoRegisterLimits,
}

impl Default for JwtConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            providers: Vec::new(),
            jwks_urls: Vec::new(),
            public_keys: Vec::new(),
            issuers: Vec::new(),
            audiences: Vec::new(),
            algorithms: [
                "RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "EdDSA",
            ]
            .map(String::from)
            .to_vec(),
            leeway_s: 30,
            jwks_refresh_s: 300,
            jwks_min_refetch_s: 10,
            max_token_bytes: 16384,
            user_id_claim: "sub".into(),
            email_claim: "email".into(),
            team_id_claim: None,
            org_id_claim: None,
            team_default: None,
            scope_claim: "scope".into(),
            required_scopes: Vec::new(),
            admin_scope: None,
            allowed_email_domains: Vec::new(),
            required_claims: Default::default(),
            verified_token_cache: true,
            role_claim: None,
            role_map: Default::default(),
            virtual_key_claim: None,
            unregistered_policy: UnregisteredPolicy::Fallback,
            mapping_cache_ttl_s: 300,
            auto_register: AutoRegisterLimits::default(),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthWebhookConfig {
    pub url: Option<String>,
    pub timeout_ms: u64,
    pub cache_ttl_s: u64,
}

impl Default for AuthWebhookConfig {
    fn default() -> Self {
        Self {
            url: None,
            timeout_ms: 2000,
            cache_ttl_s: 30,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogConfig {
    /// A `tracing` filter; `RUST_LOG` wins when set.
    pub level: String,
    pub format: LogFormat,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            level: "info".into(),
            format: LogFormat::Text,
        }
    }
}
