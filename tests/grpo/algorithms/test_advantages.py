import math

import pytest
import torch

from grpo.algorithms.advantages import group_advantages


def test_grpo_group_scale_hand_worked():
    # Group 1: mean 0.5, Bessel std sqrt((4 * 0.25) / 3) = sqrt(1/3); A = +-0.5 / 0.57735 = +-0.866025.
    # Group 2: all equal -> exactly 0 and counted.
    rewards = torch.tensor([1.0, 0.0, 0.0, 1.0, 1.0, 1.0, 1.0, 1.0])
    result = group_advantages(rewards, 4, eps=0.0)
    a = 0.5 / math.sqrt(1 / 3)
    torch.testing.assert_close(result.advantages, torch.tensor([a, -a, -a, a, 0.0, 0.0, 0.0, 0.0]))
    assert result.zero_std_groups == 1
    assert result.zero_std_mask.tolist() == [False, True]
    assert result.zero_std_fraction == 0.5
    torch.testing.assert_close(result.group_mean, torch.tensor([0.5, 1.0]))
    torch.testing.assert_close(result.group_std, torch.tensor([math.sqrt(1 / 3), 0.0]))


def test_grpo_eps_enters_the_denominator():
    # [3, 1]: mean 2, std sqrt(2), eps 0.1 -> A = 1 / (sqrt(2) + 0.1) = 0.660409.
    result = group_advantages(torch.tensor([3.0, 1.0]), 2, eps=0.1)
    torch.testing.assert_close(result.advantages, torch.tensor([0.660409, -0.660409]))


def test_batch_scale_hand_worked():
    # Centred by group mean: [0.5, -0.5, 0, 0]. Batch std of [1, 0, 3, 3]: mean 1.75,
    # squared deviations .5625 + 3.0625 + 1.5625 + 1.5625 = 6.75, / 3 = 2.25, std 1.5.
    result = group_advantages(torch.tensor([1.0, 0.0, 3.0, 3.0]), 2, scale="batch", eps=0.0)
    torch.testing.assert_close(result.advantages, torch.tensor([1 / 3, -1 / 3, 0.0, 0.0]))
    assert result.zero_std_groups == 1
    torch.testing.assert_close(result.scale_std, torch.full((4,), 1.5))


def test_grpo_scale_none_is_mean_centred():
    result = group_advantages(torch.tensor([2.0, 0.0, 1.0]), 3, method="grpo", scale="none")
    torch.testing.assert_close(result.advantages, torch.tensor([1.0, -1.0, 0.0]))


def test_dr_grpo_hand_worked():
    # mean 1 -> [1, -1, 0]; no division by the std (which is 1 here, so use a second group too).
    result = group_advantages(torch.tensor([2.0, 0.0, 1.0, 4.0, 0.0, 2.0]), 3, method="dr_grpo")
    torch.testing.assert_close(result.advantages, torch.tensor([1.0, -1.0, 0.0, 2.0, -2.0, 0.0]))


def test_rloo_hand_worked():
    # Leave-one-out baselines: (0+1)/2 = 0.5, (2+1)/2 = 1.5, (2+0)/2 = 1.
    result = group_advantages(torch.tensor([2.0, 0.0, 1.0]), 3, method="rloo")
    torch.testing.assert_close(result.advantages, torch.tensor([1.5, -1.5, 0.0]))


@pytest.mark.parametrize("group_size", [2, 3, 8])
def test_dr_grpo_times_g_over_g_minus_1_equals_rloo(group_size):
    # r_i - (S - r_i)/(G-1) = (G r_i - S)/(G-1) = G/(G-1) (r_i - S/G)
    generator = torch.Generator().manual_seed(group_size)
    rewards = torch.randn(5 * group_size, generator=generator, dtype=torch.float64)
    dr = group_advantages(rewards, group_size, method="dr_grpo").advantages
    rloo = group_advantages(rewards, group_size, method="rloo").advantages
    torch.testing.assert_close(dr * group_size / (group_size - 1), rloo)


@pytest.mark.parametrize("method", ["grpo", "dr_grpo", "rloo"])
def test_zero_variance_group_gives_exact_zero(method):
    # 0.1 is not representable: float32 mean-centring leaves a residue (checked below), which a
    # std of the same size would blow up to order 1. The result must be exactly 0.
    rewards = torch.tensor([0.1] * 7 + [1.0, 0.0] * 3 + [0.5])
    residue = rewards[:7] - rewards[:7].mean()
    assert residue.abs().max() > 0
    result = group_advantages(rewards, 7, method=method, eps=0.0 if method == "grpo" else 1e-6)
    assert torch.equal(result.advantages[:7], torch.zeros(7))
    assert result.advantages[7:].abs().sum() > 0
    assert result.zero_std_groups == 1


def test_integer_and_bool_rewards_become_float32():
    result = group_advantages(torch.tensor([1, 0, 1, 1]), 2, method="dr_grpo")
    assert result.advantages.dtype == torch.float32
    torch.testing.assert_close(result.advantages, torch.tensor([0.5, -0.5, 0.0, 0.0]))
    result = group_advantages(torch.tensor([True, False]), 2, method="rloo")
    torch.testing.assert_close(result.advantages, torch.tensor([1.0, -1.0]))


def test_float64_is_kept():
    result = group_advantages(torch.tensor([1.0, 0.0], dtype=torch.float64), 2)
    assert result.advantages.dtype == torch.float64


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(rewards=torch.zeros(5), group_size=2), "multiple of group_size"),
        (dict(rewards=torch.zeros(2, 2), group_size=2), "1-D"),
        (dict(rewards=torch.zeros(4), group_size=0), "group_size"),
        (dict(rewards=torch.zeros(4), group_size=1), "group_size must be >= 2"),
        (dict(rewards=torch.zeros(4), group_size=1, method="rloo"), "group_size must be >= 2"),
        (dict(rewards=torch.zeros(4), group_size=2, method="ppo"), "method"),
        (dict(rewards=torch.zeros(4), group_size=2, scale="token"), "scale"),
        (dict(rewards=torch.zeros(4), group_size=2, method="dr_grpo", scale="group"), "dr_grpo"),
    ],
)
def test_invalid_arguments_name_the_field(kwargs, message):
    with pytest.raises(ValueError, match=message):
        group_advantages(**kwargs)


def test_group_size_one_without_scaling_is_allowed():
    # One sample per prompt: no baseline spread, every "group" has zero variance.
    result = group_advantages(torch.tensor([1.0, 0.0]), 1, scale="none")
    assert torch.equal(result.advantages, torch.zeros(2))
    assert result.zero_std_groups == 2
