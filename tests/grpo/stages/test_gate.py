"""Eval gates (`eval.gate`): the verdict on a stage's figures, what the pipeline does with it (stop after
writing the summary, or fall back to the model before the stage), how the summary table marks it, and the
config checks."""
import json

import pytest

from grpo.config import ConfigError, GateConfig, RunConfig, load_config
from grpo.report import summary_table
from grpo.stages.gate import GateStopped, verdict
from grpo.stages.pipeline import _apply_gate


def test_verdict():
    gate = GateConfig(metric="pass@1", max_drop=0.02, action="stop")
    v = verdict(gate, {"pass@1": 0.80}, {"pass@1": 0.70}, "sft")
    assert v["drop"] == pytest.approx(0.10) and not v["passed"]
    assert (v["before"], v["after"], v["max_drop"], v["from_stage"]) == (0.80, 0.70, 0.02, "sft")
    assert verdict(gate, {"pass@1": 0.80}, {"pass@1": 0.79}, "sft")["passed"]  # within the allowed drop
    assert verdict(gate, {"pass@1": 0.80}, {"pass@1": 0.90}, "sft")["passed"]
    assert verdict(GateConfig(), {"pass@1": 0.8}, {"pass@1": 0.1}, "sft") is None  # no gate set
    assert verdict(gate, None, {"pass@1": 0.1}, "base") is None  # nothing to compare with


def _summary():
    return {"stages": {"base": {"pass@1": 0.0, "wall_s": 0}, "sft": {"pass@1": 0.78, "wall_s": 100},
                       "kto": {"pass@1": 0.40, "wall_s": 20}}}


def test_a_failing_stage_stops_the_run_after_writing_the_summary(tmp_path, capsys):
    cfg = RunConfig()
    cfg.eval.gate = GateConfig(metric="pass@1", max_drop=0.05, action="stop")
    summary, path = _summary(), tmp_path / "summary.json"
    with pytest.raises(GateStopped, match=r"stage kto: pass@1 0.780 \(after sft\) -> 0.400: a drop of 0.380 > the "
                                          r"allowed 0.050; the run stopped"):
        _apply_gate(cfg, summary, "kto", "runs/x/sft/final", "runs/x/kto/final", summary["stages"]["sft"], "sft",
                    path, True, print)
    written = json.loads(path.read_text())
    assert written["stages"]["kto"]["gate"]["passed"] is False and written["stopped_by_gate"] == "kto"
    assert written["final_model"] == "runs/x/sft/final"
    assert "GATED (pass@1 0.780 -> 0.400, drop 0.380 / allowed 0.050): run stopped" in capsys.readouterr().out


def test_a_failing_stage_falls_back_and_a_passing_one_moves_on(tmp_path):
    cfg = RunConfig()
    cfg.eval.gate = GateConfig(metric="pass@1", max_drop=0.05, action="fallback")
    summary, path = _summary(), tmp_path / "summary.json"
    model, accepted, name = _apply_gate(cfg, summary, "kto", "sft_model", "kto_model", summary["stages"]["sft"], "sft",
                                        path, True, print)
    assert (model, accepted, name) == ("sft_model", summary["stages"]["sft"], "sft")  # the next stage starts from sft
    summary["stages"]["grpo"] = {"pass@1": 0.76, "wall_s": 50}  # compared with sft (the model it started from)
    model, accepted, name = _apply_gate(cfg, summary, "grpo", "sft_model", "grpo_model", accepted, name, path, True,
                                        print)
    assert (model, name) == ("grpo_model", "grpo") and summary["stages"]["grpo"]["gate"]["passed"]
    assert summary["stages"]["grpo"]["gate"]["before"] == 0.78
    table = summary_table(summary)
    assert "next stage from the sft model" in table and "ok (pass@1 0.780 -> 0.760" in table
    assert table.splitlines()[0].split("|")[-2].strip() == "gate"


def test_gate_config_is_checked(tmp_path):
    cfg = load_config(None, ["eval.gate.metric=pass@1", "eval.gate.max_drop=0.02", "eval.gate.action=fallback"])
    assert cfg.eval.gate == GateConfig(metric="pass@1", max_drop=0.02, action="fallback")
    with pytest.raises(ConfigError, match="eval.gate.metric"):
        load_config(None, ["eval.gate.metric=loss"])
    with pytest.raises(ConfigError, match="eval.gate.metric"):
        load_config(None, ["eval.gate.metric=maj@4", "eval.k=0"])
    assert load_config(None, ["eval.gate.metric=maj@4"]).eval.gate.metric == "maj@4"  # eval.k defaults to 4
    with pytest.raises(ConfigError, match="eval.gate.action"):
        load_config(None, ["eval.gate.metric=pass@1", "eval.gate.action=retry"])
    with pytest.raises(ConfigError, match="eval.gate.metric.*num_problems"):
        load_config(None, ["eval.gate.metric=pass@1", "eval.num_problems=0"])
    with pytest.raises(ConfigError, match="eval.gate.max_drop"):
        load_config(None, ["eval.gate.max_drop=-1"])


def test_kto_is_a_command():
    from grpo.cli import build_parser

    args = build_parser().parse_args(["kto", "configs/tiny_arith.yaml", "kto.beta=0.2", "--nproc", "2"])
    assert (args.command, args.overrides, args.nproc) == ("kto", ["kto.beta=0.2"], 2)


def test_kto_in_the_stages_and_its_config_checks():
    assert load_config(None, ["stages=[sft,kto,grpo]"]).stages == ["sft", "kto", "grpo"]
    assert load_config(None, ["stages=[sft,dpo,kto,grpo]"]).stages == ["sft", "dpo", "kto", "grpo"]
    with pytest.raises(ConfigError, match="sft -> dpo -> kto -> grpo"):
        load_config(None, ["stages=[kto,dpo]"])
    with pytest.raises(ConfigError, match="kto.data_file"):
        load_config(None, ["stages=[kto]", "kto.data=file"])
    with pytest.raises(ConfigError, match="kto.balance"):
        load_config(None, ["kto.balance=oversample"])
    with pytest.raises(ConfigError, match="kto.batch_size"):
        load_config(None, ["kto.batch_size=1"])


@pytest.mark.slow
def test_gate_falls_back_then_stops_when_kto_is_made_to_regress(tmp_path):
    """`grpo run` through SFT -> KTO (verifier-labelled) -> GRPO where KTO is made harmful on purpose (lr 0.5):
    with `action: fallback` GRPO starts from the SFT model and the summary marks KTO as gated; launched again with
    `action: stop`, the finished stages are not retrained and the run stops after KTO with exit status 3."""
    import subprocess
    import sys
    from pathlib import Path

    from grpo.runtime.distributed import env_without_rendezvous

    repo = Path(__file__).resolve().parents[3]
    overrides = [
        f"output_dir={tmp_path / 'runs'}", f"model.tiny_dir={tmp_path / 'tiny'}", "stages=[sft,kto,grpo]",
        "data.arithmetic.ops=[+]", "data.arithmetic.max_digits=2", "data.arithmetic.n_sft=3000",
        "data.arithmetic.n_rl=200", "data.arithmetic.n_eval=40",
        "sft.max_steps=150", "sft.eval_every=50", "sft.patience=0",
        "kto.num_prompts=16", "kto.samples_per_prompt=4", "kto.batch_size=16", "kto.max_steps=3",
        "kto.optim.lr=0.5", "kto.optim.warmup_steps=0",  # harmful on purpose
        "grpo.steps=1", "grpo.prompts_per_step=4", "grpo.group_size=4", "grpo.micro_batch_size=16",
        "grpo.eval_every=0", "grpo.save_every=0", "rollout.max_tokens=40", "rollout.kv_cache_gb=0.25",
        "eval.num_problems=40", "eval.k=0", "eval.gate.metric=pass@1", "eval.gate.max_drop=0.05",
        "metrics.progress_bar=false", "metrics.tensorboard=false",
    ]
    cmd = [sys.executable, "-m", "grpo.cli", "run", str(repo / "configs" / "tiny_arith.yaml"), *overrides]
    env = env_without_rendezvous()
    proc = subprocess.run(cmd + ["eval.gate.action=fallback"], cwd=tmp_path, capture_output=True, text=True,
                          timeout=600, env=env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
    run_dir = tmp_path / "runs" / "tiny_arith"
    summary = json.loads((run_dir / "summary.json").read_text())
    stages = summary["stages"]
    assert stages["sft"]["pass@1"] > 0.1, stages  # something to lose
    gate = stages["kto"]["gate"]
    assert gate["passed"] is False and gate["from_stage"] == "sft" and gate["action"] == "fallback"
    assert gate["drop"] > 0.05 and gate["after"] == stages["kto"]["pass@1"]
    assert f"stage grpo: starting from {run_dir / 'sft' / 'final'}" in proc.stdout
    assert stages["grpo"]["gate"]["from_stage"] == "sft"
    assert "GATED" in proc.stdout and "next stage from the sft model" in proc.stdout

    again = subprocess.run(cmd + ["eval.gate.action=stop"], cwd=tmp_path, capture_output=True, text=True, timeout=300,
                           env=env)
    assert again.returncode == 3, again.stdout[-3000:] + again.stderr[-3000:]
    assert "stage sft already finished" in again.stdout and "stage kto already finished" in again.stdout
    assert "eval gate failed after stage kto: pass@1" in again.stderr and "the run stopped" in again.stderr
    assert "stage grpo: starting" not in again.stdout
    stopped = json.loads((run_dir / "summary.json").read_text())
    assert stopped["stopped_by_gate"] == "kto" and stopped["final_model"] == str(run_dir / "sft" / "final")
