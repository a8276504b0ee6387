//! The fleet benchmark (SPEC §8 "The fleet", §11–12): simulated Ollama servers that
//! load models before answering, evict the least recently used one, run `parallel`
//! requests per model and generate tokens at a fixed rate, behind tollgate with each
//! routing policy in turn, over the same servers and the same workload:
//!
//! - `model_aware`: tollgate's routing (warm first, loads that evict nothing busy, a
//!   fair queue);
//! - `round_robin`: tollgate sending each request to the next server that lists the
//!   model, whatever is loaded (the baseline for requests/s);
//! - `fixed split`: each model on one server chosen by hand (the servers list only
//!   their two models, tollgate routes model-aware).
//!
//! Then the tenants phase: one key flooding the fleet and one light key sending a few
//! requests a second, the light key's latency beside the flood against its latency
//! alone. Time is compressed 4× against the spec's example (3 s loads, 1 s
//! generation): 750 ms loads, 10 tokens 25 ms apart.

mod report;
pub mod workload;

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use bytes::Bytes;
use http_body_util::BodyExt;
use testkit::ollama::{Fleet, MockOllama};
use tokio::runtime::Runtime;
use tollgate::config::{RoutingPolicy, UpstreamServerConfig};

pub use self::report::{FleetReport, fleet_table, fleet_targets};
use self::report::{FleetSettings, PolicyResult, TenantsResult};
use self::workload::{FleetWindow, MODELS, Picker, SERVERS};
use crate::gateway::{self, InProcessTollgate, MASTER_KEY};
use crate::load::{self, Call, Client, Recorder};
use crate::stats::{Summary, fmt_rate, fmt_us};
use crate::system::Placement;

/// Requests one loaded model runs at once, on every server (`OLLAMA_NUM_PARALLEL`).
pub const PARALLEL: usize = 2;
/// Models each server keeps loaded (`OLLAMA_MAX_LOADED_MODELS`).
pub const MAX_LOADED: usize = 2;
/// A load (the spec's 3 s, compressed 4×).
pub const LOAD_MS: u64 = 750;
/// Time per token and tokens per answer: 250 ms of generation (the spec's 1 s, 4×).
pub const TOKEN_MS: u64 = 25;
pub const FRAMES: usize = 10;
/// Closed-loop clients of the policy comparison.
pub const CLIENTS: usize = 12;
/// Closed-loop clients of the flooding tenant (4× what the fleet runs at once).
pub const FLOOD_CLIENTS: usize = 48;
/// The light tenant's requests per second: one per spec second, compressed 4×.
pub const LIGHT_RATE: f64 = 4.0;

/// The phases' lengths.
#[derive(Debug, Clone, Copy)]
pub struct FleetPhases {
    pub warmup: Duration,
    pub window: Duration,
}

/// What the fleet benchmark runs on: the CPUs, the generator's and the simulators'
/// runtimes.
pub struct Env<'a> {
    pub placement: &'a Placement,
    pub gen_rt: &'a Runtime,
    pub sim_rt: &'a Runtime,
}

/// A routing policy under comparison.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Policy {
    ModelAware,
    RoundRobin,
    FixedSplit,
}

impl Policy {
    pub fn name(self) -> &'static str {
        match self {
            Self::ModelAware => "model_aware",
            Self::RoundRobin => "round_robin",
            Self::FixedSplit => "fixed split",
        }
    }

    fn describe(self) -> &'static str {
        match self {
            Self::ModelAware => "tollgate, routing: model_aware (SPEC §11)",
            Self::RoundRobin => "tollgate, routing: round_robin (next server listing the model)",
            Self::FixedSplit => {
                "each model on one server chosen by hand (servers list only their 2 models)"
            }
        }
    }

    fn routing(self) -> RoutingPolicy {
        match self {
            Self::RoundRobin => RoutingPolicy::RoundRobin,
            Self::ModelAware | Self::FixedSplit => RoutingPolicy::ModelAware,
        }
    }

    fn models(self, server: usize) -> Vec<&'static str> {
        match self {
            Self::FixedSplit => workload::fixed_split(server),
            Self::ModelAware | Self::RoundRobin => workload::pulled(server),
        }
    }
}

pub fn settings(phases: FleetPhases) -> FleetSettings {
    FleetSettings {
        servers: SERVERS,
        models: MODELS.iter().map(|m| (*m).to_string()).collect(),
        pulled: (0..SERVERS)
            .map(|s| workload::pulled(s).join(", "))
            .collect(),
        fixed_split: (0..SERVERS)
            .map(|s| workload::fixed_split(s).join(", "))
            .collect(),
        parallel: PARALLEL,
        max_loaded_models: MAX_LOADED,
        load_ms: LOAD_MS,
        token_ms: TOKEN_MS,
        tokens_per_answer: FRAMES,
        clients: CLIENTS,
        flood_clients: FLOOD_CLIENTS,
        light_rate: LIGHT_RATE,
        warmup_s: phases.warmup.as_secs_f64(),
        window_s: phases.window.as_secs_f64(),
    }
}

/// The whole family: every policy, then the tenants phase.
pub fn run(env: &Env<'_>, phases: FleetPhases) -> FleetReport {
    eprintln!(
        "fleet. {SERVERS} simulated servers × {MAX_LOADED} loaded of {} models (each on 2 of 3), \
         parallel {PARALLEL}, {LOAD_MS} ms loads, {FRAMES} tokens × {TOKEN_MS} ms; \
         {CLIENTS} clients, {:.0} s warm-up + {:.0} s measured per policy",
        MODELS.len(),
        phases.warmup.as_secs_f64(),
        phases.window.as_secs_f64()
    );
    let mut policies = Vec::new();
    for policy in [Policy::RoundRobin, Policy::ModelAware, Policy::FixedSplit] {
        let result = run_policy(env, policy, phases).unwrap_or_else(|e| {
            eprintln!("  [fleet] {:<12} FAILED: {e:#}", policy.name());
            PolicyResult::failed(policy.name(), policy.describe(), format!("{e:#}"))
        });
        policies.push(result);
    }
    report::add_ratios(&mut policies);
    let tenants = run_tenants(env, phases).unwrap_or_else(|e| {
        eprintln!("  [fleet] tenants FAILED: {e:#}");
        TenantsResult::failed(format!("{e:#}"))
    });
    let mut out = FleetReport {
        settings: settings(phases),
        policies,
        tenants,
        targets: Vec::new(),
    };
    out.targets = fleet_targets(&out);
    out
}

/// The simulated servers, all alike but for the models they have pulled.
fn start_fleet(env: &Env<'_>, policy: Policy) -> Fleet {
    let builders = (0..SERVERS).map(|s| {
        MockOllama::builder()
            .models(policy.models(s))
            .parallel(PARALLEL)
            .max_loaded_models(MAX_LOADED)
            .load_time(Duration::from_millis(LOAD_MS))
            .token_interval(Duration::from_millis(TOKEN_MS))
            .completion_frames(FRAMES)
    });
    let fleet = env.sim_rt.block_on(Fleet::start(builders));
    // The mocks record every request; forget them now and then so memory stays flat.
    let servers = fleet.servers().to_vec();
    env.sim_rt.spawn(async move {
        loop {
            tokio::time::sleep(Duration::from_millis(500)).await;
            for s in &servers {
                s.clear();
            }
        }
    });
    fleet
}

fn server_names() -> Vec<String> {
    (0..SERVERS).map(|s| format!("gpu-{s}")).collect()
}

fn start_tollgate(
    env: &Env<'_>,
    fleet: &Fleet,
    policy: Policy,
) -> anyhow::Result<InProcessTollgate> {
    let urls = fleet.urls();
    let servers: Vec<UpstreamServerConfig> = server_names()
        .into_iter()
        .zip(&urls)
        .map(|(name, url)| UpstreamServerConfig {
            name,
            url: url.clone(),
            parallel: None,
            max_loaded_models: None,
        })
        .collect();
    let tollgate = InProcessTollgate::start(env.placement, &urls[0], |c| {
        c.upstream.servers = servers;
        c.upstream.parallel = PARALLEL as u32;
        c.upstream.max_loaded_models = MAX_LOADED as u32;
        c.upstream.discovery_interval_s = 1;
        c.upstream.queue_max_wait_s = 60;
        c.upstream.queue_max_depth = 10_000;
        c.upstream.routing = policy.routing();
    })?;
    if let Err(e) = env.gen_rt.block_on(wait_for_discovery(&tollgate.url)) {
        tollgate.stop();
        return Err(e);
    }
    Ok(tollgate)
}

/// Until `/upstream/status` shows every server's model list (before its first read a
/// server counts as having every model, which the fixed split must not see).
async fn wait_for_discovery(base_url: &str) -> anyhow::Result<()> {
    let client = load::client();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let req = hyper::Request::get(format!("{base_url}/upstream/status"))
            .header("authorization", format!("Bearer {MASTER_KEY}"))
            .body(http_body_util::Full::new(Bytes::new()))?;
        if let Ok(resp) = client.request(req).await
            && resp.status().is_success()
            && let Ok(body) = resp.into_body().collect().await
            && let Ok(v) = serde_json::from_slice::<serde_json::Value>(&body.to_bytes())
            && let Some(servers) = v["servers"].as_array()
            && servers.len() == SERVERS
            && servers
                .iter()
                .all(|s| s["models"].as_array().is_some_and(|m| !m.is_empty()))
        {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("tollgate did not read every server's model list within 20 s");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// One call per model, in [`MODELS`] order.
fn calls(base_url: &str, key: &str) -> anyhow::Result<Arc<Vec<Call>>> {
    let calls = MODELS
        .iter()
        .map(|m| {
            Call::chat_model(base_url, Some(key), m, false).map(|mut c| {
                c.timeout = Duration::from_secs(120);
                c
            })
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    Ok(Arc::new(calls))
}

/// `clients` closed-loop workers, each picking its next model at random (seeded by
/// `seed` and its index), from `start` until `end`; requests started from `measure_from`
/// on are recorded.
async fn closed_clients(
    client: &Client,
    calls: &Arc<Vec<Call>>,
    clients: usize,
    seed: u64,
    measure_from: Instant,
    end: Instant,
) -> Recorder {
    let mut workers = tokio::task::JoinSet::new();
    for i in 0..clients {
        let client = client.clone();
        let calls = Arc::clone(calls);
        let mut picker = Picker::new(seed.wrapping_mul(1_000).wrapping_add(i as u64), calls.len());
        workers.spawn(async move {
            let mut rec = Recorder::default();
            loop {
                let t0 = Instant::now();
                if t0 >= end {
                    break;
                }
                let call = &calls[picker.next_index()];
                let result = load::execute(&client, call, t0).await;
                if t0 >= measure_from {
                    rec.outcome(result);
                }
            }
            rec
        });
    }
    let mut all = Recorder::default();
    while let Some(done) = workers.join_next().await {
        match done {
            Ok(rec) => all.merge(rec),
            Err(e) => all.outcome(Err(format!("worker panicked: {e}"))),
        }
    }
    all
}

/// Open loop: a request every `1/rate` s from `start` until `end`, each to a random
/// model; latency from its scheduled time.
async fn open_client(
    client: &Client,
    calls: &Arc<Vec<Call>>,
    rate: f64,
    seed: u64,
    start: Instant,
    end: Instant,
) -> Recorder {
    let mut picker = Picker::new(seed, calls.len());
    let mut requests = tokio::task::JoinSet::new();
    for i in 0.. {
        let scheduled = start + load::scheduled_at(rate, i);
        if scheduled >= end {
            break;
        }
        tokio::time::sleep_until(scheduled.into()).await;
        let client = client.clone();
        let calls = Arc::clone(calls);
        let m = picker.next_index();
        requests.spawn(async move { load::execute(&client, &calls[m], scheduled).await });
    }
    let mut rec = Recorder::default();
    while let Some(done) = requests.join_next().await {
        rec.outcome(done.unwrap_or_else(|e| Err(format!("request panicked: {e}"))));
    }
    rec
}

fn run_policy(env: &Env<'_>, policy: Policy, phases: FleetPhases) -> anyhow::Result<PolicyResult> {
    let fleet = start_fleet(env, policy);
    let result = (|| {
        let tollgate = start_tollgate(env, &fleet, policy)?;
        let measured = (|| {
            let key = env.gen_rt.block_on(gateway::create_key(
                &tollgate.url,
                gateway::limited_key_request(),
            ))?;
            let calls = calls(&tollgate.url, &key)?;
            let client = load::client();
            let (rec, before, after) = env.gen_rt.block_on(async {
                let start = Instant::now();
                let measure_from = start + phases.warmup;
                let end = measure_from + phases.window;
                let snapshots = async {
                    tokio::time::sleep_until(measure_from.into()).await;
                    let before = fleet.stats();
                    tokio::time::sleep_until(end.into()).await;
                    (before, fleet.stats())
                };
                let (rec, (before, after)) = tokio::join!(
                    closed_clients(&client, &calls, CLIENTS, 1, measure_from, end),
                    snapshots
                );
                (rec, before, after)
            });
            anyhow::Ok((rec.summary(phases.window, false, false), before, after))
        })();
        tollgate.stop();
        measured
    })();
    env.sim_rt.block_on(fleet.stop());
    let (summary, before, after) = result?;
    let window = FleetWindow::diff(&server_names(), &before, &after);
    progress(policy.name(), &summary, Some(&window));
    Ok(PolicyResult::measured(
        policy.name(),
        policy.describe(),
        summary,
        window,
    ))
}

/// One key flooding with [`FLOOD_CLIENTS`] closed-loop clients, one light key sending
/// [`LIGHT_RATE`] requests a second: the light key alone (after the flood's warm-up has
/// loaded the models), then beside the flood.
fn run_tenants(env: &Env<'_>, phases: FleetPhases) -> anyhow::Result<TenantsResult> {
    eprintln!(
        "fleet. tenants: one key flooding with {FLOOD_CLIENTS} clients, one light key at \
         {LIGHT_RATE} req/s, model_aware; light alone, then beside the flood"
    );
    let fleet = start_fleet(env, Policy::ModelAware);
    let result = (|| {
        let tollgate = start_tollgate(env, &fleet, Policy::ModelAware)?;
        let measured = (|| {
            let key = |alias: &str| {
                let mut body = gateway::limited_key_request();
                body["key_alias"] = serde_json::json!(alias);
                env.gen_rt
                    .block_on(gateway::create_key(&tollgate.url, body))
            };
            let flood_calls = calls(&tollgate.url, &key("flood")?)?;
            let light_calls = calls(&tollgate.url, &key("light")?)?;
            let client = load::client();
            env.gen_rt.block_on(async {
                // Warm the fleet with the flood, then the light tenant alone.
                let start = Instant::now();
                drop(
                    closed_clients(
                        &client,
                        &flood_calls,
                        FLOOD_CLIENTS,
                        2,
                        start,
                        start + phases.warmup,
                    )
                    .await,
                );
                let start = Instant::now();
                let alone = open_client(
                    &client,
                    &light_calls,
                    LIGHT_RATE,
                    3,
                    start,
                    start + phases.window,
                )
                .await;
                let before = fleet.stats();
                // Beside the flood: the flood runs half a warm-up first.
                let start = Instant::now();
                let measure_from = start + phases.warmup / 2;
                let end = measure_from + phases.window;
                let (flood, light) = tokio::join!(
                    closed_clients(&client, &flood_calls, FLOOD_CLIENTS, 4, measure_from, end),
                    async {
                        tokio::time::sleep_until(measure_from.into()).await;
                        open_client(&client, &light_calls, LIGHT_RATE, 3, measure_from, end).await
                    }
                );
                let after = fleet.stats();
                anyhow::Ok((alone, flood, light, before, after))
            })
        })();
        tollgate.stop();
        measured
    })();
    env.sim_rt.block_on(fleet.stop());
    let (alone, flood, light, before, after) = result.context("tenants phase")?;
    let w = phases.window;
    let (alone, flood, light) = (
        alone.summary(w, false, true),
        flood.summary(w, false, false),
        light.summary(w, false, true),
    );
    progress("light alone", &alone, None);
    let window = FleetWindow::diff(&server_names(), &before, &after);
    progress("flood", &flood, Some(&window));
    progress("light+flood", &light, None);
    Ok(TenantsResult::measured(alone, light, flood, window))
}

fn progress(who: &str, s: &Summary, w: Option<&FleetWindow>) {
    let fleet = w
        .map(|w| {
            format!(
                "; {} loads, {} evictions, ≤ {} loads per model per server",
                w.loads,
                w.evictions,
                w.max_loads_per_model_server()
            )
        })
        .unwrap_or_default();
    let errors = if s.errors > 0 {
        format!(
            "; {} errors ({})",
            s.errors,
            s.first_error.clone().unwrap_or_default()
        )
    } else {
        String::new()
    };
    eprintln!(
        "  [fleet] {who:<12} {:>7} req/s; p50 {} p99 {} max {}{fleet}{errors}",
        fmt_rate(s.rps),
        fmt_us(s.latency.p50_us),
        fmt_us(s.latency.p99_us),
        fmt_us(s.latency.max_us),
    );
}
