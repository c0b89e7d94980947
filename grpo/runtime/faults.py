"""Faults a run survives: preemption (SIGTERM / SIGINT), a rank that dies or hangs, a failed checkpoint write.

Preemption. `install_stop_signals()` makes the first SIGTERM or SIGINT only set a flag (what SLURM, Kubernetes and
Ctrl-C send); a second one, more than `REPEAT_GRACE_S` later, exits at once. The training loops call
`stop_if_requested` at the top of every step, on every rank: a fixed-shape all-reduce of the flags, so a signal that
reached one rank stops all of them after the same optimizer step. The loop then saves a checkpoint and raises
`Preempted`, which the command line turns into one line saying where the checkpoint is, and exit status 0.

A dead or hung rank. Collectives time out (`engine.collective_timeout_s`, set by `init_distributed`); a gloo
collective whose peer died fails at once. Each rank of a multi-rank run also ticks a heartbeat in the rendezvous
store (`start_heartbeat`), so the rank that sees a collective fail can name the rank(s) that stopped answering
(`PeerLost`) instead of a bare socket error.

Checkpoint writes: `CheckpointError` (the engine raises it, naming the path; the previous checkpoint stays whole).

Nothing here runs at import time; torch is imported inside the functions (the command line imports the exception
classes without paying for torch).
"""
from __future__ import annotations

import atexit
import os
import signal
import threading
import time
from dataclasses import dataclass
from typing import Callable

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)
# Copies of one signal that arrive within this window count once: a launcher that forwards a signal (torchrun, a
# SLURM step that signals every process) delivers its copy milliseconds after the original.
REPEAT_GRACE_S = 2.0
HEARTBEAT_INTERVAL_S = 2.0


class Preempted(Exception):
    """A stop signal ended training after a whole step; the checkpoint (if any) is saved. Not an error."""

    def __init__(self, stage: str, step: int, checkpoint, signal_name: str, ranks: list[int]):
        self.stage, self.step, self.checkpoint, self.signal_name, self.ranks = stage, step, checkpoint, signal_name, ranks
        who = (f" (on rank{'s' if len(ranks) > 1 else ''} {', '.join(map(str, ranks))})"
               if ranks and ranks != [0] else "")
        if checkpoint is not None:
            what = (f"stopped by {signal_name}{who} after step {step} of {stage}; checkpoint saved in {checkpoint}; "
                    "run the same command to resume")
        else:
            what = (f"stopped by {signal_name}{who} before the first step of {stage}; nothing of it to save; "
                    "run the same command to continue")
        super().__init__(what)


class CheckpointError(RuntimeError):
    """A checkpoint could not be written (disk full, a write error) or read; the message names the path."""

    reported = False  # True once rank 0 has printed it


class PeerLost(RuntimeError):
    """A collective failed or timed out because another rank died or hangs."""

    def __init__(self, message: str, reporter: bool = True):
        super().__init__(message)
        self.reporter = reporter  # the lowest rank still alive says it (rank 0 may be the dead one)


# ---------------------------------------------------------------------------------------------
# Stop signals


@dataclass
class _SignalState:
    signum: int | None = None
    at: float = 0.0
    previous: dict | None = None


_state = _SignalState()


def _say(text: str) -> None:
    # os.write, not print: a handler may interrupt a print in progress (a reentrant buffered write raises)
    try:
        os.write(2, (text + "\n").encode())
    except OSError:
        pass


def _handler(signum: int, frame) -> None:
    name = signal.Signals(signum).name
    now = time.monotonic()
    if _state.signum is None:
        _state.signum, _state.at = signum, now
        if os.environ.get("RANK", "0") == "0" and os.environ.get("GRPO_ROLE", "train") == "train":
            _say(f"[grpo] {name} received: finishing the current step, then saving a checkpoint "
                 f"(send it again to stop at once, without saving)")
        return
    if now - _state.at < REPEAT_GRACE_S:
        return  # the launcher's copy of the same request
    _say(f"[grpo] second {name}: stopping at once, without saving")
    os._exit(128 + signum)


def install_stop_signals() -> bool:
    """SIGTERM and SIGINT set the stop flag instead of killing the process (main thread only; False elsewhere)."""
    if threading.current_thread() is not threading.main_thread():
        return False
    if _state.previous is None:
        _state.previous = {s: signal.signal(s, _handler) for s in STOP_SIGNALS}
    return True


def restore_signals() -> None:
    """Back to the handlers that were there before `install_stop_signals` (the flag is cleared)."""
    if _state.previous is not None and threading.current_thread() is threading.main_thread():
        for s, h in _state.previous.items():
            signal.signal(s, h if h is not None else signal.SIG_DFL)
    _state.previous, _state.signum = None, None


def local_stop_signal() -> int | None:
    """The stop signal this process received, if any (no collective)."""
    return _state.signum


# Set by grpo.runtime.inference on training rank 0 of an async launch: the stop signal an inference process
# received (it keeps serving until the training processes have saved), or 0.
remote_stop_signal: Callable[[], int] | None = None


def stop_requested() -> tuple[str, list[int]] | None:
    """Whether any rank received a stop signal: (signal name, ranks that got one), or None.

    A collective every rank must call at the same point: one all-reduce of a [world_size] tensor (each rank
    writes its own signal number in its own slot), the same shape on every rank whatever happened."""
    import torch

    mine = _state.signum or 0
    if not mine and remote_stop_signal is not None and (not torch.distributed.is_initialized()
                                                        or torch.distributed.get_rank() == 0):
        mine = remote_stop_signal()  # rollout.mode: async: a signal an inference process received
    if not torch.distributed.is_initialized() or torch.distributed.get_world_size() == 1:
        return (signal.Signals(mine).name, [0]) if mine else None
    from grpo.runtime.distributed import device

    world, rank = torch.distributed.get_world_size(), torch.distributed.get_rank()
    flags = torch.zeros(world, dtype=torch.int64, device=device())
    flags[rank] = mine
    torch.distributed.all_reduce(flags)
    got = [(r, int(v)) for r, v in enumerate(flags.tolist()) if v]
    if not got:
        return None
    return signal.Signals(got[0][1]).name, [r for r, _ in got]


def stop_if_requested(stage: str, step: int, engine, save: Callable[[int], None]) -> None:
    """Top of every training step, on every rank: when any rank got a stop signal, save a checkpoint of `step`
    (unless the engine already holds one of it: just resumed, or just saved) and raise `Preempted`."""
    stop = stop_requested()
    if stop is None:
        return
    if step > 0 and getattr(engine, "saved_step", None) != step:
        save(step)
    raise Preempted(stage, step, getattr(engine, "last_checkpoint", None) if step > 0 else None, *stop)


# ---------------------------------------------------------------------------------------------
# Dead or hung ranks


def heartbeat_key(rank: int) -> str:
    """Where `rank`'s heartbeat counter lives in the rendezvous store (one namespace per launch attempt: an elastic
    restart keeps the store)."""
    return f"grpo/heartbeat/{os.environ.get('TORCHELASTIC_RESTART_COUNT', '0')}/{rank}"


class Heartbeat:
    """A daemon thread that bumps this rank's counter in the rendezvous store every `interval` seconds, through its
    own store client. A rank whose counter stops moving is dead or hung (SIGSTOP, a C call holding the GIL)."""

    def __init__(self, rank: int, world: int, interval: float = HEARTBEAT_INTERVAL_S):
        from datetime import timedelta

        import torch

        self.rank, self.world, self.interval = rank, world, interval
        self.store_timeout_s = max(5.0, 2 * interval)  # what one beat may take at most
        self.host, self.port = os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"])
        self.store = torch.distributed.TCPStore(self.host, self.port, is_master=False,
                                                timeout=timedelta(seconds=self.store_timeout_s),
                                                wait_for_workers=False)
        self._count = 0
        self._stop = threading.Event()
        self._beat()
        self.thread = threading.Thread(target=self._run, name="grpo-heartbeat", daemon=True)
        self.thread.start()

    def _beat(self) -> None:
        self._count += 1
        self.store.set(heartbeat_key(self.rank), str(self._count))

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self._beat()
            except Exception:  # the store is gone (its host died); the diagnosis will say so
                return

    def counters(self) -> dict[int, int | None]:
        out: dict[int, int | None] = {}
        keys = [heartbeat_key(r) for r in range(self.world)]
        for r, k in enumerate(keys):
            out[r] = int(self.store.get(k)) if self.store.check([k]) else None
        return out

    def silent_ranks(self) -> list[int]:
        """Ranks (other than this one) whose counter did not move over ~2.5 intervals."""
        before = self.counters()
        time.sleep(2.5 * self.interval)
        after = self.counters()
        return [r for r in range(self.world) if r != self.rank and (after[r] is None or after[r] == before[r])]

    def close(self) -> None:
        """Stop and join the thread. Registered with atexit: a daemon thread still inside a store call when the
        interpreter finalizes is ended by pthread_exit inside C++ code, which aborts the whole process ("terminate
        called without an active exception", seen at the exit of finished multi-rank runs)."""
        self._stop.set()
        if self.thread is not threading.current_thread():
            self.thread.join(timeout=self.interval + self.store_timeout_s)


_heartbeat: Heartbeat | None = None


def start_heartbeat(rank: int, world: int, interval: float = HEARTBEAT_INTERVAL_S) -> None:
    """Start this rank's heartbeat once (multi-rank runs only; best effort: without a store no names are given)."""
    global _heartbeat
    if _heartbeat is not None or world <= 1 or "MASTER_ADDR" not in os.environ or "MASTER_PORT" not in os.environ:
        return
    try:
        _heartbeat = Heartbeat(rank, world, interval)
    except Exception:
        _heartbeat = None
        return
    atexit.register(_heartbeat.close)


def is_peer_failure(exc: BaseException) -> bool:
    """A collective that failed because a peer is gone or silent (gloo or NCCL), as opposed to a bug here."""
    if isinstance(exc, (Preempted, CheckpointError, PeerLost)):
        return False
    try:
        import torch

        if not torch.distributed.is_initialized() or torch.distributed.get_world_size() == 1:
            return False
        if isinstance(exc, getattr(torch.distributed, "DistError", ())):
            return True
    except Exception:
        return False
    text = str(exc)
    return isinstance(exc, RuntimeError) and any(s in text for s in (
        "gloo/transport", "Connection closed by peer", "Connection reset by peer", "Timed out waiting",
        "NCCL", "Broken pipe", "timed out", "Socket Timeout"))


def peer_lost(exc: BaseException, timeout_s: float | None) -> PeerLost:
    """A one-line explanation of a failed collective, naming the rank(s) that stopped answering where the heartbeats
    tell. Waits a few seconds for the heartbeats."""
    import torch

    rank, world = torch.distributed.get_rank(), torch.distributed.get_world_size()
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    if first.startswith("[") and "] " in first:  # gloo's "[/path/to/pair.cc:553] Connection closed by peer ..."
        first = first.split("] ", 1)[1]
    first = first.split(". This is typically")[0]
    limit = f" (engine.collective_timeout_s={timeout_s:g})" if timeout_s else ""
    head = f"rank {rank} of {world}: a collective failed{limit}: {first}"
    reporter = True
    if _heartbeat is None:
        who = "another rank died or hangs (see the other ranks' logs)"
    else:
        try:
            silent = _heartbeat.silent_ranks()
        except Exception:
            silent = None
        if silent is None:
            who = (f"the rendezvous store at {_heartbeat.host}:{_heartbeat.port} does not answer: rank 0 (or the "
                   "launcher that holds the store) is gone")
        elif silent:
            alive = [r for r in range(world) if r not in silent]
            reporter = rank == min(alive)
            who = (f"rank{'s' if len(silent) > 1 else ''} {', '.join(map(str, silent))} stopped answering "
                   "(died or hangs; see its log)")
        else:
            who = "every rank still answers its heartbeat: a rank may have failed with an error (see the logs)"
    return PeerLost(f"{head}; {who}. Relaunch the same command to resume from the last complete checkpoint.",
                    reporter=reporter)


# ---------------------------------------------------------------------------------------------
# The `--nproc N` launcher process


def child_pids(pid: int) -> list[int]:
    """Direct children of `pid` (Linux /proc)."""
    try:
        return [int(x) for x in open(f"/proc/{pid}/task/{pid}/children").read().split()]
    except OSError:
        pass
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = open(f"/proc/{entry}/stat").read()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                out.append(int(entry))
    return out


def _die_with_parent() -> None:
    """In the child, before exec: get SIGTERM when the parent dies (Linux), so a launcher killed with -9 does not
    leave its ranks running."""
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except Exception:
        pass


def run_forwarding_stop_signals(cmd: list[str]) -> int:
    """Run a launcher (torchrun) in its own session and forward SIGTERM / SIGINT sent to this process to the
    launcher's children, the ranks, not to the launcher: torchrun would pass it on but kill the ranks 30 s later
    and exit nonzero; the ranks themselves finish their step, save, exit 0, and torchrun then exits 0. In its own
    session the launcher and its ranks do not also get the terminal's Ctrl-C. Returns the launcher's exit status
    (128 + signal number when it was killed by one)."""
    import subprocess

    proc = subprocess.Popen(cmd, start_new_session=True, preexec_fn=_die_with_parent)

    def forward(signum, frame):
        for pid in child_pids(proc.pid) or [proc.pid]:  # no ranks yet: the launcher itself
            try:
                os.kill(pid, signum)
            except ProcessLookupError:
                pass

    main = threading.current_thread() is threading.main_thread()
    previous = {s: signal.signal(s, forward) for s in STOP_SIGNALS} if main else {}
    try:
        rc = proc.wait()
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
    return rc if rc >= 0 else 128 - rc


def torchrun_main() -> None:
    """torchrun, with its report of failed ranks in one line instead of a traceback and a table (the ranks have
    said what went wrong already). `python -c "from grpo.runtime.faults import torchrun_main; torchrun_main()"
    <torchrun arguments>`."""
    import sys

    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import main

    try:
        main()
    except ChildFailedError as exc:
        first, _ = exc.get_first_failure()
        parts = []
        for rank, f in sorted(exc.failures.items()):
            how = f"killed by {f.signal_name()}" if f.exitcode < 0 else f"exit status {f.exitcode}"
            parts.append(f"rank {rank} {how}" + (" (first)" if rank == first and len(exc.failures) > 1 else ""))
        print(f"grpo: ranks failed: {'; '.join(parts)}", file=sys.stderr, flush=True)
        sys.exit(1)
