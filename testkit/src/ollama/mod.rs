//! [`MockOllama`]: a mock Ollama server speaking the real wire format.
//!
//! It serves Ollama's native `/api/*` routes (NDJSON streaming, final frames with
//! `prompt_eval_count`/`eval_count`, `{"error": "..."}` bodies), its OpenAI-compatible
//! `/v1/*` routes (SSE streaming ending in `data: [DONE]`, a usage-only chunk only when
//! `stream_options.include_usage` is set) and its Anthropic-compatible `/v1/messages`.
//! Anything else is gin's `404 page not found`.
//!
//! Token counts are deterministic: every generation reports
//! [`prompt_tokens`](MockOllama::set_prompt_tokens) prompt tokens and one completion token
//! per content frame ([`completion_frames`](MockOllama::set_completion_frames)); frame `i`
//! carries the word `"tok{i} "`.
//!
//! Every request is recorded ([`ReceivedRequest`]); tests steer the mock with delays,
//! failures ([`Failure`]), a [`StreamGate`] that holds every stream after its first
//! frame, and counters of completed, cancelled and in-flight streams. All waits are
//! signal-based (tokio `watch`), never polling.
//!
//! [`MockOllama::start`] answers every model at once with unlimited concurrency.
//! [`MockOllama::builder`] instead simulates one Ollama server's scheduler (module
//! `sim`: loads, LRU eviction of idle models, `parallel` slots, a bounded FIFO queue
//! answering 503 "server busy"; module `scheduled`: token pacing and measured
//! durations in final frames; `GET /_sim/stats`: its counters as JSON). [`Fleet`]
//! starts several such servers.
//!
//! ```no_run
//! # async fn demo() {
//! let ollama = testkit::ollama::MockOllama::start().await;
//! ollama.set_completion_frames(3);
//! // point the gateway's upstream at `ollama.url()`, call it, then:
//! ollama.wait_for_requests(1).await;
//! assert_eq!(ollama.last_request().map(|r| r.path).as_deref(), Some("/api/chat"));
//! # }
//! ```

mod builder;
mod fleet;
mod recording;
mod scheduled;
mod sim;
mod wire;

use std::collections::VecDeque;
use std::fmt;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::Response;
use bytes::Bytes;
use tokio::sync::watch;

pub use builder::MockOllamaBuilder;
pub use fleet::Fleet;
pub use recording::ReceivedRequest;
pub use sim::{
    BUSY_MESSAGE, DEFAULT_MAX_LOADED_MODELS, DEFAULT_MAX_QUEUE, DEFAULT_PARALLEL, ModelState,
    ModelStats, SimEvent, SimSettings, SimStats,
};
pub use wire::OLLAMA_VERSION;

use crate::server::ServerHandle;
use wire::{Dialect, Reply, Snapshot};

/// The models a fresh mock knows.
pub const DEFAULT_MODELS: [&str; 4] = [
    "llama3.1:8b",
    "llama3.2:latest",
    "qwen2.5:7b",
    "nomic-embed-text:latest",
];
/// Prompt tokens reported by a fresh mock.
pub const DEFAULT_PROMPT_TOKENS: u64 = 11;
/// Content frames (= completion tokens) produced by a fresh mock.
pub const DEFAULT_COMPLETION_FRAMES: usize = 5;

/// Largest request body the mock reads.
const BODY_LIMIT: usize = 64 * 1024 * 1024;
/// How long the `wait_for_*` helpers wait before failing the test.
const WAIT_LIMIT: Duration = Duration::from_secs(30);

/// How the mock misbehaves for a request (see [`MockOllama::fail_next`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failure {
    /// Answer with this status and Ollama's error body for the path: `{"error": msg}` on
    /// `/api/*`, the OpenAI envelope on `/v1/*`, the Anthropic envelope on `/v1/messages`.
    Status(u16, String),
    /// Accept the request and never answer (the request still counts as in flight).
    Hang,
    /// Send the response head and the first frame (for a non-streaming answer: the first
    /// half of the body), then drop the connection abruptly.
    CloseMidStream,
}

#[derive(Debug)]
struct Config {
    models: Vec<String>,
    prompt_tokens: u64,
    completion_frames: usize,
    frame_delay: Duration,
}

#[derive(Debug, Default)]
struct Failures {
    queued: VecDeque<Failure>,
    standing: Option<Failure>,
}

/// State shared between the handle(s) and the server task.
#[derive(Debug)]
pub(crate) struct Shared {
    config: Mutex<Config>,
    failures: Mutex<Failures>,
    requests: Mutex<Vec<ReceivedRequest>>,
    request_count: watch::Sender<usize>,
    /// 0 = released; otherwise the generation of the [`StreamGate`] holding streams.
    gate: Arc<watch::Sender<u64>>,
    gate_generation: AtomicU64,
    cancelled: watch::Sender<usize>,
    completed: watch::Sender<usize>,
    in_flight: watch::Sender<usize>,
    ids: AtomicU64,
    /// Scheduler mode (see [`MockOllama::builder`]); `None` answers every model at once.
    sim: Option<Arc<sim::Scheduler>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panicking test thread must not poison the mock for the server task.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Shared {
    fn new() -> Self {
        Self::with(
            DEFAULT_MODELS.iter().map(|m| (*m).to_owned()).collect(),
            DEFAULT_PROMPT_TOKENS,
            DEFAULT_COMPLETION_FRAMES,
            None,
        )
    }

    fn with(
        models: Vec<String>,
        prompt_tokens: u64,
        completion_frames: usize,
        sim: Option<Arc<sim::Scheduler>>,
    ) -> Self {
        Self {
            config: Mutex::new(Config {
                models,
                prompt_tokens,
                completion_frames,
                frame_delay: Duration::ZERO,
            }),
            failures: Mutex::new(Failures::default()),
            requests: Mutex::new(Vec::new()),
            request_count: watch::Sender::new(0),
            gate: Arc::new(watch::Sender::new(0)),
            gate_generation: AtomicU64::new(0),
            cancelled: watch::Sender::new(0),
            completed: watch::Sender::new(0),
            in_flight: watch::Sender::new(0),
            ids: AtomicU64::new(1),
            sim,
        }
    }

    pub(crate) fn snapshot(&self) -> Snapshot {
        let c = lock(&self.config);
        Snapshot {
            models: c.models.clone(),
            prompt_tokens: c.prompt_tokens,
            completion_frames: c.completion_frames,
            loaded: self
                .sim
                .as_ref()
                .map(|sim| sim.stats().borrow().loaded.clone()),
        }
    }

    pub(crate) fn add_model(&self, name: &str) {
        let mut c = lock(&self.config);
        if wire::find_model(&c.models, name).is_none() {
            c.models.push(name.to_owned());
        }
    }

    pub(crate) fn remove_model(&self, name: &str) -> bool {
        let mut c = lock(&self.config);
        let wanted = wire::normalize(name);
        let before = c.models.len();
        c.models.retain(|m| wire::normalize(m) != wanted);
        c.models.len() != before
    }

    pub(crate) fn next_id(&self) -> u64 {
        self.ids.fetch_add(1, Ordering::Relaxed)
    }

    fn frame_delay(&self) -> Duration {
        lock(&self.config).frame_delay
    }

    fn take_failure(&self) -> Option<Failure> {
        let mut f = lock(&self.failures);
        f.queued.pop_front().or_else(|| f.standing.clone())
    }

    fn record(&self, request: ReceivedRequest) {
        let mut requests = lock(&self.requests);
        requests.push(request);
        self.request_count.send_replace(requests.len());
    }
}

async fn wait_until(counter: &watch::Sender<usize>, what: &str, mut ok: impl FnMut(usize) -> bool) {
    let mut rx = counter.subscribe();
    let waited = tokio::time::timeout(WAIT_LIMIT, rx.wait_for(|n| ok(*n))).await;
    if waited.is_err() {
        panic!(
            "testkit: timed out after {WAIT_LIMIT:?} waiting for {what} (currently {})",
            *counter.borrow()
        );
    }
}

/// A handle to a running mock Ollama. Cheap to clone; the server stops (listener and
/// every open connection) when the last clone is dropped or on [`MockOllama::stop`].
#[derive(Clone)]
pub struct MockOllama {
    shared: Arc<Shared>,
    server: Arc<ServerHandle>,
}

impl fmt::Debug for MockOllama {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MockOllama")
            .field("url", &self.url())
            .field("requests", &self.request_count())
            .field("in_flight", &self.in_flight())
            .finish_non_exhaustive()
    }
}

impl MockOllama {
    /// Bind `127.0.0.1:0` and serve on a spawned task.
    pub async fn start() -> Self {
        Self::serve(Shared::new()).await
    }

    /// Serve on a chosen address (for the `mock-ollama` binary and the benchmark).
    pub async fn start_on(addr: &str) -> std::io::Result<Self> {
        Self::serve_on(Shared::new(), addr).await
    }

    async fn serve(shared: Shared) -> Self {
        let shared = Arc::new(shared);
        let server = Arc::new(ServerHandle::spawn(router(&shared)).await);
        Self { shared, server }
    }

    async fn serve_on(shared: Shared, addr: &str) -> std::io::Result<Self> {
        let shared = Arc::new(shared);
        let router = router(&shared);
        let server = Arc::new(ServerHandle::spawn_on(addr, |_| router).await?);
        Ok(Self { shared, server })
    }

    /// `http://127.0.0.1:PORT` (no trailing slash).
    pub fn url(&self) -> String {
        format!("http://{}", self.server.addr())
    }

    /// The bound address.
    pub fn addr(&self) -> SocketAddr {
        self.server.addr()
    }

    /// Stop listening and drop every open connection (in-flight requests included), as
    /// if Ollama died. Later connections are refused. Returns once it is all closed. Idempotent.
    pub async fn stop(&self) {
        self.server.stop().await;
    }

    // ------------------------------------------------------------ configuration

    /// Replace the known models (requests for any other model get 404).
    pub fn set_models<S: Into<String>>(&self, models: impl IntoIterator<Item = S>) {
        lock(&self.shared.config).models = models.into_iter().map(Into::into).collect();
    }

    /// The known models (`pull`, `create` and `copy` add to them, `delete` removes).
    pub fn models(&self) -> Vec<String> {
        lock(&self.shared.config).models.clone()
    }

    /// Prompt tokens every generation and embedding reports (default 11).
    pub fn set_prompt_tokens(&self, tokens: u64) {
        lock(&self.shared.config).prompt_tokens = tokens;
    }

    /// The configured prompt tokens.
    pub fn prompt_tokens(&self) -> u64 {
        lock(&self.shared.config).prompt_tokens
    }

    /// Content frames per generation, which is also the completion token count
    /// (default 5).
    pub fn set_completion_frames(&self, frames: usize) {
        lock(&self.shared.config).completion_frames = frames;
    }

    /// The configured completion frames (= completion tokens).
    pub fn completion_frames(&self) -> usize {
        lock(&self.shared.config).completion_frames
    }

    /// Delay between consecutive streamed frames, and before any non-streaming
    /// response (default zero).
    pub fn set_frame_delay(&self, delay: Duration) {
        lock(&self.shared.config).frame_delay = delay;
    }

    // ------------------------------------------------------------ failures

    /// The next `n` requests (any route) fail with `failure`; queued after any earlier
    /// `fail_next` and taking precedence over [`set_failure`](Self::set_failure).
    pub fn fail_next(&self, n: usize, failure: Failure) {
        let mut f = lock(&self.shared.failures);
        f.queued.extend(std::iter::repeat_n(failure, n));
    }

    /// Every request fails with `failure` until set to `None` (queued `fail_next`
    /// failures are used first).
    pub fn set_failure(&self, failure: Option<Failure>) {
        lock(&self.shared.failures).standing = failure;
    }

    /// Forget queued and standing failures.
    pub fn clear_failures(&self) {
        *lock(&self.shared.failures) = Failures::default();
    }

    // ------------------------------------------------------------ streams

    /// Hold streams: from now on every stream sends its first frame and then waits until
    /// the returned gate is released (or dropped). A newer `hold_streams` supersedes an
    /// older gate, whose release/drop then does nothing.
    pub fn hold_streams(&self) -> StreamGate {
        let generation = self.shared.gate_generation.fetch_add(1, Ordering::Relaxed) + 1;
        self.shared.gate.send_replace(generation);
        StreamGate {
            gate: Arc::clone(&self.shared.gate),
            generation,
        }
    }

    /// Streams whose body was dropped (client gone) before the last frame was sent.
    pub fn cancelled_streams(&self) -> usize {
        *self.shared.cancelled.borrow()
    }

    /// Wait until at least `n` streams were cancelled (panics after 30 s).
    pub async fn wait_for_cancelled(&self, n: usize) {
        wait_until(&self.shared.cancelled, "cancelled streams", |c| c >= n).await;
    }

    /// Streams whose last frame was handed to the connection.
    pub fn completed_streams(&self) -> usize {
        *self.shared.completed.borrow()
    }

    /// Wait until at least `n` streams completed (panics after 30 s).
    pub async fn wait_for_completed(&self, n: usize) {
        wait_until(&self.shared.completed, "completed streams", |c| c >= n).await;
    }

    /// Requests currently being answered (a stream counts until its body ends or is
    /// dropped; a [`Failure::Hang`] request counts until its connection goes away).
    pub fn in_flight(&self) -> usize {
        *self.shared.in_flight.borrow()
    }

    /// Wait until exactly `n` requests are in flight (panics after 30 s).
    pub async fn wait_for_in_flight(&self, n: usize) {
        wait_until(&self.shared.in_flight, "in-flight requests", |c| c == n).await;
    }

    // ------------------------------------------------------------ recording

    /// Every request received since start (or the last [`clear`](Self::clear)).
    pub fn requests(&self) -> Vec<ReceivedRequest> {
        lock(&self.shared.requests).clone()
    }

    /// How many requests were received.
    pub fn request_count(&self) -> usize {
        lock(&self.shared.requests).len()
    }

    /// The most recent request.
    pub fn last_request(&self) -> Option<ReceivedRequest> {
        lock(&self.shared.requests).last().cloned()
    }

    /// Forget recorded requests (counters of streams are kept).
    pub fn clear(&self) {
        let mut requests = lock(&self.shared.requests);
        requests.clear();
        self.shared.request_count.send_replace(0);
    }

    /// Wait until at least `n` requests were recorded (panics after 30 s).
    pub async fn wait_for_requests(&self, n: usize) {
        wait_until(&self.shared.request_count, "recorded requests", |c| c >= n).await;
    }
}

/// Holds every stream after its first frame until released (see
/// [`MockOllama::hold_streams`]). Dropping the gate releases it.
#[must_use = "dropping a StreamGate releases the streams at once"]
#[derive(Debug)]
pub struct StreamGate {
    gate: Arc<watch::Sender<u64>>,
    generation: u64,
}

impl StreamGate {
    /// Let held streams (and later ones) run to completion.
    pub fn release(&self) {
        let generation = self.generation;
        self.gate.send_if_modified(|held| {
            if *held == generation {
                *held = 0;
                true
            } else {
                false
            }
        });
    }

    /// Whether this gate still holds streams.
    pub fn is_held(&self) -> bool {
        *self.gate.borrow() == self.generation
    }
}

impl Drop for StreamGate {
    fn drop(&mut self) {
        self.release();
    }
}

// ---------------------------------------------------------------- serving

fn router(shared: &Arc<Shared>) -> Router {
    Router::new()
        .fallback(handle)
        .with_state(Arc::clone(shared))
}

/// Counts a request as in flight until dropped.
struct InFlight(Arc<Shared>);

impl InFlight {
    fn enter(shared: &Arc<Shared>) -> Self {
        shared.in_flight.send_modify(|n| *n += 1);
        Self(Arc::clone(shared))
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.send_modify(|n| *n = n.saturating_sub(1));
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Running,
    Completed,
    Aborted,
}

/// Counts a stream as completed or (when dropped while running) cancelled.
struct StreamTrack {
    shared: Arc<Shared>,
    outcome: Outcome,
}

impl StreamTrack {
    fn complete(&mut self) {
        if self.outcome == Outcome::Running {
            self.outcome = Outcome::Completed;
            self.shared.completed.send_modify(|n| *n += 1);
        }
    }
}

impl Drop for StreamTrack {
    fn drop(&mut self) {
        if self.outcome == Outcome::Running {
            self.shared.cancelled.send_modify(|n| *n += 1);
        }
    }
}

/// The state of one streamed body.
struct FrameStream {
    frames: std::vec::IntoIter<Bytes>,
    sent: usize,
    delay: Duration,
    gate: watch::Receiver<u64>,
    /// Abort the connection after the first frame.
    close_after_first: bool,
    /// `None` for a non-streaming body cut short by [`Failure::CloseMidStream`].
    track: Option<StreamTrack>,
    finished: bool,
    /// Scheduler mode: the slot this generation holds and its token pacing.
    generation: Option<scheduled::Generation>,
    _in_flight: InFlight,
}

impl FrameStream {
    /// The last frame is out (or the stream was cut): count it and free the slot.
    fn finish(&mut self, outcome: Outcome) {
        self.finished = true;
        if let Some(track) = self.track.as_mut() {
            match outcome {
                Outcome::Completed => track.complete(),
                Outcome::Aborted | Outcome::Running => track.outcome = outcome,
            }
        }
        self.generation = None;
    }
}

type FrameResult = Result<Bytes, std::io::Error>;

async fn next_frame(mut st: FrameStream) -> Option<(FrameResult, FrameStream)> {
    if st.finished {
        return None;
    }
    if st.sent > 0 {
        if st.sent == 1 && st.close_after_first {
            st.finish(Outcome::Aborted);
            // Let the connection flush the first frame before it is torn down.
            tokio::task::yield_now().await;
            let err = std::io::Error::new(
                std::io::ErrorKind::ConnectionAborted,
                "testkit: mock Ollama closed the connection mid-stream",
            );
            return Some((Err(err), st));
        }
        if st.sent == 1 {
            // Held streams wait here, after their first frame.
            let _ = st.gate.wait_for(|held| *held == 0).await;
        }
        if !st.delay.is_zero() {
            tokio::time::sleep(st.delay).await;
        }
    }
    if let Some(generation) = &st.generation {
        generation.pace(st.sent).await;
    }
    let Some(mut frame) = st.frames.next() else {
        st.finish(Outcome::Completed);
        return None;
    };
    st.sent += 1;
    if st.frames.len() == 0 {
        if let Some(generation) = &st.generation {
            frame = generation.stamp_line(frame);
        }
        if !st.close_after_first {
            st.finish(Outcome::Completed);
        }
    }
    Some((Ok(frame), st))
}

fn streamed(st: FrameStream) -> Body {
    Body::from_stream(futures_util::stream::unfold(st, next_frame))
}

fn with_content_type(mut response: Response, content_type: &'static str) -> Response {
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}

const JSON: &str = "application/json; charset=utf-8";
const TEXT: &str = "text/plain; charset=utf-8";

async fn handle(State(shared): State<Arc<Shared>>, request: Request) -> Response {
    let arrived = Instant::now();
    if let Some(stats) = scheduled::stats_route(&shared, &request) {
        return with_content_type(Response::new(Body::from(stats)), JSON);
    }
    let in_flight = InFlight::enter(&shared);
    let (parts, body) = request.into_parts();
    let body = axum::body::to_bytes(body, BODY_LIMIT)
        .await
        .unwrap_or_default();
    let path = parts.uri.path().to_owned();
    shared.record(ReceivedRequest {
        method: parts.method.as_str().to_owned(),
        path: path.clone(),
        query: parts.uri.query().map(str::to_owned),
        headers: parts
            .headers
            .iter()
            .map(|(k, v)| {
                (
                    k.as_str().to_ascii_lowercase(),
                    String::from_utf8_lossy(v.as_bytes()).into_owned(),
                )
            })
            .collect(),
        body: body.clone(),
    });

    let delay = shared.frame_delay();
    let failure = shared.take_failure();
    let close = failure == Some(Failure::CloseMidStream);
    let reply = match failure {
        Some(Failure::Hang) => {
            // Never answer; the request stays in flight until the connection goes away.
            return std::future::pending::<Response>().await;
        }
        Some(Failure::Status(code, message)) => {
            let status = StatusCode::from_u16(code).expect("testkit: Failure::Status code");
            wire::error(Dialect::for_path(&path), status, &message)
        }
        Some(Failure::CloseMidStream) | None => wire::route(&shared, &parts.method, &path, &body),
    };
    // Scheduler mode: a generation that would succeed first waits for its model and a
    // slot (or is refused as busy), then holds the slot while it generates.
    let (reply, mut generation) =
        match scheduled::admit(&shared, &parts.method, &path, &body, arrived, reply).await {
            Ok((reply, generation)) => (reply, generation),
            Err(refused) => (refused, None),
        };
    let head_only = parts.method == axum::http::Method::HEAD;

    if let Reply::Stream {
        content_type,
        frames,
    } = reply
    {
        let st = FrameStream {
            frames: frames.into_iter(),
            sent: 0,
            delay,
            gate: shared.gate.subscribe(),
            close_after_first: close,
            track: Some(StreamTrack {
                shared: Arc::clone(&shared),
                outcome: Outcome::Running,
            }),
            finished: false,
            generation,
            _in_flight: in_flight,
        };
        let mut response = with_content_type(Response::new(streamed(st)), content_type);
        if content_type == wire::SSE {
            response
                .headers_mut()
                .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
        }
        return response;
    }

    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    // The whole generation happens before a non-streaming answer; its slot is freed
    // before the answer leaves, so a client that has it sees the request counted.
    let reply = match generation.take() {
        Some(generation) => generation.run_to_end(reply).await,
        None => reply,
    };
    let (status, content_type, bytes) = match reply {
        Reply::Json(status, value) => (status, Some(JSON), Bytes::from(value.to_string())),
        Reply::Text(status, text) => (status, Some(TEXT), Bytes::from_static(text.as_bytes())),
        Reply::Empty(status) => (status, None, Bytes::new()),
        Reply::Stream { .. } => unreachable!("streams are answered above"),
    };
    let body = if close {
        let half = bytes.slice(..bytes.len() / 2);
        streamed(FrameStream {
            frames: vec![half].into_iter(),
            sent: 0,
            delay: Duration::ZERO,
            gate: shared.gate.subscribe(),
            close_after_first: true,
            track: None,
            finished: false,
            generation: None,
            _in_flight: in_flight,
        })
    } else if head_only {
        Body::empty()
    } else {
        Body::from(bytes)
    };
    let mut response = Response::new(body);
    *response.status_mut() = status;
    match content_type {
        Some(ct) => with_content_type(response, ct),
        None => response,
    }
}
