//! Serving and graceful shutdown: stop accepting, let in-flight requests and streams
//! finish for up to `server.shutdown_grace_s`, then cancel them and flush usage.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use tokio::net::TcpListener;

use crate::app::App;

/// The runtime `tollgate serve` runs on: one worker thread per CPU the process may use
/// (its affinity mask and cgroup quota, as `available_parallelism` reads them), and on a
/// single CPU a single-threaded runtime. With one CPU, the multi-threaded scheduler's
/// bookkeeping (work-stealing queues, cross-thread wake-ups) buys nothing; the benchmark
/// measured the single-threaded one at about 15 % more requests per CPU-second.
pub fn runtime() -> std::io::Result<tokio::runtime::Runtime> {
    runtime_for(std::thread::available_parallelism().map_or(1, std::num::NonZero::get))
}

fn runtime_for(cpus: usize) -> std::io::Result<tokio::runtime::Runtime> {
    if cpus <= 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
    }
}

/// Serves `router` on `listener` until `shutdown` resolves, then drains.
pub async fn serve(
    listener: TcpListener,
    app: Arc<App>,
    router: Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    app.start_jobs();
    let grace = Duration::from_secs(app.config.server.shutdown_grace_s);
    let stopping = app.stopping.clone();
    // Small request/response exchanges must not wait on Nagle's algorithm.
    let listener = axum::serve::ListenerExt::tap_io(listener, |tcp| {
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!(error = %e, "could not set TCP_NODELAY");
        }
    });
    let server = axum::serve(listener, router).with_graceful_shutdown(async move {
        shutdown.await;
        tracing::info!("shutting down: no longer accepting connections");
        stopping.cancel();
    });
    let stopping = app.stopping.clone();
    let grace_expired = async move {
        stopping.cancelled().await;
        tokio::time::sleep(grace).await;
    };
    tokio::select! {
        result = server => result?,
        () = grace_expired => {
            tracing::warn!(grace_s = grace.as_secs(), "grace period over: cancelling in-flight requests");
        }
    }
    // Streams still running observe this and end, recording what they saw; wait (briefly)
    // for them so their usage rows are queued before the final flush.
    app.cancel.cancel();
    if tokio::time::timeout(Duration::from_secs(5), app.in_flight.idle())
        .await
        .is_err()
    {
        tracing::warn!(
            streams = app.in_flight.count(),
            "streams still open after cancellation"
        );
    }
    Ok(())
}

/// Resolves on SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        drop(tokio::signal::ctrl_c().await);
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = terminate => {},
    }
}

#[cfg(test)]
mod tests {
    use tokio::runtime::RuntimeFlavor;

    use super::runtime_for;

    #[test]
    fn one_cpu_gets_the_single_threaded_runtime() {
        let flavor = |cpus| {
            runtime_for(cpus)
                .expect("runtime")
                .handle()
                .runtime_flavor()
        };
        assert_eq!(flavor(1), RuntimeFlavor::CurrentThread);
        assert_eq!(flavor(2), RuntimeFlavor::MultiThread);
    }
}
