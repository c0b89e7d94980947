"""What an inference process of `rollout.mode: async` runs instead of the stages (grpo.runtime.inference.serve
with this process's vLLM engine and verifiers), and the scoring of sampled groups that it shares with the
colocated GRPO loop."""
from __future__ import annotations

from grpo.runtime.inference import link, serve
from grpo.runtime.rollout import Group
from grpo.stages.context import StageContext


def score_groups(verifier, groups: list[Group], rows: list[dict],
                 per_verifier: dict[str, list[float]]) -> list[list[float]]:
    """Rewards per group; each verifier's own rewards are appended to `per_verifier`."""
    texts = [c.text for g in groups for c in g.completions]
    flat_rows = [row for g, row in zip(groups, rows) for _ in g.completions]
    scores = verifier.score_batch(texts, flat_rows)
    for s in scores:
        for name, r in (s.info.get("rewards") or {}).items():
            per_verifier.setdefault(name, []).append(float(r))
    G = len(groups[0].completions) if groups else 0
    return [[scores[i * G + j].reward for j in range(G)] for i in range(len(groups))]


def serve_rollouts(ctx: StageContext) -> None:
    """Serve the training processes until they stop: generation and scoring jobs, weight versions."""

    def score(groups: list[Group], rows: list[dict]):
        per_verifier: dict[str, list[float]] = {}
        return score_groups(ctx.verifier, groups, rows, per_verifier), per_verifier

    serve(link(), ctx.rollout, score, sampler=ctx.sampler)  # with tools, the engine runs the episodes
