"""`essence plan` (issue 18) against what runs: its memory per kind is the
CPU backend's own tally in `essence bench` (within 5%; it is counted through
the same allocation calls, so it agrees exactly), its FLOPs equal
engine/flops.c's counter summed over the same epoch, for several configs and
r, and the peak `essence train` records with validation; on a GPU it
reproduces the tally the CUDA backend recorded on an H200. A length histogram
plans the same as the shards it describes; bad input gets one line naming the
problem."""
import json
import os
import shutil
import subprocess
import sys

import pytest

from train_env import ROOT, essence_bin, run_config, run_essence

sys.path.insert(0, str(ROOT / "tools"))
import shard_io  # noqa: E402

KINDS = ("weights", "gradients", "optimizer", "activations", "workspace", "index")
TEACHER = str(ROOT / "configs" / "models" / "qwen3-teacher-small.json")


def plan(cfg, *args, check=True):
    p = run_essence(["plan", "--config", cfg, "--json", *args], check=check)
    return json.loads(p.stdout) if check else p


def bench(cfg, steps, *sets, ranks=1):
    args = ["bench", "--config", str(cfg), "--json", "--warmup", "0", "--op-steps", "0", "--steps", str(steps)]
    for s in sets:
        args += ["--set", s]
    if ranks == 1:
        return json.loads(run_essence(args).stdout)
    cmd = [shutil.which("mpirun"), "--allow-run-as-root", "--oversubscribe", "-np", str(ranks), str(essence_bin()),
           *args, "--set", "run.threads=1"]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=ROOT,
                       env=dict(os.environ, OMPI_MCA_rmaps_base_oversubscribe="1", OMP_NUM_THREADS="1"))
    assert p.returncode == 0, p.stderr[-3000:]
    return json.loads(p.stdout)


def assert_agrees(pl, b):
    """Memory within 5% kind by kind and in total; FLOPs per step equal."""
    run = pl["run"]
    assert run["capacity"] == b["capacity"]
    got, want = run["memory"]["kinds"], b["mem_peak"]
    for k in KINDS:
        assert abs(got[k] - want[k]) <= 0.05 * want[k], (k, got[k], want[k])
    assert abs(run["memory"]["total"] - b["mem_peak_total"]) <= 0.05 * b["mem_peak_total"]
    # bench ran exactly the plan's epoch: its mean per step is the plan's, bit for bit
    assert run["flops_per_step"] == b["flops_per_step"], (run["flops_per_step"], b["flops_per_step"])


CASES = {
    "student, r = 1": ({}, []),
    "online teacher, seq r = 0.5, recompute mlp": (
        {"teacher": {"preset": TEACHER}}, ["trunc.lsp=0.5", "run.recompute=mlp"]),
    "online teacher, cot r = 0.25, recompute full, 2x capacity, 64-row chunks": (
        {"teacher": {"preset": TEACHER}, "batch": {"step_examples": 8, "capacity_factor": 2}},
        ["trunc.lsp=0.25", "trunc.mode=cot", "run.recompute=full", "loss.chunk_rows=64"]),
}


@pytest.mark.parametrize("name", list(CASES))
def test_plan_agrees_with_bench_on_the_cpu(tmp_path, corpus, name):
    sections, sets = CASES[name]
    cfg = run_config(tmp_path, corpus, tmp_path / "out", data={"val": []}, **sections)
    args = [a for s in sets for a in ("--set", s)]
    pl = plan(cfg, "--device", "cpu", *args)
    b = bench(cfg, pl["run"]["steps_per_epoch"], *sets)
    assert_agrees(pl, b)
    assert pl["run"]["memory"]["kinds"] == {k: float(v) for k, v in b["mem_peak"].items()}  # exactly, in fact
    parts = pl["run"]["flops_per_epoch"]
    total = parts["student_forward"] + parts["student_backward"] + parts["teacher_forward"]
    assert abs(total - parts["total"]) <= 1e-12 * parts["total"]
    assert (parts["teacher_forward"] > 0) == ("teacher" in sections)


@pytest.mark.skipif(shutil.which("mpirun") is None, reason="mpirun not installed")
def test_plan_agrees_with_bench_on_two_ranks_under_zero1(tmp_path, corpus):
    cfg = run_config(tmp_path, corpus, tmp_path / "out", data={"val": []}, run={"zero1": True},
                     teacher={"preset": TEACHER})
    pl = plan(cfg, "--device", "cpu", "--gpus", "2", "--set", "trunc.lsp=0.5")
    one = plan(cfg, "--device", "cpu", "--set", "trunc.lsp=0.5")
    # rank 0 keeps half of the moments (and of nothing else) under ZeRO-1
    mem, mem1 = pl["run"]["memory"], one["run"]["memory"]
    assert pl["zero1"] and abs(mem["moments"] - mem1["moments"] / 2) <= 64
    assert mem["gradients"] == mem1["gradients"] and mem["weights"] == mem1["weights"]
    b = bench(cfg, pl["run"]["steps_per_epoch"], "trunc.lsp=0.5", ranks=2)
    assert_agrees(pl, b)


def test_plan_agrees_with_train_peak_with_validation(tmp_path, corpus):
    """With validation shards the loss and index buffers take whole validation
    sequences and validation adds a forward-only view: the peak `essence
    train` records is the plan's total."""
    cfg = run_config(tmp_path, corpus, tmp_path / "out", teacher={"preset": TEACHER}, run={"steps": 2})
    pl = plan(cfg, "--device", "cpu", "--set", "trunc.lsp=0.5")
    run_essence(["train", "--config", cfg, "--set", "trunc.lsp=0.5"])
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    mem = pl["run"]["memory"]
    assert mem["validation"] > 0 and pl["run"]["max_tokens"] > pl["run"]["capacity"]
    assert summary["capacity"] == pl["run"]["capacity"]
    assert abs(mem["total"] - summary["peak_device_bytes"]) <= 0.05 * summary["peak_device_bytes"]
    assert mem["total"] == summary["peak_device_bytes"]  # exactly, in fact


def test_the_r1_column_is_the_plan_at_r1(tmp_path, corpus):
    cfg = run_config(tmp_path, corpus, tmp_path / "out", data={"val": []}, teacher={"preset": TEACHER})
    half = plan(cfg, "--device", "cpu", "--set", "trunc.lsp=0.5")
    full = plan(cfg, "--device", "cpu", "--set", "trunc.lsp=1")
    assert half["full"]["flops_per_epoch"] == full["run"]["flops_per_epoch"]
    assert half["full"]["memory"] == full["run"]["memory"]
    r, f = half["run"], half["full"]
    assert r["lsp"] == 0.5 and f["lsp"] == 1
    assert r["kept_tokens"] < 0.55 * f["kept_tokens"]
    assert r["flops_per_epoch"]["total"] < 0.55 * f["flops_per_epoch"]["total"]
    assert r["memory"]["activations"] < 0.6 * f["memory"]["activations"]
    assert r["memory"]["weights"] == f["memory"]["weights"]


def test_a_length_histogram_plans_as_its_shards(tmp_path, corpus):
    """The histogram of the corpus's own section lengths, one row per example
    in shard order, packs and costs exactly as the shards."""
    _, examples = shard_io.read(corpus / "train.bin")
    rows = [[1, e.cot_begin, e.cot_end - e.cot_begin, len(e.tokens) - e.cot_end] for e in examples]
    hist = tmp_path / "lengths.json"
    hist.write_text(json.dumps({"source": "the test corpus", "lengths": rows}))
    cfg = run_config(tmp_path, corpus, tmp_path / "out", data={"val": []}, teacher={"preset": TEACHER})
    for mode in ("seq", "cot"):
        sets = ["--set", "trunc.lsp=0.5", "--set", f"trunc.mode={mode}"]
        a = plan(cfg, "--device", "h100-80g", *sets)
        b = plan(cfg, "--device", "h100-80g", "--lengths", hist, *sets)
        assert b["examples"] == len(examples) and "the test corpus" in b["data"]
        assert a["run"] == b["run"] and a["full"] == b["full"]


def recorded_h200_bench(params):
    """essence's tensor-core bench line of the H200 run of 2026-11-30 for a student of `params`."""
    path = ROOT / "perf" / "gpu" / "results" / "bench-20261130-212106-NVIDIA_H200.jsonl.txt"
    lines = [json.loads(ln) for ln in path.read_text().splitlines() if ln.startswith("{")]
    return next(d for d in lines if d.get("device") == "cuda" and d["params"] == params)


@pytest.mark.parametrize("preset,params,mfu", [("qwen3-0.6b", 596049920, 0.224), ("qwen3-1.7b", 1720574976, 0.338)])
def test_plan_reproduces_the_cuda_tally_recorded_on_an_h200(corpus, preset, params, mfu):
    rec = recorded_h200_bench(params)
    # That run predates the chunk sized from a logits budget: it ran 256 rows a chunk.
    pl = plan(ROOT / "perf" / "gpu" / f"{preset}.json", "--device", "h200", "--set",
              f"data.train={corpus / 'train.bin'}", "--set", "data.val=[]", "--set",
              f"loss.chunk_rows={rec.get('chunk_rows', 256)}")
    assert pl["student"]["params"] == params and pl["run"]["capacity"] == rec["capacity"]
    got = pl["run"]["memory"]["kinds"]
    # Since that run the q/k/v and gate/up matmuls are fused (bf16, 2 bytes):
    # each layer keeps qk-norm's input as the fused q|k|v rows, where it kept q
    # and k alone (v's rows once more), and the model's workspace is laid out
    # for the fused gradients (engine/model.c's work_size) instead of 4
    # scratch buffers of the widest of C, F, H D.
    m = json.loads((ROOT / "configs" / "models" / f"{preset}.json").read_text())
    N, C, F, D = rec["capacity"], m["hidden_size"], m["intermediate_size"], m["head_dim"]
    H, KVH, W = m["num_attention_heads"], m["num_key_value_heads"], (m["num_attention_heads"] + 2 * m["num_key_value_heads"]) * D
    acts = m["num_hidden_layers"] * N * KVH * D * 2
    work = 2 * N * (max(2 * max(W, C), 2 * F + max(F, C)) - 4 * max(C, F, H * D))
    want = dict(rec["mem_peak"], activations=rec["mem_peak"]["activations"] + acts,
                workspace=rec["mem_peak"]["workspace"] + work)
    for k in KINDS:
        assert abs(got[k] - want[k]) <= 0.01 * want[k], (k, got[k], want[k])
    want_total = rec["mem_peak_total"] + acts + work
    assert abs(pl["run"]["memory"]["total"] - want_total) <= 0.001 * want_total
    # the MFU on record for that card and student size is the default
    assert pl["mfu"] == mfu and "measured on h200" in pl["mfu_source"]
    other = plan(ROOT / "perf" / "gpu" / f"{preset}.json", "--device", "h100-80g", "--set",
                 f"data.train={corpus / 'train.bin'}", "--set", "data.val=[]", "--set",
                 f"loss.chunk_rows={rec.get('chunk_rows', 256)}")
    assert other["mfu"] == 0.4 and "assumed" in other["mfu_source"]
    assert other["run"]["memory"]["kinds"] == got  # the same CUDA layout on another card


def test_text_output_has_both_columns(tmp_path, corpus):
    cfg = run_config(tmp_path, corpus, tmp_path / "out", data={"val": []}, teacher={"preset": TEACHER})
    out = run_essence(["plan", "--config", cfg, "--set", "trunc.lsp=0.5", "--device", "a100-40g"]).stdout
    for want in ("r = 0.5", "r = 1", "teacher weights", "activations, recompute none *", "fits a100-40g",
                 "largest capacity that fits", "teacher forward", "time per epoch at 40.0% MFU"):
        assert want in out, want


def one_line_error(args, code, *words):
    p = run_essence(["plan", *map(str, args)], check=False)
    assert p.returncode == code, (p.returncode, p.stderr)
    assert p.stdout == "" and len(p.stderr.strip().splitlines()) == 1, p.stderr
    for w in words:
        assert w in p.stderr, (w, p.stderr)


def test_bad_input_gets_one_line(tmp_path, corpus):
    cfg = run_config(tmp_path, corpus, tmp_path / "out", data={"val": []})
    one_line_error(["--config", cfg, "--device", "h800"], 2, "unknown device 'h800'", "h100-80g", "a100-40g")
    one_line_error(["--config", cfg, "--device", "cpu", "--gpus", "0"], 2, "--gpus")
    one_line_error(["--config", cfg, "--device", "cpu", "--mfu", "1.5"], 2, "--mfu")
    one_line_error(["--config", cfg, "--set", "run.device=cuda"], 2, "--device")
    one_line_error(["--config", cfg, "--device", "cpu", "--lengths", tmp_path / "none.json"], 1, "none.json")
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"source": "x", "lengths": [[1, 5, 10, 2], [2, 5, -1, 2]]}))
    one_line_error(["--config", cfg, "--device", "cpu", "--lengths", bad], 1, "bad.json", "row 1", "cot")
    bad.write_text(json.dumps({"lengths": [[1, 5, 10, 2]]}))
    one_line_error(["--config", cfg, "--device", "cpu", "--lengths", bad], 1, "bad.json", "source")
    paper = ROOT / "perf" / "configs" / "paper-scale.json"
    one_line_error(["--config", paper, "--device", "h100-80g"], 1, "no length source", "--lengths")
    # the 8B -> 4B pair on one 40 GB card: its state alone is larger than the card
    hist = tmp_path / "lengths.json"
    hist.write_text(json.dumps({"source": "a few long traces", "lengths": [[64, 100, 3500, 300]]}))
    one_line_error(["--config", paper, "--device", "a100-40g", "--lengths", hist], 1,
                   "does not fit a100-40g at any capacity", "GiB")
