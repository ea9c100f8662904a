#!/usr/bin/env python3
"""Loss curves of `essence train` runs from their metrics.jsonl: the first
(the reference, e.g. the CPU run) must fall over its steps, and each other
run (e.g. the same run on CUDA) must follow it step by step within --tol
relative difference and fall too.

    python3 tests/gpu/compare_curves.py runs/cpu runs/cuda [--tol 3e-2]
Exit status 0 when every check holds, 1 otherwise.
"""
import argparse
import json
import math
import sys
from pathlib import Path


def losses(run):
    """{step: loss} of the train records of run/metrics.jsonl."""
    out = {}
    for line in (Path(run) / "metrics.jsonl").read_text().splitlines():
        rec = json.loads(line)
        if rec.get("kind") == "train":
            out[int(rec["step"])] = rec["loss"] if rec["loss"] is not None else math.nan
    return out


def falls(curve):
    """The mean loss of the last quarter of the steps is below the first step's."""
    steps = sorted(curve)
    tail = [curve[s] for s in steps[-max(1, len(steps) // 4):]]
    return len(steps) >= 4 and all(math.isfinite(v) for v in curve.values()) and sum(tail) / len(tail) < curve[steps[0]]


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("runs", nargs="+", help="run directories; the first is the reference")
    p.add_argument("--tol", type=float, default=3e-2, help="relative difference allowed per step")
    args = p.parse_args(argv)
    try:
        curves = [losses(r) for r in args.runs]
    except (OSError, ValueError, KeyError) as e:
        print(f"compare_curves: {e}", file=sys.stderr)
        return 1
    ref, ok = curves[0], True
    names = [Path(r).name for r in args.runs]
    print("step " + " ".join(f"{n:>10}" for n in names) + ("   max rel diff" if len(curves) > 1 else ""))
    worst = 0.0
    for s in sorted(ref):
        vals = [c.get(s, math.nan) for c in curves]
        diff = max((abs(v - ref[s]) / abs(ref[s]) if math.isfinite(v) else math.inf for v in vals[1:]), default=0.0)
        worst = max(worst, diff)
        print(f"{s:4d} " + " ".join(f"{v:10.5f}" for v in vals) + (f"   {diff:.2e}" if len(curves) > 1 else ""))
    for name, c in zip(names, curves):
        if not falls(c):
            print(f"compare_curves: the loss of {name} does not fall")
            ok = False
        if len(c) != len(ref):
            print(f"compare_curves: {name} has {len(c)} steps, the reference {len(ref)}")
            ok = False
    if worst > args.tol:
        print(f"compare_curves: curves differ by {worst:.3g} > {args.tol:g}")
        ok = False
    first, last = sorted(ref)[0], sorted(ref)[-1]
    print(f"curves: {len(ref)} steps, loss {ref[first]:.4f} -> {ref[last]:.4f}, max rel diff {worst:.2e}: "
          f"{'ok' if ok else 'FAIL'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
