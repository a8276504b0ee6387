//! The key store of one identity provider: its static PEM keys plus the keys of its
//! JWKS URLs (or the one its discovery document names), served to verifications as one
//! immutable snapshot.
//!
//! Fetches are serialised by one async mutex. An on-demand refetch (a token whose key is
//! not in the snapshot) remembers the fetch counter it saw before looking; once it holds
//! the mutex it skips the network if any fetch completed meanwhile, so every request
//! that queued behind a fetch shares it (single flight). On-demand refetches after the
//! first load happen at most every `jwks_min_refetch_s`. A failed fetch of a source
//! keeps the last keys that source served.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use futures_util::future::join_all;

use super::discovery;
use super::keys::{VerifyingKey, parse_jwks};

/// Time allowed for one JWKS (or discovery) request, connection included.
const FETCH_TIMEOUT: Duration = Duration::from_secs(5);
/// Larger JWKS (or discovery) responses are refused.
const MAX_JWKS_BYTES: usize = 1 << 20;

/// Where a provider's keys come from.
#[derive(Debug, Clone)]
pub(super) enum Source {
    /// A JWKS URL.
    Jwks(String),
    /// The `jwks_uri` of this issuer's discovery document, read again at every fetch.
    Discovery(String),
}

impl Source {
    /// For logs.
    fn describe(&self) -> &str {
        match self {
            Source::Jwks(url) | Source::Discovery(url) => url,
        }
    }
}

/// The keys verifications use.
#[derive(Debug, Default)]
pub(super) struct KeySet {
    pub(super) keys: Vec<Arc<VerifyingKey>>,
}

#[derive(Debug)]
struct FetchState {
    /// The last keys each source served successfully (same order as `sources`).
    per_url: Vec<Option<Vec<Arc<VerifyingKey>>>>,
    /// When the last on-demand (unknown key) refetch started.
    last_on_demand: Option<Instant>,
}

#[derive(Debug)]
pub(super) struct KeyStore {
    http: reqwest::Client,
    sources: Vec<Source>,
    static_keys: Vec<Arc<VerifyingKey>>,
    min_refetch: Duration,
    snapshot: RwLock<Arc<KeySet>>,
    /// Completed fetch rounds (successful or not). Written under `fetch`, after
    /// `snapshot`.
    rounds: AtomicU64,
    fetch: tokio::sync::Mutex<FetchState>,
}

impl KeyStore {
    pub(super) fn new(
        http: reqwest::Client,
        sources: Vec<Source>,
        static_keys: Vec<VerifyingKey>,
        min_refetch: Duration,
    ) -> Self {
        let static_keys: Vec<_> = static_keys.into_iter().map(Arc::new).collect();
        let snapshot = Arc::new(KeySet {
            keys: static_keys.clone(),
        });
        let per_url = vec![None; sources.len()];
        Self {
            http,
            sources,
            static_keys,
            min_refetch,
            snapshot: RwLock::new(snapshot),
            rounds: AtomicU64::new(0),
            fetch: tokio::sync::Mutex::new(FetchState {
                per_url,
                last_on_demand: None,
            }),
        }
    }

    /// `true` when there is at least one source to fetch.
    pub(super) fn has_urls(&self) -> bool {
        !self.sources.is_empty()
    }

    /// The current keys, with the fetch counter read *before* them (pass it to
    /// [`refetch`](Self::refetch)).
    pub(super) fn snapshot(&self) -> (u64, Arc<KeySet>) {
        let seen = self.rounds.load(Ordering::Acquire);
        (seen, self.current())
    }

    fn current(&self) -> Arc<KeySet> {
        match self.snapshot.read() {
            Ok(guard) => Arc::clone(&guard),
            Err(poisoned) => Arc::clone(&poisoned.into_inner()),
        }
    }

    /// On-demand refetch for a token whose key is not in the snapshot taken when the
    /// counter was `seen`. Returns the new snapshot if any fetch completed since then
    /// (this one or a concurrent one), `None` if nothing was fetched (no URLs, or the
    /// minimum interval since the last on-demand refetch has not passed).
    pub(super) async fn refetch(&self, seen: u64) -> Option<Arc<KeySet>> {
        if self.sources.is_empty() {
            return None;
        }
        let mut state = self.fetch.lock().await;
        if self.rounds.load(Ordering::Acquire) != seen {
            // Someone fetched while we waited for the lock: share their result.
            return Some(self.current());
        }
        // The very first load (no periodic refresh has run yet) is not rate-limited.
        if seen > 0 {
            if state
                .last_on_demand
                .is_some_and(|at| at.elapsed() < self.min_refetch)
            {
                return None;
            }
            state.last_on_demand = Some(Instant::now());
        }
        self.fetch_round(&mut state).await;
        Some(self.current())
    }

    /// One periodic refresh of every source. Returns `true` when every source has served
    /// keys at least once (so far), `false` while one never has (the caller retries
    /// sooner).
    pub(super) async fn refresh(&self) -> bool {
        if self.sources.is_empty() {
            return true;
        }
        let mut state = self.fetch.lock().await;
        self.fetch_round(&mut state).await;
        state.per_url.iter().all(Option::is_some)
    }

    /// Fetches every source concurrently; each success replaces that source's keys, each
    /// failure keeps them. Then publishes the merged snapshot and bumps the counter.
    async fn fetch_round(&self, state: &mut FetchState) {
        let results = join_all(self.sources.iter().map(|source| self.fetch_source(source))).await;
        let mut changed = false;
        for ((source, slot), result) in self.sources.iter().zip(&mut state.per_url).zip(results) {
            let url = source.describe();
            match result {
                Ok(keys) => {
                    tracing::debug!(url, keys = keys.len(), "JWKS fetched");
                    *slot = Some(keys.into_iter().map(Arc::new).collect());
                    changed = true;
                }
                Err(error) if slot.is_some() => {
                    tracing::warn!(url, %error, "JWKS fetch failed; keeping the last good keys");
                }
                Err(error) => {
                    tracing::warn!(url, %error, "JWKS fetch failed; no keys from this URL yet");
                }
            }
        }
        if changed {
            let keys = self
                .static_keys
                .iter()
                .cloned()
                .chain(state.per_url.iter().flatten().flatten().cloned())
                .collect();
            let set = Arc::new(KeySet { keys });
            match self.snapshot.write() {
                Ok(mut guard) => *guard = set,
                Err(poisoned) => *poisoned.into_inner() = set,
            }
        }
        self.rounds.fetch_add(1, Ordering::Release);
    }

    async fn fetch_source(&self, source: &Source) -> Result<Vec<VerifyingKey>, String> {
        match source {
            Source::Jwks(url) => parse_jwks(&fetch_json(&self.http, url).await?),
            Source::Discovery(issuer) => {
                let jwks_uri = discovery::jwks_uri(&self.http, issuer).await?;
                fetch_json(&self.http, &jwks_uri)
                    .await
                    .and_then(|body| parse_jwks(&body))
                    .map_err(|e| format!("jwks_uri {jwks_uri}: {e}"))
            }
        }
    }
}

/// GETs `url` as JSON: a success status and at most [`MAX_JWKS_BYTES`], within
/// [`FETCH_TIMEOUT`]. Returns the body.
pub(super) async fn fetch_json(http: &reqwest::Client, url: &str) -> Result<Vec<u8>, String> {
    let mut response = http
        .get(url)
        .header(reqwest::header::ACCEPT, "application/json")
        .timeout(FETCH_TIMEOUT)
        .send()
        .await
        .map_err(|e| format!("request failed: {e}"))?;
    if !response.status().is_success() {
        return Err(format!("status {}", response.status()));
    }
    if response
        .content_length()
        .is_some_and(|n| n > MAX_JWKS_BYTES as u64)
    {
        return Err("response too large".into());
    }
    let mut body = Vec::new();
    while let Some(chunk) = response
        .chunk()
        .await
        .map_err(|e| format!("reading the response failed: {e}"))?
    {
        if body.len() + chunk.len() > MAX_JWKS_BYTES {
            return Err("response too large".into());
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}
