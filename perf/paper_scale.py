#!/usr/bin/env python3
"""The paper-scale table: what the paper's setting costs, from `essence plan`.

Students Qwen3-0.6B, 1.7B, 4B and 8B, each distilled from a Qwen3-8B online
teacher (perf/configs/paper-scale.json; the published shapes in
configs/models/), at r in {0.1, 0.25, 0.5, 0.75, 1.0}, seq and cot
truncation, over an OpenThoughts-114k-like length distribution of traces
under 4096 tokens, on 1 and 4 H100-80GB and A100-40GB (4 with and without
ZeRO-1; 4 H200 with ZeRO-1 too). Nothing is trained: every cell is one
`essence plan --json`. Writes perf/results/NAME.md and .csv, with a reading of
whether the paper's claim holds: the 8B -> 4B pair needs an 80 GB GPU at
r = 1 and fits a 40 GB one at r = 0.5, for about half the time, memory and
FLOPs.

  python3 perf/paper_scale.py            # the whole table, about 7 minutes on 2 cores
  python3 perf/paper_scale.py --quick    # the 4B student, seq, r = 0.5 and 1, a small corpus
"""
import csv
import json
import os
import random
import re
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, os.path.join(ROOT, "tools"))
import cli_args  # noqa: E402
import out_file  # noqa: E402

CONFIG = os.path.join("perf", "configs", "paper-scale.json")
STUDENTS = {"0.6B": "qwen3-0.6b", "1.7B": "qwen3-1.7b", "4B": "qwen3-4b", "8B": "qwen3-8b"}
RATIOS = [0.1, 0.25, 0.5, 0.75, 1.0]
MODES = ["seq", "cot"]
# (device, GPUs, ZeRO-1)
SETUPS = [("h100-80g", 1, False), ("h100-80g", 4, False), ("h100-80g", 4, True),
          ("a100-40g", 1, False), ("a100-40g", 4, False), ("a100-40g", 4, True), ("h200", 4, True)]
TIME_SETUPS = [("h100-80g", 4, True), ("h200", 4, True)]

# The length distribution. OpenThoughts-114k (113,957 DeepSeek-R1 traces)
# cannot be read here (no network), so its token lengths are not measured:
# the quantiles below are assumed, for the Qwen3 tokenizer and chat template,
# of traces kept under 4096 tokens as the paper keeps them. The one figure on
# record, the dataset card of a converted copy (GenSun/OpenThoughts-114k:
# 2,769,316,810 bytes of messages for 113,957 examples, about 24 kB or 6k
# tokens each), says the uncut traces are mostly longer than 4096, so the kept
# ones are taken to crowd toward the cap. Piecewise linear between the knots.
EXAMPLES = 113957
QUANTILES = {
    "total": [(0.0, 400), (0.1, 1100), (0.25, 1700), (0.5, 2500), (0.75, 3300), (0.9, 3800), (1.0, 4096)],
    "prompt": [(0.0, 20), (0.1, 60), (0.5, 120), (0.9, 300), (1.0, 1000)],
    "answer": [(0.0, 20), (0.1, 100), (0.5, 300), (0.9, 700), (1.0, 2000)],
}
SOURCE = ("OpenThoughts-114k-like, assumed (not measured): 113,957 examples under 4096 tokens, total length "
          "p10/p25/p50/p75/p90 1100/1700/2500/3300/3800, prompt p10/p50/p90 60/120/300, answer 100/300/700, "
          "prompt and answer each at most a quarter of the example (perf/paper_scale.py)")
NO_FIT = re.compile(r"micro-batches of (\d+) tokens .* need ([\d.]+) GiB per device of ([\d.]+) GiB usable, "
                    r"([\d.]+) GiB of it before activations")
GIB = 1024.0 ** 3


def quantile(knots, u):
    """The value at quantile u of a piecewise-linear inverse CDF through knots."""
    for (u0, x0), (u1, x1) in zip(knots, knots[1:]):
        if u <= u1:
            return x0 + (x1 - x0) * (u - u0) / (u1 - u0)
    return knots[-1][1]


def histogram(examples, rows):
    """A stratified sample: row i takes the (i + 0.5) / rows quantile of the
    total length, and prompt and answer lengths at shuffled strata of theirs;
    the examples are spread evenly over the rows."""
    rng = random.Random(0)
    strata = {k: list(range(rows)) for k in ("prompt", "answer")}
    for s in strata.values():
        rng.shuffle(s)
    out = []
    for i in range(rows):
        total = round(quantile(QUANTILES["total"], (i + 0.5) / rows))
        prompt = min(round(quantile(QUANTILES["prompt"], (strata["prompt"][i] + 0.5) / rows)), total // 4)
        answer = min(round(quantile(QUANTILES["answer"], (strata["answer"][i] + 0.5) / rows)), total // 4)
        count = examples // rows + (1 if i < examples % rows else 0)
        out.append([count, prompt, total - prompt - answer, answer])
    return {"source": SOURCE, "lengths": out}


def plan(essence, lengths, student, mode, r, device, gpus, zero1):
    """One `essence plan` cell: its JSON, or the numbers of its one-line refusal."""
    cmd = [essence, "plan", "--config", CONFIG, "--lengths", lengths, "--device", device, "--gpus", str(gpus),
           "--json", "--set", f"student.preset=configs/models/{STUDENTS[student]}.json", "--set",
           f"trunc.lsp={r}", "--set", f"trunc.mode={mode}", "--set", f"run.zero1={'true' if zero1 else 'false'}"]
    p = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    if p.returncode == 0:
        return json.loads(p.stdout)
    m = NO_FIT.search(p.stderr)
    if not m:
        sys.exit(f"paper_scale: {' '.join(cmd)}: {p.stderr.strip()}")
    return {"no_fit": {"capacity": int(m[1]), "need": float(m[2]) * GIB, "usable": float(m[3]) * GIB,
                       "state": float(m[4]) * GIB}}


def cell(student, mode, r, setup, pl):
    device, gpus, zero1 = setup
    row = {"student": student, "mode": mode, "r": r, "device": device, "gpus": gpus, "zero1": zero1}
    if "no_fit" in pl:
        nf = pl["no_fit"]
        return {**row, "fits": False, "any_capacity": False, "total_gib": nf["need"] / GIB,
                "state_gib": nf["state"] / GIB, "usable_gib": nf["usable"] / GIB, "capacity": nf["capacity"]}
    c, m = pl["run"], pl["run"]["memory"]
    f = c["flops_per_epoch"]
    state = m["weights"] + m["master"] + m["gradients"] + m["moments"] + m["teacher"]
    return {**row, "fits": c["fits"], "any_capacity": True, "total_gib": m["total"] / GIB, "state_gib": state / GIB,
            "acts_gib": m["activations"] / GIB, "usable_gib": pl["device"]["usable"] / GIB,
            "capacity": c["capacity"], "max_capacity": c["max_capacity"],
            "total_full_gib": c["memory_by_recompute"]["full"]["total"] / GIB, "kept_tokens": c["kept_tokens"],
            "flops": f["total"], "student_forward": f["student_forward"], "student_backward": f["student_backward"],
            "teacher_forward": f["teacher_forward"], "attention": f["attention"], "lm_head": f["lm_head"],
            "hours": c["seconds_per_epoch"] / 3600, "mfu": pl["mfu"], "params": pl["student"]["params"]}


def fmt(x, spec=".2f"):
    return "-" if x is None else format(x, spec)


def ratio(a, b):
    return a / b if a is not None and b else None


def find(rows, **key):
    return next((r for r in rows if all(r[k] == v for k, v in key.items())), None)


def costs(rows, student, mode, r):
    """FLOPs and kept tokens (the same on every setup that could plan it) and hours on the timed setups."""
    ok = [x for x in rows if x["student"] == student and x["mode"] == mode and x["r"] == r and x["any_capacity"]]
    hours = {s: (find(ok, device=s[0], gpus=s[1], zero1=s[2]) or {}).get("hours") for s in TIME_SETUPS}
    return (ok[0]["flops"] if ok else None), (ok[0]["kept_tokens"] if ok else None), hours


def setup_name(s):
    return f"{s[1]}x {s[0]}{', ZeRO-1' if s[2] else ''}"


def claim(rows):
    """The paper's claim, checked on the 8B -> 4B pair in seq mode."""
    def fits(r, device):
        return [s for s in SETUPS if s[0] == device and (find(rows, student="4B", mode="seq", r=r, device=s[0],
                                                             gpus=s[1], zero1=s[2]) or {}).get("fits")]
    full80, half40, full40 = fits(1.0, "h100-80g"), fits(0.5, "a100-40g"), fits(1.0, "a100-40g")
    ref = ("h100-80g", 4, True)
    a = find(rows, student="4B", mode="seq", r=0.5, device=ref[0], gpus=ref[1], zero1=ref[2])
    b = find(rows, student="4B", mode="seq", r=1.0, device=ref[0], gpus=ref[1], zero1=ref[2])
    one40 = find(rows, student="4B", mode="seq", r=0.5, device="a100-40g", gpus=4, zero1=True)
    one80 = find(rows, student="4B", mode="seq", r=1.0, device="h100-80g", gpus=1, zero1=False)
    needs80 = bool(full80) and not full40
    fits40 = bool(half40)
    out = ["## Does the paper's claim hold here?", ""]
    out.append(f"The claim: distilling Qwen3-8B into Qwen3-4B needs an 80 GB GPU at r = 1 and fits a 40 GB one at "
               f"r = 0.5, for about 50% of the time, memory and FLOPs. In this engine (bf16 weights and activations, "
               f"fp32 master weights, gradients and AdamW moments, a bf16 online teacher), seq mode:")
    out.append("")
    out.append(f"- **Needs an 80 GB GPU at r = 1: {'yes' if needs80 else 'no'}.** It fits "
               f"{', '.join(map(setup_name, full80)) or 'no H100-80GB setup'}; on one H100 it does not fit at any "
               f"r: its state before activations is {fmt(one80['state_gib'], '.1f')} GiB of "
               f"{fmt(one80['usable_gib'], '.1f')} usable.")
    out.append(f"- **Fits a 40 GB GPU at r = 0.5: {'yes' if fits40 else 'no'}.** "
               + (f"It fits {', '.join(map(setup_name, half40))}." if fits40 else
                  f"Even on 4 A100-40GB with ZeRO-1 the state before activations alone is "
                  f"{fmt(one40['state_gib'], '.1f')} GiB per GPU of {fmt(one40['usable_gib'], '.1f')} usable "
                  f"(the 16 GB teacher and the full fp32 gradients are not sharded): truncation shrinks only "
                  f"the activations, so no r makes it fit."))
    if a and b and a["any_capacity"] and b["any_capacity"]:
        fl, hr = ratio(a["flops"], b["flops"]), ratio(a["hours"], b["hours"])
        mem, acts = ratio(a["total_gib"], b["total_gib"]), ratio(a["acts_gib"], b["acts_gib"])
        out.append(f"- **About half the cost at r = 0.5** ({setup_name(ref)}): FLOPs {fmt(fl)}x and time "
                   f"{fmt(hr)}x: yes; memory per GPU {fmt(mem)}x: "
                   f"{'yes' if mem <= 0.6 else 'no'}; activations alone {fmt(acts)}x.")
        holds = needs80 and fits40 and fl <= 0.6 and hr <= 0.6 and mem <= 0.6
    else:
        holds = False
    out.append("")
    out.append(f"**So the claim {'holds' if holds else 'does not hold'} here.** "
               + ("" if holds else "Time and FLOPs halve as the paper says, and so do activations; the memory "
                  "halving, and with it the move from an 80 GB to a 40 GB card, needs the fixed state to be small "
                  "next to the activations, which it is not for a 4B student with an 8B teacher under full AdamW "
                  "training (sharding gradients and the teacher, ZeRO-2/3 or FSDP, would change that)."))
    return out


def write_md(path, rows, args):
    mfus = {}  # device -> MFU -> students planned at it
    for r in rows:
        if r.get("mfu"):
            mfus.setdefault(r["device"], {}).setdefault(r["mfu"], [])
            if r["student"] not in mfus[r["device"]][r["mfu"]]:
                mfus[r["device"]][r["mfu"]].append(r["student"])
    used = "; ".join(f"{d} " + ", ".join(f"{100 * m:.1f}%" + (f" for {'/'.join(st)}" if len(by) > 1 else "")
                                         for m, st in by.items()) for d, by in sorted(mfus.items()))
    lines = ["# Paper-scale cost table (essence plan)", "",
             f"Each cell is `essence plan --json` of `{CONFIG}` with the student and r set; nothing was run. "
             f"Lengths: {SOURCE}. Time per epoch at the MFU each plan took: {used} (40% is assumed where none "
             "is on record; on the H200 it is the MFU measured nearest the student's size, perf/gpu/results). "
             "Memory per GPU is at run.recompute none, in GiB, against the usable memory (the card less 1 GiB for "
             "the CUDA context and NCCL); 'no fit' means no capacity that holds the longest kept trace fits.", ""]
    lines += claim(rows) + [""]
    lines += ["## FLOPs and time per epoch", "",
              "| student | mode | r | kept tokens | FLOPs | FLOPs x | " +
              " | ".join(f"hours, {setup_name(s)} | x" for s in TIME_SETUPS) + " |",
              "|---|---|---|---|---|---|" + "---|---|" * len(TIME_SETUPS)]
    for st in [s for s in STUDENTS if any(r["student"] == s for r in rows)]:
        for mode in [m for m in MODES if any(r["mode"] == m for r in rows)]:
            base_fl, _, base_h = costs(rows, st, mode, 1.0)
            for rr in sorted({r["r"] for r in rows}):
                fl, kept, hours = costs(rows, st, mode, rr)
                cells = " | ".join(f"{fmt(hours[s])} | {fmt(ratio(hours[s], base_h[s]))}" for s in TIME_SETUPS)
                lines.append(f"| {st} | {mode} | {rr} | {fmt(kept, '.3g')} | {fmt(fl, '.3g')} | "
                             f"{fmt(ratio(fl, base_fl))} | {cells} |")
    lines += ["", "## Memory per GPU (GiB, recompute none) and whether it fits", "",
              "| student | mode | r | " + " | ".join(setup_name(s) for s in SETUPS) + " |",
              "|---|---|---|" + "---|" * len(SETUPS)]
    for st in [s for s in STUDENTS if any(r["student"] == s for r in rows)]:
        for mode in [m for m in MODES if any(r["mode"] == m for r in rows)]:
            for rr in sorted({r["r"] for r in rows}):
                cells = []
                for s in SETUPS:
                    x = find(rows, student=st, mode=mode, r=rr, device=s[0], gpus=s[1], zero1=s[2])
                    cells.append("-" if x is None else f"{x['total_gib']:.1f} "
                                 + ("fits" if x["fits"] else "no fit" if not x["any_capacity"] else "no"))
                lines.append(f"| {st} | {mode} | {rr} | " + " | ".join(cells) + " |")
    lines += ["", "The CSV beside this file has every cell: the state before activations, activations, the largest "
              "capacity that fits, FLOPs by part (student forward and backward, teacher forward; attention and "
              "LM head), and hours."]
    out_file.write_text(path, "\n".join(lines) + "\n")


def write_csv(path, rows):
    keys = ["student", "params", "mode", "r", "device", "gpus", "zero1", "fits", "any_capacity", "total_gib",
            "state_gib", "acts_gib", "total_full_gib", "usable_gib", "capacity", "max_capacity", "kept_tokens",
            "flops", "student_forward", "student_backward", "teacher_forward", "attention", "lm_head", "mfu", "hours"]
    with tempfile.NamedTemporaryFile("w", newline="", delete=False, dir=os.path.dirname(path) or ".") as f:
        w = csv.DictWriter(f, fieldnames=keys)
        w.writeheader()
        w.writerows(rows)
    os.replace(f.name, path)


def main():
    ap = cli_args.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--essence", default=os.path.join(ROOT, "build", "essence"), help="the essence binary")
    ap.add_argument("--out-dir", default=os.path.join(HERE, "results"), help="where NAME.md and NAME.csv go")
    ap.add_argument("--name", default="paper-scale")
    ap.add_argument("--quick", action="store_true", help="the 4B student, seq, r = 0.5 and 1, 2000 examples")
    args = ap.parse_args()
    if not os.path.exists(args.essence):
        sys.exit(f"paper_scale: {args.essence} is missing: build first (meson setup build && ninja -C build)")
    students, modes, ratios = (["4B"], ["seq"], [0.5, 1.0]) if args.quick else (list(STUDENTS), MODES, RATIOS)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        lengths = os.path.join(tmp, "lengths.json")
        with open(lengths, "w") as f:
            json.dump(histogram(2000 if args.quick else EXAMPLES, 200 if args.quick else 1000), f)
        for st in students:
            for mode in modes:
                for r in ratios:
                    for s in SETUPS:
                        rows.append(cell(st, mode, r, s, plan(args.essence, lengths, st, mode, r, *s)))
                    print(f"paper_scale: {st} {mode} r = {r} done", file=sys.stderr)
    base = os.path.join(args.out_dir, args.name)
    write_csv(base + ".csv", rows)
    write_md(base + ".md", rows, args)
    print(f"wrote {base}.md and {base}.csv")


if __name__ == "__main__":
    main()
