//! The admin console (SPEC §10): a single-page app served from assets embedded in the
//! binary, plus the two routes behind its live request feed.
//!
//! - `GET /ui` (and `/ui/app.js`, `/ui/app.css`): the console. Static, no secrets, no
//!   external resources; it signs in with the master key or an admin JWT and calls the
//!   management API with it.
//! - `POST /auth/ws-ticket` (authenticated, `spend:read`): a single-use ticket for
//!   the WebSocket, see [`crate::auth::tickets`].
//! - `GET /ws/events?ticket=…`: the live feed, see [`ws`].

pub mod ws;

use std::sync::Arc;

use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use serde::Serialize;

use super::gate::gated;
use crate::app::App;
use crate::auth::Caller;
use crate::auth::authorize::{Capability, check};
use crate::auth::tickets::{Grant, TICKET_TTL};
use crate::error::AppError;
use crate::telemetry::redact;

const INDEX_HTML: &str = include_str!("assets/index.html");
const APP_JS: &str = include_str!("assets/app.js");
const APP_CSS: &str = include_str!("assets/app.css");

/// The console's routes, ready to merge into the main router.
pub fn router(app: &Arc<App>) -> Router<Arc<App>> {
    Router::new()
        .route(
            "/auth/ws-ticket",
            gated(app, Capability::SpendRead, post(issue_ticket)),
        )
        .route("/ws/events", get(ws::events))
        .route("/ui", get(index))
        .route("/ui/", get(|| async { Redirect::permanent("/ui") }))
        .route("/ui/app.js", get(app_js))
        .route("/ui/app.css", get(app_css))
}

/// A single-use ticket for `GET /ws/events?ticket=…`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct IssuedTicket {
    pub ticket: String,
    /// Seconds the ticket stays valid.
    pub ttl_seconds: u64,
}

/// `POST /auth/ws-ticket`. Proxy admins' tickets see every request; a team role's
/// ticket sees only its own team's requests.
#[utoipa::path(
    post, path = "/auth/ws-ticket", tag = "console",
    responses(
        (status = 200, description = "A single-use ticket for the live feed", body = IssuedTicket),
        crate::http::openapi::ManageErrors,
    ),
    security(("bearer" = [])),
)]
async fn issue_ticket(
    State(app): State<Arc<App>>,
    Extension(caller): Extension<Caller>,
) -> Result<Response, AppError> {
    let team_id = if check(&caller, Capability::SpendRead, None).is_ok() {
        None
    } else {
        let team = caller
            .team_id
            .clone()
            .ok_or_else(|| AppError::Forbidden("not allowed to perform this action".into()))?;
        check(&caller, Capability::SpendRead, Some(&team))?;
        Some(team)
    };
    let grant = Grant {
        label: caller.label.to_string(),
        team_id,
    };
    let ticket = app
        .tickets
        .issue(&grant)
        .await
        .map_err(|e| AppError::Unavailable(e.into()))?;
    tracing::info!(ticket = %redact(&ticket), caller = %caller.label, "issued a console ticket");
    let body = IssuedTicket {
        ticket,
        ttl_seconds: TICKET_TTL.as_secs(),
    };
    let mut response = Json(body).into_response();
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(response)
}

/// The console page may load only its own script and style sheet and talk only to this
/// origin (the management API and the feed).
const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; \
    style-src 'self'; img-src 'self' data:; connect-src 'self'; base-uri 'none'; \
    form-action 'none'; frame-ancestors 'none'";

fn asset(body: &'static str, content_type: &'static str) -> Response {
    (
        StatusCode::OK,
        [
            (header::CONTENT_TYPE, content_type),
            (header::CACHE_CONTROL, "no-cache"),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            (header::REFERRER_POLICY, "no-referrer"),
            (header::X_FRAME_OPTIONS, "DENY"),
            (header::CONTENT_SECURITY_POLICY, CONTENT_SECURITY_POLICY),
        ],
        body,
    )
        .into_response()
}

/// The admin console (a single-page app; it signs in with the master key or an admin JWT).
#[utoipa::path(
    get, path = "/ui", tag = "console",
    responses((status = 200, description = "The console page", content_type = "text/html", body = String)),
)]
async fn index() -> Response {
    asset(INDEX_HTML, "text/html; charset=utf-8")
}

async fn app_js() -> Response {
    asset(APP_JS, "text/javascript; charset=utf-8")
}

async fn app_css() -> Response {
    asset(APP_CSS, "text/css; charset=utf-8")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn assets_reference_nothing_outside_the_binary() {
        for (name, text) in [
            ("index.html", INDEX_HTML),
            ("app.js", APP_JS),
            ("app.css", APP_CSS),
        ] {
            assert!(!text.contains("http://"), "{name} mentions http://");
            assert!(!text.contains("https://"), "{name} mentions https://");
            assert!(!text.contains("@import"), "{name} imports a style sheet");
        }
        assert!(INDEX_HTML.contains(r#"<script src="/ui/app.js""#));
        assert!(INDEX_HTML.contains(r#"href="/ui/app.css""#));
    }
}
