//! Test and benchmark support for tollgate: a mock Ollama speaking the real wire format
//! ([`ollama::MockOllama`]) and a mock OIDC identity provider with a JWKS of RSA, EC and
//! Ed25519 keys ([`idp::MockIdp`]).
//!
//! Both mocks bind `127.0.0.1:0`, serve on a spawned tokio task and stop when their last
//! handle is dropped. This crate is a dev-dependency only; it never reaches the release
//! binary.

// Test support reports a broken assumption the way a test does: by failing loudly.
#![allow(
    clippy::expect_used,
    clippy::panic,
    reason = "test support: a failed expectation is a failed test"
)]

pub mod idp;
pub mod ollama;
mod server;
