"""Asynchronous vs colocated rollouts at equal resources, in one run (README: Asynchronous rollouts).

    python bench/async_rollout.py                       # both workloads, 12 steps, 2 repeats (~15 min on 2 cores)
    python bench/async_rollout.py --workloads balanced --steps 8 --repeats 1
    python bench/async_rollout.py --json artifacts/bench_async.json

Equal resources: two processes, one thread each (OMP_NUM_THREADS=1), on this machine's two cores.
- colocated: `grpo train --nproc 2` (each rank owns a vLLM engine and half the prompts; generate, then update);
- async: `grpo train --nproc 2 rollout.mode=async rollout.inference_ranks=1 rollout.max_staleness=1` (one process
  generates and scores every prompt, the other trains on the batch before).
Same model (the embedded model after a short SFT, cached under artifacts/), same prompts, group size, lr, steps,
the same 64 prompts x 8 per step (colocated: 32 on each rank; async: 64 on the one training process);
dynamic sampling off so that both do the same work per step. Runs alternate (colocated, async, colocated, ...) so
that drift in machine load hits both.

Workloads:
- balanced: the bench's settings, 32 prompts x 8, max_tokens 64 (answers ~30 tokens, almost all end with EOS);
- longtail: max_tokens 384 at temperature 1.6: most answers still end near 30 tokens, a few ramble on to hundreds,
  so each step's generation lasts as long as its longest completion (the length distribution is printed). (The
  tiny SFT model stops reliably at temperature 1; a hotter sampler is how this model gets a reasoning-like tail.)

Figures per run (from runs/<name>/metrics.jsonl): step time = wall time between the end of step 1 and the end of
the last step over the steps between (start-up and warm-up out); completion tokens per second over the same span;
trainer idle = the part of a step the trainer waits for samples (colocated: generation and scoring; async:
timing/wait_for_batch); generator idle = the part the engines wait (colocated: the update, logprob passes and push;
async: timing/wait_for_weights). Medians over repeats. Ratio = colocated step time / async step time (> 1: async
faster).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "configs" / "tiny_arith.yaml"
# rollout.max_tokens and temperature. Lengths sampled from the SFT model (64 prompts x 8): balanced (64, 1.0) mean 27,
# p90 35, max 70; longtail (384, 1.6) mean 40, p50 32, p90 56, p99 130, max 384 (0.4% cut at 384).
WORKLOADS = {"balanced": (64, 1.0), "longtail": (384, 1.6)}
DATA = ["data.arithmetic.n_rl=4000", "data.arithmetic.n_eval=50"]


def sh(cmd: list[str], log: Path, timeout: int = 1800) -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_PORT")}
    env.update(OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false")
    with open(log, "w") as fh:
        proc = subprocess.run(cmd, cwd=ROOT, env=env, stdout=fh, stderr=subprocess.STDOUT, timeout=timeout)
    if proc.returncode != 0:
        sys.exit(f"failed ({proc.returncode}): {' '.join(cmd)}; see {log}")


def sft_model(out: Path) -> Path:
    """The embedded model after 300 SFT steps (as the tests' sft_arith_model), built once."""
    final = out / "runs" / "sft" / "sft" / "final"
    if not (final / "config.json").exists():
        out.mkdir(parents=True, exist_ok=True)
        print(f"building the SFT model in {out} (~1 min)", flush=True)
        sh([sys.executable, "-m", "grpo.cli", "run", str(CONFIG), "name=sft", f"output_dir={out / 'runs'}",
            f"model.tiny_dir={out / 'tiny'}", "stages=[sft]", *DATA, "sft.max_steps=300", "sft.eval_every=100",
            "sft.patience=0", "eval.num_problems=0", "metrics.progress_bar=false", "metrics.tensorboard=false"],
           out / "sft.log")
    return final


def one_run(mode: str, workload: str, model: Path, steps: int, out: Path, tag: str) -> dict:
    name = f"{workload}_{mode}_{tag}"
    extra = (["rollout.mode=async", "rollout.inference_ranks=1", "rollout.max_staleness=1"]
             if mode == "async" else [])
    max_tokens, temperature = WORKLOADS[workload]
    prompts_per_rank = 64 if mode == "async" else 32  # prompts_per_step counts per training process
    cmd = [sys.executable, "-m", "grpo.cli", "train", str(CONFIG), f"name={name}", f"output_dir={out / 'runs'}",
           f"model.name_or_path={model}", *DATA, f"rollout.max_tokens={max_tokens}",
           f"rollout.temperature={temperature}", "rollout.kv_cache_gb=0.5", f"grpo.steps={steps}",
           f"grpo.prompts_per_step={prompts_per_rank}", "grpo.group_size=8",
           "grpo.micro_batch_size=64", "grpo.dynamic_sampling=false", "grpo.optim.lr=1e-4", "grpo.save_every=0",
           "eval.num_problems=0", "metrics.progress_bar=false", "metrics.tensorboard=false", "--nproc", "2", *extra]
    # A run directory left by an earlier bench would be resumed (its stage is done): the figures would be old ones.
    shutil.rmtree(out / "runs" / name, ignore_errors=True)
    t0 = time.perf_counter()
    sh(cmd, out / f"{name}.log")
    wall = time.perf_counter() - t0
    rows = [json.loads(x) for x in (out / "runs" / name / "metrics.jsonl").read_text().splitlines()]
    rows = [r for r in rows if r.get("stage") == "grpo"]
    span = rows[1:]  # steps 2..N
    seconds = rows[-1]["time"] - rows[0]["time"]
    trainers = 1 if mode == "async" else 2
    tokens = sum(r["completions/tokens"] for r in span) * trainers
    if mode == "async":
        trainer_idle = [r["timing/wait_for_batch"] for r in span]
        generator_idle = [r["timing/wait_for_weights"] for r in span]
    else:
        trainer_idle = [r["timing/generation"] + r["timing/verification"] for r in span]
        generator_idle = [r["timing/step"] - r["timing/generation"] - r["timing/verification"] for r in span]
    return {"mode": mode, "workload": workload, "wall_s": wall, "step_s": seconds / len(span),
            "tokens_per_s": tokens / seconds, "trainer_idle_s": statistics.mean(trainer_idle),
            "generator_idle_s": statistics.mean(generator_idle),
            "mean_length": statistics.mean(r["completions/mean_length"] for r in span),
            "p90_length": statistics.mean(r["completions/p90_length"] for r in span),
            "max_length": max(r["completions/max_length"] for r in span),
            "clipped": statistics.mean(r["completions/clipped_ratio"] for r in span),
            "update_s": statistics.mean(r["timing/update"] for r in span),
            "generation_s": statistics.mean(r["timing/generation"] for r in span),
            "reward": statistics.mean(r["reward/mean"] for r in span)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workloads", default="balanced,longtail")
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--model-dir", default=None)
    ap.add_argument("--out", default=str(ROOT / "artifacts" / "bench_async"))
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    model = Path(args.model_dir) if args.model_dir else sft_model(out / "sft_model")
    results = []
    for workload in args.workloads.split(","):
        for rep in range(args.repeats):
            for mode in ("colocated", "async"):
                r = one_run(mode, workload, model, args.steps, out, f"r{rep}")
                results.append(r)
                print(f"{workload:9s} {mode:9s} step {r['step_s']:.2f} s  tokens/s {r['tokens_per_s']:.0f}  "
                      f"trainer idle {r['trainer_idle_s']:.2f} s  generator idle {r['generator_idle_s']:.2f} s  "
                      f"lengths mean {r['mean_length']:.0f} p90 {r['p90_length']:.0f} max {r['max_length']}",
                      flush=True)
    print("\n| workload | mode | step (s) | tokens/s | trainer idle (s/step) | generator idle (s/step) | "
          "completion length mean / p90 / max | clipped | ratio colocated/async |")
    print("|---|---|---|---|---|---|---|---|---|")
    summary = {}
    for workload in args.workloads.split(","):
        med = {}
        for mode in ("colocated", "async"):
            rs = [r for r in results if r["workload"] == workload and r["mode"] == mode]
            med[mode] = {k: statistics.median(r[k] for r in rs) for k in rs[0] if isinstance(rs[0][k], (int, float))}
        ratio = med["colocated"]["step_s"] / med["async"]["step_s"]
        summary[workload] = {**med, "ratio": ratio}
        for mode in ("colocated", "async"):
            m = med[mode]
            print(f"| {workload} | {mode} | {m['step_s']:.2f} | {m['tokens_per_s']:.0f} | {m['trainer_idle_s']:.2f} | "
                  f"{m['generator_idle_s']:.2f} | {m['mean_length']:.0f} / {m['p90_length']:.0f} / "
                  f"{m['max_length']:.0f} | {m['clipped']:.3f} | {ratio:.2f}x |" if mode == "async" else
                  f"| {workload} | {mode} | {m['step_s']:.2f} | {m['tokens_per_s']:.0f} | {m['trainer_idle_s']:.2f} | "
                  f"{m['generator_idle_s']:.2f} | {m['mean_length']:.0f} / {m['p90_length']:.0f} / "
                  f"{m['max_length']:.0f} | {m['clipped']:.3f} | |")
    if args.json:
        Path(args.json).write_text(json.dumps({"runs": results, "summary": summary}, indent=2))


if __name__ == "__main__":
    main()
