"""Find the final answer in a completion (and in a reference written as LaTeX).

Sources, in the order they are tried (the first source that finds something wins):

- `answer_tag`:   the last `<answer>...</answer>` (a `\\boxed{}` inside it is preferred)
- `boxed`:        the last `\\boxed{...}` / `\\fbox{...}` (neighbouring boxes joined, see below)
- `final_answer`: "final answer is X" / "the answer is X" (X: the math environment that follows,
                  else the rest of the sentence)
- `answer_colon`: "Answer: X"
- `gsm8k`:        "#### X"
- `latex`:        the last LaTeX math environment: `$$...$$`, `\\[...\\]`, `$...$`, `\\(...\\)`
                  (display delimiters are matched first, so `$$x$$` is never two empty `$`
                  pairs; an inline `$...$` stays on one line). A plain number written after
                  that environment, in the prose that ends the text, wins when `last_number`
                  is enabled too: "... $d = 90/n$ ... so there are 12 sequences."
- `short_text`:   the whole text when it is one short line that is not prose with a number
                  ("Even", "(C)", "12:00", "\\frac{10}{9}" written without `$`)
- `last_number`:  the last number in the text (not glued to a word: "AZYUK2A" has none)

Several boxes (or math environments) in a row that together form one answer are joined:
`\\boxed{(2, 2)} \\quad \\text{and} \\quad \\boxed{(6, 2)}` is "(2, 2), (6, 2)" and
`\\boxed{3} or \\boxed{4}` is "3 or 4" (which the comparison refuses to credit against a single
reference). When the text has a `</think>`, only what follows the last one is searched; a text
that opens `<think>` and never closes it was cut off while thinking and has no answer.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Iterable

from .normalize import MATH_WORDS


ALL_SOURCES = ("answer_tag", "boxed", "final_answer", "answer_colon", "gsm8k", "latex", "short_text",
               "last_number")
# Named strictness levels (the `extraction` option); a list of source names is accepted too.
EXTRACTION_MODES = {
    "boxed": ("boxed",),
    "strict": ("answer_tag", "boxed", "final_answer", "answer_colon", "gsm8k"),
    "any": ALL_SOURCES,
}
# What a reference (a dataset's answer column) is read with: never a guessed number.
REFERENCE_SOURCES = ("boxed", "final_answer", "latex")

_BOX_RE = re.compile(r"\\(?:boxed|fbox)\s*(?=[{ ])")
_FINAL_ANSWER_RE = re.compile(
    r"(?:final\s+answer\s*(?:is|should\s+be|would\s+be|=)?"
    r"|\bthe\s+(?:correct\s+)?answer\s*(?:is|should\s+be|would\s+be|=|:)"
    r"|\b(?:correct\s+)?(?:option|choice)\s+is)\s*:?",
    re.IGNORECASE)
_ANSWER_COLON_RE = re.compile(r"(?<![a-zA-Z])answer\s*:", re.IGNORECASE)
_GSM8K_RE = re.compile(r"####\s*")
_BRACE_OR_ESCAPE_RE = re.compile(r"\\.|[{}]", re.DOTALL)  # `\{` and `\}` are escapes, not braces
# A number as prose writes it: not glued to a word before it ("AZYUK2A", "x2"), with thousands
# separators, a decimal part, a fraction "4/9", a mixed number "4 4/9" or a time "12:30".
_NUMBER_RE = re.compile(
    r"(?<![A-Za-z_\d.])(?:-\s?)?(?:\d{1,2}:\d{2}(?!\d)|\d+[ \t]+\d+/\d+(?![\d/])"
    r"|\d[\d,]*(?:\.\d+)?(?:\s*/\s*\d+)?|\.\d+)"
)
# Math delimiters; `$$` before `$` so that a display is never read as two inline delimiters.
_DELIMITER_RE = re.compile(r"\\\$|\$\$|\$|\\\[|\\\]|\\\(|\\\)|\n")
_CLOSERS = {"$$": "$$", "$": "$", "\\[": "\\]", "\\(": "\\)"}
# A math environment that states a value: "5", "x = 10", "\\frac{3}{4}", "-2\\sqrt{3}".
_VALUE_RE = re.compile(
    r"^\s*(?:[A-Za-z](?:_\{?\w+\}?)?\s*=\s*)?[-+]?(?:[\d.,\s{}()^]|\\[dt]?frac|\\sqrt|\\pi|\\cdot)*\d"
    r"(?:[\d.,\s{}()^]|\\[dt]?frac|\\sqrt|\\pi|\\cdot)*$"
)
_ASY_RE = re.compile(r"\[asy\].*?\[/asy\]", re.DOTALL)
_SPACING_GAP_RE = re.compile(r"\\(?:q?quad|,|;|:|!| )|~|\\text\s*\{\s*|\\mbox\s*\{\s*|[{}()$.]|\\[()\[\]]")
_GAP_LABEL_RE = re.compile(r"[A-Za-z](?:_\{?\w+\}?)?\s*=\s*$")
# Words between two boxes that make the second a consequence of the first, not a companion.
_DERIVATION_WORDS = frozenset(
    "is are was were equals gives give get gets becomes so thus therefore hence then yields total sum".split()
)
_SUBSCRIPT_RE = re.compile(r"_\{[^{}]*\}|_[A-Za-z0-9]")
_WORD_RE = re.compile(r"[A-Za-z]+")


@dataclass(frozen=True)
class Extraction:
    text: str     # the raw answer string, before normalization
    source: str   # which rule found it (one of ALL_SOURCES)


def resolve_sources(extraction: str | Iterable[str]) -> tuple[str, ...]:
    """Turn the `extraction` option into an ordered tuple of source names."""
    if isinstance(extraction, str):
        if extraction in EXTRACTION_MODES:
            return EXTRACTION_MODES[extraction]
        names = tuple(part.strip() for part in extraction.split(",") if part.strip())
    else:
        names = tuple(extraction)
    unknown = [name for name in names if name not in ALL_SOURCES]
    if unknown or not names:
        raise ValueError(
            f"extraction: unknown mode or source {unknown or extraction!r}; use one of "
            f"{sorted(EXTRACTION_MODES)} or a list drawn from {list(ALL_SOURCES)}"
        )
    return names


def extract_answer(completion: str, sources: Iterable[str] = ALL_SOURCES) -> Extraction | None:
    """The final answer of `completion`, or None when no enabled source finds one."""
    if "</think>" in completion:
        completion = completion.rsplit("</think>", 1)[1]
    elif "<think>" in completion:
        return None  # cut off while still thinking: whatever it boxed there was a draft
    if "[asy]" in completion:
        completion = _ASY_RE.sub(" ", completion)  # figure labels are not answers
    sources = tuple(sources)
    for source in sources:
        if source == "latex":
            found = _extract_latex_or_later_number(completion, "last_number" in sources)
        else:
            found = _EXTRACTORS[source](completion)
        if found is not None and found[0].strip():
            return Extraction(found[0].strip(), found[1] or source)
    return None


# ---------------------------------------------------------------------------------------------
# Boxes


def _brace_pairs(text: str) -> dict[int, int]:
    """Index of each `{` -> index of its `}`, in one pass (a completion may hold thousands of
    unclosed `\\boxed{`: matching each one separately would be quadratic)."""
    pairs: dict[int, int] = {}
    stack: list[int] = []
    # Braces before the first box cannot close one; unmatched `{` there just stay on the stack.
    start = min(position for position in (text.find("\\boxed"), text.find("\\fbox"), len(text)) if position >= 0)
    for match in _BRACE_OR_ESCAPE_RE.finditer(text, start):
        char = match.group(0)
        if char == "{":
            stack.append(match.start())
        elif char == "}" and stack:
            pairs[stack.pop()] = match.start()
    return pairs


def _boxed_spans(text: str) -> list[tuple[int, int, str]]:
    """(start, end, content) of every outermost `\\boxed{...}` / `\\boxed X` / `\\fbox{...}`."""
    if "\\boxed" not in text and "\\fbox" not in text:
        return []
    pairs = _brace_pairs(text)
    spans = []
    for match in _BOX_RE.finditer(text):
        brace = match.end()
        while brace < len(text) and text[brace] == " ":
            brace += 1
        if brace < len(text) and text[brace] == "{":
            close = pairs.get(brace, -1)
            if close < 0:
                continue
            spans.append((match.start(), close + 1, text[brace + 1:close]))
        else:  # `\boxed 5`: the argument runs to the next space or `$`
            word = re.match(r"[^\s$]+", text[brace:])
            if word:
                spans.append((match.start(), brace + word.end(), word.group(0)))
    # Keep the outermost boxes only: `\boxed{\boxed{20}}` is one answer.
    outermost: list[tuple[int, int, str]] = []
    for span in spans:
        if outermost and span[0] < outermost[-1][1]:
            continue
        outermost.append(span)
    return outermost


def gap_joins(gap: str, extra_words: int) -> str | None:
    """Whether the text between two answers makes them one answer: None when it does not,
    else the joiner ("and" or "or"; "" for a bare separator). A gap of separators only
    (`, `, `;`, `\\quad`, `\\text{and}`) joins; so does one with "and"/"or" and at most
    `extra_words` other short words ("\\boxed{1} papers and \\boxed{2} bins"), none of which
    derives one from the other ("\\boxed{3}, so the sum is \\boxed{7}"). An empty gap joins
    (`\\boxed{1}\\boxed{2}`), a bare `$$` between two displays does not."""
    if not gap.strip():
        return ""
    gap = _GAP_LABEL_RE.sub(" ", gap)  # "\boxed{..} and $y_2 = \boxed{..}": the name of the next value
    if "\n\n" in gap or "=" in gap:
        return None
    cleaned = _SPACING_GAP_RE.sub(" ", _SUBSCRIPT_RE.sub(" ", gap))
    if any(char.isdigit() for char in cleaned):
        return None
    words = [word.lower() for word in _WORD_RE.findall(cleaned)]
    joiners = [word for word in words if word in ("and", "or")]
    others = [word for word in words if word not in ("and", "or")]
    separator = re.search(r"[,;]", cleaned) is not None
    if not joiners and (others or not separator):
        return None  # ", so the sum is": a derivation between the boxes, not a list
    if len(others) > extra_words or any(word in _DERIVATION_WORDS for word in others):
        return None
    return "or" if "or" in joiners else "and"


def _join(parts: list[str], joiner: str) -> str:
    parts = list(dict.fromkeys(part.strip() for part in parts))  # the same answer twice is one answer
    return (" or " if joiner == "or" else ", ").join(parts)


def extract_boxed(text: str) -> str | None:
    spans = _boxed_spans(text)
    if not spans:
        return None
    parts = [spans[-1][2]]
    joiner = ""
    # Walk back over boxes separated only by commas / "or" / "and": they are one answer.
    for previous, current in zip(reversed(spans[:-1]), reversed(spans[1:])):
        kind = gap_joins(text[previous[1]:current[0]], extra_words=4)
        if kind is None:
            break
        joiner = "or" if "or" in (kind, joiner) else joiner
        parts.append(previous[2])
    answer = _join(list(reversed(parts)), joiner)
    inner = _boxed_spans(answer)
    if len(inner) == 1 and inner[0][0] == 0 and inner[0][1] == len(answer.rstrip()):
        return inner[0][2]  # \boxed{\boxed{20}}
    return answer


def _extract_boxed(text: str) -> tuple[str, str] | None:
    boxed = extract_boxed(text)
    return None if boxed is None else (boxed, "boxed")


# ---------------------------------------------------------------------------------------------
# Math environments


def math_environments(text: str) -> list[tuple[int, int, str]]:
    """(start, end, content) of each math environment, left to right, found in one pass over
    the delimiters (a regex per opening delimiter would be quadratic on "\\[" * 5000). An
    inline `$...$` ends at a line break; one that reads like prose about money ("$5 and got $")
    is skipped."""
    spans = []
    opener, open_start = None, 0
    for match in _DELIMITER_RE.finditer(text):
        delimiter = match.group(0)
        if delimiter == "\\$":
            continue
        if opener is None:
            if delimiter in _CLOSERS:
                opener, open_start = delimiter, match.start()
            continue
        if delimiter == "\n":
            if opener == "$":
                opener = None
            continue
        if opener == "$" and delimiter == "$$":  # "$a$$b$": a close and an open, side by side
            _add_environment(spans, text, opener, open_start, match.start() + 1)
            opener, open_start = "$", match.start() + 1
            continue
        if delimiter == _CLOSERS[opener]:
            _add_environment(spans, text, opener, open_start, match.end())
            opener = None
    return spans


def _add_environment(spans: list, text: str, opener: str, start: int, end: int) -> None:
    content = text[start + len(opener):end - len(_CLOSERS[opener])].strip()
    if opener == "$" and content[:1].isdigit() and _reads_like_prose(content):
        return
    spans.append((start, end, content.rstrip(",;").strip()))


_TEXT_GROUP_RE = re.compile(r"\\(?:text\w*|mbox|mathrm|operatorname)\s*\{[^{}]*\}")


def _reads_like_prose(content: str) -> bool:
    """Whether the text between two dollar signs is prose about money ("5 each, so "), not
    maths: words of three letters or more outside `\\text{}`, other than maths words ("xy",
    "3abc" are products)."""
    words = re.findall(r"(?<![\\A-Za-z0-9])[A-Za-z]{3,}", _TEXT_GROUP_RE.sub(" ", content))
    return any(word.lower() not in MATH_WORDS for word in words)


def _without_environments(text: str) -> str:
    """`text` with its math environments blanked out (the prose around them)."""
    pieces, position = [], 0
    for start, end, _ in math_environments(text):
        pieces.append(text[position:start])
        position = end
    pieces.append(text[position:])
    return " ".join(pieces)


def _last_environment(text: str) -> tuple[str, int] | None:
    """The last math environment's content (joined with the ones right before it that form one
    answer with it) and its end."""
    # Environments holding a box were the `boxed` source's to read.
    spans = [span for span in math_environments(text) if span[2] and "\\boxed" not in span[2]]
    if not spans:
        return None
    parts = [spans[-1][2]]
    joiner = ""
    for previous, current in zip(reversed(spans[:-1]), reversed(spans[1:])):
        kind = gap_joins(text[previous[1]:current[0]], extra_words=0)
        if kind is None or not text[previous[1]:current[0]].strip():
            break  # two environments back to back are one formula split in two, not a list
        joiner = "or" if "or" in (kind, joiner) else joiner
        parts.append(previous[2])
    return _join(list(reversed(parts)), joiner), spans[-1][1]


def _extract_latex_or_later_number(text: str, numbers_enabled: bool) -> tuple[str, str] | None:
    found = _last_environment(text)
    if found is None:
        return None
    answer, end = found
    states_value = len(answer) <= 200 and _VALUE_RE.match(answer) is not None
    if numbers_enabled and not states_value:
        # "... $d = 90/n$ ... so there are 12 sequences": the prose after a formula that is
        # not itself a value states the result.
        later = _last_number(text[end:])
        if later is not None:
            return later, "last_number"
    return answer, "latex"


# ---------------------------------------------------------------------------------------------
# Phrases


def _extract_answer_tag(text: str) -> tuple[str, str] | None:
    lowered = text.lower()  # the last <answer>...</answer>, found in linear time
    close = lowered.rfind("</answer>")
    if close < 0:
        return None
    open_ = lowered.rfind("<answer>", 0, close)
    if open_ < 0:
        return None
    inner = text[open_ + len("<answer>"):close]
    boxed = extract_boxed(inner)
    return (boxed if boxed is not None else inner), "answer_tag"


def _rest_of_statement(text: str, start: int) -> str:
    """From `start` to the end of the sentence or line, not cutting inside `$...$` or at a
    decimal point. A display environment right after the phrase is taken whole."""
    lead = re.match(r"[\s*:]*", text[start:])
    begin = start + lead.end()
    for left, right in (("$$", "$$"), ("\\[", "\\]")):
        if text.startswith(left, begin):
            close = text.find(right, begin + len(left))
            if close > 0:
                return text[begin:close + len(right)]
    in_math = False
    index = start
    while index < len(text):
        char = text[index]
        if char == "$" and (index == 0 or text[index - 1] != "\\"):
            in_math = not in_math
        elif char == "\n" and not in_math and index >= begin:
            break
        elif char == "." and not in_math:
            following = text[index + 1:index + 2]
            if following == "" or following.isspace():
                break
        index += 1
    return text[start:index]


_COPULA_RE = re.compile(r"\s(?:is|are|was|equals)\s")


def refine_statement(rest: str) -> str:
    """The answer inside the sentence that follows an answer phrase: its box; else what follows
    its last " is " when that holds a formula or a number ("The largest $n$ is 34"); else its
    math environment(s); else the last number of a sentence of prose ("Jane started 3 hours
    ago"); else the sentence itself (a word answer: "Monday")."""
    rest = rest.strip().lstrip("*").strip()
    boxed = extract_boxed(rest)
    if boxed is not None:
        return boxed
    copulas = list(_COPULA_RE.finditer(rest))
    if copulas:
        tail = rest[copulas[-1].end():].strip()
        environment = _last_environment(tail)
        if environment is not None:
            return environment[0]
        if _last_number(tail) is not None:
            return _refine_prose(tail)
    environment = _last_environment(rest)
    if environment is not None:
        return environment[0]
    return _refine_prose(rest)


def _refine_prose(text: str) -> str:
    if len(_WORD_RE.findall(text)) >= 3:
        number = _last_number(text)
        if number is not None:
            return number
    return text


def _extract_after(pattern: re.Pattern, text: str, source: str) -> tuple[str, str] | None:
    matches = list(pattern.finditer(text))
    for match in reversed(matches):
        rest = _rest_of_statement(text, match.end()).strip()
        if rest.strip(" *:"):
            return refine_statement(rest), source
    return None


def _extract_final_answer(text: str) -> tuple[str, str] | None:
    return _extract_after(_FINAL_ANSWER_RE, text, "final_answer")


def _extract_answer_colon(text: str) -> tuple[str, str] | None:
    return _extract_after(_ANSWER_COLON_RE, text, "answer_colon")


def _extract_gsm8k(text: str) -> tuple[str, str] | None:
    return _extract_after(_GSM8K_RE, text, "gsm8k")


# ---------------------------------------------------------------------------------------------
# Unmarked text


_NUMBER_WITH_UNIT_RE = re.compile(r"^[-+]?\$?\d[\d,.]*(?:\s+[A-Za-z]\.?|\s*[A-Za-z]{1,3}\s*(?:\^\s*\d|[²³]))$")
_SHORT_TEXT_CHARS = 80
_SHORT_TEXT_WORDS = 3


def _extract_short_text(text: str) -> tuple[str, str] | None:
    """A whole completion that is one short line and not a sentence with a number in it: the
    answer itself, written without delimiters ("Even", "12:00", "x \\in [-2, 7]")."""
    stripped = text.strip()
    if not stripped or len(stripped) > _SHORT_TEXT_CHARS or "\n" in stripped or "\\boxed" in stripped:
        return None
    bare_words = [word for word in re.findall(r"(?<![\\A-Za-z])[A-Za-z]{2,}", stripped)
                  if word.lower() not in MATH_WORDS]
    if any(char.isdigit() for char in stripped) and bare_words:
        return None  # "so x equals -3": prose, whose number the last-number rule finds
    if len(bare_words) > _SHORT_TEXT_WORDS:
        return None  # a sentence, not an answer
    if _NUMBER_WITH_UNIT_RE.match(stripped):
        return None  # "12 m", "2,000.55m²": the number is the answer, the last-number rule reads it
    return stripped, "short_text"


def _last_number(text: str) -> str | None:
    if any(char.isdigit() for char in text):
        text = text.replace("\\!", "").replace("{,}", ",")
    matches = _NUMBER_RE.findall(text)
    if not matches:
        return None
    return re.sub(r"^-\s", "-", matches[-1].rstrip(","))


def _extract_last_number(text: str) -> tuple[str, str] | None:
    number = _last_number(text)
    return None if number is None else (number, "last_number")


_EXTRACTORS = {
    "answer_tag": _extract_answer_tag,
    "boxed": _extract_boxed,
    "final_answer": _extract_final_answer,
    "answer_colon": _extract_answer_colon,
    "gsm8k": _extract_gsm8k,
    # "latex" is read by _extract_latex_or_later_number, which needs to know the other sources
    "short_text": _extract_short_text,
    "last_number": _extract_last_number,
}


def extract_reference(text: str) -> str:
    """The answer part of a reference string: its box(es), its "final answer is" phrase or its
    math environment; the whole string when it has none of these (a plain answer)."""
    if "\\boxed" not in text and "\\fbox" not in text and "$" not in text and "\\[" not in text \
            and "\\(" not in text and "answer" not in text.lower():
        return text
    if "\\boxed" in text or "\\fbox" in text:
        boxed = extract_boxed(text)
        if boxed is not None:
            return boxed  # possibly empty: an empty box is an unusable reference, not a fallback
    found = extract_answer(text, REFERENCE_SOURCES)
    return found.text if found is not None else text
