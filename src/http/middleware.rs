//! Middleware every route runs through: `X-Request-ID` assignment.
//!
//! A well-formed incoming id (≤128 chars of `[A-Za-z0-9._-]`) is honoured when
//! `server.trusted_request_id` is on, otherwise a UUID is minted; the request then runs
//! inside the id's scope ([`crate::request_id`]) and the response carries it.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::HeaderValue;
use axum::middleware::Next;
use axum::response::Response;

use crate::request_id::{self, HEADER, RequestId, is_well_formed};

/// Assigns the id, runs the request inside its scope, stamps the response.
pub async fn assign_request_id(
    State(trusted): State<bool>,
    mut req: Request,
    next: Next,
) -> Response {
    let incoming = req
        .headers()
        .get(HEADER)
        .and_then(|v| v.to_str().ok())
        .filter(|v| trusted && is_well_formed(v));
    let id: Arc<str> = match incoming {
        Some(v) => Arc::from(v),
        None => Arc::from(uuid::Uuid::new_v4().to_string()),
    };
    let header = HeaderValue::from_str(&id).unwrap_or_else(|_| HeaderValue::from_static("-"));
    let request_id = RequestId(id);
    req.extensions_mut().insert(request_id.clone());
    let mut response = request_id::scope(request_id, next.run(req)).await;
    response.headers_mut().insert(HEADER, header);
    response
}
