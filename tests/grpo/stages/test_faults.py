"""Faults a run survives, end to end (real DeepSpeed, real vLLM where the loop needs it, 2 gloo ranks where the
ranks must agree), each launched as a user launches it:

- SIGTERM to `grpo train --nproc 2`: both ranks finish the same step, save, exit 0; the relaunch repeats the
  uninterrupted run's rewards and losses step for step;
- SIGTERM during SFT of `grpo run`: the stage is not marked done, the next stage does not start;
- kill -9 in the middle of a checkpoint save: the relaunch skips the half-written one, says so, resumes from the one
  before;
- kill -9 of one rank: the other ends within the collective timeout, naming the dead rank; the relaunch resumes;
- a full file system while saving: one line naming the path, nonzero exit, the previous checkpoint intact.
"""
from __future__ import annotations

import json
import os
import re
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from grpo.runtime.distributed import env_without_rendezvous
from grpo.runtime.engine import COMPLETE_MARKER

pytestmark = pytest.mark.slow

HERE = Path(__file__).parent
REPO = HERE.parents[2]
CONFIG = str(REPO / "configs" / "tiny_arith.yaml")


def env() -> dict:
    e = env_without_rendezvous()
    e.update(PYTHONPATH=f"{HERE}{os.pathsep}{os.environ.get('PYTHONPATH', '')}", OMP_NUM_THREADS="1",
             TOKENIZERS_PARALLELISM="false")
    return e


def grpo_config(tmp_path: Path, model_dir: Path) -> Path:
    """GRPO on the tiny model with a reward that varies (so losses are not all zero), no periodic saves: the only
    checkpoint a stopped run leaves is the one the signal made."""
    path = tmp_path / "cfg.yaml"
    path.write_text(f"""
name: faults
output_dir: {tmp_path / 'runs'}
seed: 3
stages: [grpo]
model: {{name_or_path: {model_dir}}}
data:
  source: arithmetic
  arithmetic: {{n_sft: 0, n_rl: 64, n_eval: 8}}
verifiers:
  - name: reward_plugins:digit_fraction
verify: {{workers: 0}}
rollout: {{max_tokens: 16, gpu_memory_utilization: 0.05, kv_cache_gb: 0.25}}
grpo: {{steps: 6, prompts_per_step: 2, group_size: 4, micro_batch_size: 8, optim: {{lr: 0.01}}, save_every: 0}}
eval: {{num_problems: 0}}
metrics: {{tensorboard: false, progress_bar: false}}
""")
    return path


def sft_args(tmp_path: Path, model_dir: Path, *extra: str) -> list[str]:
    """The embedded config, scaled down to a few SFT steps on the tiny model, without held-out evaluation."""
    return [CONFIG, f"output_dir={tmp_path / 'runs'}", f"model.name_or_path={model_dir}", "data.arithmetic.n_sft=200",
            "data.arithmetic.n_rl=50", "data.arithmetic.n_eval=10", "sft.eval_size=0", "sft.tokens_per_batch=1024",
            "sft.save_every=2", "eval.num_problems=0", "metrics.progress_bar=false", "metrics.tensorboard=false",
            *extra]


def cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "grpo.cli", *args]


def run(cmd: list[str], cwd: Path, ok: bool = True, timeout: int = 600, **kw) -> subprocess.CompletedProcess:
    kw.setdefault("env", env())
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout, **kw)
    if ok:
        assert proc.returncode == 0, f"{' '.join(cmd)}:\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
    return proc


def metrics(run_dir: Path, stage: str) -> list[dict]:
    path = run_dir / "metrics.jsonl"
    if not path.exists():
        return []
    rows = []
    for line in path.read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:  # a line being written
            pass
    return [r for r in rows if r.get("stage") == stage]


def start(cmd: list[str], cwd: Path) -> subprocess.Popen:
    return subprocess.Popen(cmd, cwd=cwd, env=env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_for_step(proc: subprocess.Popen, run_dir: Path, stage: str, step: int, timeout: float = 600) -> None:
    deadline = time.monotonic() + timeout
    while not any(r["step"] >= step for r in metrics(run_dir, stage)):
        assert proc.poll() is None, f"exited with {proc.returncode} before step {step}:\n{proc.communicate()[1][-5000:]}"
        assert time.monotonic() < deadline, f"no step {step} of {stage} in {timeout} s"
        time.sleep(0.2)


def descendants(pid: int) -> list[int]:
    from grpo.runtime.faults import child_pids

    out = []
    for c in child_pids(pid):
        out += [c, *descendants(c)]
    return out


def rank_pid(parent: int, rank: int) -> int:
    """The process of `rank` under a `--nproc` launch (its environment says RANK=rank and it imported grpo)."""
    for pid in descendants(parent):
        try:
            environ = open(f"/proc/{pid}/environ", "rb").read().split(b"\0")
            cmdline = open(f"/proc/{pid}/cmdline", "rb").read()
        except OSError:
            continue
        if f"RANK={rank}".encode() in environ and b"grpo.cli" in cmdline and b"torch.distributed.run" not in cmdline:
            return pid
    raise AssertionError(f"no rank {rank} among {descendants(parent)}")


def test_sigterm_to_a_two_rank_run_then_relaunch_matches_the_uninterrupted_run(tmp_path, tiny_model_dir):
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir(), b.mkdir()
    run(cli("train", str(grpo_config(a, tiny_model_dir)), "--nproc", "2"), a)
    cmd = cli("train", str(grpo_config(b, tiny_model_dir)), "--nproc", "2")
    proc = start(cmd, b)
    run_dir = b / "runs" / "faults"
    wait_for_step(proc, run_dir, "grpo", 2)
    proc.send_signal(signal.SIGTERM)  # to the launcher, as Kubernetes or `kill` would: it reaches both ranks
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, out[-3000:] + err[-5000:]
    # the launcher forwarded the signal to both ranks; they agreed on the step
    stopped = re.search(r"grpo: stopped by SIGTERM \(on ranks 0, 1\) after step (\d+) of grpo; checkpoint saved in (\S+);",
                        out)
    assert stopped, out[-3000:] + err[-3000:]
    k = int(stopped.group(1))
    assert 2 <= k < 6 and stopped.group(2) == str(run_dir / "grpo" / "checkpoints" / f"step{k}")
    assert (run_dir / "grpo" / "checkpoints" / f"step{k}" / "COMPLETE").exists()
    assert out.count("grpo: stopped by") == 1 and "Traceback" not in err
    assert not (run_dir / "grpo" / "final").exists() and not (run_dir / "grpo" / "done.json").exists()
    assert [r["step"] for r in metrics(run_dir, "grpo")] == list(range(1, k + 1))

    again = run(cmd, b)
    assert f"resumed from checkpoint {run_dir / 'grpo' / 'checkpoints' / f'step{k}'} at step {k}" in again.stdout
    full = {r["step"]: r for r in metrics(a / "runs" / "faults", "grpo")}
    resumed = metrics(run_dir, "grpo")
    assert [r["step"] for r in resumed] == [1, 2, 3, 4, 5, 6] == sorted(full)
    for r in resumed:
        ref = full[r["step"]]
        assert r["reward/mean"] == pytest.approx(ref["reward/mean"], abs=1e-6), r["step"]
        assert r["policy/pg_loss"] == pytest.approx(ref["policy/pg_loss"], abs=1e-5), r["step"]
        assert r["grad_norm"] == pytest.approx(ref["grad_norm"], rel=1e-4), r["step"]
    assert any(r["grad_norm"] > 0 for r in resumed[k:])  # the steps after the resume really trained


def test_sigterm_during_a_stage_of_grpo_run_does_not_mark_it_done_or_start_the_next(tmp_path, tiny_model_dir):
    args = sft_args(tmp_path, tiny_model_dir, "stages=[sft,grpo]", "sft.max_steps=40", "sft.save_every=0")
    proc = start(cli("run", *args), tmp_path)
    run_dir = tmp_path / "runs" / "tiny_arith"
    wait_for_step(proc, run_dir, "sft", 2)
    proc.send_signal(signal.SIGINT)  # Ctrl-C
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, out[-3000:] + err[-5000:]
    stopped = re.search(r"grpo: stopped by SIGINT after step (\d+) of sft; checkpoint saved in (\S+);", out)
    assert stopped, out[-3000:] + err[-3000:]
    assert "SIGINT received: finishing the current step" in err
    assert not (run_dir / "sft" / "done.json").exists() and not (run_dir / "sft" / "final").exists()
    assert not (run_dir / "grpo").exists() and "stage grpo" not in out
    # the same stage launched again continues from the checkpoint the signal made
    again = run(cli("sft", *args), tmp_path)
    assert f"resumed from checkpoint {stopped.group(2)} at step {stopped.group(1)}" in again.stdout
    assert (run_dir / "sft" / "final" / "config.json").exists()


def test_kill_during_a_checkpoint_save_then_relaunch_resumes_from_the_previous_one(tmp_path, tiny_model_dir):
    cmd = cli("sft", *sft_args(tmp_path, tiny_model_dir, "sft.max_steps=6"))
    ckpts = tmp_path / "runs" / "tiny_arith" / "sft" / "checkpoints"
    # the test hook: the save of step4 truncates its first file to half and SIGKILLs the process
    crashed = run(cmd, tmp_path, ok=False, env={**env(), "GRPO_TEST_CRASH_DURING_SAVE": "step4"})
    assert crashed.returncode == -signal.SIGKILL, crashed.stderr[-3000:]
    assert (ckpts / "step2" / "COMPLETE").exists() and (ckpts / ".step4.incomplete").is_dir()
    assert not (ckpts / "step4").exists() and (ckpts / "latest").read_text() == "step2"

    again = run(cmd, tmp_path)
    assert f"skipped incomplete checkpoint {ckpts / '.step4.incomplete'}" in again.stdout
    assert f"resumed from checkpoint {ckpts / 'step2'} at step 2" in again.stdout
    assert (ckpts / "step4" / "COMPLETE").exists() and not (ckpts / ".step4.incomplete").exists()
    assert (tmp_path / "runs" / "tiny_arith" / "sft" / "final" / "config.json").exists()


def test_kill_of_one_rank_ends_the_other_within_the_timeout_naming_it(tmp_path, tiny_model_dir):
    timeout_s = 30
    cmd = cli("sft", *sft_args(tmp_path, tiny_model_dir, "sft.max_steps=40", f"engine.collective_timeout_s={timeout_s}"),
              "--nproc", "2")
    proc = start(cmd, tmp_path)
    run_dir = tmp_path / "runs" / "tiny_arith"
    wait_for_step(proc, run_dir, "sft", 3)
    os.kill(rank_pid(proc.pid, 1), signal.SIGKILL)
    t0 = time.monotonic()
    out, err = proc.communicate(timeout=timeout_s + 120)
    took = time.monotonic() - t0
    assert proc.returncode != 0 and took < timeout_s + 60, (proc.returncode, took)
    line = [x for x in err.splitlines() if x.startswith("grpo: distributed error:")]
    assert len(line) == 1, err[-5000:]
    assert "rank 0 of 2: a collective failed" in line[0] and "rank 1 stopped answering" in line[0], line[0]
    assert "rank 1 killed by SIGKILL (first)" in err and "Traceback" not in err  # the launcher's summary, one line
    # the newest checkpoint whose save finished: a step can be logged while its save is cut off by the kill
    ckpt_dir = run_dir / "sft" / "checkpoints"
    saved = max(int(d.name.removeprefix("step")) for d in ckpt_dir.glob("step*") if (d / COMPLETE_MARKER).exists())
    assert saved >= 2

    again = run(cmd, tmp_path)
    assert "resumed from checkpoint" in again.stdout and f"at step {saved}" in again.stdout, again.stdout[-3000:]


def test_a_full_file_system_while_saving_fails_clearly_and_keeps_the_previous_checkpoint(tmp_path, tiny_model_dir):
    """RLIMIT_FSIZE on the launch (inherited by torchrun and both ranks): every write past 256 KB fails with EFBIG,
    as a full disk fails with ENOSPC. The model-and-optimizer file of a checkpoint is ~4 MB."""
    ckpts = tmp_path / "runs" / "tiny_arith" / "sft" / "checkpoints"
    run(cli("sft", *sft_args(tmp_path, tiny_model_dir, "sft.max_steps=2"), "--nproc", "2"), tmp_path)
    assert (ckpts / "step2" / "COMPLETE").exists()
    before = {p.name: p.read_bytes() for p in (ckpts / "step2").iterdir() if p.is_file()}

    def limit_file_size():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # write() returns EFBIG instead of the signal killing us
        resource.setrlimit(resource.RLIMIT_FSIZE, (256 * 1024, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))

    full = run(cli("sft", *sft_args(tmp_path, tiny_model_dir, "sft.max_steps=4"), "--nproc", "2"), tmp_path, ok=False,
               preexec_fn=limit_file_size)
    assert full.returncode != 0
    lines = [x for x in full.stderr.splitlines() if x.startswith("grpo: checkpoint error:")]
    assert len(lines) == 1, full.stderr[-5000:]
    assert f"could not write checkpoint {ckpts / 'step4'}: writing {ckpts / '.step4.incomplete'}" in lines[0]
    assert "file too large" in lines[0] and f"previous checkpoint {ckpts / 'step2'} is intact" in lines[0]
    assert "Traceback" not in full.stderr and "grpo: ranks failed: rank 0 " in full.stderr
    assert not (ckpts / "step4").exists() and not (ckpts / ".step4.incomplete").exists()
    assert {p.name: p.read_bytes() for p in (ckpts / "step2").iterdir() if p.is_file()} == before
    state = torch.load(ckpts / "step2" / "mp_rank_00_model_states.pt", weights_only=False, map_location="cpu")
    assert state["step"] == 2 and state["module"]
