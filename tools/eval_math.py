#!/usr/bin/env python3
"""Math evaluation: chat-templated prompts -> `essence generate` -> scores.

Reads the problems of a JSONL or Parquet file or hub folder (AIME 2024/2025,
MATH-500 layouts: "problem"/"prompt"/"question" and "answer", a numeric
"value", or a "solution" holding a boxed answer), renders each with the
tokenizer directory's chat template up to the assistant's turn
(chat_template.py), tokenizes it, runs `essence generate` on the token ids
(stopping at <|im_end|>, or the template's eos token), decodes the samples,
grades each with Math-Verify (grade_math.py, the extractor as fallback), and
writes one JSONL line per sample plus a summary: pass@1 with its standard
error, pass@n and majority@n over the n samples of each problem.

    python3 tools/eval_math.py --model runs/x/step-100 --tokenizer data/synth/model \\
        --data data/synth/test.jsonl --out eval/samples.jsonl [--n 4 --temperature 0.6]
"""
import json
import os
import pathlib
import subprocess
import sys
import tempfile

from tokenizers import Tokenizer

import cli_args
import out_file
import records
from chat_template import ChatTemplate, TemplateError
from grade_math import grade
from score_math import extract_answer, summarize
from tokenizer_fingerprint import fingerprint
from traces import Malformed, PROMPT_KEYS

PROG = os.environ.get("ESSENCE_PROG", "eval_math")  # "essence eval" when run by essence


def gold_answer(problem):
    if problem.get("value") is not None:
        return str(problem["value"])
    if problem.get("answer") is not None:
        return extract_answer(str(problem["answer"])) or str(problem["answer"])
    if problem.get("solution") is not None:
        return extract_answer(str(problem["solution"]))
    return None


def read_problems(path, limit, split):
    problems = []
    try:
        for where, p, _ in records.iterate([path], split):
            if isinstance(p, bytes):
                try:
                    p = json.loads(p)
                except json.JSONDecodeError as e:
                    sys.exit(f"{PROG}: {where}: not JSON ({e.msg})")
            prompt = next((p[k] for k in PROMPT_KEYS if isinstance(p, dict) and isinstance(p.get(k), str)), None)
            if prompt is None:
                sys.exit(f"{PROG}: {where}: needs a \"problem\" (or \"prompt\", \"question\") string")
            if gold_answer(p) is None:
                sys.exit(f"{PROG}: {where}: needs an \"answer\", a \"value\" or a boxed \"solution\"")
            problems.append(dict(p, prompt=prompt, id=p.get("id", len(problems))))
            if limit and len(problems) == limit:
                break
    except records.InputError as e:
        sys.exit(f"{PROG}: {e}")
    if not problems:
        sys.exit(f"{PROG}: {path}: no problems")
    return problems


def check_tokenizer(tok, tok_path, model):
    """Refuses a tokenizer that is not the model's: more tokens than the model
    has rows, or another tokenizer.json than the one in the model's directory."""
    try:
        vocab = json.loads((model / "config.json").read_text())["vocab_size"]
    except (OSError, ValueError, KeyError, TypeError):
        vocab = None  # essence generate names the broken config
    if isinstance(vocab, int) and tok.get_vocab_size() > vocab:
        sys.exit(f"{PROG}: {tok_path}: {tok.get_vocab_size()} tokens, more than the model's vocabulary "
                 f"({vocab}, {model / 'config.json'})")
    own = model / "tokenizer.json"
    if own.is_file() and tok_path.name == own.name and own.resolve() != tok_path.resolve():
        try:
            same = fingerprint(model) == fingerprint(tok_path.parent)
        except (OSError, ValueError, KeyError, TypeError) as e:
            sys.exit(f"{PROG}: {e}")
        if not same:
            sys.exit(f"{PROG}: {tok_path}: not the tokenizer of the model ({own} differs)")


def main(argv=None):
    ap = cli_args.ArgumentParser(prog=PROG, description=__doc__.splitlines()[0])
    ap.add_argument("--model", required=True, help="checkpoint dir (config.json + safetensors)")
    ap.add_argument("--tokenizer", required=True, help="dir or file of tokenizer.json")
    ap.add_argument("--data", required=True, help="JSONL or Parquet problems, or a hub folder (problem, answer)")
    ap.add_argument("--split", default="test", help="in a hub folder, the files whose path names this split")
    ap.add_argument("--out", required=True, help="per-sample JSONL; the summary goes to "
                    "OUT with .summary.json")
    ap.add_argument("--essence", default="build/essence", help="essence binary")
    ap.add_argument("--n", type=cli_args.int_at_least(1), default=1)
    ap.add_argument("--max-new", type=cli_args.int_at_least(1), default=32768)
    ap.add_argument("--temperature", type=cli_args.float_in(0, 100), default=0.0)
    ap.add_argument("--top-p", type=cli_args.float_in(1e-6, 1), default=1.0)
    ap.add_argument("--seed", type=cli_args.int_at_least(0), default=0)
    ap.add_argument("--batch", type=cli_args.int_at_least(1), default=8)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--limit", type=cli_args.int_at_least(0), default=0, help="first N problems only")
    args = ap.parse_args(argv)

    tok_path = pathlib.Path(args.tokenizer)
    if tok_path.is_dir():
        tok_path = tok_path / "tokenizer.json"
    if not tok_path.is_file():
        sys.exit(f"{PROG}: {tok_path}: no tokenizer.json")
    try:
        tok = Tokenizer.from_file(str(tok_path))
    except Exception as e:  # tokenizers raises plain Exception on a malformed file
        sys.exit(f"{PROG}: {tok_path}: cannot read the tokenizer ({e})")
    check_tokenizer(tok, tok_path, pathlib.Path(args.model))
    try:
        template, note = ChatTemplate.load(tok_path.parent)
    except (OSError, TemplateError) as e:
        sys.exit(f"{PROG}: {e}")
    stop_text = "<|im_end|>" if tok.token_to_id("<|im_end|>") is not None else template.variables.get("eos_token")
    stop = tok.token_to_id(stop_text) if stop_text else None
    if stop is None:
        sys.exit(f"{PROG}: {tok_path}: the tokenizer has neither <|im_end|> nor the template's eos token")
    problems = read_problems(args.data, args.limit, args.split)

    out = pathlib.Path(args.out)
    if out.is_dir():
        sys.exit(f"{PROG}: {out}: is a directory")
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        ids_in, ids_out = pathlib.Path(tmp) / "prompts.jsonl", pathlib.Path(tmp) / "samples.jsonl"
        with open(ids_in, "w", encoding="utf-8") as f:
            for i, p in enumerate(problems):
                try:
                    text = template.prompt(p.get("system"), p["prompt"])
                except Malformed as e:
                    sys.exit(f"{PROG}: {args.data}: problem {p['id']}: {e}")
                ids = tok.encode(text, add_special_tokens=False).ids
                f.write(json.dumps({"id": i, "prompt_ids": ids}) + "\n")
        cmd = [args.essence, "generate", "--model", args.model, "--in", str(ids_in),
               "--out", str(ids_out), "--n", str(args.n), "--max-new", str(args.max_new),
               "--temperature", str(args.temperature), "--top-p", str(args.top_p),
               "--seed", str(args.seed), "--batch", str(args.batch), "--device", args.device,
               "--stop", str(stop)]
        rc = subprocess.run(cmd).returncode
        if rc:
            sys.exit(rc)
        samples = [json.loads(line) for line in open(ids_out, encoding="utf-8") if line.strip()]

    samples.sort(key=lambda s: (s["id"], s["sample"]))
    rows = []
    for s in samples:
        p = problems[s["id"]]
        text = tok.decode(s["ids"], skip_special_tokens=True)
        # Score the answer after the reasoning when the model closed it.
        final = text.rsplit("</think>", 1)[-1]
        correct, vote, grader = grade(final, gold_answer(p))
        rows.append({"id": p["id"], "sample": s["sample"], "text": text, "extracted": extract_answer(final),
                     "vote": vote, "gold": gold_answer(p), "correct": correct, "grader": grader,
                     "tokens": len(s["ids"]), "finished": s["finished"]})
    summary = summarize(rows)
    summary.update(n=args.n, temperature=args.temperature, top_p=args.top_p,
                   max_new=args.max_new, model=args.model, template=note or str(template.where),
                   mean_tokens=sum(r["tokens"] for r in rows) / len(rows),
                   unfinished=sum(not r["finished"] for r in rows))
    out_file.write_text(args.out, "".join(json.dumps(r) + "\n" for r in rows))
    if out_file.is_direct(args.out):  # /dev/null, a FIFO or stdout: no summary file beside it
        print(json.dumps(summary), file=sys.stderr if args.out == "-" else sys.stdout)
        return
    out_file.write_text(out.with_suffix(".summary.json"), json.dumps(summary, indent=2) + "\n")
    print(json.dumps(summary))


if __name__ == "__main__":
    cli_args.run(main, PROG)
