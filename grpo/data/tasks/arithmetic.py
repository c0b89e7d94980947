"""Synthetic integer arithmetic: the embedded default task.

Problems are `a op b` with non-negative operands ("What is 347 - 58?"); the reference answer is exact, so the
math verifier can score any completion. Everything is a pure function of the seed and the knobs.

Overlap control: every problem has a canonical key (operands sorted for the commutative `+` and `*`, so
"3 + 5" and "5 + 3" count as the same problem). `make_pools` draws named pools in order, each excluding the
keys of every pool drawn before it, so an eval set never shares a problem with SFT demonstrations or RL
prompts. Each pool has its own random stream (derived from the seed and the pool's name), so an earlier
pool does not change when a later pool's size does.

Worked solutions (the `solution` column, for SFT) are written for a tiny character-level model: the
`columns` style works one digit column at a time, least-significant digit first, with the carry (or borrow)
written out, because that is the order in which each digit depends only on things already written. It ends
in `\\boxed{answer}`, which the math verifier extracts.
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

OPERATORS = ("+", "-", "*")
QUESTION_TEMPLATE = "What is {a} {op} {b}?"
_QUESTION_RE = re.compile(r"What is (\d+) ([-+*]) (\d+)\?")

ProblemKey = tuple[str, int, int]


@dataclass(frozen=True)
class ArithmeticProblem:
    a: int
    op: str
    b: int

    @property
    def answer(self) -> int:
        if self.op == "+":
            return self.a + self.b
        if self.op == "-":
            return self.a - self.b
        if self.op == "*":
            return self.a * self.b
        raise ValueError(f"unknown operator {self.op!r}; expected one of {OPERATORS}")

    @property
    def key(self) -> ProblemKey:
        """Canonical identity: equal for problems that differ only by commuting the operands."""
        if self.op in ("+", "*"):
            return (self.op, min(self.a, self.b), max(self.a, self.b))
        return (self.op, self.a, self.b)

    def question(self) -> str:
        return QUESTION_TEMPLATE.format(a=self.a, op=self.op, b=self.b)

    @classmethod
    def from_question(cls, text: str) -> "ArithmeticProblem":
        match = _QUESTION_RE.fullmatch(text.strip())
        if match is None:
            raise ValueError(f"not an arithmetic question of the form {QUESTION_TEMPLATE!r}: {text!r}")
        return cls(int(match.group(1)), match.group(2), int(match.group(3)))


# ---------------------------------------------------------------------------------------------------------
# Worked solutions


def _digits_lsb_first(value: int) -> list[int]:
    return [int(ch) for ch in reversed(str(value))]


def _boxed(value: int) -> str:
    return f"\\boxed{{{value}}}"


def _add_columns(a: int, b: int) -> list[str]:
    # "7+8=15,4+5+1=10,3+0+1=4" for 347 + 58: the carry into a column is written as "+1".
    da, db = _digits_lsb_first(a), _digits_lsb_first(b)
    steps, carry = [], 0
    for i in range(max(len(da), len(db))):
        x = da[i] if i < len(da) else 0
        y = db[i] if i < len(db) else 0
        total = x + y + carry
        steps.append(f"{x}+{y}{'+1' if carry else ''}={total}")
        carry = total // 10
    return steps


def _subtract_columns(a: int, b: int) -> list[str]:
    # a >= b. "17-8=9,14-5-1=8,3-0-1=2" for 347 - 58: a borrowed ten shows as a leading "1" on the top digit,
    # the borrow paid back as "-1" in the next column.
    da, db = _digits_lsb_first(a), _digits_lsb_first(b)
    steps, borrow = [], 0
    for i in range(len(da)):
        x = da[i]
        y = db[i] if i < len(db) else 0
        diff = x - y - borrow
        paid = "-1" if borrow else ""
        if diff < 0:
            steps.append(f"1{x}-{y}{paid}={diff + 10}")
            borrow = 1
        else:
            steps.append(f"{x}-{y}{paid}={diff}")
            borrow = 0
    return steps


def _multiply_columns(a: int, b: int) -> list[str]:
    # b has one digit. "7*8=56,4*8+5=37" for 47 * 8: the carry (a full digit here) is added explicitly.
    if b > 9:
        raise ValueError(f"the columns solution supports a one-digit second factor, got {a} * {b}; "
                         f"use solution_style='direct' or mul_max_digits=(n, 1)")
    steps, carry = [], 0
    for x in _digits_lsb_first(a):
        total = x * b + carry
        steps.append(f"{x}*{b}{f'+{carry}' if carry else ''}={total}")
        carry = total // 10
    return steps


def solution_columns(problem: ArithmeticProblem) -> str:
    """Column-by-column working, least-significant digit first, then the boxed answer."""
    a, op, b = problem.a, problem.op, problem.b
    if op == "+":
        steps = _add_columns(a, b)
    elif op == "*":
        steps = _multiply_columns(a, b)
    elif a >= b:
        steps = _subtract_columns(a, b)
    else:
        # A negative result: say so, then subtract the other way round.
        steps = ["neg"] + _subtract_columns(b, a)
    return ",".join(steps) + "," + _boxed(problem.answer)


def solution_direct(problem: ArithmeticProblem) -> str:
    """Just the boxed answer (the hardest style for a small model: no working)."""
    return _boxed(problem.answer)


SOLUTION_STYLES: dict[str, Callable[[ArithmeticProblem], str]] = {
    "columns": solution_columns,
    "direct": solution_direct,
}


# ---------------------------------------------------------------------------------------------------------
# Sampling


@dataclass(frozen=True)
class ArithmeticSpec:
    """Difficulty knobs. Digit counts are drawn uniformly per operand, then the value uniformly among numbers
    with that many digits, so short operands are as common as long ones (a uniform value would make almost
    every operand three digits long)."""

    max_digits: int = 3
    min_digits: int = 1
    ops: tuple[str, ...] = OPERATORS
    mul_max_digits: tuple[int, int] = (2, 1)
    allow_negative: bool = False

    def __post_init__(self) -> None:
        if not self.ops:
            raise ValueError("ops must name at least one operator")
        unknown = [op for op in self.ops if op not in OPERATORS]
        if unknown:
            raise ValueError(f"ops: unknown operator(s) {unknown}; expected a subset of {OPERATORS}")
        if not 1 <= self.min_digits <= self.max_digits:
            raise ValueError(f"need 1 <= min_digits <= max_digits, got min_digits={self.min_digits}, "
                             f"max_digits={self.max_digits}")
        if len(self.mul_max_digits) != 2 or min(self.mul_max_digits) < 1:
            raise ValueError(f"mul_max_digits must be two positive digit counts, got {self.mul_max_digits}")


def _random_operand(rng: random.Random, min_digits: int, max_digits: int) -> int:
    digits = rng.randint(min_digits, max_digits)
    low = 0 if digits == 1 else 10 ** (digits - 1)
    return rng.randint(low, 10 ** digits - 1)


def sample_problem(rng: random.Random, spec: ArithmeticSpec) -> ArithmeticProblem:
    op = rng.choice(spec.ops)
    if op == "*":
        first_max, second_max = spec.mul_max_digits
        a = _random_operand(rng, min(spec.min_digits, first_max), first_max)
        b = _random_operand(rng, min(spec.min_digits, second_max), second_max)
        return ArithmeticProblem(a, op, b)
    a = _random_operand(rng, spec.min_digits, spec.max_digits)
    b = _random_operand(rng, spec.min_digits, spec.max_digits)
    if op == "-" and a < b and not spec.allow_negative:
        a, b = b, a
    return ArithmeticProblem(a, op, b)


def _keys_of(exclude: Any) -> set[ProblemKey]:
    """Problem keys from problems, keys, question strings, or a dataset / mapping with a `prompt` column."""
    if exclude is None:
        return set()
    if hasattr(exclude, "column_names"):  # a datasets.Dataset
        exclude = exclude["prompt"]
    keys: set[ProblemKey] = set()
    for item in exclude:
        if isinstance(item, ArithmeticProblem):
            keys.add(item.key)
        elif isinstance(item, str):
            keys.add(ArithmeticProblem.from_question(item).key)
        elif isinstance(item, Mapping) and "prompt" in item:
            keys.add(ArithmeticProblem.from_question(item["prompt"]).key)
        elif isinstance(item, tuple) and len(item) == 3:
            keys.add(item)  # already a key
        else:
            raise TypeError(f"exclude: cannot read a problem from {item!r}")
    return keys


def generate_problems(n: int, *, seed: int | str, spec: ArithmeticSpec = ArithmeticSpec(),
                      exclude: Any = None) -> list[ArithmeticProblem]:
    """`n` distinct problems (by canonical key), none of them in `exclude`; deterministic in `seed`."""
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    rng = random.Random(f"arithmetic:{seed}")  # str seeds hash with sha512: stable across runs and platforms
    taken = _keys_of(exclude)
    problems: list[ArithmeticProblem] = []
    attempts, max_attempts = 0, 100 * n + 10_000
    while len(problems) < n:
        attempts += 1
        if attempts > max_attempts:
            raise ValueError(f"could only draw {len(problems)} of {n} distinct problems with {spec} "
                             f"(after excluding {len(_keys_of(exclude))}); raise max_digits, add operators "
                             f"or ask for fewer")
        problem = sample_problem(rng, spec)
        if problem.key in taken:
            continue
        taken.add(problem.key)
        problems.append(problem)
    return problems


def to_dataset(problems: Iterable[ArithmeticProblem], solution_style: str = "columns"):
    """A `datasets.Dataset` with `prompt`, `answer` (str), `solution` (worked, for SFT) and `op` columns."""
    from datasets import Dataset

    if solution_style not in SOLUTION_STYLES:
        raise ValueError(f"solution_style: unknown style {solution_style!r}; choose one of "
                         f"{sorted(SOLUTION_STYLES)}")
    write_solution = SOLUTION_STYLES[solution_style]
    rows: dict[str, list[str]] = {"prompt": [], "answer": [], "solution": [], "op": []}
    for problem in problems:
        rows["prompt"].append(problem.question())
        rows["answer"].append(str(problem.answer))
        rows["solution"].append(write_solution(problem))
        rows["op"].append(problem.op)
    return Dataset.from_dict(rows)


def _spec_from_knobs(*, max_digits: int = 3, ops: Iterable[str] = OPERATORS,
                     mul_max_digits: tuple[int, int] = (2, 1), min_digits: int = 1,
                     allow_negative: bool = False) -> ArithmeticSpec:
    return ArithmeticSpec(max_digits=max_digits, min_digits=min_digits, ops=tuple(ops),
                          mul_max_digits=tuple(mul_max_digits), allow_negative=allow_negative)


def generate_arithmetic(
    n: int,
    *,
    seed: int | str,
    max_digits: int = 3,
    ops: Iterable[str] = OPERATORS,
    mul_max_digits: tuple[int, int] = (2, 1),
    exclude: Any = None,
    min_digits: int = 1,
    allow_negative: bool = False,
    solution_style: str = "columns",
):
    """`n` distinct arithmetic problems as a `datasets.Dataset` (`prompt`, `answer`, `solution`, `op`).

    `exclude` takes problems to keep out: a Dataset made here, question strings, `ArithmeticProblem`s or keys.
    """
    spec = _spec_from_knobs(max_digits=max_digits, ops=ops, mul_max_digits=mul_max_digits,
                            min_digits=min_digits, allow_negative=allow_negative)
    return to_dataset(generate_problems(n, seed=seed, spec=spec, exclude=exclude), solution_style)


def make_pools(sizes: Mapping[str, int], seed: int | str, *, exclude: Any = None,
               **knobs: Any) -> dict[str, Any]:
    """Disjoint named pools, e.g. `make_pools({"sft": 10000, "rl": 5000}, seed=0, exclude=eval_set)`.

    One stream of distinct problems is dealt out to the pools, each new problem going to the pool that is
    furthest from full. Dealing (rather than filling the pools one after another) matters when a part of the
    problem space is small: there are under a thousand distinct `2-digit * 1-digit` products, and a pool
    filled first would take them all. Dealt, every pool gets its proportional share of such scarce problems.
    Consequently a pool's content depends on the other pools' sizes; draw the eval set on its own first and
    pass it as `exclude` (as `make_splits` does) so that it stays fixed. `knobs` are the keyword arguments
    of `generate_arithmetic` (max_digits, ops, solution_style, ...).
    """
    for name, size in sizes.items():
        if not isinstance(size, int) or size < 0:
            raise ValueError(f"pool {name!r}: size must be a non-negative integer, got {size!r}")
    solution_style = knobs.pop("solution_style", "columns")
    total = sum(sizes.values())
    stream = generate_problems(total, seed=f"pools:{seed}", spec=_spec_from_knobs(**knobs), exclude=exclude)
    dealt: dict[str, list[ArithmeticProblem]] = {name: [] for name in sizes}
    for problem in stream:
        # The pool with the largest unfilled fraction; ties go to the pool named first.
        name = max((n for n in sizes if len(dealt[n]) < sizes[n]),
                   key=lambda n: (sizes[n] - len(dealt[n])) / sizes[n])
        dealt[name].append(problem)
    return {name: to_dataset(problems, solution_style) for name, problems in dealt.items()}


def make_splits(n_train: int, n_eval: int, seed: int | str, *, exclude: Any = None,
                **knobs: Any) -> tuple[Any, Any]:
    """(train, eval) with no problem in common. Eval is drawn first on its own, so it depends only on the
    seed, `n_eval` and the knobs, never on `n_train`."""
    eval_set = generate_arithmetic(n_eval, seed=f"eval:{seed}", exclude=exclude, **knobs)
    excluded = _keys_of(exclude) | _keys_of(eval_set)
    train = generate_arithmetic(n_train, seed=f"train:{seed}", exclude=excluded, **knobs)
    return train, eval_set
