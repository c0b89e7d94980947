"""Arithmetic too hard for the tiny model in its head, for tool-integrated training (configs/tiny_tool_arith.yaml).

Hard kinds: `product3` (a three-digit by three-digit product, "What is 347 * 582?") and `sum4` (four four-digit
numbers, "What is 1234 + 5678 + 9012 + 3456?"). Easy problems are the embedded default's (grpo.data.tasks.arithmetic:
up to three digits with + and -, two-digit by one-digit products).

Two demonstrations per problem:
- `solution` (with tools): a hard problem calls the python tool on the question's expression and boxes what it
  printed; an easy one is worked in columns, as in the embedded default (no call). The call is written in the
  run's `tools.format`: a ```python block and its ```output (code_block), or a JSON `<tool_call>` and the answer as
  `<tool_response>` (tool_call; SFT renders it with the chat template, as a rollout's answer is).
- `solution_no_tools`: the best working a model without tools gets: columns for easy problems and for `sum4`
  (column addition with several operands, the carry written out); the boxed answer alone for `product3`, for which
  no digit-by-digit working exists here.

Pools are disjoint (canonical keys: operands sorted), and the held-out pool holds hard problems only.
"""
from __future__ import annotations

import random
from dataclasses import dataclass

from grpo.data.tasks.arithmetic import ArithmeticProblem, ArithmeticSpec, sample_problem, solution_columns
from grpo.data.tool_format import python_call, render_response, tool_call_text, tool_response_text

HARD_KINDS = ("product3", "sum4")


@dataclass(frozen=True)
class HardProblem:
    kind: str
    operands: tuple[int, ...]

    @property
    def op(self) -> str:
        return "*" if self.kind == "product3" else "+"

    @property
    def answer(self) -> int:
        if self.op == "*":
            a, b = self.operands
            return a * b
        return sum(self.operands)

    @property
    def key(self) -> tuple:
        return (self.kind, tuple(sorted(self.operands)))

    def expression(self) -> str:
        return f" {self.op} ".join(str(x) for x in self.operands)

    def question(self) -> str:
        return f"What is {self.expression()}?"


def sample_hard(rng: random.Random, kind: str) -> HardProblem:
    if kind == "product3":
        return HardProblem(kind, (rng.randint(100, 999), rng.randint(100, 999)))
    if kind == "sum4":
        return HardProblem(kind, tuple(rng.randint(1000, 9999) for _ in range(4)))
    raise ValueError(f"unknown hard kind {kind!r}; expected one of {HARD_KINDS}")


def columns_sum(operands: tuple[int, ...]) -> str:
    """Column addition of several numbers, least-significant digit first: "4+8+2+6=20,3+5+1+2+2=13,...": the
    carry into a column (now up to 3) is the last term."""
    digits = [[int(ch) for ch in reversed(str(x))] for x in operands]
    steps, carry = [], 0
    for i in range(max(len(d) for d in digits)):
        column = [d[i] if i < len(d) else 0 for d in digits]
        total = sum(column) + carry
        steps.append("+".join(str(x) for x in column) + (f"+{carry}" if carry else "") + f"={total}")
        carry = total // 10
    return ",".join(steps) + f",\\boxed{{{sum(operands)}}}"


def tool_solution(problem: HardProblem, tool_format: str = "code_block") -> str:
    """The demonstration with a python call: the call, the output exactly as the tool answers, the boxed answer."""
    code, output = f"print({problem.expression()})", str(problem.answer)
    if tool_format == "tool_call":
        call = tool_call_text("python", {"code": code}) + tool_response_text(output)
    else:
        call = python_call(code) + render_response(output)
    return call + f"\\boxed{{{problem.answer}}}"


def plain_solution(problem: HardProblem) -> str:
    if problem.kind == "sum4":
        return columns_sum(problem.operands)
    return f"\\boxed{{{problem.answer}}}"


def _row(question: str, answer: int, solution: str, solution_no_tools: str, kind: str) -> dict:
    return {"prompt": question, "answer": str(answer), "solution": solution, "solution_no_tools": solution_no_tools,
            "kind": kind}


def make_pools(sizes: dict[str, int], seed: int, *, hard_share: float = 0.5, hard_kinds=HARD_KINDS,
               hard_only: tuple[str, ...] = ("eval",), tool_format: str = "code_block") -> dict:
    """Disjoint named pools (datasets.Dataset with prompt, answer, solution, solution_no_tools, kind). Pools named
    in `hard_only` hold hard problems only; the others a `hard_share` of hard ones, the kinds in turn. The problems
    do not depend on `tool_format`, only the calls in `solution`."""
    from datasets import Dataset

    rng = random.Random(f"tool_arithmetic:{seed}")
    easy_spec = ArithmeticSpec()
    taken: set = set()
    pools = {}
    for name, size in sizes.items():
        rows, n_hard = [], round(size * (1.0 if name in hard_only else hard_share))
        attempts = 0
        while len(rows) < size:
            attempts += 1
            if attempts > 100 * size + 10_000:
                raise ValueError(f"tool_arithmetic: could not draw {size} distinct problems for pool {name!r}")
            if len(rows) < n_hard:
                problem = sample_hard(rng, hard_kinds[len(rows) % len(hard_kinds)])
                if problem.key in taken:
                    continue
                row = _row(problem.question(), problem.answer, tool_solution(problem, tool_format), plain_solution(problem),
                           problem.kind)
            else:
                easy: ArithmeticProblem = sample_problem(rng, easy_spec)
                if easy.key in taken:
                    continue
                problem, worked = easy, solution_columns(easy)
                row = _row(easy.question(), easy.answer, worked, worked, "easy")
            taken.add(problem.key)
            rows.append(row)
        rng.shuffle(rows)
        pools[name] = Dataset.from_list(rows) if rows else Dataset.from_dict({k: [] for k in _row("", 0, "", "", "")})
    return pools
