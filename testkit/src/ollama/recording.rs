//! What the mock Ollama saw: one [`ReceivedRequest`] per request, in arrival order.

use bytes::Bytes;

/// A request as the mock Ollama received it (recorded before any failure or delay is
/// applied, so hanging and failing requests are recorded too).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReceivedRequest {
    /// `GET`, `POST`, `HEAD`, `DELETE`, ...
    pub method: String,
    /// The path without the query string, e.g. `/api/chat`.
    pub path: String,
    /// The raw query string, if any (without the `?`).
    pub query: Option<String>,
    /// Every header in arrival order; names are lowercase, values lossily decoded.
    pub headers: Vec<(String, String)>,
    /// The full request body.
    pub body: Bytes,
}

impl ReceivedRequest {
    /// The body parsed as JSON; `Value::Null` for an empty body.
    ///
    /// # Panics
    /// If the body is not empty and not valid JSON (a test-support convenience).
    pub fn json(&self) -> serde_json::Value {
        if self.body.is_empty() {
            return serde_json::Value::Null;
        }
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "testkit: body of {} {} is not JSON ({e}): {:?}",
                self.method,
                self.path,
                String::from_utf8_lossy(&self.body)
            )
        })
    }

    /// The first value of header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// Every value of header `name` (case-insensitive), in arrival order.
    pub fn header_all(&self, name: &str) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
            .collect()
    }
}
