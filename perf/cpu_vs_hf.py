#!/usr/bin/env python3
"""The CPU training step, essence against Hugging Face transformers, measured
side by side in one run (issue: the CPU step ahead of PyTorch).

For each model, in alternating rounds, runs `build/perf/bench_cpu` (essence's
CPU backend: forward, loss, backward, clipping, AdamW on B = 4 documents of
T = 64 tokens) and `tools/bench_hf.py --device cpu --packing batch` (the same
step in transformers: fp32, a (4, 64) batch, clip_grad_norm_, torch AdamW).
Interleaving keeps a load change on a shared machine from landing on one side
only. Prints each round, then per model the medians, the ratio, the
fraction of the sgemm rate and the memory bandwidth measured in the same run,
and essence's op shares; --json writes the same as one JSON object.

  python3 perf/cpu_vs_hf.py [--rounds 3] [--models configs/models/gpt2-124m.json ...]

transformers and torch must be importable by --python (default: this one);
without them the script says so and exits 77.
"""
import argparse
import json
import os
import re
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "perf"))
from cost_table import machine  # noqa: E402

MODELS = ["configs/models/gpt2-124m.json", "configs/models/qwen3-0.6b.json"]


def run_essence(binary, model, steps):
    p = subprocess.run([binary, "--steps", str(steps), "--warmup", "1", model], cwd=ROOT, capture_output=True,
                       text=True)
    if p.returncode:
        sys.exit(f"cpu_vs_hf: bench_cpu on {model} failed: {p.stderr.strip()}")
    out = p.stdout
    ms = float(re.search(r"([\d.]+) ms/step", out).group(1))
    sgemm = float(re.search(r"sgemm ([\d.]+) GFLOP/s", out).group(1))
    frac = float(re.search(r"measured now: (\d+)% of it", out).group(1)) / 100
    bw = float(re.search(r"memory bandwidth ([\d.]+) GB/s", out).group(1))
    ops = {m.group(1): float(m.group(2)) / 100
           for m in re.finditer(r"^\s+(\w+)\s+([\d.]+)% +[\d.]+ ms", out, re.M)}
    return dict(ms=ms, sgemm=sgemm, frac=frac, bw=bw, ops=ops)


def run_hf(python, model, steps):
    p = subprocess.run([python, "tools/bench_hf.py", "--device", "cpu", "--config", model, "--tokens", "256",
                        "--doc-len", "64", "--packing", "batch", "--steps", str(steps), "--warmup", "1"],
                       cwd=ROOT, capture_output=True, text=True)
    if p.returncode == 77:
        print(f"cpu_vs_hf: {python} has no torch/transformers: {p.stderr.strip()}", file=sys.stderr)
        sys.exit(77)
    if p.returncode:
        sys.exit(f"cpu_vs_hf: bench_hf on {model} failed: {p.stderr.strip()[-500:]}")
    return json.loads(p.stdout.strip().splitlines()[-1])["ms_per_step"]


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", nargs="+", default=MODELS)
    ap.add_argument("--rounds", type=int, default=3, help="alternating rounds per model")
    ap.add_argument("--steps", type=int, default=5, help="timed steps per round and side")
    ap.add_argument("--essence", default=str(ROOT / "build" / "perf" / "bench_cpu"))
    ap.add_argument("--python", default=sys.executable, help="a Python with torch and transformers")
    ap.add_argument("--json", help="also write the results here")
    args = ap.parse_args(argv)
    if not os.access(args.essence, os.X_OK):
        sys.exit(f"cpu_vs_hf: {args.essence}: no bench_cpu (build it: ninja -C build)")
    print(f"machine: {machine()}, OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}")
    results = {}
    for model in args.models:
        es, hf = [], []
        for k in range(args.rounds):
            es.append(run_essence(args.essence, model, args.steps))
            hf.append(run_hf(args.python, model, args.steps))
            print(f"{Path(model).stem} round {k + 1}: essence {es[-1]['ms']:.0f} ms, transformers {hf[-1]:.0f} ms",
                  flush=True)
        e_ms, h_ms = statistics.median(x["ms"] for x in es), statistics.median(hf)
        r = dict(essence_ms=e_ms, hf_ms=h_ms, speedup=h_ms / e_ms,
                 sgemm_gflops=statistics.median(x["sgemm"] for x in es),
                 of_sgemm=statistics.median(x["frac"] for x in es),
                 memory_gbs=statistics.median(x["bw"] for x in es),
                 op_shares={op: statistics.median(x["ops"].get(op, 0) for x in es) for op in es[0]["ops"]})
        results[Path(model).stem] = r
        top = sorted(r["op_shares"].items(), key=lambda kv: -kv[1])[:6]
        print(f"{Path(model).stem}: essence {e_ms:.0f} ms/step, transformers {h_ms:.0f} ms/step: "
              f"{r['speedup']:.2f}x; {100 * r['of_sgemm']:.0f}% of sgemm ({r['sgemm_gflops']:.0f} GFLOP/s); "
              f"memory {r['memory_gbs']:.1f} GB/s; ops: " + ", ".join(f"{k} {100 * v:.1f}%" for k, v in top))
    if args.json:
        Path(args.json).write_text(json.dumps(dict(machine=machine(), models=results), indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
