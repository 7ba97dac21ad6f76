#!/usr/bin/env python3
"""The comparisons and the summary of scripts/gpu-check.sh (standard library only, so that the
CPU dry run needs nothing installed; `random-inception` alone needs torch and torchvision, which
the GPU machine's python3 has).

  same-metrics RUN_A RUN_B        bitwise: every metrics.jsonl line (img_per_s aside) and
                                  final.json's test accuracy; exit 1 when they differ
  metric-difference RUN_A RUN_B   how far two runs are apart (never fails): the largest
                                  difference of any logged number, and of the test accuracy
  weights RUN_A RUN_B TOL         largest |difference| of the model's float32 weights in the
                                  runs' checkpoints/latest.safetensors; exit 1 above TOL
  random-inception PATH SEED      a randomly initialised pytorch-fid-layout Inception-v3 state
                                  dict (torchvision's, 1008 logits, no aux head)
  summary WORK OUT MODE           OUT/summary.json and OUT/summary.md from WORK/steps.tsv,
                                  WORK/results/*.json and OUT/bench.jsonl

Each comparison prints one JSON object, which gpu-check.sh keeps as the step's result.
"""
import json, math, os, struct, sys
from array import array


def lines(run):
    out = []
    with open(os.path.join(run, "metrics.jsonl")) as fh:
        for line in fh:
            if line.strip():
                rec = json.loads(line)
                rec.pop("img_per_s", None)
                out.append(rec)
    return out


def final(run):
    with open(os.path.join(run, "final.json")) as fh:
        return json.load(fh)


def numbers(rec, prefix=""):
    """Every number in a (nested) record, by dotted key."""
    for k, v in rec.items():
        if isinstance(v, dict):
            yield from numbers(v, prefix + k + ".")
        elif isinstance(v, (int, float)) and not isinstance(v, bool):
            yield prefix + k, float(v)


def metric_difference(a, b):
    la, lb = lines(a), lines(b)
    worst, where = 0.0, None
    for i, (ra, rb) in enumerate(zip(la, lb)):
        nb = dict(numbers(rb))
        for k, x in numbers(ra):
            if k in nb and math.isfinite(x) and math.isfinite(nb[k]) and abs(x - nb[k]) > worst:
                worst, where = abs(x - nb[k]), f"line {i + 1} {k}"
    fa, fb = final(a), final(b)
    return {"lines": [len(la), len(lb)], "max_abs_difference": worst, "where": where,
            "test_accuracy": [fa.get("test_accuracy"), fb.get("test_accuracy")],
            "train_seconds": [fa.get("train_seconds"), fb.get("train_seconds")]}


def same_metrics(a, b):
    la, lb = lines(a), lines(b)
    first = next((i for i, (x, y) in enumerate(zip(la, lb)) if x != y), None)
    out = metric_difference(a, b)
    ta, tb = out["test_accuracy"]
    out["equal"] = len(la) == len(lb) and first is None and ta == tb
    if first is not None:
        out["first_different_line"] = {"line": first + 1, "a": la[first], "b": lb[first]}
    return out


def safetensors_f32(path, prefix="model."):
    with open(path, "rb") as fh:
        (n,) = struct.unpack("<Q", fh.read(8))
        header = json.loads(fh.read(n))
        data = fh.read()
    out = {}
    for name, t in header.items():
        if name == "__metadata__" or not name.startswith(prefix) or t["dtype"] != "F32":
            continue
        lo, hi = t["data_offsets"]
        values = array("f")
        values.frombytes(data[lo:hi])
        if sys.byteorder != "little":
            values.byteswap()
        out[name] = values
    return out


def weights(a, b, tol):
    wa = safetensors_f32(os.path.join(a, "checkpoints", "latest.safetensors"))
    wb = safetensors_f32(os.path.join(b, "checkpoints", "latest.safetensors"))
    if sorted(wa) != sorted(wb):
        return {"ok": False, "error": "different tensors", "only_a": sorted(set(wa) - set(wb)), "only_b": sorted(set(wb) - set(wa))}
    worst, scale, where = 0.0, 0.0, None
    for name in sorted(wa):
        for x, y in zip(wa[name], wb[name]):
            d = abs(x - y)
            if not d <= worst:  # also catches NaN
                worst, where = d, name
            scale = max(scale, abs(x))
    return {"ok": worst <= tol, "max_abs_difference": worst, "in": where, "largest_weight": scale, "tolerance": tol}


def random_inception(path, seed):
    import torch, torchvision
    torch.manual_seed(seed)
    net = torchvision.models.inception_v3(weights=None, aux_logits=False, init_weights=False, num_classes=1008)
    # He initialisation keeps the activations of the ~50 ReLU layers near unit scale, so the
    # features and the FID stay finite and of ordinary size.
    for m in net.modules():
        if isinstance(m, torch.nn.Conv2d):
            torch.nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
    torch.save(net.state_dict(), path + ".tmp")
    os.replace(path + ".tmp", path)
    return {"file": path, "tensors": len(net.state_dict())}


def read_json(path):
    try:
        with open(path) as fh:
            return json.load(fh)
    except (OSError, ValueError):
        return None


def bench_summary(path):
    """The last record of each precision in bench.jsonl, with the targets of issue 19."""
    out = {}
    try:
        with open(path) as fh:
            recs = [json.loads(l) for l in fh if l.strip()]
    except OSError:
        return out
    for r in recs:
        p = r.get("precision")
        it = r.get("parts", {}).get("iteration", {}).get("median_s")
        ref = r.get("reference") or {}
        theirs = ref.get("parts", {}).get("iteration", {}).get("median_s")
        s = {"device": r.get("device"), "settings": r.get("settings"), "iteration_s": it,
             "pytorch_iteration_s": theirs, "ratio": r.get("ratio_iteration"),
             "images_per_s": r.get("images_per_s"),
             "peak_cuda_mib": r.get("peak_cuda_mib"), "pytorch_peak_cuda_mib": ref.get("peak_cuda_mib"),
             "peak_rss_mib": r.get("peak_rss_mib"),
             "parts_s": {k: v.get("median_s") for k, v in r.get("parts", {}).items()},
             "pytorch_parts_s": {k: v.get("median_s") for k, v in ref.get("parts", {}).items()}}
        if it:
            # CIFAR-10's 50,000 images in batches of 128: 390 iterations an epoch, 200 epochs.
            s["hours_for_200_epochs"] = it * 390 * 200 / 3600
            s["target_4_hours"] = s["hours_for_200_epochs"] <= 4
        if s["ratio"] is not None:
            s["target_ratio_0_6"] = s["ratio"] <= 0.6
        if s["peak_cuda_mib"] and s["pytorch_peak_cuda_mib"]:
            s["target_memory_at_most_pytorch"] = s["peak_cuda_mib"] <= s["pytorch_peak_cuda_mib"]
        out[p] = s
    return out


def summary(work, out, mode):
    steps = []
    with open(os.path.join(work, "steps.tsv")) as fh:
        for line in fh:
            name, status, seconds, timeout, about = line.rstrip("\n").split("\t")
            steps.append({"step": name, "status": status, "seconds": float(seconds), "timeout_s": int(timeout),
                          "about": about, "result": read_json(os.path.join(work, "results", name + ".json"))})
    env = read_json(os.path.join(work, "results", "env.json")) or {}
    doc = {"mode": mode, "passed": all(s["status"] in ("pass", "info", "skipped") for s in steps),
           "env": env, "steps": steps, "bench": bench_summary(os.path.join(out, "bench.jsonl"))}
    with open(os.path.join(out, "summary.json.tmp"), "w") as fh:
        json.dump(doc, fh, indent=1)
    os.replace(os.path.join(out, "summary.json.tmp"), os.path.join(out, "summary.json"))

    md = [f"# sadajem GPU check ({mode})", "", f"overall: {'PASS' if doc['passed'] else 'FAIL'}", ""]
    for k in ("gpu", "driver", "torch", "sadajem"):
        if env.get(k):
            md.append(f"- {k}: {env[k]}")
    md += ["", "| step | status | seconds | what |", "|---|---|---|---|"]
    for s in steps:
        md.append(f"| {s['step']} | {s['status']} | {s['seconds']:.1f} | {s['about']} |")
    if doc["bench"]:
        md += ["", "| bench | ours s/iter | PyTorch s/iter | ratio | ours MiB | PyTorch MiB | 200 epochs h |", "|---|---|---|---|---|---|---|"]
        f = lambda v, spec: "–" if v is None else format(v, spec)
        for p, b in doc["bench"].items():
            md.append(f"| {p} | {f(b['iteration_s'], '.4f')} | {f(b['pytorch_iteration_s'], '.4f')} | {f(b['ratio'], '.2f')} "
                      f"| {f(b['peak_cuda_mib'], '.0f')} | {f(b['pytorch_peak_cuda_mib'], '.0f')} | {f(b.get('hours_for_200_epochs'), '.2f')} |")
    md += ["", "Per-step results (comparisons, FID, timings): summary.json; every command's output: log.txt."]
    with open(os.path.join(out, "summary.md"), "w") as fh:
        fh.write("\n".join(md) + "\n")
    print("\n".join(md))
    return doc["passed"]


def main():
    cmd, args = sys.argv[1], sys.argv[2:]
    if cmd == "same-metrics":
        r = same_metrics(*args)
        print(json.dumps(r))
        sys.exit(0 if r["equal"] else 1)
    if cmd == "metric-difference":
        print(json.dumps(metric_difference(*args)))
    elif cmd == "weights":
        r = weights(args[0], args[1], float(args[2]))
        print(json.dumps(r))
        sys.exit(0 if r["ok"] else 1)
    elif cmd == "random-inception":
        print(json.dumps(random_inception(args[0], int(args[1]))))
    elif cmd == "summary":
        sys.exit(0 if summary(*args) else 1)
    else:
        sys.exit(f"unknown command {cmd}; see {__file__}")


if __name__ == "__main__":
    main()
