"""The training engine: the only module that imports DeepSpeed.

Wraps a causal LM in a DeepSpeed engine (ZeRO 0-3, fp32 on the CPU, bf16 on GPUs) with AdamW, a
warmup + schedule, gradient clipping and accumulation; saves and restores exact training state;
yields full weights for the push into vLLM (gathering ZeRO-3 partitions).
"""
from __future__ import annotations

import math
import os
import random
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch

from grpo.config import EngineConfig, OptimConfig
from grpo.runtime.distributed import DistInfo, free_port, barrier, is_main_process


def init_distributed(cfg: EngineConfig) -> DistInfo:
    """Initialise torch.distributed once, also for a single process (vLLM's external_launcher
    executor and DeepSpeed both expect a process group). Launchers (torchrun, deepspeed) set the
    env; a plain `grpo train` gets a world of one on a free loopback port."""
    import deepspeed

    if not torch.distributed.is_initialized():
        if "RANK" not in os.environ:
            os.environ.update({"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1", "LOCAL_WORLD_SIZE": "1",
                               "MASTER_ADDR": "127.0.0.1"})
            os.environ.setdefault("MASTER_PORT", str(free_port()))
        backend = cfg.dist_backend
        if backend == "auto":
            backend = "nccl" if torch.cuda.is_available() else "gloo"
        deepspeed.init_distributed(dist_backend=backend, verbose=False)
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    if torch.cuda.is_available():
        torch.cuda.set_device(local_rank)
    return DistInfo(torch.distributed.get_rank(), torch.distributed.get_world_size(), local_rank)


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

    def named_weights(self, tied_copies: bool = True) -> Iterator[tuple[str, torch.Tensor]]:
        """Full (gathered) weights in the checkpoint naming vLLM expects, one tensor at a time.
        `tied_copies=False` names a tied weight once (lm_head = embeddings), as a checkpoint stores it."""
        module = self.module
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

    def save_checkpoint(self, ckpt_dir: Path, tag: str, client_state: dict) -> None:
        client_state = dict(client_state, rng=rng_state())
        self.ds.save_checkpoint(str(ckpt_dir), tag=tag, client_state=client_state)

    def load_checkpoint(self, ckpt_dir: Path, tag: str | None = None) -> dict:
        _, client_state = self.ds.load_checkpoint(str(ckpt_dir), tag=tag, load_optimizer_states=True,
                                                  load_lr_scheduler_states=True)
        if client_state is None:
            raise RuntimeError(f"no checkpoint could be loaded from {ckpt_dir} (tag {tag})")
        if "rng" in client_state:
            set_rng_state(client_state["rng"])
        return client_state

    def resume(self, ckpt_dir: Path, resume: str, stage: str) -> dict | None:
        """Restore the checkpoint `resume` asks for ("auto": the latest in `ckpt_dir`, if any; "never";
        or a checkpoint directory), say so, and return its client state (step, data position, ...);
        None when starting fresh."""
        tag = latest_checkpoint(ckpt_dir) if resume == "auto" else None
        if resume not in ("auto", "never"):
            ckpt_dir, tag = Path(resume).parent, Path(resume).name
        if tag is None:
            return None
        state = self.load_checkpoint(ckpt_dir, tag)
        if is_main_process():
            print(f"[{stage}] resumed from checkpoint {ckpt_dir / tag} at step {state['step']}", flush=True)
        return state

    def save_pretrained(self, out_dir: Path, tokenizer=None) -> None:
        """A normal Hugging Face directory (rank 0 writes; all ranks must call under ZeRO-3)."""
        state = dict(self.named_weights(tied_copies=False)) if self.cfg.zero_stage == 3 else None
        if is_main_process():
            out_dir.mkdir(parents=True, exist_ok=True)
            self.module.save_pretrained(str(out_dir), state_dict=state, safe_serialization=True)
            if tokenizer is not None:
                tokenizer.save_pretrained(str(out_dir))
        barrier()


def latest_checkpoint(ckpt_dir: Path) -> str | None:
    """The tag DeepSpeed recorded as latest, if any."""
    latest = ckpt_dir / "latest"
    if latest.exists():
        tag = latest.read_text().strip()
        if (ckpt_dir / tag).exists():
            return tag
    return None


def rng_state() -> dict:
    return {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None}


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if state.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


