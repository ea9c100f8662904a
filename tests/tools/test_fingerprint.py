"""tools/tokenizer_fingerprint.py: the definition of docs/shards.md."""
import json
import struct

import pytest

from tokenizer_fingerprint import FNV_OFFSET, fingerprint


def fnv(data, h=FNV_OFFSET):
    for b in data:
        h = ((h ^ b) * 0x100000001B3) % 2**64
    return h


def write(tmp_path, tok):
    (tmp_path / "tokenizer.json").write_text(json.dumps(tok), encoding="utf-8")
    return tmp_path


def test_definition_by_hand(tmp_path):
    tok = {"model": {"vocab": {"b": 1, "é": 0}}, "added_tokens": [{"id": 3, "content": "<s>"}]}
    want = fnv(struct.pack("<II", 0, 2) + "é".encode() + struct.pack("<II", 1, 1) + b"b" + struct.pack("<II", 3, 3) + b"<s>")
    assert fingerprint(write(tmp_path, tok)) == (want, 4)


def test_added_token_replaces_same_id_and_unigram(tmp_path):
    a = fingerprint(write(tmp_path, {"model": {"vocab": {"a": 0, "x": 1}}, "added_tokens": [{"id": 1, "content": "<s>"}]}))
    b = fingerprint(write(tmp_path, {"model": {"vocab": {"a": 0, "<s>": 1}}}))
    c = fingerprint(write(tmp_path, {"model": {"type": "Unigram", "vocab": [["a", 0.0], ["<s>", -2.0]]}}))
    assert a == b == c


def test_any_change_changes_it(tmp_path):
    a = fingerprint(write(tmp_path, {"model": {"vocab": {"a": 0, "b": 1}}}))
    assert fingerprint(write(tmp_path, {"model": {"vocab": {"a": 1, "b": 0}}}))[0] != a[0]
    assert fingerprint(write(tmp_path, {"model": {"vocab": {"a": 0, "bb": 1}}}))[0] != a[0]


@pytest.mark.parametrize("tok,msg", [
    ({"model": {"vocab": {"a": 0, "b": 0}}}, "id 0"),
    ({"model": {}}, "model.vocab"),
    ({"model": {"vocab": {}}}, "empty"),
])
def test_bad_tokenizer(tmp_path, tok, msg):
    with pytest.raises(ValueError, match=msg):
        fingerprint(write(tmp_path, tok))
