#!/usr/bin/env bash
# Fuzzes every target under fuzz/ (cargo-fuzz, libFuzzer) for a bounded
# time each, starting from fuzz/seeds/<target> plus the corpus earlier runs
# grew (fuzz/corpus/, not committed), and prints the executions run.
#   scripts/fuzz.sh                 every target, 60 s each
#   FUZZ_SECONDS=600 scripts/fuzz.sh ws_frames
# On this machine's stable toolchain cargo-fuzz runs without a sanitizer
# (--sanitizer none: panics, overflow and debug assertions are caught; the
# crate forbids unsafe code, which is what ASan would watch). A crash leaves
# its input under fuzz/artifacts/<target>/ and fails the script.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/tools.sh
ensure_cargo_fuzz
seconds="${FUZZ_SECONDS:-60}"
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(ws_frames rest_bodies decimal config)
summary=()
for t in "${targets[@]}"; do
    mkdir -p "fuzz/corpus/$t"
    echo "== fuzzing $t for ${seconds}s"
    log="fuzz/target/$t.log"
    mkdir -p fuzz/target
    status=0
    "$CARGO_FUZZ" fuzz run --features libfuzzer --sanitizer none "$t" "fuzz/corpus/$t" "fuzz/seeds/$t" -- \
        -max_total_time="$seconds" -print_final_stats=1 -max_len=65536 >"$log" 2>&1 || status=$?
    runs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$' | tail -1)
    cov=$(grep -o 'cov: [0-9]*' "$log" | tail -1 | grep -o '[0-9]*')
    corpus=$(find "fuzz/corpus/$t" -type f | wc -l)
    if [ "$status" -ne 0 ]; then
        tail -40 "$log"
        echo "!! $t failed (exit $status); the input is under fuzz/artifacts/$t/" >&2
        exit 1
    fi
    summary+=("$(printf '%-12s %10s executions in %ss, coverage %s, corpus %s, no crash' "$t" "${runs:-?}" "$seconds" "${cov:-?}" "$corpus")")
done
echo "== fuzzing summary ($(date -u +%Y-%m-%d), $(nproc) cores)"
printf '%s\n' "${summary[@]}"
