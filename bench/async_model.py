"""A cost model of one GRPO step, colocated vs async, checked against bench/async_rollout.py's CPU runs, then
used to predict a GPU node (README: Asynchronous rollouts).

    python bench/async_model.py                                   # reads artifacts/bench_async (run the bench first)
    python bench/async_model.py --bench-dir DIR --gpus 8 --inference-gpus 2
    python bench/async_model.py --gpu-costs FILE                  # another bench/gpu_costs.py measurement

The model. Generating a batch whose completions have lengths L_i on one engine takes
    gen(L) = a * max(L) + c * sum(L)
(a decode step costs a fixed `a` plus `c` per running sequence, so the longest completion sets the number of steps;
this is why long tails hurt). Training on T tokens in one process takes u0 + u * T (update, logprob passes, push).
- colocated on N devices: every device generates its 1/N of the batch, then trains on it:
      step = gen(its lengths) + u0 + u * tokens/N
- async with I inference and N - I training devices (max_staleness >= 1): generation of the next batch overlaps
  training on this one, so      step = max(gen(batch / I) + transfer, u0 + u * tokens/(N - I))
Calibration uses only the colocated runs (least squares of timing/generation on [max length, tokens] per rank and
step, of the rest of timing/step on tokens); the async runs are predicted from their own length figures
(workload, not timing) and the measured transfer time, and compared with what they measured.
"""
from __future__ import annotations

import argparse
import json
import random
import statistics
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


@dataclass
class Costs:
    a: float  # s per decode step (fixed part)
    c: float  # s per running sequence per decode step
    u0: float  # s per training step (fixed part)
    u: float  # s per completion token trained on


def gen_time(costs: Costs, max_len: float, tokens: float) -> float:
    return costs.a * max_len + costs.c * tokens


def colocated_step(costs: Costs, max_len_per_device: float, tokens: float, devices: int, push_s: float = 0.0) -> float:
    return gen_time(costs, max_len_per_device, tokens / devices) + costs.u0 + costs.u * tokens / devices + push_s


def async_step(costs: Costs, max_len_per_engine: float, tokens: float, inference: int, training: int,
               transfer_s: float) -> float:
    return max(gen_time(costs, max_len_per_engine, tokens / inference) + transfer_s,
               costs.u0 + costs.u * tokens / training)


def _lstsq2(x1: list[float], x2: list[float], y: list[float]) -> tuple[float, float]:
    """y ~ p * x1 + q * x2 (no intercept), by the normal equations."""
    s11 = sum(a * a for a in x1)
    s22 = sum(b * b for b in x2)
    s12 = sum(a * b for a, b in zip(x1, x2))
    s1y = sum(a * v for a, v in zip(x1, y))
    s2y = sum(b * v for b, v in zip(x2, y))
    det = s11 * s22 - s12 * s12
    return (s1y * s22 - s2y * s12) / det, (s2y * s11 - s1y * s12) / det


def _rows(path: Path) -> list[dict]:
    rows = [json.loads(x) for x in path.read_text().splitlines()]
    return [r for r in rows if r.get("stage") == "grpo"][1:]  # step 1 is warm-up


def calibrate(colocated: list[list[dict]]) -> Costs:
    steps = [r for run in colocated for r in run]
    a, c = _lstsq2([r["completions/max_length"] for r in steps], [r["completions/tokens"] for r in steps],
                   [r["timing/generation"] for r in steps])
    rest = [r["timing/step"] - r["timing/generation"] for r in steps]
    u0, u = _lstsq2([1.0] * len(steps), [r["completions/tokens"] for r in steps], rest)
    return Costs(a, c, u0, u)


def check(bench_dir: Path) -> tuple[Costs, list[tuple]]:
    runs = sorted((bench_dir / "runs").glob("*_*_r*/metrics.jsonl"))
    by = {}
    for p in runs:
        workload, mode, _ = p.parent.name.split("_")
        by.setdefault((workload, mode), []).append(_rows(p))
    costs = calibrate([run for (w, m), rs in by.items() if m == "colocated" for run in rs])
    table = []
    for (workload, mode), rs in sorted(by.items()):
        measured, predicted = [], []
        for run in rs:
            span = (run[-1]["time"] - run[0]["time"]) / (len(run) - 1)  # as the bench: end of step 2 .. end of N
            measured.append(span)
            if mode == "colocated":
                pred = [colocated_step(costs, r["completions/max_length"], 2 * r["completions/tokens"], 2)
                        for r in run]
            else:  # one engine generates the whole batch, one process trains on it
                pred = [async_step(costs, r["completions/max_length"], r["completions/tokens"], 1, 1,
                                   r.get("timing/weight_transfer", 0.0)) for r in run]
            predicted.append(statistics.mean(pred))
        m, p = statistics.median(measured), statistics.median(predicted)
        table.append((workload, mode, m, p, p / m - 1))
    return costs, table


def best_one_plus_one(costs: Costs, transfer_s: float = 0.0) -> tuple[float, int, int]:
    """The largest colocated / async step ratio any workload can give at 1 + 1 processes (vs colocated on 2), by a
    scan over the longest completion L and the batch's tokens T; both colocated ranks get one longest completion
    (a long tail). Returns (ratio, L, T). Where transfer and u0 are small: async = max(a L + c T, u T) and colocated
    = a L + (c + u) T / 2, so the ratio peaks at a L = (u - c) T with 1.5 - c / (2 u), and never exceeds 1 when
    c >= u."""
    costs = Costs(costs.a, costs.c, max(0.0, costs.u0), costs.u)  # a fitted u0 below 0 is noise, not a saving
    best = (0.0, 0, 0)
    for max_len in range(16, 8193, 16):
        for tokens in (int(1000 * 1.1 ** k) for k in range(60)):
            if tokens < 2 * max_len:
                continue
            ratio = colocated_step(costs, max_len, tokens, 2) / async_step(costs, max_len, tokens, 1, 1, transfer_s)
            best = max(best, (ratio, max_len, tokens))
    return best


def reasoning_lengths(n: int, rng: random.Random, median: float = 1500, sigma: float = 0.8,
                      max_tokens: int = 8192) -> list[int]:
    """Lognormal completion lengths (median 1500 tokens, sigma 0.8: p90 ~4,200, a few percent cut at 8,192), the
    shape RL reasoning runs report (lengths of a few thousand tokens with a long tail up to the limit)."""
    import math

    return [min(max_tokens, max(1, int(rng.lognormvariate(math.log(median), sigma)))) for _ in range(n)]


# One 8-GPU H100 node, Qwen2.5-7B in bf16: first the figures derived from public specifications (before a GPU was
# lent), then `measured_gpu_costs` replaces what bench/gpu_costs.py measured on one H100 (bench/gpu_costs_h100.json).
GPU_7B = Costs(
    a=0.0045,  # a decode step reads the 15 GB of weights once: 15 GB / 3.35 TB/s HBM = 4.5 ms
    c=0.00002,  # per running sequence: 2 x 7.6e9 FLOPs at ~40% of 989 TFLOP/s (0.04 ms) halved for batching gains
    u0=1.5,  # per step: optimizer step and ZeRO gathers over NVLink (~1-2 s for 7B)
    u=0.00014,  # per token per GPU: ~8 x 7.6e9 FLOPs (update 6N + reference and old-policy passes 2N) at ~40% MFU
)
GPU_TRANSFER_S = 1.0  # async: 15 GB broadcast over NVLink (~0.1 s) + vLLM reload (~1 s, the colocated push as well)


MEASURED_GPU_COSTS = ROOT / "bench" / "gpu_costs_h100.json"


def measured_gpu_costs(path: Path) -> Costs:
    """GPU_7B with what bench/gpu_costs.py measured on one GPU: a and c from the decode step's kernel time (the
    GPU's own time, which vLLM's CUDA-graph replay approaches; transformers' eager loop is bound by the CPU
    launching kernels, which vLLM avoids), u from the update + reference pass. u0 stays assumed: its optimizer
    part measured 15 ms, the rest is ZeRO's gathers between GPUs, which one GPU cannot show."""
    m = json.loads(path.read_text())
    return Costs(a=m["decode"]["a_kernels_s"], c=m["decode"]["c_kernels_s"], u0=GPU_7B.u0,
                 u=m["training"]["u_per_token_s"])


def predict_gpu(gpus: int, inference: int, prompts: int, group: int, seed: int = 0, costs: Costs = GPU_7B) -> dict:
    rng = random.Random(seed)
    lengths = reasoning_lengths(prompts * group, rng)
    tokens = sum(lengths)
    per_device = [lengths[i::gpus] for i in range(gpus)]
    per_engine = [lengths[i::inference] for i in range(inference)]
    colo = max(gen_time(costs, max(d), sum(d)) for d in per_device) + costs.u0 + costs.u * tokens / gpus \
        + GPU_TRANSFER_S
    gen = max(gen_time(costs, max(e), sum(e)) for e in per_engine) + GPU_TRANSFER_S
    train = costs.u0 + costs.u * tokens / (gpus - inference)
    lengths.sort()
    return {"lengths": {"mean": statistics.mean(lengths), "p50": lengths[len(lengths) // 2],
                        "p90": lengths[int(0.9 * len(lengths))], "max": lengths[-1]},
            "colocated_s": colo, "async_s": max(gen, train), "async_generation_s": gen, "async_training_s": train}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bench-dir", default=str(ROOT / "artifacts" / "bench_async"))
    ap.add_argument("--gpus", type=int, default=8)
    ap.add_argument("--inference-gpus", type=int, default=None, help="default: the best split, printed")
    ap.add_argument("--prompts", type=int, default=256)
    ap.add_argument("--group", type=int, default=8)
    ap.add_argument("--gpu-costs", default=str(MEASURED_GPU_COSTS), help="bench/gpu_costs.py's JSON output")
    args = ap.parse_args()

    bench_dir = Path(args.bench_dir)
    if (bench_dir / "runs").exists():
        costs, table = check(bench_dir)
        print(f"calibrated on the colocated CPU runs: a = {costs.a * 1e3:.3f} ms/decode step, c = {costs.c * 1e6:.2f} "
              f"us/sequence/step, u0 = {costs.u0:.3f} s/step, u = {costs.u * 1e6:.2f} us/token")
        print("\n| workload | mode | measured step (s) | predicted (s) | error |\n|---|---|---|---|---|")
        for workload, mode, m, p, err in table:
            print(f"| {workload} | {mode} | {m:.2f} | {p:.2f} | {err:+.0%} |")
        ratio, max_len, tokens = best_one_plus_one(costs)
        print(f"\nthe most async can gain at 1 + 1 processes with these costs, over every workload: {ratio:.2f}x "
              f"(longest completion {max_len} tokens, {tokens} tokens per batch; 1.5 - c/(2u) = "
              f"{1.5 - costs.c / (2 * costs.u):.2f}x). A decode step here costs mostly per sequence (c), so one engine "
              "with the whole batch takes about as long as two with half each, and the trainer's core adds no more "
              "than its own u.")
    else:
        print(f"no bench runs in {bench_dir}: run bench/async_rollout.py first for the CPU check")

    variants = [("assumed costs, see GPU_7B", GPU_7B)]
    if Path(args.gpu_costs).exists():
        measured = measured_gpu_costs(Path(args.gpu_costs))
        device = json.loads(Path(args.gpu_costs).read_text())["device"]
        variants.append((f"costs measured on one {device} by bench/gpu_costs.py: a = {measured.a * 1e3:.2f} ms, "
                         f"c = {measured.c * 1e6:.1f} us, u = {measured.u * 1e6:.0f} us/token; u0 and the transfer "
                         "assumed", measured))
    splits = [args.inference_gpus] if args.inference_gpus else list(range(1, args.gpus))
    for label, costs in variants:
        print(f"\nprediction, {args.gpus} GPUs, Qwen2.5-7B bf16 ({label}), {args.prompts} prompts x {args.group}, "
              "lognormal reasoning lengths:")
        print("| inference GPUs | colocated step (s) | async step (s) | async generation / training (s) | speed-up |")
        print("|---|---|---|---|---|")
        for i in splits:
            r = predict_gpu(args.gpus, i, args.prompts, args.group, costs=costs)
            print(f"| {i} of {args.gpus} | {r['colocated_s']:.1f} | {r['async_s']:.1f} | "
                  f"{r['async_generation_s']:.1f} / {r['async_training_s']:.1f} | "
                  f"{r['colocated_s'] / r['async_s']:.2f}x |")
    print(f"lengths: {r['lengths']}")


if __name__ == "__main__":
    main()
