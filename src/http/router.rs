//! Builds the router: every route, its middleware and the fallbacks. The same function
//! serves production and tests.

use std::sync::Arc;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use tower_http::catch_panic::CatchPanicLayer;

use super::error::{AppError, method_not_allowed, not_found};
use super::{openapi, ops, request_id};
use crate::app::App;

pub fn build(app: Arc<App>) -> Router {
    let trusted = app.config.server.trusted_request_id;
    let body_limit = app.config.server.max_body_bytes;
    Router::new()
        .route("/healthz", get(ops::healthz))
        .route("/readyz", get(ops::readyz))
        .route("/metrics", get(ops::metrics))
        .route("/openapi.json", get(openapi::openapi_json))
        .merge(crate::proxy::router())
        .merge(crate::admin::router(app.clone()))
        .merge(crate::console::router(app.clone()))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(body_limit))
        .layer(CatchPanicLayer::custom(panic_response))
        .layer(axum::middleware::from_fn_with_state(
            trusted,
            request_id::assign,
        ))
        .with_state(app)
}

fn panic_response(_panic: Box<dyn std::any::Any + Send + 'static>) -> Response {
    AppError::internal(anyhow::anyhow!("a request handler panicked")).into_response()
}
