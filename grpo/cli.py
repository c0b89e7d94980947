"""The `grpo` command line.

    grpo run CONFIG [key=value ...]     all configured stages (sft -> dpo -> grpo)
    grpo sft|dpo|train CONFIG [...]     one stage (train = GRPO); train takes --nproc N
    grpo eval CONFIG [...]              greedy pass@1 and sampled pass@k/maj@k on the eval split
    grpo check CONFIG [...]             validate the config and its data without loading weights
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys

from grpo.config import ConfigError, load_config

EPILOG = "Overrides are dotted keys, e.g. grpo.steps=20 rollout.temperature=0.7 'stages=[dpo,grpo]'."


def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("config", help="YAML run file, e.g. configs/tiny_arith.yaml")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="dotted overrides, applied after the file")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="grpo", description="RLVR trainer: SFT -> DPO -> GRPO with verifiers.",
                                     epilog=EPILOG)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    helps = {
        "run": "run every stage listed in `stages`, each starting from the previous stage's model",
        "sft": "supervised fine-tuning on demonstrations",
        "dpo": "direct preference optimisation (pairs from a file or built by the verifiers)",
        "train": "GRPO training with vLLM rollouts and verifier rewards",
        "eval": "evaluate a model on the eval split (greedy pass@1, sampled pass@k and maj@k)",
        "check": "validate a config and its data without loading any weights",
    }
    for name, text in helps.items():
        p = sub.add_parser(name, help=text, description=text, epilog=EPILOG)
        _add_common(p)
        if name in ("run", "train", "sft", "dpo"):
            p.add_argument("--nproc", type=int, default=1,
                           help="training processes on this machine (relaunches itself under torchrun)")
        if name == "eval":
            p.add_argument("--model", default=None, help="model directory to evaluate (default: model.name_or_path)")
        if name == "check":
            p.add_argument("--hardware", action="store_true",
                           help="also refuse GPU-only settings when no GPU is visible (what a run does)")
    return parser


def _relaunch_distributed(args: argparse.Namespace) -> int:
    """`--nproc N` -> torchrun with N local ranks running the same command without --nproc."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={args.nproc}",
           "-m", "grpo.cli", args.command, args.config, *args.overrides]
    print("[grpo] launching:", " ".join(cmd), flush=True)
    return subprocess.call(cmd)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    # Overrides may come before or after options (`train cfg --nproc 2 k=v`): argparse leaves the
    # later ones unparsed, so collect them here.
    args, extra = parser.parse_known_args(argv)
    unknown = [x for x in extra if x.startswith("-") or "=" not in x]
    if unknown:
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    args.overrides = list(args.overrides) + extra
    try:
        cfg = load_config(args.config, args.overrides)
    except ConfigError as exc:
        print(f"grpo: config error: {exc}", file=sys.stderr)
        return 2

    if args.command == "check":
        from grpo.check import check_config

        return check_config(cfg, args.config, hardware=args.hardware)

    if getattr(args, "nproc", 1) > 1 and "LOCAL_RANK" not in os.environ:
        return _relaunch_distributed(args)

    from grpo.config import check_hardware, check_training_precision

    try:
        check_hardware(cfg, args.config)
        if args.command != "eval":
            check_training_precision(cfg, args.config)
    except ConfigError as exc:
        print(f"grpo: config error: {exc}", file=sys.stderr)
        return 2

    from grpo.stages import pipeline

    if args.command == "run":
        pipeline.run(cfg)
    elif args.command == "eval":
        pipeline.evaluate_only(cfg, model_path=args.model)
    else:
        stage = {"train": "grpo"}.get(args.command, args.command)
        pipeline.run(cfg, stages=[stage])
    return 0


if __name__ == "__main__":
    sys.exit(main())
