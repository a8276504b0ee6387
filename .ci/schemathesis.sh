#!/usr/bin/env bash
# Schema-driven fuzzing of a built gateway (SPEC §4.2): Schemathesis reads /openapi.json
# and sends what it allows and what it forbids, then checks every answer against it.
#
#  1. the management routes, authenticated with the master key, every check: nothing the
#     document allows may be refused, nothing it forbids accepted, no status or field
#     undocumented, no 5xx;
#  2. the proxied routes against the mock Ollama, with the checks that make sense for a
#     pass-through (see PROXY_CHECKS below).
#
# The gateway (SQLite in a temporary directory) and the mock listen on free loopback
# ports and are stopped on exit. Bounded: ST_MAX_EXAMPLES cases per operation (default
# 30), each run under ST_TIMEOUT seconds (default 240). ST_SEED fixes the generator
# (default: a fixed seed, so CI is reproducible; ST_SEED=random draws a new one).
# Exits non-zero on any failure. Schemathesis comes from PyPI into a virtualenv kept at
# ST_VENV (default /tmp/tollgate-schemathesis-venv).
set -euo pipefail

cd "$(dirname "$0")/.."

ST_VENV=${ST_VENV:-/tmp/tollgate-schemathesis-venv}
ST_MAX_EXAMPLES=${ST_MAX_EXAMPLES:-30}
ST_TIMEOUT=${ST_TIMEOUT:-240}
ST_SEED=${ST_SEED:-20261201}
MASTER_KEY="sk-master-schemathesis-$(head -c 12 /dev/urandom | od -An -tx1 | tr -d ' \n')"

log() { echo "schemathesis: $*" >&2; }

# ---------------------------------------------------------------- Schemathesis

ensure_schemathesis() {
    if [ -x "$ST_VENV/bin/schemathesis" ] &&
        "$ST_VENV/bin/schemathesis" --version 2>/dev/null | grep -q 'version 4\.'; then
        return
    fi
    if ! python3 -c 'import venv, ensurepip' >/dev/null 2>&1; then
        log "installing python3-venv"
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv >/dev/null
    fi
    rm -rf "$ST_VENV"
    log "creating $ST_VENV"
    python3 -m venv "$ST_VENV"
    "$ST_VENV/bin/pip" install -q --disable-pip-version-check 'schemathesis>=4,<5'
}

# ---------------------------------------------------------------- services

free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

WORK=$(mktemp -d)
PIDS=()
cleanup() {
    local pid
    for pid in "${PIDS[@]}"; do
        kill "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    done
    rm -rf "$WORK"
}
trap cleanup EXIT

# http METHOD URL [JSON]: one request with the master key (python3, since a fresh
# Debian has no curl); prints the body, fails on a non-2xx answer.
http() {
    MASTER_KEY=$MASTER_KEY python3 - "$@" <<'PY'
import os, sys, urllib.request
method, url, body = sys.argv[1], sys.argv[2], (sys.argv[3:] or [None])[0]
request = urllib.request.Request(url, method=method, data=body and body.encode())
request.add_header("Authorization", "Bearer " + os.environ["MASTER_KEY"])
request.add_header("Content-Type", "application/json")
with urllib.request.urlopen(request, timeout=5) as response:
    sys.stdout.write(response.read().decode())
PY
}

wait_healthy() {
    local url=$1
    for _ in $(seq 1 100); do
        if http GET "$url" >/dev/null 2>&1; then
            return 0
        fi
        sleep 0.2
    done
    log "$url did not answer; gateway log:"
    tail -n 40 "$WORK/gateway.log" >&2 || true
    return 1
}

start_services() {
    log "cargo build (tollgate, mock-ollama)"
    cargo build -q -p tollgate --bin tollgate -p testkit --bin mock-ollama
    local target=${CARGO_TARGET_DIR:-target}
    local mock_port gw_port
    mock_port=$(free_port)
    gw_port=$(free_port)
    cat >"$WORK/config.yaml" <<YAML
server:
  listen: "127.0.0.1:$gw_port"
  master_key: "$MASTER_KEY"
database:
  url: "sqlite://$WORK/gateway.db?mode=rwc"
upstream:
  url: "http://127.0.0.1:$mock_port"
YAML
    "$target/debug/mock-ollama" "127.0.0.1:$mock_port" >"$WORK/mock.log" 2>&1 &
    PIDS+=($!)
    "$target/debug/tollgate" serve --config "$WORK/config.yaml" >"$WORK/gateway.log" 2>&1 &
    PIDS+=($!)
    BASE="http://127.0.0.1:$gw_port"
    wait_healthy "$BASE/healthz"
}

# admin METHOD PATH [JSON]: a management call; prints the body.
admin() {
    http "$1" "$BASE$2" "${@:3}"
}

# ---------------------------------------------------------------- runs

# run NAME CONFIG ARGS...: one bounded Schemathesis run with the configuration file
# CONFIG (or none: -); prints its summary line.
FAILED=0
run() {
    local name=$1 config=()
    if [ "$2" != - ]; then
        config=(--config-file "$2")
    fi
    shift 2
    local seed=()
    if [ "$ST_SEED" != random ]; then
        seed=(--seed "$ST_SEED")
    fi
    log "$name: schemathesis run $*"
    local status=0
    timeout --signal=INT --kill-after=30 "$ST_TIMEOUT" \
        "$ST_VENV/bin/schemathesis" "${config[@]}" run "$BASE/openapi.json" \
        -H "Authorization: Bearer $MASTER_KEY" \
        --max-examples "$ST_MAX_EXAMPLES" "${seed[@]}" \
        --no-color --output-truncate true --generation-database none \
        "$@" >"$WORK/$name.log" 2>&1 || status=$?
    if [ "$status" != 0 ]; then
        FAILED=1
        cat "$WORK/$name.log"
        if [ "$status" = 124 ] || [ "$status" = 130 ]; then
            log "$name: did not finish in ${ST_TIMEOUT}s"
        fi
    fi
    local summary
    summary=$(grep -E '^=+ .* in [0-9.]+s =+$' "$WORK/$name.log" | tail -n 1 | sed -E 's/^=+ //; s/ =+$//' || true)
    local cases
    cases=$(grep -E '^ +[0-9]+ generated' "$WORK/$name.log" | tail -n 1 | sed -E 's/^ +//' || true)
    echo "schemathesis $name: ${summary:-no summary (exit $status)}${cases:+ ($cases)}"
}

ensure_schemathesis
start_services

ST_TEAM_ID=$(admin POST /team/new '{"team_alias": "schemathesis"}' |
    python3 -c 'import json, sys; print(json.load(sys.stdin)["team_id"])')
ST_KEY_ID=$(admin POST /key/generate '{"key_alias": "schemathesis"}' |
    python3 -c 'import json, sys; print(json.load(sys.stdin)["key_id"])')
ST_HOOKS="$PWD/.ci/schemathesis_hooks.py"
export ST_TEAM_ID ST_KEY_ID ST_HOOKS

# The management API: every check Schemathesis has.
run management .ci/schemathesis.toml \
    --include-tag-regex '^(keys|teams|mappings|spend|audit)$' --checks all

# The proxied routes. The document gives them Ollama's bodies as "any JSON object", so
# whether a body is acceptable is Ollama's to say: positive_data_acceptance and
# negative_data_rejection would judge the mock, not the gateway, and the stateful checks
# (use_after_free, ensure_resource_availability) are about resources the gateway does
# not own. What the gateway owns is checked: never a 5xx of its own, only documented
# statuses, content types and headers, and credentials enforced (ignored_auth).
PROXY_CHECKS=not_a_server_error,status_code_conformance,content_type_conformance,response_headers_conformance,response_schema_conformance,ignored_auth
run proxy - --include-tag proxy --checks "$PROXY_CHECKS" --phases examples,coverage,fuzzing

exit "$FAILED"
