//! [`Batcher`]: the flush policy of the Redis settler — what is queued leaves in batches
//! of at most `max`, at the latest `linger` after the first of a batch arrived.
//!
//! Kept apart from Redis so the policy (size, deadline, drain at shutdown) is tested on
//! its own under tokio's paused clock.

use std::time::Duration;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

pub(super) struct Batcher<T> {
    rx: mpsc::Receiver<T>,
    max: usize,
    linger: Duration,
}

impl<T> Batcher<T> {
    pub(super) fn new(rx: mpsc::Receiver<T>, max: usize, linger: Duration) -> Self {
        Self {
            rx,
            max: max.max(1),
            linger,
        }
    }

    /// Waits for the next batch and fills `batch` (cleared first): returns once it holds
    /// `max` items or `linger` after its first item arrived, whichever comes first. Returns
    /// false, with `batch` empty, once `stop` has fired or every sender is gone; what is
    /// still queued then is taken with [`Batcher::drain`].
    pub(super) async fn next(&mut self, stop: &CancellationToken, batch: &mut Vec<T>) -> bool {
        batch.clear();
        // `biased`: a stop wins over more work, so shutdown never waits for a lull; the
        // work queued by then is drained, not lost.
        tokio::select! {
            biased;
            () = stop.cancelled() => return false,
            n = self.rx.recv_many(batch, self.max) => if n == 0 { return false },
        }
        let deadline = tokio::time::Instant::now() + self.linger;
        while batch.len() < self.max {
            let room = self.max - batch.len();
            tokio::select! {
                biased;
                () = stop.cancelled() => break,
                n = self.rx.recv_many(batch, room) => if n == 0 { break },
                () = tokio::time::sleep_until(deadline) => break,
            }
        }
        true
    }

    /// At shutdown: refuses further items (senders then see the channel closed) and fills
    /// `batch` (cleared first) with up to `max` of those still queued. Returns false once
    /// nothing is left.
    pub(super) fn drain(&mut self, batch: &mut Vec<T>) -> bool {
        self.rx.close();
        batch.clear();
        while batch.len() < self.max {
            match self.rx.try_recv() {
                Ok(item) => batch.push(item),
                Err(_) => break,
            }
        }
        !batch.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::time::Instant;

    const LINGER: Duration = Duration::from_millis(5);

    fn batcher(max: usize) -> (mpsc::Sender<u32>, Batcher<u32>) {
        let (tx, rx) = mpsc::channel(1_000);
        (tx, Batcher::new(rx, max, LINGER))
    }

    #[tokio::test(start_paused = true)]
    async fn a_full_batch_leaves_at_once() {
        let (tx, mut b) = batcher(4);
        for i in 0..10 {
            tx.try_send(i).expect("room");
        }
        let stop = CancellationToken::new();
        let mut batch = Vec::new();
        let start = Instant::now();
        assert!(b.next(&stop, &mut batch).await);
        assert_eq!(batch, [0, 1, 2, 3]);
        assert!(b.next(&stop, &mut batch).await);
        assert_eq!(batch, [4, 5, 6, 7]);
        assert_eq!(Instant::now(), start, "no wait for a full batch");
    }

    #[tokio::test(start_paused = true)]
    async fn a_partial_batch_leaves_linger_after_its_first_item() {
        let (tx, mut b) = batcher(64);
        let stop = CancellationToken::new();
        let start = Instant::now();
        let send = async move {
            tokio::time::sleep(Duration::from_millis(10)).await;
            tx.try_send(1).expect("room");
            tokio::time::sleep(Duration::from_millis(2)).await;
            tx.try_send(2).expect("room");
            // After the deadline: the next batch's.
            tokio::time::sleep(Duration::from_millis(10)).await;
            tx.try_send(3).expect("room");
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        let receive = async {
            let mut batch = Vec::new();
            assert!(b.next(&stop, &mut batch).await);
            assert_eq!(batch, [1, 2]);
            assert_eq!(
                Instant::now() - start,
                Duration::from_millis(10) + LINGER,
                "sent linger after the first item, not after the wait began"
            );
            assert!(b.next(&stop, &mut batch).await);
            assert_eq!(batch, [3]);
            assert_eq!(Instant::now() - start, Duration::from_millis(22) + LINGER);
            assert!(!b.next(&stop, &mut batch).await, "every sender gone");
            assert_eq!(Instant::now() - start, Duration::from_millis(122));
        };
        tokio::join!(send, receive);
    }

    #[tokio::test(start_paused = true)]
    async fn a_stop_ends_the_wait_and_drain_takes_everything_queued() {
        let (tx, mut b) = batcher(3);
        let stop = CancellationToken::new();
        let mut batch = Vec::new();
        let start = Instant::now();
        let stopper = async {
            tokio::time::sleep(Duration::from_secs(60)).await;
            stop.cancel();
        };
        let (stopped, ()) = tokio::join!(b.next(&stop, &mut batch), stopper);
        assert!(!stopped, "stopped while idle");
        assert_eq!(Instant::now() - start, Duration::from_secs(60));

        for i in 0..7 {
            tx.try_send(i).expect("room");
        }
        let mut drained = Vec::new();
        while b.drain(&mut batch) {
            assert!(batch.len() <= 3, "drained in batches of at most max");
            drained.extend_from_slice(&batch);
        }
        assert_eq!(drained, [0, 1, 2, 3, 4, 5, 6]);
        assert!(
            matches!(tx.try_send(7), Err(mpsc::error::TrySendError::Closed(7))),
            "nothing is accepted once drained"
        );
    }
}
