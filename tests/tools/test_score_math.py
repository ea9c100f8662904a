"""Answer extraction, normalisation and scoring of tools/score_math.py."""
import random
from fractions import Fraction

import pytest

from score_math import extract_answer, is_correct, normalize, summarize


@pytest.mark.parametrize("text, want", [
    ("so \\boxed{42}.", "42"),
    ("first \\boxed{1} then \\boxed{7}", "7"),
    ("\\boxed{\\frac{1}{2}}", "\\frac{1}{2}"),
    ("\\boxed{\\frac{\\sqrt{3}}{2}} done", "\\frac{\\sqrt{3}}{2}"),
    ("Ava has \\boxed{6} shells.", "6"),
    ("\\fbox{9}", "9"),
    ("\\boxed 5 is it", "5"),
    ("work\n#### 1,234\n", "1,234"),
    ("The answer is 17.", "17"),
    ("so the final answer is: -3/4.\nmore", "-3/4"),
    ("The answer is 3.5.", "3.5"),
    ("\\boxed{12} ... the answer is 13", "12"),        # boxed wins
    ("\\boxed{12 unbalanced", None),                    # malformed, nothing else
    ("\\boxed{12 unbalanced; the answer is 4", "4"),    # malformed box falls back
    ("\\boxed{} #### 8", "8"),                          # empty box falls back
    ("no answer here", None),
    ("", None),
    (None, None),
    ("####   \n", None),
])
def test_extract(text, want):
    assert extract_answer(text) == want


@pytest.mark.parametrize("a, b", [
    ("42", "42.0"), ("+42", "42"), ("0.5", "\\frac{1}{2}"), ("1/2", "\\dfrac{1}{2}"),
    ("\\frac12", "0.5"), ("-\\frac{3}{4}", "-0.75"), ("\u22123", "-3"), ("- 3", "-3"),
    ("1,000", "1000"), ("$12", "12"), ("12 \\text{ cm}", "12"), ("12 apples", "12"),
    ("5 dollars", "5"), ("x = 7", "7"), ("  7 ", "7"), ("50\\%", "50"), ("90^\\circ", "90"),
    ("(3)/(6)", "0.5"), ("\\left(2\\right)", "(2)"), ("1e3", "1000"), (".25", "1/4"),
    ("\\text{B}", "B"), ("ABC", "abc"),
])
def test_equal_forms(a, b):
    assert normalize(a) == normalize(b), (a, b)
    assert is_correct(a, b)


@pytest.mark.parametrize("a, b", [
    ("42", "24"), ("1/2", "1/3"), ("-3", "3"), ("1,000", "100"), ("0.5", "5"),
    ("\\frac{1}{0}", "1"), ("1/0", "0"), ("abc", "abd"),
])
def test_different(a, b):
    assert not is_correct(a, b)


def test_malformed_never_correct():
    for bad in (None, "", "   ", "\\frac{1}{", "1//2", "{}"):
        assert not is_correct(bad, "1")
    assert not is_correct(None, None)  # no answer is never right


def test_random_numbers_round_trip():
    rng = random.Random(7)
    for _ in range(500):
        v = Fraction(rng.randint(-10**6, 10**6), rng.randint(1, 1000))
        forms = [f"{v.numerator}/{v.denominator}",
                 f"\\frac{{{abs(v.numerator)}}}{{{v.denominator}}}" if v >= 0 else
                 f"-\\frac{{{-v.numerator}}}{{{v.denominator}}}"]
        if v.denominator in (1, 2, 4, 5, 8, 10, 20, 25, 40, 50, 100):
            forms.append(f"{float(v):.6f}")
        if v.denominator == 1:
            forms += [f"{int(v):,}", f"{int(v)} apples", f"\\boxed{{{int(v)}}}"[7:-1]]
        want = normalize(forms[0])
        assert all(normalize(f) == want for f in forms), forms
        assert extract_answer(f"so \\boxed{{{forms[1]}}}.") == forms[1]


def test_summary_pass_at_1_and_majority():
    rows = [
        # problem a: 2 of 4 right, majority (7) right
        {"id": "a", "extracted": "7", "correct": True},
        {"id": "a", "extracted": "7.0", "correct": True},
        {"id": "a", "extracted": "3", "correct": False},
        {"id": "a", "extracted": None, "correct": False},
        # problem 1: 1 of 3 right, majority (5) wrong
        {"id": 1, "extracted": "5", "correct": False},
        {"id": 1, "extracted": "5", "correct": False},
        {"id": 1, "extracted": "9", "correct": True},
        # problem b: nothing extracted
        {"id": "b", "extracted": None, "correct": False},
    ]
    s = summarize(rows)
    assert s["problems"] == 3 and s["samples"] == 8
    assert s["pass@1"] == pytest.approx((0.5 + 1 / 3 + 0) / 3)
    assert s["majority"] == pytest.approx(1 / 3)
    assert summarize([])["problems"] == 0


def test_majority_tie_goes_to_first_seen():
    rows = [{"id": 0, "extracted": "2", "correct": True},
            {"id": 0, "extracted": "3", "correct": False}]
    assert summarize(rows)["majority"] == 1.0
    assert summarize(rows[::-1])["majority"] == 0.0
