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
        // The pipeline's future is large (every await point's state); boxed here, the
        // layers above move a pointer instead of copying it at each step (memcpy was a
        // tenth of the gateway's instructions per request before).
        let handler = move |State(app): State<Arc<App>>, req: Request| async move {
            Box::pin(app.proxy.forward(spec, req)).await
        };
        router = router.route(spec.path, axum::routing::on(spec.methods, handler));
    }
    router
}
