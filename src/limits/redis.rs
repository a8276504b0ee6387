//! [`RedisLimiter`]: the same limits shared by every instance, decided atomically by Lua
//! scripts in Redis (one round trip to admit, one to settle).
//!
//! Per subject it keeps: a sorted set of admission times (RPM sliding log), a sorted set
//! of settled token counts with a running sum (TPM sliding log), reserved tokens and
//! cost of bounded requests in flight, parallel-request *leases* (a sorted set scored by
//! expiry, so a crashed instance's slots lapse after `server.request_timeout_s`), and the
//! spend of the current budget period. Times come from Redis (`TIME`), so instances with
//! skewed clocks still share one window.

use std::sync::Arc;
use std::time::Duration;

use fred::types::scripts::Script;

use super::{Demand, Refusal, Subject};
use crate::store::redis::RedisConn;
use crate::tasks::TaskSpawner;

const ADMIT: &str = include_str!("admit.lua");
const SETTLE: &str = include_str!("settle.lua");

struct Inner {
    conn: RedisConn,
    admit: Script,
    settle: Script,
    lease_ms: u64,
    /// Settlements run in the background, tracked so shutdown waits for them.
    tasks: TaskSpawner,
}

#[derive(Clone)]
pub struct RedisLimiter {
    inner: Arc<Inner>,
}

/// A request's claim in Redis; settled (or, if dropped unsettled, released) in the
/// background so the response path never waits on it.
pub struct RedisPermit {
    inner: Arc<Inner>,
    keys: Vec<String>,
    request_id: String,
    demand: Demand,
    settled: bool,
}

impl std::fmt::Debug for RedisPermit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisPermit")
            .field("request_id", &self.request_id)
            .finish()
    }
}

fn limit_arg(v: Option<u64>) -> String {
    v.map_or_else(|| "-1".to_string(), |n| n.to_string())
}

impl RedisLimiter {
    pub fn new(conn: RedisConn, request_timeout: Duration, tasks: TaskSpawner) -> Self {
        Self {
            inner: Arc::new(Inner {
                conn,
                admit: Script::from_lua(ADMIT),
                settle: Script::from_lua(SETTLE),
                lease_ms: u64::try_from(request_timeout.as_millis()).unwrap_or(u64::MAX),
                tasks,
            }),
        }
    }

    fn keys_for(&self, subjects: &[Subject]) -> (Vec<String>, Vec<String>) {
        let now = chrono::Utc::now();
        let conn = &self.inner.conn;
        let mut keys = Vec::with_capacity(subjects.len() * 7);
        let mut args = Vec::with_capacity(subjects.len() * 6);
        for s in subjects {
            // The spend counter belongs to one budget period. Once the stored period has
            // ended (the reset job has not caught up yet) a fresh counter starts at zero.
            let (period, seed, ttl_ms) = match s.budget_reset_at {
                Some(end) if end > now => (
                    end.timestamp().to_string(),
                    s.stored_spend,
                    (end - now).num_milliseconds() + 3_600_000,
                ),
                Some(end) => (format!("after:{}", end.timestamp()), 0.0, 3_600_000),
                None => ("open".to_string(), s.stored_spend, 3_600_000),
            };
            for part in ["req", "tok", "toksum", "resv", "par"] {
                keys.push(conn.key(&format!("lim:{}:{part}", s.id)));
            }
            keys.push(conn.key(&format!("lim:{}:spend:{period}", s.id)));
            keys.push(conn.key(&format!("lim:{}:rcost", s.id)));
            args.extend([
                limit_arg(s.rpm),
                limit_arg(s.tpm),
                limit_arg(s.parallel),
                s.max_budget
                    .map_or_else(|| "-1".to_string(), |b| b.to_string()),
                seed.to_string(),
                ttl_ms.to_string(),
            ]);
        }
        (keys, args)
    }

    /// `Err` when Redis cannot answer; `Ok(Err(refusal))` when a limit says no.
    pub async fn admit(
        &self,
        subjects: &[Subject],
        demand: Demand,
    ) -> Result<Result<RedisPermit, Refusal>, fred::error::Error> {
        let request_id = uuid::Uuid::new_v4().simple().to_string();
        let (keys, per_subject) = self.keys_for(subjects);
        let mut args = vec![
            subjects.len().to_string(),
            request_id.clone(),
            demand.reserve_tokens.to_string(),
            demand.reserve_cost.to_string(),
            self.inner.lease_ms.to_string(),
        ];
        args.extend(per_subject);
        let (code, retry_ms): (i64, i64) = self
            .inner
            .admit
            .evalsha_with_reload(&self.inner.conn.client, keys.clone(), args)
            .await?;
        Ok(match code {
            0 => Ok(RedisPermit {
                inner: self.inner.clone(),
                keys,
                request_id,
                demand,
                settled: false,
            }),
            1 => Err(Refusal::Budget),
            2 => Err(Refusal::Rate {
                retry_after: Duration::from_millis(u64::try_from(retry_ms).unwrap_or(0)),
            }),
            _ => Err(Refusal::Parallel),
        })
    }

    pub async fn ping(&self) -> Result<(), fred::error::Error> {
        self.inner.conn.ping().await
    }

    pub fn is_connected(&self) -> bool {
        self.inner.conn.is_connected()
    }
}

impl RedisPermit {
    /// Settles with the real usage, in the background.
    pub fn settle(mut self, tokens: u64, cost: f64) {
        self.settled = true;
        self.spawn_settle(tokens, cost);
    }

    /// Takes back a request that was never sent, its RPM admission included.
    pub fn cancel(mut self) {
        self.settled = true;
        self.spawn_settle_or_cancel(0, 0.0, true);
    }

    fn spawn_settle(&self, tokens: u64, cost: f64) {
        self.spawn_settle_or_cancel(tokens, cost, false);
    }

    fn spawn_settle_or_cancel(&self, tokens: u64, cost: f64, cancel: bool) {
        let inner = self.inner.clone();
        let keys = self.keys.clone();
        let args = vec![
            (keys.len() / 7).to_string(),
            self.request_id.clone(),
            self.demand.reserve_tokens.to_string(),
            self.demand.reserve_cost.to_string(),
            tokens.to_string(),
            cost.to_string(),
            if cancel { "1" } else { "0" }.to_string(),
        ];
        // Without a runtime (process exiting) nothing runs: the lease lapses by itself.
        let tasks = inner.tasks.clone();
        tasks.spawn(async move {
            let done: Result<i64, _> = inner.settle.evalsha_with_reload(&inner.conn.client, keys, args).await;
            if let Err(e) = done {
                tracing::warn!(error = %e, "could not settle a request in Redis; its lease will lapse");
            }
        });
    }
}

impl Drop for RedisPermit {
    fn drop(&mut self) {
        // Dropped unsettled: never sent (left the queue, or failed before the upstream),
        // so it gives everything back, its RPM admission included.
        if !self.settled {
            self.spawn_settle_or_cancel(0, 0.0, true);
        }
    }
}
