#!/usr/bin/env python3
"""Math answer extraction, normalisation and scoring (pure Python).

extract_answer() finds the final answer of a model's text: the last
\\boxed{...} (nested braces allowed), else the last `#### X`, else the last
"the answer is X". normalize() maps an answer to a canonical string so that
equal values compare equal: integers, decimals and fractions (\\frac{a}{b},
\\dfrac, a/b) become a reduced fraction; signs, spaces, thousands separators,
dollar signs, \\text{...} units and trailing unit words are dropped.

Scoring a set of samples (several per problem) reports pass@1 averaged over
the samples of each problem and over problems with its standard error,
pass@k (some of the k samples right) and the majority-vote accuracy (the
most frequent answer of each problem, ties to the first seen). Grading
itself is grade_math.py's (Math-Verify first); this is its fallback.

    python3 tools/score_math.py --samples scored.jsonl   # re-summarise a file
"""
import json
import re
import sys
from collections import Counter
from fractions import Fraction

import cli_args

_BOXED = re.compile(r"\\(?:boxed|fbox)\s*")
_ANSWER_IS = re.compile(r"the\s+(?:final\s+)?answer\s+is\s*:?\s*", re.IGNORECASE)


def _braced(text, i):
    """Content of the brace group opening at text[i] == '{', or None if unbalanced."""
    depth = 0
    for j in range(i, len(text)):
        if text[j] == "{":
            depth += 1
        elif text[j] == "}":
            depth -= 1
            if depth == 0:
                return text[i + 1:j]
    return None


def _last_boxed(text):
    for m in reversed(list(_BOXED.finditer(text))):
        i = m.end()
        if i < len(text) and text[i] == "{":
            inner = _braced(text, i)
            if inner is not None:
                return inner
        elif i < len(text) and m.group(0).endswith(" "):  # "\boxed 5"
            word = re.match(r"[^\s$]+", text[i:])
            if word:
                return word.group(0)
    return None


def extract_answer(text):
    """The final answer in text, or None when it states none."""
    if not text:
        return None
    boxed = _last_boxed(text)
    if boxed is not None and boxed.strip():
        return boxed.strip()
    hashes = text.rfind("####")
    if hashes >= 0:
        line = text[hashes + 4:].strip().split("\n", 1)[0].strip()
        if line:
            return line
    found = list(_ANSWER_IS.finditer(text))
    if found:
        rest = text[found[-1].end():].split("\n", 1)[0].strip()
        rest = re.sub(r"[.。]\s*$", "", rest).strip()  # the sentence's full stop
        rest = re.split(r"\.\s", rest, maxsplit=1)[0]
        if rest:
            return rest
    return None


_UNIT_WORDS = (r"(?:dollars?|cents?|units?|cm|mm|km|m|kg|g|mg|lbs?|pounds?|feet|foot|ft|"
               r"inch(?:es)?|in|miles?|hours?|hrs?|minutes?|mins?|seconds?|secs?|days?|weeks?|"
               r"years?|degrees?|percent|meters?|liters?|litres?|ml|l|apples?|shells?|"
               r"marbles?|books?|coins?|cookies?|students?|people|points?|items?|pieces?)")


def _strip_latex(s):
    s = s.replace("\u2212", "-").replace("\u2013", "-")  # unicode minus, en dash
    s = re.sub(r"^\s*\\text\s*\{([^{}]*)\}\s*$", r"\1", s)  # a whole answer in \text
    s = re.sub(r"\\text\s*\{[^{}]*\}", " ", s)           # \text{ cm} after a value: a unit
    s = re.sub(r"\\(?:mathrm|textbf|mathbf)\s*\{([^{}]*)\}", r"\1", s)
    for tok in ("\\left", "\\right", "\\!", "\\,", "\\;", "\\:", "\\ ", "\\$", "$", "^\\circ",
                "^{\\circ}", "\\%", "%", "\\displaystyle"):
        s = s.replace(tok, "")
    s = re.sub(r"\\[dt]frac", r"\\frac", s)
    s = re.sub(r"\\frac\s*(\d)\s*(\d)", r"\\frac{\1}{\2}", s)  # \frac12
    return s


def _number(s):
    """Fraction for a plain number, fraction or \\frac; None otherwise."""
    s = s.strip()
    sign = 1
    while s[:1] in ("+", "-"):
        if s[0] == "-":
            sign = -sign
        s = s[1:].strip()
    m = re.fullmatch(r"\\frac\s*\{([^{}]*)\}\s*\{([^{}]*)\}", s)
    if m:
        a, b = _number(m.group(1)), _number(m.group(2))
        return sign * a / b if a is not None and b not in (None, 0) else None
    m = re.fullmatch(r"(\(?[^/()]+\)?)\s*/\s*(\(?[^/()]+\)?)", s)
    if m:
        a, b = _number(m.group(1).strip("()")), _number(m.group(2).strip("()"))
        return sign * a / b if a is not None and b not in (None, 0) else None
    if re.fullmatch(r"\d{1,3}(,\d{3})+(\.\d*)?", s):  # thousands separators
        s = s.replace(",", "")
    if re.fullmatch(r"(\d+\.?\d*|\.\d+)(e[+-]?\d+)?", s, re.IGNORECASE):
        return sign * Fraction(s)
    return None


def normalize(answer):
    """Canonical form of an answer: a reduced fraction string ("3", "-1/2") for
    numbers, else the text lower-cased without spaces; None stays None."""
    if answer is None:
        return None
    s = _strip_latex(str(answer)).strip()
    s = re.sub(r"^(?:x|y|n|k|a|answer)\s*=\s*", "", s, flags=re.IGNORECASE)
    s = s.rstrip(" .")
    v = _number(s)
    if v is None:  # a trailing unit word, e.g. "12 apples", "5 cm"
        core = re.sub(rf"(\s*{_UNIT_WORDS}\b\.?)+$", "", s, flags=re.IGNORECASE).strip()
        v = _number(core) if core != s else None
    if v is not None:
        return str(v.numerator) if v.denominator == 1 else f"{v.numerator}/{v.denominator}"
    out = re.sub(r"\s+", "", s).lower()
    return out or None


def is_correct(predicted, gold):
    p, g = normalize(predicted), normalize(gold)
    return p is not None and p == g


def summarize(rows):
    """rows: dicts with "id", "correct", and "vote" (the canonical answer the
    majority vote counts) or "extracted" (normalised here); None votes for
    nothing. Per problem of n samples with c right: pass@1 = c / n, pass@n =
    1 - C(n - c, n) / C(n, n) (some sample right), majority@n right when the
    most frequent answer (ties to the first seen) was judged correct. Means
    over problems; pass@1 with its standard error over problems."""
    by_id = {}
    for r in rows:
        by_id.setdefault(json.dumps(r["id"], sort_keys=True), []).append(r)
    if not by_id:
        return {"problems": 0, "samples": 0, "pass@1": 0.0, "pass@1_se": 0.0, "k": 0, "pass@k": 0.0,
                "majority": 0.0}
    pass1, passk, maj = [], [], 0.0
    for samples in by_id.values():
        right = [bool(s["correct"]) for s in samples]
        pass1.append(sum(right) / len(right))
        passk.append(float(any(right)))
        answers = [s["vote"] if "vote" in s else normalize(s["extracted"]) for s in samples]
        votes = Counter(a for a in answers if a is not None)
        if votes:
            top = max(votes.values())
            winner = next(a for a in answers if a is not None and votes[a] == top)
            maj += any(ok for ok, a in zip(right, answers) if a == winner)
    n = len(by_id)
    mean = sum(pass1) / n
    se = (sum((p - mean) ** 2 for p in pass1) / (n - 1) / n) ** 0.5 if n > 1 else 0.0
    k = min(len(s) for s in by_id.values())
    return {"problems": n, "samples": len(rows), "pass@1": mean, "pass@1_se": se, "k": k,
            "pass@k": sum(passk) / n, "majority": maj / n}


def main(argv=None):
    ap = cli_args.ArgumentParser(description="Re-summarise scored samples (JSONL).")
    ap.add_argument("--samples", required=True, help="JSONL with id, extracted, correct")
    args = ap.parse_args(argv)
    rows = []
    with open(args.samples, encoding="utf-8") as f:
        for k, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as e:
                sys.exit(f"score_math: {args.samples}:{k}: not JSON ({e.msg})")
            if not isinstance(rows[-1], dict) or not {"id", "extracted", "correct"} <= rows[-1].keys():
                sys.exit(f"score_math: {args.samples}:{k}: needs id, extracted and correct")
    print(json.dumps(summarize(rows)))


if __name__ == "__main__":
    cli_args.run(main, "score_math")
