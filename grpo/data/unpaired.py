"""Unpaired answers labelled desirable or undesirable (KTO's data): load and validate a file, tokenize it,
and give every example the mismatched "KL" answer KTO's reference point is estimated with.

Accepted row formats (one JSON object per line in .jsonl, or a JSON list in .json); a file may mix them:

- plain text (TRL "unpaired preference"):  {"prompt": "2+2?", "completion": "4", "label": true}
- conversational (TRL):                     {"prompt": [{"role": "user", "content": "2+2?"}],
                                             "completion": [{"role": "assistant", "content": "4"}],
                                             "label": false}
- one conversation:                         {"messages": [{"role": "user", ...}, {"role": "assistant", ...}],
                                             "label": true}   (the last message, an assistant's, is rated)

`label` is JSON true (thumbs up, desirable) or false (thumbs down, undesirable); nothing else is read as a
label. Rows are validated with the preference files' machinery (grpo.data.preferences): the first bad row
stops everything naming its row (0-based), its line, the field and the reason, before any model is loaded;
prompts and answers are encoded exactly as DPO's (format_prompt / the chat template, end-of-turn included).
"""
from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from grpo.config import DataConfig
from grpo.data.preferences import (Messages, RowError, TokenizedPair, _answer, _messages, _prompt,
                                   encode_prompt_answers, read_validated_rows)
from grpo.data.rows import DataError


@dataclass
class LabelledAnswer:
    """One validated row: a prompt (text or messages), one answer, and whether it is desirable."""

    prompt: str | Messages
    completion: str
    label: bool
    row: int


@dataclass
class TokenizedAnswer:
    """Token ids of one labelled answer (end-of-turn included)."""

    prompt_ids: list[int]
    completion_ids: list[int]
    label: bool
    row: int = -1  # file row, or (verifier-labelled) the rl prompt index it was sampled for


def _label(obj: dict) -> bool:
    if "label" not in obj:
        raise RowError("field 'label': missing (true for a desirable answer, false for an undesirable one)")
    value = obj["label"]
    if not isinstance(value, bool):
        raise RowError(f"field 'label': must be true or false, got {value!r}")
    return value


def parse_unpaired_row(obj: Any) -> tuple[str | Messages, str, bool]:
    """(prompt, completion, label) of one row in any supported format; raises RowError."""
    if not isinstance(obj, dict):
        raise RowError(f"expected a JSON object, got {type(obj).__name__}")
    if "messages" in obj:
        if "prompt" in obj or "completion" in obj:
            raise RowError("field 'messages': give either messages or prompt/completion, not both")
        msgs = _messages(obj["messages"], "messages")
        if msgs[-1]["role"] != "assistant":
            raise RowError(f"field 'messages': the last message must be the assistant's answer that is rated, "
                           f"got role {msgs[-1]['role']!r}")
        prompt = _prompt(msgs[:-1] or None, "messages (before the answer)")
        completion = _answer(msgs[-1:], "messages[-1]")
    else:
        for key in ("prompt", "completion"):
            if key not in obj:
                raise RowError(f"field '{key}': missing (expected prompt/completion/label, or messages/label)")
        prompt = _prompt(obj["prompt"], "prompt")
        if isinstance(prompt, str) and not isinstance(obj["completion"], str):
            raise RowError("field 'completion': a plain-text prompt needs a plain-text completion "
                           "(or give the prompt as messages)")
        completion = _answer(obj["completion"], "completion")
    return prompt, completion, _label(obj)


def load_unpaired_file(path: str | Path | None) -> list[LabelledAnswer]:
    """Every row of a labelled-answer file, validated; raises DataError naming the first bad row."""
    rows = read_validated_rows(path, parse_unpaired_row, kind="labelled-answer", setting="kto.data_file")
    return [LabelledAnswer(prompt=p, completion=c, label=lab, row=i) for i, (p, c, lab) in enumerate(rows)]


# ---------------------------------------------------------------------------------------------
# Tokens


def fit_answer(a: TokenizedAnswer, max_seq_len: int, source: str) -> tuple[TokenizedAnswer, bool]:
    """Cut the answer so prompt + answer <= max_seq_len; (answer, whether anything was cut)."""
    room = max_seq_len - len(a.prompt_ids)
    if room < 1:
        raise DataError(f"{source}: row {a.row}: the prompt is {len(a.prompt_ids)} tokens, leaving no room for an "
                        f"answer within kto.max_seq_len={max_seq_len}")
    if len(a.completion_ids) <= room:
        return a, False
    return TokenizedAnswer(a.prompt_ids, a.completion_ids[:room], a.label, a.row), True


def tokenize_answers(rows: Sequence[LabelledAnswer], cfg: DataConfig, tokenizer, max_seq_len: int,
                     source: str = "answers") -> tuple[list[TokenizedAnswer], int]:
    """(token ids of every row, how many answers were cut to max_seq_len)."""
    out, cut = [], 0
    for r in rows:
        prompt_ids, (ids,) = encode_prompt_answers(r.prompt, [r.completion], cfg, tokenizer)
        a, was_cut = fit_answer(TokenizedAnswer(prompt_ids, ids, r.label, r.row), max_seq_len, source)
        out.append(a)
        cut += was_cut
    return out, cut


def with_kl_answers(answers: Sequence[TokenizedAnswer], seed: int, max_seq_len: int) -> list[TokenizedPair]:
    """Each example as a pair over its prompt: (its own answer, a KL answer), where the KL answer is the answer
    of another example with a different prompt, chosen by a seeded shuffle (each example lends its answer to
    exactly one other in a cycle, skipping forward past examples with the same prompt). The KL answer is cut
    to fit max_seq_len after the prompt. Fixed once, like TRL's KL dataset, so the reference logprobs of both
    can be computed once (grpo.runtime.reference_cache treats the pair as two continuations of the prompt)."""
    n = len(answers)
    order = list(range(n))
    random.Random(seed).shuffle(order)
    out: list[TokenizedPair | None] = [None] * n
    for pos, i in enumerate(order):
        partner = order[(pos + 1) % n] if n > 1 else i
        for step in range(1, n):
            j = order[(pos + step) % n]
            if answers[j].prompt_ids != answers[i].prompt_ids:
                partner = j
                break
        room = max(max_seq_len - len(answers[i].prompt_ids), 1)
        out[i] = TokenizedPair(answers[i].prompt_ids, answers[i].completion_ids,
                               answers[partner].completion_ids[:room], row=i)
    return out  # type: ignore[return-value]


def save_tokenized_answers(path: Path, answers: Sequence[TokenizedAnswer]) -> None:
    """jsonl of token ids and labels (the verifier-labelled answers of a run, reused on resume)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    with tmp.open("w") as fh:
        for a in answers:
            fh.write(json.dumps({"row": a.row, "label": a.label, "prompt_ids": a.prompt_ids,
                                 "completion_ids": a.completion_ids}) + "\n")
    tmp.replace(path)


def load_tokenized_answers(path: Path) -> list[TokenizedAnswer]:
    out = []
    for line in path.read_text().splitlines():
        if line.strip():
            d = json.loads(line)
            out.append(TokenizedAnswer(d["prompt_ids"], d["completion_ids"], bool(d["label"]), d.get("row", -1)))
    return out
