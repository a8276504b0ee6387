//! Admission control (SPEC §5.2 checks 5–7): budgets, requests and tokens per rolling
//! minute, and parallel requests, for a key and its team together.
//!
//! Algorithms and guarantees (in-process implementation, [`LocalLimiter`]):
//! - **RPM — sliding log.** Each admitted request's time is kept for 60 s; a request is
//!   admitted only while fewer than `rpm_limit` were admitted in the last 60 s. Exact:
//!   no window boundary lets 2×N through, and a refused request is not logged. The log
//!   keeps requests in 100 ms slots (at most 600 per subject, whatever the rate), each
//!   leaving the window 60 s after its last request: a request counts for 60 to 60.1 s,
//!   never less.
//! - **TPM — sliding log of token amounts**, same window. Tokens are known only when a
//!   response ends, so a request is admitted while the window holds fewer than
//!   `tpm_limit` tokens; requests already in flight may overshoot by their own tokens.
//!   A request that bounds its output reserves `prompt estimate + bound` at admission,
//!   which counts against the limit at once and is replaced by the real count at the end,
//!   so concurrent bounded requests cannot overshoot.
//! - **Parallel — counter** of requests in flight, released when the response ends.
//! - **Budget — spend in the current period** (seeded from the stored spend), plus the
//!   cost reserved by bounded requests in flight.
//!
//! All subjects (key and team) are checked and charged under one lock, so a refusal by
//! either consumes nothing from the other.
//!
//! With Redis configured, [`RedisLimiter`] applies the same algorithms atomically in Redis
//! for every instance. When Redis cannot answer, `redis.failure_mode` decides: `closed`
//! refuses with 503 `limits_unavailable`; `open` falls back to this instance's local
//! limits (logged and counted in `tollgate_limiter_fallbacks_total`).

mod batch;
mod local;
mod redis;

pub use local::{LocalLimiter, LocalPermit};
pub use redis::{RedisLimiter, RedisPermit};

use std::sync::Arc;
use std::time::Duration;

use crate::config::FailureMode;

/// Limits of one subject (a key or a team).
#[derive(Debug, Clone, Default)]
pub struct Subject {
    /// `key:{id}` or `team:{id}`; shared, since the limiter keeps it per request.
    pub id: Arc<str>,
    pub rpm: Option<u64>,
    pub tpm: Option<u64>,
    pub parallel: Option<u64>,
    pub max_budget: Option<f64>,
    /// Spend recorded in the database when the subject was loaded (current period).
    pub stored_spend: f64,
    /// When the current budget period ends.
    pub budget_reset_at: Option<chrono::DateTime<chrono::Utc>>,
}

impl Subject {
    pub fn is_limited(&self) -> bool {
        self.rpm.is_some()
            || self.tpm.is_some()
            || self.parallel.is_some()
            || self.max_budget.is_some()
    }
}

/// What a request may consume, reserved at admission when bounded.
#[derive(Debug, Clone, Copy, Default)]
pub struct Demand {
    pub reserve_tokens: u64,
    pub reserve_cost: f64,
}

/// Why a request was refused.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Refusal {
    Budget,
    Rate { retry_after: Duration },
    Parallel,
}

/// Why [`Limiter::admit`] said no. The caller (the proxy pipeline) turns it into a
/// response; this module only counts it.
#[derive(Debug, Clone, Copy, PartialEq, thiserror::Error)]
pub enum LimitError {
    #[error("refused: {0:?}")]
    Refused(Refusal),
    /// Redis is unreachable and `failure_mode` is `closed`.
    #[error("limits unavailable")]
    Unavailable,
}

impl From<Refusal> for LimitError {
    fn from(refusal: Refusal) -> Self {
        let kind = match refusal {
            Refusal::Budget => "budget",
            Refusal::Rate { .. } => "rate",
            Refusal::Parallel => "parallel",
        };
        metrics::counter!(crate::telemetry::LIMIT_REJECTIONS, "kind" => kind).increment(1);
        Self::Refused(refusal)
    }
}

fn unavailable() -> LimitError {
    metrics::counter!(crate::telemetry::LIMIT_REJECTIONS, "kind" => "unavailable").increment(1);
    LimitError::Unavailable
}

/// A request's claim on its limits.
#[derive(Debug)]
pub enum Permit {
    Local(LocalPermit),
    Redis(RedisPermit),
}

/// The limiter the proxy talks to: Redis when configured, else in process.
pub struct Limiter {
    local: LocalLimiter,
    redis: Option<RedisLimiter>,
    failure_mode: FailureMode,
}

impl Limiter {
    pub fn new(redis: Option<RedisLimiter>, failure_mode: FailureMode) -> Self {
        Self {
            local: LocalLimiter::default(),
            redis,
            failure_mode,
        }
    }

    /// Admits the request or says why not. Refused requests consume nothing.
    pub async fn admit(&self, subjects: &[Subject], demand: Demand) -> Result<Permit, LimitError> {
        let Some(redis) = &self.redis else {
            return Ok(Permit::Local(self.local.admit(subjects, demand)?));
        };
        match redis.admit(subjects, demand).await {
            Ok(Ok(permit)) => Ok(Permit::Redis(permit)),
            Ok(Err(refusal)) => Err(refusal.into()),
            Err(e) => match self.failure_mode {
                FailureMode::Closed => {
                    tracing::warn!(error = %e, "Redis unavailable: refusing (failure_mode: closed)");
                    Err(unavailable())
                }
                FailureMode::Open => {
                    tracing::warn!(error = %e, "Redis unavailable: using local limits (failure_mode: open)");
                    metrics::counter!(crate::telemetry::LIMITER_FALLBACKS).increment(1);
                    Ok(Permit::Local(self.local.admit(subjects, demand)?))
                }
            },
        }
    }

    /// For a request with no limits to enforce (an unlimited key, the master key). In
    /// `closed` mode it is refused too while Redis is unreachable — SPEC §7 refuses
    /// proxied routes, not limited keys — judged from the client's connection state,
    /// so nothing is sent to Redis.
    pub fn check_available(&self) -> Result<(), LimitError> {
        match &self.redis {
            Some(redis) if self.failure_mode == FailureMode::Closed && !redis.is_connected() => {
                tracing::warn!("Redis unavailable: refusing (failure_mode: closed)");
                Err(unavailable())
            }
            _ => Ok(()),
        }
    }

    /// Takes back a request that was never sent (it left the queue, or nothing could be
    /// delivered): it consumes nothing, its RPM admission included.
    pub fn cancel(&self, permit: Permit) {
        match permit {
            Permit::Local(p) => self.local.cancel(p),
            Permit::Redis(p) => p.cancel(),
        }
    }

    /// Releases the permit, replacing its reservation by the real usage.
    pub fn settle(&self, permit: Permit, tokens: u64, cost: f64) {
        match permit {
            Permit::Local(p) => self.local.settle(p, tokens, cost),
            Permit::Redis(p) => p.settle(tokens, cost),
        }
    }
}
