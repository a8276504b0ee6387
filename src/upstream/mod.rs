//! `Upstream`: the Ollama servers tollgate forwards to (SPEC §11), the pooled client
//! that talks to them, and where each request goes.
//!
//! - [`fleet`]: what is known of every server (models listed and loaded, requests in
//!   flight, health) and the fair queue of requests waiting for a slot.
//! - [`routing`]: the rules that pick a server for a model, as a pure function.
//! - [`discovery`]: the background reads of `/api/tags` and `/api/ps`, and the probes
//!   that readmit an ejected server.
//! - [`lists`]: `/api/tags`, `/api/ps` and `/v1/models` merged across servers.
//! - [`client`]: the HTTP client of the hop itself (pooled hyper-util, its timeouts).
//!
//! The proxy pipeline asks for a [`Lease`] (a slot on a server for a model), sends an
//! [`UpstreamRequest`] to the leased server and holds the lease until the response has
//! ended. It never sees a server's URL.

pub mod client;
pub mod discovery;
pub mod fleet;
pub mod lists;
pub mod routing;
pub mod slots;

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::http::{HeaderMap, Method};
use bytes::Bytes;
use http::uri::PathAndQuery;

pub use client::{BodyError, UpstreamBody, UpstreamResponse};
pub use fleet::{Fleet, ServerState, ServerStatus, Tenant, canonical_model};

use crate::config::{Config, FailureMode};
use client::{HopClient, HopError, HopSettings, ServerBase};
use fleet::{Admission, Claim, FleetSettings, Refusal};
use slots::{Acquired, SharedSlots};

/// What the pipeline sends: everything checked, the body rewritten where policy says.
#[derive(Debug, Clone)]
pub struct UpstreamRequest {
    pub method: Method,
    /// The caller's path and query, forwarded as they are.
    pub path_and_query: PathAndQuery,
    pub headers: HeaderMap,
    pub body: Bytes,
}

/// Why nothing usable came back from a server.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    /// `server.request_timeout_s` passed.
    #[error("upstream timeout")]
    Timeout,
    /// Not connected (refused, `upstream.connect_timeout_s`, TLS handshake) or closed
    /// or reset before any response byte: safe to try another server.
    #[error("upstream not reached: {}", Causes(.0))]
    Undelivered(#[source] hyper_util::client::legacy::Error),
    /// Anything else (a malformed response head).
    #[error("upstream request failed: {}", Causes(&**.0))]
    Failed(#[source] Box<dyn std::error::Error + Send + Sync>),
}

/// An error and its causes on one line, for the log (the client's own message is only
/// its kind, "client error (Connect)").
struct Causes<'a>(&'a (dyn std::error::Error + 'static));

impl std::fmt::Display for Causes<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)?;
        let mut source = self.0.source();
        while let Some(e) = source {
            write!(f, ": {e}")?;
            source = e.source();
        }
        Ok(())
    }
}

/// Bodies read whole on the hop (errors, lists, version) are small; anything larger is
/// not one of them.
pub const MAX_DOCUMENT_BYTES: usize = 16 * 1024 * 1024;

/// Why no server could take a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RouteError {
    /// No server lists the model.
    ModelNotFound,
    /// The servers that list it are out of service, or were all tried.
    Unavailable,
    /// Waited `queue_max_wait_s`, or `queue_max_depth` were already waiting.
    Busy,
    /// Shared slots are configured but Redis cannot answer (`failure_mode: closed`).
    SlotsUnavailable,
}

/// A slot on one server for one model, held while the request runs there; dropping it
/// frees the slot (and wakes the next waiter).
pub struct Lease {
    fleet: Arc<Fleet>,
    server: usize,
    name: Arc<str>,
    model: String,
    started: Instant,
    loads: bool,
    /// How long the load took: Ollama's `load_duration` when the response reported it,
    /// else the wait for the response head.
    load_took: Option<Duration>,
    head_after: Option<Duration>,
    /// The slot's lease in Redis, when slots are shared and Redis answered.
    shared: Option<(SharedSlots, String)>,
}

impl std::fmt::Debug for Lease {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lease")
            .field("server", &self.name)
            .field("model", &self.model)
            .finish()
    }
}

impl Lease {
    pub fn server(&self) -> usize {
        self.server
    }

    pub fn server_name(&self) -> &Arc<str> {
        &self.name
    }

    /// Whether this request starts a load of its model on the server.
    pub fn loads(&self) -> bool {
        self.loads
    }

    /// Ollama's own `load_duration` for this request (final frame).
    pub fn report_load(&mut self, took: Duration) {
        if self.loads {
            self.load_took = Some(took);
        }
    }

    /// The response head arrived: until then a loading request was waiting for the load.
    fn head_arrived(&mut self) {
        self.head_after
            .get_or_insert_with(|| self.started.elapsed());
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        let load = if self.loads {
            self.load_took.or(self.head_after)
        } else {
            None
        };
        let held = self.started.elapsed();
        match self.shared.take() {
            Some((slots, id)) => {
                self.fleet
                    .release_shared(self.server, &self.model, held, load);
                slots.release(self.server, &self.name, &self.model, id);
            }
            None => self.fleet.release(self.server, &self.model, held, load),
        }
    }
}

/// A slot claimed here while Redis is asked for its shared lease; dropped unfinished
/// (the caller went away, Redis refused or failed) it gives the slot back here and
/// frees whatever Redis may have recorded.
struct Pending<'a> {
    upstream: &'a Upstream,
    model: &'a str,
    claim: Option<Claim>,
    lease_id: Option<String>,
}

impl Drop for Pending<'_> {
    fn drop(&mut self) {
        let Some(claim) = self.claim.take() else {
            return;
        };
        if let (Some((slots, _)), Some(id)) = (&self.upstream.shared, self.lease_id.take())
            && let Some(name) = self.upstream.names.get(claim.server)
        {
            slots.release(claim.server, name, self.model, id);
        }
        self.upstream.fleet.return_claim(claim, self.model);
    }
}

/// The servers, the client and the queue bounds.
pub struct Upstream {
    client: HopClient,
    fleet: Arc<Fleet>,
    names: Vec<Arc<str>>,
    bases: Vec<ServerBase>,
    /// Per server, registered once: a counter looked up by its labels on every request
    /// would allocate the label each time.
    requests: Vec<metrics::Counter>,
    failures: Vec<metrics::Counter>,
    queue_max_wait: Duration,
    discovery_every: Duration,
    /// Slots shared with the other instances through Redis, and what to do when Redis
    /// cannot answer; `None`: this instance counts alone.
    shared: Option<(SharedSlots, FailureMode)>,
}

impl Upstream {
    pub fn new(config: &Config) -> Result<Self, client::BuildError> {
        let u = &config.upstream;
        let specs = u.server_specs();
        let names = specs.iter().map(|s| Arc::from(s.name.as_str())).collect();
        let bases = specs
            .iter()
            .map(|s| ServerBase::parse(&s.url))
            .collect::<Result<Vec<_>, _>>()?;
        let client = HopClient::new(
            HopSettings {
                connect_timeout: Duration::from_secs(u.connect_timeout_s),
                request_timeout: Duration::from_secs(config.server.request_timeout_s),
                pool_idle_timeout: Duration::from_secs(90),
                pool_max_idle_per_host: 1024,
            },
            &bases,
        )?;
        // The recorder must exist before handles are taken from it.
        drop(crate::telemetry::metrics_handle());
        let per_server = |metric: &'static str| -> Vec<metrics::Counter> {
            specs
                .iter()
                .map(|s| metrics::counter!(metric, "server" => s.name.clone()))
                .collect()
        };
        let requests = per_server(crate::telemetry::UPSTREAM_REQUESTS);
        let failures = per_server(crate::telemetry::UPSTREAM_FAILURES);
        let fleet = Arc::new(Fleet::new(
            specs,
            FleetSettings {
                policy: u.routing,
                single: u.servers.is_empty(),
                eject_after_failures: u.eject_after_failures,
                eject_for: Duration::from_secs(u.eject_s),
                queue_max_depth: usize::try_from(u.queue_max_depth).unwrap_or(usize::MAX),
            },
        ));
        Ok(Self {
            client,
            fleet,
            names,
            bases,
            requests,
            failures,
            queue_max_wait: Duration::from_secs(u.queue_max_wait_s),
            discovery_every: Duration::from_secs(u.discovery_interval_s),
            shared: None,
        })
    }

    /// Shares the servers' slots with every instance through Redis (SPEC §12).
    pub fn share_slots(&mut self, slots: SharedSlots, failure_mode: FailureMode) {
        self.shared = Some((slots, failure_mode));
    }

    /// The shared slots, when configured.
    pub fn shared_slots(&self) -> Option<&SharedSlots> {
        self.shared.as_ref().map(|(s, _)| s)
    }

    pub fn fleet(&self) -> &Arc<Fleet> {
        &self.fleet
    }

    /// More than one server: lists are merged and admin routes need a server named.
    pub fn is_fleet(&self) -> bool {
        self.names.len() > 1
    }

    /// How many servers there are (the most attempts one request can make).
    pub fn server_count(&self) -> usize {
        self.names.len()
    }

    pub fn server_name(&self, server: usize) -> Option<&Arc<str>> {
        self.names.get(server)
    }

    /// The server called `name` (for admin routes' `X-Tollgate-Server`).
    pub fn server_named(&self, name: &str) -> Option<usize> {
        self.names.iter().position(|n| &**n == name)
    }

    /// A server for a request about `model` that holds no slot (`/api/show`,
    /// `/v1/models/{model}`), not in `exclude`.
    pub fn listing(&self, model: &str, exclude: &[usize]) -> Result<usize, RouteError> {
        self.fleet
            .pick_listing(model, exclude)
            .map_err(|r| match r {
                Refusal::NotFound => RouteError::ModelNotFound,
                Refusal::Unavailable | Refusal::QueueFull => RouteError::Unavailable,
            })
    }

    /// A server in service, for requests about no model (`/api/version`): the first,
    /// or the only one.
    pub fn any_in_service(&self) -> Option<usize> {
        self.fleet.in_service().first().copied()
    }

    /// A slot for `model` (canonical) on a server not in `exclude`: at once, or after
    /// waiting in the fair queue for up to `queue_max_wait_s`. With shared slots the
    /// slot is also leased in Redis; when the other instances hold every slot there, the
    /// claim is undone and the request routed again (elsewhere, or back to the queue).
    /// A caller that goes away while waiting (the future is dropped) leaves the queue at
    /// once.
    pub async fn lease(
        &self,
        tenant: &Tenant,
        model: &str,
        exclude: &[usize],
    ) -> Result<Lease, RouteError> {
        let deadline = tokio::time::Instant::now() + self.queue_max_wait;
        loop {
            let claim = self.claim(tenant, model, exclude, deadline).await?;
            let Some((slots, failure_mode)) = &self.shared else {
                return Ok(self.lease_for(claim, model, None));
            };
            let name = self
                .names
                .get(claim.server)
                .cloned()
                .unwrap_or_else(|| Arc::from("-"));
            let server = claim.server;
            let parallel = self.fleet.parallel(server);
            let mut pending = Pending {
                upstream: self,
                model,
                claim: Some(claim),
                lease_id: Some(SharedSlots::lease_id()),
            };
            let id = pending.lease_id.clone().unwrap_or_default();
            let answer = slots.acquire(server, &name, model, parallel, id).await;
            match answer {
                Ok(Acquired::Granted { count, version }) => {
                    let Some(claim) = pending.claim.take() else {
                        return Err(RouteError::Unavailable);
                    };
                    self.fleet
                        .observe_shared(claim.server, model, count, version);
                    let shared = pending.lease_id.take().map(|id| (slots.clone(), id));
                    return Ok(self.lease_for(claim, model, shared));
                }
                Ok(Acquired::Full { count, version }) => {
                    pending.lease_id = None;
                    if let Some(claim) = pending.claim.take() {
                        self.fleet.refuse_shared(claim, model, count, version);
                    }
                }
                Err(e) => match failure_mode {
                    FailureMode::Closed => {
                        tracing::warn!(error = %e, "Redis unavailable: refusing (failure_mode: closed)");
                        pending.lease_id = None;
                        return Err(RouteError::SlotsUnavailable);
                    }
                    FailureMode::Open => {
                        tracing::warn!(error = %e, "Redis unavailable: counting server slots locally (failure_mode: open)");
                        metrics::counter!(crate::telemetry::SLOT_FALLBACKS).increment(1);
                        pending.lease_id = None;
                        let Some(claim) = pending.claim.take() else {
                            return Err(RouteError::Unavailable);
                        };
                        return Ok(self.lease_for(claim, model, None));
                    }
                },
            }
        }
    }

    /// A slot claimed in this instance's fleet: at once, or from the fair queue before
    /// `deadline`.
    async fn claim(
        &self,
        tenant: &Tenant,
        model: &str,
        exclude: &[usize],
        deadline: tokio::time::Instant,
    ) -> Result<Claim, RouteError> {
        match self.fleet.admit(tenant, model, exclude) {
            Ok(Admission::Claimed(claim)) => Ok(claim),
            Ok(Admission::Queued(rx, id)) => {
                let mut seat = QueueSeat {
                    fleet: &self.fleet,
                    tenant,
                    model,
                    id,
                    rx,
                };
                let started = Instant::now();
                crate::telemetry::queue_depth(self.fleet.queued());
                let granted = tokio::time::timeout_at(deadline, &mut seat.rx).await;
                drop(seat);
                crate::telemetry::queue_wait(started.elapsed(), granted.is_ok());
                match granted {
                    Ok(Ok(claim)) => Ok(claim),
                    _ => Err(RouteError::Busy),
                }
            }
            Err(Refusal::NotFound) => Err(RouteError::ModelNotFound),
            Err(Refusal::Unavailable) => Err(RouteError::Unavailable),
            Err(Refusal::QueueFull) => Err(RouteError::Busy),
        }
    }

    fn lease_for(&self, claim: Claim, model: &str, shared: Option<(SharedSlots, String)>) -> Lease {
        let name = self
            .names
            .get(claim.server)
            .cloned()
            .unwrap_or_else(|| Arc::from("-"));
        if claim.loads {
            metrics::counter!(crate::telemetry::UPSTREAM_MODEL_LOADS,
                "server" => name.to_string(), "model" => model.to_string())
            .increment(1);
        }
        Lease {
            fleet: self.fleet.clone(),
            server: claim.server,
            name,
            model: model.to_string(),
            started: Instant::now(),
            loads: claim.loads,
            load_took: None,
            head_after: None,
            shared,
        }
    }

    /// Sends the request to `server`; resolves with the response head, its body still
    /// streaming. Counts the outcome towards the server's health: a connection failure
    /// or a 5xx other than Ollama's "server busy" is a failure. The time to the head goes
    /// to the route's `metrics`.
    pub async fn send(
        &self,
        server: usize,
        lease: Option<&mut Lease>,
        metrics: Option<&crate::telemetry::RouteMetrics>,
        request: UpstreamRequest,
    ) -> Result<UpstreamResponse, SendError> {
        let Some(base) = self.bases.get(server) else {
            return Err(SendError::Failed("no such server".into()));
        };
        let started = Instant::now();
        let sent = self
            .client
            .send(
                base,
                request.method,
                request.path_and_query,
                request.headers,
                request.body,
            )
            .await;
        if let Some(metrics) = metrics {
            metrics.upstream_answered(started.elapsed());
        }
        if let Some(counter) = self.requests.get(server) {
            counter.increment(1);
        }
        if let Some(lease) = lease {
            lease.head_arrived();
        }
        match sent {
            Ok(response) => {
                let status = response.status();
                if status.is_server_error() && status.as_u16() != 503 {
                    self.failed(server);
                } else if status.as_u16() != 503 {
                    self.fleet.record_success(server);
                }
                Ok(response)
            }
            Err(HopError::Timeout) => Err(SendError::Timeout),
            Err(HopError::Client(e)) => {
                self.failed(server);
                if client::undelivered(&e) {
                    Err(SendError::Undelivered(e))
                } else {
                    Err(SendError::Failed(Box::new(e)))
                }
            }
            Err(HopError::Uri(e)) => Err(SendError::Failed(Box::new(e))),
        }
    }

    fn failed(&self, server: usize) {
        if let Some(counter) = self.failures.get(server) {
            counter.increment(1);
        }
        self.fleet.record_failure(server);
    }

    /// Starts discovery: each server's lists at once (without delaying start-up), then
    /// every `discovery_interval_s`; probes of ejected servers on the same beat.
    pub fn start_discovery(self: &Arc<Self>, tasks: &crate::tasks::TaskSpawner) {
        discovery::start(self.clone(), self.discovery_every, tasks);
    }

    /// `GET path` on one server, whole body (small documents: lists, version).
    async fn get_json(&self, server: usize, path: &'static str) -> Option<serde_json::Value> {
        let base = self.bases.get(server)?;
        let timeout = Duration::from_secs(10);
        let response = self
            .client
            .send_within(
                timeout,
                base,
                Method::GET,
                PathAndQuery::from_static(path),
                HeaderMap::new(),
                Bytes::new(),
            )
            .await;
        match response {
            Ok(r) if r.status().is_success() => {
                self.fleet.record_success(server);
                let body = r.into_body().bytes(MAX_DOCUMENT_BYTES).await.ok()?;
                serde_json::from_slice(&body).ok()
            }
            Ok(r) => {
                if r.status().is_server_error() {
                    self.failed(server);
                }
                None
            }
            Err(_) => {
                self.failed(server);
                None
            }
        }
    }
}

/// A place in the queue; leaving it (timeout, disconnect, grant) removes it, and a slot
/// granted in the instant before is handed back rather than lost.
struct QueueSeat<'a> {
    fleet: &'a Fleet,
    tenant: &'a Tenant,
    model: &'a str,
    id: u64,
    rx: tokio::sync::oneshot::Receiver<fleet::Claim>,
}

impl Drop for QueueSeat<'_> {
    fn drop(&mut self) {
        self.fleet.leave_queue(self.tenant, self.id);
        if let Ok(claim) = self.rx.try_recv() {
            self.fleet.return_claim(claim, self.model);
        }
        crate::telemetry::queue_depth(self.fleet.queued());
    }
}
