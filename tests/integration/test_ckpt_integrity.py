"""Checkpoint integrity: trainer_state.json records the size and CRC-32C of
every other file of a checkpoint; resume verifies them, names the damaged
file in one line and falls back to the previous intact checkpoint (which it
really resumes from), or stops when there is none. A checkpoint of another
model is refused before anything is loaded from it, and so is one whose
optimizer state is in an older flat order that differs from this one's.
(ZeRO-1 optimizer parts: tests/tools/test_mpi.py.)"""
import json
import shutil
from pathlib import Path

import pytest

from train_env import run_config, run_essence


def train_losses(out):
    lines = [json.loads(l) for l in (Path(out) / "metrics.jsonl").read_text().splitlines()]
    return [(m["step"], m["loss"]) for m in lines if m["kind"] == "train"]


@pytest.fixture(scope="module")
def base(tmp_path_factory, corpus):
    """A run stopped at step 4 with checkpoints at steps 2 and 4."""
    d = tmp_path_factory.mktemp("ckpt-base")
    cfg = run_config(d, corpus, d / "out", run={"ckpt_every": 2, "keep": 3})
    run_essence(["train", "--config", cfg, "--fresh", "--stop-at", "4"])
    assert sorted(p.name for p in (d / "out").glob("ckpt-*")) == ["ckpt-00000002", "ckpt-00000004"]
    return d


def copy_run(base, tmp_path):
    out = tmp_path / "out"
    shutil.copytree(base / "out", out)
    return out


def resume(base, out, *extra):
    return run_essence(["train", "--config", base / "run.json", "--set", f"run.out={out}", "--stop-at", "4", *extra],
                       check=False)


def flip(path, at):
    b = bytearray(path.read_bytes())
    b[at] ^= 0x01
    path.write_bytes(bytes(b))


DAMAGE = {  # what is done to ckpt-00000004, the file named, and the problem stated
    "flip-model-end": (lambda c: flip(c / "model.safetensors", -10), "model.safetensors", "checksum mismatch"),
    "flip-optim": (lambda c: flip(c / "optim.safetensors", (c / "optim.safetensors").stat().st_size // 2),
                   "optim.safetensors", "checksum mismatch"),
    "truncate-model": (lambda c: c.joinpath("model.safetensors").write_bytes(
        c.joinpath("model.safetensors").read_bytes()[:-100]), "model.safetensors", "truncated"),
    "missing-config": (lambda c: (c / "config.json").unlink(), "config.json", "missing"),
    "state-json": (lambda c: (c / "trainer_state.json").write_text("{\"step\": "), "trainer_state.json",
                   "not valid JSON"),
}


@pytest.mark.parametrize("damage", sorted(DAMAGE))
def test_damaged_checkpoint_falls_back_to_the_previous_one(base, tmp_path, damage):
    out = copy_run(base, tmp_path)
    do, name, problem = DAMAGE[damage]
    do(out / "ckpt-00000004")
    before = train_losses(out)
    p = resume(base, out)
    assert p.returncode == 0, p.stderr
    lines = [l for l in p.stderr.splitlines() if l.startswith("essence:")]
    assert len(lines) == 2, p.stderr
    assert f"ckpt-00000004/{name}: " in lines[0] and problem in lines[0], lines[0]
    assert f"resuming from the previous complete checkpoint {out}/ckpt-00000002 instead" in lines[1], lines[1]
    assert f"resuming from {out}/ckpt-00000002 at step 2" in p.stdout
    assert (out / "ckpt-00000004.damaged").is_dir()  # kept for inspection, out of pruning's way
    assert json.loads((out / "ckpt-00000004" / "trainer_state.json").read_text())["step"] == 4  # written anew
    # steps 3 and 4 ran again from ckpt-2's weights, optimizer and data position: bit for bit the same
    # losses, recorded once (metrics.jsonl is cut back to the checkpoint's step on resume)
    after = train_losses(out)
    assert after == before and [s[0] for s in after] == [1, 2, 3, 4]


@pytest.mark.parametrize("damage", ["flip-model-end", "missing-config"])
def test_damaged_only_checkpoint_stops(base, tmp_path, damage):
    out = copy_run(base, tmp_path)
    shutil.rmtree(out / "ckpt-00000002")
    do, name, problem = DAMAGE[damage]
    do(out / "ckpt-00000004")
    p = resume(base, out)
    assert p.returncode != 0
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 2, p.stderr
    assert f"ckpt-00000004/{name}: " in lines[0] and problem in lines[0], lines[0]
    assert lines[1] == f"essence: {out}: no intact checkpoint to resume from; repair it or start over with --fresh"
    assert (out / "ckpt-00000004").is_dir() and not (out / "ckpt-00000004.damaged").exists()


def test_checkpoint_of_another_model_is_refused(base, tmp_path):
    out = copy_run(base, tmp_path)
    cfg = json.loads((base / "run.json").read_text())
    student = json.loads(Path(cfg["student"]["preset"]).read_text())
    student["intermediate_size"] = 96
    (tmp_path / "student.json").write_text(json.dumps(student))
    p = resume(base, out, "--set", f"student.preset={tmp_path / 'student.json'}")
    assert p.returncode != 0
    assert p.stderr.strip() == (
        f"essence: {out}/ckpt-00000004/config.json: a checkpoint of another model (tensor "
        "'model.layers.0.mlp.gate_proj.weight' is 128x64, 96x64 in the run's student): use another run.out, "
        "or start over with --fresh"), p.stderr
    assert not (out / "ckpt-00000005").exists() and train_losses(out) == train_losses(base / "out")


def test_checkpoint_without_checksums_resumes_unverified(base, tmp_path):
    out = copy_run(base, tmp_path)
    state = out / "ckpt-00000004" / "trainer_state.json"
    s = json.loads(state.read_text())
    assert set(s["files"]) == {"config.json", "model.safetensors", "optim.safetensors"}
    del s["files"]  # as written before checksums were recorded
    state.write_text(json.dumps(s))
    p = resume(base, out, "--set", "run.steps=8", "--stop-at", "5")
    assert p.returncode == 0, p.stderr
    assert f"essence: {out}/ckpt-00000004: no checksums recorded (an older checkpoint): resuming unverified" in p.stderr
    assert f"resuming from {out}/ckpt-00000004 at step 4" in p.stdout


def forget_flat_order(ckpt):
    """Makes ckpt's trainer state look written before the flat order was recorded."""
    state = ckpt / "trainer_state.json"
    s = json.loads(state.read_text())
    assert s["flat_order"] == 2
    del s["flat_order"]
    state.write_text(json.dumps(s))
    return state


QWEN2 = {"model_type": "qwen2", "architectures": ["Qwen2ForCausalLM"]}


def test_qkv_bias_checkpoint_resumes_bit_exact(tmp_path, corpus):
    # Qwen2: q/k/v weights, then their biases, adjacent in the flat layout
    cfg = run_config(tmp_path, corpus, tmp_path / "out", student=QWEN2, run={"ckpt_every": 2})
    run_essence(["train", "--config", cfg, "--fresh", "--stop-at", "4"])
    out = tmp_path / "resumed"
    shutil.copytree(tmp_path / "out", out)
    shutil.rmtree(out / "ckpt-00000004")
    p = run_essence(["train", "--config", cfg, "--set", f"run.out={out}", "--stop-at", "4"])
    assert f"resuming from {out}/ckpt-00000002 at step 2" in p.stdout
    assert train_losses(out) == train_losses(tmp_path / "out")


def test_checkpoint_in_the_old_flat_order_is_refused_with_qkv_biases(tmp_path, corpus):
    # Qwen2's q/k/v biases sat between the weights in the flat layout the
    # optimizer state is stored in: such a checkpoint cannot resume.
    cfg = run_config(tmp_path, corpus, tmp_path / "out", student=QWEN2, run={"ckpt_every": 2})
    run_essence(["train", "--config", cfg, "--fresh", "--stop-at", "2"])
    state = forget_flat_order(tmp_path / "out" / "ckpt-00000002")
    p = run_essence(["train", "--config", cfg, "--stop-at", "3"], check=False)
    assert p.returncode != 0
    assert p.stderr.strip() == (
        f"essence: {state}: optimizer state in flat order 1, this essence's is 2 (q/k/v weights adjacent, then "
        "their biases): resume with the essence that wrote it, or start over with --fresh"), p.stderr
    assert not (tmp_path / "out" / "ckpt-00000003").exists()


def test_checkpoint_in_the_old_flat_order_resumes_without_qkv_biases(base, tmp_path):
    # Without q/k/v biases both orders are the same: the checkpoint resumes, bit for bit.
    out = copy_run(base, tmp_path)
    forget_flat_order(out / "ckpt-00000002")
    shutil.rmtree(out / "ckpt-00000004")
    before = train_losses(base / "out")
    p = resume(base, out)
    assert p.returncode == 0, p.stderr
    assert f"resuming from {out}/ckpt-00000002 at step 2" in p.stdout
    assert train_losses(out) == before
