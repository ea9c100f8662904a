"""perf/paper_scale.py (issue 18): its length histogram has the quantiles it
states, and its quick table says whether the paper's claim holds in the
terms of its own cells."""
import csv
import subprocess
import sys

from train_env import ROOT, essence_bin

sys.path.insert(0, str(ROOT / "perf"))
import paper_scale  # noqa: E402


def expanded(hist, field):
    """Every example's value of `field`, sorted."""
    k = {"prompt": 1, "cot": 2, "answer": 3}
    out = []
    for row in hist["lengths"]:
        v = sum(row[1:]) if field == "total" else row[k[field]]
        out += [v] * row[0]
    return sorted(out)


def test_histogram_has_the_stated_quantiles():
    hist = paper_scale.histogram(paper_scale.EXAMPLES, 1000)
    assert sum(r[0] for r in hist["lengths"]) == 113957 and "assumed" in hist["source"]
    total = expanded(hist, "total")
    for u, want in paper_scale.QUANTILES["total"][1:-1]:
        assert abs(total[int(u * len(total))] - want) <= 0.01 * want, (u, want)
    assert max(total) <= 4096
    for r in hist["lengths"]:  # prompt and answer at most a quarter each: the CoT dominates
        assert 4 * r[1] <= sum(r[1:]) and 4 * r[3] <= sum(r[1:]) and r[2] * 2 >= sum(r[1:])
    # the prompt's median is the stated one (the quarter cap only bites on the shortest traces)
    prompt = expanded(hist, "prompt")
    assert abs(prompt[len(prompt) // 2] - 120) <= 6


def test_quick_table_reads_the_claim_off_its_cells(tmp_path):
    p = subprocess.run([sys.executable, str(ROOT / "perf" / "paper_scale.py"), "--quick", "--essence",
                        str(essence_bin()), "--out-dir", str(tmp_path)], capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-2000:]
    rows = list(csv.DictReader(open(tmp_path / "paper-scale.csv")))
    assert len(rows) == 2 * len(paper_scale.SETUPS)
    cell = {(r["r"], r["device"], r["gpus"], r["zero1"]): r for r in rows}
    for r in rows:  # a cell that fits at no capacity has a state at least as large as what is usable
        if r["any_capacity"] == "False":
            assert float(r["total_gib"]) > float(r["usable_gib"])
    half40 = any(cell[("0.5", "a100-40g", g, z)]["fits"] == "True" for g, z in (("1", "False"), ("4", "False"),
                                                                                  ("4", "True")))
    a, b = cell[("0.5", "h100-80g", "4", "True")], cell[("1.0", "h100-80g", "4", "True")]
    assert 0.4 < float(a["flops"]) / float(b["flops"]) < 0.55
    assert 0.45 < float(a["acts_gib"]) / float(b["acts_gib"]) < 0.55
    md = (tmp_path / "paper-scale.md").read_text()
    assert f"Fits a 40 GB GPU at r = 0.5: {'yes' if half40 else 'no'}" in md
    holds = "So the claim holds here" in md
    assert holds != ("So the claim does not hold here" in md)
    assert not holds or half40
    assert "assumed (not measured)" in md
