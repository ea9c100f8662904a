"""Grading a model's answer against the gold one with Math-Verify (as open-r1
and lighteval do); score_math's extractor and normaliser grade only where
Math-Verify finds no answer in the text or cannot read the gold one.

grade(text, gold) -> (correct, vote, grader): vote is the canonical answer
the majority vote counts (None when the text states none), grader the one
that decided ("math-verify" or "extractor").
"""
import sympy
from math_verify import parse, verify

from score_math import extract_answer, is_correct, normalize


def _gold(gold):
    g = parse(str(gold))
    return g or parse(f"${gold}$")  # bare LaTeX ("\frac{1}{2}") needs its delimiters


def _canonical(value):
    """One string for equal values (2^{10} and 1024 vote together)."""
    if isinstance(value, sympy.Basic):
        try:
            return str(sympy.simplify(value))
        except Exception:  # sympy raises many kinds on odd expressions
            return str(value)
    return str(value)


def grade(text, gold):
    predicted, wanted = parse(text or ""), _gold(gold)
    if predicted and wanted:
        return bool(verify(wanted, predicted)), _canonical(predicted[0]), "math-verify"
    extracted = extract_answer(text)
    return is_correct(extracted, gold), normalize(extracted), "extractor"
