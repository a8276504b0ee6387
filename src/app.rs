//! `App`: the state every handler shares, built once from configuration.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use metrics_exporter_prometheus::PrometheusHandle;
use tokio_util::sync::CancellationToken;

use crate::auth::keys::KeyResolver;
use crate::config::Config;
use crate::proxy::Upstream;
use crate::store::redis::RedisConn;
use crate::store::{SqlStore, Store};
use crate::usage::SpendRecorder;

/// Shared application state. One per process; cloned as `Arc<App>` into handlers.
pub struct App {
    /// Validated configuration.
    pub config: Config,
    /// Keys, teams, mappings, usage.
    pub store: Arc<dyn Store>,
    /// Set when `redis.url` is configured.
    pub redis: Option<RedisConn>,
    /// Renders `/metrics`.
    pub metrics: PrometheusHandle,
    /// Fired when the shutdown grace period ends: in-flight streams stop.
    pub cancel: CancellationToken,
    /// Fired when shutdown starts (no new connections): long-lived sockets close now.
    pub stopping: CancellationToken,
    /// SHA-256 of `server.master_key` (compared in constant time), if set.
    pub master_key_hash: Option<String>,
    /// Virtual key and team lookups, cached.
    pub keys: Arc<KeyResolver>,
    /// Spreads key/team changes to every instance.
    pub invalidator: crate::invalidation::Invalidator,
    /// JWT verification, when `jwt.enabled`.
    pub jwt: Option<Arc<crate::auth::jwt::JwtVerifier>>,
    /// Delegated validation of other token shapes, when `auth_webhook.url` is set.
    pub auth_webhook: Option<crate::auth::webhook::AuthWebhook>,
    /// Pooled client for Ollama.
    pub upstream: Upstream,
    /// Batched usage and spend writer.
    pub spend: SpendRecorder,
    /// Claim → key resolutions (SPEC §6.3): Redis when configured, else in process.
    pub mapping_cache: crate::store::shared_cache::SharedCache,
    /// Admission control for keys and teams.
    pub limiter: crate::limits::Limiter,
    /// Live feed of finished requests (the console's WebSocket).
    pub events: crate::telemetry::events::EventFeed,
    /// Proxied responses still being streamed (drained on shutdown).
    pub in_flight: crate::proxy::InFlight,
}

impl App {
    /// Connects to the database (migrating unless disabled) and Redis, and assembles the
    /// services. Fails with a message naming the dependency that is missing.
    pub async fn build(config: Config) -> anyhow::Result<Arc<App>> {
        let db = crate::store::connect(&config.database)
            .await
            .context("cannot connect to the database (database.url)")?;
        if config.database.auto_migrate {
            crate::store::migrate(&db)
                .await
                .context("database migration failed")?;
        }
        let redis = match &config.redis.url {
            Some(url) => Some(
                RedisConn::connect(url.expose(), &config.redis.key_prefix)
                    .await
                    .context("cannot connect to Redis (redis.url)")?,
            ),
            None => None,
        };
        if config
            .server
            .master_key
            .as_ref()
            .is_none_or(|k| k.expose().is_empty())
        {
            tracing::warn!("no server.master_key: the management API answers only admin JWTs");
        }
        let store: Arc<dyn Store> = Arc::new(SqlStore::new(db));
        let keys = Arc::new(KeyResolver::new(
            store.clone(),
            Duration::from_secs(config.cache.key_ttl_s),
            Duration::from_secs(config.cache.stale_if_error_s),
        ));
        let invalidator = crate::invalidation::Invalidator::start(redis.clone(), keys.clone())
            .await
            .context("cannot subscribe to Redis (redis.url)")?;
        let upstream = Upstream::new(&config).context("cannot build the upstream client")?;
        let cancel = CancellationToken::new();
        let jwt = if config.jwt.enabled {
            let http = crate::outbound::client_builder()
                .timeout(Duration::from_secs(5))
                .build()
                .context("cannot build the JWKS client")?;
            let verifier = Arc::new(
                crate::auth::jwt::JwtVerifier::new(&config.jwt, http)
                    .map_err(|e| anyhow::anyhow!(e))?,
            );
            verifier.start_refresh(cancel.clone());
            Some(verifier)
        } else {
            None
        };
        let master_key_hash = config
            .server
            .master_key
            .as_ref()
            .filter(|k| !k.expose().is_empty())
            .map(|k| crate::auth::secrets::hash_secret(k.expose()));
        Ok(Arc::new(App {
            spend: SpendRecorder::start(store.clone()),
            store,
            keys,
            invalidator,
            upstream,
            master_key_hash,
            in_flight: crate::proxy::InFlight::default(),
            events: crate::telemetry::events::EventFeed::default(),
            mapping_cache: crate::store::shared_cache::SharedCache::new(
                redis.clone(),
                Duration::from_secs(config.jwt.mapping_cache_ttl_s.max(1)),
            ),
            limiter: crate::limits::Limiter::new(
                redis.clone().map(|conn| {
                    crate::limits::RedisLimiter::new(
                        conn,
                        Duration::from_secs(config.server.request_timeout_s),
                    )
                }),
                config.redis.failure_mode,
            ),
            redis,
            metrics: crate::telemetry::metrics_handle(),
            cancel,
            stopping: CancellationToken::new(),
            jwt,
            auth_webhook: crate::auth::webhook::AuthWebhook::new(&config.auth_webhook)
                .transpose()
                .context("cannot build the auth webhook client")?,
            config,
        }))
    }

    /// Makes a key or team change visible here at once and on every other instance.
    pub async fn invalidate(&self, change: crate::invalidation::Change) {
        self.invalidator.publish(&self.keys, change).await;
    }

    /// Releases connections (Redis) after the server has stopped.
    pub async fn close(&self) {
        self.spend.shutdown().await;
        if let Some(redis) = &self.redis {
            redis.quit().await;
        }
    }
}
