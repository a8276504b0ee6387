//! [`RedisLimiter`]: the same limits shared by every instance, decided atomically by Lua
//! scripts in Redis: one round trip on the request path to admit; settlements leave in
//! batches, one round trip per batch, off the request path.
//!
//! Per subject it keeps: a sorted set of admission times (RPM sliding log), a sorted set
//! of settled token counts with a running sum (TPM sliding log), reserved tokens and
//! cost of bounded requests in flight, parallel-request *leases* (a sorted set scored by
//! expiry, so a crashed instance's slots lapse after `server.request_timeout_s`), and the
//! spend of the current budget period. Times come from Redis (`TIME`), so instances with
//! skewed clocks still share one window.
//!
//! Settling: a finished (or cancelled) permit puts its settlement on a bounded channel
//! without waiting; one settler task sends what is queued as one `settle.lua` call per
//! batch ([`SETTLE_BATCH`] settlements, or [`SETTLE_LINGER`] after the first, whichever
//! comes first — see [`Batcher`]), and at shutdown drains the channel before it returns.
//! Each call costs the gateway a command's encoding, a socket write (fred flushes every
//! `EVALSHA` on its own), a reply to parse and a waiting task; with one call per request
//! and one per batch, the settlements' share of that mostly disappears. The linger is
//! also how long a finished request's parallel slot and reservation may outlive it.

use std::fmt::Write as _;
use std::sync::Arc;
use std::time::Duration;

use fred::types::scripts::Script;
use fred::types::{Key, Value};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::batch::Batcher;
use super::{Demand, Refusal, Subject};
use crate::store::redis::RedisConn;
use crate::tasks::TaskSpawner;

const ADMIT: &str = include_str!("admit.lua");
const SETTLE: &str = include_str!("settle.lua");

/// Settlements per `settle.lua` call: enough to make one call of a busy instance's few
/// milliseconds, small enough that the script (about 15 µs per settlement in Redis) never
/// holds Redis up for long.
const SETTLE_BATCH: usize = 64;
/// How long a settlement may wait for others to share its call.
const SETTLE_LINGER: Duration = Duration::from_millis(2);
/// Settlements queued before a permit settles on its own (see [`RedisPermit`]'s
/// `queue`): a few seconds of a busy instance's finished requests.
const SETTLE_QUEUE: usize = 16_384;

/// Keys per subject, in the scripts' order: req, tok, toksum, resv, par, spend, rcost.
const KEYS_PER_SUBJECT: usize = 7;

struct Inner {
    conn: RedisConn,
    admit: Script,
    settle: Arc<Script>,
    lease_ms: i64,
    settlements: mpsc::Sender<Settlement>,
    /// For a settlement the settler cannot take (queue full, or shut down).
    tasks: TaskSpawner,
}

#[derive(Clone)]
pub struct RedisLimiter {
    inner: Arc<Inner>,
}

/// What `settle.lua` needs to settle one request.
struct Settlement {
    keys: Vec<Key>,
    request_id: Value,
    demand: Demand,
    tokens: u64,
    cost: f64,
    cancel: bool,
}

/// A request's claim in Redis; settled (or, if dropped unsettled, released) in the
/// background so the response path never waits on it.
pub struct RedisPermit {
    inner: Arc<Inner>,
    keys: Vec<Key>,
    request_id: Value,
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

/// A limit for the scripts: `-1` when there is none.
fn limit_arg(v: Option<u64>) -> Value {
    Value::Integer(v.map_or(-1, |n| i64::try_from(n).unwrap_or(i64::MAX)))
}

fn int_arg(n: u64) -> Value {
    Value::Integer(i64::try_from(n).unwrap_or(i64::MAX))
}

/// `{prefix}lim:{id}:{part}`, built in one allocation of the right size.
fn subject_key(prefix: &str, id: &str, part: &str) -> Key {
    let mut key = String::with_capacity(prefix.len() + "lim:".len() + id.len() + 1 + part.len());
    key.push_str(prefix);
    key.push_str("lim:");
    key.push_str(id);
    key.push(':');
    key.push_str(part);
    Key::from(key)
}

impl RedisLimiter {
    /// Starts the settler on `tasks`; it runs until shutdown, then settles what is queued.
    pub fn new(conn: RedisConn, request_timeout: Duration, tasks: TaskSpawner) -> Self {
        let (tx, rx) = mpsc::channel(SETTLE_QUEUE);
        let settle = Arc::new(Script::from_lua(SETTLE));
        tasks.spawn(settler(
            conn.clone(),
            settle.clone(),
            Batcher::new(rx, SETTLE_BATCH, SETTLE_LINGER),
            tasks.stopping(),
        ));
        Self {
            inner: Arc::new(Inner {
                conn,
                admit: Script::from_lua(ADMIT),
                settle,
                lease_ms: i64::try_from(request_timeout.as_millis()).unwrap_or(i64::MAX),
                settlements: tx,
                tasks,
            }),
        }
    }

    /// The keys and per-subject arguments of `admit.lua` (see its header).
    fn keys_for(&self, subjects: &[Subject], args: &mut Vec<Value>) -> Vec<Key> {
        let now = chrono::Utc::now();
        let prefix = self.inner.conn.prefix();
        let mut keys = Vec::with_capacity(subjects.len() * KEYS_PER_SUBJECT);
        for s in subjects {
            for part in ["req", "tok", "toksum", "resv", "par"] {
                keys.push(subject_key(prefix, &s.id, part));
            }
            // The spend counter belongs to one budget period. Once the stored period has
            // ended (the reset job has not caught up yet) a fresh counter starts at zero.
            let mut spend = String::with_capacity(32);
            let (seed, ttl_ms) = match s.budget_reset_at {
                Some(end) if end > now => {
                    let _ = write!(spend, "spend:{}", end.timestamp());
                    (s.stored_spend, (end - now).num_milliseconds() + 3_600_000)
                }
                Some(end) => {
                    let _ = write!(spend, "spend:after:{}", end.timestamp());
                    (0.0, 3_600_000)
                }
                None => {
                    spend.push_str("spend:open");
                    (s.stored_spend, 3_600_000)
                }
            };
            keys.push(subject_key(prefix, &s.id, &spend));
            keys.push(subject_key(prefix, &s.id, "rcost"));
            args.extend([
                limit_arg(s.rpm),
                limit_arg(s.tpm),
                limit_arg(s.parallel),
                Value::Double(s.max_budget.unwrap_or(-1.0)),
                Value::Double(seed),
                Value::Integer(ttl_ms),
            ]);
        }
        keys
    }

    /// `Err` when Redis cannot answer; `Ok(Err(refusal))` when a limit says no.
    pub async fn admit(
        &self,
        subjects: &[Subject],
        demand: Demand,
    ) -> Result<Result<RedisPermit, Refusal>, fred::error::Error> {
        let mut id = [0u8; uuid::fmt::Simple::LENGTH];
        let id = uuid::Uuid::new_v4().simple().encode_lower(&mut id);
        let request_id = Value::from(id.to_owned());
        let mut args = Vec::with_capacity(5 + subjects.len() * 6);
        args.extend([
            int_arg(subjects.len() as u64),
            request_id.clone(),
            int_arg(demand.reserve_tokens),
            Value::Double(demand.reserve_cost),
            Value::Integer(self.inner.lease_ms),
        ]);
        let keys = self.keys_for(subjects, &mut args);
        // Keys are reference-counted bytes: the clone copies no name.
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
        self.queue(tokens, cost, false);
    }

    /// Takes back a request that was never sent, its RPM admission included.
    pub fn cancel(mut self) {
        self.queue(0, 0.0, true);
    }

    /// Hands the settlement to the settler without waiting. When it cannot take it — the
    /// queue is full (Redis slower than the requests finishing) or it has shut down — the
    /// settlement runs as a task of its own, counted when the queue was full: waiting for
    /// room would stall the response, dropping it would keep the slot and reservation
    /// until the lease lapses and lose the usage from TPM and spend.
    fn queue(&mut self, tokens: u64, cost: f64, cancel: bool) {
        self.settled = true;
        let settlement = Settlement {
            keys: std::mem::take(&mut self.keys),
            request_id: std::mem::replace(&mut self.request_id, Value::Null),
            demand: self.demand,
            tokens,
            cost,
            cancel,
        };
        let settlement = match self.inner.settlements.try_send(settlement) {
            Ok(()) => return,
            Err(mpsc::error::TrySendError::Full(s)) => {
                metrics::counter!(crate::telemetry::LIMITER_SETTLE_OVERFLOWS).increment(1);
                s
            }
            Err(mpsc::error::TrySendError::Closed(s)) => s,
        };
        let conn = self.inner.conn.clone();
        let script = self.inner.settle.clone();
        // Without a runtime (process exiting) nothing runs: the lease lapses by itself.
        self.inner.tasks.spawn(async move {
            send_batch(&conn, &script, &mut vec![settlement]).await;
        });
    }
}

impl Drop for RedisPermit {
    fn drop(&mut self) {
        // Dropped unsettled: never sent (left the queue, or failed before the upstream),
        // so it gives everything back, its RPM admission included.
        if !self.settled {
            self.queue(0, 0.0, true);
        }
    }
}

/// The one settler: batches until shutdown, then settles everything still queued.
async fn settler(
    conn: RedisConn,
    script: Arc<Script>,
    mut batcher: Batcher<Settlement>,
    stop: CancellationToken,
) {
    let mut batch = Vec::with_capacity(SETTLE_BATCH);
    while batcher.next(&stop, &mut batch).await {
        send_batch(&conn, &script, &mut batch).await;
    }
    while batcher.drain(&mut batch) {
        send_batch(&conn, &script, &mut batch).await;
    }
}

/// One `settle.lua` call for every settlement in `batch` (emptied). A failure is logged
/// and counted; the batch's leases lapse by themselves and its usage is lost to TPM and
/// spend in Redis (the usage rows in the database are written apart).
async fn send_batch(conn: &RedisConn, script: &Script, batch: &mut Vec<Settlement>) {
    if batch.is_empty() {
        return;
    }
    let settlements = batch.len();
    let key_count = batch.iter().map(|s| s.keys.len()).sum();
    let mut keys: Vec<Key> = Vec::with_capacity(key_count);
    let mut args = Vec::with_capacity(1 + batch.len() * 7);
    args.push(int_arg(batch.len() as u64));
    for s in batch.drain(..) {
        args.extend([
            int_arg((s.keys.len() / KEYS_PER_SUBJECT) as u64),
            s.request_id,
            int_arg(s.demand.reserve_tokens),
            Value::Double(s.demand.reserve_cost),
            int_arg(s.tokens),
            Value::Double(s.cost),
            Value::Integer(i64::from(s.cancel)),
        ]);
        keys.extend(s.keys);
    }
    let done: Result<i64, _> = script.evalsha_with_reload(&conn.client, keys, args).await;
    if let Err(e) = done {
        metrics::counter!(crate::telemetry::LIMITER_SETTLE_FAILURES).increment(1);
        tracing::warn!(error = %e, settlements, "could not settle requests in Redis; their leases will lapse");
    }
}
