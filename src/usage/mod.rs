//! `SpendRecorder`: usage rows and spend, written off the hot path in batches.
//!
//! Proxied requests hand their finished [`UsageRow`] to an unbounded channel (never
//! blocking, never dropping); one background task takes what is queued every 50 ms (and
//! at once on a flush or shutdown) and writes it as one batch. A failed write keeps its
//! rows and retries, so no admitted request goes unrecorded while the database is
//! briefly away.
//!
//! The same task writes each request's `proxied` log line, in the same beat. A request
//! finishes just before its last bytes go to the client; formatting the line there would
//! sit on the client's latency, and a row that woke this task (and a line that woke the
//! log thread) would cost every request a wake-up of each: on one CPU, two context
//! switches. A line is therefore written up to 50 ms after its request ended, with the
//! request's own timing in its fields.

mod budget;
pub mod feed;
pub mod retention;

pub use budget::BudgetResets;
pub use feed::{EventFeed, RequestEvent};
pub use retention::Retention;

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};

use crate::store::{Store, UsageRow};
use crate::tasks::TaskSpawner;

/// Small, frequent batches: a large batch is a burst of database work that delays the
/// requests arriving meanwhile (the benchmark's p99 fell by about a third from 250 ms).
const FLUSH_EVERY: Duration = Duration::from_millis(50);
/// Rows kept while the database is down before the oldest are logged and dropped.
const MAX_PENDING: usize = 200_000;

/// A finished request: its usage row and what its log line shows as the caller.
struct Finished {
    row: UsageRow,
    /// A key's display name or an identity's label, never a secret.
    label: Arc<str>,
}

impl Finished {
    fn log(&self) {
        let row = &self.row;
        tracing::info!(
            request_id = %row.request_id,
            key = %self.label,
            model = row.model.as_deref().unwrap_or(""),
            route = %row.route,
            status = %row.status,
            http_status = row.http_status,
            prompt_tokens = row.prompt_tokens,
            completion_tokens = row.completion_tokens,
            latency_ms = row.duration_ms,
            "proxied"
        );
    }
}

/// What the writer is asked besides rows.
enum Control {
    Flush(oneshot::Sender<()>),
    /// Write what is queued, then stop.
    Stop(oneshot::Sender<()>),
}

/// Handle to the background writer. Cheap to clone.
#[derive(Clone)]
pub struct SpendRecorder {
    /// Rows wait here until the writer's next beat: a row never wakes the writer, so a
    /// request costs no task wake-up and no log-thread wake-up of its own.
    rows: mpsc::UnboundedSender<Box<Finished>>,
    control: mpsc::UnboundedSender<Control>,
}

impl SpendRecorder {
    /// Starts the writer; it runs until [`SpendRecorder::shutdown`] (not at the
    /// background tasks' stop signal: rows queued by the last streams must still land).
    pub fn start(store: Arc<dyn Store>, tasks: &TaskSpawner) -> Self {
        let (rows, rows_rx) = mpsc::unbounded_channel();
        let (control, control_rx) = mpsc::unbounded_channel();
        tasks.spawn(run(store, rows_rx, control_rx));
        Self { rows, control }
    }

    /// Queues one finished request (its row, and its log line under `label`). Never
    /// blocks.
    pub fn record(&self, row: UsageRow, label: Arc<str>) {
        let finished = Box::new(Finished { row, label });
        if self.rows.send(finished).is_err() {
            tracing::error!("usage recorder stopped; a usage row was lost");
        }
    }

    /// Writes everything queued so far; resolves once it is in the database (or the
    /// attempt failed and the rows were kept for retry).
    pub async fn flush(&self) {
        self.ask(Control::Flush).await;
    }

    /// Writes everything queued and stops the writer (shutdown).
    pub async fn shutdown(&self) {
        self.ask(Control::Stop).await;
    }

    async fn ask(&self, control: fn(oneshot::Sender<()>) -> Control) {
        let (ack, done) = oneshot::channel();
        if self.control.send(control(ack)).is_ok() {
            let _ = done.await;
        }
    }
}

/// Every [`FLUSH_EVERY`], and at once when asked, takes the queued rows, writes their log
/// lines (one burst for the log thread) and their batch.
async fn run(
    store: Arc<dyn Store>,
    mut rows: mpsc::UnboundedReceiver<Box<Finished>>,
    mut control: mpsc::UnboundedReceiver<Control>,
) {
    let mut pending: Vec<UsageRow> = Vec::new();
    let mut ticker = tokio::time::interval(FLUSH_EVERY);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            asked = control.recv() => {
                // A row recorded before the request was sent is in the queue by now.
                take_queued(&mut rows, &mut pending);
                write(&*store, &mut pending).await;
                match asked {
                    Some(Control::Flush(ack)) => {
                        let _ = ack.send(());
                    }
                    Some(Control::Stop(ack)) => {
                        let _ = ack.send(());
                        return;
                    }
                    None => return,
                }
            }
            _ = ticker.tick() => {
                take_queued(&mut rows, &mut pending);
                write(&*store, &mut pending).await;
            }
        }
    }
}

/// Moves the queued rows to `pending`, writing each one's log line.
fn take_queued(rows: &mut mpsc::UnboundedReceiver<Box<Finished>>, pending: &mut Vec<UsageRow>) {
    while let Ok(finished) = rows.try_recv() {
        finished.log();
        pending.push(finished.row);
    }
}

async fn write(store: &dyn Store, pending: &mut Vec<UsageRow>) {
    if pending.is_empty() {
        return;
    }
    match store.record_usage(pending).await {
        Ok(()) => {
            metrics::counter!(crate::telemetry::USAGE_ROWS).increment(pending.len() as u64);
            pending.clear();
        }
        Err(e) => {
            tracing::warn!(rows = pending.len(), error = %e, "usage write failed; will retry");
            if pending.len() > MAX_PENDING {
                let excess = pending.len() - MAX_PENDING;
                tracing::error!(rows = excess, "usage backlog full; dropping oldest rows");
                pending.drain(..excess);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::MockStore;

    fn row(n: u64) -> UsageRow {
        UsageRow {
            request_id: format!("r{n}"),
            key_id: Some("k".into()),
            team_id: None,
            user_id: None,
            model: Some("m".into()),
            route: "/api/chat".into(),
            prompt_tokens: n,
            completion_tokens: 1,
            spend: 0.0,
            status: crate::store::RequestStatus::Success,
            http_status: 200,
            started_at: chrono::Utc::now(),
            duration_ms: 1,
            server: None,
        }
    }

    #[tokio::test]
    async fn flush_writes_every_queued_row_in_one_batch() {
        let mut store = MockStore::new();
        store
            .expect_record_usage()
            .withf(|rows| rows.len() == 3 && rows[2].request_id == "r2")
            .times(1)
            .returning(|_| Ok(()));
        let tasks = crate::tasks::BackgroundTasks::new();
        let recorder = SpendRecorder::start(Arc::new(store), &tasks.spawner());
        for n in 0..3 {
            recorder.record(row(n), Arc::from("k"));
        }
        recorder.flush().await;
        recorder.shutdown().await;
        assert!(tasks.shutdown(std::time::Duration::from_secs(5)).await);
    }

    #[tokio::test]
    async fn failed_writes_are_retried_with_the_same_rows() {
        let mut store = MockStore::new();
        let mut seq = mockall::Sequence::new();
        store
            .expect_record_usage()
            .times(1)
            .in_sequence(&mut seq)
            .returning(|_| {
                Err(crate::store::StoreError::Unavailable(
                    sea_orm::DbErr::Custom("down".into()),
                ))
            });
        store
            .expect_record_usage()
            .withf(|rows| rows.len() == 2)
            .times(1)
            .in_sequence(&mut seq)
            .returning(|_| Ok(()));
        let tasks = crate::tasks::BackgroundTasks::new();
        let recorder = SpendRecorder::start(Arc::new(store), &tasks.spawner());
        recorder.record(row(1), Arc::from("k"));
        recorder.record(row(2), Arc::from("k"));
        recorder.flush().await;
        recorder.flush().await;
        recorder.shutdown().await;
        assert!(tasks.shutdown(std::time::Duration::from_secs(5)).await);
    }

    /// A recorded row waits for the writer's beat (it wakes nothing), then is written in
    /// that beat without a flush. Tokio's paused clock, not sleeps.
    #[tokio::test(start_paused = true)]
    async fn rows_leave_on_the_beat_not_on_arrival() {
        let written = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counted = written.clone();
        let mut store = MockStore::new();
        store.expect_record_usage().returning(move |rows| {
            counted.fetch_add(rows.len(), std::sync::atomic::Ordering::SeqCst);
            Ok(())
        });
        let tasks = crate::tasks::BackgroundTasks::new();
        let recorder = SpendRecorder::start(Arc::new(store), &tasks.spawner());
        // The first beat fires at once: let it pass with nothing queued.
        tokio::time::sleep(std::time::Duration::from_millis(1)).await;
        recorder.record(row(1), Arc::from("k"));
        tokio::time::sleep(FLUSH_EVERY / 2).await;
        assert_eq!(
            written.load(std::sync::atomic::Ordering::SeqCst),
            0,
            "not yet"
        );
        tokio::time::sleep(FLUSH_EVERY).await;
        assert_eq!(
            written.load(std::sync::atomic::Ordering::SeqCst),
            1,
            "on the beat"
        );
        recorder.shutdown().await;
        assert!(tasks.shutdown(std::time::Duration::from_secs(5)).await);
    }
}
