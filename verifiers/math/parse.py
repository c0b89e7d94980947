"""Parse a normalized answer into a structured value, without evaluating anything.

Structures (what an answer *is*): `Scalar`, `Collection` (set / tuple / list / "or" list /
plus-minus pair), `Interval`, `Union`, `Matrix`, `Relation` (equations, assignments,
inequalities that are not intervals) and `Text`.

Scalars are parsed by a small recursive-descent parser into a tuple AST:

    ("n", Fraction, is_decimal)   number literal (exact; is_decimal marks an approximation)
    ("s", name)                   variable
    ("c", name)                   constant: pi, e, i, oo
    ("+", [nodes]) ("*", [nodes]) ("/", a, b) ("neg", a) ("^", a, b) ("!", a)
    ("f", name, [args])           sqrt, root(x, n), binom(n, k), abs, sin, log(x[, base]), ...
    ("pm", a | None, b)           a ± b (expanded into two scalars before comparison)

A scalar the parser does not understand keeps its source text (`Scalar.fallback_text`) for
latex2sympy, a real LaTeX parser that builds sympy objects without evaluating strings.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any

from .evaluate import TooLarge, Undefined, exact_value
from .numeric import symbols_of
from .tokens import Token, tokenize


class ParseError(ValueError):
    """The text is not an answer this module can read."""


class Unsupported(ParseError):
    """Valid-looking maths outside this parser's grammar (e.g. `\\int`): try latex2sympy."""


@dataclass(eq=False)
class Scalar:
    text: str
    ast: Any = None               # tuple AST, or None when only `fallback_text` is known
    fallback_text: str | None = None
    cache: dict = field(default_factory=dict, repr=False)  # evaluation results (see equivalence)


@dataclass(eq=False)
class Collection:
    kind: str                     # "set" | "tuple" | "list" | "or" | "pm"
    items: list
    text: str = ""
    # "3,5" is the list 3, 5 or the decimal 3.5 (decimal comma): the second reading, used only
    # against a single number.
    decimal_reading: Any = None

    @property
    def ordered(self) -> bool:
        return self.kind == "tuple"


@dataclass(eq=False)
class Interval:
    low: Scalar
    high: Scalar
    left_closed: bool
    right_closed: bool
    text: str = ""


@dataclass(eq=False)
class Union:
    parts: list                   # Intervals (or other structures: `{1} \cup [2, 3]`)
    text: str = ""


@dataclass(eq=False)
class Matrix:
    rows: list                    # list[list[Scalar]]
    text: str = ""


@dataclass(eq=False)
class Relation:
    op: str                       # "=", "<", "<=", "!=" (">" and ">=" are flipped to "<", "<=")
    lhs: Scalar
    rhs: Scalar
    text: str = ""


@dataclass(eq=False)
class Chain:
    """An inequality chain that is not an interval: `f(2) < f(1) < f(4)` (ops are "<"/"<=",
    written left to right after flipping ">" chains)."""
    ops: list
    sides: list                   # Scalars
    text: str = ""


@dataclass(eq=False)
class Text:
    text: str                     # casefolded, spaces removed: compared as a string
    # True: written in words ("Monday", "no solution"), a legitimate text answer. False: maths
    # the parser could not read (unbalanced brackets, a chain it does not understand).
    words: bool = True

    @staticmethod
    def of(raw: str, words: bool = True) -> "Text":
        return Text(re.sub(r"[\s{}]|\\text|\\mathrm", "", raw).strip(".").casefold(), words)


# A matrix environment inside brackets: `\left[\begin{array}...\end{array}\right]`.
_BRACKETED_MATRIX_RE = re.compile(r"^[(\[]\s*(\\begin\{.*\\end\{[a-zA-Z]+\})\s*[)\]]$", re.DOTALL)
_MATRIX_RE = re.compile(
    r"\\begin\{(?P<env>[pbvBV]?matrix|smallmatrix|array)\}(?:\{[^{}]*\})?(?P<body>.*?)\\end\{(?P=env)\}",
    re.DOTALL,
)
# What may stand between two matrices of a sum or product: `+`, `-`, `\cdot`, `\times`, nothing.
_MATRIX_OPERATORS = {"+": "+", "-": "-", "": "*", "\\cdot": "*", "\\times": "*", "*": "*"}
_AMBIGUOUS_DECIMAL_COMMA_RE = re.compile(r"^[-+]?(?:0,\d+|\d+,(?!\d{3}$)\d+)$")
_OPENERS = {"(": ")", "[": "]", "{": "}", "\\{": "\\}"}
_MAX_PM_VARIANTS = 8


# ---------------------------------------------------------------------------------------------
# Structure level


def parse_answer(text: str) -> Any:
    """The structured value of one normalized answer string. Never raises: what cannot be
    read as maths becomes `Text`."""
    try:
        bracketed = _BRACKETED_MATRIX_RE.match(text.strip())
        if bracketed:
            text = bracketed.group(1)
        if "\\begin{" in text:
            matrix = _parse_matrix_expression(text.strip())
            if matrix is not None:
                return matrix
        tokens = tokenize(text)
        if not tokens:
            return Text.of(text, words=False)
        words = [index for index, token in enumerate(tokens) if token.kind == "word"]
        if words:
            # Words without numbers are a text answer, and so is a named function the grammar
            # does not know (`lcm(4, 6)`: compared as written); words mixed with numbers
            # ("7 (or maybe 8)") are neither text nor maths we can read.
            readable = all(_is_call(tokens, index) for index in words) or not any(c.isdigit() for c in text)
            return Text.of(text, words=readable)
        value = _Structure(text, tokens).parse()
        if isinstance(value, Collection) and _AMBIGUOUS_DECIMAL_COMMA_RE.match(text.strip()):
            value.decimal_reading = _scalar_from_text(text.strip().replace(",", "."))
        return value
    except (ParseError, RecursionError):  # RecursionError: absurdly deep nesting
        return Text.of(text, words=False)


def _is_call(tokens: list[Token], index: int) -> bool:
    """A word right before "(" names a function (`lcm(4, 6)`, `\\operatorname{lcm}(4, 6)`)."""
    following = tokens[index + 1] if index + 1 < len(tokens) else None
    return following is not None and following.kind == "open" and following.value == "("


def _parse_matrix(body: str, text: str) -> Any:
    rows = []
    for row_text in re.split(r"\\\\|\\cr", body):
        if not row_text.strip() or row_text.strip() == "\\hline":
            continue
        rows.append([_scalar_from_text(cell.strip()) for cell in row_text.split("&")])
    if not rows or len({len(row) for row in rows}) != 1:
        return Text.of(text, words=False)
    return Matrix(rows, text)


def _parse_matrix_expression(text: str) -> Any:
    """A matrix, or a sum / product of matrices with rational entries, computed exactly
    (`\\begin{pmatrix}...\\end{pmatrix} + \\begin{pmatrix}...\\end{pmatrix}`). None when `text`
    is not made of matrices alone (a matrix inside a larger expression is left to the rest)."""
    matches = list(_MATRIX_RE.finditer(text))
    if not matches or matches[0].start() != 0 or matches[-1].end() != len(text):
        return None
    operators = [text[a.end():b.start()].strip() for a, b in zip(matches, matches[1:])]
    if any(operator not in _MATRIX_OPERATORS for operator in operators):
        return None
    matrices = [_parse_matrix(match.group("body"), match.group(0)) for match in matches]
    if len(matrices) == 1 or any(not isinstance(matrix, Matrix) for matrix in matrices):
        return matrices[0] if len(matrices) == 1 else Text.of(text, words=False)
    try:
        values = [_rational_rows(matrix) for matrix in matrices]
        terms, signs = [values[0]], [1]
        for operator, value in zip(operators, values[1:]):
            if _MATRIX_OPERATORS[operator] == "*":
                terms[-1] = _matrix_product(terms[-1], value)
            else:
                terms.append(value)
                signs.append(1 if operator == "+" else -1)
        result = terms[0]
        for sign, term in zip(signs[1:], terms[1:]):
            if len(term) != len(result) or len(term[0]) != len(result[0]):
                raise ParseError("matrices of different shapes")
            result = [[a + sign * b for a, b in zip(row_a, row_b)] for row_a, row_b in zip(result, term)]
    except (ParseError, TooLarge, Undefined):
        return Text.of(text, words=False)
    return Matrix([[Scalar(str(value), ("n", value, False)) for value in row] for row in result], text)


def _rational_rows(matrix: Matrix) -> list[list[Fraction]]:
    rows = []
    for row in matrix.rows:
        values = [exact_value(cell.ast) if cell.ast is not None else None for cell in row]
        if any(value is None for value in values):
            raise ParseError("only rational matrices are computed")
        rows.append(values)
    return rows


def _matrix_product(left: list, right: list) -> list:
    if len(left[0]) != len(right):
        raise ParseError("matrix shapes do not match for a product")
    return [[sum((left[i][k] * right[k][j] for k in range(len(right))), Fraction(0))
             for j in range(len(right[0]))] for i in range(len(left))]


def _scalar_from_text(text: str) -> Scalar:
    tokens = tokenize(text)
    return _Structure(text, tokens).scalar(tokens)


class _Structure:
    """Splits a token list into structures; scalars go to `_ExpressionParser`."""

    def __init__(self, text: str, tokens: list[Token]):
        self.text = text
        self.tokens = tokens

    def source(self, tokens: list[Token]) -> str:
        return self.text[tokens[0].start:tokens[-1].end] if tokens else ""

    def parse(self) -> Any:
        return self.item(self.tokens)

    def item(self, tokens: list[Token]) -> Any:
        if not tokens:
            raise ParseError("empty answer")
        alternatives = _split_top(tokens, lambda t: t.kind == "kw" and t.value in ("or", "and"))
        if len(alternatives) > 1:
            # "1, 2, or 3" and "3 or 4" alike: one flat list of candidates.
            kind = "or" if any(t.kind == "kw" and t.value == "or" for t in _top_level(tokens)) else "list"
            items = []
            for part in alternatives:
                part = _strip_separators(part)
                value = self.item(part)
                if _is_solution_group(value):
                    items.append(Collection("tuple", value.items, value.text))  # "p = 5, q = 2 and p = 7, q = 2"
                elif isinstance(value, Collection) and value.kind == "list":
                    items.extend(value.items)
                else:
                    items.append(value)
            return Collection(kind, items, self.source(tokens))
        groups = _split_top(tokens, lambda t: t.kind == "op" and t.value == ";")
        if len(groups) > 1 and any(_split_top(group, _is_comma)[1:] for group in groups):
            # "p=5, q=2; p=7, q=2": semicolons separate solutions, commas their parts.
            return Collection("list", [self.group(group) for group in groups], self.source(tokens))
        parts = _split_top(tokens, lambda t: t.kind == "op" and t.value in (",", ";"))
        if len(parts) > 1:
            if any(not part for part in parts):
                raise ParseError("empty list element")
            return Collection("list", _flatten_pm([self.single(part) for part in parts]), self.source(tokens))
        return self.single(tokens)

    def group(self, tokens: list[Token]) -> Any:
        parts = _split_top(tokens, _is_comma)
        if len(parts) == 1:
            return self.single(tokens)
        if any(not part for part in parts):
            raise ParseError("empty element in a group")
        return Collection("tuple", [self.single(part) for part in parts], self.source(tokens))

    def single(self, tokens: list[Token]) -> Any:
        if not tokens:
            raise ParseError("empty element")
        # "x \in [1, 2]": the membership is the answer's value.
        if len(tokens) > 2 and tokens[1].kind == "kw" and tokens[1].value == "in" and tokens[0].kind == "id":
            return self.single(tokens[2:])
        unions = _split_top(tokens, _is_union)
        if len(unions) > 1:
            return Union([self.single(part) for part in unions], self.source(tokens))
        relations = [t for t in _top_level(tokens) if t.kind == "rel"]
        if relations:
            return self.relation(tokens)
        ratio = _split_top(tokens, lambda t: t.kind == "op" and t.value == ":")
        if len(ratio) > 1:
            return self.ratio(ratio, tokens)
        if tokens[0].kind == "const" and tokens[0].value == "empty" and len(tokens) == 1:
            return Collection("set", [], self.source(tokens))
        group = self.bracket_group(tokens)
        if group is not None:
            return group
        scalar = self.scalar(tokens)
        variants = expand_plus_minus(scalar.ast) if scalar.ast is not None else None
        if variants is not None:  # "\pm 2021" is the pair {2021, -2021}, not 2021
            return Collection("pm", [Scalar(scalar.text, variant) for variant in variants], scalar.text)
        return scalar

    def bracket_group(self, tokens: list[Token]) -> Any:
        first, last = tokens[0], tokens[-1]
        if first.kind not in ("open", "lset") or last.kind not in ("close", "rset"):
            return None
        if _matching_close(tokens, 0) != len(tokens) - 1:
            return None
        inner = tokens[1:-1]
        elements = _split_top(inner, lambda t: t.kind == "op" and t.value in (",", ";"))
        text = self.source(tokens)
        if first.kind == "lset":
            if not inner:
                return Collection("set", [], text)
            return Collection("set", _flatten_pm([self.single(part) for part in elements]), text)
        if first.value == "{" and len(elements) > 1:
            # `{1, 2}` without backslashes is a LaTeX group around a list: unordered against
            # a set or a list, ordered against a tuple.
            return Collection("list", _flatten_pm([self.single(part) for part in elements]), text)
        if len(elements) == 1:
            return None  # plain parentheses around one value: a scalar
        if any(not part for part in elements):
            raise ParseError("empty element in a bracket group")
        if len(elements) == 2 and first.value in "([" and last.value in ")]":
            interval_like = first.value != last.value.translate(str.maketrans(")]", "(["))
            if first.value == "[" or interval_like or _mentions_infinity(inner):
                return Interval(self.scalar(elements[0]), self.scalar(elements[1]),
                                first.value == "[", last.value == "]", text)
        if first.value == "(" and last.value == ")":
            return Collection("tuple", [self.single(part) for part in elements], text)
        if first.value == "[" and last.value == "]":
            return Collection("tuple", [self.single(part) for part in elements], text)
        raise ParseError("unbalanced bracket group")

    def relation(self, tokens: list[Token]) -> Any:
        pieces: list[list[Token]] = [[]]
        ops: list[str] = []
        depth = 0
        for token in tokens:
            depth += _depth_change(token)
            if depth == 0 and token.kind == "rel":
                ops.append(token.value)
                pieces.append([])
            else:
                pieces[-1].append(token)
        if any(not piece for piece in pieces):
            raise ParseError("relation with an empty side")
        text = self.source(tokens)
        if "approx" in ops and ops[0] != "approx" and all(op in ("=", "approx") for op in ops):
            # "x = 1/3 \approx 0.33": the approximation is a remark on the exact value.
            cut = ops.index("approx")
            pieces, ops = pieces[:cut + 1], ops[:cut]
        if all(op == "=" for op in ops) or all(op == "approx" for op in ops):
            # "x = y = 3" and "x \approx 3.14": the last side is the value.
            if len(pieces) > 2 or ops[0] == "approx":
                return self.single(pieces[-1])
            if not any(token.kind in ("id", "unknown", "word") for token in pieces[0] + pieces[1]):
                # "12 \times 7 = 84": a computation written out; its result is the value.
                return self.single(pieces[-1])
            if _is_label(pieces[0]):
                # "(x, y) = (5, 8)", "|AB| = 1", "f(x) = 1", "A:B = 2": a name for the value.
                name = Scalar(self.source(pieces[0]), ("s", "".join(_token_text(t) for t in pieces[0])))
                return Relation("=", name, self.single_or_scalar(pieces[1]), text)
            return Relation("=", self.scalar(pieces[0]), self.single_or_scalar(pieces[1]), text)
        return self.inequality(pieces, ops, text)

    def ratio(self, parts: list[list[Token]], tokens: list[Token]) -> Collection:
        """`3:4` (a ratio: equal to `6:8` and to 3/4) or `12:30` (a time: minutes written with
        two digits; equal only to the same time)."""
        if any(not part for part in parts):
            raise ParseError("empty ratio part")
        is_time = len(parts) in (2, 3) and all(
            len(part) == 1 and part[0].kind == "num" and len(self.source(part)) == 2 for part in parts[1:]
        )
        return Collection("time" if is_time else "ratio", [self.scalar(part) for part in parts], self.source(tokens))

    def single_or_scalar(self, tokens: list[Token]) -> Any:
        # The right side of an assignment may be a structure: "x = (1, 2)".
        return self.single(tokens)

    def inequality(self, pieces: list[list[Token]], ops: list[str], text: str) -> Any:
        if any(op in ("=", "approx") for op in ops) or len(pieces) > 3:
            raise ParseError("mixed relation chain")
        flipped = {">": "<", ">=": "<="}
        sides = [self.scalar(piece) for piece in pieces]
        if all(op in (">", ">=") for op in ops):
            sides.reverse()
            ops = [flipped[op] for op in reversed(ops)]
        if len(sides) == 2:
            op = ops[0]
            if op == "!=":
                return Relation("!=", sides[0], sides[1], text)
            if op not in ("<", "<="):
                raise ParseError("mixed inequality directions")
            lhs_var, rhs_var = _is_unknown(sides[0], pieces[0]), _is_unknown(sides[1], pieces[1])
            infinity = Scalar("\\infty", ("c", "oo"))
            minus_infinity = Scalar("-\\infty", ("neg", ("c", "oo")))
            if lhs_var and not rhs_var:      # x < 3  ->  (-oo, 3)
                return Interval(minus_infinity, sides[1], False, op == "<=", text)
            if rhs_var and not lhs_var:      # 3 < x  ->  (3, oo)
                return Interval(sides[0], infinity, op == "<=", False, text)
            solved = _solve_linear(sides[0], sides[1], op, text)
            return solved if solved is not None else Relation(op, sides[0], sides[1], text)
        if not all(op in ("<", "<=") for op in ops):
            raise ParseError("inequality chain with mixed directions")
        if _is_unknown(sides[1], pieces[1]) and not _has_symbols(sides[0]) and not _has_symbols(sides[2]):
            mirrored = _absolute_value_band(sides, ops, text)
            if mirrored is not None:
                return mirrored
            return Interval(sides[0], sides[2], ops[0] == "<=", ops[1] == "<=", text)
        return Chain(ops, sides, text)

    def scalar(self, tokens: list[Token]) -> Scalar:
        text = self.source(tokens)
        if not tokens:
            raise ParseError("empty expression")
        try:
            ast = _ExpressionParser(tokens).parse()
        except Unsupported:
            return Scalar(text, None, fallback_text=text)
        return Scalar(text, ast)


def _is_comma(token: Token) -> bool:
    return token.kind == "op" and token.value == ","


def _is_solution_group(value: Any) -> bool:
    """Several assignments to different names: one solution of a system (`p = 5, q = 2`)."""
    if not isinstance(value, Collection) or value.kind != "list" or len(value.items) < 2:
        return False
    if not all(isinstance(item, Relation) and item.op == "=" and item.lhs.ast is not None
               and item.lhs.ast[0] == "s" for item in value.items):
        return False
    names = [item.lhs.ast[1] for item in value.items]
    return len(set(names)) == len(names)


def _strip_separators(tokens: list[Token]) -> list[Token]:
    is_separator = lambda t: t.kind == "op" and t.value in (",", ";")  # noqa: E731
    start, end = 0, len(tokens)
    while start < end and is_separator(tokens[start]):
        start += 1
    while end > start and is_separator(tokens[end - 1]):
        end -= 1
    return tokens[start:end]


def _depth_change(token: Token) -> int:
    if token.kind in ("open", "lset"):
        return 1
    if token.kind in ("close", "rset"):
        return -1
    return 0


def _top_level(tokens: list[Token]):
    depth = 0
    for token in tokens:
        depth += _depth_change(token)
        if depth == 0 and _depth_change(token) == 0:
            yield token


def _split_top(tokens: list[Token], is_separator) -> list[list[Token]]:
    parts: list[list[Token]] = [[]]
    depth = 0
    for token in tokens:
        change = _depth_change(token)
        depth += change
        if depth < 0:
            raise ParseError("unbalanced brackets")
        if depth == 0 and change == 0 and is_separator(token):
            parts.append([])
        else:
            parts[-1].append(token)
    if depth != 0:
        raise ParseError("unbalanced brackets")
    return parts


def _is_union(token: Token) -> bool:
    return token.kind == "kw" and token.value == "cup"


def _matching_close(tokens: list[Token], open_index: int) -> int:
    depth = 0
    for index in range(open_index, len(tokens)):
        depth += _depth_change(tokens[index])
        if depth == 0:
            return index
    return -1


def _mentions_infinity(tokens: list[Token]) -> bool:
    return any(token.kind == "const" and token.value == "oo" for token in tokens)


def _is_variable(scalar: Scalar) -> bool:
    return scalar.ast is not None and scalar.ast[0] == "s"


# Commands that only decorate a name: `\angle ABC`, `\overline{AB}`.
_LABEL_COMMANDS = frozenset("angle measuredangle overline vec hat bar triangle widehat".split())


def _is_label(tokens: list[Token]) -> bool:
    r"""Whether the left side of "... = value" only names the value: a variable (`x`, `a_{37}`),
    a tuple of them (`(x, y)`), a function value (`f(x)`, `f(2)`), `|AB|`, `A:B`,
    `\angle ABC`. Not `2x`, `x + z` or `a^2`: those make an equation to solve."""
    if not tokens or tokens[0].kind not in ("id", "open", "op", "unknown", "func", "cmd"):
        return False
    if tokens[0].kind == "cmd" and tokens[0].value != "frac":
        return False
    # A ratio of names (`\frac{NO}{BO}`, `a/b`) names a value; with a number in it, it is maths.
    ratio_of_names = not any(token.kind == "num" for token in tokens)
    depth = 0
    after_subscript = False
    for token in tokens:
        depth += _depth_change(token)
        if token.kind == "num" and depth == 0 and not after_subscript:
            return False
        if token.kind == "op" and depth == 0 and token.value not in ("|", ":", ",") \
                and not (ratio_of_names and token.value == "/"):
            return False
        if token.kind == "cmd" and not (ratio_of_names and token.value == "frac"):
            return False
        if token.kind == "unknown" and token.value not in _LABEL_COMMANDS:
            return False
        if token.kind in ("rel", "kw", "const", "word", "lset", "rset"):
            return False
        after_subscript = token.kind == "sub"
    return any(token.kind == "id" for token in tokens)


def _absolute_value_band(sides: list, ops: list, text: str) -> Any:
    r"""`1 \le |z| \le 2` is [-2, -1] ∪ [1, 2] (when the lower bound is positive)."""
    middle = sides[1].ast
    if middle is None or middle[0] != "f" or middle[1] != "abs" or middle[2][0][0] != "s":
        return None
    try:
        low, high = exact_value(sides[0].ast), exact_value(sides[2].ast)
    except (TooLarge, Undefined):
        return None
    if low is None or high is None or low <= 0:
        return None
    closed_low, closed_high = ops[0] == "<=", ops[1] == "<="
    negative = Interval(Scalar(f"-{high}", ("n", -high, False)), Scalar(f"-{low}", ("n", -low, False)),
                        closed_high, closed_low, text)
    positive = Interval(Scalar(str(low), ("n", low, False)), Scalar(str(high), ("n", high, False)),
                        closed_low, closed_high, text)
    return Union([negative, positive], text)


def _is_unknown(scalar: Scalar, tokens: list[Token]) -> bool:
    """The side of an inequality that is the unknown: `x`, `f(x)`, `a_n`."""
    return _is_variable(scalar) or (_has_symbols(scalar) and _is_label(tokens))


def _has_symbols(scalar: Scalar) -> bool:
    return scalar.ast is not None and bool(symbols_of(scalar.ast))


def _solve_linear(lhs: Scalar, rhs: Scalar, op: str, text: str) -> Any:
    r"""`-x < -1` or `2x + 1 \le 5`: a linear inequality in one unknown, as the interval it
    defines (None when it is not one)."""
    if lhs.ast is None or rhs.ast is None:
        return None
    names = symbols_of(lhs.ast) | symbols_of(rhs.ast)
    if len(names) != 1:
        return None
    name = next(iter(names))
    difference = ("+", [lhs.ast, ("neg", rhs.ast)])     # lhs - rhs  (op) 0
    try:
        values = [exact_value(_substitute(difference, name, Fraction(x))) for x in (0, 1, 2)]
    except (TooLarge, Undefined, ParseError):
        return None
    if any(value is None for value in values):
        return None
    slope, intercept = values[1] - values[0], values[0]
    if slope == 0 or values[2] - values[1] != slope:
        return None
    bound = -intercept / slope
    bound_scalar = Scalar(str(bound), ("n", bound, False))
    closed = op == "<="
    if slope > 0:   # x < bound
        return Interval(Scalar("-\\infty", ("neg", ("c", "oo"))), bound_scalar, False, closed, text)
    return Interval(bound_scalar, Scalar("\\infty", ("c", "oo")), closed, False, text)


def _substitute(node, name: str, value: Fraction):
    tag = node[0]
    if tag == "s":
        return ("n", value, False) if node[1] == name else node
    if tag in ("n", "c"):
        return node
    if tag in ("+", "*"):
        return (tag, [_substitute(child, name, value) for child in node[1]])
    if tag in ("/", "^"):
        return (tag, _substitute(node[1], name, value), _substitute(node[2], name, value))
    if tag in ("neg", "!"):
        return (tag, _substitute(node[1], name, value))
    if tag == "f":
        return ("f", node[1], [_substitute(child, name, value) for child in node[2]])
    raise ParseError("cannot substitute into " + tag)


def _flatten_pm(items: list) -> list:
    r"""`\{1 \pm \sqrt5, -2\}` is the set of three numbers."""
    flat = []
    for item in items:
        if isinstance(item, Collection) and item.kind == "pm":
            flat.extend(item.items)
        else:
            flat.append(item)
    return flat


# ---------------------------------------------------------------------------------------------
# Expression level

_ATOM_START = ("num", "id", "const", "func", "cmd", "open")


class _ExpressionParser:
    def __init__(self, tokens: list[Token]):
        self.tokens = tokens
        self.index = 0

    def peek(self, offset: int = 0) -> Token | None:
        position = self.index + offset
        return self.tokens[position] if position < len(self.tokens) else None

    def next(self) -> Token:
        token = self.peek()
        if token is None:
            raise ParseError("unexpected end of expression")
        self.index += 1
        return token

    def expect(self, kind: str, value: str | None = None) -> Token:
        token = self.next()
        if token.kind != kind or (value is not None and token.value != value):
            raise ParseError(f"expected {value or kind}, got {token.value!r}")
        return token

    def at(self, kind: str, value: str | None = None) -> bool:
        token = self.peek()
        return token is not None and token.kind == kind and (value is None or token.value == value)

    def parse(self):
        node = self.additive()
        if self.peek() is not None:
            token = self.peek()
            if token.kind == "unknown":
                raise Unsupported(token.value)
            raise ParseError(f"unexpected {token.value!r}")
        return node

    def additive(self):
        terms = []
        if self.at("kw", "pm") or self.at("kw", "mp"):
            self.next()
            node = ("pm", None, self.term())
        else:
            node = self.term()
        terms.append(node)
        while True:
            token = self.peek()
            if token is None:
                break
            if token.kind == "op" and token.value in "+-":
                self.next()
                term = self.term()
                terms.append(term if token.value == "+" else ("neg", term))
            elif token.kind == "kw" and token.value in ("pm", "mp"):
                self.next()
                left = terms[0] if len(terms) == 1 else ("+", terms)
                terms = [("pm", left, self.term())]
            else:
                break
        return terms[0] if len(terms) == 1 else ("+", terms)

    def term(self):
        factors = [self.unary()]
        divisors = []
        while True:
            token = self.peek()
            if token is None:
                break
            if token.kind == "op" and token.value in "*/":
                self.next()
                (factors if token.value == "*" else divisors).append(self.unary())
            elif token.kind in _ATOM_START and not (token.kind == "open" and token.value == "["):
                if token.kind == "num":
                    raise ParseError("two numbers side by side")
                factor = self.power()
                if _is_mixed_number(factors, divisors, factor):
                    whole = factors[0]
                    factors = [("neg", ("+", [whole[1], factor])) if whole[0] == "neg" else ("+", [whole, factor])]
                else:
                    factors.append(factor)
            elif token.kind == "unknown":
                raise Unsupported(token.value)
            else:
                break
        node = factors[0] if len(factors) == 1 else ("*", factors)
        for divisor in divisors:
            node = ("/", node, divisor)
        return node

    def unary(self):
        token = self.peek()
        if token is not None and token.kind == "op" and token.value in "+-":
            self.next()
            operand = self.unary()
            return ("neg", operand) if token.value == "-" else operand
        return self.power()

    def power(self):
        base = self.postfix()
        if self.at("op", "^"):
            self.next()
            exponent = self.exponent()
            node = ("^", base, exponent)
            while self.at("op", "!"):  # "(2^3)!" written without brackets is rare; keep left-to-right
                self.next()
                node = ("!", node)
            return node
        return base

    def exponent(self):
        token = self.peek()
        if token is not None and token.kind == "op" and token.value in "+-":
            self.next()
            operand = self.exponent()
            return ("neg", operand) if token.value == "-" else operand
        return self.power()

    def postfix(self):
        node = self.atom()
        while self.at("op", "!"):
            self.next()
            node = ("!", node)
        return node

    def group(self):
        """A `{...}` argument, or a single atom for LaTeX's one-token arguments."""
        if self.at("open", "{"):
            self.next()
            node = self.additive()
            self.expect("close", "}")
            return node
        return self.postfix()

    def atom(self):
        token = self.next()
        kind, value = token.kind, token.value
        if kind == "num":
            number, is_decimal = value
            if self.at("sub") and not is_decimal:
                return self.base_number(number)
            return ("n", number, is_decimal)
        if kind == "id":
            name = value
            if self.at("sub"):
                self.next()
                name = f"{name}_{self.subscript()}"
            elif name in ("e", "i"):
                return ("c", name)
            return ("s", name)
        if kind == "const":
            if value == "empty":
                raise ParseError("empty set inside an expression")
            return ("c", value)
        if kind == "open":
            closer = _OPENERS[value]
            node = self.additive()
            self.expect("close", closer)
            return node
        if kind == "op" and value == "|":
            node = self.additive()
            self.expect("op", "|")
            return ("f", "abs", [node])
        if kind == "cmd":
            return self.command(value)
        if kind == "func":
            return self.function(value)
        if kind == "unknown":
            raise Unsupported(value)
        raise ParseError(f"unexpected {value!r}")

    def base_number(self, number: Fraction):
        """`204_5`, `1011_{2}`: a numeral written in another base."""
        self.next()
        base_text = self.subscript()
        if not base_text.isdigit() or not 2 <= int(base_text) <= 36:
            raise ParseError(f"not a base: {base_text!r}")
        try:
            return ("n", Fraction(int(str(number.numerator), int(base_text))), False)
        except ValueError as error:
            raise ParseError(f"{number} is not a base-{base_text} numeral") from error

    def subscript(self) -> str:
        if self.at("open", "{"):
            start = self.index
            depth = 0
            while True:
                token = self.next()
                depth += _depth_change(token)
                if depth == 0:
                    break
            return "".join(_token_text(t) for t in self.tokens[start + 1:self.index - 1])
        return _token_text(self.next())

    def command(self, name: str):
        if name == "frac":
            numerator = self.group()
            denominator = self.group()
            return ("/", numerator, denominator)
        if name == "binom":
            return ("f", "binom", [self.group(), self.group()])
        if name == "sqrt":
            if self.at("open", "["):
                self.next()
                index = self.additive()
                self.expect("close", "]")
                return ("f", "root", [self.group(), index])
            return ("f", "sqrt", [self.group()])
        raise Unsupported(name)

    def function(self, name: str):
        power = None
        base = None
        if name in ("log", "lg") and self.at("sub"):
            self.next()
            base = self.group()
        if self.at("op", "^"):  # \sin^2 x
            self.next()
            power = self.exponent()
        if self.at("open", "("):
            self.next()
            argument = self.additive()
            self.expect("close", ")")
        elif self.at("open", "{"):
            argument = self.group()
        else:
            # "\sin 2x": a run of simple atoms is the argument
            factors = [self.postfix()]
            while self.peek() is not None and self.peek().kind in ("num", "id", "const") and factors:
                if self.peek().kind == "num":
                    break
                factors.append(self.postfix())
            argument = factors[0] if len(factors) == 1 else ("*", factors)
        if name in ("ln",):
            node = ("f", "log", [argument])
        elif name == "lg":
            node = ("f", "log", [argument, base if base is not None else ("n", Fraction(10), False)])
        elif name == "log":
            node = ("f", "log", [argument] + ([base] if base is not None else []))
        else:
            node = ("f", _FUNCTION_ALIASES.get(name, name), [argument])
        if power is not None:
            if _is_minus_one(power) and node[1] in _INVERSES:
                return ("f", _INVERSES[node[1]], node[2])
            node = ("^", node, power)
        return node


_FUNCTION_ALIASES = {"arcsin": "asin", "arccos": "acos", "arctan": "atan", "arccot": "acot",
                     "arcsec": "asec", "arccsc": "acsc"}
_INVERSES = {"sin": "asin", "cos": "acos", "tan": "atan", "cot": "acot", "sec": "asec", "csc": "acsc"}


def _is_minus_one(node) -> bool:
    return node[0] == "neg" and node[1][0] == "n" and node[1][1] == 1


def _is_mixed_number(factors: list, divisors: list, factor) -> bool:
    """`2\\frac{1}{2}` is two and a half, as in MATH answers (never `2 \\cdot \\frac12`)."""
    if len(factors) != 1 or divisors:
        return False
    whole = factors[0]
    if whole[0] == "neg":  # -2\frac12 is -(2 + 1/2)
        whole = whole[1]
    if whole[0] != "n" or whole[2] or whole[1].denominator != 1:
        return False
    return (factor[0] == "/" and factor[1][0] == "n" and factor[2][0] == "n"
            and not factor[1][2] and not factor[2][2])


def _token_text(token: Token) -> str:
    if token.kind == "num":
        number, _ = token.value
        return str(number) if number.denominator == 1 else str(float(number))
    return str(token.value)


def expand_plus_minus(ast) -> list | None:
    """All sign choices of the `pm` nodes in `ast` (None when there is no `pm`)."""
    if not _contains_pm(ast):
        return None
    variants = _expand(ast)
    if len(variants) > _MAX_PM_VARIANTS:
        raise ParseError("too many plus-minus signs")
    return variants


def _contains_pm(node) -> bool:
    if not isinstance(node, tuple):
        return False
    if node[0] == "pm":
        return True
    return any(_contains_pm(child) for child in _children(node))


def _children(node):
    tag = node[0]
    if tag in ("+", "*"):
        return node[1]
    if tag in ("/", "^"):
        return [node[1], node[2]]
    if tag in ("neg", "!"):
        return [node[1]]
    if tag == "f":
        return node[2]
    if tag == "pm":
        return [child for child in node[1:] if child is not None]
    return []


def _expand(node) -> list:
    tag = node[0]
    if tag in ("n", "s", "c"):
        return [node]
    if tag == "pm":
        left_options = [None] if node[1] is None else _expand(node[1])
        out = []
        for right in _expand(node[2]):
            for left in left_options:
                plus = right if left is None else ("+", [left, right])
                minus = ("neg", right) if left is None else ("+", [left, ("neg", right)])
                out.extend([plus, minus])
        return out
    if tag in ("+", "*"):
        combos = [[]]
        for child in node[1]:
            combos = [combo + [option] for combo in combos for option in _expand(child)]
            if len(combos) > _MAX_PM_VARIANTS:
                raise ParseError("too many plus-minus signs")
        return [(tag, combo) for combo in combos]
    if tag in ("/", "^"):
        return [(tag, a, b) for a in _expand(node[1]) for b in _expand(node[2])]
    if tag in ("neg", "!"):
        return [(tag, a) for a in _expand(node[1])]
    if tag == "f":
        combos = [[]]
        for child in node[2]:
            combos = [combo + [option] for combo in combos for option in _expand(child)]
        return [("f", node[1], combo) for combo in combos]
    raise ParseError(f"unknown node {tag}")
