//! The live request feed: every finished or refused proxied request is published as a
//! [`RequestEvent`] on an in-process broadcast channel, which the console's WebSocket
//! subscribes to. Publishing never blocks and costs nothing when nobody listens.

use serde::Serialize;
use tokio::sync::broadcast;

use crate::store::RequestStatus;

/// One finished request, as the console shows it.
#[derive(Debug, Clone, Serialize)]
pub struct RequestEvent {
    pub time: chrono::DateTime<chrono::Utc>,
    pub request_id: String,
    /// The key's display name (`sk-…a1b2`) or the caller's label; never a secret.
    pub key_name: String,
    pub key_id: Option<String>,
    pub team_id: Option<String>,
    pub model: Option<String>,
    pub route: String,
    /// The Ollama server that answered, if one did.
    pub server: Option<String>,
    pub status: RequestStatus,
    pub http_status: u16,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    pub latency_ms: u64,
}

/// Fan-out of request events.
#[derive(Clone)]
pub struct EventFeed {
    tx: broadcast::Sender<RequestEvent>,
}

impl Default for EventFeed {
    fn default() -> Self {
        let (tx, _) = broadcast::channel(1024);
        Self { tx }
    }
}

impl EventFeed {
    pub fn publish(&self, event: impl FnOnce() -> RequestEvent) {
        if self.tx.receiver_count() > 0 {
            let _ = self.tx.send(event());
        }
    }

    pub fn subscribe(&self) -> broadcast::Receiver<RequestEvent> {
        self.tx.subscribe()
    }
}
