# Sourced by instructions.sh and perf.sh: the scene both measure tollgate in. Expects
# `work` (a scratch directory); defines `$work/tollgate.yaml`, and the functions below.
#
#   start_stub [CPUS]      a static nginx stub upstream answering /api/chat (`return 200`
#                          with a final-frame body), optionally pinned to CPUS
#   await_listening LOG    waits for tollgate's "listening URL" line; sets `url`
#   make_key               a virtual key with rpm/tpm limits on the hot path; writes the
#                          wrk script `$work/chat.lua` that sends /api/chat with it

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

start_stub() {
    local cpus=${1:-}
    local stub_port body nginx
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
    if [ -n "$cpus" ]; then
        taskset -c "$cpus" "$nginx" -p "$work/nginx" -c "$work/nginx/nginx.conf" -g 'daemon off;' &
    else
        "$nginx" -p "$work/nginx" -c "$work/nginx/nginx.conf" -g 'daemon off;' &
    fi
    cat >"$work/tollgate.yaml" <<CONF
server: { listen: "127.0.0.1:0", master_key: "sk-bench-master-key-0123456789", shutdown_grace_s: 2 }
database: { url: "sqlite://$work/tollgate.db?mode=rwc" }
upstream: { url: "http://127.0.0.1:$stub_port", parallel: 1000000, max_loaded_models: 1000 }
log: { level: info }
CONF
}

await_listening() {
    local log=$1
    for _ in $(seq 1 600); do
        url=$(sed -n 's/^listening //p' "$work/stdout" 2>/dev/null || true)
        [ -n "$url" ] && return 0
        sleep 0.5
    done
    cat "$log" >&2
    echo "tollgate did not start" >&2
    exit 1
}

make_key() {
    local key
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
}
