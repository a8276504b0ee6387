//! The Ollama proxy: authenticated requests on the routes of [`routes::ROUTES`] are
//! checked (SPEC §5.2), forwarded with the upstream's own `Host` and without the
//! caller's credentials, and streamed back unbuffered while tokens are counted.

mod body;
mod inspect;
mod lists;
pub mod meter;
pub mod routes;

/// Entry points for the fuzz targets in `fuzz/` (request body inspection); not part of
/// the API.
#[doc(hidden)]
pub mod fuzzing {
    pub use super::inspect::{ModelField, RequestFacts, inspect};
}

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use axum::body::Body;
use axum::extract::{FromRequest, Request};
use axum::http::uri::PathAndQuery;
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

pub use self::body::UsageSink;
use self::body::{MeteredBody, UsageTicket};
use self::meter::{Framing, Scanner};
use self::routes::{Kind, RouteSpec};
use crate::auth::{self, Authenticator, access};
use crate::config::{PricingConfig, UpstreamConfig};
use crate::error::AppError;
use crate::limits::{Demand, LimitError, Limiter, Permit, Refusal, Subject};
use crate::request_id::RequestId;
use crate::store::RequestStatus;
use crate::upstream::lists::ListKind;
use crate::upstream::{
    Lease, MAX_DOCUMENT_BYTES, RouteError, SendError, Tenant, Upstream, UpstreamRequest,
    UpstreamResponse, canonical_model,
};
use crate::usage::{EventFeed, RequestEvent};

/// Counts proxied responses still streaming, so shutdown can wait for them.
#[derive(Default, Clone)]
pub struct InFlight(Arc<(AtomicUsize, Notify)>);

pub struct InFlightGuard(InFlight);

impl InFlight {
    pub fn enter(&self) -> InFlightGuard {
        self.0.0.fetch_add(1, Ordering::SeqCst);
        crate::telemetry::streams_in_flight().increment(1.0);
        InFlightGuard(self.clone())
    }

    pub fn count(&self) -> usize {
        self.0.0.load(Ordering::SeqCst)
    }

    /// Resolves when nothing is in flight.
    pub async fn idle(&self) {
        loop {
            let notified = self.0.1.notified();
            if self.count() == 0 {
                return;
            }
            notified.await;
        }
    }
}

impl Drop for InFlightGuard {
    fn drop(&mut self) {
        crate::telemetry::streams_in_flight().decrement(1.0);
        if self.0.0.0.fetch_sub(1, Ordering::SeqCst) == 1 {
            self.0.0.1.notify_waiters();
        }
    }
}

/// Headers passed from the caller to Ollama. Everything else — `Authorization`,
/// cookies, `Host`, hop-by-hop headers — stays behind.
const FORWARDED_REQUEST_HEADERS: &[HeaderName] =
    &[header::CONTENT_TYPE, header::ACCEPT, header::USER_AGENT];

/// An authenticated request that passed every check before the upstream (SPEC §5.2)
/// and holds its limiter permit, ready to send.
struct Prepared {
    request: UpstreamRequest,
    target: Target,
    facts: inspect::RequestFacts,
    model: Option<String>,
    permit: Option<Permit>,
}

/// Where a request goes (SPEC §11).
#[derive(Debug)]
enum Target {
    /// A generation or an embedding: a slot for the model (canonical name) on a server.
    Slot(String),
    /// About a model but holding no slot (`/api/show`, `/v1/models/{model}`): a server
    /// that lists it, warm first.
    Listing(String),
    /// A model list, merged across servers.
    Merged(ListKind),
    /// One server: the one named by `X-Tollgate-Server`, the only one, or any in service.
    Server(usize),
}

/// What came back from the upstream, with the server that answered and the slot held
/// there until the response has ended.
struct Delivered {
    answer: Answer,
    server: Option<Arc<str>>,
    lease: Option<Lease>,
}

enum Answer {
    Response(UpstreamResponse),
    Merged(serde_json::Value),
    Failed(SendError),
    /// The server answered with an error of its own (a 5xx).
    Rejected(AppError),
}

impl Delivered {
    fn merged(value: serde_json::Value) -> Self {
        Self {
            answer: Answer::Merged(value),
            server: None,
            lease: None,
        }
    }

    fn from(
        answer: Result<UpstreamResponse, SendError>,
        server: Option<&Arc<str>>,
        lease: Option<Lease>,
    ) -> Self {
        Self {
            answer: match answer {
                Ok(r) => Answer::Response(r),
                Err(e) => Answer::Failed(e),
            },
            server: server.cloned(),
            lease,
        }
    }
}

/// A request that left before anything was delivered (its client went away while it
/// waited): shown on the live feed as refused, with nginx's 499 "client closed request".
struct Abandoned<'a> {
    proxy: &'a Proxy,
    caller: &'a auth::Caller,
    spec: &'static RouteSpec,
    request_id: &'a Arc<str>,
    started: Instant,
    armed: bool,
}

/// What the feed shows for a request whose client left before it was sent.
const CLIENT_CLOSED: u16 = 499;

impl Drop for Abandoned<'_> {
    fn drop(&mut self) {
        if self.armed {
            self.proxy.publish_refusal(
                self.caller,
                self.spec,
                self.request_id,
                self.started,
                CLIENT_CLOSED,
            );
        }
    }
}

/// Where one attempt goes: a slot, or a server that lists the model.
enum Place {
    Slot(Lease),
    Server(usize),
}

/// The header that names a server for Ollama's admin routes.
pub const SERVER_HEADER: &str = "x-tollgate-server";

/// Who waits in whose line (SPEC §12): a virtual key (a JWT mapped to a key is that
/// key), a `fallback` JWT's team, the admins.
fn tenant_of(caller: &auth::Caller) -> Tenant {
    static ADMIN: std::sync::LazyLock<Tenant> = std::sync::LazyLock::new(|| Arc::from("admin"));
    if caller.is_admin() {
        return ADMIN.clone();
    }
    if let Some(key) = &caller.key {
        return key.subject_id.clone();
    }
    match (&caller.team, &caller.team_id, &caller.user_id) {
        (Some(team), _, _) => team.subject_id.clone(),
        (None, Some(team), _) => Arc::from(format!("team:{team}")),
        (None, None, Some(user)) => Arc::from(format!("user:{user}")),
        (None, None, None) => Arc::from(format!("caller:{}", caller.label)),
    }
}

fn busy_error() -> AppError {
    AppError::UpstreamBusy { retry_after_s: 1 }
}

/// The proxy pipeline: authenticate, check (SPEC §5.2), admit, send, meter.
pub struct Proxy {
    authenticator: Arc<Authenticator>,
    limiter: Arc<Limiter>,
    upstream: Arc<Upstream>,
    /// `upstream.*` policy for non-admin callers (admin routes, keep_alive, num_ctx).
    policy: UpstreamConfig,
    pricing: PricingConfig,
    usage: Arc<UsageSink>,
    events: EventFeed,
    in_flight: InFlight,
    /// Fired when the shutdown grace period ends: streams still open stop.
    cancel: CancellationToken,
}

/// The parts a [`Proxy`] is built from.
pub struct ProxyParts {
    pub authenticator: Arc<Authenticator>,
    pub limiter: Arc<Limiter>,
    pub upstream: Arc<Upstream>,
    pub policy: UpstreamConfig,
    pub usage: Arc<UsageSink>,
    pub in_flight: InFlight,
    pub cancel: CancellationToken,
}

impl Proxy {
    pub fn new(parts: ProxyParts) -> Self {
        Self {
            pricing: parts.usage.pricing.clone(),
            events: parts.usage.events.clone(),
            authenticator: parts.authenticator,
            limiter: parts.limiter,
            upstream: parts.upstream,
            policy: parts.policy,
            usage: parts.usage,
            in_flight: parts.in_flight,
            cancel: parts.cancel,
        }
    }

    /// Handles one proxied request.
    pub async fn forward(
        &self,
        spec: &'static RouteSpec,
        req: Request,
    ) -> Result<Response, AppError> {
        let started = Instant::now();
        let started_at = chrono::Utc::now();
        let caller = self
            .authenticator
            .authenticate(req.method(), req.uri(), req.headers(), auth::Purpose::Proxy)
            .await?;
        let request_id = req
            .extensions()
            .get::<RequestId>()
            .map(|r| r.0.clone())
            .unwrap_or_else(|| Arc::from("-"));

        let prepared = match self
            .prepare(spec, &caller, &request_id, req, started_at)
            .await
        {
            Ok(prepared) => prepared,
            Err(err) => {
                self.publish_refusal(&caller, spec, &request_id, started, err.status().as_u16());
                return Err(err);
            }
        };

        // Until something is delivered, a client that goes away (while queued, say) is
        // shown on the feed as refused; its permit, dropped unsettled, gives back its
        // admission and reservations.
        let mut abandoned = Abandoned {
            proxy: self,
            caller: &caller,
            spec,
            request_id: &request_id,
            started,
            armed: true,
        };
        let Prepared {
            request,
            target,
            facts,
            model,
            permit,
        } = prepared;
        let delivered = self.deliver(&caller, spec, &target, request).await;
        abandoned.armed = false;
        drop(abandoned);
        let delivered = match delivered {
            Ok(delivered) => delivered,
            Err(err) => {
                // Nothing was sent, or nothing could be: the request consumed nothing.
                if let Some(permit) = permit {
                    self.limiter.cancel(permit);
                }
                self.publish_refusal(&caller, spec, &request_id, started, err.status().as_u16());
                return Err(err);
            }
        };
        let mut ticket = UsageTicket {
            sink: self.usage.clone(),
            request_id,
            key_id: caller.key.as_ref().map(|k| k.key_id.clone()),
            team_id: caller.team_id.clone(),
            user_id: caller.user_id.clone(),
            label: caller.label.clone(),
            model,
            route: spec.path,
            metrics: spec.metrics(),
            http_status: 0,
            started_at,
            started,
            permit,
            server: delivered.server,
            lease: delivered.lease,
            recorded: false,
        };
        let upstream = match delivered.answer {
            Answer::Response(r) => r,
            Answer::Merged(value) => {
                ticket.http_status = 200;
                let value = lists::filter_value(value, spec.kind, self.list_filter(&caller));
                ticket.finish(RequestStatus::Success, Default::default());
                return Ok(axum::Json(value).into_response());
            }
            Answer::Rejected(err) => {
                ticket.http_status = err.status().as_u16();
                ticket.finish(RequestStatus::Error, Default::default());
                return Err(err);
            }
            Answer::Failed(e) => {
                let (status, err) = match &e {
                    SendError::Timeout => (504, AppError::UpstreamTimeout),
                    SendError::Failed(_) | SendError::Undelivered(_) => {
                        (502, AppError::UpstreamError)
                    }
                };
                tracing::warn!(error = %e, "upstream request failed");
                ticket.http_status = status;
                ticket.finish(RequestStatus::Error, Default::default());
                return Err(err);
            }
        };
        let status = upstream.status();
        ticket.http_status = status.as_u16();
        if !status.is_success() {
            let err = upstream_failure(upstream).await;
            ticket.http_status = err.status().as_u16();
            ticket.finish(RequestStatus::Error, Default::default());
            return Err(err);
        }

        let filter = self.list_filter(&caller);
        if matches!(spec.kind, Kind::NativeList | Kind::OpenAiList) && filter.filters() {
            let response = lists::filtered(upstream, spec.kind, filter).await;
            ticket.finish(
                if response.is_ok() {
                    RequestStatus::Success
                } else {
                    RequestStatus::Error
                },
                Default::default(),
            );
            return response;
        }
        let framing = match spec.kind {
            Kind::NativeGenerate if facts.stream => Framing::Lines,
            Kind::OpenAiCompletion | Kind::OpenAiOther if facts.stream => Framing::Events {
                hide_usage_chunk: spec.kind == Kind::OpenAiCompletion && !facts.client_wants_usage,
            },
            Kind::NativeGenerate
            | Kind::NativeEmbed
            | Kind::OpenAiCompletion
            | Kind::OpenAiOther => Framing::Whole,
            _ => Framing::Opaque,
        };
        let mut response = Response::builder().status(status);
        if let Some(ct) = upstream.headers().get(header::CONTENT_TYPE) {
            response = response.header(header::CONTENT_TYPE, ct.clone());
        }
        // A body passed through unchanged keeps its length (one write instead of chunks);
        // only hiding the usage chunk changes the bytes.
        let rewrites = matches!(
            framing,
            Framing::Events {
                hide_usage_chunk: true
            }
        );
        let declared_len = http_body::Body::size_hint(upstream.body())
            .exact()
            .filter(|_| !rewrites);
        if let Some(len) = declared_len {
            response = response.header(header::CONTENT_LENGTH, len);
        }
        let metered = MeteredBody::new(
            upstream.into_body(),
            Scanner::new(framing),
            ticket,
            self.in_flight.enter(),
            declared_len,
            self.cancel.clone(),
        );
        response
            .body(Body::new(metered))
            .map_err(AppError::internal)
    }

    /// Sends the request where SPEC §11 says: a slot on a server for a model (waiting
    /// in the fair queue if need be), a server that lists the model, the servers' merged
    /// lists, or one named server. A request that could not be delivered — refused or
    /// reset before any response byte, or Ollama's 503 "server busy" — moves to the next
    /// candidate, at most once per server. An error here means nothing was delivered.
    async fn deliver(
        &self,
        caller: &auth::Caller,
        spec: &'static RouteSpec,
        target: &Target,
        request: UpstreamRequest,
    ) -> Result<Delivered, AppError> {
        let upstream = &*self.upstream;
        let metrics = spec.metrics();
        let model = match target {
            Target::Merged(kind) => {
                return match upstream.merged_list(spec.path, *kind).await {
                    Some(value) => Ok(Delivered::merged(value)),
                    None => Err(AppError::UpstreamError),
                };
            }
            Target::Server(server) => {
                let answer = upstream.send(*server, None, metrics, request).await;
                return Ok(Delivered::from(answer, upstream.server_name(*server), None));
            }
            Target::Listing(model) | Target::Slot(model) => model,
        };
        let holds_slot = matches!(target, Target::Slot(_));
        let mut request = Some(request);
        let tenant = tenant_of(caller);
        let mut tried = Vec::new();
        let mut busy = false;
        loop {
            let place = if holds_slot {
                upstream
                    .lease(&tenant, model, &tried)
                    .await
                    .map(Place::Slot)
            } else {
                upstream.listing(model, &tried).map(Place::Server)
            };
            let mut lease = match place {
                Ok(Place::Slot(lease)) => Some(lease),
                Ok(Place::Server(server)) => {
                    let Some(outgoing) = attempt(&mut request, tried.len(), upstream) else {
                        return Err(AppError::UpstreamError);
                    };
                    let answer = upstream.send(server, None, metrics, outgoing).await;
                    if let Err(SendError::Undelivered(e)) = &answer {
                        tracing::warn!(error = %e, "upstream not reached; trying another server");
                        tried.push(server);
                        continue;
                    }
                    return Ok(Delivered::from(answer, upstream.server_name(server), None));
                }
                Err(RouteError::ModelNotFound) => {
                    return Err(AppError::ModelNotFound(model.clone()));
                }
                Err(RouteError::Busy) => return Err(busy_error()),
                Err(RouteError::SlotsUnavailable) => return Err(AppError::LimitsUnavailable),
                Err(RouteError::Unavailable) if busy || tried.is_empty() => {
                    return Err(busy_error());
                }
                Err(RouteError::Unavailable) => return Err(AppError::UpstreamError),
            };
            let Some(lease_ref) = lease.as_mut() else {
                continue;
            };
            let server = lease_ref.server();
            let name = lease_ref.server_name().clone();
            let Some(outgoing) = attempt(&mut request, tried.len(), upstream) else {
                return Err(AppError::UpstreamError);
            };
            let answer = upstream
                .send(server, Some(lease_ref), metrics, outgoing)
                .await;
            match answer {
                Err(SendError::Undelivered(e)) => {
                    tracing::warn!(server = %name, error = %e, "upstream not reached; trying another server");
                    tried.push(server);
                }
                Ok(response) if response.status() == StatusCode::SERVICE_UNAVAILABLE => {
                    // Ollama's "server busy": busy, not broken. Anything else a 503 says
                    // is an error of that server.
                    let body = response
                        .into_body()
                        .bytes(MAX_DOCUMENT_BYTES)
                        .await
                        .unwrap_or_default();
                    if memchr::memmem::find(&body, b"server busy").is_none() {
                        upstream.fleet().record_failure(server);
                        tracing::warn!(server = %name, "upstream server error (503)");
                        return Ok(Delivered {
                            answer: Answer::Rejected(AppError::UpstreamError),
                            server: Some(name),
                            lease,
                        });
                    }
                    tracing::debug!(server = %name, "upstream busy; trying another server");
                    busy = true;
                    tried.push(server);
                }
                other => return Ok(Delivered::from(other, Some(&name), lease)),
            }
        }
    }

    /// Checks 2–7 in order; the first that fails refuses the request, which then consumes
    /// nothing.
    async fn prepare(
        &self,
        spec: &'static RouteSpec,
        caller: &auth::Caller,
        request_id: &str,
        req: Request,
        started_at: chrono::DateTime<chrono::Utc>,
    ) -> Result<Prepared, AppError> {
        access::check_key_state(caller, started_at)?;
        let admin_only = spec.admin_only && self.policy.admin_routes_require_admin;
        access::check_route(caller, req.uri().path(), admin_only)?;

        let method = req.method().clone();
        let path_and_query = req
            .uri()
            .path_and_query()
            .cloned()
            .unwrap_or_else(|| PathAndQuery::from_static("/"));
        let path_model = (spec.kind == Kind::OpenAiModel).then(|| {
            req.uri()
                .path()
                .trim_start_matches("/v1/models/")
                .to_string()
        });
        let named_server = self.named_server(spec, req.headers())?;
        // Room for what the hop adds (`Host`, maybe credentials): no regrowth on the way.
        let mut headers = HeaderMap::with_capacity(FORWARDED_REQUEST_HEADERS.len() + 3);
        for name in FORWARDED_REQUEST_HEADERS {
            if let Some(v) = req.headers().get(name) {
                headers.insert(name.clone(), v.clone());
            }
        }
        if let Ok(v) = HeaderValue::from_str(request_id) {
            headers.insert(crate::request_id::HEADER, v);
        }

        let body = Bytes::from_request(req, &())
            .await
            .map_err(AppError::from)?;
        let (facts, body) = if spec.kind == Kind::Plain {
            (inspect::RequestFacts::default(), body)
        } else {
            inspect::inspect(
                spec.kind,
                model_field(spec),
                body,
                caller.is_admin(),
                &self.policy,
            )?
        };
        // `/v1/models/{model}` is about the model in its path, whatever a body says.
        let model = path_model.or_else(|| facts.model.clone());
        if let Some(m) = &model {
            access::check_model(caller, m)?;
            access::check_cloud_model(caller, m, self.policy.allow_cloud_models)?;
        }
        let target = self.target(spec, model.as_deref(), named_server)?;

        let permit = self.admit(caller, &facts, model.as_deref()).await?;
        Ok(Prepared {
            request: UpstreamRequest {
                method,
                path_and_query,
                headers,
                body,
            },
            target,
            facts,
            model,
            permit,
        })
    }

    /// What the caller's model lists keep: its allow-list, and no cloud models unless
    /// allowed.
    fn list_filter<'a>(&self, caller: &'a auth::Caller) -> lists::ListFilter<'a> {
        lists::ListFilter {
            patterns: access::model_patterns(caller),
            hide_cloud: !caller.is_admin() && !self.policy.allow_cloud_models,
        }
    }

    /// `X-Tollgate-Server` on Ollama's admin routes: required with several servers
    /// (400 naming it when missing), 404 for a name no server has.
    fn named_server(
        &self,
        spec: &'static RouteSpec,
        headers: &HeaderMap,
    ) -> Result<Option<usize>, AppError> {
        if !spec.admin_only {
            return Ok(None);
        }
        let upstream = &self.upstream;
        match headers.get(SERVER_HEADER).map(HeaderValue::to_str) {
            Some(Ok(name)) => upstream
                .server_named(name.trim())
                .map(Some)
                .ok_or_else(|| AppError::NotFound(format!("no server named `{}`", name.trim()))),
            Some(Err(_)) => Err(AppError::invalid(
                "header `X-Tollgate-Server` is not a server name",
            )),
            None if upstream.is_fleet() => Err(AppError::invalid(
                "header `X-Tollgate-Server` must name the server for this route",
            )),
            None => Ok(Some(0)),
        }
    }

    /// Where the request goes; a model no server has is 404 here, before admission.
    fn target(
        &self,
        spec: &'static RouteSpec,
        model: Option<&str>,
        named_server: Option<usize>,
    ) -> Result<Target, AppError> {
        let upstream = &self.upstream;
        if let Some(server) = named_server {
            return Ok(Target::Server(server));
        }
        let target = match (spec.kind, model) {
            (Kind::NativeList, _) if upstream.is_fleet() => Target::Merged(ListKind::Native),
            (Kind::OpenAiList, _) if upstream.is_fleet() => Target::Merged(ListKind::OpenAi),
            (Kind::ModelOnly | Kind::OpenAiModel, Some(m)) if spec.path != "/api/embeddings" => {
                Target::Listing(canonical_model(m))
            }
            (
                Kind::NativeGenerate
                | Kind::NativeEmbed
                | Kind::OpenAiCompletion
                | Kind::OpenAiOther
                | Kind::ModelOnly,
                Some(m),
            ) => Target::Slot(canonical_model(m)),
            _ => match upstream.any_in_service() {
                Some(server) => Target::Server(server),
                None => return Err(busy_error()),
            },
        };
        if let Target::Slot(m) | Target::Listing(m) = &target
            && !upstream.fleet().lists_anywhere(m)
        {
            return Err(AppError::ModelNotFound(m.clone()));
        }
        Ok(target)
    }

    /// A refused request has no usage row (it consumed nothing) but is shown on the live
    /// feed, so operators see 403s and 429s as they happen.
    fn publish_refusal(
        &self,
        caller: &auth::Caller,
        spec: &'static RouteSpec,
        request_id: &Arc<str>,
        started: Instant,
        http_status: u16,
    ) {
        self.events.publish(|| RequestEvent {
            time: chrono::Utc::now(),
            request_id: request_id.to_string(),
            key_name: caller.label.to_string(),
            key_id: caller.key.as_ref().map(|k| k.key_id.clone()),
            team_id: caller.team_id.clone(),
            model: None,
            route: spec.path.to_string(),
            server: None,
            status: RequestStatus::Refused,
            http_status,
            prompt_tokens: 0,
            completion_tokens: 0,
            latency_ms: u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
        });
    }

    /// Admits the request against its key's and team's limits; `None` when unlimited (which
    /// `failure_mode: closed` still refuses while Redis is unreachable).
    async fn admit(
        &self,
        caller: &auth::Caller,
        facts: &inspect::RequestFacts,
        model: Option<&str>,
    ) -> Result<Option<Permit>, AppError> {
        let subjects = limited_subjects(caller);
        if subjects.is_empty() {
            self.limiter.check_available().map_err(limit_error)?;
            return Ok(None);
        }
        let demand = match facts.output_bound {
            Some(bound) => Demand {
                reserve_tokens: facts.prompt_estimate + bound,
                reserve_cost: self
                    .pricing
                    .cost(model.unwrap_or(""), facts.prompt_estimate, bound),
            },
            None => Demand::default(),
        };
        let permit = self
            .limiter
            .admit(&subjects, demand)
            .await
            .map_err(limit_error)?;
        Ok(Some(permit))
    }
}

/// The request for the next attempt: moved when no other server could follow (always,
/// with one server), else a copy kept back for the retry (headers and body are shared
/// buffers; the copy is the header map).
fn attempt(
    request: &mut Option<UpstreamRequest>,
    tried: usize,
    upstream: &Upstream,
) -> Option<UpstreamRequest> {
    if tried + 1 >= upstream.server_count() {
        request.take()
    } else {
        request.clone()
    }
}

/// Where the route's body names the model checked against the caller's allow-list.
fn model_field(spec: &RouteSpec) -> inspect::ModelField {
    match spec.kind {
        Kind::ModelOnly if spec.path == "/api/show" => inspect::ModelField::ModelOrName,
        Kind::NativeGenerate
        | Kind::NativeEmbed
        | Kind::OpenAiCompletion
        | Kind::OpenAiOther
        | Kind::ModelOnly => inspect::ModelField::Required,
        Kind::NativeList | Kind::OpenAiList | Kind::OpenAiModel | Kind::Plain => {
            inspect::ModelField::None
        }
    }
}

/// The key's and team's limits that are set; none for the master key and admin JWTs.
fn limited_subjects(caller: &auth::Caller) -> Vec<Subject> {
    let mut subjects = Vec::with_capacity(2);
    if caller.is_admin() {
        return subjects;
    }
    if let Some(k) = &caller.key {
        subjects.push(Subject {
            id: k.subject_id.clone(),
            rpm: k.rpm_limit,
            tpm: k.tpm_limit,
            parallel: k.max_parallel_requests,
            max_budget: k.max_budget,
            stored_spend: k.spend,
            budget_reset_at: k.budget_reset_at,
        });
    }
    if let Some(t) = &caller.team {
        subjects.push(Subject {
            id: t.subject_id.clone(),
            rpm: t.rpm_limit,
            tpm: t.tpm_limit,
            parallel: t.max_parallel_requests,
            max_budget: t.max_budget,
            stored_spend: t.spend,
            budget_reset_at: t.budget_reset_at,
        });
    }
    subjects.retain(Subject::is_limited);
    subjects
}

/// The limiter's answer as the caller sees it.
fn limit_error(err: LimitError) -> AppError {
    match err {
        LimitError::Refused(Refusal::Budget) => AppError::BudgetExceeded,
        LimitError::Refused(Refusal::Rate { retry_after }) => AppError::RateLimited {
            retry_after_s: retry_after.as_secs().max(1),
        },
        LimitError::Refused(Refusal::Parallel) => AppError::TooManyParallelRequests,
        LimitError::Unavailable => AppError::LimitsUnavailable,
    }
}

/// Maps a non-success upstream answer: 4xx keep their status and Ollama's message (it is
/// about the caller's request); 5xx become 502 with nothing upstream-specific.
async fn upstream_failure(upstream: UpstreamResponse) -> AppError {
    let status = upstream.status();
    if !status.is_client_error() {
        tracing::warn!(status = status.as_u16(), "upstream server error");
        return AppError::UpstreamError;
    }
    let status = StatusCode::from_u16(status.as_u16()).unwrap_or(StatusCode::BAD_REQUEST);
    let body = upstream
        .into_body()
        .bytes(MAX_DOCUMENT_BYTES)
        .await
        .unwrap_or_default();
    AppError::UpstreamRejected {
        status,
        message: upstream_message(&body),
    }
}

/// Ollama's `{"error": "..."}` or OpenAI-style `{"error": {"message": "..."}}`.
fn upstream_message(body: &[u8]) -> String {
    let value: serde_json::Value = serde_json::from_slice(body).unwrap_or_default();
    let message = match &value["error"] {
        serde_json::Value::String(s) => Some(s.as_str()),
        serde_json::Value::Object(o) => o.get("message").and_then(|m| m.as_str()),
        _ => None,
    };
    message
        .map(|m| m.chars().take(1000).collect())
        .unwrap_or_else(|| "the model server rejected the request".to_string())
}

#[cfg(test)]
mod tests {
    use super::upstream_message;

    #[test]
    fn upstream_messages_are_extracted() {
        assert_eq!(
            upstream_message(br#"{"error":"model not found"}"#),
            "model not found"
        );
        assert_eq!(upstream_message(br#"{"error":{"message":"bad"}}"#), "bad");
        assert_eq!(
            upstream_message(b"<html>"),
            "the model server rejected the request"
        );
    }
}
