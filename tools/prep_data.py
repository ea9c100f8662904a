#!/usr/bin/env python3
"""JSONL reasoning traces -> binary data shards (docs/shards.md).

Each record (explicit fields or a chat record, see traces.py) is rendered
with the Qwen3 chat template, tokenized with the model directory's
tokenizer.json, and stored with its section boundaries. Records over
--max-len tokens are dropped; malformed records are skipped and reported
by line number, or stop the run under --strict. Shards are written
atomically.

  python3 tools/prep_data.py --model DIR --out train.bin a.jsonl [b.jsonl ...]
"""
import argparse
from collections import Counter
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer

import chat_template
import cli_args
import shard_io
from tokenizer_fingerprint import fingerprint
from traces import Malformed, parse_line

REPORT_LINES = 20  # malformed lines listed one by one; the rest are counted


def read_traces(paths, strict, malformed):
    """[(where, Trace)]; appends (where, reason) to malformed."""
    out = []
    for path in paths:
        with open(path, "rb") as f:
            for n, raw in enumerate(f, 1):
                if not raw.strip():
                    continue
                try:
                    out.append((f"{path}:{n}", parse_line(raw)))
                except Malformed as e:
                    if strict:
                        raise SystemExit(f"prep_data: {path}:{n}: {e}")
                    malformed.append((f"{path}:{n}", str(e)))
    return out


def tokenize(traces, tokenizer, max_len, dropped):
    examples = []
    rendered = [chat_template.render(t) for _, t in traces]
    encodings = tokenizer.encode_batch([r[0] for r in rendered], add_special_tokens=False)
    for (text, think_at, think_end), enc in zip(rendered, encodings):
        if len(enc.ids) > max_len:
            dropped["longer than --max-len"] += 1
            continue
        examples.append(chat_template.example(enc, think_at, think_end))
    return examples


def percentiles(values):
    p = np.percentile(np.asarray(values), [0, 10, 50, 90, 99, 100], method="inverted_cdf")
    return " ".join(f"{int(v):7d}" for v in p)


def summary(examples, malformed, dropped, written):
    lines = [f"kept {len(examples)} examples, {sum(len(e.tokens) for e in examples)} tokens"]
    for reason, n in sorted(dropped.items()):
        lines.append(f"dropped {n}: {reason}")
    if malformed:
        lines.append(f"skipped {len(malformed)} malformed line(s):")
        for reason, n in Counter(r for _, r in malformed).most_common():
            lines.append(f"  {n:6d}  {reason}")
        for where, reason in malformed[:REPORT_LINES]:
            lines.append(f"  {where}: {reason}")
        if len(malformed) > REPORT_LINES:
            lines.append(f"  ... and {len(malformed) - REPORT_LINES} more")
    if examples:
        lines.append(f"{'section':8s} {'min':>7s} {'p10':>7s} {'p50':>7s} {'p90':>7s} {'p99':>7s} {'max':>7s}")
        for name, f in (
            ("prompt", lambda e: e.cot_begin),
            ("cot", lambda e: e.cot_end - e.cot_begin),
            ("answer", lambda e: len(e.tokens) - e.cot_end),
            ("example", lambda e: len(e.tokens)),
        ):
            lines.append(f"{name:8s} {percentiles([f(e) for e in examples])}")
    lines += [f"wrote {p}" for p in written]
    return "\n".join(lines)


def shard_paths(out, examples, shard_tokens):
    """[(path, examples)]: one shard, or several of at most shard_tokens tokens."""
    if not shard_tokens:
        return [(Path(out), examples)]
    groups, cur, n = [], [], 0
    for e in examples:
        if cur and n + len(e.tokens) > shard_tokens:
            groups.append(cur)
            cur, n = [], 0
        cur.append(e)
        n += len(e.tokens)
    groups.append(cur)
    out = Path(out)
    return [(out.with_name(f"{out.stem}-{i:05d}{out.suffix}"), g) for i, g in enumerate(groups)]


def main(argv=None):
    ap = cli_args.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("inputs", nargs="+", help="JSONL files of traces")
    ap.add_argument("--model", required=True, help="model directory holding tokenizer.json")
    ap.add_argument("--out", required=True, help="shard to write (NAME-00000.bin, ... with --shard-tokens)")
    ap.add_argument("--max-len", type=cli_args.int_at_least(1), default=4096, help="drop examples longer than this (tokens)")
    ap.add_argument("--shard-tokens", type=cli_args.int_at_least(0), default=0, help="split into shards of at most this many tokens")
    ap.add_argument("--strict", action="store_true", help="fail on the first malformed line")
    args = ap.parse_args(argv)

    try:
        fp, vocab = fingerprint(args.model)
        tokenizer = Tokenizer.from_file(str(Path(args.model) / "tokenizer.json"))
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise SystemExit(f"prep_data: {args.model}: cannot read the tokenizer: {e}")
    malformed, dropped = [], Counter()
    try:
        traces = read_traces(args.inputs, args.strict, malformed)
    except OSError as e:
        raise SystemExit(f"prep_data: {e.filename}: {e.strerror}")
    examples = tokenize(traces, tokenizer, args.max_len, dropped)
    if not examples:
        print(summary(examples, malformed, dropped, []))  # why nothing is left; stderr gets one line
        raise SystemExit(f"prep_data: {', '.join(map(str, args.inputs))}: no example left to write")
    written = []
    for path, group in shard_paths(args.out, examples, args.shard_tokens):
        shard_io.write(path, group, vocab, fp)
        written.append(path)
    print(summary(examples, malformed, dropped, written))


if __name__ == "__main__":
    cli_args.run(main, "prep_data")
