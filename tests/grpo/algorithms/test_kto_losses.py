"""KTO loss (grpo.algorithms.kto_losses): values worked out by hand, the reference point, and the paper's
properties (bounded, monotone in the implicit reward, each weight scales its own side, no gradient through
z_ref)."""
import math

import pytest
import torch

from grpo.algorithms.kto_losses import kto_loss, kto_losses, reference_point, weight_ratio


def t(*xs):
    return torch.tensor(xs, dtype=torch.float32)


def test_reference_point_is_the_mean_kl_log_ratio_clamped_at_zero_and_detached():
    # mismatched pairs: log-ratios (-10 - -11) = 1 and (-12 - -12) = 0 -> mean 0.5
    policy = t(-10.0, -12.0).requires_grad_()
    z = reference_point(policy, t(-11.0, -12.0))
    assert float(z) == pytest.approx(0.5) and not z.requires_grad
    # log-ratios -1 and -2: the estimate is negative, clamped at 0 (a KL is never negative)
    assert float(reference_point(t(-12.0, -14.0), t(-11.0, -12.0))) == 0.0
    assert float(reference_point(t(), t())) == 0.0


def test_loss_by_hand():
    # beta 0.1, z_ref 0.5, lambda_D 2, lambda_U 1.
    # example 0, desirable: r = -5 - -7 = 2; beta (r - z) = 0.15; sigmoid(0.15) = 1 / (1 + e^-0.15)
    #   = 1 / 1.860707976 = 0.537429845; loss = 2 * (1 - 0.537429845) = 0.925140310
    # example 1, undesirable: r = -8 - -8 = 0; beta (z - r) = 0.05; sigmoid(0.05) = 1 / 1.951229425
    #   = 0.512497396; loss = 1 * (1 - 0.512497396) = 0.487502604
    # mean = (0.925140310 + 0.487502604) / 2 = 0.706321457
    loss, stats = kto_loss(t(-5.0, -8.0), t(-7.0, -8.0), torch.tensor([True, False]), reference_point=0.5,
                           beta=0.1, desirable_weight=2.0, undesirable_weight=1.0)
    assert float(loss) == pytest.approx(0.706321457, abs=1e-6)
    assert float(stats["loss_desirable"]) == pytest.approx(0.925140310, abs=1e-6)
    assert float(stats["loss_undesirable"]) == pytest.approx(0.487502604, abs=1e-6)
    # implicit rewards beta * r: 0.2 and 0.0
    assert float(stats["rewards_desirable"]) == pytest.approx(0.2)
    assert float(stats["rewards_undesirable"]) == pytest.approx(0.0)
    assert float(stats["reward_margin"]) == pytest.approx(0.2)
    assert float(stats["kl"]) == pytest.approx(0.5)
    assert (float(stats["n_desirable"]), float(stats["n_undesirable"])) == (1.0, 1.0)
    assert float(stats["logps_desirable"]) == -5.0 and float(stats["logps_undesirable"]) == -8.0


def test_gradient_by_hand_and_none_through_the_reference_point():
    # d/d logpi of lambda_D (1 - sigmoid(beta (r - z))) / B = -lambda_D beta s (1 - s) / B with s = sigmoid(0.15):
    # s (1 - s) = 0.537429845 * 0.462570155 = 0.248599017; -2 * 0.1 * 0.248599017 / 2 = -0.024859902
    # undesirable: d/d logpi of (1 - sigmoid(beta (z - r))) / B = +beta s (1 - s) / B, s = sigmoid(0.05):
    # s (1 - s) = 0.512497396 * 0.487502604 = 0.249843815; 0.1 * 0.249843815 / 2 = 0.012492191
    policy = t(-5.0, -8.0).requires_grad_()
    kl_policy = t(-10.0, -12.0).requires_grad_()  # z_ref = 0.5 as above, computed from tensors with grad
    z = reference_point(kl_policy, t(-11.0, -12.0))
    loss, _ = kto_loss(policy, t(-7.0, -8.0), torch.tensor([True, False]), reference_point=z, beta=0.1,
                       desirable_weight=2.0)
    loss.backward()
    assert policy.grad.tolist() == pytest.approx([-0.024859902, 0.012492191], abs=1e-8)
    assert kl_policy.grad is None  # detached: no gradient flows through z_ref


def test_bounded_and_monotone_in_the_implicit_reward():
    r = torch.linspace(-60, 60, 121)  # beta r in [-6, 6]: strictly monotone in float32 (saturates far out)
    for weights in ((1.0, 1.0), (3.0, 0.5)):
        d, _ = kto_losses(r, torch.zeros_like(r), torch.ones_like(r, dtype=torch.bool), reference_point=1.0,
                          beta=0.1, desirable_weight=weights[0], undesirable_weight=weights[1])
        u, _ = kto_losses(r, torch.zeros_like(r), torch.zeros_like(r, dtype=torch.bool), reference_point=1.0,
                          beta=0.1, desirable_weight=weights[0], undesirable_weight=weights[1])
        assert bool((d >= 0).all() and (d <= weights[0]).all() and (u >= 0).all() and (u <= weights[1]).all())
        assert bool((d[1:] < d[:-1]).all())  # a desirable answer's loss falls as its reward rises
        assert bool((u[1:] > u[:-1]).all())  # an undesirable one's rises
    # at r = z_ref each side is half its weight
    half, _ = kto_losses(t(1.0, 1.0), t(0.0, 0.0), torch.tensor([True, False]), reference_point=1.0,
                         desirable_weight=3.0, undesirable_weight=0.5)
    assert half.tolist() == pytest.approx([1.5, 0.25])


def test_each_weight_scales_its_own_side_only():
    args = (t(-5.0, -8.0, -6.0), t(-7.0, -8.0, -5.0), torch.tensor([True, False, False]))
    base, _ = kto_losses(*args, reference_point=0.3)
    more_d, _ = kto_losses(*args, reference_point=0.3, desirable_weight=4.0)
    more_u, _ = kto_losses(*args, reference_point=0.3, undesirable_weight=0.25)
    assert more_d.tolist() == pytest.approx([4 * float(base[0]), float(base[1]), float(base[2])])
    assert more_u.tolist() == pytest.approx([float(base[0]), 0.25 * float(base[1]), 0.25 * float(base[2])])


def test_one_sided_batches_and_bad_arguments():
    loss, stats = kto_loss(t(-1.0, -2.0), t(-1.0, -2.0), torch.tensor([True, True]), reference_point=0.0)
    assert float(loss) == pytest.approx(0.5) and math.isnan(float(stats["rewards_undesirable"]))
    with pytest.raises(ValueError, match="beta"):
        kto_loss(t(-1.0), t(-1.0), torch.tensor([True]), reference_point=0.0, beta=0.0)
    with pytest.raises(ValueError, match="shape"):
        kto_loss(t(-1.0, -2.0), t(-1.0), torch.tensor([True, False]), reference_point=0.0)
    with pytest.raises(ValueError, match=">= 0"):
        kto_loss(t(-1.0), t(-1.0), torch.tensor([True]), reference_point=0.0, desirable_weight=-1.0)


def test_weight_ratio():
    # the paper's advice: lambda_D n_D / (lambda_U n_U) in [1, 4/3]
    assert weight_ratio(30, 10) == 3.0
    assert weight_ratio(30, 10, desirable_weight=1 / 3) == pytest.approx(1.0)
    assert weight_ratio(5, 0) == float("inf")
