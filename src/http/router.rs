//! Builds the router: every route, its middleware and the fallbacks. The same function
//! serves production and tests.

use std::sync::Arc;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use tower_http::catch_panic::CatchPanicLayer;

use super::drain::{self, DrainLimits};
use super::{admin, console, middleware, openapi, ops, proxy};
use crate::app::App;
use crate::error::AppError;

pub fn build(app: Arc<App>) -> Router {
    let trusted = app.config.server.trusted_request_id;
    let body_limit = app.config.server.max_body_bytes;
    Router::new()
        .route("/healthz", get(ops::healthz))
        .route("/readyz", get(ops::readyz))
        .route("/metrics", get(ops::metrics))
        .route("/openapi.json", get(openapi::openapi_json))
        .merge(proxy::router())
        .merge(admin::router(&app))
        .merge(console::router(&app))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(body_limit))
        .layer(CatchPanicLayer::custom(panic_response))
        .layer(axum::middleware::from_fn_with_state(
            trusted,
            middleware::assign_request_id,
        ))
        // Outermost: whatever answered, an unread body is dealt with before the response
        // goes out, so keep-alive connections survive refusals.
        .layer(axum::middleware::from_fn_with_state(
            DrainLimits::for_body_limit(body_limit),
            drain::drain_unread_body,
        ))
        .with_state(app)
}

fn panic_response(_panic: Box<dyn std::any::Any + Send + 'static>) -> Response {
    AppError::internal(anyhow::anyhow!("a request handler panicked")).into_response()
}

/// 404 for every path tollgate does not serve.
pub async fn not_found() -> AppError {
    AppError::NotFound("no such route".into())
}

/// 405 for a known path with the wrong method.
pub async fn method_not_allowed() -> AppError {
    AppError::MethodNotAllowed
}
