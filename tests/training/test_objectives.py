"""Objectives: masked LM loss and DPO / IPO / hinge losses against independent formulas."""

from __future__ import annotations

import math

import pytest
import torch

from tests.chatdata import one_torch_thread  # noqa: F401  (autouse fixture)
from tfkit.training.objectives import dpo_loss, lm_loss, masked_lm_loss, sequence_logps


def log_sigmoid(x: float) -> float:
    return -math.log1p(math.exp(-x))


def test_dpo_sigmoid_loss_equals_the_formula_on_random_inputs():
    g = torch.Generator().manual_seed(0)
    pc, pr, rc, rr = (torch.randn(64, generator=g, dtype=torch.float64) * 5 for _ in range(4))
    for beta, eps in ((0.1, 0.0), (0.5, 0.0), (0.1, 0.2)):
        losses, chosen, rejected = dpo_loss(pc, pr, rc, rr, beta=beta, label_smoothing=eps)
        for i in range(64):
            h = (pc[i].item() - rc[i].item()) - (pr[i].item() - rr[i].item())
            expected = -(1 - eps) * log_sigmoid(beta * h) - eps * log_sigmoid(-beta * h)
            assert losses[i].item() == pytest.approx(expected, rel=1e-9, abs=1e-12)
            assert chosen[i].item() == pytest.approx(beta * (pc[i].item() - rc[i].item()))
            assert rejected[i].item() == pytest.approx(beta * (pr[i].item() - rr[i].item()))


def test_ipo_and_hinge_losses_equal_their_formulas():
    g = torch.Generator().manual_seed(1)
    pc, pr, rc, rr = (torch.randn(64, generator=g, dtype=torch.float64) * 3 for _ in range(4))
    beta = 0.25
    ipo, _, _ = dpo_loss(pc, pr, rc, rr, beta=beta, loss_type="ipo")
    hinge, _, _ = dpo_loss(pc, pr, rc, rr, beta=beta, loss_type="hinge")
    for i in range(64):
        h = (pc[i].item() - rc[i].item()) - (pr[i].item() - rr[i].item())
        assert ipo[i].item() == pytest.approx((h - 1 / (2 * beta)) ** 2, rel=1e-9)
        assert hinge[i].item() == pytest.approx(max(0.0, 1 - beta * h), abs=1e-12)
    with pytest.raises(ValueError):
        dpo_loss(pc, pr, rc, rr, loss_type="nosuch")


def test_dpo_loss_is_ln2_with_zero_rewards_when_policy_is_reference():
    logps = torch.randn(2, 16, generator=torch.Generator().manual_seed(2)) * 10
    for eps in (0.0, 0.3):
        losses, chosen, rejected = dpo_loss(logps[0], logps[1], logps[0].clone(), logps[1].clone(), label_smoothing=eps)
        assert torch.allclose(losses, torch.full_like(losses, math.log(2)))
        assert chosen.abs().max() == 0 and rejected.abs().max() == 0


def test_masked_lm_loss_ignores_unmasked_targets():
    g = torch.Generator().manual_seed(3)
    logits = torch.randn(4, 6, 11, generator=g)
    targets = torch.randint(0, 11, (4, 6), generator=g)
    mask = torch.rand(4, 6, generator=g) > 0.5
    loss, correct, count = masked_lm_loss(logits, targets, mask)
    # independent computation: mean of -log softmax over the masked targets
    logp = logits.log_softmax(-1)
    picked = [-logp[b, t, targets[b, t]].item() for b in range(4) for t in range(6) if mask[b, t]]
    assert loss.item() == pytest.approx(sum(picked) / len(picked), rel=1e-5)
    assert count.item() == len(picked)
    assert correct.item() == sum(
        int(logits[b, t].argmax() == targets[b, t]) for b in range(4) for t in range(6) if mask[b, t]
    )
    # any change to the targets outside the mask leaves the loss as it is
    changed = torch.where(mask, targets, (targets + 1 + torch.randint(0, 9, targets.shape, generator=g)) % 11)
    assert not torch.equal(changed, targets)
    assert masked_lm_loss(logits, changed, mask)[0].item() == loss.item()
    # with every target masked in, it is the plain LM loss
    assert masked_lm_loss(logits, targets, torch.ones_like(mask))[0].item() == pytest.approx(
        lm_loss(logits, targets).item()
    )


def test_sequence_logps_sum_the_masked_targets():
    g = torch.Generator().manual_seed(4)
    logits = torch.randn(3, 5, 7, generator=g)
    targets = torch.randint(0, 7, (3, 5), generator=g)
    mask = torch.tensor([[0, 0, 1, 1, 1], [0, 1, 1, 0, 0], [1, 1, 1, 1, 1]], dtype=torch.bool)
    logp = logits.log_softmax(-1)
    expected = [sum(logp[b, t, targets[b, t]].item() for t in range(5) if mask[b, t]) for b in range(3)]
    assert sequence_logps(logits, targets, mask).tolist() == pytest.approx(expected, rel=1e-5)
