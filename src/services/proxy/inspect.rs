//! Reading what the gateway needs from a request body — model, streaming, output bound —
//! without building a full JSON tree, and rewriting the body only when policy requires
//! it (dropping `keep_alive`, asking Ollama for streamed usage).

use std::borrow::Cow;

use bytes::Bytes;
use serde::Deserialize;
use serde::de::IgnoredAny;

use super::routes::Kind;
use crate::config::UpstreamConfig;
use crate::error::AppError;
use crate::json::parse_json;

#[derive(Deserialize)]
struct Probe<'a> {
    #[serde(borrow, default)]
    model: Option<Cow<'a, str>>,
    /// Ollama still accepts the legacy `name` (e.g. `/api/show`) when `model` is empty.
    #[serde(borrow, default)]
    name: Option<Cow<'a, str>>,
    #[serde(default)]
    stream: Option<bool>,
    #[serde(default)]
    keep_alive: Option<IgnoredAny>,
    #[serde(default)]
    options: Option<ProbeOptions>,
    #[serde(default)]
    stream_options: Option<ProbeStreamOptions>,
    #[serde(default)]
    max_tokens: Option<u64>,
    #[serde(default)]
    max_completion_tokens: Option<u64>,
    #[serde(default)]
    max_output_tokens: Option<u64>,
}

#[derive(Deserialize)]
struct ProbeOptions {
    #[serde(default)]
    num_ctx: Option<u64>,
    #[serde(default)]
    num_predict: Option<i64>,
}

#[derive(Deserialize)]
struct ProbeStreamOptions {
    #[serde(default)]
    include_usage: Option<bool>,
}

/// What the proxy learned from a request body.
#[derive(Debug, Clone, Default)]
pub struct RequestFacts {
    pub model: Option<String>,
    /// The response will be a stream (NDJSON or SSE).
    pub stream: bool,
    /// For streaming OpenAI completions: did the client itself ask for the usage chunk?
    pub client_wants_usage: bool,
    /// The most output tokens the request can produce, when it says so.
    pub output_bound: Option<u64>,
    /// A rough prompt size in tokens (bytes / 4), for reservations.
    pub prompt_estimate: u64,
}

/// Inspects (and, when policy demands, rewrites) a JSON request body.
pub fn inspect(
    kind: Kind,
    body: Bytes,
    is_admin: bool,
    policy: &UpstreamConfig,
) -> Result<(RequestFacts, Bytes), AppError> {
    if body.is_empty() {
        return Ok((RequestFacts::default(), body));
    }
    let probe: Probe<'_> = parse_json(&body)?;
    let stream = match kind {
        Kind::NativeGenerate => probe.stream.unwrap_or(true),
        _ => probe.stream.unwrap_or(false),
    };
    if !is_admin
        && let (Some(max), Some(asked)) = (
            policy.max_num_ctx,
            probe.options.as_ref().and_then(|o| o.num_ctx),
        )
        && asked > max
    {
        return Err(AppError::invalid(format!(
            "options.num_ctx {asked} exceeds the allowed maximum of {max}"
        )));
    }
    let output_bound = probe
        .options
        .as_ref()
        .and_then(|o| o.num_predict)
        .and_then(|n| u64::try_from(n).ok())
        .or(probe.max_completion_tokens)
        .or(probe.max_tokens)
        .or(probe.max_output_tokens);
    let client_wants_usage = probe
        .stream_options
        .as_ref()
        .and_then(|s| s.include_usage)
        .unwrap_or(false);
    let strip_keep_alive = !is_admin && !policy.allow_keep_alive && probe.keep_alive.is_some();
    let inject_usage = kind == Kind::OpenAiCompletion && stream && !client_wants_usage;
    let facts = RequestFacts {
        model: probe
            .model
            .filter(|m| !m.is_empty())
            .or(probe.name)
            .map(Cow::into_owned),
        stream,
        client_wants_usage,
        output_bound,
        prompt_estimate: (body.len() as u64).div_ceil(4),
    };
    if !strip_keep_alive && !inject_usage {
        return Ok((facts, body));
    }
    let mut object: serde_json::Map<String, serde_json::Value> = parse_json(&body)?;
    if strip_keep_alive {
        object.remove("keep_alive");
    }
    if inject_usage {
        let options = object
            .entry("stream_options")
            .or_insert_with(|| serde_json::json!({}));
        match options {
            serde_json::Value::Object(o) => {
                o.insert("include_usage".into(), serde_json::Value::Bool(true));
            }
            _ => {
                return Err(AppError::invalid(
                    "field `stream_options` must be an object",
                ));
            }
        }
    }
    let rewritten = serde_json::to_vec(&object).map_err(AppError::internal)?;
    Ok((facts, Bytes::from(rewritten)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> UpstreamConfig {
        UpstreamConfig::default()
    }

    fn run(kind: Kind, body: &str, admin: bool) -> (RequestFacts, serde_json::Value) {
        let (facts, out) =
            inspect(kind, Bytes::from(body.to_string()), admin, &policy()).expect("ok");
        (facts, serde_json::from_slice(&out).expect("json"))
    }

    #[test]
    fn native_chat_streams_by_default() {
        let (facts, _) = run(
            Kind::NativeGenerate,
            r#"{"model":"m","messages":[]}"#,
            false,
        );
        assert!(facts.stream);
        assert_eq!(facts.model.as_deref(), Some("m"));
        let (facts, _) = run(
            Kind::NativeGenerate,
            r#"{"model":"m","stream":false}"#,
            false,
        );
        assert!(!facts.stream);
    }

    #[test]
    fn keep_alive_is_removed_for_tenants_but_kept_for_admins() {
        let (_, body) = run(
            Kind::NativeGenerate,
            r#"{"model":"m","keep_alive":0}"#,
            false,
        );
        assert!(body.get("keep_alive").is_none());
        let (_, body) = run(
            Kind::NativeGenerate,
            r#"{"model":"m","keep_alive":0}"#,
            true,
        );
        assert_eq!(body["keep_alive"], 0);
    }

    #[test]
    fn streaming_openai_asks_for_usage() {
        let (facts, body) = run(
            Kind::OpenAiCompletion,
            r#"{"model":"m","stream":true}"#,
            false,
        );
        assert!(!facts.client_wants_usage);
        assert_eq!(body["stream_options"]["include_usage"], true);
        let (facts, _) = run(
            Kind::OpenAiCompletion,
            r#"{"model":"m","stream":true,"stream_options":{"include_usage":true}}"#,
            false,
        );
        assert!(facts.client_wants_usage);
    }

    #[test]
    fn num_ctx_cap() {
        let mut p = policy();
        p.max_num_ctx = Some(4096);
        let body = Bytes::from_static(br#"{"model":"m","options":{"num_ctx":8192}}"#);
        assert!(inspect(Kind::NativeGenerate, body.clone(), false, &p).is_err());
        assert!(inspect(Kind::NativeGenerate, body, true, &p).is_ok());
    }

    #[test]
    fn output_bounds_are_read() {
        let (f, _) = run(
            Kind::NativeGenerate,
            r#"{"model":"m","options":{"num_predict":64}}"#,
            false,
        );
        assert_eq!(f.output_bound, Some(64));
        let (f, _) = run(
            Kind::OpenAiCompletion,
            r#"{"model":"m","max_tokens":32}"#,
            false,
        );
        assert_eq!(f.output_bound, Some(32));
        let (f, _) = run(
            Kind::OpenAiCompletion,
            r#"{"model":"m","max_completion_tokens":16}"#,
            false,
        );
        assert_eq!(f.output_bound, Some(16));
    }

    #[test]
    fn malformed_json_is_a_400() {
        let err = inspect(
            Kind::NativeGenerate,
            Bytes::from_static(b"{nope"),
            false,
            &policy(),
        );
        assert!(matches!(err, Err(AppError::InvalidRequest(_))));
    }
}
