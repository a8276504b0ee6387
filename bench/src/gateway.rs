//! The things under test: tollgate in process (its own tokio runtime), tollgate as a
//! child process (this same binary re-executed as `serve-tollgate`, for memory figures),
//! and nginx as a plain `proxy_pass` reference.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::Request;
use tempfile::TempDir;
use tokio::runtime::Runtime;
use tollgate::config::{Config, Secret};

use crate::system::{Placement, Rss, pin_current_thread, rss_of};

/// The admin bearer of every tollgate the bench starts.
pub const MASTER_KEY: &str = "bench-master-key-0123456789abcdef";

/// A multi-thread runtime whose threads (workers and blocking pool) stay on `cpus`.
pub fn runtime(name: &str, cpus: &[usize], workers: usize) -> anyhow::Result<Runtime> {
    let pin = cpus.to_vec();
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers.max(1))
        .thread_name(name)
        .on_thread_start(move || {
            pin_current_thread(&pin);
        })
        .enable_all()
        .build()
        .with_context(|| format!("cannot build the {name} runtime"))
}

/// The runtime a gateway under test runs on: `tollgate serve`'s choice
/// ([`tollgate::server::runtime`]) made on a thread pinned to `cpus` — on one CPU a
/// single-threaded runtime, which that thread drives until [`GatewayRuntime::stop`].
/// Work is handed to it through [`GatewayRuntime::block_on`] and `tokio::spawn` inside.
pub struct GatewayRuntime {
    handle: tokio::runtime::Handle,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    driver: Option<std::thread::JoinHandle<()>>,
}

impl GatewayRuntime {
    pub fn start(name: &str, cpus: &[usize]) -> anyhow::Result<Self> {
        let pin = cpus.to_vec();
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let driver = std::thread::Builder::new()
            .name(name.to_string())
            .spawn(move || {
                // Threads the runtime starts inherit this thread's mask.
                pin_current_thread(&pin);
                let runtime = match tollgate::server::runtime() {
                    Ok(runtime) => runtime,
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                        return;
                    }
                };
                let _ = ready_tx.send(Ok(runtime.handle().clone()));
                runtime.block_on(async move {
                    let _ = stop_rx.await;
                });
                runtime.shutdown_timeout(Duration::from_secs(1));
            })?;
        let handle = ready_rx
            .recv()
            .context("the runtime thread ended")?
            .with_context(|| format!("cannot build the {name} runtime"))?;
        Ok(Self {
            handle,
            stop: Some(stop_tx),
            driver: Some(driver),
        })
    }

    /// Runs `future` to completion on this thread, its tasks and I/O on the runtime.
    pub fn block_on<F: std::future::Future>(&self, future: F) -> F::Output {
        self.handle.block_on(future)
    }
}

impl Drop for GatewayRuntime {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(driver) = self.driver.take() {
            let _ = driver.join();
        }
    }
}

/// tollgate's defaults, adjusted: loopback on a free port, SQLite in `dir`, the bench's
/// master key, `upstream` as Ollama, a short shutdown grace.
pub fn base_config(dir: &Path, upstream: &str) -> Config {
    let mut config = Config::default();
    config.server.listen = "127.0.0.1:0".into();
    config.server.master_key = Some(Secret(MASTER_KEY.into()));
    config.server.shutdown_grace_s = 2;
    config.database.url = Secret(format!(
        "sqlite://{}?mode=rwc",
        dir.join("tollgate.db").display()
    ));
    config.upstream.url = upstream.to_string();
    // The mock answers any number of requests at once, as a server started with a large
    // OLLAMA_NUM_PARALLEL would. Left at the default (4 per model), tollgate would queue
    // the bench's connections in front of it (SPEC §12) and the scenarios would measure
    // that queue instead of the hop.
    config.upstream.parallel = 1_000_000;
    config.upstream.max_loaded_models = 1_000;
    config
}

/// Mints a virtual key through `POST /key/generate` with the master key.
pub async fn create_key(base_url: &str, body: serde_json::Value) -> anyhow::Result<String> {
    let client = crate::load::client();
    let req = Request::post(format!("{base_url}/key/generate"))
        .header("content-type", "application/json")
        .header("authorization", format!("Bearer {MASTER_KEY}"))
        .body(Full::new(Bytes::from(serde_json::to_vec(&body)?)))?;
    let resp = client.request(req).await.context("POST /key/generate")?;
    let status = resp.status();
    let bytes = resp.into_body().collect().await?.to_bytes();
    if !status.is_success() {
        bail!(
            "POST /key/generate answered {status}: {}",
            String::from_utf8_lossy(&bytes)
        );
    }
    let v: serde_json::Value = serde_json::from_slice(&bytes)?;
    v["key"]
        .as_str()
        .map(str::to_owned)
        .context("POST /key/generate answered without a key")
}

/// The key every scenario uses: RPM and TPM limits set (so the limiter runs on the hot
/// path) but far above anything the bench can send.
pub fn limited_key_request() -> serde_json::Value {
    serde_json::json!({
        "key_alias": "bench",
        "rpm_limit": 1_000_000_000u64,
        "tpm_limit": 1_000_000_000_000u64,
    })
}

// ------------------------------------------------------------------ in process

/// tollgate served from the library on its own runtime, pinned to the gateway CPUs with
/// one worker per CPU (what `tollgate serve` does on a machine of that size).
pub struct InProcessTollgate {
    pub url: String,
    runtime: GatewayRuntime,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    server: Option<tokio::task::JoinHandle<std::io::Result<()>>>,
    app: Arc<tollgate::app::App>,
    _dir: TempDir,
}

impl InProcessTollgate {
    pub fn start(
        placement: &Placement,
        upstream: &str,
        adjust: impl FnOnce(&mut Config),
    ) -> anyhow::Result<Self> {
        let dir = tempfile::Builder::new()
            .prefix("tollgate-bench-")
            .tempdir()?;
        let mut config = base_config(dir.path(), upstream);
        adjust(&mut config);
        let runtime = GatewayRuntime::start("tollgate", &placement.gateway)?;
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let (app, url, server) = runtime.block_on(async move {
            let app = tollgate::app::App::build(config).await?;
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
            let url = format!("http://{}", listener.local_addr()?);
            let router = tollgate::http::router::build(app.clone());
            let server = tokio::spawn(tollgate::server::serve(
                listener,
                app.clone(),
                router,
                async move {
                    let _ = stop_rx.await;
                },
            ));
            anyhow::Ok((app, url, server))
        })?;
        Ok(Self {
            url,
            runtime,
            stop: Some(stop_tx),
            server: Some(server),
            app,
            _dir: dir,
        })
    }

    /// Graceful stop (drain, flush usage), then the runtime goes.
    pub fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let server = self.server.take();
        let app = self.app.clone();
        self.runtime.block_on(async move {
            if let Some(server) = server {
                let _ = tokio::time::timeout(Duration::from_secs(10), server).await;
            }
            let _ = tokio::time::timeout(Duration::from_secs(10), app.close()).await;
        });
    }
}

// ------------------------------------------------------------------ child process

/// tollgate in a child process: this binary re-executed with the hidden `serve-tollgate`
/// subcommand, which runs exactly what `tollgate serve` runs. Its memory is its own.
pub struct ChildTollgate {
    pub url: String,
    child: Child,
    stdin: Option<ChildStdin>,
    _dir: TempDir,
}

impl ChildTollgate {
    pub fn start(placement: &Placement, upstream: &str) -> anyhow::Result<Self> {
        let dir = tempfile::Builder::new()
            .prefix("tollgate-bench-child-")
            .tempdir()?;
        let config = base_config(dir.path(), upstream);
        // JSON is YAML: tollgate's own loader reads it, validation included.
        let config_path = dir.path().join("tollgate.yaml");
        std::fs::write(&config_path, serde_json::to_vec_pretty(&config)?)?;
        let log = std::fs::File::create(dir.path().join("tollgate.log"))?;
        let exe = std::env::current_exe().context("cannot find the bench executable")?;
        let mut command = Command::new(exe);
        command
            .arg("serve-tollgate")
            .arg("--config")
            .arg(&config_path)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log));
        let mut child = spawn_on(&mut command, placement)?;
        let stdout = child.stdout.take().context("child stdout")?;
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            let _ = BufReader::new(stdout).read_line(&mut line);
            let _ = tx.send(line);
        });
        let line = rx.recv_timeout(Duration::from_secs(60)).unwrap_or_default();
        let Some(url) = line.trim().strip_prefix("listening ").map(str::to_owned) else {
            let _ = child.kill();
            let _ = child.wait();
            let log = std::fs::read_to_string(dir.path().join("tollgate.log")).unwrap_or_default();
            bail!("tollgate child did not start: {}", log.trim());
        };
        let stdin = child.stdin.take();
        Ok(Self {
            url,
            child,
            stdin,
            _dir: dir,
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn rss(&self) -> Option<Rss> {
        rss_of(self.pid())
    }

    /// Closing its stdin is the child's shutdown signal; killed if it lingers.
    pub fn stop(mut self) {
        drop(self.stdin.take());
        wait_or_kill(&mut self.child, Duration::from_secs(15));
    }
}

impl Drop for ChildTollgate {
    fn drop(&mut self) {
        if self.stdin.is_some() {
            drop(self.stdin.take());
            wait_or_kill(&mut self.child, Duration::from_secs(5));
        }
    }
}

/// Spawns with the gateway CPU mask (a child inherits its parent thread's affinity),
/// then puts the calling thread back on the generator CPUs.
fn spawn_on(command: &mut Command, placement: &Placement) -> anyhow::Result<Child> {
    if placement.pinned {
        pin_current_thread(&placement.gateway);
    }
    let child = command.spawn();
    if placement.pinned {
        pin_current_thread(&placement.generator);
    }
    Ok(child?)
}

fn wait_or_kill(child: &mut Child, grace: Duration) {
    let deadline = Instant::now() + grace;
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// The hidden `serve-tollgate --config FILE` subcommand: `tollgate serve`, plus the bound
/// address on stdout and "stdin closed" as a shutdown signal.
pub fn serve_tollgate(config_path: &Path) -> anyhow::Result<()> {
    let config = tollgate::config::load(Some(config_path))?;
    let _log_guard = tollgate::telemetry::init_logging(&config.log);
    // `tollgate serve`'s runtime: its choice reads the (inherited) affinity mask.
    let runtime = tollgate::server::runtime()?;
    runtime.block_on(async move {
        let listen = config.server.listen.clone();
        let app = tollgate::app::App::build(config).await?;
        let listener = tokio::net::TcpListener::bind(&listen).await?;
        let mut out = std::io::stdout();
        writeln!(out, "listening http://{}", listener.local_addr()?)?;
        out.flush()?;
        let router = tollgate::http::router::build(app.clone());
        let shutdown = async {
            tokio::select! {
                () = tollgate::server::shutdown_signal() => {}
                () = stdin_closed() => {}
            }
        };
        tollgate::server::serve(listener, app.clone(), router, shutdown).await?;
        app.close().await;
        anyhow::Ok(())
    })
}

async fn stdin_closed() {
    use tokio::io::AsyncReadExt;
    let mut stdin = tokio::io::stdin();
    let mut buf = [0u8; 64];
    while let Ok(n) = stdin.read(&mut buf).await {
        if n == 0 {
            break;
        }
    }
}

// ------------------------------------------------------------------ nginx

/// A plain nginx `proxy_pass` (one worker, keep-alive upstream), for the "plain proxy"
/// throughput reference.
pub struct Nginx {
    pub url: String,
    pub version: String,
    child: Child,
    _dir: TempDir,
}

/// `nginx` on `PATH`, else Debian's `/usr/sbin/nginx` (not on a non-root `PATH`).
pub fn find_nginx() -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/usr/local/sbin")])
        .map(|d| d.join("nginx"))
        .find(|p| p.is_file())
}

/// The generated configuration: one worker, keep-alive to the upstream and to clients,
/// an access log (as tollgate logs every request), nothing else.
pub fn nginx_conf(dir: &Path, listen_port: u16, upstream_port: u16) -> String {
    let d = dir.display();
    format!(
        r#"worker_processes 1;
error_log {d}/error.log warn;
pid {d}/nginx.pid;
events {{ worker_connections 8192; }}
http {{
    access_log {d}/access.log;
    client_body_temp_path {d}/client_body;
    proxy_temp_path {d}/proxy;
    fastcgi_temp_path {d}/fastcgi;
    uwsgi_temp_path {d}/uwsgi;
    scgi_temp_path {d}/scgi;
    keepalive_requests 1000000;
    upstream mock {{
        server 127.0.0.1:{upstream_port};
        keepalive 64;
        keepalive_requests 1000000;
    }}
    server {{
        listen 127.0.0.1:{listen_port};
        location / {{
            proxy_pass http://mock;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }}
    }}
}}
"#
    )
}

/// A non-streaming `/api/chat` answer as Ollama sends it, for the stub upstream.
pub const STUB_CHAT_BODY: &str = r#"{"model":"llama3.1:8b","created_at":"2026-12-01T00:00:00Z","message":{"role":"assistant","content":"Hello! How can I help you today?"},"done_reason":"stop","done":true,"total_duration":1000000,"load_duration":10000,"prompt_eval_count":12,"prompt_eval_duration":100000,"eval_count":9,"eval_duration":800000}"#;

/// An nginx that answers every request itself with [`STUB_CHAT_BODY`] (`return 200`):
/// an upstream as fast as nginx's static answers, so the hop is measured where the
/// upstream is not the bottleneck. No access log: it stands in for the upstream, not a
/// gateway.
pub fn stub_conf(dir: &Path, listen_port: u16) -> String {
    let d = dir.display();
    let body = STUB_CHAT_BODY.replace('\'', "\\'");
    format!(
        r#"worker_processes 1;
error_log {d}/error.log warn;
pid {d}/nginx.pid;
events {{ worker_connections 8192; }}
http {{
    access_log off;
    client_body_temp_path {d}/client_body;
    proxy_temp_path {d}/proxy;
    fastcgi_temp_path {d}/fastcgi;
    uwsgi_temp_path {d}/uwsgi;
    scgi_temp_path {d}/scgi;
    keepalive_requests 1000000;
    server {{
        listen 127.0.0.1:{listen_port};
        location / {{
            default_type application/json;
            return 200 '{body}';
        }}
    }}
}}
"#
    )
}

impl Nginx {
    /// A plain `proxy_pass` in front of `upstream_port`, on the gateway CPUs.
    pub fn start(nginx: &Path, placement: &Placement, upstream_port: u16) -> anyhow::Result<Self> {
        Self::start_with(nginx, placement, |dir, port| {
            nginx_conf(dir, port, upstream_port)
        })
    }

    /// The stub upstream ([`stub_conf`]), on the generator's CPUs beside the mock.
    pub fn start_stub(nginx: &Path, placement: &Placement) -> anyhow::Result<Self> {
        let beside_mock = Placement {
            gateway: placement.generator.clone(),
            generator: placement.generator.clone(),
            pinned: placement.pinned,
        };
        Self::start_with(nginx, &beside_mock, stub_conf)
    }

    pub fn port(&self) -> u16 {
        self.url
            .rsplit(':')
            .next()
            .and_then(|p| p.parse().ok())
            .unwrap_or(0)
    }

    fn start_with(
        nginx: &Path,
        placement: &Placement,
        conf: impl FnOnce(&Path, u16) -> String,
    ) -> anyhow::Result<Self> {
        let dir = tempfile::Builder::new()
            .prefix("tollgate-bench-nginx-")
            .tempdir()?;
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let conf_path = dir.path().join("nginx.conf");
        std::fs::write(&conf_path, conf(dir.path(), port))?;
        let conf = conf_path;
        let version = Command::new(nginx)
            .arg("-v")
            .output()
            .map(|o| String::from_utf8_lossy(&o.stderr).trim().to_string())
            .unwrap_or_default();
        let stderr = std::fs::File::create(dir.path().join("stderr.log"))?;
        let mut command = Command::new(nginx);
        command
            .arg("-p")
            .arg(dir.path())
            .arg("-c")
            .arg(&conf)
            .arg("-g")
            .arg("daemon off;")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(stderr));
        let mut child = spawn_on(&mut command, placement)?;
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                break;
            }
            let exited = matches!(child.try_wait(), Ok(Some(_)));
            if exited || Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                let err = std::fs::read_to_string(dir.path().join("stderr.log"))
                    .unwrap_or_default()
                    + &std::fs::read_to_string(dir.path().join("error.log")).unwrap_or_default();
                bail!("nginx did not start: {}", err.trim());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(Self {
            url: format!("http://127.0.0.1:{port}"),
            version,
            child,
            _dir: dir,
        })
    }

    /// SIGTERM to the master (it stops its worker), SIGKILL if it lingers.
    pub fn stop(mut self) {
        let pid = rustix::process::Pid::from_child(&self.child);
        let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
        wait_or_kill(&mut self.child, Duration::from_secs(10));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_stub_answers_a_chat_body_with_token_counts() {
        let conf = stub_conf(Path::new("/tmp/x"), 8081);
        assert!(conf.contains("listen 127.0.0.1:8081;"));
        assert!(conf.contains("return 200 '{\"model\""));
        let body: serde_json::Value = serde_json::from_str(STUB_CHAT_BODY).expect("JSON");
        assert_eq!(body["done"], true);
        assert_eq!(body["eval_count"], 9);
    }

    #[test]
    fn nginx_conf_is_a_keep_alive_proxy_pass() {
        let conf = nginx_conf(Path::new("/tmp/x"), 8080, 11434);
        assert!(conf.contains("worker_processes 1;"));
        assert!(conf.contains("server 127.0.0.1:11434;"));
        assert!(conf.contains("keepalive 64;"));
        assert!(conf.contains("listen 127.0.0.1:8080;"));
        assert!(conf.contains("proxy_set_header Connection \"\";"));
    }

    #[test]
    fn child_config_is_loadable_by_tollgate() {
        let dir = tempfile::tempdir().expect("tempdir");
        let config = base_config(dir.path(), "http://127.0.0.1:1");
        let path = dir.path().join("tollgate.yaml");
        std::fs::write(&path, serde_json::to_vec_pretty(&config).expect("json")).expect("write");
        let loaded = tollgate::config::load(Some(&path)).expect("tollgate loads the JSON config");
        assert_eq!(loaded.upstream.url, "http://127.0.0.1:1");
        assert_eq!(
            loaded
                .server
                .master_key
                .as_ref()
                .map(|k| k.expose().to_owned()),
            Some(MASTER_KEY.to_owned())
        );
    }
}
