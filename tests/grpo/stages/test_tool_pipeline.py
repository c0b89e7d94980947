"""`grpo run configs/tiny_tool_arith.yaml` (code_block calls) and `configs/tiny_tool_arith_json.yaml` (tool_call: JSON
calls, answers rendered by the chat template), scaled down, as a user launches them: SFT on demonstrations with
python calls (tool outputs masked), GRPO on multi-turn tool episodes in the sandbox, evaluation with the same
episodes. Once more with `--nproc 2 rollout.mode=async`: the inference process runs the episodes and the
evaluations, the training process SFT and GRPO."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

from grpo.runtime.distributed import env_without_rendezvous

REPO = Path(__file__).resolve().parents[3]


@pytest.mark.slow
@pytest.mark.parametrize("config, name, launch", [
    ("tiny_tool_arith.yaml", "tiny_tool_arith", []),
    ("tiny_tool_arith_json.yaml", "tiny_tool_arith_json", []),
    ("tiny_tool_arith.yaml", "tiny_tool_arith", ["--nproc", "2", "rollout.mode=async", "rollout.inference_ranks=1"]),
], ids=["code_block", "tool_call", "code_block-async"])
def test_scaled_down_tool_pipeline(tmp_path, config, name, launch):
    overrides = [
        f"output_dir={tmp_path / 'runs'}", f"model.tiny_dir={tmp_path / 'tiny'}",
        "data.tool_arithmetic.n_sft=2000", "data.tool_arithmetic.n_rl=200", "data.tool_arithmetic.n_eval=24",
        "sft.max_steps=150", "sft.eval_every=150", "sft.patience=0",
        "grpo.steps=2", "grpo.prompts_per_step=8", "grpo.group_size=4", "grpo.micro_batch_size=32",
        "grpo.eval_every=0", "grpo.save_every=0", "grpo.check_weight_sync=true",
        "rollout.kv_cache_gb=0.25", "eval.num_problems=24", "metrics.progress_bar=false",
    ]
    cmd = [sys.executable, "-m", "grpo.cli", "run", str(REPO / "configs" / config), *overrides, *launch]
    proc = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=1200,
                          env={**env_without_rendezvous(), "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
    run_dir = tmp_path / "runs" / name
    summary = json.loads((run_dir / "summary.json").read_text())
    assert list(summary["stages"]) == ["base", "sft", "grpo"]
    for stage in summary["stages"].values():
        assert stage["n"] == 24 and "tool_calls_per_episode" in stage and "tool_use_share" in stage
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    grpo_rows = [r for r in rows if r["stage"] == "grpo" and "reward/mean" in r]
    assert [r["step"] for r in grpo_rows] == [1, 2]
    for r in grpo_rows:
        for key in ("tools/calls_per_episode", "tools/error_rate", "tools/timeout_rate", "tools/turns",
                    "tools/episodes_with_call", "tools/call_seconds", "timing/tools"):
            assert key in r, key
        # the engine samples from the trained policy; the trainer's logprobs match on the episode's tokens
        assert r["sync/max_logprob_diff"] < 1e-3
        assert r["tools/calls_per_episode"] > 0 and r["timing/tools"] > 0, r  # the SFT model calls the tool
    if launch:
        assert [r["async/staleness"] for r in grpo_rows] == [0, 1]
