#!/usr/bin/env python3
"""Writes the CIFAR test fixtures from the sample PNGs, in the official binary formats.

    python3 scripts/make-fixtures.py [SAMPLES_DIR]

SAMPLES_DIR (default /work/shared/data/samples) holds cifar10_NN_L.png and cifar100_NN_L.png:
the first 20 test images of each dataset, NN = index, L = label (the fine label for CIFAR-100).
Out come tests/fixtures/cifar10/test_batch.bin and tests/fixtures/cifar100/test.bin.

Standard library only, so the PNGs are decoded here by hand (zlib + the five PNG filters).
"""

import os
import re
import struct
import sys
import zlib

SIDE = 32

# CIFAR-100 fine label -> coarse label (superclass), both indices in the official meta order.
# The sample file names carry only the fine label, so the coarse byte comes from this table.
FINE_TO_COARSE = [
    4, 1, 14, 8, 0, 6, 7, 7, 18, 3,
    3, 14, 9, 18, 7, 11, 3, 9, 7, 11,
    6, 11, 5, 10, 7, 6, 13, 15, 3, 15,
    0, 11, 1, 10, 12, 14, 16, 9, 11, 5,
    5, 19, 8, 8, 15, 13, 14, 17, 18, 10,
    16, 4, 17, 4, 2, 0, 17, 4, 18, 17,
    10, 3, 2, 12, 12, 16, 12, 1, 9, 19,
    2, 10, 0, 1, 16, 12, 9, 13, 15, 13,
    16, 19, 2, 4, 6, 19, 5, 5, 8, 19,
    18, 1, 2, 15, 6, 0, 17, 8, 14, 13,
]


def read_png_rgb(path):
    """Returns (width, height, rows) where rows is a list of bytes, 3 bytes per pixel."""
    with open(path, "rb") as f:
        data = f.read()
    if data[:8] != b"\x89PNG\r\n\x1a\n":
        sys.exit(f"{path}: not a PNG file")
    pos = 8
    idat = b""
    width = height = None
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos:pos + 4])
        kind = data[pos + 4:pos + 8]
        body = data[pos + 8:pos + 8 + length]
        pos += 12 + length
        if kind == b"IHDR":
            width, height, depth, colour, _, _, interlace = struct.unpack(">IIBBBBB", body)
            # The samples are 8-bit RGB (colour type 2) or RGBA (6), not interlaced.
            if depth != 8 or colour not in (2, 6) or interlace != 0:
                sys.exit(f"{path}: expected 8-bit RGB/RGBA non-interlaced, got depth "
                         f"{depth}, colour type {colour}, interlace {interlace}")
            channels = 3 if colour == 2 else 4
        elif kind == b"IDAT":
            idat += body
        elif kind == b"IEND":
            break
    raw = zlib.decompress(idat)

    stride = width * channels
    rows = []
    prev = bytearray(stride)
    for y in range(height):
        start = y * (stride + 1)
        filt = raw[start]
        line = bytearray(raw[start + 1:start + 1 + stride])
        for i in range(stride):
            left = line[i - channels] if i >= channels else 0
            up = prev[i]
            up_left = prev[i - channels] if i >= channels else 0
            if filt == 0:
                pred = 0
            elif filt == 1:
                pred = left
            elif filt == 2:
                pred = up
            elif filt == 3:
                pred = (left + up) // 2
            elif filt == 4:
                p = left + up - up_left
                pa, pb, pc = abs(p - left), abs(p - up), abs(p - up_left)
                pred = left if pa <= pb and pa <= pc else (up if pb <= pc else up_left)
            else:
                sys.exit(f"{path}: unknown PNG filter {filt} on row {y}")
            line[i] = (line[i] + pred) & 0xFF
        prev = line
        if channels == 4:
            line = bytearray(b for i, b in enumerate(line) if i % 4 != 3)
        rows.append(bytes(line))
    return width, height, rows


def chw_planes(path):
    width, height, rows = read_png_rgb(path)
    if (width, height) != (SIDE, SIDE):
        sys.exit(f"{path}: expected {SIDE}x{SIDE}, got {width}x{height}")
    pixels = b"".join(rows)
    return b"".join(pixels[c::3] for c in range(3))


def samples(folder, prefix):
    found = []
    for name in os.listdir(folder):
        m = re.fullmatch(prefix + r"_(\d+)_(\d+)\.png", name)
        if m:
            found.append((int(m.group(1)), int(m.group(2)), os.path.join(folder, name)))
    found.sort()
    if [i for i, _, _ in found] != list(range(len(found))) or not found:
        sys.exit(f"{folder}: {prefix} samples are not numbered 00, 01, ... without gaps")
    return found


def main():
    folder = sys.argv[1] if len(sys.argv) > 1 else "/work/shared/data/samples"
    root = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "fixtures")

    out = bytearray()
    for _, label, path in samples(folder, "cifar10"):
        out += bytes([label]) + chw_planes(path)
    os.makedirs(os.path.join(root, "cifar10"), exist_ok=True)
    with open(os.path.join(root, "cifar10", "test_batch.bin"), "wb") as f:
        f.write(out)

    out = bytearray()
    for _, fine, path in samples(folder, "cifar100"):
        out += bytes([FINE_TO_COARSE[fine], fine]) + chw_planes(path)
    os.makedirs(os.path.join(root, "cifar100"), exist_ok=True)
    with open(os.path.join(root, "cifar100", "test.bin"), "wb") as f:
        f.write(out)


if __name__ == "__main__":
    main()
