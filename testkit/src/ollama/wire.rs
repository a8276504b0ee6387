//! The mock's routes and payloads: Ollama's native `/api/*` shapes, its OpenAI-compatible
//! `/v1/*` shapes and its Anthropic-compatible `/v1/messages`.
//!
//! Everything here is a pure function of the request and a [`Snapshot`] of the mock's
//! settings (plus the model list, which `pull`/`create`/`copy`/`delete` change); timing,
//! failures and stream bookkeeping live in the parent module.

use axum::http::{Method, StatusCode};
use bytes::Bytes;
use chrono::{SecondsFormat, Utc};
use serde_json::{Map, Value, json};

use super::Shared;

/// Ollama's version as reported by `GET /api/version`.
pub const OLLAMA_VERSION: &str = "0.12.6";

/// Fixed durations (nanoseconds) reported in final frames.
const LOAD_DURATION: u64 = 1_250_000;
const PROMPT_EVAL_DURATION: u64 = 2_500_000;
const EVAL_DURATION_PER_TOKEN: u64 = 3_000_000;

/// Fixed "modified" instant of every model (2025-01-15T10:00:00Z).
const MODIFIED_AT: &str = "2025-01-15T10:00:00.123456789Z";
const MODIFIED_UNIX: i64 = 1_736_935_200;

/// What a route answers, before the parent module applies delays and failures.
#[derive(Debug)]
pub(crate) enum Reply {
    /// A JSON document (`application/json; charset=utf-8`).
    Json(StatusCode, Value),
    /// A plain-text body (`text/plain; charset=utf-8`).
    Text(StatusCode, &'static str),
    /// No body.
    Empty(StatusCode),
    /// A streamed body: each frame is one NDJSON line or one SSE event.
    Stream {
        content_type: &'static str,
        frames: Vec<Bytes>,
    },
}

/// Content type of Ollama's native streams.
pub(crate) const NDJSON: &str = "application/x-ndjson";
/// Content type of the `/v1/*` streams.
pub(crate) const SSE: &str = "text/event-stream";

/// The settings a route needs, copied out of the mock for one request.
#[derive(Debug, Clone)]
pub(crate) struct Snapshot {
    pub(crate) models: Vec<String>,
    pub(crate) prompt_tokens: u64,
    pub(crate) completion_frames: usize,
    /// Scheduler mode: the models in memory, which `/api/ps` lists instead of every
    /// known model.
    pub(crate) loaded: Option<Vec<String>>,
}

/// Which error envelope a path speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Dialect {
    /// `{"error": "message"}`
    Ollama,
    /// `{"error": {"message", "type": "api_error", "param": null, "code": null}}`
    OpenAi,
    /// `{"type": "error", "error": {"type", "message"}, "request_id"}`
    Anthropic,
}

impl Dialect {
    pub(crate) fn for_path(path: &str) -> Self {
        if path == "/v1/messages" {
            Dialect::Anthropic
        } else if path.starts_with("/v1/") {
            Dialect::OpenAi
        } else {
            Dialect::Ollama
        }
    }
}

/// An error in the envelope Ollama uses on that path.
///
/// On `/v1/*` Ollama keeps the status but always labels the error `api_error`
/// (its middleware re-wraps every upstream error as a 500-type error); on
/// `/v1/messages` it uses Anthropic's envelope with a status-derived type.
pub(crate) fn error(dialect: Dialect, status: StatusCode, message: &str) -> Reply {
    let body = match dialect {
        Dialect::Ollama => json!({ "error": message }),
        Dialect::OpenAi => json!({
            "error": { "message": message, "type": "api_error", "param": null, "code": null }
        }),
        Dialect::Anthropic => {
            let kind = match status.as_u16() {
                400 => "invalid_request_error",
                401 => "authentication_error",
                403 => "permission_error",
                404 => "not_found_error",
                429 => "rate_limit_error",
                503 | 529 => "overloaded_error",
                _ => "api_error",
            };
            json!({
                "type": "error",
                "error": { "type": kind, "message": message },
                "request_id": "req_testkit",
            })
        }
    };
    Reply::Json(status, body)
}

/// gin's answer for an unknown route.
fn not_found_page() -> Reply {
    Reply::Text(StatusCode::NOT_FOUND, "404 page not found")
}

fn model_not_found(dialect: Dialect, model: &str) -> Reply {
    error(
        dialect,
        StatusCode::NOT_FOUND,
        &format!("model \"{model}\" not found, try pulling it first"),
    )
}

/// Route one request.
pub(crate) fn route(shared: &Shared, method: &Method, path: &str, body: &[u8]) -> Reply {
    let snap = shared.snapshot();
    let m = method.as_str();
    match (m, path) {
        ("GET" | "HEAD", "/") => Reply::Text(StatusCode::OK, "Ollama is running"),
        ("GET" | "HEAD", "/api/version") => {
            Reply::Json(StatusCode::OK, json!({ "version": OLLAMA_VERSION }))
        }
        ("GET" | "HEAD", "/api/tags") => tags(&snap),
        ("GET" | "HEAD", "/api/ps") => ps(&snap),
        ("POST", "/api/chat") => with_body(Dialect::Ollama, body, |req| {
            generation(&snap, req, Dialect::Ollama, "model")
                .map(|model| api_generation(&snap, &model, Native::Chat, stream_flag(req, true)))
        }),
        ("POST", "/api/generate") => with_body(Dialect::Ollama, body, |req| {
            generation(&snap, req, Dialect::Ollama, "model").map(|model| {
                api_generation(&snap, &model, Native::Generate, stream_flag(req, true))
            })
        }),
        ("POST", "/api/embed") => with_body(Dialect::Ollama, body, |req| {
            generation(&snap, req, Dialect::Ollama, "model")
                .map(|model| api_embed(&snap, req, &model))
        }),
        ("POST", "/api/embeddings") => with_body(Dialect::Ollama, body, |req| {
            generation(&snap, req, Dialect::Ollama, "model").map(|_| {
                let prompt = req.get("prompt").and_then(Value::as_str).unwrap_or("");
                Reply::Json(
                    StatusCode::OK,
                    json!({ "embedding": embedding_for(prompt) }),
                )
            })
        }),
        ("POST", "/api/show") => with_body(Dialect::Ollama, body, |req| {
            generation(&snap, req, Dialect::Ollama, "name").map(|model| show(&model))
        }),
        ("POST", "/api/pull") => with_body(Dialect::Ollama, body, |req| {
            let model = required_model(req, Dialect::Ollama, "name")?;
            shared.add_model(&model);
            Ok(status_stream(req, &pull_statuses(&model)))
        }),
        ("POST", "/api/push") => with_body(Dialect::Ollama, body, |req| {
            let model = generation(&snap, req, Dialect::Ollama, "name")?;
            Ok(status_stream(req, &push_statuses(&model)))
        }),
        ("POST", "/api/create") => with_body(Dialect::Ollama, body, |req| {
            let model = required_model(req, Dialect::Ollama, "name")?;
            shared.add_model(&model);
            Ok(status_stream(req, &create_statuses(&model)))
        }),
        ("POST", "/api/copy") => with_body(Dialect::Ollama, body, |req| {
            let source = req.get("source").and_then(Value::as_str).unwrap_or("");
            let destination = req.get("destination").and_then(Value::as_str).unwrap_or("");
            if source.is_empty() || destination.is_empty() {
                return Err(error(
                    Dialect::Ollama,
                    StatusCode::BAD_REQUEST,
                    "source and destination are required",
                ));
            }
            if find_model(&snap.models, source).is_none() {
                return Err(model_not_found(Dialect::Ollama, source));
            }
            shared.add_model(destination);
            Ok(Reply::Empty(StatusCode::OK))
        }),
        ("DELETE", "/api/delete") => with_body(Dialect::Ollama, body, |req| {
            let model = required_model(req, Dialect::Ollama, "name")?;
            if shared.remove_model(&model) {
                Ok(Reply::Empty(StatusCode::OK))
            } else {
                Err(error(
                    Dialect::Ollama,
                    StatusCode::NOT_FOUND,
                    &format!("model '{model}' not found"),
                ))
            }
        }),
        ("HEAD", p) if is_blob_path(p) => Reply::Empty(StatusCode::OK),
        ("POST", p) if is_blob_path(p) => Reply::Empty(StatusCode::CREATED),
        ("POST", "/v1/chat/completions") => with_body(Dialect::OpenAi, body, |req| {
            generation(&snap, req, Dialect::OpenAi, "model")
                .map(|model| openai_generation(shared, &snap, req, &model, OpenAiKind::Chat))
        }),
        ("POST", "/v1/completions") => with_body(Dialect::OpenAi, body, |req| {
            generation(&snap, req, Dialect::OpenAi, "model")
                .map(|model| openai_generation(shared, &snap, req, &model, OpenAiKind::Completion))
        }),
        ("POST", "/v1/embeddings") => with_body(Dialect::OpenAi, body, |req| {
            generation(&snap, req, Dialect::OpenAi, "model")
                .map(|model| openai_embeddings(&snap, req, &model))
        }),
        ("POST", "/v1/responses") => with_body(Dialect::OpenAi, body, |req| {
            generation(&snap, req, Dialect::OpenAi, "model")
                .map(|model| responses(shared, &snap, req, &model))
        }),
        ("POST", "/v1/messages") => with_body(Dialect::Anthropic, body, |req| {
            generation(&snap, req, Dialect::Anthropic, "model")
                .map(|model| messages(shared, &snap, req, &model))
        }),
        ("GET" | "HEAD", "/v1/models") => Reply::Json(
            StatusCode::OK,
            json!({
                "object": "list",
                "data": snap.models.iter().map(|m| openai_model(m)).collect::<Vec<_>>(),
            }),
        ),
        ("GET" | "HEAD", p) if p.starts_with("/v1/models/") => {
            let wanted = &p["/v1/models/".len()..];
            match find_model(&snap.models, wanted) {
                Some(found) => Reply::Json(StatusCode::OK, openai_model(&found)),
                None => model_not_found(Dialect::OpenAi, wanted),
            }
        }
        _ => not_found_page(),
    }
}

fn is_blob_path(path: &str) -> bool {
    path.strip_prefix("/api/blobs/")
        .is_some_and(|digest| !digest.is_empty() && !digest.contains('/'))
}

/// Parse the JSON body and run `f`, mapping a bad body to a 400 in `dialect`.
fn with_body(
    dialect: Dialect,
    body: &[u8],
    f: impl FnOnce(&Map<String, Value>) -> Result<Reply, Reply>,
) -> Reply {
    if body.iter().all(u8::is_ascii_whitespace) {
        return error(dialect, StatusCode::BAD_REQUEST, "missing request body");
    }
    let parsed: Value = match serde_json::from_slice(body) {
        Ok(v) => v,
        Err(e) => return error(dialect, StatusCode::BAD_REQUEST, &e.to_string()),
    };
    let Value::Object(req) = parsed else {
        return error(dialect, StatusCode::BAD_REQUEST, "invalid request body");
    };
    match f(&req) {
        Ok(reply) | Err(reply) => reply,
    }
}

/// The request's model (`model`, or the legacy `alt` field), or a 400.
fn required_model(req: &Map<String, Value>, dialect: Dialect, alt: &str) -> Result<String, Reply> {
    let model = req
        .get("model")
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
        .or_else(|| req.get(alt).and_then(Value::as_str))
        .unwrap_or("");
    if model.is_empty() {
        return Err(error(dialect, StatusCode::BAD_REQUEST, "model is required"));
    }
    Ok(model.to_owned())
}

/// The request's model, which must be known (else 404 in `dialect`).
fn generation(
    snap: &Snapshot,
    req: &Map<String, Value>,
    dialect: Dialect,
    alt: &str,
) -> Result<String, Reply> {
    let model = required_model(req, dialect, alt)?;
    if find_model(&snap.models, &model).is_none() {
        return Err(model_not_found(dialect, &model));
    }
    Ok(model)
}

/// `stream` as the request set it, else `default`.
fn stream_flag(req: &Map<String, Value>, default: bool) -> bool {
    req.get("stream")
        .and_then(Value::as_bool)
        .unwrap_or(default)
}

/// `llama3.2` and `llama3.2:latest` name the same model.
pub(crate) fn normalize(name: &str) -> String {
    let last = name.rsplit('/').next().unwrap_or(name);
    if last.contains(':') {
        name.to_owned()
    } else {
        format!("{name}:latest")
    }
}

/// The known model `name` refers to, if any.
pub(crate) fn find_model(models: &[String], name: &str) -> Option<String> {
    let wanted = normalize(name);
    models.iter().find(|m| normalize(m) == wanted).cloned()
}

fn now_rfc3339() -> String {
    Utc::now().to_rfc3339_opts(SecondsFormat::Nanos, true)
}

fn now_unix() -> i64 {
    Utc::now().timestamp()
}

/// The content word of frame `i`.
pub(crate) fn word(i: usize) -> String {
    format!("tok{i} ")
}

fn full_text(frames: usize) -> String {
    (0..frames).map(word).collect()
}

fn ndjson(value: &Value) -> Bytes {
    let mut line = value.to_string();
    line.push('\n');
    Bytes::from(line)
}

fn sse_data(value: &Value) -> Bytes {
    Bytes::from(format!("data: {value}\n\n"))
}

fn sse_event(event: &str, value: &Value) -> Bytes {
    Bytes::from(format!("event: {event}\ndata: {value}\n\n"))
}

fn sse_done() -> Bytes {
    Bytes::from_static(b"data: [DONE]\n\n")
}

// ---------------------------------------------------------------- model catalogue

/// FNV-1a, seeded, for deterministic fake digests and sizes.
fn fnv(seed: u64, data: &str) -> u64 {
    let mut hash = 0xcbf2_9ce4_8422_2325_u64 ^ seed.wrapping_mul(0x9e37_79b9_7f4a_7c15);
    for byte in data.bytes() {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    hash
}

/// A deterministic 64-hex-digit digest for a name.
pub(crate) fn digest(name: &str) -> String {
    (0..4).map(|i| format!("{:016x}", fnv(i, name))).collect()
}

fn is_embedding_model(name: &str) -> bool {
    name.contains("embed")
}

fn model_size(name: &str) -> u64 {
    if is_embedding_model(name) {
        274_302_450
    } else {
        2_000_000_000 + fnv(7, name) % 3_000_000_000
    }
}

fn family(name: &str) -> &'static str {
    let base = name.rsplit('/').next().unwrap_or(name);
    if base.starts_with("qwen") {
        "qwen2"
    } else if base.starts_with("nomic") {
        "nomic-bert"
    } else if base.starts_with("gemma") {
        "gemma3"
    } else if base.starts_with("phi") {
        "phi3"
    } else {
        "llama"
    }
}

fn parameter_size(name: &str) -> String {
    if is_embedding_model(name) {
        return "137M".to_owned();
    }
    let tag = name.rsplit(':').next().unwrap_or("");
    tag.strip_suffix('b')
        .and_then(|n| n.parse::<f64>().ok())
        .map_or_else(|| "3.2B".to_owned(), |n| format!("{n:.1}B"))
}

fn details(name: &str) -> Value {
    let family = family(name);
    json!({
        "parent_model": "",
        "format": "gguf",
        "family": family,
        "families": [family],
        "parameter_size": parameter_size(name),
        "quantization_level": if is_embedding_model(name) { "F16" } else { "Q4_K_M" },
    })
}

fn tags(snap: &Snapshot) -> Reply {
    let models: Vec<Value> = snap
        .models
        .iter()
        .map(|m| {
            json!({
                "name": m,
                "model": m,
                "modified_at": MODIFIED_AT,
                "size": model_size(m),
                "digest": digest(m),
                "details": details(m),
            })
        })
        .collect();
    Reply::Json(StatusCode::OK, json!({ "models": models }))
}

fn ps(snap: &Snapshot) -> Reply {
    let expires_at =
        (Utc::now() + chrono::Duration::minutes(5)).to_rfc3339_opts(SecondsFormat::Nanos, true);
    let loaded = snap.loaded.as_ref().unwrap_or(&snap.models);
    let models: Vec<Value> = loaded
        .iter()
        .map(|m| {
            json!({
                "name": m,
                "model": m,
                "size": model_size(m),
                "digest": digest(m),
                "details": details(m),
                "expires_at": expires_at,
                "size_vram": model_size(m),
                "context_length": 4096,
            })
        })
        .collect();
    Reply::Json(StatusCode::OK, json!({ "models": models }))
}

fn show(model: &str) -> Reply {
    let family = family(model);
    let embedding = is_embedding_model(model);
    let digest = digest(model);
    let template = if embedding {
        "{{ .Prompt }}"
    } else {
        "{{ if .System }}<|start_header_id|>system<|end_header_id|>\n\n{{ .System }}<|eot_id|>{{ end }}<|start_header_id|>user<|end_header_id|>\n\n{{ .Prompt }}<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n"
    };
    let parameters = if embedding {
        "num_ctx                        8192"
    } else {
        "stop                           \"<|start_header_id|>\"\nstop                           \"<|end_header_id|>\"\nstop                           \"<|eot_id|>\""
    };
    let parameter = if embedding {
        "num_ctx 8192"
    } else {
        "stop <|eot_id|>"
    };
    let modelfile = format!(
        "# Modelfile generated by \"ollama show\"\n# To build a new Modelfile based on this, replace FROM with:\n# FROM {model}\n\nFROM /root/.ollama/models/blobs/sha256-{digest}\nTEMPLATE \"\"\"{template}\"\"\"\nPARAMETER {parameter}\n"
    );
    let mut model_info = Map::new();
    model_info.insert("general.architecture".into(), json!(family));
    model_info.insert(
        "general.basename".into(),
        json!(model.split(':').next().unwrap_or(model)),
    );
    model_info.insert("general.file_type".into(), json!(15));
    model_info.insert(
        "general.parameter_count".into(),
        json!(model_size(model) * 2),
    );
    model_info.insert("general.quantization_version".into(), json!(2));
    model_info.insert(
        format!("{family}.context_length"),
        json!(if embedding { 2048 } else { 131_072 }),
    );
    model_info.insert(
        format!("{family}.embedding_length"),
        json!(if embedding { 768 } else { 4096 }),
    );
    model_info.insert(
        format!("{family}.block_count"),
        json!(if embedding { 12 } else { 32 }),
    );
    model_info.insert(
        format!("{family}.attention.head_count"),
        json!(if embedding { 12 } else { 32 }),
    );
    let capabilities = if embedding {
        json!(["embedding"])
    } else {
        json!(["completion", "tools"])
    };
    Reply::Json(
        StatusCode::OK,
        json!({
            "license": "TESTKIT MOCK LICENSE\n\nNot a real model.",
            "modelfile": modelfile,
            "parameters": parameters,
            "template": template,
            "details": details(model),
            "model_info": Value::Object(model_info),
            "capabilities": capabilities,
            "modified_at": MODIFIED_AT,
        }),
    )
}

fn openai_model(name: &str) -> Value {
    json!({ "id": name, "object": "model", "created": MODIFIED_UNIX, "owned_by": "library" })
}

// ---------------------------------------------------------------- admin statuses

fn status_stream(req: &Map<String, Value>, statuses: &[Value]) -> Reply {
    if stream_flag(req, true) {
        Reply::Stream {
            content_type: NDJSON,
            frames: statuses.iter().map(ndjson).collect(),
        }
    } else {
        Reply::Json(StatusCode::OK, json!({ "status": "success" }))
    }
}

fn pull_statuses(model: &str) -> Vec<Value> {
    let digest = digest(model);
    let size = model_size(model);
    let layer = format!("pulling {}", &digest[..12]);
    vec![
        json!({ "status": "pulling manifest" }),
        json!({ "status": layer, "digest": format!("sha256:{digest}"), "total": size }),
        json!({ "status": layer, "digest": format!("sha256:{digest}"), "total": size, "completed": size }),
        json!({ "status": "verifying sha256 digest" }),
        json!({ "status": "writing manifest" }),
        json!({ "status": "success" }),
    ]
}

fn push_statuses(model: &str) -> Vec<Value> {
    let digest = digest(model);
    let size = model_size(model);
    let layer = format!("pushing {}", &digest[..12]);
    vec![
        json!({ "status": "retrieving manifest" }),
        json!({ "status": layer, "digest": format!("sha256:{digest}"), "total": size }),
        json!({ "status": layer, "digest": format!("sha256:{digest}"), "total": size, "completed": size }),
        json!({ "status": "pushing manifest" }),
        json!({ "status": "success" }),
    ]
}

fn create_statuses(model: &str) -> Vec<Value> {
    vec![
        json!({ "status": "gathering model components" }),
        json!({ "status": format!("using existing layer sha256:{}", digest(model)) }),
        json!({ "status": "writing manifest" }),
        json!({ "status": "success" }),
    ]
}

// ---------------------------------------------------------------- native generation

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Native {
    Chat,
    Generate,
}

fn durations(snap: &Snapshot) -> (u64, u64) {
    let eval = EVAL_DURATION_PER_TOKEN * snap.completion_frames as u64;
    let total = LOAD_DURATION + PROMPT_EVAL_DURATION + eval + 500_000;
    (eval, total)
}

fn native_final(snap: &Snapshot, model: &str, kind: Native, content: &str) -> Value {
    let (eval_duration, total_duration) = durations(snap);
    let mut frame = Map::new();
    frame.insert("model".into(), json!(model));
    frame.insert("created_at".into(), json!(now_rfc3339()));
    match kind {
        Native::Chat => {
            frame.insert(
                "message".into(),
                json!({ "role": "assistant", "content": content }),
            );
        }
        Native::Generate => {
            frame.insert("response".into(), json!(content));
        }
    }
    frame.insert("done".into(), json!(true));
    frame.insert("done_reason".into(), json!("stop"));
    if kind == Native::Generate {
        frame.insert("context".into(), json!([128_006, 882, 128_007, 271]));
    }
    frame.insert("total_duration".into(), json!(total_duration));
    frame.insert("load_duration".into(), json!(LOAD_DURATION));
    frame.insert("prompt_eval_count".into(), json!(snap.prompt_tokens));
    frame.insert("prompt_eval_duration".into(), json!(PROMPT_EVAL_DURATION));
    frame.insert("eval_count".into(), json!(snap.completion_frames));
    frame.insert("eval_duration".into(), json!(eval_duration));
    Value::Object(frame)
}

fn api_generation(snap: &Snapshot, model: &str, kind: Native, stream: bool) -> Reply {
    if !stream {
        return Reply::Json(
            StatusCode::OK,
            native_final(snap, model, kind, &full_text(snap.completion_frames)),
        );
    }
    let mut frames: Vec<Bytes> = (0..snap.completion_frames)
        .map(|i| {
            let frame = match kind {
                Native::Chat => json!({
                    "model": model,
                    "created_at": now_rfc3339(),
                    "message": { "role": "assistant", "content": word(i) },
                    "done": false,
                }),
                Native::Generate => json!({
                    "model": model,
                    "created_at": now_rfc3339(),
                    "response": word(i),
                    "done": false,
                }),
            };
            ndjson(&frame)
        })
        .collect();
    frames.push(ndjson(&native_final(snap, model, kind, "")));
    Reply::Stream {
        content_type: NDJSON,
        frames,
    }
}

/// The inputs of an embedding request: a string or an array (each element one input).
fn embedding_inputs(req: &Map<String, Value>) -> Vec<String> {
    match req.get("input") {
        Some(Value::String(s)) => vec![s.clone()],
        Some(Value::Array(items)) => items
            .iter()
            .map(|v| v.as_str().map_or_else(|| v.to_string(), str::to_owned))
            .collect(),
        _ => Vec::new(),
    }
}

/// A deterministic 4-dimensional embedding of `text`.
pub(crate) fn embedding_for(text: &str) -> Vec<f32> {
    let h = fnv(42, text);
    (0..4)
        .map(|k| {
            let bits = ((h >> (16 * k)) & 0xffff) as u16;
            f32::from(bits) / 65_535.0 - 0.5
        })
        .collect()
}

fn api_embed(snap: &Snapshot, req: &Map<String, Value>, model: &str) -> Reply {
    let embeddings: Vec<Vec<f32>> = embedding_inputs(req)
        .iter()
        .map(|s| embedding_for(s))
        .collect();
    Reply::Json(
        StatusCode::OK,
        json!({
            "model": model,
            "embeddings": embeddings,
            "total_duration": LOAD_DURATION + PROMPT_EVAL_DURATION,
            "load_duration": LOAD_DURATION,
            "prompt_eval_count": snap.prompt_tokens,
        }),
    )
}

// ---------------------------------------------------------------- OpenAI-compatible

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum OpenAiKind {
    Chat,
    Completion,
}

fn openai_usage(snap: &Snapshot) -> Value {
    json!({
        "prompt_tokens": snap.prompt_tokens,
        "completion_tokens": snap.completion_frames,
        "total_tokens": snap.prompt_tokens + snap.completion_frames as u64,
    })
}

fn openai_generation(
    shared: &Shared,
    snap: &Snapshot,
    req: &Map<String, Value>,
    model: &str,
    kind: OpenAiKind,
) -> Reply {
    let n = shared.next_id();
    let created = now_unix();
    let (id, object, chunk_object) = match kind {
        OpenAiKind::Chat => (
            format!("chatcmpl-{n}"),
            "chat.completion",
            "chat.completion.chunk",
        ),
        OpenAiKind::Completion => (format!("cmpl-{n}"), "text_completion", "text_completion"),
    };
    if !stream_flag(req, false) {
        let text = full_text(snap.completion_frames);
        let choice = match kind {
            OpenAiKind::Chat => json!({
                "index": 0,
                "message": { "role": "assistant", "content": text },
                "finish_reason": "stop",
            }),
            OpenAiKind::Completion => json!({ "text": text, "index": 0, "finish_reason": "stop" }),
        };
        return Reply::Json(
            StatusCode::OK,
            json!({
                "id": id,
                "object": object,
                "created": created,
                "model": model,
                "system_fingerprint": "fp_ollama",
                "choices": [choice],
                "usage": openai_usage(snap),
            }),
        );
    }
    let chunk = |choices: Value| {
        json!({
            "id": id,
            "object": chunk_object,
            "created": created,
            "model": model,
            "system_fingerprint": "fp_ollama",
            "choices": choices,
        })
    };
    let count = snap.completion_frames.max(1);
    let mut frames: Vec<Bytes> = (0..count)
        .map(|i| {
            let content = if snap.completion_frames == 0 {
                String::new()
            } else {
                word(i)
            };
            let finish = if i + 1 == count {
                json!("stop")
            } else {
                Value::Null
            };
            let choice = match kind {
                OpenAiKind::Chat => json!({
                    "index": 0,
                    "delta": { "role": "assistant", "content": content },
                    "finish_reason": finish,
                }),
                OpenAiKind::Completion => {
                    json!({ "text": content, "index": 0, "finish_reason": finish })
                }
            };
            sse_data(&chunk(json!([choice])))
        })
        .collect();
    let include_usage = req
        .get("stream_options")
        .and_then(|o| o.get("include_usage"))
        .and_then(Value::as_bool)
        .unwrap_or(false);
    if include_usage {
        let mut usage_chunk = chunk(json!([]));
        usage_chunk["usage"] = openai_usage(snap);
        frames.push(sse_data(&usage_chunk));
    }
    frames.push(sse_done());
    Reply::Stream {
        content_type: SSE,
        frames,
    }
}

fn openai_embeddings(snap: &Snapshot, req: &Map<String, Value>, model: &str) -> Reply {
    let data: Vec<Value> = embedding_inputs(req)
        .iter()
        .enumerate()
        .map(|(i, s)| json!({ "object": "embedding", "embedding": embedding_for(s), "index": i }))
        .collect();
    Reply::Json(
        StatusCode::OK,
        json!({
            "object": "list",
            "data": data,
            "model": model,
            "usage": { "prompt_tokens": snap.prompt_tokens, "total_tokens": snap.prompt_tokens },
        }),
    )
}

// ---------------------------------------------------------------- /v1/responses

fn responses(shared: &Shared, snap: &Snapshot, req: &Map<String, Value>, model: &str) -> Reply {
    let n = shared.next_id();
    let id = format!("resp_{n}");
    let item_id = format!("msg_{n}");
    let created_at = now_unix();
    let text = full_text(snap.completion_frames);
    let usage = json!({
        "input_tokens": snap.prompt_tokens,
        "output_tokens": snap.completion_frames,
        "total_tokens": snap.prompt_tokens + snap.completion_frames as u64,
    });
    let part = |text: &str| json!({ "type": "output_text", "text": text, "annotations": [] });
    let item = |status: &str, content: Value| {
        json!({
            "type": "message",
            "id": item_id,
            "status": status,
            "role": "assistant",
            "content": content,
        })
    };
    let response = |status: &str, output: Value, usage: Value| {
        json!({
            "id": id,
            "object": "response",
            "created_at": created_at,
            "status": status,
            "model": model,
            "output": output,
            "usage": usage,
        })
    };
    let done_item = item("completed", json!([part(&text)]));
    let completed = response("completed", json!([done_item]), usage);
    if !stream_flag(req, false) {
        return Reply::Json(StatusCode::OK, completed);
    }

    let mut events: Vec<(&str, Value)> = Vec::new();
    let started = response("in_progress", json!([]), Value::Null);
    events.push(("response.created", json!({ "response": started })));
    events.push(("response.in_progress", json!({ "response": started })));
    events.push((
        "response.output_item.added",
        json!({ "output_index": 0, "item": item("in_progress", json!([])) }),
    ));
    events.push((
        "response.content_part.added",
        json!({ "item_id": item_id, "output_index": 0, "content_index": 0, "part": part("") }),
    ));
    for i in 0..snap.completion_frames {
        events.push((
            "response.output_text.delta",
            json!({ "item_id": item_id, "output_index": 0, "content_index": 0, "delta": word(i) }),
        ));
    }
    events.push((
        "response.output_text.done",
        json!({ "item_id": item_id, "output_index": 0, "content_index": 0, "text": text }),
    ));
    events.push((
        "response.content_part.done",
        json!({ "item_id": item_id, "output_index": 0, "content_index": 0, "part": part(&text) }),
    ));
    events.push((
        "response.output_item.done",
        json!({ "output_index": 0, "item": done_item }),
    ));
    events.push(("response.completed", json!({ "response": completed })));

    let frames = events
        .into_iter()
        .enumerate()
        .map(|(seq, (kind, mut data))| {
            data["type"] = json!(kind);
            data["sequence_number"] = json!(seq);
            sse_event(kind, &data)
        })
        .collect();
    Reply::Stream {
        content_type: SSE,
        frames,
    }
}

// ---------------------------------------------------------------- /v1/messages

fn messages(shared: &Shared, snap: &Snapshot, req: &Map<String, Value>, model: &str) -> Reply {
    let id = format!("msg_{:024x}", shared.next_id());
    if !stream_flag(req, false) {
        return Reply::Json(
            StatusCode::OK,
            json!({
                "id": id,
                "type": "message",
                "role": "assistant",
                "model": model,
                "content": [{ "type": "text", "text": full_text(snap.completion_frames) }],
                "stop_reason": "end_turn",
                "stop_sequence": null,
                "usage": { "input_tokens": snap.prompt_tokens, "output_tokens": snap.completion_frames },
            }),
        );
    }
    let mut events: Vec<(&str, Value)> = vec![
        (
            "message_start",
            json!({
                "message": {
                    "id": id,
                    "type": "message",
                    "role": "assistant",
                    "model": model,
                    "content": [],
                    "stop_reason": null,
                    "stop_sequence": null,
                    "usage": { "input_tokens": snap.prompt_tokens, "output_tokens": 0 },
                }
            }),
        ),
        (
            "content_block_start",
            json!({ "index": 0, "content_block": { "type": "text", "text": "" } }),
        ),
    ];
    for i in 0..snap.completion_frames {
        events.push((
            "content_block_delta",
            json!({ "index": 0, "delta": { "type": "text_delta", "text": word(i) } }),
        ));
    }
    events.push(("content_block_stop", json!({ "index": 0 })));
    events.push((
        "message_delta",
        json!({
            "delta": { "stop_reason": "end_turn", "stop_sequence": null },
            "usage": { "output_tokens": snap.completion_frames },
        }),
    ));
    events.push(("message_stop", json!({})));
    let frames = events
        .into_iter()
        .map(|(kind, mut data)| {
            // `type` first, as Anthropic writes it.
            let mut ordered = Map::new();
            ordered.insert("type".into(), json!(kind));
            if let Value::Object(rest) = data.take() {
                ordered.extend(rest);
            }
            sse_event(kind, &Value::Object(ordered))
        })
        .collect();
    Reply::Stream {
        content_type: SSE,
        frames,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_normalize_to_latest() {
        let models = vec!["llama3.2:latest".to_owned(), "qwen2.5:7b".to_owned()];
        assert_eq!(
            find_model(&models, "llama3.2").as_deref(),
            Some("llama3.2:latest")
        );
        assert_eq!(
            find_model(&models, "qwen2.5:7b").as_deref(),
            Some("qwen2.5:7b")
        );
        assert_eq!(find_model(&models, "qwen2.5"), None);
    }

    #[test]
    fn digests_are_64_hex_and_stable() {
        let d = digest("llama3.1:8b");
        assert_eq!(d.len(), 64);
        assert!(d.chars().all(|c| c.is_ascii_hexdigit()));
        assert_eq!(d, digest("llama3.1:8b"));
        assert_ne!(d, digest("llama3.2:latest"));
    }

    #[test]
    fn parameter_sizes() {
        assert_eq!(parameter_size("llama3.1:8b"), "8.0B");
        assert_eq!(parameter_size("llama3.2:latest"), "3.2B");
        assert_eq!(parameter_size("nomic-embed-text:latest"), "137M");
    }

    #[test]
    fn dialects() {
        assert_eq!(Dialect::for_path("/api/chat"), Dialect::Ollama);
        assert_eq!(Dialect::for_path("/v1/chat/completions"), Dialect::OpenAi);
        assert_eq!(Dialect::for_path("/v1/messages"), Dialect::Anthropic);
    }
}
