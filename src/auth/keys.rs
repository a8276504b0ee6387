//! `KeyResolver`: virtual key → key record (and its team), cached in process.
//!
//! A cached key costs no database round trip. Entries live `cache.key_ttl_s`; past that
//! they are reloaded, and while the database is down a stale entry keeps serving for up
//! to `cache.stale_if_error_s` more. Unknown hashes are cached too (a minted key has 256
//! random bits, so a negative entry can never shadow a key created later), which keeps
//! floods of bad keys off the database. A key's previous secret, during a rotation grace
//! period, resolves to the same key (see [`KeyResolver::resolve`]). Admin writes call
//! [`KeyResolver::invalidate_key`] / [`KeyResolver::invalidate_team`] so the next request
//! sees the change.

use std::sync::Arc;
use std::time::{Duration, Instant};

use moka::future::Cache;

use crate::error::AppError;
use crate::store::{Store, StoreError, Team, VirtualKey};
use crate::telemetry::CacheKind;

struct Entry<T> {
    value: Option<Arc<T>>,
    /// Served without asking the database until then.
    fresh_until: Instant,
    /// Served while the database is unavailable until then.
    stale_until: Instant,
}

impl<T> Clone for Entry<T> {
    fn clone(&self) -> Self {
        Self {
            value: self.value.clone(),
            fresh_until: self.fresh_until,
            stale_until: self.stale_until,
        }
    }
}

/// How long a stale entry is trusted before the database is asked again while it is down.
const RETRY_BACKOFF: Duration = Duration::from_secs(1);

/// A resolved key with its team, as the request path needs them.
#[derive(Debug, Clone)]
pub struct ResolvedKey {
    pub key: Arc<VirtualKey>,
    pub team: Option<Arc<Team>>,
}

/// Every request looks its key up: foldhash, seeded per process, not SipHash.
type Hasher = foldhash::fast::RandomState;

pub struct KeyResolver {
    store: Arc<dyn Store>,
    keys: Cache<String, Entry<VirtualKey>, Hasher>,
    teams: Cache<String, Entry<Team>, Hasher>,
    fresh_for: Duration,
    stale_for: Duration,
}

impl KeyResolver {
    pub fn new(store: Arc<dyn Store>, ttl: Duration, stale_if_error: Duration) -> Self {
        let keep = ttl + stale_if_error;
        Self {
            store,
            keys: Cache::builder()
                .max_capacity(200_000)
                .time_to_live(keep.max(Duration::from_millis(1)))
                .build_with_hasher(Hasher::default()),
            teams: Cache::builder()
                .max_capacity(50_000)
                .time_to_live(keep.max(Duration::from_millis(1)))
                .build_with_hasher(Hasher::default()),
            fresh_for: ttl,
            stale_for: keep,
        }
    }

    /// The key whose SHA-256 is `hash`, with its team. `Ok(None)` = unknown key.
    ///
    /// A previous secret in its rotation grace period resolves to the same key. Its cache
    /// entry only says which key it was; the key itself comes from the current secret's
    /// entry (so an update, which refreshes that one, reaches both secrets), and the grace
    /// period is checked against the clock on every call, cached or not: it ends at
    /// `grace_until` even on an instance that has not heard of anything.
    pub async fn resolve(&self, hash: &str) -> Result<Option<ResolvedKey>, AppError> {
        let Some(found) = self.key(hash).await? else {
            return Ok(None);
        };
        let key = if found.key_hash == hash {
            found
        } else {
            let Some(current) = self.key(&found.key_hash).await? else {
                return Ok(None);
            };
            if !current.in_grace(hash, chrono::Utc::now()) {
                return Ok(None);
            }
            current
        };
        let team = match &key.team_id {
            Some(team_id) => self.team(team_id).await?,
            None => None,
        };
        Ok(Some(ResolvedKey { key, team }))
    }

    async fn key(&self, hash: &str) -> Result<Option<Arc<VirtualKey>>, AppError> {
        // Borrowed, not copied: only a miss runs the load.
        let store = &self.store;
        cached(
            &self.keys,
            hash,
            self.fresh_for,
            self.stale_for,
            CacheKind::Key,
            || store.key_by_hash(hash),
        )
        .await
    }

    pub async fn team(&self, team_id: &str) -> Result<Option<Arc<Team>>, AppError> {
        let store = &self.store;
        cached(
            &self.teams,
            team_id,
            self.fresh_for,
            self.stale_for,
            CacheKind::Team,
            || store.team(team_id),
        )
        .await
    }

    pub async fn invalidate_key(&self, hash: &str) {
        self.keys.invalidate(hash).await;
    }

    pub async fn invalidate_team(&self, team_id: &str) {
        self.teams.invalidate(team_id).await;
    }

    /// Drops every cached key (used when only the key id is known, e.g. remote
    /// invalidation of a key whose hash this instance may hold).
    pub fn invalidate_all_keys(&self) {
        self.keys.invalidate_all();
    }
}

async fn cached<T, F, Fut>(
    cache: &Cache<String, Entry<T>, Hasher>,
    id: &str,
    fresh_for: Duration,
    stale_for: Duration,
    kind: CacheKind,
    load: F,
) -> Result<Option<Arc<T>>, AppError>
where
    T: Send + Sync + 'static,
    F: FnOnce() -> Fut,
    Fut: std::future::Future<Output = Result<Option<T>, StoreError>> + Send,
{
    let now = Instant::now();
    let existing = cache.get(id).await;
    if let Some(entry) = &existing {
        if now < entry.fresh_until {
            crate::telemetry::cache_lookup(kind, true);
            return Ok(entry.value.clone());
        }
        cache.invalidate(id).await;
    }
    crate::telemetry::cache_lookup(kind, false);
    // Concurrent misses for one id share a single load.
    let loaded = cache
        .try_get_with(id.to_string(), async {
            let value = load().await?;
            let loaded_at = Instant::now();
            Ok::<_, StoreError>(Entry {
                value: value.map(Arc::new),
                fresh_until: loaded_at + fresh_for,
                stale_until: loaded_at + stale_for,
            })
        })
        .await;
    match loaded {
        Ok(entry) => Ok(entry.value),
        Err(err) => match (&*err, existing) {
            (StoreError::Unavailable(_), Some(stale)) if now < stale.stale_until => {
                tracing::warn!(
                    kind = kind.as_str(),
                    "database unavailable; serving a cached entry"
                );
                let value = stale.value.clone();
                cache
                    .insert(
                        id.to_string(),
                        Entry {
                            fresh_until: Instant::now() + RETRY_BACKOFF,
                            ..stale
                        },
                    )
                    .await;
                Ok(value)
            }
            _ => Err(match Arc::try_unwrap(err) {
                Ok(e) => e.into(),
                Err(shared) => AppError::Unavailable(anyhow::anyhow!("{shared}")),
            }),
        },
    }
}
