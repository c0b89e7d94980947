"""The pipeline: run the configured stages in order (sft -> dpo -> kto -> grpo), each starting from the
previous stage's model, evaluating after each one with the shared rollout engine (and, with `eval.gate`,
stopping or falling back when a stage lowers the held-out metric: grpo.stages.gate), and writing the
run directory: config.yaml, metrics.jsonl, summary.json, plots, checkpoints, final models."""
from __future__ import annotations

import json
import time

from grpo.config import RunConfig, save_resolved
from grpo.stages.context import StageContext
from grpo.data.rows import load_splits
from grpo.runtime.distributed import barrier, seed_everything
from grpo.runtime.engine import init_distributed
from grpo.runtime.faults import (install_stop_signals, is_peer_failure, peer_lost, restore_signals,
                                 stop_if_requested)
from grpo.runtime.lora import is_adapter_only
from grpo.runtime.models import load_tokenizer, load_weights, resolve_model_path
from grpo.stages.evaluation import run_eval
from grpo.stages.gate import GateStopped, describe, verdict


def _stage_module(stage: str):
    if stage == "sft":
        from grpo.stages import sft as module
    elif stage == "dpo":
        from grpo.stages import dpo as module
    elif stage == "kto":
        from grpo.stages import kto as module
    else:
        from grpo.stages import grpo as module
    return module


def _stage_fingerprint(cfg: RunConfig, stage: str, init_model: str) -> dict:
    """What a finished stage was run with; a stage is skipped on resume only when this is unchanged
    (so raising grpo.steps continues training from the last checkpoint instead)."""
    from omegaconf import OmegaConf

    section = OmegaConf.to_container(OmegaConf.structured(getattr(cfg, stage)))
    return {"stage": stage, "init_model": init_model, "config": json.loads(json.dumps(section, default=str))}


def setup(cfg: RunConfig, model_path: str | None = None) -> StageContext:
    dist = init_distributed(cfg.engine, cfg.rollout)
    seed_everything(cfg.seed)
    run_dir = cfg.run_dir
    if dist.is_main:
        save_resolved(cfg, run_dir)
        if model_path is None:
            resolve_model_path(cfg.model)  # builds the embedded model once, on rank 0
    barrier()
    if cfg.rollout.mode == "async":  # the inference processes build their engines on that model too
        from grpo.runtime.inference import global_barrier

        global_barrier("setup", cfg.rollout.async_timeout_s)
    model_path = model_path or resolve_model_path(cfg.model)
    tokenizer = load_tokenizer(model_path, cfg.model)
    splits = load_splits(cfg.data, cfg.seed, cfg.tools.format)
    ctx = StageContext(cfg=cfg, dist=dist, run_dir=run_dir, base_model_path=model_path, tokenizer=tokenizer,
                       splits=splits)
    if cfg.tools.enabled:
        _ = ctx.tool_format  # the tool_call format checks the chat template now, before any stage starts
    return ctx


def _eval_model(ctx: StageContext, model_dir: str | None) -> dict:
    if model_dir is None and is_adapter_only(ctx.base_model_path):
        model_dir = ctx.base_model_path  # the engine was built on the adapter's base: push base + adapter
    if model_dir is not None:
        ctx.rollout.push_weights(load_weights(model_dir))
    return run_eval(ctx)


def run(cfg: RunConfig, stages: list[str] | None = None, preflight=None) -> dict:
    """Runs the stages; returns the summary (also written to summary.json on rank 0). `preflight(ctx)`, when
    given, runs before anything else on the same context (engine, tokenizer, data) and may raise to stop the
    run (`grpo run` with `doctor: true` passes grpo.doctor's gate)."""
    stages = list(stages or cfg.stages)
    ctx = setup(cfg)
    if ctx.dist.role == "inference":  # rollout.mode: async: this process serves the training processes' rollouts
        from grpo.stages.serving import serve_rollouts

        try:
            serve_rollouts(ctx)
        finally:
            ctx.close()  # verifier workers, tool sandboxes
        return {}
    summary_path = ctx.run_dir / "summary.json"
    summary = json.loads(summary_path.read_text()) if summary_path.exists() and cfg.resume == "auto" else {}
    summary.setdefault("stages", {})
    current = ctx.base_model_path
    say = print if ctx.dist.is_main else (lambda *a, **k: None)
    # SIGTERM/SIGINT: the loops finish their step, save and raise Preempted (the stage is not marked done)
    install_stop_signals()
    try:
        if preflight is not None:
            preflight(ctx)
        if cfg.eval.num_problems > 0 and "base" not in summary["stages"]:
            summary["stages"]["base"] = {"model": current, **_eval_model(ctx, None)}
            say(f"[pipeline] base model: pass@1 {summary['stages']['base']['pass@1']:.3f}", flush=True)
        # eval.gate: the figures of the model the next stage starts from, and which stage made it
        accepted, accepted_name = summary["stages"].get("base"), "base"
        for stage in stages:
            before_model = current
            final_dir = ctx.run_dir / stage / "final"
            done_marker = ctx.run_dir / stage / "done.json"
            fingerprint = _stage_fingerprint(cfg, stage, current)
            finished = (final_dir / "config.json").exists() or is_adapter_only(final_dir)
            if (cfg.resume == "auto" and finished and stage in summary["stages"] and done_marker.exists() and json.loads(done_marker.read_text()) == fingerprint):
                say(f"[pipeline] stage {stage} already finished in {final_dir}; resuming after it", flush=True)
                current = str(final_dir)
                current, accepted, accepted_name = _apply_gate(cfg, summary, stage, before_model, current, accepted,
                                                               accepted_name, summary_path, ctx.dist.is_main, say)
                continue
            stop_if_requested(stage, 0, None, lambda step: None)  # a signal between stages: stop before this one
            say(f"[pipeline] stage {stage}: starting from {current}", flush=True)
            t0 = time.perf_counter()
            current = str(_stage_module(stage).train(ctx, current))
            wall = time.perf_counter() - t0
            result = {"model": current, "wall_s": round(wall, 1)}
            if cfg.eval.num_problems > 0:
                result.update(_eval_model(ctx, current))
            summary["stages"][stage] = result
            if ctx.dist.is_main:
                summary_path.write_text(json.dumps(summary, indent=2))
                done_marker.write_text(json.dumps(fingerprint))
            say(f"[pipeline] stage {stage} done in {wall:.0f}s"
                + (f": pass@1 {result['pass@1']:.3f}" if "pass@1" in result else ""), flush=True)
            current, accepted, accepted_name = _apply_gate(cfg, summary, stage, before_model, current, accepted,
                                                           accepted_name, summary_path, ctx.dist.is_main, say)
        summary["final_model"] = current
        summary.pop("stopped_by_gate", None)
        if ctx.dist.is_main:
            summary_path.write_text(json.dumps(summary, indent=2))
            from grpo.report import print_summary, write_plots

            write_plots(ctx.run_dir, summary)
            print_summary(summary)
    except Exception as exc:
        if is_peer_failure(exc):  # another rank died or hangs: say which, instead of a socket error
            raise peer_lost(exc, cfg.engine.collective_timeout_s) from exc
        raise
    finally:
        restore_signals()
        ctx.close()
    return summary


def _apply_gate(cfg: RunConfig, summary: dict, stage: str, before_model: str, current: str, accepted: dict | None,
                accepted_name: str, summary_path, is_main: bool, say) -> tuple[str, dict | None, str]:
    """eval.gate after `stage`: records the verdict in the summary; returns (the model the next stage starts
    from, its figures, its stage name). A failed gate stops the run (GateStopped, after writing the summary and
    printing the table) or falls back to `before_model`."""
    result = summary["stages"][stage]
    v = verdict(cfg.eval.gate, accepted, result, accepted_name)
    if v is None:
        result.pop("gate", None)  # from an earlier run of this directory with a gate
        return current, result, stage
    result["gate"] = v
    if is_main:
        summary_path.write_text(json.dumps(summary, indent=2))
    if v["passed"]:
        say(f"[pipeline] eval gate after {stage}: passed ({describe(v)})", flush=True)
        return current, result, stage
    if v["action"] == "stop":
        names = list(summary["stages"])
        for later in names[names.index(stage) + 1:]:  # left from an earlier launch of this run: not reached now
            summary["stages"].pop(later)
        summary["final_model"] = before_model
        summary["stopped_by_gate"] = stage
        if is_main:
            summary_path.write_text(json.dumps(summary, indent=2))
            from grpo.report import print_summary

            print_summary(summary)
        raise GateStopped(stage, v)
    say(f"[pipeline] eval gate after {stage}: FAILED ({describe(v)}); the next stage starts from {before_model} "
        "(eval.gate.action=fallback)", flush=True)
    return before_model, accepted, accepted_name


def in_one_process(cfg: RunConfig) -> RunConfig:
    """`cfg` for a command that runs in one process with its own rollout engine (`grpo eval`, `grpo doctor`), also
    when the run file says rollout.mode: async."""
    import dataclasses

    return dataclasses.replace(cfg, rollout=dataclasses.replace(cfg.rollout, mode="colocated"))


def evaluate_only(cfg: RunConfig, model_path: str | None = None) -> dict:
    """Evaluate `model_path` (default: the config's model); the engine is built on it directly, in this process
    (also for a config with rollout.mode: async)."""
    ctx = setup(in_one_process(cfg), model_path)
    try:
        result = _eval_model(ctx, None)
        if ctx.dist.is_main:
            print(json.dumps(result, indent=2))
        return result
    finally:
        ctx.close()
