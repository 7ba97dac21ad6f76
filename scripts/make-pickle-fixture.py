#!/usr/bin/env python3
"""Writes the torch.save fixtures that src/pickle.rs is tested on.

    python3 scripts/make-pickle-fixture.py [OUT_DIR]

Needs PyTorch (any 2.x). OUT_DIR defaults to tests/fixtures/pickle. Out come checkpoint.pt (the
zip format, PyTorch >= 1.6) and checkpoint-legacy.pt (the format before 1.6, still met in old
weight files), holding the same object: a checkpoint-like dict with a state dict (an
OrderedDict carrying _metadata), tensors of several dtypes, two views of one storage (one with
an offset, one transposed), a 0-d tensor under an int dict key, and non-tensor leaves.
The values are fixed, so the Rust test can check them exactly.
"""

import os
import sys

import torch


def checkpoint():
    lin = torch.nn.Linear(3, 2)
    with torch.no_grad():
        lin.weight.copy_(torch.arange(6.0).view(2, 3) / 10)
        lin.bias.copy_(torch.tensor([-1.0, 1.0]))
    base = torch.arange(10, dtype=torch.float64)
    return {
        "model_state_dict": lin.state_dict(),
        "replay_buffer": torch.arange(8.0).view(2, 1, 2, 2),
        "epoch": 7,
        "views": [base[3:7], base.view(2, 5).t()],
        "optim": {
            "state": {0: {"step": torch.tensor(5), "momentum_buffer": torch.full((2,), 0.5, dtype=torch.float16)}},
            "param_groups": [{"lr": 0.1, "params": [0, 1]}],
        },
        "mask": torch.tensor([True, False]),
        "note": "text",
    }


def main():
    out = sys.argv[1] if len(sys.argv) > 1 else os.path.join("tests", "fixtures", "pickle")
    os.makedirs(out, exist_ok=True)
    torch.save(checkpoint(), os.path.join(out, "checkpoint.pt"))
    torch.save(checkpoint(), os.path.join(out, "checkpoint-legacy.pt"), _use_new_zipfile_serialization=False)


if __name__ == "__main__":
    main()
