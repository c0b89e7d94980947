"""Shared-prefix packing (grpo.algorithms.packing): the layout worked out by hand, and logprobs, entropies and
gradients equal to one padded row per sequence on a real model."""
import pytest
import torch

from grpo.stages.grpo import Sample, _micro_batches, micro_batch_tensors, sequence_logprobs
from grpo.algorithms.packing import PromptSharing, pack_shared_prefix, tree_attention_mask


def test_layout_of_one_prompt_with_two_continuations():
    p = pack_shared_prefix([([1, 2, 3], [[4, 5], [6]])], pad_id=0)
    assert p.input_ids.tolist() == [[1, 2, 3, 4, 5, 6]]
    assert p.position_ids.tolist() == [[0, 1, 2, 3, 4, 3]]  # each continuation restarts after the prompt
    assert p.segment_ids.tolist() == [[0, 0, 0, 1, 1, 2]]
    assert p.parent_ids.tolist() == [[-2, -2, -2, 0, 0, 0]]
    # 4 and 6 are both predicted by the prompt's last position (2); 5 by the position of 4 (3)
    assert p.source.tolist() == [2, 3, 2]
    assert p.targets.tolist() == [4, 5, 6]
    assert p.sequence.tolist() == [0, 0, 1] and p.offset.tolist() == [0, 1, 0]
    assert p.num_sequences == 2 and p.real_tokens == 6


def test_tree_mask_lets_a_continuation_see_its_prompt_and_itself_only():
    p = pack_shared_prefix([([1, 2], [[3, 4], [5]]), ([7], [[8]])], pad_id=0, max_row_tokens=4)
    # units [1 2 3 4] (4 tokens), then [1 2 5] and [7 8] (the row budget is the longest unit, 4)
    assert p.input_ids.tolist() == [[1, 2, 3, 4], [1, 2, 5, 0], [7, 8, 0, 0]]
    allowed = tree_attention_mask(p.segment_ids, p.parent_ids, torch.float32)[:, 0] == 0  # [R, L, L]
    assert allowed[0].int().tolist() == [[1, 0, 0, 0],
                                         [1, 1, 0, 0],
                                         [1, 1, 1, 0],
                                         [1, 1, 1, 1]]
    assert allowed[1].int().tolist() == [[1, 0, 0, 0],
                                         [1, 1, 0, 0],
                                         [1, 1, 1, 0],
                                         [0, 0, 0, 1]]  # padding sees only itself (no empty softmax row)
    p2 = pack_shared_prefix([([1, 2], [[3, 4], [5, 6]]), ([7, 8], [[9]])], pad_id=0)
    allowed = tree_attention_mask(p2.segment_ids, p2.parent_ids, torch.float32)[0, 0] == 0
    # row 0 holds [1 2 3 4 5 6]: 5 sees the prompt (0, 1) and itself (4), not the other answer (2, 3)
    assert allowed[4].int().tolist() == [1, 1, 0, 0, 1, 0]
    assert allowed[5].int().tolist() == [1, 1, 0, 0, 1, 1]


def test_units_fill_rows_up_to_the_longest_unit():
    # three prompts of 2 tokens with one 1-token answer each (3 tokens), one unit of 6: rows of 6 hold two small
    items = [([1, 2], [[3]]), ([4, 5], [[6]]), ([7, 8], [[9, 10, 11, 12]])]
    p = pack_shared_prefix(items, pad_id=0)
    assert p.input_ids.shape == (2, 6)
    assert sorted(p.input_ids.tolist()) == [[1, 2, 3, 4, 5, 6], [7, 8, 9, 10, 11, 12]]
    assert p.real_tokens == 12


def test_a_group_longer_than_the_row_budget_is_split_with_a_copy_of_its_prompt():
    p = pack_shared_prefix([([1, 2], [[3, 4, 5], [6, 7, 8], [9]])], pad_id=0, max_row_tokens=5)
    rows = sorted(p.input_ids.tolist())
    assert rows == [[1, 2, 3, 4, 5], [1, 2, 6, 7, 8], [1, 2, 9, 0, 0]]
    assert p.targets.tolist() == [3, 4, 5, 6, 7, 8, 9] and p.sequence.tolist() == [0, 0, 0, 1, 1, 1, 2]
    too_long = pack_shared_prefix([([1, 2], [[3, 4, 5, 6, 7]])], pad_id=0, max_row_tokens=4)
    assert too_long.input_ids.tolist() == [[1, 2, 3, 4, 5, 6, 7]]  # one continuation always fits its own row


def test_empty_prompt_or_continuation_is_refused():
    with pytest.raises(ValueError, match="item 0: the prompt is empty"):
        pack_shared_prefix([([], [[1]])], pad_id=0)
    with pytest.raises(ValueError, match="item 1: a continuation is empty"):
        pack_shared_prefix([([1], [[2]]), ([1], [[2], []])], pad_id=0)


def test_shared_prompt_logprobs_entropy_and_gradient_equal_padded_rows(tiny_model_dir):
    """Two groups (one prompt repeated in a third), completions of different lengths: the packed forward's
    per-token logprobs, entropies and the policy loss's gradient equal those of one padded row each."""
    from transformers import AutoModelForCausalLM

    from grpo.algorithms.policy_losses import policy_loss

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, attn_implementation="sdpa").float()
    gen = torch.Generator().manual_seed(3)

    def ids(n):
        return torch.randint(5, 60, (n,), generator=gen).tolist()

    prompts = [ids(7), ids(4)]
    samples = []
    for k, prompt in enumerate([prompts[0], prompts[1], prompts[0]]):
        for j, n in enumerate((3, 9, 1, 5)):
            samples.append(Sample(list(prompt), ids(n), [-1.0] * n, False, 0.0, advantage=(j - 1.5) * (k + 1)))
    forward = (lambda i, att, pos=None: model(input_ids=i, attention_mask=att, position_ids=pos,
                                              use_cache=False).logits)
    n_tokens = float(sum(len(s.completion_ids) for s in samples))

    def run(shared_rows):
        model.zero_grad()
        t = micro_batch_tensors(samples, pad_id=0, sharing=PromptSharing(shared_rows) if shared_rows else None)
        assert ("packed" in t) == bool(shared_rows)
        logps, ent = sequence_logprobs(forward, t, 0.7, with_entropy=True)
        loss, _ = policy_loss(logps, None, t["advantages"], t["mask"], aggregation="token_mean",
                              batch_num_tokens=n_tokens, sampler_logprobs=t["sampler_logprobs"])
        loss.backward()
        grad = torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])
        m = t["mask"]
        return logps.detach()[m], ent[m], float(loss.detach()), grad, t

    lp_pad, ent_pad, loss_pad, grad_pad, _ = run(0)
    lp_tree, ent_tree, loss_tree, grad_tree, t = run(4096)
    # prompt tokens: 7 + 4 once (equal prompts of groups 0 and 2 share a prefix), not 12 x 5.5
    assert t["packed"].real_tokens == 11 + sum(len(s.completion_ids) for s in samples)
    assert abs(loss_pad) > 1e-3 and grad_pad.abs().max() > 1e-4  # a real, non-zero comparison
    assert torch.allclose(lp_tree, lp_pad, atol=1e-5)
    assert torch.allclose(ent_tree, ent_pad, atol=1e-5)
    assert loss_tree == pytest.approx(loss_pad, abs=1e-6)
    assert torch.allclose(grad_tree, grad_pad, atol=1e-5, rtol=1e-4)


def test_shared_prompts_keep_groups_together_in_micro_batches():
    group_a = [Sample([1, 2], [3] * n, None, False, 0.0) for n in (9, 1)]
    group_b = [Sample([4, 5], [6] * n, None, False, 0.0) for n in (5, 2)]
    micro = _micro_batches(group_a + group_b, size=2, count=2, by_length=False)
    assert micro == [group_a, group_b]


def test_dpo_pairs_share_their_prompt_and_give_the_padded_sums(tiny_model_dir):
    from transformers import AutoModelForCausalLM

    from grpo.data.preferences import TokenizedPair
    from grpo.runtime.reference_cache import pair_batch, sequence_logps

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, attn_implementation="sdpa").float()
    gen = torch.Generator().manual_seed(5)

    def ids(n):
        return torch.randint(5, 60, (n,), generator=gen).tolist()

    pairs = [TokenizedPair(row=i, prompt_ids=ids(p), chosen_ids=ids(c), rejected_ids=ids(r))
             for i, (p, c, r) in enumerate([(6, 4, 9), (3, 7, 2), (9, 1, 1)])]
    forward = (lambda i, att, pos=None: model(input_ids=i, attention_mask=att, position_ids=pos,
                                              use_cache=False).logits)
    padded = pair_batch(pairs, pad_id=0)
    shared = pair_batch(pairs, pad_id=0, sharing=PromptSharing(64))
    assert shared["real_tokens"] == sum(len(p.prompt_ids) + len(p.chosen_ids) + len(p.rejected_ids) for p in pairs)
    assert torch.equal(shared["answer_lengths"], padded["answer_lengths"])  # chosen first, then rejected
    with torch.no_grad():
        sums_padded, _ = sequence_logps(forward, padded)
        sums_shared, _ = sequence_logps(forward, shared)
    assert sums_padded.abs().min() > 1.0  # real sums of several tokens each
    assert torch.allclose(sums_shared, sums_padded, atol=1e-4)


def test_a_continuation_shares_the_prompt_only_when_that_costs_less():
    rho = 1 / 1024  # the tiny model's attention cost per key over its linear cost per token
    # P = 20, eight answers of 28: the 8th joins with S = 196: 2 rho 28 196 = 10.7 <= P (1 + rho P) = 20.4
    short = pack_shared_prefix([([1] * 20, [[2] * 28] * 8)], pad_id=0, attention_cost=rho)
    assert short.input_ids.shape == (1, 20 + 8 * 28)
    # P = 100, two answers of 400: 2 rho 400 400 = 312.5 > 100 (1 + rho 100) = 109.8: each gets its own prompt
    # (one row of 900 would cost 900 + rho 900^2 = 1691 token-equivalents, two of 500 cost 2 x 744 = 1488)
    long = pack_shared_prefix([([1] * 100, [[2] * 400] * 2)], pad_id=0, attention_cost=rho)
    assert long.input_ids.shape == (2, 500)
    assert long.targets.tolist() == [2] * 800 and long.sequence.tolist() == [0] * 400 + [1] * 400
    # with no attention cost, every answer that fits the row budget shares
    assert pack_shared_prefix([([1] * 100, [[2] * 400] * 2)], pad_id=0).input_ids.shape == (1, 900)


def test_attention_cost_ratio_of_the_tiny_model(tmp_path):
    from transformers import AutoModelForCausalLM

    from grpo.runtime.attention import attention_cost_ratio
    from grpo.runtime.tiny_model import build_preset

    model = AutoModelForCausalLM.from_pretrained(build_preset(tmp_path / "m", "tiny"))
    # hidden 128, 3 layers; a layer: q, k, v, o 128 x 128 (+ 3 x 128 biases), MLP 3 x 128 x 512, two norms of
    # 128: 262,784 parameters; with the final norm, 3 x 262,784 + 128 outside the embedding; rho = 2 h x layers
    # over that: ~1/1027
    assert attention_cost_ratio(model) == pytest.approx(2 * 128 * 3 / (3 * 262_784 + 128), rel=1e-9)
