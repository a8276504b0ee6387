//! sea-orm entities for tollgate's tables, one module per table.
//!
//! List-valued and free-form columns (`models`, `allowed_routes`, `metadata`) are stored as
//! JSON text so the same schema works unchanged on SQLite and PostgreSQL.

pub mod audit_log;
pub mod jwt_key_mapping;
pub mod team;
pub mod usage_log;
pub mod virtual_key;
