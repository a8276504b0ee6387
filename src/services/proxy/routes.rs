//! The proxied route table (SPEC §4.1): exactly these paths reach Ollama; anything else is
//! a 404 from the router's fallback.

use std::sync::OnceLock;

use axum::routing::MethodFilter;

use crate::store::RequestStatus;
use crate::telemetry::RouteMetrics;

/// How a route's request and response are treated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// `/api/chat`, `/api/generate`: NDJSON stream by default, counts in the final frame.
    NativeGenerate,
    /// `/api/embed`: one JSON object with `prompt_eval_count`.
    NativeEmbed,
    /// `/v1/chat/completions`, `/v1/completions`: SSE when `stream`, usage requested from
    /// Ollama and hidden again unless the client asked for it.
    OpenAiCompletion,
    /// `/v1/embeddings`, `/v1/responses`, `/v1/messages`: `usage` in the body or events.
    OpenAiOther,
    /// Carries a `model` but no token counts (`/api/show`, `/api/embeddings`).
    ModelOnly,
    /// `/api/tags`, `/api/ps`: lists filtered to the caller's models by `name`/`model`.
    NativeList,
    /// `/v1/models`: list filtered by `id`.
    OpenAiList,
    /// `/v1/models/{model}`: the model in the path must be allowed.
    OpenAiModel,
    /// Passed through untouched (`/api/version`, Ollama's admin routes).
    Plain,
}

#[derive(Debug)]
pub struct RouteSpec {
    pub path: &'static str,
    pub methods: MethodFilter,
    pub kind: Kind,
    /// Needs the master key or an admin identity (when `upstream.admin_routes_require_admin`).
    pub admin_only: bool,
}

impl RouteSpec {
    /// This route's metric handles.
    pub fn metrics(&'static self) -> Option<&'static RouteMetrics> {
        static TABLE: OnceLock<Box<[RouteMetrics]>> = OnceLock::new();
        let table = TABLE.get_or_init(|| {
            let statuses = RequestStatus::ALL.map(RequestStatus::as_str);
            ROUTES
                .iter()
                .map(|route| RouteMetrics::new(route.path, &statuses))
                .collect()
        });
        let index = ROUTES.iter().position(|route| std::ptr::eq(route, self))?;
        table.get(index)
    }
}

const fn spec(
    path: &'static str,
    methods: MethodFilter,
    kind: Kind,
    admin_only: bool,
) -> RouteSpec {
    RouteSpec {
        path,
        methods,
        kind,
        admin_only,
    }
}

pub static ROUTES: &[RouteSpec] = &[
    spec("/api/chat", MethodFilter::POST, Kind::NativeGenerate, false),
    spec(
        "/api/generate",
        MethodFilter::POST,
        Kind::NativeGenerate,
        false,
    ),
    spec("/api/embed", MethodFilter::POST, Kind::NativeEmbed, false),
    spec(
        "/api/embeddings",
        MethodFilter::POST,
        Kind::ModelOnly,
        false,
    ),
    spec("/api/show", MethodFilter::POST, Kind::ModelOnly, false),
    spec("/api/tags", MethodFilter::GET, Kind::NativeList, false),
    spec("/api/ps", MethodFilter::GET, Kind::NativeList, false),
    spec("/api/version", MethodFilter::GET, Kind::Plain, false),
    spec(
        "/v1/chat/completions",
        MethodFilter::POST,
        Kind::OpenAiCompletion,
        false,
    ),
    spec(
        "/v1/completions",
        MethodFilter::POST,
        Kind::OpenAiCompletion,
        false,
    ),
    spec(
        "/v1/embeddings",
        MethodFilter::POST,
        Kind::OpenAiOther,
        false,
    ),
    spec(
        "/v1/responses",
        MethodFilter::POST,
        Kind::OpenAiOther,
        false,
    ),
    spec("/v1/messages", MethodFilter::POST, Kind::OpenAiOther, false),
    spec("/v1/models", MethodFilter::GET, Kind::OpenAiList, false),
    spec(
        "/v1/models/{model}",
        MethodFilter::GET,
        Kind::OpenAiModel,
        false,
    ),
    spec("/api/pull", MethodFilter::POST, Kind::Plain, true),
    spec("/api/push", MethodFilter::POST, Kind::Plain, true),
    spec("/api/create", MethodFilter::POST, Kind::Plain, true),
    spec("/api/copy", MethodFilter::POST, Kind::Plain, true),
    spec("/api/delete", MethodFilter::DELETE, Kind::Plain, true),
    spec(
        "/api/blobs/{*digest}",
        MethodFilter::HEAD
            .or(MethodFilter::POST)
            .or(MethodFilter::GET),
        Kind::Plain,
        true,
    ),
];
