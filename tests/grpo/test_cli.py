"""The `grpo` command line: help on every subcommand, `check` on the shipped configs (the GPU ones
included: validated without a GPU or any weights), and config errors as exit code 2 naming the key."""
import subprocess
import sys
from pathlib import Path

import pytest

from grpo.cli import main
from grpo.runtime.distributed import env_without_rendezvous  # an in-process test may have set them

REPO = Path(__file__).resolve().parents[2]
CONFIGS = sorted(str(p.relative_to(REPO)) for p in (REPO / "configs").rglob("*.yaml"))


def test_console_script_help():
    out = subprocess.run([sys.executable, "-m", "grpo.cli", "--help"], capture_output=True, text=True, cwd=REPO)
    assert out.returncode == 0
    for sub in ("run", "sft", "dpo", "train", "eval", "check"):
        assert sub in out.stdout


@pytest.mark.parametrize("sub", ["run", "sft", "dpo", "train", "eval", "check"])
def test_subcommand_help(sub, capsys):
    with pytest.raises(SystemExit) as e:
        main([sub, "--help"])
    assert e.value.code == 0
    assert "key=value" in capsys.readouterr().out


@pytest.mark.parametrize("config", CONFIGS)
def test_check_shipped_configs(config, capsys, monkeypatch):
    monkeypatch.chdir(REPO)
    assert main(["check", config, "data.arithmetic.n_sft=200", "data.arithmetic.n_rl=200"]) == 0
    assert "ok" in capsys.readouterr().out


def test_check_reports_bad_key_with_exit_2(tmp_path, capsys):
    cfg = tmp_path / "bad.yaml"
    cfg.write_text("rollout:\n  temprature: 0.7\n")
    assert main(["check", str(cfg)]) == 2
    err = capsys.readouterr().err
    assert "rollout.temprature" in err and str(cfg) in err


def test_check_reports_unknown_verifier(tmp_path, capsys):
    cfg = tmp_path / "v.yaml"
    cfg.write_text("verifiers:\n  - name: no_such_verifier\ndata: {arithmetic: {n_sft: 10, n_rl: 10, n_eval: 5}}\n")
    assert main(["check", str(cfg)]) == 2
    assert "verifiers[0]" in capsys.readouterr().err


def test_check_reports_bad_data_row(tmp_path, capsys):
    data = tmp_path / "d.jsonl"
    data.write_text('{"prompt": "a", "answer": "1"}\n{"prompt": "", "answer": "2"}\n{"prompt": "c", "answer": "3"}\n')
    cfg = tmp_path / "d.yaml"
    cfg.write_text(f"data: {{source: {data}, eval_size: 0}}\n")
    assert main(["check", str(cfg)]) == 2
    assert "row 1: field 'prompt'" in capsys.readouterr().err


def test_unknown_flag_is_refused(capsys):
    with pytest.raises(SystemExit) as e:
        main(["train", "configs/tiny_arith.yaml", "--nprocs", "2"])
    assert e.value.code == 2


def _hosted_pair(i: int, drop: str | None = None) -> str:
    import json

    row = {"input": {"messages": [{"role": "user", "content": f"What is {i} + 1?"}]},
           "preferred_output": [{"role": "assistant", "content": str(i + 1)}],
           "non_preferred_output": [{"role": "assistant", "content": str(i + 2)}]}
    row.pop(drop, None)
    return json.dumps(row)


@pytest.mark.parametrize("launch", [[], ["--nproc", "2"]], ids=["one process", "nproc 2"])
def test_a_bad_data_row_is_one_line_and_exit_2_on_a_training_command(tmp_path, launch):
    """Found before any rank starts: one line naming the file and row, not a traceback per rank."""
    prefs = tmp_path / "prefs.jsonl"
    prefs.write_text("\n".join([_hosted_pair(0), _hosted_pair(1), _hosted_pair(2),
                                _hosted_pair(3, drop="non_preferred_output"), _hosted_pair(4)]) + "\n")
    cmd = [sys.executable, "-m", "grpo.cli", "dpo", "configs/tiny_arith.yaml", *launch,
           f"output_dir={tmp_path / 'runs'}", f"model.tiny_dir={tmp_path / 'tiny'}", "dpo.pairs=file",
           f"dpo.pairs_file={prefs}", "data.arithmetic.n_sft=50", "data.arithmetic.n_rl=50"]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, timeout=120, env=env_without_rendezvous())
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 2, proc.stderr
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith(f"grpo: data error: {prefs}: row 3 (line 4)"), lines[0]
    assert "non_preferred_output" in lines[0]
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").rglob("*.safetensors"))


def test_an_unloadable_verifier_plugin_is_one_line_and_exit_2(tmp_path):
    cmd = [sys.executable, "-m", "grpo.cli", "train", "configs/tiny_arith.yaml", f"output_dir={tmp_path / 'runs'}",
           f"model.tiny_dir={tmp_path / 'tiny'}", "verifiers=[{name: no_such_module:reward}]",
           "data.arithmetic.n_sft=50", "data.arithmetic.n_rl=50"]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, timeout=120, env=env_without_rendezvous())
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr
    assert lines[0].startswith("grpo: config error: verifiers[0].name:") and "no_such_module" in lines[0]


def test_async_without_a_launch_of_several_processes_is_one_line_and_exit_2(tmp_path):
    cmd = [sys.executable, "-m", "grpo.cli", "train", "configs/tiny_arith.yaml", "rollout.mode=async",
           f"output_dir={tmp_path / 'runs'}", f"model.tiny_dir={tmp_path / 'tiny'}"]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, timeout=120, env=env_without_rendezvous())
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1] == (
        "grpo: config error: rollout.mode: async needs a launch of more than rollout.inference_ranks=1 processes: "
        "add --nproc 2 (or more), or launch with torchrun")
