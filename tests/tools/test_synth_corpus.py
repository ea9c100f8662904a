"""tools/synth_corpus.py: determinism, checkable answers, length range."""
import ast
import json
import operator
import re
from fractions import Fraction

import pytest

import synth_corpus

OPS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv}
STEP = re.compile(r"(\d+) ([-+*/]) (\d+) = (\d+)")


def evaluate(node):
    if isinstance(node, ast.Expression):
        return evaluate(node.body)
    if isinstance(node, ast.BinOp) and type(node.op) in OPS:
        return OPS[type(node.op)](evaluate(node.left), evaluate(node.right))
    if isinstance(node, ast.Constant) and isinstance(node.value, int):
        return Fraction(node.value)
    raise ValueError(f"unexpected expression node {ast.dump(node)}")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    d = tmp_path_factory.mktemp("synth")
    synth_corpus.main(["--out", str(d), "--seed", "7", "--train", "600", "--val", "100", "--test", "100"])
    return d


def load(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_deterministic(corpus, tmp_path):
    synth_corpus.main(["--out", str(tmp_path), "--seed", "7", "--train", "600", "--val", "100", "--test", "100"])
    for split in ("train", "val", "test"):
        assert (tmp_path / f"{split}.jsonl").read_bytes() == (corpus / f"{split}.jsonl").read_bytes()
    synth_corpus.main(["--out", str(tmp_path), "--seed", "8", "--train", "600", "--val", "1", "--test", "1"])
    assert (tmp_path / "train.jsonl").read_bytes() != (corpus / "train.jsonl").read_bytes()


def test_every_answer_and_step_checks_out(corpus):
    for split in ("train", "val", "test"):
        for rec in load(corpus / f"{split}.jsonl"):
            value = evaluate(ast.parse(rec["expr"], mode="eval"))
            assert value == rec["value"] and value >= 0, rec["expr"]
            assert re.fullmatch(r".*\\boxed\{(\d+)\}.*", rec["answer"]).group(1) == str(rec["value"])
            steps = STEP.findall(rec["reasoning"])
            assert steps
            for a, op, b, c in steps:
                assert OPS[{"+": ast.Add, "-": ast.Sub, "*": ast.Mult, "/": ast.Div}[op]](Fraction(a), Fraction(b)) == int(c)


def test_levels_and_splits(corpus):
    train, val, test = (load(corpus / f"{s}.jsonl") for s in ("train", "val", "test"))
    assert (len(train), len(val), len(test)) == (600, 100, 100)
    assert {r["level"] for r in train} == {1, 2, 3, 4, 5}
    prompts = [r["prompt"] for r in train + val + test]
    assert len(set(prompts)) == len(prompts)
    # Harder levels reason longer.
    mean = {lv: sum(len(r["reasoning"]) for r in train if r["level"] == lv) / sum(r["level"] == lv for r in train)
            for lv in range(1, 6)}
    assert all(mean[lv] < mean[lv + 1] for lv in range(1, 5))


def test_cot_token_lengths_span_the_range(corpus, tmp_path):
    """Under a tokenizer trained on the corpus, CoTs run from ~50 to ~1500 tokens."""
    import prep_data
    import shard_io
    import train_tokenizer

    train_tokenizer.main(["--out", str(tmp_path / "m"), str(corpus / "train.jsonl")])
    prep_data.main(["--model", str(tmp_path / "m"), "--out", str(tmp_path / "t.bin"), str(corpus / "train.jsonl")])
    _, examples = shard_io.read(tmp_path / "t.bin")
    cot = sorted(e.cot_end - e.cot_begin for e in examples)
    assert len(examples) == 600
    assert 30 <= cot[0] <= 80 and 1000 <= cot[-1] <= 2000, (cot[0], cot[-1])


@pytest.mark.parametrize("max_value,max_delta", [(40, 9), (12, 3)])
def test_chain_traces(tmp_path, max_value, max_delta):
    """--style chain: checkable steps inside the chosen ranges, the answer fixed
    early in the CoT (late with --late), and the same problems in both
    variants, worded apart."""
    early, late = tmp_path / "early", tmp_path / "late"
    extra = ["--max-value", str(max_value), "--max-delta", str(max_delta)]
    for out, flags in ((early, []), (late, ["--late"])):
        synth_corpus.main(["--out", str(out), "--style", "chain", "--seed", "3", "--train", "200", "--val", "1",
                           "--test", "1"] + flags + extra)
    for e, l in zip(load(early / "train.jsonl"), load(late / "train.jsonl")):
        assert e["value"] == l["value"] and e["prompt"].split(" ", 1)[1] == l["prompt"].split(" ", 1)[1]
        assert e["prompt"].startswith("Start") and l["prompt"].startswith("Begin")
        assert evaluate(ast.parse(e["expr"], mode="eval")) == e["value"]
        for a, op, b, c in STEP.findall(e["reasoning"]):
            assert (int(a) + int(b) if op == "+" else int(a) - int(b)) == int(c)
            assert 0 <= int(c) <= max_value and 1 <= int(b) <= max_delta, (a, op, b, c)
        assert 1 <= int(e["prompt"].split()[1].rstrip(":")) <= max_value // 2
        fixed = e["reasoning"].index("So the result is")
        assert fixed < 0.25 * len(e["reasoning"])
        assert l["reasoning"].index("So the result is") > 0.85 * len(l["reasoning"])
        assert len(e["reasoning"]) > 5 * len(e["prompt"]) and len(l["reasoning"]) > 5 * len(l["prompt"])
