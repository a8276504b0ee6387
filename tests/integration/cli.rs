//! The `tollgate` binary (SPEC §2, §3): configuration errors name the key and exit
//! non-zero, `migrate` is idempotent, and SIGTERM lets a slow stream finish.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::Duration;

use serde_json::{Value, json};
use testkit::ollama::MockOllama;

use super::foundation::wait_until_refused;
use super::support::*;

const BIN: &str = env!("CARGO_BIN_EXE_tollgate");

/// The binary with a clean environment (no `TOLLGATE_*` leaking in from the caller).
fn tollgate(cwd: &Path) -> Command {
    let mut cmd = Command::new(BIN);
    cmd.env_clear()
        .current_dir(cwd)
        .env("RUST_LOG", "info")
        .stdin(Stdio::null());
    if let Ok(path) = std::env::var("PATH") {
        cmd.env("PATH", path);
    }
    cmd
}

fn write_config(dir: &Path, text: &str) -> PathBuf {
    let path = dir.join("tollgate.yaml");
    std::fs::write(&path, text).expect("write config");
    path
}

/// Runs `tollgate <sub> --config <file>` with `text` as the file; returns its output.
fn run_with_config(sub: &str, text: &str, env: &[(&str, &str)]) -> Output {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = write_config(dir.path(), text);
    let mut cmd = tollgate(dir.path());
    cmd.arg(sub).arg("--config").arg(&config);
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().expect("run tollgate")
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Start-up refuses `text`: non-zero exit, and stderr names `needle`.
fn assert_refused(sub: &str, text: &str, env: &[(&str, &str)], needle: &str) {
    let out = run_with_config(sub, text, env);
    let err = stderr(&out);
    assert!(
        !out.status.success(),
        "`tollgate {sub}` accepted {text:?}; stderr: {err}"
    );
    assert!(
        err.contains(needle),
        "stderr does not name {needle:?}: {err}"
    );
}

#[test]
fn a_top_level_typo_is_named() {
    for sub in ["serve", "migrate"] {
        assert_refused(sub, "sever:\n  listen: 127.0.0.1:4000\n", &[], "sever");
    }
}

#[test]
fn a_nested_typo_is_named_with_its_path() {
    assert_refused("serve", "database:\n  ulr: x\n", &[], "database.ulr");
    assert_refused("migrate", "database:\n  ulr: x\n", &[], "database.ulr");
    assert_refused(
        "serve",
        "jwt:\n  auto_register:\n    rpm_limt: 3\n",
        &[],
        "jwt.auto_register.rpm_limt",
    );
}

#[test]
fn a_wrong_type_or_value_is_named() {
    assert_refused(
        "serve",
        "server:\n  shutdown_grace_s: soon\n",
        &[],
        "server.shutdown_grace_s",
    );
    assert_refused(
        "serve",
        "server:\n  listen: nowhere\n",
        &[],
        "server.listen",
    );
    assert_refused(
        "serve",
        "redis:\n  failure_mode: sometimes\n",
        &[],
        "redis.failure_mode",
    );
}

#[test]
fn an_unset_variable_is_named() {
    assert_refused(
        "serve",
        "server:\n  master_key: \"${TOLLGATE_TEST_SURELY_UNSET}\"\n",
        &[],
        "TOLLGATE_TEST_SURELY_UNSET",
    );
}

#[test]
fn a_short_master_key_is_refused() {
    assert_refused(
        "serve",
        "server:\n  master_key: short-key\n",
        &[],
        "server.master_key",
    );
    // Through a variable too.
    assert_refused(
        "serve",
        "server:\n  master_key: \"${MK}\"\n",
        &[("MK", "0123456789abcde")],
        "server.master_key",
    );
}

#[test]
fn an_override_variable_typo_is_named() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = tollgate(dir.path())
        .arg("migrate")
        .env("TOLLGATE__DATABASE__ULR", "x")
        .output()
        .expect("run tollgate");
    assert!(!out.status.success());
    assert!(stderr(&out).contains("database.ulr"), "{}", stderr(&out));
}

#[test]
fn a_missing_config_file_is_named() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = tollgate(dir.path())
        .args(["serve", "--config", "does-not-exist.yaml"])
        .output()
        .expect("run tollgate");
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("does-not-exist.yaml"),
        "{}",
        stderr(&out)
    );
}

/// An unreachable Redis is a clear start-up error, not a retry loop.
#[test]
fn an_unreachable_redis_stops_start_up() {
    let port = free_port();
    let text = format!(
        "redis:\n  url: \"redis://127.0.0.1:{port}\"\nserver:\n  listen: \"127.0.0.1:{}\"\n",
        free_port()
    );
    let out = run_with_config("serve", &text, &[]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("redis.url"), "{}", stderr(&out));
}

// ------------------------------------------------------------------ migrate

fn migrate(dir: &Path, text: &str) {
    let config = write_config(dir, text);
    let out = tollgate(dir)
        .arg("migrate")
        .arg("--config")
        .arg(&config)
        .output()
        .expect("run tollgate migrate");
    assert!(out.status.success(), "migrate failed: {}", stderr(&out));
}

async fn migrate_twice_on(backend: Backend) {
    let Some(db) = TestDb::create(backend).await else {
        return;
    };
    let workdir = tempfile::tempdir().expect("tempdir");
    let text = format!("database:\n  url: \"{}\"\n", db.url());
    migrate(workdir.path(), &text);
    let tables = db.tables().await;
    for t in [
        "audit_logs",
        "jwt_key_mappings",
        "teams",
        "usage_logs",
        "virtual_keys",
        "seaql_migrations",
    ] {
        assert!(tables.iter().any(|x| x == t), "missing {t}: {tables:?}");
    }
    assert_eq!(
        db.count("seaql_migrations").await,
        crate::support::migrations()
    );
    migrate(workdir.path(), &text);
    assert_eq!(
        db.count("seaql_migrations").await,
        crate::support::migrations(),
        "the second run is a no-op"
    );
    assert_eq!(db.tables().await, tables);
}

#[tokio::test]
async fn migrate_twice_is_a_no_op_on_sqlite() {
    migrate_twice_on(Backend::Sqlite).await;
}

#[tokio::test]
async fn migrate_twice_is_a_no_op_on_postgres() {
    migrate_twice_on(Backend::Postgres).await;
}

// ------------------------------------------------------------------ serve

/// A port that was free a moment ago (bound to :0, then released).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

/// A `tollgate serve` child process; killed on drop if still running.
struct Server {
    child: Option<Child>,
    addr: SocketAddr,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl Server {
    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// Starts `tollgate serve` in a fresh working directory; `config` is the file's text
    /// (`None`: no file at all). Waits until `/healthz` answers.
    async fn start(config: Option<&str>, env: &[(&str, &str)], addr: SocketAddr) -> Server {
        let dir = tempfile::tempdir().expect("tempdir");
        let log = dir.path().join("stderr.log");
        let mut cmd = tollgate(dir.path());
        cmd.arg("serve");
        if let Some(text) = config {
            cmd.arg("--config").arg(write_config(dir.path(), text));
        }
        for (k, v) in env {
            cmd.env(k, v);
        }
        let child = cmd
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("log file"))
            .spawn()
            .expect("spawn tollgate serve");
        let mut server = Server {
            child: Some(child),
            addr,
            log,
            _dir: dir,
        };
        server.wait_ready().await;
        server
    }

    /// Process start-up has no other signal: retry `/healthz` (bounded) while the
    /// connection is refused, failing early if the process exits.
    async fn wait_ready(&mut self) {
        let client = client();
        for _ in 0..600 {
            let child = self.child.as_mut().expect("running");
            if let Some(status) = child.try_wait().expect("try_wait") {
                panic!("tollgate serve exited early ({status}): {}", self.log());
            }
            if let Ok(resp) = client.get(self.url("/healthz")).send().await {
                assert_eq!(resp.status(), 200, "healthz: {}", self.log());
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("tollgate serve did not come up: {}", self.log());
    }

    fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(self.child.as_ref().expect("running").id().to_string())
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -{signal} failed");
    }

    /// Waits for the process to exit (off the async threads).
    async fn wait(mut self) -> (ExitStatus, String) {
        let mut child = self.child.take().expect("running");
        let status = tokio::task::spawn_blocking(move || child.wait())
            .await
            .expect("wait task")
            .expect("wait for tollgate");
        (status, self.log())
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(child) = self.child.as_mut() {
            drop(child.kill());
            drop(child.wait());
        }
    }
}

fn serve_config(addr: SocketAddr, ollama: &MockOllama, db_dir: &Path) -> String {
    format!(
        "server:\n  listen: \"{addr}\"\n  master_key: \"${{MK}}\"\n  shutdown_grace_s: 30\n\
         database:\n  url: \"sqlite://{}/serve.db?mode=rwc\"\n\
         upstream:\n  url: \"{}\"\n",
        db_dir.display(),
        ollama.url()
    )
}

/// SIGTERM while a stream is held upstream: the server stops accepting, the stream runs
/// to its final `done` frame once released, and the process exits 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_lets_a_slow_stream_finish_and_exits_zero() {
    let ollama = MockOllama::start().await;
    let db_dir = tempfile::tempdir().expect("tempdir");
    let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().expect("addr");
    let config = serve_config(addr, &ollama, db_dir.path());
    let server = Server::start(Some(&config), &[("MK", MASTER_KEY)], addr).await;

    let gate = ollama.hold_streams();
    let resp = client()
        .post(server.url("/api/chat"))
        .bearer_auth(MASTER_KEY)
        .json(&chat("llama3.1:8b"))
        .send()
        .await
        .expect("POST /api/chat");
    assert_eq!(resp.status(), 200, "{}", server.log());
    ollama.wait_for_requests(1).await;
    let reader = tokio::spawn(read_to_end(resp));

    server.signal("TERM");
    // The listener closes when shutdown starts: that is the signal that SIGTERM landed.
    wait_until_refused(addr).await;
    assert!(!reader.is_finished(), "the stream must still be held");
    gate.release();

    let body = reader
        .await
        .expect("reader task")
        .unwrap_or_else(|e| panic!("the stream was cut ({e}): {}", server.log()));
    let frames = ndjson(&body);
    let last = frames.last().expect("frames");
    assert_eq!(last["done"], json!(true), "final frame: {last}");
    assert_eq!(last["eval_count"], json!(ollama.completion_frames()));
    assert_eq!(frames.len(), ollama.completion_frames() + 1);

    let (status, log) = server.wait().await;
    assert!(status.success(), "exit status {status}; log: {log}");
    assert!(!log.contains(MASTER_KEY), "the master key appears in logs");
}

/// SIGINT is a graceful stop too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigint_stops_cleanly() {
    let ollama = MockOllama::start().await;
    let db_dir = tempfile::tempdir().expect("tempdir");
    let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().expect("addr");
    let config = serve_config(addr, &ollama, db_dir.path());
    let server = Server::start(Some(&config), &[("MK", MASTER_KEY)], addr).await;
    server.signal("INT");
    let (status, log) = server.wait().await;
    assert!(status.success(), "exit status {status}; log: {log}");
}

/// No configuration file at all: the defaults serve (SQLite `tollgate.db` in the working
/// directory, created and migrated), here on a port chosen by an override variable.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn defaults_serve_without_a_config_file() {
    let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().expect("addr");
    let listen = addr.to_string();
    let server = Server::start(None, &[("TOLLGATE__SERVER__LISTEN", &listen)], addr).await;
    let resp = client()
        .get(server.url("/readyz"))
        .send()
        .await
        .expect("readyz");
    assert_eq!(resp.status(), 200, "{}", server.log());
    let db_file = server._dir.path().join("tollgate.db");
    assert!(
        db_file.exists(),
        "tollgate.db created in the working directory"
    );
    // Without a master key the management API is for admin JWTs only: a warning says so.
    assert!(server.log().contains("master_key"), "{}", server.log());
    server.signal("TERM");
    let (status, log) = server.wait().await;
    assert!(status.success(), "exit status {status}; log: {log}");
}

/// A virtual key is shown once, in the `/key/generate` response, and never written to the
/// log — not on success, not when refused, not when regenerated (SPEC §6.1: at most a
/// token's first 8 characters may be logged).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn virtual_keys_never_appear_in_logs() {
    let ollama = MockOllama::start().await;
    let db_dir = tempfile::tempdir().expect("tempdir");
    let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().expect("addr");
    let config = format!(
        "{}log:\n  level: debug\n",
        serve_config(addr, &ollama, db_dir.path())
    );
    let server = Server::start(Some(&config), &[("MK", MASTER_KEY)], addr).await;
    let http = client();
    let generated: Value = http
        .post(server.url("/key/generate"))
        .bearer_auth(MASTER_KEY)
        .json(&json!({"models": ["llama3.1:8b"]}))
        .send()
        .await
        .expect("generate")
        .json()
        .await
        .expect("json");
    let key = generated["key"].as_str().expect("key").to_string();
    let ok = http
        .post(server.url("/api/chat"))
        .bearer_auth(&key)
        .json(&json!({"model": "llama3.1:8b", "stream": false, "messages": []}))
        .send()
        .await
        .expect("chat");
    assert_eq!(ok.status(), 200);
    let refused = http
        .post(server.url("/api/chat"))
        .bearer_auth(&key)
        .json(&json!({"model": "qwen2.5:7b", "messages": []}))
        .send()
        .await
        .expect("chat");
    assert_eq!(refused.status(), 403);
    let regenerated: Value = http
        .post(server.url("/key/regenerate"))
        .bearer_auth(MASTER_KEY)
        .json(&json!({"key": key}))
        .send()
        .await
        .expect("regenerate")
        .json()
        .await
        .expect("json");
    let new_key = regenerated["key"].as_str().expect("new key").to_string();
    let unknown = http
        .post(server.url("/api/chat"))
        .bearer_auth(&key)
        .json(&json!({"model": "llama3.1:8b", "messages": []}))
        .send()
        .await
        .expect("chat");
    assert_eq!(unknown.status(), 401);

    server.signal("TERM");
    let (status, log) = server.wait().await;
    assert!(status.success(), "exit status {status}; log: {log}");
    assert!(
        log.contains("proxied"),
        "the request log line is there: {log}"
    );
    for secret in [&key, &new_key] {
        // Nothing beyond the first 8 characters of a key may reach the log.
        assert!(
            !log.contains(&secret[..12]),
            "a key leaked into the log: {log}"
        );
    }
    assert!(!log.contains(MASTER_KEY));
}
