"""Tokenizer fingerprint: identifies a tokenizer by its vocabulary.

FNV-1a 64 over the (id, token) pairs of tokenizer.json's model.vocab and
added_tokens, sorted by id (docs/shards.md); engine/tokenizer_id.c computes
the same value, so the engine can refuse shards made with another tokenizer.
"""
import json
import struct
import sys
from pathlib import Path

FNV_OFFSET = 0xCBF29CE484222325
FNV_PRIME = 0x100000001B3
MASK = (1 << 64) - 1


def _fnv1a(h, data):
    for b in data:
        h = ((h ^ b) * FNV_PRIME) & MASK
    return h


def _pairs(tok, path):
    """id -> token of the vocabulary, added tokens replacing same-id entries."""
    vocab = tok.get("model", {}).get("vocab")
    if isinstance(vocab, list):  # Unigram: [token, score], id = position
        items = [(e[0], i) for i, e in enumerate(vocab)]
    elif isinstance(vocab, dict):
        items = list(vocab.items())
    else:
        raise ValueError(f"{path}: no model.vocab")
    by_id = {}
    for text, i in items:
        if i in by_id:
            raise ValueError(f'{path}: id {i} is given to both "{by_id[i]}" and "{text}"')
        by_id[i] = text
    added = {}
    for e in tok.get("added_tokens") or []:
        i = e["id"]
        if i in added:
            raise ValueError(f'{path}: id {i} is given to both "{added[i]}" and "{e["content"]}"')
        added[i] = e["content"]
    by_id.update(added)
    if not by_id:
        raise ValueError(f"{path}: empty vocabulary")
    return by_id


def fingerprint(model_dir):
    """(fingerprint, vocab size) of model_dir/tokenizer.json."""
    path = Path(model_dir) / "tokenizer.json"
    by_id = _pairs(json.loads(path.read_text(encoding="utf-8")), path)
    h = FNV_OFFSET
    for i in sorted(by_id):
        b = by_id[i].encode("utf-8")
        h = _fnv1a(h, struct.pack("<II", i, len(b)))
        h = _fnv1a(h, b)
    return h, max(by_id) + 1


if __name__ == "__main__":
    for d in sys.argv[1:]:
        fp, vocab = fingerprint(d)
        print(f"{d}: fingerprint {fp:016x}, vocabulary {vocab}")
