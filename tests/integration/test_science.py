"""The science experiment's quick mode (perf/science/run.py --quick): every
stage runs end to end and writes its csv, md and plot. No accuracy threshold:
the quick models are too small to solve anything."""
import csv
import subprocess
import sys

from train_env import ROOT, essence_bin


def test_science_quick_runs_every_stage(tmp_path):
    out = tmp_path / "results"
    p = subprocess.run([sys.executable, ROOT / "perf/science/run.py", "--quick", "--work", tmp_path / "work",
                        "--out", out, "--essence", essence_bin()], capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    rows = list(csv.DictReader(open(out / "science.csv")))
    roles = {(r["role"], r["variant"]) for r in rows}
    assert {("teacher", "early"), ("teacher", "late"), ("base", "early"), ("base", "late")} <= roles
    students = [r for r in rows if r["role"] == "student"]
    groups = {r["group"] for r in students}
    assert groups == {"r", "lr", "supervise", "window", "control", "drop_answer", "late"}
    # Every trained student was evaluated and costed; the only runs without a
    # student are presets that the truncation leaves nothing to supervise.
    for r in students:
        if r["failed"]:
            assert "no supervised token" in r["failed"], r
        else:
            assert r["pass1"] != "" and float(r["flops"]) > 0 and float(r["step_ms"]) > 0, r
    # Truncation cuts the FLOPs: r = 0.25 in seq mode costs well under r = 1.
    flops = {float(r["r"]): float(r["flops"]) for r in students
             if r["group"] == "r" and r["mode"] == "seq" and r["seed"] == "1"}
    assert flops[0.25] < 0.5 * flops[1.0]
    md = (out / "science.md").read_text()
    assert "## Against the paper" in md and "| early | seq | 0.5 |" in md
    assert (out / "science.png").stat().st_size > 10000
