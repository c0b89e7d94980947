"""Several verifiers, weighted, as one: the reward the trainer optimizes plus a breakdown to log.

    composite = verifiers.build([
        {"name": "math", "weight": 1.0},
        {"name": "format", "weight": 0.2, "preset": "think"},
    ], workers=2, timeout_s=10)
    score = composite.score(completion, example)
    score.reward                   # 1.0 * math + 0.2 * format (weights are not normalized)
    score.info["rewards"]          # {"math": 1.0, "format": 0.0}: unweighted, per verifier
    score.info["details"]["math"]  # that verifier's own info
    score.info.get("errors")       # {"format": "ValueError: ..."} when a verifier raised

A spec is a dict (or an object with the same attributes, like the config's VerifierSpec):
`name` (required), `weight` (default 1.0), `label` (the breakdown key; default the name, or the
attribute for "package.module:attr"; repeated labels get "_2", "_3"), and the verifier's options
either flat (`{"name": "code", "reward_mode": "all"}`) or nested (`{"options": {...}}`).

An exception inside one verifier scores that verifier 0 for that item, is counted in
`metrics()` and logged as one warning per batch; the others still count.
"""
from __future__ import annotations

import logging
import math
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from verifiers import registry
from verifiers.base import Score, as_score, check_batch
from verifiers.pool import ScoringPool, pickle_recipe

logger = logging.getLogger(__name__)

_SPEC_KEYS = ("name", "weight", "label", "options")


@dataclass(frozen=True)
class VerifierEntry:
    """One parsed spec: which verifier, its weight, its breakdown key, its options."""

    name: str
    weight: float
    label: str
    options: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "weight": self.weight, "label": self.label, "options": dict(self.options)}


def parse_specs(specs: Iterable[Any]) -> list[VerifierEntry]:
    """Validate specs and give every verifier a unique label; errors name the offending field."""
    if isinstance(specs, (str, bytes, Mapping)):
        raise TypeError("verifier specs must be a list of specs, e.g. [{'name': 'math', 'weight': 1.0}]")
    entries: list[VerifierEntry] = []
    used: Counter = Counter()
    for i, spec in enumerate(specs):
        where = f"verifiers[{i}]"
        raw = _spec_as_dict(spec, where)
        name = raw.get("name")
        if not isinstance(name, str) or not name.strip():
            raise ValueError(f"{where}.name: must be a non-empty string, got {name!r}")
        weight = raw.get("weight", 1.0)
        if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not math.isfinite(weight):
            raise ValueError(f"{where}.weight: must be a finite number, got {weight!r}")
        nested = raw.get("options") or {}
        if not isinstance(nested, Mapping):
            raise ValueError(f"{where}.options: must be a mapping, got {type(nested).__name__}")
        flat = {k: v for k, v in raw.items() if k not in _SPEC_KEYS}
        clash = set(flat) & set(nested)
        if clash:
            raise ValueError(f"{where}: options {sorted(clash)} given both flat and under 'options'")
        label = raw.get("label") or registry._short_name(name)
        if not isinstance(label, str):
            raise ValueError(f"{where}.label: must be a string, got {label!r}")
        used[label] += 1
        if used[label] > 1:
            label = f"{label}_{used[label]}"
        entries.append(VerifierEntry(name, float(weight), label, _plain({**nested, **flat})))
    if not entries:
        raise ValueError("verifiers: at least one verifier spec is needed")
    return entries


class CompositeVerifier:
    """The weighted sum of several verifiers; see the module docstring.

    workers > 0 scores batches in a `ScoringPool` of that many processes with a hard per-item
    `timeout_s` (a stuck item scores 0 for every verifier, `info["error"]="timeout"`);
    workers = 0 scores inline in the calling process (no timeout: rely on the verifiers' own
    limits). `score` (one item) is always inline.
    """

    name = "composite"

    def __init__(
        self,
        specs: Iterable[Any],
        *,
        workers: int = 0,
        timeout_s: float = 30.0,
        start_method: str = "spawn",
    ):
        if not isinstance(workers, int) or workers < 0:
            raise ValueError(f"workers must be an int >= 0, got {workers!r}")
        self.entries = parse_specs(specs)
        # Built here even when a pool will score: bad names or options fail now, not in a worker.
        self.verifiers = [self._build(entry) for entry in self.entries]
        self.workers = workers
        self.timeout_s = timeout_s
        self.start_method = start_method
        self.error_counts: Counter = Counter()  # label -> exceptions inside that verifier
        self.log_errors = True  # off inside pool workers: the parent logs what they report
        self._pool: ScoringPool | None = None
        if workers:
            for entry, verifier in zip(self.entries, self.verifiers):
                bound = getattr(verifier, "max_seconds", None)
                if isinstance(bound, (int, float)) and bound > timeout_s:
                    logger.warning(
                        "verifier %r may legitimately take up to %.0f s per item but the pool kills items "
                        "after timeout_s=%g s: raise the timeout or lower that verifier's limits",
                        entry.label, bound, timeout_s,
                    )
            self._recipe = self._worker_recipe()
            pickle_recipe(self._recipe, "verifiers")  # unpicklable plug-ins fail now, not at the first batch

    @property
    def labels(self) -> list[str]:
        return [entry.label for entry in self.entries]

    # -- scoring ------------------------------------------------------------------------------

    def score(self, completion: str, example: dict) -> Score:
        rewards, details, errors = {}, {}, {}
        for entry, verifier in zip(self.entries, self.verifiers):
            try:
                score = as_score(verifier.score(completion, example), f"verifier {entry.label!r}")
                _check_finite(score, entry.label)
                rewards[entry.label], details[entry.label] = score.reward, score.info
            except Exception as exc:
                rewards[entry.label], errors[entry.label] = 0.0, _describe(exc)
        result = self._combine(rewards, details, errors)
        self._record([result])
        return result

    def score_batch(self, completions: Sequence[str], examples: Sequence[dict]) -> list[Score]:
        check_batch(completions, examples)
        if self.workers:
            results = [self._fill_failure(s) for s in self._get_pool().score_batch(completions, examples)]
        else:
            results = self._score_batch_inline(list(completions), list(examples))
        self._record(results)
        return results

    def _score_batch_inline(self, completions: list[str], examples: list[dict]) -> list[Score]:
        n = len(completions)
        per_verifier: list[list[tuple[float, dict, str | None]]] = []
        for entry, verifier in zip(self.entries, self.verifiers):
            try:
                # A verifier's own score_batch may parallelize (the code verifier runs sandboxes
                # concurrently); if it raises, fall back to item by item to isolate the culprit.
                scores = verifier.score_batch(completions, examples)
                if len(scores) != n:
                    raise ValueError(f"score_batch returned {len(scores)} scores for {n} items")
                column = []
                for score in scores:
                    score = as_score(score, f"verifier {entry.label!r}")
                    _check_finite(score, entry.label)
                    column.append((score.reward, score.info, None))
            except Exception:
                column = [self._score_one(entry, verifier, c, e) for c, e in zip(completions, examples)]
            per_verifier.append(column)
        results = []
        for i in range(n):
            rewards, details, errors = {}, {}, {}
            for entry, column in zip(self.entries, per_verifier):
                reward, info, error = column[i]
                rewards[entry.label], details[entry.label] = reward, info
                if error is not None:
                    errors[entry.label] = error
            results.append(self._combine(rewards, details, errors))
        return results

    @staticmethod
    def _score_one(entry: VerifierEntry, verifier: Any, completion: str, example: dict):
        try:
            score = as_score(verifier.score(completion, example), f"verifier {entry.label!r}")
            _check_finite(score, entry.label)
            return score.reward, score.info, None
        except Exception as exc:
            return 0.0, {}, _describe(exc)

    def _combine(self, rewards: dict, details: dict, errors: dict) -> Score:
        total = sum(entry.weight * rewards[entry.label] for entry in self.entries)
        info: dict[str, Any] = {"rewards": rewards, "details": details}
        if errors:
            info["errors"] = errors
        return Score(float(total), info)

    def _fill_failure(self, score: Score) -> Score:
        """A pool-level failure (timeout, crash) has no breakdown: give every verifier 0."""
        if "rewards" not in score.info:
            score.info["rewards"] = {label: 0.0 for label in self.labels}
        return score

    def _record(self, results: Sequence[Score]) -> None:
        batch_errors: dict[str, list[str]] = {}
        for score in results:
            for label, error in score.info.get("errors", {}).items():
                batch_errors.setdefault(label, []).append(error)
        for label, errors in batch_errors.items():
            self.error_counts[label] += len(errors)
            if self.log_errors:
                logger.warning(
                    "verifier %r raised on %d/%d items (scored 0), e.g. %s",
                    label, len(errors), len(results), errors[0],
                )

    # -- metrics and lifecycle ----------------------------------------------------------------

    def metrics(self, prefix: str = "verifier/") -> dict[str, float]:
        """Cumulative counters since creation: exceptions per verifier, pool timeouts and crashes."""
        out: dict[str, float] = {f"{prefix}errors": sum(self.error_counts.values())}
        out.update({f"{prefix}errors/{label}": self.error_counts[label] for label in self.labels})
        if self._pool is not None:
            out.update(self._pool.metrics(prefix))
        else:
            out.update({f"{prefix}timeouts": 0, f"{prefix}crashes": 0})
        return out

    def close(self) -> None:
        if self._pool is not None:
            self._pool.close()
            self._pool = None
        for verifier in self.verifiers:
            closer = getattr(verifier, "close", None)
            if callable(closer):
                closer()

    def __enter__(self) -> "CompositeVerifier":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_pool"] = None  # processes don't travel; a copy starts its own when needed
        return state

    def __repr__(self) -> str:
        parts = ", ".join(f"{e.label}={e.weight:g}" for e in self.entries)
        return f"CompositeVerifier({parts}, workers={self.workers})"

    # -- internals ----------------------------------------------------------------------------

    def _build(self, entry: VerifierEntry) -> Any:
        try:
            return registry.get(entry.name, **entry.options)
        except Exception as exc:
            exc.add_note(f"while building verifier {entry.label!r} (name {entry.name!r}, options {entry.options})")
            raise

    def _get_pool(self) -> ScoringPool:
        if self._pool is None:
            self._pool = ScoringPool(
                self._recipe, self.workers, self.timeout_s, start_method=self.start_method, name="verifiers"
            )
        return self._pool

    def _worker_recipe(self):
        """Workers rebuild the composite from its specs (verifiers may hold threads, sockets...).

        In-process registrations travel along, by reference, so they must be importable.
        """
        registered = {
            e.name: registry.registered_factory(e.name)
            for e in self.entries
            if registry.registered_factory(e.name) is not None
        }
        return partial(_rebuild_composite, [e.as_dict() for e in self.entries], registered)


def build(specs: Iterable[Any], *, workers: int = 0, timeout_s: float = 30.0, start_method: str = "spawn"):
    """A `CompositeVerifier` from config specs; see the module docstring."""
    return CompositeVerifier(specs, workers=workers, timeout_s=timeout_s, start_method=start_method)


def _rebuild_composite(specs: list[dict], registered: dict[str, Any]) -> CompositeVerifier:
    for name, factory in registered.items():
        registry.register(name, factory, overwrite=True)
    composite = CompositeVerifier(specs, workers=0)
    composite.log_errors = False
    return composite


def _spec_as_dict(spec: Any, where: str) -> dict[str, Any]:
    if isinstance(spec, str):
        return {"name": spec}
    if isinstance(spec, Mapping):
        return dict(spec)
    if hasattr(spec, "name"):
        return {k: getattr(spec, k) for k in _SPEC_KEYS if getattr(spec, k, None) is not None}
    raise TypeError(f"{where}: expected a mapping like {{'name': 'math', 'weight': 1.0}}, got {type(spec).__name__}")


def _plain(value: Any) -> Any:
    """Config containers (e.g. OmegaConf) as plain dicts and lists, so they pickle cheaply."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, Sequence) and not isinstance(value, (str, bytes)):
        return [_plain(v) for v in value]
    return value


def _check_finite(score: Score, label: str) -> None:
    if not math.isfinite(score.reward):
        raise ValueError(f"verifier {label!r} returned a non-finite reward {score.reward!r}")


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"[:500]
