//! tollgate: a virtual-key gateway in front of Ollama.
//!
//! The modules form layers; each may use the layers below it and never one above
//! (`tests/architecture.rs` enforces this, and the README draws it):
//!
//! 1. **Foundation** — [`config`] (the YAML configuration), [`error`] (the one error
//!    envelope), [`json`] (caller JSON with field-naming errors), [`request_id`],
//!    [`outbound`] (outbound HTTP clients and their TLS provider), [`tasks`] (the owner
//!    of background tasks), [`telemetry`] (logs and metrics).
//! 2. **Storage** — [`store`]: the database (sea-orm, SQLite or PostgreSQL), the Redis
//!    connection and the shared cache.
//! 3. **Domain** — [`auth`] (credentials → caller, authorisation, mappings, tickets),
//!    [`limits`] (admission), [`usage`] (spend recording, budget periods, the live
//!    feed), [`upstream`] (the Ollama client).
//! 4. **Services** — [`services`]: the proxy pipeline and key/team/mapping/spend
//!    management, each built from domain parts.
//! 5. **Composition** — [`app`]: builds every component from the parts it uses; the
//!    state the handlers receive.
//! 6. **HTTP** — [`http`]: handlers, router, extractors, the OpenAPI document, the
//!    console's assets.
//! 7. **Serving** — [`server`] (serving, graceful shutdown) and the `tollgate` binary.

pub mod app;
pub mod auth;
pub mod config;
pub mod error;
pub mod http;
pub mod json;
pub mod limits;
pub mod outbound;
pub mod request_id;
pub mod server;
pub mod services;
pub mod store;
pub mod tasks;
pub mod telemetry;
pub mod upstream;
pub mod usage;
