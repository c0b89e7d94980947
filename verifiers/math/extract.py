"""Find the final answer in a completion.

Sources, in the order they are tried (the first source that finds something wins):

- `answer_tag`:   the last `<answer>...</answer>` (a `\\boxed{}` inside it is preferred)
- `boxed`:        the last `\\boxed{...}` / `\\fbox{...}` (adjacent boxes joined, see below)
- `final_answer`: "final answer is X" / "the answer is X"
- `answer_colon`: "Answer: X"
- `gsm8k`:        "#### X"
- `last_number`:  the last number in the text

A completion that boxes several candidates side by side (`\\boxed{3} or \\boxed{4}`) is
extracted as "3 or 4", which the comparison then refuses to credit against a single reference.
When the completion has a `</think>`, only the text after the last one is searched.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Iterable


ALL_SOURCES = ("answer_tag", "boxed", "final_answer", "answer_colon", "gsm8k", "last_number")
# Named strictness levels (the `extraction` option); a list of source names is accepted too.
EXTRACTION_MODES = {
    "boxed": ("boxed",),
    "strict": ("answer_tag", "boxed", "final_answer", "answer_colon", "gsm8k"),
    "any": ALL_SOURCES,
}

_BOX_RE = re.compile(r"\\(?:boxed|fbox)\s*(?=[{ ])")
_FINAL_ANSWER_RE = re.compile(r"(?:final\s+answer|the\s+answer)\s*(?:is|:|=)?\s*:?", re.IGNORECASE)
_ANSWER_COLON_RE = re.compile(r"(?<![a-zA-Z])answer\s*:", re.IGNORECASE)
_GSM8K_RE = re.compile(r"####\s*")
_BRACE_OR_ESCAPE_RE = re.compile(r"\\.|[{}]", re.DOTALL)  # `\{` and `\}` are escapes, not braces
_NUMBER_RE = re.compile(r"-?\d[\d,]*(?:\.\d+)?(?:\s*/\s*\d+)?|-?\.\d+")
# What may sit between two boxes that belong to one answer.
_BOX_GAP_RE = re.compile(r"^[\s,;$]*(?:(?:\\text\{\s*)?(or|and)(?:\s*\})?)?[\s,;$]*$", re.IGNORECASE)


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
    for source in sources:
        text = _EXTRACTORS[source](completion)
        if text is not None and text.strip():
            return Extraction(text.strip(), source)
    return None


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


def extract_boxed(text: str) -> str | None:
    spans = _boxed_spans(text)
    if not spans:
        return None
    parts = [spans[-1][2]]
    joiner = ", "
    # Walk back over boxes separated only by commas / "or" / "and": they are one answer.
    for previous, current in zip(reversed(spans[:-1]), reversed(spans[1:])):
        gap = _BOX_GAP_RE.match(text[previous[1]:current[0]])
        if gap is None:
            break
        if gap.group(1) and gap.group(1).lower() == "or":
            joiner = " or "
        parts.append(previous[2])
    # The same answer boxed twice is one answer.
    parts = list(dict.fromkeys(part.strip() for part in reversed(parts)))
    answer = joiner.join(parts)
    inner = _boxed_spans(answer)
    if len(inner) == 1 and inner[0][0] == 0 and inner[0][1] == len(answer.rstrip()):
        return inner[0][2]  # \boxed{\boxed{20}}
    return answer


def _extract_answer_tag(text: str) -> str | None:
    lowered = text.lower()  # the last <answer>...</answer>, found in linear time
    close = lowered.rfind("</answer>")
    if close < 0:
        return None
    open_ = lowered.rfind("<answer>", 0, close)
    if open_ < 0:
        return None
    inner = text[open_ + len("<answer>"):close]
    boxed = extract_boxed(inner)
    return boxed if boxed is not None else inner


def _rest_of_statement(text: str, start: int) -> str:
    """From `start` to the end of the sentence or line, not cutting inside `$...$` or at a
    decimal point."""
    in_math = False
    index = start
    while index < len(text):
        char = text[index]
        if char == "$":
            in_math = not in_math
        elif char == "\n" and not in_math:
            break
        elif char == "." and not in_math:
            following = text[index + 1:index + 2]
            if following == "" or following.isspace():
                break
        index += 1
    return text[start:index]


def _extract_after(pattern: re.Pattern, text: str) -> str | None:
    matches = list(pattern.finditer(text))
    for match in reversed(matches):
        rest = _rest_of_statement(text, match.end()).strip()
        if rest:
            boxed = extract_boxed(rest)
            return boxed if boxed is not None else rest
    return None


def _extract_final_answer(text: str) -> str | None:
    return _extract_after(_FINAL_ANSWER_RE, text)


def _extract_answer_colon(text: str) -> str | None:
    return _extract_after(_ANSWER_COLON_RE, text)


def _extract_gsm8k(text: str) -> str | None:
    return _extract_after(_GSM8K_RE, text)


def _extract_last_number(text: str) -> str | None:
    matches = _NUMBER_RE.findall(text)
    if not matches:
        return None
    return matches[-1].rstrip(",")


_EXTRACTORS = {
    "answer_tag": _extract_answer_tag,
    "boxed": extract_boxed,
    "final_answer": _extract_final_answer,
    "answer_colon": _extract_answer_colon,
    "gsm8k": _extract_gsm8k,
    "last_number": _extract_last_number,
}
