"""The code that runs inside a sandbox worker: a warm zygote, a supervisor per job, the job's
init process and the job itself.

Process tree inside one worker (bwrap backend):

    bwrap's pid 1 ── zygote (ns root, keeps capabilities, never sees job data)
                        └─ supervisor S  (one per job: reads the job, new mount/pid/ipc namespaces,
                           │              private tmpfs, pumps stdin/stdout/stderr, enforces the
                           │              wall clock and the output cap, writes the result)
                           └─ init I     (pid 1 of the job's pid namespace; reaps, reports status)
                               └─ job J  (unprivileged uid, rlimits, runs the untrusted code in
                                          the already warm interpreter: no exec, no start-up cost)

The zygote forks a fresh S for every job and only ever waits for it, so job code, inputs and
outputs never enter the zygote's memory and cannot leak into later jobs' forked address spaces.
When I exits the kernel kills everything left in the job's pid namespace, and the tmpfs dies
with the mount namespace, so a job leaves nothing behind.

This file is self-contained (stdlib only): the host passes its source to `python -I -S -c`
because the project directory is deliberately not visible inside the sandbox. The host imports
it too, for the frame format.
"""
from __future__ import annotations

# Deliberately few imports: every module loaded here is copied into each job's forked address
# space, so a lean zygote forks faster. No json/signal/re here (signal pulls in enum, json re).
import _signal
import atexit as _atexit
import builtins as _builtins
import ctypes
import gc
import marshal
import os
import resource
import select
import sys
import time

# ---------------------------------------------------------------------------------------------
# Frames: 4-byte big-endian header length, a header, then raw blobs whose byte sizes the header
# lists under "sizes". Host -> sandbox headers are marshal (the host's own trusted data, read by
# the same interpreter build); sandbox -> host headers are JSON, so the host never feeds
# sandbox-made bytes to anything but a JSON parser.
# ---------------------------------------------------------------------------------------------
MAX_HEADER_BYTES = 1 << 20

# Exit codes of the supervisor, read by the zygote.
_S_REPLIED = 0
_S_HOST_GONE = 3


def encode_frame(header_bytes: bytes, blobs=()) -> bytes:
    """`header_bytes` must encode a dict whose "sizes" lists len(blob) for each blob."""
    return b"".join([len(header_bytes).to_bytes(4, "big"), header_bytes, *blobs])


def to_json(value) -> str:
    """A tiny JSON encoder for the flat replies built in here (no json import in the zygote)."""
    if value is None:
        return "null"
    if value is True or value is False:
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        out = ['"']
        for ch in value:
            if ch in '"\\':
                out.append("\\" + ch)
            elif ord(ch) < 0x20:
                out.append("\\u%04x" % ord(ch))
            else:
                out.append(ch)
        out.append('"')
        return "".join(out)
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(to_json(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ",".join(to_json(str(k)) + ":" + to_json(v) for k, v in value.items()) + "}"
    raise TypeError(f"cannot encode {type(value).__name__}")


def reply_frame(header: dict, blobs=()) -> bytes:
    header = dict(header, sizes=[len(b) for b in blobs])
    return encode_frame(to_json(header).encode("utf-8", "surrogatepass"), blobs)


class FrameDecoder:
    """Incremental decoder: feed bytes, take complete frames. `max_body` bounds memory."""

    def __init__(self, max_body: int, decode_header):
        self.max_body = max_body
        self.decode_header = decode_header
        self._buf = bytearray()

    def feed(self, data: bytes) -> None:
        self._buf += data

    def empty(self) -> bool:
        return not self._buf

    def frame(self):
        """Return (header, blobs) when a whole frame is buffered, else None."""
        if len(self._buf) < 4:
            return None
        head_len = int.from_bytes(self._buf[:4], "big")
        if head_len > MAX_HEADER_BYTES:
            raise ValueError(f"frame header of {head_len} bytes exceeds {MAX_HEADER_BYTES}")
        if len(self._buf) < 4 + head_len:
            return None
        header = self.decode_header(bytes(self._buf[4:4 + head_len]))
        sizes = header.get("sizes", []) if isinstance(header, dict) else None
        if not isinstance(sizes, list) or not all(type(n) is int and n >= 0 for n in sizes):
            raise ValueError("frame header is not a dict with valid blob sizes")
        if sum(sizes) > self.max_body:
            raise ValueError(f"frame body of {sum(sizes)} bytes exceeds {self.max_body}")
        end = 4 + head_len + sum(sizes)
        if len(self._buf) < end:
            return None
        blobs, pos = [], 4 + head_len
        for n in sizes:
            blobs.append(bytes(self._buf[pos:pos + n]))
            pos += n
        del self._buf[:end]
        return header, blobs


def read_job_frame(fd: int):
    """Blocking read of one host frame; raises EOFError on a closed pipe."""
    decoder = FrameDecoder(1 << 40, marshal.loads)
    while True:
        got = decoder.frame()
        if got is not None:
            return got
        chunk = os.read(fd, 1 << 16)
        if not chunk:
            raise EOFError("pipe closed")
        decoder.feed(chunk)


def write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


# ---------------------------------------------------------------------------------------------
# Thin libc wrappers (Python 3.11 has no os.unshare / mount).
# ---------------------------------------------------------------------------------------------
CLONE_NEWNS = 0x00020000
CLONE_NEWIPC = 0x08000000
CLONE_NEWPID = 0x20000000
MS_NOSUID, MS_NODEV, MS_NOEXEC, MS_REC, MS_PRIVATE = 2, 4, 8, 16384, 1 << 18
MNT_DETACH = 2
PR_SET_PDEATHSIG = 1
PR_CAPBSET_DROP = 24
PR_SET_SECUREBITS = 28
PR_SET_NO_NEW_PRIVS = 38
# exec never grants root capabilities, setuid away from 0 always clears them, no ambient
# capabilities: each bit set (or cleared) and locked.
_SECUREBITS = 0x01 | 0x02 | 0x08 | 0x20 | 0x40 | 0x80

_libc = None


def _c():
    global _libc
    if _libc is None:
        _libc = ctypes.CDLL(None, use_errno=True)
        _libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p,
                                ctypes.c_ulong, ctypes.c_char_p]
        _libc.umount2.argtypes = [ctypes.c_char_p, ctypes.c_int]
        _libc.unshare.argtypes = [ctypes.c_int]
        _libc.prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong,
                                ctypes.c_ulong, ctypes.c_ulong]
    return _libc


def _check(ret: int, what: str) -> None:
    if ret != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def _mount(source, target, fstype, flags=0, data=None) -> None:
    enc = lambda s: None if s is None else s.encode()  # noqa: E731
    _check(_c().mount(enc(source), enc(target), enc(fstype), flags, enc(data)),
           f"mount {fstype or source} on {target}")


def _prctl(option: int, arg: int = 0) -> int:
    return _c().prctl(option, arg, 0, 0, 0)


class _CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _CapData(ctypes.Structure):
    _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32),
                ("inheritable", ctypes.c_uint32)]


_CAP_VERSION_3 = 0x20080522


def _restrict_future_capabilities() -> None:
    """Once, in the zygote: an empty bounding set and inheritable set, and locked securebits.
    The zygote keeps the effective capabilities it needs to build each job's namespaces, but
    nothing it forks can ever gain a capability again by exec, and a job that leaves uid 0
    (or clears its sets) holds none."""
    for cap in range(64):
        if _prctl(PR_CAPBSET_DROP, cap) != 0:
            break  # EINVAL past the last capability the kernel knows
    _check(_prctl(PR_SET_SECUREBITS, _SECUREBITS), "prctl(PR_SET_SECUREBITS)")
    header, data = _CapHeader(_CAP_VERSION_3, 0), (_CapData * 2)()
    _check(_c().capget(ctypes.byref(header), data), "capget")
    for half in data:
        half.inheritable = 0
    _check(_c().capset(ctypes.byref(header), data), "capset")


_NO_CAPABILITIES = (_CapData * 2)()


def _clear_capability_sets() -> None:
    _check(_c().capset(ctypes.byref(_CapHeader(_CAP_VERSION_3, 0)), _NO_CAPABILITIES), "capset")


# ---------------------------------------------------------------------------------------------
# Zygote
# ---------------------------------------------------------------------------------------------
SIGKILL, SIGXCPU, SIGXFSZ = _signal.SIGKILL, _signal.SIGXCPU, _signal.SIGXFSZ
_SIGNAL_NAMES = {getattr(_signal, n): n for n in (
    "SIGHUP", "SIGINT", "SIGQUIT", "SIGILL", "SIGTRAP", "SIGABRT", "SIGBUS", "SIGFPE", "SIGKILL",
    "SIGUSR1", "SIGSEGV", "SIGUSR2", "SIGPIPE", "SIGALRM", "SIGTERM", "SIGXCPU", "SIGXFSZ",
    "SIGSYS")}


_JOB_STDIO = None


def _build_job_stdio():
    """sys.stdin/stdout/stderr for every job, built once: on fds 0-2, as Python builds them
    for pipes (UTF-8; stdout block-buffered, stderr line-buffered with backslashreplace).
    Built while 0-2 are pipes, because the wrappers remember whether their file is seekable."""
    import io
    saved = [os.dup(fd) for fd in (0, 1, 2)]
    r, w = os.pipe()
    os.dup2(r, 0)
    os.dup2(w, 1)
    os.dup2(w, 2)
    streams = (io.open(0, "r", encoding="utf-8", closefd=False),
               io.open(1, "w", encoding="utf-8", closefd=False),
               io.open(2, "w", encoding="utf-8", errors="backslashreplace", closefd=False,
                       buffering=1))
    for stream in streams:
        stream.seekable()
    for fd, old in zip((0, 1, 2), saved):
        os.dup2(old, fd)
        os.close(old)
    os.close(r)
    os.close(w)
    return streams


def zygote(config: dict) -> None:
    global _JOB_STDIO
    _JOB_STDIO = _build_job_stdio()
    # Keep the protocol pipes off fds 0-2 so no job can inherit them by accident.
    proto_in, proto_out = os.dup(0), os.dup(1)
    devnull = os.open("/dev/null", os.O_RDWR)
    os.dup2(devnull, 0)
    os.dup2(2, 1)
    if config["isolate"]:
        _forbid_nested_user_namespaces()
        _restrict_future_capabilities()
    else:
        # No namespace ties this worker to the host process: die with the thread that spawned us.
        _prctl(PR_SET_PDEATHSIG, SIGKILL)
        if os.getppid() != config["host_pid"]:
            os._exit(1)
    import site
    site.setquit()  # `exit()` / `quit()` / `help()` without site-packages on sys.path (-S)
    site.setcopyright()
    site.sethelper()
    _c()
    # Objects alive now are shared by every job; frozen, the collector never walks (and so
    # never copies) their pages in the forked children.
    gc.freeze()

    write_all(proto_out, reply_frame({"ready": True, "python": sys.version.split()[0]}))
    while True:
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                code = supervise(proto_in, proto_out, config)
            except BaseException:  # noqa: BLE001 - report, then die; never return into the loop
                import traceback
                traceback.print_exc()
            finally:
                os._exit(code)
        _, status = os.waitpid(pid, 0)
        if os.WIFEXITED(status) and os.WEXITSTATUS(status) == _S_REPLIED:
            continue
        if os.WIFEXITED(status) and os.WEXITSTATUS(status) == _S_HOST_GONE:
            os._exit(0)
        # The supervisor broke mid-job: the pipe may hold half a frame, so report and retire
        # this worker; the host starts a fresh one.
        write_all(proto_out, reply_frame({
            "status": "sandbox_error", "exit_code": None, "wall_s": 0.0,
            "detail": f"job supervisor failed ({_describe_wait(status)}); worker retired"}))
        os._exit(2)


def _forbid_nested_user_namespaces() -> None:
    """Jobs must not create user namespaces (each would hand them a fresh set of capabilities).
    The limit is per user namespace; bwrap mounts /proc/sys read-only, so write through a
    fresh proc mount."""
    where = "/tmp/.proc"
    os.mkdir(where, 0o700)
    _mount("proc", where, "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC)
    try:
        with open(f"{where}/sys/user/max_user_namespaces", "w") as f:
            f.write("0")
    finally:
        _c().umount2(where.encode(), MNT_DETACH)
        os.rmdir(where)


def _describe_wait(status: int) -> str:
    if os.WIFSIGNALED(status):
        return f"killed by {_signal_name(os.WTERMSIG(status))}"
    return f"exit status {os.WEXITSTATUS(status)}"


def _signal_name(signum: int) -> str:
    return _SIGNAL_NAMES.get(signum, f"signal {signum}")


# ---------------------------------------------------------------------------------------------
# Supervisor: one per job
# ---------------------------------------------------------------------------------------------
SCRIPT_NAME = "solution.py"


def supervise(proto_in: int, proto_out: int, config: dict) -> int:
    try:
        header, blobs = read_job_frame(proto_in)
    except EOFError:
        return _S_HOST_GONE
    reply, out_blobs = run_job(header, blobs, config)
    write_all(proto_out, reply_frame(reply, out_blobs))
    return _S_REPLIED


def run_job(job: dict, blobs: list, config: dict):
    limits = job["limits"]
    code, stdin = blobs[0], blobs[1]
    # The program is a real file, as with `python solution.py`: tracebacks show its lines.
    files = [(SCRIPT_NAME, code), *zip(job["files"], blobs[2:])]
    workdir = _prepare_workspace(limits, files, config)
    rlimits = _rlimits_for(limits, config)

    stdin_r, stdin_w = os.pipe()
    stdout_r, stdout_w = os.pipe()
    stderr_r, stderr_w = os.pipe()
    started = time.monotonic()
    job_pid = os.fork()
    if job_pid == 0:
        try:
            for fd in (stdin_w, stdout_r, stderr_r):
                os.close(fd)
            run_untrusted(code, rlimits, workdir, config, (stdin_r, stdout_w, stderr_w))
        finally:
            os._exit(70)
    for fd in (stdin_r, stdout_w, stderr_w):
        os.close(fd)

    outcome = _pump(job_pid, limits, stdin, stdin_w, stdout_r, stderr_r, started,
                    isolate=config["isolate"])
    wall = time.monotonic() - started
    if not config["isolate"]:
        _remove_tree(workdir)
    return _classify(outcome, limits, wall)


def _prepare_workspace(limits: dict, files: list, config: dict) -> str:
    uid = config["job_uid"]
    if config["isolate"]:
        # A new mount namespace with its own tmpfs: private to this job, gone when it ends.
        # The new pid and ipc namespaces apply to the next fork: the job, as its pid 1.
        _check(_c().unshare(CLONE_NEWNS | CLONE_NEWPID | CLONE_NEWIPC), "unshare")
        _mount(None, "/", None, MS_REC | MS_PRIVATE)
        owner = f",uid={uid},gid={uid}" if uid is not None else ""
        _mount("tmpfs", "/tmp", "tmpfs", MS_NOSUID | MS_NODEV,
               f"size={limits['tmp_mb']}m,nr_inodes=16384,mode=0700{owner}")
        _mount("tmpfs", "/dev/shm", "tmpfs", MS_NOSUID | MS_NODEV,
               f"size={limits['tmp_mb']}m,nr_inodes=1024,mode=1777")
        workdir = "/tmp"
    else:
        workdir = os.path.join(config["scratch"], f"job-{os.getpid()}")
        os.mkdir(workdir, 0o700)
        if uid is not None:
            os.chown(workdir, uid, uid)
    for name, data in files:
        path = os.path.join(workdir, name)
        parent = os.path.dirname(path)
        if parent != workdir:
            os.makedirs(parent, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644)
        try:
            write_all(fd, data)
        finally:
            os.close(fd)
        if uid is not None:
            while path != workdir:  # the file and every directory created for it
                os.chown(path, uid, uid)
                path = os.path.dirname(path)
    return workdir


def _remove_tree(path: str) -> None:
    import shutil
    shutil.rmtree(path, ignore_errors=True)


def _pump(job_pid, limits, stdin, stdin_w, stdout_r, stderr_r, started, isolate):
    """Feed stdin and collect stdout/stderr while the job runs, without ever blocking on a
    full pipe; stop at the wall-clock deadline or the output cap."""
    cap = limits["max_output_bytes"]
    out = {stdout_r: bytearray(), stderr_r: bytearray()}
    reason = None
    exited = None  # (wait status, rusage) once the job's main process is gone
    pidfd = os.pidfd_open(job_pid)
    poller = select.poll()
    for fd in (stdout_r, stderr_r, pidfd):
        poller.register(fd, select.POLLIN)
    stdin_view = memoryview(stdin)
    if stdin_view:
        os.set_blocking(stdin_w, False)
        poller.register(stdin_w, select.POLLOUT)
    else:
        os.close(stdin_w)
        stdin_w = None
    open_fds = {stdout_r, stderr_r}
    deadline = started + limits["wall_s"]
    # With a pid namespace, the job's exit takes every process in it along, so the pipes reach
    # EOF right after. Without one, leftovers may hold them open: stop at the exit.
    while (open_fds and not (exited and not isolate)) or not exited:
        left = deadline - time.monotonic()
        if left <= 0:
            reason = "timeout"
            break
        for fd, event in poller.poll(left * 1000):
            if fd == pidfd:
                _, status, usage = os.wait4(job_pid, 0)
                exited = (status, usage)
                poller.unregister(pidfd)
                continue
            if fd == stdin_w:
                done = bool(event & (select.POLLERR | select.POLLHUP))
                if not done:
                    try:
                        stdin_view = stdin_view[os.write(stdin_w, stdin_view[:1 << 16]):]
                    except BlockingIOError:
                        pass
                    except BrokenPipeError:  # the program stopped reading: fine
                        done = True
                if done or not stdin_view:
                    poller.unregister(stdin_w)
                    os.close(stdin_w)
                    stdin_w = None
                continue
            chunk = os.read(fd, 1 << 16)
            if not chunk:
                poller.unregister(fd)
                open_fds.discard(fd)
                continue
            buf = out[fd]
            if len(buf) + len(chunk) > cap:
                buf += chunk[:cap - len(buf)]
                reason = "output_limit"
                break
            buf += chunk
        if reason:
            break
    os.close(pidfd)
    if exited is None or not isolate:
        # The job is pid 1 of its pid namespace: killing it kills every process in there.
        # Without namespaces it leads a process group (what setsid() escapees are not in).
        try:
            if isolate:
                os.kill(job_pid, SIGKILL)
            else:
                os.killpg(job_pid, SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        if exited is None:
            _, status, usage = os.wait4(job_pid, 0)
            exited = (status, usage) if reason is None else None
    if stdin_w is not None:
        os.close(stdin_w)
    # Whatever is still buffered in the pipes (bounded, never blocking).
    for fd in (stdout_r, stderr_r):
        os.set_blocking(fd, False)
        buf = out[fd]
        try:
            while len(buf) <= cap:
                chunk = os.read(fd, 1 << 16)
                if not chunk:
                    break
                if len(buf) + len(chunk) > cap:
                    buf += chunk[:cap - len(buf)]
                    reason = reason or "output_limit"
                    break
                buf += chunk
        except BlockingIOError:
            pass
        os.close(fd)
    job = None
    if exited is not None:
        status, usage = exited
        job = {"exit_code": os.WEXITSTATUS(status) if os.WIFEXITED(status) else None,
               "signal": os.WTERMSIG(status) if os.WIFSIGNALED(status) else None,
               "cpu_s": usage.ru_utime + usage.ru_stime}
    return {"reason": reason, "job": job, "stdout": bytes(out[stdout_r]),
            "stderr": bytes(out[stderr_r])}


def _classify(outcome: dict, limits: dict, wall: float):
    reason, job = outcome["reason"], outcome["job"]
    stdout, stderr = outcome["stdout"], outcome["stderr"]
    reply = {"wall_s": wall, "exit_code": None, "cpu_s": None, "detail": ""}
    if job is not None:
        reply["cpu_s"] = job["cpu_s"]
    if reason == "timeout":
        reply.update(status="timeout", detail=f"wall-clock limit of {limits['wall_s']:g} s exceeded")
    elif reason == "output_limit":
        reply.update(status="output_limit",
                     detail=f"stdout or stderr exceeded {limits['max_output_bytes']} bytes")
    elif job is None:
        reply.update(status="error", detail="the job ended without an exit status")
    elif job["signal"] is not None:
        sig = job["signal"]
        reply["exit_code"] = -sig
        # The CPU limit ends the job with SIGKILL (soft == hard: pid 1 would ignore SIGXCPU).
        # The supervisor sent no signal (that ends as timeout/output_limit above) and nothing
        # inside the job can SIGKILL its pid 1, so a SIGKILL after real CPU use is the limit.
        # (Usage is compared loosely: on a loaded VM rusage lags the kernel's timer by ~20%.)
        if sig == SIGXCPU or (sig == SIGKILL and job["cpu_s"] >= 0.5 * limits["cpu_s"]):
            reply.update(status="timeout", detail=f"CPU-time limit of {limits['cpu_s']} s exceeded")
        elif sig == SIGXFSZ:
            reply.update(status="error",
                         detail=f"file-size limit of {limits['max_file_mb']} MB exceeded")
        else:
            reply.update(status="error", detail=f"killed by {_signal_name(sig)}")
    else:
        code = job["exit_code"]
        reply["exit_code"] = code
        if code == 0:
            reply["status"] = "ok"
        elif _ends_with_memory_error(stderr):
            reply.update(status="memory",
                         detail=f"MemoryError under the {limits['memory_mb']} MB address-space limit")
        else:
            reply.update(status="error", detail=f"exit status {code}")
    return reply, [stdout, stderr]


def _ends_with_memory_error(stderr: bytes) -> bool:
    lines = stderr.rstrip().splitlines()
    return bool(lines) and lines[-1].startswith(b"MemoryError")


# ---------------------------------------------------------------------------------------------
# The job (J)
# ---------------------------------------------------------------------------------------------
def _rlimits_for(limits: dict, config: dict) -> list:
    mb = 1024 * 1024
    rlimits = [
        # soft == hard: SIGKILL at the limit (pid 1 would ignore a soft limit's SIGXCPU)
        (resource.RLIMIT_CPU, (limits["cpu_s"], limits["cpu_s"])),
        (resource.RLIMIT_FSIZE, (limits["max_file_mb"] * mb,) * 2),
        (resource.RLIMIT_NOFILE, (limits["max_open_files"],) * 2),
        (resource.RLIMIT_CORE, (0, 0)),
    ]
    if config["nproc_slack"] is not None:
        # RLIMIT_NPROC counts every task of this (user namespace, uid); when the job shares
        # its uid with the zygote and supervisor, those count too (the slack).
        nproc = limits["max_processes"] + config["nproc_slack"]
        rlimits.append((resource.RLIMIT_NPROC, (nproc, nproc)))
    rlimits.append((resource.RLIMIT_AS, (limits["memory_mb"] * mb,) * 2))  # last: setup allocates
    return rlimits


_PROC_MOUNT = (b"proc", b"/proc", b"proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, None)


def run_untrusted(code, rlimits, workdir, config, stdio) -> None:
    """In the fork that becomes the job: pid 1 of a fresh pid namespace (bwrap backend), so
    when it exits the kernel kills whatever it left running. Everything here runs once per
    job in a fresh copy-on-write fork, where each first touch of a page costs a fault: the
    supervisor prepares the inputs, so this path stays short."""
    os.setsid()  # own session and process group: its kill(0, ...) reaches only itself
    if config["isolate"]:
        # A /proc that shows only this job's processes (needs our capabilities: do it first).
        _check(_libc.mount(*_PROC_MOUNT), "mount proc")
    else:
        _prctl(PR_SET_PDEATHSIG, SIGKILL)  # no pid namespace to take us down with S
    os.dup2(stdio[0], 0)
    os.dup2(stdio[1], 1)
    os.dup2(stdio[2], 2)
    os.closerange(3, 1 << 16)
    os.chdir(workdir)
    _prctl(PR_SET_NO_NEW_PRIVS, 1)
    uid = config["job_uid"]
    if uid is not None:
        _switch_uid(uid)  # leaving uid 0 clears the permitted and effective capability sets
    elif config["isolate"]:
        _clear_capability_sets()
    for which, value in rlimits:
        resource.setrlimit(which, value)
    if not config["isolate"]:  # (bwrap already gave the zygote exactly this environment)
        os.environ.clear()
        os.environ.update(config["env"], HOME=workdir, TMPDIR=workdir)
    os._exit(_exec_as_main(code, workdir + "/" + SCRIPT_NAME, workdir))


def _switch_uid(uid: int) -> None:
    os.setgroups([])
    os.setresgid(uid, uid, uid)
    os.setresuid(uid, uid, uid)


def _exec_as_main(code: bytes, path: str, workdir: str) -> int:
    """Run `code` (also saved at `path`, for tracebacks) as __main__ of this forked, warm
    interpreter, with the exit semantics of `python solution.py`: exit status, tracebacks,
    non-daemon threads joined, atexit handlers run."""
    main = type(sys)("__main__")
    main.__dict__.update(__builtins__=_builtins, __file__=path)
    sys.modules["__main__"] = main
    sys.argv = [path]
    sys.path.insert(0, workdir)
    sys.stdin, sys.stdout, sys.stderr = _JOB_STDIO
    sys.__stdin__, sys.__stdout__, sys.__stderr__ = _JOB_STDIO

    status = 0
    try:
        try:
            compiled = compile(code, path, "exec")
        except SyntaxError as exc:
            sys.excepthook(type(exc), exc.with_traceback(None), None)
            return 1
        exec(compiled, main.__dict__)
    except SystemExit as exc:
        status = _system_exit_status(exc)
    except BaseException as exc:  # noqa: BLE001 - the program's uncaught exception
        tb = exc.__traceback__.tb_next  # drop this function's frame: the program's own only
        sys.excepthook(type(exc), exc.with_traceback(tb), tb)
        status = 1
    try:
        if "threading" in sys.modules:
            sys.modules["threading"]._shutdown()  # join non-daemon threads, as at interpreter exit
        _atexit._run_exitfuncs()
    except SystemExit as exc:
        status = _system_exit_status(exc)
    except BaseException:  # noqa: BLE001
        status = status or 1
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except BaseException:  # noqa: BLE001 - e.g. the reader is gone; Python exits 120 here
            status = status or 120
    return status


def _system_exit_status(exc: SystemExit) -> int:
    code = exc.code
    if code is None:
        return 0
    if isinstance(code, int):
        return code & 0xFF
    try:
        print(code, file=sys.stderr)
    except BaseException:  # noqa: BLE001
        pass
    return 1


if __name__ == "__main__":
    zygote(marshal.loads(bytes.fromhex(sys.argv[1])))
