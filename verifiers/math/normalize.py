"""String clean-up of an extracted answer before parsing.

Both the reference and the model's answer go through `normalize_answer`, so a rule only has to
make equal answers look alike; it never has to be a full LaTeX interpreter. Rules that could
change the meaning of a structured answer (thousands separators, decimal commas) only apply
when the whole answer is one number; "3,5" (3.5 or the list 3, 5?) is left to the parser,
which keeps both readings.
"""
from __future__ import annotations

import re
from fractions import Fraction

# Unicode a model may emit instead of LaTeX.
_UNICODE = {
    "−": "-", "–": "-", "×": r"\times ", "÷": "/", "·": r"\cdot ", "⋅": r"\cdot ",
    "π": r"\pi ", "∞": r"\infty ", "±": r"\pm ", "∓": r"\mp ", "√": r"\sqrt ",
    "≤": r"\le ", "≥": r"\ge ", "≠": r"\ne ", "∪": r"\cup ", "∩": r"\cap ", "∈": r"\in ",
    "°": r"^\circ ", "²": "^2", "³": "^3", "\u00a0": " ", "\u2009": " ", "\u202f": " ", "％": "%",
}

# Commands that only style their argument: `\text{5 cm}` -> `5 cm`.
_WRAPPERS = (
    "text", "textbf", "textit", "textrm", "textsf", "texttt", "mathrm", "mathbf", "mathit",
    "mathsf", "mathtt", "mathnormal", "boldsymbol", "bm", "mbox", "hbox", "operatorname",
    "displaystyle", "emph", "textnormal", "textup", "mathbb", "mathcal", "mathscr", "pmb",
)
_WRAPPER_RE = re.compile(r"\\(" + "|".join(_WRAPPERS) + r")\s*\{")

# Spacing and sizing commands that carry no meaning.
_NOISE_RE = re.compile(
    r"\\(?:left|right|bigl|bigr|Bigl|Bigr|biggl|biggr|Biggl|Biggr|big|Big|bigg|Bigg|displaystyle"
    r"|textstyle|scriptstyle|limits|nolimits|hfill|mathstrut)(?![a-zA-Z])"
    r"|\\q?quad"  # no command starts with "quad": `\quadx_2` is `\quad x_2`
)
_SPACING_RE = re.compile(r"(?<!\\)\\[!,;:> ]|~")  # not the `\\ ` of a matrix row break

_DEGREES_RE = re.compile(
    r"\^\s*\{\s*\\circ\s*\}|\^\s*\\circ|\\circ|\\degree|\^\s*\{\s*o\s*\}(?![a-zA-Z])"
)
_TRIG_RE = re.compile(r"\\?(?:sin|cos|tan|cot|sec|csc)(?![a-zA-Z])")
_DEGREE_NUMBER_RE = re.compile(r"(\d+(?:\.\d+)?)\s*(?:\^\s*\{\s*\\circ\s*\}|\^\s*\\circ|\\degree)")
_PERCENT_RE = re.compile(r"\\?%|\bpercent\b|\bper\s*cent\b", re.IGNORECASE)
_CURRENCY_RE = re.compile(r"\\\$|\$|€|£|¥|₹|\\euro|\bUSD\b|\bdollars?\b|\bcents?\b|\beuros?\b|\brs\.?(?=\s*\d)",
                          re.IGNORECASE)

# Words that are maths, not units: never strip them as a trailing unit.
MATH_WORDS = frozenset(
    "sqrt frac dfrac tfrac pi infty infinity inf oo sin cos tan cot sec csc arcsin arccos arctan "
    "sinh cosh tanh log ln exp lg or and i e".split()
)
# A trailing run of words after a number-ish end, optionally squared/cubed: "5 cm^2", "12 apples".
_TRAILING_UNIT_RE = re.compile(
    r"^(?P<value>.*?[0-9}\)\]])\s*(?P<unit>(?<![\\a-zA-Z])(?:[a-zA-Z]+/[a-zA-Z]+|[a-zA-Z]{2,})\.?"
    r"(?:\s+[a-zA-Z]+\.?)*)"
    r"\s*(?:\^\s*\{?\s*[23]\s*\}?)?$"
)
_LEADING_WORDS_RE = re.compile(r"^(?:the\s+)?(?:answer|result|value|solution)s?\s*(?:is|:|=)\s*", re.IGNORECASE)

# "0,111" is a decimal comma, never a thousands separator.
_WHOLE_THOUSANDS_RE = re.compile(r"^[-+]?[1-9]\d{0,2}(?:(?:,|\{,\}|\\,|\s)\d{3})+(?:\.\d+)?$")
_MIXED_NUMBER_RE = re.compile(r"^([-+]?\d+)\s+(\d+)\s*/\s*(\d+)$")  # "4 4/9", the whole answer
_WHOLE_EUROPEAN_RE = re.compile(r"^[-+]?\d{1,3}(?:\.\d{3})+,\d+$")
_SCIENTIFIC_RE = re.compile(r"^([-+]?\d+(?:\.\d+)?)[eE]([-+]?\d+)$")  # 1.5e-3, the whole answer
_BRACED_COMMA_RE = re.compile(r"(?<=\d)\s*\{\s*,\s*\}\s*(?=\d)|(?<=\d),\s*\\!\s*(?=\d)")


def unwrap_command(text: str, pattern: re.Pattern) -> str:
    """Replace `\\cmd{arg}` by `arg` for every command `pattern` matches (up to its `{`),
    respecting nested braces. Unbalanced input is left as it is."""
    out: list[str] = []
    pos = 0
    while True:
        match = pattern.search(text, pos)
        if match is None:
            out.append(text[pos:])
            return "".join(out)
        close = matching_brace(text, match.end() - 1)
        if close < 0:
            out.append(text[pos:])
            return "".join(out)
        out.append(text[pos:match.start()])
        out.append(text[match.end():close])
        pos = close + 1


def matching_brace(text: str, open_index: int) -> int:
    """Index of the `}` closing the `{` at `open_index`, or -1."""
    depth = 0
    for index in range(open_index, len(text)):
        char = text[index]
        if char == "\\":
            continue
        if char == "{" and (index == 0 or text[index - 1] != "\\"):
            depth += 1
        elif char == "}" and (index == 0 or text[index - 1] != "\\"):
            depth -= 1
            if depth == 0:
                return index
    return -1


def strip_math_delimiters(text: str) -> str:
    text = text.strip()
    for left, right in (("$$", "$$"), ("$", "$"), ("\\(", "\\)"), ("\\[", "\\]")):
        if text.startswith(left) and text.endswith(right) and len(text) >= len(left) + len(right):
            return text[len(left):len(text) - len(right)].strip()
    return text


def _normalize_single_number(text: str) -> str:
    """Thousands separators (and unambiguous European decimals), only when `text` is one number."""
    compact = text.strip()
    if _WHOLE_THOUSANDS_RE.match(compact):
        return re.sub(r"\{,\}|\\,|,|\s", "", compact)
    if _WHOLE_EUROPEAN_RE.match(compact):
        return compact.replace(".", "").replace(",", ".")
    # "3,5" stays as written: it may be 3.5 or the list 3, 5 (the parser keeps both readings).
    return text


# Units a writer glues to the number ("5cm"); other short letter runs after a number are
# variables ("2xy" is 2·x·y).
_ATTACHED_UNITS = frozenset(
    "cm mm km dm kg mg ml cl hr hrs min mins sec secs ft yd mi lb lbs oz mph kph pct cm2 sq st nd rd th".split()
)


_REPEATING_RE = re.compile(r"(\d*)\.(\d*)\\overline\s*\{(\d+)\}")
_CHOICE_WITH_VALUE_RE = re.compile(r"^\(([A-E])\)\s*\S.*$")


def _repeating_decimal(match: re.Match) -> str:
    """`0.1\\overline{6}` is 1/6: the exact fraction of a repeating decimal."""
    whole, fixed, repeat = match.group(1) or "0", match.group(2), match.group(3)
    value = Fraction(int(whole)) + Fraction(int(fixed or "0"), 10 ** len(fixed))
    value += Fraction(int(repeat), (10 ** len(repeat) - 1) * 10 ** len(fixed))
    return f"\\frac{{{value.numerator}}}{{{value.denominator}}}"


def _strip_trailing_unit(text: str) -> str:
    match = _TRAILING_UNIT_RE.match(text)
    if match is None:
        return text
    words = re.findall(r"[a-zA-Z]+", match.group("unit"))
    if any(word.lower() in MATH_WORDS for word in words):
        return text
    attached = match.end("value") == match.start("unit")
    if attached and words[0].lower() not in _ATTACHED_UNITS and len(words[0]) < 4:
        return text
    return match.group("value").strip()


def normalize_answer(text: str) -> str:
    """Canonical spelling of one extracted answer (a LaTeX or plain-text string)."""
    text = text.strip()
    for char, replacement in _UNICODE.items():
        if char in text:
            text = text.replace(char, replacement)
    text = strip_math_delimiters(text)
    if "\\\\" in text and "\\begin" not in text:
        # `\\frac`, `\\left(`: LaTeX escaped twice (a JSON or code string printed raw). Outside
        # a matrix, `\\` followed by a letter is never a line break.
        text = re.sub(r"\\\\(?=[a-zA-Z])", r"\\", text)
    text = _LEADING_WORDS_RE.sub("", text)
    text = re.sub(r"\\[dt]frac(?![a-zA-Z])", r"\\frac", text)
    text = re.sub(r"\\[dt]binom(?![a-zA-Z])", r"\\binom", text)
    text = text.replace("\\{", "\x00LB").replace("\\}", "\x00RB")  # protect set braces
    # The reals as a set, and vectors written with angle brackets, before `\mathbb{}` is unwrapped.
    text = re.sub(r"\\mathbb\s*\{\s*R\s*\}|\\R(?![a-zA-Z])", r"(-\\infty, \\infty)", text)
    text = re.sub(r"\\langle(?![a-zA-Z])", "(", text)
    text = re.sub(r"\\rangle(?![a-zA-Z])", ")", text)
    text = unwrap_command(text, _WRAPPER_RE)
    text = text.replace("\x00LB", "\\{").replace("\x00RB", "\\}")
    text = _BRACED_COMMA_RE.sub(",", text)
    # `1\,000` and `1\!000` are thousands; elsewhere thin spaces are just spacing.
    text = re.sub(r"(?<=\d)\\[,!](?=\d{3}(?!\d))", ",", text)
    text = _NOISE_RE.sub(" ", text)
    text = _SPACING_RE.sub(" ", text)
    if _TRIG_RE.search(text):
        # Inside trigonometry a degree mark changes the value: sin 30° = sin(pi/6).
        text = _DEGREE_NUMBER_RE.sub(r"{(\1\\pi/180)}", text)
    text = _DEGREES_RE.sub("", text)
    text = re.sub(r"\bdegrees?\b", "", text, flags=re.IGNORECASE)
    text = _PERCENT_RE.sub("", text)
    text = _CURRENCY_RE.sub("", text)
    text = re.sub(r"\\(?:infty|infinity)|\binfinity\b", r"\\infty ", text)
    text = text.replace("**", "^")
    text = re.sub(r"\s+", " ", text).strip()
    text = text.rstrip(".,;").rstrip()
    text = strip_math_delimiters(text)
    text = _strip_trailing_unit(text)
    # Single-character LaTeX arguments: `\frac12`, `\frac{a}2`, `\sqrt2`.
    text = re.sub(r"\\frac\s*(\d)\s*(\d)", r"\\frac{\1}{\2}", text)
    text = re.sub(r"\\frac\s*(\{[^{}]*\})\s*([0-9a-zA-Z])", r"\\frac\1{\2}", text)
    text = re.sub(r"\\sqrt\s*(\d)", r"\\sqrt{\1}", text)
    text = _normalize_single_number(text)
    if "overline" in text:
        text = _REPEATING_RE.sub(_repeating_decimal, text)
    # "(E) 12": a multiple-choice answer is its letter.
    text = _CHOICE_WITH_VALUE_RE.sub(r"\1", text)
    text = _MIXED_NUMBER_RE.sub(r"\1\\frac{\2}{\3}", text)
    text = _SCIENTIFIC_RE.sub(r"\1 \\times 10^{\2}", text)
    return text.strip()
