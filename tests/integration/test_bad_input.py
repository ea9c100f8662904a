"""Bad input to every command: a corrupt shard, a wrong tokenizer, a missing
tensor, a bad flag. Each gives one line on stderr naming the file, key or
flag and the problem, a non-zero exit (not a signal), and nothing written
where the output was to go."""
import json
import os
import shutil
import socket
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from train_env import ROOT, TOOLS, essence_bin, run_config, run_essence

NOT_A_DIR = "/etc/hostname"  # a regular file: a path under it cannot be created, even by root


def refused(p, *names, prog="essence"):
    """p failed cleanly: exit code > 0, one stderr line from prog naming each of names."""
    lines = p.stderr.strip().splitlines()
    assert p.returncode > 0, f"exit {p.returncode}, stderr:\n{p.stderr}"
    assert len(lines) == 1, f"expected one line on stderr, got:\n{p.stderr}"
    assert lines[0].startswith(prog), lines[0]
    for n in names:
        assert str(n) in lines[0], f"{n!r} not named in: {lines[0]}"
    return lines[0]


def essence(*args):
    return run_essence(list(args), timeout=120, check=False)


def tool(name, *args):
    return subprocess.run([sys.executable, str(TOOLS / f"{name}.py")] + [str(a) for a in args],
                          capture_output=True, text=True, timeout=120, cwd=ROOT)


@pytest.fixture(scope="module")
def model(tmp_path_factory, corpus):
    """A tiny student trained one step: a Hugging Face directory with the corpus' tokenizer."""
    tmp = tmp_path_factory.mktemp("model")
    cfg = run_config(tmp, corpus, tmp / "out", data={"val": []}, run={"steps": 1})
    run_essence(["train", "--config", cfg, "--fresh"])
    return tmp / "out" / "final"


@pytest.fixture
def bad(tmp_path, corpus, model):
    """Broken inputs of every kind, and an empty folder `w` for outputs."""
    d = tmp_path
    (d / "w").mkdir()
    (d / "dir").mkdir()
    (d / "empty").write_bytes(b"")
    shard = (corpus / "train.bin").read_bytes()
    (d / "trunc.bin").write_bytes(shard[: len(shard) // 2])
    (d / "prompts.jsonl").write_text('{"id": 0, "prompt_ids": [1, 2, 3]}\n')
    (d / "prompts_bad.jsonl").write_text('{"id": 0, "prompt_ids": [1, 2, 3]}\n{"id": 1, "prompt_ids": [1,\n')
    (d / "problems_bad.jsonl").write_text('{"prompt": "What is 1+1?", "answer": "2"}\n{"prompt": 3}\n')
    (d / "array.json").write_text("[1, 2]\n")
    (d / "prompts_two.jsonl").write_text('{"id": 0, "prompt_ids": [1]}{"id": 1, "prompt_ids": [2]}\n')
    # model directories with one thing wrong each
    for name in ("no_weights", "bad_config", "cut_weights"):
        shutil.copytree(model, d / name)
    (d / "no_weights" / "model.safetensors").unlink()
    (d / "bad_config" / "config.json").write_text('{"model_type": ')
    w = (model / "model.safetensors").read_bytes()
    (d / "cut_weights" / "model.safetensors").write_bytes(w[: len(w) // 3])
    # another tokenizer: one ordinary token renamed, so the fingerprint differs
    (d / "tok").mkdir()
    tok = json.loads((corpus / "model" / "tokenizer.json").read_text())
    vocab = tok["model"]["vocab"]
    last = max(vocab, key=vocab.get)
    vocab[last + "x"] = vocab.pop(last)
    (d / "tok" / "tokenizer.json").write_text(json.dumps(tok))
    return d


def assert_empty(folder):
    left = sorted(p.name for p in Path(folder).iterdir())
    assert not left, f"left behind in {folder}: {left}"


# ---- flags --------------------------------------------------------------------

COMMANDS = [["train"], ["bench"], ["data", "check"], ["data", "stats"], ["teacher"], ["generate"], ["eval"],
            ["version"]]


@pytest.mark.parametrize("cmd", COMMANDS, ids=" ".join)
def test_unknown_flag(cmd):
    refused(essence(*cmd, "--bogus"), "--bogus")


@pytest.mark.parametrize("cmd,named", [(["train"], "--config"), (["bench"], "--config"), (["teacher"], "--model"),
                                       (["generate"], "--model"), (["eval"], "--model"),
                                       (["data", "check"], "SHARD"), (["data", "stats"], "SHARD")], ids=str)
def test_missing_required_flag(cmd, named):
    refused(essence(*cmd), named)


@pytest.mark.parametrize("args,flag", [
    (["train", "--config"], "--config"), (["train", "--config", "{run}", "--stop-at"], "--stop-at"),
    (["bench", "--config", "{run}", "--steps"], "--steps"), (["data", "stats", "--lsp"], "--lsp"),
    (["data", "check", "--model"], "--model"), (["teacher", "--model", "{model}", "--k"], "--k"),
    (["generate", "--in", "{prompts}", "--model"], "--model"), (["eval", "--model", "{model}", "--n"], "--n"),
], ids=lambda a: " ".join(a) if isinstance(a, list) else a)
def test_flag_without_value(bad, corpus, model, args, flag):
    run = run_config(bad, corpus, bad / "w" / "run")
    sub = {"{run}": run, "{model}": model, "{prompts}": bad / "prompts.jsonl"}
    refused(essence(*[sub.get(a, a) for a in args]), flag)
    assert_empty(bad / "w")


GEN = ["generate", "--model", "{model}", "--in", "{prompts}", "--out", "{out}"]
EVAL = ["eval", "--model", "{model}", "--tokenizer", "{model}", "--data", "{problems}", "--out", "{out}"]
TEACHER = ["teacher", "--model", "{model}", "--out", "{out}", "{shard}"]


@pytest.mark.parametrize("args,flag", [
    (GEN + ["--n", "0"], "--n"), (GEN + ["--n", "two"], "--n"), (GEN + ["--max-new", "-1"], "--max-new"),
    (GEN + ["--top-p", "1.5"], "--top-p"), (GEN + ["--temperature", "-1"], "--temperature"),
    (GEN + ["--batch", "0"], "--batch"), (GEN + ["--seed", "x"], "--seed"), (GEN + ["--stop", "-3"], "--stop"),
    (GEN + ["--weights", "fp16"], "--weights"),
    (EVAL + ["--n", "0"], "--n"), (EVAL + ["--max-new", "-1"], "--max-new"), (EVAL + ["--top-p", "1.5"], "--top-p"),
    (EVAL + ["--temperature", "-1"], "--temperature"), (EVAL + ["--limit", "-2"], "--limit"),
    (TEACHER + ["--k", "0"], "--k"), (TEACHER + ["--k", "abc"], "--k"),
    (TEACHER + ["--k", "4", "--batch-tokens", "-1"], "--batch-tokens"),
    (["bench", "--config", "{run}", "--steps", "0"], "--steps"),
    (["bench", "--config", "{run}", "--warmup", "x"], "--warmup"),
    (["train", "--config", "{run}", "--stop-at", "0"], "--stop-at"),
    (["data", "stats", "--lsp", "half", "{shard}"], "--lsp"),
    (["data", "stats", "--capacity", "-64", "{shard}"], "--capacity"),
    (["data", "stats", "--lsp", "0", "{shard}"], "lead-span proportion"),
], ids=lambda a: " ".join(a[-2:]) if isinstance(a, list) else a)
def test_bad_number(bad, corpus, model, args, flag):
    run = run_config(bad, corpus, bad / "w" / "run")
    sub = {"{run}": run, "{model}": model, "{prompts}": bad / "prompts.jsonl", "{out}": bad / "w" / "out",
           "{problems}": corpus / "test.jsonl", "{shard}": corpus / "train.bin"}
    refused(essence(*[sub.get(a, a) for a in args]), flag)
    assert_empty(bad / "w")


# ---- run configs --------------------------------------------------------------

def test_run_config_mistakes(bad, corpus):
    run = run_config(bad, corpus, bad / "w" / "run")
    for cmd in (["train"], ["bench"], ["data", "stats"]):
        refused(essence(*cmd, "--config", bad / "array.json"), "array.json", "not a JSON object")
        refused(essence(*cmd, "--config", bad / "nope.json"), "nope.json")
        refused(essence(*cmd, "--config", bad / "dir"), "dir", "not a regular file")
        refused(essence(*cmd, "--config", bad / "empty"), "empty")
        refused(essence(*cmd, "--config", run, "--set", "run.steps"), "run.steps", "key=value")
    refused(essence("train", "--config", run, "--set", "student.preset=" + str(bad / "dir")), "dir")
    refused(essence("train", "--config", run, "--set", "run.out=" + NOT_A_DIR + "/run"), NOT_A_DIR)
    line = refused(essence("train", "--config", run, "--set", "supervise=1,2"), "'supervise'", "'1,2'")
    assert line.count("supervise") == 2, line  # the key, then the value's own message, each once
    assert_empty(bad / "w")


def test_two_trainers_on_one_run_folder(bad, corpus):
    """The second trainer on a run.out is refused, naming the first one's PID and host."""
    out = bad / "w" / "run"
    run = run_config(bad, corpus, out, data={"val": []}, run={"steps": 100000})
    first = subprocess.Popen([str(essence_bin()), "train", "--config", str(run), "--fresh"],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        t0 = time.time()
        while not (out / "metrics.jsonl").exists() or not (out / "metrics.jsonl").read_text():
            assert first.poll() is None and time.time() - t0 < 120, "the first run did not start training"
            time.sleep(0.05)
        other = run_config(bad, corpus, out, data={"val": []}, trunc={"lsp": 0.5}, run={"steps": 1})
        for extra in ([], ["--fresh"]):
            refused(essence("train", "--config", other, *extra), out, f"pid {first.pid}", socket.gethostname())
        assert first.poll() is None
    finally:
        first.kill()
        first.wait()
    p = essence("train", "--config", other, "--fresh")  # a dead holder's lock is gone with it
    assert p.returncode == 0, p.stderr


@pytest.mark.skipif(Path("/dev/nvidia0").exists(), reason="a GPU is present")
def test_cuda_without_a_gpu(bad, corpus, model):
    run = run_config(bad, corpus, bad / "w" / "run")
    refused(essence("train", "--config", run, "--set", "run.device=cuda"), "cuda")
    refused(essence("bench", "--config", run, "--set", "run.device=cuda"), "cuda")
    out = bad / "w" / "out"
    refused(essence("generate", "--model", model, "--in", bad / "prompts.jsonl", "--out", out, "--device", "cuda"),
            "cuda")
    refused(essence("teacher", "--model", model, "--k", "4", "--out", out, "--device", "cuda", corpus / "train.bin"),
            "cuda")
    assert_empty(bad / "w")


# ---- shards and tokenizers ----------------------------------------------------

@pytest.mark.parametrize("name", ["nope.bin", "dir", "empty", "trunc.bin"])
def test_bad_shard(bad, corpus, model, name):
    shard = bad / name
    refused(essence("data", "check", shard), shard)
    refused(essence("data", "check", corpus / "train.bin", shard), shard)  # the good one is not blamed
    refused(essence("data", "stats", shard), shard)
    run = run_config(bad, corpus, bad / "w" / "run")
    refused(essence("data", "stats", "--config", run, "--set", f"data.train={shard}"), shard)
    refused(essence("train", "--config", run, "--set", f"data.train={shard}"), shard)
    refused(essence("train", "--config", run, "--set", f"data.val={shard}"), shard)
    refused(essence("teacher", "--model", model, "--k", "4", "--out", bad / "w" / "t.bin", shard), shard)
    assert_empty(bad / "w")


def test_shard_of_another_tokenizer(bad, corpus):
    shard = corpus / "train.bin"
    refused(essence("data", "check", "--model", bad / "tok", shard), shard, "fingerprint")
    refused(essence("data", "check", "--model", ROOT / "tests" / "data" / "tiny_model", shard), shard)
    refused(essence("data", "check", "--model", bad / "dir", shard), "dir/tokenizer.json")
    run = run_config(bad, corpus, bad / "w" / "run", tokenizer=str(bad / "tok"))
    refused(essence("train", "--config", run), shard, "fingerprint")
    assert_empty(bad / "w")


# ---- model directories --------------------------------------------------------

@pytest.mark.parametrize("name,named", [("no_weights", "model.safetensors"), ("bad_config", "config.json"),
                                        ("cut_weights", "model.safetensors"), ("dir", "config.json"),
                                        ("empty", "empty")])
def test_bad_model_dir(bad, corpus, name, named):
    m, out = bad / name, bad / "w" / "out"
    refused(essence("generate", "--model", m, "--in", bad / "prompts.jsonl", "--out", out, "--device", "cpu"),
            name, named)
    refused(essence("teacher", "--model", m, "--k", "4", "--out", out, "--device", "cpu", corpus / "train.bin"),
            name, named)
    run = run_config(bad, corpus, bad / "w" / "run", student={})
    cfg = json.loads(run.read_text())
    cfg["student"] = {"path": str(m)}
    run.write_text(json.dumps(cfg))
    refused(essence("train", "--config", run), name, named)
    run = run_config(bad, corpus, bad / "w" / "run", teacher={"path": str(m)})
    refused(essence("train", "--config", run), name, named)
    assert_empty(bad / "w")


def scaled_model(src, dst, tensor, value):
    """A copy of model directory src with every element of one tensor (or of all, tensor None) set or scaled."""
    import numpy as np
    from safetensors.numpy import load_file, save_file
    shutil.copytree(src, dst)
    w = load_file(str(src / "model.safetensors"))
    for name in w:
        if tensor is None:
            w[name] = (w[name] * value).astype(w[name].dtype)
        elif name == tensor:
            w[name] = np.full_like(w[name], value)
    save_file(w, str(dst / "model.safetensors"))
    return dst


@pytest.mark.parametrize("value", [float("nan"), float("inf")], ids=["nan", "inf"])
def test_non_finite_weights(bad, corpus, model, value):
    m = scaled_model(model, bad / "m", "model.norm.weight", value)
    out = bad / "w" / "out"
    refused(essence("generate", "--model", m, "--in", bad / "prompts.jsonl", "--out", out, "--device", "cpu"),
            "model.safetensors", "model.norm.weight", "non-finite")
    run = run_config(bad, corpus, bad / "w" / "run", student={})
    cfg = json.loads(run.read_text())
    cfg["student"] = {"path": str(m)}
    run.write_text(json.dumps(cfg))
    refused(essence("train", "--config", run), "model.norm.weight", "non-finite")
    run = run_config(bad, corpus, bad / "w" / "run", teacher={"path": str(m)})
    refused(essence("train", "--config", run), "model.norm.weight", "non-finite")
    assert_empty(bad / "w")


def test_run_without_a_successful_step(bad, corpus, model):
    """A teacher whose logits overflow makes every step non-finite: no final/, no exit 0."""
    teacher = scaled_model(model, bad / "t", None, 1e30)
    out = bad / "w" / "run"
    run = run_config(bad, corpus, out, teacher={"path": str(teacher)}, run={"steps": 2})
    p = essence("train", "--config", run, "--fresh")
    assert p.returncode == 1, p.stderr
    assert "none updated the weights" in p.stderr.strip().splitlines()[-1], p.stderr
    assert not (out / "final").exists()


# ---- outputs ------------------------------------------------------------------

def test_output_that_cannot_be_written(bad, corpus, model):
    for out in (Path(NOT_A_DIR) / "x", bad / "dir"):
        refused(essence("generate", "--model", model, "--in", bad / "prompts.jsonl", "--out", out, "--max-new", "2",
                        "--device", "cpu"), out)
        refused(essence("teacher", "--model", model, "--k", "4", "--out", out, "--device", "cpu", corpus / "train.bin"),
                out)
        refused(essence("eval", "--model", model, "--tokenizer", model, "--data", corpus / "test.jsonl", "--out", out,
                        "--limit", "1", "--max-new", "2", "--device", "cpu"), NOT_A_DIR if out.parent == Path(NOT_A_DIR)
                else out, prog="essence eval")
    assert_empty(bad / "dir")


WRITERS = {
    "generate": lambda m, c, out: essence("generate", "--model", m, "--in", c["prompts"], "--out", out, "--max-new",
                                           "2", "--device", "cpu"),
    "teacher": lambda m, c, out: essence("teacher", "--model", m, "--k", "4", "--out", out, "--device", "cpu",
                                         c["corpus"] / "val.bin"),
    "eval": lambda m, c, out: essence("eval", "--model", m, "--tokenizer", m, "--data", c["corpus"] / "test.jsonl",
                                      "--out", out, "--limit", "1", "--max-new", "2", "--device", "cpu"),
    "prep_data": lambda m, c, out: tool("prep_data", "--model", c["corpus"] / "model", "--out", out,
                                        c["corpus"] / "val.jsonl"),
    "plot_metrics": lambda m, c, out: tool("plot_metrics", "--out", out, m.parent),
}


@pytest.mark.parametrize("writer", sorted(WRITERS))
def test_output_to_a_fifo(bad, corpus, model, writer):
    """A FIFO (like /dev/null, not a regular file) is written through, never renamed over."""
    fifo = bad / "w" / "fifo"
    os.mkfifo(fifo)
    reader = subprocess.Popen(["cat", str(fifo)], stdout=subprocess.PIPE)
    p = WRITERS[writer](model, {"prompts": bad / "prompts.jsonl", "corpus": corpus}, fifo)
    try:
        got, _ = reader.communicate(timeout=20)
    except subprocess.TimeoutExpired:  # the FIFO was replaced: nobody writes to the one cat opened
        reader.kill()
        got, _ = reader.communicate()
    assert p.returncode == 0, p.stderr
    assert stat.S_ISFIFO(os.stat(fifo).st_mode), "the FIFO was replaced"
    assert got, "nothing came through the FIFO"
    assert sorted(q.name for q in (bad / "w").iterdir()) == ["fifo"]


def test_output_to_stdout(bad, model):
    p = essence("generate", "--model", model, "--in", bad / "prompts.jsonl", "--out", "-", "--max-new", "2",
                "--device", "cpu")
    assert p.returncode == 0, p.stderr
    assert [json.loads(l)["id"] for l in p.stdout.splitlines()] == [0]
    assert not (ROOT / "-").exists()


def test_failed_generation_keeps_the_old_output(bad, model):
    out = bad / "w" / "samples.jsonl"
    out.write_text("old\n")
    p = essence("generate", "--model", bad / "cut_weights", "--in", bad / "prompts.jsonl", "--out", out,
                "--device", "cpu")
    refused(p, "model.safetensors")
    assert out.read_text() == "old\n"
    assert sorted(q.name for q in (bad / "w").iterdir()) == ["samples.jsonl"]
    essence("generate", "--model", model, "--in", bad / "prompts.jsonl", "--out", out, "--max-new", "3",
            "--device", "cpu")
    rows = [json.loads(l) for l in out.read_text().splitlines()]
    assert len(rows) == 1 and 1 <= len(rows[0]["ids"]) <= 3
    assert sorted(q.name for q in (bad / "w").iterdir()) == ["samples.jsonl"]


# ---- JSONL inputs -------------------------------------------------------------

def test_jsonl_with_a_bad_line(bad, corpus, model):
    out = bad / "w" / "out.jsonl"
    refused(essence("generate", "--model", model, "--in", bad / "prompts_bad.jsonl", "--out", out),
            "prompts_bad.jsonl:2")
    refused(essence("generate", "--model", model, "--in", bad / "empty", "--out", out), "empty", "no prompts")
    refused(essence("generate", "--model", model, "--in", bad / "dir", "--out", out), "dir")
    refused(essence("eval", "--model", model, "--tokenizer", model, "--data", bad / "problems_bad.jsonl", "--out", out),
            "problems_bad.jsonl:2", prog="essence eval")
    refused(essence("eval", "--model", model, "--tokenizer", model, "--data", bad / "dir", "--out", out), "dir",
            prog="essence eval")
    refused(tool("prep_data", "--model", corpus / "model", "--out", out, "--strict", bad / "problems_bad.jsonl"),
            "problems_bad.jsonl:1", prog="prep_data")
    refused(tool("score_math", "--samples", bad / "problems_bad.jsonl"), "problems_bad.jsonl:1", prog="score_math")
    refused(tool("train_tokenizer", "--out", bad / "w" / "tok", bad / "prompts_bad.jsonl"), "prompts_bad.jsonl:2",
            prog="train_tokenizer")
    assert_empty(bad / "w")


def test_eval_with_a_wrong_tokenizer(bad, corpus, model):
    out = bad / "w" / "out.jsonl"
    args = ["eval", "--model", model, "--data", corpus / "test.jsonl", "--out", out, "--limit", "1", "--max-new", "2"]
    refused(essence(*args, "--tokenizer", bad / "tok"), "tok", prog="essence eval")
    refused(essence(*args, "--tokenizer", ROOT / "tests" / "data" / "tiny_model"), "tiny_model", prog="essence eval")
    refused(essence(*args, "--tokenizer", bad / "empty"), "empty", prog="essence eval")
    refused(essence(*args, "--tokenizer", bad / "dir"), "dir", prog="essence eval")
    assert_empty(bad / "w")


def test_json_with_trailing_data(bad, corpus, model):
    """Every JSON the engine reads is one value and nothing after it."""
    out = bad / "w" / "out.jsonl"
    refused(essence("generate", "--model", model, "--in", bad / "prompts_two.jsonl", "--out", out, "--device", "cpu"),
            "prompts_two.jsonl:1")
    run = run_config(bad, corpus, bad / "w" / "run")
    trailing = bad / "trailing.json"
    trailing.write_text(run.read_text() + " {}")
    refused(essence("train", "--config", trailing), "trailing.json")
    refused(essence("train", "--config", run, "--set", 'data.val=["x"] y'), "data.val")
    m = bad / "m"
    shutil.copytree(model, m)
    (m / "config.json").write_text((model / "config.json").read_text() + " trailing")
    refused(essence("generate", "--model", m, "--in", bad / "prompts.jsonl", "--out", out, "--device", "cpu"),
            "config.json")
    shutil.copytree(model, m, dirs_exist_ok=True)
    (m / "tokenizer.json").write_text((model / "tokenizer.json").read_text() + "]")
    refused(essence("data", "check", "--model", m, corpus / "train.bin"), "tokenizer.json")
    shutil.copytree(model, m, dirs_exist_ok=True)
    w = bytearray((model / "model.safetensors").read_bytes())
    n = int.from_bytes(w[:8], "little")
    header = w[8:8 + n].rstrip(b" ")
    assert len(header) + 2 <= n, "no padding to put trailing bytes in"
    w[8:8 + n] = (header + b"{}").ljust(n, b" ")
    (m / "model.safetensors").write_bytes(w)
    refused(essence("generate", "--model", m, "--in", bad / "prompts.jsonl", "--out", out, "--device", "cpu"),
            "model.safetensors")
    assert_empty(bad / "w")


def test_small_config_and_model_mistakes(bad, corpus, model):
    shard = corpus / "train.bin"
    run = run_config(bad, corpus, bad / "w" / "run")
    for cmd in (["train"], ["data", "stats"]):
        refused(essence(*cmd, "--config", run, "--set", f"data.train={shard},{shard}"), "data.train", "twice")
        refused(essence(*cmd, "--config", run, "--set", f'data.train=["{shard}", "{corpus}/../{corpus.name}/train.bin"]'),
                "data.train", "twice")
    out = bad / "w" / "m"
    (out).mkdir()
    for name, change in (("eos", lambda m: m.__setitem__("eos_token_id", m["vocab_size"])),
                         ("bos", lambda m: m.__setitem__("bos_token_id", m["vocab_size"] + 5))):
        m = bad / name
        shutil.copytree(model, m)
        cfg = json.loads((m / "config.json").read_text())
        change(cfg)
        (m / "config.json").write_text(json.dumps(cfg))
        refused(essence("generate", "--model", m, "--in", bad / "prompts.jsonl", "--out", out / "o", "--device", "cpu"),
                "config.json", f"{name}_token_id", "outside the vocabulary")
    m = bad / "tail"
    shutil.copytree(model, m)
    with open(m / "model.safetensors", "ab") as f:
        f.write(bytes(8))
    refused(essence("generate", "--model", m, "--in", bad / "prompts.jsonl", "--out", out / "o", "--device", "cpu"),
            "model.safetensors", "8 bytes after the last tensor")
    assert_empty(out)


def test_resume_with_a_changed_config(bad, corpus):
    out = bad / "w" / "run"
    run = run_config(bad, corpus, out, data={"val": []}, run={"steps": 20})
    assert essence("train", "--config", run, "--fresh", "--stop-at", "2").returncode == 0
    line = refused(essence("train", "--config", run, "--set", "trunc.lsp=0.5", "--set", "batch.step_examples=4",
                           "--set", "run.log_every=2"), "ckpt-00000002", "trunc.lsp, batch.step_examples",
                   "--allow-config-change")
    assert "log_every" not in line
    refused(essence("train", "--config", run, "--set", "run.seed=7"), "run.seed")
    # cadence, threads and a longer run are not changes of the training
    p = essence("train", "--config", run, "--set", "run.log_every=2", "--set", "run.threads=1", "--set",
                "run.steps=30", "--stop-at", "3")
    assert p.returncode == 0, p.stderr
    p = essence("train", "--config", run, "--set", "trunc.lsp=0.5", "--allow-config-change", "--stop-at", "4")
    assert p.returncode == 0, p.stderr
    notes = [json.loads(l) for l in (out / "metrics.jsonl").read_text().splitlines()]
    assert {"kind": "config_change", "step": 3, "changed": "trunc.lsp"} in notes


def test_quoted_string_in_set(bad, corpus):
    """--set run.out="/x" means /x, as a list value in JSON is parsed as JSON."""
    out = bad / "w" / "quoted"
    run = run_config(bad, corpus, bad / "w" / "run", data={"val": []}, run={"steps": 1})
    p = essence("train", "--config", run, "--set", f'run.out="{out}"', "--fresh")
    assert p.returncode == 0, p.stderr
    assert sorted(q.name for q in (bad / "w").iterdir()) == ["quoted"]
    assert (out / "final" / "config.json").exists()
    refused(essence("train", "--config", run, "--set", 'run.out="x'), "run.out", "not a JSON string")


# ---- Python tools -------------------------------------------------------------

@pytest.mark.parametrize("name,args,named", [
    ("prep_data", ["--bogus"], "--bogus"), ("prep_data", ["x.jsonl"], "--model"),
    ("prep_data", ["--model", "m", "--out", "o", "--max-len", "0", "x"], "--max-len"),
    ("prep_data", ["--model", "m", "--out", "o", "--shard-tokens", "-5", "x"], "--shard-tokens"),
    ("synth_corpus", ["--bogus"], "--bogus"), ("synth_corpus", [], "--out"),
    ("synth_corpus", ["--out", "o", "--train", "-1"], "--train"), ("synth_corpus", ["--out", "o", "--seed", "x"], "--seed"),
    ("train_tokenizer", ["--out", "o", "--vocab", "0", "x"], "--vocab"), ("train_tokenizer", ["x"], "--out"),
    ("eval_math", ["--model", "m"], "--tokenizer"), ("eval_math", ["--n", "-1"], "--n"),
    ("score_math", [], "--samples"), ("compare_runs", [], "runs"), ("compare_runs", ["--bogus", "r"], "--bogus"),
    ("plot_metrics", ["r"], "--out"),
])
def test_tool_flags(tmp_path, name, args, named):
    refused(tool(name, *args), named, prog=name)
    assert_empty(tmp_path)


def test_tool_files(bad, corpus, model):
    w = bad / "w"
    refused(tool("prep_data", "--model", corpus / "model", "--out", w / "x.bin", bad / "nope.jsonl"), "nope.jsonl",
            prog="prep_data")
    refused(tool("prep_data", "--model", corpus / "model", "--out", w / "x.bin", bad / "dir"), "dir", prog="prep_data")
    refused(tool("prep_data", "--model", bad / "dir", "--out", w / "x.bin", corpus / "val.jsonl"), "dir",
            prog="prep_data")
    refused(tool("prep_data", "--model", corpus / "model", "--out", w / "x.bin", bad / "empty"), "empty",
            prog="prep_data")
    for out in (Path(NOT_A_DIR) / "x.bin", bad / "dir"):
        refused(tool("prep_data", "--model", corpus / "model", "--out", out, corpus / "val.jsonl"), out,
                prog="prep_data")
    refused(tool("synth_corpus", "--out", Path(NOT_A_DIR) / "s", "--train", "2"), NOT_A_DIR, prog="synth_corpus")
    refused(tool("synth_corpus", "--out", bad / "empty", "--train", "2"), "empty", prog="synth_corpus")
    refused(tool("train_tokenizer", "--out", w / "tok", bad / "nope.jsonl"), "nope.jsonl", prog="train_tokenizer")
    refused(tool("train_tokenizer", "--out", w / "tok", bad / "empty"), "empty", prog="train_tokenizer")
    refused(tool("train_tokenizer", "--out", w / "tok", bad / "array.json"), "array.json:1", prog="train_tokenizer")
    refused(tool("train_tokenizer", "--out", Path(NOT_A_DIR) / "tok", corpus / "val.jsonl"), NOT_A_DIR,
            prog="train_tokenizer")
    refused(tool("score_math", "--samples", bad / "nope.jsonl"), "nope.jsonl", prog="score_math")
    refused(tool("score_math", "--samples", bad / "array.json"), "array.json:1", prog="score_math")
    assert_empty(w)
    assert_empty(bad / "dir")


def test_run_summaries_and_metrics(bad, model):
    run = model.parent  # a finished run: summary.json, metrics.jsonl
    r = bad / "w" / "r"
    r.mkdir()
    (r / "summary.json").write_text('{"lsp": 1')
    refused(tool("compare_runs", run, r), "summary.json", "not JSON", prog="compare_runs")
    (r / "summary.json").write_text('{"lsp": 1}')
    refused(tool("compare_runs", run, r), "summary.json", "val_loss", prog="compare_runs")
    refused(tool("compare_runs", run, bad / "nope"), "nope", prog="compare_runs")
    png = bad / "w" / "c.png"
    (r / "metrics.jsonl").write_text("[1]\n")
    refused(tool("plot_metrics", "--out", png, r), "metrics.jsonl:1", prog="plot_metrics")
    refused(tool("plot_metrics", "--out", png, bad / "empty"), "empty", "no training records", prog="plot_metrics")
    refused(tool("plot_metrics", "--out", png, bad / "nope"), "nope", prog="plot_metrics")
    refused(tool("plot_metrics", "--out", Path(NOT_A_DIR) / "c.png", run), NOT_A_DIR, prog="plot_metrics")
    assert sorted(os.listdir(bad / "w")) == ["r"] and sorted(os.listdir(r)) == ["metrics.jsonl", "summary.json"]
