"""Data-parallel training under mpirun (build/essence, CPU backend, MPI).

N ranks with one micro-batch each must give the update of one rank
accumulating N micro-batches: losses and weights agree to 1e-6 relative (the
gradient sum order differs, so not bit for bit), with and without ZeRO-1.
The same holds for steps that 2 or 3 ranks cannot split evenly (some ranks
then take one micro-batch fewer), by examples or by tokens, across epochs, and
for a run checkpointed on N ranks and resumed on M.
Gradients all-reduced in per-layer buckets during backward give the weights
of one all-reduce after it, bit for bit, also when a rank has no micro-batch.
ZeRO-1 checkpoints resume on the same or another number of ranks; ranks with
different configs are refused; a killed rank ends the job, non-zero, quickly.
"""
import json
import os
import random
import shutil
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file

import prep_data
import tiny_fixture

ROOT = Path(__file__).resolve().parents[2]
ESSENCE = Path(os.environ.get("ESSENCE_BIN", ROOT / "build" / "essence"))  # run_all.sh's release build
MPIRUN = shutil.which("mpirun")

pytestmark = [
    pytest.mark.skipif(MPIRUN is None, reason="mpirun not installed (apt install openmpi-bin libopenmpi-dev)"),
]

STUDENT = {
    "architectures": ["Qwen3ForCausalLM"], "model_type": "qwen3", "hidden_size": 32, "intermediate_size": 64,
    "num_hidden_layers": 2, "num_attention_heads": 2, "num_key_value_heads": 1, "head_dim": 16,
    "hidden_act": "silu", "max_position_embeddings": 256, "rms_norm_eps": 1e-6, "rope_theta": 10000,
    "tie_word_embeddings": True, "vocab_size": 64, "torch_dtype": "float32", "attention_bias": False,
}
CAPACITY = 40  # each example (21..40 tokens) fills a micro-batch alone: steps of -np 1 and -np 2 match exactly


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    if not ESSENCE.exists():
        pytest.fail(f"{ESSENCE} missing: build first (meson setup build && ninja -C build)")
    d = tmp_path_factory.mktemp("mpi")
    (d / "model").mkdir()
    tiny_fixture.tokenizer().save(str(d / "model" / "tokenizer.json"))
    rng = random.Random(5)
    words = tiny_fixture.WORDS[1:]
    traces = []
    while len(traces) < 40:
        t = {"prompt": " ".join(rng.choices(words, k=rng.randint(2, 6))),
             "reasoning": " ".join(rng.choices(words, k=rng.randint(8, 20))),
             "answer": " ".join(rng.choices(words, k=rng.randint(1, 4)))}
        n = len(tiny_fixture.tokenizer().encode(t["prompt"] + " " + t["reasoning"] + " " + t["answer"]).ids)
        if 14 <= n <= 28:  # the chat template adds about 10 tokens
            traces.append(t)
    (d / "traces.jsonl").write_text("".join(json.dumps(t) + "\n" for t in traces))
    assert prep_data.main(["--model", str(d / "model"), "--out", str(d / "train.bin"), "--max-len", str(CAPACITY),
                           str(d / "traces.jsonl")]) in (0, None)
    (d / "student.json").write_text(json.dumps(STUDENT))
    run = {"student": {"preset": str(d / "student.json")}, "tokenizer": str(d / "model"),
           "data": {"train": [str(d / "train.bin")]}, "loss": {"alpha": 1.0},
           "optim": {"lr": 3e-3, "schedule": "constant", "weight_decay": 0.05},
           "batch": {"capacity": CAPACITY, "step_examples": 2},
           "run": {"steps": 10, "device": "cpu", "threads": 1, "log_every": 100}}
    (d / "run.json").write_text(json.dumps(run))
    return d


def mpirun(n, *args, timeout=120, **kw):
    env = dict(os.environ, OMPI_MCA_rmaps_base_oversubscribe="1", OMP_NUM_THREADS="1")
    cmd = [MPIRUN, "--allow-run-as-root", "--oversubscribe", "-np", str(n), str(ESSENCE), "train", *args]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout, **kw)


def train(setup, n, out, *sets):
    args = ["--config", str(setup / "run.json"), "--set", f"run.out={out}"]
    for s in sets:
        args += ["--set", s]
    p = mpirun(n, *args)
    assert p.returncode == 0, p.stdout + p.stderr
    return p


def plan_of(stdout):
    """(micro-batches per step, at most per rank, steps per epoch) from the start-up plan."""
    line = next(ln for ln in stdout.splitlines() if ln.startswith("batching:"))
    step = int(line.split("tokens, ")[1].split()[0])
    return step, int(line.split("at most ")[1].split()[0]), int(line.split("; ")[1].split()[0])


def accum_of(stdout):
    return plan_of(stdout)[1]


def losses(out):
    rows = [json.loads(ln) for ln in (out / "metrics.jsonl").read_text().splitlines()]
    return np.array([r["loss"] for r in rows if r["kind"] == "train"])


def weights(out):
    ckpts = sorted(out.glob("ckpt-*"))
    return load_file(str(ckpts[-1] / "model.safetensors"))


def rel(a, b):
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(a), 1e-30))


def assert_same_run(ref, got, tol=1e-6):
    la, lb = losses(ref), losses(got)
    assert len(la) == len(lb) == 10
    assert np.all(np.isfinite(la)) and np.all(np.isfinite(lb))
    assert np.max(np.abs(la - lb) / np.abs(la)) < tol, (la, lb)
    wa, wb = weights(ref), weights(got)
    assert wa.keys() == wb.keys()
    for k in wa:
        assert np.all(np.isfinite(wb[k])), k
        assert rel(wa[k], wb[k]) < tol, (k, rel(wa[k], wb[k]))


@pytest.fixture(scope="module")
def one_rank(setup):
    out = setup / "np1"
    p = train(setup, 1, out)
    assert accum_of(p.stdout) == 2
    w0 = load_file(str(sorted(out.glob("ckpt-*"))[-1] / "model.safetensors"))
    assert any(np.any(v != 0) for v in w0.values())
    return out


@pytest.mark.parametrize("zero1", ["false", "true"])
def test_two_ranks_match_one_rank_accumulating(setup, one_rank, zero1):
    out = setup / f"np2-zero{zero1}"
    p = train(setup, 2, out, f"run.zero1={zero1}")
    assert accum_of(p.stdout) == 1
    assert_same_run(one_rank, out)
    parts = list(sorted(out.glob("ckpt-*"))[-1].glob("optim-*-of-00002.safetensors"))
    assert len(parts) == (2 if zero1 == "true" else 0)


def test_updates_are_not_trivial(setup, one_rank):
    # the comparison above means something only if training moved the weights
    out = setup / "np1-3steps"
    train(setup, 1, out, "run.steps=3")
    w3, w10 = weights(out), weights(one_rank)
    assert max(rel(w10[k], w3[k]) for k in w10) > 1e-3


def buckets_of(stdout):
    line = next(ln for ln in stdout.splitlines() if ln.startswith("gradient all-reduce:"))
    return int(line.split(": ")[1].split()[0]), int(line.split(", ")[1].split()[0])


def weights_equal(a, b):
    wa, wb = weights(a), weights(b)
    assert wa.keys() == wb.keys()
    for k in wa:
        assert np.all(np.isfinite(wa[k])), k
        assert np.array_equal(wa[k], wb[k]), (k, rel(wa[k], wb[k]))


def test_bucketed_allreduce_matches_one_allreduce(setup, one_rank):
    # one bucket per layer (and one for the final norm), issued during backward;
    # each element is still summed once over the same two ranks: bit for bit
    out = setup / "np2-buckets"
    p = train(setup, 2, out, "run.comm_bucket=1")
    assert buckets_of(p.stdout) == (STUDENT["num_hidden_layers"] + 2, STUDENT["num_hidden_layers"] + 1)
    off = setup / "np2-overlap-off"
    p = train(setup, 2, off, "run.overlap_comm=false")
    assert not any(ln.startswith("gradient all-reduce:") for ln in p.stdout.splitlines())
    weights_equal(off, out)
    np.testing.assert_array_equal(losses(off), losses(out))
    assert_same_run(one_rank, out)


def test_buckets_merge_below_the_bucket_size(setup):
    p = train(setup, 2, setup / "np2-merged", "run.steps=1", "run.comm_bucket=1000000")
    assert buckets_of(p.stdout) == (1, 0)  # the whole tiny model is below one bucket


def test_rank_without_backward_issues_the_same_buckets(setup):
    # steps of 2 micro-batches over 3 ranks: rank 2 never has one, so it
    # issues every bucket after an empty step; a mismatch would hang the
    # collectives (timeout) or change the weights
    common = ["run.comm_bucket=1", "batch.step_examples=2", "run.steps=14"]
    out = setup / "np3-buckets"
    p = train(setup, 3, out, *common)
    assert plan_of(p.stdout) == (2, 1, 20), p.stdout
    off = setup / "np3-overlap-off"
    train(setup, 3, off, *common, "run.overlap_comm=false")
    la, lb = losses(off), losses(out)
    assert len(la) == len(lb) == 14 and np.all(np.isfinite(lb))
    last = json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])
    assert last["step"] == 14 and last["docs"] == 2, last
    assert np.max(np.abs(la - lb) / np.abs(la)) < 1e-6, (la, lb)
    wa, wb = weights(off), weights(out)
    for k in wa:
        assert np.all(np.isfinite(wb[k])), k
        assert rel(wa[k], wb[k]) < 1e-6, (k, rel(wa[k], wb[k]))  # three ranks: MPI may pick another sum order by size


def test_zero1_damaged_optimizer_part_falls_back(setup, one_rank):
    # a flipped byte in one rank's optimizer part of the newest checkpoint is
    # named on resume, which goes on from the previous checkpoint instead
    out = setup / "zero1-damaged"
    train(setup, 2, out, "run.zero1=true", "run.steps=4", "run.ckpt_every=2", "run.keep=3")
    part = out / "ckpt-00000004" / "optim-00001-of-00002.safetensors"
    b = bytearray(part.read_bytes())
    b[len(b) - 10] ^= 0x01
    part.write_bytes(bytes(b))
    p = train(setup, 2, out, "run.zero1=true", "run.steps=10")
    assert f"essence: {part}: checksum mismatch: CRC-32C " in p.stderr, p.stderr
    assert f"resuming from the previous complete checkpoint {out}/ckpt-00000002 instead" in p.stderr, p.stderr
    assert f"resuming from {out}/ckpt-00000002 at step 2" in p.stdout
    wa, wb = weights(one_rank), weights(out)
    for k in wa:
        assert rel(wa[k], wb[k]) < 1e-6, (k, rel(wa[k], wb[k]))


@pytest.mark.parametrize("resume_ranks", [2, 1])
def test_zero1_checkpoint_resumes(setup, one_rank, resume_ranks):
    out = setup / f"zero1-resume-{resume_ranks}"
    train(setup, 2, out, "run.zero1=true", "run.steps=5")
    ckpt = sorted(out.glob("ckpt-*"))[-1]
    assert json.loads((ckpt / "trainer_state.json").read_text())["optim_parts"] == 2
    assert not (ckpt / "optim.safetensors").exists()
    train(setup, resume_ranks, out, "run.zero1=true", "run.steps=10")
    wa, wb = weights(one_rank), weights(out)
    for k in wa:
        assert rel(wa[k], wb[k]) < 1e-6, (k, rel(wa[k], wb[k]))
    la = losses(one_rank)
    lb = losses(out)[-5:]  # the resumed run appends steps 6..10
    assert np.max(np.abs(la[5:] - lb) / np.abs(la[5:])) < 1e-6, (la, lb)


# Steps that 2 and 3 ranks cannot split evenly; 10 steps run into the second epoch.
UNEVEN = {
    "examples": ["batch.step_examples=5"],  # 5 micro-batches of one example, 8 steps per epoch
    "tokens": ["batch.capacity=80", "batch.step_tokens=350"],  # 5 micro-batches of 2-3 examples, 3 per epoch
}


@pytest.fixture(scope="module")
def uneven_one_rank(setup):
    runs = {}
    for name, sets in UNEVEN.items():
        out = setup / f"uneven-{name}-np1"
        p = train(setup, 1, out, *sets)
        step, _, per_epoch = plan_of(p.stdout)
        assert step == 5 and per_epoch < 10, p.stdout
        runs[name] = (out, plan_of(p.stdout))
    return runs


@pytest.mark.parametrize("zero1", ["false", "true"])
@pytest.mark.parametrize("name", list(UNEVEN))
def test_uneven_steps_match_one_rank(setup, uneven_one_rank, name, zero1):
    ref, plan = uneven_one_rank[name]
    for n in (2, 3):
        out = setup / f"uneven-{name}-np{n}-zero{zero1}"
        p = train(setup, n, out, f"run.zero1={zero1}", *UNEVEN[name])
        assert plan_of(p.stdout) == (plan[0], -(-plan[0] // n), plan[2]), p.stdout
        assert_same_run(ref, out, tol=1e-5)


@pytest.mark.parametrize("name,first,then,zero1", [("examples", 2, 3, "true"), ("tokens", 3, 2, "false")])
def test_checkpoint_resumes_on_another_number_of_ranks(setup, uneven_one_rank, name, first, then, zero1):
    # after 5 steps of 5 micro-batches neither 2 nor 3 ranks have taken equal shares
    out = setup / f"uneven-resume-{name}-{first}-{then}"
    train(setup, first, out, f"run.zero1={zero1}", "run.steps=5", *UNEVEN[name])
    p = train(setup, then, out, f"run.zero1={zero1}", *UNEVEN[name])
    assert "resuming from" in p.stdout and "at step 5" in p.stdout, p.stdout
    assert_same_run(uneven_one_rank[name][0], out, tol=1e-5)


def test_ranks_with_different_configs_are_refused(setup):
    env = dict(os.environ, OMPI_MCA_rmaps_base_oversubscribe="1", OMP_NUM_THREADS="1")
    base = [str(ESSENCE), "train", "--config", str(setup / "run.json"), "--set", f"run.out={setup / 'differ'}"]
    cmd = [MPIRUN, "--allow-run-as-root", "--oversubscribe", "-np", "1", *base, ":", "-np", "1", *base,
           "--set", "optim.lr=0.5"]
    p = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    assert p.returncode != 0
    assert "differs from rank 0's" in p.stderr and "lr" in p.stderr, p.stderr


def rank_pids(marker):
    """pids of essence processes whose command line holds marker, by MPI rank."""
    pids = {}
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            cmd = (d / "cmdline").read_bytes().split(b"\0")
            env = (d / "environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if any(marker.encode() in c for c in cmd) and cmd[0].endswith(b"essence"):
            for e in env:
                if e.startswith(b"OMPI_COMM_WORLD_RANK="):
                    pids[int(e.split(b"=")[1])] = int(d.name)
    return pids


def test_killed_rank_ends_the_job(setup):
    out = setup / "killed"
    env = dict(os.environ, OMPI_MCA_rmaps_base_oversubscribe="1", OMP_NUM_THREADS="1")
    cmd = [MPIRUN, "--allow-run-as-root", "--oversubscribe", "-np", "2", str(ESSENCE), "train", "--config",
           str(setup / "run.json"), "--set", f"run.out={out}", "--set", "run.steps=100000000"]
    p = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 60
        while time.time() < deadline and not (out / "metrics.jsonl").exists():  # training is under way
            time.sleep(0.2)
        pids = rank_pids(str(out))
        assert 1 in pids, pids
        os.kill(pids[1], signal.SIGKILL)
        t0 = time.time()
        _, err = p.communicate(timeout=60)
        assert p.returncode != 0
        assert time.time() - t0 < 60
    finally:
        if p.poll() is None:
            p.kill()
            p.communicate()
    assert not rank_pids(str(out)), "a rank outlived the job"
