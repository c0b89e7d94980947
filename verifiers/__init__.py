"""Verifiers turn a model completion into a reward.

    import verifiers
    math = verifiers.get("math")                          # a built-in, or a plug-in by name
    score = math.score(completion, {"answer": "42"})      # Score(reward=1.0, info={...})
    mix = verifiers.build([{"name": "math"}, {"name": "format", "weight": 0.1}], workers=2)

See docs/verifiers.md for the options of the built-ins and how to write a plug-in. Importing
this package is cheap: the built-ins (sympy, the sandbox) load when first asked for.
"""
from __future__ import annotations

from typing import Any

from verifiers.base import BaseVerifier, Score, Verifier, as_score
from verifiers.compose import CompositeVerifier, VerifierEntry, build, parse_specs
from verifiers.pool import PoolStartError, PooledVerifier, PoolStats, ScoringPool
from verifiers.registry import (
    ENTRY_POINT_GROUP,
    FunctionVerifier,
    UnknownVerifierError,
    available,
    get,
    register,
    unregister,
)

__all__ = [
    "BaseVerifier", "CodeVerifier", "CompositeVerifier", "ENTRY_POINT_GROUP", "FormatVerifier",
    "FunctionVerifier", "MathVerifier", "PoolStartError", "PoolStats", "PooledVerifier", "Score",
    "ScoringPool", "UnknownVerifierError", "Verifier", "VerifierEntry", "as_score", "available",
    "build", "get", "parse_specs", "register", "unregister",
]

_LAZY = {"MathVerifier": "verifiers.math", "CodeVerifier": "verifiers.code", "FormatVerifier": "verifiers.format"}


def __getattr__(name: str) -> Any:
    # `from verifiers import CodeVerifier` works without importing sympy or the sandbox up front.
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'verifiers' has no attribute {name!r}")
