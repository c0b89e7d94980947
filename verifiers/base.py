"""The verifier contract: a verifier turns (completion, example) into a Score.

Everything a trainer knows about a verifier is in this file. Model output is untrusted data:
a verifier never evaluates it as code in the calling process.
"""
from __future__ import annotations

import numbers
from dataclasses import dataclass, field
from typing import Any, Protocol, Sequence, runtime_checkable


@dataclass
class Score:
    """One verdict. `reward` is what the trainer optimizes; `info` is for logs and debugging
    (e.g. {"extracted": "42", "error": "timeout"})."""

    reward: float
    info: dict[str, Any] = field(default_factory=dict)

    def extracted_answer(self) -> str | None:
        """The answer the verifier read from the completion, for majority voting and for grouping equal
        wrong answers: `info["answer_key"]` or `info["extracted"]`, also inside a composite verifier's
        per-verifier `details`; None when no verifier reported one."""
        for source in (self.info, *[v for v in (self.info.get("details") or {}).values() if isinstance(v, dict)]):
            for key in ("answer_key", "extracted"):
                if source.get(key) not in (None, ""):
                    return str(source[key])
        return None


@runtime_checkable
class Verifier(Protocol):
    name: str

    def score(self, completion: str, example: dict) -> Score: ...

    def score_batch(self, completions: Sequence[str], examples: Sequence[dict]) -> list[Score]: ...


class BaseVerifier:
    """Convenience base class: implement `score`, inherit a sequential `score_batch`.

    Subclassing is optional (the protocol above is what callers rely on); it saves a plug-in
    author the batch loop and the length check.
    """

    name: str = "verifier"

    def score(self, completion: str, example: dict) -> Score:  # pragma: no cover - abstract
        raise NotImplementedError(f"{type(self).__name__} must implement score(completion, example)")

    def score_batch(self, completions: Sequence[str], examples: Sequence[dict]) -> list[Score]:
        check_batch(completions, examples)
        return [self.score(completion, example) for completion, example in zip(completions, examples)]


def check_batch(completions: Sequence[str], examples: Sequence[dict]) -> None:
    """Raise a clear error when a batch's completions and examples don't line up."""
    if len(completions) != len(examples):
        raise ValueError(
            f"score_batch: got {len(completions)} completions but {len(examples)} examples; "
            "pass one example per completion (repeat the example for each of a prompt's G samples)"
        )


def as_score(value: Any, source: str = "verifier") -> Score:
    """Coerce what a plug-in returned (Score, float, int or bool) into a Score.

    Anything else is a bug in the plug-in, reported with its name rather than silently zeroed.
    """
    if isinstance(value, Score):
        if not isinstance(value.reward, numbers.Real):
            raise TypeError(f"{source} returned Score.reward={value.reward!r}; expected a float")
        return value if type(value.reward) is float else Score(float(value.reward), value.info)
    if isinstance(value, numbers.Real):  # bool, int, float, numpy scalars
        return Score(float(value))
    raise TypeError(f"{source} returned {type(value).__name__}; expected a float or a Score")
