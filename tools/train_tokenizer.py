#!/usr/bin/env python3
"""Trains a small byte-level BPE tokenizer on JSONL traces.

The tokenizer has the Qwen-style special tokens <|endoftext|>, <|im_start|>,
<|im_end|>, <think>, </think>, so that the chat template of prep_data.py
gives the same structure as with a real Qwen3 tokenizer. Writes
tokenizer.json and tokenizer_config.json into a model-style directory.

  python3 tools/train_tokenizer.py --out data/synth/model data/synth/train.jsonl
"""
import argparse
import json
import sys
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

import cli_args

SPECIAL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<think>", "</think>"]
MIN_VOCAB = 256 + len(SPECIAL)  # the byte alphabet and the special tokens


def texts(paths):
    for path in paths:
        with open(path, encoding="utf-8") as f:
            for n, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError as e:
                    sys.exit(f"train_tokenizer: {path}:{n}: not JSON ({e.msg})")
                if not isinstance(rec, dict):
                    sys.exit(f"train_tokenizer: {path}:{n}: not a JSON object")
                yield from (rec[k] for k in ("prompt", "reasoning", "answer") if isinstance(rec.get(k), str))


def train(paths, vocab_size):
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIAL, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(texts(paths), trainer=trainer)
    return tok


def main(argv=None):
    ap = cli_args.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("inputs", nargs="+", help="JSONL files (prompt, reasoning, answer fields)")
    ap.add_argument("--out", required=True, help="model directory to write")
    ap.add_argument("--vocab", type=cli_args.int_at_least(MIN_VOCAB), default=4096)
    args = ap.parse_args(argv)
    tok = train(args.inputs, args.vocab)
    if tok.get_vocab_size() <= MIN_VOCAB:
        sys.exit(f"train_tokenizer: {', '.join(args.inputs)}: no text to learn from (prompt, reasoning, answer)")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    tok.save(str(out / "tokenizer.json"))
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": None,
        "eos_token": "<|im_end|>",
        "pad_token": "<|endoftext|>",
        "add_bos_token": False,
        "model_max_length": 32768,
    }
    (out / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n")
    print(f"wrote {out / 'tokenizer.json'} ({tok.get_vocab_size()} tokens)")


if __name__ == "__main__":
    cli_args.run(main, "train_tokenizer")
