//! `GET /openapi.json` (SPEC §4.3): the management and proxy API as OpenAPI 3.

use axum::routing::MethodFilter;
use serde_json::{Value, json};
use tollgate::services::proxy::routes::ROUTES;

use super::support::*;

/// Every management route of SPEC §4.2 with its method.
const MANAGEMENT: &[(&str, &str)] = &[
    ("post", "/key/generate"),
    ("post", "/key/update"),
    ("post", "/key/delete"),
    ("get", "/key/info"),
    ("get", "/key/list"),
    ("post", "/key/regenerate"),
    ("post", "/key/block"),
    ("post", "/key/unblock"),
    ("post", "/team/new"),
    ("post", "/team/update"),
    ("post", "/team/delete"),
    ("get", "/team/info"),
    ("get", "/team/list"),
    ("post", "/jwt/key/mapping/new"),
    ("post", "/jwt/key/mapping/update"),
    ("post", "/jwt/key/mapping/delete"),
    ("get", "/jwt/key/mapping/info"),
    ("get", "/jwt/key/mapping/list"),
    ("get", "/spend/logs"),
];

async fn fetch(app: &TestApp) -> Value {
    let resp = app.get("/openapi.json", None).await;
    assert_eq!(resp.status(), 200);
    let content_type = resp
        .headers()
        .get(reqwest::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    assert!(
        content_type.starts_with("application/json"),
        "content type {content_type}"
    );
    resp.json().await.expect("a JSON document")
}

fn operation<'a>(doc: &'a Value, method: &str, path: &str) -> &'a Value {
    let op = &doc["paths"][path][method];
    assert!(
        op.is_object(),
        "{} {path} is not documented",
        method.to_uppercase()
    );
    op
}

fn properties(doc: &Value, schema: &str) -> Vec<String> {
    doc["components"]["schemas"][schema]["properties"]
        .as_object()
        .unwrap_or_else(|| panic!("schema {schema} has no properties"))
        .keys()
        .cloned()
        .collect()
}

#[tokio::test]
async fn serves_an_openapi_3_document_without_credentials() {
    let app = TestApp::spawn().await;
    let doc = fetch(&app).await;
    assert!(
        doc["openapi"].as_str().is_some_and(|v| v.starts_with("3.")),
        "openapi: {}",
        doc["openapi"]
    );
    assert_eq!(doc["info"]["title"], "tollgate");
    assert_eq!(
        doc["components"]["securitySchemes"]["bearer"],
        json!({
            "type": "http",
            "scheme": "bearer",
            "description": doc["components"]["securitySchemes"]["bearer"]["description"],
        })
    );
    // The same bytes every time.
    assert_eq!(fetch(&app).await, doc);
    app.shutdown().await;
}

#[tokio::test]
async fn documents_every_management_route_with_bearer_and_the_error_envelope() {
    let app = TestApp::spawn().await;
    let doc = fetch(&app).await;
    for (method, path) in MANAGEMENT {
        let op = operation(&doc, method, path);
        assert_eq!(op["security"], json!([{"bearer": []}]), "{method} {path}");
        assert!(
            op["responses"]["200"].is_object(),
            "{method} {path}: no 200"
        );
        assert_eq!(
            op["responses"]["401"]["$ref"], "#/components/responses/Unauthorized",
            "{method} {path}"
        );
    }
    for (name, response) in doc["components"]["responses"]
        .as_object()
        .expect("responses")
    {
        assert_eq!(
            response["content"]["application/json"]["schema"]["$ref"],
            "#/components/schemas/ErrorBody",
            "{name}"
        );
    }
    assert_eq!(properties(&doc, "ErrorBody"), ["error"]);
    assert_eq!(
        properties(&doc, "ErrorDetail"),
        ["code", "message", "request_id"]
    );
    app.shutdown().await;
}

#[tokio::test]
async fn documents_every_proxied_route() {
    let app = TestApp::spawn().await;
    let doc = fetch(&app).await;
    let mut count = 0;
    for spec in ROUTES {
        let path = spec.path.replace("{*", "{");
        for (filter, method) in [
            (MethodFilter::GET, "get"),
            (MethodFilter::HEAD, "head"),
            (MethodFilter::POST, "post"),
            (MethodFilter::DELETE, "delete"),
        ] {
            if spec.methods.or(filter) != spec.methods {
                continue;
            }
            count += 1;
            let op = operation(&doc, method, &path);
            assert_eq!(op["security"], json!([{"bearer": []}]), "{method} {path}");
            assert!(
                op["responses"]["200"]["description"]
                    .as_str()
                    .is_some_and(|d| d.contains("Ollama")),
                "{method} {path}"
            );
            for status in ["401", "403", "429", "502", "504"] {
                assert!(
                    op["responses"][status]["$ref"].is_string(),
                    "{method} {path}: no {status}"
                );
            }
            let description = op["description"].as_str().unwrap_or_default();
            assert_eq!(
                description.contains("Admin only"),
                spec.admin_only,
                "{method} {path}: {description}"
            );
        }
    }
    assert!(count >= ROUTES.len());
    app.shutdown().await;
}

#[tokio::test]
async fn documents_operations_and_console_routes() {
    let app = TestApp::spawn().await;
    let doc = fetch(&app).await;
    for path in ["/healthz", "/readyz", "/metrics", "/openapi.json"] {
        let op = operation(&doc, "get", path);
        assert!(op.get("security").is_none(), "{path} demands credentials");
    }
    operation(&doc, "get", "/ui");
    let ticket = operation(&doc, "post", "/auth/ws-ticket");
    assert_eq!(ticket["security"], json!([{"bearer": []}]));
    let feed = operation(&doc, "get", "/ws/events");
    assert_eq!(feed["parameters"][0]["name"], "ticket");
    assert_eq!(feed["parameters"][0]["in"], "query");
    app.shutdown().await;
}

#[tokio::test]
async fn key_schemas_follow_the_spec_and_never_show_the_hash() {
    let app = TestApp::spawn().await;
    let doc = fetch(&app).await;
    let generate = properties(&doc, "GenerateKey");
    for field in [
        "key_alias",
        "models",
        "max_budget",
        "budget_duration",
        "tpm_limit",
        "rpm_limit",
        "max_parallel_requests",
        "duration",
        "metadata",
        "team_id",
        "user_id",
        "org_id",
        "allowed_routes",
        "blocked",
    ] {
        assert!(
            generate.iter().any(|f| f == field),
            "GenerateKey lacks {field}"
        );
    }
    assert_eq!(
        doc["components"]["schemas"]["GenerateKey"]["properties"]["duration"]["oneOf"][0]["$ref"],
        "#/components/schemas/Duration"
    );
    assert_eq!(
        doc["components"]["schemas"]["Duration"]["type"],
        json!(["string", "integer"])
    );
    let key = properties(&doc, "VirtualKey");
    assert!(
        !key.iter().any(|f| f == "key_hash"),
        "VirtualKey shows key_hash"
    );
    assert!(!doc.to_string().contains("key_hash"));

    // The schema is what /key/generate really returns: the key's fields plus `key`.
    let resp = app
        .admin_post(
            "/key/generate",
            &json!({"key_alias": "doc", "budget_duration": "30d"}),
        )
        .await;
    assert_eq!(resp.status(), 200);
    let issued: Value = resp.json().await.expect("JSON");
    let mut returned: Vec<String> = issued
        .as_object()
        .expect("object")
        .keys()
        .cloned()
        .collect();
    let mut documented = key.clone();
    documented.push("key".into());
    returned.sort();
    documented.sort();
    assert_eq!(returned, documented);
    app.shutdown().await;
}

#[tokio::test]
async fn patch_fields_are_nullable() {
    let app = TestApp::spawn().await;
    let doc = fetch(&app).await;
    let update = &doc["components"]["schemas"]["UpdateKey"]["properties"];
    assert_eq!(update["key_alias"]["type"], json!(["string", "null"]));
    assert_eq!(update["metadata"]["type"], json!(["object", "null"]));
    assert_eq!(update["duration"]["oneOf"][1], json!({"type": "null"}));
    app.shutdown().await;
}

// ---------------------------------------------------------------------------------------
// The document and the handlers agree (SPEC §4.2): each class of disagreement that
// Schemathesis found (`.ci/schemathesis.sh`), pinned here.

/// The schema of query parameter `name` of `GET path`.
fn query_param<'a>(doc: &'a Value, path: &str, name: &str) -> &'a Value {
    operation(doc, "get", path)["parameters"]
        .as_array()
        .and_then(|params| params.iter().find(|p| p["name"] == name))
        .map(|p| &p["schema"])
        .unwrap_or_else(|| panic!("GET {path} has no parameter {name}"))
}

async fn error_message(resp: reqwest::Response) -> String {
    assert_eq!(resp.status(), 400);
    let body: Value = resp.json().await.expect("JSON");
    assert_eq!(body["error"]["code"], "invalid_request");
    body["error"]["message"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

#[tokio::test]
async fn paging_out_of_range_is_400_and_the_document_says_so() {
    let app = TestApp::spawn().await;
    let doc = fetch(&app).await;
    for (path, name, max) in [
        ("/key/list", "page", 1_000_000),
        ("/key/list", "size", 1000),
        ("/team/list", "page", 1_000_000),
        ("/team/list", "size", 1000),
        ("/jwt/key/mapping/list", "page", 1_000_000),
        ("/jwt/key/mapping/list", "size", 1000),
        ("/spend/logs", "limit", 10_000),
    ] {
        let schema = query_param(&doc, path, name);
        assert_eq!(schema["minimum"], 1, "{path} {name}");
        assert_eq!(schema["maximum"], max, "{path} {name}");
        for bad in ["0".to_string(), (max + 1).to_string(), i64::MAX.to_string()] {
            let resp = app.admin_get(&format!("{path}?{name}={bad}")).await;
            let message = error_message(resp).await;
            assert!(message.contains(name), "{path}?{name}={bad}: {message}");
        }
        let resp = app.admin_get(&format!("{path}?{name}={max}")).await;
        assert_eq!(resp.status(), 200, "{path}?{name}={max}");
    }
    app.shutdown().await;
}

#[tokio::test]
async fn limits_beyond_2_pow_53_or_negative_are_refused_never_clamped() {
    let app = TestApp::spawn().await;
    let doc = fetch(&app).await;
    let limit = &doc["components"]["schemas"]["Limit"];
    assert_eq!(limit["type"], "integer");
    assert_eq!(limit["minimum"], 0);
    assert_eq!(limit["maximum"], 1u64 << 53);
    let team: Value = app
        .admin_post("/team/new", &json!({}))
        .await
        .json()
        .await
        .expect("JSON");
    let key: Value = app
        .admin_post("/key/generate", &json!({}))
        .await
        .json()
        .await
        .expect("JSON");
    for field in ["tpm_limit", "rpm_limit", "max_parallel_requests"] {
        for bad in [
            json!(9_007_199_254_740_993u64),
            json!(9_223_372_036_854_775_808u64),
            json!(u64::MAX),
            serde_json::from_str::<Value>("1e300").expect("a number"),
            json!(-1),
            json!(-1.0),
            json!(2.5),
        ] {
            for (path, mut body) in [
                ("/key/generate", json!({})),
                ("/team/new", json!({})),
                ("/key/update", json!({"key_id": key["key_id"]})),
                ("/team/update", json!({"team_id": team["team_id"]})),
            ] {
                body[field] = bad.clone();
                let message = error_message(app.admin_post(path, &body).await).await;
                assert!(message.contains(field), "{path} {field}={bad}: {message}");
            }
        }
        let resp = app
            .admin_post("/key/generate", &json!({field: 1u64 << 53}))
            .await;
        assert_eq!(resp.status(), 200);
        let body: Value = resp.json().await.expect("JSON");
        assert_eq!(body[field], 1u64 << 53, "{field}");
    }
    app.shutdown().await;
}

/// JSON (and JSON Schema's `integer`) does not tell `2507` from `2507.0`: both are
/// accepted for integer fields, and mean the same.
#[tokio::test]
async fn integral_numbers_count_as_integers() {
    let app = TestApp::spawn().await;
    let doc = fetch(&app).await;
    assert_eq!(doc["components"]["schemas"]["Limit"]["type"], "integer");
    let resp = app
        .admin_post(
            "/team/new",
            &json!({"tpm_limit": 2507.0, "rpm_limit": 1e3, "max_parallel_requests": 0.0}),
        )
        .await;
    assert_eq!(resp.status(), 200);
    let team: Value = resp.json().await.expect("JSON");
    assert_eq!(team["tpm_limit"], 2507);
    assert_eq!(team["rpm_limit"], 1000);
    assert_eq!(team["max_parallel_requests"], 0);
    let resp = app
        .admin_post("/key/generate", &json!({"duration": 3600.0}))
        .await;
    assert_eq!(resp.status(), 200);
    app.shutdown().await;
}

#[tokio::test]
async fn durations_are_accepted_exactly_as_their_pattern_says() {
    let app = TestApp::spawn().await;
    let doc = fetch(&app).await;
    let duration = &doc["components"]["schemas"]["Duration"];
    assert_eq!(duration["type"], json!(["string", "integer"]));
    assert_eq!(duration["minimum"], 1);
    assert_eq!(duration["maximum"], 100u64 * 365 * 86_400);
    let pattern = regex::Regex::new(duration["pattern"].as_str().expect("a pattern"))
        .expect("a valid pattern");
    for text in [
        "30d", "15m", "1h", "45", "45s", "2w", "0030d", "36500d", "5214w", " 30d", "30d ", "30d\n",
        "+30d", "-1h", "0d", "0", "36501d", "5215w", "1.5h", "1y", "", "h",
    ] {
        let accepted = app
            .admin_post(
                "/key/generate",
                &json!({"duration": text, "budget_duration": text}),
            )
            .await
            .status();
        assert_eq!(
            accepted == 200,
            pattern.is_match(text),
            "{text:?}: answered {accepted}"
        );
        if accepted != 200 {
            assert_eq!(accepted, 400, "{text:?}");
        }
    }
    app.shutdown().await;
}

/// Every status a management route answers is in the document: 400, 401, 403 and 503
/// everywhere, 413 where there is a body, 404 where something is named, 409 where a
/// duplicate or a team with keys can conflict.
#[tokio::test]
async fn management_routes_document_every_status_they_answer() {
    let app = TestApp::spawn().await;
    let doc = fetch(&app).await;
    let named = [
        "/key/update",
        "/key/delete",
        "/key/info",
        "/key/regenerate",
        "/key/block",
        "/key/unblock",
        "/team/update",
        "/team/delete",
        "/team/info",
        "/team/list",
        "/jwt/key/mapping/update",
        "/jwt/key/mapping/delete",
        "/jwt/key/mapping/info",
    ];
    let conflicting = [
        "/team/new",
        "/team/delete",
        "/jwt/key/mapping/new",
        "/jwt/key/mapping/update",
    ];
    for (method, path) in MANAGEMENT {
        let responses = &operation(&doc, method, path)["responses"];
        let mut expected = vec!["200", "400", "401", "403", "503"];
        if *method == "post" {
            expected.push("413");
        }
        if named.contains(path) {
            expected.push("404");
        }
        if conflicting.contains(path) {
            expected.push("409");
        }
        let mut documented: Vec<&str> = responses
            .as_object()
            .expect("responses")
            .keys()
            .map(String::as_str)
            .collect();
        expected.sort_unstable();
        documented.sort_unstable();
        assert_eq!(documented, expected, "{method} {path}");
    }
    // 413 is real: a body over `server.max_body_bytes`.
    let small = TestApp::builder()
        .config(|c| c.server.max_body_bytes = 1024)
        .spawn()
        .await;
    let resp = small
        .admin_post("/key/generate", &json!({"key_alias": "x".repeat(4096)}))
        .await;
    assert_eq!(resp.status(), 413);
    small.shutdown().await;
    app.shutdown().await;
}

/// What the handlers refuse beyond types is stated in the document: `key` or `key_id`
/// (also for `GET /key/info`), non-blank names, the `team_id` alphabet, route prefixes.
#[tokio::test]
async fn the_document_states_what_the_handlers_refuse() {
    let app = TestApp::spawn().await;
    let doc = fetch(&app).await;
    let schemas = &doc["components"]["schemas"];
    for schema in [
        "KeyRef",
        "UpdateKey",
        "NewMapping",
        "DeleteKeys",
        "DeleteTeams",
    ] {
        assert!(schemas[schema]["anyOf"].is_array(), "{schema}");
    }
    let info = &operation(&doc, "get", "/key/info")["parameters"];
    assert_eq!(info[0]["schema"]["$ref"], "#/components/schemas/KeyRef");
    assert_eq!(info[0]["style"], "form");
    for (path, body) in [
        ("/key/regenerate", json!({})),
        ("/key/block", json!({"key": null})),
        ("/key/update", json!({"key_alias": "x"})),
        ("/key/delete", json!({"keys": []})),
        ("/team/delete", json!({"team_ids": []})),
    ] {
        error_message(app.admin_post(path, &body).await).await;
    }
    error_message(app.admin_get("/key/info").await).await;

    let blank = schemas["GenerateKey"]["properties"]["models"]["items"]["pattern"]
        .as_str()
        .expect("a pattern");
    let blank = regex::Regex::new(blank).expect("valid");
    for name in [" ", "\t", "", " a "] {
        let status = app
            .admin_post("/key/generate", &json!({"models": [name]}))
            .await
            .status();
        assert_eq!(status == 200, blank.is_match(name), "{name:?}: {status}");
    }
    let claim = &schemas["NewMapping"]["properties"]["jwt_claim_name"];
    assert_eq!(claim["minLength"], 1);
    assert_eq!(claim["maxLength"], 512);
    let team_id = regex::Regex::new(
        schemas["NewTeam"]["properties"]["team_id"]["pattern"]
            .as_str()
            .expect("a pattern"),
    )
    .expect("valid");
    for id in ["ok-team", "a@b.c:d_e", "", "x y", "ü", &"t".repeat(129)] {
        let status = app
            .admin_post("/team/new", &json!({"team_id": id}))
            .await
            .status();
        assert_eq!(status == 200, team_id.is_match(id), "{id:?}: {status}");
    }
    let routes = &schemas["GenerateKey"]["properties"]["allowed_routes"]["items"];
    assert_eq!(routes["pattern"], "^/");
    assert_eq!(
        schemas["GenerateKey"]["properties"]["max_budget"]["minimum"],
        0
    );
    app.shutdown().await;
}

/// PostgreSQL's text holds no NUL: a NUL in a management string was a 500 there. It is
/// a 400 naming the field on every backend, except inside `metadata` (kept as JSON), and
/// the document says so.
#[tokio::test]
async fn nul_characters_are_refused_where_the_document_says() {
    let sqlite = TestApp::spawn().await;
    let doc = fetch(&sqlite).await;
    let alias = &doc["components"]["schemas"]["GenerateKey"]["properties"]["key_alias"];
    assert_eq!(alias["not"], json!({"type": "string", "pattern": "\\x00"}));
    assert!(
        doc["components"]["schemas"]["GenerateKey"]["properties"]["metadata"]
            .get("not")
            .is_none()
    );
    let postgres = TestApp::builder().postgres().try_spawn().await;
    for app in std::iter::once(&sqlite).chain(postgres.as_ref()) {
        for body in [
            json!({"key_alias": "a\u{0}b"}),
            json!({"models": ["llama\u{0}"]}),
            json!({"metadata": {"ok": 1}, "user_id": "\u{0}"}),
        ] {
            let message = error_message(app.admin_post("/key/generate", &body).await).await;
            assert!(message.contains("NUL"), "{body}: {message}");
        }
        let resp = app
            .admin_post("/key/generate", &json!({"metadata": {"note": "a\u{0}b"}}))
            .await;
        assert_eq!(resp.status(), 200);
        for query in ["/key/info?key_id=%00", "/team/info?team_id=a%00"] {
            let message = error_message(app.admin_get(query).await).await;
            assert!(message.contains("NUL"), "{query}: {message}");
        }
    }
    if let Some(app) = postgres {
        app.shutdown().await;
    }
    sqlite.shutdown().await;
}
