#!/usr/bin/env python3
"""Writes the fuzz seed corpora, fuzz/corpus/<target>/: a handful of small valid files per
target, from tests/fixtures and synthetic data. Run from the repository root:

    python3 fuzz/seeds.py

The JPEG seeds of folder_image are not made here (Python's standard library has no JPEG
encoder); see fuzz/corpus/README.md.
"""
import gzip
import json
import os
import struct
import zlib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CORPUS = os.path.join(ROOT, "fuzz", "corpus")


def put(target, name, data):
    d = os.path.join(CORPUS, target)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)


def mtime_free_gzip(data):
    return gzip.compress(data, mtime=0)


# ---- idx: first byte 0 = the images file, 1 = the labels file (see fuzz_targets/idx.rs) ----
def idx(magic, dims, data):
    return struct.pack(">I", magic) + b"".join(struct.pack(">I", d) for d in dims) + bytes(data)


images = idx(0x803, [3, 2, 2], range(12))
labels = idx(0x801, [3], [7, 0, 9])
gradient = idx(0x803, [2, 28, 28], [(i * 7) % 256 for i in range(2 * 28 * 28)])
put("idx", "images", b"\x00" + images)
put("idx", "labels", b"\x01" + labels)
put("idx", "images.gz", b"\x00" + mtime_free_gzip(images))
put("idx", "labels.gz", b"\x01" + mtime_free_gzip(labels))
put("idx", "images-28x28", b"\x00" + gradient)

# ---- cifar: whole records from the fixtures ----
with open(os.path.join(ROOT, "tests/fixtures/cifar10/test_batch.bin"), "rb") as f:
    c10 = f.read()
with open(os.path.join(ROOT, "tests/fixtures/cifar100/test.bin"), "rb") as f:
    c100 = f.read()
put("cifar", "cifar10-1", c10[:3073])
put("cifar", "cifar10-2", c10[: 2 * 3073])
put("cifar", "cifar100-2", c100[: 2 * 3074])


# ---- svhn: MATLAB level-5 files with X [32, 32, 3, N] uint8 and y [N, 1] ----
class Mat:
    def __init__(self, big):
        self.e = ">" if big else "<"

    def u32(self, v):
        return struct.pack(self.e + "I", v)

    def header(self):
        text = b"MATLAB 5.0 MAT-file, written by fuzz/seeds.py".ljust(116, b" ")
        version = struct.pack(self.e + "H", 0x0100)
        return text + b"\0" * 8 + version + (b"MI" if self.e == ">" else b"IM")

    def element(self, kind, data, small_ok=True):
        if small_ok and len(data) <= 4:
            return self.u32((len(data) << 16) | kind) + data.ljust(4, b"\0")
        out = self.u32(kind) + self.u32(len(data)) + data
        return out + b"\0" * (-len(out) % 8)

    def matrix(self, name, cls, dims, kind, real):
        flags = self.u32(cls) + b"\0" * 4
        body = self.element(6, flags)
        body += self.element(5, b"".join(self.u32(d) for d in dims))
        body += self.element(1, name.encode())
        body += self.element(kind, real)
        return self.element(14, body, small_ok=False)

    def compressed(self, element):
        z = zlib.compress(element)
        return self.u32(15) + self.u32(len(z)) + z


def svhn(big, compress, n=1):
    m = Mat(big)
    x = m.matrix("X", 9, [32, 32, 3, n] if n > 1 else [32, 32, 3], 2, bytes((i * 3) % 256 for i in range(3072 * n)))
    ys = b"".join(struct.pack(m.e + "d", float(10 - i)) for i in range(n))
    y = m.matrix("y", 6, [n, 1], 9, ys)
    out = m.header()
    for el in (x, y):
        out += m.compressed(el) if compress else el
    return out


put("svhn", "plain-le", svhn(False, False))
put("svhn", "zlib-le", svhn(False, True, n=2))
put("svhn", "plain-be", svhn(True, False))
labels_u8 = Mat(False)
put(
    "svhn",
    "labels-as-uint8",
    labels_u8.header()
    + labels_u8.matrix("y", 6, [1, 1], 2, b"\x03")
    + labels_u8.matrix("X", 9, [32, 32, 3], 2, bytes(3072)),
)


# ---- checkpoint: safetensors with the state and checksum (src/train/checkpoint.rs) ----
def checksum(tensors, state):
    crc = 0
    def field(b):
        nonlocal crc
        crc = zlib.crc32(struct.pack("<Q", len(b)) + b, crc)
    for name, dtype, shape, data in sorted(tensors):
        field(name.encode())
        field(dtype.encode())
        field(b"".join(struct.pack("<Q", d) for d in shape))
        field(data)
    field(state.encode())
    return "%08x" % crc


def safetensors(tensors, state):
    header = {"__metadata__": {"sadajem.state": state, "sadajem.crc32": checksum(tensors, state)}}
    data, offset = b"", 0
    for name, dtype, shape, raw in tensors:
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + len(raw)]}
        data += raw
        offset += len(raw)
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    return struct.pack("<Q", len(text)) + text + data


def f32(*v):
    return struct.pack("<%df" % len(v), *v)


state = json.dumps(
    {
        "iter": 12, "epoch": 0,
        "stream": {"rng_at_shuffle": {"seed": [1] * 32, "stream": 0, "word_pos": 8}, "batch_in_pass": 3, "pass": 0},
        "px_stream": None,
        "augment_rng": {"seed": [2] * 32, "stream": 0, "word_pos": 0},
        "best_valid_acc": None, "best_epoch": None, "train_seconds": 1.5, "rollbacks": 0, "lr_scale": 1.0,
    },
    separators=(",", ":"),
)
model = [
    ("model.conv.weight", "F32", [2, 1, 1, 1], f32(0.5, -1.0)),
    ("model.bn.running_mean", "F32", [2], f32(0.0, 0.1)),
    ("optim.momentum.conv.weight", "F32", [2, 1, 1, 1], f32(0.01, 0.02)),
    ("rng.torch.cpu", "U8", [16], bytes(range(16))),
]
put("checkpoint", "softmax", safetensors(model, state))
put("checkpoint", "joint", safetensors(model + [("sampler.buffer", "F32", [1, 1, 2, 2], f32(0.1, 0.2, 0.3, 0.4))], state))
put("checkpoint", "adam", safetensors([("optim.adam_step.w", "I64", [], struct.pack("<q", 5)), ("optim.adam_m.w", "F16", [1], b"\0<")], "{}"))
put("checkpoint", "empty", safetensors([], "null"))

# ---- config: the presets, and a file with --set lines after `---` ----
for name in sorted(os.listdir(os.path.join(ROOT, "configs"))):
    if name.endswith(".toml") and name.startswith(("softmax-fashion", "sadajem-cifar10", "jem-cifar10", "jempp-cifar10", "sadajem-cifar100")):
        with open(os.path.join(ROOT, "configs", name), "rb") as f:
            put("config", name[:-5], f.read())
put("config", "sets", b'[train]\nepochs = 2\n---\noptim.lr=0.05\ndata.flip=false\noptim.decay_epochs=[1, 2]\ndata.dir="x y"\n')
put("config", "eval", b'[eval]\nood_sets = ["interp", "data/mnist"]\npgd_linf_eps = [1.0, 8.0]\n---\neval.fid_reference="test"\n')


# ---- folder_image: byte 0 = channels (odd: RGB), byte 1 = size, then the file ----
def png(width, height, color_type, bit_depth, rows, palette=None):
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    ihdr = struct.pack(">IIBBBBB", width, height, bit_depth, color_type, 0, 0, 0)
    raw = b"".join(b"\0" + r for r in rows)
    out = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr)
    if palette:
        out += chunk(b"PLTE", palette)
    return out + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")


w, h = 12, 8
put("folder_image", "rgb8.png", b"\x01\x1f" + png(w, h, 2, 8, [b"".join(bytes((x * 20, y * 30, 128)) for x in range(w)) for y in range(h)]))
put("folder_image", "grey8.png", b"\x00\x1b" + png(w, h, 0, 8, [bytes((x * 20 + y) % 256 for x in range(w)) for y in range(h)]))
put("folder_image", "rgba8.png", b"\x01\x07" + png(4, 4, 6, 8, [b"".join(bytes((x * 60, 0, 255, 128)) for x in range(4)) for _ in range(4)]))
put("folder_image", "grey16.png", b"\x00\x03" + png(4, 3, 0, 16, [b"".join(struct.pack(">H", x * 9000) for x in range(4)) for _ in range(3)]))
put("folder_image", "palette1.png", b"\x01\x0f" + png(16, 2, 3, 1, [b"\xaa\x55", b"\x55\xaa"], palette=b"\x00\x00\x00\xff\x80\x00"))
# A palette of 4 bytes, not whole RGB entries: png 0.18.1 panicked on it (found by this target).
put("folder_image", "palette-partial.png", b"\x01\x0f" + png(2, 2, 3, 8, [b"\x00\x01", b"\x01\x00"], palette=b"\x00\x00\x00\xff"))


# ---- pickle: torch.save files, zip and legacy (src/pickle/archive.rs) ----
# The fixtures written by scripts/make-pickle-fixture.py, and small hand-written ones: a tiny
# state dict in both formats, a deflated archive, a stride-0 view, shared references. None
# runs code under torch.load.
for name in ("checkpoint.pt", "checkpoint-legacy.pt"):
    with open(os.path.join(ROOT, "tests/fixtures/pickle", name), "rb") as f:
        put("pickle", name, f.read())

LEGACY_MAGIC = b"\x80\x02\x8a\x0al\xfc\x9cF\xf9 j\xa8P\x19."


def pstr(s):
    return b"X" + struct.pack("<I", len(s)) + s.encode()


def pint(i):
    return b"\x8a\x08" + struct.pack("<q", i)


def ptensor(key, numel, offset, size, stride):
    ints = lambda v: b"(" + b"".join(pint(i) for i in v) + b"t"
    pid = b"((" + pstr("storage") + b"ctorch\nFloatStorage\n" + pstr(key) + pstr("cpu") + pint(numel) + b"tQ"
    return (b"ctorch._utils\n_rebuild_tensor_v2\n" + pid + pint(offset) + ints(size) + ints(stride)
            + b"\x89ccollections\nOrderedDict\n)Rt" + b"R")


def legacy(obj, numels):
    out = LEGACY_MAGIC + b"\x80\x02M\xe9\x03." + b"\x80\x02}q\x00X\x0d\x00\x00\x00little_endianq\x01\x88s." + obj
    out += b"\x80\x02(" + b"".join(pstr(str(i)) for i in range(len(numels))) + b"l."
    for n in numels:
        out += struct.pack("<Q", n) + bytes(4 * n)
    return out


def torch_zip(obj, numels, method=0):
    import io
    import zipfile
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED if method else zipfile.ZIP_STORED) as z:
        for name, data in [("archive/data.pkl", obj), ("archive/byteorder", b"little")] + [
            ("archive/data/%d" % i, bytes(4 * n)) for i, n in enumerate(numels)
        ]:
            info = zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED if method else zipfile.ZIP_STORED
            z.writestr(info, data)
    return buf.getvalue()


state = (b"\x80\x02}(" + pstr("model_state_dict") + b"ccollections\nOrderedDict\n)R("
         + pstr("w") + ptensor("0", 6, 0, [2, 3], [3, 1]) + pstr("b") + ptensor("1", 2, 0, [2], [1]) + b"u"
         + pstr("replay_buffer") + ptensor("2", 1, 0, [3, 1, 2, 2], [0, 0, 0, 0]) + pstr("epoch") + b"K\x07u.")
put("pickle", "state.pt", torch_zip(state, [6, 2, 1]))
put("pickle", "state-deflated.pt", torch_zip(state, [6, 2, 1], method=8))
put("pickle", "state-legacy.pt", legacy(state, [6, 2, 1]))
shared = b"\x80\x02]q\x000" + b"".join(b"(h" + bytes([i - 1]) + b"h" + bytes([i - 1]) + b"lq" + bytes([i]) + b"0" for i in range(1, 8)) + b"h\x07."
put("pickle", "shared-legacy.pt", legacy(shared, []))
