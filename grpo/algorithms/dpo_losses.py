"""DPO-family preference losses on sequence log-probabilities.

Inputs are per-pair sequence logprobs ``[B]`` of the chosen (y_w) and rejected (y_l)
responses under the policy and, except for SimPO, under the frozen reference. They are
sums over response tokens; pass ``chosen_lengths`` / ``rejected_lengths`` to turn every
logprob into a per-token average first (the length-normalized variant; SimPO's definition),
or pass averages yourself and leave the lengths out.

With h = (log pi(y_w) - log pi_ref(y_w)) - (log pi(y_l) - log pi_ref(y_l)) and
eps = ``label_smoothing``, per pair (formulas and papers in docs/algorithms.md):

- ``sigmoid``  -(1-eps) log sig(beta h) - eps log sig(-beta h)          DPO; cDPO when eps > 0
- ``robust``   [-(1-eps) log sig(beta h) + eps log sig(-beta h)] / (1-2eps)   robust DPO
- ``ipo``      (h - 1/(2 beta))^2                                         IPO (tau = beta)
- ``hinge``    max(0, 1 - beta h)                                         SLiC-HF
- ``simpo``    sigmoid form on z = beta (avg log pi(y_w) - avg log pi(y_l)) - gamma, no reference

plus ``rpo_alpha`` * NLL of the chosen response (RPO).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

PREFERENCE_LOSS_TYPES = ("sigmoid", "robust", "ipo", "hinge", "simpo")
_SMOOTHED = ("sigmoid", "robust", "simpo")


def _smoothed_sigmoid_loss(z: Tensor, label_smoothing: float) -> Tensor:
    # cDPO: the label says "chosen wins" with probability 1 - eps.
    return -(1.0 - label_smoothing) * F.logsigmoid(z) - label_smoothing * F.logsigmoid(-z)


def preference_loss(
    policy_chosen_logps: Tensor,
    policy_rejected_logps: Tensor,
    ref_chosen_logps: Tensor | None = None,
    ref_rejected_logps: Tensor | None = None,
    *,
    loss_type: str = "sigmoid",
    beta: float = 0.1,
    label_smoothing: float = 0.0,
    simpo_gamma: float = 0.5,
    chosen_lengths: Tensor | None = None,
    rejected_lengths: Tensor | None = None,
    chosen_nll: Tensor | None = None,
    rpo_alpha: float = 0.0,
) -> tuple[Tensor, dict[str, Tensor]]:
    """Preference loss of the DPO family, averaged over pairs, to minimize.

    Args:
        policy_chosen_logps / policy_rejected_logps: [B] sequence logprobs under the policy.
        ref_chosen_logps / ref_rejected_logps: [B] under the reference; required for every
            loss_type except ``simpo``, which must not get them (it is reference-free).
        loss_type: one of ``sigmoid`` (DPO/cDPO), ``robust``, ``ipo``, ``hinge``, ``simpo``.
        beta: inverse temperature (> 0); IPO's tau; SimPO's beta (the paper uses ~2 to 2.5).
        label_smoothing: eps in [0, 0.5), the assumed probability that a label is flipped
            (``sigmoid``: cDPO; ``robust``: robust DPO; ``simpo``: smoothed like cDPO).
            Not defined for ``ipo`` and ``hinge``.
        simpo_gamma: SimPO's target margin gamma (absolute, subtracted from beta * h).
        chosen_lengths / rejected_lengths: [B] response token counts; when given (both),
            all logprobs (policy and reference) are divided by them first.
        chosen_nll: [B] (or scalar) per-token NLL of the chosen response for RPO; if None
            and ``rpo_alpha > 0`` it is derived as -policy_chosen_logps / chosen_lengths.
        rpo_alpha: weight of the NLL term (RPO, Pang et al. 2024 use 1.0); 0 disables it.

    Returns:
        (loss, stats): loss is a 0-d float32 tensor; stats maps names to detached 0-d float32
        tensors: ``loss_preference``, ``rewards_chosen`` and ``rewards_rejected`` (mean
        implicit rewards beta * (log pi - log pi_ref); for SimPO beta * log pi),
        ``reward_margin`` (their mean difference), ``reward_accuracy`` (fraction of pairs
        with chosen reward > rejected reward), ``logps_chosen``, ``logps_rejected``
        (after any length normalization), and ``nll`` when rpo_alpha > 0.
    """
    if loss_type not in PREFERENCE_LOSS_TYPES:
        raise ValueError(f"loss_type must be one of {PREFERENCE_LOSS_TYPES}, got {loss_type!r}")
    if not beta > 0:
        raise ValueError(f"beta must be > 0, got {beta}")
    if not 0.0 <= label_smoothing < 0.5:
        raise ValueError(f"label_smoothing must be in [0, 0.5), got {label_smoothing}")
    if label_smoothing and loss_type not in _SMOOTHED:
        raise ValueError(f"label_smoothing is not defined for loss_type={loss_type!r}; use 0.0")
    if rpo_alpha < 0:
        raise ValueError(f"rpo_alpha must be >= 0, got {rpo_alpha}")
    has_ref = (ref_chosen_logps is not None, ref_rejected_logps is not None)
    if loss_type == "simpo" and any(has_ref):
        raise ValueError("loss_type='simpo' is reference-free: pass ref_chosen_logps=None and ref_rejected_logps=None")
    if loss_type != "simpo" and not all(has_ref):
        raise ValueError(f"loss_type={loss_type!r} needs ref_chosen_logps and ref_rejected_logps")
    if (chosen_lengths is None) != (rejected_lengths is None):
        raise ValueError("pass both chosen_lengths and rejected_lengths, or neither")

    shape = policy_chosen_logps.shape
    if len(shape) != 1:
        raise ValueError(f"policy_chosen_logps must be [B], got shape {tuple(shape)}")
    named = {
        "policy_rejected_logps": policy_rejected_logps,
        "ref_chosen_logps": ref_chosen_logps,
        "ref_rejected_logps": ref_rejected_logps,
        "chosen_lengths": chosen_lengths,
        "rejected_lengths": rejected_lengths,
    }
    for name, tensor in named.items():
        if tensor is not None and tensor.shape != shape:
            raise ValueError(f"{name} must have shape {tuple(shape)}, got {tuple(tensor.shape)}")

    def normalize(logps: Tensor | None, lengths: Tensor | None) -> Tensor | None:
        if logps is None:
            return None
        logps = logps.float()
        return logps if lengths is None else logps / lengths.float().clamp(min=1)

    pi_w = normalize(policy_chosen_logps, chosen_lengths)
    pi_l = normalize(policy_rejected_logps, rejected_lengths)
    ref_w = normalize(ref_chosen_logps, chosen_lengths)
    ref_l = normalize(ref_rejected_logps, rejected_lengths)

    if loss_type == "simpo":
        rewards_w, rewards_l = beta * pi_w, beta * pi_l
        losses = _smoothed_sigmoid_loss(rewards_w - rewards_l - simpo_gamma, label_smoothing)
    else:
        log_ratio_w, log_ratio_l = pi_w - ref_w, pi_l - ref_l
        h = log_ratio_w - log_ratio_l  # [B]
        rewards_w, rewards_l = beta * log_ratio_w, beta * log_ratio_l
        if loss_type == "sigmoid":
            losses = _smoothed_sigmoid_loss(beta * h, label_smoothing)
        elif loss_type == "robust":
            eps = label_smoothing
            losses = (-(1 - eps) * F.logsigmoid(beta * h) + eps * F.logsigmoid(-beta * h)) / (1 - 2 * eps)
        elif loss_type == "ipo":
            losses = (h - 1.0 / (2.0 * beta)) ** 2
        else:  # hinge
            losses = torch.relu(1.0 - beta * h)
    preference = losses.mean()
    loss = preference

    nll = None
    if rpo_alpha > 0:
        if chosen_nll is not None:
            nll = torch.as_tensor(chosen_nll).float().mean()
        elif chosen_lengths is not None:
            nll = (-pi_w).mean()  # pi_w is already the per-token average logprob
        else:
            raise ValueError("rpo_alpha > 0 needs chosen_nll, or chosen_lengths to derive it")
        loss = loss + rpo_alpha * nll

    with torch.no_grad():
        rewards_w, rewards_l = rewards_w.detach(), rewards_l.detach()
        stats = {
            "loss_preference": preference.detach(),
            "rewards_chosen": rewards_w.mean(),
            "rewards_rejected": rewards_l.mean(),
            "reward_margin": (rewards_w - rewards_l).mean(),
            "reward_accuracy": (rewards_w > rewards_l).float().mean(),
            "logps_chosen": pi_w.detach().mean(),
            "logps_rejected": pi_l.detach().mean(),
        }
        if nll is not None:
            stats["nll"] = nll.detach()
    return loss, stats
