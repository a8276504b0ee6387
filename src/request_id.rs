//! The request id (`X-Request-ID`): its shape, and the task-local through which the rest
//! of a request — the error envelope, the usage row, the upstream call — reads it.
//!
//! A leaf: the envelope ([`crate::error`]) needs the id, and so does everything that
//! logs on a request's behalf, so it must not depend on the HTTP layer that assigns it
//! (`http::middleware`).

use std::future::Future;
use std::sync::Arc;

pub const HEADER: &str = "x-request-id";

/// The id of the request being served. Cheap to clone.
#[derive(Debug, Clone)]
pub struct RequestId(pub Arc<str>);

tokio::task_local! {
    static CURRENT: RequestId;
}

/// Runs `fut` with `id` as the current request id. The future's type is named so that
/// middleware can hold it without boxing.
pub fn scope<F: Future>(
    id: RequestId,
    fut: F,
) -> tokio::task::futures::TaskLocalFuture<RequestId, F> {
    CURRENT.scope(id, fut)
}

/// The id of the request this task is serving, or `"-"` outside a request.
pub fn current_request_id() -> Arc<str> {
    CURRENT
        .try_with(|id| id.0.clone())
        .unwrap_or_else(|_| Arc::from("-"))
}

/// ≤128 characters of `[A-Za-z0-9._-]` (SPEC §4): safe to echo and to log.
pub fn is_well_formed(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 128
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
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
