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
use axum::routing::MethodRouter;
use utoipa_axum::router::UtoipaMethodRouter;
use utoipa_axum::routes;

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

/// Every management route and the capability it demands. Each route's path and method come
/// from its handler's `#[utoipa::path]`, so the router and `/openapi.json` cannot disagree.
pub(crate) fn routes() -> Vec<(Capability, UtoipaMethodRouter<Arc<App>>)> {
    use Capability::*;
    vec![
        (KeyWrite, routes!(keys::generate)),
        (KeyWrite, routes!(keys::update)),
        (KeyWrite, routes!(keys::delete)),
        (KeyRead, routes!(keys::info)),
        (KeyRead, routes!(keys::list)),
        (KeyWrite, routes!(keys::regenerate)),
        (KeyWrite, routes!(keys::block)),
        (KeyWrite, routes!(keys::unblock)),
        (TeamWrite, routes!(teams::create)),
        (TeamWrite, routes!(teams::update)),
        (TeamWrite, routes!(teams::delete)),
        (TeamRead, routes!(teams::info)),
        (TeamRead, routes!(teams::list)),
        (MappingWrite, routes!(mappings::create)),
        (MappingWrite, routes!(mappings::update)),
        (MappingWrite, routes!(mappings::delete)),
        (MappingRead, routes!(mappings::info)),
        (MappingRead, routes!(mappings::list)),
        (SpendRead, routes!(spend::logs)),
    ]
}

pub fn router(app: Arc<App>) -> Router<Arc<App>> {
    let mut admin = AdminRouter {
        router: Router::new(),
        app,
    };
    for (capability, (_, paths, handler)) in routes() {
        for path in paths.paths.keys() {
            admin = admin.route(path, capability, handler.clone());
        }
    }
    admin.router
}

/// The management routes' part of the OpenAPI document: their operations and every
/// schema they use.
pub fn openapi() -> utoipa::openapi::OpenApi {
    let mut doc = utoipa::openapi::OpenApi::default();
    let components = doc.components.get_or_insert_with(Default::default);
    for (_, (schemas, paths, _)) in routes() {
        doc.paths.merge(paths);
        components.schemas.extend(schemas);
    }
    doc
}
