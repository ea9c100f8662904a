#!/usr/bin/env python3
"""Compares finished runs of `essence train`: tokens, FLOPs, time, peak
memory and validation loss, each also relative to the first run.

  python3 tools/compare_runs.py runs/demo/student-r1.0 runs/demo/student-r0.5
"""
import argparse
import json
import sys
from pathlib import Path

import cli_args

COLUMNS = [("tokens", "tokens", "{:.3g}"), ("flops", "FLOPs", "{:.3g}"), ("seconds", "time (s)", "{:.1f}"),
           ("peak_device_bytes", "peak engine MiB", "{:.1f}"), ("peak_rss_bytes", "peak process MiB", "{:.1f}")]


def load(run):
    path = Path(run) / "summary.json"
    if not path.exists():
        sys.exit(f"compare_runs: {path}: missing (did the run finish?)")
    try:
        s = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        sys.exit(f"compare_runs: {path}: not JSON ({e.msg})")
    missing = [k for k in ("lsp", "val_loss", *(c[0] for c in COLUMNS)) if not isinstance(s, dict) or k not in s]
    if missing:
        sys.exit(f"compare_runs: {path}: missing {', '.join(missing)}")
    for k in ("peak_device_bytes", "peak_rss_bytes"):
        s[k] = s[k] / 2**20
    return s


def table(runs):
    base = load(runs[0])
    head = ["run", "r"] + [h for _, h, _ in COLUMNS] + ["val loss"]
    rows = []
    for run in runs:
        s = load(run)
        row = [Path(run).name, f"{s['lsp']:g}"]
        for key, _, fmt in COLUMNS:
            rel = s[key] / base[key] if base[key] else float("nan")
            row.append(f"{fmt.format(s[key])} ({rel:.2f}x)")
        row.append(f"{s['val_loss']:.4f}" if s["val_loss"] >= 0 else "-")  # -1: no validation data
        rows.append(row)
    widths = [max(len(r[i]) for r in rows + [head]) for i in range(len(head))]
    fmt_row = lambda r: "  ".join(c.ljust(w) for c, w in zip(r, widths))
    return "\n".join([fmt_row(head), fmt_row(["-" * w for w in widths])] + [fmt_row(r) for r in rows])


def main():
    ap = cli_args.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("runs", nargs="+", help="run directories (run.out); the first is the baseline")
    print(table(ap.parse_args().runs))


if __name__ == "__main__":
    cli_args.run(main, "compare_runs")
