"""Run untrusted Python: bubblewrap namespaces + rlimits + timeouts, and a warm pool.

    from sandboxes import run_python, Limits, SandboxResult, SandboxPool

    result = run_python("print(input()[::-1])", stdin="abc", limits=Limits(wall_s=2))
    with SandboxPool(workers=4) as pool:
        results = pool.map(["print(1)", {"code": "import sys; sys.exit(3)"}])

See docs/sandboxes.md for the threat model, the process layout and the limits.
"""
from sandboxes.api import default_pool, run_python, run_python_once
from sandboxes.limits import STATUSES, Limits, SandboxResult
from sandboxes.pool import InsecureBackendWarning, Job, SandboxPool
from sandboxes.worker import SandboxUnavailable

__all__ = [
    "run_python", "run_python_once", "default_pool", "Limits", "SandboxResult", "SandboxPool",
    "Job", "STATUSES", "InsecureBackendWarning", "SandboxUnavailable",
]
