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
. "$(dirname "$0")/stub-env.sh"
start_stub
mkfifo "$work/stdin"
valgrind --tool=callgrind --callgrind-out-file="$work/cg.out" --dump-instr=no \
    "$bin" serve-tollgate --config "$work/tollgate.yaml" <"$work/stdin" >"$work/stdout" 2>"$work/valgrind.log" &
exec 3>"$work/stdin"
await_listening "$work/valgrind.log"
make_key
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
