"""The training engine: the only module that imports DeepSpeed.

Wraps a causal LM in a DeepSpeed engine (ZeRO 0-3, fp32 on the CPU, bf16 on GPUs) with AdamW, a
warmup + schedule, gradient clipping and accumulation; saves and restores exact training state;
yields full weights for the push into vLLM (gathering ZeRO-3 partitions).
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import random
import re
import shutil
import signal
import sys
import time
from datetime import timedelta
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch

from grpo.config import ConfigError, EngineConfig, OptimConfig, RolloutConfig
from grpo.runtime.distributed import DistInfo, all_gather_objects, free_port, barrier, is_main_process
from grpo.runtime.faults import CheckpointError, start_heartbeat
from grpo.runtime.models import model_files

# A checkpoint directory is whole when it holds this file (written last, then the directory is renamed into place).
COMPLETE_MARKER = "COMPLETE"
# Checkpoints are written under `.<tag>.incomplete` first, and renamed to their tag when whole.
INCOMPLETE_SUFFIX = ".incomplete"
# Test hook, read at save time: the tag (e.g. "step4") whose save kills this process (SIGKILL) halfway through
# writing its first file, as a crash or `kill -9` would. Never set outside tests.
TEST_CRASH_DURING_SAVE_ENV = "GRPO_TEST_CRASH_DURING_SAVE"


def _forget_deepspeed_groups() -> None:
    """DeepSpeed caches the world and data-parallel groups at module level; after a process group was
    destroyed (vLLM's engine teardown does that) and a new one is made in the same process, the cached groups
    are dead and DeepSpeed's first broadcast fails with 'Group ... is not registered'."""
    from deepspeed.utils import groups

    for name in ("_WORLD_GROUP", "_ZERO_PARAM_INTRA_PARALLEL_GROUP", "_TENSOR_MODEL_PARALLEL_GROUP",
                 "_MODEL_PARALLEL_GROUP", "_DATA_PARALLEL_GROUP"):
        if hasattr(groups, name):
            setattr(groups, name, None)
    for name in ("_EXPERT_PARALLEL_GROUP", "_EXPERT_PARALLEL_GROUP_RANKS", "_EXPERT_DATA_PARALLEL_GROUP",
                 "_EXPERT_DATA_PARALLEL_GROUP_RANKS", "_ALL_TO_ALL_GROUP"):
        if isinstance(getattr(groups, name, None), dict):
            getattr(groups, name).clear()


# DeepSpeed compiles its CPU communication op (shm_comm) on first use, under torch's build lock: a file whose mere
# existence makes every later process wait, forever and silently. A process killed mid-build leaves it behind.
SHM_OP = "deepspeed_shm_comm"
STALE_BUILD_LOCK_S = 300.0  # the build takes about a minute on 2 cores


def _extension_build_dir(name: str) -> Path | None:
    try:
        from torch.utils.cpp_extension import _get_build_directory

        return Path(_get_build_directory(name, verbose=False))
    except Exception:  # a private torch helper: without it torch's own wait applies
        return None


def wait_for_extension_build(name: str = SHM_OP, stale_after_s: float = STALE_BUILD_LOCK_S,
                             poll_s: float = 1.0, say=print) -> str | None:
    """Before DeepSpeed builds or loads `name`: wait while another process holds the build lock, and remove a lock
    older than `stale_after_s` (left by a killed build), saying so. Returns what happened ("waited" / "removed")."""
    build_dir = _extension_build_dir(name)
    if build_dir is None:
        return None
    lock, waited, told = build_dir / "lock", None, False
    while True:
        try:
            stat = lock.stat()
        except FileNotFoundError:
            return waited
        age = time.time() - stat.st_mtime
        if age > stale_after_s:
            with contextlib.suppress(FileNotFoundError):  # another process of the launch may remove it first
                seen = lock.stat()
                if (seen.st_ino, seen.st_mtime) == (stat.st_ino, stat.st_mtime):  # not a new build's lock meanwhile
                    lock.unlink()
                    say(f"[engine] removed a stale build lock left by a killed process ({lock}, {age:.0f} s old)",
                        flush=True)
                    return "removed"
            continue
        if not told and age > 30:
            say(f"[engine] waiting for another process to finish building {name} (lock {lock}, {age:.0f} s old; "
                f"removed as stale after {stale_after_s:.0f} s)", flush=True)
            told = True
        waited = "waited"
        time.sleep(poll_s)


def init_distributed(cfg: EngineConfig, rollout: RolloutConfig | None = None) -> DistInfo:
    """Initialise torch.distributed once, also for a single process (vLLM's external_launcher
    executor and DeepSpeed both expect a process group). Launchers (torchrun, deepspeed) set the
    env; a plain `grpo train` gets a world of one on a free loopback port. With `rollout.mode: async` the launch
    is split into training and inference processes, each role with a process group of its own
    (grpo.runtime.inference.split_world)."""
    import deepspeed

    role = os.environ.get("GRPO_ROLE", "train")
    if not torch.distributed.is_initialized():
        backend = cfg.dist_backend
        if backend == "auto":
            backend = "nccl" if torch.cuda.is_available() else "gloo"
        _forget_deepspeed_groups()
        if rollout is not None and rollout.mode == "async":
            from grpo.runtime.inference import split_world

            role = split_world(rollout, backend, cfg.collective_timeout_s).role  # DeepSpeed below finds its group
        elif "RANK" not in os.environ:
            os.environ.update({"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1", "LOCAL_WORLD_SIZE": "1",
                               "MASTER_ADDR": "127.0.0.1"})
            os.environ.setdefault("MASTER_PORT", str(free_port()))
        if not torch.cuda.is_available():
            wait_for_extension_build()
        # Every collective gives up after collective_timeout_s (a dead or hung rank must not hang the others
        # forever); the heartbeat lets the rank that sees it fail name the silent one (grpo.runtime.faults).
        deepspeed.init_distributed(dist_backend=backend, verbose=False,
                                   timeout=timedelta(seconds=cfg.collective_timeout_s))
    # A process group started by someone else (vLLM's own executor, a user's script) leaves these unset, but
    # DeepSpeed and vLLM's external_launcher executor read them.
    rank, world = torch.distributed.get_rank(), torch.distributed.get_world_size()
    for key, value in (("RANK", rank), ("WORLD_SIZE", world), ("LOCAL_RANK", rank), ("LOCAL_WORLD_SIZE", world)):
        os.environ.setdefault(key, str(value))
    local_rank = int(os.environ["LOCAL_RANK"])
    if torch.cuda.is_available():
        torch.cuda.set_device(local_rank)
    start_heartbeat(rank, world)  # async: already started under the launch's numbering (a no-op here)
    return DistInfo(rank, world, local_rank, role)


def lr_lambda(optim: OptimConfig, total_steps: int):
    """Linear warmup, then constant / cosine / linear decay to 0 at `total_steps`."""
    warmup = optim.warmup_steps

    def f(step: int) -> float:
        if warmup and step < warmup:
            return (step + 1) / warmup
        if optim.schedule == "constant" or total_steps <= warmup:
            return 1.0
        progress = min(1.0, (step - warmup) / max(1, total_steps - warmup))
        if optim.schedule == "cosine":
            return 0.5 * (1.0 + math.cos(math.pi * progress))
        return 1.0 - progress

    return f


def deepspeed_config(cfg: EngineConfig, optim: OptimConfig, micro_batch_size: int, grad_accum: int,
                     world_size: int) -> dict:
    ds: dict[str, Any] = {
        "train_micro_batch_size_per_gpu": micro_batch_size,
        "gradient_accumulation_steps": grad_accum,
        "train_batch_size": micro_batch_size * grad_accum * world_size,
        "gradient_clipping": optim.max_grad_norm,
        "zero_optimization": {"stage": cfg.zero_stage},
        "zero_allow_untested_optimizer": True,
        "steps_per_print": 10**9,
        "wall_clock_breakdown": False,
    }
    if cfg.precision == "bf16":
        ds["bf16"] = {"enabled": True}
    if cfg.zero_stage >= 2:
        ds["zero_optimization"].update({"overlap_comm": torch.cuda.is_available(), "contiguous_gradients": True})
    if cfg.zero_stage == 3:
        # Weights are gathered for the vLLM push; keep the 16-bit copy consolidated on save.
        ds["zero_optimization"]["stage3_gather_16bit_weights_on_model_save"] = True
        if cfg.zero3_persistence_threshold is not None:
            ds["zero_optimization"]["stage3_param_persistence_threshold"] = cfg.zero3_persistence_threshold
    if cfg.offload_optimizer:
        ds["zero_optimization"]["offload_optimizer"] = {"device": "cpu", "pin_memory": torch.cuda.is_available()}
    return ds


class TrainEngine:
    """A DeepSpeed-wrapped model with its optimizer and schedule.

    Call `backward(loss)` once per micro-batch (the caller weights micro losses so their sum is the
    batch loss), and `step()` after the last micro-batch of a batch: exactly `grad_accum` backward
    calls per step.
    """

    def __init__(self, model: torch.nn.Module, engine_cfg: EngineConfig, optim: OptimConfig, *,
                 total_steps: int, micro_batch_size: int = 1, grad_accum: int = 1):
        import deepspeed

        self.cfg = engine_cfg
        self.grad_accum = grad_accum
        world = torch.distributed.get_world_size() if torch.distributed.is_initialized() else 1
        params = [p for p in model.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(params, lr=optim.lr, betas=tuple(optim.betas), weight_decay=optim.weight_decay)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(optim, total_steps))
        ds_cfg = deepspeed_config(engine_cfg, optim, micro_batch_size, grad_accum, world)
        self.ds, self.optimizer, _, self.scheduler = deepspeed.initialize(
            model=model, optimizer=optimizer, lr_scheduler=scheduler, config=ds_cfg)
        self._micro = 0
        self.saved_step: int | None = None  # the step of the checkpoint that holds the current state, if any
        self.started_from: dict = {}  # the model the stage started from (set by `resume`), in every checkpoint
        self.last_checkpoint: Path | None = None

    @property
    def module(self) -> torch.nn.Module:
        return self.ds.module

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                position_ids: torch.Tensor | None = None) -> torch.Tensor:
        """Logits [B, T, V]."""
        return self.ds(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                       use_cache=False).logits

    def backward(self, loss: torch.Tensor) -> None:
        # The caller already weighted this micro-batch's share of the batch loss.
        self.ds.backward(loss, scale_wrt_gas=False)
        self._micro += 1
        if self._micro < self.grad_accum:
            # DeepSpeed counts micro-batches in step(): called between micro-batches it only advances
            # the count (no update); the call at the boundary, in `step`, reduces and updates.
            self.ds.step()

    def step(self) -> dict:
        """Optimizer step at the end of a batch; returns grad norm and lr."""
        if self._micro != self.grad_accum:
            raise RuntimeError(f"step() after {self._micro} micro-batches; the engine was built for {self.grad_accum}")
        grad_norm = None
        if self.cfg.zero_stage == 0:
            # DeepSpeed records the norm only for ZeRO/bf16 optimizers; without ZeRO the gradients are
            # already averaged over ranks here, so measure it before the step clears them.
            grads = [p.grad for p in self.module.parameters() if p.grad is not None]
            grad_norm = float(torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))) \
                if grads else 0.0
        self.ds.step()
        self._micro = 0
        if grad_norm is None:
            grad_norm = self.ds.get_global_grad_norm()
        return {"grad_norm": float(grad_norm) if grad_norm is not None else float("nan"),
                "lr": float(self.scheduler.get_last_lr()[0])}

    def train(self) -> None:
        self.ds.train()

    def eval(self) -> None:
        self.ds.eval()

    @property
    def is_lora(self) -> bool:
        from grpo.runtime.lora import is_peft

        return is_peft(self.module)

    def adapter_disabled(self):
        """Context: forward passes give the model the stage started from (a fresh adapter, bypassed)."""
        from grpo.runtime.lora import adapter_disabled

        return adapter_disabled(self.module)

    def gathered(self, params: list[torch.nn.Parameter]):
        """Context: the given parameters whole on this rank (ZeRO-3 partitions them; all ranks must enter)."""
        if self.cfg.zero_stage != 3 or not params:
            return contextlib.nullcontext()
        import deepspeed

        return deepspeed.zero.GatheredParameters(params, modifier_rank=None)

    def save_adapter(self, out_dir: Path, every_rank: bool = False) -> Path:
        """The adapter in peft format (all ranks call; rank 0 writes, or each rank its own copy with `every_rank`)."""
        from grpo.runtime.lora import save_adapter

        return save_adapter(self.module, Path(out_dir), self.gathered, is_main=every_rank or is_main_process())

    def named_weights(self, tied_copies: bool = True) -> Iterator[tuple[str, torch.Tensor]]:
        """Full (gathered) weights in the checkpoint naming vLLM expects, one tensor at a time.
        `tied_copies=False` names a tied weight once (lm_head = embeddings), as a checkpoint stores it."""
        module = self.module
        if self.is_lora:
            from grpo.runtime.lora import merged_named_weights

            yield from merged_named_weights(module, self.gathered, tied_copies=tied_copies)
            return
        if self.cfg.zero_stage == 3:
            import deepspeed

            # For the push a tied weight (lm_head = embeddings) must reach vLLM under both names.
            for name, param in module.named_parameters(remove_duplicate=not tied_copies):
                with deepspeed.zero.GatheredParameters([param], modifier_rank=None):
                    yield name, param.detach().clone()
            # Only the buffers a checkpoint holds: non-persistent ones (rotary inv_freq) are rebuilt by
            # vLLM, whose loader rejects them by name.
            for prefix, sub in module.named_modules():
                for name, buf in sub.named_buffers(recurse=False):
                    if name not in sub._non_persistent_buffers_set:
                        yield f"{prefix}.{name}" if prefix else name, buf.detach()
        else:
            for name, tensor in module.state_dict().items():
                yield name, tensor.detach()

    # -- checkpoints -----------------------------------------------------------------------------

    def save_checkpoint(self, ckpt_dir: Path, tag: str, client_state: dict) -> Path:
        """Save the whole training state as `ckpt_dir/tag`, atomically: every rank writes into
        `ckpt_dir/.<tag>.incomplete`, then rank 0 writes the COMPLETE marker (with the step) and renames the
        directory into place. A process killed halfway leaves only an `.incomplete` directory, which `resume`
        skips. A write error on any rank (disk full, EFBIG, EIO) raises `CheckpointError` naming the path on every
        rank; the partial directory is removed and the previous checkpoints are untouched. All ranks must call."""
        ckpt_dir = Path(ckpt_dir)
        final, tmp = ckpt_dir / tag, ckpt_dir / f".{tag}{INCOMPLETE_SUFFIX}"
        step = int(client_state.get("step", -1))
        client_state = dict(client_state, rng=rng_state())
        if is_main_process():
            try:
                ckpt_dir.mkdir(parents=True, exist_ok=True)
                for stale in ckpt_dir.glob(f".*{INCOMPLETE_SUFFIX}"):  # left by a save that did not finish
                    shutil.rmtree(stale, ignore_errors=True)
            except OSError:
                pass  # DeepSpeed's own mkdir fails the same way, and is reported below to every rank
        barrier()
        errors: list[str] = []
        engine = self.ds.checkpoint_engine
        plain_save = engine.save
        crash_tag = os.environ.get(TEST_CRASH_DURING_SAVE_ENV)

        def save(state_dict, path):
            # A failed write is recorded, not raised: DeepSpeed's save has collectives after it, which every rank
            # must still reach; the ranks agree on the outcome below.
            if errors:
                return
            try:
                plain_save(state_dict, path)
                if crash_tag == tag:
                    _crash_halfway(path)
                with open(path, "rb") as fh:
                    os.fsync(fh.fileno())  # on disk before the directory is marked complete
            except (OSError, RuntimeError) as exc:  # torch.save's zip writer reports a failed write as RuntimeError
                errors.append(_describe_write_error(exc, path))

        engine.save = save
        try:
            self.ds.save_checkpoint(str(ckpt_dir), tag=tmp.name, client_state=client_state, save_latest=False)
        except OSError as exc:  # a write outside the checkpoint engine (the recovery script copy, a mkdir)
            errors.append(_describe_write_error(exc, exc.filename or tmp))
        finally:
            engine.save = plain_save
        failed = [e for errs in all_gather_objects(errors) for e in errs]
        if not failed:
            finish_error = []
            if is_main_process():
                try:
                    world = torch.distributed.get_world_size() if torch.distributed.is_initialized() else 1
                    _finish(tmp, final, tag, step, world, self.started_from)
                except OSError as exc:
                    finish_error = [_describe_write_error(exc, exc.filename or tmp)]
            failed = [e for errs in all_gather_objects(finish_error) for e in errs]
        if failed:
            if is_main_process():
                shutil.rmtree(tmp, ignore_errors=True)  # frees the space the partial write took
            previous = f"; the previous checkpoint {self.last_checkpoint} is intact" if self.last_checkpoint else ""
            error = CheckpointError(f"could not write checkpoint {final}: {failed[0]}{previous}")
            if is_main_process():
                # said here, before the barrier: under a launcher another rank's exit may kill this one any moment
                print(f"grpo: checkpoint error: {error}", file=sys.stderr, flush=True)
                error.reported = True
            barrier()
            raise error
        self.saved_step, self.last_checkpoint = step, final
        return final

    def load_checkpoint(self, ckpt_dir: Path, tag: str | None = None) -> dict:
        _, client_state = self.ds.load_checkpoint(str(ckpt_dir), tag=tag, load_optimizer_states=True,
                                                  load_lr_scheduler_states=True)
        if client_state is None:
            raise CheckpointError(f"no checkpoint could be loaded from {Path(ckpt_dir) / str(tag)}")
        if "rng" in client_state:
            set_rng_state(client_state["rng"])
        return client_state

    def resume(self, ckpt_dir: Path, resume: str, stage: str, init_model: str | None = None) -> dict | None:
        """Restore the checkpoint `resume` asks for ("auto": the newest complete one in `ckpt_dir`, if any, saying
        which incomplete ones it skipped; "never"; or a checkpoint directory), say so, and return its client state
        (step, data position, ...); None when starting fresh. `init_model`: the model the stage starts from; this
        engine's checkpoints record it, and "auto" refuses one that a stage started from another model wrote (a
        `grpo train` run, then `grpo run` under the same name: its GRPO must start from the DPO model, not continue
        the first run's)."""
        ckpt_dir = Path(ckpt_dir)
        if init_model is not None:
            self.started_from = {"init_model": str(init_model), "init_identity": model_identity(init_model)}
        tag, skipped = latest_complete_checkpoint(ckpt_dir) if resume == "auto" else (None, [])
        if tag is not None and init_model is not None:
            check_started_from(ckpt_dir / tag, stage, self.started_from)
        if resume not in ("auto", "never"):
            ckpt_dir, tag = Path(resume).parent, Path(resume).name
            if not is_complete(ckpt_dir / tag) and is_main_process():
                print(f"[{stage}] warning: {ckpt_dir / tag} has no {COMPLETE_MARKER} marker (a save that did not "
                      "finish, or a checkpoint from an older version); loading it anyway", flush=True)
        if is_main_process():
            for path in skipped:
                print(f"[{stage}] skipped incomplete checkpoint {path} (its save did not finish)", flush=True)
        if tag is None:
            return None
        state = self.load_checkpoint(ckpt_dir, tag)
        self.saved_step, self.last_checkpoint = int(state["step"]), ckpt_dir / tag
        if is_main_process():
            print(f"[{stage}] resumed from checkpoint {ckpt_dir / tag} at step {state['step']}", flush=True)
        return state

    def save_pretrained(self, out_dir: Path, tokenizer=None, *, merged: bool = True) -> None:
        """A normal Hugging Face directory (rank 0 writes; all ranks must call under ZeRO-3). With LoRA: the adapter
        in `out_dir/adapter`, and the merged model in `out_dir` unless `merged=False` (then `out_dir` holds the
        adapter alone)."""
        out_dir = Path(out_dir)
        if self.is_lora:
            from grpo.runtime.lora import ADAPTER_SUBDIR

            self.save_adapter(out_dir / ADAPTER_SUBDIR if merged else out_dir)
            if merged:
                state = dict(self.named_weights(tied_copies=False))
                if is_main_process():
                    self.module.get_base_model().save_pretrained(str(out_dir), state_dict=state,
                                                                 safe_serialization=True)
        else:
            state = dict(self.named_weights(tied_copies=False)) if self.cfg.zero_stage == 3 else None
            if is_main_process():
                out_dir.mkdir(parents=True, exist_ok=True)
                self.module.save_pretrained(str(out_dir), state_dict=state, safe_serialization=True)
        if is_main_process() and tokenizer is not None:
            tokenizer.save_pretrained(str(out_dir))
        barrier()


def is_complete(path: Path) -> bool:
    return (Path(path) / COMPLETE_MARKER).is_file()


def latest_complete_checkpoint(ckpt_dir: Path) -> tuple[str | None, list[Path]]:
    """The tag of the newest complete checkpoint in `ckpt_dir` (by the step its marker records), and the incomplete
    ones: `.<tag>.incomplete` directories and step directories without the marker. A directory without a marker
    that DeepSpeed's `latest` names counts as complete (an older version wrote `latest` after the whole save)."""
    ckpt_dir = Path(ckpt_dir)
    if not ckpt_dir.is_dir():
        return None, []
    legacy = (ckpt_dir / "latest").read_text().strip() if (ckpt_dir / "latest").is_file() else None
    complete: list[tuple[int, float, str]] = []
    incomplete: list[Path] = []
    for path in sorted(ckpt_dir.iterdir()):
        if not path.is_dir() or path.name.endswith(".old"):
            continue
        if path.name.endswith(INCOMPLETE_SUFFIX):
            incomplete.append(path)
        elif is_complete(path):
            try:
                step = int(json.loads((path / COMPLETE_MARKER).read_text())["step"])
            except (ValueError, KeyError, TypeError, OSError):
                step = _step_of(path.name)
            complete.append((step, path.stat().st_mtime, path.name))
        elif path.name == legacy:
            complete.append((_step_of(path.name), path.stat().st_mtime, path.name))
        elif _step_of(path.name) >= 0:
            incomplete.append(path)
    best = max(complete) if complete else None
    return (best[2] if best else None), incomplete


def latest_checkpoint(ckpt_dir: Path) -> str | None:
    """The tag of the newest complete checkpoint, if any."""
    return latest_complete_checkpoint(ckpt_dir)[0]


def _step_of(name: str) -> int:
    m = re.search(r"(\d+)$", name)
    return int(m.group(1)) if m else -1


def model_identity(model: str | Path) -> str:
    """What a stage started from, as its checkpoints record it: a local model directory by its weight and config
    files' names, sizes and modification times (a stage that rewrote the directory changes them; moving the run
    directory keeps them; no reading of the weights), anything else (a hub id) by its name."""
    path = Path(model)
    if not path.is_dir():
        return str(model)
    h = hashlib.sha256()
    for f in model_files(path):
        st = f.stat()
        h.update(f"{f.name}:{st.st_size}:{st.st_mtime_ns}\n".encode())
    return h.hexdigest()[:20]


def check_started_from(checkpoint: Path, stage: str, started_from: dict) -> None:
    """Refuse (ConfigError: one line, exit 2, nothing removed) to continue a checkpoint whose stage started from
    another model than this run's stage does. Checkpoints of older versions record nothing and are accepted."""
    try:
        marker = json.loads((Path(checkpoint) / COMPLETE_MARKER).read_text())
    except (OSError, ValueError):
        return
    recorded = marker.get("init_identity")
    if recorded is None or recorded == started_from["init_identity"]:
        return
    then, now = marker.get("init_model", "?"), started_from["init_model"]
    which = "a different model" if then != now else "the same directory since rewritten"
    raise ConfigError(f"{checkpoint} continues a {stage} stage that started from {then}, but this run starts {stage} "
                      f"from {now} ({which}): move {Path(checkpoint).parent.parent} away or choose another name= to "
                      f"train {stage} afresh (resume={checkpoint} continues it regardless)")


def _finish(tmp: Path, final: Path, tag: str, step: int, world_size: int, started_from: dict | None = None) -> None:
    """Rank 0, after every rank wrote its files: mark `tmp` complete (with the model the stage started from),
    rename it to `final` (replacing an older checkpoint of the same tag), point DeepSpeed's `latest` at it."""
    with open(tmp / COMPLETE_MARKER, "w") as fh:
        json.dump({"tag": tag, "step": step, "world_size": world_size, "time": round(time.time(), 3),
                   **(started_from or {})}, fh)
        fh.flush()
        os.fsync(fh.fileno())
    _fsync_dir(tmp)
    old = final.parent / f".{tag}.old"
    if final.exists():
        shutil.rmtree(old, ignore_errors=True)
        final.rename(old)
    tmp.rename(final)
    shutil.rmtree(old, ignore_errors=True)
    latest_tmp = final.parent / ".latest.tmp"
    latest_tmp.write_text(tag)  # for DeepSpeed's own tools (zero_to_fp32.py)
    os.replace(latest_tmp, final.parent / "latest")
    _fsync_dir(final.parent)


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _describe_write_error(exc: Exception, path) -> str:
    """`writing <path>: <why>`. torch.save's zip writer turns a failed write into a RuntimeError without the errno
    ("iostream error"); then the file system and the process's file size limit are asked what it was."""
    import errno
    import resource

    reasons = {errno.ENOSPC: "no space left on the device", errno.EDQUOT: "disk quota exceeded",
               errno.EFBIG: "file too large (the file system's or the process's file size limit)",
               errno.EROFS: "read-only file system", errno.EACCES: "permission denied", errno.EIO: "input/output error"}
    code = getattr(exc, "errno", None)
    if code:
        return f"writing {path}: {reasons.get(code, getattr(exc, 'strerror', None) or str(exc))} [Errno {code}]"
    first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    try:
        fs = os.statvfs(Path(path).parent)
        if fs.f_bavail * fs.f_frsize < 1024**2:
            return f"writing {path}: no space left on the device ({first})"
        limit = resource.getrlimit(resource.RLIMIT_FSIZE)[0]
        if limit != resource.RLIM_INFINITY and os.path.getsize(path) >= limit - 64 * 1024:
            return f"writing {path}: file too large (the process's file size limit, RLIMIT_FSIZE, is {limit} bytes)"
    except OSError:
        pass
    return f"writing {path}: {first}"


def _crash_halfway(path: str) -> None:
    """The test hook: cut the file just written to half its size and die as `kill -9` would."""
    size = os.path.getsize(path)
    with open(path, "r+b") as fh:
        fh.truncate(size // 2)
    os.kill(os.getpid(), signal.SIGKILL)


def rng_state() -> dict:
    return {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None}


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if state.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


