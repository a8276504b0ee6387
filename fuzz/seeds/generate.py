#!/usr/bin/env python3
"""Writes the seed corpus (fuzz/seeds/<target>/): real JWTs signed with the mock IdP's
fixture keys (testkit/fixtures), Ollama NDJSON and OpenAI-compatible SSE frames as the
mock Ollama sends them, request bodies and configuration values. Deterministic; rerun
after changing it. Needs the `cryptography` package."""

import base64
import hashlib
import json
import pathlib

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, utils

ROOT = pathlib.Path(__file__).resolve().parent.parent
FIXTURES = ROOT.parent / "testkit" / "fixtures"
CORPUS = ROOT / "seeds"

# As in fuzz/src/lib.rs.
ISSUER = "https://idp.example"
AUDIENCE = "tollgate"
NOW = 1_800_000_000


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def compact(value) -> bytes:
    return json.dumps(value, separators=(",", ":")).encode()


def load_key(set_name: str, name: str):
    pem = (FIXTURES / set_name / f"{name}.pem").read_bytes()
    return serialization.load_pem_private_key(pem, password=None)


def sign(alg: str, key, message: bytes) -> bytes:
    if alg.startswith("RS"):
        digest = {"RS256": hashes.SHA256(), "RS384": hashes.SHA384()}[alg]
        return key.sign(message, padding.PKCS1v15(), digest)
    if alg == "PS256":
        return key.sign(
            message,
            padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=32),
            hashes.SHA256(),
        )
    if alg in ("ES256", "ES384"):
        digest, size = (hashes.SHA256(), 32) if alg == "ES256" else (hashes.SHA384(), 48)
        r, s = utils.decode_dss_signature(key.sign(message, ec.ECDSA(digest)))
        return r.to_bytes(size, "big") + s.to_bytes(size, "big")
    if alg == "EdDSA":
        return key.sign(message)
    raise ValueError(alg)


def token_parts(alg, key, header, claims):
    h, p = compact(header), compact(claims)
    signature = sign(alg, key, f"{b64(h)}.{b64(p)}".encode()) if key else b""
    return h, p, signature


def claims(**extra):
    base = {
        "iss": ISSUER,
        "sub": "alice",
        "aud": AUDIENCE,
        "exp": NOW + 600,
        "iat": NOW,
        "nbf": NOW,
        "email": "alice@example.com",
        "scope": "openid llm",
        "ext": {"team": "team-a", "tier": "gold"},
        "https://example.com/org": "org-1",
        "roles": ["reader", "lead"],
    }
    base.update(extra)
    return base


def write(target: str, name: str, data: bytes):
    directory = CORPUS / target
    directory.mkdir(parents=True, exist_ok=True)
    (directory / name).write_bytes(data)


def jwt_seeds():
    rsa = load_key("set1", "rsa")
    ec256 = load_key("set1", "ec256")
    ec384 = load_key("set1", "ec384")
    ed = load_key("set1", "ed25519")
    ed2 = load_key("set2", "ed25519")
    foreign = load_key("foreign", "ed25519")
    hdr = lambda alg, kid=None, **x: {"alg": alg, "typ": "JWT", **({"kid": kid} if kid else {}), **x}
    cases = {
        "rs256": ("RS256", rsa, hdr("RS256", "rsa"), claims()),
        "rs384": ("RS384", rsa, hdr("RS384", "rsa"), claims()),
        "ps256": ("PS256", rsa, hdr("PS256", "rsa"), claims()),
        "es256": ("ES256", ec256, hdr("ES256", "ec256"), claims()),
        "es384": ("ES384", ec384, hdr("ES384", "ec384"), claims(aud=["x", AUDIENCE])),
        "eddsa": ("EdDSA", ed, hdr("EdDSA", "ed25519"), claims(scope="llm tollgate:admin")),
        "eddsa_no_kid": ("EdDSA", ed2, hdr("EdDSA"), claims()),
        "eddsa_unknown_kid": ("EdDSA", ed2, hdr("EdDSA", "rotated"), claims()),
        "foreign_key": ("EdDSA", foreign, hdr("EdDSA", "ed25519"), claims()),
        "kid_type_mismatch": ("ES256", ec256, hdr("ES256", "rsa"), claims()),
        "expired": ("EdDSA", ed, hdr("EdDSA", "ed25519"), claims(exp=NOW - 3600)),
        "crit": ("EdDSA", ed, hdr("EdDSA", "ed25519", crit=["b64"], b64=False), claims()),
        "alg_none": (None, None, hdr("none", "rsa"), claims()),
        "hs256": (None, None, hdr("HS256", "rsa"), claims()),
        "wrong_issuer": ("EdDSA", ed, hdr("EdDSA", "ed25519"), claims(iss="https://other.example")),
    }
    for name, (alg, key, header, body) in cases.items():
        h, p, s = token_parts(alg, key, header, body)
        if name == "hs256":
            s = hashlib.sha256(b"public key as secret").digest()
        token = f"{b64(h)}.{b64(p)}.{b64(s)}".encode()
        write("jwt_token", f"{name}_open", b"\x00" + token)
        write("jwt_token", f"{name}_strict", b"\x02" + token)
        write("jwt_token", f"{name}_parts", b"\x03" + h + b"\xff" + p + b"\xff" + s)
    write("jwt_token", "not_a_jwt", b"\x00sk-not-a-jwt")
    write("jwt_token", "two_segments", b"\x00eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJ4In0")

    payloads = {
        "standard": claims(),
        "admin": claims(scope="llm tollgate:admin"),
        "scp_array": claims(scope=None, scp=["llm", "tollgate:admin"]),
        "aud_array": claims(aud=["other", AUDIENCE]),
        "fractional_dates": claims(exp=NOW + 600.5, iat=NOW - 0.25, nbf=NOW + 29.9),
        "numeric_sub": claims(sub=12345, ext={"team": 7, "tier": 2}),
        "nested_org": claims(**{"https://example.com/org": {"id": "o"}}),
        "no_exp": {k: v for k, v in claims().items() if k != "exp"},
        "not_yet_valid": claims(nbf=NOW + 3600),
        "iss_array": claims(iss=[ISSUER]),
        "email_upper_domain": claims(email="Bob@EXAMPLE.COM"),
        "role_admin": claims(roles="admin"),
        "minimal": {"exp": NOW + 60},
    }
    for name, body in payloads.items():
        data = compact(body)
        for mode in (0, 1, 3):
            write("jwt_claims", f"{name}_{mode}", bytes([mode]) + data)
    write("jwt_claims", "not_json_0", b"\x00not json")
    write("jwt_claims", "array_1", b"\x01[1,2,3]")


NDJSON_CHAT = (
    b'{"model":"llama3.1:8b","created_at":"2026-12-01T12:00:00.000000Z","message":{"role":"assistant","content":"Hel"},"done":false}\n'
    b'{"model":"llama3.1:8b","created_at":"2026-12-01T12:00:00.050000Z","message":{"role":"assistant","content":"lo"},"done":false}\n'
    b'{"model":"llama3.1:8b","created_at":"2026-12-01T12:00:00.100000Z","message":{"role":"assistant","content":""},"done_reason":"stop","done":true,'
    b'"total_duration":101000000,"load_duration":2000000,"prompt_eval_count":26,"prompt_eval_duration":13000000,"eval_count":2,"eval_duration":85000000}\n'
)
NDJSON_GENERATE = (
    b'{"model":"qwen2.5:0.5b","created_at":"2026-12-01T12:00:00Z","response":"Why","done":false}\n'
    b'{"model":"qwen2.5:0.5b","created_at":"2026-12-01T12:00:01Z","response":"","done":true,"done_reason":"stop","context":[1,2,3],'
    b'"total_duration":5043500667,"prompt_eval_count":11,"eval_count":290}\n'
)
NDJSON_ERROR = b'{"error":"model \\"nope\\" not found, try pulling it first"}\n'
SSE_CHAT = (
    b'data: {"id":"chatcmpl-42","object":"chat.completion.chunk","created":1764590400,"model":"llama3.1:8b","system_fingerprint":"fp_ollama",'
    b'"choices":[{"index":0,"delta":{"role":"assistant","content":"Hi"},"finish_reason":null}]}\n\n'
    b'data: {"id":"chatcmpl-42","object":"chat.completion.chunk","created":1764590400,"model":"llama3.1:8b","system_fingerprint":"fp_ollama",'
    b'"choices":[{"index":0,"delta":{"role":"assistant","content":""},"finish_reason":"stop"}]}\n\n'
    b'data: {"id":"chatcmpl-42","object":"chat.completion.chunk","created":1764590400,"model":"llama3.1:8b","system_fingerprint":"fp_ollama",'
    b'"choices":[],"usage":{"prompt_tokens":26,"completion_tokens":2,"total_tokens":28}}\n\n'
    b"data: [DONE]\n\n"
)
SSE_CRLF = SSE_CHAT.replace(b"\n\n", b"\r\n\r\n")
SSE_RESPONSES = (
    b'event: response.created\ndata: {"type":"response.created","response":{"id":"resp_1","status":"in_progress"}}\n\n'
    b'event: response.output_text.delta\ndata: {"type":"response.output_text.delta","delta":"Hi"}\n\n'
    b'event: response.completed\ndata: {"type":"response.completed","response":{"id":"resp_1","status":"completed",'
    b'"usage":{"input_tokens":12,"output_tokens":5,"total_tokens":17}}}\n\n'
)
SSE_MESSAGES = (
    b'event: message_start\ndata: {"type":"message_start","message":{"id":"msg_1","role":"assistant","usage":{"input_tokens":9,"output_tokens":1}}}\n\n'
    b'event: content_block_delta\ndata: {"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"Hi"}}\n\n'
    b'event: message_delta\ndata: {"type":"message_delta","delta":{"stop_reason":"end_turn"},"usage":{"output_tokens":4}}\n\n'
    b'event: message_stop\ndata: {"type":"message_stop"}\n\n'
)
WHOLE_CHAT = compact({
    "id": "chatcmpl-7", "object": "chat.completion", "created": 1764590400, "model": "llama3.1:8b",
    "choices": [{"index": 0, "message": {"role": "assistant", "content": "Hi"}, "finish_reason": "stop"}],
    "usage": {"prompt_tokens": 26, "completion_tokens": 2, "total_tokens": 28},
})
WHOLE_EMBED = b'{"model":"all-minilm","embeddings":[[0.010071029,-0.0017594862,0.05007221]],"total_duration":14143917,"load_duration":1019500,"prompt_eval_count":8}'


def meter_seeds():
    # framing: 0 Lines, 1 Events (hide usage), 2 Events (keep), 3 Whole, 4 Opaque.
    cases = {
        "ndjson_chat": (0, NDJSON_CHAT),
        "ndjson_generate": (0, NDJSON_GENERATE),
        "ndjson_error": (0, NDJSON_ERROR),
        "sse_chat_hidden": (1, SSE_CHAT),
        "sse_chat_kept": (2, SSE_CHAT),
        "sse_crlf_hidden": (1, SSE_CRLF),
        "sse_responses": (2, SSE_RESPONSES),
        "sse_messages": (1, SSE_MESSAGES),
        "whole_chat": (3, WHOLE_CHAT),
        "whole_embed": (3, WHOLE_EMBED),
        "opaque": (4, b'{"version":"0.12.6"}'),
    }
    for name, (framing, body) in cases.items():
        # Chunk lengths 7, 64, 1 (stored as length - 1).
        write("meter_scanner", name, bytes([framing, 3, 6, 63, 0]) + body)


def inspect_seeds():
    bodies = {
        "chat": {"model": "llama3.1:8b", "messages": [{"role": "user", "content": "Why is the sky blue?"}]},
        "chat_options": {"model": "llama3.1:8b", "messages": [], "stream": False, "keep_alive": "5m",
                         "options": {"num_ctx": 8192, "num_predict": 128, "temperature": 0.2}},
        "generate": {"model": "qwen2.5:0.5b", "prompt": "Hello", "stream": True, "keep_alive": 0},
        "embed": {"model": "all-minilm", "input": ["a", "b"]},
        "show": {"name": "llama3.1:8b"},
        "openai_stream": {"model": "llama3.1:8b", "messages": [{"role": "user", "content": "hi"}], "stream": True, "max_tokens": 64},
        "openai_usage": {"model": "llama3.1:8b", "messages": [], "stream": True, "stream_options": {"include_usage": True},
                         "max_completion_tokens": 32},
        "responses": {"model": "llama3.1:8b", "input": "hi", "max_output_tokens": 16},
        "no_model": {"messages": []},
    }
    kinds = {"chat": 0, "chat_options": 0x40, "generate": 0, "embed": 1, "show": 4,
             "openai_stream": 2, "openai_usage": 2, "responses": 3, "no_model": 0}
    for name, body in bodies.items():
        write("inspect_body", name, bytes([kinds[name]]) + compact(body))
    write("inspect_body", "stream_options_not_object", b"\x02" + b'{"model":"m","stream":true,"stream_options":[]}')
    write("inspect_body", "malformed", b"\x00{\"model\":")
    write("inspect_body", "empty", b"\x00")


def config_seeds():
    cases = {
        "set": "http://${OLLAMA_HOST}:11434\0OLLAMA_HOST=ollama",
        "default": "${TOLLGATE_UPSTREAM:-http://127.0.0.1:11434}",
        "unset": "postgres://${DB_USER}@db/tollgate",
        "dollar": "cost $$5 and $HOME\0HOME=/root",
        "whole_number": "${MAX_BODY}\0MAX_BODY=1048576",
        "whole_list": "${LIST}\0LIST=[a, b]",
        "nested_default": "${A:-${B}}\0B=x",
        "override": "http://x\0TOLLGATE__SERVER__LISTEN=0.0.0.0:4000\nTOLLGATE__UPSTREAM__ALLOW_KEEP_ALIVE=true",
        "unterminated": "${OPEN",
    }
    for name, text in cases.items():
        write("config_expand", name, text.encode())


if __name__ == "__main__":
    jwt_seeds()
    meter_seeds()
    inspect_seeds()
    config_seeds()
