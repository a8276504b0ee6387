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
    assert_eq!(doc["components"]["schemas"]["Duration"]["type"], "string");
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
