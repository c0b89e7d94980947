"""Pieces of the GRPO loop that need no engines: the prompt stream that checkpoints its position,
and the tensors of a micro-batch (what is in the loss, where the sampler logprobs go)."""
import pytest
import torch

from grpo.data.prompt_stream import PromptStream
from grpo.stages.grpo import Sample, _micro_batches, micro_batch_tensors, padding_buckets


def test_prompt_stream_is_seeded_sharded_and_resumable():
    a = PromptStream(10, seed=1, rank=0, world_size=2)
    first = a.take(7)
    assert {i for _, i in first[:5]} == {0, 2, 4, 6, 8}  # one epoch = every prompt of this rank once
    assert [p for p, _ in first] == list(range(7))
    resumed = PromptStream(10, seed=1, rank=0, world_size=2, position=3)
    assert resumed.take(4) == first[3:]
    other_rank = PromptStream(10, seed=1, rank=1, world_size=2).take(5)
    assert {i for _, i in other_rank} == {1, 3, 5, 7, 9}
    assert PromptStream(10, seed=2, rank=0, world_size=2).take(5) != first[:5]


def test_micro_batch_tensors_align_completions_on_the_shifted_grid():
    s1 = Sample(prompt_ids=[5, 6, 7], completion_ids=[8, 9], sampler_logprobs=[-0.1, -0.2], truncated=False,
                reward=1.0, advantage=0.5)
    s2 = Sample(prompt_ids=[5], completion_ids=[4, 3, 2], sampler_logprobs=[-1.0, -2.0, -3.0], truncated=True,
                reward=0.0, advantage=-0.5, in_loss=False)
    t = micro_batch_tensors([s1, s2], pad_id=0)
    assert t["input_ids"].tolist() == [[5, 6, 7, 8, 9], [5, 4, 3, 2, 0]]
    assert t["attention_mask"].tolist() == [[1, 1, 1, 1, 1], [1, 1, 1, 1, 0]]
    # position t predicts token t+1: completion tokens 8, 9 are predicted at positions 2, 3
    assert t["mask"].tolist() == [[False, False, True, True], [False, False, False, False]]  # s2 is filler
    assert torch.allclose(t["sampler_logprobs"][0], torch.tensor([0.0, 0.0, -0.1, -0.2]))
    assert torch.allclose(t["sampler_logprobs"][1], torch.tensor([-1.0, -2.0, -3.0, 0.0]))
    assert t["advantages"].tolist() == [0.5, -0.5] and t["truncated"].tolist() == [False, True]


def test_micro_batches_keep_the_accumulation_count_and_shrink_filler():
    def sample(i, in_loss):
        return Sample([1, 2], [3] * (i + 1), None, False, 0.0, in_loss=in_loss)

    real = [sample(i, True) for i in range(5)]
    filler = [sample(i, False) for i in range(7)]
    mixed = [real[0], filler[0], *real[1:], *filler[1:]]
    micro = _micro_batches(mixed, size=4, count=3)
    assert len(micro) == 3  # DeepSpeed was built for 3 micro-batches per step
    assert micro[0] == real[:4] and micro[1] == [real[4]]
    assert len(micro[2]) == 1 and not micro[2][0].in_loss  # a lone filler sample, not four
    assert _micro_batches(real + filler[:3], size=4, count=2) == [real[:4], [real[4]]]
    full = _micro_batches(real[:4] + real[:4], size=4, count=2)
    assert full == [[real[0], real[0], real[1], real[1]], [real[2], real[2], real[3], real[3]]]  # by length
    none_real = _micro_batches(filler[:4], size=2, count=2)
    assert len(none_real) == 2 and all(len(m) == 1 and not m[0].in_loss for m in none_real)


def _len_sample(prompt_len: int, completion_len: int, advantage: float = 1.0, in_loss: bool = True) -> Sample:
    return Sample([1] * prompt_len, [2] * completion_len, [-0.5] * completion_len, False, 0.0, advantage=advantage,
                  in_loss=in_loss)


def test_padding_buckets_split_off_the_long_outlier():
    # total lengths 10, 11, 12, 40 (prompt 4 + completion)
    a, b, c, long = (_len_sample(4, n) for n in (6, 7, 8, 36))
    # one pass would be 4 x 40 = 160 slots for 73 tokens: 54% padding. Sorted, 10+11+12 = 33 tokens in
    # 3 x 12 = 36 slots (8.3% padding); adding the 40 would give 73 / 160: over 25%, so it goes alone.
    assert padding_buckets([long, c, a, b], max_padding=0.25) == [[a, b, c], [long]]
    assert padding_buckets([long, c, a, b], max_padding=1.0) == [[a, b, c, long]]  # one pass
    # 10 and 11 in 2 x 11 slots: 1/22 = 4.5% padding; adding 12 gives 3/36 = 8.3%: over 5%
    assert padding_buckets([c, b, a], max_padding=0.05) == [[a, b], [c]]
    assert padding_buckets([a, a], max_padding=0.0) == [[a, a]]  # equal lengths never pad


def test_micro_batches_are_sorted_by_length():
    real = [_len_sample(3, n) for n in (9, 2, 30, 5)]
    micro = _micro_batches(real, size=2, count=2)
    assert [[len(s.completion_ids) for s in m] for m in micro] == [[2, 5], [9, 30]]


def test_bucketed_passes_give_the_loss_and_gradient_of_one_padded_pass(tiny_model_dir):
    """Splitting a micro-batch into passes changes the work, not the result: right padding is invisible
    to causal attention, and each pass's loss is normalized by the batch-wide token count."""
    from transformers import AutoModelForCausalLM

    from grpo.stages.grpo import sequence_logprobs
    from grpo.algorithms.policy_losses import policy_loss

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir).float()
    gen = torch.Generator().manual_seed(1)

    def random_sample(prompt_len, completion_len, advantage):
        ids = torch.randint(5, 60, (prompt_len + completion_len,), generator=gen).tolist()
        return Sample(ids[:prompt_len], ids[prompt_len:], [-1.0] * completion_len, False, 0.0, advantage=advantage)

    samples = [random_sample(5, 3, 1.0), random_sample(4, 6, -0.5), random_sample(6, 4, 0.3),
               random_sample(5, 40, -1.2)]
    forward = (lambda ids, att: model(input_ids=ids, attention_mask=att, use_cache=False).logits)
    n_tokens = float(sum(len(s.completion_ids) for s in samples))

    def loss_and_grad(passes):
        model.zero_grad()
        total = 0.0
        for group in passes:
            t = micro_batch_tensors(group, pad_id=0)
            logps, _ = sequence_logprobs(forward, t, 1.0)
            loss, _ = policy_loss(logps, None, t["advantages"], t["mask"], aggregation="token_mean",
                                  batch_num_tokens=n_tokens, sampler_logprobs=t["sampler_logprobs"])
            total = total + loss
        total.backward()
        return float(total.detach()), torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])

    buckets = padding_buckets(samples, max_padding=0.25)
    assert len(buckets) == 2 and buckets[1] == [samples[3]]  # the 45-token sequence runs alone
    loss_one, grad_one = loss_and_grad([samples])
    loss_split, grad_split = loss_and_grad(buckets)
    assert abs(loss_one) > 1e-3 and grad_one.abs().max() > 1e-4  # a real, non-zero comparison
    assert loss_split == pytest.approx(loss_one, abs=1e-5)
    assert torch.allclose(grad_split, grad_one, atol=1e-5, rtol=1e-4)


def test_weight_sync_check_stops_an_engine_that_samples_another_policy():
    """An engine sampling from the base model instead of base + adapter differs from the trainer by about the
    adapter's effect: the run stops with both figures; within the tolerance nothing happens; bf16 is not enforced."""
    from grpo.config import RunConfig
    from grpo.runtime.rollout import WeightSyncError
    from grpo.stages.grpo import check_sync, sync_tolerance

    check_sync({"sync/max_logprob_diff": 6e-6, "sync/adapter_effect": 0.06}, 1e-3, 1)
    with pytest.raises(WeightSyncError, match=r"step 3 .* 0\.059 > grpo.sync_tolerance=0.001.*adapter moves logprobs "
                                              r"by up to 0\.06"):
        check_sync({"sync/max_logprob_diff": 0.059, "sync/adapter_effect": 0.06}, 1e-3, 3)
    cfg = RunConfig()
    assert sync_tolerance(cfg) == 1e-3
    cfg.model.dtype, cfg.engine.precision = "bfloat16", "bf16"
    assert sync_tolerance(cfg) is None
    check_sync({"sync/max_logprob_diff": 0.5}, sync_tolerance(cfg), 1)
    cfg.grpo.sync_tolerance = 0.2
    with pytest.raises(WeightSyncError, match="0.5 > grpo.sync_tolerance=0.2$"):
        check_sync({"sync/max_logprob_diff": 0.5}, sync_tolerance(cfg), 1)
