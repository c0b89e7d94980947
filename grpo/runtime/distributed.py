"""Distributed helpers and device moves: rank information, collectives over torch.distributed
(gloo or NCCL), seeding, and moving batches to the training device. DeepSpeed initialises the process
group (`grpo.runtime.engine.init_distributed`); everything here needs only torch."""
from __future__ import annotations

import os
import random
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import torch

from grpo.algorithms.packing import PackedBatch


@dataclass
class DistInfo:
    rank: int
    world_size: int
    local_rank: int
    # rollout.mode: async splits a launch into training and inference processes (grpo.runtime.inference); rank and
    # world_size count the processes of this role only
    role: str = "train"

    @property
    def is_main(self) -> bool:
        return self.rank == 0 and self.role == "train"


# What torch.distributed's rendezvous reads from the environment (and what init_distributed sets for a
# plain single process).
RENDEZVOUS_VARS = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


def env_without_rendezvous(env: dict[str, str] | None = None) -> dict[str, str]:
    """`env` (default os.environ) without the rendezvous variables: for a child process that must start
    its own process group, not join (or reuse the port of) the one this process initialised."""
    return {k: v for k, v in (os.environ if env is None else env).items() if k not in RENDEZVOUS_VARS}


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def device() -> torch.device:
    return torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else torch.device("cpu")


def to_device(batch: dict, device: torch.device) -> dict:
    return {k: v.to(device) if isinstance(v, (torch.Tensor, PackedBatch)) else v for k, v in batch.items()}


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def is_main_process() -> bool:
    return not torch.distributed.is_initialized() or torch.distributed.get_rank() == 0


def barrier() -> None:
    if torch.distributed.is_initialized() and torch.distributed.get_world_size() > 1:
        torch.distributed.barrier()


def all_reduce_mean(values: dict[str, float]) -> dict[str, float]:
    """Each statistic averaged over the ranks that report it (for logging). Every rank must call this, even
    with an empty dict: ranks may hold different keys (a rank whose groups were all dropped has no policy
    statistics), so the key sets are exchanged first and the reduction then has the same shape everywhere.
    A rank's missing key is left out of that key's mean, never counted as zero."""
    if not torch.distributed.is_initialized() or torch.distributed.get_world_size() == 1:
        return dict(values)
    keys = sorted(set().union(*all_gather_objects(sorted(values))))
    if not keys:
        return {}
    t = torch.zeros(2, len(keys), dtype=torch.float64, device=device())  # [sum, count] per key
    for i, k in enumerate(keys):
        if k in values:
            t[0, i], t[1, i] = float(values[k]), 1.0
    torch.distributed.all_reduce(t)
    return {k: float(t[0, i] / t[1, i]) for i, k in enumerate(keys)}


def all_gather_objects(obj: Any) -> list[Any]:
    if not torch.distributed.is_initialized() or torch.distributed.get_world_size() == 1:
        return [obj]
    out: list[Any] = [None] * torch.distributed.get_world_size()
    torch.distributed.all_gather_object(out, obj)
    return out


def all_gather_int(value: int) -> list[int]:
    return all_gather_objects(int(value))


def lockstep_chunks(items: Sequence, size: int, filler) -> list[tuple[list, bool]]:
    """`items` in chunks of `size`, plus (chunk of `filler`, True) entries until every rank has as
    many chunks as the busiest one: under ZeRO-3 each forward gathers parameters collectively, so
    ranks with less data must still run the same number of forwards (their results are discarded)."""
    chunks = [(list(items[i:i + size]), False) for i in range(0, len(items), size)]
    most = max(all_gather_objects(len(chunks)))
    return chunks + [([filler], True)] * (most - len(chunks))
