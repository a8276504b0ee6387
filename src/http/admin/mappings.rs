//! `/jwt/key/mapping/*` handlers.

use std::sync::Arc;

use axum::extract::State;
use axum::{Extension, Json};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use crate::app::App;
use crate::auth::Caller;
use crate::error::AppError;
use crate::http::extract::{ApiJson, ApiQuery};
use crate::http::openapi::{BodyTooLarge, ConflictError, ManageErrors, NotFoundError};
use crate::services::mappings::{MappingId, NewMapping, UpdateMapping};
use crate::services::paging::page;
use crate::store::Mapping;

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ListQuery {
    /// 1-based page number (default 1).
    page: Option<u64>,
    /// Page size, 1-1000 (default 50).
    size: Option<u64>,
}

/// `POST /jwt/key/mapping/delete`: the deleted mapping's id.
#[derive(Debug, Serialize, ToSchema)]
pub struct DeletedMapping {
    pub deleted: String,
}

/// `GET /jwt/key/mapping/list`: one page of mappings.
#[derive(Debug, Serialize, ToSchema)]
pub struct MappingList {
    pub mappings: Vec<Mapping>,
    pub total_count: u64,
    pub current_page: u64,
    pub total_pages: u64,
}

/// Maps a JWT claim (name, value, optionally issuer) to a virtual key.
#[utoipa::path(
    post, path = "/jwt/key/mapping/new", tag = "mappings",
    request_body = NewMapping,
    responses(
        (status = 200, description = "The new mapping", body = Mapping),
        ManageErrors, BodyTooLarge, ConflictError,
    ),
    security(("bearer" = [])),
)]
pub async fn create(
    State(app): State<Arc<App>>,
    Extension(caller): Extension<Caller>,
    ApiJson(req): ApiJson<NewMapping>,
) -> Result<Json<Mapping>, AppError> {
    app.mapping_service
        .for_caller(&caller)
        .create(req)
        .await
        .map(Json)
}

/// Changes a mapping.
#[utoipa::path(
    post, path = "/jwt/key/mapping/update", tag = "mappings",
    request_body = UpdateMapping,
    responses(
        (status = 200, description = "The updated mapping", body = Mapping),
        ManageErrors, BodyTooLarge, NotFoundError, ConflictError,
    ),
    security(("bearer" = [])),
)]
pub async fn update(
    State(app): State<Arc<App>>,
    Extension(caller): Extension<Caller>,
    ApiJson(req): ApiJson<UpdateMapping>,
) -> Result<Json<Mapping>, AppError> {
    app.mapping_service
        .for_caller(&caller)
        .update(req)
        .await
        .map(Json)
}

/// Deletes a mapping.
#[utoipa::path(
    post, path = "/jwt/key/mapping/delete", tag = "mappings",
    request_body = MappingId,
    responses(
        (status = 200, description = "The deleted mapping's id", body = DeletedMapping),
        ManageErrors, BodyTooLarge, NotFoundError,
    ),
    security(("bearer" = [])),
)]
pub async fn delete(
    State(app): State<Arc<App>>,
    Extension(caller): Extension<Caller>,
    ApiJson(req): ApiJson<MappingId>,
) -> Result<Json<DeletedMapping>, AppError> {
    let deleted = app
        .mapping_service
        .for_caller(&caller)
        .delete(&req.id)
        .await?;
    Ok(Json(DeletedMapping {
        deleted: deleted.id,
    }))
}

/// One mapping.
#[utoipa::path(
    get, path = "/jwt/key/mapping/info", tag = "mappings",
    params(MappingId),
    responses(
        (status = 200, description = "The mapping", body = Mapping),
        ManageErrors, NotFoundError,
    ),
    security(("bearer" = [])),
)]
pub async fn info(
    State(app): State<Arc<App>>,
    Extension(caller): Extension<Caller>,
    ApiQuery(q): ApiQuery<MappingId>,
) -> Result<Json<Mapping>, AppError> {
    app.mapping_service
        .for_caller(&caller)
        .find(&q.id)
        .await
        .map(Json)
}

/// Lists mappings.
#[utoipa::path(
    get, path = "/jwt/key/mapping/list", tag = "mappings",
    params(ListQuery),
    responses(
        (status = 200, description = "One page of mappings", body = MappingList),
        ManageErrors,
    ),
    security(("bearer" = [])),
)]
pub async fn list(
    State(app): State<Arc<App>>,
    Extension(caller): Extension<Caller>,
    ApiQuery(q): ApiQuery<ListQuery>,
) -> Result<Json<MappingList>, AppError> {
    let page = page(q.page, q.size)?;
    let (mappings, total) = app.mapping_service.for_caller(&caller).list(page).await?;
    Ok(Json(MappingList {
        mappings,
        total_count: total,
        current_page: page.page,
        total_pages: total.div_ceil(page.size),
    }))
}
