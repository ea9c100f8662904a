"""Data shards (docs/shards.md): the Python writer and a reader for tests."""
import os
import shutil
import struct
import sys
import tempfile
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


class Writer:
    """A shard written example by example into a temporary file in the same
    folder; finish() completes it, commit() renames it into place (or, for
    '-', a device or a FIFO, copies it there: out_file.is_direct), discard()
    removes it. Memory holds the index only, never the tokens."""

    def __init__(self, path, vocab, fingerprint):
        self.path, self.vocab, self.fingerprint = Path(path), vocab, fingerprint
        self.direct = out_file.is_direct(path)
        # The header's checksum needs a seekable file: a direct target gets a temporary one elsewhere.
        where = None if self.direct else (self.path.parent or ".")
        fd, self.tmp = tempfile.mkstemp(prefix=self.path.name + ".", suffix=".tmp", dir=where)
        umask = os.umask(0)
        os.umask(umask)
        os.fchmod(fd, 0o666 & ~umask)  # as an ordinary new file, not mkstemp's 0600
        self.f = os.fdopen(fd, "w+b")
        self.f.write(b"\0" * HEADER.size)
        self.lens, self.begins, self.ends, self.ntokens = [], [], [], 0

    def add(self, tokens, cot_begin, cot_end):
        self.f.write(np.asarray(tokens, dtype="<u4").tobytes())
        self.lens.append(len(tokens))
        self.begins.append(cot_begin)
        self.ends.append(cot_end)
        self.ntokens += len(tokens)

    def finish(self):
        if not self.lens:
            raise ValueError("a shard needs at least one example")
        index = np.zeros(len(self.lens), dtype=ENTRY)
        lens = np.array(self.lens, dtype=np.uint64)
        index["offset"] = np.concatenate([[0], np.cumsum(lens)[:-1]])
        index["len"], index["cot_begin"], index["cot_end"] = lens, self.begins, self.ends
        f = self.f
        f.write(b"\0\0\0\0" if self.ntokens % 2 else b"")
        f.write(index.tobytes())
        f.seek(0)
        f.write(HEADER.pack(MAGIC, VERSION, HEADER.size, self.vocab, 0, self.fingerprint, len(self.lens), self.ntokens))
        f.seek(0)
        crc = 0
        while chunk := f.read(1 << 22):  # the checksum covers the header, written last
            crc = zlib.crc32(chunk, crc)
        f.write(struct.pack("<I", crc))
        f.flush()
        os.fsync(f.fileno())
        f.close()

    def commit(self):
        if not self.direct:
            os.replace(self.tmp, self.path)
            return
        with open(self.tmp, "rb") as src:
            if str(self.path) == "-":
                shutil.copyfileobj(src, sys.stdout.buffer)
                sys.stdout.buffer.flush()
            else:
                with open(self.path, "wb") as dst:
                    shutil.copyfileobj(src, dst)
        os.unlink(self.tmp)

    def discard(self):
        self.f.close()  # closing twice is harmless
        if os.path.exists(self.tmp):
            os.unlink(self.tmp)


def write(path, examples, vocab, fingerprint):
    """Writes a shard of examples atomically, or straight to a device."""
    w = Writer(path, vocab, fingerprint)
    try:
        for e in examples:
            w.add(e.tokens, e.cot_begin, e.cot_end)
        w.finish()
        w.commit()
    except BaseException:
        w.discard()
        raise


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
