"""Collectives over real gloo process groups (2-3 processes on loopback)."""
from __future__ import annotations

import os
import socket

import torch.distributed as torch_dist
import torch.multiprocessing as mp


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world: int, port: int, per_rank: list[dict], out) -> None:
    from grpo.runtime.distributed import all_reduce_mean

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch_dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        # twice: a second call must line up too (the key exchange is itself a collective)
        first = all_reduce_mean(per_rank[rank])
        second = all_reduce_mean(per_rank[rank])
        out.put((rank, first, second))
    finally:
        torch_dist.destroy_process_group()


def _run(per_rank: list[dict]) -> dict[int, tuple[dict, dict]]:
    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    world = len(per_rank)
    port = _free_port()
    procs = [ctx.Process(target=_worker, args=(r, world, port, per_rank, out)) for r in range(world)]
    for p in procs:
        p.start()
    results = {}
    for _ in procs:
        rank, first, second = out.get(timeout=120)
        results[rank] = (first, second)
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    return results


def test_all_reduce_mean_averages_each_key_over_the_ranks_that_have_it():
    # rank 1 dropped all its groups (no policy stats); rank 2 has a verifier metric the others lack;
    # before the fix the ranks' tensors had different sizes and gloo aborted the step
    per_rank = [
        {"reward/mean": 0.5, "policy/kl": 0.25, "policy/entropy": 1.0},
        {"reward/mean": 0.0},
        {"reward/mean": 1.0, "policy/kl": 0.75, "rewards/extra/mean": 3.0},
    ]
    results = _run(per_rank)
    expected = {"reward/mean": 0.5, "policy/kl": 0.5, "policy/entropy": 1.0, "rewards/extra/mean": 3.0}
    for rank in range(3):
        first, second = results[rank]
        assert first == expected and second == expected


def test_all_reduce_mean_with_an_empty_rank_and_all_empty():
    results = _run([{"loss": 2.0}, {}])
    assert results[0][0] == results[1][0] == {"loss": 2.0}
    results = _run([{}, {}])
    assert results[0][0] == results[1][0] == {}


def test_all_reduce_mean_on_one_process_returns_a_copy():
    from grpo.runtime.distributed import all_reduce_mean

    assert not torch_dist.is_initialized() or torch_dist.get_world_size() == 1
    values = {"a": 1.0}
    out = all_reduce_mean(values)
    assert out == values and out is not values
