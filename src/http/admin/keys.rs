//! `/key/*` handlers: extract, call [`KeyManager`], shape the LiteLLM-style response.

use std::sync::Arc;

use axum::extract::State;
use axum::{Extension, Json};
use serde::Serialize;
use utoipa::ToSchema;

use crate::app::App;
use crate::auth::Caller;
use crate::error::AppError;
use crate::http::extract::{ApiJson, ApiQuery};
use crate::http::openapi::{BodyTooLarge, ManageErrors, NotFoundError};
use crate::services::keys::{
    DeleteKeys, GenerateKey, IssuedKey, KeyRef, ListKeys, RegenerateKey, UpdateKey,
};
use crate::store::VirtualKey;

/// `POST /key/delete`: the ids of the deleted keys.
#[derive(Debug, Serialize, ToSchema)]
pub struct DeletedKeys {
    pub deleted_keys: Vec<String>,
}

/// `GET /key/info`.
#[derive(Debug, Serialize, ToSchema)]
pub struct KeyInfo {
    pub key_id: String,
    pub info: VirtualKey,
}

/// `GET /key/list`: one page of keys.
#[derive(Debug, Serialize, ToSchema)]
pub struct KeyList {
    pub keys: Vec<VirtualKey>,
    pub total_count: u64,
    pub current_page: u64,
    pub total_pages: u64,
}

/// Creates a key; the plaintext `key` is returned this once.
#[utoipa::path(
    post, path = "/key/generate", tag = "keys",
    request_body = GenerateKey,
    responses(
        (status = 200, description = "The new key, with its plaintext `key`", body = IssuedKey),
        ManageErrors, BodyTooLarge,
    ),
    security(("bearer" = [])),
)]
pub async fn generate(
    State(app): State<Arc<App>>,
    Extension(caller): Extension<Caller>,
    ApiJson(req): ApiJson<GenerateKey>,
) -> Result<Json<IssuedKey>, AppError> {
    app.key_service
        .for_caller(&caller)
        .generate(req)
        .await
        .map(Json)
}

/// Changes a key's fields.
#[utoipa::path(
    post, path = "/key/update", tag = "keys",
    request_body = UpdateKey,
    responses(
        (status = 200, description = "The updated key", body = VirtualKey),
        ManageErrors, BodyTooLarge, NotFoundError,
    ),
    security(("bearer" = [])),
)]
pub async fn update(
    State(app): State<Arc<App>>,
    Extension(caller): Extension<Caller>,
    ApiJson(req): ApiJson<UpdateKey>,
) -> Result<Json<VirtualKey>, AppError> {
    app.key_service
        .for_caller(&caller)
        .update(req)
        .await
        .map(Json)
}

/// Deletes keys (and their JWT mappings).
#[utoipa::path(
    post, path = "/key/delete", tag = "keys",
    request_body = DeleteKeys,
    responses(
        (status = 200, description = "The deleted keys' ids", body = DeletedKeys),
        ManageErrors, BodyTooLarge, NotFoundError,
    ),
    security(("bearer" = [])),
)]
pub async fn delete(
    State(app): State<Arc<App>>,
    Extension(caller): Extension<Caller>,
    ApiJson(req): ApiJson<DeleteKeys>,
) -> Result<Json<DeletedKeys>, AppError> {
    let deleted_keys = app.key_service.for_caller(&caller).delete(req).await?;
    Ok(Json(DeletedKeys { deleted_keys }))
}

/// One key, with its current-period `spend`, `budget_reset_at` and every limit.
#[utoipa::path(
    get, path = "/key/info", tag = "keys",
    params(KeyRef),
    responses(
        (status = 200, description = "The key", body = KeyInfo),
        ManageErrors, NotFoundError,
    ),
    security(("bearer" = [])),
)]
pub async fn info(
    State(app): State<Arc<App>>,
    Extension(caller): Extension<Caller>,
    ApiQuery(q): ApiQuery<KeyRef>,
) -> Result<Json<KeyInfo>, AppError> {
    let key = app
        .key_service
        .for_caller(&caller)
        .info(q.key.as_deref(), q.key_id.as_deref())
        .await?;
    Ok(Json(KeyInfo {
        key_id: key.key_id.clone(),
        info: key,
    }))
}

/// Lists keys, optionally of one team or user (team roles see their own team's).
#[utoipa::path(
    get, path = "/key/list", tag = "keys",
    params(ListKeys),
    responses(
        (status = 200, description = "One page of keys", body = KeyList),
        ManageErrors,
    ),
    security(("bearer" = [])),
)]
pub async fn list(
    State(app): State<Arc<App>>,
    Extension(caller): Extension<Caller>,
    ApiQuery(q): ApiQuery<ListKeys>,
) -> Result<Json<KeyList>, AppError> {
    let (keys, total, page) = app.key_service.for_caller(&caller).list(q).await?;
    Ok(Json(KeyList {
        keys,
        total_count: total,
        current_page: page.page,
        total_pages: total.div_ceil(page.size),
    }))
}

/// Replaces a key's secret; `key_id`, limits and spend stay. With `grace_period` the
/// replaced secret keeps working until `grace_until`.
#[utoipa::path(
    post, path = "/key/regenerate", tag = "keys",
    request_body = RegenerateKey,
    responses(
        (status = 200, description = "The key, with its new plaintext `key`", body = IssuedKey),
        ManageErrors, BodyTooLarge, NotFoundError,
    ),
    security(("bearer" = [])),
)]
pub async fn regenerate(
    State(app): State<Arc<App>>,
    Extension(caller): Extension<Caller>,
    ApiJson(req): ApiJson<RegenerateKey>,
) -> Result<Json<IssuedKey>, AppError> {
    app.key_service
        .for_caller(&caller)
        .regenerate(req)
        .await
        .map(Json)
}

/// Blocks a key: its requests are refused until it is unblocked.
#[utoipa::path(
    post, path = "/key/block", tag = "keys",
    request_body = KeyRef,
    responses(
        (status = 200, description = "The blocked key", body = VirtualKey),
        ManageErrors, BodyTooLarge, NotFoundError,
    ),
    security(("bearer" = [])),
)]
pub async fn block(
    State(app): State<Arc<App>>,
    Extension(caller): Extension<Caller>,
    ApiJson(req): ApiJson<KeyRef>,
) -> Result<Json<VirtualKey>, AppError> {
    app.key_service
        .for_caller(&caller)
        .set_blocked(req, true)
        .await
        .map(Json)
}

/// Unblocks a key.
#[utoipa::path(
    post, path = "/key/unblock", tag = "keys",
    request_body = KeyRef,
    responses(
        (status = 200, description = "The unblocked key", body = VirtualKey),
        ManageErrors, BodyTooLarge, NotFoundError,
    ),
    security(("bearer" = [])),
)]
pub async fn unblock(
    State(app): State<Arc<App>>,
    Extension(caller): Extension<Caller>,
    ApiJson(req): ApiJson<KeyRef>,
) -> Result<Json<VirtualKey>, AppError> {
    app.key_service
        .for_caller(&caller)
        .set_blocked(req, false)
        .await
        .map(Json)
}
