#!/usr/bin/env bash
# Fuzz smoke run (README, "Fuzzing"): builds the cargo-fuzz targets in fuzz/ and runs each
# for FUZZ_SECONDS (default 30) from its committed seeds (fuzz/seeds/<target>), growing a
# throw-away corpus in fuzz/corpus/. A crash, a panic, a timeout or an out-of-memory
# exits non-zero; the failing input is left in fuzz/artifacts/<target>/.
set -euo pipefail

cd "$(dirname "$0")/../fuzz"

FUZZ_SECONDS=${FUZZ_SECONDS:-30}
# cargo-fuzz passes nightly-only flags (sanitizer coverage); stable rustc accepts them so.
export RUSTC_BOOTSTRAP=1

log() { echo "ci: fuzz: $*" >&2; }

if ! cargo fuzz --version >/dev/null 2>&1; then
    log "installing cargo-fuzz"
    cargo install cargo-fuzz --locked
fi

# No AddressSanitizer: tollgate forbids unsafe code, and without it the targets run about
# twice as fast; overflow checks and debug assertions stay on (cargo-fuzz's default).
log "building the targets"
cargo fuzz build --sanitizer none

OUT=$(mktemp)
trap 'rm -f "$OUT"' EXIT
for target in $(cargo fuzz list); do
    log "$target for ${FUZZ_SECONDS}s"
    mkdir -p "corpus/$target"
    if ! cargo fuzz run --sanitizer none "$target" "corpus/$target" "seeds/$target" -- \
        -max_total_time="$FUZZ_SECONDS" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 \
        >"$OUT" 2>&1; then
        tail -n 40 "$OUT" >&2
        log "$target failed; the input is in fuzz/artifacts/$target/"
        exit 1
    fi
    # libFuzzer's closing figures: executions, coverage, features, corpus.
    grep -E '^#[0-9]+[[:space:]]+DONE' "$OUT" >&2 || true
done
log "every target ran ${FUZZ_SECONDS}s without a crash"
