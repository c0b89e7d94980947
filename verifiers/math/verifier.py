"""`MathVerifier`: reward 1.0 when the completion's final answer equals `example["answer"]`."""
from __future__ import annotations

import math
import numbers
import re
import time
from decimal import Decimal
from fractions import Fraction
from typing import Any, Iterable, Sequence

from ..base import Score
from .equivalence import Options, Verdict, _exact, _sympy_value, _Context, equivalent
from .evaluate import Limits, TooLarge, Undefined, has_calculus, has_decimal
from .extract import Extraction, extract_answer, extract_reference, resolve_sources
from .normalize import normalize_answer
from .parse import Collection, Interval, Matrix, Relation, Scalar, Text, Union, parse_answer

_REFERENCE_CACHE_SIZE = 4096
_PLAIN_NUMBER_RE = re.compile(r"-?\d{1,300}(?:\.\d{1,300})?")  # fullmatch-style: anchored below


class MathVerifier:
    """Scores a completion against `example["answer"]` (a string or a number; a list or tuple
    of strings means "any of these").

    Options (plain keywords, as they come from a YAML config):
      extraction          "any" (every source: marked answers, then the last LaTeX math
                          environment, a short bare answer, the last number), "strict" (marked
                          answers only: boxed, <answer>, "final answer", "Answer:", "####"),
                          "boxed" (boxed only, for MATH-style training), or a list of sources.
      rel_tol             relative tolerance when either side is written as a decimal.
      symbolic_timeout_s  budget for one comparison; checked before every sympy step.
      max_expr_chars      longer extracted answers score 0 without being parsed.
      max_digits          largest integer ever built while evaluating (guards 10^10^10, 10^6!).
      use_latex2sympy     parse LaTeX outside the built-in grammar with latex2sympy2_extended.
      correct_reward, wrong_reward
    """

    name = "math"

    def __init__(
        self,
        extraction: str | Iterable[str] = "any",
        rel_tol: float = 1e-6,
        symbolic_timeout_s: float = 2.0,
        max_expr_chars: int = 1000,
        max_digits: int = 20_000,
        use_latex2sympy: bool = True,
        correct_reward: float = 1.0,
        wrong_reward: float = 0.0,
    ):
        self.sources = resolve_sources(extraction)
        if not 0 <= rel_tol < 1:
            raise ValueError(f"rel_tol must be in [0, 1), got {rel_tol!r}")
        if symbolic_timeout_s <= 0:
            raise ValueError(f"symbolic_timeout_s must be positive, got {symbolic_timeout_s!r}")
        if max_expr_chars <= 0 or max_digits <= 0:
            raise ValueError("max_expr_chars and max_digits must be positive")
        self.extraction = extraction
        self.symbolic_timeout_s = float(symbolic_timeout_s)
        self.max_expr_chars = int(max_expr_chars)
        self.correct_reward = float(correct_reward)
        self.wrong_reward = float(wrong_reward)
        self.options = Options(rel_tol=float(rel_tol), limits=Limits(max_digits=int(max_digits)),
                               use_latex2sympy=bool(use_latex2sympy))
        self._references: dict[str, Any] = {}

    # -- public API -------------------------------------------------------------------------

    def score(self, completion: str, example: dict) -> Score:
        started = time.monotonic()
        references = self._references_of(example)
        extraction = extract_answer(completion or "", self.sources)
        if extraction is None:
            return self._score(False, {"extracted": None, "reason": "no_answer", "parsed": False})
        info: dict[str, Any] = {"extracted": extraction.text, "source": extraction.source}
        if len(extraction.text) > self.max_expr_chars:
            return self._score(False, {**info, "reason": "too_long", "parsed": False})
        # A reference we cannot read credits nothing: comparing two unreadable strings (or two
        # failed parses) would pay for any garbage that happens to fail the same way.
        references = [reference for reference in references if not is_unparsable(reference)]
        if not references:
            return self._score(False, {**info, "reason": "unparsable_reference"})
        fast = self._fast_number_verdict(extraction.text, references)
        if fast is not None:
            detail = ("match" if fast.equal else "reason")
            return self._score(fast.equal, {**info, "parsed": True, detail: fast.detail})
        response = parse_answer(normalize_answer(extraction.text))
        if is_unparsable(response):
            return self._score(False, {**info, "reason": "unparsable", "parsed": False})
        deadline = started + self.symbolic_timeout_s
        verdict = Verdict(False, "mismatch")
        for reference in references:
            verdict = equivalent(reference, response, self.options, deadline)
            if verdict.equal:
                break
        if verdict.equal:
            return self._score(True, {**info, "parsed": True, "match": verdict.detail})
        if verdict.detail == "parse_error":  # a scalar neither parser could read: whose?
            if isinstance(response, Scalar) and response.ast is None:
                return self._score(False, {**info, "reason": "unparsable", "parsed": False})
            if len(references) == 1 and isinstance(references[0], Scalar) and references[0].ast is None:
                return self._score(False, {**info, "parsed": True, "reason": "unparsable_reference"})
        return self._score(False, {**info, "parsed": True, "reason": verdict.detail})

    def score_batch(self, completions: Sequence[str], examples: Sequence[dict]) -> list[Score]:
        if len(completions) != len(examples):
            raise ValueError(f"score_batch: {len(completions)} completions but {len(examples)} examples")
        return [self.score(completion, example) for completion, example in zip(completions, examples)]

    def answer_key(self, completion: str) -> str | None:
        """Canonical key of the completion's answer (None when there is none); see `answer_key`."""
        return answer_key(completion, self.sources, self.options)

    def __getstate__(self) -> dict:
        # Workers get the configuration, not this process's cache of parsed references.
        state = self.__dict__.copy()
        state["_references"] = {}
        return state

    # -- helpers ----------------------------------------------------------------------------

    def _fast_number_verdict(self, text: str, references: list) -> Verdict | None:
        """A plain number against a single rational reference: no normalization, no parser.
        The same verdict the full path would give (a decimal is an approximation)."""
        if len(references) != 1 or not _PLAIN_NUMBER_RE.fullmatch(text):
            return None
        reference = references[0]
        if not isinstance(reference, Scalar) or reference.ast is None:
            return None
        context = _Context(self.options)
        expected = _exact(reference, context)
        if not isinstance(expected, Fraction):
            return None
        value = Fraction(text)
        if value == expected:
            return Verdict(True, "string" if text == reference.text else "exact")
        approximate = "." in text or has_decimal(reference.ast)
        if approximate and abs(value - expected) <= Fraction(self.options.rel_tol) * max(abs(value), abs(expected)):
            return Verdict(True, "numeric")
        return Verdict(False, "mismatch")

    def _score(self, correct: bool, info: dict) -> Score:
        return Score(self.correct_reward if correct else self.wrong_reward, info)

    def _references_of(self, example: dict) -> list:
        if not isinstance(example, dict) or "answer" not in example:
            raise ValueError("math verifier: the example has no 'answer' field (the reference answer)")
        raw = example["answer"]
        alternatives = list(raw) if isinstance(raw, (list, tuple)) else [raw]
        if not alternatives:
            raise ValueError("math verifier: example['answer'] is an empty list")
        return [self._reference(alternative) for alternative in alternatives]

    def _reference(self, raw: Any) -> Any:
        text = reference_text(raw)
        parsed = self._references.get(text)
        if parsed is None:
            if len(self._references) >= _REFERENCE_CACHE_SIZE:
                self._references.clear()
            # The G completions of one prompt share a reference: parse (and evaluate) it once.
            parsed = self._references[text] = parse_answer(normalize_answer(text))
        return parsed


def reference_text(raw: Any) -> str:
    """The reference as a string: numbers exactly, a full solution through its last box."""
    if isinstance(raw, bool):
        raise ValueError("math verifier: example['answer'] is a bool, expected a string or number")
    if isinstance(raw, Fraction):
        return f"{raw.numerator}/{raw.denominator}"
    if isinstance(raw, numbers.Integral):
        return str(int(raw))
    if isinstance(raw, numbers.Real):
        value = float(raw)
        if not math.isfinite(value):
            raise ValueError(f"math verifier: example['answer'] is {value!r}, expected a finite number")
        return format(Decimal(repr(value)), "f")  # 1e-07 -> 0.0000001, never exponent notation
    if not isinstance(raw, str):
        raise ValueError(f"math verifier: example['answer'] must be a string or number, got {type(raw).__name__}")
    return extract_reference(raw)


def is_unparsable(value: Any) -> bool:
    """Whether a parsed answer is maths the parser could not read (a word answer is readable)."""
    return isinstance(value, Text) and not value.words


# ---------------------------------------------------------------------------------------------
# Majority-vote keys


def answer_key(completion: str, sources: Iterable[str] | str = "any", options: Options | None = None) -> str | None:
    """A canonical string for the final answer of `completion`, so that equal answers written
    differently (`0.5`, `\\frac{1}{2}`, `1/2`; `x = 3` and `3`; `{1, 2}` and `{2, 1}`) share a
    key: group completions by it for majority voting. None when no answer is found."""
    source_names = resolve_sources(sources) if isinstance(sources, str) else tuple(sources)
    extraction: Extraction | None = extract_answer(completion or "", source_names)
    if extraction is None:
        return None
    return canonical_key(parse_answer(normalize_answer(extraction.text)), options or Options())


def canonical_key(value: Any, options: Options = Options()) -> str:
    context = _Context(options, time.monotonic() + 1.0)
    return _key(value, context)


def _key(value: Any, context: _Context) -> str:
    if isinstance(value, Scalar):
        return _scalar_key(value, context)
    if isinstance(value, Collection):
        keys = [_key(item, context) for item in value.items]
        if len(keys) == 1:
            return keys[0]
        if value.kind in ("tuple", "ratio", "time"):
            return {"tuple": "(", "ratio": "ratio(", "time": "time("}[value.kind] + ",".join(keys) + ")"
        return ("or" if value.kind == "or" else "") + "{" + ",".join(sorted(keys)) + "}"
    if isinstance(value, Interval):
        return ("[" if value.left_closed else "(") + _key(value.low, context) + "," + \
            _key(value.high, context) + ("]" if value.right_closed else ")")
    if isinstance(value, Union):
        return "U".join(sorted(_key(part, context) for part in value.parts))
    if isinstance(value, Matrix):
        return "M[" + ";".join(",".join(_key(cell, context) for cell in row) for row in value.rows) + "]"
    if isinstance(value, Relation):
        if value.op == "=" and value.lhs.ast is not None and value.lhs.ast[0] == "s":
            return _key(value.rhs, context)
        return f"rel:{value.lhs.text}{value.op}{_key(value.rhs, context) if isinstance(value.rhs, Scalar) else value.rhs.text}"
    if isinstance(value, Text):
        return "text:" + value.text
    return "text:" + str(value)


def _scalar_key(scalar: Scalar, context: _Context) -> str:
    exact = _exact(scalar, context)
    if isinstance(exact, Fraction):
        return str(exact.numerator) if exact.denominator == 1 else f"{exact.numerator}/{exact.denominator}"
    if isinstance(exact, Exception):
        return "expr:" + scalar.text.replace(" ", "")
    try:
        value = _sympy_value(scalar, context)
    except (TooLarge, Undefined, ValueError):
        return "expr:" + scalar.text.replace(" ", "")
    if not value.free_symbols and not has_calculus(value):
        try:
            number = value.evalf(12)
            if number.is_Number:
                return "~" + str(number)
        except (TypeError, ValueError, ArithmeticError):
            pass
    return "expr:" + str(value)
