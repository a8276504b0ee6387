//! [`Lanes`]: the flush policy of the shared-slot calls — claims on the request path
//! leave at once, releases wait a little for company; whatever is queued rides along.
//!
//! One call to Redis is in flight at a time. A claim that arrives while one is out waits
//! for it to come back and then leaves with every claim queued behind it, so under load
//! one call carries many claims (group commit) and at low load a claim waits for
//! nothing. Releases are off the request path: alone they linger up to `linger` for
//! others, and any claim cuts the linger short. Kept apart from Redis so the policy is
//! tested on its own under tokio's paused clock.

use std::time::Duration;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

pub(super) struct Lanes<U, L> {
    /// Claims: a request waits for each.
    urgent: mpsc::Receiver<U>,
    /// Releases: nobody waits.
    lazy: mpsc::Receiver<L>,
    max: usize,
    linger: Duration,
}

impl<U, L> Lanes<U, L> {
    pub(super) fn new(
        urgent: mpsc::Receiver<U>,
        lazy: mpsc::Receiver<L>,
        max: usize,
        linger: Duration,
    ) -> Self {
        Self {
            urgent,
            lazy,
            max: max.max(1),
            linger,
        }
    }

    /// Waits for the next call's work and fills `urgent` and `lazy` (cleared first), each
    /// with at most `max` items: as soon as a claim is queued (with the releases queued by
    /// then), or with releases alone once `max` of them are queued or `linger` after the
    /// first. Returns false, both empty, once `stop` has fired or the senders are gone;
    /// what is still queued then is taken with [`Lanes::drain`].
    pub(super) async fn next(
        &mut self,
        stop: &CancellationToken,
        urgent: &mut Vec<U>,
        lazy: &mut Vec<L>,
    ) -> bool {
        urgent.clear();
        lazy.clear();
        // `biased`: a stop wins over more work, so shutdown never waits for a lull; claims
        // before releases.
        tokio::select! {
            biased;
            () = stop.cancelled() => return false,
            n = self.urgent.recv_many(urgent, self.max) => if n == 0 { return false },
            n = self.lazy.recv_many(lazy, self.max) => if n == 0 { return false },
        }
        if urgent.is_empty() {
            let deadline = tokio::time::Instant::now() + self.linger;
            while lazy.len() < self.max {
                let room = self.max - lazy.len();
                tokio::select! {
                    biased;
                    () = stop.cancelled() => break,
                    _ = self.urgent.recv_many(urgent, self.max) => break,
                    n = self.lazy.recv_many(lazy, room) => if n == 0 { break },
                    () = tokio::time::sleep_until(deadline) => break,
                }
            }
        }
        take_queued(&mut self.urgent, urgent, self.max);
        take_queued(&mut self.lazy, lazy, self.max);
        true
    }

    /// At shutdown: refuses further items (senders then see the channels closed) and
    /// fills `urgent` and `lazy` (cleared first) with up to `max` each of those still
    /// queued. Returns false once nothing is left.
    pub(super) fn drain(&mut self, urgent: &mut Vec<U>, lazy: &mut Vec<L>) -> bool {
        self.urgent.close();
        self.lazy.close();
        urgent.clear();
        lazy.clear();
        take_queued(&mut self.urgent, urgent, self.max);
        take_queued(&mut self.lazy, lazy, self.max);
        !urgent.is_empty() || !lazy.is_empty()
    }
}

/// Moves what `rx` holds now into `batch`, up to `max` in all, without waiting.
fn take_queued<T>(rx: &mut mpsc::Receiver<T>, batch: &mut Vec<T>, max: usize) {
    while batch.len() < max {
        match rx.try_recv() {
            Ok(item) => batch.push(item),
            Err(_) => break,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::time::Instant;

    const LINGER: Duration = Duration::from_millis(2);

    struct Rig {
        claims: mpsc::Sender<u32>,
        releases: mpsc::Sender<u32>,
        lanes: Lanes<u32, u32>,
        stop: CancellationToken,
        urgent: Vec<u32>,
        lazy: Vec<u32>,
    }

    fn rig(max: usize) -> Rig {
        let (claims, u) = mpsc::channel(1_000);
        let (releases, l) = mpsc::channel(1_000);
        Rig {
            claims,
            releases,
            lanes: Lanes::new(u, l, max, LINGER),
            stop: CancellationToken::new(),
            urgent: Vec::new(),
            lazy: Vec::new(),
        }
    }

    impl Rig {
        async fn next(&mut self) -> bool {
            self.lanes
                .next(&self.stop, &mut self.urgent, &mut self.lazy)
                .await
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_claim_leaves_at_once_with_the_releases_queued() {
        let mut r = rig(64);
        r.releases.try_send(10).expect("room");
        r.releases.try_send(11).expect("room");
        r.claims.try_send(1).expect("room");
        let start = Instant::now();
        assert!(r.next().await);
        assert_eq!(r.urgent, [1]);
        assert_eq!(r.lazy, [10, 11]);
        assert_eq!(Instant::now(), start, "a claim never waits for company");
    }

    #[tokio::test(start_paused = true)]
    async fn claims_queued_behind_a_call_leave_together_in_batches_of_max() {
        let mut r = rig(4);
        for i in 0..6 {
            r.claims.try_send(i).expect("room");
        }
        assert!(r.next().await);
        assert_eq!(r.urgent, [0, 1, 2, 3]);
        assert!(r.next().await);
        assert_eq!(r.urgent, [4, 5]);
        assert!(r.lazy.is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn releases_alone_linger_and_a_claim_cuts_the_linger_short() {
        let mut r = rig(64);
        let start = Instant::now();
        r.releases.try_send(10).expect("room");
        assert!(r.next().await);
        assert_eq!(r.lazy, [10]);
        assert!(r.urgent.is_empty());
        assert_eq!(
            Instant::now() - start,
            LINGER,
            "a lone release waits linger"
        );

        let releases = r.releases.clone();
        let claims = r.claims.clone();
        let send = async move {
            releases.try_send(20).expect("room");
            tokio::time::sleep(Duration::from_millis(1)).await;
            claims.try_send(2).expect("room");
        };
        let start = Instant::now();
        let (ready, ()) = tokio::join!(r.next(), send);
        assert!(ready);
        assert_eq!(r.lazy, [20]);
        assert_eq!(r.urgent, [2]);
        assert_eq!(
            Instant::now() - start,
            Duration::from_millis(1),
            "the claim went at once and took the release along"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn max_releases_leave_without_lingering() {
        let mut r = rig(3);
        for i in 0..3 {
            r.releases.try_send(i).expect("room");
        }
        let start = Instant::now();
        assert!(r.next().await);
        assert_eq!(r.lazy, [0, 1, 2]);
        assert_eq!(Instant::now(), start);
    }

    #[tokio::test(start_paused = true)]
    async fn a_stop_ends_the_wait_and_drain_takes_everything_queued() {
        let mut r = rig(2);
        let stop = r.stop.clone();
        let stopper = async move {
            tokio::time::sleep(Duration::from_secs(60)).await;
            stop.cancel();
        };
        let (ready, ()) = tokio::join!(r.next(), stopper);
        assert!(!ready, "stopped while idle");

        for i in 0..3 {
            r.claims.try_send(i).expect("room");
            r.releases.try_send(10 + i).expect("room");
        }
        let (mut claims, mut releases) = (Vec::new(), Vec::new());
        while r.lanes.drain(&mut r.urgent, &mut r.lazy) {
            assert!(r.urgent.len() <= 2 && r.lazy.len() <= 2);
            claims.extend_from_slice(&r.urgent);
            releases.extend_from_slice(&r.lazy);
        }
        assert_eq!(claims, [0, 1, 2]);
        assert_eq!(releases, [10, 11, 12]);
        assert!(
            r.claims.try_send(9).is_err() && r.releases.try_send(9).is_err(),
            "nothing is accepted once drained"
        );
    }
}
