"""Tool calls against the real sandbox pool and real worker processes: the call format as text, misbehaving calls
(hang, crash, megabytes of output, network) answered with their status without stalling the batch, per-episode
sessions, and user tools named `package.module:attr`."""
import time
from pathlib import Path

import pytest

from grpo.config import ConfigError, ToolsConfig
from grpo.data.tool_format import CALL_END, ToolCall, find_call, python_call, render_response, split_segments
from grpo.runtime.tools import ToolRunner, cap_output, function_schema, load_function, session_program


def test_find_call_takes_the_block_right_before_the_marker():
    text = "first ```python\nx = 1\n```\nthen\n```python\nprint(x + 1)\n```\n```output"
    assert find_call(text) == ToolCall("python", "print(x + 1)\n")
    assert find_call("no call here \\boxed{3}") is None
    assert find_call("```calc\n1+2\n```\n" + CALL_END) == ToolCall("calc", "1+2\n")
    assert find_call("prose only " + CALL_END) == ToolCall("", "")  # answered with an error, never run


def test_split_segments_marks_tool_answers_and_round_trips():
    demo = python_call("print(2 + 3)") + render_response("5") + "so \\boxed{5}" + "<|eos|>"
    segments = split_segments(demo)
    assert "".join(t for t, _ in segments) == demo
    assert segments == [("```python\nprint(2 + 3)\n```\n```output", True), ("\n5\n```\n", False),
                        ("so \\boxed{5}<|eos|>", True)]
    assert split_segments("plain \\boxed{1}") == [("plain \\boxed{1}", True)]


def test_cap_output_keeps_the_head_and_says_what_is_missing():
    assert cap_output("abc", 5) == "abc"
    assert cap_output("x" * 10, 4) == "xxxx\n...[6 more characters not shown]"


HERE = str(Path(__file__).parent)  # tool_plugins lives here (--import-mode=importlib puts no test dir on sys.path)


@pytest.fixture(scope="module", autouse=True)
def plugins_importable():
    with pytest.MonkeyPatch.context() as patch:
        patch.syspath_prepend(HERE)  # spawned tool workers inherit sys.path
        yield


@pytest.fixture(scope="module")
def runner(plugins_importable):
    r = ToolRunner(ToolsConfig(timeout_s=1.0, max_output_chars=200, max_output_bytes=100_000, workers=2,
                               functions={"reverse": "tool_plugins:reverse", "hang": "tool_plugins:hang",
                                          "boom": "tool_plugins:boom", "huge": "tool_plugins:huge"}))
    yield r
    r.close()


def test_misbehaving_calls_get_their_status_back_and_never_stall_the_batch(runner):
    calls = {
        "fine": ("print(347 * 582)", "ok", "201954"),
        "hang": ("while True:\n    pass", "timeout", "TimeoutError: the call ran over 1 s"),
        "sleep": ("import time\ntime.sleep(600)", "timeout", "TimeoutError"),
        "crash": ("import os\nos._exit(3)", "error", "Error: the program failed"),
        "segfault": ("import ctypes\nctypes.string_at(0)", "error", ""),
        "raise": ("1 / 0", "error", "ZeroDivisionError: division by zero"),
        "megabytes": ("print('x' * 10_000_000)", "output_limit", "[the output was cut"),
        "network": ("import socket\nsocket.create_connection(('1.1.1.1', 80), timeout=2)", "error", "OSError"),
        "fine2": ("print('still here')", "ok", "still here"),
    }
    t0 = time.perf_counter()
    results = runner.run([ToolCall("python", code) for code, _, _ in calls.values()], [[]] * len(calls))
    wall = time.perf_counter() - t0
    for (name, (_, status, text)), r in zip(calls.items(), results):
        assert r.status == status, (name, r)
        assert text in r.output, (name, r.output)
        assert len(r.output) <= 200 + 300, name  # capped: the head, a note, the status line
    # two workers, two 1 s timeouts in parallel, the rest in milliseconds: nothing waited for the hung calls
    assert wall < 6.0


def test_a_session_sees_earlier_definitions_and_only_its_own_output(runner):
    earlier = ["import math\nprint('hidden')\ndef f(n):\n    return n * 2", "y = 5"]
    [r] = runner.run([ToolCall("python", "print(f(21), y, math.pi > 3)")], [earlier])
    assert (r.status, r.output) == ("ok", "42 5 True")
    fresh = ToolRunner(ToolsConfig(session="none", timeout_s=2.0))
    try:
        [r] = fresh.run([ToolCall("python", "print(f(21))")], [earlier])
        assert r.status == "error" and "NameError" in r.output
    finally:
        fresh.close()


def test_session_program_runs_a_single_cell_as_is():
    assert session_program(["print(1)"]) == "print(1)"
    assert "earlier cell" in session_program(["x = 1", "print(x)"])


def test_user_tools_from_module_attr_run_in_workers_with_a_hard_timeout(runner):
    t0 = time.perf_counter()
    results = runner.run([ToolCall("reverse", "abc\n"), ToolCall("hang", "x"), ToolCall("boom", "7"),
                          ToolCall("huge", ""), ToolCall("python", "print(1)"), ToolCall("nope", "1")],
                         [[]] * 6)
    assert time.perf_counter() - t0 < 20  # the hung tool is killed at 1 s (worker start-up is the rest)
    by = [(r.status, r.output[:60]) for r in results]
    assert by[0] == ("ok", "cba")
    assert by[1][0] == "timeout"
    assert by[2] == ("error", "ValueError: bad input: 7")
    assert by[3][0] == "ok" and len(results[3].output) < 300
    assert by[4] == ("ok", "1")
    assert by[5][0] == "unknown_tool" and "reverse" in results[5].output


def test_user_tool_schema_from_signature_and_docstring():
    import tool_plugins

    schema = function_schema("reverse", tool_plugins.reverse)
    assert schema == {"name": "reverse", "description": "Reverse the text of the block.",
                      "parameters": {"type": "object", "properties": {"text": {"type": "string"}},
                                     "required": ["text"]}}


def test_bad_user_tool_specs_are_config_errors_naming_the_key():
    with pytest.raises(ConfigError, match="tools.functions.calc: cannot load 'tool_plugins:nothing'"):
        load_function("tool_plugins:nothing", "tools.functions.calc")
    with pytest.raises(ConfigError, match="expected 'package.module:attr'"):
        ToolRunner(ToolsConfig(functions={"calc": "no_colon"}))
