"""The `grpo` command line.

    grpo run CONFIG [key=value ...]     all configured stages (sft -> dpo -> grpo)
    grpo sft|dpo|kto|train CONFIG [...] one stage (train = GRPO); train takes --nproc N
    grpo eval CONFIG [...]              greedy pass@1 and sampled pass@k/maj@k on the eval split
    grpo check CONFIG [...]             validate the config and its data without loading weights
    grpo doctor CONFIG [...]            load model, data and verifiers; report what would make the run learn nothing
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
        "kto": "KTO on single answers marked good or bad (a thumbs up/down file, or every sample labelled by "
               "the verifiers)",
        "train": "GRPO training with vLLM rollouts and verifier rewards",
        "eval": "evaluate a model on the eval split (greedy pass@1, sampled pass@k and maj@k)",
        "check": "validate a config and its data without loading any weights",
        "doctor": "look at the data, verifiers, model, sampler/trainer agreement and memory before a run (~1 min)",
    }
    for name, text in helps.items():
        p = sub.add_parser(name, help=text, description=text, epilog=EPILOG)
        _add_common(p)
        if name in ("run", "train", "sft", "dpo", "kto"):
            p.add_argument("--nproc", type=int, default=1,
                           help="training processes on this machine (relaunches itself under torchrun)")
        if name in ("eval", "doctor"):
            p.add_argument("--model", default=None, help="model directory to evaluate (default: model.name_or_path)")
        if name == "check":
            p.add_argument("--hardware", action="store_true",
                           help="also refuse GPU-only settings when no GPU is visible (what a run does)")
    return parser


def _relaunch_distributed(args: argparse.Namespace) -> int:
    """`--nproc N` -> torchrun with N local ranks running the same command without --nproc. A SIGTERM or SIGINT
    sent to this process reaches the ranks (they finish the step, save, exit 0; so does this process)."""
    from grpo.runtime.faults import run_forwarding_stop_signals

    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={args.nproc}",
           "-m", "grpo.cli", args.command, args.config, *args.overrides]
    print("[grpo] launching:", " ".join(cmd), flush=True)
    # torchrun itself, but a failed rank is reported in one line, not a traceback
    cmd[1:3] = ["-c", "from grpo.runtime.faults import torchrun_main; torchrun_main()"]
    return run_forwarding_stop_signals(cmd)


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

    from grpo.data.rows import DataError
    from grpo.runtime.faults import CheckpointError, PeerLost, Preempted
    from grpo.runtime.rollout import WeightSyncError
    from grpo.stages.gate import GateStopped

    stages = {"run": None, "eval": [], "doctor": None}.get(args.command,
                                                           [{"train": "grpo"}.get(args.command, args.command)])
    try:
        if "LOCAL_RANK" not in os.environ:
            # Before any rank, engine or weights: a bad key, row or verifier is one line here, where N ranks
            # finding it would print N tracebacks.
            from grpo.check import validate_run

            validate_run(_with_stages(cfg, stages), args.config)
        if getattr(args, "nproc", 1) > 1 and "LOCAL_RANK" not in os.environ:
            return _relaunch_distributed(args)
        return _run_command(args, cfg, None if args.command == "eval" else stages)
    except ConfigError as exc:
        return _fail("config", exc)
    except DataError as exc:
        return _fail("data", exc)
    except GateStopped as exc:  # eval.gate with action stop: the summary (table printed) says which stage fell
        if int(os.environ.get("RANK", "0")) == 0:
            print(f"grpo: {exc}", file=sys.stderr, flush=True)
        return 3
    except Preempted as exc:  # SIGTERM/SIGINT: the step finished and the checkpoint is saved
        if int(os.environ.get("RANK", "0")) == 0:
            print(f"grpo: {exc}", flush=True)
        return 0
    except CheckpointError as exc:  # every rank raises it; the previous checkpoint is intact
        if int(os.environ.get("RANK", "0")) == 0 and not exc.reported:
            print(f"grpo: checkpoint error: {exc}", file=sys.stderr, flush=True)
        return 1
    except WeightSyncError as exc:  # every rank raises it (the ranks agree on the largest difference)
        if int(os.environ.get("RANK", "0")) == 0:
            print(f"grpo: {exc}", file=sys.stderr, flush=True)
        return 1
    except PeerLost as exc:  # another rank died or hangs; the process group is broken
        if exc.reporter:
            print(f"grpo: distributed error: {exc}", file=sys.stderr, flush=True)
        sys.stdout.flush()
        os._exit(1)  # not the interpreter's teardown, which can wait on the broken process group


def _with_stages(cfg, stages: list[str] | None):
    import dataclasses

    return cfg if stages is None else dataclasses.replace(cfg, stages=list(stages))


def _fail(kind: str, exc: Exception) -> int:
    """One line on standard error, from one rank only, and exit status 2."""
    if int(os.environ.get("RANK", "0")) == 0:
        print(f"grpo: {kind} error: {exc}", file=sys.stderr, flush=True)
    return 2


def _run_command(args: argparse.Namespace, cfg, stages: list[str] | None) -> int:
    from grpo.config import check_hardware, check_training_precision

    check_hardware(cfg, args.config)
    if args.command != "eval":
        check_training_precision(cfg, args.config)

    if args.command == "doctor":
        from grpo.doctor import doctor_command

        return doctor_command(cfg, args.config, model_path=args.model)

    from grpo.stages import pipeline

    if args.command == "eval":
        pipeline.evaluate_only(cfg, model_path=args.model)
    elif cfg.doctor:  # `doctor: true`: its checks first, on the run's own engine
        from grpo.doctor import DoctorFailed, preflight

        try:
            pipeline.run(cfg, stages=stages, preflight=preflight(args.config, stages))
        except DoctorFailed as exc:  # the report is printed; one line says why nothing trained
            if int(os.environ.get("RANK", "0")) == 0:
                print(f"grpo: {exc}", file=sys.stderr, flush=True)
            return 1
    else:
        pipeline.run(cfg, stages=stages)
    return 0


if __name__ == "__main__":
    sys.exit(main())
