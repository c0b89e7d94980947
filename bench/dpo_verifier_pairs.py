"""Does DPO on verifier-built pairs raise greedy accuracy? SFT the embedded model, then DPO on pairs
it samples itself (k answers per fresh prompt, labelled by the math verifier), and compare the
greedy pass@1 of the SFT and DPO models on the same held-out problems.

    python bench/dpo_verifier_pairs.py                                 # configs/tiny_arith.yaml
    python bench/dpo_verifier_pairs.py --sft-model runs/x/sft/final    # skip SFT, start DPO from this model
    python bench/dpo_verifier_pairs.py dpo.num_prompts=1024 dpo.optim.lr=5e-5   # any config override

The stages run through the real pipeline (`grpo.stages.pipeline.run`). Each model is then evaluated by
`grpo eval` in its own process, with a rollout engine built on that model's own directory (greedy,
`eval.num_problems` held-out problems, the configured verifier), so the figures do not depend on
pushing weights into an engine built on another model. Printed at the end: pass@1 before and after
DPO, the pair counts (built / skipped, and why), the held-out pair margin and accuracy, and wall
times; `--json PATH` also writes them.
"""
from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a checkout


def evaluate(config: str, model: str, overrides: list[str], name: str) -> dict:
    """Greedy pass@1 of `model` with an engine built on it, in a fresh process."""
    cmd = [sys.executable, "-m", "grpo.cli", "eval", str(Path(config).resolve()), "--model", str(Path(model).resolve()),
           *overrides, f"name={name}", "eval.k=0"]
    from grpo.runtime.distributed import env_without_rendezvous

    # This process initialised torch.distributed (env vars, a bound port); the child starts its own.
    env = env_without_rendezvous()
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env=env)
    out = "\n" + proc.stdout
    start = out.rfind("\n{")  # `grpo eval` ends by printing its result as indented JSON
    if proc.returncode != 0 or start < 0:
        print(proc.stdout[-3000:], proc.stderr[-3000:], sep="\n")
        raise SystemExit(f"evaluation of {model} failed (exit {proc.returncode})")
    return json.JSONDecoder().raw_decode(out[start + 1:])[0]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("overrides", nargs="*", metavar="key=value")
    ap.add_argument("--config", default="configs/tiny_arith.yaml")
    ap.add_argument("--name", default="bench_dpo_verifier_pairs")
    ap.add_argument("--output-dir", default="artifacts")
    ap.add_argument("--sft-model", default=None, help="start DPO from this model instead of running SFT")
    ap.add_argument("--pairs-from", default=None,
                    help="a run directory whose verifier-built pairs to reuse (used only if built from the same "
                         "model and pair settings; saves the sampling when comparing DPO settings)")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()

    from grpo.stages import pipeline
    from grpo.config import load_config

    # Absolute paths: the evaluations run in child processes from the repository root.
    common = [f"output_dir={Path(args.output_dir).resolve()}", "metrics.progress_bar=false", *args.overrides]
    wall: dict[str, float] = {}
    sft_model = args.sft_model
    if sft_model is None:
        cfg = load_config(args.config, [*common, f"name={args.name}_sft", "stages=[sft]", "eval.num_problems=0"])
        t0 = time.perf_counter()
        pipeline.run(cfg)
        wall["sft"] = time.perf_counter() - t0
        sft_model = str(cfg.run_dir / "sft" / "final")
    # The rollout engine is built on the SFT model itself: the pairs are sampled from exactly it.
    cfg = load_config(args.config, [*common, f"name={args.name}", "stages=[dpo]", "eval.num_problems=0",
                                    f"model.name_or_path={sft_model}"])
    if args.pairs_from:
        (cfg.run_dir / "dpo").mkdir(parents=True, exist_ok=True)
        for name in ("pairs.jsonl", "pairs_report.json"):
            shutil.copy(Path(args.pairs_from) / "dpo" / name, cfg.run_dir / "dpo" / name)
    t0 = time.perf_counter()
    summary = pipeline.run(cfg)
    wall["dpo"] = time.perf_counter() - t0
    dpo_model = summary["final_model"]

    t0 = time.perf_counter()
    before = evaluate(args.config, sft_model, common, f"{args.name}_eval_sft")  # the same problems for both
    after = evaluate(args.config, dpo_model, common, f"{args.name}_eval_dpo")
    wall["eval"] = time.perf_counter() - t0
    pairs = json.loads((cfg.run_dir / "dpo" / "pairs_report.json").read_text())
    held = json.loads((cfg.run_dir / "dpo" / "eval_pairs.json").read_text())
    result = {"greedy_pass@1_sft": before["pass@1"], "greedy_pass@1_dpo": after["pass@1"], "eval_problems": after["n"],
              "sft_model": sft_model, "dpo_model": dpo_model, "pairs": pairs, "held_out_pairs": held,
              "wall_s": {k: round(v, 1) for k, v in wall.items()},
              "dpo_settings": {k: getattr(cfg.dpo, k) for k in ("loss_type", "beta", "epochs", "batch_size",
                                                                 "num_prompts", "samples_per_prompt")}
              | {"lr": cfg.dpo.optim.lr}}
    print("\n=== DPO on verifier-built pairs ===")
    print(f"greedy pass@1 on {after['n']} held-out problems: {before['pass@1']:.3f} (sft) -> "
          f"{after['pass@1']:.3f} (dpo), {after['pass@1'] - before['pass@1']:+.3f}")
    print(f"pairs: {pairs['pairs']} built from {pairs['prompts']} prompts, {pairs['skipped']} skipped "
          f"(all correct {pairs['skipped_all_correct']}, all wrong {pairs['skipped_all_wrong']}, "
          f"correct only when truncated {pairs['skipped_only_truncated_correct']}); "
          f"sample accuracy {pairs['correct_fraction']:.3f}")
    if "rewards/margins" in held.get("after", {}):
        print(f"held-out pairs: margin {held['before'].get('rewards/margins', 0):.3f} -> "
              f"{held['after']['rewards/margins']:.3f}, accuracy {held['before'].get('rewards/accuracy', 0):.3f} -> "
              f"{held['after']['rewards/accuracy']:.3f}")
    print("settings:", result["dpo_settings"], " wall time (s):", result["wall_s"])
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
