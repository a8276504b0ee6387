//! The Ollama proxy: authenticated requests on the routes of [`routes::ROUTES`] are
//! checked (SPEC §5.2), forwarded with the upstream's own `Host` and without the
//! caller's credentials, and streamed back unbuffered while tokens are counted.

mod body;
mod inspect;
mod lists;
pub mod meter;
pub mod routes;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::{FromRequest, Request};
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header};
use axum::response::Response;
use bytes::Bytes;
use tokio::sync::Notify;

use self::body::{MeteredBody, UsageTicket};
use self::meter::{Framing, Scanner};
use self::routes::{Kind, RouteSpec};
use crate::app::App;
use crate::auth::{self, access};
use crate::config::Config;
use crate::http::AppError;
use crate::http::extract::body_rejection;
use crate::http::request_id::RequestId;
use crate::limits::{Demand, Permit, Subject};

/// The pooled HTTP client for Ollama and its base URL.
pub struct Upstream {
    client: reqwest::Client,
    base: String,
}

impl Upstream {
    pub fn new(config: &Config) -> reqwest::Result<Self> {
        let client = crate::outbound::client_builder()
            .connect_timeout(Duration::from_secs(config.upstream.connect_timeout_s))
            .timeout(Duration::from_secs(config.server.request_timeout_s))
            .pool_idle_timeout(Duration::from_secs(90))
            .pool_max_idle_per_host(1024)
            .tcp_nodelay(true)
            .redirect(reqwest::redirect::Policy::none())
            .build()?;
        Ok(Self {
            client,
            base: config.upstream.url.trim_end_matches('/').to_string(),
        })
    }
}

/// Counts proxied responses still streaming, so shutdown can wait for them.
#[derive(Default, Clone)]
pub struct InFlight(Arc<(AtomicUsize, Notify)>);

pub struct InFlightGuard(InFlight);

impl InFlight {
    pub fn enter(&self) -> InFlightGuard {
        self.0.0.fetch_add(1, Ordering::SeqCst);
        metrics::gauge!(crate::telemetry::STREAMS_IN_FLIGHT).increment(1.0);
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
        metrics::gauge!(crate::telemetry::STREAMS_IN_FLIGHT).decrement(1.0);
        if self.0.0.0.fetch_sub(1, Ordering::SeqCst) == 1 {
            self.0.0.1.notify_waiters();
        }
    }
}

/// Headers passed from the caller to Ollama. Everything else — `Authorization`,
/// cookies, `Host`, hop-by-hop headers — stays behind.
const FORWARDED_REQUEST_HEADERS: &[HeaderName] =
    &[header::CONTENT_TYPE, header::ACCEPT, header::USER_AGENT];

/// Handles one proxied request.
pub async fn forward(
    app: Arc<App>,
    spec: &'static RouteSpec,
    req: Request,
) -> Result<Response, AppError> {
    let started = Instant::now();
    let started_at = chrono::Utc::now();
    let caller = auth::authenticate(
        &app,
        req.method(),
        req.uri(),
        req.headers(),
        auth::Purpose::Proxy,
    )
    .await?;
    let request_id = req
        .extensions()
        .get::<RequestId>()
        .map(|r| r.0.clone())
        .unwrap_or_else(|| Arc::from("-"));

    let prepared = match prepare(&app, spec, &caller, &request_id, req, started_at).await {
        Ok(prepared) => prepared,
        Err(err) => {
            publish_refusal(&app, &caller, spec, &request_id, started, &err);
            return Err(err);
        }
    };

    let mut ticket = UsageTicket {
        app: app.clone(),
        request_id,
        key_id: caller.key.as_ref().map(|k| k.key_id.clone()),
        team_id: caller.team_id.clone(),
        user_id: caller.user_id.clone(),
        label: caller.label.clone(),
        model: prepared.model,
        route: spec.path,
        http_status: 0,
        started_at,
        started,
        permit: prepared.permit,
        recorded: false,
    };
    let upstream_started = Instant::now();
    let sent = app
        .upstream
        .client
        .request(prepared.method, prepared.url)
        .headers(prepared.headers)
        .body(prepared.body)
        .send()
        .await;
    metrics::histogram!(crate::telemetry::UPSTREAM_SECONDS, "route" => spec.path)
        .record(upstream_started.elapsed().as_secs_f64());

    let upstream = match sent {
        Ok(r) => r,
        Err(e) => {
            let (status, err) = if e.is_timeout() {
                (504, AppError::UpstreamTimeout)
            } else {
                (502, AppError::UpstreamError)
            };
            tracing::warn!(error = %e, "upstream request failed");
            ticket.http_status = status;
            ticket.finish("error", Default::default());
            return Err(err);
        }
    };
    let status = upstream.status();
    ticket.http_status = status.as_u16();
    if !status.is_success() {
        let err = upstream_failure(upstream).await;
        ticket.http_status = err.status().as_u16();
        ticket.finish("error", Default::default());
        return Err(err);
    }

    if let (Kind::NativeList | Kind::OpenAiList, Some(patterns)) =
        (spec.kind, access::model_patterns(&caller))
    {
        let response = lists::filtered(upstream, spec.kind, patterns).await;
        ticket.finish(
            if response.is_ok() { "success" } else { "error" },
            Default::default(),
        );
        return response;
    }

    let framing = match spec.kind {
        Kind::NativeGenerate if prepared.facts.stream => Framing::Lines,
        Kind::OpenAiCompletion | Kind::OpenAiOther if prepared.facts.stream => Framing::Events {
            hide_usage_chunk: spec.kind == Kind::OpenAiCompletion
                && !prepared.facts.client_wants_usage,
        },
        Kind::NativeGenerate | Kind::NativeEmbed | Kind::OpenAiCompletion | Kind::OpenAiOther => {
            Framing::Whole
        }
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
    let declared_len = upstream.content_length().filter(|_| !rewrites);
    if let Some(len) = declared_len {
        response = response.header(header::CONTENT_LENGTH, len);
    }
    let stream = Box::pin(upstream.bytes_stream());
    let metered = MeteredBody::new(
        stream,
        Scanner::new(framing),
        ticket,
        app.in_flight.enter(),
        declared_len,
    );
    response
        .body(Body::from_stream(metered))
        .map_err(AppError::internal)
}

/// An authenticated request that passed every check before the upstream (SPEC §5.2)
/// and holds its limiter permit, ready to send.
struct Prepared {
    method: axum::http::Method,
    url: String,
    headers: HeaderMap,
    body: Bytes,
    facts: inspect::RequestFacts,
    model: Option<String>,
    permit: Option<Permit>,
}

/// Checks 2–7 in order; the first that fails refuses the request, which then consumes
/// nothing.
async fn prepare(
    app: &App,
    spec: &'static RouteSpec,
    caller: &auth::Caller,
    request_id: &str,
    req: Request,
    started_at: chrono::DateTime<chrono::Utc>,
) -> Result<Prepared, AppError> {
    access::check_key_state(caller, started_at)?;
    let admin_only = spec.admin_only && app.config.upstream.admin_routes_require_admin;
    access::check_route(caller, req.uri().path(), admin_only)?;

    let method = req.method().clone();
    let path_and_query = req
        .uri()
        .path_and_query()
        .map_or_else(|| req.uri().path(), |p| p.as_str());
    let mut url = String::with_capacity(app.upstream.base.len() + path_and_query.len());
    url.push_str(&app.upstream.base);
    url.push_str(path_and_query);
    let path_model = (spec.kind == Kind::OpenAiModel).then(|| {
        req.uri()
            .path()
            .trim_start_matches("/v1/models/")
            .to_string()
    });
    let mut headers = HeaderMap::new();
    for name in FORWARDED_REQUEST_HEADERS {
        if let Some(v) = req.headers().get(name) {
            headers.insert(name.clone(), v.clone());
        }
    }
    if let Ok(v) = HeaderValue::from_str(request_id) {
        headers.insert(crate::http::request_id::HEADER, v);
    }

    let body = Bytes::from_request(req, &())
        .await
        .map_err(body_rejection)?;
    let json_body = !matches!(spec.kind, Kind::Plain) && !body.is_empty();
    let (facts, body) = if json_body {
        inspect::inspect(spec.kind, body, caller.is_admin(), &app.config.upstream)?
    } else {
        (inspect::RequestFacts::default(), body)
    };
    let model = facts.model.clone().or(path_model);
    if let Some(m) = &model {
        access::check_model(caller, m)?;
    }

    let permit = admit(app, caller, &facts, model.as_deref()).await?;
    Ok(Prepared {
        method,
        url,
        headers,
        body,
        facts,
        model,
        permit,
    })
}

/// A refused request has no usage row (it consumed nothing) but is shown on the live
/// feed, so operators see 403s and 429s as they happen.
fn publish_refusal(
    app: &App,
    caller: &auth::Caller,
    spec: &'static RouteSpec,
    request_id: &Arc<str>,
    started: Instant,
    err: &AppError,
) {
    app.events
        .publish(|| crate::telemetry::events::RequestEvent {
            time: chrono::Utc::now(),
            request_id: request_id.to_string(),
            key_name: caller.label.to_string(),
            key_id: caller.key.as_ref().map(|k| k.key_id.clone()),
            team_id: caller.team_id.clone(),
            model: None,
            route: spec.path.to_string(),
            status: "refused".to_string(),
            http_status: err.status().as_u16(),
            prompt_tokens: 0,
            completion_tokens: 0,
            latency_ms: u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
        });
}

/// The key's and team's limits that are set; none for the master key and admin JWTs.
fn limited_subjects(caller: &auth::Caller) -> Vec<Subject> {
    let mut subjects = Vec::with_capacity(2);
    if caller.is_admin() {
        return subjects;
    }
    if let Some(k) = &caller.key {
        subjects.push(Subject {
            id: Arc::from(format!("key:{}", k.key_id)),
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
            id: Arc::from(format!("team:{}", t.team_id)),
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

/// Admits the request against its key's and team's limits; `None` when unlimited (which
/// `failure_mode: closed` still refuses while Redis is unreachable).
async fn admit(
    app: &App,
    caller: &auth::Caller,
    facts: &inspect::RequestFacts,
    model: Option<&str>,
) -> Result<Option<Permit>, AppError> {
    let subjects = limited_subjects(caller);
    if subjects.is_empty() {
        app.limiter.check_available()?;
        return Ok(None);
    }
    let demand = match facts.output_bound {
        Some(bound) => Demand {
            reserve_tokens: facts.prompt_estimate + bound,
            reserve_cost: app.config.pricing.cost(
                model.unwrap_or(""),
                facts.prompt_estimate,
                bound,
            ),
        },
        None => Demand::default(),
    };
    Ok(Some(app.limiter.admit(&subjects, demand).await?))
}

/// Maps a non-success upstream answer: 4xx keep their status and Ollama's message (it is
/// about the caller's request); 5xx become 502 with nothing upstream-specific.
async fn upstream_failure(upstream: reqwest::Response) -> AppError {
    let status = upstream.status();
    if !status.is_client_error() {
        tracing::warn!(status = status.as_u16(), "upstream server error");
        return AppError::UpstreamError;
    }
    let status = StatusCode::from_u16(status.as_u16()).unwrap_or(StatusCode::BAD_REQUEST);
    let body = upstream.bytes().await.unwrap_or_default();
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

/// The router for every proxied route.
pub fn router() -> axum::Router<Arc<App>> {
    let mut router = axum::Router::new();
    for spec in routes::ROUTES {
        let handler = move |axum::extract::State(app): axum::extract::State<Arc<App>>,
                            req: Request| { forward(app, spec, req) };
        router = router.route(spec.path, axum::routing::on(spec.methods, handler));
    }
    router
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
