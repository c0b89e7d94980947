"""Code verifier: run the completion's Python against an example's tests, in a sandbox.

Three test formats (DESIGN.md), read from `example`:
  stdin/stdout  {"tests": {"inputs": ["1 2\\n"], "outputs": ["3\\n"]}}
  call          {"tests": {"fn_name": "add", "inputs": [[1, 2]], "outputs": [3]}}
  assert        {"test": "assert add(1, 2) == 3"}   (or a list of such snippets, one case each)
`tests` may also be a JSON string (how many datasets store it). The solution is the last fenced
Python block of the completion (after `</think>` when there is one), or the whole completion.

Reward: the fraction of cases passed (`reward_mode="fraction"`) or 1.0 only when all pass
(`reward_mode="all"`, the default: partial credit invites solutions that special-case the
easy tests).

Why a model cannot fake a pass
------------------------------
One sandbox run per solution executes `HARNESS` (below) with a JSON payload on stdin.
* stdin/stdout and call formats: the expected outputs never enter the sandbox. The harness
  reports what the solution printed (as a hash of the normalized text) or returned (as JSON),
  and the comparison happens here, in the trainer's process. Exiting early, patching builtins
  or printing "PASSED" gains nothing: the only way to match is to produce the right output.
  Each stdin case runs in a fresh forked child with its own stdin/stdout and a hard per-case
  kill; the forking parent never runs model code. A non-zero exit fails the case even when
  the output was right ("prints the answer, then crashes").
* assert format: the tests must run inside the solution's process. A case passes only when
  the harness reports it, after the test code returned normally, on a private file
  descriptor, tagged with a random nonce that arrives on stdin and lives only in harness
  locals; the run counts only when the harness also reports reaching the end. Every builtin
  and function the harness uses after the solution has run (exec, os.write, signal.setitimer,
  the exception classes) is bound before the solution runs, and trace/profile hooks are
  cleared before each test. So `sys.exit(0)`, `os._exit(0)`, `exit()`, replacing `exec`,
  `print`, `AssertionError` or `sys.stdout`, killing the process or faking output all fail.
  Limits, documented in docs/verifiers.md: a solution that introspects the harness's frames
  can read the nonce, and one that returns objects whose `__eq__` is always true passes
  `assert f(x) == y`; prefer call-style tests for untrusted RL at scale.
"""
from __future__ import annotations

import dataclasses
import json
import marshal
import math
import re
import secrets
import threading
from typing import Any, Sequence

from verifiers.base import BaseVerifier, Score, check_batch

REWARD_MODES = ("fraction", "all")
_PYTHON_LANGS = {"", "python", "py", "python3", "py3"}
_FENCE = re.compile(r"```[ \t]*([\w+.-]*)[^\n]*\n(.*?)```", re.DOTALL)
_HEAD_CHARS = 300


def extract_code(completion: str, strip_think: bool = True) -> str:
    """The last fenced Python (or untagged) block; the whole text when there is none.

    With strip_think, only what follows the last `</think>` counts, and a completion cut off
    inside its reasoning (an opening `<think>` never closed) has no code.
    """
    if strip_think:
        if "</think>" in completion:
            completion = completion.rpartition("</think>")[2]
        elif "<think>" in completion:
            return ""
    blocks = [body for lang, body in _FENCE.findall(completion) if lang.lower() in _PYTHON_LANGS]
    return blocks[-1] if blocks else completion


def normalize_output(text: str) -> str:
    """Trailing whitespace per line and trailing blank lines don't matter; everything else does.

    Line counts must match after this: "1 2" is not "1\\n2". Keep in sync with `_normalize` in
    HARNESS (a test checks they agree).
    """
    lines = [line.rstrip() for line in text.split("\n")]
    while lines and not lines[-1]:
        lines.pop()
    return "\n".join(lines)


# Outputs are compared by digest so they need not travel back whole. hashlib is not among the
# modules a sandboxed job can import, so the digest is the output's bytes read as one big
# integer, reduced modulo the prime 2**255 - 19 (plus the length): C-speed, and a solution
# cannot aim at the expected digest because it never sees the expected output.
_DIGEST_PRIME = 2**255 - 19


def output_digest(text: str) -> str:
    data = normalize_output(text).encode("utf-8", "surrogatepass")
    return "%d:%x" % (len(data), int.from_bytes(data, "little") % _DIGEST_PRIME)


@dataclasses.dataclass
class _Plan:
    """What to run for one example: the harness payload plus what stays outside the sandbox."""

    fmt: str  # "stdin" | "call" | "assert"
    payload: dict
    expected: list  # stdin: (digest, head) per case; call: values; assert: unused
    inputs: list


class CodeVerifier(BaseVerifier):
    """Sandboxed execution of completions against tests. See the module docstring.

    case_timeout_s: wall limit per test case (stdin, call: a hard kill; assert: an alarm).
    solution_timeout_s: wall budget for all cases of one solution; cases not started in time fail.
    max_cases: run only the first N cases (None: all).
    max_output_bytes: per-case stdout cap (stdin format; compared as a hash, so it may be
        large). Call-style return values are capped at a quarter of the sandbox's
        `max_output_bytes` (they travel back on its stdout).
    float_tolerance: relative and absolute tolerance for floats in call-style return values.
    unwrap_single_output: in call style, also accept `f(...) == expected[0]` when the expected
        value is a one-element list (APPS/TACO store call outputs that way).
    limits: `sandboxes.Limits` (or a dict of its fields) for memory, processes etc. Its wall_s
        becomes solution_timeout_s + 2 (harness slack) and its cpu_s at least solution_timeout_s.
    sandbox_workers: None shares the process-wide `sandboxes.default_pool` (one sandbox per
        CPU); a number gives this verifier its own pool of that many sandboxes.
    """

    name = "code"

    def __init__(
        self,
        reward_mode: str = "all",
        *,
        case_timeout_s: float = 4.0,
        solution_timeout_s: float = 20.0,
        max_cases: int | None = None,
        max_output_bytes: int = 8 << 20,
        float_tolerance: float = 1e-6,
        unwrap_single_output: bool = True,
        strip_think: bool = True,
        limits: Any = None,
        sandbox_workers: int | None = None,
    ):
        if reward_mode not in REWARD_MODES:
            raise ValueError(f"code verifier: reward_mode must be one of {REWARD_MODES}, got {reward_mode!r}")
        for field_name, value in (("case_timeout_s", case_timeout_s), ("solution_timeout_s", solution_timeout_s)):
            if not isinstance(value, (int, float)) or not value > 0:
                raise ValueError(f"code verifier: {field_name} must be > 0, got {value!r}")
        if max_cases is not None and (not isinstance(max_cases, int) or max_cases < 1):
            raise ValueError(f"code verifier: max_cases must be a positive int or None, got {max_cases!r}")
        self.reward_mode = reward_mode
        self.case_timeout_s = float(case_timeout_s)
        self.solution_timeout_s = float(solution_timeout_s)
        self.max_cases = max_cases
        self.max_output_bytes = int(max_output_bytes)
        self.float_tolerance = float(float_tolerance)
        self.unwrap_single_output = unwrap_single_output
        self.strip_think = strip_think
        self.limits = _make_limits(limits, self.solution_timeout_s)
        if sandbox_workers is not None and (not isinstance(sandbox_workers, int) or sandbox_workers < 1):
            raise ValueError(f"code verifier: sandbox_workers must be a positive int or None, got {sandbox_workers!r}")
        self.sandbox_workers = sandbox_workers
        self._sandbox_pool = None
        self._pool_lock = threading.Lock()

    @property
    def max_seconds(self) -> float:
        """Longest one `score` can take (the sandbox wall limit): a pool's per-item timeout
        should be above it, or slow but legitimate solutions are killed as timeouts."""
        return self.limits.wall_s

    # -- protocol -----------------------------------------------------------------------------

    def score(self, completion: str, example: dict) -> Score:
        return self.score_batch([completion], [example])[0]

    def score_batch(self, completions: Sequence[str], examples: Sequence[dict]) -> list[Score]:
        """All solutions of the batch go to the sandbox pool at once; it runs them concurrently."""
        check_batch(completions, examples)
        plans = [self._plan(c, e) for c, e in zip(completions, examples)]
        pool = self._get_sandbox_pool()
        futures = [
            None if isinstance(plan, Score)
            else pool.submit(HARNESS, stdin=marshal.dumps(plan.payload), limits=self.limits)
            for plan in plans
        ]
        return [plan if future is None else self._judge(plan, future.result())
                for plan, future in zip(plans, futures)]

    def close(self) -> None:
        """Stop this verifier's own sandbox pool (the shared default pool stays up)."""
        with self._pool_lock:
            pool, self._sandbox_pool = self._sandbox_pool, None
        if pool is not None and self.sandbox_workers is not None:
            pool.close()

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_sandbox_pool"] = None  # threads don't pickle; a copy makes its own
        state["_pool_lock"] = None
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._pool_lock = threading.Lock()

    # -- planning: parse the example, never look at the code beyond extracting it ----------

    def _plan(self, completion: str, example: dict) -> _Plan | Score:
        fmt, spec = _test_spec(example)
        code = extract_code(completion, self.strip_think)
        if not code.strip():
            return Score(0.0, {"format": fmt, "passed": 0, "reason": "no code in completion"})
        nonce = secrets.token_hex(16)
        payload: dict[str, Any] = {
            "mode": fmt,
            "code": code,
            "nonce": nonce,
            "case_timeout_s": self.case_timeout_s,
            "solution_timeout_s": self.solution_timeout_s,
            "max_output_bytes": self.max_output_bytes,
            "max_value_bytes": max(1024, self.limits.max_output_bytes // 4),
            "stop_on_error": self.reward_mode == "all",
        }
        if fmt == "assert":
            tests = spec if isinstance(spec, list) else [spec]
            if not tests or not all(isinstance(t, str) for t in tests):
                raise ValueError("code verifier: example['test'] must be a string or a list of strings")
            tests = tests[: self.max_cases]
            payload["tests"] = tests
            return _Plan(fmt, payload, [], tests)
        inputs, outputs = spec.get("inputs"), spec.get("outputs")
        if not isinstance(inputs, list) or not isinstance(outputs, list) or len(inputs) != len(outputs):
            raise ValueError(
                "code verifier: example['tests'] needs lists 'inputs' and 'outputs' of equal length, got "
                f"{type(inputs).__name__} and {type(outputs).__name__}"
                + (f" of lengths {len(inputs)} and {len(outputs)}" if isinstance(inputs, list)
                   and isinstance(outputs, list) else "")
            )
        if not inputs:
            raise ValueError("code verifier: example['tests'] has no cases")
        inputs, outputs = inputs[: self.max_cases], outputs[: self.max_cases]
        if fmt == "call":
            payload["fn_name"] = spec["fn_name"]
            payload["inputs"] = [args if isinstance(args, list) else [args] for args in inputs]
            return _Plan(fmt, payload, outputs, inputs)
        payload["inputs"] = [_as_text(x) for x in inputs]
        expected = [(output_digest(_as_text(y)), normalize_output(_as_text(y))[:_HEAD_CHARS]) for y in outputs]
        return _Plan(fmt, payload, expected, payload["inputs"])

    # -- judging: everything the sandbox said is untrusted data ----------------------------

    def _judge(self, plan: _Plan, result: Any) -> Score:
        status = getattr(result, "status", "sandbox_error")
        if status == "sandbox_error":
            # Infrastructure, not the model: raise so it is counted and logged, not silently 0.
            detail = f"{getattr(result, 'detail', '')} {getattr(result, 'stderr', '')[-500:]}".strip()
            raise RuntimeError(f"code verifier: the sandbox failed (not the solution): {detail}")
        reports, done, fatal = _parse_reports(result.stdout, plan.payload["nonce"])
        n = len(plan.inputs)
        info: dict[str, Any] = {"format": plan.fmt, "total": n, "sandbox_status": status}
        if fatal is not None:
            info.update(passed=0, reason=fatal)
            return Score(0.0, info)
        passed, first_failure = 0, None
        for i in range(n):
            ok, why = self._case_passed(plan, i, reports.get(i), status)
            if ok:
                passed += 1
            elif first_failure is None:
                first_failure = {"case": i, "reason": why, "input": _head(plan.inputs[i])}
                if plan.fmt == "stdin" and i in reports:
                    first_failure.update(expected=plan.expected[i][1], got=reports[i].get("head", ""),
                                         stderr=reports[i].get("stderr", ""))
                elif plan.fmt == "call":
                    first_failure.update(expected=_head(plan.expected[i]),
                                         got=_head(reports.get(i, {}).get("value")),
                                         error=reports.get(i, {}).get("error", ""))
                elif i in reports:
                    first_failure.update(error=reports[i].get("error", ""))
        if not done:
            # The harness did not finish: say why, for whoever reads the sample logs.
            info["sandbox_detail"] = (getattr(result, "detail", "") + " " + (result.stderr or "")[-300:]).strip()
        if plan.fmt == "assert" and not done:
            # Tests must reach their end: an exit or crash mid-way voids every later case.
            reason = f"tests did not run to the end (sandbox status {status})"
            first_failure = first_failure or {"case": len(reports), "reason": reason}
            info["reason"] = reason
        info["passed"] = passed
        if first_failure is not None:
            info["first_failure"] = first_failure
            info.setdefault("reason", first_failure["reason"])
        if self.reward_mode == "all":
            reward = 1.0 if passed == n and (done or plan.fmt != "assert") else 0.0
        else:
            reward = passed / n
        return Score(reward, info)

    def _case_passed(self, plan: _Plan, i: int, report: dict | None, status: str) -> tuple[bool, str]:
        if report is None:
            return False, f"not run (sandbox status {status})"
        case_status = report.get("status")
        if case_status != "ok":
            return False, str(report.get("error") or case_status)
        if plan.fmt == "assert":
            return True, ""
        if plan.fmt == "stdin":
            if report.get("digest") == plan.expected[i][0]:
                return True, ""
            return False, "wrong output"
        try:
            value = json.loads(report.get("value"))
        except (TypeError, ValueError, RecursionError):
            return False, "return value is not JSON"
        if values_equal(value, plan.expected[i], self.float_tolerance):
            return True, ""
        expected = plan.expected[i]
        if (self.unwrap_single_output and isinstance(expected, list) and len(expected) == 1
                and values_equal(value, expected[0], self.float_tolerance)):
            return True, ""
        return False, "wrong return value"

    def _get_sandbox_pool(self):
        with self._pool_lock:
            if self._sandbox_pool is None:
                import sandboxes

                if self.sandbox_workers is None:
                    self._sandbox_pool = sandboxes.default_pool(self.limits.backend)
                else:
                    self._sandbox_pool = sandboxes.SandboxPool(workers=self.sandbox_workers, limits=self.limits)
            return self._sandbox_pool


def values_equal(got: Any, expected: Any, tolerance: float = 1e-6) -> bool:
    """Structural equality of JSON values; floats within `tolerance` (relative or absolute)."""
    if isinstance(expected, float) or (isinstance(got, float) and isinstance(expected, int)):
        if isinstance(got, bool) or not isinstance(got, (int, float)) or isinstance(expected, bool):
            return False
        if math.isnan(expected) or math.isnan(got):
            return math.isnan(expected) and math.isnan(got)
        return math.isclose(got, expected, rel_tol=tolerance, abs_tol=tolerance)
    if isinstance(expected, list):
        return (isinstance(got, list) and len(got) == len(expected)
                and all(values_equal(g, e, tolerance) for g, e in zip(got, expected)))
    if isinstance(expected, dict):
        return (isinstance(got, dict) and got.keys() == expected.keys()
                and all(values_equal(got[k], expected[k], tolerance) for k in expected))
    return type(got) is type(expected) and got == expected or (
        isinstance(got, (int, float)) and isinstance(expected, (int, float))
        and not isinstance(got, bool) and not isinstance(expected, bool) and got == expected
    )


def _test_spec(example: dict) -> tuple[str, Any]:
    if not isinstance(example, dict):
        raise TypeError(f"code verifier: example must be a dict, got {type(example).__name__}")
    if example.get("tests") is not None:
        tests = example["tests"]
        if isinstance(tests, str):
            try:
                tests = json.loads(tests)
            except ValueError as exc:
                raise ValueError(f"code verifier: example['tests'] is a string but not JSON: {exc}") from None
        if not isinstance(tests, dict):
            raise ValueError(f"code verifier: example['tests'] must be a dict, got {type(tests).__name__}")
        fn_name = tests.get("fn_name")
        if fn_name:
            if not isinstance(fn_name, str) or not fn_name.isidentifier():
                raise ValueError(f"code verifier: example['tests']['fn_name'] is not an identifier: {fn_name!r}")
            return "call", tests
        return "stdin", tests
    if example.get("test") is not None:
        return "assert", example["test"]
    raise ValueError("code verifier: example has neither 'tests' (stdin or call cases) nor 'test' (assert code)")


def _as_text(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, list):  # some datasets store an input or output as a list of lines
        return "\n".join(_as_text(v) for v in value)
    return str(value)


def _head(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value, default=repr)
    return text if len(text) <= _HEAD_CHARS else text[:_HEAD_CHARS] + "..."


def _parse_reports(stdout: str, nonce: str) -> tuple[dict[int, dict], bool, str | None]:
    """Harness lines are `<nonce> <json>`; anything else on stdout is ignored."""
    reports: dict[int, dict] = {}
    done, fatal = False, None
    prefix = nonce + " "
    for line in (stdout or "").split("\n"):
        if not line.startswith(prefix):
            continue
        try:
            record = json.loads(line[len(prefix):])
        except (ValueError, RecursionError):
            continue
        if not isinstance(record, dict):
            continue
        kind = record.get("kind")
        if kind == "case" and isinstance(record.get("i"), int) and record["i"] not in reports:
            reports[record["i"]] = record
        elif kind == "done":
            done = True
        elif kind == "fatal" and fatal is None:
            fatal = str(record.get("error", "harness error"))
    return reports, done, fatal


def _make_limits(limits: Any, solution_timeout_s: float) -> Any:
    """sandboxes.Limits whose wall and CPU limits cover the whole solution plus start-up slack."""
    from sandboxes import Limits

    if limits is None:
        limits = Limits()
    elif isinstance(limits, dict):
        try:
            limits = Limits(**limits)
        except TypeError as exc:
            raise ValueError(f"code verifier: limits: {exc}") from None
    elif not isinstance(limits, Limits):
        raise TypeError(f"code verifier: limits must be a sandboxes.Limits or a dict, got {type(limits).__name__}")
    limits = dataclasses.replace(
        limits,
        wall_s=solution_timeout_s + 2.0,
        cpu_s=max(limits.cpu_s, math.ceil(solution_timeout_s) + 1),
    )
    return limits.validate()


# The program run inside the sandbox. Self-contained, stdlib only; reads its payload from stdin.
# The program run inside the sandbox: self-contained, and importing only modules that are
# built in or already loaded at start-up (importing json or traceback there costs a solution
# tens of milliseconds). Its payload arrives on stdin as marshal data (from us, trusted); its
# reports leave as JSON lines written by the small encoder `_js`.
HARNESS_FUNCTIONS = r'''
import builtins, marshal, os, sys, time
import _signal as signal


def _normalize(text):
    lines = [line.rstrip() for line in text.split("\n")]
    while lines and not lines[-1]:
        lines.pop()
    return "\n".join(lines)


def _digest(normalized):
    data = normalized.encode("utf-8", "surrogatepass")
    return "%d:%x" % (len(data), int.from_bytes(data, "little") % (2**255 - 19))


_ESCAPES = {i: "\\u%04x" % i for i in range(32)}
_ESCAPES.update({ord('"'): '\\"', ord("\\"): "\\\\", 10: "\\n", 13: "\\r", 9: "\\t"})


def _js(value):
    """JSON text of plain data (what json.dumps(value, allow_nan=True) gives); TypeError otherwise."""
    if value is None:
        return "null"
    if value is True:
        return "true"
    if value is False:
        return "false"
    if isinstance(value, int):
        return int.__repr__(value)
    if isinstance(value, float):
        if value != value:
            return "NaN"
        if value in (float("inf"), float("-inf")):
            return "Infinity" if value > 0 else "-Infinity"
        return float.__repr__(value)
    if isinstance(value, str):
        return '"' + str.translate(value, _ESCAPES) + '"'
    if isinstance(value, (list, tuple)):
        return "[" + ",".join([_js(item) for item in value]) + "]"
    if isinstance(value, dict):
        items = []
        for key, item in value.items():
            if not isinstance(key, str):
                if key is None or isinstance(key, (bool, int, float)):
                    key = _js(key)
                else:
                    raise TypeError("keys must be str, int, float, bool or None, not " + type(key).__name__)
            items.append(_js(key) + ":" + _js(item))
        return "{" + ",".join(items) + "}"
    raise TypeError("Object of type %s is not JSON serializable" % type(value).__name__)


def _line(text):
    return (text + "\n").encode("utf-8", "backslashreplace")  # lone surrogates become \\udcxx


def _read_all(fd):
    chunks = []
    while True:
        chunk = os.read(fd, 1 << 20)
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)


def _memfd(data=b""):
    fd = os.memfd_create("h")
    if data:
        os.write(fd, data)
        os.lseek(fd, 0, 0)
    return fd


def _slurp(fd, limit):
    os.lseek(fd, 0, 0)
    data = os.read(fd, limit + 1)
    os.close(fd)
    return data


def _wait(pid, timeout):
    """(exit code or -signal, timed_out). Kills the child's process group on overrun."""
    deadline = time.monotonic() + timeout
    try:
        import select
        pidfd = os.pidfd_open(pid)
    except (ImportError, AttributeError, OSError):
        pidfd = None
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            if pidfd is not None:
                os.close(pidfd)
            return os.waitstatus_to_exitcode(status), False
        left = deadline - time.monotonic()
        if left <= 0:
            for target in (-pid, pid):
                try:
                    os.kill(target, signal.SIGKILL)
                except OSError:
                    pass
            os.waitpid(pid, 0)
            if pidfd is not None:
                os.close(pidfd)
            return None, True
        if pidfd is not None:
            select.select([pidfd], [], [], left)
        else:
            time.sleep(min(left, 0.002))


def _child_setup(stdin_fd, stdout_fd, stderr_fd, max_out, keep_fd=None):
    """Point fds 0-2 at the case's files, close everything else (keep_fd moves to fd 3)."""
    import io
    import resource
    os.setpgid(0, 0)
    os.dup2(stdin_fd, 0)
    os.dup2(stdout_fd, 1)
    os.dup2(stderr_fd, 2)
    first_free = 3
    if keep_fd is not None:
        os.dup2(keep_fd, 3)
        first_free = 4
    os.closerange(first_free, resource.getrlimit(resource.RLIMIT_NOFILE)[0])
    hard = resource.getrlimit(resource.RLIMIT_FSIZE)[1]
    cap = max_out if hard == resource.RLIM_INFINITY else min(max_out, hard)
    resource.setrlimit(resource.RLIMIT_FSIZE, (cap, hard))
    signal.signal(signal.SIGALRM, signal.SIG_DFL)
    signal.signal(signal.SIGXFSZ, signal.SIG_DFL)  # Python ignores it; a kill reads as "output limit"
    sys.stdin = io.TextIOWrapper(io.BufferedReader(io.FileIO(0, "r", closefd=False)), encoding="utf-8",
                                 errors="surrogateescape")
    sys.stdout = io.TextIOWrapper(io.BufferedWriter(io.FileIO(1, "w", closefd=False)), encoding="utf-8",
                                  errors="surrogateescape")
    sys.stderr = io.TextIOWrapper(io.FileIO(2, "w", closefd=False), encoding="utf-8",
                                  errors="backslashreplace", write_through=True)
    sys.__stdin__, sys.__stdout__, sys.__stderr__ = sys.stdin, sys.stdout, sys.stderr
    return sys.stdout


def _exit_code(code):
    if code is None:
        return 0
    if isinstance(code, int):
        return code & 0xFF
    try:
        print(code, file=sys.stderr)
    except BaseException:
        pass
    return 1


def _join_threads():
    threading = sys.modules.get("threading")
    if threading is None:
        return
    for thread in threading.enumerate():
        if thread is not threading.main_thread() and not thread.daemon:
            thread.join()


def _module_namespace(name):
    """A real module registered in sys.modules (dataclasses, pickle and typing look there)."""
    module = type(sys)(name)
    module.__dict__.update(__builtins__=builtins, __file__="solution.py")
    sys.modules[name] = module
    return module.__dict__


def _describe(exc):
    try:
        if isinstance(exc, SyntaxError):
            return "%s: %s (%s, line %s)" % (type(exc).__name__, exc.msg, exc.filename, exc.lineno)
        text = str(exc)
        return (type(exc).__name__ + (": " + text if text else ""))[:500]
    except BaseException:
        return "exception"


def _compile_or_report(source, report):
    try:
        return compile(source, "solution.py", "exec")
    except (SyntaxError, ValueError) as exc:
        report({"kind": "fatal", "error": "syntax error: " + _describe(exc)})
        return None


def run_stdin(payload, report):
    """Each case in a fresh child; this process never runs model code."""
    compiled = _compile_or_report(payload["code"], report)
    if compiled is None:
        return
    start = time.monotonic()
    max_out = payload["max_output_bytes"]
    for i, text in enumerate(payload["inputs"]):
        left = payload["solution_timeout_s"] - (time.monotonic() - start)
        if left <= 0:
            report({"kind": "case", "i": i, "status": "skipped", "error": "per-solution time limit"})
            continue
        in_fd, out_fd, err_fd = _memfd(text.encode("utf-8", "surrogatepass")), _memfd(), _memfd()
        t0 = time.monotonic()
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                out = _child_setup(in_fd, out_fd, err_fd, max_out)
                sys.argv = ["solution.py"]
                namespace = _module_namespace("__main__")
                try:
                    exec(compiled, namespace)
                    _join_threads()
                    code = 0
                except SystemExit as exc:
                    code = _exit_code(exc.code)
                except BaseException as exc:
                    sys.excepthook(type(exc), exc, exc.__traceback__)
                    code = 1
                for stream in (sys.stdout, out):
                    try:
                        stream.flush()
                    except BaseException:
                        code = code or 1
            finally:
                os._exit(code)
        os.close(in_fd)
        exit_code, timed_out = _wait(pid, min(payload["case_timeout_s"], left))
        wall = round(time.monotonic() - t0, 4)
        output = _slurp(out_fd, max_out).decode("utf-8", "replace")
        stderr = _slurp(err_fd, 1 << 16).decode("utf-8", "replace")
        record = {"kind": "case", "i": i, "wall_s": wall, "stderr": stderr[-500:]}
        if timed_out:
            record.update(status="timeout", error="time limit per case exceeded")
        elif exit_code == -signal.SIGXFSZ:
            record.update(status="output_limit", error="output limit exceeded")
        elif exit_code != 0:
            why = "exit code %d" % exit_code if exit_code > 0 else "killed by signal %d" % -exit_code
            record.update(status="error", error="runtime error (" + why + ")")
        else:
            normalized = _normalize(output)
            record.update(status="ok", digest=_digest(normalized), head=normalized[:300])
        report(record)
        if payload["stop_on_error"] and record["status"] != "ok":
            break


def run_call(payload, report):
    compiled = _compile_or_report(payload["code"], report)
    if compiled is None:
        return
    namespace = _module_namespace("solution")
    start = time.monotonic()
    try:
        exec(compiled, namespace)
    except BaseException as exc:
        report({"kind": "fatal", "error": "solution failed while loading: " + _describe(exc)})
        return
    fn_name = payload["fn_name"]
    holder = namespace.get("Solution")
    if callable(namespace.get(fn_name)):
        get_fn = lambda: namespace[fn_name]
    elif isinstance(holder, type) and callable(getattr(holder, fn_name, None)):
        get_fn = lambda: getattr(holder(), fn_name)
    else:
        report({"kind": "fatal", "error": "no function %r (nor Solution.%s) defined" % (fn_name, fn_name)})
        return
    max_out = payload["max_value_bytes"]
    for i, args in enumerate(payload["inputs"]):
        left = payload["solution_timeout_s"] - (time.monotonic() - start)
        if left <= 0:
            report({"kind": "case", "i": i, "status": "skipped", "error": "per-solution time limit"})
            continue
        res_fd, null_fd = _memfd(), os.open(os.devnull, os.O_RDWR)
        pid = os.fork()
        if pid == 0:
            try:
                _child_setup(null_fd, null_fd, null_fd, max_out, keep_fd=res_fd)
                try:
                    result = b"ok\n" + _js(get_fn()(*args)).encode("utf-8", "backslashreplace")
                except SystemExit as exc:
                    result = b"error\n" + ("called exit(%r)" % (exc.code,)).encode("utf-8", "replace")
                except BaseException as exc:
                    result = b"error\n" + _describe(exc).encode("utf-8", "replace")
                os.write(3, result)
            finally:
                os._exit(0)
        os.close(null_fd)
        exit_code, timed_out = _wait(pid, min(payload["case_timeout_s"], left))
        raw = _slurp(res_fd, max_out + 600)
        record = {"kind": "case", "i": i}
        if timed_out:
            record.update(status="timeout", error="time limit per case exceeded")
        elif exit_code == -signal.SIGXFSZ or len(raw) > max_out + 600:
            record.update(status="output_limit", error="return value too large")
        elif raw.startswith(b"ok\n"):
            record.update(status="ok", value=raw[3:].decode("utf-8", "replace"))
        elif raw.startswith(b"error\n"):
            record.update(status="error", error=raw[6:].decode("utf-8", "replace"))
        else:
            record.update(status="error", error="crashed (exit code %s)" % exit_code)
        report(record)
        if payload["stop_on_error"] and record["status"] != "ok":
            break


def run_assert(payload, nonce, report_fd):
    # Bind everything used after the solution runs, so patching builtins or modules can't reach it.
    _exec, _compile, _write, _exit = exec, compile, os.write, os._exit
    _len, _range, _dict, _js_, _line_ = len, range, dict, _js, _line
    _BaseException, _SyntaxError, _ValueError = BaseException, SyntaxError, ValueError
    _setitimer, _signal, _ITIMER_REAL, _SIGALRM = signal.setitimer, signal.signal, signal.ITIMER_REAL, signal.SIGALRM
    _settrace, _setprofile, _monotonic, _describe_ = sys.settrace, sys.setprofile, time.monotonic, _describe
    # Tests see the builtins as they were before the solution ran: a solution that replaces
    # builtins.abs or builtins.set cannot make `assert abs(f(x) - y) < 1e-9` pass.
    pristine_builtins = _dict(builtins.__dict__)
    prefix = nonce + " "

    def report(record):
        _write(report_fd, _line_(prefix + _js_(record)))

    class _CaseTimeout(_BaseException):
        pass

    def on_alarm(signum, frame):
        raise _CaseTimeout()

    try:
        compiled = _compile(payload["code"], "solution.py", "exec")
        tests = [_compile(t, "test_%d.py" % k, "exec") for k, t in enumerate(payload["tests"])]
    except (_SyntaxError, _ValueError) as exc:
        report({"kind": "fatal", "error": "syntax error: " + _describe_(exc)})
        return
    namespace = _module_namespace("solution")
    case_limit, stop_on_error = payload["case_timeout_s"], payload["stop_on_error"]
    budget, start = payload["solution_timeout_s"], _monotonic()
    _signal(_SIGALRM, on_alarm)
    _setitimer(_ITIMER_REAL, budget)
    try:
        _exec(compiled, namespace)
    except _BaseException as exc:
        _setitimer(_ITIMER_REAL, 0)
        report({"kind": "fatal", "error": "solution failed while loading: " + _describe_(exc)})
        return
    _setitimer(_ITIMER_REAL, 0)
    for i in _range(_len(tests)):
        left = budget - (_monotonic() - start)
        if left <= 0:
            report({"kind": "case", "i": i, "status": "skipped", "error": "per-solution time limit"})
            continue
        namespace["__builtins__"] = _dict(pristine_builtins)
        _settrace(None)
        _setprofile(None)
        _signal(_SIGALRM, on_alarm)
        _setitimer(_ITIMER_REAL, case_limit if case_limit < left else left)
        try:
            _exec(tests[i], namespace)
            _setitimer(_ITIMER_REAL, 0)
            record = {"kind": "case", "i": i, "status": "ok"}
        except _CaseTimeout:
            record = {"kind": "case", "i": i, "status": "timeout", "error": "time limit per case exceeded"}
        except _BaseException as exc:
            _setitimer(_ITIMER_REAL, 0)
            record = {"kind": "case", "i": i, "status": "error", "error": _describe_(exc)}
        report(record)
        if stop_on_error and record["status"] != "ok":
            break
    report({"kind": "done"})
    _exit(0)


def main():
    payload = marshal.loads(_read_all(0))
    nonce = payload.pop("nonce")
    # The report channel is a private duplicate of stdout; the solution's own stdout and stderr
    # go to /dev/null (stdin cases capture theirs per case instead).
    report_fd = os.dup(1)
    null_fd = os.open(os.devnull, os.O_RDWR)
    os.dup2(null_fd, 0)
    os.dup2(null_fd, 1)
    if payload["mode"] != "stdin":
        os.dup2(null_fd, 2)
    os.close(null_fd)
    if payload["mode"] == "assert":
        run_assert(payload, nonce, report_fd)  # exits itself once the tests ran
        os._exit(0)
    prefix = nonce + " "
    write = os.write

    def report(record):
        write(report_fd, _line(prefix + _js(record)))

    if payload["mode"] == "stdin":
        run_stdin(payload, report)
    else:
        run_call(payload, report)
    report({"kind": "done"})
    os._exit(0)  # no atexit handlers or thread joins of a solution loaded by run_call
'''

HARNESS = HARNESS_FUNCTIONS + "\nmain()\n"
