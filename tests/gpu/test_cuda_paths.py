"""The GPU paths on a real CUDA device: bf16 weights and optimizer, ZeRO-3 partitions gathered for the push,
checkpoints, LoRA in bf16, and the NCCL weight bridge of async rollouts (a group of one: a second rank needs a
second GPU). The CPU suite cannot run any of this; it is skipped without CUDA and run whenever a GPU is lent:

    python -m pytest tests/gpu -q
"""
from __future__ import annotations

from datetime import timedelta

import pytest
import torch

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

from grpo.algorithms.logprobs import gather_logprobs  # noqa: E402
from grpo.algorithms.policy_losses import policy_loss  # noqa: E402
from grpo.config import EngineConfig, LoraConfig, ModelConfig, OptimConfig  # noqa: E402
from grpo.runtime import weight_transfer  # noqa: E402
from grpo.runtime.engine import TrainEngine, init_distributed  # noqa: E402
from grpo.runtime.models import load_model  # noqa: E402


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    from grpo.runtime.tiny_model import TINY_PRESETS, build_tiny_model

    init_distributed(EngineConfig())  # dist_backend auto: NCCL with CUDA
    assert torch.distributed.get_backend() == "nccl"
    return build_tiny_model(tmp_path_factory.mktemp("gpu") / "model", **TINY_PRESETS["micro"], seed=0)


def make_engine(model_dir, zero_stage: int, grad_accum: int = 1, lora: LoraConfig | None = None) -> TrainEngine:
    torch.manual_seed(0)
    model = load_model(str(model_dir), ModelConfig(dtype="bfloat16", gradient_checkpointing=True, lora=lora))
    return TrainEngine(model, EngineConfig(zero_stage=zero_stage, precision="bf16"),
                       OptimConfig(lr=1e-2, max_grad_norm=1.0), total_steps=4, grad_accum=grad_accum)


def batch(vocab: int):
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, vocab, (4, 24), generator=g).cuda()
    return ids, torch.tensor([-1.0, -0.5, 0.5, 1.0]).cuda()


def train_step(eng: TrainEngine, ids: torch.Tensor, advantages: torch.Tensor) -> dict:
    parts = list(zip(ids.chunk(eng.grad_accum), advantages.chunk(eng.grad_accum)))
    for part_ids, part_adv in parts:
        logits = eng.forward(part_ids)  # [b, T, V] bf16
        logprobs = gather_logprobs(logits[:, :-1], part_ids[:, 1:])  # [b, T-1] fp32
        loss, _ = policy_loss(logprobs, None, part_adv, torch.ones_like(logprobs))
        eng.backward(loss / len(parts))
    return eng.step()


def weights(eng: TrainEngine) -> dict[str, torch.Tensor]:
    return {n: t.float().cpu() for n, t in eng.named_weights()}


def test_bf16_zero3_steps_like_zero0_and_gathers_whole_bf16_weights(model_dir):
    plain = make_engine(model_dir, zero_stage=0)
    ids, adv = batch(plain.module.config.vocab_size)
    before = weights(plain)
    plain_stats = train_step(plain, ids, adv)
    expected = weights(plain)

    z3 = make_engine(model_dir, zero_stage=3, grad_accum=2)
    assert any(p.numel() == 0 for p in z3.module.parameters())  # really partitioned
    z3_stats = train_step(z3, ids, adv)
    gathered = list(z3.named_weights())
    assert all(t.is_cuda and t.dtype == torch.bfloat16 for n, t in gathered if "inv_freq" not in n)
    after = {n: t.float().cpu() for n, t in gathered}

    assert z3_stats["grad_norm"] == pytest.approx(plain_stats["grad_norm"], rel=0.05)
    assert plain_stats["grad_norm"] > 0
    assert after.keys() == expected.keys()
    moved = 0
    for name, tensor in expected.items():
        assert after[name].shape == tensor.shape, name
        # the same Adam step (lr 1e-2) from the same weights: equal up to bf16 rounding of the result
        assert torch.allclose(after[name], tensor, atol=2e-2, rtol=2e-2), name
        moved += not torch.equal(tensor, before[name])
    assert moved >= len(expected) - 1  # the step really happened (every weight but perhaps a norm)


def test_bf16_zero3_checkpoint_restores_the_saved_weights(model_dir, tmp_path):
    eng = make_engine(model_dir, zero_stage=3)
    ids, adv = batch(eng.module.config.vocab_size)
    train_step(eng, ids, adv)
    saved = weights(eng)
    eng.save_checkpoint(tmp_path, "step_1", {"step": 1})
    train_step(eng, ids, adv)
    assert any(not torch.equal(saved[n], t) for n, t in weights(eng).items())

    fresh = make_engine(model_dir, zero_stage=3)
    assert fresh.load_checkpoint(tmp_path, "step_1")["step"] == 1
    for name, tensor in weights(fresh).items():
        assert torch.equal(tensor, saved[name]), name


def test_lora_in_bf16_trains_only_the_adapter_and_merges_for_the_push(model_dir):
    eng = make_engine(model_dir, zero_stage=0, lora=LoraConfig(rank=8, alpha=16))
    ids, adv = batch(eng.module.config.vocab_size)
    before = weights(eng)  # merged: the adapter starts at zero, so these are the base weights
    train_step(eng, ids, adv)
    after = weights(eng)
    assert after.keys() == before.keys() and not any("lora" in n for n in after)
    changed = [n for n in after if not torch.equal(after[n], before[n])]
    assert changed and all("proj" in n for n in changed)  # only the adapted projections, merged


def test_nccl_bridge_broadcasts_bf16_buckets_and_send_waits_for_the_bytes(model_dir):
    eng = make_engine(model_dir, zero_stage=0)
    named = list(eng.named_weights())
    # built as grpo.runtime.inference.split_world builds the bridge on GPUs
    opts = torch.distributed.ProcessGroupNCCL.Options()
    opts._timeout = timedelta(seconds=60)
    bridge = torch.distributed.ProcessGroupNCCL(torch.distributed.HashStore(), 0, 1, opts)
    snap = weight_transfer.snapshot(named, bucket_bytes=64 * 1024, device=torch.device("cuda"))
    assert len(snap.flats) > 1 and snap.flats[0].is_cuda
    seconds = weight_transfer.send(bridge, snap, timeout_s=60)
    assert seconds > 0
    metas = weight_transfer.describe(named)
    received = []
    for bucket, flat in zip(weight_transfer.plan_buckets(metas, 64 * 1024), snap.flats):
        received.extend(weight_transfer.unpack(flat, [metas[i] for i in bucket]))
    for (name, tensor), (rname, rtensor) in zip(named, received):
        assert name == rname and torch.equal(tensor, rtensor), name
