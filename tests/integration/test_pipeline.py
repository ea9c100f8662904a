"""The distillation pipeline end to end: a teacher trained by essence, an
online-teacher student, an offline (top-k) teacher student, and evaluation
of a trained student."""
import json
from pathlib import Path

import pytest

from train_env import run_config, run_essence


@pytest.fixture(scope="module")
def teacher(tmp_path_factory, corpus):
    """A tiny teacher trained for a few steps; its final Hugging Face directory."""
    tmp = tmp_path_factory.mktemp("teacher")
    out = tmp / "out"
    cfg = run_config(tmp, corpus, out, student={"hidden_size": 96, "num_hidden_layers": 3},
                     run={"steps": 6})
    run_essence(["train", "--config", cfg, "--fresh"])
    final = out / "final"
    assert (final / "config.json").exists() and (final / "tokenizer.json").exists()
    return final


def _summary(out):
    return json.loads((Path(out) / "summary.json").read_text())


def _train_metrics(out):
    rows = [json.loads(l) for l in (Path(out) / "metrics.jsonl").read_text().splitlines()]
    return [m for m in rows if m["kind"] == "train"]


def test_online_teacher_distillation(tmp_path, corpus, teacher):
    out = tmp_path / "out"
    cfg = run_config(tmp_path, corpus, out, teacher={"path": str(teacher)}, loss={"alpha": 0.5},
                     trunc={"lsp": 0.5}, run={"steps": 4})
    p = run_essence(["train", "--config", cfg, "--fresh"])
    assert "teacher: qwen3" in p.stdout
    m = _train_metrics(out)
    assert all(r["kd"] > 0 for r in m), m  # the KD term is live
    assert all(abs(r["loss"] - (0.5 * r["ce"] + 0.5 * r["kd"])) < 1e-4 * r["loss"] for r in m)


def test_teacher_with_another_vocabulary_is_refused(tmp_path, corpus, teacher):
    other = tmp_path / "teacher"
    other.mkdir()
    cfg_t = json.loads((teacher / "config.json").read_text())
    cfg_t["vocab_size"] += 64
    (other / "config.json").write_text(json.dumps(cfg_t))
    (other / "model.safetensors").write_bytes((teacher / "model.safetensors").read_bytes())
    cfg = run_config(tmp_path, corpus, tmp_path / "out", teacher={"path": str(other)})
    p = run_essence(["train", "--config", cfg, "--fresh"], check=False)
    assert p.returncode != 0 and "teacher" in p.stderr, p.stderr


def test_offline_topk_teacher(tmp_path, corpus, teacher):
    shard = tmp_path / "train-top8.bin"
    run_essence(["teacher", "--model", teacher, "--k", "8", "--out", shard, "--device", "cpu", "--quiet",
                 corpus / "train.bin"])
    chk = run_essence(["data", "check", shard]).stdout
    assert "top-k" in chk and "8" in chk, chk
    out = tmp_path / "out"
    cfg = run_config(tmp_path, corpus, out, data={"train": [str(shard)]}, loss={"alpha": 0.5},
                     run={"steps": 3})
    run_essence(["train", "--config", cfg, "--fresh"])
    m = _train_metrics(out)
    assert all(r["kd"] > 0 for r in m), m  # the stored top-k feed the KD term


def test_eval_of_a_trained_student(tmp_path, corpus, teacher):
    out = tmp_path / "eval.jsonl"
    p = run_essence(["eval", "--model", teacher, "--tokenizer", teacher, "--data", corpus / "test.jsonl",
                     "--out", out, "--limit", "3", "--n", "2", "--max-new", "24", "--temperature", "0.7",
                     "--device", "cpu"])
    rows = [json.loads(l) for l in out.read_text().splitlines()]
    assert len(rows) == 6 and {r["sample"] for r in rows} == {0, 1}
    assert all(0 < r["tokens"] <= 24 and "correct" in r and "extracted" in r for r in rows)
    summary = json.loads(out.with_suffix(".summary.json").read_text())
    assert summary["problems"] == 3 and summary["samples"] == 6
    assert 0 <= summary["pass@1"] <= 1 and 0 <= summary["majority"] <= 1
