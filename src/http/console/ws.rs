//! `GET /ws/events?ticket=…`: the console's live request feed over a WebSocket.
//!
//! The ticket is redeemed (consumed) before the upgrade is answered. The upgrade is then
//! always accepted; a bad, used or expired ticket closes the socket at once with 1008
//! (policy violation), so a browser sees a close code instead of an opaque failed
//! handshake. A good ticket streams every finished request the ticket's grant may see,
//! one JSON text message each, until the client leaves or the server shuts down (1001).

use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade, close_code};
use axum::response::Response;
use serde::{Deserialize, Serialize};
use tokio::sync::broadcast::Receiver;
use tokio::sync::broadcast::error::RecvError;
use tokio_util::sync::CancellationToken;

use crate::app::App;
use crate::auth::tickets::Grant;
use crate::error::AppError;
use crate::http::extract::ApiQuery;
use crate::telemetry::redact;
use crate::usage::RequestEvent;

/// Keeps idle sockets alive through proxies and notices peers that vanished.
const PING_EVERY: Duration = Duration::from_secs(25);
/// How long a closing socket waits for the client's close reply.
const CLOSE_WAIT: Duration = Duration::from_secs(2);

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct TicketQuery {
    /// A single-use ticket from `POST /auth/ws-ticket`, valid for 30 seconds.
    ticket: Option<String>,
}

/// One message on the feed: the finished request, plus its total token count.
#[derive(Serialize)]
struct FeedMessage<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    #[serde(flatten)]
    event: &'a RequestEvent,
    tokens: u64,
}

/// Sent when the socket fell behind and the feed skipped events.
#[derive(Serialize)]
struct LaggedMessage {
    #[serde(rename = "type")]
    kind: &'static str,
    missed: u64,
}

fn feed_json(event: &RequestEvent) -> Result<String, serde_json::Error> {
    serde_json::to_string(&FeedMessage {
        kind: "request",
        event,
        tokens: event.prompt_tokens.saturating_add(event.completion_tokens),
    })
}

/// The live request feed (WebSocket).
///
/// Each finished request the ticket may see arrives as one JSON text message
/// (`{"type": "request", …}`). A missing, used or expired ticket closes the socket at
/// once with code 1008.
#[utoipa::path(
    get, path = "/ws/events", tag = "console",
    params(TicketQuery),
    responses(
        (status = 101, description = "Switched to the WebSocket protocol"),
        crate::http::openapi::BadRequestError,
    ),
)]
pub async fn events(
    State(app): State<Arc<App>>,
    ApiQuery(query): ApiQuery<TicketQuery>,
    upgrade: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Result<Response, AppError> {
    let upgrade =
        upgrade.map_err(|_| AppError::invalid("this route accepts only WebSocket upgrades"))?;
    let redeemed = match query.ticket.as_deref() {
        Some(ticket) => {
            let result = app.tickets.redeem(ticket).await;
            if matches!(result, Ok(None)) {
                tracing::info!(ticket = %redact(ticket), "console socket refused: bad ticket");
            }
            result
        }
        None => Ok(None),
    };
    // Subscribe before answering the upgrade: every request that finishes after the
    // client sees the handshake complete is on its feed.
    let feed = match &redeemed {
        Ok(Some(_)) => Some(app.events.subscribe()),
        _ => None,
    };
    let shutdown = Shutdown::of(&app);
    Ok(upgrade.on_upgrade(move |socket| async move {
        match (redeemed, feed) {
            (Ok(Some(grant)), Some(feed)) => stream(socket, grant, feed, shutdown).await,
            (Err(err), _) => {
                tracing::warn!(error = %err, cause = ?err.0, "console socket: ticket store unavailable");
                close(socket, close_code::ERROR, "try again later").await;
            }
            _ => close(socket, close_code::POLICY, "invalid or expired ticket").await,
        }
    }))
}

/// When open sockets must say goodbye (1001): as soon as shutdown starts
/// (`App::stopping`), or at the latest when in-flight work is cancelled (`App::cancel`).
///
/// Axum's graceful shutdown does not track upgraded connections, so sockets close
/// themselves; they must not wait for the drain, which can last the whole grace period.
#[derive(Clone)]
struct Shutdown {
    stopping: CancellationToken,
    cancel: CancellationToken,
}

impl Shutdown {
    fn of(app: &App) -> Self {
        Self {
            stopping: app.stopping.clone(),
            cancel: app.cancel.clone(),
        }
    }

    async fn started(&self) {
        tokio::select! {
            () = self.stopping.cancelled() => {}
            () = self.cancel.cancelled() => {}
        }
    }
}

async fn stream(
    mut socket: WebSocket,
    grant: Grant,
    mut feed: Receiver<RequestEvent>,
    shutdown: Shutdown,
) {
    tracing::debug!(caller = %grant.label, team = ?grant.team_id, "console socket open");
    let mut ping = tokio::time::interval_at(tokio::time::Instant::now() + PING_EVERY, PING_EVERY);
    loop {
        let outgoing = tokio::select! {
            biased;
            () = shutdown.started() => {
                close(socket, close_code::AWAY, "server shutting down").await;
                return;
            }
            incoming = socket.recv() => match incoming {
                // Pings are answered by the protocol layer; clients have nothing to say.
                Some(Ok(Message::Close(_)) | Err(_)) | None => return,
                Some(Ok(_)) => continue,
            },
            event = feed.recv() => match event {
                Ok(event) if grant.sees(event.team_id.as_deref()) => match feed_json(&event) {
                    Ok(text) => Message::Text(text.into()),
                    Err(err) => {
                        tracing::warn!(error = %err, "console socket: cannot encode an event");
                        continue;
                    }
                },
                Ok(_) => continue,
                Err(RecvError::Lagged(missed)) => {
                    let lagged = LaggedMessage { kind: "lagged", missed };
                    match serde_json::to_string(&lagged) {
                        Ok(text) => Message::Text(text.into()),
                        Err(_) => continue,
                    }
                }
                Err(RecvError::Closed) => {
                    close(socket, close_code::AWAY, "server shutting down").await;
                    return;
                }
            },
            _ = ping.tick() => Message::Ping(bytes::Bytes::new()),
        };
        if socket.send(outgoing).await.is_err() {
            return;
        }
    }
}

/// Sends a close frame and waits briefly for the client's reply.
async fn close(mut socket: WebSocket, code: u16, reason: &'static str) {
    let frame = CloseFrame {
        code,
        reason: reason.into(),
    };
    if socket.send(Message::Close(Some(frame))).await.is_err() {
        return;
    }
    drop(
        tokio::time::timeout(CLOSE_WAIT, async {
            while let Some(Ok(_)) = socket.recv().await {}
        })
        .await,
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event() -> RequestEvent {
        RequestEvent {
            time: chrono::Utc::now(),
            request_id: "r1".into(),
            key_name: "sk-…abcd".into(),
            key_id: Some("k1".into()),
            team_id: None,
            model: Some("llama3.1:8b".into()),
            route: "/api/chat".into(),
            server: Some("gpu-a".into()),
            status: crate::store::RequestStatus::Success,
            http_status: 200,
            prompt_tokens: 3,
            completion_tokens: 4,
            latency_ms: 12,
        }
    }

    #[test]
    fn feed_messages_carry_the_event_and_its_total_tokens() -> Result<(), serde_json::Error> {
        let json: serde_json::Value = serde_json::from_str(&feed_json(&event())?)?;
        assert_eq!(json["type"], "request");
        assert_eq!(json["key_name"], "sk-…abcd");
        assert_eq!(json["model"], "llama3.1:8b");
        assert_eq!(json["route"], "/api/chat");
        assert_eq!(json["tokens"], 7);
        assert_eq!(json["latency_ms"], 12);
        Ok(())
    }
}
