//! Logs (tracing to stderr, text or JSON) and Prometheus metrics.
//!
//! Metric names live here as constants so every counter is declared in one place.

use std::io::IsTerminal;
use std::sync::OnceLock;
use std::time::Duration;

use metrics::{Counter, Gauge, Histogram};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use tracing_subscriber::EnvFilter;

use crate::config::{LogConfig, LogFormat};

pub const REQUESTS: &str = "tollgate_requests_total";
pub const REQUEST_SECONDS: &str = "tollgate_request_duration_seconds";
pub const UPSTREAM_SECONDS: &str = "tollgate_upstream_duration_seconds";
pub const AUTH_FAILURES: &str = "tollgate_auth_failures_total";
pub const LIMIT_REJECTIONS: &str = "tollgate_limit_rejections_total";
pub const CACHE_LOOKUPS: &str = "tollgate_cache_lookups_total";
pub const STREAMS_IN_FLIGHT: &str = "tollgate_streams_in_flight";
pub const USAGE_ROWS: &str = "tollgate_usage_rows_written_total";
pub const LIMITER_FALLBACKS: &str = "tollgate_limiter_fallbacks_total";
/// Redis settlements sent on their own because the settler's queue was full.
pub const LIMITER_SETTLE_OVERFLOWS: &str = "tollgate_limiter_settle_overflows_total";
/// `settle.lua` calls that failed (their leases lapse; their usage is not counted in Redis).
pub const LIMITER_SETTLE_FAILURES: &str = "tollgate_limiter_settle_failures_total";
/// Server slots counted locally because Redis could not answer (`failure_mode: open`).
pub const SLOT_FALLBACKS: &str = "tollgate_upstream_slot_fallbacks_total";
pub const UPSTREAM_REQUESTS: &str = "tollgate_upstream_requests_total";
pub const UPSTREAM_FAILURES: &str = "tollgate_upstream_failures_total";
pub const UPSTREAM_MODEL_LOADS: &str = "tollgate_upstream_model_loads_total";
pub const UPSTREAM_STATE: &str = "tollgate_upstream_state";
pub const UPSTREAM_IN_FLIGHT: &str = "tollgate_upstream_in_flight";
pub const QUEUE_DEPTH: &str = "tollgate_queue_depth";
pub const QUEUE_WAIT_SECONDS: &str = "tollgate_queue_wait_seconds";
pub const QUEUE_TIMEOUTS: &str = "tollgate_queue_timeouts_total";
/// Rows the retention job deleted, by `table` (`usage`, `audit`) (SPEC §13).
pub const RETENTION_DELETED: &str = "tollgate_retention_deleted_rows_total";
/// Retention runs, by `outcome` (`ran`, `skipped` — another instance held the lock —
/// or `failed`).
pub const RETENTION_RUNS: &str = "tollgate_retention_runs_total";

/// One proxied route's metric handles, each registered on its first use (so `/metrics`
/// lists only series that happened). Recording through a handle skips the recorder's
/// lookup that `counter!`/`histogram!` make on every call (the name and labels hashed, a
/// map read, the labels built and dropped).
pub struct RouteMetrics {
    route: &'static str,
    request_seconds: OnceLock<Histogram>,
    upstream_seconds: OnceLock<Histogram>,
    /// `tollgate_requests_total` by outcome (`status` label).
    requests: Vec<(&'static str, OnceLock<Counter>)>,
}

impl RouteMetrics {
    /// `route`'s metrics, with one `status` label value per entry of `statuses`.
    pub fn new(route: &'static str, statuses: &[&'static str]) -> Self {
        Self {
            route,
            request_seconds: OnceLock::new(),
            upstream_seconds: OnceLock::new(),
            requests: statuses.iter().map(|&s| (s, OnceLock::new())).collect(),
        }
    }

    /// A request on this route ended with `status` after `took`.
    pub fn finished(&self, status: &'static str, took: Duration) {
        let route = self.route;
        registered(
            &self.request_seconds,
            || metrics::histogram!(REQUEST_SECONDS, "route" => route),
        )
        .record(took.as_secs_f64());
        if let Some((status, cell)) = self.requests.iter().find(|(s, _)| *s == status) {
            registered(
                cell,
                || metrics::counter!(REQUESTS, "route" => route, "status" => *status),
            )
            .increment(1);
        }
    }

    /// The upstream answered (its response head) after `took`.
    pub fn upstream_answered(&self, took: Duration) {
        let route = self.route;
        registered(
            &self.upstream_seconds,
            || metrics::histogram!(UPSTREAM_SECONDS, "route" => route),
        )
        .record(took.as_secs_f64());
    }
}

/// A handle registered on first use, once the recorder is installed (a handle taken
/// before it would record nowhere).
fn registered<T>(cell: &OnceLock<T>, register: impl FnOnce() -> T) -> &T {
    cell.get_or_init(|| {
        drop(metrics_handle());
        register()
    })
}

/// `tollgate_streams_in_flight`.
pub fn streams_in_flight() -> &'static Gauge {
    static CELL: OnceLock<Gauge> = OnceLock::new();
    registered(&CELL, || metrics::gauge!(STREAMS_IN_FLIGHT))
}

/// Which of the credential caches a lookup was in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheKind {
    Key,
    Team,
}

impl CacheKind {
    /// The `cache` label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Key => "key",
            Self::Team => "team",
        }
    }
}

/// `tollgate_cache_lookups_total` for one cache, hit or miss.
pub fn cache_lookup(cache: CacheKind, hit: bool) {
    static CELLS: OnceLock<[[Counter; 2]; 2]> = OnceLock::new();
    let cells = registered(&CELLS, || {
        [CacheKind::Key, CacheKind::Team].map(|cache| {
            ["hit", "miss"].map(|result| {
                metrics::counter!(CACHE_LOOKUPS, "cache" => cache.as_str(), "result" => result)
            })
        })
    });
    cells[cache as usize][usize::from(!hit)].increment(1);
}

/// The queue's depth now (SPEC §12).
pub fn queue_depth(depth: usize) {
    metrics::gauge!(QUEUE_DEPTH).set(depth as f64);
}

/// One request's time in the queue, and whether it got a slot.
pub fn queue_wait(waited: std::time::Duration, granted: bool) {
    metrics::histogram!(QUEUE_WAIT_SECONDS).record(waited.as_secs_f64());
    if !granted {
        metrics::counter!(QUEUE_TIMEOUTS).increment(1);
    }
}

/// Installs the global tracing subscriber. `RUST_LOG` wins over `log.level`.
///
/// Lines are written to stderr by a background thread, so a request never waits on a
/// terminal or pipe; keep the returned guard alive until exit (dropping it flushes).
pub fn init_logging(config: &LogConfig) -> tracing_appender::non_blocking::WorkerGuard {
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(&config.level))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let (writer, guard) = tracing_appender::non_blocking::NonBlockingBuilder::default()
        // Under a flood, wait rather than silently drop log lines.
        .lossy(false)
        // The log thread writes what has queued, then flushes: a burst of lines is one
        // write(2), not one per line.
        .finish(std::io::BufWriter::with_capacity(
            64 * 1024,
            std::io::stderr(),
        ));
    // Colour codes only for a person at a terminal: in a file or a log pipeline they are
    // noise (and formatting them costs every request line).
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(writer);
    let result = match config.format {
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
        LogFormat::Text => builder.try_init(),
    };
    // A second initialisation (tests building several apps) keeps the first subscriber.
    drop(result);
    guard
}

/// The process-wide Prometheus recorder, installed on first use.
pub fn metrics_handle() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let recorder = PrometheusBuilder::new()
                .set_buckets(&[
                    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25,
                    0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0,
                ])
                .map(|b| b.build_recorder())
                .unwrap_or_else(|_| PrometheusBuilder::new().build_recorder());
            let handle = recorder.handle();
            // Fails only if another recorder was installed first; then ours stays unused
            // but the handle still renders (empty) text.
            drop(metrics::set_global_recorder(recorder));
            handle
        })
        .clone()
}

/// How often histogram samples are folded into their buckets when nobody scrapes.
const UPKEEP_EVERY: std::time::Duration = std::time::Duration::from_secs(5);

/// Folds recorded histogram samples into their buckets every few seconds. The recorder
/// keeps each sample until a scrape of `/metrics` renders it; with nobody scraping, the
/// samples of every request pile up for ever (the soak benchmark saw about 50 MiB per
/// million requests).
pub fn start_upkeep(handle: PrometheusHandle, tasks: &crate::tasks::TaskSpawner) {
    tasks.spawn_loop("metrics upkeep", async move {
        let mut ticker = tokio::time::interval(UPKEEP_EVERY);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticker.tick().await;
            handle.run_upkeep();
        }
    });
}

/// Shows at most the first 8 characters of a secret, for logs.
pub fn redact(token: &str) -> String {
    let prefix: String = token.chars().take(8).collect();
    format!("{prefix}…")
}
