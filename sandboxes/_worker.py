"""The code that runs inside a sandbox worker: a warm zygote, and the job it forks for each run.

Process tree inside one worker (bwrap backend):

    bwrap's pid 1 ── zygote (ns root, keeps capabilities, never sees job data)
                        └─ job J  (one per job, forked fresh: pid 1 of its own pid namespace; its
                                   own mount and IPC namespaces with a private tmpfs; then an
                                   unprivileged uid, rlimits, and the untrusted code in the
                                   already warm interpreter: no exec, no start-up cost)

Who does what for one job:

* The host (trusted, outside the sandbox) makes J's stdin (a sealed memfd holding all of it),
  its stdout/stderr pipes and a sealed memfd that holds the program and its files, and hands the
  four descriptors to the zygote over the control socket (SCM_RIGHTS) with the job's limits. The
  host itself reads stdout/stderr (capped) and classifies the result, so the bytes a job reads
  or writes never pass through the sandbox's own processes.
* The zygote only moves descriptors: it forks J into a fresh pid namespace, watches J's pidfd
  against the wall clock (and a kill request from the host at the output cap), reaps J, and
  answers with J's exit status, CPU time and wall time.
* J builds its own namespaces (mount + IPC: `unshare` applies to the caller; only a pid namespace
  has to be made by the parent), reads its program and files from the memfd, writes them into its
  tmpfs, drops every privilege and runs the program.

So job code, inputs and outputs never enter the zygote's memory and cannot leak into later jobs'
forked address spaces. When J exits the kernel kills everything left in its pid namespace, and the
tmpfs dies with its mount namespace, so a job leaves nothing behind.

(An earlier design had a supervisor process per job between the zygote and J that pumped the
job's pipes itself; the host now does that work, which saves one fork of the interpreter, its
page copies and its exit per job. See docs/sandboxes.md, "Performance".)

This file is self-contained (stdlib only): the host passes its source to `python -I -S -c`
because the project directory is deliberately not visible inside the sandbox. The host imports
it too, for the message formats and the result classification.
"""
from __future__ import annotations

# Deliberately few imports: every module loaded here is copied into each job's forked address
# space, so a lean zygote forks faster. No json/signal/re/socket here (signal and socket pull in
# enum, json re): `_socket` and `_signal` are the C modules underneath.
import _signal
import _socket
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
# Messages. The control socket (AF_UNIX, SOCK_SEQPACKET: one message per send, kept in order)
# carries:
#   host -> zygote  a job: marshal {"limits": {...}} with four descriptors attached (J's stdin
#                   memfd, stdout and stderr pipes' write ends, the payload memfd); or KILL.
#   zygote -> host  a reply frame: the first says ready, then one per job.
# The payload memfd holds marshal (program bytes, (file names...), (file contents...)), written
# by the host and read only by J. Host -> sandbox data is marshal (the host's own trusted data,
# read by the same interpreter build); sandbox -> host data is JSON, so the host never feeds
# sandbox-made bytes to anything but a JSON parser.
#
# A reply frame: 4-byte big-endian header length, a JSON header, then raw blobs whose byte sizes
# the header lists under "sizes" (replies carry none now: the host reads the job's output itself).
# ---------------------------------------------------------------------------------------------
MAX_HEADER_BYTES = 1 << 20
MAX_CONTROL_MESSAGE = 1 << 16
JOB_FDS = 4  # stdin, stdout_w, stderr_w, payload
# Sent by the host when a job reached its output cap. It can cross paths with the job's own end,
# so a KILL that arrives while no job runs is ignored.
KILL = b"k"


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
        if value.isprintable() and '"' not in value and "\\" not in value:
            return '"' + value + '"'  # nothing to escape (the common case: keys)
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


def write_all(fd: int, data) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def received_fds(ancdata) -> list:
    """The descriptors in recvmsg's ancillary data (SCM_RIGHTS)."""
    fds = []
    for level, kind, blob in ancdata:
        if level == _socket.SOL_SOCKET and kind == _socket.SCM_RIGHTS:
            whole = len(blob) - len(blob) % 4
            fds += [int.from_bytes(blob[i:i + 4], sys.byteorder, signed=True)
                    for i in range(0, whole, 4)]
    return fds


# ---------------------------------------------------------------------------------------------
# Thin libc wrappers (Python 3.11 has no os.unshare / os.setns / mount).
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
    """libc, called without `argtypes`: every argument here is bytes, None or a non-negative
    int below 2**31, which ctypes passes as char* / NULL / int, and libffi sign-extends ints to
    the full register, so `unsigned long` parameters get the right value. (Declared argtypes
    would cost each job's fork ~20 more copied pages: the converters run per call.)"""
    global _libc
    if _libc is None:
        _libc = ctypes.CDLL(None, use_errno=True)
        for name in ("mount", "umount2", "unshare", "setns", "prctl", "capget", "capset"):
            getattr(_libc, name)  # looked up once, before the forks
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
# Room for the job's descriptors and a few more: a message carrying extra ones is refused
# (and they are closed) rather than cut short.
_ANCILLARY_SPACE = _socket.CMSG_SPACE(4 * (JOB_FDS + 4))


class _HostGone(Exception):
    """The host closed the control socket: nobody will read a reply."""


def _build_job_stdio():
    """sys.stdin/stdout/stderr for every job, built once: on fds 0-2, as Python builds them
    for `python solution.py < file` with stdout and stderr piped (UTF-8; stdout block-buffered,
    stderr line-buffered with backslashreplace). Built on the same kinds of files as a job's
    (stdin a regular file at offset 0, the others pipes), because the wrappers remember
    whether their file is seekable, and where it stood."""
    import io
    saved = [os.dup(fd) for fd in (0, 1, 2)]
    stdin_file = os.memfd_create("stdin")
    r, w = os.pipe()
    os.dup2(stdin_file, 0)
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
    for fd in (stdin_file, r, w):
        os.close(fd)
    return streams


# Compiled once in the zygote, before gc.freeze(): the first compile() in a process builds the
# parser's lazily made state, which costs ~2 ms and ~150 copied pages when every job's fork has
# to do it afresh (measured: a forked child's first compile of `print(1)` 2.3 ms, 0.17 ms after
# this warm-up in the parent).
_WARM_UP = b"""
import sys
def f(a, *args, b=None, **kwargs):
    '''doc'''
    for i in range(3):
        if i % 2 == 0 and not (a or b):
            continue
    try:
        x = [i * 2 for i in args if i]; y = {k: v for k, v in kwargs.items()}
    except (ValueError, KeyError) as exc:
        raise RuntimeError(f"bad {exc!r}") from exc
    finally:
        pass
    return a, x, y, lambda z: z + 1.5 - 2j
class C(object):
    n: int = 0
    @property
    def p(self):
        return self.n
with open(__file__) as g:
    data = g.read().split()
assert f(1) is not None, "message"
print(*data[:1], sep=" ", end="\\n")
"""


def zygote(config: dict) -> None:
    job_stdio = _build_job_stdio()
    # The control socket arrives as fd 0: keep it off fds 0-2 so no job can inherit it by accident.
    control = _socket.socket(fileno=os.dup(0))
    devnull = os.open("/dev/null", os.O_RDWR)
    os.dup2(devnull, 0)
    os.dup2(2, 1)
    os.close(devnull)
    own_pid_ns = None
    if config["isolate"]:
        _forbid_nested_user_namespaces()
        _restrict_future_capabilities()
        # Every job's mount namespace starts as a copy of this one. Made private (recursively)
        # once here, no mount a job makes in its copy can propagate back into this namespace or
        # into another job's copy, which is what a per-job remount used to ensure.
        _mount(None, "/", None, MS_REC | MS_PRIVATE)
        # To hand each job a fresh pid namespace and come back to forking into our own.
        own_pid_ns = os.open("/proc/self/ns/pid", os.O_RDONLY)
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
    # The same for every job, so set once here rather than in each job's fork (where every
    # write copies a page): no_new_privs (inherited and never lifted; the zygote itself never
    # execs), and the job's stdio objects (the zygote writes only tracebacks, to stderr: fd 2).
    _check(_prctl(PR_SET_NO_NEW_PRIVS, 1), "prctl(PR_SET_NO_NEW_PRIVS)")
    sys.stdin, sys.stdout, sys.stderr = job_stdio
    sys.__stdin__, sys.__stdout__, sys.__stderr__ = job_stdio
    if config["isolate"]:
        _install_main("/tmp/" + SCRIPT_NAME)  # (the zygote's own globals stay with its functions)
    compile(_WARM_UP, "/tmp/solution.py", "exec")
    # Objects alive now are shared by every job; frozen, the collector never walks (and so
    # never copies) their pages in the forked children.
    gc.freeze()

    control.send(reply_frame({"ready": True, "python": sys.version.split()[0]}))
    while True:
        try:
            job = _next_job(control)
        except _HostGone:
            os._exit(0)
        try:
            reply = run_job(control, job[0], job[1], config, own_pid_ns)
        except _HostGone:
            os._exit(0)
        except BaseException as exc:  # noqa: BLE001 - report, then retire this worker
            import traceback
            traceback.print_exc()
            control.send(_error_reply(f"the sandbox failed running a job ({exc!r}); worker retired"))
            os._exit(2)
        control.send(reply)


def _next_job(control):
    """Block until the host sends a job: (its header, its four descriptors)."""
    while True:
        data, ancdata, flags, _ = control.recvmsg(MAX_CONTROL_MESSAGE, _ANCILLARY_SPACE)
        fds = received_fds(ancdata)
        if not data and not fds:
            raise _HostGone
        if data == KILL and not fds:
            continue  # for a job that had already ended
        if len(fds) != JOB_FDS or flags & (_socket.MSG_TRUNC | _socket.MSG_CTRUNC):
            for fd in fds:
                os.close(fd)
            raise ValueError(f"malformed job message ({len(fds)} descriptors, flags {flags})")
        return marshal.loads(data), fds


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
# One job, as the zygote sees it: fork, watch, reap. No job data passes through here.
# ---------------------------------------------------------------------------------------------
SCRIPT_NAME = "solution.py"
_job_counter = 0


def run_job(control, job: dict, fds: list, config: dict, own_pid_ns) -> bytes:
    """Run one job; returns the reply frame for the host."""
    limits = job["limits"]
    isolate = config["isolate"]
    rlimits = _rlimits_for(limits, config)
    mounts = _job_mounts(limits, config) if isolate else None
    workdir = "/tmp" if isolate else _make_scratch_dir(config)
    # J reports on this pipe whether its own set-up succeeded: "R" just before it runs the
    # program, "E<message>" if it failed first. Nothing the program does can write here.
    ready_r, ready_w = os.pipe()
    try:
        if isolate:
            # The next fork becomes pid 1 of a fresh pid namespace (the zygote itself stays put).
            _check(_c().unshare(CLONE_NEWPID), "unshare(CLONE_NEWPID)")
        started = time.monotonic()
        try:
            pid = os.fork()
        except BaseException:
            _reset_child_pid_ns(own_pid_ns, isolate)
            raise
        if pid == 0:
            _become_job(fds, ready_w, rlimits, mounts, workdir, config)  # never returns
        _reset_child_pid_ns(own_pid_ns, isolate)
    finally:
        for fd in (*fds, ready_w):
            os.close(fd)
    try:
        reason, ended, status, usage = _watch(control, pid, limits["wall_s"], started, isolate)
        setup = os.read(ready_r, 4096)  # J and everything it forked are gone: never blocks
    finally:
        os.close(ready_r)
        if not isolate:
            _remove_tree(workdir)
    if setup.startswith(b"E"):
        # J failed before the program started: the sandbox is broken, not the program.
        return _error_reply("job set-up failed: " + setup[1:].decode("utf-8", "replace"))
    if setup != b"R" and reason is None:
        # J died during its set-up without a word (killed from outside, say).
        return _error_reply(f"job set-up died ({_describe_wait(status)})")
    # Formatted directly, times in whole microseconds: this runs in the zygote once per job,
    # and the general encoder (to_json, float repr) touched ~40 pages, each one a page fault.
    return encode_frame((_JOB_REPLY % (
        (ended - started) * 1e6, (usage.ru_utime + usage.ru_stime) * 1e6,
        "%d" % os.WEXITSTATUS(status) if os.WIFEXITED(status) else "null",
        "%d" % os.WTERMSIG(status) if os.WIFSIGNALED(status) else "null",
        '"%s"' % reason if reason else "null")).encode())


# How J ended, as the zygote sees it; read by `classify` on the host.
_JOB_REPLY = '{"wall_us":%d,"cpu_us":%d,"exit_code":%s,"signal":%s,"reason":%s,"sizes":[]}'


def _error_reply(detail: str) -> bytes:
    return reply_frame({"status": "sandbox_error", "exit_code": None, "wall_s": 0.0,
                        "detail": detail[:2000]})


def _reset_child_pid_ns(own_pid_ns, isolate: bool) -> None:
    """Point the namespace for our children back at our own: unshare(CLONE_NEWPID) is refused
    while it points elsewhere, so the next job could not get a fresh one."""
    if isolate:
        _check(_c().setns(own_pid_ns, CLONE_NEWPID), "setns(CLONE_NEWPID)")


def _watch(control, pid: int, wall_s: float, started: float, isolate: bool):
    """Wait until J ends, its wall clock runs out, or the host asks for a kill (output cap);
    kill it unless it ended, and reap it. Returns (reason or None, end time, wait status,
    rusage)."""
    pidfd = os.pidfd_open(pid)
    poller = select.poll()
    poller.register(pidfd, select.POLLIN)
    poller.register(control.fileno(), select.POLLIN)
    deadline = started + wall_s
    reason = ended = None
    try:
        while ended is None and reason is None:
            left = deadline - time.monotonic()
            if left <= 0:
                reason = "timeout"
                break
            for fd, _ in poller.poll(int(left * 1000) + 1):
                if fd == pidfd:
                    ended = time.monotonic()
                    continue
                message = control.recv(MAX_CONTROL_MESSAGE)
                if message == KILL:
                    reason = "killed"
                elif not message:
                    reason = "host_gone"
                else:
                    raise ValueError("the host sent a job while one was running")
    finally:
        os.close(pidfd)
        if ended is None:
            # J is pid 1 of its pid namespace: killing it kills every process in there.
            _kill(pid, SIGKILL)
        if not isolate:
            # Without namespaces J leads a process group (what setsid() escapees are not in).
            _kill(-pid, SIGKILL)
        _, status, usage = os.wait4(pid, 0)
    if reason == "host_gone":
        raise _HostGone
    return reason, ended or time.monotonic(), status, usage


def _kill(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def _make_scratch_dir(config: dict) -> str:
    """rlimit backend only: a fresh directory per job under the worker's scratch directory."""
    global _job_counter
    _job_counter += 1
    workdir = os.path.join(config["scratch"], f"job-{_job_counter}")
    os.mkdir(workdir, 0o700)
    uid = config["job_uid"]
    if uid is not None:
        os.chown(workdir, uid, uid)
    return workdir


def _remove_tree(path: str) -> None:
    import shutil
    shutil.rmtree(path, ignore_errors=True)


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
        # its uid with the worker's own processes, those count too (the slack).
        nproc = limits["max_processes"] + config["nproc_slack"]
        rlimits.append((resource.RLIMIT_NPROC, (nproc, nproc)))
    rlimits.append((resource.RLIMIT_AS, (limits["memory_mb"] * mb,) * 2))  # last: setup allocates
    return rlimits


# ---------------------------------------------------------------------------------------------
# The job (J)
# ---------------------------------------------------------------------------------------------
def _job_mounts(limits: dict, config: dict) -> list:
    """mount(2) arguments for J's private /tmp and /dev/shm, and its own /proc."""
    uid = config["job_uid"]
    owner = f",uid={uid},gid={uid}" if uid is not None else ""
    size = f"size={limits['tmp_mb']}m"
    return [(b"tmpfs", b"/tmp", b"tmpfs", MS_NOSUID | MS_NODEV,
             f"{size},nr_inodes=16384,mode=0700{owner}".encode()),
            (b"tmpfs", b"/dev/shm", b"tmpfs", MS_NOSUID | MS_NODEV,
             f"{size},nr_inodes=1024,mode=1777".encode()),
            (b"proc", b"/proc", b"proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, None)]


def _become_job(fds, ready_w, rlimits, mounts, workdir, config) -> None:
    """In the fork that becomes the job; never returns. With the bwrap backend J is pid 1 of a
    fresh pid namespace, so when it exits the kernel kills whatever it left running.
    Everything here runs once per job in a fresh copy-on-write fork, where each first touch of
    a page costs a fault (~5 us here), so this path stays short: what is the same for every job
    (no_new_privs, the stdio objects) was set in the zygote before it forked."""
    stdin, stdout_w, stderr_w, payload = fds
    try:
        if mounts is not None:
            # Its own mount and IPC namespaces (copies of the zygote's, made private there), a
            # private tmpfs as /tmp and /dev/shm, and a /proc that shows only its own processes.
            # All need the capabilities it still holds: do them first.
            _check(_libc.unshare(CLONE_NEWNS | CLONE_NEWIPC), "unshare")
            for args in mounts:
                if _libc.mount(*args) != 0:
                    _check(-1, f"mount {args[1].decode()}")
        else:
            _prctl(PR_SET_PDEATHSIG, SIGKILL)  # no pid namespace to take us down with the zygote
        os.setsid()  # own session and process group: its kill(0, ...) reaches only itself
        code, names, contents = marshal.loads(
            os.pread(payload, os.lseek(payload, 0, os.SEEK_END), 0))
        os.dup2(stdin, 0)
        os.dup2(stdout_w, 1)
        os.dup2(stderr_w, 2)
        # Only fds 0-2 and the set-up report stay open: not the control socket, the payload, or
        # the zygote's namespace handle.
        os.closerange(3, ready_w)
        os.closerange(ready_w + 1, 1 << 16)
        os.chdir(workdir)
        uid = config["job_uid"]
        if uid is not None:
            _switch_uid(uid)  # leaving uid 0 clears the permitted and effective capability sets
        elif config["isolate"]:
            _clear_capability_sets()
        # Written unprivileged, as the job's own uid, into its own tmpfs (or scratch directory).
        _write_file(SCRIPT_NAME, code)
        for name, data in zip(names, contents):
            _write_file(name, data)
        for which, value in rlimits:
            resource.setrlimit(which, value)
        if not config["isolate"]:  # (bwrap already gave the zygote exactly this environment)
            os.environ.clear()
            os.environ.update(config["env"], HOME=workdir, TMPDIR=workdir)
        os.write(ready_w, b"R")
        os.close(ready_w)
    except BaseException as exc:  # noqa: BLE001 - report to the zygote, never run the program
        try:
            os.write(ready_w, b"E" + f"{type(exc).__name__}: {exc}"[:2000].encode("utf-8", "replace"))
        finally:
            os._exit(71)
    os._exit(_exec_as_main(code, workdir + "/" + SCRIPT_NAME, workdir))


def _write_file(name: str, data: bytes) -> None:
    """`name` (relative, normalized by the host) in the current directory, the job's own."""
    if "/" in name:
        os.makedirs(os.path.dirname(name), exist_ok=True)
    fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644)
    try:
        write_all(fd, data)
    finally:
        os.close(fd)


# ---------------------------------------------------------------------------------------------
# The verdict (computed on the host, from the zygote's reply and the output the host read)
# ---------------------------------------------------------------------------------------------
def classify(reply: dict, stdout: bytes, stderr: bytes, limits: dict, output_limited: bool) -> dict:
    """status, exit_code, detail, wall_s and cpu_s of one job. `reply` is the zygote's (exit
    status, signal, CPU and wall time in microseconds, and `reason`: "timeout" when it killed
    the job at the wall clock, "killed" when the host asked it to)."""
    reason = "output_limit" if output_limited else reply.get("reason")
    result = {"wall_s": reply["wall_us"] / 1e6, "exit_code": None, "cpu_s": None, "detail": ""}
    if reason == "timeout":
        result.update(status="timeout", detail=f"wall-clock limit of {limits['wall_s']:g} s exceeded")
        return result
    if reason is not None:
        result.update(status="output_limit",
                      detail=f"stdout or stderr exceeded {limits['max_output_bytes']} bytes")
        return result
    result["cpu_s"] = cpu_s = reply["cpu_us"] / 1e6
    sig = reply["signal"]
    if sig is not None:
        result["exit_code"] = -sig
        # The CPU limit ends the job with SIGKILL (soft == hard: pid 1 would ignore SIGXCPU).
        # The zygote sent no signal (that ends as timeout/output_limit above) and nothing
        # inside the job can SIGKILL its pid 1, so a SIGKILL after real CPU use is the limit.
        # (Usage is compared loosely: on a loaded VM rusage lags the kernel's timer by ~20%.)
        if sig == SIGXCPU or (sig == SIGKILL and cpu_s >= 0.5 * limits["cpu_s"]):
            result.update(status="timeout", detail=f"CPU-time limit of {limits['cpu_s']} s exceeded")
        elif sig == SIGXFSZ:
            result.update(status="error",
                          detail=f"file-size limit of {limits['max_file_mb']} MB exceeded")
        else:
            result.update(status="error", detail=f"killed by {_signal_name(sig)}")
        return result
    code = reply["exit_code"]
    result["exit_code"] = code
    if code == 0:
        result["status"] = "ok"
    elif _ends_with_memory_error(stderr):
        result.update(status="memory",
                      detail=f"MemoryError under the {limits['memory_mb']} MB address-space limit")
    else:
        result.update(status="error", detail=f"exit status {code}")
    return result


def _ends_with_memory_error(stderr: bytes) -> bool:
    lines = stderr.rstrip().splitlines()
    return bool(lines) and lines[-1].startswith(b"MemoryError")


# ---------------------------------------------------------------------------------------------
# Running the program (in J)
# ---------------------------------------------------------------------------------------------
def _switch_uid(uid: int) -> None:
    os.setgroups([])
    os.setresgid(uid, uid, uid)
    os.setresuid(uid, uid, uid)


def _install_main(path: str) -> None:
    """An empty `__main__` module for the program saved at `path`, and `sys.argv`. Done once in
    the zygote when every job's path is the same (bwrap backend: /tmp/solution.py), so the forks
    only fill the module in."""
    main = type(sys)("__main__")
    main.__dict__.update(__builtins__=_builtins, __file__=path)
    sys.modules["__main__"] = main
    sys.argv = [path]


def _exec_as_main(code: bytes, path: str, workdir: str) -> int:
    """Run `code` (also saved at `path`, for tracebacks) as __main__ of this forked, warm
    interpreter, with the exit semantics of `python solution.py`: exit status, tracebacks,
    non-daemon threads joined, atexit handlers run."""
    if sys.argv != [path]:
        _install_main(path)
    main = sys.modules["__main__"]
    sys.path.insert(0, workdir)

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
