"""KTO: Kahneman-Tversky optimisation on single answers labelled desirable or undesirable (Ethayarajh et al.,
2024, "KTO: Model Alignment as Prospect Theoretic Optimization").

Inputs are per-example sequence logprobs ``[B]`` (sums over the answer's tokens) under the policy and the
frozen reference, and a boolean label per example. With the implicit reward r = log pi(y|x) - log pi_ref(y|x)
and the reference point z_ref (below), per example

    desirable   (label true):   lambda_D * (1 - sigmoid(beta * (r - z_ref)))
    undesirable (label false):  lambda_U * (1 - sigmoid(beta * (z_ref - r)))

and the loss is their mean over the batch (the paper's E[lambda_y - v(x, y)]; TRL's kto loss). Each term is
in [0, lambda_y]: the loss is bounded, it falls as a desirable answer's reward rises and as an undesirable
answer's falls, and the weights scale each side alone.

The reference point z_ref estimates KL(pi || pi_ref) on the batch: mismatched pairs (prompt x_i with the
answer y_j of another prompt), z_ref = max(0, mean_i (log pi(y_j|x_i) - log pi_ref(y_j|x_i))), detached
(no gradient flows through it; the paper and TRL do the same). ``reference_point`` computes it; a loop that
splits a batch into micro-batches or ranks computes it once over the whole batch and passes it in.

The paper advises lambda_D n_D / (lambda_U n_U) in [1, 4/3] (n: desirable and undesirable counts);
``weight_ratio`` gives that figure.
"""
from __future__ import annotations

import torch
from torch import Tensor


def reference_point(policy_kl_logps: Tensor, ref_kl_logps: Tensor) -> Tensor:
    """z_ref: the mean log-ratio of the mismatched (KL) pairs, clamped at 0, detached. 0-d float32."""
    if policy_kl_logps.shape != ref_kl_logps.shape or policy_kl_logps.dim() != 1:
        raise ValueError(f"KL logprobs must both be [B], got {tuple(policy_kl_logps.shape)} and "
                         f"{tuple(ref_kl_logps.shape)}")
    if policy_kl_logps.numel() == 0:
        return torch.zeros((), dtype=torch.float32, device=policy_kl_logps.device)
    return (policy_kl_logps.detach().float() - ref_kl_logps.detach().float()).mean().clamp(min=0)


def weight_ratio(n_desirable: int, n_undesirable: int, desirable_weight: float = 1.0,
                 undesirable_weight: float = 1.0) -> float:
    """lambda_D n_D / (lambda_U n_U): the paper recommends [1, 4/3]; inf when there is nothing undesirable."""
    den = undesirable_weight * n_undesirable
    return float("inf") if den == 0 else desirable_weight * n_desirable / den


def _check(policy_logps: Tensor, ref_logps: Tensor, labels: Tensor, beta: float, desirable_weight: float,
           undesirable_weight: float) -> None:
    if not beta > 0:
        raise ValueError(f"beta must be > 0, got {beta}")
    if desirable_weight < 0 or undesirable_weight < 0:
        raise ValueError(f"desirable_weight and undesirable_weight must be >= 0, got {desirable_weight}, "
                         f"{undesirable_weight}")
    if policy_logps.dim() != 1:
        raise ValueError(f"policy_logps must be [B], got shape {tuple(policy_logps.shape)}")
    for name, t in (("ref_logps", ref_logps), ("labels", labels)):
        if t.shape != policy_logps.shape:
            raise ValueError(f"{name} must have shape {tuple(policy_logps.shape)}, got {tuple(t.shape)}")


def kto_losses(
    policy_logps: Tensor,
    ref_logps: Tensor,
    labels: Tensor,
    *,
    reference_point: Tensor | float,
    beta: float = 0.1,
    desirable_weight: float = 1.0,
    undesirable_weight: float = 1.0,
) -> tuple[Tensor, Tensor]:
    """(per-example weighted losses [B], implicit rewards beta * r [B], detached). A loop that splits a batch
    sums the losses of its pieces and divides by the batch size; `kto_loss` is their mean with statistics."""
    _check(policy_logps, ref_logps, labels, beta, desirable_weight, undesirable_weight)
    labels = labels.to(device=policy_logps.device, dtype=torch.bool)
    z = torch.as_tensor(reference_point, dtype=torch.float32, device=policy_logps.device).detach()
    log_ratio = policy_logps.float() - ref_logps.float().to(policy_logps.device)  # r, [B]
    desirable = desirable_weight * (1.0 - torch.sigmoid(beta * (log_ratio - z)))
    undesirable = undesirable_weight * (1.0 - torch.sigmoid(beta * (z - log_ratio)))
    return torch.where(labels, desirable, undesirable), beta * log_ratio.detach()


def kto_loss(
    policy_logps: Tensor,
    ref_logps: Tensor,
    labels: Tensor,
    *,
    reference_point: Tensor | float,
    beta: float = 0.1,
    desirable_weight: float = 1.0,
    undesirable_weight: float = 1.0,
) -> tuple[Tensor, dict[str, Tensor]]:
    """KTO loss, averaged over the batch, to minimize.

    Args:
        policy_logps / ref_logps: [B] sequence logprobs of each example's answer under the policy and the
            reference (sums over answer tokens; divide both by the lengths first for a per-token variant).
        labels: [B] bool, True for a desirable answer.
        reference_point: z_ref (``reference_point(...)``, or a float); treated as a constant.
        beta: inverse temperature (> 0).
        desirable_weight / undesirable_weight: lambda_D, lambda_U (>= 0).

    Returns:
        (loss, stats): loss is a 0-d float32 tensor; stats are detached 0-d float32 tensors: ``kl``
        (z_ref), ``rewards_desirable`` / ``rewards_undesirable`` (mean implicit reward beta * r of each side;
        nan when the batch has none), ``reward_margin`` (their difference), ``logps_desirable`` /
        ``logps_undesirable``, ``n_desirable`` / ``n_undesirable`` (counts), ``loss_desirable`` /
        ``loss_undesirable`` (mean weighted loss of each side; nan when absent).
    """
    if policy_logps.dim() == 1 and policy_logps.numel() == 0:
        raise ValueError("kto_loss: empty batch")
    losses, rewards = kto_losses(policy_logps, ref_logps, labels, reference_point=reference_point, beta=beta,
                                 desirable_weight=desirable_weight, undesirable_weight=undesirable_weight)
    loss = losses.mean()
    with torch.no_grad():
        labels = labels.to(device=policy_logps.device, dtype=torch.bool)
        nan = torch.tensor(float("nan"), device=policy_logps.device)

        def side_mean(values: Tensor, mask: Tensor) -> Tensor:
            return values[mask].float().mean() if bool(mask.any()) else nan

        r_d, r_u = side_mean(rewards, labels), side_mean(rewards, ~labels)
        stats = {
            "kl": torch.as_tensor(reference_point, dtype=torch.float32, device=policy_logps.device).detach(),
            "rewards_desirable": r_d,
            "rewards_undesirable": r_u,
            "reward_margin": r_d - r_u,
            "logps_desirable": side_mean(policy_logps.detach(), labels),
            "logps_undesirable": side_mean(policy_logps.detach(), ~labels),
            "n_desirable": labels.sum().float(),
            "n_undesirable": (~labels).sum().float(),
            "loss_desirable": side_mean(losses.detach(), labels),
            "loss_undesirable": side_mean(losses.detach(), ~labels),
        }
    return loss, stats
