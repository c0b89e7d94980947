"""What DPO's verifier-built pairs and KTO's verifier-labelled answers share: both are sampled from the policy the
stage starts with, on every rank's share of the prompts, gathered in prompt order, saved in the run directory
under a key of everything they depend on, and reused when the stage runs again with the same key."""
from __future__ import annotations

import hashlib
import json
from dataclasses import asdict
from pathlib import Path
from typing import Callable

from grpo.metrics import progress
from grpo.runtime.distributed import all_gather_objects
from grpo.runtime.models import load_weights
from grpo.runtime.reference_cache import model_fingerprint
from grpo.runtime.rollout import SamplingSpec
from grpo.stages.context import StageContext


def sampled_data_key(ctx: StageContext, init_model_path: str, section: str, fields: tuple[str, ...]) -> str:
    """The sampling model, the prompts, the sampling settings, the verifiers and the stage's own `fields` of
    `cfg.<section>`: saved data is reused only under the same key."""
    cfg = ctx.cfg
    own = getattr(cfg, section)
    parts = {"model": model_fingerprint(init_model_path), "seed": cfg.seed, "world": ctx.dist.world_size,
             "data": asdict(cfg.data), "verifiers": [asdict(v) for v in cfg.verifiers],
             "rollout": {f: getattr(cfg.rollout, f) for f in ("temperature", "top_p", "top_k", "max_tokens")},
             section: {f: getattr(own, f) for f in fields}}
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:20]


def reuse_saved(ctx: StageContext, data_path: Path, report_path: Path, key: str, load: Callable[[Path], list],
                tag: str, what: str):
    """The saved items when `data_path` was built under `key` (and resume allows it), else None."""
    if ctx.cfg.resume == "never" or not (data_path.exists() and report_path.exists()):
        return None
    say = print if ctx.dist.is_main else (lambda *a, **k: None)
    if json.loads(report_path.read_text()).get("key") == key:
        items = load(data_path)
        say(f"[{tag}] reusing {len(items)} {what} from {data_path}", flush=True)
        return items
    say(f"[{tag}] {data_path} was built from another model or other settings: sampling again", flush=True)
    return None


def sample_on_every_rank(ctx: StageContext, init_model_path: str, num_prompts: int, samples_per_prompt: int,
                         desc: str, build: Callable) -> tuple[list, list[dict]]:
    """Each rank samples `samples_per_prompt` answers for its share of the first `num_prompts` RL prompts from the
    policy the stage starts with and lets `build(rollout, verifier, examples, spec=, seed=, progress_bar=)` turn
    them into items (with a `row`: the index into the rank's share) and a report; returns every rank's items in
    prompt order (rows renumbered into the RL prompts; stable, so each prompt's sample order is kept) and every
    rank's report as a dict."""
    cfg, dist = ctx.cfg, ctx.dist
    mine = ctx.examples("rl")[:num_prompts][dist.rank::dist.world_size]
    ctx.rollout.push_weights(load_weights(init_model_path))  # sample from the policy the stage starts with
    spec = SamplingSpec.from_config(cfg.rollout, n=samples_per_prompt)
    bar = progress(total=len(mine), desc=desc, enabled=ctx.show_progress)
    local, report = build(ctx.rollout, ctx.verifier, mine, spec=spec, seed=cfg.seed + 7 * dist.rank, progress_bar=bar)
    bar.close()
    for item in local:  # row: index into this rank's share -> index into the rl prompts
        item.row = item.row * dist.world_size + dist.rank
    gathered = all_gather_objects((local, report.as_dict()))
    items = sorted((item for part, _ in gathered for item in part), key=lambda item: item.row)
    return items, [r for _, r in gathered]
