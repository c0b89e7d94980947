"""Multi-turn tool episodes on top of a rollout engine (VLLMRollout or HFRollout), behind the same
`generate(prompts, spec, seeds) -> list[Group]` as a plain rollout, so GRPO and evaluation take either.

One episode per sample (G per prompt), in turns:

    prompt ids ──► engine continues from the episode's token ids, stops at the format's call marker (```output,
                   </tool_call>), EOS or the episode's remaining budget
               ──► every call of the turn, across the whole batch, runs at once (grpo.runtime.tools)
               ──► each turn's answer (the format's response: an output block, or what the chat template renders
                   for the tool messages and the next generation prompt) is tokenized once and appended as a
                   tool segment ──► next turn

Token ids end to end: the engine is always given the accumulated ids (model tokens exactly as sampled, tool
tokens as tokenized once here), never re-tokenized text, so the trainer sees exactly what was sampled. An
episode ends at EOS, when its budget (spec.max_tokens = rollout.max_tokens: model and tool tokens together) is
spent (truncated; a tool answer that does not fit is cut), or at a call beyond `tools.max_turns`, which is left
unanswered (a turn with several calls, possible only in formats that do not stop at each call, counts all of
them). Sampling seeds derive from (request seed, sample, turn), so a resumed run samples the same episodes.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Sequence

from grpo.config import ToolsConfig
from grpo.data.prompt_stream import request_seed
from grpo.data.tool_format import CodeBlockFormat, ToolCall, Turn
from grpo.runtime.rollout import Completion, Group, SamplingSpec
from grpo.runtime.tools import ToolRunner

TOOL_ERRORS = ("error", "memory", "output_limit", "sandbox_error", "unknown_tool", "bad_call")


@dataclass
class _Episode:
    prompt_index: int
    seed: int
    ids: list[int] = field(default_factory=list)  # everything after the prompt, model and tool tokens
    mask: list[bool] = field(default_factory=list)  # True on model tokens
    logprobs: list[float] = field(default_factory=list)  # sampler logprobs; 0.0 on tool tokens
    cells: list[str] = field(default_factory=list)  # python cells that ran without error (the session)
    turns: list[Turn] = field(default_factory=list)  # (model text, outputs of its calls) per turn, for the format
    calls: list[dict] = field(default_factory=list)
    truncated: bool = False
    done: bool = False

    def add(self, ids: list[int], model: bool, logprobs: list[float] | None = None) -> None:
        self.ids += ids
        self.mask += [model] * len(ids)
        self.logprobs += logprobs if logprobs is not None else [0.0] * len(ids)


class ToolRollout:
    """`fmt`: the call format (grpo.data.tool_format; grpo.runtime.tools.make_format builds the configured one);
    default code_block. Prompts must have been rendered for it (`fmt.tools` in the chat template)."""

    def __init__(self, engine, tokenizer, cfg: ToolsConfig, fmt=None):
        self.engine, self.tokenizer, self.cfg = engine, tokenizer, cfg
        self.fmt = fmt if fmt is not None else CodeBlockFormat()
        self.runner = ToolRunner(cfg)
        self.tool_seconds = 0.0  # wall time spent waiting for tools, cumulative (the stages log differences)
        self.generate_seconds = 0.0  # wall time in the engine, cumulative

    def _encode(self, text: str) -> list[int]:
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def generate(self, prompts: Sequence[str], spec: SamplingSpec, seeds: Sequence[int]) -> list[Group]:
        prompt_ids = [self._encode(p) for p in prompts]
        budget = spec.max_tokens
        episodes = [_Episode(i, request_seed(seed, j)) for i, seed in enumerate(seeds) for j in range(spec.n)]
        active, turn = list(episodes), 0
        while active:
            t0 = time.perf_counter()
            outs = self.engine.generate_tokens([prompt_ids[e.prompt_index] + e.ids for e in active], spec,
                                               [request_seed(e.seed, turn) for e in active], stop=list(self.fmt.stop),
                                               max_tokens=[budget - len(e.ids) for e in active])
            self.generate_seconds += time.perf_counter() - t0
            calling: list[tuple[_Episode, list[ToolCall]]] = []
            for e, out in zip(active, outs):
                e.add(out.token_ids, True, out.logprobs)
                # the turn as the model wrote it, special tokens included: the conversation the format renders
                text = self.tokenizer.decode(out.token_ids, skip_special_tokens=False)
                e.turns.append((text, []))
                calls = self.fmt.find_calls(text)
                if not calls:  # EOS, or the budget ran out mid-turn
                    e.truncated, e.done = out.truncated, True
                elif len(e.ids) >= budget:  # a call with no room left for its answer
                    e.truncated, e.done = True, True
                elif len(e.calls) + len(calls) > self.cfg.max_turns:
                    e.done = True  # a call beyond tools.max_turns: left unanswered, the episode ends
                else:
                    calling.append((e, calls))
            if calling:
                self._answer(calling, budget)
            active = [e for e, _ in calling if not e.done]
            turn += 1
        return self._groups(prompts, prompt_ids, episodes)

    def _answer(self, calling: list[tuple[_Episode, list[ToolCall]]], budget: int) -> None:
        """Run every call of the turn at once; append each episode's answers as one tool segment."""
        flat = [(e, call) for e, calls in calling for call in calls]
        t0 = time.perf_counter()
        # a turn's later calls see the session as it was before the turn (calls of a turn run in parallel)
        results = self.runner.run([c for _, c in flat], [list(e.cells) for e, _ in flat])
        self.tool_seconds += time.perf_counter() - t0
        for (e, call), result in zip(flat, results):
            e.calls.append({"tool": call.tool, "status": result.status, "wall_s": result.wall_s})
            if call.tool == "python" and result.status == "ok":
                e.cells.append(call.body)
            e.turns[-1][1].append(result.output)
        for e, _ in calling:
            answer = self._encode(self.fmt.response(e.turns))
            room = budget - len(e.ids)
            if len(answer) >= room:
                # The answer fills the rest of the budget: what fits is kept, the episode ends truncated.
                e.add(answer[:room], False)
                e.truncated, e.done = True, True
            else:
                e.add(answer, False)

    def _groups(self, prompts: Sequence[str], prompt_ids: list[list[int]], episodes: list[_Episode]) -> list[Group]:
        groups = [Group(prompt=p, prompt_ids=ids) for p, ids in zip(prompts, prompt_ids)]
        texts = self.tokenizer.batch_decode([e.ids for e in episodes], skip_special_tokens=True)
        for e, text in zip(episodes, texts):
            groups[e.prompt_index].completions.append(
                Completion(text=text, token_ids=e.ids, logprobs=e.logprobs, truncated=e.truncated,
                           loss_mask=e.mask, tool_calls=e.calls))
        return groups

    def close(self) -> None:
        self.runner.close()


def generate_timed(sampler, prompts: Sequence[str], spec: SamplingSpec,
                   seeds: Sequence[int]) -> tuple[list[Group], float]:
    """`sampler.generate`, and the seconds of it spent waiting for tools (0 for a plain rollout engine)."""
    before = getattr(sampler, "tool_seconds", 0.0)
    groups = sampler.generate(prompts, spec, seeds)
    return groups, getattr(sampler, "tool_seconds", 0.0) - before


def model_turns(mask: Sequence[bool]) -> int:
    """Model segments in an episode (runs of True in its loss mask)."""
    return sum(1 for i, m in enumerate(mask) if m and (i == 0 or not mask[i - 1]))


def tool_metrics(completions: Sequence[Completion], prefix: str = "tools/") -> dict[str, float]:
    """Per-episode tool statistics of a batch of completions (empty when none is a tool episode)."""
    episodes = [c for c in completions if c.tool_calls is not None]
    if not episodes:
        return {}
    calls = [call for c in episodes for call in c.tool_calls]
    n, k = len(episodes), max(len(calls), 1)
    return {
        f"{prefix}calls_per_episode": len(calls) / n,
        f"{prefix}episodes_with_call": sum(bool(c.tool_calls) for c in episodes) / n,
        f"{prefix}turns": sum(model_turns(c.loss_mask or []) for c in episodes) / n,
        f"{prefix}error_rate": sum(call["status"] in TOOL_ERRORS for call in calls) / k,
        f"{prefix}timeout_rate": sum(call["status"] == "timeout" for call in calls) / k,
        f"{prefix}call_seconds": sum(call["wall_s"] for call in calls) / k,
        f"{prefix}tool_token_share": (sum(len(c.token_ids) - sum(c.loss_mask or []) for c in episodes)
                                      / max(sum(len(c.token_ids) for c in episodes), 1)),
    }
