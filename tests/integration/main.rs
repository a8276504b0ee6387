//! tollgate's integration tests: one test binary, one module per area. Adding a test file
//! is one `mod` line here; the harness lives in [`support`].
//!
//! PostgreSQL and Redis tests run when `TEST_DATABASE_URL` / `TEST_REDIS_URL` are set and
//! otherwise print `skipped: … not set` and pass (see `.ci/run`, which sets both).

#![expect(
    clippy::disallowed_methods,
    reason = "tests run servers and clients on their own tasks; the one-owner rule is for the gateway"
)]
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test support fails the test the way a test does"
)]

#[macro_use]
mod support;

mod audit;
mod browser;
mod cli;
mod clients;
mod console;
mod fleet;
mod foundation;
mod hop;
mod invalidation;
mod jwt;
mod jwt_providers;
mod jwt_support;
mod keepalive;
mod keys;
mod keys_support;
mod limits;
mod limits_shared;
mod mappings;
mod model_policy;
mod openapi;
mod proxy;
mod queue;
mod retention;
mod rotation;
mod slots_shared;
mod storage;
mod teams;
mod webhook;
