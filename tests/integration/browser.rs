//! The admin console in a real browser (SPEC §10): a gateway on loopback (the real
//! router, a mock Ollama behind a server named `gpu-a`, SQLite), driven in headless
//! Chromium by `node tests/browser/console.mjs` (Playwright, `playwright-core`). The
//! script's checks are named flows (flows/*.mjs); this test passes when every one does.
//!
//! Needs `/usr/bin/chromium`, `node` and `tests/browser/node_modules` (`npm ci` there).
//! Without them the test prints `skipped: …` and passes — unless
//! `TOLLGATE_REQUIRE_BROWSER=1` (CI), where a missing prerequisite fails it.
//! Screenshots go to a temporary directory; with `TOLLGATE_UPDATE_SCREENSHOTS=1` they
//! replace the ones in `docs/` that the README shows.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use testkit::ollama::MockOllama;
use tollgate::config::UpstreamServerConfig;
use tollgate::store::KeyFields;

use crate::support::*;

/// Debian's Chromium; the scripts launch exactly this binary.
const CHROMIUM: &str = "/usr/bin/chromium";
/// playwright-core's oldest Node.js (its `engines`).
const NODE_MAJOR: u32 = 20;
/// `1`: a missing prerequisite fails the test instead of skipping it.
const REQUIRE_VAR: &str = "TOLLGATE_REQUIRE_BROWSER";
/// `1`: write the screenshots to `docs/` (committed) instead of a temporary directory.
const UPDATE_VAR: &str = "TOLLGATE_UPDATE_SCREENSHOTS";
/// The one Ollama server's name, which the live feed must show.
const SERVER: &str = "gpu-a";
const MODEL: &str = "llama3.1:8b";
/// The alias of the key the scripts proxy a request with.
const PROXY_KEY_ALIAS: &str = "feed-probe";
/// The screenshots the flows take (file names in the screenshot directory).
const SCREENSHOTS: &[&str] = &[
    "console-keys.png",
    "console-tab-hover.png",
    "console-live.png",
    "console-audit.png",
];
/// A hung browser fails the test rather than stalling the run; each step inside has a
/// much shorter limit of its own (`STEP_TIMEOUT_MS` in lib.mjs).
const RUN_LIMIT: Duration = Duration::from_secs(600);

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn browser_dir() -> PathBuf {
    repo().join("tests/browser")
}

fn flag(name: &str) -> bool {
    std::env::var(name).is_ok_and(|v| v.trim() == "1")
}

/// Why the browser tests cannot run here, if they cannot.
fn missing_prerequisite() -> Option<String> {
    if !Path::new(CHROMIUM).is_file() {
        return Some(format!("{CHROMIUM} not found (apt-get install chromium)"));
    }
    let node = std::process::Command::new("node")
        .arg("--version")
        .stdin(Stdio::null())
        .output();
    let version = match node {
        Ok(o) if o.status.success() => String::from_utf8_lossy(&o.stdout).trim().to_string(),
        _ => return Some("node not found (apt-get install nodejs npm)".into()),
    };
    let major = version
        .trim_start_matches('v')
        .split('.')
        .next()
        .and_then(|m| m.parse::<u32>().ok());
    if major.is_none_or(|m| m < NODE_MAJOR) {
        return Some(format!(
            "node {version} is too old (playwright-core needs {NODE_MAJOR}+)"
        ));
    }
    let playwright = browser_dir().join("node_modules/playwright-core/package.json");
    if !playwright.is_file() {
        return Some(format!(
            "{} not found (run `npm ci` in tests/browser)",
            playwright.display()
        ));
    }
    None
}

/// SPEC §10 and issue 14: sign in, keys (plaintext once, limits, block/unblock), rotation
/// with a grace period, teams and mappings, the live feed with its server column, the
/// audit view, a refused credential, readable hovered tabs — each a named check of `tests/browser/console.mjs`, in Chromium.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn console_flows_in_headless_chromium() {
    if let Some(reason) = missing_prerequisite() {
        assert!(
            !flag(REQUIRE_VAR),
            "{REQUIRE_VAR}=1, but the browser tests cannot run: {reason}"
        );
        skip(&format!("browser tests: {reason}"));
        return;
    }

    let ollama = MockOllama::start().await;
    let url = ollama.url();
    let app = TestApp::builder()
        .ollama(ollama)
        .config(move |c| {
            c.upstream.servers = vec![UpstreamServerConfig {
                name: SERVER.into(),
                url,
                parallel: None,
                max_loaded_models: None,
            }];
        })
        .spawn()
        .await;
    let (proxy_key, _) = app
        .create_key(KeyFields {
            key_alias: Some(PROXY_KEY_ALIAS.into()),
            ..KeyFields::default()
        })
        .await;

    let update = flag(UPDATE_VAR);
    let scratch = tempfile::tempdir().expect("a temporary directory");
    let screenshots = if update {
        repo().join("docs")
    } else {
        scratch.path().to_path_buf()
    };
    std::fs::create_dir_all(&screenshots).expect("the screenshot directory");

    let mut node = tokio::process::Command::new("node");
    node.arg("console.mjs")
        .current_dir(browser_dir())
        .env("TOLLGATE_BASE_URL", &app.base)
        .env("TOLLGATE_MASTER_KEY", &app.master_key)
        .env("TOLLGATE_PROXY_KEY", &proxy_key)
        .env("TOLLGATE_PROXY_KEY_ALIAS", PROXY_KEY_ALIAS)
        .env("TOLLGATE_MODEL", MODEL)
        .env("TOLLGATE_SERVER_NAME", SERVER)
        .env("TOLLGATE_SCREENSHOT_DIR", &screenshots)
        .stdin(Stdio::null())
        .kill_on_drop(true);
    let output = tokio::time::timeout(RUN_LIMIT, node.output())
        .await
        .unwrap_or_else(|_| panic!("the browser checks ran longer than {RUN_LIMIT:?}"))
        .expect("node starts");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    println!("{stdout}");
    if !stderr.trim().is_empty() {
        println!("node's stderr:\n{stderr}");
    }
    assert!(
        output.status.success(),
        "browser checks failed ({}):\n{stdout}\n{stderr}",
        output.status
    );
    for name in SCREENSHOTS {
        let shot = screenshots.join(name);
        let size = std::fs::metadata(&shot).map(|m| m.len()).unwrap_or(0);
        assert!(size > 0, "no screenshot {}", shot.display());
    }
    app.shutdown().await;
}
