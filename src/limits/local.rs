//! [`LocalLimiter`]: the in-process implementation (single instance, or Redis down in
//! `failure_mode: open`).

use std::collections::VecDeque;

// Every admission reads and updates the map: foldhash, seeded per process, not SipHash.
use foldhash::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::{Demand, Refusal, Subject};

const WINDOW: Duration = Duration::from_secs(60);

/// Entries of a sliding log that start within this long of each other share one slot.
const SLOT: Duration = Duration::from_millis(100);

/// One slot of a sliding log: what was logged from `first` to `last` (less than [`SLOT`]
/// apart). It leaves the window a full [`WINDOW`] after `last`, so nothing is forgotten
/// early: a log counts each entry for at least 60 s and at most 60.1 s, and holds at
/// most 600 slots whatever the rate (one entry per request made a key at 10,000 req/s
/// hold 600,000 of them, and the memory stayed after the traffic stopped).
#[derive(Debug, Clone, Copy)]
struct Slot {
    first: Instant,
    last: Instant,
    amount: u64,
}

/// A sliding log of amounts (requests, tokens) over [`WINDOW`], in [`Slot`]s.
#[derive(Default)]
struct Log {
    slots: VecDeque<Slot>,
    sum: u64,
}

impl Log {
    fn add(&mut self, now: Instant, amount: u64) {
        self.sum += amount;
        match self.slots.back_mut() {
            Some(slot) if now.saturating_duration_since(slot.first) < SLOT => {
                slot.last = now;
                slot.amount += amount;
            }
            _ => self.slots.push_back(Slot {
                first: now,
                last: now,
                amount,
            }),
        }
    }

    fn expire(&mut self, now: Instant) {
        while let Some(slot) = self.slots.front().copied() {
            if now.saturating_duration_since(slot.last) < WINDOW {
                break;
            }
            self.slots.pop_front();
            self.sum -= slot.amount;
        }
        if self.slots.is_empty() && self.slots.capacity() > 64 {
            self.slots.shrink_to(64);
        }
    }

    /// Takes back `amount` logged at `at` (a request that was never sent), from the slot
    /// that holds it; an emptied slot goes.
    fn take_back(&mut self, at: Instant, amount: u64) {
        let Some(i) = self
            .slots
            .iter()
            .rposition(|slot| slot.first <= at && at <= slot.last)
        else {
            return; // already out of the window
        };
        let taken = self.slots[i].amount.min(amount);
        self.slots[i].amount -= taken;
        self.sum -= taken;
        if self.slots[i].amount == 0 {
            self.slots.remove(i);
        }
    }

    /// How long until the oldest slot leaves the window.
    fn retry_after(&self, now: Instant) -> Duration {
        let oldest = self.slots.front().map_or(now, |s| s.last);
        WINDOW.saturating_sub(now.saturating_duration_since(oldest))
    }
}

#[derive(Default)]
struct State {
    requests: Log,
    tokens: Log,
    reserved_tokens: u64,
    in_flight: u64,
    /// Spend of the current period seen by this process, seeded from the database.
    spend: Option<f64>,
    /// The budget period `spend` belongs to (see [`Period`]).
    period: Option<Period>,
    reserved_cost: f64,
}

impl State {
    fn expire(&mut self, now: Instant) {
        self.requests.expire(now);
        self.tokens.expire(now);
    }

    /// Spend in the subject's current budget period. The counter follows the period the
    /// store reports: a new `budget_reset_at` (reset job, changed `budget_duration`)
    /// starts again from the stored spend, and a period that has ended before the store
    /// caught up starts from zero — the same rule as the Redis limiter's counters.
    fn spend(&mut self, subject: &Subject) -> f64 {
        let period = Period::of(subject, chrono::Utc::now());
        if self.period != Some(period) || self.spend.is_none() {
            self.period = Some(period);
            self.spend = Some(if period.ended {
                0.0
            } else {
                subject.stored_spend
            });
        }
        self.spend.unwrap_or(0.0)
    }
}

/// Identifies a budget period: the end the store reported, and whether it has passed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Period {
    end: Option<chrono::DateTime<chrono::Utc>>,
    ended: bool,
}

impl Period {
    fn of(subject: &Subject, now: chrono::DateTime<chrono::Utc>) -> Self {
        Self {
            end: subject.budget_reset_at,
            ended: subject.budget_reset_at.is_some_and(|end| end <= now),
        }
    }
}

/// A request's claim on its subjects, released by [`LocalLimiter::settle`] — or, if the
/// request is abandoned before that, released (with no usage) when dropped, so a slot can
/// never leak.
pub struct LocalPermit {
    limiter: LocalLimiter,
    subjects: Vec<Subject>,
    demand: Demand,
    /// When it was admitted: its entry in every subject's RPM log.
    admitted_at: Instant,
    settled: bool,
}

impl std::fmt::Debug for LocalPermit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalPermit")
            .field("subjects", &self.subjects.len())
            .field("settled", &self.settled)
            .finish()
    }
}

impl Drop for LocalPermit {
    fn drop(&mut self) {
        // Dropped unsettled: the request was never sent (it left the queue, or failed
        // before the upstream), so it consumed nothing — its admission included.
        if !self.settled {
            self.limiter.release(self, 0, 0.0);
            self.limiter.forget_admission(self);
        }
    }
}

#[derive(Default, Clone)]
pub struct LocalLimiter {
    states: Arc<Mutex<HashMap<Arc<str>, State>>>,
}

impl LocalLimiter {
    /// Admits the request against every subject, or refuses it without charging any.
    pub fn admit(&self, subjects: &[Subject], demand: Demand) -> Result<LocalPermit, Refusal> {
        let now = Instant::now();
        let mut states = self.states.lock().unwrap_or_else(|p| p.into_inner());
        // Check everything first…
        for s in subjects {
            let st = states.entry(s.id.clone()).or_default();
            st.expire(now);
            if let Some(max) = s.max_budget {
                let spent = st.spend(s) + st.reserved_cost;
                if spent >= max || (demand.reserve_cost > 0.0 && spent + demand.reserve_cost > max)
                {
                    return Err(Refusal::Budget);
                }
            }
            if let Some(rpm) = s.rpm
                && st.requests.sum >= rpm
            {
                return Err(Refusal::Rate {
                    retry_after: st.requests.retry_after(now),
                });
            }
            if let Some(tpm) = s.tpm {
                let used = st.tokens.sum + st.reserved_tokens;
                if used >= tpm || (demand.reserve_tokens > 0 && used + demand.reserve_tokens > tpm)
                {
                    return Err(Refusal::Rate {
                        retry_after: st.tokens.retry_after(now),
                    });
                }
            }
            if let Some(max) = s.parallel
                && st.in_flight >= max
            {
                return Err(Refusal::Parallel);
            }
        }
        // …then charge every subject.
        for s in subjects {
            let st = states.entry(s.id.clone()).or_default();
            st.requests.add(now, 1);
            st.in_flight += 1;
            st.reserved_tokens += demand.reserve_tokens;
            st.reserved_cost += demand.reserve_cost;
        }
        Ok(LocalPermit {
            limiter: self.clone(),
            subjects: subjects.to_vec(),
            demand,
            admitted_at: now,
            settled: false,
        })
    }

    /// Releases the permit's parallel slot and replaces its reservation by what the
    /// request really used.
    pub fn settle(&self, mut permit: LocalPermit, tokens: u64, cost: f64) {
        self.release(&permit, tokens, cost);
        permit.settled = true;
    }

    /// Takes back a request that was never sent: its parallel slot, its reservation and
    /// its place in the RPM window (SPEC §12: it consumed nothing).
    pub fn cancel(&self, permit: LocalPermit) {
        drop(permit);
    }

    fn forget_admission(&self, permit: &LocalPermit) {
        let mut states = self.states.lock().unwrap_or_else(|p| p.into_inner());
        for s in &permit.subjects {
            if let Some(st) = states.get_mut(&s.id) {
                st.requests.take_back(permit.admitted_at, 1);
            }
        }
    }

    fn release(&self, permit: &LocalPermit, tokens: u64, cost: f64) {
        let now = Instant::now();
        let mut states = self.states.lock().unwrap_or_else(|p| p.into_inner());
        for s in &permit.subjects {
            let st = states.entry(s.id.clone()).or_default();
            st.in_flight = st.in_flight.saturating_sub(1);
            st.reserved_tokens = st
                .reserved_tokens
                .saturating_sub(permit.demand.reserve_tokens);
            st.reserved_cost = (st.reserved_cost - permit.demand.reserve_cost).max(0.0);
            if tokens > 0 {
                st.tokens.add(now, tokens);
            }
            let spent = st.spend(s);
            st.spend = Some(spent + cost);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(
        rpm: Option<u64>,
        tpm: Option<u64>,
        parallel: Option<u64>,
        budget: Option<f64>,
    ) -> Subject {
        Subject {
            id: "key:k".into(),
            rpm,
            tpm,
            parallel,
            max_budget: budget,
            ..Default::default()
        }
    }

    #[test]
    fn a_cancelled_request_gives_its_rpm_admission_back() {
        let l = LocalLimiter::default();
        let s = [key(Some(1), None, Some(1), None)];
        let permit = l.admit(&s, Demand::default()).expect("admitted");
        assert!(
            l.admit(&s, Demand::default()).is_err(),
            "the window is full"
        );
        l.cancel(permit);
        let again = l
            .admit(&s, Demand::default())
            .expect("the admission came back");
        l.settle(again, 1, 0.0);
        assert!(
            matches!(l.admit(&s, Demand::default()), Err(Refusal::Rate { .. })),
            "a settled request keeps its admission"
        );
    }

    #[test]
    fn rpm_admits_exactly_n_and_refusals_consume_nothing() {
        let l = LocalLimiter::default();
        let s = [key(Some(3), None, None, None)];
        let permits: Vec<_> = (0..3)
            .map(|_| l.admit(&s, Demand::default()).expect("admitted"))
            .collect();
        for _ in 0..5 {
            assert!(matches!(
                l.admit(&s, Demand::default()),
                Err(Refusal::Rate { .. })
            ));
        }
        for p in permits {
            l.settle(p, 0, 0.0);
        }
        assert!(l.admit(&s, Demand::default()).is_err(), "window still full");
    }

    #[test]
    fn a_log_holds_few_slots_and_forgets_nothing_early() {
        let start = Instant::now();
        let mut log = Log::default();
        for i in 0..10_000u32 {
            log.add(start + Duration::from_micros(u64::from(i) * 100), 1);
        }
        assert_eq!(log.sum, 10_000);
        assert!(log.slots.len() <= 11, "{} slots", log.slots.len());
        log.expire(start + WINDOW - Duration::from_millis(1));
        assert_eq!(log.sum, 10_000, "the first request is not 60 s old yet");
        log.expire(start + WINDOW + SLOT);
        assert_eq!(
            log.sum, 9_000,
            "the first slot (its last request 99.9 ms in) left"
        );
        let last = start + Duration::from_micros(9_999 * 100);
        log.expire(last + WINDOW);
        assert_eq!(log.sum, 0);
        assert!(log.slots.capacity() <= 64);
    }

    #[test]
    fn parallel_slots_are_released() {
        let l = LocalLimiter::default();
        let s = [key(None, None, Some(1), None)];
        let p = l.admit(&s, Demand::default()).expect("first");
        assert_eq!(
            l.admit(&s, Demand::default()).err(),
            Some(Refusal::Parallel)
        );
        l.settle(p, 0, 0.0);
        assert!(l.admit(&s, Demand::default()).is_ok());
    }

    #[test]
    fn tpm_refuses_after_the_limit_is_crossed() {
        let l = LocalLimiter::default();
        let s = [key(None, Some(100), None, None)];
        let p = l.admit(&s, Demand::default()).expect("first");
        l.settle(p, 100, 0.0);
        assert!(matches!(
            l.admit(&s, Demand::default()),
            Err(Refusal::Rate { .. })
        ));
    }

    #[test]
    fn bounded_requests_reserve_tokens() {
        let l = LocalLimiter::default();
        let s = [key(None, Some(100), None, None)];
        let demand = Demand {
            reserve_tokens: 40,
            reserve_cost: 0.0,
        };
        let a = l.admit(&s, demand).expect("a");
        let _b = l.admit(&s, demand).expect("b");
        assert!(l.admit(&s, demand).is_err(), "a third would overshoot");
        l.settle(a, 5, 0.0);
        assert!(
            l.admit(&s, demand).is_ok(),
            "settling frees the unused reservation"
        );
    }

    #[test]
    fn budget_counts_stored_spend_and_new_cost() {
        let l = LocalLimiter::default();
        let mut k = key(None, None, None, Some(1.0));
        k.stored_spend = 0.5;
        let s = [k];
        let p = l.admit(&s, Demand::default()).expect("under budget");
        l.settle(p, 10, 0.6);
        assert_eq!(l.admit(&s, Demand::default()).err(), Some(Refusal::Budget));
    }

    #[test]
    fn a_new_budget_period_from_the_store_starts_fresh() {
        let l = LocalLimiter::default();
        let mut k = key(None, None, None, Some(1.0));
        k.budget_reset_at = Some(chrono::Utc::now() + chrono::Duration::days(30));
        let p = l
            .admit(std::slice::from_ref(&k), Demand::default())
            .expect("under budget");
        l.settle(p, 10, 2.0);
        assert_eq!(
            l.admit(std::slice::from_ref(&k), Demand::default()).err(),
            Some(Refusal::Budget)
        );
        // The store reset the period: spend 0, a new end.
        k.stored_spend = 0.0;
        k.budget_reset_at = Some(chrono::Utc::now() + chrono::Duration::days(60));
        assert!(l.admit(std::slice::from_ref(&k), Demand::default()).is_ok());
    }

    #[test]
    fn an_ended_period_starts_from_zero_before_the_store_catches_up() {
        let l = LocalLimiter::default();
        let mut k = key(None, None, None, Some(1.0));
        k.stored_spend = 5.0;
        k.budget_reset_at = Some(chrono::Utc::now() - chrono::Duration::seconds(1));
        assert!(l.admit(&[k], Demand::default()).is_ok());
    }

    #[test]
    fn a_dropped_permit_frees_its_slot() {
        let l = LocalLimiter::default();
        let s = [key(None, None, Some(1), None)];
        drop(l.admit(&s, Demand::default()).expect("first"));
        assert!(l.admit(&s, Demand::default()).is_ok());
    }

    #[test]
    fn a_team_refusal_charges_the_key_nothing() {
        let l = LocalLimiter::default();
        let k = key(Some(1), None, None, None);
        let team = Subject {
            id: "team:t".into(),
            parallel: Some(0),
            ..Default::default()
        };
        assert_eq!(
            l.admit(&[k.clone(), team], Demand::default()).err(),
            Some(Refusal::Parallel)
        );
        assert!(
            l.admit(&[k], Demand::default()).is_ok(),
            "the key's RPM slot was not used"
        );
    }
}
