"""Data shards (docs/shards.md): the Python writer and a reader for tests."""
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

import out_file

MAGIC = b"ESSHARD1"
VERSION = 1
HEADER = struct.Struct("<8sIIIIQQQ16x")  # 64 bytes
ENTRY = np.dtype([("offset", "<u8"), ("len", "<u4"), ("cot_begin", "<u4"), ("cot_end", "<u4"), ("reserved", "<u4")])


@dataclass
class Example:
    tokens: list  # token ids
    cot_begin: int  # index of the <think> token
    cot_end: int  # index after the </think> token


def encode(examples, vocab, fingerprint):
    """The bytes of a shard holding examples (no teacher top-k)."""
    if not examples:
        raise ValueError("a shard needs at least one example")
    tokens = np.concatenate([np.asarray(e.tokens, dtype="<u4") for e in examples])
    index = np.zeros(len(examples), dtype=ENTRY)
    lens = np.array([len(e.tokens) for e in examples], dtype=np.uint64)
    index["offset"] = np.concatenate([[0], np.cumsum(lens)[:-1]])
    index["len"] = lens
    index["cot_begin"] = [e.cot_begin for e in examples]
    index["cot_end"] = [e.cot_end for e in examples]
    parts = [
        HEADER.pack(MAGIC, VERSION, HEADER.size, vocab, 0, fingerprint, len(examples), len(tokens)),
        tokens.tobytes(),
        b"\0\0\0\0" if len(tokens) % 2 else b"",
        index.tobytes(),
    ]
    crc = 0
    for p in parts:
        crc = zlib.crc32(p, crc)
    return b"".join(parts) + struct.pack("<I", crc)


def write(path, examples, vocab, fingerprint):
    """Writes a shard atomically (a temporary file in the same folder, renamed), or straight to a device."""
    out_file.write_bytes(path, encode(examples, vocab, fingerprint))


def read(path):
    """(header dict, list of Example); checks the checksum and sizes only."""
    data = Path(path).read_bytes()
    if len(data) < HEADER.size + 4:
        raise ValueError(f"{path}: too short for a shard")
    magic, version, hbytes, vocab, topk, fp, ndocs, ntokens = HEADER.unpack_from(data)
    if magic != MAGIC or version != VERSION or hbytes != HEADER.size:
        raise ValueError(f"{path}: not a version {VERSION} shard")
    if struct.unpack_from("<I", data, len(data) - 4)[0] != zlib.crc32(data[:-4]):
        raise ValueError(f"{path}: checksum mismatch")
    tok_bytes = 4 * ntokens + (4 if ntokens % 2 else 0)
    if len(data) != HEADER.size + tok_bytes + ENTRY.itemsize * ndocs + 8 * ntokens * topk + 4:
        raise ValueError(f"{path}: size does not match the header")
    tokens = np.frombuffer(data, dtype="<u4", count=ntokens, offset=HEADER.size)
    index = np.frombuffer(data, dtype=ENTRY, count=ndocs, offset=HEADER.size + tok_bytes)
    examples = [
        Example(tokens[e["offset"] : e["offset"] + e["len"]].tolist(), int(e["cot_begin"]), int(e["cot_end"]))
        for e in index
    ]
    header = dict(vocab=vocab, topk=topk, fingerprint=fp, ndocs=ndocs, ntokens=ntokens)
    return header, examples
