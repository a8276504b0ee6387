//! `/upstream/*` handlers: the Ollama servers' status, drain and undrain (SPEC §11).

use std::sync::Arc;

use axum::extract::State;
use axum::{Extension, Json};

use crate::app::App;
use crate::auth::Caller;
use crate::error::AppError;
use crate::http::extract::ApiJson;
use crate::http::openapi::{ManageErrors, NotFoundError};
use crate::services::upstreams::{FleetStatus, ServerName};
use crate::upstream::ServerStatus;

/// Every server's state, models, loaded models and in-flight requests, and this
/// instance's queue.
#[utoipa::path(
    get, path = "/upstream/status", tag = "upstream",
    responses(
        (status = 200, description = "The servers and the queue", body = FleetStatus),
        ManageErrors,
    ),
    security(("bearer" = [])),
)]
pub async fn status(
    State(app): State<Arc<App>>,
    Extension(caller): Extension<Caller>,
) -> Result<Json<FleetStatus>, AppError> {
    app.upstream_service.status(&caller).map(Json)
}

/// Stops routing new requests to a server; its requests in flight finish.
#[utoipa::path(
    post, path = "/upstream/drain", tag = "upstream",
    request_body = ServerName,
    responses(
        (status = 200, description = "The server, now draining", body = ServerStatus),
        ManageErrors, NotFoundError,
    ),
    security(("bearer" = [])),
)]
pub async fn drain(
    State(app): State<Arc<App>>,
    Extension(caller): Extension<Caller>,
    ApiJson(req): ApiJson<ServerName>,
) -> Result<Json<ServerStatus>, AppError> {
    app.upstream_service
        .set_draining(&caller, &req.name, true)
        .await
        .map(Json)
}

/// Resumes routing new requests to a drained server.
#[utoipa::path(
    post, path = "/upstream/undrain", tag = "upstream",
    request_body = ServerName,
    responses(
        (status = 200, description = "The server, back in service", body = ServerStatus),
        ManageErrors, NotFoundError,
    ),
    security(("bearer" = [])),
)]
pub async fn undrain(
    State(app): State<Arc<App>>,
    Extension(caller): Extension<Caller>,
    ApiJson(req): ApiJson<ServerName>,
) -> Result<Json<ServerStatus>, AppError> {
    app.upstream_service
        .set_draining(&caller, &req.name, false)
        .await
        .map(Json)
}
