//! [`SharedSlots`]: with Redis, the slots of a (server, loaded model) are leases shared by
//! every instance (SPEC §12, "Across instances"), so all of them together run at most
//! `parallel` of the gateway's requests per loaded model on a server.
//!
//! - **Acquire** (`acquire.lua`, one round trip): prune lapsed leases, and if fewer than
//!   `parallel` remain, add this one scored by its expiry (`server.request_timeout_s`
//!   from now, so a crashed instance's leases lapse by themselves).
//! - **Release** (`release.lua`): remove the lease and publish the count left on a
//!   channel under the key prefix; every instance's subscriber feeds it to its
//!   [`Fleet`], which re-dispatches its own queue at once — no polling.
//! - Every answer carries the global count and a version (a counter bumped by each
//!   acquire and release), which the fleet keeps as a hint of what the *other* instances
//!   hold, so routing sees their load. Redis stays the authority: a stale hint costs at
//!   most a refused acquire or a short wait.
//! - A slow re-read (`count.lua`) of the pairs whose hint says another instance holds
//!   slots catches what no message announces: a crashed instance's leases lapsing, and
//!   messages missed while the subscriber reconnected.

use std::sync::Arc;
use std::time::Duration;

use fred::prelude::*;
use fred::types::scripts::Script;

use super::fleet::Fleet;
use crate::store::redis::RedisConn;
use crate::tasks::TaskSpawner;

const ACQUIRE: &str = include_str!("slots/acquire.lua");
const RELEASE: &str = include_str!("slots/release.lua");
const COUNT: &str = include_str!("slots/count.lua");
const CHANNEL: &str = "tollgate:slots";

/// How often hints of other instances' slots are re-read from Redis. Only a safety net:
/// a freed slot is announced on the channel at once.
const RESYNC_EVERY: Duration = Duration::from_secs(1);

struct Inner {
    conn: RedisConn,
    acquire: Script,
    release: Script,
    count: Script,
    channel: String,
    lease_ms: u64,
    tasks: TaskSpawner,
    /// Told the counts releases leave, to hand freed slots on.
    fleet: Arc<Fleet>,
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

/// A release announced on the channel: `server\tmodel\tcount\tversion`.
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

impl SharedSlots {
    /// Subscribes to the slots channel and starts the subscriber and the re-read loop,
    /// both feeding `fleet`.
    pub async fn start(
        conn: RedisConn,
        fleet: Arc<Fleet>,
        request_timeout: Duration,
        tasks: &TaskSpawner,
    ) -> Result<Self, fred::error::Error> {
        let channel = conn.key(CHANNEL);
        let mut messages = conn.subscriber.message_rx();
        conn.subscriber.subscribe(channel.clone()).await?;
        let slots = Self {
            inner: Arc::new(Inner {
                conn,
                acquire: Script::from_lua(ACQUIRE),
                release: Script::from_lua(RELEASE),
                count: Script::from_lua(COUNT),
                channel: channel.clone(),
                lease_ms: u64::try_from(request_timeout.as_millis()).unwrap_or(u64::MAX),
                tasks: tasks.clone(),
                fleet: fleet.clone(),
            }),
        };
        let subscriber_fleet = fleet.clone();
        tasks.spawn_loop("shared slots subscriber", async move {
            loop {
                match messages.recv().await {
                    Ok(message) if *message.channel == *channel => {
                        let freed = message.value.as_string();
                        let Some(freed) = freed.as_deref().and_then(Freed::decode) else {
                            continue;
                        };
                        if let Some(server) = subscriber_fleet.index_of(&freed.server) {
                            subscriber_fleet.observe_shared(
                                server,
                                &freed.model,
                                freed.count,
                                freed.version,
                            );
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

    fn keys(&self, server: &str, model: &str) -> Vec<String> {
        let leases = self.inner.conn.key(&format!("slots:{server}:{model}"));
        let version = format!("{leases}:v");
        vec![leases, version]
    }

    /// A fresh lease id, unique across instances.
    pub fn lease_id() -> String {
        uuid::Uuid::new_v4().simple().to_string()
    }

    /// Takes a slot of `model` on `server` for `lease_id` if fewer than `parallel` are
    /// held by all instances together. `Err` when Redis cannot answer.
    #[tracing::instrument(level = "debug", skip(self))]
    pub async fn acquire(
        &self,
        server: &str,
        model: &str,
        parallel: u32,
        lease_id: &str,
    ) -> Result<Acquired, fred::error::Error> {
        let args = vec![
            lease_id.to_string(),
            parallel.to_string(),
            self.inner.lease_ms.to_string(),
        ];
        let (granted, count, version): (i64, i64, i64) = self
            .inner
            .acquire
            .evalsha_with_reload(&self.inner.conn.client, self.keys(server, model), args)
            .await?;
        let (count, version) = (count_of(count), version_of(version));
        Ok(if granted == 1 {
            Acquired::Granted { count, version }
        } else {
            Acquired::Full { count, version }
        })
    }

    /// Frees `lease_id` of server number `index` (called `server`) and announces it, in
    /// the background (never blocking a drop); then this instance's fleet hands the slot
    /// on. Without a runtime, or with Redis down, the lease lapses by itself.
    pub fn release(&self, index: usize, server: &str, model: &str, lease_id: String) {
        let inner = self.inner.clone();
        let keys = self.keys(server, model);
        let args = vec![
            lease_id,
            inner.channel.clone(),
            server.to_string(),
            model.to_string(),
        ];
        let tasks = inner.tasks.clone();
        tasks.spawn(async move {
            let model = args[3].clone();
            let done: Result<(i64, i64), _> = inner
                .release
                .evalsha_with_reload(&inner.conn.client, keys, args)
                .await;
            match done {
                Ok((count, version)) => inner.fleet.observe_shared(
                    index,
                    &model,
                    count_of(count),
                    version_of(version),
                ),
                Err(e) => {
                    tracing::warn!(error = %e, "could not release a server slot in Redis; it will lapse");
                    inner.fleet.redispatch();
                }
            }
        });
    }

    /// How many slots of `model` on `server` are held now, and the version read.
    async fn count(&self, server: &str, model: &str) -> Result<(u32, u64), fred::error::Error> {
        let (count, version): (i64, i64) = self
            .inner
            .count
            .evalsha_with_reload(
                &self.inner.conn.client,
                self.keys(server, model),
                Vec::<String>::new(),
            )
            .await?;
        Ok((count_of(count), version_of(version)))
    }

    /// The Redis key holding the leases of `model` on `server` (tests write leases of a
    /// "crashed" instance there).
    pub fn leases_key(&self, server: &str, model: &str) -> String {
        self.keys(server, model).swap_remove(0)
    }

    pub fn is_connected(&self) -> bool {
        self.inner.conn.is_connected()
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
