//! Usage queries: `/spend/logs`, authorised per team.

use std::sync::Arc;

use chrono::{DateTime, NaiveDate, Utc};
use serde::Deserialize;
use utoipa::IntoParams;

use crate::auth::Caller;
use crate::auth::authorize::{Capability, check};
use crate::error::AppError;
use crate::store::{Store, UsageFilter, UsageRow};

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct LogsQuery {
    pub key_id: Option<String>,
    pub team_id: Option<String>,
    /// Earliest start: an RFC 3339 time or a `YYYY-MM-DD` date (midnight UTC).
    pub start: Option<String>,
    /// Latest start: an RFC 3339 time or a `YYYY-MM-DD` date (midnight UTC).
    pub end: Option<String>,
    /// At most this many rows, 1-10000 (default 100).
    pub limit: Option<u64>,
}

/// RFC 3339 timestamps or plain `YYYY-MM-DD` dates (midnight UTC).
pub(super) fn parse_time(
    field: &str,
    value: Option<&str>,
) -> Result<Option<DateTime<Utc>>, AppError> {
    let Some(v) = value else { return Ok(None) };
    if let Ok(t) = DateTime::parse_from_rfc3339(v) {
        return Ok(Some(t.with_timezone(&Utc)));
    }
    NaiveDate::parse_from_str(v, "%Y-%m-%d")
        .ok()
        .and_then(|d| d.and_hms_opt(0, 0, 0))
        .map(|t| Some(t.and_utc()))
        .ok_or_else(|| {
            AppError::invalid(format!("field `{field}` must be a date or RFC 3339 time"))
        })
}

/// Reads usage rows; long-lived, built from the store.
pub struct SpendService {
    store: Arc<dyn Store>,
}

impl SpendService {
    pub fn new(store: Arc<dyn Store>) -> Self {
        Self { store }
    }

    /// One row per proxied request, newest first, as far as `caller` may see.
    pub async fn logs(&self, caller: &Caller, q: LogsQuery) -> Result<Vec<UsageRow>, AppError> {
        let team_scope = match (&q.team_id, &q.key_id) {
            (Some(t), _) => Some(t.clone()),
            (None, Some(k)) => self.store.key_by_id(k).await?.and_then(|k| k.team_id),
            (None, None) => None,
        };
        check(caller, Capability::SpendRead, team_scope.as_deref())?;
        let limit = super::paging::limit(q.limit, 100, super::paging::MAX_LOG_ROWS)?;
        let filter = UsageFilter {
            key_id: q.key_id,
            team_id: q.team_id,
            start: parse_time("start", q.start.as_deref())?,
            end: parse_time("end", q.end.as_deref())?,
            limit,
        };
        Ok(self.store.spend_logs(&filter).await?)
    }
}
