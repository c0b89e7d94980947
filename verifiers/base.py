"""The verifier contract: a verifier turns (completion, example) into a Score.

Everything a trainer knows about a verifier is in this file. Model output is untrusted data:
a verifier never evaluates it as code in the calling process.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol, Sequence, runtime_checkable


@dataclass
class Score:
    """One verdict. `reward` is what the trainer optimizes; `info` is for logs and debugging
    (e.g. {"extracted": "42", "error": "timeout"})."""

    reward: float
    info: dict[str, Any] = field(default_factory=dict)


@runtime_checkable
class Verifier(Protocol):
    name: str

    def score(self, completion: str, example: dict) -> Score: ...

    def score_batch(self, completions: Sequence[str], examples: Sequence[dict]) -> list[Score]: ...
