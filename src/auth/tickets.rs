//! Single-use tickets for the console's WebSocket (SPEC §10).
//!
//! Browsers cannot set `Authorization` on a WebSocket upgrade, so an authenticated caller
//! first trades its bearer for a ticket (`POST /auth/ws-ticket`) and then presents the
//! ticket in the upgrade's query string. A ticket:
//!
//! - is 43 URL-safe characters (256 random bits);
//! - is stored only as its SHA-256, next to the [`Grant`] it carries;
//! - works once: redeeming removes it atomically (`GETDEL` in Redis, a map removal in
//!   process), so two racing upgrades cannot both win;
//! - expires after [`TICKET_TTL`]: an age of exactly 30 s is still valid, anything later
//!   is not. Redis treats `PX 30000` the same way (a key expires when now > deadline);
//!   the in-process store measures age with an injectable [`Clock`];
//! - is shared through Redis when configured, so a ticket issued by one instance works
//!   on any other behind the same load balancer;
//! - appears in logs only as its first 8 characters ([`crate::telemetry::redact`]).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use fred::prelude::*;
use serde::{Deserialize, Serialize};

use crate::auth::secrets::hash_secret;
use crate::store::redis::RedisConn;

/// How long a ticket stays valid after it is issued (inclusive).
pub const TICKET_TTL: Duration = Duration::from_secs(30);

/// Length of a minted ticket: 32 random bytes, base64url without padding.
pub const TICKET_LEN: usize = 43;

/// What a redeemed ticket lets the socket see.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Grant {
    /// The issuing caller's label (`master_key`, `jwt:alice`): never a secret.
    pub label: String,
    /// `None`: requests of every team (proxy admins). `Some(team)`: only that team's.
    pub team_id: Option<String>,
}

impl Grant {
    /// May this socket see a request made under `team_id`?
    pub fn sees(&self, team_id: Option<&str>) -> bool {
        match &self.team_id {
            None => true,
            Some(own) => team_id == Some(own.as_str()),
        }
    }
}

/// A new ticket: 43 URL-safe characters (256 bits from the OS CSPRNG).
pub fn mint_ticket() -> String {
    let mut bytes = [0u8; 32];
    rand::fill(&mut bytes);
    URL_SAFE_NO_PAD.encode(bytes)
}

/// Cheap shape check before any store lookup: anything else cannot be a ticket.
fn well_formed(ticket: &str) -> bool {
    ticket.len() == TICKET_LEN
        && ticket
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// The time source of the in-process store (injectable so the 30 s boundary can be
/// tested without sleeping).
pub trait Clock: Send + Sync {
    fn now(&self) -> Instant;
}

/// The real monotonic clock.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Instant {
        Instant::now()
    }
}

/// The ticket store could not be reached (Redis down). Never shown to callers.
#[derive(Debug, thiserror::Error)]
#[error("ticket store unavailable")]
pub struct StoreUnavailable(#[source] pub anyhow::Error);

impl From<fred::error::Error> for StoreUnavailable {
    fn from(err: fred::error::Error) -> Self {
        Self(err.into())
    }
}

/// Where tickets live: Redis when configured (shared by every instance), else in process.
pub enum TicketStore {
    Redis(RedisConn),
    Local(LocalTickets),
}

impl TicketStore {
    /// Redis when a connection is given, else an in-process store on the system clock.
    pub fn new(redis: Option<RedisConn>) -> Self {
        match redis {
            Some(conn) => Self::Redis(conn),
            None => Self::Local(LocalTickets::new(Arc::new(SystemClock))),
        }
    }

    /// Issues a ticket carrying `grant`; returns the plaintext (shown to the caller once).
    pub async fn issue(&self, grant: &Grant) -> Result<String, StoreUnavailable> {
        match self {
            Self::Local(local) => Ok(local.issue(grant.clone())),
            Self::Redis(conn) => {
                let value = serde_json::to_string(grant).map_err(|e| StoreUnavailable(e.into()))?;
                let ttl_ms = i64::try_from(TICKET_TTL.as_millis()).unwrap_or(i64::MAX);
                // NX: a (practically impossible) collision never overwrites a live ticket.
                for _ in 0..3 {
                    let ticket = mint_ticket();
                    let stored: Option<String> = conn
                        .client
                        .set(
                            redis_key(conn, &ticket),
                            value.as_str(),
                            Some(Expiration::PX(ttl_ms)),
                            Some(SetOptions::NX),
                            false,
                        )
                        .await?;
                    if stored.is_some() {
                        return Ok(ticket);
                    }
                }
                Err(StoreUnavailable(anyhow::anyhow!(
                    "could not store a fresh ticket"
                )))
            }
        }
    }

    /// Redeems a ticket: its grant if it exists and has not expired, consuming it either
    /// way; `None` for an unknown, used, expired or malformed ticket.
    pub async fn redeem(&self, ticket: &str) -> Result<Option<Grant>, StoreUnavailable> {
        if !well_formed(ticket) {
            return Ok(None);
        }
        match self {
            Self::Local(local) => Ok(local.redeem(ticket)),
            Self::Redis(conn) => {
                let value: Option<String> = conn.client.getdel(redis_key(conn, ticket)).await?;
                Ok(value.and_then(|v| serde_json::from_str(&v).ok()))
            }
        }
    }
}

fn redis_key(conn: &RedisConn, ticket: &str) -> String {
    conn.key(&format!("ws_ticket:{}", hash_secret(ticket)))
}

/// The in-process store: SHA-256 of the ticket → (issued at, grant).
pub struct LocalTickets {
    clock: Arc<dyn Clock>,
    entries: Mutex<HashMap<String, (Instant, Grant)>>,
}

impl LocalTickets {
    pub fn new(clock: Arc<dyn Clock>) -> Self {
        Self {
            clock,
            entries: Mutex::new(HashMap::new()),
        }
    }

    fn entries(&self) -> std::sync::MutexGuard<'_, HashMap<String, (Instant, Grant)>> {
        // Every critical section leaves the map consistent, so a poisoned lock is usable.
        self.entries.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub fn issue(&self, grant: Grant) -> String {
        let ticket = mint_ticket();
        let now = self.clock.now();
        let mut entries = self.entries();
        // Drop expired tickets so unredeemed ones cannot pile up.
        entries.retain(|_, (issued, _)| !expired(*issued, now));
        entries.insert(hash_secret(&ticket), (now, grant));
        ticket
    }

    pub fn redeem(&self, ticket: &str) -> Option<Grant> {
        let now = self.clock.now();
        let (issued, grant) = self.entries().remove(&hash_secret(ticket))?;
        (!expired(issued, now)).then_some(grant)
    }

    /// Tickets currently held (expired ones included until the next issue sweeps them).
    pub fn len(&self) -> usize {
        self.entries().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Strictly later than [`TICKET_TTL`] is expired; exactly 30 s is still valid.
fn expired(issued: Instant, now: Instant) -> bool {
    now.saturating_duration_since(issued) > TICKET_TTL
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A clock that moves only when told to.
    struct ManualClock(Mutex<Instant>);

    impl ManualClock {
        fn new() -> Arc<Self> {
            Arc::new(Self(Mutex::new(Instant::now())))
        }

        fn advance(&self, by: Duration) {
            let mut now = self.0.lock().unwrap_or_else(PoisonError::into_inner);
            *now += by;
        }
    }

    impl Clock for ManualClock {
        fn now(&self) -> Instant {
            *self.0.lock().unwrap_or_else(PoisonError::into_inner)
        }
    }

    fn grant() -> Grant {
        Grant {
            label: "master_key".into(),
            team_id: None,
        }
    }

    #[test]
    fn tickets_are_long_url_safe_and_unique() {
        let a = mint_ticket();
        let b = mint_ticket();
        assert_ne!(a, b);
        assert_eq!(a.len(), TICKET_LEN);
        assert!(a.len() >= 32);
        assert!(well_formed(&a), "{a}");
    }

    #[test]
    fn valid_at_exactly_thirty_seconds() {
        let clock = ManualClock::new();
        let store = LocalTickets::new(clock.clone());
        let ticket = store.issue(grant());
        clock.advance(Duration::from_secs(30));
        assert_eq!(store.redeem(&ticket), Some(grant()));
    }

    #[test]
    fn expired_one_millisecond_after_thirty_seconds() {
        let clock = ManualClock::new();
        let store = LocalTickets::new(clock.clone());
        let ticket = store.issue(grant());
        clock.advance(Duration::from_millis(30_001));
        assert_eq!(store.redeem(&ticket), None);
        // An expired ticket is gone, not merely refused.
        assert!(store.is_empty());
    }

    #[test]
    fn a_ticket_works_once() {
        let store = LocalTickets::new(ManualClock::new());
        let ticket = store.issue(grant());
        assert_eq!(store.redeem(&ticket), Some(grant()));
        assert_eq!(store.redeem(&ticket), None);
    }

    #[test]
    fn unknown_tickets_are_refused() {
        let store = LocalTickets::new(ManualClock::new());
        store.issue(grant());
        assert_eq!(store.redeem(&mint_ticket()), None);
    }

    #[test]
    fn only_hashes_are_stored() {
        let store = LocalTickets::new(ManualClock::new());
        let ticket = store.issue(grant());
        let entries = store.entries();
        assert!(!entries.contains_key(&ticket));
        assert!(entries.contains_key(&hash_secret(&ticket)));
    }

    #[test]
    fn issuing_sweeps_expired_tickets() {
        let clock = ManualClock::new();
        let store = LocalTickets::new(clock.clone());
        store.issue(grant());
        store.issue(grant());
        clock.advance(Duration::from_millis(30_001));
        let fresh = store.issue(grant());
        assert_eq!(store.len(), 1);
        assert_eq!(store.redeem(&fresh), Some(grant()));
    }

    #[tokio::test]
    async fn malformed_tickets_never_reach_the_store() {
        let store = TicketStore::Local(LocalTickets::new(ManualClock::new()));
        for bad in [
            "",
            "short",
            &"x".repeat(44),
            &format!("{}!", "a".repeat(42)),
        ] {
            assert_eq!(store.redeem(bad).await.ok().flatten(), None, "{bad:?}");
        }
    }

    #[test]
    fn grant_scope() {
        let all = grant();
        assert!(all.sees(None));
        assert!(all.sees(Some("t1")));
        let team = Grant {
            label: "jwt:alice".into(),
            team_id: Some("t1".into()),
        };
        assert!(team.sees(Some("t1")));
        assert!(!team.sees(Some("t2")));
        assert!(!team.sees(None));
    }
}
