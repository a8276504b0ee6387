//! The proxied Ollama routes: one handler per entry of
//! [`ROUTES`](crate::services::proxy::routes::ROUTES), each handing the whole request to
//! the proxy pipeline ([`crate::services::proxy::Proxy`]).

use std::sync::Arc;

use axum::Router;
use axum::extract::{Request, State};

use crate::app::App;
use crate::services::proxy::routes::ROUTES;

/// The router for every proxied route.
pub fn router() -> Router<Arc<App>> {
    let mut router = Router::new();
    for spec in ROUTES {
        let handler = move |State(app): State<Arc<App>>, req: Request| async move {
            app.proxy.forward(spec, req).await
        };
        router = router.route(spec.path, axum::routing::on(spec.methods, handler));
    }
    router
}
