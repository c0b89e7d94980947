"""Pieces of the GRPO loop that need no engines: the prompt stream that checkpoints its position,
and the tensors of a micro-batch (what is in the loss, where the sampler logprobs go)."""
import torch

from grpo.grpo_loop import PromptStream, Sample, _micro_batches, micro_batch_tensors


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
    assert full == [real[:4], real[:4]]
    none_real = _micro_batches(filler[:4], size=2, count=2)
    assert len(none_real) == 2 and all(len(m) == 1 and not m[0].in_loss for m in none_real)
