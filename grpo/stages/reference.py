"""The reference policy of DPO, KTO and GRPO's KL term: the model the stage starts from, as logprobs computed once
before the first step (cached on disk), or live: a frozen copy, or with a fresh LoRA adapter the policy itself with
the adapter disabled (no second model)."""
from __future__ import annotations

import time
from pathlib import Path
from typing import Callable, Sequence

from grpo.runtime.distributed import device
from grpo.runtime.engine import TrainEngine
from grpo.runtime.lora import fresh_adapter
from grpo.runtime.models import load_model
from grpo.runtime.reference_cache import (ReferenceLogps, cache_file, cache_key, compute_reference_logps,
                                          load_or_compute, writable_dir)
from grpo.stages.context import StageContext


def live_reference(engine: TrainEngine, init_model_path: str, model_cfg) -> tuple[Callable, object]:
    """forward(ids, att, pos=None) -> logits of the model the stage started from, and the frozen model it runs (None
    when it is the policy with its fresh adapter disabled); the caller keeps the model alive while training."""
    if fresh_adapter(init_model_path, model_cfg):
        def forward(ids, att, pos=None):
            with engine.adapter_disabled():
                return engine.forward(ids, att, pos)
        return forward, None
    ref_model = load_model(init_model_path, model_cfg, trainable=False).to(device())
    return (lambda ids, att, pos=None: ref_model(input_ids=ids, attention_mask=att, position_ids=pos,
                                                 use_cache=False).logits), ref_model


def precomputed_reference(ctx: StageContext, engine: TrainEngine, items: Sequence, init_model_path: str, *,
                          settings: dict, cache_dir: Path, fallback_dir: Path, pad_id: int, micro_batch_size: int,
                          sharing, mask_dtype, tag: str) -> ReferenceLogps:
    """Reference logprobs of every item's answers from the engine's initial weights (before any step), read from
    the cache when the same model, items, tokenizer and settings were computed before."""
    dist = ctx.dist
    key = cache_key(model_dir=init_model_path, pairs=items, tokenizer=ctx.tokenizer, settings=settings)
    path = cache_file(writable_dir(cache_dir, fallback_dir), key)
    t0 = time.perf_counter()
    engine.eval()
    ref, hit = load_or_compute(path, key, len(items), lambda: compute_reference_logps(
        engine.forward, items, pad_id=pad_id, micro_batch_size=micro_batch_size,
        device=next(engine.module.parameters()).device, rank=dist.rank, world_size=dist.world_size, sharing=sharing,
        mask_dtype=mask_dtype), is_main=dist.is_main)
    engine.train()
    if dist.is_main:
        print(f"[{tag}] reference logprobs {'read from' if hit else 'computed into'} {path} "
              f"({time.perf_counter() - t0:.1f}s)", flush=True)
    return ref

