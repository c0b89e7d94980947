"""The tool-integrated arithmetic task: disjoint pools, hard-only held-out problems, demonstrations whose tool
segment is exactly what the python tool answers, and no-tool workings that add up."""
import re

from grpo.config import DataConfig, ToolArithmeticConfig
from grpo.data.rows import load_splits
from grpo.data.tasks.tool_arithmetic import HardProblem, columns_sum, make_pools, tool_solution
from grpo.data.tool_format import (PYTHON_TOOL, find_call, find_tool_calls, render_response, split_segments,
                                   tool_response_text)


def test_pools_are_disjoint_and_eval_is_hard_only():
    pools = make_pools({"eval": 200, "sft": 400, "rl": 400}, seed=3, hard_share=0.5)
    prompts = {name: set(ds["prompt"]) for name, ds in pools.items()}
    assert not (prompts["eval"] & prompts["sft"]) and not (prompts["eval"] & prompts["rl"])
    assert not (prompts["sft"] & prompts["rl"])
    assert set(pools["eval"]["kind"]) == {"product3", "sum4"}
    assert pools["sft"]["kind"].count("easy") == 200
    again = make_pools({"eval": 200, "sft": 400, "rl": 400}, seed=3, hard_share=0.5)
    assert again["eval"]["prompt"] == pools["eval"]["prompt"]  # deterministic in the seed


def test_hard_demonstrations_call_python_and_box_its_output():
    for row in make_pools({"eval": 50}, seed=0)["eval"]:
        segments = split_segments(row["solution"])
        assert [by_model for _, by_model in segments] == [True, False, True]
        call = find_call(segments[0][0])
        assert call.tool == "python"
        expression = re.fullmatch(r"print\((.*)\)\n", call.body).group(1)
        assert str(eval(expression)) == row["answer"]  # the generated expression, not model output
        assert segments[1][0] == render_response(row["answer"])
        assert segments[2][0] == f"\\boxed{{{row['answer']}}}"
        assert row["solution_no_tools"].endswith(f"\\boxed{{{row['answer']}}}")


def test_tool_call_demonstrations_write_a_json_call_and_its_response():
    code_block = make_pools({"eval": 20, "sft": 20}, seed=0)
    json_calls = make_pools({"eval": 20, "sft": 20}, seed=0, tool_format="tool_call")
    for name in ("eval", "sft"):
        assert json_calls[name]["prompt"] == code_block[name]["prompt"]  # the same problems
    for row in json_calls["eval"]:
        call_text, rest = row["solution"].split("</tool_call>")
        [call] = find_tool_calls(call_text + "</tool_call>", {"python": PYTHON_TOOL["function"]["parameters"]})
        assert call.error is None and str(eval(re.fullmatch(r"print\((.*)\)", call.body).group(1))) == row["answer"]
        assert rest == tool_response_text(row["answer"]) + f"\\boxed{{{row['answer']}}}"
    easy = [r for r in json_calls["sft"] if r["kind"] == "easy"]
    assert easy and all("<tool_call>" not in r["solution"] for r in easy)
    splits = load_splits(DataConfig(source="tool_arithmetic", tool_arithmetic=ToolArithmeticConfig(
        n_sft=10, n_rl=10, n_eval=10)), seed=0, tool_format="tool_call")
    assert all(s.startswith("<tool_call>") for s in splits.eval["solution"])


def test_column_sum_of_four_numbers():
    assert columns_sum((4176, 2882, 4602, 7514)) == ("6+2+2+4=14,7+8+0+1+1=17,1+8+6+5+1=21,4+2+4+7+2=19,"
                                                     "\\boxed{19174}")
    assert tool_solution(HardProblem("product3", (100, 200))).startswith("```python\nprint(100 * 200)\n```\n")


def test_load_splits_reads_the_task_from_the_config():
    cfg = DataConfig(source="tool_arithmetic", tool_arithmetic=ToolArithmeticConfig(n_sft=40, n_rl=30, n_eval=20))
    splits = load_splits(cfg, seed=0)
    assert (len(splits.sft), len(splits.rl), len(splits.eval)) == (40, 30, 20)
    assert {"prompt", "answer", "solution", "solution_no_tools", "kind"} <= set(splits.sft.column_names)
