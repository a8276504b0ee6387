//! `GET /audit/logs`: one row per management change.

use std::sync::Arc;

use axum::extract::State;
use axum::{Extension, Json};

use crate::app::App;
use crate::auth::Caller;
use crate::error::AppError;
use crate::http::extract::ApiQuery;
use crate::http::openapi::ManageErrors;
use crate::services::audit::AuditQuery;
use crate::store::AuditEntry;

/// Management changes, newest first: who, what, the object before and after.
#[utoipa::path(
    get, path = "/audit/logs", tag = "audit",
    params(AuditQuery),
    responses(
        (status = 200, description = "Audit rows (a page past the last is empty)", body = Vec<AuditEntry>),
        ManageErrors,
    ),
    security(("bearer" = [])),
)]
pub async fn logs(
    State(app): State<Arc<App>>,
    Extension(caller): Extension<Caller>,
    ApiQuery(q): ApiQuery<AuditQuery>,
) -> Result<Json<Vec<AuditEntry>>, AppError> {
    app.audit_logs.logs(&caller, q).await.map(Json)
}
