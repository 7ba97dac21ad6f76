#!/usr/bin/env python3
"""Writes the fixture `sadajem import` is tested on: a checkpoint laid out and named the way the
authors' JEM / JEM++ / SADA-JEM code saves one, and the logits it must give.

    python3 scripts/make-reference-fixture.py [OUT_DIR]

Needs PyTorch (any 2.x) and numpy. OUT_DIR defaults to tests/fixtures/reference. The network is
written here from the architecture in docs/method.md §1 (pre-activation WRN, biased convs, batch
norm with the reference's momentum 0.9, LeakyReLU 0.2); only the module names follow the
reference, so that `state_dict()` produces the names its checkpoints carry:

    f.conv1.{weight,bias}
    f.layer{1,2,3}.<block>.{bn1,conv1,bn2,conv2}.*, f.layer<g>.0.shortcut.0.{weight,bias}
    f.bn1.{weight,bias,running_mean,running_var,num_batches_tracked}
    energy_output.{weight,bias}     (a head the class-conditional model never uses)
    class_output.{weight,bias}

The model is a WRN-10-1 on 1×28×28 images with 10 classes (the bundled Fashion-MNIST's shape),
with random batch-norm affine parameters and running statistics, so that a wrong mapping or a
forward pass in the wrong mode shows in the logits. Out come:

- checkpoint.pt: torch.save({"model_state_dict": ..., "replay_buffer": [16, 1, 28, 28] in
  [-1, 1], "epoch": 3}), the zip format;
- checkpoint-legacy.pt: the same, in the format before PyTorch 1.6;
- logits.safetensors: 8 fixed inputs ("inputs", [8, 1, 28, 28]) and the model's logits on them
  in eval mode ("logits", [8, 10]), written with numpy alone.

    python3 scripts/make-reference-fixture.py --check FILE.pt

loads `sadajem export --format pytorch` of the imported fixture as the reference code loads a
checkpoint (torch.load, strict load_state_dict) and checks the logits.
"""

import json
import os
import sys

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as fn

SLOPE = 0.2
MOMENTUM = 0.9


def conv(cin, cout, k, stride=1):
    return nn.Conv2d(cin, cout, kernel_size=k, stride=stride, padding=k // 2, bias=True)


class Block(nn.Module):
    def __init__(self, cin, cout, stride):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(cin, momentum=MOMENTUM)
        self.conv1 = conv(cin, cout, 3)
        self.bn2 = nn.BatchNorm2d(cout, momentum=MOMENTUM)
        self.conv2 = conv(cout, cout, 3, stride)
        # A Sequential, so the projection is named `shortcut.0` and an identity has no weights.
        self.shortcut = nn.Sequential()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(conv(cin, cout, 1, stride))

    def forward(self, x):
        h = self.conv1(fn.leaky_relu(self.bn1(x), SLOPE))
        h = self.conv2(fn.leaky_relu(self.bn2(h), SLOPE))
        return h + self.shortcut(x)


class Backbone(nn.Module):
    """Everything up to the pooled features."""

    def __init__(self, depth, widen, channels):
        super().__init__()
        n = (depth - 4) // 6
        widths = [16, 16 * widen, 32 * widen, 64 * widen]
        self.conv1 = conv(channels, widths[0], 3)
        cin = widths[0]
        for g, (cout, stride) in enumerate(zip(widths[1:], [1, 2, 2])):
            blocks = []
            for b in range(n):
                blocks.append(Block(cin, cout, stride if b == 0 else 1))
                cin = cout
            setattr(self, f"layer{g + 1}", nn.Sequential(*blocks))
        self.bn1 = nn.BatchNorm2d(cin, momentum=MOMENTUM)
        self.last_dim = cin

    def forward(self, x):
        h = self.layer3(self.layer2(self.layer1(self.conv1(x))))
        return fn.leaky_relu(self.bn1(h), SLOPE).mean(dim=(2, 3))


class Classifier(nn.Module):
    """The reference's wrapper: the backbone as `f`, an energy head and a class head."""

    def __init__(self, depth, widen, channels, classes):
        super().__init__()
        self.f = Backbone(depth, widen, channels)
        self.energy_output = nn.Linear(self.f.last_dim, 1)
        self.class_output = nn.Linear(self.f.last_dim, classes)

    def forward(self, x):
        return self.class_output(self.f(x))


def randomise_batch_norm(model, gen):
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                c = m.num_features
                m.weight.copy_(0.5 + torch.rand(c, generator=gen))
                m.bias.copy_(0.2 * torch.randn(c, generator=gen))
                m.running_mean.copy_(0.5 * torch.randn(c, generator=gen))
                m.running_var.copy_(0.5 + 1.5 * torch.rand(c, generator=gen))
                m.num_batches_tracked.fill_(1234)


def write_safetensors(path, tensors):
    """The safetensors layout: u64 header length, JSON header, then the raw little-endian data."""
    header, blobs, offset = {}, [], 0
    for name, array in tensors.items():
        data = np.ascontiguousarray(array, dtype="<f4").tobytes()
        header[name] = {"dtype": "F32", "shape": list(array.shape), "data_offsets": [offset, offset + len(data)]}
        blobs.append(data)
        offset += len(data)
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    with open(path, "wb") as f:
        f.write(len(text).to_bytes(8, "little"))
        f.write(text)
        for b in blobs:
            f.write(b)


def read_safetensors(path):
    with open(path, "rb") as f:
        n = int.from_bytes(f.read(8), "little")
        header = json.loads(f.read(n))
        data = f.read()
    return {
        name: np.frombuffer(data[h["data_offsets"][0]:h["data_offsets"][1]], dtype="<f4").reshape(h["shape"])
        for name, h in header.items()
        if name != "__metadata__"
    }


def check(path, fixture_dir):
    """Loads a `sadajem export --format pytorch` of the imported fixture the way the reference
    code loads checkpoints (torch.load, strict load_state_dict) and compares the logits."""
    fixture = read_safetensors(os.path.join(fixture_dir, "logits.safetensors"))
    model = Classifier(depth=10, widen=1, channels=1, classes=10)
    checkpoint = torch.load(path)  # weights_only=True since PyTorch 2.6
    model.load_state_dict(checkpoint["model_state_dict"])
    model.eval()
    with torch.no_grad():
        logits = model(torch.from_numpy(fixture["inputs"].copy()))
    diff = (logits - torch.from_numpy(fixture["logits"].copy())).abs().max().item()
    buffer = checkpoint.get("replay_buffer")
    print(f"{path}: strict load_state_dict ok; max |logit difference| {diff:.3g}; "
          f"replay buffer {None if buffer is None else tuple(buffer.shape)}")
    assert diff < 1e-5


def main():
    if len(sys.argv) > 1 and sys.argv[1] == "--check":
        check(sys.argv[2], os.path.join("tests", "fixtures", "reference"))
        return
    out = sys.argv[1] if len(sys.argv) > 1 else os.path.join("tests", "fixtures", "reference")
    os.makedirs(out, exist_ok=True)
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(1)
    model = Classifier(depth=10, widen=1, channels=1, classes=10)
    randomise_batch_norm(model, gen)
    model.eval()
    inputs = torch.rand(8, 1, 28, 28, generator=gen) * 2 - 1
    with torch.no_grad():
        logits = model(inputs)
    checkpoint = {
        "model_state_dict": model.state_dict(),
        "replay_buffer": torch.rand(16, 1, 28, 28, generator=gen) * 2 - 1,
        "epoch": 3,
    }
    torch.save(checkpoint, os.path.join(out, "checkpoint.pt"))
    torch.save(checkpoint, os.path.join(out, "checkpoint-legacy.pt"), _use_new_zipfile_serialization=False)
    write_safetensors(os.path.join(out, "logits.safetensors"), {"inputs": inputs.numpy(), "logits": logits.numpy()})
    print(f"{sum(p.numel() for p in model.parameters())} parameters; logits range "
          f"[{logits.min():.3f}, {logits.max():.3f}] → {out}")


if __name__ == "__main__":
    main()
