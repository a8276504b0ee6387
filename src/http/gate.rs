//! The gate in front of every management and console route: authenticate, demand the
//! route's capability (SPEC §6.5), leave the [`Caller`] in the request for the handler.
//! A route is gated by [`gated`] when it is registered, so none can be added without a
//! capability.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::Response;
use axum::routing::MethodRouter;

use crate::app::App;
use crate::auth::authorize::{Capability, check_any};
use crate::auth::{Caller, Purpose};
use crate::error::AppError;

/// `handler`, reachable only by callers that hold `capability` for some team.
pub fn gated(
    app: &Arc<App>,
    capability: Capability,
    handler: MethodRouter<Arc<App>>,
) -> MethodRouter<Arc<App>> {
    handler.route_layer(axum::middleware::from_fn_with_state(
        app.clone(),
        move |State(app): State<Arc<App>>, req: Request, next: Next| {
            require(app, capability, req, next)
        },
    ))
}

async fn require(
    app: Arc<App>,
    capability: Capability,
    mut req: Request,
    next: Next,
) -> Result<Response, AppError> {
    let caller: Caller = app
        .authenticator
        .authenticate(req.method(), req.uri(), req.headers(), Purpose::Manage)
        .await?;
    check_any(&caller, capability)?;
    req.extensions_mut().insert(caller);
    Ok(next.run(req).await)
}
