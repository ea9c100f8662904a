#!/usr/bin/env python3
"""The truncation cost table: what lead-span truncation saves.

Sweeps one run config over the lead-span proportion r in {0.25, 0.5, 0.75, 1.0}
for both truncation modes (seq, cot), and over the six supervision presets at
r = 0.5 and 1.0, on the same data and epochs. Each row is one fresh `essence
train` process, which validates the finished student on the whole validation
sequences. Writes perf/results/NAME.md, .csv and .png.

  python3 perf/cost_table.py                       # small CPU table, a few minutes
  python3 perf/cost_table.py --config RUN.json --set run.device=cuda --name h100

The default config (perf/configs/table-cpu.json) trains a tiny random student
on a synthetic corpus that is prepared in data/table when missing.
"""
import argparse
import csv
import json
import os
import platform
import shutil
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
RATIOS = [0.25, 0.5, 0.75, 1.0]
PRESETS = ["ans", "promptAns", "cot", "cotAns", "promptCot", "promptcotAns"]
DEFAULT_PRESET = "promptcotAns"
# Expected at r = 0.5 vs 1.0 in seq mode (the brief: about half or less).
TARGETS = {"flops": 0.5, "seconds": 0.55, "peak_engine": 0.6}


def prepare_table_data(root):
    """The synthetic corpus of the default CPU table: short traces only."""
    d = os.path.join(root, "data", "table")
    if all(os.path.exists(os.path.join(d, f)) for f in ("train.bin", "val.bin", "test.jsonl")):
        return
    py = sys.executable
    steps = [
        [py, "tools/synth_corpus.py", "--out", d, "--seed", "1", "--train", "640", "--val", "40", "--test", "40"],
        [py, "tools/train_tokenizer.py", "--out", os.path.join(d, "model"), "--vocab", "4096",
         os.path.join(d, "train.jsonl")],
        [py, "tools/prep_data.py", "--model", os.path.join(d, "model"), "--max-len", "1024", "--out",
         os.path.join(d, "train.bin"), os.path.join(d, "train.jsonl")],
        [py, "tools/prep_data.py", "--model", os.path.join(d, "model"), "--max-len", "1024", "--out",
         os.path.join(d, "val.bin"), os.path.join(d, "val.jsonl")],
    ]
    for cmd in steps:
        subprocess.run(cmd, cwd=root, check=True, stdout=subprocess.DEVNULL)


def machine():
    model, cores = platform.processor() or "unknown", os.cpu_count()
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        for line in out.splitlines():
            k, _, v = line.partition(":")
            if k.strip() == "Model name":
                model = v.strip()
    except (OSError, subprocess.CalledProcessError):
        pass
    return f"{model}, {cores} cores"


def run_row(args, row, val_paths):
    out = os.path.join(args.runs, row["name"])
    shutil.rmtree(out, ignore_errors=True)
    sets = args.set + [f"trunc.mode={row['mode']}", f"trunc.lsp={row['r']}", f"supervise={row['supervise']}",
                       f"run.out={out}"]
    cmd = [args.essence, "train", "--config", args.config, "--fresh"]
    for s in sets:
        cmd += ["--set", s]
    load0 = os.getloadavg()[0]
    t0 = time.monotonic()
    # validation runs whole sequences through a forward-only view of the
    # student, so it does not size the training activations
    p = subprocess.run(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    wall = time.monotonic() - t0
    if p.returncode != 0:  # e.g. a preset that supervises nothing once truncated (ans at r < 1)
        err = (p.stderr.strip().splitlines() or ["exit code %d" % p.returncode])[-1]
        return {**row, "failed": err, "load": load0}
    with open(os.path.join(out, "summary.json")) as f:
        s = json.load(f)
    val = s["val_loss"] if val_paths and s["val_loss"] >= 0 else None
    acc = evaluate(args, out) if args.eval else None
    return {**row, "pass1": acc, "tokens": s["tokens"], "flops": s["flops"], "seconds": s["seconds"], "process_s": wall,
            "peak_engine": s["peak_device_bytes"], "peak_acts": s["peak_activation_bytes"],
            "peak_rss": s["peak_rss_bytes"], "capacity": s["capacity"], "steps": s["steps"], "val_loss": val,
            "load": load0}


def evaluate(args, out):
    """pass@1 (greedy) of the finished student on the first --eval test problems."""
    cmd = [args.essence, "eval", "--model", os.path.join(out, "final"), "--tokenizer", os.path.join(out, "final"),
           "--data", args.test, "--out", os.path.join(out, "eval.jsonl"), "--limit", str(args.eval),
           "--max-new", str(args.max_new)]
    p = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    if p.returncode != 0:
        sys.exit(f"cost_table: eval of {out} failed: {p.stderr.strip()[-500:]}")
    with open(os.path.join(out, "eval.summary.json")) as f:
        return json.load(f)["pass@1"]


COLS = ["tokens", "flops", "seconds", "peak_engine", "peak_acts", "peak_rss"]


def add_ratios(rows):
    """Each cost relative to the r = 1.0 row of the same supervision preset."""
    ref = {r["supervise"]: r for r in rows if r["r"] == 1.0 and r["mode"] == "seq" and "failed" not in r}
    for r in rows:
        if "failed" in r:
            continue
        base = ref.get(r["supervise"])
        for c in COLS:
            r[c + "_rel"] = r[c] / base[c] if base and base[c] else None
        # accuracy retention: accuracy at r over accuracy at r = 1
        r["retention"] = r["pass1"] / base["pass1"] if base and r.get("pass1") is not None and base["pass1"] else None


def fmt_bytes(b):
    return f"{b / 1048576:.1f}"


def write_csv(path, rows):
    keys = ["group", "mode", "r", "supervise", "tokens", "flops", "seconds", "process_s", "peak_engine",
            "peak_acts", "peak_rss", "capacity", "steps", "val_loss", "pass1", "retention", "load", "failed"] + [c + "_rel" for c in COLS]
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=keys, extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)


def rel(x):
    return "-" if x is None else f"{x:.2f}"


def write_md(path, rows, args, header):
    seq = {r["r"]: r for r in rows if r["group"] == "mode" and r["mode"] == "seq" and "failed" not in r}
    lines = [f"# Truncation cost table: {args.name}", "", *header, "",
             "Costs of one epoch over the same data, each also relative to r = 1.0 (seq mode, same supervision). "
             "Time is the sum of the optimizer steps' wall time; peak memory is the engine's tally of its "
             "allocations (all kinds, and activations alone) and the process's resident-set high-water mark. "
             "Validation loss is cross-entropy per supervised token on the whole validation sequences (r = 1). "
             "With --eval, pass@1 is greedy full-length generation on the test split and retention is pass@1 at r "
             "over pass@1 at r = 1 (- where r = 1 solves nothing).",
             "",
             "| mode | r | supervise | tokens | FLOPs | time s | engine MiB | acts MiB | RSS MiB | tokens x | FLOPs x "
             "| time x | engine x | acts x | RSS x | val loss | pass@1 | retention |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if "failed" in r:
            lines.append(f"| {r['mode']} | {r['r']} | {r['supervise']} | failed: {r['failed']} |" + " |" * 14)
            continue
        lines.append(
            f"| {r['mode']} | {r['r']} | {r['supervise']} | {r['tokens']:.0f} | {r['flops']:.3g} | {r['seconds']:.2f} "
            f"| {fmt_bytes(r['peak_engine'])} | {fmt_bytes(r['peak_acts'])} | {fmt_bytes(r['peak_rss'])} "
            f"| {rel(r['tokens_rel'])} | {rel(r['flops_rel'])} | {rel(r['seconds_rel'])} | {rel(r['peak_engine_rel'])} "
            f"| {rel(r['peak_acts_rel'])} | {rel(r['peak_rss_rel'])} "
            f"| {'-' if r['val_loss'] is None else format(r['val_loss'], '.4f')} "
            f"| {'-' if r['pass1'] is None else format(r['pass1'], '.3f')} | {rel(r['retention'])} |")
    if 0.5 in seq:
        h = seq[0.5]
        lines += ["", "Checks at r = 0.5 vs 1.0, seq mode:", ""]
        for c, lim in TARGETS.items():
            x = h[c + "_rel"]
            ok = x is not None and x <= lim
            lines.append(f"- {c}: {rel(x)}x (target <= {lim}x): {'met' if ok else 'MISSED'}")
        lines.append(f"- activations alone: {rel(h['peak_acts_rel'])}x; process RSS: {rel(h['peak_rss_rel'])}x")
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")


def write_png(path, rows):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for mode, style in (("seq", "-"), ("cot", "--")):
        pts = sorted((r for r in rows if r["group"] == "mode" and r["mode"] == mode and "failed" not in r),
                     key=lambda r: r["r"])
        xs = [r["r"] for r in pts]
        for c, label in (("flops_rel", "FLOPs"), ("seconds_rel", "time"), ("peak_engine_rel", "peak memory"),
                         ("peak_acts_rel", "activations")):
            axes[0].plot(xs, [r[c] for r in pts], style, marker="o", label=f"{label} ({mode})")
        axes[1].plot(xs, [r["val_loss"] for r in pts], style, marker="o", label=mode)
    axes[0].plot([0, 1], [0, 1], ":", color="grey", label="proportional")
    axes[0].set_xlabel("lead-span proportion r")
    axes[0].set_ylabel("cost relative to r = 1")
    axes[0].legend(fontsize=7)
    axes[1].set_xlabel("lead-span proportion r")
    axes[1].set_ylabel("validation loss (full sequences)")
    axes[1].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default=os.path.join("perf", "configs", "table-cpu.json"))
    ap.add_argument("--set", action="append", default=[], help="key=value passed to every run")
    ap.add_argument("--name", default="table-cpu")
    ap.add_argument("--essence", default=os.path.join("build", "essence"), help="the essence binary")
    ap.add_argument("--runs", default=os.path.join("runs", "cost_table"), help="run directories (scratch)")
    ap.add_argument("--results", default=os.path.join("perf", "results"))
    ap.add_argument("--eval", type=int, default=0, help="score each student on the first N test problems")
    ap.add_argument("--test", default=os.path.join("data", "table", "test.jsonl"), help="test problems (JSONL)")
    ap.add_argument("--max-new", type=int, default=2048, help="generation limit per answer")
    args = ap.parse_args()
    os.chdir(ROOT)
    args.runs = os.path.join(args.runs, args.name)
    if not os.access(args.essence, os.X_OK):
        sys.exit(f"cost_table: {args.essence}: not an executable (build first, or pass --essence)")
    with open(args.config) as f:
        cfg = json.load(f)
    if args.config == os.path.join("perf", "configs", "table-cpu.json"):
        prepare_table_data(ROOT)
    val_paths = cfg.get("data", {}).get("val", [])
    for s in args.set:
        if s.startswith("data.val="):
            val_paths = [p for p in s.split("=", 1)[1].strip("[]").split(",") if p]

    plan = [{"group": "mode", "mode": m, "r": r, "supervise": DEFAULT_PRESET} for m in ("seq", "cot") for r in RATIOS]
    plan += [{"group": "preset", "mode": "seq", "r": r, "supervise": p} for p in PRESETS if p != DEFAULT_PRESET
             for r in (0.5, 1.0)]
    rows = []
    for i, row in enumerate(plan):
        row["name"] = f"{row['mode']}-{row['supervise']}-r{row['r']}"
        t0 = time.monotonic()
        rows.append(run_row(args, row, val_paths))
        r = rows[-1]
        print(f"[{i + 1}/{len(plan)}] {row['name']}: " + (f"failed: {r['failed']}" if "failed" in r else
              f"{r['flops']:.3g} FLOPs, {r['seconds']:.1f} s ({time.monotonic() - t0:.0f} s in all)"),
              flush=True)
    add_ratios(rows)
    header = [f"- machine: {machine()}; load average at the start of each run is in the csv",
              f"- config: `{args.config}`" + (f" with {' '.join('--set ' + s for s in args.set)}" if args.set else ""),
              f"- date: {time.strftime('%Y-%m-%d %H:%M')}",
              f"- command: `python3 perf/cost_table.py {' '.join(sys.argv[1:])}`"]
    os.makedirs(args.results, exist_ok=True)
    base = os.path.join(args.results, args.name)
    write_csv(base + ".csv", rows)
    write_md(base + ".md", rows, args, header)
    write_png(base + ".png", rows)
    print(f"wrote {base}.md, .csv, .png")


if __name__ == "__main__":
    main()
