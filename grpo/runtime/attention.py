"""What a loaded model's attention accepts and costs, read from its config: whether it takes packed rows as
position_ids (flash-attention varlen kernels, no 4-D mask), and how expensive attention is against the
linear layers (for the shared-prompt cost model in grpo.algorithms.packing)."""
from __future__ import annotations

import torch


def uses_varlen_attention(model: torch.nn.Module) -> bool:
    """Flash-attention kernels take packed rows as position_ids (varlen) and no 4-D mask."""
    impl = getattr(getattr(model, "config", None), "_attn_implementation", "") or ""
    return "flash" in impl


def attention_cost_ratio(model: torch.nn.Module) -> float:
    """rho: attention FLOPs per (query, key) pair over linear-layer FLOPs per token, per layer: 4 h / (2 x the
    layer's parameters). A row of L tokens costs ~ L + rho L^2 token-equivalents (masked pairs are computed
    too). 0.00098 for the 128-wide tiny model, ~7e-5 for a 1.5B Qwen2."""
    cfg = getattr(model, "config", None)
    hidden, layers = getattr(cfg, "hidden_size", None), getattr(cfg, "num_hidden_layers", None)
    if not hidden or not layers:
        return 0.0
    # ZeRO-3 leaves partitioned parameters empty on each rank; ds_numel is the full size
    numel = sum(getattr(p, "ds_numel", p.numel()) for n, p in model.named_parameters()
                if "embed" not in n and "lm_head" not in n)
    return 2.0 * hidden * layers / max(numel, 1)
