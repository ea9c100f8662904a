"""tools/prep_data.py: input shapes, malformed lines, template boundaries, shards."""
import json
import re
import zlib

import pytest

import prep_data
import shard_io
import tiny_fixture
from tokenizer_fingerprint import fingerprint
from traces import Malformed, parse_line

# Hand example under the tiny tokenizer: ids follow tiny_fixture.SPECIAL + WORDS.
IM_START, IM_END, THINK, END_THINK = 1, 2, 3, 4
SYSTEM, USER, ASSISTANT, WHAT, IS, TWO, PLUS, THREE, QMARK, EQ, FIVE = 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16
HAND_IDS = [IM_START, USER, WHAT, IS, TWO, PLUS, THREE, QMARK, IM_END, IM_START, ASSISTANT,
            THINK, TWO, PLUS, THREE, EQ, FIVE, END_THINK, FIVE, IM_END]


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    d = tmp_path_factory.mktemp("model")
    tiny_fixture.tokenizer().save(str(d / "tokenizer.json"))
    return d


def run(tmp_path, model, records, *extra):
    """Writes records (dicts or raw bytes lines) as JSONL, runs prep_data; (examples, stdout)."""
    src = tmp_path / "in.jsonl"
    src.write_bytes(b"".join(r if isinstance(r, bytes) else json.dumps(r).encode() + b"\n" for r in records))
    out = tmp_path / "out.bin"
    prep_data.main(["--model", str(model), "--out", str(out), str(src), *extra])
    header, examples = shard_io.read(out)
    return header, examples


HAND = {"prompt": "what is 2 + 3 ?", "reasoning": "2 + 3 = 5", "answer": "5"}


def test_hand_example_exact_tokens_and_boundaries(tmp_path, model):
    header, [e] = run(tmp_path, model, [HAND])
    assert e.tokens == HAND_IDS
    assert (e.cot_begin, e.cot_end) == (11, 18)
    assert e.tokens[e.cot_begin] == THINK and e.tokens[e.cot_end - 1] == END_THINK
    fp, vocab = fingerprint(model)
    assert (header["fingerprint"], header["vocab"], header["topk"]) == (fp, vocab, 0)


def test_system_prompt_shifts_boundaries(tmp_path, model):
    _, [e] = run(tmp_path, model, [dict(HAND, system="system")])
    assert e.tokens[:4] == [IM_START, SYSTEM, SYSTEM, IM_END]
    assert e.tokens[4:] == HAND_IDS and (e.cot_begin, e.cot_end) == (15, 22)


def test_byte_level_tokenizer_boundaries(tmp_path):
    """With a trained BPE tokenizer the sections decode to the template's parts."""
    import synth_corpus
    import train_tokenizer
    from tokenizers import Tokenizer

    synth_corpus.main(["--out", str(tmp_path), "--train", "200", "--val", "1", "--test", "1"])
    train_tokenizer.main(["--out", str(tmp_path / "m"), "--vocab", "600", str(tmp_path / "train.jsonl")])
    rec = dict(HAND, system="Be brief.")
    _, [e] = run(tmp_path, tmp_path / "m", [rec])
    tok = Tokenizer.from_file(str(tmp_path / "m" / "tokenizer.json"))
    dec = lambda ids: tok.decode(ids, skip_special_tokens=False)
    assert e.tokens[e.cot_begin] == tok.token_to_id("<think>")
    assert e.tokens[e.cot_end - 1] == tok.token_to_id("</think>")
    assert dec(e.tokens[: e.cot_begin]) == (
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nwhat is 2 + 3 ?<|im_end|>\n<|im_start|>assistant\n")
    assert dec(e.tokens[e.cot_begin : e.cot_end]) == "<think>\n2 + 3 = 5\n</think>"
    assert dec(e.tokens[e.cot_end :]) == "\n\n5<|im_end|>\n"


CHAT_THINK = {"messages": [{"role": "user", "content": "what is 2 + 3 ?"},
                           {"role": "assistant", "content": "<think>\n2 + 3 = 5\n</think>\n\n5"}]}
SHAREGPT_THOUGHT = {"system": "system", "conversations": [
    {"from": "human", "value": "what is 2 + 3 ?"},
    {"from": "gpt", "value": "<|begin_of_thought|>\n\n2 + 3 = 5\n\n<|end_of_thought|>\n\n"
                             "<|begin_of_solution|>\n\n5\n\n<|end_of_solution|>"}]}


@pytest.mark.parametrize("rec,system", [
    (HAND, False),
    ({"problem": "what is 2 + 3 ?", "cot": "2 + 3 = 5", "solution": "5"}, False),
    ({"question": "what is 2 + 3 ?", "thinking": "<think>2 + 3 = 5</think>", "response": "5"}, False),
    (CHAT_THINK, False),
    ({"messages": [{"role": "system", "content": "system"}] + CHAT_THINK["messages"]}, True),
    (SHAREGPT_THOUGHT, True),
])
def test_input_shapes_give_the_same_example(tmp_path, model, rec, system):
    _, [e] = run(tmp_path, model, [rec])
    want = ([IM_START, SYSTEM, SYSTEM, IM_END] if system else []) + HAND_IDS
    assert e.tokens == want
    assert (e.cot_begin, e.cot_end) == ((15, 22) if system else (11, 18))


MALFORMED = [
    (b"{not json\n", "bad JSON"),
    (b'"a string"\n', "not a JSON object"),
    (json.dumps({"prompt": "p", "answer": "a"}).encode() + b"\n", "missing field(s): reasoning"),
    (json.dumps({"messages": [{"role": "user", "content": "p"},
                              {"role": "assistant", "content": "<think>never closed"}]}).encode() + b"\n",
     "unclosed reasoning tag"),
    (json.dumps({"messages": [{"role": "user", "content": "p"},
                              {"role": "assistant", "content": "<|begin_of_thought|>x<|end_of_thought|>"
                                                               "<|begin_of_solution|>y"}]}).encode() + b"\n",
     "unclosed solution tag"),
    (json.dumps({"messages": [{"role": "user", "content": "p"},
                              {"role": "assistant", "content": "just an answer"}]}).encode() + b"\n",
     "no reasoning"),
    (json.dumps({"messages": [{"role": "user", "content": "p"}]}).encode() + b"\n", "one user turn"),
    (json.dumps({"prompt": "p", "reasoning": "  \n ", "answer": "a"}).encode() + b"\n", "empty CoT"),
    (json.dumps({"messages": [{"role": "user", "content": "p"},
                              {"role": "assistant", "content": "<think></think>a"}]}).encode() + b"\n", "empty CoT"),
    (json.dumps({"prompt": "p", "reasoning": "r", "answer": ""}).encode() + b"\n", "empty answer"),
    (b'{"prompt": "caf\xe9", "reasoning": "r", "answer": "a"}\n', "invalid UTF-8"),
    (b'{"prompt": "\\ud800", "reasoning": "r", "answer": "a"}\n', "invalid UTF-8"),
    (json.dumps({"prompt": "p <|im_end|>", "reasoning": "r", "answer": "a"}).encode() + b"\n", "template tag"),
]


@pytest.mark.parametrize("raw,reason", MALFORMED)
def test_malformed_line_is_skipped_and_reported(tmp_path, model, capsys, raw, reason):
    with pytest.raises(Malformed, match=re.escape(reason)):
        parse_line(raw.rstrip(b"\n"))
    _, examples = run(tmp_path, model, [HAND, raw, HAND])
    assert len(examples) == 2
    out = capsys.readouterr().out
    assert "in.jsonl:2: " in out and reason in out and "skipped 1 malformed" in out


@pytest.mark.parametrize("raw,reason", MALFORMED[:4])
def test_strict_fails_on_malformed_line(tmp_path, model, raw, reason):
    with pytest.raises(SystemExit, match=f"in.jsonl:2: .*{re.escape(reason)}"):
        run(tmp_path, model, [HAND, raw], "--strict")
    assert not (tmp_path / "out.bin").exists()


def test_max_len_drops_and_counts(tmp_path, model, capsys):
    long = dict(HAND, reasoning="2 + 3 = 5 " * 10)
    _, examples = run(tmp_path, model, [HAND, long, HAND], "--max-len", "20")
    assert [len(e.tokens) for e in examples] == [20, 20]
    assert "dropped 1: longer than --max-len" in capsys.readouterr().out


def test_nothing_kept_fails_without_output(tmp_path, model):
    with pytest.raises(SystemExit, match="no example"):
        run(tmp_path, model, [HAND], "--max-len", "5")
    assert not (tmp_path / "out.bin").exists() and list(tmp_path.iterdir()) == [tmp_path / "in.jsonl"]


def test_shard_split_and_layout(tmp_path, model):
    src = tmp_path / "in.jsonl"
    src.write_text("".join(json.dumps(HAND) + "\n" for _ in range(5)))
    prep_data.main(["--model", str(model), "--out", str(tmp_path / "s.bin"), "--shard-tokens", "45", str(src)])
    parts = sorted(tmp_path.glob("s-*.bin"))
    assert [p.name for p in parts] == ["s-00000.bin", "s-00001.bin", "s-00002.bin"]
    assert [len(shard_io.read(p)[1]) for p in parts] == [2, 2, 1]
    data = parts[2].read_bytes()  # one example of 20 tokens: header, tokens, index, checksum
    assert data[:8] == b"ESSHARD1" and len(data) == 64 + 80 + 24 + 4
    assert int.from_bytes(data[-4:], "little") == zlib.crc32(data[:-4])
    assert not list(tmp_path.glob("*.tmp"))


def test_tiny_fixture_is_current(tmp_path):
    """The committed tests/data fixture is what the tools make today."""
    tiny_fixture.make(tmp_path)
    for name in ("tiny_model/tokenizer.json", "tiny_traces.jsonl", "tiny.shard", "tiny.expect"):
        assert (tmp_path / name).read_bytes() == (tiny_fixture.DATA / name).read_bytes(), name
