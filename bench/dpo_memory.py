"""Peak memory of DPO training: reference logprobs precomputed once vs. a live reference model.

    python bench/dpo_memory.py                      # a ~57M-parameter model, 64 pairs, 4 steps
    python bench/dpo_memory.py --hidden 1024 --layers 12 --steps 2

Each variant runs the real `grpo.stages.dpo.train` in a fresh process on the same locally built model
and the same preference file. The peak resident set size (VmHWM) is reset just before `train` is
called and read when it returns, so the figure covers everything DPO does: loading the policy,
the reference pass (precompute) or loading the reference model (live), and the training steps.
Printed: both peaks, their difference, and the ratio; `--json PATH` also writes them.

What to expect: the live variant holds a second copy of the weights for the whole run, about
4 bytes x parameters in fp32 more than the precomputed one, whose reference pass runs on the
policy itself before its first step.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import re
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout: python bench/dpo_memory.py


def rss_kib(field: str) -> int:
    return int(re.search(rf"{field}:\s+(\d+)", Path("/proc/self/status").read_text()).group(1))


def reset_peak() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS (Linux >= 4.0)
        return True
    except OSError:
        return False


def write_pairs(path: Path, n: int, seed: int = 0) -> None:
    rng = random.Random(seed)

    def word(letters: str) -> str:
        return "".join(rng.choice(letters) for _ in range(rng.randint(8, 24)))

    rows = [{"prompt": f"Say something about {word('abcdefghijklmnopqrstuvwxyz')}",
             "chosen": word("abcdefghijklm"), "rejected": word("nopqrstuvwxyz")} for _ in range(n)]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")


def child(args: argparse.Namespace) -> None:
    """One variant in this process; prints one JSON line."""
    from grpo.config import EngineConfig, RunConfig
    from grpo.stages.context import StageContext
    from grpo.data.rows import Splits
    from grpo.runtime.engine import init_distributed
    from grpo.runtime.models import load_tokenizer
    from grpo.data.tasks.arithmetic import make_pools

    from grpo.stages import dpo as dpo_loop

    work = Path(args.workdir)
    cfg = RunConfig(name=f"dpo_{args.child}", output_dir=str(work / "runs"), resume="never")
    cfg.metrics.tensorboard = cfg.metrics.progress_bar = False
    p = cfg.dpo
    p.pairs, p.pairs_file, p.pairs_eval_size, p.batch_size, p.save_every = "file", str(work / "pairs.jsonl"), 8, \
        args.batch, 0
    p.max_steps = args.steps
    p.micro_batch_size = args.batch
    p.precompute_reference = args.child == "precompute"
    p.reference_cache_dir = str(work / f"cache_{args.child}")  # empty: the pass is part of the measurement
    ctx = StageContext(cfg=cfg, dist=init_distributed(EngineConfig()), run_dir=cfg.run_dir,
                       base_model_path=str(work / "model"), tokenizer=load_tokenizer(str(work / "model"), cfg.model),
                       splits=Splits(**make_pools({"sft": 4, "rl": 4, "eval": 4}, seed=0, max_digits=1)))
    import gc

    gc.collect()
    before = rss_kib("VmRSS")
    exact = reset_peak()
    t0 = time.perf_counter()
    dpo_loop.train(ctx, str(work / "model"))
    wall = time.perf_counter() - t0
    peak = rss_kib("VmHWM")
    ctx.close()
    print("RESULT " + json.dumps({"variant": args.child, "rss_before_mib": before / 1024, "peak_mib": peak / 1024,
                                  "peak_is_exact": exact, "wall_s": wall}), flush=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--hidden", type=int, default=768)
    ap.add_argument("--layers", type=int, default=8)
    ap.add_argument("--intermediate", type=int, default=2048)
    ap.add_argument("--pairs", type=int, default=64)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--workdir", default="artifacts/bench_dpo_memory")
    ap.add_argument("--json", default=None, help="also write the figures here")
    ap.add_argument("--child", choices=["precompute", "live"], help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(args)
        return 0

    from grpo.runtime.tiny_model import build_tiny_model, read_build_info

    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    model = build_tiny_model(work / "model", hidden_size=args.hidden, num_layers=args.layers,
                             intermediate_size=args.intermediate)
    n_params = read_build_info(model)["num_parameters"]
    write_pairs(work / "pairs.jsonl", args.pairs)
    print(f"model: {n_params / 1e6:.1f}M parameters ({n_params * 4 / 2**20:.0f} MiB in fp32); {args.pairs} pairs, "
          f"{args.steps} steps of {args.batch} pairs", flush=True)
    results = {}
    for variant in ("precompute", "live"):
        for old in (work / f"cache_{variant}").glob("*.pt"):
            old.unlink()
        cmd = [sys.executable, __file__, "--child", variant, "--workdir", str(work), "--batch", str(args.batch),
               "--steps", str(args.steps)]
        proc = subprocess.run(cmd, capture_output=True, text=True, env=dict(os.environ))
        lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
        if proc.returncode != 0 or not lines:
            print(proc.stdout[-3000:], proc.stderr[-3000:], sep="\n")
            raise SystemExit(f"variant {variant} failed (exit {proc.returncode})")
        results[variant] = json.loads(lines[-1][len("RESULT "):])
        r = results[variant]
        print(f"{variant:>10}: peak RSS {r['peak_mib']:7.0f} MiB during grpo.stages.dpo.train "
              f"(process at {r['rss_before_mib']:.0f} MiB before it; {r['wall_s']:.0f}s)", flush=True)
    pre, live = results["precompute"]["peak_mib"], results["live"]["peak_mib"]
    summary = {"num_parameters": n_params, "weights_mib": n_params * 4 / 2**20, "peak_precompute_mib": pre,
               "peak_live_mib": live, "saved_mib": live - pre, "ratio_live_over_precompute": live / pre,
               "runs": results}
    print(f"precomputed reference: {pre:.0f} MiB peak vs live reference: {live:.0f} MiB "
          f"({live - pre:+.0f} MiB, x{live / pre:.2f}); one fp32 copy of the weights is "
          f"{n_params * 4 / 2**20:.0f} MiB")
    if args.json:
        Path(args.json).write_text(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
