"""The data that crosses the sandbox boundary: limits in, results out."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

STATUSES = ("ok", "error", "timeout", "memory", "output_limit", "sandbox_error")
BACKENDS = ("bwrap", "rlimit")


@dataclass
class Limits:
    """Resource limits for one run. Plain fields with defaults, so a run config (OmegaConf
    structured config) can embed this directly.

    backend: "bwrap" (namespaces + rlimits; the default and the only isolating one) or
    "rlimit" (rlimits and a scratch directory only: it can read the host's files and reach the
    network; for hosts without user namespaces, warns every time it starts).
    """

    wall_s: float = 10.0  # wall clock, the whole process tree is killed at the deadline
    cpu_s: int = 10  # CPU seconds (RLIMIT_CPU), summed over the program's threads
    memory_mb: int = 1024  # address space (RLIMIT_AS) of each process, interpreter included
    max_processes: int = 64  # processes + threads alive at once (RLIMIT_NPROC)
    max_output_bytes: int = 1_000_000  # per stream (stdout, stderr); beyond it: output_limit
    max_file_mb: int = 16  # largest file the program may write (RLIMIT_FSIZE)
    tmp_mb: int = 64  # size of the private tmpfs working directory (and of /dev/shm)
    max_open_files: int = 256  # RLIMIT_NOFILE
    backend: str = "bwrap"

    def validate(self) -> "Limits":
        """Raise ValueError naming the first bad field; return self for chaining."""
        checks = {
            "wall_s": (float, 0.01, 3600.0),
            "cpu_s": (int, 1, 3600),
            "memory_mb": (int, 64, 1 << 20),
            "max_processes": (int, 1, 100_000),
            "max_output_bytes": (int, 0, 1 << 30),
            "max_file_mb": (int, 0, 1 << 20),
            "tmp_mb": (int, 1, 1 << 20),
            "max_open_files": (int, 16, 1 << 20),
        }
        for name, (kind, low, high) in checks.items():
            value = getattr(self, name)
            ok_type = isinstance(value, (int, float)) if kind is float else isinstance(value, int)
            if isinstance(value, bool) or not ok_type:
                raise ValueError(f"Limits.{name} must be a {kind.__name__}, got {value!r}")
            if not low <= value <= high:
                raise ValueError(f"Limits.{name}={value!r} is outside [{low}, {high}]")
        if self.backend not in BACKENDS:
            raise ValueError(f"Limits.backend={self.backend!r}; expected one of {BACKENDS}")
        return self

    def to_wire(self) -> dict:
        # (Not dataclasses.asdict: its deep copy costs ~25 us, paid on every sandboxed run.)
        return {name: getattr(self, name) for name in _LIMIT_FIELDS}


_LIMIT_FIELDS = tuple(field.name for field in dataclasses.fields(Limits))


@dataclass
class SandboxResult:
    """What a sandboxed run did.

    status: "ok" (exit status 0), "error" (non-zero exit, uncaught exception, killed by a
    signal), "timeout" (wall clock or CPU time), "memory" (MemoryError under the address-space
    limit), "output_limit" (stdout or stderr over max_output_bytes; what came before the cap is
    kept), "sandbox_error" (the sandbox itself failed: the program's verdict is unknown).
    exit_code: the program's exit status, -N when killed by signal N, None when it never
    finished (timeout, output_limit, sandbox_error).
    detail: one human-readable line on why (empty for "ok").
    """

    status: str
    exit_code: int | None
    stdout: str
    stderr: str
    wall_s: float
    detail: str = ""
    cpu_s: float | None = None

    @property
    def ok(self) -> bool:
        return self.status == "ok"


def sandbox_error(detail: str, wall_s: float = 0.0) -> SandboxResult:
    """The sandbox itself failed; the reason goes in `detail` and, for callers that only log
    stderr, in `stderr` too."""
    return SandboxResult("sandbox_error", None, "", detail, wall_s, detail)
