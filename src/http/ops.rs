//! Operational endpoints: `/healthz`, `/readyz`, `/metrics` (no authentication).

use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use crate::app::App;

/// 200 while the process serves.
#[utoipa::path(
    get, path = "/healthz", tag = "operations",
    responses((status = 200, description = "The process serves", body = Object,
        example = json!({"status": "ok"}))),
)]
pub async fn healthz() -> Json<serde_json::Value> {
    Json(json!({"status": "ok"}))
}

/// 200 when the database (and Redis, if configured) answer; else 503 naming the failed
/// dependency — and nothing more.
#[utoipa::path(
    get, path = "/readyz", tag = "operations",
    responses(
        (status = 200, description = "Every dependency answers", body = Object,
            example = json!({"status": "ready"})),
        (status = 503, description = "A dependency does not answer", body = Object,
            example = json!({"status": "unavailable", "failed": ["database"]})),
    ),
)]
pub async fn readyz(State(app): State<Arc<App>>) -> Response {
    let mut failed = Vec::new();
    if app.store.ping().await.is_err() {
        failed.push("database");
    }
    if let Some(redis) = &app.redis
        && redis.ping().await.is_err()
    {
        failed.push("redis");
    }
    if failed.is_empty() {
        Json(json!({"status": "ready"})).into_response()
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"status": "unavailable", "failed": failed})),
        )
            .into_response()
    }
}

/// Prometheus text exposition.
#[utoipa::path(
    get, path = "/metrics", tag = "operations",
    responses((status = 200, description = "Prometheus text format",
        content_type = "text/plain; version=0.0.4", body = String)),
)]
pub async fn metrics(State(app): State<Arc<App>>) -> Response {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        app.metrics.render(),
    )
        .into_response()
}
