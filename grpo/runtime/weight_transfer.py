"""Weights from training rank 0 to the inference ranks (rollout.mode: async) in fixed-size buckets.

The sender lays the named tensors out in buckets of at most `bucket_bytes` (consecutive tensors of one dtype;
a tensor larger than a bucket travels alone), copies each bucket into one flat tensor (a snapshot: training may
go on while it travels) and broadcasts it over the bridge process group; the receivers cut the flat tensors back
into the named tensors from the same plan. Only the plan (names, shapes, dtypes) travels as a message; the
bytes go through torch.distributed (NCCL between GPUs, gloo here).
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import timedelta
from typing import Iterable, Iterator

import torch


@dataclass(frozen=True)
class TensorMeta:
    name: str
    shape: tuple[int, ...]
    dtype: str  # e.g. "float32" (a name, so the plan pickles without torch objects)

    @property
    def numel(self) -> int:
        n = 1
        for d in self.shape:
            n *= d
        return n

    @property
    def nbytes(self) -> int:
        return self.numel * torch.empty((), dtype=getattr(torch, self.dtype)).element_size()


def _joins(bucket: list[TensorMeta], meta: TensorMeta, bucket_bytes: int) -> bool:
    """Whether `meta` goes into the open `bucket`: a bucket closes when the next tensor has another dtype or would
    take it past `bucket_bytes`."""
    return bool(bucket) and meta.dtype == bucket[0].dtype and sum(m.nbytes for m in bucket) + meta.nbytes <= bucket_bytes


def plan_buckets(metas: list[TensorMeta], bucket_bytes: int) -> list[list[int]]:
    """Indices of `metas` per bucket, in order (see `_joins`)."""
    buckets: list[list[int]] = []
    for i, m in enumerate(metas):
        if buckets and _joins([metas[j] for j in buckets[-1]], m, bucket_bytes):
            buckets[-1].append(i)
        else:
            buckets.append([i])
    return buckets


def describe(named: list[tuple[str, torch.Tensor]]) -> list[TensorMeta]:
    return [TensorMeta(n, tuple(t.shape), str(t.dtype).removeprefix("torch.")) for n, t in named]


def pack(tensors: list[torch.Tensor], device: torch.device) -> torch.Tensor:
    """One flat tensor [sum numel] holding copies of `tensors` (all of one dtype), on `device`."""
    return torch.cat([t.detach().reshape(-1).to(device) for t in tensors])


def unpack(flat: torch.Tensor, metas: list[TensorMeta]) -> list[tuple[str, torch.Tensor]]:
    out, offset = [], 0
    for m in metas:
        out.append((m.name, flat[offset:offset + m.numel].view(m.shape)))
        offset += m.numel
    return out


def _broadcast(group, tensor: torch.Tensor, timeout_s: float):
    opts = torch.distributed.BroadcastOptions()
    opts.rootRank = 0
    opts.timeout = timedelta(seconds=timeout_s)
    work = group.broadcast([tensor], opts)
    work.wait()
    return work


@dataclass
class Snapshot:
    """What the sender broadcasts: the plan and one flat tensor per bucket."""

    metas: list[TensorMeta]
    buckets: list[list[int]]
    flats: list[torch.Tensor]

    @property
    def nbytes(self) -> int:
        return sum(f.numel() * f.element_size() for f in self.flats)


def snapshot(named: Iterable[tuple[str, torch.Tensor]], bucket_bytes: int, device: torch.device) -> Snapshot:
    """Pack `named` into buckets as it is iterated (the buckets of `plan_buckets`): a ZeRO-3 engine yields a
    gathered copy of one tensor at a time, and each copy is dropped once packed, so at most one bucket's copies
    exist beside the flat buckets (a list of them all first would hold the weights twice more)."""
    metas: list[TensorMeta] = []
    buckets: list[list[int]] = []
    flats: list[torch.Tensor] = []
    pending: list[torch.Tensor] = []  # the open bucket's tensors, not yet packed
    for name, tensor in named:
        meta = TensorMeta(name, tuple(tensor.shape), str(tensor.dtype).removeprefix("torch."))
        if buckets and _joins([metas[j] for j in buckets[-1]], meta, bucket_bytes):
            buckets[-1].append(len(metas))
        else:
            if pending:
                flats.append(pack(pending, device))
            pending = []
            buckets.append([len(metas)])
        metas.append(meta)
        pending.append(tensor)
    if pending:
        flats.append(pack(pending, device))
    return Snapshot(metas, buckets, flats)


def send(group, snap: Snapshot, timeout_s: float) -> float:
    """Broadcast every bucket from this rank (the group's rank 0); returns seconds."""
    t0 = time.perf_counter()
    work = None
    for flat in snap.flats:
        work = _broadcast(group, flat, timeout_s)
    if work is not None and snap.flats[-1].is_cuda:
        # NCCL's wait() only orders the CUDA streams and returns at once; the bytes have gone when the last
        # broadcast completes. Polled, not synchronized: the training thread's kernels share the stream.
        deadline = time.monotonic() + timeout_s
        while not work.is_completed():
            if time.monotonic() > deadline:
                raise TimeoutError(f"weight broadcast not completed after {timeout_s:.0f} s: an inference rank "
                                   "is not receiving")
            time.sleep(0.0005)
    return time.perf_counter() - t0


def receive_buckets(group, metas: list[TensorMeta], bucket_bytes: int, device: torch.device,
                    timeout_s: float) -> Iterator[tuple[str, torch.Tensor]]:
    """The named tensors that rank 0 of `group` sends with `send` for the same `metas` and `bucket_bytes`, one
    bucket at a time: the next bucket is received when the consumer has taken the last one's tensors, so an engine
    that copies them into its own weights needs one bucket of memory, not a second copy of the model. The
    consumer must take every tensor (the sender broadcasts them all)."""
    for b in plan_buckets(metas, bucket_bytes):
        part = [metas[i] for i in b]
        flat = torch.empty(sum(m.numel for m in part), dtype=getattr(torch, part[0].dtype), device=device)
        _broadcast(group, flat, timeout_s)
        yield from unpack(flat, part)
        del flat


def receive(group, metas: list[TensorMeta], bucket_bytes: int, device: torch.device,
            timeout_s: float) -> list[tuple[str, torch.Tensor]]:
    """`receive_buckets`, all of them at once."""
    return list(receive_buckets(group, metas, bucket_bytes, device, timeout_s))
