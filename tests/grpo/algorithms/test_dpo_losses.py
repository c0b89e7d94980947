import math

import pytest
import torch

from grpo.algorithms.dpo_losses import preference_loss


def _f32(value):
    return torch.as_tensor(value, dtype=torch.float32)


def _close(actual, expected, **kwargs):
    torch.testing.assert_close(_f32(actual), _f32(expected), **kwargs)


def softplus(x):  # -log sigmoid(-x)
    return math.log1p(math.exp(x))


def _pair(chosen=-10.0, rejected=-12.0, ref_chosen=-11.0, ref_rejected=-11.0):
    """One pair: log-ratios +1 (chosen) and -1 (rejected), so h = 2."""
    policy_chosen = torch.tensor([chosen], requires_grad=True)
    policy_rejected = torch.tensor([rejected], requires_grad=True)
    return policy_chosen, policy_rejected, torch.tensor([ref_chosen]), torch.tensor([ref_rejected])


# ---------------------------------------------------------------- hand-worked values


def test_dpo_sigmoid_hand_worked():
    # beta h = 0.5 * 2 = 1: loss = -log sig(1) = log(1 + e^-1) = 0.313262;
    # d/dh = -beta (1 - sig(1)) = -0.5 * 0.268941.
    pc, pr, rc, rr = _pair()
    loss, stats = preference_loss(pc, pr, rc, rr, beta=0.5)
    _close(loss, softplus(-1.0))
    _close(loss, 0.313262)
    loss.backward()
    _close(pc.grad, [-0.5 * (1 - 1 / (1 + math.exp(-1)))])
    _close(pr.grad, -pc.grad)
    _close(stats["rewards_chosen"], 0.5)
    _close(stats["rewards_rejected"], -0.5)
    _close(stats["reward_margin"], 1.0)
    _close(stats["reward_accuracy"], 1.0)
    _close(stats["logps_chosen"], -10.0)
    assert "nll" not in stats


def test_cdpo_hand_worked():
    # 0.9 * log(1 + e^-1) + 0.1 * log(1 + e) = 0.281936 + 0.131326
    loss, _ = preference_loss(*_pair(), beta=0.5, label_smoothing=0.1)
    _close(loss, 0.413262)


def test_robust_dpo_hand_worked():
    # (0.9 * 0.313262 - 0.1 * 1.313262) / (1 - 0.2) = 0.150610 / 0.8
    loss, _ = preference_loss(*_pair(), loss_type="robust", beta=0.5, label_smoothing=0.1)
    _close(loss, 0.188262)


def test_ipo_hand_worked():
    # (h - 1 / (2 tau))^2: tau 0.5 -> (2 - 1)^2 = 1; tau 0.25 -> (2 - 2)^2 = 0.
    _close(preference_loss(*_pair(), loss_type="ipo", beta=0.5)[0], 1.0)
    _close(preference_loss(*_pair(), loss_type="ipo", beta=0.25)[0], 0.0)


def test_hinge_hand_worked():
    # max(0, 1 - beta h): beta 0.5 -> 0 (margin met, no gradient); beta 0.25 -> 0.5.
    pc, pr, rc, rr = _pair()
    loss, _ = preference_loss(pc, pr, rc, rr, loss_type="hinge", beta=0.5)
    _close(loss, 0.0)
    loss.backward()
    assert pc.grad.item() == 0.0
    _close(preference_loss(*_pair(), loss_type="hinge", beta=0.25)[0], 0.5)


def test_simpo_hand_worked():
    # Averages: -10 / 5 = -2 and -12 / 4 = -3; z = 2 * (-2) - 2 * (-3) - 0.5 = 1.5;
    # loss = log(1 + e^-1.5) = 0.201413. Rewards are beta * average logprob.
    loss, stats = preference_loss(
        torch.tensor([-10.0]),
        torch.tensor([-12.0]),
        loss_type="simpo",
        beta=2.0,
        simpo_gamma=0.5,
        chosen_lengths=torch.tensor([5]),
        rejected_lengths=torch.tensor([4]),
    )
    _close(loss, 0.201413)
    _close(stats["rewards_chosen"], -4.0)
    _close(stats["rewards_rejected"], -6.0)
    # Passing the averages directly is the same thing.
    same, _ = preference_loss(torch.tensor([-2.0]), torch.tensor([-3.0]), loss_type="simpo", beta=2.0, simpo_gamma=0.5)
    _close(same, loss)


def test_length_normalized_dpo_hand_worked():
    # Per-token log-ratios: (-10 + 11) / 5 = 0.2 and (-12 + 11) / 4 = -0.25 -> h = 0.45.
    pc, pr, rc, rr = _pair()
    lengths = dict(chosen_lengths=torch.tensor([5]), rejected_lengths=torch.tensor([4]))
    loss, stats = preference_loss(pc, pr, rc, rr, beta=0.5, **lengths)
    _close(loss, softplus(-0.225))
    _close(stats["rewards_chosen"], 0.1)
    _close(stats["rewards_rejected"], -0.125)


def test_rpo_adds_weighted_chosen_nll():
    loss, stats = preference_loss(*_pair(), beta=0.5, chosen_nll=torch.tensor([2.0]), rpo_alpha=0.5)
    _close(loss, softplus(-1.0) + 0.5 * 2.0)
    _close(stats["nll"], 2.0)
    _close(stats["loss_preference"], softplus(-1.0))
    # Derived from the lengths: -(-10) / 5 = 2 nats per token.
    loss, stats = preference_loss(
        *_pair(), beta=0.5, rpo_alpha=1.0, chosen_lengths=torch.tensor([5]), rejected_lengths=torch.tensor([4])
    )
    _close(stats["nll"], 2.0)
    _close(loss, softplus(-0.225) + 2.0)


def test_batch_is_averaged_and_accuracy_counts_pairs():
    # Pair 0: h = 2; pair 1: log-ratios chosen -1, rejected +1 (h = -2).
    loss, stats = preference_loss(
        torch.tensor([-10.0, -12.0]),
        torch.tensor([-12.0, -10.0]),
        torch.tensor([-11.0, -11.0]),
        torch.tensor([-11.0, -11.0]),
        beta=0.5,
    )
    _close(loss, (softplus(-1.0) + softplus(1.0)) / 2)
    _close(stats["reward_accuracy"], 0.5)
    _close(stats["reward_margin"], 0.0)


# ---------------------------------------------------------------- properties from the papers


def _random_batch(seed, size=64):
    generator = torch.Generator().manual_seed(seed)
    return [torch.randn(size, generator=generator) * 3 - 20 for _ in range(4)]


@pytest.mark.parametrize("loss_type", ["sigmoid", "robust"])
def test_cdpo_and_robust_reduce_to_dpo_at_epsilon_zero(loss_type):
    batch = _random_batch(0)
    h = (batch[0] - batch[2]) - (batch[1] - batch[3])
    dpo = -torch.nn.functional.logsigmoid(0.1 * h).mean()  # the DPO paper's loss, written out
    loss, _ = preference_loss(*batch, loss_type=loss_type, beta=0.1, label_smoothing=0.0)
    _close(loss, dpo)
    # ... and epsilon > 0 does change it.
    smoothed, _ = preference_loss(*batch, loss_type=loss_type, beta=0.1, label_smoothing=0.2)
    assert not torch.allclose(smoothed, dpo)


def _grad_wrt_h(h_value, **kwargs):
    policy_chosen = torch.tensor([h_value], dtype=torch.float32, requires_grad=True)
    zero = torch.zeros(1)
    loss, _ = preference_loss(policy_chosen, zero, zero, zero, **kwargs)
    loss.backward()
    return policy_chosen.grad.item()  # dh / d policy_chosen = 1


def test_cdpo_gradient_vanishes_where_sigmoid_equals_one_minus_epsilon():
    beta, eps = 0.5, 0.1
    h_star = math.log((1 - eps) / eps) / beta  # sigmoid(beta h*) = 1 - eps
    assert abs(_grad_wrt_h(h_star, beta=beta, label_smoothing=eps)) < 1e-6
    # Below h* the loss still pushes h up, above it pushes h down (cDPO does not saturate).
    assert _grad_wrt_h(h_star - 1.0, beta=beta, label_smoothing=eps) < -1e-3
    assert _grad_wrt_h(h_star + 1.0, beta=beta, label_smoothing=eps) > 1e-3
    # Plain DPO keeps pushing at h*.
    assert _grad_wrt_h(h_star, beta=beta) < -1e-3


def test_ipo_loss_is_minimal_at_half_inverse_tau():
    tau = 0.2
    grid = torch.linspace(-5.0, 10.0, 301)  # step 0.05, contains 1 / (2 tau) = 2.5
    zeros = torch.zeros(1)
    losses = torch.stack(
        [preference_loss(h.reshape(1), zeros, zeros, zeros, loss_type="ipo", beta=tau)[0] for h in grid]
    )
    _close(grid[losses.argmin()], 1 / (2 * tau))
    assert abs(_grad_wrt_h(1 / (2 * tau), loss_type="ipo", beta=tau)) < 1e-6


# ---------------------------------------------------------------- errors


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(loss_type="kto"), "loss_type"),
        (dict(beta=0.0), "beta"),
        (dict(label_smoothing=0.5), "label_smoothing"),
        (dict(loss_type="ipo", label_smoothing=0.1), "label_smoothing"),
        (dict(loss_type="hinge", label_smoothing=0.1), "label_smoothing"),
        (dict(loss_type="simpo"), "reference-free"),
        (dict(chosen_lengths=torch.tensor([3])), "rejected_lengths"),
        (dict(rpo_alpha=1.0), "chosen_nll"),
        (dict(rpo_alpha=-1.0), "rpo_alpha"),
    ],
)
def test_invalid_arguments_name_the_field(kwargs, message):
    with pytest.raises(ValueError, match=message):
        preference_loss(*_pair(), **kwargs)


def test_reference_required_except_for_simpo():
    with pytest.raises(ValueError, match="ref_chosen_logps"):
        preference_loss(torch.zeros(1), torch.zeros(1), loss_type="sigmoid")


def test_shapes_are_checked():
    with pytest.raises(ValueError, match="policy_rejected_logps"):
        preference_loss(torch.zeros(2), torch.zeros(3), torch.zeros(2), torch.zeros(2))
