//! A tiny loopback HTTP server shared by the mocks.
//!
//! `axum::serve` spawns one detached task per connection, so aborting it would leave
//! keep-alive connections (and hanging handlers) running. This server keeps every
//! connection in a [`JoinSet`] owned by the accept task: aborting that task (on
//! [`ServerHandle::stop`] or on drop) tears down the listener *and* every open
//! connection, which is what a test means by "the upstream went away".

use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::Duration;

use axum::Router;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto::Builder;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::task::{JoinHandle, JoinSet};

/// Owns the accept loop of a spawned server; aborts it (and all its connections) on drop.
#[derive(Debug)]
pub(crate) struct ServerHandle {
    addr: SocketAddr,
    task: Mutex<Option<JoinHandle<()>>>,
}

impl ServerHandle {
    /// Bind `127.0.0.1:0` and serve `router` on a spawned task.
    pub(crate) async fn spawn(router: Router) -> Self {
        Self::spawn_with(|_| router).await
    }

    /// Bind `127.0.0.1:0`, build the router knowing the bound address (e.g. for an
    /// issuer URL), and serve it on a spawned task.
    pub(crate) async fn spawn_with(make_router: impl FnOnce(SocketAddr) -> Router) -> Self {
        Self::spawn_on("127.0.0.1:0", make_router)
            .await
            .expect("testkit: bind 127.0.0.1:0")
    }

    /// Bind `addr` and serve on a spawned task (the `mock-ollama` binary uses this).
    pub(crate) async fn spawn_on(
        addr: &str,
        make_router: impl FnOnce(SocketAddr) -> Router,
    ) -> std::io::Result<Self> {
        let listener = TcpListener::bind(addr).await?;
        let addr = listener
            .local_addr()
            .expect("testkit: local address of the listener");
        let task = tokio::spawn(accept_loop(listener, make_router(addr)));
        Ok(Self {
            addr,
            task: Mutex::new(Some(task)),
        })
    }

    /// The bound address.
    pub(crate) fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stop accepting and drop every open connection. Idempotent.
    pub(crate) fn stop(&self) {
        let task = self
            .task
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take();
        if let Some(task) = task {
            task.abort();
        }
    }
}

impl Drop for ServerHandle {
    fn drop(&mut self) {
        self.stop();
    }
}

async fn accept_loop(listener: TcpListener, router: Router) {
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _peer)) => {
                    // Best effort: latency matters more than throughput for a mock.
                    let _ = stream.set_nodelay(true);
                    let service = TowerToHyperService::new(router.clone());
                    connections.spawn(async move {
                        let builder = Builder::new(TokioExecutor::new());
                        // A client that goes away mid-request is not an error for a mock.
                        let _ = builder
                            .serve_connection_with_upgrades(TokioIo::new(stream), service)
                            .await;
                    });
                }
                // E.g. EMFILE: back off briefly instead of spinning.
                Err(_) => tokio::time::sleep(Duration::from_millis(5)).await,
            },
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
}
