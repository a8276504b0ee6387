//! `GET /openapi.json`: the management and proxy API as an OpenAPI 3.1 document.
//!
//! - Management routes: their handlers' `#[utoipa::path]`, the same annotations that
//!   register them ([`crate::http::admin::openapi`]).
//! - Proxied Ollama routes: pass-through, so they are added from
//!   [`crate::services::proxy::routes::ROUTES`] with a generic JSON body.
//! - Operations and console routes: listed in [`ApiDoc`].
//!
//! Errors are the [`ErrorBody`] envelope, shared as `#/components/responses/…`. The
//! document is serialized once and served from memory.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::sync::OnceLock;

use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::routing::MethodFilter;
use bytes::Bytes;
use utoipa::openapi::path::{
    HttpMethod, Operation, OperationBuilder, ParameterBuilder, ParameterIn,
};
use utoipa::openapi::request_body::RequestBodyBuilder;
use utoipa::openapi::response::ResponseBuilder;
use utoipa::openapi::schema::{ObjectBuilder, SchemaType, Type};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityRequirement, SecurityScheme};
use utoipa::openapi::{ContentBuilder, Ref, RefOr, Required, Schema};
use utoipa::{IntoResponses, Modify, OpenApi, PartialSchema, ToSchema};

use crate::config::{Duration, MAX_DURATION_SECS, duration_pattern};
use crate::error::{AppError, ErrorBody, ErrorDetail};
use crate::services::proxy::routes::{Kind, ROUTES, RouteSpec};

/// The name of the security scheme every authenticated route requires.
pub const BEARER: &str = "bearer";

/// Durations are strings — a whole number followed by `s`, `m`, `h`, `d` or `w` — or a
/// whole number of seconds; from 1 second to 100 years either way. The pattern is the
/// parser's own ([`crate::config::duration_pattern`]).
///
/// utoipa takes every type *named* `Duration` for chrono's, so schema-deriving types
/// import this one as `HumanDuration`, which resolves to these impls.
impl PartialSchema for Duration {
    fn schema() -> RefOr<Schema> {
        ObjectBuilder::new()
            .schema_type(SchemaType::from_iter([Type::String, Type::Integer]))
            .description(Some(
                "A whole number followed by `s`, `m`, `h`, `d` or `w` (e.g. `30d`; no sign, \
                 space or fraction), or a number of seconds; from 1 second to 100 years.",
            ))
            .pattern(Some(duration_pattern()))
            .minimum(Some(1))
            .maximum(Some(MAX_DURATION_SECS))
            .examples(["30d"])
            .into()
    }
}

impl ToSchema for Duration {
    fn name() -> Cow<'static, str> {
        Cow::Borrowed("Duration")
    }
}

/// The shared error responses: status, name under `#/components/responses`, meaning.
const ERROR_RESPONSES: &[(u16, &str, &str)] = &[
    (
        400,
        "BadRequest",
        "The request is invalid (`invalid_request`); the message names the field.",
    ),
    (
        401,
        "Unauthorized",
        "Missing, unknown or expired credentials.",
    ),
    (
        403,
        "Forbidden",
        "The caller may not do this: role, blocked key or team, route or model not allowed.",
    ),
    (404, "NotFound", "No such key, team or mapping."),
    (
        413,
        "PayloadTooLarge",
        "The request body is larger than `server.max_body_bytes`.",
    ),
    (
        409,
        "Conflict",
        "Conflicts with what exists (a duplicate, or a team that still has keys).",
    ),
    (
        429,
        "TooManyRequests",
        "A budget, rate or parallel-request limit was reached (`Retry-After` on rate limits).",
    ),
    (
        502,
        "BadGateway",
        "Ollama could not be reached or failed (`upstream_error`).",
    ),
    (
        503,
        "ServiceUnavailable",
        "A dependency (database, limits, identity provider) is unavailable.",
    ),
    (
        504,
        "GatewayTimeout",
        "Ollama did not answer in time (`upstream_timeout`).",
    ),
];

/// Ollama's 4xx answers on the proxied routes, as `4XX`: name and meaning.
const UPSTREAM_REJECTED: (&str, &str) = (
    "UpstreamRejected",
    "Ollama refused the request (e.g. 404 for a model it does not have): its status and \
     message, in the envelope (`upstream_rejected`).",
);

/// References to the shared error responses with these statuses.
fn error_refs(statuses: &[u16]) -> BTreeMap<String, RefOr<utoipa::openapi::Response>> {
    ERROR_RESPONSES
        .iter()
        .filter(|(status, ..)| statuses.contains(status))
        .map(|(status, name, _)| {
            (
                status.to_string(),
                RefOr::Ref(Ref::from_response_name(*name)),
            )
        })
        .collect()
}

/// Errors every management route can answer with: 400, 401, 403, 503.
pub struct ManageErrors;

impl IntoResponses for ManageErrors {
    fn responses() -> BTreeMap<String, RefOr<utoipa::openapi::Response>> {
        error_refs(&[400, 401, 403, 503])
    }
}

/// 413: a management route with a JSON body got one over `server.max_body_bytes`.
pub struct BodyTooLarge;

impl IntoResponses for BodyTooLarge {
    fn responses() -> BTreeMap<String, RefOr<utoipa::openapi::Response>> {
        error_refs(&[413])
    }
}

/// 404: the key, team or mapping named does not exist.
pub struct NotFoundError;

impl IntoResponses for NotFoundError {
    fn responses() -> BTreeMap<String, RefOr<utoipa::openapi::Response>> {
        error_refs(&[404])
    }
}

/// 409: conflicts with what exists.
pub struct ConflictError;

impl IntoResponses for ConflictError {
    fn responses() -> BTreeMap<String, RefOr<utoipa::openapi::Response>> {
        error_refs(&[409])
    }
}

/// 400 alone.
pub struct BadRequestError;

impl IntoResponses for BadRequestError {
    fn responses() -> BTreeMap<String, RefOr<utoipa::openapi::Response>> {
        error_refs(&[400])
    }
}

/// What the proxied routes can answer with besides Ollama's own response.
const PROXY_ERRORS: &[u16] = &[400, 401, 403, 413, 429, 502, 503, 504];

#[derive(OpenApi)]
#[openapi(
    info(
        title = "tollgate",
        description = "A virtual-key gateway in front of Ollama: Ollama's native and \
            OpenAI-compatible routes behind virtual keys, with a LiteLLM-compatible \
            management API. Every response carries `X-Request-ID`."
    ),
    paths(
        super::ops::healthz,
        super::ops::readyz,
        super::ops::metrics,
        openapi_json,
        crate::http::console::issue_ticket,
        crate::http::console::ws::events,
        crate::http::console::index,
    ),
    components(schemas(ErrorBody, ErrorDetail)),
    modifiers(&Shared),
    tags(
        (name = "proxy", description = "Ollama's routes, forwarded (SPEC §4.1)"),
        (name = "keys", description = "Virtual keys"),
        (name = "teams", description = "Teams"),
        (name = "mappings", description = "JWT claim → virtual key mappings"),
        (name = "spend", description = "Usage"),
        (name = "audit", description = "The audit log of management changes"),
        (name = "upstream", description = "The Ollama servers: status, drain, undrain"),
        (name = "console", description = "The admin console and its live feed"),
        (name = "operations", description = "Health, readiness, metrics, this document")
    )
)]
struct ApiDoc;

/// Adds the security scheme, the shared error responses, the management routes and the
/// proxied routes.
struct Shared;

impl Modify for Shared {
    fn modify(&self, doc: &mut utoipa::openapi::OpenApi) {
        doc.merge(crate::http::admin::openapi());
        let components = doc.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            BEARER,
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some(
                        "A virtual key (`sk-…`), the master key, or a JWT from a configured \
                         issuer, as `Authorization: Bearer …`.",
                    ))
                    .build(),
            ),
        );
        let upstream = (0, UPSTREAM_REJECTED.0, UPSTREAM_REJECTED.1);
        for (_, name, description) in ERROR_RESPONSES.iter().chain([&upstream]) {
            components.responses.insert(
                (*name).to_string(),
                RefOr::T(
                    ResponseBuilder::new()
                        .description(*description)
                        .content(
                            "application/json",
                            ContentBuilder::new()
                                .schema(Some(Ref::from_schema_name(ErrorBody::name())))
                                .build(),
                        )
                        .build(),
                ),
            );
        }
        for spec in ROUTES {
            let path = openapi_path(spec.path);
            for method in methods(spec.methods) {
                let operation = proxy_operation(spec, &method);
                doc.paths.add_path_operation(&path, vec![method], operation);
            }
        }
        // utoipa names operations after their handler functions, which repeat across
        // resources (`create`, `list`): name every operation after its method and path.
        for (path, item) in doc.paths.paths.iter_mut() {
            for (method, operation) in [
                ("get", &mut item.get),
                ("head", &mut item.head),
                ("post", &mut item.post),
                ("put", &mut item.put),
                ("patch", &mut item.patch),
                ("delete", &mut item.delete),
            ] {
                if let Some(operation) = operation {
                    operation.operation_id = Some(operation_id(method, path));
                }
            }
        }
    }
}

/// `post /jwt/key/mapping/new` → `post_jwt_key_mapping_new`.
fn operation_id(method: &str, path: &str) -> String {
    let words: Vec<&str> = path
        .split(|c: char| !c.is_ascii_alphanumeric())
        .filter(|w| !w.is_empty())
        .collect();
    format!("{method}_{}", words.join("_"))
}

/// axum's `{*rest}` wildcards are plain `{rest}` parameters in OpenAPI.
pub fn openapi_path(path: &str) -> String {
    path.replace("{*", "{")
}

/// The methods a route's filter allows.
fn methods(filter: MethodFilter) -> Vec<HttpMethod> {
    [
        (MethodFilter::GET, HttpMethod::Get),
        (MethodFilter::HEAD, HttpMethod::Head),
        (MethodFilter::POST, HttpMethod::Post),
        (MethodFilter::PUT, HttpMethod::Put),
        (MethodFilter::PATCH, HttpMethod::Patch),
        (MethodFilter::DELETE, HttpMethod::Delete),
    ]
    .into_iter()
    .filter(|(one, _)| filter.or(*one) == filter)
    .map(|(_, method)| method)
    .collect()
}

fn method_name(method: &HttpMethod) -> &'static str {
    match method {
        HttpMethod::Get => "get",
        HttpMethod::Post => "post",
        HttpMethod::Put => "put",
        HttpMethod::Delete => "delete",
        HttpMethod::Options => "options",
        HttpMethod::Head => "head",
        HttpMethod::Patch => "patch",
        HttpMethod::Trace => "trace",
    }
}

fn kind_note(kind: Kind) -> &'static str {
    match kind {
        Kind::NativeGenerate => {
            "Streams NDJSON by default (`stream` absent means true); usage comes from \
             the final frame."
        }
        Kind::NativeEmbed => "One JSON object; usage from `prompt_eval_count`.",
        Kind::OpenAiCompletion => {
            "Server-sent events when `stream` is true; usage from `usage`, which the \
             gateway requests from Ollama and hides again unless the client asked for it."
        }
        Kind::OpenAiOther => "Usage from `usage`; server-sent events when `stream` is true.",
        Kind::ModelOnly => "The `model` must be allowed for the caller.",
        Kind::NativeList => "Lists only the caller's allowed models.",
        Kind::OpenAiList => "Lists only the caller's allowed models.",
        Kind::OpenAiModel => "The model in the path must be allowed for the caller.",
        Kind::Plain => "Passed through unchanged.",
    }
}

/// A JSON object of any shape.
fn any_object() -> Schema {
    ObjectBuilder::new().schema_type(Type::Object).into()
}

/// One proxied route and method: whatever Ollama takes, whatever Ollama answers.
fn proxy_operation(spec: &RouteSpec, method: &HttpMethod) -> Operation {
    let path = openapi_path(spec.path);
    let mut description = format!("Forwarded to Ollama. {}", kind_note(spec.kind));
    if spec.admin_only {
        description.push_str(" **Admin only**: the master key or an admin identity.");
    }
    let blobs = spec.path.starts_with("/api/blobs/");
    let mut ok = ResponseBuilder::new()
        .description("Ollama's response (NDJSON or SSE when streaming)")
        .content(
            "application/json",
            ContentBuilder::new().schema(Some(any_object())).build(),
        );
    if matches!(method, HttpMethod::Head) {
        // No body, so no content type.
        ok = ResponseBuilder::new().description("Ollama's answer: the blob exists");
    }
    match spec.kind {
        Kind::NativeGenerate => {
            ok = ok.content("application/x-ndjson", ContentBuilder::new().build());
        }
        Kind::OpenAiCompletion | Kind::OpenAiOther => {
            ok = ok.content("text/event-stream", ContentBuilder::new().build());
        }
        _ => {}
    }
    let mut operation = OperationBuilder::new()
        .tag("proxy")
        .summary(Some(format!(
            "{} {path}",
            method_name(method).to_ascii_uppercase()
        )))
        .description(Some(description))
        .response("200", ok.build())
        .security(SecurityRequirement::new(BEARER, Vec::<String>::new()));
    for (status, response) in error_refs(PROXY_ERRORS) {
        operation = operation.response(status, response);
    }
    // Ollama's own refusals keep their status (SPEC §4.1), e.g. 404 for a missing model.
    operation = operation.response(
        "4XX",
        RefOr::Ref(Ref::from_response_name(UPSTREAM_REJECTED.0)),
    );
    if blobs && matches!(method, HttpMethod::Post) {
        operation = operation.response(
            "201",
            ResponseBuilder::new()
                .description("Ollama's answer: the blob was stored")
                .build(),
        );
    }
    for name in path_parameters(&path) {
        let note = if blobs {
            "A blob digest, e.g. `sha256:…`."
        } else {
            "A model name."
        };
        operation = operation.parameter(
            ParameterBuilder::new()
                .name(name)
                .parameter_in(ParameterIn::Path)
                .required(Required::True)
                .description(Some(note))
                .schema(Some(ObjectBuilder::new().schema_type(Type::String))),
        );
    }
    if matches!(method, HttpMethod::Post | HttpMethod::Delete) {
        let content = if blobs {
            ("application/octet-stream", ContentBuilder::new().build())
        } else {
            (
                "application/json",
                ContentBuilder::new().schema(Some(any_object())).build(),
            )
        };
        operation = operation.request_body(Some(
            RequestBodyBuilder::new()
                .description(Some("Ollama's request body, as Ollama documents it."))
                .content(content.0, content.1)
                .required(Some(Required::True))
                .build(),
        ));
    }
    operation.build()
}

/// The `{name}` parameters of a path.
fn path_parameters(path: &str) -> impl Iterator<Item = &str> {
    path.split('/')
        .filter_map(|segment| segment.strip_prefix('{')?.strip_suffix('}'))
}

/// The whole document as utoipa builds it: management, proxy, console and operational
/// routes.
pub fn document() -> utoipa::openapi::OpenApi {
    ApiDoc::openapi()
}

/// The document as served: [`document`] refined with what the handlers enforce beyond
/// the derived shapes ([`super::openapi_rules`]).
pub fn document_json() -> Result<serde_json::Value, String> {
    let mut doc = serde_json::to_value(document()).map_err(|e| e.to_string())?;
    super::openapi_rules::apply(&mut doc)?;
    Ok(doc)
}

/// This document, as JSON (no authentication: it describes the API, it holds no secrets).
#[utoipa::path(
    get, path = "/openapi.json", tag = "operations",
    responses((status = 200, description = "This OpenAPI document", body = Object)),
)]
pub async fn openapi_json() -> Result<Response, AppError> {
    static JSON: OnceLock<Result<Bytes, String>> = OnceLock::new();
    let json = JSON.get_or_init(|| {
        document_json()
            .and_then(|doc| serde_json::to_vec(&doc).map_err(|e| e.to_string()))
            .map(Bytes::from)
    });
    match json {
        Ok(body) => {
            Ok(([(header::CONTENT_TYPE, "application/json")], body.clone()).into_response())
        }
        Err(e) => Err(AppError::internal(anyhow::anyhow!(
            "could not serialize the OpenAPI document: {e}"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn operation<'a>(
        doc: &'a utoipa::openapi::OpenApi,
        path: &str,
        method: HttpMethod,
    ) -> Option<&'a Operation> {
        doc.paths.get_path_operation(path, method)
    }

    #[test]
    fn is_valid_json_of_openapi_3() {
        let value = document_json().expect("every rule finds its target");
        assert!(
            value["openapi"]
                .as_str()
                .is_some_and(|v| v.starts_with("3."))
        );
    }

    #[test]
    fn every_admin_route_is_documented() {
        let doc = document();
        let routes = crate::http::admin::routes();
        assert!(!routes.is_empty());
        for (_, (_, paths, _)) in routes {
            for (path, item) in paths.paths {
                for method in [HttpMethod::Get, HttpMethod::Post] {
                    let registered = match method {
                        HttpMethod::Get => item.get.is_some(),
                        _ => item.post.is_some(),
                    };
                    if registered {
                        let op = operation(&doc, &path, method)
                            .unwrap_or_else(|| panic!("{path} missing from the document"));
                        assert!(op.security.is_some(), "{path} has no security");
                    }
                }
            }
        }
    }

    #[test]
    fn every_proxied_route_is_documented() {
        let doc = document();
        for spec in ROUTES {
            let path = openapi_path(spec.path);
            let methods = methods(spec.methods);
            assert!(!methods.is_empty(), "{path} has no methods");
            for method in methods {
                let op = operation(&doc, &path, method)
                    .unwrap_or_else(|| panic!("{path} missing from the document"));
                assert!(op.responses.responses.contains_key("502"));
            }
        }
    }

    #[test]
    fn unauthenticated_routes_have_no_security() {
        let doc = document();
        for path in ["/healthz", "/readyz", "/metrics", "/openapi.json"] {
            let op = operation(&doc, path, HttpMethod::Get).expect("documented");
            assert!(op.security.is_none(), "{path} demands credentials");
        }
    }

    #[test]
    fn operation_ids_are_unique() {
        let json = serde_json::to_value(document()).expect("serializes");
        let mut seen = std::collections::HashSet::new();
        for (path, item) in json["paths"].as_object().expect("paths") {
            for (method, operation) in item.as_object().expect("path item") {
                let id = operation["operationId"].as_str().expect("operationId");
                assert!(
                    seen.insert(id.to_string()),
                    "{method} {path}: `{id}` repeats"
                );
            }
        }
        assert_eq!(
            operation_id("post", "/jwt/key/mapping/new"),
            "post_jwt_key_mapping_new"
        );
    }

    #[test]
    fn wildcards_become_parameters() {
        assert_eq!(openapi_path("/api/blobs/{*digest}"), "/api/blobs/{digest}");
        assert_eq!(
            path_parameters("/v1/models/{model}").collect::<Vec<_>>(),
            ["model"]
        );
    }
}
