#!/usr/bin/env python3
"""The top operators of `sadajem bench --profile DIR` (with --reference: ours and PyTorch's).

Reads DIR/sadajem.trace.json and, when present, DIR/pytorch.trace.json (Chrome traces of libtorch's
operator profiler: both sides record the same ATen operator names), and prints a Markdown table
of each operator's *self* time (its duration less that of the operators it called, on the same
thread) in milliseconds per iteration, and its calls per iteration, sorted by the larger of the
two sides; then each side's total operator time against the wall time the trace spans.
Needs only the Python standard library.

    python3 bench/profile_table.py DIR [--iters N] [--top 25]
"""
import argparse, json
from collections import defaultdict
from pathlib import Path


def self_times(path):
    """{operator: (self microseconds, calls)} and the trace's wall span in microseconds."""
    events = json.loads(Path(path).read_text())["traceEvents"]
    ops = [e for e in events if e.get("ph") == "X" and e.get("cat") == "cpu_op"]
    by_thread = defaultdict(list)
    for e in ops:
        by_thread[e["tid"]].append(e)
    total, calls = defaultdict(float), defaultdict(int)
    for evs in by_thread.values():
        # Parents before their children: by start, the longer first at a tie.
        evs.sort(key=lambda e: (e["ts"], -e["dur"]))
        stack = []  # [end, name, self time so far]
        for e in evs:
            while stack and e["ts"] >= stack[-1][0]:
                end, name, own = stack.pop()
                total[name] += own
            if stack:
                stack[-1][2] -= e["dur"]
            stack.append([e["ts"] + e["dur"], e["name"], e["dur"]])
            calls[e["name"]] += 1
        for end, name, own in stack:
            total[name] += own
    span = max(e["ts"] + e["dur"] for e in ops) - min(e["ts"] for e in ops) if ops else 0.0
    return {k: (total[k], calls[k]) for k in total}, span


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("dir", type=Path)
    p.add_argument("--iters", type=int, default=10, help="iterations in each trace (bench --iters)")
    p.add_argument("--top", type=int, default=25)
    args = p.parse_args()
    sides = {}
    for label, name in [("sadajem", "sadajem.trace.json"), ("PyTorch", "pytorch.trace.json")]:
        if (args.dir / name).exists():
            sides[label] = self_times(args.dir / name)
    if not sides:
        raise SystemExit(f"{args.dir}: no sadajem.trace.json or pytorch.trace.json (run sadajem bench --profile {args.dir})")
    n = args.iters
    ms = lambda us: us / 1000 / n
    names = set().union(*(ops for ops, _ in sides.values()))
    key = lambda k: max(ops.get(k, (0, 0))[0] for ops, _ in sides.values())
    head = "| operator | " + " | ".join(f"{s} ms/iter | calls/iter" for s in sides) + " |"
    print(head)
    print("|---|" + "---|---|" * len(sides))
    for k in sorted(names, key=key, reverse=True)[: args.top]:
        cells = []
        for ops, _ in sides.values():
            us, c = ops.get(k, (0.0, 0))
            cells += [f"{ms(us):.1f}", f"{c / n:g}"]
        print(f"| `{k}` | " + " | ".join(cells) + " |")
    for label, (ops, span) in sides.items():
        busy = sum(us for us, _ in ops.values())
        print(f"\n{label}: operators {ms(busy):.1f} ms of {ms(span):.1f} ms wall per iteration "
              f"({sum(c for _, c in ops.values()) / n:.0f} operator calls)")


if __name__ == "__main__":
    main()
