"""Supervised fine-tuning on demonstrations, with sequence packing and early stopping.

    demonstrations -> (prompt ids, answer ids) -> packed rows of max_seq_len -> NLL on answer tokens
    every eval_every steps: token-mean NLL on a held-out slice -> keep the best model, stop after
    `patience` evaluations without improvement; the final model is the best one.

Packing: examples are placed into rows of `sft.max_seq_len` tokens by best-fit decreasing, so
almost no compute goes to padding. Inside a row every example keeps its own positions (restarting
at 0) and attends only to itself: a block-diagonal causal mask ([B, 1, L, L], additive) for the
eager/SDPA attention that runs on CPUs, or position_ids alone for flash-attention kernels (varlen).
The loss of a packed row equals the sum of the examples' own losses (tests/grpo/stages/test_sft.py).

One optimizer step sees `tokens_per_batch // max_seq_len` rows per rank, processed
`micro_batch_size` rows at a time; the loss is the mean NLL over all answer tokens of the step on all
ranks (each micro-batch weighted by its share of tokens).
"""
from __future__ import annotations

import json
import math
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import torch

from grpo.algorithms.logprobs import gather_logprobs
from grpo.algorithms.packing import block_causal_mask, pack
from grpo.data.preferences import encode, encode_prompt_answers, render_answer, render_prompt
from grpo.data.tool_format import CodeBlockFormat
from grpo.data.prompt_stream import PromptStream
from grpo.data.rows import DataError, train_eval_split, validate_rows
from grpo.metrics import progress, short
from grpo.runtime.distributed import (all_gather_int, all_reduce_mean, barrier, is_main_process, lockstep_chunks,
                                      seed_everything, to_device)
from grpo.runtime.engine import TrainEngine
from grpo.runtime.faults import stop_if_requested
from grpo.runtime.attention import uses_varlen_attention
from grpo.runtime.lora import saves_merged
from grpo.runtime.models import load_model
from grpo.stages.context import StageContext

# Rows of one forward pass when the config does not say (sft.micro_batch_size).
DEFAULT_MICRO_ROWS = 8
# Held-out demonstrations when the config does not say (sft.eval_size): 5%, at most this many.
DEFAULT_EVAL_CAP = 500


@dataclass
class Demo:
    prompt_ids: list[int]
    answer_ids: list[int]  # what the loss is on (end-of-turn token included)
    # Tool demonstrations: True on the answer tokens the model writes; tool outputs are context, not targets.
    # None: every answer token is a target.
    answer_mask: list[bool] | None = None

    def __len__(self) -> int:
        return len(self.prompt_ids) + len(self.answer_ids)


def tokenize_demos(ds, ctx_cfg, tokenizer, max_seq_len: int, source: str = "sft data",
                   fmt=None) -> tuple[list[Demo], int]:
    """Demonstrations -> token ids; answers longer than the room left by the prompt are cut
    (returned count). A prompt that alone fills max_seq_len is a DataError naming the row. With tools
    enabled, `fmt` is the call format (default: the configured one, grpo.runtime.tools.make_format)."""
    d = ctx_cfg.data
    validate_rows(ds, [d.prompt_field, d.solution_field], source)
    if ctx_cfg.tools.enabled and fmt is None:
        from grpo.runtime.tools import make_format

        fmt = make_format(ctx_cfg.tools, tokenizer, d.system_prompt)
    tools = fmt.tools if fmt is not None else None
    demos, cut = [], 0
    for i, (question, solution) in enumerate(zip(ds[d.prompt_field], ds[d.solution_field])):
        prompt_ids, (answer_ids,) = encode_prompt_answers(str(question), [str(solution)], d, tokenizer, tools)
        answer_mask = None
        if fmt is not None:
            answer_ids, answer_mask = encode_tool_answer(str(question), str(solution), d, tokenizer, fmt)
        room = max_seq_len - len(prompt_ids)
        if room < 1:
            raise DataError(f"{source}: row {i}: the prompt is {len(prompt_ids)} tokens, leaving no room for the "
                            f"answer within sft.max_seq_len={max_seq_len}")
        if len(answer_ids) > room:
            answer_ids, cut = answer_ids[:room], cut + 1
            answer_mask = None if answer_mask is None else answer_mask[:room]
        demos.append(Demo(prompt_ids, answer_ids, answer_mask))
    return demos, cut


def encode_tool_answer(question: str, solution: str, data_cfg, tokenizer, fmt=None) -> tuple[list[int], list[bool]]:
    """A demonstration with tool turns as a rollout would hold it: the rendered answer (end-of-turn included) cut
    into model and tool segments by the call format `fmt` (grpo.data.tool_format; default code_block), each
    tokenized on its own, as a tool episode's segments are; (ids, mask) with the mask False on tool tokens. In the
    tool_call format a tool segment is what the chat template renders for the tool messages (the same text a
    rollout appends), in place of the demonstration's `<tool_response>` blocks."""
    fmt = fmt if fmt is not None else CodeBlockFormat()
    prompt_text = render_prompt(question, data_cfg, tokenizer, fmt.tools)
    answer = render_answer(question, prompt_text, solution, data_cfg, tokenizer, fmt.tools)
    ids, mask = [], []
    for text, by_model in fmt.demo_segments(answer):
        seg = encode(tokenizer, text)
        ids += seg
        mask += [by_model] * len(seg)
    return ids, mask


# ---------------------------------------------------------------------------------------------
# Packing


@dataclass
class PackedRow:
    input_ids: list[int]
    position_ids: list[int]  # restart at 0 for each example
    segment_ids: list[int]  # which example of the row a token belongs to
    loss_mask: list[bool]  # True on answer tokens


def build_row(demos: Sequence[Demo]) -> PackedRow:
    row = PackedRow([], [], [], [])
    for s, d in enumerate(demos):
        ids = d.prompt_ids + d.answer_ids
        row.input_ids += ids
        row.position_ids += list(range(len(ids)))
        row.segment_ids += [s] * len(ids)
        row.loss_mask += [False] * len(d.prompt_ids) + (d.answer_mask or [True] * len(d.answer_ids))
    return row


def pack_demos(demos: Sequence[Demo], max_seq_len: int) -> list[PackedRow]:
    return [build_row([demos[i] for i in idx]) for idx in pack([len(d) for d in demos], max_seq_len)]


def collate(rows: Sequence[PackedRow], pad_id: int) -> dict[str, torch.Tensor]:
    """Rows padded to the longest: input_ids, position_ids, segment_ids [B, L]; target_mask
    [B, L-1] where position t predicts token t+1 and t+1 is an answer token of the same example.
    Padding is a segment of its own (-1) so no query row of the mask is empty."""
    width = max(len(r.input_ids) for r in rows)
    ids, pos, seg, lm = [], [], [], []
    for r in rows:
        pad = width - len(r.input_ids)
        ids.append(r.input_ids + [pad_id] * pad)
        pos.append(r.position_ids + list(range(pad)))
        seg.append(r.segment_ids + [-1] * pad)
        lm.append(r.loss_mask + [False] * pad)
    seg_t, lm_t = torch.tensor(seg), torch.tensor(lm)
    target_mask = lm_t[:, 1:] & (seg_t[:, 1:] == seg_t[:, :-1])  # [B, L-1]
    return {"input_ids": torch.tensor(ids), "position_ids": torch.tensor(pos), "segment_ids": seg_t,
            "target_mask": target_mask, "real_tokens": int((seg_t >= 0).sum())}


def packed_logprobs(forward: Callable, batch: dict, *, varlen: bool, dtype: torch.dtype) -> torch.Tensor:
    """Logprob [B, L-1] of each next token of packed rows under `forward(ids, mask, position_ids)`."""
    device = batch["input_ids"].device
    mask = None if varlen else block_causal_mask(batch["segment_ids"].to(device), dtype)
    logits = forward(batch["input_ids"], mask, batch["position_ids"])[:, :-1]  # [B, L-1, V]
    return gather_logprobs(logits, batch["input_ids"][:, 1:])


# ---------------------------------------------------------------------------------------------
# Early stopping


@dataclass
class EarlyStopping:
    """Counts evaluations without an improvement of at least `min_delta`."""

    patience: int  # 0 disables stopping (the best model is still kept)
    min_delta: float = 0.0
    best: float = math.inf
    best_step: int = -1
    bad_evals: int = 0

    def update(self, loss: float, step: int) -> bool:
        """Record an eval loss; True when it is a new best."""
        if loss < self.best - self.min_delta:
            self.best, self.best_step, self.bad_evals = loss, step, 0
            return True
        self.bad_evals += 1
        return False

    @property
    def should_stop(self) -> bool:
        return self.patience > 0 and self.bad_evals >= self.patience


# ---------------------------------------------------------------------------------------------
# The loop


@dataclass
class SFTPlan:
    rows_per_step: int
    micro_rows: int
    grad_accum: int
    total_steps: int
    eval_size: int
    meta: dict = field(default_factory=dict)


def _eval_loss(engine: TrainEngine, rows: list[PackedRow], micro_rows: int, pad_id: int, varlen: bool,
               dtype: torch.dtype, dev: torch.device, filler_row: PackedRow) -> float:
    """Token-mean NLL of the answer tokens of `rows` (this rank's share), averaged over ranks by tokens."""
    nll, tokens = 0.0, 0
    engine.eval()
    with torch.no_grad():
        for chunk, filler in lockstep_chunks(rows, micro_rows, filler_row):
            b = to_device(collate(chunk, pad_id), dev)
            logps = packed_logprobs(engine.forward, b, varlen=varlen, dtype=dtype)
            if not filler:
                nll += float(-(logps * b["target_mask"]).sum())
                tokens += int(b["target_mask"].sum())
    engine.train()
    totals = all_reduce_mean({"nll": nll, "tokens": float(tokens)})
    return totals["nll"] / max(totals["tokens"], 1.0)


def _save_best(engine: TrainEngine, stage_dir: Path, tokenizer, step: int, loss: float, model_cfg) -> None:
    """Write the model to stage_dir/best through a temporary directory, so `best` is always whole."""
    tmp, best = stage_dir / "best.tmp", stage_dir / "best"
    if is_main_process() and tmp.exists():
        shutil.rmtree(tmp)
    engine.save_pretrained(tmp, tokenizer, merged=saves_merged(model_cfg))
    if is_main_process():
        (tmp / "sft_best.json").write_text(json.dumps({"step": step, "eval_loss": loss}))
        if best.exists():
            shutil.rmtree(best)
        tmp.rename(best)
    barrier()


def train(ctx: StageContext, init_model_path: str) -> Path:
    """SFT from `init_model_path`; returns the final Hugging Face model directory (the best one by
    held-out loss when evaluation is on)."""
    cfg, s, dist = ctx.cfg, ctx.cfg.sft, ctx.dist
    stage_dir = ctx.run_dir / "sft"
    ckpt_dir, final_dir, best_dir = stage_dir / "checkpoints", stage_dir / "final", stage_dir / "best"
    say = print if dist.is_main else (lambda *a, **k: None)
    seed_everything(cfg.seed + dist.rank)
    pad_id = ctx.tokenizer.pad_token_id if ctx.tokenizer.pad_token_id is not None else ctx.tokenizer.eos_token_id

    # ---- data: everything is tokenized and checked before a model is loaded ----------------------
    ds = ctx.splits.sft
    if ds is None or len(ds) == 0:
        raise DataError(f"{cfg.data.source}: stage sft needs demonstrations (a '{cfg.data.solution_field}' "
                        "column, data.solution_field)")
    eval_size = getattr(s, "eval_size", None)
    if eval_size is None:
        eval_size = min(DEFAULT_EVAL_CAP, len(ds) // 20)
    train_ds, eval_ds = train_eval_split(ds, eval_size, cfg.seed) if eval_size > 0 else (ds, ds.select([]))
    fmt = ctx.tool_format if cfg.tools.enabled else None
    demos, cut = tokenize_demos(train_ds, cfg, ctx.tokenizer, s.max_seq_len, cfg.data.source, fmt)
    eval_demos, _ = tokenize_demos(eval_ds, cfg, ctx.tokenizer, s.max_seq_len, cfg.data.source, fmt)
    rows = pack_demos(demos, s.max_seq_len)
    eval_rows = pack_demos(eval_demos, s.max_seq_len)[dist.rank::dist.world_size]
    real = sum(len(d) for d in demos)
    if len(rows) < dist.world_size:
        raise DataError(f"{cfg.data.source}: {len(rows)} packed rows cannot feed {dist.world_size} ranks")

    rows_per_step = max(1, s.tokens_per_batch // s.max_seq_len)
    micro_rows = min(rows_per_step, getattr(s, "micro_batch_size", None) or DEFAULT_MICRO_ROWS)
    grad_accum = math.ceil(rows_per_step / micro_rows)
    rows_per_rank = len(rows) // dist.world_size
    total_steps = s.max_steps or max(1, math.ceil(s.epochs * rows_per_rank / rows_per_step))
    say(f"[sft] {len(demos)} demonstrations ({cut} answers cut to sft.max_seq_len={s.max_seq_len}) packed into "
        f"{len(rows)} rows ({real / (len(rows) * s.max_seq_len):.1%} of the tokens are real); {len(eval_demos)} "
        f"held out; {rows_per_step} rows/step x {dist.world_size} rank(s), {total_steps} steps", flush=True)

    # ---- engine and resume ---------------------------------------------------------------------------
    model = load_model(init_model_path, cfg.model)
    varlen, dtype = uses_varlen_attention(model), next(model.parameters()).dtype
    engine = TrainEngine(model, cfg.engine, s.optim, total_steps=total_steps, micro_batch_size=micro_rows,
                         grad_accum=grad_accum)
    dev = next(engine.module.parameters()).device
    stopper = EarlyStopping(s.patience, getattr(s, "min_delta", 0.0))
    start_step, position, stopped = 0, 0, False
    state = engine.resume(ckpt_dir, cfg.resume, "sft", init_model=init_model_path)
    if state is not None:
        start_step, position = state["step"], state["data_position"][dist.rank]
        stopper = EarlyStopping(**state["early_stopping"])
        stopped = state.get("stopped", False)
    stream = PromptStream(len(rows), cfg.seed, dist.rank, dist.world_size, position)
    logger = ctx.log("sft")
    evaluate = len(eval_demos) > 0

    def save(step: int, stop: bool = False) -> None:
        positions = [int(p) for p in all_gather_int(stream.position)]
        engine.save_checkpoint(ckpt_dir, f"step{step}", {"step": step, "data_position": positions,
                                                         "early_stopping": asdict(stopper), "stopped": stop})

    def run_eval(step: int) -> dict:
        loss = _eval_loss(engine, eval_rows, micro_rows, pad_id, varlen, dtype, dev, rows[0])
        if stopper.update(loss, step):
            _save_best(engine, stage_dir, ctx.tokenizer, step, loss, ctx.cfg.model)
        return {"eval/loss": loss, "eval/best_loss": stopper.best, "eval/bad_evals": stopper.bad_evals}

    engine.train()
    # With early stopping the step budget is only an upper bound (~8 of 30 epochs in the embedded run): the bar
    # counts steps and shows what is known instead: epochs so far, the best eval loss, evaluations of patience left.
    early_stopping = evaluate and bool(s.eval_every) and s.patience > 0
    bar = progress(total=None if early_stopping else total_steps, initial=start_step, desc="sft",
                   enabled=ctx.show_progress)
    step, last_eval = start_step, None
    while step < total_steps and not stopped:
        stop_if_requested("sft", step, engine, save)  # SIGTERM/SIGINT on any rank: save, stop
        t0 = time.perf_counter()
        batch_rows = [rows[i] for _, i in stream.take(rows_per_step)]
        micro = [collate(batch_rows[i:i + micro_rows], pad_id) for i in range(0, len(batch_rows), micro_rows)]
        local_tokens = sum(int(m["target_mask"].sum()) for m in micro)
        global_tokens = all_reduce_mean({"t": float(local_tokens)})["t"] * dist.world_size
        nll_sum = 0.0
        for m in micro:
            m = to_device(m, dev)
            logps = packed_logprobs(engine.forward, m, varlen=varlen, dtype=dtype)  # [b, L-1]
            nll = -(logps * m["target_mask"]).sum()
            # DeepSpeed averages gradients over ranks: scale by world size for a global token mean.
            engine.backward(nll * dist.world_size / max(global_tokens, 1.0))
            nll_sum += float(nll.detach())
        stats = engine.step()
        step += 1
        elapsed = time.perf_counter() - t0
        computed = sum(m["input_ids"].numel() for m in micro)
        real_tokens = sum(m["real_tokens"] for m in micro)
        record = all_reduce_mean({"tokens_per_second": real_tokens / max(elapsed, 1e-9),
                                  "packing/efficiency": real_tokens / max(computed, 1)})
        record["tokens_per_second"] *= dist.world_size
        record.update({"loss": all_reduce_mean({"n": nll_sum})["n"] * dist.world_size / max(global_tokens, 1.0),
                       "answer_tokens": global_tokens, "epoch": stream.position / len(stream.indices), **stats})
        if evaluate and s.eval_every and step % s.eval_every == 0:
            record.update(run_eval(step))
            last_eval = step
        logger.log(step, record)
        bar.update(1)
        postfix = short(record, ["loss", "eval/loss", "tokens_per_second"])
        if early_stopping:
            postfix.update(epoch=f"{record['epoch']:.1f}/{s.epochs:g}", patience=f"{s.patience - stopper.bad_evals} left")
            if math.isfinite(stopper.best):
                postfix["best"] = f"{stopper.best:.4g}@{stopper.best_step}"
        bar.set_postfix(postfix)
        if stopper.should_stop:
            say(f"\n[sft] early stop at step {step}: eval loss has not improved for {stopper.bad_evals} "
                f"evaluations (best {stopper.best:.4f} at step {stopper.best_step})", flush=True)
            stopped = True
            save(step, stop=True)
        elif s.save_every and step % s.save_every == 0 and step < total_steps:
            save(step)
    bar.close()
    if evaluate and not stopped and last_eval != step and step > start_step:
        logger.log(step, run_eval(step))
    if step > start_step and not stopped:
        save(step)

    # ---- the final model: the best evaluated one ------------------------------------------------------
    if is_main_process() and final_dir.exists():
        shutil.rmtree(final_dir)
    barrier()
    if evaluate and best_dir.exists():
        if is_main_process():
            shutil.copytree(best_dir, final_dir)
        say(f"[sft] final model = best checkpoint (step {stopper.best_step}, eval loss {stopper.best:.4f})",
            flush=True)
    else:
        engine.save_pretrained(final_dir, ctx.tokenizer, merged=saves_merged(ctx.cfg.model))
    barrier()
    del engine
    return final_dir
