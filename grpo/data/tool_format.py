"""Tool-call formats, as text: where a call ends, what the calls are, how their answers read (`tools.format`).

A format is a small object that the rollout (grpo.runtime.tool_rollout), the SFT stage and the task generators
share, so a demonstration's tool segment is byte for byte what a rollout would append:

    stop                    the strings generation stops at (a call's end marker, kept in the output)
    tools                   tool definitions for the chat template; None: prompts render as without tools
    find_calls(turn_text)   the calls a model turn ends with; [] for a final answer
    response(turns)         the text that follows a calling turn (its answers): tool tokens, never in the loss
    demo_segments(answer)   a rendered demonstration cut into (text, written_by_model) segments

A turn is `(model_text, outputs)`: what the model wrote, then the outputs of the calls it ended with.

`code_block` (CodeBlockFormat), Qwen2.5-Math's tool-integrated format: the model writes a fenced code block, then
opens an output block itself; generation stops at that opening (`CALL_END`), the tool runs the block and its answer
is appended as the output block's body and closing fence; the model then goes on.

    ```python                      <- model tokens
    print(347 * 582)
    ```
    ```output                      <- model tokens (the call's end marker: generation stops here)
    201954                         <- tool tokens: "\\n201954\\n```\\n" (in context, never in the loss)
    ```
    \\boxed{201954}                <- model tokens

The fence's language names the tool: `python` is the built-in sandboxed interpreter; any other name must be a
user tool from `tools.functions`, called with the block's body.

`tool_call` (ToolCallFormat), for chat models that support tools (the Hermes / Qwen2.5 convention): the prompt is
rendered by the tokenizer's chat template with the tool definitions (`tools=[...]`); the model writes JSON calls
in `<tool_call>` tags; generation stops at `</tool_call>`; the answer is what the chat template renders for the
`tool` messages and the next assistant generation prompt (for Qwen2.5: `<|im_end|>\\n<|im_start|>user\\n
<tool_response>\\n201954\\n</tool_response><|im_end|>\\n<|im_start|>assistant\\n`), end of the model's turn
included, all of it tool tokens.

    <tool_call>
    {"name": "python", "arguments": {"code": "print(347 * 582)"}}
    </tool_call>

Pure text functions (the tool_call format renders with the tokenizer's chat template; no processes).
"""
from __future__ import annotations

import json
import re
import secrets
from dataclasses import dataclass
from typing import Any, Sequence

CALL_END = "```output"
RESPONSE_END = "\n```\n"
# A fenced block: ```lang<newline>body```; the body is taken lazily so the block ends at the first closing fence.
_BLOCK = re.compile(r"```([A-Za-z_][\w.-]*)[ \t]*\n(.*?)```", re.DOTALL)

Turn = tuple[str, list[str]]  # (what the model wrote, the outputs of the calls it ended with)


@dataclass(frozen=True)
class ToolCall:
    tool: str  # "python" or a user tool's name ("" when the call names none)
    body: str  # the code (python), the argument text (code_block user tools), the arguments as JSON (tool_call)
    arguments: dict | None = None  # tool_call: the JSON arguments (user tools are called with them as keywords)
    error: tuple[str, str] | None = None  # (status, message): a call that cannot run, answered with the message


# ---------------------------------------------------------------------------------------------
# code_block


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


class CodeBlockFormat:
    """```lang ... ``` then ```output: one call per turn; the prompt is rendered as without tools."""

    name = "code_block"
    stop = (CALL_END,)
    tools = None

    def __init__(self, call_end: str = CALL_END):
        self.call_end = call_end  # tests may pick a marker an untrained model writes often
        self.stop = (call_end,)

    def find_calls(self, turn_text: str) -> list[ToolCall]:
        call = find_call(turn_text, self.call_end)
        return [] if call is None else [call]

    def response(self, turns: Sequence[Turn]) -> str:
        return "".join(render_response(output) for output in turns[-1][1])

    def demo_segments(self, answer: str) -> list[tuple[str, bool]]:
        return split_segments(answer)


# ---------------------------------------------------------------------------------------------
# tool_call

CALL_OPEN, CALL_CLOSE = "<tool_call>", "</tool_call>"
# How a demonstration writes a tool's answer (SFT replaces it by what the chat template renders for the tool message)
RESPONSE_OPEN, RESPONSE_CLOSE = "<tool_response>", "</tool_response>"
_RESPONSE = re.compile(r"\s*<tool_response>\n?(.*?)\n?</tool_response>", re.DOTALL)
# The stand-in question of the conversation a tool message is rendered in (see ToolCallFormat.response)
STAND_IN_QUESTION = "?"

PYTHON_TOOL = {"type": "function", "function": {
    "name": "python",
    "description": "Run Python 3 code in a sandbox (no network) and return what it prints; on failure, the error.",
    "parameters": {"type": "object",
                   "properties": {"code": {"type": "string", "description": "the program; print() what you need"}},
                   "required": ["code"]}}}

_JSON_TYPES: dict[str, Any] = {"string": str, "integer": int, "number": (int, float), "boolean": bool,
                               "array": list, "object": dict}


def tool_call_text(name: str, arguments: dict) -> str:
    """A call as the model writes it (Hermes / Qwen2.5): what demonstrations write."""
    return f"{CALL_OPEN}\n{json.dumps({'name': name, 'arguments': arguments}, ensure_ascii=False)}\n{CALL_CLOSE}"


def tool_response_text(output: str) -> str:
    """A tool's answer as a demonstration writes it, right after the call."""
    return f"{RESPONSE_OPEN}\n{output}\n{RESPONSE_CLOSE}"


def _function(tool: dict) -> dict:
    return tool.get("function", tool)


def _check_arguments(name: str, arguments: dict, schema: dict) -> str | None:
    """What is wrong with `arguments` for a tool whose JSON-schema parameters are `schema`, or None."""
    props = schema.get("properties", {})
    for key in schema.get("required", []):
        if key not in arguments:
            return f"Error: {name}: missing argument {key!r}"
    for key, value in arguments.items():
        if key not in props:
            return f"Error: {name}: unexpected argument {key!r} (arguments: {', '.join(props) or 'none'})"
        kind = props[key].get("type")
        want = _JSON_TYPES.get(kind)
        if want is not None and (not isinstance(value, want) or (isinstance(value, bool) and kind != "boolean")):
            return f"Error: {name}: argument {key!r} must be of type {kind}"
    return None


def parse_tool_call(body: str, tools: dict[str, dict]) -> ToolCall:
    """One call's JSON (the text between the tags) -> a ToolCall; anything wrong -> a ToolCall with an error that
    the model reads as the tool's answer. `tools`: name -> JSON-schema parameters. Never raises: model output is
    untrusted data, parsed by json.loads, never evaluated."""
    def bad(message: str, tool: str = "", status: str = "bad_call") -> ToolCall:
        return ToolCall(tool, body, None, (status, message))

    try:
        obj = json.loads(body)
    except (ValueError, RecursionError) as exc:
        return bad(f"Error: the tool call is not valid JSON ({str(exc)[:120]})")
    if not isinstance(obj, dict) or not isinstance(obj.get("name"), str):
        return bad('Error: a tool call is a JSON object {"name": <tool>, "arguments": {...}}')
    name, arguments = obj["name"], obj.get("arguments", {})
    if isinstance(arguments, str):  # OpenAI-style arguments: a JSON string of the object
        try:
            arguments = json.loads(arguments)
        except (ValueError, RecursionError):
            pass
    if name not in tools:
        return bad(f"Error: unknown tool {name[:80]!r} (tools: {', '.join(tools)})", name, "unknown_tool")
    if not isinstance(arguments, dict):
        return bad(f"Error: {name}: \"arguments\" must be a JSON object", name)
    problem = _check_arguments(name, arguments, tools[name])
    if problem is not None:
        return bad(problem, name)
    text = arguments["code"] if name == "python" else json.dumps(arguments, ensure_ascii=False)
    return ToolCall(name, text, arguments)


def find_tool_calls(turn_text: str, tools: dict[str, dict]) -> list[ToolCall]:
    """Every complete `<tool_call>...</tool_call>` of a turn, in order (text after the last one is ignored: a
    rollout's turn ends there). A `</tool_call>` with no `<tool_call>` before it is answered with an error."""
    calls, start = [], 0
    while (end := turn_text.find(CALL_CLOSE, start)) >= 0:
        opening = turn_text.rfind(CALL_OPEN, start, end)
        if opening < 0:
            calls.append(ToolCall("", "", None, ("bad_call", f"Error: {CALL_CLOSE} without {CALL_OPEN} before it")))
        else:
            calls.append(parse_tool_call(turn_text[opening + len(CALL_OPEN):end].strip(), tools))
        start = end + len(CALL_CLOSE)
    return calls


class ToolCallFormat:
    """JSON calls in `<tool_call>` tags, prompts and tool answers rendered by the tokenizer's chat template.

    The answer to a calling turn is computed as a text delta: the episode's conversation (the run's system prompt
    and tool definitions, a stand-in question, then the model's turns as assistant messages and the outputs as
    `tool` messages) is rendered with the generation prompt, the last assistant message carrying a random marker
    at its end; everything after the marker is the answer. So it is exactly what the template puts between the
    model's text and its next turn, whatever the template does with end-of-turn tokens; the rollout tokenizes it
    once and appends the ids. Several calls in one turn are all answered (one `tool` message each, in order);
    generation stops at the first `</tool_call>`, so a rollout's turn holds one call, and a model that wants
    several writes the next after the first's answer."""

    name = "tool_call"
    stop = (CALL_CLOSE,)

    def __init__(self, tokenizer, tools: Sequence[dict], system_prompt: str | None = None):
        self.tokenizer = tokenizer
        self.tools = [dict(t) for t in tools]
        self.schemas = {_function(t)["name"]: _function(t).get("parameters", {}) for t in self.tools}
        self.head = ([{"role": "system", "content": system_prompt}] if system_prompt else []) + \
            [{"role": "user", "content": STAND_IN_QUESTION}]
        self._mark = f"<<turn-end-{secrets.token_hex(8)}>>"  # no model can write it: it is drawn here

    def render(self, messages: list[dict], add_generation_prompt: bool) -> str:
        return self.tokenizer.apply_chat_template(messages, tools=self.tools, tokenize=False,
                                                  add_generation_prompt=add_generation_prompt)

    def find_calls(self, turn_text: str) -> list[ToolCall]:
        return find_tool_calls(turn_text, self.schemas)

    def response(self, turns: Sequence[Turn]) -> str:
        messages = list(self.head)
        for i, (text, outputs) in enumerate(turns):
            messages.append({"role": "assistant", "content": text + (self._mark if i == len(turns) - 1 else "")})
            # each answer names the tool its call asked for (Hermes-style templates require `name`; others ignore it)
            names = [c.tool for c in self.find_calls(text)]
            messages += [{"role": "tool", "name": names[j] if j < len(names) else "", "content": output}
                         for j, output in enumerate(outputs)]
        full = self.render(messages, add_generation_prompt=True)
        cut = full.rfind(self._mark)
        if cut < 0:  # the template dropped this text (say, a rule on what it contains): render the turn alone
            return self.response([("", list(turns[-1][1]))]) if turns[-1][0] or len(turns) > 1 else ""
        return full[cut + len(self._mark):]

    def demo_segments(self, answer: str) -> list[tuple[str, bool]]:
        """A demonstration (the rendered answer: the assistant's text, end of turn included) whose tool answers are
        written `<tool_response>\\noutput\\n</tool_response>` right after the calls: each run of them becomes the
        segment a rollout appends (`response`), marked False; the whitespace between a call and its answer is
        dropped, as a rollout's turn ends at the call."""
        segments: list[tuple[str, bool]] = []
        turns: list[Turn] = []
        start = 0
        for run in re.finditer(r"(?:\s*<tool_response>.*?</tool_response>)+", answer, re.DOTALL):
            text = answer[start:run.start()]
            turns.append((text, [m.group(1) for m in _RESPONSE.finditer(run.group(0))]))
            segments += [(text, True), (self.response(turns), False)]
            start = run.end()
        segments.append((answer[start:], True))
        return [s for s in segments if s[0]]

    def check(self) -> None:
        """Raises ValueError saying why this tokenizer cannot run the format: no chat template, a template that
        leaves the tool definitions out of the prompt or cannot render a tool message."""
        if getattr(self.tokenizer, "chat_template", None) is None:
            raise ValueError("the tokenizer has no chat template")
        try:
            prompt = self.render(self.head, add_generation_prompt=True)
            turn = tool_call_text("python", {"code": "print(1)"})
            answer = self.response([(turn, ["4781"])])
            second = self.response([(turn, ["4781"]), (turn, ["5923"])])
            conversation = self.render(self.head + [{"role": "assistant", "content": turn + self._mark},
                                                    {"role": "tool", "name": "python", "content": "4781"}],
                                      add_generation_prompt=True)
        except Exception as exc:  # jinja errors, raise_exception() in the template, ...
            raise ValueError(f"rendering failed: {type(exc).__name__}: {str(exc)[:200]}") from None
        missing = [name for name in self.schemas if name not in prompt]
        if missing:
            raise ValueError(f"the prompt it renders leaves out the tool definitions ({', '.join(missing)})")
        if not conversation.startswith(prompt + turn + self._mark):
            raise ValueError("an assistant message after the prompt does not render as the prompt followed by "
                             "the message's text")
        if "4781" not in answer or "5923" not in second:
            raise ValueError(f"a tool message's content is not in what it renders ({answer!r})")
