"""The labeled case table (tests/verifiers/math_cases.py), one test per case."""
from __future__ import annotations

import importlib.util
from collections import Counter
from pathlib import Path

import pytest

from verifiers.math import MathVerifier


def _load_cases():
    # pytest runs with --import-mode=importlib: load the table by path, not by module name
    spec = importlib.util.spec_from_file_location("math_cases", Path(__file__).with_name("math_cases.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.CASES


CASES = _load_cases()

VERIFIER = MathVerifier()


def test_the_table_is_large_and_covers_every_category():
    categories = Counter(case.category for case in CASES)
    assert len(CASES) >= 350
    for category in ("extraction", "normalization", "exact", "numeric", "symbolic", "set", "tuple",
                     "interval", "matrix", "equation", "multiple", "text", "adversarial"):
        assert categories[category] >= 5, category
    # issue 17: how real models write, at least 10 cases each
    for category in ("latex_env", "reference_latex", "qwen_math", "deepseek_r1", "gsm8k", "inequality",
                     "set_list", "joined_boxes", "assignment", "plus_minus", "text_wrappers", "time_ratio",
                     "commutativity", "unparsable_reference", "last_number"):
        assert categories[category] >= 10, category
    # both verdicts in every category, so a verifier that always says yes (or no) fails
    for category in categories:
        verdicts = {case.expected for case in CASES if case.category == category}
        assert verdicts == {0, 1}, category


@pytest.mark.parametrize("case", CASES, ids=[f"{i}-{case.category}" for i, case in enumerate(CASES)])
def test_case(case):
    score = VERIFIER.score(case.completion, {"answer": case.reference})
    assert score.reward == case.expected, (case, score.info)
