//! The management API's handlers (LiteLLM-compatible paths). Each extracts its input,
//! calls its service ([`crate::services`]) and shapes the answer. Every route is listed
//! in [`routes`] with the capability it demands and registered through the
//! [`gated`](super::gate::gated) gate: a route without one cannot be registered.

mod audit;
mod keys;
mod mappings;
mod spend;
mod teams;
mod upstream;

use std::sync::Arc;

use axum::Router;
use utoipa_axum::router::UtoipaMethodRouter;
use utoipa_axum::routes;

use super::gate::gated;
use crate::app::App;
use crate::auth::authorize::Capability;

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
        (AuditRead, routes!(audit::logs)),
        (UpstreamRead, routes!(upstream::status)),
        (UpstreamWrite, routes!(upstream::drain)),
        (UpstreamWrite, routes!(upstream::undrain)),
    ]
}

pub fn router(app: &Arc<App>) -> Router<Arc<App>> {
    let mut router = Router::new();
    for (capability, (_, paths, handler)) in routes() {
        for path in paths.paths.keys() {
            router = router.route(path, gated(app, capability, handler.clone()));
        }
    }
    router
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
