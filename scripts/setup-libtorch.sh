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

# libtorch contains c10d's Gloo backend (data-parallel `train --nproc`) but not the Gloo headers
# the shim compiles against; Debian's libgloo-dev has them. Without apt the build goes on
# without `--nproc` (build.rs says so).
gloo_headers() {
  local inc="$dest/gloo-include"
  [ -f "$inc/gloo/algorithm.h" ] && return 0
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

echo "setup: installing libtorch 2.11.0 (CPU, ~0.5 GB download) into $dest" >&2
partial="$dest.partial"
rm -rf "$partial"
PIP_ROOT_USER_ACTION=ignore python3 -m pip install --quiet --disable-pip-version-check --no-deps --target "$partial" \
  torch==2.11.0 nvidia-cuda-runtime==13.0.96 nvidia-cuda-cupti==13.0.85
test -f "$partial/torch/include/ATen/ATen.h" || { echo "setup: the torch wheel has no C++ headers" >&2; exit 1; }
rm -rf "$dest"
mv "$partial" "$dest"
touch "$stamp"
gloo_headers
echo "setup: libtorch ready" >&2
