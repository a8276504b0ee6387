//! [`MockIdp`]: a mock OIDC identity provider serving a discovery document and a JWKS
//! with RSA, EC (P-256, P-384) and Ed25519 keys, plus helpers that mint good and
//! deliberately bad tokens.
//!
//! Routes: `GET /.well-known/openid-configuration` (issuer, `jwks_uri`, ...) and
//! `GET /jwks.json`. The keys are committed fixtures (`testkit/fixtures/`): two
//! complete sets for [`rotate`](MockIdp::rotate) and a foreign set that is never
//! published.
//!
//! Several IdPs in one test are independent servers with issuers of their own; they
//! start on the same fixture set, so [`rotate`](MockIdp::rotate) one of them when their
//! keys must differ. The discovery document can be made to name another issuer
//! ([`set_discovery_issuer`](MockIdp::set_discovery_issuer)), and an IdP can be
//! [`stop`](MockIdp::stop)ped and [`restart`](MockIdp::restart)ed on the same address
//! (an IdP that is down at the gateway's start-up, then comes up).
//!
//! ```no_run
//! # async fn demo() {
//! use jsonwebtoken::Algorithm;
//! let idp = testkit::idp::MockIdp::start().await;
//! let token = idp.sign(Algorithm::ES256, &idp.standard_claims("alice"));
//! // configure the gateway with issuer = idp.issuer(), jwks_url = idp.jwks_url(),
//! // audience = "tollgate", and send `Authorization: Bearer {token}`.
//! # let _ = token;
//! # }
//! ```

mod keys;

use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};
use tokio::sync::watch;

pub use keys::SIGNING_ALGORITHMS;

use crate::server::ServerHandle;
use keys::{FOREIGN_SET, LoadedSet, SETS};

/// The audience of [`MockIdp::standard_claims`].
pub const AUDIENCE: &str = "tollgate";

const WAIT_LIMIT: Duration = Duration::from_secs(30);

#[derive(Debug)]
struct Shared {
    addr: SocketAddr,
    issuer: String,
    /// The `issuer` the discovery document names instead of the real one.
    discovery_issuer: std::sync::Mutex<Option<String>>,
    discoveries: watch::Sender<usize>,
    /// Index into [`SETS`] of the set currently served and signed with.
    current: AtomicUsize,
    available: AtomicBool,
    fetches: watch::Sender<usize>,
}

impl Shared {
    fn current(&self) -> &'static LoadedSet {
        &SETS[self.current.load(Ordering::SeqCst) % SETS.len()]
    }
}

/// A handle to a running mock IdP. Cheap to clone; the server stops when the last clone
/// is dropped.
#[derive(Clone)]
pub struct MockIdp {
    shared: Arc<Shared>,
    server: Arc<tokio::sync::Mutex<ServerHandle>>,
}

impl fmt::Debug for MockIdp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MockIdp")
            .field("issuer", &self.shared.issuer)
            .field("set", &self.shared.current().pems.name)
            .field("fetches", &self.fetch_count())
            .finish_non_exhaustive()
    }
}

async fn discovery(State(shared): State<Arc<Shared>>) -> Json<Value> {
    shared.discoveries.send_modify(|n| *n += 1);
    let issuer = &shared.issuer;
    let named = shared
        .discovery_issuer
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .clone()
        .unwrap_or_else(|| issuer.clone());
    Json(json!({
        "issuer": named,
        "jwks_uri": format!("{issuer}/jwks.json"),
        "authorization_endpoint": format!("{issuer}/authorize"),
        "token_endpoint": format!("{issuer}/token"),
        "userinfo_endpoint": format!("{issuer}/userinfo"),
        "response_types_supported": ["code", "id_token", "token id_token"],
        "subject_types_supported": ["public"],
        "id_token_signing_alg_values_supported":
            SIGNING_ALGORITHMS.iter().map(|a| format!("{a:?}")).collect::<Vec<_>>(),
        "scopes_supported": ["openid", "email", "profile"],
        "claims_supported": ["iss", "sub", "aud", "exp", "iat", "nbf", "email"],
    }))
}

async fn jwks(State(shared): State<Arc<Shared>>) -> Response {
    shared.fetches.send_modify(|n| *n += 1);
    if !shared.available.load(Ordering::SeqCst) {
        return (
            StatusCode::INTERNAL_SERVER_ERROR,
            Json(json!({ "error": "server_error", "error_description": "JWKS unavailable" })),
        )
            .into_response();
    }
    let mut response = Json(&shared.current().jwks).into_response();
    response.headers_mut().insert(
        axum::http::header::CACHE_CONTROL,
        axum::http::HeaderValue::from_static("public, max-age=300"),
    );
    response
}

impl MockIdp {
    /// Bind `127.0.0.1:0` and serve on a spawned task.
    pub async fn start() -> Self {
        // Parse the fixtures before serving so the first request is not slowed down.
        let _ = (&*SETS, &*FOREIGN_SET);
        let mut state = None;
        let server = ServerHandle::spawn_with(|addr| {
            let shared = Arc::new(Shared {
                addr,
                issuer: format!("http://{addr}"),
                discovery_issuer: std::sync::Mutex::new(None),
                discoveries: watch::Sender::new(0),
                current: AtomicUsize::new(0),
                available: AtomicBool::new(true),
                fetches: watch::Sender::new(0),
            });
            state = Some(Arc::clone(&shared));
            router(shared)
        })
        .await;
        let shared = state.expect("testkit: IdP state is built with the router");
        Self {
            shared,
            server: Arc::new(tokio::sync::Mutex::new(server)),
        }
    }

    /// The issuer: the IdP's base URL, `http://127.0.0.1:PORT` (no trailing slash).
    pub fn issuer(&self) -> String {
        self.shared.issuer.clone()
    }

    /// `{issuer}/jwks.json`.
    pub fn jwks_url(&self) -> String {
        format!("{}/jwks.json", self.shared.issuer)
    }

    /// `{issuer}/.well-known/openid-configuration`.
    pub fn discovery_url(&self) -> String {
        format!("{}/.well-known/openid-configuration", self.shared.issuer)
    }

    /// The bound address.
    pub fn addr(&self) -> SocketAddr {
        self.shared.addr
    }

    /// Stop serving (connections are refused afterwards). Returns once it is all closed. Idempotent.
    pub async fn stop(&self) {
        self.server.lock().await.stop().await;
    }

    /// Serve again on the same address, with the same issuer, keys and counters (stops
    /// first if it is running). Panics if the address cannot be bound again.
    pub async fn restart(&self) {
        let mut server = self.server.lock().await;
        server.stop().await;
        let shared = Arc::clone(&self.shared);
        let addr = self.shared.addr.to_string();
        *server = ServerHandle::spawn_on(&addr, |_| router(shared))
            .await
            .unwrap_or_else(|e| panic!("testkit: rebinding the IdP on {addr}: {e}"));
    }

    /// Make the discovery document name `issuer` instead of the real one (a lying or
    /// misconfigured IdP); `None` restores the truth. Its `jwks_uri` stays this IdP's.
    pub fn set_discovery_issuer(&self, issuer: Option<&str>) {
        *self
            .shared
            .discovery_issuer
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = issuer.map(str::to_owned);
    }

    /// Discovery-document requests received.
    pub fn discovery_count(&self) -> usize {
        *self.shared.discoveries.borrow()
    }

    /// Wait until at least `n` discovery-document requests were received (panics after
    /// 30 s).
    pub async fn wait_for_discoveries(&self, n: usize) {
        let mut rx = self.shared.discoveries.subscribe();
        let waited = tokio::time::timeout(WAIT_LIMIT, rx.wait_for(|c| *c >= n)).await;
        if waited.is_err() {
            panic!(
                "testkit: timed out waiting for {n} discovery requests (got {})",
                self.discovery_count()
            );
        }
    }

    /// JWKS requests received (including those answered 500 while unavailable).
    pub fn fetch_count(&self) -> usize {
        *self.shared.fetches.borrow()
    }

    /// Wait until at least `n` JWKS requests were received (panics after 30 s).
    pub async fn wait_for_fetches(&self, n: usize) {
        let mut rx = self.shared.fetches.subscribe();
        let waited = tokio::time::timeout(WAIT_LIMIT, rx.wait_for(|c| *c >= n)).await;
        if waited.is_err() {
            panic!(
                "testkit: timed out waiting for {n} JWKS fetches (got {})",
                self.fetch_count()
            );
        }
    }

    /// `false` makes the JWKS route answer 500 (the discovery document stays up).
    pub fn set_available(&self, available: bool) {
        self.shared.available.store(available, Ordering::SeqCst);
    }

    /// Replace the served key set by the other one (new kids, new keys; the old keys
    /// disappear from the JWKS). Signing helpers use the new set from now on. Rotating
    /// twice brings the first set back.
    pub fn rotate(&self) {
        self.shared.current.fetch_add(1, Ordering::SeqCst);
    }

    /// The JWKS currently served.
    pub fn jwks(&self) -> Value {
        serde_json::to_value(&self.shared.current().jwks).expect("testkit: JWKS serializes")
    }

    /// The `kid` of the current key for `alg`.
    pub fn kid(&self, alg: Algorithm) -> String {
        self.shared.current().key(alg).kid.clone()
    }

    /// Sign `claims` with the current key for `alg`, its `kid` in the header.
    ///
    /// # Panics
    /// For HS* algorithms (the IdP has no shared secrets).
    pub fn sign(&self, alg: Algorithm, claims: &Value) -> String {
        let key = self.shared.current().key(alg);
        sign_with(alg, Some(&key.kid), &key.key, claims)
    }

    /// Sign with the current key for `alg` but put `kid` (or no kid at all) in the
    /// header.
    pub fn sign_with_kid(&self, alg: Algorithm, kid: Option<&str>, claims: &Value) -> String {
        let key = self.shared.current().key(alg);
        sign_with(alg, kid, &key.key, claims)
    }

    /// A well-formed token signed by a key that is not in the JWKS, with a `kid` that is
    /// not in the JWKS either.
    pub fn sign_with_foreign_key(&self, alg: Algorithm, claims: &Value) -> String {
        let key = FOREIGN_SET.key(alg);
        sign_with(alg, Some(&key.kid), &key.key, claims)
    }

    /// The algorithm-confusion attack: an HS256 token whose HMAC secret is the current
    /// RSA public key PEM, carrying the RSA key's (RS256) `kid`.
    pub fn hs256_with_public_key(&self, claims: &Value) -> String {
        let set = self.shared.current();
        let secret = EncodingKey::from_secret(set.pems.rsa.public_pem.as_bytes());
        let kid = &set.key(Algorithm::RS256).kid;
        sign_with(Algorithm::HS256, Some(kid), &secret, claims)
    }

    /// An unsecured token: header `{"alg":"none","typ":"JWT","kid":<RS256 kid>}`, the
    /// claims, and an empty signature (`header.payload.`).
    pub fn unsigned_none(&self, claims: &Value) -> String {
        let kid = &self.shared.current().key(Algorithm::RS256).kid;
        let header = json!({ "alg": "none", "typ": "JWT", "kid": kid });
        format!(
            "{}.{}.",
            URL_SAFE_NO_PAD.encode(header.to_string()),
            URL_SAFE_NO_PAD.encode(claims.to_string())
        )
    }

    /// The current RSA public key (SPKI PEM), for static-key configuration.
    pub fn rsa_public_pem(&self) -> String {
        self.shared.current().pems.rsa.public_pem.to_owned()
    }

    /// The current public key (SPKI PEM) that verifies `alg`.
    pub fn public_pem(&self, alg: Algorithm) -> String {
        self.shared.current().pems.pair(alg).public_pem.to_owned()
    }

    /// `{"iss": issuer, "sub": sub, "aud": "tollgate", "exp": now+600, "iat": now,
    /// "nbf": now}`; add claims with `claims["email"] = json!(...)`.
    pub fn standard_claims(&self, sub: &str) -> Value {
        let now = chrono::Utc::now().timestamp();
        json!({
            "iss": self.shared.issuer,
            "sub": sub,
            "aud": AUDIENCE,
            "exp": now + 600,
            "iat": now,
            "nbf": now,
        })
    }
}

fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/.well-known/openid-configuration", get(discovery))
        .route("/jwks.json", get(jwks))
        .with_state(shared)
}

fn sign_with(alg: Algorithm, kid: Option<&str>, key: &EncodingKey, claims: &Value) -> String {
    let mut header = Header::new(alg);
    header.kid = kid.map(str::to_owned);
    jsonwebtoken::encode(&header, claims, key).expect("testkit: signing a token")
}
