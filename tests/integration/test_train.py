"""essence train end to end: config validation, learning, resume
equivalence, signals, kill -9 during a checkpoint, corrupt checkpoints,
non-finite steps."""
import json
import os
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from train_env import essence_bin, run_config, run_essence


def checkpoints(out):
    return sorted(p for p in Path(out).glob("ckpt-*") if p.is_dir())


def metrics(out, kind="train"):
    lines = [json.loads(l) for l in (Path(out) / "metrics.jsonl").read_text().splitlines()]
    return [m for m in lines if m["kind"] == kind]


def test_unknown_key_is_refused(tmp_path, corpus):
    cfg = run_config(tmp_path, corpus, tmp_path / "out", optim={"learning_rate": 1e-3})
    p = run_essence(["train", "--config", cfg], check=False)
    assert p.returncode != 0
    assert "optim.learning_rate" in p.stderr and len(p.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize("kv,key", [("trunc.lsp=1.5", "trunc.lsp"), ("trunc.mode=middle", "trunc.mode"),
                                    ("run.steps=abc", "run.steps"), ("supervise=everything", "supervise"),
                                    ("no.such=1", "no.such"), ("optim.schedule=step", "optim.schedule")])
def test_bad_values_are_refused(tmp_path, corpus, kv, key):
    cfg = run_config(tmp_path, corpus, tmp_path / "out")
    p = run_essence(["train", "--config", cfg, "--set", kv], check=False)
    assert p.returncode != 0 and key in p.stderr, p.stderr
    assert not (tmp_path / "out" / "metrics.jsonl").exists()


def test_missing_shard_and_wrong_tokenizer(tmp_path, corpus):
    cfg = run_config(tmp_path, corpus, tmp_path / "out", data={"train": [str(tmp_path / "nope.bin")]})
    p = run_essence(["train", "--config", cfg], check=False)
    assert p.returncode != 0 and "nope.bin" in p.stderr
    # a tokenizer with another vocabulary: the shard is refused, naming both fingerprints
    other = tmp_path / "tok"
    other.mkdir()
    tok = json.loads((corpus / "model" / "tokenizer.json").read_text())
    vocab = tok["model"]["vocab"]
    last = max(vocab, key=vocab.get)  # an ordinary token (special tokens come first)
    vocab[last + "x"] = vocab.pop(last)
    (other / "tokenizer.json").write_text(json.dumps(tok))
    cfg = run_config(tmp_path, corpus, tmp_path / "out", tokenizer=str(other))
    p = run_essence(["train", "--config", cfg], check=False)
    assert p.returncode != 0 and "fingerprint" in p.stderr and "train.bin" in p.stderr, p.stderr


def test_validation_loss_falls(tmp_path, corpus):
    out = tmp_path / "out"
    cfg = run_config(tmp_path, corpus, out, run={"steps": 30, "val_every": 15})
    p = run_essence(["train", "--config", cfg, "--fresh"], timeout=600)
    vals = [m["val_loss"] for m in metrics(out, "val")]
    assert len(vals) >= 3, vals
    assert vals[-1] < 0.7 * vals[0], vals  # from ~ln(V) to well below it
    assert all(np.isfinite(vals))
    summary = json.loads((out / "summary.json").read_text())
    assert summary["steps"] == 30 and summary["flops"] > 0 and abs(summary["val_loss"] - vals[-1]) < 1e-6
    # the final checkpoint is a Hugging Face directory
    last = checkpoints(out)[-1]
    assert (last / "config.json").exists() and (last / "model.safetensors").exists()
    assert "step 30/30" in p.stderr and "tok/s" in p.stderr and "MFU" in p.stderr and "ETA" in p.stderr


def test_resume_is_bit_exact(tmp_path, corpus):
    one, two = tmp_path / "one", tmp_path / "two"
    cfg1 = run_config(tmp_path / "a" if (tmp_path / "a").mkdir() is None else None, corpus, one)
    cfg2 = run_config(tmp_path / "b" if (tmp_path / "b").mkdir() is None else None, corpus, two)
    run_essence(["train", "--config", cfg1, "--fresh"])
    run_essence(["train", "--config", cfg2, "--fresh", "--stop-at", "4"])
    assert [c.name for c in checkpoints(two)] == ["ckpt-00000004"]
    run_essence(["train", "--config", cfg2])
    a = load_file(str(checkpoints(one)[-1] / "model.safetensors"))
    b = load_file(str(checkpoints(two)[-1] / "model.safetensors"))
    assert a.keys() == b.keys()
    for k in a:
        assert np.array_equal(a[k], b[k]), k
    oa = load_file(str(checkpoints(one)[-1] / "optim.safetensors"))
    ob = load_file(str(checkpoints(two)[-1] / "optim.safetensors"))
    for k in oa:
        assert np.array_equal(oa[k], ob[k]), k
    la = [m["loss"] for m in metrics(one)]
    lb = [m["loss"] for m in metrics(two)]
    assert la == lb, (la, lb)


def _start(cfg, *extra):
    env = dict(os.environ, OMP_NUM_THREADS="2")
    return subprocess.Popen([str(essence_bin()), "train", "--config", str(cfg), *extra], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env)


def _wait_for_steps(out, n, proc, timeout=120):
    t0 = time.time()
    while time.time() - t0 < timeout:
        if (out / "metrics.jsonl").exists() and len(metrics(out)) >= n:
            return
        if proc.poll() is not None:
            raise AssertionError(f"run ended early: {proc.stderr.read()}")
        time.sleep(0.05)
    raise AssertionError("run made no progress")


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_signal_checkpoints_and_resumes(tmp_path, corpus, sig):
    out = tmp_path / "out"
    cfg = run_config(tmp_path, corpus, out, run={"steps": 400})
    proc = _start(cfg, "--fresh")
    _wait_for_steps(out, 2, proc)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 75, err  # checkpointed, resumable: not finished
    assert "stopped by signal" in err and not (out / "final").exists()
    ck = checkpoints(out)
    assert len(ck) == 1
    state = json.loads((ck[0] / "trainer_state.json").read_text())
    assert 2 <= state["step"] < 400
    # resuming goes on from there
    p = run_essence(["train", "--config", cfg, "--set", "run.steps=400", "--stop-at", str(state["step"] + 1)])
    assert f"resuming from {ck[0]}" in p.stdout


def test_kill9_during_checkpoints_leaves_a_resumable_one(tmp_path, corpus):
    out = tmp_path / "out"
    cfg = run_config(tmp_path, corpus, out, run={"steps": 10000, "ckpt_every": 1, "keep": 2})
    for delay in (0.3, 0.55, 0.8, 1.1):
        proc = _start(cfg)
        _wait_for_steps(out, 1, proc)
        time.sleep(delay)
        proc.kill()
        proc.wait()
        good = checkpoints(out)
        assert good, "no complete checkpoint"
        for c in good:  # every visible checkpoint is complete
            assert {"config.json", "model.safetensors", "optim.safetensors", "trainer_state.json"} <= {
                f.name for f in c.iterdir()}
    # the newest one resumes
    step = json.loads((checkpoints(out)[-1] / "trainer_state.json").read_text())["step"]
    p = run_essence(["train", "--config", cfg, "--stop-at", str(step + 1)])
    assert "resuming from" in p.stdout
    assert not list(out.glob(".ckpt-tmp-*")), "temporaries of killed writes are cleaned up"


def test_metrics_after_kill9_and_resume_hold_each_step_once(tmp_path, corpus):
    out = tmp_path / "out"
    cfg = run_config(tmp_path, corpus, out, data={"val": []}, run={"steps": 10000, "ckpt_every": 0})
    run_essence(["train", "--config", cfg, "--fresh", "--stop-at", "2"])
    proc = _start(cfg)  # resumes at 2; killed after more steps, with no checkpoint past 2
    _wait_for_steps(out, 5, proc)
    proc.kill()
    proc.wait()
    with open(out / "metrics.jsonl", "a") as f:
        f.write('{"kind": "train", "st')  # a line torn by the kill
    run_essence(["train", "--config", cfg, "--stop-at", "6"])
    assert [m["step"] for m in metrics(out)] == [1, 2, 3, 4, 5, 6]
    assert all(json.loads(l) for l in (out / "metrics.jsonl").read_text().splitlines())


@pytest.mark.parametrize("damage", ["truncate-model", "flip-optim", "state-json", "missing-optim"])
def test_corrupt_checkpoint_is_refused(tmp_path, corpus, damage):
    out = tmp_path / "out"
    cfg = run_config(tmp_path, corpus, out)
    run_essence(["train", "--config", cfg, "--fresh", "--stop-at", "2"])
    ck = checkpoints(out)[-1]
    if damage == "truncate-model":
        f = ck / "model.safetensors"
        f.write_bytes(f.read_bytes()[:-100])
        name = "model.safetensors"
    elif damage == "flip-optim":
        f = ck / "optim.safetensors"
        b = bytearray(f.read_bytes())
        b[10] ^= 0x5A  # inside the JSON header
        f.write_bytes(bytes(b))
        name = "optim.safetensors"
    elif damage == "state-json":
        (ck / "trainer_state.json").write_text("{\"step\": ")
        name = "trainer_state.json"
    else:
        (ck / "optim.safetensors").unlink()
        name = "optim.safetensors"
    p = run_essence(["train", "--config", cfg], check=False)
    assert p.returncode != 0
    assert name in p.stderr, p.stderr


def test_non_finite_steps_abort(tmp_path, corpus):
    """A student whose weights are finite but so large that its activations
    overflow (NaN weights are refused on load): every step is skipped with a
    warning, and the run aborts after run.max_bad_steps."""
    out = tmp_path / "out"
    cfg = run_config(tmp_path, corpus, out)
    run_essence(["train", "--config", cfg, "--fresh", "--stop-at", "1"])
    src = checkpoints(out)[-1]
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "config.json").write_text((src / "config.json").read_text())
    w = load_file(str(src / "model.safetensors"))
    for k in w:
        w[k] = w[k] * np.float32(1e30)
    save_file(w, str(bad / "model.safetensors"))
    cfg2 = json.loads(Path(cfg).read_text())
    cfg2["student"] = {"path": str(bad)}
    cfg2["run"]["out"] = str(tmp_path / "out2")
    cfg2["run"]["max_bad_steps"] = 3
    (tmp_path / "bad.json").write_text(json.dumps(cfg2))
    p = run_essence(["train", "--config", tmp_path / "bad.json", "--fresh"], check=False)
    assert p.returncode != 0
    assert p.stderr.count("update skipped") == 3, p.stderr
    assert "max_bad_steps" in p.stderr


def test_config_reference_is_complete():
    """configs/README.md documents every run-config key with its default."""
    table = run_essence(["train", "--help-config"]).stdout
    doc = (Path(__file__).resolve().parents[2] / "configs" / "README.md").read_text()
    rows = [l for l in table.splitlines() if l.startswith("| `")]
    assert len(rows) > 30
    missing = [r.split("|")[1].strip() for r in rows if r not in doc]
    assert not missing, f"configs/README.md is out of date for {missing}: regenerate it from essence train --help-config"


def test_truncation_halves_activation_memory_and_validates_whole_sequences(tmp_path, corpus):
    """At r = 0.5 the training micro-batches (and so the activations) are about
    half as long, while validation still runs the whole sequences: the
    starting validation loss is the same as at r = 1, and validating does not
    size the training activations."""
    res = {}
    for r in (1.0, 0.5):
        for val in (False, True):
            out = tmp_path / f"r{r}-{val}"
            (tmp_path / f"c{r}-{val}").mkdir()
            data = {} if val else {"val": []}
            cfg = run_config(tmp_path / f"c{r}-{val}", corpus, out, student={"num_hidden_layers": 6},
                             run={"steps": 2}, trunc={"lsp": r}, data=data)
            run_essence(["train", "--config", cfg, "--fresh"])
            res[r, val] = (json.loads((out / "summary.json").read_text()), metrics(out, "val"))
    full, half = res[1.0, False][0], res[0.5, False][0]
    assert half["capacity"] <= 0.55 * full["capacity"] + 64
    assert half["peak_activation_bytes"] < 0.6 * full["peak_activation_bytes"]
    assert half["tokens"] < 0.55 * full["tokens"] and half["flops"] < 0.55 * full["flops"]
    # validation at full length costs a forward-only view (about one layer of
    # activations), far less than training at full length
    extra = res[0.5, True][0]["peak_activation_bytes"] - half["peak_activation_bytes"]
    assert 0 <= extra < 0.35 * full["peak_activation_bytes"], (extra, full["peak_activation_bytes"])
    v_half, v_full = res[0.5, True][1], res[1.0, True][1]
    assert v_half[0]["step"] == 0 and v_half[0]["val_loss"] == v_full[0]["val_loss"]
