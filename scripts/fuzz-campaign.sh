#!/usr/bin/env bash
# A libFuzzer campaign over every target: each runs until 10 M executions or
# a time cap (30 min by default), starting from and adding to fuzz/corpus/,
# which is then minimised and kept in git. Prints one line per target:
# executions, seconds, coverage, corpus size, and whether it found a crash.
#
#   bash scripts/fuzz-campaign.sh                 # every target, 2 at a time
#   bash scripts/fuzz-campaign.sh ingress egress  # some targets
#   FUZZ_JOBS=1 FUZZ_MAX_TIME=600 bash scripts/fuzz-campaign.sh
#
# Needs cargo-fuzz (`cargo install cargo-fuzz`). It runs on the stable
# toolchain with `-s none` (no sanitizer; weft's code under test is safe Rust).
# Results go to fuzz/campaign/<target>.log; a crash stops that target and is
# saved in fuzz/artifacts/<target>/.
set -euo pipefail
cd "$(dirname "$0")/.."

runs=${FUZZ_RUNS:-10000000}
max_time=${FUZZ_MAX_TIME:-1800}
jobs=${FUZZ_JOBS:-2}

command -v cargo-fuzz >/dev/null || {
    echo "cargo-fuzz is not installed: run 'cargo install cargo-fuzz' first" >&2
    exit 1
}

if [ $# -gt 0 ]; then
    targets=("$@")
else
    mapfile -t targets < <(cd fuzz && cargo fuzz list)
fi

# Seeds first, so every target starts from valid inputs.
cargo test -q --test fuzz_smoke -- --ignored write_corpus >/dev/null
(cd fuzz && cargo fuzz build -s none)
mkdir -p fuzz/campaign

max_len() {
    case "$1" in
    split | coalesce | tx_batch | rx_batch) echo 70000 ;;
    *) echo 4096 ;;
    esac
}

run_one() {
    local target=$1 log=fuzz/campaign/$1.log
    (cd fuzz && cargo fuzz run -s none "$target" -- \
        -runs="$runs" -max_total_time="$max_time" -max_len="$(max_len "$target")" \
        -print_final_stats=1) >"$log" 2>&1
    local rc=$?
    local execs secs cov corp
    execs=$(grep -o 'stat::number_of_executed_units: [0-9]*' "$log" | grep -o '[0-9]*$' || echo "?")
    secs=$(grep -o 'Done [0-9]* runs in [0-9]* second' "$log" | grep -o 'in [0-9]*' | grep -o '[0-9]*' || echo "-")
    cov=$(grep -o 'cov: [0-9]*' "$log" | tail -1 | grep -o '[0-9]*' || echo "?")
    corp=$(grep -o 'corp: [0-9]*/[0-9]*[a-zA-Z]*' "$log" | tail -1 | cut -d' ' -f2 || echo "?")
    local verdict=ok
    # "-" seconds: it stopped on a crash (libFuzzer prints no "Done" line).
    [ "$rc" -eq 0 ] || verdict="CRASH (exit $rc, see $log and fuzz/artifacts/$target/)"
    printf '%-14s %12s execs %6ss  cov %6s  corpus %-14s %s\n' \
        "$target" "$execs" "$secs" "$cov" "$corp" "$verdict"
}
export -f run_one max_len
export runs max_time

printf '%s\n' "${targets[@]}" | xargs -P "$jobs" -I{} bash -c 'run_one {}' | tee fuzz/campaign/summary.txt

# Keep the corpus small enough for git: merge it down to the inputs that add
# coverage.
for target in "${targets[@]}"; do
    (cd fuzz && cargo fuzz cmin -s none "$target" -- -max_len="$(max_len "$target")") \
        >"fuzz/campaign/$target.cmin.log" 2>&1 || echo "cmin of $target failed: fuzz/campaign/$target.cmin.log" >&2
done
du -sh fuzz/corpus
! grep -q CRASH fuzz/campaign/summary.txt
