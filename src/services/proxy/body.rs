//! `MeteredBody`: the response stream handed to the client. Forwards every chunk as soon
//! as Ollama sends it, counts tokens on the way, and records exactly one usage row when
//! the stream ends, fails, is cancelled by shutdown, or is dropped by a departed client.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::Bytes;
use http_body::Frame;
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};

use super::InFlightGuard;
use super::meter::{Scanner, Tokens};
use crate::config::PricingConfig;
use crate::limits::Limiter;
use crate::store::{RequestStatus, UsageRow};
use crate::upstream::UpstreamBody;
use crate::usage::{EventFeed, RequestEvent, SpendRecorder};

/// Where a finished request's usage goes: the limiter is settled with the real tokens,
/// the cost is priced, the live feed hears of it and the usage row is queued.
pub struct UsageSink {
    pub pricing: PricingConfig,
    pub limiter: Arc<Limiter>,
    pub events: EventFeed,
    pub spend: SpendRecorder,
}

/// Everything needed to write the request's usage row once it finishes.
pub struct UsageTicket {
    pub sink: Arc<UsageSink>,
    pub request_id: Arc<str>,
    pub key_id: Option<String>,
    pub team_id: Option<String>,
    pub user_id: Option<String>,
    pub label: Arc<str>,
    pub model: Option<String>,
    pub route: &'static str,
    pub metrics: Option<&'static crate::telemetry::RouteMetrics>,
    pub http_status: u16,
    pub started_at: chrono::DateTime<chrono::Utc>,
    pub started: Instant,
    /// The limiter's claim, settled with the real usage when the request ends.
    pub permit: Option<crate::limits::Permit>,
    /// The server that answered, and the slot held there until the response ends.
    pub server: Option<Arc<str>>,
    pub lease: Option<crate::upstream::Lease>,
    /// Set once the row is recorded; a ticket dropped before that records `cancelled`.
    pub recorded: bool,
}

impl UsageTicket {
    /// Settles the limiter and hands the row (and the request's log line) to the recorder.
    pub fn finish(&mut self, status: RequestStatus, tokens: Tokens) {
        if std::mem::replace(&mut self.recorded, true) {
            return;
        }
        let model = self.model.as_deref().unwrap_or("");
        let sink = &*self.sink;
        let spend = sink.pricing.cost(model, tokens.prompt, tokens.completion);
        if let Some(permit) = self.permit.take() {
            sink.limiter
                .settle(permit, tokens.prompt + tokens.completion, spend);
        }
        // The server's slot is free again; the next waiter may have it.
        drop(self.lease.take());
        let duration = self.started.elapsed();
        if let Some(metrics) = self.metrics {
            metrics.finished(status.as_str(), duration);
        }
        let latency_ms = u64::try_from(duration.as_millis()).unwrap_or(u64::MAX);
        sink.events.publish(|| RequestEvent {
            time: chrono::Utc::now(),
            request_id: self.request_id.to_string(),
            key_name: self.label.to_string(),
            key_id: self.key_id.clone(),
            team_id: self.team_id.clone(),
            model: self.model.clone(),
            route: self.route.to_string(),
            server: self.server.as_deref().map(str::to_string),
            status,
            http_status: self.http_status,
            prompt_tokens: tokens.prompt,
            completion_tokens: tokens.completion,
            latency_ms,
        });
        // The recorder also writes the request's log line, after the response is out.
        sink.spend.record(
            UsageRow {
                request_id: self.request_id.to_string(),
                key_id: self.key_id.take(),
                team_id: self.team_id.take(),
                user_id: self.user_id.take(),
                model: self.model.take(),
                route: self.route.to_string(),
                prompt_tokens: tokens.prompt,
                completion_tokens: tokens.completion,
                spend,
                status,
                http_status: self.http_status,
                started_at: self.started_at,
                duration_ms: latency_ms,
                server: self.server.as_deref().map(str::to_string),
            },
            self.label.clone(),
        );
    }
}

impl Drop for UsageTicket {
    fn drop(&mut self) {
        // The caller left while the request was still being sent upstream.
        self.finish(RequestStatus::Cancelled, Tokens::default());
    }
}

pin_project_lite::pin_project! {
    /// The client's response body: Ollama's, passed through the scanner.
    pub struct MeteredBody {
        upstream: UpstreamBody,
        scanner: Scanner,
        ticket: UsageTicket,
        // Inline, not boxed: one allocation fewer per request.
        #[pin]
        cancelled: WaitForCancellationFutureOwned,
        // Bytes still expected when the upstream declared a length: the response is
        // complete (and recorded) as soon as they have passed, since the server stops
        // polling a body once its declared length is written.
        remaining: Option<u64>,
        _in_flight: InFlightGuard,
    }

    impl PinnedDrop for MeteredBody {
        fn drop(this: Pin<&mut Self>) {
            // The client went away before the end: the upstream request is dropped with
            // us (which cancels it at Ollama) and what was seen so far is recorded.
            let this = this.project();
            finish(this.ticket, this.scanner, RequestStatus::Cancelled);
        }
    }
}

impl MeteredBody {
    pub fn new(
        upstream: UpstreamBody,
        scanner: Scanner,
        mut ticket: UsageTicket,
        in_flight: InFlightGuard,
        declared_len: Option<u64>,
        cancel: CancellationToken,
    ) -> Self {
        if declared_len == Some(0) {
            // An empty body may never be polled: it is complete already.
            finish(&mut ticket, &scanner, RequestStatus::Success);
        }
        Self {
            upstream,
            scanner,
            ticket,
            cancelled: cancel.cancelled_owned(),
            remaining: declared_len,
            _in_flight: in_flight,
        }
    }
}

/// Records the request (once): the tokens seen, and the load time Ollama reported.
fn finish(ticket: &mut UsageTicket, scanner: &Scanner, status: RequestStatus) {
    if let (Some(lease), Some(ns)) = (ticket.lease.as_mut(), scanner.load_duration_ns) {
        lease.report_load(std::time::Duration::from_nanos(ns));
    }
    ticket.finish(status, scanner.tokens);
}

impl http_body::Body for MeteredBody {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let mut this = self.project();
        if this.ticket.recorded {
            return Poll::Ready(None);
        }
        if this.cancelled.as_mut().poll(cx).is_ready() {
            finish(this.ticket, this.scanner, RequestStatus::Cancelled);
            return Poll::Ready(Some(Err(std::io::Error::other("gateway shutting down"))));
        }
        loop {
            match Pin::new(&mut *this.upstream).poll_frame(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Some(Ok(frame))) => {
                    // Trailers (Ollama sends none) are not forwarded.
                    let Ok(chunk) = frame.into_data() else {
                        continue;
                    };
                    let len = chunk.len() as u64;
                    let out = this.scanner.feed(chunk);
                    if let Some(remaining) = this.remaining.as_mut() {
                        *remaining = remaining.saturating_sub(len);
                        if *remaining == 0 {
                            // Nothing more will be asked of us: read the counts now.
                            let rest = this.scanner.finish();
                            finish(this.ticket, this.scanner, RequestStatus::Success);
                            debug_assert!(rest.is_empty());
                        }
                    }
                    if !out.is_empty() {
                        return Poll::Ready(Some(Ok(Frame::data(out))));
                    }
                    if this.ticket.recorded {
                        return Poll::Ready(None);
                    }
                }
                Poll::Ready(Some(Err(e))) => {
                    let status = if e.is_timeout() {
                        RequestStatus::Timeout
                    } else {
                        RequestStatus::Error
                    };
                    tracing::warn!(%status, error = %e, "upstream stream failed");
                    finish(this.ticket, this.scanner, status);
                    return Poll::Ready(Some(Err(std::io::Error::other("upstream stream failed"))));
                }
                Poll::Ready(None) => {
                    let rest = this.scanner.finish();
                    finish(this.ticket, this.scanner, RequestStatus::Success);
                    return Poll::Ready((!rest.is_empty()).then_some(Ok(Frame::data(rest))));
                }
            }
        }
    }
}
