"""Fixtures for the sandbox tests: a shared pool, and ways to look at its processes from the host."""
from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from sandboxes import SandboxPool, SandboxUnavailable
from sandboxes.worker import WorkerProcess

# Processes in an idle bwrap worker: bwrap's monitor, bwrap's pid 1 and the zygote (a job's
# process is forked only when the job arrives).
IDLE_PROCESSES_PER_WORKER = 3


@pytest.fixture(scope="session")
def bwrap_works():
    """Skip (with the reason) on hosts where the bwrap sandbox cannot start at all."""
    try:
        WorkerProcess("bwrap").close()
    except SandboxUnavailable as exc:
        pytest.skip(f"bwrap sandbox unavailable here: {exc}")


@pytest.fixture(scope="module")
def pool(bwrap_works):
    with SandboxPool(workers=2) as shared:
        wait_for_workers(shared)
        yield shared


def wait_for_workers(pool: SandboxPool, timeout: float = 30.0) -> None:
    """Until every worker has started (they start in the background)."""
    deadline = time.monotonic() + timeout
    while len(pool.worker_pids()) < pool.workers or pool.workers_started < pool.workers:
        if time.monotonic() > deadline:
            raise AssertionError("sandbox workers did not start")
        time.sleep(0.02)
    pool.map(["pass"] * pool.workers)


def process_table() -> dict[int, tuple[int, int]]:
    """pid -> (parent pid, real uid) for every process on the host."""
    table = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            status = Path(f"/proc/{entry}/status").read_text()
        except OSError:
            continue
        fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
        table[int(entry)] = (int(fields["PPid"]), int(fields["Uid"].split()[0]))
    return table


def descendants(roots, table=None) -> set[int]:
    """The roots and every process below them."""
    table = process_table() if table is None else table
    children: dict[int, list[int]] = {}
    for pid, (ppid, _) in table.items():
        children.setdefault(ppid, []).append(pid)
    found, stack = set(), [r for r in roots if r in table]
    while stack:
        pid = stack.pop()
        if pid not in found:
            found.add(pid)
            stack.extend(children.get(pid, []))
    return found


def sandbox_processes(pool: SandboxPool) -> set[int]:
    return descendants(pool.worker_pids())


@pytest.fixture(name="sandbox_processes")
def sandbox_processes_fixture():
    """pool -> the host pids of every process in its sandboxes (workers included)."""
    return sandbox_processes


@pytest.fixture
def assert_no_leftovers():
    """Call with a pool: waits (briefly) until only the idle workers' own processes remain."""

    def check(pool: SandboxPool, timeout: float = 5.0) -> None:
        expected = IDLE_PROCESSES_PER_WORKER * len(pool.worker_pids())
        deadline = time.monotonic() + timeout
        while True:
            found = sandbox_processes(pool)
            if len(found) <= expected:
                return
            if time.monotonic() > deadline:
                raise AssertionError(f"{len(found)} sandbox processes remain, expected {expected}: "
                                     f"{sorted(found)}")
            time.sleep(0.05)

    return check
