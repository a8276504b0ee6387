//! The integration-test harness: the real router on a random loopback port, in process,
//! against a mock Ollama and a database of its own.
//!
//! ```ignore
//! let app = TestApp::spawn().await;                                   // SQLite, no Redis
//! let Some(app) = TestApp::builder().postgres().redis().try_spawn().await else { return };
//! let resp = app.post_json("/api/chat", Some(&app.master_key), &chat("llama3.1:8b")).await;
//! app.shutdown().await;
//! ```
//!
//! - **Databases.** SQLite by default: a file in a fresh temporary directory. PostgreSQL
//!   when asked for and `TEST_DATABASE_URL` is set: every test gets a database of its own
//!   (`CREATE DATABASE tollgate_t_<uuid>`), dropped `WITH (FORCE)` when the last
//!   [`TestApp`] using it is dropped. Unset: [`TestAppBuilder::try_spawn`] prints
//!   `skipped: TEST_DATABASE_URL not set` and returns `None`.
//! - **Redis** when asked for and `TEST_REDIS_URL` is set, with a unique `redis.key_prefix`
//!   per test (`t<uuid>:`), shared by instances made with
//!   [`TestAppBuilder::shared_db_with`]. Unset: skipped the same way.
//! - **Backend matrix.** [`backend_tests!`] turns one test body into a SQLite and a
//!   PostgreSQL test.
//! - **Waiting.** Tests wait on signals (the mock's `wait_for_*`, joins, channels), never
//!   on sleeps.

#![allow(dead_code)]

pub mod proxy;

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use reqwest::StatusCode;
use sea_orm::{ConnectOptions, ConnectionTrait, Database, DatabaseConnection};
use serde_json::Value;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use testkit::ollama::MockOllama;
use tollgate::app::App;
use tollgate::config::{Config, Secret};
use tollgate::store::{KeyFields, Store, Team, TeamFields, VirtualKey};

pub use proxy::TcpProxy;

/// The master key every [`TestApp`] is configured with (unless
/// [`TestAppBuilder::no_master_key`]).
pub const MASTER_KEY: &str = "sk-master-test-0123456789";
/// PostgreSQL server for tests that need one (`postgres://user@host:port/db`).
pub const DATABASE_VAR: &str = "TEST_DATABASE_URL";
/// Redis server for tests that need one (`redis://host:port`).
pub const REDIS_VAR: &str = "TEST_REDIS_URL";

/// Words no error body may contain (SPEC §6.1), compared case-insensitively.
pub const INTERNALS: &[&str] = &[
    "ollama",
    "postgres",
    "sqlite",
    "redis",
    "sea_orm",
    "sea-orm",
    "sqlx",
    "panicked",
    "src/",
    ".rs",
    "::",
    "backtrace",
];

// ------------------------------------------------------------------ environment

/// Prints the reason a test does not run (on stderr, shown with `--nocapture` and in CI
/// logs of failing runs).
/// Rows `seaql_migrations` holds once every migration has run: one per migration.
pub fn migrations() -> i64 {
    use migration::MigratorTrait;
    i64::try_from(migration::Migrator::migrations().len()).expect("a few migrations")
}

/// The audit record of a change a test writes straight to the store.
pub fn audit() -> tollgate::store::Audit {
    tollgate::store::Audit::new("test", tollgate::store::AuditAction::KeyUpdate)
}

pub fn skip(reason: &str) {
    eprintln!("skipped: {reason}");
}

fn env_var(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.trim().is_empty())
}

/// `TEST_DATABASE_URL`, if set and non-empty.
pub fn database_url() -> Option<String> {
    env_var(DATABASE_VAR)
}

/// `TEST_REDIS_URL`, if set and non-empty.
pub fn redis_url() -> Option<String> {
    env_var(REDIS_VAR)
}

/// The socket address `TEST_REDIS_URL` points at (for putting a [`TcpProxy`] in front).
pub async fn redis_addr() -> Option<SocketAddr> {
    let url = reqwest::Url::parse(&redis_url()?).expect("TEST_REDIS_URL is a URL");
    let host = url
        .host_str()
        .expect("TEST_REDIS_URL has a host")
        .to_string();
    let port = url.port().unwrap_or(6379);
    tokio::net::lookup_host((host, port)).await.ok()?.next()
}

// ------------------------------------------------------------------ databases

/// Which database a test runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

impl Backend {
    pub const ALL: [Backend; 2] = [Backend::Sqlite, Backend::Postgres];

    pub fn name(self) -> &'static str {
        match self {
            Backend::Sqlite => "sqlite",
            Backend::Postgres => "postgres",
        }
    }
}

enum DbKind {
    Sqlite(tempfile::TempDir),
    Postgres { admin_url: String, name: String },
}

/// A database owned by one test: a SQLite file in a temporary directory, or a PostgreSQL
/// database created for the test. Removed on drop.
pub struct TestDb {
    backend: Backend,
    url: String,
    kind: DbKind,
}

async fn admin_connection(url: &str) -> DatabaseConnection {
    let mut options = ConnectOptions::new(url.to_string());
    options
        .max_connections(1)
        .min_connections(0)
        .sqlx_logging(false);
    Database::connect(options)
        .await
        .unwrap_or_else(|e| panic!("cannot connect to {DATABASE_VAR}: {e}"))
}

async fn drop_pg_database(admin_url: &str, name: &str) {
    let db = admin_connection(admin_url).await;
    db.execute_unprepared(&format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"))
        .await
        .unwrap_or_else(|e| panic!("cannot drop test database {name}: {e}"));
    drop(db.close().await);
}

impl TestDb {
    /// A fresh database on `backend`; `None` (and a printed reason) when PostgreSQL is
    /// asked for and `TEST_DATABASE_URL` is not set.
    pub async fn create(backend: Backend) -> Option<Arc<TestDb>> {
        match backend {
            Backend::Sqlite => {
                let dir = tempfile::tempdir().expect("temporary directory");
                let url = format!("sqlite://{}/t.db?mode=rwc", dir.path().display());
                Some(Arc::new(TestDb {
                    backend,
                    url,
                    kind: DbKind::Sqlite(dir),
                }))
            }
            Backend::Postgres => {
                let Some(admin_url) = database_url() else {
                    skip(&format!("{DATABASE_VAR} not set"));
                    return None;
                };
                let name = format!("tollgate_t_{}", uuid::Uuid::new_v4().simple());
                let admin = admin_connection(&admin_url).await;
                admin
                    .execute_unprepared(&format!("CREATE DATABASE \"{name}\""))
                    .await
                    .unwrap_or_else(|e| panic!("cannot create test database {name}: {e}"));
                drop(admin.close().await);
                let mut url = reqwest::Url::parse(&admin_url).expect("TEST_DATABASE_URL is a URL");
                url.set_path(&format!("/{name}"));
                Some(Arc::new(TestDb {
                    backend,
                    url: url.to_string(),
                    kind: DbKind::Postgres { admin_url, name },
                }))
            }
        }
    }

    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// The `database.url` the app is configured with.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The SQLite file's directory (for CLI tests that need a path); `None` on PostgreSQL.
    pub fn dir(&self) -> Option<&std::path::Path> {
        match &self.kind {
            DbKind::Sqlite(dir) => Some(dir.path()),
            DbKind::Postgres { .. } => None,
        }
    }

    /// A separate connection for assertions with raw SQL.
    pub async fn connect(&self) -> DatabaseConnection {
        let mut options = ConnectOptions::new(self.url.clone());
        options.max_connections(2).sqlx_logging(false);
        Database::connect(options)
            .await
            .unwrap_or_else(|e| panic!("cannot connect to the test database: {e}"))
    }

    /// Makes the database disappear under a running app: PostgreSQL terminates every
    /// session and drops the database. (SQLite has no equivalent; panics.)
    pub async fn destroy(&self) {
        match &self.kind {
            DbKind::Postgres { admin_url, name } => drop_pg_database(admin_url, name).await,
            DbKind::Sqlite(_) => panic!("TestDb::destroy is only supported on PostgreSQL"),
        }
    }

    /// Names of the tables in the database (without SQLite's internal ones), sorted.
    pub async fn tables(&self) -> Vec<String> {
        table_names(&self.url).await
    }

    /// `SELECT COUNT(*) FROM <table>`.
    pub async fn count(&self, table: &str) -> i64 {
        let db = self.connect().await;
        let row = db
            .query_one_raw(sea_orm::Statement::from_string(
                db.get_database_backend(),
                format!("SELECT COUNT(*) FROM {table}"),
            ))
            .await
            .expect("count query")
            .expect("a count row");
        let n = row.try_get_by_index::<i64>(0).expect("count");
        drop(db.close().await);
        n
    }
}

/// Names of the tables in the database at `url` (without SQLite's internal ones), sorted.
pub async fn table_names(url: &str) -> Vec<String> {
    let mut options = ConnectOptions::new(url.to_string());
    options.max_connections(1).sqlx_logging(false);
    let db = Database::connect(options)
        .await
        .unwrap_or_else(|e| panic!("cannot connect to {url}: {e}"));
    let sql = match db.get_database_backend() {
        sea_orm::DatabaseBackend::Sqlite => {
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'"
        }
        _ => "SELECT table_name FROM information_schema.tables WHERE table_schema = 'public'",
    };
    let rows = db
        .query_all_raw(sea_orm::Statement::from_string(
            db.get_database_backend(),
            sql,
        ))
        .await
        .expect("list tables");
    let mut names: Vec<String> = rows
        .iter()
        .map(|r| r.try_get_by_index::<String>(0).expect("table name"))
        .collect();
    names.sort();
    drop(db.close().await);
    names
}

impl Drop for TestDb {
    fn drop(&mut self) {
        if let DbKind::Postgres { admin_url, name } = &self.kind {
            let (admin_url, name) = (admin_url.clone(), name.clone());
            // Drop may run inside a runtime: use a thread with a runtime of its own.
            let dropped = std::thread::spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("runtime for dropping the test database");
                rt.block_on(drop_pg_database(&admin_url, &name));
            })
            .join();
            if dropped.is_err() && !std::thread::panicking() {
                panic!("dropping the test database failed");
            }
        }
    }
}

// ------------------------------------------------------------------ the app

type ConfigFn = Box<dyn FnOnce(&mut Config) + Send>;
type StoreFn = Box<dyn FnOnce(Arc<dyn Store>) -> Arc<dyn Store> + Send>;
type RouterFn = Box<dyn FnOnce(Arc<App>) -> Router + Send>;

/// Configures a [`TestApp`] before it starts.
pub struct TestAppBuilder {
    backend: Backend,
    redis: bool,
    ollama: Option<MockOllama>,
    shared: Option<(Arc<TestDb>, Option<String>)>,
    master_key: Option<String>,
    config_fns: Vec<ConfigFn>,
    store_fn: Option<StoreFn>,
    router_fn: Option<RouterFn>,
}

/// A running gateway: the real router (`tollgate::http::router::build`) served by
/// `tollgate::server::serve` on `127.0.0.1:<random>`.
pub struct TestApp {
    /// `http://127.0.0.1:PORT`
    pub base: String,
    pub addr: SocketAddr,
    /// A plain client (no proxy, no default headers).
    pub client: reqwest::Client,
    pub app: Arc<App>,
    pub ollama: MockOllama,
    /// The configured master key (`""` with [`TestAppBuilder::no_master_key`]).
    pub master_key: String,
    pub backend: Backend,
    pub db: Arc<TestDb>,
    /// The Redis key prefix when Redis is configured.
    pub redis_prefix: Option<String>,
    shutdown_tx: Option<oneshot::Sender<()>>,
    server: Option<JoinHandle<std::io::Result<()>>>,
}

impl TestAppBuilder {
    fn new() -> Self {
        Self {
            backend: Backend::Sqlite,
            redis: false,
            ollama: None,
            shared: None,
            master_key: Some(MASTER_KEY.to_string()),
            config_fns: Vec::new(),
            store_fn: None,
            router_fn: None,
        }
    }

    /// Run on PostgreSQL (`TEST_DATABASE_URL`), in a database of the test's own.
    pub fn postgres(self) -> Self {
        self.backend(Backend::Postgres)
    }

    pub fn sqlite(self) -> Self {
        self.backend(Backend::Sqlite)
    }

    pub fn backend(mut self, backend: Backend) -> Self {
        self.backend = backend;
        self
    }

    /// Configure Redis (`TEST_REDIS_URL`) with a key prefix of the test's own.
    pub fn redis(mut self) -> Self {
        self.redis = true;
        self
    }

    /// Adjust the configuration; runs after the harness filled in its settings, so it
    /// can override any of them. May be called several times.
    pub fn config(mut self, f: impl FnOnce(&mut Config) + Send + 'static) -> Self {
        self.config_fns.push(Box::new(f));
        self
    }

    /// Use this mock Ollama instead of a fresh one.
    pub fn ollama(mut self, mock: MockOllama) -> Self {
        self.ollama = Some(mock);
        self
    }

    /// No `server.master_key`.
    pub fn no_master_key(mut self) -> Self {
        self.master_key = None;
        self
    }

    /// A second instance on `other`'s database, Redis (same key prefix) and mock Ollama —
    /// what two gateways behind one load balancer share.
    pub fn shared_db_with(mut self, other: &TestApp) -> Self {
        self.backend = other.backend;
        self.redis = other.redis_prefix.is_some();
        self.shared = Some((other.db.clone(), other.redis_prefix.clone()));
        if self.ollama.is_none() {
            self.ollama = Some(other.ollama.clone());
        }
        self
    }

    /// Wrap the app's store before any component receives it (to count calls or
    /// inject faults).
    pub fn wrap_store(
        mut self,
        f: impl FnOnce(Arc<dyn Store>) -> Arc<dyn Store> + Send + 'static,
    ) -> Self {
        self.store_fn = Some(Box::new(f));
        self
    }

    /// Serve this router instead of `tollgate::http::router::build(app)`.
    pub fn router(mut self, f: impl FnOnce(Arc<App>) -> Router + Send + 'static) -> Self {
        self.router_fn = Some(Box::new(f));
        self
    }

    /// Starts the app; `None` (after printing why) when a service it needs is not
    /// configured (`TEST_DATABASE_URL`, `TEST_REDIS_URL`).
    pub async fn try_spawn(self) -> Option<TestApp> {
        let redis_url = if self.redis {
            match redis_url() {
                Some(url) => Some(url),
                None => {
                    skip(&format!("{REDIS_VAR} not set"));
                    return None;
                }
            }
        } else {
            None
        };
        let (db, shared_prefix) = match self.shared {
            Some((db, prefix)) => (db, prefix),
            None => (TestDb::create(self.backend).await?, None),
        };
        let redis_prefix = redis_url.as_ref().map(|_| {
            shared_prefix.unwrap_or_else(|| format!("t{}:", uuid::Uuid::new_v4().simple()))
        });
        let ollama = match self.ollama {
            Some(m) => m,
            None => MockOllama::start().await,
        };

        let mut config = Config::default();
        config.server.listen = "127.0.0.1:0".into();
        config.server.master_key = self.master_key.clone().map(Secret);
        config.database.url = Secret(db.url().to_string());
        config.upstream.url = ollama.url();
        // Tests of one mock server predate the gateway's own slot accounting (SPEC §12):
        // leave it unbounded there; fleet tests set their own.
        config.upstream.parallel = 10_000;
        config.upstream.max_loaded_models = 10_000;
        if let (Some(url), Some(prefix)) = (&redis_url, &redis_prefix) {
            config.redis.url = Some(Secret(url.clone()));
            config.redis.key_prefix = prefix.clone();
        }
        for f in self.config_fns {
            f(&mut config);
        }

        let wrap = self.store_fn;
        let app = App::build_with(config, move |store| match wrap {
            Some(f) => f(store),
            None => store,
        })
        .await
        .unwrap_or_else(|e| panic!("the app did not start: {e:#}"));
        let router = match self.router_fn {
            Some(f) => f(app.clone()),
            None => tollgate::http::router::build(app.clone()),
        };
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind a loopback port");
        let addr = listener.local_addr().expect("bound address");
        let (shutdown_tx, shutdown_rx) = oneshot::channel::<()>();
        let server = tokio::spawn(tollgate::server::serve(
            listener,
            app.clone(),
            router,
            async move {
                drop(shutdown_rx.await);
            },
        ));
        Some(TestApp {
            base: format!("http://{addr}"),
            addr,
            client: client(),
            app,
            ollama,
            master_key: self.master_key.unwrap_or_default(),
            backend: db.backend(),
            db,
            redis_prefix,
            shutdown_tx: Some(shutdown_tx),
            server: Some(server),
        })
    }

    /// Starts the app; panics when a service it needs is not configured (use
    /// [`try_spawn`](Self::try_spawn) for tests that should skip instead).
    pub async fn spawn(self) -> TestApp {
        let backend = self.backend;
        self.try_spawn().await.unwrap_or_else(|| {
            panic!("TestApp needs a service that is not configured (backend {backend:?})")
        })
    }
}

/// A reqwest client for talking to a gateway: no proxy from the environment.
pub fn client() -> reqwest::Client {
    tollgate::outbound::client_builder()
        .no_proxy()
        .build()
        .expect("reqwest client")
}

impl TestApp {
    /// The sum of `metric`'s samples in `/metrics` (0 when not yet reported).
    pub async fn metric(&self, metric: &str) -> f64 {
        let text = self
            .get("/metrics", None)
            .await
            .text()
            .await
            .expect("metrics");
        text.lines()
            .filter(|l| l.starts_with(metric))
            .filter_map(|l| l.split_whitespace().last()?.parse::<f64>().ok())
            .sum()
    }

    pub fn builder() -> TestAppBuilder {
        TestAppBuilder::new()
    }

    /// SQLite, no Redis, a fresh mock Ollama, master key [`MASTER_KEY`].
    pub async fn spawn() -> TestApp {
        Self::builder().spawn().await
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// A request builder with the bearer set (if any).
    pub fn request(
        &self,
        method: reqwest::Method,
        path: &str,
        bearer: Option<&str>,
    ) -> reqwest::RequestBuilder {
        let rb = self.client.request(method, self.url(path));
        match bearer {
            Some(token) => rb.bearer_auth(token),
            None => rb,
        }
    }

    pub async fn get(&self, path: &str, bearer: Option<&str>) -> reqwest::Response {
        self.request(reqwest::Method::GET, path, bearer)
            .send()
            .await
            .unwrap_or_else(|e| panic!("GET {path}: {e}"))
    }

    pub async fn post_json(
        &self,
        path: &str,
        bearer: Option<&str>,
        body: &Value,
    ) -> reqwest::Response {
        self.request(reqwest::Method::POST, path, bearer)
            .json(body)
            .send()
            .await
            .unwrap_or_else(|e| panic!("POST {path}: {e}"))
    }

    /// POST with a raw body (sent as `application/json`).
    pub async fn post_raw(
        &self,
        path: &str,
        bearer: Option<&str>,
        body: impl Into<reqwest::Body>,
    ) -> reqwest::Response {
        self.request(reqwest::Method::POST, path, bearer)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(body)
            .send()
            .await
            .unwrap_or_else(|e| panic!("POST {path}: {e}"))
    }

    pub async fn admin_get(&self, path: &str) -> reqwest::Response {
        self.get(path, Some(&self.master_key)).await
    }

    pub async fn admin_post(&self, path: &str, body: &Value) -> reqwest::Response {
        self.post_json(path, Some(&self.master_key), body).await
    }

    /// A virtual key written straight to the store (bypassing the management API):
    /// returns the plaintext `sk-…` and the stored record.
    pub async fn create_key(&self, fields: KeyFields) -> (String, VirtualKey) {
        use tollgate::auth::secrets;
        let plain = secrets::mint_key();
        let key = self
            .app
            .store
            .insert_key(
                &uuid::Uuid::new_v4().to_string(),
                &secrets::hash_secret(&plain),
                &secrets::display_name(&plain),
                &fields,
                None,
                &audit(),
            )
            .await
            .expect("insert a key");
        (plain, key)
    }

    /// A team written straight to the store.
    pub async fn create_team(&self, team_id: &str, fields: TeamFields) -> Team {
        self.app
            .store
            .insert_team(team_id, &fields, &audit())
            .await
            .expect("insert a team")
    }

    /// Asks the server to stop accepting and drain (like SIGTERM); returns at once.
    pub fn begin_shutdown(&mut self) {
        if let Some(tx) = self.shutdown_tx.take() {
            let _ = tx.send(());
        }
    }

    /// Graceful shutdown: stop accepting, drain in-flight requests (up to
    /// `server.shutdown_grace_s`), wait for the server task, then `App::close`.
    pub async fn shutdown(mut self) {
        self.begin_shutdown();
        if let Some(server) = self.server.take() {
            server
                .await
                .expect("the server task panicked")
                .expect("the server failed");
        }
        self.app.close().await;
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        // Without an explicit shutdown (e.g. a failing test) the server stops with the
        // test's runtime; ask it to stop now so it releases the database first.
        self.begin_shutdown();
    }
}

/// Generates one test per database backend from one body:
///
/// ```ignore
/// backend_tests! {
///     /// Doc comments and attributes go on both tests.
///     async fn keys_round_trip(app) { /* app: &TestApp */ }
///     async fn with_redis(app) using (|b| b.redis()) { ... }
/// }
/// ```
///
/// expands to a module `keys_round_trip` with tests `sqlite` and `postgres` (the latter
/// skipped with a printed reason when `TEST_DATABASE_URL` is unset).
macro_rules! backend_tests {
    ($(
        $(#[$meta:meta])*
        async fn $name:ident($app:ident) $(using (|$b:ident| $custom:expr))? $body:block
    )*) => {$(
        $(#[$meta])*
        mod $name {
            #[allow(unused_imports)]
            use super::*;

            async fn run($app: &$crate::support::TestApp) $body

            async fn on(backend: $crate::support::Backend) {
                let builder = $crate::support::TestApp::builder().backend(backend);
                $(let builder = { let $b = builder; $custom };)?
                let Some(app) = builder.try_spawn().await else { return };
                run(&app).await;
                app.shutdown().await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sqlite() {
                on($crate::support::Backend::Sqlite).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn postgres() {
                on($crate::support::Backend::Postgres).await;
            }
        }
    )*};
}

/// Runs `f` once per backend, one after the other, with an app on that backend (the
/// PostgreSQL run is skipped with a printed reason when `TEST_DATABASE_URL` is unset).
/// Prefer [`backend_tests!`], which makes two tests that run in parallel.
pub async fn each_backend<F, Fut>(f: F)
where
    F: Fn(TestApp) -> Fut,
    Fut: std::future::Future<Output = TestApp>,
{
    for backend in Backend::ALL {
        if let Some(app) = TestApp::builder().backend(backend).try_spawn().await {
            f(app).await.shutdown().await;
        }
    }
}

// ------------------------------------------------------------------ assertions

/// A `/api/chat` body.
pub fn chat(model: &str) -> Value {
    serde_json::json!({
        "model": model,
        "messages": [{"role": "user", "content": "hello"}],
    })
}

/// The `X-Request-ID` header of a response.
pub fn request_id(resp: &reqwest::Response) -> String {
    resp.headers()
        .get("x-request-id")
        .unwrap_or_else(|| panic!("no X-Request-ID on a {} response", resp.status()))
        .to_str()
        .expect("X-Request-ID is ASCII")
        .to_string()
}

/// An error response, checked by [`assert_error`].
#[derive(Debug, Clone)]
pub struct ErrorBody {
    pub status: StatusCode,
    /// The body as sent.
    pub raw: String,
    pub json: Value,
    pub code: String,
    pub message: String,
    pub request_id: String,
}

/// Fails when `text` mentions an internal (see [`INTERNALS`]).
pub fn assert_no_internals(text: &str) {
    let lower = text.to_ascii_lowercase();
    for word in INTERNALS {
        assert!(
            !lower.contains(word),
            "a response body mentions an internal ({word:?}): {text}"
        );
    }
}

/// Checks an error response: `status`, the envelope `{"error":{"code","message",
/// "request_id"}}` and nothing else, `code`, `request_id` equal to `X-Request-ID`, JSON
/// content type, and no internals in the body.
pub async fn assert_error(resp: reqwest::Response, status: u16, code: &str) -> ErrorBody {
    let got = resp.status();
    let header_id = request_id(&resp);
    let content_type = resp
        .headers()
        .get(reqwest::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    let raw = resp.text().await.expect("error body");
    assert_eq!(got.as_u16(), status, "unexpected status; body: {raw}");
    assert!(
        content_type.starts_with("application/json"),
        "error content type is {content_type:?}; body: {raw}"
    );
    let json: Value = serde_json::from_str(&raw)
        .unwrap_or_else(|e| panic!("error body is not JSON ({e}): {raw}"));
    let outer = json.as_object().expect("error body is an object");
    assert_eq!(
        outer.keys().collect::<Vec<_>>(),
        ["error"],
        "top level must be exactly `error`: {raw}"
    );
    let inner = outer["error"].as_object().expect("`error` is an object");
    let mut keys: Vec<&str> = inner.keys().map(String::as_str).collect();
    keys.sort_unstable();
    assert_eq!(
        keys,
        ["code", "message", "request_id"],
        "`error` must have exactly code, message, request_id: {raw}"
    );
    let field = |k: &str| {
        inner[k]
            .as_str()
            .unwrap_or_else(|| panic!("`error.{k}` is not a string: {raw}"))
            .to_string()
    };
    let (got_code, message, body_id) = (field("code"), field("message"), field("request_id"));
    assert_eq!(got_code, code, "unexpected error code: {raw}");
    assert!(!message.is_empty(), "empty error message: {raw}");
    assert_eq!(
        body_id, header_id,
        "request_id must equal X-Request-ID: {raw}"
    );
    assert_no_internals(&raw);
    ErrorBody {
        status: got,
        raw,
        json,
        code: got_code,
        message,
        request_id: body_id,
    }
}

/// Reads a streamed body to its end, chunk by chunk.
pub async fn read_to_end(mut resp: reqwest::Response) -> Result<Vec<u8>, reqwest::Error> {
    let mut out = Vec::new();
    while let Some(chunk) = resp.chunk().await? {
        out.extend_from_slice(&chunk);
    }
    Ok(out)
}

/// Parses an NDJSON body into its frames.
pub fn ndjson(bytes: &[u8]) -> Vec<Value> {
    std::str::from_utf8(bytes)
        .expect("NDJSON is UTF-8")
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("bad NDJSON line ({e}): {l}")))
        .collect()
}
