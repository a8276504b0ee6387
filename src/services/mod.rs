//! Services: what the HTTP handlers call. Each is long-lived, built by the composition
//! root from the domain parts it uses, and knows nothing of routes or extractors.
//!
//! - [`proxy`]: the proxy pipeline — authenticate, check (SPEC §5.2), admit, send,
//!   meter the response and record its usage.
//! - [`keys`], [`teams`], [`mappings`]: management of virtual keys, teams and JWT
//!   mappings — validation, authorisation per team, storage and cache invalidation.
//! - [`spend`]: usage queries; [`audit`]: the audit log.
//! - [`upstreams`]: the Ollama servers' status, drain and undrain.
//! - [`paging`]: the list routes' shared bounds.

pub mod audit;
pub mod keys;
pub mod mappings;
pub mod paging;
pub mod proxy;
pub mod spend;
pub mod teams;
pub mod upstreams;
