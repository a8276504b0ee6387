//! Reading what the gateway needs from a request body — model, streaming, output bound —
//! without building a full JSON tree, and rewriting the body only when policy requires
//! it (dropping `keep_alive`, asking Ollama for streamed usage).

use bytes::Bytes;
use serde::Deserialize;
use serde::de::IgnoredAny;

use super::routes::Kind;
use crate::config::UpstreamConfig;
use crate::error::AppError;
use crate::json::parse_json;

/// Where a route's body names its model (SPEC §5.2.4).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ModelField {
    /// A non-empty string `model` is required.
    Required,
    /// `/api/show`: `model`, or Ollama's legacy `name` when `model` is absent or empty.
    ModelOrName,
    /// The body names no model that matters (lists; `/v1/models/{model}` has it in the path).
    None,
}

#[derive(Deserialize)]
struct Probe {
    /// Read as any JSON value so that a model of the wrong type is refused by name.
    #[serde(default)]
    model: Option<serde_json::Value>,
    #[serde(default)]
    name: Option<serde_json::Value>,
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

/// The model a body names, by the route's rule: a request on a model route without a
/// model it can be checked against is 400 naming `model`, so nothing unchecked goes on.
fn model_of(
    rule: ModelField,
    model: Option<serde_json::Value>,
    name: Option<serde_json::Value>,
) -> Result<Option<String>, AppError> {
    use serde_json::Value;
    match (rule, model) {
        (ModelField::None, _) => Ok(None),
        (_, Some(Value::String(m))) if !m.is_empty() => Ok(Some(m)),
        (ModelField::Required, None) => Err(AppError::invalid("missing field `model`")),
        (ModelField::Required, Some(_)) => Err(AppError::invalid(
            "field `model` must be a non-empty model name",
        )),
        (ModelField::ModelOrName, Some(Value::String(_)) | None) => match name {
            Some(Value::String(n)) if !n.is_empty() => Ok(Some(n)),
            None => Err(AppError::invalid("missing field `model`")),
            Some(_) => Err(AppError::invalid(
                "field `model` (or `name`) must be a non-empty model name",
            )),
        },
        (ModelField::ModelOrName, Some(_)) => Err(AppError::invalid(
            "field `model` must be a non-empty model name",
        )),
    }
}

/// Inspects (and, when policy demands, rewrites) a JSON request body. An empty body is
/// fine only where no model is needed.
pub fn inspect(
    kind: Kind,
    rule: ModelField,
    body: Bytes,
    is_admin: bool,
    policy: &UpstreamConfig,
) -> Result<(RequestFacts, Bytes), AppError> {
    if body.is_empty() {
        model_of(rule, None, None)?;
        return Ok((RequestFacts::default(), body));
    }
    let probe: Probe = parse_json(&body)?;
    let model = model_of(rule, probe.model, probe.name)?;
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
        model,
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
        let (facts, out) = inspect(
            kind,
            ModelField::Required,
            Bytes::from(body.to_string()),
            admin,
            &policy(),
        )
        .expect("ok");
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
        let rule = ModelField::Required;
        assert!(inspect(Kind::NativeGenerate, rule, body.clone(), false, &p).is_err());
        assert!(inspect(Kind::NativeGenerate, rule, body, true, &p).is_ok());
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
            ModelField::Required,
            Bytes::from_static(b"{nope"),
            false,
            &policy(),
        );
        assert!(matches!(err, Err(AppError::InvalidRequest(_))));
    }

    fn message(rule: ModelField, body: &str) -> Option<String> {
        match inspect(
            Kind::NativeGenerate,
            rule,
            Bytes::from(body.to_string()),
            true,
            &policy(),
        ) {
            Err(AppError::InvalidRequest(m)) => Some(m),
            Err(other) => panic!("unexpected {other:?}"),
            Ok(_) => None,
        }
    }

    #[test]
    fn model_routes_need_a_model_string() {
        for body in [
            "",
            "{}",
            r#"{"messages":[]}"#,
            r#"{"model":null}"#,
            r#"{"model":""}"#,
            r#"{"model":5}"#,
            r#"{"model":["llama3.1:8b"]}"#,
            r#"{"model":{"name":"llama3.1:8b"}}"#,
            r#"{"name":"llama3.1:8b"}"#,
            r#"{"model":"","name":"llama3.1:8b"}"#,
        ] {
            let m = message(ModelField::Required, body).unwrap_or_else(|| panic!("{body}"));
            assert!(m.contains("`model`"), "{body}: {m}");
        }
        assert!(message(ModelField::Required, r#"{"model":"m"}"#).is_none());
    }

    #[test]
    fn show_accepts_the_legacy_name() {
        let facts = |body: &str| {
            inspect(
                Kind::ModelOnly,
                ModelField::ModelOrName,
                Bytes::from(body.to_string()),
                false,
                &policy(),
            )
            .map(|(f, _)| f.model)
        };
        assert_eq!(
            facts(r#"{"model":"a"}"#).ok().flatten().as_deref(),
            Some("a")
        );
        assert_eq!(
            facts(r#"{"name":"b"}"#).ok().flatten().as_deref(),
            Some("b")
        );
        assert_eq!(
            facts(r#"{"model":"","name":"b"}"#)
                .ok()
                .flatten()
                .as_deref(),
            Some("b")
        );
        assert_eq!(
            facts(r#"{"model":"a","name":"b"}"#)
                .ok()
                .flatten()
                .as_deref(),
            Some("a")
        );
        for body in [
            "",
            "{}",
            r#"{"model":""}"#,
            r#"{"name":""}"#,
            r#"{"model":"","name":""}"#,
            r#"{"name":7}"#,
            r#"{"model":7,"name":"b"}"#,
            r#"{"model":null,"name":null}"#,
        ] {
            let m = message(ModelField::ModelOrName, body).unwrap_or_else(|| panic!("{body}"));
            assert!(m.contains("`model`"), "{body}: {m}");
        }
    }

    #[test]
    fn routes_without_a_model_read_none() {
        for body in ["", "{}", r#"{"model":"m"}"#, r#"{"model":5}"#] {
            let (facts, _) = inspect(
                Kind::NativeList,
                ModelField::None,
                Bytes::from(body.to_string()),
                false,
                &policy(),
            )
            .expect(body);
            assert!(facts.model.is_none());
        }
    }
}
