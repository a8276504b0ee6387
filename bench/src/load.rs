//! The load generator: a keep-alive hyper client driven in closed loop (N workers, each
//! sending its next request when the previous one ends) or open loop (requests sent on a
//! fixed schedule whatever the completions; latency counted from the *scheduled* send
//! time, so a stalled server cannot hide its stall — no coordinated omission).

use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::Request;
use hyper::header::{AUTHORIZATION, CONTENT_TYPE, HeaderValue};
use hyper_util::client::legacy::Client as HyperClient;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use tokio::runtime::Handle;

use crate::stats::{Latencies, Summary};

pub type Client = HyperClient<HttpConnector, Full<Bytes>>;

/// A fresh HTTP/1.1 client with an unbounded keep-alive pool and `TCP_NODELAY`.
pub fn client() -> Client {
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    HyperClient::builder(TokioExecutor::new())
        .pool_max_idle_per_host(usize::MAX)
        .build(connector)
}

/// One kind of request, sent again and again.
#[derive(Debug, Clone)]
pub struct Call {
    pub url: hyper::Uri,
    pub bearer: Option<HeaderValue>,
    pub body: Bytes,
    /// Read the body frame by frame, timing the first byte; expect Ollama's final
    /// `"done":true` frame at the end.
    pub streaming: bool,
    /// Per-request limit; a slower request counts as an error.
    pub timeout: Duration,
}

impl Call {
    pub fn chat(base_url: &str, bearer: Option<&str>, streaming: bool) -> anyhow::Result<Self> {
        Self::chat_model(base_url, bearer, "llama3.1:8b", streaming)
    }

    /// [`Call::chat`] for a chosen model.
    pub fn chat_model(
        base_url: &str,
        bearer: Option<&str>,
        model: &str,
        streaming: bool,
    ) -> anyhow::Result<Self> {
        let body = serde_json::json!({
            "model": model,
            "messages": [{"role": "user", "content": "Say hello in one short sentence."}],
            "stream": streaming,
        });
        Ok(Self {
            url: format!("{base_url}/api/chat").parse()?,
            bearer: bearer
                .map(|b| HeaderValue::from_str(&format!("Bearer {b}")))
                .transpose()?,
            body: Bytes::from(serde_json::to_vec(&body)?),
            streaming,
            timeout: Duration::from_secs(60),
        })
    }

    #[expect(
        clippy::expect_used,
        reason = "a parsed URI with static headers always builds"
    )]
    fn request(&self) -> Request<Full<Bytes>> {
        let mut req = Request::post(self.url.clone())
            .header(CONTENT_TYPE, "application/json")
            .body(Full::new(self.body.clone()))
            .expect("a POST with static headers is a valid request");
        if let Some(b) = &self.bearer {
            req.headers_mut().insert(AUTHORIZATION, b.clone());
        }
        req
    }
}

/// When the first body byte and the end of the body arrived, after the origin instant.
#[derive(Debug, Clone, Copy)]
pub struct Timing {
    pub first_byte: Duration,
    pub last_byte: Duration,
}

/// Sends `call` once; times are measured from `origin` (the send time in closed loop,
/// the scheduled time in open loop).
pub async fn execute(client: &Client, call: &Call, origin: Instant) -> Result<Timing, String> {
    match tokio::time::timeout(call.timeout, execute_inner(client, call, origin)).await {
        Ok(r) => r,
        Err(_) => Err(format!("timed out after {:?}", call.timeout)),
    }
}

async fn execute_inner(client: &Client, call: &Call, origin: Instant) -> Result<Timing, String> {
    let response = client
        .request(call.request())
        .await
        .map_err(|e| format!("request failed: {e:?}"))?;
    let status = response.status();
    let mut body = response.into_body();
    if !status.is_success() {
        let bytes = body
            .collect()
            .await
            .map(|c| c.to_bytes())
            .unwrap_or_default();
        let text = String::from_utf8_lossy(&bytes);
        return Err(format!(
            "HTTP {status}: {}",
            text.chars().take(200).collect::<String>()
        ));
    }
    let mut first_byte = None;
    // The end of the body, enough to find the final frame.
    let mut tail: Vec<u8> = Vec::new();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| format!("body failed: {e}"))?;
        if let Ok(data) = frame.into_data()
            && !data.is_empty()
        {
            if first_byte.is_none() {
                first_byte = Some(origin.elapsed());
            }
            if call.streaming {
                tail.extend_from_slice(&data);
                if tail.len() > 1024 {
                    tail.drain(..tail.len() - 1024);
                }
            }
        }
    }
    let last_byte = origin.elapsed();
    if call.streaming && memchr_find(&tail, br#""done":true"#).is_none() {
        return Err("stream ended without its final frame".into());
    }
    Ok(Timing {
        first_byte: first_byte.unwrap_or(last_byte),
        last_byte,
    })
}

fn memchr_find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// What a phase collects.
#[derive(Debug, Default)]
pub struct Recorder {
    total: Latencies,
    first_byte: Latencies,
    lag: Latencies,
    ok: u64,
    errors: u64,
    first_error: Option<String>,
}

impl Recorder {
    pub fn outcome(&mut self, result: Result<Timing, String>) {
        match result {
            Ok(t) => {
                self.ok += 1;
                self.total.record(t.last_byte);
                self.first_byte.record(t.first_byte);
            }
            Err(e) => {
                self.errors += 1;
                if self.first_error.is_none() {
                    self.first_error = Some(e);
                }
            }
        }
    }

    pub fn merge(&mut self, other: Recorder) {
        self.total.merge(&other.total);
        self.first_byte.merge(&other.first_byte);
        self.lag.merge(&other.lag);
        self.ok += other.ok;
        self.errors += other.errors;
        if self.first_error.is_none() {
            self.first_error = other.first_error;
        }
    }

    pub fn summary(self, window: Duration, streaming: bool, open_loop: bool) -> Summary {
        let secs = window.as_secs_f64();
        Summary {
            requests: self.ok,
            errors: self.errors,
            first_error: self.first_error,
            duration_s: secs,
            rps: if secs > 0.0 {
                self.ok as f64 / secs
            } else {
                0.0
            },
            latency: self.total.percentiles(),
            ttfb: streaming.then(|| self.first_byte.percentiles()),
            send_lag: open_loop.then(|| self.lag.percentiles()),
            gateway_cpu_s: None,
            per_gateway_cpu_s: None,
        }
    }
}

/// Warm-up (sent, not recorded) then the measured window.
#[derive(Debug, Clone, Copy)]
pub struct Phase {
    pub warmup: Duration,
    pub duration: Duration,
}

/// Closed loop for `window`: `concurrency` workers on the current runtime, each sending
/// its next request as soon as the previous one ends. Requests *started* in the window
/// count (the last ones may end after it). Workers start evenly spread over `ramp`.
async fn closed_run(
    client: &Client,
    call: &Arc<Call>,
    concurrency: usize,
    window: Duration,
    ramp: Duration,
) -> Recorder {
    let start = Instant::now();
    let end = start + window;
    let n = concurrency.max(1);
    let mut workers = tokio::task::JoinSet::new();
    for i in 0..n {
        let client = client.clone();
        let call = Arc::clone(call);
        let begin = start + ramp.mul_f64(i as f64 / n as f64);
        workers.spawn(async move {
            tokio::time::sleep_until(begin.into()).await;
            let mut rec = Recorder::default();
            loop {
                let t0 = Instant::now();
                if t0 >= end {
                    break;
                }
                rec.outcome(execute(&client, &call, t0).await);
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

/// Closed loop against one target, no warm-up, workers starting over `ramp` (part of
/// the window).
pub async fn closed_loop(
    call: Arc<Call>,
    concurrency: usize,
    window: Duration,
    ramp: Duration,
) -> Summary {
    let rec = closed_run(&client(), &call, concurrency, window, ramp).await;
    rec.summary(window, call.streaming, false)
}

/// Closed loop until `total` requests have been sent or `max` has passed, whichever
/// comes first: `concurrency` workers on one keep-alive client, each sending its next
/// request as soon as the previous one ends (the soak scenario). The summary's window is
/// the time it took.
pub async fn counted_closed(
    call: Arc<Call>,
    concurrency: usize,
    total: u64,
    max: Duration,
) -> Summary {
    let client = client();
    let start = Instant::now();
    let deadline = start + max;
    let issued = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let mut workers = tokio::task::JoinSet::new();
    for _ in 0..concurrency.max(1) {
        let client = client.clone();
        let call = Arc::clone(&call);
        let issued = Arc::clone(&issued);
        workers.spawn(async move {
            let mut rec = Recorder::default();
            loop {
                let t0 = Instant::now();
                if t0 >= deadline
                    || issued.fetch_add(1, std::sync::atomic::Ordering::Relaxed) >= total
                {
                    break;
                }
                rec.outcome(execute(&client, &call, t0).await);
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
    all.summary(start.elapsed(), call.streaming, false)
}

/// Closed loop against several targets, taking turns: after each target's warm-up, the
/// window is cut into `rounds` slices run target after target (order reversed every
/// other round), so load from elsewhere on the machine lands on all of them alike. With
/// `gateway_cpus` (the gateway pinned there alone), each target's summary also says how
/// busy those CPUs were during its slices.
pub async fn interleaved_closed(
    calls: &[Arc<Call>],
    concurrency: usize,
    phase: Phase,
    rounds: u32,
    gateway_cpus: Option<&[usize]>,
) -> Vec<Summary> {
    let clients: Vec<Client> = calls.iter().map(|_| client()).collect();
    for (call, client) in calls.iter().zip(&clients) {
        if !phase.warmup.is_zero() {
            drop(closed_run(client, call, concurrency, phase.warmup, Duration::ZERO).await);
        }
    }
    let rounds = rounds.max(1);
    let slice = phase.duration / rounds;
    let mut recs: Vec<Recorder> = calls.iter().map(|_| Recorder::default()).collect();
    let busy = || gateway_cpus.and_then(crate::system::cpu_busy_s);
    let mut cpu: Vec<Option<f64>> = vec![Some(0.0); calls.len()];
    for round in 0..rounds {
        for i in turn_order(calls.len(), round) {
            let before = busy();
            let rec = closed_run(&clients[i], &calls[i], concurrency, slice, Duration::ZERO).await;
            cpu[i] = match (cpu[i], before, busy()) {
                (Some(sum), Some(b), Some(a)) => Some(sum + (a - b)),
                _ => None,
            };
            recs[i].merge(rec);
        }
    }
    recs.into_iter()
        .zip(calls)
        .zip(cpu)
        .map(|((rec, call), cpu)| {
            let summary = rec.summary(slice * rounds, call.streaming, false);
            match cpu {
                Some(cpu) if gateway_cpus.is_some() => summary.with_gateway_cpu(cpu),
                _ => summary,
            }
        })
        .collect()
}

/// Target order in a round: forwards on even rounds, backwards on odd ones.
pub fn turn_order(targets: usize, round: u32) -> Vec<usize> {
    let mut order: Vec<usize> = (0..targets).collect();
    if round % 2 == 1 {
        order.reverse();
    }
    order
}

/// How many requests an open-loop phase sends in `secs` at `rate` per second.
pub fn planned(rate: f64, secs: f64) -> u64 {
    (rate * secs).round().max(0.0) as u64
}

/// The scheduled send time of request `i`, after the phase start.
pub fn scheduled_at(rate: f64, i: u64) -> Duration {
    Duration::from_secs_f64(i as f64 / rate)
}

/// Open loop at `rate` requests/s for `window`. A dedicated dispatcher thread (pinned to
/// `cpus`, timer slack 1 µs) sleeps until each scheduled instant and spawns the request
/// on `rt`; it never waits for completions, and falls behind only if it cannot get CPU —
/// that lag is reported (`send_lag`) and is part of the latency, which runs from the
/// scheduled time. Returns once every request has ended. Blocks the calling thread
/// (which must not be a runtime thread).
#[expect(
    clippy::expect_used,
    reason = "a benchmark that cannot start its load threads has nothing to report"
)]
fn open_run(
    rt: &Handle,
    client: &Client,
    call: &Arc<Call>,
    rate: f64,
    window: Duration,
    cpus: &[usize],
) -> Recorder {
    let total = planned(rate, window.as_secs_f64());
    let recorder = Arc::new(Mutex::new(Recorder::default()));
    let handles = {
        let rt = rt.clone();
        let client = client.clone();
        let call = Arc::clone(call);
        let recorder = Arc::clone(&recorder);
        let cpus = cpus.to_vec();
        std::thread::Builder::new()
            .name("open-loop".into())
            .spawn(move || {
                crate::system::pin_current_thread(&cpus);
                let _ = rustix::thread::set_current_timer_slack(std::num::NonZeroU64::new(1_000));
                let mut handles = Vec::with_capacity(usize::try_from(total).unwrap_or(0));
                let start = Instant::now() + Duration::from_millis(2);
                for i in 0..total {
                    let scheduled = start + scheduled_at(rate, i);
                    let now = Instant::now();
                    if scheduled > now {
                        std::thread::sleep(scheduled - now);
                    }
                    let client = client.clone();
                    let call = Arc::clone(&call);
                    let recorder = Arc::clone(&recorder);
                    handles.push(rt.spawn(async move {
                        let lag = scheduled.elapsed();
                        let result = execute(&client, &call, scheduled).await;
                        let mut rec = recorder.lock().unwrap_or_else(PoisonError::into_inner);
                        rec.lag.record(lag);
                        rec.outcome(result);
                    }));
                }
                handles
            })
            .expect("spawn the open-loop dispatcher thread")
            .join()
            .unwrap_or_default()
    };
    rt.block_on(async move {
        for h in handles {
            let _ = h.await;
        }
    });
    std::mem::take(&mut *recorder.lock().unwrap_or_else(PoisonError::into_inner))
}

/// Open loop against several targets taking turns (see [`interleaved_closed`]).
pub fn interleaved_open(
    rt: &Handle,
    calls: &[Arc<Call>],
    rate: f64,
    phase: Phase,
    rounds: u32,
    cpus: &[usize],
) -> Vec<Summary> {
    let clients: Vec<Client> = calls.iter().map(|_| client()).collect();
    for (call, client) in calls.iter().zip(&clients) {
        if !phase.warmup.is_zero() {
            drop(open_run(rt, client, call, rate, phase.warmup, cpus));
        }
    }
    let rounds = rounds.max(1);
    let slice = phase.duration / rounds;
    let mut recs: Vec<Recorder> = calls.iter().map(|_| Recorder::default()).collect();
    for round in 0..rounds {
        for i in turn_order(calls.len(), round) {
            let rec = open_run(rt, &clients[i], &calls[i], rate, slice, cpus);
            recs[i].merge(rec);
        }
    }
    recs.into_iter()
        .zip(calls)
        .map(|(rec, call)| rec.summary(slice * rounds, call.streaming, true))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn open_loop_schedule_is_evenly_spaced() {
        assert_eq!(planned(1000.0, 10.0), 10_000);
        assert_eq!(planned(250.0, 0.5), 125);
        assert_eq!(scheduled_at(1000.0, 0), Duration::ZERO);
        assert_eq!(scheduled_at(1000.0, 1500), Duration::from_millis(1500));
        assert_eq!(scheduled_at(3.0, 3), Duration::from_secs(1));
    }

    #[test]
    fn turns_alternate_direction() {
        assert_eq!(turn_order(3, 0), vec![0, 1, 2]);
        assert_eq!(turn_order(3, 1), vec![2, 1, 0]);
        assert_eq!(turn_order(1, 7), vec![0]);
    }

    #[test]
    fn recorder_summarises_successes_and_errors() {
        let mut rec = Recorder::default();
        for ms in [1, 2, 3] {
            rec.outcome(Ok(Timing {
                first_byte: Duration::from_micros(100),
                last_byte: Duration::from_millis(ms),
            }));
        }
        rec.outcome(Err("HTTP 500".into()));
        let s = rec.summary(Duration::from_secs(2), true, false);
        assert_eq!((s.requests, s.errors), (3, 1));
        assert_eq!(s.first_error.as_deref(), Some("HTTP 500"));
        assert!((s.rps - 1.5).abs() < 1e-9);
        assert_eq!(s.ttfb.map(|t| t.p50_us), Some(100));
        assert!(s.send_lag.is_none());
    }

    #[test]
    fn finds_the_final_frame() {
        assert_eq!(memchr_find(br#"{"done":true}"#, br#""done":true"#), Some(1));
        assert_eq!(memchr_find(b"{}", br#""done":true"#), None);
    }
}
