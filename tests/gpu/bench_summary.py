#!/usr/bin/env python3
"""essence against transformers from the JSON lines of `essence bench --json`
and tools/bench_hf.py: throughput, memory and MFU side by side, and the
ratios essence / transformers.

    python3 tests/gpu/bench_summary.py LABEL ESSENCE.json [HF.json ...]
Prints a small table (one transformers row per HF.json: its attention
variants) and a last line "ratio LABEL tok/s X mem Y mfu Z" against the
fastest transformers run (without HF.json, where transformers could not run,
essence's row and "ratio LABEL essence only ..."); exit status 1 when a file is
missing or unreadable.
"""
import json
import sys


def last_json(path):
    """The last line of path that parses as a JSON object."""
    with open(path) as f:
        for line in reversed(f.read().splitlines()):
            line = line.strip()
            if line.startswith("{"):
                return json.loads(line)
    raise ValueError(f"{path}: no JSON line")


def fmt(v, scale=1.0, spec=".1f"):
    return "-" if v is None else format(v / scale, spec)


def main(argv):
    if len(argv) < 2:
        print(__doc__, file=sys.stderr)
        return 2
    label, ess_path, hf_paths = argv[0], argv[1], argv[2:]
    try:
        ess = last_json(ess_path)
        hfs = [last_json(p) for p in hf_paths]
        rows = [("essence", ess["tokens_per_step"], ess["tokens_per_s"], ess["mem_peak_total"], ess["mfu"])]
        for h in hfs:
            rows.append((f"hf {h.get('attn', '')}", h["tokens_per_step"], h["tokens_per_s"], h["mem_peak"], h["mfu"]))
    except (OSError, ValueError, KeyError) as e:
        print(f"bench_summary: {e}", file=sys.stderr)
        return 1
    hf = max(hfs, key=lambda h: h["tokens_per_s"]) if hfs else None
    print(f"{label}: {'engine':<24} {'tok/step':>8} {'tok/s':>10} {'peak GiB':>9} {'MFU %':>6}")
    for name, tps, toks, mem, mfu in rows:
        print(f"{label}: {name:<24} {tps:8.0f} {toks:10.0f} {fmt(mem, 2**30, '.2f'):>9} {fmt(mfu, 0.01):>6}")
    if hf is None:
        print(f"ratio {label} essence only (no transformers run) tok/s {ess['tokens_per_s']:.0f}"
              f" mfu {fmt(ess.get('mfu'), 0.01)}%")
        return 0
    ratio_t = ess["tokens_per_s"] / hf["tokens_per_s"]
    ratio_m = ess["mem_peak_total"] / hf["mem_peak"] if hf.get("mem_peak") else None
    mfu = ess["mfu"] if ess.get("mfu") is not None else None
    print(f"ratio {label} tok/s {ratio_t:.2f} mem {fmt(ratio_m, 1, '.2f')} mfu {fmt(mfu, 0.01)}%"
          f" (hf {fmt(hf.get('mfu'), 0.01)}%)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
