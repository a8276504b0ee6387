//! The scheduler simulator: what a real Ollama server does between accepting a
//! generation request and producing its first token.
//!
//! It owns the scheduling state of one simulated server — which models are loaded, which
//! requests wait and why, who holds a slot — and the counters tests and the fleet
//! benchmark read ([`SimStats`]). The HTTP side (parent module) asks for a [`Ticket`],
//! awaits its [`Slot`] and generates while holding it; dropping either gives the capacity
//! back, so a client that goes away frees its place at once.
//!
//! The model follows Ollama's `server/sched.go`:
//! - One scheduler queue, first come first served, bounded by `max_queue`
//!   (`OLLAMA_MAX_QUEUE`); a request past the bound is refused with
//!   [`BUSY_MESSAGE`]. This mock counts every request not yet generating against the
//!   bound (Ollama counts those awaiting its scheduler loop), so a test can fill it
//!   deterministically.
//! - A request for a model that is loaded (or loading) takes a reference to it at once
//!   and then waits for one of the model's `parallel` slots (`OLLAMA_NUM_PARALLEL`),
//!   FIFO, as Ollama's runner semaphore does.
//! - A request for a model that is not loaded starts its load when fewer than
//!   `max_loaded_models` (`OLLAMA_MAX_LOADED_MODELS`) are loaded. Ollama loads one model
//!   at a time: while a load runs, requests that need another load wait and requests
//!   for loaded models pass them.
//! - When the server is full, the least recently used *idle* model is evicted. When none
//!   is idle, the scheduler commits to the least recently used model and waits for its
//!   requests to finish; until then the whole queue waits behind it, requests for other
//!   loaded models included ("at this point we're queueing up all incoming requests",
//!   sched.go). A model with requests in flight is never evicted.
//!   (Ollama orders candidates by keep-alive duration, then name; with equal keep-alives
//!   that is arbitrary, and the fleet spec asks for LRU, so LRU it is.)
//! - `keep_alive: 0` marks the model to unload as soon as it is idle; a later request
//!   with another `keep_alive` clears the mark. Idle expiry after a non-zero keep-alive
//!   is not simulated: models stay until evicted.
//!
//! Loads run on tasks the scheduler owns (a [`JoinSet`] aborted with it), holding only
//! a weak reference, so a dropped mock never leaves a timer behind.

mod stats;
mod ticket;

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};
use std::time::{Duration, Instant};

use tokio::sync::{oneshot, watch};
use tokio::task::JoinSet;

pub use stats::{ModelState, ModelStats, SimEvent, SimStats};
pub(crate) use ticket::{Slot, Ticket};

/// Ollama's `ErrMaxQueue` text, answered with 503 when the queue is full.
pub const BUSY_MESSAGE: &str = "server busy, please try again.  maximum pending requests exceeded";

/// Ollama's default `OLLAMA_MAX_QUEUE`.
pub const DEFAULT_MAX_QUEUE: usize = 512;
/// Ollama's default `OLLAMA_NUM_PARALLEL`.
pub const DEFAULT_PARALLEL: usize = 1;
/// Ollama's default `OLLAMA_MAX_LOADED_MODELS` on one GPU.
pub const DEFAULT_MAX_LOADED_MODELS: usize = 3;

/// Events kept in [`SimStats::events`]; older ones are dropped so a long benchmark run
/// stays bounded.
const EVENT_LOG_LIMIT: usize = 10_000;

/// How a simulated server schedules and generates.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SimSettings {
    /// Requests one loaded model runs at once (`OLLAMA_NUM_PARALLEL`).
    pub parallel: usize,
    /// Models kept loaded at once (`OLLAMA_MAX_LOADED_MODELS`).
    pub max_loaded_models: usize,
    /// Requests allowed to wait (`OLLAMA_MAX_QUEUE`).
    pub max_queue: usize,
    /// How long loading a model takes.
    pub load_time: Duration,
    /// Time to produce one token (one content frame).
    pub token_interval: Duration,
}

impl Default for SimSettings {
    fn default() -> Self {
        Self {
            parallel: DEFAULT_PARALLEL,
            max_loaded_models: DEFAULT_MAX_LOADED_MODELS,
            max_queue: DEFAULT_MAX_QUEUE,
            load_time: Duration::ZERO,
            token_interval: Duration::ZERO,
        }
    }
}

/// What a request's `keep_alive` asks of its model.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum KeepAlive {
    /// Unload as soon as the model is idle (`keep_alive: 0`).
    UnloadWhenIdle,
    /// Any other value: stay loaded.
    Stay,
}

/// Handed to a request when it may start generating.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Start {
    /// From arrival until the model was loaded for it, as Ollama measures
    /// `load_duration` (time spent in its scheduler).
    pub(crate) load_duration: Duration,
}

/// The queue is full (answer 503 with [`BUSY_MESSAGE`]).
#[derive(Debug)]
pub(crate) struct Busy;

/// One simulated server's scheduler.
#[derive(Debug)]
pub(crate) struct Scheduler {
    settings: SimSettings,
    state: Mutex<State>,
    /// Republished after every change, so tests wait on it instead of polling.
    stats: watch::Sender<SimStats>,
    /// Lets load tasks reach the scheduler without keeping it alive.
    this: Weak<Scheduler>,
}

#[derive(Debug)]
struct Waiter {
    id: u64,
    model: String,
    arrived: Instant,
    keep_alive: Option<KeepAlive>,
    /// When it got a loaded model (its `load_duration` ends here).
    ready_at: Option<Instant>,
    start: oneshot::Sender<Start>,
}

#[derive(Debug)]
struct Runner {
    ready: bool,
    /// Logical time of the last grant or finish (LRU order).
    last_used: u64,
    /// Requests holding a reference: waiting for a slot or generating.
    refs: usize,
    running: usize,
    /// Granted requests waiting for the load or a slot, FIFO.
    slots: VecDeque<Waiter>,
    unload_when_idle: bool,
}

/// Why a model left memory.
#[derive(Debug, Clone, Copy)]
enum Removal {
    /// To make room for another model.
    Evicted,
    /// `keep_alive: 0` and idle.
    Unloaded,
}

#[derive(Debug, Default)]
struct State {
    clock: u64,
    next_id: u64,
    /// Waiting for the scheduler (a load or an eviction).
    pending: VecDeque<Waiter>,
    runners: HashMap<String, Runner>,
    /// The model being loaded; Ollama loads one at a time.
    loading: Option<String>,
    /// The busy model the scheduler committed to evict; the queue waits for it.
    victim: Option<String>,
    counters: BTreeMap<String, ModelStats>,
    max_in_flight: usize,
    max_queued: usize,
    served: u64,
    rejected: u64,
    events: VecDeque<SimEvent>,
    load_tasks: JoinSet<()>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Scheduler {
    pub(crate) fn new(settings: SimSettings) -> Arc<Self> {
        let settings = SimSettings {
            // Zero means "auto" to Ollama; one is the only sensible simulation of it.
            parallel: settings.parallel.max(1),
            max_loaded_models: settings.max_loaded_models.max(1),
            ..settings
        };
        Arc::new_cyclic(|this| Self {
            settings,
            state: Mutex::new(State::default()),
            stats: watch::Sender::new(SimStats::default()),
            this: this.clone(),
        })
    }

    pub(crate) fn settings(&self) -> &SimSettings {
        &self.settings
    }

    pub(crate) fn stats(&self) -> &watch::Sender<SimStats> {
        &self.stats
    }

    /// Join the queue for `model` (its canonical name), or [`Busy`].
    pub(crate) fn enqueue(
        self: &Arc<Self>,
        model: &str,
        keep_alive: Option<KeepAlive>,
    ) -> Result<Ticket, Busy> {
        let mut st = lock(&self.state);
        if st.waiting() >= self.settings.max_queue {
            st.rejected += 1;
            st.counters.entry(model.to_owned()).or_default().rejected += 1;
            self.publish(&st);
            return Err(Busy);
        }
        let (tx, rx) = oneshot::channel();
        let id = st.next_id;
        st.next_id += 1;
        st.pending.push_back(Waiter {
            id,
            model: model.to_owned(),
            arrived: Instant::now(),
            keep_alive,
            ready_at: None,
            start: tx,
        });
        self.pump(&mut st);
        Ok(Ticket {
            scheduler: Arc::clone(self),
            id,
            model: model.to_owned(),
            start: Some(rx),
            armed: true,
        })
    }

    /// Run the scheduler until nothing more can move, then publish the counters.
    fn pump(&self, st: &mut State) {
        self.schedule_pending(st);
        Self::hand_out_slots(st, self.settings.parallel);
        st.max_queued = st.max_queued.max(st.waiting());
        self.publish(st);
    }

    /// Ollama's `processPending` loop over the queue.
    fn schedule_pending(&self, st: &mut State) {
        let mut i = 0;
        while i < st.pending.len() {
            let model = st.pending[i].model.clone();
            if st.runners.contains_key(&model) {
                if let Some(waiter) = st.pending.remove(i) {
                    st.grant(waiter);
                }
                continue;
            }
            if st.loading.is_some() {
                // One load at a time; requests behind it for loaded models go ahead.
                i += 1;
                continue;
            }
            if st.runners.len() < self.settings.max_loaded_models {
                self.start_load(st, &model);
                if let Some(waiter) = st.pending.remove(i) {
                    st.grant(waiter);
                }
                continue;
            }
            let Some(victim) = st.victim.clone().or_else(|| st.choose_victim()) else {
                i += 1;
                continue;
            };
            if st.runners.get(&victim).is_some_and(|r| r.refs == 0) {
                st.victim = None;
                st.remove_runner(&victim, Removal::Evicted);
                continue;
            }
            // Busy victim: everything behind this request waits for it to drain.
            st.victim = Some(victim);
            break;
        }
    }

    fn start_load(&self, st: &mut State, model: &str) {
        st.counters.entry(model.to_owned()).or_default().loads += 1;
        st.log(SimEvent::Loaded(model.to_owned()));
        st.clock += 1;
        st.runners.insert(
            model.to_owned(),
            Runner {
                ready: false,
                last_used: st.clock,
                refs: 0,
                running: 0,
                slots: VecDeque::new(),
                unload_when_idle: false,
            },
        );
        if self.settings.load_time.is_zero() {
            st.finish_load(model);
            return;
        }
        st.loading = Some(model.to_owned());
        while st.load_tasks.try_join_next().is_some() {}
        // Outside a runtime (a drop during shutdown) nobody is left to wait for the load.
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            let this = self.this.clone();
            let model = model.to_owned();
            let load_time = self.settings.load_time;
            st.load_tasks.spawn_on(
                async move {
                    tokio::time::sleep(load_time).await;
                    if let Some(scheduler) = this.upgrade() {
                        scheduler.load_done(&model);
                    }
                },
                &runtime,
            );
        }
    }

    fn load_done(&self, model: &str) {
        let mut st = lock(&self.state);
        if st.loading.as_deref() == Some(model) {
            st.loading = None;
        }
        st.finish_load(model);
        self.pump(&mut st);
    }

    fn hand_out_slots(st: &mut State, parallel: usize) {
        let mut started = false;
        for (model, runner) in &mut st.runners {
            while runner.ready && runner.running < parallel {
                let Some(waiter) = runner.slots.pop_front() else {
                    break;
                };
                let load_duration = waiter
                    .ready_at
                    .unwrap_or_else(Instant::now)
                    .saturating_duration_since(waiter.arrived);
                // A receiver already gone is cleaned up by its ticket's drop, which
                // finds the request no longer queued and releases the slot.
                let _ = waiter.start.send(Start { load_duration });
                runner.running += 1;
                started = true;
                let c = st.counters.entry(model.clone()).or_default();
                c.max_in_flight = c.max_in_flight.max(runner.running);
            }
        }
        if started {
            let total: usize = st.runners.values().map(|r| r.running).sum();
            st.max_in_flight = st.max_in_flight.max(total);
        }
    }

    /// A request left, whether still waiting or generating.
    pub(super) fn release(&self, id: u64, model: &str) {
        let mut st = lock(&self.state);
        let was_queued = st.remove_waiter(id, model);
        if !was_queued {
            st.finish_request(model);
        }
        self.pump(&mut st);
    }

    fn publish(&self, st: &State) {
        self.stats.send_replace(st.snapshot());
    }
}

impl State {
    /// Requests not yet generating.
    fn waiting(&self) -> usize {
        self.pending.len() + self.runners.values().map(|r| r.slots.len()).sum::<usize>()
    }

    fn log(&mut self, event: SimEvent) {
        if self.events.len() == EVENT_LOG_LIMIT {
            self.events.pop_front();
        }
        self.events.push_back(event);
    }

    /// Give a waiting request a reference to its (loaded or loading) model.
    fn grant(&mut self, mut waiter: Waiter) {
        self.clock += 1;
        let clock = self.clock;
        let Some(runner) = self.runners.get_mut(&waiter.model) else {
            return;
        };
        runner.refs += 1;
        runner.last_used = clock;
        match waiter.keep_alive {
            Some(KeepAlive::UnloadWhenIdle) => runner.unload_when_idle = true,
            Some(KeepAlive::Stay) => runner.unload_when_idle = false,
            None => {}
        }
        if runner.ready {
            waiter.ready_at = Some(Instant::now());
        }
        runner.slots.push_back(waiter);
    }

    fn finish_load(&mut self, model: &str) {
        if let Some(runner) = self.runners.get_mut(model) {
            runner.ready = true;
            let now = Instant::now();
            for waiter in &mut runner.slots {
                waiter.ready_at.get_or_insert(now);
            }
        }
    }

    /// The least recently used idle model, else the least recently used one.
    fn choose_victim(&self) -> Option<String> {
        let lru = |idle: bool| {
            self.runners
                .iter()
                .filter(|(_, r)| !idle || (r.refs == 0 && r.ready))
                .min_by_key(|(name, r)| (r.last_used, (*name).clone()))
                .map(|(name, _)| name.clone())
        };
        lru(true).or_else(|| lru(false))
    }

    fn remove_runner(&mut self, model: &str, why: Removal) {
        if self.runners.remove(model).is_none() {
            return;
        }
        let c = self.counters.entry(model.to_owned()).or_default();
        let event = match why {
            Removal::Evicted => {
                c.evictions += 1;
                SimEvent::Evicted(model.to_owned())
            }
            Removal::Unloaded => {
                c.unloads += 1;
                SimEvent::Unloaded(model.to_owned())
            }
        };
        if self.victim.as_deref() == Some(model) {
            self.victim = None;
        }
        if self.loading.as_deref() == Some(model) {
            self.loading = None;
        }
        self.log(event);
    }

    /// Drop a request still waiting; `false` when it had already been started.
    fn remove_waiter(&mut self, id: u64, model: &str) -> bool {
        if let Some(pos) = self.pending.iter().position(|w| w.id == id) {
            self.pending.remove(pos);
            if pos == 0 {
                // The eviction was committed for this request (it headed the queue);
                // the next one chooses afresh, as Ollama does per pending request.
                self.victim = None;
            }
            return true;
        }
        let Some(runner) = self.runners.get_mut(model) else {
            return false;
        };
        let Some(pos) = runner.slots.iter().position(|w| w.id == id) else {
            return false;
        };
        runner.slots.remove(pos);
        runner.refs = runner.refs.saturating_sub(1);
        self.after_release(model);
        true
    }

    fn finish_request(&mut self, model: &str) {
        self.clock += 1;
        let clock = self.clock;
        let Some(runner) = self.runners.get_mut(model) else {
            return;
        };
        runner.running = runner.running.saturating_sub(1);
        runner.refs = runner.refs.saturating_sub(1);
        runner.last_used = clock;
        self.served += 1;
        self.counters.entry(model.to_owned()).or_default().served += 1;
        self.after_release(model);
    }

    fn after_release(&mut self, model: &str) {
        let unload = self
            .runners
            .get(model)
            .is_some_and(|r| r.refs == 0 && r.ready && r.unload_when_idle);
        if unload {
            self.remove_runner(model, Removal::Unloaded);
        }
    }

    fn snapshot(&self) -> SimStats {
        let mut models = self.counters.clone();
        for stats in models.values_mut() {
            stats.state = ModelState::Unloaded;
            stats.in_flight = 0;
            stats.queued = 0;
        }
        for waiter in &self.pending {
            models.entry(waiter.model.clone()).or_default().queued += 1;
        }
        for (name, runner) in &self.runners {
            let stats = models.entry(name.clone()).or_default();
            stats.state = if runner.ready {
                ModelState::Loaded
            } else {
                ModelState::Loading
            };
            stats.in_flight = runner.running;
            stats.queued += runner.slots.len();
        }
        let mut loaded: Vec<(u64, String)> = self
            .runners
            .iter()
            .map(|(name, r)| (r.last_used, name.clone()))
            .collect();
        loaded.sort();
        SimStats {
            loaded: loaded.into_iter().map(|(_, name)| name).collect(),
            in_flight: self.runners.values().map(|r| r.running).sum(),
            max_in_flight: self.max_in_flight,
            queued: self.waiting(),
            max_queued: self.max_queued,
            served: self.served,
            rejected: self.rejected,
            loads: models.values().map(|m| m.loads).sum(),
            evictions: models.values().map(|m| m.evictions).sum(),
            models,
            events: self.events.iter().cloned().collect(),
        }
    }
}
