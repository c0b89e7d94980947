"""Code verifier: the three test formats, reward modes, limits, and tricks that must not pass."""
import json
import re

import pytest

import verifiers
from verifiers.code import HARNESS_FUNCTIONS, CodeVerifier, extract_code, normalize_output, output_digest


@pytest.fixture(scope="module")
def sandbox_works():
    sandboxes = pytest.importorskip("sandboxes")
    result = sandboxes.run_python("print(1)")
    if result.status != "ok":
        pytest.skip(f"sandbox unavailable on this host: {result.status} {result.detail}")


@pytest.fixture
def verifier(sandbox_works):
    return CodeVerifier(case_timeout_s=2.0, solution_timeout_s=10.0)


@pytest.fixture
def fraction(sandbox_works):
    return CodeVerifier("fraction", case_timeout_s=2.0, solution_timeout_s=10.0)


def fenced(code):
    return f"Here is my solution.\n```python\n{code}\n```\nDone."


ADD_STDIN = {"tests": {"inputs": ["1 2\n", "3 4\n", "10 -5\n"], "outputs": ["3\n", "7\n", "5\n"]}}
ADD_CALL = {"tests": {"fn_name": "add", "inputs": [[1, 2], [3, 4], [10, -5]], "outputs": [3, 7, 5]}}
ADD_ASSERT = {"test": "assert add(1, 2) == 3\nassert add(3, 4) == 7\nassert add(10, -5) == 5"}
ADD_ASSERT_CASES = {"test": ["assert add(1, 2) == 3", "assert add(3, 4) == 7", "assert add(10, -5) == 5"]}
ADD = "def add(a, b):\n    return a + b"
READ_ADD = "a, b = map(int, input().split())\nprint(a + b)"


# -- extraction and normalization (no sandbox) ----------------------------------------------------


def test_extracts_last_python_block_after_thinking():
    completion = (
        "<think>```python\nprint('draft')\n```</think>\n"
        "```python\nprint(1)\n```\ntext\n```py\nprint(2)\n```\n```cpp\nint main(){}\n```"
    )
    assert extract_code(completion) == "print(2)\n"
    assert extract_code("```\nprint(3)\n```") == "print(3)\n"  # untagged block
    assert extract_code("print(4)") == "print(4)"  # no block: the whole completion
    assert extract_code("<think>```python\nprint(5)\n```") == ""  # cut off while still thinking


def test_output_normalization():
    assert normalize_output("1 2  \r\n3\t\n\n\n") == "1 2\n3"
    assert normalize_output("1\n\n2") != normalize_output("1\n2")  # line count matters
    assert normalize_output("1 2") != normalize_output("1\n2")
    assert normalize_output("  1") != normalize_output("1")  # leading space matters


def test_harness_normalizes_and_digests_like_the_host():
    namespace = {}
    exec(HARNESS_FUNCTIONS, namespace)  # our own constant harness code, not model text
    samples = ["", "x", "1 2  \r\n3\t\n\n\n", "héllo\n wörld \n", "a\n\n\nb\n", "\udcff bad", "9" * 100_000]
    for text in samples:
        assert namespace["_normalize"](text) == normalize_output(text)
        assert namespace["_digest"](namespace["_normalize"](text)) == output_digest(text)
    assert output_digest("3\n") != output_digest("4\n") and output_digest("3 ") == output_digest("3")


def test_harness_json_encoder_matches_json():
    namespace = {}
    exec(HARNESS_FUNCTIONS, namespace)
    encode = namespace["_js"]
    values = [None, True, False, 0, -7, 2**70, 1.5, -0.0, 1e300, float("nan"), float("inf"), "",
              'quote " backslash \\ newline \n tab \t nul \x00 bell \x07 é 😀', [1, [2, (3, 4)]],
              {"a": {"b": [None]}, 1: "int key", True: "bool key"}]
    for value in values:
        text = encode(value)
        assert json.loads(text) == json.loads(json.dumps(value, allow_nan=True)) or value != value
    assert encode(float("nan")) == "NaN"
    for bad in ({1, 2}, object(), {(1, 2): 3}):
        with pytest.raises(TypeError):
            encode(bad)


# -- stdin/stdout -------------------------------------------------------------------------------


def test_stdin_correct_and_whitespace_tolerant(verifier):
    assert verifier.score(fenced(READ_ADD), ADD_STDIN).reward == 1.0
    sloppy = "a, b = map(int, input().split())\nprint(a + b, end='   \\n\\n\\n')"
    score = verifier.score(fenced(sloppy), ADD_STDIN)
    assert score.reward == 1.0 and score.info == {"format": "stdin", "total": 3, "sandbox_status": "ok",
                                                  "passed": 3}


def test_stdin_line_structure_must_match(verifier):
    example = {"tests": {"inputs": [""], "outputs": ["1\n2\n"]}}
    assert verifier.score("print('1\\n2')", example).reward == 1.0
    assert verifier.score("print('1 2')", example).reward == 0.0
    assert verifier.score("print('1\\n\\n2')", example).reward == 0.0
    wrong = verifier.score("print(3)", example)
    assert wrong.info["first_failure"]["reason"] == "wrong output"
    assert wrong.info["first_failure"]["got"] == "3" and wrong.info["first_failure"]["expected"] == "1\n2"


def test_fraction_versus_all_or_nothing(verifier, fraction):
    wrong_on_negative = "a, b = map(int, input().split())\nprint(abs(a) + abs(b))"
    assert fraction.score(wrong_on_negative, ADD_STDIN).reward == pytest.approx(2 / 3)
    all_or_nothing = verifier.score(wrong_on_negative, ADD_STDIN)
    assert all_or_nothing.reward == 0.0 and all_or_nothing.info["first_failure"]["case"] == 2


def test_prints_expected_output_then_crashes(verifier):
    crash = READ_ADD + "\nraise RuntimeError('boom')"
    score = verifier.score(fenced(crash), ADD_STDIN)
    assert score.reward == 0.0
    assert score.info["first_failure"]["reason"] == "runtime error (exit code 1)"
    assert "RuntimeError: boom" in score.info["first_failure"]["stderr"]
    exits_nonzero = READ_ADD + "\nimport sys\nsys.exit(3)"
    assert verifier.score(exits_nonzero, ADD_STDIN).info["first_failure"]["reason"] == "runtime error (exit code 3)"
    assert verifier.score(READ_ADD + "\nexit(0)", ADD_STDIN).reward == 1.0  # a clean exit is fine


def test_stdin_programs_in_common_styles(verifier):
    styles = [
        "import sys\ndata = sys.stdin.read().split()\nprint(int(data[0]) + int(data[1]))",
        "a, b = map(int, open(0).read().split())\nprint(a + b)",
        "import sys\na, b = map(int, sys.stdin.buffer.readline().split())\nsys.stdout.write(str(a + b) + '\\n')",
        "def main():\n    a, b = map(int, input().split())\n    print(a + b)\nif __name__ == '__main__':\n    main()",
        # A thread with a big stack, as competitive programmers do for deep recursion.
        "import threading\nthreading.stack_size(1 << 26)\ndef main():\n    print(sum(map(int, input().split())))\n"
        "threading.Thread(target=main).start()",
    ]
    for code in styles:
        assert verifier.score(code, ADD_STDIN).reward == 1.0, code


def test_per_case_timeout_kills_only_that_case(fraction):
    code = "a, b = map(int, input().split())\nif a == 3:\n    while True: pass\nprint(a + b)"
    verifier = CodeVerifier("fraction", case_timeout_s=0.5, solution_timeout_s=10)
    score = verifier.score(code, ADD_STDIN)
    assert score.reward == pytest.approx(2 / 3)
    assert score.info["first_failure"] == {**score.info["first_failure"], "case": 1,
                                           "reason": "time limit per case exceeded"}


def test_per_solution_time_limit_fails_remaining_cases(sandbox_works):
    verifier = CodeVerifier("fraction", case_timeout_s=1.0, solution_timeout_s=1.0)
    code = "import time\ntime.sleep(0.4)\n" + READ_ADD
    example = {"tests": {"inputs": ["1 1\n"] * 5, "outputs": ["2\n"] * 5}}
    score = verifier.score(code, example)
    assert 1 <= score.info["passed"] <= 3
    assert score.reward == score.info["passed"] / 5


def test_output_limit(sandbox_works):
    verifier = CodeVerifier(max_output_bytes=10_000)
    score = verifier.score("print('x' * 100_000)", {"tests": {"inputs": [""], "outputs": ["x"]}})
    assert score.reward == 0.0 and score.info["first_failure"]["reason"] == "output limit exceeded"


def test_memory_limit(sandbox_works):
    verifier = CodeVerifier(limits={"memory_mb": 256})
    score = verifier.score("x = bytearray(1 << 30)\nprint(1)", {"tests": {"inputs": [""], "outputs": ["1"]}})
    assert score.reward == 0.0 and "MemoryError" in score.info["first_failure"]["stderr"]


# -- call style ---------------------------------------------------------------------------------


def test_call_function_and_solution_class(verifier):
    assert verifier.score(fenced(ADD), ADD_CALL).reward == 1.0
    leetcode = "class Solution:\n    def add(self, a: int, b: int) -> int:\n        return a + b"
    assert verifier.score(leetcode, ADD_CALL).reward == 1.0
    wrong = verifier.score("def add(a, b):\n    return a - b", ADD_CALL)
    assert wrong.reward == 0.0 and wrong.info["first_failure"]["reason"] == "wrong return value"
    assert wrong.info["first_failure"]["got"] == "-1"


def test_call_value_comparison(verifier, fraction):
    lists = {"tests": {"fn_name": "f", "inputs": [[3]], "outputs": [[[0, 1, 2]]]}}  # APPS wraps outputs
    assert verifier.score("def f(n):\n    return list(range(n))", lists).reward == 1.0
    assert verifier.score("def f(n):\n    return tuple(range(n))", lists).reward == 1.0  # tuples are lists
    floats = {"tests": {"fn_name": "f", "inputs": [[]], "outputs": [0.3]}}
    assert verifier.score("def f():\n    return 0.1 + 0.2", floats).reward == 1.0
    assert verifier.score("def f():\n    return 0.31", floats).reward == 0.0
    booleans = {"tests": {"fn_name": "f", "inputs": [[]], "outputs": [True]}}
    assert verifier.score("def f():\n    return 1", booleans).reward == 0.0
    # Objects that claim to equal anything are serialized first, so the claim is never asked.
    always_equal = "class Any:\n    def __eq__(self, other):\n        return True\ndef add(a, b):\n    return Any()"
    assert fraction.score(always_equal, ADD_CALL).reward == 0.0


def test_call_errors_have_reasons(verifier):
    raising = verifier.score("def add(a, b):\n    raise KeyError('k')", ADD_CALL)
    assert raising.info["first_failure"]["error"].startswith("KeyError")
    missing = verifier.score("def plus(a, b):\n    return a + b", ADD_CALL)
    assert missing.reward == 0.0 and "no function 'add'" in missing.info["reason"]
    exits = verifier.score("import sys\ndef add(a, b):\n    sys.exit(0)", ADD_CALL)
    assert exits.reward == 0.0 and "called exit" in exits.info["first_failure"]["error"]
    hard_exit = verifier.score("import os\ndef add(a, b):\n    os._exit(0)", ADD_CALL)
    assert hard_exit.reward == 0.0 and "crashed" in hard_exit.info["first_failure"]["reason"]
    loops = CodeVerifier(case_timeout_s=0.3).score("def add(a, b):\n    while True: pass", ADD_CALL)
    assert loops.info["first_failure"]["reason"] == "time limit per case exceeded"


# -- assert style -------------------------------------------------------------------------------


def test_assert_pass_fail_and_fraction(verifier, fraction):
    assert verifier.score(fenced(ADD), ADD_ASSERT).reward == 1.0
    half_right = "def add(a, b):\n    return abs(a) + abs(b)"
    failed = verifier.score(half_right, ADD_ASSERT)
    assert failed.reward == 0.0 and failed.info["first_failure"]["reason"] == "AssertionError"
    assert fraction.score(half_right, ADD_ASSERT_CASES).reward == pytest.approx(2 / 3)
    assert fraction.score(half_right, ADD_ASSERT).reward == 0.0  # one snippet is one case


HACKS = {
    "sys.exit at import": "import sys\ndef add(a, b): return 0\nsys.exit(0)",
    "os._exit at import": "import os\ndef add(a, b): return 0\nos._exit(0)",
    "exit() inside the tested function": "def add(a, b):\n    exit(0)",
    "os._exit inside the tested function": "import os\ndef add(a, b):\n    os._exit(0)",
    "raise SystemExit inside the tested function": "def add(a, b):\n    raise SystemExit(0)",
    "KeyboardInterrupt": "def add(a, b):\n    raise KeyboardInterrupt",
    "SIGKILL itself": "import os, signal\ndef add(a, b):\n    os.kill(os.getpid(), signal.SIGKILL)",
    "replace exec": "import builtins\nbuiltins.exec = lambda *a, **k: None\ndef add(a, b): return 0",
    "replace compile": "import builtins\nbuiltins.compile = lambda *a, **k: compile('pass', 'x', 'exec')\n"
                       "def add(a, b): return 0",
    "replace AssertionError": "import builtins\nclass Quiet(Exception): pass\nbuiltins.AssertionError = Quiet\n"
                              "def add(a, b): return 0",
    "replace BaseException": "import builtins\nbuiltins.BaseException = object\ndef add(a, b): return 0",
    "replace print and stdout": "import builtins, sys, io\nbuiltins.print = lambda *a, **k: None\n"
                                "sys.stdout = io.StringIO()\ndef add(a, b): return 0",
    "patch os.write and os._exit": "import os\nos.write = lambda fd, b: len(b)\nos._exit = lambda c: None\n"
                                   "def add(a, b): return 0",
    "print pass markers": "import sys, os\nfor m in ['PASSED', 'OK', 'ok', 'done', 'All tests passed']:\n"
                          "    print(m); os.write(1, (m + '\\n').encode())\nsys.exit(0)\ndef add(a, b): return 0",
    "fake report lines on every fd": "import os, json\nfor fd in range(1, 20):\n    try:\n"
                                     "        os.write(fd, (json.dumps({'kind': 'done'}) + '\\n').encode())\n"
                                     "    except OSError: pass\nos._exit(0)",
    "atexit handler": "import atexit, os\natexit.register(lambda: os._exit(0))\ndef add(a, b): return 0",
    "alarm disabled then hang": "import signal\nsignal.signal(signal.SIGALRM, signal.SIG_IGN)\n"
                                "def add(a, b):\n    while True: pass",
    "trace function skipping asserts": (
        "import sys\n"
        "def tracer(frame, event, arg):\n"
        "    if frame.f_code.co_filename.startswith('test_') and event == 'line':\n"
        "        try:\n"
        "            frame.f_lineno = frame.f_code.co_firstlineno + 99\n"
        "        except ValueError:\n"
        "            pass\n"
        "    return tracer\n"
        "sys.settrace(tracer)\n"
        "def add(a, b): return 0"
    ),
}


@pytest.mark.parametrize("hack", list(HACKS), ids=list(HACKS))
def test_assert_tricks_do_not_pass(sandbox_works, hack):
    verifier = CodeVerifier("fraction", case_timeout_s=0.5, solution_timeout_s=5)
    score = verifier.score(fenced(HACKS[hack]), ADD_ASSERT_CASES)
    assert score.reward == 0.0, score.info
    assert verifier.score(fenced(ADD), ADD_ASSERT_CASES).reward == 1.0  # the same harness passes honest code


def test_alarm_ignored_inside_the_test_runs_into_the_solution_limit(sandbox_works):
    verifier = CodeVerifier("fraction", case_timeout_s=0.3, solution_timeout_s=0.5)
    code = "import signal\ndef add(a, b):\n    signal.signal(signal.SIGALRM, signal.SIG_IGN)\n    while True: pass"
    score = verifier.score(code, ADD_ASSERT_CASES)
    assert score.reward == 0.0 and score.info["sandbox_status"] == "timeout"


def test_solution_modules_behave_like_scripts(verifier):
    # dataclasses with postponed annotations look their module up in sys.modules.
    code = ("from __future__ import annotations\nfrom dataclasses import dataclass\n"
            "@dataclass\nclass P:\n    x: int\n")
    stdin = {"tests": {"inputs": [""], "outputs": ["P(x=1)"]}}
    assert verifier.score(code + "print(P(1))", stdin).reward == 1.0
    assert verifier.score(code + "def add(a, b):\n    return P(a).x + b", ADD_CALL).reward == 1.0
    assert verifier.score(code + "def add(a, b):\n    return P(a).x + b", ADD_ASSERT).reward == 1.0


def test_patched_builtins_do_not_reach_the_tests(verifier):
    # Tests run with the builtins as they were before the solution ran.
    example = {"test": "assert abs(root2() - 1.41421356) < 1e-6\nassert len(set(pair())) == 2"}
    cheat = ("import builtins\nbuiltins.abs = lambda x: 0\nbuiltins.len = lambda x: 2\n"
             "def root2(): return 0\ndef pair(): return [1, 1]")
    assert verifier.score(cheat, example).reward == 0.0
    honest = "def root2(): return 2 ** 0.5\ndef pair(): return [1, 2]"
    assert verifier.score(honest, example).reward == 1.0


def test_assert_timeouts(sandbox_works):
    verifier = CodeVerifier("fraction", case_timeout_s=0.3, solution_timeout_s=5)
    slow = "import time\ndef add(a, b):\n    if a == 3: time.sleep(10)\n    return a + b"
    score = verifier.score(slow, ADD_ASSERT_CASES)
    assert score.reward == pytest.approx(2 / 3)
    assert score.info["first_failure"]["reason"] == "time limit per case exceeded"
    hang_at_import = CodeVerifier(solution_timeout_s=0.5).score("while True: pass", ADD_ASSERT)
    assert hang_at_import.reward == 0.0


# -- all formats --------------------------------------------------------------------------------


@pytest.mark.parametrize("example", [ADD_STDIN, ADD_CALL, ADD_ASSERT], ids=["stdin", "call", "assert"])
def test_syntax_errors_score_zero_with_reason(verifier, example):
    score = verifier.score(fenced("def add(a, b)\n    return a + b"), example)
    assert score.reward == 0.0
    assert score.info["reason"].startswith("syntax error:") and "line 1" in score.info["reason"]


def test_no_code_and_bad_examples(verifier):
    assert verifier.score("```python\n\n```", ADD_STDIN).info["reason"] == "no code in completion"
    with pytest.raises(ValueError, match="neither 'tests'"):
        verifier.score(ADD, {"answer": "3"})
    with pytest.raises(ValueError, match="equal length"):
        verifier.score(ADD, {"tests": {"inputs": ["1"], "outputs": []}})


def test_tests_as_json_string_and_max_cases(sandbox_works):
    as_string = {"tests": json.dumps(ADD_CALL["tests"])}
    assert CodeVerifier().score(ADD, as_string).reward == 1.0
    first_two = CodeVerifier(max_cases=2).score("def add(a, b):\n    return 3 if a == 1 else 7", ADD_CALL)
    assert first_two.reward == 1.0 and first_two.info["total"] == 2


def test_batch_keeps_order_and_registry_name(sandbox_works):
    verifier = verifiers.get("code", reward_mode="fraction", sandbox_workers=2)
    try:
        completions = [READ_ADD, "print(0)", "", READ_ADD, "def add(a, b) return"]
        scores = verifier.score_batch(completions, [ADD_STDIN] * 5)
        assert [s.reward for s in scores] == [1.0, 0.0, 0.0, 1.0, 0.0]
        assert re.match("syntax error", scores[4].info["reason"])
    finally:
        verifier.close()


def test_option_errors(sandbox_works):
    with pytest.raises(ValueError, match="reward_mode"):
        CodeVerifier("some")
    with pytest.raises(ValueError, match="case_timeout_s"):
        CodeVerifier(case_timeout_s=0)
    with pytest.raises(ValueError, match="limits"):
        CodeVerifier(limits={"memory": 1})
