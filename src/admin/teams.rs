//! `/team/*` handlers.

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
use crate::manage::teams::{DeleteTeams, NewTeam, TeamManager, UpdateTeam};
use crate::store::Team;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TeamQuery {
    team_id: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    page: Option<u64>,
    size: Option<u64>,
}

pub async fn create(
    State(app): State<Arc<App>>,
    Extension(caller): Extension<Caller>,
    ApiJson(req): ApiJson<NewTeam>,
) -> Result<Json<Team>, AppError> {
    TeamManager::new(&app, &caller).create(req).await.map(Json)
}

pub async fn update(
    State(app): State<Arc<App>>,
    Extension(caller): Extension<Caller>,
    ApiJson(req): ApiJson<UpdateTeam>,
) -> Result<Json<Team>, AppError> {
    TeamManager::new(&app, &caller).update(req).await.map(Json)
}

pub async fn delete(
    State(app): State<Arc<App>>,
    Extension(caller): Extension<Caller>,
    ApiJson(req): ApiJson<DeleteTeams>,
) -> Result<Json<Value>, AppError> {
    let deleted = TeamManager::new(&app, &caller).delete(req).await?;
    Ok(Json(json!({ "deleted_teams": deleted })))
}

pub async fn info(
    State(app): State<Arc<App>>,
    Extension(caller): Extension<Caller>,
    ApiQuery(q): ApiQuery<TeamQuery>,
) -> Result<Json<Value>, AppError> {
    let team = TeamManager::new(&app, &caller).find(&q.team_id).await?;
    Ok(Json(json!({ "team_id": team.team_id, "team_info": team })))
}

pub async fn list(
    State(app): State<Arc<App>>,
    Extension(caller): Extension<Caller>,
    ApiQuery(q): ApiQuery<ListQuery>,
) -> Result<Json<Vec<Team>>, AppError> {
    let page = page(q.page, q.size)?;
    TeamManager::new(&app, &caller).list(page).await.map(Json)
}
