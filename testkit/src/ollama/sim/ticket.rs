//! A request's hold on the simulated scheduler: a [`Ticket`] while it waits, a
//! [`Slot`] while it generates. Both give their place back when dropped, so a client
//! that disconnects leaves the queue (or frees its slot) at once, with no bookkeeping
//! in the HTTP code.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::oneshot;

use super::{Scheduler, Start};

/// A request's place in the queue; dropping it leaves the queue.
#[derive(Debug)]
pub(crate) struct Ticket {
    pub(super) scheduler: Arc<Scheduler>,
    pub(super) id: u64,
    pub(super) model: String,
    pub(super) start: Option<oneshot::Receiver<Start>>,
    /// Cleared once the request holds a [`Slot`], whose drop gives the capacity back.
    pub(super) armed: bool,
}

impl Ticket {
    /// Wait for a slot. `None` only if the scheduler dropped the request, which it
    /// never does while a ticket exists.
    pub(crate) async fn start(mut self) -> Option<Slot> {
        let rx = self.start.take()?;
        let start = rx.await.ok();
        self.armed = false;
        Some(Slot {
            scheduler: Arc::clone(&self.scheduler),
            id: self.id,
            model: std::mem::take(&mut self.model),
            start: start?,
        })
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        if self.armed {
            self.scheduler.release(self.id, &self.model);
        }
    }
}

/// A running request's slot on its model; dropping it ends the request.
#[derive(Debug)]
pub(crate) struct Slot {
    scheduler: Arc<Scheduler>,
    id: u64,
    model: String,
    start: Start,
}

impl Slot {
    pub(crate) fn load_duration(&self) -> Duration {
        self.start.load_duration
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.scheduler.release(self.id, &self.model);
    }
}
