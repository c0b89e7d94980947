"""Does DPO on verifier-built pairs raise greedy accuracy? SFT the embedded model, then DPO on pairs
it samples itself (k answers per fresh prompt, labelled by the math verifier), and compare the
greedy pass@1 on held-out problems before and after DPO.

    python bench/dpo_verifier_pairs.py                           # configs/tiny_arith.yaml, stages sft -> dpo
    python bench/dpo_verifier_pairs.py --sft-model runs/x/sft/final  # skip SFT, start DPO from this model
    python bench/dpo_verifier_pairs.py dpo.num_prompts=1024 dpo.optim.lr=5e-5   # any config override

It runs the real pipeline (`grpo.pipeline.run`) so the figures come from the code a user runs:
the same rollout engine, verifier and evaluation. Printed at the end: greedy pass@1 after SFT and
after DPO on the same held-out problems, the pair counts (built / skipped, and why), the held-out
pair margin and accuracy, and the wall time of each stage; `--json PATH` also writes them.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("overrides", nargs="*", metavar="key=value")
    ap.add_argument("--config", default="configs/tiny_arith.yaml")
    ap.add_argument("--name", default="bench_dpo_verifier_pairs")
    ap.add_argument("--output-dir", default="artifacts")
    ap.add_argument("--sft-model", default=None, help="start DPO from this model instead of running SFT")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()

    from grpo.config import load_config
    from grpo import pipeline

    stages = "[dpo]" if args.sft_model else "[sft,dpo]"
    overrides = [f"name={args.name}", f"output_dir={args.output_dir}", f"stages={stages}", "eval.k=0",
                 *args.overrides]
    if args.sft_model:
        overrides.append(f"model.name_or_path={args.sft_model}")
    cfg = load_config(args.config, overrides)
    t0 = time.perf_counter()
    summary = pipeline.run(cfg)
    wall = time.perf_counter() - t0

    stages_out = summary["stages"]
    before_key = "base" if args.sft_model else "sft"
    before, after = stages_out[before_key], stages_out["dpo"]
    run_dir = cfg.run_dir
    pairs = json.loads((run_dir / "dpo" / "pairs_report.json").read_text())
    held = json.loads((run_dir / "dpo" / "eval_pairs.json").read_text())
    result = {
        "greedy_pass@1_before_dpo": before["pass@1"], "greedy_pass@1_after_dpo": after["pass@1"],
        "eval_problems": after.get("n"), "base_pass@1": stages_out.get("base", {}).get("pass@1"),
        "pairs": pairs, "held_out_pairs": held,
        "wall_s": {k: v.get("wall_s") for k, v in stages_out.items() if "wall_s" in v}, "total_wall_s": wall,
    }
    print("\n=== DPO on verifier-built pairs ===")
    print(f"greedy pass@1 on {result['eval_problems']} held-out problems: "
          f"{before['pass@1']:.3f} ({before_key}) -> {after['pass@1']:.3f} (dpo), "
          f"{after['pass@1'] - before['pass@1']:+.3f}")
    print(f"pairs: {pairs['pairs']} built from {pairs['prompts']} prompts, {pairs['skipped']} skipped "
          f"(all correct {pairs['skipped_all_correct']}, all wrong {pairs['skipped_all_wrong']}); "
          f"sample accuracy {pairs['correct_fraction']:.3f}")
    if "rewards/margins" in held.get("after", {}):
        print(f"held-out pairs: margin {held['before'].get('rewards/margins', 0):.3f} -> "
              f"{held['after']['rewards/margins']:.3f}, accuracy {held['after']['rewards/accuracy']:.3f}")
    print("wall time per stage (s):", result["wall_s"])
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
