//! Test and benchmark support for tollgate: a mock Ollama speaking the real wire format
//! ([`ollama::MockOllama`]) and a mock OIDC identity provider with a JWKS of RSA, EC and
//! Ed25519 keys ([`idp::MockIdp`]).
//!
//! The mock Ollama also simulates a real server's scheduler when built with
//! [`ollama::MockOllama::builder`] (loads, LRU eviction, `parallel` slots, a bounded
//! queue, counters at `GET /_sim/stats`), and [`ollama::Fleet`] starts several, so the
//! fleet routing (SPEC §8, §11) can be tested and benchmarked without GPUs.
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
pub mod net;
pub mod ollama;
mod server;
