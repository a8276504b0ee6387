//! Keep-alive connections after a refusal (issue 11): on one raw TCP connection, a
//! request whose body arrives after its headers is refused — 401, 403, 404, 405, 413,
//! 429, 400 — and then the connection is either still usable for the next request, or
//! the refusal said `Connection: close`. Never a connection closed without a word, into
//! which a client would send its next request.

use std::time::Duration;

use serde_json::json;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tollgate::store::KeyFields;

use super::support::*;

/// How many refusals each test sends.
const ITERATIONS: usize = 50;
/// The gap between a request's headers and its body: on a real network they often travel
/// in separate segments; here the gap makes sure they do.
const BODY_GAP: Duration = Duration::from_millis(10);
/// No single exchange may take longer than this (a hung test is a failed test).
const EXCHANGE_TIMEOUT: Duration = Duration::from_secs(10);
/// A 37-byte `/api/chat` body.
const CHAT_BODY: &str = r#"{"model":"llama3.1:8b","messages":[]}"#;

/// A response as read off the wire.
#[derive(Debug)]
struct Answer {
    status: u16,
    /// `Connection: close` was sent.
    close: bool,
    body: String,
}

/// One raw HTTP/1.1 connection.
struct Conn {
    stream: BufReader<TcpStream>,
}

impl Conn {
    async fn open(app: &TestApp) -> Conn {
        let tcp = TcpStream::connect(app.addr).await.expect("connect");
        tcp.set_nodelay(true).expect("TCP_NODELAY");
        Conn {
            stream: BufReader::new(tcp),
        }
    }

    /// Sends the headers, then (after [`BODY_GAP`]) the body, and reads the answer.
    async fn late_body(&mut self, head: &str, body: &[u8]) -> std::io::Result<Answer> {
        let exchange = async {
            let head = format!(
                "{head}Host: tollgate\r\nContent-Length: {}\r\n\r\n",
                body.len()
            );
            self.stream.get_mut().write_all(head.as_bytes()).await?;
            tokio::time::sleep(BODY_GAP).await;
            self.stream.get_mut().write_all(body).await?;
            self.read_answer().await
        };
        tokio::time::timeout(EXCHANGE_TIMEOUT, exchange)
            .await
            .unwrap_or_else(|_| Err(std::io::Error::other("no answer in time")))
    }

    /// Sends only the headers (the body never follows) and reads the answer.
    async fn head_only(&mut self, head: &str) -> Answer {
        self.stream
            .get_mut()
            .write_all(head.as_bytes())
            .await
            .expect("send headers");
        tokio::time::timeout(EXCHANGE_TIMEOUT, self.read_answer())
            .await
            .expect("an answer without the body")
            .expect("an answer")
    }

    /// `GET /healthz` in one segment.
    async fn healthz(&mut self) -> std::io::Result<Answer> {
        let exchange = async {
            self.stream
                .get_mut()
                .write_all(b"GET /healthz HTTP/1.1\r\nHost: tollgate\r\n\r\n")
                .await?;
            self.read_answer().await
        };
        tokio::time::timeout(EXCHANGE_TIMEOUT, exchange)
            .await
            .unwrap_or_else(|_| Err(std::io::Error::other("no answer in time")))
    }

    async fn read_answer(&mut self) -> std::io::Result<Answer> {
        let mut line = String::new();
        if self.stream.read_line(&mut line).await? == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "connection closed before a response",
            ));
        }
        let status: u16 = line
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("not a status line: {line:?}"));
        let (mut length, mut close) = (0usize, false);
        loop {
            line.clear();
            self.stream.read_line(&mut line).await?;
            let header = line.trim_end();
            if header.is_empty() {
                break;
            }
            let (name, value) = header.split_once(':').expect("a header line");
            let value = value.trim();
            if name.eq_ignore_ascii_case("content-length") {
                length = value.parse().expect("a length");
            } else if name.eq_ignore_ascii_case("connection") {
                close = value.eq_ignore_ascii_case("close");
            } else if name.eq_ignore_ascii_case("transfer-encoding") {
                panic!("these answers are not chunked: {value}");
            }
        }
        let mut body = vec![0u8; length];
        self.stream.read_exact(&mut body).await?;
        Ok(Answer {
            status,
            close,
            body: String::from_utf8_lossy(&body).into_owned(),
        })
    }

    /// After an answer with `Connection: close`: the server's end comes next.
    async fn expect_closed(&mut self) {
        let mut rest = Vec::new();
        let read = tokio::time::timeout(EXCHANGE_TIMEOUT, self.stream.read_to_end(&mut rest))
            .await
            .expect("the server closes after `Connection: close`");
        if let Ok(n) = read {
            assert_eq!(n, 0, "nothing follows a `Connection: close` answer");
        }
    }
}

/// Sends `ITERATIONS` refusals built by `request` (request line and headers, body), each
/// with its body late, each expected to be answered `status`. After each: with
/// `Connection: close` the server must close (and a new connection is opened), without
/// it the next request on the same connection must succeed. Returns how many answers
/// said `Connection: close`.
async fn refusals_keep_or_close(
    app: &TestApp,
    status: u16,
    request: impl Fn(usize) -> (String, Vec<u8>),
) -> usize {
    let mut conn = Conn::open(app).await;
    let mut closed = 0;
    for i in 0..ITERATIONS {
        let (head, body) = request(i);
        let answer = conn
            .late_body(&head, &body)
            .await
            .unwrap_or_else(|e| panic!("iteration {i}: refusal not answered: {e}"));
        assert_eq!(
            answer.status, status,
            "iteration {i}: {head:?} answered {answer:?}"
        );
        assert_no_internals(&answer.body);
        if answer.close {
            closed += 1;
            conn.expect_closed().await;
            conn = Conn::open(app).await;
            continue;
        }
        let next = conn.healthz().await.unwrap_or_else(|e| {
            panic!(
                "iteration {i}: a {status} without `Connection: close` left the connection \
                 unusable: {e}"
            )
        });
        assert_eq!(next.status, 200, "iteration {i}: {next:?}");
        assert!(!next.close, "iteration {i}: /healthz closes: {next:?}");
    }
    closed
}

fn post(path: &str, bearer: &str) -> String {
    format!(
        "POST {path} HTTP/1.1\r\nAuthorization: Bearer {bearer}\r\n\
         Content-Type: application/json\r\n"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_key_401_keeps_the_connection() {
    let app = TestApp::spawn().await;
    let closed = refusals_keep_or_close(&app, 401, |i| {
        (
            post("/api/chat", &format!("sk-unknown-{i:04}")),
            CHAT_BODY.into(),
        )
    })
    .await;
    assert_eq!(closed, 0, "a short body is read and the connection kept");
    assert_eq!(
        app.ollama.request_count(),
        0,
        "nothing reaches the upstream"
    );
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn route_not_allowed_403_keeps_the_connection() {
    let app = TestApp::spawn().await;
    let (key, _) = app
        .create_key(KeyFields {
            allowed_routes: vec!["/api/tags".into()],
            metadata: json!({}),
            ..Default::default()
        })
        .await;
    let closed =
        refusals_keep_or_close(&app, 403, |_| (post("/api/chat", &key), CHAT_BODY.into())).await;
    assert_eq!(closed, 0);
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn model_not_allowed_403_keeps_the_connection() {
    let app = TestApp::spawn().await;
    let (key, _) = app
        .create_key(KeyFields {
            models: vec!["qwen2.5:7b".into()],
            metadata: json!({}),
            ..Default::default()
        })
        .await;
    let closed =
        refusals_keep_or_close(&app, 403, |_| (post("/api/chat", &key), CHAT_BODY.into())).await;
    assert_eq!(closed, 0);
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn management_refusals_keep_the_connection() {
    let app = TestApp::spawn().await;
    let (key, _) = app
        .create_key(KeyFields {
            metadata: json!({}),
            ..Default::default()
        })
        .await;
    let generate = br#"{"key_alias":"x"}"#.to_vec();
    // A virtual key holds no management capability: 403 from the gate.
    let closed = refusals_keep_or_close(&app, 403, |_| {
        (post("/key/generate", &key), generate.clone())
    })
    .await;
    assert_eq!(closed, 0);
    // No credentials: 401 from the gate.
    let closed = refusals_keep_or_close(&app, 401, |_| {
        (
            "POST /team/new HTTP/1.1\r\nContent-Type: application/json\r\n".into(),
            generate.clone(),
        )
    })
    .await;
    assert_eq!(closed, 0);
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn not_found_and_wrong_method_keep_the_connection() {
    let app = TestApp::spawn().await;
    let master = app.master_key.clone();
    let closed = refusals_keep_or_close(&app, 404, |_| {
        (post("/no/such/route", &master), CHAT_BODY.into())
    })
    .await;
    assert_eq!(closed, 0);
    let closed =
        refusals_keep_or_close(&app, 405, |_| (post("/healthz", &master), CHAT_BODY.into())).await;
    assert_eq!(closed, 0);
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limited_429_keeps_the_connection() {
    let app = TestApp::spawn().await;
    let (key, _) = app
        .create_key(KeyFields {
            rpm_limit: Some(1),
            metadata: json!({}),
            ..Default::default()
        })
        .await;
    let body = json!({"model": "llama3.1:8b", "stream": false, "messages": []});
    let first = app.post_json("/api/chat", Some(&key), &body).await;
    assert_eq!(first.status(), 200);
    let closed =
        refusals_keep_or_close(&app, 429, |_| (post("/api/chat", &key), CHAT_BODY.into())).await;
    assert_eq!(closed, 0);
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_400_keeps_the_connection() {
    let app = TestApp::spawn().await;
    let master = app.master_key.clone();
    // A body that is not JSON.
    let closed = refusals_keep_or_close(&app, 400, |_| {
        (
            post("/api/chat", &master),
            br#"{"model":"llama3.1:8b","#.to_vec(),
        )
    })
    .await;
    assert_eq!(closed, 0);
    // A bad query string, refused before the body (a GET may carry one).
    let closed = refusals_keep_or_close(&app, 400, |_| {
        (
            format!("GET /key/list?page=abc HTTP/1.1\r\nAuthorization: Bearer {master}\r\n"),
            CHAT_BODY.into(),
        )
    })
    .await;
    assert_eq!(closed, 0);
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_413_says_connection_close() {
    let app = TestApp::builder()
        .config(|c| c.server.max_body_bytes = 64)
        .spawn()
        .await;
    let master = app.master_key.clone();
    let big = serde_json::to_vec(&json!({
        "model": "llama3.1:8b",
        "messages": [{"role": "user", "content": "a".repeat(200)}],
    }))
    .expect("serialise");
    let closed =
        refusals_keep_or_close(&app, 413, |_| (post("/api/chat", &master), big.clone())).await;
    assert_eq!(closed, ITERATIONS, "every 413 says `Connection: close`");
    app.shutdown().await;
}

/// A body that never comes: the refusal waits for it only so long, then says
/// `Connection: close`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_that_never_comes_gets_connection_close() {
    let app = TestApp::spawn().await;
    let mut conn = Conn::open(&app).await;
    let head = format!(
        "{}Host: tollgate\r\nContent-Length: 37\r\n\r\n",
        post("/api/chat", "sk-unknown")
    );
    let answer = conn.head_only(&head).await;
    assert_eq!(answer.status, 401);
    assert!(answer.close, "{answer:?}");
    conn.expect_closed().await;
    app.shutdown().await;
}

/// `Expect: 100-continue`: the refusal is the answer (no `100 Continue` first, so the
/// caller never sends the body) and it says `Connection: close`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_100_continue_gets_connection_close() {
    let app = TestApp::spawn().await;
    let mut conn = Conn::open(&app).await;
    let head = format!(
        "{}Host: tollgate\r\nExpect: 100-continue\r\nContent-Length: 37\r\n\r\n",
        post("/api/chat", "sk-unknown")
    );
    let answer = conn.head_only(&head).await;
    assert_eq!(answer.status, 401, "{answer:?}");
    assert!(answer.close, "{answer:?}");
    conn.expect_closed().await;
    app.shutdown().await;
}
