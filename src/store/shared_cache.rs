//! `SharedCache`: a small string cache shared by every instance when Redis is configured
//! (plain `SET … PX` / `GET` / `DEL`), else held in process. Used for the JWT claim →
//! key mapping resolutions (SPEC §6.3), whose keys are exactly
//! `jwt_key_mapping:{issuer}:{claim}:{value}` (after `redis.key_prefix`).
//!
//! Entries can be grouped under a tag (here: claim name + value) so that one change — a
//! mapping that applies to any issuer — can drop every entry it affects.

use std::time::Duration;

use fred::prelude::*;
use moka::sync::Cache;

use super::redis::RedisConn;

pub enum SharedCache {
    Redis {
        conn: RedisConn,
        ttl: Duration,
    },
    Local {
        entries: Cache<String, String>,
        tags: Cache<String, Vec<String>>,
    },
}

impl SharedCache {
    pub fn new(redis: Option<RedisConn>, ttl: Duration) -> Self {
        match redis {
            Some(conn) => Self::Redis { conn, ttl },
            None => Self::Local {
                entries: Cache::builder()
                    .max_capacity(200_000)
                    .time_to_live(ttl)
                    .build(),
                tags: Cache::builder()
                    .max_capacity(200_000)
                    .time_to_live(ttl)
                    .build(),
            },
        }
    }

    pub async fn get(&self, key: &str) -> Result<Option<String>, fred::error::Error> {
        match self {
            Self::Redis { conn, .. } => conn.client.get(conn.key(key)).await,
            Self::Local { entries, .. } => Ok(entries.get(key)),
        }
    }

    /// Stores `value` under `key` for the cache's TTL, remembered under `tag`.
    pub async fn set(&self, key: &str, value: &str, tag: &str) -> Result<(), fred::error::Error> {
        match self {
            Self::Redis { conn, ttl } => {
                let ms = i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX);
                let tag_key = conn.key(&format!("tag:{tag}"));
                let pipeline = conn.client.pipeline();
                let _: () = pipeline
                    .set(conn.key(key), value, Some(Expiration::PX(ms)), None, false)
                    .await?;
                let _: () = pipeline.sadd(&tag_key, conn.key(key)).await?;
                let _: () = pipeline.pexpire(&tag_key, ms, None).await?;
                let _: Vec<Value> = pipeline.all().await?;
                Ok(())
            }
            Self::Local { entries, tags } => {
                entries.insert(key.to_string(), value.to_string());
                let mut members = tags.get(tag).unwrap_or_default();
                if !members.iter().any(|m| m == key) {
                    members.push(key.to_string());
                }
                tags.insert(tag.to_string(), members);
                Ok(())
            }
        }
    }

    pub async fn delete(&self, key: &str) -> Result<(), fred::error::Error> {
        match self {
            Self::Redis { conn, .. } => {
                let _: i64 = conn.client.del(conn.key(key)).await?;
                Ok(())
            }
            Self::Local { entries, .. } => {
                entries.invalidate(key);
                Ok(())
            }
        }
    }

    /// Drops every entry stored under `tag`.
    pub async fn delete_tag(&self, tag: &str) -> Result<(), fred::error::Error> {
        match self {
            Self::Redis { conn, .. } => {
                let tag_key = conn.key(&format!("tag:{tag}"));
                let members: Vec<String> = conn.client.smembers(&tag_key).await?;
                if !members.is_empty() {
                    let _: i64 = conn.client.del(members).await?;
                }
                let _: i64 = conn.client.del(tag_key).await?;
                Ok(())
            }
            Self::Local { entries, tags } => {
                for key in tags.get(tag).unwrap_or_default() {
                    entries.invalidate(&key);
                }
                tags.invalidate(tag);
                Ok(())
            }
        }
    }
}
