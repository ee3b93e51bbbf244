#!/usr/bin/env bash
# Runs every fuzz target for SECONDS (default 600) each, one after the other,
# at the lowest CPU priority, starting from the committed seeds (and the
# inputs of crashes fixed before, in regressions/<target>/) and keeping what
# the fuzzer finds in corpus/<target>/ (not committed). Prints each
# target's executions and whether it crashed; a crashing input is left in
# artifacts/<target>/. Needs cargo-fuzz (`cargo install cargo-fuzz`); the
# sanitizer flags need RUSTC_BOOTSTRAP=1 on a stable toolchain.
#
#   fuzz/run.sh [SECONDS] [TARGET...]
set -uo pipefail
cd "$(dirname "$0")"
seconds=${1:-600}
shift || true
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
    targets=(queue entry catalog descriptor_set keyring)
fi
export RUSTC_BOOTSTRAP=1
mkdir -p logs
status=0
for target in "${targets[@]}"; do
    nice -n 19 cargo fuzz build "$target" || exit 2
    mkdir -p "corpus/$target"
    log="logs/$target.log"
    dirs=("corpus/$target" "seeds/$target")
    if [ -d "regressions/$target" ]; then
        dirs+=("regressions/$target")
    fi
    nice -n 19 cargo fuzz run "$target" "${dirs[@]}" -- \
        -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 \
        -print_final_stats=1 >"$log" 2>&1
    rc=$?
    execs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$' | tail -n 1)
    if [ $rc -eq 0 ]; then
        echo "$target: ${execs:-?} executions in ${seconds} s, no crash"
    else
        echo "$target: exit $rc after ${execs:-?} executions; see fuzz/$log and fuzz/artifacts/$target/"
        status=1
    fi
done
exit $status
