//! Helpers shared by the SSO tests (issue 5, SPEC §6.1–§6.3, §6.5): a gateway configured
//! against a [`MockIdp`], tokens for it, a store wrapper that counts mapping-table
//! queries, and shortcuts for mappings, `/api/tags` and usage rows.

#![allow(dead_code)]

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use jsonwebtoken::Algorithm;
use serde_json::{Value, json};
use testkit::idp::MockIdp;
use tollgate::config::{Config, ProviderConfig, UnregisteredPolicy};
use tollgate::store::{
    Audit, KeyFields, KeyFilter, Mapping, Page, Store, StoreResult, Team, TeamFields, UsageFilter,
    UsageRow, VirtualKey,
};

use crate::keys_support::{chat_once, ok_json};
use crate::support::*;

/// The `__NO_MAPPING__` sentinel of SPEC §6.3.
pub const NO_MAPPING: &str = "__NO_MAPPING__";
/// The `__JWT_PROXY_ADMIN__` sentinel of SPEC §6.3.
pub const PROXY_ADMIN: &str = "__JWT_PROXY_ADMIN__";
/// The claim every test maps (`jwt.virtual_key_claim`).
pub const CLAIM: &str = "email";

/// `jwt:` enabled against `idp` (JWKS URL, issuer, audience `tollgate`), mapping the
/// `email` claim with `policy`. Clone it to configure a second instance the same way.
pub fn sso(
    idp: &MockIdp,
    policy: UnregisteredPolicy,
) -> impl Fn(&mut Config) + Clone + Send + Sync + use<> {
    sso_many(&[idp], policy)
}

/// [`sso`] trusting several identity providers at once: one `jwt.providers` entry each
/// (its issuer and JWKS URL); with a single IdP, the flat `jwks_urls` + `issuers` form.
pub fn sso_many(
    idps: &[&MockIdp],
    policy: UnregisteredPolicy,
) -> impl Fn(&mut Config) + Clone + Send + Sync + use<> {
    let providers: Vec<ProviderConfig> = idps.iter().map(|i| jwks_provider(i)).collect();
    move |c: &mut Config| {
        c.jwt.enabled = true;
        match providers.as_slice() {
            [one] => {
                c.jwt.jwks_urls = one.jwks_url.iter().cloned().collect();
                c.jwt.issuers = vec![one.issuer.clone()];
            }
            many => c.jwt.providers = many.to_vec(),
        }
        c.jwt.audiences = vec!["tollgate".into()];
        c.jwt.virtual_key_claim = Some(CLAIM.into());
        c.jwt.unregistered_policy = policy;
    }
}

/// A `jwt.providers` entry for `idp`: its issuer and its JWKS URL.
pub fn jwks_provider(idp: &MockIdp) -> ProviderConfig {
    ProviderConfig {
        issuer: idp.issuer(),
        jwks_url: Some(idp.jwks_url()),
        ..ProviderConfig::default()
    }
}

/// A `jwt.providers` entry for `idp` that finds its JWKS through OIDC discovery.
pub fn discovery_provider(idp: &MockIdp) -> ProviderConfig {
    ProviderConfig {
        issuer: idp.issuer(),
        discovery: true,
        ..ProviderConfig::default()
    }
}

/// `idp.standard_claims(sub)` plus `email` (when given).
pub fn person(idp: &MockIdp, sub: &str, email: Option<&str>) -> Value {
    let mut claims = idp.standard_claims(sub);
    if let Some(email) = email {
        claims["email"] = json!(email);
    }
    claims
}

/// `claims` signed with the IdP's current RS256 key.
pub fn token(idp: &MockIdp, claims: &Value) -> String {
    idp.sign(Algorithm::RS256, claims)
}

/// A signed token for `sub` with `email`.
pub fn token_for(idp: &MockIdp, sub: &str, email: &str) -> String {
    token(idp, &person(idp, sub, Some(email)))
}

/// The shared-cache key of a resolution: `jwt_key_mapping:{issuer}:{claim}:{value}`.
pub fn cache_key(issuer: &str, value: &str) -> String {
    format!("jwt_key_mapping:{issuer}:{CLAIM}:{value}")
}

/// What the app's mapping cache holds for (issuer, `email`, value).
pub async fn cached(app: &TestApp, issuer: &str, value: &str) -> Option<String> {
    app.app
        .mappings
        .cache()
        .get(&cache_key(issuer, value))
        .await
        .expect("reading the mapping cache")
}

/// Writes `entry` into the app's mapping cache for (issuer, `email`, value), bypassing
/// the resolver (e.g. a stale sentinel).
pub async fn seed_cache(app: &TestApp, issuer: &str, value: &str, entry: &str) {
    app.app
        .mappings
        .cache()
        .set(
            &cache_key(issuer, value),
            entry,
            &tollgate::auth::mapping::cache_tag(CLAIM, value),
        )
        .await
        .expect("writing the mapping cache");
}

// ------------------------------------------------------------------ counting store

/// Delegates every call to the real store, counting `find_mappings` (the resolver's
/// mapping-table lookup) and `insert_key`, and optionally holding the first lookups
/// until enough of them arrived (see [`Lookups::gated`]).
pub struct CountingStore {
    inner: Arc<dyn Store>,
    lookups: Lookups,
}

/// Holds every lookup's answer until the first `held` lookups have all been answered by
/// the database.
struct Gate {
    held: usize,
    barrier: tokio::sync::Barrier,
    released: tokio::sync::watch::Sender<bool>,
}

/// A handle on the counters of the [`CountingStore`]s it wrapped (one or several
/// instances share it).
#[derive(Clone, Default)]
pub struct Lookups {
    find_mappings: Arc<AtomicUsize>,
    inserted_keys: Arc<AtomicUsize>,
    gate: Option<Arc<Gate>>,
}

impl Lookups {
    /// Counters that hold the answers of `find_mappings` (over every store it wraps)
    /// until the first `n` calls have all been answered by the database: nobody acts on
    /// a lookup (e.g. mints a key and inserts its mapping) before `n` lookups saw the
    /// table, so `n` first requests of one new identity are guaranteed to race.
    pub fn gated(n: usize) -> Self {
        Self {
            gate: Some(Arc::new(Gate {
                held: n,
                barrier: tokio::sync::Barrier::new(n),
                released: tokio::sync::watch::Sender::new(false),
            })),
            ..Self::default()
        }
    }

    /// `find_mappings` calls so far.
    pub fn get(&self) -> usize {
        self.find_mappings.load(Ordering::SeqCst)
    }

    /// `insert_key` calls so far (successful or not).
    pub fn inserted_keys(&self) -> usize {
        self.inserted_keys.load(Ordering::SeqCst)
    }

    /// A `wrap_store` hook that wraps the app's store in a [`CountingStore`] feeding
    /// these counters.
    pub fn wrap(&self) -> impl FnOnce(Arc<dyn Store>) -> Arc<dyn Store> + Send + 'static {
        let lookups = self.clone();
        move |inner| Arc::new(CountingStore { inner, lookups })
    }
}

#[async_trait::async_trait]
impl Store for CountingStore {
    async fn ping(&self) -> StoreResult<()> {
        self.inner.ping().await
    }
    async fn insert_key(
        &self,
        key_id: &str,
        key_hash: &str,
        key_name: &str,
        fields: &KeyFields,
        created_by: Option<String>,
        audit: &Audit,
    ) -> StoreResult<VirtualKey> {
        self.lookups.inserted_keys.fetch_add(1, Ordering::SeqCst);
        self.inner
            .insert_key(key_id, key_hash, key_name, fields, created_by, audit)
            .await
    }
    async fn key_by_hash(&self, key_hash: &str) -> StoreResult<Option<VirtualKey>> {
        self.inner.key_by_hash(key_hash).await
    }
    async fn key_by_id(&self, key_id: &str) -> StoreResult<Option<VirtualKey>> {
        self.inner.key_by_id(key_id).await
    }
    async fn update_key(
        &self,
        key_id: &str,
        fields: &KeyFields,
        audit: &Audit,
    ) -> StoreResult<Option<VirtualKey>> {
        self.inner.update_key(key_id, fields, audit).await
    }
    async fn rehash_key(
        &self,
        key_id: &str,
        key_hash: &str,
        key_name: &str,
        grace_until: Option<chrono::DateTime<chrono::Utc>>,
        audit: &Audit,
    ) -> StoreResult<Option<(VirtualKey, VirtualKey)>> {
        self.inner
            .rehash_key(key_id, key_hash, key_name, grace_until, audit)
            .await
    }
    async fn delete_keys(&self, key_ids: &[String], audit: &Audit) -> StoreResult<Vec<VirtualKey>> {
        self.inner.delete_keys(key_ids, audit).await
    }
    async fn register_key(
        &self,
        key: &tollgate::store::NewKey,
        mapping: &Mapping,
        audit: &Audit,
    ) -> StoreResult<VirtualKey> {
        self.lookups.inserted_keys.fetch_add(1, Ordering::SeqCst);
        self.inner.register_key(key, mapping, audit).await
    }
    async fn list_keys(
        &self,
        filter: &KeyFilter,
        page: Page,
    ) -> StoreResult<(Vec<VirtualKey>, u64)> {
        self.inner.list_keys(filter, page).await
    }
    async fn insert_team(
        &self,
        team_id: &str,
        fields: &TeamFields,
        audit: &Audit,
    ) -> StoreResult<Team> {
        self.inner.insert_team(team_id, fields, audit).await
    }
    async fn team(&self, team_id: &str) -> StoreResult<Option<Team>> {
        self.inner.team(team_id).await
    }
    async fn update_team(
        &self,
        team_id: &str,
        fields: &TeamFields,
        audit: &Audit,
    ) -> StoreResult<Option<Team>> {
        self.inner.update_team(team_id, fields, audit).await
    }
    async fn delete_team(&self, team_id: &str, audit: &Audit) -> StoreResult<Option<Vec<String>>> {
        self.inner.delete_team(team_id, audit).await
    }
    async fn team_key_count(&self, team_id: &str) -> StoreResult<u64> {
        self.inner.team_key_count(team_id).await
    }
    async fn list_teams(&self, page: Page) -> StoreResult<(Vec<Team>, u64)> {
        self.inner.list_teams(page).await
    }
    async fn insert_mapping(&self, mapping: &Mapping, audit: &Audit) -> StoreResult<Mapping> {
        self.inner.insert_mapping(mapping, audit).await
    }
    async fn mapping(&self, id: &str) -> StoreResult<Option<Mapping>> {
        self.inner.mapping(id).await
    }
    async fn find_mappings(
        &self,
        issuer: &str,
        claim: &str,
        value: &str,
    ) -> StoreResult<Vec<Mapping>> {
        let index = self.lookups.find_mappings.fetch_add(1, Ordering::SeqCst);
        let found = self.inner.find_mappings(issuer, claim, value).await;
        if let Some(gate) = &self.lookups.gate {
            if index < gate.held {
                if gate.barrier.wait().await.is_leader() {
                    gate.released.send_replace(true);
                }
            } else {
                let mut released = gate.released.subscribe();
                let _ = released.wait_for(|r| *r).await;
            }
        }
        found
    }
    async fn update_mapping(
        &self,
        mapping: &Mapping,
        audit: &Audit,
    ) -> StoreResult<Option<Mapping>> {
        self.inner.update_mapping(mapping, audit).await
    }
    async fn delete_mapping(&self, id: &str, audit: &Audit) -> StoreResult<Option<Mapping>> {
        self.inner.delete_mapping(id, audit).await
    }
    async fn list_mappings(&self, page: Page) -> StoreResult<(Vec<Mapping>, u64)> {
        self.inner.list_mappings(page).await
    }
    async fn reset_budgets(
        &self,
        now: chrono::DateTime<chrono::Utc>,
    ) -> StoreResult<Vec<tollgate::store::BudgetReset>> {
        self.inner.reset_budgets(now).await
    }
    async fn record_usage(&self, rows: &[UsageRow]) -> StoreResult<()> {
        self.inner.record_usage(rows).await
    }
    async fn spend_logs(&self, filter: &UsageFilter) -> StoreResult<Vec<UsageRow>> {
        self.inner.spend_logs(filter).await
    }
    async fn record_audit(&self, entry: &tollgate::store::AuditEntry) -> StoreResult<()> {
        self.inner.record_audit(entry).await
    }
    async fn audit_logs(
        &self,
        filter: &tollgate::store::AuditFilter,
    ) -> StoreResult<Vec<tollgate::store::AuditEntry>> {
        self.inner.audit_logs(filter).await
    }
    async fn purge(
        &self,
        table: tollgate::store::RetainedTable,
        before: chrono::DateTime<chrono::Utc>,
        max_rows: u64,
    ) -> StoreResult<u64> {
        self.inner.purge(table, before, max_rows).await
    }
    async fn try_job_lock(&self, job: &str) -> StoreResult<Option<tollgate::store::JobLock>> {
        self.inner.try_job_lock(job).await
    }
}

// ------------------------------------------------------------------ keys and mappings

/// A key written straight to the store with these models, returning (plaintext, key_id).
pub async fn key_for_models(app: &TestApp, models: &[&str]) -> (String, String) {
    let (plain, key) = app
        .create_key(KeyFields {
            models: models.iter().map(|m| (*m).to_string()).collect(),
            metadata: json!({}),
            ..KeyFields::default()
        })
        .await;
    (plain, key.key_id)
}

/// A team written straight to the store.
pub async fn team(app: &TestApp, team_id: &str, fields: TeamFields) {
    app.create_team(
        team_id,
        TeamFields {
            metadata: json!({}),
            ..fields
        },
    )
    .await;
}

/// `POST /jwt/key/mapping/new` (master key) mapping `email = value` (of `issuer`, `""` =
/// any issuer) to `key_id`; returns the mapping.
pub async fn map(app: &TestApp, issuer: &str, value: &str, key_id: &str) -> Value {
    ok_json(
        app.admin_post(
            "/jwt/key/mapping/new",
            &json!({
                "jwt_claim_name": CLAIM,
                "jwt_claim_value": value,
                "jwt_issuer": issuer,
                "key_id": key_id,
            }),
        )
        .await,
    )
    .await
}

/// The model names `GET /api/tags` lists for `bearer` (asserts 200).
pub async fn tags(app: &TestApp, bearer: &str) -> Vec<String> {
    let body = ok_json(app.get("/api/tags", Some(bearer)).await).await;
    let mut names: Vec<String> = body["models"]
        .as_array()
        .unwrap_or_else(|| panic!("no models in /api/tags: {body}"))
        .iter()
        .map(|m| m["name"].as_str().expect("model name").to_string())
        .collect();
    names.sort();
    names
}

/// A non-streaming `/api/chat` for `model` with `bearer`.
pub async fn chat_as(app: &TestApp, bearer: &str, model: &str) -> reqwest::Response {
    app.post_json("/api/chat", Some(bearer), &chat_once(model))
        .await
}

/// Asserts a non-streaming chat succeeds; returns its request id.
pub async fn chat_ok(app: &TestApp, bearer: &str, model: &str) -> String {
    let resp = chat_as(app, bearer, model).await;
    let id = request_id(&resp);
    let body = ok_json(resp).await;
    assert_eq!(body["done"], true, "{body}");
    id
}

/// The usage row of `request_id` (flushing the writer first), found through
/// `/spend/logs?{filter}` with the master key.
pub async fn usage_row(app: &TestApp, filter: &str, request_id: &str) -> Value {
    app.app.spend.flush().await;
    let rows = ok_json(
        app.admin_get(&format!("/spend/logs?{filter}&limit=10000"))
            .await,
    )
    .await;
    let rows = rows.as_array().expect("/spend/logs is an array").clone();
    crate::keys_support::row_of(&rows, request_id).clone()
}

/// `total_count` of `GET /key/list?{query}` with the master key.
pub async fn key_count(app: &TestApp, query: &str) -> u64 {
    let body = ok_json(app.admin_get(&format!("/key/list?{query}")).await).await;
    body["total_count"].as_u64().expect("total_count")
}

/// Every mapping (`GET /jwt/key/mapping/list`, master key).
pub async fn all_mappings(app: &TestApp) -> Vec<Value> {
    let body = ok_json(app.admin_get("/jwt/key/mapping/list?size=1000").await).await;
    body["mappings"].as_array().expect("mappings").clone()
}

/// The error body of a 401 with its `request_id` blanked, for comparing 401s byte for
/// byte.
pub async fn anonymous_401(resp: reqwest::Response) -> String {
    let err = assert_error(resp, 401, "unauthorized").await;
    err.raw.replace(&err.request_id, "")
}

/// Asserts a 403 in the envelope (any code); returns the code.
pub async fn forbidden(resp: reqwest::Response) -> String {
    let status = resp.status();
    let text = resp.text().await.expect("body");
    assert_eq!(status, 403, "expected 403, got {status}: {text}");
    let body: Value = serde_json::from_str(&text).expect("JSON error body");
    body["error"]["code"]
        .as_str()
        .unwrap_or_else(|| panic!("no error code: {text}"))
        .to_string()
}
