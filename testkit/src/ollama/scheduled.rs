//! The HTTP side of scheduler mode: which requests go through the simulated scheduler,
//! how long they generate, and the timings their final frames report.
//!
//! A request is scheduled only once [`wire::route`] has accepted it, so bad bodies and
//! unknown models are answered at once, as Ollama answers them before its scheduler.
//! Then it waits for its model and a slot ([`sim::Ticket`]), and holds the slot
//! ([`Generation`]) until its last frame is out or its client leaves. Final frames carry
//! measured `total_duration`, `load_duration` and `eval_duration` in nanoseconds, as
//! Ollama reports them, so a gateway can learn load times from them.

use std::time::{Duration, Instant};

use axum::extract::Request;
use axum::http::{Method, StatusCode};
use bytes::Bytes;
use serde_json::{Map, Value, json};

use super::sim::{BUSY_MESSAGE, KeepAlive, Slot};
use super::wire::{self, Dialect, Reply};
use super::{Shared, lock};

/// The mock's own route in scheduler mode: the counters as JSON.
pub(crate) const STATS_PATH: &str = "/_sim/stats";

/// `GET /_sim/stats` in scheduler mode: the counters (not recorded as a request, so
/// reading them does not disturb what a test counts). `None` for anything else.
pub(crate) fn stats_route(shared: &Shared, request: &Request) -> Option<String> {
    let sim = shared.sim.as_ref()?;
    if request.method() != Method::GET || request.uri().path() != STATS_PATH {
        return None;
    }
    Some(sim.stats().borrow().to_json().to_string())
}

/// What a scheduled request generates: `Some(true)` for token generation, `Some(false)`
/// for embeddings (one step), `None` for routes the scheduler does not see.
fn generates(method: &Method, path: &str) -> Option<bool> {
    if method != Method::POST {
        return None;
    }
    match path {
        "/api/chat"
        | "/api/generate"
        | "/v1/chat/completions"
        | "/v1/completions"
        | "/v1/responses"
        | "/v1/messages" => Some(true),
        "/api/embed" | "/api/embeddings" | "/v1/embeddings" => Some(false),
        _ => None,
    }
}

/// `keep_alive` as Ollama reads it: a number of seconds or a duration string; only
/// zero changes what the simulator does.
fn keep_alive(req: &Map<String, Value>) -> Option<KeepAlive> {
    let zero = match req.get("keep_alive")? {
        Value::Number(n) => n.as_f64() == Some(0.0),
        Value::String(s) => {
            let digits = s.trim_end_matches(|c: char| c.is_ascii_alphabetic());
            digits.parse::<f64>().is_ok_and(|n| n == 0.0)
        }
        _ => return None,
    };
    Some(if zero {
        KeepAlive::UnloadWhenIdle
    } else {
        KeepAlive::Stay
    })
}

fn is_success(reply: &Reply) -> bool {
    match reply {
        Reply::Json(status, _) | Reply::Text(status, _) | Reply::Empty(status) => {
            status.is_success()
        }
        Reply::Stream { .. } => true,
    }
}

/// In scheduler mode, wait until an accepted generation may run; `Err` is the reply
/// instead (503 busy). Outside scheduler mode, or for other routes, `reply` as is.
pub(crate) async fn admit(
    shared: &Shared,
    method: &Method,
    path: &str,
    body: &[u8],
    arrived: Instant,
    reply: Reply,
) -> Result<(Reply, Option<Generation>), Reply> {
    let Some(sim) = shared.sim.as_ref() else {
        return Ok((reply, None));
    };
    let Some(tokens) = generates(method, path) else {
        return Ok((reply, None));
    };
    if !is_success(&reply) {
        return Ok((reply, None));
    }
    let Ok(Value::Object(req)) = serde_json::from_slice::<Value>(body) else {
        return Ok((reply, None));
    };
    let requested = req.get("model").and_then(Value::as_str).unwrap_or("");
    let (model, steps) = {
        let config = lock(&shared.config);
        let steps = if tokens { config.completion_frames } else { 1 };
        (wire::find_model(&config.models, requested), steps)
    };
    let Some(model) = model else {
        return Ok((reply, None));
    };
    let dialect = Dialect::for_path(path);
    let ticket = sim
        .enqueue(&model, keep_alive(&req))
        .map_err(|_busy| wire::error(dialect, StatusCode::SERVICE_UNAVAILABLE, BUSY_MESSAGE))?;
    let Some(slot) = ticket.start().await else {
        return Err(wire::error(
            dialect,
            StatusCode::INTERNAL_SERVER_ERROR,
            "testkit: the simulated scheduler dropped the request",
        ));
    };
    let generation = Generation {
        slot,
        interval: sim.settings().token_interval,
        steps,
        arrived,
        started: Instant::now(),
    };
    Ok((reply, Some(generation)))
}

/// A generation holding its slot; dropping it frees the slot.
#[derive(Debug)]
pub(crate) struct Generation {
    slot: Slot,
    /// Time per step (token).
    interval: Duration,
    /// Steps to pace: the first `steps` frames each wait one interval.
    steps: usize,
    arrived: Instant,
    started: Instant,
}

impl Generation {
    /// Wait before frame `index` as a model producing one token per interval would.
    pub(crate) async fn pace(&self, index: usize) {
        if index < self.steps && !self.interval.is_zero() {
            tokio::time::sleep(self.interval).await;
        }
    }

    /// Generate everything, then answer `reply` with measured timings.
    pub(crate) async fn run_to_end(self, reply: Reply) -> Reply {
        if !self.interval.is_zero() {
            let steps = u32::try_from(self.steps).unwrap_or(u32::MAX);
            tokio::time::sleep(self.interval.saturating_mul(steps)).await;
        }
        match reply {
            Reply::Json(status, mut value) => {
                self.stamp(&mut value);
                Reply::Json(status, value)
            }
            other => other,
        }
    }

    /// Stamp an NDJSON final frame (`"done": true`); any other frame passes unchanged.
    pub(crate) fn stamp_line(&self, frame: Bytes) -> Bytes {
        let Ok(mut value) = serde_json::from_slice::<Value>(&frame) else {
            return frame;
        };
        if value.get("done") != Some(&Value::Bool(true)) {
            return frame;
        }
        self.stamp(&mut value);
        let mut line = value.to_string();
        line.push('\n');
        Bytes::from(line)
    }

    /// Replace the durations the frame reports (only those it has) with measured ones.
    fn stamp(&self, value: &mut Value) {
        let Value::Object(frame) = value else {
            return;
        };
        let now = Instant::now();
        let nanos = |d: Duration| json!(u64::try_from(d.as_nanos()).unwrap_or(u64::MAX));
        let measured = [
            (
                "total_duration",
                now.saturating_duration_since(self.arrived),
            ),
            ("load_duration", self.slot.load_duration()),
            ("eval_duration", now.saturating_duration_since(self.started)),
        ];
        for (key, duration) in measured {
            if let Some(field) = frame.get_mut(key) {
                *field = nanos(duration);
            }
        }
    }
}
