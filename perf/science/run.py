#!/usr/bin/env python3
"""The paper's accuracy findings at small scale: retention of pass@1 over the
lead-span proportion r, on reasoning-trace analogs (perf/science/README.md).

One command drives the essence CLI and tools end to end:
  1. corpus: chain problems (tools/synth_corpus.py --style chain), the early
     variant (answer fixed in the first quarter of the CoT, then checks and
     restatement) and the late one (restatement first, computation last);
     splits for the teacher, for the base students (other problems) and for
     distillation; one BPE tokenizer; shards;
  2. teacher: trained once on full traces of both variants, shared by every
     run; its pass@1 on the test problems; its top-k log-probs written once
     into the distillation shards (essence teacher);
  3. base student: the pretrained-base analog, trained on full traces of
     other problems; its own pass@1;
  4. the sweep: each student starts from the base and is distilled (CE + top-k
     KD) on truncated traces; greedy, full-length pass@1 on the test problems;
  5. science.csv (one row per run), science.md (tables, readings against the
     paper) and two plots in --out.

  python3 perf/science/run.py            # full: about 75 minutes on 2 cores
  python3 perf/science/run.py --quick    # every stage end to end in under 3 minutes (CI)
  python3 perf/science/run.py --device cuda   # larger teacher and student on a GPU

Stages whose outputs exist are reused (the teacher, the base, finished runs
with their eval): --fresh starts over. Exit status 1 when a stage fails.
"""
import argparse
import csv
import json
import math
import os
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
sys.path.insert(0, str(ROOT / "perf"))
sys.path.insert(0, str(ROOT / "tools"))
from cost_table import machine  # noqa: E402
from synth_corpus import write_jsonl  # noqa: E402
PRESETS = ["ans", "promptAns", "cot", "cotAns", "promptCot", "promptcotAns"]
LR = json.loads((HERE / "run-base.json").read_text())["optim"]["lr"]  # the students' learning rate

# Per mode: corpus sizes, models, epochs, the sweep's r values and seeds.
MODES = {
    "full": dict(teacher_n=8000, base_n=4000, distill_n=3000, test_n=500, teacher_epochs=2, base_epochs=2,
                 max_value=20, max_delta=5, lr_ratios=[0.25, 0.5, 1.0], other_lrs=[1e-3],
                 ratios=[0.1, 0.25, 0.5, 0.75, 1.0], late_ratios=[0.25, 0.5, 1.0], seeds=[1, 2, 3],
                 extra_seeds=[1, 2],
                 teacher="teacher-model.json", student="student-model.json", device="cpu", topk=16),
    "quick": dict(teacher_n=300, base_n=100, distill_n=120, test_n=16, max_new=160, teacher_epochs=1, base_epochs=1,
                  max_value=20, max_delta=5, lr_ratios=[0.5, 1.0], other_lrs=[1e-3],
                  ratios=[0.25, 0.5, 1.0], late_ratios=[0.5, 1.0], seeds=[1, 2], extra_seeds=[1],
                  teacher="student-model.json", student="student-model.json", device="cpu", topk=4),
    "cuda": dict(teacher_n=40000, base_n=8000, distill_n=20000, test_n=500, teacher_epochs=3, base_epochs=1,
                 max_value=40, max_delta=9, lr_ratios=[0.25, 0.5, 1.0], other_lrs=[1e-3, 1e-4],
                 ratios=[0.1, 0.25, 0.5, 0.75, 1.0], late_ratios=[0.1, 0.25, 0.5, 0.75, 1.0], seeds=[1, 2, 3],
                 extra_seeds=[1, 2, 3], teacher="teacher-model-gpu.json", student="student-model-gpu.json", device="cuda", topk=32),
}


def log(msg):
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def run(cmd, what, quiet=True):
    """Runs cmd in the repository root; exits naming `what` when it fails."""
    p = subprocess.run([str(c) for c in cmd], cwd=ROOT, stdout=subprocess.DEVNULL if quiet else None,
                       stderr=subprocess.PIPE, text=True)
    if p.returncode:
        tail = "\n".join(p.stderr.strip().splitlines()[-5:])
        sys.exit(f"science: {what} failed (exit {p.returncode}):\n{tail}")
    return p


# ---- 1. corpus ------------------------------------------------------------------------------------


COMPUTED = re.compile(r"So the result is (-?\d+)\.")


def read_jsonl(path):
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def make_corpus(cfg, data, py):
    """Splits per variant (teacher, distill, base: other problems; val, test), one tokenizer, shards."""
    n_t, n_b, n_d = cfg["teacher_n"], cfg["base_n"], cfg["distill_n"]
    for variant in ("early", "late"):
        d = data / variant
        gen = [py, "tools/synth_corpus.py", "--style", "chain", "--seed", "11", "--out", d,
               "--train", n_t + n_b + n_d, "--val", 64, "--test", cfg["test_n"],
               "--max-value", cfg["max_value"], "--max-delta", cfg["max_delta"]]
        if variant == "late":
            gen.append("--late")
        run(gen, f"synth_corpus ({variant})")
        # The same seed gives both variants the same problems: each split holds
        # the same problems in both wordings, and no split shares a prompt.
        train = read_jsonl(d / "train.jsonl")
        write_jsonl(d / "teacher.jsonl", train[:n_t])
        write_jsonl(d / "distill.jsonl", train[n_t:n_t + n_d])
        write_jsonl(d / "base.jsonl", train[n_t + n_d:])
    model = data / "model"
    run([py, "tools/train_tokenizer.py", "--out", model, "--vocab", 512,
         data / "early/teacher.jsonl", data / "late/teacher.jsonl"], "train_tokenizer")
    for variant in ("early", "late"):
        for split in ("teacher", "distill", "base", "val"):
            run([py, "tools/prep_data.py", "--model", model, "--max-len", 512, "--out",
                 data / variant / f"{split}.bin", data / variant / f"{split}.jsonl"], f"prep_data {variant}/{split}")


def trace_shape(data):
    """Mean prompt and CoT tokens, and where the answer is fixed in the CoT, per variant."""
    import shard_io
    from tokenizers import Tokenizer
    tok = Tokenizer.from_file(str(data / "model" / "tokenizer.json"))
    out = {}
    for variant in ("early", "late"):
        _, ex = shard_io.read(data / variant / "distill.bin")
        recs = read_jsonl(data / variant / "distill.jsonl")
        prompt = statistics.mean(e.cot_begin for e in ex)
        cot = statistics.mean(e.cot_end - e.cot_begin for e in ex)
        ratio = min((e.cot_end - e.cot_begin) / e.cot_begin for e in ex)
        # "So the result is N." closes the computation in both variants.
        fixed = statistics.mean(
            len(tok.encode(r["reasoning"].split("So the result is")[0]).ids) / len(tok.encode(r["reasoning"]).ids)
            for r in recs[:200])
        out[variant] = dict(prompt=prompt, cot=cot, min_ratio=ratio, total=statistics.mean(len(e.tokens) for e in ex),
                            answer_fixed_at=fixed)
    return out


# ---- 2-4. training and evaluation ----------------------------------------------------------------


def train(essence, out, sets, what, fresh):
    """One `essence train` process; returns its summary, or {"failed": reason}
    when the config supervises nothing. A finished run is reused and an
    interrupted one resumes from its checkpoint, unless fresh."""
    summary = out / "summary.json"
    if summary.exists() and (out / "final").exists() and not fresh:
        return json.loads(summary.read_text())
    cmd = [essence, "train", "--config", HERE / "run-base.json"] + (["--fresh"] if fresh else [])
    for s in sets + [f"run.out={out}"]:
        cmd += ["--set", s]
    p = subprocess.run([str(c) for c in cmd], cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                       text=True)
    if p.returncode:
        err = (p.stderr.strip().splitlines() or [f"exit {p.returncode}"])[-1]
        if "supervis" in err:  # e.g. ans at r < 1: the answer is cut, nothing carries loss
            return {"failed": err}
        sys.exit(f"science: training {what} failed: {err}")
    return json.loads(summary.read_text())


def step_ms(out):
    """Median optimizer-step time of a run, from its metrics."""
    times = [m["seconds"] for m in map(json.loads, (out / "metrics.jsonl").read_text().splitlines())
             if m.get("kind") == "train" and not m.get("skipped")]
    return 1e3 * statistics.median(times) if times else None


def evaluate(essence, model_dir, tok, test, out, cfg, fresh):
    """Greedy, full-length pass@1 on the test problems, the count of samples
    that never finish, and the fraction whose CoT computed the right value
    ("So the result is N." first written with N correct), finished or not:
    it tells a student that learned the computation but lost the ending
    apart from one that never learned it."""
    summary = out.with_suffix(".summary.json")
    if not summary.exists() or fresh:
        run([essence, "eval", "--model", model_dir, "--tokenizer", tok, "--data", test, "--out", out,
             "--max-new", cfg.get("max_new", 400), "--batch", 64, "--device", cfg["device"]], f"eval of {model_dir}")
    s = json.loads(summary.read_text())
    samples = read_jsonl(out)
    computed = sum(bool(m) and m.group(1) == str(x["gold"]).strip() for x in samples
                   for m in [COMPUTED.search(x["text"])]) / max(1, len(samples))
    return s["pass@1"], s.get("unfinished", 0), computed


# ---- 5. the sweep -----------------------------------------------------------------------------------


def sweep_rows(cfg):
    """(group, variant, mode, r, window, supervise, control, drop_answer, lr) per run, before seeds."""
    rows = []
    for r in cfg["ratios"]:
        for mode in (["seq"] if r == 1.0 else ["seq", "cot"]):  # r = 1 keeps everything in both modes
            rows.append(dict(group="r", variant="early", mode=mode, r=r, window="lead", supervise="promptcotAns",
                             control=0.0, drop_answer=False))
    # How hard the student is fine-tuned decides whether it keeps what the
    # truncated traces no longer show (how a trace ends): the same sweep at
    # other learning rates, each against its own r = 1.
    for lr in cfg["other_lrs"]:
        for r in cfg["lr_ratios"]:
            rows.append(dict(group="lr", variant="early", mode="seq", r=r, window="lead", supervise="promptcotAns",
                             control=0.0, drop_answer=False, lr=lr))
    for p in PRESETS[:-1]:
        rows.append(dict(group="supervise", variant="early", mode="seq", r=0.5, window="lead", supervise=p,
                         control=0.0, drop_answer=False))
    for w in ("middle", "tail"):
        rows.append(dict(group="window", variant="early", mode="seq", r=0.5, window=w, supervise="promptcotAns",
                         control=0.0, drop_answer=False))
    rows.append(dict(group="control", variant="early", mode="seq", r=1.0, window="lead", supervise="promptcotAns",
                     control=0.5, drop_answer=False))
    rows.append(dict(group="drop_answer", variant="early", mode="seq", r=1.0, window="lead",
                     supervise="promptcotAns", control=0.0, drop_answer=True))
    for r in cfg["late_ratios"]:
        rows.append(dict(group="late", variant="late", mode="seq", r=r, window="lead", supervise="promptcotAns",
                         control=0.0, drop_answer=False))
    return [dict(row, lr=row.get("lr", LR)) for row in rows]


def run_name(row, seed):
    name = f"{row['variant']}-{row['mode']}-r{row['r']}-{row['window']}-{row['supervise']}"
    if row["control"]:
        name += f"-mask{row['control']}"
    if row["drop_answer"]:
        name += "-dropans"
    if row["lr"] != LR:
        name += f"-lr{row['lr']:g}"
    return f"{name}-s{seed}"


def mean_se(xs):
    xs = [x for x in xs if x is not None]
    if not xs:
        return None, None
    m = statistics.mean(xs)
    return m, (statistics.stdev(xs) / math.sqrt(len(xs)) if len(xs) > 1 else 0.0)


KEY = ("group", "variant", "mode", "r", "window", "supervise", "control", "drop_answer", "lr")


def aggregate(rows, base):
    """Per configuration (all seeds): pass@1 mean and SE, retention against
    r = 1 of the same variant and learning rate, the share of r = 1's gain
    over the base student (base: pass@1 per variant) that is kept, costs."""
    groups = {}
    for r in rows:
        groups.setdefault(tuple(r[k] for k in KEY), []).append(r)
    ref = {}
    for key, rs in groups.items():
        a = dict(zip(KEY, key))
        if a["group"] in ("r", "late", "lr") and a["r"] == 1.0:
            ref[a["variant"], a["lr"]] = mean_se([x["pass1"] for x in rs])
    agg = []
    for key, rs in groups.items():
        a = dict(zip(KEY, key))
        ok = [x for x in rs if x.get("pass1") is not None]
        p, se = mean_se([x["pass1"] for x in ok])
        p1, se1 = ref.get((a["variant"], a["lr"]), (None, None))
        ret = ret_se = gain = gain_se = None
        if p is not None and p1:
            ret = p / p1
            ret_se = ret * math.sqrt((se / p if p else 0) ** 2 + (se1 / p1) ** 2)
            lift = p1 - base.get(a["variant"], 0.0)
            if lift > 0:
                gain = (p - base.get(a["variant"], 0.0)) / lift
                gain_se = math.sqrt(se ** 2 + (gain * se1) ** 2) / lift
        cost = {c: statistics.mean(x[c] for x in ok) if ok else None
                for c in ("flops", "tokens", "step_ms", "computed", "unfinished")}
        agg.append(dict(a, pass1=p, se=se, retention=ret, retention_se=ret_se, gain=gain, gain_se=gain_se, n=len(ok),
                        failed=rs[0].get("failed"),
                        **cost))
    full = {a["variant"]: a for a in agg if a["r"] == 1.0 and a["group"] in ("r", "late")}
    for a in agg:
        f = full.get(a["variant"])
        a["flops_rel"] = a["flops"] / f["flops"] if a["flops"] and f and f["flops"] else None
    return agg


# ---- outputs ------------------------------------------------------------------------------------------

CSV_KEYS = ["role", "variant", "group", "mode", "r", "window", "supervise", "control", "drop_answer", "lr", "seed",
            "pass1", "computed", "unfinished", "tokens", "flops", "step_ms", "seconds", "failed"]


def write_csv(path, rows):
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=CSV_KEYS, extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)


def pct(x, se=None):
    if x is None:
        return "n/a"
    return f"{100 * x:.1f}%" + (f" ± {100 * se:.1f}" if se is not None else "")


def num(x, spec):
    return "" if x is None else format(x, spec)


def find(agg, **kw):
    return next((a for a in agg if all(a[k] == v for k, v in kw.items())), None)


def readings(agg):
    """The paper's four claims, each with the numbers that decide it here."""
    out = []
    a = find(agg, group="r", variant="early", mode="seq", r=0.5)
    q = find(agg, group="r", variant="early", mode="seq", r=0.25)
    if a and a["retention"] is not None:
        holds = a["retention"] >= 0.85
        out.append(f"1. **About 91% retention at r = 0.5.** Here {pct(a['retention'], a['retention_se'])} in seq mode at "
                   f"{a['flops_rel']:.2f}x the FLOPs of r = 1" + (f"; at r = 0.25, {pct(q['retention'], q['retention_se'])}"
                   if q and q["retention"] is not None else "") + f". {'Holds' if holds else 'Does not hold'}. "
                   f"Of what distillation at r = 1 added to the base student, r = 0.5 keeps "
                   f"{pct(a['gain'], a['gain_se'])}" + (f" and r = 0.25 {pct(q['gain'], q['gain_se'])}" if q else "")
                   + ": a base that already solves most problems bounds pass@1 retention from below, so this is "
                   "the stricter reading.")
    cot_like = [find(agg, group=g, r=0.5, supervise=s) for g, s in
                (("r", "promptcotAns"), ("supervise", "cot"), ("supervise", "cotAns"), ("supervise", "promptCot"))]
    ans_like = [find(agg, group="supervise", r=0.5, supervise=s) for s in ("ans", "promptAns")]
    cot_like = [x for x in cot_like if x and x["pass1"] is not None and x["variant"] == "early" and x["mode"] == "seq"]
    if cot_like:
        worst_cot = min(cot_like, key=lambda x: x["pass1"])
        ans_txt = "; ".join(f"{x['supervise']}: " + (pct(x["pass1"], x["se"]) if x["pass1"] is not None
                                                      else f"no run ({x['failed']})") for x in ans_like if x)
        best_ans = max([x["pass1"] for x in ans_like if x and x["pass1"] is not None] or [None], key=lambda v: v or 0)
        holds = best_ans is None or worst_cot["pass1"] > best_ans
        out.append(f"2. **CoT-containing allocations beat ans/promptAns.** Worst CoT-containing preset at r = 0.5: "
                   f"{worst_cot['supervise']} {pct(worst_cot['pass1'], worst_cot['se'])}; {ans_txt}. "
                   f"{'Holds' if holds else 'Does not hold'}.")
    lead = find(agg, group="r", variant="early", mode="seq", r=0.5)
    mid, tail = find(agg, group="window", window="middle"), find(agg, group="window", window="tail")
    if lead and mid and tail and None not in (lead["pass1"], mid["pass1"], tail["pass1"]):
        holds = lead["pass1"] > mid["pass1"] and lead["pass1"] > tail["pass1"]
        out.append(f"3. **Lead beats middle and tail.** lead {pct(lead['pass1'], lead['se'])}, middle "
                   f"{pct(mid['pass1'], mid['se'])}, tail {pct(tail['pass1'], tail['se'])}. "
                   f"{'Holds' if holds else 'Does not hold'}.")
    ctl = find(agg, group="control")
    if lead and ctl and None not in (lead["pass1"], ctl["pass1"]):
        holds = ctl["pass1"] < lead["pass1"]
        out.append(f"4. **The label-mask control does worse than truncation at the same supervision.** control "
                   f"(all tokens, half the labels masked) {pct(ctl['pass1'], ctl['se'])} at {ctl['flops_rel']:.2f}x "
                   f"the FLOPs, against truncation at r = 0.5 {pct(lead['pass1'], lead['se'])} at "
                   f"{lead['flops_rel']:.2f}x. {'Holds' if holds else 'Does not hold'}.")
    sens = sorted((x for x in agg if x["group"] in ("r", "lr") and x["mode"] == "seq" and x["r"] == 0.5
                   and x["variant"] == "early" and x["retention"] is not None), key=lambda x: x["lr"])
    if len(sens) > 1:
        out.append("5. **Not a claim of the paper: retention depends on how hard the student is fine-tuned.** "
                   "Retention at r = 0.5 (pass@1, samples that never finish): " + "; ".join(
                       f"lr {x['lr']:g}: {pct(x['retention'], x['retention_se'])} ({pct(x['pass1'])}, "
                       f"{x['unfinished']:.0f} unfinished of the test problems)" for x in sens) + ".")
    late = find(agg, group="late", r=0.5)
    if late and late["retention"] is not None and a and a["retention"] is not None:
        out.append(f"6. **Where the decisive computation comes late, truncation hurts more.** Retention at r = 0.5: "
                   f"{pct(late['retention'], late['retention_se'])} (late variant) against "
                   f"{pct(a['retention'], a['retention_se'])} (early). "
                   f"{'As expected' if late['retention'] < a['retention'] else 'Not seen here'}.")
    return out


def write_md(path, agg, header, shape):
    lines = [f"# Accuracy retention over r: the paper's findings at small scale", "", *header, ""]
    lines += ["## Traces", "", "| variant | prompt tokens | CoT tokens | CoT / prompt (min) | answer fixed at (fraction of the CoT) |",
              "| --- | --- | --- | --- | --- |"]
    for v, s in shape.items():
        lines.append(f"| {v} | {s['prompt']:.1f} | {s['cot']:.1f} | {s['min_ratio']:.2f} | {s['answer_fixed_at']:.2f} |")
    lines += ["", "## Runs (mean over seeds ± standard error)", "",
              "| group | variant | mode | r | window | supervise | control | drop answer | lr | pass@1 | retention | "
              "gain kept | computed | unfinished | FLOPs vs r = 1 | median step ms | seeds |",
              "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for a in sorted(agg, key=lambda a: (a["variant"], a["group"] != "r", a["group"], a["lr"], a["mode"], a["r"],
                                        a["supervise"])):
        p = pct(a["pass1"], a["se"]) if a["pass1"] is not None else f"no run: {a['failed']}"
        lines.append(f"| {a['group']} | {a['variant']} | {a['mode']} | {a['r']} | {a['window']} | {a['supervise']} | "
                     f"{a['control'] or ''} | {'yes' if a['drop_answer'] else ''} | {a['lr']:g} | {p} | "
                     f"{pct(a['retention'], a['retention_se'])} | {pct(a['gain'], a['gain_se'])} | {pct(a['computed'])} | {num(a['unfinished'], '.0f')} | "
                     f"{num(a['flops_rel'], '.2f')} | {num(a['step_ms'], '.0f')} | {a['n']} |")
    lines += ["", "*retention*: pass@1 / pass@1 at r = 1 (same variant and learning rate); *gain kept*: "
              "(pass@1 - base) / (pass@1 at r = 1 - base), the share of distillation's improvement over the base "
              "student that survives truncation; *computed*: the fraction of samples whose CoT first wrote the right value (`So the result is N.`), "
              "finished or not; *unfinished*: samples (of the test problems) that never closed their answer."]
    lines += ["", "## Against the paper", "", *readings(agg), ""]
    path.write_text("\n".join(lines) + "\n")


def write_plots(out, agg):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    series = [("early", "seq", LR, "early trace, seq"), ("early", "cot", LR, "early trace, cot"),
              ("late", "seq", LR, "late trace, seq")]
    series += [("early", "seq", lr, f"early trace, seq, lr {lr:g}")
               for lr in sorted({a["lr"] for a in agg if a["group"] == "lr"})]
    for variant, mode, lr, label in series:
        pts = sorted((a for a in agg if a["variant"] == variant and a["lr"] == lr and a["retention"] is not None
                      and a["group"] in ("r", "late", "lr") and (a["mode"] == mode or a["r"] == 1.0)),
                     key=lambda a: a["r"])
        if not pts:
            continue
        axes[0].errorbar([a["r"] for a in pts], [a["retention"] for a in pts], yerr=[a["retention_se"] for a in pts],
                         marker="o", capsize=3, label=label)
        axes[1].errorbar([a["flops_rel"] for a in pts], [a["retention"] for a in pts],
                         yerr=[a["retention_se"] for a in pts], marker="o", capsize=3, label=label)
    for ax, xl in ((axes[0], "lead-span proportion r"), (axes[1], "training FLOPs relative to r = 1")):
        ax.axhline(0.91, color="grey", ls=":", lw=1, label="paper: 91% at r = 0.5")
        ax.set_xlabel(xl)
        ax.set_ylabel("pass@1 retention")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle("Accuracy retention of distilled students (mean ± SE over seeds)")
    fig.tight_layout()
    fig.savefig(out / "science.png", dpi=110)


# ---- main -------------------------------------------------------------------------------------------


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="tiny everything, to check each stage runs (CI)")
    ap.add_argument("--device", choices=["cpu", "cuda"], default="cpu", help="cuda: larger models and corpus")
    ap.add_argument("--out", help="results folder (default perf/results, or runs/science-quick with --quick)")
    ap.add_argument("--work", help="data and runs (default runs/science[-quick|-cuda])")
    ap.add_argument("--essence", default=str(ROOT / "build" / "essence"))
    ap.add_argument("--fresh", action="store_true", help="retrain everything")
    ap.add_argument("--threads", type=int, default=0, help="CPU threads per run (0: every core; 1 keeps runs steady on a shared machine)")
    args = ap.parse_args(argv)
    name = "quick" if args.quick else "cuda" if args.device == "cuda" else "full"
    cfg = MODES[name]
    tag = "science" if name == "full" else f"science-{name}"
    work = Path(args.work) if args.work else ROOT / "runs" / tag
    out = Path(args.out) if args.out else (ROOT / "perf" / "results" if name == "full" else work / "results")
    data, runs = work / "data", work / "runs"
    for d in (data, runs, out):
        d.mkdir(parents=True, exist_ok=True)
    py, essence = sys.executable, args.essence
    if not os.access(essence, os.X_OK):
        sys.exit(f"science: {essence}: no essence binary (build it: meson setup build && ninja -C build)")
    t_start = time.time()
    dev = f"run.device={cfg['device']}"
    threads = f"run.threads={args.threads}"
    if args.threads:  # eval and teacher take their thread count from OpenMP's environment
        os.environ["OMP_NUM_THREADS"] = str(args.threads)

    log(f"mode {name}: corpus in {data}")
    if args.fresh or not (data / "early" / "distill.bin").exists():
        make_corpus(cfg, data, py)
    model = data / "model"
    shape = trace_shape(data)
    tok = str(model)
    common = [f"tokenizer={model}", dev, threads]

    rows = []

    def pretrain(role, preset, split, epochs):
        """The teacher or the base: full traces of both variants, then pass@1 on each."""
        d = runs / role
        s = train(essence, d, common + [
            f"student.preset={HERE / preset}", f"data.train=[\"{data}/early/{split}.bin\", \"{data}/late/{split}.bin\"]",
            f"run.epochs={epochs}", "optim.lr=3e-3", "loss.alpha=1"], f"the {role}", args.fresh)
        for variant in ("early", "late"):
            p, unf, comp = evaluate(essence, d / "final", tok, data / variant / "test.jsonl",
                                    d / f"eval-{variant}.jsonl", cfg, args.fresh)
            rows.append(dict(role=role, variant=variant, pass1=p, computed=comp, unfinished=unf, flops=s["flops"],
                             tokens=s["tokens"], step_ms=step_ms(d), seconds=s["seconds"]))
            log(f"{role} pass@1 on {variant}: {pct(p)}")
        return d

    log("teacher: full traces of both variants")
    teacher_dir = pretrain("teacher", cfg["teacher"], "teacher", cfg["teacher_epochs"])
    for variant in ("early", "late"):
        topk = data / variant / f"distill-top{cfg['topk']}.bin"
        if args.fresh or not topk.exists():
            run([essence, "teacher", "--model", teacher_dir / "final", "--k", cfg["topk"], "--out", topk,
                 "--device", cfg["device"], data / variant / "distill.bin"], f"essence teacher ({variant})")

    log("base student: full traces of other problems")
    base_dir = pretrain("base", cfg["student"], "base", cfg["base_epochs"])

    # The r sweep and the late variant carry the headline numbers: all seeds;
    # the ablations fewer where time is short.
    plan = [(row, seed) for row in sweep_rows(cfg)
            for seed in (cfg["seeds"] if row["group"] in ("r", "late") else cfg["extra_seeds"])]
    for k, (row, seed) in enumerate(plan, 1):
        rd = runs / run_name(row, seed)
        sets = common + [f"student.path={base_dir / 'final'}",
                         f"data.train=[\"{data}/{row['variant']}/distill-top{cfg['topk']}.bin\"]",
                         f"trunc.lsp={row['r']}", f"trunc.mode={row['mode']}", f"trunc.window={row['window']}",
                         f"trunc.label_mask={row['control']}", f"trunc.drop_answer={str(row['drop_answer']).lower()}",
                         f"supervise={row['supervise']}", f"optim.lr={row['lr']}", f"run.seed={seed}"]
        s = train(essence, rd, sets, rd.name, args.fresh)
        rec = dict(role="student", seed=seed, **row)
        if "failed" in s:
            rec.update(failed=s["failed"], pass1=None)
        else:
            p, unf, comp = evaluate(essence, rd / "final", tok, data / row["variant"] / "test.jsonl", rd / "eval.jsonl",
                                    cfg, args.fresh)
            rec.update(pass1=p, computed=comp, unfinished=unf, flops=s["flops"], tokens=s["tokens"], step_ms=step_ms(rd),
                       seconds=s["seconds"])
        rows.append(rec)
        elapsed = time.time() - t_start
        log(f"[{k}/{len(plan)}] {rd.name}: " + (f"pass@1 {pct(rec['pass1'])}" if rec["pass1"] is not None
                                                 else f"no run ({rec['failed']})") + f"  ({elapsed / 60:.1f} min)")

    students = [r for r in rows if r["role"] == "student"]
    agg = aggregate(students, {r["variant"]: r["pass1"] for r in rows if r["role"] == "base"})
    write_csv(out / "science.csv", rows)
    cmd = "python3 perf/science/run.py" + (" --quick" if args.quick else "") + (
        " --device cuda" if args.device == "cuda" else "") + (f" --threads {args.threads}" if args.threads else "")
    t, b = {r["variant"]: r for r in rows if r["role"] == "teacher"}, {r["variant"]: r for r in rows if r["role"] == "base"}
    header = [f"`{cmd}`, {time.strftime('%Y-%m-%d')}, {(time.time() - t_start) / 60:.0f} minutes on {machine()}.",
              f"Teacher ({cfg['teacher']}): pass@1 {pct(t['early']['pass1'])} (early), {pct(t['late']['pass1'])} (late). "
              f"Base student ({cfg['student']}): {pct(b['early']['pass1'])} (early), {pct(b['late']['pass1'])} (late). "
              f"{cfg['test_n']} test problems per variant, greedy, up to 400 new tokens; seeds {cfg['seeds']} ({cfg['extra_seeds']} for the r = 0.5 ablations) "
              f"(data order); students distilled from the base with CE + top-{cfg['topk']} KD (alpha 0.5), one epoch "
              f"over {cfg['distill_n']} problems at lr {LR:g} (other learning rates in the lr group). "
              f"Chains of 3-5 changes of 1-{cfg['max_delta']} on values in [0, {cfg['max_value']}]."]
    write_md(out / "science.md", agg, header, shape)
    write_plots(out, agg)
    log(f"wrote {out / 'science.md'}, science.csv, science.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
