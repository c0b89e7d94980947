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
class Text:
    text: str                     # casefolded, spaces removed: compared as a string

    @staticmethod
    def of(raw: str) -> "Text":
        return Text(re.sub(r"[\s{}]|\\text|\\mathrm", "", raw).strip(".").casefold())


_MATRIX_RE = re.compile(
    r"^\\begin\{(?P<env>[pbvBV]?matrix|smallmatrix|array)\}(?:\{[^{}]*\})?(?P<body>.*)\\end\{(?P=env)\}$",
    re.DOTALL,
)
_AMBIGUOUS_DECIMAL_COMMA_RE = re.compile(r"^[-+]?\d+,(?!\d{3}$)\d+$")
_OPENERS = {"(": ")", "[": "]", "{": "}", "\\{": "\\}"}
_MAX_PM_VARIANTS = 8


# ---------------------------------------------------------------------------------------------
# Structure level


def parse_answer(text: str) -> Any:
    """The structured value of one normalized answer string. Never raises: what cannot be
    read as maths becomes `Text`."""
    try:
        matrix = _MATRIX_RE.match(text.strip())
        if matrix:
            return _parse_matrix(matrix.group("body"), text)
        tokens = tokenize(text)
        if not tokens or any(token.kind == "word" for token in tokens):
            return Text.of(text)
        value = _Structure(text, tokens).parse()
        if isinstance(value, Collection) and _AMBIGUOUS_DECIMAL_COMMA_RE.match(text.strip()):
            value.decimal_reading = _scalar_from_text(text.strip().replace(",", "."))
        return value
    except (ParseError, RecursionError):  # RecursionError: absurdly deep nesting
        return Text.of(text)


def _parse_matrix(body: str, text: str) -> Any:
    rows = []
    for row_text in re.split(r"\\\\|\\cr", body):
        if not row_text.strip() or row_text.strip() == "\\hline":
            continue
        rows.append([_scalar_from_text(cell.strip()) for cell in row_text.split("&")])
    if not rows or len({len(row) for row in rows}) != 1:
        return Text.of(text)
    return Matrix(rows, text)


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
                if isinstance(value, Collection) and value.kind == "list":
                    items.extend(value.items)
                else:
                    items.append(value)
            return Collection(kind, items, self.source(tokens))
        parts = _split_top(tokens, lambda t: t.kind == "op" and t.value in (",", ";"))
        if len(parts) > 1:
            if any(not part for part in parts):
                raise ParseError("empty list element")
            return Collection("list", [self.single(part) for part in parts], self.source(tokens))
        return self.single(tokens)

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
        if first.kind == "lset" or (first.value == "{" and len(elements) > 1):
            if not inner:
                return Collection("set", [], text)
            return Collection("set", [self.single(part) for part in elements], text)
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
        if all(op == "=" for op in ops) or all(op == "approx" for op in ops):
            # "x = y = 3" and "x \approx 3.14": the last side is the value.
            if len(pieces) > 2 or ops[0] == "approx":
                return self.single(pieces[-1])
            return Relation("=", self.scalar(pieces[0]), self.single_or_scalar(pieces[1]), text)
        return self.inequality(pieces, ops, text)

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
            lhs_var, rhs_var = _is_variable(sides[0]), _is_variable(sides[1])
            infinity = Scalar("\\infty", ("c", "oo"))
            minus_infinity = Scalar("-\\infty", ("neg", ("c", "oo")))
            if lhs_var and not rhs_var:      # x < 3  ->  (-oo, 3)
                return Interval(minus_infinity, sides[1], False, op == "<=", text)
            if rhs_var and not lhs_var:      # 3 < x  ->  (3, oo)
                return Interval(sides[0], infinity, op == "<=", False, text)
            return Relation(op, sides[0], sides[1], text)
        if all(op in ("<", "<=") for op in ops) and _is_variable(sides[1]):
            return Interval(sides[0], sides[2], ops[0] == "<=", ops[1] == "<=", text)
        raise ParseError("inequality chain that is not an interval")

    def scalar(self, tokens: list[Token]) -> Scalar:
        text = self.source(tokens)
        if not tokens:
            raise ParseError("empty expression")
        try:
            ast = _ExpressionParser(tokens).parse()
        except Unsupported:
            return Scalar(text, None, fallback_text=text)
        return Scalar(text, ast)


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
                    factors = [("+", [factors[0], factor])]
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
