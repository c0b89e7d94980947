"""The README's distributed launches, typed as a user types them, scaled down only by `key=value` overrides:
`grpo train configs/tiny_arith.yaml --nproc 2` from the untrained embedded model (nearly every group is all
wrong, so dynamic sampling drops them and the ranks hold different statistics: this aborted at step 2 with a
gloo size mismatch), and `grpo run configs/tiny_arith.yaml --nproc 2` through SFT -> DPO (verifier-built
pairs, a different number on each rank) -> GRPO from the DPO model."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

from grpo.runtime.distributed import env_without_rendezvous

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[3]
CONFIG = str(REPO / "configs" / "tiny_arith.yaml")
SMALL = ["data.arithmetic.n_sft=300", "data.arithmetic.n_rl=200", "data.arithmetic.n_eval=40",
         "rollout.max_tokens=40", "rollout.kv_cache_gb=0.25", "metrics.progress_bar=false",
         "metrics.tensorboard=false"]


def launch(tmp_path: Path, command: str, *overrides: str, timeout: int = 900) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "grpo.cli", command, CONFIG, "--nproc", "2", f"output_dir={tmp_path / 'runs'}",
           f"model.tiny_dir={tmp_path / 'tiny'}", *SMALL, *overrides]
    proc = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=timeout,
                          env=env_without_rendezvous())
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
    return proc


def metrics(run_dir: Path, stage: str) -> list[dict]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [r for r in rows if r.get("stage") == stage]


def test_train_on_two_ranks_from_the_untrained_embedded_model(tmp_path):
    launch(tmp_path, "train", "grpo.steps=3", "grpo.prompts_per_step=4", "grpo.group_size=4",
           "grpo.micro_batch_size=16", "grpo.eval_every=0", "grpo.save_every=0", "eval.num_problems=8")
    rows = metrics(tmp_path / "runs" / "tiny_arith", "grpo")
    assert [r["step"] for r in rows] == [1, 2, 3]
    # an untrained model is all wrong: groups were dropped, and a rank with nothing kept has no policy stats
    assert all(r["sampling/dropped_groups"] > 0 for r in rows)
    assert all(0.0 <= r["reward/mean"] <= 1.0 for r in rows)


def test_run_on_two_ranks_sft_dpo_grpo(tmp_path):
    # SFT long enough that the samples are partly right, so the verifiers find pairs (about 1 in 4 correct)
    proc = launch(tmp_path, "run", "data.arithmetic.n_sft=3000", "sft.max_steps=200", "sft.eval_every=100",
                  "sft.patience=0", "dpo.num_prompts=24", "dpo.samples_per_prompt=6", "dpo.batch_size=4",
                  "dpo.max_steps=2", "grpo.steps=2", "grpo.prompts_per_step=4", "grpo.group_size=4",
                  "grpo.micro_batch_size=16", "grpo.eval_every=0", "grpo.save_every=1", "eval.num_problems=16")
    run_dir = tmp_path / "runs" / "tiny_arith"
    summary = json.loads((run_dir / "summary.json").read_text())
    assert list(summary["stages"]) == ["base", "sft", "dpo", "grpo"]
    for name, stage in summary["stages"].items():
        assert stage["n"] == 16 and 0.0 <= stage["pass@1"] <= 1.0, name
    report = json.loads((run_dir / "dpo" / "pairs_report.json").read_text())
    assert report["pairs"] > 0 and report["prompts"] == 24
    assert [r["step"] for r in metrics(run_dir, "grpo")] == [1, 2]
    assert "verifier pairs:" in proc.stdout
