#!/usr/bin/env python3
"""How often Math-Verify and score_math's extractor agree, and how often each
matches the hand label where a case has one ("correct").

Each JSONL line holds a model text and a gold answer (fields named by
--text and --gold); the synthetic corpus' answer/value serve as they are.

    python3 tools/grader_agreement.py tests/data/grading_cases.jsonl
    python3 tools/grader_agreement.py --text answer --gold value data/synth/test.jsonl
"""
import json
import sys

import cli_args
from grade_math import grade
from score_math import extract_answer, is_correct


def agreement(cases):
    """{"cases", "agree", "math_verify_right", "extractor_right", "labelled", "disagreements"}."""
    out = dict(cases=0, agree=0, labelled=0, math_verify_right=0, extractor_right=0, disagreements=[])
    for text, gold, label in cases:
        mv = grade(text, gold)[0]
        ex = is_correct(extract_answer(text), gold)
        out["cases"] += 1
        out["agree"] += mv == ex
        if mv != ex:
            out["disagreements"].append({"text": text, "gold": gold, "math_verify": mv, "extractor": ex})
        if label is not None:
            out["labelled"] += 1
            out["math_verify_right"] += mv == label
            out["extractor_right"] += ex == label
    return out


def read(path, text_key, gold_key):
    with open(path, encoding="utf-8") as f:
        for k, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as e:
                sys.exit(f"grader_agreement: {path}:{k}: not JSON ({e.msg})")
            if not isinstance(rec, dict) or text_key not in rec or gold_key not in rec:
                sys.exit(f"grader_agreement: {path}:{k}: needs \"{text_key}\" and \"{gold_key}\"")
            yield str(rec[text_key]), str(rec[gold_key]), rec.get("correct")


def main(argv=None):
    ap = cli_args.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("cases", help="JSONL: text, gold, optional correct")
    ap.add_argument("--text", default="text", help="field of the model's text")
    ap.add_argument("--gold", default="gold", help="field of the gold answer")
    args = ap.parse_args(argv)
    print(json.dumps(agreement(read(args.cases, args.text, args.gold)), indent=1))


if __name__ == "__main__":
    cli_args.run(main, "grader_agreement")
