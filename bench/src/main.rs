//! `tollgate-bench`: measures tollgate against calling a mock Ollama directly, in the same
//! run, on loopback (SPEC §8).
//!
//! ```text
//! cargo run --release -p tollgate-bench               # full run (~3.5 minutes, the fleet benchmark included)
//! cargo run --release -p tollgate-bench -- --quick    # smoke run (~40 s)
//! ```
//!
//! Scenarios (each load sent straight to the mock and through the gateway(s), taking
//! turns in ~1 s slices so background load on the machine hits every target alike):
//! - a. non-streaming `POST /api/chat` with a virtual key whose RPM/TPM limits are set:
//!   open loop at `--rate` req/s (added latency) and closed loop at `--concurrency`
//!   (peak throughput);
//! - b. streaming `/api/chat` (8 frames, 2 ms apart): time to first and to last byte;
//! - c. the same open-loop load with a JWT mapped to a key (a probe request first: while
//!   tollgate refuses the JWT the scenario is "skipped: JWT auth not built yet");
//! - d. scenario a with `redis.url` set, when `TOLLGATE_BENCH_REDIS` names a Redis;
//! - e. `--streams` concurrent slow streams (40 frames, 50 ms apart) through tollgate in
//!   a child process, with its idle and peak RSS;
//! - f. a's open- and closed-loop loads through nginx `proxy_pass` (one worker,
//!   keep-alive upstream) when nginx is installed: the "plain proxy" reference;
//! - g. soak: `--soak-requests` (a million) non-streaming requests through tollgate in a
//!   child process, with its RSS before, right after and after `--soak-idle-s` idle.
//! - h. fast upstream: a's closed loop against an upstream as fast as nginx's static
//!   answers (a second nginx, `return 200` with an `/api/chat` body, beside the mock),
//!   straight, through tollgate, through nginx `proxy_pass` and through a bare hyper
//!   proxy ([`bare`]: tollgate's stack doing none of tollgate's work), when nginx is
//!   installed: the hop where the upstream is not the bottleneck;
//! - fleet (`--fleet`, `--only fleet`): tollgate's `model_aware` routing against
//!   `round_robin` and a fixed model → server split over 3 simulated Ollama servers, then
//!   a light tenant beside a flooding one (see [`fleet`]).
//!
//! Placement (2-core machines): with two or more usable CPUs the gateway under test —
//! tollgate's runtime (`tollgate serve`'s choice for the CPUs it owns: single-threaded on
//! one), the bare hyper proxy, the tollgate child process, or the
//! nginx worker — is pinned to the last CPU, and the load generator, the mock Ollama and
//! the bench itself to the others, each on its own runtime. The direct baseline therefore
//! runs generator + mock on the same CPUs as in the proxied run, and the gateway gets a
//! CPU of its own, like nginx's single worker. `--no-pin` lets the scheduler place
//! everything (tollgate then gets one worker per usable CPU, as `tollgate serve` would).

mod bare;
mod fleet;
mod gateway;
mod load;
mod report;
mod stats;
mod system;

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use serde::Serialize;
use testkit::ollama::MockOllama;
use tokio::runtime::Runtime;

use crate::bare::BareProxy;
use crate::gateway::{ChildTollgate, InProcessTollgate, Nginx};
use crate::load::{Call, Phase};
use crate::report::{Memory, Report, Scenario, Status};
use crate::stats::{Summary, fmt_rate, fmt_us};
use crate::system::{Machine, Placement};

#[derive(Parser)]
#[command(
    name = "tollgate-bench",
    about = "Benchmark tollgate against direct calls to a mock Ollama (SPEC §8)"
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Cmd>,
    #[command(flatten)]
    opts: Opts,
}

#[derive(Subcommand)]
enum Cmd {
    /// Internal: serve tollgate from the library (the memory scenario's child process).
    #[command(hide = true)]
    ServeTollgate {
        #[arg(long)]
        config: PathBuf,
    },
}

#[derive(Args, Debug, Clone, Serialize)]
struct Opts {
    /// Measured seconds of each phase (every direct and every proxied run).
    #[arg(long, default_value_t = 5.0)]
    duration_s: f64,
    /// Unrecorded seconds before each phase (connections, caches).
    #[arg(long, default_value_t = 1.0)]
    warmup_s: f64,
    /// Open-loop rate of the non-streaming scenarios, requests/s.
    #[arg(long, default_value_t = 1000.0)]
    rate: f64,
    /// Closed-loop workers for peak throughput.
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    /// Concurrent slow streams of the memory scenario.
    #[arg(long, default_value_t = 1000)]
    streams: usize,
    /// Requests the soak scenario sends through the tollgate child process.
    #[arg(long, default_value_t = 1_000_000)]
    soak_requests: u64,
    /// Longest the soak scenario's load may take, seconds (it stops there, however
    /// many requests have passed).
    #[arg(long, default_value_t = 300.0)]
    soak_max_s: f64,
    /// Seconds without requests before the soak scenario's last RSS reading.
    #[arg(long, default_value_t = 10.0)]
    soak_idle_s: f64,
    /// Open-loop rate of the streaming scenario, streams/s.
    #[arg(long, default_value_t = 250.0)]
    stream_rate: f64,
    /// Each measured phase is cut into slices of about this many seconds, sent to the
    /// targets in turns (direct, tollgate, …) so background load hits them alike.
    #[arg(long, default_value_t = 1.0)]
    round_s: f64,
    /// Smoke run: 2 s phases, 0.5 s warm-up, a soak of 100,000 requests.
    #[arg(long)]
    quick: bool,
    /// Do not pin the gateway and the generator to separate CPUs.
    #[arg(long)]
    no_pin: bool,
    /// Fleet benchmark: unrecorded seconds per policy before its measured window.
    #[arg(long, default_value_t = 6.0)]
    fleet_warmup_s: f64,
    /// Fleet benchmark: measured seconds per policy (and per light-tenant phase).
    #[arg(long, default_value_t = 15.0)]
    fleet_duration_s: f64,
    /// Only the fleet benchmark (same as `--only fleet`).
    #[arg(long)]
    fleet: bool,
    /// Only these scenarios (letters a–h and `fleet`, comma-separated). c, d and f are
    /// extra targets of a's phases, so selecting any of them runs a too.
    #[arg(long, value_delimiter = ',')]
    only: Vec<String>,
    /// Where to write the JSON results.
    #[arg(long, default_value = "bench-results.json")]
    json: PathBuf,
}

/// Streaming scenario b: frames per stream and the mock's delay between them.
const STREAM_FRAMES: usize = 8;
const STREAM_DELAY_MS: u64 = 2;
/// Slow-streams scenario e.
const SLOW_FRAMES: usize = 40;
const SLOW_DELAY_MS: u64 = 50;

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Some(Cmd::ServeTollgate { config }) = cli.command {
        return match gateway::serve_tollgate(&config) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("serve-tollgate: {e:#}");
                ExitCode::FAILURE
            }
        };
    }
    match run(cli.opts) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("tollgate-bench: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Everything a scenario needs.
struct Bench {
    opts: Opts,
    placement: Placement,
    mock: MockOllama,
    mock_rt: Runtime,
    gen_rt: Runtime,
    phase: Phase,
}

impl Bench {
    fn wants(&self, letter: &str) -> bool {
        self.opts.only.is_empty()
            || self
                .opts
                .only
                .iter()
                .any(|o| o.eq_ignore_ascii_case(letter))
    }

    fn set_mock(&self, frames: usize, delay: Duration) {
        self.mock.set_completion_frames(frames);
        self.mock.set_frame_delay(delay);
    }

    fn rounds(&self) -> u32 {
        ((self.opts.duration_s / self.opts.round_s.max(0.1)).round() as u32).max(1)
    }

    /// Closed loop against every target, taking turns.
    fn closed(&self, calls: &[Call], concurrency: usize) -> Vec<Summary> {
        let calls: Vec<Arc<Call>> = calls.iter().cloned().map(Arc::new).collect();
        let gateway = self
            .placement
            .pinned
            .then_some(self.placement.gateway.as_slice());
        self.gen_rt.block_on(load::interleaved_closed(
            &calls,
            concurrency,
            self.phase,
            self.rounds(),
            gateway,
        ))
    }

    /// Open loop against every target, taking turns.
    fn open(&self, calls: &[Call], rate: f64) -> Vec<Summary> {
        let calls: Vec<Arc<Call>> = calls.iter().cloned().map(Arc::new).collect();
        load::interleaved_open(
            self.gen_rt.handle(),
            &calls,
            rate,
            self.phase,
            self.rounds(),
            &self.placement.generator,
        )
    }

    fn key(&self, base_url: &str) -> anyhow::Result<String> {
        self.gen_rt.block_on(gateway::create_key(
            base_url,
            gateway::limited_key_request(),
        ))
    }

    /// One request; `Ok` if it succeeded.
    fn probe(&self, call: &Call) -> Result<(), String> {
        self.gen_rt
            .block_on(load::execute(&load::client(), call, Instant::now()))
            .map(drop)
    }
}

fn progress(id: &str, who: &str, s: &Summary) {
    let ttfb = s
        .ttfb
        .map(|t| format!(" TTFB p50 {} p99 {};", fmt_us(t.p50_us), fmt_us(t.p99_us)))
        .unwrap_or_default();
    let errors = if s.errors > 0 {
        format!(
            " {} errors ({})",
            s.errors,
            s.first_error.clone().unwrap_or_default()
        )
    } else {
        String::new()
    };
    eprintln!(
        "  [{id}] {who:<9} {:>10} req/s;{ttfb} p50 {} p90 {} p99 {} max {}{errors}",
        fmt_rate(s.rps),
        fmt_us(s.latency.p50_us),
        fmt_us(s.latency.p90_us),
        fmt_us(s.latency.p99_us),
        fmt_us(s.latency.max_us),
    );
}

fn run(mut opts: Opts) -> anyhow::Result<()> {
    let started = Instant::now();
    if opts.quick {
        opts.duration_s = opts.duration_s.min(2.0);
        opts.warmup_s = opts.warmup_s.min(0.5);
        opts.soak_requests = opts.soak_requests.min(100_000);
        opts.soak_max_s = opts.soak_max_s.min(60.0);
        opts.soak_idle_s = opts.soak_idle_s.min(3.0);
        opts.fleet_warmup_s = opts.fleet_warmup_s.min(4.0);
        opts.fleet_duration_s = opts.fleet_duration_s.min(6.0);
    }
    if opts.fleet {
        opts.only.push("fleet".into());
    }
    let nofile = system::raise_nofile_limit();
    let usable = system::current_cpus();
    let placement = Placement::choose(&usable, !opts.no_pin);
    if placement.pinned {
        system::pin_current_thread(&placement.generator);
    }
    let mut machine = Machine::describe(usable, nofile, placement.describe());
    // Descriptors: the generator's connections plus the mock's, in this process.
    let needed = 2 * opts.streams as u64 + 512;
    if nofile < needed {
        eprintln!(
            "warning: open-file limit {nofile} < {needed} needed for {} streams; \
             raise `ulimit -n`",
            opts.streams
        );
    }

    // In-process tollgate logs as it would in production (info, one line per request),
    // into a file rather than over the report.
    let work = tempfile::Builder::new()
        .prefix("tollgate-bench-")
        .tempdir()?;
    let _log_guard = init_inprocess_logging(
        &work.path().join("tollgate-inprocess.log"),
        &placement.gateway,
    )?;

    let gen_threads = placement.generator.len();
    let gen_rt = gateway::runtime("loadgen", &placement.generator, gen_threads)?;
    let mock_rt = gateway::runtime("mock-ollama", &placement.generator, gen_threads)?;
    let mock = mock_rt
        .block_on(MockOllama::start_on("127.0.0.1:0"))
        .context("cannot start the mock Ollama")?;
    {
        // The mock records every request; forget them often so memory stays flat.
        let mock = mock.clone();
        mock_rt.spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_millis(200)).await;
                mock.clear();
            }
        });
    }
    let phase = Phase {
        warmup: Duration::from_secs_f64(opts.warmup_s),
        duration: Duration::from_secs_f64(opts.duration_s),
    };
    eprintln!("tollgate-bench: {}", machine.one_line());
    eprintln!("  placement: {}", machine.placement);
    eprintln!(
        "  phases: {:.1} s measured after {:.1} s warm-up; mock Ollama at {}",
        opts.duration_s,
        opts.warmup_s,
        mock.url()
    );
    let bench = Bench {
        opts: opts.clone(),
        placement,
        mock,
        mock_rt,
        gen_rt,
        phase,
    };

    let mut scenarios: Vec<Scenario> = Vec::new();
    let mut nginx_version = None;
    if ["a", "b", "c", "d", "f"].iter().any(|l| bench.wants(l)) {
        scenarios.append(&mut gateway_scenarios(&bench, &mut nginx_version));
    }
    if bench.wants("e") {
        scenarios.push(scenario_slow_streams(&bench).unwrap_or_else(|e| {
            Scenario::failed(
                "e-streams",
                slow_title(&bench),
                "tollgate",
                format!("{e:#}"),
            )
        }));
    }
    if bench.wants("h") {
        scenarios.append(&mut scenario_fast_upstream(&bench));
    }
    if bench.wants("g") {
        scenarios.push(scenario_soak(&bench).unwrap_or_else(|e| {
            Scenario::failed(
                "g-soak",
                soak_title(&bench.opts),
                "tollgate",
                format!("{e:#}"),
            )
        }));
    }
    scenarios.sort_by_key(|s| s.id.chars().next());
    let fleet_phases = fleet::FleetPhases {
        warmup: Duration::from_secs_f64(opts.fleet_warmup_s),
        window: Duration::from_secs_f64(opts.fleet_duration_s),
    };
    let fleet = bench.wants("fleet").then(|| {
        fleet::run(
            &fleet::Env {
                placement: &bench.placement,
                gen_rt: &bench.gen_rt,
                sim_rt: &bench.mock_rt,
            },
            fleet_phases,
        )
    });

    machine.loadavg_at_end = system::loadavg();
    let mut targets = if scenarios.is_empty() {
        Vec::new()
    } else {
        report::spec_targets(&scenarios, STREAM_FRAMES, STREAM_DELAY_MS)
    };
    if let Some(f) = &fleet {
        targets.extend(f.targets.iter().cloned());
    }
    let args: Vec<String> = std::env::args().skip(1).collect();
    let command = if args.is_empty() {
        "cargo run --release -p tollgate-bench".to_string()
    } else {
        format!(
            "cargo run --release -p tollgate-bench -- {}",
            args.join(" ")
        )
    };
    let report = Report {
        command,
        machine: machine.clone(),
        settings: serde_json::json!({
            "options": opts,
            "streaming": { "frames": STREAM_FRAMES, "frame_delay_ms": STREAM_DELAY_MS },
            "slow_streams": {
                "frames": SLOW_FRAMES,
                "frame_delay_ms": SLOW_DELAY_MS,
                "duration_s": slow_duration(&opts).as_secs_f64(),
            },
            "key": gateway::limited_key_request(),
            "fleet": fleet.as_ref().map(|f| &f.settings),
            "nginx": nginx_version,
            "latency": "open loop: from the scheduled send time (no coordinated omission); \
                        closed loop: from the send time",
        }),
        scenarios,
        fleet,
        spec_targets: targets,
        wall_time_s: (started.elapsed().as_secs_f64() * 10.0).round() / 10.0,
    };
    let json = serde_json::to_string_pretty(&report)?;
    std::fs::write(&opts.json, format!("{json}\n"))
        .with_context(|| format!("cannot write {}", opts.json.display()))?;
    println!("{json}");
    println!();
    println!("machine: {}", machine.one_line());
    println!("placement: {}", machine.placement);
    println!("command: {}", report.command);
    println!();
    if !report.scenarios.is_empty() {
        print!("{}", report::scenario_table(&report.scenarios));
        println!();
    }
    if let Some(f) = &report.fleet {
        print!("{}", fleet::fleet_table(f));
        println!();
    }
    print!("{}", report::targets_table(&report.spec_targets));
    println!();
    println!(
        "wrote {} ({:.0} s wall time)",
        opts.json.display(),
        report.wall_time_s
    );
    Ok(())
}

/// tollgate's logging set-up (`telemetry::init_logging`: info, one line per proxied
/// request, written by a background thread) with a file instead of stderr. Installed
/// from a thread on the gateway CPUs so the writer thread, which inherits its mask,
/// runs beside tollgate rather than beside the load generator.
fn init_inprocess_logging(
    path: &std::path::Path,
    gateway_cpus: &[usize],
) -> anyhow::Result<tracing_appender::non_blocking::WorkerGuard> {
    let file = std::fs::File::create(path)?;
    let cpus = gateway_cpus.to_vec();
    let guard = std::thread::spawn(move || {
        system::pin_current_thread(&cpus);
        let filter = tracing_subscriber::EnvFilter::try_from_default_env()
            .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
        let (writer, guard) = tracing_appender::non_blocking::NonBlockingBuilder::default()
            .lossy(false)
            // Buffered and flushed per burst, as `tollgate::telemetry::init_logging` does.
            .finish(std::io::BufWriter::with_capacity(64 * 1024, file));
        let _ = tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_ansi(false)
            .with_writer(writer)
            .try_init();
        guard
    })
    .join()
    .map_err(|_| anyhow::anyhow!("logging set-up panicked"))?;
    Ok(guard)
}

fn title_a_open(o: &Opts) -> String {
    format!(
        "a. chat non-stream, key+rpm/tpm, open loop {} req/s",
        fmt_rate(o.rate).trim_end_matches(".0")
    )
}

fn title_a_closed(o: &Opts) -> String {
    format!(
        "a. chat non-stream, key+rpm/tpm, closed loop {} conc.",
        o.concurrency
    )
}

/// An extra gateway for scenarios c, d and f: running, skipped or failed to start.
enum Extra<T> {
    Up(T),
    Down(Box<Scenario>),
}

fn down<T>(s: Scenario) -> Extra<T> {
    Extra::Down(Box::new(s))
}

/// The JWT gateway of scenario c, its identity provider and a token.
struct JwtGateway {
    tollgate: InProcessTollgate,
    token: String,
    _idp: testkit::idp::MockIdp,
}

/// The Redis-configured gateway of scenario d and its key.
struct RedisGateway {
    tollgate: InProcessTollgate,
    key: String,
    /// A loopback Redis kept off the gateway's CPU while the bench runs.
    pinned_redis: Option<system::PinnedRedis>,
}

/// Scenarios a, b, c, d and f. Every gateway is started first (each idle but for the
/// one under load), then each load is sent to the mock directly and through every
/// gateway in turns (see `--round-s`), so background load on the machine spreads over
/// all of them alike.
fn gateway_scenarios(bench: &Bench, nginx_version: &mut Option<String>) -> Vec<Scenario> {
    let o = &bench.opts;
    let run_a = ["a", "c", "d", "f"].iter().any(|l| bench.wants(l));
    let mock_url = bench.mock.url();
    let started = InProcessTollgate::start(&bench.placement, &mock_url, |_| {})
        .and_then(|tg| bench.key(&tg.url).map(|key| (tg, key)));
    let (tg, key) = match started {
        Ok(v) => v,
        Err(e) => {
            return vec![Scenario::failed(
                "a-open",
                title_a_open(o),
                "tollgate",
                format!("cannot start tollgate: {e:#}"),
            )];
        }
    };
    let jwt = if bench.wants("c") {
        start_jwt(bench)
    } else {
        down(Scenario::skipped(
            "c-jwt",
            title_jwt(o),
            "tollgate",
            "not selected",
        ))
    };
    let redis = if bench.wants("d") {
        start_redis(bench)
    } else {
        down(Scenario::skipped(
            "d-redis",
            title_redis(),
            "tollgate",
            "not selected",
        ))
    };
    let nginx = if bench.wants("f") {
        start_nginx(bench, nginx_version)
    } else {
        down(Scenario::skipped(
            "f-nginx",
            title_nginx(o),
            "nginx",
            "not selected",
        ))
    };

    let mut out = Vec::new();
    let result = (|| -> anyhow::Result<()> {
        if !run_a {
            return Ok(());
        }
        bench.set_mock(testkit::ollama::DEFAULT_COMPLETION_FRAMES, Duration::ZERO);
        let direct = Call::chat(&mock_url, Some(&key), false)?;
        let via = Call::chat(&tg.url, Some(&key), false)?;

        // Open loop: direct, tollgate, then each extra gateway that is up.
        let mut calls = vec![direct.clone(), via.clone()];
        let mut names = vec!["a-open/direct", "a-open/tollgate"];
        if let Extra::Up(j) = &jwt {
            calls.push(Call::chat(&j.tollgate.url, Some(&j.token), false)?);
            names.push("c-jwt/tollgate");
        }
        if let Extra::Up(r) = &redis {
            calls.push(Call::chat(&r.tollgate.url, Some(&r.key), false)?);
            names.push("d-redis-open/tollgate");
        }
        if let Extra::Up(n) = &nginx {
            calls.push(Call::chat(&n.url, Some(&key), false)?);
            names.push("f-nginx-open/nginx");
        }
        eprintln!(
            "a. non-streaming /api/chat, open loop at {} req/s: {}",
            o.rate,
            names.join(", ")
        );
        let open = bench.open(&calls, o.rate);
        for (name, s) in names.iter().zip(&open) {
            let (id, who) = name.split_once('/').unwrap_or((name, ""));
            progress(id, who, s);
        }
        let direct_open = open[0].clone();
        let mut rest = open.into_iter().skip(1);
        let take = |rest: &mut dyn Iterator<Item = Summary>| rest.next().unwrap_or_default();
        out.push(Scenario::measured(
            "a-open",
            title_a_open(o),
            "tollgate",
            direct_open.clone(),
            take(&mut rest),
        ));
        if let Extra::Up(_) = &jwt {
            out.push(Scenario::measured(
                "c-jwt",
                title_jwt(o),
                "tollgate",
                direct_open.clone(),
                take(&mut rest),
            ));
        }
        if let Extra::Up(_) = &redis {
            out.push(Scenario::measured(
                "d-redis-open",
                format!("d. {} + redis.url", &title_a_open(o)[3..]),
                "tollgate",
                direct_open.clone(),
                take(&mut rest),
            ));
        }
        if let Extra::Up(_) = &nginx {
            out.push(Scenario::measured(
                "f-nginx-open",
                format!(
                    "f. same open loop ({} req/s) via plain nginx proxy_pass",
                    fmt_rate(o.rate).trim_end_matches(".0")
                ),
                "nginx",
                direct_open.clone(),
                take(&mut rest),
            ));
        }

        // Closed loop: direct, tollgate, Redis-configured tollgate, nginx.
        let mut calls = vec![direct, via];
        let mut names = vec!["a-closed/direct", "a-closed/tollgate"];
        if let Extra::Up(r) = &redis {
            calls.push(Call::chat(&r.tollgate.url, Some(&r.key), false)?);
            names.push("d-redis-closed/tollgate");
        }
        if let Extra::Up(n) = &nginx {
            calls.push(Call::chat(&n.url, Some(&key), false)?);
            names.push("f-nginx/nginx");
        }
        eprintln!(
            "a. non-streaming /api/chat, closed loop with {} workers: {}",
            o.concurrency,
            names.join(", ")
        );
        let closed = bench.closed(&calls, o.concurrency);
        for (name, s) in names.iter().zip(&closed) {
            let (id, who) = name.split_once('/').unwrap_or((name, ""));
            progress(id, who, s);
        }
        let direct_closed = closed[0].clone();
        let mut rest = closed.into_iter().skip(1);
        out.push(Scenario::measured(
            "a-closed",
            title_a_closed(o),
            "tollgate",
            direct_closed.clone(),
            take(&mut rest),
        ));
        if let Extra::Up(_) = &redis {
            out.push(Scenario::measured(
                "d-redis-closed",
                format!("d. {} + redis.url", &title_a_closed(o)[3..]),
                "tollgate",
                direct_closed.clone(),
                take(&mut rest),
            ));
        }
        if let Extra::Up(_) = &nginx {
            out.push(Scenario::measured(
                "f-nginx",
                title_nginx(o),
                "nginx",
                direct_closed,
                take(&mut rest),
            ));
        }
        Ok(())
    })();
    if let Err(e) = result {
        out.push(Scenario::failed(
            "a-open",
            title_a_open(o),
            "tollgate",
            format!("{e:#}"),
        ));
    }

    if bench.wants("b") {
        let result = (|| -> anyhow::Result<Scenario> {
            eprintln!(
                "b. streaming /api/chat ({STREAM_FRAMES} frames, {STREAM_DELAY_MS} ms apart), \
                 open loop at {} streams/s",
                o.stream_rate
            );
            bench.set_mock(STREAM_FRAMES, Duration::from_millis(STREAM_DELAY_MS));
            let calls = [
                Call::chat(&mock_url, Some(&key), true)?,
                Call::chat(&tg.url, Some(&key), true)?,
            ];
            let mut res = bench.open(&calls, o.stream_rate).into_iter();
            bench.set_mock(testkit::ollama::DEFAULT_COMPLETION_FRAMES, Duration::ZERO);
            let (direct, via) = (
                res.next().unwrap_or_default(),
                res.next().unwrap_or_default(),
            );
            progress("b-stream", "direct", &direct);
            progress("b-stream", "tollgate", &via);
            Ok(Scenario::measured(
                "b-stream",
                title_stream(o),
                "tollgate",
                direct,
                via,
            ))
        })();
        out.push(result.unwrap_or_else(|e| {
            Scenario::failed("b-stream", title_stream(o), "tollgate", format!("{e:#}"))
        }));
    }

    // Extras that did not come up say why; the rest stop.
    for extra in [
        match jwt {
            Extra::Up(j) => {
                j.tollgate.stop();
                None
            }
            Extra::Down(s) => Some(*s),
        },
        match redis {
            Extra::Up(r) => {
                r.tollgate.stop();
                None
            }
            Extra::Down(s) => Some(*s),
        },
        match nginx {
            Extra::Up(n) => {
                n.stop();
                None
            }
            Extra::Down(s) => Some(*s),
        },
    ]
    .into_iter()
    .flatten()
    {
        if extra.reason.as_deref() != Some("not selected") {
            out.push(extra);
        }
    }
    tg.stop();
    out
}

fn title_stream(o: &Opts) -> String {
    format!(
        "b. chat stream ({STREAM_FRAMES}×{STREAM_DELAY_MS} ms), open loop {} /s",
        fmt_rate(o.stream_rate).trim_end_matches(".0")
    )
}

fn title_jwt(o: &Opts) -> String {
    format!(
        "c. chat non-stream, JWT→key, open loop {} req/s",
        fmt_rate(o.rate).trim_end_matches(".0")
    )
}

fn title_redis() -> String {
    "d. scenario a with redis.url set".into()
}

fn title_fast(o: &Opts, via: &str) -> String {
    format!(
        "h. closed loop ({} conc.) against a static nginx stub upstream, via {via}",
        o.concurrency
    )
}

/// Scenario h: the stub upstream ([`gateway::stub_conf`]) straight, through a tollgate of
/// its own and through nginx `proxy_pass`, taking turns in one closed loop.
fn scenario_fast_upstream(bench: &Bench) -> Vec<Scenario> {
    let o = &bench.opts;
    let failed = |why: String| {
        vec![Scenario::failed(
            "h-fast",
            title_fast(o, "tollgate"),
            "tollgate",
            why,
        )]
    };
    let Some(nginx_bin) = gateway::find_nginx() else {
        return vec![Scenario::skipped(
            "h-fast",
            title_fast(o, "tollgate"),
            "tollgate",
            "nginx not installed",
        )];
    };
    let result = (|| -> anyhow::Result<Vec<Scenario>> {
        let stub = Nginx::start_stub(&nginx_bin, &bench.placement)?;
        let tg = InProcessTollgate::start(&bench.placement, &stub.url, |_| {})?;
        let key = bench.key(&tg.url)?;
        let proxy = Nginx::start(&nginx_bin, &bench.placement, stub.port())?;
        let bare = BareProxy::start(&bench.placement, &stub.url)?;
        let calls = [
            Call::chat(&stub.url, Some(&key), false)?,
            Call::chat(&tg.url, Some(&key), false)?,
            Call::chat(&proxy.url, Some(&key), false)?,
            Call::chat(&bare.url, Some(&key), false)?,
        ];
        eprintln!(
            "h. fast upstream (static nginx stub at {}), closed loop with {} workers: direct, \
             tollgate, nginx, bare hyper proxy",
            stub.url, o.concurrency
        );
        let mut res = bench.closed(&calls, o.concurrency).into_iter();
        let direct = res.next().unwrap_or_default();
        let via_tollgate = res.next().unwrap_or_default();
        let via_nginx = res.next().unwrap_or_default();
        let via_bare = res.next().unwrap_or_default();
        progress("h-fast", "direct", &direct);
        progress("h-fast", "tollgate", &via_tollgate);
        progress("h-fast-nginx", "nginx", &via_nginx);
        progress("h-fast-bare", "bare hyper proxy", &via_bare);
        tg.stop();
        proxy.stop();
        bare.stop();
        stub.stop();
        Ok(vec![
            Scenario::measured(
                "h-fast",
                title_fast(o, "tollgate"),
                "tollgate",
                direct.clone(),
                via_tollgate,
            ),
            Scenario::measured(
                "h-fast-nginx",
                title_fast(o, "nginx"),
                "nginx",
                direct.clone(),
                via_nginx,
            ),
            Scenario::measured(
                "h-fast-bare",
                title_fast(o, "a bare hyper proxy (tollgate's stack, none of its work)"),
                "bare hyper proxy",
                direct,
                via_bare,
            ),
        ])
    })();
    result.unwrap_or_else(|e| failed(format!("{e:#}")))
}

fn title_nginx(o: &Opts) -> String {
    format!(
        "f. same closed loop ({} conc.) via plain nginx proxy_pass",
        o.concurrency
    )
}

fn start_nginx(bench: &Bench, nginx_version: &mut Option<String>) -> Extra<Nginx> {
    let title = title_nginx(&bench.opts);
    let Some(nginx_bin) = gateway::find_nginx() else {
        return down(Scenario::skipped(
            "f-nginx",
            title,
            "nginx",
            "nginx not installed",
        ));
    };
    match Nginx::start(&nginx_bin, &bench.placement, bench.mock.addr().port()) {
        Ok(n) => {
            eprintln!("f. nginx: {} ({})", n.version, nginx_bin.display());
            *nginx_version = Some(n.version.clone());
            Extra::Up(n)
        }
        Err(e) => down(Scenario::failed(
            "f-nginx",
            title,
            "nginx",
            format!("{e:#}"),
        )),
    }
}

/// Scenario c's gateway: tollgate verifying JWTs.
///
/// HOOK: this turns itself on once tollgate verifies JWTs (SPEC §6). It starts the
/// testkit identity provider, configures `jwt` (JWKS URL, issuer, `virtual_key_claim:
/// email`, `unregistered_policy: auto_register` with rpm/tpm limits, so the JWT maps onto
/// a limited key without any management call), signs an ES256 token and probes once:
/// while the probe is refused (a tollgate without JWT support answers 401: the bearer is
/// not a virtual key) the scenario is "skipped: JWT auth not built yet". A token signed
/// by a key outside the JWKS must be refused, or the scenario fails. If a mapping must
/// instead be created through a management route, create it here before the probe.
fn start_jwt(bench: &Bench) -> Extra<JwtGateway> {
    let title = title_jwt(&bench.opts);
    let skip = |why: String| {
        down(Scenario::skipped(
            "c-jwt",
            title.clone(),
            "tollgate",
            format!("JWT auth not built yet ({why})"),
        ))
    };
    let idp = bench.mock_rt.block_on(testkit::idp::MockIdp::start());
    let started = InProcessTollgate::start(&bench.placement, &bench.mock.url(), |c| {
        c.jwt.enabled = true;
        c.jwt.jwks_urls = vec![idp.jwks_url()];
        c.jwt.issuers = vec![idp.issuer()];
        c.jwt.virtual_key_claim = Some("email".into());
        c.jwt.unregistered_policy = tollgate::config::UnregisteredPolicy::AutoRegister;
        c.jwt.auto_register.rpm_limit = Some(1_000_000_000);
        c.jwt.auto_register.tpm_limit = Some(1_000_000_000_000);
    });
    let tollgate = match started {
        Ok(t) => t,
        Err(e) => return skip(format!("tollgate did not start with jwt set: {e:#}")),
    };
    let mut claims = idp.standard_claims("bench-user");
    claims["email"] = serde_json::json!("bench@example.com");
    let token = idp.sign(jsonwebtoken::Algorithm::ES256, &claims);
    let forged = idp.sign_with_foreign_key(jsonwebtoken::Algorithm::ES256, &claims);
    let probe = |bearer: &str| {
        Call::chat(&tollgate.url, Some(bearer), false)
            .map_err(|e| e.to_string())
            .and_then(|call| bench.probe(&call))
    };
    if let Err(e) = probe(&token) {
        tollgate.stop();
        return skip(format!("probe: {e}"));
    }
    if probe(&forged).is_ok() {
        tollgate.stop();
        return down(Scenario::failed(
            "c-jwt",
            title,
            "tollgate",
            "tollgate accepted a JWT signed by a key outside the JWKS",
        ));
    }
    Extra::Up(JwtGateway {
        tollgate,
        token,
        _idp: idp,
    })
}

/// Scenario d's gateway: tollgate with `redis.url` = `$TOLLGATE_BENCH_REDIS`.
fn start_redis(bench: &Bench) -> Extra<RedisGateway> {
    let Ok(redis_url) = std::env::var("TOLLGATE_BENCH_REDIS") else {
        return down(Scenario::skipped(
            "d-redis",
            title_redis(),
            "tollgate",
            "TOLLGATE_BENCH_REDIS not set (e.g. redis://127.0.0.1:6379)",
        ));
    };
    let started = InProcessTollgate::start(&bench.placement, &bench.mock.url(), |c| {
        c.redis.url = Some(tollgate::config::Secret(redis_url.clone()));
        c.redis.key_prefix = format!("tollgate-bench-{}:", std::process::id());
    })
    .and_then(|tollgate| match bench.key(&tollgate.url) {
        Ok(key) => Ok(RedisGateway {
            tollgate,
            key,
            pinned_redis: None,
        }),
        Err(e) => {
            tollgate.stop();
            Err(e)
        }
    });
    match started {
        Ok(mut r) => {
            eprintln!("d. tollgate with redis.url = {redis_url}");
            if bench.placement.pinned {
                r.pinned_redis = system::PinnedRedis::pin(&redis_url, &bench.placement.generator);
                match &r.pinned_redis {
                    Some(p) => eprintln!(
                        "   redis-server (pid {}) pinned to CPU {:?} for the run, off the gateway's",
                        p.pid, bench.placement.generator
                    ),
                    None => eprintln!(
                        "   redis-server not pinned (not local, or not ours to pin): it may share the gateway's CPU"
                    ),
                }
            }
            Extra::Up(r)
        }
        Err(e) => down(Scenario::failed(
            "d-redis",
            title_redis(),
            "tollgate",
            format!("{e:#}"),
        )),
    }
}

fn slow_duration(o: &Opts) -> Duration {
    // At least one full stream (40 × 50 ms) plus margin.
    Duration::from_secs_f64((o.duration_s / 2.0).max(3.0))
}

fn slow_title(bench: &Bench) -> String {
    format!(
        "e. {} concurrent slow streams ({SLOW_FRAMES}×{SLOW_DELAY_MS} ms), tollgate child process",
        bench.opts.streams
    )
}

/// Scenario e: `--streams` workers each streaming back to back (so that many streams are
/// open at once) straight to the mock, then through tollgate in a child process whose
/// RSS is sampled.
fn scenario_slow_streams(bench: &Bench) -> anyhow::Result<Scenario> {
    let o = &bench.opts;
    let window = slow_duration(o);
    // Connections open over the first second, not in one burst.
    let ramp = Duration::from_secs(1).min(window / 2);
    eprintln!(
        "e. {} concurrent slow streams ({SLOW_FRAMES} frames, {SLOW_DELAY_MS} ms apart), {:.0} s",
        o.streams,
        window.as_secs_f64()
    );
    let mock_url = bench.mock.url();
    let child = ChildTollgate::start(&bench.placement, &mock_url)?;
    let key = bench.key(&child.url)?;
    std::thread::sleep(Duration::from_millis(300));
    let idle = child
        .rss()
        .context("cannot read the child's /proc status")?;
    eprintln!(
        "  [e-streams] tollgate child pid {} idle RSS {:.1} MiB",
        child.pid(),
        idle.rss_kib as f64 / 1024.0
    );

    bench.set_mock(SLOW_FRAMES, Duration::from_millis(SLOW_DELAY_MS));
    let slow = |url: &str| -> anyhow::Result<Summary> {
        let call = Arc::new(Call::chat(url, Some(&key), true)?);
        Ok(bench
            .gen_rt
            .block_on(load::closed_loop(call, o.streams, window, ramp)))
    };
    let direct = slow(&mock_url)?;
    progress("e-streams", "direct", &direct);

    // Sample the child's RSS and the streams open upstream while the load runs.
    let stop = Arc::new(AtomicBool::new(false));
    let sampler = {
        let stop = Arc::clone(&stop);
        let mock = bench.mock.clone();
        let pid = child.pid();
        std::thread::spawn(move || {
            let (mut max_rss, mut max_streams) = (0u64, 0usize);
            while !stop.load(Ordering::Relaxed) {
                if let Some(r) = system::rss_of(pid) {
                    max_rss = max_rss.max(r.rss_kib);
                }
                max_streams = max_streams.max(mock.in_flight());
                std::thread::sleep(Duration::from_millis(50));
            }
            (max_rss, max_streams)
        })
    };
    let via = slow(&child.url)?;
    stop.store(true, Ordering::Relaxed);
    let (max_rss, max_streams) = sampler.join().unwrap_or((0, 0));
    bench.set_mock(testkit::ollama::DEFAULT_COMPLETION_FRAMES, Duration::ZERO);
    progress("e-streams", "tollgate", &via);
    let after = child.rss().unwrap_or_default();
    let peak = after.hwm_kib.max(max_rss);
    child.stop();
    eprintln!(
        "  [e-streams] RSS idle {:.1} MiB, peak {:.1} MiB with {max_streams} streams open",
        idle.rss_kib as f64 / 1024.0,
        peak as f64 / 1024.0
    );
    let mut s = Scenario::measured("e-streams", slow_title(bench), "tollgate", direct, via);
    s.memory = Some(Memory::from(idle, peak, after, max_streams));
    if s.status == Status::Ok && max_streams < o.streams {
        s.reason = Some(format!(
            "only {max_streams} of {} streams were open at once",
            o.streams
        ));
    }
    Ok(s)
}

fn soak_title(o: &Opts) -> String {
    format!(
        "g. soak: {} chat requests, key+rpm/tpm, closed loop {} conc., tollgate child process",
        o.soak_requests, o.concurrency
    )
}

/// Scenario g: a fresh tollgate child process, its idle RSS; then `--soak-requests`
/// non-streaming requests (closed loop at `--concurrency`, at most `--soak-max-s`) with
/// the limited key; its RSS right after, and again after `--soak-idle-s` without
/// requests. No direct baseline: the figures are the process's own.
fn scenario_soak(bench: &Bench) -> anyhow::Result<Scenario> {
    let o = &bench.opts;
    eprintln!(
        "g. soak: {} requests through a tollgate child process, closed loop with {} workers \
         (at most {:.0} s)",
        o.soak_requests, o.concurrency, o.soak_max_s
    );
    let child = ChildTollgate::start(&bench.placement, &bench.mock.url())?;
    let key = bench.key(&child.url)?;
    std::thread::sleep(Duration::from_millis(300));
    let before = child
        .rss()
        .context("cannot read the child's /proc status")?;
    eprintln!(
        "  [g-soak] tollgate child pid {} idle RSS {:.1} MiB",
        child.pid(),
        before.rss_kib as f64 / 1024.0
    );
    let call = Arc::new(Call::chat(&child.url, Some(&key), false)?);
    let via = bench.gen_rt.block_on(load::counted_closed(
        call,
        o.concurrency,
        o.soak_requests,
        Duration::from_secs_f64(o.soak_max_s),
    ));
    let after = child.rss().unwrap_or_default();
    progress("g-soak", "tollgate", &via);
    std::thread::sleep(Duration::from_secs_f64(o.soak_idle_s));
    let rested = child.rss().unwrap_or_default();
    child.stop();
    let soak = report::Soak {
        requests: via.requests,
        errors: via.errors,
        planned: o.soak_requests,
        load_s: (via.duration_s * 10.0).round() / 10.0,
        idle_before_rss_mib: report::mib(before.rss_kib),
        after_load_rss_mib: report::mib(after.rss_kib),
        after_idle_rss_mib: report::mib(rested.rss_kib),
        idle_s: o.soak_idle_s,
        peak_rss_mib: report::mib(rested.hwm_kib.max(after.hwm_kib)),
    };
    eprintln!(
        "  [g-soak] RSS {:.1} MiB before, {:.1} MiB right after {} requests, {:.1} MiB after \
         {:.0} s idle (peak {:.1} MiB)",
        soak.idle_before_rss_mib,
        soak.after_load_rss_mib,
        soak.requests,
        soak.after_idle_rss_mib,
        soak.idle_s,
        soak.peak_rss_mib
    );
    let failed = via.requests == 0;
    let reason = if failed {
        Some(
            via.first_error
                .clone()
                .unwrap_or_else(|| "no request succeeded".into()),
        )
    } else if via.requests < o.soak_requests {
        Some(format!(
            "only {} of {} requests within {:.0} s",
            via.requests, o.soak_requests, o.soak_max_s
        ))
    } else {
        None
    };
    Ok(Scenario {
        id: "g-soak".into(),
        title: soak_title(o),
        status: if failed { Status::Failed } else { Status::Ok },
        reason,
        via_name: "tollgate".into(),
        direct: None,
        via: Some(via),
        comparison: None,
        memory: None,
        soak: Some(soak),
    })
}
