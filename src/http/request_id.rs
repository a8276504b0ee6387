//! `X-Request-ID`: accept a well-formed incoming id (≤128 chars of `[A-Za-z0-9._-]`) when
//! `server.trusted_request_id` is on, otherwise mint a UUID; expose it to the rest of the
//! request through a task-local and echo it on every response.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::HeaderValue;
use axum::middleware::Next;
use axum::response::Response;

pub const HEADER: &str = "x-request-id";

/// The id of the request being served. Cheap to clone.
#[derive(Debug, Clone)]
pub struct RequestId(pub Arc<str>);

tokio::task_local! {
    static CURRENT: RequestId;
}

/// The id of the request this task is serving, or `"-"` outside a request.
pub fn current_request_id() -> Arc<str> {
    CURRENT
        .try_with(|id| id.0.clone())
        .unwrap_or_else(|_| Arc::from("-"))
}

pub fn is_well_formed(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 128
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// Middleware: assign the id, run the request inside its scope, stamp the response.
pub async fn assign(State(trusted): State<bool>, mut req: Request, next: Next) -> Response {
    let incoming = req
        .headers()
        .get(HEADER)
        .and_then(|v| v.to_str().ok())
        .filter(|v| trusted && is_well_formed(v));
    let id: Arc<str> = match incoming {
        Some(v) => Arc::from(v),
        None => Arc::from(uuid::Uuid::new_v4().to_string()),
    };
    let header = HeaderValue::from_str(&id).unwrap_or_else(|_| HeaderValue::from_static("-"));
    let request_id = RequestId(id);
    req.extensions_mut().insert(request_id.clone());
    let mut response = CURRENT.scope(request_id, next.run(req)).await;
    response.headers_mut().insert(HEADER, header);
    response
}

#[cfg(test)]
mod tests {
    use super::is_well_formed;

    #[test]
    fn accepts_only_safe_ids() {
        assert!(is_well_formed("abc-123_x.y"));
        assert!(is_well_formed(&"a".repeat(128)));
        assert!(!is_well_formed(&"a".repeat(129)));
        assert!(!is_well_formed(""));
        assert!(!is_well_formed("a b"));
        assert!(!is_well_formed("a\"b"));
        assert!(!is_well_formed("ünï"));
    }
}
