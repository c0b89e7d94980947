"""Score a batch in worker processes, each item under a hard wall-clock limit.

Why processes and not threads or `signal.alarm`: a verifier stuck in C code (a huge sympy
simplification, a regex on adversarial text) holds the GIL and ignores exceptions; the alarm
only works on the main thread. The one reliable way to stop it is to kill its process.

Items travel in chunks: the parent sends a worker several items in one message (a math check
takes ~0.2 ms, so one round trip per item would cost more than the work), and the worker
answers each item as soon as it is scored. Every answer restarts the clock, so each item still
has its own hard limit: when a worker overruns, the item it is on is the one that hangs; that
worker is killed, the item scores 0 with `info["error"]="timeout"`, the chunk's unanswered
items go back to the queue and a replacement starts. Other workers carry on meanwhile.

Workers start lazily on the first batch, stay up between batches (sympy imports and verifier
set-up are paid once), and start with "spawn" (default) or "forkserver": never a plain fork of
a trainer process that has torch, CUDA or threads loaded. The verifier reaches a worker as a
picklable *recipe* (a zero-argument callable that builds it), so a verifier holding threads or
sockets can still be rebuilt there from its spec.
"""
from __future__ import annotations

import logging
import multiprocessing as mp
import os
import pickle
import threading
import time
import traceback
import weakref
from collections import Counter, deque
from dataclasses import dataclass, field
from functools import partial
from multiprocessing.connection import Connection, wait
from typing import Any, Callable, Sequence

from verifiers.base import Score, as_score, check_batch

logger = logging.getLogger(__name__)

START_METHODS = ("spawn", "forkserver")


@dataclass
class PoolStats:
    """Cumulative counters since the pool was created: a trainer logs them as metrics."""

    items: int = 0
    errors: int = 0  # the verifier raised (scored 0)
    timeouts: int = 0  # the item ran past timeout_s (scored 0, worker replaced)
    crashes: int = 0  # the worker process died mid-item, e.g. segfault or OOM kill (scored 0)
    worker_starts: int = 0
    chunks: int = 0  # messages that carried items to workers (one round trip each)
    error_types: Counter = field(default_factory=Counter)

    def as_metrics(self, prefix: str = "verifier/") -> dict[str, float]:
        return {
            f"{prefix}items": self.items,
            f"{prefix}pool_errors": self.errors,
            f"{prefix}timeouts": self.timeouts,
            f"{prefix}crashes": self.crashes,
            f"{prefix}worker_starts": self.worker_starts,
            f"{prefix}chunks": self.chunks,
        }


class PoolStartError(RuntimeError):
    """A worker could not build the verifier: a configuration error, raised rather than scored 0."""


def pickle_recipe(recipe: Callable[[], Any], name: str = "verifier") -> bytes:
    """The recipe as bytes for the workers, or a TypeError that says how to fix it."""
    try:
        return pickle.dumps(recipe)
    except Exception as exc:
        raise TypeError(
            f"{name}: cannot send this verifier to worker processes ({type(exc).__name__}: {exc}). "
            "Define plug-in functions and classes at module level (not lambdas or closures), "
            "or score inline with workers=0."
        ) from exc


def identity_recipe(verifier: Any) -> Callable[[], Any]:
    """A recipe that ships the verifier itself (it must pickle) to the workers."""
    return partial(_return, verifier)


def _return(value: Any) -> Any:
    return value


class _Worker:
    """One worker process and the parent's end of its pipe."""

    def __init__(self, ctx: Any, recipe_bytes: bytes):
        parent_end, child_end = ctx.Pipe(duplex=True)
        self.process = ctx.Process(
            target=_worker_main, args=(child_end, recipe_bytes), daemon=True,
            name="verifier-worker",
        )
        self.process.start()
        child_end.close()
        self.conn: Connection = parent_end
        self.ready = False
        self.started_at = time.monotonic()
        self.items: deque[int] = deque()  # sent, not answered yet; the first is being scored
        self.deadline = 0.0

    @property
    def item(self) -> int | None:
        """The item the worker is scoring now (None when idle)."""
        return self.items[0] if self.items else None

    def kill(self) -> None:
        if self.process.is_alive():
            self.process.kill()
        self.process.join(timeout=5)
        self.conn.close()

    def stop(self, grace_s: float) -> None:
        """Ask politely (the worker may be idle), then kill whatever is left."""
        try:
            self.conn.send(None)
        except (OSError, ValueError):
            pass
        self.process.join(timeout=grace_s)
        self.kill()


class ScoringPool:
    """`score_batch` for any verifier, in `workers` processes with a per-item timeout.

    recipe: zero-argument picklable callable building the verifier inside a worker (see
        `identity_recipe`). Checked for picklability here, so the error comes at set-up.
    timeout_s: hard wall-clock limit per item, counted from when a ready worker receives it
        (or, inside a chunk, from the answer to the item before it).
    start_timeout_s: how long a worker may take to import and build its verifier.
    max_chunk: most items sent to a worker in one message; a batch is cut into chunks small
        enough that every worker gets a few (the last ones stay balanced).

    Thread-safe: concurrent `score_batch` calls are serialized.
    """

    def __init__(
        self,
        recipe: Callable[[], Any],
        workers: int,
        timeout_s: float = 30.0,
        *,
        start_method: str = "spawn",
        start_timeout_s: float = 120.0,
        name: str = "verifier",
        max_chunk: int = 64,
    ):
        if not isinstance(max_chunk, int) or max_chunk < 1:
            raise ValueError(f"max_chunk must be an int >= 1, got {max_chunk!r}")
        if not isinstance(workers, int) or workers < 1:
            raise ValueError(f"workers must be an int >= 1 (use inline scoring for 0), got {workers!r}")
        if not timeout_s > 0:
            raise ValueError(f"timeout_s must be > 0, got {timeout_s!r}")
        if start_method not in START_METHODS:
            raise ValueError(
                f"start_method must be one of {START_METHODS} (a plain fork of a process with torch "
                f"or threads loaded can deadlock), got {start_method!r}"
            )
        self._recipe_bytes = pickle_recipe(recipe, name)
        self.name = name
        self.workers = workers
        self.timeout_s = float(timeout_s)
        self.start_timeout_s = float(start_timeout_s)
        self.max_chunk = max_chunk
        self.stats = PoolStats()
        self._ctx = mp.get_context(start_method)
        self._pool: list[_Worker] = []
        self._lock = threading.Lock()
        self._closed = False
        # Workers are daemons (they die with the interpreter) but a pool dropped without close()
        # should not keep processes around until then.
        self._finalizer = weakref.finalize(self, _stop_all, self._pool)

    # -- public -------------------------------------------------------------------------------

    def score_batch(self, completions: Sequence[str], examples: Sequence[dict]) -> list[Score]:
        check_batch(completions, examples)
        with self._lock:
            if self._closed:
                raise RuntimeError(f"{self.name}: ScoringPool is closed")
            try:
                return self._run(list(completions), list(examples))
            except BaseException:
                # Interrupted (Ctrl-C, a start error): busy workers would later answer for items
                # of this batch, so they go; idle ones stay for the next batch.
                for worker in [w for w in self._pool if w.items]:
                    self._remove(worker)
                raise

    def score(self, completion: str, example: dict) -> Score:
        return self.score_batch([completion], [example])[0]

    def close(self, grace_s: float = 2.0) -> None:
        with self._lock:
            self._closed = True
            _stop_all(self._pool, grace_s)
            self._finalizer.detach()

    def metrics(self, prefix: str = "verifier/") -> dict[str, float]:
        return self.stats.as_metrics(prefix)

    def __enter__(self) -> "ScoringPool":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # -- scheduling ---------------------------------------------------------------------------

    def _run(self, completions: list[str], examples: list[dict]) -> list[Score]:
        n = len(completions)
        results: list[Score | None] = [None] * n
        pending = deque(range(n))
        alone: set[int] = set()  # items that failed to pickle inside a chunk: sent one by one
        failures: Counter = Counter()  # error text -> count, one warning per batch
        while len(self._pool) < min(self.workers, max(n, 1)) and n:
            self._start_worker()
        while pending or any(w.items for w in self._pool):
            for worker in list(self._pool):
                # Loop: a chunk that could not be pickled leaves the worker idle.
                while worker in self._pool and worker.ready and not worker.items and pending:
                    self._send_chunk(worker, pending, alone, completions, examples, results, failures)
            if pending or any(w.items for w in self._pool) or any(not w.ready for w in self._pool):
                self._wait_and_collect(results, failures, pending)
        self.stats.items += n
        for message, count in failures.items():
            logger.warning("%s: %d/%d items scored 0: %s", self.name, count, n, message)
        return [r if r is not None else Score(0.0, {"error": "lost"}) for r in results]

    def _chunk_size(self, pending: int) -> int:
        # Several chunks per worker, so that a worker stuck on a slow chunk leaves the rest to others.
        return max(1, min(self.max_chunk, pending // (2 * self.workers)))

    def _send_chunk(self, worker: _Worker, pending: deque, alone: set[int], completions: list[str],
                    examples: list[dict], results: list, failures: Counter) -> None:
        """Send `worker` the next chunk of `pending` (a worker found dead is replaced)."""
        size = 1 if pending[0] in alone else self._chunk_size(len(pending))
        chunk = []
        while pending and len(chunk) < size and (not chunk or pending[0] not in alone):
            chunk.append(pending.popleft())
        try:
            worker.conn.send([(index, completions[index], examples[index]) for index in chunk])
        except Exception as exc:  # an unpicklable example, or the worker just died
            if isinstance(exc, (BrokenPipeError, EOFError, OSError)):
                pending.extendleft(reversed(chunk))
                self._replace(worker)
                return
            if len(chunk) == 1:
                results[chunk[0]] = self._failure(f"cannot send item: {exc}", failures)
            else:  # find the culprit: each item of this chunk goes alone
                alone.update(chunk)
                pending.extendleft(reversed(chunk))
            return
        self.stats.chunks += 1
        worker.items.extend(chunk)
        worker.deadline = time.monotonic() + self.timeout_s

    def _wait_and_collect(self, results: list[Score | None], failures: Counter, pending: deque | None = None) -> None:
        pending = deque() if pending is None else pending
        now = time.monotonic()
        deadlines = [w.deadline for w in self._pool if w.items]
        deadlines += [w.started_at + self.start_timeout_s for w in self._pool if not w.ready]
        timeout = max(0.0, min(deadlines) - now) if deadlines else None
        ready_conns = wait([w.conn for w in self._pool], timeout=timeout)
        for worker in list(self._pool):
            if worker.conn in ready_conns:
                self._receive_all(worker, results, failures, pending)
        now = time.monotonic()
        for worker in list(self._pool):
            if worker.items and now >= worker.deadline:
                index = worker.items.popleft()
                self.stats.timeouts += 1
                results[index] = Score(0.0, {"error": "timeout", "timeout_s": self.timeout_s})
                failures[f"timeout after {self.timeout_s:g} s (worker killed and replaced)"] += 1
                pending.extendleft(reversed(worker.items))  # the rest of its chunk was never scored
                worker.items.clear()
                self._replace(worker)
            elif not worker.ready and now >= worker.started_at + self.start_timeout_s:
                self._remove(worker)
                raise PoolStartError(
                    f"{self.name}: a worker did not become ready within {self.start_timeout_s:g} s"
                )

    def _receive_all(self, worker: _Worker, results: list[Score | None], failures: Counter, pending: deque) -> None:
        """Every message the worker has sent so far (a chunk's answers arrive one by one)."""
        while worker in self._pool:
            self._receive(worker, results, failures, pending)
            try:
                if worker not in self._pool or not worker.conn.poll():
                    return
            except (EOFError, OSError):
                return

    def _receive(self, worker: _Worker, results: list[Score | None], failures: Counter, pending: deque) -> None:
        try:
            message = worker.conn.recv()
        except (EOFError, OSError):
            self._worker_died(worker, results, failures, pending)
            return
        kind = message[0]
        if kind == "ready":
            worker.ready = True
        elif kind == "start_error":
            self._remove(worker)
            raise PoolStartError(f"{self.name}: a worker failed to build the verifier:\n{message[1]}")
        elif kind == "ok":
            _, index, reward, info = message
            results[index] = Score(reward, info)
            self._answered(worker, index)
        elif kind == "error":
            _, index, error = message
            results[index] = self._failure(error, failures)
            self._answered(worker, index)

    def _answered(self, worker: _Worker, index: int) -> None:
        if worker.items and worker.items[0] == index:
            worker.items.popleft()
        # The next item of the chunk starts now: its own full time limit.
        worker.deadline = time.monotonic() + self.timeout_s

    def _worker_died(self, worker: _Worker, results: list[Score | None], failures: Counter,
                     pending: deque) -> None:
        worker.process.join(timeout=5)
        code = worker.process.exitcode
        if worker.items:
            self.stats.crashes += 1
            text = f"worker process died (exit code {code})"
            results[worker.items.popleft()] = Score(0.0, {"error": text})
            failures[text] += 1
            pending.extendleft(reversed(worker.items))  # the rest of its chunk was never scored
            worker.items.clear()
        elif not worker.ready:
            self._remove(worker)
            raise PoolStartError(f"{self.name}: a worker exited with code {code} while starting")
        self._replace(worker)

    def _failure(self, error: str, failures: Counter) -> Score:
        self.stats.errors += 1
        self.stats.error_types[error.split(":", 1)[0]] += 1
        failures[error] += 1
        return Score(0.0, {"error": error})

    # -- worker lifecycle ---------------------------------------------------------------------

    def _start_worker(self) -> _Worker:
        worker = _Worker(self._ctx, self._recipe_bytes)
        self.stats.worker_starts += 1
        self._pool.append(worker)
        return worker

    def _remove(self, worker: _Worker) -> None:
        worker.kill()
        if worker in self._pool:
            self._pool.remove(worker)

    def _replace(self, worker: _Worker) -> None:
        self._remove(worker)
        self._start_worker()


def _stop_all(pool: list[_Worker], grace_s: float = 2.0) -> None:
    for worker in pool:
        try:
            worker.conn.send(None)
        except (OSError, ValueError):
            pass
    deadline = time.monotonic() + grace_s
    for worker in pool:
        worker.process.join(timeout=max(0.0, deadline - time.monotonic()))
        worker.kill()
    pool.clear()


# -- inside the worker process ----------------------------------------------------------------


def _worker_main(conn: Connection, recipe_bytes: bytes) -> None:
    import signal

    parent_pid = os.getppid()  # the trainer under "spawn", the fork server under "forkserver"
    # Ctrl-C goes to the whole process group; the parent decides when workers stop.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    threading.Thread(target=_exit_when_orphaned, args=(parent_pid,), daemon=True).start()
    try:
        verifier = pickle.loads(recipe_bytes)()
    except BaseException:
        conn.send(("start_error", traceback.format_exc(limit=8)))
        return
    conn.send(("ready", None))
    while True:
        try:
            message = conn.recv()
        except (EOFError, OSError):
            return
        if message is None:
            return
        for index, completion, example in message:  # a chunk: answer each item when it is done
            try:
                score = as_score(verifier.score(completion, example), "verifier")
                reply = ("ok", index, score.reward, score.info)
                conn.send(reply)
            except Exception as exc:
                conn.send(("error", index, _describe(exc)))


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"[:500]


def _exit_when_orphaned(parent_pid: int) -> None:
    # If the trainer is SIGKILLed, the pipe closes, but a worker stuck in a verifier never reads
    # it: this thread makes sure no worker outlives its parent by more than a second.
    while True:
        time.sleep(1.0)
        if os.getppid() != parent_pid:
            os._exit(0)


class PooledVerifier:
    """Any verifier with its `score_batch` moved into a `ScoringPool` (workers > 0).

    `score` (one item) stays inline. The verifier must pickle, or pass `recipe` (a picklable
    zero-argument callable that builds it in a worker).
    """

    def __init__(
        self,
        verifier: Any,
        *,
        workers: int,
        timeout_s: float = 30.0,
        recipe: Callable[[], Any] | None = None,
        start_method: str = "spawn",
    ):
        self.verifier = verifier
        self.name = getattr(verifier, "name", type(verifier).__name__)
        self.pool = ScoringPool(
            recipe or identity_recipe(verifier), workers, timeout_s, start_method=start_method, name=self.name
        )

    def score(self, completion: str, example: dict) -> Score:
        return as_score(self.verifier.score(completion, example), f"verifier {self.name!r}")

    def score_batch(self, completions: Sequence[str], examples: Sequence[dict]) -> list[Score]:
        return self.pool.score_batch(completions, examples)

    def metrics(self, prefix: str = "verifier/") -> dict[str, float]:
        return self.pool.metrics(prefix)

    def close(self) -> None:
        self.pool.close()

    def __enter__(self) -> "PooledVerifier":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
