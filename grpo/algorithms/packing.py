"""Shared-prefix packing: one forward over a prompt for all the answers that continue it.

A GRPO group is one prompt and G completions; a DPO pair is one prompt and two answers. Run as
separate padded rows, the prompt's tokens go through the model G (or 2) times and give the same
hidden states every time. Here each prompt is laid out once, its continuations after it, and a
tree-shaped attention mask lets every continuation token see its own earlier tokens and the
prompt, nothing else:

    row:       p0 p1 p2 | a0 a1 a2 | b0 b1 | c0 c1 c2 c3 | pad
    position:  0  1  2  | 3  4  5  | 3  4  | 3  4  5  6  | 0
    b1 sees:   p0 p1 p2            b0 b1

Position ids restart after the prompt for every continuation, so each continuation's logits equal
those of its own padded row (tested to float32 rounding). The logit that predicts a continuation's
first token is the prompt's last position, shared by all its continuations.

Several units (prompt + continuations) share a row when they fit (best-fit decreasing to the longest
unit's length, so no row is longer than an unpacked one would be); a group longer than `max_row_tokens`
is split into several units, each with its own copy of the prompt. The mask is an additive [R, 1, L, L]
tensor (the form SDPA and eager attention take); flash-attention's varlen kernels cannot express a tree,
so models loaded with flash attention use padded rows instead (`uses_varlen_attention`).
"""
from __future__ import annotations

import bisect
from dataclasses import dataclass
from typing import Callable, Sequence

import torch

from grpo.algorithms.logprobs import entropy_from_logits, gather_logprobs


@dataclass(frozen=True)
class PromptSharing:
    """How a loop shares prompts: rows of at most `max_row_tokens`, continuations grouped by `attention_cost`."""
    max_row_tokens: int = 4096
    attention_cost: float = 0.0  # rho (`attention_cost_ratio`); 0: share as many as fit a row


@dataclass
class PackedBatch:
    """Rows of shared-prefix units and, for every continuation token, where its predicting logit is."""
    input_ids: torch.Tensor  # [R, L]
    position_ids: torch.Tensor  # [R, L]
    segment_ids: torch.Tensor  # [R, L]; -1 on padding; unique within a row
    parent_ids: torch.Tensor  # [R, L]; the segment a token's segment continues (its prompt), -2 for none
    source: torch.Tensor  # [N] flat index into [R * L] of the position whose logits predict target n
    targets: torch.Tensor  # [N] the continuation tokens, in sequence order
    sequence: torch.Tensor  # [N] which continuation (numbered over all units, in input order) token n is in
    offset: torch.Tensor  # [N] its index within that continuation
    num_sequences: int
    real_tokens: int  # prompt tokens counted once per unit, plus every continuation token

    def to(self, device: torch.device) -> "PackedBatch":
        return PackedBatch(**{k: (v.to(device) if isinstance(v, torch.Tensor) else v) for k, v in vars(self).items()})


def pack(lengths: Sequence[int], max_len: int) -> list[list[int]]:
    """Best-fit decreasing: indices of the items in each row, every row's total <= max_len."""
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    rows: list[list[int]] = []
    spaces: list[tuple[int, int]] = []  # (room left, row), sorted
    for i in order:
        n = lengths[i]
        if n > max_len:
            raise ValueError(f"item {i} has {n} tokens, more than max_len={max_len}")
        k = bisect.bisect_left(spaces, (n, -1))  # the fullest row that still fits
        if k < len(spaces):
            room, r = spaces.pop(k)
        else:
            r, room = len(rows), max_len
            rows.append([])
        rows[r].append(i)
        if room - n > 0:
            bisect.insort(spaces, (room - n, r))
    return rows


def block_causal_mask(segment_ids: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """[B, L] segment ids -> [B, 1, L, L] additive mask: 0 where query i may see key j (same
    segment, j <= i), the dtype's minimum elsewhere (the form eager and SDPA attention both take).
    The tree mask with no segment continuing another."""
    return tree_attention_mask(segment_ids, torch.full_like(segment_ids, -2), dtype)


def _units(prefix: list[int], continuations: Sequence[list[int]], first: int, max_row_tokens: int,
           attention_cost: float = 0.0) -> list[tuple[list[int], list[tuple[int, list[int]]]]]:
    """Split one prompt's continuations into units (the prompt + the continuations that share it).

    A continuation of c tokens joins the current unit (prompt P, continuations S tokens so far) when that
    costs less than a new unit with its own copy of the prompt: with a row of L tokens costing
    L + rho L^2, joining adds c + rho ((P+S+c)^2 - (P+S)^2), a new unit costs (P+c) + rho (P+c)^2, so it
    joins iff 2 rho c S <= P (1 + rho P). It never joins past `max_row_tokens` (the [L, L] mask's memory).
    The first continuation always opens a unit. Continuations keep their global numbers."""
    P = len(prefix)
    units: list[tuple[list[int], list[tuple[int, list[int]]]]] = []
    shared = 0  # S: continuation tokens in the current unit
    for j, cont in enumerate(continuations):
        c = len(cont)
        costlier = 2 * attention_cost * c * shared > P * (1 + attention_cost * P)
        if not units or P + shared + c > max_row_tokens or costlier:
            units.append((prefix, []))
            shared = 0
        units[-1][1].append((first + j, cont))
        shared += c
    return units


def pack_shared_prefix(items: Sequence[tuple[list[int], Sequence[list[int]]]], pad_id: int,
                       max_row_tokens: int = 4096, attention_cost: float = 0.0) -> PackedBatch:
    """`items`: (prompt ids, [continuation ids, ...]) pairs. Every continuation needs >= 1 token and every
    prompt >= 1 token (the first continuation token is predicted from the prompt's last position).
    `attention_cost` (rho, `attention_cost_ratio`) decides which continuations share a prompt (`_units`);
    0 shares as many as fit `max_row_tokens`."""
    units, n_seq = [], 0
    for i, (prefix, conts) in enumerate(items):
        if not prefix:
            raise ValueError(f"item {i}: the prompt is empty (its last token predicts each continuation's first)")
        if any(len(c) == 0 for c in conts):
            raise ValueError(f"item {i}: a continuation is empty")
        units += _units(list(prefix), conts, n_seq, max_row_tokens, attention_cost)
        n_seq += len(conts)
    lengths = [len(p) + sum(len(c) for _, c in cs) for p, cs in units]
    rows = pack(lengths, max(lengths, default=1)) if units else []
    width = max((sum(lengths[u] for u in r) for r in rows), default=1)
    R = max(len(rows), 1)
    input_ids = torch.full((R, width), pad_id, dtype=torch.long)
    position_ids = torch.zeros((R, width), dtype=torch.long)
    segment_ids = torch.full((R, width), -1, dtype=torch.long)
    parent_ids = torch.full((R, width), -2, dtype=torch.long)
    # per continuation n: (flat index of the position predicting each of its tokens, its tokens)
    where: list[tuple[torch.Tensor, list[int]]] = [(torch.empty(0, dtype=torch.long), [])] * n_seq
    for r, unit_ids in enumerate(rows):
        at, seg = 0, 0
        for u in sorted(unit_ids):
            prefix, conts = units[u]
            P = len(prefix)
            input_ids[r, at:at + P] = torch.tensor(prefix)
            position_ids[r, at:at + P] = torch.arange(P)
            segment_ids[r, at:at + P] = seg
            prompt_seg, prompt_last = seg, r * width + at + P - 1
            at, seg = at + P, seg + 1
            for n, cont in conts:
                C = len(cont)
                input_ids[r, at:at + C] = torch.tensor(cont)
                position_ids[r, at:at + C] = torch.arange(P, P + C)
                segment_ids[r, at:at + C] = seg
                parent_ids[r, at:at + C] = prompt_seg
                # token t is predicted by the position before it: the prompt's last for t = 0
                src = torch.arange(r * width + at - 1, r * width + at + C - 1)
                src[0] = prompt_last
                where[n] = (src, cont)
                at, seg = at + C, seg + 1
    lengths_by_seq = torch.tensor([len(t) for _, t in where], dtype=torch.long)
    sequence = torch.repeat_interleave(torch.arange(n_seq), lengths_by_seq)
    starts = torch.cumsum(lengths_by_seq, 0) - lengths_by_seq
    offset = torch.arange(len(sequence)) - starts[sequence]
    source = torch.cat([src for src, _ in where]) if n_seq else torch.empty(0, dtype=torch.long)
    targets = torch.tensor([t for _, cont in where for t in cont], dtype=torch.long)
    return PackedBatch(input_ids, position_ids, segment_ids, parent_ids, source, targets, sequence, offset, n_seq,
                       sum(lengths))


def tree_attention_mask(segment_ids: torch.Tensor, parent_ids: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """[R, L] segments and parents -> [R, 1, L, L] additive mask: query i sees key j <= i of its own segment
    or of its segment's parent (the prompt). Padding is a segment of its own (-1), so a padding query sees
    itself and the padding before it: no query row is empty."""
    L = segment_ids.shape[1]
    q_seg, k_seg = segment_ids[:, :, None], segment_ids[:, None, :]  # [R, L, 1], [R, 1, L]
    causal = torch.ones(L, L, dtype=torch.bool, device=segment_ids.device).tril()
    allowed = causal & ((k_seg == q_seg) | (k_seg == parent_ids[:, :, None]))
    mask = torch.zeros(allowed.shape, dtype=dtype, device=segment_ids.device)
    mask.masked_fill_(~allowed, torch.finfo(dtype).min)
    return mask[:, None]


def packed_token_logprobs(forward: Callable, packed: PackedBatch, *, temperature: float = 1.0,
                          with_entropy: bool = False, dtype: torch.dtype = torch.float32):
    """Logprob [N] of every continuation token (and its entropy [N] without gradient, if asked) under
    `forward(input_ids, attention_mask, position_ids) -> logits [R, L, V]`."""
    mask = tree_attention_mask(packed.segment_ids, packed.parent_ids, dtype)
    logits = forward(packed.input_ids, mask, packed.position_ids)  # [R, L, V]
    picked = logits.reshape(-1, logits.shape[-1])[packed.source]  # [N, V]
    logps = gather_logprobs(picked, packed.targets, temperature=temperature)
    ent = None
    if with_entropy:
        with torch.no_grad():
            ent = entropy_from_logits(picked.detach(), temperature=temperature)
    return logps, ent
