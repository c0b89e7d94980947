"""The GRPO loop, in one readable function:

    prompts -> rollout (G per prompt) -> verifiers -> advantages -> policy loss -> step -> push weights

Each rank samples, scores and trains on its own whole groups (a group never straddles ranks);
DeepSpeed averages gradients; statistics are averaged over ranks for logging.
"""
from __future__ import annotations

import math
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from grpo.algorithms.advantages import group_advantages
from grpo.algorithms.logprobs import entropy_from_logits, gather_logprobs
from grpo.algorithms.packing import PromptSharing, pack_shared_prefix, packed_token_logprobs
from grpo.algorithms.policy_losses import policy_loss, soft_overlong_penalty
from grpo.data.prompt_stream import PromptStream, request_seed
from grpo.metrics import progress, short
from grpo.runtime.distributed import (all_gather_int, all_gather_objects, all_reduce_mean, barrier, device,
                                      seed_everything, to_device)
from grpo.runtime.engine import TrainEngine
from grpo.runtime.faults import stop_if_requested
from grpo.runtime.attention import attention_cost_ratio, uses_varlen_attention
from grpo.runtime.lora import resolve_push, saves_merged
from grpo.runtime.models import load_model
from grpo.runtime.rollout import Group, SamplingSpec, WeightSyncError
from grpo.runtime.tool_rollout import generate_timed, tool_metrics
from grpo.stages.context import StageContext
from grpo.stages.reference import live_reference
from grpo.stages.evaluation import run_eval
from grpo.stages.serving import score_groups


@dataclass
class Sample:
    """One completion with everything the update needs."""

    prompt_ids: list[int]
    completion_ids: list[int]
    sampler_logprobs: list[float] | None
    truncated: bool
    reward: float
    advantage: float = 0.0
    in_loss: bool = True  # False for filler groups (dynamic sampling could not fill the batch)
    # Tool episodes: True on the completion tokens the model sampled; tool answers (in context) are out of the loss,
    # the KL and the entropy. None: every completion token is the model's.
    loss_mask: list[bool] | None = None


@dataclass
class PendingRound:
    """Prompts taken from the stream and the generation of their groups, started or done: colocated, generated when
    collected; async, submitted to an inference process `policy_step` (the optimizer step whose policy samples
    them) and generated while the trainer works."""

    picks: list[tuple[int, int]]  # (stream position, example index)
    policy_step: int
    job: object = None
    result: dict | None = None  # groups, rewards, per_verifier, t_gen, t_ver, [idle_s, wait_s]


def _pad(rows: list[list], value) -> torch.Tensor:
    width = max(len(r) for r in rows)
    return torch.tensor([r + [value] * (width - len(r)) for r in rows])


def micro_batch_tensors(samples: list[Sample], pad_id: int,
                        sharing: PromptSharing | None = None) -> dict[str, torch.Tensor]:
    """On the shifted grid [b, S-1] where position t predicts token t+1: the completion mask, the sampler
    logprobs, the advantages and truncation flags. The model's input is either right-padded
    prompt+completion rows (input_ids, attention_mask [b, S]) or, with `sharing`, each
    distinct prompt once with its completions after it (`packed`, see grpo.algorithms.packing) plus the grid cell
    (grid_rows, grid_cols [N]) of every packed completion token."""
    seqs = [s.prompt_ids + s.completion_ids for s in samples]
    width = max(len(x) for x in seqs) - 1
    mask = torch.zeros(len(samples), width, dtype=torch.bool)  # [b, S-1]
    sampler = torch.zeros(len(samples), width)
    for i, s in enumerate(samples):
        start, end = len(s.prompt_ids) - 1, len(s.prompt_ids) - 1 + len(s.completion_ids)
        if s.in_loss:
            mask[i, start:end] = True if s.loss_mask is None else torch.tensor(s.loss_mask, dtype=torch.bool)
        if s.sampler_logprobs is not None:
            sampler[i, start:end] = torch.tensor(s.sampler_logprobs)
    out = {"mask": mask, "sampler_logprobs": sampler, "advantages": torch.tensor([s.advantage for s in samples]),
           "truncated": torch.tensor([s.truncated for s in samples])}
    if sharing is None or any(not s.completion_ids for s in samples):
        out["input_ids"] = _pad(seqs, pad_id)  # [b, S]
        out["attention_mask"] = _pad([[1] * len(x) for x in seqs], 0)  # [b, S]
        return out
    by_prompt: dict[tuple[int, ...], list[int]] = {}  # equal prompts share one prefix, whatever group they came from
    for i, s in enumerate(samples):
        by_prompt.setdefault(tuple(s.prompt_ids), []).append(i)
    order = [i for idx in by_prompt.values() for i in idx]  # packed sequence n is sample order[n]
    packed = pack_shared_prefix([(list(k), [samples[i].completion_ids for i in idx]) for k, idx in by_prompt.items()],
                                pad_id, sharing.max_row_tokens, sharing.attention_cost)
    out["packed"] = packed
    out["grid_rows"] = torch.tensor(order)[packed.sequence]
    out["grid_cols"] = torch.tensor([len(samples[i].prompt_ids) - 1 for i in order])[packed.sequence] + packed.offset
    return out


def sequence_logprobs(forward, batch: dict, temperature: float, with_entropy: bool = False,
                      mask_dtype: torch.dtype = torch.float32):
    """Trainer logprobs [b, S-1] of each next token (and entropies, without gradient) under `forward`;
    packed batches fill the completion cells of the grid and leave the rest 0."""
    temperature = max(temperature, 1e-6)
    if "packed" in batch:
        lp, ent = packed_token_logprobs(forward, batch["packed"], temperature=temperature,
                                        with_entropy=with_entropy, dtype=mask_dtype)  # [N]
        cells = (batch["grid_rows"], batch["grid_cols"])
        logps = lp.new_zeros(batch["mask"].shape).index_put(cells, lp)
        return logps, (None if ent is None else ent.new_zeros(batch["mask"].shape).index_put(cells, ent))
    logits = forward(batch["input_ids"], batch["attention_mask"])[:, :-1]  # [b, S-1, V]
    logps = gather_logprobs(logits, batch["input_ids"][:, 1:], temperature=temperature)
    ent = None
    if with_entropy:
        with torch.no_grad():
            ent = entropy_from_logits(logits.detach(), temperature=temperature)
    return logps, ent


def _seq_len(s: Sample) -> int:
    return len(s.prompt_ids) + len(s.completion_ids)


def padding_buckets(samples: list[Sample], max_padding: float) -> list[list[Sample]]:
    """Split a micro-batch into forward passes so that padding is at most `max_padding` of each pass's
    [b, S] grid: one truncated completion would otherwise pad the whole micro-batch to max_tokens (on
    the tiny model that made an update 4x slower). Sequences go in ascending length; a pass closes when
    the next (longer) sequence would push its padding over the limit. 1.0: one pass per micro-batch."""
    buckets: list[list[Sample]] = []
    real = 0
    for s in sorted(samples, key=_seq_len):
        n = _seq_len(s)
        if buckets and 1 - (real + n) / ((len(buckets[-1]) + 1) * n) <= max_padding:
            buckets[-1].append(s)
            real += n
        else:
            buckets.append([s])
            real = n
    return buckets


def _micro_batches(samples: list[Sample], size: int, count: int, by_length: bool = True) -> list[list[Sample]]:
    """`count` micro-batches (DeepSpeed's fixed accumulation count): the samples in the loss, `size` at a
    time, then one filler sample per remaining slot. Filler carries no gradient, so running it whole (half
    the batch when dynamic sampling comes up short) only burnt compute."""
    # Padded rows: sorted by length so that each micro-batch (and each forward pass in it, `padding_buckets`)
    # pads little. Shared prompts: in group order, so that a group's completions share one prompt.
    real = [s for s in samples if s.in_loss]
    real = sorted(real, key=_seq_len) if by_length else real
    filler = [s for s in samples if not s.in_loss] or real[-1:]
    micro = [real[i:i + size] for i in range(0, len(real), size)]
    while len(micro) < count:
        micro.append([filler[len(micro) % len(filler)]])
    return micro


def train(ctx: StageContext, init_model_path: str) -> Path:
    """GRPO from `init_model_path`; returns the final Hugging Face model directory."""
    cfg, g, dist = ctx.cfg, ctx.cfg.grpo, ctx.dist
    stage_dir = ctx.run_dir / "grpo"
    ckpt_dir, final_dir = stage_dir / "checkpoints", stage_dir / "final"
    seed_everything(cfg.seed + dist.rank)
    examples = ctx.examples("rl")
    rollout, logger = ctx.rollout, ctx.log("grpo")
    G, P = g.group_size, g.prompts_per_step
    batch_size = P * G
    n_micro = math.ceil(batch_size / g.micro_batch_size)
    spec = SamplingSpec.from_config(cfg.rollout, n=G)
    pad_id = ctx.tokenizer.pad_token_id

    model = load_model(init_model_path, cfg.model)
    # Flash-attention kernels cannot take the tree mask that lets a group share its prompt.
    sharing = (PromptSharing(g.shared_row_tokens, attention_cost_ratio(model))
               if g.share_prompt and not uses_varlen_attention(model) else None)
    if g.share_prompt and sharing is None and dist.is_main:
        print("[grpo] grpo.share_prompt: the model uses flash attention, which cannot take a tree mask; "
              "training on padded rows", flush=True)
    engine = TrainEngine(model, cfg.engine, g.optim, total_steps=g.steps * g.num_iterations,
                         micro_batch_size=g.micro_batch_size, grad_accum=n_micro)
    dev, mask_dtype = device(), next(engine.module.parameters()).dtype
    # ZeRO-3 gathers parameters collectively in every forward, so all ranks must run the same number of
    # passes: one per micro-batch (padding buckets would differ from rank to rank and hang the step).
    max_padding = 1.0 if cfg.engine.zero_stage == 3 and dist.world_size > 1 else g.max_padding
    # The KL reference: the model the stage started from (with a fresh LoRA adapter, the policy with it disabled).
    ref_forward, ref_model = live_reference(engine, init_model_path, cfg.model) if g.beta > 0 else (None, None)
    # model.lora.push: adapter: only the adapter moves into vLLM after a step (each rank writes its own copy).
    adapter_push = None
    if engine.is_lora and resolve_push(cfg.model.lora, cfg.rollout.backend) == "adapter":
        adapter_push = Path(tempfile.mkdtemp(prefix=f"grpo_adapter_push_rank{dist.rank}_"))

    start_step, position, pending_state = 0, 0, None
    state = engine.resume(ckpt_dir, cfg.resume, "grpo", init_model=init_model_path)
    if state is not None:
        start_step, position = state["step"], state["data_position"][dist.rank]
        pending_state = (state.get("pending_rounds") or [None] * dist.world_size)[dist.rank]
    stream = PromptStream(len(examples), cfg.seed, dist.rank, dist.world_size, position)
    push_s = push_policy(engine, rollout, adapter_push, first=True)  # the engine may hold another stage's weights
    # rollout.mode: async: batch b is generated by the policy of step max(0, b - max_staleness), submitted right after
    # that policy's push, so the inference processes sample it while the trainer works on the batches before it.
    asynchronous = cfg.rollout.mode == "async"
    depth = cfg.rollout.max_staleness if asynchronous else 0
    pending: dict[int, PendingRound] = dict(pending_state or {})  # batch index -> its first round

    def round_inputs(r: PendingRound) -> tuple[list, list[int]]:
        return [examples[i] for _, i in r.picks], [request_seed(cfg.seed, pos) for pos, _ in r.picks]

    def start_round(n: int, policy_step: int) -> PendingRound:
        r = PendingRound(stream.take(n), policy_step)
        if asynchronous:
            batch_ex, seeds = round_inputs(r)
            r.job = rollout.submit([e.prompt for e in batch_ex], spec, seeds, rows=[e.row for e in batch_ex])
        return r

    def finish_round(r: PendingRound) -> dict:
        if r.result is not None:
            return r.result
        t0 = time.perf_counter()
        if asynchronous:  # generated and scored by an inference process
            r.result = dict(rollout.collect(r.job), wait_s=time.perf_counter() - t0)
            r.job = None
            return r.result
        batch_ex, seeds = round_inputs(r)
        groups, t_tools = generate_timed(ctx.sampler, [e.prompt for e in batch_ex], spec, seeds)
        t1 = time.perf_counter()
        per_verifier: dict[str, list[float]] = {}
        rewards = score_groups(ctx.verifier, groups, [e.row for e in batch_ex], per_verifier)
        r.result = {"groups": groups, "rewards": rewards, "per_verifier": per_verifier, "t_gen": t1 - t0,
                    "t_ver": time.perf_counter() - t1, "t_tools": t_tools}
        return r.result

    def save(step: int) -> None:
        positions = [int(p) for p in all_gather_int(stream.position)]
        # async: the batches already taken from the stream, generated by earlier policies (waited for here), go
        # into the checkpoint, so a resumed run trains on the same samples with the same staleness
        rounds = {b: PendingRound(r.picks, r.policy_step, None, finish_round(r)) for b, r in pending.items()}
        engine.save_checkpoint(ckpt_dir, f"step{step}", {"step": step, "data_position": positions,
                                                         "pending_rounds": all_gather_objects(rounds)})

    bar = progress(total=g.steps, initial=start_step, desc="grpo", enabled=ctx.show_progress)
    for step in range(start_step, g.steps):
        stop_if_requested("grpo", step, engine, save)  # SIGTERM/SIGINT on any rank: save, stop
        t_step = time.perf_counter()
        for b in range(step, min(step + depth + 1, g.steps)):
            if b not in pending:
                pending[b] = start_round(P, policy_step=step)
        timings = {"timing/weight_push": push_s}
        # ---- rollout + verification (with DAPO dynamic sampling) --------------------------------
        kept: list[tuple[Group, list[float]]] = []
        dropped: list[tuple[Group, list[float]]] = []
        per_verifier: dict[str, list[float]] = {}
        rounds, t_gen, t_ver, t_tools, all_rewards, flat_groups = 0, 0.0, 0.0, 0.0, [], 0
        waited, generator_idle = 0.0, 0.0
        staleness = step - pending[step].policy_step
        sampled = []  # every completion of the step (tool metrics)
        while len(kept) < P and rounds < (g.max_sampling_rounds if g.dynamic_sampling else 1):
            # the batch's prefetched first round, then refills from the current policy
            out = finish_round(pending.pop(step) if rounds == 0 else start_round(P - len(kept), policy_step=step))
            groups, rewards = out["groups"], out["rewards"]
            for name, values in out["per_verifier"].items():
                per_verifier.setdefault(name, []).extend(values)
            waited, generator_idle = waited + out.get("wait_s", 0.0), generator_idle + out.get("idle_s", 0.0)
            if cfg.tools.call_cost:  # tools.call_cost per call, before the groups are judged flat or not
                rewards = [[r - cfg.tools.call_cost * len(c.tool_calls or []) for r, c in zip(rw, grp.completions)]
                           for rw, grp in zip(rewards, groups)]
            sampled.extend(c for grp in groups for c in grp.completions)
            t_gen, t_ver, t_tools = t_gen + out["t_gen"], t_ver + out["t_ver"], t_tools + out.get("t_tools", 0.0)
            for grp, rw in zip(groups, rewards):
                all_rewards.extend(rw)
                flat_groups += max(rw) == min(rw)
                if g.dynamic_sampling and max(rw) == min(rw):
                    dropped.append((grp, rw))
                else:
                    kept.append((grp, rw))
            rounds += 1
        n_real = len(kept)
        # A batch has a fixed shape (DeepSpeed's accumulation count); unfillable slots hold dropped
        # groups with no tokens in the loss.
        filler = (dropped + kept)[: P - n_real] if n_real < P else []
        batch_groups = kept[:P] + filler
        timings.update({"timing/generation": t_gen, "timing/verification": t_ver})

        # ---- advantages ----------------------------------------------------------------------------
        samples: list[Sample] = []
        for k, (grp, rw) in enumerate(batch_groups):
            for c, r in zip(grp.completions, rw):
                samples.append(Sample(grp.prompt_ids, c.token_ids, c.logprobs, c.truncated, r, in_loss=k < n_real,
                                      loss_mask=c.loss_mask))
        rewards_t = torch.tensor([s.reward for s in samples])
        if g.overlong_buffer > 0:
            lengths = torch.tensor([len(s.completion_ids) for s in samples])
            rewards_t = rewards_t + soft_overlong_penalty(lengths, cfg.rollout.max_tokens, g.overlong_buffer,
                                                          g.overlong_penalty)
        adv = group_advantages(rewards_t, G, method=g.advantage,
                               scale=g.scale if g.advantage == "grpo" else "none")
        for s, a in zip(samples, adv.advantages.tolist()):
            s.advantage = a
        micro = _micro_batches(samples, g.micro_batch_size, n_micro, by_length=sharing is None)
        # [micro-batch][forward pass] -> tensors; one backward per micro-batch (DeepSpeed's count)
        passes = [[to_device(micro_batch_tensors(m, pad_id, sharing), dev)] if sharing else
                  [to_device(micro_batch_tensors(b, pad_id), dev) for b in padding_buckets(m, max_padding)]
                  for m in micro]
        tensors = [t for m in passes for t in m]
        loss_tokens = sum(int((t["mask"] & ~(t["truncated"][:, None] & g.overlong_filter)).sum()) for t in tensors)
        loss_seqs = sum(s.in_loss and not (g.overlong_filter and s.truncated) for s in samples)

        # ---- reference and old-policy logprobs ------------------------------------------------------
        t0 = time.perf_counter()
        temp = cfg.rollout.temperature
        with torch.no_grad():
            for t in tensors:
                if ref_forward is not None:
                    t["ref_logprobs"] = sequence_logprobs(ref_forward, t, temp, mask_dtype=mask_dtype)[0]
                if g.num_iterations > 1:
                    t["old_logprobs"] = sequence_logprobs(engine.forward, t, temp, mask_dtype=mask_dtype)[0]
        timings["timing/logprob_passes"] = time.perf_counter() - t0

        # ---- update -----------------------------------------------------------------------------------
        t0 = time.perf_counter()
        rollout.sleep()
        engine.train()
        stats_acc: dict[str, float] = {}
        n_stat = max(sum(bool(t["mask"].any()) for t in tensors), 1)
        mismatch = [0.0, 0]  # |trainer - sampler| logprob summed over loss tokens, and their count

        def pass_loss(t: dict, it: int) -> torch.Tensor:
            logps, ent = sequence_logprobs(engine.forward, t, temp, with_entropy=(it == 0), mask_dtype=mask_dtype)
            loss, st = policy_loss(
                logps, t.get("old_logprobs"), t["advantages"], t["mask"],
                epsilon_low=g.epsilon_low, epsilon_high=g.epsilon_high, ratio_level=g.ratio_level,
                aggregation=g.aggregation,
                constant_normalizer=g.constant_normalizer or float(cfg.rollout.max_tokens),
                batch_num_tokens=float(loss_tokens), batch_num_sequences=float(loss_seqs),
                ref_logprobs=t.get("ref_logprobs"), beta=g.beta,
                sampler_logprobs=t["sampler_logprobs"] if spec.temperature > 0 else None,
                tis_level=None if g.tis_level == "none" else g.tis_level, tis_cap=g.tis_cap,
                truncated=t["truncated"] if g.overlong_filter else None, entropy=ent)
            if it == 0:
                m = t["mask"]
                mismatch[0] += float((logps.detach() - t["sampler_logprobs"]).abs()[m].sum())
                mismatch[1] += int(m.sum())
                for k, v in st.items():
                    v = float(v)
                    if math.isfinite(v) and bool(m.any()):  # filler-only passes: no stats
                        stats_acc[k] = stats_acc.get(k, 0.0) + v / n_stat
            return loss

        for it in range(g.num_iterations):
            for micro_passes in passes:
                # Each pass's loss is normalized by batch-wide counts, so their sum is this micro-batch's share.
                engine.backward(sum(pass_loss(t, it) for t in micro_passes))
            step_stats = engine.step()
        engine.eval()
        timings["timing/update"] = time.perf_counter() - t0
        rollout.wake_up()
        push_s = push_policy(engine, rollout, adapter_push)
        timings["timing/step"] = time.perf_counter() - t_step
        if asynchronous:
            # trainer idle waiting for the batch; generator idle waiting for weights or work (reported by the
            # inference process with each result); the previous transfer (training rank 0; logged below)
            timings.update({"async/staleness": staleness, "timing/wait_for_batch": waited,
                            "timing/wait_for_weights": generator_idle})

        # ---- metrics ----------------------------------------------------------------------------------
        lengths = [len(s.completion_ids) for s in samples[: n_real * G]] or [0]
        gen_tokens = sum(len(c.token_ids) for grp, _ in batch_groups for c in grp.completions)
        ar = torch.tensor(all_rewards)
        local = {
            "reward/mean": float(ar.mean()), "reward/std": float(ar.std()) if len(ar) > 1 else 0.0,
            # over every sampled group, before dynamic sampling dropped any
            "frac_reward_zero_std": flat_groups / max(len(all_rewards) // G, 1),
            "completions/mean_length": sum(lengths) / len(lengths), "completions/max_length": max(lengths),
            "completions/p90_length": sorted(lengths)[int(0.9 * (len(lengths) - 1))],  # the tail that sets gen time
            "completions/clipped_ratio": sum(s.truncated for s in samples) / len(samples),
            "sampling/rounds": rounds, "sampling/dropped_groups": len(dropped), "sampling/filler_groups": len(filler),
            "sampler_logprob_diff": mismatch[0] / max(mismatch[1], 1),
            "tokens_per_second": gen_tokens / max(t_gen, 1e-9), "completions/tokens": gen_tokens,
            **{f"rewards/{k}/mean": sum(v) / len(v) for k, v in per_verifier.items()},
            **{f"policy/{k}": v for k, v in stats_acc.items()}, **step_stats, **timings,
        }
        local.update(ctx.verifier.metrics())  # cumulative verifier errors/timeouts
        if cfg.tools.enabled:
            local.update(tool_metrics(sampled))
            local["timing/tools"] = t_tools  # part of timing/generation
        record = all_reduce_mean(local)
        record["timing/weight_push"] = push_s
        if asynchronous and dist.is_main:
            record.update({"timing/weight_transfer": rollout.last_transfer["seconds"],
                           "async/transfer_bytes": rollout.last_transfer["bytes"]})
        if g.check_weight_sync:
            record.update(weight_sync_error(engine, rollout, samples[0], pad_id))
            check_sync(record, sync_tolerance(cfg), step + 1)
        record["epoch"] = stream.position / len(stream.indices)
        if g.eval_every and (step + 1) % g.eval_every == 0 and step + 1 < g.steps:
            record.update({f"eval/{k}": v for k, v in run_eval(ctx).items()})
        logger.log(step + 1, record)
        bar.update(1)
        bar.set_postfix(short(record, ["reward/mean", "policy/kl", "completions/mean_length", "eval/pass@1"]))
        if g.save_every and (step + 1) % g.save_every == 0 and step + 1 < g.steps:
            save(step + 1)
    bar.close()
    if g.steps > start_step:
        save(g.steps)
    engine.save_pretrained(final_dir, ctx.tokenizer, merged=saves_merged(cfg.model))
    barrier()
    if adapter_push is not None:
        shutil.rmtree(adapter_push, ignore_errors=True)
    del engine
    return final_dir


def push_policy(engine: TrainEngine, rollout, adapter_dir: Path | None, first: bool = False) -> float:
    """Give the rollout engine the trainer's policy; returns seconds taken. Full weights (LoRA: merged), or with
    `adapter_dir` the adapter alone, on top of the base weights that the first push of the stage loads."""
    if adapter_dir is None:
        return rollout.push_weights(engine.named_weights())
    t0 = time.perf_counter()
    if first:
        with engine.adapter_disabled():
            rollout.push_weights(engine.named_weights())
    engine.save_adapter(adapter_dir, every_rank=True)
    rollout.push_adapter(adapter_dir)
    return time.perf_counter() - t0


def sync_tolerance(cfg) -> float | None:
    if cfg.grpo.sync_tolerance is not None:
        return cfg.grpo.sync_tolerance
    return 1e-3 if cfg.model.dtype == "float32" and cfg.engine.precision == "fp32" else None


def check_sync(record: dict, tolerance: float | None, step: int) -> None:
    """Stop the run when the rollout engine no longer samples from the trained policy."""
    diff = record["sync/max_logprob_diff"]
    if tolerance is None or not diff > tolerance:
        return
    effect = record.get("sync/adapter_effect")
    hint = (f"; the LoRA adapter moves logprobs by up to {effect:.3g}, so an engine sampling from the base model "
            "would differ by about that" if effect is not None else "")
    raise WeightSyncError(f"grpo.check_weight_sync: after the push of step {step} the rollout engine's logprobs differ "
                       f"from the trainer's by {diff:.3g} > grpo.sync_tolerance={tolerance:g}{hint}")


@torch.no_grad()
def weight_sync_error(engine: TrainEngine, rollout, sample: Sample, pad_id: int) -> dict[str, float]:
    """`sync/max_logprob_diff`: the largest |engine logprob - trainer logprob| over one completion's tokens
    (temperature 1). With LoRA also `sync/adapter_effect`: the largest |trainer - trainer with the adapter
    disabled|, so a rollout that sampled from the base model would show sync/max_logprob_diff near this."""
    engine_lps = torch.tensor(rollout.token_logprobs(sample.prompt_ids, sample.completion_ids))
    t = to_device(micro_batch_tensors([sample], pad_id), device())
    t["mask"][0, len(sample.prompt_ids) - 1:len(sample.prompt_ids) - 1 + len(sample.completion_ids)] = True
    trainer_lps = sequence_logprobs(engine.forward, t, 1.0)[0][t["mask"]].cpu()
    out = {"sync/max_logprob_diff": float((engine_lps - trainer_lps).abs().max()) if len(engine_lps) else 0.0}
    if engine.is_lora:
        with engine.adapter_disabled():
            base_lps = sequence_logprobs(engine.forward, t, 1.0)[0][t["mask"]].cpu()
        out["sync/adapter_effect"] = float((trainer_lps - base_lps).abs().max()) if len(base_lps) else 0.0
    # The largest over all ranks: every rank then takes the same decision in `check_sync`.
    every = all_gather_objects(out)
    return {k: max(o[k] for o in every) for k in out}
