//! The management API (LiteLLM-compatible paths). Every route is registered through
//! [`AdminRouter::route`], which demands the capability it needs: a route without one
//! cannot be registered.

mod keys;
mod mappings;
mod spend;
mod teams;

use std::sync::Arc;

use axum::Router;
use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::Response;
use axum::routing::{MethodRouter, get, post};

use crate::app::App;
use crate::auth::authenticate;
use crate::auth::authorize::{Capability, check_any};
use crate::http::AppError;

struct AdminRouter {
    router: Router<Arc<App>>,
    app: Arc<App>,
}

impl AdminRouter {
    fn route(self, path: &str, capability: Capability, handler: MethodRouter<Arc<App>>) -> Self {
        let gated = handler.route_layer(axum::middleware::from_fn_with_state(
            self.app.clone(),
            move |State(app): State<Arc<App>>, req: Request, next: Next| {
                require(app, capability, req, next)
            },
        ));
        Self {
            router: self.router.route(path, gated),
            app: self.app,
        }
    }
}

/// Authenticates and checks the route's capability; the [`crate::auth::Caller`] is left
/// in the request extensions for the handler.
async fn require(
    app: Arc<App>,
    capability: Capability,
    mut req: Request,
    next: Next,
) -> Result<Response, AppError> {
    let caller = authenticate(
        &app,
        req.method(),
        req.uri(),
        req.headers(),
        crate::auth::Purpose::Manage,
    )
    .await?;
    check_any(&caller, capability)?;
    req.extensions_mut().insert(caller);
    Ok(next.run(req).await)
}

pub fn router(app: Arc<App>) -> Router<Arc<App>> {
    use Capability::*;
    AdminRouter {
        router: Router::new(),
        app,
    }
    .route("/key/generate", KeyWrite, post(keys::generate))
    .route("/key/update", KeyWrite, post(keys::update))
    .route("/key/delete", KeyWrite, post(keys::delete))
    .route("/key/info", KeyRead, get(keys::info))
    .route("/key/list", KeyRead, get(keys::list))
    .route("/key/regenerate", KeyWrite, post(keys::regenerate))
    .route("/key/block", KeyWrite, post(keys::block))
    .route("/key/unblock", KeyWrite, post(keys::unblock))
    .route("/team/new", TeamWrite, post(teams::create))
    .route("/team/update", TeamWrite, post(teams::update))
    .route("/team/delete", TeamWrite, post(teams::delete))
    .route("/team/info", TeamRead, get(teams::info))
    .route("/team/list", TeamRead, get(teams::list))
    .route("/jwt/key/mapping/new", MappingWrite, post(mappings::create))
    .route(
        "/jwt/key/mapping/update",
        MappingWrite,
        post(mappings::update),
    )
    .route(
        "/jwt/key/mapping/delete",
        MappingWrite,
        post(mappings::delete),
    )
    .route("/jwt/key/mapping/info", MappingRead, get(mappings::info))
    .route("/jwt/key/mapping/list", MappingRead, get(mappings::list))
    .route("/spend/logs", SpendRead, get(spend::logs))
    .router
}
