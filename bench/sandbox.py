"""Executions per second: plain subprocess vs one bwrap per job vs the warm sandbox pool.

    python bench/sandbox.py [--jobs 300] [--workers N]

Two programs: a trivial one (`print(1)`) and one that runs ten small asserts. Every mode runs
the same number of jobs with the same concurrency (one in flight per worker). Besides wall-clock
throughput, it reports CPU milliseconds per job (host + sandbox processes), which stays
meaningful when other work shares the machine; `idle/s` = usable cores / CPU per job is what
the mode would reach on otherwise idle cores.
"""
from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sandboxes import Limits, SandboxPool  # noqa: E402
from sandboxes.pool import default_workers  # noqa: E402
from sandboxes.worker import bwrap_argv, find_bwrap, interpreter_layout, _sandbox_env  # noqa: E402

TRIVIAL = "print(1)\n"
TEN_ASSERTS = """
def add(a, b):
    return a + b

def is_palindrome(s):
    return s == s[::-1]

assert add(1, 2) == 3
assert add(-1, 1) == 0
assert add(10, 5) == 15
assert add(0, 0) == 0
assert is_palindrome("racecar")
assert not is_palindrome("abc")
assert sorted([3, 1, 2]) == [1, 2, 3]
assert sum(range(10)) == 45
assert "".join(reversed("abc")) == "cba"
assert max([4, 9, 2]) == 9
print("ok")
"""


def _tree_cpu_s() -> float:
    """CPU seconds of every live descendant of this process, children's reaped children
    included (the pool's workers are not reaped until it closes)."""
    tick = os.sysconf("SC_CLK_TCK")
    procs = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2:].split()
        procs[int(entry)] = (int(fields[1]), sum(int(x) for x in fields[11:15]))
    me, total = os.getpid(), 0
    for pid, (ppid, ticks) in procs.items():
        parent = ppid
        while parent in procs and parent != me:
            parent = procs[parent][0]
        if parent == me:
            total += ticks
    return total / tick


def _cpu_s() -> float:
    usage = [resource.getrusage(who) for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)]
    return sum(u.ru_utime + u.ru_stime for u in usage) + _tree_cpu_s()


def _measure(run_all, jobs: int):
    cpu0, t0 = _cpu_s(), time.perf_counter()
    statuses = run_all()
    wall = time.perf_counter() - t0
    cpu = _cpu_s() - cpu0
    bad = [s for s in statuses if s != "ok"]
    if bad:
        raise SystemExit(f"benchmark jobs failed: {bad[:5]}")
    return jobs / wall, 1000 * cpu / jobs


def plain_subprocess(code: str, jobs: int, workers: int):
    exe = os.path.realpath(getattr(sys, "_base_executable", None) or sys.executable)

    def one(_):
        proc = subprocess.run([exe, "-I", "-S", "-c", code], capture_output=True, timeout=30)
        return "ok" if proc.returncode == 0 else f"exit {proc.returncode}: {proc.stderr[-200:]!r}"

    with ThreadPoolExecutor(workers) as ex:
        return _measure(lambda: list(ex.map(one, range(jobs))), jobs)


def bwrap_per_job(code: str, jobs: int, workers: int):
    """The same namespaces and binds as the pool, but a fresh bwrap + interpreter per job."""
    layout = interpreter_layout()
    config = {"env": _sandbox_env(layout)}
    base = bwrap_argv(find_bwrap(), layout, config)
    # --as-pid-1: the interpreter is bwrap's own child, so its CPU time is accounted to us.
    base = base[:base.index("--uid")] + ["--as-pid-1", "--chdir", "/tmp", layout.executable,
                                         "-I", "-S", "-c"]

    def one(_):
        proc = subprocess.run(base + [code], capture_output=True, timeout=30, env={})
        return "ok" if proc.returncode == 0 else f"exit {proc.returncode}: {proc.stderr[-200:]!r}"

    with ThreadPoolExecutor(workers) as ex:
        return _measure(lambda: list(ex.map(one, range(jobs))), jobs)


def pool(code: str, jobs: int, workers: int):
    with SandboxPool(workers=workers, limits=Limits(wall_s=30)) as p:
        p.map([code] * (2 * workers))  # warm: every worker started
        return _measure(lambda: [r.status for r in p.map([code] * jobs)], jobs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=300, help="jobs per pool measurement")
    parser.add_argument("--workers", type=int, default=default_workers())
    args = parser.parse_args()
    cores = default_workers()
    slow_jobs = max(20, args.jobs // 3)
    print(f"{cores} usable cores, workers={args.workers}, load average before: "
          f"{os.getloadavg()[0]:.2f}", flush=True)
    rows = []
    for label, code in (("trivial", TRIVIAL), ("ten asserts", TEN_ASSERTS)):
        results = {
            "plain subprocess (no isolation)": plain_subprocess(code, slow_jobs, args.workers),
            "one bwrap per job": bwrap_per_job(code, slow_jobs, args.workers),
            f"pool, {args.workers} workers": pool(code, args.jobs, args.workers),
            f"pool, {2 * args.workers} workers": pool(code, args.jobs, 2 * args.workers),
        }
        base = results["one bwrap per job"]
        for mode, (rate, cpu_ms) in results.items():
            rows.append((label, mode, rate, rate / base[0], cpu_ms, cores * 1000 / cpu_ms))
    print(f"\n| program | mode | exec/s | vs one bwrap per job | CPU ms/job | idle/s |")
    print("|---|---|---:|---:|---:|---:|")
    for label, mode, rate, ratio, cpu_ms, idle in rows:
        print(f"| {label} | {mode} | {rate:.0f} | {ratio:.1f}x | {cpu_ms:.1f} | {idle:.0f} |")
    print(f"\nload average after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
