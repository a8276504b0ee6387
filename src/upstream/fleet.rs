//! `Fleet`: what the gateway knows of every Ollama server — which models each lists and
//! has loaded, the gateway's requests in flight per model, health — and the fair queue
//! of requests waiting for a slot (SPEC §11–12).
//!
//! One lock guards it all, so a routing decision, the slot it claims and the queue it
//! may join are one atomic step; the lock is a plain mutex held for microseconds and
//! never across an await. A claimed slot is a [`Lease`]; dropping it (the response has
//! ended, or the request was abandoned) frees the slot and hands it to the next waiter
//! chosen fairly: the tenant served least recently, first come first served within one.

use std::collections::{HashSet, VecDeque};

// Every request reads and updates these maps: foldhash, seeded per process, not SipHash.
use foldhash::{HashMap, HashMapExt};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use tokio::sync::oneshot;

use super::routing::{Eviction, LoadEconomics, Route, ServerView, route};
use crate::config::{RoutingPolicy, ServerSpec};

/// A model's canonical name: `name` ≡ `name:latest`.
pub fn canonical_model(model: &str) -> String {
    let base = model.rsplit('/').next().unwrap_or(model);
    if base.contains(':') {
        model.to_string()
    } else {
        format!("{model}:latest")
    }
}

/// Applies `change` to the value under `model`, starting from `new()` if absent. Unlike
/// `entry(model.to_string())`, the name is copied only when it is new: every request
/// passes here.
fn update<V>(
    map: &mut HashMap<String, V>,
    model: &str,
    new: impl FnOnce() -> V,
    change: impl FnOnce(&mut V),
) {
    match map.get_mut(model) {
        Some(value) => change(value),
        None => {
            let mut value = new();
            change(&mut value);
            map.insert(model.to_owned(), value);
        }
    }
}

/// A server's routing state, as `/upstream/status` shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ServerState {
    InService,
    Ejected,
    Draining,
}

impl ServerState {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::InService => "in_service",
            Self::Ejected => "ejected",
            Self::Draining => "draining",
        }
    }
}

/// Who a waiting request belongs to, for fairness: a virtual key, a team (`fallback`
/// JWTs), or the admins.
pub type Tenant = Arc<str>;

/// Settings the fleet runs by.
#[derive(Debug, Clone)]
pub struct FleetSettings {
    pub policy: RoutingPolicy,
    /// One server (`upstream.url`): nothing to choose between, so its model list is not
    /// second-guessed (Ollama answers its own 404) and it is never ejected.
    pub single: bool,
    pub eject_after_failures: u32,
    pub eject_for: Duration,
    pub queue_max_depth: usize,
}

struct Server {
    spec: ServerSpec,
    /// The only server: see [`FleetSettings::single`].
    single: bool,
    /// Canonical names from the last `/api/tags`; `None` until first read (counts as
    /// listing every model).
    listed: Option<HashSet<String>>,
    /// Loaded models, least recently used first.
    loaded: Vec<String>,
    /// When the gateway last claimed or freed a slot of each loaded model here.
    last_used: HashMap<String, tokio::time::Instant>,
    in_flight: HashMap<String, u32>,
    /// With shared slots (Redis): what the other instances hold per model, as the last
    /// count Redis returned showed it, with that count's version (older news is ignored).
    /// A hint for routing; Redis decides.
    remote: HashMap<String, Remote>,
    consecutive_failures: u32,
    /// Set while ejected; cleared by a successful probe.
    ejected_until: Option<Instant>,
    draining: bool,
    last_error_at: Option<DateTime<Utc>>,
}

/// Slots of one model on one server held by other instances (see [`Server::remote`]).
#[derive(Debug, Clone, Copy, Default)]
struct Remote {
    held: u32,
    version: u64,
}

impl Server {
    fn state(&self) -> ServerState {
        if self.ejected_until.is_some() {
            ServerState::Ejected
        } else if self.draining {
            ServerState::Draining
        } else {
            ServerState::InService
        }
    }

    fn lists(&self, model: &str) -> bool {
        self.single || self.listed.as_ref().is_none_or(|l| l.contains(model))
    }

    fn in_flight_of(&self, model: &str) -> u32 {
        self.in_flight.get(model).copied().unwrap_or(0)
    }

    /// This instance's requests for `model` plus those other instances hold.
    fn busy_of(&self, model: &str) -> u32 {
        self.in_flight_of(model)
            .saturating_add(self.remote.get(model).map_or(0, |r| r.held))
    }

    /// What a load here would evict — the least recently used idle model, as Ollama
    /// chooses — and how much the fleet still needs it.
    fn eviction(&self, need: &Need<'_>) -> Eviction {
        if self.loaded.len() < self.spec.max_loaded_models as usize {
            return Eviction::Nothing;
        }
        let Some(victim) = self.loaded.iter().find(|m| self.busy_of(m) == 0) else {
            return Eviction::Impossible;
        };
        if need.copied(victim) {
            Eviction::Copy
        } else if need.waited(victim) {
            Eviction::Waited
        } else if self
            .last_used
            .get(victim)
            .is_some_and(|t| t.elapsed() < need.recent(victim))
        {
            Eviction::LastCopy
        } else {
            Eviction::Unwanted
        }
    }

    fn view(&self, model: &str, need: &Need<'_>) -> ServerView {
        ServerView {
            in_service: self.state() == ServerState::InService,
            lists_model: self.lists(model),
            model_loaded: self.loaded.iter().any(|m| m == model),
            model_in_flight: self.busy_of(model),
            parallel: self.spec.parallel,
            loaded_count: u32::try_from(self.loaded.len()).unwrap_or(u32::MAX),
            max_loaded: self.spec.max_loaded_models,
            eviction: self.eviction(need),
        }
    }

    fn used(&mut self, model: &str) {
        let now = tokio::time::Instant::now();
        update(&mut self.last_used, model, || now, |at| *at = now);
    }

    /// Marks `model` most recently used, loading it (and evicting the least recently
    /// used idle model, as Ollama will) if it was not loaded.
    fn touch(&mut self, model: &str) -> bool {
        if let Some(i) = self.loaded.iter().position(|m| m == model) {
            let m = self.loaded.remove(i);
            self.loaded.push(m);
            return false;
        }
        if self.loaded.len() >= self.spec.max_loaded_models as usize
            && let Some(i) = self.loaded.iter().position(|m| self.busy_of(m) == 0)
        {
            let evicted = self.loaded.remove(i);
            self.last_used.remove(&evicted);
        }
        self.loaded.push(model.to_string());
        true
    }
}

/// How much the fleet needs each model, for what a load would evict. Asked only about
/// the victim of a full server, so a routing decision with room anywhere reads nothing.
struct Need<'a> {
    servers: &'a [Server],
    queue: &'a HashMap<Tenant, VecDeque<Waiter>>,
    times: &'a HashMap<String, ModelTimes>,
}

impl Need<'_> {
    /// A model used within about one load and one answer of now will likely be asked
    /// for again before a reload could finish: evicting it costs that reload.
    fn recent(&self, model: &str) -> Duration {
        let t = self.times.get(model).copied().unwrap_or(DEFAULT_TIMES);
        Duration::from_millis(t.service_ms.saturating_add(t.load_ms))
    }

    /// Requests wait in the queue for `model`.
    fn waited(&self, model: &str) -> bool {
        self.queue.values().flatten().any(|w| w.model == model)
    }

    /// `model` is loaded on more than one server in service.
    fn copied(&self, model: &str) -> bool {
        self.servers
            .iter()
            .filter(|s| s.state() == ServerState::InService)
            .filter(|s| s.loaded.iter().any(|m| m == model))
            .nth(1)
            .is_some()
    }
}

/// Running averages per model, for the rule 3 trade-off.
#[derive(Debug, Clone, Copy)]
struct ModelTimes {
    service_ms: u64,
    load_ms: u64,
}

/// Until a model has been seen, loads are assumed slow and service quick, so a warm
/// model is not copied to a second server on a guess.
const DEFAULT_TIMES: ModelTimes = ModelTimes {
    service_ms: 1_000,
    load_ms: 10_000,
};

fn ewma(old: u64, sample: u64) -> u64 {
    (old.saturating_mul(7).saturating_add(sample)) / 8
}

struct Waiter {
    id: u64,
    since: tokio::time::Instant,
    model: String,
    exclude: Vec<usize>,
    grant: oneshot::Sender<Claim>,
}

/// A slot claimed for a request: the server and whether the request starts a load.
#[derive(Debug)]
pub struct Claim {
    pub server: usize,
    pub loads: bool,
}

struct State {
    servers: Vec<Server>,
    times: HashMap<String, ModelTimes>,
    /// Waiting requests per tenant, oldest first.
    queue: HashMap<Tenant, VecDeque<Waiter>>,
    depth: usize,
    /// When each tenant was last served (a sequence number; 0 = never).
    served_at: HashMap<Tenant, u64>,
    served_seq: u64,
    next_waiter: u64,
    round_robin: usize,
}

/// Why no slot was claimed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    NotFound,
    /// Listed only by servers out of service, or every server already tried.
    Unavailable,
    /// `queue_max_depth` requests already wait.
    QueueFull,
}

/// Either a slot now, or a place in the queue to wait on.
pub enum Admission {
    Claimed(Claim),
    Queued(oneshot::Receiver<Claim>, u64),
}

pub struct Fleet {
    settings: FleetSettings,
    state: Mutex<State>,
    /// Bumped on every change of what `/upstream/status` shows, so a waiter (a test, the
    /// console) needs no polling.
    changes: tokio::sync::watch::Sender<u64>,
}

/// The status of one server, as `/upstream/status` shows it.
#[derive(Debug, Clone, serde::Serialize, utoipa::ToSchema)]
pub struct ServerStatus {
    pub name: String,
    pub url: String,
    pub state: ServerState,
    /// What its last `/api/tags` listed (null until read).
    pub models: Option<Vec<String>>,
    /// Loaded models, least recently used first.
    pub loaded: Vec<String>,
    /// The gateway's requests in flight, per model.
    pub in_flight: std::collections::BTreeMap<String, u32>,
    pub consecutive_failures: u32,
    pub last_error_at: Option<DateTime<Utc>>,
}

impl Fleet {
    pub fn new(servers: Vec<ServerSpec>, settings: FleetSettings) -> Self {
        let servers = servers
            .into_iter()
            .map(|spec| Server {
                spec,
                single: settings.single,
                listed: None,
                loaded: Vec::new(),
                last_used: HashMap::new(),
                in_flight: HashMap::new(),
                remote: HashMap::new(),
                consecutive_failures: 0,
                ejected_until: None,
                draining: false,
                last_error_at: None,
            })
            .collect();
        Self {
            settings,
            state: Mutex::new(State {
                servers,
                times: HashMap::new(),
                queue: HashMap::new(),
                depth: 0,
                served_at: HashMap::new(),
                served_seq: 0,
                next_waiter: 0,
                round_robin: 0,
            }),
            changes: tokio::sync::watch::Sender::new(0),
        }
    }

    /// Changes of the servers' state: discovery reads, ejections, readmissions, drains,
    /// slots claimed and freed.
    pub fn changes(&self) -> tokio::sync::watch::Receiver<u64> {
        self.changes.subscribe()
    }

    fn changed(&self) {
        self.changes.send_modify(|n| *n = n.wrapping_add(1));
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic elsewhere must not take routing down with it.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub fn index_of(&self, name: &str) -> Option<usize> {
        self.lock().servers.iter().position(|s| s.spec.name == name)
    }

    /// Servers that take requests now, in configuration order.
    pub fn in_service(&self) -> Vec<usize> {
        let state = self.lock();
        (0..state.servers.len())
            .filter(|&i| state.servers[i].state() == ServerState::InService)
            .collect()
    }

    /// Whether any server (in service or not) lists `model`.
    pub fn lists_anywhere(&self, model: &str) -> bool {
        self.lock().servers.iter().any(|s| s.lists(model))
    }

    /// A server for a request about `model` that holds no slot (`/api/show`): one in
    /// service that lists it and has it loaded, else the first that lists it.
    pub fn pick_listing(&self, model: &str, exclude: &[usize]) -> Result<usize, Refusal> {
        let state = self.lock();
        if !state.servers.iter().any(|s| s.lists(model)) {
            return Err(Refusal::NotFound);
        }
        let usable = |i: &usize| {
            let s = &state.servers[*i];
            s.state() == ServerState::InService && s.lists(model) && !exclude.contains(i)
        };
        let candidates: Vec<usize> = (0..state.servers.len()).filter(usable).collect();
        candidates
            .iter()
            .copied()
            .find(|&i| state.servers[i].loaded.iter().any(|m| m == model))
            .or_else(|| candidates.first().copied())
            .ok_or(Refusal::Unavailable)
    }

    /// Claims a slot for `model` for `tenant` now, or queues the request (SPEC §12).
    /// `exclude` are servers already tried for this request.
    pub fn admit(
        &self,
        tenant: &Tenant,
        model: &str,
        exclude: &[usize],
    ) -> Result<Admission, Refusal> {
        let mut state = self.lock();
        match self.decide(&mut state, model, exclude) {
            Decision::Claim(claim) => {
                state.mark_served(tenant);
                drop(state);
                self.changed();
                Ok(Admission::Claimed(claim))
            }
            Decision::Refuse(r) => Err(r),
            Decision::Wait => {
                if state.depth >= self.settings.queue_max_depth {
                    return Err(Refusal::QueueFull);
                }
                let (grant, rx) = oneshot::channel();
                state.next_waiter += 1;
                let id = state.next_waiter;
                state
                    .queue
                    .entry(tenant.clone())
                    .or_default()
                    .push_back(Waiter {
                        id,
                        since: tokio::time::Instant::now(),
                        model: model.to_string(),
                        exclude: exclude.to_vec(),
                        grant,
                    });
                state.depth += 1;
                drop(state);
                self.changed();
                Ok(Admission::Queued(rx, id))
            }
        }
    }

    /// Removes a waiter that gave up (timeout, client gone). Harmless if it was granted.
    pub fn leave_queue(&self, tenant: &Tenant, id: u64) {
        let mut state = self.lock();
        if let Some(waiters) = state.queue.get_mut(tenant)
            && let Some(i) = waiters.iter().position(|w| w.id == id)
        {
            waiters.remove(i);
            if waiters.is_empty() {
                state.queue.remove(tenant);
            }
            state.depth -= 1;
            drop(state);
            self.changed();
        }
    }

    /// A claim granted to a waiter that left before taking it.
    pub fn return_claim(&self, claim: Claim, model: &str) {
        let mut state = self.lock();
        state.unclaim(claim.server, model);
        self.dispatch(&mut state);
    }

    /// Requests waiting in this instance's queue.
    pub fn queued(&self) -> usize {
        self.lock().depth
    }

    fn decide(&self, state: &mut State, model: &str, exclude: &[usize]) -> Decision {
        if self.settings.policy == RoutingPolicy::RoundRobin {
            return state.round_robin(model, exclude);
        }
        let need = Need {
            servers: &state.servers,
            queue: &state.queue,
            times: &state.times,
        };
        let (mut waiting, mut oldest) = (0u32, None::<tokio::time::Instant>);
        for w in state.queue.values().flatten().filter(|w| w.model == model) {
            waiting = waiting.saturating_add(1);
            oldest = Some(oldest.map_or(w.since, |o| o.min(w.since)));
        }
        let views: Vec<ServerView> = state
            .servers
            .iter()
            .enumerate()
            .map(|(i, s)| {
                let mut v = s.view(model, &need);
                if exclude.contains(&i) {
                    v.in_service = false;
                }
                v
            })
            .collect();
        let times = state.times.get(model).copied().unwrap_or(DEFAULT_TIMES);
        // Long enough for the models it would displace to have had several turns.
        let starve_after = Duration::from_millis(times.load_ms.saturating_mul(2));
        let economics = LoadEconomics {
            waiting,
            service_ms: times.service_ms,
            load_ms: times.load_ms,
            starving: oldest.is_some_and(|t| t.elapsed() >= starve_after),
        };
        match route(&views, economics) {
            Route::Warm(i) => Decision::Claim(state.claim(i, model)),
            Route::Load(i) => Decision::Claim(state.claim(i, model)),
            Route::Wait => Decision::Wait,
            Route::NotFound => Decision::Refuse(Refusal::NotFound),
            Route::Unavailable => {
                // Every listing server already tried for this request: not a queueing
                // matter any more.
                Decision::Refuse(Refusal::Unavailable)
            }
        }
    }

    /// Frees a slot, learns the request's timings, and hands freed capacity on.
    pub fn release(&self, server: usize, model: &str, held: Duration, loaded_in: Option<Duration>) {
        self.free(server, model, held, loaded_in, true);
    }

    /// [`Fleet::release`] of a slot also leased in Redis: the freed capacity is handed
    /// on once Redis has freed it too ([`Fleet::observe_shared`]), so a waiter here does
    /// not race the release to Redis.
    pub fn release_shared(
        &self,
        server: usize,
        model: &str,
        held: Duration,
        loaded_in: Option<Duration>,
    ) {
        self.free(server, model, held, loaded_in, false);
    }

    /// Hands free capacity to waiting requests (after a shared release that Redis could
    /// not confirm).
    pub fn redispatch(&self) {
        let mut state = self.lock();
        self.dispatch(&mut state);
    }

    fn free(
        &self,
        server: usize,
        model: &str,
        held: Duration,
        loaded_in: Option<Duration>,
        hand_on: bool,
    ) {
        let mut state = self.lock();
        if let Some(s) = state.servers.get_mut(server)
            && let Some(n) = s.in_flight.get_mut(model)
        {
            *n = n.saturating_sub(1);
            if *n == 0 {
                s.in_flight.remove(model);
            }
            if s.loaded.iter().any(|m| m == model) {
                s.used(model);
            }
        }
        let held_ms = u64::try_from(held.as_millis()).unwrap_or(u64::MAX);
        update(
            &mut state.times,
            model,
            || DEFAULT_TIMES,
            |times| match loaded_in {
                Some(load) => {
                    let load_ms = u64::try_from(load.as_millis()).unwrap_or(u64::MAX);
                    times.load_ms = if times.load_ms == DEFAULT_TIMES.load_ms {
                        load_ms
                    } else {
                        ewma(times.load_ms, load_ms)
                    };
                    times.service_ms = ewma(times.service_ms, held_ms.saturating_sub(load_ms));
                }
                None => times.service_ms = ewma(times.service_ms, held_ms),
            },
        );
        if hand_on {
            self.dispatch(&mut state);
        }
        drop(state);
        self.changed();
    }

    /// Gives free capacity to waiting requests, fairly, until none can be served.
    fn dispatch(&self, state: &mut State) {
        loop {
            let mut tenants: Vec<(u64, Tenant)> = state
                .queue
                .keys()
                .map(|t| (state.served_at.get(t).copied().unwrap_or(0), t.clone()))
                .collect();
            tenants.sort();
            let mut granted = false;
            'tenants: for (_, tenant) in tenants {
                let len = state.queue.get(&tenant).map_or(0, VecDeque::len);
                for i in 0..len {
                    let Some(w) = state.queue.get(&tenant).and_then(|q| q.get(i)) else {
                        break;
                    };
                    let (model, exclude) = (w.model.clone(), w.exclude.clone());
                    let claim = match self.decide(state, &model, &exclude) {
                        Decision::Claim(c) => c,
                        // Nothing has changed for this waiter: keep it.
                        Decision::Wait | Decision::Refuse(_) => continue,
                    };
                    let Some(waiter) = state.queue.get_mut(&tenant).and_then(|q| q.remove(i))
                    else {
                        break;
                    };
                    if state.queue.get(&tenant).is_some_and(VecDeque::is_empty) {
                        state.queue.remove(&tenant);
                    }
                    state.depth -= 1;
                    let server = claim.server;
                    if waiter.grant.send(claim).is_err() {
                        // The waiter left between its last poll and now.
                        state.unclaim(server, &model);
                    } else {
                        state.mark_served(&tenant);
                    }
                    granted = true;
                    break 'tenants;
                }
            }
            if !granted {
                return;
            }
        }
    }

    /// A connection failure or 5xx: counts towards ejection.
    pub fn record_failure(&self, server: usize) {
        let mut state = self.lock();
        let threshold = self.settings.eject_after_failures;
        let eject_for = self.settings.eject_for;
        if let Some(s) = state.servers.get_mut(server) {
            s.consecutive_failures += 1;
            s.last_error_at = Some(Utc::now());
            if s.consecutive_failures >= threshold && s.ejected_until.is_none() && !s.single {
                tracing::warn!(server = %s.spec.name, failures = s.consecutive_failures, "server ejected");
                s.ejected_until = Some(Instant::now() + eject_for);
            }
        }
        drop(state);
        self.changed();
    }

    /// A delivered response: the failure streak ends.
    pub fn record_success(&self, server: usize) {
        if let Some(s) = self.lock().servers.get_mut(server) {
            s.consecutive_failures = 0;
        }
    }

    /// Servers whose ejection has run its course, due for a probe.
    pub fn due_for_probe(&self) -> Vec<usize> {
        let now = Instant::now();
        let state = self.lock();
        (0..state.servers.len())
            .filter(|&i| state.servers[i].ejected_until.is_some_and(|t| t <= now))
            .collect()
    }

    /// A probe answered: the server is back in service.
    pub fn readmit(&self, server: usize) {
        let mut state = self.lock();
        if let Some(s) = state.servers.get_mut(server) {
            tracing::info!(server = %s.spec.name, "server readmitted");
            s.ejected_until = None;
            s.consecutive_failures = 0;
        }
        self.dispatch(&mut state);
        drop(state);
        self.changed();
    }

    /// Stops or resumes routing new requests to a server. Returns false if unknown.
    /// Whether an operator has drained the server (whatever its health says).
    pub fn is_draining(&self, server: usize) -> bool {
        self.lock().servers.get(server).is_some_and(|s| s.draining)
    }

    pub fn set_draining(&self, server: usize, draining: bool) -> bool {
        let mut state = self.lock();
        let Some(s) = state.servers.get_mut(server) else {
            return false;
        };
        s.draining = draining;
        self.dispatch(&mut state);
        drop(state);
        self.changed();
        true
    }

    /// What discovery read from a server's `/api/tags` and `/api/ps`.
    pub fn observe(&self, server: usize, listed: Option<Vec<String>>, loaded: Option<Vec<String>>) {
        let mut state = self.lock();
        let Some(s) = state.servers.get_mut(server) else {
            return;
        };
        if let Some(listed) = listed {
            s.listed = Some(listed.iter().map(|m| canonical_model(m)).collect());
        }
        if let Some(loaded) = loaded {
            let loaded: Vec<String> = loaded.iter().map(|m| canonical_model(m)).collect();
            // Keep the recency order tollgate knows; models it has requests on stay
            // (a load it started may not show yet).
            let mut next: Vec<String> = s
                .loaded
                .iter()
                .filter(|m| loaded.contains(m) || s.in_flight.contains_key(*m))
                .cloned()
                .collect();
            for m in loaded {
                if !next.contains(&m) {
                    next.insert(0, m);
                }
            }
            s.loaded = next;
            let Server {
                loaded, last_used, ..
            } = s;
            last_used.retain(|m, _| loaded.contains(m));
        }
        self.dispatch(&mut state);
        drop(state);
        self.changed();
    }

    /// `parallel` of a server (0 if unknown).
    pub fn parallel(&self, server: usize) -> u32 {
        self.lock()
            .servers
            .get(server)
            .map_or(0, |s| s.spec.parallel)
    }

    /// What Redis says all instances together hold of `model` on `server` (`count`, at
    /// `version`): what this instance does not hold itself is the other instances'
    /// share. News older than what is known is ignored. Then the queue is re-dispatched:
    /// the news may be a slot freed (here or elsewhere).
    pub fn observe_shared(&self, server: usize, model: &str, count: u32, version: u64) {
        let mut state = self.lock();
        let Some(s) = state.servers.get_mut(server) else {
            return;
        };
        let known = s.remote.get(model).copied().unwrap_or_default();
        if version < known.version {
            return;
        }
        let held = count.saturating_sub(s.in_flight_of(model));
        // Kept at zero too, so an older count arriving late is still recognised.
        let now = Remote { held, version };
        match s.remote.get_mut(model) {
            Some(remote) => *remote = now,
            None => {
                s.remote.insert(model.to_string(), now);
            }
        }
        // A slot freed anywhere (here included) may serve a waiter here.
        self.dispatch(&mut state);
        drop(state);
        if held != known.held {
            self.changed();
        }
    }

    /// A claim Redis refused (other instances hold every slot): it is undone here and
    /// the server counts as full for `model` until a release says otherwise.
    pub fn refuse_shared(&self, claim: Claim, model: &str, count: u32, version: u64) {
        self.lock().unclaim(claim.server, model);
        self.observe_shared(claim.server, model, count, version);
    }

    /// Pairs (server, its name, model) where other instances are thought to hold slots:
    /// what the re-read loop checks against Redis.
    pub fn shared_hints(&self) -> Vec<(usize, String, String)> {
        let state = self.lock();
        state
            .servers
            .iter()
            .enumerate()
            .flat_map(|(i, s)| {
                s.remote
                    .iter()
                    .filter(|(_, r)| r.held > 0)
                    .map(move |(m, _)| (i, s.spec.name.clone(), m.clone()))
            })
            .collect()
    }

    pub fn status(&self) -> Vec<ServerStatus> {
        let state = self.lock();
        state
            .servers
            .iter()
            .map(|s| ServerStatus {
                name: s.spec.name.clone(),
                url: s.spec.url.clone(),
                state: s.state(),
                models: s.listed.as_ref().map(|l| {
                    let mut v: Vec<String> = l.iter().cloned().collect();
                    v.sort();
                    v
                }),
                loaded: s.loaded.clone(),
                in_flight: s.in_flight.iter().map(|(k, v)| (k.clone(), *v)).collect(),
                consecutive_failures: s.consecutive_failures,
                last_error_at: s.last_error_at,
            })
            .collect()
    }
}

enum Decision {
    Claim(Claim),
    Wait,
    Refuse(Refusal),
}

impl State {
    fn claim(&mut self, server: usize, model: &str) -> Claim {
        let s = &mut self.servers[server];
        update(&mut s.in_flight, model, || 0, |n| *n += 1);
        let loads = s.touch(model);
        s.used(model);
        Claim { server, loads }
    }

    fn unclaim(&mut self, server: usize, model: &str) {
        if let Some(n) = self.servers[server].in_flight.get_mut(model) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                self.servers[server].in_flight.remove(model);
            }
        }
    }

    fn mark_served(&mut self, tenant: &Tenant) {
        self.served_seq += 1;
        self.served_at.insert(tenant.clone(), self.served_seq);
        // Forget tenants long idle so the map stays bounded by the active ones.
        if self.served_at.len() > 10_000 {
            let cutoff = self.served_seq.saturating_sub(10_000);
            self.served_at.retain(|_, seq| *seq > cutoff);
        }
    }

    /// Round robin (the benchmark's baseline): the next listing server in service,
    /// whatever is loaded or busy; Ollama queues the rest.
    fn round_robin(&mut self, model: &str, exclude: &[usize]) -> Decision {
        let n = self.servers.len();
        let listed = self.servers.iter().any(|s| s.lists(model));
        if !listed {
            return Decision::Refuse(Refusal::NotFound);
        }
        for step in 0..n {
            let i = (self.round_robin + step) % n;
            let s = &self.servers[i];
            if s.state() == ServerState::InService && s.lists(model) && !exclude.contains(&i) {
                self.round_robin = (i + 1) % n;
                return Decision::Claim(self.claim(i, model));
            }
        }
        Decision::Refuse(Refusal::Unavailable)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fleet(servers: &[(&str, u32, u32)]) -> Fleet {
        Fleet::new(
            servers
                .iter()
                .map(|(name, parallel, max_loaded)| ServerSpec {
                    name: (*name).into(),
                    url: format!("http://{name}"),
                    parallel: *parallel,
                    max_loaded_models: *max_loaded,
                })
                .collect(),
            FleetSettings {
                policy: RoutingPolicy::ModelAware,
                single: false,
                eject_after_failures: 2,
                eject_for: Duration::from_secs(60),
                queue_max_depth: 100,
            },
        )
    }

    fn tenant(name: &str) -> Tenant {
        Arc::from(name)
    }

    fn claimed(a: Result<Admission, Refusal>) -> Claim {
        match a {
            Ok(Admission::Claimed(c)) => c,
            Ok(Admission::Queued(..)) => panic!("queued"),
            Err(e) => panic!("refused: {e:?}"),
        }
    }

    fn queued(a: Result<Admission, Refusal>) -> (oneshot::Receiver<Claim>, u64) {
        match a {
            Ok(Admission::Queued(rx, id)) => (rx, id),
            Ok(Admission::Claimed(c)) => panic!("claimed {c:?}"),
            Err(e) => panic!("refused: {e:?}"),
        }
    }

    #[test]
    fn names_are_canonical() {
        assert_eq!(canonical_model("llama3.1"), "llama3.1:latest");
        assert_eq!(canonical_model("llama3.1:8b"), "llama3.1:8b");
        assert_eq!(canonical_model("hf.co/org/model"), "hf.co/org/model:latest");
        assert_eq!(
            canonical_model("localhost:5000/m:q4"),
            "localhost:5000/m:q4"
        );
    }

    #[test]
    fn a_model_listed_on_one_server_goes_there() {
        let f = fleet(&[("a", 2, 2), ("b", 2, 2)]);
        f.observe(0, Some(vec!["m1".into()]), Some(vec![]));
        f.observe(1, Some(vec!["m2".into()]), Some(vec![]));
        let c = claimed(f.admit(&tenant("t"), "m2:latest", &[]));
        assert_eq!((c.server, c.loads), (1, true));
        assert!(matches!(
            f.admit(&tenant("t"), "nope:latest", &[]),
            Err(Refusal::NotFound)
        ));
    }

    #[test]
    fn after_one_load_the_model_is_warm_there() {
        let f = fleet(&[("a", 2, 2), ("b", 2, 2)]);
        let first = claimed(f.admit(&tenant("t"), "m:latest", &[]));
        let second = claimed(f.admit(&tenant("t"), "m:latest", &[]));
        assert!(first.loads && !second.loads);
        assert_eq!(first.server, second.server);
    }

    #[test]
    fn a_freed_slot_goes_to_the_tenant_served_least_recently() {
        let f = fleet(&[("a", 1, 1)]);
        let heavy = tenant("heavy");
        let light = tenant("light");
        let first = claimed(f.admit(&heavy, "m:latest", &[]));
        let mut heavy_waiting: Vec<_> = (0..20)
            .map(|_| queued(f.admit(&heavy, "m:latest", &[])))
            .collect();
        let (mut light_rx, _) = queued(f.admit(&light, "m:latest", &[]));
        assert_eq!(f.queued(), 21);
        f.release(first.server, "m:latest", Duration::from_millis(10), None);
        let got = light_rx
            .try_recv()
            .expect("the light tenant is served next");
        assert_eq!(got.server, 0);
        assert!(
            heavy_waiting
                .iter_mut()
                .all(|(rx, _)| rx.try_recv().is_err())
        );
        // Then the heavy tenant's oldest.
        f.release(0, "m:latest", Duration::from_millis(10), None);
        assert!(heavy_waiting[0].0.try_recv().is_ok());
        assert!(heavy_waiting[1].0.try_recv().is_err());
    }

    #[test]
    fn a_load_never_evicts_a_model_that_requests_wait_for() {
        // One server, one model at a time, one slot: A is busy and both tenants wait —
        // `x` (never served) for C, `y` for A.
        let f = fleet(&[("a", 1, 1)]);
        let (x, y) = (tenant("x"), tenant("y"));
        let first = claimed(f.admit(&y, "a:latest", &[]));
        let (mut for_a, _) = queued(f.admit(&y, "a:latest", &[]));
        let (mut for_c, _) = queued(f.admit(&x, "c:latest", &[]));
        // A frees. `x` is served least recently, but loading C would evict A, which a
        // request waits for: A's waiter gets the warm slot, C keeps waiting.
        f.release(first.server, "a:latest", Duration::from_millis(10), None);
        let got = for_a.try_recv().expect("the warm slot went to A's waiter");
        assert!(!got.loads);
        assert!(for_c.try_recv().is_err(), "C did not evict A");
        // Once nobody waits for A and it is idle, C may load (evicting it).
        f.release(0, "a:latest", Duration::from_millis(10), None);
        let c = for_c.try_recv().expect("C loads now");
        assert!(c.loads);
        assert_eq!(f.status()[0].loaded, vec!["c:latest".to_string()]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_warm_model_is_not_copied_over_the_last_copy_of_a_model_in_use() {
        // x is busy on a, y idle on b; x's queue is long enough that a copy would pay.
        let f = fleet(&[("a", 1, 1), ("b", 1, 1)]);
        let t = tenant("t");
        let _x = claimed(f.admit(&t, "x:latest", &[1]));
        let y = claimed(f.admit(&t, "y:latest", &[0]));
        f.release(y.server, "y:latest", Duration::from_millis(10), None);
        let _waiting: Vec<_> = (0..20)
            .map(|_| queued(f.admit(&t, "x:latest", &[])))
            .collect();
        assert_eq!(f.status()[1].loaded, vec!["y:latest".to_string()]);
        // Once y has gone unused for longer than a load and an answer, it may go.
        tokio::time::advance(Duration::from_secs(12)).await;
        let copy = claimed(f.admit(&tenant("u"), "x:latest", &[]));
        assert_eq!((copy.server, copy.loads), (1, true));
    }

    #[tokio::test(start_paused = true)]
    async fn a_model_loaded_nowhere_takes_a_waited_for_last_copy_only_once_it_starves() {
        let f = fleet(&[("a", 1, 1)]);
        let (x, y) = (tenant("x"), tenant("y"));
        let first = claimed(f.admit(&y, "a:latest", &[]));
        let _for_a: Vec<_> = (0..3)
            .map(|_| queued(f.admit(&y, "a:latest", &[])))
            .collect();
        let (mut for_c, _) = queued(f.admit(&x, "c:latest", &[]));
        f.release(first.server, "a:latest", Duration::from_millis(10), None);
        assert!(
            for_c.try_recv().is_err(),
            "C waits while A's waiters are served"
        );
        // C has waited two loads' time (the default estimate is 10 s): it may evict A.
        tokio::time::advance(Duration::from_secs(21)).await;
        f.release(0, "a:latest", Duration::from_millis(10), None);
        let c = for_c.try_recv().expect("C loads once it starves");
        assert!(c.loads);
    }

    #[test]
    fn a_waiter_that_left_is_gone_from_the_queue_and_its_grant_is_returned() {
        let f = fleet(&[("a", 1, 1)]);
        let t = tenant("t");
        let first = claimed(f.admit(&t, "m:latest", &[]));
        let (rx, id) = queued(f.admit(&t, "m:latest", &[]));
        f.leave_queue(&t, id);
        drop(rx);
        assert_eq!(f.queued(), 0);
        let (rx2, _) = queued(f.admit(&t, "m:latest", &[]));
        drop(rx2); // left without telling: the grant is refused and the slot kept free
        f.release(first.server, "m:latest", Duration::ZERO, None);
        assert_eq!(f.status()[0].in_flight.get("m:latest"), None);
    }

    #[test]
    fn the_queue_is_bounded() {
        let mut f = fleet(&[("a", 1, 1)]);
        f.settings.queue_max_depth = 1;
        let t = tenant("t");
        let _c = claimed(f.admit(&t, "m:latest", &[]));
        let _q = queued(f.admit(&t, "m:latest", &[]));
        assert!(matches!(
            f.admit(&t, "m:latest", &[]),
            Err(Refusal::QueueFull)
        ));
    }

    #[test]
    fn failures_eject_and_a_probe_readmits() {
        let f = fleet(&[("a", 2, 2), ("b", 2, 2)]);
        f.record_failure(0);
        assert_eq!(f.status()[0].state, ServerState::InService);
        f.record_failure(0);
        assert_eq!(f.status()[0].state, ServerState::Ejected);
        let c = claimed(f.admit(&tenant("t"), "m:latest", &[]));
        assert_eq!(c.server, 1);
        f.readmit(0);
        assert_eq!(f.status()[0].state, ServerState::InService);
        assert_eq!(f.status()[0].consecutive_failures, 0);
    }

    #[test]
    fn a_drained_server_takes_nothing_new() {
        let f = fleet(&[("a", 2, 2), ("b", 2, 2)]);
        assert!(f.set_draining(0, true));
        for _ in 0..2 {
            assert_eq!(claimed(f.admit(&tenant("t"), "m:latest", &[])).server, 1);
        }
        assert_eq!(f.status()[0].state, ServerState::Draining);
    }

    #[test]
    fn excluded_servers_are_skipped_and_none_left_is_unavailable() {
        let f = fleet(&[("a", 2, 2), ("b", 2, 2)]);
        assert_eq!(claimed(f.admit(&tenant("t"), "m:latest", &[0])).server, 1);
        assert!(matches!(
            f.admit(&tenant("t"), "m:latest", &[0, 1]),
            Err(Refusal::Unavailable)
        ));
    }
}
