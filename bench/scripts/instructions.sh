#!/usr/bin/env bash
# Instructions per proxied request, counted by callgrind: a figure the machine's load
# does not move (this 2-core VM's timings swing twofold while builds run beside them).
#
#   bench/scripts/instructions.sh BENCH_BINARY [SECONDS] [PROFILE_OUT]
#
# BENCH_BINARY is a built `tollgate-bench` (it carries tollgate: `serve-tollgate` runs
# exactly what `tollgate serve` runs). Upstream: a static nginx stub answering /api/chat,
# so only tollgate's own work is counted. One wrk connection warms up, the counters are
# zeroed, wrk sends requests for SECONDS (default 20) with 4 connections, and the
# instructions since the zero are divided by the requests wrk completed. Usage rows are
# written by the recorder in the background within those seconds, so their cost counts.
# With PROFILE_OUT, the callgrind file is kept there (read it with callgrind_annotate).
set -euo pipefail
bin=$(readlink -f "$1")
secs=${2:-20}
profile_out=${3:-}
work=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$work"' EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
stub_port=$(free_port)
body='{"model":"llama3.1:8b","created_at":"2026-12-01T00:00:00Z","message":{"role":"assistant","content":"Hello! How can I help you today?"},"done_reason":"stop","done":true,"total_duration":1000000,"load_duration":10000,"prompt_eval_count":12,"prompt_eval_duration":100000,"eval_count":9,"eval_duration":800000}'
mkdir -p "$work/nginx"
cat >"$work/nginx/nginx.conf" <<CONF
worker_processes 1;
error_log $work/nginx/error.log warn;
pid $work/nginx/nginx.pid;
events { worker_connections 1024; }
http {
    access_log off;
    client_body_temp_path $work/nginx/cb; proxy_temp_path $work/nginx/p;
    fastcgi_temp_path $work/nginx/f; uwsgi_temp_path $work/nginx/u; scgi_temp_path $work/nginx/s;
    server { listen 127.0.0.1:$stub_port; location / { default_type application/json; return 200 '$body'; } }
}
CONF
nginx=$(command -v nginx || echo /usr/sbin/nginx)
"$nginx" -p "$work/nginx" -c "$work/nginx/nginx.conf" -g 'daemon off;' &
cat >"$work/tollgate.yaml" <<CONF
server: { listen: "127.0.0.1:0", master_key: "sk-bench-master-key-0123456789", shutdown_grace_s: 2 }
database: { url: "sqlite://$work/tollgate.db?mode=rwc" }
upstream: { url: "http://127.0.0.1:$stub_port", parallel: 1000000, max_loaded_models: 1000 }
log: { level: info }
CONF
mkfifo "$work/stdin"
valgrind --tool=callgrind --callgrind-out-file="$work/cg.out" --dump-instr=no \
    "$bin" serve-tollgate --config "$work/tollgate.yaml" <"$work/stdin" >"$work/stdout" 2>"$work/valgrind.log" &
exec 3>"$work/stdin"
for _ in $(seq 1 600); do
    url=$(sed -n 's/^listening //p' "$work/stdout" 2>/dev/null || true)
    [ -n "$url" ] && break
    sleep 0.5
done
[ -n "$url" ] || { cat "$work/valgrind.log" >&2; echo "tollgate did not start" >&2; exit 1; }
key=$(curl -sf "$url/key/generate" -H 'authorization: Bearer sk-bench-master-key-0123456789' \
    -H 'content-type: application/json' \
    -d '{"key_alias":"bench","rpm_limit":1000000000,"tpm_limit":1000000000000}' |
    python3 -c 'import json,sys; print(json.load(sys.stdin)["key"])')
cat >"$work/chat.lua" <<LUA
wrk.method = "POST"
wrk.body = '{"model":"llama3.1:8b","messages":[{"role":"user","content":"Say hello in one short sentence."}],"stream":false}'
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer $key"
LUA
wrk -t1 -c1 -d5s -s "$work/chat.lua" "$url/api/chat" >/dev/null
callgrind_control -z >/dev/null
out=$(wrk -t1 -c4 -d"${secs}s" -s "$work/chat.lua" "$url/api/chat")
callgrind_control -d >/dev/null
requests=$(echo "$out" | awk '/requests in/ { print $1 }')
non2xx=$(echo "$out" | awk '/Non-2xx/ { print $4 }')
sleep 1
file=$(ls -t "$work"/cg.out* | head -1)
instr=$(awk '/^summary:/ { print $2 }' "$file")
[ -z "$profile_out" ] || cp "$file" "$profile_out"
echo "binary: $bin"
echo "requests: $requests (non-2xx: ${non2xx:-0})"
echo "instructions: $instr"
echo "instructions per request: $((instr / requests))"
exec 3>&-
