//! `Invalidator`: makes a key or team change visible everywhere.
//!
//! The instance that makes a change drops its cached entry at once; with Redis it also
//! publishes the change on a channel every instance subscribes to, so the others drop
//! theirs within moments (SPEC §5.1: within 1 second). Without Redis, other instances
//! follow when their cached entry's TTL ends.

use std::sync::Arc;

use fred::prelude::*;

use super::keys::KeyResolver;
use crate::store::redis::RedisConn;
use crate::tasks::TaskSpawner;

const CHANNEL: &str = "tollgate:invalidate";

/// What changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// A key, by the hash its cache entry is stored under.
    Key(String),
    Team(String),
    /// Every cached key (used when only key ids are known, e.g. a team's keys deleted).
    AllKeys,
}

impl Change {
    fn encode(&self) -> String {
        match self {
            Change::Key(hash) => format!("key:{hash}"),
            Change::Team(id) => format!("team:{id}"),
            Change::AllKeys => "keys:*".to_string(),
        }
    }

    fn decode(text: &str) -> Option<Change> {
        if text == "keys:*" {
            return Some(Change::AllKeys);
        }
        match text.split_once(':')? {
            ("key", hash) => Some(Change::Key(hash.to_string())),
            ("team", id) => Some(Change::Team(id.to_string())),
            _ => None,
        }
    }
}

async fn apply(keys: &KeyResolver, change: &Change) {
    match change {
        Change::Key(hash) => keys.invalidate_key(hash).await,
        Change::Team(id) => keys.invalidate_team(id).await,
        Change::AllKeys => keys.invalidate_all_keys(),
    }
}

pub struct Invalidator {
    redis: Option<RedisConn>,
    keys: Arc<KeyResolver>,
}

impl Invalidator {
    /// Subscribes to the invalidation channel (when Redis is configured) and applies
    /// every change other instances publish to `keys`.
    pub async fn start(
        redis: Option<RedisConn>,
        keys: Arc<KeyResolver>,
        tasks: &TaskSpawner,
    ) -> Result<Self, fred::error::Error> {
        if let Some(conn) = &redis {
            let channel = conn.key(CHANNEL);
            let mut messages = conn.subscriber.message_rx();
            conn.subscriber.subscribe(channel.clone()).await?;
            let keys = keys.clone();
            tasks.spawn_loop("invalidation subscriber", async move {
                loop {
                    match messages.recv().await {
                        Ok(message) if *message.channel == *channel => {
                            if let Some(change) = message
                                .value
                                .as_string()
                                .as_deref()
                                .and_then(Change::decode)
                            {
                                apply(&keys, &change).await;
                            }
                        }
                        Ok(_) => {}
                        // Missed messages: drop everything rather than serve stale entries.
                        Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {
                            keys.invalidate_all_keys()
                        }
                        Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
                    }
                }
            });
        }
        Ok(Self { redis, keys })
    }

    /// Applies `change` here at once and announces it to the other instances.
    pub async fn publish(&self, change: Change) {
        apply(&self.keys, &change).await;
        if let Some(conn) = &self.redis {
            let sent: Result<i64, _> = conn
                .client
                .publish(conn.key(CHANNEL), change.encode())
                .await;
            if let Err(e) = sent {
                tracing::warn!(error = %e, "could not publish a cache invalidation");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Change;

    #[test]
    fn changes_round_trip() {
        for c in [
            Change::Key("ab12".into()),
            Change::Team("t:1".into()),
            Change::AllKeys,
        ] {
            assert_eq!(Change::decode(&c.encode()), Some(c));
        }
        assert_eq!(Change::decode("nonsense"), None);
    }
}
