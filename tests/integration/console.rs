//! The admin console (SPEC §10): `/ui`, `POST /auth/ws-ticket` and the live feed on
//! `GET /ws/events?ticket=…` (single-use tickets, 1008 on a bad ticket, 1001 on shutdown,
//! shared through Redis across instances).

use std::time::Duration;

use futures_util::StreamExt;
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use testkit::idp::MockIdp;
use tollgate::config::{Role, UnregisteredPolicy};
use tollgate::store::{KeyFields, TeamFields};

use crate::jwt_support::{person, sso, team, token};
use crate::keys_support::{chat_once, ok_json};
use crate::support::*;

type Socket = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// Nothing here should take long; a hang fails the test instead of stalling the run.
const WAIT: Duration = Duration::from_secs(10);
const MODEL: &str = "llama3.1:8b";

/// `POST /auth/ws-ticket` as `bearer`; the response.
async fn ticket_response(app: &TestApp, bearer: Option<&str>) -> reqwest::Response {
    app.request(reqwest::Method::POST, "/auth/ws-ticket", bearer)
        .send()
        .await
        .expect("POST /auth/ws-ticket")
}

/// A ticket issued to `bearer`.
async fn ticket_as(app: &TestApp, bearer: &str) -> String {
    let body = ok_json(ticket_response(app, Some(bearer)).await).await;
    body["ticket"].as_str().expect("a ticket").to_string()
}

/// A ticket issued to the master key.
async fn master_ticket(app: &TestApp) -> String {
    ticket_as(app, &app.master_key).await
}

/// Opens `/ws/events` with `query`; the handshake must succeed (bad tickets are refused
/// by closing the socket, not the handshake).
async fn connect_query(app: &TestApp, query: &str) -> Socket {
    let url = format!("ws://{}/ws/events{query}", app.addr);
    let (socket, response) = tokio::time::timeout(WAIT, tokio_tungstenite::connect_async(url))
        .await
        .expect("the WebSocket handshake timed out")
        .expect("the WebSocket handshake failed");
    assert_eq!(response.status().as_u16(), 101);
    socket
}

async fn connect(app: &TestApp, ticket: &str) -> Socket {
    connect_query(app, &format!("?ticket={ticket}")).await
}

/// The next message that is not a ping/pong.
async fn next_message(socket: &mut Socket) -> Option<Message> {
    loop {
        let message = tokio::time::timeout(WAIT, socket.next())
            .await
            .expect("no message from the socket in time")?
            .ok()?;
        if !matches!(message, Message::Ping(_) | Message::Pong(_)) {
            return Some(message);
        }
    }
}

/// Waits for the server's close frame; its code.
async fn close_code(socket: &mut Socket) -> u16 {
    match next_message(socket).await {
        Some(Message::Close(Some(frame))) => u16::from(frame.code),
        other => panic!("expected a close frame, got {other:?}"),
    }
}

/// The next feed message, as JSON with its raw text.
async fn next_event(socket: &mut Socket) -> (Value, String) {
    match next_message(socket).await {
        Some(Message::Text(text)) => {
            let raw = text.to_string();
            let json = serde_json::from_str(&raw)
                .unwrap_or_else(|e| panic!("feed message is not JSON ({e}): {raw}"));
            (json, raw)
        }
        other => panic!("expected a feed message, got {other:?}"),
    }
}

/// A proxied, non-streaming `/api/chat` with `key`, read to its end.
async fn chat(app: &TestApp, key: &str) -> Value {
    ok_json(
        app.post_json("/api/chat", Some(key), &chat_once(MODEL))
            .await,
    )
    .await
}

/// Proves a socket is live: a proxied request shows up on it.
async fn assert_live(app: &TestApp, socket: &mut Socket) {
    let (plain, key) = app.create_key(KeyFields::default()).await;
    chat(app, &plain).await;
    let (event, _) = next_event(socket).await;
    assert_eq!(event["key_id"], json!(key.key_id), "{event}");
}

// ------------------------------------------------------------------ tickets

/// SPEC §10: issuing a ticket needs an admin credential (401 anonymous, 403 for a
/// plain virtual key), like the rest of the management API.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ticket_issuance_needs_an_admin_credential() {
    let app = TestApp::spawn().await;
    assert_error(ticket_response(&app, None).await, 401, "unauthorized").await;
    assert_error(
        ticket_response(&app, Some("sk-not-a-real-key-0123456789abcdefghijklmnop")).await,
        401,
        "unauthorized",
    )
    .await;
    let (plain, _) = app.create_key(KeyFields::default()).await;
    assert_error(ticket_response(&app, Some(&plain)).await, 403, "forbidden").await;
    app.shutdown().await;
}

/// SPEC §10: `{"ticket", "ttl_seconds": 30}`, the ticket ≥ 32 URL-safe characters, a
/// fresh one each time, never cached.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ticket_shape() {
    let app = TestApp::spawn().await;
    let resp = ticket_response(&app, Some(&app.master_key)).await;
    assert_eq!(
        resp.headers()
            .get(reqwest::header::CACHE_CONTROL)
            .and_then(|v| v.to_str().ok()),
        Some("no-store")
    );
    let body = ok_json(resp).await;
    let mut fields: Vec<&str> = body
        .as_object()
        .expect("an object")
        .keys()
        .map(String::as_str)
        .collect();
    fields.sort_unstable();
    assert_eq!(fields, ["ticket", "ttl_seconds"], "{body}");
    assert_eq!(body["ttl_seconds"], 30);
    let first = body["ticket"].as_str().expect("a ticket");
    assert!(first.len() >= 32, "{first}");
    assert!(
        first
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'),
        "not URL-safe: {first}"
    );
    assert_ne!(first, master_ticket(&app).await);
    app.shutdown().await;
}

/// SPEC §10: a ticket works once; the second upgrade with it is closed with 1008.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ticket_works_once() {
    let app = TestApp::spawn().await;
    let ticket = master_ticket(&app).await;
    let mut first = connect(&app, &ticket).await;
    let mut second = connect(&app, &ticket).await;
    assert_eq!(close_code(&mut second).await, 1008);
    assert_live(&app, &mut first).await;
    app.shutdown().await;
}

/// SPEC §10: unknown, malformed and missing tickets are closed with 1008.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_tickets_are_closed_with_policy_violation() {
    let app = TestApp::spawn().await;
    let unknown = "A".repeat(43);
    for query in [
        format!("?ticket={unknown}"),
        "?ticket=short".to_string(),
        "?ticket=".to_string(),
        String::new(),
    ] {
        let mut socket = connect_query(&app, &query).await;
        assert_eq!(close_code(&mut socket).await, 1008, "query {query:?}");
    }
    // A bearer is not a ticket.
    let master = app.master_key.clone();
    let mut socket = connect(&app, &master).await;
    assert_eq!(close_code(&mut socket).await, 1008);
    app.shutdown().await;
}

/// A plain HTTP request to the feed is a 400 in the envelope, and spends no ticket.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_feed_needs_a_websocket_upgrade() {
    let app = TestApp::spawn().await;
    let ticket = master_ticket(&app).await;
    let resp = app.get(&format!("/ws/events?ticket={ticket}"), None).await;
    assert_error(resp, 400, "invalid_request").await;
    let mut socket = connect(&app, &ticket).await;
    assert_live(&app, &mut socket).await;
    app.shutdown().await;
}

// ------------------------------------------------------------------ the feed

/// SPEC §10: each finished request arrives as JSON with time, key name, model, route,
/// status, tokens and latency — and never the key itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_feed_streams_finished_requests() {
    let app = TestApp::spawn().await;
    let ticket = master_ticket(&app).await;
    let mut socket = connect(&app, &ticket).await;
    let (plain, key) = app.create_key(KeyFields::default()).await;
    let reply = chat(&app, &plain).await;
    let (event, raw) = next_event(&mut socket).await;

    assert_eq!(event["type"], "request", "{raw}");
    assert_eq!(event["key_name"], json!(key.key_name), "{raw}");
    assert_eq!(event["key_id"], json!(key.key_id), "{raw}");
    assert_eq!(event["model"], MODEL, "{raw}");
    assert_eq!(event["route"], "/api/chat", "{raw}");
    assert!(event["status"].is_string(), "{raw}");
    assert_eq!(event["http_status"], 200, "{raw}");
    let prompt = reply["prompt_eval_count"].as_u64().expect("prompt count");
    let completion = reply["eval_count"].as_u64().expect("completion count");
    assert_eq!(event["prompt_tokens"], prompt, "{raw}");
    assert_eq!(event["completion_tokens"], completion, "{raw}");
    assert_eq!(event["tokens"], prompt + completion, "{raw}");
    assert!(event["latency_ms"].is_u64(), "{raw}");
    assert!(event["time"].is_string(), "{raw}");
    assert!(!raw.contains(&plain), "the feed leaked the key: {raw}");
    assert!(
        !raw.contains(&key.key_hash),
        "the feed leaked the key hash: {raw}"
    );

    // One message per finished request.
    chat(&app, &plain).await;
    let (again, _) = next_event(&mut socket).await;
    assert_ne!(again["request_id"], event["request_id"]);
    app.shutdown().await;
}

/// Refused requests are on the feed too (status `refused`, the refusal's HTTP status,
/// no tokens), so a 429 shows as it happens; they reach nothing and write no usage row.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_feed_shows_refused_requests() {
    let app = TestApp::spawn().await;
    let ticket = master_ticket(&app).await;
    let mut socket = connect(&app, &ticket).await;
    let (plain, key) = app
        .create_key(KeyFields {
            rpm_limit: Some(1),
            metadata: json!({}),
            ..KeyFields::default()
        })
        .await;
    chat(&app, &plain).await;
    let (served, _) = next_event(&mut socket).await;
    assert_eq!(served["http_status"], 200, "{served}");

    let refused = app
        .post_json("/api/chat", Some(&plain), &chat_once(MODEL))
        .await;
    let request_id = refused
        .headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .expect("x-request-id")
        .to_string();
    assert_error(refused, 429, "rate_limited").await;
    let (event, raw) = next_event(&mut socket).await;
    assert_eq!(event["request_id"], json!(request_id), "{raw}");
    assert_eq!(event["status"], "refused", "{raw}");
    assert_eq!(event["http_status"], 429, "{raw}");
    assert_eq!(event["key_id"], json!(key.key_id), "{raw}");
    assert_eq!(event["key_name"], json!(key.key_name), "{raw}");
    assert_eq!(event["route"], "/api/chat", "{raw}");
    assert_eq!(event["tokens"], 0, "{raw}");
    assert!(!raw.contains(&plain), "the feed leaked the key: {raw}");

    assert_eq!(app.ollama.request_count(), 1, "the refusal reached nothing");
    app.app.spend.flush().await;
    let rows = ok_json(
        app.admin_get(&format!("/spend/logs?key_id={}", key.key_id))
            .await,
    )
    .await;
    assert_eq!(
        rows.as_array().map(Vec::len),
        Some(1),
        "only the served request has a usage row: {rows}"
    );
    app.shutdown().await;
}

/// SPEC §6.5 on the feed: a team admin's ticket shows only its own team's requests;
/// an admin JWT's shows everything.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn team_roles_see_only_their_team() {
    let idp = MockIdp::start().await;
    let app = TestApp::builder()
        .config(sso(&idp, UnregisteredPolicy::Reject))
        .config(|c| {
            c.jwt.admin_scope = Some("tollgate:admin".into());
            c.jwt.team_id_claim = Some("team".into());
            c.jwt.role_claim = Some("roles".into());
            c.jwt
                .role_map
                .insert("gw-team-admin".into(), Role::TeamAdmin);
        })
        .spawn()
        .await;
    team(&app, "team-a", TeamFields::default()).await;
    team(&app, "team-b", TeamFields::default()).await;
    let key_in = |team: &'static str| {
        let app = &app;
        async move {
            app.create_key(KeyFields {
                team_id: Some(team.into()),
                metadata: json!({}),
                ..KeyFields::default()
            })
            .await
        }
    };
    let (a_plain, a_key) = key_in("team-a").await;
    let (b_plain, b_key) = key_in("team-b").await;

    let mut claims = person(&idp, "ta", Some("ta@corp.example"));
    claims["roles"] = json!(["gw-team-admin"]);
    claims["team"] = json!("team-a");
    let team_admin = token(&idp, &claims);
    let mut claims = person(&idp, "root", Some("root@corp.example"));
    claims["scope"] = json!("openid tollgate:admin");
    let admin = token(&idp, &claims);

    let mut team_socket = connect(&app, &ticket_as(&app, &team_admin).await).await;
    let mut admin_socket = connect(&app, &ticket_as(&app, &admin).await).await;
    chat(&app, &b_plain).await;
    chat(&app, &a_plain).await;

    let (first, raw) = next_event(&mut team_socket).await;
    assert_eq!(first["key_id"], json!(a_key.key_id), "team-a saw: {raw}");
    let (first, _) = next_event(&mut admin_socket).await;
    let (second, _) = next_event(&mut admin_socket).await;
    assert_eq!(first["key_id"], json!(b_key.key_id));
    assert_eq!(second["key_id"], json!(a_key.key_id));
    app.shutdown().await;
}

/// SPEC §10: on shutdown the socket closes with 1001 (going away), and an open socket
/// does not hold the server up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_closes_the_feed_with_going_away() {
    let mut app = TestApp::spawn().await;
    let ticket = master_ticket(&app).await;
    let mut socket = connect(&app, &ticket).await;
    assert_live(&app, &mut socket).await;
    app.begin_shutdown();
    assert_eq!(close_code(&mut socket).await, 1001);
    tokio::time::timeout(WAIT, app.shutdown())
        .await
        .expect("the server did not stop with a socket open");
}

/// SPEC §10 + §2: the socket closes with 1001 as soon as shutdown starts, not when the
/// drain of in-flight streams ends (which may take the whole grace period).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_feed_closes_when_shutdown_starts_not_after_the_drain() {
    let mut app = TestApp::builder()
        .config(|c| c.server.shutdown_grace_s = 600)
        .spawn()
        .await;
    let ticket = master_ticket(&app).await;
    let mut socket = connect(&app, &ticket).await;
    let gate = app.ollama.hold_streams();
    let resp = app
        .admin_post("/api/chat", &crate::support::chat(MODEL))
        .await;
    assert_eq!(resp.status(), 200);
    app.ollama.wait_for_requests(1).await;
    let reader = tokio::spawn(read_to_end(resp));

    app.begin_shutdown();
    assert_eq!(close_code(&mut socket).await, 1001);
    assert!(!reader.is_finished(), "the stream is still draining");

    gate.release();
    reader.await.unwrap().expect("the stream completes");
    tokio::time::timeout(WAIT, app.shutdown())
        .await
        .expect("the server stops once the stream is done");
}

// ------------------------------------------------------------------ the page

/// SPEC §10: `/ui` serves the console without authentication, from the binary: no
/// script or style sheet from anywhere else.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_page_is_self_contained() {
    let app = TestApp::spawn().await;
    let resp = app.get("/ui", None).await;
    assert_eq!(resp.status(), 200);
    let content_type = resp.headers()[reqwest::header::CONTENT_TYPE]
        .to_str()
        .unwrap()
        .to_string();
    assert!(content_type.starts_with("text/html"), "{content_type}");
    let csp = resp.headers()[reqwest::header::CONTENT_SECURITY_POLICY]
        .to_str()
        .unwrap()
        .to_string();
    assert!(csp.contains("script-src 'self'"), "{csp}");
    let html = resp.text().await.unwrap();
    assert!(html.contains("<title>tollgate"), "{html}");
    assert!(html.contains(r#"<script src="/ui/app.js""#), "{html}");
    assert!(!html.contains("<script src=\"http"), "external script");
    assert!(!html.contains("https://"), "external URL");
    assert!(!html.contains("http://"), "external URL");
    for (path, kind) in [
        ("/ui/app.js", "text/javascript"),
        ("/ui/app.css", "text/css"),
    ] {
        let resp = app.get(path, None).await;
        assert_eq!(resp.status(), 200, "{path}");
        let content_type = resp.headers()[reqwest::header::CONTENT_TYPE]
            .to_str()
            .unwrap()
            .to_string();
        assert!(content_type.starts_with(kind), "{path}: {content_type}");
        let text = resp.text().await.unwrap();
        assert!(!text.is_empty(), "{path} is empty");
        assert!(
            !text.contains("https://"),
            "{path} loads something external"
        );
        assert!(!text.contains("http://"), "{path} loads something external");
    }
    // The console drives the management API and the feed.
    let js = app.get("/ui/app.js", None).await.text().await.unwrap();
    for needle in [
        "/key/list",
        "/team/list",
        "/jwt/key/mapping/list",
        "/spend/logs",
        "/auth/ws-ticket",
        "/ws/events",
    ] {
        assert!(js.contains(needle), "app.js never calls {needle}");
    }
    app.shutdown().await;
}

// ------------------------------------------------------------------ several instances

/// SPEC §10 + §7: with Redis, a ticket issued by one instance works on another — once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tickets_are_shared_through_redis() {
    let Some(a) = TestApp::builder().postgres().redis().try_spawn().await else {
        return;
    };
    let b = TestApp::builder().shared_db_with(&a).spawn().await;
    let ticket = master_ticket(&a).await;
    let mut on_b = connect(&b, &ticket).await;
    assert_live(&b, &mut on_b).await;
    let mut again_on_a = connect(&a, &ticket).await;
    assert_eq!(close_code(&mut again_on_a).await, 1008);

    // Stored hashed under the deployment's prefix, with the 30 s expiry.
    use fred::interfaces::KeysInterface;
    let fresh = master_ticket(&a).await;
    let conn = a.app.redis.as_ref().expect("Redis is configured");
    let hashed = conn.key(&format!(
        "ws_ticket:{}",
        tollgate::auth::secrets::hash_secret(&fresh)
    ));
    let ttl: i64 = conn.client.pttl(&hashed).await.unwrap();
    assert!((1..=30_000).contains(&ttl), "PTTL {ttl}");
    let plain: i64 = conn
        .client
        .exists(conn.key(&format!("ws_ticket:{fresh}")))
        .await
        .unwrap();
    assert_eq!(plain, 0, "the plaintext ticket is a Redis key");

    b.shutdown().await;
    a.shutdown().await;
}

/// SPEC §6.1 + §7: with Redis gone, issuing a ticket is a 503 that names nothing
/// internal, and a socket whose ticket cannot be checked closes with 1011 (try again),
/// not 1008.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ticket_store_outage() {
    let Some(redis) = redis_addr().await else {
        skip(&format!("{REDIS_VAR} not set"));
        return;
    };
    let proxy = TcpProxy::start(redis).await;
    let url = proxy.url("redis");
    let Some(app) = TestApp::builder()
        .redis()
        .config(move |c| c.redis.url = Some(tollgate::config::Secret(url)))
        .try_spawn()
        .await
    else {
        return;
    };
    let ticket = master_ticket(&app).await;
    proxy.stop().await;

    let resp = ticket_response(&app, Some(&app.master_key)).await;
    assert_error(resp, 503, "service_unavailable").await;
    let mut socket = connect(&app, &ticket).await;
    assert_eq!(close_code(&mut socket).await, 1011);
    app.shutdown().await;
}
