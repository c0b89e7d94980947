"""Verifier benchmarks: our math verifier beside the `math-verify` package on the same pairs.

    python bench/verifiers.py                 # 3000 pairs, 2 pool workers
    python bench/verifiers.py --pairs 1000 --workers 2 --show 20
    python bench/verifiers.py --code-only       # code verifications per second (sandboxed)

Prints, for each checker: verifications per second with one worker (inline, per CPU-second,
the two checkers interleaved in chunks so that machine load hits both alike) and
through the project's process pool (`verifiers.pool.ScoringPool`, items sent in chunks, each
with a hard per-item timeout), the accuracy against the generator's labels, the agreement rate
between the two checkers and the pairs they disagree on; then the same on a corpus written in
real models' styles (`--style-pairs`, see `generate_style_pairs`); then both checkers' accuracy
on the hand-labeled table of tests/verifiers/math_cases.py.

The pairs are generated (seeded): MATH/GSM8K-style references (integers, fractions, decimals,
radicals, multiples of pi, polynomials, points, solution lists, intervals, multiple choice,
assignments), each answered by G=4 completions of a few hundred characters of "reasoning"
ending in a boxed answer: correct answers written in another form, and wrong ones.
`math-verify` is the `bench` extra (`pip install -e .[bench]`); without it only our figures
are printed.
"""
from __future__ import annotations

import argparse
import random
import re
import sys
import time
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Callable, Sequence

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout: python bench/verifiers.py

from verifiers.base import Score  # noqa: E402


@dataclass
class Pair:
    reference: str
    completion: str
    label: int        # 1 when the generator wrote a correct answer
    kind: str


# ---------------------------------------------------------------------------------------------
# Pair generation

_FILLER = [
    "Let me think about this step by step.", "First, we set up the equation from the problem.",
    r"We have $a + b = {x}$ and $ab = {y}$.", r"Multiplying both sides by ${x}$ gives ${y}$.",
    "Substituting back, the condition holds.", r"So $\frac{{{x}}}{{{y}}}$ simplifies further.",
    "Checking the boundary cases, none of them work.", r"Therefore $n = {x}$ is not possible.",
    r"The sum of the first ${x}$ terms is ${y}$.", "We can verify this with a quick computation.",
]


def _reasoning(rng: random.Random) -> str:
    lines = []
    for _ in range(rng.randint(6, 14)):
        lines.append(rng.choice(_FILLER).format(x=rng.randint(2, 99), y=rng.randint(2, 999)))
    return "\n".join(lines)


def _fraction_latex(value: Fraction, style: str = "frac") -> str:
    sign = "-" if value < 0 else ""
    value = abs(value)
    if value.denominator == 1:
        return f"{sign}{value.numerator}"
    if style == "slash":
        return f"{sign}{value.numerator}/{value.denominator}"
    if style == "dfrac":
        return f"{sign}\\dfrac{{{value.numerator}}}{{{value.denominator}}}"
    return f"{sign}\\frac{{{value.numerator}}}{{{value.denominator}}}"


def _integer(rng):
    value = rng.choice([rng.randint(0, 100), rng.randint(100, 10_000), -rng.randint(1, 50)])
    right = [str(value), f"{value}.0" if rng.random() < 0.2 else str(value),
             f"{value:,}" if abs(value) >= 1000 else f"x = {value}"]
    wrong = [str(value + rng.choice([-2, -1, 1, 2, 10])), str(-value) if value else "1"]
    return str(value), right, wrong


def _fraction(rng):
    value = Fraction(rng.randint(1, 60), rng.randint(2, 40))
    if value.denominator == 1:
        value += Fraction(1, 3)
    multiple = rng.randint(2, 5)
    right = [_fraction_latex(value, "dfrac"), _fraction_latex(value, "slash"),
             f"\\frac{{{value.numerator * multiple}}}{{{value.denominator * multiple}}}"]
    wrong = [_fraction_latex(1 / value), _fraction_latex(value + Fraction(1, value.denominator))]
    return _fraction_latex(value), right, wrong


def _decimal(rng):
    value = Fraction(rng.randint(1, 999), rng.choice([2, 4, 5, 8, 10, 20, 25, 100]))
    decimal = f"{float(value):.4f}".rstrip("0").rstrip(".")
    right = [_fraction_latex(value), decimal, f"{decimal}0" if "." in decimal else f"{decimal}.00"]
    wrong = [f"{float(value) + 0.1:.4f}".rstrip("0").rstrip("."), str(int(value) + 1)]
    return decimal, right, wrong


def _radical(rng):
    a, b = rng.randint(2, 9), rng.choice([2, 3, 5, 6, 7, 10, 11])
    right = [f"{a}\\sqrt{{{b}}}", f"\\sqrt{{{a * a * b}}}", f"\\sqrt{{{b}}} \\cdot {a}"]
    wrong = [f"{b}\\sqrt{{{a}}}" if a != b else f"{a + 1}\\sqrt{{{b}}}", f"{a + 1}\\sqrt{{{b}}}"]
    return f"{a}\\sqrt{{{b}}}", right, wrong


def _pi(rng):
    value = Fraction(rng.randint(1, 12), rng.randint(2, 9))
    if value.denominator == 1:
        value += Fraction(1, 5)
    p, q = value.numerator, value.denominator
    right = [f"\\frac{{{p}}}{{{q}}}\\pi", f"{p}\\pi/{q}", f"\\frac{{{p}\\pi}}{{{q}}}"]
    wrong = [f"\\frac{{{q}\\pi}}{{{p}}}", f"\\frac{{{p + 1}\\pi}}{{{q}}}"]
    return f"\\frac{{{p}\\pi}}{{{q}}}", right, wrong


def _polynomial(rng):
    r, s = rng.randint(1, 9), rng.randint(1, 9)
    b, c = r + s, r * s
    reference = f"x^2 + {b}x + {c}"
    right = [f"(x+{r})(x+{s})", f"{c} + {b}x + x^2", f"(x + {s})(x + {r})"]
    wrong = [f"(x+{r})(x-{s})", f"x^2 + {b}x + {c + 1}"]
    return reference, right, wrong


def _point(rng):
    a, b = rng.randint(-9, 9), rng.randint(-9, 9)
    if a == b:
        b += 1
    right = [f"({a}, {b})", f"\\left({a},{b}\\right)"]
    wrong = [f"({b}, {a})", f"({a}, {b + 1})"]
    return f"({a},{b})", right, wrong


def _solutions(rng):
    a, b = rng.sample(range(-9, 10), 2)
    right = [f"{b}, {a}", f"{a}, {b}", f"x = {a}, x = {b}"]
    wrong = [f"{a}", f"{a}, {b + 20}", f"{a} \\text{{ or }} {b + 20}"]
    return f"{a}, {b}", right, wrong


def _interval(rng):
    a = rng.randint(-9, 5)
    b = a + rng.randint(1, 9)
    right = [f"[{a}, {b})", f"[{a},{b})"]
    wrong = [f"({a}, {b}]", f"[{a}, {b}]"]
    return f"[{a}, {b})", right, wrong


def _choice(rng):
    letter = rng.choice("ABCDE")
    other = rng.choice([c for c in "ABCDE" if c != letter])
    return f"\\text{{({letter})}}", [f"({letter})", f"\\text{{({letter})}}"], [f"({other})"]


# The "hard" kinds below are the known failure modes of common checkers, in small doses.


def _tiny(rng):
    k = rng.randint(40, 120)
    return f"\\frac{{1}}{{2^{{{k}}}}}", [f"2^{{-{k}}}", f"\\frac{{1}}{{2^{{{k}}}}}"], [f"\\frac{{1}}{{2^{{{k - 1}}}}}"]


def _factorial(rng):
    n = rng.randint(200, 2100)
    return (f"\\frac{{1}}{{{n}!}}", [f"\\frac{{{n + 1}}}{{{n + 1}!}}", f"\\frac{{1}}{{{n}!}}"],
            [f"\\frac{{1}}{{{n + 2}!}}"])


def _candidates(rng):
    value = rng.randint(1, 50)
    other = value + rng.randint(1, 9)
    return str(value), [str(value)], [f"{value} \\text{{ or }} {other}", f"\\pm {value}", f"{other}, {value}"]


def _units(rng):
    value = rng.randint(2, 500)
    unit = rng.choice(["\\text{ cm}", "\\text{ dollars}", "\\%", "^\\circ", "\\text{ square units}"])
    return str(value), [f"{value}{unit}", f"{value:,}" if value >= 1000 else f"{value}{unit}"], [f"{value + 1}{unit}"]


def _inequality(rng):
    a = rng.randint(-9, 9)
    return f"[{a}, \\infty)", [f"x \\ge {a}", f"[{a},\\infty)"], [f"x > {a}", f"(-\\infty, {a}]"]


_KINDS: list[tuple[str, Callable, float]] = [
    ("integer", _integer, 0.33), ("fraction", _fraction, 0.14), ("decimal", _decimal, 0.07),
    ("radical", _radical, 0.09), ("pi", _pi, 0.05), ("polynomial", _polynomial, 0.07),
    ("point", _point, 0.05), ("solutions", _solutions, 0.05), ("interval", _interval, 0.04),
    ("choice", _choice, 0.03), ("tiny", _tiny, 0.015), ("factorial", _factorial, 0.015),
    ("candidates", _candidates, 0.02), ("units", _units, 0.02), ("inequality", _inequality, 0.01),
]


def generate_pairs(n: int, seed: int = 0, group_size: int = 4) -> list[Pair]:
    """`n` (reference, completion) pairs, `group_size` completions per reference."""
    rng = random.Random(seed)
    names = [kind[0] for kind in _KINDS]
    makers = {kind[0]: kind[1] for kind in _KINDS}
    weights = [kind[2] for kind in _KINDS]
    pairs: list[Pair] = []
    while len(pairs) < n:
        kind = rng.choices(names, weights)[0]
        reference, right, wrong = makers[kind](rng)
        for _ in range(group_size):
            correct = rng.random() < 0.5
            answer = rng.choice(right if correct else wrong)
            completion = f"{_reasoning(rng)}\nTherefore, the final answer is $\\boxed{{{answer}}}$."
            pairs.append(Pair(reference, completion, int(correct), kind))
    return pairs[:n]


# ---------------------------------------------------------------------------------------------
# A corpus in real models' styles (issue 17): the same kinds of answers, but ended the way
# Qwen-Math, DeepSeek-R1, GSM8K and Minerva-style models end them, some with no box at all,
# and references written the way datasets write them ($$...$$, \boxed{}, plain).


def _plus_minus(rng):
    a, b = rng.randint(1, 9), rng.choice([2, 3, 5, 7])
    right = [f"{a} + \\sqrt{{{b}}}, {a} - \\sqrt{{{b}}}", f"{a} - \\sqrt{{{b}}}, {a} + \\sqrt{{{b}}}"]
    wrong = [f"{a} + \\sqrt{{{b}}}", f"{a + 1} \\pm \\sqrt{{{b}}}"]
    return f"{a} \\pm \\sqrt{{{b}}}", right, wrong


def _text(rng):
    word = rng.choice(["Even", "Odd", "Monday", "Friday", "Yes", "No solution"])
    other = rng.choice(["Neither", "Tuesday", "Never", "Always"])
    return f"\\text{{{word}}}", [f"\\text{{{word.lower()}}}", f"\\textbf{{{word}}}"], [f"\\text{{{other}}}"]


def _time(rng):
    hour, minute = rng.randint(1, 12), rng.choice([0, 15, 30, 45])
    right = [f"{hour}:{minute:02d}"]
    wrong = [f"{hour % 12 + 1}:{minute:02d}", f"{hour}:{(minute + 10) % 60:02d}"]
    return f"{hour}:{minute:02d}", right, wrong


def _ratio(rng):
    a, b = rng.sample(range(1, 10), 2)
    k = rng.randint(2, 4)
    return f"{a}:{b}", [f"{a}:{b}", f"{a * k}:{b * k}", f"\\frac{{{a}}}{{{b}}}"], [f"{b}:{a}", f"{a + 1}:{b}"]


def _chain(rng):
    a = rng.randint(-900, 0)
    b = rng.randint(1, 50)
    var = rng.choice("abtk")
    return (f"{a} < {var} < {b}", [f"({a}, {b})", f"{a} < {var} < {b}"],
            [f"[{a}, {b})", f"({a}, {b + 1})"])


def _named(rng):
    value = rng.randint(2, 99)
    name = rng.choice(["|AB|", "f(3)", "x", "a_{5}", "P:Q"])
    return f"{name} = {value}", [str(value), f"{name} = {value}"], [str(value + 1), f"{name} = {value + 2}"]


def _pairs(rng):
    points = [(rng.randint(0, 9), rng.randint(0, 9)) for _ in range(2)]
    if points[0] == points[1]:
        points[1] = (points[1][0] + 1, points[1][1])
    text = [f"({x}, {y})" for x, y in points]
    swapped = f"({points[1][1]}, {points[1][0]})" if points[1][0] != points[1][1] else f"({points[1][0]}, 99)"
    return ", ".join(text), [", ".join(reversed(text)), ", ".join(text)], [f"{text[0]}, {swapped}", text[0]]


_STYLE_KINDS: list[tuple[str, Callable, float]] = [
    ("integer", _integer, 0.22), ("fraction", _fraction, 0.1), ("radical", _radical, 0.06),
    ("pi", _pi, 0.04), ("polynomial", _polynomial, 0.04), ("point", _point, 0.05),
    ("solutions", _solutions, 0.05), ("interval", _interval, 0.04), ("choice", _choice, 0.03),
    ("inequality", _inequality, 0.03), ("plus_minus", _plus_minus, 0.05), ("text", _text, 0.05),
    ("time", _time, 0.04), ("ratio", _ratio, 0.04), ("chain", _chain, 0.04), ("named", _named, 0.06),
    ("pairs", _pairs, 0.06),
]
_NUMERIC_KINDS = ("integer", "decimal")


def _wrap_reference(reference: str, rng: random.Random) -> str:
    style = rng.random()
    if style < 0.4:
        return reference
    if style < 0.7:
        return f"$${reference}$$"
    if style < 0.85:
        return f"${reference}$"
    return f"So the answer is $\\boxed{{{reference}}}$."


def _styled_completion(answer: str, kind: str, rng: random.Random) -> tuple[str, str]:
    """`answer` ended the way one family of models ends its answers; returns (style, text)."""
    reasoning = _reasoning(rng)
    parts = [answer]
    if kind == "solutions":
        parts = [part.strip() for part in answer.split(", ")]
    elif kind == "pairs":
        parts = [part.strip() for part in re.split(r"(?<=\)),\s*(?=\()", answer)]
    styles = ["qwen_math", "deepseek_r1", "minerva", "latex_display", "latex_inline"]
    if kind in _NUMERIC_KINDS:
        styles += ["gsm8k", "prose_number"]
    if len(parts) > 1:
        styles.append("boxes")
    style = rng.choice(styles)
    draft = rng.randint(1, 999)
    if style == "qwen_math":
        ending = rng.choice([f"Therefore, the final answer is $\\boxed{{{answer}}}$.",
                             f"The answer is \\(\\boxed{{{answer}}}\\).", f"\\[\\boxed{{{answer}}}\\]"])
        return style, f"{reasoning}\n{ending}"
    if style == "deepseek_r1":
        return style, (f"<think>\n{reasoning}\nMaybe it is {draft}? No, \\boxed{{{draft}}} is wrong; recheck.\n"
                       f"</think>\n\nAfter checking every case, the answer is \\(\\boxed{{{answer}}}\\).")
    if style == "minerva":
        return style, f"{reasoning}\nFinal Answer: The final answer is ${answer}$. I hope it is correct."
    if style == "latex_display":
        return style, f"{reasoning}\nPutting everything together, we obtain\n\\[\n{answer}\n\\]"
    if style == "latex_inline":
        return style, f"{reasoning}\nHence the result is ${answer}$."
    if style == "prose_number":  # no box, no phrase: the number closes the text
        plain = answer.replace(",", "")
        return style, f"{reasoning}\nSo $d = \\frac{{90}}{{n}}$ for each divisor, and there are {plain} such sequences."
    if style == "gsm8k":
        plain = answer.replace("\\", "").replace(",", "")
        return style, f"{reasoning}\n" + rng.choice([f"#### {plain}", f"The answer is {plain}."])
    joined = " \\quad \\text{and} \\quad ".join(f"\\boxed{{{part}}}" for part in parts)
    return style, f"{reasoning}\nThe solutions are {joined}."


def generate_style_pairs(n: int, seed: int = 1, group_size: int = 4) -> list[Pair]:
    """`n` pairs in real models' styles; `Pair.kind` is "<answer kind>/<style>"."""
    rng = random.Random(seed)
    names = [kind[0] for kind in _STYLE_KINDS]
    makers = {kind[0]: kind[1] for kind in _STYLE_KINDS}
    weights = [kind[2] for kind in _STYLE_KINDS]
    pairs: list[Pair] = []
    while len(pairs) < n:
        kind = rng.choices(names, weights)[0]
        reference, right, wrong = makers[kind](rng)
        written = _wrap_reference(reference, rng)
        for _ in range(group_size):
            correct = rng.random() < 0.5
            answer = rng.choice(right if correct else wrong)
            style, completion = _styled_completion(answer, kind, rng)
            pairs.append(Pair(written, completion, int(correct), f"{kind}/{style}"))
    return pairs[:n]


def bench_styles(n: int = 1000, show: int = 20) -> dict:
    """Both checkers' accuracy against the labels of the style corpus, their agreement, and
    their rates on it (inline, interleaved, per CPU-second: the corpus holds nothing explosive)."""
    from collections import Counter

    pairs = generate_style_pairs(n)
    ours = _build_ours()
    try:
        baseline = _build_math_verify()
    except ImportError:
        baseline = None
    checkers = [ours] if baseline is None else [ours, baseline]
    all_scores, rates = _interleaved_rates(checkers, pairs)
    our_scores = all_scores[0]
    results: dict = {"pairs": len(pairs), "ours_accuracy": _accuracy(our_scores, pairs), "ours_per_cpu_s": rates[0]}
    print(f"model-style corpus ({len(pairs)} pairs: Qwen-Math, DeepSeek-R1, GSM8K, Minerva, bare LaTeX, prose, "
          f"several boxes; references plain, $...$, $$...$$ or boxed)")
    print(f"  ours        accuracy vs labels {results['ours_accuracy']:.2%}   inline {rates[0]:8.1f} /CPU-s")
    wrong = Counter(pair.kind for pair, score in zip(pairs, our_scores) if score.reward != pair.label)
    if wrong:
        print("    ours wrong by kind/style: " + ", ".join(f"{k} {c}" for k, c in wrong.most_common(8)))
    if baseline is None:
        print("  math-verify not installed (pip install -e .[bench]): no comparison")
        return results
    their_scores = all_scores[1]
    results["math_verify_accuracy"] = _accuracy(their_scores, pairs)
    results["math_verify_per_cpu_s"] = rates[1]
    agree = [a.reward == b.reward for a, b in zip(our_scores, their_scores)]
    results["agreement"] = sum(agree) / len(agree)
    print(f"  math-verify accuracy vs labels {results['math_verify_accuracy']:.2%}   inline {rates[1]:8.1f} /CPU-s "
          f"(ratio {rates[0] / rates[1]:.1f}x)")
    print(f"  agreement between the two {results['agreement']:.2%}")
    theirs_wrong = Counter(pair.kind for pair, score in zip(pairs, their_scores) if score.reward != pair.label)
    if theirs_wrong:
        print("    math-verify wrong by kind/style: " + ", ".join(f"{k} {c}" for k, c in theirs_wrong.most_common(8)))
    shown = 0
    for pair, mine, theirs in zip(pairs, our_scores, their_scores):
        if mine.reward != theirs.reward and shown < show:
            shown += 1
            who = "ours" if mine.reward == pair.label else "math-verify"
            print(f"    [{pair.kind}] ref {pair.reference!r} ... {pair.completion[-60:]!r}: label {pair.label}, "
                  f"ours {mine.reward:.0f}, math-verify {theirs.reward:.0f}; right: {who}")
    return results


# ---------------------------------------------------------------------------------------------
# Checkers


class MathVerifyChecker:
    """The `math-verify` package as a verifier: `verify(parse("$ref$"), parse(completion))`,
    its documented usage (default extraction, its own signal-based timeouts)."""

    name = "math-verify"

    def __init__(self):
        from math_verify import parse, verify

        self._parse, self._verify = parse, verify

    def score(self, completion: str, example: dict) -> Score:
        gold = self._parse(f"${example['answer']}$")
        answer = self._parse(completion)
        return Score(float(self._verify(gold, answer)), {"extracted": [str(a) for a in answer[-1:]]})

    def score_batch(self, completions: Sequence[str], examples: Sequence[dict]) -> list[Score]:
        return [self.score(c, e) for c, e in zip(completions, examples)]


def _build_ours():
    from verifiers.math import MathVerifier

    return MathVerifier()


def _build_math_verify():
    return MathVerifyChecker()


def _interleaved_rates(checkers: list, pairs: list[Pair], chunk: int = 100) -> tuple[list[list[Score]], list[float]]:
    """Score `pairs` with each checker in alternating chunks, and return per-checker rates in
    items per CPU-second of this process: on a shared machine, wall-clock rates measured one
    after the other mostly measure the neighbours' load."""
    scores: list[list[Score]] = [[] for _ in checkers]
    cpu_seconds = [0.0 for _ in checkers]
    for start in range(0, len(pairs), chunk):
        part = pairs[start:start + chunk]
        for index, checker in enumerate(checkers):
            started = time.process_time()
            scores[index].extend(checker.score(pair.completion, {"answer": pair.reference}) for pair in part)
            cpu_seconds[index] += time.process_time() - started
    return scores, [len(pairs) / seconds for seconds in cpu_seconds]


def _pool_rate(recipe: Callable, pairs: list[Pair], workers: int, name: str) -> tuple[list[Score], float]:
    from verifiers.pool import ScoringPool

    completions = [pair.completion for pair in pairs]
    examples = [{"answer": pair.reference} for pair in pairs]
    with ScoringPool(recipe, workers=workers, timeout_s=30.0, name=name) as pool:
        pool.score_batch(completions[:workers * 4], examples[:workers * 4])  # start and warm the workers
        started = time.perf_counter()
        scores = pool.score_batch(completions, examples)
        rate = len(pairs) / (time.perf_counter() - started)
    return scores, rate


def bench_math(pairs: list[Pair], workers: int = 2, show: int = 30, with_pool: bool = True) -> dict:
    """Run both checkers on `pairs`; print and return the figures."""
    ours = _build_ours()
    for warm_up in (r"\boxed{\sqrt{2}}", r"\boxed{\lfloor 2.5 \rfloor}"):  # imports outside the clock
        ours.score(warm_up, {"answer": r"\sqrt{3}"})
    try:
        baseline = _build_math_verify()
        baseline.score(pairs[0].completion, {"answer": pairs[0].reference})
    except ImportError:
        baseline = None
    results: dict = {"pairs": len(pairs)}
    checkers = [ours] if baseline is None else [ours, baseline]
    all_scores, rates = _interleaved_rates(checkers, pairs)
    our_scores, results["ours_inline_per_s"] = all_scores[0], rates[0]
    results["ours_accuracy"] = _accuracy(our_scores, pairs)
    if with_pool:
        _, results["ours_pool_per_s"] = _pool_rate(_build_ours, pairs, workers, "math")
    if baseline is not None:
        their_scores, results["math_verify_inline_per_s"] = all_scores[1], rates[1]
        results["math_verify_accuracy"] = _accuracy(their_scores, pairs)
        if with_pool:
            _, results["math_verify_pool_per_s"] = _pool_rate(_build_math_verify, pairs, workers, "math-verify")
        agree = [a.reward == b.reward for a, b in zip(our_scores, their_scores)]
        results["agreement"] = sum(agree) / len(agree)
        results["throughput_ratio_inline"] = results["ours_inline_per_s"] / results["math_verify_inline_per_s"]
        if with_pool:
            results["throughput_ratio_pool"] = results["ours_pool_per_s"] / results["math_verify_pool_per_s"]
        results["disagreements"] = [
            (pair, ours_score, theirs)
            for pair, ours_score, theirs, same in zip(pairs, our_scores, their_scores, agree) if not same
        ]
    _print_math(results, workers, show)
    return results


def _accuracy(scores: list[Score], pairs: list[Pair]) -> float:
    return sum(int(score.reward == pair.label) for score, pair in zip(scores, pairs)) / len(pairs)


def _print_math(results: dict, workers: int, show: int) -> None:
    print(f"math verification, {results['pairs']} generated pairs")
    print(f"  ours        inline (per CPU-second): {results['ours_inline_per_s']:9.1f} /s   "
          f"accuracy vs labels {results['ours_accuracy']:.2%}")
    if "ours_pool_per_s" in results:
        print(f"  ours        pool ({workers} workers, wall-clock): {results['ours_pool_per_s']:8.1f} /s")
    if "math_verify_inline_per_s" not in results:
        print("  math-verify not installed (pip install -e .[bench]): no comparison")
        return
    print(f"  math-verify inline (per CPU-second): {results['math_verify_inline_per_s']:9.1f} /s   "
          f"accuracy vs labels {results['math_verify_accuracy']:.2%}")
    if "math_verify_pool_per_s" in results:
        print(f"  math-verify pool ({workers} workers, wall-clock): {results['math_verify_pool_per_s']:8.1f} /s")
    print(f"  throughput ratio ours / math-verify: inline {results['throughput_ratio_inline']:.1f}x"
          + (f", pool {results['throughput_ratio_pool']:.1f}x" if "throughput_ratio_pool" in results else ""))
    disagreements = results["disagreements"]
    print(f"  agreement {results['agreement']:.2%} ({len(disagreements)} disagreements)")
    if disagreements:
        from collections import Counter

        kinds = Counter(pair.kind for pair, _, _ in disagreements)
        ours_right = sum(ours_score.reward == pair.label for pair, ours_score, _ in disagreements)
        print("    by kind: " + ", ".join(f"{kind} {count}" for kind, count in kinds.most_common())
              + f"; the generator's label sides with ours in {ours_right}/{len(disagreements)}")
    for pair, ours_score, theirs in disagreements[:show]:
        answer = pair.completion.rsplit("\\boxed{", 1)[-1][:-3]
        who = "ours" if ours_score.reward == pair.label else "math-verify"
        print(f"    [{pair.kind}] ref {pair.reference!r} answer {answer!r} label {pair.label}: "
              f"ours {ours_score.reward:.0f} ({ours_score.info.get('reason') or ours_score.info.get('match')}), "
              f"math-verify {theirs.reward:.0f}; right: {who}")
    if len(disagreements) > show:
        print(f"    ... {len(disagreements) - show} more (--show N)")


def load_table() -> list[Pair]:
    """The hand-labeled cases of tests/verifiers/math_cases.py as pairs."""
    import importlib.util

    path = Path(__file__).resolve().parents[1] / "tests" / "verifiers" / "math_cases.py"
    spec = importlib.util.spec_from_file_location("math_cases", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return [Pair(case.reference, case.completion, int(case.expected), case.category) for case in module.CASES]


def bench_table(workers: int = 2, show: int = 30, timeout_s: float = 10.0) -> dict:
    """Accuracy of both checkers on the labeled table. math-verify runs in the pool: some of
    these inputs (power towers) hang it past its own signal-based timeouts."""
    pairs = load_table()
    ours = _build_ours()
    our_scores = [ours.score(pair.completion, {"answer": pair.reference}) for pair in pairs]
    results = {"cases": len(pairs), "ours_accuracy": _accuracy(our_scores, pairs)}
    print(f"labeled table ({len(pairs)} cases, tests/verifiers/math_cases.py)")
    print(f"  ours        accuracy {results['ours_accuracy']:.2%}")
    try:
        _build_math_verify()
    except ImportError:
        return results
    from verifiers.pool import ScoringPool

    with ScoringPool(_build_math_verify, workers=workers, timeout_s=timeout_s, name="math-verify") as pool:
        their_scores = pool.score_batch([p.completion for p in pairs], [{"answer": p.reference} for p in pairs])
        timeouts = pool.stats.timeouts
    results["math_verify_accuracy"] = _accuracy(their_scores, pairs)
    results["math_verify_timeouts"] = timeouts
    wrong = [(pair, theirs) for pair, theirs in zip(pairs, their_scores) if theirs.reward != pair.label]
    results["math_verify_wrong"] = wrong
    print(f"  math-verify accuracy {results['math_verify_accuracy']:.2%} "
          f"({len(wrong)} wrong, {timeouts} killed after {timeout_s:.0f} s)")
    for pair, theirs in wrong[:show]:
        note = f" ({theirs.info['error']})" if "error" in theirs.info else ""
        print(f"    [{pair.kind}] ref {pair.reference!r} completion {pair.completion[:60]!r}: "
              f"label {pair.label}, math-verify {theirs.reward:.0f}{note}")
    if len(wrong) > show:
        print(f"    ... {len(wrong) - show} more (--show N)")
    return results


# ---------------------------------------------------------------------------------------------
# Code verification


_CODE_TASKS = [
    # (stdin program, call-style function named f, assert tests use f): correct and wrong versions
    {
        "make_input": lambda rng: [rng.randint(-10**6, 10**6) for _ in range(rng.randint(1, 30))],
        "stdin_ok": "input()\nprint(sum(map(int, input().split())))",
        "stdin_bad": "input()\nprint(sum(abs(int(x)) for x in input().split()))",
        "call_ok": "def f(xs):\n    return sum(xs)",
        "call_bad": "def f(xs):\n    return sum(abs(x) for x in xs)",
        "answer": lambda xs: sum(xs),
    },
    {
        "make_input": lambda rng: sorted(rng.sample(range(1000), rng.randint(1, 12)), key=lambda _: rng.random()),
        "stdin_ok": "input()\nprint(*sorted(map(int, input().split())))",
        "stdin_bad": "input()\nprint(*sorted(map(int, input().split()))[:-1])",
        "call_ok": "def f(xs):\n    return sorted(xs)",
        "call_bad": "def f(xs):\n    return sorted(xs, reverse=True)",
        "answer": lambda xs: sorted(xs),
    },
]
_CODE_EXTRAS = {  # solutions that misbehave: each must score 0 and never stall the batch
    "crash after printing": ("input()\nprint(sum(map(int, input().split())))\nraise SystemExit(1)",
                             "def f(xs):\n    s = sum(xs)\n    raise ValueError(s)"),
    "infinite loop": ("while True: pass", "def f(xs):\n    while True: pass"),
    "syntax error": ("print(sum(map(int, input().split()))", "def f(xs) return 0"),
    "exit early": ("import sys\nsys.exit(0)", "import os\nos._exit(0)"),
}


def generate_code_tasks(n: int, seed: int = 0, cases: int = 5) -> list[tuple[str, str, str, dict, int]]:
    """(format, kind, completion, example, label): n of each format, mostly plain right or wrong
    solutions ("plain"), every tenth one crashing, looping, failing to parse or exiting early."""
    rng = random.Random(seed)
    items = []
    for fmt in ("stdin", "call", "assert"):
        for k in range(n):
            task = rng.choice(_CODE_TASKS)
            inputs = [task["make_input"](rng) for _ in range(cases)]
            answers = [task["answer"](xs) for xs in inputs]
            if fmt == "stdin":
                example = {"tests": {"inputs": [f"{len(xs)}\n{' '.join(map(str, xs))}\n" for xs in inputs],
                                     "outputs": [(" ".join(map(str, a)) if isinstance(a, list) else str(a)) + "\n"
                                                 for a in answers]}}
            elif fmt == "call":
                example = {"tests": {"fn_name": "f", "inputs": [[xs] for xs in inputs], "outputs": answers}}
            else:
                example = {"test": "\n".join(f"assert f({xs!r}) == {a!r}" for xs, a in zip(inputs, answers))}
            key = "stdin" if fmt == "stdin" else "call"
            if k % 10 == 9:
                kind = list(_CODE_EXTRAS)[(k // 10) % len(_CODE_EXTRAS)]
                code, label = _CODE_EXTRAS[kind][0 if fmt == "stdin" else 1], 0
            else:
                kind, label = "plain", int(rng.random() < 0.5)
                code = task[f"{key}_ok" if label else f"{key}_bad"]
            items.append((fmt, kind, f"Here is the solution.\n```python\n{code}\n```\n", example, label))
    return items


def bench_code(n: int = 100, cases: int = 5, seed: int = 0) -> dict:
    """Code verifications per second (wall clock) through the sandbox pool, per test format:
    plain right/wrong solutions, then the misbehaving ones (a looping one costs its 1 s case
    limit). Every score must match its label."""
    from verifiers.code import CodeVerifier

    verifier = CodeVerifier(case_timeout_s=1.0, solution_timeout_s=5.0)
    verifier.score("print(1)", {"tests": {"inputs": [""], "outputs": ["1"]}})  # start the sandboxes
    items = generate_code_tasks(n, seed, cases)
    results: dict = {"solutions_per_format": n, "cases_per_solution": cases}
    print(f"code verification, {n} solutions per format ({cases} cases each, 10% misbehaving), "
          f"{verifier._get_sandbox_pool().workers} sandbox workers, wall clock")
    for fmt in ("stdin", "call", "assert"):
        for group in ("plain", "misbehaving"):
            part = [item for item in items if item[0] == fmt and (item[1] == "plain") == (group == "plain")]
            started = time.perf_counter()
            scores = verifier.score_batch([item[2] for item in part], [item[3] for item in part])
            seconds = time.perf_counter() - started
            matched = sum(int(score.reward == item[4]) for score, item in zip(scores, part))
            results[f"{fmt}_{group}"] = {"per_s": len(part) / seconds, "matched": matched, "total": len(part)}
            print(f"  {fmt:6s} {group:11s}: {len(part) / seconds:7.1f} solutions/s "
                  f"({len(part) * cases / seconds:7.1f} cases/s), labels matched {matched}/{len(part)}")
    return results


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pairs", type=int, default=3000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--show", type=int, default=30, help="disagreements to list")
    parser.add_argument("--no-pool", action="store_true", help="inline figures only")
    parser.add_argument("--no-table", action="store_true", help="skip the labeled-table accuracy run")
    parser.add_argument("--style-pairs", type=int, default=1000, help="pairs of the model-style corpus (0: skip)")
    parser.add_argument("--code-solutions", type=int, default=100, help="code solutions per test format")
    parser.add_argument("--code-only", action="store_true", help="only the code verification figures")
    parser.add_argument("--no-code", action="store_true", help="skip the code verification figures")
    args = parser.parse_args(argv)
    if args.code_only:
        bench_code(args.code_solutions, seed=args.seed)
        return 0
    pairs = generate_pairs(args.pairs, args.seed)
    bench_math(pairs, workers=args.workers, show=args.show, with_pool=not args.no_pool)
    if args.style_pairs:
        print()
        bench_styles(args.style_pairs, show=args.show)
    if not args.no_table:
        print()
        bench_table(workers=args.workers, show=args.show)
    if not args.no_code:
        print()
        bench_code(args.code_solutions, seed=args.seed)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
