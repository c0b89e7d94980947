"""Format reward (does the completion have the expected shape?) and DAPO's soft overlong punishment.

reward = (reward_ok if the shape is right else reward_bad) + overlong_penalty(length)

Shapes (`preset`):
  "think"         `<think>reasoning</think>` then a non-empty answer (the default);
  "think_answer"  `<think>reasoning</think>` then `<answer>...</answer>` and nothing else;
  "none"          no shape check (use the verifier for length shaping only).
`pattern` (a regex that must match the whole completion, `re.DOTALL`) replaces the preset.
`think_prefilled=True` is for chat templates that end the prompt with "<think>" (DeepSeek-R1,
Qwen3): the completion then starts inside the reasoning and must not repeat the opening tag.

Overlong shaping (DAPO, Yu et al. 2025, eq. 13) with L_max = `max_length`, L_cache = `overlong_buffer`:
    0                                  if L <= L_max - L_cache
    ((L_max - L_cache) - L) / L_cache  if L_max - L_cache < L <= L_max   (falls linearly to -1)
    -1                                 if L > L_max
times `overlong_penalty_factor`. L counts tokens (`length_unit="tokens"`, read from
`example[length_key]`, default "completion_tokens", which the trainer fills in) or characters of
the completion (`length_unit="chars"`, needs nothing from the example).
"""
from __future__ import annotations

import re
from typing import Any

from verifiers.base import BaseVerifier, Score

PRESETS = ("think", "think_answer", "none")
LENGTH_UNITS = ("tokens", "chars")


class FormatVerifier(BaseVerifier):
    name = "format"

    def __init__(
        self,
        preset: str = "think",
        pattern: str | None = None,
        *,
        think_prefilled: bool = False,
        reward_ok: float = 1.0,
        reward_bad: float = 0.0,
        max_length: int | None = None,
        overlong_buffer: int = 0,
        overlong_penalty_factor: float = 1.0,
        length_unit: str = "tokens",
        length_key: str = "completion_tokens",
    ):
        if preset not in PRESETS:
            raise ValueError(f"format verifier: preset must be one of {PRESETS}, got {preset!r}")
        if length_unit not in LENGTH_UNITS:
            raise ValueError(f"format verifier: length_unit must be one of {LENGTH_UNITS}, got {length_unit!r}")
        if max_length is not None:
            if not isinstance(max_length, int) or max_length <= 0:
                raise ValueError(f"format verifier: max_length must be a positive int, got {max_length!r}")
            if not isinstance(overlong_buffer, int) or not 0 <= overlong_buffer < max_length:
                raise ValueError(
                    f"format verifier: overlong_buffer must be an int in [0, max_length={max_length}), "
                    f"got {overlong_buffer!r}"
                )
        if pattern is None and preset == "none" and max_length is None:
            raise ValueError("format verifier: preset='none' without pattern or max_length checks nothing")
        try:
            self.regex = re.compile(pattern, re.DOTALL) if pattern is not None else None
        except re.error as exc:
            raise ValueError(f"format verifier: pattern {pattern!r} is not a valid regex: {exc}") from exc
        self.preset = preset
        self.think_prefilled = think_prefilled
        self.reward_ok = float(reward_ok)
        self.reward_bad = float(reward_bad)
        self.max_length = max_length
        self.overlong_buffer = overlong_buffer
        self.overlong_penalty_factor = float(overlong_penalty_factor)
        self.length_unit = length_unit
        self.length_key = length_key

    def score(self, completion: str, example: dict) -> Score:
        info: dict[str, Any] = {}
        reward = 0.0
        if self.regex is not None or self.preset != "none":
            problem = self.format_problem(completion)
            info["format_ok"] = problem is None
            if problem is not None:
                info["reason"] = problem
            reward += self.reward_ok if problem is None else self.reward_bad
        if self.max_length is not None:
            length = self.length(completion, example)
            penalty = self.overlong_penalty_factor * soft_overlong_punishment(
                length, self.max_length, self.overlong_buffer
            )
            info["length"] = length
            info["overlong_penalty"] = penalty
            reward += penalty
        return Score(reward, info)

    def format_problem(self, completion: str) -> str | None:
        """None when the completion has the configured shape, else what is wrong with it."""
        if self.regex is not None:
            return None if self.regex.fullmatch(completion) else "does not match pattern"
        if self.think_prefilled:
            if "<think>" in completion:
                return "repeats <think> (the prompt already opened it)"
            completion = "<think>" + completion
        return check_think(completion, require_answer_tags=self.preset == "think_answer")

    def length(self, completion: str, example: dict) -> int:
        if self.length_unit == "chars":
            return len(completion)
        value = example.get(self.length_key)
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(
                f"format verifier: overlong shaping in tokens needs example[{self.length_key!r}] "
                f"(an int the trainer sets to the completion's token count), got {value!r}; "
                "or set length_unit='chars'"
            )
        return value


def check_think(text: str, require_answer_tags: bool = False) -> str | None:
    """Plain string checks rather than one big regex: linear time on any input."""
    if text.count("<think>") != 1 or text.count("</think>") != 1:
        return f"expected one <think> and one </think>, found {text.count('<think>')} and {text.count('</think>')}"
    head, _, rest = text.partition("<think>")
    if head.strip():
        return "text before <think>"
    reasoning, _, answer = rest.partition("</think>")
    if not reasoning.strip():
        return "empty <think> block"
    if not require_answer_tags:
        return None if answer.strip() else "no answer after </think>"
    answer = answer.strip()
    if answer.count("<answer>") != 1 or answer.count("</answer>") != 1:
        return "expected one <answer>...</answer> after </think>"
    if not (answer.startswith("<answer>") and answer.endswith("</answer>")):
        return "text outside <answer>...</answer> after </think>"
    if not answer[len("<answer>"): -len("</answer>")].strip():
        return "empty <answer> block"
    return None


def soft_overlong_punishment(length: int, max_length: int, buffer: int) -> float:
    """DAPO's length reward in [-1, 0]: 0 up to max_length - buffer, then linear down to -1."""
    expected = max_length - buffer
    if length <= expected:
        return 0.0
    if length <= max_length:
        return (expected - length) / buffer
    return -1.0
