"""essence generate --weights fp32|bf16|int8 on a fixture model: fp32 gives
transformers' greedy tokens; bf16 and int8 (packed decode weights) give the
same tokens on this model (tests/test_decode_weights.c states the agreement
over every fixture model); the run's line names the format."""
import json

import pytest

from train_env import ROOT, run_essence

FIXTURE = "qwen3_tied"


@pytest.fixture(scope="module")
def prompts(tmp_path_factory):
    fx = json.loads((ROOT / "tests" / "fixtures" / "generate" / f"{FIXTURE}.json").read_text())
    path = tmp_path_factory.mktemp("gen") / "prompts.jsonl"
    path.write_text("".join(json.dumps({"id": i, "prompt_ids": p}) + "\n" for i, p in enumerate(fx["prompts"])))
    return path, fx


@pytest.mark.parametrize("weights", ["fp32", "bf16", "int8"])
@pytest.mark.parametrize("batch", ["1", "2"])
def test_weights_formats(tmp_path, prompts, weights, batch):
    path, fx = prompts
    out = tmp_path / "out.jsonl"
    p = run_essence(["generate", "--model", ROOT / "tests" / "fixtures" / FIXTURE, "--in", path, "--out", out,
                     "--max-new", str(fx["max_new"]), "--batch", batch, "--weights", weights, "--device", "cpu"])
    assert f"{weights} weights" in p.stderr and "load " in p.stderr, p.stderr
    got = {r["id"]: r["ids"] for r in map(json.loads, out.read_text().splitlines())}
    assert got == dict(enumerate(fx["tokens"])), f"--weights {weights}: greedy tokens differ from transformers'"


def test_weights_reach_the_kernels(tmp_path):
    """On llama_linear a near tie of prompt 0 flips under bf16 (test_decode_weights prints it): the
    flag changes what decode reads, and only there."""
    fx = json.loads((ROOT / "tests" / "fixtures" / "generate" / "llama_linear.json").read_text())
    path = tmp_path / "prompts.jsonl"
    path.write_text("".join(json.dumps({"id": i, "prompt_ids": p}) + "\n" for i, p in enumerate(fx["prompts"])))
    got = {}
    for weights in ["fp32", "bf16"]:
        out = tmp_path / f"{weights}.jsonl"
        run_essence(["generate", "--model", ROOT / "tests" / "fixtures" / "llama_linear", "--in", path, "--out", out,
                     "--max-new", str(fx["max_new"]), "--weights", weights, "--device", "cpu"])
        got[weights] = {r["id"]: r["ids"] for r in map(json.loads, out.read_text().splitlines())}
    assert got["fp32"] == dict(enumerate(fx["tokens"]))
    assert got["bf16"][0] != got["fp32"][0]
    assert got["bf16"][1] == got["fp32"][1] and got["bf16"][2] == got["fp32"][2]
