//! `/key/*` handlers: extract, call [`KeyManager`], shape the LiteLLM-style response.

use std::sync::Arc;

use axum::extract::State;
use axum::{Extension, Json};
use serde_json::{Value, json};

use crate::app::App;
use crate::auth::Caller;
use crate::http::AppError;
use crate::http::extract::{ApiJson, ApiQuery};
use crate::manage::keys::{
    DeleteKeys, GenerateKey, IssuedKey, KeyManager, KeyRef, ListKeys, UpdateKey,
};
use crate::store::VirtualKey;

pub async fn generate(
    State(app): State<Arc<App>>,
    Extension(caller): Extension<Caller>,
    ApiJson(req): ApiJson<GenerateKey>,
) -> Result<Json<IssuedKey>, AppError> {
    KeyManager::new(&app, &caller).generate(req).await.map(Json)
}

pub async fn update(
    State(app): State<Arc<App>>,
    Extension(caller): Extension<Caller>,
    ApiJson(req): ApiJson<UpdateKey>,
) -> Result<Json<VirtualKey>, AppError> {
    KeyManager::new(&app, &caller).update(req).await.map(Json)
}

pub async fn delete(
    State(app): State<Arc<App>>,
    Extension(caller): Extension<Caller>,
    ApiJson(req): ApiJson<DeleteKeys>,
) -> Result<Json<Value>, AppError> {
    let deleted = KeyManager::new(&app, &caller).delete(req).await?;
    Ok(Json(json!({ "deleted_keys": deleted })))
}

pub async fn info(
    State(app): State<Arc<App>>,
    Extension(caller): Extension<Caller>,
    ApiQuery(q): ApiQuery<KeyRef>,
) -> Result<Json<Value>, AppError> {
    let key = KeyManager::new(&app, &caller)
        .info(q.key.as_deref(), q.key_id.as_deref())
        .await?;
    Ok(Json(json!({ "key_id": key.key_id, "info": key })))
}

pub async fn list(
    State(app): State<Arc<App>>,
    Extension(caller): Extension<Caller>,
    ApiQuery(q): ApiQuery<ListKeys>,
) -> Result<Json<Value>, AppError> {
    let (keys, total, page) = KeyManager::new(&app, &caller).list(q).await?;
    Ok(Json(json!({
        "keys": keys,
        "total_count": total,
        "current_page": page.page,
        "total_pages": total.div_ceil(page.size),
    })))
}

pub async fn regenerate(
    State(app): State<Arc<App>>,
    Extension(caller): Extension<Caller>,
    ApiJson(req): ApiJson<KeyRef>,
) -> Result<Json<IssuedKey>, AppError> {
    KeyManager::new(&app, &caller)
        .regenerate(req)
        .await
        .map(Json)
}

pub async fn block(
    State(app): State<Arc<App>>,
    Extension(caller): Extension<Caller>,
    ApiJson(req): ApiJson<KeyRef>,
) -> Result<Json<VirtualKey>, AppError> {
    KeyManager::new(&app, &caller)
        .set_blocked(req, true)
        .await
        .map(Json)
}

pub async fn unblock(
    State(app): State<Arc<App>>,
    Extension(caller): Extension<Caller>,
    ApiJson(req): ApiJson<KeyRef>,
) -> Result<Json<VirtualKey>, AppError> {
    KeyManager::new(&app, &caller)
        .set_blocked(req, false)
        .await
        .map(Json)
}
