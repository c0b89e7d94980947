"""Decide whether two parsed answers are the same mathematical answer.

Scalars are compared in increasing order of cost, stopping at the first decisive step:

1. identical normalized text;
2. exact rational comparison in pure Python (`Fraction`): decisive for rationals, so `1/2^99`
   and `1/2^98` differ however small they are. A side written with a decimal point is an
   approximation, and gets the relative tolerance instead;
3. sympy: structural equality, then for constants a 30-digit numeric comparison (relative
   tolerance `rel_tol` when a side has a decimal, about 1e-20 otherwise), and for expressions
   with variables `expand(a - b) == 0`, then evaluation at several fixed points (a mismatch
   at any point is decisive, agreement at all of them accepts), then `simplify(a - b) == 0`
   when the points could not decide. Each step runs only within the size guards and before
   the deadline.

Structures compare item by item: sets and lists ignore order, tuples do not; an "A or B"
answer is a list of candidates and never matches a single reference; `x = 3` matches `3`.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any

from .evaluate import (
    DEFAULT_LIMITS, Limits, TooLarge, Undefined, exact_value, has_calculus, has_decimal, sympy_from_latex, to_sympy,
)
from .numeric import NumericFailure, evaluate, make_context, relative_difference, symbols_of
from .parse import Chain, Collection, Interval, Matrix, Relation, Scalar, Text, Union


class SymbolicTimeout(Exception):
    """The comparison's time budget ran out before a decisive step."""


@dataclass(frozen=True)
class Options:
    rel_tol: float = 1e-6                 # for answers written with a decimal point
    exact_rel_tol: float = 1e-20          # for exact irrational forms, compared at 30+ digits
    limits: Limits = DEFAULT_LIMITS
    max_symbolic_ops: int = 400           # larger expressions are compared numerically only
    max_simplify_ops: int = 80            # larger ones never reach simplify()
    max_expand_exponent: int = 12         # expand() only polynomials of low degree
    use_latex2sympy: bool = True


@dataclass
class Verdict:
    equal: bool
    detail: str                           # how it matched, or why not


@dataclass
class _Context:
    options: Options
    deadline: float | None = None
    notes: list = field(default_factory=list)

    def check_time(self) -> None:
        if self.deadline is not None and time.monotonic() > self.deadline:
            raise SymbolicTimeout()


_EVAL_POINTS = (Fraction(13, 10), Fraction(-7, 5), Fraction(5, 7), Fraction(29, 11), Fraction(-9, 13))


def equivalent(reference: Any, response: Any, options: Options = Options(),
               deadline: float | None = None) -> Verdict:
    """Compare two values from `parse_answer`. Never raises for any pair of parsed values."""
    context = _Context(options, deadline)
    try:
        return _compare(reference, response, context)
    except SymbolicTimeout:
        return Verdict(False, "timeout")
    except RecursionError:
        return Verdict(False, "too_deep")


def _text_of(value: Any) -> str:
    return getattr(value, "text", "")


def _compare(reference: Any, response: Any, context: _Context) -> Verdict:
    if _text_of(reference) and _text_of(reference) == _text_of(response):
        return Verdict(True, "string")
    if isinstance(reference, Text) or isinstance(response, Text):
        if _says_empty(reference) and _says_empty(response):
            return Verdict(True, "structural")  # "no solution" and the empty set
        if _says_all_reals(reference) and _says_all_reals(response):
            return Verdict(True, "structural")  # "all real numbers" and (-oo, oo)
        equal = Text.of(_text_of(reference)) .text == Text.of(_text_of(response)).text
        return Verdict(equal, "string" if equal else "mismatch")
    # "x = 3" against "3": the assignment's value is the answer.
    if isinstance(reference, Relation) and not isinstance(response, Relation) and _is_assignment(reference):
        return _compare(reference.rhs, response, context)
    if isinstance(response, Relation) and not isinstance(reference, Relation) and _is_assignment(response):
        return _compare(reference, response.rhs, context)
    if _is_ratio(reference) or _is_ratio(response):
        return _compare_ratios(reference, response, context)
    if isinstance(reference, Matrix) or isinstance(response, Matrix):
        return _compare_matrices(reference, response, context)
    if isinstance(reference, Collection) or isinstance(response, Collection):
        return _compare_collections(reference, response, context)
    if isinstance(reference, Scalar) and isinstance(response, Scalar):
        return compare_scalars(reference, response, context)
    if isinstance(reference, Interval) and isinstance(response, Interval):
        return _compare_intervals(reference, response, context)
    if isinstance(reference, Union) and isinstance(response, Union):
        return _match_unordered(reference.parts, response.parts, context)
    if isinstance(reference, Relation) and isinstance(response, Relation):
        return _compare_relations(reference, response, context)
    if isinstance(reference, Chain) and isinstance(response, Chain):
        if reference.ops != response.ops:
            return Verdict(False, "mismatch")
        return _match_ordered(reference.sides, response.sides, context)
    return Verdict(False, "mismatch")


_NO_SOLUTION_WORDS = frozenset({"nosolution", "nosolutions", "norealsolution", "norealsolutions", "none",
                                "therearenosolutions", "thereisnosolution", "emptyset"})
_ALL_REALS_WORDS = frozenset({"allrealnumbers", "allreals", "allrealx", "everyrealnumber"})


def _says_empty(value: Any) -> bool:
    if isinstance(value, Text):
        return value.text in _NO_SOLUTION_WORDS
    return isinstance(value, Collection) and value.kind == "set" and not value.items


def _says_all_reals(value: Any) -> bool:
    if isinstance(value, Text):
        return value.text in _ALL_REALS_WORDS
    return isinstance(value, Interval) and not value.left_closed and not value.right_closed \
        and value.low.ast == ("neg", ("c", "oo")) and value.high.ast == ("c", "oo")


def _is_assignment(relation: Relation) -> bool:
    return relation.op == "=" and isinstance(relation.lhs, Scalar) and relation.lhs.ast is not None \
        and relation.lhs.ast[0] == "s"


# ---------------------------------------------------------------------------------------------
# Structures


def _is_ratio(value: Any) -> bool:
    return isinstance(value, Collection) and value.kind in ("ratio", "time")


def _compare_ratios(reference: Any, response: Any, context: _Context) -> Verdict:
    """Times (`12:30`) are equal only part by part; ratios also when proportional (`3:4` and
    `6:8`) and against the quotient they stand for (`3:4` and `\\frac34`)."""
    if _is_ratio(reference) and _is_ratio(response):
        direct = _match_ordered(reference.items, response.items, context)
        # Two times of day are equal only when written alike; `2:5` against `4:10` is a ratio.
        if direct.equal or reference.kind == response.kind == "time" or len(reference.items) != len(response.items):
            return direct
        return _proportional(reference.items, response.items, context)
    ratio, other = (reference, response) if _is_ratio(reference) else (response, reference)
    if ratio.kind == "time" or len(ratio.items) != 2 or not isinstance(other, Scalar):
        return Verdict(False, "mismatch")
    numerator, denominator = ratio.items
    if numerator.ast is None or denominator.ast is None:
        return Verdict(False, "mismatch")
    quotient = Scalar(ratio.text, ("/", numerator.ast, denominator.ast))
    if ratio is reference:
        return compare_scalars(quotient, other, context)
    return compare_scalars(other, quotient, context)


def _proportional(first: list, second: list, context: _Context) -> Verdict:
    """a1:a2:... and b1:b2:... name the same ratio when a_i * b_0 = b_i * a_0 for all i."""
    if any(item.ast is None for item in first + second):
        return Verdict(False, "mismatch")
    for a, b in zip(first[1:], second[1:]):
        left = Scalar(f"({a.text})*({second[0].text})", ("*", [a.ast, second[0].ast]))
        right = Scalar(f"({b.text})*({first[0].text})", ("*", [b.ast, first[0].ast]))
        if not compare_scalars(left, right, context).equal:
            return Verdict(False, "mismatch")
    return Verdict(True, "exact")


def _compare_collections(reference: Any, response: Any, context: _Context) -> Verdict:
    # "3,5" against a single number: read it with a decimal comma.
    if isinstance(reference, Collection) and reference.decimal_reading is not None and isinstance(response, Scalar):
        return _compare(reference.decimal_reading, response, context)
    if isinstance(response, Collection) and response.decimal_reading is not None and isinstance(reference, Scalar):
        return _compare(reference, response.decimal_reading, context)
    if not isinstance(response, Collection):
        if len(reference.items) == 1:
            return _compare(reference.items[0], response, context)
        if isinstance(reference, Collection) and reference.kind == "tuple" and isinstance(response, Interval):
            return _interval_against_pair(response, reference, context)
        return Verdict(False, "mismatch")
    if not isinstance(reference, Collection):
        if len(response.items) == 1:
            return _compare(reference, response.items[0], context)
        if isinstance(reference, Interval) and response.kind == "tuple":
            return _interval_against_pair(reference, response, context)
        # A single reference against several candidates: never credit one of them.
        reason = "multiple_candidates" if response.kind in ("or", "list", "pm") else "mismatch"
        return Verdict(False, reason)
    if len(reference.items) != len(response.items):
        return Verdict(False, "mismatch")
    if reference.kind == "tuple" or response.kind == "tuple":
        if {reference.kind, response.kind} & {"set", "pm", "or"} and reference.kind != response.kind:
            return Verdict(False, "mismatch")  # a point is not a set of solutions
        return _match_ordered(reference.items, response.items, context)
    return _match_unordered(reference.items, response.items, context)


def _match_ordered(references: list, responses: list, context: _Context) -> Verdict:
    if len(references) != len(responses):
        return Verdict(False, "mismatch")
    details = []
    for reference, response in zip(references, responses):
        verdict = _compare(reference, response, context)
        if not verdict.equal:
            return Verdict(False, verdict.detail)
        details.append(verdict.detail)
    return Verdict(True, _combined(details))


def _match_unordered(references: list, responses: list, context: _Context) -> Verdict:
    if len(references) != len(responses):
        return Verdict(False, "mismatch")
    remaining = list(responses)
    details = []
    for reference in references:
        for index, response in enumerate(remaining):
            verdict = _compare(reference, response, context)
            if verdict.equal:
                details.append(verdict.detail)
                del remaining[index]
                break
        else:
            return Verdict(False, "mismatch")
    return Verdict(True, _combined(details))


def _combined(details: list[str]) -> str:
    order = ("string", "exact", "structural", "numeric", "symbolic", "numeric_identity")
    return max(details, key=lambda detail: order.index(detail) if detail in order else 0, default="string")


def _compare_intervals(reference: Interval, response: Interval, context: _Context) -> Verdict:
    if (reference.left_closed, reference.right_closed) != (response.left_closed, response.right_closed):
        return Verdict(False, "mismatch")
    return _match_ordered([reference.low, reference.high], [response.low, response.high], context)


def _interval_against_pair(interval: Interval, pair: Collection, context: _Context) -> Verdict:
    # "(1, 2)" is both a point and an open interval; as an interval it must be open.
    if interval.left_closed or interval.right_closed or len(pair.items) != 2:
        return Verdict(False, "mismatch")
    return _match_ordered([interval.low, interval.high], pair.items, context)


def _compare_matrices(reference: Any, response: Any, context: _Context) -> Verdict:
    reference_rows = _matrix_rows(reference)
    response_rows = _matrix_rows(response)
    if reference_rows is None or response_rows is None:
        return Verdict(False, "mismatch")
    if len(reference_rows) != len(response_rows) or any(
        len(a) != len(b) for a, b in zip(reference_rows, response_rows)
    ):
        return Verdict(False, "mismatch")
    flat_reference = [cell for row in reference_rows for cell in row]
    flat_response = [cell for row in response_rows for cell in row]
    return _match_ordered(flat_reference, flat_response, context)


def _matrix_rows(value: Any) -> list | None:
    if isinstance(value, Matrix):
        rows = value.rows
        if len(rows[0]) == 1:  # a column vector reads like a tuple
            return [[row[0] for row in rows]]
        return rows
    if isinstance(value, Collection) and value.kind == "tuple":
        return [list(value.items)]
    return None


def _compare_relations(reference: Relation, response: Relation, context: _Context) -> Verdict:
    if reference.op != response.op:
        return Verdict(False, "mismatch")
    if _is_assignment(reference) and _is_assignment(response):
        # `P(x) = 1` and `p(x) = 1` name the same thing; `x = 3` and `y = 3` do not.
        if reference.lhs.ast[1].casefold() != response.lhs.ast[1].casefold():
            return Verdict(False, "mismatch")
        return _compare(reference.rhs, response.rhs, context)
    direct = _match_ordered([reference.lhs, reference.rhs], [response.lhs, response.rhs], context)
    if direct.equal or reference.op != "=":
        return direct
    if not all(isinstance(side, Scalar) for side in (reference.lhs, reference.rhs, response.lhs, response.rhs)):
        return Verdict(False, "mismatch")
    swapped = _match_ordered([reference.lhs, reference.rhs], [response.rhs, response.lhs], context)
    if swapped.equal:
        return swapped
    return _equations_proportional(reference, response, context)


def _equations_proportional(reference: Relation, response: Relation, context: _Context) -> Verdict:
    """`y = 2x + 3` and `2x - y + 3 = 0`: lhs - rhs agree up to a non-zero constant factor."""
    try:
        first = _sympy_value(reference.lhs, context) - _sympy_value(reference.rhs, context)
        second = _sympy_value(response.lhs, context) - _sympy_value(response.rhs, context)
    except (TooLarge, Undefined, ValueError):
        return Verdict(False, "mismatch")
    symbols = first.free_symbols | second.free_symbols
    if not symbols or first.free_symbols != second.free_symbols or has_calculus(first) or has_calculus(second):
        return Verdict(False, "mismatch")
    ratios = []
    for point in _points(symbols):
        context.check_time()
        a, b = _evaluate_at(first, point), _evaluate_at(second, point)
        if a is None or b is None or abs(b) == 0:
            continue
        ratios.append(a / b)
    if len(ratios) < 2 or abs(ratios[0]) == 0:
        return Verdict(False, "mismatch")
    scale = abs(ratios[0])
    if all(abs(ratio - ratios[0]) <= 1e-12 * scale for ratio in ratios):
        return Verdict(True, "numeric_identity")
    return Verdict(False, "mismatch")


# ---------------------------------------------------------------------------------------------
# Scalars


def _exact(scalar: Scalar, context: _Context):
    """Cached exact value: a Fraction, None (not rational), or the exception it raised."""
    if "exact" not in scalar.cache:
        if scalar.ast is None:
            scalar.cache["exact"] = None
        else:
            try:
                scalar.cache["exact"] = exact_value(scalar.ast, context.options.limits)
            except (TooLarge, Undefined) as error:
                scalar.cache["exact"] = error
    return scalar.cache["exact"]


def _sympy_value(scalar: Scalar, context: _Context):
    """Cached sympy value; raises TooLarge / Undefined / ValueError (could not parse)."""
    if "sympy" not in scalar.cache:
        try:
            if scalar.ast is not None:
                value = to_sympy(scalar.ast, context.options.limits)
            elif scalar.fallback_text is not None and context.options.use_latex2sympy:
                context.check_time()
                value = sympy_from_latex(scalar.fallback_text, context.options.limits)
            else:
                raise ValueError(f"cannot parse {scalar.text!r}")
        except (TooLarge, Undefined, ValueError) as error:
            value = error
        except Exception as error:  # sympy itself failing on odd input is a parse failure
            value = ValueError(f"sympy failed on {scalar.text!r}: {error}")
        scalar.cache["sympy"] = value
    value = scalar.cache["sympy"]
    if isinstance(value, Exception):
        raise value
    return value


def _is_approximate(scalar: Scalar) -> bool:
    if scalar.ast is not None:
        return has_decimal(scalar.ast)
    return "." in (scalar.fallback_text or "")


def compare_scalars(reference: Scalar, response: Scalar, context: _Context) -> Verdict:
    if reference.text == response.text:
        return Verdict(True, "string")
    approximate = _is_approximate(reference) or _is_approximate(response)
    first, second = _exact(reference, context), _exact(response, context)
    if isinstance(first, Fraction) and isinstance(second, Fraction):
        if first == second:
            return Verdict(True, "exact")
        if approximate and _relatively_close(first, second, context.options.rel_tol):
            return Verdict(True, "numeric")
        return Verdict(False, "mismatch")
    if isinstance(first, TooLarge) or isinstance(second, TooLarge):
        return _structural(reference, response)
    if isinstance(first, Undefined) or isinstance(second, Undefined):
        return Verdict(False, "undefined")
    tolerance = context.options.rel_tol if approximate else context.options.exact_rel_tol
    if reference.ast is not None and response.ast is not None:
        verdict = _numeric_verdict(reference.ast, response.ast, tolerance, context)
        if verdict is not None:
            return verdict
    try:
        a = _sympy_value(reference, context)
        b = _sympy_value(response, context)
    except TooLarge:
        return _structural(reference, response)
    except Undefined:
        return Verdict(False, "undefined")
    except ValueError:
        return Verdict(False, "parse_error")
    try:
        return _sympy_equal(a, b, tolerance, context)
    except (SymbolicTimeout, RecursionError):
        raise
    except Exception as error:  # sympy raising on odd model input: a wrong answer, with the reason kept
        return Verdict(False, f"sympy_error:{type(error).__name__}")


_DIGITS = 40            # working precision of the numeric comparison
_CHECK_DIGITS = 100     # to tell a true zero (cancellation) from a tiny value
_MIN_AGREEING_POINTS = 3


def _numeric_verdict(first, second, tolerance: float, context: _Context) -> Verdict | None:
    """Compare two ASTs by mpmath evaluation: constants at 40 digits, expressions with
    variables at fixed points (any clear disagreement is decisive). None: undecided, let sympy
    try."""
    context.check_time()
    names = sorted(symbols_of(first) | symbols_of(second))
    if not names:
        close = _close_at(first, second, {}, tolerance)
        if close is None:
            return None
        return Verdict(True, "numeric") if close else Verdict(False, "mismatch")
    agreed = 0
    for point in _points_by_name(names):
        close = _close_at(first, second, point, max(tolerance, 1e-25))
        if close is False:
            return Verdict(False, "mismatch")
        agreed += close is True
        if agreed >= _MIN_AGREEING_POINTS:
            break
    return Verdict(True, "numeric_identity") if agreed >= _MIN_AGREEING_POINTS else None


def _close_at(first, second, point: dict[str, Fraction], tolerance: float) -> bool | None:
    context = make_context(_DIGITS)
    values = {name: context.mpf(value.numerator) / value.denominator for name, value in point.items()}
    try:
        a, b = evaluate(first, context, values), evaluate(second, context, values)
    except NumericFailure:
        return None
    if relative_difference(a, b, context) <= tolerance:
        return True
    # A side that is zero only up to rounding (sqrt(5+2sqrt6) - sqrt2 - sqrt3) shrinks with
    # more digits; a genuinely tiny value (1/2^99) does not.
    precise = make_context(_CHECK_DIGITS)
    values = {name: precise.mpf(value.numerator) / value.denominator for name, value in point.items()}
    try:
        a_precise, b_precise = evaluate(first, precise, values), evaluate(second, precise, values)
    except NumericFailure:
        return None
    a_zero = abs(a_precise) < precise.mpf(10) ** (-(_CHECK_DIGITS - 15)) * max(abs(a), 1)
    b_zero = abs(b_precise) < precise.mpf(10) ** (-(_CHECK_DIGITS - 15)) * max(abs(b), 1)
    if a_zero or b_zero:
        return a_zero and b_zero
    return bool(relative_difference(a_precise, b_precise, precise) <= tolerance)


def _points_by_name(names: list[str]) -> list[dict[str, Fraction]]:
    return [
        {name: _EVAL_POINTS[(shift + index) % len(_EVAL_POINTS)] + index for index, name in enumerate(names)}
        for shift in range(len(_EVAL_POINTS))
    ]


def _relatively_close(a: Fraction, b: Fraction, rel_tol: float) -> bool:
    return abs(a - b) <= Fraction(rel_tol) * max(abs(a), abs(b))


def _structural(reference: Scalar, response: Scalar) -> Verdict:
    """Both too large to evaluate: equal only when written the same way."""
    if reference.ast is not None and reference.ast == response.ast:
        return Verdict(True, "structural")
    return Verdict(False, "too_large")


def _sympy_equal(a, b, tolerance: float, context: _Context) -> Verdict:
    import sympy

    if a == b:
        return Verdict(True, "symbolic")
    if has_calculus(a) or has_calculus(b):
        return Verdict(False, "mismatch")  # sums and integrals: by form only, never evaluated
    if not a.free_symbols and not b.free_symbols:
        context.check_time()
        equal = _numbers_close(a, b, tolerance)
        if equal is None:
            return Verdict(False, "mismatch")
        return Verdict(equal, "numeric" if equal else "mismatch")
    # Free symbols may differ on equal values (sin(x)^2 + cos(x)^2 against 1): the points decide.
    difference = a - b
    if difference == 0:
        return Verdict(True, "symbolic")
    operations = sympy.count_ops(difference)
    if operations <= context.options.max_symbolic_ops and _max_exponent(difference) <= context.options.max_expand_exponent:
        context.check_time()
        if sympy.expand(difference) == 0:
            return Verdict(True, "symbolic")
    agreed = 0
    for point in _points(difference.free_symbols):
        context.check_time()
        x, y = _evaluate_at(a, point), _evaluate_at(b, point)
        if x is None or y is None:
            continue
        if not _complex_close(x, y, max(tolerance, 1e-12)):
            return Verdict(False, "mismatch")
        agreed += 1
    if agreed >= 2:
        return Verdict(True, "numeric_identity")
    if operations <= context.options.max_simplify_ops:
        context.check_time()
        if sympy.simplify(difference) == 0:
            return Verdict(True, "symbolic")
    return Verdict(False, "mismatch")


def _max_exponent(expr) -> int:
    import sympy

    largest = 0
    for power in expr.atoms(sympy.Pow):
        exponent = power.exp
        if exponent.is_Number:
            largest = max(largest, int(abs(exponent)) if exponent.is_finite else 10**9)
        elif not exponent.is_number:
            largest = max(largest, 10**9)  # x^n: never expand
    return largest


def _to_complex(value) -> complex | None:
    """A Python complex from an evaluated sympy number (None when not finite)."""
    try:
        real, imaginary = value.as_real_imag()
        result = complex(float(real), float(imaginary))
    except (TypeError, ValueError, OverflowError, AttributeError):
        return None
    if result != result or abs(result) == float("inf"):
        return None
    return result


def _numbers_close(a, b, tolerance: float) -> bool | None:
    """Relative comparison of two constant expressions at 30+ significant digits, done on the
    difference so that tiny values (1/2004!) keep their precision. None: cannot evaluate."""
    import sympy

    if a.has(sympy.oo, -sympy.oo, sympy.zoo) or b.has(sympy.oo, -sympy.oo, sympy.zoo):
        return bool(a == b)
    try:
        magnitude = sympy.Max(sympy.Abs(a.evalf(30)), sympy.Abs(b.evalf(30)))
        difference = sympy.Abs((a - b).evalf(30))
        if not (magnitude.is_Number and difference.is_Number):
            return None
        if magnitude == 0:
            return True
        return bool(difference <= sympy.Float(tolerance, 30) * magnitude)
    except (TypeError, ValueError, ArithmeticError):
        return None


def _complex_close(x: complex, y: complex, tolerance: float) -> bool:
    scale = max(abs(x), abs(y))
    if scale == 0:
        return True
    return abs(x - y) <= tolerance * scale or abs(x - y) <= 1e-12 and scale < 1e-6


def _points(symbols) -> list[dict]:
    ordered = sorted(symbols, key=lambda symbol: symbol.name)
    points = []
    for shift in range(len(_EVAL_POINTS)):
        points.append({
            symbol: _EVAL_POINTS[(shift + index) % len(_EVAL_POINTS)] + index
            for index, symbol in enumerate(ordered)
        })
    return points


def _evaluate_at(expr, point: dict) -> complex | None:
    import sympy

    substitutions = {symbol: sympy.Rational(value.numerator, value.denominator) for symbol, value in point.items()}
    try:
        value = expr.evalf(20, subs=substitutions)
    except (TypeError, ValueError, ArithmeticError):
        return None
    if not value.is_number or value.has(sympy.zoo, sympy.nan, sympy.oo, -sympy.oo):
        return None
    return _to_complex(value)
