//! `/team/*` handlers.

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
use crate::services::paging::page;
use crate::services::teams::{DeleteTeams, NewTeam, UpdateTeam};
use crate::store::Team;

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct TeamQuery {
    team_id: String,
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ListQuery {
    /// 1-based page number (default 1).
    page: Option<u64>,
    /// Page size, 1-1000 (default 50).
    size: Option<u64>,
}

/// `POST /team/delete`: the ids of the deleted teams.
#[derive(Debug, Serialize, ToSchema)]
pub struct DeletedTeams {
    pub deleted_teams: Vec<String>,
}

/// `GET /team/info`.
#[derive(Debug, Serialize, ToSchema)]
pub struct TeamInfo {
    pub team_id: String,
    pub team_info: Team,
}

/// Creates a team.
#[utoipa::path(
    post, path = "/team/new", tag = "teams",
    request_body = NewTeam,
    responses(
        (status = 200, description = "The new team", body = Team),
        ManageErrors, BodyTooLarge, ConflictError,
    ),
    security(("bearer" = [])),
)]
pub async fn create(
    State(app): State<Arc<App>>,
    Extension(caller): Extension<Caller>,
    ApiJson(req): ApiJson<NewTeam>,
) -> Result<Json<Team>, AppError> {
    app.team_service
        .for_caller(&caller)
        .create(req)
        .await
        .map(Json)
}

/// Changes a team's fields.
#[utoipa::path(
    post, path = "/team/update", tag = "teams",
    request_body = UpdateTeam,
    responses(
        (status = 200, description = "The updated team", body = Team),
        ManageErrors, BodyTooLarge, NotFoundError,
    ),
    security(("bearer" = [])),
)]
pub async fn update(
    State(app): State<Arc<App>>,
    Extension(caller): Extension<Caller>,
    ApiJson(req): ApiJson<UpdateTeam>,
) -> Result<Json<Team>, AppError> {
    app.team_service
        .for_caller(&caller)
        .update(req)
        .await
        .map(Json)
}

/// Deletes teams; a team that still has keys is a 409 unless `force` is true.
#[utoipa::path(
    post, path = "/team/delete", tag = "teams",
    request_body = DeleteTeams,
    responses(
        (status = 200, description = "The deleted teams' ids", body = DeletedTeams),
        ManageErrors, BodyTooLarge, NotFoundError, ConflictError,
    ),
    security(("bearer" = [])),
)]
pub async fn delete(
    State(app): State<Arc<App>>,
    Extension(caller): Extension<Caller>,
    ApiJson(req): ApiJson<DeleteTeams>,
) -> Result<Json<DeletedTeams>, AppError> {
    let deleted_teams = app.team_service.for_caller(&caller).delete(req).await?;
    Ok(Json(DeletedTeams { deleted_teams }))
}

/// One team, with its current-period `spend` and limits.
#[utoipa::path(
    get, path = "/team/info", tag = "teams",
    params(TeamQuery),
    responses(
        (status = 200, description = "The team", body = TeamInfo),
        ManageErrors, NotFoundError,
    ),
    security(("bearer" = [])),
)]
pub async fn info(
    State(app): State<Arc<App>>,
    Extension(caller): Extension<Caller>,
    ApiQuery(q): ApiQuery<TeamQuery>,
) -> Result<Json<TeamInfo>, AppError> {
    let team = app
        .team_service
        .for_caller(&caller)
        .find(&q.team_id)
        .await?;
    Ok(Json(TeamInfo {
        team_id: team.team_id.clone(),
        team_info: team,
    }))
}

/// Lists teams (a team role sees its own team).
#[utoipa::path(
    get, path = "/team/list", tag = "teams",
    params(ListQuery),
    responses(
        (status = 200, description = "One page of teams", body = Vec<Team>),
        ManageErrors, NotFoundError,
    ),
    security(("bearer" = [])),
)]
pub async fn list(
    State(app): State<Arc<App>>,
    Extension(caller): Extension<Caller>,
    ApiQuery(q): ApiQuery<ListQuery>,
) -> Result<Json<Vec<Team>>, AppError> {
    let page = page(q.page, q.size)?;
    app.team_service
        .for_caller(&caller)
        .list(page)
        .await
        .map(Json)
}
