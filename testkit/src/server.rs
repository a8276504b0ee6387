//! A tiny loopback HTTP server shared by the mocks.
//!
//! `axum::serve` spawns one detached task per connection, so aborting it would leave
//! keep-alive connections (and hanging handlers) running. This server keeps every
//! connection in a [`JoinSet`] owned by the accept task. [`ServerHandle::stop`] closes
//! the listener and *waits* until every open connection is gone, which is what a test
//! means by "the upstream went away": the very next request must find it gone. Dropping
//! the handle aborts the same way without waiting.

use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::Duration;

use axum::Router;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto::Builder;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::{JoinHandle, JoinSet};

/// Owns the accept loop of a spawned server; aborts it (and all its connections) on drop.
#[derive(Debug)]
pub(crate) struct ServerHandle {
    addr: SocketAddr,
    shutdown: Mutex<Option<oneshot::Sender<()>>>,
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
        let (shutdown, stopping) = oneshot::channel();
        let task = tokio::spawn(accept_loop(listener, make_router(addr), stopping));
        Ok(Self {
            addr,
            shutdown: Mutex::new(Some(shutdown)),
            task: Mutex::new(Some(task)),
        })
    }

    /// The bound address.
    pub(crate) fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stop accepting and close every open connection; returns once the listener and
    /// all connections are closed. Idempotent.
    pub(crate) async fn stop(&self) {
        if let Some(shutdown) = take(&self.shutdown) {
            let _ = shutdown.send(());
        }
        if let Some(task) = take(&self.task) {
            let _ = task.await;
        }
    }
}

fn take<T>(slot: &Mutex<Option<T>>) -> Option<T> {
    slot.lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .take()
}

impl Drop for ServerHandle {
    fn drop(&mut self) {
        if let Some(task) = take(&self.task) {
            task.abort();
        }
    }
}

async fn accept_loop(listener: TcpListener, router: Router, mut stopping: oneshot::Receiver<()>) {
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            // A stop (or a dropped handle): close the listener, then abort every
            // connection and wait until each is gone.
            _ = &mut stopping => {
                drop(listener);
                connections.shutdown().await;
                return;
            }
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
