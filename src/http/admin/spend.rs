//! `GET /spend/logs`: one row per proxied request.

use std::sync::Arc;

use axum::extract::State;
use axum::{Extension, Json};

use crate::app::App;
use crate::auth::Caller;
use crate::error::AppError;
use crate::http::extract::ApiQuery;
use crate::http::openapi::ManageErrors;
use crate::services::spend::LogsQuery;
use crate::store::UsageRow;

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
    app.spend_logs.logs(&caller, q).await.map(Json)
}
