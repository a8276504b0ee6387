//! Management services behind the admin API: validation, storage calls and cache
//! invalidation for keys (and, later, teams and mappings). Handlers in [`crate::admin`]
//! only extract and call these.

pub mod keys;
pub mod mappings;
pub mod teams;
