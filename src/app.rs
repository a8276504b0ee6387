//! `App`: the composition root. It is built once from configuration, connects the
//! database and Redis, constructs every component with the parts it uses, starts the
//! background tasks, and is what the handlers, the router and the server see.
//!
//! Nothing below the HTTP layer takes an `App`: each component names its dependencies in
//! its constructor, so the wiring is all here and readable in one place.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use metrics_exporter_prometheus::PrometheusHandle;
use tokio_util::sync::CancellationToken;

use crate::auth::Authenticator;
use crate::auth::invalidation::Invalidator;
use crate::auth::jwt::JwtVerifier;
use crate::auth::keys::KeyResolver;
use crate::auth::mapping::{MappingPolicy, MappingResolver};
use crate::auth::tickets::TicketStore;
use crate::auth::webhook::AuthWebhook;
use crate::config::Config;
use crate::limits::{Limiter, RedisLimiter};
use crate::services::audit::AuditService;
use crate::services::keys::KeyService;
use crate::services::mappings::MappingService;
use crate::services::proxy::{InFlight, Proxy, ProxyParts, UsageSink};
use crate::services::spend::SpendService;
use crate::services::teams::TeamService;
use crate::services::upstreams::UpstreamService;
use crate::store::redis::RedisConn;
use crate::store::shared_cache::SharedCache;
use crate::store::{SqlStore, Store};
use crate::tasks::BackgroundTasks;
use crate::upstream::Upstream;
use crate::upstream::slots::SharedSlots;
use crate::usage::{BudgetResets, EventFeed, Retention, SpendRecorder};

/// How long shutdown waits for background tasks (settlements, the last usage batch).
const TASKS_SHUTDOWN_LIMIT: Duration = Duration::from_secs(10);

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
    /// Virtual key and team lookups, cached.
    pub keys: Arc<KeyResolver>,
    /// Bearer credential → caller.
    pub authenticator: Arc<Authenticator>,
    /// SSO identity → virtual key (and its shared cache).
    pub mappings: Arc<MappingResolver>,
    /// Admission control for keys and teams.
    pub limiter: Arc<Limiter>,
    /// The proxy pipeline.
    pub proxy: Proxy,
    /// The Ollama servers (status, drain).
    pub upstream: Arc<Upstream>,
    /// Batched usage and spend writer.
    pub spend: SpendRecorder,
    /// Live feed of finished requests (the console's WebSocket).
    pub events: EventFeed,
    /// Proxied responses still being streamed (drained on shutdown).
    pub in_flight: InFlight,
    /// The budget-period job.
    pub budgets: Arc<BudgetResets>,
    /// The job deleting usage and audit rows past their retention (SPEC §13).
    pub retention: Arc<Retention>,
    /// The console's single-use WebSocket tickets (Redis when configured).
    pub tickets: TicketStore,
    pub key_service: KeyService,
    pub team_service: TeamService,
    pub mapping_service: MappingService,
    pub spend_logs: SpendService,
    pub audit_logs: AuditService,
    pub upstream_service: UpstreamService,
    /// Owner of every background task.
    tasks: BackgroundTasks,
}

impl App {
    /// Connects to the database (migrating unless disabled) and Redis, and assembles the
    /// services. Fails with a message naming the dependency that is missing.
    pub async fn build(config: Config) -> anyhow::Result<Arc<App>> {
        Self::build_with(config, |store| store).await
    }

    /// [`App::build`], with the store wrapped before any component receives it (tests
    /// count or break storage calls this way).
    pub async fn build_with(
        config: Config,
        wrap_store: impl FnOnce(Arc<dyn Store>) -> Arc<dyn Store>,
    ) -> anyhow::Result<Arc<App>> {
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
        let tasks = BackgroundTasks::new();
        let spawner = tasks.spawner();
        let store = wrap_store(Arc::new(SqlStore::new(db)));

        let keys = Arc::new(KeyResolver::new(
            store.clone(),
            Duration::from_secs(config.cache.key_ttl_s),
            Duration::from_secs(config.cache.stale_if_error_s),
        ));
        let invalidator = Arc::new(
            Invalidator::start(redis.clone(), keys.clone(), &spawner)
                .await
                .context("cannot subscribe to Redis (redis.url)")?,
        );
        let jwt = if config.jwt.enabled {
            let http = crate::outbound::client_builder()
                .timeout(Duration::from_secs(5))
                .build()
                .context("cannot build the JWKS client")?;
            let verifier =
                Arc::new(JwtVerifier::new(&config.jwt, http).map_err(|e| anyhow::anyhow!(e))?);
            verifier.start_refresh(&spawner);
            Some(verifier)
        } else {
            None
        };
        let mappings = Arc::new(MappingResolver::new(
            MappingPolicy::from_config(&config.jwt),
            store.clone(),
            keys.clone(),
            SharedCache::new(
                redis.clone(),
                Duration::from_secs(config.jwt.mapping_cache_ttl_s.max(1)),
            ),
        ));
        let master_key_hash = config
            .server
            .master_key
            .as_ref()
            .filter(|k| !k.expose().is_empty())
            .map(|k| crate::auth::secrets::hash_secret(k.expose()));
        let webhook = AuthWebhook::new(&config.auth_webhook)
            .transpose()
            .context("cannot build the auth webhook client")?;
        let authenticator = Arc::new(Authenticator::new(
            master_key_hash,
            keys.clone(),
            jwt,
            mappings.clone(),
            webhook,
        ));

        let limiter = Arc::new(Limiter::new(
            redis.clone().map(|conn| {
                RedisLimiter::new(
                    conn,
                    Duration::from_secs(config.server.request_timeout_s),
                    spawner.clone(),
                )
            }),
            config.redis.failure_mode,
        ));
        let spend = SpendRecorder::start(store.clone(), &spawner);
        let events = EventFeed::default();
        let in_flight = InFlight::default();
        let cancel = CancellationToken::new();
        let mut upstream = Upstream::new(&config).context("cannot build the upstream client")?;
        // Round robin (the benchmark's baseline) leaves queueing to Ollama: no slots to
        // share.
        if let Some(conn) = &redis
            && config.upstream.routing != crate::config::RoutingPolicy::RoundRobin
        {
            let slots = SharedSlots::start(
                conn.clone(),
                upstream.fleet().clone(),
                Duration::from_secs(config.server.request_timeout_s),
                &spawner,
            )
            .await
            .context("cannot subscribe to Redis (redis.url)")?;
            upstream.share_slots(slots, config.redis.failure_mode);
        }
        let upstream = Arc::new(upstream);
        let proxy = Proxy::new(ProxyParts {
            authenticator: authenticator.clone(),
            limiter: limiter.clone(),
            upstream: upstream.clone(),
            policy: config.upstream.clone(),
            usage: Arc::new(UsageSink {
                pricing: config.pricing.clone(),
                limiter: limiter.clone(),
                events: events.clone(),
                spend: spend.clone(),
            }),
            in_flight: in_flight.clone(),
            cancel: cancel.clone(),
        });

        let budgets = Arc::new(BudgetResets::new(store.clone(), invalidator.clone()));
        let retention = Arc::new(Retention::new(
            store.clone(),
            config.usage.retention_days,
            config.audit.retention_days,
        ));

        Ok(Arc::new(App {
            key_service: KeyService::new(store.clone(), invalidator.clone()),
            team_service: TeamService::new(store.clone(), invalidator.clone()),
            mapping_service: MappingService::new(store.clone(), mappings.clone()),
            mappings,
            limiter,
            spend_logs: SpendService::new(store.clone()),
            audit_logs: AuditService::new(store.clone()),
            upstream_service: UpstreamService::new(upstream.clone(), store.clone()),
            tickets: TicketStore::new(redis.clone()),
            metrics: crate::telemetry::metrics_handle(),
            stopping: CancellationToken::new(),
            store,
            redis,
            cancel,
            keys,
            authenticator,
            proxy,
            upstream,
            spend,
            events,
            in_flight,
            budgets,
            retention,
            tasks,
            config,
        }))
    }

    /// Starts the jobs a serving instance runs: budget-period resets, retention (when
    /// configured) and, with several Ollama servers, their discovery. (An instance that
    /// only migrates or is inspected runs none.)
    pub fn start_jobs(&self) {
        let spawner = self.tasks.spawner();
        self.budgets.start(&spawner);
        self.retention.start(&spawner);
        if self.upstream.is_fleet() {
            // One server needs no discovery: there is nothing to choose between.
            self.upstream.start_discovery(&spawner);
        }
        crate::telemetry::start_upkeep(self.metrics.clone(), &spawner);
    }

    /// Background tasks still running (0 once [`App::close`] has returned).
    pub fn background_tasks(&self) -> usize {
        self.tasks.len()
    }

    /// After the server has stopped: writes the last usage rows, stops and awaits every
    /// background task, then releases Redis.
    pub async fn close(&self) {
        self.spend.shutdown().await;
        self.tasks.shutdown(TASKS_SHUTDOWN_LIMIT).await;
        if let Some(redis) = &self.redis {
            redis.quit().await;
        }
    }
}
