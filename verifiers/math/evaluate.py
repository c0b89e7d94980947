"""Turn a parsed scalar into a value, with every step's cost bounded.

Two evaluators share one set of guards:

- `exact_value`: pure Python `Fraction` arithmetic for rational expressions (numbers, + - * /,
  integer powers, exact roots, factorials, binomials). No sympy; this is the fast path, and it is
  exact, so `1/2004!` and `1/2006!` stay different numbers.
- `to_sympy`: everything else (irrationals, variables, functions), built bottom-up from the AST,
  or from latex2sympy's unevaluated tree for LaTeX this module's parser does not know.

A guard that trips raises `TooLarge` *before* the expensive operation runs: a power whose result
would have more than `max_digits` digits, a factorial or binomial of a huge argument, or a power
tower (`5^{5^{5^{5^5}}}`). The caller then compares the two answers' structure instead.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction
from typing import Any


class TooLarge(ArithmeticError):
    """Evaluating this would exceed the size limits."""


class Undefined(ArithmeticError):
    """Division by zero, 0^-1, a negative factorial, ... ."""


@dataclass(frozen=True)
class Limits:
    max_digits: int = 20_000          # largest integer (numerator / denominator) ever built
    max_symbolic_exponent: int = 10_000  # largest numeric exponent of an irrational base
    max_root_index: int = 64

    @property
    def max_bits(self) -> int:
        return int(self.max_digits * 3.33) + 8


DEFAULT_LIMITS = Limits()
_LOG2_10 = math.log2(10)


# ---------------------------------------------------------------------------------------------
# Exact rational arithmetic


def exact_value(node, limits: Limits = DEFAULT_LIMITS) -> Fraction | None:
    """The exact rational value of `node`, or None when it is not a rational built from
    literals (variables, pi, sqrt(2), sin, ...)."""
    tag = node[0]
    if tag == "n":
        return node[1]
    if tag in ("s", "c", "pm"):
        return None
    if tag == "+":
        total = Fraction(0)
        for child in node[1]:
            value = exact_value(child, limits)
            if value is None:
                return None
            total += value
        return _checked(total, limits)
    if tag == "*":
        product = Fraction(1)
        for child in node[1]:
            value = exact_value(child, limits)
            if value is None:
                return None
            product = _checked(product * value, limits)
        return product
    if tag == "/":
        numerator = exact_value(node[1], limits)
        if numerator is None:
            return None
        denominator = exact_value(node[2], limits)
        if denominator is None:
            return None
        if denominator == 0:
            raise Undefined("division by zero")
        return _checked(numerator / denominator, limits)
    if tag == "neg":
        value = exact_value(node[1], limits)
        return None if value is None else -value
    if tag == "^":
        base = exact_value(node[1], limits)
        if base is None:
            return None
        exponent = exact_value(node[2], limits)
        if exponent is None:
            return None
        return rational_power(base, exponent, limits)
    if tag == "!":
        value = exact_value(node[1], limits)
        return None if value is None else rational_factorial(value, limits)
    if tag == "f":
        return _exact_function(node[1], node[2], limits)
    return None


def _exact_function(name: str, args: list, limits: Limits) -> Fraction | None:
    if name not in ("sqrt", "root", "binom", "abs"):
        return None
    values = [exact_value(arg, limits) for arg in args]
    if any(value is None for value in values):
        return None
    if name == "abs":
        return abs(values[0])
    if name == "sqrt":
        return rational_power(values[0], Fraction(1, 2), limits)
    if name == "root":
        radicand, index = values
        if index.denominator != 1 or index <= 0:
            return None
        return real_root(radicand, int(index), limits)
    return rational_binomial(values[0], values[1], limits)


def _checked(value: Fraction, limits: Limits) -> Fraction:
    if value.numerator.bit_length() > limits.max_bits or value.denominator.bit_length() > limits.max_bits:
        raise TooLarge("number too large")
    return value


def rational_power(base: Fraction, exponent: Fraction, limits: Limits) -> Fraction | None:
    """base ** exponent when the result is rational (None when it is not, e.g. 2^(1/2))."""
    if exponent.denominator != 1:
        index = exponent.denominator
        if index > limits.max_root_index:
            return None
        if base < 0 and index % 2 == 0:
            return None  # not real; sympy decides
        root = real_root(base, index, limits)
        if root is None:
            return None
        return rational_power(root, Fraction(exponent.numerator), limits)
    power = exponent.numerator
    if base == 0:
        if power < 0:
            raise Undefined("zero to a negative power")
        return Fraction(1) if power == 0 else Fraction(0)
    if base == 1:
        return Fraction(1)
    if base == -1:
        return Fraction(1 if power % 2 == 0 else -1)
    if power.bit_length() > 40:  # the exponent alone has > 10^12 units: a tower
        raise TooLarge("exponent too large")
    size_bits = max(base.numerator.bit_length(), base.denominator.bit_length())
    if abs(power) * max(size_bits - 1, 1) > limits.max_bits:
        raise TooLarge("power too large")
    return base ** power


def _integer_root(value: int, index: int) -> int:
    """floor(value ** (1/index)) for value >= 0, exactly."""
    if value < 2:
        return value
    guess = 1 << ((value.bit_length() + index - 1) // index)
    while True:
        better = ((index - 1) * guess + value // guess ** (index - 1)) // index
        if better >= guess:
            return guess
        guess = better


def real_root(value: Fraction, index: int, limits: Limits) -> Fraction | None:
    """The real index-th root when it is rational (odd roots of negatives included)."""
    if index <= 0 or index > limits.max_root_index:
        return None
    if value < 0:
        if index % 2 == 0:
            return None
        root = real_root(-value, index, limits)
        return None if root is None else -root
    numerator = _integer_root(value.numerator, index)
    if numerator ** index != value.numerator:
        return None
    denominator = _integer_root(value.denominator, index)
    if denominator ** index != value.denominator:
        return None
    return Fraction(numerator, denominator)


def _log2_factorial(n: int) -> float:
    return math.lgamma(n + 1) / math.log(2)


def rational_factorial(value: Fraction, limits: Limits) -> Fraction | None:
    if value.denominator != 1:
        return None  # gamma function: sympy's business
    n = value.numerator
    if n < 0:
        raise Undefined("factorial of a negative integer")
    if n.bit_length() > 40 or _log2_factorial(n) > limits.max_bits:
        raise TooLarge("factorial too large")
    return Fraction(math.factorial(n))


def rational_binomial(n_value: Fraction, k_value: Fraction, limits: Limits) -> Fraction | None:
    if n_value.denominator != 1 or k_value.denominator != 1:
        return None
    n, k = n_value.numerator, k_value.numerator
    if n < 0:
        return None
    if k < 0 or k > n:
        return Fraction(0)
    k = min(k, n - k)
    if n.bit_length() > 40:
        if k == 0:
            return Fraction(1)
        raise TooLarge("binomial too large")
    bits = (_log2_factorial(n) - _log2_factorial(k) - _log2_factorial(n - k))
    if bits > limits.max_bits:
        raise TooLarge("binomial too large")
    return Fraction(math.comb(n, k))


def has_decimal(node) -> bool:
    """Whether the writer used a decimal literal anywhere (an approximation, maybe)."""
    tag = node[0]
    if tag == "n":
        return node[2]
    if tag in ("s", "c"):
        return False
    if tag in ("+", "*"):
        return any(has_decimal(child) for child in node[1])
    if tag in ("/", "^"):
        return has_decimal(node[1]) or has_decimal(node[2])
    if tag in ("neg", "!"):
        return has_decimal(node[1])
    if tag == "f":
        return any(has_decimal(child) for child in node[2])
    return False


# ---------------------------------------------------------------------------------------------
# sympy, with the same guards


def _sympy():
    import sympy  # imported on first use: the fast path never pays for it

    return sympy


def _as_fraction(value) -> Fraction | None:
    if getattr(value, "is_Rational", False):
        return Fraction(int(value.p), int(value.q))
    return None


def _from_fraction(value: Fraction):
    return _sympy().Rational(value.numerator, value.denominator)


def guarded_power(base, exponent, limits: Limits):
    sympy = _sympy()
    base_fraction, exponent_fraction = _as_fraction(base), _as_fraction(exponent)
    if base_fraction is not None and exponent_fraction is not None:
        exact = rational_power(base_fraction, exponent_fraction, limits)
        if exact is not None:
            return _from_fraction(exact)
        if abs(exponent_fraction.numerator) > limits.max_symbolic_exponent:
            raise TooLarge("power too large")
        return sympy.Pow(base, exponent)
    if exponent.is_Number and base.is_number:
        if abs(exponent) > limits.max_symbolic_exponent:
            raise TooLarge("power too large")
    if exponent.is_number and base.is_number and not exponent.is_Number:
        # 2^(2^(1/2)) is fine, 2^(10^(10^(1/2))) is not: bound the exponent's magnitude.
        magnitude = sympy.Abs(exponent).evalf(15)
        if magnitude.is_Number and magnitude > limits.max_symbolic_exponent:
            raise TooLarge("power too large")
    return sympy.Pow(base, exponent)


def guarded_factorial(value, limits: Limits):
    fraction = _as_fraction(value)
    if fraction is not None:
        exact = rational_factorial(fraction, limits)
        if exact is not None:
            return _from_fraction(exact)
    if value.is_number and value.is_real and value.evalf(15) > 10_000:
        raise TooLarge("factorial too large")
    return _sympy().factorial(value)


def guarded_binomial(n, k, limits: Limits):
    n_fraction, k_fraction = _as_fraction(n), _as_fraction(k)
    if n_fraction is not None and k_fraction is not None:
        exact = rational_binomial(n_fraction, k_fraction, limits)
        if exact is not None:
            return _from_fraction(exact)
    return _sympy().binomial(n, k)


def _constant(name: str):
    sympy = _sympy()
    return {"pi": sympy.pi, "e": sympy.E, "i": sympy.I, "oo": sympy.oo}[name]


_SYMBOLS: dict[str, Any] = {}


def _symbol(name: str):
    symbol = _SYMBOLS.get(name)
    if symbol is None:
        symbol = _SYMBOLS[name] = _sympy().Symbol(name)
    return symbol


MAX_AST_NODES = 400
MAX_POWER_NESTING = 4  # x^{x^{x^{x}}} is fine; a deeper tower is compared by its written form


def to_sympy(node, limits: Limits = DEFAULT_LIMITS):
    """A sympy expression for `node`; raises TooLarge / Undefined."""
    exact = exact_value(node, limits)
    if exact is not None:
        return _from_fraction(exact)
    nodes, nesting = _measure(node)
    if nodes > MAX_AST_NODES or nesting > MAX_POWER_NESTING:
        raise TooLarge("expression too large for sympy")
    return _check_defined(_build(node, limits))


def _measure(node) -> tuple[int, int]:
    """(number of nodes, deepest nesting of powers) of an AST."""
    tag = node[0]
    if tag in ("n", "s", "c"):
        return 1, 0
    if tag in ("+", "*"):
        children = node[1]
    elif tag in ("/", "^"):
        children = [node[1], node[2]]
    elif tag in ("neg", "!"):
        children = [node[1]]
    elif tag == "f":
        children = node[2]
    else:
        children = [child for child in node[1:] if isinstance(child, tuple)]
    total, nesting = 1, 0
    for index, child in enumerate(children):
        child_nodes, child_nesting = _measure(child)
        total += child_nodes
        if tag == "^" and index == 1:
            child_nesting += 1
        nesting = max(nesting, child_nesting)
    return total, nesting


def _build(node, limits: Limits):
    sympy = _sympy()
    tag = node[0]
    if tag == "n":
        return _from_fraction(node[1])
    if tag == "s":
        return _symbol(node[1])
    if tag == "c":
        return _constant(node[1])
    if tag == "+":
        return sympy.Add(*[_build(child, limits) for child in node[1]])
    if tag == "*":
        return sympy.Mul(*[_build(child, limits) for child in node[1]])
    if tag == "/":
        denominator = _build(node[2], limits)
        if denominator == 0:
            raise Undefined("division by zero")
        return _build(node[1], limits) / denominator
    if tag == "neg":
        return -_build(node[1], limits)
    if tag == "^":
        return guarded_power(_build(node[1], limits), _build(node[2], limits), limits)
    if tag == "!":
        return guarded_factorial(_build(node[1], limits), limits)
    if tag == "f":
        return _function(node[1], [_build(arg, limits) for arg in node[2]], limits)
    raise Undefined(f"cannot evaluate {tag!r}")


def _function(name: str, args: list, limits: Limits):
    sympy = _sympy()
    if name == "sqrt":
        return guarded_power(args[0], sympy.Rational(1, 2), limits)
    if name == "root":
        radicand, index = args
        if index.is_Integer and index > 0 and radicand.is_number and radicand.is_negative and index % 2 == 1:
            return -guarded_power(-radicand, 1 / index, limits)
        return guarded_power(radicand, 1 / index, limits)
    if name == "binom":
        return guarded_binomial(args[0], args[1], limits)
    if name == "abs":
        return sympy.Abs(args[0])
    if name == "log":
        return sympy.log(*args)
    if name == "exp":
        return guarded_power(sympy.E, args[0], limits)
    function = getattr(sympy, name, None)
    if function is None:
        raise Undefined(f"unknown function {name}")
    return function(*args)


def _check_defined(expr):
    sympy = _sympy()
    if expr.has(sympy.zoo, sympy.nan):
        raise Undefined("undefined value")
    return expr


# ---------------------------------------------------------------------------------------------
# latex2sympy fallback


def superscript_depth(text: str) -> int:
    """How deeply `^` nests in LaTeX `text` (`5^{5^{5}}` is 2)."""
    depth = deepest = 0
    group_depths: list[int] = []  # superscript depth to return to when each `{` closes
    pending_superscript = False
    for char in text:
        if char == "^":
            pending_superscript = True
            deepest = max(deepest, depth + 1)
            continue
        if char == "{":
            group_depths.append(depth)
            if pending_superscript:
                depth += 1
        elif char == "}":
            depth = group_depths.pop() if group_depths else 0
        pending_superscript = False if not char.isspace() else pending_superscript
    return deepest


def sympy_from_latex(text: str, limits: Limits = DEFAULT_LIMITS):
    """Parse LaTeX with latex2sympy (a grammar, not eval) and evaluate it under the guards."""
    depth = superscript_depth(text)
    if depth >= 3:
        raise TooLarge("power tower")
    if depth >= 2 and any(name in text for name in ("gcd", "lcm")):
        raise TooLarge("latex2sympy evaluates gcd/lcm while parsing")  # before our guards can run
    from latex2sympy2_extended.latex2sympy2 import ConversionConfig, latex2sympy

    sympy = _sympy()
    config = ConversionConfig(lowercase_symbols=False, interpret_as_mixed_fractions=True)
    try:
        expr = latex2sympy(text, normalization_config=None, conversion_config=config)
    except (TooLarge, Undefined):
        raise
    except Exception as error:  # latex2sympy reports syntax errors as bare Exceptions
        raise ValueError(f"latex2sympy could not parse {text!r}: {error}") from error
    if not isinstance(expr, sympy.Expr):
        raise ValueError(f"not a scalar expression: {text!r}")
    return _check_defined(_rebuild(expr, limits))


_UNEVALUATED_CALCULUS = ("Integral", "Sum", "Product", "Limit", "Derivative")
# Functions whose evaluation cost does not grow with the size of their arguments.
_SAFE_FUNCTIONS = frozenset(
    "Add Mul sin cos tan cot sec csc asin acos atan acot asec acsc sinh cosh tanh coth asinh acosh "
    "atanh exp log Abs floor ceiling frac re im arg conjugate sign Min Max".split()
)
# An argument this small is safe for any function (gamma(50), fibonacci(30), ...).
_SMALL_ARGUMENT = 1000


def has_calculus(expr) -> bool:
    """Whether a sympy expression holds an unevaluated sum, integral, limit, ...: those are
    compared by form only (evaluating them is unbounded work)."""
    return any(type(node).__name__ in _UNEVALUATED_CALCULUS for node in _sympy().preorder_traversal(expr))


def _rebuild(expr, limits: Limits):
    """Evaluate latex2sympy's `evaluate=False` tree bottom-up, guarding every step whose cost
    grows with its arguments (powers, factorials, gamma, ...)."""
    sympy = _sympy()
    if expr.is_Atom:
        return expr
    if isinstance(expr, sympy.UnevaluatedExpr):
        return _rebuild(expr.args[0], limits)
    if type(expr).__name__ in _UNEVALUATED_CALCULUS:
        # Kept unevaluated (never `doit()`): compared by form, factors in sympy's own order.
        return expr.func(*[_rebuild(arg, limits) if not isinstance(arg, sympy.Tuple) else arg for arg in expr.args])
    args = [_rebuild(arg, limits) for arg in expr.args]
    if isinstance(expr, sympy.Pow):
        return guarded_power(args[0], args[1], limits)
    if isinstance(expr, sympy.factorial):
        return guarded_factorial(args[0], limits)
    if isinstance(expr, sympy.binomial):
        return guarded_binomial(args[0], args[1], limits)
    if type(expr).__name__ in _SAFE_FUNCTIONS:
        return expr.func(*args)
    if all(arg.is_Number and abs(arg) <= _SMALL_ARGUMENT for arg in args if arg.is_number) and \
            all(arg.is_Number for arg in args if arg.is_number):
        return expr.func(*args)
    raise TooLarge(f"{type(expr).__name__} of a large or irrational argument")
