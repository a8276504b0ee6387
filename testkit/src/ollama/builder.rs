//! [`MockOllamaBuilder`]: a mock Ollama in scheduler mode, simulating one real server
//! (its own models, loads, evictions, parallel slots and queue), and the accessors that
//! read what its scheduler did.
//!
//! ```no_run
//! # async fn demo() {
//! use std::time::Duration;
//! let gpu = testkit::ollama::MockOllama::builder()
//!     .models(["a", "b", "c"])
//!     .parallel(2)
//!     .max_loaded_models(2)
//!     .load_time(Duration::from_millis(100))
//!     .token_interval(Duration::from_millis(10))
//!     .start()
//!     .await;
//! // ... drive requests at gpu.url(), then:
//! let stats = gpu.sim_stats().expect("scheduler mode");
//! assert!(stats.model("a").max_in_flight <= 2);
//! # }
//! ```

use std::sync::Arc;
use std::time::Duration;

use super::sim::{Scheduler, SimSettings, SimStats};
use super::{
    DEFAULT_COMPLETION_FRAMES, DEFAULT_MODELS, DEFAULT_PROMPT_TOKENS, MockOllama, Shared,
    WAIT_LIMIT,
};

/// Configures a mock Ollama in scheduler mode (see [`MockOllama::builder`]). Every
/// setting has Ollama's default (or the plain mock's, for models and token counts).
#[derive(Debug, Clone)]
pub struct MockOllamaBuilder {
    models: Vec<String>,
    prompt_tokens: u64,
    completion_frames: usize,
    settings: SimSettings,
}

impl Default for MockOllamaBuilder {
    fn default() -> Self {
        Self {
            models: DEFAULT_MODELS.iter().map(|m| (*m).to_owned()).collect(),
            prompt_tokens: DEFAULT_PROMPT_TOKENS,
            completion_frames: DEFAULT_COMPLETION_FRAMES,
            settings: SimSettings::default(),
        }
    }
}

impl MockOllamaBuilder {
    /// The models this server has pulled: `/api/tags` lists exactly these, any other
    /// gets Ollama's 404 (default [`DEFAULT_MODELS`]).
    pub fn models<S: Into<String>>(mut self, models: impl IntoIterator<Item = S>) -> Self {
        self.models = models.into_iter().map(Into::into).collect();
        self
    }

    /// Requests one loaded model runs at once, `OLLAMA_NUM_PARALLEL` (default 1; 0 is 1).
    pub fn parallel(mut self, n: usize) -> Self {
        self.settings.parallel = n;
        self
    }

    /// Models kept loaded at once, `OLLAMA_MAX_LOADED_MODELS` (default 3; 0 is 1).
    pub fn max_loaded_models(mut self, n: usize) -> Self {
        self.settings.max_loaded_models = n;
        self
    }

    /// Requests allowed to wait before 503 "server busy", `OLLAMA_MAX_QUEUE`
    /// (default 512).
    pub fn max_queue(mut self, n: usize) -> Self {
        self.settings.max_queue = n;
        self
    }

    /// How long a model takes to load (default zero).
    pub fn load_time(mut self, load_time: Duration) -> Self {
        self.settings.load_time = load_time;
        self
    }

    /// Time per generated token, i.e. per content frame (default zero); a generation
    /// lasts about `completion_frames × token_interval`, an embedding one interval.
    pub fn token_interval(mut self, interval: Duration) -> Self {
        self.settings.token_interval = interval;
        self
    }

    /// Content frames (= completion tokens) per generation (default 5).
    pub fn completion_frames(mut self, frames: usize) -> Self {
        self.completion_frames = frames;
        self
    }

    /// Prompt tokens every generation reports (default 11).
    pub fn prompt_tokens(mut self, tokens: u64) -> Self {
        self.prompt_tokens = tokens;
        self
    }

    /// All scheduler settings at once.
    pub fn settings(mut self, settings: SimSettings) -> Self {
        self.settings = settings;
        self
    }

    fn shared(self) -> Shared {
        Shared::with(
            self.models,
            self.prompt_tokens,
            self.completion_frames,
            Some(Scheduler::new(self.settings)),
        )
    }

    /// Bind `127.0.0.1:0` and serve on a spawned task.
    pub async fn start(self) -> MockOllama {
        MockOllama::serve(self.shared()).await
    }

    /// Serve on a chosen address (the `mock-ollama` binary, the benchmark).
    pub async fn start_on(self, addr: &str) -> std::io::Result<MockOllama> {
        MockOllama::serve_on(self.shared(), addr).await
    }
}

impl MockOllama {
    /// A mock in scheduler mode, simulating one Ollama server's scheduler: a model must
    /// be loaded before it answers, loads evict the least recently used idle model, each
    /// model runs `parallel` requests and queues the rest. [`MockOllama::start`] stays
    /// the plain mock that answers every model at once.
    pub fn builder() -> MockOllamaBuilder {
        MockOllamaBuilder::default()
    }

    /// The scheduler's settings; `None` for a plain mock.
    pub fn sim_settings(&self) -> Option<SimSettings> {
        self.sim().map(|sim| sim.settings().clone())
    }

    /// The scheduler's counters now (also served as JSON at `GET /_sim/stats`); `None`
    /// for a plain mock.
    pub fn sim_stats(&self) -> Option<SimStats> {
        self.sim().map(|sim| sim.stats().borrow().clone())
    }

    /// The models in memory, least recently used first (empty for a plain mock).
    pub fn loaded_models(&self) -> Vec<String> {
        self.sim_stats().map(|s| s.loaded).unwrap_or_default()
    }

    /// Wait until the counters satisfy `ok` and return them; woken by every change,
    /// never polling.
    ///
    /// # Panics
    /// On a plain mock, or after 30 s (naming `what` and the counters).
    pub async fn wait_for_sim(
        &self,
        what: &str,
        mut ok: impl FnMut(&SimStats) -> bool,
    ) -> SimStats {
        let Some(sim) = self.sim() else {
            panic!("testkit: wait_for_sim({what}) on a mock without scheduler mode");
        };
        let mut rx = sim.stats().subscribe();
        match tokio::time::timeout(WAIT_LIMIT, rx.wait_for(|s| ok(s))).await {
            Ok(Ok(stats)) => stats.clone(),
            _ => panic!(
                "testkit: timed out after {WAIT_LIMIT:?} waiting for {what} (currently {:?})",
                *sim.stats().borrow()
            ),
        }
    }

    /// Wait until `model` is loaded and ready to answer.
    pub async fn wait_for_loaded(&self, model: &str) -> SimStats {
        self.wait_for_sim(&format!("{model} loaded"), |s| {
            s.model(model).state == super::ModelState::Loaded
        })
        .await
    }

    /// Wait until exactly `n` requests wait, all models together.
    pub async fn wait_for_queued(&self, n: usize) -> SimStats {
        self.wait_for_sim(&format!("{n} queued"), |s| s.queued == n)
            .await
    }

    /// Wait until at least `n` requests were served, all models together.
    pub async fn wait_for_served(&self, n: u64) -> SimStats {
        self.wait_for_sim(&format!("{n} served"), |s| s.served >= n)
            .await
    }

    fn sim(&self) -> Option<&Arc<Scheduler>> {
        self.shared.sim.as_ref()
    }
}
