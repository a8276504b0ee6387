//! Request body inspection over arbitrary bytes, for every route kind and policy.
//!
//! Input: one mode byte (route kind, admin or not, `allow_keep_alive`, a `max_num_ctx`,
//! whether the route needs a model), then the body. Invariants: no panic; a refusal is a 400, never a 5xx; a rewritten
//! body is a JSON object without `keep_alive` when it was stripped and with
//! `stream_options.include_usage` when usage was asked for; inspecting the rewritten
//! body finds the same facts and rewrites nothing more.

#![no_main]

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use serde_json::Value;
use tollgate::config::UpstreamConfig;
use tollgate::services::proxy::fuzzing::{ModelField, inspect};
use tollgate::services::proxy::routes::Kind;

const KINDS: [Kind; 9] = [
    Kind::NativeGenerate,
    Kind::NativeEmbed,
    Kind::OpenAiCompletion,
    Kind::OpenAiOther,
    Kind::ModelOnly,
    Kind::NativeList,
    Kind::OpenAiList,
    Kind::OpenAiModel,
    Kind::Plain,
];

fuzz_target!(|data: &[u8]| {
    let Some((&mode, body)) = data.split_first() else {
        return;
    };
    let kind = KINDS[(mode & 0x0f) as usize % KINDS.len()];
    let is_admin = mode & 0x10 != 0;
    let policy = UpstreamConfig {
        allow_keep_alive: mode & 0x20 != 0,
        max_num_ctx: (mode & 0x40 != 0).then_some(4096),
        ..UpstreamConfig::default()
    };
    let rule = match (mode & 0x80 != 0, kind) {
        (true, _) => ModelField::None,
        (false, Kind::ModelOnly) => ModelField::ModelOrName,
        (false, _) => ModelField::Required,
    };
    let body = Bytes::copy_from_slice(body);

    let (facts, out) = match inspect(kind, rule, body.clone(), is_admin, &policy) {
        Ok(inspected) => inspected,
        Err(err) => {
            assert_eq!(err.status().as_u16(), 400, "{err:?} for a caller's body");
            return;
        }
    };
    assert_eq!(facts.prompt_estimate, (body.len() as u64).div_ceil(4));
    if out == body {
        return;
    }
    let rewritten: Value = serde_json::from_slice(&out).expect("a rewritten body is JSON");
    let object = rewritten
        .as_object()
        .expect("a rewritten body is an object");
    if !is_admin && !policy.allow_keep_alive {
        assert!(!object.contains_key("keep_alive"));
    }
    if kind == Kind::OpenAiCompletion && facts.stream && !facts.client_wants_usage {
        assert_eq!(
            rewritten.pointer("/stream_options/include_usage"),
            Some(&Value::Bool(true))
        );
    }
    let (again, out_again) =
        inspect(kind, rule, out.clone(), is_admin, &policy).expect("a rewritten body inspects");
    assert_eq!(again.model, facts.model);
    assert_eq!(again.stream, facts.stream);
    assert_eq!(again.output_bound, facts.output_bound);
    assert_eq!(out_again, out, "a rewritten body needs no second rewrite");
});
