"""tools/grade_math.py (Math-Verify first), grader_agreement.py, the eval summary and problem files."""
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import eval_math
from grade_math import grade
from grader_agreement import agreement, read
from score_math import summarize

CASES = Path(__file__).resolve().parents[1] / "data" / "grading_cases.jsonl"


@pytest.mark.parametrize("text,gold", [("so \\boxed{2^{10}}", "1024"), ("\\boxed{2\\sqrt{2}}", "\\sqrt{8}"),
                                       ("\\boxed{10^{-2}}", "0.01"), ("\\boxed{\\pi/2}", "\\frac{\\pi}{2}")])
def test_math_verify_grades_what_the_extractor_missed(text, gold):
    assert grade(text, gold)[::2] == (True, "math-verify")


def test_equal_values_vote_together_and_no_answer_falls_back():
    assert grade("\\boxed{2^{10}}", "1")[1] == grade("\\boxed{1024}", "1")[1]
    assert grade("I could not solve it.", "42") == (False, None, "extractor")


def test_agreement_on_hand_written_hard_cases():
    a = agreement(read(CASES, "text", "gold"))
    assert (a["cases"], a["labelled"]) == (22, 22)
    assert (a["math_verify_right"], a["extractor_right"], a["agree"]) == (19, 16, 17)


def test_summary_standard_error_pass_at_k_majority():
    rows = [{"id": 0, "correct": c, "vote": v} for c, v in ((True, "5"), (False, "4"), (False, "4"))]
    rows += [{"id": 1, "correct": True, "vote": "7"}] * 3
    s = summarize(rows)
    assert s["pass@1"] == pytest.approx((1 / 3 + 1) / 2)
    assert s["pass@1_se"] == pytest.approx(((1 / 3 - 2 / 3) ** 2 * 2 / 1 / 2) ** 0.5)
    assert (s["k"], s["pass@k"], s["majority"]) == (3, 1.0, 0.5)


def test_problems_from_a_parquet_hub_folder(tmp_path):
    (tmp_path / "data").mkdir()
    rows = [{"problem": "What is 1+1?", "answer": "2", "solution": None},
            {"problem": "3*3?", "answer": None, "solution": "so \\boxed{9}"}]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "data" / "test-00000-of-00001.parquet")
    got = eval_math.read_problems(str(tmp_path), 0, "test")
    assert [(p["prompt"], eval_math.gold_answer(p)) for p in got] == [("What is 1+1?", "2"), ("3*3?", "9")]
