//! Audit queries: `/audit/logs` (SPEC §4.2), authorised by `audit:read` — proxy admins
//! see every row, team admins the rows of their team's objects.
//!
//! The rows themselves are written by the store, in the transaction of the change they
//! record (see [`crate::store::Audit`]).

use std::sync::Arc;

use serde::Deserialize;
use utoipa::IntoParams;

use crate::auth::Caller;
use crate::auth::authorize::{Capability, check};
use crate::error::AppError;
use crate::store::{AuditEntry, AuditFilter, AuditObject, Store};

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct AuditQuery {
    /// `key`, `team`, `mapping` or `upstream`.
    pub object_type: Option<AuditObject>,
    /// A `key_id`, `team_id`, mapping `id` or server name.
    pub object_id: Option<String>,
    /// `master_key`, `jwt:<user_id>` or `system:auto_register`.
    pub actor: Option<String>,
    /// Earliest time: an RFC 3339 time or a `YYYY-MM-DD` date (midnight UTC).
    pub start: Option<String>,
    /// Before this time: an RFC 3339 time or a `YYYY-MM-DD` date (midnight UTC).
    pub end: Option<String>,
    /// Rows per page, 1-10000 (default 100).
    pub limit: Option<u64>,
    /// 1-based page of `limit` rows (default 1); a page past the last is empty.
    pub page: Option<u64>,
}

/// Reads the audit log; long-lived, built from the store.
pub struct AuditService {
    store: Arc<dyn Store>,
}

impl AuditService {
    pub fn new(store: Arc<dyn Store>) -> Self {
        Self { store }
    }

    /// Audit rows, newest first, as far as `caller` may see.
    pub async fn logs(&self, caller: &Caller, q: AuditQuery) -> Result<Vec<AuditEntry>, AppError> {
        // Team roles see their own team's objects only; the filter says so, rather than
        // a 403 for rows they could never have asked about by name.
        let team_id = if caller.is_admin() {
            None
        } else {
            check(caller, Capability::AuditRead, caller.team_id.as_deref())?;
            caller.team_id.clone()
        };
        let limit = super::paging::limit(q.limit, 100, super::paging::MAX_LOG_ROWS)?;
        let page = super::paging::page(q.page, Some(1))?.page;
        let filter = AuditFilter {
            object_type: q.object_type,
            object_id: q.object_id,
            actor: q.actor,
            team_id,
            start: super::spend::parse_time("start", q.start.as_deref())?,
            end: super::spend::parse_time("end", q.end.as_deref())?,
            limit,
            page,
        };
        Ok(self.store.audit_logs(&filter).await?)
    }
}
