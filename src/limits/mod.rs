//! Admission control (SPEC §5.2 checks 5–7): budgets, requests and tokens per rolling
//! minute, and parallel requests, for a key and its team together.
//!
//! Algorithms and guarantees (in-process implementation, [`LocalLimiter`]):
//! - **RPM — sliding log.** Each admitted request's time is kept for 60 s; a request is
//!   admitted only while fewer than `rpm_limit` were admitted in the last 60 s. Exact:
//!   no window boundary lets 2×N through, and a refused request is not logged.
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

mod local;

pub use local::{LocalLimiter, LocalPermit};

use std::time::Duration;

/// Limits of one subject (a key or a team).
#[derive(Debug, Clone, Default)]
pub struct Subject {
    /// `key:{id}` or `team:{id}`.
    pub id: String,
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

impl From<Refusal> for crate::http::AppError {
    fn from(r: Refusal) -> Self {
        use crate::http::AppError;
        let kind = match r {
            Refusal::Budget => "budget",
            Refusal::Rate { .. } => "rate",
            Refusal::Parallel => "parallel",
        };
        metrics::counter!(crate::telemetry::LIMIT_REJECTIONS, "kind" => kind).increment(1);
        match r {
            Refusal::Budget => AppError::BudgetExceeded,
            Refusal::Rate { retry_after } => AppError::RateLimited {
                retry_after_s: retry_after.as_secs().max(1),
            },
            Refusal::Parallel => AppError::TooManyParallelRequests,
        }
    }
}
