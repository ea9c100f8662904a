"""Streaming records from the files a dataset comes in: JSONL, a JSON array,
Parquet, Arrow (`datasets` save_to_disk), or a folder of them as the hub lays
a dataset out (data/train-00000-of-0000N.parquet ...).

iterate(paths) yields (where, item, done): where names the file and line or
row, item is a dict, raw JSONL bytes (parsed by the caller, in a worker) or a
Malformed, done the fraction of the input bytes read so far. Memory holds one
Parquet/Arrow record batch or one JSON value at a time, whatever the size.
"""
import json
import os
from pathlib import Path

from traces import Malformed

SUFFIXES = (".jsonl", ".json", ".parquet", ".arrow")
BATCH_ROWS = 1024  # Parquet rows decoded at a time
JSON_CHUNK = 1 << 20


class InputError(ValueError):
    """An input that cannot be read at all: the message names the file and the problem."""


def expand(paths, split="train"):
    """The data files of paths: files as given; a folder's data files of the
    split (names containing it, when any do), sorted."""
    files = []
    for p in map(Path, paths):
        if not p.is_dir():
            if not p.exists():
                raise InputError(f"{p}: no such file or directory")
            files.append(p)
            continue
        found = sorted(f for f in p.rglob("*") if f.is_file() and f.suffix in SUFFIXES
                       and not f.name.startswith(".") and f.name not in ("dataset_info.json", "state.json",
                                                                         "dataset_dict.json"))
        of_split = [f for f in found if split in f.relative_to(p).as_posix()]
        if not (of_split or found):
            raise InputError(f"{p}: no .jsonl, .json, .parquet or .arrow files in the folder")
        files += of_split or found
    return files


def _jsonl(path):
    with open(path, "rb") as f:
        for n, raw in enumerate(f, 1):
            if raw.strip():
                yield f"{path}:{n}", raw, f.tell()


def _json_array(path):
    """Elements of a top-level JSON array, decoded one at a time."""
    dec = json.JSONDecoder()
    with open(path, encoding="utf-8", errors="surrogateescape") as f:
        buf, pos, eof, n, read = "", 0, False, 0, 0

        def fill():
            nonlocal buf, pos, eof, read
            chunk = f.read(JSON_CHUNK)
            read += len(chunk)
            eof = not chunk
            buf, pos = buf[pos:] + chunk, 0

        def skip_space():
            nonlocal pos
            while True:
                while pos < len(buf) and buf[pos].isspace():
                    pos += 1
                if pos < len(buf) or eof:
                    return
                fill()

        fill()
        skip_space()
        if buf[pos:pos + 1] != "[":
            raise InputError(f"{path}: not a JSON array (nor JSONL: name it .jsonl)")
        pos += 1
        while True:
            skip_space()
            if buf[pos:pos + 1] == "]":
                return
            if n and buf[pos:pos + 1] == ",":
                pos += 1
                skip_space()
            elif n:
                raise InputError(f"{path}: element {n + 1}: expected ',' or ']'")
            while True:
                try:
                    value, end = dec.raw_decode(buf, pos)
                    break
                except json.JSONDecodeError as e:
                    if eof:
                        raise InputError(f"{path}: element {n + 1}: bad JSON ({e.msg})") from None
                    fill()  # the element runs past the buffer
            pos, n = end, n + 1
            yield f"{path}[{n - 1}]", value if isinstance(value, dict) else Malformed("record is not a JSON object"), read


def _arrow_batches(path):
    """(record batches, total rows) of a Parquet or Arrow file."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        if path.suffix == ".parquet":
            pf = pq.ParquetFile(path)
            return pf.iter_batches(batch_size=BATCH_ROWS), pf.metadata.num_rows
        try:
            reader = pa.ipc.open_stream(pa.memory_map(str(path)))  # what save_to_disk writes
        except pa.ArrowInvalid:
            reader = pa.ipc.open_file(pa.memory_map(str(path)))
            return (reader.get_batch(i) for i in range(reader.num_record_batches)), reader.count_rows()
        return reader, None
    except (pa.ArrowException, OSError) as e:
        raise InputError(f"{path}: cannot read as {path.suffix[1:]}: {e}") from None


def _table(path):
    batches, total = _arrow_batches(path)
    size, row = os.path.getsize(path), 0
    try:
        for batch in batches:
            for rec in batch.to_pylist():
                row += 1
                yield f"{path}:row {row}", rec, size * row // total if total else 0
    except Exception as e:  # pyarrow raises several kinds on a damaged file
        raise InputError(f"{path}: damaged after row {row}: {e}") from None


def iterate(paths, split="train"):
    files = expand(paths, split)
    sizes = [os.path.getsize(f) for f in files]
    total, before = max(1, sum(sizes)), 0
    for f, size in zip(files, sizes):
        if f.suffix in (".parquet", ".arrow"):
            items = _table(f)
        elif f.suffix == ".json" and _starts_array(f):
            items = _json_array(f)
        else:
            items = _jsonl(f)
        for where, item, at in items:
            yield where, item, (before + at) / total
        before += size


def _starts_array(path):
    with open(path, "rb") as f:
        return f.read(4096).lstrip()[:1] == b"["
