"""Session-wide fixtures shared by every test package.

`tiny_model_dir`: a small Qwen2 model + char tokenizer built once per session (no downloads).
`sft_arith_model`: the embedded model after a short SFT on the arithmetic task, trained once per session (~50 s)
for the slow tests that need a model with some skill to start RL from.
`vllm_llm`: ONE vLLM engine on that model for the whole session; starting vLLM costs ~30 s on the CPU, so
tests share it instead of starting their own. Tests that use it must be marked `@pytest.mark.slow` and must
not leave it changed (e.g. a test that pushes new weights pushes the original ones back).
"""

from __future__ import annotations

import gc

import pytest

# Random weights with this spread give varied greedy outputs; at the usual 0.02 the tied embeddings make a
# fresh model repeat its last input token forever, which would let an equivalence test pass trivially.
TEST_MODEL_INIT_STD = 0.1
# vLLM on the CPU sizes its KV cache as (gpu_memory_utilization x node memory) - (this process's RSS), which
# fails once a long test session has grown; a fixed size avoids that (and skips the warm-up pass).
TEST_KV_CACHE_BYTES = 256 * 1024**2


def pytest_configure(config: pytest.Config) -> None:
    # Also declared in pyproject.toml; repeated so the marker is known however pytest is invoked.
    config.addinivalue_line("markers", "slow: end-to-end tests that start vLLM or launch DeepSpeed")


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory):
    """Path to a 2-layer, 128-wide Qwen2 model with the project's char tokenizer (`micro` preset)."""
    from grpo.runtime.tiny_model import TINY_PRESETS, build_tiny_model

    out_dir = tmp_path_factory.mktemp("tiny_model") / "model"
    return build_tiny_model(out_dir, **TINY_PRESETS["micro"], seed=0, initializer_range=TEST_MODEL_INIT_STD)


@pytest.fixture(scope="session")
def vllm_llm(tiny_model_dir):
    """One in-process vLLM `LLM` on `tiny_model_dir` (fp32, eager), shared by the whole session."""
    with pytest.MonkeyPatch.context() as patch:
        # The engine core must run in this process (no extra process on a 2-core machine, and weight pushes
        # from tests go to the same engine); vLLM reads this when the engine is built and when it is used.
        patch.setenv("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
        from vllm import LLM

        llm = LLM(
            model=str(tiny_model_dir),
            dtype="float32",
            enforce_eager=True,
            gpu_memory_utilization=0.15,
            kv_cache_memory_bytes=TEST_KV_CACHE_BYTES,
            max_model_len=512,
            seed=0,
        )
        yield llm
        del llm
        gc.collect()


# What `sft_arith_model` was trained with; a test that starts RL from it and wants the same prompts passes these too.
SFT_ARITH_DATA = ["data.arithmetic.n_rl=2000", "data.arithmetic.n_eval=50"]


@pytest.fixture(scope="session")
def sft_arith_model(tmp_path_factory):
    """`grpo run configs/tiny_arith.yaml 'stages=[sft]'`, 300 steps (well short of convergence: ~25% sample
    accuracy, room for RL to add); the final model directory."""
    import subprocess
    import sys
    from pathlib import Path

    from grpo.runtime.distributed import env_without_rendezvous

    tmp = tmp_path_factory.mktemp("sft_arith")
    repo = Path(__file__).resolve().parents[1]
    cmd = [sys.executable, "-m", "grpo.cli", "run", str(repo / "configs" / "tiny_arith.yaml"), "name=sft",
           f"output_dir={tmp / 'runs'}", f"model.tiny_dir={tmp / 'tiny'}", "stages=[sft]", *SFT_ARITH_DATA,
           "sft.max_steps=300", "sft.eval_every=100", "sft.patience=0", "eval.num_problems=0",
           "rollout.kv_cache_gb=0.25", "metrics.progress_bar=false", "metrics.tensorboard=false"]
    proc = subprocess.run(cmd, cwd=tmp, env=env_without_rendezvous(), capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
    return tmp / "runs" / "sft" / "sft" / "final"
