"""Dataset loading from every local format, bad rows reported by index, deterministic splits."""
import json

import datasets
import pytest

from grpo.config import DataConfig
from grpo.data.rows import DataError, format_prompt, load_rows, to_examples, train_eval_split, validate_rows

ROWS = [{"question": f"What is {i} + {i}?", "final": str(2 * i)} for i in range(20)]


def write_all_formats(tmp_path, rows):
    ds = datasets.Dataset.from_list(rows)
    paths = {}
    paths["jsonl"] = tmp_path / "d.jsonl"
    paths["jsonl"].write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    paths["json"] = tmp_path / "d.json"
    paths["json"].write_text(json.dumps(rows))
    paths["parquet"] = tmp_path / "d.parquet"
    ds.to_parquet(str(paths["parquet"]))
    paths["csv"] = tmp_path / "d.csv"
    ds.to_csv(str(paths["csv"]), index=False)
    paths["disk"] = tmp_path / "d_disk"
    ds.save_to_disk(str(paths["disk"]))
    return paths


@pytest.mark.parametrize("fmt", ["jsonl", "json", "parquet", "csv", "disk"])
def test_load_each_local_format_with_column_mapping(tmp_path, fmt):
    path = write_all_formats(tmp_path, ROWS)[fmt]
    ds = load_rows(str(path))
    assert len(ds) == 20
    cfg = DataConfig(source=str(path), prompt_field="question", answer_field="final", apply_chat_template=False)
    examples = to_examples(ds, cfg, source=str(path))
    assert examples[3].prompt == "What is 3 + 3?"
    assert str(examples[3].answer) == "6" and str(examples[3].row["answer"]) == "6"


@pytest.mark.parametrize("fmt", ["jsonl", "parquet", "csv"])
def test_bad_row_reported_by_index_and_field(tmp_path, fmt):
    rows = [dict(r) for r in ROWS]
    rows[7]["final"] = ""
    path = write_all_formats(tmp_path, rows)[fmt]
    cfg = DataConfig(source=str(path), prompt_field="question", answer_field="final", apply_chat_template=False)
    with pytest.raises(DataError, match=r"row 7: field 'final'"):
        to_examples(load_rows(str(path)), cfg, source=str(path))


def test_broken_jsonl_line_reported_with_line_number(tmp_path):
    p = tmp_path / "bad.jsonl"
    p.write_text('{"question": "a", "final": "1"}\n{"question": "b", "final": \n')
    with pytest.raises(DataError, match=r"line 2 \(row 1\)"):
        load_rows(str(p))


def test_missing_column_names_it(tmp_path):
    path = write_all_formats(tmp_path, ROWS)["jsonl"]
    with pytest.raises(DataError, match="field 'answer' is not a column"):
        validate_rows(load_rows(str(path)), ["answer"], str(path))


def test_missing_file_and_unknown_type(tmp_path):
    with pytest.raises(DataError, match="not found"):
        load_rows(str(tmp_path / "nope.jsonl"))
    p = tmp_path / "d.txt"
    p.write_text("x")
    with pytest.raises(DataError, match="unsupported file type"):
        load_rows(str(p))


def test_split_is_deterministic_and_disjoint():
    ds = datasets.Dataset.from_list(ROWS)
    a_train, a_eval = train_eval_split(ds, 5, seed=3)
    b_train, b_eval = train_eval_split(ds, 5, seed=3)
    assert a_eval["question"] == b_eval["question"]
    assert not set(a_eval["question"]) & set(a_train["question"])
    assert len(a_train) == 15
    _, c_eval = train_eval_split(ds, 5, seed=4)
    assert c_eval["question"] != a_eval["question"]


def test_chat_template_applied(tiny_model_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    cfg = DataConfig(prompt_template="Q: {prompt}")
    text = format_prompt("What is 1 + 1?", cfg, tok)
    assert "Q: What is 1 + 1?" in text and text != "Q: What is 1 + 1?"
    assert text == tok.apply_chat_template([{"role": "user", "content": "Q: What is 1 + 1?"}], tokenize=False,
                                           add_generation_prompt=True)


def test_column_map_and_answer_regex(tmp_path):
    rows = [{"question": "q", "worked": "2 + 2 = 4\n#### 4", "input_output": "{}"}]
    path = tmp_path / "g.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows))
    from grpo.data.rows import prepare_rows

    cfg = DataConfig(source=str(path), prompt_field="question", answer_field="worked", answer_regex=r"####\s*(.+)$",
                     column_map={"input_output": "tests"}, apply_chat_template=False)
    ds = prepare_rows(load_rows(str(path)), cfg, str(path))
    assert "tests" in ds.column_names
    ex = to_examples(ds, cfg, source=str(path))[0]
    assert ex.answer == "4" and ex.row["answer"] == "4"
    bad = DataConfig(source=str(path), prompt_field="question", answer_field="question", answer_regex=r"####\s*(.+)$")
    with pytest.raises(DataError, match="row 0.*answer_regex"):
        to_examples(ds, bad, source=str(path))


def test_over_long_prompt_reported_by_row_index(tiny_model_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    rows = [{"prompt": "What is 1 + 1?", "answer": "2"}] * 5 + [{"prompt": "x" * 300, "answer": "1"}]
    cfg = DataConfig(max_prompt_tokens=64)
    with pytest.raises(DataError, match=r"row 5: prompt is \d+ tokens, over data.max_prompt_tokens=64"):
        to_examples(datasets.Dataset.from_list(rows), cfg, tok)
    examples = to_examples(datasets.Dataset.from_list(rows[:5]), cfg, tok)
    assert [e.answer for e in examples] == ["2"] * 5 and examples[0].prompt.count("What is 1 + 1?") == 1


def test_arithmetic_solution_style_reaches_the_demonstrations():
    from grpo.config import ArithmeticConfig
    from grpo.data.rows import load_splits

    small = dict(n_sft=20, n_rl=20, n_eval=10)
    columns = load_splits(DataConfig(arithmetic=ArithmeticConfig(**small)), seed=0).sft
    direct = load_splits(DataConfig(arithmetic=ArithmeticConfig(**small, solution_style="direct")), seed=0).sft
    assert columns["prompt"] == direct["prompt"]
    assert all(s == f"\\boxed{{{a}}}" for s, a in zip(direct["solution"], direct["answer"]))
    assert all("=" in s and s.endswith(f"\\boxed{{{a}}}") for s, a in zip(columns["solution"], columns["answer"]))
