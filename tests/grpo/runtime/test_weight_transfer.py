"""Bucketed weight transfer (rollout.mode: async): the bucket plan worked out by hand, and a real gloo broadcast
from a sender to two receivers (threads of this process, each its own rank of a ProcessGroupGloo)."""
import threading
from datetime import timedelta

import pytest
import torch

from grpo.runtime.distributed import free_port
from grpo.runtime.weight_transfer import TensorMeta, plan_buckets, receive, receive_buckets, send, snapshot


def test_bucket_plan_by_hand():
    # float32: 4 bytes per element. Sizes: 40, 24, 40, 8 (bf16: 2 bytes x 4), 400, 16 bytes; buckets of 64 bytes:
    # [40 + 24 = 64] | [40] (another 40 would be 80) | [8] (dtype changes) | [400] alone (bigger than a bucket) | [16]
    metas = [TensorMeta("a", (10,), "float32"), TensorMeta("b", (2, 3), "float32"), TensorMeta("c", (10,), "float32"),
             TensorMeta("d", (4,), "bfloat16"), TensorMeta("e", (10, 10), "float32"), TensorMeta("f", (4,), "float32")]
    assert [m.nbytes for m in metas] == [40, 24, 40, 8, 400, 16]
    assert plan_buckets(metas, 64) == [[0, 1], [2], [3], [4], [5]]
    assert plan_buckets(metas, 10**6) == [[0, 1, 2], [3], [4, 5]]
    assert plan_buckets([], 64) == []


def test_snapshot_packs_a_one_shot_stream_into_the_planned_buckets():
    # the tensors of the hand-worked plan above, handed over as a generator (a ZeRO-3 gather yields one at a time)
    shapes = [("a", (10,), torch.float32), ("b", (2, 3), torch.float32), ("c", (10,), torch.float32),
              ("d", (4,), torch.bfloat16), ("e", (10, 10), torch.float32), ("f", (4,), torch.float32)]
    tensors = [(n, torch.arange(torch.Size(shape).numel()).reshape(shape).to(dtype) + i)
               for i, (n, shape, dtype) in enumerate(shapes)]
    snap = snapshot((pair for pair in tensors), bucket_bytes=64, device=torch.device("cpu"))
    assert snap.buckets == [[0, 1], [2], [3], [4], [5]]
    assert [m.name for m in snap.metas] == ["a", "b", "c", "d", "e", "f"]
    assert [f.numel() for f in snap.flats] == [16, 10, 4, 100, 4]
    assert snap.flats[2].dtype == torch.bfloat16 and snap.nbytes == 40 + 24 + 40 + 8 + 400 + 16
    assert torch.equal(snap.flats[0], torch.cat([tensors[0][1], tensors[1][1].reshape(-1)]))
    assert torch.equal(snap.flats[3], tensors[4][1].reshape(-1))


def _member(rank: int, port: int, queue) -> None:
    """One process of the bridge: rank 0 snapshots and sends, the others receive and report what they got."""
    torch.manual_seed(0)
    named = _weights()
    store = torch.distributed.TCPStore("127.0.0.1", port, None, rank == 0, timeout=timedelta(seconds=30),
                                       wait_for_workers=False)
    group = torch.distributed.ProcessGroupGloo(torch.distributed.PrefixStore("bridge", store), rank, 3,
                                               timedelta(seconds=30))
    snap = snapshot(named, bucket_bytes=1024, device=torch.device("cpu"))
    if rank == 0:
        named[0][1].add_(1.0)  # training goes on after the snapshot: what travels is the snapshot
        send(group, snap, timeout_s=30)
        queue.put((0, len(snap.flats), snap.nbytes))
    elif rank == 1:
        got = receive(group, snap.metas, 1024, torch.device("cpu"), timeout_s=30)
        queue.put((rank, [(n, t.clone()) for n, t in got], None))
    else:  # bucket by bucket: when a tensor is handed over, only the buckets up to its own have been received
        counting = _CountingGroup(group)
        got, received_before = [], []
        for n, t in receive_buckets(counting, snap.metas, 1024, torch.device("cpu"), timeout_s=30):
            received_before.append(counting.broadcasts)
            got.append((n, t.clone()))
        queue.put((rank, got, received_before))
    store.wait(["done"]) if rank else store.set("done", "1")


class _CountingGroup:
    """The real process group, counting the broadcasts made through it."""

    def __init__(self, group):
        self.group, self.broadcasts = group, 0

    def broadcast(self, tensors, opts):
        self.broadcasts += 1
        return self.group.broadcast(tensors, opts)


def _weights() -> list:
    return [("embed.weight", torch.randn(50, 8)), ("norm.weight", torch.randn(8)),
            ("half", torch.randn(3, 5).to(torch.bfloat16)), ("lm_head.weight", torch.randn(50, 8))]


def test_broadcast_in_buckets_reaches_every_receiver_exactly():
    import multiprocessing as mp

    ctx = mp.get_context("spawn")
    queue, port = ctx.Queue(), free_port()
    procs = [ctx.Process(target=_member, args=(r, port, queue)) for r in range(3)]
    for p in procs:
        p.start()
    results = {r: (a, b) for r, a, b in (queue.get(timeout=120) for _ in range(3))}
    for p in procs:
        p.join(60)
    torch.manual_seed(0)
    named = _weights()
    n_buckets, nbytes = results[0]
    assert n_buckets == 4 and nbytes == sum(t.numel() * t.element_size() for _, t in named)
    for rank in (1, 2):
        got = results[rank][0]
        assert [n for n, _ in got] == [n for n, _ in named]
        for (_, sent), (_, received) in zip(named, got):  # the weights as they were at the snapshot
            assert received.dtype == sent.dtype and torch.equal(received, sent)
    # 1024-byte buckets: [embed 1600 B] [norm 32 B] [half, bf16] [lm_head 1600 B]
    assert results[2][1] == [1, 2, 3, 4]
