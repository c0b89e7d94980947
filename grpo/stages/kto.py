"""Kahneman-Tversky optimisation (KTO), in one readable function:

    labelled answers (a thumbs up/down file, or every sampled answer labelled by the verifiers)
    -> validated token ids, each example given a mismatched "KL" answer (another prompt's answer)
    -> reference logprobs of answers and KL answers (one no-grad pass, cached; or a live reference model)
    -> per step: z_ref = the step's KL estimate (no-grad pass over its KL answers, all ranks, clamped at 0)
                 -> policy logprobs of the answers -> KTO loss (grpo.algorithms.kto_losses) -> step
    -> held-out examples: loss and implicit rewards of each side before, during and after training

As for DPO, everything that can be wrong with the data is found before the first step: a bad file row
stops the run naming its row, every answer is tokenized and fitted to `kto.max_seq_len`. Each rank trains
on its own examples; DeepSpeed averages gradients. Unlike DPO's verifier pairs, verifier-labelled KTO data
keeps every sampled answer (a prompt whose answers are all right, or all wrong, still teaches).
"""
from __future__ import annotations

import json
import math
import random
import time
from functools import partial
from pathlib import Path

import torch

from grpo.algorithms.kto_losses import kto_losses, weight_ratio
from grpo.algorithms.packing import PromptSharing
from grpo.data.preferences import TokenizedPair
from grpo.data.prompt_stream import PromptStream
from grpo.data.rows import DataError
from grpo.data.unpaired import (TokenizedAnswer, load_tokenized_answers, load_unpaired_file, save_tokenized_answers,
                                tokenize_answers, with_kl_answers)
from grpo.data.verifier_labels import LabelReport, balance_answers, build_verifier_labels
from grpo.metrics import progress, short
from grpo.runtime.attention import attention_cost_ratio, uses_varlen_attention
from grpo.runtime.distributed import (all_gather_int, all_reduce_mean, barrier, lockstep_chunks, seed_everything,
                                      to_device)
from grpo.runtime.engine import TrainEngine
from grpo.runtime.faults import stop_if_requested
from grpo.runtime.lora import saves_merged
from grpo.runtime.models import load_model
from grpo.runtime.reference_cache import ReferenceLogps, continuation_batch, sequence_logps
from grpo.stages.context import StageContext
from grpo.stages.reference import live_reference, precomputed_reference
from grpo.stages.sampled_data import reuse_saved, sample_on_every_rank, sampled_data_key

DEFAULT_MICRO = 16  # examples per forward when kto.micro_batch_size is not set
ADVISED_RATIO = (1.0, 4.0 / 3.0)  # lambda_D n_D / (lambda_U n_U), Ethayarajh et al. 2024, section 4.2


# ---------------------------------------------------------------------------------------------
# Labelled answers


def file_answers(ctx: StageContext) -> list[TokenizedAnswer]:
    k = ctx.cfg.kto
    rows = load_unpaired_file(k.data_file)  # validates every row first
    answers, cut = tokenize_answers(rows, ctx.cfg.data, ctx.tokenizer, k.max_seq_len, source=str(k.data_file))
    if ctx.dist.is_main:
        n_d = sum(a.label for a in answers)
        print(f"[kto] {len(answers)} labelled answers from {k.data_file} ({n_d} desirable, {len(answers) - n_d} "
              f"undesirable)" + (f"; {cut} cut to kto.max_seq_len={k.max_seq_len}" if cut else ""), flush=True)
    return answers


def verifier_answers(ctx: StageContext, init_model_path: str, stage_dir: Path) -> list[TokenizedAnswer]:
    """Sampled from the initial policy, every answer labelled by the verifiers; saved in the run directory and
    reused when the stage is resumed."""
    cfg, k, dist = ctx.cfg, ctx.cfg.kto, ctx.dist
    data_path, report_path = stage_dir / "answers.jsonl", stage_dir / "answers_report.json"
    key = sampled_data_key(ctx, init_model_path, "kto",
                           ("num_prompts", "samples_per_prompt", "truncated_correct", "balance", "max_seq_len"))
    saved = reuse_saved(ctx, data_path, report_path, key, load_tokenized_answers, "kto", "verifier-labelled answers")
    if saved is not None:
        return saved
    t0 = time.perf_counter()
    answers, reports = sample_on_every_rank(ctx, init_model_path, k.num_prompts, k.samples_per_prompt, "kto labels",
                                            partial(build_verifier_labels, truncated_correct=k.truncated_correct))
    total = LabelReport(**{f: sum(r[f] for r in reports) for f in LabelReport().as_dict()})
    if k.balance == "downsample":
        if total.desirable == 0 or total.undesirable == 0:
            side = "desirable" if not total.desirable else "undesirable"
            raise DataError(f"kto.balance=downsample: the samples have no {side} answer ({total.summary()}); "
                            "set kto.balance to none or weights")
        answers = balance_answers(answers, cfg.seed)
        total.dropped_by_balance = total.kept - len(answers)
    total.kept = len(answers)
    cut = 0
    for i, a in enumerate(answers):
        room = k.max_seq_len - len(a.prompt_ids)
        if room < 1:
            raise DataError(f"kto verifier answers: row {a.row}: the prompt is {len(a.prompt_ids)} tokens, leaving no "
                            f"room within kto.max_seq_len={k.max_seq_len}")
        if len(a.completion_ids) > room:
            answers[i] = TokenizedAnswer(a.prompt_ids, a.completion_ids[:room], a.label, a.row)
            cut += 1
    wall = time.perf_counter() - t0
    if dist.is_main:
        print(f"[kto] verifier labels: {total.summary()} ({wall:.0f}s"
              + (f"; {cut} cut to kto.max_seq_len" if cut else "") + ")", flush=True)
        save_tokenized_answers(data_path, answers)
        report_path.write_text(json.dumps({**total.as_dict(), "truncated": cut, "key": key, "wall_s": round(wall, 1)},
                                          indent=2))
    barrier()
    if not answers:
        raise DataError(f"kto.data=verifier: no answers were sampled ({total.summary()})")
    return answers


def split_answers(answers: list[TokenizedAnswer], eval_size: int,
                  seed: int) -> tuple[list[TokenizedAnswer], list[TokenizedAnswer]]:
    """A seeded held-out slice (at most a fifth), the rest for training."""
    order = list(range(len(answers)))
    random.Random(seed).shuffle(order)
    n_eval = min(eval_size, len(answers) // 5)
    return [answers[i] for i in order[n_eval:]], [answers[i] for i in order[:n_eval]]


def side_weights(k, train: list[TokenizedAnswer]) -> tuple[float, float]:
    """(lambda_D, lambda_U): as configured, or with kto.balance=weights lambda_D set so both sides weigh alike."""
    n_d = sum(a.label for a in train)
    n_u = len(train) - n_d
    if k.balance != "weights":
        return k.desirable_weight, k.undesirable_weight
    if n_d == 0 or n_u == 0:
        side = "desirable" if n_d == 0 else "undesirable"
        raise DataError(f"kto.balance=weights: the training examples have no {side} answer to weigh against the "
                        "other side; set kto.balance to none")
    return k.undesirable_weight * n_u / n_d, k.undesirable_weight


# ---------------------------------------------------------------------------------------------
# Logprobs of examples


def _by_prompt(examples: list[TokenizedPair], idx: list[int], kl: bool) -> tuple[list, list[int]]:
    """Continuation items with the answers (or KL answers) of one prompt together, and the example order the
    flat sums come out in."""
    groups: dict[tuple, list[int]] = {}
    for i in idx:
        groups.setdefault(tuple(examples[i].prompt_ids), []).append(i)
    items = [(list(p), [examples[i].rejected_ids if kl else examples[i].chosen_ids for i in members])
             for p, members in groups.items()]
    return items, [i for members in groups.values() for i in members]


class ExampleScorer:
    """Summed logprobs of examples' answers (with gradient) and KL answers (without), under the policy and the
    reference (precomputed, or a live model). Example i is examples[i] = (prompt, answer, KL answer)."""

    def __init__(self, examples: list[TokenizedPair], labels: torch.Tensor, pad_id: int, dev: torch.device,
                 ref: ReferenceLogps | None, ref_forward=None, sharing: PromptSharing | None = None,
                 mask_dtype: torch.dtype = torch.float32):
        self.examples, self.labels, self.pad_id, self.dev = examples, labels, pad_id, dev
        self.ref, self.ref_forward, self.sharing, self.mask_dtype = ref, ref_forward, sharing, mask_dtype

    def logps(self, forward, idx: list[int], kl: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, int]:
        """(policy sums [b], reference sums [b], answer lengths [b], real tokens) in the order of `idx`."""
        items, order = _by_prompt(self.examples, idx, kl)
        batch = to_device(continuation_batch(items, self.pad_id, self.sharing), self.dev)
        sums, _ = sequence_logps(forward, batch, self.mask_dtype)
        where = {i: j for j, i in enumerate(order)}
        back = torch.tensor([where[i] for i in idx], device=sums.device)
        policy, lengths = sums[back], batch["answer_lengths"][back]
        if self.ref_forward is not None:
            with torch.no_grad():
                ref_sums, _ = sequence_logps(self.ref_forward, batch, self.mask_dtype)
            ref = ref_sums[back].float()
        else:
            t = torch.tensor(idx)
            ref = (self.ref.rejected if kl else self.ref.chosen)[t].to(self.dev)
        return policy, ref, lengths, batch["real_tokens"]

    @torch.no_grad()
    def kl_sums(self, forward, idx: list[int], micro: int) -> dict[str, float]:
        """{"kl_sum": sum of log-ratios of the KL answers, "kl_n": their count} over `idx`, in forwards of
        `micro` examples (every rank runs as many as the busiest: ZeRO-3 gathers weights collectively)."""
        total, n = 0.0, 0
        for chunk, filler in lockstep_chunks(idx, micro, idx[0] if idx else 0):
            policy, ref, _, _ = self.logps(forward, chunk, kl=True)
            if not filler:
                total += float((policy.float() - ref).sum())
                n += len(chunk)
        return {"kl_sum": total, "kl_n": float(n)}


def reference_point_over_ranks(sums: dict[str, float]) -> float:
    """z_ref = max(0, mean KL log-ratio) over every rank's examples (the whole step's batch)."""
    total = all_reduce_mean(dict(sums))  # mean of sums / mean of counts = total sum / total count
    return max(0.0, total["kl_sum"] / total["kl_n"]) if total.get("kl_n", 0.0) > 0 else 0.0


def _accumulate(acc: dict[str, float], labels: torch.Tensor, losses: torch.Tensor, rewards: torch.Tensor,
                policy: torch.Tensor, z: float, nll: torch.Tensor | None) -> None:
    """Per-side sums (reduced over ranks as sums and counts, divided at the end: no micro-batch averages)."""
    lab = labels.to(losses.device)
    for side, mask in (("desirable", lab), ("undesirable", ~lab)):
        acc[f"n_{side}"] = acc.get(f"n_{side}", 0.0) + float(mask.sum())
        acc[f"reward_{side}"] = acc.get(f"reward_{side}", 0.0) + float(rewards[mask].sum())
        acc[f"logp_{side}"] = acc.get(f"logp_{side}", 0.0) + float(policy.detach()[mask].float().sum())
        acc[f"loss_{side}"] = acc.get(f"loss_{side}", 0.0) + float(losses.detach()[mask].sum())
    beta_z = rewards.new_tensor(z)  # rewards are beta * r; the sides of the reference point in the same units
    right = torch.where(lab, rewards > beta_z, rewards < beta_z)
    acc["right_side"] = acc.get("right_side", 0.0) + float(right.sum())
    if nll is not None:
        acc["nll_sum"] = acc.get("nll_sum", 0.0) + float(nll.detach().sum())


def _finish(acc: dict[str, float], z: float) -> dict[str, float]:
    """Reduced sums -> the logged statistics."""
    n_d, n_u = acc.get("n_desirable", 0.0), acc.get("n_undesirable", 0.0)
    n = max(n_d + n_u, 1e-9)
    out = {"loss_kto": (acc.get("loss_desirable", 0.0) + acc.get("loss_undesirable", 0.0)) / n, "kl": z,
           "count/desirable": n_d, "count/undesirable": n_u, "rewards/accuracy": acc.get("right_side", 0.0) / n}
    for side in ("desirable", "undesirable"):
        m = acc.get(f"n_{side}", 0.0)
        if m > 0:
            out[f"rewards/{side}"] = acc[f"reward_{side}"] / m
            out[f"logps/{side}"] = acc[f"logp_{side}"] / m
    if "rewards/desirable" in out and "rewards/undesirable" in out:
        out["rewards/margins"] = out["rewards/desirable"] - out["rewards/undesirable"]
    if "nll_sum" in acc and n_d > 0:
        out["nll"] = acc["nll_sum"] / n_d
    return out


def _reduce_sums(acc: dict[str, float], world_size: int) -> dict[str, float]:
    """Sums over the ranks (all_reduce_mean averages; every rank reports every key here)."""
    return {key: v * world_size for key, v in all_reduce_mean(acc).items()}


def evaluate_examples(engine: TrainEngine, scorer: ExampleScorer, idx: list[int], micro: int, k,
                      weights: tuple[float, float], world_size: int) -> dict[str, float]:
    """Held-out loss and implicit rewards (all ranks), z_ref estimated on the held-out examples themselves."""
    engine.eval()
    with torch.no_grad():
        z = reference_point_over_ranks(scorer.kl_sums(engine.forward, idx, micro))
        acc = {f"{s}_{side}": 0.0 for s in ("n", "reward", "logp", "loss") for side in ("desirable", "undesirable")}
        acc["right_side"] = 0.0
        for chunk, filler in lockstep_chunks(idx, micro, idx[0] if idx else 0):
            policy, ref, _, _ = scorer.logps(engine.forward, chunk, kl=False)
            if filler:
                continue
            labels = scorer.labels[torch.tensor(chunk)]
            losses, rewards = kto_losses(policy, ref, labels, reference_point=z, beta=k.beta,
                                         desirable_weight=weights[0], undesirable_weight=weights[1])
            _accumulate(acc, labels, losses, rewards, policy, z, None)
    engine.train()
    out = _finish(_reduce_sums(acc, world_size), z)
    out["loss"] = out.pop("loss_kto")
    return out


# ---------------------------------------------------------------------------------------------
# The loop


def train(ctx: StageContext, init_model_path: str) -> Path:
    """KTO from `init_model_path`; returns the final Hugging Face model directory."""
    cfg, k, dist = ctx.cfg, ctx.cfg.kto, ctx.dist
    stage_dir = ctx.run_dir / "kto"
    ckpt_dir, final_dir = stage_dir / "checkpoints", stage_dir / "final"
    say = print if dist.is_main else (lambda *a, **kw: None)
    seed_everything(cfg.seed + dist.rank)
    pad_id = ctx.tokenizer.pad_token_id if ctx.tokenizer.pad_token_id is not None else ctx.tokenizer.eos_token_id

    # ---- labelled answers, validated and tokenized before any model is loaded (file) ------------------
    if k.data == "file":
        answers = file_answers(ctx)
        if k.balance == "downsample":
            n_before = len(answers)
            answers = balance_answers(answers, cfg.seed)
            say(f"[kto] kto.balance=downsample: {n_before - len(answers)} examples of the larger side left out",
                flush=True)
        data_dir = Path(k.data_file).parent / (Path(k.data_file).name + ".refcache")
    else:
        answers = verifier_answers(ctx, init_model_path, stage_dir)
        data_dir = stage_dir / "ref_cache"
    train_answers, eval_answers = split_answers(answers, k.eval_size, cfg.seed)
    if len(train_answers) < max(2, dist.world_size):
        raise DataError(f"kto: {len(train_answers)} training examples cannot feed {dist.world_size} rank(s) "
                        "(at least 2 are needed to estimate the reference point)")
    weights = side_weights(k, train_answers)
    n_d = sum(a.label for a in train_answers)
    n_u = len(train_answers) - n_d
    ratio = weight_ratio(n_d, n_u, *weights)
    # Train and held-out examples get their KL answers separately: no held-out answer is seen in training.
    examples = (with_kl_answers(train_answers, cfg.seed, k.max_seq_len)
                + (with_kl_answers(eval_answers, cfg.seed + 1, k.max_seq_len) if eval_answers else []))
    labels = torch.tensor([a.label for a in train_answers + eval_answers], dtype=torch.bool)
    train_idx = list(range(len(train_answers)))
    eval_idx = list(range(len(train_answers), len(examples)))
    micro = min(k.batch_size, k.micro_batch_size or DEFAULT_MICRO)
    grad_accum = math.ceil(k.batch_size / micro)
    total_steps = k.max_steps or max(1, math.ceil(k.epochs * (len(train_answers) // dist.world_size) / k.batch_size))
    say(f"[kto] {len(train_answers)} training examples ({n_d} desirable, {n_u} undesirable), {len(eval_answers)} "
        f"held out; beta {k.beta}, lambda_D {weights[0]:.3g}, lambda_U {weights[1]:.3g} (lambda_D n_D / lambda_U n_U "
        f"= {ratio:.2f}); {k.batch_size} examples/step x {dist.world_size} rank(s), {total_steps} steps", flush=True)
    if not ADVISED_RATIO[0] <= ratio <= ADVISED_RATIO[1]:
        say(f"[kto] note: lambda_D n_D / (lambda_U n_U) = {ratio:.2f} is outside the paper's advised [1, 4/3]; "
            "kto.balance=weights sets it to 1", flush=True)

    # ---- engine; reference logprobs from the untouched initial weights --------------------------------
    model = load_model(init_model_path, cfg.model)
    engine = TrainEngine(model, cfg.engine, k.optim, total_steps=total_steps, micro_batch_size=micro,
                         grad_accum=grad_accum)
    first = next(engine.module.parameters())
    dev, mask_dtype = first.device, first.dtype
    # Answers of one prompt (and an answer with its KL answer, in the reference pass) share the prompt.
    sharing = (PromptSharing(2 * k.max_seq_len, attention_cost_ratio(model))
               if k.share_prompt and not uses_varlen_attention(model) else None)
    if k.share_prompt and sharing is None:
        say("[kto] kto.share_prompt: the model uses flash attention, which cannot take a tree mask; padded rows "
            "instead", flush=True)
    ref, ref_forward, ref_model = None, None, None
    if k.precompute_reference:
        ref = precomputed_reference(
            ctx, engine, examples, init_model_path, pad_id=pad_id, micro_batch_size=micro, sharing=sharing,
            mask_dtype=mask_dtype, tag="kto", cache_dir=Path(k.reference_cache_dir or data_dir),
            fallback_dir=stage_dir / "ref_cache",
            settings={"dtype": cfg.model.dtype, "precision": cfg.engine.precision, "sum": "answer_tokens",
                      "kind": "kto: answer, KL answer"})
    else:
        ref_forward, ref_model = live_reference(engine, init_model_path, cfg.model)
    scorer = ExampleScorer(examples, labels, pad_id, dev, ref, ref_forward, sharing, mask_dtype)

    start_step, position = 0, 0
    state = engine.resume(ckpt_dir, cfg.resume, "kto", init_model=init_model_path)
    if state is not None:
        start_step, position = state["step"], state["data_position"][dist.rank]
    stream = PromptStream(len(train_answers), cfg.seed, dist.rank, dist.world_size, position)
    my_eval = eval_idx[dist.rank::dist.world_size]
    logger = ctx.log("kto")
    results: dict[str, dict] = {}

    def run_eval(step: int) -> dict:
        out = evaluate_examples(engine, scorer, my_eval, micro, k, weights, dist.world_size) if eval_idx else {}
        results["before" if step == 0 else "after"] = {"step": step, **out}
        return {f"eval/{key}": v for key, v in out.items()}

    def save(step: int) -> None:
        positions = [int(x) for x in all_gather_int(stream.position)]
        engine.save_checkpoint(ckpt_dir, f"step{step}", {"step": step, "data_position": positions})

    if start_step == 0:
        logger.log(0, {"examples/train": len(train_answers), "examples/eval": len(eval_answers),
                       "examples/desirable": n_d, "examples/undesirable": n_u, **run_eval(0)})
    engine.train()
    bar = progress(total=total_steps, initial=start_step, desc="kto", enabled=ctx.show_progress)
    step = start_step
    while step < total_steps:
        stop_if_requested("kto", step, engine, save)  # SIGTERM/SIGINT on any rank: save, stop
        t0 = time.perf_counter()
        batch = [i for _, i in stream.take(k.batch_size)]
        # z_ref over the whole step (every micro-batch, every rank), before any loss: it is a constant in the loss.
        engine.eval()
        z = reference_point_over_ranks(scorer.kl_sums(engine.forward, batch, micro))
        engine.train()
        acc: dict[str, float] = {}
        tokens = 0
        for j in range(0, len(batch), micro):
            chunk = batch[j:j + micro]
            policy, ref_sums, lengths, n_tok = scorer.logps(engine.forward, chunk, kl=False)
            chunk_labels = labels[torch.tensor(chunk)].to(policy.device)
            losses, rewards = kto_losses(policy, ref_sums, chunk_labels, reference_point=z, beta=k.beta,
                                         desirable_weight=weights[0], undesirable_weight=weights[1])
            loss = losses.sum()
            nll = None
            if k.sft_alpha > 0:  # per-token NLL of the desirable answers
                nll = (-policy.float() / lengths.clamp(min=1))[chunk_labels]
                loss = loss + k.sft_alpha * nll.sum()
            engine.backward(loss / len(batch))  # the step loss is the mean over its examples
            _accumulate(acc, chunk_labels, losses, rewards, policy, z, nll)
            tokens += n_tok
        step_stats = engine.step()
        step += 1
        elapsed = time.perf_counter() - t0
        record = _finish(_reduce_sums(acc, dist.world_size), z)
        record["loss"] = record["loss_kto"] + k.sft_alpha * record.get("nll", 0.0) * (
            record["count/desirable"] / max(record["count/desirable"] + record["count/undesirable"], 1))
        record["tokens_per_second"] = all_reduce_mean({"t": tokens / max(elapsed, 1e-9)})["t"] * dist.world_size
        record.update(step_stats)
        record["epoch"] = stream.position / len(stream.indices)
        if k.eval_every and step % k.eval_every == 0 and step < total_steps:
            record.update(run_eval(step))
        logger.log(step, record)
        bar.update(1)
        bar.set_postfix(short(record, ["loss", "kl", "rewards/margins"]))
        if k.save_every and step % k.save_every == 0 and step < total_steps:
            save(step)
    bar.close()
    if step > start_step:
        final = run_eval(step)
        logger.log(step, final)
        save(step)
        if dist.is_main and results:
            out = stage_dir / "eval_examples.json"
            previous = json.loads(out.read_text()) if out.exists() and start_step > 0 else {}
            out.write_text(json.dumps({**previous, **results}, indent=2))
        if final:
            say(f"[kto] held-out examples: loss {final.get('eval/loss', float('nan')):.4f}, margin "
                f"{final.get('eval/rewards/margins', float('nan')):.3f}, on the right side of z_ref "
                f"{final.get('eval/rewards/accuracy', float('nan')):.3f}", flush=True)
    engine.save_pretrained(final_dir, ctx.tokenizer, merged=saves_merged(cfg.model))
    barrier()
    del engine, ref_model
    return final_dir
