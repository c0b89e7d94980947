"""End-to-end GRPO on real vLLM + real DeepSpeed (gloo on the CPU): two ranks under ZeRO-2, two
"nodes" rendezvousing over loopback, and exact resume. Each launch starts its own vLLM engines in
fresh processes (the trainer owns them), so these are few and small."""
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from grpo.runtime.distributed import env_without_rendezvous

pytestmark = pytest.mark.slow

HERE = Path(__file__).parent
REPO = HERE.parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    from grpo.runtime.tiny_model import TINY_PRESETS, build_tiny_model

    # std 0.1: a fresh model with varied (not uniform) next-token distributions, so a stale engine
    # would show up as a logprob difference.
    return build_tiny_model(tmp_path_factory.mktemp("grpo_e2e") / "model", **TINY_PRESETS["micro"], seed=0,
                            initializer_range=0.1)


def write_config(tmp_path: Path, model_dir: Path) -> Path:
    cfg = f"""
name: e2e
output_dir: {tmp_path / 'runs'}
seed: 3
stages: [grpo]
model: {{name_or_path: {model_dir}}}
data:
  source: arithmetic
  arithmetic: {{n_sft: 0, n_rl: 64, n_eval: 8}}
verifiers:
  - name: reward_plugins:digit_fraction
  - name: reward_plugins:unreliable   # NaN or an exception for two thirds of the items
    weight: 0.1
verify: {{workers: 0}}
rollout: {{max_tokens: 16, gpu_memory_utilization: 0.05, kv_cache_gb: 0.25}}
grpo:
  steps: 3
  prompts_per_step: 2
  group_size: 4
  micro_batch_size: 4
  optim: {{lr: 0.01}}
  check_weight_sync: true
  save_every: 2
eval: {{num_problems: 0}}
metrics: {{tensorboard: false, progress_bar: false}}
"""
    path = tmp_path / "cfg.yaml"
    path.write_text(cfg)
    return path


def child_env() -> dict:
    """This process's environment without the rendezvous variables an in-process test's
    `init_distributed` left behind (a child would otherwise reuse this process's port)."""
    env = env_without_rendezvous()
    env.update(PYTHONPATH=f"{HERE}{os.pathsep}{os.environ.get('PYTHONPATH', '')}", OMP_NUM_THREADS="1",
               TOKENIZERS_PARALLELISM="false")
    return env


def run(cmd: list[str], cwd: Path, timeout: int = 1200) -> subprocess.CompletedProcess:
    env = child_env()
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{' '.join(cmd)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}"
    return proc


def grpo(*args: str) -> list[str]:
    return [sys.executable, "-m", "grpo.cli", *args]


def metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("zero_stage,padded", [(2, False), (3, False), (3, True)])
def test_two_ranks_zero_weights_change_and_engine_stays_in_sync(tmp_path, model_dir, zero_stage, padded):
    """ZeRO-3 also checks the push of partitioned weights: each rank gathers them for its engine. Padded rows
    with max_padding 0 would split each rank's micro-batch into a different number of passes; under ZeRO-3
    (collective parameter gathers in every forward) that must not happen, or the ranks wait on each other."""
    cfg = write_config(tmp_path, model_dir)
    # ZeRO-3 with threshold 0: every parameter partitioned and gathered in every forward (under the default
    # threshold all of this tiny model's parameters would stay whole on each rank)
    settings = [f"engine.zero_stage={zero_stage}"]
    settings += ["engine.zero3_persistence_threshold=0"] if zero_stage == 3 else []
    if padded:  # rank 0's micro-batch of 8 splits into 2 passes, rank 1's into 1, without the ZeRO-3 rule
        settings += ["grpo.share_prompt=false", "grpo.max_padding=0.0", "grpo.micro_batch_size=8"]
    run(grpo("train", str(cfg), "--nproc", "2", *settings), tmp_path, timeout=300)
    run_dir = tmp_path / "runs" / "e2e"
    rows = metrics(run_dir)
    assert [r["step"] for r in rows] == [1, 2, 3]
    for r in rows:
        # after every push, vLLM's logprobs of a completion equal the trainer's forward pass
        assert r["sync/max_logprob_diff"] < 1e-4, r
        # the sampler's logprobs of what it sampled equal the trainer's (on-policy, same weights)
        assert r["sampler_logprob_diff"] < 1e-4, r
        assert r["grad_norm"] > 0
        # the unreliable plug-in's NaNs and exceptions are scored 0 and counted, never a NaN loss or a crash
        assert r["verifier/errors"] > 0 and 0.0 <= r["reward/mean"] <= 1.1, r
    before = load_file(str(model_dir / "model.safetensors"))
    after = load_file(str(run_dir / "grpo" / "final" / "model.safetensors"))
    moved = max((after[k] - before[k]).abs().max().item() for k in after)
    assert moved > 1e-3, "GRPO did not change the weights"


def test_two_nodes_rendezvous_over_loopback(tmp_path, model_dir):
    cfg = write_config(tmp_path, model_dir)
    port = free_port()
    procs = []
    env = child_env()
    for node in (0, 1):
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes=2", f"--node_rank={node}",
               "--nproc_per_node=1", "--master_addr=127.0.0.1", f"--master_port={port}",
               "-m", "grpo.cli", "train", str(cfg), "grpo.steps=2", "engine.zero_stage=2",
               "grpo.dynamic_sampling=true", "grpo.max_sampling_rounds=2"]
        procs.append(subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                                      stderr=subprocess.STDOUT, text=True))
    outs = [p.communicate(timeout=1200)[0] for p in procs]
    for p, out in zip(procs, outs):
        assert p.returncode == 0, out[-5000:]
    rows = metrics(tmp_path / "runs" / "e2e")
    assert [r["step"] for r in rows] == [1, 2]
    assert all(r["sync/max_logprob_diff"] < 1e-4 for r in rows)


@pytest.mark.parametrize("zero_stage", [0, 3])
def test_resume_matches_uninterrupted_run(tmp_path, model_dir, zero_stage):
    """ZeRO-3 too: its checkpoint holds partitioned weights and optimizer states. With a KL term (the
    reference model's logprobs) and two updates per batch (old-policy logprobs), both through the
    shared-prompt forward."""
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir(), b.mkdir()
    # logprobs are compared at a temperature other than 1 too
    settings = ["rollout.temperature=0.8", f"engine.zero_stage={zero_stage}", "grpo.beta=0.04",
                "grpo.num_iterations=2"]
    run(grpo("train", str(write_config(a, model_dir)), "grpo.steps=4", *settings), a)
    cfg_b = write_config(b, model_dir)
    run(grpo("train", str(cfg_b), "grpo.steps=2", *settings), b)  # "interrupted" after step 2 (checkpoint saved)
    out = run(grpo("train", str(cfg_b), "grpo.steps=4", *settings), b)
    assert "resumed from checkpoint" in out.stdout + out.stderr and "at step 2" in out.stdout + out.stderr
    full = {r["step"]: r for r in metrics(a / "runs" / "e2e")}
    resumed = [r for r in metrics(b / "runs" / "e2e")]
    assert [r["step"] for r in resumed] == [1, 2, 3, 4]
    for r in resumed:
        ref = full[r["step"]]
        assert r["reward/mean"] == pytest.approx(ref["reward/mean"], abs=1e-6), r["step"]
        assert r["policy/pg_loss"] == pytest.approx(ref["policy/pg_loss"], abs=1e-5), r["step"]
        assert r["grad_norm"] == pytest.approx(ref["grad_norm"], rel=1e-4), r["step"]
        assert r["policy/kl"] == pytest.approx(ref["policy/kl"], abs=1e-6), r["step"]
        assert r["sampler_logprob_diff"] < 1e-4
    # the policy leaves the reference: the KL term is live (0 at step 1, before any update)
    assert full[1]["policy/kl"] == pytest.approx(0.0, abs=1e-6) and full[4]["policy/kl"] > 1e-6


@pytest.fixture(scope="module")
def vllm_rollout(model_dir):
    """One `VLLMRollout` for the tests of this module that need the class itself (not the session engine)."""
    from grpo.config import EngineConfig, RolloutConfig
    from grpo.runtime.engine import init_distributed
    from grpo.runtime.rollout import VLLMRollout

    init_distributed(EngineConfig())  # as a run does first: the external_launcher executor joins this group
    return VLLMRollout(str(model_dir), RolloutConfig(kv_cache_gb=0.1, max_tokens=8), max_model_len=128)


def test_push_of_a_saved_tied_model_matches_transformers(tmp_path, vllm_rollout):
    """Regression: a checkpoint with tied embeddings stores lm_head once; the push must still give
    the engine the new lm_head (before the fix greedy text stayed right while sampling was garbage)."""
    from transformers import AutoModelForCausalLM

    from grpo.runtime.models import load_weights
    from grpo.runtime.tiny_model import TINY_PRESETS, build_tiny_model

    other = build_tiny_model(tmp_path / "other", **TINY_PRESETS["micro"], seed=7, initializer_range=0.1)
    rollout = vllm_rollout
    rollout.push_weights(load_weights(other))
    prompt, completion = [7, 8, 9, 10], [11, 12, 13, 14, 15]
    engine = torch.tensor(rollout.token_logprobs(prompt, completion))
    model = AutoModelForCausalLM.from_pretrained(other).eval()
    with torch.no_grad():
        logits = model(torch.tensor([prompt + completion])).logits[0, len(prompt) - 1:-1]
    expected = torch.log_softmax(logits, -1).gather(-1, torch.tensor(completion)[:, None]).squeeze(-1)
    assert torch.allclose(engine, expected, atol=1e-4), (engine, expected)


def test_rollout_texts_equal_vllms_own_detokenization(vllm_rollout):
    """The rollout samples with `detokenize=False` and decodes each batch at once; the texts must be
    what vLLM's incremental detokenizer gives for the same requests, and the token ids and logprobs
    must not change."""
    from vllm import SamplingParams

    from grpo.runtime.rollout import SamplingSpec

    prompts, seeds = ["12+34=", "7*8=", "hello"], [1, 2, 3]
    spec = SamplingSpec(n=4, temperature=1.0, max_tokens=24)
    groups = vllm_rollout.generate(prompts, spec, seeds)
    params = [SamplingParams(n=4, temperature=1.0, max_tokens=24, seed=s, logprobs=0, skip_special_tokens=True)
              for s in seeds]
    reference = vllm_rollout.llm.generate(prompts, params, use_tqdm=False)
    texts = [c.text for g in groups for c in g.completions]
    assert any(len(t) > 3 for t in texts), texts  # a model that emits EOS at once would prove nothing
    for group, out in zip(groups, reference):
        assert [c.token_ids for c in group.completions] == [list(c.token_ids) for c in out.outputs]
        # The only allowed difference: a completion that ends inside a multi-byte character. vLLM's
        # incremental detokenizer holds those bytes back; decoding the whole completion shows them as
        # U+FFFD, as HFRollout (transformers' decode) does.
        assert [c.text.rstrip("\ufffd") for c in group.completions] == [c.text.rstrip("\ufffd") for c in out.outputs]
        for ours, theirs in zip(group.completions, out.outputs):
            expected = [step[tok].logprob for step, tok in zip(theirs.logprobs, theirs.token_ids)]
            assert ours.logprobs == pytest.approx(expected, abs=1e-6)


def test_grpo_raises_the_math_verifier_reward_on_arithmetic(tmp_path, sft_arith_model):
    """The loop optimizes what the verifier rewards. A short SFT (300 steps, ~25% sample accuracy, well
    short of convergence so there is room; the session's `sft_arith_model`) then 20 GRPO steps with the math
    verifier on fresh prompts: the mean reward of the last 5 steps clearly beats the first 5 (measured 0.14 -> 0.29; 0.24 -> 0.35 when
    the SFT ran in the same `grpo run`)."""
    overrides = [
        "name=rise", f"output_dir={tmp_path / 'runs'}", f"model.name_or_path={sft_arith_model}", "stages=[grpo]",
        "data.arithmetic.n_rl=2000", "data.arithmetic.n_eval=50", "eval.num_problems=0",
        "grpo.steps=20", "grpo.prompts_per_step=64", "grpo.micro_batch_size=128", "grpo.optim.lr=1e-4",
        "grpo.eval_every=0", "grpo.save_every=0", "rollout.kv_cache_gb=0.25",
        "metrics.progress_bar=false", "metrics.tensorboard=false",
    ]
    run(grpo("run", str(REPO / "configs" / "tiny_arith.yaml"), *overrides), tmp_path)
    rows = metrics(tmp_path / "runs" / "rise")
    rewards = [r["rewards/math/mean"] for r in rows if r["stage"] == "grpo" and "rewards/math/mean" in r]
    assert len(rewards) == 20
    first, last = sum(rewards[:5]) / 5, sum(rewards[-5:]) / 5
    assert 0.02 < first < 0.8 and last > first + 0.05, rewards
