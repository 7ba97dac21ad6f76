#!/usr/bin/env bash
# The README's first command: SADA-JEM on the bundled Fashion-MNIST, on a laptop CPU —
# train, evaluate (accuracy, calibration, OOD vs MNIST/noise/interpolations, PGD, FID, fresh
# samples), write runs/demo/report.html and print the summary table.
#
# The budget is 15 minutes on 2 cores including the build (10 min 45 s measured on a fresh
# clone, docs/results.md), so the demo trains the
# sadajem-fashion preset on 45,000 of the training images (2 epochs) and scores FID on small
# samples (200 fresh chains and 225 buffer images against 500 test images: biased upwards,
# named in runs/demo/eval/fid.json). Extra arguments go to `sadajem train`.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup-libtorch.sh
scripts/setup-inception.sh
cargo build --release --quiet
bin="${CARGO_TARGET_DIR:-target}/release/sadajem"
rm -rf runs/demo
"$bin" train --preset sadajem-fashion --run-dir runs/demo --set data.max_train=45000 "$@"
"$bin" eval --run-dir runs/demo \
  --set eval.fid_n=200 --set eval.fid_buffer_n=250 --set eval.fid_reference_n=500 \
  --set eval.kid_subsets=20 --set eval.kid_subset_size=100
"$bin" report --run-dir runs/demo
