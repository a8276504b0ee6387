//! [`LocalLimiter`]: the in-process implementation (single instance, or Redis down in
//! `failure_mode: open`).

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::{Demand, Refusal, Subject};

const WINDOW: Duration = Duration::from_secs(60);

#[derive(Default)]
struct State {
    requests: VecDeque<Instant>,
    tokens: VecDeque<(Instant, u64)>,
    token_sum: u64,
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
        while self
            .requests
            .front()
            .is_some_and(|t| now.duration_since(*t) >= WINDOW)
        {
            self.requests.pop_front();
        }
        while let Some((t, n)) = self.tokens.front().copied() {
            if now.duration_since(t) < WINDOW {
                break;
            }
            self.tokens.pop_front();
            self.token_sum -= n;
        }
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
                && st.requests.len() as u64 >= rpm
            {
                let oldest = st.requests.front().copied().unwrap_or(now);
                return Err(Refusal::Rate {
                    retry_after: WINDOW.saturating_sub(now.duration_since(oldest)),
                });
            }
            if let Some(tpm) = s.tpm {
                let used = st.token_sum + st.reserved_tokens;
                if used >= tpm || (demand.reserve_tokens > 0 && used + demand.reserve_tokens > tpm)
                {
                    let oldest = st.tokens.front().map(|(t, _)| *t).unwrap_or(now);
                    return Err(Refusal::Rate {
                        retry_after: WINDOW.saturating_sub(now.duration_since(oldest)),
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
            st.requests.push_back(now);
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
            if let Some(st) = states.get_mut(&s.id)
                && let Some(i) = st.requests.iter().rposition(|t| *t == permit.admitted_at)
            {
                st.requests.remove(i);
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
                st.tokens.push_back((now, tokens));
                st.token_sum += tokens;
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
