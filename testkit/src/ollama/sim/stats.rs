//! The simulator's counters, as tests read them ([`MockOllama::sim_stats`]) and as
//! `GET /_sim/stats` and the `mock-ollama` binary print them (the same JSON).
//!
//! [`MockOllama::sim_stats`]: crate::ollama::MockOllama::sim_stats

use std::collections::BTreeMap;

use serde::Serialize;

/// Where a model stands on the simulated server.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ModelState {
    /// Not in memory.
    #[default]
    Unloaded,
    /// Being loaded; its requests wait.
    Loading,
    /// In memory and answering.
    Loaded,
}

/// Counters of one model (every model ever requested appears, loaded or not).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ModelStats {
    /// Where it stands now.
    pub state: ModelState,
    /// Loads started.
    pub loads: u64,
    /// Times it was unloaded to make room for another model.
    pub evictions: u64,
    /// Times it was unloaded because a request said `keep_alive: 0`.
    pub unloads: u64,
    /// Requests generating now.
    pub in_flight: usize,
    /// Most requests ever generating at once.
    pub max_in_flight: usize,
    /// Requests waiting now (for the scheduler, a load or a slot).
    pub queued: usize,
    /// Requests that held a slot and finished (a client that left mid-stream included).
    pub served: u64,
    /// Requests refused with 503 "server busy".
    pub rejected: u64,
}

/// A change to the set of loaded models, in the order it happened.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "event", content = "model", rename_all = "snake_case")]
pub enum SimEvent {
    /// A load started.
    Loaded(String),
    /// Unloaded to make room.
    Evicted(String),
    /// Unloaded after `keep_alive: 0`.
    Unloaded(String),
}

/// Everything the simulator counts, at one instant.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct SimStats {
    /// Models in memory (loading ones included, as Ollama's `/api/ps` lists them),
    /// least recently used first.
    pub loaded: Vec<String>,
    /// Requests generating now, all models.
    pub in_flight: usize,
    /// Most requests ever generating at once, all models.
    pub max_in_flight: usize,
    /// Requests waiting now, all models.
    pub queued: usize,
    /// Most requests ever waiting at once.
    pub max_queued: usize,
    /// Requests that held a slot and finished.
    pub served: u64,
    /// Requests refused with 503 "server busy".
    pub rejected: u64,
    /// Loads started, all models.
    pub loads: u64,
    /// Evictions, all models.
    pub evictions: u64,
    /// Per model, by canonical name.
    pub models: BTreeMap<String, ModelStats>,
    /// Loads, evictions and unloads in order (the last 10,000; not in the JSON).
    #[serde(skip)]
    pub events: Vec<SimEvent>,
}

impl SimStats {
    /// The counters of `model` (all zero if it was never requested).
    pub fn model(&self, model: &str) -> ModelStats {
        self.models.get(model).cloned().unwrap_or_default()
    }

    /// One JSON line (what `/_sim/stats` answers and `mock-ollama` prints).
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::to_value(self).unwrap_or_default()
    }
}
