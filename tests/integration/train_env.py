"""Shared set-up of the integration tests: the built binary and a small
synthetic corpus with its tokenizer and shards, made once per session."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
TOOLS = ROOT / "tools"


def essence_bin():
    path = Path(os.environ.get("ESSENCE_BIN", ROOT / "build" / "essence"))
    if not path.exists():
        pytest.fail(f"{path} is missing: build first (meson setup build && ninja -C build)")
    return path


def run_essence(args, timeout=300, check=True, env=None):
    """Runs `essence ARGS`, returns the CompletedProcess (text output)."""
    full_env = dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "2"))
    if env:
        full_env.update(env)
    p = subprocess.run([str(essence_bin())] + [str(a) for a in args], capture_output=True, text=True,
                       timeout=timeout, env=full_env, cwd=ROOT)
    if check and p.returncode != 0:
        raise AssertionError(f"essence {' '.join(map(str, args))} exited {p.returncode}:\n{p.stderr[-3000:]}")
    return p


@pytest.fixture(scope="session")
def corpus(tmp_path_factory):
    """A small corpus: tokenizer dir, train and val shards."""
    d = tmp_path_factory.mktemp("corpus")
    py = sys.executable
    subprocess.run([py, TOOLS / "synth_corpus.py", "--out", d, "--seed", "3", "--train", "64", "--val", "16",
                    "--test", "8"], check=True, capture_output=True)
    subprocess.run([py, TOOLS / "train_tokenizer.py", "--out", d / "model", d / "train.jsonl"], check=True,
                   capture_output=True)
    for split in ("train", "val"):
        subprocess.run([py, TOOLS / "prep_data.py", "--model", d / "model", "--max-len", "700", "--out",
                        d / f"{split}.bin", d / f"{split}.jsonl"], check=True, capture_output=True)
    return d


def tiny_student(path, **over):
    """Writes a tiny random-init qwen3 config.json and returns its path."""
    cfg = json.loads((ROOT / "configs" / "models" / "qwen3-student-tiny.json").read_text())
    cfg.update({"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
                "num_key_value_heads": 2, "head_dim": 16})
    cfg.update(over)
    path.write_text(json.dumps(cfg))
    return path


def run_config(tmp, corpus, out, student=None, **sections):
    """Writes a run config for the tiny student (config.json overrides in
    `student`) on the corpus and returns its path."""
    cfg = {
        "student": {"preset": str(tiny_student(tmp / "student.json", **(student or {})))},
        "tokenizer": str(corpus / "model"),
        "data": {"train": [str(corpus / "train.bin")], "val": [str(corpus / "val.bin")]},
        "optim": {"lr": 3e-3, "schedule": "cosine", "warmup": 0.1},
        "batch": {"step_examples": 8},
        "run": {"device": "cpu", "out": str(out), "steps": 8, "threads": 2},
    }
    for k, v in sections.items():
        cfg.setdefault(k, {}).update(v) if isinstance(v, dict) else cfg.__setitem__(k, v)
    path = tmp / "run.json"
    path.write_text(json.dumps(cfg))
    return path
