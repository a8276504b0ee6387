//! [`SharedSlots`]: with Redis, the slots of a (server, loaded model) are leases shared by
//! every instance (SPEC §12, "Across instances"), so all of them together run at most
//! `parallel` of the gateway's requests per loaded model on a server.
//!
//! - **Acquire**: prune lapsed leases, and if fewer than `parallel` remain, add this one
//!   scored by its expiry (`server.request_timeout_s` from now, so a crashed instance's
//!   leases lapse by themselves).
//! - **Release**: remove the lease and publish the count left on a channel under the key
//!   prefix; every instance's subscriber feeds it to its [`Fleet`], which re-dispatches
//!   its own queue at once — no polling.
//! - Both are operations of one script (`slots.lua`) sent by one caller task, one call in
//!   flight at a time ([`Lanes`]): an acquire leaves at once with every acquire queued
//!   behind the call before it, releases ride along or linger up to [`RELEASE_LINGER`],
//!   and one message per call announces what its releases left. Under load one round
//!   trip, one reply and one message serve many requests; at low load an acquire waits
//!   for nothing but its own call.
//! - Every answer carries the global count and a version (a counter bumped by each
//!   acquire and release), which the fleet keeps as a hint of what the *other* instances
//!   hold, so routing sees their load. Redis stays the authority: a stale hint costs at
//!   most a refused acquire or a short wait.
//! - A slow re-read (`count.lua`) of the pairs whose hint says another instance holds
//!   slots catches what no message announces: a crashed instance's leases lapsing, and
//!   messages missed while the subscriber reconnected.

mod lanes;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use fred::prelude::*;
use fred::types::scripts::Script;
use fred::types::{Key, Value};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use self::lanes::Lanes;
use super::fleet::Fleet;
use crate::store::redis::RedisConn;
use crate::tasks::TaskSpawner;

const SLOTS: &str = include_str!("slots/slots.lua");
const COUNT: &str = include_str!("slots/count.lua");
const CHANNEL: &str = "tollgate:slots";

/// How often hints of other instances' slots are re-read from Redis. Only a safety net:
/// a freed slot is announced on the channel at once.
const RESYNC_EVERY: Duration = Duration::from_secs(1);
/// Operations of each kind per `slots.lua` call: a busy instance's few milliseconds,
/// while the script (a few µs per operation in Redis) never holds Redis up for long.
const CALL_MAX: usize = 64;
/// How long a release with no acquire to ride along waits for others; also how long a
/// freed slot may stay held in Redis after its request ended.
const RELEASE_LINGER: Duration = Duration::from_millis(2);
/// Operations queued for the caller task: a few seconds of a busy instance's requests.
const QUEUE: usize = 16_384;
/// (server, model) pairs whose keys the caller task keeps per server; past it the cache
/// starts over (models come from the servers' own lists, so this is never reached).
const PAIRS_KEPT: usize = 4_096;

struct Inner {
    conn: RedisConn,
    count: Script,
    acquires: mpsc::Sender<AcquireOp>,
    releases: mpsc::Sender<ReleaseOp>,
    /// The caller task's parts, for a release it cannot take (queue full, or shut down).
    calls: Arc<Calls>,
    tasks: TaskSpawner,
}

/// The shared slot leases in Redis. Cheap to clone.
#[derive(Clone)]
pub struct SharedSlots {
    inner: Arc<Inner>,
}

/// What Redis said to an acquire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Acquired {
    /// The lease is held; `count` includes it.
    Granted { count: u32, version: u64 },
    /// Every slot is held (by some instance); nothing was added.
    Full { count: u32, version: u64 },
}

/// One pair a call names: server number `server` (called `name`) and `model`.
struct Pair {
    server: usize,
    name: Arc<str>,
    model: String,
}

struct AcquireOp {
    pair: Pair,
    parallel: u32,
    lease_id: String,
    reply: oneshot::Sender<Result<Acquired, fred::error::Error>>,
}

struct ReleaseOp {
    pair: Pair,
    lease_id: String,
}

/// A pair's Redis keys and its names as script arguments, built once per pair (keys and
/// values are reference-counted bytes: a clone copies nothing).
#[derive(Clone)]
struct PairArgs {
    leases: Key,
    version: Key,
    name: Value,
    model: Value,
}

/// What sends `slots.lua` calls: the script, where it runs, and whom to tell.
struct Calls {
    conn: RedisConn,
    script: Script,
    channel: Value,
    lease_ms: Value,
    /// Told the counts releases leave, to hand freed slots on.
    fleet: Arc<Fleet>,
}

/// A release announced on the channel: `server\tmodel\tcount\tversion`, one per line.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Freed {
    server: String,
    model: String,
    count: u32,
    version: u64,
}

impl Freed {
    fn decode(text: &str) -> Option<Freed> {
        let mut parts = text.split('\t');
        let server = parts.next()?.to_string();
        let model = parts.next()?.to_string();
        let count = parts.next()?.parse().ok()?;
        let version = parts.next()?.parse().ok()?;
        parts.next().is_none().then_some(Freed {
            server,
            model,
            count,
            version,
        })
    }
}

fn count_of(n: i64) -> u32 {
    u32::try_from(n.max(0)).unwrap_or(u32::MAX)
}

fn version_of(v: i64) -> u64 {
    u64::try_from(v.max(0)).unwrap_or(0)
}

fn gone() -> fred::error::Error {
    fred::error::Error::new(fred::error::ErrorKind::Canceled, "shared slots stopped")
}

impl SharedSlots {
    /// Subscribes to the slots channel and starts the caller task, the subscriber and
    /// the re-read loop, the last two feeding `fleet`.
    pub async fn start(
        conn: RedisConn,
        fleet: Arc<Fleet>,
        request_timeout: Duration,
        tasks: &TaskSpawner,
    ) -> Result<Self, fred::error::Error> {
        let channel = conn.key(CHANNEL);
        let mut messages = conn.subscriber.message_rx();
        conn.subscriber.subscribe(channel.clone()).await?;
        let lease_ms = i64::try_from(request_timeout.as_millis()).unwrap_or(i64::MAX);
        let calls = Arc::new(Calls {
            conn: conn.clone(),
            script: Script::from_lua(SLOTS),
            channel: Value::from(channel.clone()),
            lease_ms: Value::Integer(lease_ms),
            fleet: fleet.clone(),
        });
        let (acquires, urgent) = mpsc::channel(QUEUE);
        let (releases, lazy) = mpsc::channel(QUEUE);
        tasks.spawn(caller(
            calls.clone(),
            Lanes::new(urgent, lazy, CALL_MAX, RELEASE_LINGER),
            tasks.stopping(),
        ));
        let slots = Self {
            inner: Arc::new(Inner {
                conn,
                count: Script::from_lua(COUNT),
                acquires,
                releases,
                calls,
                tasks: tasks.clone(),
            }),
        };
        let subscriber_fleet = fleet.clone();
        tasks.spawn_loop("shared slots subscriber", async move {
            loop {
                match messages.recv().await {
                    Ok(message) if *message.channel == *channel => {
                        let Some(text) = message.value.as_string() else {
                            continue;
                        };
                        for freed in text.lines().filter_map(Freed::decode) {
                            if let Some(server) = subscriber_fleet.index_of(&freed.server) {
                                subscriber_fleet.observe_shared(
                                    server,
                                    &freed.model,
                                    freed.count,
                                    freed.version,
                                );
                            }
                        }
                    }
                    Ok(_) => {}
                    // Missed messages: the re-read loop catches up within a second.
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
                }
            }
        });
        let resync = slots.clone();
        tasks.spawn_loop("shared slots re-read", async move {
            let mut ticker = tokio::time::interval(RESYNC_EVERY);
            ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                ticker.tick().await;
                for (server, name, model) in fleet.shared_hints() {
                    match resync.count(&name, &model).await {
                        Ok((count, version)) => {
                            fleet.observe_shared(server, &model, count, version)
                        }
                        Err(e) => {
                            tracing::debug!(error = %e, "could not re-read shared slots");
                            break;
                        }
                    }
                }
            }
        });
        Ok(slots)
    }

    /// A fresh lease id, unique across instances.
    pub fn lease_id() -> String {
        uuid::Uuid::new_v4().simple().to_string()
    }

    /// Takes a slot of `model` on server number `server` (called `name`) for `lease_id`
    /// if fewer than `parallel` are held by all instances together. `Err` when Redis
    /// cannot answer.
    pub async fn acquire(
        &self,
        server: usize,
        name: &Arc<str>,
        model: &str,
        parallel: u32,
        lease_id: String,
    ) -> Result<Acquired, fred::error::Error> {
        let (reply, answer) = oneshot::channel();
        let op = AcquireOp {
            pair: Pair {
                server,
                name: name.clone(),
                model: model.to_string(),
            },
            parallel,
            lease_id,
            reply,
        };
        // Waiting for room (not refusing) when the queue is full: back-pressure.
        if self.inner.acquires.send(op).await.is_err() {
            return Err(gone());
        }
        answer.await.unwrap_or_else(|_| Err(gone()))
    }

    /// Frees `lease_id` of server number `server` (called `name`) and announces it, in
    /// the background (never blocking a drop); then this instance's fleet hands the slot
    /// on. Without a runtime, or with Redis down, the lease lapses by itself.
    pub fn release(&self, server: usize, name: &Arc<str>, model: &str, lease_id: String) {
        let op = ReleaseOp {
            pair: Pair {
                server,
                name: name.clone(),
                model: model.to_string(),
            },
            lease_id,
        };
        let op = match self.inner.releases.try_send(op) {
            Ok(()) => return,
            Err(mpsc::error::TrySendError::Full(op) | mpsc::error::TrySendError::Closed(op)) => op,
        };
        let calls = self.inner.calls.clone();
        self.inner.tasks.spawn(async move {
            let args = calls.args_of(&op.pair);
            calls.send(&mut vec![(op, args)], &mut Vec::new()).await;
        });
    }

    /// How many slots of `model` on `server` are held now, and the version read.
    async fn count(&self, server: &str, model: &str) -> Result<(u32, u64), fred::error::Error> {
        let (leases, version) = pair_keys(&self.inner.conn, server, model);
        let (count, version): (i64, i64) = self
            .inner
            .count
            .evalsha_with_reload(
                &self.inner.conn.client,
                vec![leases, version],
                Vec::<String>::new(),
            )
            .await?;
        Ok((count_of(count), version_of(version)))
    }

    /// The Redis key holding the leases of `model` on `server` (tests write leases of a
    /// "crashed" instance there).
    pub fn leases_key(&self, server: &str, model: &str) -> String {
        leases_name(&self.inner.conn, server, model)
    }

    pub fn is_connected(&self) -> bool {
        self.inner.conn.is_connected()
    }
}

/// `{prefix}slots:{server}:{model}`: the sorted set of leases of a pair.
fn leases_name(conn: &RedisConn, server: &str, model: &str) -> String {
    conn.key(&format!("slots:{server}:{model}"))
}

/// The leases and version keys of `model` on the server called `server`.
fn pair_keys(conn: &RedisConn, server: &str, model: &str) -> (Key, Key) {
    let leases = leases_name(conn, server, model);
    let version = format!("{leases}:v");
    (Key::from(leases), Key::from(version))
}

/// The caller task: one `slots.lua` call at a time, until shutdown; then what is queued.
async fn caller(
    calls: Arc<Calls>,
    mut lanes: Lanes<AcquireOp, ReleaseOp>,
    stop: CancellationToken,
) {
    let mut pairs: Vec<HashMap<String, PairArgs>> = Vec::new();
    let (mut acquires, mut releases) = (Vec::with_capacity(CALL_MAX), Vec::new());
    let (mut acquired, mut released) = (Vec::with_capacity(CALL_MAX), Vec::new());
    loop {
        let more = lanes.next(&stop, &mut acquires, &mut releases).await
            || lanes.drain(&mut acquires, &mut releases);
        if !more {
            return;
        }
        for op in acquires.drain(..) {
            let args = calls.cached(&mut pairs, &op.pair);
            acquired.push((op, args));
        }
        for op in releases.drain(..) {
            let args = calls.cached(&mut pairs, &op.pair);
            released.push((op, args));
        }
        calls.send(&mut released, &mut acquired).await;
    }
}

impl Calls {
    fn args_of(&self, pair: &Pair) -> PairArgs {
        let (leases, version) = pair_keys(&self.conn, &pair.name, &pair.model);
        PairArgs {
            leases,
            version,
            name: Value::from(&*pair.name),
            model: Value::from(pair.model.as_str()),
        }
    }

    /// `pair`'s arguments from the caller task's cache, built on first use.
    fn cached(&self, pairs: &mut Vec<HashMap<String, PairArgs>>, pair: &Pair) -> PairArgs {
        if pairs.len() <= pair.server {
            pairs.resize_with(pair.server + 1, HashMap::new);
        }
        let known = &mut pairs[pair.server];
        if let Some(args) = known.get(&pair.model) {
            return args.clone();
        }
        if known.len() >= PAIRS_KEPT {
            known.clear();
        }
        let args = self.args_of(pair);
        known.insert(pair.model.clone(), args.clone());
        args
    }

    /// One `slots.lua` call for `releases` and `acquires` (both emptied): each acquire
    /// gets its answer, this instance's fleet the counts the releases left. A failure
    /// fails the acquires and is logged for the releases, whose leases lapse.
    async fn send(
        &self,
        releases: &mut Vec<(ReleaseOp, PairArgs)>,
        acquires: &mut Vec<(AcquireOp, PairArgs)>,
    ) {
        if releases.is_empty() && acquires.is_empty() {
            return;
        }
        let (r, a) = (releases.len(), acquires.len());
        let mut keys = Vec::with_capacity(2 * (r + a));
        let mut args = Vec::with_capacity(4 + 3 * r + 2 * a);
        args.extend([
            Value::Integer(r as i64),
            Value::Integer(a as i64),
            self.lease_ms.clone(),
            self.channel.clone(),
        ]);
        for (op, pair) in releases.iter_mut() {
            keys.extend([pair.leases.clone(), pair.version.clone()]);
            args.extend([
                Value::from(std::mem::take(&mut op.lease_id)),
                pair.name.clone(),
                pair.model.clone(),
            ]);
        }
        for (op, pair) in acquires.iter_mut() {
            keys.extend([pair.leases.clone(), pair.version.clone()]);
            args.extend([
                Value::from(std::mem::take(&mut op.lease_id)),
                Value::Integer(i64::from(op.parallel)),
            ]);
        }
        let answer: Result<Vec<i64>, _> = self
            .script
            .evalsha_with_reload(&self.conn.client, keys, args)
            .await;
        let answer = answer.and_then(|out| {
            if out.len() == 2 * r + 3 * a {
                Ok(out)
            } else {
                Err(fred::error::Error::new(
                    fred::error::ErrorKind::Parse,
                    "unexpected slots.lua answer",
                ))
            }
        });
        match answer {
            Ok(out) => {
                let (freed, claimed) = out.split_at(2 * r);
                for ((op, _), n) in releases.drain(..).zip(freed.chunks_exact(2)) {
                    let (count, version) = (count_of(n[0]), version_of(n[1]));
                    self.fleet
                        .observe_shared(op.pair.server, &op.pair.model, count, version);
                }
                for ((op, _), n) in acquires.drain(..).zip(claimed.chunks_exact(3)) {
                    let (count, version) = (count_of(n[1]), version_of(n[2]));
                    let _ = op.reply.send(Ok(if n[0] == 1 {
                        Acquired::Granted { count, version }
                    } else {
                        Acquired::Full { count, version }
                    }));
                }
            }
            Err(e) => {
                if r > 0 {
                    tracing::warn!(error = %e, releases = r, "could not release server slots in Redis; they will lapse");
                    releases.clear();
                    self.fleet.redispatch();
                }
                for (op, _) in acquires.drain(..) {
                    let _ = op.reply.send(Err(e.clone()));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Freed;

    #[test]
    fn freed_messages_decode() {
        assert_eq!(
            Freed::decode("gpu-a\thf.co/org/m:q4\t1\t42"),
            Some(Freed {
                server: "gpu-a".into(),
                model: "hf.co/org/m:q4".into(),
                count: 1,
                version: 42,
            })
        );
        assert_eq!(Freed::decode("gpu-a\tm\tx\t1"), None);
        assert_eq!(Freed::decode("gpu-a\tm\t1"), None);
        assert_eq!(Freed::decode("gpu-a\tm\t1\t2\t3"), None);
    }
}
