"""Hostile programs. Each case checks the verdict AND that the host (this process, its files,
its network, the pool's workers) came out unharmed."""
from __future__ import annotations

import json
import os
import socket
import threading
import time
from pathlib import Path

import pytest

from sandboxes import Limits, SandboxPool

PROJECT = Path(__file__).resolve().parents[2]


def run(pool, code, **limits):
    return pool.run(code, limits=Limits(**limits) if limits else None)


def assert_pool_healthy(pool, workers_started_before):
    """The pool still answers correctly, without having had to replace a worker."""
    result = pool.run("print(6 * 7)")
    assert (result.status, result.stdout) == ("ok", "42\n")
    assert pool.workers_started == workers_started_before


# -- processes ------------------------------------------------------------------------------
def test_fork_bomb_is_capped_at_max_processes(pool, assert_no_leftovers):
    started = pool.workers_started
    code = """
import os, time
children = 0
try:
    while True:
        if os.fork() == 0:
            time.sleep(60)
            os._exit(0)
        children += 1
except OSError as exc:
    print(children, exc.errno)
"""
    result = run(pool, code, max_processes=16, wall_s=10)
    assert result.status == "ok", result
    children, errno_ = map(int, result.stdout.split())
    assert errno_ == 11  # EAGAIN from RLIMIT_NPROC
    assert 0 < children < 16
    assert_no_leftovers(pool)  # the sleeping children died with the job
    assert_pool_healthy(pool, started)


def test_endless_fork_bomb_is_contained_while_it_runs(pool, assert_no_leftovers, sandbox_processes):
    """Forks forever in every process; sample the host's process table while it rages."""
    started = pool.workers_started
    idle = len(sandbox_processes(pool))
    peak, stop = [0], threading.Event()

    def sample():
        while not stop.is_set():
            peak[0] = max(peak[0], len(sandbox_processes(pool)))
            time.sleep(0.02)

    sampler = threading.Thread(target=sample)
    sampler.start()
    try:
        code = "import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass\n"
        result = run(pool, code, max_processes=24, wall_s=2)
    finally:
        stop.set()
        sampler.join()
    assert result.status == "timeout", result
    assert peak[0] > idle, "the sampler never saw the bomb"
    assert peak[0] <= idle + 24 + 1, f"{peak[0] - idle} job processes, limit 24"
    assert_no_leftovers(pool)
    assert_pool_healthy(pool, started)


def test_background_child_is_gone_after_exit(pool, assert_no_leftovers):
    code = """
import os, time
if os.fork() == 0:
    os.setsid()          # a daemon: new session, then double fork
    if os.fork() == 0:
        time.sleep(60)
    os._exit(0)
print("parent exits")
"""
    t0 = time.monotonic()
    result = run(pool, code)
    assert (result.status, result.stdout) == ("ok", "parent exits\n"), result
    assert time.monotonic() - t0 < 5  # not waiting for the daemon's sleep
    assert_no_leftovers(pool)


def test_killing_its_parent_harms_nothing(pool):
    started = pool.workers_started
    code = """
import os, signal
print(os.getppid(), [p for p in os.listdir("/proc") if p.isdigit()])
for target in (os.getppid(), 1, -1):
    try:
        os.kill(target, signal.SIGKILL)
    except OSError as exc:
        print("refused", target, exc.errno)
print("still here")
"""
    result = run(pool, code)
    assert result.status == "ok", result
    lines = result.stdout.splitlines()
    assert lines[0] == "0 ['1']"  # the zygote is invisible: only the job itself is in /proc
    assert lines[-1] == "still here"
    assert_pool_healthy(pool, started)


@pytest.mark.parametrize("code, wall", [
    ("while True:\n    pass", 1.0),
    ("sum(range(10**13))", 1.0),  # one long C call: no bytecode boundary to interrupt
    ("import signal\nsignal.signal(signal.SIGTERM, signal.SIG_IGN)\nsignal.signal(signal.SIGINT, signal.SIG_IGN)\n"
     "import os\nif os.fork() == 0:\n    os.setsid()\nwhile True:\n    pass", 1.0),
])
def test_wall_clock_limit_kills_the_whole_tree(pool, assert_no_leftovers, code, wall):
    t0 = time.monotonic()
    result = run(pool, code, wall_s=wall)
    elapsed = time.monotonic() - t0
    assert result.status == "timeout", result
    assert result.exit_code is None and "wall-clock" in result.detail
    assert wall <= elapsed < wall + 3
    assert_no_leftovers(pool)


def test_cpu_limit(pool):
    result = run(pool, "while True:\n    pass", cpu_s=1, wall_s=30)
    assert result.status == "timeout", result
    assert "CPU" in result.detail and result.cpu_s >= 0.5


# -- memory, output, files --------------------------------------------------------------------
@pytest.mark.parametrize("code", [
    "x = bytearray(4 * 1024**3)",
    "chunks = []\nwhile True:\n    chunks.append(bytearray(2**20))",
])
def test_memory_bomb(pool, code):
    started = pool.workers_started
    result = run(pool, code, memory_mb=256)
    assert result.status == "memory", result
    assert "MemoryError" in result.stderr
    assert_pool_healthy(pool, started)


@pytest.mark.parametrize("stream", ["stdout", "stderr"])
def test_huge_output_is_capped(pool, stream):
    code = f"import sys\nprint('first line', file=sys.{stream}, flush=True)\nwhile True:\n    sys.{stream}.write('x' * 65536)"
    result = run(pool, code, max_output_bytes=100_000, wall_s=10)
    assert result.status == "output_limit", result
    text = getattr(result, stream)
    assert len(text) == 100_000 and text.startswith("first line\n")


def test_huge_file_in_tmp(pool):
    code = """
import errno
try:
    with open("big", "wb") as f:
        f.write(b"x" * (8 * 2**20))
except OSError as exc:
    print("file", errno.errorcode[exc.errno])
written = 0
try:
    for i in range(100):
        with open(f"part{i}", "wb") as f:
            f.write(b"y" * 2**20)
        written += 1
except OSError as exc:
    print("tmpfs", errno.errorcode[exc.errno], written)
"""
    result = run(pool, code, max_file_mb=4, tmp_mb=8)
    assert result.status == "ok", result
    first, second = result.stdout.splitlines()
    assert first == "file EFBIG"
    assert second.startswith("tmpfs ENOSPC") and int(second.split()[-1]) < 8


def test_too_many_open_files(pool):
    before = len(os.listdir("/proc/self/fd"))
    code = """
import errno
files = []
try:
    while True:
        files.append(open("/dev/null"))
except OSError as exc:
    print(len(files), errno.errorcode[exc.errno])
"""
    result = run(pool, code, max_open_files=64)
    assert result.status == "ok", result
    count, err = result.stdout.split()
    assert err == "EMFILE" and int(count) <= 64
    assert len(os.listdir("/proc/self/fd")) == before


# -- the host's files -------------------------------------------------------------------------
def test_cannot_write_outside_its_tmp(pool):
    targets = ["/usr/evil", "/opt/python/evil", "/evil", "/dev/evil", "/proc/sys/kernel/hostname",
               "/etc/evil", str(PROJECT / "evil")]
    code = f"""
import os
for path in {targets!r}:
    try:
        with open(path, "w") as f:
            f.write("x")
        print("WROTE", path)
    except OSError as exc:
        print("refused", path, type(exc).__name__)
for path in ("/usr", "/tmp/../usr", "/"):
    try:
        os.mkdir(path + "/newdir")
        print("WROTE", path)
    except OSError:
        pass
with open("mine.txt", "w") as f:  # its own working directory is writable
    f.write("ok")
print("own", open("mine.txt").read())
"""
    result = run(pool, code)
    assert result.status == "ok", result
    assert "WROTE" not in result.stdout
    assert result.stdout.splitlines()[-1] == "own ok"
    for path in targets[:2] + [str(PROJECT / "evil")]:
        assert not os.path.exists(path)


def test_cannot_read_the_project_home_or_host_tmp(pool, tmp_path):
    canary = tmp_path / "canary.txt"
    canary.write_text("host secret")
    paths = [str(PROJECT / "pyproject.toml"), str(PROJECT), "/root", "/root/.bashrc", "/home",
             "/etc/passwd", "/etc/shadow", str(canary), str(tmp_path), "/work"]
    code = f"""
import json, os
seen = {{}}
for path in {paths!r}:
    try:
        seen[path] = sorted(os.listdir(path)) if os.path.isdir(path) else open(path).read()[:20]
    except OSError as exc:
        seen[path] = type(exc).__name__
print(json.dumps({{"seen": seen, "root": sorted(os.listdir("/"))}}))
"""
    result = run(pool, code)
    assert result.status == "ok", result
    report = json.loads(result.stdout)
    for path, what in report["seen"].items():
        assert what in ("FileNotFoundError", "PermissionError"), f"{path} was readable: {what!r}"
    assert set(report["root"]) <= {"bin", "dev", "lib", "lib32", "lib64", "libx32", "opt", "proc",
                                   "sbin", "tmp", "usr"}


def test_runs_unprivileged(pool):
    code = """
import ctypes, os
status = dict(line.split(":", 1) for line in open("/proc/self/status").read().splitlines())
print(status["CapEff"].strip(), status["CapBnd"].strip(), status["NoNewPrivs"].strip())
libc = ctypes.CDLL(None, use_errno=True)
print("unshare_user", libc.unshare(0x10000000), "mount", libc.mount(b"tmpfs", b"/tmp", b"tmpfs", 0, None))
"""
    result = run(pool, code)
    assert result.status == "ok", result
    caps, line = result.stdout.splitlines()
    assert caps == "0000000000000000 0000000000000000 1"
    assert line == "unshare_user -1 mount -1"


# -- network ----------------------------------------------------------------------------------
def test_no_network(pool):
    tcp = socket.socket()
    tcp.bind(("127.0.0.1", 0))
    tcp.listen()
    tcp.setblocking(False)
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp.bind(("127.0.0.1", 0))
    udp.setblocking(False)
    tcp_port, udp_port = tcp.getsockname()[1], udp.getsockname()[1]
    code = f"""
import json, socket
out = {{"interfaces": [name for _, name in socket.if_nameindex()]}}
for host, port in (("127.0.0.1", {tcp_port}), ("1.1.1.1", 80), ("10.0.0.1", 22)):
    s = socket.socket()
    s.settimeout(2)
    try:
        s.connect((host, port))
        out["tcp " + host] = "CONNECTED"
    except OSError as exc:
        out["tcp " + host] = type(exc).__name__
for host, port in (("127.0.0.1", {udp_port}), ("8.8.8.8", 53)):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        s.sendto(b"hello", (host, port))
        out["udp " + host] = "sent"
    except OSError as exc:
        out["udp " + host] = type(exc).__name__
try:
    socket.getaddrinfo("example.com", 80)
    out["dns"] = "RESOLVED"
except OSError as exc:
    out["dns"] = type(exc).__name__
print(json.dumps(out))
"""
    try:
        result = run(pool, code)
        assert result.status == "ok", result
        out = json.loads(result.stdout)
        assert out["interfaces"] == ["lo"]
        assert out["tcp 127.0.0.1"] == "ConnectionRefusedError"  # its own loopback, not ours
        assert out["tcp 1.1.1.1"] == out["tcp 10.0.0.1"] == "OSError"  # network unreachable
        assert out["udp 8.8.8.8"] == "OSError"
        assert out["dns"] == "gaierror"
        with pytest.raises(BlockingIOError):
            tcp.accept()
        with pytest.raises(BlockingIOError):
            udp.recv(100)  # the loopback datagram went to the sandbox's own lo
    finally:
        tcp.close()
        udp.close()


# -- other jobs -------------------------------------------------------------------------------
def test_cannot_see_a_concurrent_jobs_files(pool):
    secret = "s3cret-%d" % os.getpid()
    writer = f"""
import time
from multiprocessing import shared_memory
start = time.monotonic()
open("secret.txt", "w").write({secret!r})
open("/dev/shm/secret", "w").write({secret!r})
time.sleep(2)
print(start, time.monotonic())
"""
    snooper = f"""
import os, time
time.sleep(0.5)
when = time.monotonic()
needle = {secret[::-1]!r}[::-1]  # (its own source must not contain the secret)
places = ["/tmp", "/dev/shm", "/opt", "/"]
places += [f"/proc/{{p}}/{{d}}" for p in os.listdir("/proc") if p.isdigit() for d in ("cwd", "root/tmp")]
found = []
for top in places:
    for root, dirs, files in os.walk(top):
        dirs[:] = [d for d in dirs if os.path.join(root, d) not in ("/proc", "/usr", "/dev", "/opt/python")]
        for name in files:
            path = os.path.join(root, name)
            try:
                if needle in open(path, errors="ignore").read(4096):
                    found.append(path)
            except OSError:
                pass
print(when, found)
"""
    futures = [pool.submit(writer), pool.submit(snooper)]
    written, snooped = (f.result() for f in futures)
    assert written.status == snooped.status == "ok", (written, snooped)
    start, end = map(float, written.stdout.split())
    when, found = snooped.stdout.split(" ", 1)
    assert start < float(when) < end, "the jobs did not overlap"
    assert found.strip() == "[]"
    # Control: the same search inside the writing job does find the secret.
    control = pool.run(writer.replace("time.sleep(2)", "") + snooper.replace("time.sleep(0.5)", ""))
    assert "/tmp/secret.txt" in control.stdout and "/dev/shm/secret" in control.stdout, control


def test_nothing_survives_into_the_next_job(bwrap_works, assert_no_leftovers):
    with SandboxPool(workers=1) as solo:
        first = solo.run("""
import os, time
open("left.txt", "w").write("x")
open("/dev/shm/left", "w").write("x")
if os.fork() == 0:
    time.sleep(60)
print(os.getpid())
""")
        assert first.status == "ok", first
        second = solo.run("""
import os
print(sorted(os.listdir(".")), os.listdir("/dev/shm"), [p for p in os.listdir("/proc") if p.isdigit()])
""")
        assert (second.status, second.stdout) == ("ok", "['solution.py'] [] ['1']\n"), second
        assert_no_leftovers(solo)


# -- ordinary endings -------------------------------------------------------------------------
@pytest.mark.parametrize("code, status, exit_code", [
    ("import sys\nprint('a')\nsys.exit(0)", "ok", 0),
    ("import os\nprint('a', flush=True)\nos._exit(0)", "ok", 0),
    ("exit()", "ok", 0),
    ("raise SystemExit", "ok", 0),
    ("import sys\nsys.exit(3)", "error", 3),
    ("import os\nos._exit(5)", "error", 5),
    ("import sys\nsys.exit('bad input')", "error", 1),
    ("raise ValueError('boom')", "error", 1),
    ("def f(:\n    pass", "error", 1),
    ("import os, signal\nos.kill(os.getpid(), signal.SIGSEGV)", "ok", 0),  # pid 1 ignores it
    ("import ctypes\nctypes.string_at(0)", "error", -11),  # a real segfault
])
def test_exit_paths(pool, code, status, exit_code):
    result = run(pool, code)
    assert (result.status, result.exit_code) == (status, exit_code), result
    if "bad input" in code:
        assert result.stderr == "bad input\n"
    if "boom" in code:
        assert 'File "/tmp/solution.py", line 1' in result.stderr and "ValueError: boom" in result.stderr
    if "print('a'" in code:
        assert result.stdout == "a\n"
