"""High-precision numeric evaluation of a parsed scalar with mpmath (sympy's numeric engine),
without building sympy objects: the fast way to compare irrational answers and to test
identities of expressions with variables at a few points.

Evaluation uses private `mpmath.MPContext`s, so nothing here touches mpmath's global
precision. Evaluation refuses (raises `NumericFailure`) rather than guesses: an operation
outside the supported set, a domain problem, an infinite value, or an exponent so large that
the caller's sympy path (with its size guards) should decide instead.
"""
from __future__ import annotations

import functools
from fractions import Fraction
from typing import Any

from .evaluate import exact_value


class NumericFailure(ArithmeticError):
    """This AST cannot be evaluated numerically here; use the sympy path."""


MAX_EXPONENT = 1_000_000          # |exponent| of a power of an irrational or symbolic base
MAX_FACTORIAL_ARGUMENT = 100_000


@functools.lru_cache(maxsize=4)
def make_context(digits: int):
    """A private mpmath context at `digits` precision (built once: construction costs ~5 ms).
    Callers never change its precision, so sharing it is safe."""
    import mpmath

    context = mpmath.MPContext()
    context.dps = digits
    return context


def symbols_of(node, found: set | None = None) -> set:
    """Names of the variables of an AST."""
    found = set() if found is None else found
    tag = node[0]
    if tag == "s":
        found.add(node[1])
    elif tag in ("+", "*"):
        for child in node[1]:
            symbols_of(child, found)
    elif tag in ("/", "^"):
        symbols_of(node[1], found)
        symbols_of(node[2], found)
    elif tag in ("neg", "!"):
        symbols_of(node[1], found)
    elif tag == "f":
        for child in node[2]:
            symbols_of(child, found)
    return found


def evaluate(node, context, point: dict[str, Any] | None = None):
    """The value of `node` (an mpf or mpc of `context`) with variables taken from `point`."""
    try:
        value = _evaluate(node, context, point or {})
    except (ZeroDivisionError, ValueError, OverflowError, TypeError) as error:
        raise NumericFailure(str(error)) from error
    if not context.isfinite(value):
        raise NumericFailure("not finite")
    return value


def _evaluate(node, ctx, point):
    tag = node[0]
    if tag == "n":
        value: Fraction = node[1]
        return ctx.mpf(value.numerator) / value.denominator if value.denominator != 1 else ctx.mpf(value.numerator)
    if tag == "s":
        if node[1] not in point:
            raise NumericFailure(f"no value for {node[1]}")
        return point[node[1]]
    if tag == "c":
        name = node[1]
        if name == "pi":
            return +ctx.pi
        if name == "e":
            return +ctx.e
        if name == "i":
            return ctx.mpc(0, 1)
        raise NumericFailure("infinity")
    if tag == "+":
        total = ctx.mpf(0)
        for child in node[1]:
            total += _evaluate(child, ctx, point)
        return total
    if tag == "*":
        product = ctx.mpf(1)
        for child in node[1]:
            product *= _evaluate(child, ctx, point)
        return product
    if tag == "/":
        denominator = _evaluate(node[2], ctx, point)
        if denominator == 0:
            raise NumericFailure("division by zero")
        return _evaluate(node[1], ctx, point) / denominator
    if tag == "neg":
        return -_evaluate(node[1], ctx, point)
    if tag == "^":
        base = _evaluate(node[1], ctx, point)
        odd_root = _odd_root_exponent(node[2])
        if odd_root is not None and ctx.im(base) == 0 and ctx.re(base) < 0:
            # x^{2/3} of a negative x is real in school maths, as the cube root squared is.
            magnitude = ctx.power(-ctx.re(base), ctx.mpf(odd_root.numerator) / odd_root.denominator)
            return magnitude if odd_root.numerator % 2 == 0 else -magnitude
        return _power(base, _evaluate(node[2], ctx, point), ctx)
    if tag == "!":
        argument = _evaluate(node[1], ctx, point)
        if abs(argument) > MAX_FACTORIAL_ARGUMENT:
            raise NumericFailure("factorial too large")
        if ctx.im(argument) == 0 and ctx.re(argument) < 0 and ctx.re(argument) == ctx.floor(ctx.re(argument)):
            raise NumericFailure("factorial of a negative integer")
        return ctx.factorial(argument)
    if tag == "f":
        return _function(node[1], [_evaluate(arg, ctx, point) for arg in node[2]], ctx)
    raise NumericFailure(f"cannot evaluate {tag!r}")


def _odd_root_exponent(node) -> Fraction | None:
    """The exponent when it is a literal rational with an odd denominator above 1 (`2/3`)."""
    if node[0] not in ("/", "n", "neg"):
        return None
    try:
        value = exact_value(node)
    except ArithmeticError:
        return None
    if value is None or value.denominator == 1 or value.denominator % 2 == 0:
        return None
    return value


def _power(base, exponent, ctx):
    if abs(exponent) > MAX_EXPONENT and abs(base) != 1 and base != 0:
        raise NumericFailure("exponent too large")
    if base == 0:
        if ctx.re(exponent) <= 0:
            raise NumericFailure("zero to a non-positive power")
        return ctx.mpf(0)
    if ctx.im(exponent) == 0 and ctx.re(exponent) == ctx.floor(ctx.re(exponent)):
        return base ** int(ctx.re(exponent))  # integer powers stay real for negative bases
    return ctx.power(base, exponent)


_SIMPLE = {
    "sin": "sin", "cos": "cos", "tan": "tan", "cot": "cot", "sec": "sec", "csc": "csc",
    "asin": "asin", "acos": "acos", "atan": "atan", "acot": "acot", "asec": "asec", "acsc": "acsc",
    "sinh": "sinh", "cosh": "cosh", "tanh": "tanh", "coth": "coth", "abs": "fabs",
}


def _function(name: str, args: list, ctx):
    if name == "sqrt":
        return ctx.sqrt(args[0])
    if name == "root":
        radicand, index = args
        if ctx.im(index) != 0 or ctx.re(index) != int(ctx.re(index)) or ctx.re(index) <= 0:
            raise NumericFailure("root index")
        index = int(ctx.re(index))
        if ctx.im(radicand) == 0 and ctx.re(radicand) < 0 and index % 2 == 1:
            return -ctx.root(-ctx.re(radicand), index)  # the real cube root of -8 is -2
        return ctx.root(radicand, index)
    if name == "exp":
        if abs(args[0]) > MAX_EXPONENT:
            raise NumericFailure("exponent too large")
        return ctx.exp(args[0])
    if name == "log":
        if any(arg == 0 for arg in args):
            raise NumericFailure("log of zero")
        if len(args) == 2:
            if args[1] == 1:
                raise NumericFailure("log base one")
            return ctx.log(args[0]) / ctx.log(args[1])
        return ctx.log(args[0])
    if name == "binom":
        return ctx.binomial(args[0], args[1])
    if name == "abs":
        return abs(args[0])
    method = _SIMPLE.get(name)
    if method is None:
        raise NumericFailure(f"unknown function {name}")
    return getattr(ctx, method)(args[0])


def relative_difference(a, b, ctx):
    """|a - b| / max(|a|, |b|) (0 when both are 0)."""
    scale = max(abs(a), abs(b))
    if scale == 0:
        return ctx.mpf(0)
    return abs(a - b) / scale
