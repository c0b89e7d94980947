"""Tokenizer for normalized answers: one lexer for LaTeX and plain-text maths.

Model text is only ever split into these tokens and parsed by `parse.py`; nothing is evaluated
as code. Unknown LaTeX commands become `unknown` tokens (the scalar is then handed to
latex2sympy), multi-letter words that are not maths become `word` tokens (the answer is text).
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from fractions import Fraction

GREEK = frozenset(
    "alpha beta gamma delta epsilon varepsilon zeta eta theta vartheta iota kappa lambda mu nu xi "
    "omicron rho varrho sigma varsigma tau upsilon phi varphi chi psi omega Gamma Delta Theta "
    "Lambda Xi Sigma Upsilon Phi Psi Omega".split()
)
FUNCTIONS = frozenset(
    "sin cos tan cot sec csc arcsin arccos arctan arccot arcsec arccsc asin acos atan sinh cosh "
    "tanh coth log ln lg exp abs sqrt".split()
)

# LaTeX commands with a fixed token meaning.
_COMMANDS = {
    "cdot": ("op", "*"), "times": ("op", "*"), "ast": ("op", "*"), "div": ("op", "/"),
    "le": ("rel", "<="), "leq": ("rel", "<="), "leqslant": ("rel", "<="),
    "ge": ("rel", ">="), "geq": ("rel", ">="), "geqslant": ("rel", ">="),
    "lt": ("rel", "<"), "gt": ("rel", ">"), "ne": ("rel", "!="), "neq": ("rel", "!="),
    "approx": ("rel", "approx"),
    "pm": ("kw", "pm"), "mp": ("kw", "mp"), "cup": ("kw", "cup"), "cap": ("kw", "cap"),
    "in": ("kw", "in"), "pi": ("const", "pi"), "infty": ("const", "oo"),
    "emptyset": ("const", "empty"), "varnothing": ("const", "empty"),
    "frac": ("cmd", "frac"), "cfrac": ("cmd", "frac"), "sqrt": ("cmd", "sqrt"), "binom": ("cmd", "binom"),
    "vert": ("op", "|"), "lvert": ("op", "|"), "rvert": ("op", "|"), "mid": ("op", "|"),
    "lbrace": ("lset", "\\{"), "rbrace": ("rset", "\\}"), "lbrack": ("open", "["), "rbrack": ("close", "]"),
    "and": ("kw", "and"), "text": ("unknown", "text"),
}
_WORD_KEYWORDS = {
    "or": ("kw", "or"), "and": ("kw", "and"), "pi": ("const", "pi"), "inf": ("const", "oo"),
    "infty": ("const", "oo"), "infinity": ("const", "oo"), "oo": ("const", "oo"), "in": ("kw", "in"),
}

_TOKEN_RE = re.compile(
    r"(?P<space>\s+)"
    r"|(?P<num>\d+(?:\.\d+)?|\.\d+)"
    r"|(?P<setbrace>\\[{}])"
    r"|(?P<cmd>\\[a-zA-Z]+)"
    r"|(?P<word>[a-zA-Z]+)"
    r"|(?P<rel2><=|>=|!=|=<|=>)"
    r"|(?P<char>[-+*/^!=<>,;:()\[\]{}|_'&])"
    r"|(?P<other>.)",
    re.DOTALL,
)


@dataclass(frozen=True)
class Token:
    kind: str    # num id const func cmd op rel kw open close lset rset sub word unknown
    value: object
    start: int   # span in the source string, so a piece can be re-read as text
    end: int


def _number_token(text: str, start: int, end: int) -> Token:
    # Decimals are kept exact; the flag tells the comparison the writer approximated.
    return Token("num", (Fraction(text), "." in text), start, end)


def _word_tokens(word: str, start: int) -> list[Token]:
    lower = word.lower()
    if word in _WORD_KEYWORDS or lower in ("or", "and"):
        kind, value = _WORD_KEYWORDS.get(word) or _WORD_KEYWORDS[lower]
        return [Token(kind, value, start, start + len(word))]
    if lower in FUNCTIONS:
        return [Token("func", lower, start, start + len(word))]
    # "sinx", "lnx": a function name glued to a one- or two-letter argument.
    for name in sorted(FUNCTIONS, key=len, reverse=True):
        if lower.startswith(name) and 0 < len(word) - len(name) <= 2:
            head = Token("func", name, start, start + len(name))
            return [head] + _word_tokens(word[len(name):], start + len(name))
    if len(word) <= 2 or (word.isupper() and len(word) <= 4):  # "xy", "ABC": products of names
        return [Token("id", char, start + offset, start + offset + 1) for offset, char in enumerate(word)]
    return [Token("word", word, start, start + len(word))]


def tokenize(text: str) -> list[Token]:
    tokens: list[Token] = []
    for match in _TOKEN_RE.finditer(text):
        kind = match.lastgroup
        value = match.group(0)
        start, end = match.span()
        if kind == "space":
            continue
        if kind == "num":
            tokens.append(_number_token(value, start, end))
        elif kind == "setbrace":
            tokens.append(Token("lset" if value == "\\{" else "rset", value, start, end))
        elif kind == "cmd":
            name = value[1:]
            if name in _COMMANDS:
                token_kind, token_value = _COMMANDS[name]
                tokens.append(Token(token_kind, token_value, start, end))
            elif name in GREEK:
                tokens.append(Token("id", name, start, end))
            elif name in FUNCTIONS:
                tokens.append(Token("func", name, start, end))
            else:
                tokens.append(Token("unknown", name, start, end))
        elif kind == "word":
            tokens.extend(_word_tokens(value, start))
        elif kind == "rel2":
            canonical = {"=<": "<=", "=>": ">="}.get(value, value)
            tokens.append(Token("rel", canonical, start, end))
        elif kind == "char":
            if value in "([{":
                tokens.append(Token("open", value, start, end))
            elif value in ")]}":
                tokens.append(Token("close", value, start, end))
            elif value in "<>=":
                tokens.append(Token("rel", value, start, end))
            elif value == "_":
                tokens.append(Token("sub", value, start, end))
            else:
                tokens.append(Token("op", value, start, end))
        else:
            tokens.append(Token("unknown", value, start, end))
    return tokens
