//! Middleware every request runs through, before routing: `X-Request-ID` assignment and
//! turning a panicking handler into the error envelope.
//!
//! A well-formed incoming id (≤128 chars of `[A-Za-z0-9._-]`) is honoured when
//! `server.trusted_request_id` is on, otherwise a UUID is minted; the request then runs
//! inside the id's scope ([`crate::request_id`]) and the response carries it.
//!
//! Both are tower services with futures of their own type wrapped once around the whole
//! router ([`super::router::build`]). `Router::layer` would wrap every route with them
//! instead, and box each layer's future and clone each layer's service per request: the
//! benchmark measured that as a tenth of the gateway's instructions per request.

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use axum::extract::Request;
use axum::http::HeaderValue;
use axum::response::{IntoResponse, Response};
use futures_util::FutureExt;
use futures_util::future::CatchUnwind;
use tokio::task::futures::TaskLocalFuture;
use tower::{Layer, Service};

use crate::error::AppError;
use crate::request_id::{self, HEADER, RequestId, is_well_formed};

/// Assigns the request id, runs the request inside its scope, stamps the response.
#[derive(Debug, Clone, Copy)]
pub struct RequestIdLayer {
    /// `server.trusted_request_id`: honour a well-formed incoming id.
    pub trusted: bool,
}

impl<S> Layer<S> for RequestIdLayer {
    type Service = AssignRequestId<S>;

    fn layer(&self, inner: S) -> Self::Service {
        AssignRequestId {
            inner,
            trusted: self.trusted,
        }
    }
}

/// The service of [`RequestIdLayer`].
#[derive(Debug, Clone)]
pub struct AssignRequestId<S> {
    inner: S,
    trusted: bool,
}

impl<S> Service<Request> for AssignRequestId<S>
where
    S: Service<Request, Response = Response>,
{
    type Response = Response;
    type Error = S::Error;
    type Future = Stamped<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request) -> Self::Future {
        let incoming = req
            .headers()
            .get(HEADER)
            .and_then(|v| v.to_str().ok())
            .filter(|v| self.trusted && is_well_formed(v));
        let id: Arc<str> = match incoming {
            Some(v) => Arc::from(v),
            None => {
                let mut buf = uuid::Uuid::encode_buffer();
                Arc::from(&*uuid::Uuid::new_v4().hyphenated().encode_lower(&mut buf))
            }
        };
        let header = HeaderValue::from_str(&id).unwrap_or_else(|_| HeaderValue::from_static("-"));
        let request_id = RequestId(id);
        req.extensions_mut().insert(request_id.clone());
        Stamped {
            inner: request_id::scope(request_id, self.inner.call(req)),
            header: Some(header),
        }
    }
}

pin_project_lite::pin_project! {
    /// The response future of [`AssignRequestId`]: the request's own, inside the id's
    /// scope, with the id's header added to what it answers.
    pub struct Stamped<F> {
        #[pin]
        inner: TaskLocalFuture<RequestId, F>,
        header: Option<HeaderValue>,
    }
}

impl<F, E> Future for Stamped<F>
where
    F: Future<Output = Result<Response, E>>,
{
    type Output = Result<Response, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let mut response = ready!(this.inner.poll(cx))?;
        if let Some(header) = this.header.take() {
            response.headers_mut().insert(HEADER, header);
        }
        Poll::Ready(Ok(response))
    }
}

/// A handler that panics answers 500 in the envelope; the connection and every other
/// request go on.
#[derive(Debug, Clone, Copy)]
pub struct CatchPanicLayer;

impl<S> Layer<S> for CatchPanicLayer {
    type Service = CatchPanic<S>;

    fn layer(&self, inner: S) -> Self::Service {
        CatchPanic { inner }
    }
}

/// The service of [`CatchPanicLayer`].
#[derive(Debug, Clone)]
pub struct CatchPanic<S> {
    inner: S,
}

impl<S> Service<Request> for CatchPanic<S>
where
    S: Service<Request, Response = Response>,
{
    type Response = Response;
    type Error = S::Error;
    type Future = Caught<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request) -> Self::Future {
        match std::panic::catch_unwind(AssertUnwindSafe(|| self.inner.call(req))) {
            Ok(future) => Caught {
                inner: Some(AssertUnwindSafe(future).catch_unwind()),
            },
            Err(_) => Caught { inner: None },
        }
    }
}

pin_project_lite::pin_project! {
    /// The response future of [`CatchPanic`]; `None` when the call itself panicked.
    pub struct Caught<F> {
        #[pin]
        inner: Option<CatchUnwind<AssertUnwindSafe<F>>>,
    }
}

impl<F, E> Future for Caught<F>
where
    F: Future<Output = Result<Response, E>>,
{
    type Output = Result<Response, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().inner.as_pin_mut() {
            None => Poll::Ready(Ok(panic_response())),
            Some(inner) => Poll::Ready(match ready!(inner.poll(cx)) {
                Ok(result) => result,
                // The payload is not logged: a panic message may quote request data.
                Err(_) => Ok(panic_response()),
            }),
        }
    }
}

fn panic_response() -> Response {
    AppError::internal(anyhow::anyhow!("a request handler panicked")).into_response()
}
