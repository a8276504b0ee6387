//! Builds the router: every route, its middleware and the fallbacks. The same function
//! serves production and tests.

use std::sync::Arc;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::routing::get;
use tower::ServiceBuilder;

use super::drain::{DrainLayer, DrainLimits};
use super::middleware::{CatchPanicLayer, RequestIdLayer};
use super::{admin, console, openapi, ops, proxy};
use crate::app::App;
use crate::error::AppError;

pub fn build(app: Arc<App>) -> Router {
    let trusted = app.config.server.trusted_request_id;
    let body_limit = app.config.server.max_body_bytes;
    let routes = Router::new()
        .route("/healthz", get(ops::healthz))
        .route("/readyz", get(ops::readyz))
        .route("/metrics", get(ops::metrics))
        .route("/openapi.json", get(openapi::openapi_json))
        .merge(proxy::router())
        .merge(admin::router(&app))
        .merge(console::router(&app))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(app);
    // Wrapped around the router once, not around each route (`Router::layer`), so a
    // request crosses one chain of concrete futures (see `middleware`).
    let edge = ServiceBuilder::new()
        // Outermost: whatever answered, an unread body is dealt with before the response
        // goes out, so keep-alive connections survive refusals.
        .layer(DrainLayer {
            limits: DrainLimits::for_body_limit(body_limit),
        })
        .layer(RequestIdLayer { trusted })
        .layer(CatchPanicLayer)
        .layer(DefaultBodyLimit::max(body_limit))
        .service(routes);
    Router::new().fallback_service(edge)
}

/// 404 for every path tollgate does not serve.
pub async fn not_found() -> AppError {
    AppError::NotFound("no such route".into())
}

/// 405 for a known path with the wrong method.
pub async fn method_not_allowed() -> AppError {
    AppError::MethodNotAllowed
}
