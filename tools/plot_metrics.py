#!/usr/bin/env python3
"""Draws loss and throughput curves of `essence train` runs to a PNG from
their metrics.jsonl files.

  python3 tools/plot_metrics.py --out curves.png runs/demo/teacher runs/demo/student-r0.5
"""
import argparse
import io
import json
import sys
from pathlib import Path

import cli_args
import out_file

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def read(run):
    path = Path(run) / "metrics.jsonl" if Path(run).is_dir() else Path(run)
    if not path.exists():
        sys.exit(f"plot_metrics: {path}: missing")
    train, val = {}, {}
    for n, line in enumerate(path.read_text().splitlines(), 1):
        try:
            m = json.loads(line)
        except json.JSONDecodeError:
            sys.exit(f"plot_metrics: {path}:{n}: not JSON")
        if not isinstance(m, dict) or not isinstance(m.get("step"), int):
            sys.exit(f"plot_metrics: {path}:{n}: not a metrics record (no \"step\")")
        # a resumed run may repeat steps after its checkpoint: the last record wins
        (train if m.get("kind") == "train" else val if m.get("kind") == "val" else {})[m["step"]] = m
    if not train:
        sys.exit(f"plot_metrics: {path}: no training records")
    return [train[k] for k in sorted(train)], [val[k] for k in sorted(val)]


def main():
    ap = cli_args.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("runs", nargs="+", help="run directories or metrics.jsonl files")
    ap.add_argument("--out", required=True, help="PNG to write")
    args = ap.parse_args()
    fig, (ax_loss, ax_val, ax_tps) = plt.subplots(1, 3, figsize=(15, 4.2))
    for run in args.runs:
        train, val = read(run)
        label = Path(run).name if Path(run).is_dir() else Path(run).parent.name
        steps = [m["step"] for m in train]
        ax_loss.plot(steps, [m["loss"] for m in train], label=label)
        ax_val.plot([m["step"] for m in val], [m["val_loss"] for m in val], marker="o", label=label)
        ax_tps.plot(steps, [m["tok_per_s"] for m in train], label=label)
    for ax, title in ((ax_loss, "training loss"), (ax_val, "validation loss (r = 1)"), (ax_tps, "tokens / s")):
        ax.set_title(title)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    png = io.BytesIO()
    fig.savefig(png, dpi=110, format=Path(args.out).suffix[1:] or "png")
    out_file.write_bytes(args.out, png.getvalue())
    print(f"wrote {args.out}", file=sys.stderr if args.out == "-" else sys.stdout)


if __name__ == "__main__":
    cli_args.run(main, "plot_metrics")
