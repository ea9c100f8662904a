"""The same run on any number of ranks (issue 16, item 1): with
batch.step_examples = 8 on the synthetic corpus, which 2 and 3 ranks cannot
split evenly, `mpirun -np 2` and `-np 3` take the micro-batches of `-np 1`,
step for step, and end with its weights (within 1e-5 relative), with and
without ZeRO-1; a run checkpointed on 3 ranks and resumed on 2 continues the
same data order."""
import json
import os
import shutil
import subprocess

import numpy as np
import pytest
from safetensors.numpy import load_file

from train_env import ROOT, essence_bin, run_config

MPIRUN = shutil.which("mpirun")
pytestmark = pytest.mark.skipif(MPIRUN is None, reason="mpirun not installed (apt install openmpi-bin libopenmpi-dev)")
STEPS = 4


def train(n, cfg, *sets):
    env = dict(os.environ, OMPI_MCA_rmaps_base_oversubscribe="1", OMP_NUM_THREADS="1")
    cmd = [MPIRUN, "--allow-run-as-root", "--oversubscribe", "-np", str(n), str(essence_bin()), "train",
           "--config", str(cfg), "--set", "run.threads=1"]
    for s in sets:
        cmd += ["--set", s]
    p = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    return p


def plan(stdout):
    line = next(ln for ln in stdout.splitlines() if ln.startswith("batching:"))
    return int(line.split("tokens, ")[1].split()[0]), int(line.split("; ")[1].split()[0])


def losses(out):
    rows = [json.loads(ln) for ln in (out / "metrics.jsonl").read_text().splitlines()]
    return np.array([r["loss"] for r in rows if r["kind"] == "train"])


def weights(out):
    return load_file(str(sorted(out.glob("ckpt-*"))[-1] / "model.safetensors"))


def max_rel(ref, got):
    wa, wb = weights(ref), weights(got)
    assert wa.keys() == wb.keys()
    return max(float(np.linalg.norm(wa[k] - wb[k]) / np.linalg.norm(wa[k])) for k in wa)


@pytest.fixture(scope="module")
def one_rank(tmp_path_factory, corpus):
    tmp = tmp_path_factory.mktemp("ranks")
    # a learning rate that does not depend on run.steps, so that the resume test may stop half-way
    cfg = run_config(tmp, corpus, tmp / "np1", data={"val": []}, run={"steps": STEPS},
                     optim={"schedule": "constant", "warmup": 0})
    p = train(1, cfg)
    return tmp, cfg, plan(p.stdout)


def assert_same_run(ref, out):
    la, lb = losses(ref), losses(out)
    assert len(la) == len(lb) == STEPS and np.all(np.isfinite(lb))
    assert np.max(np.abs(la - lb) / np.abs(la)) < 1e-5, (la, lb)
    assert max_rel(ref, out) < 1e-5


@pytest.mark.parametrize("zero1", ["false", "true"])
@pytest.mark.parametrize("n", [2, 3])
def test_ranks_take_the_steps_of_one_rank(one_rank, n, zero1):
    tmp, cfg, plan1 = one_rank
    assert plan1[0] % 2 and plan1[0] % 3, plan1  # a step neither 2 nor 3 ranks split evenly
    out = tmp / f"np{n}-zero{zero1}"
    p = train(n, cfg, f"run.out={out}", f"run.zero1={zero1}")
    assert plan(p.stdout) == plan1, p.stdout
    assert_same_run(tmp / "np1", out)


def test_checkpoint_of_3_ranks_resumes_on_2(one_rank):
    tmp, cfg, _ = one_rank
    out = tmp / "resume-3-2"
    train(3, cfg, f"run.out={out}", f"run.steps={STEPS // 2}", "run.zero1=true")
    p = train(2, cfg, f"run.out={out}", "run.zero1=true")
    assert f"at step {STEPS // 2}" in p.stdout, p.stdout
    assert_same_run(tmp / "np1", out)
