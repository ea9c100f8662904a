"""The tiny shard fixture of tests/data/, read back by tests/test_shard.c.

A hand-made word-level tokenizer (some tokens non-ASCII, so that the C and
Python fingerprints are compared on UTF-8), a few traces of each input
shape, the shard tools/prep_data.py makes from them, and an independent
description of what that shard must hold (tiny.expect). test_tiny_fixture
checks that these files are current; run this file to remake them.
"""
import json
import sys
from pathlib import Path

from tokenizers import Tokenizer, models, pre_tokenizers

ROOT = Path(__file__).resolve().parents[2]
DATA = ROOT / "tests" / "data"
SPECIAL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<think>", "</think>"]
WORDS = ["[UNK]", "system", "user", "assistant", "what", "is", "2", "+", "3", "?", "=", "5", "so", "the", "answer",
         "\\", "boxed", "{", "}", "}.", "you", "are", "helpful", ".", "café", "naïve", "∑", "4", "7", "think"]
TRACES = [
    {"prompt": "what is 2 + 3 ?", "reasoning": "2 + 3 = 5", "answer": "5"},
    {"messages": [{"role": "system", "content": "you are helpful ."},
                  {"role": "user", "content": "what is 3 + 4 ?"},
                  {"role": "assistant", "content": "<think>\n3 + 4 = 7 so 7\n</think>\n\nthe answer is \\boxed{7}."}]},
    {"conversations": [{"from": "human", "value": "café ∑ naïve ?"},
                       {"from": "gpt", "value": "<|begin_of_thought|>think think<|end_of_thought|>\n\n"
                                                "<|begin_of_solution|>so 5<|end_of_solution|>"}]},
    {"question": "what is 2 + 2 ?", "cot": "2 + 2 = 4"},  # no answer: skipped
]


def tokenizer():
    vocab = {t: i for i, t in enumerate(SPECIAL + WORDS)}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.add_special_tokens(SPECIAL)
    return tok


def expect_text(fingerprint, vocab, examples):
    lines = [f"fingerprint {fingerprint:016x}", f"vocab {vocab}", f"docs {len(examples)}"]
    for e in examples:
        lines.append(f"doc {len(e.tokens)} {e.cot_begin} {e.cot_end}")
        lines.append(" ".join(map(str, e.tokens)))
    return "\n".join(lines) + "\n"


def make(out):
    """Writes the fixture files into folder out (tokenizer, traces, shard, expect)."""
    sys.path.insert(0, str(ROOT / "tools"))
    import prep_data
    from shard_io import read
    from tokenizer_fingerprint import fingerprint

    (out / "tiny_model").mkdir(parents=True, exist_ok=True)
    tokenizer().save(str(out / "tiny_model" / "tokenizer.json"))
    traces = out / "tiny_traces.jsonl"
    traces.write_text("".join(json.dumps(t, ensure_ascii=False) + "\n" for t in TRACES), encoding="utf-8")
    prep_data.main(["--model", str(out / "tiny_model"), "--out", str(out / "tiny.shard"), str(traces)])
    fp, vocab = fingerprint(out / "tiny_model")
    _, examples = read(out / "tiny.shard")
    (out / "tiny.expect").write_text(expect_text(fp, vocab, examples))


if __name__ == "__main__":
    make(DATA)
