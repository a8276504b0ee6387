//! The Ollama hop's own client (src/upstream/client.rs): TLS for `https://` servers,
//! the connect timeout, and a stream's end — cut by Ollama, or by
//! `server.request_timeout_s` — recorded as such.

use std::time::Duration;

use serde_json::json;
use testkit::net::{Blackhole, FirstBytes};
use testkit::ollama::Failure;

use crate::keys_support::*;
use crate::support::{TestApp, assert_error, request_id};

/// Bound on the exchanges below, so a broken timeout fails the test instead of hanging it.
const GUARD: Duration = Duration::from_secs(60);

/// An `https://` server is spoken to in TLS (a handshake record first), an `http://` one
/// in plain HTTP; a TLS handshake the server hangs up on is a 502 with no detail.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_https_server_gets_a_tls_handshake() {
    for scheme in ["https", "http"] {
        let mut peer = FirstBytes::start().await;
        let url = peer.url(scheme);
        let app = TestApp::builder()
            .config(move |c| c.upstream.url = url)
            .spawn()
            .await;
        let key = plain_key(&app).await.key;
        let answer = tokio::time::timeout(GUARD, chat_with(&app, &key, "llama3.1:8b"))
            .await
            .expect("an answer");
        let err = assert_error(answer, 502, "upstream_error").await;
        assert!(!err.raw.contains("127.0.0.1"), "{}", err.raw);
        let first = tokio::time::timeout(GUARD, peer.next())
            .await
            .expect("a connection reached the peer");
        if scheme == "https" {
            // A TLS record of type handshake (22), version 3.x: the ClientHello.
            assert_eq!(first[0], 0x16, "{scheme}: {first:?}");
            assert_eq!(first[1], 0x03, "{scheme}: {first:?}");
        } else {
            let text = String::from_utf8_lossy(&first);
            assert!(
                text.starts_with("GET ") || text.starts_with("POST "),
                "{scheme}: {text:?}"
            );
        }
        app.shutdown().await;
    }
}

/// A server that never accepts the connection: `upstream.connect_timeout_s` ends the
/// attempt (long before `server.request_timeout_s`), and it is a connection failure:
/// 502 `upstream_error`, not 504.
/// This test waits `connect_timeout_s` (1 s) by its nature.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connect_timeout_is_a_connection_failure() {
    let blackhole = Blackhole::start().await;
    let url = blackhole.url("http");
    let app = TestApp::builder()
        .config(move |c| {
            c.upstream.url = url;
            c.upstream.connect_timeout_s = 1;
            c.server.request_timeout_s = 600;
        })
        .spawn()
        .await;
    let key = plain_key(&app).await.key;
    let answer = tokio::time::timeout(GUARD, chat_with(&app, &key, "llama3.1:8b"))
        .await
        .expect("the connect timeout ended the attempt");
    let err = assert_error(answer, 502, "upstream_error").await;
    assert!(!err.raw.contains("127.0.0.1"), "{}", err.raw);
    app.shutdown().await;
}

/// Reads `resp` to its end; `Err` when the body was cut.
async fn read_to_end(resp: &mut reqwest::Response) -> Result<Vec<u8>, reqwest::Error> {
    let mut all = Vec::new();
    loop {
        match tokio::time::timeout(GUARD, resp.chunk()).await {
            Ok(Ok(Some(chunk))) => all.extend_from_slice(&chunk),
            Ok(Ok(None)) => return Ok(all),
            Ok(Err(e)) => return Err(e),
            Err(_) => panic!("the stream neither ended nor was cut"),
        }
    }
}

/// A stream Ollama cuts mid-way reaches the client cut (not as a complete answer) and
/// is recorded with status `error`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_cut_mid_way_is_cut_for_the_client_and_an_error_row() {
    let app = TestApp::spawn().await;
    let k = plain_key(&app).await;
    app.ollama.fail_next(1, Failure::CloseMidStream);
    let body = json!({"model": "llama3.1:8b", "messages": [{"role": "user", "content": "hi"}]});
    let mut resp = app.post_json("/api/chat", Some(&k.key), &body).await;
    assert_eq!(resp.status(), 200);
    let id = request_id(&resp);
    assert!(
        read_to_end(&mut resp).await.is_err(),
        "the cut stream looked complete"
    );
    let rows = logs_for(&app, &k.key_id).await;
    assert_eq!(row_of(&rows, &id)["status"], "error", "{rows:#?}");
    app.shutdown().await;
}

/// `server.request_timeout_s` bounds the whole request, stream included: a stream still
/// running when it passes is cut and recorded with status `timeout`.
/// This test waits `request_timeout_s` (1 s) by its nature.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_past_the_request_timeout_is_cut_and_a_timeout_row() {
    let app = TestApp::builder()
        .config(|c| c.server.request_timeout_s = 1)
        .spawn()
        .await;
    let k = plain_key(&app).await;
    let gate = app.ollama.hold_streams();
    let body = json!({"model": "llama3.1:8b", "messages": [{"role": "user", "content": "hi"}]});
    let mut resp = app.post_json("/api/chat", Some(&k.key), &body).await;
    assert_eq!(resp.status(), 200);
    let id = request_id(&resp);
    let mut first = Vec::new();
    read_until(&mut resp, &mut first, b"\n").await;
    assert!(
        read_to_end(&mut resp).await.is_err(),
        "the held stream looked complete"
    );
    drop(gate);
    let rows = logs_for(&app, &k.key_id).await;
    assert_eq!(row_of(&rows, &id)["status"], "timeout", "{rows:#?}");
    app.shutdown().await;
}
