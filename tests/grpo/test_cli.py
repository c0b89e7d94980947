"""The `grpo` command line: help on every subcommand, `check` on the shipped configs (the GPU ones
included: validated without a GPU or any weights), and config errors as exit code 2 naming the key."""
import subprocess
import sys
from pathlib import Path

import pytest

from grpo.cli import main

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
