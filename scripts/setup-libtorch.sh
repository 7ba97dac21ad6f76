#!/usr/bin/env bash
# Installs the minimal CPU libtorch 2.11.0 — the C++ libraries inside PyPI's torch wheel, plus
# the two CUDA runtime libraries its CPU library links against — into ./libtorch, where
# .cargo/config.toml points LIBTORCH. Idempotent and silent once done.
#
# A CUDA user instead points LIBTORCH at a full torch 2.11.0 install (see README, "GPU").
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
dest="$root/libtorch"
stamp="$dest/.installed-torch-2.11.0"
[ -f "$stamp" ] && exit 0

echo "setup: installing libtorch 2.11.0 (CPU, ~0.5 GB download) into $dest" >&2
partial="$dest.partial"
rm -rf "$partial"
PIP_ROOT_USER_ACTION=ignore python3 -m pip install --quiet --disable-pip-version-check --no-deps --target "$partial" \
  torch==2.11.0 nvidia-cuda-runtime==13.0.96 nvidia-cuda-cupti==13.0.85
test -f "$partial/torch/include/ATen/ATen.h" || { echo "setup: the torch wheel has no C++ headers" >&2; exit 1; }
rm -rf "$dest"
mv "$partial" "$dest"
touch "$stamp"
echo "setup: libtorch ready" >&2
