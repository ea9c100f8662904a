#!/usr/bin/env python3
"""Reasoning traces -> binary data shards (docs/shards.md).

Inputs are JSONL, JSON arrays, Parquet or Arrow files, or folders as the hub
lays a dataset out (records.py); records are explicit fields or chat records
(traces.py), with --columns naming a dataset's own columns. Each record is
rendered with the model directory's own chat template (chat_template.py),
tokenized with its tokenizer.json, and stored with its section boundaries.
Records over --max-len tokens are dropped; malformed records are skipped and
reported by line or row, or stop the run under --strict.

It streams: worker processes parse, render and tokenize chunks of records
while the main process appends them to the shard, so memory stays bounded
whatever the input size. Progress (examples/s, ETA) goes to a terminal. Shards
are written to temporary files and renamed into place only when all is done.

  python3 tools/prep_data.py --model DIR --out train.bin a.jsonl [hub-folder ...]
  python3 tools/prep_data.py --model DIR --out t.bin --columns reasoning=deepseek_reasoning,answer=deepseek_solution d/
"""
import argparse
import os
import sys
import time
from collections import Counter, deque
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer

import chat_template
import cli_args
import records
import shard_io
from tokenizer_fingerprint import fingerprint
from traces import COLUMNS, Malformed, parse_line, parse_record

REPORT_LINES = 20  # malformed lines listed one by one; the rest are counted
CHUNK = 256  # records per task: large enough to amortise the hand-off, small for memory
PROGRESS_S = 5.0

_worker = None  # (tokenizer, template, columns, max_len) in each worker process


def _init(model, columns, max_len):
    global _worker
    tokenizer = Tokenizer.from_file(str(Path(model) / "tokenizer.json"))
    _worker = (tokenizer, chat_template.ChatTemplate.load(model)[0], columns, max_len)


def _process(chunk):
    """[(where, tokens | reason, cot_begin, cot_end)]: tokens an array, or the reason a record is not kept."""
    tokenizer, template, columns, max_len = _worker
    out, texts = [], []
    for where, item in chunk:
        try:
            if isinstance(item, Malformed):
                raise item
            trace = parse_line(item, columns) if isinstance(item, bytes) else parse_record(item, columns)
            texts.append(template.trace(trace))
            out.append([where, None, 0, 0])
        except Malformed as e:
            out.append([where, Malformed(str(e)), 0, 0])
    encodings = iter(tokenizer.encode_batch([t[0] for t in texts], add_special_tokens=False))
    spans = iter(texts)
    for row in out:
        if row[1] is not None:
            continue
        enc, (_, start, end) = next(encodings), next(spans)
        if len(enc.ids) > max_len:
            row[1] = "longer than --max-len"
            continue
        e = chat_template.example(enc, start, end)
        row[1:] = np.asarray(e.tokens, dtype=np.uint32), e.cot_begin, e.cot_end
    return out


def _chunks(items):
    chunk = []
    for where, item, done in items:
        chunk.append((where, item))
        if len(chunk) == CHUNK:
            yield chunk, done
            chunk = []
    if chunk:
        yield chunk, 1.0


def results(items, workers, init_args):
    """(results of _process, fraction done) per chunk, in input order. At most
    2 chunks per worker are in flight, so memory does not grow with the input."""
    if workers <= 1:
        _init(*init_args)
        for chunk, done in _chunks(items):
            yield _process(chunk), done
        return
    with ProcessPoolExecutor(workers, initializer=_init, initargs=init_args) as pool:
        pending = deque()
        for chunk, done in _chunks(items):
            pending.append((pool.submit(_process, chunk), done))
            if len(pending) >= 2 * workers:
                f, d = pending.popleft()
                yield f.result(), d
        while pending:
            f, d = pending.popleft()
            yield f.result(), d


class Shards:
    """The output shards, split at --shard-tokens; nothing is renamed into place before commit()."""

    def __init__(self, out, shard_tokens, vocab, fp):
        self.out, self.shard_tokens, self.vocab, self.fp = Path(out), shard_tokens, vocab, fp
        self.done, self.cur = [], None

    def _path(self, i):
        return self.out if not self.shard_tokens else self.out.with_name(f"{self.out.stem}-{i:05d}{self.out.suffix}")

    def add(self, tokens, cot_begin, cot_end):
        if self.cur and self.shard_tokens and self.cur.ntokens + len(tokens) > self.shard_tokens:
            self.cur.finish()
            self.done.append(self.cur)
            self.cur = None
        if self.cur is None:
            self.cur = shard_io.Writer(self._path(len(self.done)), self.vocab, self.fp)
        self.cur.add(tokens, cot_begin, cot_end)

    def writers(self):
        return self.done + ([self.cur] if self.cur else [])

    def commit(self):
        if self.cur:
            self.cur.finish()
            self.done.append(self.cur)
            self.cur = None
        for w in self.done:
            w.commit()
        return [w.path for w in self.done]

    def discard(self):
        for w in self.writers():
            w.discard()


def percentiles(values):
    p = np.percentile(np.asarray(values), [0, 10, 50, 90, 99, 100], method="inverted_cdf")
    return " ".join(f"{int(v):7d}" for v in p)


def summary(writers, malformed, dropped, written, note):
    lens = np.array([n for w in writers for n in w.lens], dtype=np.int64)
    begins = np.array([n for w in writers for n in w.begins], dtype=np.int64)
    ends = np.array([n for w in writers for n in w.ends], dtype=np.int64)
    lines = ([note] if note else []) + [f"kept {len(lens)} examples, {int(lens.sum())} tokens"]
    for reason, n in sorted(dropped.items()):
        lines.append(f"dropped {n}: {reason}")
    if malformed.total:
        lines.append(f"skipped {malformed.total} malformed line(s):")
        for reason, n in malformed.reasons.most_common():
            lines.append(f"  {n:6d}  {reason}")
        for where, reason in malformed.first:
            lines.append(f"  {where}: {reason}")
        if malformed.total > REPORT_LINES:
            lines.append(f"  ... and {malformed.total - REPORT_LINES} more")
    if len(lens):
        lines.append(f"{'section':8s} {'min':>7s} {'p10':>7s} {'p50':>7s} {'p90':>7s} {'p99':>7s} {'max':>7s}")
        for name, v in (("prompt", begins), ("cot", ends - begins), ("answer", lens - ends), ("example", lens)):
            lines.append(f"{name:8s} {percentiles(v)}")
    lines += [f"wrote {p}" for p in written]
    return "\n".join(lines)


class Malformeds:
    """Malformed records: all counted by reason, the first REPORT_LINES kept with where they are."""

    def __init__(self):
        self.total, self.reasons, self.first = 0, Counter(), []

    def add(self, where, reason):
        self.total += 1
        self.reasons[reason] += 1
        if len(self.first) < REPORT_LINES:
            self.first.append((where, reason))


class Progress:
    """Every PROGRESS_S seconds, on a terminal's stderr: examples, examples/s, percent read, ETA.
    Not in logs or pipes, where stderr is kept for the one line of an error."""

    def __init__(self):
        self.t0 = self.last = time.monotonic()
        self.on = sys.stderr.isatty()

    def show(self, n, done):
        now = time.monotonic()
        if not self.on or now - self.last < PROGRESS_S:
            return
        self.last, spent = now, now - self.t0
        eta = f"{spent * (1 - done) / done:.0f}s" if done > 0 else "?"
        print(f"prep_data: {n} examples, {n / spent:.0f}/s, {100 * done:.0f}% read, ETA {eta}", file=sys.stderr,
              flush=True)


def column_map(text):
    """--columns "prompt=question,reasoning=deepseek_reasoning" -> dict."""
    out = {}
    for part in filter(None, text.split(",")):
        name, eq, col = part.partition("=")
        if not eq or not col or name not in COLUMNS:
            raise argparse.ArgumentTypeError(f"'{part}' is not NAME=COLUMN with NAME one of {', '.join(COLUMNS)}")
        out[name] = col
    return out


def main(argv=None):
    ap = cli_args.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("inputs", nargs="+", help="JSONL, JSON, Parquet or Arrow files, or dataset folders")
    ap.add_argument("--model", required=True, help="model directory holding tokenizer.json (and its chat template)")
    ap.add_argument("--out", required=True, help="shard to write (NAME-00000.bin, ... with --shard-tokens)")
    ap.add_argument("--max-len", type=cli_args.int_at_least(1), default=4096, help="drop examples longer than this (tokens)")
    ap.add_argument("--shard-tokens", type=cli_args.int_at_least(0), default=0, help="split into shards of at most this many tokens")
    ap.add_argument("--columns", type=column_map, default={},
                    help=f"NAME=COLUMN,... for a dataset's own column names; NAME one of {', '.join(COLUMNS)}")
    ap.add_argument("--split", default="train", help="in a dataset folder, the files whose path names this split")
    ap.add_argument("--workers", type=cli_args.int_at_least(1), default=os.cpu_count() or 1,
                    help="processes that parse, render and tokenize")
    ap.add_argument("--strict", action="store_true", help="fail on the first malformed line")
    args = ap.parse_args(argv)

    try:
        fp, vocab = fingerprint(args.model)
        Tokenizer.from_file(str(Path(args.model) / "tokenizer.json"))
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise SystemExit(f"prep_data: {args.model}: cannot read the tokenizer: {e}")
    try:
        _, note = chat_template.ChatTemplate.load(args.model)
    except (OSError, chat_template.TemplateError) as e:
        raise SystemExit(f"prep_data: {e}")

    malformed, dropped, progress = Malformeds(), Counter(), Progress()
    shards = Shards(args.out, args.shard_tokens, vocab, fp)
    try:
        n = 0
        for rows, done in results(records.iterate(args.inputs, args.split), args.workers,
                                  (args.model, args.columns, args.max_len)):
            for where, got, cot_begin, cot_end in rows:
                if isinstance(got, Malformed):
                    if args.strict:
                        raise SystemExit(f"prep_data: {where}: {got}")
                    malformed.add(where, str(got))
                elif isinstance(got, str):
                    dropped[got] += 1
                else:
                    shards.add(got, cot_begin, cot_end)
                    n += 1
            progress.show(n, done)
        if not n:
            print(summary([], malformed, dropped, [], note))  # why nothing is left; stderr gets one line
            raise SystemExit(f"prep_data: {', '.join(map(str, args.inputs))}: no example left to write")
        writers = shards.writers()
        written = shards.commit()
    except records.InputError as e:
        shards.discard()
        raise SystemExit(f"prep_data: {e}")
    except BaseException:
        shards.discard()
        raise
    print(summary(writers, malformed, dropped, written, note))


if __name__ == "__main__":
    cli_args.run(main, "prep_data")
