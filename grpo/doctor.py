"""`grpo doctor CONFIG`: a minute of looking before a run that would learn nothing.

Loads the configured model, data and verifiers through the same code the run uses (`pipeline.setup`: one
tokenizer, one vLLM engine, the composite verifier) and reports checks, each PASS / WARN / FAIL with its
figures and what to change:

- data: rows read, prompts over data.max_prompt_tokens, three prompts exactly as the model sees them, the
  answer column as the math verifier reads it, whether SFT demonstrations end with the EOS the sampler stops on;
- verifiers: reference answers (and SFT demonstrations) scored as completions must get full reward;
- model: greedy and sampled groups on a few prompts: EOS rate, truncated share, mean length (stopping); mean
  reward and groups whose rewards are all equal (rewards);
- sampler vs trainer: vLLM's logprobs of the sampled tokens against the training forward pass (same dtype,
  temperature and prompt sharing as `grpo.stages.grpo`), again after one zero-learning-rate step and push;
- memory: parameters, gradients, optimizer state, activations, vLLM weights and KV cache per device.

The checks are small functions over plain figures (unit-tested on hand-made inputs); `run_doctor` gathers the
figures. `doctor.json` goes into the run directory; the exit status is 1 when any check FAILs.
"""
from __future__ import annotations

import dataclasses
import json
import random
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from grpo.config import RunConfig

PASS, WARN, FAIL = "PASS", "WARN", "FAIL"
# Built-in verifiers that read the answer column (reference answers are judged by these) and that judge
# correctness (SFT demonstrations are judged by these); others (format, plug-ins) are reported, not judged.
ANSWER_VERIFIERS = ("math",)
CORRECTNESS_VERIFIERS = ("math", "code")
EPS = 1e-6
GIB = 1024**3
DEFAULT_GPU_GB = 80.0
SHOWN_EXAMPLES = 5
LOGPROB_CAUSES = ("dtype mismatch (model.dtype / engine.precision vs the engine's dtype), temperature applied "
                  "differently (vLLM's processed logprobs vs the trainer's logits / T), top_p / top_k truncation "
                  "(the trainer does not apply it), stale weights (the push does not reach the engine), "
                  "tokenizer or chat template differences between engine and trainer")


class DoctorFailed(RuntimeError):
    """A doctor check failed before `grpo run` (doctor: true) started training; the message is the summary."""


@dataclass
class CheckResult:
    name: str
    status: str  # PASS | WARN | FAIL
    summary: str  # the figures in one line
    figures: dict = field(default_factory=dict)
    advice: str = ""  # what to change (empty on PASS)
    details: list[str] = field(default_factory=list)  # shown under the line: prompts, failing examples


@dataclass
class Report:
    source: str
    model: str
    results: list[CheckResult]
    wall_s: float = 0.0

    @property
    def failed(self) -> bool:
        return any(r.status == FAIL for r in self.results)

    def count(self, status: str) -> int:
        return sum(r.status == status for r in self.results)

    @property
    def summary_line(self) -> str:
        fails = [r.name for r in self.results if r.status == FAIL]
        head = f"{len(fails)} FAIL" + (f" ({', '.join(fails)})" if fails else "")
        return f"doctor: {head}, {self.count(WARN)} WARN, {self.count(PASS)} PASS in {self.wall_s:.0f} s"

    def to_json(self) -> dict:
        return {"source": self.source, "model": self.model, "wall_s": round(self.wall_s, 1),
                "status": FAIL if self.failed else (WARN if self.count(WARN) else PASS),
                "summary": self.summary_line, "checks": [dataclasses.asdict(r) for r in self.results]}


def _share(n: int, total: int) -> float:
    return n / total if total else 0.0


def _pct(x: float) -> str:
    return f"{100 * x:.0f}%" if x == 0 or x >= 0.01 else f"{100 * x:.2f}%"


def _clip(text: Any, n: int = 160) -> str:
    s = repr(text) if isinstance(text, str) else repr(str(text))
    return s if len(s) <= n else s[: n - 5] + "...'"


# ---------------------------------------------------------------------------------------------
# The checks: plain figures in, one CheckResult out


def check_data(rows: dict[str, int], prompt_tokens: dict[str, Sequence[int]], max_prompt_tokens: int,
               prompts: Sequence[str] = (), answers: Sequence[tuple[Any, str]] = (),
               demo_ends_with_eos: bool | None = None) -> CheckResult:
    """`rows`: rows per split; `prompt_tokens`: tokens of every prompt per split (chat template applied);
    `prompts`: a few prompts as the model sees them; `answers`: (raw answer, how the verifier reads it);
    `demo_ends_with_eos`: whether a tokenized SFT demonstration ends with a token the sampler stops on."""
    over = {split: [i for i, n in enumerate(counts) if n > max_prompt_tokens]
            for split, counts in prompt_tokens.items()}
    n_over, n_all = sum(map(len, over.values())), sum(map(len, prompt_tokens.values()))
    longest = max((max(c) for c in prompt_tokens.values() if len(c)), default=0)
    figures = {"rows": dict(rows), "prompts_checked": n_all, "prompts_over_limit": n_over,
               "max_prompt_tokens": max_prompt_tokens, "longest_prompt_tokens": longest,
               "demonstrations_end_with_eos": demo_ends_with_eos}
    summary = (", ".join(f"{n} {split} rows" for split, n in rows.items())
               + f"; longest prompt {longest} tokens (data.max_prompt_tokens={max_prompt_tokens}), "
               + (f"{n_over} over it ({_pct(_share(n_over, n_all))})" if n_over else "none over it"))
    details = [f"prompt {k + 1} as the model sees it: {_clip(p, 300)}" for k, p in enumerate(prompts)]
    details += [f"answer {k + 1}: {_clip(raw, 60)} -> verifier reads {reading}"
                for k, (raw, reading) in enumerate(answers)]
    status, advice = PASS, ""
    if demo_ends_with_eos is False:
        status = WARN
        advice = ("SFT demonstrations do not end with a token the sampler stops on (the tokenizer's EOS / "
                  "generation_config eos_token_id): SFT will not teach the model to stop")
    if n_over:
        split, rows_over = next((s, r) for s, r in over.items() if r)
        status = FAIL
        details += [f"{split} split row {i}: {prompt_tokens[split][i]} tokens" for i in rows_over[:SHOWN_EXAMPLES]]
        advice = (f"{n_over} of {n_all} prompts are longer than data.max_prompt_tokens={max_prompt_tokens} (the run "
                  f"stops at the first, {split} split row {rows_over[0]}): raise data.max_prompt_tokens, shorten the "
                  "template / system prompt, or drop those rows") + ("; " + advice if advice else "")
    return CheckResult("data", status, summary, figures, advice, details)


@dataclass
class Scored:
    """One text scored as a completion: a reference answer or an SFT demonstration."""

    row: int
    text: str
    reward: float  # of the judged verifiers, summed
    full: float  # the reward a right answer gets from them
    reason: str = ""  # what the verifier said when it is not full
    split: str = "RL"


def check_references(refs: Sequence[Scored], demos: Sequence[Scored], judged: Sequence[str],
                     max_bad_share: float) -> CheckResult:
    """Reference answers (and demonstrations) scored as completions: every one must get full reward."""
    def bad(items):
        return [s for s in items if s.reward < s.full - EPS]

    bad_refs, bad_demos = bad(refs), bad(demos)
    share_refs, share_demos = _share(len(bad_refs), len(refs)), _share(len(bad_demos), len(demos))
    figures = {"judged_by": list(judged), "references": len(refs), "references_below_full": len(bad_refs),
               "demonstrations": len(demos), "demonstrations_below_full": len(bad_demos)}
    if not judged:
        return CheckResult("verifiers", PASS, "no configured verifier reads the answer column or judges "
                           "demonstrations (math, code): nothing to score", figures)
    parts = [f"{len(refs) - len(bad_refs)}/{len(refs)} reference answers"] if refs else []
    if demos:
        parts.append(f"{len(demos) - len(bad_demos)}/{len(demos)} SFT demonstrations")
    summary = (" and ".join(parts) or "nothing") + f" score full reward as completions ({', '.join(judged)})"
    details = [f"{s.split} split row {s.row}, reference answer {_clip(s.text, 80)} -> reward {s.reward:g} of {s.full:g}"
               + (f" ({s.reason})" if s.reason else "") for s in bad_refs[:SHOWN_EXAMPLES]]
    details += [f"{s.split} split row {s.row}, demonstration {_clip(s.text, 80)} -> reward {s.reward:g} of {s.full:g}"
                + (f" ({s.reason})" if s.reason else "") for s in bad_demos[:SHOWN_EXAMPLES]]
    worst = max(share_refs, share_demos)
    if not bad_refs and not bad_demos:
        return CheckResult("verifiers", PASS, summary, figures)
    advice = []
    if bad_refs:
        advice.append(f"{_pct(share_refs)} of reference answers do not score full reward even as the answer itself: "
                      "every completion of those prompts scores 0 whatever it says. Check data.answer_field, "
                      "data.answer_regex (e.g. '####\\s*(.+)$' for GSM8K) and the verifier's options (extraction)")
    if bad_demos:
        advice.append(f"{_pct(share_demos)} of SFT demonstrations do not score full reward: SFT teaches answers "
                      "the reward calls wrong (check data.solution_field and the verifier's extraction)")
    status = FAIL if worst > max_bad_share else WARN
    return CheckResult("verifiers", status, summary, figures, "; ".join(advice), details)


@dataclass
class Generated:
    tokens: int
    truncated: bool  # stopped by rollout.max_tokens, not by EOS
    reward: float


def _advisory(status: str, advice: str, before_sft: bool, what: str) -> tuple[str, str]:
    """Before the configured SFT stage the model's behaviour is expected to be poor: a FAIL becomes a WARN."""
    if before_sft and status == FAIL:
        return WARN, (f"{advice}. Expected before training: this is the model before the configured sft stage; "
                      f"{what}")
    return status, advice


def check_stopping(greedy: Sequence[Generated], sampled: Sequence[Generated], max_tokens: int,
                   max_truncated_share: float, before_sft: bool = False, after_sft_hint: str = "") -> CheckResult:
    every = list(greedy) + list(sampled)
    truncated = sum(g.truncated for g in every)
    share = _share(truncated, len(every))
    figures = {"completions": len(every), "eos_rate": round(1 - share, 4), "truncated_share": round(share, 4),
               "greedy_truncated_share": round(_share(sum(g.truncated for g in greedy), len(greedy)), 4),
               "mean_length": round(sum(g.tokens for g in every) / max(len(every), 1), 2),
               "max_tokens": max_tokens}
    summary = (f"EOS rate {_pct(1 - share)}, {_pct(share)} truncated at rollout.max_tokens={max_tokens}, mean "
               f"length {figures['mean_length']:.1f} tokens ({len(greedy)} greedy, {len(sampled)} sampled)")
    status, advice = PASS, ""
    if share > max_truncated_share:
        status = FAIL
        head = ("the model never emitted EOS" if truncated == len(every)
                else f"{_pct(share)} of completions ran to the limit")
        advice = (f"{head}: answers are cut at rollout.max_tokens={max_tokens} and score as unfinished. Check the "
                  "EOS id (generation_config.json eos_token_id, the tokenizer's eos_token), that SFT "
                  "demonstrations end with it, or raise rollout.max_tokens")
    elif share > 0.1:
        status = WARN
        advice = (f"{_pct(share)} of completions are truncated: consider a larger rollout.max_tokens or "
                  "grpo.overlong_buffer")
    status, advice = _advisory(status, advice, before_sft, after_sft_hint)
    return CheckResult("model: stopping", status, summary, figures, advice)


def check_rewards(greedy: Sequence[Generated], groups: Sequence[Sequence[Generated]], full_reward: float,
                  max_zero_variance_share: float, before_sft: bool = False, after_sft_hint: str = "") -> CheckResult:
    flat = [g.reward for grp in groups for g in grp]
    flat_groups = [grp for grp in groups if grp and max(g.reward for g in grp) - min(g.reward for g in grp) <= EPS]
    all_right = sum(grp[0].reward >= full_reward - EPS for grp in flat_groups)
    all_wrong = len(flat_groups) - all_right
    n = len(groups)
    figures = {"greedy_mean_reward": round(sum(g.reward for g in greedy) / max(len(greedy), 1), 4),
               "sampled_mean_reward": round(sum(flat) / max(len(flat), 1), 4), "groups": n,
               "zero_variance_share": round(_share(len(flat_groups), n), 4),
               "all_wrong_share": round(_share(all_wrong, n), 4), "all_right_share": round(_share(all_right, n), 4)}
    summary = (f"mean reward {figures['greedy_mean_reward']:.3f} greedy, {figures['sampled_mean_reward']:.3f} "
               f"sampled; {len(flat_groups)}/{n} groups with equal rewards ({all_wrong} all wrong, "
               f"{all_right} all right)")
    status, advice = PASS, ""
    if n and all_wrong == n:
        status, advice = FAIL, "nothing to learn; SFT first or easier data (every sampled answer is wrong)"
    elif n and all_right == n:
        status, advice = FAIL, "too easy (every sampled answer is right): harder data, or a higher temperature"
    elif n and len(flat_groups) == n:
        status, advice = FAIL, "every group has equal rewards: no advantage signal (check the verifiers' weights)"
    elif _share(len(flat_groups), n) > max_zero_variance_share:
        status = WARN
        advice = (f"{_pct(_share(len(flat_groups), n))} of groups carry no signal ({all_wrong} all wrong: easier "
                  f"data or SFT; {all_right} all right: harder data); grpo.dynamic_sampling drops them, at a cost")
    status, advice = _advisory(status, advice, before_sft, after_sft_hint)
    return CheckResult("model: rewards", status, summary, figures, advice)


@dataclass
class Gap:
    """|sampler - trainer| logprob over the sampled tokens."""

    max: float
    mean: float
    tokens: int


def default_logprob_tolerance(precision: str, model_dtype: str) -> float:
    return 1e-3 if precision == "fp32" and model_dtype == "float32" else 5e-2


def check_logprobs(before: Gap | None, after: Gap | None, tolerance: float, notes: Sequence[str] = ()) -> CheckResult:
    """FAIL when the mean per-token difference exceeds `tolerance` or the largest exceeds 20x it."""
    figures = {"tolerance_mean": tolerance, "tolerance_max": 20 * tolerance,
               "before": dataclasses.asdict(before) if before else None,
               "after_zero_lr_push": dataclasses.asdict(after) if after else None}
    if before is None:
        return CheckResult("sampler vs trainer", WARN, "not measured", figures, "; ".join(notes))

    def bad(g: Gap | None) -> bool:
        return g is not None and (g.mean > tolerance or g.max > 20 * tolerance)

    def words(g: Gap) -> str:
        return f"max {g.max:.2e}, mean {g.mean:.2e} over {g.tokens} tokens"

    summary = f"|logprob diff| {words(before)}" + (f"; after a zero-lr step and push: {words(after)}" if after else "")
    summary += f" (tolerance: mean {tolerance:g}, max {20 * tolerance:g})"
    if bad(before):
        advice = ("vLLM's logprobs of its own samples differ from the trainer's: the importance ratios, clipping and "
                  f"KL are computed against the wrong policy. Usual causes: {LOGPROB_CAUSES}")
        return CheckResult("sampler vs trainer", FAIL, summary, figures, "; ".join([advice, *notes]))
    if bad(after):
        advice = ("the logprobs agree before the weight push but not after a push of unchanged weights: the push "
                  "does not deliver the trainer's weights (names, tied embeddings, ZeRO-3 gathering, a stale "
                  "prefix cache)")
        return CheckResult("sampler vs trainer", FAIL, summary, figures, "; ".join([advice, *notes]))
    return CheckResult("sampler vs trainer", WARN if notes else PASS, summary, figures, "; ".join(notes))


@dataclass
class ModelShape:
    params: int
    layers: int
    hidden: int
    kv_heads: int
    head_dim: int
    vocab: int

    @classmethod
    def of(cls, model) -> "ModelShape":
        c = model.config
        heads = c.num_attention_heads
        head_dim = getattr(c, "head_dim", None) or c.hidden_size // heads
        return cls(params=sum(p.numel() for p in model.parameters()), layers=c.num_hidden_layers,
                   hidden=c.hidden_size, kv_heads=getattr(c, "num_key_value_heads", None) or heads,
                   head_dim=head_dim, vocab=c.vocab_size)


DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}


def memory_budget(shape: ModelShape, cfg: RunConfig, num_gpus: int, gpu_memory_gb: float) -> dict[str, float]:
    """GiB per device during GRPO. Weights/grads/optimizer after ZeRO partitioning over `num_gpus` ranks
    (mixed precision: 16-bit weights and grads, fp32 master weights and two AdamW moments = 12 bytes per
    parameter); activations of one micro-batch (about 34 x hidden bytes per token and layer in 16 bits, the
    layer inputs only with gradient checkpointing, plus the logits and their gradient); vLLM's weights and
    KV cache (its whole share, gpu_memory_utilization, unless rollout.kv_cache_gb fixes the cache)."""
    e, r, g, d = cfg.engine, cfg.rollout, cfg.grpo, cfg.data
    P, N = shape.params, num_gpus
    half = e.precision == "bf16"
    weight_b, grad_b = (2, 2) if half else (4, 4)
    optim_b = 12 if half else 8  # fp32 master + m + v, or m + v next to fp32 weights
    params = P * weight_b / (N if e.zero_stage == 3 else 1)
    grads = P * grad_b / (N if e.zero_stage >= 2 else 1)
    optim = 0.0 if e.offload_optimizer else P * optim_b / (N if e.zero_stage >= 1 else 1)
    act_b = 2 if half or cfg.model.dtype != "float32" else 4
    seq = d.max_prompt_tokens + r.max_tokens
    tokens = min(g.micro_batch_size, g.prompts_per_step * g.group_size) * seq
    per_token_layer = 2 * shape.hidden * act_b if cfg.model.gradient_checkpointing else 17 * shape.hidden * act_b
    activations = tokens * (shape.layers * per_token_layer + 2 * shape.vocab * act_b)
    reference = P * DTYPE_BYTES[cfg.model.dtype] if g.beta > 0 else 0.0
    vllm_weights = P * DTYPE_BYTES[cfg.model.dtype] / r.tensor_parallel_size
    kv_per_token = (2 * shape.layers * shape.kv_heads * shape.head_dim * DTYPE_BYTES[cfg.model.dtype]
                    / r.tensor_parallel_size)
    # One step's rollout at full concurrency: each group's prompt once (prefix caching), G completions after it.
    kv_needed = g.prompts_per_step * (d.max_prompt_tokens + g.group_size * r.max_tokens) * kv_per_token
    if r.kv_cache_gb:
        kv_cache = r.kv_cache_gb * GIB
        vllm = vllm_weights + kv_cache
    else:
        vllm = r.gpu_memory_utilization * gpu_memory_gb * GIB
        kv_cache = max(vllm - vllm_weights, 0.0)
    training = params + grads + optim + reference
    # Sleep mode frees the KV cache and offloads vLLM's weights during the update.
    peak = training + (max(activations, vllm) if r.enable_sleep_mode else activations + vllm)
    out = {"params": params, "grads": grads, "optimizer": optim, "reference": reference, "activations": activations,
           "vllm_weights": vllm_weights, "kv_cache": kv_cache, "kv_needed_one_step": kv_needed, "vllm": vllm,
           "peak": peak}
    return {k: v / GIB for k, v in out.items()}


def check_memory(shape: ModelShape, cfg: RunConfig, num_gpus: int, gpu_memory_gb: float, measured: bool) -> CheckResult:
    b = memory_budget(shape, cfg, num_gpus, gpu_memory_gb)
    where = (f"{num_gpus} visible GPU(s) of {gpu_memory_gb:.0f} GiB" if measured else
             f"an estimate for {num_gpus} GPU(s) of {gpu_memory_gb:.0f} GiB (no GPU here; "
             "doctor_options.num_gpus / gpu_memory_gb)")
    e = cfg.engine
    summary = (f"{shape.params / 1e6:.2f}M parameters, ZeRO-{e.zero_stage}, {e.precision}: per device "
               f"weights {b['params']:.2f} + grads {b['grads']:.2f} + optimizer {b['optimizer']:.2f} + activations "
               f"{b['activations']:.2f} + vLLM {b['vllm']:.2f} (KV cache {b['kv_cache']:.2f}) "
               + (f"+ reference {b['reference']:.2f} " if b["reference"] else "")
               + f"= {b['peak']:.2f} GiB peak, {where}")
    figures = {k: round(v, 4) for k, v in b.items()}
    figures.update({"num_gpus": num_gpus, "gpu_memory_gb": gpu_memory_gb, "measured_devices": measured,
                    "estimate": True})
    status, advice = PASS, ""
    if b["peak"] > gpu_memory_gb:
        status = FAIL
        advice = (f"the estimate ({b['peak']:.1f} GiB) exceeds {gpu_memory_gb:.0f} GiB per device: a higher "
                  "engine.zero_stage, engine.offload_optimizer, model.gradient_checkpointing, a smaller "
                  "grpo.micro_batch_size, rollout.enable_sleep_mode or a smaller rollout.kv_cache_gb / "
                  "gpu_memory_utilization")
    elif b["peak"] > 0.9 * gpu_memory_gb:
        status, advice = WARN, f"the estimate is {_pct(b['peak'] / gpu_memory_gb)} of the device: little headroom"
    if b["kv_cache"] < b["kv_needed_one_step"]:
        note = (f"vLLM's KV cache ({b['kv_cache']:.2f} GiB) holds less than one step's rollout at full concurrency "
                f"({b['kv_needed_one_step']:.2f} GiB): generation runs in waves (slower, not an error)")
        status = WARN if status == PASS else status
        advice = "; ".join(x for x in (advice, note) if x)
    return CheckResult("memory", status, summary, figures, advice)


# ---------------------------------------------------------------------------------------------
# Gathering the figures


def math_reading(raw: Any) -> str:
    """How the math verifier reads a reference answer: its kind and canonical text, or 'unparsable'."""
    try:
        from verifiers.math.normalize import normalize_answer
        from verifiers.math.parse import parse_answer
        from verifiers.math.verifier import is_unparsable, reference_text

        parsed = parse_answer(normalize_answer(reference_text(raw)))
    except Exception as exc:  # noqa: BLE001 - a reference the verifier raises on is what this shows
        return f"an error ({type(exc).__name__}: {exc})"
    if is_unparsable(parsed):
        return "nothing it can parse"
    kind = type(parsed).__name__.lower()
    if kind == "text" and getattr(parsed, "words", False):
        kind = "words (not maths)"
    return f"{kind} {_clip(getattr(parsed, 'text', parsed), 60)}"


def _labels(verifier, names: Sequence[str]) -> list[str]:
    return [e.label for e in getattr(verifier, "entries", []) if e.name in names]


def _full(verifier, labels: Sequence[str] | None = None) -> float:
    """The reward a right answer gets from the verifiers `labels` (their correct_reward, default 1), unweighted
    as in the per-verifier breakdown; with no labels, the composite's weighted total."""
    pairs = zip(getattr(verifier, "entries", []), getattr(verifier, "verifiers", []))
    return sum(float(getattr(v, "correct_reward", 1.0)) * (1.0 if labels else e.weight) for e, v in pairs
               if labels is None or e.label in labels)


def _reason(score, labels: Sequence[str]) -> str:
    details = score.info.get("details") or {}
    errors = score.info.get("errors") or {}
    parts = []
    for label in labels:
        info = details.get(label) or {}
        why = errors.get(label) or info.get("reason") or info.get("error")
        if why:
            extracted = info.get("extracted")
            parts.append(f"{label}: {why}" + (f", read {_clip(extracted, 40)}" if extracted is not None else ""))
    return "; ".join(parts)


def score_as_completions(verifier, texts: Sequence[str], rows: Sequence[dict], row_ids: Sequence[int],
                         labels: Sequence[str], box_if_unread: bool = False, split: str = "RL") -> list[Scored]:
    """Each text scored as a completion of its row; only `labels`' rewards count. With `box_if_unread`, a text
    the verifier found no answer in (e.g. extraction: boxed) is scored again as \\boxed{text}."""
    if not texts or not labels:
        return []
    full = _full(verifier, labels)
    scores = verifier.score_batch(list(texts), list(rows))

    def scored(row: int, text: str, score) -> Scored:
        reward = sum(float((score.info.get("rewards") or {}).get(label, 0.0)) for label in labels)
        return Scored(row, text, reward, full, _reason(score, labels) if reward < full - EPS else "", split)

    out = [scored(i, t, s) for i, t, s in zip(row_ids, texts, scores)]
    retry = [k for k, s in enumerate(out) if box_if_unread and "no_answer" in s.reason]
    if retry:
        again = verifier.score_batch([f"\\boxed{{{out[k].text}}}" for k in retry], [rows[k] for k in retry])
        for k, s in zip(retry, again):
            boxed = scored(out[k].row, out[k].text, s)
            out[k] = boxed if boxed.reward > out[k].reward else out[k]
    return out


def scored_groups(verifier, groups, examples) -> list[list[Generated]]:
    """Rollout groups -> length, truncation and reward of every completion."""
    texts = [c.text for g in groups for c in g.completions]
    rows = [e.row for g, e in zip(groups, examples) for _ in g.completions]
    scores = iter(verifier.score_batch(texts, rows) if texts else [])
    return [[Generated(len(c.token_ids), c.truncated, next(scores).reward) for c in g.completions] for g in groups]


def _stop_ids(tokenizer, model_path: str) -> set[int]:
    ids = {tokenizer.eos_token_id} if tokenizer.eos_token_id is not None else set()
    try:
        from transformers import GenerationConfig

        eos = GenerationConfig.from_pretrained(model_path).eos_token_id
        ids |= set(eos if isinstance(eos, list) else [eos]) - {None}
    except Exception:  # noqa: BLE001 - no generation_config.json: the tokenizer's EOS is what vLLM stops on
        pass
    return ids


def _demo_ends_with_eos(ctx, demo_rows: Sequence[dict], model_path: str) -> bool | None:
    if not demo_rows:
        return None
    from grpo.data.preferences import encode_prompt_answers

    d = ctx.cfg.data
    row = demo_rows[0]
    _, (ids,) = encode_prompt_answers(str(row[d.prompt_field]), [str(row[d.solution_field])], d, ctx.tokenizer)
    stops = _stop_ids(ctx.tokenizer, model_path)
    return any(t in stops for t in ids[-3:])  # the end-of-turn token may be followed by a newline


def _sample(n_total: int, k: int, seed: int) -> list[int]:
    return sorted(random.Random(seed).sample(range(n_total), min(k, n_total)))


def gather_logprob_gap(samples, forward, pad_id: int, temperature: float, sharing, mask_dtype, chunk: int) -> Gap:
    """The trainer's logprobs of `samples` (grpo.stages.grpo's micro-batch tensors and sequence_logprobs, as in
    training) against the sampler logprobs they carry."""
    import torch

    from grpo.runtime.distributed import device, to_device
    from grpo.stages.grpo import micro_batch_tensors, sequence_logprobs

    diffs = []
    with torch.no_grad():
        for start in range(0, len(samples), chunk):
            t = to_device(micro_batch_tensors(samples[start:start + chunk], pad_id, sharing), device())
            lp, _ = sequence_logprobs(forward, t, temperature, mask_dtype=mask_dtype)
            diffs.append((lp.float() - t["sampler_logprobs"]).abs()[t["mask"]].cpu())
    d = torch.cat(diffs) if diffs else torch.zeros(0)
    return Gap(max=float(d.max()) if len(d) else 0.0, mean=float(d.mean()) if len(d) else 0.0, tokens=len(d))


def _samples(groups) -> list:
    from grpo.stages.grpo import Sample

    return [Sample(g.prompt_ids, c.token_ids, c.logprobs, c.truncated, 0.0) for g in groups for c in g.completions
            if c.token_ids and c.logprobs is not None]


def sampler_vs_trainer(ctx, model_path: str, groups, regenerate) -> tuple[CheckResult, ModelShape]:
    """Logprob agreement on `groups` (sampled at the configured temperature), then one optimizer step with lr 0,
    a push of the engine's weights and `regenerate()` (the same requests again) compared once more."""
    import gc

    import torch

    from grpo.runtime.attention import attention_cost_ratio, uses_varlen_attention
    from grpo.runtime.engine import TrainEngine
    from grpo.runtime.models import load_model
    from grpo.algorithms.packing import PromptSharing
    from grpo.runtime.distributed import device, to_device
    from grpo.stages.grpo import micro_batch_tensors, sequence_logprobs

    cfg, g = ctx.cfg, ctx.cfg.grpo
    temp = cfg.rollout.temperature
    model = load_model(model_path, cfg.model)
    shape = ModelShape.of(model)
    tolerance = cfg.doctor_options.logprob_tolerance or default_logprob_tolerance(cfg.engine.precision, cfg.model.dtype)
    notes = []
    if cfg.rollout.top_p < 1 or cfg.rollout.top_k > 0:
        notes.append("rollout.top_p / top_k truncate the sampler's distribution, which the trainer does not: "
                     "sampler logprobs are not the trainer's policy (TIS/ratios are off)")
    if temp == 0:
        return check_logprobs(None, None, tolerance, ["rollout.temperature is 0: greedy rollouts give GRPO no "
                                                      "group variance and no sampler logprobs to compare"]), shape
    sharing = (PromptSharing(g.shared_row_tokens, attention_cost_ratio(model))
               if g.share_prompt and not uses_varlen_attention(model) else None)
    samples = _samples(groups)
    if not samples:
        return check_logprobs(None, None, tolerance, ["no sampled completion carries sampler logprobs"]), shape
    optim = dataclasses.replace(g.optim, lr=0.0, warmup_steps=0)
    engine = TrainEngine(model, cfg.engine, optim, total_steps=1, micro_batch_size=g.micro_batch_size, grad_accum=1)
    mask_dtype = next(engine.module.parameters()).dtype
    pad_id = ctx.tokenizer.pad_token_id
    try:
        engine.eval()
        before = gather_logprob_gap(samples, engine.forward, pad_id, temp, sharing, mask_dtype, g.micro_batch_size)
        # One real step (a gradient, AdamW, clipping) at lr 0: the weights must come out unchanged.
        engine.train()
        t = to_device(micro_batch_tensors(samples[: g.micro_batch_size], pad_id, sharing), device())
        lp, _ = sequence_logprobs(engine.forward, t, temp, mask_dtype=mask_dtype)
        engine.backward(-lp[t["mask"]].mean())
        engine.step()
        engine.eval()
        ctx.rollout.push_weights(engine.named_weights())
        after = gather_logprob_gap(_samples(regenerate()), engine.forward, pad_id, temp, sharing, mask_dtype,
                                   g.micro_batch_size)
    finally:
        del engine, model
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    return check_logprobs(before, after, tolerance, notes), shape


def _devices(cfg: RunConfig, world_size: int) -> tuple[int, float, bool]:
    """(devices ZeRO partitions over, GiB each, whether both were read from the GPUs present). Without
    doctor_options.num_gpus: this launch's ranks, or the GPUs visible here when there are more (a
    single-process `grpo doctor` before an 8-GPU `--nproc 8` run)."""
    import torch

    o = cfg.doctor_options
    if torch.cuda.is_available():
        n = o.num_gpus or max(world_size, torch.cuda.device_count())
        gb = o.gpu_memory_gb or torch.cuda.get_device_properties(0).total_memory / GIB
        return n, gb, o.num_gpus is None and o.gpu_memory_gb is None
    return o.num_gpus or world_size, o.gpu_memory_gb or DEFAULT_GPU_GB, False


def run_doctor(ctx, source: str, model_path: str, before_sft: bool = False) -> Report:
    """Every check on a StageContext (grpo.stages.pipeline.setup): its tokenizer, data, verifier and engine."""
    from grpo.data.prompt_stream import request_seed
    from grpo.data.rows import prompt_token_counts, to_examples
    from grpo.runtime.rollout import SamplingSpec

    t0 = time.perf_counter()
    cfg, d, o = ctx.cfg, ctx.cfg.data, ctx.cfg.doctor_options
    hint = f"check the model GRPO starts from after it: grpo doctor {source} --model {ctx.run_dir / 'sft' / 'final'}"
    results: list[CheckResult] = []

    # ---- data ------------------------------------------------------------------------------------
    tools = ctx.tool_format.tools if cfg.tools.enabled else None  # tool_call: the definitions are in every prompt
    rl = to_examples(ctx.splits.rl, d, ctx.tokenizer, source=d.source, check_length=False, tools=tools)
    evaluation = to_examples(ctx.splits.eval, d, ctx.tokenizer, source=d.eval_source or d.source, check_length=False,
                             tools=tools)
    counts = {"rl": prompt_token_counts([e.prompt for e in rl], ctx.tokenizer),
              "eval": prompt_token_counts([e.prompt for e in evaluation], ctx.tokenizer)}
    rows = {"RL": len(rl), "eval": len(evaluation)}
    sft = ctx.splits.sft if "sft" in cfg.stages else None
    if sft is not None:
        rows["SFT"] = len(sft)
    demo_pick = _sample(len(sft), o.num_reference_rows, cfg.seed) if sft is not None else []
    demo_rows = ([e.row for e in to_examples(sft.select(demo_pick), d, ctx.tokenizer, check_length=False)]
                 if demo_pick else [])
    use_math = bool(_labels(ctx.verifier, ANSWER_VERIFIERS))
    answers = [(e.row[d.answer_field], math_reading(e.answer) if use_math else "(no math verifier)") for e in rl[:3]]
    results.append(check_data(rows, counts, d.max_prompt_tokens, [e.prompt for e in rl[:3]], answers,
                              _demo_ends_with_eos(ctx, demo_rows, model_path)))

    # ---- verifiers -------------------------------------------------------------------------------
    ref_labels = _labels(ctx.verifier, ANSWER_VERIFIERS)
    refs = []
    for split, examples in (("RL", rl), ("eval", evaluation)):  # the eval split may come from another file
        pick = _sample(len(examples), o.num_reference_rows, cfg.seed)
        refs += score_as_completions(ctx.verifier, [str(examples[i].answer) for i in pick],
                                     [examples[i].row for i in pick], pick, ref_labels, box_if_unread=True, split=split)
    demos: list[Scored] = []
    if demo_rows:
        demos = score_as_completions(ctx.verifier, [str(r[d.solution_field]) for r in demo_rows], demo_rows,
                                     demo_pick, _labels(ctx.verifier, CORRECTNESS_VERIFIERS), split="SFT")
    judged = sorted(set(ref_labels) | set(_labels(ctx.verifier, CORRECTNESS_VERIFIERS) if demos else set()))
    results.append(check_references(refs, demos, judged, o.max_bad_reference_share))

    # ---- the model on a few prompts ----------------------------------------------------------------
    usable = [i for i, n in enumerate(counts["rl"]) if n <= d.max_prompt_tokens]
    chosen = [rl[usable[i]] for i in _sample(len(usable), o.num_prompts, cfg.seed + 1)]
    prompts = [e.prompt for e in chosen]
    seeds = [request_seed(cfg.seed, 7, i) for i in range(len(prompts))]  # 7: a stream of its own, not training's
    greedy_groups = ctx.rollout.generate(prompts, SamplingSpec.from_config(cfg.rollout, n=1, temperature=0.0), seeds)
    spec = SamplingSpec.from_config(cfg.rollout, n=cfg.grpo.group_size)
    sampled_groups = ctx.rollout.generate(prompts, spec, seeds)
    greedy = [g for grp in scored_groups(ctx.verifier, greedy_groups, chosen) for g in grp]
    groups = scored_groups(ctx.verifier, sampled_groups, chosen)
    results.append(check_stopping(greedy, [g for grp in groups for g in grp], cfg.rollout.max_tokens,
                                  o.max_truncated_share, before_sft, hint))
    results.append(check_rewards(greedy, groups, _full(ctx.verifier) or 1.0, o.max_zero_variance_share, before_sft,
                                 hint))

    # ---- sampler vs trainer, memory ----------------------------------------------------------------
    logprobs, shape = sampler_vs_trainer(ctx, model_path, sampled_groups,
                                         lambda: ctx.rollout.generate(prompts, spec, seeds))
    results.append(logprobs)
    n_gpus, gpu_gb, measured = _devices(cfg, ctx.dist.world_size)
    results.append(check_memory(shape, cfg, n_gpus, gpu_gb, measured))
    return Report(source, model_path, results, time.perf_counter() - t0)


# ---------------------------------------------------------------------------------------------
# Output and entry points


def format_report(report: Report) -> str:
    lines = [f"grpo doctor: {report.source}, model {report.model}"]
    for r in report.results:
        lines.append(f"[{r.status}] {r.name}: {r.summary}")
        lines += [f"       {x}" for x in r.details]
        if r.advice:
            lines.append(f"       -> {r.advice}")
    lines.append(report.summary_line)
    return "\n".join(lines)


def write_report(report: Report, run_dir: Path) -> Path:
    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / "doctor.json"
    path.write_text(json.dumps(report.to_json(), indent=2, default=str))
    return path


def _before_sft(cfg: RunConfig, model_override: str | None) -> bool:
    return model_override is None and "sft" in cfg.stages


def doctor_command(cfg: RunConfig, source: str, model_path: str | None = None) -> int:
    """`grpo doctor`: exit status 1 when a check FAILs, 0 otherwise."""
    from grpo.stages.pipeline import in_one_process, setup

    t0 = time.perf_counter()
    cfg = in_one_process(cfg)
    ctx = setup(cfg, model_path)
    try:
        report = run_doctor(ctx, source, ctx.base_model_path, _before_sft(cfg, model_path))
    finally:
        ctx.close()
    report.wall_s = time.perf_counter() - t0  # with loading the model, the data and the engine
    path = write_report(report, ctx.run_dir)
    print(format_report(report) + f"; wrote {path}", flush=True)
    return 1 if report.failed else 0


def preflight(source: str, stages: Sequence[str] | None = None):
    """`doctor: true` (`grpo run`, or a one-stage command running `stages`): the `preflight` of
    grpo.stages.pipeline.run, which runs the checks on the run's own context (one engine) and raises
    DoctorFailed with the summary line on any FAIL (on every rank)."""
    def check(ctx) -> None:
        from grpo.runtime.distributed import all_gather_objects

        before_sft = "sft" in (ctx.cfg.stages if stages is None else stages)
        report = run_doctor(ctx, source, ctx.base_model_path, before_sft)
        if ctx.dist.is_main:
            path = write_report(report, ctx.run_dir)
            print(format_report(report) + f"; wrote {path}", file=sys.stdout, flush=True)
        if any(all_gather_objects(report.failed)):
            raise DoctorFailed(f"{report.summary_line}; stopped before training (see {ctx.run_dir / 'doctor.json'})")

    return check
