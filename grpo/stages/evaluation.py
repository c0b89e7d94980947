"""Evaluation through the same rollout engine and verifiers as training: greedy pass@1, and with
k samples pass@k (any of k correct) and maj@k (the most frequent extracted answer is correct)."""
from __future__ import annotations

import time
from collections import Counter
from typing import Sequence

from grpo.data.rows import Example
from grpo.data.prompt_stream import request_seed
from grpo.runtime.distributed import all_gather_objects
from grpo.runtime.rollout import SamplingSpec
from grpo.stages.context import StageContext

CORRECT = 1.0 - 1e-6  # a reward at least this counts as a correct answer


def evaluate(rollout, verifier, examples: Sequence[Example], *, max_tokens: int, k: int = 0,
             temperature: float = 1.0, seed: int = 0, rank: int = 0, world_size: int = 1,
             batch_size: int = 256) -> dict:
    """Each rank scores its shard; the result holds the totals over all ranks."""
    t0 = time.perf_counter()
    mine = list(range(rank, len(examples), world_size))
    counts = Counter()
    for start in range(0, len(mine), batch_size):
        idx = mine[start:start + batch_size]
        batch = [examples[i] for i in idx]
        prompts = [e.prompt for e in batch]
        greedy = rollout.generate(prompts, SamplingSpec(n=1, temperature=0.0, max_tokens=max_tokens),
                                  [request_seed(seed, i) for i in idx])
        scores = verifier.score_batch([g.completions[0].text for g in greedy], [e.row for e in batch])
        counts["n"] += len(batch)
        counts["greedy_correct"] += sum(s.reward >= CORRECT for s in scores)
        counts["greedy_reward"] += sum(s.reward for s in scores)
        counts["greedy_tokens"] += sum(len(g.completions[0].token_ids) for g in greedy)
        calls = [g.completions[0].tool_calls for g in greedy if g.completions[0].tool_calls is not None]
        if calls:  # multi-turn tool episodes
            counts["tool_episodes"] += len(calls)
            counts["tool_calls"] += sum(len(c) for c in calls)
            counts["tool_used"] += sum(bool(c) for c in calls)
        if k > 1:
            sampled = rollout.generate(prompts, SamplingSpec(n=k, temperature=temperature, max_tokens=max_tokens),
                                       [request_seed(seed, 7919, i) for i in idx])
            texts = [c.text for g in sampled for c in g.completions]
            rows = [e.row for e in batch for _ in range(k)]
            flat = verifier.score_batch(texts, rows)
            for j in range(len(batch)):
                group = flat[j * k:(j + 1) * k]
                correct = [s.reward >= CORRECT for s in group]
                counts["pass_k"] += any(correct)
                counts["mean_k"] += sum(correct) / k
                keys = [s.extracted_answer() for s in group]
                votes = Counter(key for key in keys if key is not None)
                if votes:
                    top = votes.most_common(1)[0][0]
                    counts["maj_k"] += correct[keys.index(top)]
    total = Counter()
    for c in all_gather_objects(dict(counts)):
        total.update(c)
    n = max(total["n"], 1)
    out = {"n": total["n"], "pass@1": total["greedy_correct"] / n, "greedy_reward": total["greedy_reward"] / n,
           "greedy_length": total["greedy_tokens"] / n, "eval_seconds": time.perf_counter() - t0}
    if total["tool_episodes"]:
        out.update({"tool_calls_per_episode": total["tool_calls"] / total["tool_episodes"],
                    "tool_use_share": total["tool_used"] / total["tool_episodes"]})
    if k > 1:
        out.update({f"pass@{k}": total["pass_k"] / n, f"maj@{k}": total["maj_k"] / n,
                    f"mean@{k}": total["mean_k"] / n})
    return out


def run_eval(ctx: StageContext) -> dict:
    cfg = ctx.cfg
    examples = ctx.examples("eval")[: cfg.eval.num_problems]
    # ctx.sampler: with tools enabled, the same multi-turn episodes as training
    return evaluate(ctx.sampler, ctx.verifier, examples, max_tokens=cfg.eval.max_tokens or cfg.rollout.max_tokens,
                    k=cfg.eval.k, temperature=cfg.eval.temperature, seed=cfg.seed, rank=ctx.dist.rank,
                    world_size=ctx.dist.world_size)
