#!/usr/bin/env python3
"""PyTorch reference timing of ONE SADA-JEM training iteration, for `sadajem bench`.

Written for this project from docs/method.md (not from the authors' code). It builds the same
pre-activation WRN-depth-widen as src/model/wrn.rs and runs the same iteration as
src/train/recipe.rs, with the train-mode forwards in the authors' order: the likelihood batch,
a replay-buffer draw and K clipped SGLD steps, the write-back, the samples, the labelled batch
last; the loss CE(f(x_lab), y) - (mean LSE f(x_px) - mean LSE f(x_sample)) from those three
separate forwards, ASAM (docs/method.md §4) with batch-norm running statistics frozen in the second
pass, then SGD. Data are synthetic (uniform in [-1, 1], random labels): loading is not timed.

Timed parts, each in its own loop of --warmup untimed then --iters timed repetitions (median
and min seconds reported), with the device synchronised before every clock read:
  sgld_step    one SGLD step on the sampler batch (input gradient of sum LSE, clipped update);
  update_pass  zero grads, the three forwards, the loss, backward (SAM's first pass);
  sam_pass     ASAM ascent, zero grads, forwards + backward at w + e, descent w <- w - e;
  iteration    the whole iteration: draw, K SGLD steps, write-back, both passes, SGD step.
images_per_s is the labelled batch size B divided by the median iteration time: classification
images per second, the `img_per_s` our trainer logs.

With --json, stdout's last line is one JSON object (impl, torch, threads, device, precision,
channels_last, settings, parts, images_per_s, peak_rss_mib[, peak_cuda_mib]); all else goes to
stderr. The Rust binary raises glibc's mmap and trim thresholds at start-up (src/engine.rs,
docs/performance.md); for like with like, run this under MALLOC_MMAP_THRESHOLD_=33554432
MALLOC_TRIM_THRESHOLD_=1073741824, or say that it was not.

If torch cannot be imported, a venv is made at bench/.venv with torch 2.11.0 (the full wheel:
its Python extension needs the CUDA libraries even on a CPU).
"""
import argparse, json, os, statistics, subprocess, sys, time
from pathlib import Path


def bootstrap():
    """Makes bench/.venv with torch 2.11.0 and re-runs this script there.

    The wheel's Python extension loads every CUDA library it was built with, so this is the
    full install (~3 GB with its nvidia-* dependencies), not the 0.5 GB C++ subset that
    scripts/setup-libtorch.sh unpacks for the Rust build. SADAJEM_BENCH_PYTHON names another
    interpreter with torch 2.11 instead.
    """
    venv = Path(__file__).resolve().parent / ".venv"
    py = venv / "bin" / "python"
    if os.environ.get("SADAJEM_BENCH_VENV"):  # already re-run once: do not loop
        sys.exit(f"bootstrap: torch is still not importable with {py}")
    if not py.exists():
        print(f"bootstrap: torch not found; creating a venv at {venv}", file=sys.stderr)
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    if subprocess.run([str(py), "-c", "import torch"], capture_output=True).returncode != 0:
        print("bootstrap: installing torch 2.11.0 (~3 GB with its CUDA libraries) into the venv", file=sys.stderr)
        subprocess.run([str(py), "-m", "pip", "install", "--quiet", "--disable-pip-version-check", "torch==2.11.0"],
                       check=True, env=dict(os.environ, PIP_ROOT_USER_ACTION="ignore"))
    print(f"bootstrap: re-running with {py}", file=sys.stderr)
    os.execve(str(py), [str(py), str(Path(__file__).resolve()), *sys.argv[1:]],
              dict(os.environ, SADAJEM_BENCH_VENV="1"))


try:
    import torch
except ImportError:
    bootstrap()
import torch.nn as nn
import torch.nn.functional as F


class BatchNorm(nn.BatchNorm2d):
    # SAM's second pass normalises by batch statistics but must not move the running ones;
    # passing no running tensors does exactly that (as wrn.rs's TrainFrozenStats does).
    frozen = False

    def forward(self, x):
        if self.frozen and self.training:
            return F.batch_norm(x, None, None, self.weight, self.bias, True, 0.0, self.eps)
        return super().forward(x)


class Block(nn.Module):
    def __init__(self, cin, cout, stride, norm, slope):
        super().__init__()
        self.bn1, self.conv1 = norm(cin), nn.Conv2d(cin, cout, 3, 1, 1)
        self.bn2, self.conv2 = norm(cout), nn.Conv2d(cout, cout, 3, stride, 1)
        self.shortcut = nn.Conv2d(cin, cout, 1, stride) if stride != 1 or cin != cout else None
        self.slope = slope

    def forward(self, x):
        # Dropout has rate 0 (docs/method.md §1): a no-op, left out. The shortcut takes the block
        # input, not its normalised activation.
        h = self.conv1(F.leaky_relu(self.bn1(x), self.slope))
        h = self.conv2(F.leaky_relu(self.bn2(h), self.slope))
        return h + (x if self.shortcut is None else self.shortcut(x))


class Wrn(nn.Module):
    def __init__(self, depth, widen, channels, classes, norm_kind, slope, momentum):
        super().__init__()
        norm = (lambda c: BatchNorm(c, momentum=momentum)) if norm_kind == "batch" else (lambda c: nn.Identity())
        widths, n = [16, 16 * widen, 32 * widen, 64 * widen], (depth - 4) // 6
        self.conv1 = nn.Conv2d(channels, 16, 3, 1, 1)
        blocks, cin = [], 16
        for cout, stride in zip(widths[1:], [1, 2, 2]):
            for b in range(n):
                blocks.append(Block(cin, cout, stride if b == 0 else 1, norm, slope))
                cin = cout
        self.blocks = nn.Sequential(*blocks)
        self.bn, self.slope = norm(cin), slope
        self.class_output = nn.Linear(cin, classes)

    def forward(self, x):
        h = F.leaky_relu(self.bn(self.blocks(self.conv1(x))), self.slope)
        return self.class_output(h.mean((2, 3)))

    def freeze_stats(self, frozen):
        for m in self.modules():
            if isinstance(m, BatchNorm):
                m.frozen = frozen


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    a = p.add_argument
    a("--depth", type=int, default=10); a("--widen", type=int, default=1)
    a("--norm", choices=["none", "batch"], default="batch")
    a("--channels", type=int, default=1); a("--size", type=int, default=28); a("--classes", type=int, default=10)
    a("--batch", type=int, default=128); a("--px-batch", type=int, default=64)
    a("--sampler-batch", type=int, default=64); a("--steps", type=int, default=5)
    a("--rho", type=float, default=2.0); a("--slope", type=float, default=0.2)
    a("--bn-momentum", type=float, default=0.1, help="PyTorch convention: weight of the batch statistics")
    a("--threads", type=int, default=None); a("--precision", choices=["fp32", "bf16"], default="fp32")
    a("--channels-last", action="store_true"); a("--device", default="cpu")
    a("--warmup", type=int, default=3); a("--iters", type=int, default=10); a("--seed", type=int, default=0)
    a("--json", action="store_true")
    a("--profile", metavar="TRACE", help="after the timing, profile --iters iterations into this Chrome trace")
    args = p.parse_args()
    if args.depth < 10 or (args.depth - 4) % 6 or args.iters < 1:
        p.error("need depth = 6n + 4 with n >= 1, and --iters >= 1")

    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    dev = torch.device(args.device)
    cuda = dev.type == "cuda"
    sync = (lambda: torch.cuda.synchronize(dev)) if cuda else (lambda: None)
    fmt = torch.channels_last if args.channels_last else torch.contiguous_format
    bf16 = args.precision == "bf16"

    model = Wrn(args.depth, args.widen, args.channels, args.classes, args.norm, args.slope, args.bn_momentum)
    model = model.to(dev, memory_format=fmt).train()  # train mode throughout, sampling included
    params = list(model.parameters())
    opt = torch.optim.SGD(params, lr=0.1, momentum=0.9, weight_decay=5e-4)

    shape = (args.channels, args.size, args.size)
    uniform = lambda n: torch.rand(n, *shape, device=dev) * 2 - 1
    x_lab, x_px = uniform(args.batch), uniform(args.px_batch)
    y_lab = torch.randint(args.classes, (args.batch,), device=dev)
    buffer = uniform(10_000)

    def f(x):
        # One autocast region per forward, so weights changed in place by SAM are cast afresh;
        # logits come back fp32 for LSE and CE.
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=bf16):
            return model(x.contiguous(memory_format=fmt)).float()

    def draw():
        idx = torch.randint(len(buffer), (args.sampler_batch,), device=dev)
        reinit = torch.rand(args.sampler_batch, 1, 1, 1, device=dev) < 0.05
        return idx, torch.where(reinit, uniform(args.sampler_batch), buffer[idx])

    def sgld_step(x):
        x = x.detach().requires_grad_(True)
        (g,) = torch.autograd.grad(torch.logsumexp(f(x), 1).sum(), x)
        return (x.detach() + 1.0 * g.clamp(-1, 1)).clamp(-1, 1)  # alpha = 1, sigma = 0

    def loss_backward(x_s, lse_px=None):
        opt.zero_grad()
        if lse_px is None:
            lse_px = torch.logsumexp(f(x_px), 1)
        l_px = -(lse_px.mean() - torch.logsumexp(f(x_s), 1).mean())
        (F.cross_entropy(f(x_lab), y_lab) + l_px).backward()

    def sam_pass(x_s):
        with torch.no_grad():
            ps = [q for q in params if q.grad is not None]
            # One norm per parameter, then the norm of those: ||T_w g|| with T_w = |w|, over
            # every trainable parameter (biases and norm affine included).
            n = torch.stack([(q.abs() * q.grad).norm() for q in ps]).norm()
            es = [q * q * q.grad * (args.rho / (n + 1e-12)) for q in ps]
            for q, e in zip(ps, es):
                q.add_(e)
        model.freeze_stats(True)
        loss_backward(x_s)
        model.freeze_stats(False)
        with torch.no_grad():
            for q, e in zip(ps, es):
                q.sub_(e)

    def iteration():
        # The authors' order of train-mode forwards (SADAJEM train_sadajem.py lines 203-225):
        # the data batch, the chains, the samples, the labelled batch last.
        lse_px = torch.logsumexp(f(x_px), 1)
        idx, x = draw()
        for _ in range(args.steps):
            x = sgld_step(x)
        buffer.index_copy_(0, idx, x)
        loss_backward(x, lse_px)
        sam_pass(x)
        opt.step()

    def timed(name, fn):
        times = []
        for i in range(args.warmup + args.iters):
            sync()
            t0 = time.perf_counter()
            fn()
            sync()
            if i >= args.warmup:
                times.append(time.perf_counter() - t0)
        part = {"median_s": statistics.median(times), "min_s": min(times)}
        print(f"{name:12s} median {part['median_s']:.4f} s  min {part['min_s']:.4f} s", file=sys.stderr)
        return part

    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {dev}, {args.precision}"
          f"{', channels_last' if args.channels_last else ''}; WRN-{args.depth}-{args.widen}, "
          f"{sum(q.numel() for q in params):,} parameters", file=sys.stderr)
    try:  # "5" resets the peak resident size (VmHWM) to the current one
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
    except OSError:
        print("warning: could not reset VmHWM; peak_rss_mib covers set-up too", file=sys.stderr)
    if cuda:
        torch.cuda.reset_peak_memory_stats(dev)

    state = {"x": draw()[1]}
    x_s = state["x"]

    def one_sgld():
        state["x"] = sgld_step(state["x"])

    parts = {"sgld_step": timed("sgld_step", one_sgld),
             "update_pass": timed("update_pass", lambda: loss_backward(x_s))}
    parts["sam_pass"] = timed("sam_pass", lambda: sam_pass(x_s))  # needs the gradients above
    parts["iteration"] = timed("iteration", iteration)

    with open("/proc/self/status") as fh:
        hwm_kib = next(int(l.split()[1]) for l in fh if l.startswith("VmHWM:"))
    if args.profile:  # after the timing and the memory reading, as `sadajem bench --profile`
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
            for _ in range(args.iters):
                iteration()
            sync()
        prof.export_chrome_trace(args.profile)
    result = {"impl": "pytorch", "torch": torch.__version__, "threads": torch.get_num_threads(),
              "device": str(dev), "precision": args.precision, "channels_last": args.channels_last,
              "settings": vars(args), "parts": parts,
              "images_per_s": args.batch / parts["iteration"]["median_s"],
              "peak_rss_mib": hwm_kib / 1024}
    if cuda:
        result["peak_cuda_mib"] = torch.cuda.max_memory_allocated(dev) / 2**20
    if args.json:
        print(json.dumps(result))
    else:
        for name, part in parts.items():
            print(f"{name:12s} median {part['median_s']:.4f} s  min {part['min_s']:.4f} s")
        print(f"{result['images_per_s']:.1f} labelled images/s, peak RSS {result['peak_rss_mib']:.0f} MiB")


if __name__ == "__main__":
    main()
