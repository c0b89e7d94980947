"""Token log-probabilities and entropies from logits, chunked over tokens.

A full float32 log-softmax over ``[B, T, V]`` is the largest tensor of a policy update
(B*T = 64k tokens x V = 150k is 39 GB), and plain autograd keeps one per chunk alive until
backward, so chunking the forward alone would not help training. Both functions here are
``torch.autograd.Function``s that work on ``chunk_size`` rows of ``[B*T, V]`` at a time in the
forward *and* recompute the softmax chunk by chunk in the backward: the only full-size
tensors are the caller's logits and their gradient (in the logits' dtype).

Temperature is applied exactly as vLLM's sampler applies it before computing processed
logprobs: logits cast to float32, then divided (true division, not multiplication by the
reciprocal) by the float32 temperature, then ``log_softmax`` in float32. Note that vLLM
returns *raw* logprobs (before temperature) unless the engine is built with
``logprobs_mode="processed_logprobs"``; sampler logprobs used for importance-sampling
corrections must come from that mode (and without top-k / top-p / penalties) to be
comparable with :func:`gather_logprobs` at the same temperature.
"""

from __future__ import annotations

import torch
from torch import Tensor

DEFAULT_CHUNK_SIZE = 1024  # rows of [B*T, V]; peak extra memory ~ 2 * chunk_size * V * 4 bytes


def _scaled_float32(rows: Tensor, temperature: Tensor | None) -> Tensor:
    """[n, V] logits -> float32 logits divided by temperature (vLLM's order of operations)."""
    x = rows.to(torch.float32)
    if temperature is None:
        return x
    if x.data_ptr() == rows.data_ptr():
        return x / temperature  # float32 input: don't divide the caller's logits in place
    return x.div_(temperature)


def _check_args(logits: Tensor, temperature: float, chunk_size: int) -> None:
    if logits.dim() < 2:
        raise ValueError(f"logits must be [..., V], got shape {tuple(logits.shape)}")
    if not logits.is_floating_point():
        raise ValueError(f"logits must be floating point, got {logits.dtype}")
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    if not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(f"chunk_size must be a positive int, got {chunk_size!r}")


def _temperature_tensor(temperature: float, device: torch.device) -> Tensor | None:
    # Dividing by 1.0 is the identity; skip the pass. A tensor (not a Python scalar) keeps
    # CUDA from swapping the division for a multiplication by the reciprocal.
    if temperature == 1.0:
        return None
    return torch.tensor(temperature, dtype=torch.float32, device=device)


class _GatherLogprobs(torch.autograd.Function):
    @staticmethod
    def forward(ctx, logits: Tensor, tokens: Tensor, temperature: float, chunk_size: int) -> Tensor:
        vocab = logits.shape[-1]
        flat = logits.reshape(-1, vocab)  # [N, V]
        flat_tokens = tokens.reshape(-1, 1)  # [N, 1]
        temp = _temperature_tensor(temperature, logits.device)
        out = torch.empty(flat.shape[0], dtype=torch.float32, device=logits.device)  # [N]
        for start in range(0, flat.shape[0], chunk_size):
            stop = start + chunk_size
            logp = torch.log_softmax(_scaled_float32(flat[start:stop], temp), dim=-1)
            out[start:stop] = logp.gather(1, flat_tokens[start:stop]).squeeze(1)
            del logp
        ctx.save_for_backward(logits, tokens)
        ctx.temperature = temperature
        ctx.chunk_size = chunk_size
        return out.view(tokens.shape)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out: Tensor):
        logits, tokens = ctx.saved_tensors
        vocab = logits.shape[-1]
        flat = logits.reshape(-1, vocab)
        flat_tokens = tokens.reshape(-1, 1)
        flat_grad_out = grad_out.reshape(-1, 1).to(torch.float32)  # [N, 1]
        temp = _temperature_tensor(ctx.temperature, logits.device)
        grad = torch.empty_like(flat)  # [N, V], logits dtype
        for start in range(0, flat.shape[0], ctx.chunk_size):
            stop = start + ctx.chunk_size
            g_out = flat_grad_out[start:stop]
            # d log p_y / d x = onehot(y) - softmax(x/T), times 1/T for the scaling.
            g = torch.softmax(_scaled_float32(flat[start:stop], temp), dim=-1).mul_(-g_out)
            g.scatter_add_(1, flat_tokens[start:stop], g_out)
            if temp is not None:
                g.div_(temp)
            grad[start:stop] = g
            del g
        return grad.view_as(logits), None, None, None


class _Entropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, logits: Tensor, temperature: float, chunk_size: int) -> Tensor:
        vocab = logits.shape[-1]
        flat = logits.reshape(-1, vocab)
        temp = _temperature_tensor(temperature, logits.device)
        out = torch.empty(flat.shape[0], dtype=torch.float32, device=logits.device)
        for start in range(0, flat.shape[0], chunk_size):
            stop = start + chunk_size
            logp = torch.log_softmax(_scaled_float32(flat[start:stop], temp), dim=-1)
            # H = -sum p log p; p * logp is 0 * -inf = nan where p underflows to 0, so mask.
            plogp = torch.where(logp.isneginf(), 0.0, logp.exp() * logp)
            out[start:stop] = -plogp.sum(dim=-1)
            del logp, plogp
        ctx.save_for_backward(logits, out)
        ctx.temperature = temperature
        ctx.chunk_size = chunk_size
        return out.view(logits.shape[:-1])

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out: Tensor):
        logits, entropy = ctx.saved_tensors
        vocab = logits.shape[-1]
        flat = logits.reshape(-1, vocab)
        flat_grad_out = grad_out.reshape(-1, 1).to(torch.float32)
        temp = _temperature_tensor(ctx.temperature, logits.device)
        grad = torch.empty_like(flat)
        for start in range(0, flat.shape[0], ctx.chunk_size):
            stop = start + ctx.chunk_size
            logp = torch.log_softmax(_scaled_float32(flat[start:stop], temp), dim=-1)
            h = entropy[start:stop].unsqueeze(1)
            # dH/dz_j = -p_j (log p_j + H) for z = x / T; p_j = 0 rows contribute 0.
            g = torch.where(logp.isneginf(), 0.0, -logp.exp() * (logp + h))
            g.mul_(flat_grad_out[start:stop])
            if temp is not None:
                g.div_(temp)
            grad[start:stop] = g
            del logp, g
        return grad.view_as(logits), None, None


def gather_logprobs(
    logits: Tensor,
    tokens: Tensor,
    *,
    temperature: float = 1.0,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
) -> Tensor:
    """log softmax(logits / temperature)[token] for every position, chunked.

    Args:
        logits: [B, T, V] (any leading shape), any floating dtype; position t must be the
            logits that *predict* ``tokens[..., t]`` (shift before calling).
        tokens: [B, T] integer token ids, same leading shape as ``logits``.
        temperature: the sampling temperature (> 0), applied as vLLM applies it.
        chunk_size: rows of the flattened ``[B*T, V]`` processed at once.

    Returns:
        [B, T] float32 log-probabilities, differentiable w.r.t. ``logits``; the backward
        recomputes the softmax chunk by chunk instead of storing it.
    """
    _check_args(logits, temperature, chunk_size)
    if tokens.shape != logits.shape[:-1]:
        raise ValueError(
            f"tokens shape {tuple(tokens.shape)} must equal logits shape without the vocab "
            f"dim {tuple(logits.shape[:-1])}"
        )
    if tokens.dtype not in (torch.int64, torch.int32, torch.int16, torch.uint8, torch.int8):
        raise ValueError(f"tokens must be integer ids, got {tokens.dtype}")
    tokens = tokens.to(torch.int64)
    if tokens.numel() and (int(tokens.min()) < 0 or int(tokens.max()) >= logits.shape[-1]):
        raise ValueError(f"token ids must lie in [0, {logits.shape[-1]}) (the vocab size)")
    return _GatherLogprobs.apply(logits, tokens, float(temperature), chunk_size)


def entropy_from_logits(
    logits: Tensor,
    *,
    temperature: float = 1.0,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
) -> Tensor:
    """Entropy H = -sum_v p_v log p_v of softmax(logits / temperature) at every position.

    Args:
        logits: [B, T, V] (any leading shape), any floating dtype.
        temperature: as in :func:`gather_logprobs`.
        chunk_size: rows of the flattened ``[B*T, V]`` processed at once.

    Returns:
        [B, T] float32 entropies in nats, differentiable (for an entropy bonus) with the
        same chunked recomputation in the backward.
    """
    _check_args(logits, temperature, chunk_size)
    return _Entropy.apply(logits, float(temperature), chunk_size)
