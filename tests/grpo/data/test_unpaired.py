"""KTO data: labelled-answer files in three formats read to the same examples, every bad row refused with its
row and line, the KL answers (another prompt's answer for each example), and verifier-labelled answers that
keep every sample."""
import json
from dataclasses import dataclass

import pytest

from grpo.config import DataConfig
from grpo.data.preferences import encode_prompt_answers
from grpo.data.rows import DataError
from grpo.data.unpaired import (TokenizedAnswer, load_tokenized_answers, load_unpaired_file, save_tokenized_answers,
                                tokenize_answers, with_kl_answers)
from grpo.data.verifier_labels import balance_answers, build_verifier_labels, label_group
from grpo.runtime.rollout import Completion, Group, SamplingSpec
from grpo.runtime.tiny_model import build_tokenizer
from verifiers.base import Score

ROWS = [("What is 2 + 2?", "4", True), ("What is 2 + 2?", "5", False), ("Name a colour.", "blue", True)]


def plain(q, a, lab):
    return {"prompt": q, "completion": a, "label": lab}


def conversational(q, a, lab):
    return {"prompt": [{"role": "user", "content": q}], "completion": [{"role": "assistant", "content": a}],
            "label": lab}


def messages(q, a, lab):
    return {"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}], "label": lab}


FORMATS = {"plain": plain, "conversational": conversational, "messages": messages}


def write(path, rows):
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return path


@pytest.mark.parametrize("fmt", sorted(FORMATS))
def test_every_format_loads_and_tokenizes_alike(tmp_path, fmt):
    tok = build_tokenizer()
    rows = load_unpaired_file(write(tmp_path / "a.jsonl", [FORMATS[fmt](*r) for r in ROWS]))
    assert [(r.completion, r.label, r.row) for r in rows] == [("4", True, 0), ("5", False, 1), ("blue", True, 2)]
    answers, cut = tokenize_answers(rows, DataConfig(), tok, max_seq_len=256)
    plain_rows = load_unpaired_file(write(tmp_path / "p.jsonl", [plain(*r) for r in ROWS]))
    reference, _ = tokenize_answers(plain_rows, DataConfig(), tok, max_seq_len=256)
    assert cut == 0 and [(a.prompt_ids, a.completion_ids, a.label) for a in answers] == \
        [(a.prompt_ids, a.completion_ids, a.label) for a in reference]
    prompt_ids, (ids,) = encode_prompt_answers("What is 2 + 2?", ["4"], DataConfig(), tok)
    assert answers[0].prompt_ids == prompt_ids and answers[0].completion_ids == ids  # as DPO encodes them


@pytest.mark.parametrize("bad, message", [
    ({"prompt": "q", "completion": "a"}, r"row 2 \(line 3\): field 'label': missing"),
    ({"prompt": "q", "completion": "a", "label": "yes"}, r"row 2 \(line 3\): field 'label': must be true or false"),
    ({"prompt": "q", "completion": "a", "label": 1}, r"row 2 \(line 3\): field 'label': must be true or false"),
    ({"prompt": "q", "completion": "  ", "label": True}, r"row 2 \(line 3\): field 'completion': the answer is empty"),
    ({"prompt": "q", "label": True}, r"row 2 \(line 3\): field 'completion': missing"),
    ({"messages": [{"role": "user", "content": "q"}], "label": True},
     r"row 2 \(line 3\): field 'messages': the last message must be the assistant's"),
    ({"messages": [{"role": "assistant", "content": "a"}], "label": True},
     r"row 2 \(line 3\): field 'messages \(before the answer\)': must be a non-empty list"),
    ({"prompt": "q", "completion": [{"role": "assistant", "content": "a"}], "label": False},
     r"row 2 \(line 3\): field 'completion': a plain-text prompt needs a plain-text completion"),
    ([1, 2], r"row 2 \(line 3\): expected a JSON object"),
])
def test_a_bad_row_is_refused_with_its_row_and_line(tmp_path, bad, message):
    path = write(tmp_path / "a.jsonl", [plain(*ROWS[0]), messages(*ROWS[2]), bad])
    with pytest.raises(DataError, match=message):
        load_unpaired_file(path)


def test_broken_json_missing_file_and_unset_setting(tmp_path):
    path = tmp_path / "a.jsonl"
    path.write_text(json.dumps(plain(*ROWS[0])) + "\n{not json\n")
    with pytest.raises(DataError, match=r"row 1 \(line 2\): invalid JSON"):
        load_unpaired_file(path)
    with pytest.raises(DataError, match="labelled-answer file not found \\(kto.data_file\\)"):
        load_unpaired_file(tmp_path / "nope.jsonl")
    with pytest.raises(DataError, match="kto.data_file: not set"):
        load_unpaired_file(None)


def test_kl_answers_come_from_another_prompt_and_every_answer_is_lent_once():
    # 4 prompts x 3 samples: the KL answer of each example is an answer to another prompt
    answers = [TokenizedAnswer([10 + p, 1], [100 * p + s + 1], s == 0, row=p) for p in range(4) for s in range(3)]
    pairs = with_kl_answers(answers, seed=3, max_seq_len=64)
    assert len(pairs) == len(answers)
    for a, pair in zip(answers, pairs):
        assert pair.prompt_ids == a.prompt_ids and pair.chosen_ids == a.completion_ids
        owner = next(b for b in answers if b.completion_ids == pair.rejected_ids)
        assert owner.prompt_ids != a.prompt_ids
    assert with_kl_answers(answers, seed=3, max_seq_len=64) == pairs  # seeded
    # distinct prompts: a cycle, every answer lent exactly once
    distinct = [TokenizedAnswer([i + 1], [50 + i], True) for i in range(7)]
    lent = sorted(p.rejected_ids[0] for p in with_kl_answers(distinct, seed=0, max_seq_len=8))
    assert lent == [50 + i for i in range(7)]
    # a KL answer is cut to fit after its prompt
    long = [TokenizedAnswer([1, 2, 3], [4], True), TokenizedAnswer([5], list(range(6, 16)), False)]
    assert len(with_kl_answers(long, seed=0, max_seq_len=6)[0].rejected_ids) == 3


def test_tokenized_answers_round_trip(tmp_path):
    answers = [TokenizedAnswer([1, 2], [3], True, 0), TokenizedAnswer([4], [5, 6], False, 7)]
    save_tokenized_answers(tmp_path / "a.jsonl", answers)
    assert load_tokenized_answers(tmp_path / "a.jsonl") == answers


# ---------------------------------------------------------------------------------------------
# Verifier-labelled answers


class FakeRollout:
    """Answers of prompt i: sample j is right iff patterns[i][j] == 'y' (text 'R'*(j+1) or 'W'*(j+1));
    'Y' is right but truncated."""

    def __init__(self, patterns):
        self.patterns = patterns

    def generate(self, prompts, spec, seeds):
        out = []
        for p in prompts:
            i = int(p.split()[-1])
            g = Group(prompt=p, prompt_ids=[100 + i])
            for j, flag in enumerate(self.patterns[i][: spec.n]):
                text = ("R" if flag in "yY" else "W") * (j + 1)
                g.completions.append(Completion(text, [ord(ch) for ch in text], None, flag == "Y"))
            out.append(g)
        return out


class FakeVerifier:
    def score_batch(self, texts, rows):
        return [Score(1.0 if t.startswith("R") else 0.0, {}) for t in texts]


@dataclass
class Ex:
    prompt: str
    row: dict


def test_verifier_labels_keep_every_sampled_answer():
    """Prompts whose answers are all right or all wrong (which DPO's pairs skip) give examples too: every one
    of the 5 x 4 samples is an example, labelled by the verifier."""
    patterns = ["yyyy", "nnnn", "nyny", "yynn", "nnnY"]
    examples = [Ex(f"prompt {i}", {}) for i in range(5)]
    answers, report = build_verifier_labels(FakeRollout(patterns), FakeVerifier(), examples, spec=SamplingSpec(n=4),
                                            seed=0, batch_size=2)
    assert len(answers) == report.samples == report.kept == 20
    assert (report.prompts, report.prompts_all_correct, report.prompts_all_wrong) == (5, 1, 1)  # by the verifier
    # a correct answer that ran out of tokens is undesirable by default (it never ended)
    assert (report.desirable, report.undesirable, report.truncated_correct) == (8, 12, 1)
    assert [a.label for a in answers if a.row == 0] == [True] * 4
    assert [a.label for a in answers if a.row == 2] == [False, True, False, True]
    assert [a.label for a in answers if a.row == 4] == [False] * 4
    assert answers[0].prompt_ids == [100] and answers[1].completion_ids == [ord("R")] * 2
    kept, _ = build_verifier_labels(FakeRollout(patterns), FakeVerifier(), examples, spec=SamplingSpec(n=4), seed=0,
                                    truncated_correct="desirable")
    assert sum(a.label for a in kept) == 9
    assert "20 labelled answers from 5 prompts x 4 samples" in report.summary()


def test_label_group_and_balance():
    comps = [Completion("a", [1], None, False), Completion("b", [2], None, True)]
    assert label_group(comps, [Score(1.0, {}), Score(1.0, {})]) == [True, False]
    with pytest.raises(ValueError, match="kto.truncated_correct"):
        label_group(comps, [Score(1.0, {})] * 2, truncated_correct="maybe")
    answers = [TokenizedAnswer([1], [i + 2], i < 3, i) for i in range(10)]  # 3 desirable, 7 undesirable
    balanced = balance_answers(answers, seed=0)
    assert sum(a.label for a in balanced) == 3 and len(balanced) == 6
    assert [a.row for a in balanced] == sorted(a.row for a in balanced)  # order kept
