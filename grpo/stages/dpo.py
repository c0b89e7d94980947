"""Direct preference optimisation, in one readable function:

    pairs (a file, or sampled and labelled by the verifiers) -> validated token ids
    -> reference logprobs (one no-grad pass, cached; or a live reference model)
    -> per step: policy logprobs of chosen and rejected -> preference loss -> step
    -> held-out pairs: implicit-reward margin and accuracy before, during and after training

Everything that can be wrong with the data is found before the first step: every file row is
validated (a bad one stops the run naming its row), every pair is tokenized and fitted to
`dpo.max_seq_len`. Each rank trains on its own pairs; DeepSpeed averages gradients.
"""
from __future__ import annotations

import json
import math
import random
import time
from functools import partial
from pathlib import Path

import torch

from grpo.algorithms.dpo_losses import preference_loss
from grpo.algorithms.packing import PromptSharing
from grpo.config import ConfigError
from grpo.data.preferences import (TokenizedPair, fit_pair, load_preference_file, load_tokenized_pairs,
                                   save_tokenized_pairs, tokenize_pairs)
from grpo.data.prompt_stream import PromptStream
from grpo.data.rows import DataError
from grpo.data.verifier_pairs import PairReport, build_verifier_pairs
from grpo.metrics import progress, short
from grpo.runtime.distributed import (all_gather_int, all_reduce_mean, barrier, lockstep_chunks, seed_everything,
                                      to_device)
from grpo.runtime.engine import TrainEngine
from grpo.runtime.faults import stop_if_requested
from grpo.runtime.attention import attention_cost_ratio, uses_varlen_attention
from grpo.runtime.lora import saves_merged
from grpo.runtime.models import load_model
from grpo.runtime.reference_cache import ReferenceLogps, pair_batch, sequence_logps
from grpo.stages.context import StageContext
from grpo.stages.reference import live_reference, precomputed_reference
from grpo.stages.sampled_data import reuse_saved, sample_on_every_rank, sampled_data_key

DEFAULT_MICRO_PAIRS = 8  # pairs per forward (2x sequences) when dpo.micro_batch_size is not set
STAT_NAMES = {"rewards_chosen": "rewards/chosen", "rewards_rejected": "rewards/rejected",
              "reward_margin": "rewards/margins", "reward_accuracy": "rewards/accuracy",
              "logps_chosen": "logps/chosen", "logps_rejected": "logps/rejected", "nll": "nll",
              "loss_preference": "loss_preference"}


def check_settings(p) -> None:
    """Combinations the config's range checks cannot see, refused before any work."""
    if p.label_smoothing and p.loss_type in ("ipo", "hinge"):
        raise ConfigError(f"dpo.label_smoothing: not defined for dpo.loss_type={p.loss_type!r}; set it to 0")


# ---------------------------------------------------------------------------------------------
# Pairs


def file_pairs(ctx: StageContext) -> list[TokenizedPair]:
    p = ctx.cfg.dpo
    rows = load_preference_file(p.pairs_file)  # validates every row first
    pairs, report = tokenize_pairs(rows, ctx.cfg.data, ctx.tokenizer, p.max_seq_len, source=str(p.pairs_file))
    if ctx.dist.is_main:
        print(f"[dpo] {len(pairs)} pairs from {p.pairs_file}"
              + (f" ({report.truncated} cut to dpo.max_seq_len={p.max_seq_len})" if report.truncated else ""),
              flush=True)
    return pairs


def verifier_pairs(ctx: StageContext, init_model_path: str, stage_dir: Path) -> list[TokenizedPair]:
    """Sampled from the initial policy and labelled by the verifiers; saved in the run directory and
    reused when the stage is resumed."""
    p, dist = ctx.cfg.dpo, ctx.dist
    pairs_path, report_path = stage_dir / "pairs.jsonl", stage_dir / "pairs_report.json"
    key = sampled_data_key(ctx, init_model_path, "dpo",
                           ("num_prompts", "samples_per_prompt", "chosen_rule", "rejected_rule", "max_seq_len"))
    saved = reuse_saved(ctx, pairs_path, report_path, key, load_tokenized_pairs, "dpo", "verifier-built pairs")
    if saved is not None:
        return saved
    t0 = time.perf_counter()
    pairs, reports = sample_on_every_rank(
        ctx, init_model_path, p.num_prompts, p.samples_per_prompt, "dpo pairs",
        partial(build_verifier_pairs, chosen_rule=p.chosen_rule, rejected_rule=p.rejected_rule))
    total = PairReport(**{k: sum(r[k] for r in reports) for k in
                          ("prompts", "samples", "pairs", "skipped_all_correct", "skipped_all_wrong",
                           "skipped_only_truncated_correct")})
    total.correct_fraction = sum(r["correct_fraction"] * r["samples"] for r in reports) / max(total.samples, 1)
    cut = 0
    for i, pr in enumerate(pairs):
        pairs[i], was_cut = fit_pair(pr, p.max_seq_len, source="verifier pairs")
        cut += was_cut
    if dist.is_main:
        print(f"[dpo] verifier pairs: {total.summary()} ({time.perf_counter() - t0:.0f}s"
              + (f"; {cut} cut to dpo.max_seq_len" if cut else "") + ")", flush=True)
        save_tokenized_pairs(pairs_path, pairs)
        report_path.write_text(json.dumps({**total.as_dict(), "truncated": cut, "key": key,
                                           "wall_s": round(time.perf_counter() - t0, 1)}, indent=2))
    barrier()
    if not pairs:
        raise DataError(f"dpo.pairs=verifier: none of {total.prompts} prompts had both a correct and a wrong answer "
                        f"among {p.samples_per_prompt} samples ({total.summary()}); raise dpo.samples_per_prompt or "
                        "rollout.temperature, or train SFT longer")
    return pairs


def split_pairs(pairs: list[TokenizedPair], eval_size: int,
                seed: int) -> tuple[list[TokenizedPair], list[TokenizedPair]]:
    """A seeded held-out slice (at most a fifth of the pairs), the rest for training."""
    order = list(range(len(pairs)))
    random.Random(seed).shuffle(order)
    n_eval = min(eval_size, len(pairs) // 5)
    return [pairs[i] for i in order[n_eval:]], [pairs[i] for i in order[:n_eval]]


# ---------------------------------------------------------------------------------------------
# Loss on a micro-batch


class PairScorer:
    """Policy (and, live, reference) logprobs of micro-batches of pairs -> preference loss and stats."""

    def __init__(self, cfg, pairs: list[TokenizedPair], pad_id: int, dev: torch.device,
                 ref: ReferenceLogps | None, ref_forward=None, sharing: PromptSharing | None = None,
                 mask_dtype: torch.dtype = torch.float32):
        self.p, self.pairs, self.pad_id, self.dev = cfg.dpo, pairs, pad_id, dev
        self.ref, self.ref_forward = ref, ref_forward
        self.sharing, self.mask_dtype = sharing, mask_dtype

    def __call__(self, forward, idx: list[int]) -> tuple[torch.Tensor, dict[str, float], int]:
        p, b = self.p, len(idx)
        batch = to_device(pair_batch([self.pairs[i] for i in idx], self.pad_id, self.sharing), self.dev)
        sums, _ = sequence_logps(forward, batch, self.mask_dtype)  # [2b]
        ref_c = ref_r = None
        if self.ref_forward is not None:
            with torch.no_grad():
                ref_sums, _ = sequence_logps(self.ref_forward, batch, self.mask_dtype)
            ref_c, ref_r = ref_sums[:b].float(), ref_sums[b:].float()
        elif self.ref is not None:
            t = torch.tensor(idx)
            ref_c, ref_r = self.ref.chosen[t].to(self.dev), self.ref.rejected[t].to(self.dev)
        lengths = batch["answer_lengths"]
        normalize = p.length_normalize or p.loss_type == "simpo"
        loss, stats = preference_loss(
            sums[:b], sums[b:], ref_c, ref_r, loss_type=p.loss_type, beta=p.beta,
            label_smoothing=p.label_smoothing, simpo_gamma=p.simpo_gamma,
            chosen_lengths=lengths[:b] if normalize else None, rejected_lengths=lengths[b:] if normalize else None,
            chosen_nll=(-sums[:b] / lengths[:b].clamp(min=1)) if p.rpo_alpha > 0 else None, rpo_alpha=p.rpo_alpha)
        out = {STAT_NAMES.get(k, k): float(v) for k, v in stats.items()}
        out["loss"] = float(loss.detach())
        return loss, out, batch["real_tokens"]


def _weighted(acc: dict[str, float], stats: dict[str, float], w: float) -> None:
    for k, v in stats.items():
        acc[k] = acc.get(k, 0.0) + w * v


def evaluate_pairs(engine: TrainEngine, scorer: PairScorer, idx: list[int], micro: int) -> dict[str, float]:
    """Loss, implicit-reward margin and accuracy on held-out pairs (all ranks), pair-weighted."""
    acc: dict[str, float] = {}
    engine.eval()
    with torch.no_grad():
        for chunk, filler in lockstep_chunks(idx, micro, 0):
            _, stats, _ = scorer(engine.forward, chunk)
            _weighted(acc, stats, 0.0 if filler else len(chunk))  # same keys on every rank
    engine.train()
    acc["_n"] = float(len(idx))
    total = all_reduce_mean(acc)  # every rank calls it, whatever it holds
    n = max(total.pop("_n", 0.0), 1e-9)
    return {k: v / n for k, v in total.items()}


# ---------------------------------------------------------------------------------------------
# The loop


def train(ctx: StageContext, init_model_path: str) -> Path:
    """DPO from `init_model_path`; returns the final Hugging Face model directory."""
    cfg, p, dist = ctx.cfg, ctx.cfg.dpo, ctx.dist
    check_settings(p)
    stage_dir = ctx.run_dir / "dpo"
    ckpt_dir, final_dir = stage_dir / "checkpoints", stage_dir / "final"
    say = print if dist.is_main else (lambda *a, **k: None)
    seed_everything(cfg.seed + dist.rank)
    pad_id = ctx.tokenizer.pad_token_id if ctx.tokenizer.pad_token_id is not None else ctx.tokenizer.eos_token_id

    # ---- pairs, validated and tokenized before any model is loaded (file) ----------------------------
    if p.pairs == "file":
        pairs = file_pairs(ctx)
        data_dir = Path(p.pairs_file).parent / (Path(p.pairs_file).name + ".refcache")
    else:
        pairs = verifier_pairs(ctx, init_model_path, stage_dir)
        data_dir = stage_dir / "ref_cache"
    train_pairs, eval_pairs = split_pairs(pairs, p.pairs_eval_size, cfg.seed)
    all_pairs = train_pairs + eval_pairs
    train_idx, eval_idx = list(range(len(train_pairs))), list(range(len(train_pairs), len(all_pairs)))
    if len(train_pairs) < dist.world_size:
        raise DataError(f"dpo: {len(train_pairs)} training pairs cannot feed {dist.world_size} ranks")
    micro = min(p.batch_size, p.micro_batch_size or DEFAULT_MICRO_PAIRS)
    grad_accum = math.ceil(p.batch_size / micro)
    total_steps = p.max_steps or max(
        1, math.ceil(p.epochs * (len(train_pairs) // dist.world_size) / p.batch_size))
    say(f"[dpo] {len(train_pairs)} training pairs, {len(eval_pairs)} held out; loss {p.loss_type} (beta {p.beta}); "
        f"{p.batch_size} pairs/step x {dist.world_size} rank(s), {total_steps} steps", flush=True)

    # ---- engine; reference logprobs from the untouched initial weights --------------------------------
    model = load_model(init_model_path, cfg.model)
    engine = TrainEngine(model, cfg.engine, p.optim, total_steps=total_steps, micro_batch_size=micro,
                         grad_accum=grad_accum)
    first = next(engine.module.parameters())
    dev, mask_dtype = first.device, first.dtype
    # Each prompt once for both answers (tree mask); a pair always fits one row of 2 x max_seq_len tokens.
    sharing = (PromptSharing(2 * p.max_seq_len, attention_cost_ratio(model))
               if p.share_prompt and not uses_varlen_attention(model) else None)
    if p.share_prompt and sharing is None:
        say("[dpo] dpo.share_prompt: the model uses flash attention, which cannot take a tree mask; "
            "padded rows instead", flush=True)
    ref, ref_forward, ref_model = None, None, None
    if p.loss_type != "simpo" and p.precompute_reference:
        ref = precomputed_reference(
            ctx, engine, all_pairs, init_model_path, pad_id=pad_id, micro_batch_size=micro, sharing=sharing,
            mask_dtype=mask_dtype, tag="dpo", cache_dir=Path(p.reference_cache_dir or data_dir),
            fallback_dir=stage_dir / "ref_cache",
            settings={"dtype": cfg.model.dtype, "precision": cfg.engine.precision, "sum": "answer_tokens"})
    elif p.loss_type != "simpo":
        ref_forward, ref_model = live_reference(engine, init_model_path, cfg.model)
    scorer = PairScorer(cfg, all_pairs, pad_id, dev, ref, ref_forward, sharing, mask_dtype)

    start_step, position = 0, 0
    state = engine.resume(ckpt_dir, cfg.resume, "dpo", init_model=init_model_path)
    if state is not None:
        start_step, position = state["step"], state["data_position"][dist.rank]
    stream = PromptStream(len(train_pairs), cfg.seed, dist.rank, dist.world_size, position)
    my_eval = eval_idx[dist.rank::dist.world_size]
    logger = ctx.log("dpo")
    eval_every = p.eval_every
    results: dict[str, dict] = {}

    def run_eval(step: int) -> dict:
        out = evaluate_pairs(engine, scorer, my_eval, micro) if eval_pairs else {}
        results["before" if step == 0 else "after"] = {"step": step, **out}
        return {f"eval/{k}": v for k, v in out.items()}

    def save(step: int) -> None:
        positions = [int(x) for x in all_gather_int(stream.position)]
        engine.save_checkpoint(ckpt_dir, f"step{step}", {"step": step, "data_position": positions})

    if start_step == 0:
        logger.log(0, {"pairs/train": len(train_pairs), "pairs/eval": len(eval_pairs), **run_eval(0)})
    engine.train()
    bar = progress(total=total_steps, initial=start_step, desc="dpo", enabled=ctx.show_progress)
    step = start_step
    while step < total_steps:
        stop_if_requested("dpo", step, engine, save)  # SIGTERM/SIGINT on any rank: save, stop
        t0 = time.perf_counter()
        batch = [i for _, i in stream.take(p.batch_size)]
        acc: dict[str, float] = {}
        tokens = 0
        for j in range(0, len(batch), micro):
            chunk = batch[j:j + micro]
            loss, stats, n_tok = scorer(engine.forward, chunk)
            share = len(chunk) / len(batch)  # the batch loss is the mean over its pairs
            engine.backward(loss * share)
            _weighted(acc, stats, share)
            tokens += n_tok
        step_stats = engine.step()
        step += 1
        elapsed = time.perf_counter() - t0
        record = all_reduce_mean({**acc, "tokens_per_second": tokens / max(elapsed, 1e-9)})
        record["tokens_per_second"] *= dist.world_size
        record.update(step_stats)
        record["epoch"] = stream.position / len(stream.indices)
        if eval_every and step % eval_every == 0 and step < total_steps:
            record.update(run_eval(step))
        logger.log(step, record)
        bar.update(1)
        bar.set_postfix(short(record, ["loss", "rewards/margins", "rewards/accuracy"]))
        if p.save_every and step % p.save_every == 0 and step < total_steps:
            save(step)
    bar.close()
    if step > start_step:
        final = run_eval(step)
        logger.log(step, final)
        save(step)
        if dist.is_main and results:
            out = stage_dir / "eval_pairs.json"
            previous = json.loads(out.read_text()) if out.exists() and start_step > 0 else {}
            out.write_text(json.dumps({**previous, **results}, indent=2))
        if final:
            say(f"[dpo] held-out pairs: margin {final.get('eval/rewards/margins', float('nan')):.3f}, "
                f"accuracy {final.get('eval/rewards/accuracy', float('nan')):.3f}", flush=True)
    engine.save_pretrained(final_dir, ctx.tokenizer, merged=saves_merged(cfg.model))
    barrier()
    del engine, ref_model
    return final_dir
