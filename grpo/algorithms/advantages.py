"""Group-relative advantages from verifier rewards (GRPO, Dr. GRPO, RLOO).

Rewards arrive flat, ``[num_prompts * group_size]``, with the ``group_size`` samples of one
prompt next to each other (the order the rollout emits them). Every sample gets one scalar
advantage; the policy loss broadcasts it over the sample's tokens.

Formulas (see docs/algorithms.md):

- ``grpo``    A_i = (r_i - mean_g(r)) / (std + eps)          DeepSeekMath (Shao et al., 2024)
- ``dr_grpo`` A_i =  r_i - mean_g(r)                          Dr. GRPO (Liu et al., 2025)
- ``rloo``    A_i =  r_i - mean_{j != i} r_j                  RLOO (Ahmadian et al., 2024)

``std`` is Bessel-corrected (divides by n - 1) and taken over the group (``scale="group"``)
or over the whole batch (``scale="batch"``, as in TRL's ``scale_rewards="batch"``);
``scale="none"`` skips the division. A group whose rewards are all equal carries no learning
signal: its advantages are set to exactly 0 (not to a rounding residue) and it is counted.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

ADVANTAGE_METHODS = ("grpo", "dr_grpo", "rloo")
ADVANTAGE_SCALES = ("group", "batch", "none")

# The scale each method uses when the caller does not pick one.
_DEFAULT_SCALE = {"grpo": "group", "dr_grpo": "none", "rloo": "none"}


@dataclass(frozen=True)
class AdvantageResult:
    """Output of :func:`group_advantages`.

    advantages:      [num_prompts * group_size], same order as the rewards.
    zero_std_groups: number of groups whose rewards were all equal (advantage exactly 0).
    zero_std_mask:   [num_prompts] bool, True for those groups.
    group_mean:      [num_prompts] mean reward per group.
    group_std:       [num_prompts] Bessel-corrected reward std per group.
    scale_std:       [num_prompts * group_size] the std each advantage was divided by
                     (ones when ``scale == "none"``); useful for logging.
    """

    advantages: Tensor
    zero_std_groups: int
    zero_std_mask: Tensor
    group_mean: Tensor
    group_std: Tensor
    scale_std: Tensor

    @property
    def zero_std_fraction(self) -> float:
        """Fraction of groups that carry no signal (DAPO's dynamic sampling watches this)."""
        return self.zero_std_groups / max(int(self.zero_std_mask.numel()), 1)


def group_advantages(
    rewards: Tensor,
    group_size: int,
    *,
    method: str = "grpo",
    scale: str | None = None,
    eps: float = 1e-6,
) -> AdvantageResult:
    """Group-relative advantages for rewards shaped ``[num_prompts * group_size]``.

    Args:
        rewards: 1-D tensor (or anything ``torch.as_tensor`` takes), samples of one prompt
            contiguous.
        group_size: G, samples per prompt.
        method: ``"grpo"`` (mean baseline, divided by std), ``"dr_grpo"`` (mean baseline,
            no std) or ``"rloo"`` (leave-one-out mean baseline).
        scale: ``"group"``, ``"batch"`` or ``"none"``; defaults to ``"group"`` for grpo and
            ``"none"`` for dr_grpo and rloo. ``dr_grpo`` accepts only ``"none"`` (dividing by
            the std is exactly what Dr. GRPO removes; use ``method="grpo"`` for that).
        eps: added to the std before dividing.

    Returns:
        :class:`AdvantageResult`; ``advantages`` has the rewards' floating dtype (float32 for
        integer or bool rewards).
    """
    if method not in ADVANTAGE_METHODS:
        raise ValueError(f"method must be one of {ADVANTAGE_METHODS}, got {method!r}")
    if scale is None:
        scale = _DEFAULT_SCALE[method]
    if scale not in ADVANTAGE_SCALES:
        raise ValueError(f"scale must be one of {ADVANTAGE_SCALES}, got {scale!r}")
    if method == "dr_grpo" and scale != "none":
        raise ValueError(
            f"method='dr_grpo' does not divide by a std (scale must be 'none', got {scale!r}); "
            "use method='grpo' with that scale instead"
        )
    if not isinstance(group_size, int) or group_size < 1:
        raise ValueError(f"group_size must be a positive int, got {group_size!r}")
    if eps < 0:
        raise ValueError(f"eps must be >= 0, got {eps}")

    rewards = torch.as_tensor(rewards)
    if not rewards.is_floating_point():
        rewards = rewards.float()
    if rewards.dim() != 1:
        raise ValueError(f"rewards must be 1-D [num_prompts * group_size], got shape {tuple(rewards.shape)}")
    if rewards.numel() == 0 or rewards.numel() % group_size != 0:
        raise ValueError(
            f"rewards has {rewards.numel()} entries, not a positive multiple of group_size={group_size}"
        )
    needs_two = method == "rloo" or scale != "none"
    if needs_two and group_size < 2:
        raise ValueError(
            f"group_size must be >= 2 for method={method!r} with scale={scale!r} "
            "(a leave-one-out baseline or a Bessel std needs two samples)"
        )

    grouped = rewards.view(-1, group_size)  # [N, G]
    group_mean = grouped.mean(dim=1)  # [N]
    # Bessel's correction; a lone sample (G == 1, scale none) has no spread: define it as 0.
    group_std = grouped.std(dim=1) if group_size > 1 else torch.zeros_like(group_mean)
    # Exact test for "all equal": a std computed in floating point can be a tiny nonzero.
    zero_std_mask = grouped.amax(dim=1) == grouped.amin(dim=1)  # [N]

    if method == "rloo":
        # Mean of the other G - 1 samples: (sum - r_i) / (G - 1).
        baseline = (grouped.sum(dim=1, keepdim=True) - grouped) / (group_size - 1)
    else:
        baseline = group_mean.unsqueeze(1).expand_as(grouped)
    centred = grouped - baseline  # [N, G]

    if scale == "group":
        std = group_std.unsqueeze(1).expand_as(grouped)
    elif scale == "batch":
        std = rewards.std().expand_as(grouped)
    else:
        std = torch.ones_like(grouped)
    advantages = centred / (std + eps) if scale != "none" else centred
    advantages = advantages.masked_fill(zero_std_mask.unsqueeze(1), 0.0)

    return AdvantageResult(
        advantages=advantages.reshape(-1),
        zero_std_groups=int(zero_std_mask.sum().item()),
        zero_std_mask=zero_std_mask,
        group_mean=group_mean,
        group_std=group_std,
        scale_std=std.reshape(-1),
    )
