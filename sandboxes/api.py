"""`run_python`: one sandboxed run, through a lazily created module-level pool."""
from __future__ import annotations

import atexit
import os
import threading
import time
from dataclasses import replace
from typing import Mapping

from sandboxes.limits import Limits, SandboxResult, sandbox_error
from sandboxes.pool import SandboxPool, normalize_files, warn_rlimit_backend
from sandboxes.worker import SandboxUnavailable, WorkerBroken, WorkerProcess

_default_pools: dict[str, SandboxPool] = {}
_default_lock = threading.Lock()
_atexit_registered = False


def default_pool(backend: str = "bwrap") -> SandboxPool:
    """The shared pool for `backend`, created on first use (one worker per usable CPU) and
    closed at interpreter exit. A forked child gets its own (a pool's pipes belong to the
    process that made it)."""
    global _atexit_registered
    with _default_lock:
        pool = _default_pools.get(backend)
        if pool is None or pool._pid != os.getpid():
            pool = SandboxPool(limits=Limits(backend=backend))
            _default_pools[backend] = pool
            if not _atexit_registered:
                atexit.register(close_default_pools)
                _atexit_registered = True
        return pool


def close_default_pools() -> None:
    with _default_lock:
        pools = [p for p in _default_pools.values() if p._pid == os.getpid()]
        _default_pools.clear()
    for pool in pools:
        pool.close()


def run_python(code: str, stdin: str | bytes = "", limits: Limits | None = None,
               files: Mapping[str, str | bytes] | None = None) -> SandboxResult:
    """Run `code` as a Python program in a sandbox; `files` (relative name -> content) are
    written into its private working directory first. Uses the module-level default pool of
    `limits.backend` (started on first call: later calls cost milliseconds, not a start-up).
    For many runs at once, share a `SandboxPool` or call `default_pool().map(...)`."""
    limits = limits or Limits()
    return default_pool(limits.validate().backend).run(code, stdin, limits, files)


def run_python_once(code: str, stdin: str | bytes = "", limits: Limits | None = None,
                    files: Mapping[str, str | bytes] | None = None) -> SandboxResult:
    """Like `run_python`, but in a sandbox started for this run alone and torn down after it
    (one bwrap and one fresh interpreter per run: several times slower than a pool, but
    nothing is kept running)."""
    limits = replace(limits or Limits()).validate()
    if limits.backend == "rlimit":
        warn_rlimit_backend()
    normalized = normalize_files(files, limits)
    if isinstance(stdin, str):
        stdin = stdin.encode("utf-8", "surrogatepass")
    started = time.monotonic()
    try:
        worker = WorkerProcess(limits.backend)
    except SandboxUnavailable as exc:
        return sandbox_error(str(exc))
    try:
        return worker.run(code, bytes(stdin), limits, normalized)
    except WorkerBroken as exc:
        return sandbox_error(str(exc), time.monotonic() - started)
    finally:
        worker.close()
