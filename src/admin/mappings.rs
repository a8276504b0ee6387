//! `/jwt/key/mapping/*` handlers.

use std::sync::Arc;

use axum::extract::State;
use axum::{Extension, Json};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::app::App;
use crate::auth::Caller;
use crate::http::AppError;
use crate::http::extract::{ApiJson, ApiQuery};
use crate::manage::keys::page;
use crate::manage::mappings::{MappingId, MappingManager, NewMapping, UpdateMapping};
use crate::store::Mapping;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    page: Option<u64>,
    size: Option<u64>,
}

pub async fn create(
    State(app): State<Arc<App>>,
    Extension(caller): Extension<Caller>,
    ApiJson(req): ApiJson<NewMapping>,
) -> Result<Json<Mapping>, AppError> {
    MappingManager::new(&app, &caller)
        .create(req)
        .await
        .map(Json)
}

pub async fn update(
    State(app): State<Arc<App>>,
    Extension(caller): Extension<Caller>,
    ApiJson(req): ApiJson<UpdateMapping>,
) -> Result<Json<Mapping>, AppError> {
    MappingManager::new(&app, &caller)
        .update(req)
        .await
        .map(Json)
}

pub async fn delete(
    State(app): State<Arc<App>>,
    Extension(caller): Extension<Caller>,
    ApiJson(req): ApiJson<MappingId>,
) -> Result<Json<Value>, AppError> {
    let deleted = MappingManager::new(&app, &caller).delete(&req.id).await?;
    Ok(Json(json!({ "deleted": deleted.id })))
}

pub async fn info(
    State(app): State<Arc<App>>,
    Extension(caller): Extension<Caller>,
    ApiQuery(q): ApiQuery<MappingId>,
) -> Result<Json<Mapping>, AppError> {
    MappingManager::new(&app, &caller)
        .find(&q.id)
        .await
        .map(Json)
}

pub async fn list(
    State(app): State<Arc<App>>,
    Extension(caller): Extension<Caller>,
    ApiQuery(q): ApiQuery<ListQuery>,
) -> Result<Json<Value>, AppError> {
    let page = page(q.page, q.size)?;
    let (mappings, total) = MappingManager::new(&app, &caller).list(page).await?;
    Ok(Json(json!({
        "mappings": mappings,
        "total_count": total,
        "current_page": page.page,
        "total_pages": total.div_ceil(page.size),
    })))
}
