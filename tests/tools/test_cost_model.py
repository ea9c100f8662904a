"""perf/cost_model.py: the per-op cost model and its reading of essence bench's JSON."""
import importlib.util
import sys
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
spec = importlib.util.spec_from_file_location("cost_model", ROOT / "perf" / "cost_model.py")
cm = importlib.util.module_from_spec(spec)
spec.loader.exec_module(cm)
BENCH = ROOT / "perf/gpu/results/bench-20261130-212106-NVIDIA_H200.jsonl.txt"


def shape(name):
    return cm.Shape(str(ROOT / "configs/models" / name))


def test_params_match_the_engine():
    # the counts essence bench printed for these configs on the GPU
    assert shape("qwen3-0.6b.json").params() == 596049920
    assert shape("qwen3-1.7b.json").params() == 1720574976


def test_matmul_flops_are_the_engines():
    s, N, docs = shape("qwen3-1.7b.json"), 8192, 22
    m = cm.Model(790, 3)
    cm.step(m, s, N, docs, N, 256)
    # forward + backward matmuls (3x forward) and attention (1x + 2.5x) together
    # against engine/flops.c's model count, which takes 2x for attention's backward
    att = m.ops["attention_fwd"][0]
    total = sum(e[0] for e in m.ops.values())
    assert abs(total - 0.5 * att - cm.model_flops(s, N, docs, N)) < 1e-6 * total


def test_floor_is_the_larger_time_per_call():
    m = cm.Model(1, 1)  # 1e12 FLOP/s, 1e12 B/s
    m.call("add", 2e12, 1e12)
    m.call("add", 1e12, 3e12)
    assert m.ops["add"][2] == 2 + 3 and m.ops["add"][3] == 2


def test_lm_head_chunks_of_256_are_memory_bound_at_1_7b():
    s = shape("qwen3-1.7b.json")
    small, big = cm.Model(790, 3), cm.Model(790, 3)
    cm.step(small, s, 8192, 22, 8192, 256)
    cm.step(big, s, 8192, 22, 8192, 2048)
    fl, nb, _, _ = small.head["matmul_bwd"]
    assert nb / small.bw > fl / small.rate
    fl, nb, _, _ = big.head["matmul_bwd"]
    assert nb / big.bw < fl / big.rate
    assert big.ops["matmul_bwd"][2] < small.ops["matmul_bwd"][2]


def test_compare_reads_the_recorded_h200_run(capsys):
    entries = list(cm.bench_entries(str(BENCH)))
    assert [label for label, _ in entries] == ["es-0.6B.json", "es-1.7B.json", "es-simple-0.6B.json",
                                                "es-simple-1.7B.json"]
    n, printed = cm.op_tokens(entries[1][1], shape("qwen3-1.7b.json"), 8151 / 8172)
    assert not printed and 4100 < n < 4300  # half the timed steps' batch
    argv, sys.argv = sys.argv, ["cost_model.py", "--compare", str(BENCH)]
    try:
        cm.main()
    finally:
        sys.argv = argv
    out = capsys.readouterr().out
    assert out.count("largest gaps:") == 4 and "rmsnorm_bwd" in out


def test_entries_of_other_engines_are_passed_over(tmp_path):
    f = tmp_path / "b.jsonl"
    f.write_text("== hf.json\n" + json.dumps({"engine": "transformers", "ops": {}}) + "\n")
    assert list(cm.bench_entries(str(f))) == []


def test_op_list_is_the_op_timers():
    # bench prints the op timer's ops in engine/op_timer.h's order: OPS is a
    # part of that list, in that order, and holds every op a modelled step issues
    import re
    text = (ROOT / "engine" / "op_timer.h").read_text()
    body = text[text.index("#define ES_OP_TIMER_OPS"):text.index("#define ES_OP_TIMER_ENUM")]
    timer = re.findall(r"X\((\w+)\)", body)
    assert [op for op in timer if op in cm.OPS] == cm.OPS
    for name in ("qwen3-0.6b.json", "qwen3-1.7b.json"):
        m = cm.Model(790, 3)
        cm.step(m, shape(name), 4096, 11, 4096, 256)
        assert set(m.ops) <= set(cm.OPS) and m.ops["qkv_fwd"][3] == shape(name).L
