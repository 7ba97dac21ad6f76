#!/usr/bin/env bash
# The study (docs/results.md): softmax, JEM, JEM++ and SADA-JEM trained on the bundled
# Fashion-MNIST with one network and one schedule (a WRN-10-1, EPOCHS epochs, the learning rate
# decayed twice in the last third, seed 1), every EVERY-th epoch's checkpoint evaluated with one
# evaluation for all four (test accuracy, ECE, AUROC of log p(x) against four OOD sets, PGD-20
# L∞ 8/255, FID/KID of fresh chains and of the buffer), then `sadajem compare`: per-recipe
# tables and learning curves in runs/study/compare.html and comparison.md.
#
#   scripts/reproduce.sh [train|eval|compare]     (no stage: all three, in order)
#   EPOCHS=6 EVERY=2 OUT=runs/study scripts/reproduce.sh
#
# Each stage picks up where a killed one stopped: a run without final.json resumes, a
# checkpoint with an evaluation is not evaluated again. Extra arguments after the stage go to
# every `train`. The default budget took ~2 h on 2 CPU cores with bf16 (58 min training; 80 min in
# all on a faster CPU) (docs/results.md).
set -euo pipefail
cd "$(dirname "$0")/.."
stage=${1:-all}
[ $# -gt 0 ] && shift
case "$stage" in all | train | eval | compare) ;; *) echo "reproduce.sh: unknown stage '$stage' (expected train, eval or compare)" >&2; exit 2 ;; esac
epochs=${EPOCHS:-6}
every=${EVERY:-2}
out=${OUT:-runs/study}
recipes=(softmax jem jempp sadajem)

scripts/setup-libtorch.sh
scripts/setup-inception.sh
cargo build --release --quiet
bin="${CARGO_TARGET_DIR:-target}/release/sadajem"
mkdir -p "$out"

# Decays after 2/3 and 5/6 of the epochs (6 epochs: after the 4th and the 5th).
decays="$((epochs * 2 / 3)),$((epochs * 5 / 6))"
[ "$((epochs * 2 / 3))" = "$((epochs * 5 / 6))" ] && decays="$((epochs * 2 / 3))"
# Checkpoints at epoch ends only, all of them kept, for the evaluation stage.
budget=(--set model.depth=10 --set model.widen=1 --set train.seed=1 --set "train.epochs=$epochs"
        --set "optim.decay_epochs=[$decays]" --set train.checkpoint_every=0 --set "train.keep_checkpoints=$((epochs + 1))")
# One evaluation for every recipe and checkpoint: the presets' OOD sets (2,000 images each),
# FID/KID on 500 fresh chains and the most confident 90 % of 1,000 buffer entries against
# 2,000 test images, PGD-20 at the one radius the paper's table reports.
evaluation=(--set eval.pgd_linf_eps=[8] --set eval.pgd_l2_eps=[] --set eval.pgd_n=500 --set eval.ood_n=2000
            --set eval.fid_n=500 --set eval.fid_buffer_n=1000 --set eval.fid_reference_n=2000)

train() {
  for recipe in "${recipes[@]}"; do
    dir="$out/$recipe"
    if [ -f "$dir/final.json" ]; then
      echo "study: $dir is trained"
    elif [ -f "$dir/checkpoints/latest.safetensors" ]; then
      "$bin" train --resume "$dir"
    else
      rm -rf "$dir"
      "$bin" train --preset "$recipe-fashion" --run-dir "$dir" "${budget[@]}" "$@"
    fi
  done
}

# The checkpoint of every EVERY-th epoch: the numbered ones after iter_0000000 (the untrained
# network the run starts from) are the epoch ends in order, the last epoch's is `latest`.
checkpoints() {
  local dir=$1 i=0
  for ckpt in $(ls "$dir"/checkpoints/iter_*.safetensors 2>/dev/null | sort) "$dir/checkpoints/latest.safetensors"; do
    [ "$(basename "$ckpt")" = iter_0000000.safetensors ] && continue
    i=$((i + 1))
    [ $((i % every)) = 0 ] && echo "$ckpt"
  done
}

evaluate() {
  for recipe in "${recipes[@]}"; do
    dir="$out/$recipe"
    [ -f "$dir/final.json" ] || { echo "study: $dir is not trained (run the train stage)" >&2; exit 1; }
    for ckpt in $(checkpoints "$dir"); do
      name=$(basename "$ckpt" .safetensors)
      if [ "$name" = latest ]; then
        name=$(printf 'iter_%07d' "$(grep -o '"iterations": *[0-9]*' "$dir/final.json" | grep -o '[0-9]*$')")
      fi
      dest="$dir/study/$name"
      [ -d "$dest" ] && continue
      rm -rf "$dest.tmp"
      "$bin" eval --run-dir "$dir" --checkpoint "$ckpt" --out "$dest.tmp" "${evaluation[@]}"
      mv "$dest.tmp" "$dest"
    done
  done
}

compare() {
  runs=()
  for recipe in "${recipes[@]}"; do runs+=("$out/$recipe"); done
  "$bin" compare --out "$out" "${runs[@]}"
  echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)"
}

case "$stage" in
  train) train "$@" ;;
  eval) evaluate ;;
  compare) compare ;;
  all) train "$@"; evaluate; compare ;;
esac
