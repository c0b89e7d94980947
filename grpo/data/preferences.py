"""Preference pairs: load and validate a file, and turn prompts and answers into token ids.

Accepted row formats (one JSON object per line in .jsonl, or a JSON list in .json); a file may mix them:

- plain text (TRL "standard"):      {"prompt": "2+2?", "chosen": "4", "rejected": "5"}
- conversational (TRL):             {"prompt": [{"role": "user", "content": "2+2?"}],
                                     "chosen": [{"role": "assistant", "content": "4"}],
                                     "rejected": [{"role": "assistant", "content": "5"}]}
- conversational, implicit prompt:  {"chosen": [user..., assistant], "rejected": [user..., assistant]}
                                    (the shared leading messages are the prompt)
- hosted fine-tuning APIs:          {"input": {"messages": [...]},
                                     "preferred_output": [{"role": "assistant", "content": "4"}],
                                     "non_preferred_output": [{"role": "assistant", "content": "5"}]}

Every row is checked when the file is loaded; the first bad row stops everything with its row number
(0-based, as in `datasets`), its line, the field and the reason. Nothing here needs a tokenizer, so
`grpo check` can validate a file without loading a model.

Encoding: a plain-text prompt goes through `grpo.data.rows.format_prompt` exactly like a dataset question
(prompt template, system prompt, chat template), so DPO trains on the prompts the model sees in
rollouts and evaluation. Messages go through the tokenizer's chat template. The answer's tokens are
what the chat template appends for an assistant turn (its end-of-turn marker included), so the
model learns to stop; without a chat template, the answer plus the EOS token.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence, TypeVar

from grpo.config import DataConfig
from grpo.data.rows import DataError, format_prompt

ROLES = ("system", "user", "assistant", "tool")
Messages = list[dict[str, str]]


@dataclass
class PreferencePair:
    """One validated row. `prompt` is plain text or chat messages (ending before the answer);
    `chosen` / `rejected` are the answers' text."""

    prompt: str | Messages
    chosen: str
    rejected: str
    row: int  # index in the file, for messages about this pair


@dataclass
class TokenizedPair:
    """Token ids of one pair: the shared prompt and the two answers (end-of-turn included)."""

    prompt_ids: list[int]
    chosen_ids: list[int]
    rejected_ids: list[int]
    row: int = -1  # where it came from (file row or rl prompt index); -1 when unknown


# ---------------------------------------------------------------------------------------------
# Validation


class _RowError(Exception):
    """A problem inside one row; the loader adds the file, row and line."""


RowError = _RowError  # for the other row formats (grpo.data.unpaired) that parse with the helpers below


def _text_content(value: Any, where: str) -> str:
    """A message's content: a string, or a list of {"type": "text", "text": ...} parts."""
    if isinstance(value, str):
        return value
    if isinstance(value, list):
        texts = []
        for j, part in enumerate(value):
            if not isinstance(part, dict) or part.get("type") != "text" or not isinstance(part.get("text"), str):
                raise _RowError(f"{where}[{j}]: only text parts ({{'type': 'text', 'text': ...}}) are supported")
            texts.append(part["text"])
        return "".join(texts)
    raise _RowError(f"{where}: must be a string or a list of text parts, got {type(value).__name__}")


def _messages(value: Any, field: str) -> Messages:
    if not isinstance(value, list) or not value:
        raise _RowError(f"field '{field}': must be a non-empty list of messages")
    out = []
    for j, msg in enumerate(value):
        where = f"field '{field}'[{j}]"
        if not isinstance(msg, dict):
            raise _RowError(f"{where}: a message must be an object with 'role' and 'content'")
        role = msg.get("role")
        if role not in ROLES:
            raise _RowError(f"{where}: role must be one of {list(ROLES)}, got {role!r}")
        if "content" not in msg or msg["content"] is None:
            raise _RowError(f"{where}: missing 'content'")
        out.append({"role": role, "content": _text_content(msg["content"], f"{where}.content")})
    return out


def _answer(value: Any, field: str) -> str:
    """An answer: a non-empty string, or exactly one assistant message."""
    if isinstance(value, str):
        text = value
    else:
        msgs = _messages(value, field)
        if len(msgs) != 1 or msgs[0]["role"] != "assistant":
            roles = [m["role"] for m in msgs]
            raise _RowError(f"field '{field}': must be exactly one assistant message, got roles {roles}")
        text = msgs[0]["content"]
    if not text.strip():
        raise _RowError(f"field '{field}': the answer is empty")
    return text


def _prompt(value: Any, field: str) -> str | Messages:
    if isinstance(value, str):
        if not value.strip():
            raise _RowError(f"field '{field}': the prompt is empty")
        return value
    msgs = _messages(value, field)
    if msgs[-1]["role"] == "assistant":
        raise _RowError(f"field '{field}': the prompt must not end with an assistant message "
                        "(that would be the answer)")
    if not any(m["role"] == "user" for m in msgs):
        raise _RowError(f"field '{field}': the prompt has no user message")
    return msgs


def _split_implicit(chosen: Messages, rejected: Messages) -> tuple[Messages, Messages, Messages]:
    """TRL's implicit-prompt form: the shared leading messages are the prompt."""
    n = 0
    while n < min(len(chosen), len(rejected)) and chosen[n] == rejected[n]:
        n += 1
    # The answers must differ in their last message: back off to the last non-assistant boundary.
    while n > 0 and chosen[n - 1]["role"] == "assistant":
        n -= 1
    return chosen[:n], chosen[n:], rejected[n:]


def parse_row(obj: Any) -> tuple[str | Messages, str, str]:
    """(prompt, chosen, rejected) of one row in any supported format; raises _RowError."""
    if not isinstance(obj, dict):
        raise _RowError(f"expected a JSON object, got {type(obj).__name__}")
    if "input" in obj or "preferred_output" in obj or "non_preferred_output" in obj:
        for key in ("input", "preferred_output", "non_preferred_output"):
            if key not in obj:
                raise _RowError(f"field '{key}': missing (hosted-API preference format needs input, "
                                "preferred_output and non_preferred_output)")
        inp = obj["input"]
        if not isinstance(inp, dict) or "messages" not in inp:
            raise _RowError("field 'input': must be an object with 'messages'")
        prompt = _prompt(inp["messages"], "input.messages")
        chosen = _answer(obj["preferred_output"], "preferred_output")
        rejected = _answer(obj["non_preferred_output"], "non_preferred_output")
    else:
        for key in ("chosen", "rejected"):
            if key not in obj:
                raise _RowError(f"field '{key}': missing (expected prompt/chosen/rejected, or the hosted-API "
                                "format input/preferred_output/non_preferred_output)")
        if "prompt" in obj:
            prompt = _prompt(obj["prompt"], "prompt")
            chosen, rejected = _answer(obj["chosen"], "chosen"), _answer(obj["rejected"], "rejected")
            if isinstance(prompt, str) and not (isinstance(obj["chosen"], str) and isinstance(obj["rejected"], str)):
                # A text prompt with message answers is ambiguous about templating; say so.
                raise _RowError("field 'chosen': a plain-text prompt needs plain-text answers "
                                "(or give the prompt as messages)")
        else:
            if isinstance(obj["chosen"], str) or isinstance(obj["rejected"], str):
                raise _RowError("field 'prompt': missing (only whole conversations may leave it out)")
            full_c, full_r = _messages(obj["chosen"], "chosen"), _messages(obj["rejected"], "rejected")
            prompt_msgs, c_tail, r_tail = _split_implicit(full_c, full_r)
            if not prompt_msgs:
                raise _RowError("field 'prompt': missing, and chosen/rejected share no leading messages")
            prompt = _prompt(prompt_msgs, "prompt (shared leading messages)")
            chosen, rejected = _answer(c_tail, "chosen"), _answer(r_tail, "rejected")
    if chosen == rejected:
        raise _RowError("fields 'chosen'/'rejected': the two answers are identical (no preference to learn)")
    return prompt, chosen, rejected


def _read_objects(path: Path, kind: str = "preference") -> list[tuple[int, Any]]:
    """(line number, parsed value) per row; JSON errors name the line and row."""
    suffix = path.suffix.lower()
    if suffix == ".jsonl":
        out = []
        with path.open("r", encoding="utf-8") as fh:
            for lineno, line in enumerate(fh, start=1):
                if not line.strip():
                    continue
                try:
                    out.append((lineno, json.loads(line)))
                except json.JSONDecodeError as exc:
                    raise DataError(f"{path}: row {len(out)} (line {lineno}): invalid JSON: {exc.msg}") from None
        return out
    if suffix == ".json":
        try:
            value = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise DataError(f"{path}: invalid JSON at line {exc.lineno}: {exc.msg}") from None
        if not isinstance(value, list):
            raise DataError(f"{path}: a .json {kind} file must hold a list of rows")
        return [(0, v) for v in value]
    raise DataError(f"{path}: unsupported {kind} file type '{path.suffix}' (use .jsonl or .json)")


T = TypeVar("T")


def read_validated_rows(path: str | Path | None, parse: Callable[[Any], T], *, kind: str,
                        setting: str) -> list[T]:
    """`parse(row object)` of every row of a .jsonl/.json file; the first row it refuses (RowError) stops
    everything as a DataError naming the file, the row (0-based), its line and the reason. `kind` and
    `setting` (the config key that names the file) only word the messages."""
    if path is None:
        raise DataError(f"{setting}: not set")
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: {kind} file not found ({setting})")
    out = []
    for i, (lineno, obj) in enumerate(_read_objects(path, kind)):
        try:
            out.append(parse(obj))
        except _RowError as exc:
            where = f"row {i}" + (f" (line {lineno})" if lineno else "")
            raise DataError(f"{path}: {where}: {exc}") from None
    if not out:
        raise DataError(f"{path}: no rows")
    return out


def load_preference_file(path: str | Path) -> list[PreferencePair]:
    """Every row of a preference file, validated; raises DataError naming the first bad row."""
    rows = read_validated_rows(path, parse_row, kind="preference", setting="dpo.pairs_file")
    return [PreferencePair(prompt=prompt, chosen=chosen, rejected=rejected, row=i)
            for i, (prompt, chosen, rejected) in enumerate(rows)]


# ---------------------------------------------------------------------------------------------
# Encoding (shared with SFT: a demonstration is a prompt and one answer)


def _uses_chat_template(prompt: str | Messages, cfg: DataConfig) -> bool:
    return not isinstance(prompt, str) or cfg.apply_chat_template


def prompt_messages(prompt: str | Messages, cfg: DataConfig) -> Messages:
    """The chat messages a prompt stands for (a plain prompt becomes the user turn, as in format_prompt)."""
    if isinstance(prompt, str):
        msgs = [{"role": "user", "content": cfg.prompt_template.format(prompt=prompt)}]
    else:
        msgs = [dict(m) for m in prompt]
    if cfg.system_prompt and msgs[0]["role"] != "system":
        msgs.insert(0, {"role": "system", "content": cfg.system_prompt})
    return msgs


def _tools(tools: list[dict] | None) -> dict:
    return {"tools": tools} if tools else {}  # no tools: rendered exactly as before tools existed


def render_prompt(prompt: str | Messages, cfg: DataConfig, tokenizer, tools: list[dict] | None = None) -> str:
    """The model-facing prompt text, generation prompt included (with the tool definitions `tools`, if any)."""
    if isinstance(prompt, str):
        return format_prompt(prompt, cfg, tokenizer, tools)
    if getattr(tokenizer, "chat_template", None) is None:
        raise DataError("conversational preference rows need a tokenizer with a chat template")
    return tokenizer.apply_chat_template(prompt_messages(prompt, cfg), tokenize=False, add_generation_prompt=True,
                                         **_tools(tools))


def render_answer(prompt: str | Messages, prompt_text: str, answer: str, cfg: DataConfig, tokenizer,
                  tools: list[dict] | None = None) -> str:
    """The text that follows `prompt_text` when the assistant answers `answer`, end-of-turn included."""
    if _uses_chat_template(prompt, cfg) and getattr(tokenizer, "chat_template", None) is not None:
        msgs = prompt_messages(prompt, cfg) + [{"role": "assistant", "content": answer}]
        full = tokenizer.apply_chat_template(msgs, tokenize=False, **_tools(tools))
        if full.startswith(prompt_text):
            return full[len(prompt_text):]
        # Templates that rewrite earlier turns when an answer follows: fall through to answer + EOS.
    return answer + (tokenizer.eos_token or "")


def encode(tokenizer, text: str) -> list[int]:
    # Special tokens are already in the rendered text; adding BOS again would shift every prompt.
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def encode_prompt_answers(prompt: str | Messages, answers: Sequence[str], cfg: DataConfig,
                          tokenizer, tools: list[dict] | None = None) -> tuple[list[int], list[list[int]]]:
    """(prompt ids, ids of each answer); prompt and answers are tokenized separately so the boundary
    is exact (the answer tokens are the ones the model generates after the prompt)."""
    prompt_text = render_prompt(prompt, cfg, tokenizer, tools)
    prompt_ids = encode(tokenizer, prompt_text)
    return prompt_ids, [encode(tokenizer, render_answer(prompt, prompt_text, a, cfg, tokenizer, tools))
                        for a in answers]


@dataclass
class TruncationReport:
    pairs: int = 0
    truncated: int = 0  # pairs whose chosen or rejected answer was cut to fit max_seq_len


def tokenize_pairs(pairs: Sequence[PreferencePair], cfg: DataConfig, tokenizer, max_seq_len: int,
                   source: str = "pairs") -> tuple[list[TokenizedPair], TruncationReport]:
    """Token ids of every pair; answers are cut so prompt + answer fits `max_seq_len` (counted in
    the report); a prompt that leaves no room for an answer is a DataError naming the row."""
    out, report = [], TruncationReport()
    for p in pairs:
        prompt_ids, (chosen_ids, rejected_ids) = encode_prompt_answers(p.prompt, [p.chosen, p.rejected], cfg, tokenizer)
        tp, cut = fit_pair(TokenizedPair(prompt_ids, chosen_ids, rejected_ids, p.row), max_seq_len, source)
        report.pairs += 1
        report.truncated += cut
        out.append(tp)
    return out, report


def fit_pair(pair: TokenizedPair, max_seq_len: int, source: str = "pairs") -> tuple[TokenizedPair, bool]:
    """Cut the answers so prompt + answer <= max_seq_len; (pair, whether anything was cut)."""
    room = max_seq_len - len(pair.prompt_ids)
    if room < 1:
        raise DataError(f"{source}: row {pair.row}: the prompt is {len(pair.prompt_ids)} tokens, leaving no room "
                        f"for an answer within dpo.max_seq_len={max_seq_len}")
    cut = len(pair.chosen_ids) > room or len(pair.rejected_ids) > room
    if cut:
        pair = TokenizedPair(pair.prompt_ids, pair.chosen_ids[:room], pair.rejected_ids[:room], pair.row)
        if pair.chosen_ids == pair.rejected_ids:
            raise DataError(f"{source}: row {pair.row}: chosen and rejected are identical within "
                            f"dpo.max_seq_len={max_seq_len} tokens; raise it")
    return pair, cut


def save_tokenized_pairs(path: Path, pairs: Sequence[TokenizedPair]) -> None:
    """jsonl of token ids (the verifier-built pairs of a run, reused on resume)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    with tmp.open("w") as fh:
        for p in pairs:
            fh.write(json.dumps({"row": p.row, "prompt_ids": p.prompt_ids, "chosen_ids": p.chosen_ids,
                                 "rejected_ids": p.rejected_ids}) + "\n")
    tmp.replace(path)


def load_tokenized_pairs(path: Path) -> list[TokenizedPair]:
    pairs = []
    for line in path.read_text().splitlines():
        if line.strip():
            d = json.loads(line)
            pairs.append(TokenizedPair(d["prompt_ids"], d["chosen_ids"], d["rejected_ids"], d.get("row", -1)))
    return pairs
