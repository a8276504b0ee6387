//! `BackgroundTasks`: the one owner of every task tollgate runs beside its requests —
//! JWKS refreshes, the invalidation subscriber, the usage writer, budget resets, Redis
//! settlements.
//!
//! Components receive a [`TaskSpawner`] in their constructor and start their tasks
//! through it; nothing else in the crate may call `tokio::spawn` (a `clippy.toml`
//! `disallowed-methods` entry keeps it so). At shutdown the composition root calls
//! [`BackgroundTasks::shutdown`], which tells long-running loops to stop and waits for
//! every task, so no work is cut off half-way and nothing outlives the process's exit.

use std::future::Future;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Owns the tracker and the stop signal; held by the composition root.
#[derive(Debug, Default)]
pub struct BackgroundTasks {
    tracker: TaskTracker,
    stop: CancellationToken,
}

/// Starts tasks that [`BackgroundTasks`] tracks. Cheap to clone.
#[derive(Debug, Clone)]
pub struct TaskSpawner {
    tracker: TaskTracker,
    stop: CancellationToken,
}

impl BackgroundTasks {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn spawner(&self) -> TaskSpawner {
        TaskSpawner {
            tracker: self.tracker.clone(),
            stop: self.stop.clone(),
        }
    }

    /// Number of tasks still running.
    pub fn len(&self) -> usize {
        self.tracker.len()
    }

    pub fn is_empty(&self) -> bool {
        self.tracker.is_empty()
    }

    /// Stops loops started with [`TaskSpawner::spawn_loop`], then waits up to `limit` for
    /// every task (finite ones, such as settlements, run to their end). Returns false if
    /// some were still running when the limit passed.
    pub async fn shutdown(&self, limit: Duration) -> bool {
        self.stop.cancel();
        self.tracker.close();
        let finished = tokio::time::timeout(limit, self.tracker.wait())
            .await
            .is_ok();
        if !finished {
            tracing::warn!(
                tasks = self.tracker.len(),
                "background tasks still running at shutdown"
            );
        }
        finished
    }
}

impl TaskSpawner {
    /// A task that ends by itself (a settlement, a writer told to stop): it runs to its
    /// end, and shutdown waits for it.
    pub fn spawn<F>(&self, task: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        // Drop may run outside a runtime (process exit): the work is then abandoned,
        // which every caller tolerates (Redis leases lapse; nothing else is spawned late).
        if let Ok(handle) = tokio::runtime::Handle::try_current() {
            drop(self.tracker.spawn_on(task, &handle));
        }
    }

    /// A task that runs until shutdown (a periodic job, a subscriber): it is dropped at
    /// its next await once shutdown begins.
    pub fn spawn_loop<F>(&self, name: &'static str, task: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        let stop = self.stop.clone();
        self.spawn(async move {
            tokio::select! {
                () = stop.cancelled() => tracing::debug!(task = name, "background task stopped"),
                () = task => {}
            }
        });
    }

    /// Fires when shutdown begins.
    pub fn stopping(&self) -> CancellationToken {
        self.stop.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn shutdown_stops_loops_and_waits_for_finite_tasks() {
        let tasks = BackgroundTasks::new();
        let spawner = tasks.spawner();
        spawner.spawn_loop("forever", std::future::pending());
        let (tx, rx) = tokio::sync::oneshot::channel();
        spawner.spawn(async move {
            tokio::task::yield_now().await;
            let _ = tx.send(());
        });
        assert!(tasks.shutdown(Duration::from_secs(5)).await);
        assert!(tasks.is_empty());
        assert!(rx.await.is_ok(), "the finite task ran to its end");
    }
}
