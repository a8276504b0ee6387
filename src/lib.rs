//! tollgate: a virtual-key gateway in front of Ollama.
//!
//! Module map (by concern):
//! - [`config`]: the YAML configuration and its validation.
//! - [`http`]: router, error envelope, request ids, extractors, operational routes.
//! - [`auth`]: credentials → identity (virtual keys, master key, JWT).
//! - [`outbound`]: outbound HTTP clients and their TLS provider.
//! - [`store`]: the database (sea-orm) and Redis connections.
//! - [`telemetry`]: logs and metrics.
//! - [`app`], [`server`]: state assembly, serving and graceful shutdown.

pub mod admin;
pub mod app;
pub mod auth;
pub mod config;
pub mod console;
pub mod http;
pub mod invalidation;
pub mod limits;
pub mod manage;
pub mod outbound;
pub mod proxy;
pub mod server;
pub mod store;
pub mod telemetry;
pub mod usage;
