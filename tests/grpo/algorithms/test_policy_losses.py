import math

import pytest
import torch

from grpo.algorithms.policy_losses import (
    aggregate_token_losses,
    filter_truncated,
    importance_log_ratio,
    k3_kl,
    policy_loss,
    soft_overlong_penalty,
    tis_weights,
)

LOG = math.log


def _leaf(values):
    return torch.tensor(values, dtype=torch.float32, requires_grad=True)


def _f32(value):
    return torch.as_tensor(value, dtype=torch.float32)


def _close(actual, expected, **kwargs):
    torch.testing.assert_close(_f32(actual), _f32(expected), **kwargs)


# ---------------------------------------------------------------- clipped surrogate, by hand


def test_dapo_clip_higher_positive_advantage_hand_worked():
    # ratios [1.5, 1, 0.5], A = +1, clip range [0.8, 1.28]:
    # min(rA, clip(r)A) = [1.28, 1, 0.5]; seq_mean loss = -2.78 / 3.
    # The clipped token has no gradient; the others get -r * A / 3.
    logprobs = _leaf([[LOG(1.5), 0.0, LOG(0.5)]])
    mask = torch.ones(1, 3, dtype=torch.bool)
    loss, stats = policy_loss(
        logprobs, torch.zeros(1, 3), torch.tensor([1.0]), mask, epsilon_low=0.2, epsilon_high=0.28
    )
    _close(loss, -2.78 / 3)
    loss.backward()
    _close(logprobs.grad, [[0.0, -1 / 3, -0.5 / 3]])
    _close(stats["clip_frac_high"], 1 / 3)
    _close(stats["clip_frac_low"], 0.0)
    _close(stats["clip_frac"], 1 / 3)
    _close(stats["ratio_min"], 0.5)
    _close(stats["ratio_mean"], 1.0)
    _close(stats["ratio_max"], 1.5)
    # approx KL(pi_old || pi) = mean(r - 1 - log r) = (0.094535 + 0 + 0.193147) / 3
    _close(stats["approx_kl"], 0.095894)
    _close(stats["num_tokens"], 3.0)


def test_clip_negative_advantage_hand_worked():
    # A = -1: min(-r, -clip(r)) = [-1.5 (unclipped), -1, -0.8 (clipped at 1 - 0.2)].
    logprobs = _leaf([[LOG(1.5), 0.0, LOG(0.5)]])
    loss, stats = policy_loss(
        logprobs, torch.zeros(1, 3), torch.tensor([-1.0]), torch.ones(1, 3), epsilon_low=0.2, epsilon_high=0.28
    )
    _close(loss, 3.3 / 3)
    loss.backward()
    _close(logprobs.grad, [[0.5, 1 / 3, 0.0]])
    _close(stats["clip_frac_low"], 1 / 3)
    _close(stats["clip_frac_high"], 0.0)


def test_epsilon_high_defaults_to_epsilon_low():
    logprobs = torch.tensor([[LOG(1.5)]])
    loss, _ = policy_loss(logprobs, torch.zeros(1, 1), torch.tensor([1.0]), torch.ones(1, 1), epsilon_low=0.2)
    _close(loss, -1.2)


# ---------------------------------------------------------------- aggregation


def _on_policy_two_sequences():
    # Sequence 0 has 1 token with A = 1, sequence 1 has 3 tokens with A = 2; on-policy,
    # so the per-token loss is -A. Padded positions hold garbage that must not leak.
    logprobs = torch.tensor([[-1.0, float("nan"), float("inf")], [-1.0, -2.0, -3.0]], requires_grad=True)
    mask = torch.tensor([[1, 0, 0], [1, 1, 1]], dtype=torch.bool)
    return logprobs, torch.tensor([1.0, 2.0]), mask


@pytest.mark.parametrize(
    ("aggregation", "extra", "expected"),
    [
        ("seq_mean", {}, (-1 + -2) / 2),  # GRPO
        ("token_mean", {}, (-1 - 6) / 4),  # DAPO
        ("constant", {"constant_normalizer": 4}, -7 / (2 * 4)),  # Dr. GRPO
    ],
)
def test_aggregations_hand_worked(aggregation, extra, expected):
    logprobs, adv, mask = _on_policy_two_sequences()
    loss, _ = policy_loss(logprobs, None, adv, mask, aggregation=aggregation, **extra)
    _close(loss, expected)
    loss.backward()
    assert torch.isfinite(logprobs.grad).all()
    assert torch.equal(logprobs.grad[0, 1:], torch.zeros(2))


def test_per_token_advantages_with_padding_garbage():
    logprobs = _leaf([[-1.0, -1.0], [-1.0, -1.0]])
    adv = torch.tensor([[1.0, 3.0], [2.0, float("nan")]])
    mask = torch.tensor([[1, 1], [1, 0]], dtype=torch.bool)
    loss, _ = policy_loss(logprobs, None, adv, mask, aggregation="token_mean")
    _close(loss, -(1 + 3 + 2) / 3)
    loss.backward()
    _close(logprobs.grad, [[-1 / 3, -1.0], [-2 / 3, 0.0]])


def test_seq_mean_skips_sequences_without_tokens():
    per_token = torch.tensor([[2.0, 4.0], [7.0, 7.0]])
    mask = torch.tensor([[1, 1], [0, 0]], dtype=torch.bool)
    _close(aggregate_token_losses(per_token, mask, aggregation="seq_mean"), 3.0)
    # A fully empty batch is 0, not nan.
    _close(aggregate_token_losses(per_token, torch.zeros_like(mask), aggregation="token_mean"), 0.0)


@pytest.mark.parametrize(
    ("aggregation", "extra"),
    [
        ("token_mean", {"batch_num_tokens": None}),
        ("seq_mean", {"batch_num_sequences": 4}),
        ("constant", {"batch_num_sequences": 4, "constant_normalizer": 5}),
    ],
)
def test_micro_batches_with_batch_counts_sum_to_the_full_loss(aggregation, extra):
    generator = torch.Generator().manual_seed(0)
    per_token = torch.randn(4, 5, generator=generator)
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 0, 0, 0, 0], [1, 1, 1, 1, 1], [1, 1, 0, 0, 0]], dtype=torch.bool)
    extra = dict(extra)
    if "batch_num_tokens" in extra:
        extra["batch_num_tokens"] = float(mask.sum())
    full = aggregate_token_losses(
        per_token, mask, aggregation=aggregation, constant_normalizer=extra.get("constant_normalizer")
    )
    halves = sum(
        aggregate_token_losses(per_token[i : i + 2], mask[i : i + 2], aggregation=aggregation, **extra)
        for i in (0, 2)
    )
    _close(halves, full)
    # Without the batch counts the halves are normalized locally and do not add up.
    local = sum(
        aggregate_token_losses(
            per_token[i : i + 2],
            mask[i : i + 2],
            aggregation=aggregation,
            constant_normalizer=extra.get("constant_normalizer"),
        )
        for i in (0, 2)
    )
    assert not torch.allclose(local, full)


# ---------------------------------------------------------------- on-policy property


def test_on_policy_ratio_is_exactly_one_and_clipping_is_inert():
    generator = torch.Generator().manual_seed(1)
    base = torch.randn(4, 6, generator=generator) - 2.0
    adv = torch.randn(4, generator=generator)
    mask = torch.rand(4, 6, generator=generator) > 0.3
    mask[:, 0] = True
    results = []
    for eps_low, eps_high in [(0.0, 0.0), (0.2, 0.28), (0.999, 1e6)]:
        logprobs = base.clone().requires_grad_()
        loss, stats = policy_loss(logprobs, base.clone(), adv, mask, epsilon_low=eps_low, epsilon_high=eps_high)
        loss.backward()
        assert stats["ratio_min"].item() == 1.0 and stats["ratio_max"].item() == 1.0
        assert stats["clip_frac"].item() == 0.0
        results.append((loss.detach(), logprobs.grad))
    for loss, grad in results[1:]:
        assert torch.equal(loss, results[0][0])
        assert torch.equal(grad, results[0][1])
    # ... and the gradient is REINFORCE's: -A_i / (|y_i| * B) on every unmasked token.
    expected = -(adv.unsqueeze(1) / mask.sum(1, keepdim=True)) / 4 * mask
    _close(results[0][1], expected)


def test_old_logprobs_none_means_on_policy():
    logprobs = torch.tensor([[-0.5, -1.5]], requires_grad=True)
    loss_none, _ = policy_loss(logprobs, None, torch.tensor([2.0]), torch.ones(1, 2))
    loss_same, _ = policy_loss(logprobs, logprobs.detach(), torch.tensor([2.0]), torch.ones(1, 2))
    assert torch.equal(loss_none, loss_same)
    _close(loss_none, -2.0)


# ---------------------------------------------------------------- k3 KL


def test_k3_hand_worked():
    # d = ref - logp: k3 = e^d - d - 1 -> [0, e - 2, e^-1]
    _close(k3_kl(torch.zeros(3), torch.tensor([0.0, 1.0, -1.0])), [0.0, math.e - 2, math.exp(-1)])


def test_k3_is_nonnegative_and_zero_at_equality():
    generator = torch.Generator().manual_seed(2)
    logprobs = torch.randn(10_000, generator=generator) * 3
    tiny = torch.randn(10_000, generator=generator) * 1e-7  # where exp(d) - 1 - d rounds below 0
    assert (torch.exp(tiny) - 1 - tiny).min() < 0
    for ref in (logprobs + torch.randn(10_000, generator=generator) * 5, logprobs + tiny):
        assert (k3_kl(logprobs, ref) >= 0).all()
    assert torch.equal(k3_kl(logprobs, logprobs), torch.zeros_like(logprobs))


def test_kl_penalty_in_loss_hand_worked():
    # A = 0 isolates the penalty: loss = beta * mean(k3) = 0.1 * (0 + 0.718282 + 0.367879) / 3.
    # d k3 / d logp = 1 - e^(ref - logp), times beta / 3.
    logprobs = _leaf([[0.0, 0.0, 0.0]])
    ref = torch.tensor([[0.0, 1.0, -1.0]])
    loss, stats = policy_loss(logprobs, None, torch.tensor([0.0]), torch.ones(1, 3), ref_logprobs=ref, beta=0.1)
    _close(loss, 0.1 * (math.e - 2 + math.exp(-1)) / 3)
    _close(stats["kl"], (math.e - 2 + math.exp(-1)) / 3)
    _close(stats["pg_loss"], 0.0)
    loss.backward()
    _close(logprobs.grad, [[0.0, 0.1 / 3 * (1 - math.e), 0.1 / 3 * (1 - math.exp(-1))]])


def test_beta_zero_needs_no_reference_but_reports_one_when_given():
    logprobs = torch.zeros(1, 2)
    _, stats = policy_loss(logprobs, None, torch.tensor([1.0]), torch.ones(1, 2))
    assert "kl" not in stats
    loss, stats = policy_loss(logprobs, None, torch.tensor([1.0]), torch.ones(1, 2), ref_logprobs=torch.ones(1, 2))
    _close(loss, -1.0)
    _close(stats["kl"], math.exp(1) - 2)


# ---------------------------------------------------------------- GSPO


def test_gspo_ratio_is_exp_of_mean_token_log_ratio():
    # Sequence 0: token log-ratios [0.2, -0.1, 0.5] -> mean 0.2 -> s = e^0.2 = 1.221403.
    # Sequence 1: [0.6, 0.0, padding] -> mean 0.3 -> s = e^0.3 = 1.349859.
    logprobs = _leaf([[0.2, -0.1, 0.5], [0.6, 0.0, float("nan")]])
    old = torch.zeros(2, 3)
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]], dtype=torch.bool)
    log_ratio = importance_log_ratio(logprobs, old, mask, level="sequence")
    _close(log_ratio, [[0.2, 0.2, 0.2], [0.3, 0.3, 0.0]])

    adv = torch.tensor([1.0, -1.0])
    loss, stats = policy_loss(logprobs, old, adv, mask, ratio_level="sequence", epsilon_low=0.9, epsilon_high=10.0)
    _close(stats["ratio_min"], math.exp(0.2))
    _close(stats["ratio_max"], math.exp(0.3))
    _close(loss, (-math.exp(0.2) + math.exp(0.3)) / 2)
    loss.backward()

    # Reference: the sequence-level objective written directly, differentiated by autograd.
    direct = logprobs.detach().clone().requires_grad_()
    s0 = torch.exp(direct[0].mean())
    s1 = torch.exp(direct[1, :2].mean())
    ((-s0 * 1.0 + s1) / 2).backward()
    _close(logprobs.grad[mask], direct.grad[mask])
    _close(logprobs.grad[0], [-math.exp(0.2) / 6] * 3)
    assert logprobs.grad[1, 2] == 0


def test_gspo_clips_whole_sequences():
    # eps 0.1: s0 = 1.2214 > 1.1 with A > 0 -> clipped (constant -1.1, no gradient);
    # s1 = 1.3499 with A < 0 stays unclipped. Loss = (-1.1 + 1.349859) / 2.
    logprobs = _leaf([[0.2, -0.1, 0.5], [0.6, 0.0, 0.0]])
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]], dtype=torch.bool)
    loss, stats = policy_loss(
        logprobs, torch.zeros(2, 3), torch.tensor([1.0, -1.0]), mask, ratio_level="sequence", epsilon_low=0.1
    )
    _close(loss, (-1.1 + math.exp(0.3)) / 2)
    _close(stats["clip_frac_high"], 3 / 5)
    loss.backward()
    assert torch.equal(logprobs.grad[0], torch.zeros(3))
    assert (logprobs.grad[1, :2] != 0).all()


# ---------------------------------------------------------------- truncated importance sampling


def _tis_case():
    # Trainer's old logprobs vs the sampler's: pi_old / pi_sampler = [1.5, 3, 0.5].
    logprobs = _leaf([[LOG(1.5), LOG(3.0), LOG(0.5)]])
    return logprobs, torch.zeros(1, 3), torch.ones(1, 3, dtype=torch.bool)


def test_token_tis_hand_worked():
    logprobs, sampler, mask = _tis_case()
    # On-policy w.r.t. old (ratio 1), A = 1: per-token loss -w with w = min(ratio, 2) = [1.5, 2, 0.5].
    loss, stats = policy_loss(
        logprobs, None, torch.tensor([1.0]), mask, sampler_logprobs=sampler, tis_level="token", tis_cap=2.0
    )
    _close(loss, -4 / 3)
    loss.backward()
    _close(logprobs.grad, [[-1.5 / 3, -2 / 3, -0.5 / 3]])
    _close(stats["tis_weight_mean"], 4 / 3)
    _close(stats["tis_truncated_frac"], 1 / 3)
    # k3 of KL(sampler || old): r - 1 - log r for r = [1.5, 3, 0.5]
    _close(stats["sampler_kl"], (0.5 - LOG(1.5) + 2 - LOG(3) - 0.5 + LOG(2)) / 3)


def test_sequence_tis_hand_worked():
    logprobs, sampler, mask = _tis_case()
    # Product 1.5 * 3 * 0.5 = 2.25, truncated to 2 for every token.
    loss, stats = policy_loss(
        logprobs, None, torch.tensor([1.0]), mask, sampler_logprobs=sampler, tis_level="sequence", tis_cap=2.0
    )
    _close(loss, -2.0)
    _close(stats["tis_truncated_frac"], 1.0)
    # Below the cap: 0.1 - 0.3 -> e^-0.2 = 0.818731 on both tokens; padding gets 0.
    mask = torch.tensor([[1, 1, 0]], dtype=torch.bool)
    weights = tis_weights(torch.tensor([[0.1, -0.3, 5.0]]), torch.zeros(1, 3), mask, level="sequence")
    _close(weights, [[math.exp(-0.2), math.exp(-0.2), 0.0]])


def test_sequence_tis_cannot_overflow_on_long_sequences():
    old = torch.ones(1, 1000)  # product of ratios e^1000
    weights = tis_weights(old, torch.zeros(1, 1000), torch.ones(1, 1000, dtype=torch.bool), level="sequence", cap=3.0)
    assert torch.equal(weights, torch.full((1, 1000), 3.0))


def test_sampler_logprobs_without_tis_only_report_mismatch():
    logprobs, sampler, mask = _tis_case()
    loss, stats = policy_loss(logprobs, None, torch.tensor([1.0]), mask, sampler_logprobs=sampler)
    _close(loss, -1.0)
    assert "sampler_kl" in stats and "tis_weight_mean" not in stats


# ---------------------------------------------------------------- overlong filtering and shaping


def test_soft_overlong_penalty_piecewise_boundaries():
    # L_max = 16, L_cache = 4: 0 up to 12, linear (12 - |y|) / 4 on (12, 16], -1 beyond.
    lengths = torch.tensor([0, 12, 13, 14, 16, 17, 100])
    _close(soft_overlong_penalty(lengths, max_len=16, buffer_len=4), [0, 0, -0.25, -0.5, -1, -1, -1])
    halved = soft_overlong_penalty([12, 14, 16, 20], max_len=16, buffer_len=4, penalty_factor=0.5)
    _close(halved, [0, -0.25, -0.5, -0.5])


@pytest.mark.parametrize(("max_len", "buffer_len"), [(16, 0), (16, 17), (0, 0)])
def test_soft_overlong_penalty_rejects_bad_lengths(max_len, buffer_len):
    with pytest.raises(ValueError, match="max_len|buffer_len"):
        soft_overlong_penalty(torch.tensor([1]), max_len=max_len, buffer_len=buffer_len)


def test_truncated_completions_are_filtered_out_of_the_loss():
    logprobs = _leaf([[-1.0, -1.0], [-2.0, -2.0]])
    mask = torch.ones(2, 2, dtype=torch.bool)
    truncated = torch.tensor([False, True])
    assert filter_truncated(mask, truncated).tolist() == [[True, True], [False, False]]
    loss, stats = policy_loss(
        logprobs, None, torch.tensor([1.0, 5.0]), mask, truncated=truncated, aggregation="token_mean"
    )
    _close(loss, -1.0)  # only the first completion counts
    _close(stats["num_tokens"], 2.0)
    loss.backward()
    assert torch.equal(logprobs.grad[1], torch.zeros(2))


# ---------------------------------------------------------------- stats, dtypes, errors


def test_entropy_stat_is_masked_mean():
    mask = torch.tensor([[1, 1, 0]], dtype=torch.bool)
    entropy = torch.tensor([[1.0, 2.0, 100.0]])
    _, stats = policy_loss(torch.zeros(1, 3), None, torch.tensor([1.0]), mask, entropy=entropy)
    _close(stats["entropy"], 1.5)
    assert all(value.dim() == 0 and not value.requires_grad for value in stats.values())


def test_bf16_logprobs_give_float32_loss():
    logprobs = torch.tensor([[-1.0, -2.0]], dtype=torch.bfloat16, requires_grad=True)
    loss, _ = policy_loss(logprobs, torch.tensor([[-1.5, -2.0]]), torch.tensor([1.0]), torch.ones(1, 2))
    assert loss.dtype == torch.float32
    loss.backward()
    assert logprobs.grad.dtype == torch.bfloat16


def test_empty_mask_gives_zero_loss_and_nan_ratio_stats():
    loss, stats = policy_loss(torch.zeros(2, 3, requires_grad=True), None, torch.ones(2), torch.zeros(2, 3))
    assert loss.item() == 0.0
    assert math.isnan(stats["ratio_mean"].item())


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(beta=0.1), "ref_logprobs"),
        (dict(tis_level="token"), "sampler_logprobs"),
        (dict(tis_level="seq", sampler_logprobs=torch.zeros(2, 3)), "tis_level"),
        (dict(aggregation="constant"), "constant_normalizer"),
        (dict(aggregation="sum"), "aggregation"),
        (dict(ratio_level="group"), "ratio_level"),
        (dict(epsilon_low=1.0), "epsilon_low"),
        (dict(ref_logprobs=torch.zeros(2, 4), beta=0.1), "ref_logprobs"),
    ],
)
def test_invalid_arguments_name_the_field(kwargs, message):
    with pytest.raises(ValueError, match=message):
        policy_loss(torch.zeros(2, 3), None, torch.ones(2), torch.ones(2, 3), **kwargs)


def test_advantage_shape_is_checked():
    with pytest.raises(ValueError, match="advantages"):
        policy_loss(torch.zeros(2, 3), None, torch.ones(3), torch.ones(2, 3))
