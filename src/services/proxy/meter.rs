//! Token counting on the way through: a scanner that reads Ollama's own counts from the
//! response as it streams, without holding the stream back.
//!
//! - NDJSON (`/api/*`): the final frame's `prompt_eval_count` + `eval_count`.
//! - SSE (`/v1/*`): `usage` in any event (`prompt_tokens`/`completion_tokens`, or
//!   `input_tokens`/`output_tokens`, top level or under `response`/`message`). The
//!   usage-only chunk the gateway asked for on the client's behalf is dropped.
//! - Whole JSON bodies: the same fields, read once at the end.

use bytes::{Bytes, BytesMut};
use memchr::memmem;
use serde::Deserialize;
use serde::de::IgnoredAny;

/// How to read a response body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// Newline-delimited JSON frames (Ollama native streaming).
    Lines,
    /// Server-sent events; `hide_usage_chunk` drops the usage-only chunk.
    Events { hide_usage_chunk: bool },
    /// One JSON document (non-streaming responses).
    Whole,
    /// No token counts to read.
    Opaque,
}

/// Tokens seen so far.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Tokens {
    pub prompt: u64,
    pub completion: u64,
}

#[derive(Deserialize)]
struct UsageObject {
    #[serde(default)]
    prompt_tokens: Option<u64>,
    #[serde(default)]
    completion_tokens: Option<u64>,
    #[serde(default)]
    input_tokens: Option<u64>,
    #[serde(default)]
    output_tokens: Option<u64>,
}

/// One JSON document — an NDJSON frame, an SSE event's data or a whole body — read in
/// one pass: Ollama's native counts and OpenAI-style usage, top level or under
/// `response` / `message`.
#[derive(Deserialize)]
struct Counts {
    #[serde(default)]
    prompt_eval_count: Option<u64>,
    #[serde(default)]
    eval_count: Option<u64>,
    /// Nanoseconds Ollama spent loading the model for this request (final frame).
    #[serde(default)]
    load_duration: Option<u64>,
    #[serde(default)]
    usage: Option<UsageObject>,
    /// An object on `/v1/responses`; the generated text (a string) on `/api/generate`.
    #[serde(default)]
    response: Option<UsageWithin>,
    /// An object on `/v1/messages` and `/api/chat`.
    #[serde(default)]
    message: Option<UsageWithin>,
    /// Empty in the usage-only chunk of a streamed OpenAI completion.
    #[serde(default)]
    choices: Option<Vec<IgnoredAny>>,
}

/// An object's key as [`UsageWithin`] reads it: `usage` or another, never copied.
#[derive(PartialEq, Eq)]
enum Key {
    Usage,
    Other,
}

impl<'de> Deserialize<'de> for Key {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct KeyVisitor;
        impl serde::de::Visitor<'_> for KeyVisitor {
            type Value = Key;

            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("an object key")
            }

            fn visit_str<E>(self, key: &str) -> Result<Key, E> {
                Ok(if key == "usage" {
                    Key::Usage
                } else {
                    Key::Other
                })
            }
        }
        deserializer.deserialize_identifier(KeyVisitor)
    }
}

/// The `usage` inside a value when it is an object; any other value (a string, a number)
/// is skipped without being copied.
struct UsageWithin(Option<UsageObject>);

impl<'de> Deserialize<'de> for UsageWithin {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Within;
        impl<'de> serde::de::Visitor<'de> for Within {
            type Value = UsageWithin;

            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("any JSON value")
            }

            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<Self::Value, A::Error> {
                let mut usage = None;
                while let Some(key) = map.next_key::<Key>()? {
                    if key == Key::Usage {
                        usage = map.next_value::<Option<UsageObject>>()?;
                    } else {
                        map.next_value::<IgnoredAny>()?;
                    }
                }
                Ok(UsageWithin(usage))
            }

            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> Result<Self::Value, A::Error> {
                while seq.next_element::<IgnoredAny>()?.is_some() {}
                Ok(UsageWithin(None))
            }

            fn visit_str<E>(self, _: &str) -> Result<Self::Value, E> {
                Ok(UsageWithin(None))
            }
            fn visit_bool<E>(self, _: bool) -> Result<Self::Value, E> {
                Ok(UsageWithin(None))
            }
            fn visit_i64<E>(self, _: i64) -> Result<Self::Value, E> {
                Ok(UsageWithin(None))
            }
            fn visit_u64<E>(self, _: u64) -> Result<Self::Value, E> {
                Ok(UsageWithin(None))
            }
            fn visit_f64<E>(self, _: f64) -> Result<Self::Value, E> {
                Ok(UsageWithin(None))
            }
            fn visit_unit<E>(self) -> Result<Self::Value, E> {
                Ok(UsageWithin(None))
            }
        }
        deserializer.deserialize_any(Within)
    }
}

/// Feeds response chunks through; returns what the client should receive.
pub struct Scanner {
    framing: Framing,
    /// A whole body that came in one chunk (the usual case): kept as it is, not copied.
    whole: Option<Bytes>,
    buf: BytesMut,
    pub tokens: Tokens,
    /// Set when the stream's terminal frame (`done`, `[DONE]`) was seen.
    pub saw_end: bool,
    /// Ollama's `load_duration` from the final frame (native routes), in nanoseconds:
    /// how routing learns what a load of this model costs.
    pub load_duration_ns: Option<u64>,
}

/// Whole-body responses larger than this are passed through without counting.
const MAX_WHOLE_BODY: usize = 64 * 1024 * 1024;

impl Scanner {
    pub fn new(framing: Framing) -> Self {
        Self {
            framing,
            whole: None,
            buf: BytesMut::new(),
            tokens: Tokens::default(),
            saw_end: false,
            load_duration_ns: None,
        }
    }

    /// Processes one upstream chunk; returns the bytes to forward now (possibly empty).
    pub fn feed(&mut self, chunk: Bytes) -> Bytes {
        match self.framing {
            Framing::Opaque => chunk,
            Framing::Whole => {
                self.keep_whole(&chunk);
                chunk
            }
            Framing::Lines => {
                self.scan_lines(&chunk);
                chunk
            }
            Framing::Events { hide_usage_chunk } => {
                self.buf.extend_from_slice(&chunk);
                if hide_usage_chunk {
                    self.take_events(true)
                } else {
                    // Forward the chunk as it came; scan the complete events on the side.
                    self.take_events(false);
                    chunk
                }
            }
        }
    }

    /// The upstream ended: read what remains; returns any bytes still to forward.
    pub fn finish(&mut self) -> Bytes {
        match self.framing {
            Framing::Opaque => Bytes::new(),
            Framing::Whole => {
                match self.whole.take() {
                    Some(body) => self.read_payload(&body),
                    None => {
                        let body = std::mem::take(&mut self.buf);
                        self.read_payload(&body);
                    }
                }
                self.saw_end = true;
                Bytes::new()
            }
            Framing::Lines => {
                let rest = std::mem::take(&mut self.buf);
                self.read_line(&rest);
                Bytes::new()
            }
            Framing::Events { hide_usage_chunk } => {
                let rest = std::mem::take(&mut self.buf);
                if hide_usage_chunk {
                    rest.freeze()
                } else {
                    Bytes::new()
                }
            }
        }
    }

    /// Keeps a whole body's chunk for [`Scanner::finish`]: the first by reference, and
    /// only a body of several chunks copied into one buffer (up to [`MAX_WHOLE_BODY`]).
    fn keep_whole(&mut self, chunk: &Bytes) {
        if self.whole.is_none() && self.buf.is_empty() {
            self.whole = Some(chunk.clone());
            return;
        }
        if let Some(first) = self.whole.take() {
            self.buf.extend_from_slice(&first);
        }
        if self.buf.len() + chunk.len() <= MAX_WHOLE_BODY {
            self.buf.extend_from_slice(chunk);
        }
    }

    fn scan_lines(&mut self, chunk: &[u8]) {
        let mut rest = chunk;
        while let Some(nl) = memchr::memchr(b'\n', rest) {
            let (line, tail) = rest.split_at(nl);
            if self.buf.is_empty() {
                self.read_line(line);
            } else {
                self.buf.extend_from_slice(line);
                let whole = std::mem::take(&mut self.buf);
                self.read_line(&whole);
            }
            rest = &tail[1..];
        }
        self.buf.extend_from_slice(rest);
    }

    fn read_line(&mut self, line: &[u8]) {
        // Only the final frame carries counts; skip the JSON parse for every other one.
        if memmem::find(line, b"eval_count").is_none() && memmem::find(line, b"usage").is_none() {
            return;
        }
        if let Ok(counts) = serde_json::from_slice::<Counts>(line) {
            self.saw_end = true;
            self.apply_counts(&counts);
        }
    }

    /// Splits complete events out of the buffer; returns the ones to forward when
    /// `filtering`, else an empty buffer.
    fn take_events(&mut self, filtering: bool) -> Bytes {
        let mut out = BytesMut::new();
        while let Some((end, sep)) = find_event_end(&self.buf) {
            let event = self.buf.split_to(end + sep);
            let keep = self.read_event(&event[..end]);
            if filtering && keep {
                out.extend_from_slice(&event);
            }
        }
        out.freeze()
    }

    /// Reads one event; false when it is the usage-only chunk to hide.
    fn read_event(&mut self, event: &[u8]) -> bool {
        let mut keep = true;
        for line in event.split(|b| *b == b'\n') {
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            let Some(data) = line.strip_prefix(b"data:") else {
                continue;
            };
            let data = data.strip_prefix(b" ").unwrap_or(data);
            if data == b"[DONE]" {
                self.saw_end = true;
                continue;
            }
            if memmem::find(data, b"usage").is_none() {
                continue;
            }
            if let Ok(counts) = serde_json::from_slice::<Counts>(data) {
                let usage_only =
                    counts.usage.is_some() && counts.choices.as_ref().is_some_and(|c| c.is_empty());
                self.apply_counts(&counts);
                if usage_only {
                    keep = false;
                }
            }
        }
        keep
    }

    fn read_payload(&mut self, body: &[u8]) {
        if let Ok(counts) = serde_json::from_slice::<Counts>(body) {
            self.apply_counts(&counts);
        }
    }

    fn apply_counts(&mut self, counts: &Counts) {
        for usage in [
            counts.usage.as_ref(),
            counts.response.as_ref().and_then(|r| r.0.as_ref()),
            counts.message.as_ref().and_then(|m| m.0.as_ref()),
        ]
        .into_iter()
        .flatten()
        {
            self.apply_usage(usage);
        }
        // Ollama's own counts, where the document has them, are the ones recorded.
        if let Some(p) = counts.prompt_eval_count {
            self.tokens.prompt = p;
        }
        if let Some(c) = counts.eval_count {
            self.tokens.completion = c;
        }
        if counts.load_duration.is_some() {
            self.load_duration_ns = counts.load_duration;
        }
    }

    fn apply_usage(&mut self, u: &UsageObject) {
        // Later events repeat or extend earlier counts (Anthropic-style streams report
        // input at the start and output at the end), so a zero never erases a count.
        if let Some(p) = u.prompt_tokens.or(u.input_tokens).filter(|n| *n > 0) {
            self.tokens.prompt = p;
        }
        if let Some(c) = u.completion_tokens.or(u.output_tokens).filter(|n| *n > 0) {
            self.tokens.completion = c;
        }
    }
}

/// Position of the first event terminator (`\n\n` or `\r\n\r\n`) and its length.
fn find_event_end(buf: &[u8]) -> Option<(usize, usize)> {
    let lf = memmem::find(buf, b"\n\n").map(|i| (i, 2));
    let crlf = memmem::find(buf, b"\r\n\r\n").map(|i| (i, 4));
    match (lf, crlf) {
        (Some(a), Some(b)) => Some(if a.0 <= b.0 { a } else { b }),
        (a, b) => a.or(b),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn feed_all(scanner: &mut Scanner, chunks: &[&str]) -> String {
        let mut out = Vec::new();
        for c in chunks {
            out.extend_from_slice(&scanner.feed(Bytes::from(c.to_string())));
        }
        out.extend_from_slice(&scanner.finish());
        String::from_utf8(out).expect("utf8")
    }

    #[test]
    fn ndjson_final_frame_counts_even_split_across_chunks() {
        let mut s = Scanner::new(Framing::Lines);
        let out = feed_all(
            &mut s,
            &[
                "{\"message\":{\"content\":\"a\"},\"done\":false}\n{\"done\":tr",
                "ue,\"prompt_eval_count\":7,\"eval_count\":3}\n",
            ],
        );
        assert_eq!(
            s.tokens,
            Tokens {
                prompt: 7,
                completion: 3
            }
        );
        assert!(out.ends_with("\"eval_count\":3}\n"));
    }

    #[test]
    fn ndjson_final_frame_load_duration_is_read() {
        let mut s = Scanner::new(Framing::Lines);
        feed_all(
            &mut s,
            &[
                "{\"done\":false}\n",
                "{\"done\":true,\"load_duration\":3000000000,\"eval_count\":2}\n",
            ],
        );
        assert_eq!(s.load_duration_ns, Some(3_000_000_000));
    }

    #[test]
    fn ndjson_missing_count_is_zero() {
        let mut s = Scanner::new(Framing::Lines);
        feed_all(&mut s, &["{\"done\":true,\"eval_count\":4}"]);
        assert_eq!(
            s.tokens,
            Tokens {
                prompt: 0,
                completion: 4
            }
        );
    }

    #[test]
    fn sse_usage_chunk_hidden_when_not_requested() {
        let mut s = Scanner::new(Framing::Events {
            hide_usage_chunk: true,
        });
        let out = feed_all(
            &mut s,
            &[
                "data: {\"choices\":[{\"delta\":{\"content\":\"x\"}}]}\n\n",
                "data: {\"choices\":[],\"usage\":{\"prompt_tokens\":5,",
                "\"completion_tokens\":2}}\n\ndata: [DONE]\n\n",
            ],
        );
        assert_eq!(
            s.tokens,
            Tokens {
                prompt: 5,
                completion: 2
            }
        );
        assert!(!out.contains("usage"), "{out}");
        assert!(out.contains("[DONE]"));
        assert!(s.saw_end);
    }

    #[test]
    fn sse_usage_chunk_kept_when_requested() {
        let mut s = Scanner::new(Framing::Events {
            hide_usage_chunk: false,
        });
        let out = feed_all(
            &mut s,
            &[
                "data: {\"choices\":[],\"usage\":{\"prompt_tokens\":5,\"completion_tokens\":2}}\n\ndata: [DONE]\n\n",
            ],
        );
        assert!(out.contains("usage"));
        assert_eq!(s.tokens.completion, 2);
    }

    #[test]
    fn anthropic_style_events() {
        let mut s = Scanner::new(Framing::Events {
            hide_usage_chunk: false,
        });
        feed_all(
            &mut s,
            &[
                "event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"usage\":{\"input_tokens\":9,\"output_tokens\":0}}}\n\n",
                "event: message_delta\ndata: {\"type\":\"message_delta\",\"usage\":{\"output_tokens\":4}}\n\n",
            ],
        );
        assert_eq!(
            s.tokens,
            Tokens {
                prompt: 9,
                completion: 4
            }
        );
    }

    #[test]
    fn responses_api_completed_event() {
        let mut s = Scanner::new(Framing::Events {
            hide_usage_chunk: false,
        });
        feed_all(
            &mut s,
            &[
                "event: response.completed\ndata: {\"type\":\"response.completed\",\"response\":{\"usage\":{\"input_tokens\":3,\"output_tokens\":6}}}\n\n",
            ],
        );
        assert_eq!(
            s.tokens,
            Tokens {
                prompt: 3,
                completion: 6
            }
        );
    }

    #[test]
    fn whole_body_usage() {
        let mut s = Scanner::new(Framing::Whole);
        feed_all(
            &mut s,
            &[
                "{\"usage\":{\"prompt_tokens\":1,",
                "\"completion_tokens\":2}}",
            ],
        );
        assert_eq!(
            s.tokens,
            Tokens {
                prompt: 1,
                completion: 2
            }
        );
        let mut s = Scanner::new(Framing::Whole);
        feed_all(
            &mut s,
            &["{\"embeddings\":[[0.1]],\"prompt_eval_count\":12}"],
        );
        assert_eq!(
            s.tokens,
            Tokens {
                prompt: 12,
                completion: 0
            }
        );
    }

    /// One pass reads every shape a whole body comes in: `/api/generate`'s text in
    /// `response` (a string, whose quoted `usage` counts for nothing), `/api/chat`'s
    /// `message`, `/v1/responses`' usage under `response`, `/v1/messages`' at the top.
    #[test]
    fn whole_bodies_of_every_route_are_read_in_one_pass() {
        let read = |chunks: &[&str]| {
            let mut s = Scanner::new(Framing::Whole);
            let out = feed_all(&mut s, chunks);
            assert_eq!(out, chunks.concat(), "the body passes unchanged");
            (s.tokens, s.load_duration_ns)
        };
        let tokens = |prompt, completion| Tokens { prompt, completion };
        assert_eq!(
            read(&[
                r#"{"model":"m","response":"say \"usage\":{\"prompt_tokens\":99}","done":true,"load_duration":7,"prompt_eval_count":3,"eval_count":4}"#
            ]),
            (tokens(3, 4), Some(7))
        );
        assert_eq!(
            read(&[
                r#"{"model":"m","message":{"role":"assistant","content":"hi","#,
                r#""images":null},"done":true,"prompt_eval_count":5,"eval_count":6}"#
            ]),
            (tokens(5, 6), None)
        );
        assert_eq!(
            read(&[
                r#"{"id":"r","response":{"status":"completed","usage":{"input_tokens":8,"output_tokens":9}}}"#
            ]),
            (tokens(8, 9), None)
        );
        assert_eq!(
            read(&[
                r#"{"type":"message","content":[{"type":"text"}],"usage":{"input_tokens":10,"output_tokens":11}}"#
            ]),
            (tokens(10, 11), None)
        );
        // Ollama's own counts win over a usage object in the same body.
        assert_eq!(
            read(&[
                r#"{"usage":{"prompt_tokens":1,"completion_tokens":1},"prompt_eval_count":2,"eval_count":3}"#
            ]),
            (tokens(2, 3), None)
        );
        // A body that is not JSON counts nothing and still passes.
        assert_eq!(read(&["not json", " at all"]), (tokens(0, 0), None));
    }
}
