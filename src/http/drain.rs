//! Connection reuse after a refusal: the unread rest of a request body is discarded,
//! within bounds, before the response goes out.
//!
//! Most refusals (401, 403, 429, 404, …) are decided from the headers alone, so they are
//! ready before the caller's body has arrived. Answered as is, HTTP/1's keep-alive cannot
//! survive: the bytes still on their way would be read as the next request, so hyper gives
//! up on the connection and closes it — without a `Connection: close`, and a client that
//! sends its next request on it gets a broken pipe. What mature proxies do instead is done
//! here, once, for every route:
//!
//! - the body is watched while the handler runs; if the handler ends without reading it to
//!   its end, the rest is read and thrown away — at most [`DRAIN_MAX_BYTES`] (or
//!   `server.max_body_bytes`, if smaller), for at most [`DRAIN_DEADLINE`] — before the
//!   response is returned, so the connection stays usable;
//! - when that is not possible (the rest is larger, late, or cut off; the caller is
//!   waiting on `Expect: 100-continue` for a decision) the response says
//!   `Connection: close`, as does every 413, so no client sends into a closing socket.
//!
//! Requests without a body (every `GET`) pass untouched; HTTP/2 needs none of this
//! (a stream is reset on its own, the connection lives on).

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use axum::body::{Body, HttpBody};
use axum::extract::Request;
use axum::http::{HeaderValue, StatusCode, Version, header};
use axum::response::Response;
use bytes::Bytes;
use http_body::{Frame, SizeHint};
use tower::{Layer, Service};

/// The most of an unread body discarded to keep a connection: past this a new
/// connection is cheaper than the bytes.
pub const DRAIN_MAX_BYTES: usize = 64 * 1024;
/// How long the rest of an unread body may take to arrive.
pub const DRAIN_DEADLINE: Duration = Duration::from_secs(1);

/// The bounds of [`DrainLayer`]'s discarding.
#[derive(Debug, Clone, Copy)]
pub struct DrainLimits {
    pub max_bytes: usize,
    pub deadline: Duration,
}

impl DrainLimits {
    /// The defaults, never more than the largest body the gateway accepts.
    pub fn for_body_limit(max_body_bytes: usize) -> Self {
        Self {
            max_bytes: DRAIN_MAX_BYTES.min(max_body_bytes),
            deadline: DRAIN_DEADLINE,
        }
    }
}

/// Wraps the router: runs each request with its body watched, then discards what the
/// handler left unread, or marks the response `Connection: close`.
#[derive(Debug, Clone, Copy)]
pub struct DrainLayer {
    pub limits: DrainLimits,
}

impl<S> Layer<S> for DrainLayer {
    type Service = DrainUnreadBody<S>;

    fn layer(&self, inner: S) -> Self::Service {
        DrainUnreadBody {
            inner,
            limits: self.limits,
        }
    }
}

/// The service of [`DrainLayer`].
#[derive(Debug, Clone)]
pub struct DrainUnreadBody<S> {
    inner: S,
    limits: DrainLimits,
}

impl<S> Service<Request> for DrainUnreadBody<S>
where
    S: Service<Request, Response = Response>,
{
    type Response = Response;
    type Error = S::Error;
    type Future = Drained<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request) -> Self::Future {
        if req.version() >= Version::HTTP_2 || req.body().is_end_stream() {
            return Drained::Passed {
                inner: self.inner.call(req),
            };
        }
        let awaits_continue = req
            .headers()
            .get(header::EXPECT)
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"));
        let left = Arc::new(Mutex::new(None));
        let req = req.map(|body| {
            Body::new(Watched {
                inner: Some(body),
                polled: false,
                left: Arc::clone(&left),
            })
        });
        Drained::Watched {
            inner: self.inner.call(req),
            left,
            awaits_continue,
            limits: self.limits,
        }
    }
}

pin_project_lite::pin_project! {
    /// The response future of [`DrainUnreadBody`]. Discarding, the rare case of a
    /// refusal ready before its body, is the only state that allocates.
    #[project = DrainedProj]
    pub enum Drained<F> {
        /// No body to watch.
        Passed { #[pin] inner: F },
        /// The handler runs with its body watched.
        Watched {
            #[pin]
            inner: F,
            left: Arc<Mutex<Option<Unread>>>,
            awaits_continue: bool,
            limits: DrainLimits,
        },
        /// The handler answered without reading its body to the end: the rest is read
        /// and dropped before the answer goes out.
        Discarding {
            discard: Pin<Box<dyn Future<Output = bool> + Send>>,
            response: Option<Response>,
        },
    }
}

impl<F, E> Future for Drained<F>
where
    F: Future<Output = Result<Response, E>>,
{
    type Output = Result<Response, E>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        loop {
            let next = match self.as_mut().project() {
                DrainedProj::Passed { inner } => return inner.poll(cx),
                DrainedProj::Watched {
                    inner,
                    left,
                    awaits_continue,
                    limits,
                } => {
                    let response = ready!(inner.poll(cx))?;
                    let unread = left.lock().ok().and_then(|mut slot| slot.take());
                    match unread {
                        // Read to its end (or still held by the response): nothing to do.
                        None => return Poll::Ready(Ok(finish(response, true))),
                        // Nothing sent yet; the caller waits for our answer before
                        // sending the body.
                        Some(Unread { polled: false, .. }) if *awaits_continue => {
                            return Poll::Ready(Ok(finish(response, false)));
                        }
                        Some(Unread { body, .. }) => Drained::Discarding {
                            discard: Box::pin(discard(body, *limits)),
                            response: Some(response),
                        },
                    }
                }
                DrainedProj::Discarding { discard, response } => {
                    let reusable = ready!(discard.as_mut().poll(cx));
                    let response = response.take().unwrap_or_default();
                    return Poll::Ready(Ok(finish(response, reusable)));
                }
            };
            self.set(next);
        }
    }
}

/// `Connection: close` on a response after which the connection cannot be reused, and
/// on every 413.
fn finish(mut response: Response, reusable: bool) -> Response {
    if !reusable || response.status() == StatusCode::PAYLOAD_TOO_LARGE {
        response
            .headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    response
}

/// Reads `body` to its end within `limits`; `true` if it ended.
async fn discard(mut body: Body, limits: DrainLimits) -> bool {
    if body.size_hint().lower() > limits.max_bytes as u64 {
        return false;
    }
    let read = async {
        let mut seen = 0usize;
        while let Some(frame) = std::future::poll_fn(|cx| Pin::new(&mut body).poll_frame(cx)).await
        {
            let Ok(frame) = frame else { return false };
            if let Some(data) = frame.data_ref() {
                seen = seen.saturating_add(data.len());
                if seen > limits.max_bytes {
                    return false;
                }
            }
        }
        true
    };
    tokio::time::timeout(limits.deadline, read)
        .await
        .unwrap_or(false)
}

/// A body the handler dropped before its end.
pub struct Unread {
    body: Body,
    /// Whether anything asked for it (which, with `Expect: 100-continue`, told the
    /// caller to send it).
    polled: bool,
}

/// The request body as the handler sees it; dropped unfinished, it hands itself back.
struct Watched {
    inner: Option<Body>,
    polled: bool,
    left: Arc<Mutex<Option<Unread>>>,
}

impl HttpBody for Watched {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        let this = &mut *self;
        this.polled = true;
        let Some(inner) = this.inner.as_mut() else {
            return Poll::Ready(None);
        };
        let frame = Pin::new(inner).poll_frame(cx);
        if let Poll::Ready(None) = frame {
            this.inner = None;
        }
        frame
    }

    fn is_end_stream(&self) -> bool {
        self.inner.as_ref().is_none_or(HttpBody::is_end_stream)
    }

    fn size_hint(&self) -> SizeHint {
        self.inner
            .as_ref()
            .map_or_else(|| SizeHint::with_exact(0), HttpBody::size_hint)
    }
}

impl Drop for Watched {
    fn drop(&mut self) {
        let Some(body) = self.inner.take() else {
            return;
        };
        if body.is_end_stream() {
            return;
        }
        if let Ok(mut slot) = self.left.lock() {
            *slot = Some(Unread {
                body,
                polled: self.polled,
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_short_rest_is_discarded_and_a_long_one_is_not() {
        let limits = DrainLimits {
            max_bytes: 8,
            deadline: Duration::from_secs(5),
        };
        assert!(discard(Body::from("12345678"), limits).await);
        assert!(!discard(Body::from("123456789"), limits).await);
        assert_eq!(DrainLimits::for_body_limit(10).max_bytes, 10);
        assert_eq!(
            DrainLimits::for_body_limit(usize::MAX).max_bytes,
            DRAIN_MAX_BYTES
        );
    }

    #[tokio::test]
    async fn a_rest_that_never_comes_is_given_up() {
        let limits = DrainLimits {
            max_bytes: 8,
            deadline: Duration::from_millis(10),
        };
        let never =
            Body::from_stream(futures_util::stream::pending::<Result<Bytes, axum::Error>>());
        assert!(!discard(never, limits).await);
    }
}
