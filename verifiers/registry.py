"""Find a verifier by name and build it.

A name resolves, in this order, to:
  1. a factory registered in this process with `register(name, factory)`;
  2. a built-in: "math", "code", "format" (imported only when asked for, so a broken optional
     dependency of one built-in never breaks the others);
  3. an entry point named `name` in the `grpo.verifiers` group of any installed distribution;
  4. "package.module:attr" (attr may be dotted, e.g. "pkg.mod:Class.factory").

What the name points at may be a Verifier class, a factory returning a verifier (or a scoring
function), a ready verifier instance, or a plain scoring function
`(completion, example, **options) -> float | Score`. Functions are wrapped in `FunctionVerifier`.
"""
from __future__ import annotations

import difflib
import importlib
import inspect
import logging
from typing import Any, Callable, Sequence

from verifiers.base import BaseVerifier, Score, as_score, check_batch

ENTRY_POINT_GROUP = "grpo.verifiers"

# name -> (module, attribute); imported lazily by `resolve`.
BUILTINS: dict[str, tuple[str, str]] = {
    "math": ("verifiers.math", "MathVerifier"),
    "code": ("verifiers.code", "CodeVerifier"),
    "format": ("verifiers.format", "FormatVerifier"),
}

_registered: dict[str, Any] = {}

logger = logging.getLogger(__name__)


class UnknownVerifierError(ValueError):
    """The name matches no registered, built-in, entry-point or importable verifier."""


class FunctionVerifier(BaseVerifier):
    """Adapts a plain scoring function to the Verifier protocol.

    Picklable (and so usable in worker processes) whenever the function is importable by name,
    i.e. defined at module level.
    """

    def __init__(self, fn: Callable[..., Any], name: str | None = None, **options: Any):
        self.fn = fn
        self.name = name or getattr(fn, "__name__", "function")
        self.options = options

    def score(self, completion: str, example: dict) -> Score:
        return as_score(self.fn(completion, example, **self.options), f"verifier {self.name!r}")

    def __repr__(self) -> str:
        return f"FunctionVerifier({self.name!r}, options={self.options!r})"


class _BatchAdapter(BaseVerifier):
    """Gives an object that only has `score` (returning float or Score) the full protocol."""

    def __init__(self, inner: Any, name: str):
        self.inner = inner
        self.name = getattr(inner, "name", None) or name

    def score(self, completion: str, example: dict) -> Score:
        return as_score(self.inner.score(completion, example), f"verifier {self.name!r}")


def register(name: str, factory: Any = None, *, overwrite: bool = False) -> Any:
    """Make `get(name)` build `factory` (a class, factory, instance or scoring function).

    Usable as a decorator: `@register("length")` above a function or class. Registration is
    per process: worker processes of a `ScoringPool` only see it if the factory is importable by
    name (module level), which `build` checks before starting workers.
    """
    if not isinstance(name, str) or not name.strip():
        raise ValueError(f"verifier name must be a non-empty string, got {name!r}")
    if ":" in name:
        raise ValueError(f"verifier name {name!r} must not contain ':' (reserved for 'package.module:attr')")

    def _do_register(target: Any) -> Any:
        if not overwrite and (name in _registered or name in BUILTINS):
            raise ValueError(f"verifier {name!r} is already registered; pass overwrite=True to replace it")
        _registered[name] = target
        return target

    return _do_register if factory is None else _do_register(factory)


def unregister(name: str) -> None:
    """Forget an in-process registration (tests use this to clean up)."""
    _registered.pop(name, None)


def registered_factory(name: str) -> Any | None:
    """The in-process registration for `name`, if any (the pool ships it to its workers)."""
    return _registered.get(name)


def available() -> list[str]:
    """Every name `get` accepts without the 'package.module:attr' form, sorted."""
    names = set(_registered) | set(BUILTINS)
    names |= {ep.name for ep in _entry_points()}
    return sorted(names)


def resolve(name: str) -> Any:
    """The object a verifier name points at (class, factory, function or instance), unbuilt."""
    if not isinstance(name, str) or not name.strip():
        raise UnknownVerifierError(f"verifier name must be a non-empty string, got {name!r}")
    if name in _registered:
        return _registered[name]
    if name in BUILTINS:
        module_name, attr = BUILTINS[name]
        return getattr(importlib.import_module(module_name), attr)
    matches = [ep for ep in _entry_points() if ep.name == name]
    if matches:
        if len({ep.value for ep in matches}) > 1:
            logger.warning(
                "verifier entry point %r is defined more than once (%s); using %s",
                name, ", ".join(ep.value for ep in matches), matches[0].value,
            )
        try:
            return matches[0].load()
        except Exception as exc:
            raise UnknownVerifierError(
                f"verifier {name!r}: entry point {matches[0].value!r} in group {ENTRY_POINT_GROUP!r} "
                f"failed to load: {type(exc).__name__}: {exc}"
            ) from exc
    if ":" in name:
        return _import_target(name)
    known = available()
    close = difflib.get_close_matches(name, known, n=1)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    raise UnknownVerifierError(
        f"unknown verifier {name!r}.{hint} Known verifiers: {', '.join(known)}. "
        f"A plug-in can also be named as 'package.module:attr' or registered in the "
        f"{ENTRY_POINT_GROUP!r} entry-point group."
    )


def get(name: str, **options: Any) -> Any:
    """Build the verifier called `name`, passing `options` to its class or factory."""
    return instantiate(resolve(name), name, options)


def instantiate(target: Any, name: str, options: dict[str, Any]) -> Any:
    """Turn what a name resolved to into an object with `score` and `score_batch`."""
    label = f"verifier {name!r}"
    if inspect.isclass(target):
        return _complete(_call(target, options, label), name)
    if _is_verifier_like(target):
        if options:
            raise TypeError(
                f"{label} is a ready-made instance; it takes no options (got {sorted(options)}). "
                "Point the name at its class or a factory to configure it."
            )
        return _complete(target, name)
    if callable(target):
        if _is_scoring_function(target):
            _check_options(target, options, label)
            return FunctionVerifier(target, name=_short_name(name), **options)
        built = _call(target, options, label)
        if _is_verifier_like(built):
            return _complete(built, name)
        if callable(built):
            return FunctionVerifier(built, name=_short_name(name))
        raise TypeError(f"{label}: factory returned {type(built).__name__}, which has no score() method")
    raise TypeError(
        f"{label} resolved to {type(target).__name__}; expected a Verifier class, a factory, "
        "an instance with score(), or a function (completion, example) -> float | Score"
    )


def _entry_points() -> Sequence[Any]:
    from importlib import metadata  # ~25 ms: only when a name is not registered or built in

    return tuple(metadata.entry_points(group=ENTRY_POINT_GROUP))


def _import_target(spec: str) -> Any:
    module_name, _, attr_path = spec.partition(":")
    if not module_name or not attr_path:
        raise UnknownVerifierError(f"verifier {spec!r}: expected 'package.module:attr'")
    try:
        obj: Any = importlib.import_module(module_name)
    except ImportError as exc:
        raise UnknownVerifierError(f"verifier {spec!r}: cannot import module {module_name!r}: {exc}") from exc
    for part in attr_path.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError as exc:
            raise UnknownVerifierError(f"verifier {spec!r}: {module_name!r} has no attribute {attr_path!r}") from exc
    return obj


def _short_name(name: str) -> str:
    # "pkg.rewards:length_bonus" logs as "length_bonus".
    return name.rpartition(":")[2].rpartition(".")[2] if ":" in name else name


def _is_verifier_like(obj: Any) -> bool:
    return not inspect.isclass(obj) and callable(getattr(obj, "score", None))


def _complete(obj: Any, name: str) -> Any:
    if not _is_verifier_like(obj):
        raise TypeError(f"verifier {name!r}: {type(obj).__name__} has no score(completion, example) method")
    if callable(getattr(obj, "score_batch", None)) and getattr(obj, "name", None):
        return obj
    if callable(getattr(obj, "score_batch", None)):
        try:
            obj.name = _short_name(name)
            return obj
        except AttributeError:
            pass
    return _BatchAdapter(obj, _short_name(name))


def _is_scoring_function(fn: Any) -> bool:
    """A function taking (completion, example) is a scorer; one with no required positionals is a factory."""
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):
        return False
    positional = [
        p for p in params
        if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) and p.default is p.empty
    ]
    return len(positional) >= 2 or any(p.kind == p.VAR_POSITIONAL for p in params)


def _check_options(fn: Any, options: dict[str, Any], label: str) -> None:
    try:
        inspect.signature(fn).bind("completion", {}, **options)
    except TypeError as exc:
        raise TypeError(f"{label}: options {sorted(options)} don't fit its signature: {exc}") from exc


def _call(factory: Any, options: dict[str, Any], label: str) -> Any:
    try:
        inspect.signature(factory).bind(**options)
    except TypeError as exc:
        raise TypeError(f"{label}: bad options {sorted(options)}: {exc}") from exc
    except ValueError:
        pass  # no introspectable signature (some builtins): let the call itself complain
    return factory(**options)
