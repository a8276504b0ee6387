//! `GET /spend/logs`: one row per proxied request.

use std::sync::Arc;

use axum::extract::State;
use axum::{Extension, Json};
use chrono::{DateTime, NaiveDate, Utc};
use serde::Deserialize;
use utoipa::IntoParams;

use crate::app::App;
use crate::auth::Caller;
use crate::auth::authorize::{Capability, check};
use crate::http::AppError;
use crate::http::extract::ApiQuery;
use crate::http::openapi::ManageErrors;
use crate::store::{UsageFilter, UsageRow};

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct LogsQuery {
    key_id: Option<String>,
    team_id: Option<String>,
    /// Earliest start: an RFC 3339 time or a `YYYY-MM-DD` date (midnight UTC).
    start: Option<String>,
    /// Latest start: an RFC 3339 time or a `YYYY-MM-DD` date (midnight UTC).
    end: Option<String>,
    /// At most this many rows, 1-10000 (default 100).
    limit: Option<u64>,
}

/// RFC 3339 timestamps or plain `YYYY-MM-DD` dates (midnight UTC).
fn parse_time(field: &str, value: Option<&str>) -> Result<Option<DateTime<Utc>>, AppError> {
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

/// One row per proxied request, newest first.
#[utoipa::path(
    get, path = "/spend/logs", tag = "spend",
    params(LogsQuery),
    responses(
        (status = 200, description = "Usage rows", body = Vec<UsageRow>),
        ManageErrors,
    ),
    security(("bearer" = [])),
)]
pub async fn logs(
    State(app): State<Arc<App>>,
    Extension(caller): Extension<Caller>,
    ApiQuery(q): ApiQuery<LogsQuery>,
) -> Result<Json<Vec<UsageRow>>, AppError> {
    let team_scope = match (&q.team_id, &q.key_id) {
        (Some(t), _) => Some(t.clone()),
        (None, Some(k)) => app.store.key_by_id(k).await?.and_then(|k| k.team_id),
        (None, None) => None,
    };
    check(&caller, Capability::SpendRead, team_scope.as_deref())?;
    let limit = q.limit.unwrap_or(100);
    if limit == 0 || limit > 10_000 {
        return Err(AppError::invalid(
            "field `limit` must be between 1 and 10000",
        ));
    }
    let filter = UsageFilter {
        key_id: q.key_id,
        team_id: q.team_id,
        start: parse_time("start", q.start.as_deref())?,
        end: parse_time("end", q.end.as_deref())?,
        limit,
    };
    Ok(Json(app.store.spend_logs(&filter).await?))
}
