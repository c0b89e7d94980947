"""The `code_block` tool-call format, as text: where a call ends, what the call is, how its answer reads.

Qwen2.5-Math's tool-integrated format: the model writes a fenced code block, then opens an output block itself;
generation stops at that opening (`CALL_END`), the tool runs the block and its answer is appended as the output
block's body and closing fence; the model then goes on.

    ```python                      <- model tokens
    print(347 * 582)
    ```
    ```output                      <- model tokens (the call's end marker: generation stops here)
    201954                         <- tool tokens: "\\n201954\\n```\\n" (in context, never in the loss)
    ```
    \\boxed{201954}                <- model tokens

The fence's language names the tool: `python` is the built-in sandboxed interpreter; any other name must be a
user tool from `tools.functions`, called with the block's body. Pure text functions only (no tokenizer, no
processes): the rollout (grpo.runtime.tool_rollout), the SFT stage and the task generators share them, so a
demonstration's tool segment is byte for byte what a rollout would append.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

CALL_END = "```output"
RESPONSE_END = "\n```\n"
# A fenced block: ```lang<newline>body```; the body is taken lazily so the block ends at the first closing fence.
_BLOCK = re.compile(r"```([A-Za-z_][\w.-]*)[ \t]*\n(.*?)```", re.DOTALL)


@dataclass(frozen=True)
class ToolCall:
    tool: str  # the fence's language: "python" or a user tool's name
    body: str  # the code (python) or the argument text (user tools)


def find_call(turn_text: str, call_end: str = CALL_END) -> ToolCall | None:
    """The call a turn ends with: the last fenced block right before the first `call_end`, or None when the turn
    has none. A `call_end` with no block just before it is a call of tool "" (answered with an error)."""
    end = turn_text.find(call_end)
    if end < 0:
        return None
    before = turn_text[:end]
    last = None
    for match in _BLOCK.finditer(before):
        last = match
    if last is None or before[last.end():].strip():
        return ToolCall("", "")
    return ToolCall(last.group(1), last.group(2))


def render_response(output: str) -> str:
    """The tool's answer as it follows CALL_END: the output block's body and its closing fence."""
    return "\n" + output.rstrip("\n") + RESPONSE_END


def split_segments(text: str) -> list[tuple[str, bool]]:
    """A transcript (e.g. an SFT demonstration) cut into (text, written_by_model) segments: every tool answer
    (from just after a CALL_END to the end of its closing fence) is a segment of its own, marked False.
    Joining the texts gives `text` back."""
    segments: list[tuple[str, bool]] = []
    start = 0
    while True:
        marker = text.find(CALL_END, start)
        if marker < 0:
            break
        model_end = marker + len(CALL_END)
        close = text.find(RESPONSE_END, model_end)
        tool_end = len(text) if close < 0 else close + len(RESPONSE_END)
        segments.append((text[start:model_end], True))
        segments.append((text[model_end:tool_end], False))
        start = tool_end
    if start < len(text) or not segments:
        segments.append((text[start:], True))
    return [s for s in segments if s[0]]


def python_call(code: str) -> str:
    """The model's side of a python call, CALL_END included: what demonstrations write."""
    return f"```python\n{code.rstrip()}\n```\n{CALL_END}"
