#!/usr/bin/env bash
# Where a proxied request's time goes, sampled by `perf record` (cpu-clock: the kernel's
# share included) while wrk drives tollgate flat out, placed like the benchmark: tollgate
# on the last CPU, the nginx stub upstream and wrk on the others.
#
#   bench/scripts/perf.sh BENCH_BINARY [SECONDS] [REPORT_OUT]
#
# Callgrind's counts (instructions.sh) say what runs, not what it costs: glibc copies
# blocks of a few KiB with `rep movsb`, which valgrind counts once per byte, and the
# kernel's side of every socket call is not counted at all. This prints wrk's req/s, the
# gateway CPU's busy share, and perf's flat profile (self time, kernel included), its
# top 60 lines, or the whole report into REPORT_OUT (and the samples into REPORT_OUT.data). Needs `perf`, `wrk`, `nginx`
# (Debian: linux-perf wrk nginx-light). With TOLLGATE_BENCH_REDIS set, tollgate uses that Redis
# (limits and slots shared, as in the benchmark's scenario d).
set -euo pipefail
bin=$(readlink -f "$1")
secs=${2:-10}
report_out=${3:-}
work=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$work"' EXIT
last=$(($(nproc) - 1))
others="0-$((last > 0 ? last - 1 : 0))"
. "$(dirname "$0")/stub-env.sh"
start_stub "$others"
if [ -n "${TOLLGATE_BENCH_REDIS:-}" ]; then
    echo "redis: { url: \"$TOLLGATE_BENCH_REDIS\", key_prefix: \"perf$$:\" }" >>"$work/tollgate.yaml"
fi
mkfifo "$work/stdin"
taskset -c "$last" "$bin" serve-tollgate --config "$work/tollgate.yaml" <"$work/stdin" >"$work/stdout" 2>"$work/stderr" &
exec 3>"$work/stdin"
await_listening "$work/stderr"
pid=$(pgrep -f "serve-tollgate --config $work/tollgate.yaml" | head -1)
make_key
taskset -c "$others" wrk -t1 -c32 -d3s -s "$work/chat.lua" "$url/api/chat" >/dev/null
busy() { awk -v c="cpu$last" '$1 == c { print $2 + $3 + $4 + $7 + $8 + $9, $5 + $6 }' /proc/stat; }
read -r b0 i0 < <(busy)
perf record -q -F 2999 -g -p "$pid" -o "$work/perf.data" -- sleep "$secs" 2>/dev/null &
perf_pid=$!
out=$(taskset -c "$others" wrk -t1 -c32 -d"${secs}s" -s "$work/chat.lua" "$url/api/chat")
wait "$perf_pid" || true
read -r b1 i1 < <(busy)
echo "binary: $bin"
echo "$out" | grep -E 'Requests/sec|Non-2xx|requests in'
awk -v b=$((b1 - b0)) -v i=$((i1 - i0)) 'BEGIN { printf "gateway CPU busy: %.0f %%\n", 100 * b / (b + i) }'
report=$(perf report -i "$work/perf.data" --no-children --sort symbol --stdio 2>/dev/null | grep -v '^$')
if [ -n "$report_out" ]; then
    echo "$report" >"$report_out"
    cp "$work/perf.data" "$report_out.data"
    echo "report: $report_out (perf data: $report_out.data, for perf report -i … -g caller)"
else
    echo "$report" | grep -E '^ +[0-9.]+%' | head -60
fi
exec 3>&-
