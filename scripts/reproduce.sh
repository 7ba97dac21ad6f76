#!/usr/bin/env bash
# A small-scale reproduction of the paper's comparison on the bundled Fashion-MNIST: softmax,
# JEM, JEM++ and SADA-JEM trained on the same budget (a WRN-10-1, 2 epochs with the learning
# rate decayed after the first, seed 1), evaluated with the same settings (the presets'
# [eval]), and compared: runs/reproduce/comparison.md and robustness.png. Took 40 minutes
# on 2 CPU cores with bf16 (docs/results.md). Extra arguments go to every `train`.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup-libtorch.sh
cargo build --release --quiet
bin="${CARGO_TARGET_DIR:-target}/release/sadajem"
out=runs/reproduce
mkdir -p "$out"
budget=(--set model.depth=10 --set model.widen=1 --set train.epochs=2 --set optim.decay_epochs=[1] --set train.seed=1)
runs=()
for recipe in softmax jem jempp sadajem; do
  dir="$out/$recipe"
  rm -rf "$dir"
  "$bin" train --preset "$recipe-fashion" --run-dir "$dir" "${budget[@]}" "$@"
  "$bin" eval --run-dir "$dir"
  "$bin" report --run-dir "$dir" > /dev/null
  runs+=("$dir")
done
"$bin" compare --out "$out" "${runs[@]}"
echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)"
