"""The order prompts are drawn in, and the seeds their samples are drawn with: both depend only on
(seed, position), so a resumed run, or another number of ranks, samples the same thing again."""
from __future__ import annotations

import torch


class PromptStream:
    """This rank's prompts in a seeded order, reshuffled every epoch; `position` is saved in
    checkpoints so a resumed run continues with the very next prompt."""

    def __init__(self, n: int, seed: int, rank: int, world_size: int, position: int = 0):
        self.indices = list(range(rank, n, world_size))
        if not self.indices:
            raise ValueError(f"rank {rank} has no prompts ({n} prompts for {world_size} ranks)")
        self.seed = seed
        self.position = position

    def take(self, count: int) -> list[tuple[int, int]]:
        """(stream position, example index) pairs."""
        out = []
        for _ in range(count):
            epoch, offset = divmod(self.position, len(self.indices))
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            order = torch.randperm(len(self.indices), generator=g)
            out.append((self.position, self.indices[int(order[offset])]))
            self.position += 1
        return out


def request_seed(base: int, *parts: int) -> int:
    """A stable 31-bit seed from (base, step, prompt index, ...)."""
    h = base & 0x7FFFFFFF
    for p in parts:
        h = (h * 1_000_003 + int(p) + 0x9E3779B1) & 0x7FFFFFFF
    return h
