#!/usr/bin/env bash
# Installs libtorch 2.11.0 for the Rust build. Idempotent and silent once done.
#
#   scripts/setup-libtorch.sh          the minimal CPU libtorch into ./libtorch (.cargo/config.toml
#                                      points LIBTORCH there): the C++ libraries inside PyPI's torch
#                                      wheel, plus the two CUDA runtime libraries its CPU library
#                                      links against (~0.5 GB download).
#   scripts/setup-libtorch.sh --cuda   the CUDA build's libtorch into ./libtorch-cuda: the same torch
#                                      wheel (PyPI's is the CUDA 13.0 build) with every NVIDIA
#                                      runtime wheel its CUDA library links or loads, in the layout
#                                      pip gives them (torch/lib's RPATH finds ../../nvidia/*/lib),
#                                      and nccl.h for the shim's NCCL backend (~3.5 GB download).
#                                      No GPU is needed to install or to build (`make build-cuda`).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)

cuda=0
case "${1:-}" in
  "") ;;
  --cuda) cuda=1 ;;
  *) echo "usage: $0 [--cuda]" >&2; exit 2 ;;
esac

if [ $cuda = 1 ]; then
  dest="$root/libtorch-cuda"
  stamp="$dest/.installed-torch-2.11.0-cu130"
  # torch 2.11.0's Requires-Dist for Linux: cuda-toolkit[cublas,cudart,cufft,cufile,cupti,curand,
  # cusolver,cusparse,nvjitlink,nvrtc,nvtx]==13.0.2 (whose METADATA pins the versions below),
  # nvidia-cudnn-cu13, -cusparselt-cu13, -nccl-cu13, -nvshmem-cu13. The Python-only ones
  # (cuda-bindings, triton, sympy, ...) are left out: the Rust build never imports Python.
  # nvidia-cuda-crt and -cccl (cuda-toolkit's `crt` and `cccl` extras, same pins) add headers
  # that cuda_runtime.h and cuda_fp16.h include, for the shim's NCCL code.
  wheels=(
    torch==2.11.0 nvidia-cuda-crt==13.0.88 nvidia-cuda-cccl==13.0.85
    nvidia-cublas==13.1.0.3 nvidia-cuda-runtime==13.0.96 nvidia-cufft==12.0.0.61
    nvidia-cufile==1.15.1.6 nvidia-cuda-cupti==13.0.85 nvidia-curand==10.4.0.35
    nvidia-cusolver==12.0.4.66 nvidia-cusparse==12.6.3.3 nvidia-nvjitlink==13.0.88
    nvidia-cuda-nvrtc==13.0.88 nvidia-nvtx==13.0.85
    nvidia-cudnn-cu13==9.19.0.56 nvidia-cusparselt-cu13==0.8.0 nvidia-nccl-cu13==2.28.9
    nvidia-nvshmem-cu13==3.4.5
  )
  what="CUDA 13.0, ~3.5 GB download"
else
  dest="$root/libtorch"
  stamp="$dest/.installed-torch-2.11.0"
  wheels=(torch==2.11.0 nvidia-cuda-runtime==13.0.96 nvidia-cuda-cupti==13.0.85)
  what="CPU, ~0.5 GB download"
fi

# libtorch contains c10d's Gloo backend (data-parallel `train --nproc`) but not the Gloo headers
# the shim compiles against; Debian's libgloo-dev has them. Without apt the build goes on
# without `--nproc` (build.rs says so).
gloo_headers() {
  local inc="$dest/gloo-include"
  [ -f "$inc/gloo/algorithm.h" ] && return 0
  # The other install's copy, if there is one, spares a download.
  local other="$root/libtorch/gloo-include"
  [ $cuda = 0 ] && other="$root/libtorch-cuda/gloo-include"
  if [ -f "$other/gloo/algorithm.h" ]; then
    rm -rf "$inc.partial" && cp -r "$other" "$inc.partial" && mv "$inc.partial" "$inc"
    return 0
  fi
  command -v apt-get >/dev/null && command -v dpkg-deb >/dev/null || {
    echo "setup: no apt-get/dpkg-deb: skipping the Gloo headers (train --nproc will be unavailable)" >&2; return 0; }
  local tmp; tmp=$(mktemp -d)
  local sudo=""; [ "$(id -u)" -ne 0 ] && command -v sudo >/dev/null && sudo="sudo -n"
  # `apt-get download` needs the package lists; a fresh machine may not have fetched them yet.
  (cd "$tmp" && apt-get download libgloo-dev >/dev/null 2>&1) ||
    { $sudo apt-get update -qq >/dev/null 2>&1 && (cd "$tmp" && apt-get download libgloo-dev >/dev/null 2>&1); } || true
  if ls "$tmp"/libgloo-dev_*.deb >/dev/null 2>&1 && dpkg-deb -x "$tmp"/libgloo-dev_*.deb "$tmp/x"; then
    rm -rf "$inc.partial" && mkdir -p "$inc.partial" && cp -r "$tmp/x/usr/include/gloo" "$inc.partial/" && mv "$inc.partial" "$inc"
    echo "setup: Gloo headers (Debian libgloo-dev) in $inc" >&2
  else
    echo "setup: could not download Debian's libgloo-dev: train --nproc will be unavailable" >&2
  fi
  rm -rf "$tmp"
}

if [ -f "$stamp" ]; then
  gloo_headers
  exit 0
fi

echo "setup: installing libtorch 2.11.0 ($what) into $dest" >&2
partial="$dest.partial"
rm -rf "$partial"
PIP_ROOT_USER_ACTION=ignore python3 -m pip install --quiet --disable-pip-version-check --no-deps --target "$partial" "${wheels[@]}"
test -f "$partial/torch/include/ATen/ATen.h" || { echo "setup: the torch wheel has no C++ headers" >&2; exit 1; }
if [ $cuda = 1 ]; then
  for h in nccl/include/nccl.h cu13/include/cuda_runtime_api.h cu13/include/crt/host_config.h cu13/include/nv/target; do
    test -f "$partial/nvidia/$h" || { echo "setup: the NVIDIA wheels have no $h" >&2; exit 1; }
  done
  # Every library torch's CUDA library needs must resolve inside the install (no GPU needed).
  missing=$(ldd "$partial/torch/lib/libtorch_cuda.so" | grep "not found" || true)
  [ -z "$missing" ] || { echo "setup: libtorch_cuda.so still misses: $missing" >&2; exit 1; }
fi
rm -rf "$dest"
mv "$partial" "$dest"
touch "$stamp"
gloo_headers
echo "setup: libtorch ready" >&2
