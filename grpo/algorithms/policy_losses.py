"""GRPO-family policy loss, k3 KL, truncated importance sampling, overlong shaping.

Everything works on per-token tensors ``[B, T]`` (B completions, T completion positions,
right-padded) with a completion mask; a sequence's advantage is broadcast over its tokens.
Formulas and papers are in docs/algorithms.md. Torch only: the loops call these functions.

Main entry point: :func:`policy_loss`. Building blocks, public because loops and tests use
them: :func:`importance_log_ratio`, :func:`k3_kl`, :func:`tis_weights`,
:func:`aggregate_token_losses`, :func:`filter_truncated`, :func:`soft_overlong_penalty`.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

RATIO_LEVELS = ("token", "sequence")
AGGREGATIONS = ("seq_mean", "token_mean", "constant")
TIS_LEVELS = ("token", "sequence")

# exp(20) ~ 5e8: a log-ratio beyond this is a numerical accident (stale or garbage logprobs),
# and exp would overflow float32 near 88. verl clamps at the same bound.
LOG_RATIO_CLAMP = 20.0


def _masked_sum(values: Tensor, mask: Tensor, dim=None) -> Tensor:
    # where, not multiply: a padded position may hold inf/nan and inf * 0 = nan.
    zeros = torch.zeros((), dtype=values.dtype, device=values.device)
    masked = torch.where(mask, values, zeros)
    return masked.sum() if dim is None else masked.sum(dim=dim)


def _masked_mean(values: Tensor, mask: Tensor) -> Tensor:
    return _masked_sum(values, mask) / mask.sum().clamp(min=1)


def k3_kl(logprobs: Tensor, ref_logprobs: Tensor) -> Tensor:
    """Per-token k3 estimator of KL(pi || pi_ref) for tokens sampled from pi (Schulman, 2020).

    k3 = pi_ref/pi - log(pi_ref/pi) - 1 = expm1(d) - d with d = ref_logprobs - logprobs,
    which is >= 0 for every d and 0 exactly when d == 0. ``expm1`` keeps it non-negative in
    floating point for tiny d, where ``exp(d) - 1`` would round to a negative number.
    d is clamped to +-LOG_RATIO_CLAMP so that wild values cannot overflow.

    Returns a tensor shaped like the inputs (no masking, no reduction).
    """
    d = (ref_logprobs - logprobs).clamp(-LOG_RATIO_CLAMP, LOG_RATIO_CLAMP)
    return torch.expm1(d) - d


def importance_log_ratio(
    logprobs: Tensor,
    old_logprobs: Tensor,
    mask: Tensor,
    *,
    level: str = "token",
) -> Tensor:
    """log(pi_theta / pi_old) per token, [B, T]; 0 at masked positions.

    ``level="token"`` (PPO / GRPO): log pi_theta(y_t) - log pi_old(y_t).

    ``level="sequence"`` (GSPO, Zheng et al., 2025): every token of sequence i carries the
    length-normalized sequence ratio log s_i = mean_t [log pi_theta(y_t) - log pi_old(y_t)],
    written in GSPO-token form ``logp_t - sg(logp_t) + sg(log s_i)``: its value is log s_i
    at every token, and the gradient of a per-sequence token mean equals the gradient of
    s_i itself (d s_i = s_i * mean_t d log pi_theta(y_t)).
    """
    if level not in RATIO_LEVELS:
        raise ValueError(f"ratio_level must be one of {RATIO_LEVELS}, got {level!r}")
    token_log_ratio = torch.where(mask, logprobs - old_logprobs, torch.zeros_like(logprobs))
    if level == "token":
        return token_log_ratio
    lengths = mask.sum(dim=1).clamp(min=1)  # [B]
    seq_log_ratio = token_log_ratio.sum(dim=1) / lengths  # [B]
    gspo = logprobs - logprobs.detach() + seq_log_ratio.detach().unsqueeze(1)
    return torch.where(mask, gspo, torch.zeros_like(gspo))


def tis_weights(
    old_logprobs: Tensor,
    sampler_logprobs: Tensor,
    mask: Tensor,
    *,
    level: str = "token",
    cap: float = 2.0,
) -> Tensor:
    """Truncated importance weights min(pi_old / pi_sampler, cap), detached, [B, T].

    Corrects for the sampler (vLLM) and the trainer computing different probabilities for
    the same weights (Yao et al., 2025, "Your efficient RL framework secretly brings you
    off-policy RL training"). ``level="token"``: one weight per token. ``level="sequence"``:
    the product of the token ratios of a sequence, truncated once and broadcast to its
    tokens. Truncation is applied in log space, so long sequences cannot overflow.
    Masked positions get weight 0.
    """
    if level not in TIS_LEVELS:
        raise ValueError(f"tis_level must be one of {TIS_LEVELS} or None, got {level!r}")
    if not cap > 0:
        raise ValueError(f"tis_cap must be > 0, got {cap}")
    log_cap = math.log(cap)
    log_w = torch.where(mask, (old_logprobs - sampler_logprobs).detach(), torch.zeros_like(old_logprobs))
    if level == "sequence":
        log_w = log_w.sum(dim=1, keepdim=True).expand_as(log_w)
    # Exactly `cap` where truncated (exp(log(cap)) need not round back to cap).
    weights = torch.where(log_w >= log_cap, torch.full_like(log_w, cap), torch.exp(log_w.clamp(max=log_cap)))
    return torch.where(mask, weights, torch.zeros_like(weights))


def filter_truncated(mask: Tensor, truncated: Tensor) -> Tensor:
    """Overlong filtering (DAPO): drop every token of completions cut off at the length limit.

    mask: [B, T]; truncated: [B] bool (True = the sampler stopped on max_tokens, not EOS).
    Returns a new bool mask [B, T].
    """
    truncated = torch.as_tensor(truncated, device=mask.device).bool()
    if truncated.shape != mask.shape[:1]:
        raise ValueError(f"truncated must be [B]={tuple(mask.shape[:1])}, got {tuple(truncated.shape)}")
    return mask.bool() & ~truncated.unsqueeze(1)


def soft_overlong_penalty(
    lengths: Tensor,
    max_len: int,
    buffer_len: int,
    penalty_factor: float = 1.0,
) -> Tensor:
    """DAPO's soft overlong punishment, a reward term added to the verifier reward.

    With L_max = ``max_len`` and L_cache = ``buffer_len``::

        0                                       if |y| <= L_max - L_cache
        ((L_max - L_cache) - |y|) / L_cache     if L_max - L_cache < |y| <= L_max
        -1                                      if |y| > L_max

    all multiplied by ``penalty_factor``. lengths: [B] completion lengths in tokens.
    Returns float32 [B] (values in [-penalty_factor, 0]).
    """
    if not isinstance(max_len, int) or max_len < 1:
        raise ValueError(f"max_len must be a positive int, got {max_len!r}")
    if not isinstance(buffer_len, int) or not 0 < buffer_len <= max_len:
        raise ValueError(f"buffer_len must be an int in (0, max_len={max_len}], got {buffer_len!r}")
    if penalty_factor < 0:
        raise ValueError(f"penalty_factor must be >= 0, got {penalty_factor}")
    lengths = torch.as_tensor(lengths, dtype=torch.float32)
    exceed = lengths - (max_len - buffer_len)
    return -penalty_factor * (exceed / buffer_len).clamp(0.0, 1.0)


def aggregate_token_losses(
    per_token: Tensor,
    mask: Tensor,
    *,
    aggregation: str = "seq_mean",
    constant_normalizer: float | None = None,
    batch_num_tokens: float | None = None,
    batch_num_sequences: float | None = None,
) -> Tensor:
    """Reduce a per-token loss [B, T] to a scalar.

    - ``seq_mean`` (GRPO): mean over each sequence's tokens, then mean over sequences that
      have at least one token: (1/n) sum_i (1/|y_i|) sum_t l_it.
    - ``token_mean`` (DAPO): sum over all tokens / number of tokens, so long answers weigh
      in proportion to their length.
    - ``constant`` (Dr. GRPO): sum over all tokens / (n * constant_normalizer), with
      constant_normalizer a fixed token budget (typically the max completion length), so
      neither the answer length nor the batch's token count rescales the gradient.

    When this call sees one micro-batch of a larger batch, pass the whole batch's counts
    (``batch_num_tokens`` for token_mean; ``batch_num_sequences``, the n above, for
    seq_mean and constant) so that summing micro-batch losses gives the full-batch loss.
    By default n is the local count: sequences with a token for seq_mean, B for constant.
    """
    if aggregation not in AGGREGATIONS:
        raise ValueError(f"aggregation must be one of {AGGREGATIONS}, got {aggregation!r}")
    if aggregation == "constant":
        if constant_normalizer is None or not constant_normalizer > 0:
            raise ValueError(
                f"aggregation='constant' needs constant_normalizer > 0 (e.g. the max completion "
                f"length), got {constant_normalizer!r}"
            )
        num_seqs = per_token.shape[0] if batch_num_sequences is None else batch_num_sequences
        return _masked_sum(per_token, mask) / (max(num_seqs, 1) * constant_normalizer)
    if aggregation == "token_mean":
        num_tokens = mask.sum().clamp(min=1) if batch_num_tokens is None else max(batch_num_tokens, 1)
        return _masked_sum(per_token, mask) / num_tokens
    tokens_per_seq = mask.sum(dim=1)  # [B]
    seq_means = _masked_sum(per_token, mask, dim=1) / tokens_per_seq.clamp(min=1)  # [B]
    if batch_num_sequences is None:
        num_seqs = (tokens_per_seq > 0).sum().clamp(min=1)
    else:
        num_seqs = max(batch_num_sequences, 1)
    return seq_means.sum() / num_seqs


def policy_loss(
    logprobs: Tensor,
    old_logprobs: Tensor | None,
    advantages: Tensor,
    mask: Tensor,
    *,
    epsilon_low: float = 0.2,
    epsilon_high: float | None = None,
    ratio_level: str = "token",
    aggregation: str = "seq_mean",
    constant_normalizer: float | None = None,
    batch_num_tokens: float | None = None,
    batch_num_sequences: float | None = None,
    ref_logprobs: Tensor | None = None,
    beta: float = 0.0,
    sampler_logprobs: Tensor | None = None,
    tis_level: str | None = None,
    tis_cap: float = 2.0,
    truncated: Tensor | None = None,
    entropy: Tensor | None = None,
) -> tuple[Tensor, dict[str, Tensor]]:
    """Clipped-surrogate policy loss of the GRPO family, to minimize.

    Per token (A_i the sequence advantage, r the importance ratio, w the TIS weight)::

        l_it = -w_it * min(r_it * A_i, clip(r_it, 1 - epsilon_low, 1 + epsilon_high) * A_i)
               + beta * k3(pi_theta, pi_ref)_it

    then reduced by :func:`aggregate_token_losses`. Presets: GRPO = token ratio, seq_mean,
    epsilon 0.2, beta 0.04; DAPO = token_mean, epsilon_high 0.28, beta 0, overlong
    filtering/shaping; Dr. GRPO = constant aggregation with ``method="dr_grpo"``
    advantages; GSPO = ``ratio_level="sequence"``, epsilons ~3e-4/4e-4, seq_mean.

    Args:
        logprobs: [B, T] log pi_theta of the sampled tokens (with grad).
        old_logprobs: [B, T] log pi_old (the policy that sampled, recomputed by the trainer);
            None means on-policy (``logprobs.detach()``, so the ratio is exactly 1).
        advantages: [B] per-sequence (or [B, T] per-token) advantages.
        mask: [B, T] completion mask; nonzero = the token is in the loss.
        epsilon_low / epsilon_high: clip range [1 - low, 1 + high]; high defaults to low.
        ratio_level: "token" or "sequence" (GSPO), see :func:`importance_log_ratio`.
        aggregation, constant_normalizer, batch_num_tokens, batch_num_sequences:
            see :func:`aggregate_token_losses`.
        ref_logprobs: [B, T] log pi_ref; needed only when beta != 0 (reported when given).
        beta: coefficient of the k3 KL penalty.
        sampler_logprobs: [B, T] logprobs reported by the sampler (vLLM); needed for TIS,
            and mismatch statistics are reported whenever given.
        tis_level: None (off), "token" or "sequence", see :func:`tis_weights`.
        tis_cap: truncation C of the importance weights.
        truncated: [B] bool; True drops the completion from the loss (overlong filtering).
        entropy: [B, T] per-token entropy (e.g. from ``entropy_from_logits``), for the stats.

    Returns:
        (loss, stats): loss is a 0-d float32 tensor; stats maps names to detached 0-d
        float32 tensors (call ``.item()`` when logging; no device sync happens here):
        ``pg_loss`` (surrogate part), ``kl`` (k3 to reference, if given), ``clip_frac_low``
        (ratio < 1 - epsilon_low with A < 0: clipped, no gradient), ``clip_frac_high``
        (ratio > 1 + epsilon_high with A > 0), ``clip_frac``, ``approx_kl`` (k3 estimate of
        KL(pi_old || pi_theta)), ``ratio_min/mean/max`` over unmasked tokens (NaN if none),
        ``num_tokens``, ``entropy`` (if given), and with sampler logprobs ``sampler_kl`` (k3
        estimate of KL(pi_sampler || pi_old)) and, with TIS, ``tis_weight_mean`` and
        ``tis_truncated_frac``. Token fractions and means are over unmasked tokens.
    """
    if epsilon_high is None:
        epsilon_high = epsilon_low
    if not 0 <= epsilon_low < 1:
        raise ValueError(f"epsilon_low must be in [0, 1), got {epsilon_low}")
    if epsilon_high < 0:
        raise ValueError(f"epsilon_high must be >= 0, got {epsilon_high}")
    if beta < 0:
        raise ValueError(f"beta must be >= 0, got {beta}")
    if beta != 0 and ref_logprobs is None:
        raise ValueError(f"beta={beta} needs ref_logprobs (pass beta=0.0 to train without a reference)")
    if tis_level is not None and sampler_logprobs is None:
        raise ValueError(f"tis_level={tis_level!r} needs sampler_logprobs")
    if logprobs.dim() != 2:
        raise ValueError(f"logprobs must be [B, T], got shape {tuple(logprobs.shape)}")
    shape = logprobs.shape
    for name, tensor in (
        ("old_logprobs", old_logprobs),
        ("mask", mask),
        ("ref_logprobs", ref_logprobs),
        ("sampler_logprobs", sampler_logprobs),
        ("entropy", entropy),
    ):
        if tensor is not None and tensor.shape != shape:
            raise ValueError(f"{name} must have logprobs' shape {tuple(shape)}, got {tuple(tensor.shape)}")
    if advantages.shape not in (shape[:1], shape):
        raise ValueError(f"advantages must be [B]={tuple(shape[:1])} or [B, T], got {tuple(advantages.shape)}")

    mask = mask.bool() if truncated is None else filter_truncated(mask, truncated)

    def clean(values: Tensor | None) -> Tensor | None:
        # float32 even when the model runs in bf16; padded positions set to 0 *before* any
        # arithmetic, because a nan/inf there would turn the zero gradient of a later
        # torch.where into 0 * nan = nan.
        if values is None:
            return None
        values = values.float()
        return torch.where(mask, values, torch.zeros((), dtype=values.dtype, device=values.device))

    logprobs = clean(logprobs)
    old_logprobs = logprobs.detach() if old_logprobs is None else clean(old_logprobs).detach()
    ref_logprobs = clean(ref_logprobs)
    sampler_logprobs = clean(sampler_logprobs)
    adv = advantages.float().detach()
    adv = adv.unsqueeze(1) if adv.dim() == 1 else clean(adv)  # [B, 1] broadcast, or [B, T]

    log_ratio = importance_log_ratio(logprobs, old_logprobs, mask, level=ratio_level)
    ratio = torch.exp(log_ratio.clamp(-LOG_RATIO_CLAMP, LOG_RATIO_CLAMP))  # [B, T]
    unclipped = ratio * adv
    clipped = ratio.clamp(1.0 - epsilon_low, 1.0 + epsilon_high) * adv
    per_token_pg = -torch.minimum(unclipped, clipped)  # [B, T]

    weights = None
    if tis_level is not None:
        weights = tis_weights(old_logprobs, sampler_logprobs, mask, level=tis_level, cap=tis_cap)
        per_token_pg = per_token_pg * weights

    reduce = dict(
        aggregation=aggregation,
        constant_normalizer=constant_normalizer,
        batch_num_tokens=batch_num_tokens,
        batch_num_sequences=batch_num_sequences,
    )
    pg_loss = aggregate_token_losses(per_token_pg, mask, **reduce)
    kl = k3_kl(logprobs, ref_logprobs.detach()) if ref_logprobs is not None else None
    loss = pg_loss if beta == 0 else pg_loss + beta * aggregate_token_losses(kl, mask, **reduce)

    with torch.no_grad():
        stats = _policy_stats(
            ratio=ratio.detach(),
            adv=adv,
            mask=mask,
            logprobs=logprobs.detach(),
            old_logprobs=old_logprobs,
            epsilon_low=epsilon_low,
            epsilon_high=epsilon_high,
        )
        stats["pg_loss"] = pg_loss.detach()
        if kl is not None:
            stats["kl"] = _masked_mean(kl.detach(), mask)
        if entropy is not None:
            stats["entropy"] = _masked_mean(entropy.detach().float(), mask)
        if sampler_logprobs is not None:
            stats["sampler_kl"] = _masked_mean(k3_kl(sampler_logprobs, old_logprobs), mask)
        if weights is not None:
            stats["tis_weight_mean"] = _masked_mean(weights, mask)
            stats["tis_truncated_frac"] = _masked_mean((weights >= tis_cap).float(), mask)
    return loss, stats


def _policy_stats(
    *,
    ratio: Tensor,
    adv: Tensor,
    mask: Tensor,
    logprobs: Tensor,
    old_logprobs: Tensor,
    epsilon_low: float,
    epsilon_high: float,
) -> dict[str, Tensor]:
    adv = adv.expand_as(ratio)
    low = ((ratio < 1.0 - epsilon_low) & (adv < 0)).float()
    high = ((ratio > 1.0 + epsilon_high) & (adv > 0)).float()
    num_tokens = mask.sum()
    nan = torch.tensor(float("nan"), device=ratio.device)
    has_tokens = num_tokens > 0
    if ratio.numel() == 0:  # T == 0: min/max of an empty tensor would raise
        ratio_min = ratio_max = nan
    else:
        ratio_min = torch.where(mask, ratio, torch.full_like(ratio, float("inf"))).min()
        ratio_max = torch.where(mask, ratio, torch.full_like(ratio, float("-inf"))).max()
    return {
        "clip_frac_low": _masked_mean(low, mask),
        "clip_frac_high": _masked_mean(high, mask),
        "clip_frac": _masked_mean(low + high, mask),
        # KL(pi_old || pi_theta) with r = pi_theta / pi_old: k3 = r - 1 - log r.
        "approx_kl": _masked_mean(k3_kl(old_logprobs, logprobs), mask),
        "ratio_min": torch.where(has_tokens, ratio_min, nan),
        "ratio_mean": torch.where(has_tokens, _masked_mean(ratio, mask), nan),
        "ratio_max": torch.where(has_tokens, ratio_max, nan),
        "num_tokens": num_tokens.float(),
    }
