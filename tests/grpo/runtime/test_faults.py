"""Faults, fast: atomic checkpoints (a save that dies halfway is skipped on resume, with a line saying so), a write
error while saving (one CheckpointError naming the path, the previous checkpoint still loads), the stop flag that
SIGTERM/SIGINT set, and a dead or hung peer named by the heartbeats (two gloo processes on loopback).
The end-to-end versions (real runs, real signals, kill -9) are in tests/grpo/stages/test_faults.py."""
from __future__ import annotations

import os
import resource
import signal
import socket
import time
from pathlib import Path

import pytest
import torch

from grpo.config import ConfigError, EngineConfig, OptimConfig
from grpo.runtime import engine as engine_module
from grpo.runtime import faults
from grpo.runtime.engine import (COMPLETE_MARKER, TrainEngine, init_distributed, is_complete,
                                 latest_complete_checkpoint)


def make_engine(width: int = 8, seed: int = 0) -> TrainEngine:
    init_distributed(EngineConfig())
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(width, width), torch.nn.Tanh(), torch.nn.Linear(width, 1))
    return TrainEngine(model, EngineConfig(), OptimConfig(lr=0.05), total_steps=10)


def train_step(eng: TrainEngine, seed: int) -> None:
    x = torch.randn(4, eng.module[0].in_features, generator=torch.Generator().manual_seed(seed))
    eng.backward(eng.ds(x).pow(2).mean())
    eng.step()


def weights(eng: TrainEngine) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in eng.named_weights()}


def _model_dir(path: Path, payload: bytes) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    (path / "config.json").write_text("{}")
    (path / "model.safetensors").write_bytes(payload)
    return path


def test_resume_refuses_a_checkpoint_of_a_stage_that_started_from_another_model(tmp_path):
    """`grpo train` then `grpo run` under one name: the run's GRPO starts from its DPO model and must not continue
    the first run's GRPO checkpoints (seen: it resumed at its last step and trained nothing)."""
    base = _model_dir(tmp_path / "base", b"base weights")
    dpo = _model_dir(tmp_path / "run" / "dpo" / "final", b"dpo weights")
    ckpt = tmp_path / "run" / "grpo" / "checkpoints"
    eng = make_engine()
    assert eng.resume(ckpt, "auto", "grpo", init_model=str(base)) is None  # nothing to resume yet
    train_step(eng, 1)
    eng.save_checkpoint(ckpt, "step1", {"step": 1})

    with pytest.raises(ConfigError, match=r"step1 continues a grpo stage that started from .*base, but this run "
                                          r"starts grpo from .*dpo/final \(a different model\)"):
        make_engine().resume(ckpt, "auto", "grpo", init_model=str(dpo))
    assert is_complete(ckpt / "step1")  # nothing removed
    # the same model (a relaunch after preemption) resumes; so does an explicit checkpoint path
    assert make_engine().resume(ckpt, "auto", "grpo", init_model=str(base))["step"] == 1
    assert make_engine().resume(ckpt, str(ckpt / "step1"), "grpo", init_model=str(dpo))["step"] == 1
    # the same directory, rewritten by a stage that ran again (other weights: another size or time)
    time.sleep(0.01)
    (base / "model.safetensors").write_bytes(b"retrained base weights")
    with pytest.raises(ConfigError, match="the same directory since rewritten"):
        make_engine().resume(ckpt, "auto", "grpo", init_model=str(base))


def test_a_checkpoint_that_records_no_starting_model_still_resumes(tmp_path):
    eng = make_engine()
    train_step(eng, 1)
    eng.save_checkpoint(tmp_path, "step1", {"step": 1})  # resume() not called: the engine records no model
    assert "init_identity" not in (tmp_path / "step1" / COMPLETE_MARKER).read_text()
    assert make_engine().resume(tmp_path, "auto", "grpo", init_model="Qwen/Qwen2.5-0.5B")["step"] == 1


def test_save_is_atomic_and_resume_takes_the_newest_complete_checkpoint(tmp_path, capsys):
    eng = make_engine()
    train_step(eng, 1)
    path = eng.save_checkpoint(tmp_path, "step1", {"step": 1})
    assert path == tmp_path / "step1" and is_complete(path)
    assert (tmp_path / "latest").read_text() == "step1" and not list(tmp_path.glob(".*"))
    assert (eng.saved_step, eng.last_checkpoint) == (1, path)
    saved = weights(eng)
    train_step(eng, 2)
    # a save of the same tag replaces the old one whole
    eng.save_checkpoint(tmp_path, "step1", {"step": 1})
    assert is_complete(tmp_path / "step1") and not (tmp_path / ".step1.old").exists()

    fresh = make_engine(seed=5)
    state = fresh.resume(tmp_path, "auto", "test")
    assert state["step"] == 1 and fresh.saved_step == 1
    assert "resumed from checkpoint" in capsys.readouterr().out
    assert all(torch.equal(weights(fresh)[k], weights(eng)[k]) for k in saved)


class Died(BaseException):
    """Stands for the SIGKILL of the test hook (an exception the save does not catch, like a death)."""


def test_a_save_killed_halfway_is_skipped_on_resume(tmp_path, monkeypatch, capsys):
    eng = make_engine()
    train_step(eng, 1)
    eng.save_checkpoint(tmp_path, "step1", {"step": 1})
    at_step1 = weights(eng)
    train_step(eng, 2)

    def die(path):
        with open(path, "r+b") as fh:
            fh.truncate(os.path.getsize(path) // 2)
        raise Died

    monkeypatch.setenv(engine_module.TEST_CRASH_DURING_SAVE_ENV, "step2")
    monkeypatch.setattr(engine_module, "_crash_halfway", die)
    with pytest.raises(Died):
        eng.save_checkpoint(tmp_path, "step2", {"step": 2})
    monkeypatch.delenv(engine_module.TEST_CRASH_DURING_SAVE_ENV)
    half = tmp_path / ".step2.incomplete"
    assert half.is_dir() and not (half / COMPLETE_MARKER).exists() and not (tmp_path / "step2").exists()
    # a step directory without the marker (not what `latest` names) is not taken either
    (tmp_path / "step3").mkdir()
    assert latest_complete_checkpoint(tmp_path) == ("step1", [half, tmp_path / "step3"])

    fresh = make_engine(seed=5)
    state = fresh.resume(tmp_path, "auto", "test")
    out = capsys.readouterr().out
    assert state["step"] == 1 and f"skipped incomplete checkpoint {half}" in out and "at step 1" in out
    assert all(torch.equal(weights(fresh)[k], v) for k, v in at_step1.items())
    # the next save clears what the dead one left
    fresh.save_checkpoint(tmp_path, "step2", {"step": 2})
    assert not half.exists() and latest_complete_checkpoint(tmp_path)[0] == "step2"


def test_a_checkpoint_from_an_older_version_is_taken_when_latest_names_it(tmp_path):
    (tmp_path / "step4").mkdir()
    (tmp_path / "step2").mkdir()
    (tmp_path / "latest").write_text("step4")
    assert latest_complete_checkpoint(tmp_path) == ("step4", [tmp_path / "step2"])
    assert latest_complete_checkpoint(tmp_path / "missing") == (None, [])


def test_a_write_error_while_saving_names_the_path_and_keeps_the_previous_checkpoint(tmp_path):
    """RLIMIT_FSIZE makes every write past the limit fail with EFBIG, as a full disk fails with ENOSPC (SIGXFSZ
    ignored, as Python does by default, so write() returns the error instead of killing the process)."""
    eng = make_engine(width=128)  # model states + AdamW moments ~200 KB: over the limit below
    train_step(eng, 1)
    eng.save_checkpoint(tmp_path, "step1", {"step": 1})
    at_step1 = weights(eng)
    train_step(eng, 2)
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    previous = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (64 * 1024, hard))
    try:
        with pytest.raises(faults.CheckpointError) as err:
            eng.save_checkpoint(tmp_path, "step2", {"step": 2})
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, previous)
    text = str(err.value)
    assert f"could not write checkpoint {tmp_path / 'step2'}" in text and "file too large" in text
    assert f"previous checkpoint {tmp_path / 'step1'} is intact" in text
    assert not (tmp_path / "step2").exists() and not (tmp_path / ".step2.incomplete").exists()
    assert eng.saved_step == 1 and latest_complete_checkpoint(tmp_path) == ("step1", [])
    fresh = make_engine(width=128, seed=5)
    assert fresh.resume(tmp_path, "auto", "test")["step"] == 1
    assert all(torch.equal(weights(fresh)[k], v) for k, v in at_step1.items())


def test_collective_timeout_is_a_validated_engine_key():
    from grpo.config import ConfigError, load_config

    assert load_config(None).engine.collective_timeout_s == 600.0
    assert load_config(None, ["engine.collective_timeout_s=30"]).engine.collective_timeout_s == 30.0
    with pytest.raises(ConfigError, match=r"engine\.collective_timeout_s.*must be > 0"):
        load_config(None, ["engine.collective_timeout_s=0"])


def test_first_signal_sets_the_flag_and_the_loop_saves_then_stops(tmp_path):
    class FakeEngine:
        saved_step, last_checkpoint = None, None

    saves: list[int] = []

    def save(step):
        saves.append(step)
        eng.saved_step, eng.last_checkpoint = step, tmp_path / f"step{step}"

    eng = FakeEngine()
    assert faults.install_stop_signals()
    try:
        faults.stop_if_requested("grpo", 3, eng, save)  # no signal: nothing happens
        assert saves == []
        os.kill(os.getpid(), signal.SIGTERM)  # the process lives on
        time.sleep(0.05)
        assert faults.local_stop_signal() == signal.SIGTERM
        os.kill(os.getpid(), signal.SIGTERM)  # a copy within the grace window: still alive
        with pytest.raises(faults.Preempted) as stop:
            faults.stop_if_requested("grpo", 3, eng, save)
        assert saves == [3]
        assert str(stop.value).startswith("stopped by SIGTERM after step 3 of grpo; checkpoint saved in ")
        with pytest.raises(faults.Preempted):  # already saved at this step: not saved twice
            faults.stop_if_requested("grpo", 3, eng, save)
        assert saves == [3]
        with pytest.raises(faults.Preempted, match="before the first step of dpo"):
            faults.stop_if_requested("dpo", 0, eng, save)
    finally:
        faults.restore_signals()
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL and faults.local_stop_signal() is None


def test_a_second_signal_after_the_grace_window_exits_at_once(monkeypatch):
    exits: list[int] = []
    monkeypatch.setattr(faults, "REPEAT_GRACE_S", 0.0)
    monkeypatch.setattr(faults.os, "_exit", exits.append)  # instead of leaving the test process
    assert faults.install_stop_signals()
    try:
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(0.05)
        assert exits == [] and faults.local_stop_signal() == signal.SIGINT
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(0.05)
        assert exits == [128 + signal.SIGINT]
    finally:
        faults.restore_signals()


# ---------------------------------------------------------------------------------------------
# Two real gloo processes: a peer that dies, a peer that hangs


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _peer(rank: int, port: int, mode: str, out) -> None:
    from datetime import timedelta

    import torch.distributed as dist

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE="2")
    dist.init_process_group("gloo", rank=rank, world_size=2, timeout=timedelta(seconds=3))
    faults.start_heartbeat(rank, 2, interval=0.5)
    assert faults.stop_requested() is None  # one agreed round while both live
    if rank == 1:
        os.kill(os.getpid(), signal.SIGKILL if mode == "dies" else signal.SIGSTOP)
    time.sleep(0.5)
    t0 = time.monotonic()
    try:
        faults.stop_requested()
        out.put(("no error", 0.0))
    except RuntimeError as exc:
        waited = time.monotonic() - t0
        assert faults.is_peer_failure(exc)
        lost = faults.peer_lost(exc, 3.0)
        out.put((str(lost), waited, lost.reporter))


@pytest.mark.parametrize("mode", ["dies", "hangs"])
def test_a_dead_or_hung_peer_ends_the_collective_within_the_timeout_and_is_named(mode):
    import torch.multiprocessing as mp

    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    port = _free_port()
    procs = [ctx.Process(target=_peer, args=(r, port, mode, out)) for r in (0, 1)]
    for p in procs:
        p.start()
    try:
        message, waited, reporter = out.get(timeout=120)
    finally:
        for p in procs:
            if p.is_alive():
                os.kill(p.pid, signal.SIGKILL)
            p.join()
    assert waited < 3.0 + 2.0, waited  # a dead peer fails at once, a hung one after the 3 s timeout
    if mode == "hangs":
        assert waited > 2.5, waited
    assert message.startswith("rank 0 of 2: a collective failed (engine.collective_timeout_s=3)")
    assert "rank 1 stopped answering (died or hangs" in message and reporter
    assert "resume from the last complete checkpoint" in message


_EXIT_WHILE_BEATING = """
import os, socket, sys, time
from datetime import timedelta
import torch.distributed as dist
from grpo.runtime import faults

statuses = []
for attempt in range(20):
    pid = os.fork()
    if pid == 0:  # a fresh process (threads do not survive fork): a store, a heartbeat beating flat out, exit
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
        server = dist.TCPStore("127.0.0.1", port, is_master=True, wait_for_workers=False,
                               timeout=timedelta(seconds=5))
        faults.start_heartbeat(0, 2, interval=1e-5)
        time.sleep(0.02)
        sys.exit(0)
    statuses.append(os.waitpid(pid, 0)[1])
print(statuses)
sys.exit(0 if all(s == 0 for s in statuses) else 1)
"""


def test_a_process_exits_cleanly_while_its_heartbeat_is_inside_a_store_call():
    """The heartbeat thread is stopped and joined at exit; left running, the interpreter's finalization ended it
    inside a TCPStore call and the process aborted (about one exit in three at this beat rate; once in a while at
    the end of real --nproc 2 runs)."""
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-c", _EXIT_WHILE_BEATING], capture_output=True, text=True, timeout=120,
                          cwd=Path(__file__).resolve().parents[3])
    assert proc.returncode == 0, proc.stdout + proc.stderr[-2000:]
    assert "terminate called" not in proc.stderr


# ---------------------------------------------------------------------------------------------
# DeepSpeed's CPU op build lock (a killed build left it behind and every later run waited forever, silently)


def test_a_stale_extension_build_lock_is_removed_with_a_line(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path))
    build_dir = engine_module._extension_build_dir("some_op")
    assert build_dir is not None and str(build_dir).startswith(str(tmp_path))
    lock = build_dir / "lock"
    lines = []
    assert engine_module.wait_for_extension_build("some_op", say=lambda *a, **k: lines.append(a[0])) is None
    lock.touch()
    os.utime(lock, (time.time() - 400, time.time() - 400))
    assert engine_module.wait_for_extension_build("some_op", stale_after_s=300,
                                                  say=lambda *a, **k: lines.append(a[0])) == "removed"
    assert not lock.exists() and len(lines) == 1 and "stale build lock" in lines[0] and str(lock) in lines[0]


def test_a_live_extension_build_lock_is_waited_for_and_left_to_its_owner(tmp_path, monkeypatch):
    import threading

    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path))
    lock = engine_module._extension_build_dir("some_op") / "lock"
    lock.touch()
    owner = threading.Timer(0.3, lock.unlink)  # the building process finishes
    owner.start()
    t0 = time.monotonic()
    assert engine_module.wait_for_extension_build("some_op", stale_after_s=300, poll_s=0.05,
                                                  say=lambda *a, **k: None) == "waited"
    assert time.monotonic() - t0 >= 0.25
    owner.join()
