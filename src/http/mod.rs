//! The HTTP layer: the router and everything that speaks axum to a caller — handlers
//! for the management API ([`admin`]), the console ([`console`]), the proxied Ollama
//! routes ([`proxy`]) and operations ([`ops`]); the capability [`gate`]; extractors
//! whose rejections are the error envelope; the request-id middleware; discarding an
//! unread body so keep-alive survives a refusal ([`drain`]); the OpenAPI document.
//!
//! Handlers are thin: extract, call a service ([`crate::services`]), map the result.
//! Errors become responses only through [`crate::error::AppError`].

pub mod admin;
pub mod console;
pub mod drain;
pub mod extract;
pub mod gate;
pub mod middleware;
pub mod openapi;
mod openapi_rules;
pub mod ops;
pub mod proxy;
pub mod router;
