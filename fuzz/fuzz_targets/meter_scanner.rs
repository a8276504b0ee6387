//! The usage scanner over arbitrary response bytes, split into arbitrary chunks.
//!
//! Input: a framing byte, a count byte `n`, `n % 8` chunk-length bytes, then the body.
//! The body goes through once whole, once in the given chunk lengths (with empty chunks
//! in between) and, when short, one byte at a time. Invariants: no panic; the counts, the
//! end-of-stream flag and the forwarded bytes do not depend on the chunking; the bytes
//! are forwarded unchanged unless the usage-only SSE chunk is being hidden, and then
//! unchanged when the body has no `usage` at all.

#![no_main]

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use tollgate::services::proxy::meter::{Framing, Scanner, Tokens};

const FRAMINGS: [Framing; 5] = [
    Framing::Lines,
    Framing::Events {
        hide_usage_chunk: true,
    },
    Framing::Events {
        hide_usage_chunk: false,
    },
    Framing::Whole,
    Framing::Opaque,
];

fn run(framing: Framing, chunks: impl IntoIterator<Item = Bytes>) -> (Vec<u8>, Tokens, bool) {
    let mut scanner = Scanner::new(framing);
    let mut out = Vec::new();
    for chunk in chunks {
        out.extend_from_slice(&scanner.feed(chunk));
    }
    out.extend_from_slice(&scanner.finish());
    (out, scanner.tokens, scanner.saw_end)
}

fn split(body: &Bytes, lengths: &[u8]) -> Vec<Bytes> {
    let mut chunks = Vec::new();
    let mut at = 0;
    let mut i = 0;
    while at < body.len() {
        let len = lengths
            .get(i % lengths.len().max(1))
            .map_or(body.len(), |l| *l as usize + 1);
        let end = (at + len).min(body.len());
        chunks.push(body.slice(at..end));
        chunks.push(Bytes::new());
        at = end;
        i += 1;
    }
    chunks
}

fuzz_target!(|data: &[u8]| {
    let [framing, n, rest @ ..] = data else {
        return;
    };
    let framing = FRAMINGS[*framing as usize % FRAMINGS.len()];
    let (lengths, body) = rest.split_at((*n as usize % 8).min(rest.len()));
    let body = Bytes::copy_from_slice(body);

    let whole = run(framing, [body.clone()]);
    let chunked = run(framing, split(&body, lengths));
    assert_eq!(whole, chunked, "chunking changed the outcome");
    if body.len() <= 2048 {
        let bytewise = run(framing, (0..body.len()).map(|i| body.slice(i..i + 1)));
        assert_eq!(whole, bytewise, "byte-by-byte chunking changed the outcome");
    }

    let (out, _, _) = whole;
    let hiding = framing
        == Framing::Events {
            hide_usage_chunk: true,
        };
    if !hiding || memchr::memmem::find(&body, b"usage").is_none() {
        assert_eq!(out, &body[..], "forwarded bytes differ from the upstream's");
    } else {
        assert!(out.len() <= body.len());
    }
});
