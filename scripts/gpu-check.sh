#!/usr/bin/env bash
# The prepared device check (issue 19): everything the CUDA path must do, in one bounded go on a
# lent GPU, measured into one folder.
#
#   scripts/gpu-check.sh [OUT_DIR]            on a GPU machine (default OUT_DIR: $OUT, else
#                                             gpu-check-out/), at most 7.5 minutes
#   scripts/gpu-check.sh --dry-run [OUT_DIR]  the same steps on this machine's CPU with tiny
#                                             sizes (CI runs it), about 1–2 minutes
#
# On the GPU machine it runs the carried binary (SADAJEM_BIN, default target-cuda/bin/sadajem from
# `make build-cuda`; no Rust toolchain is needed there) against the torch 2.11 that python3 has,
# whose torch/lib and nvidia/*/lib go on LD_LIBRARY_PATH. Steps, each under its own timeout:
#   env             the GPU, the driver, python3's torch, `sadajem --version`, no missing library
#   train_fp32      a short sadajem-fashion run on the GPU, fp32, train.deterministic = true
#   resume_fp32     the same run killed (SIGKILL) two thirds through, resumed: equal, bitwise
#   bench_fp32/bf16 `sadajem bench --preset sadajem-cifar10 --reference` at WRN-28-10 on
#                   synthetic CIFAR-shaped images: iteration time and GPU memory, ours and
#                   PyTorch's (bench/reference_step.py) on the same GPU
#   eval            `sadajem eval` of train_fp32's run on the GPU, every metric, FID included,
#                   and its accuracy recomputed on the CPU (the same to 0.2 points)
#   nccl_one        train_fp32's run as an NCCL world of one worker (`train --nproc 1
#                   --set train.backend=nccl`): equal to train_fp32, bitwise
#   gloo_two        2 Gloo workers sharing the GPU vs 1 worker with twice the batch: the same
#                   weights up to float rounding
#   train_bf16, resume_bf16   as for fp32, in bf16
#   default_fp32    train_fp32 without train.deterministic: how far cuDNN's default kernels
#                   take the same run (reported, not judged)
# Deterministic mode is what makes a GPU resume comparable bitwise: cuDNN's default algorithms
# (atomics in the weight gradients) give a slightly different result on every run.
#
# OUT_DIR receives summary.json and summary.md (every number, pass/fail per step), log.txt
# (every command's output), bench.jsonl (the bench records) and runs.tar.gz (the runs' configs,
# metrics and eval JSON, without checkpoints). Exit status 0 when every step passed.
set -uo pipefail
cd "$(dirname "$0")/.."
root=$PWD

dry=0
out=""
for a in "$@"; do
  case "$a" in
    --dry-run) dry=1 ;;
    -h|--help) sed -n '2,/^set -uo/p' "$0" | sed '$d'; exit 0 ;;
    -*) echo "gpu-check: unknown option $a (expected --dry-run and/or an output folder)" >&2; exit 2 ;;
    *) out=$a ;;
  esac
done
out=${out:-${OUT:-gpu-check-out}}
mkdir -p "$out" && out=$(cd "$out" && pwd) || exit 2
rm -f "$out"/summary.json "$out"/summary.md "$out"/log.txt "$out"/bench.jsonl "$out"/runs.tar.gz
work=$(mktemp -d "${TMPDIR:-/tmp}/sadajem-gpu-check.XXXXXX")
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/results"
log=$out/log.txt
helper=$root/scripts/gpu-check.py
started=$(date +%s)

if [ $dry = 1 ]; then
  mode=dry-run
  # The dry run forces bf16; on a CI CPU without AVX512-BF16 (or AVX-512 at all) bf16 is
  # emulated, 7x slower than fp32 for these steps (the release binary, 15 iterations: 53 s vs
  # 7-8 s; PyTorch 2.11 alone shows the same, a 3x3 conv forward+backward at 32x16x28x28 takes
  # 72 ms in bf16 vs 11 ms in fp32 on one thread). So the bf16 run and resume get minutes here.
  budget=${GPU_CHECK_BUDGET_S:-720}
  bf16_s=(300 360)
  dev=cpu
  if [ -z "${SADAJEM_BIN:-}" ]; then
    # `make test` has built the debug binary; this is a no-op then.
    cargo build --quiet >>"$log" 2>&1 || { echo "gpu-check: cargo build failed (see $log)" >&2; exit 1; }
    bin=${CARGO_TARGET_DIR:-$root/target}/debug/sadajem
  else
    bin=$SADAJEM_BIN
  fi
  one_backend=gloo
  # CPU float sums in another order (two half-batch means vs one mean): 1.8e-7 measured
  # (tests/distributed.rs); a missing all-reduce moves the weights by 1.2e-3 or more.
  two_tolerance=2e-5
  bench_python=$root/bench/.venv/bin/python
else
  mode=gpu
  budget=${GPU_CHECK_BUDGET_S:-450}
  bf16_s=(90 120)
  dev=cuda
  bin=${SADAJEM_BIN:-$root/target-cuda/bin/sadajem}
  torch_dir=$(python3 -c 'import torch, os; print(os.path.dirname(torch.__file__))') ||
    { echo "gpu-check: python3 has no torch; the GPU machine's python3 should have torch 2.11" >&2; exit 1; }
  nvidia_libs=$(ls -d "$(dirname "$torch_dir")"/nvidia/*/lib 2>/dev/null | paste -sd: -)
  export LD_LIBRARY_PATH="$torch_dir/lib${nvidia_libs:+:$nvidia_libs}${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
  one_backend=nccl
  # Not measured yet: TF32 convolutions and a different cuDNN algorithm per batch size round
  # differently from the CPU; still well under the 1.2e-3 of a missing all-reduce.
  two_tolerance=5e-4
  bench_python=python3
fi
[ -x "$bin" ] || { echo "gpu-check: no binary at $bin (make build-cuda builds target-cuda/bin/sadajem; or set SADAJEM_BIN)" >&2; exit 1; }
deadline=$((started + budget))
export dry dev bin work out helper one_backend two_tolerance bench_python root

# --- helpers (exported: every step runs in its own `timeout bash -c`) ---------------------------

# Sets A to the arguments of the check's short sadajem-fashion run into RUN_DIR, then EXTRA.
fashion_args() {
  local run=$1; shift
  A=(--preset sadajem-fashion --run-dir "$run" --set "train.device=$dev" --set train.epochs=2
     --set train.sample_every=0 --set "optim.decay_epochs=[1]" --set train.threads=1)
  if [ "$dry" = 1 ]; then
    # 500 training images in batches of 32: 15 iterations an epoch, 30 in all.
    A+=(--set data.max_train=600 --set data.n_valid=100 --set data.max_test=200 --set data.batch_size=32
        --set loss.px_batch_size=16 --set sampler.batch_size=16 --set sampler.steps=2 --set sampler.buffer_size=200
        --set optim.warmup_iters=5 --set train.log_every=1 --set train.checkpoint_every=5)
  else
    # 5,000 training images in batches of 128: 39 iterations an epoch, 78 in all.
    A+=(--set data.max_train=6000 --set data.n_valid=1000 --set data.max_test=2000
        --set optim.warmup_iters=10 --set train.log_every=3 --set train.checkpoint_every=20)
  fi
  A+=("$@")
}
# metrics.jsonl lines after which a run is killed: iteration 22 of 30 (last checkpoint at 20),
# or 54 of 78 (checkpoint at 40): in the second epoch, past its last checkpoint.
kill_at() { if [ "$dry" = 1 ]; then echo 22; else echo 18; fi; }

# Trains RUN_DIR with EXTRA and SIGKILLs it once metrics.jsonl has kill_at lines.
train_killed() {
  local run=$1; shift
  fashion_args "$run" "$@"
  "$bin" train "${A[@]}" >"$run.log" 2>&1 &
  local pid=$! at; at=$(kill_at)
  while kill -0 "$pid" 2>/dev/null; do
    if [ -f "$run/metrics.jsonl" ] && [ "$(wc -l <"$run/metrics.jsonl")" -ge "$at" ]; then
      kill -9 "$pid"; wait "$pid" 2>/dev/null
      cat "$run.log"
      echo "killed $run after $(wc -l <"$run/metrics.jsonl") metrics lines"
      [ ! -f "$run/final.json" ] || { echo "it had finished already"; return 1; }
      return 0
    fi
    sleep 0.05
  done
  wait "$pid"; cat "$run.log"; echo "the run ended before it could be killed"; return 1
}

# Runs the helper, keeps its JSON as the step's result and passes its status on.
judge() {
  local name=$1; shift
  python3 "$helper" "$@" >"$work/results/$name.json"; local rc=$?
  cat "$work/results/$name.json"; return $rc
}

built_with() { "$bin" --version | grep -q "$1"; }

# --- steps: 0 pass, 3 skipped (reason printed), 4 info (reported, never a failure) ------------

step_env() {
  "$bin" --version || return 1
  local missing; missing=$(ldd "$bin" | grep "not found")
  [ -z "$missing" ] || { echo "libraries not found: $missing"; return 1; }
  local gpu="" driver="" torch=""
  if [ "$dry" = 0 ]; then
    nvidia-smi || true
    gpu=$(nvidia-smi --query-gpu=name,memory.total --format=csv,noheader 2>/dev/null | head -1)
    driver=$(nvidia-smi --query-gpu=driver_version --format=csv,noheader 2>/dev/null | head -1)
    torch=$(python3 -c 'import torch; print(torch.__version__, "CUDA", torch.version.cuda, "cudnn", torch.backends.cudnn.version(), "available", torch.cuda.is_available())')
    echo "LD_LIBRARY_PATH=$LD_LIBRARY_PATH"
  fi
  GPU="$gpu" DRIVER="$driver" TORCH="$torch" VERSION="$("$bin" --version | paste -sd' ' -)" python3 -c '
import json, os
print(json.dumps({"gpu": os.environ["GPU"], "driver": os.environ["DRIVER"], "torch": os.environ["TORCH"], "sadajem": os.environ["VERSION"]}))' >"$work/results/env.json"
  cat "$work/results/env.json"
  if [ "$dry" = 0 ]; then built_with "NCCL (train.backend = nccl): yes" || { echo "not the CUDA build (no NCCL): make build-cuda"; return 1; }; fi
}

step_train() {  # PRECISION [EXTRA...]: the uninterrupted run $work/PRECISION
  local p=$1; shift
  fashion_args "$work/$p" --set "train.precision=$p" --set train.deterministic=true "$@"
  "$bin" train "${A[@]}" && cat "$work/$p/final.json"
}

step_resume() {  # PRECISION: killed and resumed, against the uninterrupted run
  local p=$1
  [ -f "$work/$p/final.json" ] || { echo "no uninterrupted $p run to compare with"; return 3; }
  train_killed "$work/$p-killed" --set "train.precision=$p" --set train.deterministic=true || return 1
  "$bin" train --resume "$work/$p-killed" || return 1
  judge "resume_$p" same-metrics "$work/$p" "$work/$p-killed"
}

step_default() {  # fp32 without deterministic mode, against train_fp32
  [ -f "$work/fp32/final.json" ] || { echo "no deterministic fp32 run to compare with"; return 3; }
  fashion_args "$work/default" --set train.precision=fp32
  "$bin" train "${A[@]}" || return 1
  judge default_fp32 metric-difference "$work/fp32" "$work/default"
  return 4
}

step_bench() {  # PRECISION
  local p=$1 ref=()
  local -a sizes=()
  if [ "$dry" = 1 ]; then
    sizes=(--synthetic 64 --set model.depth=10 --set model.widen=1 --set data.batch_size=8 --set loss.px_batch_size=8
           --set sampler.batch_size=8 --set sampler.buffer_size=64 --set sampler.steps=2 --warmup 1 --iters 2)
    if [ -x "$bench_python" ]; then ref=(--reference); else echo "no bench/.venv: timing ours alone"; fi
  else
    sizes=(--synthetic 2048)
    ref=(--reference)
  fi
  SADAJEM_BENCH_PYTHON=$bench_python "$bin" bench --preset sadajem-cifar10 --set "train.device=$dev" --set "train.precision=$p" \
    "${sizes[@]}" "${ref[@]}" --allow-busy --results "$out/bench.jsonl"
}

step_eval() {
  local run=$work/fp32
  [ -f "$run/final.json" ] || { echo "no fp32 run to evaluate"; return 3; }
  local inception="${SADAJEM_INCEPTION:-}" about
  if [ -z "$inception" ]; then
    for f in weights/inception-2015-12-05-fid.torchscript.pt ../shared/weights/inception-2015-12-05-fid.torchscript.pt \
             weights/pt_inception-2015-12-05-6726825d.pth; do
      [ -f "$f" ] && { inception=$PWD/$f; break; }
    done
  fi
  if [ -n "$inception" ]; then
    about="the FID network $inception"
  elif [ "$dry" = 0 ] && python3 -c 'import torchvision' 2>/dev/null; then
    # The real network (83 MiB) cannot travel to the GPU machine within its 64 MiB limit: the
    # same architecture with random weights exercises the same CUDA code; its FID values
    # compare nothing but this run's own numbers.
    inception=$work/inception-random.pth
    judge inception random-inception "$inception" 1 || return 1
    about="RANDOM weights in the FID network's architecture: the FID values only show that FID runs on the GPU"
  fi
  local only=() sizes=() network=()
  [ -z "$inception" ] || network=(--set "eval.inception=\"$inception\"")
  if [ "$dry" = 1 ]; then
    only=(--only "accuracy,calibration${inception:+,fid}")
    # ~50 images through the Inception network at 299²: ~15 s on 2 cores.
    sizes=(--set eval.fid_n=8 --set eval.fid_buffer_n=16 --set eval.fid_reference_n=24 --set eval.kid_subsets=4
           --set eval.kid_subset_size=8 --set eval.gen_steps=5)
  elif [ -z "$inception" ]; then
    only=(--only accuracy,calibration,ood,robustness,generation)
  fi
  [ -n "$inception" ] || about="no FID network here: fid left out"
  echo "eval with $about"
  # The reference statistics' cache stays inside this check.
  XDG_CACHE_HOME=$work/cache "$bin" eval --run-dir "$run" "${only[@]}" "${network[@]}" "${sizes[@]}" || return 1
  cp "$run/eval/accuracy.json" "$work/accuracy-$dev.json"
  if [ "$dry" = 0 ]; then
    # The same checkpoint's accuracy on the CPU (fp32 there; TF32 convolutions on the GPU).
    "$bin" eval --run-dir "$run" --only accuracy --set train.device=cpu || return 1
    cp "$run/eval/accuracy.json" "$work/accuracy-cpu.json"
  fi
  ABOUT="$about" python3 - "$run" "$work" "$dev" >"$work/results/eval.json" <<'EOF'
import json, os, sys
run, work, dev = sys.argv[1:]
load = lambda p: json.load(open(p)) if os.path.exists(p) else None
fid = load(os.path.join(run, "eval", "fid.json"))
acc = load(os.path.join(work, f"accuracy-{dev}.json"))
cpu = load(os.path.join(work, "accuracy-cpu.json")) if dev != "cpu" else None
r = {"inception": os.environ["ABOUT"], "accuracy": acc and acc.get("accuracy"),
     "accuracy_cpu": cpu and cpu.get("accuracy"), "fid": fid and {k: v for k, v in fid.items() if k in ("protocols", "seconds")}}
ok = True
if cpu is not None:
    r["accuracy_difference"] = abs(acc["accuracy"] - cpu["accuracy"])
    ok = r["accuracy_difference"] <= 0.002
r["ok"] = ok
print(json.dumps(r))
sys.exit(0 if ok else 1)
EOF
  local rc=$?
  cat "$work/results/eval.json"
  return $rc
}

step_nccl_one() {
  built_with "(--nproc): yes" || { echo "built without process groups (no Gloo headers)"; return 3; }
  [ -f "$work/fp32/final.json" ] || { echo "no fp32 run to compare with"; return 3; }
  fashion_args "$work/one" --set train.precision=fp32 --set train.deterministic=true --set "train.backend=$one_backend"
  "$bin" train --nproc 1 "${A[@]}" 2>&1 | tee "$work/one.out"
  [ "${PIPESTATUS[0]}" = 0 ] || return 1
  local name=Gloo; [ "$one_backend" = nccl ] && name=Nccl
  grep -q "worker 0 of 1 ($name)" "$work/one.out" || { echo "the worker did not say it joined a $name group of one"; return 1; }
  judge nccl_one same-metrics "$work/fp32" "$work/one"
}

step_gloo_two() {
  built_with "(--nproc): yes" || { echo "built without process groups (no Gloo headers)"; return 3; }
  local d=$dev; [ "$dry" = 0 ] && d=cuda:0  # both workers on the one GPU
  # tests/distributed.rs's equivalence settings: softmax + ASAM, WRN-10-1 without batch norm.
  local -a eq=(--preset softmax-fashion --set model.depth=10 --set model.norm=none --set data.max_train=160
               --set data.n_valid=32 --set data.max_test=100 --set train.epochs=1 --set optim.warmup_iters=2
               --set optim.sam_rho=0.5 --set optim.sam_adaptive=true --set train.precision=fp32 --set train.threads=1
               --set "train.device=$d" --set train.deterministic=true)
  "$bin" train --run-dir "$work/two-ref" --set data.batch_size=32 "${eq[@]}" || return 1
  "$bin" train --nproc 2 --run-dir "$work/two" --set data.batch_size=16 --set train.backend=gloo "${eq[@]}" || return 1
  judge gloo_two weights "$work/two-ref" "$work/two" "$two_tolerance"
}

export -f fashion_args kill_at train_killed judge built_with step_env step_train step_resume step_default step_bench \
  step_eval step_nccl_one step_gloo_two

# step NAME TIMEOUT_S ABOUT COMMAND...: runs COMMAND under its timeout (cut to what is left of
# the budget), its output into log.txt, its status into steps.tsv.
step() {
  local name=$1 limit=$2 about=$3; shift 3
  local now left status rc t0
  now=$(date +%s); left=$((deadline - now)); t0=$(date +%s.%N)
  if [ "$left" -lt 10 ]; then
    status=skipped; about="$about (the budget of ${budget}s was spent)"
  else
    [ "$limit" -gt "$left" ] && limit=$left
    printf '\n=== %s (timeout %ss): %s\n' "$name" "$limit" "$about" >>"$log"
    timeout -k 5 "$limit" bash -c '"$@"' _ "$@" >>"$log" 2>&1
    rc=$?
    case $rc in
      0) status=pass ;;
      3) status=skipped ;;
      4) status=info ;;
      124|137) status=timeout ;;
      *) status=fail ;;
    esac
  fi
  printf '%s\t%s\t%s\t%s\t%s\n' "$name" "$status" "$(awk "BEGIN { printf \"%.1f\", $(date +%s.%N) - $t0 }")" "$limit" "$about" \
    >>"$work/steps.tsv"
  printf '%-14s %-8s %s\n' "$name" "$status" "$about"
}

echo "gpu-check ($mode): $bin on $dev, budget ${budget}s → $out"
if [ $dry = 1 ]; then
  wrn="WRN-10-1 (dry run)"; metrics="accuracy, calibration and (with a FID network here) FID on cpu"
else
  wrn=WRN-28-10; metrics="every metric on cuda, FID included, and the accuracy again on the CPU"
fi
step env 30 "the machine, the libraries, the build" step_env
step train_fp32 90 "short sadajem-fashion run, fp32, deterministic" step_train fp32
step resume_fp32 120 "killed at 2/3 and resumed = uninterrupted, bitwise" step_resume fp32
step bench_fp32 150 "$wrn SADA-JEM iteration, ours vs PyTorch, fp32" step_bench fp32
step bench_bf16 150 "$wrn SADA-JEM iteration, ours vs PyTorch, bf16" step_bench bf16
step eval 180 "eval of the fp32 run: $metrics" step_eval
step nccl_one 90 "a world of one worker over $one_backend = the fp32 run, bitwise" step_nccl_one
step gloo_two 90 "2 Gloo workers on one device ≈ 1 worker with twice the batch (≤ $two_tolerance)" step_gloo_two
step train_bf16 "${bf16_s[0]}" "short sadajem-fashion run, bf16, deterministic" step_train bf16
step resume_bf16 "${bf16_s[1]}" "killed at 2/3 and resumed = uninterrupted, bitwise (bf16)" step_resume bf16
step default_fp32 90 "fp32 without deterministic mode vs with it (reported only)" step_default

tar -czf "$out/runs.tar.gz" -C "$work" --exclude='*.safetensors' --exclude='*.png' --exclude='*.pth' --exclude=./cache . 2>>"$log"
echo "total $(( $(date +%s) - started )) s" >>"$log"
python3 "$helper" summary "$work" "$out" "$mode"
