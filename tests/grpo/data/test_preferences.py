"""Preference files: three formats read to the same pairs, every bad row refused with its number,
and prompts/answers encoded exactly as the model sees them in rollouts."""
import json

import pytest

from grpo.config import DataConfig
from grpo.data.rows import DataError, format_prompt
from grpo.data.preferences import (TokenizedPair, encode_prompt_answers, fit_pair, load_preference_file,
                                  tokenize_pairs)
from grpo.runtime.tiny_model import build_tokenizer

QUESTIONS = [("What is 2 + 2?", "4", "5"), ("What is 3 * 3?", "9", "6"), ("Name a colour.", "blue", "seven")]


def plain_rows():
    return [{"prompt": q, "chosen": c, "rejected": r} for q, c, r in QUESTIONS]


def conversational_rows():
    return [{"prompt": [{"role": "user", "content": q}], "chosen": [{"role": "assistant", "content": c}],
             "rejected": [{"role": "assistant", "content": r}]} for q, c, r in QUESTIONS]


def implicit_prompt_rows():
    return [{"chosen": [{"role": "user", "content": q}, {"role": "assistant", "content": c}],
             "rejected": [{"role": "user", "content": q}, {"role": "assistant", "content": r}]}
            for q, c, r in QUESTIONS]


def hosted_rows():
    return [{"input": {"messages": [{"role": "user", "content": q}], "tools": [], "parallel_tool_calls": True},
             "preferred_output": [{"role": "assistant", "content": c}],
             "non_preferred_output": [{"role": "assistant", "content": r}]} for q, c, r in QUESTIONS]


FORMATS = {"plain": plain_rows, "conversational": conversational_rows, "implicit_prompt": implicit_prompt_rows,
           "hosted_api": hosted_rows}


def write_jsonl(path, rows):
    path.write_text("\n".join(r if isinstance(r, str) else json.dumps(r) for r in rows) + "\n")
    return path


@pytest.fixture(scope="module")
def tokenizer():
    return build_tokenizer()


@pytest.mark.parametrize("fmt", sorted(FORMATS))
def test_every_format_loads_to_the_same_pairs(tmp_path, fmt):
    pairs = load_preference_file(write_jsonl(tmp_path / "p.jsonl", FORMATS[fmt]()))
    assert [(p.chosen, p.rejected, p.row) for p in pairs] == [(c, r, i) for i, (_, c, r) in enumerate(QUESTIONS)]
    prompts = [p.prompt if isinstance(p.prompt, str) else p.prompt[-1]["content"] for p in pairs]
    assert prompts == [q for q, _, _ in QUESTIONS]


@pytest.mark.parametrize("fmt", sorted(FORMATS))
def test_every_format_tokenizes_like_a_dataset_prompt(tmp_path, tokenizer, fmt):
    """A user turn in any format becomes the same ids as the rollout prompt of that question, and
    the answer ends with the end-of-turn token (so DPO also teaches when to stop)."""
    cfg = DataConfig()
    pairs, report = tokenize_pairs(load_preference_file(write_jsonl(tmp_path / "p.jsonl", FORMATS[fmt]())), cfg,
                                   tokenizer, max_seq_len=512)
    assert report.truncated == 0
    for pair, (q, c, r) in zip(pairs, QUESTIONS):
        prompt_text = format_prompt(q, cfg, tokenizer)
        assert tokenizer.decode(pair.prompt_ids) == prompt_text
        assert pair.chosen_ids == tokenizer(c, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
        assert pair.rejected_ids[-1] == tokenizer.eos_token_id


def test_json_list_file_and_text_parts(tmp_path):
    rows = hosted_rows()
    rows[0]["preferred_output"][0]["content"] = [{"type": "text", "text": "fo"}, {"type": "text", "text": "ur"}]
    path = tmp_path / "p.json"
    path.write_text(json.dumps(rows))
    assert load_preference_file(path)[0].chosen == "four"


def test_system_prompt_from_config_is_added_to_messages(tokenizer):
    cfg = DataConfig(system_prompt="Be brief.")
    ids, _ = encode_prompt_answers([{"role": "user", "content": "hi"}], ["yo"], cfg, tokenizer)
    assert tokenizer.decode(ids).startswith("<|system|>Be brief.<|user|>hi")


BAD_ROWS = [
    ('{"prompt": "q", "chosen": "a"}', r"field 'rejected': missing"),
    ('{"prompt": "q", "chosen": "", "rejected": "b"}', r"field 'chosen': the answer is empty"),
    ('{"prompt": "q", "chosen": "same", "rejected": "same"}', r"identical"),
    ('{"prompt": "  ", "chosen": "a", "rejected": "b"}', r"field 'prompt': the prompt is empty"),
    ('{"prompt": "q", "chosen": "a", ', r"invalid JSON"),
    ('["q", "a", "b"]', r"expected a JSON object"),
    ('{"prompt": [{"role": "robot", "content": "q"}], "chosen": "a", "rejected": "b"}', r"role must be one of"),
    ('{"prompt": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "x"}], "chosen": "a", '
     '"rejected": "b"}', r"must not end with an assistant message"),
    ('{"input": {"messages": [{"role": "user", "content": "q"}]}, "preferred_output": '
     '[{"role": "assistant", "content": "a"}]}', r"field 'non_preferred_output': missing"),
    ('{"input": {"messages": [{"role": "user", "content": "q"}]}, "preferred_output": '
     '[{"role": "user", "content": "a"}], "non_preferred_output": [{"role": "assistant", "content": "b"}]}',
     r"field 'preferred_output': must be exactly one assistant message"),
    ('{"input": {"messages": [{"role": "user", "content": "q"}]}, "preferred_output": '
     '[{"role": "assistant", "content": [{"type": "image_url", "image_url": "x"}]}], '
     '"non_preferred_output": [{"role": "assistant", "content": "b"}]}', r"only text parts"),
    ('{"chosen": [{"role": "assistant", "content": "a"}], "rejected": [{"role": "assistant", "content": "b"}]}',
     r"share no leading messages"),
    ('{"chosen": "a", "rejected": "b"}', r"field 'prompt': missing"),
]


@pytest.mark.parametrize("bad,reason", BAD_ROWS)
def test_malformed_row_is_refused_with_its_row_and_line(tmp_path, bad, reason):
    good = [json.dumps(r) for r in plain_rows()]
    path = write_jsonl(tmp_path / "p.jsonl", [good[0], good[1], "", bad, good[2]])  # a blank line before it
    with pytest.raises(DataError, match=rf"p\.jsonl: row 2 \(line 4\): .*{reason}"):
        load_preference_file(path)


def test_missing_or_empty_file(tmp_path):
    with pytest.raises(DataError, match="not found"):
        load_preference_file(tmp_path / "nope.jsonl")
    with pytest.raises(DataError, match="no rows"):
        load_preference_file(write_jsonl(tmp_path / "empty.jsonl", [""]))
    with pytest.raises(DataError, match="unsupported preference file type"):
        load_preference_file(write_jsonl(tmp_path / "p.csv", ["a,b"]))


def test_fit_pair_cuts_answers_and_refuses_prompts_without_room():
    pair = TokenizedPair([1, 2, 3], [4, 5, 6, 7], [8, 9], row=5)
    fitted, cut = fit_pair(pair, max_seq_len=5)
    assert cut and fitted.chosen_ids == [4, 5] and fitted.rejected_ids == [8, 9]
    assert fit_pair(pair, max_seq_len=7) == (pair, False)
    with pytest.raises(DataError, match="row 5: the prompt is 3 tokens"):
        fit_pair(pair, max_seq_len=3)
    with pytest.raises(DataError, match="row 5: chosen and rejected are identical within"):
        fit_pair(TokenizedPair([1, 2], [3, 4, 5], [3, 4, 6], row=5), max_seq_len=4)
