#!/usr/bin/env bash
# Runs each fuzz target for SECONDS (default 15) from its committed seeds, corpus/<target>, plus
# what earlier runs here found (target/work/<target>, not committed). Builds first; prints the
# executions per target; exits non-zero if any target crashed, hung or ran out of memory, with
# the input under artifacts/<target>/.
#
#   fuzz/run.sh 15                # CI's smoke run (make fuzz-smoke)
#   fuzz/run.sh 150 idx svhn      # longer, some targets
#
# The same as `cargo fuzz run TARGET target/work/TARGET corpus/TARGET -- -max_total_time=SECONDS`
# for each target, without a cargo call per target. cargo-fuzz needs nightly features:
# RUSTC_BOOTSTRAP=1 lets the stable toolchain provide them.
set -euo pipefail
cd "$(dirname "$0")"
secs=${1:-15}
shift || true
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(idx cifar svhn folder_image checkpoint config pickle)

RUSTC_BOOTSTRAP=1 cargo fuzz build
bin=target/x86_64-unknown-linux-gnu/release
mkdir -p target/logs
failed=()
for t in "${targets[@]}"; do
  mkdir -p "target/work/$t" "artifacts/$t"
  log="target/logs/$t.log"
  # The checkpoint reader promises a budget (64 MiB in the target, plus the input's length):
  # no single allocation may exceed it, nor the process grow past a few times it.
  extra=()
  [ "$t" = pickle ] && extra=(-malloc_limit_mb=160 -rss_limit_mb=1024 -max_len=65536)
  "$bin/$t" -max_total_time="$secs" -rss_limit_mb=2048 -timeout=10 -print_final_stats=1 "${extra[@]}" \
    -artifact_prefix="artifacts/$t/" "target/work/$t" "corpus/$t" >"$log" 2>&1 &
  pid=$!
  status=0
  wait $pid || status=$?
  # The target's scratch directory (fuzz_targets/common.rs).
  rm -rf "/dev/shm/sadajem-fuzz-$pid" "${TMPDIR:-/tmp}/sadajem-fuzz-$pid"
  if [ $status -eq 0 ]; then
    runs=$(sed -n 's/^Done \([0-9]*\) runs in \([0-9]*\) second.*/\1 executions in \2 s/p' "$log")
    echo "fuzz $t: $runs, no failure"
  else
    echo "fuzz $t: FAILED; input in fuzz/artifacts/$t/, log $log:"
    grep -v -E '^#[0-9]+' "$log" | tail -40
    failed+=("$t")
  fi
done
[ ${#failed[@]} -eq 0 ] || { echo "fuzz targets that failed: ${failed[*]}"; exit 1; }
