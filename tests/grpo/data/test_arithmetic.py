"""The arithmetic task generator: determinism, correctness of answers and worked solutions, disjoint splits."""

from __future__ import annotations

import operator
import re

import pytest

from grpo.data.tasks.arithmetic import (
    ArithmeticProblem,
    generate_arithmetic,
    make_pools,
    make_splits,
    solution_columns,
)

QUESTION = re.compile(r"What is (\d+) ([-+*]) (\d+)\?")
APPLY = {"+": operator.add, "-": operator.sub, "*": operator.mul}


def parse(prompt: str) -> tuple[int, str, int]:
    match = QUESTION.fullmatch(prompt)
    assert match, prompt
    return int(match.group(1)), match.group(2), int(match.group(3))


def canonical(prompt: str) -> tuple:
    a, op, b = parse(prompt)
    return (op, min(a, b), max(a, b)) if op in "+*" else (op, a, b)


def keys(dataset) -> set:
    return {canonical(p) for p in dataset["prompt"]}


def test_same_seed_same_data_and_other_seed_other_data():
    first = generate_arithmetic(300, seed=5)
    assert first.to_dict() == generate_arithmetic(300, seed=5).to_dict()
    other = generate_arithmetic(300, seed=6)
    assert len(set(first["prompt"]) & set(other["prompt"])) < 30


def test_columns_and_answers_are_correct():
    data = generate_arithmetic(2000, seed=1)
    assert data.column_names == ["prompt", "answer", "solution", "op"]
    for row in data:
        a, op, b = parse(row["prompt"])
        assert row["op"] == op
        assert row["answer"] == str(APPLY[op](a, b))
        assert row["solution"].endswith("\\boxed{" + row["answer"] + "}")


def test_problems_within_a_dataset_are_distinct_even_when_commuted():
    data = generate_arithmetic(3000, seed=2)
    assert len(keys(data)) == len(data)


def test_defaults_match_the_embedded_task():
    # Issue 9: integers up to three digits with + and -, two-digit by one-digit multiplication.
    data = generate_arithmetic(3000, seed=3)
    seen_ops = set()
    for prompt in data["prompt"]:
        a, op, b = parse(prompt)
        seen_ops.add(op)
        if op == "*":
            assert a <= 99 and b <= 9
        else:
            assert a <= 999 and b <= 999
        if op == "-":
            assert a >= b, "negative results are off by default"
    assert seen_ops == {"+", "-", "*"}
    # Digit counts are drawn uniformly, so short operands are common, not ~1% as with uniform values.
    one_digit = sum(parse(p)[0] < 10 for p in data["prompt"])
    assert one_digit > 0.1 * len(data)


@pytest.mark.parametrize("a, op, b, expected", [
    (347, "+", 58, "7+8=15,4+5+1=10,3+0+1=4,\\boxed{405}"),
    (999, "+", 1, "9+1=10,9+0+1=10,9+0+1=10,\\boxed{1000}"),
    (347, "-", 58, "17-8=9,14-5-1=8,3-0-1=2,\\boxed{289}"),
    (347, "-", 340, "7-0=7,4-4=0,3-3=0,\\boxed{7}"),
    (58, "-", 347, "neg,17-8=9,14-5-1=8,3-0-1=2,\\boxed{-289}"),
    (47, "*", 8, "7*8=56,4*8+5=37,\\boxed{376}"),
    (0, "*", 7, "0*7=0,\\boxed{0}"),
])
def test_columns_solution_examples(a, op, b, expected):
    assert solution_columns(ArithmeticProblem(a, op, b)) == expected


def test_every_column_step_is_a_true_equation():
    # Borrow steps read "14-5-1=8": the leading 1 is the borrowed ten, so evaluate them as written.
    data = generate_arithmetic(1500, seed=4, allow_negative=True)
    for row in data:
        *steps, _ = row["solution"].split(",")
        steps = [s for s in steps if s != "neg"]
        for step in steps:
            expression, value = step.split("=")
            assert eval(expression) == int(value), (row["prompt"], step)
        values = [int(s.split("=")[1]) for s in steps]
        spelled = int(str(values[-1]) + "".join(str(v % 10) for v in reversed(values[:-1])))
        assert (-spelled if row["solution"].startswith("neg,") else spelled) == int(row["answer"]), row


def test_solutions_score_full_reward_with_the_math_verifier():
    import verifiers

    math_verifier = verifiers.get("math")
    data = generate_arithmetic(200, seed=7, allow_negative=True)
    for row in data:
        assert math_verifier.score(row["solution"], {"answer": row["answer"]}).reward == 1.0, row
    # ...and a wrong boxed answer does not.
    wrong = data[0]["solution"].replace("\\boxed{", "\\boxed{1")
    assert math_verifier.score(wrong, {"answer": data[0]["answer"]}).reward == 0.0


def test_direct_style_is_just_the_boxed_answer():
    data = generate_arithmetic(50, seed=8, solution_style="direct")
    assert all(s == "\\boxed{" + a + "}" for s, a in zip(data["solution"], data["answer"]))


def test_split_has_no_overlap_and_eval_does_not_depend_on_train_size():
    train, eval_set = make_splits(4000, 500, seed=0)
    assert (len(train), len(eval_set)) == (4000, 500)
    assert not keys(train) & keys(eval_set)
    _, eval_again = make_splits(100, 500, seed=0)
    assert eval_again.to_dict() == eval_set.to_dict()


def test_pools_are_disjoint_exact_size_and_deterministic():
    eval_set = generate_arithmetic(500, seed="eval")
    pools = make_pools({"sft": 3000, "rl": 1500}, seed=0, exclude=eval_set)
    assert {name: len(d) for name, d in pools.items()} == {"sft": 3000, "rl": 1500}
    assert not keys(pools["sft"]) & keys(pools["rl"])
    assert not (keys(pools["sft"]) | keys(pools["rl"])) & keys(eval_set)
    again = make_pools({"sft": 3000, "rl": 1500}, seed=0, exclude=eval_set)
    assert all(again[name].to_dict() == pools[name].to_dict() for name in pools)


def test_scarce_problems_are_shared_between_pools():
    # Under a thousand distinct 2-digit x 1-digit products exist; filling pools one after another would
    # give them all to the first pool. Dealt, each pool gets a share in proportion to its size.
    pools = make_pools({"sft": 6000, "rl": 3000}, seed=0)
    mul = {name: sum(op == "*" for op in d["op"]) for name, d in pools.items()}
    assert mul["rl"] > 0.3 * mul["sft"] and mul["sft"] > 0.3 * 2 * mul["rl"], mul


def test_exclude_accepts_datasets_questions_and_problems():
    base = generate_arithmetic(200, seed=9)
    by_dataset = generate_arithmetic(500, seed=10, exclude=base)
    by_text = generate_arithmetic(500, seed=10, exclude=list(base["prompt"]))
    by_problem = generate_arithmetic(
        500, seed=10, exclude=[ArithmeticProblem.from_question(p) for p in base["prompt"]])
    assert by_dataset.to_dict() == by_text.to_dict() == by_problem.to_dict()
    assert not keys(by_dataset) & keys(base)


def test_a_commuted_question_counts_as_the_same_problem():
    # Only 55 one-digit sums exist up to commuting; excluding the commuted forms of 50 of them leaves 5.
    base = generate_arithmetic(50, seed=0, ops=("+",), max_digits=1)
    swapped = [f"What is {b} + {a}?" for a, _, b in map(parse, base["prompt"])]
    rest = generate_arithmetic(5, seed=1, ops=("+",), max_digits=1, exclude=swapped)
    assert not keys(rest) & keys(base)
    with pytest.raises(ValueError, match="distinct problems"):
        generate_arithmetic(6, seed=1, ops=("+",), max_digits=1, exclude=swapped)


def test_difficulty_knobs():
    small = generate_arithmetic(300, seed=11, max_digits=2, ops=("+", "-"))
    assert all(a < 100 and b < 100 and op in "+-" for a, op, b in map(parse, small["prompt"]))
    long = generate_arithmetic(300, seed=11, min_digits=3, max_digits=3, ops=("+",))
    assert all(a >= 100 and b >= 100 for a, _, b in map(parse, long["prompt"]))
    mul = generate_arithmetic(300, seed=11, ops=("*",), mul_max_digits=(3, 1))
    assert max(parse(p)[0] for p in mul["prompt"]) >= 100
    negative = generate_arithmetic(300, seed=11, ops=("-",), allow_negative=True)
    assert any(int(a) < 0 for a in negative["answer"])
    assert all(s.startswith("neg,") == a.startswith("-") for s, a in zip(negative["solution"],
                                                                          negative["answer"]))


@pytest.mark.parametrize("knobs, field", [
    ({"ops": ("+", "/")}, "ops"),
    ({"ops": ()}, "ops"),
    ({"max_digits": 0}, "max_digits"),
    ({"min_digits": 3, "max_digits": 2}, "min_digits"),
    ({"mul_max_digits": (2, 0)}, "mul_max_digits"),
    ({"solution_style": "essay"}, "solution_style"),
])
def test_bad_knobs_are_rejected_by_name(knobs, field):
    with pytest.raises(ValueError, match=field):
        generate_arithmetic(10, seed=0, **knobs)


def test_asking_for_more_problems_than_exist_fails_clearly():
    # One-digit sums: 55 distinct problems once "a + b" and "b + a" are the same.
    assert len(generate_arithmetic(55, seed=0, ops=("+",), max_digits=1)) == 55
    with pytest.raises(ValueError, match="distinct problems"):
        generate_arithmetic(56, seed=0, ops=("+",), max_digits=1)


def test_columns_refuse_multi_digit_multipliers_but_direct_allows_them():
    with pytest.raises(ValueError, match="one-digit second factor"):
        generate_arithmetic(50, seed=0, ops=("*",), mul_max_digits=(2, 2))
    data = generate_arithmetic(50, seed=0, ops=("*",), mul_max_digits=(2, 2), solution_style="direct")
    assert len(data) == 50
