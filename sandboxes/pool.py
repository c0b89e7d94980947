"""A pool of warm sandbox workers: many isolated runs at once, from any number of threads."""
from __future__ import annotations

import logging
import os
import queue
import threading
import time
import warnings
from concurrent.futures import Future
from dataclasses import dataclass, replace
from typing import Iterable, Mapping

from sandboxes._worker import SCRIPT_NAME
from sandboxes.limits import Limits, SandboxResult, sandbox_error
from sandboxes.worker import InterpreterLayout, SandboxUnavailable, WorkerBroken, WorkerProcess, interpreter_layout

log = logging.getLogger("sandboxes")


class InsecureBackendWarning(UserWarning):
    """The rlimit backend is in use: programs are limited but NOT isolated."""


RLIMIT_WARNING = (
    "sandbox backend 'rlimit' gives NO isolation: programs can read the host's files, reach the "
    "network and signal processes of the same user; only rlimits, a scratch directory and a "
    "timeout apply (and, run as root, jobs share one uid and so one process limit). Use it only "
    "on hosts where bwrap cannot create user namespaces.")


def warn_rlimit_backend() -> None:
    warnings.warn(RLIMIT_WARNING, InsecureBackendWarning, stacklevel=3)
    log.warning(RLIMIT_WARNING)


@dataclass
class Job:
    """One program to run: what `SandboxPool.map` takes (a dict with these keys, or a plain
    code string, works too)."""

    code: str
    stdin: str | bytes = ""
    limits: Limits | None = None
    files: Mapping[str, str | bytes] | None = None


def default_workers() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux: the pool will not start there anyway
        return os.cpu_count() or 1


class SandboxPool:
    """`workers` long-lived sandboxes (default: one per usable CPU), each running one job at a
    time in a fresh forked child (see sandboxes/_worker.py). Thread-safe: `run`, `submit` and
    `map` may be called from many threads at once; jobs queue up and the first free worker
    takes the next one. Each job may carry its own Limits (same backend as the pool).

    A worker that dies, stops answering or reports a broken sandbox is killed and replaced; a
    job that runs too long is killed at its wall-clock limit, so no job stalls the pool.
    When the sandbox cannot start at all (no user namespaces, say), jobs come back with status
    "sandbox_error" and a message saying what the administrator must change.
    """

    def __init__(self, workers: int | None = None, limits: Limits | None = None):
        self.limits = replace(limits or Limits()).validate()
        self.backend = self.limits.backend
        self.workers = default_workers() if workers is None else int(workers)
        if self.workers < 1:
            raise ValueError(f"workers must be >= 1, got {workers!r}")
        if self.backend == "rlimit":
            warn_rlimit_backend()
        self._pid = os.getpid()
        self._jobs: queue.SimpleQueue = queue.SimpleQueue()
        self._closed = False
        self._close_lock = threading.Lock()
        self._layout: InterpreterLayout | None = None
        self._layout_error: str | None = None
        try:
            self._layout = interpreter_layout()
        except SandboxUnavailable as exc:
            self._layout_error = str(exc)
        self._stats_lock = threading.Lock()
        self.workers_started = 0
        self._live: dict[int, WorkerProcess] = {}  # slot -> its current worker, for worker_pids()
        # Worker threads live as long as the pool: bwrap's --die-with-parent follows the thread
        # that started it, so a worker must never be started from a short-lived caller thread.
        self._threads = [threading.Thread(target=self._serve, args=(i,), name=f"sandbox-worker-{i}",
                                          daemon=True)
                         for i in range(self.workers)]
        for thread in self._threads:
            thread.start()

    # -- public ---------------------------------------------------------------------------
    def submit(self, code: str, stdin: str | bytes = "", limits: Limits | None = None,
               files: Mapping[str, str | bytes] | None = None) -> Future:
        """Queue one run; the Future resolves to a SandboxResult (never raises for anything
        the program does). Bad arguments raise here, at once."""
        job = self._prepare(code, stdin, limits, files)
        future: Future = Future()
        with self._close_lock:
            if self._closed:
                raise RuntimeError("SandboxPool is closed")
            self._jobs.put((job, future))
        return future

    def run(self, code: str, stdin: str | bytes = "", limits: Limits | None = None,
            files: Mapping[str, str | bytes] | None = None) -> SandboxResult:
        return self.submit(code, stdin, limits, files).result()

    def map(self, jobs: Iterable[Job | Mapping | str]) -> list[SandboxResult]:
        """Run many jobs concurrently; results in the order of `jobs`."""
        futures = [self.submit(**_as_job_kwargs(job)) for job in jobs]
        return [future.result() for future in futures]

    def close(self) -> None:
        """Finish queued jobs, then stop every worker. Idempotent."""
        with self._close_lock:
            if self._closed:
                return
            self._closed = True
            for _ in self._threads:
                self._jobs.put(None)
        if os.getpid() == self._pid:
            for thread in self._threads:
                thread.join()

    def worker_pids(self) -> list[int]:
        """Host pids of the running workers (bwrap, or the rlimit worker's interpreter); every
        sandboxed process descends from one of them."""
        with self._stats_lock:
            return [w.pid for w in self._live.values() if w.alive()]

    def __enter__(self) -> "SandboxPool":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- internals ------------------------------------------------------------------------
    def _prepare(self, code, stdin, limits, files):
        if os.getpid() != self._pid:
            raise RuntimeError("this SandboxPool belongs to the parent process; create a new "
                               "pool after fork")
        if not isinstance(code, str):
            raise TypeError(f"code must be str, got {type(code).__name__}")
        if isinstance(stdin, str):
            stdin = stdin.encode("utf-8", "surrogatepass")
        elif not isinstance(stdin, (bytes, bytearray, memoryview)):
            raise TypeError(f"stdin must be str or bytes, got {type(stdin).__name__}")
        limits = self.limits if limits is None else limits
        if not isinstance(limits, Limits):
            raise TypeError(f"limits must be a sandboxes.Limits, got {type(limits).__name__}")
        limits.validate()
        if limits.backend != self.backend:
            raise ValueError(f"Limits.backend={limits.backend!r} but this pool runs "
                             f"{self.backend!r}; use a pool per backend")
        return code, bytes(stdin), replace(limits), normalize_files(files, limits)

    def _serve(self, slot: int) -> None:
        worker = self._start_worker_quietly()
        self._track(slot, worker)
        try:
            while True:
                item = self._jobs.get()
                if item is None:
                    return
                job, future = item
                if not future.set_running_or_notify_cancel():
                    continue
                try:
                    result, worker = self._execute(job, worker, slot)
                except BaseException as exc:  # noqa: BLE001 - a bug here must not hang callers
                    log.exception("sandbox pool failed on a job")
                    result = sandbox_error(f"internal error in the sandbox pool: {exc!r}")
                future.set_result(result)
        finally:
            self._track(slot, None)
            if worker is not None:
                worker.close()

    def _track(self, slot: int, worker) -> None:
        with self._stats_lock:
            if worker is None:
                self._live.pop(slot, None)
            else:
                self._live[slot] = worker

    def _start_worker_quietly(self):
        try:
            return self._start_worker()
        except SandboxUnavailable:
            return None  # the first job reports why

    def _start_worker(self) -> WorkerProcess:
        if self._layout is None:
            raise SandboxUnavailable(self._layout_error)
        worker = WorkerProcess(self.backend, self._layout)
        with self._stats_lock:
            self.workers_started += 1
        return worker

    def _execute(self, job, worker, slot):
        code, stdin, limits, files = job
        for attempt in range(2):
            if worker is None or not worker.alive():
                if worker is not None:
                    worker.close()
                try:
                    worker = self._start_worker()
                except SandboxUnavailable as exc:
                    return sandbox_error(str(exc)), None
                self._track(slot, worker)
            started = time.monotonic()
            try:
                return worker.run(code, stdin, limits, files), worker
            except WorkerBroken as exc:
                worker.close()
                worker = None
                log.warning("sandbox worker replaced: %s", exc)
                # A worker found dead at once (killed while idle, say) gets one retry on a
                # fresh one: jobs have no effects outside their sandbox, so rerunning is safe.
                if attempt == 0 and exc.gone and time.monotonic() - started < 1.0:
                    continue
                return sandbox_error(f"{exc}; worker replaced", time.monotonic() - started), None
        raise AssertionError("unreachable")


def normalize_files(files, limits: Limits) -> list[tuple[str, bytes]]:
    """Validate relative file names and encode contents; raise ValueError naming the bad one."""
    if files is None:
        return []
    if not isinstance(files, Mapping):
        raise TypeError(f"files must be a dict of name -> str|bytes, got {type(files).__name__}")
    out, seen, total = [], set(), 0
    for name, data in files.items():
        if not isinstance(name, str) or not name or "\0" in name:
            raise ValueError(f"files: bad name {name!r}")
        norm = os.path.normpath(name)
        parts = norm.split("/")
        if os.path.isabs(norm) or norm in (".", "") or ".." in parts or any(len(p.encode()) > 255 for p in parts):
            raise ValueError(f"files: {name!r} must be a relative path inside the working directory")
        if norm == SCRIPT_NAME:
            raise ValueError(f"files: {SCRIPT_NAME!r} is reserved for the program itself")
        if norm in seen:
            raise ValueError(f"files: {name!r} given twice")
        seen.add(norm)
        if isinstance(data, str):
            data = data.encode("utf-8", "surrogatepass")
        elif isinstance(data, (bytes, bytearray, memoryview)):
            data = bytes(data)
        else:
            raise TypeError(f"files[{name!r}] must be str or bytes, got {type(data).__name__}")
        total += len(data)
        out.append((norm, data))
    if total > limits.tmp_mb * 1024 * 1024 * 0.9:
        raise ValueError(f"files total {total} bytes; they must fit in Limits.tmp_mb={limits.tmp_mb} MB")
    # Parents before children is guaranteed by makedirs; a name that is also a directory of
    # another ("a" and "a/b") cannot be both.
    names = {n for n, _ in out}
    for n in names:
        parent = os.path.dirname(n)
        while parent:
            if parent in names:
                raise ValueError(f"files: {parent!r} is both a file and a directory")
            parent = os.path.dirname(parent)
    return out


def _as_job_kwargs(job) -> dict:
    if isinstance(job, str):
        return {"code": job}
    if isinstance(job, Job):
        return {"code": job.code, "stdin": job.stdin, "limits": job.limits, "files": job.files}
    if isinstance(job, Mapping):
        unknown = set(job) - {"code", "stdin", "limits", "files"}
        if unknown:
            raise ValueError(f"unknown job keys {sorted(unknown)}")
        return dict(job)
    raise TypeError(f"a job is a Job, a dict or a code string, got {type(job).__name__}")
