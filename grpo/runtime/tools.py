"""Run the tool calls of one turn, all episodes at once, and say how each went.

- `python`: the sandbox pool (bubblewrap, rlimits, a hard wall clock; sandboxes/). The calls of a turn are
  submitted together and the pool's workers take them in parallel; a call that hangs is killed at
  `tools.timeout_s`: it holds one worker at most that long while the others run the rest of the batch.
- user tools (`tools.functions`: name -> `package.module:attr`): plain Python functions, in worker processes with
  a hard per-call timeout (verifiers' ScoringPool: a stuck worker is killed and replaced). code_block calls them
  with the block's body (one string); tool_call with the call's JSON arguments as keywords (their signature and
  docstring are the tool's definition: `function_schema`). They run outside the sandbox: they are the user's code.
- a call the format could not parse (tool_call: malformed JSON, an unknown tool, wrong arguments) never runs: its
  error message is the answer.

Sessions (`tools.session: replay`): a python call sees the definitions of the episode's earlier calls because
the earlier cells that ran without error are run again first, in the same program, with their output hidden;
only the new cell's output is shown. Honest costs of this simple scheme: earlier cells' time counts again in
every later call (and against its timeout), and a cell with side effects or randomness runs once per later
call. `none`: every call starts from a fresh interpreter.

Every outcome becomes text for the model (`ToolResult.output`, capped at `tools.max_output_chars`) and a
status for the metrics: ok, error, timeout, memory, output_limit, sandbox_error, unknown_tool, bad_call.
"""
from __future__ import annotations

import importlib
import inspect
import math
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, Sequence

from grpo.config import ConfigError, ToolsConfig
from grpo.data.tool_format import PYTHON_TOOL, CodeBlockFormat, ToolCall, ToolCallFormat

# Runs the episode's earlier cells silently in one namespace, then the new cell in it. (No import beyond io and
# sys, which the interpreter has loaded anyway: each import costs milliseconds in a fresh sandboxed child.)
_SESSION_PROGRAM = '''
import io as _io, sys as _sys
def _replay(cells):
    namespace, out, err = {{"__name__": "__main__"}}, _sys.stdout, _sys.stderr
    for cell in cells:
        _sys.stdout = _sys.stderr = _io.StringIO()
        try:
            exec(compile(cell, "<earlier cell>", "exec"), namespace)
        except BaseException:
            pass
        finally:
            _sys.stdout, _sys.stderr = out, err
    return namespace
exec(compile({new!r}, "<cell>", "exec"), _replay({earlier!r}))
'''

STATUS_TEXT = {
    "timeout": "TimeoutError: the call ran over {timeout:g} s and was stopped",
    "memory": "MemoryError: the call ran out of memory",
    "output_limit": "[the output was cut: over the output limit]",
    "sandbox_error": "[sandbox error: the call could not run]",
}


@dataclass
class ToolResult:
    status: str  # ok | error | timeout | memory | output_limit | sandbox_error | unknown_tool | bad_call
    output: str  # what the model reads (capped)
    wall_s: float


def cap_output(text: str, max_chars: int) -> str:
    """At most `max_chars` characters: the head, and a note of what was left out."""
    if len(text) <= max_chars:
        return text
    return text[:max_chars] + f"\n...[{len(text) - max_chars} more characters not shown]"


def _last_error_line(stderr: str) -> str:
    lines = [line for line in stderr.strip().splitlines() if line.strip()]
    return lines[-1].strip() if lines else ""


def python_result(status: str, stdout: str, stderr: str, wall_s: float, cfg: ToolsConfig) -> ToolResult:
    """A sandbox result as the model sees it: stdout, then the error's last line or the status in words."""
    # The output is capped first, so the status line after it is always there to read.
    parts = [cap_output(stdout.rstrip("\n"), cfg.max_output_chars)] if stdout.strip() else []
    if status == "error":
        parts.append(cap_output(_last_error_line(stderr) or "Error: the program failed", 200))
    elif status in STATUS_TEXT:
        parts.append(STATUS_TEXT[status].format(timeout=cfg.timeout_s))
    return ToolResult(status, "\n".join(parts), wall_s)


def session_program(cells: Sequence[str]) -> str:
    """The program a python call runs: the new cell (the last) alone, or after the earlier ones."""
    if len(cells) == 1:
        return cells[0]
    return _SESSION_PROGRAM.format(new=cells[-1], earlier=list(cells[:-1]))


def load_function(spec: str, key: str = "tools.functions") -> Callable[..., Any]:
    """`package.module:attr` -> the callable; a ConfigError naming `key` when it cannot be loaded."""
    module_name, _, attr_path = spec.partition(":")
    if not module_name or not attr_path:
        raise ConfigError(f"{key}: {spec!r}: expected 'package.module:attr'")
    try:
        obj: Any = importlib.import_module(module_name)
        for part in attr_path.split("."):
            obj = getattr(obj, part)
    except (ImportError, AttributeError) as exc:
        raise ConfigError(f"{key}: cannot load {spec!r}: {exc}") from None
    if not callable(obj):
        raise ConfigError(f"{key}: {spec!r} is not callable")
    return obj


def function_schema(name: str, fn: Callable[..., Any]) -> dict:
    """A JSON-schema description of a user tool from its signature and docstring (OpenAI function style)."""
    kinds = {str: "string", int: "integer", float: "number", bool: "boolean", list: "array", dict: "object"}
    by_name = {t.__name__: kind for t, kind in kinds.items()}  # annotations as strings (from __future__ import)
    props, required = {}, []
    for pname, p in inspect.signature(fn).parameters.items():
        if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            continue
        kind = by_name.get(p.annotation) if isinstance(p.annotation, str) else kinds.get(p.annotation)
        props[pname] = {"type": kind} if kind else {}  # unannotated, or a type JSON has no name for: any value
        if p.default is p.empty:
            required.append(pname)
    return {"name": name, "description": inspect.getdoc(fn) or "",
            "parameters": {"type": "object", "properties": props, "required": required}}


def tool_definitions(cfg: ToolsConfig) -> list[dict]:
    """The tools as the chat template gets them (tool_call format): python, then each user tool's schema."""
    return [PYTHON_TOOL] + [{"type": "function", "function": function_schema(name, load_function(spec, f"tools.functions.{name}"))}
                            for name, spec in cfg.functions.items()]


def make_format(cfg: ToolsConfig, tokenizer=None, system_prompt: str | None = None):
    """The call format of `tools.format` (grpo.data.tool_format). tool_call checks the tokenizer's chat template
    first: a ConfigError naming tools.format when it cannot render the tools and tool messages."""
    if cfg.format == "code_block":
        return CodeBlockFormat()
    fmt = ToolCallFormat(tokenizer, tool_definitions(cfg), system_prompt)
    try:
        fmt.check()
    except ValueError as exc:
        raise ConfigError(f"tools.format: tool_call needs a tokenizer whose chat template renders tools and tool "
                          f"messages: {exc}") from None
    return fmt


class _FunctionTool:
    """A user function behind the verifier-pool protocol, so ScoringPool can run it with a hard timeout: the
    "completion" is the call's body, `example["arguments"]` its keyword arguments (tool_call format) when not
    None; the answer travels in Score.info."""

    def __init__(self, spec: str):
        self.fn = load_function(spec)
        self.name = spec

    def score(self, completion: str, example: dict):
        from verifiers.base import Score

        arguments = example.get("arguments")
        return Score(0.0, {"output": str(self.fn(completion) if arguments is None else self.fn(**arguments))})


class _FunctionToolRecipe:
    def __init__(self, spec: str):
        self.spec = spec

    def __call__(self) -> _FunctionTool:
        return _FunctionTool(self.spec)


class ToolRunner:
    """Runs a turn's calls: `run(calls, sessions)` where sessions[i] is the list of earlier successful python
    cells of call i's episode. Pools start on first use and live until `close`."""

    def __init__(self, cfg: ToolsConfig):
        self.cfg = cfg
        for name, spec in cfg.functions.items():
            load_function(spec, f"tools.functions.{name}")  # fail at start, in this process, with the key
        self._sandbox = None
        self._user_pools: dict[str, Any] = {}

    def _limits(self):
        from sandboxes import Limits

        return Limits(wall_s=self.cfg.timeout_s, cpu_s=max(1, math.ceil(self.cfg.timeout_s)),
                      memory_mb=self.cfg.memory_mb, max_output_bytes=self.cfg.max_output_bytes)

    def _sandbox_pool(self):
        if self._sandbox is None:
            from sandboxes import SandboxPool

            self._sandbox = SandboxPool(workers=self.cfg.workers, limits=self._limits())
        return self._sandbox

    def _user_pool(self, name: str):
        if name not in self._user_pools:
            from verifiers.pool import ScoringPool

            self._user_pools[name] = ScoringPool(_FunctionToolRecipe(self.cfg.functions[name]),
                                                 workers=self.cfg.workers, timeout_s=self.cfg.timeout_s,
                                                 name=f"tools.functions.{name}")
        return self._user_pools[name]

    def run(self, calls: Sequence[ToolCall], sessions: Sequence[Sequence[str]]) -> list[ToolResult]:
        results: list[ToolResult | None] = [None] * len(calls)
        futures = {}
        by_tool: dict[str, list[int]] = {}
        for i, call in enumerate(calls):
            if call.error is not None:
                results[i] = ToolResult(call.error[0], call.error[1], 0.0)
            elif call.tool == "python":
                cells = (list(sessions[i]) if self.cfg.session == "replay" else []) + [call.body]
                futures[i] = (time.perf_counter(), self._sandbox_pool().submit(session_program(cells)))
            elif call.tool in self.cfg.functions:
                by_tool.setdefault(call.tool, []).append(i)
            else:
                known = ", ".join(["python", *self.cfg.functions])
                what = f"unknown tool {call.tool!r}" if call.tool else "no code block before ```output"
                results[i] = ToolResult("unknown_tool", f"Error: {what} (tools: {known})", 0.0)
        # User tools run in their worker processes while the sandbox pool works on the python calls.
        threads = [threading.Thread(target=self._run_user_tool, args=(name, idx, calls, results))
                   for name, idx in by_tool.items()]
        for t in threads:
            t.start()
        for i, (_, future) in futures.items():
            r = future.result()
            results[i] = python_result(r.status, r.stdout, r.stderr, r.wall_s, self.cfg)
        for t in threads:
            t.join()
        return [r if r is not None else ToolResult("sandbox_error", "[the call was lost]", 0.0) for r in results]

    def _run_user_tool(self, name: str, idx: list[int], calls: Sequence[ToolCall],
                       results: list[ToolResult | None]) -> None:
        t0 = time.perf_counter()
        scores = self._user_pool(name).score_batch([calls[i].body for i in idx],
                                                   [{"arguments": calls[i].arguments} for i in idx])
        wall = (time.perf_counter() - t0) / max(len(idx), 1)
        for i, s in zip(idx, scores):
            error = s.info.get("error")
            if error is None:
                results[i] = ToolResult("ok", cap_output(str(s.info.get("output", "")), self.cfg.max_output_chars), wall)
            elif str(error).startswith("timeout"):
                results[i] = ToolResult("timeout", STATUS_TEXT["timeout"].format(timeout=self.cfg.timeout_s), wall)
            else:
                results[i] = ToolResult("error", cap_output(str(error), self.cfg.max_output_chars), wall)

    def close(self) -> None:
        if self._sandbox is not None:
            self._sandbox.close()
            self._sandbox = None
        for pool in self._user_pools.values():
            pool.close()
        self._user_pools.clear()
